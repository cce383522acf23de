//! A Nostr event (NIP-01): parsing with precise errors, the id hash, the
//! Schnorr signature, and the one canonical JSON form the relay stores and
//! serves byte for byte.

use std::fmt;

use secp256k1::{XOnlyPublicKey, schnorr};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::hex::decode_lower;
use super::kind::KindClass;

/// Largest `created_at` accepted: 2^53 - 1, the largest integer that every
/// JSON implementation (JavaScript's included) represents exactly.
pub const MAX_TIMESTAMP: u64 = (1 << 53) - 1;

/// A syntactically valid event. Its id and signature are checked separately
/// ([`Event::verify_id`], [`Event::verify_signature`]) so that the relay can
/// order the checks from cheapest to dearest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: [u8; 32],
    pub pubkey: [u8; 32],
    pub created_at: i64,
    pub kind: u16,
    pub tags: Vec<Vec<String>>,
    pub content: String,
    pub sig: [u8; 64],
}

/// Why an event was refused; the text follows `invalid: ` in the `OK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError(pub String);

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(message: impl Into<String>) -> EventError {
    EventError(message.into())
}

impl Event {
    /// Reads an event object, checking every field's type and shape. Unknown
    /// extra fields are ignored: they are not part of the signed data and are
    /// not kept.
    pub fn from_value(value: &Value) -> Result<Event, EventError> {
        let object = value
            .as_object()
            .ok_or_else(|| invalid("event must be a JSON object"))?;
        let id = hex_field::<32>(object, "id")?;
        let pubkey = hex_field::<32>(object, "pubkey")?;
        let sig = hex_field::<64>(object, "sig")?;
        let created_at = object
            .get("created_at")
            .ok_or_else(|| invalid("missing field created_at"))?;
        let created_at = created_at
            .as_u64()
            .filter(|t| *t <= MAX_TIMESTAMP)
            .ok_or_else(|| invalid("created_at must be an integer from 0 to 2^53-1"))?;
        let kind = object
            .get("kind")
            .ok_or_else(|| invalid("missing field kind"))?
            .as_u64()
            .and_then(|k| u16::try_from(k).ok())
            .ok_or_else(|| invalid("kind must be an integer from 0 to 65535"))?;
        let tags = parse_tags(
            object
                .get("tags")
                .ok_or_else(|| invalid("missing field tags"))?,
        )?;
        let content = object
            .get("content")
            .ok_or_else(|| invalid("missing field content"))?
            .as_str()
            .ok_or_else(|| invalid("content must be a string"))?
            .to_owned();
        Ok(Event {
            id,
            pubkey,
            // Cannot truncate: created_at <= 2^53 - 1 < i64::MAX.
            created_at: created_at as i64,
            kind,
            tags,
            content,
            sig,
        })
    }

    /// The id NIP-01 defines: SHA-256 of the compact JSON array
    /// `[0,pubkey,created_at,kind,tags,content]`, serialized exactly as
    /// serde_json (and JavaScript's `JSON.stringify`) write it.
    pub fn compute_id(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.id_preimage());
        let digest = hasher.finalize();
        let mut id = [0u8; 32];
        id.copy_from_slice(&digest);
        id
    }

    /// The serialized array whose hash is the id.
    pub fn id_preimage(&self) -> Vec<u8> {
        let pubkey = hex::encode(self.pubkey);
        let preimage = (
            0u8,
            pubkey,
            self.created_at,
            self.kind,
            &self.tags,
            &self.content,
        );
        // Cannot fail: strings, integers and vectors of strings always serialize.
        serde_json::to_vec(&preimage).expect("serializing plain data cannot fail")
    }

    /// Checks that the claimed id is the hash of the content.
    pub fn verify_id(&self) -> Result<(), EventError> {
        if self.compute_id() == self.id {
            Ok(())
        } else {
            Err(invalid("event id does not match the hash of its content"))
        }
    }

    /// Checks the BIP-340 Schnorr signature of the id by the pubkey. This is
    /// the dearest check: run it last, and off the socket's task.
    pub fn verify_signature(&self) -> Result<(), EventError> {
        let key = XOnlyPublicKey::from_byte_array(self.pubkey)
            .map_err(|_| invalid("pubkey is not a valid secp256k1 x-only public key"))?;
        let signature = schnorr::Signature::from_byte_array(self.sig);
        schnorr::verify(&signature, &self.id, &key)
            .map_err(|_| invalid("signature verification failed"))
    }

    /// The canonical stored form: the seven NIP-01 fields in NIP-01's order,
    /// compact, nothing else. Made once at ingest and served byte for byte.
    pub fn to_canonical_json(&self) -> String {
        let mut out = String::with_capacity(self.content.len() + 256);
        out.push_str("{\"id\":\"");
        out.push_str(&hex::encode(self.id));
        out.push_str("\",\"pubkey\":\"");
        out.push_str(&hex::encode(self.pubkey));
        out.push_str("\",\"created_at\":");
        out.push_str(&self.created_at.to_string());
        out.push_str(",\"kind\":");
        out.push_str(&self.kind.to_string());
        out.push_str(",\"tags\":");
        // Cannot fail: vectors of strings always serialize.
        out.push_str(&serde_json::to_string(&self.tags).expect("tags serialize"));
        out.push_str(",\"content\":");
        out.push_str(&serde_json::to_string(&self.content).expect("strings serialize"));
        out.push_str(",\"sig\":\"");
        out.push_str(&hex::encode(self.sig));
        out.push_str("\"}");
        out
    }

    /// The NIP-01 class of this event's kind.
    pub fn class(&self) -> KindClass {
        KindClass::of(self.kind)
    }

    /// The `d` value that, with pubkey and kind, addresses an addressable
    /// event: the first `d` tag's first value, or "" when there is none.
    /// Replaceable events have the address "" too; regular ones have none.
    pub fn address_d(&self) -> Option<&str> {
        match self.class() {
            KindClass::Addressable => Some(self.first_tag_value("d").unwrap_or("")),
            KindClass::Replaceable => Some(""),
            _ => None,
        }
    }

    /// The first value of the first tag named `name`.
    pub fn first_tag_value(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|tag| tag.first().map(String::as_str) == Some(name))
            .and_then(|tag| tag.get(1))
            .map(String::as_str)
    }

    /// Every value of tags named `name` (the second element of each).
    pub fn tag_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.tags
            .iter()
            .filter(move |tag| tag.first().map(String::as_str) == Some(name))
            .filter_map(|tag| tag.get(1).map(String::as_str))
    }

    /// NIP-40: the `expiration` tag's timestamp. A present but malformed
    /// value is an error rather than "never expires", so that an author who
    /// asked for expiry is never silently kept forever.
    pub fn expiration(&self) -> Result<Option<i64>, EventError> {
        match self.first_tag_value("expiration") {
            None => Ok(None),
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|t| *t <= MAX_TIMESTAMP)
                .map(|t| Some(t as i64))
                .ok_or_else(|| invalid("expiration tag must be a unix timestamp in seconds")),
        }
    }

    /// NIP-70: an event carrying a `["-"]` tag may only be published by its author.
    pub fn is_protected(&self) -> bool {
        self.tags.iter().any(|tag| tag.len() == 1 && tag[0] == "-")
    }

    /// Lowercase hex of the id, as used in `OK` messages.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// An event together with its canonical JSON, made once at ingest and shared
