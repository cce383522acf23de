//! Fuzz target `client_message`: every text frame a client can send goes
//! through [`ClientMessage::parse`] before anything else looks at it.
//!
//! Invariants checked:
//! - parsing never panics, whatever the bytes (deep nesting, lone surrogates,
//!   huge numbers, wrong verbs, wrong arity);
//! - every refusal's frame (`rejection.to_frame()`) is valid JSON and a
//!   non-empty array whose first element is `"NOTICE"`, `"OK"`, `"CLOSED"` or
//!   `"NEG-ERR"` (NIP-77), because clients must always be able to read why
//!   they were refused (an unreadable refusal is as bad as none).
//!
//! Inputs that are not UTF-8 are skipped: a WebSocket text frame is UTF-8 by
//! definition, and tungstenite refuses the others before the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nostr_relayd::nostr::ClientMessage;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientMessage::parse(text) {
        Ok(_) => {}
        Err(rejection) => {
            let frame = rejection.to_frame();
            let value: Value = serde_json::from_str(&frame).unwrap_or_else(|error| {
                panic!("rejection frame is not valid JSON ({error}): {frame:?}")
            });
            let verb = value
                .as_array()
                .and_then(|items| items.first())
                .and_then(Value::as_str);
            assert!(
                matches!(verb, Some("NOTICE" | "OK" | "CLOSED" | "NEG-ERR")),
                "rejection frame is not a NOTICE/OK/CLOSED/NEG-ERR array: {frame:?}"
            );
        }
    }
});
