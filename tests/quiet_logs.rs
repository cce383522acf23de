//! Hostile clients are logged once, never once per frame: an attack that
//! sends thousands of bad frames must not also fill the operator's disk
//! with log lines. The real binary runs at the default `info` level with
//! its stderr captured, every attack of `tests/hostile.rs` is made against
//! it at once, and the log lines it wrote meanwhile are accounted for one
//! by one: exactly one "connection closed" line per WebSocket that was
//! opened, one line per subscriber dropped for not reading, one for the
//! connection flood, and nothing else.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use nostr::prelude::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const NEVER_READERS: usize = 3;
const MAX_CONNECTIONS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_logged_once_not_per_frame() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/relay.toml"))
        .expect("the shipped relay.toml");
    let mut config: toml::Table = toml::from_str(&shipped).unwrap();
    let network = config["network"].as_table_mut().unwrap();
    network.insert("max_connections".into(), (MAX_CONNECTIONS as i64).into());
    network.insert("send_queue_events".into(), 64.into());
    let config_path = dir.path().join("relay.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let relay = RelayProcess::spawn_logging(
        &config_path,
        &dir.path().join("relay.sqlite"),
        "info",
        Stdio::from(log),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let startup_lines = std::fs::read_to_string(&log_path).unwrap().lines().count();
    let addr = relay.addr;
    let url = relay.url.clone();

    // Slowloris: half-open upgrade requests, held past the header timeout.
    let mut slowloris = Vec::new();
    for _ in 0..10 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slowloris.push(socket);
    }
    let slowloris_started = tokio::time::Instant::now();

    // Bad JSON, bad events and bad filters: 3,000 frames on one connection,
    // each answered.
    let keys = Keys::generate();
    let mut client = Client::connect(&url).await;
    for n in 0..1000 {
        client.send_text(format!("[\"EVENT\",{{\"id\":{n}")).await;
        let mut forged = to_value(&note(&keys, "forged"));
        forged["content"] = json!(format!("changed {n}"));
        client.send_json(json!(["EVENT", forged])).await;
        client
            .send_json(json!(["REQ", format!("s{n}"), {"kinds": "all"}]))
            .await;
    }
    for _ in 0..3000 {
        let _ = client.recv().await;
    }

    // A ping flood whose pongs are never read.
    let mut pinger = Client::connect(&url).await;
    for _ in 0..5_000 {
        if pinger
            .ws
            .send(Message::Ping(vec![7u8; 100].into()))
            .await
            .is_err()
        {
            break;
        }
    }

    // Frames that break RFC 6455, each on its own connection (closed 1002).
    for _ in 0..20 {
        let mut stream = upgrade(addr).await;
        stream
            .write_all(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o'])
            .await
            .unwrap();
    }

    // Subscribers that never read, fed until they overflow.
    let mut readers = Vec::new();
    for n in 0..NEVER_READERS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = upgrade_stream(socket.connect(addr).await.unwrap()).await;
        let req = format!(r#"["REQ","all{n}",{{"limit":0}}]"#);
        stream.write_all(&masked_text_frame(&req)).await.unwrap();
        readers.push(stream);
    }
    let big = "x".repeat(16 * 1024);
    for n in 0..600 {
        let (accepted, reason) = client.publish(&note(&keys, &format!("{n} {big}"))).await;
        assert!(accepted, "{reason}");
    }

    // A connection flood: twice the limit.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..2 * MAX_CONNECTIONS {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => held.push(ws),
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 0, "the flood reached max_connections");
    let flood_accepted = held.len();
    drop(held);

    // Let the header timeout (10 s) end the slowloris sockets.
    tokio::time::sleep(Duration::from_secs(11).saturating_sub(slowloris_started.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(readers);
    drop(slowloris);

    client.assert_healthy().await;
    drop(client);
    drop(pinger);

    // Every WebSocket that completed its handshake: the bad-frame client,
    // the pinger, the RFC 6455 breakers, the non-readers and the flood's.
    let websockets = 1 + 1 + 20 + NEVER_READERS + flood_accepted;
    let closed = |log: &str| log.lines().filter(|l| is_close_line(l)).count();
    let deadline = tokio::time::Instant::now() + ANSWER;
    while closed(&std::fs::read_to_string(&log_path).unwrap()) < websockets
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a line too many to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let log = std::fs::read_to_string(&log_path).unwrap();
    let attack_lines: Vec<&str> = log.lines().skip(startup_lines).collect();
    println!(
        "{} log lines for ~10,000 hostile frames and {} connections:",
        attack_lines.len(),
        10 + websockets + 2 * MAX_CONNECTIONS - flood_accepted
    );
    for line in &attack_lines {
        println!("  {line}");
    }
    let (close_lines, other_lines): (Vec<&str>, Vec<&str>) =
        attack_lines.iter().partition(|l| is_close_line(l));
    assert_eq!(
        close_lines.len(),
        websockets,
        "one line per WebSocket connection, at its close, and none per frame"
    );
    for line in &close_lines {
        assert!(
            line.contains("ip=127.0.0.1")
                && line.contains("duration_ms=")
                && line.contains("close="),
            "a close line names the client, the duration and why: {line}"
        );
    }
    assert_eq!(
        close_lines
            .iter()
            .filter(|l| l.contains(" events=1601 accepted=601 reqs=1 "))
            .count(),
        1,
        "the publishing client's line counts its EVENTs (1,000 forged, 600 notes \
         and assert_healthy's), the 601 accepted and its one valid REQ"
    );
    // Besides those: one line per dropped reader, one for the connection
    // flood; the bad frames, pings, protocol errors and slowloris sockets
    // log nothing at `info` (they are answered, or counted at `debug`).
    assert!(
        other_lines.len() <= NEVER_READERS + 1,
        "the log grew per frame or per connection: {other_lines:#?}"
    );
    assert_eq!(
        other_lines
            .iter()
            .filter(|l| l.contains("max_connections"))
            .count(),
        1,
        "the connection flood is logged once"
    );
}

/// The one line a WebSocket connection writes, when it closes.
fn is_close_line(line: &str) -> bool {
    line.contains("nostr_relayd::connection") && line.contains("connection closed")
}
