//! Helpers of the retention suites (`retention.rs` on both backends,
//! `retention_sqlite.rs` on the SQLite file): included by each with
//! `#[path]`, beside its `mod common`.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::common::*;
use nostr::prelude::*;
use nostr_relayd::config::{KindSelector, RetentionRule};
use serde_json::Value;

pub const DAY: u64 = 86_400;

pub fn rule(kinds: Vec<KindSelector>, max_age: &str, max_per_author: u64) -> RetentionRule {
    RetentionRule {
        kinds,
        max_age: max_age.into(),
        max_per_author,
    }
}

/// `nostr-relayd --config <config> <args…>` on `db`, on this test
/// binary's backend (`common::relayd`).
pub fn run(config: &Path, db: &Path, args: &[&str]) -> Output {
    super::common::relayd(config, db)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run nostr-relayd")
}

pub fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "nostr-relayd failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("retention-relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Publishes every event, 50 in flight at a time; each must be accepted.
pub async fn publish_all(client: &mut Client, events: &[Event]) {
    for window in events.chunks(50) {
        for event in window {
            client
                .send_text(format!(r#"["EVENT",{}]"#, event.as_json()))
                .await;
        }
        let mut waiting: HashSet<String> = window.iter().map(|e| e.id.to_hex()).collect();
        while !waiting.is_empty() {
            let message = client.recv().await;
            if message[0] == "OK" {
                assert_eq!(message[2], true, "refused: {message}");
                waiting.remove(message[1].as_str().unwrap());
            }
        }
    }
}

pub fn ids_of(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn hex_ids(events: &[&Event]) -> BTreeSet<String> {
    events.iter().map(|e| e.id.to_hex()).collect()
}

pub async fn count(client: &mut Client, filter: Value) -> u64 {
    let answer = client.count("n", vec![filter]).await;
    assert_eq!(answer[0], "COUNT", "{answer}");
    answer[2]["count"].as_u64().unwrap()
}

/// The SQLite file at `db`, read-only.
pub fn sqlite(db: &Path) -> StoredDb {
    StoredDb::Sqlite(
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap(),
    )
}

/// The ids of every stored event, lowercase hex.
pub fn stored_ids(stored: &StoredDb) -> HashSet<String> {
    let sql = match stored {
        StoredDb::Sqlite(_) => "SELECT coalesce(group_concat(lower(hex(id)), ','), '') FROM event",
        StoredDb::Postgres(_) => {
            "SELECT coalesce(string_agg(encode(id, 'hex'), ','), '') FROM event"
        }
    };
    stored
        .value(sql)
        .split(',')
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Bytes in use as the size cap measures them: SQLite's pages in use (free
/// pages do not count), PostgreSQL's stored JSON (kept per kind class by a
/// trigger).
pub fn used_bytes(stored: &StoredDb) -> u64 {
    let used = match stored {
        StoredDb::Sqlite(_) => {
            stored.integer(
                "SELECT (SELECT page_count FROM pragma_page_count())
                  - (SELECT freelist_count FROM pragma_freelist_count())",
            ) * stored.integer("SELECT page_size FROM pragma_page_size()")
        }
        StoredDb::Postgres(_) => {
            stored.integer("SELECT coalesce(sum(bytes), 0)::bigint FROM event_class_count")
        }
    };
    u64::try_from(used).unwrap()
}

/// No tag row and no NIP-50 index row outlives its event; on PostgreSQL
/// the per-class counts and JSON bytes (kept by a trigger) still add up to
/// the events.
pub fn assert_no_orphans(stored: &StoredDb) {
    assert_eq!(
        stored.integer("SELECT count(*) FROM tag WHERE event_seq NOT IN (SELECT seq FROM event)"),
        0,
        "tag rows left behind"
    );
    match stored {
        StoredDb::Sqlite(_) => assert_eq!(
            stored.integer(
                "SELECT count(*) FROM event_search WHERE rowid NOT IN (SELECT seq FROM event)"
            ),
            0,
            "search rows left behind"
        ),
        StoredDb::Postgres(_) => assert_eq!(
            stored.integer("SELECT coalesce(sum(n), 0)::bigint FROM event_class_count"),
            stored.integer("SELECT count(*) FROM event"),
            "the per-class counts no longer add up to the events stored"
        ),
    }
    if let StoredDb::Postgres(_) = stored {
        assert_eq!(
            stored.integer("SELECT coalesce(sum(bytes), 0)::bigint FROM event_class_count"),
            stored.integer("SELECT coalesce(sum(octet_length(json)), 0)::bigint FROM event"),
            "the per-class JSON bytes no longer add up to the events stored"
        );
    }
}

/// "rule N (…): <verb> <count> events…" lines, in order.
pub fn rule_counts(report: &str, verb: &str) -> Vec<u64> {
    report
        .lines()
        .filter(|line| line.starts_with("rule "))
        .map(|line| {
            let (_, after) = line
                .split_once(&format!("): {verb} "))
                .unwrap_or_else(|| panic!("no count in {line:?}"));
            after.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect()
}

/// A client that publishes notes one after another until told to stop;
/// every one must be accepted. Returns the ids with the moment each `OK`
/// arrived.
pub fn publish_continuously(
    url: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, Instant)>> {
    tokio::spawn(async move {
        let mut client = Client::connect(&url).await;
        let keys = Keys::generate();
        let mut acked = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let event = note(&keys, &format!("a write during maintenance, number {n}"));
            let answer = client.publish(&event).await;
            assert_eq!(answer, (true, String::new()), "a write failed");
            acked.push((event.id.to_hex(), Instant::now()));
        }
        acked
    })
}
