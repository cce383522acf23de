//! Strict lowercase hex, as NIP-01 requires for ids, pubkeys and signatures.
//!
//! The `hex` crate accepts uppercase too; Nostr does not, because the id is
//! hashed over the exact characters and two spellings of one key would make
//! two different events.

/// Decodes exactly `N` bytes from `2 * N` lowercase hex characters.
pub fn decode_lower<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !is_lower_hex(text) {
        return None;
    }
    let mut out = [0u8; N];
    // Cannot fail: the length and the alphabet were checked just above.
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// True when every character is one of `0-9a-f`.
pub fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True for a 64-character lowercase hex string: the shape of ids and pubkeys,
/// which the store keeps as 32-byte blobs.
pub fn is_hex32(text: &str) -> bool {
    text.len() == 64 && is_lower_hex(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_lowercase_of_the_right_length() {
        assert_eq!(decode_lower::<2>("abcd"), Some([0xab, 0xcd]));
        assert_eq!(decode_lower::<2>("ABCD"), None);
        assert_eq!(decode_lower::<2>("abc"), None);
        assert_eq!(decode_lower::<2>("abcde0"), None);
        assert_eq!(decode_lower::<2>("zzzz"), None);
        assert!(is_hex32(&"0a".repeat(32)));
        assert!(!is_hex32(&"0A".repeat(32)));
    }
}
