//! Retention on the SQLite file itself: `nostr-relayd vacuum` and
//! `backup`, and the commands' refusals on a missing file. The rules and
//! the size cap as clients see them, on both backends, are in
//! `retention.rs`.

mod common;
#[path = "retention/helpers.rs"]
mod helpers;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use helpers::*;
use nostr::prelude::*;
use nostr_relayd::config::KindSelector;

fn open(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_writes_is_complete_consistent_and_keeps_bans_and_tombstones() {
    let relay = TestRelay::start().await;
    let db = relay.db.clone();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut client = relay.client().await;
    let author = Keys::generate();
    let deleted = note(&author, "regretted");
    let deletion = event(&author, 5, "", &[&["e", &deleted.id.to_hex()]], now());
    assert!(client.publish(&deleted).await.0);
    publish_all(&mut client, &[deletion]).await;
    let banned = Keys::generate();
    stdout(&run(
        &config,
        &db,
        &[
            "admin",
            "ban-pubkey",
            &banned.public_key().to_hex(),
            "--reason",
            "spam",
        ],
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let writer = publish_continuously(relay.url.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let backup = dir.path().join("backup.sqlite");
    let backup_started = Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_nostr-relayd"))
        .arg("--config")
        .arg(&config)
        .arg("backup")
        .arg(&backup)
        .env("NOSTR_RELAYD_DB", &db)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let backup_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    let report = stdout(&output);
    assert!(report.contains("integrity_check ok"), "{report}");
    let during = acked
        .iter()
        .filter(|(_, at)| *at > backup_started && *at < backup_done)
        .count();
    let after = acked.iter().filter(|(_, at)| *at > backup_done).count();
    assert!(after > 0, "the writer went on after the backup");

    let copy = open(&backup);
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(copy);
    let in_copy = stored_ids(&sqlite(&backup));
    let missing = acked
        .iter()
        .filter(|(id, at)| *at < backup_started && !in_copy.contains(id))
        .count();
    assert_eq!(
        missing, 0,
        "events acknowledged before the backup are missing"
    );
    let copy = open(&backup);
    let has = |sql: &str, key: &[u8]| -> bool { copy.query_row(sql, [key], |_| Ok(())).is_ok() };
    assert!(has(
        "SELECT 1 FROM deletion WHERE event_id = ?1",
        deleted.id.as_bytes()
    ));
    assert!(has(
        "SELECT 1 FROM banned_pubkey WHERE pubkey = ?1",
        &banned.public_key().to_bytes()
    ));
    drop(copy);
    println!(
        "backup: {} events acknowledged before it, {during} during it, {after} after; {report}",
        acked.iter().filter(|(_, at)| *at < backup_started).count()
    );

    // An existing file is kept unless --force.
    let refused = run(&config, &db, &["backup", backup.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    stdout(&run(
        &config,
        &db,
        &["backup", "--force", backup.to_str().unwrap()],
    ));

    // A relay restored from it still refuses the deleted event and the
    // banned pubkey.
    let restored = TestRelay::start_with(|c| c.database = backup.clone()).await;
    let mut client = restored.client().await;
    let (accepted, reason) = client.publish(&deleted).await;
    assert!(!accepted && reason.contains("deleted"), "{reason}");
    let (accepted, reason) = client.publish(&note(&banned, "let me in")).await;
    assert!(!accepted && reason.contains("banned"), "{reason}");
    client.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_gives_the_space_of_a_large_prune_back() {
    let mut relay = TestRelay::start().await;
    let db = relay.db.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let filler = "the quick brown fox jumps over the lazy dog ".repeat(25);
    let old = now() - 10 * DAY;
    let notes: Vec<Event> = (0..1500)
        .map(|i| event(&keys, 1, &format!("{i} {filler}"), &[], old + i))
        .collect();
    publish_all(&mut client, &notes).await;
    let keep = note(&keys, "recent, kept");
    assert!(client.publish(&keep).await.0);
    drop(client);
    relay.stop().await;

    let config = write_config(
        dir.path(),
        "[retention]\nrules = [{ kinds = [1], max_age = \"1d\" }]\n",
    );
    let size = || std::fs::metadata(&db).unwrap().len();
    let full = size();
    let report = stdout(&run(&config, &db, &["prune"]));
    assert_eq!(rule_counts(&report, "pruned"), vec![1500], "{report}");
    assert!(
        size() >= full,
        "a prune frees pages without shrinking the file"
    );
    assert!(used_bytes(&sqlite(&db)) < full / 2);

    let vacuum = stdout(&run(&config, &db, &["vacuum"]));
    let vacuumed = size();
    println!("{report}{vacuum}file: {full} bytes before, {vacuumed} after");
    assert!(vacuum.starts_with("VACUUM: "), "{vacuum}");
    assert!(vacuumed < full / 2, "{full} → {vacuumed}");
    assert_eq!(stored_ids(&sqlite(&db)), HashSet::from([keep.id.to_hex()]));
    let check: String = open(&db)
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[tokio::test]
async fn the_commands_refuse_what_they_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("absent.sqlite");
    let config = write_config(
        dir.path(),
        "[retention]\nrules = [{ kinds = [1], max_age = \"1y\" }]\n",
    );
    for args in [
        &["prune"][..],
        &["prune", "--dry-run"],
        &["vacuum"],
        &["backup", "x.sqlite"],
    ] {
        let output = run(&config, &db, args);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("no database"),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(!db.exists(), "nothing creates a database by mistake");
    let bad = write_config(
        dir.path(),
        "[retention]\nrules = [{ kinds = [7], max_age = \"6m\" }]\n",
    );
    let output = run(&bad, &db, &["prune"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("retention.rules (rule 1): max_age"),
        "{stderr}"
    );
    let empty = write_config(dir.path(), "");
    let output = run(&empty, &db, &["prune"]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("nothing to prune"),
        "{output:?}"
    );
}

/// Figures, not assertions on speed: a prune of 100,000 events by the
/// background task while a client publishes, with that client's publish
/// latency before and during the prune. Run by hand, in release:
/// `cargo test --release --test retention -- --ignored --nocapture`
/// (`RETENTION_BATCH_SIZE=500` to try another batch size,
/// `RETENTION_VIA=cli` for `nostr-relayd prune` beside the relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (minutes in debug builds); run by hand in release"]
async fn measure_a_prune_of_100k_events_while_a_client_publishes() {
    use nostr_relayd::corpus::Corpus;
    use nostr_relayd::nostr::CanonicalEvent;
    use nostr_relayd::store::{Store, StoreOptions};
    const EVENTS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.sqlite");
    let now = now() as i64;
    let filled = Instant::now();
    {
        // Events 2 to 32 days old (the corpus spreads them over 30 days).
        let mut corpus = Corpus::new(7, 1000, now - 2 * DAY as i64);
        let events = corpus.generate(EVENTS, 2);
        let config = test_config(dir.path());
        let options = StoreOptions {
            durability: config.storage.durability,
            max_database_bytes: 0,
            reader_threads: 1,
            max_write_batch: config.storage.max_write_batch,
            query_timeout: Duration::from_secs(5),
        };
        let store = Arc::new(Store::open(&db, &options, Box::new(|_| {})).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in events.chunks(EVENTS / 64) {
            let (store, chunk) = (store.clone(), chunk.to_vec());
            tasks.spawn(async move {
                for e in chunk {
                    store
                        .insert(Arc::new(CanonicalEvent::new(e.event)))
                        .await
                        .unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        store.close();
    }
    let total: i64 = open(&db)
        .query_row("SELECT count(*) FROM event", [], |row| row.get(0))
        .unwrap();
    println!(
        "filled {total} events in {:.1} s",
        filled.elapsed().as_secs_f64()
    );

    // Every kind the corpus has, older than a day: all of it goes, by the
    // relay's own task, or with RETENTION_VIA=cli by `prune` (the command's
    // code, with its own connection, as from another process).
    let mut retention = nostr_relayd::config::Retention {
        interval_seconds: 3,
        rules: vec![rule(vec![KindSelector::Text("0-65535".into())], "1d", 0)],
        ..Default::default()
    };
    if let Ok(batch) = std::env::var("RETENTION_BATCH_SIZE") {
        retention.batch_size = batch.parse().unwrap();
    }
    let via_cli = std::env::var("RETENTION_VIA").is_ok_and(|via| via == "cli");
    let relay = TestRelay::start_with(|c| {
        c.database = db.clone();
        if !via_cli {
            c.retention = retention.clone();
        }
    })
    .await;
    let command = via_cli.then(|| {
        let mut config = relay.config.clone();
        config.retention = retention;
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_secs(2));
            nostr_relayd::retention::prune_command(&config, false).unwrap()
        })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let latencies: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let publisher = {
        let (url, stop, latencies) = (relay.url.clone(), stop.clone(), latencies.clone());
        tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            let keys = Keys::generate();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let event = note(&keys, &format!("during the prune {n}"));
                let sent = Instant::now();
                assert!(client.publish(&event).await.0);
                latencies.lock().unwrap().push((sent, sent.elapsed()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let counter = open(&db);
    let count_now = || -> i64 {
        counter
            .query_row(
                "SELECT count(*) FROM event WHERE created_at < ?1",
                [now - DAY as i64],
                |row| row.get(0),
            )
            .unwrap()
    };
    let mut prune_started = None;
    let waited = Instant::now();
    loop {
        let left = count_now();
        if left < total && prune_started.is_none() {
            prune_started = Some(Instant::now());
        }
        if left == 0 {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(600),
            "{left} left after 10 min"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let prune_done = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let started = prune_started.unwrap();
    let latencies = latencies.lock().unwrap().clone();
    let summary = |label: &str, during: bool| {
        let mut ms: Vec<f64> = latencies
            .iter()
            .filter(|(at, _)| (*at >= started && *at <= prune_done) == during)
            .map(|(_, d)| d.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let pick = |q: f64| ms[((ms.len() - 1) as f64 * q) as usize];
        println!(
            "{label}: {} publishes, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms.len(),
            pick(0.5),
            pick(0.99),
            pick(1.0)
        );
    };
    println!(
        "pruned {total} events in {:.1} s (first deletion seen to none left, polled every 20 ms)",
        (prune_done - started).as_secs_f64()
    );
    summary("during the prune", true);
    summary("outside it", false);
    if let Some(command) = command {
        print!("prune's report: {}", command.await.unwrap());
    }
}
