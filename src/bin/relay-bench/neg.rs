//! `neg`: NIP-77 negentropy sync against a relay filled by `ingest`,
//! compared with downloading the same set in full.
//!
//! 1. Full download: every stored event by REQ `{}` pages of `--page`
//!    (`until` = the oldest `created_at` of the previous page, repeats
//!    dropped by id), timed, bytes counted; this also gives the relay's set.
//! 2. The local set: the relay's set less `--diff-percent` of it (chosen at
//!    random) plus as many records it lacks (random ids and times).
//! 3. Negentropy: NEG-OPEN `{}` and NEG-MSG rounds with the `negentropy`
//!    crate as initiator until it is done; rounds, bytes, time; the have
//!    and need sets must be exactly the extra and the missing records.
//! 4. Fetching what was needed, by ids, as a syncing client then would.
//!
//! Bytes are WebSocket message payloads (JSON text), both directions.
//! Unlike the other scenarios this one speaks NIP-77, so the relay must
//! support it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{self, Sink, Stream};
use crate::stats::round3;
use crate::{Common, Report};

#[derive(clap::Args, Debug)]
pub struct NegArgs {
    /// Percent of the relay's set the local set lacks, and percent of it
    /// the local set has extra.
    #[arg(long, default_value_t = 1.0)]
    pub diff_percent: f64,
    /// `limit` of each REQ page of the full download (the relay's
    /// `max_limit`; a larger value is clamped by the relay).
    #[arg(long, default_value_t = 1000)]
    pub page: usize,
    /// Ids per REQ when fetching the needed events.
    #[arg(long, default_value_t = 500)]
    pub ids_per_req: usize,
    /// The client's negentropy frame size limit (bytes before hex; 0: none).
    #[arg(long, default_value_t = 60_000)]
    pub frame_size_limit: u64,
}

/// Bytes of message payload each way, and how long.
#[derive(Debug, Default, Clone, Copy)]
struct Transfer {
    sent: usize,
    received: usize,
    seconds: f64,
}

impl Transfer {
    fn to_json(self) -> Value {
        json!({
            "bytes_sent": self.sent,
            "bytes_received": self.received,
            "seconds": round3(self.seconds),
        })
    }
}

/// A socket that counts what goes through it.
struct Counted {
    sink: Sink,
    stream: Stream,
    timeout: Duration,
    sent: usize,
    received: usize,
}

impl Counted {
    async fn send(&mut self, text: String) -> Result<(), String> {
        self.sent += text.len();
        client::send(&mut self.sink, text).await
    }

    async fn next(&mut self) -> Result<String, String> {
        let text = client::next_text(&mut self.stream, self.timeout).await?;
        self.received += text.len();
        Ok(text.as_str().to_owned())
    }

    /// Counts from zero and returns what was counted before.
    fn take(&mut self) -> (usize, usize) {
        let counted = (self.sent, self.received);
        self.sent = 0;
        self.received = 0;
        counted
    }
}

#[derive(Deserialize)]
struct EventHead<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    created_at: i64,
}

/// `["EVENT", sub, {id, created_at, …}]`, `["EOSE", sub]` or
/// `["CLOSED", sub, reason]` for `sub`; anything else is None.
enum Answer {
    Event(u64, [u8; 32]),
    Eose,
    Closed(String),
}

fn read_answer(text: &str, sub: &str) -> Result<Option<Answer>, String> {
    let (verb, rest): (Cow<'_, str>, Vec<&serde_json::value::RawValue>) = {
        let items: Vec<&serde_json::value::RawValue> =
            serde_json::from_str(text).map_err(|e| format!("bad relay message: {e}"))?;
        let verb: Cow<'_, str> = items
            .first()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default();
        (verb, items.into_iter().skip(1).collect())
    };
    let for_us = rest
        .first()
        .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
        .is_some_and(|s| s == sub);
    if !for_us {
        return Ok(None);
    }
    Ok(match verb.as_ref() {
        "EVENT" => {
            let raw = rest.get(1).ok_or("EVENT without an event")?;
            let head: EventHead<'_> =
                serde_json::from_str(raw.get()).map_err(|e| format!("bad event: {e}"))?;
            let mut id = [0u8; 32];
            hex::decode_to_slice(head.id.as_bytes(), &mut id)
                .map_err(|e| format!("bad event id: {e}"))?;
            Some(Answer::Event(
                u64::try_from(head.created_at).unwrap_or(0),
                id,
            ))
        }
        "EOSE" => Some(Answer::Eose),
        "CLOSED" => Some(Answer::Closed(
            rest.get(1)
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
                .unwrap_or_default(),
        )),
        _ => None,
    })
}

