//! NIP-77 records from PostgreSQL: `(created_at, id)` of every event a REQ
//! with the session's filter and no limit would return to this reader
//! (private kinds, expiry), at most `cap` of them, as the SQLite backend's
//! `store/negentropy.rs` gives them.
//!
//! The filter's privacy parts are read through the REQ's ranges without a
//! limit (`query::part_sql`), united, in one read-only transaction whose
//! portal is fetched in chunks: the read stops as soon as more than `cap`
//! distinct events have been seen, without the database finishing the scan.

use std::collections::HashSet;

use super::PgStore;
use super::query::{Reading, Sql, union_of_parts};
use crate::nostr::Filter;
use crate::privacy::Readers;
use crate::store::negentropy::NegItems;
use crate::store::{StoreError, unix_now};

/// Rows fetched from the portal at a time.
const CHUNK: i32 = 5_000;

impl PgStore {
    /// Reads the records `filter` gives this reader, at most `cap` of them
    /// (`NegItems::TooMany` past it). `limit` is not read: a session
    /// reconciles the whole set.
    pub async fn negentropy_items(
        &self,
        filter: Filter,
        readers: Readers,
        cap: usize,
    ) -> Result<NegItems, StoreError> {
        let mut client = self.client_pool().get().await?;
        self.within(read_items(&mut client, &filter, &readers, cap))
            .await
    }
}

/// The records of one session, read on `client`.
async fn read_items(
    client: &mut deadpool_postgres::Client,
    filter: &Filter,
    readers: &Readers,
    cap: usize,
) -> Result<NegItems, StoreError> {
    let mut sql = Sql::new();
    let Some(union) = union_of_parts(&mut sql, filter, readers, unix_now(), &Reading::all()) else {
        return Ok(NegItems::Found(Vec::new()));
    };
    let text = format!("SELECT u.seq, u.created_at, u.id FROM ({union}) u");
    let tx = client.build_transaction().read_only(true).start().await?;
    let statement = tx.prepare_cached(&text).await?;
    let portal = tx.bind_raw(&statement, sql.refs()).await?;
    let mut seen: HashSet<i64> = HashSet::new();
    let mut items: Vec<(u64, [u8; 32])> = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, CHUNK).await?;
        let done = rows.len() < usize::try_from(CHUNK).unwrap_or(usize::MAX);
        for row in rows {
            // An event with two of a tag condition's values, or in two
            // parts, comes twice.
            if !seen.insert(row.try_get(0)?) {
                continue;
            }
            if seen.len() > cap {
                return Ok(NegItems::TooMany);
            }
            let created_at: i64 = row.try_get(1)?;
            let id: &[u8] = row.try_get(2)?;
            // Every stored id is 32 bytes.
            if let Ok(id) = <[u8; 32]>::try_from(id) {
                items.push((u64::try_from(created_at).unwrap_or(0), id));
            }
        }
        if done {
            break;
        }
    }
    tx.commit().await?;
    Ok(NegItems::Found(items))
}
