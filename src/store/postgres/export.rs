//! Every stored event a filter matches, streamed for `nostr-relayd export`
//! from PostgreSQL, in NIP-01 order or its exact reverse, as the SQLite
//! backend's `store/export.rs` gives them.
//!
//! The filter is read as a REQ is (`query::events_sql`), in pages of
//! [`PAGE`] events, each page continuing after the last `(created_at, id)`
//! of the one before (a keyset: every range seeks straight to it along its
//! index). Memory is one page; every page comes from one REPEATABLE READ
//! read-only transaction, so the export is one consistent snapshot taken
//! beside running writers.

use tokio_postgres::IsolationLevel;

use super::PgStore;
use super::query::{Reading, Sql, events_sql};
use crate::nostr::Filter;
use crate::privacy::Readers;
use crate::store::StoreError;
use crate::store::query::Order;

/// Events read per statement.
const PAGE: u64 = 1_000;

impl PgStore {
    /// Calls `each` with the stored JSON of every event `filter` matches
    /// and that has not expired at `now`, in `order`, at most
    /// `filter.limit` of them (the first in that order). Returns how many.
    /// `search` is not read (an export is by fields).
    pub async fn export_each(
        &self,
        filter: &Filter,
        order: Order,
        now: i64,
        each: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        let filter = Filter {
            search: None,
            ..filter.clone()
        };
        let limit = filter.limit.unwrap_or(u64::MAX);
        if filter.is_unsatisfiable() || limit == 0 {
            return Ok(0);
        }
        let readers = Readers::unrestricted();
        let mut client = self.pool().get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut emitted: u64 = 0;
        let mut after: Option<(i64, Vec<u8>)> = None;
        while emitted < limit {
            let page = PAGE.min(limit - emitted);
            let reading = Reading {
                limit: Some(i64::try_from(page).unwrap_or(i64::MAX)),
                order,
                after: after.take(),
            };
            let mut sql = Sql::new();
            let Some(text) = events_sql(&mut sql, &[(&filter, reading)], &readers, now, order)
            else {
                break;
            };
            let statement = tx.prepare_cached(&text).await?;
            let rows = tx.query(&statement, &sql.refs()).await?;
            for row in &rows {
                let json: &str = row.try_get(2)?;
                each(json).map_err(|e| StoreError::Other(format!("export: {e}")))?;
                emitted += 1;
            }
            match rows.last() {
                Some(last) if rows.len() as u64 == page => {
                    after = Some((last.try_get(0)?, last.try_get(1)?));
                }
                _ => break,
            }
        }
        tx.commit().await?;
        Ok(emitted)
    }
}
