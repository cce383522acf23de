//! NIP-77: the records of a negentropy session, `(created_at, id)` of every
//! event a REQ with the session's filter and no limit would return to this
//! reader (private kinds, expiry; deleted and vanished events are gone from
//! the table already).
//!
//! A filter with neither ids, authors, kinds nor tags (`{}`, or a time
//! range) is one scan of the covering index `event_created_id`
//! (migration 3): it never reads a table row. Expired events and kinds kept
//! from this reader are left out by `seq NOT IN` two small index ranges,
//! which SQLite reads once into an ephemeral set. Any other filter is read
//! through the REQ planner's ranges (`query::each_match`), and the id of
//! each match is then read from its row (the columns before `json` only).

use std::collections::HashSet;
use std::rc::Rc;
use std::time::Instant;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension};

use super::query;
use crate::nostr::Filter;
use crate::privacy::Readers;

/// A session's records, or the news that there are too many.
#[derive(Debug, PartialEq, Eq)]
pub enum NegItems {
    /// `(created_at, id)`, in no particular order, without duplicates.
    Found(Vec<(u64, [u8; 32])>),
    /// The filter matches more than the cap.
    TooMany,
}

/// Reads the records `filter` gives this reader, at most `cap` of them,
/// within `deadline` (SQLite's progress handler, as for a REQ).
pub fn items_for(
    conn: &mut Connection,
    filter: &Filter,
    readers: &Readers,
    now: i64,
    deadline: Instant,
    cap: usize,
) -> rusqlite::Result<NegItems> {
    conn.progress_handler(1000, Some(move || Instant::now() > deadline))?;
    let result = read_items(&*conn, filter, readers, now, cap);
    let cleared = conn.progress_handler(0, None::<fn() -> bool>);
    let result = result?;
    cleared?;
    Ok(result)
}

/// Whether a filter (one of `Readers::restrict`'s parts) is read from the
/// time index alone.
fn time_only(filter: &Filter) -> bool {
    filter.ids.is_none()
        && filter.authors.is_none()
        && filter.kinds.is_none()
        && filter.tags.is_empty()
}

fn read_items(
    conn: &Connection,
    filter: &Filter,
    readers: &Readers,
    now: i64,
    cap: usize,
) -> rusqlite::Result<NegItems> {
    // One read transaction: every part sees the same database state.
    let tx = conn.unchecked_transaction()?;
    let mut seen: HashSet<i64> = HashSet::new();
    let mut items: Vec<(u64, [u8; 32])> = Vec::new();
    // Matches found through the planner: (seq, created_at), id to read.
    let mut pending: Vec<(i64, u64)> = Vec::new();
    let mut too_many = false;
    for part in readers.restrict(filter) {
        if part.is_unsatisfiable() {
            continue;
        }
        if time_only(&part) {
            scan_time_index(&tx, &part, now, |seq, created_at, id| {
                if seen.insert(seq) {
                    if seen.len() > cap {
                        too_many = true;
                        return false;
                    }
                    items.push((created_at, id));
                }
                true
            })?;
        } else {
            query::each_match(&tx, &part, now, |seq, created_at| {
                if seen.insert(seq) {
                    if seen.len() > cap {
                        too_many = true;
                        return false;
                    }
                    pending.push((seq, u64::try_from(created_at).unwrap_or(0)));
                }
                true
            })?;
        }
        if too_many {
            return Ok(NegItems::TooMany);
        }
    }
    drop(seen);
    if !pending.is_empty() {
        let mut id_of = tx.prepare_cached("SELECT id FROM event WHERE seq = ?1")?;
        items.reserve(pending.len());
        for (seq, created_at) in pending {
            let id: Option<Vec<u8>> = id_of.query_row([seq], |row| row.get(0)).optional()?;
            // Always present: the match comes from this same snapshot.
            if let Some(id) = id.and_then(|id| <[u8; 32]>::try_from(id).ok()) {
                items.push((created_at, id));
            }
        }
    }
    tx.finish()?;
    Ok(NegItems::Found(items))
}

/// `(seq, created_at, id)` of every row of `event_created_id` in the
/// filter's time range, less expired events and excluded kinds. `visit`
/// returns false to stop.
fn scan_time_index(
    conn: &Connection,
    filter: &Filter,
    now: i64,
    mut visit: impl FnMut(i64, u64, [u8; 32]) -> bool,
) -> rusqlite::Result<()> {
    let excluded: Vec<SqlValue> = filter
        .excluded_kinds
        .iter()
        .map(|k| SqlValue::Integer(i64::from(*k)))
        .collect();
    let mut stmt = conn.prepare_cached(&scan_sql(!excluded.is_empty()))?;
    let since = filter.since.unwrap_or(0);
    let until = filter.until.unwrap_or(i64::MAX);
    let mut rows = if excluded.is_empty() {
        stmt.query(rusqlite::params![since, until, now])?
    } else {
        stmt.query(rusqlite::params![since, until, now, Rc::new(excluded)])?
    };
    while let Some(row) = rows.next()? {
        let id = match row.get_ref(2)?.as_blob() {
            Ok(id) => <[u8; 32]>::try_from(id).ok(),
            Err(_) => None,
        };
        let Some(id) = id else { continue };
        let created_at: i64 = row.get(1)?;
        if !visit(row.get(0)?, u64::try_from(created_at).unwrap_or(0), id) {
            break;
        }
    }
    Ok(())
}

