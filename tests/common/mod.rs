//! Shared test harness: a relay on a temporary SQLite file (in-process on
//! port 0, or the real binary), and a WebSocket client that speaks NIP-01.
//! Events are built and signed with the independent `nostr` crate.
//!
//! The backend matrix: a test target named `<suite>_on_postgres` (a file
//! holding just `#[path = "<suite>.rs"] mod suite;`) runs the same suite on
//! PostgreSQL. Every relay this harness starts then stores its events in a
//! fresh database of one throwaway cluster (services.rs), the one standing
//! for its SQLite file path, so that a restart on the same file finds them.

#![allow(dead_code)]

pub mod provision;
pub mod services;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nostr::prelude::*;
use nostr_relayd::config::Backend;
use nostr_relayd::{Config, RunningRelay};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

/// How long a test waits for an answer that must come.
pub const ANSWER: Duration = Duration::from_secs(10);

/// A relay running in this process against a fresh database file.
pub struct TestRelay {
    pub url: String,
    pub addr: SocketAddr,
    pub db: PathBuf,
    pub config: Config,
    relay: Option<RunningRelay>,
    _dir: TempDir,
}

/// A configuration for tests: port 0, a database in `dir`.
pub fn test_config(dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        database: dir.join("relay.sqlite"),
        ..Config::default()
    }
}

/// Whether this test binary runs its suite on PostgreSQL: it is a
/// `*_on_postgres` target (decided at compile time, per test binary).
pub fn on_postgres() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_on_postgres")
}

/// The PostgreSQL database standing for the SQLite file `db`: created on
/// first use, the same one for the same path for the rest of this process.
pub fn postgres_url_for(db: &Path) -> String {
    static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    let mut databases = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
    databases
        .get_or_insert_with(HashMap::new)
        .entry(db.to_path_buf())
        .or_insert_with(|| services::Postgres::shared().create_database())
        .clone()
}

/// Puts `config` on this binary's backend: unchanged on SQLite; on
/// PostgreSQL, the database standing for `config.database` (unless the test
/// chose PostgreSQL itself).
pub fn use_backend(config: &mut Config) {
    if on_postgres() && config.storage.backend == Backend::Sqlite {
        config.storage.backend = Backend::Postgres;
        config.storage.postgres_url = postgres_url_for(&config.database);
    }
}

/// `nostr-relayd --config <config>` on the database `db` with this binary's
/// backend: `NOSTR_RELAYD_DB` is `db`; on PostgreSQL the config is a copy
/// (next to `db`) saying `backend = "postgres"`, and
/// `NOSTR_RELAYD_POSTGRES_URL` names the database standing for `db`.
pub fn relayd(config: &Path, db: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nostr-relayd"));
    command.env("NOSTR_RELAYD_DB", db);
    let Some(text) = on_postgres()
        .then(|| std::fs::read_to_string(config).ok())
        .flatten()
    else {
        command.arg("--config").arg(config);
        return command;
    };
    let mut table: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{} is not TOML: {e}", config.display()));
    let storage = table
        .entry("storage")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let storage = storage.as_table_mut().expect("[storage] is a table");
    if storage.get("backend").and_then(toml::Value::as_str) == Some("postgres") {
        // The test chose PostgreSQL and its database itself.
        command.arg("--config").arg(config);
        return command;
    }
    storage.insert("backend".into(), "postgres".into());
    let stem = config.file_stem().unwrap_or_default().to_string_lossy();
    let dir = db.parent().expect("the database path has a directory");
    let copy = dir.join(format!("{stem}.on-postgres.toml"));
    std::fs::write(&copy, toml::to_string(&table).expect("TOML")).expect("write the config");
    command
        .arg("--config")
        .arg(copy)
        .env("NOSTR_RELAYD_POSTGRES_URL", postgres_url_for(db));
    command
}

/// Opens the store a relay on `config` would open, on this binary's backend
/// (see [`use_backend`]), for tests that fill a database before a relay
/// starts on it, or that query the store without a relay.
pub async fn open_store(config: &mut Config) -> nostr_relayd::store::Store {
    use_backend(config);
    nostr_relayd::store::Store::open_configured(config, Box::new(|_| {}))
        .await
        .expect("the store opens")
}

/// What a relay stored, read straight from its database on either backend,
/// for tests that check storage itself (a row is gone, not just hidden).
/// Both schemas name the shared columns alike: `event (seq, id, pubkey,
/// created_at, kind, json)` and `tag (event_seq, …)`.
pub enum StoredDb {
    Sqlite(rusqlite::Connection),
    /// psql against this URL.
    Postgres(String),
}

