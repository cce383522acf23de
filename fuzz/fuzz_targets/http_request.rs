//! Fuzz target `http_request`: arbitrary bytes sent as one HTTP/1.1 client
//! connection to a real relay (hyper's HTTP/1 server and the relay's
//! handler: NIP-11, the home page, CORS, 404/405, the WebSocket upgrade and,
//! after an upgrade, the WebSocket session itself).
//!
//! A relay is started once per fuzzing process, in this process, on
//! 127.0.0.1 port 0 with a fresh SQLite file in a temporary directory, on a
//! current-thread tokio runtime. Each input is written on a new TCP
//! connection, the write half is shut down, and the reply is read.
//!
//! Invariants checked:
//! - nothing in the relay panics: libFuzzer's panic hook aborts the process on
//!   a panic in any thread, including inside the relay's tokio tasks (which
//!   would otherwise swallow it);
//! - every connection is answered and closed within 2 s of the client's EOF
//!   (a connection held open after EOF is a leak a hostile client can
//!   repeat until the relay runs out of descriptors or slots);
//! - a non-empty reply starts with an HTTP/1.x status line;
//! - the relay stays healthy: every 1,000 inputs (and after any slow
//!   reply), `GET /` with `Accept: application/nostr+json` must answer
//!   200, and `/debug/counters` must show that closed connections gave
//!   their slots back.
#![no_main]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nostr_relayd::{Config, RunningRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// How long the relay has, after the client's EOF, to answer and close.
const REPLY: Duration = Duration::from_secs(2);
/// The health check's patience for each of its two requests. It can follow
/// a slow reply: 2 + 3 + 3 s stays under libFuzzer's `-timeout=10`.
const HEALTH: Duration = Duration::from_secs(3);
/// Inputs between two health checks.
const HEALTH_EVERY: u64 = 1000;
/// More connection slots than this in use while idle means a slot leaked.
const MAX_IDLE_SLOTS: u64 = 100;
/// At most this much of a reply is read.
const MAX_REPLY: usize = 1 << 20;

struct Harness {
    runtime: Runtime,
    addr: SocketAddr,
    _relay: RunningRelay,
}

static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
static RUNS: AtomicU64 = AtomicU64::new(0);

fn harness() -> &'static Mutex<Harness> {
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = database_dir();
        let config = Config {
            listen: "127.0.0.1:0".into(),
            database: dir.join("relay.sqlite"),
            storage: nostr_relayd::config::Storage {
                reader_threads: 1,
                verify_threads: 1,
                ..Default::default()
            },
            ..Config::default()
        };
        config.validate().expect("valid fuzz config");
        let relay = runtime
            .block_on(nostr_relayd::start(config))
            .expect("relay starts");
        let addr = relay.local_addr;
        let harness = Harness {
            runtime,
            addr,
            _relay: relay,
        };
        harness.runtime.block_on(health(addr));
        Mutex::new(harness)
    })
}

/// A fresh directory for this process's database. The relay lives until the
/// process exits, which runs no destructors, so directories left behind by
/// earlier fuzzing processes (whose pid is gone) are removed here instead.
fn database_dir() -> PathBuf {
    let parent = std::env::temp_dir().join("nostr-relayd-fuzz");
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.parse::<u32>().ok());
            if let Some(pid) = pid
                && !PathBuf::from(format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = parent.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the fuzz database directory");
    dir
}

/// Sends `request` on a new connection, shuts the write half, and reads the
/// reply until the relay closes. `None` when the relay did not close in time.
async fn exchange(addr: SocketAddr, request: &[u8], patience: Duration) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the relay (is it still listening?)");
    let _ = stream.set_nodelay(true);
    // The relay may answer and close before reading everything (a 400 on a
    // bad request line, say): write errors are part of the game.
    if stream.write_all(request).await.is_ok() {
        let _ = stream.shutdown().await;
    }
    let mut reply = Vec::new();
    let read = tokio::time::timeout(patience, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    if reply.len() >= MAX_REPLY {
                        break;
                    }
                }
            }
        }
    })
    .await;
    // RST rather than FIN: no TIME_WAIT pile-up over millions of runs.
    let _ = stream.set_zero_linger();
    read.ok().map(|()| reply)
}

/// The relay still serves NIP-11 and has no leaked connection slots.
async fn health(addr: SocketAddr) {
    let request = b"GET / HTTP/1.1\r\nHost: fuzz\r\nAccept: application/nostr+json\r\nConnection: close\r\n\r\n";
    let reply = exchange(addr, request, HEALTH)
        .await
        .expect("health check: the relay did not answer GET / (NIP-11) within 3 s");
    assert!(
        reply.starts_with(b"HTTP/1.1 200 "),
        "health check: GET / (NIP-11) did not answer 200: {:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(200)])
    );
    let request = b"GET /debug/counters HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";
    let reply = exchange(addr, request, HEALTH)
        .await
        .expect("health check: the relay did not answer /debug/counters within 3 s");
    let text = String::from_utf8_lossy(&reply);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let counters: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|error| {
        panic!("health check: /debug/counters is not JSON ({error}): {text:?}")
    });
    for gauge in ["http_connections", "websockets"] {
        if let Some(held) = counters.get(gauge).and_then(|v| v.as_u64()) {
            assert!(
                held <= MAX_IDLE_SLOTS,
                "health check: {gauge} is {held} while idle: connections leak ({counters})"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let harness = harness()
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let addr = harness.addr;
    let runs = RUNS.fetch_add(1, Ordering::Relaxed) + 1;
    harness.runtime.block_on(async {
        match exchange(addr, data, REPLY).await {
            Some(reply) => assert!(
                reply.is_empty() || reply.starts_with(b"HTTP/1."),
                "the reply does not start with an HTTP/1.x status line: {:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(200)])
            ),
            None => {
                // Tell a dead relay from one that kept this connection open.
                health(addr).await;
                panic!(
                    "the relay kept the connection open more than {REPLY:?} after the client's EOF"
                );
            }
        }
        if runs % HEALTH_EVERY == 0 {
            health(addr).await;
        }
    });
});
