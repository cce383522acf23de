//! The SQLite schema, applied by numbered migrations.
//!
//! `PRAGMA user_version` records the last migration applied; a newer binary
//! applies the missing ones in order, each in its own transaction, so an
//! older database is upgraded without losing anything.

use rusqlite::Connection;

/// Migrations in order; migration N (1-based) brings the database to
/// `user_version = N`. Never edit a released one: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: events, their indexed tags, and deletion records.
    r#"
    -- One row per stored event. `seq` is the commit order (AUTOINCREMENT: a
    -- deleted seq is never reused, so "seq > snapshot" means "committed after").
    CREATE TABLE event (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         BLOB    NOT NULL,
        pubkey     BLOB    NOT NULL,
        created_at INTEGER NOT NULL,
        kind       INTEGER NOT NULL,
        -- The address `d` value: "" for replaceable kinds, the first d tag for
        -- addressable ones, NULL for every other kind.
        d_tag      TEXT,
        -- NIP-40 expiration timestamp, when the event has one.
        expires_at INTEGER,
        -- The canonical JSON, served byte for byte.
        json       TEXT    NOT NULL
    );
    -- Each range index ends with expires_at (NULL, one byte, for almost
    -- every event) so that a range scan never reads the table row. There is
    -- no (pubkey, time) nor (time) index: filters without kinds enumerate
    -- the kinds present by a skip-scan and read one range per kind
    -- (store/query.rs), which saves two random index writes per event.
    CREATE UNIQUE INDEX event_id ON event(id);
    CREATE INDEX event_pubkey_kind_time ON event(pubkey, kind, created_at DESC, expires_at);
    -- The kind index also carries the pubkey, for home feeds read as one
    -- scan per kind (store/query.rs, scan_for_authors).
    CREATE INDEX event_kind_time ON event(kind, created_at DESC, expires_at, pubkey);
    -- At most one version per address, enforced by the database itself.
    CREATE UNIQUE INDEX event_address ON event(pubkey, kind, d_tag) WHERE d_tag IS NOT NULL;
    CREATE INDEX event_expiry ON event(expires_at) WHERE expires_at IS NOT NULL;

    -- Single-letter tags' first values. 64-hex values are stored as 32-byte
    -- blobs, everything else as text. The table is its own index: a tag
    -- query is one range of the primary key, newest first, and `kind` rides
    -- along in the row (with expires_at) so that a tag query never looks
    -- up `event` until it loads the JSON of the rows it keeps.
    -- Rows are deleted by their full key, recomputed from the event's tags.
    CREATE TABLE tag (
        name       TEXT    NOT NULL,
        value      BLOB    NOT NULL,
        created_at INTEGER NOT NULL,
        event_seq  INTEGER NOT NULL,
        kind       INTEGER NOT NULL,
        expires_at INTEGER,
        PRIMARY KEY (name, value, created_at, event_seq)
    ) WITHOUT ROWID;

    -- NIP-09 `e`-tag deletions: the target is refused if it arrives later.
    CREATE TABLE deletion (
        event_id BLOB NOT NULL,
        deleter  BLOB NOT NULL,
        PRIMARY KEY (event_id, deleter)
    ) WITHOUT ROWID;

    -- NIP-09 `a`-tag deletions: versions up to `until` are refused.
    CREATE TABLE address_deletion (
        pubkey BLOB    NOT NULL,
        kind   INTEGER NOT NULL,
        d_tag  TEXT    NOT NULL,
        until  INTEGER NOT NULL,
        PRIMARY KEY (pubkey, kind, d_tag)
    ) WITHOUT ROWID;
    "#,
];

/// Brings the database up to the newest schema.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let current = usize::try_from(current).unwrap_or(0);
    if current > MIGRATIONS.len() {
        tracing::warn!(
            database_version = current,
            known = MIGRATIONS.len(),
            "database was written by a newer nostr-relayd"
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = index + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64)?;
        tx.commit()?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

/// The schema version this binary writes.
pub fn latest_version() -> usize {
    MIGRATIONS.len()
}
