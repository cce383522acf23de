//! The SQL of retention (`src/retention.rs` holds the rules and the task).
//!
//! Deletions run on the writer thread as [`PruneJob`]s: each job selects at
//! most `limit` events, deletes them through `writer::delete_event` (the
//! event, its tag rows and its NIP-50 index entry, as every other removal
//! does) and commits, so that a pass is many short transactions between the
//! relay's own writes, never one long one. The selection runs inside the
//! job's transaction, so what is deleted always matches the rule at the
//! moment it is deleted. The read-only figures a pass is planned from, and
//! a dry run reports, are functions on any connection.
//!
//! Every selection reads an existing index: `event_kind_time` (age by
//! kind), `event_pubkey_kind_time` (an author's newest), `event_created_id`
//! (the oldest of all, for the size cap). None needs an index of its own.

use std::rc::Rc;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::StoreError;
use super::writer::delete_event;
use crate::nostr::kind;

/// What a prune job deletes (oldest first, at most the job's `limit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doomed {
    /// Events of `kind` created before `before`, from `from` on (a cursor:
    /// the newest `created_at` the previous batch deleted, so that events
    /// of exempt pubkeys are not read again by every batch).
    OlderThan { kind: u16, before: i64, from: i64 },
    /// For each author, the events of `kinds` past its newest `keep`, in
    /// NIP-01 order (newest first, ties by lowest id).
    BeyondNewest {
        authors: Vec<[u8; 32]>,
        kinds: Vec<u16>,
        keep: u64,
    },
    /// The oldest events of evictable kinds (see [`is_evictable`]), from
    /// `from` on (a cursor, as above).
    Oldest { from: i64 },
}

/// One bounded batch of deletions for the writer.
#[derive(Debug, Clone)]
pub struct PruneJob {
    pub doomed: Doomed,
    /// Pubkeys whose events are never deleted (sorted or not).
    pub exempt: Vec<[u8; 32]>,
    /// Most events this job deletes.
    pub limit: usize,
}

/// What one job deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events and `created_at` range deleted.
    pub span: Span,
    /// Bytes of database pages in use after the commit (see [`used_bytes`]).
    pub used_bytes: u64,
}

/// A number of events and the range of their `created_at`: what a rule
/// took (or would take).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub count: u64,
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
}

impl Span {
    /// Adds one event's `created_at`.
    pub fn add(&mut self, created_at: i64) {
        self.merge(Span {
            count: 1,
            oldest: Some(created_at),
            newest: Some(created_at),
        });
    }

