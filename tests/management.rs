//! NIP-86 management API (authorized by NIP-98), the `nostr-relayd admin`
//! CLI and the access lists they edit, end to end over real sockets, on
//! both backends (management_on_postgres.rs). What only a SQLite file
//! does: management_sqlite.rs.

mod common;
mod nip86;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use nip86::*;
use nostr::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

// Raw HTTP.

async fn get_nip11(addr: SocketAddr) -> Value {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/nostr+json\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (status, body) = read_response(stream).await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

async fn get_home_page(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream).await.1
}

// NIP-98.

/// A call the API answers 200 with an error.
async fn rpc_error(relay: &TestRelay, keys: &Keys, method: &str, params: Value) -> String {
    let (status, answer) = call(relay, keys, method, params).await;
    assert_eq!(status, 200, "{method}: {answer}");
    assert!(answer["result"].is_null(), "{method}: {answer}");
    answer["error"]
        .as_str()
        .expect("an error message")
        .to_owned()
}

fn entries(list: &Value, key: &str) -> Vec<(String, String)> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|e| {
            (
                e[key].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

// The methods.

#[tokio::test]
async fn every_method_round_trips() {
    let admin = Keys::generate();
    // An npub in relay.toml works as well as hex.
    let npub = admin.public_key().to_bech32().unwrap();
    let relay = TestRelay::start_with(|c| c.management.admins = vec![npub]).await;

    let methods = ok(&relay, &admin, "supportedmethods", json!([])).await;
    for method in [
        "banpubkey",
        "unbanpubkey",
        "listbannedpubkeys",
        "allowpubkey",
        "unallowpubkey",
        "listallowedpubkeys",
        "banevent",
        "allowevent",
        "listbannedevents",
        "allowkind",
        "disallowkind",
        "listallowedkinds",
        "blockip",
        "unblockip",
        "listblockedips",
        "changerelayname",
        "changerelaydescription",
        "changerelayicon",
        "listeventsneedingmoderation",
    ] {
        assert!(
            methods.as_array().unwrap().contains(&json!(method)),
            "{method}"
        );
    }

    let key = Keys::generate().public_key();
    assert_eq!(
        ok(&relay, &admin, "banpubkey", json!([key.to_hex(), "spam"])).await,
        json!(true)
    );
    let banned = ok(&relay, &admin, "listbannedpubkeys", json!([])).await;
    assert_eq!(
        entries(&banned, "pubkey"),
        vec![(key.to_hex(), "spam".to_owned())]
    );
    ok(
        &relay,
        &admin,
        "unbanpubkey",
        json!([key.to_bech32().unwrap()]),
    )
    .await;
    assert_eq!(
        ok(&relay, &admin, "listbannedpubkeys", json!([])).await,
        json!([])
    );

    ok(&relay, &admin, "allowpubkey", json!([key.to_hex()])).await;
    let allowed = ok(&relay, &admin, "listallowedpubkeys", json!([])).await;
    assert_eq!(
        entries(&allowed, "pubkey"),
        vec![(key.to_hex(), String::new())]
    );
    ok(&relay, &admin, "unallowpubkey", json!([key.to_hex()])).await;
    assert_eq!(
        ok(&relay, &admin, "listallowedpubkeys", json!([])).await,
        json!([])
    );

    let id = "ab".repeat(32);
    ok(&relay, &admin, "banevent", json!([id, "illegal"])).await;
    let events = ok(&relay, &admin, "listbannedevents", json!([])).await;
    assert_eq!(
        entries(&events, "id"),
        vec![(id.clone(), "illegal".to_owned())]
    );
    ok(&relay, &admin, "allowevent", json!([id])).await;
    assert_eq!(
        ok(&relay, &admin, "listbannedevents", json!([])).await,
        json!([])
    );

    ok(&relay, &admin, "allowkind", json!([1])).await;
    ok(&relay, &admin, "allowkind", json!([30023])).await;
    assert_eq!(
        ok(&relay, &admin, "listallowedkinds", json!([])).await,
        json!([1, 30023])
    );
    ok(&relay, &admin, "disallowkind", json!([30023])).await;
    assert_eq!(
        ok(&relay, &admin, "listallowedkinds", json!([])).await,
        json!([1])
    );

    ok(&relay, &admin, "blockip", json!(["10.1.2.3/8", "abuse"])).await;
    ok(&relay, &admin, "blockip", json!(["2001:db8::1"])).await;
    let ips = ok(&relay, &admin, "listblockedips", json!([])).await;
    assert_eq!(
        entries(&ips, "ip"),
        vec![
            ("10.0.0.0/8".to_owned(), "abuse".to_owned()),
            ("2001:db8::1/128".to_owned(), String::new())
        ]
    );
    ok(&relay, &admin, "unblockip", json!(["10.0.0.0/8"])).await;
    ok(&relay, &admin, "unblockip", json!(["2001:db8::1"])).await;
    assert_eq!(
        ok(&relay, &admin, "listblockedips", json!([])).await,
        json!([])
    );

    assert_eq!(
        ok(&relay, &admin, "listeventsneedingmoderation", json!([])).await,
        json!([])
    );

    // Bad calls are answered with an error, and change nothing.
    assert!(
        rpc_error(&relay, &admin, "banpubkey", json!(["nope"]))
            .await
            .contains("not a pubkey")
    );
    assert!(
        rpc_error(&relay, &admin, "banevent", json!([]))
            .await
            .contains("event id")
    );
    assert!(
        rpc_error(&relay, &admin, "allowkind", json!([70000]))
            .await
            .contains("kind")
    );
    assert!(
        rpc_error(&relay, &admin, "blockip", json!(["10.0.0.0/33"]))
            .await
            .contains("IP")
    );
    assert!(
        rpc_error(&relay, &admin, "createrole", json!([]))
            .await
            .contains("unsupported")
    );
    assert_eq!(
        ok(&relay, &admin, "listbannedpubkeys", json!([])).await,
        json!([])
    );
}

#[tokio::test]
async fn changing_the_name_description_and_icon_shows_in_nip11_at_once() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |c| c.info.name = "from relay.toml".into()).await;
    let doc = get_nip11(relay.addr).await;
    assert_eq!(doc["name"], "from relay.toml");
    assert!(
        doc["supported_nips"]
            .as_array()
            .unwrap()
            .contains(&json!(86))
    );

    ok(&relay, &admin, "changerelayname", json!(["Renamed"])).await;
    ok(
        &relay,
        &admin,
        "changerelaydescription",
        json!(["New words"]),
    )
    .await;
    ok(
        &relay,
        &admin,
        "changerelayicon",
        json!(["https://example.com/i.png"]),
    )
    .await;
    let doc = get_nip11(relay.addr).await;
    assert_eq!(doc["name"], "Renamed");
    assert_eq!(doc["description"], "New words");
    assert_eq!(doc["icon"], "https://example.com/i.png");
    assert!(get_home_page(relay.addr).await.contains("Renamed"));

    // An empty value clears the override: relay.toml's value is back.
    ok(&relay, &admin, "changerelayname", json!([""])).await;
    assert_eq!(get_nip11(relay.addr).await["name"], "from relay.toml");
}

