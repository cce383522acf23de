//! The relay as a process: durability across SIGKILL, graceful SIGTERM,
//! keep-alive pings, and the command line.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use nostr::prelude::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn shipped_config() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/relay.toml"))
}

/// "Nothing acknowledged is ever lost": every event that got `OK true` is
/// there after the process is killed with SIGKILL and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("durable.sqlite");
    let mut relay = RelayProcess::spawn(&shipped_config(), &db).await;
    let keys = Keys::generate();
    let base = now() - 2000;
    let events: Vec<Event> = (0..1000)
        .map(|i| event(&keys, 1, &format!("durable {i}"), &[], base + i))
        .collect();
    // Four connections, each pipelining 250 events, then collecting every OK.
    let mut tasks = Vec::new();
    for chunk in events.chunks(250) {
        let chunk = chunk.to_vec();
        let url = relay.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            for event in &chunk {
                client
                    .send_text(format!(r#"["EVENT",{}]"#, event.as_json()))
                    .await;
            }
            // OKs may come back in any order: collect them all.
            let mut pending: std::collections::HashSet<String> =
                chunk.iter().map(|e| e.id.to_hex()).collect();
            while !pending.is_empty() {
                let ok = client.recv().await;
                assert_eq!(ok[0], "OK");
                assert_eq!(ok[2], true, "{ok}");
                assert!(pending.remove(ok[1].as_str().unwrap()), "one OK per event");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    relay.kill();
    let relay = RelayProcess::spawn(&shipped_config(), &db).await;
    let mut client = Client::connect(&relay.url).await;
    let ids: Vec<String> = events.iter().map(|e| e.id.to_hex()).collect();
    let mut found = Vec::new();
    for (n, chunk) in ids.chunks(500).enumerate() {
        found.extend(
            client
                .req(
                    &format!("check{n}"),
                    vec![json!({"ids": chunk, "limit": 500})],
                )
                .await,
        );
    }
    assert_eq!(found.len(), 1000, "every acknowledged event is stored");
}

#[tokio::test]
async fn sigterm_closes_connections_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::spawn(&shipped_config(), &dir.path().join("term.sqlite")).await;
    let mut client = Client::connect(&relay.url).await;
    client.assert_healthy().await;
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(relay.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    match client.recv_message().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close frame with 1001, got {other:?}"),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = relay.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "relay did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed() {
    let relay = TestRelay::start_with(|c| c.network.ping_interval_seconds = 1).await;
    let mut silent = relay.client().await;
    let mut lively = relay.client().await;
    // `silent` does not read for 3.5 s, so it never answers the relay's pings.
    // `lively` reads all along; tungstenite answers each ping with a pong.
    let lively_task = tokio::spawn(async move {
        lively.expect_silence(Duration::from_millis(3500)).await;
        lively.assert_healthy().await;
    });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut saw_close = false;
    while let Ok(Some(frame)) = tokio::time::timeout(ANSWER, silent.ws.next()).await {
        match frame {
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| f.code), Some(CloseCode::Policy));
                saw_close = true;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert!(
        saw_close,
        "the relay closed the silent peer with a close frame"
    );
    lively_task.await.unwrap();
}

#[test]
fn a_missing_config_file_is_an_error_that_names_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_nostr-relayd"))
        .args(["--config", "/nonexistent/relay.toml", "serve"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "logs go to stderr");
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/relay.toml"));
}

#[test]
fn config_is_a_global_option() {
    for args in [
        ["--config", "/nonexistent/x.toml", "serve"],
        ["serve", "--config", "/nonexistent/x.toml"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_nostr-relayd"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("/nonexistent/x.toml"),
            "{args:?}"
        );
    }
}

/// Starts the relay binary under a shell `ulimit` (`limit`, e.g. "-n 48"),
/// with stderr captured, and waits until it accepts connections.
async fn spawn_with_ulimit(
    limit: &str,
    db: &std::path::Path,
) -> (std::process::Child, std::net::SocketAddr) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit {limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_nostr-relayd"))
        .arg("--config")
        .arg(shipped_config())
        .env("NOSTR_RELAYD_LISTEN", addr.to_string())
        .env("NOSTR_RELAYD_DB", db)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr)
}

/// When `accept` fails for lack of file descriptors (EMFILE), the relay backs
/// off instead of spinning, and serves again once descriptors are free.
#[tokio::test]
async fn accept_backs_off_when_file_descriptors_run_out() {
    let dir = tempfile::tempdir().unwrap();
    // `ulimit -n` in sh sets the hard limit too, so the relay cannot raise it.
    let (mut child, addr) = spawn_with_ulimit("-n 48", &dir.path().join("fd.sqlite")).await;
    // Far more connections than descriptors: accepts start failing.
    let mut hogs = Vec::new();
    for _ in 0..80 {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            hogs.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(hogs);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let url = format!("ws://{addr}/");
    let mut client = Client::connect(&url).await;
    client.assert_healthy().await;
    drop(client);
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    let backoffs = log.matches("accept failed; backing off").count();
    assert!(backoffs >= 1, "EMFILE was reached:\n{log}");
    // Backing off doubles from 10 ms to 1 s: a few dozen lines over ~3.5 s at
    // most. A spinning accept loop would log thousands.
    assert!(
        backoffs < 60,
        "accept loop is spinning: {backoffs} failures logged"
    );
}

/// At start the relay raises its soft RLIMIT_NOFILE to the hard limit, so a
/// default soft limit of 1024 does not cap it at a thousand connections.
#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = spawn_with_ulimit("-S -n 64", &dir.path().join("nofile.sqlite")).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    let (soft, hard) = (fields[3], fields[4]);
    assert_ne!(soft, "64", "the soft limit was raised: {line}");
    assert_eq!(soft, hard, "{line}");
}
