//! The PostgreSQL backend (issue 8): the same store as SQLite's, for
//! several relay nodes sharing one database.
//!
//! `PgStore` keeps a deadpool of reader connections (each with the query
//! budget as its `statement_timeout`, set at connect) and one writer task
//! per node with a dedicated connection (`writer.rs`): group commit, with
//! transaction-scoped advisory locks making replacement, deletion and
//! vanish atomic across nodes. The schema and its migrations are in
//! `schema.rs`, the access lists in `lists.rs`; the read side (query,
//! count, search, negentropy, export) lives in modules of its own, and so
//! does `nostr-relayd sync`'s bookkeeping (`sync.rs`).
//!
//! Every PostgreSQL error becomes a [`StoreError`] here, in one place.

mod count;
mod export;
mod lists;
mod negentropy;
mod query;
mod retention;
mod schema;
mod search;
mod sync;
mod writer;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::lists::{Edit, Report, StoredLists};
use super::{CommitHook, Freshness, StoreError, WriteOutcome};
use crate::nostr::hex::{decode_lower, is_hex32};
use crate::nostr::{CanonicalEvent, Event};
use writer::WriteJob;

/// What the PostgreSQL store needs from the configuration.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://…` connection URL (libpq syntax accepted too).
    pub url: String,
    /// A streaming replica of `url` for the clients' reads (REQ, COUNT,
    /// search, negentropy); None: they read from `url`.
    pub replica_url: Option<String>,
    /// This node's name: stored with every event it commits, so that the
    /// cluster can backfill another node's events by their sequence.
    pub node: String,
    /// Reader connections (the writer has one more of its own).
    pub pool_size: usize,
    /// Every reader statement's `statement_timeout`.
    pub query_timeout: Duration,
    /// Most inserts committed in one transaction.
    pub max_write_batch: usize,
}

