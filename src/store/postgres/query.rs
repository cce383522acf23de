//! Answering REQ filters from PostgreSQL, with the SQLite backend's
//! semantics (`store/query.rs`): NIP-01 order (newest first, ties by lowest
//! id), each filter cut to its own limit, the filters united without
//! duplicates, expired events never served, private kinds only for the
//! readers `privacy::Readers` allows.
//!
//! Each filter is split by [`Readers::restrict`]; each part is driven by its
//! most selective field, as in SQLite: ids > authors (× kinds) > the tag
//! condition with fewest values > kinds > the time index. A list of values
//! becomes `unnest($n)` joined `LATERAL` to one index range per value, read
//! newest first with its own `LIMIT`: every range ends in `created_at DESC,
//! id` (the indexes carry the id, so ties need no second query), and only
//! the ranges' first `limit` rows are merged and cut by `ORDER BY … LIMIT`.
//! A home feed (≥ 16 author × kind pairs) first scans each kind's range for
//! its authors within a budget, as SQLite does, and seeks pair by pair only
//! the kinds whose scan gave up ([`feed_sql`]).
//! A whole REQ is one statement (one snapshot); the JSON of the survivors is
//! joined last. A `search` filter is one statement of its own
//! (`postgres/search.rs`), its events sent first, best first.

use std::collections::HashSet;

use tokio_postgres::types::ToSql;

use super::PgStore;
use crate::nostr::Filter;
use crate::privacy::Readers;
use crate::store::query::Order;
use crate::store::{QueryLimits, QueryResult, StoreError, unix_now};

/// SQL text plus its parameters, numbered as they are pushed.
pub(super) struct Sql {
    pub(super) text: String,
    pub(super) params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    pub(super) fn new() -> Sql {
        Sql {
            text: String::new(),
            params: Vec::new(),
        }
    }

    /// Adds a parameter; returns its placeholder (`$n`).
    pub(super) fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// The parameters as tokio-postgres takes them.
    pub(super) fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// How the ranges of a part are read.
#[derive(Debug, Clone)]
pub(super) struct Reading {
    /// `Some(n)`: each range in `order`, at most `n` rows (a REQ, a page of
    /// an export). `None`: every match, in no order (COUNT, NIP-77).
    pub(super) limit: Option<i64>,
    pub(super) order: Order,
    /// Keyset: only rows after this `(created_at, id)` in `order`.
    pub(super) after: Option<(i64, Vec<u8>)>,
}

impl Reading {
    pub(super) fn newest(limit: i64) -> Reading {
        Reading {
            limit: Some(limit),
            order: Order::NewestFirst,
            after: None,
        }
    }

    pub(super) fn all() -> Reading {
        Reading {
            limit: None,
            order: Order::NewestFirst,
            after: None,
        }
    }
}

/// `ORDER BY` for `order`, on a time column and `e.id`.
pub(super) fn order_by(time: &str, id: &str, order: Order) -> String {
    match order {
        Order::NewestFirst => format!("{time} DESC, {id}"),
        Order::OldestFirst => format!("{time}, {id} DESC"),
    }
}

/// Which filter fields the part's driving ranges already guarantee.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Covered {
    pub(super) ids: bool,
    pub(super) authors: bool,
    pub(super) kinds: bool,
    /// Index into the filter's tag conditions.
    pub(super) tag: Option<usize>,
}

/// The `kinds` of a filter as the `integer` the column holds.
fn kinds_param(kinds: &[u16]) -> Vec<i32> {
    kinds.iter().map(|k| i32::from(*k)).collect()
}

fn keys_param(keys: &[[u8; 32]]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| k.to_vec()).collect()
}

