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
//! The size cap is not offered here: PostgreSQL does not give the space of
//! deleted rows back, so a cap measured on the database's size would go on
//! evicting (`Config::validate` refuses it).

use deadpool_postgres::Transaction;

use super::PgStore;
use crate::nostr::kind;
use crate::store::StoreError;
use crate::store::retention::{Doomed, PruneJob, Pruned, Span};

impl PgStore {
    /// The distinct kinds stored: one index descent per kind (a loose
    /// scan of `event_kind_time`), not a scan of the table.
    pub async fn stored_kinds(&self) -> Result<Vec<u16>, StoreError> {
        let mut client = self.pool().get().await?;
        let tx = unbounded(&mut client).await?;
        let rows = tx
            .query(
                "WITH RECURSIVE k (kind) AS (
                     SELECT min(kind) FROM event
                     UNION ALL
                     SELECT (SELECT min(kind) FROM event WHERE kind > k.kind)
                     FROM k WHERE k.kind IS NOT NULL)
                 SELECT kind FROM k WHERE kind IS NOT NULL",
                &[],
            )
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| Ok(u16::try_from(row.try_get::<_, i32>(0)?).unwrap_or(u16::MAX)))
            .collect()
    }

    /// What [`Doomed::OlderThan`] would delete of `kind`, all batches
    /// together.
    pub async fn older_than(
        &self,
        kind: u16,
        before: i64,
        exempt: &[[u8; 32]],
    ) -> Result<Span, StoreError> {
        let mut client = self.pool().get().await?;
        let tx = unbounded(&mut client).await?;
        let row = tx
            .query_one(
                "SELECT count(*), min(created_at), max(created_at) FROM event
                 WHERE kind = $1 AND created_at < $2 AND NOT (pubkey = ANY($3))",
                &[&i32::from(kind), &before, &keys(exempt)],
            )
            .await?;
        tx.commit().await?;
        span_of(&row)
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
        let mut client = self.pool().get().await?;
        let tx = unbounded(&mut client).await?;
        let rows = tx
            .query(
                "SELECT pubkey FROM event
                 WHERE kind = ANY($1) AND created_at >= $2 AND NOT (pubkey = ANY($4))
                 GROUP BY pubkey HAVING count(*) > $3",
                &[&ints(kinds), &since, &clamp(keep), &keys(exempt)],
            )
            .await?;
        tx.commit().await?;
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
    /// only events created at or after `since` (those an age rule leaves).
    pub async fn beyond_newest_of(
        &self,
        author: &[u8; 32],
        kinds: &[u16],
        keep: u64,
        since: i64,
    ) -> Result<Span, StoreError> {
        let mut client = self.pool().get().await?;
        let tx = unbounded(&mut client).await?;
        let row = tx
            .query_one(
                "SELECT count(*), min(created_at), max(created_at) FROM (
                     SELECT created_at FROM event
                     WHERE pubkey = $1 AND kind = ANY($2) AND created_at >= $3
                     ORDER BY created_at DESC, id OFFSET $4) AS beyond",
                &[&&author[..], &ints(kinds), &since, &clamp(keep)],
            )
            .await?;
        tx.commit().await?;
        span_of(&row)
    }

    /// Deletes one bounded batch for retention (`retention.rs`) in its own
    /// short transaction, so that the writers' work goes on between
    /// batches. `used_bytes` is 0: there is no size cap on PostgreSQL.
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
            Doomed::Oldest { .. } => {
                return Err(StoreError::Other(
                    "retention.max_database_mb is not available with the PostgreSQL backend".into(),
                ));
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
        Ok(Pruned {
            span,
            used_bytes: 0,
        })
    }
}

/// A transaction on `client` without the readers' statement timeout.
async fn unbounded(client: &mut deadpool_postgres::Object) -> Result<Transaction<'_>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SET LOCAL statement_timeout = 0", &[]).await?;
    Ok(tx)
}

fn span_of(row: &tokio_postgres::Row) -> Result<Span, StoreError> {
    let count: i64 = row.try_get(0)?;
    Ok(Span {
        count: u64::try_from(count).unwrap_or(0),
        oldest: row.try_get(1)?,
        newest: row.try_get(2)?,
    })
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
