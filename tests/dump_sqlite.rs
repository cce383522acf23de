//! `nostr-relayd import` and `export` against what only a SQLite file can
//! be: a file that is not a database, and a file capped by
//! `storage.max_database_bytes`. dump.rs holds the semantics, run on both
//! backends.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use common::*;
use nostr::prelude::*;
use tempfile::TempDir;

/// A relay.toml and a database file in a temporary directory.
struct Database {
    _dir: TempDir,
    config: PathBuf,
    db: PathBuf,
}

impl Database {
    fn new(config: &str) -> Database {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, format!("[rate_limit]\nenabled = false\n{config}")).unwrap();
        let db = dir.path().join("relay.sqlite");
        Database {
            _dir: dir,
            config: path,
            db,
        }
    }

    /// `nostr-relayd <args>` on this database with `stdin` piped in:
    /// (exit code, stdout, stderr).
    fn run(&self, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
        let mut child = relayd(&self.config, &self.db)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nostr-relayd");
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.as_bytes().to_vec();
        let writer = std::thread::spawn(move || {
            // The child may stop reading early (an error); that is its answer.
            let _ = input.write_all(&stdin);
        });
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).expect("stdout is UTF-8"),
            String::from_utf8(output.stderr).expect("stderr is UTF-8"),
        )
    }
}

#[test]
fn a_database_file_that_is_not_sqlite_fails_import_and_export_loudly() {
    let dump = format!("{}\n", note(&Keys::generate(), "hi").as_json());
    let broken = Database::new("");
    std::fs::write(&broken.db, vec![7u8; 8192]).unwrap();
    let (code, _, stderr) = broken.run(&["import"], &dump);
    assert_ne!(code, Some(0), "{stderr}");
    let (code, stdout, stderr) = broken.run(&["export"], "");
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stdout.is_empty());
}

/// A database that cannot grow ends the import with status 1; what was
/// committed before stays, and the summary counts exactly that.
#[test]
fn a_full_database_ends_the_import_with_an_error() {
    let database = Database::new("[storage]\nmax_database_bytes = 1048576\n");
    let alice = Keys::generate();
    let filler = "x".repeat(4000);
    let dump: String = (0..1000)
        .map(|i| {
            let e = event(&alice, 1, &format!("{i} {filler}"), &[], now() - 2000 + i);
            format!("{}\n", e.as_json())
        })
        .collect();
    let (code, _, stderr) = database.run(&["import"], &dump);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("error: storing events: the relay's storage is full"),
        "{stderr}"
    );
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("import: "))
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"));
    let stored: usize = summary
        .split("stored ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    // A batch SQLite cannot fit is rolled back whole (never half-stored).
    assert!(stored < 1000, "{summary}");
    let (code, stdout, stderr) = database.run(&["export"], "");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), stored);
}
