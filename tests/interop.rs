//! Interop with an independent NIP-77 client: nostr-tools' negentropy (its
//! own TypeScript implementation, not the Rust crate the relay uses), run
//! by Node from `tests/interop/negentropy.mjs` against a relay started here.
//!
//! Needs `node` and `tests/interop/node_modules`: the test runs `npm ci
//! --prefix tests/interop` when they are missing (tests/common/provision.rs)
//! and fails, never skips, when that is not possible.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use nostr::prelude::*;

#[tokio::test]
async fn nostr_tools_negentropy_reconciles_against_the_relay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    provision::node_packages(&dir, &["nostr-tools"]);
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    // The events only the relay has, signed by the `nostr` crate, their
    // times interleaved with the script's (which start at 1_700_000_000).
    let keys = Keys::generate();
    let base = 1_700_000_000;
    let notes: Vec<Event> = (0..150)
        .map(|i| event(&keys, 1, &format!("relay only {i}"), &[], base + i))
        .collect();
    let others: Vec<Event> = (0..20)
        .map(|i| event(&keys, 7, "+", &[], base + 10 * i))
        .collect();
    for event in notes.iter().chain(&others) {
        c.send_text(format!(r#"["EVENT",{}]"#, event.as_json()))
            .await;
    }
    let mut pending: std::collections::HashSet<String> =
        notes.iter().chain(&others).map(|e| e.id.to_hex()).collect();
    while !pending.is_empty() {
        let message = c.recv().await;
        if message[0] == "OK" {
            assert_eq!(message[2], true, "{message}");
            pending.remove(message[1].as_str().unwrap());
        }
    }
    let ids = |events: &[Event]| {
        events
            .iter()
            .map(|e| e.id.to_hex())
            .collect::<Vec<_>>()
            .join(",")
    };
    let run = tokio::process::Command::new("node")
        .arg("negentropy.mjs")
        .current_dir(&dir)
        .env("RELAY_URL", &relay.url)
        .env("RELAY_ONLY_NOTES", ids(&notes))
        .env("RELAY_ONLY_OTHERS", ids(&others))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // Async, so that the relay on this runtime keeps serving meanwhile.
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the interop script finished within 2 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the nostr-tools NIP-77 checks failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("all NIP-77 interop checks passed"),
        "{stdout}"
    );
}
