//! Private kinds: events only their author and the pubkeys they `p`-tag
//! may read (NIP-04 direct messages, NIP-59 gift wraps).
//!
//! Every way of reading goes through [`Readers`]: a stored query is split
//! into filters that can only return what the connection may see (so a
//! filter without `kinds` cannot leak them, and `limit` still counts only
//! visible events), and a live event is checked with [`Readers::may_read`]
//! before it is forwarded.

use crate::nostr::filter::TagCondition;
use crate::nostr::{Event, Filter};

/// Who is reading: the private kinds, and the pubkeys this connection has
/// proven with NIP-42 AUTH.
#[derive(Debug, Clone, Default)]
pub struct Readers {
    /// Sorted; empty means nothing is private.
    private_kinds: Vec<u16>,
    /// Sorted, without duplicates.
    pubkeys: Vec<[u8; 32]>,
}

impl Readers {
    /// A reader who may see everything: internal tools, tests, benches.
    pub fn unrestricted() -> Readers {
        Readers::default()
    }

    /// A connection authenticated as `pubkeys` (possibly none).
    pub fn new(private_kinds: &[u16], pubkeys: &[[u8; 32]]) -> Readers {
        let mut private_kinds = private_kinds.to_vec();
        private_kinds.sort_unstable();
        private_kinds.dedup();
        let mut pubkeys = pubkeys.to_vec();
        pubkeys.sort_unstable();
        pubkeys.dedup();
        Readers {
            private_kinds,
            pubkeys,
        }
    }

    fn is_private(&self, kind: u16) -> bool {
        self.private_kinds.binary_search(&kind).is_ok()
    }

    /// Whether this reader may receive `event`.
    pub fn may_read(&self, event: &Event) -> bool {
        if !self.is_private(event.kind) {
            return true;
        }
        self.pubkeys.binary_search(&event.pubkey).is_ok()
            || event.tag_values("p").any(|value| {
                crate::nostr::hex::decode_lower::<32>(value)
                    .is_some_and(|p| self.pubkeys.binary_search(&p).is_ok())
            })
    }

    /// True when every event `filter` could match is of a private kind and
    /// this reader has not authenticated: the answer is `auth-required`.
    pub fn needs_auth_for(&self, filter: &Filter) -> bool {
        self.pubkeys.is_empty()
            && !self.private_kinds.is_empty()
            && filter
                .kinds
                .as_ref()
                .is_some_and(|kinds| !kinds.is_empty() && kinds.iter().all(|k| self.is_private(*k)))
    }

    /// Filters whose union is exactly the events of `filter` this reader
    /// may see: the public kinds as they are, and for each authenticated
    /// pubkey the private kinds it wrote or is `p`-tagged in.
    pub fn restrict(&self, filter: &Filter) -> Vec<Filter> {
        if self.private_kinds.is_empty() {
            return vec![filter.clone()];
        }
        let (public, private): (Vec<u16>, Vec<u16>) = match &filter.kinds {
            Some(kinds) => kinds.iter().partition(|k| !self.is_private(**k)),
            None => (Vec::new(), self.private_kinds.clone()),
        };
        let mut parts = Vec::new();
        match &filter.kinds {
            Some(_) if public.is_empty() => {}
            Some(_) => parts.push(Filter {
                kinds: Some(public),
                ..filter.clone()
            }),
            None => {
                let mut excluded = filter.excluded_kinds.clone();
                excluded.extend(&self.private_kinds);
                excluded.sort_unstable();
                excluded.dedup();
                parts.push(Filter {
                    excluded_kinds: excluded,
                    ..filter.clone()
                });
            }
        }
        if private.is_empty() {
            return parts;
        }
        for pubkey in &self.pubkeys {
            let authored = match &filter.authors {
                None => true,
                Some(authors) => authors.binary_search(pubkey).is_ok(),
            };
            if authored {
                parts.push(Filter {
                    kinds: Some(private.clone()),
                    authors: Some(vec![*pubkey]),
                    ..filter.clone()
                });
            }
            let mut tagged = Filter {
                kinds: Some(private.clone()),
                ..filter.clone()
            };
            tagged.tags.push(TagCondition {
                letter: 'p',
                values: vec![hex::encode(pubkey)],
            });
            tagged.tags.sort_by_key(|condition| condition.letter);
            parts.push(tagged);
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: u16, pubkey: u8, p: Option<u8>) -> Event {
        let tags = match p {
            Some(p) => json!([["p", hex::encode([p; 32])]]),
            None => json!([]),
        };
        Event::from_value(&json!({
            "id": "a".repeat(64), "pubkey": hex::encode([pubkey; 32]), "created_at": 1,
            "kind": kind, "tags": tags, "content": "", "sig": "c".repeat(128)
        }))
        .unwrap()
    }

    #[test]
    fn the_split_filters_match_exactly_what_may_be_read() {
        let readers = Readers::new(&[4, 1059], &[[1; 32]]);
        let events = [
            event(1, 2, None),
            event(4, 1, None),
            event(4, 2, Some(1)),
            event(4, 2, Some(3)),
            event(1059, 2, Some(1)),
            event(1059, 2, None),
            event(7, 3, Some(1)),
        ];
        for filter in [
            json!({}),
            json!({"kinds": [4]}),
            json!({"kinds": [1, 4]}),
            json!({"authors": [hex::encode([2; 32])]}),
            json!({"#p": [hex::encode([1; 32]), hex::encode([3; 32])]}),
        ] {
            let filter = Filter::from_value(&filter).unwrap();
            let parts = readers.restrict(&filter);
            for event in &events {
                let expected = filter.matches(event) && readers.may_read(event);
                let got = parts.iter().any(|part| part.matches(event));
                assert_eq!(
                    got, expected,
                    "{filter:?} on kind {} {:?}",
                    event.kind, event.pubkey[0]
                );
            }
        }
    }

    #[test]
    fn an_anonymous_reader_sees_no_private_kind() {
        let readers = Readers::new(&[4], &[]);
        assert!(!readers.may_read(&event(4, 1, Some(1))));
        assert!(readers.may_read(&event(1, 1, None)));
        assert!(readers.needs_auth_for(&Filter::from_value(&json!({"kinds": [4]})).unwrap()));
        assert!(!readers.needs_auth_for(&Filter::from_value(&json!({"kinds": [1, 4]})).unwrap()));
        assert!(!readers.needs_auth_for(&Filter::from_value(&json!({})).unwrap()));
    }
}
