//! NIP-11 relay information document (the web page for people is in
//! `page.rs`).

use serde_json::{Map, Value, json};

use crate::config::Config;

/// NIPs this build always implements (45: COUNT, on by default).
pub const SUPPORTED_NIPS: &[u16] = &[1, 9, 11, 40, 45];

/// The NIPs advertised with this configuration: the core ones, and each
/// optional one that is switched on.
pub fn supported_nips(config: &Config) -> Vec<u16> {
    let mut nips = SUPPORTED_NIPS.to_vec();
    if config.limits.min_pow_difficulty > 0 {
        nips.push(13);
    }
    if config.auth.enabled {
        // AUTH, and what it makes possible: DMs and gift wraps readable only
        // by their parties (17, 59), protected events (70).
        nips.extend([17, 42, 59, 70]);
    }
    if config.search.enabled {
        nips.push(50);
    }
    nips.push(62);
    if config.negentropy.enabled {
        nips.push(77);
    }
    if config.management.enabled {
        nips.push(86);
    }
    nips.sort_unstable();
    nips
}

/// The NIP-11 document. Every limit the relay enforces appears under
/// `limitation` where NIP-11 has a field for it.
pub fn relay_info(config: &Config) -> Value {
    let mut doc = Map::new();
    let info = &config.info;
    let optional = [
        ("name", &info.name),
        ("description", &info.description),
        ("pubkey", &info.pubkey),
        ("self", &info.self_pubkey),
        ("contact", &info.contact),
        ("icon", &info.icon),
        ("banner", &info.banner),
        ("terms_of_service", &info.terms_of_service),
        ("posting_policy", &info.posting_policy),
    ];
    for (key, value) in optional {
        if !value.is_empty() {
            doc.insert(key.into(), Value::String(value.clone()));
        }
    }
    doc.insert("software".into(), json!(env!("CARGO_PKG_REPOSITORY")));
    doc.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    doc.insert("supported_nips".into(), json!(supported_nips(config)));
    let l = &config.limits;
    let mut limitation = json!({
        "max_message_length": l.max_message_length,
        "max_subscriptions": l.max_subscriptions,
        "max_limit": l.max_limit,
        "default_limit": l.default_limit,
        "max_subid_length": l.max_subid_length,
        "max_event_tags": l.max_event_tags,
        "max_content_length": l.max_content_length,
        "min_pow_difficulty": l.min_pow_difficulty,
        // NIP-11: "requires NIP-42 authentication to happen before a new
        // connection may perform any other action".
        "auth_required": config.auth.required_for_read && config.auth.required_for_write,
        "payment_required": false,
        "restricted_writes": config.auth.required_for_write,
    });
    if l.created_at_lower_limit > 0 {
        limitation["created_at_lower_limit"] = json!(l.created_at_lower_limit);
    }
    if l.created_at_upper_limit > 0 {
        limitation["created_at_upper_limit"] = json!(l.created_at_upper_limit);
    }
    doc.insert("limitation".into(), limitation);
    Value::Object(doc)
}