/// Handle to the PostgreSQL database: cheap to share behind an `Arc`.
pub struct PgStore {
    pool: Pool,
    /// The replica's readers, when there is one: the clients' reads only.
    replica: Option<Pool>,
    query_timeout: Duration,
    writer: mpsc::UnboundedSender<WriteJob>,
    writer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PgStore {
    /// Connects, applies the migrations (once, whichever node starts
    /// first) and starts this node's writer. `on_commit` sees every event
    /// this node committed, after its commit, in commit order.
    pub async fn open(options: &PgOptions, on_commit: CommitHook) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StoreError::Other(format!("storage.postgres_url: {e}")))?;
        let mut writer_config = config.clone();
        writer_config.application_name(format!("nostr-relayd writer {}", options.node));
        if writer_config.get_connect_timeout().is_none() {
            writer_config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A writer never waits forever for another node's locks, and a
        // transaction left open by a writer cut off from the server (its
        // locks with it) is ended by the server.
        add_options(
            &mut writer_config,
            "-c lock_timeout=30000 -c idle_in_transaction_session_timeout=60000",
        );
        let (mut writer_client, connection) = writer_config.connect(NoTls).await?;
        let connection_task = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the writer's database connection ended");
            }
        });
        schema::migrate(&mut writer_client).await?;

        let pool = reader_pool(config, options)?;
        let replica = match &options.replica_url {
            Some(url) => Some(reader_pool(
                url.parse()
                    .map_err(|e| StoreError::Other(format!("storage.postgres_replica_url: {e}")))?,
                options,
            )?),
            None => None,
        };

        let (sender, jobs) = mpsc::unbounded_channel();
        let writer = writer::Writer::start(
            writer_client,
            connection_task,
            writer_config,
            options.node.clone(),
            options.max_write_batch.max(1),
            on_commit,
        )
        .await?;
        let writer_task = tokio::spawn(writer.run(jobs));
        Ok(PgStore {
            pool,
            replica,
            query_timeout: options.query_timeout,
            writer: sender,
            writer_task: Mutex::new(Some(writer_task)),
        })
    }

    /// Reader connections to the primary: checks, lists, retention,
    /// backfill, export, sync — what must see the latest commits.
    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Reader connections for the clients' reads (REQ, COUNT, search,
    /// negentropy): the replica's when there is one, else the primary's.
    pub(super) fn client_pool(&self) -> &Pool {
        self.replica.as_ref().unwrap_or(&self.pool)
    }

    /// The query budget (also every reader's `statement_timeout`).
    pub(super) fn query_timeout(&self) -> Duration {
        self.query_timeout
    }

    /// A reader connection, its pool error mapped.
    async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Hands an event to the writer and waits for the commit.
    pub async fn insert(&self, event: Arc<CanonicalEvent>) -> Result<WriteOutcome, StoreError> {
        let outcome = self.insert_queued(event)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Hands an event to the writer without waiting: the receiver gets the
    /// outcome once its transaction committed.
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

    /// The cheap look-ups before the signature check: stored already, or
    /// forbidden by a NIP-09 deletion or a NIP-62 request? One statement.
    pub async fn freshness(&self, event: &Event) -> Result<Freshness, StoreError> {
        let client = self.reader().await?;
        let statement = client.prepare_cached(writer::PROBE).await?;
        let probe = writer::probe(&**client, &statement, event).await?;
        Ok(if probe.stored {
            Freshness::Duplicate
        } else if probe.tombstoned(event) {
            Freshness::Deleted
        } else if probe.vanished {
            Freshness::Vanished
        } else {
            Freshness::New
        })
    }

    /// Events stored per kind class (`stats::CLASSES` order). Also the
    /// health probe: an answer proves a reader can read the database.
    pub async fn stored_by_class(&self) -> Result<[u64; 4], StoreError> {
        let client = self.reader().await?;
        let rows = client
            .query(
                "SELECT class, sum(n)::bigint FROM event_class_count GROUP BY class",
                &[],
            )
            .await?;
        let mut counts = [0u64; 4];
        for row in rows {
            let class: i32 = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            if let Some(count) = usize::try_from(class).ok().and_then(|c| counts.get_mut(c)) {
                *count = u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(counts)
    }

    /// Whether the writer task still runs (false once closed).
    pub fn writer_alive(&self) -> bool {
        self.writer_task
            .lock()
            .map(|handle| handle.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    /// Makes the NIP-50 `search` column hold exactly `kinds` (sorted;
    /// empty: search off), refilling it on the writer when the database
    /// says otherwise. Returns how many events were indexed, or None when
    /// nothing had to change.
    pub async fn configure_search(&self, kinds: Vec<u16>) -> Result<Option<usize>, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.writer
            .send(WriteJob::ConfigureSearch { kinds, reply })
            .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Deletes up to `batch` expired events (NIP-40); returns how many went.
    pub async fn purge_expired(&self, batch: usize) -> Result<usize, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.writer
            .send(WriteJob::PurgeExpired {
                now: super::unix_now(),
                batch,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets the writer finish every queued job, then stops it and closes
    /// the readers.
    pub async fn close(&self) {
        let _ = self.writer.send(WriteJob::Stop);
        let handle = self
            .writer_task
            .lock()
            .map(|mut h| h.take())
            .unwrap_or(None);
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        self.pool.close();
        if let Some(replica) = &self.replica {
            replica.close();
        }
    }

    /// The access lists as stored, in one consistent snapshot.
    pub async fn lists(&self) -> Result<StoredLists, StoreError> {
        let mut client = self.reader().await?;
        lists::load(&mut client).await
    }

    /// The lists version, bumped by every edit (a relay reloads on change).
    pub async fn lists_version(&self) -> Result<i64, StoreError> {
        let client = self.reader().await?;
        lists::version(&client).await
    }

    /// One NIP-86 edit in its own transaction (see `store::lists::apply`):
    /// returns how many stored events it deleted.
    pub async fn apply_edit(
        &self,
        edit: &Edit,
        seed_allowed_kinds: &[u16],
        now: i64,
    ) -> Result<usize, StoreError> {
        let mut client = self.reader().await?;
        lists::apply(&mut client, edit, seed_allowed_kinds, now).await
    }

    /// NIP-56 reports waiting for a moderator, newest first.
    pub async fn reports(&self) -> Result<Vec<Report>, StoreError> {
        let client = self.reader().await?;
        lists::reports(&client).await
    }

    /// Cluster backfill: stored events this node name committed with
    /// origin_seq in (after, through], ascending, at most `cap`.
    pub async fn events_from_origin(
        &self,
        node: &str,
        after: u64,
        through: u64,
        cap: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let client = self.reader().await?;
        let rows = client
            .query(
                "SELECT origin_seq, json FROM event
                 WHERE origin_node = $1 AND origin_seq > $2 AND origin_seq <= $3
                 ORDER BY origin_seq LIMIT $4",
                &[
                    &node,
                    &clamp_i64(after),
                    &clamp_i64(through),
                    &clamp_i64(cap as u64),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(0)?;
                Ok((u64::try_from(seq).unwrap_or(0), row.try_get(1)?))
            })
            .collect()
    }

    /// Cluster start: every node's last committed sequence number, the
    /// baseline from which a gap in its numbers shows missed events.
    pub async fn node_sequences(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let client = self.reader().await?;
        let rows = client
            .query("SELECT node, last_seq FROM node_sequence", &[])
            .await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(1)?;
                Ok((row.try_get(0)?, u64::try_from(seq).unwrap_or(0)))
            })
            .collect()
    }

    /// The database's size on disk (`pg_database_size`).
    pub async fn database_bytes(&self) -> Result<u64, StoreError> {
        let client = self.reader().await?;
        let row = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await?;
        let bytes: i64 = row.try_get(0)?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }
}

/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Appends server settings to the URL's own `options`, if any.
fn add_options(config: &mut tokio_postgres::Config, settings: &str) {
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{own} {settings}"),
        _ => settings.to_owned(),
    };
    config.options(options);
}

/// A u64 as PostgreSQL's bigint, saturating.
fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// How a single-letter tag's value is stored in `tag.value`, and how a
/// filter's `#x` values are looked up: a 64-char lowercase-hex value as its
/// 32 raw bytes (half the size, and the common case: `e` and `p`); any
/// other value as its UTF-8 bytes, with one 0xFF byte appended when those
/// are exactly 32 bytes long. 0xFF never occurs in UTF-8 and no hex value
/// is 33 bytes, so the two encodings never collide. Writer and readers
/// both use this one function.
pub fn tag_bytes(value: &str) -> Vec<u8> {
    if is_hex32(value)
        && let Some(bytes) = decode_lower::<32>(value)
    {
        return bytes.to_vec();
    }
    let mut bytes = value.as_bytes().to_vec();
    if bytes.len() == 32 {
        bytes.push(0xFF);
    }
    bytes
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        match error.code() {
            Some(code) if *code == SqlState::QUERY_CANCELED => StoreError::Timeout,
            Some(code) if *code == SqlState::DISK_FULL => StoreError::Full,
            _ => match error.as_db_error() {
                Some(db) => StoreError::Other(format!("{} ({})", db.message(), db.code().code())),
                None => StoreError::Other(error.to_string()),
            },
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => error.into(),
            PoolError::Closed => StoreError::Closed,
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => StoreError::Timeout,
            other => StoreError::Other(format!("database connection: {other}")),
        }
    }
}

/// Whether a failed transaction should simply run again: a deadlock or a
/// serialization failure between two nodes' writers.
fn is_retryable(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// A pool of reader connections to `config`'s server, each with the
/// query budget as its `statement_timeout`.
fn reader_pool(config: tokio_postgres::Config, options: &PgOptions) -> Result<Pool, StoreError> {
    let mut reader_config = config;
    reader_config.application_name(format!("nostr-relayd {}", options.node));
    if reader_config.get_connect_timeout().is_none() {
        reader_config.connect_timeout(CONNECT_TIMEOUT);
    }
    // The query budget, enforced by the server on every statement of a
    // reader: a runaway query is cancelled there (SQLSTATE 57014). No
    // JIT: a REQ's statement carries the cost estimate of a fallback
    // branch that seldom runs (postgres/query.rs, feed_sql), and JIT
    // compiling it took 15 ms for under 1 ms of work. Custom plans
    // only: a cached generic plan of an ids REQ, blind to how few ids
    // `= ANY($1)` holds, walked the time index (17 ms instead of 0.5).
    add_options(
        &mut reader_config,
        &format!(
            "-c statement_timeout={} -c jit=off -c plan_cache_mode=force_custom_plan",
            options.query_timeout.as_millis().max(1)
        ),
    );
    let manager = Manager::from_config(
        reader_config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        // Waiting for a free reader past the query budget is a timeout
        // like any other; a server that does not answer fails too.
        .wait_timeout(Some(options.query_timeout.max(Duration::from_secs(1))))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Other(format!("database pool: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_bytes_never_collide() {
        let hex = "ab".repeat(32);
        assert_eq!(tag_bytes(&hex), vec![0xab; 32]);
        // Upper-case hex is text, not the raw bytes.
        let upper = "AB".repeat(32);
        assert_eq!(tag_bytes(&upper), upper.as_bytes().to_vec());
        // 32 bytes of text get 0xFF so that they never equal a hex value's.
        let text32 = "x".repeat(32);
        let mut expected = text32.as_bytes().to_vec();
        expected.push(0xFF);
        assert_eq!(tag_bytes(&text32), expected);
        assert_eq!(tag_bytes("hello"), b"hello".to_vec());
        assert_eq!(tag_bytes(""), Vec::<u8>::new());
        // 33 bytes of text: as they are (no hex value is 33 bytes).
        assert_eq!(tag_bytes(&"y".repeat(33)).len(), 33);
    }
}
