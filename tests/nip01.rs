//! NIP-01 (with NIP-09, NIP-40 and NIP-59's deletion note), end to end: real
//! sockets, the in-process relay, its real SQLite file. Every event is built
//! and signed with the independent `nostr` crate.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use nostr::prelude::*;
use nostr_relayd::nostr::Event as RelayEvent;
use serde_json::{Value, json};

/// A base time well in the past (the default policy has no lower bound).
const T: u64 = 1_700_000_000;

/// NIP-01: "The standardized machine-readable prefixes for `OK` and
/// `CLOSED`", and NIP-42's `auth-required`.
const PREFIXES: [&str; 9] = [
    "auth-required",
    "duplicate",
    "pow",
    "blocked",
    "rate-limited",
    "invalid",
    "restricted",
    "mute",
    "error",
];

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------- helpers

fn pk(keys: &Keys) -> String {
    keys.public_key().to_hex()
}

fn hex(event: &Event) -> String {
    event.id.to_hex()
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("event id").to_owned())
        .collect()
}

/// The order NIP-01 prescribes: newest first, ties by lowest id.
fn newest_first(events: &[&Event]) -> Vec<String> {
    let mut sorted = events.to_vec();
    sorted.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| hex(a).cmp(&hex(b)))
    });
    sorted.iter().map(|e| hex(e)).collect()
}

/// `base` with the keys of `extra` added.
fn with(base: &Value, extra: Value) -> Value {
    let mut merged = base.clone();
    for (key, value) in extra.as_object().expect("object") {
        merged[key] = value.clone();
    }
    merged
}

fn assert_standard_prefix(reason: &str) {
    let prefix = reason.split_once(':').map_or("", |(prefix, _)| prefix);
    assert!(
        PREFIXES.contains(&prefix),
        "reason {reason:?} lacks a standard NIP-01 prefix"
    );
}

/// Publishes and requires a plain `OK true`.
async fn accept(client: &mut Client, event: &Event) {
    assert_eq!(
        client.publish(event).await,
        (true, String::new()),
        "publishing {}",
        event.as_json()
    );
}

/// Publishes and requires `OK false` with a standard prefix; returns the reason.
async fn refuse(client: &mut Client, event: &Event) -> String {
    let (accepted, reason) = client.publish(event).await;
    assert!(
        !accepted,
        "the relay accepted {} ({reason:?})",
        event.as_json()
    );
    assert_standard_prefix(&reason);
    reason
}

/// A one-shot query: REQ with a fresh subscription id, collect until EOSE,
/// CLOSE. Fresh ids keep late live events of earlier queries out.
async fn fetch(client: &mut Client, filters: Vec<Value>) -> Vec<Value> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let sub = format!("q{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let events = client.req(&sub, filters).await;
    client.send_json(json!(["CLOSE", sub])).await;
    events
}

async fn fetch_ids(client: &mut Client, filters: Vec<Value>) -> Vec<String> {
    ids(&fetch(client, filters).await)
}

/// The next message must be an EVENT of `sub` (OKs are skipped).
async fn next_event(client: &mut Client, sub: &str) -> Value {
    loop {
        let message = client.recv().await;
        match message[0].as_str() {
            Some("OK") => continue,
            Some("EVENT") if message[1] == sub => return message[2].clone(),
            _ => panic!("expected an EVENT for {sub:?}, got {message}"),
        }
    }
}

/// Sends every event at once, then waits for all their OKs (in any order).
async fn publish_burst(client: &mut Client, events: &[Event]) -> HashMap<String, (bool, String)> {
    for event in events {
        client
            .send_text(format!(r#"["EVENT",{}]"#, event.as_json()))
            .await;
    }
    let mut answers = HashMap::new();
    while answers.len() < events.len() {
        let message = client.recv().await;
        if message[0] == "OK" {
            let answer = (
                message[2].as_bool().expect("bool"),
                message[3].as_str().expect("reason").to_owned(),
            );
            answers.insert(message[1].as_str().expect("id").to_owned(), answer);
        }
    }
    answers
}

/// The frame prefix of an EVENT for `sub`.
fn event_frame_prefix(sub: &str) -> String {
    format!("[\"EVENT\",{},", serde_json::to_string(sub).unwrap())
}

/// The event JSON inside a raw `["EVENT",sub,{…}]` frame, byte for byte.
fn event_text<'a>(frame: &'a str, sub: &str) -> &'a str {
    frame
        .strip_prefix(event_frame_prefix(sub).as_str())
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not an EVENT frame of {sub:?}: {frame}"))
}

/// Fetches one event by id and returns its JSON exactly as the relay sent it.
async fn fetch_raw(client: &mut Client, id: &str) -> String {
    let sub = "raw";
    client.send_json(json!(["REQ", sub, {"ids": [id]}])).await;
    let frame = client.recv_text().await;
    let text = event_text(&frame, sub).to_owned();
    assert_eq!(
        client.recv().await,
        json!(["EOSE", sub]),
        "exactly one event for {id}"
    );
    client.send_json(json!(["CLOSE", sub])).await;
    text
}

/// Rows of table `event` holding this event, on either backend.
fn rows_for(db: &StoredDb, event: &Event) -> i64 {
    db.rows_for(event.id.as_bytes())
}

/// A NIP-09 deletion request by `keys` of the events `targets`.
fn deletion(keys: &Keys, targets: &[&Event], created_at: u64) -> Event {
    let ids: Vec<String> = targets.iter().map(|e| hex(e)).collect();
    let tags: Vec<Vec<&str>> = ids.iter().map(|id| vec!["e", id.as_str()]).collect();
    let tags: Vec<&[&str]> = tags.iter().map(Vec::as_slice).collect();
    event(keys, 5, "deleted", &tags, created_at)
}

// ------------------------------------------------------------ 1. filters

#[tokio::test]
async fn filters_select_by_ids_authors_and_kinds_anded_within_a_filter() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let a1 = event(&a, 1, "a1", &[], T);
    let a7 = event(&a, 7, "+", &[], T + 1);
    let b1 = event(&b, 1, "b1", &[], T + 2);
    let b30 = event(&b, 30, "b30", &[], T + 3);
    for e in [&a1, &a7, &b1, &b30] {
        accept(&mut c, e).await;
    }
    let unknown = "0".repeat(64);
    let cases: Vec<(Value, Vec<&Event>)> = vec![
        (json!({"ids": [hex(&a1), hex(&b1)]}), vec![&a1, &b1]),
        (json!({"ids": [unknown]}), vec![]),
        (json!({"authors": [pk(&a)]}), vec![&a1, &a7]),
        (
            json!({"authors": [pk(&a), pk(&b)]}),
            vec![&a1, &a7, &b1, &b30],
        ),
        (json!({"kinds": [7, 30]}), vec![&a7, &b30]),
        (json!({"kinds": [2]}), vec![]),
        // "All conditions of a filter that are specified must match for an
        // event for it to pass the filter, i.e., multiple conditions are
        // interpreted as `&&` conditions."
        (json!({"authors": [pk(&a)], "kinds": [1]}), vec![&a1]),
        (json!({"authors": [pk(&b)], "kinds": [7]}), vec![]),
        (json!({"ids": [hex(&a1)], "authors": [pk(&b)]}), vec![]),
        (
            json!({"ids": [hex(&a1), hex(&a7)], "kinds": [7]}),
            vec![&a7],
        ),
        (
            json!({"ids": [hex(&a1), hex(&b1)], "since": T + 1}),
            vec![&b1],
        ),
        (
            json!({"authors": [pk(&a), pk(&b)], "kinds": [1], "since": T + 1}),
            vec![&b1],
        ),
        (json!({"kinds": [1, 7, 30], "until": T + 1}), vec![&a1, &a7]),
        (json!({}), vec![&a1, &a7, &b1, &b30]),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            fetch_ids(&mut c, vec![filter.clone()]).await,
            newest_first(&expected),
            "filter {filter}"
        );
    }
    // What is served is the signed event itself.
    assert_eq!(
        fetch(&mut c, vec![json!({"ids": [hex(&b30)]})]).await,
        vec![to_value(&b30)]
    );
}

