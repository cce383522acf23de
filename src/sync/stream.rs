//! `--stream`: a live REQ on the remote with the filter, every event that
//! arrives checked and stored as a synced one is; on a disconnect, a
//! reconnection after 1 s, 2 s, 4 s … up to 60 s (back to 1 s once a
//! connection has lasted a minute), resuming a little before the
//! disconnection. It ends with Ctrl-C or SIGTERM.

use std::time::{Duration, Instant};

use super::remote::{Incoming, RecvError, Remote};
use super::{Stop, Sync};
use crate::nostr::{Event, Filter};
use crate::store::unix_now;

/// A (re)subscription asks for events this far before the moment it
/// resumes from: events reach relays a little after their created_at.
pub const OVERLAP_SECONDS: i64 = 120;
/// Longest pause between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Without a frame for this long, the remote is pinged; twice, and the
/// connection is given up.
const QUIET: Duration = Duration::from_secs(60);

/// Streams from `since` until the task is cancelled (by a signal) or the
/// local database fails.
pub async fn run(sync: &mut Sync, since: i64) -> Result<(), Stop> {
    let mut since = since;
    let mut backoff = Duration::from_secs(1);
    loop {
        sync.progress.phase("streaming");
        let connected = Instant::now();
        let why = match Remote::connect(&sync.args.remote, sync.timeout).await {
            Err(error) => error,
            Ok(mut remote) => {
                let why = follow(sync, &mut remote, since).await?;
                remote.close().await;
                why
            }
        };
        // Resume a little before the moment the connection was lost.
        since = unix_now() - OVERLAP_SECONDS;
        if connected.elapsed() >= MAX_BACKOFF {
            backoff = Duration::from_secs(1);
        }
        tracing::warn!(reason = %why, retry_in = ?backoff, "stream interrupted; reconnecting");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's live REQ; returns why it ended (the remote's doing),
/// or a local failure as `Err`.
async fn follow(sync: &mut Sync, remote: &mut Remote, since: i64) -> Result<String, Stop> {
    let filter = Filter {
        since: Some(sync.filter.since.map_or(since, |s| s.max(since))),
        ..sync.filter.clone()
    };
    let sub = remote.new_sub("stream");
    if let Err(error) = remote
        .send(serde_json::json!(["REQ", sub, super::filter_json(&filter)]).to_string())
        .await
    {
        return Ok(error);
    }
    let mut quiet = 0;
    loop {
        let message = match remote.recv(QUIET).await {
            Ok(message) => message,
            Err(RecvError::Timeout) => {
                quiet += 1;
                if quiet >= 2 {
                    return Ok(format!("no frame from the remote for {:?}", QUIET * 2));
                }
                if let Err(error) = remote.ping().await {
                    return Ok(error);
                }
                continue;
            }
            Err(RecvError::Gone(why)) => return Ok(why),
        };
        quiet = 0;
        match message {
            Incoming::Event { sub: s, event } if s == sub => match Event::from_value(&event) {
                Ok(event) if filter.matches(&event) => {
                    let answers = sync.local.accept(vec![event]).await?;
                    let stored = answers
                        .iter()
                        .filter(|(_, a)| *a == super::local::Accepted::Stored)
                        .count() as u64;
                    sync.report.streamed += stored;
                    sync.tally(answers);
                    // A mirror runs for days: settle as it goes.
                    if sync.touched.len() >= 10_000 {
                        sync.settle().await?;
                    }
                }
                _ => sync.report.ignored += 1,
            },
            Incoming::Eose(s) if s == sub => {
                tracing::info!(remote = %sync.args.remote, "stream caught up; now live");
            }
            Incoming::Closed { sub: s, reason } if s == sub => {
                return Ok(format!("the remote closed the subscription: {reason}"));
            }
            Incoming::Notice(text) => tracing::warn!(notice = %text, "NOTICE from the remote"),
            _ => {}
        }
    }
}
