//! The single writer: one thread, one SQLite connection, group commit.
//!
//! Every insert, replacement and deletion happens here, so the NIP-01 and
//! NIP-09 rules need no locks: the writer takes whatever jobs arrived while
//! the previous commit ran, applies them in one transaction (each inside its
//! own savepoint, so one failure does not sink its neighbours), commits, and
//! only then answers each job and hands the committed events to the fan-out,
//! in commit order.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::sql::{
    has_vanished, is_address_deleted, is_indexed_tag, is_tombstoned, may_delete, tag_value,
};
use super::{StoreError, WriteOutcome};
use crate::nostr::hex::decode_lower;
use crate::nostr::{CanonicalEvent, Event, KindClass, kind};

/// An event the writer committed, with its commit sequence number.
#[derive(Debug, Clone)]
pub struct Committed {
    pub seq: u64,
    pub event: Arc<CanonicalEvent>,
}

/// Called after each commit with the events it stored, in commit order.
pub type CommitHook = Box<dyn Fn(&[Committed]) + Send>;

/// Work for the writer thread.
pub enum WriteJob {
    Insert {
        event: Arc<CanonicalEvent>,
        reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
    },
    /// Deletes up to `batch` events whose NIP-40 expiration is at or before `now`.
    PurgeExpired {
        now: i64,
        batch: usize,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Makes the NIP-50 index hold exactly these kinds (`search::configure`).
    ConfigureSearch {
        kinds: Vec<u16>,
        reply: oneshot::Sender<Result<Option<usize>, StoreError>>,
    },
    /// Deletes one bounded batch that a retention rule or the size cap
    /// selects (`store/retention.rs`).
    Prune {
        job: super::retention::PruneJob,
        reply: oneshot::Sender<Result<super::retention::Pruned, StoreError>>,
    },
    /// Finish what is queued before this job, then stop.
    Stop,
}

/// The writer thread's loop. Returns when a [`WriteJob::Stop`] arrives or
/// every sender is gone.
pub fn run(
    mut conn: Connection,
    jobs: crossbeam_channel::Receiver<WriteJob>,
    max_batch: usize,
    on_commit: CommitHook,
    committed: crossbeam_channel::Sender<()>,
) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = jobs.recv() else { break };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut inserts = Vec::with_capacity(batch.len());
        for job in batch {
            match job {
                WriteJob::Insert { event, reply } => inserts.push((event, reply)),
                WriteJob::PurgeExpired { now, batch, reply } => {
                    let _ = reply.send(purge_expired(&mut conn, now, batch));
                }
                WriteJob::ConfigureSearch { kinds, reply } => {
                    let outcome = super::search::configure(&mut conn, &kinds);
                    let _ = reply.send(outcome.map_err(StoreError::from));
                }
                WriteJob::Prune { job, reply } => {
                    let _ = reply.send(super::retention::prune(&mut conn, &job));
                    // Wake the checkpointer: a pass deletes many pages.
                    let _ = committed.try_send(());
                }
                WriteJob::Stop => stopping = true,
            }
        }
        if !inserts.is_empty() {
            crate::metrics::global().write_batch(inserts.len());
            // A bug must not kill the only writer: a panicking batch is rolled
            // back (the transaction's Drop), its callers get an error, and the
            // thread goes on with the next batch.
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                commit_inserts(&mut conn, inserts, &on_commit)
            }));
            if outcome.is_err() {
                tracing::error!("the writer panicked on a batch; it was rolled back");
            }
            // Wake the checkpointer; a full slot means it is already awake.
            let _ = committed.try_send(());
        }
    }
    // Leave an empty WAL behind: everything committed is in the main file.
    final_checkpoint(&conn);
    tracing::debug!("writer stopped");
}