#[tokio::test]
async fn filters_select_by_single_letter_tags_first_value_only() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let x = hex(&note(&a, "referenced x"));
    let y = hex(&note(&a, "referenced y"));
    let (p1, p2) = (pk(&Keys::generate()), pk(&Keys::generate()));
    let e1 = event(
        &a,
        1,
        "e1",
        &[&["e", x.as_str()], &["p", p1.as_str()], &["t", "nostr"]],
        T,
    );
    let e2 = event(
        &a,
        1,
        "e2",
        &[
            &["t", "rust"],
            &["L", "ISO-639-1"],
            &["l", "en", "ISO-639-1"],
        ],
        T + 1,
    );
    let e3 = event(&a, 1, "e3", &[&["l", "ISO-639-1"]], T + 2);
    let e4 = event(
        &a,
        1,
        "e4",
        &[
            &["e", y.as_str(), "wss://relay.example.com", p2.as_str()],
            &["p", p2.as_str(), "wss://r.example.com"],
        ],
        T + 3,
    );
    // "nostr" appears here only as a second value, under a multi-letter
    // name, and under the uppercase letter T.
    let e5 = event(
        &a,
        1,
        "e5",
        &[
            &["x", "foo", "nostr"],
            &["t", "other", "nostr"],
            &["tt", "nostr"],
            &["T", "nostr"],
        ],
        T + 4,
    );
    for e in [&e1, &e2, &e3, &e4, &e5] {
        accept(&mut c, e).await;
    }
    let cases: Vec<(Value, Vec<&Event>)> = vec![
        (json!({"#e": [x]}), vec![&e1]),
        (json!({"#e": [x, y]}), vec![&e1, &e4]),
        (json!({"#p": [p2]}), vec![&e4]),
        (json!({"#p": [p1, p2]}), vec![&e1, &e4]),
        // "Only the first value in any given tag is indexed."
        (json!({"#t": ["nostr"]}), vec![&e1]),
        (json!({"#t": ["nostr", "rust"]}), vec![&e1, &e2]),
        (json!({"#t": ["other"]}), vec![&e5]),
        (json!({"#x": ["foo"]}), vec![&e5]),
        (json!({"#x": ["nostr"]}), vec![]),
        // "#<single-letter (a-zA-Z)>": letters are case sensitive.
        (json!({"#T": ["nostr"]}), vec![&e5]),
        (json!({"#L": ["ISO-639-1"]}), vec![&e2]),
        (json!({"#L": ["iso-639-1"]}), vec![]),
        (json!({"#l": ["ISO-639-1"]}), vec![&e3]),
        (json!({"#l": ["en"]}), vec![&e2]),
        // Tag conditions AND with each other and with everything else.
        (json!({"#t": ["nostr"], "#p": [p1]}), vec![&e1]),
        (json!({"#t": ["nostr"], "#p": [p2]}), vec![]),
        (
            json!({"#t": ["rust"], "#L": ["ISO-639-1"], "kinds": [1]}),
            vec![&e2],
        ),
        (json!({"#t": ["rust"], "kinds": [2]}), vec![]),
        (json!({"#L": ["ISO-639-1"], "authors": [pk(&a)]}), vec![&e2]),
        (json!({"#e": [x], "authors": [pk(&b)]}), vec![]),
        (json!({"#p": [p1, p2], "since": T + 1}), vec![&e4]),
        (
            json!({"#p": [p1, p2], "ids": [hex(&e4), hex(&e5)]}),
            vec![&e4],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            fetch_ids(&mut c, vec![filter.clone()]).await,
            newest_first(&expected),
            "filter {filter}"
        );
    }
}

#[tokio::test]
async fn since_and_until_are_inclusive() {
    // "an event matches a filter if `since <= created_at <= until` holds."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let a = Keys::generate();
    let events: Vec<Event> = [T - 1, T, T + 5, T + 10, T + 11]
        .iter()
        .map(|t| event(&a, 1, &format!("at {t}"), &[&["t", "time"]], *t))
        .collect();
    for e in &events {
        accept(&mut c, e).await;
    }
    let at = |t: u64| events.iter().find(|e| e.created_at.as_secs() == t).unwrap();
    let all_ids: Vec<String> = events.iter().map(hex).collect();
    let shapes = [
        json!({}),
        json!({"authors": [pk(&a)]}),
        json!({"authors": [pk(&a)], "kinds": [1]}),
        json!({"kinds": [1]}),
        json!({"#t": ["time"]}),
        json!({"#t": ["time"], "kinds": [1]}),
        json!({"ids": all_ids}),
    ];
    for shape in &shapes {
        let cases: Vec<(Value, Vec<&Event>)> = vec![
            (
                json!({"since": T, "until": T + 10}),
                vec![at(T), at(T + 5), at(T + 10)],
            ),
            (json!({"since": T + 10}), vec![at(T + 10), at(T + 11)]),
            (json!({"until": T}), vec![at(T - 1), at(T)]),
            (json!({"since": T + 5, "until": T + 5}), vec![at(T + 5)]),
            (json!({"since": T + 6, "until": T + 9}), vec![]),
        ];
        for (bounds, expected) in cases {
            let filter = with(shape, bounds);
            assert_eq!(
                fetch_ids(&mut c, vec![filter.clone()]).await,
                newest_first(&expected),
                "filter {filter}"
            );
        }
    }
}

#[tokio::test]
async fn filters_of_a_req_are_ored_without_duplicates() {
    // "events that match any of the filters are to be returned, i.e.,
    // multiple filters are to be interpreted as `||` conditions."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let a1 = event(&a, 1, "a1", &[&["t", "or"]], T);
    let a7 = event(&a, 7, "a7", &[], T + 1);
    let b1 = event(&b, 1, "b1", &[&["t", "or"]], T + 2);
    let b7 = event(&b, 7, "b7", &[], T + 3);
    for e in [&a1, &a7, &b1, &b7] {
        accept(&mut c, e).await;
    }
    let cases: Vec<(Vec<Value>, Vec<&Event>)> = vec![
        (
            vec![json!({"authors": [pk(&a)]}), json!({"kinds": [1]})],
            vec![&a1, &a7, &b1],
        ),
        (
            vec![
                json!({"ids": [hex(&a1)]}),
                json!({"ids": [hex(&a1)]}),
                json!({"authors": [pk(&a)], "kinds": [1]}),
            ],
            vec![&a1],
        ),
        (
            vec![
                json!({"authors": [pk(&b)], "kinds": [7]}),
                json!({"ids": [hex(&a7)]}),
            ],
            vec![&b7, &a7],
        ),
        (
            vec![
                json!({"#t": ["or"]}),
                json!({"kinds": [1]}),
                json!({"authors": [pk(&b)]}),
            ],
            vec![&a1, &b1, &b7],
        ),
        (
            vec![json!({"kinds": [1]}), json!({"kinds": [7]}), json!({})],
            vec![&a1, &a7, &b1, &b7],
        ),
        (
            vec![
                json!({"kinds": [2]}),
                json!({"authors": [pk(&a)], "kinds": [7]}),
            ],
            vec![&a7],
        ),
    ];
    for (filters, expected) in cases {
        let got = fetch_ids(&mut c, filters.clone()).await;
        assert_eq!(got, newest_first(&expected), "filters {filters:?}");
    }
}

#[tokio::test]
async fn each_filter_applies_its_own_limit() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    // Interleaved in time: A at odd, B at even offsets.
    let by_a: Vec<Event> = [1, 3, 5, 7, 9]
        .iter()
        .map(|i| event(&a, 1, &format!("a{i}"), &[], T + i))
        .collect();
    let by_b: Vec<Event> = [0, 2, 4, 6, 8]
        .iter()
        .map(|i| event(&b, 1, &format!("b{i}"), &[], T + i))
        .collect();
    for e in by_a.iter().chain(&by_b) {
        accept(&mut c, e).await;
    }
    let at = |t: u64| {
        by_a.iter()
            .chain(&by_b)
            .find(|e| e.created_at.as_secs() == T + t)
            .unwrap()
    };
    let cases: Vec<(Vec<Value>, Vec<&Event>)> = vec![
        (
            vec![
                json!({"authors": [pk(&a)], "limit": 2}),
                json!({"authors": [pk(&b)], "limit": 3}),
            ],
            vec![at(9), at(7), at(8), at(6), at(4)],
        ),
        (
            vec![
                json!({"authors": [pk(&b)], "limit": 1}),
                json!({"authors": [pk(&a)], "limit": 4}),
            ],
            vec![at(9), at(8), at(7), at(5), at(3)],
        ),
        // A union, not a sum: the second filter's events include the first's.
        (
            vec![
                json!({"authors": [pk(&a)], "limit": 1}),
                json!({"kinds": [1], "limit": 3}),
            ],
            vec![at(9), at(8), at(7)],
        ),
        (
            vec![
                json!({"authors": [pk(&a)], "limit": 2}),
                json!({"authors": [pk(&a)], "limit": 4}),
            ],
            vec![at(9), at(7), at(5), at(3)],
        ),
        (
            vec![json!({"kinds": [1], "limit": 4})],
            vec![at(9), at(8), at(7), at(6)],
        ),
        (
            vec![
                json!({"kinds": [1], "limit": 0}),
                json!({"authors": [pk(&b)], "limit": 2}),
            ],
            vec![at(8), at(6)],
        ),
        (
            vec![json!({"authors": [pk(&a), pk(&b)], "limit": 100})],
            by_a.iter().chain(&by_b).collect(),
        ),
    ];
    for (filters, expected) in cases {
        let got = fetch_ids(&mut c, filters.clone()).await;
        assert_eq!(got, newest_first(&expected), "filters {filters:?}");
    }
}

