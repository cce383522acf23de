//! The relay's own web page, for a person who opens its address in a
//! browser: what the NIP-11 document says (rendered here, every value
//! escaped), live figures the page's script reads from `/stats.json`, and
//! the NIP-86 admin area, signed in the browser by a NIP-07 extension.
//!
//! The HTML, CSS, script and mark live in `assets/` and are compiled into
//! the binary; the page loads nothing from other hosts except an icon or
//! banner image the operator configured, which the Content-Security-Policy
//! names by origin.

use std::fmt::Write as _;
use std::sync::LazyLock;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::nostr::nip19;

type Body = Full<Bytes>;

/// The page, with `{{slot}}`s that [`render`] fills.
const TEMPLATE: &str = include_str!("../../assets/index.html");

/// The admin area, part of the page only while NIP-86 is on.
const ADMIN_AREA: &str = include_str!("../../assets/admin.html");

/// A file the page loads from this relay, compiled in.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const SCRIPT: Asset = Asset {
    path: "/assets/app.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_bytes!("../../assets/app.js"),
};

const STYLE: Asset = Asset {
    path: "/assets/style.css",
    content_type: "text/css; charset=utf-8",
    body: include_bytes!("../../assets/style.css"),
};

/// The built-in icon (and favicon), for relays without a configured icon.
const MARK: Asset = Asset {
    path: "/assets/mark.svg",
    content_type: "image/svg+xml",
    body: include_bytes!("../../assets/mark.svg"),
};

const ASSETS: [&Asset; 3] = [&SCRIPT, &STYLE, &MARK];

impl Asset {
    /// The path with a hash of the content, so that browsers may keep a
    /// copy for ever and still fetch the new file after an upgrade.
    fn versioned_url(&self) -> String {
        let hash = hex::encode(Sha256::digest(self.body));
        format!("{}?v={}", self.path, &hash[..12])
    }
}

/// The assets' versioned URLs, hashed once.
struct AssetUrls {
    script: String,
    style: String,
    mark: String,
}

static ASSET_URLS: LazyLock<AssetUrls> = LazyLock::new(|| AssetUrls {
    script: SCRIPT.versioned_url(),
    style: STYLE.versioned_url(),
    mark: MARK.versioned_url(),
});

/// Answers a request for `/assets/…`; `None` when the path is not one.
pub fn asset<B>(request: &Request<B>) -> Option<Response<Body>> {
    let asset = ASSETS
        .into_iter()
        .find(|asset| asset.path == request.uri().path())?;
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Some(
            Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(header::ALLOW, "GET, HEAD")
                .body(Body::default())
                .unwrap_or_default(),
        );
    }
    Some(
        Response::builder()
            .header(header::CONTENT_TYPE, asset.content_type)
            // The page asks for `?v=<hash>`: a new build is a new URL.
            .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .body(Body::new(Bytes::from_static(asset.body)))
            .unwrap_or_default(),
    )
}

/// The page for a browser's `GET /` (or `HEAD /`). `nip11` is the relay's
/// current NIP-11 document (NIP-86 may have renamed the relay: the page
/// shows what NIP-11 shows); `relay_url` is relay.toml's, empty when the
/// address is taken from the Host header.
pub fn home<B>(nip11: &[u8], relay_url: &str, request: &Request<B>) -> Response<Body> {
    let info = serde_json::from_slice::<Value>(nip11).unwrap_or(Value::Null);
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    let page = render(&info, &Address::new(relay_url, host));
    let csp = HeaderValue::from_str(&page.content_security_policy)
        .unwrap_or_else(|_| HeaderValue::from_static(STRICT_POLICY));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CONTENT_SECURITY_POLICY, csp)
        // The same URL answers NIP-11 JSON, and the page follows run-time
        // edits (NIP-86): caches must ask again, per Accept.
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::VARY, "Accept")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(Body::new(Bytes::from(page.html)))
        .unwrap_or_default()
}

/// The policy without operator images: only this relay's own files, and
/// fetches back to it (`/stats.json`, NIP-86).
const STRICT_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The relay's address as a client should write it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Address {
    url: String,
    /// True when guessed from the Host header (`wss://` assumed); the
    /// page's script then corrects the scheme from the page's own.
    derived: bool,
}

impl Address {
    fn new(relay_url: &str, host: Option<&str>) -> Address {
        if !relay_url.is_empty() {
            return Address {
                url: relay_url.to_owned(),
                derived: false,
            };
        }
        Address {
            url: host.map_or_else(String::new, |host| format!("wss://{host}/")),
            derived: true,
        }
    }
}

/// A rendered page and the policy that lets it load what it needs.
struct Page {
    html: String,
    content_security_policy: String,
}

