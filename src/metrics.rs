//! What the relay is doing, in numbers: Prometheus metrics for `/metrics`,
//! and each relay's live figures for `/health` and `/stats.json`.
//!
//! [`global`] is the process's one Prometheus recorder, also installed as
//! the `metrics` facade's global recorder. It is process-wide: relays started
//! in one process (as tests do) share it, and their counters add up.
//! Every metric is registered once, up front, with its HELP text, and the
//! hot paths hold its handle: recording is one atomic add (or one
//! histogram sample), never a look-up by name, a label string or an
//! allocation. Labels come from the fixed sets below ([`Reason`],
//! [`QueryShape`], [`Verb`], [`KindClass`]), so the number of series never
//! grows with traffic. (The gauges each relay's sampler sets, database size
//! and events stored, show the relay sampled last when a process runs
//! several.)
//!
//! [`Monitor`] is one relay's own view: accepted events per second, what the
//! sampler last read of the store (events stored per kind class, from the
//! `event_class_count` table its triggers keep; file sizes), and whether the store
//! answered its last probe. The sampler ([`sample`]) refreshes it every
//! [`SAMPLE_PERIOD`], so no request ever queries the database.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use crate::nostr::{ClientMessage, Filter, KindClass, Rejection};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::store::stats::CLASSES;

/// Why an EVENT was not newly accepted: the machine-readable prefix of its
/// `OK` message (NIP-01), or `other` for a reason without a known prefix (a
/// write-policy plugin's own words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Invalid,
    Pow,
    /// `OK true "duplicate: …"`: answered true, but nothing new was stored.
    Duplicate,
    Blocked,
    RateLimited,
    Restricted,
    AuthRequired,
    Mute,
    Error,
    Other,
}

impl Reason {
    const ALL: [Reason; 10] = [
        Reason::Invalid,
        Reason::Pow,
        Reason::Duplicate,
        Reason::Blocked,
        Reason::RateLimited,
        Reason::Restricted,
        Reason::AuthRequired,
        Reason::Mute,
        Reason::Error,
        Reason::Other,
    ];

    /// The reason an `OK` message's text gives.
    pub fn of(message: &str) -> Reason {
        let prefix = message.split_once(':').map_or("", |(prefix, _)| prefix);
        match prefix {
            "invalid" => Reason::Invalid,
            "pow" => Reason::Pow,
            "duplicate" => Reason::Duplicate,
            "blocked" => Reason::Blocked,
            "rate-limited" => Reason::RateLimited,
            "restricted" => Reason::Restricted,
            "auth-required" => Reason::AuthRequired,
            "mute" => Reason::Mute,
            "error" => Reason::Error,
            _ => Reason::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::Pow => "pow",
            Reason::Duplicate => "duplicate",
            Reason::Blocked => "blocked",
            Reason::RateLimited => "rate-limited",
            Reason::Restricted => "restricted",
            Reason::AuthRequired => "auth-required",
            Reason::Mute => "mute",
            Reason::Error => "error",
            Reason::Other => "other",
        }
    }
}

/// The index a REQ is answered from, as `store::query` plans it: ids, then
/// authors, then a tag, then kinds; `scan` when a filter names none of them
/// (one range per stored kind), `search` for NIP-50. Ordered cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueryShape {
    Ids,
    Authors,
    Tag,
    Kinds,
    Search,
    Scan,
}

impl QueryShape {
    const ALL: [QueryShape; 6] = [
        QueryShape::Ids,
        QueryShape::Authors,
        QueryShape::Tag,
        QueryShape::Kinds,
        QueryShape::Search,
        QueryShape::Scan,
    ];

    /// The shape of one filter.
    pub fn of_filter(filter: &Filter) -> QueryShape {
        if filter.search.is_some() {
            QueryShape::Search
        } else if filter.ids.is_some() {
            QueryShape::Ids
        } else if filter.authors.is_some() {
            QueryShape::Authors
        } else if !filter.tags.is_empty() {
            QueryShape::Tag
        } else if filter.kinds.is_some() {
            QueryShape::Kinds
        } else {
            QueryShape::Scan
        }
    }

    /// The shape of a REQ: that of its costliest filter, which its latency
    /// mostly follows.
    pub fn of_req(filters: &[Filter]) -> QueryShape {
        filters
            .iter()
            .map(QueryShape::of_filter)
            .max()
            .unwrap_or(QueryShape::Scan)
    }

