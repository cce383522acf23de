//! Event storage behind one narrow interface, [`Store`], with two backends:
//! SQLite (`sqlite.rs` and the modules beside it: the default, one file, the
//! fastest on one machine) and PostgreSQL (`postgres/`: one database that
//! several relay nodes share).
//!
//! The store knows nothing of sockets: it takes events and filters, and
//! gives back outcomes and stored JSON. Everything above it (NIP-01 rules in
//! `ingest`, fan-out, NIP-45/50/77, moderation, import/export) calls the
//! same methods whichever backend answers. See `ARCHITECTURE.md` for the
//! schemas.

mod checkpoint;
pub mod count;
pub mod export;
pub mod lists;
pub mod maintenance;
pub mod negentropy;
pub mod postgres;
pub mod query;
pub mod retention;
pub mod schema;
pub mod search;
mod sql;
pub mod sqlite;
pub mod stats;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::ErrorCode;
use tokio::sync::oneshot;

use crate::config::{Backend as BackendKind, Config, Durability};
use crate::nostr::{CanonicalEvent, Event, Filter};
use crate::privacy::Readers;
pub use count::CountResult;
use lists::{Edit, Report, StoredLists};
use postgres::{PgOptions, PgStore};
pub use query::{Order, QueryLimits, QueryResult};
pub use sqlite::{SqliteStore, freshness, open_connection};
pub use writer::{CommitHook, Committed};

/// What became of an event handed to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed with this sequence number. `removed`: the stored events
    /// this one removed (the older version it replaced, or what its NIP-09
    /// deletion or NIP-62 request deleted), which `import` reports.
    Stored { seq: u64, removed: u64 },
    /// An event with this id is already stored.
    Duplicate,
    /// A NIP-09 deletion by an entitled pubkey forbids it.
    Deleted,
    /// Its author asked this relay to vanish (NIP-62) at or after it.
    Vanished,
    /// A newer version of this replaceable/addressable event is stored.
    Superseded,
}

/// What a cheap look-up says about an event before its signature is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    New,
    Duplicate,
    Deleted,
    Vanished,
}

/// A storage failure, as it is reported to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The disk (or the database's size cap) is full.
    Full,
    /// The query ran past its time budget.
    Timeout,
    /// The store is shutting down.
    Closed,
    Other(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Full => f.write_str("the relay's storage is full"),
            StoreError::Timeout => f.write_str("the query took too long"),
            StoreError::Closed => f.write_str("the relay is shutting down"),
            StoreError::Other(message) => write!(f, "database error: {message}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full,
            Some(ErrorCode::OperationInterrupted) => StoreError::Timeout,
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Other(
                format!("the file is not a SQLite database, or it is corrupt ({error})"),
            ),
            _ => StoreError::Other(error.to_string()),
        }
    }
}

/// Settings the store needs from the configuration.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub durability: Durability,
    /// Database size cap in bytes (0: none), enforced by SQLite's
    /// `max_page_count`: past it a write fails with SQLITE_FULL, cleanly.
    pub max_database_bytes: u64,
    pub reader_threads: usize,
    pub max_write_batch: usize,
    pub query_timeout: Duration,
}

/// Handle to the database, whichever backend holds it: cheap to share
/// behind an `Arc`. Each method says where the backends differ.
pub struct Store {
    backend: Backend,
}

enum Backend {
    Sqlite(SqliteStore),
    /// With the runtime its writer and pool run on, for [`Store::close`]
    /// from a thread outside it.
    Postgres(PgStore, tokio::runtime::Handle),
}

