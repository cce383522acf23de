//! The access lists, relay information overrides and moderation reports
//! in SQLite (tables of migration 2). Only SQL lives here: what the lists
//! mean is `access`'s business.
//!
//! Every edit is one short `BEGIN IMMEDIATE` transaction on the caller's
//! connection (the relay's management connection, or the host CLI's own),
//! never a job for the writer thread: the CLI has no writer thread, and
//! SQLite serializes writers across connections and processes alike (the
//! busy timeout waits out the writer's group commits). Each edit also
//! bumps `lists_version`, which running relays poll to reload their lists.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::writer::delete_event;
use crate::nostr::Event;
use crate::nostr::hex::decode_lower;

/// One change to the lists, as NIP-86 and the admin CLI name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Refuses the pubkey's events (with a reason for the record).
    BanPubkey([u8; 32], String),
    /// Lifts a ban.
    UnbanPubkey([u8; 32]),
    /// Puts the pubkey on the allow list (non-empty: only members write).
    AllowPubkey([u8; 32], String),
    /// Takes the pubkey off the allow list.
    UnallowPubkey([u8; 32]),
    /// Bans an event id and deletes the stored event, if any.
    BanEvent([u8; 32], String),
    /// Lifts a ban and clears the event's reports (it has been moderated).
    AllowEvent([u8; 32]),
    /// See [`allow_kind`].
    AllowKind(u16),
    /// See [`disallow_kind`].
    DisallowKind(u16),
    /// A normalized CIDR (see `access::Cidr`) and a reason.
    BlockIp(String, String),
    /// A normalized CIDR to unblock.
    UnblockIp(String),
    /// Overrides a NIP-11 field (`name`, `description`, `icon`); an empty
    /// value clears the override, so relay.toml's value shows again.
    SetInfo(InfoField, String),
}

/// The NIP-11 fields NIP-86 may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoField {
    /// NIP-11 `name`.
    Name,
    /// NIP-11 `description`.
    Description,
    /// NIP-11 `icon`.
    Icon,
}

impl InfoField {
    /// The key in `relay_info_override` (and in NIP-11).
    pub fn key(self) -> &'static str {
        match self {
            InfoField::Name => "name",
            InfoField::Description => "description",
            InfoField::Icon => "icon",
        }
    }
}

/// The lists as stored (without relay.toml's seed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredLists {
    /// Bumped by every edit; a relay reloads when it changes.
    pub version: i64,
    /// (pubkey, reason), oldest first.
    pub banned_pubkeys: Vec<([u8; 32], String)>,
    /// (pubkey, reason), oldest first.
    pub allowed_pubkeys: Vec<([u8; 32], String)>,
    /// (event id, reason), oldest first.
    pub banned_events: Vec<([u8; 32], String)>,
    /// Sorted.
    pub allowed_kinds: Vec<u16>,
    /// Sorted.
    pub disallowed_kinds: Vec<u16>,
    /// (normalized CIDR, reason).
    pub blocked_ips: Vec<(String, String)>,
    /// (NIP-11 key, value) overrides.
    pub info: Vec<(String, String)>,
}

/// An event reported with NIP-56 (kind 1984), waiting for a moderator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The reported event.
    pub event_id: [u8; 32],
    /// The distinct report types and texts, joined with "; ".
    pub reason: String,
    /// How many reporters.
    pub reports: usize,
}

/// Most reports listed at once: a moderation queue longer than this is
/// worked through from its newest end.
pub(crate) const MAX_REPORTS_LISTED: i64 = 1000;

/// Longest stored report reason; a report's free text is the reporter's.
const MAX_REPORT_REASON: usize = 300;

/// The lists version, bumped by every edit.
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT version FROM lists_version")?
        .query_row([], |row| row.get(0))
}

/// Reads every list in one read transaction (a consistent snapshot, even
/// while another process edits).
pub fn load(conn: &Connection) -> rusqlite::Result<StoredLists> {
    let tx = conn.unchecked_transaction()?;
    let keyed = |sql: &str| -> rusqlite::Result<Vec<([u8; 32], String)>> {
        tx.prepare(sql)?
            .query_map([], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get(1)?)))?
            .filter_map(|row| match row {
                Ok((key, reason)) => key.try_into().ok().map(|key| Ok((key, reason))),
                Err(error) => Some(Err(error)),
            })
            .collect()
    };
    let kinds = |sql: &str| -> rusqlite::Result<Vec<u16>> {
        tx.prepare(sql)?.query_map([], |row| row.get(0))?.collect()
    };
    let texts = |sql: &str| -> rusqlite::Result<Vec<(String, String)>> {
        tx.prepare(sql)?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect()
    };
    let lists = StoredLists {
        version: version(&tx)?,
        banned_pubkeys: keyed("SELECT pubkey, reason FROM banned_pubkey ORDER BY created_at")?,
        allowed_pubkeys: keyed("SELECT pubkey, reason FROM allowed_pubkey ORDER BY created_at")?,
        banned_events: keyed("SELECT id, reason FROM banned_event ORDER BY created_at")?,
        allowed_kinds: kinds("SELECT kind FROM allowed_kind ORDER BY kind")?,
        disallowed_kinds: kinds("SELECT kind FROM disallowed_kind ORDER BY kind")?,
        blocked_ips: texts("SELECT cidr, reason FROM blocked_ip ORDER BY created_at")?,
        info: texts("SELECT key, value FROM relay_info_override ORDER BY key")?,
    };
    tx.commit()?;
    Ok(lists)
}