impl StoredDb {
    /// The database of a relay started with `config`.
    pub fn open(config: &Config) -> StoredDb {
        match config.storage.backend {
            Backend::Sqlite => StoredDb::Sqlite(
                rusqlite::Connection::open_with_flags(
                    &config.database,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .expect("open the SQLite database"),
            ),
            Backend::Postgres => StoredDb::Postgres(config.storage.postgres_url.clone()),
        }
    }

    /// `bytes` as a literal of this database's SQL (a BLOB, or a bytea).
    pub fn bytes(&self, bytes: &[u8]) -> String {
        match self {
            StoredDb::Sqlite(_) => format!("X'{}'", hex::encode(bytes)),
            StoredDb::Postgres(_) => format!("'\\x{}'::bytea", hex::encode(bytes)),
        }
    }

    /// The single value `sql` selects, as text ("" for NULL).
    pub fn value(&self, sql: &str) -> String {
        match self {
            StoredDb::Sqlite(db) => {
                let value: rusqlite::types::Value = db
                    .query_row(sql, [], |row| row.get(0))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                match value {
                    rusqlite::types::Value::Null => String::new(),
                    rusqlite::types::Value::Integer(n) => n.to_string(),
                    rusqlite::types::Value::Real(x) => x.to_string(),
                    rusqlite::types::Value::Text(text) => text,
                    rusqlite::types::Value::Blob(blob) => hex::encode(blob),
                }
            }
            StoredDb::Postgres(url) => services::Postgres::shared().sql(url, sql),
        }
    }

    /// The single integer `sql` selects.
    pub fn integer(&self, sql: &str) -> i64 {
        let value = self.value(sql);
        value
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: not an integer: {value:?}"))
    }

    /// Rows of table `event` holding the event `id`.
    pub fn rows_for(&self, id: &[u8]) -> i64 {
        self.integer(&format!(
            "SELECT count(*) FROM event WHERE id = {}",
            self.bytes(id)
        ))
    }
}

impl TestRelay {
    pub async fn start() -> TestRelay {
        TestRelay::start_with(|_| {}).await
    }

    /// Starts a relay after `adjust` has changed the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestRelay {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        adjust(&mut config);
        use_backend(&mut config);
        config.validate().expect("valid test config");
        let relay = nostr_relayd::start(config.clone())
            .await
            .expect("relay starts");
        let addr = relay.local_addr;
        TestRelay {
            url: format!("ws://{addr}/"),
            addr,
            db: config.database.clone(),
            config,
            relay: Some(relay),
            _dir: dir,
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url).await
    }

    /// This relay's database, whichever backend holds it.
    pub fn stored(&self) -> StoredDb {
        StoredDb::open(&self.config)
    }

    /// Graceful shutdown; the database stays until the TestRelay is dropped.
    pub async fn stop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
    }
}

