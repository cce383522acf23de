//! Answering COUNT (NIP-45) in SQLite: the number of events an unlimited
//! REQ with the same filters would return to the same reader, and for an
//! eligible COUNT the HyperLogLog registers of their pubkeys, both computed
//! by one statement. No event row leaves SQLite.
//!
//! Each filter is first split by [`Readers::restrict`] (private kinds), as
//! for a REQ. Each part becomes one `SELECT seq` over the index a REQ would
//! read, driven by the same field (ids > authors > the tag condition with
//! fewest values > kinds, enumerated when absent), with the field's values
//! as one `IN rarray(?)` list instead of one statement per value, and the
//! same residual conditions as a REQ's ranges (`query::residual_conditions`:
//! other fields, expiry, time bounds). The parts are united and counted
//! without duplicates: an event matched by two filters, two parts or two
//! tag values counts once. `limit` plays no part.

use std::rc::Rc;
use std::time::Instant;

use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, params_from_iter};

use super::query::{Covered, Sql, residual_conditions, stored_kinds, without};
use super::sql::tag_value;
use crate::nostr::Filter;
use crate::nostr::nip45::Registers;
use crate::privacy::Readers;

/// The answer to a COUNT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountResult {
    pub count: u64,
    /// NIP-45 HyperLogLog registers, when they were asked for.
    pub hll: Option<Registers>,
}

/// At most this many SELECTs in one compound SELECT (SQLite's default
/// limit is 500); longer unions are nested.
const MAX_ARMS: usize = 400;

/// One SELECT of the union: its text, and whether it can return an event
/// twice (a tag range over several values).
struct Arm {
    text: String,
    unique: bool,
}

/// Counts what `filters` match for `readers`, within `deadline` (SQLite's
/// progress handler interrupts the statement past it). With `hll_offset`,
/// also the HyperLogLog registers of the matching events' pubkeys.
pub fn run(
    conn: &mut Connection,
    filters: &[Filter],
    readers: &Readers,
    hll_offset: Option<u8>,
    now: i64,
    deadline: Instant,
) -> rusqlite::Result<CountResult> {
    conn.progress_handler(1000, Some(move || Instant::now() > deadline))?;
    let result = count_in_snapshot(&*conn, filters, readers, hll_offset, now);
    let cleared = conn.progress_handler(0, None::<fn() -> bool>);
    let result = result?;
    cleared?;
    Ok(result)
}

