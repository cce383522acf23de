//! NIP-42 authentication, and what it guards: private kinds (NIP-04 DMs,
//! NIP-59 gift wraps) on every read path, NIP-70 protected events, and the
//! `required_for_read`/`required_for_write` switches. NIP-13 proof of work
//! is here too, as the other write-side gate. AUTH events are built and
//! signed with the independent `nostr` crate.

mod common;

use common::*;
use nostr::prelude::*;
use serde_json::{Value, json};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(400);

fn pk(keys: &Keys) -> String {
    keys.public_key().to_hex()
}

/// An AUTH event with every field chosen by the test.
fn auth_event(keys: &Keys, kind: u16, tags: &[&[&str]], created_at: u64) -> Event {
    event(keys, kind, "", tags, created_at)
}

async fn send_auth(client: &mut Client, event: &Event) -> (bool, String) {
    client.send_json(json!(["AUTH", to_value(event)])).await;
    client.ok_for(&event.id.to_hex()).await
}

#[tokio::test]
async fn every_connection_gets_its_own_challenge() {
    let relay = TestRelay::start().await;
    let mut a = relay.client().await;
    let mut b = relay.client().await;
    let (ca, cb) = (a.wait_for_challenge().await, b.wait_for_challenge().await);
    assert_ne!(ca, cb);
    assert!(ca.len() >= 32, "{ca}");
}

#[tokio::test]
async fn a_correct_auth_is_accepted_and_several_keys_may_authenticate() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (alice, bob) = (Keys::generate(), Keys::generate());
    assert_eq!(
        c.authenticate(&alice, &relay.url).await,
        (true, String::new())
    );
    assert_eq!(
        c.authenticate(&bob, &relay.url).await,
        (true, String::new())
    );
    // Lenient URL comparison: scheme, trailing slash and case are ignored.
    let spelled = relay
        .url
        .replace("ws://", "WSS://")
        .trim_end_matches('/')
        .to_owned();
    let carol = Keys::generate();
    assert_eq!(
        c.authenticate(&carol, &spelled).await,
        (true, String::new())
    );
}

#[tokio::test]
async fn bad_auth_events_are_refused_with_reasons() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let challenge = c.wait_for_challenge().await;
    let url = relay.url.clone();
    let cases: Vec<(&str, Event)> = vec![
        (
            "wrong challenge",
            auth_event(
                &keys,
                22242,
                &[&["relay", &url], &["challenge", "not-the-challenge"]],
                now(),
            ),
        ),
        (
            "wrong relay",
            auth_event(
                &keys,
                22242,
                &[
                    &["relay", "wss://some.other.relay/"],
                    &["challenge", &challenge],
                ],
                now(),
            ),
        ),
        (
            "no relay tag",
            auth_event(&keys, 22242, &[&["challenge", &challenge]], now()),
        ),
        (
            "stale",
            auth_event(
                &keys,
                22242,
                &[&["relay", &url], &["challenge", &challenge]],
                now() - 660,
            ),
        ),
        (
            "from the future",
            auth_event(
                &keys,
                22242,
                &[&["relay", &url], &["challenge", &challenge]],
                now() + 660,
            ),
        ),
        (
            "wrong kind",
            auth_event(
                &keys,
                1,
                &[&["relay", &url], &["challenge", &challenge]],
                now(),
            ),
        ),
    ];
    for (name, event) in cases {
        let (accepted, reason) = send_auth(&mut c, &event).await;
        assert!(!accepted, "{name}");
        assert!(reason.starts_with("invalid:"), "{name}: {reason}");
    }
    // A forged signature: the right fields, someone else's signature.
    let good = c.auth_event(&keys, &url).await;
    let other = c.auth_event(&Keys::generate(), &url).await;
    let mut forged = to_value(&good);
    forged["sig"] = to_value(&other)["sig"].clone();
    c.send_json(json!(["AUTH", forged])).await;
    let (accepted, reason) = c.ok_for(&good.id.to_hex()).await;
    assert!(!accepted && reason.starts_with("invalid:"), "{reason}");
    // None of them authenticated: a protected event is still refused.
    let protected = event(&keys, 1, "mine", &[&["-"]], now());
    let (accepted, reason) = c.publish(&protected).await;
    assert!(
        !accepted && reason.starts_with("auth-required:"),
        "{reason}"
    );
}

