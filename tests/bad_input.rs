//! Bad input, end to end: every malformed or over-limit message gets the
//! exact machine-readable answer NIP-01 prescribes for it (NOTICE, OK false
//! or CLOSED), and the connection that sent it keeps working. Where the
//! WebSocket protocol itself requires closing (oversized frame, invalid
//! UTF-8), the close code is checked and other connections must not suffer.

mod common;

use common::*;
use futures_util::SinkExt;
use nostr::prelude::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

/// Nesting depth of the "deep" inputs: far beyond any JSON parser's
/// recursion limit, still far below the default max_message_length.
const DEEP: usize = 10_000;

/// Sends `text` and returns the very next relay message.
async fn answer_to(client: &mut Client, text: &str) -> Value {
    client.send_text(text).await;
    client.recv().await
}

/// Sends `text`, which must be answered by a NOTICE; returns its text.
async fn notice_for(client: &mut Client, text: &str) -> String {
    let answer = answer_to(client, text).await;
    assert_eq!(
        answer[0], "NOTICE",
        "input {text:.200}: expected a NOTICE, got {answer}"
    );
    assert_eq!(
        answer.as_array().unwrap().len(),
        2,
        "NOTICE has two elements: {answer}"
    );
    answer[1].as_str().expect("NOTICE text").to_owned()
}

/// Sends `text`, which must be answered by `["OK", id, false, reason]`;
/// returns the reason.
async fn refusal_for(client: &mut Client, text: &str, id: &str) -> String {
    let answer = answer_to(client, text).await;
    assert_eq!(
        answer[0], "OK",
        "input {text:.300}: expected OK, got {answer}"
    );
    assert_eq!(answer[1], id, "the OK names the event id as sent: {answer}");
    assert_eq!(answer[2], false, "the event must be refused: {answer}");
    assert_eq!(
        answer.as_array().unwrap().len(),
        4,
        "OK has four elements: {answer}"
    );
    answer[3].as_str().expect("OK reason").to_owned()
}

/// `["EVENT", <the event with `field` written as the raw JSON text `raw`>]`.
fn event_with_raw(event: &Event, field: &str, raw: &str) -> String {
    let mut value = to_value(event);
    value[field] = json!("@@RAW@@");
    let text = format!(r#"["EVENT",{value}]"#);
    assert!(text.contains("\"@@RAW@@\""));
    text.replace("\"@@RAW@@\"", raw)
}

/// `["EVENT", <value>]` as text.
fn event_message(value: &Value) -> String {
    json!(["EVENT", value]).to_string()
}

/// `Client::assert_healthy` with a chosen content, for relays whose limits
/// refuse the harness's own note.
async fn assert_healthy_with(client: &mut Client, content: &str) {
    let event = note(&Keys::generate(), content);
    assert_eq!(client.publish(&event).await, (true, String::new()));
    let events = client
        .req("health", vec![json!({"ids": [event.id.to_hex()]})])
        .await;
    assert_eq!(events, vec![to_value(&event)]);
    client.send_json(json!(["CLOSE", "health"])).await;
}

fn deep_array() -> String {
    format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP))
}

// ---------------------------------------------------------------------------
// Malformed messages
// ---------------------------------------------------------------------------

