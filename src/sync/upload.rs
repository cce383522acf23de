//! Publishing local events to the remote: `EVENT`, a window of them in
//! flight, each `OK` read. A refusal that will not change (`blocked:`,
//! `invalid:`, `restricted:`, `pow:`, `auth-required:`) is recorded, so that
//! the event is not offered again; `rate-limited:` and `error:` are retried
//! after a pause, with fewer events in flight.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::local::{Direction, Item};
use super::remote::{Incoming, RecvError, Remote};
use super::{Stop, Sync};
use crate::nostr::Event;

/// Events in flight at first (halved at each rate-limit answer).
const WINDOW: usize = 16;
/// Attempts of one event refused for a passing reason.
const ATTEMPTS: u32 = 5;

/// Whether an `OK false` reason will be the same next time.
fn is_permanent(reason: &str) -> bool {
    [
        "blocked:",
        "invalid:",
        "restricted:",
        "pow:",
        "auth-required:",
    ]
    .iter()
    .any(|prefix| reason.starts_with(prefix))
}

fn is_transient(reason: &str) -> bool {
    reason.starts_with("rate-limited:") || reason.starts_with("error:")
}

/// Offers local events to the remote, leaving out what must not leave this
/// relay (private kinds, NIP-70 protected events) and what it refused before.
pub async fn offer(
    sync: &mut Sync,
    remote: &mut Remote,
    events: Vec<(Event, String)>,
) -> Result<(), Stop> {
    let mut queue = VecDeque::new();
    for (event, json) in events {
        if sync.local.is_refused(&event.id, Direction::Up)
            || sync.local.is_private(event.kind)
            || event.is_protected()
        {
            sync.report.kept_back += 1;
        } else {
            queue.push_back((event, json, 0u32));
        }
    }
    let mut window = WINDOW;
    let mut pause = Duration::from_secs(1);
    let mut in_flight: HashMap<String, (Event, String, u32)> = HashMap::new();
    loop {
        while in_flight.len() < window
            && (in_flight.len() as u64) < sync.budget()
            && let Some((event, json, attempts)) = queue.pop_front()
        {
            remote.send(format!(r#"["EVENT",{json}]"#)).await?;
            in_flight.insert(event.id_hex(), (event, json, attempts));
        }
        if in_flight.is_empty() {
            if queue.is_empty() {
                return Ok(());
            }
            // Only the budget keeps the queue back.
            return Err(Stop::Limit);
        }
        match remote.recv(sync.timeout).await {
            Ok(Incoming::Ok {
                id,
                accepted,
                reason,
            }) => {
                let Some((event, json, attempts)) = in_flight.remove(&id) else {
                    continue;
                };
                if accepted {
                    if reason.starts_with("duplicate:") {
                        sync.report.remote_had += 1;
                    } else {
                        sync.report.uploaded += 1;
                    }
                } else if is_transient(&reason) && attempts + 1 < ATTEMPTS {
                    tracing::info!(%reason, pause = ?pause, "the remote asks to slow down");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                    window = (window / 2).max(1);
                    queue.push_front((event, json, attempts + 1));
                } else if is_permanent(&reason) {
                    tracing::debug!(id = %id, %reason, "refused by the remote");
                    sync.local
                        .record_refused(&Item::of(&event), Direction::Up, &reason)
                        .await?;
                    sync.report.refused_by_remote += 1;
                } else {
                    tracing::warn!(id = %id, %reason, "the remote did not take an event");
                    sync.report.failed += 1;
                }
                sync.progress.update(&sync.report);
            }
            Ok(Incoming::Notice(text)) => tracing::warn!(notice = %text, "NOTICE from the remote"),
            Ok(_) => {}
            Err(RecvError::Timeout) => {
                tracing::warn!(
                    events = in_flight.len(),
                    "no OK from the remote in time; counted as failed"
                );
                sync.report.failed += in_flight.len() as u64;
                in_flight.clear();
            }
            Err(RecvError::Gone(why)) => return Err(Stop::Failed(why)),
        }
    }
}
