//! `nostr-relayd sync` on PostgreSQL: its bookkeeping (`sync_checkpoint`,
//! `sync_refused`, migration 2, the columns of SQLite's migration 4) and
//! the look-ups it makes of the events, with the meaning `sync/local.rs`
//! gives them on SQLite.
//!
//! One thing differs in substance: the "up" direction remembers how far it
//! got as a sequence number (`local_seq`: every local event with `seq` at
//! or below it was offered). On SQLite, `seq` is commit order (one
//! writer). Here several writers (nodes, `import`, another `sync`) commit
//! in any order, so a row with a smaller `seq` may become visible after a
//! larger one was read, and a cursor moved past it would skip it for good.
//! [`PgStore::settled_seq`] gives a bound below which nothing is still in
//! flight, and [`PgStore::events_after`] never reads past such a bound.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::PgStore;
use crate::store::StoreError;
use crate::sync::local::{Checkpoint, Direction, Item};

/// Most ids bound into one `= ANY($1)` statement.
const CHUNK: usize = 1000;

/// How often [`PgStore::settled_seq`] looks whether the transactions it
/// waits for have ended.
const SETTLE_POLL: Duration = Duration::from_millis(20);

impl PgStore {
    /// The ids refused from (`Down`) or by (`Up`) `remote`.
    pub async fn sync_refused_ids(
        &self,
        remote: &str,
        direction: Direction,
    ) -> Result<HashSet<[u8; 32]>, StoreError> {
        let client = self.reader().await?;
        let rows = client
            .query(
                "SELECT id FROM sync_refused WHERE remote = $1 AND direction = $2",
                &[&remote, &direction.as_str()],
            )
            .await?;
        let mut ids = HashSet::with_capacity(rows.len());
        for row in rows {
            if let Ok(id) = <[u8; 32]>::try_from(row.try_get::<_, &[u8]>(0)?) {
                ids.insert(id);
            }
        }
        Ok(ids)
    }

    /// Forgets every refusal recorded for `remote`; returns how many.
    pub async fn sync_clear_refused(&self, remote: &str) -> Result<u64, StoreError> {
        let client = self.reader().await?;
        Ok(client
            .execute("DELETE FROM sync_refused WHERE remote = $1", &[&remote])
            .await?)
    }

    /// Records (or replaces) the refusal of `item`.
    pub async fn sync_record_refused(
        &self,
        remote: &str,
        item: &Item,
        direction: Direction,
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let client = self.reader().await?;
        client
            .execute(
                "INSERT INTO sync_refused
                     (remote, id, direction, created_at, pubkey, kind, reason, refused_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (remote, id) DO UPDATE SET
                     direction = excluded.direction, created_at = excluded.created_at,
                     pubkey = excluded.pubkey, kind = excluded.kind,
                     reason = excluded.reason, refused_at = excluded.refused_at",
                &[
                    &remote,
                    &&item.id[..],
                    &direction.as_str(),
                    &item.created_at,
                    &item.pubkey.as_ref().map(|p| &p[..]),
                    &item.kind.map(i32::from),
                    &reason,
                    &now,
                ],
            )
            .await?;
        Ok(())
    }

    /// Every refusal of `remote`'s events here (`direction = 'down'`).
    pub async fn sync_refused_down(&self, remote: &str) -> Result<Vec<Item>, StoreError> {
        let client = self.reader().await?;
        let rows = client
            .query(
                "SELECT id, created_at, pubkey, kind FROM sync_refused
                 WHERE remote = $1 AND direction = 'down'",
                &[&remote],
            )
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let Ok(id) = <[u8; 32]>::try_from(row.try_get::<_, &[u8]>(0)?) else {
                continue;
            };
            let pubkey: Option<&[u8]> = row.try_get(2)?;
            let kind: Option<i32> = row.try_get(3)?;
            items.push(Item {
                id,
                created_at: row.try_get(1)?,
                pubkey: pubkey.and_then(|p| <[u8; 32]>::try_from(p).ok()),
                kind: kind.and_then(|k| u16::try_from(k).ok()),
            });
        }
        Ok(items)
    }

    /// The checkpoint of `remote`, `filter` and `direction`, if any.
    pub async fn sync_checkpoint(
        &self,
        remote: &str,
        filter: &str,
        direction: Direction,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let client = self.reader().await?;
        let row = client
            .query_opt(
                "SELECT synced_through, local_seq, walk_top, walk_cursor FROM sync_checkpoint
                 WHERE remote = $1 AND filter = $2 AND direction = $3",
                &[&remote, &filter, &direction.as_str()],
            )
            .await?;
        row.map(|row| {
            Ok(Checkpoint {
                synced_through: row.try_get(0)?,
                local_seq: row.try_get(1)?,
                walk_top: row.try_get(2)?,
                walk_cursor: row.try_get(3)?,
            })
        })
        .transpose()
    }

    /// Writes (or replaces) a checkpoint.
    pub async fn sync_save_checkpoint(
        &self,
        remote: &str,
        filter: &str,
        direction: Direction,
        method: &str,
        checkpoint: &Checkpoint,
        now: i64,
    ) -> Result<(), StoreError> {
        let client = self.reader().await?;
        client
            .execute(
                "INSERT INTO sync_checkpoint (remote, filter, direction, method,
                     synced_through, local_seq, walk_top, walk_cursor, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (remote, filter, direction) DO UPDATE SET
                     method = excluded.method, synced_through = excluded.synced_through,
                     local_seq = excluded.local_seq, walk_top = excluded.walk_top,
                     walk_cursor = excluded.walk_cursor, updated_at = excluded.updated_at",
                &[
                    &remote,
                    &filter,
                    &direction.as_str(),
                    &method,
                    &checkpoint.synced_through,
                    &checkpoint.local_seq,
                    &checkpoint.walk_top,
                    &checkpoint.walk_cursor,
                    &now,
                ],
            )
            .await?;
        Ok(())
    }

