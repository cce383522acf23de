//! The wire format between cluster nodes: one JSON object per NATS message.
//!
//! ```text
//! <prefix>.events     {"node":"a","boot":123,"first":7,"seq":41,"event":{…canonical event…}}
//! <prefix>.heartbeat  {"node":"a","boot":123,"first":7,"seq":41}
//! ```
//!
//! `node` names the sender, `boot` is random per process (a restart is a new
//! boot), and `seq` is the sender's commit sequence (`origin_seq` in
//! PostgreSQL): an event's own, or in a heartbeat the last one the sender
//! committed, `null` for an ephemeral event or before its first commit.
//! `first` is the first sequence number this boot committed, `null` until
//! then: a node that heard a boot before its first commit knows that every
//! commit of that boot is owed to its subscribers, from `first` on. The
//! event is the canonical JSON as stored, written raw, not re-encoded.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::nostr::{CanonicalEvent, Event};

/// Longest node name accepted from the wire: names are host names, and the
/// receiver keeps state per name.
pub const MAX_NODE_NAME: usize = 255;

/// Who sent a message: a node, in one of its runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub node: String,
    pub boot: u64,
}

/// A message received from another node.
#[derive(Debug)]
pub enum Message {
    /// An event the sender accepted: committed with `seq`, or ephemeral
    /// (`seq` is `None`).
    Event {
        origin: Origin,
        first: Option<u64>,
        seq: Option<u64>,
        event: Arc<CanonicalEvent>,
    },
    /// "I am alive, and my last commit is `seq`."
    Heartbeat {
        origin: Origin,
        first: Option<u64>,
        seq: Option<u64>,
    },
}

impl Message {
    /// The sender.
    pub fn origin(&self) -> &Origin {
        match self {
            Message::Event { origin, .. } | Message::Heartbeat { origin, .. } => origin,
        }
    }
}

/// Why a received message was dropped (counted, logged at debug).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What this node writes on the wire: the invariant part of every message
/// (`{"node":…,"boot":…,`) made once.
#[derive(Debug, Clone)]
pub struct Encoder {
    head: String,
}

impl Encoder {
    /// The encoder of one node in one run.
    pub fn new(origin: &Origin) -> Encoder {
        // Invariant: a string always serializes.
        let node = serde_json::to_string(&origin.node).expect("a string serializes");
        Encoder {
            head: format!("{{\"node\":{node},\"boot\":{},", origin.boot),
        }
    }

    /// An event message; `json` is the event's canonical JSON.
    pub fn event(&self, first: Option<u64>, seq: Option<u64>, json: &str) -> String {
        let mut out = String::with_capacity(self.head.len() + json.len() + 64);
        self.push_head(&mut out, first, seq);
        out.push_str(",\"event\":");
        out.push_str(json);
        out.push('}');
        out
    }

    /// A heartbeat message.
    pub fn heartbeat(&self, first: Option<u64>, seq: Option<u64>) -> String {
        let mut out = String::with_capacity(self.head.len() + 64);
        self.push_head(&mut out, first, seq);
        out.push('}');
        out
    }

    fn push_head(&self, out: &mut String, first: Option<u64>, seq: Option<u64>) {
        out.push_str(&self.head);
        out.push_str("\"first\":");
        push_number(out, first);
        out.push_str(",\"seq\":");
        push_number(out, seq);
    }
}

fn push_number(out: &mut String, number: Option<u64>) {
    match number {
        Some(number) => out.push_str(&number.to_string()),
        None => out.push_str("null"),
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    node: String,
    boot: u64,
    first: Option<u64>,
    seq: Option<u64>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
}

/// Reads one message. Anything malformed is an error, never a panic: the
/// payload comes from the network.
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    let wire: Wire =
        serde_json::from_slice(payload).map_err(|e| DecodeError(format!("not a message: {e}")))?;
    if wire.node.is_empty() || wire.node.len() > MAX_NODE_NAME {
        return Err(DecodeError(format!(
            "node name must be 1 to {MAX_NODE_NAME} bytes"
        )));
    }
    // As `cluster.node_name` allows (and a NUL would fail every backfill
    // read: PostgreSQL text cannot hold one).
    if wire
        .node
        .contains(|c: char| c.is_whitespace() || c.is_control())
    {
        return Err(DecodeError(
            "node name must not contain spaces or control characters".into(),
        ));
    }
    // Sequences start at 1 (and PostgreSQL's bigint ends at i64::MAX).
    let out_of_range = |n: Option<u64>| n.is_some_and(|n| n == 0 || n > i64::MAX as u64);
    if out_of_range(wire.seq) || out_of_range(wire.first) {
        return Err(DecodeError("seq and first must be from 1 to 2^63-1".into()));
    }
    // A committed event, or a heartbeat counting commits, comes from a boot
    // that committed, at or after its first.
    if let Some(seq) = wire.seq
        && wire.first.is_none_or(|first| first > seq)
    {
        return Err(DecodeError("seq without a first at or before it".into()));
    }
    let origin = Origin {
        node: wire.node,
        boot: wire.boot,
    };
    match wire.event {
        None => Ok(Message::Heartbeat {
            origin,
            first: wire.first,
            seq: wire.seq,
        }),
        Some(raw) => Ok(Message::Event {
            origin,
            first: wire.first,
            seq: wire.seq,
            event: Arc::new(canonical_event(raw.get())?),
        }),
    }
}

