//! The relay's web page in a real browser: Debian's headless Chromium,
//! driven by `tests/browser/run.mjs` (playwright-core), against relays
//! started here. The script checks what the page shows, takes desktop and
//! phone screenshots (under target/browser/), and signs in to the NIP-86
//! admin area with a stubbed NIP-07 extension; this side publishes the
//! events whose count the page must show and checks that the ban made in
//! the browser is real.
//!
//! Needs `/usr/bin/chromium`, `node` and `tests/browser/node_modules`:
//! the test installs the first and last when missing (tests/common/provision.rs)
//! and fails, saying what to run, when it cannot.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use nostr::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Installs what the test drives (Chromium, the npm packages) when missing,
/// and panics with the command to run when that is not possible.
async fn require_prerequisites(dir: &Path) {
    provision::debian_package(CHROMIUM, "chromium");
    provision::node_packages(dir, &["playwright-core", "nostr-tools"]);
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "{} is not a PNG",
        path.display()
    );
    let word =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    (word(16), word(20))
}

/// One HTTP/1.1 exchange on a fresh connection: (status, lower-cased
/// headers, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(ANSWER, stream.read_to_end(&mut response))
        .await
        .expect("the relay answered in time")
        .unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = response[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
}

const NAME: &str = "Lighthouse Relay";
/// The second line is an injection probe: it must show as text.
const DESCRIPTION: &str = "A friendly public relay for notes, replies & long-form posts.\n\
    Markup stays text: <img src=x onerror=\"window.__xss=1\">";

#[tokio::test]
async fn the_page_works_in_a_real_browser() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    require_prerequisites(&dir).await;
    let outdir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    let admin = Keys::generate();
    let stranger = Keys::generate();
    let banned = Keys::generate();
    let admin_hex = admin.public_key().to_hex();
    let relay = TestRelay::start_with(|c| {
        c.info.name = NAME.into();
        c.info.description = DESCRIPTION.into();
        c.info.pubkey = admin_hex.clone();
        c.info.contact = "mailto:ops@lighthouse.example".into();
        c.management.enabled = true;
        c.management.admins = vec![admin_hex.clone()];
    })
    .await;
    let plain = TestRelay::start_with(|c| c.management.enabled = false).await;

    // What the page must show is what NIP-11 says.
    let (_, _, nip11) = http(
        relay.addr,
        "GET",
        "/",
        &[("Accept", "application/nostr+json")],
    )
    .await;
    let nip11: Value = serde_json::from_slice(&nip11).unwrap();
    let nips = nip11["supported_nips"].clone();
    assert!(nips.as_array().unwrap().contains(&json!(86)), "{nip11}");

    // Published with the figures below, then banned through the page.
    let author = Keys::generate();
    let unwanted = note(&author, "to be banned from the admin area");
    let spec = json!({
        "plainUrl": format!("http://{}/", plain.addr),
        "adminSecret": admin.secret_key().to_secret_hex(),
        "strangerSecret": stranger.secret_key().to_secret_hex(),
        "banNpub": banned.public_key().to_bech32().unwrap(),
        "banHex": banned.public_key().to_hex(),
        "banEventId": unwanted.id.to_hex(),
        "expect": {
            "name": NAME,
            "description": DESCRIPTION,
            "nips": nips,
            "adminNpub": admin.public_key().to_bech32().unwrap(),
        },
    });
    let mut script = tokio::process::Command::new("node")
        .arg(dir.join("run.mjs"))
        .arg(format!("http://{}/", relay.addr))
        .arg(&outdir)
        .arg(spec.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut stdin = script.stdin.take().unwrap();
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();

    // The script reports the figure it sees; events are published over a
    // WebSocket, and it waits for the page to show them.
    let mut publisher = relay.client().await;
    let mut done = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while done.is_none() {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("the browser script finished within 4 minutes")
            .unwrap();
        let Some(line) = line else { break };
        println!("{line}");
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match message["step"].as_str() {
            Some("figures") => {
                const PUBLISHED: usize = 5;
                let notes =
                    (1..PUBLISHED).map(|i| note(&author, &format!("seen in the browser {i}")));
                for event in std::iter::once(unwanted.clone()).chain(notes) {
                    let (accepted, reason) = publisher.publish(&event).await;
                    assert!(accepted, "{reason}");
                }
                stdin
                    .write_all(format!("published {PUBLISHED}\n").as_bytes())
                    .await
                    .unwrap();
            }
            Some("done") => done = Some(message),
            _ => {}
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(30), script.wait())
        .await
        .expect("the browser script exited")
        .unwrap();
    let done = done.expect("the browser script reported its results");
    let failures = done["failures"].as_array().cloned().unwrap_or_default();
    assert!(
        status.success() && failures.is_empty(),
        "the browser checks failed ({status}):\n{}",
        serde_json::to_string_pretty(&failures).unwrap()
    );
    assert!(
        done["checks"].as_array().map_or(0, Vec::len) >= 50,
        "too few checks ran: {done}"
    );

    // The screenshots are real PNGs of the viewport's width.
    for (name, width) in [
        ("desktop", 1280),
        ("desktop-dark", 1280),
        ("phone", 780),
        ("phone-dark", 780),
    ] {
        let (w, h) = png_size(&outdir.join(format!("{name}.png")));
        assert_eq!(w, width, "{name}.png");
        assert!(h >= 600, "{name}.png is {w}x{h}");
    }

    // The ban made through the page is in force: the relay refuses that key.
    let (accepted, reason) = publisher.publish(&note(&banned, "am I banned?")).await;
    assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    // The event banned there is gone (the author's other notes are not)
    // and cannot come back.
    let found = publisher
        .query(
            "after",
            vec![json!({"authors": [author.public_key().to_hex()]})],
        )
        .await;
    let ids: Vec<&str> = found.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), 4, "{found:?}");
    assert!(!ids.contains(&unwanted.id.to_hex().as_str()), "{ids:?}");
    let (accepted, reason) = publisher.publish(&unwanted).await;
    assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    // And so is the kind the page disallowed.
    let listing = event(&author, 30402, "for sale", &[&["d", "bike"]], now());
    let (accepted, reason) = publisher.publish(&listing).await;
    assert!(!accepted && reason.starts_with("blocked:"), "{reason}");
    // Others still publish.
    let (accepted, reason) = publisher.publish(&note(&stranger, "still here")).await;
    assert!(accepted, "{reason}");
}

