//! The `nostr-relayd admin` CLI beside a running relay: it works on the
//! SQLite file (with storage.backend = "postgres" it refuses, pointing to
//! the NIP-86 API), so these tests are SQLite-only; management.rs holds
//! the NIP-86 semantics, run on both backends.

mod common;
mod nip86;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nip86::*;
use nostr::prelude::*;
use serde_json::json;

#[tokio::test]
async fn blocking_the_admins_own_address_is_undone_from_the_host() {
    let admin = Keys::generate();
    let relay = relay_with_admin(&admin, |_| {}).await;
    ok(&relay, &admin, "blockip", json!(["127.0.0.1/32"])).await;
    // The API itself is now out of reach from 127.0.0.1…
    assert!(client_from("127.0.0.1", &relay).await.is_err());
    // …and the host CLI, working on the database, reaches the running
    // relay through the data_version watcher.
    let config = write_config(relay.db.parent().unwrap(), "");
    let out = admin_cli(&config, &relay.db, &["unblock-ip", "127.0.0.1"]);
    assert!(out.status.success(), "{out:?}");
    let started = Instant::now();
    while client_from("127.0.0.1", &relay).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the relay did not see the CLI's unblock within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_cli_bans_a_pubkey_in_a_running_relay_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.sqlite");
    let config = write_config(dir.path(), "");
    let relay = RelayProcess::spawn(&config, &db).await;
    let author = Keys::generate();
    let mut client = Client::connect(&relay.url).await;
    assert!(client.publish(&note(&author, "before")).await.0);

    let npub = author.public_key().to_bech32().unwrap();
    let out = admin_cli(&config, &db, &["ban-pubkey", &npub, "--reason", "spam"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&author.public_key().to_hex()));
    let started = Instant::now();
    loop {
        let event = note(&author, &format!("during {:?}", started.elapsed()));
        let answer = client.publish(&event).await;
        if is_blocked(&answer) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the running relay still accepts the banned pubkey: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let list = admin_cli(&config, &db, &["list"]);
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.status.success() && listed.contains(&author.public_key().to_hex()),
        "{listed}"
    );
    assert!(listed.contains("spam"), "{listed}");

    let out = admin_cli(
        &config,
        &db,
        &["unban-pubkey", &author.public_key().to_hex()],
    );
    assert!(out.status.success(), "{out:?}");
    let started = Instant::now();
    loop {
        let answer = client
            .publish(&note(&author, &format!("after {:?}", started.elapsed())))
            .await;
        if answer.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still banned: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bad input is refused with a message and a failure status.
    let out = admin_cli(&config, &db, &["ban-pubkey", "nonsense"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a pubkey"));
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("cli-relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn admin_cli(config: &Path, db: &Path, args: &[&str]) -> std::process::Output {
    relayd(config, db)
        .arg("admin")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run nostr-relayd admin")
}