fn count_in_snapshot(
    conn: &Connection,
    filters: &[Filter],
    readers: &Readers,
    hll_offset: Option<u8>,
    now: i64,
) -> rusqlite::Result<CountResult> {
    // One read transaction: the enumerated kinds and the count see the
    // same database state.
    if filters.iter().any(|f| f.search.is_some()) {
        // Counted here, `search` would be ignored: refuse rather than
        // count too much (a NIP-50 arm over `event_search` would go here).
        return Err(rusqlite::Error::UserFunctionError(
            "COUNT does not take NIP-50 search filters".into(),
        ));
    }
    let tx = conn.unchecked_transaction()?;
    let mut sql = Sql::new();
    let mut arms = Vec::new();
    for filter in filters.iter().filter(|f| !f.is_unsatisfiable()) {
        for part in readers.restrict(filter) {
            if !part.is_unsatisfiable() {
                arms.push(arm(&tx, &part, now, &mut sql)?);
            }
        }
    }
    let result = if arms.is_empty() {
        CountResult {
            count: 0,
            hll: hll_offset.map(|_| Registers::default()),
        }
    } else {
        let seqs = union_all(&arms.iter().map(|a| a.text.as_str()).collect::<Vec<_>>());
        match hll_offset {
            None => {
                sql.text = match arms.as_slice() {
                    [only] if only.unique => format!("SELECT count(*) FROM ({seqs})"),
                    _ => format!("SELECT count(DISTINCT seq) FROM ({seqs})"),
                };
                let mut stmt = tx.prepare_cached(&sql.text)?;
                let count: i64 =
                    stmt.query_row(params_from_iter(sql.params.iter()), |row| row.get(0))?;
                CountResult {
                    count: u64::try_from(count).unwrap_or(0),
                    hll: None,
                }
            }
            Some(offset) => {
                // A tag row has no pubkey: the events are read by seq (the
                // rowid), each once (IN removes duplicates).
                let offset = sql.param(i64::from(offset));
                sql.text = format!(
                    "SELECT count(*), hll_registers(e.pubkey, {offset}) FROM event e \
                     WHERE e.seq IN (SELECT seq FROM ({seqs}))"
                );
                let mut stmt = tx.prepare_cached(&sql.text)?;
                let (count, registers): (i64, Vec<u8>) = stmt
                    .query_row(params_from_iter(sql.params.iter()), |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?;
                let mut hll = Registers::default();
                if registers.len() == hll.0.len() {
                    hll.0.copy_from_slice(&registers);
                }
                CountResult {
                    count: u64::try_from(count).unwrap_or(0),
                    hll: Some(hll),
                }
            }
        }
    };
    tx.finish()?;
    Ok(result)
}

/// `SELECT … AS seq` for every event one (restricted) filter matches,
/// through the index a REQ would read for it.
fn arm(conn: &Connection, filter: &Filter, now: i64, sql: &mut Sql) -> rusqlite::Result<Arm> {
    let mut covered = Covered::default();
    let list = |values: Vec<SqlValue>| Rc::new(values);
    let blobs = |keys: &[[u8; 32]]| list(keys.iter().map(|k| SqlValue::Blob(k.to_vec())).collect());
    let integers = |kinds: &[u16]| {
        list(
            kinds
                .iter()
                .map(|k| SqlValue::Integer(i64::from(*k)))
                .collect(),
        )
    };
    let (head, key, row, seq, unique) = if let Some(ids) = &filter.ids {
        covered.ids = true;
        let key = format!("e.id IN rarray({})", sql.param(blobs(ids)));
        (
            "e.seq FROM event e INDEXED BY event_id",
            key,
            "e",
            "seq",
            true,
        )
    } else if let Some(authors) = &filter.authors {
        // kinds (or the excluded kinds) stay residual: `kind IN rarray`
        // right after `pubkey IN rarray` is still a seek of the index.
        covered.authors = true;
        let key = format!("e.pubkey IN rarray({})", sql.param(blobs(authors)));
        let head = "e.seq FROM event e INDEXED BY event_pubkey_kind_time";
        (head, key, "e", "seq", true)
    } else if let Some((index, condition)) = filter
        .tags
        .iter()
        .enumerate()
        .min_by_key(|(_, c)| c.values.len())
    {
        covered.tag = Some(index);
        let values: Vec<SqlValue> = condition.values.iter().map(|v| tag_value(v)).collect();
        let key = format!(
            "t.name = {} AND t.value IN rarray({})",
            sql.param(condition.letter.to_string()),
            sql.param(list(values))
        );
        let unique = condition.values.len() == 1;
        (
            "t.event_seq AS seq FROM tag t",
            key,
            "t",
            "event_seq",
            unique,
        )
    } else {
        covered.kinds = true;
        let kinds = match &filter.kinds {
            Some(kinds) => kinds.clone(),
            None => without(stored_kinds(conn)?, &filter.excluded_kinds),
        };
        let key = format!("e.kind IN rarray({})", sql.param(integers(&kinds)));
        (
            "e.seq FROM event e INDEXED BY event_kind_time",
            key,
            "e",
            "seq",
            true,
        )
    };
    let mut conditions = vec![key];
    conditions.extend(residual_conditions(sql, filter, covered, now, row, seq));
    Ok(Arm {
        text: format!("SELECT {head} WHERE {}", conditions.join(" AND ")),
        unique,
    })
}

/// The arms as one compound SELECT of a `seq` column, nested so that no
/// compound has more than [`MAX_ARMS`] parts.
fn union_all(arms: &[&str]) -> String {
    if arms.len() <= MAX_ARMS {
        return arms.join(" UNION ALL ");
    }
    let nested: Vec<String> = arms
        .chunks(MAX_ARMS)
        .map(|chunk| format!("SELECT seq FROM ({})", union_all(chunk)))
        .collect();
    union_all(&nested.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Registers `hll_registers(pubkey, offset)`, the NIP-45 HyperLogLog of
/// the pubkeys of a group of rows as a 256-byte blob, on a connection.
pub fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_aggregate_function(
        "hll_registers",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        HllRegisters,
    )
}

struct HllRegisters;

impl Aggregate<Registers, Vec<u8>> for HllRegisters {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Registers> {
        Ok(Registers::default())
    }

    fn step(&self, ctx: &mut Context<'_>, registers: &mut Registers) -> rusqlite::Result<()> {
        let offset = ctx.get::<i64>(1)?;
        let offset = u8::try_from(offset)
            .ok()
            .filter(|o| *o <= 30)
            .ok_or_else(|| {
                rusqlite::Error::UserFunctionError(
                    format!("hll_registers: offset {offset} is not in 0..=30").into(),
                )
            })?;
        // Every stored pubkey is a 32-byte blob; anything else is no pubkey.
        if let ValueRef::Blob(pubkey) = ctx.get_raw(0)
            && let Ok(pubkey) = <&[u8; 32]>::try_from(pubkey)
        {
            registers.add(offset, pubkey);
        }
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        registers: Option<Registers>,
    ) -> rusqlite::Result<Vec<u8>> {
        Ok(registers.unwrap_or_default().0.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use serde_json::json;

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("count.sqlite");
        let mut conn = super::super::open_connection(&path, Durability::Normal, false).unwrap();
        super::super::schema::migrate(&mut conn, &path).unwrap();
        (dir, conn)
    }

    fn filter(value: serde_json::Value) -> Filter {
        Filter::from_value(&value).unwrap()
    }

    #[test]
    fn the_aggregate_is_the_nips_algorithm() {
        let (_dir, conn) = database();
        let mut pubkey = [0x80u8; 32];
        pubkey[9] = 3;
        pubkey[10] = 0b0000_0100; // five zero bits + 1
        let registers: Vec<u8> = conn
            .query_row(
                "SELECT hll_registers(p, 9) FROM (SELECT ?1 AS p UNION ALL SELECT x'00')",
                [pubkey.to_vec()],
                |row| row.get(0),
            )
            .unwrap();
        let mut expected = Registers::default();
        expected.add(9, &pubkey);
        assert_eq!(registers, expected.0.to_vec());
        assert_eq!(registers[3], 6);
        assert_eq!(registers.iter().filter(|r| **r != 0).count(), 1);
        // No rows: 256 zero registers.
        let empty: Vec<u8> = conn
            .query_row(
                "SELECT hll_registers(pubkey, 8) FROM event WHERE 0",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(empty, vec![0; 256]);
        assert!(
            conn.query_row("SELECT hll_registers(x'00', 31)", [], |row| row
                .get::<_, Vec<u8>>(0))
                .is_err()
        );
    }

    #[test]
    fn many_parts_nest_their_unions() {
        let (_dir, conn) = database();
        conn.execute(
            "INSERT INTO event (id, pubkey, created_at, kind, json) VALUES (?1, ?2, 5, 1, '{}')",
            rusqlite::params![vec![1u8; 32], vec![2u8; 32]],
        )
        .unwrap();
        // 1,200 filters, each its own arm, all matching the one event.
        let filters: Vec<Filter> = (0..1200)
            .map(|i| filter(json!({"kinds": [1], "since": i % 5})))
            .collect();
        let mut conn = conn;
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let result = run(
            &mut conn,
            &filters,
            &Readers::unrestricted(),
            Some(8),
            1_700_000_000,
            deadline,
        )
        .unwrap();
        assert_eq!(result.count, 1);
        assert_eq!(result.hll.unwrap().0.iter().filter(|r| **r != 0).count(), 1);
    }

    /// Each arm reads an index, never the table, and never sorts.
    #[test]
    fn arms_are_index_ranges() {
        let (_dir, conn) = database();
        conn.execute(
            "INSERT INTO event (id, pubkey, created_at, kind, json) VALUES (?1, ?2, 1, 1, '{}')",
            rusqlite::params![vec![0u8; 32], vec![0xaa_u8; 32]],
        )
        .unwrap();
        let hex = |c: &str| c.repeat(64);
        let shapes = [
            (json!({"ids": [hex("a"), hex("b")]}), "event_id (id=?)"),
            (
                json!({"authors": [hex("a"), hex("b")], "kinds": [1, 6]}),
                "event_pubkey_kind_time (pubkey=? AND kind=?",
            ),
            (
                json!({"authors": [hex("a")]}),
                "event_pubkey_kind_time (pubkey=?",
            ),
            (
                json!({"#p": [hex("d")], "kinds": [3]}),
                "PRIMARY KEY (name=? AND value=?",
            ),
            (
                json!({"#e": [hex("c"), hex("d")], "kinds": [7]}),
                "PRIMARY KEY (name=? AND value=?",
            ),
            (json!({"kinds": [1]}), "event_kind_time (kind=?"),
            (json!({"since": 5}), "event_kind_time (kind=?"),
        ];
        for (value, expected) in shapes {
            let mut sql = Sql::new();
            let arm = arm(&conn, &filter(value.clone()), 1_700_000_000, &mut sql).unwrap();
            let mut stmt = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {}", arm.text))
                .unwrap();
            let plan: Vec<String> = stmt
                .query_map(params_from_iter(sql.params.iter()), |row| row.get(3))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            let text = plan.join("\n");
            assert!(text.contains(expected), "{value}: {text}");
            assert!(!text.contains("TEMP B-TREE"), "{value}: {text}");
        }
    }
}
