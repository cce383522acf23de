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
    /// `["COUNT", <query id>, <filter>, …]` (NIP-45), with the HyperLogLog
    /// `offset` when the filters are eligible for an `hll` answer.
    Count {
        sub_id: String,
        filters: Vec<Filter>,
        hll_offset: Option<u8>,
    },
    /// `["AUTH", <signed kind-22242 event>]` (NIP-42); checked like an
    /// EVENT's shape, the rest is up to the connection.
    Auth(Box<Event>),
    /// `["NEG-OPEN", <subscription id>, <filter>, <initial message, hex>]`
    /// (NIP-77); the message is decoded, not yet read as negentropy.
    NegOpen {
        sub_id: String,
        filter: Box<Filter>,
        message: Vec<u8>,
    },
    /// `["NEG-MSG", <subscription id>, <message, hex>]` (NIP-77).
    NegMsg { sub_id: String, message: Vec<u8> },
    /// `["NEG-CLOSE", <subscription id>]` (NIP-77).
    NegClose { sub_id: String },
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
    /// `["NEG-ERR", <subscription id>, <reason>]` (NIP-77): that
    /// negentropy session, if open, is over.
    NegErr { sub_id: String, reason: String },
}

impl Rejection {
    /// The JSON text to send back.
    pub fn to_frame(&self) -> String {
        match self {
            Rejection::Notice(message) => notice(message),
            Rejection::Ok { event_id, reason } => ok(event_id, false, reason),
            Rejection::Closed { sub_id, reason } => closed(sub_id, reason),
            Rejection::NegErr { sub_id, reason } => neg_err(sub_id, reason, None),
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
            "NEG-OPEN" => parse_neg_open(&items),
            "NEG-MSG" => parse_neg_msg(&items),
            "NEG-CLOSE" => {
                if items.len() != 2 {
                    return Err(notice_invalid(
                        "NEG-CLOSE takes exactly one subscription id",
                    ));
                }
                Ok(ClientMessage::NegClose {
                    sub_id: sub_id(items[1])?,
                })
            }
            "COUNT" => parse_count(&items),
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
    let filters = parse_filters(&items[2..], &sub_id)?;
    Ok(ClientMessage::Req { sub_id, filters })
}

/// `["COUNT", <query id>, <filter>, …]`: refused as a REQ would be, with
/// CLOSED once the id is known.
fn parse_count(items: &[&RawValue]) -> Result<ClientMessage, Rejection> {
    if items.len() < 2 {
        return Err(notice_invalid(
            "COUNT needs a query id and at least one filter",
        ));
    }
    let sub_id = sub_id(items[1])?;
    if items.len() < 3 {
        return Err(Rejection::Closed {
            sub_id,
            reason: "invalid: COUNT needs at least one filter".into(),
        });
    }
    let filters = parse_filters(&items[2..], &sub_id)?;
    let hll_offset = super::nip45::hll_offset(&filters, &items[2..]);
    Ok(ClientMessage::Count {
        sub_id,
        filters,
        hll_offset,
    })
}

/// The filters of a REQ or COUNT; the first bad one closes `sub_id`.
fn parse_filters(raws: &[&RawValue], sub_id: &str) -> Result<Vec<Filter>, Rejection> {
    raws.iter()
        .map(|raw| {
            let value: Value = serde_json::from_str(raw.get())
                .map_err(|error| format!("invalid: filter is not valid JSON ({error})"))?;
            Filter::from_value(&value).map_err(|error| error.to_string())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| Rejection::Closed {
            sub_id: sub_id.to_owned(),
            reason,
        })
}

/// `["NEG-OPEN", <subscription id>, <filter>, <hex>]`: once the id is
/// known, every fault is answered with a NEG-ERR for it.
fn parse_neg_open(items: &[&RawValue]) -> Result<ClientMessage, Rejection> {
    if items.len() < 2 {
        return Err(notice_invalid(
            "NEG-OPEN needs a subscription id, a filter and a message",
        ));
    }
    let sub_id = sub_id(items[1])?;
    let invalid = |reason: String| Rejection::NegErr {
        sub_id: sub_id.clone(),
        reason,
    };
    if items.len() != 4 {
        return Err(invalid(
            "invalid: NEG-OPEN takes a subscription id, one filter and a hex message".into(),
        ));
    }
    let value: Value = serde_json::from_str(items[2].get())
        .map_err(|error| invalid(format!("invalid: filter is not valid JSON ({error})")))?;
    let filter = Filter::from_value(&value).map_err(|error| invalid(error.to_string()))?;
    let message = neg_payload(items[3]).map_err(invalid)?;
    Ok(ClientMessage::NegOpen {
        sub_id,
        filter: Box::new(filter),
        message,
    })
}

/// `["NEG-MSG", <subscription id>, <hex>]`.
fn parse_neg_msg(items: &[&RawValue]) -> Result<ClientMessage, Rejection> {
    if items.len() < 2 {
        return Err(notice_invalid(
            "NEG-MSG needs a subscription id and a message",
        ));
    }
    let sub_id = sub_id(items[1])?;
    if items.len() != 3 {
        return Err(Rejection::NegErr {
            sub_id,
            reason: "invalid: NEG-MSG takes a subscription id and a hex message".into(),
        });
    }
    match neg_payload(items[2]) {
        Ok(message) => Ok(ClientMessage::NegMsg { sub_id, message }),
        Err(reason) => Err(Rejection::NegErr { sub_id, reason }),
    }
}

/// A negentropy message: a JSON string of hex digits (either case), decoded.
fn neg_payload(raw: &RawValue) -> Result<Vec<u8>, String> {
    let text = serde_json::from_str::<&str>(raw.get())
        .map_err(|_| "invalid: the negentropy message must be a hex string".to_owned())?;
    if text.is_empty() {
        return Err("invalid: the negentropy message is empty".into());
    }
    hex::decode(text)
        .map_err(|error| format!("invalid: the negentropy message is not hex ({error})"))
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

/// `["NEG-MSG", <subscription id>, <message, hex>]` (NIP-77).
pub fn neg_msg(sub_id: &str, message: &[u8]) -> String {
    let quoted = quote(sub_id);
    let mut frame = String::with_capacity(quoted.len() + 2 * message.len() + 16);
    frame.push_str("[\"NEG-MSG\",");
    frame.push_str(&quoted);
    frame.push_str(",\"");
    frame.push_str(&hex::encode(message));
    frame.push_str("\"]");
    frame
}

/// `["NEG-ERR", <subscription id>, <reason>]`, with the most records a
/// session may hold as a fourth element when that is why (NIP-77).
pub fn neg_err(sub_id: &str, reason: &str, max_records: Option<usize>) -> String {
    match max_records {
        Some(max) => format!("[\"NEG-ERR\",{},{},{max}]", quote(sub_id), quote(reason)),
        None => format!("[\"NEG-ERR\",{},{}]", quote(sub_id), quote(reason)),
    }
}

/// `["COUNT", <query id>, {"count": n}]`, with `"hll"` when given
/// (NIP-45), the id already quoted.
pub fn count_frame(quoted_sub_id: &str, count: u64, hll: Option<&str>) -> String {
    match hll {
        Some(hll) => format!(
            "[\"COUNT\",{quoted_sub_id},{{\"count\":{count},\"hll\":{}}}]",
            quote(hll)
        ),
        None => format!("[\"COUNT\",{quoted_sub_id},{{\"count\":{count}}}]"),
    }
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
    fn count_parses_like_req() {
        let p = "a".repeat(64);
        let text = format!(r##"["COUNT","c",{{"kinds":[3],"#p":["{p}"]}}]"##);
        match ClientMessage::parse(&text) {
            Ok(ClientMessage::Count {
                sub_id,
                filters,
                hll_offset,
            }) => {
                assert_eq!(sub_id, "c");
                assert_eq!(filters.len(), 1);
                assert_eq!(hll_offset, Some(super::super::nip45::offset(&p)));
            }
            other => panic!("{other:?}"),
        }
        match ClientMessage::parse(r#"["COUNT","c",{"kinds":[1]},{"kinds":[7]}]"#) {
            Ok(ClientMessage::Count {
                filters,
                hll_offset,
                ..
            }) => assert_eq!((filters.len(), hll_offset), (2, None)),
            other => panic!("{other:?}"),
        }
        for (text, why) in [
            (r#"["COUNT","c"]"#, "at least one filter"),
            (r##"["COUNT","c",{"#p":["nothex"]}]"##, "#p"),
            (r##"["COUNT","c",{"#ab":["x"]}]"##, "#ab"),
            (r#"["COUNT","c",[]]"#, "object"),
        ] {
            match ClientMessage::parse(text) {
                Err(Rejection::Closed { sub_id, reason }) => {
                    assert_eq!(sub_id, "c");
                    assert!(
                        (reason.starts_with("invalid:") || reason.starts_with("unsupported:"))
                            && reason.contains(why),
                        "{text}: {reason}"
                    );
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(notice_text(ClientMessage::parse(r#"["COUNT"]"#)).contains("COUNT"));
        assert!(notice_text(ClientMessage::parse(r#"["COUNT",1,{}]"#)).contains("id"));
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
        assert_eq!(
            count_frame(&quote("c"), 42, None),
            r#"["COUNT","c",{"count":42}]"#
        );
        assert_eq!(
            count_frame(&quote("c"), 0, Some("00ff")),
            r#"["COUNT","c",{"count":0,"hll":"00ff"}]"#
        );
        assert_eq!(neg_msg("n", &[0x61, 0x0f]), r#"["NEG-MSG","n","610f"]"#);
        assert_eq!(
            neg_err("n", "blocked: x", Some(5)),
            r#"["NEG-ERR","n","blocked: x",5]"#
        );
        assert_eq!(
            neg_err("n", "closed: x", None),
            r#"["NEG-ERR","n","closed: x"]"#
        );
    }

    fn neg_err_reason(result: Result<ClientMessage, Rejection>, id: &str) -> String {
        match result {
            Err(Rejection::NegErr { sub_id, reason }) if sub_id == id => reason,
            other => panic!("expected NEG-ERR for {id}, got {other:?}"),
        }
    }

    #[test]
    fn negentropy_messages_parse() {
        match ClientMessage::parse(r#"["NEG-OPEN","n",{"kinds":[1]},"61AB"]"#) {
            Ok(ClientMessage::NegOpen {
                sub_id,
                filter,
                message,
            }) => {
                assert_eq!(sub_id, "n");
                assert_eq!(filter.kinds, Some(vec![1]));
                assert_eq!(message, vec![0x61, 0xab]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientMessage::parse(r#"["NEG-MSG","n","6100"]"#),
            Ok(ClientMessage::NegMsg { sub_id, message }) if sub_id == "n" && message == [0x61, 0]
        ));
        assert!(matches!(
            ClientMessage::parse(r#"["NEG-CLOSE","n"]"#),
            Ok(ClientMessage::NegClose { sub_id }) if sub_id == "n"
        ));
    }

    #[test]
    fn malformed_negentropy_messages_get_neg_err_once_the_id_is_known() {
        for (text, why) in [
            (r#"["NEG-OPEN","n",{},"6"]"#, "not hex"),
            (r#"["NEG-OPEN","n",{},"zz"]"#, "not hex"),
            (r#"["NEG-OPEN","n",{},""]"#, "empty"),
            (r#"["NEG-OPEN","n",{},61]"#, "hex string"),
            (r#"["NEG-OPEN","n",{}]"#, "NEG-OPEN"),
            (r#"["NEG-OPEN","n",{"nope":1},"61"]"#, "nope"),
            (r#"["NEG-MSG","n","6x"]"#, "not hex"),
            (r#"["NEG-MSG","n"]"#, "NEG-MSG"),
        ] {
            let reason = neg_err_reason(ClientMessage::parse(text), "n");
            assert!(
                reason.contains(why)
                    && (reason.starts_with("invalid:") || reason.starts_with("unsupported:")),
                "{text}: {reason}"
            );
        }
        assert!(notice_text(ClientMessage::parse(r#"["NEG-OPEN"]"#)).contains("NEG-OPEN"));
        assert!(
            notice_text(ClientMessage::parse(r#"["NEG-MSG",1,"61"]"#)).contains("subscription id")
        );
        assert!(notice_text(ClientMessage::parse(r#"["NEG-CLOSE"]"#)).contains("NEG-CLOSE"));
    }
}
