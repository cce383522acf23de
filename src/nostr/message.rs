//! Messages between client and relay (NIP-01): parsing what a client sends,
//! and writing what the relay answers.
//!
//! Parsing never panics and never gives up silently: each malformed message
//! maps to the answer NIP-01 prescribes for it (a [`Rejection`]), so a client
//! always learns what was wrong.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

use super::event::Event;
use super::filter::Filter;

/// A well-formed message from a client.
#[derive(Debug)]
pub enum ClientMessage {
    /// `["EVENT", <event>]`; the event's shape is valid, its id and
    /// signature are not yet checked.
    Event(Box<Event>),
    /// `["REQ", <subscription id>, <filter>, …]`.
    Req {
        sub_id: String,
        filters: Vec<Filter>,
    },
    /// `["CLOSE", <subscription id>]`.
    Close { sub_id: String },
    /// `["AUTH", <signed kind-22242 event>]` (NIP-42); checked like an
    /// EVENT's shape, the rest is up to the connection.
    Auth(Box<Event>),
}

/// How to refuse a message, in the form NIP-01 prescribes for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Nothing better is possible (no event id, no subscription id).
    Notice(String),
    /// `["OK", <event id>, false, <reason>]`.
    Ok { event_id: String, reason: String },
    /// `["CLOSED", <subscription id>, <reason>]`.
    Closed { sub_id: String, reason: String },
}

impl Rejection {
    /// The JSON text to send back.
    pub fn to_frame(&self) -> String {
        match self {
            Rejection::Notice(message) => notice(message),
            Rejection::Ok { event_id, reason } => ok(event_id, false, reason),
            Rejection::Closed { sub_id, reason } => closed(sub_id, reason),
        }
    }
}

impl ClientMessage {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<ClientMessage, Rejection> {
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|error| {
            let what = if serde_json::from_str::<IgnoredAny>(text).is_ok() {
                "message must be a JSON array"
            } else {
                "message is not valid JSON"
            };
            Rejection::Notice(format!("invalid: {what} ({error})"))
        })?;
        let verb: &str = match items
            .first()
            .map(|raw| serde_json::from_str::<&str>(raw.get()))
        {
            Some(Ok(verb)) => verb,
            Some(Err(_)) => {
                return Err(notice_invalid(
                    "the first element must be the message type as a plain string",
                ));
            }
            None => return Err(notice_invalid("empty message array")),
        };
        match verb {
            "EVENT" => parse_event(&items, verb).map(ClientMessage::Event),
            "AUTH" => parse_event(&items, verb).map(ClientMessage::Auth),
            "REQ" => parse_req(&items),
            "CLOSE" => {
                if items.len() != 2 {
                    return Err(notice_invalid("CLOSE takes exactly one subscription id"));
                }
                Ok(ClientMessage::Close {
                    sub_id: sub_id(items[1])?,
                })
            }
            "COUNT" => Err(Rejection::Closed {
                sub_id: items
                    .get(1)
                    .and_then(|raw| sub_id(raw).ok())
                    .unwrap_or_default(),
                reason: "unsupported: COUNT (NIP-45) is not supported by this relay".into(),
            }),
            other => Err(Rejection::Notice(format!(
                "invalid: unknown message type {}",
                quote(other)
            ))),
        }
    }
}

/// The event of an EVENT or AUTH message.
fn parse_event(items: &[&RawValue], verb: &str) -> Result<Box<Event>, Rejection> {
    if items.len() != 2 {
        return Err(Rejection::Notice(format!(
            "invalid: {verb} takes exactly one event"
        )));
    }
    let raw = items[1].get();
    let value: Value = serde_json::from_str(raw).map_err(|error| {
        reject_event(
            probe_id(raw),
            format!("invalid: event is not valid JSON ({error})"),
        )
    })?;
    let event = Event::from_value(&value).map_err(|error| {
        let id = value
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| echoable_id(id));
        reject_event(id.map(str::to_owned), format!("invalid: {error}"))
    })?;
    Ok(Box::new(event))
}

fn parse_req(items: &[&RawValue]) -> Result<ClientMessage, Rejection> {
    if items.len() < 2 {
        return Err(notice_invalid(
            "REQ needs a subscription id and at least one filter",
        ));
    }
    let sub_id = sub_id(items[1])?;
    if items.len() < 3 {
        return Err(Rejection::Closed {
            sub_id,
            reason: "invalid: REQ needs at least one filter".into(),
        });
    }
    let filters = items[2..]
        .iter()
        .map(|raw| {
            let value: Value = serde_json::from_str(raw.get())
                .map_err(|error| format!("invalid: filter is not valid JSON ({error})"))?;
            Filter::from_value(&value).map_err(|error| error.to_string())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| Rejection::Closed {
            sub_id: sub_id.clone(),
            reason,
        })?;
    Ok(ClientMessage::Req { sub_id, filters })
}

fn sub_id(raw: &RawValue) -> Result<String, Rejection> {
    serde_json::from_str::<String>(raw.get())
        .map_err(|_| notice_invalid("subscription id must be a string"))
}

/// Finds the id of an event whose body failed to parse (for example a lone
/// surrogate in its content), so that the refusal can still be an `OK`.
fn probe_id(raw: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    serde_json::from_str::<IdOnly>(raw)
        .ok()
        .and_then(|probe| probe.id)
        .filter(|id| echoable_id(id))
}

/// NIP-01: "OK messages MUST be sent in response to EVENT messages". A
/// client waits for the OK naming the id it sent, so a malformed id (say,
/// uppercase) is echoed as sent, as long as it is a short string.
fn echoable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128
}

