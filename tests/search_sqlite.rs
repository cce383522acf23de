//! NIP-50 search on SQLite only: migration 5 builds the FTS5 index of an
//! older SQLite file exactly as the writer would have. (search.rs holds
//! the search semantics, run on both backends.)

mod common;

use std::path::Path;

use common::*;
use nostr::prelude::*;
use serde_json::{Value, json};

/// Publishes every event, each must be accepted.
async fn publish_all(client: &mut Client, events: &[&Event]) {
    for event in events {
        assert_eq!(
            client.publish(event).await,
            (true, String::new()),
            "{}",
            event.as_json()
        );
    }
}

/// The ids a search returns, in the order it sent them.
async fn search_ids(client: &mut Client, filter: Value) -> Vec<String> {
    client
        .query("s", vec![filter])
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn id(event: &Event) -> String {
    event.id.to_hex()
}

/// Sorted ids, for comparing sets.
fn set(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Every (event seq, term, offset) the index holds, by fts5vocab.
fn index_instances(db: &Path) -> Vec<(i64, String, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, event_search, instance)",
    )
    .unwrap();
    conn.prepare("SELECT doc, term, offset FROM temp.vocab ORDER BY doc, offset, term")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// A relay on `db`, with `adjust` applied to the test configuration.
async fn relay_on(db: &Path, adjust: impl FnOnce(&mut nostr_relayd::Config)) -> TestRelay {
    let db = db.to_owned();
    TestRelay::start_with(move |c| {
        c.database = db;
        adjust(c);
    })
    .await
}

#[tokio::test]
async fn migration_5_indexes_the_events_of_an_older_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.sqlite");
    let keys = Keys::generate();
    let t = now();
    let profile = event(
        &keys,
        0,
        r#"{"name":"tapir","about":"Ünïcödé über café","website":"https://x.example"}"#,
        &[],
        t - 30,
    );
    let broken_profile = event(&Keys::generate(), 0, "tapir? not JSON", &[], t - 30);
    let text = note(&keys, "a tapir in the rain");
    let article = event(&keys, 30023, "tapir\n\nlong form", &[&["d", "t"]], t - 20);
    let reaction = event(&keys, 7, "tapir", &[&["e", &id(&text)]], t - 10);

    // Stored by the writer, which indexes as it goes: keep what it made.
    let mut relay = relay_on(&db, |_| {}).await;
    let mut c = relay.client().await;
    publish_all(
        &mut c,
        &[&profile, &broken_profile, &text, &article, &reaction],
    )
    .await;
    drop(c);
    relay.stop().await;
    let by_writer = index_instances(&db);
    assert!(!by_writer.is_empty());

    // The same database as schema version 4 left it: no index at all.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "DROP TABLE event_search; DROP TABLE search_kind; PRAGMA user_version = 4;",
        )
        .unwrap();
    }
    let relay = relay_on(&db, |_| {}).await;
    assert!(
        dir.path().join("relay.sqlite.pre-v4").exists(),
        "copied aside before migrating"
    );
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert!(version >= 5);
    // The migration indexed exactly what the writer had.
    assert_eq!(index_instances(&db), by_writer);
    let mut c = relay.client().await;
    assert_eq!(
        set(search_ids(&mut c, json!({"search": "tapir"})).await),
        set(vec![id(&profile), id(&text), id(&article)])
    );
    assert_eq!(
        search_ids(&mut c, json!({"search": "unicode uber cafe"})).await,
        vec![id(&profile)]
    );
    // New events are indexed as usual after the migration.
    let after = note(&keys, "tapir after the upgrade");
    publish_all(&mut c, &[&after]).await;
    assert_eq!(
        search_ids(&mut c, json!({"search": "upgrade"})).await,
        vec![id(&after)]
    );
}
