//! Retention (`[retention]` rules, `nostr-relayd prune`) as clients see
//! it, on both backends (`retention_on_postgres.rs`): the background task
//! in a relay that keeps serving writes, and the command run by the real
//! binary beside a running relay. What went is checked the way clients see
//! it (REQ, COUNT, NIP-50 search) and in the database itself (no tag or
//! search row left behind). The size cap measures SQLite's pages in use
//! and PostgreSQL's stored JSON. What works on the SQLite file itself
//! (vacuum, backup) is in `retention_sqlite.rs`.

mod common;
#[path = "retention/helpers.rs"]
mod helpers;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use helpers::*;
use nostr::prelude::*;
use nostr_relayd::config::KindSelector;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_task_prunes_old_events_of_ruled_kinds_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.sqlite");
    let now = now();
    let old = now - 40 * DAY;
    let alice = Keys::generate();
    let owner = Keys::generate();
    let tagged: &[&[&str]] = &[&["t", "zebra"]];
    // Alice's old notes and the owner's, interleaved in time, so that the
    // batches (2 events each) have exempt events to step over.
    let mut alice_old = Vec::new();
    let mut owner_old = Vec::new();
    for i in 0..6 {
        alice_old.push(event(
            &alice,
            1,
            &format!("zebrafish old {i}"),
            tagged,
            old + i * 60,
        ));
        if i % 3 == 0 {
            owner_old.push(event(
                &owner,
                1,
                &format!("zebrafish mine {i}"),
                tagged,
                old + i * 60 + 1,
            ));
        }
    }
    let alice_recent: Vec<Event> = (0..3)
        .map(|i| {
            event(
                &alice,
                1,
                &format!("zebrafish new {i}"),
                tagged,
                now - DAY + i,
            )
        })
        .collect();
    let untouched = vec![
        event(&alice, 7, "+", &[], old),
        event(&alice, 7, "+", &[], old + 1),
        event(&alice, 0, r#"{"name":"zebrafish alice"}"#, &[], old),
        event(&alice, 30023, "zebrafish article", &[&["d", "a"]], old),
    ];
    let everything: Vec<Event> = [&alice_old, &owner_old, &alice_recent, &untouched]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let search = json!({"search": "zebrafish", "authors": [alice.public_key().to_hex(), owner.public_key().to_hex()]});
    let alice_notes = json!({"authors": [alice.public_key().to_hex()], "kinds": [1]});

    // A relay without rules keeps everything.
    let mut relay = TestRelay::start_with(|c| c.database = db.clone()).await;
    let mut client = relay.client().await;
    publish_all(&mut client, &everything).await;
    assert_eq!(
        client.query("s", vec![search.clone()]).await.len(),
        6 + 2 + 3 + 2
    );
    assert_eq!(count(&mut client, alice_notes.clone()).await, 9);
    drop(client);
    relay.stop().await;

    // The same database under rules: kind 1 for 30 days, the owner exempt.
    let mut relay = TestRelay::start_with(|c| {
        c.database = db.clone();
        c.retention.exempt_pubkeys = vec![owner.public_key().to_bech32().unwrap()];
        c.retention.interval_seconds = 1;
        c.retention.batch_size = 2;
        c.retention.rules = vec![rule(vec![KindSelector::Kind(1)], "30d", 0)];
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = publish_continuously(relay.url.clone(), stop.clone());
    let mut client = relay.client().await;
    let started = Instant::now();
    loop {
        let notes = client.query("poll", vec![alice_notes.clone()]).await;
        if ids_of(&notes) == hex_ids(&alice_recent.iter().collect::<Vec<_>>()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the old notes were not pruned within 20 s: {} left",
            notes.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty(), "the writer got no turn during the prune");

    // Gone from REQ (ids, tags), COUNT and search; everything else kept.
    let old_ids: Vec<String> = alice_old.iter().map(|e| e.id.to_hex()).collect();
    assert!(
        client
            .query("ids", vec![json!({"ids": old_ids})])
            .await
            .is_empty()
    );
    let zebra_tags = client.query("t", vec![json!({"#t": ["zebra"]})]).await;
    let mut kept: Vec<&Event> = owner_old.iter().chain(&alice_recent).collect();
    assert_eq!(ids_of(&zebra_tags), hex_ids(&kept));
    assert_eq!(count(&mut client, alice_notes.clone()).await, 3);
    assert_eq!(count(&mut client, json!({"#t": ["zebra"]})).await, 5);
    kept.extend(untouched.iter().filter(|e| e.kind != Kind::Reaction));
    assert_eq!(
        ids_of(&client.query("s", vec![search]).await),
        hex_ids(&kept)
    );
    let reactions = json!({"authors": [alice.public_key().to_hex()], "kinds": [7]});
    assert_eq!(count(&mut client, reactions).await, 2, "kind 7 has no rule");
    drop(client);
    relay.stop().await;
    assert_no_orphans(&relay.stored());
    let stored = stored_ids(&relay.stored());
    assert!(acked.iter().all(|(id, _)| stored.contains(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_newest_per_author_and_a_dry_run_counts_exactly_what_it_deletes() {
    let relay = TestRelay::start().await;
    let db = relay.db.clone();
    let dir = tempfile::tempdir().unwrap();
    let now = now();
    let base = now - 5 * DAY;
    let (alice, bob, carol, owner) = (
        Keys::generate(),
        Keys::generate(),
        Keys::generate(),
        Keys::generate(),
    );
    // Alice's reactions, newest first: 50, 40, two at 30, 20, 10. With 3
    // kept: 50, 40 and the tied one with the lower id (NIP-01's order).
    let at = |secs: u64, n: u64| event(&alice, 7, &format!("+{n}"), &[], base + secs);
    let (tie_a, tie_b) = (at(30, 1), at(30, 2));
    let (tie_kept, tie_pruned) = if tie_a.id.to_hex() < tie_b.id.to_hex() {
        (tie_a.clone(), tie_b.clone())
    } else {
        (tie_b.clone(), tie_a.clone())
    };
    let (r10, r20, r40, r50) = (at(10, 0), at(20, 0), at(40, 0), at(50, 0));
    let bob_reactions: Vec<Event> = (0..2).map(|i| event(&bob, 7, "+", &[], base + i)).collect();
    let owner_reactions: Vec<Event> = (0..5)
        .map(|i| event(&owner, 7, "+", &[], base + i))
        .collect();
    // Rule 2 governs kinds 0 to 100 but 7 (rule 1 names it first) and 62.
    let alice_old_notes: Vec<Event> = (0..4)
        .map(|i| event(&alice, 1, "old", &[], now - 60 * DAY + i))
        .collect();
    let alice_new_note = event(&alice, 1, "new", &[], now - DAY);
    let dave_profile = event(&Keys::generate(), 0, "{}", &[], now - 60 * DAY);
    let carol_vanish = event(&carol, 62, "", &[&["relay", "ALL_RELAYS"]], now - 60 * DAY);
    let mut everything = vec![
        r10.clone(),
        r20.clone(),
        tie_a,
        tie_b,
        r40.clone(),
        r50.clone(),
    ];
    everything.extend(bob_reactions.iter().cloned());
    everything.extend(owner_reactions.iter().cloned());
    everything.extend(alice_old_notes.iter().cloned());
    everything.extend([
        alice_new_note.clone(),
        dave_profile.clone(),
        carol_vanish.clone(),
    ]);
    let mut client = relay.client().await;
    publish_all(&mut client, &everything).await;

    let config = write_config(
        dir.path(),
        &format!(
            "[retention]\nexempt_pubkeys = [\"{}\"]\nmax_database_mb = 64\nrules = [\n  \
             {{ kinds = [7], max_per_author = 3 }},\n  \
             {{ kinds = [\"0-100\"], max_age = \"30d\" }},\n]\n",
            owner.public_key().to_hex()
        ),
    );
    let before = stored_ids(&relay.stored());
    let dry = stdout(&run(&config, &db, &["prune", "--dry-run"]));
    assert_eq!(rule_counts(&dry, "would prune"), vec![3, 5], "{dry}");
    assert!(dry.contains("total: would prune 8 events"), "{dry}");
    assert!(dry.contains("size cap 64.0 MiB: about "), "{dry}");
    assert!(dry.contains("nothing to evict"), "{dry}");
    assert_eq!(
        stored_ids(&relay.stored()),
        before,
        "a dry run deletes nothing"
    );

    // The real run, beside the running relay.
    let report = stdout(&run(&config, &db, &["prune"]));
    assert_eq!(rule_counts(&report, "pruned"), vec![3, 5], "{report}");
    let gone: HashSet<String> = before
        .difference(&stored_ids(&relay.stored()))
        .cloned()
        .collect();
    let expected_gone: HashSet<String> = [&r10, &r20, &tie_pruned, &dave_profile]
        .into_iter()
        .chain(&alice_old_notes)
        .map(|e| e.id.to_hex())
        .collect();
    assert_eq!(gone, expected_gone, "{report}");

    // What clients see.
    let alice_reactions = client
        .query(
            "r",
            vec![json!({"authors": [alice.public_key().to_hex()], "kinds": [7]})],
        )
        .await;
    assert_eq!(ids_of(&alice_reactions), hex_ids(&[&r50, &r40, &tie_kept]));
    let others =
        json!({"authors": [bob.public_key().to_hex(), owner.public_key().to_hex()], "kinds": [7]});
    assert_eq!(count(&mut client, others).await, 7);
    let vanish = client.query("v", vec![json!({"kinds": [62]})]).await;
    assert_eq!(
        ids_of(&vanish),
        hex_ids(&[&carol_vanish]),
        "kind 62 is never pruned"
    );
    let notes = client
        .query(
            "n",
            vec![json!({"authors": [alice.public_key().to_hex()], "kinds": [1]})],
        )
        .await;
    assert_eq!(ids_of(&notes), hex_ids(&[&alice_new_note]));
    // A pruned event is not a deleted one: sent again, it is stored again.
    assert_eq!(client.publish(&r10).await, (true, String::new()));
    assert_no_orphans(&relay.stored());

    // Nothing left to do: a second dry run says so.
    let again = stdout(&run(&config, &db, &["prune", "--dry-run"]));
    assert_eq!(rule_counts(&again, "would prune"), vec![1, 0], "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_cap_evicts_the_oldest_evictable_events_and_never_protected_ones() {
    const CAP_MB: u64 = 1;
    let owner = Keys::generate();
    let relay = TestRelay::start_with(|c| {
        c.retention.exempt_pubkeys = vec![owner.public_key().to_hex()];
        c.retention.max_database_mb = CAP_MB;
        c.retention.interval_seconds = 1;
        c.retention.batch_size = 50;
    })
    .await;
    let now = now();
    let alice = Keys::generate();
    let mut client = relay.client().await;
    // The oldest of all: protected kinds, and the exempt owner's notes.
    let long_ago = now - 100 * DAY;
    let fake_target = "0".repeat(64);
    let protected = vec![
        event(&alice, 0, r#"{"name":"alice"}"#, &[], long_ago),
        event(
            &alice,
            3,
            "",
            &[&["p", &owner.public_key().to_hex()]],
            long_ago,
        ),
        event(&alice, 5, "", &[&["e", &fake_target]], long_ago),
        event(
            &alice,
            10002,
            "",
            &[&["r", "wss://relay.example.com"]],
            long_ago,
        ),
        event(&alice, 10000, "", &[], long_ago),
    ];
    let filler = "lorem ipsum dolor sit amet consectetur ".repeat(40);
    let mine: Vec<Event> = (0..10)
        .map(|i| event(&owner, 1, &format!("{i} {filler}"), &[], long_ago + 10 + i))
        .collect();
    let authors: Vec<Keys> = (0..5).map(|_| Keys::generate()).collect();
    let notes: Vec<Event> = (0..1500u64)
        .map(|i| {
            let author = &authors[i as usize % authors.len()];
            event(
                author,
                1,
                &format!("{i} {filler}"),
                &[&["t", "bulk"]],
                now - 90 * DAY + i * 60,
            )
        })
        .collect();
    publish_all(&mut client, &protected).await;
    publish_all(&mut client, &mine).await;
    publish_all(&mut client, &notes).await;

    let cap = CAP_MB << 20;
    let started = Instant::now();
    while used_bytes(&relay.stored()) > cap {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still {} bytes in use after 30 s (cap {cap})",
            used_bytes(&relay.stored())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = stored_ids(&relay.stored());
    for event in protected.iter().chain(&mine) {
        assert!(
            stored.contains(&event.id.to_hex()),
            "kind {} was evicted",
            event.kind
        );
    }
    let (kept, evicted): (Vec<&Event>, Vec<&Event>) =
        notes.iter().partition(|e| stored.contains(&e.id.to_hex()));
    assert!(
        !kept.is_empty() && !evicted.is_empty(),
        "{} kept",
        kept.len()
    );
    let newest_evicted = evicted.iter().map(|e| e.created_at).max().unwrap();
    let oldest_kept = kept.iter().map(|e| e.created_at).min().unwrap();
    assert!(newest_evicted < oldest_kept, "the oldest go first");
    // Clients see the same.
    let bulk = count(&mut client, json!({"#t": ["bulk"]})).await;
    assert_eq!(bulk, kept.len() as u64);
    let protected_kinds = client
        .query("p", vec![json!({"authors": [alice.public_key().to_hex()]})])
        .await;
    assert_eq!(
        ids_of(&protected_kinds),
        hex_ids(&protected.iter().collect::<Vec<_>>())
    );
    assert_no_orphans(&relay.stored());
}

/// `prune --dry-run` with a size cap says about how many events the cap
/// would evict, and `prune` then evicts about as many, oldest first. On
/// PostgreSQL the cap measures the stored JSON, so the estimate is exact
/// but for the last batch; on SQLite it measures pages, and the estimate
/// gives each event its JSON's share of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_with_a_size_cap_evicts_about_what_its_dry_run_said() {
    const BATCH: u64 = 10;
    let mut relay = TestRelay::start().await;
    let db = relay.db.clone();
    let dir = tempfile::tempdir().unwrap();
    let base = now() - 30 * DAY;
    let profile_keys = Keys::generate();
    let profile = event(&profile_keys, 0, r#"{"name":"oldest"}"#, &[], base - DAY);
    let filler = "sphinx of black quartz, judge my vow ".repeat(50);
    let authors: Vec<Keys> = (0..8).map(|_| Keys::generate()).collect();
    let notes: Vec<Event> = (0..1500u64)
        .map(|i| {
            let author = &authors[i as usize % authors.len()];
            event(author, 1, &format!("{i} {filler}"), &[], base + i * 60)
        })
        .collect();
    let mut client = relay.client().await;
    publish_all(&mut client, std::slice::from_ref(&profile)).await;
    publish_all(&mut client, &notes).await;
    drop(client);
    relay.stop().await;

    let config = write_config(
        dir.path(),
        &format!("[retention]\nmax_database_mb = 1\nbatch_size = {BATCH}\n"),
    );
    let evicted_in = |report: &str, verb: &str| -> u64 {
        let line = report
            .lines()
            .find(|line| line.starts_with("size cap 1.0 MiB:"))
            .unwrap_or_else(|| panic!("no size cap line in:\n{report}"));
        let (_, after) = line
            .split_once(&format!("{verb} "))
            .unwrap_or_else(|| panic!("{verb:?} not in {line:?}"));
        after.split_whitespace().next().unwrap().parse().unwrap()
    };
    let before = stored_ids(&relay.stored());
    let dry = stdout(&run(&config, &db, &["prune", "--dry-run"]));
    let estimated = evicted_in(&dry, "would evict about");
    assert_eq!(
        stored_ids(&relay.stored()),
        before,
        "a dry run deletes nothing"
    );

    let report = stdout(&run(&config, &db, &["prune"]));
    let evicted = evicted_in(&report, "evicted");
    println!("{dry}{report}");
    assert!(used_bytes(&relay.stored()) <= 1 << 20, "{report}");
    let stored = stored_ids(&relay.stored());
    assert_eq!(before.len() - stored.len(), evicted as usize, "{report}");
    assert!(
        stored.contains(&profile.id.to_hex()),
        "a profile is never evicted"
    );
    // Oldest first: the evicted notes are exactly the oldest ones.
    for (index, note) in notes.iter().enumerate() {
        assert_eq!(
            stored.contains(&note.id.to_hex()),
            index as u64 >= evicted,
            "note {index} of {evicted} evicted"
        );
    }
    if on_postgres() {
        assert!(
            (estimated..estimated + BATCH).contains(&evicted),
            "estimated {estimated}, evicted {evicted}"
        );
    } else {
        let (low, high) = (estimated * 3 / 4, estimated * 5 / 4 + BATCH);
        assert!(
            (low..=high).contains(&evicted),
            "estimated {estimated}, evicted {evicted}"
        );
    }
    assert_no_orphans(&relay.stored());
}