/// The real `nostr-relayd` binary, for tests that kill or signal it.
pub struct RelayProcess {
    pub child: Child,
    pub url: String,
    pub addr: SocketAddr,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RelayProcess {
    /// Starts the binary with `config_path`, overriding listen and database
    /// through the environment, and waits until it accepts connections.
    pub async fn spawn(config_path: &Path, db: &Path) -> RelayProcess {
        RelayProcess::spawn_logging(config_path, db, "warn", Stdio::inherit()).await
    }

    /// As [`RelayProcess::spawn`], with `RUST_LOG` set to `log` and the
    /// relay's stderr (its log) sent to `stderr`.
    pub async fn spawn_logging(
        config_path: &Path,
        db: &Path,
        log: &str,
        stderr: Stdio,
    ) -> RelayProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = relayd(config_path, db)
            .env("NOSTR_RELAYD_LISTEN", addr.to_string())
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn nostr-relayd");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "relay did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        RelayProcess {
            child,
            url: format!("ws://{addr}/"),
            addr,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A NIP-01 client over a real WebSocket.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The NIP-42 challenge the relay sent, once it has been read.
    pub challenge: Option<String>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        // Nagle off, as real clients do, so small frames are not held back.
        let (ws, _) = connect_async_with_config(url, None, true)
            .await
            .expect("websocket connects");
        Client::from_ws(ws)
    }

    pub fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            challenge: None,
        }
    }

    /// NIP-42: signs this connection's challenge for `relay_url` with
    /// `keys` and returns the relay's `OK` (accepted, reason).
    pub async fn authenticate(&mut self, keys: &Keys, relay_url: &str) -> (bool, String) {
        let event = self.auth_event(keys, relay_url).await;
        self.send_json(json!(["AUTH", to_value(&event)])).await;
        self.ok_for(&event.id.to_hex()).await
    }

    /// A correct kind-22242 answer to this connection's challenge.
    pub async fn auth_event(&mut self, keys: &Keys, relay_url: &str) -> Event {
        let challenge = self.wait_for_challenge().await;
        EventBuilder::new(Kind::Authentication, "")
            .tags([
                Tag::parse(["relay", relay_url]).unwrap(),
                Tag::parse(["challenge", challenge.as_str()]).unwrap(),
            ])
            .finalize(keys)
            .unwrap()
    }

    /// The challenge, reading frames until it arrives (it is the first).
    pub async fn wait_for_challenge(&mut self) -> String {
        while self.challenge.is_none() {
            let frame = tokio::time::timeout(ANSWER, self.ws.next())
                .await
                .expect("the relay sent its challenge in time");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(text.as_str()).unwrap();
                    assert_eq!(
                        message[0], "AUTH",
                        "expected the challenge first: {message}"
                    );
                    self.challenge = message[1].as_str().map(str::to_owned);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected the AUTH challenge, got {other:?}"),
            }
        }
        self.challenge.clone().unwrap()
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// The next frame, whatever it is (pings are skipped); None when closed.
    pub async fn recv_message(&mut self) -> Option<Message> {
        loop {
            let frame = tokio::time::timeout(ANSWER, self.ws.next())
                .await
                .expect("the relay answered in time");
            match frame {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Text(text))) if text.as_str().starts_with("[\"AUTH\",") => {
                    // The NIP-42 challenge, sent when the connection opens.
                    let message: Value = serde_json::from_str(text.as_str()).unwrap();
                    self.challenge = message[1].as_str().map(str::to_owned);
                    if self.challenge.is_none() {
                        return Some(Message::Text(text));
                    }
                }
                Some(Ok(message)) => return Some(message),
            }
        }
    }

    /// The next text frame exactly as the relay sent it.
    pub async fn recv_text(&mut self) -> String {
        match self.recv_message().await {
            Some(Message::Text(text)) => text.as_str().to_owned(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// The next relay message as JSON.
    pub async fn recv(&mut self) -> Value {
        match self.recv_message().await {
            Some(Message::Text(text)) => {
                serde_json::from_str(text.as_str()).expect("relay sends JSON")
            }
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Nothing arrives within `wait` (pings and the AUTH challenge aside).
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match message {
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Text(text) if text.as_str().starts_with("[\"AUTH\",") => {
                    let message: Value = serde_json::from_str(text.as_str()).unwrap();
                    self.challenge = message[1].as_str().map(str::to_owned);
                }
                other => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Publishes a signed event and returns the OK's (accepted, reason).
    pub async fn publish(&mut self, event: &Event) -> (bool, String) {
        self.send_text(format!(r#"["EVENT",{}]"#, event.as_json()))
            .await;
        self.ok_for(&event.id.to_hex()).await
    }

    /// Publishes raw JSON of an event object.
    pub async fn publish_raw(&mut self, event: &Value) -> (bool, String) {
        self.send_json(json!(["EVENT", event])).await;
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        self.ok_for(&id).await
    }

    /// Waits for the OK of `id`, skipping other messages.
    pub async fn ok_for(&mut self, id: &str) -> (bool, String) {
        loop {
            let message = self.recv().await;
            if message[0] == "OK" && message[1] == id {
                return (
                    message[2].as_bool().expect("bool"),
                    message[3].as_str().expect("reason").to_owned(),
                );
            }
        }
    }

    /// Sends a REQ and collects its stored events until EOSE.
    pub async fn req(&mut self, sub: &str, filters: Vec<Value>) -> Vec<Value> {
        let mut message = vec![json!("REQ"), json!(sub)];
        message.extend(filters);
        self.send_json(Value::Array(message)).await;
        self.collect_until_eose(sub).await
    }

    /// A REQ whose subscription is closed again after EOSE, for loops that
    /// would otherwise pile up subscriptions past the relay's limit.
    pub async fn query(&mut self, sub: &str, filters: Vec<Value>) -> Vec<Value> {
        let events = self.req(sub, filters).await;
        self.send_json(json!(["CLOSE", sub])).await;
        events
    }

    /// Collects `["EVENT", sub, …]` until `["EOSE", sub]`; panics on CLOSED.
    pub async fn collect_until_eose(&mut self, sub: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let message = self.recv().await;
            match message[0].as_str() {
                Some("EVENT") if message[1] == sub => events.push(message[2].clone()),
                Some("EOSE") if message[1] == sub => return events,
                Some("CLOSED") if message[1] == sub => panic!("subscription closed: {message}"),
                _ => {}
            }
        }
    }

    /// Sends a REQ that must be refused, returning the CLOSED reason.
    pub async fn req_closed(&mut self, sub: &str, filters: Vec<Value>) -> String {
        let mut message = vec![json!("REQ"), json!(sub)];
        message.extend(filters);
        self.send_json(Value::Array(message)).await;
        let answer = self.recv().await;
        assert_eq!(answer[0], "CLOSED", "expected CLOSED, got {answer}");
        assert_eq!(answer[1], json!(sub));
        answer[2].as_str().unwrap().to_owned()
    }

    /// Sends a COUNT (NIP-45) and returns its answer, `["COUNT", sub, {…}]`
    /// or `["CLOSED", sub, reason]`, skipping messages for other ids.
    pub async fn count(&mut self, sub: &str, filters: Vec<Value>) -> Value {
        let mut message = vec![json!("COUNT"), json!(sub)];
        message.extend(filters);
        self.send_json(Value::Array(message)).await;
        loop {
            let answer = self.recv().await;
            if (answer[0] == "COUNT" || answer[0] == "CLOSED") && answer[1] == sub {
                return answer;
            }
        }
    }

    /// The next message must be a NOTICE; returns its text.
    pub async fn expect_notice(&mut self) -> String {
        let answer = self.recv().await;
        assert_eq!(answer[0], "NOTICE", "expected NOTICE, got {answer}");
        answer[1].as_str().unwrap().to_owned()
    }

    /// Proves the connection still works: publish a note and read it back.
    pub async fn assert_healthy(&mut self) {
        let keys = Keys::generate();
        let event = note(&keys, "still alive");
        assert_eq!(self.publish(&event).await, (true, String::new()));
        let events = self
            .req("health", vec![json!({"ids": [event.id.to_hex()]})])
            .await;
        assert_eq!(events.len(), 1);
        self.send_json(json!(["CLOSE", "health"])).await;
    }
}

/// Now, in seconds.
pub fn now() -> u64 {
    Timestamp::now().as_secs()
}

/// A signed kind-1 note.
pub fn note(keys: &Keys, content: &str) -> Event {
    EventBuilder::new(Kind::TextNote, content)
        .finalize(keys)
        .unwrap()
}

/// A signed event of any kind, tags and time.
pub fn event(keys: &Keys, kind: u16, content: &str, tags: &[&[&str]], created_at: u64) -> Event {
    let tags: Vec<Tag> = tags
        .iter()
        .map(|t| Tag::parse(t.iter().copied()).unwrap())
        .collect();
    EventBuilder::new(Kind::from(kind), content)
        .tags(tags)
        .custom_created_at(Timestamp::from(created_at))
        .finalize(keys)
        .unwrap()
}

/// An event's JSON as a serde value, to be tampered with.
pub fn to_value(event: &Event) -> Value {
    serde_json::from_str(&event.as_json()).unwrap()
}

// Raw sockets, for clients that break the rules.

/// A client text frame, masked with the zero key (RFC 6455 requires a mask,
/// not a secret one).
pub fn masked_text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81];
    let len = text.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend((len as u16).to_be_bytes());
    }
    frame.extend([0, 0, 0, 0]);
    frame.extend(text.as_bytes());
    frame
}

/// The relay's `/debug/counters`, fetched over a plain HTTP/1.1 request.
pub async fn debug_counters(addr: std::net::SocketAddr) -> serde_json::Value {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /debug/counters HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("counters: {response}"))
}

/// A WebSocket upgrade by hand, for writing raw frames.
pub async fn upgrade(addr: std::net::SocketAddr) -> TcpStream {
    upgrade_stream(TcpStream::connect(addr).await.unwrap()).await
}

pub async fn upgrade_stream(mut stream: TcpStream) -> TcpStream {
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    stream
}

/// A signed event of the `nostr` crate as the relay's own canonical event,
/// for tests that drive a store directly.
pub fn canonical(event: &Event) -> std::sync::Arc<nostr_relayd::nostr::CanonicalEvent> {
    let value: Value = serde_json::from_str(&event.as_json()).unwrap();
    std::sync::Arc::new(nostr_relayd::nostr::CanonicalEvent::new(
        nostr_relayd::nostr::Event::from_value(&value).expect("a valid event"),
    ))
}

/// A direct PostgreSQL connection, to look at what is stored.
pub async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}