/// Builds `count` (not a multiple of 5) kind-1 events at `created_at`,
/// alternating between two authors, in an order by id that is neither
/// ascending nor descending: a relay that leaves ties in insertion order, or
/// in reverse insertion order, gets them wrong.
fn tie_group(a: &Keys, b: &Keys, count: usize, created_at: u64, tag: &str) -> Vec<Event> {
    let mut events: Vec<Event> = (0..count)
        .map(|i| {
            let keys = if i % 2 == 0 { a } else { b };
            event(
                keys,
                1,
                &format!("tie {created_at} {i}"),
                &[&["t", tag]],
                created_at,
            )
        })
        .collect();
    events.sort_by_key(hex);
    let mut shuffled: Vec<Event> = (0..count)
        .map(|i| events[(i * 5 + 3) % count].clone())
        .collect();
    if count > 2 {
        assert_ne!(
            newest_first(&shuffled.iter().collect::<Vec<_>>()),
            shuffled.iter().map(hex).collect::<Vec<_>>()
        );
        shuffled.reverse();
        assert_ne!(
            newest_first(&shuffled.iter().collect::<Vec<_>>()),
            shuffled.iter().map(hex).collect::<Vec<_>>()
        );
        shuffled.reverse();
    }
    shuffled
}

#[tokio::test]
async fn results_are_newest_first_with_ties_by_lowest_id() {
    // "Newer events should appear first, and in the case of ties the event
    // with the lowest id (first in lexical order) should be first."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let mut all = Vec::new();
    all.push(event(&a, 1, "oldest", &[&["t", "tie"]], T - 1));
    all.extend(tie_group(&a, &b, 8, T, "tie"));
    all.push(event(&b, 1, "newest", &[&["t", "tie"]], T + 1));
    all.extend(tie_group(&a, &b, 4, T + 1, "tie"));
    for e in &all {
        accept(&mut c, e).await;
    }
    let expected = newest_first(&all.iter().collect::<Vec<_>>());
    let all_ids: Vec<String> = all.iter().map(hex).collect();
    let shapes = [
        vec![json!({})],
        vec![json!({"kinds": [1]})],
        vec![json!({"authors": [pk(&a), pk(&b)]})],
        vec![json!({"authors": [pk(&a), pk(&b)], "kinds": [1]})],
        vec![json!({"#t": ["tie"]})],
        vec![json!({"#t": ["tie"], "kinds": [1]})],
        vec![json!({"ids": all_ids})],
        vec![json!({"authors": [pk(&a)]}), json!({"authors": [pk(&b)]})],
        vec![
            json!({"kinds": [1]}),
            json!({"#t": ["tie"]}),
            json!({"ids": all_ids}),
        ],
    ];
    for filters in shapes {
        assert_eq!(
            fetch_ids(&mut c, filters.clone()).await,
            expected,
            "filters {filters:?}"
        );
    }
}

#[tokio::test]
async fn limit_returns_the_newest_n_and_the_lowest_ids_at_the_cut() {
    // "When `limit: n` is present it is assumed that the events returned in
    // the initial query will be the last `n` events ordered by the
    // `created_at`. [...] in the case of ties the event with the lowest id
    // (first in lexical order) should be first."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let mut all = vec![event(&a, 1, "top", &[&["t", "cut"]], T + 2)];
    all.extend(tie_group(&a, &b, 6, T + 1, "cut"));
    all.extend(tie_group(&a, &b, 3, T, "cut"));
    for e in &all {
        accept(&mut c, e).await;
    }
    let ordered = newest_first(&all.iter().collect::<Vec<_>>());
    let all_ids: Vec<String> = all.iter().map(hex).collect();
    let shapes = [
        json!({}),
        json!({"kinds": [1]}),
        json!({"authors": [pk(&a), pk(&b)]}),
        json!({"authors": [pk(&a), pk(&b)], "kinds": [1]}),
        json!({"#t": ["cut"]}),
        json!({"#t": ["cut"], "kinds": [1]}),
        json!({"ids": all_ids}),
    ];
    for shape in &shapes {
        for limit in [1, 2, 3, 6, 7, 8, 10, 11] {
            let filter = with(shape, json!({"limit": limit}));
            let expected = ordered[..limit.min(ordered.len())].to_vec();
            assert_eq!(
                fetch_ids(&mut c, vec![filter.clone()]).await,
                expected,
                "filter {filter}"
            );
        }
    }
    // Two filters cut at the same tie: the union is still the lowest ids.
    let filters = vec![
        json!({"authors": [pk(&a)], "limit": 2}),
        json!({"authors": [pk(&b)], "limit": 2}),
    ];
    let by = |keys: &Keys| -> Vec<&Event> {
        all.iter()
            .filter(|e| e.pubkey == keys.public_key())
            .collect()
    };
    let mut expected: Vec<&Event> = Vec::new();
    for keys in [&a, &b] {
        let ordered = newest_first(&by(keys));
        expected.extend(all.iter().filter(|e| ordered[..2].contains(&hex(e))));
    }
    assert_eq!(fetch_ids(&mut c, filters).await, newest_first(&expected));
}

#[tokio::test]
async fn limit_zero_sends_no_stored_events_but_stays_live() {
    // "The `limit` property of a filter is only valid for the initial query
    // and MUST be ignored afterwards." With `limit: 0` the initial query
    // returns nothing, yet the subscription delivers what comes next. An
    // event stored (OK true) before the REQ is not live: it must never be
    // sent, not even after EOSE. Repeated on fresh connections, because
    // that leak is a race: it happened when the writer answered OK before
    // handing the commit to the fan-out (fixed in e453349).
    let relay = TestRelay::start().await;
    let mut publisher = relay.client().await;
    for round in 0..40u64 {
        let mut sub = relay.client().await;
        let a = Keys::generate();
        let stored = event(&a, 1, "stored", &[], T + round);
        accept(&mut publisher, &stored).await;
        assert!(
            sub.req("s", vec![json!({"authors": [pk(&a)], "limit": 0})])
                .await
                .is_empty()
        );
        let fresh = event(&a, 1, "fresh", &[], T + round + 1);
        accept(&mut publisher, &fresh).await;
        let got = next_event(&mut sub, "s").await;
        assert_eq!(
            got["content"], "fresh",
            "round {round}: an event stored before the REQ was sent after EOSE"
        );
        assert_eq!(got, to_value(&fresh));
        if round == 0 {
            sub.expect_silence(QUIET).await;
        }
    }
}

