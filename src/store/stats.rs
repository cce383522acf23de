//! How many events the database holds, cheaply at any size: SQLite keeps no
//! row counts, and `count(*)` reads a whole index (seconds at ten million
//! events), so triggers on `event` keep one row per kind in `event_count`
//! (migration 7). They fire on every insert and delete, whoever makes it:
//! the writer, the expiry sweep, a prune, `nostr-relayd sync` in another
//! process. Reading the counts is a handful of rows.

use rusqlite::Connection;

/// The triggers and their table, created with the counts of what is
/// already stored (migration 7's SQL, kept here beside its reader).
pub(super) const MIGRATION: &str = r#"
    CREATE TABLE event_count (
        kind INTEGER PRIMARY KEY,
        n    INTEGER NOT NULL
    );
    INSERT INTO event_count (kind, n) SELECT kind, count(*) FROM event GROUP BY kind;
    CREATE TRIGGER event_count_insert AFTER INSERT ON event BEGIN
        INSERT INTO event_count (kind, n) VALUES (new.kind, 1)
        ON CONFLICT (kind) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER event_count_delete AFTER DELETE ON event BEGIN
        UPDATE event_count SET n = n - 1 WHERE kind = old.kind;
    END;
"#;

/// Events stored per kind (kinds with none left out).
pub fn stored_by_kind(conn: &Connection) -> rusqlite::Result<Vec<(u16, u64)>> {
    conn.prepare_cached("SELECT kind, n FROM event_count WHERE n > 0 ORDER BY kind")?
        .query_map([], |row| {
            let n: i64 = row.get(1)?;
            // The triggers never take a count below zero.
            Ok((row.get(0)?, n.max(0) as u64))
        })?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(conn: &Connection) -> Vec<(u16, u64)> {
        conn.prepare("SELECT kind, count(*) FROM event GROUP BY kind ORDER BY kind")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn insert(conn: &Connection, id: u8, kind: u16) {
        conn.execute(
            "INSERT OR IGNORE INTO event (id, pubkey, created_at, kind, json)
             VALUES (?1, x'00', 1, ?2, '{}')",
            rusqlite::params![vec![id], kind],
        )
        .unwrap();
    }

    #[test]
    fn the_triggers_keep_the_counts_true() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counts.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        super::super::schema::migrate(&mut conn, &path).unwrap();
        for (id, kind) in [(1, 1), (2, 1), (3, 0), (4, 30023), (5, 1)] {
            insert(&conn, id, kind);
        }
        // Ignored inserts (the unique id index) count nothing.
        insert(&conn, 1, 1);
        assert_eq!(
            stored_by_kind(&conn).unwrap(),
            vec![(0, 1), (1, 3), (30023, 1)]
        );
        conn.execute("DELETE FROM event WHERE kind = 1 AND id != x'02'", [])
            .unwrap();
        conn.execute("DELETE FROM event WHERE kind = 0", [])
            .unwrap();
        assert_eq!(stored_by_kind(&conn).unwrap(), counted(&conn));
        assert_eq!(stored_by_kind(&conn).unwrap(), vec![(1, 1), (30023, 1)]);
    }

    #[test]
    fn the_migration_counts_what_is_already_stored() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE event (seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL);
             INSERT INTO event (kind) VALUES (1), (1), (7), (3);",
        )
        .unwrap();
        conn.execute_batch(MIGRATION).unwrap();
        assert_eq!(stored_by_kind(&conn).unwrap(), vec![(1, 2), (3, 1), (7, 1)]);
    }
}
