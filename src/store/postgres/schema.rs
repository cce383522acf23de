//! The PostgreSQL schema, applied by numbered migrations.
//!
//! `schema_version` records each migration applied. Nodes starting together
//! take one session-level advisory lock first, so exactly one of them
//! migrates and the others find the work done; each migration runs in its
//! own transaction. A database migrated by a newer binary is refused.

use tokio_postgres::Client;

use crate::store::StoreError;

/// The advisory lock key every node takes while migrating (an arbitrary
/// constant: "nrlyd-mg" in ASCII).
const MIGRATION_LOCK: i64 = 0x6e72_6c79_642d_6d67;

/// Migrations in order; migration N (1-based) is recorded as version N.
/// Never edit a released one: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: events, tags, deletions, node sequences, search kinds, per-class
    // counts, access lists.
    r#"
    -- One row per stored event. `seq` is insertion order only: two nodes'
    -- transactions commit in any order, so it is not the commit order.
    CREATE TABLE event (
        seq         bigserial PRIMARY KEY,
        id          bytea   NOT NULL,
        pubkey      bytea   NOT NULL,
        created_at  bigint  NOT NULL,
        kind        integer NOT NULL,
        -- '' for replaceable kinds, the first d tag for addressable ones,
        -- NULL for every other kind.
        d_tag       bytea,
        -- NIP-40 expiration, when the event has one.
        expires_at  bigint,
        -- The node that committed it, and that node's commit sequence:
        -- the cluster backfills a gap by these.
        origin_node text    NOT NULL,
        origin_seq  bigint  NOT NULL,
        -- The canonical JSON, served byte for byte.
        json        text    NOT NULL,
        -- NIP-50 text (to_tsvector('simple', …)); NULL unless the kind is
        -- in search_kind.
        search      tsvector
    );
    CREATE UNIQUE INDEX event_id ON event (id);
    -- The ranges a REQ reads (postgres/query.rs) end in created_at DESC, id
    -- (NIP-01 order, ties by id). The two a home feed reads carry what the
    -- read tests and returns (expiry, seq; pubkey for the kind scan), so
    -- that they are index-only scans where the visibility map allows.
    CREATE INDEX event_pubkey_kind_time ON event (pubkey, kind, created_at DESC, id)
        INCLUDE (expires_at, seq);
    CREATE INDEX event_pubkey_time ON event (pubkey, created_at DESC, id);
    CREATE INDEX event_kind_time ON event (kind, created_at DESC, id)
        INCLUDE (pubkey, expires_at, seq);
    CREATE INDEX event_time ON event (created_at DESC, id);
    -- At most one version per address, enforced by the database itself.
    CREATE UNIQUE INDEX event_address ON event (pubkey, kind, d_tag) WHERE d_tag IS NOT NULL;
    CREATE INDEX event_expiry ON event (expires_at) WHERE expires_at IS NOT NULL;
    CREATE UNIQUE INDEX event_origin ON event (origin_node, origin_seq);
    CREATE INDEX event_search ON event USING gin (search) WHERE search IS NOT NULL;

    -- Single-letter tags' values, encoded by postgres::tag_bytes: a
    -- 64-char lowercase-hex value as its 32 raw bytes, any other value as
    -- its UTF-8 bytes plus one 0xFF byte when those are exactly 32 long.
    CREATE TABLE tag (
        name       text    NOT NULL,
        value      bytea   NOT NULL,
        created_at bigint  NOT NULL,
        event_seq  bigint  NOT NULL REFERENCES event (seq) ON DELETE CASCADE,
        kind       integer NOT NULL,
        PRIMARY KEY (name, value, created_at, event_seq)
    );
    CREATE INDEX tag_event ON tag (event_seq);

    -- NIP-09 `e`-tag deletions: the target is refused if it arrives later.
    CREATE TABLE deletion (
        event_id bytea NOT NULL,
        deleter  bytea NOT NULL,
        PRIMARY KEY (event_id, deleter)
    );
    -- NIP-09 `a`-tag deletions: versions up to `until` are refused.
    CREATE TABLE address_deletion (
        pubkey bytea   NOT NULL,
        kind   integer NOT NULL,
        d_tag  bytea   NOT NULL,
        until  bigint  NOT NULL,
        PRIMARY KEY (pubkey, kind, d_tag)
    );

    -- Each node's commit sequence, bumped in each writer transaction: it
    -- never goes back, even when the newest events are later deleted.
    CREATE TABLE node_sequence (
        node     text   PRIMARY KEY,
        last_seq bigint NOT NULL
    );

    -- The kinds whose events have `search` filled (relay.toml's [search]).
    CREATE TABLE search_kind (kind integer PRIMARY KEY);
    INSERT INTO search_kind (kind) VALUES (0), (1), (30023);

    -- Events stored per kind class (0 regular, 1 replaceable, 2 ephemeral,
    -- 3 addressable) for /metrics without counting rows. Each connection
    -- that writes keeps rows of its own (keyed by its application_name),
    -- so that two nodes' writers never wait on one hot row; the count of a
    -- class is the sum of its rows.
    CREATE TABLE event_class_count (
        writer text    NOT NULL,
        class  integer NOT NULL,
        n      bigint  NOT NULL,
        PRIMARY KEY (writer, class)
    );
    CREATE FUNCTION event_class_of(kind integer) RETURNS integer
        LANGUAGE sql IMMUTABLE STRICT AS $$
        SELECT CASE WHEN kind IN (0, 3) OR kind BETWEEN 10000 AND 19999 THEN 1
                    WHEN kind BETWEEN 20000 AND 29999 THEN 2
                    WHEN kind BETWEEN 30000 AND 39999 THEN 3
                    ELSE 0 END
    $$;
    CREATE FUNCTION event_class_count_update() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO event_class_count (writer, class, n)
                VALUES (current_setting('application_name'), event_class_of(NEW.kind), 1)
                ON CONFLICT (writer, class) DO UPDATE SET n = event_class_count.n + 1;
            ELSE
                INSERT INTO event_class_count (writer, class, n)
                VALUES (current_setting('application_name'), event_class_of(OLD.kind), -1)
                ON CONFLICT (writer, class) DO UPDATE SET n = event_class_count.n - 1;
            END IF;
            RETURN NULL;
        END
    $$;
    CREATE TRIGGER event_class_count AFTER INSERT OR DELETE ON event
        FOR EACH ROW EXECUTE FUNCTION event_class_count_update();

    -- Access lists, NIP-11 overrides and NIP-56 reports: the same tables
    -- and meaning as SQLite's migration 2 (store/schema.rs).
    CREATE TABLE banned_pubkey (
        pubkey     bytea  PRIMARY KEY,
        reason     text   NOT NULL DEFAULT '',
        created_at bigint NOT NULL
    );
    CREATE TABLE allowed_pubkey (
        pubkey     bytea  PRIMARY KEY,
        reason     text   NOT NULL DEFAULT '',
        created_at bigint NOT NULL
    );
    CREATE TABLE banned_event (
        id         bytea  PRIMARY KEY,
        reason     text   NOT NULL DEFAULT '',
        created_at bigint NOT NULL
    );
    CREATE TABLE allowed_kind (
        kind       integer PRIMARY KEY,
        created_at bigint  NOT NULL
    );
    CREATE TABLE disallowed_kind (
        kind       integer PRIMARY KEY,
        created_at bigint  NOT NULL
    );
    CREATE TABLE blocked_ip (
        cidr       text   PRIMARY KEY,
        reason     text   NOT NULL DEFAULT '',
        created_at bigint NOT NULL
    );
    CREATE TABLE relay_info_override (
        key   text PRIMARY KEY,
        value text NOT NULL
    );
    CREATE TABLE moderation_report (
        event_id   bytea  NOT NULL,
        reporter   bytea  NOT NULL,
        report_id  bytea  NOT NULL,
        reason     text   NOT NULL,
        created_at bigint NOT NULL,
        PRIMARY KEY (event_id, reporter)
    );
    CREATE TABLE lists_version (
        id      integer PRIMARY KEY CHECK (id = 1),
        version bigint  NOT NULL
    );
    INSERT INTO lists_version (id, version) VALUES (1, 0);
    "#,
    // 2: the stored JSON's bytes per kind class (retention.max_database_mb
    // measures them: the files keep a deleted row's space), and
    // `nostr-relayd sync`'s checkpoints and refusals, as SQLite's
    // migration 4 has them.
    r#"
    ALTER TABLE event_class_count ADD COLUMN bytes bigint NOT NULL DEFAULT 0;
    CREATE OR REPLACE FUNCTION event_class_count_update() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO event_class_count (writer, class, n, bytes)
                VALUES (current_setting('application_name'), event_class_of(NEW.kind), 1,
                        octet_length(NEW.json))
                ON CONFLICT (writer, class) DO UPDATE
                    SET n = event_class_count.n + 1,
                        bytes = event_class_count.bytes + excluded.bytes;
            ELSE
                INSERT INTO event_class_count (writer, class, n, bytes)
                VALUES (current_setting('application_name'), event_class_of(OLD.kind), -1,
                        -octet_length(OLD.json))
                ON CONFLICT (writer, class) DO UPDATE
                    SET n = event_class_count.n - 1,
                        bytes = event_class_count.bytes + excluded.bytes;
            END IF;
            RETURN NULL;
        END
    $$;
    -- The events stored before this migration, under a writer of their own.
    INSERT INTO event_class_count (writer, class, n, bytes)
        SELECT 'migration 2', event_class_of(kind), 0, sum(octet_length(json))
        FROM event GROUP BY event_class_of(kind);

    CREATE TABLE sync_checkpoint (
        remote         text   NOT NULL,  -- normalized URL
        filter         text   NOT NULL,  -- canonical filter JSON
        direction      text   NOT NULL,  -- 'down' or 'up'
        method         text   NOT NULL,  -- 'negentropy' or 'req', of the last run
        -- down: every remote event with created_at at or below it was
        -- reconciled.
        synced_through bigint,
        -- up: every local event with seq at or below it was offered.
        local_seq      bigint,
        -- A REQ walk in progress: its top and how far down it got.
        walk_top       bigint,
        walk_cursor    bigint,
        updated_at     bigint NOT NULL,
        PRIMARY KEY (remote, filter, direction)
    );
    CREATE TABLE sync_refused (
        remote     text   NOT NULL,
        id         bytea  NOT NULL,
        -- 'down': this relay refused it from the remote; 'up': the remote
        -- refused it.
        direction  text   NOT NULL,
        created_at bigint NOT NULL,
        pubkey     bytea,
        kind       integer,
        reason     text   NOT NULL,
        refused_at bigint NOT NULL,
        PRIMARY KEY (remote, id)
    );
    "#,
];