/// Fills the template from the NIP-11 document.
fn render(info: &Value, address: &Address) -> Page {
    let field = |key: &str| info.get(key).and_then(Value::as_str).unwrap_or_default();
    let name = match field("name").trim() {
        "" => "Nostr relay",
        name => name,
    };
    let nips: Vec<u64> = info
        .get("supported_nips")
        .and_then(Value::as_array)
        .map(|nips| nips.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let icon = ImageUrl::parse(field("icon"));
    let banner = ImageUrl::parse(field("banner"));
    let urls = &*ASSET_URLS;
    let html = fill(TEMPLATE, |slot| {
        Some(match slot {
            "name" => escape(name),
            "description" => escape(field("description")),
            "relay_url" => escape(&address.url),
            "relay_url_derived" => address.derived.to_string(),
            "mark_url" => escape(&urls.mark),
            "style_url" => escape(&urls.style),
            "script_url" => escape(&urls.script),
            "icon" => icon_html(icon.as_ref(), &urls.mark),
            "banner" => banner.as_ref().map_or_else(String::new, |banner| {
                format!(
                    r#"<img class="banner" src="{}" alt="" referrerpolicy="no-referrer">"#,
                    escape(&banner.url)
                )
            }),
            "about" => about_html(info),
            "limits" => limits_html(info.get("limitation")),
            "nips" => nips_html(&nips),
            "nip_count" => match nips.len() {
                1 => "1 NIP".to_owned(),
                n => format!("{n} NIPs"),
            },
            "admin" if nips.contains(&86) => ADMIN_AREA.to_owned(),
            "admin" => String::new(),
            "software" => software_html(field("software"), field("version")),
            _ => return None,
        })
    });
    let mut image_sources: Vec<&str> = [&icon, &banner]
        .into_iter()
        .flatten()
        .map(|image| image.origin.as_str())
        .collect();
    image_sources.sort_unstable();
    image_sources.dedup();
    let content_security_policy = if image_sources.is_empty() {
        STRICT_POLICY.to_owned()
    } else {
        STRICT_POLICY.replace(
            "img-src 'self';",
            &format!("img-src 'self' {};", image_sources.join(" ")),
        )
    };
    Page {
        html,
        content_security_policy,
    }
}

/// Replaces each `{{slot}}` with `value(slot)`, in one pass (so that a
/// value containing `{{…}}` is never read as a slot). Unknown slots become
/// empty.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 4096);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        out.push_str(&value(&after[..end]).unwrap_or_default());
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Text made safe for HTML content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An operator's image URL: http(s) with a plain host, so that its origin
/// can stand in the Content-Security-Policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageUrl {
    url: String,
    origin: String,
}

impl ImageUrl {
    fn parse(text: &str) -> Option<ImageUrl> {
        let text = text.trim();
        let (scheme, rest) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return None;
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let plain_host = !authority.is_empty()
            && authority
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        let plain_url = !text.chars().any(|c| c.is_whitespace() || c.is_control());
        (plain_host && plain_url).then(|| ImageUrl {
            url: text.to_owned(),
            origin: format!("{scheme}://{}", authority.to_ascii_lowercase()),
        })
    }
}

fn icon_html(icon: Option<&ImageUrl>, mark_url: &str) -> String {
    let src = icon.map_or(mark_url, |icon| icon.url.as_str());
    format!(
        r#"<img class="icon" id="relay-icon" src="{}" data-fallback="{}" alt="" width="72" height="72" referrerpolicy="no-referrer">"#,
        escape(src),
        escape(mark_url)
    )
}

/// One `<dt>`/`<dd>` pair; `value` is HTML already. A `wide` one (a key)
/// takes two columns where there are two.
fn fact(out: &mut String, label: &str, value: &str, wide: bool) {
    let class = if wide { "fact wide" } else { "fact" };
    let _ = writeln!(
        out,
        r#"<div class="{class}"><dt>{}</dt><dd>{value}</dd></div>"#,
        escape(label)
    );
}

/// A link if `url` is http(s), else the text.
fn link_or_text(url: &str, text: &str) -> String {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        format!(r#"<a href="{}">{}</a>"#, escape(url), escape(text))
    } else {
        escape(text)
    }
}

/// A pubkey as a person reads it: its npub (the hex on hover), or the text
/// as given when it is not a key.
fn pubkey_html(hex: &str) -> String {
    match nip19::parse_pubkey(hex) {
        Some(key) => format!(
            r#"<code class="key" title="{}">{}</code>"#,
            escape(hex),
            nip19::encode_npub(&key)
        ),
        None => escape(hex),
    }
}

