//! This node's writer: one task, one dedicated connection, group commit,
//! and the NIP-01/09/40/62 rules of `store/writer.rs` made atomic across
//! nodes.
//!
//! The task takes whatever inserts are queued (up to `max_write_batch`),
//! opens one READ COMMITTED transaction and first takes transaction-scoped
//! advisory locks for the whole batch, sorted by key, so that two nodes'
//! writers never wait on each other in a cycle:
//! - exclusive on each address (pubkey, kind, d) inserted or `a`-deleted,
//! - exclusive on each event id inserted and each `e` target of a kind 5,
//! - shared on each author (exclusive for a kind 62, which deletes the
//!   author's events),
//! - shared on the search configuration (exclusive in [`configure_search`]).
//!
//! Inside the locks every check reads afresh (READ COMMITTED sees what the
//! other node committed before it released the lock): tombstone, vanish,
//! address deletion, the stored version. The reads of the whole batch go
//! to the server in one flight (tokio-postgres pipelines the statements
//! of futures polled together), and so do the inserts of the events no
//! earlier event of the batch touched (`apply_pipelined`): round trips,
//! not the server, bounded the writer when each event waited for two.
//! The batch runs without savepoints
//! (a savepoint per event is a subtransaction, and more than 64 of them in
//! one transaction slow every snapshot on the server); when one event
//! fails, the batch is rolled back and run again with a savepoint per
//! event, so that one failure does not sink its neighbours. A deadlock or
//! serialization failure (SQLSTATE 40P01/40001) runs the batch again.
//! Only after the commit are the callers answered and `on_commit` called.
//!
//! Each stored row gets `origin_node` (this node) and `origin_seq`, the
//! next number of this node's sequence, assigned only to a row really
//! inserted; `node_sequence` is read under a row lock and advanced in the
//! same transaction, so a failed commit consumes nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, GenericClient, NoTls, Statement, Transaction};

use super::{is_retryable, tag_bytes};
use crate::nostr::hex::decode_lower;
use crate::nostr::{CanonicalEvent, Event, KindClass, kind};
use crate::store::sql::{is_indexed_tag, may_delete};
use crate::store::{CommitHook, Committed, StoreError, WriteOutcome};

/// Work for the writer task.
pub(super) enum WriteJob {
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
    /// Makes the `search` column hold exactly these kinds.
    ConfigureSearch {
        kinds: Vec<u16>,
        reply: oneshot::Sender<Result<Option<usize>, StoreError>>,
    },
    /// Finish what is queued before this job, then stop.
    Stop,
}

/// Most advisory locks one transaction takes: they share the server's
/// lock table (`max_locks_per_transaction` × `max_connections` slots) with
/// every other lock, so a large batch is committed in several parts.
const MAX_LOCKS_PER_TRANSACTION: usize = 512;

/// How often a batch that met a deadlock or serialization failure is run
/// again before its callers get the error.
const MAX_RETRIES: u32 = 8;

/// The SQL behind [`probe`]: everything the rules need to know about an
/// event before it is inserted, in one round trip. `$5` (the address's d)
/// is NULL for kinds without an address, which matches no row.
pub(super) const PROBE: &str = "
    SELECT EXISTS (SELECT 1 FROM event WHERE id = $1),
           ARRAY (SELECT deleter FROM deletion WHERE event_id = $1),
           EXISTS (SELECT 1 FROM event
                   WHERE pubkey = $2 AND kind = 62 AND created_at >= $3),
           (SELECT until FROM address_deletion
            WHERE pubkey = $2 AND kind = $4 AND d_tag = $5),
           current.seq, current.created_at, current.id
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (SELECT seq, created_at, id FROM event
                       WHERE pubkey = $2 AND kind = $4 AND d_tag = $5) AS current ON true";

const INSERT: &str = "
    WITH inserted AS (
        INSERT INTO event (id, pubkey, created_at, kind, d_tag, expires_at,
                           origin_node, origin_seq, json, search)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, to_tsvector('simple', $10::text))
        ON CONFLICT (id) DO NOTHING
        RETURNING seq
    ), tags AS (
        INSERT INTO tag (name, value, created_at, event_seq, kind)
        SELECT t.name, t.value, $3, inserted.seq, $4
        FROM inserted, unnest($11::text[], $12::bytea[]) AS t (name, value)
        ON CONFLICT DO NOTHING
    )
    SELECT seq FROM inserted";

/// What [`probe`] found.
pub(super) struct Probe {
    /// An event with this id is stored.
    pub stored: bool,
    /// The pubkeys whose NIP-09 deletions name this id.
    deleters: Vec<Vec<u8>>,
    /// Its author asked to vanish at or after its created_at (NIP-62).
    pub vanished: bool,
    /// The `a`-tag deletion of its address: versions up to this are refused.
    address_deleted_until: Option<i64>,
    /// The version stored at its address: (seq, created_at, id).
    current: Option<(i64, i64, Vec<u8>)>,
}

impl Probe {
    /// Whether an `e`-tag deletion by an entitled deleter forbids the event
    /// (its author, or for a gift wrap its recipient); never a deletion.
    pub(super) fn tombstoned(&self, event: &Event) -> bool {
        event.kind != kind::DELETION
            && self
                .deleters
                .iter()
                .any(|deleter| may_delete(event, deleter))
    }
}

