//! The monitoring endpoints: `/metrics` (Prometheus), `/health` (load
//! balancers) and `/stats.json` (the web page's live figures).
//!
//! On the relay's port `/health` and `/stats.json` are public, and
//! `/metrics` is answered only to a loopback peer whose request carries no
//! proxy header: a reverse proxy on the same host connects from loopback
//! too, and must not expose it. With `metrics.listen` set, a plain-HTTP
//! listener of its own serves `/metrics` and `/health` to whoever reaches
//! it, and the relay's port answers `/metrics` with 404.
//!
//! None of them queries the database or logs per request: they read what
//! the sampler (`metrics::sample`) and the counters already hold.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::Shared;
use crate::config::Config;
use crate::metrics::{self, Figures};
use crate::shutdown::Shutdown;

type Body = Full<Bytes>;

/// Headers a reverse proxy adds: a request carrying one came through a
/// proxy, whatever address it arrives from.
const PROXY_HEADERS: [&str; 3] = ["x-forwarded-for", "x-real-ip", "forwarded"];

/// How long a client of the metrics listener may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a monitoring path on the relay's port; `None` for any
/// other path.
pub fn answer(
    request: &Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
    shutdown: &Shutdown,
) -> Option<Response<Body>> {
    let path = request.uri().path();
    let response = match path {
        "/health" | "/stats.json" | "/metrics" => match method_refusal(request.method(), path) {
            Some(refusal) => refusal,
            None if path == "/health" => health(shared, shutdown),
            None if path == "/stats.json" => stats(shared),
            None => {
                let served_here =
                    shared.config.metrics.enabled && shared.config.metrics.listen.is_empty();
                if served_here && is_local(peer, request.headers()) {
                    prometheus(shared)
                } else {
                    not_found()
                }
            }
        },
        _ => return None,
    };
    Some(response)
}

/// The answer on the metrics listener: `/metrics` and `/health` to anyone.
fn answer_on_listener<B>(
    request: &Request<B>,
    shared: &Shared,
    shutdown: &Shutdown,
) -> Response<Body> {
    let path = request.uri().path();
    match path {
        "/metrics" | "/health" => match method_refusal(request.method(), path) {
            Some(refusal) => refusal,
            None if path == "/health" => health(shared, shutdown),
            None => prometheus(shared),
        },
        _ => not_found(),
    }
}

/// A peer on this host that no proxy stands in front of.
fn is_local(peer: SocketAddr, headers: &HeaderMap) -> bool {
    // An IPv4 client of a socket bound to `[::]` arrives as ::ffff:a.b.c.d.
    peer.ip().to_canonical().is_loopback()
        && !PROXY_HEADERS.iter().any(|name| headers.contains_key(*name))
}

/// GET and HEAD only (and a CORS preflight for the public JSON).
fn method_refusal(method: &Method, path: &str) -> Option<Response<Body>> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    if method == Method::OPTIONS && path == "/stats.json" {
        let preflight = Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
            .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, OPTIONS")
            .body(Body::default())
            .unwrap_or_default();
        return Some(preflight);
    }
    Some(
        Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET, HEAD")
            .body(Body::from("method not allowed\n"))
            .unwrap_or_default(),
    )
}

fn health(shared: &Shared, shutdown: &Shutdown) -> Response<Body> {
    let draining = shutdown.is_shutdown();
    let health = shared.monitor.health(draining, shared.store.writer_alive());
    let status = if health.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store");
    if draining {
        // As every request while draining: the client comes back on a new
        // connection, to whichever relay then listens.
        response = response.header(header::CONNECTION, "close");
    }
    response.body(Body::from(health.body)).unwrap_or_default()
}

fn stats(shared: &Shared) -> Response<Body> {
    let access = shared.access.current();
    let body = shared.monitor.stats_json(Figures {
        name: &access.config.info.name,
        connections: shared.counters.websockets.get(),
        subscriptions: shared.fanout.len(),
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
        .header(header::CACHE_CONTROL, "max-age=1")
        .body(Body::new(body))
        .unwrap_or_default()
}

fn prometheus(shared: &Shared) -> Response<Body> {
    let text = metrics::global().render(shared.counters.websockets.get(), shared.fanout.len());
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(text))
        .unwrap_or_default()
}

fn not_found() -> Response<Body> {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from("not found\n"))
        .unwrap_or_default()
}

/// Binds `metrics.listen` when it is set and metrics are enabled.
pub async fn bind(config: &Config) -> Result<Option<TcpListener>, String> {
    let metrics = &config.metrics;
    if !metrics.enabled || metrics.listen.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(metrics.listen.as_str())
        .await
        .map(Some)
        .map_err(|e| format!("cannot listen on metrics.listen {}: {e}", metrics.listen))
}

/// Runs `relay` (the relay's serve-and-drain future) with its monitoring:
/// the sampler, and the metrics listener when bound. Both stop when it
/// ends, not at the stop signal, so that `/health` says "draining" for the
/// whole drain.
pub async fn alongside<T>(
    relay: impl Future<Output = T>,
    listener: Option<TcpListener>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) -> T {
    let sampler = tokio::spawn(metrics::sample(
        shared.monitor.clone(),
        shared.store.clone(),
        shutdown.clone(),
    ));
    let server = listener.map(|listener| tokio::spawn(serve(listener, shared, shutdown)));
    let output = relay.await;
    sampler.abort();
    if let Some(server) = server {
        server.abort();
    }
    output
}

/// The metrics listener's accept loop. Its connections are tasks of a
/// `JoinSet`: aborting this future ends them too (Prometheus keeps its
/// connection alive between scrapes).
async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: Shutdown) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = accepted else {
            // EMFILE and friends: wait for descriptors to free up.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let response = answer_on_listener(&request, &shared, &shutdown);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_proxy_headers_is_local() {
        let loopback: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let v6: SocketAddr = "[::1]:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let mapped_remote: SocketAddr = "[::ffff:192.0.2.7]:5000".parse().unwrap();
        let none = HeaderMap::new();
        for peer in [loopback, mapped, v6] {
            assert!(is_local(peer, &none), "{peer}");
        }
        for peer in [remote, mapped_remote] {
            assert!(!is_local(peer, &none), "{peer}");
        }
        for name in PROXY_HEADERS {
            let mut headers = HeaderMap::new();
            headers.insert(name, "203.0.113.1".parse().unwrap());
            assert!(!is_local(loopback, &headers), "{name}");
        }
    }
}
