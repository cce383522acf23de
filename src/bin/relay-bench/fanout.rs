//! `fanout`: S subscriber connections hold R live subscriptions each (by
//! author, by `#p`, by kind; opened with `limit: 0`, so nothing stored comes
//! back), then one connection publishes fresh pre-signed events at a fixed
//! rate. Every delivery's latency is measured from the moment its EVENT was
//! sent, and at the end each subscription's deliveries are compared with
//! what its filter matches among the events the relay accepted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nostr_relayd::corpus::{Corpus, CorpusEvent};
use nostr_relayd::nostr::Filter;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::client::{self, RelayMsg};
use crate::stats::{self, Latency, ms};
use crate::{Common, Report};

#[derive(clap::Args, Debug)]
pub struct FanoutArgs {
    /// Subscriber connections.
    #[arg(long, default_value_t = 200)]
    pub subscribers: usize,
    /// Subscriptions per subscriber.
    #[arg(long, default_value_t = 5)]
    pub subs: usize,
    /// Events per second the publisher sends.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds to publish.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Publish to this relay instead of `--url` (where the subscribers
    /// are): another node of a cluster, to measure delivery across nodes.
    #[arg(long)]
    pub publish_url: Option<String>,
}

/// Subscribers connected and subscribed at the same time.
const OPEN_CONCURRENCY: usize = 100;
/// Seed offset of the fan-out corpus, so its events are not the ingested ones.
const SEED_OFFSET: u64 = 1000;
/// Kinds the `kinds` subscriptions pick from.
const KINDS: [u16; 4] = [0, 1, 3, 7];

/// Publish outcome of each event.
const NOT_ANSWERED: u8 = 0;
const STORED: u8 = 1;
const DUPLICATE: u8 = 2;
const REFUSED: u8 = 3;

/// What subscribers and the publisher share.
struct Shared {
    /// Event id (hex) → index.
    index: HashMap<String, u32>,
    /// Nanoseconds after `base` when each EVENT was sent (0: not yet).
    sent: Vec<AtomicU64>,
    base: Instant,
    /// Deliveries so far, and when the last one arrived (ns after `base`).
    delivered: AtomicU64,
    last_delivery: AtomicU64,
}

