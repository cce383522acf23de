//! The access lists, relay information overrides and NIP-56 reports in
//! PostgreSQL: the same tables, meaning and edits as `store/lists.rs`.
//!
//! Every edit is one short transaction on a pool connection, bumping
//! `lists_version`, which every node polls to reload its lists. A
//! `BanEvent` deletes the stored event (never a kind 62) under the
//! advisory lock on its id that every writer takes to insert it, so that
//! an insert committing on another node meanwhile is deleted too.

use tokio_postgres::{Client, GenericClient, Transaction};

use super::writer::id_lock;
use crate::nostr::Event;
use crate::nostr::hex::decode_lower;
use crate::store::StoreError;
use crate::store::lists::{
    Edit, MAX_REPORTS_LISTED, Report, StoredLists, group_reports, report_reason,
};

/// The lists version, bumped by every edit.
pub(super) async fn version(client: &Client) -> Result<i64, StoreError> {
    let row = client
        .query_one("SELECT version FROM lists_version", &[])
        .await?;
    Ok(row.try_get(0)?)
}

/// Reads every list in one REPEATABLE READ transaction (a consistent
/// snapshot, even while another node edits).
pub(super) async fn load(client: &mut Client) -> Result<StoredLists, StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version: i64 = tx
        .query_one("SELECT version FROM lists_version", &[])
        .await?
        .try_get(0)?;
    let lists = StoredLists {
        version,
        banned_pubkeys: keyed(
            &tx,
            "SELECT pubkey, reason FROM banned_pubkey ORDER BY created_at",
        )
        .await?,
        allowed_pubkeys: keyed(
            &tx,
            "SELECT pubkey, reason FROM allowed_pubkey ORDER BY created_at",
        )
        .await?,
        banned_events: keyed(
            &tx,
            "SELECT id, reason FROM banned_event ORDER BY created_at",
        )
        .await?,
        allowed_kinds: kinds(&tx, "SELECT kind FROM allowed_kind ORDER BY kind").await?,
        disallowed_kinds: kinds(&tx, "SELECT kind FROM disallowed_kind ORDER BY kind").await?,
        blocked_ips: texts(
            &tx,
            "SELECT cidr, reason FROM blocked_ip ORDER BY created_at",
        )
        .await?,
        info: texts(
            &tx,
            "SELECT key, value FROM relay_info_override ORDER BY key",
        )
        .await?,
    };
    tx.commit().await?;
    Ok(lists)
}

async fn keyed(tx: &Transaction<'_>, sql: &str) -> Result<Vec<([u8; 32], String)>, StoreError> {
    let mut keyed = Vec::new();
    for row in tx.query(sql, &[]).await? {
        let key: Vec<u8> = row.try_get(0)?;
        if let Ok(key) = <[u8; 32]>::try_from(key) {
            keyed.push((key, row.try_get(1)?));
        }
    }
    Ok(keyed)
}

