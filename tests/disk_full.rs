//! Disk full: when the database cannot grow, writes are refused with
//! `OK false "error: …"` (never `OK true` for an event that was not stored),
//! reads keep working, nothing is corrupted, and writes resume by themselves
//! once space is freed. The cap is `storage.max_database_bytes` (SQLite's
//! `max_page_count`), which fails a write exactly as a full disk does.

mod common;

use std::time::Duration;

use common::*;
use nostr::prelude::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_refuses_writes_cleanly_and_recovers() {
    let mut relay = TestRelay::start_with(|c| {
        c.storage.max_database_bytes = 1 << 20;
        c.storage.expiration_sweep_seconds = 1;
    })
    .await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let expires = (now() + 4).to_string();
    let filler = "x".repeat(4000);
    let mut accepted = Vec::new();
    let mut refusal = None;
    // Fill the database with events that expire in a few seconds.
    for i in 0..2000 {
        let e = event(
            &keys,
            1,
            &format!("{i} {filler}"),
            &[&["expiration", &expires]],
            now(),
        );
        let (ok, reason) = client.publish(&e).await;
        if ok {
            assert_eq!(reason, "");
            accepted.push(e.id.to_hex());
        } else {
            refusal = Some(reason);
            break;
        }
    }
    let refusal = refusal.expect("the database filled up");
    assert!(refusal.starts_with("error:"), "{refusal}");
    assert!(refusal.contains("full"), "{refusal}");
    assert!(accepted.len() > 10, "some events fit before the cap");

    // Every OK true is stored and readable while the database is full.
    let mut stored = 0;
    for (n, chunk) in accepted.chunks(200).enumerate() {
        stored += client
            .req(&format!("r{n}"), vec![json!({"ids": chunk})])
            .await
            .len();
    }
    assert_eq!(stored, accepted.len(), "every acknowledged event is there");
    let bigger = note(&keys, &"y".repeat(16_000));
    let (ok, again) = client.publish(&bigger).await;
    assert!(!ok && again.starts_with("error:"), "{again}");
    let found = client
        .req("bigger", vec![json!({"ids": [bigger.id.to_hex()]})])
        .await;
    assert!(found.is_empty(), "a refused event is not stored");

    // The filler expires and is purged; the same big write then succeeds,
    // with no restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut refused_meanwhile = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let retry = note(&keys, &format!("{} {}", now(), "y".repeat(16_000)));
        let (ok, reason) = client.publish(&retry).await;
        if ok {
            let found = client
                .req("retry", vec![json!({"ids": [retry.id.to_hex()]})])
                .await;
            assert_eq!(found.len(), 1);
            break;
        }
        assert!(reason.starts_with("error:"), "{reason}");
        refused_meanwhile += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes did not resume"
        );
    }
    assert!(refused_meanwhile > 0, "the big write waited for the purge");
    client.assert_healthy().await;
    relay.stop().await;
    let conn = rusqlite::Connection::open(&relay.db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
