//! The store answers a filter exactly as the filter matches in memory: same
//! events, same order (newest first, ties by lowest id), same limit. Run on
//! a realistic corpus so that every query strategy is exercised: seeks per
//! id, per (author, kind), per tag value, the kind scan for home feeds, and
//! its fallback when the followed authors are too quiet for the scan.

mod common;

use nostr_relayd::privacy::Readers;
use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use nostr_relayd::corpus::Corpus;
use nostr_relayd::nostr::{CanonicalEvent, Event, Filter, KindClass};
use nostr_relayd::store::QueryLimits;
use serde_json::{Value, json};

const NOW: i64 = 1_800_000_000;

/// NIP-01: "the newest N ... and in the case of ties the event with the
/// lowest id (first in lexical order) should be first."
fn expected(events: &[Event], filter: &Filter, limit: usize) -> Vec<[u8; 32]> {
    let mut matching: Vec<&Event> = events.iter().filter(|e| filter.matches(e)).collect();
    matching.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    matching.iter().take(limit).map(|e| e.id).collect()
}

/// What the store keeps of a corpus: every regular event, and the newest
/// version (lowest id on a tie) of each replaceable one.
fn surviving(events: Vec<Event>) -> Vec<Event> {
    let mut newest: HashMap<([u8; 32], u16), Event> = HashMap::new();
    let mut kept = Vec::new();
    for event in events {
        if event.class() == KindClass::Replaceable {
            let key = (event.pubkey, event.kind);
            let replace = newest.get(&key).is_none_or(|current| {
                (event.created_at, std::cmp::Reverse(event.id))
                    > (current.created_at, std::cmp::Reverse(current.id))
            });
            if replace {
                newest.insert(key, event);
            }
        } else {
            kept.push(event);
        }
    }
    kept.extend(newest.into_values());
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_memory_agree_on_every_filter_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.database = dir.path().join("eq.sqlite");
    config.storage.reader_threads = 2;
    config.storage.query_timeout_ms = 30_000;
    let store = Arc::new(common::open_store(&mut config).await);
    let mut corpus = Corpus::new(42, 200, NOW);
    let events: Vec<Event> = (0..4000).map(|_| corpus.next_unsigned().1).collect();
    for chunk in events.chunks(500) {
        let inserts = chunk.iter().map(|e| {
            let store = store.clone();
            let canonical = Arc::new(CanonicalEvent::new(e.clone()));
            async move { store.insert(canonical).await.unwrap() }
        });
        join_all(inserts).await;
    }
    let targets = corpus.query_targets();
    let stored = surviving(events);
    let hex = |bytes: &[u8; 32]| hex::encode(bytes);
    let follows: Vec<String> = targets.follows.iter().map(hex).collect();
    // The quietest authors: too sparse for the feed scan's budget.
    let mut activity: HashMap<[u8; 32], usize> = HashMap::new();
    for e in &stored {
        *activity.entry(e.pubkey).or_default() += 1;
    }
    let mut quiet: Vec<[u8; 32]> = targets.pubkeys.clone();
    quiet.sort_by_key(|p| activity.get(p).copied().unwrap_or(0));
    let quiet: Vec<String> = quiet.iter().take(40).map(hex).collect();
    let busiest = hex(&targets.pubkeys[0]);
    let hot = hex(&targets.hot_notes[0]);
    let ids: Vec<String> = targets
        .note_ids
        .iter()
        .step_by(97)
        .take(20)
        .map(hex)
        .collect();
    let middle = NOW - 15 * 24 * 3600;
    let filters: Vec<Value> = vec![
        json!({"authors": follows, "kinds": [1, 6], "limit": 50}),
        json!({"authors": quiet, "kinds": [1, 7], "limit": 30}),
        json!({"authors": follows, "kinds": [1], "until": middle, "limit": 40}),
        json!({"authors": [busiest], "limit": 25}),
        json!({"authors": [busiest], "kinds": [0]}),
        json!({"#e": [hot]}),
        json!({"#e": [hot], "kinds": [7], "limit": 10}),
        json!({"#p": [busiest], "kinds": [1, 6, 7, 9735], "limit": 100}),
        json!({"#t": ["nostr", "zap"], "since": middle, "limit": 60}),
        json!({"authors": follows, "#t": ["nostr"], "limit": 20}),
        json!({"kinds": [1], "limit": 100}),
        json!({"kinds": [3], "#p": [busiest], "limit": 15}),
        json!({"ids": ids}),
        json!({"since": middle, "until": middle + 3 * 24 * 3600, "limit": 70}),
        json!({"limit": 5}),
    ];
    let limits = QueryLimits {
        default_limit: 500,
        max_limit: 1000,
    };
    for value in filters {
        let filter = Filter::from_value(&value).unwrap();
        let limit = limits.effective(&filter) as usize;
        let want = expected(&stored, &filter, limit);
        let result = store
            .query(Arc::from(vec![filter]), Readers::unrestricted(), limits)
            .await
            .unwrap();
        let got: Vec<[u8; 32]> = result
            .events
            .iter()
            .map(|json| {
                let value: Value = serde_json::from_str(json).unwrap();
                Event::from_value(&value).unwrap().id
            })
            .collect();
        assert!(!want.is_empty(), "the corpus has matches for {value}");
        assert_eq!(got, want, "filter {value}");
    }
}
