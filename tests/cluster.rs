//! A cluster of three real `nostr-relayd` processes (nodes "a", "b", "c")
//! sharing one PostgreSQL database and one NATS server, all started here
//! on loopback (tests/common/services.rs): live delivery across nodes with
//! no duplicates, a replaceable race between two nodes, SIGKILL of a node
//! while clients publish to the others, a NATS outage (backfilled, or a
//! CLOSED "error: …", never silence), and a node started while NATS is down.
//! Bounds are generous timeouts, not speed assertions. Events are built and
//! signed with the independent `nostr` crate.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::services::{Nats, Postgres};
use common::*;
use nostr::prelude::*;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Longest wait for an event to cross from one node to another (or for a
/// node to reconnect to NATS): an outer bound, not a speed target.
const CROSSING: Duration = Duration::from_secs(30);

/// The nodes' log filter: warnings, less the start-up advice about
/// relay_url that every node would print.
const LOG: &str = "warn,nostr_relayd::server=error";

/// The node names, in order.
const NAMES: [&str; 3] = ["a", "b", "c"];

/// One PostgreSQL database and one NATS server, and the nodes on them.
struct Cluster {
    nats: Nats,
    database: String,
    dir: TempDir,
    nodes: HashMap<&'static str, RelayProcess>,
}

impl Cluster {
    /// A database and NATS server with no node yet.
    fn services() -> Cluster {
        Cluster {
            nats: Nats::start(),
            database: Postgres::shared().create_database(),
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: HashMap::new(),
        }
    }

    /// Nodes a, b and c, each connected to the others through NATS.
    async fn start() -> Cluster {
        let mut cluster = Cluster::services();
        for name in NAMES {
            cluster.start_node(name).await;
        }
        cluster.wait_until_connected(&NAMES).await;
        cluster
    }

    /// This node's relay.toml: PostgreSQL, NATS, its name.
    fn config(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        let text = format!(
            "[storage]\nbackend = \"postgres\"\npostgres_url = \"{}\"\npostgres_pool_size = 4\n\
             [cluster]\nnats_url = \"{}\"\nsubject_prefix = \"cluster-test\"\nnode_name = \"{name}\"\n\
             [rate_limit]\nenabled = false\n",
            self.database, self.nats.url
        );
        std::fs::write(&path, text).expect("write the node's relay.toml");
        path
    }

    /// Starts node `name` (the real binary) and waits until it listens.
    async fn start_node(&mut self, name: &'static str) {
        let config = self.config(name);
        // The SQLite path is unused (backend = "postgres"), but the binary
        // is given one as every RelayProcess is.
        let db = self.dir.path().join(format!("{name}.sqlite"));
        let node = RelayProcess::spawn_logging(&config, &db, LOG, Stdio::inherit()).await;
        self.nodes.insert(name, node);
    }

    fn url(&self, name: &str) -> String {
        self.nodes[name].url.clone()
    }

    async fn client(&self, name: &str) -> Client {
        Client::connect(&self.url(name)).await
    }

    /// Waits until an event published on each of `names` reaches a live
    /// subscriber on each of the others: every node has seen every other's
    /// messages (and heartbeats) through NATS.
    async fn wait_until_connected(&self, names: &[&str]) {
        let keys = Keys::generate();
        let mut subscribers = Vec::new();
        for name in names {
            let mut client = self.client(name).await;
            client
                .req(
                    "warm-up",
                    vec![json!({"authors": [keys.public_key().to_hex()]})],
                )
                .await;
            subscribers.push((*name, client));
        }
        for from in names {
            let mut publisher = self.client(from).await;
            let deadline = tokio::time::Instant::now() + CROSSING;
            // NATS subscriptions may not be in place yet: publish again
            // until one gets through to every other node.
            'attempts: loop {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {from} did not reach the others through NATS within {CROSSING:?}"
                );
                let probe = note(&keys, &format!("warm-up from {from} {}", rand_suffix()));
                assert_eq!(publisher.publish(&probe).await, (true, String::new()));
                for (name, subscriber) in subscribers.iter_mut() {
                    let arrived = next_event(subscriber, "warm-up", Duration::from_secs(2)).await;
                    // Earlier probes may arrive late: read up to this one.
                    let mut arrived = arrived;
                    while let Some(event) = &arrived {
                        if event["id"] == probe.id.to_hex() {
                            break;
                        }
                        arrived = next_event(subscriber, "warm-up", Duration::from_secs(2)).await;
                    }
                    if arrived.is_none() {
                        assert_ne!(name, from, "node {from} did not deliver its own event");
                        continue 'attempts;
                    }
                }
                break;
            }
        }
    }
}

