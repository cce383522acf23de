//! Reads from a streaming replica (`storage.postgres_replica_url`): a real
//! hot standby of a throwaway PostgreSQL, made by `pg_basebackup -R`. The
//! clients' reads (REQ, COUNT, NIP-77) go to the replica, writes and their
//! checks to the primary: with the standby's replay paused, an event is
//! acknowledged and stored on the primary, delivered live, and not yet
//! returned by a REQ or counted, until replay resumes.

mod common;

use std::time::{Duration, Instant};

use common::services::Postgres;
use common::*;
use nostr::prelude::*;
use nostr_relayd::config::Backend;
use serde_json::json;

/// Waits until a REQ for `id` returns it (the replica replayed it).
async fn until_served(client: &mut Client, id: &str) {
    let started = Instant::now();
    loop {
        let found = client.query("wait", vec![json!({"ids": [id]})]).await;
        if found.len() == 1 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the replica never served {id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_read_from_the_replica_and_write_to_the_primary() {
    let primary = Postgres::start();
    let url = primary.create_database();
    let standby = primary.start_standby();
    let name = url.rsplit('/').next().unwrap().to_owned();
    let replica_url = standby.url(&name);
    assert_eq!(
        standby.sql(&replica_url, "SELECT pg_is_in_recovery()"),
        "t",
        "the standby is a replica"
    );

    let relay = TestRelay::start_with(|c| {
        c.storage.backend = Backend::Postgres;
        c.storage.postgres_url = url.clone();
        c.storage.postgres_replica_url = replica_url.clone();
    })
    .await;
    let keys = Keys::generate();
    let mut client = relay.client().await;
    let first = note(&keys, "replicated");
    assert_eq!(client.publish(&first).await, (true, String::new()));
    until_served(&mut client, &first.id.to_hex()).await;

    // Replay paused: the replica stands still while the primary moves on.
    standby.sql(&replica_url, "SELECT pg_wal_replay_pause()");
    let mut live = relay.client().await;
    live.send_text(json!(["REQ", "live", {"authors": [keys.public_key().to_hex()]}]).to_string())
        .await;
    loop {
        let message = live.recv().await;
        if message[0] == "EOSE" {
            break;
        }
    }
    let second = note(&keys, "written while the replica is paused");
    assert_eq!(
        client.publish(&second).await,
        (true, String::new()),
        "writes go to the primary"
    );
    let on_primary = primary.sql(
        &url,
        &format!(
            "SELECT count(*) FROM event WHERE id = '\\x{}'::bytea",
            second.id.to_hex()
        ),
    );
    assert_eq!(on_primary, "1", "committed on the primary");
    let delivered = live.recv().await;
    assert_eq!(delivered[0], "EVENT", "{delivered}");
    assert_eq!(delivered[2]["id"], second.id.to_hex(), "delivered live");

    let served = client
        .query(
            "paused",
            vec![json!({"authors": [keys.public_key().to_hex()]})],
        )
        .await;
    let served: Vec<&str> = served.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        served,
        [first.id.to_hex()],
        "a REQ reads the paused replica, which has only the first event"
    );
    let counted = client
        .count("n", vec![json!({"authors": [keys.public_key().to_hex()]})])
        .await;
    assert_eq!(
        counted[2]["count"], 1,
        "COUNT reads the replica too: {counted}"
    );
    // The check before a write reads the primary: the second event is a
    // duplicate there although the replica has not seen it yet.
    let (accepted, reason) = client.publish(&second).await;
    assert!(accepted && reason.starts_with("duplicate:"), "{reason}");

    standby.sql(&replica_url, "SELECT pg_wal_replay_resume()");
    until_served(&mut client, &second.id.to_hex()).await;
    client.assert_healthy().await;
}
