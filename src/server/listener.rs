//! Accepting TCP connections: the global connection cap, and backing off
//! (never spinning) when `accept` fails, for example on EMFILE.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::Shared;
use super::http;
use crate::shutdown::Shutdown;

/// How long a client may take to send its HTTP request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a flood of refused connections is summed up in the log.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Logs connections refused at `max_connections` once per period with a
/// count, never once per connection: a flood must not flood the log too.
#[derive(Default)]
struct RefusalLog {
    last_logged: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn refused(&mut self, max_connections: usize) {
        self.unlogged += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_PERIOD)
        {
            tracing::warn!(
                max_connections,
                refused = self.unlogged,
                "max_connections reached; answering 503 (logged at most once a minute)"
            );
            self.last_logged = Some(now);
            self.unlogged = 0;
        }
    }
}

/// Accepts until shutdown. Each connection gets a task holding `done`.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
    done: mpsc::Sender<()>,
) {
    let slots = shared.slots.clone();
    let mut backoff = Duration::from_millis(10);
    let mut refusals = RefusalLog::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.recv() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(error) => {
                // EMFILE/ENFILE/ENOMEM and friends: wait for descriptors to free up.
                tracing::warn!(%error, ?backoff, "accept failed; backing off");
                tokio::select! {
                    _ = shutdown.recv() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // A blocked address (access lists) is closed at once, before any
        // HTTP: it costs no slot nor task, and learns nothing. Its EVENTs on
        // connections opened before the block are refused by `ingest`.
        if shared.access.current().is_ip_blocked(peer.ip()) {
            tracing::debug!(%peer, "closed a connection from a blocked address");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let slot = slots.clone().try_acquire_owned().ok().map(Arc::new);
        if slot.is_none() {
            refusals.refused(shared.config.network.max_connections);
        }
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let mut stopping = shutdown.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                http::handle(
                    request,
                    shared.clone(),
                    peer,
                    slot.clone(),
                    shutdown.clone(),
                    done.clone(),
                )
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            // An idle keep-alive HTTP client must not hold up shutdown; an
            // upgraded WebSocket has left this future already.
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stopping.recv() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "http connection ended with an error");
            }
        });
    }
}