/// Contact, keys, policies, software: the NIP-11 facts a person looks for.
fn about_html(info: &Value) -> String {
    let field = |key: &str| {
        info.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or_default()
    };
    let mut out = String::new();
    let contact = field("contact");
    if !contact.is_empty() {
        let html = if let Some(address) = contact.strip_prefix("mailto:") {
            format!(
                r#"<a href="mailto:{}">{}</a>"#,
                escape(address),
                escape(address)
            )
        } else if !contact.contains([' ', ':', '/']) && contact.contains('@') {
            format!(
                r#"<a href="mailto:{}">{}</a>"#,
                escape(contact),
                escape(contact)
            )
        } else {
            link_or_text(contact, contact)
        };
        fact(&mut out, "Contact", &html, false);
    }
    for (key, label) in [("pubkey", "Admin"), ("self", "Relay's own key")] {
        let value = field(key);
        if !value.is_empty() {
            fact(&mut out, label, &pubkey_html(value), true);
        }
    }
    for (key, label) in [
        ("terms_of_service", "Terms of service"),
        ("posting_policy", "Posting policy"),
    ] {
        let value = field(key);
        if !value.is_empty() {
            fact(&mut out, label, &link_or_text(value, value), false);
        }
    }
    let software = field("software");
    if !software.is_empty() {
        let shown = software
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        fact(&mut out, "Software", &link_or_text(software, shown), false);
    }
    let version = field("version");
    if !version.is_empty() {
        fact(&mut out, "Version", &escape(version), false);
    }
    out
}

/// How a limit's value reads.
#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    Count,
    Characters,
    Bits,
    Past,
    Future,
    YesNo,
}

/// The NIP-11 `limitation` fields in the order people read them.
const LIMITS: &[(&str, &str, Unit)] = &[
    ("max_message_length", "Largest message", Unit::Bytes),
    ("max_content_length", "Longest content", Unit::Characters),
    ("max_event_tags", "Tags per event", Unit::Count),
    (
        "max_subscriptions",
        "Subscriptions per connection",
        Unit::Count,
    ),
    ("max_limit", "Largest filter limit", Unit::Count),
    ("default_limit", "Default filter limit", Unit::Count),
    (
        "max_subid_length",
        "Longest subscription id",
        Unit::Characters,
    ),
    ("min_pow_difficulty", "Proof of work", Unit::Bits),
    ("created_at_lower_limit", "Oldest created_at", Unit::Past),
    ("created_at_upper_limit", "Newest created_at", Unit::Future),
    ("auth_required", "Authentication required", Unit::YesNo),
    ("restricted_writes", "Restricted writes", Unit::YesNo),
    ("payment_required", "Payment required", Unit::YesNo),
];

fn limits_html(limitation: Option<&Value>) -> String {
    let Some(Value::Object(limitation)) = limitation else {
        return String::new();
    };
    let mut out = String::new();
    for (key, label, unit) in LIMITS {
        if let Some(value) = limitation.get(*key) {
            fact(&mut out, label, &escape(&limit_text(value, *unit)), false);
        }
    }
    let mut others: Vec<_> = limitation
        .iter()
        .filter(|(key, _)| !LIMITS.iter().any(|(known, _, _)| known == key))
        .collect();
    others.sort_by(|a, b| a.0.cmp(b.0));
    for (key, value) in others {
        let text = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        fact(&mut out, key, &escape(&text), false);
    }
    out
}

fn limit_text(value: &Value, unit: Unit) -> String {
    if let (Unit::YesNo, Some(flag)) = (unit, value.as_bool()) {
        return if flag { "Yes" } else { "No" }.to_owned();
    }
    let Some(n) = value.as_u64() else {
        return value.to_string();
    };
    match unit {
        Unit::Bytes => bytes_text(n),
        Unit::Count => thousands(n),
        Unit::Characters => format!("{} characters", thousands(n)),
        Unit::Bits if n == 0 => "Not required".to_owned(),
        Unit::Bits => format!("{n} leading zero bits"),
        Unit::Past => format!("{} in the past", duration_text(n)),
        Unit::Future => format!("{} in the future", duration_text(n)),
        Unit::YesNo => thousands(n),
    }
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Binary units when they are exact (limits are usually powers of two).
fn bytes_text(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", thousands(n / MIB))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", thousands(n / 1024))
    } else {
        format!("{} bytes", thousands(n))
    }
}

fn duration_text(seconds: u64) -> String {
    match seconds {
        0..120 => format!("{seconds} s"),
        120..7200 => format!("{} min", seconds / 60),
        7200..172_800 => format!("{} h", seconds / 3600),
        _ => format!("{} days", seconds / 86_400),
    }
}

/// What each NIP this relay may advertise is about.
fn nip_title(nip: u64) -> &'static str {
    match nip {
        1 => "Basic protocol",
        9 => "Event deletion",
        11 => "Relay information",
        13 => "Proof of work",
        17 => "Private messages",
        40 => "Expiration",
        42 => "Authentication",
        45 => "Event counts",
        50 => "Search",
        59 => "Gift wrap",
        62 => "Request to vanish",
        70 => "Protected events",
        77 => "Negentropy sync",
        86 => "Relay management",
        _ => "",
    }
}