#[tokio::test]
async fn the_page_and_its_files_over_plain_http() {
    let relay = TestRelay::start_with(|c| {
        c.info.name = "Tom & Jerry's <relay>".into();
        c.info.icon = "https://images.example.com/icon.png".into();
    })
    .await;
    let (status, headers, body) = http(relay.addr, "GET", "/", &[("Accept", "text/html")]).await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").starts_with("text/html"));
    let csp = header(&headers, "content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    // The operator's icon is the one other origin the page may load.
    assert!(
        csp.contains("img-src 'self' https://images.example.com;"),
        "{csp}"
    );
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains("Tom &amp; Jerry&#39;s &lt;relay&gt;"));
    assert!(!html.contains("<relay>"));
    assert!(html.contains(r#"src="https://images.example.com/icon.png""#));

    // Every file the page names is served, cacheable for ever.
    let mut assets: Vec<&str> = html
        .split('"')
        .filter(|part| part.starts_with("/assets/"))
        .collect();
    assets.sort_unstable();
    assets.dedup();
    assert_eq!(assets.len(), 3, "{assets:?}");
    for asset in assets {
        assert!(asset.contains("?v="), "{asset}");
        let (status, headers, body) = http(relay.addr, "GET", asset, &[]).await;
        assert_eq!(status, 200, "{asset}");
        assert!(!body.is_empty(), "{asset}");
        assert!(
            header(&headers, "cache-control").contains("immutable"),
            "{asset}"
        );
        let content_type = header(&headers, "content-type");
        let expected = match asset.split('?').next().unwrap().rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("svg") => "image/svg+xml",
            other => panic!("unexpected asset {other:?}"),
        };
        assert!(
            content_type.starts_with(expected),
            "{asset}: {content_type}"
        );
    }
    let (status, _, _) = http(relay.addr, "POST", "/assets/app.js", &[]).await;
    assert_eq!(status, 405);
    let (status, _, _) = http(relay.addr, "GET", "/assets/missing.js", &[]).await;
    assert_eq!(status, 404);

    // HEAD: the same head, no body.
    let (status, headers, body) = http(relay.addr, "HEAD", "/", &[("Accept", "text/html")]).await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type").starts_with("text/html"));
    assert!(body.is_empty(), "{} bytes", body.len());

    // NIP-11 and the WebSocket are still on the same URL.
    let (status, headers, body) = http(
        relay.addr,
        "GET",
        "/",
        &[("Accept", "application/nostr+json")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), "application/nostr+json");
    let nip11: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(nip11["name"], "Tom & Jerry's <relay>");
    let mut client = relay.client().await;
    let (accepted, reason) = client.publish(&note(&Keys::generate(), "hi")).await;
    assert!(accepted, "{reason}");
}