/// The time-index scan: `?1`..`?2` the time range, `?3` now, `?4` the
/// excluded kinds (when `excluding`).
fn scan_sql(excluding: bool) -> String {
    let mut text = String::from(
        "SELECT seq, created_at, id FROM event INDEXED BY event_created_id
         WHERE created_at BETWEEN ?1 AND ?2
           AND seq NOT IN (SELECT seq FROM event INDEXED BY event_expiry WHERE expires_at <= ?3)",
    );
    if excluding {
        text.push_str(
            "
           AND seq NOT IN (SELECT seq FROM event INDEXED BY event_kind_time
                           WHERE kind IN rarray(?4))",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use serde_json::json;

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("neg.sqlite");
        let mut conn = super::super::open_connection(&path, Durability::Normal, false).unwrap();
        super::super::schema::migrate(&mut conn, &path).unwrap();
        (dir, conn)
    }

    /// Inserts a bare row (no tags): id byte, pubkey byte, created_at, kind,
    /// expires_at.
    fn row(
        conn: &Connection,
        id: u8,
        pubkey: u8,
        created_at: i64,
        kind: u16,
        expires: Option<i64>,
    ) {
        conn.execute(
            "INSERT INTO event (id, pubkey, created_at, kind, expires_at, json)
             VALUES (?1, ?2, ?3, ?4, ?5, '{}')",
            rusqlite::params![vec![id; 32], vec![pubkey; 32], created_at, kind, expires],
        )
        .unwrap();
    }

    fn items(
        conn: &mut Connection,
        filter: serde_json::Value,
        readers: &Readers,
        cap: usize,
    ) -> NegItems {
        let filter = Filter::from_value(&filter).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        match items_for(conn, &filter, readers, 1000, deadline, cap).unwrap() {
            NegItems::Found(mut found) => {
                found.sort_unstable();
                NegItems::Found(found)
            }
            too_many => too_many,
        }
    }

    fn ids(result: NegItems) -> Vec<u8> {
        match result {
            NegItems::Found(found) => found.iter().map(|(_, id)| id[0]).collect(),
            NegItems::TooMany => panic!("too many"),
        }
    }

    #[test]
    fn records_follow_the_req_rules() {
        let (_dir, mut conn) = database();
        row(&conn, 1, 0xaa, 10, 1, None);
        row(&conn, 2, 0xaa, 20, 1, Some(999)); // expired at now = 1000
        row(&conn, 3, 0xbb, 30, 4, None); // private kind by bb
        row(&conn, 4, 0xbb, 40, 7, Some(2000));
        row(&conn, 5, 0xcc, 50, 1059, None);
        let anonymous = Readers::new(&[4, 1059], &[]);
        let bb = Readers::new(&[4, 1059], &[[0xbb; 32]]);
        let all = Readers::unrestricted();
        assert_eq!(ids(items(&mut conn, json!({}), &all, 100)), [1, 3, 4, 5]);
        assert_eq!(ids(items(&mut conn, json!({}), &anonymous, 100)), [1, 4]);
        assert_eq!(ids(items(&mut conn, json!({}), &bb, 100)), [1, 3, 4]);
        assert_eq!(
            ids(items(
                &mut conn,
                json!({"since": 15, "until": 40}),
                &anonymous,
                100
            )),
            [4]
        );
        assert_eq!(
            ids(items(&mut conn, json!({"kinds": [1, 4]}), &anonymous, 100)),
            [1]
        );
        assert_eq!(
            ids(items(&mut conn, json!({"kinds": [1, 4]}), &bb, 100)),
            [1, 3]
        );
        assert_eq!(
            ids(items(
                &mut conn,
                json!({"authors": [hex::encode([0xbb; 32])]}),
                &anonymous,
                100
            )),
            [4]
        );
        // `limit` is not read: a session reconciles the whole set.
        assert_eq!(
            ids(items(&mut conn, json!({"limit": 1}), &all, 100)),
            [1, 3, 4, 5]
        );
        assert_eq!(
            ids(items(&mut conn, json!({"ids": []}), &all, 100)),
            Vec::<u8>::new()
        );
        // The records carry created_at.
        match items(&mut conn, json!({"kinds": [7]}), &all, 100) {
            NegItems::Found(found) => assert_eq!(found, [(40, [4; 32])]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_cap_stops_the_read() {
        let (_dir, mut conn) = database();
        for i in 0..10 {
            row(&conn, i, 0xaa, i64::from(i), 1, None);
        }
        let all = Readers::unrestricted();
        assert_eq!(items(&mut conn, json!({}), &all, 9), NegItems::TooMany);
        assert_eq!(ids(items(&mut conn, json!({}), &all, 10)).len(), 10);
        assert_eq!(
            items(&mut conn, json!({"kinds": [1]}), &all, 9),
            NegItems::TooMany
        );
        assert_eq!(
            ids(items(&mut conn, json!({"kinds": [1]}), &all, 10)).len(),
            10
        );
    }

    /// `{}` reads the covering index only: no table row, no sort.
    #[test]
    fn everything_is_a_covering_index_scan() {
        let (_dir, conn) = database();
        for excluding in [false, true] {
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {}", scan_sql(excluding)))
                .unwrap();
            let kinds = Rc::new(vec![SqlValue::Integer(4)]);
            let params: Vec<&dyn rusqlite::ToSql> = if excluding {
                vec![&0i64, &i64::MAX, &1i64, &kinds]
            } else {
                vec![&0i64, &i64::MAX, &1i64]
            };
            let plan: Vec<String> = stmt
                .query_map(params.as_slice(), |row| row.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let plan = plan.join("\n");
            println!("{plan}");
            assert!(plan.contains("COVERING INDEX event_created_id"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }
}
