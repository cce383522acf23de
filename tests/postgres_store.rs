//! The PostgreSQL store itself (src/store/postgres/), against a throwaway
//! cluster: the writer's rules, and above all two nodes (two `PgStore`s
//! with different node names on one database) racing each other, which
//! must end exactly as one SQLite writer would have, every time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::services::Postgres;
use common::{canonical, pg_client as connect};
use nostr::prelude::*;
use nostr_relayd::store::lists::Edit;
use nostr_relayd::store::postgres::{PgOptions, PgStore};
use nostr_relayd::store::{Freshness, WriteOutcome};

fn options(url: &str, node: &str) -> PgOptions {
    PgOptions {
        url: url.to_owned(),
        replica_url: None,
        node: node.to_owned(),
        pool_size: 4,
        query_timeout: Duration::from_secs(5),
        max_write_batch: 1024,
    }
}

async fn open(url: &str, node: &str) -> PgStore {
    PgStore::open(&options(url, node), Box::new(|_| {}))
        .await
        .unwrap_or_else(|e| panic!("open node {node}: {e}"))
}

/// A fresh database in the shared throwaway cluster.
fn database() -> String {
    Postgres::shared().create_database()
}

fn signed(keys: &Keys, kind: u16, content: &str, tags: &[&[&str]], created_at: u64) -> Event {
    common::event(keys, kind, content, tags, created_at)
}

