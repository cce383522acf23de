//! The local side of a sync: this relay's database, opened directly, as
//! `nostr-relayd admin` does, while the relay itself may be running on it,
//! on either backend.
//!
//! Events are written through a [`Store`] opened in this process (its own
//! writer), so they get exactly the relay's insertion rules: replacement,
//! NIP-09 deletion, NIP-62 vanish, NIP-40 expiry, one version per address.
//! SQLite serializes this writer and the relay's (WAL, `BEGIN IMMEDIATE`,
//! busy timeout); on PostgreSQL this writer takes the advisory locks every
//! node's writer takes. A running relay serves the synced events to every
//! later REQ; its live subscribers do not see them (its fan-out only sees
//! its own commits; a cluster node's, what NATS carries).
//!
//! The bookkeeping (`sync_checkpoint`, `sync_refused`) and the look-ups by
//! id and by sequence are SQL on a connection of this module's own with
//! SQLite, and `PgStore` methods (`store/postgres/sync.rs`) with
//! PostgreSQL. There `seq` is not commit order, so [`Local::max_seq`] and
//! [`Local::events_after`] keep to a settled bound (see
//! `PgStore::settled_seq`).
//!
//! Before the writer, every downloaded event goes through the checks an
//! incoming EVENT gets that are about the event itself: the id hash, a
//! NIP-62 request naming this relay, the bans (banned events and pubkeys,
//! disallowed kinds), NIP-70, then `ingest::check` (duplicate, NIP-09
//! tombstone, NIP-62 vanish, kinds 22242 and 13, reposts of protected
//! events, NIP-40 expiration, the Schnorr signature; on PostgreSQL
//! `ingest::check_in_store`, the relay's own path). Network policy is
//! not applied: created_at window, proof of work, size limits, rate limits,
//! allow lists, the write plugin (the operator chose the remote and the
//! filter).

use std::collections::{BTreeSet, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};

use crate::access::{AccessLists, Seed};
use crate::config::{Backend, Config, Limits};
use crate::ingest::{self, Verdict, names_this_relay};
use crate::nostr::{CanonicalEvent, Event, Filter, KindClass, kind};
use crate::policy::WritePolicy;
use crate::privacy::Readers;
use crate::store::negentropy::NegItems;
use crate::store::postgres::PgStore;
use crate::store::{
    self, QueryLimits, Store, StoreError, StoreOptions, WriteOutcome, lists, unix_now,
};

/// What sync knows of an event: enough for the negentropy set, a filter's
/// since/until/authors/kinds, and the refusal record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub id: [u8; 32],
    pub created_at: i64,
    pub pubkey: Option<[u8; 32]>,
    pub kind: Option<u16>,
}

impl Item {
    /// What sync records of an event it has in full.
    pub fn of(event: &Event) -> Item {
        Item {
            id: event.id,
            created_at: event.created_at,
            pubkey: Some(event.pubkey),
            kind: Some(event.kind),
        }
    }

    /// Whether the item may match `filter`: unknown fields (and tags,
    /// which are not kept) count as matching.
    fn may_match(&self, filter: &Filter) -> bool {
        let listed = |list: &Option<Vec<[u8; 32]>>, value: Option<[u8; 32]>| match (list, value) {
            (Some(list), Some(value)) => list.binary_search(&value).is_ok(),
            _ => true,
        };
        listed(&filter.ids, Some(self.id))
            && listed(&filter.authors, self.pubkey)
            && match (&filter.kinds, self.kind) {
                (Some(kinds), Some(kind)) => kinds.binary_search(&kind).is_ok(),
                _ => true,
            }
            && filter.since.is_none_or(|since| self.created_at >= since)
            && filter.until.is_none_or(|until| self.created_at <= until)
    }
}

/// What became of one downloaded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Committed to the database.
    Stored,
    /// Already stored here.
    Had,
    /// Refused now, and recorded in `sync_refused` with this reason.
    Refused(String),
    /// Refused by an earlier run (in `sync_refused`): not looked at again.
    RefusedBefore,
    /// An ephemeral kind: never stored.
    Ignored,
}