impl Shared {
    fn since_base(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// What one subscriber saw.
struct SubscriberResult {
    /// Indices of the events delivered to each subscription, in order.
    received: Vec<Vec<u32>>,
    latency: Latency,
    /// Deliveries of events this run did not publish.
    foreign: u64,
    notices: Vec<String>,
    error: Option<String>,
}

pub async fn run(common: &Common, args: &FanoutArgs) -> Result<Report, String> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number".into());
    }
    let count = ((args.rate * args.duration.max(1) as f64).round() as usize).max(1);
    let seed = common.seed.wrapping_add(SEED_OFFSET);
    let now = crate::unix_now();
    eprintln!(
        "fan-out corpus: seed {seed}, {} authors, now {now} (real time, so the events are new)",
        common.authors
    );
    let mut corpus = Corpus::new(seed, common.authors, now);
    let (events, presign_secs) = crate::presign(&mut corpus, count);
    let pubkeys: Vec<String> = corpus.pubkeys().iter().map(hex::encode).collect();
    let frames: Vec<Utf8Bytes> = events
        .iter()
        .map(|e| Utf8Bytes::from(format!(r#"["EVENT",{}]"#, e.json)))
        .collect();
    let shared = Arc::new(Shared {
        index: events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.event.id_hex(), i as u32))
            .collect(),
        sent: (0..count).map(|_| AtomicU64::new(0)).collect(),
        base: Instant::now(),
        delivered: AtomicU64::new(0),
        last_delivery: AtomicU64::new(0),
    });

    // Filters: subscription r of subscriber s is by author, by #p or by kind
    // in turn; the targets are seeded.
    let subs = args.subs.max(1);
    let subscribers = args.subscribers.max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let filters: Vec<Vec<Value>> = (0..subscribers)
        .map(|s| {
            (0..subs)
                .map(|r| {
                    let pubkey = &pubkeys[rng.random_range(0..pubkeys.len())];
                    match (s * subs + r) % 3 {
                        0 => json!({"authors": [pubkey], "limit": 0}),
                        1 => json!({"#p": [pubkey], "limit": 0}),
                        _ => {
                            json!({"kinds": [KINDS[rng.random_range(0..KINDS.len())]], "limit": 0})
                        }
                    }
                })
                .collect()
        })
        .collect();
    let parsed: Vec<Vec<Filter>> = filters
        .iter()
        .map(|list| {
            list.iter()
                .map(|f| Filter::from_value(f).map_err(|e| format!("bad filter {f}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;

    // Subscribers: connect, subscribe, wait for every EOSE, then read until told to stop.
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(subscribers);
    let open = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let opening = Instant::now();
    let mut tasks = Vec::with_capacity(subscribers);
    for (s, list) in filters.into_iter().enumerate() {
        let (shared, open, ready, stop) = (
            shared.clone(),
            open.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
        );
        let url = common.url.clone();
        let timeout = common.timeout();
        tasks.push(tokio::spawn(async move {
            subscriber(s, &url, list, &shared, &open, ready, stop, timeout).await
        }));
    }
    drop(ready_tx);
    let mut setup_errors = Vec::new();
    for _ in 0..subscribers {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(error)) => setup_errors.push(error),
            None => break,
        }
    }
    if let Some(first) = setup_errors.first() {
        let _ = stop.send(true);
        return Err(format!(
            "{} of {subscribers} subscribers could not subscribe; first: {first}",
            setup_errors.len()
        ));
    }
    eprintln!(
        "{subscribers} subscribers × {subs} subscriptions ready in {:.2} s; publishing {count} events at {}/s",
        opening.elapsed().as_secs_f64(),
        args.rate
    );

    // The publisher.
    let status: Vec<AtomicU8> = (0..count).map(|_| AtomicU8::new(NOT_ANSWERED)).collect();
    let bar = stats::progress(count as u64, "fanout");
    let publish_start = Instant::now();
    let publisher = publish(
        common,
        args.publish_url.as_deref(),
        &frames,
        &events,
        &shared,
        &status,
        args.rate,
        &bar,
    )
    .await;
    let publish_secs = publish_start.elapsed().as_secs_f64();
    let (ok_latency, refusals, publish_error) = publisher;

    // The expected deliveries, from the events the relay stored.
    let stored: Vec<usize> = (0..count)
        .filter(|&i| status[i].load(Ordering::Relaxed) == STORED)
        .collect();
    let expected: Vec<Vec<Vec<u32>>> = parsed
        .iter()
        .map(|list| {
            list.iter()
                .map(|filter| {
                    stored
                        .iter()
                        .filter(|&&i| filter.matches(&events[i].event))
                        .map(|&i| i as u32)
                        .collect()
                })
                .collect()
        })
        .collect();
    let expected_total: u64 = expected.iter().flatten().map(|v| v.len() as u64).sum();

    // Wait for the deliveries (bounded), then a little more for extras.
    let grace = Instant::now() + common.timeout().min(Duration::from_secs(10));
    while shared.delivered.load(Ordering::Relaxed) < expected_total && Instant::now() < grace {
        bar.set_message(format!(
            "waiting for deliveries: {}/{expected_total}",
            shared.delivered.load(Ordering::Relaxed)
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(true);
    bar.finish_and_clear();
    let mut results = Vec::with_capacity(subscribers);
    for task in tasks {
        match task.await {
            Ok(result) => results.push(result),
            Err(error) => return Err(format!("a subscriber task failed: {error}")),
        }
    }

    // Compare.
    let mut latency = Latency::new();
    let (mut missing, mut duplicated, mut unexpected, mut foreign) = (0u64, 0u64, 0u64, 0u64);
    let mut delivered = 0u64;
    let mut errors = Vec::new();
    let mut notices = Vec::new();
    for (result, want) in results.iter().zip(&expected) {
        latency.merge(&result.latency);
        foreign += result.foreign;
        if let Some(error) = &result.error {
            errors.push(error.clone());
        }
        notices.extend(result.notices.iter().take(2).cloned());
        for (got, want) in result.received.iter().zip(want) {
            delivered += got.len() as u64;
            let mut got = got.clone();
            got.sort_unstable();
            let before = got.len();
            got.dedup();
            duplicated += (before - got.len()) as u64;
            // Both sorted: count the differences by merging.
            let (mut a, mut b) = (0, 0);
            while a < got.len() || b < want.len() {
                match (got.get(a), want.get(b)) {
                    (Some(x), Some(y)) if x == y => (a, b) = (a + 1, b + 1),
                    (Some(x), Some(y)) if x < y => (unexpected, a) = (unexpected + 1, a + 1),
                    (Some(_), None) => (unexpected, a) = (unexpected + 1, a + 1),
                    _ => (missing, b) = (missing + 1, b + 1),
                }
            }
        }
    }
    let last = shared.last_delivery.load(Ordering::Relaxed);
    let first = shared
        .sent
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(0);
    let delivery_secs = last.saturating_sub(first) as f64 / 1e9;
    let delivered_per_sec = if delivery_secs > 0.0 {
        delivered as f64 / delivery_secs
    } else {
        0.0
    };
    let stored_count = stored.len();
    let duplicates_published = status
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) == DUPLICATE)
        .count();
    let refused_count = status
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) == REFUSED)
        .count();
    let unanswered = count - stored_count - duplicates_published - refused_count;
    let exact = missing == 0 && duplicated == 0 && unexpected == 0;

    let mut human = format!(
        "fanout: {subscribers} subscribers × {subs} subs, {:.0} events/s for {} s: {stored_count} stored \
         ({refused_count} refused, {unanswered} unanswered), {delivered} delivered ({delivered_per_sec:.0}/s), \
         delivery latency p50 {} p99 {} max {}, OK latency p50 {} p99 {}; {missing} missing, \
         {duplicated} duplicated, {unexpected} unexpected{}",
        args.rate,
        args.duration,
        ms(latency.quantile_ms(0.5)),
        ms(latency.quantile_ms(0.99)),
        ms(latency.max_ms()),
        ms(ok_latency.quantile_ms(0.5)),
        ms(ok_latency.quantile_ms(0.99)),
        if exact { " (exact)" } else { " (NOT EXACT)" },
    );
    if let Some(error) = &publish_error {
        human.push_str(&format!("; publisher failed: {error}"));
    }
    if let Some(error) = errors.first() {
        human.push_str(&format!(
            "; {} subscribers failed, first: {error}",
            errors.len()
        ));
    }

    let mut map = common.json_fields("fanout");
    map.insert("fanout_seed".into(), seed.into());
    map.insert("now".into(), now.into());
    map.insert("subscribers".into(), subscribers.into());
    map.insert("subs".into(), subs.into());
    map.insert("rate".into(), args.rate.into());
    map.insert("duration".into(), args.duration.into());
    map.insert("presign_secs".into(), stats::round3(presign_secs).into());
    map.insert("published".into(), count.into());
    map.insert("publish_secs".into(), stats::round3(publish_secs).into());
    map.insert("stored".into(), stored_count.into());
    map.insert("duplicate".into(), duplicates_published.into());
    map.insert("refused".into(), refused_count.into());
    map.insert("refused_reasons".into(), json!(refusals));
    map.insert("unanswered".into(), unanswered.into());
    map.insert("expected_deliveries".into(), expected_total.into());
    map.insert("delivered".into(), delivered.into());
    map.insert(
        "delivered_per_sec".into(),
        stats::round3(delivered_per_sec).into(),
    );
    map.insert("missing".into(), missing.into());
    map.insert("duplicated".into(), duplicated.into());
    map.insert("unexpected".into(), unexpected.into());
    map.insert("foreign".into(), foreign.into());
    map.insert("delivery_latency".into(), latency.to_json());
    map.insert("ok_latency".into(), ok_latency.to_json());
    map.insert("publisher_error".into(), json!(publish_error));
    map.insert("failed_subscribers".into(), errors.len().into());
    map.insert(
        "errors".into(),
        json!(errors.iter().take(5).collect::<Vec<_>>()),
    );
    map.insert(
        "notices".into(),
        json!(notices.iter().take(5).collect::<Vec<_>>()),
    );
    Ok(Report {
        human,
        json: Value::Object(map),
        success: exact && errors.is_empty() && publish_error.is_none() && unanswered == 0,
    })
}

/// One subscriber: opens its subscriptions (under the `open` limit), says
/// so on `ready`, then records deliveries until `stop`.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
    s: usize,
    url: &str,
    filters: Vec<Value>,
    shared: &Shared,
    open: &Semaphore,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
    timeout: Duration,
) -> SubscriberResult {
    let mut result = SubscriberResult {
        received: vec![Vec::new(); filters.len()],
        latency: Latency::new(),
        foreign: 0,
        notices: Vec::new(),
        error: None,
    };
    let setup = async {
        let _permit = open
            .acquire()
            .await
            .map_err(|_| "subscriber limit closed".to_string())?;
        let ws = client::connect(url, timeout).await?;
        let (mut sink, mut stream) = ws.split();
        for (r, filter) in filters.iter().enumerate() {
            let sub = format!("s{r}");
            let filter = filter.to_string();
            client::req_until_eose(&mut sink, &mut stream, &sub, &filter, timeout)
                .await
                .map_err(|e| format!("subscriber {s}, REQ {filter}: {e}"))?;
        }
        Ok::<_, String>((sink, stream))
    };
    let (mut sink, mut stream) = match setup.await {
        Ok(pair) => {
            let _ = ready.send(Ok(())).await;
            pair
        }
        Err(error) => {
            let _ = ready.send(Err(error.clone())).await;
            result.error = Some(error);
            return result;
        }
    };
    loop {
        let text = tokio::select! {
            _ = stop.changed() => break,
            // Idle periods are normal here (no publisher yet, or a quiet
            // filter): wait as long as the run lasts, `stop` ends it.
            text = client::next_text(&mut stream, Duration::from_secs(24 * 3600)) => text,
        };
        let text = match text {
            Ok(text) => text,
            Err(error) => {
                result.error = Some(format!("subscriber {s}: {error}"));
                break;
            }
        };
        match client::parse(&text) {
            Ok(RelayMsg::Event { sub, id }) => {
                let now = shared.since_base();
                let Some(&i) = shared.index.get(id.as_ref()) else {
                    result.foreign += 1;
                    continue;
                };
                let Some(r) = sub
                    .strip_prefix('s')
                    .and_then(|r| r.parse::<usize>().ok())
                    .filter(|r| *r < result.received.len())
                else {
                    result.foreign += 1;
                    continue;
                };
                let sent = shared.sent[i as usize].load(Ordering::Acquire);
                if sent > 0 {
                    result
                        .latency
                        .record(Duration::from_nanos(now.saturating_sub(sent)));
                }
                result.received[r].push(i);
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                shared.last_delivery.fetch_max(now, Ordering::Relaxed);
            }
            Ok(RelayMsg::Notice(text)) => result.notices.push(text),
            Ok(RelayMsg::Closed { sub, reason }) => {
                result.error = Some(format!(
                    "subscriber {s}: subscription {sub} CLOSED: {reason}"
                ));
            }
            Ok(_) => {}
            Err(error) => {
                result.error = Some(format!("subscriber {s}: {error}"));
                break;
            }
        }
    }
    client::close(&mut sink).await;
    result
}

/// Publishes every event at `rate` on one connection (to `publish_url`, or
/// the subscribers' relay), recording send times
/// in `shared` and outcomes in `status`; returns the publish→OK latency, the
/// first refusal reasons and an error if the connection failed.
#[allow(clippy::too_many_arguments)]
async fn publish(
    common: &Common,
    publish_url: Option<&str>,
    frames: &[Utf8Bytes],
    events: &[CorpusEvent],
    shared: &Shared,
    status: &[AtomicU8],
    rate: f64,
    bar: &indicatif::ProgressBar,
) -> (Latency, Vec<String>, Option<String>) {
    let mut latency = Latency::new();
    let mut refusals: Vec<String> = Vec::new();
    let url = publish_url.unwrap_or(&common.url);
    let ws = match client::connect(url, common.timeout()).await {
        Ok(ws) => ws,
        Err(error) => return (latency, refusals, Some(error)),
    };
    let (mut sink, mut stream) = ws.split();
    let ids: HashMap<String, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event.id_hex(), i))
        .collect();
    let start = Instant::now();
    let (abort, mut aborted) = watch::channel(false);
    let writer = async {
        for (i, frame) in frames.iter().enumerate() {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into())
                .await;
            shared.sent[i].store(shared.since_base(), Ordering::Release);
            if let Err(error) = client::send(&mut sink, frame.clone()).await {
                let _ = abort.send(true);
                return Some(error);
            }
        }
        None
    };
    let reader = async {
        let mut answered = 0;
        while answered < frames.len() {
            let text = tokio::select! {
                _ = aborted.changed() => return None,
                text = client::next_text(&mut stream, common.timeout()) => text,
            };
            let text = match text {
                Ok(text) => text,
                Err(error) => {
                    return Some(format!(
                        "publisher: {error} ({answered}/{} answered)",
                        frames.len()
                    ));
                }
            };
            if let Ok(RelayMsg::Ok {
                id,
                accepted,
                reason,
            }) = client::parse(&text)
                && let Some(&i) = ids.get(id.as_ref())
                && status[i].load(Ordering::Relaxed) == NOT_ANSWERED
            {
                let sent = shared.sent[i].load(Ordering::Acquire);
                latency.record(Duration::from_nanos(
                    shared.since_base().saturating_sub(sent),
                ));
                let outcome = match (accepted, reason.starts_with("duplicate:")) {
                    (true, false) => STORED,
                    (true, true) => DUPLICATE,
                    (false, _) => {
                        if refusals.len() < 5 && !refusals.contains(&reason) {
                            refusals.push(reason);
                        }
                        REFUSED
                    }
                };
                status[i].store(outcome, Ordering::Relaxed);
                answered += 1;
                bar.inc(1);
            }
        }
        None
    };
    let (written, read) = tokio::join!(writer, reader);
    client::close(&mut sink).await;
    (latency, refusals, written.or(read))
}
