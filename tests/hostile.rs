//! Hostile clients: each attack runs for a few seconds while a well-behaved
//! client publishes and queries in a loop. Every attack must be bounded by a
//! timeout or a limit, and the well-behaved client must see no failure; its
//! p99 publish→OK and REQ→EOSE latency is printed, and asserted only
//! against a 2 s sanity bound (speed is measured by relay-bench).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use nostr::prelude::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Publishes and queries until `stop`, returning every latency observed.
async fn well_behaved(url: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut client = Client::connect(&url).await;
    let keys = Keys::generate();
    let mut latencies = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let event = note(&keys, &format!("good {n}"));
        let started = Instant::now();
        assert_eq!(
            client.publish(&event).await,
            (true, String::new()),
            "publish failed under attack"
        );
        latencies.push(started.elapsed());
        let started = Instant::now();
        let found = client
            .query(&format!("g{n}"), vec![json!({"ids": [event.id.to_hex()]})])
            .await;
        assert_eq!(found.len(), 1, "query failed under attack");
        latencies.push(started.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

/// Runs `attack` for its duration beside the well-behaved client.
async fn under_attack<F, Fut>(name: &str, relay: &TestRelay, attack: F)
where
    F: FnOnce(String, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let good = tokio::spawn(well_behaved(relay.url.clone(), stop.clone()));
    attack(relay.url.clone(), relay.addr).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = good.await.expect("the well-behaved client saw no failure");
    latencies.sort();
    assert!(!latencies.is_empty());
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    println!(
        "{name}: well-behaved client {} requests, p99 {:?}",
        latencies.len(),
        p99
    );
    assert!(p99 < Duration::from_secs(2), "{name}: p99 {p99:?}");
    // And a new client is served after the attack.
    relay.client().await.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_upgrade_requests_time_out() {
    let relay = TestRelay::start().await;
    under_attack("slowloris", &relay, |_, addr| async move {
        let request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
        let mut sockets = Vec::new();
        for _ in 0..100 {
            sockets.push(TcpStream::connect(addr).await.unwrap());
        }
        for byte in request.iter().take(30) {
            for socket in &mut sockets {
                let _ = socket.write_all(&[*byte]).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_beyond_the_limit_gets_503() {
    let relay = TestRelay::start_with(|c| c.network.max_connections = 64).await;
    under_attack("connection flood", &relay, |url, _| async move {
        let mut refused = 0;
        let mut held = Vec::new();
        for _ in 0..150 {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((ws, _)) => held.push(ws),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status(), 503);
                    refused += 1;
                }
                Err(error) => panic!("unexpected {error}"),
            }
        }
        assert!(refused > 0, "the limit was reached");
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
}

/// Frames that break RFC 6455: the connection is closed (1002), others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_websocket_frames_close_only_their_connection() {
    let relay = TestRelay::start().await;
    under_attack("malformed frames", &relay, |_, addr| async move {
        let frames: Vec<Vec<u8>> = vec![
            vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], // unmasked client frame
            vec![0x83, 0x80, 1, 2, 3, 4],                   // reserved opcode 3
            vec![0x80, 0x81, 0, 0, 0, 0, b'x'],             // continuation with nothing to continue
            {
                let mut f = vec![0x89, 0xfe, 0x01, 0x00, 0, 0, 0, 0];
                f.extend([0u8; 256]);
                f
            }, // control frame over 125 bytes
            vec![0xf1, 0x80, 0, 0, 0, 0],                   // reserved bits set
            vec![0x09, 0x80, 0, 0, 0, 0],                   // fragmented control frame
            vec![0x01, 0x81, 0, 0, 0, 0, b'a', 0x01, 0x81, 0, 0, 0, 0, b'b'], // new message inside a fragmented one
        ];
        for frame in frames.iter().cycle().take(frames.len() * 300) {
            let mut stream = upgrade(addr).await;
            stream.write_all(frame).await.unwrap();
            let mut buffer = vec![0u8; 1024];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
            // Either a close frame or the socket simply ends; never a hang.
            assert!(read.is_ok(), "the relay answered or closed");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_absorbed() {
    let relay = TestRelay::start().await;
    under_attack("ping flood", &relay, |url, _| async move {
        let mut client = Client::connect(&url).await;
        for _ in 0..20_000 {
            if client
                .ws
                .send(Message::Ping(vec![7u8; 100].into()))
                .await
                .is_err()
            {
                break;
            }
        }
        // Never read the pongs: the relay's bounded write buffer ends it.
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
}

/// Subscribers that never read: the relay holds a bounded amount for each
/// (`send_queue_events` deliveries, a bounded write buffer) and drops each
/// one as soon as its live queue overflows, while others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_never_read_are_bounded_and_dropped() {
    const READERS: usize = 10;
    let relay = TestRelay::start_with(|c| c.network.send_queue_events = 256).await;
    let keys = Keys::generate();
    let big = "x".repeat(16 * 1024);
    let flood: Vec<String> = (0..3000)
        .map(|n| json!(["EVENT", to_value(&note(&keys, &format!("{n} {big}")))]).to_string())
        .collect();
    let addr = relay.addr;
    let peak = Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let seen = peak.clone();
    under_attack(
        "subscribers that never read",
        &relay,
        |url, addr| async move {
            let mut readers = Vec::new();
            for n in 0..READERS {
                // A small receive window: the relay's writes stall soon, as
                // they do for a phone that went out of coverage.
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_recv_buffer_size(4096).unwrap();
                let mut stream = upgrade_stream(socket.connect(addr).await.unwrap()).await;
                let req = format!(r#"["REQ","all{n}",{{"limit":0}}]"#);
                stream.write_all(&masked_text_frame(&req)).await.unwrap();
                readers.push(stream); // never read again
            }
            let mut publisher = Client::connect(&url).await;
            let mut in_flight = 0;
            for frame in &flood {
                publisher.send_text(frame.clone()).await;
                in_flight += 1;
                while in_flight >= 32 {
                    let _ = publisher.recv().await;
                    in_flight -= 1;
                }
                let counters = debug_counters(addr).await;
                let mut peak = seen.lock().unwrap();
                peak.0 = peak.0.max(counters["queued_bytes"].as_u64().unwrap());
                peak.1 = peak.1.max(counters["queued_events"].as_u64().unwrap());
            }
            while in_flight > 0 {
                let _ = publisher.recv().await;
                in_flight -= 1;
            }
            // Every reader is dropped while it still has not read: only the
            // publisher and the well-behaved client are left.
            let dropped = tokio::time::timeout(Duration::from_secs(10), async {
                while debug_counters(addr).await["websockets"].as_u64() > Some(2) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
            assert!(
                dropped.is_ok(),
                "the readers that never read were not dropped"
            );
            drop(readers);
        },
    )
    .await;
    let (bytes, events) = *peak.lock().unwrap();
    println!("peak queued: {bytes} bytes, {events} events");
    // Per reader: at most its mailbox, and in bytes what the kernel's
    // socket buffers take plus the writer's bounded buffer (1 MiB with
    // the default max_message_length) and one frame. The publisher and the
    // good client hold a little too.
    assert!(
        events <= (READERS as u64 + 2) * 256,
        "{events} events queued"
    );
    let kernel = tcp_buffer_max("tcp_wmem") + tcp_buffer_max("tcp_rmem");
    let per_reader = kernel + (1 << 20) + 20 * 1024;
    assert!(
        bytes <= (READERS as u64 + 2) * per_reader,
        "{bytes} bytes queued; bound {per_reader} per reader"
    );
    // Once the last connections have wound down, nothing is queued.
    let mut after = debug_counters(addr).await;
    for _ in 0..50 {
        if after["websockets"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = debug_counters(addr).await;
    }
    assert_eq!(after["websockets"], 0, "{after}");
    assert_eq!(after["queued_events"], 0, "{after}");
    assert_eq!(after["queued_bytes"], 0, "{after}");
}

/// The largest size Linux lets one TCP socket buffer grow to.
fn tcp_buffer_max(name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()
        .and_then(|v| v.split_whitespace().last()?.parse().ok())
        .unwrap_or(8 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_is_not_negotiated() {
    let relay = TestRelay::start().await;
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buffer = vec![0u8; 2048];
    let read = stream.read(&mut buffer).await.unwrap();
    let head = String::from_utf8_lossy(&buffer[..read]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        !head.contains("sec-websocket-extensions"),
        "no extension is accepted: {head}"
    );
}