// Enforcement.

#[tokio::test]
async fn a_banned_pubkey_cannot_publish_until_unbanned() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    let author = Keys::generate();
    let mut client = relay.client().await;
    assert_eq!(
        client.publish(&note(&author, "before")).await,
        (true, String::new())
    );

    ok(
        &relay,
        &admin,
        "banpubkey",
        json!([author.public_key().to_hex(), "spam"]),
    )
    .await;
    let refused = client.publish(&note(&author, "during")).await;
    assert!(is_blocked(&refused), "{refused:?}");
    // Others still write.
    assert!(client.publish(&note(&Keys::generate(), "other")).await.0);
    // NIP-62: a request to vanish is never refused by the access lists (a
    // second banned author, since vanishing refuses the author's older events).
    let leaving = Keys::generate();
    ok(
        &relay,
        &admin,
        "banpubkey",
        json!([leaving.public_key().to_hex()]),
    )
    .await;
    let vanish = event(&leaving, 62, "", &[&["relay", &relay.url]], now());
    let (accepted, reason) = client.publish(&vanish).await;
    assert!(
        accepted || !(reason.contains("banned") || reason.contains("allow list")),
        "{reason}"
    );

    ok(
        &relay,
        &admin,
        "unbanpubkey",
        json!([author.public_key().to_hex()]),
    )
    .await;
    assert_eq!(
        client.publish(&note(&author, "after")).await,
        (true, String::new())
    );
}

