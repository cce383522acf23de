//! `search`: NIP-50 REQ → EOSE latency, C connections each keeping one
//! search outstanding (REQ → EOSE → CLOSE → next) for a fixed time, cycling
//! through word and phrase searches over the corpus vocabulary, each with
//! `limit` (default 50). Run it against a relay filled by `ingest` with the
//! same `--seed`, `--authors` (for the author and profile searches) and
//! `--now` (for the `until` one). A relay without NIP-50 answers CLOSED,
//! counted as errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nostr_relayd::corpus::Corpus;
use serde_json::{Value, json};

use crate::client::{self, ReqError};
use crate::stats::{self, Latency, ms};
use crate::{Common, Report};

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// Connections, each with one search outstanding.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// The `limit` of every search filter.
    #[arg(long, default_value_t = 50)]
    pub limit: u64,
}

/// The searches, in round-robin order: (name, filter without limit). The
/// corpus draws its notes from a 42-word vocabulary, so a single word is
/// in nearly every note (the worst case for ranking); phrases and the
/// non-Latin "spice" are rarer.
fn shapes(author: &str, name: &str, old: i64) -> Vec<(&'static str, Value)> {
    vec![
        ("word", json!({"search": "coffee"})),
        ("word+kinds", json!({"search": "sunset", "kinds": [1]})),
        ("two words", json!({"search": "schnorr decentralized"})),
        ("phrase", json!({"search": "\"good morning\""})),
        ("long phrase", json!({"search": "\"good morning coffee\""})),
        ("non-latin", json!({"search": "日本語"})),
        ("profile about", json!({"search": "nostr", "kinds": [0]})),
        ("profile name", json!({"search": name, "kinds": [0]})),
        ("word+author", json!({"search": "zap", "authors": [author]})),
        // The worst case: the text matches most notes, the other fields few
        // of them, and only the join can tell.
        ("word+old until", json!({"search": "coffee", "until": old})),
        ("no match", json!({"search": "xylophone"})),
    ]
}

#[derive(Default, Clone)]
struct ShapeStats {
    count: u64,
    hits: u64,
    closed: u64,
    latency: Latency,
    closed_reasons: Vec<String>,
}

struct ConnResult {
    shapes: Vec<ShapeStats>,
    error: Option<String>,
}

pub async fn run(common: &Common, args: &SearchArgs) -> Result<Report, String> {
    let now = common.corpus_now();
    let corpus = Corpus::new(common.seed, common.authors, now);
    // A middling author: active enough to have notes, not the busiest; the
    // corpus names its profiles "user<index>".
    let index = corpus.pubkeys().len() / 20;
    let author = hex::encode(corpus.pubkeys()[index]);
    // The oldest tenth of the corpus's 30 days.
    let shapes = shapes(&author, &format!("user{index}"), now - 27 * 24 * 3600);
    let filters: Arc<Vec<String>> = Arc::new(
        shapes
            .iter()
            .map(|(_, filter)| {
                let mut filter = filter.clone();
                filter["limit"] = json!(args.limit);
                filter.to_string()
            })
            .collect(),
    );
    let connections = args.connections.max(1);
    let duration = Duration::from_secs(args.duration.max(1));
    let sockets = client::connect_many(&common.url, common.timeout(), connections).await?;
    eprintln!(
        "{connections} connections open; searching for {} s",
        duration.as_secs()
    );
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let ticker = stats::Ticker::start("search", "searches", start, duration, done.clone());
    let mut tasks = Vec::with_capacity(connections);
    for (index, ws) in sockets.into_iter().enumerate() {
        let filters = filters.clone();
        let done = done.clone();
        let timeout = common.timeout();
        tasks.push(tokio::spawn(async move {
            search_loop(ws, &filters, index, deadline, timeout, &done).await
        }));
    }
    let mut results = Vec::with_capacity(connections);
    for task in tasks {
        results.push(
            task.await
                .map_err(|error| format!("a search task failed: {error}"))?,
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    ticker.finish();

    let mut totals = vec![ShapeStats::default(); shapes.len()];
    let mut errors = Vec::new();
    for r in &results {
        for (total, s) in totals.iter_mut().zip(&r.shapes) {
            total.count += s.count;
            total.hits += s.hits;
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
    let mut all = Latency::new();
    for s in &totals {
        all.merge(&s.latency);
    }
    let total: u64 = totals.iter().map(|s| s.count).sum();
    let closed: u64 = totals.iter().map(|s| s.closed).sum();
    let mean = |s: &ShapeStats| {
        if s.count > 0 {
            s.hits as f64 / s.count as f64
        } else {
            0.0
        }
    };
    let mut human = format!(
        "search: {connections} conns × {} s, limit {}: {:.1} searches/s ({total}, {closed} CLOSED), \
         all p50 {} p99 {}",
        duration.as_secs(),
        args.limit,
        total as f64 / elapsed,
        ms(all.quantile_ms(0.5)),
        ms(all.quantile_ms(0.99)),
    );
    for ((name, _), s) in shapes.iter().zip(&totals) {
        human.push_str(&format!(
            "; {name} p50 {} p99 {} {:.1} hits",
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
    let mut map = common.json_fields("search");
    map.insert("connections".into(), connections.into());
    map.insert("limit".into(), args.limit.into());
    map.insert("duration_secs".into(), stats::round3(elapsed).into());
    map.insert("searches".into(), total.into());
    map.insert(
        "searches_per_sec".into(),
        stats::round3(total as f64 / elapsed).into(),
    );
    map.insert("closed".into(), closed.into());
    map.insert("latency".into(), all.to_json());
    map.insert(
        "shapes".into(),
        shapes
            .iter()
            .zip(&filters.iter().collect::<Vec<_>>())
            .zip(&totals)
            .map(|(((name, _), filter), s)| {
                (
                    name.to_string(),
                    json!({
                        "filter": serde_json::from_str::<Value>(filter).unwrap_or_default(),
                        "count": s.count,
                        "closed": s.closed,
                        "closed_reasons": s.closed_reasons,
                        "mean_hits": stats::round3(mean(s)),
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

/// One connection: REQ → EOSE → CLOSE, round-robin over the searches
/// (each connection starting at a different one), until `deadline`.
async fn search_loop(
    ws: client::Ws,
    filters: &[String],
    index: usize,
    deadline: Instant,
    timeout: Duration,
    done: &AtomicU64,
) -> ConnResult {
    let (mut sink, mut stream) = ws.split();
    let mut result = ConnResult {
        shapes: vec![ShapeStats::default(); filters.len()],
        error: None,
    };
    let mut n = 0usize;
    while Instant::now() < deadline {
        let shape = (index + n) % filters.len();
        let sub = format!("s{n}");
        n += 1;
        let sent = Instant::now();
        let outcome =
            client::req_until_eose(&mut sink, &mut stream, &sub, &filters[shape], timeout).await;
        let latency = sent.elapsed();
        let stats = &mut result.shapes[shape];
        match outcome {
            Ok(hits) => {
                stats.count += 1;
                stats.hits += hits;
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
