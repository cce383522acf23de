//! Moving a relay from SQLite to PostgreSQL (issue 8, point 5): `nostr-relayd
//! export` on the SQLite relay, `nostr-relayd import` into PostgreSQL, and
//! the relay on PostgreSQL serves the same events in the same order and keeps
//! refusing what the SQLite relay refused (deleted, superseded).
//! Events are built and signed with the independent `nostr` crate.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{RelayProcess, event, now, services};
use nostr::prelude::*;
use serde_json::{Value, json};

/// Runs the binary with `--config config` and `args`, the environment
/// cleared of overrides but `extra`.
fn relayd(config: &Path, args: &[&str], stdin: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nostr-relayd"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("NOSTR_RELAYD_DB")
        .env_remove("NOSTR_RELAYD_LISTEN")
        .env_remove("NOSTR_RELAYD_POSTGRES_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = stdin {
        command.stdin(std::fs::File::open(path).expect("open stdin file"));
    }
    let output = command.output().expect("run nostr-relayd");
    assert!(
        output.status.success(),
        "nostr-relayd {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn line(event: &Event) -> String {
    serde_json::to_string(&common::to_value(event)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_relay_moves_to_postgres_with_export_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let t = now() - 10_000;
    let alice = Keys::generate();
    let bob = Keys::generate();
    let mut events = Vec::new();
    for i in 0..40u64 {
        let keys = if i % 2 == 0 { &alice } else { &bob };
        events.push(event(
            keys,
            1,
            &format!("note {i}"),
            &[&["t", "move"]],
            t + i,
        ));
    }
    // Two versions of a profile and of an article, the newer second.
    let old_profile = event(&alice, 0, r#"{"name":"old"}"#, &[], t);
    let new_profile = event(&alice, 0, r#"{"name":"new"}"#, &[], t + 100);
    let old_article = event(&bob, 30023, "draft", &[&["d", "post"]], t);
    let new_article = event(&bob, 30023, "final", &[&["d", "post"]], t + 100);
    // A note and its deletion by its author.
    let deleted = event(&alice, 1, "regret", &[], t + 200);
    let deletion = event(&alice, 5, "", &[&["e", &deleted.id.to_hex()]], t + 201);
    events.extend([
        old_profile.clone(),
        new_profile.clone(),
        old_article.clone(),
        new_article.clone(),
        deleted.clone(),
        deletion.clone(),
    ]);
    let dump = dir.path().join("dump.jsonl");
    let text: Vec<String> = events.iter().map(line).collect();
    std::fs::write(&dump, text.join("\n") + "\n").unwrap();

    // The SQLite relay's database, filled by import.
    let sqlite_config = dir.path().join("sqlite.toml");
    let sqlite_db = dir.path().join("relay.sqlite");
    std::fs::write(
        &sqlite_config,
        format!("database = {:?}\n", sqlite_db.display().to_string()),
    )
    .unwrap();
    relayd(&sqlite_config, &["import", dump.to_str().unwrap()], None);
    let from_sqlite = relayd(&sqlite_config, &["export"], None).stdout;
    let exported = dir.path().join("from-sqlite.jsonl");
    std::fs::write(&exported, &from_sqlite).unwrap();
    // 46 events in: the older profile and article versions and the deleted
    // note are not kept.
    assert_eq!(from_sqlite.iter().filter(|b| **b == b'\n').count(), 43);

    // The PostgreSQL relay: a fresh database, import from the export (stdin).
    let url = services::Postgres::shared().create_database();
    let postgres_config = dir.path().join("postgres.toml");
    std::fs::write(
        &postgres_config,
        format!("[storage]\nbackend = \"postgres\"\npostgres_url = {url:?}\n"),
    )
    .unwrap();
    let import = relayd(
        &postgres_config,
        &["import", "--no-verify"],
        Some(&exported),
    );
    let summary = String::from_utf8_lossy(&import.stderr);
    assert!(summary.contains("stored 43"), "{summary}");
    let from_postgres = relayd(&postgres_config, &["export"], None).stdout;
    assert_eq!(
        String::from_utf8_lossy(&from_postgres),
        String::from_utf8_lossy(&from_sqlite),
        "PostgreSQL exports byte for byte what SQLite held, in the same order"
    );

    // A relay on PostgreSQL serves them and keeps refusing the deleted note
    // and the superseded versions.
    let db = dir.path().join("unused.sqlite");
    let mut relay = RelayProcess::spawn(&postgres_config, &db).await;
    let mut client = common::Client::connect(&relay.url).await;
    let served = client.query("all", vec![json!({"limit": 1000})]).await;
    let served: Vec<String> = served
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let expected: Vec<String> = String::from_utf8_lossy(&from_sqlite)
        .lines()
        .map(|l| serde_json::to_string(&serde_json::from_str::<Value>(l).unwrap()).unwrap())
        .collect();
    assert_eq!(served, expected, "the same events, newest first");
    let profile = client
        .query(
            "p",
            vec![json!({"kinds": [0], "authors": [alice.public_key().to_hex()]})],
        )
        .await;
    assert_eq!(profile.len(), 1);
    assert_eq!(profile[0]["id"], new_profile.id.to_hex());
    let (accepted, reason) = client.publish(&deleted).await;
    assert!(!accepted, "a deleted event stays deleted: {reason}");
    assert!(reason.starts_with("blocked:"), "{reason}");
    let (accepted, reason) = client.publish(&old_article).await;
    assert!(!accepted, "an older version stays superseded: {reason}");
    relay.kill();
}
