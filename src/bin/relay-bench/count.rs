//! `count`: NIP-45 COUNT latency for the two counts clients ask most,
//! follower counts (`{"kinds":[3],"#p":[pubkey]}`) and reaction counts
//! (`{"kinds":[7],"#e":[note]}`), on the most popular targets of a corpus
//! an `ingest` run stored. C connections each keep one COUNT outstanding
//! for a fixed time. The corpus is regenerated (unsigned) to find the
//! targets and the exact answers, so every count is also checked, and the
//! `hll` registers' estimate is compared with the distinct authors.
//!
//! The relay must support NIP-45 (a CLOSED answer is counted as an error).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nostr_relayd::corpus::Corpus;
use nostr_relayd::nostr::Event;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::client;
use crate::stats::{self, Latency, ms};
use crate::{Common, Report};

#[derive(clap::Args, Debug)]
pub struct CountArgs {
    /// Connections, each with one COUNT outstanding.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Events the `ingest` run published (needed to regenerate its corpus).
    #[arg(long, default_value_t = 100_000)]
    pub count: usize,
    /// Targets per shape: the most followed pubkeys, the most reacted notes.
    #[arg(long, default_value_t = 20)]
    pub targets: usize,
}

/// The shapes, in round-robin order.
const SHAPES: [&str; 2] = ["followers", "reactions"];

/// One thing to count and what the relay must answer.
struct Target {
    filter: String,
    /// Stored events the filter matches.
    events: u64,
    /// Their distinct authors (what the `hll` estimates).
    authors: u64,
}

#[derive(Default, Clone)]
struct ShapeStats {
    answered: u64,
    closed: u64,
    wrong: u64,
    counted: u64,
    max_count: u64,
    with_hll: u64,
    /// Sum of |estimate − authors| / authors over answers with `hll`.
    hll_error: f64,
    latency: Latency,
    problems: Vec<String>,
}

struct ConnResult {
    shapes: Vec<ShapeStats>,
    error: Option<String>,
}

