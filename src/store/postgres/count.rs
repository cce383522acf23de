//! Answering COUNT (NIP-45) from PostgreSQL: the number of events an
//! unlimited REQ with the same filters would return to the same reader,
//! and for an eligible COUNT the HyperLogLog registers of their pubkeys.
//!
//! One statement: every filter's privacy parts (`Readers::restrict`), each
//! read through the ranges a REQ reads (`query::part_sql` without a limit),
//! united, made distinct by `seq` (an event matched by two filters, two
//! parts or two tag values counts once) and grouped by pubkey, so that only
//! one row per distinct author leaves the database. The registers are made
//! in Rust by `nostr::nip45::Registers::add`, the one implementation of
//! the NIP's algorithm.

use std::sync::Arc;

use futures_util::TryStreamExt;

use super::PgStore;
use super::query::{Reading, Sql, union_of_parts};
use crate::nostr::Filter;
use crate::nostr::nip45::Registers;
use crate::privacy::Readers;
use crate::store::{CountResult, StoreError, unix_now};

/// The counting statement: `(pubkey, n)` per distinct author of the
/// matching events, or `None` when no filter can match.
fn count_sql(sql: &mut Sql, filters: &[Filter], readers: &Readers, now: i64) -> Option<String> {
    let unions: Vec<String> = filters
        .iter()
        .filter_map(|filter| union_of_parts(sql, filter, readers, now, &Reading::all()))
        .collect();
    if unions.is_empty() {
        return None;
    }
    Some(format!(
        "SELECT d.pubkey, count(*) FROM (SELECT DISTINCT u.seq, u.pubkey FROM ({}) u) d \
         GROUP BY d.pubkey",
        unions.join(" UNION ALL ")
    ))
}

impl PgStore {
    /// Counts what `filters` match for `readers`; with `hll_offset`, also
    /// the NIP-45 HyperLogLog registers of the matching events' pubkeys.
    pub async fn count(
        &self,
        filters: Arc<[Filter]>,
        readers: Readers,
        hll_offset: Option<u8>,
    ) -> Result<CountResult, StoreError> {
        if filters.iter().any(|f| f.search.is_some()) {
            // Counted here, `search` would be ignored: refuse rather than
            // count too much (as the SQLite backend does).
            return Err(StoreError::Other(
                "COUNT does not take NIP-50 search filters".into(),
            ));
        }
        let client = self.client_pool().get().await?;
        self.within(self.read_count(&client, &filters, &readers, hll_offset))
            .await
    }

    async fn read_count(
        &self,
        client: &deadpool_postgres::Client,
        filters: &[Filter],
        readers: &Readers,
        hll_offset: Option<u8>,
    ) -> Result<CountResult, StoreError> {
        let mut sql = Sql::new();
        let mut hll = hll_offset.map(|_| Registers::default());
        let Some(text) = count_sql(&mut sql, filters, readers, unix_now()) else {
            return Ok(CountResult { count: 0, hll });
        };
        let statement = client.prepare_cached(&text).await?;
        let rows = client.query_raw(&statement, sql.refs()).await?;
        futures_util::pin_mut!(rows);
        let mut count: u64 = 0;
        while let Some(row) = rows.try_next().await? {
            let n: i64 = row.try_get(1)?;
            count += u64::try_from(n).unwrap_or(0);
            if let (Some(registers), Some(offset)) = (hll.as_mut(), hll_offset) {
                let pubkey: &[u8] = row.try_get(0)?;
                // Every stored pubkey is 32 bytes; anything else is none.
                if let Ok(pubkey) = <&[u8; 32]>::try_from(pubkey) {
                    registers.add(offset, pubkey);
                }
            }
        }
        Ok(CountResult { count, hll })
    }

    /// `EXPLAIN` of the statement a COUNT with these filters runs, one line
    /// per row (tests, operators). Empty when no filter can match.
    pub async fn explain_count(
        &self,
        filters: &[Filter],
        readers: &Readers,
    ) -> Result<Vec<String>, StoreError> {
        let mut sql = Sql::new();
        match count_sql(&mut sql, filters, readers, unix_now()) {
            Some(text) => self.explain(&text, &sql).await,
            None => Ok(Vec::new()),
        }
    }
}