    /// Adds another span's events.
    pub fn merge(&mut self, other: Span) {
        self.count += other.count;
        self.oldest = min_some(self.oldest, other.oldest);
        self.newest = match (self.newest, other.newest) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

fn min_some(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether the size cap may evict events of this kind. Never: profiles
/// (0), follow lists (3), deletions (5, whose tombstones outlive them
/// anyway, but clients read them), requests to vanish (62, the record that
/// keeps a vanished author out) and replaceable lists (10000–19999: relay
/// lists, mute lists, DM relays…). They are one per author (5 aside) and
/// small, and without them nobody can find or follow anyone.
pub fn is_evictable(kind: u16) -> bool {
    !matches!(
        kind,
        0 | 3 | kind::DELETION | kind::REQUEST_TO_VANISH | 10_000..=19_999
    )
}

/// [`is_evictable`] as an SQL condition on `kind` (a unit test keeps the
/// two alike).
macro_rules! evictable_sql {
    () => {
        "kind NOT IN (0, 3, 5, 62) AND kind NOT BETWEEN 10000 AND 19999"
    };
}
pub(crate) use evictable_sql;

/// [`Doomed::OlderThan`]: a covering range of `event_kind_time`, oldest first.
const OLDER_THAN: &str = "SELECT seq, created_at FROM event INDEXED BY event_kind_time
     WHERE kind = ?1 AND created_at < ?2 AND created_at >= ?3 AND pubkey NOT IN rarray(?4)
     ORDER BY created_at LIMIT ?5";

/// [`Doomed::Oldest`]: `event_created_id` in order, each row's kind and
/// pubkey read from the table.
const OLDEST: &str = concat!(
    "SELECT seq, created_at FROM event INDEXED BY event_created_id
     WHERE created_at >= ?1 AND ",
    evictable_sql!(),
    " AND pubkey NOT IN rarray(?2) ORDER BY created_at LIMIT ?3"
);

/// Runs one job in its own `BEGIN IMMEDIATE` transaction on the writer's
/// connection.
pub(super) fn prune(conn: &mut Connection, job: &PruneJob) -> Result<Pruned, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let exempt = blob_list(&job.exempt);
    let doomed: Vec<(i64, i64)> = match &job.doomed {
        Doomed::OlderThan { kind, before, from } => tx
            .prepare_cached(OLDER_THAN)?
            .query_map(
                params![kind, before, from, exempt, job.limit as i64],
                seq_and_time,
            )?
            .collect::<rusqlite::Result<_>>()?,
        Doomed::BeyondNewest {
            authors,
            kinds,
            keep,
        } => {
            let kinds = int_list(kinds);
            let mut doomed = Vec::new();
            for author in authors {
                if job.exempt.contains(author) {
                    continue;
                }
                let room = job.limit - doomed.len();
                if room == 0 {
                    break;
                }
                doomed.extend(beyond_newest(&tx, author, &kinds, *keep, room)?);
            }
            doomed
        }
        Doomed::Oldest { from } => tx
            .prepare_cached(OLDEST)?
            .query_map(params![from, exempt, job.limit as i64], seq_and_time)?
            .collect::<rusqlite::Result<_>>()?,
    };
    let mut span = Span::default();
    for (seq, created_at) in doomed {
        delete_event(&tx, seq)?;
        span.add(created_at);
    }
    tx.commit()?;
    Ok(Pruned {
        span,
        used_bytes: used_bytes(conn)?,
    })
}

/// [`Doomed::BeyondNewest`], one author: the `created_at` of its
/// (keep + 1)-th newest event (a walk of `keep` covering index entries)…
const BOUNDARY: &str = "SELECT created_at FROM event INDEXED BY event_pubkey_kind_time
     WHERE pubkey = ?1 AND kind IN rarray(?2) ORDER BY created_at DESC LIMIT 1 OFFSET ?3";
/// …how many are newer…
const NEWER: &str = "SELECT count(*) FROM event INDEXED BY event_pubkey_kind_time
     WHERE pubkey = ?1 AND kind IN rarray(?2) AND created_at > ?3";
/// …the events of that second past `keep`, by lowest id (NIP-01's order)…
const TIED: &str = "SELECT seq, created_at FROM event INDEXED BY event_pubkey_kind_time
     WHERE pubkey = ?1 AND kind IN rarray(?2) AND created_at = ?3
     ORDER BY id LIMIT ?4 OFFSET ?5";
/// …and every older one (all go: in no particular order, so unsorted).
const OLDER_OF_AUTHOR: &str = "SELECT seq, created_at FROM event INDEXED BY event_pubkey_kind_time
     WHERE pubkey = ?1 AND kind IN rarray(?2) AND created_at < ?3 LIMIT ?4";

/// One author's events of `kinds` past its newest `keep`, at most `room`
/// of them, without sorting them all: find the `created_at` of the first
/// event past `keep` (an index walk of `keep` entries), then everything
/// older goes, and at that second the events past `keep` by lowest id.
fn beyond_newest(
    tx: &Connection,
    author: &[u8; 32],
    kinds: &Rc<Vec<SqlValue>>,
    keep: u64,
    room: usize,
) -> rusqlite::Result<Vec<(i64, i64)>> {
    let boundary: Option<i64> = tx
        .prepare_cached(BOUNDARY)?
        .query_row(params![&author[..], kinds, keep as i64], |row| row.get(0))
        .optional()?;
    let Some(boundary) = boundary else {
        return Ok(Vec::new());
    };
    let newer: i64 = tx
        .prepare_cached(NEWER)?
        .query_row(params![&author[..], kinds, boundary], |row| row.get(0))?;
    // `boundary` is the (keep + 1)-th newest, so at most `keep` are newer.
    let kept_at_boundary = (keep as i64 - newer).max(0);
    let mut doomed: Vec<(i64, i64)> = tx
        .prepare_cached(TIED)?
        .query_map(
            params![&author[..], kinds, boundary, room as i64, kept_at_boundary],
            seq_and_time,
        )?
        .collect::<rusqlite::Result<_>>()?;
    let room = room - doomed.len();
    if room > 0 {
        let older = tx
            .prepare_cached(OLDER_OF_AUTHOR)?
            .query_map(
                params![&author[..], kinds, boundary, room as i64],
                seq_and_time,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        doomed.extend(older);
    }
    Ok(doomed)
}

fn seq_and_time(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, i64)> {
    Ok((row.get(0)?, row.get(1)?))
}

fn blob_list(keys: &[[u8; 32]]) -> Rc<Vec<SqlValue>> {
    Rc::new(keys.iter().map(|k| SqlValue::Blob(k.to_vec())).collect())
}

fn int_list(kinds: &[u16]) -> Rc<Vec<SqlValue>> {
    Rc::new(
        kinds
            .iter()
            .map(|&k| SqlValue::Integer(i64::from(k)))
            .collect(),
    )
}

// Read-only figures, on any connection: what a pass is planned from and a
// dry run reports.

/// Bytes of the database's pages in use: the file's pages less the free
/// ones. This is what the size cap measures: deletions free pages without
/// shrinking the file, and new events reuse them first.
pub fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pragma = |name: &str| -> rusqlite::Result<i64> {
        conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
    };
    let pages = pragma("page_count")? - pragma("freelist_count")?;
    Ok((pages.max(0) as u64) * (pragma("page_size")?.max(0) as u64))
}

/// How many events are stored.
pub fn event_count(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT count(*) FROM event", [], |row| row.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
}

/// The distinct kinds stored (one index seek each).
pub fn stored_kinds(conn: &Connection) -> rusqlite::Result<Vec<u16>> {
    super::query::stored_kinds(conn)
}

/// What [`Doomed::OlderThan`] would delete of `kind`, all batches
/// together, and the bytes of its JSON (a dry run's measure of size).
pub fn older_than(
    conn: &Connection,
    kind: u16,
    before: i64,
    exempt: &[[u8; 32]],
) -> rusqlite::Result<(Span, u64)> {
    conn.prepare_cached(
        "SELECT count(*), min(created_at), max(created_at), total(octet_length(json))
         FROM event INDEXED BY event_kind_time
         WHERE kind = ?1 AND created_at < ?2 AND pubkey NOT IN rarray(?3)",
    )?
    .query_row(params![kind, before, blob_list(exempt)], span_and_bytes)
}

/// The authors, exempt ones left out, with more than `keep` events of
/// `kinds` created at or after `since`: those [`Doomed::BeyondNewest`] has
/// work for. One scan of the kinds' `event_kind_time` entries.
pub fn authors_beyond(
    conn: &Connection,
    kinds: &[u16],
    keep: u64,
    since: i64,
    exempt: &[[u8; 32]],
) -> rusqlite::Result<Vec<[u8; 32]>> {
    let rows = conn
        .prepare_cached(
            "SELECT pubkey FROM event INDEXED BY event_kind_time
             WHERE kind IN rarray(?1) AND created_at >= ?2
             GROUP BY pubkey HAVING count(*) > ?3",
        )?
        .query_map(params![int_list(kinds), since, keep as i64], |row| {
            row.get::<_, Vec<u8>>(0)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|pubkey| <[u8; 32]>::try_from(pubkey).ok())
        .filter(|pubkey| !exempt.contains(pubkey))
        .collect())
}

/// What [`Doomed::BeyondNewest`] would delete of one author, counting only
/// events created at or after `since` (those an age rule leaves), and the
/// bytes of its JSON.
pub fn beyond_newest_of(
    conn: &Connection,
    author: &[u8; 32],
    kinds: &[u16],
    keep: u64,
    since: i64,
) -> rusqlite::Result<(Span, u64)> {
    conn.prepare_cached(
        "SELECT count(*), min(created_at), max(created_at), total(octet_length(json)) FROM (
             SELECT created_at, json FROM event INDEXED BY event_pubkey_kind_time
             WHERE pubkey = ?1 AND kind IN rarray(?2) AND created_at >= ?3
             ORDER BY created_at DESC, id LIMIT -1 OFFSET ?4)",
    )?
    .query_row(
        params![&author[..], int_list(kinds), since, keep as i64],
        span_and_bytes,
    )
}

/// Bytes of JSON stored, all events together (a dry run's scale: each
/// event is taken to hold its JSON's share of the pages in use).
pub fn json_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT total(octet_length(json)) FROM event", [], |row| {
        row.get::<_, f64>(0)
    })
    .map(|bytes| bytes as u64)
}

