//! Rate limits: each limit refuses the address (or author, or connection)
//! that exceeds it with `rate-limited:`, and only that one. Tests connect
//! from loopback, a trusted proxy by default, and name the client address
//! in `X-Forwarded-For`, so several "addresses" share one machine.

mod common;

use common::*;
use nostr::prelude::*;
use nostr_relayd::Config;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A relay whose limits apply to everyone (nobody exempt).
async fn limited(adjust: impl FnOnce(&mut Config)) -> TestRelay {
    TestRelay::start_with(|c| {
        c.rate_limit.exempt = Vec::new();
        adjust(c);
    })
    .await
}

/// Connects as `address` (told to the relay in X-Forwarded-For).
async fn connect_as(relay: &TestRelay, address: &str) -> Result<Client, WsError> {
    let mut request = relay.url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", address.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(Client::from_ws(ws))
}

fn status_of(result: Result<Client, WsError>) -> u16 {
    match result {
        Ok(_) => 101,
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn events_per_address() {
    let relay = limited(|c| c.rate_limit.events_per_minute = 5).await;
    let keys = Keys::generate();
    let mut a = connect_as(&relay, "203.0.113.1").await.unwrap();
    for n in 0..5 {
        assert_eq!(
            a.publish(&note(&keys, &format!("a{n}"))).await,
            (true, String::new())
        );
    }
    let (accepted, reason) = a.publish(&note(&keys, "one too many")).await;
    assert!(!accepted && reason.starts_with("rate-limited:"), "{reason}");
    // Another address, even on the same key, is not limited.
    let mut b = connect_as(&relay, "203.0.113.2").await.unwrap();
    assert_eq!(b.publish(&note(&keys, "b")).await, (true, String::new()));
    // A second connection from the first address shares its allowance.
    let mut a2 = connect_as(&relay, "203.0.113.1").await.unwrap();
    let (accepted, _) = a2.publish(&note(&keys, "a again")).await;
    assert!(!accepted);
    // The connection goes on: reading is limited separately.
    assert_eq!(
        a.query("q", vec![json!({"authors": [keys.public_key().to_hex()]})])
            .await
            .len(),
        6
    );
}

#[tokio::test]
async fn ipv6_is_limited_by_its_64() {
    let relay = limited(|c| c.rate_limit.events_per_minute = 2).await;
    let keys = Keys::generate();
    let mut one = connect_as(&relay, "2001:db8:1:2::1").await.unwrap();
    let mut same_64 = connect_as(&relay, "2001:db8:1:2::ffff").await.unwrap();
    let mut other_64 = connect_as(&relay, "2001:db8:1:3::1").await.unwrap();
    assert!(one.publish(&note(&keys, "1")).await.0);
    assert!(same_64.publish(&note(&keys, "2")).await.0);
    assert!(!one.publish(&note(&keys, "3")).await.0);
    assert!(!same_64.publish(&note(&keys, "4")).await.0);
    assert!(other_64.publish(&note(&keys, "5")).await.0);
}

#[tokio::test]
async fn reqs_per_address() {
    let relay = limited(|c| c.rate_limit.reqs_per_minute = 3).await;
    let mut a = connect_as(&relay, "203.0.113.1").await.unwrap();
    for n in 0..3 {
        a.query(&format!("q{n}"), vec![json!({"kinds": [1]})]).await;
    }
    let reason = a.req_closed("q3", vec![json!({"kinds": [1]})]).await;
    assert!(reason.starts_with("rate-limited:"), "{reason}");
    let mut b = connect_as(&relay, "203.0.113.2").await.unwrap();
    b.query("q", vec![json!({"kinds": [1]})]).await;
}

#[tokio::test]
async fn new_connections_per_address() {
    let relay = limited(|c| c.rate_limit.connections_per_minute = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_as(&relay, "203.0.113.1").await.unwrap());
    }
    assert_eq!(status_of(connect_as(&relay, "203.0.113.1").await), 429);
    assert_eq!(status_of(connect_as(&relay, "203.0.113.2").await), 101);
}

#[tokio::test]
async fn open_connections_per_address() {
    let relay = limited(|c| c.rate_limit.max_connections_per_address = 2).await;
    let first = connect_as(&relay, "203.0.113.1").await.unwrap();
    let mut second = connect_as(&relay, "203.0.113.1").await.unwrap();
    assert_eq!(status_of(connect_as(&relay, "203.0.113.1").await), 429);
    assert_eq!(status_of(connect_as(&relay, "203.0.113.2").await), 101);
    drop(first);
    let mut admitted = false;
    for _ in 0..50 {
        if connect_as(&relay, "203.0.113.1").await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(admitted, "a closed connection frees its place");
    second.assert_healthy().await;
}

#[tokio::test]
async fn events_per_authenticated_author() {
    let relay = limited(|c| {
        c.rate_limit.events_per_minute = 1000;
        c.rate_limit.events_per_minute_per_pubkey = 3;
    })
    .await;
    let (alice, bob) = (Keys::generate(), Keys::generate());
    let mut c = connect_as(&relay, "203.0.113.1").await.unwrap();
    assert!(c.authenticate(&alice, &relay.url).await.0);
    assert!(c.authenticate(&bob, &relay.url).await.0);
    for n in 0..3 {
        assert!(c.publish(&note(&alice, &format!("{n}"))).await.0);
    }
    let (accepted, reason) = c.publish(&note(&alice, "more")).await;
    assert!(!accepted && reason.starts_with("rate-limited:"), "{reason}");
    assert!(c.publish(&note(&bob, "bob is fine")).await.0);
}

#[tokio::test]
async fn concurrent_queries_per_connection() {
    let relay = limited(|c| c.rate_limit.max_concurrent_queries = 1).await;
    let keys = Keys::generate();
    let mut c = connect_as(&relay, "203.0.113.1").await.unwrap();
    for n in 0..300 {
        c.send_json(json!(["EVENT", to_value(&note(&keys, &format!("{n}")))]))
            .await;
    }
    for _ in 0..300 {
        assert_eq!(c.recv().await[0], "OK");
    }
    // Ten REQs in one burst: the first is still loading when the rest are read.
    let burst: Vec<Message> = (0..10)
        .map(|n| Message::text(json!(["REQ", format!("b{n}"), {"limit": 300}]).to_string()))
        .collect();
    for message in burst {
        futures_util::SinkExt::feed(&mut c.ws, message)
            .await
            .unwrap();
    }
    futures_util::SinkExt::flush(&mut c.ws).await.unwrap();
    let (mut eose, mut refused) = (0, 0);
    while eose + refused < 10 {
        let message = c.recv().await;
        match message[0].as_str() {
            Some("EOSE") => eose += 1,
            Some("CLOSED") => {
                assert!(message[2].as_str().unwrap().starts_with("rate-limited:"));
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(
        eose >= 1 && refused >= 1,
        "{eose} answered, {refused} refused"
    );
}

#[tokio::test]
async fn a_client_that_keeps_hammering_is_closed_not_banned() {
    let relay = limited(|c| {
        c.rate_limit.events_per_minute = 1;
        c.rate_limit.max_refusals_per_minute = 5;
    })
    .await;
    let keys = Keys::generate();
    let mut c = connect_as(&relay, "203.0.113.1").await.unwrap();
    for n in 0..20 {
        c.send_json(json!(["EVENT", to_value(&note(&keys, &format!("{n}")))]))
            .await;
    }
    let mut refusals = 0;
    let close = loop {
        match c.recv_message().await {
            Some(Message::Text(text)) => {
                let message: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                if message[2] == false {
                    refusals += 1;
                }
            }
            Some(Message::Close(frame)) => break frame,
            None => panic!("closed without a close frame"),
            Some(_) => {}
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Policy));
    assert_eq!(refusals, 5, "told five times, closed at the sixth");
    // Not banned: it may connect again (and read).
    let mut again = connect_as(&relay, "203.0.113.1").await.unwrap();
    assert_eq!(again.query("q", vec![json!({"kinds": [1]})]).await.len(), 1);
}

#[tokio::test]
async fn loopback_is_exempt_by_default_and_untrusted_forwarding_is_ignored() {
    // Defaults: 127.0.0.1 exempt and trusted; its own traffic is never limited.
    let relay = TestRelay::start_with(|c| c.rate_limit.events_per_minute = 2).await;
    let keys = Keys::generate();
    let mut local = relay.client().await;
    for n in 0..10 {
        assert!(local.publish(&note(&keys, &format!("{n}"))).await.0);
    }
    // With no trusted proxy, X-Forwarded-For is ignored: every connection is
    // 127.0.0.1, limited as one address when nothing is exempt.
    let relay = limited(|c| {
        c.rate_limit.events_per_minute = 2;
        c.network.trusted_proxies = Vec::new();
    })
    .await;
    let mut a = connect_as(&relay, "203.0.113.1").await.unwrap();
    let mut b = connect_as(&relay, "203.0.113.2").await.unwrap();
    assert!(a.publish(&note(&keys, "1")).await.0);
    assert!(b.publish(&note(&keys, "2")).await.0);
    assert!(!a.publish(&note(&keys, "3")).await.0);
    assert!(!b.publish(&note(&keys, "4")).await.0);
}

#[tokio::test]
async fn a_blocked_client_behind_a_trusted_proxy_is_refused_at_upgrade() {
    let relay =
        TestRelay::start_with(|c| c.access.denied_ips = vec!["203.0.113.0/24".into()]).await;
    assert_eq!(status_of(connect_as(&relay, "203.0.113.9").await), 403);
    assert_eq!(status_of(connect_as(&relay, "198.51.100.9").await), 101);
}

#[tokio::test]
async fn a_refusal_for_open_connections_does_not_use_the_per_minute_allowance() {
    let relay = limited(|c| {
        c.rate_limit.connections_per_minute = 3;
        c.rate_limit.max_connections_per_address = 1;
    })
    .await;
    let first = connect_as(&relay, "203.0.113.1").await.unwrap();
    for _ in 0..2 {
        assert_eq!(status_of(connect_as(&relay, "203.0.113.1").await), 429);
    }
    drop(first);
    for _ in 0..2 {
        let mut admitted = None;
        for _ in 0..50 {
            if let Ok(client) = connect_as(&relay, "203.0.113.1").await {
                admitted = Some(client);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(admitted.expect("the per-minute allowance was not spent by refusals"));
    }
}
