//! The fallback for a remote without NIP-77: paginated REQs.
//!
//! **Down** walks the remote newest first: `REQ` with the filter, `limit` =
//! the remote's `max_limit` (NIP-11, else 500) and `until` = the oldest
//! `created_at` of the previous page, inclusive, since NIP-01 lets many
//! events share a second and a page may end in the middle of them; ids seen
//! at the boundary are not taken twice. A page whose events all share the
//! boundary second moves `until` one second down (else the walk would
//! loop): when such a page is full, events of that second beyond the
//! remote's page may be missed, and the report says so. An empty page ends
//! the walk (a short page does not: relays cap pages silently).
//!
//! The checkpoint keeps the walk's top and cursor after every page: an
//! interrupted walk resumes at its cursor. A finished walk records its top
//! (`synced_through`); the next run walks from now down to an hour below it
//! ([`super::OVERLAP_SECONDS`]), not to the beginning: cheap, and sound for
//! events that reach the remote within the hour of their created_at (a
//! backdated event arriving later is found by `--full`, or by NIP-77).
//!
//! **Up** asks the remote which local events it lacks: local events matching
//! the filter, in batches, `REQ {"ids": batch}`, and publishes the missing
//! ones. The first run walks every local event (resumable by created_at);
//! later runs take only the events committed here since (`seq`, the commit
//! order, which also catches old events that arrived here late, e.g. from
//! another sync).

use std::collections::HashSet;

use serde_json::json;

use super::local::{Accepted, Checkpoint, Direction};
use super::remote::{Remote, ReqError};
use super::{OVERLAP_SECONDS, Stop, Sync, filter_json, upload};
use crate::nostr::{Event, Filter};
use crate::store::unix_now;

const METHOD: &str = "req";

/// Down: the remote's events matching the filter, newest first.
pub async fn down(sync: &mut Sync, remote: &mut Remote) -> Result<(), Stop> {
    let mut checkpoint = sync
        .local
        .checkpoint(&sync.filter_key, Direction::Down)
        .await?;
    if sync.args.full {
        checkpoint = Checkpoint::default();
    }
    // An interrupted walk first, from where it stopped.
    if let Some(top) = checkpoint.walk_top {
        let floor = checkpoint.synced_through.map(|t| t - OVERLAP_SECONDS);
        tracing::info!(top, cursor = ?checkpoint.walk_cursor, "resuming an interrupted walk");
        walk_down(sync, remote, &mut checkpoint, floor).await?;
        checkpoint.synced_through = Some(checkpoint.synced_through.unwrap_or(top).max(top));
        checkpoint.walk_top = None;
        checkpoint.walk_cursor = None;
        sync.local
            .save_checkpoint(&sync.filter_key, Direction::Down, METHOD, &checkpoint)
            .await?;
    }
    let floor = checkpoint.synced_through.map(|t| t - OVERLAP_SECONDS);
    let top = unix_now();
    checkpoint.walk_top = Some(top);
    checkpoint.walk_cursor = None;
    sync.local
        .save_checkpoint(&sync.filter_key, Direction::Down, METHOD, &checkpoint)
        .await?;
    walk_down(sync, remote, &mut checkpoint, floor).await?;
    checkpoint.synced_through = Some(top);
    checkpoint.walk_top = None;
    checkpoint.walk_cursor = None;
    sync.local
        .save_checkpoint(&sync.filter_key, Direction::Down, METHOD, &checkpoint)
        .await?;
    Ok(())
}