#[tokio::test]
async fn empty_lists_and_inverted_ranges_match_nothing() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let mut sub = relay.client().await;
    let a = Keys::generate();
    let stored = event(&a, 1, "stored", &[&["t", "x"]], T + 5);
    accept(&mut c, &stored).await;
    let nothing = [
        json!({"ids": []}),
        json!({"authors": []}),
        json!({"kinds": []}),
        json!({"#t": []}),
        json!({"#e": []}),
        json!({"ids": [], "authors": [pk(&a)]}),
        json!({"authors": [pk(&a)], "kinds": []}),
        json!({"since": T + 10, "until": T}),
        json!({"authors": [pk(&a)], "since": T + 6, "until": T + 5}),
    ];
    for filter in &nothing {
        assert!(
            fetch(&mut c, vec![filter.clone()]).await.is_empty(),
            "filter {filter} matched"
        );
    }
    // An empty filter beside a real one does not widen or narrow it.
    let got = fetch_ids(
        &mut c,
        vec![json!({"ids": []}), json!({"ids": [hex(&stored)]})],
    )
    .await;
    assert_eq!(got, vec![hex(&stored)]);
    // Live, too: none of these subscriptions ever delivers anything.
    for (n, filter) in nothing.iter().enumerate() {
        assert!(
            sub.req(&format!("none{n}"), vec![filter.clone()])
                .await
                .is_empty()
        );
    }
    accept(&mut c, &event(&a, 1, "live", &[&["t", "x"]], T + 5)).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn subscription_ids_belong_to_their_connection() {
    // "Relays MUST manage `<subscription_id>`s independently for each
    // WebSocket connection."
    let relay = TestRelay::start().await;
    let mut first = relay.client().await;
    let mut second = relay.client().await;
    let mut publisher = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    assert!(
        first
            .req("s", vec![json!({"authors": [pk(&a)]})])
            .await
            .is_empty()
    );
    assert!(
        second
            .req("s", vec![json!({"authors": [pk(&b)]})])
            .await
            .is_empty()
    );
    second.send_json(json!(["CLOSE", "s"])).await;
    assert!(
        second
            .req("other", vec![json!({"authors": [pk(&b)]})])
            .await
            .is_empty()
    );
    let by_a = event(&a, 1, "for the first connection", &[], T);
    let by_b = event(&b, 1, "for the second connection", &[], T);
    accept(&mut publisher, &by_a).await;
    accept(&mut publisher, &by_b).await;
    assert_eq!(next_event(&mut first, "s").await, to_value(&by_a));
    assert_eq!(next_event(&mut second, "other").await, to_value(&by_b));
    first.expect_silence(QUIET).await;
    second.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_req_with_an_open_id_replaces_the_subscription() {
    // "a new `REQ` is sent using the same `<subscription_id>` (in which case
    // a new subscription is created, replacing the old one)."
    let relay = TestRelay::start().await;
    let mut sub = relay.client().await;
    let mut publisher = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let a_old = event(&a, 1, "a old", &[], T);
    let b_old = event(&b, 1, "b old", &[], T);
    accept(&mut publisher, &a_old).await;
    accept(&mut publisher, &b_old).await;
    assert_eq!(
        ids(&sub.req("s", vec![json!({"authors": [pk(&a)]})]).await),
        vec![hex(&a_old)]
    );
    assert_eq!(
        ids(&sub.req("s", vec![json!({"authors": [pk(&b)]})]).await),
        vec![hex(&b_old)]
    );
    let a_new = event(&a, 1, "a new", &[], T + 1);
    let b_new = event(&b, 1, "b new", &[], T + 1);
    accept(&mut publisher, &a_new).await;
    accept(&mut publisher, &b_new).await;
    assert_eq!(
        next_event(&mut sub, "s").await,
        to_value(&b_new),
        "the old filter still delivers"
    );
    sub.expect_silence(QUIET).await;
}

// -------------------------------------------------------------- 2. kinds

#[tokio::test]
async fn replaceable_kinds_keep_only_the_newest_version() {
    // "for each combination of `pubkey` and `kind`, only the latest event
    // MUST be stored by relays" and, when answering a REQ, "it SHOULD return
    // just the latest one."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let mut reader = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let mut newest = Vec::new();
    for kind in [0u16, 3, 10002] {
        let v1 = event(&a, kind, "v1", &[], T);
        let v3 = event(&a, kind, "v3", &[], T + 20);
        let v2 = event(&a, kind, "v2", &[], T + 10);
        accept(&mut c, &v1).await;
        accept(&mut c, &v3).await;
        let reason = refuse(&mut c, &v2).await;
        assert!(reason.starts_with("blocked:"), "{reason}");
        assert!(
            reason.contains("newer"),
            "the reason should mention a newer version: {reason}"
        );
        let got = fetch_ids(
            &mut reader,
            vec![json!({"authors": [pk(&a)], "kinds": [kind]})],
        )
        .await;
        assert_eq!(got, vec![hex(&v3)], "kind {kind}");
        // Neither older version is served, even when asked for by id.
        let got = fetch_ids(
            &mut reader,
            vec![json!({"ids": [hex(&v1), hex(&v2), hex(&v3)]})],
        )
        .await;
        assert_eq!(got, vec![hex(&v3)], "kind {kind}");
        newest.push(v3);
    }
    // One version per (pubkey, kind): other kinds and other pubkeys coexist.
    let other = event(&b, 0, "someone else", &[], T);
    accept(&mut c, &other).await;
    let got = fetch_ids(&mut reader, vec![json!({"kinds": [0, 3, 10002]})]).await;
    let mut expected: Vec<&Event> = newest.iter().collect();
    expected.push(&other);
    assert_eq!(got, newest_first(&expected));
    let stored = relay.stored().integer("SELECT count(*) FROM event");
    assert_eq!(stored, 4, "replaced versions are still in the database");

    // A d tag means nothing for a replaceable kind: the address is
    // (pubkey, kind) alone.
    let with_d = event(&a, 10002, "with a d tag", &[&["d", "x"]], T + 30);
    accept(&mut c, &with_d).await;
    let got = fetch_ids(
        &mut reader,
        vec![json!({"authors": [pk(&a)], "kinds": [10002]})],
    )
    .await;
    assert_eq!(got, vec![hex(&with_d)]);
    let reason = refuse(
        &mut c,
        &event(&a, 10002, "other d, older", &[&["d", "y"]], T + 25),
    )
    .await;
    assert!(reason.starts_with("blocked:"), "{reason}");
}

#[tokio::test]
async fn replaceable_ties_keep_the_lowest_id_whatever_the_arrival_order() {
    // "In case of replaceable events with the same timestamp, the event with
    // the lowest id (first in lexical order) should be retained, and the
    // other discarded."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    for (kind, d) in [(0u16, None), (10002, None), (30023, Some("x"))] {
        for lowest_first in [true, false] {
            let keys = Keys::generate();
            let tags: &[&[&str]] = if d.is_some() { &[&["d", "x"]] } else { &[] };
            let first = event(&keys, kind, "first", tags, T);
            let second = event(&keys, kind, "second", tags, T);
            let (low, high) = if hex(&first) < hex(&second) {
                (first, second)
            } else {
                (second, first)
            };
            if lowest_first {
                accept(&mut c, &low).await;
                refuse(&mut c, &high).await;
            } else {
                accept(&mut c, &high).await;
                accept(&mut c, &low).await;
            }
            let got = fetch_ids(
                &mut c,
                vec![json!({"authors": [pk(&keys)], "kinds": [kind]})],
            )
            .await;
            assert_eq!(
                got,
                vec![hex(&low)],
                "kind {kind}, lowest first: {lowest_first}"
            );
            let got = fetch_ids(&mut c, vec![json!({"ids": [hex(&high)]})]).await;
            assert!(got.is_empty(), "kind {kind}: the higher id is still served");
        }
    }
}

#[tokio::test]
async fn addressable_events_are_kept_per_pubkey_kind_and_d_tag() {
    // "for each combination of `kind`, `pubkey` and the `d` tag value, only
    // the latest event MUST be stored by relays".
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let a1 = event(&a, 30023, "a1", &[&["d", "a"]], T);
    let b1 = event(&a, 30023, "b1", &[&["d", "b"]], T);
    let a2 = event(&a, 30023, "a2", &[&["d", "a"]], T + 5);
    for e in [&a1, &b1, &a2] {
        accept(&mut c, e).await;
    }
    let reason = refuse(&mut c, &event(&a, 30023, "stale a", &[&["d", "a"]], T + 1)).await;
    assert!(
        reason.starts_with("blocked:") && reason.contains("newer"),
        "{reason}"
    );
    // Same d under another kind or another author: different addresses.
    let other_kind = event(&a, 30024, "other kind", &[&["d", "a"]], T);
    let other_author = event(&b, 30023, "other author", &[&["d", "a"]], T);
    accept(&mut c, &other_kind).await;
    accept(&mut c, &other_author).await;
    let got = fetch_ids(&mut c, vec![json!({"authors": [pk(&a)], "kinds": [30023]})]).await;
    assert_eq!(got, newest_first(&[&a2, &b1]));
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"#d": ["a"], "kinds": [30023]})]).await,
        newest_first(&[&a2, &other_author])
    );
    assert!(
        fetch(&mut c, vec![json!({"ids": [hex(&a1)]})])
            .await
            .is_empty()
    );

    // An addressable event without a d tag has the address d = "".
    let empty_d = event(&a, 30023, "empty d", &[&["d", ""]], T + 10);
    let no_d = event(&a, 30023, "no d", &[], T + 20);
    accept(&mut c, &empty_d).await;
    accept(&mut c, &no_d).await;
    assert!(
        fetch(&mut c, vec![json!({"ids": [hex(&empty_d)]})])
            .await
            .is_empty(),
        "no d tag did not replace d=\"\""
    );
    refuse(
        &mut c,
        &event(&a, 30023, "stale empty d", &[&["d", ""]], T + 15),
    )
    .await;
    let newer_empty_d = event(&a, 30023, "newer empty d", &[&["d", ""]], T + 25);
    accept(&mut c, &newer_empty_d).await;
    let got = fetch_ids(&mut c, vec![json!({"authors": [pk(&a)], "kinds": [30023]})]).await;
    assert_eq!(got, newest_first(&[&newer_empty_d, &a2, &b1]));
}

