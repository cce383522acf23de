//! The remote relay as `nostr-relayd sync` sees it: one WebSocket (ws:// or
//! wss://, rustls with the webpki roots), the relay messages of NIP-01 and
//! NIP-77 read into [`Incoming`], and the NIP-11 document over http(s).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Installs ring as rustls' crypto provider for this process, once. The
/// crate is built with ring only, so rustls would pick it by itself; saying
/// so keeps wss:// working should another dependency ever enable a second
/// provider (rustls then refuses to guess).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A relay message, as far as sync reads it.
#[derive(Debug)]
pub enum Incoming {
    /// `["EVENT", sub, event]`: the event object, not yet checked.
    Event {
        sub: String,
        event: Value,
    },
    Eose(String),
    Closed {
        sub: String,
        reason: String,
    },
    Ok {
        id: String,
        accepted: bool,
        reason: String,
    },
    Notice(String),
    /// `["NEG-MSG", sub, hex]`.
    NegMsg {
        sub: String,
        message: String,
    },
    /// `["NEG-ERR", sub, reason]`.
    NegErr {
        sub: String,
        reason: String,
    },
    /// AUTH, COUNT, anything else: not used by sync.
    Other,
}

/// Reads one relay message.
pub fn parse(text: &str) -> Result<Incoming, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("the remote sent something that is not JSON: {e}"))?;
    let items = value
        .as_array()
        .ok_or("the remote sent a message that is not a JSON array")?;
    let text_at = |i: usize| -> String {
        items
            .get(i)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(match items.first().and_then(Value::as_str) {
        Some("EVENT") => Incoming::Event {
            sub: text_at(1),
            event: items.get(2).cloned().unwrap_or(Value::Null),
        },
        Some("EOSE") => Incoming::Eose(text_at(1)),
        Some("CLOSED") => Incoming::Closed {
            sub: text_at(1),
            reason: text_at(2),
        },
        Some("OK") => Incoming::Ok {
            id: text_at(1),
            accepted: items.get(2).and_then(Value::as_bool).unwrap_or(false),
            reason: text_at(3),
        },
        Some("NOTICE") => Incoming::Notice(text_at(1)),
        Some("NEG-MSG") => Incoming::NegMsg {
            sub: text_at(1),
            message: text_at(2),
        },
        Some("NEG-ERR") => Incoming::NegErr {
            sub: text_at(1),
            reason: text_at(2),
        },
        _ => Incoming::Other,
    })
}

/// Why no message came.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing within the time allowed; the connection may still be fine.
    Timeout,
    /// The connection is gone (closed, reset, protocol error).
    Gone(String),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Timeout => f.write_str("the remote did not answer in time"),
            RecvError::Gone(why) => f.write_str(why),
        }
    }
}

/// One WebSocket to the remote relay.
pub struct Remote {
    pub url: String,
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    next_sub: u64,
}

