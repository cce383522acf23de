//! Work on the database file as a whole: `nostr-relayd backup` (a hot,
//! consistent copy) and `nostr-relayd vacuum` (giving freed pages back to
//! the file system).
//!
//! A backup is SQLite's online backup API run as one step: every page is
//! copied inside one read transaction, so the copy is the database as of
//! one commit, whatever the relay writes meanwhile (in WAL mode a reader
//! never blocks the writer, and the writer never restarts a one-step
//! backup). It carries everything the database holds, not only events:
//! access lists and bans, NIP-09 tombstones, NIP-62 requests, NIP-86
//! overrides, reports, sync checkpoints, the search index.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::backup::{Backup, StepResult};

use super::{StoreError, open_connection, schema};
use crate::config::Durability;

/// Sizes of the database file and its WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSizes {
    pub database: u64,
    pub wal: u64,
}

impl FileSizes {
    /// The sizes on disk now (a missing file counts as 0).
    pub fn of(database: &Path) -> FileSizes {
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        FileSizes {
            database: size(database),
            wal: size(&wal_path(database)),
        }
    }
}

impl fmt::Display for FileSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (WAL {})",
            human_bytes(self.database),
            human_bytes(self.wal)
        )
    }
}

fn wal_path(database: &Path) -> PathBuf {
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// What `vacuum` did.
#[derive(Debug, Clone)]
pub struct VacuumReport {
    /// "VACUUM" or "incremental_vacuum".
    pub method: &'static str,
    pub before: FileSizes,
    pub after: FileSizes,
    /// The final checkpoint could not copy the whole WAL back (a reader
    /// held an old snapshot): the file shrinks at the relay's next
    /// checkpoint.
    pub wal_left: bool,
    pub elapsed: Duration,
}

impl fmt::Display for VacuumReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} before, {} after, in {:.1} s",
            self.method,
            self.before,
            self.after,
            self.elapsed.as_secs_f64()
        )?;
        if self.wal_left {
            writeln!(
                f,
                "the WAL could not be checkpointed completely (a reader is active); \
                 the space comes back at the relay's next checkpoint"
            )?;
        }
        Ok(())
    }
}

/// Gives the free pages of the database back to the file system.
///
/// With `auto_vacuum = INCREMENTAL` that is `PRAGMA incremental_vacuum`:
/// free pages are moved to the end and cut off, quickly, without rewriting
/// the database. Otherwise (the relay's databases: `auto_vacuum = NONE`,
/// which saves the pointer-map pages and their upkeep on every write)
/// `VACUUM` rewrites the whole database: it needs up to twice its size in
/// free space (a temporary copy in `SQLITE_TMPDIR`/`TMPDIR`, then the new
/// pages in the WAL beside the database), and holds the write lock
/// throughout, so a running relay's writes wait and then fail. Stop the
/// relay first.
pub fn vacuum(database: &Path, durability: Durability) -> Result<VacuumReport, StoreError> {
    require_file(database)?;
    let started = Instant::now();
    let conn = open_connection(database, durability, false)?;
    // The relay's connections keep temporary tables in memory; VACUUM's
    // temporary copy of the whole database must go to a file instead.
    conn.pragma_update(None, "temp_store", "FILE")?;
    let checkpoint = |conn: &Connection| -> rusqlite::Result<bool> {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|busy| busy != 0)
    };
    checkpoint(&conn)?;
    let before = FileSizes::of(database);
    let auto_vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |row| row.get(0))?;
    let method = if auto_vacuum == 2 {
        conn.execute_batch("PRAGMA incremental_vacuum")?;
        "incremental_vacuum"
    } else {
        conn.execute_batch("VACUUM")?;
        "VACUUM"
    };
    let wal_left = checkpoint(&conn)?;
    drop(conn);
    Ok(VacuumReport {
        method,
        before,
        after: FileSizes::of(database),
        wal_left,
        elapsed: started.elapsed(),
    })
}

/// What `backup` made.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub events: u64,
    pub schema_version: i64,
    pub elapsed: Duration,
    /// Of which verifying the copy (`PRAGMA integrity_check`).
    pub check: Duration,
}

impl fmt::Display for BackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "backup: {} written, {} ({} events, schema version {}), in {:.1} s \
             (integrity_check ok, {:.1} s of it)",
            self.path.display(),
            human_bytes(self.bytes),
            self.events,
            self.schema_version,
            self.elapsed.as_secs_f64(),
            self.check.as_secs_f64()
        )
    }
}

/// Copies the database at `database` to `target`, consistently, while the
/// relay may be writing to it; checks the copy with `PRAGMA
/// integrity_check`. The copy is written beside `target` and renamed into
/// place once verified and synced, so `target` is never half-written. An
/// existing `target` is refused unless `force`.
pub fn backup(database: &Path, target: &Path, force: bool) -> Result<BackupReport, StoreError> {
    require_file(database)?;
    if target.exists() && !force {
        return Err(StoreError::Other(format!(
            "{} exists; pass --force to overwrite it",
            target.display()
        )));
    }
    let started = Instant::now();
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    remove_if_exists(&partial)?;
    let outcome = copy_and_check(database, &partial);
    let (events, schema_version, check) = match outcome {
        Ok(figures) => figures,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    std::fs::File::open(&partial)
        .and_then(|file| file.sync_all())
        .map_err(io_error(&partial))?;
    std::fs::rename(&partial, target).map_err(io_error(target))?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is synced.
        let _ = std::fs::File::open(dir).and_then(|dir| dir.sync_all());
    }
    Ok(BackupReport {
        path: target.to_path_buf(),
        bytes: std::fs::metadata(target).map_or(0, |m| m.len()),
        events,
        schema_version,
        elapsed: started.elapsed(),
        check,
    })
}

/// The copy itself, then its check: (events, schema version, check time).
fn copy_and_check(database: &Path, partial: &Path) -> Result<(u64, i64, Duration), StoreError> {
    let source = open_connection(database, Durability::Normal, true)?;
    let mut copy = Connection::open(partial)?;
    {
        let backup = Backup::new(&source, &mut copy)?;
        // One step copies every page inside one read transaction: a
        // consistent snapshot. A step that meets a lock (only while another
        // process opens or recovers the database) is retried.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::More => continue,
                _ if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(StoreError::Other(
                        "the database stayed locked for 30 s".into(),
                    ));
                }
            }
        }
    }
    drop(source);
    // A self-contained file: no -wal beside it to lose.
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    let checking = Instant::now();
    let problems: Vec<String> = copy
        .prepare("PRAGMA integrity_check")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if problems != ["ok"] {
        return Err(StoreError::Other(format!(
            "the copy failed PRAGMA integrity_check: {}",
            problems.join("; ")
        )));
    }
    let check = checking.elapsed();
    let events = super::retention::event_count(&copy)?;
    let schema_version: i64 = copy.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if schema_version as usize > schema::latest_version() {
        tracing::warn!(
            schema_version,
            "the database is newer than this nostr-relayd; the copy is exact anyway"
        );
    }
    Ok((events, schema_version, check))
}

fn require_file(database: &Path) -> Result<(), StoreError> {
    if database.is_file() {
        Ok(())
    } else {
        Err(StoreError::Other(format!(
            "no database at {}",
            database.display()
        )))
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io_error(path)(error)),
        _ => Ok(()),
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Other(format!("{}: {error}", path.display()))
}

/// Bytes for people: "512 B", "1.5 MiB", "2.3 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
