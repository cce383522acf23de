//! `nostr-relayd import` and `export` against what only a SQLite file can
//! be: a file that is not a database, a file capped by
//! `storage.max_database_bytes`, and a ban made with `nostr-relayd admin`
//! (which works on the file). dump.rs holds the semantics, run on both
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

/// The `line N: reason` reports of an import's stderr.
fn reports(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("line ")).collect()
}

/// The ids of an export's lines, in order.
fn ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn jsonl(events: &[&Event]) -> String {
    events
        .iter()
        .map(|e| format!("{}\n", e.as_json()))
        .collect()
}

/// A ban promises "never stored again": an import keeps it without
/// --apply-policy too, whether the ban is in relay.toml or made with the
/// admin CLI.
#[test]
fn bans_are_kept_without_apply_policy() {
    let alice = Keys::generate();
    let mallory = Keys::generate();
    let config = format!(
        "[access]\ndenied_pubkeys = [\"{}\"]\n",
        mallory.public_key().to_hex()
    );
    let database = Database::new(&config);
    let banned = event(&alice, 1, "banned later", &[], now() - 20);
    let ham = event(&alice, 1, "ham", &[], now() - 10);
    let spam = event(&mallory, 1, "spam", &[], now() - 10);
    let dump = jsonl(&[&spam, &ham, &banned]);
    let (code, _, stderr) = database.run(&["import"], &dump);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        reports(&stderr),
        ["line 1: blocked: this pubkey is banned on this relay"]
    );
    let (_, stdout, _) = database.run(&["export"], "");
    assert_eq!(ids(&stdout), [ham.id.to_hex(), banned.id.to_hex()]);
    let (code, _, stderr) = database.run(&["admin", "ban-event", &banned.id.to_hex()], "");
    assert_eq!(code, Some(0), "{stderr}");
    let (_, stdout, _) = database.run(&["export"], "");
    assert_eq!(ids(&stdout), [ham.id.to_hex()]);
    let (_, _, stderr) = database.run(&["import"], &dump);
    assert_eq!(
        reports(&stderr),
        [
            "line 1: blocked: this pubkey is banned on this relay",
            "line 3: blocked: this event is banned on this relay"
        ]
    );
    let (_, stdout, _) = database.run(&["export"], "");
    assert_eq!(ids(&stdout), [ham.id.to_hex()]);
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
