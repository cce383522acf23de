//! The NIP-77 client: negentropy reconciliation with the remote, then the
//! transfers it calls for.
//!
//! The local set is `(created_at, id)` of every local event matching the
//! filter (private kinds included: so they are not fetched again) plus the
//! ids refused from this remote before (so a stale version the remote keeps
//! is not a difference on every run). `need` ids (the remote has them) are
//! fetched with `REQ {"ids": …}`; `have` ids (the remote lacks them) are
//! published, except refusals, private kinds and protected events.
//!
//! A re-run simply reconciles again: fingerprints make that cheap, and an
//! interrupted run is resumed by the reconciliation itself (what was
//! downloaded is now in the local set). The checkpoint only records when
//! the remote was last reconciled, for a later REQ walk to start from.

use std::collections::HashSet;

use negentropy::{Id, Negentropy, NegentropyStorageVector};
use serde_json::json;

use super::local::{Checkpoint, Direction};
use super::remote::{Incoming, RecvError, Remote, ReqError};
use super::{Stop, Sync, upload};
use crate::nostr::Event;
use crate::store::unix_now;

/// How a NIP-77 attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// Reconciled and transferred.
    Done,
    /// The remote does not do NIP-77 (or refused this filter): fall back.
    Unsupported(String),
}

/// What the reconciliation found.
#[derive(Debug, Default)]
pub struct Differences {
    /// Here and not on the remote.
    pub have: Vec<[u8; 32]>,
    /// On the remote and not here.
    pub need: Vec<[u8; 32]>,
    pub rounds: usize,
}

/// Why a reconciliation did not finish.
#[derive(Debug)]
pub enum ReconcileError {
    /// Not NIP-77, or not for this filter: the REQ walk can still work.
    Unsupported(String),
    /// The connection failed.
    Gone(String),
}

pub async fn run(sync: &mut Sync, remote: &mut Remote) -> Result<Outcome, Stop> {
    let started = unix_now();
    let seq = sync.local.max_seq().await?;
    sync.progress.phase("reading local events");
    let local = sync.local.negentropy_items(&sync.filter).await?;
    let refused = sync.local.refused_items(&sync.filter).await?;
    sync.report.have = local.len() as u64;
    sync.progress.update(&sync.report);
    let mut items: Vec<(i64, [u8; 32])> = local.clone();
    items.extend(refused.iter().map(|item| (item.created_at, item.id)));
    sync.progress.phase("reconciling (NIP-77)");
    let differences = match reconcile(
        remote,
        &sync.filter_value,
        &items,
        sync.frame_size_limit,
        sync.timeout,
    )
    .await
    {
        Ok(differences) => differences,
        Err(ReconcileError::Unsupported(why)) => return Ok(Outcome::Unsupported(why)),
        Err(ReconcileError::Gone(why)) => return Err(Stop::Failed(why)),
    };
    // Ids refused before are in the set; the remote lacks them, we cannot
    // give them: not differences.
    let have: Vec<[u8; 32]> = differences
        .have
        .into_iter()
        .filter(|id| !sync.local.is_refused(id, Direction::Down))
        .collect();
    tracing::info!(
        rounds = differences.rounds,
        have = local.len(),
        need = differences.need.len(),
        remote_needs = have.len(),
        "reconciled"
    );
    sync.report.need = differences.need.len() as u64;
    sync.report.remote_needs = have.len() as u64;
    sync.progress.update(&sync.report);
    // Local events the remote has too: if one is gone by the end of the
    // run (replaced or deleted here meanwhile), it is recorded as refused.
    let have_set: HashSet<[u8; 32]> = have.iter().copied().collect();
    sync.touched
        .extend(
            local
                .iter()
                .filter(|(_, id)| !have_set.contains(id))
                .map(|(created_at, id)| super::local::Item {
                    id: *id,
                    created_at: *created_at,
                    pubkey: None,
                    kind: None,
                }),
        );
    if sync.down() {
        sync.progress.phase("downloading");
        download(sync, remote, &differences.need).await?;
        let checkpoint = Checkpoint {
            synced_through: Some(started),
            ..Checkpoint::default()
        };
        sync.local
            .save_checkpoint(&sync.filter_key, Direction::Down, "negentropy", &checkpoint)
            .await?;
    }
    if sync.up() {
        sync.progress.phase("uploading");
        for chunk in have.chunks(sync.id_batch.max(1)) {
            sync.check_budget()?;
            let events = sync.local.events_by_ids(chunk).await?;
            // Asked for by the set, gone since (replaced, deleted, expired).
            sync.report.kept_back += (chunk.len() - events.len()) as u64;
            upload::offer(sync, remote, events).await?;
        }
        let checkpoint = Checkpoint {
            local_seq: Some(seq),
            ..Checkpoint::default()
        };
        sync.local
            .save_checkpoint(&sync.filter_key, Direction::Up, "negentropy", &checkpoint)
            .await?;
    }
    Ok(Outcome::Done)
}

