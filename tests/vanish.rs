//! NIP-62 request to vanish: "Relays MUST fully delete any events from the
//! .pubkey if their service URL is tagged in the event", "SHOULD delete all
//! NIP-59 Gift Wraps that p-tagged the .pubkey", "MUST ensure the deleted
//! events cannot be re-broadcasted into the relay", and must follow it
//! "regardless of the user's status".

mod common;

use common::*;
use nostr::prelude::*;
use serde_json::json;

fn pk(keys: &Keys) -> String {
    keys.public_key().to_hex()
}

fn vanish(keys: &Keys, relay: &str, created_at: u64) -> Event {
    event(
        keys,
        62,
        "please forget me",
        &[&["relay", relay]],
        created_at,
    )
}

#[tokio::test]
async fn a_request_to_vanish_deletes_and_keeps_out() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let (alice, bob) = (Keys::generate(), Keys::generate());
    let t = now() - 1000;
    let note = event(&alice, 1, "hello", &[], t);
    let profile = event(&alice, 0, "{}", &[], t + 1);
    let deletion = event(&alice, 5, "", &[&["e", &"ab".repeat(32)]], t + 2);
    // Gift wraps are signed by throwaway keys and back-dated.
    let wrap = event(
        &Keys::generate(),
        1059,
        "sealed",
        &[&["p", &pk(&alice)]],
        t - 5000,
    );
    let dm_to_alice = event(&bob, 4, "hi", &[&["p", &pk(&alice)]], t + 3);
    let bobs_note = event(&bob, 1, "bob stays", &[], t + 4);
    for e in [&note, &profile, &deletion, &wrap, &dm_to_alice, &bobs_note] {
        assert_eq!(c.publish(e).await, (true, String::new()));
    }
    let request = vanish(&alice, &relay.url, now());
    assert_eq!(c.publish(&request).await, (true, String::new()));

    // Alice (authenticated, so private kinds are visible) finds only the
    // request itself, kept as the record.
    assert_eq!(
        c.authenticate(&alice, &relay.url).await,
        (true, String::new())
    );
    let own = c.query("own", vec![json!({"authors": [pk(&alice)]})]).await;
    assert_eq!(own.len(), 1);
    assert_eq!(own[0]["id"], request.id.to_hex());
    let wraps = c
        .query("wraps", vec![json!({"kinds": [1059], "#p": [pk(&alice)]})])
        .await;
    assert!(wraps.is_empty(), "gift wraps to her are gone");
    // What others wrote stays (only gift wraps to her are deleted).
    let kept = c
        .query(
            "kept",
            vec![json!({"ids": [dm_to_alice.id.to_hex(), bobs_note.id.to_hex()]})],
        )
        .await;
    assert_eq!(kept.len(), 2);

    // Nothing deleted comes back in.
    for old in [&note, &profile, &deletion, &wrap] {
        let (accepted, reason) = c.publish(old).await;
        assert!(!accepted, "kind {} re-accepted", old.kind);
        assert!(reason.starts_with("blocked:"), "{reason}");
    }
    let older_request = vanish(&alice, &relay.url, now() - 10);
    assert!(!c.publish(&older_request).await.0);
    // But a new note, and a new (back-dated) wrap to her, are accepted.
    let later = event(&alice, 1, "I'm back", &[], now() + 1);
    assert_eq!(c.publish(&later).await, (true, String::new()));
    let new_wrap = event(
        &Keys::generate(),
        1059,
        "new",
        &[&["p", &pk(&alice)]],
        t - 9000,
    );
    assert_eq!(c.publish(&new_wrap).await, (true, String::new()));

    // "Publishing a deletion request event (Kind 5) against a request to
    // vanish has no effect."
    let undo = event(&alice, 5, "", &[&["e", &request.id.to_hex()]], now() + 2);
    let _ = c.publish(&undo).await;
    let still = c
        .query("still", vec![json!({"ids": [request.id.to_hex()]})])
        .await;
    assert_eq!(still.len(), 1);
}

#[tokio::test]
async fn only_requests_naming_this_relay_are_followed() {
    let relay = TestRelay::start().await;
    let mut c = relay.client().await;
    let alice = Keys::generate();
    let note = event(&alice, 1, "hello", &[], now() - 10);
    assert_eq!(c.publish(&note).await, (true, String::new()));
    let elsewhere = vanish(&alice, "wss://another.relay.example/", now());
    let (accepted, reason) = c.publish(&elsewhere).await;
    assert!(!accepted && reason.starts_with("invalid:"), "{reason}");
    assert_eq!(
        c.query("n", vec![json!({"ids": [note.id.to_hex()]})])
            .await
            .len(),
        1
    );
    let everywhere = vanish(&alice, "ALL_RELAYS", now());
    assert_eq!(c.publish(&everywhere).await, (true, String::new()));
    assert!(
        c.query("n2", vec![json!({"ids": [note.id.to_hex()]})])
            .await
            .is_empty()
    );
    let expiring = event(
        &Keys::generate(),
        62,
        "",
        &[
            &["relay", "ALL_RELAYS"],
            &["expiration", &(now() + 60).to_string()],
        ],
        now(),
    );
    let (accepted, reason) = c.publish(&expiring).await;
    assert!(!accepted && reason.starts_with("invalid:"), "{reason}");
}

#[tokio::test]
async fn a_request_to_vanish_is_followed_regardless_of_status() {
    // Auth required for writing, and proof of work: neither applies.
    let relay = TestRelay::start_with(|c| {
        c.auth.required_for_write = true;
        c.limits.min_pow_difficulty = 20;
    })
    .await;
    let mut c = relay.client().await;
    let alice = Keys::generate();
    let (accepted, reason) = c.publish(&note(&alice, "no auth, no work")).await;
    assert!(
        !accepted && reason.starts_with("auth-required:"),
        "{reason}"
    );
    assert_eq!(
        c.publish(&vanish(&alice, &relay.url, now())).await,
        (true, String::new())
    );
}
