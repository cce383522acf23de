//! `nostr-relayd sync` on PostgreSQL, where `seq` is not commit order: the
//! "up" direction's cursor (`local_seq`: every local event at or below it
//! was offered) must never pass a row that commits later with a smaller
//! seq. `Local::events_after` waits for the writers' transactions that may
//! hold such rows (`PgStore::settled_seq`). Run against a throwaway
//! cluster, with the real writer of another node held mid-transaction.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::services::Postgres;
use common::{canonical, pg_client as connect};
use nostr::prelude::*;
use nostr_relayd::Config;
use nostr_relayd::config::Backend;
use nostr_relayd::store::WriteOutcome;
use nostr_relayd::store::postgres::{PgOptions, PgStore};
use nostr_relayd::sync::local::Local;

fn options(url: &str, node: &str) -> PgOptions {
    PgOptions {
        url: url.to_owned(),
        replica_url: None,
        node: node.to_owned(),
        pool_size: 2,
        query_timeout: Duration::from_secs(5),
        max_write_batch: 64,
    }
}

async fn open(url: &str, node: &str) -> Arc<PgStore> {
    Arc::new(
        PgStore::open(&options(url, node), Box::new(|_| {}))
            .await
            .unwrap_or_else(|e| panic!("open node {node}: {e}")),
    )
}

fn config(url: &str) -> Config {
    let mut config = Config::default();
    config.storage.backend = Backend::Postgres;
    config.storage.postgres_url = url.to_owned();
    config.cluster.node_name = "sync".into();
    config
}

/// Stores `event` through `store`'s writer; returns the seq it got.
async fn stored_seq(store: &PgStore, db: &tokio_postgres::Client, event: &Event) -> i64 {
    match store.insert(canonical(event)).await {
        Ok(WriteOutcome::Stored { .. }) => {}
        other => panic!("expected Stored, got {other:?}"),
    }
    seq_of(db, event).await
}

async fn seq_of(db: &tokio_postgres::Client, event: &Event) -> i64 {
    db.query_one(
        "SELECT seq FROM event WHERE id = $1",
        &[&event.id.to_bytes().as_slice()],
    )
    .await
    .unwrap()
    .get(0)
}

/// Node b's writer takes seq s, then waits (its insert meets an
/// uncommitted row with the same id); node a commits seq s + 1 meanwhile.
/// The cursor must come back with s, not jump to s + 1; and a bound that
/// cannot settle is an error, not a guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_up_cursor_never_passes_a_row_still_being_committed() {
    let url = Postgres::shared().create_database();
    let mut local = Local::open(&config(&url), "ws://remote.example")
        .await
        .expect("sync's side opens on PostgreSQL");
    let (a, b) = tokio::join!(open(&url, "a"), open(&url, "b"));
    let keys = Keys::generate();
    let base = common::now() - 100;
    let first = common::event(&keys, 1, "first", &[], base);
    let held = common::event(&keys, 1, "held", &[], base + 1);
    let later = common::event(&keys, 1, "later", &[], base + 2);

    let watcher = connect(&url).await;
    let first_seq = stored_seq(&a, &watcher, &first).await;
    let rows = local.events_after(0, 100).await.unwrap();
    assert_eq!(
        rows.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        vec![first_seq]
    );

    // Another session inserts `held` and keeps its transaction open.
    let blocker = connect(&url).await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .execute(
            "INSERT INTO event (id, pubkey, created_at, kind, origin_node, origin_seq, json)
             VALUES ($1, $2, $3, 1, 'blocker', 1, $4)",
            &[
                &held.id.to_bytes().as_slice(),
                &held.pubkey.to_bytes().as_slice(),
                &(base as i64 + 1),
                &held.as_json(),
            ],
        )
        .await
        .unwrap();
    // Node b's writer: takes its seq, then waits on the blocker's row.
    let writer_b = {
        let b = b.clone();
        let held = canonical(&held);
        tokio::spawn(async move { b.insert(held).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'nostr-relayd writer b' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "node b's writer never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Node a commits a later seq meanwhile: it is visible, b's is not.
    let later_seq = stored_seq(&a, &watcher, &later).await;

    // A bound cannot settle while b's transaction runs.
    let error = a
        .settled_seq(Duration::from_millis(300))
        .await
        .expect_err("no settled bound while a writer holds a seq below it");
    assert!(error.to_string().contains("still running"), "{error}");

    // The blocker gives up after a moment; b's insert then commits.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        blocker.batch_execute("ROLLBACK").await.unwrap();
    });
    let asked = Instant::now();
    let rows = local.events_after(first_seq, 100).await.unwrap();
    let answered_after = asked.elapsed();
    release.await.unwrap();
    assert!(matches!(
        writer_b.await.unwrap(),
        Ok(WriteOutcome::Stored { .. })
    ));
    let held_seq = seq_of(&watcher, &held).await;
    assert!(held_seq < later_seq, "{held_seq} {later_seq}");
    let ids: Vec<(i64, String)> = rows
        .iter()
        .map(|(seq, event)| {
            let (event, _) = event.as_ref().expect("not expired");
            (*seq, event.id_hex())
        })
        .collect();
    assert_eq!(
        ids,
        vec![(held_seq, held.id.to_hex()), (later_seq, later.id.to_hex())],
        "the cursor must not pass b's row"
    );
    // It waited for the rollback, which came 500 ms after the ask.
    assert!(
        answered_after >= Duration::from_millis(400),
        "events_after answered after {answered_after:?}, before b's transaction ended"
    );
    // Nothing more, and nothing in flight: an empty answer at once.
    assert!(local.events_after(later_seq, 100).await.unwrap().is_empty());
    assert_eq!(local.max_seq().await.unwrap(), later_seq);
    local.close();
    a.close().await;
    b.close().await;
}
