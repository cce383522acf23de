//! NIP-19 `npub` keys, read wherever a person types a pubkey (relay.toml,
//! the admin CLI, NIP-86 parameters). The wire protocol itself always uses
//! lowercase hex; bech32 is only a friendlier spelling for people.

use super::hex::decode_lower;

/// The 32-byte key of an `npub1…` string; `None` for anything else
/// (another prefix, a bad checksum, a wrong length).
pub fn decode_npub(text: &str) -> Option<[u8; 32]> {
    let (hrp, data) = bech32::decode(text).ok()?;
    if !hrp.as_str().eq_ignore_ascii_case("npub") {
        return None;
    }
    data.try_into().ok()
}

/// The `npub1…` spelling of a key, for messages meant for people.
pub fn encode_npub(pubkey: &[u8; 32]) -> String {
    // Cannot fail: "npub" is a valid prefix and 32 bytes fit any bech32 string.
    let hrp = bech32::Hrp::parse("npub").expect("npub is a valid human-readable part");
    bech32::encode::<bech32::Bech32>(hrp, pubkey).expect("32 bytes always encode")
}

/// A pubkey as a person writes it: 64 hex characters (either case, since
/// people paste keys from everywhere) or an `npub`. Surrounding spaces are
/// ignored.
pub fn parse_pubkey(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() == 64 {
        return decode_lower::<32>(&text.to_ascii_lowercase());
    }
    decode_npub(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    // NIP-19's own example.
    const HEX: &str = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";
    const NPUB: &str = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";

    #[test]
    fn hex_and_npub_name_the_same_key() {
        let key = parse_pubkey(HEX).unwrap();
        assert_eq!(parse_pubkey(NPUB), Some(key));
        assert_eq!(parse_pubkey(&HEX.to_ascii_uppercase()), Some(key));
        assert_eq!(encode_npub(&key), NPUB);
    }

    #[test]
    fn other_strings_are_refused() {
        assert_eq!(parse_pubkey(&HEX[..62]), None);
        assert_eq!(parse_pubkey(&NPUB.replace('q', "p")), None);
        let nsec = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5";
        assert_eq!(parse_pubkey(nsec), None);
        assert_eq!(parse_pubkey(""), None);
    }
}
