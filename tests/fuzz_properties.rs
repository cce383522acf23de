//! Fuzzing inside the normal test suite: property tests over the network
//! parsers and the invariants that matter. The case count is small by
//! default (CI); run the long form by hand, for example
//! `FUZZ_CASES=1000000 cargo test --release --test fuzz_properties parse`.

mod common;

use nostr_relayd::privacy::Readers;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nostr::prelude::{EventBuilder, FinalizeEvent, Keys, Kind, Tag, Timestamp};
use nostr_relayd::config::Durability;
use nostr_relayd::nostr::{CanonicalEvent, ClientMessage, Event, Filter, Rejection};
use nostr_relayd::store::{QueryLimits, Store, StoreOptions};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Keys that matter to the parsers, plus noise.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("id".to_owned()),
        Just("pubkey".to_owned()),
        Just("created_at".to_owned()),
        Just("kind".to_owned()),
        Just("tags".to_owned()),
        Just("content".to_owned()),
        Just("sig".to_owned()),
        Just("ids".to_owned()),
        Just("authors".to_owned()),
        Just("kinds".to_owned()),
        Just("#e".to_owned()),
        Just("#p".to_owned()),
        Just("#t".to_owned()),
        Just("since".to_owned()),
        Just("until".to_owned()),
        Just("limit".to_owned()),
        Just("search".to_owned()),
        ".{0,4}",
    ]
}

/// Arbitrary JSON, biased towards what the parsers look at.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        "[0-9a-f]{64}".prop_map(Value::from),
        "[0-9a-f]{128}".prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![Just("EVENT"), Just("REQ"), Just("CLOSE"), Just("COUNT")].prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Messages shaped like the protocol, with arbitrary parts.
fn protocol_message() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value(),
        json_value().prop_map(|v| json!(["EVENT", v])),
        (".{0,70}", prop::collection::vec(json_value(), 0..4)).prop_map(|(id, filters)| {
            let mut message = vec![json!("REQ"), json!(id)];
            message.extend(filters);
            Value::Array(message)
        }),
        json_value().prop_map(|v| json!(["CLOSE", v])),
        (".{0,70}", json_value(), "[0-9a-fA-F]{0,80}|.{0,8}")
            .prop_map(|(id, filter, hex)| json!(["NEG-OPEN", id, filter, hex])),
        (json_value(), "[0-9a-fA-F]{0,80}|.{0,8}")
            .prop_map(|(id, hex)| json!(["NEG-MSG", id, hex])),
        json_value().prop_map(|v| json!(["NEG-CLOSE", v])),
    ]
}