    fn label(self) -> &'static str {
        match self {
            QueryShape::Ids => "ids",
            QueryShape::Authors => "authors",
            QueryShape::Tag => "tag",
            QueryShape::Kinds => "kinds",
            QueryShape::Search => "search",
            QueryShape::Scan => "scan",
        }
    }
}

/// A client message's type; `invalid` for one refused before its type
/// could be trusted (not JSON, unknown verb, malformed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Event,
    Req,
    Count,
    Close,
    Auth,
    NegOpen,
    NegMsg,
    NegClose,
    Invalid,
}

impl Verb {
    const ALL: [Verb; 9] = [
        Verb::Event,
        Verb::Req,
        Verb::Count,
        Verb::Close,
        Verb::Auth,
        Verb::NegOpen,
        Verb::NegMsg,
        Verb::NegClose,
        Verb::Invalid,
    ];

    /// The type of a parsed (or refused) message.
    pub fn of(parsed: &Result<ClientMessage, Rejection>) -> Verb {
        match parsed {
            Ok(ClientMessage::Event(_)) => Verb::Event,
            Ok(ClientMessage::Req { .. }) => Verb::Req,
            Ok(ClientMessage::Count { .. }) => Verb::Count,
            Ok(ClientMessage::Close { .. }) => Verb::Close,
            Ok(ClientMessage::Auth(_)) => Verb::Auth,
            Ok(ClientMessage::NegOpen { .. }) => Verb::NegOpen,
            Ok(ClientMessage::NegMsg { .. }) => Verb::NegMsg,
            Ok(ClientMessage::NegClose { .. }) => Verb::NegClose,
            Err(_) => Verb::Invalid,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verb::Event => "EVENT",
            Verb::Req => "REQ",
            Verb::Count => "COUNT",
            Verb::Close => "CLOSE",
            Verb::Auth => "AUTH",
            Verb::NegOpen => "NEG-OPEN",
            Verb::NegMsg => "NEG-MSG",
            Verb::NegClose => "NEG-CLOSE",
            Verb::Invalid => "invalid",
        }
    }
}

fn class_label(class: KindClass) -> &'static str {
    match class {
        KindClass::Regular => "regular",
        KindClass::Replaceable => "replaceable",
        KindClass::Ephemeral => "ephemeral",
        KindClass::Addressable => "addressable",
    }
}

/// Histogram buckets of REQ latency, in seconds: 0.25 ms to the default
/// `query_timeout_ms` (5 s).
const QUERY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Histogram buckets of group-commit sizes: powers of two up to the
/// default `max_write_batch` (1024).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

const CONNECTIONS: &str = "nostr_relayd_connections";
const CONNECTIONS_OPENED: &str = "nostr_relayd_connections_opened_total";
const SUBSCRIPTIONS: &str = "nostr_relayd_subscriptions";
const MESSAGES: &str = "nostr_relayd_messages_total";
const EVENTS_RECEIVED: &str = "nostr_relayd_events_received_total";
const EVENTS_ACCEPTED: &str = "nostr_relayd_events_accepted_total";
const EVENTS_REJECTED: &str = "nostr_relayd_events_rejected_total";
const EVENTS_STORED: &str = "nostr_relayd_events_stored";
const QUERY_SECONDS: &str = "nostr_relayd_query_duration_seconds";
const FANOUT_DELIVERIES: &str = "nostr_relayd_fanout_deliveries_total";
const SLOW_CONSUMERS: &str = "nostr_relayd_slow_consumers_dropped_total";
const WRITE_BATCH: &str = "nostr_relayd_write_batch_events";
const DATABASE_BYTES: &str = "nostr_relayd_database_bytes";
const WAL_BYTES: &str = "nostr_relayd_wal_bytes";
const BUILD_INFO: &str = "nostr_relayd_build_info";

/// The process's metrics: a handle on each series, registered once.
pub struct Metrics {
    prometheus: PrometheusHandle,
    connections: Gauge,
    connections_opened: Counter,
    subscriptions: Gauge,
    messages: [Counter; Verb::ALL.len()],
    events_received: Counter,
    events_accepted: Counter,
    events_rejected: [Counter; Reason::ALL.len()],
    events_stored: [Gauge; CLASSES.len()],
    query_seconds: [Histogram; QueryShape::ALL.len()],
    fanout_deliveries: Counter,
    slow_consumers: Counter,
    write_batch: Histogram,
    database_bytes: Gauge,
    wal_bytes: Gauge,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics, created (and the recorder installed) on first use.
pub fn global() -> &'static Metrics {
    METRICS.get_or_init(Metrics::install)
}

