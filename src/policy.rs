//! The cheap write policy: rules decided from the event alone, in
//! microseconds, before the relay spends a signature check on it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Limits;
use crate::nostr::{Event, kind, pow};

/// The limits an incoming event is held to. Clones share the limits, so
/// that [`WritePolicy::set_limits`] (a reload) reaches every one of them.
#[derive(Debug, Clone)]
pub struct WritePolicy {
    limits: Arc<ArcSwap<EventLimits>>,
}

/// `[limits]`'s part that an event is checked against.
#[derive(Debug)]
struct EventLimits {
    max_event_tags: usize,
    max_content_length: usize,
    created_at_lower_limit: u64,
    created_at_upper_limit: u64,
    min_pow_difficulty: u32,
}

impl WritePolicy {
    /// The policy the configured limits describe.
    pub fn new(limits: &Limits) -> WritePolicy {
        WritePolicy {
            limits: Arc::new(ArcSwap::from_pointee(EventLimits::new(limits))),
        }
    }

    /// Holds every event checked from now on to `limits` (SIGHUP).
    pub fn set_limits(&self, limits: &Limits) {
        self.limits.store(Arc::new(EventLimits::new(limits)));
    }

    /// `Ok` to go on, or the full `OK false` reason (with its prefix).
    pub fn check(&self, event: &Event, now: i64) -> Result<(), String> {
        self.limits.load().check(event, now)
    }
}

impl EventLimits {
    fn new(limits: &Limits) -> EventLimits {
        EventLimits {
            max_event_tags: limits.max_event_tags,
            max_content_length: limits.max_content_length,
            created_at_lower_limit: limits.created_at_lower_limit,
            created_at_upper_limit: limits.created_at_upper_limit,
            min_pow_difficulty: u32::from(limits.min_pow_difficulty),
        }
    }

    fn check(&self, event: &Event, now: i64) -> Result<(), String> {
        if event.kind == kind::CLIENT_AUTH {
            return Err(
                "invalid: kind 22242 is for NIP-42 AUTH messages and is never stored or broadcast"
                    .into(),
            );
        }
        if event.kind == kind::SEAL {
            return Err(
                "invalid: kind 13 seals are sent only inside gift wraps (NIP-59), never on their own"
                    .into(),
            );
        }
        if matches!(event.kind, kind::REPOST | kind::GENERIC_REPOST) && reposts_protected(event) {
            return Err(
                "restricted: this repost embeds a protected event (NIP-70), which only its author may publish"
                    .into(),
            );
        }
        // NIP-62: a request to vanish is accepted whatever proof of work
        // is asked of other events.
        if self.min_pow_difficulty > 0 && event.kind != kind::REQUEST_TO_VANISH {
            let difficulty = pow::difficulty(event);
            if difficulty < self.min_pow_difficulty {
                return Err(format!(
                    "pow: difficulty {difficulty} is less than {}",
                    self.min_pow_difficulty
                ));
            }
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
            // The stored request is what keeps the deleted events out.
            Ok(Some(_)) if event.kind == kind::REQUEST_TO_VANISH => {
                Err("invalid: a request to vanish cannot expire (NIP-62)".into())
            }
            Ok(Some(expiration)) if expiration <= now => {
                Err("invalid: event has already expired (NIP-40)".into())
            }
            Ok(_) => Ok(()),
        }
    }
}

/// NIP-70: "reposts of protected events … should be rejected". A repost
/// carries the reposted event as JSON in its content.
fn reposts_protected(event: &Event) -> bool {
    #[derive(serde::Deserialize)]
    struct Tags {
        tags: Vec<Vec<String>>,
    }
    serde_json::from_str::<Tags>(&event.content).is_ok_and(|reposted| {
        reposted
            .tags
            .iter()
            .any(|tag| tag.len() == 1 && tag[0] == "-")
    })
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
        // Protected events are the ingester's business (it knows who
        // authenticated); the cheap policy lets them through.
        assert!(policy.check(&event(now, "", json!([["-"]])), now).is_ok());
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

    fn of_kind(kind: u16, content: &str, tags: serde_json::Value) -> Event {
        let mut event = event(1_000_000, content, tags);
        event.kind = kind;
        event
    }

    #[test]
    fn new_limits_reach_every_clone() {
        let policy = WritePolicy::new(&Limits::default());
        let on_a_checker = policy.clone();
        let now = 1_000_000;
        assert!(
            on_a_checker
                .check(&event(now, "abcd", json!([])), now)
                .is_ok()
        );
        policy.set_limits(&Limits {
            max_content_length: 3,
            ..Limits::default()
        });
        assert!(
            on_a_checker
                .check(&event(now, "abcd", json!([])), now)
                .unwrap_err()
                .starts_with("invalid: content")
        );
    }

    #[test]
    fn seals_and_reposts_of_protected_events_are_refused() {
        let policy = WritePolicy::new(&Limits::default());
        let now = 1_000_000;
        let seal = of_kind(kind::SEAL, "", json!([]));
        assert!(
            policy
                .check(&seal, now)
                .unwrap_err()
                .starts_with("invalid:")
        );
        let protected = json!({"id": "a".repeat(64), "pubkey": "b".repeat(64), "created_at": 1,
            "kind": 1, "tags": [["-"]], "content": "", "sig": "c".repeat(128)})
        .to_string();
        for kind in [kind::REPOST, kind::GENERIC_REPOST] {
            let repost = of_kind(kind, &protected, json!([]));
            assert!(
                policy
                    .check(&repost, now)
                    .unwrap_err()
                    .starts_with("restricted:")
            );
        }
        let plain = protected.replace(r#"[["-"]]"#, "[]");
        assert!(
            policy
                .check(&of_kind(kind::REPOST, &plain, json!([])), now)
                .is_ok()
        );
        assert!(
            policy
                .check(&of_kind(kind::REPOST, "", json!([])), now)
                .is_ok()
        );
    }

    #[test]
    fn proof_of_work_is_required_when_configured() {
        let policy = WritePolicy::new(&Limits {
            min_pow_difficulty: 8,
            ..Limits::default()
        });
        let now = 1_000_000;
        let mut mined = event(now, "", json!([]));
        mined.id[0] = 0;
        mined.id[1] = 0x7f;
        assert!(policy.check(&mined, now).is_ok(), "9 bits");
        let unmined = event(now, "", json!([]));
        assert_eq!(
            policy.check(&unmined, now).unwrap_err(),
            "pow: difficulty 0 is less than 8"
        );
        let low_target = event(now, "", json!([["nonce", "1", "4"]]));
        let mut low_target = low_target;
        low_target.id[0] = 0;
        assert_eq!(
            policy.check(&low_target, now).unwrap_err(),
            "pow: difficulty 4 is less than 8"
        );
        let vanish = of_kind(kind::REQUEST_TO_VANISH, "", json!([]));
        assert!(policy.check(&vanish, now).is_ok(), "NIP-62 needs no work");
    }
}
