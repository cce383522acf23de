//! The SQLite schema, applied by numbered migrations.
//!
//! `PRAGMA user_version` records the last migration applied; a newer binary
//! applies the missing ones in order, each in its own transaction, so an
//! older database is upgraded without losing anything.

use std::path::{Path, PathBuf};

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
    // 2: access lists, NIP-11 overrides and moderation reports (NIP-86).
    r#"
    -- Who may write (access.rs). relay.toml's lists are a read-only seed,
    -- unioned with these at run time; these are what NIP-86 and the admin
    -- CLI edit. Keys are 32-byte blobs, like event ids and pubkeys.
    CREATE TABLE banned_pubkey (
        pubkey     BLOB    PRIMARY KEY,
        reason     TEXT    NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE allowed_pubkey (
        pubkey     BLOB    PRIMARY KEY,
        reason     TEXT    NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Banned event ids: the stored event is deleted and never stored again.
    CREATE TABLE banned_event (
        id         BLOB    PRIMARY KEY,
        reason     TEXT    NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE allowed_kind (
        kind       INTEGER PRIMARY KEY,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE disallowed_kind (
        kind       INTEGER PRIMARY KEY,
        created_at INTEGER NOT NULL
    );
    -- Normalized CIDR text ("10.0.0.0/8", "2001:db8::/32", "1.2.3.4/32").
    CREATE TABLE blocked_ip (
        cidr       TEXT    PRIMARY KEY,
        reason     TEXT    NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- NIP-11 fields set by NIP-86 (name, description, icon); they win over
    -- relay.toml until deleted.
    CREATE TABLE relay_info_override (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    -- NIP-56 reports (kind 1984 `e` tags) for listeventsneedingmoderation:
    -- one row per (reported event, reporter), written with the report.
    CREATE TABLE moderation_report (
        event_id   BLOB    NOT NULL,
        reporter   BLOB    NOT NULL,
        report_id  BLOB    NOT NULL,
        reason     TEXT    NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (event_id, reporter)
    ) WITHOUT ROWID;
    -- Bumped by every list edit, in the edit's transaction. A running relay
    -- polls PRAGMA data_version (which moves on any other connection's
    -- commit, the writer's included) and re-reads the lists only when this
    -- number moved, so an edit by the host CLI is seen within a poll.
    CREATE TABLE lists_version (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO lists_version (id, version) VALUES (1, 0);
    "#,
    // 3: NIP-77 negentropy reads its items, (created_at, id), from one
    // covering index, so a session over a large filter never loads events.
    r#"
    CREATE INDEX event_created_id ON event(created_at, id);
    "#,
    // 4: `nostr-relayd sync` (src/sync/): where each remote, filter and
    // direction was left, and the ids refused in either direction, so that
    // they are not offered again as differences on every run.
    r#"
    CREATE TABLE sync_checkpoint (
        remote         TEXT    NOT NULL,  -- normalized URL
        filter         TEXT    NOT NULL,  -- canonical filter JSON
        direction      TEXT    NOT NULL,  -- 'down' or 'up'
        method         TEXT    NOT NULL,  -- 'negentropy' or 'req', of the last run
        -- down: every remote event with created_at at or below it was
        -- reconciled (a REQ walk later stops an overlap below it).
        synced_through INTEGER,
        -- up: every local event with seq at or below it was offered.
        local_seq      INTEGER,
        -- A REQ walk in progress: its top (down: created_at; up: the newest
        -- seq when it began) and how far down it got (created_at: every
        -- event newer than the cursor is done).
        walk_top       INTEGER,
        walk_cursor    INTEGER,
        updated_at     INTEGER NOT NULL,
        PRIMARY KEY (remote, filter, direction)
    ) WITHOUT ROWID;
    CREATE TABLE sync_refused (
        remote     TEXT    NOT NULL,
        id         BLOB    NOT NULL,
        -- 'down': this relay refused it from the remote (superseded,
        -- deleted, vanished, invalid, banned); 'up': the remote refused it.
        direction  TEXT    NOT NULL,
        -- What the negentropy set and a filter's since/until/authors/kinds
        -- need to know of an event this relay does not keep (pubkey and
        -- kind are NULL for one removed here after it was stored).
        created_at INTEGER NOT NULL,
        pubkey     BLOB,
        kind       INTEGER,
        reason     TEXT    NOT NULL,
        refused_at INTEGER NOT NULL,
        PRIMARY KEY (remote, id)
    ) WITHOUT ROWID;
    "#,
    // 5: NIP-50 search (store/search.rs). A contentless FTS5 index whose
    // rowid is the event's seq: the text lives in `event.json` already, and
    // contentless_delete lets the writer remove a row by seq alone. `text`:
    // the content, or for kind 0 the profile's name, display_name, about and
    // nip05 (never its other keys); `kind` and `author` (hex): one token
    // each, so that a search's kinds and authors are index look-ups too
    // (store/search.rs). `search_kind` records which kinds the index holds;
    // the relay rebuilds it at start when relay.toml's [search] says
    // otherwise. Built here for the default kinds; the profile expression
    // is search.rs's PROFILE_TEXT.
    r#"
    CREATE VIRTUAL TABLE event_search USING fts5(
        text, kind, author,
        content = '',
        contentless_delete = 1,
        tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TABLE search_kind (kind INTEGER PRIMARY KEY);
    INSERT INTO search_kind (kind) VALUES (0), (1), (30023);
    INSERT INTO event_search (rowid, text, kind, author)
    SELECT seq, text, kind, lower(hex(pubkey)) FROM (
        SELECT seq, kind, pubkey,
               CASE WHEN kind = 0 THEN
                   CASE WHEN json_valid(c) THEN CASE WHEN json_type(c) = 'object' THEN
                       concat_ws(char(10),
                           CASE WHEN json_type(c, '$.name') = 'text' THEN json_extract(c, '$.name') END,
                           CASE WHEN json_type(c, '$.display_name') = 'text' THEN json_extract(c, '$.display_name') END,
                           CASE WHEN json_type(c, '$.about') = 'text' THEN json_extract(c, '$.about') END,
                           CASE WHEN json_type(c, '$.nip05') = 'text' THEN json_extract(c, '$.nip05') END)
                   END END
               ELSE c END AS text
        FROM (SELECT seq, kind, pubkey, json_extract(json, '$.content') AS c
              FROM event WHERE kind IN (0, 1, 30023))
    )
    WHERE text != '';
    "#,
    // 6: events stored per kind class, kept
    // by triggers, for /metrics and /stats.json without counting rows
    // (store/stats.rs).
    super::stats::MIGRATION,
];

/// Why the schema could not be brought up to date.
#[derive(Debug)]
pub enum MigrationError {
    /// The database was written by a newer nostr-relayd: never downgrade.
    Newer {
        found: usize,
        known: usize,
    },
    /// Copying the database aside before migrating failed.
    Backup(rusqlite::Error),
    Sql(rusqlite::Error),
}

impl std::fmt::Display for MigrationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationError::Newer { found, known } => write!(
                f,
                "the database has schema version {found}, newer than the {known} this \
                 nostr-relayd knows; refusing to start (run a newer nostr-relayd)"
            ),
            MigrationError::Backup(error) => {
                write!(
                    f,
                    "could not copy the database aside before migrating: {error}"
                )
            }
            MigrationError::Sql(error) => write!(f, "migration failed: {error}"),
        }
    }
}

impl From<rusqlite::Error> for MigrationError {
    fn from(error: rusqlite::Error) -> Self {
        MigrationError::Sql(error)
    }
}

/// Brings the database at `path` up to the newest schema. An existing
/// database is first copied aside (`<path>.pre-v<N>`, a consistent copy made
/// with `VACUUM INTO`), so that a failed or regretted upgrade loses nothing.
/// A database from a newer binary is refused, never silently downgraded.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), MigrationError> {
    apply(conn, path, MIGRATIONS)
}

fn apply(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<(), MigrationError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let current = usize::try_from(current).unwrap_or(0);
    let known = migrations.len();
    if current > known {
        return Err(MigrationError::Newer {
            found: current,
            known,
        });
    }
    if current == known {
        return Ok(());
    }
    if current > 0 {
        let backup = backup_path(path, current);
        conn.execute("VACUUM INTO ?1", [backup.to_string_lossy()])
            .map_err(MigrationError::Backup)?;
        tracing::info!(backup = %backup.display(), from = current, to = known, "copied the database aside before migrating");
    }
    for (index, sql) in migrations.iter().enumerate().skip(current) {
        let version = index + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64)?;
        tx.commit()?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

/// `<db>.pre-v<version>`, or with a numeric suffix if that name is taken.
fn backup_path(path: &Path, version: usize) -> PathBuf {
    let base = format!("{}.pre-v{version}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    candidate
}

/// The schema version this binary writes.
pub fn latest_version() -> usize {
    MIGRATIONS.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "CREATE TABLE note (text TEXT); INSERT INTO note VALUES ('kept');";
    const V2: &str = "ALTER TABLE note ADD COLUMN extra TEXT;";

    #[test]
    fn an_upgrade_copies_the_database_aside_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        apply(&mut conn, &path, &[V1]).unwrap();
        assert!(
            !dir.path().join("m.sqlite.pre-v1").exists(),
            "a new database needs no copy"
        );
        apply(&mut conn, &path, &[V1, V2]).unwrap();
        let copy = Connection::open(dir.path().join("m.sqlite.pre-v1")).unwrap();
        let version: i64 = copy
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        let text: String = copy
            .query_row("SELECT text FROM note", [], |r| r.get(0))
            .unwrap();
        assert_eq!((version, text.as_str()), (1, "kept"));
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        apply(&mut conn, &path, &[V1, V2]).unwrap();
        let error = apply(&mut conn, &path, &[V1]).unwrap_err();
        assert!(
            matches!(error, MigrationError::Newer { found: 2, known: 1 }),
            "{error}"
        );
        assert!(error.to_string().contains("refusing to start"));
    }
}
