//! NIP-98 HTTP Auth: an `Authorization: Nostr <base64 event>` header whose
//! kind-27235 event, signed by the caller, names the request's URL, method
//! and body hash. The NIP-86 management API is authorized by it.
//!
//! Everything here is pure (the clock is a parameter) except the replay
//! guard, which remembers the ids it has accepted.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use super::Event;
use super::relay_url::same_relay;

/// The NIP-98 event kind (after RFC 7235).
pub const KIND: u16 = 27235;

/// How far `created_at` may be from the server's clock, either way, in
/// seconds (NIP-98's suggestion).
pub const MAX_CLOCK_SKEW: i64 = 60;

/// How long an accepted event id is remembered, in seconds: an event is
/// usable at most from `created_at - 60` to `created_at + 60`, so two
/// minutes after its first use it can no longer pass the clock check.
pub const REPLAY_WINDOW: i64 = 2 * MAX_CLOCK_SKEW;

/// Longest `Authorization` header read; a kind-27235 event is a few hundred
/// bytes, so anything near this is not one.
const MAX_HEADER_LENGTH: usize = 16 * 1024;

/// Ids remembered at once, at most. Only events that passed every other
/// check (including the admin check, in `management`) are recorded, so
/// this bounds a flood by an admin's own key.
const MAX_REMEMBERED: usize = 100_000;

/// Why a request is not authorized (answered with 401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError(pub String);

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthError {}

fn fail<T>(message: impl Into<String>) -> Result<T, AuthError> {
    Err(AuthError(message.into()))
}

/// What the request claims, to be compared with the signed event.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The absolute URL the event's `u` tag must name (compared with
    /// [`same_relay`]: scheme, default port, trailing slash and host case
    /// are ignored, since proxies and clients spell one relay many ways).
    pub url: &'a str,
    /// The HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// The request body; its SHA-256 must be in the `payload` tag.
    pub body: &'a [u8],
}

/// Checks an `Authorization` header value against the request and returns
/// the verified event (its `pubkey` is the caller). The `payload` tag is
/// required, as NIP-86 demands. Replays are not checked here: see
/// [`ReplayGuard`].
pub fn verify(header: &str, request: HttpRequest<'_>, now: i64) -> Result<Event, AuthError> {
    let event = decode_header(header)?;
    if event.kind != KIND {
        return fail(format!("the auth event must be of kind {KIND}"));
    }
    if event.verify_id().is_err() {
        return fail("the auth event's id is not the hash of its content");
    }
    if event.verify_signature().is_err() {
        return fail("the auth event's signature is invalid");
    }
    if (event.created_at - now).abs() > MAX_CLOCK_SKEW {
        return fail(format!(
            "the auth event's created_at is more than {MAX_CLOCK_SKEW} seconds from the relay's clock"
        ));
    }
    match event.first_tag_value("u") {
        None => return fail("the auth event has no u tag"),
        Some(u) if !same_relay(u, request.url) => {
            return fail(format!(
                "the auth event's u tag {u:?} is not this relay's URL ({})",
                request.url
            ));
        }
        Some(_) => {}
    }
    match event.first_tag_value("method") {
        None => return fail("the auth event has no method tag"),
        Some(method) if !method.eq_ignore_ascii_case(request.method) => {
            return fail(format!(
                "the auth event's method tag {method:?} is not {}",
                request.method
            ));
        }
        Some(_) => {}
    }
    let digest = hex::encode(Sha256::digest(request.body));
    match event.first_tag_value("payload") {
        None => return fail("the auth event has no payload tag (required by NIP-86)"),
        Some(payload) if !payload.eq_ignore_ascii_case(&digest) => {
            return fail("the auth event's payload tag is not the SHA-256 of the request body");
        }
        Some(_) => {}
    }
    Ok(event)
}

/// `Nostr <base64>` → the event it carries (checked for shape only).
fn decode_header(header: &str) -> Result<Event, AuthError> {
    if header.len() > MAX_HEADER_LENGTH {
        return fail("the Authorization header is too long");
    }
    let mut parts = header.split_whitespace();
    let scheme = parts.next().unwrap_or_default();
    if !scheme.eq_ignore_ascii_case("nostr") {
        return fail("the Authorization scheme must be Nostr (NIP-98)");
    }
    let (Some(encoded), None) = (parts.next(), parts.next()) else {
        return fail("the Authorization header must be `Nostr <base64 event>`");
    };
    // Clients differ in alphabet and padding; every variant is unambiguous.
    let json = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(encoded).ok());
    let Some(json) = json else {
        return fail("the Authorization header is not valid base64");
    };
    let value: serde_json::Value = match serde_json::from_slice(&json) {
        Ok(value) => value,
        Err(error) => return fail(format!("the auth event is not JSON: {error}")),
    };
    Event::from_value(&value).map_err(|error| AuthError(format!("the auth event: {error}")))
}

