//! NIP-77 negentropy sync over real sockets. The client side is the
//! `negentropy` crate as initiator (the Node test in `tests/interop.rs`
//! checks an independent implementation); events are signed with the
//! `nostr` crate.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use nostr::prelude::*;
use serde_json::{Value, json};

/// What a reconciliation taught the client.
#[derive(Debug, Default)]
struct Outcome {
    /// Ids the client has and the relay lacks.
    have: BTreeSet<String>,
    /// Ids the relay has and the client lacks.
    need: BTreeSet<String>,
    /// NEG-MSGs received from the relay.
    rounds: usize,
    /// Longest negentropy message received, in bytes (before hex).
    largest: usize,
}

fn hex_id(event: &Event) -> String {
    event.id.to_hex()
}

fn ids(events: &[&Event]) -> BTreeSet<String> {
    events.iter().map(|e| hex_id(e)).collect()
}

/// The next NEG-MSG or NEG-ERR for `sub`, skipping anything else.
async fn next_neg(client: &mut Client, sub: &str) -> Value {
    loop {
        let message = client.recv().await;
        let verb = message[0].as_str().unwrap_or_default();
        if verb.starts_with("NEG-") && message[1] == sub {
            return message;
        }
    }
}

type Initiator = Negentropy<'static, NegentropyStorageVector>;

/// The client side of a session over `local`, and its initial message (hex).
fn initiator(local: &[&Event]) -> (Initiator, String) {
    let mut storage = NegentropyStorageVector::new();
    for event in local {
        storage
            .insert(
                event.created_at.as_secs(),
                Id::from_byte_array(event.id.to_bytes()),
            )
            .unwrap();
    }
    storage.seal().unwrap();
    let mut negentropy = Negentropy::owned(storage, 0).unwrap();
    let initial = hex::encode(negentropy.initiate().unwrap());
    (negentropy, initial)
}

/// Runs a whole reconciliation of `local` against the relay's set for
/// `filter`; `Err` is the relay's NEG-ERR.
async fn sync(
    client: &mut Client,
    sub: &str,
    filter: Value,
    local: &[&Event],
) -> Result<Outcome, Value> {
    let (negentropy, initial) = initiator(local);
    client
        .send_json(json!(["NEG-OPEN", sub, filter, initial]))
        .await;
    finish(client, sub, negentropy).await
}

/// Answers the relay's NEG-MSGs for `sub` until the client is done.
async fn finish(
    client: &mut Client,
    sub: &str,
    mut negentropy: Initiator,
) -> Result<Outcome, Value> {
    let mut outcome = Outcome::default();
    let (mut have, mut need) = (Vec::new(), Vec::new());
    loop {
        let answer = next_neg(client, sub).await;
        if answer[0] == "NEG-ERR" {
            return Err(answer);
        }
        assert_eq!(answer[0], "NEG-MSG", "{answer}");
        let bytes = hex::decode(answer[2].as_str().expect("hex string")).expect("hex");
        outcome.rounds += 1;
        outcome.largest = outcome.largest.max(bytes.len());
        match negentropy
            .reconcile_with_ids(&bytes, &mut have, &mut need)
            .expect("a valid negentropy message")
        {
            Some(next) => {
                client
                    .send_json(json!(["NEG-MSG", sub, hex::encode(next)]))
                    .await
            }
            None => break,
        }
    }
    client.send_json(json!(["NEG-CLOSE", sub])).await;
    outcome.have = have.iter().map(|id| hex::encode(id.as_bytes())).collect();
    outcome.need = need.iter().map(|id| hex::encode(id.as_bytes())).collect();
    Ok(outcome)
}