impl Metrics {
    /// Builds the Prometheus recorder, registers and describes every
    /// series on it, then installs it as the facade's global recorder. The
    /// handles are the recorder's own, so they work even if another
    /// recorder was installed first (then only `metrics::counter!` and
    /// friends elsewhere in the process go to that one).
    fn install() -> Metrics {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(QUERY_SECONDS.into()), QUERY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(WRITE_BATCH.into()), BATCH_BUCKETS)
            })
            // Invariant: it fails only on an empty bucket list; both are constants.
            .expect("histogram buckets are not empty");
        let recorder = builder.build_recorder();
        let metadata = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let key = |name: &'static str, label: Option<(&'static str, &'static str)>| match label {
            Some((k, v)) => Key::from_parts(name, vec![Label::from_static_parts(k, v)]),
            None => Key::from_static_name(name),
        };
        let counter = |name, label| recorder.register_counter(&key(name, label), &metadata);
        let gauge = |name, label| recorder.register_gauge(&key(name, label), &metadata);
        let histogram = |name, label| recorder.register_histogram(&key(name, label), &metadata);
        let help = |name: &'static str, text: &'static str| {
            (KeyName::from_const_str(name), SharedString::const_str(text))
        };
        for (name, text) in [
            help(CONNECTIONS, "Open WebSocket connections."),
            help(SUBSCRIPTIONS, "Open REQ subscriptions (live and loading)."),
            help(
                EVENTS_STORED,
                "Events in the database by kind class (kept by triggers; sampled every few seconds).",
            ),
            help(
                DATABASE_BYTES,
                "Size of the SQLite database file in bytes (sampled).",
            ),
            help(
                WAL_BYTES,
                "Size of the SQLite write-ahead log in bytes (sampled).",
            ),
            help(
                BUILD_INFO,
                "Always 1; the version label says which nostr-relayd runs.",
            ),
        ] {
            recorder.describe_gauge(name, None, text);
        }
        for (name, text) in [
            help(
                CONNECTIONS_OPENED,
                "WebSocket connections opened since start.",
            ),
            help(MESSAGES, "Client messages received, by type."),
            help(
                EVENTS_RECEIVED,
                "EVENT messages answered with OK (= accepted + rejected).",
            ),
            help(
                EVENTS_ACCEPTED,
                "Events accepted as new: stored, or broadcast if ephemeral.",
            ),
            help(
                EVENTS_REJECTED,
                "Events not accepted as new, by the OK message's prefix (duplicate is OK true).",
            ),
            help(
                FANOUT_DELIVERIES,
                "Live events queued for subscribers (one per matching subscription).",
            ),
            help(
                SLOW_CONSUMERS,
                "Connections dropped because their live-event queue overflowed.",
            ),
        ] {
            recorder.describe_counter(name, None, text);
        }
        for (name, text) in [
            help(
                QUERY_SECONDS,
                "REQ answer time (reader queue and database), by the shape of the costliest filter.",
            ),
            help(WRITE_BATCH, "Events per group commit of the writer thread."),
        ] {
            recorder.describe_histogram(name, None, text);
        }
        gauge(BUILD_INFO, Some(("version", env!("CARGO_PKG_VERSION")))).set(1.0);
        let metrics = Metrics {
            prometheus: recorder.handle(),
            connections: gauge(CONNECTIONS, None),
            connections_opened: counter(CONNECTIONS_OPENED, None),
            subscriptions: gauge(SUBSCRIPTIONS, None),
            messages: Verb::ALL.map(|v| counter(MESSAGES, Some(("verb", v.label())))),
            events_received: counter(EVENTS_RECEIVED, None),
            events_accepted: counter(EVENTS_ACCEPTED, None),
            events_rejected: Reason::ALL
                .map(|r| counter(EVENTS_REJECTED, Some(("reason", r.label())))),
            events_stored: CLASSES.map(|c| gauge(EVENTS_STORED, Some(("class", class_label(c))))),
            query_seconds: QueryShape::ALL
                .map(|s| histogram(QUERY_SECONDS, Some(("shape", s.label())))),
            fanout_deliveries: counter(FANOUT_DELIVERIES, None),
            slow_consumers: counter(SLOW_CONSUMERS, None),
            write_batch: histogram(WRITE_BATCH, None),
            database_bytes: gauge(DATABASE_BYTES, None),
            wal_bytes: gauge(WAL_BYTES, None),
        };
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder was already installed; /metrics shows ours only");
        }
        metrics
    }

    /// A client message arrived.
    pub fn message(&self, verb: Verb) {
        self.messages[verb as usize].increment(1);
    }

    /// A WebSocket connection opened.
    pub fn connection_opened(&self) {
        self.connections_opened.increment(1);
    }

    /// A REQ's stored events were read (or the read failed) after `took`.
    pub fn query_finished(&self, shape: QueryShape, took: Duration) {
        self.query_seconds[shape as usize].record(took.as_secs_f64());
    }

    /// `n` live events were queued for subscribers.
    pub fn delivered(&self, n: u64) {
        self.fanout_deliveries.increment(n);
    }

    /// A connection's live queue overflowed; it is being dropped.
    pub fn slow_consumer_dropped(&self) {
        self.slow_consumers.increment(1);
    }

    /// The writer committed a batch of `events` inserts.
    pub fn write_batch(&self, events: usize) {
        self.write_batch.record(events as f64);
    }

    /// Counts one `OK` answer to an EVENT.
    fn event_answered(&self, accepted: bool, reason: Reason) {
        self.events_received.increment(1);
        if accepted && reason != Reason::Duplicate {
            self.events_accepted.increment(1);
        } else {
            self.events_rejected[reason as usize].increment(1);
        }
    }

    /// The Prometheus text exposition, with the gauges known only to the
    /// caller set first.
    pub fn render(&self, connections: usize, subscriptions: usize) -> String {
        self.connections.set(connections as f64);
        self.subscriptions.set(subscriptions as f64);
        self.prometheus.render()
    }
}

