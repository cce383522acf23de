//! Fuzz target `filter`: a REQ filter and an event, matched in memory the
//! way the live fan-out matches every new event against every subscription.
//!
//! Input layout: `<filter JSON> 0xFF <event JSON>`. 0xFF never occurs in
//! UTF-8, so the split is unambiguous; without a 0xFF byte the whole input is
//! the filter and a fixed sample event is matched against it.
//!
//! Invariants checked:
//! - `Filter::from_value` and `Event::from_value` never panic;
//! - `is_unsatisfiable()` and `matches()` never panic;
//! - a filter that `is_unsatisfiable()` matches no event: the relay answers
//!   such a REQ with no query at all, so if `matches` could still say yes,
//!   live subscribers and stored queries would disagree;
//! - `limit` plays no part in matching;
//! - an event always matches the filter naming exactly its own id, author,
//!   kind, time and (for single-letter tags) first tag values, and a filter
//!   that is the fuzzed one plus that exact naming matches only if the fuzzed
//!   one does (conditions are ANDed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nostr_relayd::nostr::filter::TagCondition;
use nostr_relayd::nostr::{Event, Filter};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (filter_bytes, event_bytes) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(filter_value) = serde_json::from_slice::<Value>(filter_bytes) else {
        return;
    };
    let event = match event_bytes {
        Some(bytes) => serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|value| Event::from_value(&value).ok()),
        None => Some(sample_event()),
    };
    let Ok(filter) = Filter::from_value(&filter_value) else {
        return;
    };
    let unsatisfiable = filter.is_unsatisfiable();
    let Some(event) = event else {
        return;
    };
    let matched = filter.matches(&event);
    if unsatisfiable {
        assert!(
            !matched,
            "an unsatisfiable filter matched an event:\nfilter {filter:?}\nevent {event:?}"
        );
    }

    let mut unlimited = filter.clone();
    unlimited.limit = None;
    assert_eq!(unlimited.matches(&event), matched, "limit changed matching");

    let own = own_filter(&event);
    assert!(
        !own.is_unsatisfiable(),
        "the filter naming an event is unsatisfiable: {own:?}"
    );
    assert!(
        own.matches(&event),
        "an event does not match the filter naming it:\nfilter {own:?}\nevent {event:?}"
    );
    let both = and(&filter, &own);
    assert_eq!(
        both.matches(&event),
        matched,
        "ANDing a condition the event meets changed the result:\nfilter {filter:?}\nevent {event:?}"
    );
});

/// `{"ids":[id],"authors":[pubkey],"kinds":[kind],"since":t,"until":t,
/// "#x":[first value of the first x tag], ...}`.
fn own_filter(event: &Event) -> Filter {
    let mut tags: Vec<TagCondition> = Vec::new();
    for tag in &event.tags {
        let mut letters = tag[0].chars();
        let (Some(letter), None) = (letters.next(), letters.next()) else {
            continue;
        };
        if !letter.is_ascii_alphabetic() || tags.iter().any(|c| c.letter == letter) {
            continue;
        }
        if let Some(value) = tag.get(1) {
            tags.push(TagCondition {
                letter,
                values: vec![value.clone()],
            });
        }
    }
    tags.sort_by_key(|c| c.letter);
    Filter {
        ids: Some(vec![event.id]),
        authors: Some(vec![event.pubkey]),
        kinds: Some(vec![event.kind]),
        tags,
        since: Some(event.created_at),
        until: Some(event.created_at),
        limit: None,
        // Anything else a filter may hold: no condition.
        ..Filter::default()
    }
}

/// The conjunction of `a` and an [`own_filter`] `b` (every list intersected).
fn and(a: &Filter, b: &Filter) -> Filter {
    fn both<T: Ord + Clone>(a: &Option<Vec<T>>, b: &Option<Vec<T>>) -> Option<Vec<T>> {
        match (a, b) {
            (None, x) | (x, None) => x.clone(),
            (Some(a), Some(b)) => Some(
                a.iter()
                    .filter(|x| b.binary_search(x).is_ok())
                    .cloned()
                    .collect(),
            ),
        }
    }
    // Tag conditions of both are kept side by side: each must hold.
    let mut tags = a.tags.clone();
    tags.extend(b.tags.iter().cloned());
    tags.sort_by_key(|c| c.letter);
    Filter {
        ids: both(&a.ids, &b.ids),
        authors: both(&a.authors, &b.authors),
        kinds: both(&a.kinds, &b.kinds),
        tags,
        since: a.since.max(b.since),
        until: match (a.until, b.until) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        },
        // `b` is an own_filter: anything else it holds is "no condition", so
        // the conjunction keeps the rest of `a` as it is.
        ..a.clone()
    }
}

fn sample_event() -> Event {
    let value = serde_json::json!({
        "id": "a".repeat(64), "pubkey": "b".repeat(64), "created_at": 1_700_000_000,
        "kind": 1, "tags": [["e", "c".repeat(64)], ["p", "d".repeat(64)], ["t", "nostr"]],
        "content": "hello", "sig": "e".repeat(128)
    });
    Event::from_value(&value).expect("the sample event parses")
}
