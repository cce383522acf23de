//! How fast one client may go: new connections, open connections, EVENTs
//! and REQs per client address, EVENTs per authenticated author.
//!
//! The limits are `governor`'s keyed GCRA limiters (a burst of the
//! per-minute quota, then a steady refill), so a client that pauses gets its
//! allowance back smoothly. Addresses are keyed as a network operator would
//! count subscribers: an IPv4 address exactly, an IPv6 address by its /64
//! (one household's or one VPS's allocation). Nothing here bans anyone:
//! refusals are answered `rate-limited:` and stop when the client slows down.
//!
//! A reload (SIGHUP) swaps in new quotas at once. A limiter whose quota did
//! not change is kept with what it knows; one whose quota changed starts
//! afresh, so every client gets a full allowance under the new quota (the
//! per-key state of a changed limit is lost, which only ever errs towards
//! letting a client through once more). Open-connection counts are kept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::access::Cidr;
use crate::config::RateLimit;

/// The part of a client address its limits are kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4(u32),
    /// The top 64 bits.
    V6(u64),
}

impl AddressKey {
    /// IPv4 (including IPv4-mapped IPv6) exactly; IPv6 by /64.
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                None => AddressKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

type Limiter<K> = DefaultKeyedRateLimiter<K>;

/// A keyed per-minute limiter and the quota it enforces.
struct PerMinute<K: std::hash::Hash + Eq + Clone> {
    quota: u32,
    limiter: Arc<Limiter<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> PerMinute<K> {
    /// A limiter for `quota` per minute, or `None` for "no limit" (0). The
    /// `previous` one is kept, state and all, when its quota is the same.
    fn new(quota: u32, previous: Option<&PerMinute<K>>) -> Option<PerMinute<K>> {
        let n = NonZeroU32::new(quota)?;
        let limiter = match previous {
            Some(previous) if previous.quota == quota => previous.limiter.clone(),
            _ => Arc::new(RateLimiter::keyed(Quota::per_minute(n).allow_burst(n))),
        };
        Some(PerMinute { quota, limiter })
    }

    /// `Ok` while `key` is within its quota.
    fn check(&self, key: &K) -> Result<(), ()> {
        self.limiter.check_key(key).map_err(|_| ())
    }

    fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The quotas of one `[rate_limit]` section; replaced whole on reload.
struct Quotas {
    enabled: bool,
    exempt: Vec<Cidr>,
    connections: Option<PerMinute<AddressKey>>,
    events: Option<PerMinute<AddressKey>>,
    reqs: Option<PerMinute<AddressKey>>,
    author_events: Option<PerMinute<[u8; 32]>>,
    max_open_per_address: usize,
    max_concurrent_queries: usize,
    max_refusals_per_minute: u32,
}

impl Quotas {
    /// The quotas `config` describes, keeping `previous`'s limiters whose
    /// quota is unchanged.
    fn new(config: &RateLimit, previous: Option<&Quotas>) -> Quotas {
        Quotas {
            enabled: config.enabled,
            exempt: config
                .exempt
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
            connections: PerMinute::new(
                config.connections_per_minute,
                previous.and_then(|p| p.connections.as_ref()),
            ),
            events: PerMinute::new(
                config.events_per_minute,
                previous.and_then(|p| p.events.as_ref()),
            ),
            reqs: PerMinute::new(
                config.reqs_per_minute,
                previous.and_then(|p| p.reqs.as_ref()),
            ),
            author_events: PerMinute::new(
                config.events_per_minute_per_pubkey,
                previous.and_then(|p| p.author_events.as_ref()),
            ),
            max_open_per_address: config.max_connections_per_address,
            max_concurrent_queries: if config.enabled {
                config.max_concurrent_queries
            } else {
                0
            },
            max_refusals_per_minute: config.max_refusals_per_minute,
        }
    }

    /// Whether `ip` is limited at all.
    fn applies_to(&self, ip: IpAddr) -> bool {
        self.enabled && !self.exempt.iter().any(|range| range.contains(ip))
    }
}

/// Every rate limit of the relay, shared by all connections.
pub struct RateLimits {
    quotas: ArcSwap<Quotas>,
    open: Mutex<HashMap<AddressKey, usize>>,
}

/// Held while a connection is open; counts it against its address.
pub struct OpenConnection {
    limits: Arc<RateLimits>,
    key: Option<AddressKey>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

impl RateLimits {
    /// The limits `[rate_limit]` describes (validated by `Config`).
    pub fn new(config: &RateLimit) -> RateLimits {
        RateLimits {
            quotas: ArcSwap::from_pointee(Quotas::new(config, None)),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Puts new quotas in force for every connection, from its next
    /// message (SIGHUP). Limiters whose quota changed start afresh.
    pub fn reconfigure(&self, config: &RateLimit) {
        let previous = self.quotas.load();
        self.quotas
            .store(Arc::new(Quotas::new(config, Some(&previous))));
    }

    /// Whether `ip` is limited at all.
    pub fn applies_to(&self, ip: IpAddr) -> bool {
        self.quotas.load().applies_to(ip)
    }

    /// Stored queries one connection may run at once; 0 = no limit.
    pub fn max_concurrent_queries(&self) -> usize {
        self.quotas.load().max_concurrent_queries
    }

    /// Refusals in a minute after which a connection is closed.
    pub fn max_refusals_per_minute(&self) -> u32 {
        self.quotas.load().max_refusals_per_minute
    }

    /// A new WebSocket connection from `ip`: admitted (the guard counts it
    /// until dropped), or the `rate-limited:` reason to answer with 429.
    pub fn admit_connection(self: &Arc<Self>, ip: IpAddr) -> Result<OpenConnection, String> {
        let quotas = self.quotas.load();
        if !quotas.applies_to(ip) {
            return Ok(OpenConnection {
                limits: self.clone(),
                key: None,
            });
        }
        let key = AddressKey::of(ip);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(key).or_insert(0);
        // The cap on open connections first: a refusal there does not use
        // up the per-minute allowance.
        if quotas.max_open_per_address > 0 && *count >= quotas.max_open_per_address {
            let reason = format!(
                "rate-limited: at most {} connections at once from one address",
                quotas.max_open_per_address
            );
            if *count == 0 {
                open.remove(&key);
            }
            return Err(reason);
        }
        if let Some(limiter) = &quotas.connections
            && limiter.check(&key).is_err()
        {
            if *count == 0 {
                open.remove(&key);
            }
            return Err(
                "rate-limited: too many new connections from your address; slow down".into(),
            );
        }
        *count += 1;
        Ok(OpenConnection {
            limits: self.clone(),
            key: Some(key),
        })
    }

    /// One EVENT from `ip`, by `author` if the connection authenticated as
    /// the event's author. `Err` is the full `OK false` reason.
    pub fn allow_event(&self, ip: IpAddr, author: Option<&[u8; 32]>) -> Result<(), String> {
        let quotas = self.quotas.load();
        if !quotas.applies_to(ip) {
            return Ok(());
        }
        if let (Some(limiter), Some(author)) = (&quotas.author_events, author)
            && limiter.check(author).is_err()
        {
            return Err("rate-limited: you are publishing too fast; slow down".into());
        }
        match &quotas.events {
            Some(limiter) if limiter.check(&AddressKey::of(ip)).is_err() => {
                Err("rate-limited: too many events from your address; slow down".into())
            }
            _ => Ok(()),
        }
    }

    /// One REQ from `ip`. `Err` is the full `CLOSED` reason.
    pub fn allow_req(&self, ip: IpAddr) -> Result<(), String> {
        let quotas = self.quotas.load();
        if !quotas.applies_to(ip) {
            return Ok(());
        }
        match &quotas.reqs {
            Some(limiter) if limiter.check(&AddressKey::of(ip)).is_err() => {
                Err("rate-limited: too many subscriptions from your address; slow down".into())
            }
            _ => Ok(()),
        }
    }

    /// Forgets addresses and authors whose allowance is full again, so that
    /// the limiters' memory follows the active clients, not every client
    /// ever seen. Called periodically.
    pub fn forget_idle(&self) {
        let quotas = self.quotas.load();
        for limiter in [&quotas.connections, &quotas.events, &quotas.reqs]
            .into_iter()
            .flatten()
        {
            limiter.forget_idle();
        }
        if let Some(limiter) = &quotas.author_events {
            limiter.forget_idle();
        }
    }
}

/// The client's address: the socket's peer, or, when the peer is a trusted
/// reverse proxy, the address it reports: the nearest untrusted entry of
/// `X-Forwarded-For` (each proxy appends what it received from, so a
/// client cannot forge that entry), else `X-Real-IP` (which some proxies
/// pass through from the client unchanged, so it comes second).
pub fn client_address(
    peer: IpAddr,
    real_ip: Option<&str>,
    forwarded_for: Option<&str>,
    trusted: &[Cidr],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    if let Some(forwarded_for) = forwarded_for {
        // Right to left, skipping our own proxies.
        for entry in forwarded_for.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) if is_trusted(ip) => continue,
                Ok(ip) => return ip,
                Err(_) => return peer,
            }
        }
    }
    real_ip
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        assert_eq!(
            AddressKey::of(ip("2001:db8:1:2:aaaa::1")),
            AddressKey::of(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            AddressKey::of(ip("2001:db8:1:2::1")),
            AddressKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            AddressKey::of(ip("::ffff:10.0.0.1")),
            AddressKey::of(ip("10.0.0.1"))
        );
        assert_ne!(
            AddressKey::of(ip("10.0.0.1")),
            AddressKey::of(ip("10.0.0.2"))
        );
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted = vec![
            Cidr::parse("127.0.0.1").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let xff = Some("198.51.100.7, 203.0.113.9, 10.1.1.1");
        assert_eq!(
            client_address(ip("127.0.0.1"), None, xff, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_address(ip("192.0.2.1"), None, xff, &trusted),
            ip("192.0.2.1")
        );
        // X-Forwarded-For first: a client-supplied X-Real-IP passed through
        // by a proxy cannot make it exempt.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("127.0.0.1"), xff, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("198.51.100.1"), None, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), None, Some("garbage"), &trusted),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn a_quota_refuses_past_its_burst_and_exempts_the_exempt() {
        let limits = RateLimits::new(&RateLimit {
            events_per_minute: 3,
            exempt: vec!["127.0.0.1".into()],
            ..RateLimit::default()
        });
        for _ in 0..3 {
            assert!(limits.allow_event(ip("192.0.2.1"), None).is_ok());
        }
        let refused = limits.allow_event(ip("192.0.2.1"), None).unwrap_err();
        assert!(refused.starts_with("rate-limited:"), "{refused}");
        assert!(
            limits.allow_event(ip("192.0.2.2"), None).is_ok(),
            "others go on"
        );
        for _ in 0..10 {
            assert!(limits.allow_event(ip("127.0.0.1"), None).is_ok());
        }
    }

    #[test]
    fn a_reload_changes_quotas_and_keeps_the_state_of_unchanged_ones() {
        let limits = RateLimits::new(&RateLimit {
            events_per_minute: 2,
            reqs_per_minute: 2,
            exempt: Vec::new(),
            ..RateLimit::default()
        });
        let client = ip("192.0.2.1");
        for _ in 0..2 {
            assert!(limits.allow_event(client, None).is_ok());
            assert!(limits.allow_req(client).is_ok());
        }
        assert!(limits.allow_event(client, None).is_err());
        assert!(limits.allow_req(client).is_err());
        limits.reconfigure(&RateLimit {
            events_per_minute: 5,
            reqs_per_minute: 2,
            max_concurrent_queries: 3,
            exempt: Vec::new(),
            ..RateLimit::default()
        });
        // A new quota starts afresh; an unchanged one remembers the client.
        for _ in 0..5 {
            assert!(limits.allow_event(client, None).is_ok());
        }
        assert!(limits.allow_event(client, None).is_err());
        assert!(limits.allow_req(client).is_err(), "same quota, same state");
        assert_eq!(limits.max_concurrent_queries(), 3);
        limits.reconfigure(&RateLimit {
            enabled: false,
            ..RateLimit::default()
        });
        assert!(limits.allow_event(client, None).is_ok());
        assert_eq!(limits.max_concurrent_queries(), 0, "no limit when off");
    }

    #[test]
    fn open_connections_are_counted_until_dropped() {
        let limits = Arc::new(RateLimits::new(&RateLimit {
            max_connections_per_address: 2,
            exempt: Vec::new(),
            ..RateLimit::default()
        }));
        let a = limits.admit_connection(ip("192.0.2.1")).unwrap();
        let _b = limits.admit_connection(ip("192.0.2.1")).unwrap();
        assert!(limits.admit_connection(ip("192.0.2.1")).is_err());
        drop(a);
        assert!(limits.admit_connection(ip("192.0.2.1")).is_ok());
    }
}