/// Rebuilds an event from its canonical JSON (a message's, or a row read
/// back for a backfill), checking that its id is the hash of its content.
///
/// The signature is not checked again: the node that accepted the event
/// checked it, and the nodes of a cluster trust each other as they trust
/// the database they share. That trust is the operator's to keep: NATS
/// belongs on a private network (or behind credentials), since anyone who
/// can publish on it can make this relay deliver what it sends. The id
/// check still keeps a corrupt or mangled message from being served under
/// another event's id.
pub fn canonical_event(json: &str) -> Result<CanonicalEvent, DecodeError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| DecodeError(format!("event is not JSON: {e}")))?;
    let event = Event::from_value(&value).map_err(|e| DecodeError(format!("event: {e}")))?;
    event
        .verify_id()
        .map_err(|e| DecodeError(format!("event: {e}")))?;
    Ok(CanonicalEvent::new(event))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::corpus::Corpus;

    fn origin() -> Origin {
        Origin {
            node: "node-\"a\"".into(),
            boot: u64::MAX,
        }
    }

    /// A real signed event, made by the corpus generator.
    pub(crate) fn signed_event() -> Arc<CanonicalEvent> {
        let mut corpus = Corpus::new(7, 1, 1_700_000_000);
        let (author, event) = corpus.next_unsigned();
        Arc::new(CanonicalEvent::new(corpus.sign(author, event).event))
    }

    #[test]
    fn an_event_message_round_trips_byte_for_byte() {
        let event = signed_event();
        let encoded = Encoder::new(&origin()).event(Some(7), Some(41), &event.json);
        let Message::Event {
            origin: from,
            first,
            seq,
            event: decoded,
        } = decode(encoded.as_bytes()).unwrap()
        else {
            panic!("an event message decodes as an event");
        };
        assert_eq!(from, origin());
        assert_eq!((first, seq), (Some(7), Some(41)));
        assert_eq!(decoded.json, event.json);
        assert_eq!(decoded.event, event.event);
    }

    #[test]
    fn ephemeral_events_and_heartbeats_carry_no_or_the_last_seq() {
        let encoder = Encoder::new(&origin());
        let event = signed_event();
        for first in [None, Some(3)] {
            let decoded = decode(encoder.event(first, None, &event.json).as_bytes()).unwrap();
            let Message::Event {
                first: got, seq, ..
            } = decoded
            else {
                panic!("an ephemeral event decodes as an event");
            };
            assert_eq!((got, seq), (first, None));
        }
        let heartbeats = [
            (None, None),
            (Some(1), None),
            (Some(1), Some(1)),
            (Some(1), Some(i64::MAX as u64)),
        ];
        for (first, seq) in heartbeats {
            let decoded = decode(encoder.heartbeat(first, seq).as_bytes()).unwrap();
            let Message::Heartbeat {
                origin: from,
                first: got_first,
                seq: got,
            } = decoded
            else {
                panic!("a heartbeat decodes as a heartbeat");
            };
            assert_eq!((from, got_first, got), (origin(), first, seq));
        }
    }

    #[test]
    fn hostile_messages_are_errors_not_panics() {
        let event = signed_event();
        let mut tampered = event.json.replacen("\"content\":\"", "\"content\":\"x", 1);
        if tampered == event.json {
            tampered = event.json.replacen("\"tags\":[", "\"tags\":[[\"x\"],", 1);
        }
        let too_long = "n".repeat(MAX_NODE_NAME + 1);
        let cases: Vec<String> = vec![
            String::new(),
            "not json".into(),
            "[]".into(),
            "null".into(),
            "{}".into(),
            r#"{"node":"a","first":1,"seq":1}"#.into(),
            r#"{"node":"","boot":1,"first":1,"seq":1}"#.into(),
            format!(r#"{{"node":"{too_long}","boot":1,"first":1,"seq":1}}"#),
            r#"{"node":7,"boot":1,"first":1,"seq":1}"#.into(),
            r#"{"node":"x\u0000y","boot":1,"first":1,"seq":1}"#.into(),
            r#"{"node":"x y","boot":1,"first":1,"seq":1}"#.into(),
            r#"{"node":"a","boot":-1,"first":1,"seq":1}"#.into(),
            r#"{"node":"a","boot":1,"seq":0}"#.into(),
            r#"{"node":"a","boot":1,"seq":5}"#.into(), // counts commits, names no first
            r#"{"node":"a","boot":1,"first":6,"seq":5}"#.into(),
            r#"{"node":"a","boot":1,"first":0,"seq":5}"#.into(),
            r#"{"node":"a","boot":1,"first":1,"seq":-3}"#.into(),
            r#"{"node":"a","boot":1,"first":1,"seq":1.5}"#.into(),
            r#"{"node":"a","boot":1,"first":1,"seq":9223372036854775808}"#.into(),
            r#"{"node":"a","boot":1,"first":1,"seq":99999999999999999999999}"#.into(),
            r#"{"node":"a","boot":1,"first":1,"seq":1,"event":"x"}"#.into(),
            r#"{"node":"a","boot":1,"first":1,"seq":1,"event":{}}"#.into(),
            r#"{"node":"a","boot":1,"first":1,"seq":1,"event":[1,2]}"#.into(),
            format!(r#"{{"node":"a","boot":1,"first":1,"seq":1,"event":{tampered}}}"#),
            format!(
                r#"{{"node":"a","boot":1,"first":1,"seq":1,"event":{}"#,
                event.json
            ),
            "\u{0}\u{ff}".into(),
            "[".repeat(100_000),
        ];
        for case in &cases {
            assert!(decode(case.as_bytes()).is_err(), "accepted {case:.80}");
        }
        assert!(decode(&[0xff, 0xfe, b'{']).is_err(), "not UTF-8");
    }
}