/// Reads what the rules need to know about `event`, with the statement
/// [`PROBE`] prepared on `client`.
pub(super) async fn probe(
    client: &impl GenericClient,
    statement: &Statement,
    event: &Event,
) -> Result<Probe, tokio_postgres::Error> {
    let row = client
        .query_one(
            statement,
            &[
                &&event.id[..],
                &&event.pubkey[..],
                &event.created_at,
                &i32::from(event.kind),
                &event.address_d().map(str::as_bytes),
            ],
        )
        .await?;
    let seq: Option<i64> = row.try_get(4)?;
    let created_at: Option<i64> = row.try_get(5)?;
    let id: Option<Vec<u8>> = row.try_get(6)?;
    Ok(Probe {
        stored: row.try_get(0)?,
        deleters: row.try_get(1)?,
        vanished: row.try_get(2)?,
        address_deleted_until: row.try_get(3)?,
        current: seq.zip(created_at).zip(id).map(|((s, c), i)| (s, c, i)),
    })
}

/// The statements the writer runs for every batch and every event,
/// prepared once per connection: a statement sent as text costs a second
/// round trip (parse, then execute) and cannot be pipelined.
struct Statements {
    probe: Statement,
    insert: Statement,
    delete: Statement,
    locks: Statement,
    last_seq: Statement,
    advance: Statement,
    search_kinds: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            probe: client.prepare(PROBE).await?,
            insert: client.prepare(INSERT).await?,
            delete: client.prepare("DELETE FROM event WHERE seq = $1").await?,
            // unnest returns the array's elements in order, and each row's
            // lock is taken as it is read.
            locks: client
                .prepare(
                    "SELECT CASE WHEN t.exclusive THEN pg_advisory_xact_lock(t.key)
                                 ELSE pg_advisory_xact_lock_shared(t.key) END
                     FROM unnest($1::bigint[], $2::bool[]) WITH ORDINALITY AS t (key, exclusive, n)
                     ORDER BY t.n",
                )
                .await?,
            last_seq: client
                .prepare("SELECT last_seq FROM node_sequence WHERE node = $1 FOR UPDATE")
                .await?,
            advance: client
                .prepare("UPDATE node_sequence SET last_seq = $2 WHERE node = $1")
                .await?,
            search_kinds: client.prepare("SELECT kind FROM search_kind").await?,
        })
    }
}

type Insert = (
    Arc<CanonicalEvent>,
    oneshot::Sender<Result<WriteOutcome, StoreError>>,
);

/// The writer task's state.
pub(super) struct Writer {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
    /// To connect again when the connection is lost.
    config: tokio_postgres::Config,
    statements: Statements,
    node: String,
    max_batch: usize,
    on_commit: CommitHook,
}

impl Writer {
    /// Takes over the connection `open` migrated with, and makes sure this
    /// node has its sequence row.
    pub(super) async fn start(
        client: Client,
        connection: tokio::task::JoinHandle<()>,
        config: tokio_postgres::Config,
        node: String,
        max_batch: usize,
        on_commit: CommitHook,
    ) -> Result<Writer, StoreError> {
        client
            .execute(
                "INSERT INTO node_sequence (node, last_seq) VALUES ($1, 0)
                 ON CONFLICT (node) DO NOTHING",
                &[&node],
            )
            .await?;
        let statements = Statements::prepare(&client).await?;
        Ok(Writer {
            client,
            connection,
            config,
            statements,
            node,
            max_batch,
            on_commit,
        })
    }