/// Brings the database up to the newest schema, under an advisory lock
/// so that nodes starting together migrate once.
pub(super) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let outcome = apply(client, MIGRATIONS).await;
    // Released by hand: the writer's connection lives on. Should the
    // unlock fail, the connection is broken and its locks went with it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    outcome
}

async fn apply(client: &mut Client, migrations: &[&str]) -> Result<(), StoreError> {
    // Looked up first: `IF NOT EXISTS` alone makes the server send a
    // NOTICE, logged at every start.
    let created: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !created {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_version (
                     version    integer     PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await?;
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?;
    let current: i32 = row.try_get(0)?;
    let current = usize::try_from(current).unwrap_or(0);
    let known = migrations.len();
    if current > known {
        return Err(StoreError::Other(format!(
            "the database has schema version {current}, newer than the {known} this \
             nostr-relayd knows; refusing to start (run a newer nostr-relayd)"
        )));
    }
    for (index, sql) in migrations.iter().enumerate().skip(current) {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "applied PostgreSQL migration");
    }
    Ok(())
}

/// The schema version this binary writes.
#[cfg(test)]
pub(super) fn latest_version() -> usize {
    MIGRATIONS.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_two_keeps_json_bytes_and_the_sync_tables() {
        assert!(MIGRATIONS[1].contains("ADD COLUMN bytes"));
        for table in ["sync_checkpoint", "sync_refused"] {
            assert!(
                MIGRATIONS[1].contains(&format!("CREATE TABLE {table} (")),
                "{table}"
            );
        }
    }

    #[test]
    fn migration_one_creates_the_planned_tables() {
        assert_eq!(latest_version(), 2);
        for table in [
            "event",
            "tag",
            "deletion",
            "address_deletion",
            "node_sequence",
            "search_kind",
            "event_class_count",
            "banned_pubkey",
            "allowed_pubkey",
            "banned_event",
            "allowed_kind",
            "disallowed_kind",
            "blocked_ip",
            "relay_info_override",
            "moderation_report",
            "lists_version",
        ] {
            assert!(
                MIGRATIONS[0].contains(&format!("CREATE TABLE {table} (")),
                "{table}"
            );
        }
    }
}