/// The ids stored at one address.
async fn stored_at(db: &tokio_postgres::Client, keys: &Keys, kind: u16) -> Vec<Vec<u8>> {
    db.query(
        "SELECT id FROM event WHERE pubkey = $1 AND kind = $2",
        &[&keys.public_key().to_bytes().as_slice(), &i32::from(kind)],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

async fn is_stored(db: &tokio_postgres::Client, event: &Event) -> bool {
    db.query_opt(
        "SELECT 1 FROM event WHERE id = $1",
        &[&event.id.to_bytes().as_slice()],
    )
    .await
    .unwrap()
    .is_some()
}

/// The version NIP-01 keeps: the newer; on a tie, the lowest id.
fn winner<'a>(a: &'a Event, b: &'a Event) -> &'a Event {
    match a.created_at.cmp(&b.created_at) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Equal if a.id.to_bytes() < b.id.to_bytes() => a,
        std::cmp::Ordering::Equal => b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_racing_versions_always_keep_the_right_one() {
    let url = database();
    let (a, b) = tokio::join!(open(&url, "a"), open(&url, "b"));
    let (a, b) = (Arc::new(a), Arc::new(b));
    let db = connect(&url).await;
    let base = common::now() - 1000;
    for round in 0..10 {
        // Many addresses at once, so that the nodes' batches overlap: per
        // address two versions, one sent to each node, both at once.
        let mut pairs = Vec::new();
        for i in 0..60u64 {
            let keys = Keys::generate();
            // A third of the pairs tie on created_at (the lowest id wins).
            let (t1, t2) = if i % 3 == 0 {
                (base + i, base + i)
            } else {
                (base + i, base + i + 1)
            };
            let (kind, tags): (u16, &[&[&str]]) = if i % 2 == 0 {
                (0, &[])
            } else {
                (30023, &[&["d", "post"]])
            };
            let first = signed(&keys, kind, &format!("v1 {round} {i}"), tags, t1);
            let second = signed(&keys, kind, &format!("v2 {round} {i}"), tags, t2);
            pairs.push((keys, kind, first, second));
        }
        let mut tasks = Vec::new();
        for (i, (_, _, first, second)) in pairs.iter().enumerate() {
            // Which node gets the newer version alternates.
            let (x, y) = if i % 4 < 2 { (&a, &b) } else { (&b, &a) };
            let (x, y) = (x.clone(), y.clone());
            let (first, second) = (canonical(first), canonical(second));
            tasks.push(tokio::spawn(async move {
                let (one, two) = tokio::join!(x.insert(first), y.insert(second));
                (
                    one.expect("insert on one node"),
                    two.expect("insert on the other"),
                )
            }));
        }
        for task in tasks {
            let (one, two) = task.await.unwrap();
            for outcome in [one, two] {
                assert!(
                    matches!(
                        outcome,
                        WriteOutcome::Stored { .. } | WriteOutcome::Superseded
                    ),
                    "{outcome:?}"
                );
            }
        }
        for (keys, kind, first, second) in &pairs {
            let expected = winner(first, second);
            assert_eq!(
                stored_at(&db, keys, *kind).await,
                vec![expected.id.to_bytes().to_vec()],
                "round {round}: kind {kind} must keep {}",
                expected.content
            );
        }
    }
    // Each node numbered its own commits without gaps or repeats.
    for node in ["a", "b"] {
        let row = db
            .query_one(
                "SELECT count(*), count(DISTINCT origin_seq), max(origin_seq),
                        (SELECT last_seq FROM node_sequence WHERE node = $1)
                 FROM event WHERE origin_node = $1",
                &[&node],
            )
            .await
            .unwrap();
        let (count, distinct): (i64, i64) = (row.get(0), row.get(1));
        let (max, last): (Option<i64>, i64) = (row.get(2), row.get(3));
        assert_eq!(count, distinct, "node {node}: origin_seq repeats");
        assert!(max.unwrap_or(0) <= last, "node {node}: {max:?} > {last}");
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_racing_its_target_on_another_node_never_leaves_it_stored() {
    let url = database();
    let (a, b) = tokio::join!(open(&url, "a"), open(&url, "b"));
    let (a, b) = (Arc::new(a), Arc::new(b));
    let db = connect(&url).await;
    let now = common::now();
    for round in 0..10 {
        let mut cases = Vec::new();
        for i in 0..40u64 {
            let keys = Keys::generate();
            // Half by id (`e`), half by address (`a`).
            let (target, deletion) = if i % 2 == 0 {
                let target = signed(&keys, 1, &format!("note {round} {i}"), &[], now - 10);
                let id = target.id.to_hex();
                let deletion = signed(&keys, 5, "", &[&["e", &id]], now - 5);
                (target, deletion)
            } else {
                let target = signed(&keys, 30023, "post", &[&["d", "x"]], now - 10);
                let address = format!("30023:{}:x", keys.public_key().to_hex());
                let deletion = signed(&keys, 5, "", &[&["a", &address]], now - 5);
                (target, deletion)
            };
            cases.push((target, deletion));
        }
        let mut tasks = Vec::new();
        for (i, (target, deletion)) in cases.iter().enumerate() {
            let (x, y) = if i % 4 < 2 { (&a, &b) } else { (&b, &a) };
            let (x, y) = (x.clone(), y.clone());
            let (target, deletion) = (canonical(target), canonical(deletion));
            tasks.push(tokio::spawn(async move {
                let (t, d) = tokio::join!(x.insert(target), y.insert(deletion));
                (t.expect("target insert"), d.expect("deletion insert"))
            }));
        }
        for task in tasks {
            let (target, deletion) = task.await.unwrap();
            assert!(
                matches!(target, WriteOutcome::Stored { .. } | WriteOutcome::Deleted),
                "{target:?}"
            );
            assert!(
                matches!(deletion, WriteOutcome::Stored { .. }),
                "{deletion:?}"
            );
        }
        for (target, deletion) in &cases {
            assert!(
                !is_stored(&db, target).await,
                "round {round}: the target of a deletion is stored"
            );
            assert!(is_stored(&db, deletion).await);
            // And it stays out on either node.
            assert_eq!(
                a.insert(canonical(target)).await.unwrap(),
                WriteOutcome::Deleted
            );
        }
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_to_vanish_racing_the_authors_events_leaves_none() {
    let url = database();
    let (a, b) = tokio::join!(open(&url, "a"), open(&url, "b"));
    let (a, b) = (Arc::new(a), Arc::new(b));
    let db = connect(&url).await;
    let now = common::now();
    let mut cases = Vec::new();
    for i in 0..60u64 {
        let keys = Keys::generate();
        let note = signed(&keys, 1, &format!("note {i}"), &[], now - 10);
        let vanish = signed(&keys, 62, "", &[&["relay", "ALL_RELAYS"]], now - 5);
        cases.push((note, vanish));
    }
    let mut tasks = Vec::new();
    for (i, (note, vanish)) in cases.iter().enumerate() {
        let (x, y) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let (x, y) = (x.clone(), y.clone());
        let (note, vanish) = (canonical(note), canonical(vanish));
        tasks.push(tokio::spawn(async move {
            let (n, v) = tokio::join!(x.insert(note), y.insert(vanish));
            (n.unwrap(), v.unwrap())
        }));
    }
    for task in tasks {
        let (note, vanish) = task.await.unwrap();
        assert!(
            matches!(note, WriteOutcome::Stored { .. } | WriteOutcome::Vanished),
            "{note:?}"
        );
        assert!(matches!(vanish, WriteOutcome::Stored { .. }), "{vanish:?}");
    }
    for (note, vanish) in &cases {
        assert!(
            !is_stored(&db, note).await,
            "a vanished author's note is stored"
        );
        assert!(is_stored(&db, vanish).await, "the request is the record");
    }
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn the_writer_follows_the_sqlite_rules() {
    let url = database();
    let committed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = committed.clone();
    let store = PgStore::open(
        &options(&url, "solo"),
        Box::new(move |events| {
            let mut seen = seen.lock().unwrap();
            seen.extend(events.iter().map(|c| (c.seq, c.event.event.id)));
        }),
    )
    .await
    .unwrap();
    let db = connect(&url).await;
    let keys = Keys::generate();
    let now = common::now();

    // Stored, then a duplicate; sequence numbers from 1.
    let note = signed(&keys, 1, "hello world", &[&["t", "greeting"]], now - 100);
    assert_eq!(
        store.insert(canonical(&note)).await.unwrap(),
        WriteOutcome::Stored { seq: 1, removed: 0 }
    );
    assert_eq!(
        store.insert(canonical(&note)).await.unwrap(),
        WriteOutcome::Duplicate
    );
    let relay_note = canonical(&note);
    assert_eq!(
        store.freshness(&relay_note.event).await.unwrap(),
        Freshness::Duplicate
    );
    assert_eq!(
        committed.lock().unwrap().as_slice(),
        &[(1, relay_note.event.id)]
    );

    // Tags are stored with tag_bytes: hex as 32 bytes, text as itself.
    let other = Keys::generate();
    let reply = signed(
        &keys,
        1,
        "a reply",
        &[&["p", &other.public_key().to_hex()], &["t", "x"]],
        now - 90,
    );
    store.insert(canonical(&reply)).await.unwrap();
    let lengths: Vec<i32> = db
        .query(
            "SELECT length(t.value) FROM tag t JOIN event e ON e.seq = t.event_seq
             WHERE e.id = $1 ORDER BY t.name",
            &[&reply.id.to_bytes().as_slice()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(lengths, vec![32, 1]);

    // Replaceable: an older version is superseded, a newer one replaces.
    let profile = signed(
        &keys,
        0,
        r#"{"name":"Alice","about":"rabbit"}"#,
        &[],
        now - 50,
    );
    let older = signed(&keys, 0, r#"{"name":"Old"}"#, &[], now - 60);
    let newer = signed(&keys, 0, r#"{"name":"Alicia"}"#, &[], now - 40);
    assert!(matches!(
        store.insert(canonical(&profile)).await.unwrap(),
        WriteOutcome::Stored { removed: 0, .. }
    ));
    assert_eq!(
        store.insert(canonical(&older)).await.unwrap(),
        WriteOutcome::Superseded
    );
    assert!(matches!(
        store.insert(canonical(&newer)).await.unwrap(),
        WriteOutcome::Stored { removed: 1, .. }
    ));
    assert_eq!(
        stored_at(&db, &keys, 0).await,
        vec![newer.id.to_bytes().to_vec()]
    );
    // Its search text: the profile's name, lower-cased by 'simple'.
    let search: String = db
        .query_one(
            "SELECT search::text FROM event WHERE id = $1",
            &[&newer.id.to_bytes().as_slice()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(search, "'alicia':1");

    // NIP-09 by id: deletes, and refuses the target later.
    let deletion = signed(&keys, 5, "", &[&["e", &note.id.to_hex()]], now - 30);
    assert!(matches!(
        store.insert(canonical(&deletion)).await.unwrap(),
        WriteOutcome::Stored { removed: 1, .. }
    ));
    assert!(!is_stored(&db, &note).await);
    assert_eq!(
        store.freshness(&canonical(&note).event).await.unwrap(),
        Freshness::Deleted
    );
    // Another pubkey's deletion does not delete.
    let stranger = signed(&other, 5, "", &[&["e", &reply.id.to_hex()]], now - 30);
    assert!(matches!(
        store.insert(canonical(&stranger)).await.unwrap(),
        WriteOutcome::Stored { removed: 0, .. }
    ));
    assert!(is_stored(&db, &reply).await);

    // NIP-40: an expired event goes at the next purge, without tombstone.
    let expiring = signed(
        &keys,
        1,
        "soon gone",
        &[&["expiration", &(now - 1).to_string()]],
        now - 20,
    );
    store.insert(canonical(&expiring)).await.unwrap();
    assert_eq!(store.purge_expired(100).await.unwrap(), 1);
    assert!(!is_stored(&db, &expiring).await);
    assert_eq!(
        store.freshness(&canonical(&expiring).event).await.unwrap(),
        Freshness::New
    );

    // NIP-62: the author's events up to the request go, the request stays,
    // and gift wraps to the author are deleted and tombstoned.
    let wrap = signed(
        &other,
        1059,
        "sealed",
        &[&["p", &keys.public_key().to_hex()]],
        now - 200,
    );
    store.insert(canonical(&wrap)).await.unwrap();
    let vanish = signed(&keys, 62, "", &[&["relay", "ALL_RELAYS"]], now - 10);
    let outcome = store.insert(canonical(&vanish)).await.unwrap();
    // The reply, the profile, the deletion, the wrap.
    assert!(
        matches!(outcome, WriteOutcome::Stored { removed: 4, .. }),
        "{outcome:?}"
    );
    assert_eq!(
        store.insert(canonical(&reply)).await.unwrap(),
        WriteOutcome::Vanished
    );
    assert_eq!(
        store.insert(canonical(&wrap)).await.unwrap(),
        WriteOutcome::Deleted
    );
    // A NIP-86 ban deletes an event, but never the request to vanish.
    let banned = store
        .apply_edit(
            &Edit::BanEvent(vanish.id.to_bytes(), "x".into()),
            &[],
            now as i64,
        )
        .await
        .unwrap();
    assert_eq!(banned, 0);
    assert!(is_stored(&db, &vanish).await);
    let later = signed(&keys, 1, "after the request", &[], now);
    store.insert(canonical(&later)).await.unwrap();
    let banned = store
        .apply_edit(
            &Edit::BanEvent(later.id.to_bytes(), "spam".into()),
            &[],
            now as i64,
        )
        .await
        .unwrap();
    assert_eq!(banned, 1);
    assert!(!is_stored(&db, &later).await);
    let lists = store.lists().await.unwrap();
    assert_eq!(lists.banned_events.len(), 2);
    assert_eq!(lists.version, store.lists_version().await.unwrap());
    assert_eq!(lists.version, 2);

    // Counts per class: regular (the stranger's deletion, the request) and
    // nothing else: the profile went with the request to vanish.
    assert_eq!(store.stored_by_class().await.unwrap(), [2, 0, 0, 0]);
    assert!(store.database_bytes().await.unwrap() > 0);

    // Backfill by origin: ascending, within (after, through], capped.
    let from_origin = store
        .events_from_origin("solo", 0, 1000, 1000)
        .await
        .unwrap();
    let seqs: Vec<u64> = from_origin.iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(from_origin.len(), 2);
    assert!(
        store
            .events_from_origin("other", 0, 1000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .events_from_origin("solo", 0, 1000, 1)
            .await
            .unwrap()
            .len(),
        1
    );

    assert!(store.writer_alive());
    store.close().await;
    assert!(!store.writer_alive());
    assert!(store.insert(canonical(&later)).await.is_err());
}

#[tokio::test]
async fn search_kinds_are_reconfigured_and_reopening_keeps_the_sequence() {
    let url = database();
    let store = open(&url, "n1").await;
    let db = connect(&url).await;
    let keys = Keys::generate();
    let now = common::now();
    let note = signed(&keys, 1, "Coffee and cake", &[], now - 10);
    let article = signed(&keys, 7, "ignored words", &[], now - 9);
    store.insert(canonical(&note)).await.unwrap();
    store.insert(canonical(&article)).await.unwrap();
    let indexed = || async {
        db.query_one("SELECT count(*) FROM event WHERE search IS NOT NULL", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(indexed().await, 1);
    assert_eq!(
        store.configure_search(vec![0, 1, 30023]).await.unwrap(),
        None
    );
    assert_eq!(store.configure_search(vec![7]).await.unwrap(), Some(1));
    assert_eq!(indexed().await, 1);
    assert_eq!(store.configure_search(vec![]).await.unwrap(), Some(0));
    assert_eq!(indexed().await, 0);
    assert_eq!(store.configure_search(vec![1, 7]).await.unwrap(), Some(2));
    store.close().await;

    // Open again (migrations already applied): the node's sequence goes on.
    let store = open(&url, "n1").await;
    let third = signed(&keys, 1, "third", &[], now - 8);
    assert_eq!(
        store.insert(canonical(&third)).await.unwrap(),
        WriteOutcome::Stored { seq: 3, removed: 0 }
    );
    // The SQL kind classes equal KindClass::of.
    for (kind, class) in [
        (0, 1),
        (1, 0),
        (3, 1),
        (5, 0),
        (10002, 1),
        (20001, 2),
        (30023, 3),
        (40000, 0),
    ] {
        let got: i32 = db
            .query_one("SELECT event_class_of($1)", &[&kind])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, class, "kind {kind}");
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_together_migrate_once() {
    let url = database();
    let stores = futures_util::future::join_all((0..4).map(|i| {
        let url = url.clone();
        async move { open(&url, &format!("n{i}")).await }
    }))
    .await;
    let db = connect(&url).await;
    let versions: Vec<i32> = db
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2], "each migration applied once");
    // A newer schema is refused.
    db.execute("INSERT INTO schema_version (version) VALUES (999)", &[])
        .await
        .unwrap();
    let error = PgStore::open(&options(&url, "late"), Box::new(|_| {}))
        .await
        .err()
        .expect("a newer schema must be refused");
    assert!(error.to_string().contains("newer"), "{error}");
    for store in stores {
        store.close().await;
    }
}

#[tokio::test]
async fn reports_wait_for_a_moderator() {
    let url = database();
    let store = open(&url, "m").await;
    let now = common::now();
    let author = Keys::generate();
    let target = signed(&author, 1, "bad", &[], now - 10);
    store.insert(canonical(&target)).await.unwrap();
    for (i, reason) in ["spam", "spam", "nudity"].iter().enumerate() {
        let reporter = Keys::generate();
        let report = signed(
            &reporter,
            1984,
            "",
            &[&["e", &target.id.to_hex(), reason]],
            now - 5 + i as u64,
        );
        store.insert(canonical(&report)).await.unwrap();
    }
    let reports = store.reports().await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].event_id, target.id.to_bytes());
    assert_eq!(reports[0].reports, 3);
    assert_eq!(reports[0].reason, "nudity; spam");
    store
        .apply_edit(&Edit::AllowEvent(target.id.to_bytes()), &[], now as i64)
        .await
        .unwrap();
    assert!(store.reports().await.unwrap().is_empty());
    store.close().await;
}

#[tokio::test]
async fn the_writer_reconnects_after_losing_its_connection() {
    let url = database();
    let store = open(&url, "w").await;
    let db = connect(&url).await;
    let keys = Keys::generate();
    let now = common::now();
    let first = signed(&keys, 1, "before", &[], now - 2);
    store.insert(canonical(&first)).await.unwrap();
    let ended = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'nostr-relayd writer w'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        ended.len(),
        1,
        "the writer's connection is found by its name"
    );
    let second = signed(&keys, 1, "after", &[], now - 1);
    assert_eq!(
        store.insert(canonical(&second)).await.unwrap(),
        WriteOutcome::Stored { seq: 2, removed: 0 }
    );
    assert!(store.writer_alive());
    store.close().await;
}