/// Sends every event at once, then waits until each is accepted.
async fn publish_all(client: &mut Client, events: &[&Event]) {
    for event in events {
        client
            .send_text(format!(r#"["EVENT",{}]"#, event.as_json()))
            .await;
    }
    let mut pending: BTreeSet<String> = ids(events);
    while !pending.is_empty() {
        let message = client.recv().await;
        if message[0] == "OK" {
            let id = message[1].as_str().unwrap();
            assert_eq!(message[2], true, "refused: {message}");
            pending.remove(id);
        }
    }
}

/// `count` kind-1 notes by `keys`, one second apart from `start`, and a
/// few sharing a timestamp so ties are ordered by id.
fn notes(keys: &Keys, label: &str, count: usize, start: u64) -> Vec<Event> {
    (0..count)
        .map(|i| {
            event(
                keys,
                1,
                &format!("{label} {i}"),
                &[],
                start + (i as u64 / 3),
            )
        })
        .collect()
}

fn refs(events: &[Event]) -> Vec<&Event> {
    events.iter().collect()
}

const T: u64 = 1_700_000_000;

#[tokio::test]
async fn disjoint_sets_exchange_everything() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let remote = notes(&keys, "remote", 40, T);
    let local = notes(&keys, "local", 30, T + 5);
    publish_all(&mut c, &refs(&remote)).await;
    let outcome = sync(&mut c, "n", json!({}), &refs(&local)).await.unwrap();
    assert_eq!(outcome.have, ids(&refs(&local)));
    assert_eq!(outcome.need, ids(&refs(&remote)));
}

#[tokio::test]
async fn overlapping_sets_learn_only_the_differences() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let common = notes(&keys, "common", 600, T);
    let remote_only = notes(&keys, "remote", 7, T + 50);
    let local_only = notes(&keys, "local", 9, T + 120);
    let mut on_relay = refs(&common);
    on_relay.extend(refs(&remote_only));
    publish_all(&mut c, &on_relay).await;
    let mut local = refs(&common);
    local.extend(refs(&local_only));
    let outcome = sync(&mut c, "n", json!({}), &local).await.unwrap();
    assert_eq!(outcome.have, ids(&refs(&local_only)));
    assert_eq!(outcome.need, ids(&refs(&remote_only)));
    // 616 records do not fit one id list: fingerprints narrowed it down.
    assert!(outcome.rounds >= 2, "{outcome:?}");
}

#[tokio::test]
async fn identical_sets_agree_in_one_round() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let all = notes(&keys, "same", 200, T);
    publish_all(&mut c, &refs(&all)).await;
    let outcome = sync(&mut c, "n", json!({}), &refs(&all)).await.unwrap();
    assert!(outcome.have.is_empty() && outcome.need.is_empty());
    assert_eq!(outcome.rounds, 1);
}

#[tokio::test]
async fn an_empty_relay_and_an_empty_client_agree() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let outcome = sync(&mut c, "n", json!({}), &[]).await.unwrap();
    assert!(outcome.have.is_empty() && outcome.need.is_empty());
}

#[tokio::test]
async fn a_filter_with_authors_and_kinds_selects_the_relay_set() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (alice, bob) = (Keys::generate(), Keys::generate());
    let alice_notes = notes(&alice, "alice", 20, T);
    let alice_reactions: Vec<Event> = (0..5).map(|i| event(&alice, 7, "+", &[], T + i)).collect();
    let bob_notes = notes(&bob, "bob", 20, T);
    let tagged: Vec<Event> = (0..4)
        .map(|i| event(&bob, 1, "tagged", &[&["t", "nostr"]], T + 100 + i))
        .collect();
    for batch in [&alice_notes, &alice_reactions, &bob_notes, &tagged] {
        publish_all(&mut c, &refs(batch)).await;
    }
    let filter = json!({"authors": [alice.public_key().to_hex()], "kinds": [1]});
    let outcome = sync(&mut c, "a", filter, &[]).await.unwrap();
    assert_eq!(outcome.need, ids(&refs(&alice_notes)));

    // The client's own set is compared only within the filter: what it
    // holds is reported as "have" whatever it is, so it sends the matching part.
    let local = refs(&alice_notes[..10]);
    let filter = json!({"authors": [alice.public_key().to_hex()], "kinds": [1]});
    let outcome = sync(&mut c, "a", filter, &local).await.unwrap();
    assert!(outcome.have.is_empty());
    assert_eq!(outcome.need, ids(&refs(&alice_notes[10..])));

    let outcome = sync(&mut c, "t", json!({"#t": ["nostr"]}), &[])
        .await
        .unwrap();
    assert_eq!(outcome.need, ids(&refs(&tagged)));
    let outcome = sync(&mut c, "k", json!({"kinds": [7], "since": T + 2}), &[])
        .await
        .unwrap();
    assert_eq!(outcome.need, ids(&refs(&alice_reactions[2..])));
    // `limit` does not cut a session's set.
    let outcome = sync(&mut c, "l", json!({"kinds": [1], "limit": 3}), &[])
        .await
        .unwrap();
    assert_eq!(outcome.need.len(), 44);
}