/// Which way a refusal went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This relay refused an event from the remote.
    Down,
    /// The remote refused an event from this relay.
    Up,
}

impl Direction {
    /// The value stored in `sync_refused.direction` and
    /// `sync_checkpoint.direction` on both backends.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Down => "down",
            Direction::Up => "up",
        }
    }
}

/// Where a remote, filter and direction were left (`sync_checkpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// down: every remote event with created_at at or below it was reconciled.
    pub synced_through: Option<i64>,
    /// up: every local event with seq at or below it was offered.
    pub local_seq: Option<i64>,
    /// A REQ walk in progress: its top.
    pub walk_top: Option<i64>,
    /// How far down that walk got: every event newer than this is done.
    pub walk_cursor: Option<i64>,
}

/// The bans an incoming event is held to (not the allow lists).
struct Bans {
    events: HashSet<[u8; 32]>,
    pubkeys: HashSet<[u8; 32]>,
    denied_kinds: BTreeSet<u16>,
}

/// How sync's own SQL reaches the database, beside the [`Store`].
enum Db {
    /// A connection of its own (the store's are on its threads).
    Sqlite(Connection),
    /// The store's readers (`PgStore`'s sync methods).
    Postgres {
        /// The newest settled bound read so far (see [`Local::max_seq`]):
        /// [`Local::events_after`] reads no row above it.
        settled: Option<i64>,
    },
}

/// This relay's database, for one sync with one remote.
pub struct Local {
    store: Store,
    db: Db,
    /// The remote's normalized URL: the key of its refusals and checkpoints.
    remote: String,
    policy: WritePolicy,
    bans: Bans,
    /// This relay's public URL, for NIP-62 requests naming it ("" if unset:
    /// only `ALL_RELAYS` requests are then taken).
    relay_url: String,
    private_kinds: Vec<u16>,
    refused_down: HashSet<[u8; 32]>,
    refused_up: HashSet<[u8; 32]>,
}

/// Largest list bound into one `IN rarray(?)` statement.
const CHUNK: usize = 1000;

/// How long [`Local::max_seq`] waits on PostgreSQL for the writers'
/// transactions that may hold events below its bound.
const SETTLE_WAIT: Duration = Duration::from_secs(60);

impl Local {
    /// Opens the database (creating and migrating it if needed) with a
    /// writer of its own, and loads the bans and this remote's refusals.
    /// With PostgreSQL the writer and readers run on the caller's runtime.
    pub async fn open(config: &Config, remote: &str) -> Result<Local, String> {
        // Reading a large filter's records is one long query.
        let query_timeout = Duration::from_secs(600);
        let cannot_open =
            |e: StoreError| format!("cannot open the {}: {e}", config.database_label());
        let (store, db, stored) = match config.storage.backend {
            Backend::Sqlite => {
                let options = StoreOptions {
                    durability: config.storage.durability,
                    max_database_bytes: config.storage.max_database_bytes,
                    reader_threads: 1,
                    max_write_batch: config.storage.max_write_batch,
                    query_timeout,
                };
                let path = &config.database;
                let store = Store::open(path, &options, Box::new(|_| {})).map_err(cannot_open)?;
                let conn = store::open_connection(path, config.storage.durability, false)
                    .map_err(cannot_open)?;
                let stored = lists::load(&conn).map_err(|e| StoreError::from(e).to_string())?;
                (store, Db::Sqlite(conn), stored)
            }
            Backend::Postgres => {
                let options = store::postgres::PgOptions {
                    pool_size: 2,
                    query_timeout,
                    ..store::postgres_options(config)
                };
                // No commit hook: nobody here subscribes.
                let store = Store::open_postgres(&options, Box::new(|_| {}))
                    .await
                    .map_err(cannot_open)?;
                let stored = store.lists().await.map_err(|e| e.to_string())?;
                (store, Db::Postgres { settled: None }, stored)
            }
        };
        let seed = Seed::from_config(&config.access)?;
        let lists = AccessLists::build(config, &seed, stored);
        let bans = Bans {
            events: lists.banned_events.keys().copied().collect(),
            pubkeys: lists.banned_pubkeys.keys().copied().collect(),
            denied_kinds: lists.denied_kinds.clone(),
        };
        // The rules about the event itself; none about the network.
        let policy = WritePolicy::new(&Limits {
            max_event_tags: usize::MAX,
            max_content_length: usize::MAX,
            created_at_lower_limit: 0,
            created_at_upper_limit: 0,
            min_pow_difficulty: 0,
            ..config.limits.clone()
        });
        let mut local = Local {
            store,
            db,
            remote: remote.to_owned(),
            policy,
            bans,
            relay_url: config.relay_url.clone(),
            private_kinds: config.auth.private_kinds.clone(),
            refused_down: HashSet::new(),
            refused_up: HashSet::new(),
        };
        local.refused_down = local.refused_ids(Direction::Down).await?;
        local.refused_up = local.refused_ids(Direction::Up).await?;
        Ok(local)
    }