/// Applies one edit in its own transaction and bumps the version. Returns
/// how many stored events it deleted (only `BanEvent` deletes).
///
/// `seed_allowed_kinds` is relay.toml's kind allow list: whether a kind is
/// allowed depends on it too (see [`allow_kind`]).
pub fn apply(
    conn: &mut Connection,
    edit: &Edit,
    seed_allowed_kinds: &[u16],
    now: i64,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut deleted = 0;
    match edit {
        Edit::BanPubkey(pubkey, reason) => {
            upsert(&tx, "banned_pubkey", "pubkey", pubkey, reason, now)?
        }
        Edit::UnbanPubkey(pubkey) => remove(&tx, "banned_pubkey", "pubkey", pubkey)?,
        Edit::AllowPubkey(pubkey, reason) => {
            upsert(&tx, "allowed_pubkey", "pubkey", pubkey, reason, now)?
        }
        Edit::UnallowPubkey(pubkey) => remove(&tx, "allowed_pubkey", "pubkey", pubkey)?,
        Edit::BanEvent(id, reason) => {
            upsert(&tx, "banned_event", "id", id, reason, now)?;
            tx.execute(
                "DELETE FROM moderation_report WHERE event_id = ?1",
                params![&id[..]],
            )?;
            // A NIP-62 request to vanish is never deleted: it is the record
            // that keeps its author's deleted events out.
            let seq: Option<i64> = tx
                .query_row(
                    "SELECT seq FROM event WHERE id = ?1 AND kind != 62",
                    params![&id[..]],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(seq) = seq {
                delete_event(&tx, seq)?;
                deleted = 1;
            }
        }
        Edit::AllowEvent(id) => {
            remove(&tx, "banned_event", "id", id)?;
            tx.execute(
                "DELETE FROM moderation_report WHERE event_id = ?1",
                params![&id[..]],
            )?;
        }
        Edit::AllowKind(kind) => allow_kind(&tx, *kind, seed_allowed_kinds, now)?,
        Edit::DisallowKind(kind) => disallow_kind(&tx, *kind, seed_allowed_kinds, now)?,
        Edit::BlockIp(cidr, reason) => {
            tx.execute(
                "INSERT INTO blocked_ip (cidr, reason, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (cidr) DO UPDATE SET reason = excluded.reason",
                params![cidr, reason, now],
            )?;
        }
        Edit::UnblockIp(cidr) => {
            tx.execute("DELETE FROM blocked_ip WHERE cidr = ?1", params![cidr])?;
        }
        Edit::SetInfo(field, value) if value.is_empty() => {
            tx.execute(
                "DELETE FROM relay_info_override WHERE key = ?1",
                params![field.key()],
            )?;
        }
        Edit::SetInfo(field, value) => {
            tx.execute(
                "INSERT INTO relay_info_override (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![field.key(), value],
            )?;
        }
    }
    tx.execute("UPDATE lists_version SET version = version + 1", [])?;
    tx.commit()?;
    Ok(deleted)
}

fn upsert(
    tx: &Connection,
    table: &str,
    key: &str,
    value: &[u8; 32],
    reason: &str,
    now: i64,
) -> rusqlite::Result<()> {
    // Table and column names are this module's constants, never input.
    tx.execute(
        &format!(
            "INSERT INTO {table} ({key}, reason, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT ({key}) DO UPDATE SET reason = excluded.reason"
        ),
        params![&value[..], reason, now],
    )?;
    Ok(())
}

fn remove(tx: &Connection, table: &str, key: &str, value: &[u8; 32]) -> rusqlite::Result<()> {
    tx.execute(
        &format!("DELETE FROM {table} WHERE {key} = ?1"),
        params![&value[..]],
    )?;
    Ok(())
}

/// Whether the kind allow list (relay.toml's and the database's) is
/// non-empty, and whether it holds `kind`.
fn allow_list(tx: &Connection, kind: u16, seed: &[u16]) -> rusqlite::Result<(bool, bool)> {
    let stored_any = tx
        .prepare_cached("SELECT 1 FROM allowed_kind")?
        .exists([])?;
    let stored_this = tx
        .prepare_cached("SELECT 1 FROM allowed_kind WHERE kind = ?1")?
        .exists(params![kind])?;
    Ok((
        stored_any || !seed.is_empty(),
        stored_this || seed.contains(&kind),
    ))
}

/// `allowkind`: afterwards the kind is on the allow list and off the deny
/// list, with one exception that makes `allowkind` undo a `disallowkind`
/// on an open relay: when the kind was denied and the allow list is empty
/// (every kind allowed), lifting the denial is all it does, for putting it
/// on the allow list would suddenly refuse every other kind.
pub fn allow_kind(tx: &Connection, kind: u16, seed: &[u16], now: i64) -> rusqlite::Result<()> {
    let was_denied = tx.execute("DELETE FROM disallowed_kind WHERE kind = ?1", params![kind])? > 0;
    let (restricted, listed) = allow_list(tx, kind, seed)?;
    if !was_denied || (restricted && !listed) {
        tx.execute(
            "INSERT OR IGNORE INTO allowed_kind (kind, created_at) VALUES (?1, ?2)",
            params![kind, now],
        )?;
    }
    Ok(())
}

/// `disallowkind`: afterwards the kind is refused. It leaves the allow list
/// if it was on it; if it is still allowed after that (the allow list is
/// now empty, or relay.toml allows it), it goes on the deny list, which
/// wins over every allow list.
pub fn disallow_kind(tx: &Connection, kind: u16, seed: &[u16], now: i64) -> rusqlite::Result<()> {
    let was_allowed = tx.execute("DELETE FROM allowed_kind WHERE kind = ?1", params![kind])? > 0;
    let (restricted, listed) = allow_list(tx, kind, seed)?;
    let still_allowed = !restricted || listed;
    if !was_allowed || still_allowed {
        tx.execute(
            "INSERT OR IGNORE INTO disallowed_kind (kind, created_at) VALUES (?1, ?2)",
            params![kind, now],
        )?;
    }
    Ok(())
}

/// NIP-56: records each event a kind-1984 report names in an `e` tag (the
/// report type is the tag's third element), for
/// `listeventsneedingmoderation`. Called by the writer in the report's own
/// transaction. Pubkey-only reports (`p` tags) name no event and are not
/// recorded here.
pub fn record_report(tx: &Connection, report: &Event) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO moderation_report (event_id, reporter, report_id, reason, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (event_id, reporter) DO UPDATE SET report_id = excluded.report_id,
             reason = excluded.reason, created_at = excluded.created_at",
    )?;
    for tag in report
        .tags
        .iter()
        .filter(|tag| tag.len() >= 2 && tag[0] == "e")
    {
        let Some(target) = decode_lower::<32>(&tag[1]) else {
            continue;
        };
        let reason = report_reason(tag, &report.content);
        insert.execute(params![
            &target[..],
            &report.pubkey[..],
            &report.id[..],
            reason,
            report.created_at
        ])?;
    }
    Ok(())
}

