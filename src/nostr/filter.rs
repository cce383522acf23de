//! Subscription filters (NIP-01 "Communication between clients and relays"):
//! parsing with precise errors, and matching an event in memory. The store
//! answers the same filter in SQL; both must agree.

use std::fmt;

use serde_json::Value;

use super::event::{Event, MAX_TIMESTAMP};
use super::hex::{decode_lower, is_hex32};

/// One filter: every present condition must hold (AND). Lists are kept
/// sorted so that matching is a binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub ids: Option<Vec<[u8; 32]>>,
    pub authors: Option<Vec<[u8; 32]>>,
    pub kinds: Option<Vec<u16>>,
    /// `#x` conditions, sorted by letter; values sorted.
    pub tags: Vec<TagCondition>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<u64>,
    /// NIP-50 `search`: answered from the full-text index only (see
    /// `store::search`); such a filter never matches in memory, so live
    /// events are not matched against it.
    pub search: Option<String>,
    /// Kinds the relay keeps out of this filter's results (never parsed
    /// from a client; see `privacy`). Sorted.
    pub excluded_kinds: Vec<u16>,
}

/// A `#<letter>` condition: the event has a tag named `letter` whose first
/// value is one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagCondition {
    pub letter: char,
    pub values: Vec<String>,
}

/// Why a filter was refused. `Unsupported` answers `CLOSED "unsupported: …"`
/// so that a client learns the relay did not silently ignore a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterError {
    Invalid(String),
    Unsupported(String),
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterError::Invalid(m) => write!(f, "invalid: {m}"),
            FilterError::Unsupported(m) => write!(f, "unsupported: {m}"),
        }
    }
}

fn invalid(message: impl Into<String>) -> FilterError {
    FilterError::Invalid(message.into())
}

impl Filter {
    /// Reads one filter object. Keys the relay does not implement are
    /// refused, never ignored: ignoring one would match too much.
    pub fn from_value(value: &Value) -> Result<Filter, FilterError> {
        let object = value
            .as_object()
            .ok_or_else(|| invalid("filter must be a JSON object"))?;
        let mut filter = Filter::default();
        for (key, value) in object {
            match key.as_str() {
                "ids" => filter.ids = Some(hex_list(value, "ids")?),
                "authors" => filter.authors = Some(hex_list(value, "authors")?),
                "kinds" => filter.kinds = Some(kind_list(value)?),
                "since" => filter.since = Some(timestamp(value, "since")?),
                "until" => filter.until = Some(timestamp(value, "until")?),
                "search" => {
                    filter.search = Some(
                        value
                            .as_str()
                            .ok_or_else(|| invalid("search must be a string"))?
                            .to_owned(),
                    )
                }
                "limit" => {
                    filter.limit = Some(
                        value
                            .as_u64()
                            .ok_or_else(|| invalid("limit must be a non-negative integer"))?,
                    )
                }
                _ => filter.tags.push(tag_condition(key, value)?),
            }
        }
        filter.tags.sort_by_key(|condition| condition.letter);
        Ok(filter)
    }

    /// True when the filter can match no event at all (an empty list, or
    /// `since > until`); such a filter is answered without a query.
    pub fn is_unsatisfiable(&self) -> bool {
        let empty = |list: &Option<Vec<_>>| list.as_ref().is_some_and(Vec::is_empty);
        empty(&self.ids)
            || empty(&self.authors)
            || self.kinds.as_ref().is_some_and(Vec::is_empty)
            || self.tags.iter().any(|c| c.values.is_empty())
            || matches!((self.since, self.until), (Some(s), Some(u)) if s > u)
    }

    /// Whether `event` satisfies every condition (`limit` plays no part).
    /// A `search` filter matches nothing here: relevance is the index's
    /// to judge, and NIP-50 results are stored events only.
    pub fn matches(&self, event: &Event) -> bool {
        if self.search.is_some() {
            return false;
        }
        if let Some(ids) = &self.ids
            && ids.binary_search(&event.id).is_err()
        {
            return false;
        }
        if let Some(authors) = &self.authors
            && authors.binary_search(&event.pubkey).is_err()
        {
            return false;
        }
        if let Some(kinds) = &self.kinds
            && kinds.binary_search(&event.kind).is_err()
        {
            return false;
        }
        if self.excluded_kinds.binary_search(&event.kind).is_ok() {
            return false;
        }
        if self.since.is_some_and(|since| event.created_at < since)
            || self.until.is_some_and(|until| event.created_at > until)
        {
            return false;
        }
        self.tags.iter().all(|condition| condition.matches(event))
    }
}

impl TagCondition {
    /// True when one of the event's tags named after the letter has a first
    /// value in the list.
    pub fn matches(&self, event: &Event) -> bool {
        let mut name = [0u8; 4];
        let name: &str = self.letter.encode_utf8(&mut name);
        event.tag_values(name).any(|value| {
            self.values
                .binary_search_by(|v| v.as_str().cmp(value))
                .is_ok()
        })
    }
}

