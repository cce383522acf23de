//! How many events the database holds, cheaply at any size: SQLite keeps no
//! row counts, and `count(*)` reads a whole index (seconds at ten million
//! events), so triggers on `event` keep one row per kind class in
//! `event_class_count` (migration 6). They fire on every insert and delete,
//! whoever makes it: the writer, the expiry sweep, a prune, `nostr-relayd
//! sync` in another process. Reading the counts is four rows.
//!
//! The triggers only UPDATE rows made by the migration. An INSERT in a
//! trigger (an upsert, or INSERT OR IGNORE) would make every insert into
//! `event` keep a statement journal, a copy of each page it changes:
//! measured at 10 µs per event, a third of the insert, against 1 µs for
//! the UPDATE.

use rusqlite::Connection;

use crate::nostr::KindClass;

/// The kind classes by their number in `event_class_count`.
pub const CLASSES: [KindClass; 4] = [
    KindClass::Regular,
    KindClass::Replaceable,
    KindClass::Ephemeral,
    KindClass::Addressable,
];

/// The class number (an index into [`CLASSES`]) of the kind in `$kind`, an
/// SQL expression: `KindClass::of` in SQL (a test checks every kind).
macro_rules! class_of {
    ($kind:literal) => {
        concat!(
            "CASE WHEN ",
            $kind,
            " IN (0, 3) OR ",
            $kind,
            " BETWEEN 10000 AND 19999 THEN 1 WHEN ",
            $kind,
            " BETWEEN 20000 AND 29999 THEN 2 WHEN ",
            $kind,
            " BETWEEN 30000 AND 39999 THEN 3 ELSE 0 END"
        )
    };
}

/// The table, its counts of what is already stored, and the triggers
/// (migration 6's SQL, kept here beside its reader). It may run again
/// (tests roll `user_version` back to replay older migrations): it then
/// counts afresh.
pub(super) const MIGRATION: &str = concat!(
    "
    CREATE TABLE IF NOT EXISTS event_class_count (
        class INTEGER PRIMARY KEY, -- 0 regular, 1 replaceable, 2 ephemeral, 3 addressable
        n     INTEGER NOT NULL
    );
    INSERT OR REPLACE INTO event_class_count (class, n) VALUES (0, 0), (1, 0), (2, 0), (3, 0);
    UPDATE event_class_count SET n = counted.n
    FROM (SELECT ",
    class_of!("kind"),
    " AS class, count(*) AS n FROM event GROUP BY 1) AS counted
    WHERE event_class_count.class = counted.class;
    CREATE TRIGGER IF NOT EXISTS event_class_count_insert AFTER INSERT ON event BEGIN
        UPDATE event_class_count SET n = n + 1 WHERE class = ",
    class_of!("new.kind"),
    ";
    END;
    CREATE TRIGGER IF NOT EXISTS event_class_count_delete AFTER DELETE ON event BEGIN
        UPDATE event_class_count SET n = n - 1 WHERE class = ",
    class_of!("old.kind"),
    ";
    END;
"
);

/// Events stored per kind class, in [`CLASSES`] order.
pub fn stored_by_class(conn: &Connection) -> rusqlite::Result<[u64; 4]> {
    let mut counts = [0; 4];
    let mut stmt = conn.prepare_cached("SELECT class, n FROM event_class_count")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let class: i64 = row.get(0)?;
        let n: i64 = row.get(1)?;
        if let Some(count) = usize::try_from(class).ok().and_then(|c| counts.get_mut(c)) {
            // The triggers never take a count below zero.
            *count = n.max(0) as u64;
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_count(conn: &Connection) -> [u64; 4] {
        let mut counts = [0; 4];
        let mut stmt = conn.prepare("SELECT kind FROM event").unwrap();
        let kinds = stmt.query_map([], |row| row.get::<_, u16>(0)).unwrap();
        for kind in kinds {
            let class = KindClass::of(kind.unwrap());
            counts[CLASSES.iter().position(|c| *c == class).unwrap()] += 1;
        }
        counts
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
    fn the_sql_classes_every_kind_as_kind_class_does() {
        let conn = Connection::open_in_memory().unwrap();
        let sql = concat!(
            "WITH RECURSIVE k(kind) AS (SELECT 0 UNION ALL SELECT kind + 1 FROM k WHERE kind < 65535) SELECT kind, ",
            class_of!("kind"),
            " FROM k"
        );
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt
            .query_map([], |row| Ok((row.get::<_, u16>(0)?, row.get::<_, u8>(1)?)))
            .unwrap();
        let mut seen = 0;
        for row in rows {
            let (kind, class) = row.unwrap();
            assert_eq!(
                CLASSES[usize::from(class)],
                KindClass::of(kind),
                "kind {kind}"
            );
            seen += 1;
        }
        assert_eq!(seen, 65536);
    }

    #[test]
    fn the_triggers_keep_the_counts_true() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counts.sqlite");
        let mut conn = Connection::open(&path).unwrap();
        super::super::schema::migrate(&mut conn, &path).unwrap();
        for (id, kind) in [(1, 1), (2, 1), (3, 0), (4, 30023), (5, 10002), (6, 20001)] {
            insert(&conn, id, kind);
        }
        // Ignored inserts (the unique id index) count nothing.
        insert(&conn, 1, 1);
        assert_eq!(stored_by_class(&conn).unwrap(), [2, 2, 1, 1]);
        assert_eq!(stored_by_class(&conn).unwrap(), by_count(&conn));
        conn.execute("DELETE FROM event WHERE kind IN (1, 20001)", [])
            .unwrap();
        conn.execute("DELETE FROM event WHERE kind = 0", [])
            .unwrap();
        assert_eq!(stored_by_class(&conn).unwrap(), [0, 1, 0, 1]);
        assert_eq!(stored_by_class(&conn).unwrap(), by_count(&conn));
    }

    #[test]
    fn the_migration_counts_what_is_already_stored() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE event (seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL);
             INSERT INTO event (kind) VALUES (1), (1), (7), (3), (30000), (39999);",
        )
        .unwrap();
        conn.execute_batch(MIGRATION).unwrap();
        assert_eq!(stored_by_class(&conn).unwrap(), [3, 1, 0, 2]);
        // Run again, it counts afresh, and the triggers are not doubled.
        conn.execute_batch(MIGRATION).unwrap();
        assert_eq!(stored_by_class(&conn).unwrap(), [3, 1, 0, 2]);
        conn.execute("INSERT INTO event (kind) VALUES (40000)", [])
            .unwrap();
        assert_eq!(stored_by_class(&conn).unwrap(), [4, 1, 0, 2]);
    }
}
