//! Query cost limits: bounded lists in a filter, bounded tag values per
//! REQ, and a time budget per query. A query past its budget is ended with
//! `CLOSED "error: …"` and frees its reader, while other clients are served.

mod common;

use std::sync::Arc;

use common::*;
use nostr_relayd::nostr::{CanonicalEvent, Event};
use serde_json::json;

fn hex32(n: u32) -> String {
    format!("{n:064x}")
}

#[tokio::test]
async fn long_lists_are_refused_and_the_limit_itself_is_served() {
    let relay = TestRelay::start_with(|c| {
        c.limits.max_filter_values = 10;
        c.limits.max_tag_values = 15;
    })
    .await;
    let mut c = relay.client().await;
    let ten: Vec<String> = (0..10).map(hex32).collect();
    let eleven: Vec<String> = (0..11).map(hex32).collect();
    for key in ["ids", "authors", "#e"] {
        let reason = c.req_closed("s", vec![json!({ key: eleven })]).await;
        assert!(reason.starts_with("blocked:"), "{key}: {reason}");
        assert!(c.query("s", vec![json!({ key: ten })]).await.is_empty());
    }
    let kinds: Vec<u32> = (0..11).collect();
    let reason = c.req_closed("k", vec![json!({"kinds": kinds})]).await;
    assert!(reason.starts_with("blocked:"), "{reason}");
    // Tag values add up across filters of one REQ: 10 + 10 > 15.
    let reason = c
        .req_closed("t", vec![json!({"#e": ten}), json!({"#p": ten})])
        .await;
    assert!(reason.starts_with("blocked:"), "{reason}");
    c.assert_healthy().await;
}

/// 60,000 notes that all reference one event: a filter on that `e` tag
/// and an absent `p` tag must read every one of them to find nothing.
async fn large_database(path: &std::path::Path) -> String {
    let mut config = test_config(path.parent().expect("a directory"));
    config.database = path.to_path_buf();
    config.storage.reader_threads = 1;
    config.storage.query_timeout_ms = 60_000;
    let store = Arc::new(open_store(&mut config).await);
    let root = hex32(7);
    let base = now() as i64 - 100_000;
    for chunk in 0..60 {
        let mut pending = Vec::new();
        for n in 0..1000 {
            let i = chunk * 1000 + n;
            let mut event = Event::from_value(&json!({
                "id": "0".repeat(64), "pubkey": hex32(i % 97 + 1), "created_at": base + i as i64,
                "kind": 1, "tags": [["e", root]], "content": format!("reply {i}"),
                "sig": "0".repeat(128)
            }))
            .unwrap();
            event.id = event.compute_id();
            let store = store.clone();
            pending.push(tokio::spawn(async move {
                store.insert(Arc::new(CanonicalEvent::new(event))).await
            }));
        }
        for insert in pending {
            insert.await.unwrap().unwrap();
        }
    }
    let store = Arc::into_inner(store).expect("no other handle");
    tokio::task::spawn_blocking(move || store.close())
        .await
        .unwrap();
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expensive_query_hits_its_time_budget_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.sqlite");
    let root = large_database(&path).await;
    let relay = TestRelay::start_with(|c| {
        c.database = path.clone();
        c.storage.query_timeout_ms = 5;
    })
    .await;
    let mut good = relay.client().await;
    let keys = nostr::prelude::Keys::generate();
    let mine = note(&keys, "a cheap query finds me");
    assert_eq!(good.publish(&mine).await, (true, String::new()));

    // Three expensive REQs at once, from three clients.
    let mut expensive = Vec::new();
    for n in 0..3 {
        let mut client = relay.client().await;
        let filter = json!({"#e": [root], "#p": [hex32(99_999)], "limit": 10});
        client
            .send_json(json!(["REQ", format!("x{n}"), filter]))
            .await;
        expensive.push(client);
    }
    // Meanwhile the cheap client is answered.
    for n in 0..20 {
        let found = good
            .query(&format!("g{n}"), vec![json!({"ids": [mine.id.to_hex()]})])
            .await;
        assert_eq!(found.len(), 1);
    }
    for (n, client) in expensive.iter_mut().enumerate() {
        let answer = client.recv().await;
        assert_eq!(answer[0], "CLOSED", "{answer}");
        assert_eq!(answer[1], format!("x{n}"));
        let reason = answer[2].as_str().unwrap();
        assert!(reason.starts_with("error:"), "{reason}");
        client.assert_healthy().await;
    }
}