    /// The PostgreSQL store behind [`Db::Postgres`].
    fn pg(&self) -> Result<&PgStore, String> {
        self.store
            .postgres()
            .ok_or_else(|| "the store is not the PostgreSQL one".to_owned())
    }

    /// Lets the writer finish, then stops it.
    pub fn close(&self) {
        blocking(|| self.store.close());
    }

    /// Kinds whose events never leave this relay but to their parties
    /// (`auth.private_kinds`): not uploaded.
    pub fn is_private(&self, kind: u16) -> bool {
        self.private_kinds.contains(&kind)
    }

    pub fn is_refused(&self, id: &[u8; 32], direction: Direction) -> bool {
        match direction {
            Direction::Down => self.refused_down.contains(id),
            Direction::Up => self.refused_up.contains(id),
        }
    }

    async fn refused_ids(&self, direction: Direction) -> Result<HashSet<[u8; 32]>, String> {
        let conn = match &self.db {
            Db::Sqlite(conn) => conn,
            Db::Postgres { .. } => {
                return self
                    .pg()?
                    .sync_refused_ids(&self.remote, direction)
                    .await
                    .map_err(|e| e.to_string());
            }
        };
        blocking(|| -> rusqlite::Result<HashSet<[u8; 32]>> {
            let mut stmt =
                conn.prepare("SELECT id FROM sync_refused WHERE remote = ?1 AND direction = ?2")?;
            let rows = stmt.query_map(params![self.remote, direction.as_str()], |row| {
                row.get::<_, Vec<u8>>(0)
            })?;
            let mut ids = HashSet::new();
            for row in rows {
                if let Ok(id) = <[u8; 32]>::try_from(row?.as_slice()) {
                    ids.insert(id);
                }
            }
            Ok(ids)
        })
        .map_err(sql_error)
    }

    /// Forgets every refusal recorded for this remote (`--retry-refused`).
    pub async fn clear_refused(&mut self) -> Result<u64, String> {
        let removed = match &self.db {
            Db::Sqlite(conn) => blocking(|| {
                conn.execute("DELETE FROM sync_refused WHERE remote = ?1", [&self.remote])
            })
            .map(|n| n as u64)
            .map_err(sql_error)?,
            Db::Postgres { .. } => self
                .pg()?
                .sync_clear_refused(&self.remote)
                .await
                .map_err(|e| e.to_string())?,
        };
        self.refused_down.clear();
        self.refused_up.clear();
        Ok(removed)
    }

