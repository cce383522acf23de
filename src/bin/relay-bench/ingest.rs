//! `ingest`: N pre-signed events published over C connections, each with at
//! most W EVENTs unanswered. OKs may come back in any order and are matched
//! by event id. Optionally paced at a fixed total rate, to measure latency
//! below saturation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use nostr_relayd::corpus::Corpus;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::client::{self, RelayMsg};
use crate::stats::{self, Latency, ms};
use crate::{Common, Report};

/// How many refusal reasons (and errors) are kept to show.
const KEEP_REASONS: usize = 5;

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// WebSocket connections publishing in parallel.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// EVENTs one connection may have unanswered.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Events to publish (split round-robin over the connections).
    #[arg(long, default_value_t = 100_000)]
    pub count: usize,
    /// Total events per second, paced evenly; default: as fast as OKs return.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// The figures of one connection.
struct ConnResult {
    latency: Latency,
    ok: u64,
    duplicate: u64,
    rejected: u64,
    reasons: Vec<String>,
    notices: Vec<String>,
    first_send: Option<Instant>,
    last_ok: Option<Instant>,
    error: Option<String>,
}

/// What every connection task reads.
struct Plan {
    frames: Vec<Utf8Bytes>,
    ids: Vec<String>,
    connections: usize,
    window: usize,
    rate: Option<f64>,
    timeout: Duration,
}

pub async fn run(common: &Common, args: &IngestArgs) -> Result<Report, String> {
    if args.count == 0 {
        return Err("--count must be at least 1".into());
    }
    let now = common.corpus_now();
    let mut corpus = Corpus::new(common.seed, common.authors, now);
    let (events, presign_secs) = crate::presign(&mut corpus, args.count);
    let json_bytes: usize = events.iter().map(|e| e.json.len()).sum();
    let connections = args.connections.clamp(1, args.count);
    let window = args.in_flight.max(1);
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err("--rate must be a positive number".into());
    }
    let plan = Arc::new(Plan {
        frames: events
            .iter()
            .map(|e| Utf8Bytes::from(format!(r#"["EVENT",{}]"#, e.json)))
            .collect(),
        ids: events.iter().map(|e| e.event.id_hex()).collect(),
        connections,
        window,
        rate: args.rate,
        timeout: common.timeout(),
    });
    drop(events);

    let sockets = client::connect_many(&common.url, common.timeout(), connections).await?;
    eprintln!("{connections} connections open; publishing");
    let bar = stats::progress(args.count as u64, "ingest");
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for (index, ws) in sockets.into_iter().enumerate() {
        let plan = plan.clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            publish(ws, &plan, index, start, bar).await
        }));
    }
    let mut results = Vec::with_capacity(connections);
    for task in tasks {
        match task.await {
            Ok(result) => results.push(result),
            Err(error) => return Err(format!("a publishing task failed: {error}")),
        }
    }
    bar.finish_and_clear();

    let mut latency = Latency::new();
    let (mut ok, mut duplicate, mut rejected) = (0u64, 0u64, 0u64);
    let mut reasons: Vec<String> = Vec::new();
    let mut notices: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut failed_connections = 0;
    let mut first_send: Option<Instant> = None;
    let mut last_ok: Option<Instant> = None;
    for r in &results {
        latency.merge(&r.latency);
        ok += r.ok;
        duplicate += r.duplicate;
        rejected += r.rejected;
        for reason in &r.reasons {
            if reasons.len() < KEEP_REASONS && !reasons.contains(reason) {
                reasons.push(reason.clone());
            }
        }
        for notice in &r.notices {
            if notices.len() < KEEP_REASONS {
                notices.push(notice.clone());
            }
        }
        if let Some(error) = &r.error {
            failed_connections += 1;
            if errors.len() < KEEP_REASONS {
                errors.push(error.clone());
            }
        }
        first_send = first_send.into_iter().chain(r.first_send).min();
        last_ok = last_ok.into_iter().chain(r.last_ok).max();
    }
    let answered = ok + duplicate + rejected;
    let wall = match (first_send, last_ok) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let per_sec = |n: u64| if wall > 0.0 { n as f64 / wall } else { 0.0 };
    let accepted_per_sec = per_sec(ok + duplicate);
    let unanswered = args.count as u64 - answered.min(args.count as u64);

    let rate_text = args
        .rate
        .map(|r| format!(" at {r:.0}/s offered"))
        .unwrap_or_default();
    let mut human = format!(
        "ingest: {connections} conns × {window} in flight{rate_text}: {:.0} events/s accepted \
         ({ok} ok, {duplicate} duplicate, {rejected} rejected{}), OK latency p50 {} p90 {} p99 {} max {}, \
         {:.1} s wall, {:.1} MB JSON",
        accepted_per_sec,
        if unanswered > 0 {
            format!(", {unanswered} unanswered")
        } else {
            String::new()
        },
        ms(latency.quantile_ms(0.5)),
        ms(latency.quantile_ms(0.9)),
        ms(latency.quantile_ms(0.99)),
        ms(latency.max_ms()),
        wall,
        json_bytes as f64 / 1e6,
    );
    if let Some(reason) = reasons.first() {
        human.push_str(&format!("; first refusal: {reason}"));
    }
    if let Some(error) = errors.first() {
        human.push_str(&format!(
            "; {failed_connections} connections failed, first: {error}"
        ));
    }

    let mut map = common.json_fields("ingest");
    map.insert("now".into(), now.into());
    map.insert("count".into(), args.count.into());
    map.insert("connections".into(), connections.into());
    map.insert("in_flight".into(), window.into());
    map.insert("rate".into(), json!(args.rate));
    map.insert("presign_secs".into(), stats::round3(presign_secs).into());
    map.insert("json_bytes".into(), json_bytes.into());
    map.insert("wall_secs".into(), stats::round3(wall).into());
    map.insert(
        "accepted_per_sec".into(),
        stats::round3(accepted_per_sec).into(),
    );
    map.insert(
        "answered_per_sec".into(),
        stats::round3(per_sec(answered)).into(),
    );
    map.insert("ok".into(), ok.into());
    map.insert("duplicate".into(), duplicate.into());
    map.insert("rejected".into(), rejected.into());
    map.insert("unanswered".into(), unanswered.into());
    map.insert("rejected_reasons".into(), json!(reasons));
    map.insert("notices".into(), json!(notices));
    map.insert("failed_connections".into(), failed_connections.into());
    map.insert("errors".into(), json!(errors));
    map.insert("ok_latency".into(), latency.to_json());
    Ok(Report {
        human,
        json: Value::Object(map),
        success: failed_connections == 0 && unanswered == 0,
    })
}