#[tokio::test]
async fn ephemeral_events_reach_live_subscribers_and_are_never_stored() {
    // "events are **ephemeral**, which means they are not expected to be
    // stored by relays."
    let relay = TestRelay::start().await;
    let mut sub = relay.client().await;
    let mut publisher = relay.client().await;
    let mut reader = relay.client().await;
    let a = Keys::generate();
    assert!(
        sub.req("live", vec![json!({"kinds": [20001], "authors": [pk(&a)]})])
            .await
            .is_empty()
    );
    let ephemeral = event(&a, 20001, "now or never", &[], now());
    let (accepted, reason) = publisher.publish(&ephemeral).await;
    assert!(accepted, "{reason}");
    assert_eq!(next_event(&mut sub, "live").await, to_value(&ephemeral));
    sub.expect_silence(QUIET).await;
    assert!(
        fetch(&mut reader, vec![json!({"kinds": [20001]})])
            .await
            .is_empty()
    );
    assert!(
        fetch(&mut reader, vec![json!({"ids": [hex(&ephemeral)]})])
            .await
            .is_empty()
    );
    assert_eq!(rows_for(&relay.stored(), &ephemeral), 0);
}

#[tokio::test]
async fn kind_22242_is_refused_and_never_broadcast() {
    let relay = TestRelay::start().await;
    let mut sub = relay.client().await;
    let mut publisher = relay.client().await;
    let a = Keys::generate();
    assert!(
        sub.req("auth", vec![json!({"kinds": [22242]})])
            .await
            .is_empty()
    );
    assert!(
        sub.req("mine", vec![json!({"authors": [pk(&a)]})])
            .await
            .is_empty()
    );
    let auth = event(
        &a,
        22242,
        "",
        &[&["relay", relay.url.as_str()], &["challenge", "abc"]],
        now(),
    );
    refuse(&mut publisher, &auth).await;
    sub.expect_silence(QUIET).await;
    assert!(
        fetch(&mut publisher, vec![json!({"kinds": [22242]})])
            .await
            .is_empty()
    );
    assert_eq!(rows_for(&relay.stored(), &auth), 0);
}

#[tokio::test]
async fn protected_events_need_their_author_authenticated() {
    // NIP-70 in full is tested in tests/auth.rs; here: not stored, not sent.
    let relay = TestRelay::start().await;
    let mut sub = relay.client().await;
    let mut publisher = relay.client().await;
    let a = Keys::generate();
    assert!(
        sub.req("mine", vec![json!({"authors": [pk(&a)]})])
            .await
            .is_empty()
    );
    let protected = event(&a, 1, "only via AUTH", &[&["-"]], T);
    let reason = refuse(&mut publisher, &protected).await;
    assert!(reason.starts_with("auth-required:"), "{reason}");
    sub.expect_silence(QUIET).await;
    assert!(
        fetch(&mut publisher, vec![json!({"ids": [hex(&protected)]})])
            .await
            .is_empty()
    );
}

// ---------------------------------------------------------- 3. live fan-out

#[tokio::test]
async fn live_events_arrive_once_after_eose_and_stop_at_close() {
    let relay = TestRelay::start().await;
    let mut sub = relay.client().await;
    let mut publisher = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let stored = event(&a, 1, "stored", &[], T);
    accept(&mut publisher, &stored).await;
    // Two filters that both match the first live event.
    let filters = vec![json!({"authors": [pk(&a)]}), json!({"#t": ["live"]})];
    assert_eq!(ids(&sub.req("s", filters).await), vec![hex(&stored)]);

    let both = event(&a, 1, "matches both filters", &[&["t", "live"]], T + 1);
    accept(&mut publisher, &both).await;
    assert_eq!(next_event(&mut sub, "s").await, to_value(&both));
    let unrelated = event(&b, 1, "matches neither", &[&["t", "dead"]], T + 2);
    let tag_only = event(&b, 1, "matches the tag filter", &[&["t", "live"]], T + 3);
    accept(&mut publisher, &unrelated).await;
    accept(&mut publisher, &tag_only).await;
    // Not `both` again, not `unrelated`: the next one is `tag_only`.
    assert_eq!(next_event(&mut sub, "s").await, to_value(&tag_only));
    sub.expect_silence(QUIET).await;

    // "Any new events it receives SHOULD be sent to that same websocket
    // until [...] a `CLOSE` event is received with the same `<subscription_id>`"
    sub.send_json(json!(["CLOSE", "s"])).await;
    let probe = sub.req("probe", vec![json!({"authors": [pk(&a)]})]).await;
    assert_eq!(ids(&probe), newest_first(&[&stored, &both]));
    let after_close = event(&a, 1, "after close", &[&["t", "live"]], T + 4);
    accept(&mut publisher, &after_close).await;
    assert_eq!(next_event(&mut sub, "probe").await, to_value(&after_close));
    sub.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_missed_or_repeated_across_eose() {
    const TOTAL: usize = 300;
    let relay = TestRelay::start().await;
    let keys = Keys::generate();
    let author = pk(&keys);
    let events: Vec<Event> = (0..TOTAL)
        .map(|i| {
            event(
                &keys,
                1,
                &format!("race {i}"),
                &[&["t", "race"]],
                T + i as u64,
            )
        })
        .collect();
    let (progress, watch) = tokio::sync::watch::channel(0usize);
    let mut subscribers = Vec::new();
    for (n, start_at) in [0usize, 37, 101, 150, 203, 262, 297]
        .into_iter()
        .enumerate()
    {
        let mut client = relay.client().await;
        let mut watch = watch.clone();
        let filter = if n % 2 == 0 {
            json!({"authors": [author]})
        } else {
            json!({"kinds": [1], "#t": ["race"]})
        };
        subscribers.push(tokio::spawn(async move {
            watch
                .wait_for(|published| *published >= start_at)
                .await
                .expect("writer alive");
            client.send_json(json!(["REQ", "race", filter])).await;
            let stored = client.collect_until_eose("race").await;
            let mut live = Vec::new();
            let mut seen: HashSet<String> = ids(&stored).into_iter().collect();
            while seen.len() < TOTAL {
                let event = next_event(&mut client, "race").await;
                seen.insert(event["id"].as_str().unwrap().to_owned());
                live.push(event);
            }
            client.expect_silence(QUIET).await;
            (start_at, stored, live)
        }));
    }
    let mut writer = relay.client().await;
    let mut accepted = Vec::new();
    for chunk in events.chunks(3) {
        let answers = publish_burst(&mut writer, chunk).await;
        for e in chunk {
            let (ok, reason) = &answers[&hex(e)];
            assert!(*ok && reason.is_empty(), "{reason}");
            accepted.push(hex(e));
        }
        progress.send_replace(accepted.len());
    }
    for task in subscribers {
        let (start_at, stored, live) = task.await.expect("subscriber finished");
        let mut seen: HashMap<String, usize> = HashMap::new();
        for id in ids(&stored).into_iter().chain(ids(&live)) {
            *seen.entry(id).or_default() += 1;
        }
        let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            repeated.is_empty(),
            "REQ after {start_at}: sent twice: {repeated:?}"
        );
        let missing = accepted.iter().filter(|id| !seen.contains_key(*id)).count();
        assert_eq!(missing, 0, "REQ after {start_at}: {missing} events missing");
        assert_eq!(stored.len() + live.len(), TOTAL);
        assert!(
            stored.len() >= start_at,
            "REQ after {start_at} saw only {} stored events",
            stored.len()
        );
    }
}