/// How often the sampler reads the store and the file sizes.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(2);
/// The window `events_per_second` is averaged over.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// How long `/stats.json` serves the same body.
const STATS_CACHE: Duration = Duration::from_secs(1);
/// The longest a store probe may take before `/health` says the store is
/// not answering (readers busy past every query's own time budget).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the last store probe found.
#[derive(Debug, Clone, PartialEq)]
enum Probe {
    /// None finished yet (the store opened moments ago: it is readable).
    Pending,
    /// Events stored per kind class ([`CLASSES`] order).
    Answered([u64; 4]),
    Failed(String),
}

/// What the sampler last read.
#[derive(Debug)]
struct Sampled {
    probe: Probe,
    /// The last counts read, kept while a later probe fails.
    stored: [u64; 4],
    database_bytes: u64,
    wal_bytes: u64,
    /// (when, accepted events so far), one a second, over [`RATE_WINDOW`].
    accepted: VecDeque<(Instant, u64)>,
}

/// One relay's live figures, shared by its connections, its sampler and
/// the `/health` and `/stats.json` endpoints.
#[derive(Debug)]
pub struct Monitor {
    started: Instant,
    database: PathBuf,
    /// Events this relay accepted as new (the global counter is process-wide).
    accepted: AtomicU64,
    sampled: Mutex<Sampled>,
    stats: Mutex<Option<(Instant, Bytes)>>,
}

/// The figures of `/stats.json` that the server holds, not the monitor.
#[derive(Debug, Clone, Copy)]
pub struct Figures<'a> {
    pub name: &'a str,
    pub connections: usize,
    pub subscriptions: usize,
}

/// `/health`'s answer: the status code and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ok: bool,
    pub body: String,
}

impl Monitor {
    /// A monitor for the relay whose database is at `database`.
    pub fn new(database: PathBuf) -> Monitor {
        Monitor {
            started: Instant::now(),
            database,
            accepted: AtomicU64::new(0),
            sampled: Mutex::new(Sampled {
                probe: Probe::Pending,
                stored: [0; 4],
                database_bytes: 0,
                wal_bytes: 0,
                accepted: VecDeque::new(),
            }),
            stats: Mutex::new(None),
        }
    }

