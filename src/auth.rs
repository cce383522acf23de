//! NIP-42: a client proves it holds a key by signing the connection's
//! challenge. The proof is checked here; what it unlocks (writing,
//! reading, private kinds, protected events) is decided where those happen.

use rand::RngExt;

use crate::nostr::relay_url::same_relay;
use crate::nostr::{Event, kind};

/// How far an AUTH event's `created_at` may be from now (NIP-42: "within
/// ~10 minutes").
pub const MAX_CLOCK_SKEW: i64 = 600;

/// A fresh challenge for one connection: 128 random bits, hex.
pub fn new_challenge() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// Checks an AUTH event against this connection's challenge and the relay's
/// URL; `Ok` carries the pubkey it proves. The error is the full `OK false`
/// reason. Cheap checks come first; the signature last.
pub fn verify(
    event: &Event,
    challenge: &str,
    relay_url: &str,
    now: i64,
) -> Result<[u8; 32], String> {
    if event.kind != kind::CLIENT_AUTH {
        return Err(format!(
            "invalid: an AUTH event must be kind {}, not {}",
            kind::CLIENT_AUTH,
            event.kind
        ));
    }
    event
        .verify_id()
        .map_err(|error| format!("invalid: {error}"))?;
    if (event.created_at - now).abs() > MAX_CLOCK_SKEW {
        return Err("invalid: the AUTH event's created_at is more than 10 minutes from now".into());
    }
    if event.first_tag_value("challenge") != Some(challenge) {
        return Err("invalid: the AUTH event does not carry this connection's challenge".into());
    }
    match event.first_tag_value("relay") {
        Some(url) if same_relay(url, relay_url) => {}
        Some(url) => {
            return Err(format!(
                "invalid: the AUTH event is for relay {url:?}, not this one ({relay_url})"
            ));
        }
        None => return Err("invalid: the AUTH event has no relay tag".into()),
    }
    event
        .verify_signature()
        .map_err(|error| format!("invalid: {error}"))?;
    Ok(event.pubkey)
}