async fn kinds(tx: &Transaction<'_>, sql: &str) -> Result<Vec<u16>, StoreError> {
    let mut kinds = Vec::new();
    for row in tx.query(sql, &[]).await? {
        let kind: i32 = row.try_get(0)?;
        if let Ok(kind) = u16::try_from(kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

async fn texts(tx: &Transaction<'_>, sql: &str) -> Result<Vec<(String, String)>, StoreError> {
    tx.query(sql, &[])
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Applies one edit in its own transaction and bumps the version. Returns
/// how many stored events it deleted (only `BanEvent` deletes).
pub(super) async fn apply(
    client: &mut Client,
    edit: &Edit,
    seed_allowed_kinds: &[u16],
    now: i64,
) -> Result<usize, StoreError> {
    let tx = client.transaction().await?;
    let mut deleted = 0;
    match edit {
        Edit::BanPubkey(pubkey, reason) => {
            upsert(&tx, "banned_pubkey", "pubkey", pubkey, reason, now).await?
        }
        Edit::UnbanPubkey(pubkey) => remove(&tx, "banned_pubkey", "pubkey", pubkey).await?,
        Edit::AllowPubkey(pubkey, reason) => {
            upsert(&tx, "allowed_pubkey", "pubkey", pubkey, reason, now).await?
        }
        Edit::UnallowPubkey(pubkey) => remove(&tx, "allowed_pubkey", "pubkey", pubkey).await?,
        Edit::BanEvent(id, reason) => {
            upsert(&tx, "banned_event", "id", id, reason, now).await?;
            tx.execute(
                "DELETE FROM moderation_report WHERE event_id = $1",
                &[&&id[..]],
            )
            .await?;
            // The writers' lock on this id: an insert of it committing on
            // another node right now is either seen here, or comes after.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&id_lock(id)])
                .await?;
            // A NIP-62 request to vanish is never deleted: it is the record
            // that keeps its author's deleted events out.
            deleted = tx
                .execute(
                    "DELETE FROM event WHERE id = $1 AND kind <> 62",
                    &[&&id[..]],
                )
                .await?;
        }
        Edit::AllowEvent(id) => {
            remove(&tx, "banned_event", "id", id).await?;
            tx.execute(
                "DELETE FROM moderation_report WHERE event_id = $1",
                &[&&id[..]],
            )
            .await?;
        }
        Edit::AllowKind(kind) => allow_kind(&tx, *kind, seed_allowed_kinds, now).await?,
        Edit::DisallowKind(kind) => disallow_kind(&tx, *kind, seed_allowed_kinds, now).await?,
        Edit::BlockIp(cidr, reason) => {
            tx.execute(
                "INSERT INTO blocked_ip (cidr, reason, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (cidr) DO UPDATE SET reason = excluded.reason",
                &[cidr, reason, &now],
            )
            .await?;
        }
        Edit::UnblockIp(cidr) => {
            tx.execute("DELETE FROM blocked_ip WHERE cidr = $1", &[cidr])
                .await?;
        }
        Edit::SetInfo(field, value) if value.is_empty() => {
            tx.execute(
                "DELETE FROM relay_info_override WHERE key = $1",
                &[&field.key()],
            )
            .await?;
        }
        Edit::SetInfo(field, value) => {
            tx.execute(
                "INSERT INTO relay_info_override (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&field.key(), value],
            )
            .await?;
        }
    }
    tx.execute("UPDATE lists_version SET version = version + 1", &[])
        .await?;
    tx.commit().await?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}

async fn upsert(
    tx: &Transaction<'_>,
    table: &str,
    key: &str,
    value: &[u8; 32],
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    // Table and column names are this module's constants, never input.
    tx.execute(
        &format!(
            "INSERT INTO {table} ({key}, reason, created_at) VALUES ($1, $2, $3)
             ON CONFLICT ({key}) DO UPDATE SET reason = excluded.reason"
        ),
        &[&&value[..], &reason, &now],
    )
    .await?;
    Ok(())
}

async fn remove(
    tx: &Transaction<'_>,
    table: &str,
    key: &str,
    value: &[u8; 32],
) -> Result<(), StoreError> {
    tx.execute(
        &format!("DELETE FROM {table} WHERE {key} = $1"),
        &[&&value[..]],
    )
    .await?;
    Ok(())
}

/// Whether the kind allow list (relay.toml's and the database's) is
/// non-empty, and whether it holds `kind`.
async fn allow_list(
    tx: &Transaction<'_>,
    kind: i32,
    seed: &[u16],
) -> Result<(bool, bool), StoreError> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM allowed_kind),
                    EXISTS (SELECT 1 FROM allowed_kind WHERE kind = $1)",
            &[&kind],
        )
        .await?;
    let stored_any: bool = row.try_get(0)?;
    let stored_this: bool = row.try_get(1)?;
    let seeded = u16::try_from(kind).is_ok_and(|k| seed.contains(&k));
    Ok((stored_any || !seed.is_empty(), stored_this || seeded))
}

/// `allowkind`, as `store::lists::allow_kind`.
async fn allow_kind(
    tx: &Transaction<'_>,
    kind: u16,
    seed: &[u16],
    now: i64,
) -> Result<(), StoreError> {
    let kind = i32::from(kind);
    let was_denied = tx
        .execute("DELETE FROM disallowed_kind WHERE kind = $1", &[&kind])
        .await?
        > 0;
    let (restricted, listed) = allow_list(tx, kind, seed).await?;
    if !was_denied || (restricted && !listed) {
        tx.execute(
            "INSERT INTO allowed_kind (kind, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&kind, &now],
        )
        .await?;
    }
    Ok(())
}

/// `disallowkind`, as `store::lists::disallow_kind`.
async fn disallow_kind(
    tx: &Transaction<'_>,
    kind: u16,
    seed: &[u16],
    now: i64,
) -> Result<(), StoreError> {
    let kind = i32::from(kind);
    let was_allowed = tx
        .execute("DELETE FROM allowed_kind WHERE kind = $1", &[&kind])
        .await?
        > 0;
    let (restricted, listed) = allow_list(tx, kind, seed).await?;
    let still_allowed = !restricted || listed;
    if !was_allowed || still_allowed {
        tx.execute(
            "INSERT INTO disallowed_kind (kind, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&kind, &now],
        )
        .await?;
    }
    Ok(())
}

/// NIP-56: records each event a kind-1984 report names in an `e` tag, in
/// the report's own transaction (as `store::lists::record_report`).
pub(super) async fn record_report(
    tx: &(impl GenericClient + Sync),
    report: &Event,
) -> Result<(), tokio_postgres::Error> {
    for tag in report
        .tags
        .iter()
        .filter(|tag| tag.len() >= 2 && tag[0] == "e")
    {
        let Some(target) = decode_lower::<32>(&tag[1]) else {
            continue;
        };
        let reason = report_reason(tag, &report.content);
        tx.execute(
            "INSERT INTO moderation_report (event_id, reporter, report_id, reason, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (event_id, reporter) DO UPDATE SET report_id = excluded.report_id,
                 reason = excluded.reason, created_at = excluded.created_at",
            &[
                &&target[..],
                &&report.pubkey[..],
                &&report.id[..],
                &reason,
                &report.created_at,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Reported events not yet banned nor allowed, newest report first (as
/// `store::lists::reports`).
pub(super) async fn reports(client: &Client) -> Result<Vec<Report>, StoreError> {
    let rows = client
        .query(
            "SELECT r.event_id, r.reason FROM moderation_report r
             WHERE EXISTS (SELECT 1 FROM event e WHERE e.id = r.report_id)
               AND NOT EXISTS (SELECT 1 FROM banned_event b WHERE b.id = r.event_id)
             ORDER BY r.created_at DESC LIMIT $1",
            &[&MAX_REPORTS_LISTED],
        )
        .await?;
    let rows = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    Ok(group_reports(rows))
}