    /// Counts the `OK` answer to one EVENT, here and in [`global`].
    pub fn event_answered(&self, accepted: bool, reason: &str) {
        let reason = Reason::of(reason);
        if accepted && reason != Reason::Duplicate {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        global().event_answered(accepted, reason);
    }

    fn sampled(&self) -> std::sync::MutexGuard<'_, Sampled> {
        self.sampled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this relay can serve: `draining` once shutdown has begun;
    /// the writer thread must be alive and the store must have answered its
    /// last probe.
    pub fn health(&self, draining: bool, writer_alive: bool) -> Health {
        let failure = |reason: &str| Health {
            ok: false,
            body: json!({"status": "error", "reason": reason}).to_string(),
        };
        if draining {
            return Health {
                ok: false,
                body: r#"{"status":"draining"}"#.to_owned(),
            };
        }
        if !writer_alive {
            return failure("the writer thread has stopped");
        }
        match &self.sampled().probe {
            Probe::Failed(reason) => failure(reason),
            Probe::Pending | Probe::Answered(_) => Health {
                ok: true,
                body: r#"{"status":"ok"}"#.to_owned(),
            },
        }
    }

    /// The `/stats.json` body, made at most once per [`STATS_CACHE`].
    pub fn stats_json(&self, live: Figures<'_>) -> Bytes {
        let mut cache = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((made, body)) = cache.as_ref()
            && made.elapsed() < STATS_CACHE
        {
            return body.clone();
        }
        let (stored, database_bytes, per_second) = {
            let sampled = self.sampled();
            let per_second = match (sampled.accepted.front(), sampled.accepted.back()) {
                (Some((first, from)), Some((last, to))) if last > first => {
                    to.saturating_sub(*from) as f64 / last.duration_since(*first).as_secs_f64()
                }
                _ => 0.0,
            };
            (
                sampled.stored.iter().sum::<u64>(),
                sampled.database_bytes,
                per_second,
            )
        };
        let body = json!({
            "name": live.name,
            "connections": live.connections,
            "subscriptions": live.subscriptions,
            "events_stored": stored,
            // Two decimals are plenty for a page, and keep the JSON short.
            "events_per_second": (per_second * 100.0).round() / 100.0,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "database_bytes": database_bytes,
            "version": env!("CARGO_PKG_VERSION"),
        });
        let body = Bytes::from(body.to_string());
        *cache = Some((Instant::now(), body.clone()));
        body
    }

    /// Notes the accepted total now, for the rate over [`RATE_WINDOW`].
    fn note_rate(&self, now: Instant) {
        let total = self.accepted.load(Ordering::Relaxed);
        let mut sampled = self.sampled();
        sampled.accepted.push_back((now, total));
        while sampled
            .accepted
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            sampled.accepted.pop_front();
        }
    }

    /// Reads the database's size (SQLite: the files) and probes the store.
    async fn sample_store(&self, store: &Store) {
        let size = |suffix: &str| {
            let mut path = self.database.clone().into_os_string();
            path.push(suffix);
            std::fs::metadata(path).map_or(0, |m| m.len())
        };
        let (database_bytes, wal_bytes) = match store.database_bytes().await {
            // PostgreSQL: its own size; its WAL is the server's business.
            Ok(Some(bytes)) => (bytes, 0),
            Ok(None) | Err(_) => (size(""), size("-wal")),
        };
        let probe = match tokio::time::timeout(PROBE_TIMEOUT, store.stored_by_class()).await {
            Ok(Ok(stored)) => Probe::Answered(stored),
            Ok(Err(error)) => Probe::Failed(format!("the store failed a probe: {error}")),
            Err(_) => Probe::Failed(format!(
                "the store did not answer a probe within {} s",
                PROBE_TIMEOUT.as_secs()
            )),
        };
        let metrics = global();
        metrics.database_bytes.set(database_bytes as f64);
        metrics.wal_bytes.set(wal_bytes as f64);
        let mut sampled = self.sampled();
        // Logged when the state changes, not at every sample.
        match (&sampled.probe, &probe) {
            (Probe::Failed(_), Probe::Answered(_)) => {
                tracing::info!("the store answers its probe again; /health is ok");
            }
            (Probe::Pending | Probe::Answered(_), Probe::Failed(reason)) => {
                tracing::warn!(%reason, "store probe failed; /health answers 503");
            }
            _ => {}
        }
        if let Probe::Answered(stored) = &probe {
            for (gauge, n) in metrics.events_stored.iter().zip(stored) {
                gauge.set(*n as f64);
            }
            sampled.stored = *stored;
        }
        sampled.probe = probe;
        sampled.database_bytes = database_bytes;
        sampled.wal_bytes = wal_bytes;
    }
}

