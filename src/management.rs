//! NIP-86, the relay management API: JSON-RPC over HTTP POST on the relay's
//! own URL (`Content-Type: application/nostr+json+rpc`), authorized by a
//! NIP-98 header signed by one of relay.toml's `management.admins`.
//!
//! Answers: 401 when the `Authorization` header is missing or does not
//! verify (wrong URL, method, body hash, stale or replayed event, bad
//! signature), 403 when it verifies but its signer is not an admin (every
//! signer while `admins` is empty), 400 for a body that is not a request,
//! 413 past [`MAX_BODY`], and otherwise 200 with `{"result", "error"}`.
//! Every change goes through [`AccessControl::edit`], the same path as the
//! host CLI (`nostr-relayd admin`), and is in force when the answer leaves.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::access::{AccessControl, AccessLists, Cidr, Listed};
use crate::config::Config;
use crate::nostr::hex::decode_lower;
use crate::nostr::nip19::parse_pubkey;
use crate::nostr::nip98::{self, HttpRequest, ReplayGuard};
use crate::store::lists::{Edit, InfoField};
use crate::store::unix_now;

/// The media type NIP-86 requests carry.
pub const CONTENT_TYPE: &str = "application/nostr+json+rpc";

/// Largest request body read: a management call is a method name and a few
/// short parameters.
pub const MAX_BODY: usize = 64 * 1024;

/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest reason, relay name, description or icon URL accepted.
const MAX_TEXT: usize = 4096;

/// Every method this relay answers (NIP-86's, less the role methods, plus
/// `listdisallowedkinds` so that the kind deny list can be read too).
pub const SUPPORTED_METHODS: &[&str] = &[
    "supportedmethods",
    "banpubkey",
    "unbanpubkey",
    "listbannedpubkeys",
    "allowpubkey",
    "unallowpubkey",
    "listallowedpubkeys",
    "listeventsneedingmoderation",
    "allowevent",
    "banevent",
    "listbannedevents",
    "changerelayname",
    "changerelaydescription",
    "changerelayicon",
    "allowkind",
    "disallowkind",
    "listallowedkinds",
    "listdisallowedkinds",
    "blockip",
    "unblockip",
    "listblockedips",
];

/// The API's own state: who may call it, and the NIP-98 ids already used.
pub struct Management {
    admins: Vec<[u8; 32]>,
    replays: ReplayGuard,
}

impl Management {
    /// From `[management]` (validated at load).
    pub fn new(config: &Config) -> Management {
        Management {
            admins: config.admin_pubkeys(),
            replays: ReplayGuard::default(),
        }
    }
}

/// Whether a request is a NIP-86 call (its media type; parameters such as
/// `charset` are ignored).
pub fn is_rpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

/// Answers one NIP-86 request. `url` is the URL the NIP-98 `u` tag must
/// name: `relay_url`, or the request's own (`ws://` + Host + path).
pub async fn handle(
    request: Request<Incoming>,
    management: &Management,
    access: &Arc<AccessControl>,
    url: String,
) -> Response<Full<Bytes>> {
    let Some(authorization) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "an Authorization: Nostr header (NIP-98) is required",
        );
    };
    let body = Limited::new(request.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Err(_) => return refusal(StatusCode::REQUEST_TIMEOUT, "the body took too long"),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {MAX_BODY} bytes"),
            );
        }
        Ok(Err(error)) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {error}"),
            );
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let now = unix_now();
    let signed = HttpRequest {
        url: &url,
        method: "POST",
        body: &body,
    };
    let auth = match nip98::verify(&authorization, signed, now) {
        Ok(event) => event,
        Err(error) => return refusal(StatusCode::UNAUTHORIZED, &error.0),
    };
    if management.admins.is_empty() {
        return refusal(
            StatusCode::FORBIDDEN,
            "no admins are configured (management.admins in relay.toml)",
        );
    }
    if !management.admins.contains(&auth.pubkey) {
        return refusal(
            StatusCode::FORBIDDEN,
            "this pubkey is not an admin of this relay",
        );
    }
    // Recorded only now, so that only admins' events take room in the guard.
    if !management.replays.first_use(&auth.id, now) {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "this auth event was already used; sign a new one for each request",
        );
    }
    let call: Value = match serde_json::from_slice(&body) {
        Ok(call) => call,
        Err(error) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                &format!("the body is not JSON: {error}"),
            );
        }
    };
    let Some(method) = call
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return refusal(StatusCode::BAD_REQUEST, "the request has no method");
    };
    let params = match call.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(params)) => params.clone(),
        Some(_) => return refusal(StatusCode::BAD_REQUEST, "params must be an array"),
    };
    let answer = dispatch(&method, &params, access).await;
    match &answer {
        Ok(_) => tracing::info!(%method, admin = %hex::encode(auth.pubkey), "NIP-86 call"),
        Err(error) => {
            tracing::info!(%method, admin = %hex::encode(auth.pubkey), %error, "NIP-86 call failed")
        }
    }
    let body = match answer {
        Ok(result) => json!({"result": result, "error": null}),
        Err(error) => json!({"result": null, "error": error}),
    };
    respond(StatusCode::OK, &body)
}

