//! NIP-11 and plain HTTP on the relay's port.

mod common;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP/1.1 exchange: (status, lower-cased headers, body).
async fn http(
    relay: &TestRelay,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: relay.example.com\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(ANSWER, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn nip11_document_with_cors_and_every_enforced_limit() {
    let relay = TestRelay::start_with(|c| {
        c.info.name = "test relay".into();
        c.info.icon = "https://example.com/icon.png".into();
        c.info.self_pubkey = "ab".repeat(32);
        c.limits.created_at_lower_limit = 3600;
    })
    .await;
    let (status, headers, body) =
        http(&relay, "GET", "/", &[("Accept", "application/nostr+json")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/nostr+json")
    );
    // NIP-11: "Relays MUST accept CORS requests by sending Access-Control-Allow-Origin,
    // Access-Control-Allow-Headers, and Access-Control-Allow-Methods headers."
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    assert!(header(&headers, "access-control-allow-headers").is_some());
    assert!(
        header(&headers, "access-control-allow-methods")
            .unwrap()
            .contains("GET")
    );
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["name"], "test relay");
    assert_eq!(doc["icon"], "https://example.com/icon.png");
    assert_eq!(doc["self"], "ab".repeat(32));
    assert!(doc.get("banner").is_none(), "unset fields are left out");
    assert!(doc["software"].as_str().unwrap().starts_with("https://"));
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    for nip in [1, 9, 11, 40] {
        assert!(
            doc["supported_nips"]
                .as_array()
                .unwrap()
                .contains(&Value::from(nip))
        );
    }
    let l = &doc["limitation"];
    let limits = &relay.config.limits;
    assert_eq!(l["max_message_length"], limits.max_message_length);
    assert_eq!(l["max_subscriptions"], limits.max_subscriptions);
    assert_eq!(l["max_limit"], limits.max_limit);
    assert_eq!(l["default_limit"], limits.default_limit);
    assert_eq!(l["max_subid_length"], limits.max_subid_length);
    assert_eq!(l["max_event_tags"], limits.max_event_tags);
    assert_eq!(l["max_content_length"], limits.max_content_length);
    assert_eq!(l["created_at_lower_limit"], 3600);
    assert_eq!(l["created_at_upper_limit"], 900);
    assert_eq!(l["auth_required"], false);
}

#[tokio::test]
async fn created_at_lower_limit_is_not_advertised_when_unset() {
    let relay = TestRelay::start().await;
    let (_, _, body) = http(&relay, "GET", "/", &[("Accept", "application/nostr+json")]).await;
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(doc["limitation"].get("created_at_lower_limit").is_none());
    assert_eq!(doc["limitation"]["created_at_upper_limit"], 900);
}

#[tokio::test]
async fn cors_preflight_is_answered() {
    let relay = TestRelay::start().await;
    let (status, headers, _) = http(
        &relay,
        "OPTIONS",
        "/",
        &[
            ("Origin", "https://client.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    assert!(header(&headers, "access-control-allow-methods").is_some());
    assert!(header(&headers, "access-control-allow-headers").is_some());
}

#[tokio::test]
async fn a_browser_gets_a_human_readable_page() {
    let relay = TestRelay::start().await;
    let (status, headers, body) = http(&relay, "GET", "/", &[("Accept", "text/html")]).await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(body.contains("Nostr"));
    assert!(body.contains("wss://relay.example.com/"));
}

#[tokio::test]
async fn other_paths_are_not_found() {
    let relay = TestRelay::start().await;
    let (status, _, _) = http(&relay, "GET", "/favicon.ico", &[]).await;
    assert_eq!(status, 404);
    let (status, _, _) = http(&relay, "GET", "/x", &[("Accept", "application/nostr+json")]).await;
    assert_eq!(status, 404);
    let upgrade = tokio_tungstenite::connect_async(format!("ws://{}/other", relay.addr)).await;
    assert!(upgrade.is_err(), "websocket is only on /");
}

#[tokio::test]
async fn max_connections_is_enforced_with_503() {
    let relay = TestRelay::start_with(|c| c.network.max_connections = 2).await;
    let mut first = relay.client().await;
    let _second = relay.client().await;
    let refused = tokio_tungstenite::connect_async(relay.url.as_str()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    first.assert_healthy().await;
    drop(first);
    // The freed slot is usable again.
    let mut retry = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(relay.url.as_str()).await {
            retry = Some(Client::from_ws(ws));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    retry
        .expect("a slot frees up when a connection closes")
        .assert_healthy()
        .await;
}

#[tokio::test]
async fn an_idle_keep_alive_http_client_does_not_hold_up_shutdown() {
    let mut relay = TestRelay::start().await;
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/nostr+json\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(ANSWER, stream.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    // The connection stays open (keep-alive). Shutdown closes it rather than
    // waiting out its 10-second grace period for open connections.
    tokio::time::timeout(std::time::Duration::from_secs(8), relay.stop())
        .await
        .expect("shutdown finished without waiting for the idle client");
    let read = tokio::time::timeout(ANSWER, stream.read(&mut buffer))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(read, 0, "the idle connection was closed");
}
