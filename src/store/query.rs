//! Answering REQ filters from SQLite.
//!
//! Each filter is split into index ranges that each end in `created_at`:
//! one per id, per (author, kind), per author, per (tag value[, kind]), per
//! kind, or the whole time index. Every range is read newest first and stops
//! at the filter's limit, so a list of 300 authors costs 300 short index
//! seeks, never a sort of every matching row. The ranges are then merged in
//! Rust (strfry does the same with its k-way merge).
//!
//! NIP-01 breaks `created_at` ties by lowest id. The indexes order ties
//! arbitrarily, so when a range fills its limit the rows sharing the last
//! timestamp are fetched too, and the cut is made after sorting by id.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use rusqlite::types::{ToSql, Value as SqlValue};
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::sql::tag_value;
use crate::nostr::Filter;
use crate::privacy::Readers;

/// The limits a filter's `limit` is read against.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub default_limit: u64,
    pub max_limit: u64,
}

impl QueryLimits {
    /// The number of stored events a filter may return. A filter naming
    /// ids without a limit wants each of them, so only `max_limit` applies.
    pub fn effective(&self, filter: &Filter) -> u64 {
        let default = match &filter.ids {
            Some(_) => self.max_limit,
            None => self.default_limit,
        };
        filter.limit.unwrap_or(default).min(self.max_limit)
    }
}

/// The stored events that answer a REQ, newest first (ties: lowest id).
#[derive(Debug, Default)]
pub struct QueryResult {
    pub events: Vec<String>,
    /// The newest commit sequence number the query could see: live events
    /// with a higher number were committed after it. 0 when the backend
    /// has no single commit order (PostgreSQL): see `sent_ids`.
    pub snapshot: u64,
    /// The ids of `events`, from a backend without a single commit order
    /// (PostgreSQL, where several nodes commit): the subscription drops the
    /// live events among them instead of comparing sequence numbers. Empty
    /// for SQLite.
    pub sent_ids: Vec<[u8; 32]>,
}

/// One index range of a filter: the leading key values of its index.
#[derive(Debug, Clone)]
pub(super) enum RangeKey {
    Id([u8; 32]),
    AuthorKind([u8; 32], u16),
    Tag(char, String),
    Kind(u16),
}

/// Which filter fields the ranges already guarantee; the rest become SQL
/// conditions on the row.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Covered {
    pub(super) ids: bool,
    pub(super) authors: bool,
    pub(super) kinds: bool,
    /// Index into the filter's tag conditions (a filter may hold two
    /// conditions on one letter: see `privacy`).
    pub(super) tag: Option<usize>,
}

/// Splits a filter into ranges, choosing the most selective index.
pub(super) fn plan(
    conn: &Connection,
    filter: &Filter,
) -> rusqlite::Result<(Vec<RangeKey>, Covered)> {
    let mut covered = Covered::default();
    if let Some(ids) = &filter.ids {
        covered.ids = true;
        return Ok((ids.iter().map(|id| RangeKey::Id(*id)).collect(), covered));
    }
    if let Some(authors) = &filter.authors {
        covered.authors = true;
        covered.kinds = true;
        let mut ranges = Vec::new();
        for author in authors {
            // Without kinds: every kind this author has published.
            let kinds = match &filter.kinds {
                Some(kinds) => kinds.clone(),
                None => without(kinds_of_author(conn, author)?, &filter.excluded_kinds),
            };
            ranges.extend(kinds.into_iter().map(|k| RangeKey::AuthorKind(*author, k)));
        }
        return Ok((ranges, covered));
    }
    if let Some((index, condition)) = filter
        .tags
        .iter()
        .enumerate()
        .min_by_key(|(_, c)| c.values.len())
    {
        covered.tag = Some(index);
        let letter = condition.letter;
        let ranges = condition
            .values
            .iter()
            .map(|v| RangeKey::Tag(letter, v.clone()))
            .collect();
        return Ok((ranges, covered));
    }
    covered.kinds = true;
    let kinds = match &filter.kinds {
        Some(kinds) => kinds.clone(),
        // Neither ids, authors, tags nor kinds: every stored kind.
        None => without(stored_kinds(conn)?, &filter.excluded_kinds),
    };
    Ok((kinds.into_iter().map(RangeKey::Kind).collect(), covered))
}

/// `kinds` less the sorted `excluded` ones.
pub(super) fn without(mut kinds: Vec<u16>, excluded: &[u16]) -> Vec<u16> {
    kinds.retain(|k| excluded.binary_search(k).is_err());
    kinds
}

