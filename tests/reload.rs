//! The relay's lifecycle as an operator drives it, with real signals sent
//! to the real binary: SIGHUP re-reads relay.toml and applies what can
//! change live; SIGTERM drains (CLOSED, OKs for events already received,
//! close 1001) within a deadline and exits 0; and with `reuse_port`, a new
//! process takes over the port without a refused connection or a lost
//! acknowledged event.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use nostr::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The relay's stderr, line by line, as it comes.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Collects `stderr` on a thread of its own (echoing it, for failures).
    fn collect(stderr: impl std::io::Read + Send + 'static) -> Log {
        let log = Log::default();
        let lines = log.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("relay: {line}");
                lines.lock().unwrap().push(line);
            }
        });
        log
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The lines logged from line `from` on.
    fn since(&self, from: usize) -> Vec<String> {
        self.0.lock().unwrap()[from..].to_vec()
    }

    /// Waits for a line from line `from` on that contains every one of
    /// `words`, and returns it.
    async fn wait_for(&self, from: usize, words: &[&str]) -> String {
        let deadline = Instant::now() + ANSWER;
        loop {
            if let Some(line) = self
                .since(from)
                .into_iter()
                .find(|line| words.iter().all(|w| line.contains(w)))
            {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {words:?}; got {:#?}",
                self.since(from)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The real binary, with a relay.toml of the test's own that the test
/// edits, and its log.
struct Relay {
    child: Child,
    url: String,
    addr: SocketAddr,
    config: PathBuf,
    db: PathBuf,
    log: Log,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Starts the relay with `toml` as relay.toml, logging at `info`.
    async fn start(toml: &str) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("relay.toml");
        std::fs::write(&config, toml).unwrap();
        let db = dir.path().join("relay.sqlite");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let (child, log) = spawn(&config, &db, addr).await;
        Relay {
            child,
            url: format!("ws://{addr}/"),
            addr,
            config,
            db,
            log,
            _dir: dir,
        }
    }

    /// Rewrites relay.toml, sends SIGHUP and waits for the reload's
    /// outcome in the log, which it returns (from the SIGHUP line on).
    async fn reload(&self, toml: &str) -> Vec<String> {
        std::fs::write(&self.config, toml).unwrap();
        let from = self.log.len();
        signal(&self.child, "HUP");
        self.log.wait_for(from, &["configuration", "reload"]).await;
        // The outcome is the last line of a reload.
        let outcome = ["configuration reloaded", "configuration not reloaded"];
        let deadline = Instant::now() + ANSWER;
        loop {
            let lines = self.log.since(from);
            if lines
                .iter()
                .any(|line| outcome.iter().any(|o| line.contains(o)))
            {
                return lines;
            }
            assert!(Instant::now() < deadline, "no reload outcome: {lines:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.url).await
    }

    /// The NIP-11 document, over HTTP.
    async fn nip11(&self) -> Value {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream
            .write_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/nostr+json\r\n\
                  Connection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|_| panic!("NIP-11: {response}"))
    }

    /// Sends SIGTERM and waits for the exit, at most `within`.
    async fn terminate(&mut self, within: Duration) -> ExitStatus {
        signal(&self.child, "TERM");
        wait_exit(&mut self.child, within).await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary on `addr` (RUST_LOG=info, so that RUST_LOG wins at
/// start) and waits until it accepts connections.
async fn spawn(config: &Path, db: &Path, addr: SocketAddr) -> (Child, Log) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nostr-relayd"))
        .arg("--config")
        .arg(config)
        .env("NOSTR_RELAYD_LISTEN", addr.to_string())
        .env("NOSTR_RELAYD_DB", db)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nostr-relayd");
    let log = Log::collect(child.stderr.take().unwrap());
    log.wait_for(0, &["relay listening"]).await;
    (child, log)
}

/// Sends a signal with kill(1).
fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} failed");
}

async fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the database file holds an event with this id (read directly,
/// after the relay has exited).
fn stored(db: &Path, id: &EventId) -> bool {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT count(*) FROM event WHERE id = ?",
        [id.as_bytes().as_slice()],
        |row| row.get::<_, i64>(0),
    )
    .unwrap()
        == 1
}

/// Opens subscriptions `prefix0`, `prefix1`, … until one is refused;
/// returns how many were accepted (at most `up_to`) and the refusal.
async fn open_subscriptions(client: &mut Client, prefix: &str, up_to: usize) -> (usize, String) {
    for n in 0..up_to {
        let sub = format!("{prefix}{n}");
        client
            .send_json(json!(["REQ", sub, {"kinds": [9], "limit": 0}]))
            .await;
        let answer = client.recv().await;
        match answer[0].as_str() {
            Some("EOSE") => continue,
            Some("CLOSED") => return (n, answer[2].as_str().unwrap().to_owned()),
            _ => panic!("unexpected answer to a REQ: {answer}"),
        }
    }
    (up_to, String::new())
}

fn with_limits(content: usize, subscriptions: usize) -> String {
    format!("[limits]\nmax_content_length = {content}\nmax_subscriptions = {subscriptions}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_limits_apply_to_open_and_new_connections() {
    let relay = Relay::start(&with_limits(100, 4)).await;
    let keys = Keys::generate();
    let mut open = relay.client().await;
    let (ok, _) = open.publish(&note(&keys, &"a".repeat(50))).await;
    assert!(ok, "50 characters fit in 100");
    let lines = relay.reload(&with_limits(10, 2)).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("limits.max_content_length")
                && l.contains("limits.max_subscriptions")),
        "the applied keys are named: {lines:#?}"
    );
    let mut new = relay.client().await;
    for client in [&mut open, &mut new] {
        let (ok, reason) = client.publish(&note(&keys, &"b".repeat(20))).await;
        assert!(!ok);
        assert!(
            reason.starts_with("invalid: content is too long"),
            "{reason}"
        );
        let (accepted, refusal) = open_subscriptions(client, "s", 5).await;
        assert_eq!(accepted, 2);
        assert!(refusal.contains("max 2"), "{refusal}");
    }
    let doc = relay.nip11().await;
    assert_eq!(doc["limitation"]["max_subscriptions"], 2);
    assert_eq!(doc["limitation"]["max_content_length"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_nip11_fields_are_served_at_once() {
    let relay = Relay::start("[info]\nname = \"Before\"\ndescription = \"old\"\n").await;
    assert_eq!(relay.nip11().await["name"], "Before");
    relay
        .reload("[info]\nname = \"After\"\ndescription = \"A renamed relay.\"\n")
        .await;
    let doc = relay.nip11().await;
    assert_eq!(doc["name"], "After");
    assert_eq!(doc["description"], "A renamed relay.");
}

fn with_event_rate(per_minute: u32) -> String {
    format!("[rate_limit]\nexempt = []\nevents_per_minute = {per_minute}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rate_limit_takes_effect() {
    let relay = Relay::start(&with_event_rate(1000)).await;
    let keys = Keys::generate();
    let mut client = relay.client().await;
    for n in 0..4 {
        let (ok, reason) = client.publish(&note(&keys, &format!("before {n}"))).await;
        assert!(ok, "{reason}");
    }
    let lines = relay.reload(&with_event_rate(2)).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("rate_limit.events_per_minute")),
        "{lines:#?}"
    );
    let mut answers = Vec::new();
    for n in 0..3 {
        answers.push(client.publish(&note(&keys, &format!("after {n}"))).await);
    }
    assert!(answers[0].0 && answers[1].0, "{answers:?}");
    assert!(!answers[2].0);
    assert!(answers[2].1.starts_with("rate-limited:"), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubkey_denied_in_relay_toml_is_refused_after_reload() {
    let relay = Relay::start("[access]\ndenied_pubkeys = []\n").await;
    let keys = Keys::generate();
    let mut client = relay.client().await;
    assert!(client.publish(&note(&keys, "welcome")).await.0);
    relay
        .reload(&format!(
            "[access]\ndenied_pubkeys = [\"{}\"]\n",
            keys.public_key().to_hex()
        ))
        .await;
    let (ok, reason) = client.publish(&note(&keys, "banned now")).await;
    assert!(!ok);
    assert!(reason.starts_with("blocked:"), "{reason}");
    let (ok, _) = client.publish(&note(&Keys::generate(), "others")).await;
    assert!(ok, "others may still write");
}

#[tokio::test]
async fn an_embedded_relay_reloads_and_reports_what_it_applied() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let relay = nostr_relayd::start(config.clone()).await.unwrap();
    let mut new = config.clone();
    new.limits.max_subscriptions = 1;
    new.storage.reader_threads = 1;
    let report = relay.reload(new.clone()).await.unwrap();
    assert_eq!(report.applied, ["limits.max_subscriptions"]);
    assert_eq!(report.needs_restart, ["storage.reader_threads"]);
    let mut client = Client::connect(&format!("ws://{}/", relay.local_addr)).await;
    let (accepted, refusal) = open_subscriptions(&mut client, "e", 3).await;
    assert_eq!(accepted, 1, "{refusal}");
    // Invalid: refused whole, naming the key; the relay goes on as it was.
    new.limits.max_subscriptions = 5;
    new.limits.max_filters = 0;
    let error = relay.reload(new).await.unwrap_err();
    assert!(error.0.starts_with("limits.max_filters"), "{error}");
    let refusal = client
        .req_closed("again", vec![json!({"kinds": [9], "limit": 0})])
        .await;
    assert!(refusal.contains("max 1"), "{refusal}");
    drop(client);
    assert_eq!(relay.shutdown().await, nostr_relayd::Stopped::Clean);
}

/// Whether a line is a DEBUG record (text format, no colour on a pipe).
fn is_debug(line: &str) -> bool {
    line.contains(" DEBUG ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_on_reload() {
    let relay = Relay::start("log_level = \"info\"\n").await;
    let from = relay.log.len();
    relay.client().await.assert_healthy().await;
    // The connection's close line (info) tells that it has been logged.
    relay.reload("log_level = \"info\"\n").await;
    assert!(
        !relay.log.since(from).iter().any(|l| is_debug(l)),
        "no debug lines at info"
    );
    relay.reload("log_level = \"debug\"\n").await;
    let from = relay.log.len();
    relay.client().await.assert_healthy().await;
    relay.log.wait_for(from, &[" DEBUG "]).await;
    relay.reload("log_level = \"info\"\n").await;
    let from = relay.log.len();
    relay.client().await.assert_healthy().await;
    relay.reload("log_level = \"info\"\n").await;
    let debug: Vec<String> = relay
        .log
        .since(from)
        .into_iter()
        .filter(|l| is_debug(l))
        .collect();
    assert!(debug.is_empty(), "debug lines after going back: {debug:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_only_change_is_logged_and_not_applied() {
    let relay = Relay::start("[network]\nmax_connections = 100\n").await;
    let lines = relay
        .reload("[network]\nmax_connections = 1\n[info]\nname = \"Both\"\n")
        .await;
    let warning = lines
        .iter()
        .find(|l| l.contains("network.max_connections"))
        .unwrap_or_else(|| panic!("the restart-only key is named: {lines:#?}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("needs a restart"), "{warning}");
    // One connection more than the new value would allow: the old one holds.
    let mut first = relay.client().await;
    let mut second = relay.client().await;
    first.assert_healthy().await;
    second.assert_healthy().await;
    // The live key of the same file was applied.
    assert_eq!(relay.nip11().await["name"], "Both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_whole_old_config() {
    let relay = Relay::start("[info]\nname = \"Kept\"\n[limits]\nmax_subscriptions = 3\n").await;
    let mut client = relay.client().await;
    let lines = relay
        .reload("[info]\nname = \"Ignored\"\n[limits]\nmax_subscriptions = 0\n")
        .await;
    let error = lines
        .iter()
        .find(|l| l.contains("configuration not reloaded"))
        .unwrap_or_else(|| panic!("the refusal is logged: {lines:#?}"));
    assert!(error.contains("ERROR"), "{error}");
    assert!(error.contains("limits.max_subscriptions"), "{error}");
    // A file that is not even TOML is refused the same way.
    let lines = relay.reload("[info\nname = ").await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("configuration not reloaded")),
        "{lines:#?}"
    );
    assert_eq!(relay.nip11().await["name"], "Kept");
    client.assert_healthy().await;
    let (accepted, _) = open_subscriptions(&mut client, "k", 5).await;
    assert_eq!(accepted, 3, "the old limit is still in force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_subscriptions_answers_pending_events_and_exits_zero() {
    let mut relay = Relay::start("").await;
    let keys = Keys::generate();
    let mut reader = relay.client().await;
    assert!(
        reader
            .req("live", vec![json!({"kinds": [1]})])
            .await
            .is_empty()
    );
    let mut writer = relay.client().await;
    let events: Vec<Event> = (0..50)
        .map(|n| note(&keys, &format!("sent before the stop {n}")))
        .collect();
    for event in &events {
        writer
            .send_text(format!(r#"["EVENT",{}]"#, event.as_json()))
            .await;
    }
    signal(&relay.child, "TERM");
    // Every event sent before the signal is answered OK true.
    let mut pending: std::collections::HashSet<String> =
        events.iter().map(|e| e.id.to_hex()).collect();
    while !pending.is_empty() {
        match writer.recv_message().await {
            Some(Message::Text(text)) => {
                let ok: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(ok[0], "OK", "{ok}");
                assert_eq!(ok[2], true, "{ok}");
                assert!(pending.remove(ok[1].as_str().unwrap()));
            }
            other => panic!("{} OKs missing; got {other:?}", pending.len()),
        }
    }
    match writer.recv_message().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close 1001 after the OKs, got {other:?}"),
    }
    // The subscriber is told its subscription is over, then goodbye. Live
    // copies of the events may come first.
    let closed = loop {
        let message = reader.recv().await;
        if message[0] != "EVENT" {
            break message;
        }
    };
    assert_eq!(closed, json!(["CLOSED", "live", "error: shutting down"]));
    match reader.recv_message().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let status = wait_exit(&mut relay.child, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    relay.log.wait_for(0, &["stopped cleanly"]).await;
    for event in &events {
        assert!(stored(&relay.db, &event.id), "acknowledged and stored");
    }
}

/// A relay with `shutdown_timeout_seconds`, and a client that asked for
/// 24 MB of stored events and reads none of them: more than the socket
/// buffers between them can take, so the relay's write to it is stuck.
async fn relay_with_a_client_that_never_reads(shutdown_timeout: u64) -> (Relay, TcpStream) {
    let relay = Relay::start(&format!(
        "[network]\nshutdown_timeout_seconds = {shutdown_timeout}\n"
    ))
    .await;
    let keys = Keys::generate();
    let mut writer = relay.client().await;
    let base = now() - 1000;
    let big = "x".repeat(60_000);
    for n in 0..400 {
        let event = event(&keys, 1, &big, &[], base + n);
        writer
            .send_text(format!(r#"["EVENT",{}]"#, event.as_json()))
            .await;
    }
    for _ in 0..400 {
        let ok = writer.recv().await;
        assert_eq!(ok[2], true, "{ok}");
    }
    let mut stuck = upgrade(relay.addr).await;
    let req = json!(["REQ", "all", {"kinds": [1], "limit": 400}]).to_string();
    stuck.write_all(&masked_text_frame(&req)).await.unwrap();
    // Let the relay fill the socket buffers and block on its write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (relay, stuck)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_hold_the_stop_past_the_deadline() {
    let (mut relay, _stuck) = relay_with_a_client_that_never_reads(2).await;
    let started = Instant::now();
    let status = relay.terminate(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(6),
        "the 2 s deadline held: exited after {took:?}"
    );
    relay.log.wait_for(0, &["dropping them"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let (mut relay, _stuck) = relay_with_a_client_that_never_reads(60).await;
    signal(&relay.child, "TERM");
    relay.log.wait_for(0, &["draining"]).await;
    let started = Instant::now();
    let status = relay.terminate(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "not a clean stop");
    assert!(started.elapsed() < Duration::from_secs(5));
    relay.log.wait_for(0, &["asked again to stop"]).await;
}

/// How one publication in the handover test went.
#[derive(Debug, Default)]
struct Handover {
    /// Connections refused (nobody listening): must stay 0.
    refused: usize,
    /// Attempts that had to start again on a new connection, by why (503
    /// while draining, a close before the OK, a reset in the kernel's
    /// queue).
    retried: std::collections::BTreeMap<String, usize>,
    /// Events answered OK true.
    acknowledged: Vec<EventId>,
}

impl Handover {
    fn retry(&mut self, why: String) {
        *self.retried.entry(why).or_default() += 1;
    }
}

/// Publishes `event` on a new connection until it is answered OK true.
async fn publish_until_ok(url: &str, event: &Event, tally: &Mutex<Handover>) {
    for _ in 0..50 {
        let connected = tokio_tungstenite::connect_async_with_config(url, None, true).await;
        let mut ws = match connected {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Io(error))
                if error.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                tally.lock().unwrap().refused += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(error) => {
                tally.lock().unwrap().retry(format!("connect: {error}"));
                continue;
            }
        };
        let frame = format!(r#"["EVENT",{}]"#, event.as_json());
        if let Err(error) = ws.send(Message::text(frame)).await {
            tally.lock().unwrap().retry(format!("send: {error}"));
            continue;
        }
        let id = event.id.to_hex();
        let answer = tokio::time::timeout(ANSWER, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let value: Value = serde_json::from_str(text.as_str()).unwrap();
                        if value[0] == "OK" && value[1] == id.as_str() {
                            return Ok(value);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => return Err(format!("close: {frame:?}")),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(format!("read: {error}")),
                    None => return Err("read: end of stream".to_owned()),
                }
            }
        })
        .await
        .expect("an answer or a close in time");
        match answer {
            Ok(ok) => {
                assert_eq!(ok[2], true, "{ok}");
                tally.lock().unwrap().acknowledged.push(event.id);
                let _ = ws.close(None).await;
                return;
            }
            Err(why) => tally.lock().unwrap().retry(why),
        }
    }
    panic!(
        "event never acknowledged: {tally:?}",
        tally = tally.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_process_takes_over_the_port_without_refusing_or_losing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    // The rate limits would count the test's many connections: off.
    std::fs::write(
        &config,
        "[network]\nreuse_port = true\n[rate_limit]\nenabled = false\n",
    )
    .unwrap();
    let db = dir.path().join("relay.sqlite");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (mut old, old_log) = spawn(&config, &db, addr).await;
    let url = format!("ws://{addr}/");
    let tally = Arc::new(Mutex::new(Handover::default()));
    let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (url, tally, published) = (url.clone(), tally.clone(), published.clone());
        clients.push(tokio::spawn(async move {
            let keys = Keys::generate();
            for n in 0..150 {
                let event = note(&keys, &format!("client {c} event {n}"));
                publish_until_ok(&url, &event, &tally).await;
                published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    let wait_until = |count: usize| {
        let published = published.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while published.load(std::sync::atomic::Ordering::Relaxed) < count {
                assert!(Instant::now() < deadline, "the clients stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    wait_until(100).await;
    // The upgrade: the new process binds the same port, then the old one
    // is told to stop while the clients keep going.
    let (mut new, new_log) = spawn(&config, &db, addr).await;
    wait_until(200).await;
    signal(&old, "TERM");
    let status = wait_exit(&mut old, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "the old process drained and exited");
    old_log.wait_for(0, &["relay stopped"]).await;
    for client in clients {
        client.await.unwrap();
    }
    signal(&new, "TERM");
    let status = wait_exit(&mut new, Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0));
    new_log.wait_for(0, &["relay stopped"]).await;
    let tally = tally.lock().unwrap();
    eprintln!(
        "handover: {} acknowledged, {} refused, retried: {:?}",
        tally.acknowledged.len(),
        tally.refused,
        tally.retried
    );
    assert_eq!(tally.refused, 0, "no connection was refused");
    assert_eq!(tally.acknowledged.len(), 600);
    for id in &tally.acknowledged {
        assert!(stored(&db, id), "an acknowledged event was lost: {id}");
    }
}