/// `SELECT seq, created_at, id, pubkey` of every event one restricted
/// filter part matches (without `search`), through the ranges of its
/// driving field, read as `reading` says.
pub(super) fn part_sql(sql: &mut Sql, part: &Filter, now: i64, reading: &Reading) -> String {
    if let Some(feed) = feed_sql(sql, part, now, reading) {
        return feed;
    }
    let mut covered = Covered::default();
    // (the unnest list joined LATERAL, the FROM of the range, its key)
    let (unnest, from, mut conditions, time): (Option<String>, &str, Vec<String>, &str) =
        if let Some(ids) = &part.ids {
            covered.ids = true;
            let ids = sql.param(keys_param(ids));
            (
                None,
                "event e",
                vec![format!("e.id = ANY({ids}::bytea[])")],
                "e.created_at",
            )
        } else if let Some(authors) = &part.authors {
            covered.authors = true;
            let authors = sql.param(keys_param(authors));
            match &part.kinds {
                // One range of event_pubkey_kind_time per (author, kind).
                Some(kinds) => {
                    covered.kinds = true;
                    let kinds = sql.param(kinds_param(kinds));
                    (
                        Some(format!(
                            "unnest({authors}::bytea[]) a(pubkey) \
                             CROSS JOIN unnest({kinds}::int4[]) k(kind)"
                        )),
                        "event e",
                        vec![
                            "e.pubkey = a.pubkey".to_owned(),
                            "e.kind = k.kind".to_owned(),
                        ],
                        "e.created_at",
                    )
                }
                // One range of event_pubkey_time per author.
                None => (
                    Some(format!("unnest({authors}::bytea[]) a(pubkey)")),
                    "event e",
                    vec!["e.pubkey = a.pubkey".to_owned()],
                    "e.created_at",
                ),
            }
        } else if let Some((index, condition)) = part
            .tags
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.values.len())
        {
            // One range of the tag primary key per value; the event is
            // joined by seq for its id, expiry and other fields.
            covered.tag = Some(index);
            let name = sql.param(condition.letter.to_string());
            let values: Vec<Vec<u8>> = condition
                .values
                .iter()
                .map(|v| super::tag_bytes(v))
                .collect();
            let values = sql.param(values);
            (
                Some(format!("unnest({values}::bytea[]) v(value)")),
                "tag t JOIN event e ON e.seq = t.event_seq",
                vec![format!("t.name = {name}"), "t.value = v.value".to_owned()],
                "t.created_at",
            )
        } else if let Some(kinds) = &part.kinds {
            // One range of event_kind_time per kind.
            covered.kinds = true;
            let kinds = sql.param(kinds_param(kinds));
            (
                Some(format!("unnest({kinds}::int4[]) k(kind)")),
                "event e",
                vec!["e.kind = k.kind".to_owned()],
                "e.created_at",
            )
        } else {
            // The time index, excluded kinds as a condition.
            (None, "event e", Vec::new(), "e.created_at")
        };
    let row = if covered.tag.is_some() { "t" } else { "e" };
    conditions.extend(residual_conditions(sql, part, covered, now, row, time));
    if let Some((created_at, id)) = &reading.after {
        let created_at = sql.param(*created_at);
        let id = sql.param(id.clone());
        let (before, after) = match reading.order {
            Order::NewestFirst => ("<", ">"),
            Order::OldestFirst => (">", "<"),
        };
        conditions.push(format!("{time} {before}= {created_at}"));
        conditions.push(format!(
            "({time} {before} {created_at} OR e.id {after} {id})"
        ));
    }
    let mut range = format!(
        "SELECT e.seq, e.created_at, e.id, e.pubkey FROM {from} WHERE {}",
        conditions.join(" AND ")
    );
    if let Some(limit) = reading.limit {
        let limit = sql.param(limit);
        range.push_str(&format!(
            " ORDER BY {} LIMIT {limit}",
            order_by(time, "e.id", reading.order)
        ));
    }
    match unnest {
        Some(unnest) => format!(
            "SELECT r.seq, r.created_at, r.id, r.pubkey FROM {unnest} CROSS JOIN LATERAL ({range}) r"
        ),
        None => range,
    }
}

/// From this many (author, kind) pairs on, a filter first scans each kind's
/// range instead of seeking each pair (SQLite's `SCAN_FIRST_PAIRS`).
const SCAN_FIRST_PAIRS: usize = 16;
/// Index entries a kind's scan may read per author it replaces a seek for
/// (SQLite's `SCAN_ROWS_PER_PAIR`): a scan that gives up has cost less than
/// the seeks it tried to save.
const SCAN_ROWS_PER_PAIR: usize = 8;