#[tokio::test]
async fn an_allow_list_admits_only_its_members() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    let member = Keys::generate();
    let stranger = Keys::generate();
    ok(
        &relay,
        &admin,
        "allowpubkey",
        json!([member.public_key().to_hex()]),
    )
    .await;
    assert_eq!(
        get_nip11(relay.addr).await["limitation"]["restricted_writes"],
        true
    );
    let mut client = relay.client().await;
    assert!(client.publish(&note(&member, "hi")).await.0);
    let refused = client.publish(&note(&stranger, "hi")).await;
    assert!(is_blocked(&refused), "{refused:?}");
    // Not an inbox relay: a reply to a member is refused too.
    let reply = event(
        &stranger,
        1,
        "hey",
        &[&["p", &member.public_key().to_hex()]],
        now(),
    );
    assert!(is_blocked(&client.publish(&reply).await));
}

#[tokio::test]
async fn an_inbox_relay_takes_events_addressed_to_its_members() {
    let member = Keys::generate();
    let stranger = Keys::generate();
    let relay = TestRelay::start_with(|c| {
        c.access.allowed_pubkeys = vec![member.public_key().to_bech32().unwrap()];
        c.access.inbox = true;
    })
    .await;
    let mut client = relay.client().await;
    assert!(client.publish(&note(&member, "mine")).await.0);
    let to_member = event(
        &stranger,
        1,
        "hey",
        &[&["p", &member.public_key().to_hex()]],
        now(),
    );
    assert_eq!(client.publish(&to_member).await, (true, String::new()));
    let to_other = event(
        &stranger,
        1,
        "hey",
        &[&["p", &stranger.public_key().to_hex()]],
        now(),
    );
    assert!(is_blocked(&client.publish(&to_other).await));
    assert!(is_blocked(
        &client.publish(&note(&stranger, "no p tag")).await
    ));
}

#[tokio::test]
async fn kind_lists_refuse_and_admit_kinds() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |c| c.access.denied_kinds = vec![4]).await;
    let author = Keys::generate();
    let mut client = relay.client().await;
    // relay.toml's deny list, which the API cannot lift.
    assert!(is_blocked(
        &client.publish(&event(&author, 4, "dm", &[], now())).await
    ));
    assert!(
        rpc_error(&relay, &admin, "allowkind", json!([4]))
            .await
            .contains("relay.toml")
    );

    ok(&relay, &admin, "disallowkind", json!([7])).await;
    let refused = client.publish(&event(&author, 7, "+", &[], now())).await;
    assert!(
        is_blocked(&refused) && refused.1.contains("kind 7"),
        "{refused:?}"
    );
    assert!(client.publish(&note(&author, "text")).await.0);
    // allowkind undoes disallowkind: the relay is open again, not kind-7-only.
    ok(&relay, &admin, "allowkind", json!([7])).await;
    assert!(client.publish(&event(&author, 7, "+", &[], now())).await.0);
    assert!(client.publish(&note(&author, "text 2")).await.0);

    // An allow list: only kind 1 from now on.
    ok(&relay, &admin, "allowkind", json!([1])).await;
    assert!(client.publish(&note(&author, "text 3")).await.0);
    assert!(is_blocked(
        &client.publish(&event(&author, 7, "+", &[], now())).await
    ));
    assert_eq!(
        ok(&relay, &admin, "listallowedkinds", json!([])).await,
        json!([1])
    );
}