#[tokio::test]
async fn deleted_and_expired_events_are_not_in_the_relay_set() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let kept = note(&keys, "kept");
    let doomed = note(&keys, "doomed");
    let expiration = now() + 2;
    let fleeting = event(
        &keys,
        1,
        "fleeting",
        &[&["expiration", expiration.to_string().as_str()]],
        now(),
    );
    publish_all(&mut c, &[&kept, &doomed, &fleeting]).await;
    let deletion = event(&keys, 5, "", &[&["e", hex_id(&doomed).as_str()]], now());
    publish_all(&mut c, &[&deletion]).await;
    let outcome = sync(&mut c, "n", json!({}), &[]).await.unwrap();
    assert_eq!(outcome.need, ids(&[&kept, &deletion, &fleeting]));
    while now() <= expiration {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcome = sync(&mut c, "n", json!({}), &[]).await.unwrap();
    assert_eq!(outcome.need, ids(&[&kept, &deletion]));
    // A client that still holds them learns the relay lacks them.
    let outcome = sync(&mut c, "n", json!({}), &[&kept, &doomed, &fleeting])
        .await
        .unwrap();
    assert_eq!(outcome.have, ids(&[&doomed, &fleeting]));
    assert_eq!(outcome.need, ids(&[&deletion]));
}

#[tokio::test]
async fn private_kinds_are_not_revealed_to_an_unauthenticated_session() {
    let relay = TestRelay::start().await;
    let (alice, bob, carol) = (Keys::generate(), Keys::generate(), Keys::generate());
    let mut c = relay.client().await;
    let public = note(&alice, "hello");
    let dm = event(
        &alice,
        4,
        "ciphertext",
        &[&["p", bob.public_key().to_hex().as_str()]],
        now(),
    );
    publish_all(&mut c, &[&public, &dm]).await;

    let outcome = sync(&mut c, "n", json!({}), &[]).await.unwrap();
    assert_eq!(outcome.need, ids(&[&public]));
    // A client holding the DM is not told the relay has it either.
    let outcome = sync(&mut c, "n", json!({}), &[&dm]).await.unwrap();
    assert_eq!(outcome.have, ids(&[&dm]));
    let refused = sync(&mut c, "n", json!({"kinds": [4]}), &[])
        .await
        .unwrap_err();
    assert!(
        refused[2].as_str().unwrap().starts_with("auth-required:"),
        "{refused}"
    );
    let outcome = sync(&mut c, "n", json!({"ids": [hex_id(&dm)]}), &[])
        .await
        .unwrap();
    assert!(outcome.need.is_empty());

    // Someone else authenticated: still not theirs.
    assert!(c.authenticate(&carol, &relay.url).await.0);
    let outcome = sync(&mut c, "n", json!({}), &[]).await.unwrap();
    assert_eq!(outcome.need, ids(&[&public]));

    // The recipient sees it.
    let mut b = relay.client().await;
    assert!(b.authenticate(&bob, &relay.url).await.0);
    let outcome = sync(&mut b, "n", json!({}), &[]).await.unwrap();
    assert_eq!(outcome.need, ids(&[&public, &dm]));
    let outcome = sync(&mut b, "n", json!({"kinds": [4]}), &[]).await.unwrap();
    assert_eq!(outcome.need, ids(&[&dm]));
}

#[tokio::test]
async fn auth_required_for_read_applies_to_neg_open() {
    let relay = TestRelay::start_with(|c| c.auth.required_for_read = true).await;
    let mut c = relay.client().await;
    let refused = sync(&mut c, "n", json!({}), &[]).await.unwrap_err();
    assert!(
        refused[2].as_str().unwrap().starts_with("auth-required:"),
        "{refused}"
    );
    assert!(c.authenticate(&Keys::generate(), &relay.url).await.0);
    assert!(sync(&mut c, "n", json!({}), &[]).await.is_ok());
}

