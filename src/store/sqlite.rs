//! The SQLite backend: one writer thread with group commit, a pool of
//! reader connections, numbered migrations (`schema.rs`). The default, and
//! the fastest path on one machine.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::writer::{self, WriteJob};
use super::{
    CommitHook, CountResult, Freshness, QueryLimits, QueryResult, StoreError, StoreOptions,
    WriteOutcome, checkpoint, count, negentropy, query, retention, schema, sql, stats, unix_now,
};
use crate::config::Durability;
use crate::nostr::{CanonicalEvent, Event, Filter};
use crate::privacy::Readers;
use crate::worker_pool::WorkerPool;

/// The SQLite backend: one writer thread with group commit, a pool of
/// reader threads, each with its own connection.
pub struct SqliteStore {
    writer: crossbeam_channel::Sender<WriteJob>,
    writer_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: WorkerPool<Connection>,
    query_timeout: Duration,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies migrations,
    /// and starts the writer and readers. `on_commit` sees every committed
    /// event, in commit order.
    pub fn open(
        path: &Path,
        options: &StoreOptions,
        on_commit: CommitHook,
    ) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut writer_conn = open_connection(path, options.durability, false)?;
        schema::migrate(&mut writer_conn, path).map_err(|e| StoreError::Other(e.to_string()))?;
        // The writer's working set (the tops of every index) stays cached.
        writer_conn.pragma_update(None, "cache_size", -65_536)?;
        let page_size: i64 = writer_conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        writer_conn.pragma_update(
            None,
            "wal_autocheckpoint",
            checkpoint::WRITER_CHECKPOINT_BYTES / page_size.max(512),
        )?;
        if options.max_database_bytes > 0 {
            let pages = (options.max_database_bytes / page_size.max(512) as u64).max(1);
            writer_conn.pragma_update(None, "max_page_count", pages as i64)?;
        }
        // After a reset, give the disk back beyond this size.
        writer_conn.pragma_update(
            None,
            "journal_size_limit",
            checkpoint::WRITER_CHECKPOINT_BYTES,
        )?;
        let checkpoint_conn = open_connection(path, options.durability, false)?;
        let readers = (0..options.reader_threads)
            .map(|_| open_connection(path, options.durability, true))
            .collect::<Result<Vec<_>, _>>()?;
        let readers =
            WorkerPool::start("reader", readers).map_err(|e| StoreError::Other(e.to_string()))?;
        let (writer, jobs) = crossbeam_channel::unbounded();
        let (committed, commits) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || checkpoint::run(checkpoint_conn, commits))
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let max_batch = options.max_write_batch;
        let writer_thread = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || writer::run(writer_conn, jobs, max_batch, on_commit, committed))
            .map_err(|e| StoreError::Other(e.to_string()))?;
        Ok(SqliteStore {
            writer,
            writer_thread: std::sync::Mutex::new(Some(writer_thread)),
            readers,
            query_timeout: options.query_timeout,
        })
    }

    /// Hands an event to the writer and waits for the commit.
    pub async fn insert(&self, event: Arc<CanonicalEvent>) -> Result<WriteOutcome, StoreError> {
        let outcome = self.insert_queued(event)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Hands an event to the writer without waiting: the receiver gets the
    /// outcome once its commit returned (`blocking_recv` outside async
    /// code). A bulk writer (`nostr-relayd import`) keeps thousands queued,
    /// so that the writer commits them in groups of `max_write_batch`.
    pub fn insert_queued(
        &self,
        event: Arc<CanonicalEvent>,
    ) -> Result<oneshot::Receiver<Result<WriteOutcome, StoreError>>, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.writer
            .send(WriteJob::Insert { event, reply })
            .map_err(|_| StoreError::Closed)?;
        Ok(outcome)
    }

    /// Answers a REQ's filters within the query time budget.
    pub async fn query(
        &self,
        filters: Arc<[Filter]>,
        readers: Readers,
        limits: QueryLimits,
    ) -> Result<QueryResult, StoreError> {
        let deadline = Instant::now() + self.query_timeout;
        self.readers
            .run(move |conn| {
                query::run(conn, &filters, &readers, limits, unix_now(), deadline)
                    .map_err(StoreError::from)
            })
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// Events stored per kind class (`stats::CLASSES` order), from the
    /// counts the database keeps, never by counting rows. Also the relay's
    /// health probe: an answer proves a reader can read the database.
    pub async fn stored_by_class(&self) -> Result<[u64; 4], StoreError> {
        self.readers
            .run(|conn| stats::stored_by_class(conn).map_err(StoreError::from))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// Whether the writer thread still runs (false once closed).
    pub fn writer_alive(&self) -> bool {
        self.writer_thread
            .lock()
            .map(|handle| handle.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    /// NIP-77: the `(created_at, id)` records `filter` gives this reader,
    /// up to `cap` of them, within the query time budget.
    pub async fn negentropy_items(
        &self,
        filter: Filter,
        readers: Readers,
        cap: usize,
    ) -> Result<negentropy::NegItems, StoreError> {
        let deadline = Instant::now() + self.query_timeout;
        self.readers
            .run(move |conn| {
                negentropy::items_for(conn, &filter, &readers, unix_now(), deadline, cap)
                    .map_err(StoreError::from)
            })
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// Answers a COUNT's filters (NIP-45) within the query time budget,
    /// with the HyperLogLog registers when `hll_offset` is given.
    pub async fn count(
        &self,
        filters: Arc<[Filter]>,
        readers: Readers,
        hll_offset: Option<u8>,
    ) -> Result<CountResult, StoreError> {
        let deadline = Instant::now() + self.query_timeout;
        self.readers
            .run(move |conn| {
                count::run(conn, &filters, &readers, hll_offset, unix_now(), deadline)
                    .map_err(StoreError::from)
            })
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// Makes the NIP-50 index hold exactly `kinds` (sorted; empty: search
    /// off), rebuilding it on the writer thread when the database says
    /// otherwise. Returns how many events were indexed, or None when the
    /// index was already right.
    pub async fn configure_search(&self, kinds: Vec<u16>) -> Result<Option<usize>, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.writer
            .send(WriteJob::ConfigureSearch { kinds, reply })
            .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes up to `batch` expired events; returns how many went.
    pub async fn purge_expired(&self, batch: usize) -> Result<usize, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.writer
            .send(WriteJob::PurgeExpired {
                now: unix_now(),
                batch,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes one bounded batch for retention (`retention.rs`) on the
    /// writer thread, in its own short transaction, so that the relay's
    /// writes go on between batches.
    pub async fn prune(&self, job: retention::PruneJob) -> Result<retention::Pruned, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.writer
            .send(WriteJob::Prune { job, reply })
            .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets the writer finish every queued job, then stops it. Blocks.
    pub fn close(&self) {
        let _ = self.writer.send(WriteJob::Stop);
        let handle = self
            .writer_thread
            .lock()
            .map(|mut h| h.take())
            .unwrap_or(None);
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Opens one connection with the pragmas every connection of the relay
/// shares; tools and benchmarks that read the database directly use it too.
pub fn open_connection(
    path: &Path,
    durability: Durability,
    read_only: bool,
) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    let synchronous = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -16_384)?;
    conn.set_prepared_statement_cache_capacity(256);
    // Without the query planner stability guarantee, SQLite (with STAT4)
    // re-plans a cached statement whenever a bound value it planned on
    // changes (LIMIT, time bounds), i.e. on nearly every run: measured at
    // 12 µs per range query instead of 5 µs. Our statements name their
    // index, so a fixed plan is exactly what we want.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    rusqlite::vtab::array::load_module(&conn)?;
    count::register_functions(&conn)?;
    Ok(conn)
}

/// The cheap look-ups before the signature check, on any read connection:
/// is this id stored, or forbidden by a deletion?
pub fn freshness(conn: &Connection, event: &Event) -> Result<Freshness, StoreError> {
    if sql::exists(conn, &event.id)? {
        Ok(Freshness::Duplicate)
    } else if sql::is_tombstoned(conn, event)? {
        Ok(Freshness::Deleted)
    } else if sql::has_vanished(conn, event)? {
        Ok(Freshness::Vanished)
    } else {
        Ok(Freshness::New)
    }
}