#[tokio::test]
async fn a_banned_event_is_deleted_and_cannot_come_back() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    let author = Keys::generate();
    let target = event(&author, 1, "bad", &[&["t", "x"]], now());
    let id = target.id.to_hex();
    let mut client = relay.client().await;
    assert!(client.publish(&target).await.0);
    assert_eq!(client.query("a", vec![json!({"ids": [id]})]).await.len(), 1);

    ok(&relay, &admin, "banevent", json!([id, "illegal"])).await;
    assert!(
        client
            .query("b", vec![json!({"ids": [id]})])
            .await
            .is_empty()
    );
    // Its tag rows went with it.
    assert!(
        client
            .query("c", vec![json!({"#t": ["x"]})])
            .await
            .is_empty()
    );
    let again = client.publish(&target).await;
    assert!(is_blocked(&again), "{again:?}");
    // Other events of the author are not affected.
    assert!(client.publish(&note(&author, "fine")).await.0);

    ok(&relay, &admin, "allowevent", json!([id])).await;
    assert_eq!(client.publish(&target).await, (true, String::new()));
}

#[tokio::test]
async fn reports_fill_the_moderation_queue_until_moderated() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    let author = Keys::generate();
    let reporter = Keys::generate();
    let reported = note(&author, "spammy");
    let fine = note(&author, "fine");
    let mut client = relay.client().await;
    assert!(client.publish(&reported).await.0);
    assert!(client.publish(&fine).await.0);
    let report = event(
        &reporter,
        1984,
        "",
        &[
            &["e", &reported.id.to_hex(), "spam"],
            &["p", &author.public_key().to_hex()],
        ],
        now(),
    );
    assert!(client.publish(&report).await.0);
    let queue = ok(&relay, &admin, "listeventsneedingmoderation", json!([])).await;
    assert_eq!(
        entries(&queue, "id"),
        vec![(reported.id.to_hex(), "spam".to_owned())]
    );

    // Banning it moderates it: gone from the queue and from the relay.
    ok(&relay, &admin, "banevent", json!([reported.id.to_hex()])).await;
    assert_eq!(
        ok(&relay, &admin, "listeventsneedingmoderation", json!([])).await,
        json!([])
    );
    assert!(
        client
            .query("q", vec![json!({"ids": [reported.id.to_hex()]})])
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_blocked_address_is_closed_at_accept_and_its_events_refused() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    let author = Keys::generate();
    let mut before = client_from("127.0.0.2", &relay)
        .await
        .expect("not blocked yet");

    ok(&relay, &admin, "blockip", json!(["127.0.0.2", "abuse"])).await;
    assert!(
        client_from("127.0.0.2", &relay).await.is_err(),
        "closed at accept"
    );
    // A connection opened before the block stays, but cannot publish.
    let refused = before
        .publish(&note(&author, "from a blocked address"))
        .await;
    assert!(
        is_blocked(&refused) && refused.1.contains("IP"),
        "{refused:?}"
    );
    // Other addresses are not affected.
    let mut other = client_from("127.0.0.3", &relay).await.expect("not blocked");
    assert!(other.publish(&note(&author, "from elsewhere")).await.0);

    ok(&relay, &admin, "unblockip", json!(["127.0.0.2"])).await;
    let mut after = client_from("127.0.0.2", &relay).await.expect("unblocked");
    assert!(after.publish(&note(&author, "welcome back")).await.0);
}

// NIP-98.