/// (behind an `Arc`) by the store, the fan-out and every subscriber.
#[derive(Debug)]
pub struct CanonicalEvent {
    pub event: Event,
    pub json: String,
}

impl CanonicalEvent {
    /// Serializes `event` into its canonical form, once.
    pub fn new(event: Event) -> CanonicalEvent {
        let json = event.to_canonical_json();
        CanonicalEvent { event, json }
    }
}

fn hex_field<const N: usize>(
    object: &Map<String, Value>,
    name: &str,
) -> Result<[u8; N], EventError> {
    let text = object
        .get(name)
        .ok_or_else(|| invalid(format!("missing field {name}")))?
        .as_str()
        .ok_or_else(|| invalid(format!("{name} must be a string")))?;
    decode_lower::<N>(text)
        .ok_or_else(|| invalid(format!("{name} must be {} lowercase hex characters", 2 * N)))
}

fn parse_tags(value: &Value) -> Result<Vec<Vec<String>>, EventError> {
    let tags = value
        .as_array()
        .ok_or_else(|| invalid("tags must be an array of arrays of strings"))?;
    tags.iter()
        .enumerate()
        .map(|(index, tag)| {
            let items = tag
                .as_array()
                .ok_or_else(|| invalid(format!("tag {index} must be an array of strings")))?;
            if items.is_empty() {
                return Err(invalid(format!("tag {index} is empty")));
            }
            items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("tag {index} must contain only strings")))
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "id": "0".repeat(64), "pubkey": "1".repeat(64), "created_at": 1700000000,
            "kind": 1, "tags": [["e", "2".repeat(64)], ["t", "nostr"]], "content": "hi",
            "sig": "3".repeat(128)
        })
    }

    fn error_of(value: Value) -> String {
        Event::from_value(&value).unwrap_err().0
    }

    #[test]
    fn parses_a_well_formed_event() {
        let event = Event::from_value(&sample()).unwrap();
        assert_eq!(event.kind, 1);
        assert_eq!(event.created_at, 1_700_000_000);
        assert_eq!(event.tags.len(), 2);
    }

    #[test]
    fn rejects_every_wrong_type_with_a_precise_reason() {
        let mut v = sample();
        v["kind"] = json!(1.0);
        assert!(error_of(v).contains("kind"));
        let mut v = sample();
        v["kind"] = json!(-1);
        assert!(error_of(v).contains("kind"));
        let mut v = sample();
        v["kind"] = json!(65536);
        assert!(error_of(v).contains("kind"));
        let mut v = sample();
        v["created_at"] = json!(1e3);
        assert!(error_of(v).contains("created_at"));
        let mut v = sample();
        v["created_at"] = json!(9007199254740992u64);
        assert!(error_of(v).contains("created_at"));
        let mut v = sample();
        v["tags"] = json!([[]]);
        assert!(error_of(v).contains("empty"));
        let mut v = sample();
        v["tags"] = json!([["e", 1]]);
        assert!(error_of(v).contains("strings"));
        let mut v = sample();
        v["id"] = json!("A".repeat(64));
        assert!(error_of(v).contains("lowercase hex"));
        let mut v = sample();
        v.as_object_mut().unwrap().remove("content");
        assert!(error_of(v).contains("missing field content"));
    }

    #[test]
    fn canonical_json_has_the_seven_fields_in_order() {
        let event = Event::from_value(&sample()).unwrap();
        let json = event.to_canonical_json();
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(&json)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys.len(), 7);
        assert!(json.starts_with("{\"id\":\""));
        assert!(json.contains("\"content\":\"hi\",\"sig\":"));
    }

    #[test]
    fn preimage_escapes_as_nip01_says() {
        let mut event = Event::from_value(&sample()).unwrap();
        event.content = "\"\\\u{8}\t\n\u{c}\r\u{1}\u{1f}\u{7f}\u{2028}/é".to_owned();
        let preimage = String::from_utf8(event.id_preimage()).unwrap();
        assert!(preimage.ends_with("\"\\\"\\\\\\b\\t\\n\\f\\r\\u0001\\u001f\u{7f}\u{2028}/é\"]"));
    }
}