/// NIP-01: "Clients can send 3 types of messages, which must be JSON arrays".
/// Anything else has no subscription or event id to answer with, so the
/// answer is a NOTICE with the `invalid:` prefix.
#[tokio::test]
async fn malformed_messages_get_an_invalid_notice_and_the_connection_stays() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    // (input, expected NOTICE text, whole text (true) or prefix (false))
    let cases: &[(&str, &str, bool)] = &[
        ("hello", "invalid: message is not valid JSON (", false),
        ("", "invalid: message is not valid JSON (", false),
        (
            r#"["CLOSE","a""#,
            "invalid: message is not valid JSON (",
            false,
        ),
        (
            r#"["CLOSE","a"] x"#,
            "invalid: message is not valid JSON (",
            false,
        ),
        (
            r#"{"EVENT":{}}"#,
            "invalid: message must be a JSON array (",
            false,
        ),
        (
            r#""EVENT""#,
            "invalid: message must be a JSON array (",
            false,
        ),
        ("42", "invalid: message must be a JSON array (", false),
        ("null", "invalid: message must be a JSON array (", false),
        ("[]", "invalid: empty message array", true),
        (r#"["FOO"]"#, r#"invalid: unknown message type "FOO""#, true),
        (
            r#"["event",{}]"#,
            r#"invalid: unknown message type "event""#,
            true,
        ),
        (
            "[1]",
            "invalid: the first element must be the message type as a plain string",
            true,
        ),
        (
            "[null,{}]",
            "invalid: the first element must be the message type as a plain string",
            true,
        ),
        (
            r#"["EVENT"]"#,
            "invalid: EVENT takes exactly one event",
            true,
        ),
        (
            r#"["EVENT",{},{}]"#,
            "invalid: EVENT takes exactly one event",
            true,
        ),
        (
            r#"["CLOSE"]"#,
            "invalid: CLOSE takes exactly one subscription id",
            true,
        ),
        (
            r#"["CLOSE","a","b"]"#,
            "invalid: CLOSE takes exactly one subscription id",
            true,
        ),
        (
            r#"["REQ"]"#,
            "invalid: REQ needs a subscription id and at least one filter",
            true,
        ),
        (r#"["EVENT",{}]"#, "invalid: missing field id", true),
        (
            r#"["EVENT",[]]"#,
            "invalid: event must be a JSON object",
            true,
        ),
    ];
    for &(input, expected, whole) in cases {
        let notice = notice_for(&mut client, input).await;
        if whole {
            assert_eq!(notice, expected, "input {input}");
        } else {
            assert!(
                notice.starts_with(expected),
                "input {input}: got {notice:?}"
            );
            assert!(notice.ends_with(')'), "input {input}: got {notice:?}");
        }
    }
    client.assert_healthy().await;
}

/// NIP-01: "`CLOSED` messages MUST be sent in response to a `REQ` when the
/// relay refuses to fulfill it." A REQ whose id is readable is answered with
/// CLOSED even when its filters are missing.
#[tokio::test]
async fn req_without_a_filter_is_closed_invalid() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let answer = answer_to(&mut client, r#"["REQ","s"]"#).await;
    assert_eq!(
        answer,
        json!(["CLOSED", "s", "invalid: REQ needs at least one filter"])
    );
    client.assert_healthy().await;
}

/// COUNT (NIP-45) is answered; a malformed one is refused with CLOSED
/// (tests/count.rs has the rest).
#[tokio::test]
async fn count_is_answered_and_a_bad_one_closed() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let answer = answer_to(&mut client, r#"["COUNT","c",{}]"#).await;
    assert_eq!(answer, json!(["COUNT", "c", {"count": 0}]));
    let answer = answer_to(&mut client, r#"["COUNT","c",{"kinds":"x"}]"#).await;
    assert_eq!(answer[0], "CLOSED", "{answer}");
    assert!(
        answer[2].as_str().unwrap().starts_with("invalid:"),
        "{answer}"
    );
    client.assert_healthy().await;
}

// ---------------------------------------------------------------------------
// Events with wrong types
// ---------------------------------------------------------------------------

/// NIP-01: "`OK` messages MUST be sent in response to `EVENT` messages
/// received from clients", with a reason "formed by a machine-readable
/// single-word prefix followed by a `:`". `kind` is "<integer between 0 and
/// 65535>", `created_at` a "<unix timestamp in seconds>", tags "an array of
/// arrays of non-null strings".
#[tokio::test]
async fn events_with_wrongly_typed_fields_are_refused_by_id() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    const KIND: &str = "invalid: kind must be an integer from 0 to 65535";
    const CREATED_AT: &str = "invalid: created_at must be an integer from 0 to 2^53-1";
    let cases: &[(&str, &str, &str)] = &[
        ("kind", "1.0", KIND),
        ("kind", "1e3", KIND),
        ("kind", "-1", KIND),
        ("kind", "65536", KIND),
        ("kind", r#""1""#, KIND),
        ("kind", "null", KIND),
        ("created_at", "1.5", CREATED_AT),
        ("created_at", "-1", CREATED_AT),
        ("created_at", r#""123""#, CREATED_AT),
        ("created_at", "9007199254740992", CREATED_AT), // 2^53
        ("created_at", "1.7e9", CREATED_AT),
        ("tags", "[[]]", "invalid: tag 0 is empty"),
        ("tags", r#"[["t","x"],[]]"#, "invalid: tag 1 is empty"),
        (
            "tags",
            r#"[["e",1]]"#,
            "invalid: tag 0 must contain only strings",
        ),
        ("tags", "[[1]]", "invalid: tag 0 must contain only strings"),
        (
            "tags",
            r#"[["t",null]]"#,
            "invalid: tag 0 must contain only strings",
        ),
        (
            "tags",
            r#"["t"]"#,
            "invalid: tag 0 must be an array of strings",
        ),
        (
            "tags",
            "{}",
            "invalid: tags must be an array of arrays of strings",
        ),
        ("content", "1", "invalid: content must be a string"),
        ("content", "null", "invalid: content must be a string"),
        ("pubkey", "1", "invalid: pubkey must be a string"),
        (
            "sig",
            r#""abc""#,
            "invalid: sig must be 128 lowercase hex characters",
        ),
    ];
    for (n, &(field, raw, expected)) in cases.iter().enumerate() {
        let event = note(&keys, &format!("wrong type {n}"));
        let id = event.id.to_hex();
        let text = event_with_raw(&event, field, raw);
        let reason = refusal_for(&mut client, &text, &id).await;
        assert_eq!(reason, expected, "{field} = {raw}");
    }
    // Uppercase hex in pubkey or sig: NIP-01 asks for lowercase hex.
    let event = note(&keys, "uppercase pubkey");
    let mut value = to_value(&event);
    value["pubkey"] = json!(keys.public_key().to_hex().to_uppercase());
    let reason = refusal_for(&mut client, &event_message(&value), &event.id.to_hex()).await;
    assert_eq!(
        reason,
        "invalid: pubkey must be 64 lowercase hex characters"
    );
    let event = note(&keys, "uppercase sig");
    let mut value = to_value(&event);
    value["sig"] = json!(value["sig"].as_str().unwrap().to_uppercase());
    let reason = refusal_for(&mut client, &event_message(&value), &event.id.to_hex()).await;
    assert_eq!(reason, "invalid: sig must be 128 lowercase hex characters");
    // None of them was stored.
    let stored = client
        .req(
            "mine",
            vec![json!({"authors": [keys.public_key().to_hex()]})],
        )
        .await;
    assert_eq!(stored, Vec::<Value>::new());
    client.send_json(json!(["CLOSE", "mine"])).await;
    client.assert_healthy().await;
}

/// The seven fields are all required. Without an `id` there is nothing an OK
/// could name, so that one case is a NOTICE.
#[tokio::test]
async fn events_missing_a_field_are_refused() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    for field in [
        "id",
        "pubkey",
        "created_at",
        "kind",
        "tags",
        "content",
        "sig",
    ] {
        let event = note(&keys, &format!("missing {field}"));
        let mut value = to_value(&event);
        value.as_object_mut().unwrap().remove(field);
        let text = event_message(&value);
        let expected = format!("invalid: missing field {field}");
        if field == "id" {
            assert_eq!(notice_for(&mut client, &text).await, expected);
        } else {
            assert_eq!(
                refusal_for(&mut client, &text, &event.id.to_hex()).await,
                expected
            );
        }
    }
    client.assert_healthy().await;
}

/// NIP-01: the id is "32-bytes lowercase hex-encoded", so an uppercase id is
/// invalid; but "`OK` messages MUST be sent in response to `EVENT` messages",
/// and the id is a readable string the client will wait on, so the answer is
/// an OK false naming the id exactly as the client sent it.
#[tokio::test]
async fn an_uppercase_id_is_refused_with_ok_false() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let event = note(&Keys::generate(), "uppercase id");
    let upper = event.id.to_hex().to_uppercase();
    let mut value = to_value(&event);
    value["id"] = json!(upper);
    let answer = answer_to(&mut client, &event_message(&value)).await;
    assert_eq!(
        answer,
        json!([
            "OK",
            upper,
            false,
            "invalid: id must be 64 lowercase hex characters"
        ])
    );
    client.assert_healthy().await;
}

/// A lone UTF-16 surrogate (`\ud800`, written as a JSON escape) is no
/// Unicode character and cannot be part of a UTF-8 content string; the
/// event is still answered by its readable id.
#[tokio::test]
async fn a_lone_surrogate_in_content_is_refused_by_id() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    for raw in [
        r#""\ud800""#,
        r#""\udc00""#,
        r#""a\ud800b""#,
        r#""\ud800\u0041""#,
    ] {
        let event = note(&keys, &format!("surrogate {raw}"));
        let text = event_with_raw(&event, "content", raw);
        assert!(
            text.contains(r"\u"),
            "the escape is sent as written: {text}"
        );
        let reason = refusal_for(&mut client, &text, &event.id.to_hex()).await;
        // serde_json's words vary ("lone leading surrogate", "unexpected
        // end of hex escape"); the relay's own part does not.
        assert!(
            reason.starts_with("invalid: event is not valid JSON (") && reason.ends_with(')'),
            "{raw}: {reason}"
        );
    }
    // Control: a valid surrogate *pair* is the same string as the character
    // written verbatim, so the signed event is accepted.
    let event = note(&keys, "😀");
    let text = event_with_raw(&event, "content", r#""\ud83d\ude00""#);
    let answer = answer_to(&mut client, &text).await;
    assert_eq!(answer, json!(["OK", event.id.to_hex(), true, ""]));
    client.assert_healthy().await;
}

/// NIP-01: the id is the "sha256 of the serialized event data" and the sig
/// the Schnorr signature of it.
#[tokio::test]
async fn wrong_id_and_bad_signature_are_refused_invalid() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let event = note(&keys, "original");
    // Tampered content: the id no longer is the hash.
    let mut value = to_value(&event);
    value["content"] = json!("tampered");
    assert_eq!(
        client.publish_raw(&value).await,
        (
            false,
            "invalid: event id does not match the hash of its content".to_owned()
        )
    );
    // Another author's pubkey: also part of the hash.
    let mut value = to_value(&event);
    value["pubkey"] = json!(Keys::generate().public_key().to_hex());
    assert_eq!(
        client.publish_raw(&value).await,
        (
            false,
            "invalid: event id does not match the hash of its content".to_owned()
        )
    );
    // Valid id, one flipped bit in the signature.
    let mut value = to_value(&event);
    let sig = value["sig"].as_str().unwrap().to_owned();
    let last = u8::from_str_radix(&sig[127..], 16).unwrap() ^ 1;
    value["sig"] = json!(format!("{}{last:x}", &sig[..127]));
    assert_ne!(value["sig"], json!(sig));
    assert_eq!(
        client.publish_raw(&value).await,
        (false, "invalid: signature verification failed".to_owned())
    );
    // A valid id signed by somebody else.
    let mut value = to_value(&event);
    value["sig"] = json!(to_value(&note(&Keys::generate(), "other"))["sig"]);
    assert_eq!(
        client.publish_raw(&value).await,
        (false, "invalid: signature verification failed".to_owned())
    );
    // None of the forgeries was stored; the genuine event still is new.
    assert_eq!(client.publish(&event).await, (true, String::new()));
    let stored = client
        .req("check", vec![json!({"ids": [event.id.to_hex()]})])
        .await;
    assert_eq!(stored, vec![to_value(&event)]);
    client.send_json(json!(["CLOSE", "check"])).await;
    client.assert_healthy().await;
}

// ---------------------------------------------------------------------------
// Filters with wrong types
// ---------------------------------------------------------------------------

/// NIP-01: "The `ids`, `authors`, `#e` and `#p` filter lists MUST contain
/// exact 64-character lowercase hex values." (so no prefix matching), and a
/// refused REQ gets "CLOSED" with a machine-readable prefix; an unknown
/// filter field is "unsupported:" (NIP-01's own example:
/// `["CLOSED", "sub1", "unsupported: filter contains unknown elements"]`).
#[tokio::test]
async fn filters_with_wrong_types_are_closed() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let upper = Keys::generate().public_key().to_hex().to_uppercase();
    const KINDS: &str = "invalid: kinds must contain integers from 0 to 65535";
    let cases: Vec<(Value, &str)> = vec![
        (json!({"kinds": [1.0]}), KINDS),
        (json!({"kinds": [-1]}), KINDS),
        (json!({"kinds": [65536]}), KINDS),
        (json!({"kinds": ["1"]}), KINDS),
        (
            json!({"kinds": 1}),
            "invalid: kinds must be an array of integers",
        ),
        (
            json!({"ids": ["abc"]}),
            "invalid: ids must contain 64-character lowercase hex strings",
        ),
        (
            json!({"ids": [upper]}),
            "invalid: ids must contain 64-character lowercase hex strings",
        ),
        (
            json!({"authors": [upper]}),
            "invalid: authors must contain 64-character lowercase hex strings",
        ),
        (
            json!({"authors": "x"}),
            "invalid: authors must be an array of 64-character lowercase hex strings",
        ),
        (
            json!({"#e": ["nothex"]}),
            "invalid: #e must contain 64-character lowercase hex strings",
        ),
        (
            json!({"#p": [upper]}),
            "invalid: #p must contain 64-character lowercase hex strings",
        ),
        (json!({"#p": [1]}), "invalid: #p must contain only strings"),
        (
            json!({"#t": "x"}),
            "invalid: #t must be an array of strings",
        ),
        (
            json!({"since": "x"}),
            "invalid: since must be a non-negative integer timestamp",
        ),
        (
            json!({"until": -1}),
            "invalid: until must be a non-negative integer timestamp",
        ),
        (
            json!({"limit": -1}),
            "invalid: limit must be a non-negative integer",
        ),
        (
            json!({"limit": 1.5}),
            "invalid: limit must be a non-negative integer",
        ),
        (json!([]), "invalid: filter must be a JSON object"),
        (json!("kinds"), "invalid: filter must be a JSON object"),
        (json!(null), "invalid: filter must be a JSON object"),
        (json!({"search": 5}), "invalid: search must be a string"),
        (
            json!({"nsfw": false}),
            "unsupported: filter field nsfw is not supported by this relay",
        ),
        (
            json!({"#ab": ["x"]}),
            "unsupported: filter field #ab is not supported by this relay",
        ),
        (
            json!({"#1": ["x"]}),
            "unsupported: filter field #1 is not supported by this relay",
        ),
    ];
    for (n, (filter, expected)) in cases.into_iter().enumerate() {
        let sub = format!("bad{n}");
        let reason = client.req_closed(&sub, vec![filter.clone()]).await;
        assert_eq!(reason, expected, "filter {filter}");
    }
    // One bad filter among good ones refuses the whole REQ.
    let reason = client
        .req_closed("mixed", vec![json!({}), json!({"kinds": [-1]})])
        .await;
    assert_eq!(reason, KINDS);
    client.assert_healthy().await;
}

