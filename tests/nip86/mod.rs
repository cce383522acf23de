//! NIP-86 management calls (authorized by NIP-98) over raw HTTP, clients
//! from other loopback addresses, and the `nostr-relayd admin` CLI run from
//! "the host's shell", shared by management.rs (run on both backends) and
//! management_sqlite.rs (what only a SQLite file does).

// Each suite uses its own part of these.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use nostr::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;

use super::common::*;

/// One POST on `/` over HTTP/1.1: (status, body).
pub async fn post(
    addr: SocketAddr,
    content_type: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(auth) = auth {
        request.push_str(&format!("Authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream).await
}

pub async fn read_response(mut stream: TcpStream) -> (u16, String) {
    let mut response = Vec::new();
    tokio::time::timeout(ANSWER, stream.read_to_end(&mut response))
        .await
        .expect("the relay answered in time")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    (status, body.to_owned())
}

/// A signed kind-27235 event for a request, base64'd into a header value.
/// A random `nonce` tag keeps two identical calls in one second apart (the
/// relay refuses a reused auth event).
pub fn auth_header(keys: &Keys, url: &str, method: &str, body: &str, created_at: u64) -> String {
    let payload = hex::encode(Sha256::digest(body.as_bytes()));
    let nonce = Keys::generate().public_key().to_hex();
    let event = event(
        keys,
        27235,
        "",
        &[
            &["u", url],
            &["method", method],
            &["payload", &payload],
            &["nonce", &nonce],
        ],
        created_at,
    );
    nostr_header(&event)
}

pub fn nostr_header(event: &Event) -> String {
    format!(
        "Nostr {}",
        base64::engine::general_purpose::STANDARD.encode(event.as_json())
    )
}

pub fn rpc_body(method: &str, params: Value) -> String {
    json!({"method": method, "params": params}).to_string()
}

/// A NIP-86 call signed by `keys`: (status, response JSON).
pub async fn call(relay: &TestRelay, keys: &Keys, method: &str, params: Value) -> (u16, Value) {
    let body = rpc_body(method, params);
    let auth = auth_header(keys, &relay.url, "POST", &body, now());
    let (status, text) = post(relay.addr, "application/nostr+json+rpc", Some(&auth), &body).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, value)
}

/// A call that must succeed; its `result`.
pub async fn ok(relay: &TestRelay, keys: &Keys, method: &str, params: Value) -> Value {
    let (status, answer) = call(relay, keys, method, params).await;
    assert_eq!(status, 200, "{method}: {answer}");
    assert!(answer["error"].is_null(), "{method}: {answer}");
    answer["result"].clone()
}

pub async fn relay_with_admin(
    admin: &Keys,
    adjust: impl FnOnce(&mut nostr_relayd::Config),
) -> TestRelay {
    let admin = admin.public_key().to_hex();
    TestRelay::start_with(|c| {
        c.management.admins = vec![admin];
        adjust(c);
    })
    .await
}

pub fn is_blocked((accepted, reason): &(bool, String)) -> bool {
    !accepted && reason.starts_with("blocked:")
}

/// A WebSocket client whose connection comes from `source` (any address in
/// 127.0.0.0/8 is loopback on Linux), so that one address can be blocked
/// while the test goes on using 127.0.0.1.
pub async fn client_from(source: &str, relay: &TestRelay) -> Result<Client, String> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket
        .connect(relay.addr)
        .await
        .map_err(|e| e.to_string())?;
    let handshake = tokio_tungstenite::client_async(&relay.url, MaybeTlsStream::Plain(stream));
    match tokio::time::timeout(ANSWER, handshake).await {
        Ok(Ok((ws, _))) => Ok(Client::from_ws(ws)),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// A relay.toml holding `text`, in `dir`, for the binary (the relay and
/// the CLI read the same file).
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("cli-relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `nostr-relayd --config <config> admin <args>` on the database `db`, on
/// this test binary's backend ([`relayd`]: on PostgreSQL, the database
/// standing for `db`, the one a relay started on `db` uses).
pub fn admin_cli(config: &Path, db: &Path, args: &[&str]) -> std::process::Output {
    relayd(config, db)
        .arg("admin")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run nostr-relayd admin")
}

/// [`admin_cli`] that must succeed, with no warning on its way (opening
/// and closing the database included): its standard output.
pub fn admin_ok(config: &Path, db: &Path, args: &[&str]) -> String {
    let out = admin_cli(config, db, args);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "admin {args:?}: {out:?}"
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