fn hex_list(value: &Value, key: &str) -> Result<Vec<[u8; 32]>, FilterError> {
    let items = value.as_array().ok_or_else(|| {
        invalid(format!(
            "{key} must be an array of 64-character lowercase hex strings"
        ))
    })?;
    let mut list = items
        .iter()
        .map(|item| {
            item.as_str().and_then(decode_lower::<32>).ok_or_else(|| {
                invalid(format!(
                    "{key} must contain 64-character lowercase hex strings"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    list.sort_unstable();
    list.dedup();
    Ok(list)
}

fn kind_list(value: &Value) -> Result<Vec<u16>, FilterError> {
    let items = value
        .as_array()
        .ok_or_else(|| invalid("kinds must be an array of integers"))?;
    let mut kinds = items
        .iter()
        .map(|item| {
            item.as_u64()
                .and_then(|k| u16::try_from(k).ok())
                .ok_or_else(|| invalid("kinds must contain integers from 0 to 65535"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    kinds.sort_unstable();
    kinds.dedup();
    Ok(kinds)
}

fn timestamp(value: &Value, key: &str) -> Result<i64, FilterError> {
    value
        .as_u64()
        .map(|t| t.min(MAX_TIMESTAMP) as i64)
        .ok_or_else(|| invalid(format!("{key} must be a non-negative integer timestamp")))
}

fn tag_condition(key: &str, value: &Value) -> Result<TagCondition, FilterError> {
    let mut chars = key.chars();
    let letter = match (chars.next(), chars.next(), chars.next()) {
        (Some('#'), Some(letter), None) if letter.is_ascii_alphabetic() => letter,
        _ => {
            return Err(FilterError::Unsupported(format!(
                "filter field {key} is not supported by this relay"
            )));
        }
    };
    let items = value
        .as_array()
        .ok_or_else(|| invalid(format!("{key} must be an array of strings")))?;
    let hex_only = letter == 'e' || letter == 'p';
    let mut values = items
        .iter()
        .map(|item| match item.as_str() {
            Some(text) if !hex_only || is_hex32(text) => Ok(text.to_owned()),
            Some(_) => Err(invalid(format!(
                "{key} must contain 64-character lowercase hex strings"
            ))),
            None => Err(invalid(format!("{key} must contain only strings"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    values.sort_unstable();
    values.dedup();
    Ok(TagCondition { letter, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: u16, created_at: i64, tags: Value) -> Event {
        Event::from_value(&json!({
            "id": "a".repeat(64), "pubkey": "b".repeat(64), "created_at": created_at,
            "kind": kind, "tags": tags, "content": "", "sig": "c".repeat(128)
        }))
        .unwrap()
    }

    fn filter(value: Value) -> Result<Filter, FilterError> {
        Filter::from_value(&value)
    }

    #[test]
    fn conditions_are_anded() {
        let e = event(1, 100, json!([["t", "nostr"], ["e", "d".repeat(64)]]));
        assert!(
            filter(json!({"kinds": [1], "#t": ["nostr"]}))
                .unwrap()
                .matches(&e)
        );
        assert!(
            !filter(json!({"kinds": [2], "#t": ["nostr"]}))
                .unwrap()
                .matches(&e)
        );
        assert!(
            !filter(json!({"kinds": [1], "#t": ["other"]}))
                .unwrap()
                .matches(&e)
        );
        assert!(
            filter(json!({"authors": ["b".repeat(64)]}))
                .unwrap()
                .matches(&e)
        );
        assert!(filter(json!({"#e": ["d".repeat(64)]})).unwrap().matches(&e));
    }

    #[test]
    fn a_search_filter_is_parsed_and_never_matches_in_memory() {
        let f = filter(json!({"search": "nostr \"good morning\"", "kinds": [1]})).unwrap();
        assert_eq!(f.search.as_deref(), Some("nostr \"good morning\""));
        let e = event(1, 100, json!([]));
        assert!(!f.matches(&e));
        assert!(Filter { search: None, ..f }.matches(&e));
    }

    #[test]
    fn since_and_until_are_inclusive() {
        // NIP-01: "an event matches a filter if since <= created_at <= until holds."
        let e = event(1, 100, json!([]));
        assert!(
            filter(json!({"since": 100, "until": 100}))
                .unwrap()
                .matches(&e)
        );
        assert!(!filter(json!({"since": 101})).unwrap().matches(&e));
        assert!(!filter(json!({"until": 99})).unwrap().matches(&e));
    }

    #[test]
    fn empty_lists_and_inverted_ranges_match_nothing() {
        assert!(filter(json!({"ids": []})).unwrap().is_unsatisfiable());
        assert!(filter(json!({"#t": []})).unwrap().is_unsatisfiable());
        assert!(
            filter(json!({"since": 5, "until": 4}))
                .unwrap()
                .is_unsatisfiable()
        );
        assert!(!filter(json!({})).unwrap().is_unsatisfiable());
        assert!(!filter(json!({}).clone()).unwrap().is_unsatisfiable());
        assert!(
            !filter(json!({"ids": []}))
                .unwrap()
                .matches(&event(1, 1, json!([])))
        );
    }

    #[test]
    fn bad_values_are_invalid_and_unknown_keys_unsupported() {
        assert!(matches!(
            filter(json!({"ids": ["abc"]})),
            Err(FilterError::Invalid(_))
        ));
        assert!(matches!(
            filter(json!({"#p": ["xyz"]})),
            Err(FilterError::Invalid(_))
        ));
        assert!(matches!(
            filter(json!({"kinds": [1.5]})),
            Err(FilterError::Invalid(_))
        ));
        assert!(matches!(
            filter(json!({"kinds": [-1]})),
            Err(FilterError::Invalid(_))
        ));
        assert!(matches!(
            filter(json!({"limit": "5"})),
            Err(FilterError::Invalid(_))
        ));
        assert!(matches!(
            filter(json!({"search": 5})),
            Err(FilterError::Invalid(_))
        ));
        assert!(matches!(
            filter(json!({"searchx": "x"})),
            Err(FilterError::Unsupported(_))
        ));
        assert!(matches!(
            filter(json!({"#ab": ["x"]})),
            Err(FilterError::Unsupported(_))
        ));
        assert!(matches!(filter(json!([])), Err(FilterError::Invalid(_))));
        // Any letter works, and non-hex values are fine outside #e / #p.
        assert!(filter(json!({"#Z": ["anything"]})).is_ok());
    }
}
