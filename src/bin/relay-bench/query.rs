//! `query`: C connections, each keeping one REQ outstanding (REQ → EOSE →
//! CLOSE → next) for a fixed time, cycling through six filter shapes that
//! real clients send. The targets (followed authors, hot notes, pubkeys,
//! note ids) come from regenerating the corpus an `ingest` run stored, so
//! `--seed`, `--authors`, `--now` and `--count` must be the ones it used.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nostr_relayd::corpus::{Corpus, QueryTargets};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use crate::client::{self, ReqError};
use crate::stats::{self, Latency, ms};
use crate::{Common, Report};

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    /// Connections, each with one REQ outstanding.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Events the `ingest` run published (needed to regenerate its corpus).
    #[arg(long, default_value_t = 100_000)]
    pub count: usize,
}

/// The filter shapes, in round-robin order.
const SHAPES: [&str; 6] = [
    "home",
    "thread",
    "notifications",
    "profile",
    "global",
    "ids",
];

/// Figures of one shape.
#[derive(Default, Clone)]
struct ShapeStats {
    count: u64,
    events: u64,
    closed: u64,
    latency: Latency,
    closed_reasons: Vec<String>,
}

struct ConnResult {
    shapes: Vec<ShapeStats>,
    error: Option<String>,
}

/// Everything the connections read.
struct Targets {
    /// The home-feed filter, identical for every request.
    home: String,
    hot_notes: Vec<String>,
    pubkeys: Vec<String>,
    note_ids: Vec<String>,
}

impl Targets {
    fn new(t: &QueryTargets) -> Targets {
        let hex = |list: &[[u8; 32]]| list.iter().map(hex::encode).collect::<Vec<_>>();
        Targets {
            home: json!({"authors": hex(&t.follows), "kinds": [1, 6], "limit": 50}).to_string(),
            hot_notes: hex(&t.hot_notes),
            pubkeys: hex(&t.pubkeys),
            note_ids: hex(&t.note_ids),
        }
    }

    /// The filter JSON of shape `shape`, with random targets.
    fn filter(&self, shape: usize, rng: &mut StdRng) -> String {
        let pick =
            |list: &[String], rng: &mut StdRng| list[rng.random_range(0..list.len())].clone();
        match shape {
            0 => self.home.clone(),
            1 => json!({"#e": [pick(&self.hot_notes, rng)]}).to_string(),
            2 => json!({"#p": [pick(&self.pubkeys, rng)], "kinds": [1, 6, 7, 9735], "limit": 100})
                .to_string(),
            3 => json!({"kinds": [0], "authors": [pick(&self.pubkeys, rng)]}).to_string(),
            4 => json!({"kinds": [1], "limit": 100}).to_string(),
            _ => {
                let ids: Vec<String> = (0..20).map(|_| pick(&self.note_ids, rng)).collect();
                json!({ "ids": ids }).to_string()
            }
        }
    }
}

