//! NIP-45 COUNT over real sockets: the count is what an unlimited REQ with
//! the same filters returns on that connection (deletions, expiry, vanish,
//! replacement, private kinds), filters OR'ed without double counting; the
//! `hll` registers equal the NIP's algorithm computed here, independently,
//! over the same events; refusals are CLOSED. Events are signed with the
//! independent `nostr` crate.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use nostr::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

fn pk(keys: &Keys) -> String {
    keys.public_key().to_hex()
}

/// A relay on which a REQ without `limit` returns everything it matches.
async fn unlimited_relay() -> TestRelay {
    TestRelay::start_with(|c| {
        c.limits.max_limit = 1_000_000;
        c.limits.default_limit = 1_000_000;
    })
    .await
}

/// Keys derived from a label, so that every run sees the same pubkeys
/// (and the same HyperLogLog registers).
fn fixed_keys(label: &str) -> Keys {
    let secret = Sha256::digest(label.as_bytes());
    Keys::new(SecretKey::from_slice(&secret).unwrap())
}

/// Publishes many events, 100 in flight at a time, each accepted.
async fn publish_all(client: &mut Client, events: &[Event]) {
    for chunk in events.chunks(100) {
        for event in chunk {
            let frame = format!(r#"["EVENT",{}]"#, event.as_json());
            client.ws.feed(Message::text(frame)).await.unwrap();
        }
        client.ws.flush().await.unwrap();
        let mut waiting: HashSet<String> = chunk.iter().map(|e| e.id.to_hex()).collect();
        while !waiting.is_empty() {
            let answer = client.recv().await;
            if answer[0] == "OK" {
                let id = answer[1].as_str().unwrap();
                assert!(waiting.remove(id), "unexpected {answer}");
                assert_eq!(answer[2], true, "{answer}");
            }
        }
    }
}

/// The `count` of a COUNT answer; panics on anything else.
fn count_of(answer: &Value) -> u64 {
    assert_eq!(answer[0], "COUNT", "expected COUNT, got {answer}");
    answer[2]["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("{answer}"))
}

/// The reason of a CLOSED answer; panics on anything else.
fn closed_reason(answer: &Value) -> String {
    assert_eq!(answer[0], "CLOSED", "expected CLOSED, got {answer}");
    answer[2].as_str().unwrap().to_owned()
}

/// COUNT, then the same filters as a REQ: both must agree with `expected`.
async fn assert_count(client: &mut Client, filters: Vec<Value>, expected: usize) {
    let answer = client.count("n", filters.clone()).await;
    let counted = count_of(&answer);
    let unlimited: Vec<Value> = filters
        .iter()
        .map(|f| {
            let mut f = f.clone();
            f.as_object_mut().unwrap().remove("limit");
            f
        })
        .collect();
    let returned = client.query("r", unlimited).await.len();
    assert_eq!(
        (counted, returned),
        (expected as u64, expected),
        "COUNT and REQ of {filters:?}"
    );
}

#[tokio::test]
async fn count_is_what_an_unlimited_req_returns() {
    let relay = unlimited_relay().await;
    let mut c = relay.client().await;
    let (alice, bob, carol, target) = (
        Keys::generate(),
        Keys::generate(),
        Keys::generate(),
        Keys::generate(),
    );
    let t0 = now() - 1000;
    let a1 = event(
        &alice,
        1,
        "hello",
        &[&["t", "nostr"], &["p", &pk(&target)]],
        t0,
    );
    let a1_id = a1.id.to_hex();
    let b1 = event(
        &bob,
        1,
        "reply",
        &[&["e", &a1_id], &["p", &pk(&target)], &["t", "nostr"]],
        t0 + 10,
    );
    let b1_id = b1.id.to_hex();
    let mut events = vec![a1, b1];
    events.push(event(&alice, 1, "again", &[&["e", &a1_id]], t0 + 20));
    events.push(event(
        &bob,
        7,
        "+",
        &[&["e", &a1_id], &["p", &pk(&alice)]],
        t0 + 30,
    ));
    events.push(event(&carol, 7, "+", &[&["e", &a1_id]], t0 + 40));
    // Tags both notes: one event for a filter naming both.
    events.push(event(
        &carol,
        7,
        "🤙",
        &[&["e", &b1_id], &["e", &a1_id]],
        t0 + 50,
    ));
    events.push(event(
        &alice,
        3,
        "",
        &[&["p", &pk(&target)], &["p", &pk(&bob)]],
        t0 + 60,
    ));
    events.push(event(&bob, 3, "", &[&["p", &pk(&target)]], t0 + 70));
    events.push(event(&carol, 30023, "article", &[&["d", "x"]], t0 + 80));
    events.push(event(&carol, 0, "{}", &[], t0 + 90));
    // Same created_at as another: ties play no part in a count.
    events.push(event(&bob, 1, "tie", &[], t0 + 10));
    publish_all(&mut c, &events).await;

    let ids: Vec<String> = events[..3].iter().map(|e| e.id.to_hex()).collect();
    let shapes = vec![
        vec![json!({})],
        vec![json!({"kinds": [1]})],
        vec![json!({"kinds": [1], "limit": 1})],
        vec![json!({"authors": [pk(&alice)]})],
        vec![json!({"authors": [pk(&alice), pk(&bob)], "kinds": [1, 7]})],
        vec![json!({"#e": [a1_id]})],
        vec![json!({"#e": [a1_id], "kinds": [7]})],
        vec![json!({"#e": [a1_id, b1_id]})],
        vec![json!({"#p": [pk(&target)], "kinds": [3]})],
        vec![json!({"#t": ["nostr"], "kinds": [1]})],
        vec![json!({"#e": [a1_id], "#p": [pk(&alice)]})],
        vec![json!({"authors": [pk(&bob)], "#t": ["nostr"]})],
        vec![json!({"ids": ids})],
        vec![json!({"since": t0 + 10, "until": t0 + 50})],
        vec![json!({"#d": ["x"]})],
        vec![json!({"kinds": [9999]})],
        // OR'ed, overlapping filters: each event once.
        vec![json!({"kinds": [1]}), json!({"authors": [pk(&bob)]})],
        vec![
            json!({"#e": [a1_id]}),
            json!({"kinds": [7]}),
            json!({"authors": [pk(&carol)], "limit": 0}),
        ],
    ];
    for filters in shapes {
        // Independently: the nostr crate's own filter matching.
        let parsed: Vec<::nostr::filter::Filter> = filters
            .iter()
            .map(|f| ::nostr::filter::Filter::from_json(f.to_string()).unwrap())
            .collect();
        let expected = events
            .iter()
            .filter(|e| {
                parsed
                    .iter()
                    .any(|f| f.match_event(e, MatchEventOptions::new()))
            })
            .count();
        assert_count(&mut c, filters, expected).await;
    }
    // An empty list matches nothing (the nostr crate reads it otherwise).
    assert_count(&mut c, vec![json!({"authors": []})], 0).await;
    // Two spot checks by hand, in case both sides agree on a mistake.
    assert_eq!(
        count_of(
            &c.count(
                "h",
                vec![json!({"#e": [a1_id, b1_id]}), json!({"kinds": [7]})]
            )
            .await
        ),
        5
    );
    assert_eq!(
        count_of(
            &c.count("h", vec![json!({"#p": [pk(&target)], "kinds": [3]})])
                .await
        ),
        2
    );
}

#[tokio::test]
async fn deleted_expired_vanished_and_replaced_events_are_not_counted() {
    let relay = unlimited_relay().await;
    let mut c = relay.client().await;
    let (alice, bob, dave, target) = (
        Keys::generate(),
        Keys::generate(),
        Keys::generate(),
        Keys::generate(),
    );
    let t0 = now() - 100;
    let kept = event(&alice, 1, "kept", &[], t0);
    let deleted = event(&alice, 1, "deleted", &[], t0 + 1);
    let deletion = event(&alice, 5, "", &[&["e", &deleted.id.to_hex()]], t0 + 2);
    let expiring = event(
        &alice,
        1,
        "soon gone",
        &[&["expiration", &(now() + 2).to_string()]],
        t0 + 3,
    );
    let old_profile = event(&alice, 0, "{\"name\":\"a\"}", &[], t0 + 4);
    let new_profile = event(&alice, 0, "{\"name\":\"b\"}", &[], t0 + 5);
    // Bob followed the target, then stopped.
    let follows = event(&bob, 3, "", &[&["p", &pk(&target)]], t0 + 6);
    let unfollows = event(&bob, 3, "", &[&["p", &pk(&alice)]], t0 + 7);
    let dave_notes: Vec<Event> = (0..3)
        .map(|n| event(&dave, 1, &format!("dave {n}"), &[], t0 + 10 + n))
        .collect();
    // Events sent together are checked and stored concurrently, in no
    // promised order: a deletion or a newer version goes after its target
    // is acknowledged.
    publish_all(
        &mut c,
        &[kept.clone(), deleted, expiring, old_profile, follows],
    )
    .await;
    publish_all(&mut c, &[deletion, new_profile]).await;
    publish_all(&mut c, &dave_notes).await;
    let alice_notes = json!({"authors": [pk(&alice)], "kinds": [1]});
    assert_count(&mut c, vec![alice_notes.clone()], 2).await; // kept, expiring
    // Replacement: one profile, and the follower count follows the newest list.
    assert_count(
        &mut c,
        vec![json!({"authors": [pk(&alice)], "kinds": [0]})],
        1,
    )
    .await;
    let followers = json!({"#p": [pk(&target)], "kinds": [3]});
    assert_count(&mut c, vec![followers.clone()], 1).await;
    publish_all(&mut c, &[unfollows]).await;
    assert_count(&mut c, vec![followers], 0).await;
    // NIP-62: Dave's notes go, his request stays.
    assert_count(&mut c, vec![json!({"authors": [pk(&dave)]})], 3).await;
    let vanish = event(&dave, 62, "bye", &[&["relay", &relay.url]], now());
    publish_all(&mut c, &[vanish]).await;
    assert_count(&mut c, vec![json!({"authors": [pk(&dave)]})], 1).await;
    assert_count(
        &mut c,
        vec![json!({"authors": [pk(&dave)], "kinds": [1]})],
        0,
    )
    .await;
    // NIP-40: once past its expiration, the event is not counted.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_count(&mut c, vec![alice_notes], 1).await;
    assert_count(
        &mut c,
        vec![json!({"ids": [kept.id.to_hex()]}), json!({"kinds": [1, 5]})],
        2,
    )
    .await;
}

#[tokio::test]
async fn private_kinds_are_counted_only_for_their_parties() {
    let relay = unlimited_relay().await;
    let (alice, bob, stranger) = (Keys::generate(), Keys::generate(), Keys::generate());
    let mut c = relay.client().await;
    let dm = event(&alice, 4, "ciphertext", &[&["p", &pk(&bob)]], now() - 30);
    let wrap = event(
        &Keys::generate(),
        1059,
        "sealed",
        &[&["p", &pk(&bob)]],
        now() - 20,
    );
    let public = event(&alice, 1, "hello", &[&["p", &pk(&bob)]], now() - 10);
    publish_all(&mut c, &[dm, wrap, public]).await;
    let everything = json!({});
    let to_bob = json!({"#p": [pk(&bob)]});
    let by_alice = json!({"authors": [pk(&alice)]});

    // Not authenticated: only the public note; private kinds alone: CLOSED.
    let mut anonymous = relay.client().await;
    for filter in [&everything, &to_bob, &by_alice] {
        assert_count(&mut anonymous, vec![filter.clone()], 1).await;
    }
    for kinds in [json!([4]), json!([1059]), json!([4, 1059])] {
        let reason = closed_reason(&anonymous.count("dm", vec![json!({"kinds": kinds})]).await);
        assert!(reason.starts_with("auth-required:"), "{reason}");
    }
    // The hll of a single-tag filter counts only what may be seen.
    let answer = anonymous.count("h", vec![to_bob.clone()]).await;
    assert_eq!(count_of(&answer), 1);
    let hll = answer[2]["hll"].as_str().unwrap();
    assert_eq!(hll.len(), 512);
    let offset = nip45_offset(&pk(&bob));
    let expected = nip45_registers(offset, [alice.public_key().to_bytes()]);
    assert_eq!(hll, hex::encode(expected));

    // A stranger who authenticated sees no more.
    let mut other = relay.client().await;
    assert!(other.authenticate(&stranger, &relay.url).await.0);
    assert_count(&mut other, vec![everything.clone()], 1).await;
    assert_count(&mut other, vec![json!({"kinds": [4, 1059]})], 0).await;

    // Bob, p-tagged in all three, counts all three; Alice wrote two.
    let mut b = relay.client().await;
    assert!(b.authenticate(&bob, &relay.url).await.0);
    assert_count(&mut b, vec![everything.clone()], 3).await;
    assert_count(&mut b, vec![to_bob.clone()], 3).await;
    assert_count(&mut b, vec![json!({"kinds": [4, 1059]})], 2).await;
    // Two filters, both seeing the DM: counted once.
    assert_count(&mut b, vec![json!({"kinds": [4]}), to_bob.clone()], 3).await;
    let mut a = relay.client().await;
    assert!(a.authenticate(&alice, &relay.url).await.0);
    assert_count(&mut a, vec![everything], 2).await;
    assert_count(&mut a, vec![by_alice], 2).await;
}

#[tokio::test]
async fn nip11_lists_45() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = TestRelay::start().await;
    let mut stream = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/nostr+json\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let info: Value = serde_json::from_str(body).unwrap();
    let nips = info["supported_nips"].as_array().unwrap();
    assert!(nips.contains(&json!(45)), "{nips:?}");
}

#[tokio::test]
async fn bad_or_refused_counts_are_closed() {
    let relay = TestRelay::start_with(|c| {
        c.limits.max_filters = 2;
        c.limits.max_filter_values = 3;
    })
    .await;
    let mut c = relay.client().await;
    let cases = [
        (vec![json!({"kinds": "x"})], "invalid:"),
        (vec![json!({"#p": ["not hex"]})], "invalid:"),
        (vec![json!({"ids": ["abc"]})], "invalid:"),
        (vec![json!({"#ab": ["x"]})], "unsupported:"),
        (vec![json!([])], "invalid:"),
        (vec![], "invalid:"),
        (
            vec![json!({}), json!({}), json!({})],
            "blocked: too many filters",
        ),
        (vec![json!({"kinds": [1, 2, 3, 4]})], "blocked:"),
    ];
    for (filters, prefix) in cases {
        let reason = closed_reason(&c.count("bad", filters.clone()).await);
        assert!(reason.starts_with(prefix), "{filters:?}: {reason}");
    }
    let reason = closed_reason(&c.count("", vec![json!({})]).await);
    assert!(reason.starts_with("invalid:"), "{reason}");
    // The connection is fine, and a good COUNT is answered.
    c.assert_healthy().await;
    assert_eq!(
        count_of(&c.count("ok", vec![json!({"kinds": [1]})]).await),
        1
    );
}

#[tokio::test]
async fn required_for_read_needs_auth_before_counting() {
    let relay = TestRelay::start_with(|c| c.auth.required_for_read = true).await;
    let mut c = relay.client().await;
    let reason = closed_reason(&c.count("n", vec![json!({"kinds": [1]})]).await);
    assert!(reason.starts_with("auth-required:"), "{reason}");
    assert!(c.authenticate(&Keys::generate(), &relay.url).await.0);
    assert_eq!(
        count_of(&c.count("n", vec![json!({"kinds": [1]})]).await),
        0
    );
}

#[tokio::test]
async fn counts_are_rate_limited_like_reqs() {
    let relay = TestRelay::start_with(|c| {
        c.rate_limit.exempt = Vec::new();
        c.rate_limit.reqs_per_minute = 3;
    })
    .await;
    let mut c = relay.client().await;
    for _ in 0..3 {
        assert_eq!(count_of(&c.count("n", vec![json!({})]).await), 0);
    }
    let reason = closed_reason(&c.count("n", vec![json!({})]).await);
    assert!(reason.starts_with("rate-limited:"), "{reason}");
    // REQs and COUNTs share the allowance.
    let reason = c.req_closed("s", vec![json!({})]).await;
    assert!(reason.starts_with("rate-limited:"), "{reason}");
}

#[tokio::test]
async fn a_running_count_is_a_running_query() {
    let relay = TestRelay::start_with(|c| c.rate_limit.max_concurrent_queries = 1).await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let notes: Vec<Event> = (0..300).map(|n| note(&keys, &format!("{n}"))).collect();
    publish_all(&mut c, &notes).await;
    // Ten COUNTs in one burst: the first is still running when the rest are read.
    let filters: Vec<Value> = (0..16).map(|n| json!({"since": n})).collect();
    for n in 0..10 {
        let mut message = vec![json!("COUNT"), json!(format!("b{n}"))];
        message.extend(filters.clone());
        c.ws.feed(Message::text(Value::Array(message).to_string()))
            .await
            .unwrap();
    }
    c.ws.flush().await.unwrap();
    let (mut counted, mut refused) = (0, 0);
    while counted + refused < 10 {
        let answer = c.recv().await;
        match answer[0].as_str() {
            Some("COUNT") => {
                assert_eq!(count_of(&answer), 300);
                counted += 1;
            }
            Some("CLOSED") => {
                let reason = closed_reason(&answer);
                assert!(reason.starts_with("rate-limited:"), "{reason}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(
        counted >= 1 && refused >= 1,
        "{counted} answered, {refused} refused"
    );
}

#[tokio::test]
async fn running_counts_are_bounded_without_rate_limits() {
    let relay = TestRelay::start_with(|c| {
        c.rate_limit.enabled = false;
        c.limits.max_subscriptions = 1;
    })
    .await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let notes: Vec<Event> = (0..300).map(|n| note(&keys, &format!("{n}"))).collect();
    publish_all(&mut c, &notes).await;
    let filters: Vec<Value> = (0..16).map(|n| json!({"since": n})).collect();
    for n in 0..10 {
        let mut message = vec![json!("COUNT"), json!(format!("b{n}"))];
        message.extend(filters.clone());
        c.ws.feed(Message::text(Value::Array(message).to_string()))
            .await
            .unwrap();
    }
    c.ws.flush().await.unwrap();
    let (mut counted, mut refused) = (0, 0);
    while counted + refused < 10 {
        let answer = c.recv().await;
        match answer[0].as_str() {
            Some("COUNT") => counted += 1,
            Some("CLOSED") => {
                let reason = closed_reason(&answer);
                assert!(reason.starts_with("blocked: too many COUNTs"), "{reason}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(
        counted >= 1 && refused >= 1,
        "{counted} answered, {refused} refused"
    );
}

/// 20,000 replies to one note, stored directly: counting those that also
/// tag an absent pubkey reads every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_past_its_time_budget_is_closed_with_an_error() {
    use nostr_relayd::nostr::{CanonicalEvent, Event as RelayEvent};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.sqlite");
    let mut config = test_config(dir.path());
    config.database = path.to_path_buf();
    config.storage.reader_threads = 1;
    config.storage.query_timeout_ms = 60_000;
    let store = Arc::new(open_store(&mut config).await);
    let root = "7".repeat(64);
    let base = now() as i64 - 100_000;
    for chunk in 0..20 {
        let mut pending = Vec::new();
        for n in 0..1000 {
            let i = chunk * 1000 + n;
            let mut event = RelayEvent::from_value(&json!({
                "id": "0".repeat(64), "pubkey": format!("{:064x}", i % 97 + 1),
                "created_at": base + i, "kind": 1, "tags": [["e", root]],
                "content": format!("reply {i}"), "sig": "0".repeat(128)
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

    let relay = TestRelay::start_with(|c| {
        c.database = path.clone();
        c.storage.query_timeout_ms = 5;
    })
    .await;
    let mut c = relay.client().await;
    let filter = json!({"#e": [root], "#p": ["9".repeat(64)]});
    let reason = closed_reason(&c.count("slow", vec![filter]).await);
    assert_eq!(reason, "error: the query took too long");
    // A cheap count on the same connection is answered.
    let answer = c
        .count("cheap", vec![json!({"ids": ["0".repeat(64)]})])
        .await;
    assert_eq!(count_of(&answer), 0);
}

// ---------------------------------------------------------------------------
// HyperLogLog, computed here from NIP-45's text, independently of the relay.

/// NIP-45 "offset computation", step by step.
fn nip45_offset(value: &str) -> usize {
    let is_hex64 =
        |s: &str| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let parts: Vec<&str> = value.splitn(3, ':').collect();
    let hex64 = if is_hex64(value) {
        value.to_owned()
    } else if parts.len() == 3 && parts[0].parse::<u16>().is_ok() && is_hex64(parts[1]) {
        parts[1].to_owned()
    } else {
        hex::encode(Sha256::digest(value.as_bytes()))
    };
    let character = hex64.chars().nth(32).unwrap();
    character.to_digit(16).unwrap() as usize + 8
}

/// NIP-45 "algorithm", bit by bit, over the pubkeys of the counted events.
fn nip45_registers(offset: usize, pubkeys: impl IntoIterator<Item = [u8; 32]>) -> [u8; 256] {
    let mut registers = [0u8; 256];
    for pubkey in pubkeys {
        let ri = pubkey[offset] as usize;
        let bit = |n: usize| (pubkey[n / 8] >> (7 - n % 8)) & 1;
        let mut zeros = 0;
        let mut n = (offset + 1) * 8;
        while n < 256 && bit(n) == 0 {
            zeros += 1;
            n += 1;
        }
        let value = zeros + 1;
        if value > registers[ri] {
            registers[ri] = value;
        }
    }
    registers
}

/// The textbook HyperLogLog estimate for 256 registers (with the
/// small-range correction).
fn estimate(registers: &[u8]) -> f64 {
    let m = registers.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = registers.iter().map(|r| 2f64.powi(-i32::from(*r))).sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|r| **r == 0).count() as f64;
    if raw <= 2.5 * m && zeros > 0.0 {
        m * (m / zeros).ln()
    } else {
        raw
    }
}

fn hll_of(answer: &Value) -> Vec<u8> {
    assert_eq!(answer[0], "COUNT", "{answer}");
    let hll = answer[2]["hll"]
        .as_str()
        .unwrap_or_else(|| panic!("no hll in {answer}"));
    assert_eq!(hll.len(), 512, "{answer}");
    hex::decode(hll).unwrap()
}

#[tokio::test]
async fn hll_registers_follow_the_nip_for_every_kind_of_tag_value() {
    let relay = unlimited_relay().await;
    let mut c = relay.client().await;
    let author = fixed_keys("count-test author");
    let target_note = event(&author, 1, "target", &[], now() - 500);
    let target_id = target_note.id.to_hex();
    let followed = fixed_keys("count-test followed");
    let address = format!("30023:{}:my:article", pk(&followed));
    let mut events = vec![target_note];
    let mut reactors = Vec::new();
    let mut followers = Vec::new();
    let mut taggers = Vec::new();
    let mut quoters = Vec::new();
    for i in 0..150u64 {
        let keys = fixed_keys(&format!("count-test {i}"));
        let t = now() - 400 + i;
        events.push(event(&keys, 7, "+", &[&["e", &target_id]], t));
        reactors.push(keys.public_key().to_bytes());
        if i % 2 == 0 {
            // A second reaction by the same pubkey: two events, one pubkey.
            events.push(event(&keys, 7, "🤙", &[&["e", &target_id]], t));
            events.push(event(&keys, 3, "", &[&["p", &pk(&followed)]], t));
            followers.push(keys.public_key().to_bytes());
        }
        if i % 3 == 0 {
            events.push(event(&keys, 1, "#nostr", &[&["t", "nostr"]], t));
            taggers.push(keys.public_key().to_bytes());
        }
        if i % 5 == 0 {
            events.push(event(&keys, 1, "quote", &[&["a", &address]], t));
            quoters.push(keys.public_key().to_bytes());
        }
        // Not counted: another kind on the same note.
        events.push(event(&keys, 1, "reply", &[&["e", &target_id]], t));
    }
    publish_all(&mut c, &events).await;

    let cases = [
        (
            json!({"kinds": [7], "#e": [target_id]}),
            &target_id,
            &reactors,
            225,
        ),
        (
            json!({"#p": [pk(&followed)], "kinds": [3]}),
            &pk(&followed),
            &followers,
            75,
        ),
        (json!({"#t": ["nostr"]}), &"nostr".to_owned(), &taggers, 50),
        (json!({"#a": [address]}), &address, &quoters, 30),
    ];
    for (filter, value, pubkeys, count) in cases {
        let answer = c.count("h", vec![filter.clone()]).await;
        assert_eq!(count_of(&answer), count, "{filter}");
        let expected = nip45_registers(nip45_offset(value), pubkeys.iter().copied());
        assert_eq!(hll_of(&answer), expected.to_vec(), "{filter}");
    }
    // The offset is the NIP's: the same pubkeys under another offset give
    // other registers (so the comparison above is not vacuous).
    let other = (nip45_offset(&target_id) - 8 + 1) % 16 + 8;
    assert_ne!(
        nip45_registers(other, reactors.iter().copied()).to_vec(),
        hll_of(
            &c.count("h", vec![json!({"kinds": [7], "#e": [target_id]})])
                .await
        )
    );
    // Not eligible: two filters, two values, two tag attributes, no tag.
    for filters in [
        vec![json!({"#e": [target_id]}), json!({"kinds": [7]})],
        vec![json!({"#e": [target_id, pk(&followed)]})],
        vec![json!({"kinds": [7], "#e": [target_id], "#p": [pk(&author)]})],
        vec![json!({"kinds": [7]})],
    ] {
        let answer = c.count("x", filters.clone()).await;
        count_of(&answer);
        assert!(answer[2].get("hll").is_none(), "{filters:?}: {answer}");
    }
    // Nothing matches: 256 zero registers.
    let answer = c
        .count("z", vec![json!({"#e": ["0".repeat(64)], "kinds": [7]})])
        .await;
    assert_eq!(count_of(&answer), 0);
    assert_eq!(hll_of(&answer), vec![0; 256]);
}

#[tokio::test]
async fn hll_estimates_two_thousand_reactions() {
    let relay = unlimited_relay().await;
    let mut c = relay.client().await;
    let target = event(
        &fixed_keys("estimate author"),
        1,
        "popular",
        &[],
        now() - 5000,
    );
    let target_id = target.id.to_hex();
    let mut events = vec![target];
    let mut pubkeys = Vec::new();
    for i in 0..2000u64 {
        let keys = fixed_keys(&format!("estimate {i}"));
        events.push(event(
            &keys,
            7,
            "+",
            &[&["e", &target_id]],
            now() - 4000 + i,
        ));
        pubkeys.push(keys.public_key().to_bytes());
    }
    publish_all(&mut c, &events).await;
    let answer = c
        .count("r", vec![json!({"kinds": [7], "#e": [target_id]})])
        .await;
    assert_eq!(count_of(&answer), 2000);
    let registers = hll_of(&answer);
    let expected = nip45_registers(nip45_offset(&target_id), pubkeys);
    assert_eq!(registers, expected.to_vec());
    // 256 registers: a standard error of 1.04 / 16 = 6.5%; the pubkeys are
    // fixed, so this is one deterministic draw, checked at three sigmas.
    let estimate = estimate(&registers);
    assert!(
        (estimate - 2000.0).abs() < 2000.0 * 0.2,
        "estimate {estimate:.0} for 2000 pubkeys"
    );
}
