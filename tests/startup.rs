//! Startup safety: what the relay does with the database file it is given.

mod common;

use std::time::Duration;

use common::*;
use nostr::prelude::*;
use serde_json::json;

fn shipped_config() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/relay.toml"))
}

#[tokio::test]
async fn a_database_from_a_newer_version_is_refused_not_downgraded() {
    let mut relay = TestRelay::start().await;
    relay.stop().await;
    let conn = rusqlite::Connection::open(&relay.db).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let error = nostr_relayd::start(relay.config.clone())
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("schema version 99"), "{error}");
    // Nothing was touched: the version is still 99.
    let conn = rusqlite::Connection::open(&relay.db).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 99);
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_reported_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    std::fs::write(&config.database, vec![0x42u8; 8192]).unwrap();
    config.listen = "127.0.0.1:0".into();
    let error = nostr_relayd::start(config.clone())
        .await
        .err()
        .expect("refused");
    let text = error.to_string();
    assert!(text.contains("not a SQLite database"), "{text}");
    assert!(
        text.contains(&config.database.display().to_string()),
        "{text}"
    );
    // The binary exits non-zero with the same message on stderr.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nostr-relayd"))
        .arg("--config")
        .arg(shipped_config())
        .env("NOSTR_RELAYD_LISTEN", "127.0.0.1:0")
        .env("NOSTR_RELAYD_DB", &config.database)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a SQLite database"));
}

/// A zero-downtime restart runs two processes on one file for a while:
/// SQLite's locking keeps them safe, and neither caches anything that the
/// other could make stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_can_share_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.sqlite");
    let first = RelayProcess::spawn(&shipped_config(), &db).await;
    let second = RelayProcess::spawn(&shipped_config(), &db).await;
    let keys = Keys::generate();
    let base = now() - 1000;
    let events: Vec<Event> = (0..200)
        .map(|i| event(&keys, 1, &format!("shared {i}"), &[], base + i))
        .collect();
    let (a, b) = events.split_at(100);
    let publish = |url: String, events: Vec<Event>| async move {
        let mut client = Client::connect(&url).await;
        for event in &events {
            assert_eq!(client.publish(event).await, (true, String::new()));
        }
    };
    tokio::join!(
        publish(first.url.clone(), a.to_vec()),
        publish(second.url.clone(), b.to_vec())
    );
    // A replaceable event written through one process is replaced through the other.
    let mut one = Client::connect(&first.url).await;
    let mut two = Client::connect(&second.url).await;
    assert!(one.publish(&event(&keys, 0, "old", &[], base)).await.0);
    assert!(two.publish(&event(&keys, 0, "new", &[], base + 1)).await.0);
    let (accepted, reason) = one.publish(&event(&keys, 0, "older", &[], base - 1)).await;
    assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    for client in [&mut one, &mut two] {
        let notes = client
            .req(
                "all",
                vec![json!({"authors": [keys.public_key().to_hex()], "kinds": [1], "limit": 500})],
            )
            .await;
        assert_eq!(notes.len(), 200);
        let profile = client
            .req(
                "p",
                vec![json!({"authors": [keys.public_key().to_hex()], "kinds": [0]})],
            )
            .await;
        assert_eq!(profile.len(), 1);
        assert_eq!(profile[0]["content"], "new");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}
