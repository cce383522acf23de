//! NIP-45 (event counts): which COUNT gets a HyperLogLog value, its
//! `offset`, and the register update every relay must make identically.
//!
//! The NIP's algorithm, for each event counted: the byte of the event's
//! pubkey at `offset` is the register index; the leading zero bits of the
//! pubkey from byte `offset + 1` on, plus one, are the candidate value; the
//! register keeps the largest. 256 registers of one byte, hex-encoded.
//! The counting itself runs inside SQLite (`store::count`), over this
//! module's [`Registers::add`].

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::filter::Filter;
use super::hex::{is_hex32, is_lower_hex};

/// The number of HyperLogLog registers NIP-45 prescribes.
pub const REGISTERS: usize = 256;

/// 256 one-byte registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registers(pub [u8; REGISTERS]);

impl Default for Registers {
    fn default() -> Self {
        Registers([0; REGISTERS])
    }
}

impl Registers {
    /// Adds one event's pubkey. `offset` is at most 23 (see [`offset`]),
    /// so the register byte and at least eight bytes after it exist.
    pub fn add(&mut self, offset: u8, pubkey: &[u8; 32]) {
        let offset = usize::from(offset).min(30);
        let index = usize::from(pubkey[offset]);
        // "Count the number of leading zero bits starting at position
        // offset+1 of the event pubkey and add 1": to the pubkey's end.
        let mut zeros: u32 = 0;
        for byte in &pubkey[offset + 1..] {
            zeros += byte.leading_zeros();
            if *byte != 0 {
                break;
            }
        }
        // At most 8 × 31 + 1: fits a byte.
        let value = u8::try_from(zeros + 1).unwrap_or(u8::MAX);
        if value > self.0[index] {
            self.0[index] = value;
        }
    }

    /// The `hll` field: the registers' concatenation as 512 hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// NIP-45's `offset` for the first value of the filter's first tag
/// attribute: the hex digit at position 32 of a 64-hex string (the value
/// itself when it is an event id or pubkey, an address's pubkey, else the
/// SHA-256 of the value), plus 8. Always in 8..=23.
pub fn offset(value: &str) -> u8 {
    let hashed;
    let hex64: &str = if is_hex32(value) {
        value
    } else if let Some(pubkey) = address_pubkey(value) {
        pubkey
    } else {
        hashed = hex::encode(Sha256::digest(value.as_bytes()));
        &hashed
    };
    // Cannot fail to be a hex digit: every branch gives 64 lowercase hex.
    let digit = char::from(hex64.as_bytes()[32]).to_digit(16).unwrap_or(0);
    digit as u8 + 8
}

/// The `<pubkey>` of an address `<kind>:<pubkey>:<d-tag>` (the d-tag may
/// be empty or contain colons).
fn address_pubkey(value: &str) -> Option<&str> {
    let mut parts = value.splitn(3, ':');
    let (kind, pubkey, _d) = (parts.next()?, parts.next()?, parts.next()?);
    let is_kind = !kind.is_empty() && kind.len() <= 5 && kind.bytes().all(|b| b.is_ascii_digit());
    (is_kind && kind.parse::<u16>().is_ok() && pubkey.len() == 64 && is_lower_hex(pubkey))
        .then_some(pubkey)
}

/// The HyperLogLog `offset` for a COUNT, or `None` when it gets no `hll`.
///
/// Eligible: exactly one filter, with exactly one tag attribute (`#x`)
/// holding exactly one value (the NIP's common filters: reactions, reposts,
/// replies, comments, followers). The NIP takes "the first tag attribute in
/// the filter", i.e. in the JSON document's order, which the parsed
/// [`Filter`] (sorted by letter, duplicate keys merged) no longer has, so
/// the tag attribute is read from the filter's raw text.
pub fn hll_offset(filters: &[Filter], raw_filters: &[&RawValue]) -> Option<u8> {
    let ([filter], [raw]) = (filters, raw_filters) else {
        return None;
    };
    let [condition] = filter.tags.as_slice() else {
        return None;
    };
    let [value] = condition.values.as_slice() else {
        return None;
    };
    let attributes = tag_attributes(raw)?;
    let (key, first) = attributes.first?;
    // A duplicated key is two tag attributes in the document, one in the
    // parsed filter: not the simple case the NIP describes.
    let letter_matches = key == format!("#{}", condition.letter);
    (attributes.count == 1 && letter_matches && first.as_deref() == Some(value.as_str()))
        .then(|| offset(value))
}

/// The tag attributes of a raw filter object, in document order: how many
/// there are, and the first one's key and first string value.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TagAttributes {
    pub count: usize,
    pub first: Option<(String, Option<String>)>,
}

/// Reads [`TagAttributes`] from a filter's JSON text, without building a
/// map (which would lose the order). `None` if it is not a JSON object.
pub fn tag_attributes(raw: &RawValue) -> Option<TagAttributes> {
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    deserializer.deserialize_map(AttributesVisitor).ok()
}

struct AttributesVisitor;