#[tokio::test]
async fn the_configured_relay_url_is_the_one_checked() {
    let relay = TestRelay::start_with(|c| c.relay_url = "wss://relay.example.com".into()).await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let (accepted, reason) = c.authenticate(&keys, &relay.url).await;
    assert!(
        !accepted,
        "the Host-derived URL is not this relay's public URL"
    );
    assert!(reason.starts_with("invalid:"), "{reason}");
    assert_eq!(
        c.authenticate(&keys, "wss://relay.example.com/").await,
        (true, String::new())
    );
}

#[tokio::test]
async fn kind_22242_is_never_stored_or_broadcast() {
    let relay = TestRelay::start().await;
    let mut watcher = relay.client().await;
    assert!(watcher.req("all", vec![json!({})]).await.is_empty());
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let auth = c.auth_event(&keys, &relay.url).await;
    let (accepted, reason) = c.publish(&auth).await;
    assert!(!accepted && reason.starts_with("invalid:"), "{reason}");
    assert_eq!(
        send_auth(&mut c, &auth).await,
        (true, String::new()),
        "the same event is a valid AUTH"
    );
    watcher.expect_silence(QUIET).await;
    assert!(
        c.query("k", vec![json!({"kinds": [22242]})])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn required_for_write_and_read() {
    let relay = TestRelay::start_with(|c| {
        c.auth.required_for_write = true;
        c.auth.required_for_read = true;
    })
    .await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let note = note(&keys, "hello");
    let (accepted, reason) = c.publish(&note).await;
    assert!(
        !accepted && reason.starts_with("auth-required:"),
        "{reason}"
    );
    let reason = c.req_closed("s", vec![json!({"kinds": [1]})]).await;
    assert!(reason.starts_with("auth-required:"), "{reason}");
    assert_eq!(
        c.authenticate(&keys, &relay.url).await,
        (true, String::new())
    );
    assert_eq!(c.publish(&note).await, (true, String::new()));
    assert_eq!(c.query("s", vec![json!({"kinds": [1]})]).await.len(), 1);
    // NIP-11 says so.
    let info = nip11(&relay).await;
    assert_eq!(info["limitation"]["auth_required"], true);
    assert_eq!(info["limitation"]["restricted_writes"], true);
}

async fn nip11(relay: &TestRelay) -> Value {
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
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn nip11_advertises_auth_and_its_nips() {
    let relay = TestRelay::start().await;
    let info = nip11(&relay).await;
    let nips: Vec<u64> = info["supported_nips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    for nip in [1, 9, 11, 17, 40, 42, 59, 62, 70] {
        assert!(nips.contains(&nip), "NIP-{nip} in {nips:?}");
    }
    assert!(!nips.contains(&13), "no proof of work by default");
    assert_eq!(info["limitation"]["auth_required"], false);
    assert_eq!(info["limitation"]["min_pow_difficulty"], 0);
}

/// The private-kind fixture: Alice sends Bob a DM (kind 4) and a gift wrap
/// (kind 1059, signed by a throwaway key), and posts a public note.
struct Private {
    alice: Keys,
    bob: Keys,
    dm: Event,
    wrap: Event,
    public: Event,
}

async fn private_fixture(relay: &TestRelay) -> Private {
    let (alice, bob) = (Keys::generate(), Keys::generate());
    let mut c = relay.client().await;
    let dm = event(&alice, 4, "ciphertext", &[&["p", &pk(&bob)]], now() - 30);
    let wrap = event(
        &Keys::generate(),
        1059,
        "sealed",
        &[&["p", &pk(&bob)]],
        now() - 20,
    );
    let public = event(&alice, 1, "hello world", &[&["p", &pk(&bob)]], now() - 10);
    for e in [&dm, &wrap, &public] {
        assert_eq!(c.publish(e).await, (true, String::new()));
    }
    Private {
        alice,
        bob,
        dm,
        wrap,
        public,
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(events: &[&Event]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| e.id.to_hex()).collect();
    ids.sort();
    ids
}

/// Every stored read path a client might try, without `kinds` where that
/// is the point.
fn read_paths(f: &Private) -> Vec<Value> {
    vec![
        json!({}),
        json!({"authors": [pk(&f.alice)]}),
        json!({"#p": [pk(&f.bob)]}),
        json!({"ids": [f.dm.id.to_hex(), f.wrap.id.to_hex(), f.public.id.to_hex()]}),
        json!({"kinds": [1, 4, 1059]}),
        json!({"since": now() - 100}),
    ]
}

#[tokio::test]
async fn private_kinds_never_leak_to_strangers() {
    // NIP-04/NIP-17: DMs are for their parties; NIP-42 example: "A relay may
    // limit access to `kind: 4` DMs to only the parties involved".
    let relay = TestRelay::start().await;
    let f = private_fixture(&relay).await;
    let stranger = Keys::generate();
    for authenticated in [false, true] {
        let mut c = relay.client().await;
        if authenticated {
            assert_eq!(
                c.authenticate(&stranger, &relay.url).await,
                (true, String::new())
            );
        }
        for (n, filter) in read_paths(&f).into_iter().enumerate() {
            let got = c.query(&format!("r{n}"), vec![filter.clone()]).await;
            assert_eq!(ids(&got), sorted(&[&f.public]), "{filter}");
        }
        if !authenticated {
            for kinds in [json!([4]), json!([1059]), json!([4, 1059])] {
                let reason = c.req_closed("dm", vec![json!({"kinds": kinds})]).await;
                assert!(reason.starts_with("auth-required:"), "{reason}");
            }
        }
        // Live: nothing private is forwarded either.
        assert!(
            c.req("live", vec![json!({"since": now()})])
                .await
                .is_empty()
        );
        let mut sender = relay.client().await;
        let new_dm = event(
            &f.alice,
            4,
            &format!("again {authenticated}"),
            &[&["p", &pk(&f.bob)]],
            now(),
        );
        assert_eq!(sender.publish(&new_dm).await, (true, String::new()));
        c.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn private_kinds_reach_their_author_and_recipient() {
    let relay = TestRelay::start().await;
    let f = private_fixture(&relay).await;
    // Bob, p-tagged in all three, sees all three on every path.
    let mut bob = relay.client().await;
    assert_eq!(
        bob.authenticate(&f.bob, &relay.url).await,
        (true, String::new())
    );
    let everything = sorted(&[&f.dm, &f.wrap, &f.public]);
    assert_eq!(ids(&bob.query("a", vec![json!({})]).await), everything);
    assert_eq!(
        ids(&bob.query("b", vec![json!({"#p": [pk(&f.bob)]})]).await),
        everything
    );
    assert_eq!(
        ids(&bob.query("c", vec![json!({"kinds": [4, 1059]})]).await),
        sorted(&[&f.dm, &f.wrap])
    );
    // A limit counts only what Bob may see, newest first.
    let newest = bob.query("d", vec![json!({"limit": 2})]).await;
    assert_eq!(ids(&newest), sorted(&[&f.wrap, &f.public]));
    // Alice wrote the DM (not the wrap, signed by a throwaway key).
    let mut alice = relay.client().await;
    assert_eq!(
        alice.authenticate(&f.alice, &relay.url).await,
        (true, String::new())
    );
    assert_eq!(
        ids(&alice.query("a", vec![json!({})]).await),
        sorted(&[&f.dm, &f.public])
    );
    // Live delivery to Bob, and not to Alice's other-kind subscription.
    assert!(
        bob.req("live", vec![json!({"kinds": [4], "since": now()})])
            .await
            .is_empty()
    );
    let mut sender = relay.client().await;
    let new_dm = event(&f.alice, 4, "again", &[&["p", &pk(&f.bob)]], now());
    assert_eq!(sender.publish(&new_dm).await, (true, String::new()));
    let delivered = bob.recv().await;
    assert_eq!(delivered[0], "EVENT");
    assert_eq!(delivered[2]["id"], new_dm.id.to_hex());
}

#[tokio::test]
async fn protected_events_only_from_their_authenticated_author() {
    // NIP-70: "the relay SHOULD first require the client to perform AUTH
    // … and then check if the authenticated client has the same pubkey".
    let relay = TestRelay::start().await;
    let (author, other) = (Keys::generate(), Keys::generate());
    let protected = event(&author, 1, "only from me", &[&["-"]], now());
    let mut c = relay.client().await;
    let (accepted, reason) = c.publish(&protected).await;
    assert!(
        !accepted && reason.starts_with("auth-required:"),
        "{reason}"
    );
    assert_eq!(
        c.authenticate(&other, &relay.url).await,
        (true, String::new())
    );
    let (accepted, reason) = c.publish(&protected).await;
    assert!(!accepted && reason.starts_with("restricted:"), "{reason}");
    assert_eq!(
        c.authenticate(&author, &relay.url).await,
        (true, String::new())
    );
    assert_eq!(c.publish(&protected).await, (true, String::new()));
    assert_eq!(
        c.query("p", vec![json!({"ids": [protected.id.to_hex()]})])
            .await
            .len(),
        1
    );
    // NIP-70: reposts embedding a protected event are refused, whoever sends them.
    let repost = event(
        &author,
        6,
        &protected.as_json(),
        &[&["e", &protected.id.to_hex()]],
        now(),
    );
    let (accepted, reason) = c.publish(&repost).await;
    assert!(!accepted && reason.starts_with("restricted:"), "{reason}");
}

#[tokio::test]
async fn seals_are_never_accepted_unwrapped() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let seal = event(&Keys::generate(), 13, "sealed", &[], now());
    let (accepted, reason) = c.publish(&seal).await;
    assert!(!accepted && reason.starts_with("invalid:"), "{reason}");
}

#[tokio::test]
async fn proof_of_work_is_required_when_configured() {
    // NIP-13: difficulty is the number of leading zero bits of the id; a
    // committed target below the requirement is refused however lucky.
    let relay = TestRelay::start_with(|c| c.limits.min_pow_difficulty = 10).await;
    let mut c = relay.client().await;
    let keys = Keys::generate();
    let worked = mined(&keys, "worked for it", 12);
    assert_eq!(c.publish(&worked).await, (true, String::new()));
    let lazy = note(&keys, "no work");
    let (accepted, reason) = c.publish(&lazy).await;
    assert!(!accepted, "{reason}");
    assert!(reason.starts_with("pow: difficulty "), "{reason}");
    assert!(reason.ends_with(" is less than 10"), "{reason}");
    let lucky = mined(&keys, "low target", 6);
    // Mined to a committed target of 6: refused even if the id happens to
    // have 10 zero bits.
    assert_eq!(
        c.publish(&lucky).await,
        (false, "pow: difficulty 6 is less than 10".to_owned())
    );
    let info = nip11(&relay).await;
    assert_eq!(info["limitation"]["min_pow_difficulty"], 10);
    assert!(
        info["supported_nips"]
            .as_array()
            .unwrap()
            .contains(&json!(13))
    );
}

/// A note mined by the `nostr` crate to `difficulty` bits, with the target
/// committed in its nonce tag.
fn mined(keys: &Keys, content: &str, difficulty: u8) -> Event {
    let unsigned = EventBuilder::new(Kind::TextNote, content)
        .finalize_unsigned(keys.public_key())
        .mine(
            &nostr::nips::nip13::SingleThreadPow,
            std::num::NonZeroU8::new(difficulty).unwrap(),
        )
        .unwrap();
    keys.sign_event(unsigned).unwrap()
}

#[tokio::test]
async fn at_most_sixteen_pubkeys_but_a_proven_one_may_repeat() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let keys: Vec<Keys> = (0..16).map(|_| Keys::generate()).collect();
    for k in &keys {
        assert_eq!(c.authenticate(k, &relay.url).await, (true, String::new()));
    }
    let (accepted, reason) = c.authenticate(&Keys::generate(), &relay.url).await;
    assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    // A fresh AUTH event for a pubkey already proven is fine.
    let again = event(
        &keys[0],
        22242,
        "",
        &[
            &["relay", &relay.url],
            &["challenge", &c.wait_for_challenge().await],
            &["nonce", "2"],
        ],
        now(),
    );
    assert_eq!(send_auth(&mut c, &again).await, (true, String::new()));
}

#[tokio::test]
async fn without_auth_private_kinds_are_served_to_nobody() {
    let relay = TestRelay::start_with(|c| c.auth.enabled = false).await;
    let mut c = relay.client().await;
    let reason = c.req_closed("dm", vec![json!({"kinds": [4]})]).await;
    assert!(reason.starts_with("restricted:"), "{reason}");
    assert!(c.challenge.is_none(), "no challenge was sent");
    let auth = auth_event(&Keys::generate(), 22242, &[&["challenge", "x"]], now());
    let (accepted, reason) = send_auth(&mut c, &auth).await;
    assert!(!accepted && reason.starts_with("invalid:"), "{reason}");
}
