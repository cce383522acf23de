//! Crash injection: ingest at full speed, SIGKILL the relay at a random
//! moment (often in the middle of a group commit), restart it, and check
//! that nothing acknowledged was lost and the database is sound.
//!
//! `CRASH_ROUNDS` sets the number of rounds (CI runs 5; run 50 by hand:
//! `CRASH_ROUNDS=50 cargo test --release --test crash -- --nocapture`).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use nostr_relayd::corpus::{Corpus, CorpusEvent};
use nostr_relayd::nostr::Event;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

/// (pubkey, kind, d) of a replaceable or addressable event.
type Address = ([u8; 32], u16, String);

fn shipped_config() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/relay.toml"))
}

/// Realistic events plus addressable ones (kind 30023, a few `d` values,
/// versions out of order) so that replacement is exercised under crashes.
fn round_events(corpus: &mut Corpus, round: u64, count: usize) -> Vec<CorpusEvent> {
    let mut events = corpus.generate(count, 2);
    let mut rng = StdRng::seed_from_u64(round);
    for i in 0..count / 10 {
        let (author, mut event) = corpus.next_unsigned();
        event.kind = 30023;
        let d = format!("article-{}", rng.random_range(0..5));
        event.tags = vec![vec!["d".into(), d]];
        event.created_at = 1_700_000_000 + rng.random_range(0..1000) + i as i64;
        event.id = event.compute_id();
        events.push(corpus.sign(author, event));
    }
    events
}

/// Publishes from 8 connections, 16 in flight each, until the relay dies;
/// returns the ids (hex) that got `OK true`.
async fn ingest_until_killed(url: &str, events: &[CorpusEvent]) -> HashSet<String> {
    let mut tasks = Vec::new();
    for chunk in events.chunks(events.len().div_ceil(8)) {
        let url = url.to_owned();
        let chunk: Vec<String> = chunk.iter().map(|e| e.json.clone()).collect();
        tasks.push(tokio::spawn(async move {
            let mut acked = HashSet::new();
            let Ok((mut ws, _)) =
                tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await
            else {
                return acked;
            };
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::Message;
            let mut next = 0;
            let mut in_flight = 0;
            loop {
                while in_flight < 16 && next < chunk.len() {
                    let frame = format!(r#"["EVENT",{}]"#, chunk[next]);
                    if ws.send(Message::text(frame)).await.is_err() {
                        return acked;
                    }
                    next += 1;
                    in_flight += 1;
                }
                if in_flight == 0 {
                    return acked;
                }
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let message: serde_json::Value =
                            serde_json::from_str(text.as_str()).unwrap();
                        if message[0] == "OK" {
                            in_flight -= 1;
                            if message[2] == true {
                                acked.insert(message[1].as_str().unwrap().to_owned());
                            }
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => return acked, // killed
                }
            }
        }));
    }
    let mut acked = HashSet::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_sigkill() {
    let rounds: u64 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.sqlite");
    let mut corpus = Corpus::new(7, 300, now() as i64);
    let mut rng = StdRng::seed_from_u64(99);
    let mut all_acked: HashMap<String, Event> = HashMap::new();
    let mut total_acked = 0;
    for round in 0..rounds {
        let events = round_events(&mut corpus, round, 3000);
        let by_id: HashMap<String, &CorpusEvent> =
            events.iter().map(|e| (e.event.id_hex(), e)).collect();
        let mut relay = RelayProcess::spawn(&shipped_config(), &db).await;
        let kill_after = Duration::from_millis(rng.random_range(50..600));
        let url = relay.url.clone();
        let ingest = tokio::spawn({
            let events = events.clone();
            async move { ingest_until_killed(&url, &events).await }
        });
        tokio::time::sleep(kill_after).await;
        relay.kill();
        let acked = ingest.await.unwrap();
        total_acked += acked.len();
        for id in &acked {
            all_acked.insert(id.clone(), by_id[id].event.clone());
        }

        // The database is sound and keeps one version per address (on
        // PostgreSQL, the database standing for this file).
        let mut config = nostr_relayd::Config {
            database: db.clone(),
            ..nostr_relayd::Config::default()
        };
        use_backend(&mut config);
        if !on_postgres() {
            let conn = rusqlite::Connection::open(&db).unwrap();
            let check: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok", "round {round}");
        }
        let doubled = StoredDb::open(&config).integer(
            "SELECT count(*) FROM (SELECT 1 FROM event WHERE d_tag IS NOT NULL
             GROUP BY pubkey, kind, d_tag HAVING count(*) > 1) doubled",
        );
        assert_eq!(doubled, 0, "round {round}: two versions of one address");

        // Every acknowledged event is there, unless a newer version of its
        // address replaced it; and no address holds an older version than
        // one that was acknowledged.
        let relay = RelayProcess::spawn(&shipped_config(), &db).await;
        let mut client = Client::connect(&relay.url).await;
        let ids: Vec<String> = all_acked.keys().cloned().collect();
        let mut stored: HashMap<String, serde_json::Value> = HashMap::new();
        for (n, chunk) in ids.chunks(500).enumerate() {
            for e in client
                .query(&format!("c{n}"), vec![json!({"ids": chunk, "limit": 500})])
                .await
            {
                stored.insert(e["id"].as_str().unwrap().to_owned(), e);
            }
        }
        let mut newest: HashMap<Address, (i64, [u8; 32])> = HashMap::new();
        for event in all_acked.values() {
            if let Some(d) = event.address_d() {
                let key = (event.pubkey, event.kind, d.to_owned());
                let candidate = (event.created_at, event.id);
                let entry = newest.entry(key).or_insert(candidate);
                if (candidate.0, std::cmp::Reverse(candidate.1))
                    > (entry.0, std::cmp::Reverse(entry.1))
                {
                    *entry = candidate;
                }
            }
        }
        // What each address holds now. A version may have been committed
        // without its OK reaching the client before the kill: it may then
        // hold a newer version than any acknowledged one, never an older one.
        let authors: Vec<String> = newest
            .keys()
            .map(|(pubkey, _, _)| hex::encode(pubkey))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut holds: HashMap<Address, (i64, [u8; 32])> = HashMap::new();
        for (n, chunk) in authors.chunks(100).enumerate() {
            let filter = json!({"authors": chunk, "kinds": [0, 3, 30023], "limit": 1000});
            for value in client.query(&format!("a{n}"), vec![filter]).await {
                let event = Event::from_value(&value).unwrap();
                let d = event.address_d().unwrap_or_default().to_owned();
                holds.insert((event.pubkey, event.kind, d), (event.created_at, event.id));
            }
        }
        for (id, event) in &all_acked {
            match event.address_d() {
                None => assert!(
                    stored.contains_key(id),
                    "round {round}: acknowledged event {id} lost"
                ),
                Some(d) => {
                    let address = (event.pubkey, event.kind, d.to_owned());
                    let (created_at, newest_id) = newest[&address];
                    let held = holds.get(&address).copied();
                    let held_is_newer = held.is_some_and(|(t, held_id)| {
                        (t, std::cmp::Reverse(held_id))
                            >= (created_at, std::cmp::Reverse(newest_id))
                    });
                    assert!(
                        held_is_newer,
                        "round {round}: address of {id} holds {held:?}, older than acknowledged"
                    );
                }
            }
        }
        client.assert_healthy().await;
        drop(relay);
    }
    assert!(
        total_acked > 0,
        "no event was acknowledged before a kill: the rounds checked nothing"
    );
    println!("crash injection: {rounds} rounds, {total_acked} events acknowledged, 0 lost");
}