#[tokio::test]
async fn a_set_over_the_cap_is_refused_with_the_cap() {
    let relay = TestRelay::start_with(|c| c.negentropy.max_records = 5).await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let five = notes(&keys, "n", 5, T);
    publish_all(&mut c, &refs(&five)).await;
    let outcome = sync(&mut c, "n", json!({}), &[]).await.unwrap();
    assert_eq!(outcome.need.len(), 5);
    let sixth = note(&keys, "one too many");
    publish_all(&mut c, &[&sixth]).await;
    let refused = sync(&mut c, "n", json!({}), &[]).await.unwrap_err();
    assert_eq!(
        refused,
        json!([
            "NEG-ERR",
            "n",
            "blocked: this query is too big (max 5 records)",
            5
        ])
    );
    // A narrower filter still works, and so does the connection.
    let outcome = sync(&mut c, "n", json!({"ids": [hex_id(&sixth)]}), &[])
        .await
        .unwrap();
    assert_eq!(outcome.need, ids(&[&sixth]));
    c.assert_healthy().await;
}

#[tokio::test]
async fn an_idle_session_is_closed() {
    let relay = TestRelay::start_with(|c| c.negentropy.idle_seconds = 1).await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let many = notes(&keys, "n", 100, T);
    publish_all(&mut c, &refs(&many)).await;
    // An initial message with a mismatching fingerprint keeps the session
    // going; then the client says nothing.
    let local = refs(&many[..50]);
    let (_, initial) = initiator(&local);
    c.send_json(json!(["NEG-OPEN", "idle", {}, initial])).await;
    assert_eq!(next_neg(&mut c, "idle").await[0], "NEG-MSG");
    let started = std::time::Instant::now();
    let closed = next_neg(&mut c, "idle").await;
    assert_eq!(closed[0], "NEG-ERR", "{closed}");
    assert!(
        closed[2].as_str().unwrap().starts_with("closed:"),
        "{closed}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The session is gone: its next message is answered as unknown.
    c.send_json(json!(["NEG-MSG", "idle", "61"])).await;
    let answer = next_neg(&mut c, "idle").await;
    assert_eq!(answer[0], "NEG-ERR");
    assert!(
        answer[2].as_str().unwrap().starts_with("closed:"),
        "{answer}"
    );
    // A session that keeps talking is not closed.
    let outcome = sync(&mut c, "busy", json!({}), &local).await.unwrap();
    assert_eq!(outcome.need.len(), 50);
}

#[tokio::test]
async fn neg_msg_for_an_unknown_id_is_an_error() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    c.send_json(json!(["NEG-MSG", "nobody", "6100"])).await;
    let answer = next_neg(&mut c, "nobody").await;
    assert_eq!(answer[0], "NEG-ERR");
    assert!(
        answer[2].as_str().unwrap().starts_with("closed:"),
        "{answer}"
    );
    // NEG-CLOSE of an unknown id is quietly ignored.
    c.send_json(json!(["NEG-CLOSE", "nobody"])).await;
    c.expect_silence(Duration::from_millis(200)).await;
    c.assert_healthy().await;
}

#[tokio::test]
async fn neg_open_on_an_open_id_replaces_the_session() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let notes1 = notes(&keys, "one", 100, T);
    let reactions: Vec<Event> = (0..10).map(|i| event(&keys, 7, "+", &[], T + i)).collect();
    publish_all(&mut c, &refs(&notes1)).await;
    publish_all(&mut c, &refs(&reactions)).await;
    // A first session over kind 1 that needs more rounds...
    let (_, initial) = initiator(&refs(&notes1[..60]));
    c.send_json(json!(["NEG-OPEN", "s", {"kinds": [1]}, initial]))
        .await;
    assert_eq!(next_neg(&mut c, "s").await[0], "NEG-MSG");
    // ...is replaced by one over kind 7 under the same id.
    let outcome = sync(&mut c, "s", json!({"kinds": [7]}), &[]).await.unwrap();
    assert_eq!(outcome.need, ids(&refs(&reactions)));
}