/// Keeps a relay's [`Monitor`] current until shutdown: the accepted-events
/// rate every second; the store probe, file sizes and the exporter's
/// upkeep (which bounds the memory of histograms between scrapes) every
/// [`SAMPLE_PERIOD`]. It runs through the drain, so `/health` stays true.
pub async fn sample(monitor: Arc<Monitor>, store: Arc<Store>, mut shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = SAMPLE_PERIOD.as_secs().max(1);
    let mut tick: u64 = 0;
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = shutdown.recv(), if !stopping => stopping = true,
            _ = ticker.tick() => {}
        }
        monitor.note_rate(Instant::now());
        if tick.is_multiple_of(every) && !stopping {
            monitor.sample_store(&store).await;
            global().prometheus.run_upkeep();
        }
        tick += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_read_from_the_ok_prefix() {
        assert_eq!(Reason::of("invalid: bad signature"), Reason::Invalid);
        assert_eq!(
            Reason::of("duplicate: already have this event"),
            Reason::Duplicate
        );
        assert_eq!(Reason::of("rate-limited: slow down"), Reason::RateLimited);
        assert_eq!(Reason::of("auth-required: x"), Reason::AuthRequired);
        assert_eq!(Reason::of("spam"), Reason::Other);
        assert_eq!(Reason::of("spam: a plugin's words"), Reason::Other);
        assert_eq!(Reason::of(""), Reason::Other);
        for reason in Reason::ALL {
            assert_eq!(Reason::ALL[reason as usize], reason);
            let message = format!("{}: why", reason.label());
            if reason != Reason::Other {
                assert_eq!(Reason::of(&message), reason);
            }
        }
    }

    #[test]
    fn enum_orders_match_their_handle_arrays() {
        for shape in QueryShape::ALL {
            assert_eq!(QueryShape::ALL[shape as usize], shape);
        }
        for verb in Verb::ALL {
            assert_eq!(Verb::ALL[verb as usize], verb);
        }
    }

    fn filter(value: serde_json::Value) -> Filter {
        Filter::from_value(&value).unwrap()
    }

    #[test]
    fn query_shapes_follow_the_planner() {
        let id = "a".repeat(64);
        let cases = [
            (json!({"ids": [id], "kinds": [1]}), QueryShape::Ids),
            (json!({"authors": [id], "#e": [id]}), QueryShape::Authors),
            (json!({"#p": [id], "kinds": [1]}), QueryShape::Tag),
            (json!({"kinds": [1], "since": 5}), QueryShape::Kinds),
            (json!({"search": "x", "kinds": [1]}), QueryShape::Search),
            (json!({"since": 5}), QueryShape::Scan),
        ];
        for (value, shape) in cases {
            assert_eq!(
                QueryShape::of_filter(&filter(value.clone())),
                shape,
                "{value}"
            );
        }
        let req = [filter(json!({"ids": [id]})), filter(json!({"kinds": [1]}))];
        assert_eq!(QueryShape::of_req(&req), QueryShape::Kinds);
    }

    #[test]
    fn health_says_why_it_is_not_ok() {
        let monitor = Monitor::new(PathBuf::from("/nonexistent"));
        assert_eq!(
            monitor.health(false, true),
            Health {
                ok: true,
                body: r#"{"status":"ok"}"#.into()
            }
        );
        assert_eq!(monitor.health(true, true).body, r#"{"status":"draining"}"#);
        let dead = monitor.health(false, false);
        assert!(!dead.ok);
        assert!(dead.body.contains("writer"), "{}", dead.body);
        monitor.sampled().probe = Probe::Failed("disk I/O error".into());
        let failing = monitor.health(false, true);
        assert!(!failing.ok);
        let body: serde_json::Value = serde_json::from_str(&failing.body).unwrap();
        assert_eq!(body, json!({"status": "error", "reason": "disk I/O error"}));
        // Draining is said first: a load balancer needs no more.
        assert_eq!(monitor.health(true, false).body, r#"{"status":"draining"}"#);
    }

    #[test]
    fn the_rate_is_averaged_over_the_window() {
        let monitor = Monitor::new(PathBuf::from("/nonexistent"));
        let start = Instant::now();
        monitor.note_rate(start);
        monitor.accepted.store(50, Ordering::Relaxed);
        monitor.note_rate(start + Duration::from_secs(5));
        let live = Figures {
            name: "r",
            connections: 1,
            subscriptions: 2,
        };
        let stats: serde_json::Value = serde_json::from_slice(&monitor.stats_json(live)).unwrap();
        assert_eq!(stats["events_per_second"], 10.0);
        // Samples older than the window fall out.
        monitor.accepted.store(60, Ordering::Relaxed);
        monitor.note_rate(start + Duration::from_secs(16));
        assert_eq!(monitor.sampled().accepted.len(), 1);
    }
}