#[tokio::test]
async fn live_events_arrive_in_commit_order() {
    let relay = TestRelay::start().await;
    let mut sub = relay.client().await;
    let mut publisher = relay.client().await;
    let a = Keys::generate();
    assert!(
        sub.req("s", vec![json!({"authors": [pk(&a)]})])
            .await
            .is_empty()
    );
    // created_at deliberately out of order: only commit order counts.
    let mut committed = Vec::new();
    for i in 0..60u64 {
        let e = event(&a, 1, &format!("#{i}"), &[], T + (i * 37) % 60);
        accept(&mut publisher, &e).await;
        committed.push(hex(&e));
    }
    let mut received = Vec::new();
    for _ in 0..committed.len() {
        received.push(
            next_event(&mut sub, "s").await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(received, committed);
    sub.expect_silence(QUIET).await;
}

// ------------------------------------------------- 4. read your writes, bytes

#[tokio::test]
async fn an_accepted_event_is_immediately_served_to_another_connection() {
    let relay = TestRelay::start().await;
    let mut writer = relay.client().await;
    let mut reader = relay.client().await;
    let a = Keys::generate();
    for i in 0..45u64 {
        let e = match i % 3 {
            0 => event(&a, 1, &format!("note {i}"), &[], T + i),
            1 => event(&a, 0, &format!("{{\"name\":\"v{i}\"}}"), &[], T + i),
            _ => event(&a, 30000, &format!("set {i}"), &[&["d", "same"]], T + i),
        };
        accept(&mut writer, &e).await;
        assert_eq!(
            fetch(&mut reader, vec![json!({"ids": [hex(&e)]})]).await,
            vec![to_value(&e)],
            "write {i}"
        );
    }
}

/// A JSON string literal with every UTF-16 unit written as `\uXXXX`.
fn escape_everything(text: &str) -> String {
    let mut out = String::from("\"");
    for unit in text.encode_utf16() {
        out.push_str(&format!("\\u{unit:04X}"));
    }
    out.push('"');
    out
}

#[tokio::test]
async fn events_are_served_in_canonical_form_byte_for_byte() {
    let relay = TestRelay::start().await;
    let mut sub = relay.client().await;
    let mut publisher = relay.client().await;
    let mut reader = relay.client().await;
    let a = Keys::generate();
    let content =
        "line\nquote\" back\\slash / tab\t nul\u{0} bell\u{7} del\u{7f} ls\u{2028} é 👍🏽 日本";
    let e = event(
        &a,
        1,
        content,
        &[
            &["t", "canon"],
            &["p", pk(&a).as_str(), "wss://x.example"],
            &["alt", "a \"q\" \\ ü"],
        ],
        T,
    );
    let value = to_value(&e);
    let canonical = format!(
        "{{\"id\":\"{}\",\"pubkey\":\"{}\",\"created_at\":{},\"kind\":1,\"tags\":{},\"content\":{},\"sig\":\"{}\"}}",
        hex(&e),
        pk(&a),
        T,
        serde_json::to_string(&value["tags"]).unwrap(),
        serde_json::to_string(content).unwrap(),
        value["sig"].as_str().unwrap(),
    );
    assert_eq!(
        canonical,
        e.as_json(),
        "the nostr crate writes the same form"
    );
    assert!(
        sub.req("live", vec![json!({"#t": ["canon"]})])
            .await
            .is_empty()
    );

    // Fields in another order, whitespace everywhere, every character of
    // the content escaped, and a field NIP-01 does not know.
    let tags = serde_json::to_string_pretty(&value["tags"]).unwrap();
    let raw = format!(
        "[\n  \"EVENT\" ,\r\n\t{{ \"sig\" : \"{sig}\" ,\n  \"unknown\" : {{ \"nested\" : [1, 2.5, null, true] }} ,\n  \"content\" : {content} ,\n  \"tags\" : {tags} ,\n  \"kind\" : 1 ,\n  \"created_at\" : {created_at} ,\n  \"pubkey\" : \"{pubkey}\" ,\n  \"id\" : \"{id}\"\n }}  \n]\n",
        sig = value["sig"].as_str().unwrap(),
        content = escape_everything(content),
        created_at = T,
        pubkey = pk(&a),
        id = hex(&e),
    );
    publisher.send_text(raw).await;
    assert_eq!(publisher.ok_for(&hex(&e)).await, (true, String::new()));

    // Live and stored, the frame is the canonical form and nothing else.
    assert_eq!(
        sub.recv_text().await,
        format!("{}{canonical}]", event_frame_prefix("live"))
    );
    let sub_id = "stored \"q\" \\ ü";
    reader
        .send_json(json!(["REQ", sub_id, {"ids": [hex(&e)]}]))
        .await;
    assert_eq!(
        reader.recv_text().await,
        format!("{}{canonical}]", event_frame_prefix(sub_id))
    );
    assert_eq!(
        reader.recv_text().await,
        format!("[\"EOSE\",{}]", serde_json::to_string(sub_id).unwrap())
    );
    // And it is what the database holds.
    let db = relay.stored();
    let stored = db.value(&format!(
        "SELECT json FROM event WHERE id = {}",
        db.bytes(e.id.as_bytes())
    ));
    assert_eq!(stored, canonical);
}

// ---------------------------------------------------------- 5. duplicates

#[tokio::test]
async fn a_duplicate_is_acknowledged_with_the_duplicate_prefix() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let mut other = relay.client().await;
    let a = Keys::generate();
    for e in [
        note(&a, "twice"),
        event(&a, 0, "{}", &[], T),
        event(&a, 30023, "x", &[&["d", "x"]], T),
    ] {
        accept(&mut c, &e).await;
        let (accepted, reason) = c.publish(&e).await;
        assert!(accepted, "{reason}");
        assert!(reason.starts_with("duplicate:"), "{reason}");
        let (accepted, reason) = other.publish(&e).await;
        assert!(accepted && reason.starts_with("duplicate:"), "{reason}");
        assert_eq!(
            fetch_ids(&mut c, vec![json!({"ids": [hex(&e)]})]).await,
            vec![hex(&e)]
        );
    }
}

// ------------------------------------------------------------ 6. NIP-09

#[tokio::test]
async fn a_deletion_by_the_author_removes_the_event_and_blocks_it() {
    // "Relays SHOULD delete or stop publishing any referenced events that
    // have an identical `pubkey` as the deletion request."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let mut reader = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let target = event(&a, 1, "regret", &[], T);
    let keep = event(&a, 1, "keep", &[], T + 1);
    accept(&mut c, &target).await;
    accept(&mut c, &keep).await;

    // Someone else's request has no effect on it.
    let forged = deletion(&b, &[&target], T + 2);
    let _ = c.publish(&forged).await;
    assert_eq!(
        fetch_ids(&mut reader, vec![json!({"ids": [hex(&target)]})]).await,
        vec![hex(&target)]
    );

    let request = deletion(&a, &[&target], T + 3);
    accept(&mut c, &request).await;
    assert!(
        fetch(&mut reader, vec![json!({"ids": [hex(&target)]})])
            .await
            .is_empty()
    );
    assert_eq!(rows_for(&relay.stored(), &target), 0);
    // "Relays SHOULD continue to publish/share the deletion request events
    // indefinitely"
    assert_eq!(
        fetch_ids(&mut reader, vec![json!({"authors": [pk(&a)]})]).await,
        newest_first(&[&request, &keep])
    );
    assert!(
        fetch_ids(
            &mut reader,
            vec![json!({"#e": [hex(&target)], "kinds": [5]})]
        )
        .await
        .contains(&hex(&request))
    );

    // The deleted event cannot come back, from any connection.
    let reason = refuse(&mut c, &target).await;
    assert!(reason.starts_with("blocked:"), "{reason}");
    let reason = refuse(&mut reader, &target).await;
    assert!(reason.starts_with("blocked:"), "{reason}");
    assert!(
        fetch(&mut reader, vec![json!({"ids": [hex(&target)]})])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_deletion_that_arrives_first_refuses_its_target_later() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let target = event(&a, 1, "not yet here", &[], T);
    accept(&mut c, &deletion(&a, &[&target], T + 1)).await;
    let reason = refuse(&mut c, &target).await;
    assert!(reason.starts_with("blocked:"), "{reason}");
    assert!(
        fetch(&mut c, vec![json!({"ids": [hex(&target)]})])
            .await
            .is_empty()
    );

    // Another pubkey's early request does not block the author's event.
    let other = event(&a, 1, "still welcome", &[], T + 2);
    let _ = c.publish(&deletion(&b, &[&other], T + 3)).await;
    accept(&mut c, &other).await;
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"ids": [hex(&other)]})]).await,
        vec![hex(&other)]
    );
}