/// Every answer is a well-formed relay message with a standard prefix.
fn check_answer(text: &str) -> Result<(), TestCaseError> {
    if let Err(rejection) = ClientMessage::parse(text) {
        let frame: Value = serde_json::from_str(&rejection.to_frame())
            .map_err(|e| TestCaseError::fail(format!("unparsable answer: {e}")))?;
        let reason = match &rejection {
            Rejection::Notice(reason) => reason,
            Rejection::Ok { reason, .. }
            | Rejection::Closed { reason, .. }
            | Rejection::NegErr { reason, .. } => reason,
        };
        prop_assert!(frame.is_array());
        prop_assert!(
            ["invalid:", "unsupported:", "blocked:"]
                .iter()
                .any(|p| reason.starts_with(p)),
            "reason without a standard prefix: {reason}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000), ..ProptestConfig::default() })]

    /// Client message parsing: any text gets a clear answer, never a panic.
    #[test]
    fn parse_any_text(text in ".{0,300}") {
        check_answer(&text)?;
    }

    /// Client message parsing on JSON shaped like the protocol.
    #[test]
    fn parse_protocol_shaped_json(message in protocol_message()) {
        check_answer(&message.to_string())?;
    }

    /// Filter parsing and matching: any JSON object either parses or is
    /// refused with invalid/unsupported; a parsed filter matches without panic.
    #[test]
    fn filters_parse_or_refuse(value in json_value(), content in ".{0,20}") {
        if let Ok(filter) = Filter::from_value(&value) {
            let event = Event::from_value(&json!({
                "id": "a".repeat(64), "pubkey": "b".repeat(64), "created_at": 5, "kind": 1,
                "tags": [["e", "c".repeat(64)], ["t", content]], "content": "", "sig": "d".repeat(128)
            })).unwrap();
            let _ = filter.matches(&event);
            let _ = filter.is_unsatisfiable();
        }
    }
}

fn tag_strategy() -> impl Strategy<Value = Vec<String>> {
    (
        prop_oneof![
            Just("t".to_owned()),
            Just("x".to_owned()),
            Just("subject".to_owned()),
            "[a-zA-Z]{1,3}"
        ],
        prop::collection::vec(any::<String>(), 0..3),
    )
        .prop_map(|(name, mut values)| {
            values.insert(0, name);
            values
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    /// Event validation agrees with an independent implementation (the
    /// `nostr` crate) for any content and tags: same id, valid signature,
    /// same canonical fields; and a single changed byte is refused.
    #[test]
    fn ids_and_signatures_agree_with_the_nostr_crate(
        content in any::<String>(),
        tags in prop::collection::vec(tag_strategy(), 0..5),
        kind in 0u16..=u16::MAX,
        created_at in 0u64..(1u64 << 40),
    ) {
        let keys = Keys::parse("6b911fd37cdf5c81d4c0adb1ab7fa822ed253ab0ad9aa18d77257c88b29b718e").unwrap();
        let parsed: Result<Vec<Tag>, _> = tags.iter().map(|t| Tag::parse(t.clone())).collect();
        let Ok(parsed) = parsed else { return Ok(()) };
        let signed = EventBuilder::new(Kind::from(kind), content.clone())
            .tags(parsed)
            .custom_created_at(Timestamp::from(created_at))
            .finalize(&keys)
            .unwrap();
        let theirs: Value = serde_json::from_str(&signed.as_json()).unwrap();
        let ours = Event::from_value(&theirs).map_err(|e| TestCaseError::fail(e.0))?;
        prop_assert_eq!(ours.compute_id(), signed.id.to_bytes());
        prop_assert!(ours.verify_id().is_ok());
        prop_assert!(ours.verify_signature().is_ok());
        let canonical: Value = serde_json::from_str(&ours.to_canonical_json()).unwrap();
        prop_assert_eq!(canonical, theirs);
        let mut tampered = ours.clone();
        tampered.content.push('!');
        prop_assert!(tampered.verify_id().is_err());
    }
}

/// Events drawn from small pools so that filters hit, ties happen, and
/// replaceable/addressable versions collide.
fn small_event() -> impl Strategy<Value = Event> {
    (
        0usize..4,
        prop_oneof![Just(0u16), Just(1), Just(3), Just(7), Just(30023)],
        1_000i64..1_012,
        prop::collection::vec(
            (
                prop_oneof![Just("e"), Just("p"), Just("t"), Just("d")],
                0usize..4,
            ),
            0..4,
        ),
        ".{0,8}",
    )
        .prop_map(|(author, kind, created_at, tags, content)| {
            let values = [
                "a".repeat(64),
                "b".repeat(64),
                "nostr".to_owned(),
                "zap".to_owned(),
            ];
            let mut event = Event {
                id: [0; 32],
                pubkey: [author as u8 + 1; 32],
                created_at,
                kind,
                tags: tags
                    .into_iter()
                    .map(|(n, v)| vec![n.to_owned(), values[v].clone()])
                    .collect(),
                content,
                sig: [0; 64],
            };
            event.id = event.compute_id();
            event
        })
}

fn small_filter() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(0u8..4, 0..3)),
        prop::option::of(prop::collection::vec(
            prop_oneof![Just(0u16), Just(1), Just(3), Just(7), Just(30023)],
            0..3,
        )),
        prop::option::of((
            prop_oneof![Just("#e"), Just("#t"), Just("#d")],
            prop::collection::vec(0usize..4, 1..3),
        )),
        prop::option::of(1_000i64..1_012),
        prop::option::of(1_000i64..1_012),
        prop::option::of(0u64..8),
    )
        .prop_map(|(authors, kinds, tag, since, until, limit)| {
            let values = [
                "a".repeat(64),
                "b".repeat(64),
                "nostr".to_owned(),
                "zap".to_owned(),
            ];
            let mut filter = serde_json::Map::new();
            if let Some(authors) = authors {
                let list: Vec<String> = authors.iter().map(|a| hex::encode([a + 1; 32])).collect();
                filter.insert("authors".into(), json!(list));
            }
            if let Some(kinds) = kinds {
                filter.insert("kinds".into(), json!(kinds));
            }
            if let Some((name, picks)) = tag {
                let list: Vec<&String> = picks
                    .iter()
                    .filter(|&&v| name != "#e" || v < 2)
                    .map(|&v| &values[v])
                    .collect();
                filter.insert(name.into(), json!(list));
            }
            if let Some(since) = since {
                filter.insert("since".into(), json!(since));
            }
            if let Some(until) = until {
                filter.insert("until".into(), json!(until));
            }
            if let Some(limit) = limit {
                filter.insert("limit".into(), json!(limit));
            }
            Value::Object(filter)
        })
}

/// What the store keeps: NIP-01 replacement by address (newest, lowest id).
fn surviving(events: &[Event]) -> Vec<Event> {
    let mut by_address: HashMap<([u8; 32], u16, String), Event> = HashMap::new();
    let mut kept = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for event in events {
        if !seen.insert(event.id) {
            continue;
        }
        match event.address_d() {
            None => kept.push(event.clone()),
            Some(d) => {
                let key = (event.pubkey, event.kind, d.to_owned());
                let wins = by_address.get(&key).is_none_or(|current| {
                    (event.created_at, std::cmp::Reverse(event.id))
                        > (current.created_at, std::cmp::Reverse(current.id))
                });
                if wins {
                    by_address.insert(key, event.clone());
                }
            }
        }
    }
    kept.extend(by_address.into_values());
    kept
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(40), ..ProptestConfig::default() })]

    /// A filter matches an event in memory exactly when the SQL query
    /// returns it: same events, same order, same limit, for any events and
    /// filters drawn from colliding pools, and for any reader of private
    /// kinds (authenticated as authors, as `p`-tagged pubkeys, or not).
    #[test]
    fn sql_and_memory_agree(
        events in prop::collection::vec(small_event(), 0..60),
        filters in prop::collection::vec(small_filter(), 1..6),
        private_kinds in prop::collection::vec(prop_oneof![Just(1u16), Just(3), Just(7)], 0..3),
        reader_picks in prop::collection::vec(0usize..4, 0..3),
    ) {
        let pool = [[1u8; 32], [2; 32], [0xaa; 32], [0xbb; 32]];
        let authenticated: Vec<[u8; 32]> = reader_picks.iter().map(|&i| pool[i]).collect();
        let readers = Readers::new(&private_kinds, &authenticated);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let options = StoreOptions {
                durability: Durability::Normal,
                max_database_bytes: 0,
                reader_threads: 1,
                max_write_batch: 64,
                query_timeout: Duration::from_secs(30),
            };
            let store = Store::open(&dir.path().join("p.sqlite"), &options, Box::new(|_| {})).unwrap();
            for event in &events {
                store.insert(Arc::new(CanonicalEvent::new(event.clone()))).await.unwrap();
            }
            let stored = surviving(&events);
            let limits = QueryLimits { default_limit: 5, max_limit: 10 };
            for value in &filters {
                let filter = Filter::from_value(value).unwrap();
                let limit = limits.effective(&filter) as usize;
                let mut want: Vec<&Event> = stored
                    .iter()
                    .filter(|e| filter.matches(e) && readers.may_read(e))
                    .collect();
                want.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
                let want: Vec<[u8; 32]> = want.iter().take(limit).map(|e| e.id).collect();
                let got: Vec<[u8; 32]> = store
                    .query(Arc::from(vec![filter]), readers.clone(), limits)
                    .await
                    .unwrap()
                    .events
                    .iter()
                    .map(|json| Event::from_value(&serde_json::from_str(json).unwrap()).unwrap().id)
                    .collect();
                prop_assert_eq!(got, want, "filter {}", value);
            }
            store.close();
            Ok(())
        })?;
    }
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// NIP-11/HTTP handling: arbitrary bytes, request lines and headers sent to
/// the relay's port get an answer or a closed socket, never a panic, and a
/// well-behaved client is served afterwards.
#[test]
fn http_requests_never_panic_the_relay() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let relay = runtime.block_on(common::TestRelay::start());
    let addr = relay.addr;
    let request = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        (
            prop_oneof![
                Just("GET".to_owned()),
                Just("OPTIONS".to_owned()),
                Just("POST".to_owned()),
                Just("HEAD".to_owned()),
                "[A-Z]{0,8}"
            ],
            prop_oneof![Just("/".to_owned()), "/[ -~]{0,20}"],
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("Accept".to_owned()),
                        Just("Upgrade".to_owned()),
                        Just("Connection".to_owned()),
                        Just("Sec-WebSocket-Key".to_owned()),
                        Just("Sec-WebSocket-Version".to_owned()),
                        Just("Sec-WebSocket-Extensions".to_owned()),
                        Just("Content-Length".to_owned()),
                        "[A-Za-z-]{1,12}",
                    ],
                    prop_oneof![
                        Just("application/nostr+json".to_owned()),
                        Just("websocket".to_owned()),
                        Just("Upgrade".to_owned()),
                        Just("13".to_owned()),
                        Just("permessage-deflate".to_owned()),
                        "[ -~]{0,30}",
                    ],
                ),
                0..6,
            ),
        )
            .prop_map(|(method, path, headers)| {
                let mut text = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
                for (name, value) in headers {
                    text.push_str(&format!("{name}: {value}\r\n"));
                }
                text.push_str("\r\n");
                text.into_bytes()
            }),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(300),
        ..ProptestConfig::default()
    });
    runner
        .run(&request, |bytes| {
            runtime.block_on(async {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                let mut answer = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer))
                        .await;
            });
            Ok(())
        })
        .unwrap();
    runtime.block_on(async {
        let mut client = relay.client().await;
        client.assert_healthy().await;
    });
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "the relay panicked on some request"
    );
}