/// The distinct kinds an author has stored, one index seek per kind (a
/// skip-scan of `event_pubkey_kind_time`), so that an authors-only filter
/// needs no index of its own.
fn kinds_of_author(conn: &Connection, author: &[u8; 32]) -> rusqlite::Result<Vec<u16>> {
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE k(kind) AS (
             SELECT (SELECT kind FROM event INDEXED BY event_pubkey_kind_time
                     WHERE pubkey = ?1 ORDER BY kind LIMIT 1)
             UNION ALL
             SELECT (SELECT kind FROM event INDEXED BY event_pubkey_kind_time
                     WHERE pubkey = ?1 AND kind > k.kind ORDER BY kind LIMIT 1)
             FROM k WHERE k.kind IS NOT NULL)
         SELECT kind FROM k WHERE kind IS NOT NULL",
    )?;
    stmt.query_map([&author[..]], |row| row.get(0))?.collect()
}

/// The distinct kinds in the store, by the same skip-scan over
/// `event_kind_time`: a filter on time alone becomes one range per kind.
pub(super) fn stored_kinds(conn: &Connection) -> rusqlite::Result<Vec<u16>> {
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE k(kind) AS (
             SELECT (SELECT kind FROM event INDEXED BY event_kind_time ORDER BY kind LIMIT 1)
             UNION ALL
             SELECT (SELECT kind FROM event INDEXED BY event_kind_time
                     WHERE kind > k.kind ORDER BY kind LIMIT 1)
             FROM k WHERE k.kind IS NOT NULL)
         SELECT kind FROM k WHERE kind IS NOT NULL",
    )?;
    stmt.query_map([], |row| row.get(0))?.collect()
}

/// SQL text plus its parameters, numbered as they are pushed.
pub(super) struct Sql {
    pub(super) text: String,
    pub(super) params: Vec<Box<dyn ToSql>>,
}

impl Sql {
    pub(super) fn new() -> Sql {
        Sql {
            text: String::new(),
            params: Vec::new(),
        }
    }

    pub(super) fn param(&mut self, value: impl ToSql + 'static) -> String {
        self.params.push(Box::new(value));
        format!("?{}", self.params.len())
    }
}

/// Builds the statement for one range: `(seq, created_at)` newest first,
/// limited. Time bounds and the limit are its last three parameters so that
/// the tie query can reuse it.
fn range_sql(key: &RangeKey, filter: &Filter, covered: Covered, now: i64) -> Sql {
    range_sql_selecting(key, filter, covered, now, "", Order::NewestFirst)
}

/// Which way events are read by `created_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// NIP-01's order: newest first, ties by lowest id.
    NewestFirst,
    /// The exact reverse (`nostr-relayd export --oldest-first`).
    OldestFirst,
}

/// [`range_sql`] with `extra` columns selected after seq and created_at,
/// read in `order`.
pub(super) fn range_sql_selecting(
    key: &RangeKey,
    filter: &Filter,
    covered: Covered,
    now: i64,
    extra: &str,
    order: Order,
) -> Sql {
    let mut sql = Sql::new();
    // A tag range reads only the tag table: its rows carry kind, created_at,
    // the event's seq and expires_at. Every other range reads one index of
    // `event`, covering (each ends in expires_at; seq is the rowid).
    let (row, seq, head) = match key {
        RangeKey::Tag(..) => (
            "t",
            "event_seq",
            "SELECT t.event_seq, t.created_at FROM tag t".to_owned(),
        ),
        _ => {
            let index = match key {
                RangeKey::Id(_) => "event_id",
                RangeKey::AuthorKind(..) => "event_pubkey_kind_time",
                _ => "event_kind_time",
            };
            (
                "e",
                "seq",
                format!("SELECT e.seq, e.created_at{extra} FROM event e INDEXED BY {index}"),
            )
        }
    };
    sql.text.push_str(&head);
    sql.text.push_str(" WHERE ");
    let mut conditions: Vec<String> = Vec::new();
    match key {
        RangeKey::Id(id) => conditions.push(format!("e.id = {}", sql.param(id.to_vec()))),
        RangeKey::AuthorKind(author, kind) => {
            conditions.push(format!("e.pubkey = {}", sql.param(author.to_vec())));
            conditions.push(format!("e.kind = {}", sql.param(*kind)));
        }
        RangeKey::Kind(kind) => conditions.push(format!("e.kind = {}", sql.param(*kind))),
        RangeKey::Tag(letter, value) => {
            conditions.push(format!("t.name = {}", sql.param(letter.to_string())));
            conditions.push(format!("t.value = {}", sql.param(tag_value(value))));
        }
    }
    conditions.extend(residual_conditions(
        &mut sql, filter, covered, now, row, seq,
    ));
    sql.text.push_str(&conditions.join(" AND "));
    let limit = sql.param(0i64);
    let direction = match order {
        Order::NewestFirst => "DESC",
        Order::OldestFirst => "ASC",
    };
    sql.text.push_str(&format!(
        " ORDER BY {row}.created_at {direction} LIMIT {limit}"
    ));
    sql
}