pub async fn run(common: &Common, args: &CountArgs) -> Result<Report, String> {
    let now = common.corpus_now();
    let started = Instant::now();
    let targets = Arc::new(popular_targets(
        Corpus::new(common.seed, common.authors, now),
        args.count,
        args.targets.max(1),
    ));
    eprintln!(
        "regenerated the {}-event corpus (unsigned) in {:.2} s; counting {} followers \
         (most: {}) and {} reactions (most: {})",
        args.count,
        started.elapsed().as_secs_f64(),
        targets[0].len(),
        targets[0].first().map_or(0, |t| t.events),
        targets[1].len(),
        targets[1].first().map_or(0, |t| t.events),
    );
    if targets.iter().any(Vec::is_empty) {
        return Err("the corpus has no follow lists or reactions: use a larger --count".into());
    }
    let connections = args.connections.max(1);
    let duration = Duration::from_secs(args.duration.max(1));
    let sockets = client::connect_many(&common.url, common.timeout(), connections).await?;
    eprintln!(
        "{connections} connections open; counting for {} s",
        duration.as_secs()
    );
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    for (index, ws) in sockets.into_iter().enumerate() {
        let targets = targets.clone();
        let seed = common.seed;
        let timeout = common.timeout();
        tasks.push(tokio::spawn(async move {
            count_loop(ws, &targets, index, seed, deadline, timeout).await
        }));
    }
    let mut shapes = vec![ShapeStats::default(); SHAPES.len()];
    let mut errors = Vec::new();
    for task in tasks {
        let result = task
            .await
            .map_err(|error| format!("a count task failed: {error}"))?;
        for (total, s) in shapes.iter_mut().zip(&result.shapes) {
            total.answered += s.answered;
            total.closed += s.closed;
            total.wrong += s.wrong;
            total.counted += s.counted;
            total.max_count = total.max_count.max(s.max_count);
            total.with_hll += s.with_hll;
            total.hll_error += s.hll_error;
            total.latency.merge(&s.latency);
            for problem in &s.problems {
                if total.problems.len() < 3 && !total.problems.contains(problem) {
                    total.problems.push(problem.clone());
                }
            }
        }
        if let Some(error) = result.error {
            errors.push(error);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total: u64 = shapes.iter().map(|s| s.answered).sum();
    let failed: u64 = shapes.iter().map(|s| s.closed + s.wrong).sum();
    let per_sec = total as f64 / elapsed;
    let mean = |sum: f64, n: u64| if n > 0 { sum / n as f64 } else { 0.0 };
    let mut human = format!(
        "count: {connections} conns × {} s: {per_sec:.0} COUNT/s ({total} answered, {failed} \
         CLOSED or wrong)",
        duration.as_secs()
    );
    for (name, s) in SHAPES.iter().zip(&shapes) {
        human.push_str(&format!(
            "; {name} p50 {} p99 {} mean count {:.0} (max {}), hll error {:.1}%",
            ms(s.latency.quantile_ms(0.5)),
            ms(s.latency.quantile_ms(0.99)),
            mean(s.counted as f64, s.answered),
            s.max_count,
            100.0 * mean(s.hll_error, s.with_hll),
        ));
        if let Some(problem) = s.problems.first() {
            human.push_str(&format!(" [{problem}]"));
        }
    }
    if !errors.is_empty() {
        human.push_str(&format!(
            "; {} connections failed, first: {}",
            errors.len(),
            errors[0]
        ));
    }
    let mut map = common.json_fields("count");
    map.insert("now".into(), now.into());
    map.insert("count".into(), args.count.into());
    map.insert("connections".into(), connections.into());
    map.insert("duration_secs".into(), stats::round3(elapsed).into());
    map.insert("answered".into(), total.into());
    map.insert("count_per_sec".into(), stats::round3(per_sec).into());
    map.insert(
        "shapes".into(),
        SHAPES
            .iter()
            .zip(&shapes)
            .map(|(name, s)| {
                (
                    name.to_string(),
                    json!({
                        "answered": s.answered,
                        "closed": s.closed,
                        "wrong": s.wrong,
                        "problems": s.problems,
                        "mean_count": stats::round3(mean(s.counted as f64, s.answered)),
                        "max_count": s.max_count,
                        "with_hll": s.with_hll,
                        "mean_hll_error": stats::round3(mean(s.hll_error, s.with_hll)),
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
        success: errors.is_empty() && failed == 0,
    })
}

/// The `targets` most followed pubkeys and most reacted notes of the
/// corpus's first `count` events, with their exact counts: a follow list
/// is stored only in its newest version per author (NIP-01 replaceable,
/// ties to the lowest id); reactions are all stored.
fn popular_targets(mut corpus: Corpus, count: usize, targets: usize) -> [Vec<Target>; 2] {
    let mut lists: HashMap<[u8; 32], Event> = HashMap::new();
    let mut reactions: HashMap<[u8; 32], (u64, HashSet<[u8; 32]>)> = HashMap::new();
    for _ in 0..count {
        let (_, event) = corpus.next_unsigned();
        match event.kind {
            3 => {
                let newer = lists.get(&event.pubkey).is_none_or(|kept| {
                    (event.created_at, std::cmp::Reverse(event.id))
                        > (kept.created_at, std::cmp::Reverse(kept.id))
                });
                if newer {
                    lists.insert(event.pubkey, event);
                }
            }
            7 => {
                for note in event.tag_values("e").filter_map(hex32) {
                    let entry = reactions.entry(note).or_default();
                    entry.0 += 1;
                    entry.1.insert(event.pubkey);
                }
            }
            _ => {}
        }
    }
    let mut followers: HashMap<[u8; 32], HashSet<[u8; 32]>> = HashMap::new();
    for list in lists.values() {
        for followed in list.tag_values("p").filter_map(hex32) {
            followers.entry(followed).or_default().insert(list.pubkey);
        }
    }
    let top = |mut all: Vec<([u8; 32], u64, u64)>, shape: &str| -> Vec<Target> {
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(targets);
        all.into_iter()
            .map(|(key, events, authors)| {
                let filter = match shape {
                    "followers" => json!({"kinds": [3], "#p": [hex::encode(key)]}),
                    _ => json!({"kinds": [7], "#e": [hex::encode(key)]}),
                };
                Target {
                    filter: filter.to_string(),
                    events,
                    authors,
                }
            })
            .collect()
    };
    // One follow list per author: as many events as authors.
    let followers = followers
        .into_iter()
        .map(|(key, set)| (key, set.len() as u64, set.len() as u64))
        .collect();
    let reactions = reactions
        .into_iter()
        .map(|(key, (events, set))| (key, events, set.len() as u64))
        .collect();
    [top(followers, "followers"), top(reactions, "reactions")]
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    nostr_relayd::nostr::hex::decode_lower::<32>(text)
}

/// The body of a `["COUNT", id, {…}]` answer.
#[derive(Deserialize)]
struct Counted {
    count: u64,
    hll: Option<String>,
}

/// The textbook HyperLogLog estimate of 256 registers (hex), with the
/// small-range correction.
fn hll_estimate(hll: &str) -> Option<f64> {
    let registers = hex::decode(hll).ok().filter(|r| r.len() == 256)?;
    let m = registers.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = registers.iter().map(|r| 2f64.powi(-i32::from(*r))).sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|r| **r == 0).count() as f64;
    Some(if raw <= 2.5 * m && zeros > 0.0 {
        m * (m / zeros).ln()
    } else {
        raw
    })
}

/// One connection: COUNT → answer, alternating shapes, random popular
/// targets, until `deadline`.
async fn count_loop(
    ws: client::Ws,
    targets: &[Vec<Target>; 2],
    index: usize,
    seed: u64,
    deadline: Instant,
    timeout: Duration,
) -> ConnResult {
    let (mut sink, mut stream) = ws.split();
    let mut rng =
        StdRng::seed_from_u64(seed ^ (index as u64 + 7).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut result = ConnResult {
        shapes: vec![ShapeStats::default(); SHAPES.len()],
        error: None,
    };
    let mut n = 0usize;
    while Instant::now() < deadline {
        let shape = (index + n) % SHAPES.len();
        let list = &targets[shape];
        let target = &list[rng.random_range(0..list.len())];
        let sub = format!("c{n}");
        n += 1;
        let frame = format!(
            r#"["COUNT",{},{}]"#,
            serde_json::Value::from(sub.as_str()),
            target.filter
        );
        let sent = Instant::now();
        if let Err(error) = client::send(&mut sink, frame).await {
            result.error = Some(format!("connection {index}: {error}"));
            break;
        }
        let answer = loop {
            let text = match client::next_text(&mut stream, timeout).await {
                Ok(text) => text,
                Err(error) => break Err(format!("waiting for COUNT {sub}: {error}")),
            };
            let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text.as_str()) else {
                continue;
            };
            let item = |i: usize| items.get(i).map(|raw| raw.get());
            if item(1) != Some(serde_json::Value::from(sub.as_str()).to_string().as_str()) {
                continue; // the AUTH challenge, a NOTICE, another id
            }
            break match item(0) {
                Some(r#""COUNT""#) => item(2)
                    .and_then(|body| serde_json::from_str::<Counted>(body).ok())
                    .ok_or_else(|| format!("malformed COUNT answer: {text}"))
                    .map(Ok),
                Some(r#""CLOSED""#) => Ok(Err(text.to_string())),
                _ => continue,
            };
        };
        let latency = sent.elapsed();
        let stats = &mut result.shapes[shape];
        match answer {
            Ok(Ok(counted)) => {
                stats.answered += 1;
                stats.counted += counted.count;
                stats.max_count = stats.max_count.max(counted.count);
                stats.latency.record(latency);
                if counted.count != target.events {
                    stats.wrong += 1;
                    let problem = format!(
                        "{} counted {}, expected {}",
                        target.filter, counted.count, target.events
                    );
                    if stats.problems.len() < 3 {
                        stats.problems.push(problem);
                    }
                }
                if let Some(estimate) = counted.hll.as_deref().and_then(hll_estimate) {
                    stats.with_hll += 1;
                    let authors = target.authors.max(1) as f64;
                    stats.hll_error += (estimate - authors).abs() / authors;
                }
            }
            Ok(Err(closed)) => {
                stats.closed += 1;
                if stats.problems.len() < 3 && !stats.problems.contains(&closed) {
                    stats.problems.push(closed);
                }
            }
            Err(error) => {
                result.error = Some(format!("connection {index}: {error}"));
                break;
            }
        }
    }
    client::close(&mut sink).await;
    result
}
