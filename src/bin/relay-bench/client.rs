//! The NIP-01 side of every scenario: connecting, sending text frames,
//! reading the next text frame with a deadline, and reading relay messages
//! without building a whole JSON tree for each.
//!
//! Only standard NIP-01 is spoken (EVENT/OK, REQ/EVENT/EOSE/CLOSED, CLOSE,
//! NOTICE), so the load generator works against any relay.

use std::borrow::Cow;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type Sink = SplitSink<Ws, Message>;
pub type Stream = SplitStream<Ws>;

/// Opens `count` connections one after another (a relay's accept queue,
/// not the benchmark, would otherwise be measured).
pub async fn connect_many(url: &str, timeout: Duration, count: usize) -> Result<Vec<Ws>, String> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        sockets.push(connect(url, timeout).await?);
    }
    Ok(sockets)
}

/// Opens a WebSocket with Nagle's algorithm off (as real clients do, so
/// small frames are not held back), within `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> Result<Ws, String> {
    match tokio::time::timeout(timeout, connect_async_with_config(url, None, true)).await {
        Err(_) => Err(format!("connecting to {url} took more than {timeout:?}")),
        Ok(Err(error)) => Err(format!("cannot connect to {url}: {error}")),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

/// Sends one text frame.
pub async fn send(sink: &mut Sink, text: impl Into<Utf8Bytes>) -> Result<(), String> {
    sink.send(Message::text(text))
        .await
        .map_err(|error| format!("send failed: {error}"))
}

/// Sends a close frame and forgets errors: the measurement is over.
pub async fn close(sink: &mut Sink) {
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
}

/// The next text frame, skipping pings, pongs and binary frames. An error
/// when the relay closes the connection, the socket fails, or nothing comes
/// within `timeout`.
pub async fn next_text(stream: &mut Stream, timeout: Duration) -> Result<Utf8Bytes, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(format!("no message from the relay within {timeout:?}")),
            Ok(None) => return Err("the relay closed the connection".into()),
            Ok(Some(Err(error))) => return Err(format!("receive failed: {error}")),
            Ok(Some(Ok(Message::Text(text)))) => return Ok(text),
            Ok(Some(Ok(Message::Close(frame)))) => {
                let why = frame
                    .map(|f| format!(" ({} {})", u16::from(f.code), f.reason))
                    .unwrap_or_default();
                return Err(format!("the relay closed the connection{why}"));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// A message from the relay, borrowing from the frame where it can.
#[derive(Debug)]
pub enum RelayMsg<'a> {
    /// `["OK", id, accepted, reason]`.
    Ok {
        id: Cow<'a, str>,
        accepted: bool,
        reason: String,
    },
    /// `["EVENT", sub, event]`; only the event's id is read.
    Event { sub: Cow<'a, str>, id: Cow<'a, str> },
    /// `["EOSE", sub]`.
    Eose { sub: Cow<'a, str> },
    /// `["CLOSED", sub, reason]`.
    Closed { sub: Cow<'a, str>, reason: String },
    /// `["NOTICE", text]`.
    Notice(String),
    /// Anything else (AUTH, COUNT, …): not used by the scenarios.
    Other,
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

fn item<'a, T: Deserialize<'a>>(items: &[&'a RawValue], index: usize) -> Result<T, String> {
    let raw = items
        .get(index)
        .ok_or_else(|| format!("relay message has no element {index}"))?;
    serde_json::from_str(raw.get())
        .map_err(|error| format!("relay message element {index} is malformed: {error}"))
}

/// Reads one relay message; an error names what was malformed.
pub fn parse(text: &str) -> Result<RelayMsg<'_>, String> {
    let items: Vec<&RawValue> = serde_json::from_str(text)
        .map_err(|error| format!("relay sent something that is not a JSON array: {error}"))?;
    let verb: Cow<'_, str> = item(&items, 0)?;
    Ok(match verb.as_ref() {
        "OK" => RelayMsg::Ok {
            id: item(&items, 1)?,
            accepted: item(&items, 2)?,
            reason: item::<Option<String>>(&items, 3)
                .ok()
                .flatten()
                .unwrap_or_default(),
        },
        "EVENT" => {
            let event: IdOnly<'_> = item(&items, 2)?;
            RelayMsg::Event {
                sub: item(&items, 1)?,
                id: event.id,
            }
        }
        "EOSE" => RelayMsg::Eose {
            sub: item(&items, 1)?,
        },
        "CLOSED" => RelayMsg::Closed {
            sub: item(&items, 1)?,
            reason: item::<Option<String>>(&items, 2)
                .ok()
                .flatten()
                .unwrap_or_default(),
        },
        "NOTICE" => RelayMsg::Notice(item(&items, 1).unwrap_or_default()),
        _ => RelayMsg::Other,
    })
}

/// `["REQ", sub, filter]` with the filter already written as JSON.
pub fn req_frame(sub: &str, filter_json: &str) -> String {
    format!(r#"["REQ",{},{filter_json}]"#, serde_json::Value::from(sub))
}

/// `["CLOSE", sub]`.
pub fn close_frame(sub: &str) -> String {
    format!(r#"["CLOSE",{}]"#, serde_json::Value::from(sub))
}

/// Sends a REQ and reads until its EOSE, counting its stored events. A
/// CLOSED for it is returned as `Err(Closed)`; transport failures and
/// time-outs as `Err(Failed)`. Messages for other subscriptions are ignored.
pub async fn req_until_eose(
    sink: &mut Sink,
    stream: &mut Stream,
    sub: &str,
    filter_json: &str,
    timeout: Duration,
) -> Result<u64, ReqError> {
    send(sink, req_frame(sub, filter_json))
        .await
        .map_err(ReqError::Failed)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = 0;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let text = next_text(stream, left)
            .await
            .map_err(|error| ReqError::Failed(format!("waiting for EOSE of {sub}: {error}")))?;
        match parse(&text).map_err(ReqError::Failed)? {
            RelayMsg::Event { sub: s, .. } if s == sub => events += 1,
            RelayMsg::Eose { sub: s } if s == sub => return Ok(events),
            RelayMsg::Closed { sub: s, reason } if s == sub => {
                return Err(ReqError::Closed(reason));
            }
            _ => {}
        }
    }
}

/// Why a REQ did not end in EOSE.
#[derive(Debug)]
pub enum ReqError {
    /// The relay refused or ended it with CLOSED (reason).
    Closed(String),
    /// The connection failed or the relay did not answer in time.
    Failed(String),
}

impl std::fmt::Display for ReqError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReqError::Closed(reason) => write!(f, "CLOSED: {reason}"),
            ReqError::Failed(error) => f.write_str(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_relay_messages() {
        match parse(r#"["OK","ab",true,"duplicate: have it"]"#) {
            Ok(RelayMsg::Ok {
                id,
                accepted: true,
                reason,
            }) => {
                assert_eq!(id, "ab");
                assert_eq!(reason, "duplicate: have it");
            }
            other => panic!("{other:?}"),
        }
        match parse(r#"["EVENT","s1",{"content":"x\"y","id":"cd","tags":[]}]"#) {
            Ok(RelayMsg::Event { sub, id }) => assert_eq!((&*sub, &*id), ("s1", "cd")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"["EOSE","s"]"#),
            Ok(RelayMsg::Eose { .. })
        ));
        assert!(matches!(
            parse(r#"["CLOSED","s","error: x"]"#),
            Ok(RelayMsg::Closed { .. })
        ));
        assert!(matches!(parse(r#"["AUTH","c"]"#), Ok(RelayMsg::Other)));
        assert!(parse("{}").is_err());
        assert!(parse(r#"["OK","ab"]"#).is_err());
        assert_eq!(
            req_frame("a\"b", r#"{"limit":0}"#),
            r#"["REQ","a\"b",{"limit":0}]"#
        );
    }
}