    /// The task's loop: returns when a [`WriteJob::Stop`] arrives or every
    /// sender is gone.
    pub(super) async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<WriteJob>) {
        let mut stopping = false;
        while !stopping {
            let Some(first) = jobs.recv().await else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
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
                        let outcome = match self.connected().await {
                            Ok(()) => purge_expired(&self.client, now, batch).await,
                            Err(error) => Err(error),
                        };
                        let _ = reply.send(outcome);
                    }
                    WriteJob::ConfigureSearch { kinds, reply } => {
                        let outcome = match self.connected().await {
                            Ok(()) => configure_search(&mut self.client, &kinds).await,
                            Err(error) => Err(error),
                        };
                        let _ = reply.send(outcome);
                    }
                    WriteJob::Stop => stopping = true,
                }
            }
            for part in split_by_locks(inserts) {
                crate::metrics::global().write_batch(part.len());
                // A bug must not kill the only writer: a panicking batch is
                // rolled back (the transaction's Drop), its callers get an
                // error (their reply senders are dropped), and the task goes on.
                let outcome = AssertUnwindSafe(self.commit_inserts(part))
                    .catch_unwind()
                    .await;
                if outcome.is_err() {
                    tracing::error!("the writer panicked on a batch; it was rolled back");
                }
            }
        }
        self.connection.abort();
        tracing::debug!("writer stopped");
    }

    /// Connects again if the connection was lost (the server restarted).
    async fn connected(&mut self) -> Result<(), StoreError> {
        if !self.client.is_closed() {
            return Ok(());
        }
        let (client, connection) = self.config.connect(NoTls).await?;
        let connection = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the writer's database connection ended");
            }
        });
        self.statements = Statements::prepare(&client).await?;
        self.client = client;
        self.connection.abort();
        self.connection = connection;
        tracing::info!("the writer reconnected to the database");
        Ok(())
    }

    async fn commit_inserts(&mut self, inserts: Vec<Insert>) {
        let events: Vec<Arc<CanonicalEvent>> =
            inserts.iter().map(|(event, _)| event.clone()).collect();
        let outcome = self.apply_with_retries(&events).await;
        match outcome {
            Ok(outcomes) => {
                let committed: Vec<Committed> = events
                    .iter()
                    .zip(&outcomes)
                    .filter_map(|(event, outcome)| match outcome {
                        Ok(WriteOutcome::Stored { seq, .. }) => Some(Committed {
                            seq: *seq,
                            event: event.clone(),
                        }),
                        _ => None,
                    })
                    .collect();
                // Fan out before answering: once a client has read `OK
                // true`, a subscription it opens afterwards gets the event
                // from the store, not live.
                if !committed.is_empty() {
                    (self.on_commit)(&committed);
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

    /// Applies the batch: pipelined first, then event by event (each in
    /// a savepoint) after a failure, and again after a deadlock or
    /// serialization failure. The outer error means nothing of the batch
    /// was stored.
    async fn apply_with_retries(
        &mut self,
        events: &[Arc<CanonicalEvent>],
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        let mut mode = Mode::Pipelined;
        let mut retries = 0;
        let mut reconnected = false;
        loop {
            self.connected().await?;
            match apply_batch(&mut self.client, &self.statements, &self.node, events, mode).await {
                Ok(Some(outcomes)) => return Ok(outcomes),
                // Rolled back: a hole in origin_seq was avoided.
                Ok(None) => mode = Mode::Serial,
                Err(error) if is_retryable(&error) && retries < MAX_RETRIES => {
                    retries += 1;
                    tracing::debug!(%error, retries, "write batch met another node's; retrying");
                    let pause = rand::random_range(1..=10u64 * u64::from(retries));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                // The server restarted, or ended this connection: once
                // more on a new one. (Lost during COMMIT, the batch may
                // have been stored: its events are then duplicates.)
                Err(error) if self.client.is_closed() && !reconnected => {
                    tracing::warn!(%error, "the writer lost its connection; reconnecting");
                    reconnected = true;
                }
                Err(error) if mode != Mode::Savepoints && !self.client.is_closed() => {
                    tracing::debug!(%error, "batch failed as a whole; retrying event by event");
                    mode = Mode::Savepoints;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Splits the inserts into parts that each take at most
/// [`MAX_LOCKS_PER_TRANSACTION`] locks (at least one event per part).
fn split_by_locks(inserts: Vec<Insert>) -> Vec<Vec<Insert>> {
    let mut parts: Vec<Vec<Insert>> = Vec::new();
    let mut current = Vec::new();
    let mut locks = 0;
    for insert in inserts {
        let needed = locks_of(&insert.0.event).len();
        if !current.is_empty() && locks + needed > MAX_LOCKS_PER_TRANSACTION {
            parts.push(std::mem::take(&mut current));
            locks = 0;
        }
        locks += needed;
        current.push(insert);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

/// An advisory lock key: the first 8 bytes of SHA-256 over a namespace
/// and the parts, as PostgreSQL's bigint. Two nodes compute the same key
/// for the same thing; an unrelated collision only serializes two writes.
pub(super) fn lock_key(namespace: &str, parts: &[&[u8]]) -> i64 {
    let mut hash = Sha256::new();
    hash.update(namespace.as_bytes());
    for part in parts {
        hash.update([0u8]);
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The lock on an event id (inserting it, deleting it by NIP-09 or a ban).
pub(super) fn id_lock(id: &[u8]) -> i64 {
    lock_key("nostr-relayd id", &[id])
}

fn author_lock(pubkey: &[u8]) -> i64 {
    lock_key("nostr-relayd author", &[pubkey])
}

fn address_lock(pubkey: &[u8], kind: u16, d: &str) -> i64 {
    lock_key(
        "nostr-relayd address",
        &[pubkey, &kind.to_be_bytes(), d.as_bytes()],
    )
}

/// The lock every batch takes shared and the search configuration
/// exclusive, so that no event is indexed by rules being replaced.
fn search_lock() -> i64 {
    lock_key("nostr-relayd search", &[])
}

/// The locks one event needs: key → exclusive.
fn locks_of(event: &Event) -> BTreeMap<i64, bool> {
    let mut locks = BTreeMap::new();
    let mut add = |key: i64, exclusive: bool| {
        *locks.entry(key).or_insert(false) |= exclusive;
    };
    add(id_lock(&event.id), true);
    add(
        author_lock(&event.pubkey),
        event.kind == kind::REQUEST_TO_VANISH,
    );
    if let Some(d) = event.address_d() {
        add(address_lock(&event.pubkey, event.kind, d), true);
    }
    if event.kind == kind::DELETION {
        for target in event.tag_values("e").filter_map(decode_lower::<32>) {
            add(id_lock(&target), true);
        }
        for address in event.tag_values("a") {
            if let Some((kind, d)) = deleted_address(address, &event.pubkey) {
                add(address_lock(&event.pubkey, kind, d), true);
            }
        }
    }
    locks
}

/// The address an `a` tag of a deletion by `deleter` deletes: (kind, d),
/// with d = "" for replaceable kinds. None for a malformed tag, another
/// pubkey's address, or a kind without addresses.
fn deleted_address<'a>(address: &'a str, deleter: &[u8; 32]) -> Option<(u16, &'a str)> {
    let mut parts = address.splitn(3, ':');
    let (Some(kind_text), Some(pubkey_text), Some(d)) = (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let (Ok(kind), Some(pubkey)) = (kind_text.parse::<u16>(), decode_lower::<32>(pubkey_text))
    else {
        return None;
    };
    if pubkey != *deleter || !KindClass::of(kind).has_address() {
        return None;
    }
    let d = if KindClass::of(kind) == KindClass::Replaceable {
        ""
    } else {
        d
    };
    Some((kind, d))
}

/// Takes the locks, sorted by key, in one statement.
async fn take_locks(
    tx: &Transaction<'_>,
    statements: &Statements,
    locks: &BTreeMap<i64, bool>,
) -> Result<(), tokio_postgres::Error> {
    let keys: Vec<i64> = locks.keys().copied().collect();
    let exclusive: Vec<bool> = locks.values().copied().collect();
    tx.execute(&statements.locks, &[&keys, &exclusive]).await?;
    Ok(())
}

/// How a batch is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Probes sent together, the inserts of events no earlier event of
    /// the batch touched sent together ([`apply_pipelined`]).
    Pipelined,
    /// Event by event, each probed just before its insert.
    Serial,
    /// Event by event, each in a savepoint: one failure sinks only its
    /// own event.
    Savepoints,
}

/// One transaction for the batch; the error means it was rolled back.
/// None (only in [`Mode::Pipelined`]): an insert found its id stored
/// although its probe had not; the transaction was rolled back so that
/// no `origin_seq` is skipped, and the batch should run again serially.
async fn apply_batch(
    client: &mut Client,
    statements: &Statements,
    node: &str,
    events: &[Arc<CanonicalEvent>],
    mode: Mode,
) -> Result<Option<Vec<Result<WriteOutcome, StoreError>>>, tokio_postgres::Error> {
    let mut locks = BTreeMap::new();
    locks.insert(search_lock(), false);
    for event in events {
        for (key, exclusive) in locks_of(&event.event) {
            *locks.entry(key).or_insert(false) |= exclusive;
        }
    }
    let tx = client.transaction().await?;
    take_locks(&tx, statements, &locks).await?;
    // The sequence row, the search kinds and (pipelined) every event's
    // probe in one flight; all read under the locks just taken.
    //
    // The row lock also gives the transaction its id before any `nextval`
    // of `event.seq`: `sync`'s settled bound (postgres/sync.rs,
    // `settled_seq`) relies on it. Keep it before the first insert.
    let probes = async {
        if mode == Mode::Pipelined {
            let probes = events
                .iter()
                .map(|event| probe(&tx, &statements.probe, &event.event));
            futures_util::future::try_join_all(probes).await.map(Some)
        } else {
            Ok(None)
        }
    };
    let (last, searchable, probes) = futures_util::future::join3(
        tx.query_one(&statements.last_seq, &[&node]),
        tx.query(&statements.search_kinds, &[]),
        probes,
    )
    .await;
    let last: i64 = last?.try_get(0)?;
    let searchable: Vec<i32> = searchable?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let probes = probes?;
    let mut next = last + 1;
    let outcomes = match (mode, probes) {
        (Mode::Pipelined, Some(probes)) => {
            match apply_pipelined(
                &tx,
                statements,
                node,
                &mut next,
                events,
                probes,
                &searchable,
            )
            .await?
            {
                Some(outcomes) => outcomes.into_iter().map(Ok).collect(),
                None => {
                    tx.rollback().await?;
                    return Ok(None);
                }
            }
        }
        (Mode::Savepoints, _) => {
            let mut tx = tx;
            let mut outcomes = Vec::with_capacity(events.len());
            for event in events {
                let savepoint = tx.savepoint("event").await?;
                let before = next;
                match apply_event(&savepoint, statements, node, &mut next, event, &searchable).await
                {
                    Ok(outcome) => {
                        savepoint.commit().await?;
                        outcomes.push(Ok(outcome));
                    }
                    Err(error) if is_retryable(&error) => return Err(error),
                    Err(error) => {
                        savepoint.rollback().await?;
                        next = before;
                        outcomes.push(Err(StoreError::from(error)));
                    }
                }
            }
            return finish(tx, statements, node, last, next, outcomes).await;
        }
        _ => {
            let mut outcomes = Vec::with_capacity(events.len());
            for event in events {
                let outcome =
                    apply_event(&tx, statements, node, &mut next, event, &searchable).await?;
                outcomes.push(Ok(outcome));
            }
            outcomes
        }
    };
    finish(tx, statements, node, last, next, outcomes).await
}

/// Advances this node's sequence past what the batch numbered, and commits.
async fn finish(
    tx: Transaction<'_>,
    statements: &Statements,
    node: &str,
    last: i64,
    next: i64,
    outcomes: Vec<Result<WriteOutcome, StoreError>>,
) -> Result<Option<Vec<Result<WriteOutcome, StoreError>>>, tokio_postgres::Error> {
    if next != last + 1 {
        tx.execute(&statements.advance, &[&node, &(next - 1)])
            .await?;
    }
    tx.commit().await?;
    Ok(Some(outcomes))
}

/// The batch with its probes read up front (`probes[i]` is `events[i]`'s,
/// read under the batch's locks before any write). Walking the events in
/// order, an event whose probe is still true (no earlier event of the
/// batch [`Touched`] what it read) and that writes nothing but its own row
/// is decided from that probe at once: its insert (after the delete of the
/// version it replaces) joins a queue that goes to the server in one
/// flight. Any other event — a probe that may be stale, a kind 5, 62 or
/// 1984 — waits for the queue to be written, then runs [`apply_event`]
/// (probed afresh) as in [`Mode::Serial`]. The rules are those of
/// [`decide`] either way, on what the same reads would return, and
/// `origin_seq` numbers the stored events in batch order.
///
/// None: a queued insert found its id already stored (cannot happen while
/// the batch holds every inserted id's lock: every other writer of event
/// rows takes it too); the numbering after it would have a hole.
async fn apply_pipelined(
    tx: &Transaction<'_>,
    statements: &Statements,
    node: &str,
    next: &mut i64,
    events: &[Arc<CanonicalEvent>],
    probes: Vec<Probe>,
    searchable: &[i32],
) -> Result<Option<Vec<WriteOutcome>>, tokio_postgres::Error> {
    let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; events.len()];
    let mut touched = Touched::default();
    let mut queue: Vec<Queued> = Vec::new();
    for (index, (canonical, found)) in events.iter().zip(&probes).enumerate() {
        let event = &canonical.event;
        let fresh = !touched.stales(event);
        touched.record(event);
        if fresh && !writes_beyond_itself(event.kind) {
            match decide(event, found) {
                Decision::Refuse(outcome) => outcomes[index] = Some(outcome),
                Decision::Insert { replaces } => {
                    queue.push(Queued {
                        index,
                        replaces,
                        row: EventRow::new(canonical, searchable, *next),
                    });
                    *next += 1;
                }
            }
        } else {
            if !write_queue(tx, statements, node, &mut queue, &mut outcomes).await? {
                return Ok(None);
            }
            let outcome = apply_event(tx, statements, node, next, canonical, searchable).await?;
            outcomes[index] = Some(outcome);
        }
    }
    if !write_queue(tx, statements, node, &mut queue, &mut outcomes).await? {
        return Ok(None);
    }
    // Every index got its outcome: decided at once, queued and written,
    // or applied one by one.
    Ok(outcomes.into_iter().collect())
}

/// An insert decided from its up-front probe, waiting in the queue.
struct Queued<'a> {
    /// Its event's place in the batch.
    index: usize,
    /// The `seq` of the version it replaces, deleted just before it.
    replaces: Option<i64>,
    row: EventRow<'a>,
}

/// Writes the queued inserts (each after its replacement's delete) in one
/// flight, in queue order; records their outcomes and empties the queue.
/// False: an insert found its id stored (see [`apply_pipelined`]).
async fn write_queue(
    tx: &Transaction<'_>,
    statements: &Statements,
    node: &str,
    queue: &mut Vec<Queued<'_>>,
    outcomes: &mut [Option<WriteOutcome>],
) -> Result<bool, tokio_postgres::Error> {
    if queue.is_empty() {
        return Ok(true);
    }
    /// One statement of the flight.
    enum Step<'q, 'a> {
        Delete(i64),
        Insert(&'q EventRow<'a>),
    }
    async fn run(
        tx: &Transaction<'_>,
        statements: &Statements,
        node: &str,
        step: Step<'_, '_>,
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        match step {
            Step::Delete(seq) => {
                tx.execute(&statements.delete, &[&seq]).await?;
                Ok(None)
            }
            Step::Insert(row) => row.insert(tx, statements, node).await,
        }
    }
    let mut steps = Vec::with_capacity(queue.len() + queue.len() / 4);
    for queued in queue.iter() {
        if let Some(seq) = queued.replaces {
            steps.push(run(tx, statements, node, Step::Delete(seq)));
        }
        steps.push(run(tx, statements, node, Step::Insert(&queued.row)));
    }
    let mut results = in_order(steps).await.into_iter();
    for queued in queue.iter() {
        if queued.replaces.is_some() {
            // The delete's answer: only its error matters.
            results.next().transpose()?;
        }
        // One result per step: both iterators follow the queue.
        let inserted = results.next().transpose()?.flatten();
        if inserted.is_none() {
            tracing::warn!(
                "an insert found its event stored although its probe did not; \
                 running the batch again one event at a time"
            );
            return Ok(false);
        }
        outcomes[queued.index] = Some(WriteOutcome::Stored {
            // Cannot be negative: the sequence starts at 1 and only grows.
            seq: queued.row.origin_seq as u64,
            removed: u64::from(queued.replaces.is_some()),
        });
    }
    queue.clear();
    Ok(true)
}

/// Runs the futures pipelined and returns their outputs in order: each is
/// polled once in the order given before any is awaited (tokio-postgres
/// sends a request when its future is first polled, and the server runs
/// requests in the order they arrive), then their answers are awaited in
/// that same order, the order they come back in.
async fn in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Poll::Ready(value) = future.as_mut().poll(cx) {
                *output = Some(value);
            }
        }
        Poll::Ready(())
    })
    .await;
    let mut results = Vec::with_capacity(futures.len());
    for (future, output) in futures.into_iter().zip(outputs) {
        results.push(match output {
            Some(value) => value,
            None => future.await,
        });
    }
    results
}

/// Kinds whose storing writes more than their own row (NIP-09 deletions,
/// NIP-62 vanish, NIP-56 reports): always applied one at a time.
fn writes_beyond_itself(kind: u16) -> bool {
    matches!(
        kind,
        kind::DELETION | kind::REQUEST_TO_VANISH | kind::REPORT
    )
}

/// What the events applied so far in a batch may have changed of what a
/// later event's [`probe`] reads (the rows and tombstones of its id, its
/// author's stored events and NIP-62 requests, the version and `a`
/// deletion at its address), so that a probe read before them is used
/// only while it still holds. Keys are the advisory lock keys (a
/// collision only costs a fresh probe).
#[derive(Default)]
struct Touched {
    keys: std::collections::HashSet<i64>,
    /// A NIP-62 request removed and tombstoned gift wraps of any id.
    everything: bool,
}

impl Touched {
    /// Whether `event`'s probe, read before the events recorded so far
    /// were applied, may read otherwise now.
    fn stales(&self, event: &Event) -> bool {
        self.everything
            || self.keys.contains(&id_lock(&event.id))
            || self.keys.contains(&author_lock(&event.pubkey))
            || event.address_d().is_some_and(|d| {
                self.keys
                    .contains(&address_lock(&event.pubkey, event.kind, d))
            })
    }

    /// Notes what applying `event` may change: its id's row, and the
    /// version at its address (replaced). A NIP-09 deletion also tombstones
    /// and deletes its `e` targets (another author's only when it is a gift
    /// wrap, which has no address: `may_delete`), and deletes its author's
    /// events by id or by `a` address: its author stands for all of those
    /// addresses. A NIP-62 request deletes its author's events and
    /// tombstones the gift wraps to it, whatever their ids: anything.
    fn record(&mut self, event: &Event) {
        self.keys.insert(id_lock(&event.id));
        if let Some(d) = event.address_d() {
            self.keys.insert(address_lock(&event.pubkey, event.kind, d));
        }
        match event.kind {
            kind::DELETION => {
                self.keys.insert(author_lock(&event.pubkey));
                for target in event.tag_values("e").filter_map(decode_lower::<32>) {
                    self.keys.insert(id_lock(&target));
                }
            }
            kind::REQUEST_TO_VANISH => self.everything = true,
            _ => {}
        }
    }
}

/// What the NIP-01, NIP-09 and NIP-62 rules make of an event, given what
/// its probe read.
enum Decision {
    /// Not stored: the answer.
    Refuse(WriteOutcome),
    /// Inserted, after the version at its address (this `seq`) is deleted.
    Insert { replaces: Option<i64> },
}

/// The rules of SQLite's `writer::apply_event`, in its order, on what
/// [`probe`] read.
fn decide(event: &Event, found: &Probe) -> Decision {
    if found.tombstoned(event) {
        return Decision::Refuse(WriteOutcome::Deleted);
    }
    if found.vanished {
        return Decision::Refuse(WriteOutcome::Vanished);
    }
    if event.address_d().is_some() {
        if found
            .address_deleted_until
            .is_some_and(|until| event.created_at <= until)
        {
            return Decision::Refuse(WriteOutcome::Deleted);
        }
        if let Some((seq, created_at, id)) = &found.current {
            if id.as_slice() == &event.id[..] {
                return Decision::Refuse(WriteOutcome::Duplicate);
            }
            // NIP-01: the newer wins; on equal timestamps the lowest id wins.
            let stored_wins = *created_at > event.created_at
                || (*created_at == event.created_at && id.as_slice() < &event.id[..]);
            if stored_wins {
                return Decision::Refuse(WriteOutcome::Superseded);
            }
            return Decision::Insert {
                replaces: Some(*seq),
            };
        }
    }
    // What the insert's ON CONFLICT would find, known without sending it.
    if found.stored {
        return Decision::Refuse(WriteOutcome::Duplicate);
    }
    Decision::Insert { replaces: None }
}

/// The values of one event's row and tag rows, owned, so that several
/// inserts can be in flight at once.
struct EventRow<'a> {
    event: &'a CanonicalEvent,
    /// Bytes, not text: a `d` value may hold a NUL, which PostgreSQL's
    /// text refuses and a client may send.
    d_tag: Option<&'a [u8]>,
    expires_at: Option<i64>,
    /// The NIP-50 text, for the kinds `search` holds.
    text: Option<String>,
    tag_names: Vec<&'a str>,
    tag_values: Vec<Vec<u8>>,
    origin_seq: i64,
}

impl<'a> EventRow<'a> {
    fn new(canonical: &'a CanonicalEvent, searchable: &[i32], origin_seq: i64) -> EventRow<'a> {
        let event = &canonical.event;
        let text = if searchable.contains(&i32::from(event.kind)) {
            search_text(event.kind, &event.content)
        } else {
            None
        };
        let (tag_names, tag_values) = event
            .tags
            .iter()
            .filter(|tag| is_indexed_tag(tag))
            .map(|tag| (tag[0].as_str(), tag_bytes(&tag[1])))
            .unzip();
        EventRow {
            event: canonical,
            d_tag: event.address_d().map(str::as_bytes),
            expires_at: event.expiration().ok().flatten(),
            text,
            tag_names,
            tag_values,
            origin_seq,
        }
    }

    /// Inserts the row and its tag rows; the new row's `seq`, or None when
    /// the id is stored already.
    async fn insert(
        &self,
        tx: &Transaction<'_>,
        statements: &Statements,
        node: &str,
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let event = &self.event.event;
        tx.query_opt(
            &statements.insert,
            &[
                &&event.id[..],
                &&event.pubkey[..],
                &event.created_at,
                &i32::from(event.kind),
                &self.d_tag,
                &self.expires_at,
                &node,
                &self.origin_seq,
                &self.event.json,
                &self.text,
                &self.tag_names,
                &self.tag_values,
            ],
        )
        .await
    }
}

/// NIP-01, NIP-09 and NIP-62 rules for one event, under the batch's locks
/// (the same rules, in the same order, as SQLite's `writer::apply_event`),
/// probed just before it is written.
async fn apply_event(
    tx: &Transaction<'_>,
    statements: &Statements,
    node: &str,
    next: &mut i64,
    canonical: &CanonicalEvent,
    searchable: &[i32],
) -> Result<WriteOutcome, tokio_postgres::Error> {
    let event = &canonical.event;
    let found = probe(tx, &statements.probe, event).await?;
    let mut removed = 0;
    match decide(event, &found) {
        Decision::Refuse(outcome) => return Ok(outcome),
        Decision::Insert { replaces } => {
            if let Some(seq) = replaces {
                tx.execute(&statements.delete, &[&seq]).await?;
                removed += 1;
            }
        }
    }
    let row = EventRow::new(canonical, searchable, *next);
    let Some(inserted) = row.insert(tx, statements, node).await? else {
        return Ok(WriteOutcome::Duplicate);
    };
    let seq: i64 = inserted.try_get(0)?;
    *next += 1;
    if event.kind == kind::DELETION {
        removed += apply_deletion(tx, statements, event).await?;
    }
    if event.kind == kind::REQUEST_TO_VANISH {
        removed += apply_vanish(tx, event, seq).await?;
    }
    if event.kind == kind::REPORT {
        super::lists::record_report(tx, event).await?;
    }
    // Cannot be negative: the sequence starts at 1 and only grows.
    Ok(WriteOutcome::Stored {
        seq: row.origin_seq as u64,
        removed,
    })
}

/// The NIP-50 text of an event of an indexed kind: its content, or for a
/// kind-0 profile the string values of name, display_name, about and
/// nip05, one per line (never its other keys; nothing when the content is
/// not a JSON object). None when there is no text. The same rules as
/// SQLite's `search::index_event`.
pub(super) fn search_text(kind: u16, content: &str) -> Option<String> {
    let text = if kind == 0 {
        let serde_json::Value::Object(profile) = serde_json::from_str(content).ok()? else {
            return None;
        };
        let fields: Vec<&str> = ["name", "display_name", "about", "nip05"]
            .iter()
            .filter_map(|key| profile.get(*key).and_then(serde_json::Value::as_str))
            .collect();
        fields.join("\n")
    } else {
        content.to_owned()
    };
    // Folded as queries fold their terms (no diacritics, no NUL, which
    // PostgreSQL's text refuses): both sides tokenize alike.
    (!text.is_empty()).then(|| super::search::search_words(&text))
}

/// NIP-09: removes what a kind-5 event asks to remove (its targets are
/// locked by the batch), and records it so that the targets are refused
/// if they arrive later. Returns how many stored events it deleted.
async fn apply_deletion(
    tx: &Transaction<'_>,
    statements: &Statements,
    deletion: &Event,
) -> Result<u64, tokio_postgres::Error> {
    let deleter = &deletion.pubkey[..];
    let mut removed = 0;
    for target in deletion.tag_values("e").filter_map(decode_lower::<32>) {
        tx.execute(
            "INSERT INTO deletion (event_id, deleter) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&&target[..], &deleter],
        )
        .await?;
        let stored = tx
            .query_opt("SELECT seq, json FROM event WHERE id = $1", &[&&target[..]])
            .await?;
        if let Some(row) = stored {
            let seq: i64 = row.try_get(0)?;
            let json: &str = row.try_get(1)?;
            let entitled = serde_json::from_str::<serde_json::Value>(json)
                .ok()
                .and_then(|value| Event::from_value(&value).ok())
                .is_some_and(|target| {
                    target.kind != kind::DELETION && may_delete(&target, deleter)
                });
            if entitled {
                tx.execute(&statements.delete, &[&seq]).await?;
                removed += 1;
            }
        }
    }
    for address in deletion.tag_values("a") {
        let Some((kind, d)) = deleted_address(address, &deletion.pubkey) else {
            continue;
        };
        let kind = i32::from(kind);
        tx.execute(
            "INSERT INTO address_deletion (pubkey, kind, d_tag, until) VALUES ($1, $2, $3, $4)
             ON CONFLICT (pubkey, kind, d_tag)
             DO UPDATE SET until = greatest(address_deletion.until, excluded.until)",
            &[&deleter, &kind, &d.as_bytes(), &deletion.created_at],
        )
        .await?;
        removed += tx
            .execute(
                "DELETE FROM event
                 WHERE pubkey = $1 AND kind = $2 AND d_tag = $3 AND created_at <= $4",
                &[&deleter, &kind, &d.as_bytes(), &deletion.created_at],
            )
            .await?;
    }
    Ok(removed)
}

/// NIP-62: deletes everything the requester published up to the request
/// (the request itself stays as the record that refuses them later), and
/// every gift wrap addressed to it, whose ids are tombstoned. Returns how
/// many stored events it deleted.
async fn apply_vanish(
    tx: &Transaction<'_>,
    request: &Event,
    request_seq: i64,
) -> Result<u64, tokio_postgres::Error> {
    let pubkey = &request.pubkey[..];
    let own = tx
        .execute(
            "DELETE FROM event WHERE pubkey = $1 AND created_at <= $2 AND seq <> $3",
            &[&pubkey, &request.created_at, &request_seq],
        )
        .await?;
    // The wraps' p tags hold the recipient as its 32 raw bytes (tag_bytes).
    let wraps: i64 = tx
        .query_one(
            "WITH wraps AS (
                 DELETE FROM event e USING tag t
                 WHERE t.event_seq = e.seq AND t.name = 'p' AND t.value = $1 AND t.kind = $2
                 RETURNING e.id
             ), tombstones AS (
                 INSERT INTO deletion (event_id, deleter) SELECT id, $1 FROM wraps
                 ON CONFLICT DO NOTHING
             )
             SELECT count(*) FROM wraps",
            &[&pubkey, &i32::from(kind::GIFT_WRAP)],
        )
        .await?
        .try_get(0)?;
    Ok(own + u64::try_from(wraps).unwrap_or(0))
}

/// Deletes up to `batch` expired events (no tombstone: NIP-40).
async fn purge_expired(client: &Client, now: i64, batch: usize) -> Result<usize, StoreError> {
    let deleted = client
        .execute(
            "DELETE FROM event WHERE seq IN (
                 SELECT seq FROM event
                 WHERE expires_at IS NOT NULL AND expires_at <= $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&now, &i64::try_from(batch).unwrap_or(i64::MAX)],
        )
        .await?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}

/// Events re-indexed per statement when the search kinds change.
const REINDEX_PAGE: i64 = 1000;

/// Makes `search` hold exactly `kinds` (sorted; empty: search is off): when
/// `search_kind` says otherwise, clears the column and fills it again for
/// every stored event of those kinds, in one transaction under the search
/// lock (every writer batch holds it shared). Returns how many events were
/// indexed, or None when nothing had to change.
async fn configure_search(client: &mut Client, kinds: &[u16]) -> Result<Option<usize>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&search_lock()])
        .await?;
    let stored: Vec<i32> = tx
        .query("SELECT kind FROM search_kind ORDER BY kind", &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let wanted: Vec<i32> = kinds.iter().map(|&k| i32::from(k)).collect();
    let mut sorted = wanted.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if stored == sorted {
        return Ok(None);
    }
    tracing::info!(?kinds, "rebuilding the search index");
    let started = std::time::Instant::now();
    tx.execute(
        "UPDATE event SET search = NULL WHERE search IS NOT NULL",
        &[],
    )
    .await?;
    tx.execute("DELETE FROM search_kind", &[]).await?;
    tx.execute(
        "INSERT INTO search_kind (kind) SELECT unnest($1::integer[])",
        &[&sorted],
    )
    .await?;
    #[derive(serde::Deserialize)]
    struct Content {
        content: String,
    }
    let mut after = 0i64;
    let mut indexed = 0usize;
    loop {
        let rows = tx
            .query(
                "SELECT seq, kind, json FROM event WHERE kind = ANY($1) AND seq > $2
                 ORDER BY seq LIMIT $3",
                &[&sorted, &after, &REINDEX_PAGE],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.try_get(0)?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut texts = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind: i32 = row.try_get(1)?;
            let json: &str = row.try_get(2)?;
            let text = serde_json::from_str::<Content>(json)
                .ok()
                .and_then(|c| search_text(u16::try_from(kind).unwrap_or(u16::MAX), &c.content));
            if let Some(text) = text {
                seqs.push(row.try_get::<_, i64>(0)?);
                texts.push(text);
            }
        }
        indexed += seqs.len();
        tx.execute(
            "UPDATE event SET search = to_tsvector('simple', t.text)
             FROM unnest($1::bigint[], $2::text[]) AS t (seq, text)
             WHERE event.seq = t.seq",
            &[&seqs, &texts],
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(
        ?kinds,
        events = indexed,
        seconds = started.elapsed().as_secs_f64(),
        "search index rebuilt"
    );
    Ok(Some(indexed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_separate_namespaces_and_parts() {
        let a = [1u8; 32];
        assert_eq!(id_lock(&a), id_lock(&a));
        assert_ne!(id_lock(&a), author_lock(&a));
        assert_ne!(address_lock(&a, 30023, "x"), address_lock(&a, 30023, "y"));
        assert_ne!(address_lock(&a, 30023, ""), address_lock(&a, 30024, ""));
        // Length-prefixed parts: moving a byte between parts changes the key.
        assert_ne!(lock_key("n", &[b"ab", b"c"]), lock_key("n", &[b"a", b"bc"]));
    }

    #[test]
    fn deletion_addresses_are_the_deleters_own() {
        let me = [7u8; 32];
        let mine = hex::encode(me);
        assert_eq!(
            deleted_address(&format!("30023:{mine}:post"), &me),
            Some((30023, "post"))
        );
        // Replaceable kinds have the empty d, whatever the tag says.
        assert_eq!(
            deleted_address(&format!("10002:{mine}:junk"), &me),
            Some((10002, ""))
        );
        let other = hex::encode([8u8; 32]);
        assert_eq!(deleted_address(&format!("30023:{other}:post"), &me), None);
        assert_eq!(deleted_address(&format!("1:{mine}:x"), &me), None);
        assert_eq!(deleted_address("30023:zz", &me), None);
    }

    #[test]
    fn search_text_follows_sqlite_rules() {
        assert_eq!(search_text(1, "hello"), Some("hello".into()));
        assert_eq!(search_text(1, ""), None);
        let profile = r#"{"name":"Alice","website":"secret","about":"rabbit","nip05":5}"#;
        assert_eq!(search_text(0, profile), Some("alice rabbit".into()));
        assert_eq!(search_text(0, "not json"), None);
        assert_eq!(search_text(0, "[1]"), None);
        assert_eq!(search_text(0, r#"{"picture":"x"}"#), None);
    }
}
