//! Soak: mixed load on the real binary (publishers, queriers, subscription
//! and connection churn, clients that disconnect mid-query, slow readers
//! that never read), then proof that nothing leaks: the relay's counters,
//! its open file descriptors and its tasks return to their baseline, and its
//! RSS stays bounded. `SOAK_SECONDS` sets the load phase (CI: 60 s; by hand:
//! `SOAK_SECONDS=600 cargo test --release --test soak -- --nocapture`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use nostr_relayd::corpus::Corpus;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::connect_async_with_config;
use tokio_tungstenite::tungstenite::Message;

fn shipped_config() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/relay.toml"))
}

/// One sample of the relay process: its counters, fds and RSS.
#[derive(Debug, Clone)]
struct Sample {
    counters: Value,
    fds: usize,
    rss_kib: u64,
}

async fn sample(relay: &RelayProcess) -> Sample {
    let mut stream = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    stream
        .write_all(b"GET /debug/counters HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("{}");
    let pid = relay.child.id();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Sample {
        counters: serde_json::from_str(body).unwrap_or(Value::Null),
        fds,
        rss_kib,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Option<Ws> {
    connect_async_with_config(url, None, true)
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// Reads until `["EOSE", sub]` (or the end), bounded in time.
async fn until_eose(ws: &mut Ws, sub: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(text) = message
            && let Ok(value) = serde_json::from_str::<Value>(text.as_str())
            && value[0] == "EOSE"
            && value[1] == sub
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaks_under_mixed_load() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::spawn(&shipped_config(), &dir.path().join("soak.sqlite")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = sample(&relay).await;
    let url = relay.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicUsize::new(0));
    let queried = Arc::new(AtomicUsize::new(0));
    let churned = Arc::new(AtomicUsize::new(0));
    let mut corpus = Corpus::new(5, 200, now() as i64);
    let events: Arc<Vec<String>> = Arc::new(
        corpus
            .generate(20_000, 2)
            .into_iter()
            .map(|e| e.json)
            .collect(),
    );
    let targets = corpus.query_targets();
    let mut tasks = Vec::new();

    // Publishers: 4 connections, 8 in flight each, round the corpus.
    for p in 0..4 {
        let (url, stop, events, published) =
            (url.clone(), stop.clone(), events.clone(), published.clone());
        tasks.push(tokio::spawn(async move {
            let Some(mut ws) = connect(&url).await else {
                return;
            };
            let mut next = p;
            let mut in_flight = 0;
            while !stop.load(Ordering::Relaxed) {
                while in_flight < 8 {
                    let frame = format!(r#"["EVENT",{}]"#, events[next % events.len()]);
                    next += 4;
                    if ws.send(Message::text(frame)).await.is_err() {
                        return;
                    }
                    in_flight += 1;
                }
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) if text.as_str().starts_with("[\"OK\"") => {
                        in_flight -= 1;
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => return,
                }
            }
        }));
    }
    // Queriers: REQ → EOSE → CLOSE, several shapes.
    for q in 0..3 {
        let (url, stop, queried) = (url.clone(), stop.clone(), queried.clone());
        let follows: Vec<String> = targets.follows.iter().map(hex::encode).collect();
        let notes: Vec<String> = targets.note_ids.iter().take(200).map(hex::encode).collect();
        tasks.push(tokio::spawn(async move {
            let Some(mut ws) = connect(&url).await else {
                return;
            };
            let mut n = q;
            while !stop.load(Ordering::Relaxed) {
                let filter = match n % 4 {
                    0 => json!({"authors": follows, "kinds": [1, 6], "limit": 50}),
                    1 => json!({"kinds": [1], "limit": 100}),
                    2 => json!({"#e": [notes[n % notes.len()]]}),
                    _ => json!({"ids": &notes[..20]}),
                };
                let sub = format!("q{n}");
                if ws
                    .send(Message::text(json!(["REQ", sub, filter]).to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                until_eose(&mut ws, &sub).await;
                let _ = ws
                    .send(Message::text(json!(["CLOSE", sub]).to_string()))
                    .await;
                queried.fetch_add(1, Ordering::Relaxed);
                n += 3;
            }
        }));
    }
    // Churn: connections that subscribe and leave, some mid-query.
    for c in 0..2 {
        let (url, stop, churned) = (url.clone(), stop.clone(), churned.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = c;
            while !stop.load(Ordering::Relaxed) {
                if let Some(mut ws) = connect(&url).await {
                    let _ = ws
                        .send(Message::text(r#"["REQ","live",{"kinds":[1,7]}]"#))
                        .await;
                    let _ = ws
                        .send(Message::text(r#"["REQ","feed",{"kinds":[1],"limit":500}]"#))
                        .await;
                    if n % 2 == 0 {
                        until_eose(&mut ws, "feed").await;
                        let _ = ws.send(Message::text(r#"["CLOSE","live"]"#)).await;
                        let _ = ws.close(None).await;
                    } // else: dropped mid-query, without a close frame
                    churned.fetch_add(1, Ordering::Relaxed);
                }
                n += 2;
            }
        }));
    }
    // Slow readers: subscribe to everything and never read.
    let mut slow = Vec::new();
    for _ in 0..3 {
        if let Some(mut ws) = connect(&url).await {
            let _ = ws.send(Message::text(r#"["REQ","all",{"limit":0}]"#)).await;
            slow.push(ws);
        }
    }

    let started = Instant::now();
    let mut curve = vec![(0u64, baseline.clone())];
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        curve.push((started.elapsed().as_secs(), sample(&relay).await));
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
    drop(slow);

    // Everything held for the load is released.
    let settle = Instant::now();
    let settled = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sample(&relay).await;
        let c = &now.counters;
        let idle = c["websockets"] == 0
            && c["subscriptions"] == 0
            && c["events_in_flight"] == 0
            && c["queries_in_flight"] == 0
            && c["queued_events"] == 0
            && c["queued_bytes"] == 0
            && c["http_connections"] == 1
            && c["tasks"].as_u64() <= baseline.counters["tasks"].as_u64().map(|t| t + 1)
            && now.fds <= baseline.fds + 1;
        if idle || settle.elapsed() > Duration::from_secs(15) {
            break now;
        }
    };
    curve.push((started.elapsed().as_secs(), settled.clone()));
    println!(
        "soak: {seconds} s, {} EVENT answered, {} REQ answered, {} connections churned",
        published.load(Ordering::Relaxed),
        queried.load(Ordering::Relaxed),
        churned.load(Ordering::Relaxed)
    );
    for (t, s) in &curve {
        println!(
            "  t={t:>4}s rss={:>7} KiB fds={:>4} {}",
            s.rss_kib, s.fds, s.counters
        );
    }
    assert!(published.load(Ordering::Relaxed) > 100, "the load ran");
    let c = &settled.counters;
    assert_eq!(c["websockets"], 0, "{c}");
    assert_eq!(c["subscriptions"], 0, "{c}");
    assert_eq!(c["events_in_flight"], 0, "{c}");
    assert_eq!(c["queries_in_flight"], 0, "{c}");
    assert_eq!(c["queued_events"], 0, "{c}");
    assert_eq!(c["queued_bytes"], 0, "{c}");
    assert!(
        c["tasks"].as_u64() <= baseline.counters["tasks"].as_u64().map(|t| t + 1),
        "tasks leak: {c} vs {}",
        baseline.counters
    );
    assert!(
        settled.fds <= baseline.fds + 1,
        "fds leak: {} vs {}",
        settled.fds,
        baseline.fds
    );
    let peak = curve.iter().map(|(_, s)| s.rss_kib).max().unwrap_or(0);
    assert!(
        settled.rss_kib <= baseline.rss_kib + 256 * 1024,
        "RSS did not come back down: {} KiB (peak {peak})",
        settled.rss_kib
    );
    let mut client = Client::connect(&relay.url).await;
    client.assert_healthy().await;
}