/// The oldest evictable events not by an exempt pubkey, those for which
/// `skip(kind, created_at)` holds left out, until their JSON adds up to
/// `json_wanted` bytes (or none is left): a dry run's estimate of what
/// the size cap would take. Returns them and their JSON bytes.
pub fn oldest_evictable(
    conn: &Connection,
    json_wanted: u64,
    exempt: &[[u8; 32]],
    skip: impl Fn(u16, i64) -> bool,
) -> rusqlite::Result<(Span, u64)> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT kind, created_at, octet_length(json) FROM event INDEXED BY event_created_id WHERE ",
        evictable_sql!(),
        " AND pubkey NOT IN rarray(?1) ORDER BY created_at"
    ))?;
    let mut rows = stmt.query(params![blob_list(exempt)])?;
    let (mut span, mut taken) = (Span::default(), 0u64);
    while taken < json_wanted {
        let Some(row) = rows.next()? else { break };
        let (kind, created_at, bytes): (u16, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        if !skip(kind, created_at) {
            span.add(created_at);
            taken += bytes.max(0) as u64;
        }
    }
    Ok((span, taken))
}

fn span_and_bytes(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Span, u64)> {
    let span = Span {
        count: row.get::<_, i64>(0)?.max(0) as u64,
        oldest: row.get(1)?,
        newest: row.get(2)?,
    };
    Ok((span, row.get::<_, f64>(3)? as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_and_the_rust_agree_on_what_is_evictable() {
        let conn = Connection::open_in_memory().unwrap();
        let evictable: Vec<u16> = conn
            .prepare(concat!(
                "WITH RECURSIVE k(kind) AS (SELECT 0 UNION ALL SELECT kind + 1 FROM k WHERE kind < 65535)
                 SELECT kind FROM k WHERE ",
                evictable_sql!()
            ))
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let expected: Vec<u16> = (0..=u16::MAX).filter(|&k| is_evictable(k)).collect();
        assert_eq!(evictable, expected);
        assert!(is_evictable(1) && is_evictable(7) && is_evictable(30_023));
        assert!(!is_evictable(10_002) && !is_evictable(62) && !is_evictable(5));
    }

    /// Every statement a prune job runs reads its index: no table scan,
    /// and no sort of more than one second's events.
    #[test]
    fn each_selection_reads_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.sqlite");
        let mut conn =
            crate::store::open_connection(&path, crate::config::Durability::Normal, false).unwrap();
        crate::store::schema::migrate(&mut conn, &path).unwrap();
        conn.execute_batch("ANALYZE").unwrap();
        for (sql, index, sorts) in [
            (OLDER_THAN, "COVERING INDEX event_kind_time", false),
            (OLDEST, "INDEX event_created_id", false),
            (BOUNDARY, "COVERING INDEX event_pubkey_kind_time", true),
            (NEWER, "COVERING INDEX event_pubkey_kind_time", false),
            (TIED, "INDEX event_pubkey_kind_time", true),
            (
                OLDER_OF_AUTHOR,
                "COVERING INDEX event_pubkey_kind_time",
                false,
            ),
        ] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            // Parameters left unbound: the plan does not depend on them.
            let mut rows = stmt.raw_query();
            let mut plan = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                plan.push(row.get::<_, String>(3).unwrap());
            }
            let text = plan.join(" | ");
            assert!(
                plan.iter()
                    .any(|step| step.starts_with("SEARCH") && step.contains(index)),
                "{sql}\n{text}"
            );
            assert!(!text.contains("SCAN event"), "{sql}\n{text}");
            // Several kinds are several ranges, merged by a sort of that
            // author's entries; one kind needs none.
            assert!(sorts || !text.contains("TEMP B-TREE"), "{sql}\n{text}");
        }
    }

    #[test]
    fn spans_merge() {
        let mut span = Span::default();
        span.merge(Span::default());
        assert_eq!(span, Span::default());
        span.add(20);
        span.add(10);
        span.merge(Span {
            count: 2,
            oldest: Some(15),
            newest: Some(30),
        });
        assert_eq!(
            span,
            Span {
                count: 4,
                oldest: Some(10),
                newest: Some(30)
            }
        );
    }
}
