//! `/metrics`, `/health` and `/stats.json` over real sockets.
//!
//! The Prometheus recorder is process-wide, so the tests that read exact
//! counter values run the real binary (one process, one recorder each).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nostr::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One HTTP answer: status, lower-cased headers, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A raw HTTP/1.1 request to `addr`, from `from` when given (the source
/// address of the TCP connection).
async fn request(
    from: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut stream = match from {
        None => TcpStream::connect(addr).await.unwrap(),
        Some(ip) => {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
            socket.connect(addr).await.unwrap()
        }
    };
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(ANSWER, stream.read_to_end(&mut response))
        .await
        .expect("an answer in time")
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
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(None, addr, "GET", path, &[]).await
}

/// The real binary with `toml` as its relay.toml, listening on `ip` (a
/// free port) with a database in `dir`.
async fn spawn(dir: &Path, ip: IpAddr, toml: &str) -> RelayProcess {
    let config = dir.join("relay.toml");
    std::fs::write(&config, toml).unwrap();
    let addr = SocketAddr::new(ip, free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_nostr-relayd"))
        .arg("--config")
        .arg(&config)
        .env("NOSTR_RELAYD_LISTEN", addr.to_string())
        .env("NOSTR_RELAYD_DB", dir.join("relay.sqlite"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nostr-relayd");
    // A wildcard address is reached through loopback.
    let reach = if ip.is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(reach).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    RelayProcess {
        child,
        url: format!("ws://{reach}/"),
        addr: reach,
    }
}

/// A parsed Prometheus text exposition: every sample by its series
/// (`name{label="value",…}`, labels sorted), and each family's TYPE.
struct Exposition {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Exposition {
    /// Parses the whole text, failing on any line that is neither a
    /// comment nor a sample, on a sample of a family without HELP and TYPE,
    /// and on a repeated series.
    fn parse(text: &str) -> Exposition {
        let mut helps = HashMap::new();
        let mut types = HashMap::new();
        let mut samples = HashMap::new();
        for line in text.lines() {
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(is_name(name), "{line}");
                assert!(!help.trim().is_empty(), "empty HELP: {line}");
                helps.insert(name.to_owned(), help.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name type");
                assert!(is_name(name), "{line}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            let (series, value) = line.rsplit_once(' ').expect("name{labels} value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("not a number: {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"));
                    (name, parse_labels(inner, line))
                }
            };
            assert!(is_name(name), "bad name: {line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "no TYPE for {family}: {line}");
            assert!(helps.contains_key(family), "no HELP for {family}: {line}");
            let key = series_key(name, &labels);
            assert!(samples.insert(key, value).is_none(), "repeated: {line}");
        }
        Exposition { samples, types }
    }

    /// A sample's value; panics when the series is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let key = series_key(name, &labels);
        *self
            .samples
            .get(&key)
            .unwrap_or_else(|| panic!("no series {key}"))
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `k="v",k2="v2"` (values with `\"`, `\\` and `\n` escapes).
fn parse_labels(mut inner: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !inner.is_empty() {
        let (key, rest) = inner.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
        assert!(is_name(key), "bad label name in {line}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("{line}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        };
        labels.insert(key.to_owned(), value);
        inner = &rest[end + 1..];
        inner = inner.strip_prefix(',').unwrap_or(inner);
    }
    labels
}

fn series_key(name: &str, labels: &BTreeMap<String, String>) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

async fn scrape(addr: SocketAddr) -> Exposition {
    let answer = get(addr, "/metrics").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        answer.headers
    );
    Exposition::parse(&answer.body)
}

/// Scrapes until `name{labels}` reaches `want` (sampled gauges), returning
/// the last exposition.
async fn scrape_until(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> Exposition {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let exposition = scrape(addr).await;
        let value = exposition.value(name, labels);
        if value == want {
            return exposition;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} stayed {value}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const REASONS: [&str; 10] = [
    "invalid",
    "pow",
    "duplicate",
    "blocked",
    "rate-limited",
    "restricted",
    "auth-required",
    "mute",
    "error",
    "other",
];

#[tokio::test]
async fn the_counters_say_exactly_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn(dir.path(), IpAddr::V4(Ipv4Addr::LOCALHOST), "").await;
    let before = scrape(relay.addr).await;
    for reason in REASONS {
        assert_eq!(
            before.value("nostr_relayd_events_rejected_total", &[("reason", reason)]),
            0.0
        );
    }
    assert_eq!(before.value("nostr_relayd_events_received_total", &[]), 0.0);
    assert_eq!(
        before.types["nostr_relayd_query_duration_seconds"],
        "histogram"
    );
    assert_eq!(before.types["nostr_relayd_write_batch_events"], "histogram");
    assert_eq!(
        before.types["nostr_relayd_events_rejected_total"],
        "counter"
    );
    assert_eq!(before.types["nostr_relayd_events_stored"], "gauge");
    assert_eq!(
        before.value(
            "nostr_relayd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // A live subscriber; limit 0: no stored query, so no latency sample.
    let mut listener = Client::connect(&relay.url).await;
    let live = listener
        .req("live", vec![json!({"kinds": [1], "limit": 0})])
        .await;
    assert!(live.is_empty());

    let mut client = Client::connect(&relay.url).await;
    let keys = Keys::generate();
    let t = now() - 100;
    let first = event(&keys, 1, "first", &[], t);
    let second = event(&keys, 1, "second", &[&["t", "metrics"]], t + 1);
    let profile = event(&keys, 0, r#"{"name":"a"}"#, &[], t);
    let newer_profile = event(&keys, 0, r#"{"name":"b"}"#, &[], t + 1);
    let article = event(&keys, 30023, "long", &[&["d", "x"]], t);
    let deletion = event(&keys, 5, "", &[&["e", &second.id.to_hex()]], t + 2);
    for accepted in [
        &first,
        &second,
        &profile,
        &newer_profile,
        &article,
        &deletion,
    ] {
        assert_eq!(client.publish(accepted).await, (true, String::new()));
    }
    let (ok, reason) = client.publish(&first).await;
    assert!(ok && reason.starts_with("duplicate:"), "{reason}");
    let (ok, reason) = client.publish(&profile).await;
    assert!(!ok && reason.starts_with("blocked:"), "{reason}");
    let mut forged = to_value(&event(&keys, 1, "forged", &[], t));
    forged["sig"] = json!("0".repeat(128));
    let (ok, reason) = client.publish_raw(&forged).await;
    assert!(!ok && reason.starts_with("invalid:"), "{reason}");
    // Both notes reached the live subscriber.
    for _ in 0..2 {
        let message = listener.recv().await;
        assert_eq!(message[0], "EVENT");
    }

    let pubkey = keys.public_key().to_hex();
    let by_id = client
        .query("ids", vec![json!({"ids": [first.id.to_hex()]})])
        .await;
    assert_eq!(by_id.len(), 1);
    client.query("kinds", vec![json!({"kinds": [1]})]).await;
    client
        .query("authors", vec![json!({"authors": [pubkey]})])
        .await;
    // The costliest filter names the shape: a scan.
    client
        .query(
            "mixed",
            vec![json!({"ids": [first.id.to_hex()]}), json!({"since": t})],
        )
        .await;
    let counted = client.count("c", vec![json!({"kinds": [1]})]).await;
    assert_eq!(counted[0], "COUNT");

    let m = scrape_until(
        relay.addr,
        "nostr_relayd_events_stored",
        &[("class", "regular")],
        2.0, // first and the deletion; second was deleted
    )
    .await;
    assert_eq!(
        m.value("nostr_relayd_events_stored", &[("class", "replaceable")]),
        1.0
    );
    assert_eq!(
        m.value("nostr_relayd_events_stored", &[("class", "addressable")]),
        1.0
    );
    assert_eq!(
        m.value("nostr_relayd_events_stored", &[("class", "ephemeral")]),
        0.0
    );

    assert_eq!(m.value("nostr_relayd_events_received_total", &[]), 9.0);
    assert_eq!(m.value("nostr_relayd_events_accepted_total", &[]), 6.0);
    let rejected = |reason| m.value("nostr_relayd_events_rejected_total", &[("reason", reason)]);
    for reason in REASONS {
        let want = match reason {
            "duplicate" | "blocked" | "invalid" => 1.0,
            _ => 0.0,
        };
        assert_eq!(rejected(reason), want, "{reason}");
    }
    let messages = |verb| m.value("nostr_relayd_messages_total", &[("verb", verb)]);
    assert_eq!(messages("EVENT"), 9.0);
    assert_eq!(messages("REQ"), 5.0);
    assert_eq!(messages("CLOSE"), 4.0);
    assert_eq!(messages("COUNT"), 1.0);
    assert_eq!(messages("AUTH"), 0.0);
    assert_eq!(messages("invalid"), 0.0);

    let latency = "nostr_relayd_query_duration_seconds";
    for (shape, want) in [
        ("ids", 1.0),
        ("authors", 1.0),
        ("tag", 0.0),
        ("kinds", 1.0),
        ("search", 0.0),
        ("scan", 1.0),
    ] {
        let count = m.value(&format!("{latency}_count"), &[("shape", shape)]);
        assert_eq!(count, want, "{shape}");
        let inf = m.value(
            &format!("{latency}_bucket"),
            &[("shape", shape), ("le", "+Inf")],
        );
        assert_eq!(inf, want, "{shape}");
        // Seconds: each query took more than nothing and less than its 5 s budget.
        let sum = m.value(&format!("{latency}_sum"), &[("shape", shape)]);
        assert!(sum >= 0.0 && sum <= 5.0 * want, "{shape}: {sum}");
    }
    // The six accepted events and the old profile (refused by the writer:
    // a newer version is stored) went through group commits; the
    // duplicate and the forged event were refused before.
    let batch = "nostr_relayd_write_batch_events";
    assert_eq!(m.value(&format!("{batch}_sum"), &[]), 7.0);
    let batches = m.value(&format!("{batch}_count"), &[]);
    assert!((1.0..=7.0).contains(&batches), "{batches}");
    assert_eq!(
        m.value(&format!("{batch}_bucket"), &[("le", "+Inf")]),
        batches
    );

    assert_eq!(m.value("nostr_relayd_fanout_deliveries_total", &[]), 2.0);
    assert_eq!(
        m.value("nostr_relayd_slow_consumers_dropped_total", &[]),
        0.0
    );
    assert_eq!(m.value("nostr_relayd_connections", &[]), 2.0);
    assert_eq!(m.value("nostr_relayd_connections_opened_total", &[]), 2.0);
    assert_eq!(m.value("nostr_relayd_subscriptions", &[]), 1.0);
    assert!(m.value("nostr_relayd_database_bytes", &[]) > 0.0);
    assert!(m.value("nostr_relayd_wal_bytes", &[]) >= 0.0);
}

/// A local address other than loopback, from which requests are not
/// local: the machine's own (found through the routing table), or one
/// added to `lo` for this test (needs root, as in CI).
fn non_loopback_address() -> (Ipv4Addr, Option<AddedAddress>) {
    if let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0")
        && socket.connect("192.0.2.1:9").is_ok()
        && let Ok(SocketAddr::V4(local)) = socket.local_addr()
        && !local.ip().is_loopback()
        && !local.ip().is_unspecified()
    {
        return (*local.ip(), None);
    }
    let ip = Ipv4Addr::new(198, 51, 100, 77);
    let added = Command::new("ip")
        .args(["addr", "add", "198.51.100.77/32", "dev", "lo"])
        .status();
    match added {
        Ok(status) if status.success() => (ip, Some(AddedAddress)),
        other => panic!(
            "this test needs a non-loopback local address: no route gives one, and \
             `ip addr add 198.51.100.77/32 dev lo` failed ({other:?}); run as root"
        ),
    }
}

/// Removes the address `non_loopback_address` added, even on failure.
struct AddedAddress;

impl Drop for AddedAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", "198.51.100.77/32", "dev", "lo"])
            .status();
    }
}

#[tokio::test]
async fn metrics_are_served_only_to_loopback_without_proxy_headers() {
    let (other, _added) = non_loopback_address();
    let dir = tempfile::tempdir().unwrap();
    let relay = spawn(dir.path(), IpAddr::V4(Ipv4Addr::UNSPECIFIED), "").await;
    let port = relay.addr.port();
    assert_eq!(get(relay.addr, "/metrics").await.status, 200);
    for header in ["X-Forwarded-For", "X-Real-IP", "Forwarded"] {
        let answer = request(
            None,
            relay.addr,
            "GET",
            "/metrics",
            &[(header, "203.0.113.9")],
        )
        .await;
        assert_eq!(answer.status, 404, "{header}");
        assert!(!answer.body.contains("nostr_relayd"), "{header}");
    }
    // From the machine's other address: the peer is not loopback.
    let remote = SocketAddr::new(IpAddr::V4(other), port);
    let from = Some(IpAddr::V4(other));
    let answer = request(from, remote, "GET", "/metrics", &[]).await;
    assert_eq!(answer.status, 404, "{other}");
    assert!(!answer.body.contains("nostr_relayd"));
    // What load balancers and the web page read is public.
    let health = request(from, remote, "GET", "/health", &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));
    let stats = request(
        from,
        remote,
        "GET",
        "/stats.json",
        &[("X-Forwarded-For", "203.0.113.9")],
    )
    .await;
    assert_eq!(stats.status, 200);
    // The debug counters stay loopback-only, as before.
    assert_eq!(
        request(from, remote, "GET", "/debug/counters", &[])
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn a_metrics_listener_takes_metrics_off_the_relay_port() {
    let dir = tempfile::tempdir().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let toml = format!("[metrics]\nlisten = \"{metrics}\"\n");
    let relay = spawn(dir.path(), IpAddr::V4(Ipv4Addr::LOCALHOST), &toml).await;
    assert_eq!(get(relay.addr, "/metrics").await.status, 404);
    let scraped = get(metrics, "/metrics").await;
    assert_eq!(scraped.status, 200);
    Exposition::parse(&scraped.body);
    // Served to whoever reaches the listener, proxy or not.
    let proxied = request(
        None,
        metrics,
        "GET",
        "/metrics",
        &[("X-Forwarded-For", "203.0.113.9")],
    )
    .await;
    assert_eq!(proxied.status, 200);
    for addr in [relay.addr, metrics] {
        let health = get(addr, "/health").await;
        assert_eq!(
            (health.status, health.json()),
            (200, json!({"status": "ok"}))
        );
    }
    assert_eq!(get(metrics, "/stats.json").await.status, 404);
    assert_eq!(get(metrics, "/").await.status, 404);
    assert_eq!(
        request(None, metrics, "POST", "/metrics", &[]).await.status,
        405
    );
}

#[tokio::test]
async fn disabled_metrics_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let toml = format!("[metrics]\nenabled = false\nlisten = \"{metrics}\"\n");
    let relay = spawn(dir.path(), IpAddr::V4(Ipv4Addr::LOCALHOST), &toml).await;
    let answer = get(relay.addr, "/metrics").await;
    assert_eq!(answer.status, 404);
    // Nothing listens on metrics.listen either.
    assert!(TcpStream::connect(metrics).await.is_err());
    assert_eq!(get(relay.addr, "/health").await.status, 200);
    assert_eq!(get(relay.addr, "/stats.json").await.status, 200);
}

#[tokio::test]
async fn stats_json_has_its_shape_and_moves() {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[info]\nname = \"metrics test\"\n";
    let relay = spawn(dir.path(), IpAddr::V4(Ipv4Addr::LOCALHOST), toml).await;
    let answer = get(relay.addr, "/stats.json").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), Some("*"));
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let stats = answer.json();
    let keys: Vec<&str> = stats
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "connections",
            "database_bytes",
            "events_per_second",
            "events_stored",
            "name",
            "subscriptions",
            "uptime_seconds",
            "version"
        ]
    );
    assert_eq!(stats["name"], "metrics test");
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(stats["events_stored"], 0);
    assert_eq!(stats["connections"], 0);
    assert!(stats["uptime_seconds"].is_u64());
    assert!(stats["database_bytes"].is_u64());
    assert!(stats["events_per_second"].is_f64());
    let preflight = request(None, relay.addr, "OPTIONS", "/stats.json", &[]).await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));

    let mut client = Client::connect(&relay.url).await;
    client
        .req("open", vec![json!({"kinds": [1], "limit": 0})])
        .await;
    let keys = Keys::generate();
    for i in 0..5 {
        let note = note(&keys, &format!("note {i}"));
        assert_eq!(client.publish(&note).await, (true, String::new()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let stats = get(relay.addr, "/stats.json").await.json();
        if stats["events_stored"] == 5 && stats["events_per_second"].as_f64().unwrap() > 0.0 {
            assert_eq!(stats["connections"], 1);
            assert_eq!(stats["subscriptions"], 1);
            assert!(stats["database_bytes"].as_u64().unwrap() > 0);
            // At most 5 events in a window of at least a second.
            assert!(
                stats["events_per_second"].as_f64().unwrap() <= 5.0,
                "{stats}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats did not move: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `/health` turns to 503 "draining" as soon as a stop begins, and stays
/// so while connections drain (here: an EVENT waits for a write-policy
/// plugin that never answers, and its OK is owed before the relay stops).
#[tokio::test]
async fn health_says_draining_while_the_relay_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics.listen = "127.0.0.1:0".into();
    config.plugin.command = "sleep 30".into();
    config.plugin.timeout_ms = 3000;
    let relay = nostr_relayd::start(config).await.unwrap();
    let metrics = relay.metrics_addr.expect("the metrics listener is bound");
    let health = get(metrics, "/health").await;
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": "ok"}))
    );
    let health = get(relay.local_addr, "/health").await;
    assert_eq!(health.status, 200);

    let mut client = Client::connect(&format!("ws://{}/", relay.local_addr)).await;
    let stuck = note(&Keys::generate(), "waits for the plugin");
    client
        .send_text(format!(r#"["EVENT",{}]"#, stuck.as_json()))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(relay.shutdown());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let health = get(metrics, "/health").await;
        if health.status == 503 {
            assert_eq!(health.json(), json!({"status": "draining"}));
            break;
        }
        assert_eq!(health.status, 200);
        assert!(tokio::time::Instant::now() < deadline, "never draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!stopping.is_finished(), "the drain outlasted the check");
    stopping.await.unwrap();
    // Once stopped, the metrics listener is gone too.
    assert!(TcpStream::connect(metrics).await.is_err());
}
