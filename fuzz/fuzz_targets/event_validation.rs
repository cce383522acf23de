//! Fuzz target `event_validation`: an event object, as a client would put
//! it in `["EVENT", <event>]`, through everything the relay does with it
//! before storing it.
//!
//! Invariants checked (a failure is a panic, which libFuzzer reports):
//! - `Event::from_value` never panics on any JSON value;
//! - on a parsed event, `compute_id`, `verify_id`, `verify_signature` (the
//!   real BIP-340 check: fuzzed inputs are almost never validly signed, which
//!   is fine, it must just answer), `expiration`, `class`, `address_d`,
//!   `is_protected` and the write policy never panic, and agree with each
//!   other (`verify_id` is Ok exactly when the id equals `compute_id`;
//!   `address_d` is Some exactly for replaceable and addressable kinds);
//! - the canonical JSON, which the relay stores and serves byte for byte,
//!   re-parses as JSON into the very same event (same fields, same
//!   `compute_id`) and is a fixed point (serializing again gives the same
//!   bytes): otherwise a stored event would not be the event that was signed;
//! - the id preimage is valid JSON `[0,pubkey,created_at,kind,tags,content]`
//!   holding the event's own fields, as NIP-01 defines it;
//! - deeper path: since random inputs almost never carry a correct id, the
//!   target also sets `id = compute_id()` (only the signature stays invalid,
//!   i.e. the signature check is the one step skipped) and checks that
//!   `verify_id` accepts it, and still accepts it after the canonical JSON
//!   round trip, so that the id a relay serves verifies for every client.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use nostr_relayd::config::Limits;
use nostr_relayd::nostr::{Event, KindClass};
use nostr_relayd::policy::WritePolicy;
use serde_json::Value;

/// A fixed "now" for the write policy, so that runs are reproducible.
const NOW: i64 = 1_700_000_000;

/// The write policy of a relay with the default limits.
static POLICY: LazyLock<WritePolicy> = LazyLock::new(|| WritePolicy::new(&Limits::default()));

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(event) = Event::from_value(&value) else {
        return;
    };
    check(&event);

    // Deeper path: give the event its correct id.
    let mut fixed = event.clone();
    fixed.id = fixed.compute_id();
    assert!(
        fixed.verify_id().is_ok(),
        "verify_id refuses the id compute_id made"
    );
    check(&fixed);
});

fn check(event: &Event) {
    let id = event.compute_id();
    assert_eq!(
        event.verify_id().is_ok(),
        id == event.id,
        "verify_id disagrees with compute_id"
    );
    // Real Schnorr; the answer does not matter, only that there is one.
    let _ = event.verify_signature();

    // The canonical form is JSON and parses back into the same event.
    let canonical = event.to_canonical_json();
    let reparsed: Value = serde_json::from_str(&canonical)
        .unwrap_or_else(|error| panic!("canonical JSON does not parse ({error}): {canonical:?}"));
    assert_eq!(
        reparsed.as_object().map(|o| o.len()),
        Some(7),
        "canonical JSON must hold exactly the seven NIP-01 fields: {canonical:?}"
    );
    let again = Event::from_value(&reparsed).unwrap_or_else(|error| {
        panic!("canonical JSON is not an acceptable event ({error}): {canonical:?}")
    });
    assert_eq!(
        again.compute_id(),
        id,
        "compute_id changed across the canonical JSON round trip"
    );
    assert_eq!(&again, event, "canonical JSON round trip changed the event");
    assert_eq!(
        again.to_canonical_json(),
        canonical,
        "canonical JSON is not a fixed point"
    );
    assert_eq!(
        again.verify_id().is_ok(),
        event.verify_id().is_ok(),
        "verify_id changed across the canonical JSON round trip"
    );

    // The preimage of the id is NIP-01's array of the event's own fields.
    let preimage = event.id_preimage();
    let preimage: Value = serde_json::from_slice(&preimage).unwrap_or_else(|error| {
        panic!(
            "id preimage is not JSON ({error}): {:?}",
            String::from_utf8_lossy(&preimage)
        )
    });
    let items = preimage.as_array().expect("id preimage is an array");
    assert_eq!(items.len(), 6, "id preimage must have six elements");
    assert_eq!(items[0], Value::from(0));
    assert_eq!(items[1].as_str(), Some(hex(&event.pubkey).as_str()));
    assert_eq!(items[2].as_i64(), Some(event.created_at));
    assert_eq!(items[3].as_u64(), Some(u64::from(event.kind)));
    assert_eq!(items[4], serde_json::to_value(&event.tags).unwrap());
    assert_eq!(items[5].as_str(), Some(event.content.as_str()));

    // The rest of what ingest asks of an event.
    let _ = event.expiration();
    let class = event.class();
    assert_eq!(
        event.address_d().is_some(),
        matches!(class, KindClass::Replaceable | KindClass::Addressable),
        "address_d must exist exactly for replaceable and addressable kinds"
    );
    assert_eq!(event.address_d().is_some(), class.has_address());
    let _ = event.is_protected();
    let _ = POLICY.check(event, NOW);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