/// Walks from `checkpoint.walk_cursor` (or the newest event) down to
/// `floor`, saving the cursor after every page.
async fn walk_down(
    sync: &mut Sync,
    remote: &mut Remote,
    checkpoint: &mut Checkpoint,
    floor: Option<i64>,
) -> Result<(), Stop> {
    sync.progress.phase("walking the remote (REQ pages)");
    let since = match (sync.filter.since, floor) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let mut until = checkpoint.walk_cursor;
    // Ids already taken at the `until` second.
    let mut at_boundary: HashSet<[u8; 32]> = HashSet::new();
    loop {
        sync.check_budget()?;
        let page_filter = Filter {
            since,
            until: match (sync.filter.until, until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            limit: Some(sync.page_size),
            ..sync.filter.clone()
        };
        if page_filter.is_unsatisfiable() {
            return Ok(());
        }
        let values = match remote.req(&filter_json(&page_filter), sync.timeout).await {
            Ok(values) => values,
            Err(ReqError::Closed(reason)) => {
                return Err(Stop::Failed(format!(
                    "the remote refused the REQ: {reason}"
                )));
            }
            Err(ReqError::Gone(why)) => return Err(Stop::Failed(why)),
        };
        if values.is_empty() {
            return Ok(());
        }
        let page_len = values.len() as u64;
        let mut events: Vec<Event> = Vec::with_capacity(values.len());
        for value in values {
            match Event::from_value(&value) {
                // The remote's answer must match what was asked: a relay
                // that ignores a condition would otherwise fill this one.
                Ok(event) if page_filter.matches(&event) => events.push(event),
                _ => sync.report.ignored += 1,
            }
        }
        let Some(oldest) = events.iter().map(|e| e.created_at).min() else {
            // A page of events the filter does not match: the remote
            // ignores a condition (until, most likely); walking on would
            // only fetch the same page again.
            return Err(Stop::Failed(
                "the remote answered a REQ page with no event matching its filter".into(),
            ));
        };
        let fresh: Vec<Event> = events
            .iter()
            .filter(|e| !(Some(e.created_at) == until && at_boundary.contains(&e.id)))
            .cloned()
            .collect();
        let budget = sync.budget();
        let stopping = (fresh.len() as u64) > budget;
        let fresh: Vec<Event> = fresh.into_iter().take(budget as usize).collect();
        let answers = sync.local.accept(fresh).await?;
        // New to this relay: stored, or refused now.
        sync.report.need += answers
            .iter()
            .filter(|(_, a)| matches!(a, Accepted::Stored | Accepted::Refused(_)))
            .count() as u64;
        sync.tally(answers);
        if stopping {
            // The cursor stays before this page: the next run sees it again.
            return Err(Stop::Limit);
        }
        let next = if Some(oldest) == until {
            // Every event at the boundary second: step below it.
            if page_len >= sync.page_size {
                tracing::warn!(
                    second = oldest,
                    page = page_len,
                    "a whole page shares one created_at: events of that second beyond it may be missed"
                );
                sync.report.crowded_seconds += 1;
            }
            at_boundary.clear();
            oldest - 1
        } else {
            at_boundary = events
                .iter()
                .filter(|e| e.created_at == oldest)
                .map(|e| e.id)
                .collect();
            oldest
        };
        until = Some(next);
        checkpoint.walk_cursor = Some(next);
        sync.local
            .save_checkpoint(&sync.filter_key, Direction::Down, METHOD, checkpoint)
            .await?;
        sync.progress.update(&sync.report);
    }
}

/// Up: which local events the remote lacks, published.
pub async fn up(sync: &mut Sync, remote: &mut Remote) -> Result<(), Stop> {
    let mut checkpoint = sync
        .local
        .checkpoint(&sync.filter_key, Direction::Up)
        .await?;
    if sync.args.full {
        checkpoint = Checkpoint::default();
    }
    if checkpoint.local_seq.is_none() || checkpoint.walk_top.is_some() {
        // The first time: every local event, by created_at, resumable.
        let top = match checkpoint.walk_top {
            Some(top) => top,
            None => sync.local.max_seq().await?,
        };
        checkpoint.walk_top = Some(top);
        sync.local
            .save_checkpoint(&sync.filter_key, Direction::Up, METHOD, &checkpoint)
            .await?;
        walk_local(sync, remote, &mut checkpoint).await?;
        checkpoint.local_seq = Some(top);
        checkpoint.walk_top = None;
        checkpoint.walk_cursor = None;
        sync.local
            .save_checkpoint(&sync.filter_key, Direction::Up, METHOD, &checkpoint)
            .await?;
    }
    // Then what was committed here since, in commit order.
    sync.progress.phase("offering new local events");
    let mut seq = checkpoint.local_seq.unwrap_or(0);
    loop {
        sync.check_budget()?;
        let rows = sync.local.events_after(seq, sync.id_batch.max(1)).await?;
        let Some(last) = rows.last().map(|(seq, _)| *seq) else {
            return Ok(());
        };
        let batch: Vec<(Event, String)> = rows
            .into_iter()
            .filter_map(|(_, event)| event)
            .filter(|(event, _)| sync.filter.matches(event))
            .collect();
        sync.report.have += batch.len() as u64;
        send_missing(sync, remote, batch).await?;
        seq = last;
        checkpoint.local_seq = Some(seq);
        sync.local
            .save_checkpoint(&sync.filter_key, Direction::Up, METHOD, &checkpoint)
            .await?;
    }
}

/// Every local event matching the filter, newest first, from the cursor.
async fn walk_local(
    sync: &mut Sync,
    remote: &mut Remote,
    checkpoint: &mut Checkpoint,
) -> Result<(), Stop> {
    sync.progress.phase("offering local events");
    let mut limit = sync.id_batch.max(1) as u64;
    let mut until = checkpoint.walk_cursor;
    loop {
        sync.check_budget()?;
        let page = sync.local.page(&sync.filter, until, limit).await?;
        let (Some(oldest), Some(newest)) = (
            page.iter().map(|(e, _)| e.created_at).min(),
            page.iter().map(|(e, _)| e.created_at).max(),
        ) else {
            return Ok(());
        };
        let full = page.len() as u64 >= limit;
        if full && oldest == newest {
            // One second holds a page or more: read it whole.
            limit *= 2;
            continue;
        }
        // The local query is exact: a short page is the last one; a full
        // page is taken down to (not including) its oldest second, which
        // the next page starts with.
        let batch: Vec<(Event, String)> = if full {
            page.into_iter()
                .filter(|(e, _)| e.created_at > oldest)
                .collect()
        } else {
            page
        };
        sync.report.have += batch.len() as u64;
        for chunk in batch.chunks(sync.id_batch.max(1)) {
            send_missing(sync, remote, chunk.to_vec()).await?;
        }
        if !full {
            return Ok(());
        }
        until = Some(oldest);
        checkpoint.walk_cursor = until;
        sync.local
            .save_checkpoint(&sync.filter_key, Direction::Up, METHOD, checkpoint)
            .await?;
        sync.progress.update(&sync.report);
    }
}

/// Asks the remote for `batch` by id and publishes what it lacks.
async fn send_missing(
    sync: &mut Sync,
    remote: &mut Remote,
    batch: Vec<(Event, String)>,
) -> Result<(), Stop> {
    if batch.is_empty() {
        return Ok(());
    }
    let filter = json!({
        "ids": batch.iter().map(|(e, _)| e.id_hex()).collect::<Vec<_>>(),
        "limit": batch.len(),
    });
    let present: HashSet<String> = match remote.req(&filter, sync.timeout).await {
        Ok(values) => values
            .iter()
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect(),
        Err(ReqError::Closed(reason)) => {
            return Err(Stop::Failed(format!(
                "the remote refused the REQ: {reason}"
            )));
        }
        Err(ReqError::Gone(why)) => return Err(Stop::Failed(why)),
    };
    let missing: Vec<(Event, String)> = batch
        .into_iter()
        .filter(|(e, _)| !present.contains(&e.id_hex()))
        .collect();
    sync.report.remote_needs += missing.len() as u64;
    upload::offer(sync, remote, missing).await
}
