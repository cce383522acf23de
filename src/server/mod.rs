//! The network edge: the listener, HTTP (NIP-11, the home page, the
//! WebSocket upgrade) and one task per WebSocket connection. This is where
//! the protocol, the store and the fan-out are wired together.

mod connection;
pub mod counters;
mod http;
pub mod info;
mod listener;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::access::{self, AccessControl};
use crate::config::Config;
use crate::fanout::Fanout;
use crate::ingest::Ingester;
use crate::management::Management;
use crate::policy::WritePolicy;
use crate::rate_limit::RateLimits;
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::store::{self, QueryLimits, Store, StoreOptions};
use crate::worker_pool::WorkerPool;

/// State every connection shares.
pub struct Shared {
    pub config: Config,
    pub store: Arc<Store>,
    pub fanout: Arc<Fanout>,
    pub ingester: Ingester,
    pub query_limits: QueryLimits,
    /// The access lists in force, and the NIP-11 document they shape
    /// (NIP-86 may rename the relay at run time).
    pub access: Arc<AccessControl>,
    /// The NIP-86 management API's state.
    pub management: Management,
    pub websocket: WebSocketConfig,
    pub counters: counters::Counters,
    /// Connection slots under `max_connections`.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// How fast each client may go.
    pub rate_limits: Arc<RateLimits>,
    /// Reverse proxies whose forwarding headers name the client.
    pub trusted_proxies: Vec<crate::access::Cidr>,
}

/// A relay that is running; drop it or call [`RunningRelay::shutdown`].
pub struct RunningRelay {
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    trigger: ShutdownTrigger,
    task: JoinHandle<()>,
}

/// Why the relay could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl RunningRelay {
    /// Stops accepting, closes every connection, lets the writer finish
    /// what it was given, and waits for all of it.
    pub async fn shutdown(self) {
        self.trigger.trigger();
        let _ = self.task.await;
    }

    /// Waits until the relay stops by itself (it does not, unless shut down).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Opens the store, binds the listener and starts serving.
pub async fn start(config: Config) -> Result<RunningRelay, StartError> {
    let fanout = Arc::new(Fanout::new());
    let options = StoreOptions {
        durability: config.storage.durability,
        max_database_bytes: config.storage.max_database_bytes,
        reader_threads: config.storage.reader_threads,
        max_write_batch: config.storage.max_write_batch,
        query_timeout: Duration::from_millis(config.storage.query_timeout_ms),
    };
    let committed_to = fanout.clone();
    let store = Store::open(
        &config.database,
        &options,
        Box::new(move |committed| {
            for c in committed {
                committed_to.publish(&c.event, Some(c.seq));
            }
        }),
    )
    .map_err(|e| {
        StartError(format!(
            "cannot open database {}: {e}",
            config.database.display()
        ))
    })?;
    // NIP-50: the index holds the kinds relay.toml names (rebuilt if not).
    store
        .configure_search(config.search.indexed_kinds())
        .await
        .map_err(|e| StartError(format!("cannot prepare the search index: {e}")))?;
    let store = Arc::new(store);
    let access = AccessControl::open(&config).map_err(|e| {
        StartError(format!(
            "cannot read the access lists from {}: {e}",
            config.database.display()
        ))
    })?;
    let access = Arc::new(access);
    let addr = config
        .listen_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let listener = bind(addr).map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let checker_connections = (0..config.verify_threads())
        .map(|_| store::open_connection(&config.database, config.storage.durability, true))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            StartError(format!(
                "cannot open database {}: {e}",
                config.database.display()
            ))
        })?;
    let checkers =
        WorkerPool::start("check", checker_connections).map_err(|e| StartError(e.to_string()))?;
    let max_message = config.limits.max_message_length;
    let shared = Arc::new(Shared {
        ingester: Ingester {
            store: store.clone(),
            fanout: fanout.clone(),
            checkers,
            policy: WritePolicy::new(&config.limits),
            access: access.clone(),
            plugin: crate::plugin::WritePlugin::start(&config.plugin),
        },
        query_limits: QueryLimits {
            default_limit: config.limits.default_limit,
            max_limit: config.limits.max_limit,
        },
        management: Management::new(&config),
        access,
        websocket: WebSocketConfig::default()
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message))
            // Initial read buffer: tungstenite reserves a frame's full length
            // once it has read the header, so this only sizes the idle buffer
            // (and the largest single read).
            .read_buffer_size(1024)
            .write_buffer_size(8192)
            .max_write_buffer_size(max_message.saturating_mul(4).max(1 << 20)),
        counters: counters::Counters::default(),
        slots: Arc::new(tokio::sync::Semaphore::new(config.network.max_connections)),
        rate_limits: Arc::new(RateLimits::new(&config.rate_limit)),
        trusted_proxies: config
            .network
            .trusted_proxies
            .iter()
            .filter_map(|entry| crate::access::Cidr::parse(entry))
            .collect(),
        config,
        store,
        fanout,
    });
    let (trigger, shutdown) = shutdown::channel();
    tracing::info!(%local_addr, database = %shared.config.database.display(), "relay listening");
    if shared.config.auth.enabled && shared.config.relay_url.is_empty() {
        tracing::warn!(
            "relay_url is not set: NIP-42 AUTH and NIP-62 check relay URLs against each \
             request's Host header, which is wrong if a proxy rewrites it"
        );
    }
    let task = tokio::spawn(run(listener, shared, shutdown));
    Ok(RunningRelay {
        local_addr,
        trigger,
        task,
    })
}

/// Pending connections the kernel queues for `accept`: tokio's default of
/// 128 overflows when a few hundred clients reconnect at once.
const LISTEN_BACKLOG: u32 = 1024;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until shutdown, then drains in order: connections, writer.
async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: Shutdown) {
    // Every connection and in-flight EVENT holds a clone of `done`; when the
    // last one is dropped, `all_done` yields None.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let sweeper = tokio::spawn(sweep_expired(shared.clone(), shutdown.clone()));
    let watcher = tokio::spawn(access::watch(shared.access.clone(), shutdown.clone()));
    let forgetter = tokio::spawn(forget_idle_clients(shared.clone(), shutdown.clone()));
    listener::accept_loop(listener, shared.clone(), shutdown, done).await;
    if tokio::time::timeout(Duration::from_secs(10), all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 10 s after shutdown; stopping anyway");
    }
    sweeper.abort();
    watcher.abort();
    forgetter.abort();
    let store = shared.store.clone();
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    tracing::info!("relay stopped");
}

/// Lets the rate limiters forget clients that have gone quiet, so that their
/// memory follows the active clients.
async fn forget_idle_clients(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => shared.rate_limits.forget_idle(),
        }
    }
}

/// NIP-40: deletes expired events periodically, in small batches so that
/// writers are never blocked for long.
async fn sweep_expired(shared: Arc<Shared>, mut shutdown: Shutdown) {
    const BATCH: usize = 500;
    let period = Duration::from_secs(shared.config.storage.expiration_sweep_seconds);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = ticker.tick() => {}
        }
        let mut removed = 0;
        loop {
            match shared.store.purge_expired(BATCH).await {
                Ok(n) => {
                    removed += n;
                    if n < BATCH {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "expiration sweep failed");
                    break;
                }
            }
        }
        if removed > 0 {
            tracing::debug!(removed, "purged expired events");
        }
    }
}