#[tokio::test]
async fn a_deletion_of_a_deletion_has_no_effect() {
    // "Publishing a deletion request event against a deletion request has
    // no effect."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let a = Keys::generate();
    let target = event(&a, 1, "gone", &[], T);
    let first = deletion(&a, &[&target], T + 1);
    accept(&mut c, &target).await;
    accept(&mut c, &first).await;
    let undo = deletion(&a, &[&first], T + 2);
    let _ = c.publish(&undo).await;
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"ids": [hex(&first)]})]).await,
        vec![hex(&first)]
    );
    refuse(&mut c, &target).await;

    // Also when the request against the request arrives first.
    let second_target = event(&a, 1, "also gone", &[], T + 3);
    let second = deletion(&a, &[&second_target], T + 4);
    let early_undo = deletion(&a, &[&second], T + 5);
    let _ = c.publish(&early_undo).await;
    accept(&mut c, &second_target).await;
    accept(&mut c, &second).await;
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"ids": [hex(&second)]})]).await,
        vec![hex(&second)]
    );
    assert!(
        fetch(&mut c, vec![json!({"ids": [hex(&second_target)]})])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn an_address_deletion_removes_versions_up_to_its_created_at() {
    // "When an `a` tag is used, relays SHOULD delete all versions of the
    // replaceable event up to the `created_at` timestamp of the deletion
    // request event."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (a, b) = (Keys::generate(), Keys::generate());
    let address = |d: &str| format!("30023:{}:{d}", pk(&a));
    let article = event(&a, 30023, "v10", &[&["d", "art"]], T + 10);
    let later = event(
        &a,
        30023,
        "newer than the request",
        &[&["d", "kept"]],
        T + 30,
    );
    let other_d = event(&a, 30023, "another address", &[&["d", "other"]], T + 5);
    for e in [&article, &later, &other_d] {
        accept(&mut c, e).await;
    }
    // Only the author's own address counts.
    let _ = c
        .publish(&event(
            &b,
            5,
            "",
            &[&["a", address("art").as_str()]],
            T + 40,
        ))
        .await;
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"ids": [hex(&article)]})]).await,
        vec![hex(&article)]
    );

    let request = event(
        &a,
        5,
        "",
        &[&["a", address("art").as_str()], &["k", "30023"]],
        T + 20,
    );
    accept(&mut c, &request).await;
    let got = fetch_ids(&mut c, vec![json!({"authors": [pk(&a)], "kinds": [30023]})]).await;
    assert_eq!(got, newest_first(&[&later, &other_d]));
    for created_at in [T + 15, T + 20] {
        let reason = refuse(
            &mut c,
            &event(&a, 30023, "too old", &[&["d", "art"]], created_at),
        )
        .await;
        assert!(reason.starts_with("blocked:"), "{reason}");
    }
    let revived = event(&a, 30023, "v25", &[&["d", "art"]], T + 25);
    accept(&mut c, &revived).await;
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"authors": [pk(&a)], "#d": ["art"]})]).await,
        vec![hex(&revived)]
    );
    // The request itself is stored and served.
    assert_eq!(
        fetch(&mut c, vec![json!({"ids": [hex(&request)]})]).await,
        vec![to_value(&request)]
    );

    // A version newer than the request survives it.
    accept(
        &mut c,
        &event(&a, 5, "", &[&["a", address("kept").as_str()]], T + 20),
    )
    .await;
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"ids": [hex(&later)]})]).await,
        vec![hex(&later)]
    );

    // A d value may itself contain colons.
    let colons = event(&a, 30023, "colons", &[&["d", "a:b:c"]], T + 10);
    accept(&mut c, &colons).await;
    accept(
        &mut c,
        &event(&a, 5, "", &[&["a", address("a:b:c").as_str()]], T + 20),
    )
    .await;
    assert!(
        fetch(&mut c, vec![json!({"ids": [hex(&colons)]})])
            .await
            .is_empty()
    );
    refuse(
        &mut c,
        &event(&a, 30023, "colons again", &[&["d", "a:b:c"]], T + 20),
    )
    .await;

    // For a replaceable kind the address ends with a colon (empty d).
    let relays = event(&a, 10002, "relay list", &[], T + 10);
    accept(&mut c, &relays).await;
    let replaceable = format!("10002:{}:", pk(&a));
    accept(
        &mut c,
        &event(&a, 5, "", &[&["a", replaceable.as_str()]], T + 20),
    )
    .await;
    assert!(
        fetch(&mut c, vec![json!({"ids": [hex(&relays)]})])
            .await
            .is_empty()
    );
    refuse(&mut c, &event(&a, 10002, "still too old", &[], T + 19)).await;
    accept(&mut c, &event(&a, 10002, "new relay list", &[], T + 21)).await;
}

#[tokio::test]
async fn a_gift_wrap_can_be_deleted_by_its_recipient_only() {
    // NIP-59: "relays SHOULD delete `kind:1059` events whose p-tag matches
    // the signer of NIP-09 deletions".
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (recipient, third, author) = (Keys::generate(), Keys::generate(), Keys::generate());
    let wrap_for = |content: &str, created_at: u64| {
        event(
            &Keys::generate(),
            1059,
            content,
            &[&["p", pk(&recipient).as_str()]],
            created_at,
        )
    };
    let wrap = wrap_for("ciphertext 1", T);
    accept(&mut c, &wrap).await;
    // Gift wraps are served only to their recipient (NIP-59 via NIP-42).
    assert_eq!(
        c.authenticate(&recipient, &relay.url).await,
        (true, String::new())
    );
    let _ = c.publish(&deletion(&third, &[&wrap], T + 1)).await;
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"ids": [hex(&wrap)]})]).await,
        vec![hex(&wrap)]
    );
    accept(&mut c, &deletion(&recipient, &[&wrap], T + 2)).await;
    assert!(
        fetch(&mut c, vec![json!({"ids": [hex(&wrap)]})])
            .await
            .is_empty()
    );
    refuse(&mut c, &wrap).await;

    // The recipient's request also works before the wrap arrives...
    let early = wrap_for("ciphertext 2", T + 3);
    accept(&mut c, &deletion(&recipient, &[&early], T + 4)).await;
    refuse(&mut c, &early).await;
    // ...and a third party's does not.
    let third_early = wrap_for("ciphertext 3", T + 5);
    let _ = c.publish(&deletion(&third, &[&third_early], T + 6)).await;
    accept(&mut c, &third_early).await;

    // Being p-tagged in an ordinary event gives no such right.
    let mention = event(&author, 1, "hi", &[&["p", pk(&recipient).as_str()]], T + 7);
    accept(&mut c, &mention).await;
    let _ = c.publish(&deletion(&recipient, &[&mention], T + 8)).await;
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"ids": [hex(&mention)]})]).await,
        vec![hex(&mention)]
    );
}

// ------------------------------------------------------------ 7. NIP-40

#[tokio::test]
async fn an_expired_event_is_refused_as_invalid() {
    // "Relays SHOULD drop any events that are published to them if they are
    // expired."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let a = Keys::generate();
    let expired = event(
        &a,
        1,
        "old news",
        &[&["expiration", (now() - 10).to_string().as_str()]],
        now() - 20,
    );
    let reason = refuse(&mut c, &expired).await;
    assert!(reason.starts_with("invalid:"), "{reason}");
    assert!(
        fetch(&mut c, vec![json!({"ids": [hex(&expired)]})])
            .await
            .is_empty()
    );
}

/// Waits (at most ~3 s) until the wall clock is past `expiration`.
async fn wait_past(expiration: u64) {
    while now() <= expiration {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_event_is_served_until_it_expires() {
    // "Relays SHOULD NOT send expired events to clients, even if they are
    // stored."
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let a = Keys::generate();
    let expiration = now() + 2;
    let fleeting = event(
        &a,
        1,
        "soon gone",
        &[&["expiration", expiration.to_string().as_str()]],
        now(),
    );
    let lasting = event(&a, 1, "stays", &[], now());
    accept(&mut c, &fleeting).await;
    accept(&mut c, &lasting).await;
    let both = vec![json!({"ids": [hex(&fleeting), hex(&lasting)]})];
    assert_eq!(fetch(&mut c, both.clone()).await.len(), 2);
    wait_past(expiration).await;
    assert_eq!(fetch_ids(&mut c, both).await, vec![hex(&lasting)]);
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"authors": [pk(&a)]})]).await,
        vec![hex(&lasting)]
    );
}