impl Remote {
    /// Connects within `timeout`. wss:// goes through rustls with the
    /// webpki (Mozilla) roots.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Remote, String> {
        // Events up to 16 MiB: more than any relay accepts, bounded all the same.
        let config = WebSocketConfig::default()
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        let ws =
            match tokio::time::timeout(timeout, connect_async_with_config(url, Some(config), true))
                .await
            {
                Err(_) => return Err(format!("connecting to {url} took more than {timeout:?}")),
                Ok(Err(error)) => return Err(format!("cannot connect to {url}: {error}")),
                Ok(Ok((ws, _response))) => ws,
            };
        let (sink, stream) = ws.split();
        Ok(Remote {
            url: url.to_owned(),
            sink,
            stream,
            next_sub: 0,
        })
    }

    /// A subscription id not used before on this connection.
    pub fn new_sub(&mut self, prefix: &str) -> String {
        self.next_sub += 1;
        format!("{prefix}-{}", self.next_sub)
    }

    /// Sends one text frame.
    pub async fn send(&mut self, text: String) -> Result<(), String> {
        self.sink
            .send(Message::text(text))
            .await
            .map_err(|e| format!("sending to {} failed: {e}", self.url))
    }

    /// Sends a ping (a liveness probe for a quiet live subscription).
    pub async fn ping(&mut self) -> Result<(), String> {
        self.sink
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(|e| format!("sending to {} failed: {e}", self.url))
    }

    /// The next relay message within `timeout`; a pong (the answer to
    /// [`Remote::ping`]) comes back as [`Incoming::Other`].
    pub async fn recv(&mut self, timeout: Duration) -> Result<Incoming, RecvError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Err(RecvError::Timeout),
                Ok(None) => {
                    return Err(RecvError::Gone(format!(
                        "{} closed the connection",
                        self.url
                    )));
                }
                Ok(Some(Err(error))) => {
                    return Err(RecvError::Gone(format!(
                        "receiving from {} failed: {error}",
                        self.url
                    )));
                }
                Ok(Some(Ok(Message::Text(text)))) => {
                    return parse(text.as_str()).map_err(RecvError::Gone);
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let why = frame
                        .map(|f| format!(" ({} {})", u16::from(f.code), f.reason))
                        .unwrap_or_default();
                    return Err(RecvError::Gone(format!(
                        "{} closed the connection{why}",
                        self.url
                    )));
                }
                Ok(Some(Ok(Message::Pong(_)))) => return Ok(Incoming::Other),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Sends `["REQ", sub, filter]` and collects its stored events until
    /// EOSE. `Err(Closed)` carries the CLOSED reason.
    pub async fn req(&mut self, filter: &Value, timeout: Duration) -> Result<Vec<Value>, ReqError> {
        let sub = self.new_sub("sync");
        self.send(serde_json::json!(["REQ", sub, filter]).to_string())
            .await
            .map_err(ReqError::Gone)?;
        let mut events = Vec::new();
        loop {
            match self.recv(timeout).await {
                Ok(Incoming::Event { sub: s, event }) if s == sub => events.push(event),
                Ok(Incoming::Eose(s)) if s == sub => break,
                Ok(Incoming::Closed { sub: s, reason }) if s == sub => {
                    return Err(ReqError::Closed(reason));
                }
                Ok(Incoming::Notice(text)) => {
                    tracing::warn!(remote = %self.url, notice = %text, "NOTICE")
                }
                Ok(_) => {}
                Err(RecvError::Timeout) => {
                    return Err(ReqError::Gone(format!(
                        "{} sent no EOSE within {timeout:?} of its last message",
                        self.url
                    )));
                }
                Err(RecvError::Gone(why)) => return Err(ReqError::Gone(why)),
            }
        }
        // Relays keep a subscription open after EOSE until it is closed.
        self.send(serde_json::json!(["CLOSE", sub]).to_string())
            .await
            .map_err(ReqError::Gone)?;
        Ok(events)
    }

    /// Sends a close frame, forgetting errors.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
    }
}

/// Why a REQ did not end in EOSE.
#[derive(Debug)]
pub enum ReqError {
    Closed(String),
    Gone(String),
}

impl std::fmt::Display for ReqError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReqError::Closed(reason) => write!(f, "the remote closed the subscription: {reason}"),
            ReqError::Gone(why) => f.write_str(why),
        }
    }
}

/// What the remote's NIP-11 document says that sync uses.
#[derive(Debug, Clone, Default)]
pub struct RemoteInfo {
    /// `supported_nips`, when the document lists them.
    pub supported_nips: Option<Vec<u64>>,
    /// `limitation.max_limit`: the page size of a REQ walk.
    pub max_limit: Option<u64>,
    /// `limitation.max_message_length`: bounds our NEG-MSG frames.
    pub max_message_length: Option<u64>,
}

impl RemoteInfo {
    /// Reads the fields sync uses; anything missing or odd is left unknown.
    pub fn from_document(doc: &Value) -> RemoteInfo {
        let limitation = &doc["limitation"];
        let positive = |v: &Value| v.as_u64().filter(|n| *n > 0);
        RemoteInfo {
            supported_nips: doc["supported_nips"]
                .as_array()
                .map(|nips| nips.iter().filter_map(Value::as_u64).collect()),
            max_limit: positive(&limitation["max_limit"]),
            max_message_length: positive(&limitation["max_message_length"]),
        }
    }

    /// False only when the document lists its NIPs and 77 is not among them.
    pub fn may_support_nip77(&self) -> bool {
        self.supported_nips
            .as_ref()
            .is_none_or(|nips| nips.contains(&77))
    }
}

/// Fetches the NIP-11 document: GET on the relay's URL with http(s) for
/// ws(s) and `Accept: application/nostr+json`.
pub async fn fetch_info(ws_url: &str, timeout: Duration) -> Result<RemoteInfo, String> {
    match tokio::time::timeout(timeout, fetch_document(ws_url)).await {
        Err(_) => Err(format!("no NIP-11 document within {timeout:?}")),
        Ok(Err(error)) => Err(error),
        Ok(Ok(doc)) => Ok(RemoteInfo::from_document(&doc)),
    }
}

async fn fetch_document(ws_url: &str) -> Result<Value, String> {
    let target = Target::parse(ws_url)?;
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", target.host, target.port))?;
    let _ = tcp.set_nodelay(true);
    let body = if target.tls {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config()));
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("{} is not a TLS server name: {e}", target.host))?;
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {} failed: {e}", target.host))?;
        get(stream, &target).await?
    } else {
        get(tcp, &target).await?
    };
    serde_json::from_slice(&body).map_err(|e| format!("the NIP-11 document is not JSON: {e}"))
}

fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

async fn get<S>(stream: S, target: &Target) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP with {} failed: {e}", target.host))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(target.path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::ACCEPT, "application/nostr+json")
        .header(
            hyper::header::USER_AGENT,
            concat!("nostr-relayd/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the NIP-11 request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP with {} failed: {e}", target.host));
    let result = match response {
        Err(error) => Err(error),
        Ok(response) if !response.status().is_success() => {
            Err(format!("NIP-11 request answered {}", response.status()))
        }
        Ok(response) => Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| format!("reading the NIP-11 document failed: {e}")),
    };
    driver.abort();
    result
}

/// Where a ws(s):// URL's NIP-11 document is.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// `host[:port]` as written, for the Host header.
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let (tls, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("wss") => (true, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ws") => (false, rest),
            _ => return Err(format!("{url} is not a ws:// or wss:// URL")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let path = match path.split('#').next().unwrap_or_default() {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or_else(|| format!("{url}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| format!("{url}: bad port"))?,
                None => default_port,
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_owned(),
                    port.parse().map_err(|_| format!("{url}: bad port"))?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("{url} has no host"));
        }
        Ok(Target {
            tls,
            host,
            port,
            authority: authority.to_owned(),
            path,
        })
    }
}

/// The remote's URL as checkpoints and refusals are keyed: scheme and host
/// lowercased, default port and trailing slash dropped, so that
/// `wss://Relay.example.com/` and `wss://relay.example.com` share them.
pub fn normalize_url(url: &str) -> Result<String, String> {
    let target = Target::parse(url.trim())?;
    let scheme = if target.tls { "wss" } else { "ws" };
    let default_port = if target.tls { 443 } else { 80 };
    let host = if target.host.contains(':') {
        format!("[{}]", target.host.to_ascii_lowercase())
    } else {
        target.host.to_ascii_lowercase()
    };
    let port = if target.port == default_port {
        String::new()
    } else {
        format!(":{}", target.port)
    };
    let path = target.path.trim_end_matches('/');
    Ok(format!("{scheme}://{host}{port}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized_for_checkpoints() {
        for url in [
            "wss://Relay.Example.com",
            "wss://relay.example.com/",
            "WSS://relay.example.com:443/",
        ] {
            assert_eq!(
                normalize_url(url).unwrap(),
                "wss://relay.example.com",
                "{url}"
            );
        }
        assert_eq!(
            normalize_url("ws://127.0.0.1:7777/").unwrap(),
            "ws://127.0.0.1:7777"
        );
        assert_eq!(normalize_url("ws://[::1]:80/x/").unwrap(), "ws://[::1]/x");
        assert!(normalize_url("https://relay.example.com").is_err());
        assert!(normalize_url("relay.example.com").is_err());
    }

    #[test]
    fn nip11_targets() {
        let t = Target::parse("wss://relay.example.com/sub?x=1").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (true, "relay.example.com", 443, "/sub?x=1")
        );
        let t = Target::parse("ws://127.0.0.1:7777").unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.authority.as_str()),
            (7777, "/", "127.0.0.1:7777")
        );
    }

    #[test]
    fn nip11_fields() {
        let info = RemoteInfo::from_document(&serde_json::json!({
            "supported_nips": [1, 11, 77],
            "limitation": {"max_limit": 300, "max_message_length": 0}
        }));
        assert!(info.may_support_nip77());
        assert_eq!(info.max_limit, Some(300));
        assert_eq!(info.max_message_length, None);
        let info = RemoteInfo::from_document(&serde_json::json!({"supported_nips": [1]}));
        assert!(!info.may_support_nip77());
        assert!(RemoteInfo::default().may_support_nip77());
    }

    #[test]
    fn relay_messages() {
        assert!(matches!(
            parse(r#"["NEG-MSG","n-1","61"]"#).unwrap(),
            Incoming::NegMsg { sub, message } if sub == "n-1" && message == "61"
        ));
        assert!(matches!(
            parse(r#"["NEG-ERR","n-1","blocked: too big"]"#).unwrap(),
            Incoming::NegErr { reason, .. } if reason == "blocked: too big"
        ));
        assert!(matches!(
            parse(r#"["OK","ab",false,"rate-limited: slow down"]"#).unwrap(),
            Incoming::Ok {
                accepted: false,
                ..
            }
        ));
        assert!(matches!(parse(r#"["AUTH","c"]"#).unwrap(), Incoming::Other));
        assert!(parse("{}").is_err());
    }
}
