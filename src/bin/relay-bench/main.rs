//! `relay-bench`: a load generator for any NIP-01 relay (this one,
//! strfry, nostr-rs-relay, …). It speaks only standard NIP-01 over
//! WebSocket (but for the NIP-45, NIP-50 and NIP-77 scenarios) and measures:
//!
//! * `ingest`: EVENT → OK throughput and latency from many connections;
//! * `query`: REQ → EOSE rate and latency for the filter shapes clients use;
//! * `fanout`: publish → live delivery latency to many subscribers, and that
//!   every subscriber got exactly the events its filters match;
//! * `search`: NIP-50 search → EOSE latency and hits for word and phrase
//!   searches (the relay must support NIP-50);
//! * `connections`: memory per idle subscribed connection (with `--pid`);
//! * `count`: NIP-45 COUNT latency of follower and reaction counts (the
//!   relay must support NIP-45);
//! * `neg`: NIP-77 negentropy sync against a full download of the same set
//!   (the one scenario beyond NIP-01: the relay must support NIP-77);
//! * `corpus`: no relay; the corpus as JSON lines in a file, for
//!   `nostr-relayd import` and other relays' import tools.
//!
//! Events come from the crate's deterministic corpus (`--seed`, `--authors`,
//! `--now`) and are signed before any clock starts, so the client's signing
//! cost is never measured. Progress goes to stderr (only at a terminal), the
//! result to stdout: one human line, or one JSON object with `--json`.
//! See `benches/README.md`.

mod client;
mod connections;
mod corpus;
mod count;
mod fanout;
mod ingest;
mod neg;
mod query;
mod search;
mod stats;

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use nostr_relayd::corpus::{Corpus, CorpusEvent};
use serde_json::Value;

/// Load generator for Nostr relays (NIP-01 only).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// WebSocket URL of the relay (a loopback address is expected).
    #[arg(long, global = true, default_value = "ws://127.0.0.1:7777")]
    pub url: String,
    /// Corpus seed: the same seed gives the same events and query targets.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,
    /// Number of corpus authors.
    #[arg(long, global = true, default_value_t = 1000)]
    pub authors: usize,
    /// Reference unix time of the corpus: events are spread over the 30 days
    /// before it. Default: now rounded down to the hour, so an `ingest` and a
    /// later `query` in the same hour agree; otherwise pass the value
    /// `ingest` printed. (`fanout` always uses the real now, for new events.)
    #[arg(long, global = true, value_name = "UNIX_SECONDS")]
    pub now: Option<i64>,
    /// Print one JSON object with every figure on stdout instead of the
    /// human summary line.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for any one answer (connect, OK, EOSE, delivery)
    /// before counting it as an error.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    pub timeout: u64,
}

impl Common {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.max(1))
    }

    /// `--now`, or now rounded down to the hour; printed on stderr.
    pub fn corpus_now(&self) -> i64 {
        let now = self.now.unwrap_or_else(|| unix_now() / 3600 * 3600);
        eprintln!(
            "corpus: seed {}, {} authors, now {now}{}",
            self.seed,
            self.authors,
            if self.now.is_none() {
                " (this hour; pass --now to reproduce later)"
            } else {
                ""
            }
        );
        now
    }

    /// Common fields of every JSON report.
    pub fn json_fields(&self, scenario: &str) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        map.insert("scenario".into(), scenario.into());
        map.insert("url".into(), self.url.clone().into());
        map.insert("seed".into(), self.seed.into());
        map.insert("authors".into(), self.authors.into());
        map
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// Publish N events from C connections, W in flight each; EVENT→OK rate and latency.
    Ingest(ingest::IngestArgs),
    /// REQ→EOSE rate and latency of six client filter shapes against an ingested corpus.
    Query(query::QueryArgs),
    /// Live delivery latency and exactness to S subscribers while one connection publishes.
    Fanout(fanout::FanoutArgs),
    /// Open N idle subscribed connections; relay memory per connection with --pid.
    Connections(connections::ConnectionsArgs),
    /// NIP-50 search latency and hits for word and phrase searches against an ingested corpus.
    Search(search::SearchArgs),
    /// NIP-45 COUNT latency of follower and reaction counts on popular targets, checked.
    Count(count::CountArgs),
    /// NIP-77 sync of the stored set with a small difference, against downloading it all by REQ.
    Neg(neg::NegArgs),
    /// Write N corpus events as JSON lines to a file (for `nostr-relayd import`,
    /// `strfry import`, …); no relay is contacted.
    Corpus(corpus::CorpusArgs),
}

/// What a scenario found.
pub struct Report {
    /// One line for people.
    pub human: String,
    /// Every figure.
    pub json: Value,
    /// False when the run found errors (failed connections, lost events…).
    pub success: bool,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Generates and signs `count` events on every core, before any timing;
/// returns them with the seconds it took (also printed on stderr).
pub fn presign(corpus: &mut Corpus, count: usize) -> (Vec<CorpusEvent>, f64) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("pre-signing {count} events on {threads} threads…");
    let start = Instant::now();
    let events = corpus.generate(count, threads);
    let secs = start.elapsed().as_secs_f64();
    eprintln!("pre-signed {count} events in {secs:.2} s");
    (events, secs)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("relay-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let common = cli.common;
    let result = runtime.block_on(async {
        match &cli.scenario {
            Scenario::Ingest(args) => ingest::run(&common, args).await,
            Scenario::Query(args) => query::run(&common, args).await,
            Scenario::Fanout(args) => fanout::run(&common, args).await,
            Scenario::Connections(args) => connections::run(&common, args).await,
            Scenario::Search(args) => search::run(&common, args).await,
            Scenario::Count(args) => count::run(&common, args).await,
            Scenario::Neg(args) => neg::run(&common, args).await,
            Scenario::Corpus(args) => corpus::run(&common, args).await,
        }
    });
    // Tasks still blocked on a dead socket must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(report) => {
            if common.json {
                println!("{}", report.json);
            } else {
                println!("{}", report.human);
            }
            if report.success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("relay-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