/// A relay, its admin, a body, and a control call proving that the same
/// request with a correct header passes: so each refusal below is the
/// header's fault alone.
async fn nip98_setup() -> (TestRelay, Keys, String) {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    let body = rpc_body("banpubkey", json!([Keys::generate().public_key().to_hex()]));
    let good = auth_header(&admin, &relay.url, "POST", &body, now());
    let (status, answer) = post(relay.addr, "application/nostr+json+rpc", Some(&good), &body).await;
    assert_eq!(status, 200, "{answer}");
    (relay, admin, body)
}

async fn assert_refused(
    relay: &TestRelay,
    admin: &Keys,
    auth: Option<&str>,
    body: &str,
    expected: u16,
) -> String {
    let (status, answer) = post(relay.addr, "application/nostr+json+rpc", auth, body).await;
    assert_eq!(status, expected, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert!(answer["error"].is_string(), "{answer}");
    // Nothing beyond the control call's ban happened.
    assert_eq!(
        ok(relay, admin, "listbannedpubkeys", json!([]))
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    answer["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn nip98_without_a_header_is_401() {
    let (relay, admin, body) = nip98_setup().await;
    assert_refused(&relay, &admin, None, &body, 401).await;
    assert_refused(&relay, &admin, Some("Bearer abc"), &body, 401).await;
    assert_refused(&relay, &admin, Some("Nostr not-base64!"), &body, 401).await;
}

#[tokio::test]
async fn nip98_with_a_wrong_url_is_401() {
    let (relay, admin, body) = nip98_setup().await;
    let auth = auth_header(&admin, "wss://other.example.com/", "POST", &body, now());
    let error = assert_refused(&relay, &admin, Some(&auth), &body, 401).await;
    assert!(error.contains("u tag"), "{error}");
    // Another port on the same host is another relay.
    let port = relay.addr.port().wrapping_add(1);
    let auth = auth_header(
        &admin,
        &format!("ws://127.0.0.1:{port}/"),
        "POST",
        &body,
        now(),
    );
    assert_refused(&relay, &admin, Some(&auth), &body, 401).await;
}

#[tokio::test]
async fn nip98_with_a_wrong_method_is_401() {
    let (relay, admin, body) = nip98_setup().await;
    let auth = auth_header(&admin, &relay.url, "GET", &body, now());
    let error = assert_refused(&relay, &admin, Some(&auth), &body, 401).await;
    assert!(error.contains("method"), "{error}");
}

#[tokio::test]
async fn nip98_with_a_wrong_payload_hash_is_401() {
    let (relay, admin, body) = nip98_setup().await;
    // Signed for another body (banning someone else).
    let other = rpc_body("banpubkey", json!([Keys::generate().public_key().to_hex()]));
    let auth = auth_header(&admin, &relay.url, "POST", &other, now());
    let error = assert_refused(&relay, &admin, Some(&auth), &body, 401).await;
    assert!(error.contains("payload"), "{error}");
    // No payload tag at all: NIP-86 requires it.
    let event = event(
        &admin,
        27235,
        "",
        &[&["u", &relay.url], &["method", "POST"]],
        now(),
    );
    assert_refused(&relay, &admin, Some(&nostr_header(&event)), &body, 401).await;
}

#[tokio::test]
async fn nip98_replayed_or_stale_events_are_401() {
    let (relay, admin, body) = nip98_setup().await;
    // The same header twice: the first passes (banning the same key again
    // changes nothing), the second is a replay.
    let body2 = body.clone();
    let auth = auth_header(&admin, &relay.url, "POST", &body2, now());
    let (status, answer) = post(
        relay.addr,
        "application/nostr+json+rpc",
        Some(&auth),
        &body2,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let error = assert_refused(&relay, &admin, Some(&auth), &body2, 401).await;
    assert!(error.contains("already used"), "{error}");
    // An old event (captured two minutes ago) and one from the future.
    for created_at in [now() - 120, now() + 120] {
        let auth = auth_header(&admin, &relay.url, "POST", &body, created_at);
        let error = assert_refused(&relay, &admin, Some(&auth), &body, 401).await;
        assert!(error.contains("created_at"), "{error}");
    }
    // A forged signature.
    let mut forged: Value = serde_json::from_str(
        &serde_json::to_string(&to_value(&event(
            &admin,
            27235,
            "",
            &[
                &["u", &relay.url],
                &["method", "POST"],
                &["payload", &hex::encode(Sha256::digest(body.as_bytes()))],
            ],
            now(),
        )))
        .unwrap(),
    )
    .unwrap();
    let sig = forged["sig"].as_str().unwrap().to_owned();
    forged["sig"] = json!(format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    ));
    let header = format!(
        "Nostr {}",
        base64::engine::general_purpose::STANDARD.encode(forged.to_string())
    );
    assert_refused(&relay, &admin, Some(&header), &body, 401).await;
}

#[tokio::test]
async fn nip98_by_a_non_admin_key_is_403() {
    let (relay, admin, body) = nip98_setup().await;
    let stranger = Keys::generate();
    let auth = auth_header(&stranger, &relay.url, "POST", &body, now());
    let error = assert_refused(&relay, &admin, Some(&auth), &body, 403).await;
    assert!(error.contains("not an admin"), "{error}");
}

#[tokio::test]
async fn the_default_configuration_answers_but_admits_nobody() {
    let relay = TestRelay::start().await;
    assert!(relay.config.management.enabled && relay.config.management.admins.is_empty());
    let keys = Keys::generate();
    let body = rpc_body("supportedmethods", json!([]));
    let (status, _) = post(relay.addr, "application/nostr+json+rpc", None, &body).await;
    assert_eq!(status, 401);
    let auth = auth_header(&keys, &relay.url, "POST", &body, now());
    let (status, answer) = post(relay.addr, "application/nostr+json+rpc", Some(&auth), &body).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("no admins"), "{answer}");
    assert!(
        get_nip11(relay.addr).await["supported_nips"]
            .as_array()
            .unwrap()
            .contains(&json!(86))
    );
}

#[tokio::test]
async fn a_disabled_endpoint_is_not_there() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |c| c.management.enabled = false).await;
    let body = rpc_body("supportedmethods", json!([]));
    let auth = auth_header(&admin, &relay.url, "POST", &body, now());
    let (status, _) = post(relay.addr, "application/nostr+json+rpc", Some(&auth), &body).await;
    assert_eq!(status, 405);
    let nips = get_nip11(relay.addr).await["supported_nips"].clone();
    assert!(!nips.as_array().unwrap().contains(&json!(86)), "{nips}");
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_it_is_read() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    let body = format!(
        "{{\"method\":\"supportedmethods\",\"params\":[\"{}\"]}}",
        "x".repeat(70_000)
    );
    let auth = auth_header(&admin, &relay.url, "POST", &body, now());
    let (status, _) = post(relay.addr, "application/nostr+json+rpc", Some(&auth), &body).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn a_request_to_vanish_survives_a_ban_of_itself() {
    // NIP-62: "Relays MUST ensure the deleted events cannot be
    // re-broadcasted into the relay"; the stored request is what ensures it.
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    let mut c = relay.client().await;
    let alice = Keys::generate();
    let old = event(&alice, 1, "old", &[], now() - 10);
    assert!(c.publish(&old).await.0);
    let request = event(&alice, 62, "", &[&["relay", "ALL_RELAYS"]], now());
    assert!(c.publish(&request).await.0);
    ok(
        &relay,
        &admin,
        "banevent",
        json!([request.id.to_hex(), "spam?"]),
    )
    .await;
    assert!(is_blocked(&c.publish(&old).await), "the old note stays out");
}

// The `nostr-relayd admin` CLI: the same edits from the host's shell, on the
// database the relay runs on, picked up by running relays within a poll of
// their access lists (250 ms; the tests allow 2 s).

/// How long a running relay may take to see an edit made by the CLI.
const PICKED_UP: Duration = Duration::from_secs(2);

#[tokio::test]
async fn the_cli_bans_a_pubkey_in_a_running_relay_within_two_seconds() {
    // The operator's real use: the relay binary runs, the CLI edits beside it.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.sqlite");
    let config = write_config(dir.path(), "");
    let relay = RelayProcess::spawn(&config, &db).await;
    let author = Keys::generate();
    let mut client = Client::connect(&relay.url).await;
    assert!(client.publish(&note(&author, "before")).await.0);

    let npub = author.public_key().to_bech32().unwrap();
    let out = admin_ok(&config, &db, &["ban-pubkey", &npub, "--reason", "spam"]);
    assert_eq!(
        out,
        format!("banned pubkey {}\n", author.public_key().to_hex())
    );
    let started = Instant::now();
    loop {
        let event = note(&author, &format!("during {:?}", started.elapsed()));
        let answer = client.publish(&event).await;
        if is_blocked(&answer) {
            break;
        }
        assert!(
            started.elapsed() < PICKED_UP,
            "the running relay still accepts the banned pubkey: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let listed = admin_ok(&config, &db, &["list"]);
    assert!(
        listed.contains(&format!(
            "banned pubkeys:\n  {}  spam\n",
            author.public_key().to_hex()
        )),
        "{listed}"
    );

    let out = admin_ok(
        &config,
        &db,
        &["unban-pubkey", &author.public_key().to_hex()],
    );
    assert!(out.starts_with("unbanned pubkey"), "{out}");
    let started = Instant::now();
    loop {
        let answer = client
            .publish(&note(&author, &format!("after {:?}", started.elapsed())))
            .await;
        if answer.0 {
            break;
        }
        assert!(started.elapsed() < PICKED_UP, "still banned: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        admin_ok(&config, &db, &["list"]).contains("banned pubkeys: none"),
        "the unban is stored"
    );

    // Bad input is refused with a message and a failure status.
    let out = admin_cli(&config, &db, &["ban-pubkey", "nonsense"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pubkey"));
}

#[tokio::test]
async fn blocking_the_admins_own_address_is_undone_from_the_host() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    ok(&relay, &admin, "blockip", json!(["127.0.0.1/32"])).await;
    // The API itself is now out of reach from 127.0.0.1…
    assert!(client_from("127.0.0.1", &relay).await.is_err());
    // …and the host CLI, working on the database, reaches the running
    // relay through its access-list watcher.
    let config = write_config(relay.db.parent().unwrap(), "");
    let out = admin_ok(&config, &relay.db, &["unblock-ip", "127.0.0.1"]);
    assert_eq!(out, "unblocked 127.0.0.1/32\n");
    let started = Instant::now();
    while client_from("127.0.0.1", &relay).await.is_err() {
        assert!(
            started.elapsed() < PICKED_UP,
            "the relay did not see the CLI's unblock within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_event_banned_from_the_cli_is_deleted_and_leaves_the_moderation_queue() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    let config = write_config(relay.db.parent().unwrap(), "");
    let author = Keys::generate();
    let target = event(&author, 1, "bad", &[&["t", "cli-ban"]], now());
    let id = target.id.to_hex();
    let report = event(
        &Keys::generate(),
        1984,
        "",
        &[
            &["e", &id, "illegal"],
            &["p", &author.public_key().to_hex()],
        ],
        now(),
    );
    let mut client = relay.client().await;
    assert!(client.publish(&target).await.0);
    assert!(client.publish(&report).await.0);
    let listed = admin_ok(&config, &relay.db, &["list"]);
    assert!(
        listed.contains(&format!(
            "events needing moderation:\n  {id}  illegal (1 reports)\n"
        )),
        "{listed}"
    );

    let out = admin_ok(
        &config,
        &relay.db,
        &["ban-event", &id, "--reason", "illegal"],
    );
    assert_eq!(
        out,
        format!("banned event {id} (the stored event was deleted)\n")
    );
    // Gone from the database at once, its tag rows with it.
    assert_eq!(relay.stored().rows_for(target.id.as_bytes()), 0);
    assert!(
        client
            .query("gone", vec![json!({"#t": ["cli-ban"]})])
            .await
            .is_empty()
    );
    // The running relay's lists take the ban (NIP-86 reads them)…
    let started = Instant::now();
    loop {
        let banned = ok(&relay, &admin, "listbannedevents", json!([])).await;
        if entries(&banned, "id") == vec![(id.clone(), "illegal".to_owned())] {
            break;
        }
        assert!(
            started.elapsed() < PICKED_UP,
            "the relay did not see the CLI's ban: {banned}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …and refuse the event from then on; its report was moderated.
    let again = client.publish(&target).await;
    assert!(is_blocked(&again), "{again:?}");
    assert_eq!(relay.stored().rows_for(target.id.as_bytes()), 0);
    assert_eq!(
        ok(&relay, &admin, "listeventsneedingmoderation", json!([])).await,
        json!([])
    );
    let listed = admin_ok(&config, &relay.db, &["list"]);
    assert!(
        listed.contains("events needing moderation: none")
            && listed.contains(&format!("banned events:\n  {id}  illegal\n")),
        "{listed}"
    );
}

#[tokio::test]
async fn the_cli_sets_lists_before_the_first_start_but_cannot_lift_relay_toml_entries() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.sqlite");
    let seeded = Keys::generate();
    let banned = Keys::generate();
    let config = write_config(
        dir.path(),
        &format!(
            "[access]\ndenied_pubkeys = [\"{}\"]\n",
            seeded.public_key().to_hex()
        ),
    );
    // No relay has run on this database yet: the CLI creates it.
    admin_ok(
        &config,
        &db,
        &[
            "ban-pubkey",
            &banned.public_key().to_hex(),
            "--reason",
            "spam",
        ],
    );
    admin_ok(&config, &db, &["set-name", "Named from the shell"]);
    // relay.toml's ban would come back at once: the CLI refuses to lift it.
    let out = admin_cli(
        &config,
        &db,
        &["unban-pubkey", &seeded.public_key().to_hex()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("access.denied_pubkeys"),
        "{out:?}"
    );
    let listed = admin_ok(&config, &db, &["list"]);
    assert!(
        listed.contains(&format!(
            "  {}  listed in relay.toml\n",
            seeded.public_key().to_hex()
        )) && listed.contains(&format!("  {}  spam\n", banned.public_key().to_hex())),
        "{listed}"
    );
    assert!(
        listed.contains("relay name: \"Named from the shell\""),
        "{listed}"
    );

    let relay = RelayProcess::spawn(&config, &db).await;
    let mut client = Client::connect(&relay.url).await;
    for keys in [&seeded, &banned] {
        let answer = client.publish(&note(keys, "hi")).await;
        assert!(is_blocked(&answer), "{answer:?}");
    }
    assert!(client.publish(&note(&Keys::generate(), "hi")).await.0);
    assert_eq!(get_nip11(relay.addr).await["name"], "Named from the shell");
}

#[test]
fn the_cli_names_a_postgresql_database_it_cannot_reach() {
    // A backend the test chose itself: the same on both targets.
    let dir = tempfile::tempdir().unwrap();
    let server = format!("127.0.0.1:{}/relay", free_port());
    let config = write_config(
        dir.path(),
        &format!(
            "[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://nostr:secret@{server}\"\n"
        ),
    );
    let out = admin_cli(&config, &dir.path().join("relay.sqlite"), &["list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // Named without its password.
    assert!(
        stderr.contains(&format!(
            "cannot open the PostgreSQL database postgres://{server}"
        )) && !stderr.contains("secret"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}
