//! Retention on PostgreSQL: the figures a pass is planned from (and a dry
//! run reports), and [`PgStore::prune`], one bounded batch of deletions.
//!
//! The rules mean what they mean on SQLite (`store/retention.rs`); only
//! the SQL differs. Planning and pruning run on a pool connection with no
//! statement timeout (a scan of every author over a limit may take longer
//! than a REQ's budget), each call in a short transaction of its own.
//!
//! A job selects what it deletes first, then deletes those rows that no
//! other transaction holds (`FOR UPDATE SKIP LOCKED`): a row another
//! node's writer is replacing or deleting right now is left to it, so a
//! prune never waits on a writer nor deadlocks with one. Deleting a row
//! takes its tags (ON DELETE CASCADE), its search entry (a column of the
//! row) and its count per kind class (a trigger) with it.
//!
//! The size cap measures the stored events' JSON (what `export` writes),
//! kept per kind class by the trigger of migration 2: the files do not
//! shrink when rows are deleted (their space is reused by later rows after
//! VACUUM), so a cap on the files' size would go on evicting. The tables
//! and indexes take a few times the JSON on disk (README: "Retention").

use deadpool_postgres::Transaction;

use super::PgStore;
use crate::nostr::kind;
use crate::store::StoreError;
use crate::store::retention::{Doomed, PruneJob, Pruned, Span, evictable_sql};

/// [`Doomed::Oldest`] and the dry run's walk: evictable events of
/// non-exempt authors, oldest first (a backward scan of `event_time`).
const OLDEST: &str = concat!(
    "SELECT seq, created_at, kind, octet_length(json) FROM event
     WHERE created_at >= $1 AND NOT (pubkey = ANY($2)) AND ",
    evictable_sql!(),
    " ORDER BY created_at"
);

impl PgStore {
    /// The distinct kinds stored: one index descent per kind (a loose
    /// scan of `event_kind_time`), not a scan of the table.
    pub async fn stored_kinds(&self) -> Result<Vec<u16>, StoreError> {
        let rows = self
            .planning_rows(
                "WITH RECURSIVE k (kind) AS (
                     SELECT min(kind) FROM event
                     UNION ALL
                     SELECT (SELECT min(kind) FROM event WHERE kind > k.kind)
                     FROM k WHERE k.kind IS NOT NULL)
                 SELECT kind FROM k WHERE kind IS NOT NULL",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| Ok(u16::try_from(row.try_get::<_, i32>(0)?).unwrap_or(u16::MAX)))
            .collect()
    }

    /// What [`Doomed::OlderThan`] would delete of `kind`, all batches
    /// together, and the bytes of its JSON (the size cap's measure).
    pub async fn older_than(
        &self,
        kind: u16,
        before: i64,
        exempt: &[[u8; 32]],
    ) -> Result<(Span, u64), StoreError> {
        let row = self
            .planning_row(
                "SELECT count(*), min(created_at), max(created_at),
                        coalesce(sum(octet_length(json)), 0)::bigint FROM event
                 WHERE kind = $1 AND created_at < $2 AND NOT (pubkey = ANY($3))",
                &[&i32::from(kind), &before, &keys(exempt)],
            )
            .await?;
        span_and_bytes(&row)
    }

    /// The authors, exempt ones left out, with more than `keep` events of
    /// `kinds` created at or after `since`.
    pub async fn authors_beyond(
        &self,
        kinds: &[u16],
        keep: u64,
        since: i64,
        exempt: &[[u8; 32]],
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        let rows = self
            .planning_rows(
                "SELECT pubkey FROM event
                 WHERE kind = ANY($1) AND created_at >= $2 AND NOT (pubkey = ANY($4))
                 GROUP BY pubkey HAVING count(*) > $3",
                &[&ints(kinds), &since, &clamp(keep), &keys(exempt)],
            )
            .await?;
        let mut authors = Vec::with_capacity(rows.len());
        for row in rows {
            let pubkey: &[u8] = row.try_get(0)?;
            if let Ok(pubkey) = <[u8; 32]>::try_from(pubkey) {
                authors.push(pubkey);
            }
        }
        Ok(authors)
    }

    /// What [`Doomed::BeyondNewest`] would delete of one author, counting
    /// only events created at or after `since` (those an age rule leaves),
    /// and the bytes of its JSON.
    pub async fn beyond_newest_of(
        &self,
        author: &[u8; 32],
        kinds: &[u16],
        keep: u64,
        since: i64,
    ) -> Result<(Span, u64), StoreError> {
        let row = self
            .planning_row(
                "SELECT count(*), min(created_at), max(created_at),
                        coalesce(sum(bytes), 0)::bigint FROM (
                     SELECT created_at, octet_length(json) AS bytes FROM event
                     WHERE pubkey = $1 AND kind = ANY($2) AND created_at >= $3
                     ORDER BY created_at DESC, id OFFSET $4) AS beyond",
                &[&&author[..], &ints(kinds), &since, &clamp(keep)],
            )
            .await?;
        span_and_bytes(&row)
    }

    /// The size cap's measure: bytes of stored JSON, summed from the
    /// per-class rows the triggers keep (no scan of the events).
    pub async fn used_bytes(&self) -> Result<u64, StoreError> {
        let client = self.pool().get().await?;
        let row = client
            .query_one(
                "SELECT coalesce(sum(bytes), 0)::bigint FROM event_class_count",
                &[],
            )
            .await?;
        Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
    }