pub async fn run(common: &Common, args: &QueryArgs) -> Result<Report, String> {
    let now = common.corpus_now();
    let started = Instant::now();
    let mut corpus = Corpus::new(common.seed, common.authors, now);
    for _ in 0..args.count {
        corpus.next_unsigned();
    }
    let targets = corpus.query_targets();
    eprintln!(
        "regenerated the {}-event corpus (unsigned) in {:.2} s",
        args.count,
        started.elapsed().as_secs_f64()
    );
    if targets.note_ids.is_empty() || targets.pubkeys.is_empty() {
        return Err("the corpus has no notes: use a larger --count".into());
    }
    let targets = Arc::new(Targets::new(&targets));
    let connections = args.connections.max(1);
    let duration = Duration::from_secs(args.duration.max(1));

    let sockets = client::connect_many(&common.url, common.timeout(), connections).await?;
    eprintln!(
        "{connections} connections open; querying for {} s",
        duration.as_secs()
    );
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let ticker = stats::Ticker::start("query", "REQs", start, duration, done.clone());
    let mut tasks = Vec::with_capacity(connections);
    for (index, ws) in sockets.into_iter().enumerate() {
        let targets = targets.clone();
        let done = done.clone();
        let seed = common.seed;
        let timeout = common.timeout();
        tasks.push(tokio::spawn(async move {
            query_loop(ws, &targets, index, seed, deadline, timeout, &done).await
        }));
    }
    let mut results = Vec::with_capacity(connections);
    for task in tasks {
        match task.await {
            Ok(result) => results.push(result),
            Err(error) => return Err(format!("a query task failed: {error}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    ticker.finish();

    let mut shapes = vec![ShapeStats::default(); SHAPES.len()];
    let mut errors = Vec::new();
    for r in &results {
        for (total, s) in shapes.iter_mut().zip(&r.shapes) {
            total.count += s.count;
            total.events += s.events;
            total.closed += s.closed;
            total.latency.merge(&s.latency);
            for reason in &s.closed_reasons {
                if total.closed_reasons.len() < 3 && !total.closed_reasons.contains(reason) {
                    total.closed_reasons.push(reason.clone());
                }
            }
        }
        if let Some(error) = &r.error {
            errors.push(error.clone());
        }
    }
    let total: u64 = shapes.iter().map(|s| s.count).sum();
    let closed: u64 = shapes.iter().map(|s| s.closed).sum();
    let total_events: u64 = shapes.iter().map(|s| s.events).sum();
    let req_per_sec = total as f64 / elapsed;
    let mean = |s: &ShapeStats| {
        if s.count > 0 {
            s.events as f64 / s.count as f64
        } else {
            0.0
        }
    };

    let mut human = format!(
        "query: {connections} conns × {} s: {req_per_sec:.0} REQ/s ({total} REQs, {closed} CLOSED)",
        duration.as_secs()
    );
    for (name, s) in SHAPES.iter().zip(&shapes) {
        human.push_str(&format!(
            "; {name} p50 {} p99 {} {:.1} ev",
            ms(s.latency.quantile_ms(0.5)),
            ms(s.latency.quantile_ms(0.99)),
            mean(s)
        ));
    }
    if !errors.is_empty() {
        human.push_str(&format!(
            "; {} connections failed, first: {}",
            errors.len(),
            errors[0]
        ));
    }
    if total > 0 && total_events == 0 {
        eprintln!(
            "warning: no REQ returned any event; was the relay filled by `ingest` with the same \
             --seed, --authors, --now and --count?"
        );
    }

    let mut map = common.json_fields("query");
    map.insert("now".into(), now.into());
    map.insert("count".into(), args.count.into());
    map.insert("connections".into(), connections.into());
    map.insert("duration_secs".into(), stats::round3(elapsed).into());
    map.insert("reqs".into(), total.into());
    map.insert("req_per_sec".into(), stats::round3(req_per_sec).into());
    map.insert("closed".into(), closed.into());
    map.insert(
        "shapes".into(),
        SHAPES
            .iter()
            .zip(&shapes)
            .map(|(name, s)| {
                (
                    name.to_string(),
                    json!({
                        "count": s.count,
                        "closed": s.closed,
                        "closed_reasons": s.closed_reasons,
                        "mean_events": stats::round3(mean(s)),
                        "latency": s.latency.to_json(),
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    map.insert("failed_connections".into(), errors.len().into());
    map.insert(
        "errors".into(),
        json!(errors.iter().take(5).collect::<Vec<_>>()),
    );
    Ok(Report {
        human,
        json: Value::Object(map),
        success: errors.is_empty() && closed == 0,
    })
}

/// One connection: REQ → EOSE → CLOSE, round-robin over the shapes, until
/// `deadline` (the REQ in progress then is finished).
async fn query_loop(
    ws: client::Ws,
    targets: &Targets,
    index: usize,
    seed: u64,
    deadline: Instant,
    timeout: Duration,
    done: &AtomicU64,
) -> ConnResult {
    let (mut sink, mut stream) = ws.split();
    let mut rng =
        StdRng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut result = ConnResult {
        shapes: vec![ShapeStats::default(); SHAPES.len()],
        error: None,
    };
    let mut n = 0usize;
    while Instant::now() < deadline {
        let shape = (index + n) % SHAPES.len();
        let filter = targets.filter(shape, &mut rng);
        let sub = format!("q{n}");
        n += 1;
        let sent = Instant::now();
        let outcome = client::req_until_eose(&mut sink, &mut stream, &sub, &filter, timeout).await;
        let latency = sent.elapsed();
        let stats = &mut result.shapes[shape];
        match outcome {
            Ok(events) => {
                stats.count += 1;
                stats.events += events;
                stats.latency.record(latency);
                done.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = client::send(&mut sink, client::close_frame(&sub)).await {
                    result.error = Some(format!("connection {index}: {error}"));
                    break;
                }
            }
            Err(ReqError::Closed(reason)) => {
                stats.closed += 1;
                if stats.closed_reasons.len() < 3 && !stats.closed_reasons.contains(&reason) {
                    stats.closed_reasons.push(reason);
                }
            }
            Err(ReqError::Failed(error)) => {
                result.error = Some(format!("connection {index}: {error}"));
                break;
            }
        }
    }
    client::close(&mut sink).await;
    result
}