    /// Records a refusal, so that later runs treat the id as had (down) or
    /// as not to be offered again (up).
    pub async fn record_refused(
        &mut self,
        item: &Item,
        direction: Direction,
        reason: &str,
    ) -> Result<(), String> {
        match &self.db {
            Db::Sqlite(conn) => blocking(|| {
                conn.execute(
                    "INSERT OR REPLACE INTO sync_refused
                         (remote, id, direction, created_at, pubkey, kind, reason, refused_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        self.remote,
                        &item.id[..],
                        direction.as_str(),
                        item.created_at,
                        item.pubkey.map(|p| p.to_vec()),
                        item.kind,
                        reason,
                        unix_now()
                    ],
                )
            })
            .map(|_| ())
            .map_err(sql_error)?,
            Db::Postgres { .. } => self
                .pg()?
                .sync_record_refused(&self.remote, item, direction, reason, unix_now())
                .await
                .map_err(|e| e.to_string())?,
        }
        match direction {
            Direction::Down => self.refused_down.insert(item.id),
            Direction::Up => self.refused_up.insert(item.id),
        };
        Ok(())
    }

    /// `(created_at, id)` of the refusals (down) that may match `filter`:
    /// part of the negentropy set, so the remote does not offer them again.
    pub async fn refused_items(&self, filter: &Filter) -> Result<Vec<Item>, String> {
        let conn = match &self.db {
            Db::Sqlite(conn) => conn,
            Db::Postgres { .. } => {
                let mut items = self
                    .pg()?
                    .sync_refused_down(&self.remote)
                    .await
                    .map_err(|e| e.to_string())?;
                items.retain(|item| item.may_match(filter));
                return Ok(items);
            }
        };
        blocking(|| -> rusqlite::Result<Vec<Item>> {
            let mut stmt = conn.prepare(
                "SELECT id, created_at, pubkey, kind FROM sync_refused
                 WHERE remote = ?1 AND direction = 'down'",
            )?;
            let rows = stmt.query_map([&self.remote], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<Vec<u8>>>(2)?,
                    row.get::<_, Option<u16>>(3)?,
                ))
            })?;
            let mut items = Vec::new();
            for row in rows {
                let (id, created_at, pubkey, kind) = row?;
                let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) else {
                    continue;
                };
                let pubkey = pubkey.and_then(|p| <[u8; 32]>::try_from(p.as_slice()).ok());
                let item = Item {
                    id,
                    created_at,
                    pubkey,
                    kind,
                };
                if item.may_match(filter) {
                    items.push(item);
                }
            }
            Ok(items)
        })
        .map_err(sql_error)
    }

    /// `(created_at, id)` of every local event matching `filter` (expired
    /// ones left out), read as the relay reads a negentropy session's
    /// records, private kinds included.
    pub async fn negentropy_items(&self, filter: &Filter) -> Result<Vec<(i64, [u8; 32])>, String> {
        match self
            .store
            .negentropy_items(filter.clone(), Readers::unrestricted(), usize::MAX)
            .await
        {
            Ok(NegItems::Found(items)) => Ok(items
                .into_iter()
                .map(|(t, id)| (i64::try_from(t).unwrap_or(i64::MAX), id))
                .collect()),
            Ok(NegItems::TooMany) => Err("the local set is too large".into()),
            Err(error) => Err(format!("reading the local events: {error}")),
        }
    }

    /// The newest local events matching `filter` at or before `until`, at
    /// most `limit`, newest first (ties: lowest id), expired ones left out.
    pub async fn page(
        &self,
        filter: &Filter,
        until: Option<i64>,
        limit: u64,
    ) -> Result<Vec<(Event, String)>, String> {
        let mut part = filter.clone();
        part.until = match (filter.until, until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        part.limit = Some(limit);
        let limits = QueryLimits {
            default_limit: limit,
            max_limit: limit,
        };
        let result = self
            .store
            .query(Arc::from(vec![part]), Readers::unrestricted(), limits)
            .await
            .map_err(|e| format!("reading the local events: {e}"))?;
        Ok(result.events.into_iter().filter_map(parse_stored).collect())
    }

    /// The stored JSON of those of `ids` stored here and not expired.
    pub async fn events_by_ids(&self, ids: &[[u8; 32]]) -> Result<Vec<(Event, String)>, String> {
        let now = unix_now();
        let conn = match &self.db {
            Db::Sqlite(conn) => conn,
            Db::Postgres { .. } => {
                let found = self
                    .pg()?
                    .sync_events_by_ids(ids, now)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(found.into_iter().filter_map(parse_stored).collect());
            }
        };
        blocking(|| -> rusqlite::Result<Vec<(Event, String)>> {
            let mut stmt = conn.prepare_cached(
                "SELECT json FROM event WHERE id IN rarray(?1)
                 AND (expires_at IS NULL OR expires_at > ?2)",
            )?;
            let mut found = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(CHUNK) {
                let rows = stmt.query_map(params![blob_list(chunk), now], |row| {
                    row.get::<_, String>(0)
                })?;
                for json in rows {
                    found.extend(parse_stored(json?));
                }
            }
            Ok(found)
        })
        .map_err(sql_error)
    }

    /// Those of `ids` stored here now.
    pub async fn existing(&self, ids: &[[u8; 32]]) -> Result<HashSet<[u8; 32]>, String> {
        let conn = match &self.db {
            Db::Sqlite(conn) => conn,
            Db::Postgres { .. } => {
                return self
                    .pg()?
                    .sync_existing(ids)
                    .await
                    .map_err(|e| e.to_string());
            }
        };
        blocking(|| -> rusqlite::Result<HashSet<[u8; 32]>> {
            let mut stmt = conn.prepare_cached("SELECT id FROM event WHERE id IN rarray(?1)")?;
            let mut found = HashSet::new();
            for chunk in ids.chunks(CHUNK) {
                let rows = stmt.query_map([blob_list(chunk)], |row| row.get::<_, Vec<u8>>(0))?;
                for id in rows {
                    if let Ok(id) = <[u8; 32]>::try_from(id?.as_slice()) {
                        found.insert(id);
                    }
                }
            }
            Ok(found)
        })
        .map_err(sql_error)
    }

    /// The newest commit number: every event committed so far has one at
    /// or below it, and no event will ever be committed at or below it
    /// later. SQLite: its last seq (one writer, commit order). PostgreSQL:
    /// the settled bound (`PgStore::settled_seq`: the sequence's last
    /// value, once every transaction that may hold a number up to it has
    /// ended), waiting at most [`SETTLE_WAIT`].
    pub async fn max_seq(&mut self) -> Result<i64, String> {
        let conn = match &mut self.db {
            Db::Sqlite(conn) => conn,
            Db::Postgres { settled } => {
                let bound = self
                    .store
                    .postgres()
                    .ok_or("the store is not the PostgreSQL one")?
                    .settled_seq(SETTLE_WAIT)
                    .await
                    .map_err(|e| format!("reading the newest settled sequence: {e}"))?;
                *settled = Some(settled.map_or(bound, |old| old.max(bound)));
                return Ok(bound);
            }
        };
        blocking(|| {
            conn.query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'event'), 0)",
                [],
                |row| row.get(0),
            )
        })
        .map_err(sql_error)
    }

    /// Up to `limit` events committed after `seq`, in commit order, each
    /// with its seq; `None` for an expired one (it still moves the cursor).
    /// On PostgreSQL, in seq order up to the settled bound only (read
    /// again, see [`Local::max_seq`], once `seq` reached it): a cursor
    /// never passes a row that may still appear below it.
    #[allow(clippy::type_complexity)]
    pub async fn events_after(
        &mut self,
        seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Option<(Event, String)>)>, String> {
        let now = unix_now();
        if let Db::Postgres { settled } = self.db {
            let through = match settled {
                Some(bound) if seq < bound => bound,
                _ => self.max_seq().await?,
            };
            let rows = self
                .pg()?
                .sync_events_after(seq, through, limit, now)
                .await
                .map_err(|e| format!("reading the local events: {e}"))?;
            return Ok(rows
                .into_iter()
                .map(|(seq, json)| (seq, json.and_then(parse_stored)))
                .collect());
        }
        let Db::Sqlite(conn) = &self.db else {
            return Err("the store is not the SQLite one".into());
        };
        blocking(
            || -> rusqlite::Result<Vec<(i64, Option<(Event, String)>)>> {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, json, expires_at FROM event WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![seq, limit as i64], |row| {
                    let seq: i64 = row.get(0)?;
                    let json: String = row.get(1)?;
                    let expires_at: Option<i64> = row.get(2)?;
                    let live = expires_at.is_none_or(|t| t > now);
                    Ok((seq, if live { parse_stored(json) } else { None }))
                })?;
                rows.collect()
            },
        )
        .map_err(sql_error)
    }

    /// Reads a checkpoint (all empty when there is none).
    pub async fn checkpoint(
        &self,
        filter_key: &str,
        direction: Direction,
    ) -> Result<Checkpoint, String> {
        let conn = match &self.db {
            Db::Sqlite(conn) => conn,
            Db::Postgres { .. } => {
                return self
                    .pg()?
                    .sync_checkpoint(&self.remote, filter_key, direction)
                    .await
                    .map(Option::unwrap_or_default)
                    .map_err(|e| e.to_string());
            }
        };
        blocking(|| {
            conn.query_row(
                "SELECT synced_through, local_seq, walk_top, walk_cursor FROM sync_checkpoint
                     WHERE remote = ?1 AND filter = ?2 AND direction = ?3",
                params![self.remote, filter_key, direction.as_str()],
                |row| {
                    Ok(Checkpoint {
                        synced_through: row.get(0)?,
                        local_seq: row.get(1)?,
                        walk_top: row.get(2)?,
                        walk_cursor: row.get(3)?,
                    })
                },
            )
            .optional()
        })
        .map(Option::unwrap_or_default)
        .map_err(sql_error)
    }

    /// Writes a checkpoint.
    pub async fn save_checkpoint(
        &self,
        filter_key: &str,
        direction: Direction,
        method: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), String> {
        let conn = match &self.db {
            Db::Sqlite(conn) => conn,
            Db::Postgres { .. } => {
                return self
                    .pg()?
                    .sync_save_checkpoint(
                        &self.remote,
                        filter_key,
                        direction,
                        method,
                        checkpoint,
                        unix_now(),
                    )
                    .await
                    .map_err(|e| e.to_string());
            }
        };
        blocking(|| {
            conn.execute(
                "INSERT OR REPLACE INTO sync_checkpoint (remote, filter, direction, method,
                     synced_through, local_seq, walk_top, walk_cursor, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    self.remote,
                    filter_key,
                    direction.as_str(),
                    method,
                    checkpoint.synced_through,
                    checkpoint.local_seq,
                    checkpoint.walk_top,
                    checkpoint.walk_cursor,
                    unix_now()
                ],
            )
        })
        .map(|_| ())
        .map_err(sql_error)
    }

    /// Takes downloaded events through the checks and into the database.
    /// An `Err` is a local failure (disk full, database error) that ends the
    /// run; refusals are answers, recorded in `sync_refused`.
    pub async fn accept(&mut self, events: Vec<Event>) -> Result<Vec<(Item, Accepted)>, String> {
        let now = unix_now();
        let mut answers = Vec::with_capacity(events.len());
        let mut checked = Vec::new();
        for event in events {
            match self.check(&event, now).await? {
                Some(answer) => answers.push((Item::of(&event), answer)),
                None => checked.push(event),
            }
        }
        // Newest first, so that an older version of an address in the same
        // batch is refused as superseded rather than stored and then
        // replaced (it would come back as a difference next time).
        checked.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        let events: Vec<Arc<CanonicalEvent>> = checked
            .into_iter()
            .map(|event| Arc::new(CanonicalEvent::new(event)))
            .collect();
        // All handed to the writer at once: one group commit.
        let outcomes =
            futures_util::future::join_all(events.iter().map(|e| self.store.insert(e.clone())))
                .await;
        for (event, outcome) in events.iter().zip(outcomes) {
            let answer = match outcome {
                Ok(WriteOutcome::Stored { .. }) => Accepted::Stored,
                Ok(WriteOutcome::Duplicate) => Accepted::Had,
                Ok(WriteOutcome::Deleted) => Accepted::Refused(DELETED.into()),
                Ok(WriteOutcome::Vanished) => Accepted::Refused(VANISHED.into()),
                Ok(WriteOutcome::Superseded) => Accepted::Refused(SUPERSEDED.into()),
                Err(error) => return Err(format!("storing an event: {error}")),
            };
            answers.push((Item::of(&event.event), answer));
        }
        for (item, answer) in &answers {
            if let Accepted::Refused(reason) = answer {
                self.record_refused(item, Direction::Down, reason).await?;
            }
        }
        Ok(answers)
    }

    /// The checks before the writer; `Ok(None)`: may be written.
    async fn check(&self, event: &Event, now: i64) -> Result<Option<Accepted>, String> {
        if self.refused_down.contains(&event.id) {
            return Ok(Some(Accepted::RefusedBefore));
        }
        let refuse = |reason: &str| Ok(Some(Accepted::Refused(reason.to_owned())));
        if let Err(error) = event.verify_id() {
            return refuse(&format!("invalid: {error}"));
        }
        if event.class() == KindClass::Ephemeral {
            return Ok(Some(Accepted::Ignored));
        }
        if event.kind == kind::REQUEST_TO_VANISH {
            if !names_this_relay(event, &self.relay_url) {
                return refuse(
                    "invalid: this request to vanish names other relays, not this one (NIP-62)",
                );
            }
        } else if self.bans.events.contains(&event.id) {
            return refuse("blocked: this event is banned on this relay");
        } else if self.bans.pubkeys.contains(&event.pubkey) {
            return refuse("blocked: this pubkey is banned on this relay");
        } else if self.bans.denied_kinds.contains(&event.kind) {
            return refuse("blocked: this kind is not accepted on this relay");
        }
        if event.is_protected() {
            return refuse(
                "restricted: a protected event (NIP-70) is stored only when its author publishes it",
            );
        }
        let verdict: Option<Verdict> = match &self.db {
            Db::Sqlite(conn) => blocking(|| ingest::check(conn, event, false, &self.policy, now)),
            Db::Postgres { .. } => {
                ingest::check_in_store(&self.store, event, false, &self.policy, now).await
            }
        };
        match verdict {
            None => Ok(None),
            Some(verdict) if verdict.accepted => Ok(Some(Accepted::Had)),
            Some(verdict) if verdict.reason.starts_with("error:") => {
                Err(format!("checking an event: {}", verdict.reason))
            }
            Some(verdict) => refuse(&verdict.reason),
        }
    }
}

const DELETED: &str = "blocked: deleted by its author (NIP-09)";
const VANISHED: &str = "blocked: its author asked this relay to vanish (NIP-62)";
const SUPERSEDED: &str = "blocked: a newer version of this replaceable event is stored";

/// A stored event's JSON, parsed back (it was valid when stored).
fn parse_stored(json: String) -> Option<(Event, String)> {
    let value: serde_json::Value = serde_json::from_str(&json).ok()?;
    let event = Event::from_value(&value).ok()?;
    Some((event, json))
}

fn blob_list(ids: &[[u8; 32]]) -> Rc<Vec<SqlValue>> {
    Rc::new(ids.iter().map(|id| SqlValue::Blob(id.to_vec())).collect())
}

fn sql_error(error: rusqlite::Error) -> String {
    StoreError::from(error).to_string()
}

/// Runs a short database call from async code: the runtime is told this
/// thread blocks, so the socket and timers go on elsewhere.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