    /// The oldest evictable events not by an exempt pubkey, those for which
    /// `skip` is true (what the rules take anyway) passed over, until their
    /// JSON reaches `json_wanted` bytes: the size cap's part of a dry run.
    /// Read through a cursor, 1,000 rows at a time, in one snapshot.
    pub async fn oldest_evictable(
        &self,
        json_wanted: u64,
        exempt: &[[u8; 32]],
        skip: impl Fn(u16, i64) -> bool,
    ) -> Result<(Span, u64), StoreError> {
        let mut client = self.pool().get().await?;
        let tx = unbounded(&mut client).await?;
        let declare = format!("DECLARE oldest NO SCROLL CURSOR FOR {OLDEST}");
        tx.execute(declare.as_str(), &[&i64::MIN, &keys(exempt)])
            .await?;
        let (mut span, mut taken) = (Span::default(), 0u64);
        'fetch: while taken < json_wanted {
            let rows = tx.query("FETCH 1000 FROM oldest", &[]).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                if taken >= json_wanted {
                    break 'fetch;
                }
                let created_at: i64 = row.try_get(1)?;
                let kind = u16::try_from(row.try_get::<_, i32>(2)?).unwrap_or(u16::MAX);
                let bytes: i32 = row.try_get(3)?;
                if !skip(kind, created_at) {
                    span.add(created_at);
                    taken += u64::try_from(bytes).unwrap_or(0);
                }
            }
        }
        tx.commit().await?;
        Ok((span, taken))
    }

    /// Deletes one bounded batch for retention (`retention.rs`) in its own
    /// short transaction, so that the writers' work goes on between
    /// batches.
    pub async fn prune(&self, job: PruneJob) -> Result<Pruned, StoreError> {
        let mut client = self.pool().get().await?;
        let tx = unbounded(&mut client).await?;
        let exempt = keys(&job.exempt);
        let limit = clamp(job.limit as u64);
        let mut doomed: Vec<i64> = Vec::new();
        match &job.doomed {
            Doomed::OlderThan { kind, before, from } => {
                for row in tx
                    .query(
                        "SELECT seq FROM event
                         WHERE kind = $1 AND created_at < $2 AND created_at >= $3
                           AND NOT (pubkey = ANY($4)) AND kind <> $6
                         ORDER BY created_at LIMIT $5",
                        &[
                            &i32::from(*kind),
                            before,
                            from,
                            &exempt,
                            &limit,
                            &i32::from(kind::REQUEST_TO_VANISH),
                        ],
                    )
                    .await?
                {
                    doomed.push(row.try_get(0)?);
                }
            }
            Doomed::BeyondNewest {
                authors,
                kinds,
                keep,
            } => {
                let kinds: Vec<i32> = ints(kinds)
                    .into_iter()
                    .filter(|&k| k != i32::from(kind::REQUEST_TO_VANISH))
                    .collect();
                for author in authors {
                    let room = job.limit.saturating_sub(doomed.len());
                    if room == 0 {
                        break;
                    }
                    if job.exempt.contains(author) {
                        continue;
                    }
                    // In NIP-01 order (newest first, ties by lowest id),
                    // everything past the newest `keep`.
                    for row in tx
                        .query(
                            "SELECT seq FROM event WHERE pubkey = $1 AND kind = ANY($2)
                             ORDER BY created_at DESC, id OFFSET $3 LIMIT $4",
                            &[&&author[..], &kinds, &clamp(*keep), &clamp(room as u64)],
                        )
                        .await?
                    {
                        doomed.push(row.try_get(0)?);
                    }
                }
            }
            Doomed::Oldest { from } => {
                let oldest = format!("{OLDEST} LIMIT $3");
                for row in tx.query(oldest.as_str(), &[from, &exempt, &limit]).await? {
                    doomed.push(row.try_get(0)?);
                }
            }
        }
        let mut span = Span::default();
        if !doomed.is_empty() {
            for row in tx
                .query(
                    "DELETE FROM event WHERE seq IN (
                         SELECT seq FROM event WHERE seq = ANY($1) FOR UPDATE SKIP LOCKED)
                     RETURNING created_at",
                    &[&doomed],
                )
                .await?
            {
                span.add(row.try_get(0)?);
            }
        }
        tx.commit().await?;
        drop(client);
        Ok(Pruned {
            span,
            used_bytes: self.used_bytes().await?,
        })
    }
}

impl PgStore {
    /// Runs one planning query in a short transaction of its own without
    /// the readers' statement timeout.
    async fn planning_rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let mut client = self.pool().get().await?;
        let tx = unbounded(&mut client).await?;
        let rows = tx.query(sql, params).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// [`PgStore::planning_rows`] of a query that returns one row.
    async fn planning_row(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, StoreError> {
        self.planning_rows(sql, params)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Other("a planning query returned no row".into()))
    }
}

/// A transaction on `client` without the readers' statement timeout.
async fn unbounded(client: &mut deadpool_postgres::Object) -> Result<Transaction<'_>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SET LOCAL statement_timeout = 0", &[]).await?;
    Ok(tx)
}

/// A `count, min(created_at), max(created_at), bytes` row.
fn span_and_bytes(row: &tokio_postgres::Row) -> Result<(Span, u64), StoreError> {
    let count: i64 = row.try_get(0)?;
    let bytes: i64 = row.try_get(3)?;
    let span = Span {
        count: u64::try_from(count).unwrap_or(0),
        oldest: row.try_get(1)?,
        newest: row.try_get(2)?,
    };
    Ok((span, u64::try_from(bytes).unwrap_or(0)))
}

fn keys(keys: &[[u8; 32]]) -> Vec<&[u8]> {
    keys.iter().map(|key| &key[..]).collect()
}

fn ints(kinds: &[u16]) -> Vec<i32> {
    kinds.iter().map(|&k| i32::from(k)).collect()
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