#[tokio::test]
async fn req_and_neg_ids_are_separate_namespaces() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let stored = notes(&keys, "stored", 200, T);
    publish_all(&mut c, &refs(&stored)).await;
    // A REQ "x" stays open while a NEG session "x" runs, and the reverse.
    let events = c.req("x", vec![json!({"kinds": [1], "limit": 5})]).await;
    assert_eq!(events.len(), 5);
    // More than one round: the client holds 40 of them and 10 others.
    let others = notes(&keys, "others", 10, T + 500);
    let mut local = refs(&stored[..40]);
    local.extend(refs(&others));
    let (negentropy, initial) = initiator(&local);
    c.send_json(json!(["NEG-OPEN", "x", {}, initial])).await;
    // CLOSE ends the REQ only; the NEG session goes on.
    c.send_json(json!(["CLOSE", "x"])).await;
    let outcome = finish(&mut c, "x", negentropy).await.unwrap();
    assert!(outcome.rounds >= 2, "{outcome:?}");
    assert_eq!(outcome.need, ids(&refs(&stored[40..])));
    assert_eq!(outcome.have, ids(&refs(&others)));
    // A REQ "y" gets live events while NEG "y" opens and closes.
    let _ = c.req("y", vec![json!({"kinds": [1], "limit": 0})]).await;
    let outcome = sync(&mut c, "y", json!({}), &refs(&stored)).await.unwrap();
    assert!(outcome.need.is_empty());
    let live = note(&keys, "live");
    c.send_text(format!(r#"["EVENT",{}]"#, live.as_json()))
        .await;
    loop {
        let message = c.recv().await;
        if message[0] == "EVENT" && message[1] == "y" {
            assert_eq!(message[2]["id"], hex_id(&live));
            break;
        }
    }
}

#[tokio::test]
async fn malformed_messages_are_answered_and_the_connection_stays_healthy() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    for (frame, prefix) in [
        (json!(["NEG-OPEN", "m", {}, "6"]), "invalid:"),
        (json!(["NEG-OPEN", "m", {}, "xyz1"]), "invalid:"),
        (json!(["NEG-OPEN", "m", {}, 97]), "invalid:"),
        (json!(["NEG-OPEN", "m", {"kinds": "one"}, "61"]), "invalid:"),
        (json!(["NEG-OPEN", "m", {}]), "invalid:"),
        // Hex, but not negentropy: a bad mode, a truncated fingerprint.
        (json!(["NEG-OPEN", "m", {}, "610007"]), "invalid:"),
        (json!(["NEG-OPEN", "m", {}, "6100000301"]), "invalid:"),
        (
            json!(["NEG-OPEN", "m", {}, format!("610000010{}", "0".repeat(29))]),
            "invalid:",
        ),
        (json!(["NEG-OPEN", "m", {}, "20"]), "invalid:"),
        // NIP-50: ranked and limited, not a set.
        (
            json!(["NEG-OPEN", "m", {"search": "nostr"}, "6100"]),
            "unsupported:",
        ),
    ] {
        c.send_json(frame.clone()).await;
        let answer = next_neg(&mut c, "m").await;
        assert_eq!(answer[0], "NEG-ERR", "{frame} → {answer}");
        assert!(
            answer[2].as_str().unwrap().starts_with(prefix),
            "{frame} → {answer}"
        );
    }
    // A bad NEG-MSG ends an open session with NEG-ERR.
    let (_, initial) = initiator(&[]);
    c.send_json(json!(["NEG-OPEN", "m", {}, initial])).await;
    assert_eq!(next_neg(&mut c, "m").await[0], "NEG-MSG");
    c.send_json(json!(["NEG-MSG", "m", "not hex"])).await;
    let answer = next_neg(&mut c, "m").await;
    assert_eq!(answer[0], "NEG-ERR");
    assert!(
        answer[2].as_str().unwrap().starts_with("invalid:"),
        "{answer}"
    );
    c.send_json(json!(["NEG-MSG", "m", "6100"])).await;
    let answer = next_neg(&mut c, "m").await;
    assert!(
        answer[2].as_str().unwrap().starts_with("closed:"),
        "{answer}"
    );
    // No subscription id: a NOTICE.
    c.send_json(json!(["NEG-OPEN"])).await;
    assert!(c.expect_notice().await.starts_with("invalid:"));
    c.send_json(json!(["NEG-MSG", 5, "61"])).await;
    assert!(c.expect_notice().await.starts_with("invalid:"));
    // An unsupported protocol version is answered with ours (NIP-77).
    c.send_json(json!(["NEG-OPEN", "v", {}, "62"])).await;
    let answer = next_neg(&mut c, "v").await;
    assert_eq!(answer, json!(["NEG-MSG", "v", "61"]));
    c.assert_healthy().await;
}

