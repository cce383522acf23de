//! NIP-13 proof of work: the number of leading zero bits of an event id,
//! and the target difficulty a miner committed to in its `nonce` tag.

use super::Event;

/// Leading zero bits of `id` (NIP-13 "difficulty").
pub fn leading_zero_bits(id: &[u8; 32]) -> u32 {
    let mut bits = 0;
    for byte in id {
        if *byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// The difficulty an event proves: its id's leading zero bits, capped by
/// the target committed in `["nonce", <n>, <target>]` when there is one
/// ("if you require 40 bits … and see a committed target of 30, you can
/// safely reject it even if the note has 40 bits difficulty").
pub fn difficulty(event: &Event) -> u32 {
    let bits = leading_zero_bits(&event.id);
    let committed = event
        .tags
        .iter()
        .find(|tag| tag.first().is_some_and(|name| name == "nonce"))
        .and_then(|tag| tag.get(2))
        .and_then(|target| target.parse::<u32>().ok());
    match committed {
        Some(target) => bits.min(target),
        None => bits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(id_prefix: &str, tags: serde_json::Value) -> Event {
        let id = format!("{id_prefix}{}", "f".repeat(64 - id_prefix.len()));
        Event::from_value(&json!({
            "id": id, "pubkey": "b".repeat(64), "created_at": 1,
            "kind": 1, "tags": tags, "content": "", "sig": "c".repeat(128)
        }))
        .unwrap()
    }

    #[test]
    fn counts_leading_zero_bits_as_nip13_does() {
        // NIP-13's example: 000000000e9d97a1… has 36 leading zero bits.
        let mut id = [0u8; 32];
        id[4] = 0x0e;
        assert_eq!(leading_zero_bits(&id), 36);
        assert_eq!(leading_zero_bits(&[0u8; 32]), 256);
        assert_eq!(leading_zero_bits(&[0xff; 32]), 0);
        assert_eq!(difficulty(&with("0000", json!([]))), 16);
        assert_eq!(difficulty(&with("0007", json!([]))), 13);
    }

    #[test]
    fn a_committed_target_caps_the_difficulty() {
        assert_eq!(
            difficulty(&with("000000", json!([["nonce", "9", "20"]]))),
            20
        );
        assert_eq!(
            difficulty(&with("000000", json!([["nonce", "9", "30"]]))),
            24
        );
        assert_eq!(difficulty(&with("000000", json!([["nonce", "9"]]))), 24);
        assert_eq!(
            difficulty(&with("000000", json!([["nonce", "9", "x"]]))),
            24
        );
    }
}