/// The conditions a range adds to its index key: the filter's fields the
/// key does not cover (on `row`, an `event` or `tag` alias whose event
/// number is the column `seq`), expiry, and the time bounds, pushed last.
pub(super) fn residual_conditions(
    sql: &mut Sql,
    filter: &Filter,
    covered: Covered,
    now: i64,
    row: &str,
    seq: &str,
) -> Vec<String> {
    let mut conditions = Vec::new();
    // Authors are never residual in a tag range: a filter with authors is
    // driven by them.
    if let Some(authors) = filter.authors.as_ref().filter(|_| !covered.authors) {
        let list: Vec<SqlValue> = authors.iter().map(|a| SqlValue::Blob(a.to_vec())).collect();
        conditions.push(format!("e.pubkey IN rarray({})", sql.param(Rc::new(list))));
    }
    if let Some(kinds) = filter.kinds.as_ref().filter(|_| !covered.kinds) {
        let list: Vec<SqlValue> = kinds
            .iter()
            .map(|k| SqlValue::Integer(i64::from(*k)))
            .collect();
        conditions.push(format!(
            "{row}.kind IN rarray({})",
            sql.param(Rc::new(list))
        ));
    }
    if !filter.excluded_kinds.is_empty() && !covered.kinds {
        let list: Vec<SqlValue> = filter
            .excluded_kinds
            .iter()
            .map(|k| SqlValue::Integer(i64::from(*k)))
            .collect();
        conditions.push(format!(
            "{row}.kind NOT IN rarray({})",
            sql.param(Rc::new(list))
        ));
    }
    for (_, condition) in filter
        .tags
        .iter()
        .enumerate()
        .filter(|(index, _)| Some(*index) != covered.tag)
    {
        let name = sql.param(condition.letter.to_string());
        let values: Vec<SqlValue> = condition.values.iter().map(|v| tag_value(v)).collect();
        let values = sql.param(Rc::new(values));
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM tag x WHERE x.name = {name} AND x.value IN rarray({values}) \
             AND x.created_at = {row}.created_at AND x.event_seq = {row}.{seq})"
        ));
    }
    // Written as one expression so that the planner checks it on the index
    // entry instead of splitting the range into a multi-index OR.
    conditions.push(format!(
        "ifnull({row}.expires_at, 9223372036854775807) > {}",
        sql.param(now)
    ));
    let since = sql.param(filter.since.unwrap_or(0));
    let until = sql.param(filter.until.unwrap_or(i64::MAX));
    conditions.push(format!("{row}.created_at BETWEEN {since} AND {until}"));
    conditions
}

/// A row found by a range: enough to merge and cut before loading JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Candidate {
    pub(super) created_at: i64,
    pub(super) seq: i64,
}