// ---------------------------------------------------------------------------
// Subscription ids
// ---------------------------------------------------------------------------

/// NIP-01: "`<subscription_id>` is an arbitrary, non-empty string of max
/// length 64 chars." The limit counts characters, not bytes.
#[tokio::test]
async fn subscription_id_length_and_type() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let sixty_four = "a".repeat(64);
    assert_eq!(
        client
            .req(&sixty_four, vec![json!({"kinds": [1], "limit": 1})])
            .await,
        Vec::<Value>::new()
    );
    let sixty_five = "b".repeat(65);
    let answer = answer_to(&mut client, &json!(["REQ", sixty_five, {}]).to_string()).await;
    assert_eq!(
        answer,
        json!([
            "CLOSED",
            sixty_five,
            "invalid: subscription id is longer than 64 characters"
        ])
    );
    let answer = answer_to(&mut client, r#"["REQ","",{}]"#).await;
    assert_eq!(
        answer,
        json!(["CLOSED", "", "invalid: subscription id must not be empty"])
    );
    // 64 two-byte characters (128 bytes) are 64 characters: accepted.
    let accents = "é".repeat(64);
    assert_eq!(accents.len(), 128);
    assert_eq!(
        client
            .req(&accents, vec![json!({"kinds": [1], "limit": 1})])
            .await,
        Vec::<Value>::new()
    );
    let accents_65 = "é".repeat(65);
    let answer = answer_to(&mut client, &json!(["REQ", accents_65, {}]).to_string()).await;
    assert_eq!(
        answer,
        json!([
            "CLOSED",
            accents_65,
            "invalid: subscription id is longer than 64 characters"
        ])
    );
    // A non-string id cannot be named in a CLOSED: NOTICE.
    for input in [
        r#"["REQ",1,{}]"#,
        r#"["REQ",null,{}]"#,
        r#"["REQ",["s"],{}]"#,
        r#"["CLOSE",1]"#,
    ] {
        assert_eq!(
            notice_for(&mut client, input).await,
            "invalid: subscription id must be a string"
        );
    }
    // An id with JSON-special characters is echoed exactly, live events too.
    let odd = "s\"\\/\n\u{1}é😀";
    assert_eq!(
        client.req(odd, vec![json!({"kinds": [7777]})]).await,
        Vec::<Value>::new()
    );
    let keys = Keys::generate();
    let live = event(&keys, 7777, "live", &[], now());
    client
        .send_text(format!(r#"["EVENT",{}]"#, live.as_json()))
        .await;
    let mut got_event = false;
    let mut got_ok = false;
    while !(got_event && got_ok) {
        let message = client.recv().await;
        match message[0].as_str() {
            Some("EVENT") => {
                assert_eq!(message, json!(["EVENT", odd, to_value(&live)]));
                got_event = true;
            }
            Some("OK") => {
                assert_eq!(message, json!(["OK", live.id.to_hex(), true, ""]));
                got_ok = true;
            }
            _ => panic!("unexpected {message}"),
        }
    }
    for sub in [sixty_four.as_str(), accents.as_str(), odd] {
        client.send_json(json!(["CLOSE", sub])).await;
    }
    client.assert_healthy().await;
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// NIP-01 messages are JSON text; a binary frame gets an explanation.
#[tokio::test]
async fn a_binary_frame_gets_an_invalid_notice() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    client
        .ws
        .send(Message::binary(br#"["REQ","s",{}]"#.to_vec()))
        .await
        .unwrap();
    assert_eq!(
        client.expect_notice().await,
        "invalid: binary messages are not supported; send JSON text"
    );
    client.assert_healthy().await;
}

/// 10,000 levels of nesting, everywhere a value may appear, are answered
/// clearly (never a crash, a stack overflow or silence).
#[tokio::test]
async fn deeply_nested_json_is_answered_and_the_connection_stays() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let deep = deep_array();

    // The whole message.
    let notice = notice_for(&mut client, &deep).await;
    assert_eq!(
        notice,
        "invalid: the first element must be the message type as a plain string"
    );
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(DEEP), "}".repeat(DEEP));
    let notice = notice_for(&mut client, &deep_object).await;
    assert!(
        notice.starts_with("invalid: message must be a JSON array ("),
        "{notice}"
    );

    // The event inside EVENT: no id to name, so a NOTICE.
    let notice = notice_for(&mut client, &format!(r#"["EVENT",{deep}]"#)).await;
    assert!(
        notice.starts_with("invalid: event is not valid JSON ("),
        "{notice}"
    );
    assert!(notice.contains("recursion limit"), "{notice}");

    // Deep content inside an event whose id is readable: OK false by id.
    let event = note(&Keys::generate(), "deep");
    let text = event_with_raw(&event, "content", &deep);
    assert!(text.len() > 2 * DEEP);
    let reason = refusal_for(&mut client, &text, &event.id.to_hex()).await;
    assert!(
        reason.starts_with("invalid: event is not valid JSON ("),
        "{reason}"
    );
    assert!(reason.contains("recursion limit"), "{reason}");

    // Inside a REQ: as the filter, and as a filter's value.
    let answer = answer_to(&mut client, &format!(r#"["REQ","deep",{deep}]"#)).await;
    assert_eq!(answer[0], "CLOSED", "{answer}");
    assert_eq!(answer[1], "deep");
    let reason = answer[2].as_str().unwrap();
    assert!(
        reason.starts_with("invalid: filter is not valid JSON ("),
        "{reason}"
    );
    assert!(reason.contains("recursion limit"), "{reason}");
    let answer = answer_to(
        &mut client,
        &format!(r##"["REQ","deep2",{{"#t":{deep}}}]"##),
    )
    .await;
    assert_eq!(answer[0], "CLOSED", "{answer}");
    assert_eq!(answer[1], "deep2");
    assert!(
        answer[2].as_str().unwrap().starts_with("invalid: "),
        "{answer}"
    );
    // As the subscription id.
    let notice = notice_for(&mut client, &format!(r#"["REQ",{deep},{{}}]"#)).await;
    assert_eq!(notice, "invalid: subscription id must be a string");

    client.assert_healthy().await;
    // And the relay as a whole is fine.
    relay.client().await.assert_healthy().await;
}

/// NIP-11: `max_message_length` "is equal to the maximum size of the
/// WebSocket message frame". Past it, RFC 6455 closes with 1009 (message
/// too big); a new connection works.
#[tokio::test]
async fn a_frame_over_max_message_length_is_closed_with_1009() {
    let relay = TestRelay::start_with(|c| c.limits.max_message_length = 4096).await;
    let mut client = relay.client().await;

    // Exactly at the limit: served.
    let head = r##"["REQ","fits",{"#t":[""##;
    let tail = r#""]}]"#;
    let padding = "x".repeat(4096 - head.len() - tail.len());
    let exact = format!("{head}{padding}{tail}");
    assert_eq!(exact.len(), 4096);
    client.send_text(exact).await;
    assert_eq!(client.collect_until_eose("fits").await, Vec::<Value>::new());
    client.send_json(json!(["CLOSE", "fits"])).await;

    // 10 KB: the connection is closed with 1009.
    let big = format!(r##"["REQ","big",{{"#t":["{}"]}}]"##, "y".repeat(10 * 1024));
    client.send_text(big).await;
    match client.recv_message().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Size, "{frame:?}"),
        other => panic!("expected a Close frame with code 1009, got {other:?}"),
    }

    let mut fresh = relay.client().await;
    fresh.assert_healthy().await;
}

/// RFC 6455 §8.1: a text frame that is not valid UTF-8 fails the
/// connection (close code 1007). Only that connection: another one carries
/// on publishing and querying.
#[tokio::test]
async fn invalid_utf8_closes_that_connection_with_1007_only() {
    let relay = TestRelay::start().await;
    let mut bystander = relay.client().await;
    let mut client = relay.client().await;

    // A raw text frame goes through tungstenite's writer unchecked; first a
    // valid one, to show that this path reaches the relay as text.
    let frame = Frame::message(br#"["FOO"]"#.to_vec(), OpCode::Data(Data::Text), true);
    client.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(
        client.expect_notice().await,
        r#"invalid: unknown message type "FOO""#
    );

    // The same with invalid UTF-8 (a lone continuation byte and an overlong
    // encoding) inside an otherwise valid message.
    let bytes = b"[\"REQ\",\"s\x80\",{\"#t\":[\"\xc0\xaf\"]}]".to_vec();
    assert!(std::str::from_utf8(&bytes).is_err());
    let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
    client.ws.send(Message::Frame(frame)).await.unwrap();
    match client.recv_message().await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(frame.code, CloseCode::Invalid, "{frame:?}");
            assert_eq!(frame.reason.as_str(), "invalid UTF-8 in a text frame");
        }
        other => panic!("expected a Close frame with code 1007, got {other:?}"),
    }

    bystander.assert_healthy().await;
    relay.client().await.assert_healthy().await;
}

// ---------------------------------------------------------------------------
// Big but valid filters
// ---------------------------------------------------------------------------

/// A filter with 1,000 authors is valid NIP-01 and is answered with the
/// events of exactly those authors.
#[tokio::test]
async fn a_filter_with_a_thousand_authors_works() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let keys: Vec<Keys> = (0..1000).map(|_| Keys::generate()).collect();
    let mut expected = Vec::new();
    for (n, index) in [0usize, 500, 999].into_iter().enumerate() {
        let event = event(
            &keys[index],
            1,
            &format!("author {index}"),
            &[],
            now() - 10 + n as u64,
        );
        assert_eq!(client.publish(&event).await, (true, String::new()));
        expected.push(to_value(&event));
    }
    // An author outside the list must not come back.
    let outsider = note(&Keys::generate(), "not in the list");
    assert_eq!(client.publish(&outsider).await, (true, String::new()));

    let authors: Vec<String> = keys.iter().map(|k| k.public_key().to_hex()).collect();
    let got = client.req("many", vec![json!({"authors": authors})]).await;
    expected.reverse(); // newest first
    assert_eq!(got, expected);
    client.send_json(json!(["CLOSE", "many"])).await;
    client.assert_healthy().await;
}

// ---------------------------------------------------------------------------
// Per-connection limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn more_filters_than_max_filters_is_blocked() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    let max = relay.config.limits.max_filters;
    let filters = |n: usize| (0..n).map(|k| json!({"kinds": [k]})).collect::<Vec<_>>();
    let reason = client.req_closed("many", filters(max + 1)).await;
    assert_eq!(
        reason,
        format!("blocked: too many filters in one REQ (max {max})")
    );
    assert_eq!(client.req("many", filters(max)).await, Vec::<Value>::new());
    client.send_json(json!(["CLOSE", "many"])).await;
    client.assert_healthy().await;
}

/// NIP-11 `max_subscriptions`: "total number of subscriptions that may be
/// active on a single websocket connection". NIP-01: a REQ with an id
/// already open replaces that subscription ("a new subscription is
/// created, replacing the old one"), so it takes no extra slot.
#[tokio::test]
async fn max_subscriptions_counts_open_subscriptions_only() {
    let relay = TestRelay::start_with(|c| c.limits.max_subscriptions = 3).await;
    let mut client = relay.client().await;
    let open = json!({"kinds": [1]});
    for sub in ["a", "b", "c"] {
        assert_eq!(
            client.req(sub, vec![open.clone()]).await,
            Vec::<Value>::new()
        );
    }
    let full = "blocked: too many subscriptions (max 3)";
    assert_eq!(client.req_closed("d", vec![open.clone()]).await, full);
    // Replacing an open one is accepted and still counts once.
    assert_eq!(
        client.req("a", vec![json!({"kinds": [2]})]).await,
        Vec::<Value>::new()
    );
    assert_eq!(client.req_closed("d", vec![open.clone()]).await, full);
    // CLOSE frees a slot.
    client.send_json(json!(["CLOSE", "b"])).await;
    assert_eq!(
        client.req("d", vec![open.clone()]).await,
        Vec::<Value>::new()
    );
    assert_eq!(client.req_closed("e", vec![open.clone()]).await, full);
    // Refused REQs take no slot: with one slot free, an invalid REQ and a
    // blocked one leave it free.
    client.send_json(json!(["CLOSE", "c"])).await;
    assert_eq!(
        client.req_closed("x", vec![json!({"kinds": [-1]})]).await,
        "invalid: kinds must contain integers from 0 to 65535"
    );
    assert_eq!(
        client.req_closed("y", vec![json!({"nsfw": false})]).await,
        "unsupported: filter field nsfw is not supported by this relay"
    );
    assert_eq!(
        client.req("z", vec![open.clone()]).await,
        Vec::<Value>::new()
    );
    assert_eq!(client.req_closed("w", vec![open.clone()]).await, full);
    // The limit is per connection.
    let mut other = relay.client().await;
    assert_eq!(
        other.req("a", vec![open.clone()]).await,
        Vec::<Value>::new()
    );
    // Free every slot, then the usual health check (it needs one).
    for sub in ["a", "d", "z"] {
        client.send_json(json!(["CLOSE", sub])).await;
    }
    client.assert_healthy().await;
}

/// Beyond the brief's list, a consequence of NIP-01's wording: CLOSED is
/// "used to indicate that a subscription was ended on the server side", and
/// "`EVENT` messages MUST be sent only with a subscription ID related to a
/// subscription previously initiated by the client". After the relay
/// answers a replacing REQ with `CLOSED "a"`, no event may arrive for "a".
#[tokio::test]
async fn a_refused_replacement_leaves_no_live_subscription_behind() {
    let relay = TestRelay::start().await;
    let mut client = relay.client().await;
    assert_eq!(
        client.req("a", vec![json!({"kinds": [7001]})]).await,
        Vec::<Value>::new()
    );
    let reason = client.req_closed("a", vec![json!({"kinds": [-1]})]).await;
    assert_eq!(
        reason,
        "invalid: kinds must contain integers from 0 to 65535"
    );
    let live = event(&Keys::generate(), 7001, "after CLOSED", &[], now());
    client
        .send_text(format!(r#"["EVENT",{}]"#, live.as_json()))
        .await;
    let mut seen = Vec::new();
    loop {
        let message = client.recv().await;
        if message[0] == "OK" {
            assert_eq!(message, json!(["OK", live.id.to_hex(), true, ""]));
            break;
        }
        seen.push(message);
    }
    // The live event would be delivered before or right after the OK.
    client.send_json(json!(["REQ", "sync", {"ids": []}])).await;
    loop {
        let message = client.recv().await;
        if message == json!(["EOSE", "sync"]) {
            break;
        }
        seen.push(message);
    }
    assert_eq!(
        seen,
        Vec::<Value>::new(),
        "events for a subscription the relay said was CLOSED"
    );
    client.assert_healthy().await;
}

// ---------------------------------------------------------------------------
// Limits on EVENT
// ---------------------------------------------------------------------------

/// NIP-11: `max_event_tags` is "the maximum number of elements in the
/// `tags` list"; `max_content_length` is the "maximum number of characters
/// in the `content` field ... a count of unicode characters".
#[tokio::test]
async fn tag_count_and_content_length_limits() {
    let relay = TestRelay::start_with(|c| {
        c.limits.max_event_tags = 5;
        c.limits.max_content_length = 10;
    })
    .await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let five: Vec<Vec<String>> = (0..5)
        .map(|k| vec!["t".to_owned(), format!("t{k}")])
        .collect();
    let refs: Vec<Vec<&str>> = five
        .iter()
        .map(|t| t.iter().map(String::as_str).collect())
        .collect();
    let five_refs: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
    let ok5 = event(&keys, 1, "five tags", &five_refs, now());
    assert_eq!(client.publish(&ok5).await, (true, String::new()));
    let mut six_refs = five_refs.clone();
    six_refs.push(&["t", "t5"]);
    let six = event(&keys, 1, "six tags", &six_refs, now());
    assert_eq!(
        client.publish(&six).await,
        (false, "invalid: too many tags (6 > 5)".to_owned())
    );

    let accents = "é".repeat(10);
    assert_eq!(accents.len(), 20);
    let ten_chars = note(&keys, &accents);
    assert_eq!(client.publish(&ten_chars).await, (true, String::new()));
    let eleven = note(&keys, &"a".repeat(11));
    assert_eq!(
        client.publish(&eleven).await,
        (
            false,
            "invalid: content is too long (11 > 10 characters)".to_owned()
        )
    );
    let eleven_accents = note(&keys, &"é".repeat(11));
    assert_eq!(
        client.publish(&eleven_accents).await,
        (
            false,
            "invalid: content is too long (11 > 10 characters)".to_owned()
        )
    );
    let stored = client
        .req(
            "mine",
            vec![json!({"authors": [keys.public_key().to_hex()]})],
        )
        .await;
    let mut ids: Vec<&str> = stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut expected = vec![ok5.id.to_hex(), ten_chars.id.to_hex()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    client.send_json(json!(["CLOSE", "mine"])).await;
    // The harness's health note ("still alive") is 11 characters: too long here.
    assert_healthy_with(&mut client, "alive").await;
}

/// NIP-01's own example refusal: `["OK", "b1a649ebe8...", false, "invalid:
/// event creation date is too far off from the current time"]`.
#[tokio::test]
async fn created_at_upper_limit_and_unset_lower_limit() {
    let relay = TestRelay::start().await;
    assert_eq!(relay.config.limits.created_at_upper_limit, 900);
    assert_eq!(relay.config.limits.created_at_lower_limit, 0);
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let future = event(&keys, 1, "from the future", &[], now() + 1000);
    assert_eq!(
        client.publish(&future).await,
        (
            false,
            "invalid: created_at is more than 900 seconds in the future".to_owned()
        )
    );
    let soon = event(&keys, 1, "soon", &[], now() + 800);
    assert_eq!(client.publish(&soon).await, (true, String::new()));
    // The largest created_at the parser takes still meets the time policy.
    let far = event(&keys, 1, "far", &[], (1 << 53) - 1);
    assert_eq!(
        client.publish(&far).await,
        (
            false,
            "invalid: created_at is more than 900 seconds in the future".to_owned()
        )
    );
    // No lower limit by default: an event from 2015 is fine.
    let old = event(&keys, 1, "2015", &[], 1_420_070_400);
    assert_eq!(client.publish(&old).await, (true, String::new()));
    client.assert_healthy().await;
}

#[tokio::test]
async fn created_at_lower_limit_refuses_old_events() {
    let relay = TestRelay::start_with(|c| c.limits.created_at_lower_limit = 3600).await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let old = event(&keys, 1, "two hours ago", &[], now() - 7200);
    assert_eq!(
        client.publish(&old).await,
        (
            false,
            "invalid: created_at is more than 3600 seconds in the past".to_owned()
        )
    );
    let recent = event(&keys, 1, "half an hour ago", &[], now() - 1800);
    assert_eq!(client.publish(&recent).await, (true, String::new()));
    client.assert_healthy().await;
}

// ---------------------------------------------------------------------------
// limit clamping
// ---------------------------------------------------------------------------

/// NIP-11 `max_limit`: "the relay server will clamp each filter's `limit`
/// value to this number"; `default_limit`: "The maximum returned events if
/// you send a filter without a `limit`". NIP-01: the initial query returns
/// "the last `n` events ordered by the `created_at`. Newer events should
/// appear first".
#[tokio::test]
async fn max_limit_and_default_limit_clamp_the_initial_query() {
    let relay = TestRelay::start_with(|c| {
        c.limits.max_limit = 5;
        c.limits.default_limit = 3;
    })
    .await;
    let mut client = relay.client().await;
    let keys = Keys::generate();
    let base = now() - 100;
    let mut published = Vec::new();
    for n in 0..8u64 {
        let event = event(&keys, 1, &format!("event {n}"), &[], base + n);
        assert_eq!(client.publish(&event).await, (true, String::new()));
        published.push(to_value(&event));
    }
    let newest_first: Vec<Value> = published.iter().rev().cloned().collect();
    let author = keys.public_key().to_hex();

    let got = client
        .req("l100", vec![json!({"authors": [author], "limit": 100})])
        .await;
    assert_eq!(got, newest_first[..5].to_vec());
    let got = client
        .req("nolimit", vec![json!({"authors": [author]})])
        .await;
    assert_eq!(got, newest_first[..3].to_vec());
    let got = client
        .req("zero", vec![json!({"authors": [author], "limit": 0})])
        .await;
    assert_eq!(got, Vec::<Value>::new());
    for sub in ["l100", "nolimit", "zero"] {
        client.send_json(json!(["CLOSE", sub])).await;
    }
    client.assert_healthy().await;
}
