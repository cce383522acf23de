//! Small pieces of SQL shared by the writer and the readers.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};

use crate::nostr::hex::{decode_lower, is_hex32};
use crate::nostr::{Event, kind};

/// How a tag value is stored: 64-hex as a 32-byte blob (half the size, and
/// the common case: `e` and `p`), anything else as text. Filters convert
/// their values the same way, so the two always meet.
pub fn tag_value(text: &str) -> SqlValue {
    if is_hex32(text) {
        // Cannot fail: is_hex32 checked the length and the alphabet.
        SqlValue::Blob(decode_lower::<32>(text).map(Vec::from).unwrap_or_default())
    } else {
        SqlValue::Text(text.to_owned())
    }
}

/// True for a tag the store indexes: a single-letter name with a value.
pub fn is_indexed_tag(tag: &[String]) -> bool {
    tag.len() >= 2 && tag[0].len() == 1 && tag[0].as_bytes()[0].is_ascii_alphabetic()
}

/// Whether an `e`-tag deletion by an entitled deleter forbids this event:
/// its author, or for a gift wrap its `p`-tagged recipient (NIP-59).
/// Deletions never apply to deletions (NIP-09).
pub fn is_tombstoned(conn: &Connection, event: &Event) -> rusqlite::Result<bool> {
    if event.kind == kind::DELETION {
        return Ok(false);
    }
    let mut stmt = conn.prepare_cached("SELECT deleter FROM deletion WHERE event_id = ?1")?;
    let deleters = stmt
        .query_map(params![&event.id[..]], |row| row.get::<_, Vec<u8>>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(deleters.iter().any(|deleter| may_delete(event, deleter)))
}

/// NIP-09 entitlement: the author, or a gift wrap's `p`-tagged recipient.
pub fn may_delete(event: &Event, deleter: &[u8]) -> bool {
    // NIP-62: "Publishing a deletion request event (Kind 5) against a
    // request to vanish has no effect."
    if event.kind == kind::REQUEST_TO_VANISH {
        return false;
    }
    if deleter == event.pubkey {
        return true;
    }
    event.kind == kind::GIFT_WRAP
        && event
            .tag_values("p")
            .any(|p| decode_lower::<32>(p).is_some_and(|p| p[..] == *deleter))
}

/// NIP-62: whether the author asked this relay to vanish at or after this
/// event's `created_at`. The request itself is kept as the record (one
/// seek of the (pubkey, kind, created_at) index), so "the deleted events
/// cannot be re-broadcasted into the relay".
pub fn has_vanished(conn: &Connection, event: &Event) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT 1 FROM event WHERE pubkey = ?1 AND kind = ?2 AND created_at >= ?3 LIMIT 1",
    )?;
    stmt.exists(params![
        &event.pubkey[..],
        kind::REQUEST_TO_VANISH,
        event.created_at
    ])
}

/// Whether an `a`-tag deletion covers this version of an address.
pub fn is_address_deleted(conn: &Connection, event: &Event, d: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT until FROM address_deletion WHERE pubkey = ?1 AND kind = ?2 AND d_tag = ?3",
    )?;
    let until: Option<i64> = stmt
        .query_row(params![&event.pubkey[..], event.kind, d], |row| row.get(0))
        .optional()?;
    Ok(until.is_some_and(|until| event.created_at <= until))
}

/// Whether an event with this id is stored.
pub fn exists(conn: &Connection, id: &[u8; 32]) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM event WHERE id = ?1")?;
    stmt.exists(params![&id[..]])
}