/// Fetches `need` by id, in batches, and stores what passes the checks.
async fn download(sync: &mut Sync, remote: &mut Remote, need: &[[u8; 32]]) -> Result<(), Stop> {
    let mut rest = need;
    while !rest.is_empty() {
        sync.check_budget()?;
        let take = (sync.id_batch.max(1) as u64).min(sync.budget()) as usize;
        let (chunk, after) = rest.split_at(take.min(rest.len()));
        rest = after;
        let wanted: HashSet<[u8; 32]> = chunk.iter().copied().collect();
        let filter = json!({
            "ids": chunk.iter().map(hex::encode).collect::<Vec<_>>(),
            "limit": chunk.len(),
        });
        let values = match remote.req(&filter, sync.timeout).await {
            Ok(values) => values,
            Err(ReqError::Closed(reason)) => {
                tracing::warn!(%reason, "the remote refused a REQ by ids");
                sync.report.unavailable += chunk.len() as u64;
                continue;
            }
            Err(ReqError::Gone(why)) => return Err(Stop::Failed(why)),
        };
        let mut events = Vec::with_capacity(values.len());
        let mut got = HashSet::new();
        for value in values {
            match Event::from_value(&value) {
                Ok(event) if wanted.contains(&event.id) && got.insert(event.id) => {
                    events.push(event)
                }
                _ => sync.report.ignored += 1,
            }
        }
        sync.report.unavailable += (chunk.len() - got.len()) as u64;
        let answers = sync.local.accept(events).await?;
        sync.tally(answers);
    }
    Ok(())
}

/// NEG-OPEN with `filter` and the local `items`, then NEG-MSG until the
/// reconciliation is complete, then NEG-CLOSE.
pub async fn reconcile(
    remote: &mut Remote,
    filter: &serde_json::Value,
    items: &[(i64, [u8; 32])],
    frame_size_limit: u64,
    timeout: std::time::Duration,
) -> Result<Differences, ReconcileError> {
    let internal = |e: negentropy::Error| ReconcileError::Unsupported(format!("negentropy: {e}"));
    let mut storage = NegentropyStorageVector::with_capacity(items.len());
    for (created_at, id) in items {
        storage
            .insert(
                u64::try_from(*created_at).unwrap_or(0),
                Id::from_byte_array(*id),
            )
            .map_err(internal)?;
    }
    storage.seal().map_err(internal)?;
    let mut negentropy = Negentropy::owned(storage, frame_size_limit).map_err(internal)?;
    let initial = negentropy.initiate().map_err(internal)?;
    let sub = remote.new_sub("neg");
    remote
        .send(json!(["NEG-OPEN", sub, filter, hex::encode(initial)]).to_string())
        .await
        .map_err(ReconcileError::Gone)?;
    let mut have: Vec<Id> = Vec::new();
    let mut need: Vec<Id> = Vec::new();
    let mut rounds = 0;
    let mut answered = false;
    loop {
        let message = match remote.recv(timeout).await {
            Ok(message) => message,
            Err(RecvError::Timeout) if !answered => {
                return Err(ReconcileError::Unsupported(format!(
                    "no answer to NEG-OPEN within {timeout:?}"
                )));
            }
            Err(RecvError::Timeout) => {
                return Err(ReconcileError::Gone(format!(
                    "the remote stopped answering NEG-MSG for {timeout:?}"
                )));
            }
            Err(RecvError::Gone(why)) => return Err(ReconcileError::Gone(why)),
        };
        match message {
            Incoming::NegMsg { sub: s, message } if s == sub => {
                answered = true;
                rounds += 1;
                let bytes = hex::decode(&message)
                    .map_err(|_| ReconcileError::Unsupported("NEG-MSG is not hex".to_owned()))?;
                match negentropy.reconcile_with_ids(&bytes, &mut have, &mut need) {
                    Ok(Some(next)) => remote
                        .send(json!(["NEG-MSG", sub, hex::encode(next)]).to_string())
                        .await
                        .map_err(ReconcileError::Gone)?,
                    Ok(None) => break,
                    Err(error) => {
                        let _ = remote.send(json!(["NEG-CLOSE", sub]).to_string()).await;
                        return Err(ReconcileError::Unsupported(format!(
                            "the remote's NEG-MSG: {error}"
                        )));
                    }
                }
            }
            Incoming::NegErr { sub: s, reason } if s == sub => {
                return Err(ReconcileError::Unsupported(format!("NEG-ERR {reason}")));
            }
            Incoming::Closed { sub: s, reason } if s == sub => {
                return Err(ReconcileError::Unsupported(format!("CLOSED {reason}")));
            }
            // A relay that does not know NEG-OPEN says so with a NOTICE.
            Incoming::Notice(text) if !answered => {
                return Err(ReconcileError::Unsupported(format!("NOTICE {text}")));
            }
            Incoming::Notice(text) => tracing::warn!(notice = %text, "NOTICE from the remote"),
            _ => {}
        }
    }
    let _ = remote.send(json!(["NEG-CLOSE", sub]).to_string()).await;
    Ok(Differences {
        have: have.into_iter().map(Id::to_bytes).collect(),
        need: need.into_iter().map(Id::to_bytes).collect(),
        rounds,
    })
}