/// What a method needs that only one backend has.
fn unsupported(what: &str, backend: &str) -> StoreError {
    StoreError::Other(format!(
        "{what} is not available with the {backend} backend"
    ))
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, applies
    /// migrations, and starts the writer and readers. `on_commit` sees every
    /// committed event, in commit order.
    pub fn open(
        path: &Path,
        options: &StoreOptions,
        on_commit: CommitHook,
    ) -> Result<Store, StoreError> {
        let sqlite = SqliteStore::open(path, options, on_commit)?;
        Ok(Store {
            backend: Backend::Sqlite(sqlite),
        })
    }

    /// Connects to PostgreSQL, applies its migrations, and starts the
    /// writer. `on_commit` sees every event this node commits, in its
    /// commit order.
    pub async fn open_postgres(
        options: &PgOptions,
        on_commit: CommitHook,
    ) -> Result<Store, StoreError> {
        let postgres = PgStore::open(options, on_commit).await?;
        Ok(Store {
            backend: Backend::Postgres(postgres, tokio::runtime::Handle::current()),
        })
    }

    /// Opens the backend `config` names. SQLite's open blocks (migrations
    /// may copy the file aside), so it runs on a blocking thread.
    pub async fn open_configured(
        config: &Config,
        on_commit: CommitHook,
    ) -> Result<Store, StoreError> {
        let options = StoreOptions::from_config(config);
        match config.storage.backend {
            BackendKind::Sqlite => {
                let path = config.database.clone();
                tokio::task::spawn_blocking(move || Store::open(&path, &options, on_commit))
                    .await
                    .map_err(|e| StoreError::Other(e.to_string()))?
            }
            BackendKind::Postgres => {
                Store::open_postgres(&postgres_options(config), on_commit).await
            }
        }
    }

    /// The SQLite backend, for the callers that open connections of their
    /// own on its file (the ingester's checkers, the access-list watcher).
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        match &self.backend {
            Backend::Sqlite(sqlite) => Some(sqlite),
            Backend::Postgres(..) => None,
        }
    }

    /// The PostgreSQL backend, for retention's planning queries.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Backend::Postgres(postgres, _) => Some(postgres),
            Backend::Sqlite(_) => None,
        }
    }

    /// Whether live events carry a commit sequence number that a query's
    /// snapshot can be compared with (SQLite: one writer, one order). With
    /// PostgreSQL, several nodes commit: a subscription drops by event id
    /// the live events its stored query already sent.
    pub fn orders_commits(&self) -> bool {
        matches!(self.backend, Backend::Sqlite(_))
    }

    /// Hands an event to the writer and waits for the commit.
    pub async fn insert(&self, event: Arc<CanonicalEvent>) -> Result<WriteOutcome, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.insert(event).await,
            Backend::Postgres(postgres, _) => postgres.insert(event).await,
        }
    }

    /// Hands an event to the writer without waiting: the receiver gets the
    /// outcome once its commit returned. A bulk writer (`nostr-relayd
    /// import`) keeps thousands queued, so that the writer commits them in
    /// groups of `max_write_batch`.
    pub fn insert_queued(
        &self,
        event: Arc<CanonicalEvent>,
    ) -> Result<oneshot::Receiver<Result<WriteOutcome, StoreError>>, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.insert_queued(event),
            Backend::Postgres(postgres, _) => postgres.insert_queued(event),
        }
    }

    /// The look-ups before the signature check: stored already, deleted,
    /// vanished? SQLite answers these on the checker threads' own
    /// connections ([`freshness`], in the same job as the signature check);
    /// this is the PostgreSQL path.
    pub async fn freshness(&self, event: &Event) -> Result<Freshness, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(unsupported("an async freshness check", "SQLite")),
            Backend::Postgres(postgres, _) => postgres.freshness(event).await,
        }
    }

    /// Answers a REQ's filters within the query time budget.
    pub async fn query(
        &self,
        filters: Arc<[Filter]>,
        readers: Readers,
        limits: QueryLimits,
    ) -> Result<QueryResult, StoreError> {
        let started = std::time::Instant::now();
        let shape = crate::metrics::QueryShape::of_req(&filters);
        let result = match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.query(filters, readers, limits).await,
            Backend::Postgres(postgres, _) => postgres.query(filters, readers, limits).await,
        };
        crate::metrics::global().query_finished(shape, started.elapsed());
        result
    }

    /// Events stored per kind class (`stats::CLASSES` order). Also the
    /// relay's health probe: an answer proves a reader can read the database.
    pub async fn stored_by_class(&self) -> Result<[u64; 4], StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.stored_by_class().await,
            Backend::Postgres(postgres, _) => postgres.stored_by_class().await,
        }
    }

    /// Whether the writer still runs (false once closed).
    pub fn writer_alive(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.writer_alive(),
            Backend::Postgres(postgres, _) => postgres.writer_alive(),
        }
    }

    /// NIP-77: the `(created_at, id)` records `filter` gives this reader,
    /// up to `cap` of them, within the query time budget.
    pub async fn negentropy_items(
        &self,
        filter: Filter,
        readers: Readers,
        cap: usize,
    ) -> Result<negentropy::NegItems, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.negentropy_items(filter, readers, cap).await,
            Backend::Postgres(postgres, _) => postgres.negentropy_items(filter, readers, cap).await,
        }
    }

    /// Answers a COUNT's filters (NIP-45) within the query time budget,
    /// with the HyperLogLog registers when `hll_offset` is given.
    pub async fn count(
        &self,
        filters: Arc<[Filter]>,
        readers: Readers,
        hll_offset: Option<u8>,
    ) -> Result<CountResult, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.count(filters, readers, hll_offset).await,
            Backend::Postgres(postgres, _) => postgres.count(filters, readers, hll_offset).await,
        }
    }

    /// Makes the NIP-50 index hold exactly `kinds` (sorted; empty: search
    /// off), rebuilding it when the database says otherwise. Returns how
    /// many events were indexed, or None when the index was already right.
    pub async fn configure_search(&self, kinds: Vec<u16>) -> Result<Option<usize>, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.configure_search(kinds).await,
            Backend::Postgres(postgres, _) => postgres.configure_search(kinds).await,
        }
    }

    /// Deletes up to `batch` expired events; returns how many went.
    pub async fn purge_expired(&self, batch: usize) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.purge_expired(batch).await,
            Backend::Postgres(postgres, _) => postgres.purge_expired(batch).await,
        }
    }

    /// Deletes one bounded batch for retention (`retention.rs`) in its own
    /// short transaction, so that the relay's writes go on between batches.
    pub async fn prune(&self, job: retention::PruneJob) -> Result<retention::Pruned, StoreError> {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.prune(job).await,
            Backend::Postgres(postgres, _) => postgres.prune(job).await,
        }
    }

    /// The moderation lists as stored (NIP-86, the admin CLI). `access`
    /// reads SQLite's on its own connection; this is the PostgreSQL path.
    pub async fn lists(&self) -> Result<StoredLists, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(unsupported("async list reads", "SQLite")),
            Backend::Postgres(postgres, _) => postgres.lists().await,
        }
    }

    /// The lists' version, bumped by every edit (PostgreSQL path).
    pub async fn lists_version(&self) -> Result<i64, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(unsupported("async list reads", "SQLite")),
            Backend::Postgres(postgres, _) => postgres.lists_version().await,
        }
    }

    /// Applies one moderation edit (PostgreSQL path); returns how many
    /// stored events it deleted.
    pub async fn apply_edit(
        &self,
        edit: &Edit,
        seed_allowed_kinds: &[u16],
        now: i64,
    ) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(unsupported("async list edits", "SQLite")),
            Backend::Postgres(postgres, _) => {
                postgres.apply_edit(edit, seed_allowed_kinds, now).await
            }
        }
    }

    /// NIP-56 reports waiting for a moderator (PostgreSQL path).
    pub async fn reports(&self) -> Result<Vec<Report>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(unsupported("async report reads", "SQLite")),
            Backend::Postgres(postgres, _) => postgres.reports().await,
        }
    }

    /// Cluster backfill: the stored events node `node` committed with a
    /// sequence number in `(after, through]`, ascending, at most `cap`.
    pub async fn events_from_origin(
        &self,
        node: &str,
        after: u64,
        through: u64,
        cap: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(unsupported("cluster backfill", "SQLite")),
            Backend::Postgres(postgres, _) => {
                postgres.events_from_origin(node, after, through, cap).await
            }
        }
    }

    /// Cluster start: every node's last committed sequence number.
    pub async fn node_sequences(&self) -> Result<Vec<(String, u64)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(unsupported("cluster sequence numbers", "SQLite")),
            Backend::Postgres(postgres, _) => postgres.node_sequences().await,
        }
    }

    /// The size of the database in bytes, for /metrics, when the backend
    /// is not a file `metrics::Monitor` measures itself.
    pub async fn database_bytes(&self) -> Result<Option<u64>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(postgres, _) => postgres.database_bytes().await.map(Some),
        }
    }

    /// `nostr-relayd export` from PostgreSQL: every stored event `filter`
    /// selects, in `order`, handed one at a time to `each`.
    pub async fn export_each(
        &self,
        filter: &Filter,
        order: Order,
        now: i64,
        each: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Err(unsupported("async export", "SQLite")),
            Backend::Postgres(postgres, _) => postgres.export_each(filter, order, now, each).await,
        }
    }

    /// Lets the writer finish every queued job, then stops it. Blocks: call
    /// it from a plain or blocking thread; on an async task use
    /// [`Store::shutdown`].
    pub fn close(&self) {
        match &self.backend {
            Backend::Sqlite(sqlite) => sqlite.close(),
            // From a plain or blocking thread, never an async task.
            Backend::Postgres(postgres, runtime) => runtime.block_on(postgres.close()),
        }
    }

    /// [`Store::close`] for async callers.
    pub async fn shutdown(self: &Arc<Self>) {
        match &self.backend {
            Backend::Sqlite(_) => {
                let store = self.clone();
                let _ = tokio::task::spawn_blocking(move || store.close()).await;
            }
            Backend::Postgres(postgres, _) => postgres.close().await,
        }
    }
}

/// The PostgreSQL settings of a configuration.
pub fn postgres_options(config: &Config) -> PgOptions {
    PgOptions {
        url: config.storage.postgres_url.clone(),
        replica_url: Some(config.storage.postgres_replica_url.clone())
            .filter(|url| !url.trim().is_empty()),
        node: config.node_name(),
        pool_size: config.storage.postgres_pool_size,
        query_timeout: Duration::from_millis(config.storage.query_timeout_ms),
        max_write_batch: config.storage.max_write_batch,
    }
}

impl StoreOptions {
    /// The store settings of a configuration.
    pub fn from_config(config: &Config) -> StoreOptions {
        StoreOptions {
            durability: config.storage.durability,
            max_database_bytes: config.storage.max_database_bytes,
            reader_threads: config.storage.reader_threads,
            max_write_batch: config.storage.max_write_batch,
            query_timeout: Duration::from_millis(config.storage.query_timeout_ms),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