fn nips_html(nips: &[u64]) -> String {
    let mut out = String::new();
    for nip in nips {
        let title = nip_title(*nip);
        let _ = writeln!(
            out,
            r#"<li><a class="nip" href="https://github.com/nostr-protocol/nips/blob/master/{nip:02}.md" title="NIP-{nip:02}{dash}{title}"><span class="nip-number">NIP-{nip:02}</span><span class="nip-title">{title}</span></a></li>"#,
            dash = if title.is_empty() { "" } else { ": " },
        );
    }
    out
}

fn software_html(software: &str, version: &str) -> String {
    let name = software
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty())
        .unwrap_or("nostr-relayd");
    format!(
        "Powered by {} {}",
        link_or_text(software, name),
        escape(version)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info() -> Value {
        json!({
            "name": "Test <relay>",
            "description": "Line one & \"two\"\n<script>alert(1)</script>",
            "pubkey": "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e",
            "contact": "mailto:ops@example.com",
            "software": "https://github.com/nostr-relayd/nostr-relayd",
            "version": "1.2.3",
            "supported_nips": [1, 11, 86],
            "limitation": {"max_message_length": 262144, "auth_required": false, "future_field": "x<y"}
        })
    }

    fn address() -> Address {
        Address::new("", Some("relay.example.com"))
    }

    #[test]
    fn every_slot_is_filled_and_every_value_escaped() {
        let page = render(&info(), &address());
        assert!(!page.html.contains("{{"), "a slot is left: {}", page.html);
        assert!(page.html.contains("Test &lt;relay&gt;"));
        assert!(page.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.html.contains("<script>alert"));
        assert!(page.html.contains("x&lt;y"));
        assert!(page.html.contains("wss://relay.example.com/"));
        assert!(
            page.html
                .contains("npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg")
        );
        assert!(page.html.contains(r#"href="mailto:ops@example.com""#));
        assert!(page.html.contains("256 KiB"));
        assert!(page.html.contains("nips/blob/master/01.md"));
        assert!(page.html.contains(r#"id="admin""#));
        assert_eq!(page.content_security_policy, STRICT_POLICY);
    }

    #[test]
    fn a_value_that_looks_like_a_slot_stays_text() {
        let mut info = info();
        info["name"] = json!("{{description}}");
        let page = render(&info, &address());
        assert!(
            page.html
                .contains("<h1 id=\"relay-name\">{{description}}</h1>")
        );
    }

    #[test]
    fn the_admin_area_needs_nip_86() {
        let mut info = info();
        info["supported_nips"] = json!([1, 11]);
        assert!(!render(&info, &address()).html.contains(r#"id="admin""#));
    }

    #[test]
    fn an_operator_icon_is_allowed_by_origin_and_odd_ones_fall_back() {
        let mut info = info();
        info["icon"] = json!("https://Cdn.Example.com:8443/i.png?x=1");
        let page = render(&info, &address());
        assert!(
            page.html
                .contains(r#"src="https://Cdn.Example.com:8443/i.png?x=1""#)
        );
        assert!(
            page.content_security_policy
                .contains("img-src 'self' https://cdn.example.com:8443;")
        );
        for odd in [
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "https://a b/",
            "https://x.com;script-src/",
        ] {
            info["icon"] = json!(odd);
            let page = render(&info, &address());
            assert_eq!(page.content_security_policy, STRICT_POLICY, "{odd}");
            assert!(page.html.contains(r#"src="/assets/mark.svg?v="#), "{odd}");
        }
    }

    #[test]
    fn a_configured_relay_url_wins_over_the_host_header() {
        let configured = Address::new("wss://relay.example.org", Some("127.0.0.1:7777"));
        assert_eq!(configured.url, "wss://relay.example.org");
        assert!(!configured.derived);
        assert_eq!(address().url, "wss://relay.example.com/");
        assert!(address().derived);
    }

    #[test]
    fn figures_read_like_a_person_writes_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(bytes_text(262_144), "256 KiB");
        assert_eq!(bytes_text(1 << 20), "1 MiB");
        assert_eq!(bytes_text(1000), "1,000 bytes");
        assert_eq!(duration_text(900), "15 min");
        assert_eq!(duration_text(86_400 * 3), "3 days");
    }

    #[test]
    fn assets_are_found_by_path_and_cached_for_ever() {
        let request = Request::get("/assets/app.js?v=whatever").body(()).unwrap();
        let response = asset(&request).unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("immutable")
        );
        let request = Request::get("/assets/other.js").body(()).unwrap();
        assert!(asset(&request).is_none());
        let request = Request::post("/assets/app.js").body(()).unwrap();
        assert_eq!(
            asset(&request).unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