/// Copies the whole WAL into the database and truncates it. SQLite reports
/// a checkpoint it could not finish (the checkpoint thread's last passive
/// pass, or a reader, holding it up) as `busy = 1` in the result row, not
/// as an error, so the row is read and the checkpoint retried for a while.
fn final_checkpoint(conn: &Connection) {
    const ATTEMPTS: usize = 50;
    for attempt in 1..=ATTEMPTS {
        match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        }) {
            Ok(0) => return,
            Ok(_) if attempt < ATTEMPTS => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Ok(_) => tracing::warn!("final checkpoint incomplete: the WAL is kept"),
            Err(error) => {
                tracing::warn!(%error, "final checkpoint failed");
                return;
            }
        }
    }
}

type Insert = (
    Arc<CanonicalEvent>,
    oneshot::Sender<Result<WriteOutcome, StoreError>>,
);

fn commit_inserts(conn: &mut Connection, inserts: Vec<Insert>, on_commit: &CommitHook) {
    let outcomes = apply_batch(conn, &inserts);
    match outcomes {
        Ok(outcomes) => {
            let committed: Vec<Committed> = inserts
                .iter()
                .zip(&outcomes)
                .filter_map(|((event, _), outcome)| match outcome {
                    Ok(WriteOutcome::Stored { seq, .. }) => Some(Committed {
                        seq: *seq,
                        event: event.clone(),
                    }),
                    _ => None,
                })
                .collect();
            // Fan out before answering: once a client has read `OK true`, a
            // subscription it opens afterwards can no longer receive the
            // event live (it gets it from the store, if at all).
            if !committed.is_empty() {
                on_commit(&committed);
            }
            for ((_, reply), outcome) in inserts.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(error) => {
            tracing::warn!(%error, events = inserts.len(), "group commit failed");
            for (_, reply) in inserts {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Applies every insert in one transaction; the outer error means the
/// commit itself failed and nothing of the batch is stored.
fn apply_batch(
    conn: &mut Connection,
    inserts: &[Insert],
) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
    match apply_together(conn, inserts) {
        Ok(outcomes) => Ok(outcomes),
        Err(error) => {
            tracing::debug!(%error, "batch failed as a whole; retrying event by event");
            apply_one_by_one(conn, inserts)
        }
    }
}

/// The fast path: the whole batch in one transaction, no savepoints (each
/// savepoint copies every page an event touches into a sub-journal).
fn apply_together(
    conn: &mut Connection,
    inserts: &[Insert],
) -> rusqlite::Result<Vec<Result<WriteOutcome, StoreError>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let searchable = super::search::indexed_kinds(&tx)?;
    let mut outcomes = Vec::with_capacity(inserts.len());
    for (event, _) in inserts {
        outcomes.push(Ok(apply_event(&tx, event, &searchable)?));
    }
    tx.commit()?;
    Ok(outcomes)
}

/// After a failure: each event in its own savepoint, so that one event's
/// failure does not sink the others. On SQLITE_FULL and I/O errors SQLite
/// may roll back the whole transaction by itself: then nothing of the batch
/// is stored, and every event of it gets the error (never `OK true`).
fn apply_one_by_one(
    conn: &mut Connection,
    inserts: &[Insert],
) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let searchable = super::search::indexed_kinds(&tx)?;
    let mut outcomes = Vec::with_capacity(inserts.len());
    for (event, _) in inserts {
        let mut savepoint = tx.savepoint()?;
        match apply_event(&savepoint, event, &searchable) {
            Ok(outcome) => {
                savepoint.commit()?;
                outcomes.push(Ok(outcome));
            }
            Err(error) => {
                let error = StoreError::from(error);
                // Fails harmlessly when SQLite already rolled everything back.
                let _ = savepoint.rollback();
                drop(savepoint);
                if tx.is_autocommit() {
                    return Err(error);
                }
                outcomes.push(Err(error));
            }
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// NIP-01 and NIP-09 rules for one event, inside the writer's transaction.
/// `searchable`: the kinds the NIP-50 index holds (sorted), read once per
/// transaction.
fn apply_event(
    tx: &Connection,
    canonical: &CanonicalEvent,
    searchable: &[u16],
) -> rusqlite::Result<WriteOutcome> {
    let event = &canonical.event;
    // No separate duplicate probe: the insert below meets the unique id
    // index anyway, and reports a duplicate by changing nothing.
    if is_tombstoned(tx, event)? {
        return Ok(WriteOutcome::Deleted);
    }
    if has_vanished(tx, event)? {
        return Ok(WriteOutcome::Vanished);
    }
    // Events this insert removes: the version it replaces, or what its
    // deletion or request to vanish deletes (reported to `import`).
    let mut removed = 0;
    let d_tag = event.address_d();
    if let Some(d) = d_tag {
        if is_address_deleted(tx, event, d)? {
            return Ok(WriteOutcome::Deleted);
        }
        let current: Option<(i64, i64, Vec<u8>)> = tx
            .prepare_cached("SELECT seq, created_at, id FROM event WHERE pubkey = ?1 AND kind = ?2 AND d_tag = ?3")?
            .query_row(params![&event.pubkey[..], event.kind, d], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        if let Some((seq, created_at, id)) = current {
            if id.as_slice() == &event.id[..] {
                return Ok(WriteOutcome::Duplicate);
            }
            // NIP-01: the newer wins; on equal timestamps the lowest id wins.
            let stored_wins = created_at > event.created_at
                || (created_at == event.created_at && id.as_slice() < &event.id[..]);
            if stored_wins {
                return Ok(WriteOutcome::Superseded);
            }
            delete_event(tx, seq)?;
            removed += 1;
        }
    }
    let expires_at = event.expiration().ok().flatten();
    // OR IGNORE can only meet the unique id index here: the address index
    // was cleared of this address's version just above.
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO event (id, pubkey, created_at, kind, d_tag, expires_at, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            &event.id[..],
            &event.pubkey[..],
            event.created_at,
            event.kind,
            d_tag,
            expires_at,
            canonical.json
        ])?;
    if inserted == 0 {
        return Ok(WriteOutcome::Duplicate);
    }
    let seq = tx.last_insert_rowid();
    let mut insert_tag = tx.prepare_cached(
        "INSERT OR IGNORE INTO tag (name, value, created_at, event_seq, kind, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for tag in event.tags.iter().filter(|tag| is_indexed_tag(tag)) {
        insert_tag.execute(params![
            tag[0],
            tag_value(&tag[1]),
            event.created_at,
            seq,
            event.kind,
            expires_at
        ])?;
    }
    if searchable.binary_search(&event.kind).is_ok() {
        super::search::index_event(tx, seq, event)?;
    }
    if event.kind == kind::DELETION {
        removed += apply_deletion(tx, event)?;
    }
    if event.kind == kind::REQUEST_TO_VANISH {
        removed += apply_vanish(tx, event, seq)?;
    }
    if event.kind == kind::REPORT {
        super::lists::record_report(tx, event)?;
    }
    // Cannot be negative: seq is an AUTOINCREMENT rowid, which starts at 1.
    Ok(WriteOutcome::Stored {
        seq: seq as u64,
        removed,
    })
}

/// NIP-09: removes what a kind-5 event asks to remove, and records it so that
/// the targets are refused if they arrive later. Returns how many stored
/// events it deleted.
fn apply_deletion(tx: &Connection, deletion: &Event) -> rusqlite::Result<u64> {
    let deleter = &deletion.pubkey[..];
    let mut removed = 0;
    for target in deletion.tag_values("e").filter_map(decode_lower::<32>) {
        tx.prepare_cached("INSERT OR IGNORE INTO deletion (event_id, deleter) VALUES (?1, ?2)")?
            .execute(params![&target[..], deleter])?;
        let stored: Option<(i64, String)> = tx
            .prepare_cached("SELECT seq, json FROM event WHERE id = ?1")?
            .query_row(params![&target[..]], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        if let Some((seq, json)) = stored {
            let entitled = serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|value| Event::from_value(&value).ok())
                .is_some_and(|target| {
                    target.kind != kind::DELETION && may_delete(&target, deleter)
                });
            if entitled {
                delete_event(tx, seq)?;
                removed += 1;
            }
        }
    }
    for address in deletion.tag_values("a") {
        let mut parts = address.splitn(3, ':');
        let (Some(kind_text), Some(pubkey_text), Some(d)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(kind), Some(pubkey)) = (kind_text.parse::<u16>(), decode_lower::<32>(pubkey_text))
        else {
            continue;
        };
        if pubkey[..] != *deleter || !KindClass::of(kind).has_address() {
            continue;
        }
        let d = if KindClass::of(kind) == KindClass::Replaceable {
            ""
        } else {
            d
        };
        tx.prepare_cached(
            "INSERT INTO address_deletion (pubkey, kind, d_tag, until) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (pubkey, kind, d_tag) DO UPDATE SET until = max(until, excluded.until)",
        )?
        .execute(params![deleter, kind, d, deletion.created_at])?;
        let seqs = tx
            .prepare_cached(
                "SELECT seq FROM event WHERE pubkey = ?1 AND kind = ?2 AND d_tag = ?3 AND created_at <= ?4",
            )?
            .query_map(params![deleter, kind, d, deletion.created_at], |row| row.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for seq in seqs {
            delete_event(tx, seq)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// NIP-62: deletes everything the requester published up to the request
/// (NIP-09 deletions included; the request itself stays as the record that
/// refuses them later), and every gift wrap addressed to it, whose ids are
/// tombstoned: wraps are back-dated, so a later wrap to this pubkey must
/// still be accepted, but not these ones again. Returns how many stored
/// events it deleted.
fn apply_vanish(tx: &Connection, request: &Event, request_seq: i64) -> rusqlite::Result<u64> {
    let pubkey = &request.pubkey[..];
    let own: Vec<i64> = tx
        .prepare_cached(
            "SELECT seq FROM event INDEXED BY event_pubkey_kind_time
             WHERE pubkey = ?1 AND created_at <= ?2 AND seq != ?3",
        )?
        .query_map(params![pubkey, request.created_at, request_seq], |row| {
            row.get(0)
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut removed = own.len() as u64;
    for seq in own {
        delete_event(tx, seq)?;
    }
    let wraps: Vec<(i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT e.seq, e.id FROM tag t JOIN event e ON e.seq = t.event_seq
             WHERE t.name = 'p' AND t.value = ?1 AND t.kind = ?2",
        )?
        .query_map(params![pubkey, kind::GIFT_WRAP], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    removed += wraps.len() as u64;
    for (seq, id) in wraps {
        tx.prepare_cached("INSERT OR IGNORE INTO deletion (event_id, deleter) VALUES (?1, ?2)")?
            .execute(params![id, pubkey])?;
        delete_event(tx, seq)?;
    }
    Ok(removed)
}

/// Deletes an event, its tag rows and its NIP-50 index entry. The tag table
/// has no index by event, so its rows are found by their full key,
/// recomputed from the stored tags.
pub(super) fn delete_event(conn: &Connection, seq: i64) -> rusqlite::Result<()> {
    let json: Option<String> = conn
        .prepare_cached("SELECT json FROM event WHERE seq = ?1")?
        .query_row(params![seq], |row| row.get(0))
        .optional()?;
    let stored = json
        .as_deref()
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .and_then(|value| Event::from_value(&value).ok());
    if let Some(stored) = stored {
        let mut delete_tag = conn.prepare_cached(
            "DELETE FROM tag WHERE name = ?1 AND value = ?2 AND created_at = ?3 AND event_seq = ?4",
        )?;
        for tag in stored.tags.iter().filter(|tag| is_indexed_tag(tag)) {
            delete_tag.execute(params![tag[0], tag_value(&tag[1]), stored.created_at, seq])?;
        }
    }
    conn.prepare_cached("DELETE FROM event WHERE seq = ?1")?
        .execute(params![seq])?;
    super::search::unindex(conn, seq)
}

fn purge_expired(conn: &mut Connection, now: i64, batch: usize) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let seqs = tx
        .prepare_cached(
            "SELECT seq FROM event WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2",
        )?
        .query_map(params![now, batch as i64], |row| row.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for seq in &seqs {
        delete_event(&tx, *seq)?;
    }
    tx.commit()?;
    Ok(seqs.len())
}
