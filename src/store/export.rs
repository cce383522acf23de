//! Every stored event a filter matches, in NIP-01 order or its reverse,
//! streamed row by row (`nostr-relayd export`).
//!
//! The filter is planned as a REQ is (`query::plan`: ids, (author, kind),
//! tag value or kind ranges, each read by `created_at` along its index), but
//! instead of reading each range up to a limit, every range is opened at
//! once as a cursor and the cursors are merged by `created_at` (a k-way
//! merge, as strfry does). Each range is read once, so a full export reads
//! every index entry once; memory is one cursor per range plus the events
//! of one second (their ids, to order ties), never the result set.
//!
//! All of it runs in one read transaction: the export is a consistent
//! snapshot, taken beside a running relay's writer (WAL readers never
//! block it). While it runs, WAL checkpoints cannot go past the snapshot,
//! so the WAL grows by whatever the relay writes meanwhile.

use std::collections::BinaryHeap;

use rusqlite::{Connection, params_from_iter};

use super::query::{self, Order};
use crate::nostr::Filter;

/// Calls `emit` with the stored JSON of every event `filter` matches and
/// that has not expired at `now`, in `order` (newest first: ties by lowest
/// id, as NIP-01 orders; oldest first: the exact reverse), at most
/// `filter.limit` of them (the first in that order). Returns how many.
/// The JSON is the relay's stored form, byte for byte.
pub fn each_event<E: From<rusqlite::Error>>(
    conn: &Connection,
    filter: &Filter,
    order: Order,
    now: i64,
    mut emit: impl FnMut(&str) -> Result<(), E>,
) -> Result<u64, E> {
    let limit = filter.limit.unwrap_or(u64::MAX);
    if filter.is_unsatisfiable() || limit == 0 {
        return Ok(0);
    }
    let tx = conn.unchecked_transaction()?;
    let (ranges, covered) = query::plan(&tx, filter)?;
    let mut statements = Vec::with_capacity(ranges.len());
    let mut bindings = Vec::with_capacity(ranges.len());
    for key in &ranges {
        let mut sql = query::range_sql_selecting(key, filter, covered, now, "", order);
        // The limit is the statement's last parameter; -1: none.
        if let Some(last) = sql.params.last_mut() {
            *last = Box::new(-1i64);
        }
        // Not prepare_cached: each cursor needs a statement of its own,
        // and a thousand-author filter would flush the cache.
        statements.push(tx.prepare(&sql.text)?);
        bindings.push(sql.params);
    }
    let mut cursors = Vec::with_capacity(statements.len());
    for (statement, params) in statements.iter_mut().zip(&bindings) {
        cursors.push(statement.query(params_from_iter(params.iter()))?);
    }
    // The merge key: larger comes first out of the max-heap.
    let key = |created_at: i64| match order {
        Order::NewestFirst => created_at,
        Order::OldestFirst => -created_at,
    };
    // (key, seq, cursor): the head row of each cursor not yet exhausted.
    let mut heads: BinaryHeap<(i64, i64, usize)> = BinaryHeap::with_capacity(cursors.len());
    for (index, rows) in cursors.iter_mut().enumerate() {
        if let Some(row) = rows.next()? {
            heads.push((key(row.get(1)?), row.get(0)?, index));
        }
    }
    let mut load_id = tx.prepare_cached("SELECT id FROM event WHERE seq = ?1")?;
    let mut load_json = tx.prepare_cached("SELECT json FROM event WHERE seq = ?1")?;
    let mut second: Vec<i64> = Vec::new();
    let mut tied: Vec<(Vec<u8>, i64)> = Vec::new();
    let mut emitted = 0u64;
    while let Some(&(top, ..)) = heads.peek() {
        // Every row of this second, from every cursor whose head is in it.
        second.clear();
        while let Some(&(head, seq, index)) = heads.peek() {
            if head != top {
                break;
            }
            heads.pop();
            second.push(seq);
            while let Some(row) = cursors[index].next()? {
                let (created_at, seq): (i64, i64) = (row.get(1)?, row.get(0)?);
                if key(created_at) == top {
                    second.push(seq);
                } else {
                    heads.push((key(created_at), seq, index));
                    break;
                }
            }
        }
        // An event with two of a tag condition's values is in two ranges.
        second.sort_unstable();
        second.dedup();
        // Ties in time go by id (lowest first when newest first).
        let seqs: &[i64] = if second.len() > 1 {
            tied.clear();
            for &seq in &second {
                let mut rows = load_id.query([seq])?;
                if let Some(row) = rows.next()? {
                    tied.push((row.get(0)?, seq));
                }
            }
            match order {
                Order::NewestFirst => tied.sort_unstable(),
                Order::OldestFirst => tied.sort_unstable_by(|a, b| b.cmp(a)),
            }
            second.clear();
            second.extend(tied.iter().map(|(_, seq)| *seq));
            &second
        } else {
            &second
        };
        for &seq in seqs {
            let mut rows = load_json.query([seq])?;
            if let Some(row) = rows.next()? {
                emit(row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?)?;
                emitted += 1;
                if emitted == limit {
                    return Ok(emitted);
                }
            }
        }
    }
    Ok(emitted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use serde_json::json;

    /// Every range an export opens is read along its index, in both
    /// directions: no sort of the result set in a temp B-tree.
    #[test]
    fn export_ranges_need_no_sort() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.sqlite");
        let mut conn = super::super::open_connection(&path, Durability::Normal, false).unwrap();
        super::super::schema::migrate(&mut conn, &path).unwrap();
        conn.execute(
            "INSERT INTO event (id, pubkey, created_at, kind, json) VALUES (?1, ?2, 1, 1, '{}')",
            rusqlite::params![vec![0u8; 32], vec![0xaa_u8; 32]],
        )
        .unwrap();
        let hex = |c: &str| c.repeat(64);
        let filters = [
            json!({}),
            json!({"since": 1, "until": 2}),
            json!({"ids": [hex("a")]}),
            json!({"authors": [hex("a")]}),
            json!({"authors": [hex("a")], "kinds": [1, 3]}),
            json!({"#e": [hex("c")], "kinds": [1]}),
            json!({"#t": ["nostr"]}),
        ];
        for filter in filters {
            let parsed = Filter::from_value(&filter).unwrap();
            let (ranges, covered) = query::plan(&conn, &parsed).unwrap();
            assert!(!ranges.is_empty(), "{filter}");
            for order in [Order::NewestFirst, Order::OldestFirst] {
                let sql = query::range_sql_selecting(&ranges[0], &parsed, covered, 5, "", order);
                let mut stmt = conn
                    .prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text))
                    .unwrap();
                let plan: Vec<String> = stmt
                    .query_map(params_from_iter(sql.params.iter()), |row| row.get(3))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let plan = plan.join("\n");
                assert!(!plan.contains("TEMP B-TREE"), "{filter} {order:?}:\n{plan}");
                assert!(plan.contains("USING"), "{filter} {order:?}:\n{plan}");
            }
        }
    }
}