impl<'de> Visitor<'de> for AttributesVisitor {
    type Value = TagAttributes;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a filter object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TagAttributes, A::Error> {
        let mut found = TagAttributes::default();
        while let Some(key) = map.next_key::<String>()? {
            if !key.starts_with('#') {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            found.count += 1;
            if found.first.is_none() {
                let first = map.next_value::<FirstString>()?.0;
                found.first = Some((key, first));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// The first element of an array when it is a string; the rest skipped.
struct FirstString(Option<String>);

impl<'de> serde::Deserialize<'de> for FirstString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct First;
        impl<'de> Visitor<'de> for First {
            type Value = FirstString;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<FirstString, S::Error> {
                let first = match seq.next_element::<serde_json::Value>()? {
                    Some(serde_json::Value::String(text)) => Some(text),
                    _ => None,
                };
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstString(first))
            }
        }
        deserializer.deserialize_seq(First)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn offset_of(filters: &[&str]) -> Option<u8> {
        let raws: Vec<Box<RawValue>> = filters.iter().map(|f| raw(f)).collect();
        let parsed: Vec<Filter> = filters
            .iter()
            .map(|f| Filter::from_value(&serde_json::from_str(f).unwrap()).unwrap())
            .collect();
        let refs: Vec<&RawValue> = raws.iter().map(|r| &**r).collect();
        hll_offset(&parsed, &refs)
    }

    #[test]
    fn the_offset_follows_the_nip() {
        // An id or pubkey: its own character 32.
        let id = format!("{}{}{}", "0".repeat(32), "c", "0".repeat(31));
        assert_eq!(offset(&id), 12 + 8);
        // An address: its pubkey's character 32.
        let pubkey = format!("{}{}{}", "1".repeat(32), "f", "1".repeat(31));
        assert_eq!(offset(&format!("30023:{pubkey}:my:article")), 15 + 8);
        assert_eq!(offset(&format!("3:{pubkey}:")), 15 + 8);
        // Anything else: SHA-256 of it.
        let digest = hex::encode(Sha256::digest(b"nostr"));
        let digit = u8::from_str_radix(&digest[32..33], 16).unwrap();
        assert_eq!(offset("nostr"), digit + 8);
        // Uppercase hex is not an id: hashed.
        let upper = id.to_uppercase();
        let digest = hex::encode(Sha256::digest(upper.as_bytes()));
        assert_eq!(
            offset(&upper),
            u8::from_str_radix(&digest[32..33], 16).unwrap() + 8
        );
        // Not an address: a kind that is not a number, or a short pubkey.
        let digest = hex::encode(Sha256::digest(format!("x:{pubkey}:d").as_bytes()));
        assert_eq!(
            offset(&format!("x:{pubkey}:d")),
            u8::from_str_radix(&digest[32..33], 16).unwrap() + 8
        );
        for value in ["", "a", "1:2:3", &"f".repeat(64)] {
            assert!((8..=23).contains(&offset(value)));
        }
    }

    #[test]
    fn registers_take_the_leading_zeros_after_the_index_byte() {
        let mut registers = Registers::default();
        let mut pubkey = [0xffu8; 32];
        pubkey[10] = 7; // register 7
        pubkey[11] = 0b0001_0000; // three zero bits, + 1
        registers.add(10, &pubkey);
        assert_eq!(registers.0[7], 4);
        // A smaller value does not lower it; a larger one raises it.
        pubkey[11] = 0b1000_0000;
        registers.add(10, &pubkey);
        assert_eq!(registers.0[7], 4);
        pubkey[11] = 0;
        pubkey[12] = 0b0000_0001; // 8 + 7 zero bits
        registers.add(10, &pubkey);
        assert_eq!(registers.0[7], 16);
        // Zeros run on to the pubkey's end.
        let mut zero = [0u8; 32];
        zero[23] = 200;
        registers.add(23, &zero);
        assert_eq!(registers.0[200], 8 * 8 + 1);
        assert_eq!(registers.to_hex().len(), 512);
        assert_eq!(&registers.to_hex()[14..16], "10");
    }

    #[test]
    fn the_first_tag_attribute_is_read_in_document_order() {
        let attributes = tag_attributes(&raw(
            r##"{"kinds":[7],"#p":["b","a"],"limit":3,"#e":["c"]}"##,
        ))
        .unwrap();
        assert_eq!(attributes.count, 2);
        assert_eq!(
            attributes.first,
            Some(("#p".to_owned(), Some("b".to_owned())))
        );
        assert_eq!(
            tag_attributes(&raw(r#"{"kinds":[1]}"#)).unwrap(),
            TagAttributes::default()
        );
        assert_eq!(tag_attributes(&raw("[1]")), None);
    }

    #[test]
    fn only_one_filter_with_one_tag_value_is_eligible() {
        let e = "e".repeat(64);
        let p = "a".repeat(64);
        let reactions = format!(r##"{{"kinds":[7],"#e":["{e}"]}}"##);
        assert_eq!(offset_of(&[&reactions]), Some(offset(&e)));
        let followers = format!(r##"{{"#p":["{p}"],"kinds":[3],"limit":1}}"##);
        assert_eq!(offset_of(&[&followers]), Some(offset(&p)));
        assert_eq!(offset_of(&[r##"{"#t":["nostr"]}"##]), Some(offset("nostr")));
        // Two filters, two values, two tag attributes, none: no hll.
        assert_eq!(offset_of(&[&reactions, &followers]), None);
        assert_eq!(offset_of(&[&format!(r##"{{"#e":["{e}","{p}"]}}"##)]), None);
        assert_eq!(
            offset_of(&[&format!(r##"{{"#p":["{p}"],"#e":["{e}"]}}"##)]),
            None
        );
        assert_eq!(offset_of(&[r#"{"kinds":[1]}"#]), None);
        // A duplicated key: the parsed filter keeps the last, the NIP
        // would take the first.
        assert_eq!(
            offset_of(&[&format!(r##"{{"#p":["{e}"],"#p":["{p}"]}}"##)]),
            None
        );
    }
}