/// Reads one range, newest first, with every row tied with the last one.
fn read_range(conn: &Connection, mut sql: Sql, limit: u64) -> rusqlite::Result<Vec<Candidate>> {
    let mut stmt = conn.prepare_cached(&sql.text)?;
    let count = sql.params.len();
    sql.params[count - 1] = Box::new(limit as i64);
    let read = |stmt: &mut rusqlite::CachedStatement<'_>, params: &[Box<dyn ToSql>]| {
        stmt.query_map(params_from_iter(params.iter()), |row| {
            Ok(Candidate {
                seq: row.get(0)?,
                created_at: row.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    };
    let mut rows = read(&mut stmt, &sql.params)?;
    if rows.len() as u64 == limit
        && let Some(last) = rows.last().copied()
    {
        // The ties at the cut: same statement, one-second window, no limit.
        sql.params[count - 3] = Box::new(last.created_at);
        sql.params[count - 2] = Box::new(last.created_at);
        sql.params[count - 1] = Box::new(-1i64);
        rows.retain(|row| row.created_at != last.created_at);
        rows.extend(read(&mut stmt, &sql.params)?);
    }
    Ok(rows)
}

/// From this many (author, kind) pairs on, a filter first tries one scan
/// per kind instead of one seek per pair.
const SCAN_FIRST_PAIRS: usize = 16;
/// Index entries the scan may read per pair it replaces. A seek costs about
/// as much as reading a dozen entries, so a scan that gives up has cost less
/// than the seeks it tried to save.
const SCAN_ROWS_PER_PAIR: usize = 8;

/// A home feed (hundreds of authors × a few kinds) as one scan of each
/// kind's range, newest first, keeping the entries whose author is wanted
/// (the kind index carries the pubkey). Follows are usually active, so the
/// newest `limit` turn up within a few hundred entries, where one seek per
/// (author, kind) would cost hundreds of statements. Gives up (`None`) when
/// the scan exceeds its budget; the caller then seeks as usual.
fn scan_for_authors(
    conn: &Connection,
    filter: &Filter,
    limit: u64,
    now: i64,
) -> rusqlite::Result<Option<Vec<Candidate>>> {
    let (Some(authors), Some(kinds), None) = (&filter.authors, &filter.kinds, &filter.ids) else {
        return Ok(None);
    };
    let pairs = authors.len() * kinds.len();
    if pairs < SCAN_FIRST_PAIRS {
        return Ok(None);
    }
    let mut budget = pairs * SCAN_ROWS_PER_PAIR;
    let covered = Covered {
        ids: true,
        authors: true,
        kinds: true,
        tag: None,
    };
    let mut found = Vec::new();
    for kind in kinds {
        let mut sql = range_sql_selecting(
            &RangeKey::Kind(*kind),
            filter,
            covered,
            now,
            ", e.pubkey",
            Order::NewestFirst,
        );
        let count = sql.params.len();
        sql.params[count - 1] = Box::new(-1i64);
        let mut stmt = conn.prepare_cached(&sql.text)?;
        let mut rows = stmt.query(params_from_iter(sql.params.iter()))?;
        let mut matched: u64 = 0;
        let mut cut_at: Option<i64> = None;
        while let Some(row) = rows.next()? {
            if budget == 0 {
                return Ok(None);
            }
            budget -= 1;
            let created_at: i64 = row.get(1)?;
            if cut_at.is_some_and(|cut| created_at < cut) {
                break; // past the ties at the cut
            }
            let wanted = match row.get_ref(2)?.as_blob() {
                Ok(pubkey) => authors.binary_search_by(|a| a[..].cmp(pubkey)).is_ok(),
                Err(_) => false,
            };
            if wanted {
                found.push(Candidate {
                    seq: row.get(0)?,
                    created_at,
                });
                matched += 1;
                if matched == limit {
                    cut_at = Some(created_at);
                }
            }
        }
    }
    Ok(Some(found))
}

/// The candidates of one filter: its newest `limit`, plus ties at the cut.
fn filter_candidates(
    conn: &Connection,
    filter: &Filter,
    limit: u64,
    now: i64,
) -> rusqlite::Result<Vec<Candidate>> {
    let mut found: Vec<Candidate> = match scan_for_authors(conn, filter, limit, now)? {
        Some(found) => found,
        None => {
            let (ranges, covered) = plan(conn, filter)?;
            let mut found: HashSet<Candidate> = HashSet::new();
            for key in &ranges {
                found.extend(read_range(
                    conn,
                    range_sql(key, filter, covered, now),
                    limit,
                )?);
            }
            found.into_iter().collect()
        }
    };
    found.sort_unstable_by_key(|c| std::cmp::Reverse(c.created_at));
    if let Some(cut) = usize::try_from(limit)
        .ok()
        .and_then(|l| found.get(l.checked_sub(1)?))
        .copied()
    {
        found.retain(|c| c.created_at >= cut.created_at);
    }
    Ok(found)
}

/// Answers a REQ's filters: each filter's newest `limit` events, united
/// without duplicates, newest first, ties by lowest id.
pub fn run(
    conn: &mut Connection,
    filters: &[Filter],
    readers: &Readers,
    limits: QueryLimits,
    now: i64,
    deadline: Instant,
) -> rusqlite::Result<QueryResult> {
    conn.progress_handler(1000, Some(move || Instant::now() > deadline))?;
    let result = run_in_snapshot(&*conn, filters, readers, limits, now);
    let cleared = conn.progress_handler(0, None::<fn() -> bool>);
    let result = result?;
    cleared?;
    Ok(result)
}

fn run_in_snapshot(
    conn: &Connection,
    filters: &[Filter],
    readers: &Readers,
    limits: QueryLimits,
    now: i64,
) -> rusqlite::Result<QueryResult> {
    // One read transaction: the snapshot number and the rows come from the
    // same database state. It spans this one REQ only, so it never starves
    // WAL checkpoints.
    let tx = conn.unchecked_transaction()?;
    let snapshot: i64 = tx.query_row(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'event'), 0)",
        [],
        |row| row.get(0),
    )?;
    let mut per_filter = Vec::with_capacity(filters.len());
    // NIP-50: each search filter's events, best first (store/search.rs).
    let mut ranked: Vec<Vec<Candidate>> = Vec::new();
    for filter in filters {
        let limit = limits.effective(filter);
        if limit == 0 || filter.is_unsatisfiable() {
            continue;
        }
        let unranked;
        let filter = match super::search::answer(&tx, filter, readers, limit, now)? {
            super::search::Answer::NotSearch => filter,
            super::search::Answer::Ranked(found) => {
                ranked.push(found);
                continue;
            }
            super::search::Answer::Unranked(plain) => {
                unranked = plain;
                &unranked
            }
        };
        // What this reader may see of the filter, as one or more filters
        // whose union is cut to the filter's limit below.
        let mut candidates: HashSet<Candidate> = HashSet::new();
        for part in readers.restrict(filter) {
            if !part.is_unsatisfiable() {
                candidates.extend(filter_candidates(&tx, &part, limit, now)?);
            }
        }
        per_filter.push((limit, candidates.into_iter().collect::<Vec<_>>()));
    }
    let mut rows: HashMap<i64, (Vec<u8>, String)> = HashMap::new();
    {
        let mut load = tx.prepare_cached("SELECT id, json FROM event WHERE seq = ?1")?;
        for candidate in per_filter
            .iter()
            .flat_map(|(_, c)| c)
            .chain(ranked.iter().flatten())
        {
            if let std::collections::hash_map::Entry::Vacant(slot) = rows.entry(candidate.seq) {
                let row = load
                    .query_row([candidate.seq], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                // Always present: candidates come from this same snapshot.
                // Should a tag row ever outlive its event, it is skipped.
                if let Some(row) = row {
                    slot.insert(row);
                }
            }
        }
    }
    tx.finish()?;
    let order = |a: &Candidate, b: &Candidate| {
        let id = |c: &Candidate| rows.get(&c.seq).map(|(id, _)| id);
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| id(a).cmp(&id(b)))
    };
    let mut chosen: HashSet<Candidate> = HashSet::new();
    for (limit, mut candidates) in per_filter {
        candidates.sort_unstable_by(order);
        candidates.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        chosen.extend(candidates);
    }
    let mut chosen: Vec<Candidate> = chosen.into_iter().collect();
    chosen.sort_unstable_by(order);
    // Search results first, each filter's best first, then the others
    // newest first; an event two filters found is sent once, at its first
    // place.
    let mut sent: HashSet<i64> = HashSet::new();
    let events = ranked
        .iter()
        .flatten()
        .chain(&chosen)
        .filter(|c| sent.insert(c.seq))
        .filter_map(|c| rows.get(&c.seq).map(|(_, json)| json.clone()))
        .collect();
    Ok(QueryResult {
        events,
        snapshot: u64::try_from(snapshot).unwrap_or(0),
        sent_ids: Vec::new(),
    })
}

/// Every row `filter` matches, as `(seq, created_at)`, read range by range
/// through the same plan as a REQ but without a limit (`limit` is not
/// read): NIP-77 reconciles a filter's whole set. `visit` returns false to
/// stop. A row can be visited twice (an event with two of a tag's values),
/// so callers dedup by seq.
pub(crate) fn each_match(
    conn: &Connection,
    filter: &Filter,
    now: i64,
    mut visit: impl FnMut(i64, i64) -> bool,
) -> rusqlite::Result<()> {
    if filter.is_unsatisfiable() {
        return Ok(());
    }
    let (ranges, covered) = plan(conn, filter)?;
    for key in &ranges {
        let mut sql = range_sql(key, filter, covered, now);
        let count = sql.params.len();
        sql.params[count - 1] = Box::new(-1i64); // LIMIT -1: no limit
        let mut stmt = conn.prepare_cached(&sql.text)?;
        let mut rows = stmt.query(params_from_iter(sql.params.iter()))?;
        while let Some(row) = rows.next()? {
            if !visit(row.get(0)?, row.get(1)?) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// `EXPLAIN QUERY PLAN` of every range statement a filter would run, for
/// tests and for operators investigating a slow query.
pub fn explain(conn: &Connection, filter: &Filter, now: i64) -> rusqlite::Result<Vec<String>> {
    let (ranges, covered) = plan(conn, filter)?;
    let mut plans = Vec::new();
    if let Some(key) = ranges.first() {
        let sql = range_sql(key, filter, covered, now);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text))?;
        let rows = stmt.query_map(params_from_iter(sql.params.iter()), |row| {
            row.get::<_, String>(3)
        })?;
        for row in rows {
            plans.push(row?);
        }
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use serde_json::json;

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.sqlite");
        let mut conn = super::super::open_connection(&path, Durability::Normal, false).unwrap();
        super::super::schema::migrate(&mut conn, &path).unwrap();
        // One event, so that the kinds of author "a…a" and of the store
        // (enumerated for authors-only and kind-less filters) are not empty.
        conn.execute(
            "INSERT INTO event (id, pubkey, created_at, kind, json) VALUES (?1, ?2, 1, 1, '{}')",
            rusqlite::params![vec![0u8; 32], vec![0xaa_u8; 32]],
        )
        .unwrap();
        (dir, conn)
    }

    fn plan_of(conn: &Connection, filter: serde_json::Value) -> Vec<String> {
        explain(conn, &Filter::from_value(&filter).unwrap(), 1_700_000_000).unwrap()
    }

    #[test]
    fn an_ids_filter_without_limit_is_not_cut_to_the_default() {
        let limits = QueryLimits {
            default_limit: 2,
            max_limit: 5,
        };
        let ids = Filter::from_value(&json!({"ids": ["a".repeat(64)]})).unwrap();
        assert_eq!(limits.effective(&ids), 5);
        let kinds = Filter::from_value(&json!({"kinds": [1]})).unwrap();
        assert_eq!(limits.effective(&kinds), 2);
        let explicit = Filter::from_value(&json!({"kinds": [1], "limit": 9})).unwrap();
        assert_eq!(limits.effective(&explicit), 5);
    }

    /// DESIGN.md: every common filter shape is an index range scan that ends
    /// in `created_at DESC`: no full table scan, no temp B-tree for ORDER BY.
    #[test]
    fn common_filter_shapes_use_index_ranges() {
        let (_dir, conn) = database();
        let hex = |c: &str| c.repeat(64);
        let shapes = [
            ("ids", json!({"ids": [hex("a"), hex("b")]}), "event_id"),
            (
                "authors+kinds",
                json!({"authors": [hex("a"), hex("b")], "kinds": [1, 6], "limit": 50}),
                "event_pubkey_kind_time",
            ),
            (
                "authors",
                json!({"authors": [hex("a")]}),
                "event_pubkey_kind_time",
            ),
            (
                "kinds",
                json!({"kinds": [1], "limit": 100}),
                "event_kind_time",
            ),
            (
                "#e",
                json!({"#e": [hex("c")]}),
                "SEARCH t USING PRIMARY KEY",
            ),
            (
                "#p+kinds",
                json!({"#p": [hex("d")], "kinds": [1, 6, 7, 9735], "limit": 100}),
                "SEARCH t USING PRIMARY KEY",
            ),
            (
                "#t+authors residual",
                json!({"authors": [hex("a")], "#t": ["nostr"]}),
                "event_pubkey_kind_time",
            ),
            (
                "time range",
                json!({"since": 1, "until": 2}),
                "event_kind_time",
            ),
            ("everything", json!({"limit": 10}), "event_kind_time"),
        ];
        for (name, filter, index) in shapes {
            let plan = plan_of(&conn, filter);
            let text = plan.join("\n");
            println!("{name}:\n  {}", plan.join("\n  "));
            assert!(
                text.contains(index),
                "{name}: expected index {index}, plan:\n{text}"
            );
            assert!(
                !text.contains("TEMP B-TREE"),
                "{name}: sorts in a temp B-tree:\n{text}"
            );
            for line in &plan {
                let full_scan =
                    line.starts_with("SCAN") && !line.contains("USING") && !line.contains("rarray");
                assert!(!full_scan, "{name}: full table scan:\n{text}");
            }
        }
    }
}
