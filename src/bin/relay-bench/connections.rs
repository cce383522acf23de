//! `connections`: N idle WebSocket connections, each with one live
//! subscription (`{"kinds":[1],"limit":0}`, answered by EOSE at once),
//! opened with bounded concurrency. With `--pid` the relay's resident
//! memory (VmRSS) is read before and after (plus a settle time), giving the
//! memory one idle subscribed connection costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::client;
use crate::stats::{self, Latency, ms};
use crate::{Common, Report};

#[derive(clap::Args, Debug)]
pub struct ConnectionsArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 5000)]
    pub connections: usize,
    /// Connections being opened at the same time. Keep it under the relay's
    /// listen backlog (128 for Rust/tokio listeners): a burst above it
    /// overflows the accept queue and costs those clients a 1 s SYN retry.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// The relay's process id, to read its VmRSS from /proc/PID/status.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Seconds to wait after the last connection opened before measuring.
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
}

const FILTER: &str = r#"{"kinds":[1],"limit":0}"#;

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS line in {path}"))
}

pub async fn run(common: &Common, args: &ConnectionsArgs) -> Result<Report, String> {
    let wanted = args.connections.max(1);
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            eprintln!("warning: cannot raise the open-file limit: {error}");
            0
        }
    };
    eprintln!("open-file limit of this process: {nofile}");
    if nofile > 0 && nofile < wanted as u64 + 64 {
        eprintln!(
            "warning: {wanted} connections need more than the open-file limit {nofile}; \
             raise it with `ulimit -n`"
        );
    }
    let rss_before = args.pid.map(rss_kib).transpose()?;

    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<Duration, String>>(wanted);
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let dropped = Arc::new(AtomicU64::new(0));
    let bar = stats::progress(wanted as u64, "connections");
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(wanted);
    for i in 0..wanted {
        let (limit, ready, mut stop, dropped) = (
            limit.clone(),
            ready_tx.clone(),
            stop_rx.clone(),
            dropped.clone(),
        );
        let url = common.url.clone();
        let timeout = common.timeout();
        tasks.push(tokio::spawn(async move {
            let opened = async {
                let _permit = limit
                    .acquire()
                    .await
                    .map_err(|_| "limit closed".to_string())?;
                let begun = Instant::now();
                let ws = client::connect(&url, timeout).await?;
                let (mut sink, mut stream) = ws.split();
                client::req_until_eose(&mut sink, &mut stream, "c", FILTER, timeout)
                    .await
                    .map_err(|e| format!("connection {i}: {e}"))?;
                Ok::<_, String>((sink, stream, begun.elapsed()))
            };
            let (mut sink, mut stream) = match opened.await {
                Ok((sink, stream, took)) => {
                    let _ = ready.send(Ok(took)).await;
                    (sink, stream)
                }
                Err(error) => {
                    let _ = ready.send(Err(error)).await;
                    return;
                }
            };
            drop(ready);
            // Hold the connection, answering pings, until told to stop.
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    frame = stream.next() => match frame {
                        None | Some(Err(_)) => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Some(Ok(_)) => {}
                    },
                }
            }
            client::close(&mut sink).await;
        }));
    }
    drop(ready_tx);

    let mut setup = Latency::new();
    let mut errors: Vec<String> = Vec::new();
    let mut failed = 0usize;
    while let Some(outcome) = ready_rx.recv().await {
        match outcome {
            Ok(took) => setup.record(took),
            Err(error) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(error);
                }
            }
        }
        bar.inc(1);
    }
    let open_secs = start.elapsed().as_secs_f64();
    let opened = setup.count();
    bar.set_message(format!("{opened} open; settling"));
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let rss_after = args.pid.map(rss_kib).transpose()?;
    let still_open = opened.saturating_sub(dropped.load(Ordering::Relaxed));
    bar.finish_and_clear();

    let _ = stop.send(true);
    let closing = Instant::now();
    for task in tasks {
        // Each task closes within seconds of `stop`; a stuck one is left to
        // the runtime shutdown.
        let left = Duration::from_secs(10).saturating_sub(closing.elapsed());
        let _ = tokio::time::timeout(left, task).await;
    }

    let per_conn_kib = match (rss_before, rss_after) {
        (Some(before), Some(after)) if opened > 0 => {
            Some((after as f64 - before as f64) / opened as f64)
        }
        _ => None,
    };
    let rate = if open_secs > 0.0 {
        opened as f64 / open_secs
    } else {
        0.0
    };
    let mut human = format!(
        "connections: {opened}/{wanted} open and subscribed in {open_secs:.1} s ({rate:.0}/s, \
         {} at a time), setup p50 {} p99 {}, {still_open} still open after {} s",
        args.concurrency.max(1),
        ms(setup.quantile_ms(0.5)),
        ms(setup.quantile_ms(0.99)),
        args.settle
    );
    if let (Some(before), Some(after), Some(per)) = (rss_before, rss_after, per_conn_kib) {
        human.push_str(&format!(
            "; relay RSS {:.1} → {:.1} MiB = {per:.1} KiB per connection",
            before as f64 / 1024.0,
            after as f64 / 1024.0
        ));
    }
    if let Some(error) = errors.first() {
        human.push_str(&format!("; {failed} failed, first: {error}"));
    }

    let mut map = common.json_fields("connections");
    map.insert("connections".into(), wanted.into());
    map.insert("concurrency".into(), args.concurrency.max(1).into());
    map.insert("nofile_limit".into(), nofile.into());
    map.insert("opened".into(), opened.into());
    map.insert("failed".into(), failed.into());
    map.insert("still_open".into(), still_open.into());
    map.insert("open_secs".into(), stats::round3(open_secs).into());
    map.insert("opened_per_sec".into(), stats::round3(rate).into());
    map.insert("setup_latency".into(), setup.to_json());
    map.insert("pid".into(), json!(args.pid));
    map.insert("rss_before_kib".into(), json!(rss_before));
    map.insert("rss_after_kib".into(), json!(rss_after));
    map.insert(
        "rss_per_connection_kib".into(),
        json!(per_conn_kib.map(stats::round3)),
    );
    map.insert("errors".into(), json!(errors));
    Ok(Report {
        human,
        json: Value::Object(map),
        success: failed == 0 && still_open == opened,
    })
}