/// The stored reason of one report `e` tag: its report type (the tag's
/// third element) and the report's text, cut to [`MAX_REPORT_REASON`].
/// Both backends record reports with it.
pub(crate) fn report_reason(tag: &[String], content: &str) -> String {
    let kind = tag.get(2).map(String::as_str).unwrap_or_default();
    let mut reason = match (kind.is_empty(), content.trim()) {
        (true, "") => "reported".to_owned(),
        (false, "") => kind.to_owned(),
        (true, text) => text.to_owned(),
        (false, text) => format!("{kind}: {text}"),
    };
    if reason.len() > MAX_REPORT_REASON {
        let mut cut = MAX_REPORT_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

/// Reported events not yet banned nor allowed, newest report first. A
/// report whose own event is gone (deleted by its author, expired) no
/// longer counts.
pub fn reports(conn: &Connection) -> rusqlite::Result<Vec<Report>> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.event_id, r.reason FROM moderation_report r
         WHERE EXISTS (SELECT 1 FROM event e WHERE e.id = r.report_id)
           AND NOT EXISTS (SELECT 1 FROM banned_event b WHERE b.id = r.event_id)
         ORDER BY r.created_at DESC LIMIT ?1",
    )?;
    let rows = stmt
        .query_map(params![MAX_REPORTS_LISTED], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(group_reports(rows))
}

/// One [`Report`] per reported event, in the order of `rows` (event id,
/// reason: one row per reporter, newest first), its distinct reasons
/// joined. Both backends list reports with it.
pub(crate) fn group_reports(rows: Vec<(Vec<u8>, String)>) -> Vec<Report> {
    let mut reports: Vec<Report> = Vec::new();
    let mut reasons: Vec<Vec<String>> = Vec::new();
    for (id, reason) in rows {
        let Ok(event_id) = <[u8; 32]>::try_from(id) else {
            continue;
        };
        match reports.iter().position(|r| r.event_id == event_id) {
            Some(i) => {
                reports[i].reports += 1;
                if !reasons[i].contains(&reason) {
                    reasons[i].push(reason);
                }
            }
            None => {
                reports.push(Report {
                    event_id,
                    reason: String::new(),
                    reports: 1,
                });
                reasons.push(vec![reason]);
            }
        }
    }
    for (report, reasons) in reports.iter_mut().zip(reasons) {
        report.reason = reasons.join("; ");
    }
    reports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema;

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lists.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        schema::migrate(&mut conn, &path).unwrap();
        (dir, conn)
    }

    fn kinds(conn: &Connection) -> (Vec<u16>, Vec<u16>) {
        let lists = load(conn).unwrap();
        (lists.allowed_kinds, lists.disallowed_kinds)
    }

    #[test]
    fn every_edit_bumps_the_version_and_round_trips() {
        let (_dir, mut conn) = database();
        let key = [3u8; 32];
        let before = version(&conn).unwrap();
        apply(&mut conn, &Edit::BanPubkey(key, "spam".into()), &[], 1).unwrap();
        apply(&mut conn, &Edit::AllowPubkey(key, String::new()), &[], 1).unwrap();
        apply(
            &mut conn,
            &Edit::BlockIp("10.0.0.0/8".into(), "x".into()),
            &[],
            1,
        )
        .unwrap();
        apply(
            &mut conn,
            &Edit::SetInfo(InfoField::Name, "n".into()),
            &[],
            1,
        )
        .unwrap();
        let lists = load(&conn).unwrap();
        assert_eq!(lists.version, before + 4);
        assert_eq!(lists.banned_pubkeys, vec![(key, "spam".to_owned())]);
        assert_eq!(lists.allowed_pubkeys, vec![(key, String::new())]);
        assert_eq!(lists.blocked_ips, vec![("10.0.0.0/8".into(), "x".into())]);
        assert_eq!(lists.info, vec![("name".into(), "n".into())]);
        apply(&mut conn, &Edit::UnbanPubkey(key), &[], 1).unwrap();
        apply(
            &mut conn,
            &Edit::SetInfo(InfoField::Name, String::new()),
            &[],
            1,
        )
        .unwrap();
        let lists = load(&conn).unwrap();
        assert!(lists.banned_pubkeys.is_empty() && lists.info.is_empty());
    }

    #[test]
    fn allowkind_undoes_disallowkind_on_an_open_relay() {
        let (_dir, mut conn) = database();
        apply(&mut conn, &Edit::DisallowKind(4), &[], 1).unwrap();
        assert_eq!(kinds(&conn), (vec![], vec![4]));
        apply(&mut conn, &Edit::AllowKind(4), &[], 1).unwrap();
        assert_eq!(kinds(&conn), (vec![], vec![]), "still an open relay");
    }

    #[test]
    fn kind_allow_list_grows_and_shrinks() {
        let (_dir, mut conn) = database();
        apply(&mut conn, &Edit::AllowKind(0), &[], 1).unwrap();
        apply(&mut conn, &Edit::AllowKind(1), &[], 1).unwrap();
        assert_eq!(kinds(&conn), (vec![0, 1], vec![]));
        apply(&mut conn, &Edit::DisallowKind(1), &[], 1).unwrap();
        assert_eq!(kinds(&conn), (vec![0], vec![]));
        apply(&mut conn, &Edit::DisallowKind(0), &[], 1).unwrap();
        // The allow list is empty now: kind 0 must still be refused.
        assert_eq!(kinds(&conn), (vec![], vec![0]));
        // relay.toml allows 7: disallowing it needs the deny list.
        apply(&mut conn, &Edit::DisallowKind(7), &[7], 1).unwrap();
        assert_eq!(kinds(&conn), (vec![], vec![0, 7]));
        // With relay.toml's allow list, un-denying 5 must also allow it.
        apply(&mut conn, &Edit::DisallowKind(5), &[7], 1).unwrap();
        apply(&mut conn, &Edit::AllowKind(5), &[7], 1).unwrap();
        assert_eq!(kinds(&conn), (vec![5], vec![0, 7]));
    }
}
