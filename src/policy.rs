//! The cheap write policy: rules decided from the event alone, in
//! microseconds, before the relay spends a signature check on it.

use crate::config::Limits;
use crate::nostr::{Event, kind};

/// The limits an incoming event is held to.
#[derive(Debug, Clone)]
pub struct WritePolicy {
    max_event_tags: usize,
    max_content_length: usize,
    created_at_lower_limit: u64,
    created_at_upper_limit: u64,
}

impl WritePolicy {
    /// The policy the configured limits describe.
    pub fn new(limits: &Limits) -> WritePolicy {
        WritePolicy {
            max_event_tags: limits.max_event_tags,
            max_content_length: limits.max_content_length,
            created_at_lower_limit: limits.created_at_lower_limit,
            created_at_upper_limit: limits.created_at_upper_limit,
        }
    }

    /// `Ok` to go on, or the full `OK false` reason (with its prefix).
    pub fn check(&self, event: &Event, now: i64) -> Result<(), String> {
        if event.kind == kind::CLIENT_AUTH {
            return Err(
                "invalid: kind 22242 is for NIP-42 AUTH messages and is never stored or broadcast"
                    .into(),
            );
        }
        if event.is_protected() {
            return Err("restricted: protected events (NIP-70) need NIP-42 authentication as their author, which this relay does not offer".into());
        }
        if event.tags.len() > self.max_event_tags {
            return Err(format!(
                "invalid: too many tags ({} > {})",
                event.tags.len(),
                self.max_event_tags
            ));
        }
        // NIP-11 counts content in Unicode characters; only count past the
        // byte length where it can matter.
        if event.content.len() > self.max_content_length {
            let characters = event.content.chars().count();
            if characters > self.max_content_length {
                return Err(format!(
                    "invalid: content is too long ({characters} > {} characters)",
                    self.max_content_length
                ));
            }
        }
        let upper = self.created_at_upper_limit;
        if upper > 0 && event.created_at > now.saturating_add(upper as i64) {
            return Err(format!(
                "invalid: created_at is more than {upper} seconds in the future"
            ));
        }
        let lower = self.created_at_lower_limit;
        if lower > 0 && event.created_at < now.saturating_sub(lower as i64) {
            return Err(format!(
                "invalid: created_at is more than {lower} seconds in the past"
            ));
        }
        match event.expiration() {
            Err(error) => Err(format!("invalid: {error}")),
            Ok(Some(expiration)) if expiration <= now => {
                Err("invalid: event has already expired (NIP-40)".into())
            }
            Ok(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(created_at: i64, content: &str, tags: serde_json::Value) -> Event {
        Event::from_value(&json!({
            "id": "a".repeat(64), "pubkey": "b".repeat(64), "created_at": created_at,
            "kind": 1, "tags": tags, "content": content, "sig": "c".repeat(128)
        }))
        .unwrap()
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_content_length: 3,
            max_event_tags: 1,
            created_at_lower_limit: 100,
            ..Limits::default()
        };
        let policy = WritePolicy::new(&limits);
        let now = 1_000_000;
        assert!(
            policy.check(&event(now, "ééé", json!([])), now).is_ok(),
            "3 characters, 6 bytes"
        );
        assert!(
            policy
                .check(&event(now, "abcd", json!([])), now)
                .unwrap_err()
                .starts_with("invalid: content")
        );
        assert!(
            policy
                .check(&event(now, "", json!([["t", "a"], ["t", "b"]])), now)
                .unwrap_err()
                .contains("tags")
        );
        assert!(
            policy
                .check(&event(now + 901, "", json!([])), now)
                .unwrap_err()
                .contains("future")
        );
        assert!(policy.check(&event(now + 900, "", json!([])), now).is_ok());
        assert!(
            policy
                .check(&event(now - 101, "", json!([])), now)
                .unwrap_err()
                .contains("past")
        );
        assert!(
            policy
                .check(&event(now, "", json!([["-"]])), now)
                .unwrap_err()
                .starts_with("restricted:")
        );
        let expired = event(now, "", json!([["expiration", (now - 1).to_string()]]));
        assert!(policy.check(&expired, now).unwrap_err().contains("expired"));
        let malformed = event(now, "", json!([["expiration", "soon"]]));
        assert!(
            policy
                .check(&malformed, now)
                .unwrap_err()
                .starts_with("invalid:")
        );
    }
}