/// Remembers the ids of accepted auth events for [`REPLAY_WINDOW`], so that
/// an event captured in transit (or from a log) cannot be used again while
/// its `created_at` is still fresh.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<[u8; 32], i64>>,
}

impl ReplayGuard {
    /// Records `id` and returns true if it was not used within the window;
    /// false for a replay (or, past [`MAX_REMEMBERED`] live ids, for every
    /// new one: refusing is the safe way to fail).
    pub fn first_use(&self, id: &[u8; 32], now: i64) -> bool {
        // A poisoned lock only means another request panicked mid-insert;
        // the map itself is still a valid map.
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED / 2 {
            seen.retain(|_, first| now - *first < REPLAY_WINDOW);
        }
        if let Some(first) = seen.get(id)
            && now - *first < REPLAY_WINDOW
        {
            return false;
        }
        if seen.len() >= MAX_REMEMBERED {
            return false;
        }
        seen.insert(*id, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secp256k1::{Keypair, schnorr};

    const URL: &str = "wss://relay.example.com/";
    const BODY: &[u8] = br#"{"method":"supportedmethods","params":[]}"#;

    fn signed(kind: u16, created_at: i64, tags: Vec<Vec<String>>) -> Event {
        let keypair = Keypair::from_secret_bytes([7u8; 32]).unwrap();
        let mut event = Event {
            id: [0; 32],
            pubkey: keypair.x_only_public_key().0.to_byte_array(),
            created_at,
            kind,
            tags,
            content: String::new(),
            sig: [0; 64],
        };
        event.id = event.compute_id();
        event.sig = schnorr::sign_no_aux_rand(&event.id, &keypair).to_byte_array();
        event
    }

    fn tags(u: &str, method: &str, body: &[u8]) -> Vec<Vec<String>> {
        vec![
            vec!["u".into(), u.into()],
            vec!["method".into(), method.into()],
            vec!["payload".into(), hex::encode(Sha256::digest(body))],
        ]
    }

    fn header(event: &Event) -> String {
        format!("Nostr {}", STANDARD.encode(event.to_canonical_json()))
    }

    fn request() -> HttpRequest<'static> {
        HttpRequest {
            url: URL,
            method: "POST",
            body: BODY,
        }
    }

    #[test]
    fn a_good_event_passes_and_names_its_signer() {
        let event = signed(KIND, 1000, tags("https://relay.example.com", "POST", BODY));
        let verified = verify(&header(&event), request(), 1030).unwrap();
        assert_eq!(verified.pubkey, event.pubkey);
    }

    #[test]
    fn each_mismatch_is_refused() {
        let cases = [
            (signed(1, 1000, tags(URL, "POST", BODY)), "kind"),
            (
                signed(KIND, 1000, tags("wss://other.example.com/", "POST", BODY)),
                "u tag",
            ),
            (signed(KIND, 1000, tags(URL, "GET", BODY)), "method"),
            (signed(KIND, 1000, tags(URL, "POST", b"{}")), "payload"),
            (
                signed(KIND, 1000, tags(URL, "POST", BODY)[..2].to_vec()),
                "payload",
            ),
            (signed(KIND, 900, tags(URL, "POST", BODY)), "created_at"),
            (signed(KIND, 1100, tags(URL, "POST", BODY)), "created_at"),
        ];
        for (event, why) in cases {
            let error = verify(&header(&event), request(), 1000).unwrap_err();
            assert!(error.0.contains(why), "{why}: {error}");
        }
        let mut forged = signed(KIND, 1000, tags(URL, "POST", BODY));
        forged.sig[0] ^= 1;
        assert!(
            verify(&header(&forged), request(), 1000)
                .unwrap_err()
                .0
                .contains("signature")
        );
        for bad in [
            "",
            "Nostr",
            "Bearer abc",
            "Nostr !!!",
            "Nostr e30=",
            "Nostr a b",
        ] {
            assert!(verify(bad, request(), 1000).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_id_is_accepted_once_within_the_window() {
        let guard = ReplayGuard::default();
        let id = [1u8; 32];
        assert!(guard.first_use(&id, 1000));
        assert!(!guard.first_use(&id, 1001));
        assert!(!guard.first_use(&id, 1000 + REPLAY_WINDOW - 1));
        assert!(guard.first_use(&[2u8; 32], 1001));
    }
}