/// Publishes events `index`, `index + C`, `index + 2C`, … on one
/// connection, keeping at most `window` unanswered.
async fn publish(
    ws: client::Ws,
    plan: &Plan,
    index: usize,
    start: Instant,
    bar: ProgressBar,
) -> ConnResult {
    use futures_util::StreamExt;

    let mine: Vec<usize> = (index..plan.frames.len())
        .step_by(plan.connections)
        .collect();
    let (mut sink, mut stream) = ws.split();
    let window = Semaphore::new(plan.window);
    // Send time of each unanswered event, by id.
    let pending: Mutex<HashMap<&str, Instant>> = Mutex::new(HashMap::new());
    let (abort, mut aborted) = watch::channel(false);
    let mut first_send = None;

    let writer = async {
        for (k, &event) in mine.iter().enumerate() {
            if let Some(rate) = plan.rate {
                // The k-th event of connection `index` has slot k·C + index
                // of the global schedule.
                let slot = (k * plan.connections + index) as f64;
                tokio::time::sleep_until((start + Duration::from_secs_f64(slot / rate)).into())
                    .await;
            }
            match tokio::time::timeout(plan.timeout, window.acquire()).await {
                Ok(Ok(permit)) => permit.forget(),
                Ok(Err(_)) => return Ok(()), // closed: the reader gave up
                Err(_) => {
                    return Err(format!(
                        "{} EVENTs unanswered for {:?}",
                        plan.window, plan.timeout
                    ));
                }
            }
            let now = Instant::now();
            first_send.get_or_insert(now);
            lock(&pending).insert(plan.ids[event].as_str(), now);
            client::send(&mut sink, plan.frames[event].clone()).await?;
        }
        Ok::<(), String>(())
    };
    let writer = async {
        let result = writer.await;
        if result.is_err() {
            let _ = abort.send(true);
        }
        result
    };

    let reader = async {
        let mut r = ConnResult {
            latency: Latency::new(),
            ok: 0,
            duplicate: 0,
            rejected: 0,
            reasons: Vec::new(),
            notices: Vec::new(),
            first_send: None,
            last_ok: None,
            error: None,
        };
        let mut answered = 0;
        while answered < mine.len() {
            let text = tokio::select! {
                _ = aborted.changed() => break,
                text = client::next_text(&mut stream, plan.timeout) => text,
            };
            let text = match text {
                Ok(text) => text,
                Err(error) => {
                    r.error = Some(format!(
                        "connection {index}: {error} ({answered}/{} answered)",
                        mine.len()
                    ));
                    break;
                }
            };
            match client::parse(&text) {
                Ok(RelayMsg::Ok {
                    id,
                    accepted,
                    reason,
                }) => {
                    let Some(sent) = lock(&pending).remove(id.as_ref()) else {
                        continue; // not one of ours, or answered twice
                    };
                    let now = Instant::now();
                    r.latency.record(now - sent);
                    r.last_ok = Some(now);
                    answered += 1;
                    window.add_permits(1);
                    bar.inc(1);
                    if accepted && reason.starts_with("duplicate:") {
                        r.duplicate += 1;
                    } else if accepted {
                        r.ok += 1;
                    } else {
                        r.rejected += 1;
                        if r.reasons.len() < KEEP_REASONS && !r.reasons.contains(&reason) {
                            r.reasons.push(reason);
                        }
                    }
                }
                Ok(RelayMsg::Notice(text)) => {
                    if r.notices.len() < KEEP_REASONS {
                        r.notices.push(text);
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    r.error = Some(format!("connection {index}: {error}"));
                    break;
                }
            }
        }
        // Wake a writer waiting for a window slot that will never come.
        window.close();
        r
    };

    let (written, mut result) = tokio::join!(writer, reader);
    if let (Err(error), None) = (written, &result.error) {
        result.error = Some(format!("connection {index}: {error}"));
    }
    result.first_send = first_send;
    client::close(&mut sink).await;
    result
}

/// Locks a mutex that no code path poisons (nothing panics while holding it);
/// a poisoned one is still usable for these plain maps.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
