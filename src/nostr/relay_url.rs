//! Is this the same relay? NIP-42's `relay` tag, NIP-62's `relay` tag and
//! NIP-98's `u` tag all name a relay by URL, and clients write the same URL
//! in many ways: `wss://` or `https://`, with or without the default port,
//! a trailing slash, upper-case host. One comparison serves all three.

/// A relay URL reduced to what identifies the relay: lower-case host, port
/// (default ports dropped), and path without trailing slashes. The scheme
/// is ignored (a relay behind TLS termination is reached as `wss://` but
/// may be configured as `ws://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    host: String,
    port: Option<u16>,
    path: String,
}

impl RelayUrl {
    /// Reads `ws://`, `wss://`, `http://`, `https://` or scheme-less URLs;
    /// `None` for anything without a host. Query and fragment are ignored.
    pub fn parse(url: &str) -> Option<RelayUrl> {
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if !matches!(scheme.as_str(), "ws" | "wss" | "http" | "https") {
                    return None;
                }
                rest
            }
            None => url,
        };
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        // Credentials are never part of a relay's identity.
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = split_port(authority)?;
        if host.is_empty() {
            return None;
        }
        let port = port.filter(|p| *p != 80 && *p != 443);
        Some(RelayUrl {
            host: host.to_ascii_lowercase(),
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// `host[:port]`, with IPv6 literals in brackets.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

/// True when both URLs name the same relay (see [`RelayUrl`]); false when
/// either cannot be read.
pub fn same_relay(a: &str, b: &str) -> bool {
    match (RelayUrl::parse(a), RelayUrl::parse(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_relay_are_the_same() {
        for other in [
            "wss://relay.example.com",
            "wss://relay.example.com/",
            "ws://relay.example.com",
            "https://Relay.Example.COM",
            "wss://relay.example.com:443/",
            "ws://relay.example.com:80",
            "relay.example.com",
            "wss://relay.example.com/?x=1",
        ] {
            assert!(same_relay("wss://relay.example.com/", other), "{other}");
        }
    }

    #[test]
    fn different_relays_differ() {
        for other in [
            "wss://relay.example.org/",
            "wss://relay.example.com:7777/",
            "wss://relay.example.com/inbox",
            "wss://evil.com/relay.example.com",
            "wss://relay.example.com.evil.com/",
            "ftp://relay.example.com/",
            "",
            "wss://",
        ] {
            assert!(!same_relay("wss://relay.example.com/", other), "{other}");
        }
        assert!(same_relay("ws://127.0.0.1:7777", "ws://127.0.0.1:7777/"));
        assert!(same_relay("ws://[::1]:7777/", "wss://[::1]:7777"));
        assert!(!same_relay("ws://[::1]:7777/", "ws://[::1]:7778/"));
    }
}