/// Runs one method; `Err` is the message for the `error` field.
async fn dispatch(
    method: &str,
    params: &[Value],
    access: &Arc<AccessControl>,
) -> Result<Value, String> {
    let lists = access.current();
    let edit = match method {
        "supportedmethods" => return Ok(json!(SUPPORTED_METHODS)),
        "listbannedpubkeys" => return Ok(pubkey_list(&lists.banned_pubkeys)),
        "listallowedpubkeys" => return Ok(pubkey_list(&lists.allowed_pubkeys)),
        "listbannedevents" => return Ok(event_list(&lists)),
        "listallowedkinds" => return Ok(json!(lists.effective_allowed_kinds())),
        "listdisallowedkinds" => return Ok(json!(lists.denied_kinds)),
        "listblockedips" => return Ok(ip_list(&lists)),
        "listeventsneedingmoderation" => {
            let access = access.clone();
            let reports = tokio::task::spawn_blocking(move || access.reports())
                .await
                .map_err(|e| e.to_string())??;
            let reports: Vec<Value> = reports
                .into_iter()
                .map(|r| json!({"id": hex::encode(r.event_id), "reason": r.reason, "reports": r.reports}))
                .collect();
            return Ok(Value::Array(reports));
        }
        "banpubkey" => Edit::BanPubkey(pubkey(params)?, reason(params)?),
        "unbanpubkey" => Edit::UnbanPubkey(pubkey(params)?),
        "allowpubkey" => Edit::AllowPubkey(pubkey(params)?, reason(params)?),
        "unallowpubkey" => Edit::UnallowPubkey(pubkey(params)?),
        "banevent" => Edit::BanEvent(event_id(params)?, reason(params)?),
        "allowevent" => Edit::AllowEvent(event_id(params)?),
        "allowkind" => Edit::AllowKind(kind(params)?),
        "disallowkind" => Edit::DisallowKind(kind(params)?),
        "blockip" => Edit::BlockIp(cidr(params)?.to_string(), reason(params)?),
        "unblockip" => Edit::UnblockIp(cidr(params)?.to_string()),
        "changerelayname" => Edit::SetInfo(InfoField::Name, text(params, 0, "a name")?),
        "changerelaydescription" => {
            Edit::SetInfo(InfoField::Description, text(params, 0, "a description")?)
        }
        "changerelayicon" => Edit::SetInfo(InfoField::Icon, text(params, 0, "an icon URL")?),
        other => return Err(format!("unsupported method: {other}")),
    };
    let access = access.clone();
    tokio::task::spawn_blocking(move || access.edit(&edit))
        .await
        .map_err(|e| e.to_string())??;
    Ok(Value::Bool(true))
}

fn text(params: &[Value], index: usize, what: &str) -> Result<String, String> {
    let value = params
        .get(index)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("parameter {} must be {what} (a string)", index + 1))?;
    if value.len() > MAX_TEXT {
        return Err(format!(
            "parameter {} is longer than {MAX_TEXT} bytes",
            index + 1
        ));
    }
    Ok(value.to_owned())
}

/// The optional reason, second parameter of most edits.
fn reason(params: &[Value]) -> Result<String, String> {
    match params.get(1) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(_) => text(params, 1, "a reason"),
    }
}

fn pubkey(params: &[Value]) -> Result<[u8; 32], String> {
    let text = text(params, 0, "a pubkey")?;
    parse_pubkey(&text)
        .ok_or_else(|| format!("{text:?} is not a pubkey (64 hex characters or npub)"))
}

fn event_id(params: &[Value]) -> Result<[u8; 32], String> {
    let text = text(params, 0, "an event id")?;
    decode_lower::<32>(&text.trim().to_ascii_lowercase())
        .ok_or_else(|| format!("{text:?} is not an event id (64 hex characters)"))
}

fn kind(params: &[Value]) -> Result<u16, String> {
    let kind = match params.first() {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    kind.and_then(|k| u16::try_from(k).ok())
        .ok_or_else(|| "parameter 1 must be a kind number from 0 to 65535".to_owned())
}

fn cidr(params: &[Value]) -> Result<Cidr, String> {
    let text = text(params, 0, "an IP address")?;
    Cidr::parse(&text).ok_or_else(|| format!("{text:?} is not an IP address or CIDR range"))
}

fn sorted<'a, K: Ord + 'a, V>(entries: impl Iterator<Item = (&'a K, V)>) -> Vec<(&'a K, V)> {
    let mut entries: Vec<_> = entries.collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

fn pubkey_list(entries: &std::collections::HashMap<[u8; 32], Listed>) -> Value {
    let list: Vec<Value> = sorted(entries.iter())
        .into_iter()
        .map(|(key, listed)| json!({"pubkey": hex::encode(key), "reason": listed.reason}))
        .collect();
    Value::Array(list)
}

fn event_list(lists: &AccessLists) -> Value {
    let list: Vec<Value> = sorted(lists.banned_events.iter())
        .into_iter()
        .map(|(id, listed)| json!({"id": hex::encode(id), "reason": listed.reason}))
        .collect();
    Value::Array(list)
}

fn ip_list(lists: &AccessLists) -> Value {
    let list: Vec<Value> = lists
        .blocked_ips
        .iter()
        .map(|(cidr, listed)| json!({"ip": cidr.to_string(), "reason": listed.reason}))
        .collect();
    Value::Array(list)
}

/// A refused request: the status, and the NIP-86 shape with the reason.
fn refusal(status: StatusCode, error: &str) -> Response<Full<Bytes>> {
    let mut response = respond(status, &json!({"result": null, "error": error}));
    if status == StatusCode::UNAUTHORIZED {
        // RFC 9110: a 401 names the scheme that would be accepted.
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Nostr"));
    }
    response
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        // Browser-based admin tools call this from other origins.
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_default()
}