/// A home feed (hundreds of authors × a few kinds) as SQLite answers it
/// (`store/query.rs` `scan_for_authors`), in one statement: each kind's
/// range of `event_kind_time` (which carries pubkey, expiry and seq: an
/// index-only scan) read newest first, keeping the rows of the wanted
/// authors, stopping at the limit or after `authors × SCAN_ROWS_PER_PAIR`
/// rows. Follows are usually active, so the limit turns up within a few
/// hundred entries where one seek per pair would cost hundreds of index
/// descents. Only the kinds whose scan ran out of budget short of the
/// limit are then sought pair by pair, as [`part_sql`] does (a pseudo-row
/// numbered `budget` marks a scan that read its whole budget). `None`: not
/// such a filter, or not a newest-first read with a limit.
fn feed_sql(sql: &mut Sql, part: &Filter, now: i64, reading: &Reading) -> Option<String> {
    let (None, Some(authors), Some(kinds), Some(limit), Order::NewestFirst, None) = (
        &part.ids,
        &part.authors,
        &part.kinds,
        reading.limit,
        reading.order,
        &reading.after,
    ) else {
        return None;
    };
    // Each kind once: the count of its wanted rows decides the fallback.
    let mut kinds = kinds.clone();
    kinds.sort_unstable();
    kinds.dedup();
    if authors.len() * kinds.len() < SCAN_FIRST_PAIRS {
        return None;
    }
    let budget = i64::try_from(authors.len() * SCAN_ROWS_PER_PAIR).unwrap_or(i64::MAX);
    let covered = Covered {
        authors: true,
        kinds: true,
        ..Covered::default()
    };
    // On alias `e` in both the scan and the seeks: written once.
    let conditions =
        residual_conditions(sql, part, covered, now, "e", "e.created_at").join(" AND ");
    let authors = sql.param(keys_param(authors));
    let kinds = sql.param(kinds_param(&kinds));
    let budget = sql.param(budget);
    let limit = sql.param(limit);
    Some(format!(
        "WITH scan AS MATERIALIZED (\
             SELECT k.kind, s.seq, s.created_at, s.id, s.pubkey, s.wanted, s.n \
             FROM unnest({kinds}::int4[]) k(kind) CROSS JOIN LATERAL (\
                 SELECT w.seq, w.created_at, w.id, w.pubkey, w.wanted, w.n FROM (\
                     SELECT r.seq, r.created_at, r.id, r.pubkey, \
                            r.pubkey = ANY({authors}::bytea[]) AS wanted, \
                            row_number() OVER (ORDER BY r.created_at DESC, r.id) AS n \
                     FROM (SELECT e.seq, e.created_at, e.id, e.pubkey FROM event e \
                           WHERE e.kind = k.kind AND {conditions} \
                           ORDER BY e.created_at DESC, e.id LIMIT {budget}) r) w \
                 WHERE w.wanted OR w.n = {budget} LIMIT {limit}) s) \
         SELECT s.seq, s.created_at, s.id, s.pubkey FROM scan s WHERE s.wanted \
         UNION ALL \
         SELECT r.seq, r.created_at, r.id, r.pubkey \
         FROM (SELECT x.kind FROM scan x GROUP BY x.kind \
               HAVING bool_or(x.n = {budget}) AND count(*) FILTER (WHERE x.wanted) < {limit}) k \
         CROSS JOIN unnest({authors}::bytea[]) a(pubkey) \
         CROSS JOIN LATERAL (SELECT e.seq, e.created_at, e.id, e.pubkey FROM event e \
             WHERE e.pubkey = a.pubkey AND e.kind = k.kind AND {conditions} \
             ORDER BY e.created_at DESC, e.id LIMIT {limit}) r"
    ))
}

/// The conditions a range adds to its key: the filter's fields the key
/// does not cover, expiry, and the time bounds. `row` is the alias whose
/// `kind` column is read (`t` for a tag range, else `e`), `time` the
/// `created_at` column the range is ordered by.
pub(super) fn residual_conditions(
    sql: &mut Sql,
    filter: &Filter,
    covered: Covered,
    now: i64,
    row: &str,
    time: &str,
) -> Vec<String> {
    let mut conditions = Vec::new();
    if let Some(ids) = filter.ids.as_ref().filter(|_| !covered.ids) {
        let ids = sql.param(keys_param(ids));
        conditions.push(format!("e.id = ANY({ids}::bytea[])"));
    }
    if let Some(authors) = filter.authors.as_ref().filter(|_| !covered.authors) {
        let authors = sql.param(keys_param(authors));
        conditions.push(format!("e.pubkey = ANY({authors}::bytea[])"));
    }
    if let Some(kinds) = filter.kinds.as_ref().filter(|_| !covered.kinds) {
        let kinds = sql.param(kinds_param(kinds));
        conditions.push(format!("{row}.kind = ANY({kinds}::int4[])"));
    }
    if !filter.excluded_kinds.is_empty() && !covered.kinds {
        let kinds = sql.param(kinds_param(&filter.excluded_kinds));
        conditions.push(format!("{row}.kind <> ALL({kinds}::int4[])"));
    }
    for (_, condition) in filter
        .tags
        .iter()
        .enumerate()
        .filter(|(index, _)| Some(*index) != covered.tag)
    {
        let name = sql.param(condition.letter.to_string());
        let values: Vec<Vec<u8>> = condition
            .values
            .iter()
            .map(|v| super::tag_bytes(v))
            .collect();
        let values = sql.param(values);
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM tag x WHERE x.name = {name} AND x.value = ANY({values}::bytea[]) \
             AND x.created_at = e.created_at AND x.event_seq = e.seq)"
        ));
    }
    // NIP-40: never served once expired.
    let now = sql.param(now);
    conditions.push(format!("(e.expires_at IS NULL OR e.expires_at > {now})"));
    let since = sql.param(filter.since.unwrap_or(0));
    let until = sql.param(filter.until.unwrap_or(i64::MAX));
    conditions.push(format!("{time} BETWEEN {since} AND {until}"));
    conditions
}