#[tokio::test]
async fn expired_events_are_purged_from_the_database() {
    let relay = TestRelay::start_with(|config| config.storage.expiration_sweep_seconds = 1).await;
    let mut c = relay.client().await;
    let a = Keys::generate();
    let expiration = now() + 2;
    let fleeting = event(
        &a,
        1,
        "purge me",
        &[
            &["expiration", expiration.to_string().as_str()],
            &["t", "ttl"],
        ],
        now(),
    );
    let lasting = event(&a, 1, "keep me", &[&["t", "ttl"]], now());
    accept(&mut c, &fleeting).await;
    accept(&mut c, &lasting).await;
    let db = relay.stored();
    assert_eq!(rows_for(&db, &fleeting), 1, "stored once OK true is sent");
    let seq = db.integer(&format!(
        "SELECT seq FROM event WHERE id = {}",
        db.bytes(fleeting.id.as_bytes())
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while rows_for(&db, &fleeting) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired event still in the database"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(now() >= expiration, "purged before it expired");
    let tags = db.integer(&format!("SELECT count(*) FROM tag WHERE event_seq = {seq}"));
    assert_eq!(tags, 0, "its tag rows are purged too");
    assert_eq!(rows_for(&db, &lasting), 1);
    assert_eq!(
        fetch_ids(&mut c, vec![json!({"#t": ["ttl"]})]).await,
        vec![hex(&lasting)]
    );
}

// ------------------------------------------------------- 8. interop corpus

fn tricky_contents() -> Vec<(String, String)> {
    let mut corpus: Vec<(String, String)> = [
        ("quote", "\""),
        ("backslash", "\\"),
        ("backspace", "\u{8}"),
        ("tab", "\t"),
        ("line feed", "\n"),
        ("form feed", "\u{c}"),
        ("carriage return", "\r"),
        ("all short escapes", "a\"b\\c\u{8}d\te\nf\u{c}g\rh"),
        ("DEL", "\u{7f}"),
        ("line separator", "\u{2028}"),
        ("paragraph separator", "\u{2029}"),
        ("slash", "/ </script> http://example.com/a/b"),
        ("emoji with ZWJ", "👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇺🇳"),
        (
            "combining marks",
            "e\u{301} Z\u{324}\u{354}\u{367}\u{311}\u{313} a\u{30a}\u{30a}\u{30a}",
        ),
        ("CJK", "日本語のテキスト、中文，한국어"),
        (
            "RTL",
            "مرحبا بالعالم \u{200f}שלום\u{200e} abc \u{202e}reversed\u{202c}",
        ),
        (
            "BOM and noncharacters",
            "\u{feff}\u{fffd}\u{fffe}\u{ffff}\u{10ffff}",
        ),
        ("empty", ""),
        (
            "JSON look-alike",
            r#"{"id":"x","content":"\"}"],["EOSE","s"]"#,
        ),
        ("escape look-alike", r#"\u0000 \n \\ \""#),
    ]
    .iter()
    .map(|(label, content)| (label.to_string(), content.to_string()))
    .collect();
    for code in 0u32..=0x1f {
        let c = char::from_u32(code).unwrap();
        corpus.push((format!("U+{code:04X}"), format!("<{c}>")));
    }
    corpus.push((
        "every C0 control".into(),
        (0u32..=0x1f).filter_map(char::from_u32).collect(),
    ));
    corpus.push((
        "every C1 control".into(),
        (0x80u32..=0x9f).filter_map(char::from_u32).collect(),
    ));
    let everything: String = corpus.iter().map(|(_, content)| content.as_str()).collect();
    corpus.push(("everything at once".into(), everything));
    let unit = "aé日👍\"\\\n\u{1}\u{2028}";
    let mut big = String::new();
    while big.len() < 10 * 1024 {
        big.push_str(unit);
    }
    corpus.push(("10 KB".into(), big));
    corpus
}

fn tricky_tags() -> Vec<Vec<Vec<String>>> {
    let lower = "ab".repeat(32);
    let upper = "AB".repeat(32);
    let c0: String = (0u32..=0x1f).filter_map(char::from_u32).collect();
    let tags: Vec<Vec<Vec<&str>>> = vec![
        vec![vec!["t", ""]],
        vec![vec!["t", "a\"b\\c\u{8}\t\n\u{c}\r"]],
        vec![vec!["t", c0.as_str()]],
        vec![vec!["t", "nul\u{0}inside"]],
        vec![vec!["t", "👩‍👩‍👧‍👦"], vec!["🔥", "火", "\u{2028}", ""]],
        vec![vec!["x"], vec!["", ""], vec!["t", "lonely names"]],
        vec![vec!["r", "a", "b", "c", "d", "e", "f", "g", "h", "i"]],
        vec![
            vec!["e", "not-hex"],
            vec!["p", upper.as_str()],
            vec!["t", "bad refs"],
        ],
        vec![vec!["t", lower.as_str()]],
        vec![vec!["t", upper.as_str()]],
        vec![vec!["t", "dup"], vec!["t", "dup"], vec!["t", "dup", "dup"]],
        vec![
            vec!["d", "/\u{7f}\u{85}"],
            vec!["T", "Upper"],
            vec!["t", "12345"],
            vec!["t", "1e3"],
        ],
        vec![vec!["t", "מימין לשמאל"], vec!["t", "e\u{301}"]],
    ];
    let mut tags: Vec<Vec<Vec<String>>> = tags
        .into_iter()
        .map(|set| {
            set.into_iter()
                .map(|tag| tag.into_iter().map(str::to_owned).collect())
                .collect()
        })
        .collect();
    tags.push(vec![
        vec!["t".into(), "long".into()],
        vec!["alt".into(), "x".repeat(5000)],
    ]);
    tags
}

/// Checks one event both ways between the relay and the `nostr` crate.
async fn round_trip(client: &mut Client, event: &Event, label: &str) {
    let (accepted, reason) = client.publish(event).await;
    assert!(accepted && reason.is_empty(), "{label}: refused: {reason}");
    let raw = fetch_raw(client, &hex(event)).await;
    let served: Value =
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{label}: bad JSON {e}: {raw}"));
    assert_eq!(served, to_value(event), "{label}");
    assert_eq!(
        raw,
        event.as_json(),
        "{label}: not byte for byte the NIP-01 form"
    );

    // Our parser, hash and signature check agree with the nostr crate.
    let ours = RelayEvent::from_value(&served).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(
        ours.compute_id(),
        event.id.to_bytes(),
        "{label}: id hash differs"
    );
    assert!(ours.verify_id().is_ok(), "{label}");
    assert!(ours.verify_signature().is_ok(), "{label}: signature");
    assert_eq!(ours.to_canonical_json(), raw, "{label}");

    // The nostr crate reads and verifies what the relay stored.
    let theirs =
        Event::from_json(&raw).unwrap_or_else(|e| panic!("{label}: nostr crate cannot parse: {e}"));
    assert!(
        theirs.verify().is_ok(),
        "{label}: nostr crate rejects the served event"
    );
    assert_eq!(&theirs, event, "{label}");
}

#[tokio::test]
async fn tricky_contents_and_tags_round_trip_with_the_nostr_crate() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let mut created_at = T;
    for (label, content) in tricky_contents() {
        created_at += 1;
        let e = event(&keys, 1, &content, &[&["t", "content"]], created_at);
        round_trip(&mut c, &e, &label).await;
    }
    let mut with_t: HashMap<String, HashSet<String>> = HashMap::new();
    for tags in tricky_tags() {
        created_at += 1;
        let slices: Vec<Vec<&str>> = tags
            .iter()
            .map(|t| t.iter().map(String::as_str).collect())
            .collect();
        let slices: Vec<&[&str]> = slices.iter().map(Vec::as_slice).collect();
        let e = event(&keys, 1, "tags", &slices, created_at);
        round_trip(&mut c, &e, &format!("tags {tags:?}")).await;
        for tag in tags.iter().filter(|t| t[0] == "t" && t.len() > 1) {
            with_t.entry(tag[1].clone()).or_default().insert(hex(&e));
        }
    }
    // Every tricky first value finds exactly its events.
    for (value, expected) in &with_t {
        let got: HashSet<String> = fetch_ids(&mut c, vec![json!({"#t": [value]})])
            .await
            .into_iter()
            .collect();
        assert_eq!(&got, expected, "#t {value:?}");
    }
    assert!(
        fetch(&mut c, vec![json!({"#t": ["nul"]})]).await.is_empty(),
        "a NUL cut a tag value short"
    );
    assert!(
        fetch(&mut c, vec![json!({"#t": ["Upper"]})])
            .await
            .is_empty()
    );
    assert_eq!(fetch(&mut c, vec![json!({"#T": ["Upper"]})]).await.len(), 1);
    assert_eq!(
        fetch(&mut c, vec![json!({"#d": ["/\u{7f}\u{85}"]})])
            .await
            .len(),
        1
    );
}
