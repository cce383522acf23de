//! The `nostr-relayd admin` CLI on what only a SQLite file has: a path on
//! disk, created with its directory. management.rs holds the CLI's
//! behaviour beside a running relay and the NIP-86 semantics, run on both
//! backends.

mod common;
mod nip86;

use common::*;
use nip86::*;
use nostr::prelude::*;

#[tokio::test]
async fn the_cli_creates_the_database_and_its_directory_for_the_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("not").join("yet").join("relay.sqlite");
    let config = write_config(dir.path(), "");
    let banned = Keys::generate();
    admin_ok(&config, &db, &["ban-pubkey", &banned.public_key().to_hex()]);
    // Migrated to this binary's schema, so the relay's start has nothing
    // to migrate (and nothing to copy aside).
    let conn = rusqlite::Connection::open(&db).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    let latest = nostr_relayd::store::schema::latest_version();
    assert_eq!(usize::try_from(version), Ok(latest));
    drop(conn);

    let relay = RelayProcess::spawn(&config, &db).await;
    let mut client = Client::connect(&relay.url).await;
    let answer = client.publish(&note(&banned, "hi")).await;
    assert!(is_blocked(&answer), "{answer:?}");
    assert!(client.publish(&note(&Keys::generate(), "hi")).await.0);
    let copies = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().contains(".pre-v"))
        .count();
    assert_eq!(copies, 0, "the relay found a migrated database");
}
