//! HTTP on the relay's port: the WebSocket upgrade on `/`, the NIP-11
//! document for `Accept: application/nostr+json`, the NIP-86 management API
//! for POSTs of `application/nostr+json+rpc`, the relay's web page for
//! browsers (and its files under `/assets/`), CORS preflight, and 404
//! everywhere else.

use crate::rate_limit::client_address;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{Shared, connection, page};
use crate::management;
use crate::shutdown::Shutdown;

type Body = Full<Bytes>;

/// Answers one HTTP request. `slot` is the connection's place under
/// `max_connections`; without one every request gets 503.
pub async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    slot: Option<Arc<OwnedSemaphorePermit>>,
    shutdown: Shutdown,
    done: mpsc::Sender<()>,
) -> Result<Response<Body>, Infallible> {
    let Some(slot) = slot else {
        return Ok(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections, try again later\n",
        ));
    };
    if let Some(response) = super::monitoring::answer(&request, &shared, peer, &shutdown) {
        return Ok(response);
    }
    if shutdown.is_shutdown() {
        // Draining: a request on a kept-alive connection is refused, and the
        // connection closed, so the client comes back on a new one (which,
        // during an upgrade with reuse_port, the new relay accepts).
        return Ok(Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::CONNECTION, "close")
            .header(header::RETRY_AFTER, "1")
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from("shutting down, try again\n"))
            .unwrap_or_default());
    }
    if request.uri().path() == "/debug/counters" && peer.ip().is_loopback() {
        let in_use = shared.config.network.max_connections - shared.slots.available_permits();
        let body = shared
            .counters
            .snapshot(shared.fanout.len(), shared.fanout.queued(), in_use)
            .to_string();
        return Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::new(Bytes::from(body)))
            .unwrap_or_default());
    }
    if let Some(response) = page::asset(&request) {
        return Ok(response);
    }
    if request.uri().path() != "/" {
        return Ok(plain(StatusCode::NOT_FOUND, "not found\n"));
    }
    if request.method() == Method::OPTIONS {
        return Ok(
            with_cors(Response::builder().status(StatusCode::NO_CONTENT))
                .body(Body::default())
                .unwrap_or_default(),
        );
    }
    if request.method() == Method::POST
        && shared.config.management.enabled
        && management::is_rpc(&request)
    {
        let url = expected_relay_url(&shared.config.relay_url, shared.tls.is_some(), &request);
        let response = management::handle(request, &shared.management, &shared.access, url);
        return Ok(response.await);
    }
    if is_websocket_upgrade(&request) {
        return Ok(upgrade(request, shared, peer, slot, shutdown, done));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
        ));
    }
    let wants_nip11 = request
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/nostr+json"));
    if wants_nip11 {
        let response = with_cors(Response::builder())
            .header(header::CONTENT_TYPE, "application/nostr+json")
            .body(Body::new(shared.access.current().relay_info()))
            .unwrap_or_default();
        return Ok(response);
    }
    // NIP-86 may have renamed the relay: the page shows what NIP-11 shows.
    let nip11 = shared.access.current().relay_info();
    Ok(page::home(&nip11, &shared.config.relay_url, &request))
}

fn is_websocket_upgrade(request: &Request<Incoming>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    request.method() == Method::GET
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
}

fn upgrade(
    mut request: Request<Incoming>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    slot: Arc<OwnedSemaphorePermit>,
    shutdown: Shutdown,
    done: mpsc::Sender<()>,
) -> Response<Body> {
    let version_ok = request
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        == Some(b"13");
    let Some(key) = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| version_ok)
    else {
        return Response::builder()
            .status(StatusCode::UPGRADE_REQUIRED)
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .body(Body::from(
                "WebSocket version 13 with a Sec-WebSocket-Key is required\n",
            ))
            .unwrap_or_default();
    };
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let address = client_address(
        peer.ip(),
        header("x-real-ip"),
        header("x-forwarded-for"),
        &shared.trusted_proxies,
    );
    // The socket's peer was checked at accept; behind a proxy, the client
    // it names is checked here.
    if shared.access.current().is_ip_blocked(address) {
        return Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Body::from(
                "blocked: your address is blocked on this relay\n",
            ))
            .unwrap_or_default();
    }
    let open = match shared.rate_limits.admit_connection(address) {
        Ok(open) => open,
        Err(reason) => {
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header(header::RETRY_AFTER, "60")
                .body(Body::from(format!("{reason}\n")))
                .unwrap_or_default();
        }
    };
    let accept = derive_accept_key(key.as_bytes());
    let relay_url = expected_relay_url(&shared.config.relay_url, shared.tls.is_some(), &request);
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let _slot = slot;
        let _done = done.clone();
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(shared.live.load().websocket),
                )
                .await;
                let peer = connection::Peer {
                    socket: peer,
                    address,
                    relay_url,
                    open,
                };
                connection::serve(socket, shared, peer, shutdown, done).await;
            }
            Err(error) => tracing::debug!(%peer, %error, "websocket upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::default())
        .unwrap_or_default()
}

fn with_cors(builder: hyper::http::response::Builder) -> hyper::http::response::Builder {
    builder
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        // "*" does not cover Authorization (Fetch standard): NIP-86 needs it.
        .header(header::ACCESS_CONTROL_ALLOW_HEADERS, "*, Authorization")
        .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS")
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text))
        .unwrap_or_default()
}

/// The URL NIP-42 AUTH events must name on this connection: the configured
/// `relay_url`, or else the one the client used, from its Host header
/// (`wss://` when the relay serves TLS itself).
fn expected_relay_url<B>(configured: &str, tls: bool, request: &Request<B>) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default();
    let scheme = if tls { "wss" } else { "ws" };
    format!("{scheme}://{host}{}", request.uri().path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_url_from_host_has_the_scheme_the_client_used() {
        let request = Request::get("/inbox")
            .header(header::HOST, "relay.example.com:4443")
            .body(())
            .unwrap();
        assert_eq!(
            expected_relay_url("", false, &request),
            "ws://relay.example.com:4443/inbox"
        );
        assert_eq!(
            expected_relay_url("", true, &request),
            "wss://relay.example.com:4443/inbox"
        );
        assert_eq!(
            expected_relay_url("wss://relay.example.com", false, &request),
            "wss://relay.example.com"
        );
    }
}