fn reject_event(event_id: Option<String>, reason: String) -> Rejection {
    match event_id {
        Some(event_id) => Rejection::Ok { event_id, reason },
        None => Rejection::Notice(reason),
    }
}

fn notice_invalid(message: &str) -> Rejection {
    Rejection::Notice(format!("invalid: {message}"))
}

/// `["AUTH", <challenge>]`.
pub fn auth_challenge(challenge: &str) -> String {
    format!("[\"AUTH\",{}]", quote(challenge))
}

/// A JSON string literal for `text`.
pub fn quote(text: &str) -> String {
    // Cannot fail: a &str always serializes.
    serde_json::to_string(text).expect("strings serialize")
}

/// `["OK", <event id>, <accepted>, <reason>]`.
pub fn ok(event_id: &str, accepted: bool, reason: &str) -> String {
    format!("[\"OK\",{},{accepted},{}]", quote(event_id), quote(reason))
}

/// `["CLOSED", <subscription id>, <reason>]`.
pub fn closed(sub_id: &str, reason: &str) -> String {
    format!("[\"CLOSED\",{},{}]", quote(sub_id), quote(reason))
}

/// `["NOTICE", <message>]`.
pub fn notice(message: &str) -> String {
    format!("[\"NOTICE\",{}]", quote(message))
}

/// `["EOSE", <subscription id>]`, with the id already quoted.
pub fn eose(quoted_sub_id: &str) -> String {
    format!("[\"EOSE\",{quoted_sub_id}]")
}

/// `["EVENT", <subscription id>, <event>]`, wrapped around the stored JSON
/// at send time so that one serialized event is shared by every subscriber.
pub fn event_frame(quoted_sub_id: &str, event_json: &str) -> String {
    let mut frame = String::with_capacity(quoted_sub_id.len() + event_json.len() + 12);
    frame.push_str("[\"EVENT\",");
    frame.push_str(quoted_sub_id);
    frame.push(',');
    frame.push_str(event_json);
    frame.push(']');
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice_text(result: Result<ClientMessage, Rejection>) -> String {
        match result {
            Err(Rejection::Notice(text)) => text,
            other => panic!("expected a NOTICE, got {other:?}"),
        }
    }

    #[test]
    fn malformed_messages_get_notices() {
        assert!(notice_text(ClientMessage::parse("hello")).contains("not valid JSON"));
        assert!(notice_text(ClientMessage::parse("{}")).contains("JSON array"));
        assert!(notice_text(ClientMessage::parse("[]")).contains("empty"));
        assert!(notice_text(ClientMessage::parse("[1]")).contains("message type"));
        assert!(notice_text(ClientMessage::parse("[\"NOPE\"]")).contains("unknown message type"));
        assert!(notice_text(ClientMessage::parse("[\"CLOSE\"]")).contains("CLOSE"));
        assert!(notice_text(ClientMessage::parse("[\"EVENT\"]")).contains("EVENT"));
        assert!(notice_text(ClientMessage::parse("[\"REQ\",1,{}]")).contains("subscription id"));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(notice_text(ClientMessage::parse(&deep)).starts_with("invalid:"));
        let deep_event = format!("[\"EVENT\",{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        assert!(notice_text(ClientMessage::parse(&deep_event)).starts_with("invalid:"));
    }

    #[test]
    fn bad_filters_close_the_subscription() {
        let result = ClientMessage::parse(r##"["REQ","s",{"#p":["nothex"]}]"##);
        assert!(matches!(result, Err(Rejection::Closed { sub_id, reason })
            if sub_id == "s" && reason.starts_with("invalid:")));
        let result = ClientMessage::parse(r#"["REQ","s"]"#);
        assert!(matches!(result, Err(Rejection::Closed { .. })));
    }

    #[test]
    fn an_event_with_a_lone_surrogate_is_refused_by_id() {
        let id = "a".repeat(64);
        let text = format!(r#"["EVENT",{{"id":"{id}","content":"\ud800"}}]"#);
        match ClientMessage::parse(&text) {
            Err(Rejection::Ok { event_id, reason }) => {
                assert_eq!(event_id, id);
                assert!(reason.starts_with("invalid:"));
            }
            other => panic!("expected OK false, got {other:?}"),
        }
    }

    #[test]
    fn frames_are_exact() {
        assert_eq!(ok("ab", true, ""), r#"["OK","ab",true,""]"#);
        assert_eq!(
            closed("s\"1", "error: x"),
            r#"["CLOSED","s\"1","error: x"]"#
        );
        assert_eq!(eose(&quote("s")), r#"["EOSE","s"]"#);
        assert_eq!(event_frame(&quote("s"), "{}"), r#"["EVENT","s",{}]"#);
    }
}