/// Reads a REQ's stored events until EOSE, adding the new ones to `set`.
async fn read_until_eose(
    socket: &mut Counted,
    sub: &str,
    set: &mut Vec<(u64, [u8; 32])>,
    seen: &mut HashSet<[u8; 32]>,
) -> Result<(usize, Option<u64>), String> {
    let (mut new, mut oldest) = (0, None::<u64>);
    loop {
        let text = socket.next().await?;
        match read_answer(&text, sub)? {
            Some(Answer::Event(created_at, id)) => {
                oldest = Some(oldest.map_or(created_at, |o| o.min(created_at)));
                if seen.insert(id) {
                    set.push((created_at, id));
                    new += 1;
                }
            }
            Some(Answer::Eose) => return Ok((new, oldest)),
            Some(Answer::Closed(reason)) => return Err(format!("REQ {sub} closed: {reason}")),
            None => {}
        }
    }
}

pub async fn run(common: &Common, args: &NegArgs) -> Result<Report, String> {
    let ws = client::connect(&common.url, common.timeout()).await?;
    let (sink, stream) = ws.split();
    let mut socket = Counted {
        sink,
        stream,
        timeout: common.timeout(),
        sent: 0,
        received: 0,
    };
    let page = args.page.max(1);

    // 1. The full download, which also tells us the relay's set.
    eprintln!("downloading every event in pages of {page}…");
    let started = Instant::now();
    let mut relay_set: Vec<(u64, [u8; 32])> = Vec::new();
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let mut until: Option<u64> = None;
    let mut pages = 0;
    loop {
        let filter = match until {
            None => json!({ "limit": page }),
            Some(until) => json!({ "until": until, "limit": page }),
        };
        socket
            .send(client::req_frame("all", &filter.to_string()))
            .await?;
        let (new, oldest) = read_until_eose(&mut socket, "all", &mut relay_set, &mut seen).await?;
        socket.send(client::close_frame("all")).await?;
        pages += 1;
        match oldest {
            Some(oldest) if new > 0 => until = Some(oldest),
            _ => break,
        }
    }
    let (sent, received) = socket.take();
    let full = Transfer {
        sent,
        received,
        seconds: started.elapsed().as_secs_f64(),
    };
    drop(seen);
    let records = relay_set.len();
    eprintln!(
        "full download: {records} events in {pages} pages, {:.1} MB, {:.2} s",
        full.received as f64 / 1e6,
        full.seconds
    );
    if records == 0 {
        return Err("the relay has no events: run `ingest` first".into());
    }

    // 2. The local set: less some, plus some.
    let mut rng = StdRng::seed_from_u64(common.seed);
    let diff = ((records as f64) * args.diff_percent / 100.0).round() as usize;
    let mut order: Vec<usize> = (0..records).collect();
    for i in 0..diff.min(records) {
        let j = rng.random_range(i..records);
        order.swap(i, j);
    }
    let missing: HashSet<[u8; 32]> = order[..diff.min(records)]
        .iter()
        .map(|&i| relay_set[i].1)
        .collect();
    let (low, high) = relay_set
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), (t, _)| (lo.min(*t), hi.max(*t)));
    let extra: Vec<(u64, [u8; 32])> = (0..diff)
        .map(|_| (rng.random_range(low..=high), rng.random::<[u8; 32]>()))
        .collect();
    let local: Vec<(u64, [u8; 32])> = relay_set
        .iter()
        .filter(|(_, id)| !missing.contains(id))
        .chain(&extra)
        .copied()
        .collect();

    // 3. Negentropy.
    eprintln!(
        "reconciling {} local records against {records} ({diff} missing, {diff} extra)…",
        local.len()
    );
    let started = Instant::now();
    let mut storage = NegentropyStorageVector::with_capacity(local.len());
    for (created_at, id) in &local {
        storage
            .insert(*created_at, Id::from_byte_array(*id))
            .map_err(|e| e.to_string())?;
    }
    storage.seal().map_err(|e| e.to_string())?;
    let mut negentropy =
        Negentropy::owned(storage, args.frame_size_limit).map_err(|e| e.to_string())?;
    let initial = negentropy.initiate().map_err(|e| e.to_string())?;
    let prepared = started.elapsed().as_secs_f64();
    socket
        .send(json!(["NEG-OPEN", "neg", {}, hex::encode(initial)]).to_string())
        .await?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut rounds = 0;
    let mut first_answer = None;
    loop {
        let text = socket.next().await?;
        let message: Value =
            serde_json::from_str(&text).map_err(|e| format!("bad relay message: {e}"))?;
        if message[1] != "neg" {
            continue;
        }
        match message[0].as_str() {
            Some("NEG-MSG") => {}
            Some("NEG-ERR") => return Err(format!("the relay refused: {message}")),
            _ => continue,
        }
        rounds += 1;
        first_answer.get_or_insert_with(|| started.elapsed().as_secs_f64());
        let bytes = hex::decode(message[2].as_str().unwrap_or_default())
            .map_err(|e| format!("NEG-MSG is not hex: {e}"))?;
        match negentropy
            .reconcile_with_ids(&bytes, &mut have, &mut need)
            .map_err(|e| format!("negentropy: {e}"))?
        {
            Some(next) => {
                socket
                    .send(json!(["NEG-MSG", "neg", hex::encode(next)]).to_string())
                    .await?
            }
            None => break,
        }
    }
    socket.send(json!(["NEG-CLOSE", "neg"]).to_string()).await?;
    let (sent, received) = socket.take();
    let neg = Transfer {
        sent,
        received,
        seconds: started.elapsed().as_secs_f64(),
    };
    let have: HashSet<[u8; 32]> = have.iter().map(|id| *id.as_bytes()).collect();
    let need: HashSet<[u8; 32]> = need.iter().map(|id| *id.as_bytes()).collect();
    let extra_ids: HashSet<[u8; 32]> = extra.iter().map(|(_, id)| *id).collect();
    let exact = have == extra_ids && need == missing;

    // 4. Fetch what was needed.
    let started = Instant::now();
    let mut fetched: Vec<(u64, [u8; 32])> = Vec::new();
    let mut fetched_seen: HashSet<[u8; 32]> = HashSet::new();
    let need_list: Vec<String> = need.iter().map(hex::encode).collect();
    for chunk in need_list.chunks(args.ids_per_req.max(1)) {
        let filter = json!({ "ids": chunk, "limit": chunk.len() });
        socket
            .send(client::req_frame("need", &filter.to_string()))
            .await?;
        read_until_eose(&mut socket, "need", &mut fetched, &mut fetched_seen).await?;
        socket.send(client::close_frame("need")).await?;
    }
    let (sent, received) = socket.take();
    let fetch = Transfer {
        sent,
        received,
        seconds: started.elapsed().as_secs_f64(),
    };
    client::close(&mut socket.sink).await;
    let fetched_all = fetched.len() == need.len();

    let sync_bytes = neg.sent + neg.received + fetch.sent + fetch.received;
    let full_bytes = full.sent + full.received;
    let human = format!(
        "neg: {records} records, {diff} missing + {diff} extra: {rounds} rounds, {:.1} KB sent, {:.1} KB received, {:.3} s (first answer {:.3} s){}; \
         fetching the {} needed: {:.2} MB, {:.3} s; full download: {pages} pages, {:.1} MB, {:.2} s; \
         sync total {:.2} MB = {:.1}% of the full download's bytes, {:.1}% of its time{}",
        neg.sent as f64 / 1e3,
        neg.received as f64 / 1e3,
        neg.seconds,
        first_answer.unwrap_or(0.0),
        if exact { "" } else { " [WRONG have/need sets]" },
        need.len(),
        (fetch.sent + fetch.received) as f64 / 1e6,
        fetch.seconds,
        full_bytes as f64 / 1e6,
        full.seconds,
        sync_bytes as f64 / 1e6,
        100.0 * sync_bytes as f64 / full_bytes.max(1) as f64,
        100.0 * (neg.seconds + fetch.seconds) / full.seconds.max(1e-9),
        if fetched_all {
            ""
        } else {
            " [fetch incomplete]"
        },
    );
    let mut map = common.json_fields("neg");
    map.insert("records".into(), records.into());
    map.insert("missing".into(), diff.into());
    map.insert("extra".into(), diff.into());
    map.insert("rounds".into(), rounds.into());
    map.insert("exact".into(), exact.into());
    map.insert("client_prepare_seconds".into(), round3(prepared).into());
    map.insert(
        "first_answer_seconds".into(),
        round3(first_answer.unwrap_or(0.0)).into(),
    );
    map.insert("negentropy".into(), neg.to_json());
    map.insert("fetch_needed".into(), fetch.to_json());
    map.insert("full_download".into(), full.to_json());
    map.insert("full_download_pages".into(), pages.into());
    Ok(Report {
        human,
        json: Value::Object(map),
        success: exact && fetched_all,
    })
}