    /// The stored JSON of those of `ids` stored and not expired at `now`.
    pub async fn sync_events_by_ids(
        &self,
        ids: &[[u8; 32]],
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.reader().await?;
        let statement = client
            .prepare_cached(
                "SELECT json FROM event WHERE id = ANY($1)
                 AND (expires_at IS NULL OR expires_at > $2)",
            )
            .await?;
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let keys: Vec<&[u8]> = chunk.iter().map(|id| &id[..]).collect();
            for row in client.query(&statement, &[&keys, &now]).await? {
                found.push(row.try_get(0)?);
            }
        }
        Ok(found)
    }

    /// Those of `ids` stored now.
    pub async fn sync_existing(&self, ids: &[[u8; 32]]) -> Result<HashSet<[u8; 32]>, StoreError> {
        let client = self.reader().await?;
        let statement = client
            .prepare_cached("SELECT id FROM event WHERE id = ANY($1)")
            .await?;
        let mut found = HashSet::new();
        for chunk in ids.chunks(CHUNK) {
            let keys: Vec<&[u8]> = chunk.iter().map(|id| &id[..]).collect();
            for row in client.query(&statement, &[&keys]).await? {
                if let Ok(id) = <[u8; 32]>::try_from(row.try_get::<_, &[u8]>(0)?) {
                    found.insert(id);
                }
            }
        }
        Ok(found)
    }

    /// A settled sequence bound M: every event with `seq` at or below M
    /// that will ever be committed is committed (and visible) when this
    /// returns, so that "every local event with seq ≤ M was offered" can
    /// be true. Waits at most `wait` for the transactions still running.
    ///
    /// Why this holds:
    /// 1. M is the sequence's last value (`event.seq` is a bigserial,
    ///    `CACHE 1`: values are handed out in increasing order across all
    ///    sessions, and M never goes back, whatever is deleted). A row with
    ///    seq s ≤ M got s from `nextval` no later than M was handed out,
    ///    so before M was read here.
    /// 2. A writer's transaction has its transaction id before it calls
    ///    `nextval`: the one transaction that inserts events (`writer.rs`,
    ///    `apply_batch`) first locks its `node_sequence` row `FOR UPDATE`,
    ///    and a row lock assigns the id. (A bare INSERT would not do: its
    ///    id is assigned when the row is written, after the default's
    ///    `nextval` ran. Every event row is written by that writer,
    ///    whichever process runs it: relay, `import`, `sync`.)
    /// 3. S = `pg_current_snapshot()` is taken after M was read: every
    ///    transaction id assigned before it is below `xmax(S)`, so by 1 and
    ///    2 every transaction holding a seq ≤ M has an id below `xmax(S)`.
    /// 4. `xmin` of a later snapshot (the oldest transaction id still
    ///    running) at or above `xmax(S)`: all of those ended, committed or
    ///    rolled back, and what they committed is visible to every
    ///    statement that starts afterwards.
    ///
    /// Only transactions with an id (writers) are waited for; readers, an
    /// `export` among them, are not.
    pub async fn settled_seq(&self, wait: Duration) -> Result<i64, StoreError> {
        let client = self.reader().await?;
        // `event_seq_seq`: the sequence behind migration 1's bigserial.
        let bound: i64 = client
            .query_one(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM event_seq_seq",
                &[],
            )
            .await?
            .try_get(0)?;
        let snapshot: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await?
            .try_get(0)?;
        let settled = client
            .prepare_cached(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())
                        >= pg_snapshot_xmax($1::text::pg_snapshot)",
            )
            .await?;
        let deadline = Instant::now() + wait;
        loop {
            if client
                .query_one(&settled, &[&snapshot])
                .await?
                .try_get::<_, bool>(0)?
            {
                return Ok(bound);
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Other(format!(
                    "transactions that may hold events up to seq {bound} were still running \
                     after {} s (snapshot {snapshot}): a writer is stuck, or a transaction was \
                     left open (pg_stat_activity shows it)",
                    wait.as_secs()
                )));
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Up to `limit` events with `after < seq ≤ through`, ascending, each
    /// with its seq, and its JSON unless it expired at `now` (an expired
    /// one still moves the caller's cursor). `through` must be a bound
    /// from [`PgStore::settled_seq`]: above it, a row may still appear
    /// below one already read.
    pub async fn sync_events_after(
        &self,
        after: i64,
        through: i64,
        limit: usize,
        now: i64,
    ) -> Result<Vec<(i64, Option<String>)>, StoreError> {
        let client = self.reader().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT seq, json, expires_at FROM event WHERE seq > $1 AND seq <= $2
                 ORDER BY seq LIMIT $3",
                &[&after, &through, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(0)?;
                let expires_at: Option<i64> = row.try_get(2)?;
                let json = if expires_at.is_none_or(|t| t > now) {
                    Some(row.try_get(1)?)
                } else {
                    None
                };
                Ok((seq, json))
            })
            .collect()
    }
}