/// The parts of a filter for this reader, as one `UNION ALL` of
/// `(seq, created_at, id, pubkey)` rows (an event may come twice), or
/// `None` when no part can match.
pub(super) fn union_of_parts(
    sql: &mut Sql,
    filter: &Filter,
    readers: &Readers,
    now: i64,
    reading: &Reading,
) -> Option<String> {
    if filter.is_unsatisfiable() {
        return None;
    }
    let parts: Vec<String> = readers
        .restrict(filter)
        .iter()
        .filter(|part| !part.is_unsatisfiable())
        .map(|part| format!("({})", part_sql(sql, part, now, reading)))
        .collect();
    (!parts.is_empty()).then(|| parts.join(" UNION ALL "))
}

/// `SELECT DISTINCT seq, created_at, id` of a filter's events for this
/// reader: its first `limit` in `order` (ties by id).
pub(super) fn filter_sql(
    sql: &mut Sql,
    filter: &Filter,
    readers: &Readers,
    now: i64,
    reading: &Reading,
) -> Option<String> {
    let union = union_of_parts(sql, filter, readers, now, reading)?;
    let limit = reading.limit.map(|limit| sql.param(limit));
    let mut text = format!("SELECT DISTINCT u.seq, u.created_at, u.id FROM ({union}) u");
    if let Some(limit) = limit {
        text.push_str(&format!(
            " ORDER BY {} LIMIT {limit}",
            order_by("u.created_at", "u.id", reading.order)
        ));
    }
    Some(text)
}

/// The statement answering several filters: each filter's first `limit`
/// events, united, as `(created_at, id, json)` in `order`. `None`: no
/// filter can match.
pub(super) fn events_sql(
    sql: &mut Sql,
    filters: &[(&Filter, Reading)],
    readers: &Readers,
    now: i64,
    order: Order,
) -> Option<String> {
    let chosen: Vec<String> = filters
        .iter()
        .filter_map(|(filter, reading)| filter_sql(sql, filter, readers, now, reading))
        .map(|text| format!("SELECT f.seq FROM ({text}) f"))
        .collect();
    if chosen.is_empty() {
        return None;
    }
    Some(format!(
        "SELECT e.created_at, e.id, e.json FROM event e WHERE e.seq IN ({}) ORDER BY {}",
        chosen.join(" UNION ALL "),
        order_by("e.created_at", "e.id", order)
    ))
}

/// A REQ's filters that can match, by how they are answered.
struct Split<'a> {
    /// By index ranges, each with its limit.
    plain: Vec<(&'a Filter, Reading)>,
    /// By the search index (`postgres/search.rs`), each with its limit.
    searched: Vec<(&'a Filter, u64)>,
}

fn split(filters: &[Filter], limits: QueryLimits) -> Split<'_> {
    let mut split = Split {
        plain: Vec::new(),
        searched: Vec::new(),
    };
    for filter in filters {
        let limit = limits.effective(filter);
        if limit == 0 || filter.is_unsatisfiable() {
            continue;
        }
        if filter.search.is_some() {
            split.searched.push((filter, limit));
        } else {
            split.plain.push((
                filter,
                Reading::newest(i64::try_from(limit).unwrap_or(i64::MAX)),
            ));
        }
    }
    split
}