#[tokio::test]
async fn the_frame_size_limit_splits_answers_over_rounds() {
    let relay = TestRelay::start_with(|c| c.negentropy.frame_size_limit = 4096).await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let many = notes(&keys, "n", 500, T);
    publish_all(&mut c, &refs(&many)).await;
    // An empty client asks for one id list of everything: 500 × 32 bytes
    // does not fit in 4096.
    let outcome = sync(&mut c, "n", json!({}), &[]).await.unwrap();
    assert_eq!(outcome.need, ids(&refs(&many)));
    assert!(outcome.rounds >= 4, "{outcome:?}");
    assert!(outcome.largest <= 4096, "{outcome:?}");
}

#[tokio::test]
async fn sessions_per_connection_are_capped() {
    let relay = TestRelay::start_with(|c| c.negentropy.max_sessions = 2).await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    publish_all(&mut c, &refs(&notes(&keys, "n", 100, T))).await;
    let (_, initial) = initiator(&[]);
    for sub in ["a", "b"] {
        c.send_json(json!(["NEG-OPEN", sub, {}, initial])).await;
        assert_eq!(next_neg(&mut c, sub).await[0], "NEG-MSG");
    }
    c.send_json(json!(["NEG-OPEN", "c", {}, initial])).await;
    let refused = next_neg(&mut c, "c").await;
    assert_eq!(refused[0], "NEG-ERR");
    assert!(
        refused[2].as_str().unwrap().starts_with("blocked:"),
        "{refused}"
    );
    // Reopening an open id is not one more; closing one frees a place.
    c.send_json(json!(["NEG-OPEN", "a", {}, initial])).await;
    assert_eq!(next_neg(&mut c, "a").await[0], "NEG-MSG");
    c.send_json(json!(["NEG-CLOSE", "b"])).await;
    c.send_json(json!(["NEG-OPEN", "c", {}, initial])).await;
    assert_eq!(next_neg(&mut c, "c").await[0], "NEG-MSG");
}

#[tokio::test]
async fn neg_open_counts_against_the_req_rate_limit() {
    let relay = TestRelay::start_with(|c| {
        c.rate_limit.exempt = vec![];
        c.rate_limit.reqs_per_minute = 2;
    })
    .await;
    let mut c = relay.client().await;
    assert!(sync(&mut c, "1", json!({}), &[]).await.is_ok());
    assert!(sync(&mut c, "2", json!({}), &[]).await.is_ok());
    let refused = sync(&mut c, "3", json!({}), &[]).await.unwrap_err();
    assert!(
        refused[2].as_str().unwrap().starts_with("rate-limited:"),
        "{refused}"
    );
}

#[tokio::test]
async fn disabled_negentropy_is_refused_and_not_advertised() {
    let relay = TestRelay::start_with(|c| c.negentropy.enabled = false).await;
    let mut c = relay.client().await;
    let refused = sync(&mut c, "n", json!({}), &[]).await.unwrap_err();
    assert!(
        refused[2].as_str().unwrap().starts_with("blocked:"),
        "{refused}"
    );
    assert!(!nip11_nips(&relay).await.contains(&77));
    let on = TestRelay::start().await;
    assert!(nip11_nips(&on).await.contains(&77));
}

async fn nip11_nips(relay: &TestRelay) -> Vec<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let doc: Value = serde_json::from_str(body).unwrap();
    doc["supported_nips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

    /// Whatever a client sends after the version byte, the relay's side
    /// answers or refuses it without panicking, and an answer respects the
    /// frame size limit.
    #[test]
    fn any_negentropy_message_is_answered_or_refused(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        version in proptest::prop_oneof![proptest::strategy::Just(0x61u8), proptest::prelude::any::<u8>()],
    ) {
        let mut storage = NegentropyStorageVector::new();
        for i in 0..300u64 {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i * 7919).to_le_bytes());
            storage.insert(1_000 + i / 4, Id::from_byte_array(id)).unwrap();
        }
        storage.seal().unwrap();
        let mut relay = Negentropy::owned(storage, 4096).unwrap();
        let mut message = vec![version];
        message.extend(body);
        if let Ok(answer) = relay.reconcile(&message) {
            proptest::prop_assert!(answer.len() <= 4096);
        }
    }
}
