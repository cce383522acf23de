//! Disk full: when the database cannot grow, writes are refused with
//! `OK false "error: …"` (never `OK true` for an event that was not stored),
//! reads keep working, nothing is corrupted, and writes resume by themselves
//! once space is freed. The cap is `storage.max_database_bytes` (SQLite's
//! `max_page_count`), which fails a write exactly as a full disk does.

mod common;

use std::time::Duration;

use common::*;
use nostr::prelude::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_refuses_writes_cleanly_and_recovers() {
    let mut relay = TestRelay::start_with(|c| {
        c.storage.max_database_bytes = 1 << 20;
        c.storage.expiration_sweep_seconds = 1;
    })
    .await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let expires = (now() + 4).to_string();
    let filler = "x".repeat(4000);
    let mut accepted = Vec::new();
    let mut refusal = None;
    // Fill the database with events that expire in a few seconds.
    for i in 0..2000 {
        let e = event(
            &keys,
            1,
            &format!("{i} {filler}"),
            &[&["expiration", &expires]],
            now(),
        );
        let (ok, reason) = client.publish(&e).await;
        if ok {
            assert_eq!(reason, "");
            accepted.push(e.id.to_hex());
        } else {
            refusal = Some(reason);
            break;
        }
    }
    let refusal = refusal.expect("the database filled up");
    assert!(refusal.starts_with("error:"), "{refusal}");
    assert!(refusal.contains("full"), "{refusal}");
    assert!(accepted.len() > 10, "some events fit before the cap");

    // Every OK true is stored and readable while the database is full.
    let mut stored = 0;
    for (n, chunk) in accepted.chunks(200).enumerate() {
        stored += client
            .req(&format!("r{n}"), vec![json!({"ids": chunk})])
            .await
            .len();
    }
    assert_eq!(stored, accepted.len(), "every acknowledged event is there");
    let bigger = note(&keys, &"y".repeat(16_000));
    let (ok, again) = client.publish(&bigger).await;
    assert!(!ok && again.starts_with("error:"), "{again}");
    let found = client
        .req("bigger", vec![json!({"ids": [bigger.id.to_hex()]})])
        .await;
    assert!(found.is_empty(), "a refused event is not stored");

    // The filler expires and is purged; the same big write then succeeds,
    // with no restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut refused_meanwhile = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let retry = note(&keys, &format!("{} {}", now(), "y".repeat(16_000)));
        let (ok, reason) = client.publish(&retry).await;
        if ok {
            let found = client
                .req("retry", vec![json!({"ids": [retry.id.to_hex()]})])
                .await;
            assert_eq!(found.len(), 1);
            break;
        }
        assert!(reason.starts_with("error:"), "{reason}");
        refused_meanwhile += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes did not resume"
        );
    }
    assert!(refused_meanwhile > 0, "the big write waited for the purge");
    client.assert_healthy().await;
    relay.stop().await;
    let conn = rusqlite::Connection::open(&relay.db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// A size-limited tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` where this process may not mount (not root, or no tmpfs).
    fn mount(megabytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// The same, on a real full filesystem (ENOSPC), where `mount` works: a
/// 24 MiB tmpfs is filled with a ballast file, the relay writes until the
/// disk is full, then the ballast is deleted and writes resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_refuses_writes_cleanly_and_recovers() {
    let Some(disk) = Tmpfs::mount(24) else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the max_page_count test covers CI"
        );
        return;
    };
    let database = disk.path.join("relay.sqlite");
    let mut relay = TestRelay::start_with(|c| c.database = database.clone()).await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    // Leave about 4 MiB free.
    let ballast = disk.path.join("ballast");
    let free = fs_free_bytes(&disk.path);
    std::fs::write(&ballast, vec![0u8; (free - (4 << 20)) as usize]).unwrap();

    let filler = "x".repeat(4000);
    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..5000 {
        let e = note(&keys, &format!("{i} {filler}"));
        let (ok, reason) = client.publish(&e).await;
        if ok {
            accepted.push(e.id.to_hex());
        } else {
            refusal = Some(reason);
            break;
        }
    }
    let refusal = refusal.expect("the disk filled up");
    println!(
        "disk full after {} events: {refusal:?} ({} bytes free)",
        accepted.len(),
        fs_free_bytes(&disk.path)
    );
    assert!(refusal.starts_with("error:"), "{refusal}");
    assert!(accepted.len() > 10, "some events fit");

    // Reads keep working, and every OK true is there.
    let mut stored = 0;
    for (n, chunk) in accepted.chunks(200).enumerate() {
        stored += client
            .req(&format!("r{n}"), vec![json!({"ids": chunk})])
            .await
            .len();
    }
    assert_eq!(stored, accepted.len(), "every acknowledged event is there");

    // Space is freed; writes resume by themselves.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let retry = note(&keys, &format!("after {} {filler}", now()));
        let (ok, reason) = client.publish(&retry).await;
        if ok {
            let found = client
                .req("retry", vec![json!({"ids": [retry.id.to_hex()]})])
                .await;
            assert_eq!(found.len(), 1);
            break;
        }
        assert!(reason.starts_with("error:"), "{reason}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes did not resume: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.assert_healthy().await;
    relay.stop().await;
    let conn = rusqlite::Connection::open(&relay.db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let count: i64 = conn
        .query_row("SELECT count(*) FROM event", [], |r| r.get(0))
        .unwrap();
    assert!(count as usize > accepted.len(), "{count} stored");
    drop(conn);
    drop(relay);
}

/// Bytes free on the filesystem holding `path`, from `df`.
fn fs_free_bytes(path: &std::path::Path) -> u64 {
    let output = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap()
}