impl PgStore {
    /// Answers a REQ's filters: each filter's newest `limit` events, united
    /// without duplicates, newest first, ties by lowest id; search filters'
    /// events first, best first. `snapshot` is 0 (no commit order across
    /// nodes); `sent_ids` lets the connection drop live copies.
    pub async fn query(
        &self,
        filters: std::sync::Arc<[Filter]>,
        readers: Readers,
        limits: QueryLimits,
    ) -> Result<QueryResult, StoreError> {
        let client = self.client_pool().get().await?;
        self.within(self.read_query(&client, &filters, &readers, limits))
            .await
    }

    async fn read_query(
        &self,
        client: &deadpool_postgres::Client,
        filters: &[Filter],
        readers: &Readers,
        limits: QueryLimits,
    ) -> Result<QueryResult, StoreError> {
        let now = unix_now();
        let Split { plain, searched } = split(filters, limits);
        let mut events: Vec<String> = Vec::new();
        let mut sent: HashSet<[u8; 32]> = HashSet::new();
        let mut sent_ids: Vec<[u8; 32]> = Vec::new();
        let mut unranked: Vec<(Filter, Reading)> = Vec::new();
        let mut push = |id: Vec<u8>, json: String| {
            if let Ok(id) = <[u8; 32]>::try_from(id)
                && sent.insert(id)
            {
                sent_ids.push(id);
                events.push(json);
            }
        };
        for (filter, limit) in searched {
            match self
                .search_statement(client, filter, readers, limit, now)
                .await?
            {
                super::search::Search::Ranked(sql) => {
                    let statement = client.prepare_cached(&sql.text).await?;
                    let rows = client.query(&statement, &sql.refs()).await?;
                    for row in rows {
                        push(row.try_get(0)?, row.try_get(1)?);
                    }
                }
                super::search::Search::Unranked(plain) => unranked.push((
                    plain,
                    Reading::newest(i64::try_from(limit).unwrap_or(i64::MAX)),
                )),
                super::search::Search::Nothing => {}
            }
        }
        let mut all: Vec<(&Filter, Reading)> = plain;
        all.extend(unranked.iter().map(|(f, r)| (f, r.clone())));
        let mut sql = Sql::new();
        if let Some(text) = events_sql(&mut sql, &all, readers, now, Order::NewestFirst) {
            let statement = client.prepare_cached(&text).await?;
            let rows = client.query(&statement, &sql.refs()).await?;
            for row in rows {
                push(row.try_get(1)?, row.try_get(2)?);
            }
        }
        Ok(QueryResult {
            events,
            snapshot: 0,
            sent_ids,
        })
    }

    /// Runs a read within the query time budget: each statement also has
    /// it as its `statement_timeout`; this bounds a read of several
    /// statements (search filters, pages of a portal) as a whole. The wait
    /// for a pooled connection is not part of it (the pool's own timeout).
    pub(super) async fn within<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // The server holds each statement to the budget itself
        // (statement_timeout); this backstop bounds a read of several
        // statements, with room for the round trips of a busy machine, so
        // that a cheap query is never cut by its network time alone.
        let backstop = self.query_timeout() * 2 + std::time::Duration::from_millis(250);
        tokio::time::timeout(backstop, read)
            .await
            .unwrap_or(Err(StoreError::Timeout))
    }

    /// `EXPLAIN` of the statement a REQ with these filters runs (search
    /// filters apart), one line per row, for tests and for operators
    /// investigating a slow query. Empty when no filter can match.
    pub async fn explain_query(
        &self,
        filters: &[Filter],
        readers: &Readers,
        limits: QueryLimits,
    ) -> Result<Vec<String>, StoreError> {
        let plain = split(filters, limits).plain;
        let mut sql = Sql::new();
        match events_sql(&mut sql, &plain, readers, unix_now(), Order::NewestFirst) {
            Some(text) => self.explain(&text, &sql).await,
            None => Ok(Vec::new()),
        }
    }

    /// `EXPLAIN` of one statement: its plan's lines.
    pub(super) async fn explain(&self, text: &str, sql: &Sql) -> Result<Vec<String>, StoreError> {
        let client = self.pool().get().await?;
        let rows = client
            .query(&format!("EXPLAIN {text}"), &sql.refs())
            .await?;
        rows.iter()
            .map(|row| row.try_get::<_, String>(0).map_err(StoreError::from))
            .collect()
    }
}
