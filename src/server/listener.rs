//! Accepting TCP connections: the global connection cap, backing off
//! (never spinning) when `accept` fails, for example on EMFILE, and
//! closing the listener at shutdown without resetting the connections the
//! kernel had already completed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::Shared;
use super::http;
use super::tls;
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
/// At shutdown the listener is closed at once (with `reuse_port`, another
/// relay on the port then gets every new connection); the connections
/// already waiting in its queue are taken first and answered 503, since
/// closing a listener resets them.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
    done: mpsc::Sender<()>,
) {
    let mut acceptor = Acceptor {
        slots: shared.slots.clone(),
        refusals: RefusalLog::default(),
        shared,
        shutdown: shutdown.clone(),
        done,
    };
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.recv() => None,
            accepted = listener.accept() => Some(accepted),
        };
        let Some(accepted) = accepted else { break };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                acceptor.admit(stream, peer);
            }
            Err(error) => {
                // EMFILE/ENFILE/ENOMEM and friends: wait for descriptors to free up.
                tracing::warn!(%error, ?backoff, "accept failed; backing off");
                let stopped = tokio::select! {
                    _ = shutdown.recv() => true,
                    _ = tokio::time::sleep(backoff) => false,
                };
                if stopped {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    for (stream, peer) in close(listener) {
        acceptor.admit(stream, peer);
    }
}

/// How long, at shutdown, a connection that has not sent a request yet may
/// take to send one (answered 503) before it is closed. A new connection's
/// request is usually on its way: an answer beats a closed socket, which a
/// client cannot tell from a crash. Idle keep-alive connections that have
/// had their answers are closed at once.
const FIRST_REQUEST_LINGER: Duration = Duration::from_secs(1);

/// Most queued connections taken at close (the listen backlog's size).
const MAX_BACKLOG_TAKEN: usize = super::LISTEN_BACKLOG as usize;

/// Closes the listener, first taking the connections the kernel completed
/// that were not accepted yet: closing would reset them.
fn close(listener: TcpListener) -> Vec<(TcpStream, SocketAddr)> {
    // Accepted directly, not through the reactor: it may not have seen
    // the newest ones yet. The socket is non-blocking: WouldBlock ends it.
    let Ok(listener) = listener.into_std() else {
        return Vec::new();
    };
    let mut taken = Vec::new();
    while taken.len() < MAX_BACKLOG_TAKEN {
        let Ok((stream, peer)) = listener.accept() else {
            break;
        };
        if stream.set_nonblocking(true).is_ok()
            && let Ok(stream) = TcpStream::from_std(stream)
        {
            taken.push((stream, peer));
        }
    }
    taken
}

/// What each accepted connection is given.
struct Acceptor {
    shared: Arc<Shared>,
    slots: Arc<tokio::sync::Semaphore>,
    refusals: RefusalLog,
    shutdown: Shutdown,
    done: mpsc::Sender<()>,
}

impl Acceptor {
    /// Serves one accepted connection on a task of its own. At shutdown,
    /// its HTTP side stops taking requests: at once if it has had one,
    /// after [`FIRST_REQUEST_LINGER`] if not (an upgraded WebSocket has its
    /// own drain).
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        let shared = &self.shared;
        // A blocked address (access lists) is closed at once, before any
        // HTTP: it costs no slot nor task, and learns nothing. Its EVENTs on
        // connections opened before the block are refused by `ingest`.
        if shared.access.current().is_ip_blocked(peer.ip()) {
            tracing::debug!(%peer, "closed a connection from a blocked address");
            return;
        }
        let _ = stream.set_nodelay(true);
        let slot = self.slots.clone().try_acquire_owned().ok().map(Arc::new);
        if slot.is_none() {
            self.refusals.refused(shared.config.network.max_connections);
        }
        let shared = shared.clone();
        let shutdown = self.shutdown.clone();
        let mut stopping = shutdown.clone();
        let done = self.done.clone();
        tokio::spawn(async move {
            // TLS (tls_cert/tls_key): the handshake runs here, on the
            // connection's task and in its slot, never in the accept loop.
            let Some(stream) =
                tls::Stream::open(shared.tls.as_deref(), stream, peer, &mut stopping).await
            else {
                return;
            };
            let fresh = Arc::new(AtomicBool::new(true));
            let answering = fresh.clone();
            let service = service_fn(move |request| {
                answering.store(false, Ordering::Relaxed);
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
            let stopped = async {
                stopping.recv().await;
                if fresh.load(Ordering::Relaxed) {
                    tokio::time::sleep(FIRST_REQUEST_LINGER).await;
                }
            };
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stopped => {
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