/// A few random characters, so that probes differ.
fn rand_suffix() -> String {
    Keys::generate().public_key().to_hex()[..8].to_owned()
}

/// The next `["EVENT", sub, …]` on `client` within `wait` (other messages
/// skipped, a CLOSED of `sub` fails the test); None when none came.
async fn next_event(client: &mut Client, sub: &str, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, client.recv())
            .await
            .ok()?;
        match message[0].as_str() {
            Some("EVENT") if message[1] == sub => return Some(message[2].clone()),
            Some("CLOSED") if message[1] == sub => panic!("subscription closed: {message}"),
            _ => {}
        }
    }
}

/// Reads live events of `sub` until every id in `expected` has arrived
/// (within [`CROSSING`]), then checks that nothing more comes: each exactly
/// once, nothing else.
async fn expect_live_once(client: &mut Client, sub: &str, expected: &HashSet<String>, node: &str) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + CROSSING;
    while !expected.iter().all(|id| seen.contains_key(id)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = next_event(client, sub, left).await else {
            let missing: Vec<&String> = expected
                .iter()
                .filter(|id| !seen.contains_key(*id))
                .collect();
            panic!(
                "node {node}: {} events never arrived live: {missing:?}",
                missing.len()
            );
        };
        *seen
            .entry(event["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    client.expect_silence(Duration::from_millis(1500)).await;
    for (id, times) in &seen {
        assert!(expected.contains(id), "node {node}: unexpected event {id}");
        assert_eq!(*times, 1, "node {node}: event {id} delivered {times} times");
    }
}

/// The ids among `ids` that a REQ on `client` returns (in chunks, under
/// the relay's per-filter limit).
async fn stored_ids(client: &mut Client, ids: &[String]) -> HashSet<String> {
    let mut found = HashSet::new();
    for (n, chunk) in ids.chunks(200).enumerate() {
        let events = client
            .query(&format!("ids{n}"), vec![json!({"ids": chunk})])
            .await;
        found.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_an_event_published_on_one_node_reaches_every_node_once() {
    let cluster = Cluster::start().await;
    let alice = Keys::generate();
    let filter = json!({"kinds": [1], "authors": [alice.public_key().to_hex()]});
    let mut subscribers = Vec::new();
    for name in NAMES {
        let mut client = cluster.client(name).await;
        assert!(client.req("live", vec![filter.clone()]).await.is_empty());
        subscribers.push((name, client));
    }

    // One event on A: live on A, B and C, once each; stored for C's REQs.
    let mut on_a = cluster.client("a").await;
    let first = note(&alice, "published on a");
    assert_eq!(on_a.publish(&first).await, (true, String::new()));
    let expected = HashSet::from([first.id.to_hex()]);
    for (name, subscriber) in subscribers.iter_mut() {
        expect_live_once(subscriber, "live", &expected, name).await;
    }
    let mut on_c = cluster.client("c").await;
    let found = on_c
        .query("stored", vec![json!({"ids": [first.id.to_hex()]})])
        .await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["content"], "published on a");

    // Events from every node at once: each subscriber gets each once.
    let mut publishers = Vec::new();
    for name in NAMES {
        publishers.push(cluster.client(name).await);
    }
    let mut expected = HashSet::new();
    for round in 0..10 {
        for (publisher, name) in publishers.iter_mut().zip(NAMES) {
            let event = note(&alice, &format!("round {round} on {name}"));
            expected.insert(event.id.to_hex());
            publisher
                .send_text(format!(r#"["EVENT",{}]"#, event.as_json()))
                .await;
        }
    }
    for publisher in publishers.iter_mut() {
        for _ in 0..10 {
            let ok = publisher.recv().await;
            assert_eq!((&ok[0], &ok[2]), (&json!("OK"), &json!(true)), "{ok}");
        }
    }
    for (name, subscriber) in subscribers.iter_mut() {
        expect_live_once(subscriber, "live", &expected, name).await;
    }
    let ids: Vec<String> = expected.iter().cloned().collect();
    for name in NAMES {
        let mut reader = cluster.client(name).await;
        assert_eq!(
            stored_ids(&mut reader, &ids).await,
            expected,
            "REQ on {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_replaceable_race_between_nodes_keeps_the_newer_version() {
    let cluster = Cluster::start().await;
    let mut on_a = cluster.client("a").await;
    let mut on_b = cluster.client("b").await;
    let mut readers = Vec::new();
    for name in NAMES {
        readers.push((name, cluster.client(name).await));
    }
    let base = now() - 1000;
    for round in 0..30u64 {
        let keys = Keys::generate();
        let created_at = base + round;
        // Every third round a tie: the same created_at, the lowest id wins.
        let older_at = if round % 3 == 2 {
            created_at
        } else {
            created_at - 1
        };
        let v1 = event(
            &keys,
            0,
            &format!("{{\"name\":\"old {round}\"}}"),
            &[],
            older_at,
        );
        let v2 = event(
            &keys,
            0,
            &format!("{{\"name\":\"new {round}\"}}"),
            &[],
            created_at,
        );
        let winner = if older_at == created_at {
            std::cmp::min_by_key(&v1, &v2, |e| e.id.to_hex())
        } else {
            &v2
        };
        // Alternate which node gets which version; send both before
        // reading either answer, so that the writers race.
        let (first, second) = if round % 2 == 0 {
            (&v1, &v2)
        } else {
            (&v2, &v1)
        };
        on_a.send_text(format!(r#"["EVENT",{}]"#, first.as_json()))
            .await;
        on_b.send_text(format!(r#"["EVENT",{}]"#, second.as_json()))
            .await;
        let answer_a = on_a.ok_for(&first.id.to_hex()).await;
        let answer_b = on_b.ok_for(&second.id.to_hex()).await;
        let winner_answer = if std::ptr::eq(winner, first) {
            &answer_a
        } else {
            &answer_b
        };
        assert!(
            winner_answer.0,
            "round {round}: the winner was refused: {winner_answer:?}"
        );

        let filter = json!({"kinds": [0], "authors": [keys.public_key().to_hex()]});
        for (name, reader) in readers.iter_mut() {
            let found = reader.query("profile", vec![filter.clone()]).await;
            let ids: Vec<&str> = found.iter().map(|e| e["id"].as_str().unwrap()).collect();
            assert_eq!(
                ids,
                vec![winner.id.to_hex()],
                "round {round} on node {name}: answers a {answer_a:?}, b {answer_b:?}"
            );
        }
        let rows = Postgres::shared().sql(
            &cluster.database,
            &format!(
                "SELECT count(*) FROM event WHERE kind = 0 AND pubkey = '\\x{}'::bytea",
                keys.public_key().to_hex()
            ),
        );
        assert_eq!(rows, "1", "round {round}: one stored version");
    }
}

/// Publishes `events` one after another on a fresh connection to `url`
/// until the connection dies; returns the ids answered `OK true`.
async fn publish_until_closed(url: String, events: Vec<Event>) -> Vec<String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut acked = Vec::new();
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
        return acked;
    };
    for event in events {
        let frame = format!(r#"["EVENT",{}]"#, event.as_json());
        if ws.send(Message::text(frame)).await.is_err() {
            return acked;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let message: Value = serde_json::from_str(text.as_str()).unwrap();
                    if message[0] == "OK" && message[1] == event.id.to_hex() {
                        if message[2] == true {
                            acked.push(event.id.to_hex());
                        }
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => return acked, // the node died
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_sigkill_of_a_node_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start().await;
    let keys = Keys::generate();

    // Two writers per node; a's never run out before the kill, b's and
    // c's go on after it.
    let mut tasks = Vec::new();
    for (n, name) in ["a", "b", "c", "a", "b", "c"].into_iter().enumerate() {
        let count = if name == "a" { 5000 } else { 400 };
        let events: Vec<Event> = (0..count)
            .map(|i| note(&keys, &format!("writer {n} on {name}, note {i}")))
            .collect();
        tasks.push(tokio::spawn(publish_until_closed(
            cluster.url(name),
            events,
        )));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.nodes.get_mut("a").unwrap().kill();
    let mut acked = Vec::new();
    let mut by_writer = Vec::new();
    for task in tasks {
        let ids = task.await.unwrap();
        by_writer.push(ids.len());
        acked.extend(ids);
    }
    eprintln!("acknowledged per writer (a, b, c, a, b, c): {by_writer:?}");
    assert!(
        by_writer[0] < 5000 && by_writer[3] < 5000,
        "a was killed while its writers published: {by_writer:?}"
    );
    for n in [1, 2, 4, 5] {
        assert_eq!(
            by_writer[n], 400,
            "the writers to b and c went on: {by_writer:?}"
        );
    }

    // Everything acknowledged, by any node, is served by b and c.
    let acked_set: HashSet<String> = acked.iter().cloned().collect();
    for name in ["b", "c"] {
        let mut reader = cluster.client(name).await;
        let found = stored_ids(&mut reader, &acked).await;
        let lost: Vec<&String> = acked_set.difference(&found).collect();
        assert!(
            lost.is_empty(),
            "node {name} lost {} acknowledged events: {lost:?}",
            lost.len()
        );
    }

    // b and c keep serving, and keep fanning out to each other.
    let later = Keys::generate();
    let mut watcher = cluster.client("c").await;
    let author = json!({"authors": [later.public_key().to_hex()]});
    assert!(watcher.req("watch", vec![author]).await.is_empty());
    let mut on_b = cluster.client("b").await;
    let after = note(&later, "after the kill");
    assert_eq!(on_b.publish(&after).await, (true, String::new()));
    let deadline = tokio::time::Instant::now() + CROSSING;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = next_event(&mut watcher, "watch", left)
            .await
            .expect("c still receives b's events live after a was killed");
        if event["id"] == after.id.to_hex() {
            break;
        }
    }
    cluster.client("c").await.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_nats_outage_is_backfilled_or_closed_never_silent() {
    let mut cluster = Cluster::start().await;
    let keys = Keys::generate();
    let filter = json!({"authors": [keys.public_key().to_hex()]});
    let mut on_c = cluster.client("c").await;
    assert!(on_c.req("live", vec![filter.clone()]).await.is_empty());
    let mut on_a = cluster.client("a").await;

    cluster.nats.stop();
    let during = note(&keys, "published while NATS is down");
    assert_eq!(
        on_a.publish(&during).await,
        (true, String::new()),
        "a node without NATS still stores what it is sent"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nats.restart();

    // After NATS is back, c's subscriber gets the missed event (backfill)
    // or is told it may have missed events: never silence.
    let deadline = tokio::time::Instant::now() + CROSSING;
    let outcome = loop {
        let message = tokio::time::timeout_at(deadline, on_c.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("c neither delivered the missed event nor closed the subscription")
            });
        match message[0].as_str() {
            Some("EVENT") if message[1] == "live" => {
                assert_eq!(message[2]["id"], during.id.to_hex(), "{message}");
                break "backfilled";
            }
            Some("CLOSED") if message[1] == "live" => {
                let reason = message[2].as_str().unwrap();
                assert!(reason.starts_with("error:"), "{reason}");
                break "closed";
            }
            _ => {}
        }
    };
    eprintln!("after the NATS outage: {outcome}");
    // Not twice (a backfill and a late NATS delivery, say).
    on_c.expect_silence(Duration::from_millis(1500)).await;

    // Either way the event is stored, and live delivery works again: on a
    // new subscription, and on the old one if it was not closed.
    assert_eq!(on_c.req("live-2", vec![filter.clone()]).await.len(), 1);
    let after = note(&keys, "published after NATS is back");
    assert_eq!(on_a.publish(&after).await, (true, String::new()));
    let mut waiting: HashSet<&str> = HashSet::from(["live-2"]);
    if outcome == "backfilled" {
        waiting.insert("live");
    }
    let deadline = tokio::time::Instant::now() + CROSSING;
    while !waiting.is_empty() {
        let message = tokio::time::timeout_at(deadline, on_c.recv())
            .await
            .unwrap_or_else(|_| panic!("live delivery did not resume on {waiting:?}"));
        if message[0] == "EVENT" {
            assert_eq!(message[2]["id"], after.id.to_hex(), "{message}");
            let sub = message[1].as_str().unwrap();
            assert!(waiting.remove(sub), "unexpected or repeated: {message}");
        } else {
            panic!("unexpected {message}");
        }
    }
    on_c.expect_silence(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_node_started_while_nats_is_down_serves_its_clients() {
    let mut cluster = Cluster::services();
    cluster.nats.stop();
    cluster.start_node("a").await;
    let keys = Keys::generate();
    let filter = json!({"authors": [keys.public_key().to_hex()]});
    let mut subscriber = cluster.client("a").await;
    assert!(
        subscriber
            .req("live", vec![filter.clone()])
            .await
            .is_empty()
    );
    let mut publisher = cluster.client("a").await;
    let alone = note(&keys, "no NATS yet");
    assert_eq!(publisher.publish(&alone).await, (true, String::new()));
    let arrived = next_event(&mut subscriber, "live", CROSSING)
        .await
        .expect("the node's own subscribers get its events without NATS");
    assert_eq!(arrived["id"], alone.id.to_hex());
    let found = publisher
        .query("stored", vec![json!({"ids": [alone.id.to_hex()]})])
        .await;
    assert_eq!(found.len(), 1);

    // Once NATS is up, the node joins the cluster without a restart.
    cluster.nats.restart();
    cluster.start_node("b").await;
    cluster.wait_until_connected(&["a", "b"]).await;
    subscriber.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_events_committed_before_a_node_first_hears_the_other_reach_it() {
    // a commits once with NATS up; b starts while NATS is down, so it has
    // never heard a when a commits again.
    let mut cluster = Cluster::services();
    cluster.start_node("a").await;
    let keys = Keys::generate();
    let mut on_a = cluster.client("a").await;
    let before = note(&Keys::generate(), "before b started");
    assert_eq!(on_a.publish(&before).await, (true, String::new()));
    cluster.nats.stop();
    cluster.start_node("b").await;
    let filter = json!({"authors": [keys.public_key().to_hex()]});
    let mut on_b = cluster.client("b").await;
    assert!(on_b.req("live", vec![filter]).await.is_empty());
    let mut expected = HashSet::new();
    for n in 0..5 {
        let event = note(&keys, &format!("on a while b has no NATS, {n}"));
        assert_eq!(on_a.publish(&event).await, (true, String::new()));
        expected.insert(event.id.to_hex());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nats.restart();

    // b's subscriber gets each of them once, or is told it may have missed
    // events: never silence.
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + CROSSING;
    let outcome = loop {
        if seen == expected {
            break "delivered";
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b delivered {} of 5 events and did not close the subscription",
            seen.len()
        );
        // Shorter than Client::recv's own limit, so that silence fails
        // with the message above.
        let wait = tokio::time::timeout(Duration::from_secs(5), on_b.recv());
        let Ok(message) = wait.await else { continue };
        match message[0].as_str() {
            Some("EVENT") if message[1] == "live" => {
                let id = message[2]["id"].as_str().unwrap().to_owned();
                assert!(expected.contains(&id), "unexpected {message}");
                assert!(seen.insert(id), "delivered twice: {message}");
            }
            Some("CLOSED") if message[1] == "live" => {
                let reason = message[2].as_str().unwrap();
                assert!(reason.starts_with("error:"), "{reason}");
                break "closed";
            }
            _ => {}
        }
    };
    eprintln!("events a committed before b first heard it: {outcome}");
    on_b.expect_silence(Duration::from_millis(1500)).await;
}
