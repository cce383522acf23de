//! The network edge: the listener, HTTP (NIP-11, the web page, the
//! WebSocket upgrade) and one task per WebSocket connection. This is where
//! the protocol, the store and the fan-out are wired together.

mod connection;
pub mod counters;
mod http;
pub mod info;
mod listener;
mod monitoring;
mod page;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::access::{self, AccessControl};
use crate::config::{Backend, Config, ConfigError};
use crate::fanout::Fanout;
use crate::ingest::Ingester;
use crate::management::Management;
use crate::policy::WritePolicy;
use crate::rate_limit::RateLimits;
use crate::reload::{Live, ReloadReport};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::store::{self, CommitHook, Store};
use crate::worker_pool::WorkerPool;

/// State every connection shares.
pub struct Shared {
    /// The configuration the relay started with. What a reload (SIGHUP)
    /// changes is in [`Shared::live`]: read a reloadable setting there.
    pub config: Config,
    /// The settings in force since the last reload, swapped whole; each
    /// connection takes the new snapshot from its next message.
    pub live: ArcSwap<Live>,
    pub store: Arc<Store>,
    pub fanout: Arc<Fanout>,
    pub ingester: Ingester,
    /// The access lists in force, and the NIP-11 document they shape
    /// (NIP-86 may rename the relay at run time).
    pub access: Arc<AccessControl>,
    /// The NIP-86 management API's state.
    pub management: Management,
    pub counters: counters::Counters,
    /// Connection slots under `max_connections`.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// How fast each client may go.
    pub rate_limits: Arc<RateLimits>,
    /// Reverse proxies whose forwarding headers name the client.
    pub trusted_proxies: Vec<crate::access::Cidr>,
    /// The TLS certificate in force when `tls_cert`/`tls_key` are set;
    /// `None`: plain `ws://`.
    pub tls: Option<Arc<tls::Tls>>,
    /// Live figures for `/health` and `/stats.json`.
    pub monitor: Arc<crate::metrics::Monitor>,
}

/// A relay that is running; drop it or call [`RunningRelay::shutdown`].
pub struct RunningRelay {
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
    /// The metrics listener's address, when `metrics.listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// What a reload changes.
    shared: Arc<Shared>,
    trigger: ShutdownTrigger,
    task: JoinHandle<Stopped>,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every connection got its last answers and closed within
    /// `network.shutdown_timeout_seconds`.
    Clean,
    /// Connections still open at the deadline were dropped (clients that
    /// did not read, or did not answer the close).
    Deadline,
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
    /// Drains and stops: closes the listener at once (with `reuse_port`,
    /// another relay on the port takes every new connection from then on),
    /// answers new HTTP requests with 503, ends every subscription with
    /// `CLOSED "error: shutting down"`, lets the EVENTs already received
    /// get their `OK`, closes each WebSocket with 1001, lets the writer
    /// finish its last commit, and waits for all of it, at most
    /// `network.shutdown_timeout_seconds` for the connections.
    pub async fn shutdown(self) -> Stopped {
        self.trigger.trigger();
        self.task.await.unwrap_or(Stopped::Deadline)
    }

    /// Puts a re-read relay.toml in force (what SIGHUP does): the live
    /// keys (`reload::LIVE_KEYS`) take their new values, the others are
    /// reported as needing a restart and keep theirs, and the TLS
    /// certificate files are read again (`server::tls`). An invalid
    /// configuration changes nothing and is returned as the error, naming
    /// the key.
    pub async fn reload(&self, new: Config) -> Result<ReloadReport, ConfigError> {
        crate::reload::apply(&self.shared, new).await
    }

    /// Re-reads the TLS certificate and key files in force (certbot
    /// renewals); new connections get the new pair, open ones keep theirs.
    /// A pair that does not load is logged and the old one stays. Does
    /// nothing on a plain `ws://` relay.
    pub fn reload_tls(&self) -> Result<(), tls::TlsError> {
        match &self.shared.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    /// Waits until the relay stops by itself (it does not, unless shut down).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Opens the store, binds the listener and starts serving.
pub async fn start(config: Config) -> Result<RunningRelay, StartError> {
    // First: a bad certificate must stop the start before the database is
    // opened or migrated.
    let tls = tls::Tls::from_config(&config)
        .map_err(|e| StartError(e.to_string()))?
        .map(Arc::new);
    let fanout = Arc::new(Fanout::new());
    let (outbox, pending) = match config.cluster.enabled() {
        true => {
            let (outbox, pending) = crate::cluster::outbox();
            (Some(outbox), Some(pending))
        }
        false => (None, None),
    };
    let committed_to = fanout.clone();
    let cluster_outbox = outbox.clone();
    // SQLite commits in one order that a query's snapshot can be compared
    // with; PostgreSQL (several nodes) is deduplicated by event id.
    let ordered = config.storage.backend == Backend::Sqlite;
    let on_commit: CommitHook = Box::new(move |committed| {
        for c in committed {
            committed_to.publish(&c.event, ordered.then_some(c.seq));
        }
        if let Some(outbox) = &cluster_outbox {
            outbox.committed(committed);
        }
    });
    let store = Store::open_configured(&config, on_commit)
        .await
        .map_err(|e| StartError(format!("cannot open {}: {e}", config.database_label())))?;
    // NIP-50: the index holds the kinds relay.toml names (rebuilt if not).
    store
        .configure_search(config.search.indexed_kinds())
        .await
        .map_err(|e| StartError(format!("cannot prepare the search index: {e}")))?;
    let store = Arc::new(store);
    let access = AccessControl::open_with(&config, store.clone())
        .await
        .map_err(|e| {
            StartError(format!(
                "cannot read the access lists from the {}: {e}",
                config.database_label()
            ))
        })?;
    let access = Arc::new(access);
    let addr = config
        .listen_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let listener = bind(addr, config.network.reuse_port)
        .map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let metrics_listener = monitoring::bind(&config).await.map_err(StartError)?;
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .map_err(|e| StartError(e.to_string()))?;
    let checker_connections = (0..config.verify_threads())
        .map(|_| match config.storage.backend {
            Backend::Sqlite => {
                store::open_connection(&config.database, config.storage.durability, true).map(Some)
            }
            Backend::Postgres => Ok(None),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError(format!("cannot open {}: {e}", config.database_label())))?;
    let checkers =
        WorkerPool::start("check", checker_connections).map_err(|e| StartError(e.to_string()))?;
    let shared = Arc::new(Shared {
        ingester: Ingester {
            store: store.clone(),
            fanout: fanout.clone(),
            checkers,
            policy: WritePolicy::new(&config.limits),
            access: access.clone(),
            plugin: crate::plugin::WritePlugin::start(&config.plugin),
            cluster: outbox,
        },
        live: ArcSwap::from_pointee(Live::new(config.clone())),
        management: Management::new(&config),
        access,
        counters: counters::Counters::default(),
        slots: Arc::new(tokio::sync::Semaphore::new(config.network.max_connections)),
        rate_limits: Arc::new(RateLimits::new(&config.rate_limit)),
        trusted_proxies: config
            .network
            .trusted_proxies
            .iter()
            .filter_map(|entry| crate::access::Cidr::parse(entry))
            .collect(),
        tls,
        monitor: Arc::new(crate::metrics::Monitor::new(config.database.clone())),
        config,
        store,
        fanout,
    });
    let (trigger, shutdown) = shutdown::channel();
    let cluster = match pending {
        Some(pending) => Some(
            crate::cluster::start(
                &shared.config,
                shared.config.node_name(),
                pending,
                shared.store.clone(),
                shared.fanout.clone(),
                shutdown.clone(),
            )
            .await
            .map_err(|e| StartError(format!("cannot join the cluster: {e}")))?,
        ),
        None => None,
    };
    log_started(&shared.config, local_addr);
    if shared.config.auth.enabled && shared.config.relay_url.is_empty() {
        tracing::warn!(
            "relay_url is not set: NIP-42 AUTH and NIP-62 check relay URLs against each \
             request's Host header, which is wrong if a proxy rewrites it"
        );
    }
    let relay = run(listener, shared.clone(), shutdown.clone(), cluster);
    let task = tokio::spawn(monitoring::alongside(
        relay,
        metrics_listener,
        shared.clone(),
        shutdown,
    ));
    Ok(RunningRelay {
        local_addr,
        metrics_addr,
        shared,
        trigger,
        task,
    })
}

/// Pending connections the kernel queues for `accept`: tokio's default of
/// 128 overflows when a few hundred clients reconnect at once.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the listening socket; with `reuse_port`, other sockets (a new
/// relay during an upgrade) may listen on the same address, and the kernel
/// spreads new connections among them.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until shutdown, then drains in order: the listener (closed at
/// once), connections (up to `network.shutdown_timeout_seconds`), writer,
/// the cluster's publisher.
async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    cluster: Option<crate::cluster::ClusterHandle>,
) -> Stopped {
    // Every connection and in-flight EVENT holds a clone of `done`; when the
    // last one is dropped, `all_done` yields None.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let sweeper = tokio::spawn(sweep_expired(shared.clone(), shutdown.clone()));
    let watcher = tokio::spawn(access::watch(shared.access.clone(), shutdown.clone()));
    let forgetter = tokio::spawn(forget_idle_clients(shared.clone(), shutdown.clone()));
    let retention = crate::retention::spawn(shared.store.clone(), &shared.config, shutdown.clone());
    listener::accept_loop(listener, shared.clone(), shutdown, done).await;
    let seconds = shared.live.load().config.network.shutdown_timeout_seconds;
    let websockets = shared.counters.websockets.get();
    tracing::info!(
        websockets,
        "draining: the listener is closed; waiting up to {seconds} s for open connections"
    );
    let stopped = match tokio::time::timeout(Duration::from_secs(seconds), all_done.recv()).await {
        Ok(_) => Stopped::Clean,
        Err(_) => {
            tracing::warn!(
                websockets = shared.counters.websockets.get(),
                "connections still open {seconds} s after the stop; dropping them"
            );
            Stopped::Deadline
        }
    };
    sweeper.abort();
    watcher.abort();
    forgetter.abort();
    if let Some(retention) = retention {
        // It stops by itself at shutdown, between two batches.
        retention.abort();
    }
    shared.store.shutdown().await;
    // After the last commit: its events and a last heartbeat reach the
    // other nodes before the NATS connection closes.
    if let Some(cluster) = cluster {
        cluster.stop().await;
    }
    tracing::info!("relay stopped");
    stopped
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

/// One line at start with what an operator checks first when the relay does
/// not behave as expected: where it listens and stores, who may write and
/// read, and the limits that refuse clients. `check-config` prints it all.
fn log_started(config: &Config, local_addr: SocketAddr) {
    let or_unset = |value: &str| {
        if value.is_empty() {
            "(unset)".to_owned()
        } else {
            value.to_owned()
        }
    };
    // RUST_LOG, when set at start, wins over `log_level`.
    let log_filter = match std::env::var("RUST_LOG") {
        Ok(directives) if crate::logging::filter_from_env() => directives,
        _ => config.log_level.clone(),
    };
    tracing::info!(
        version = crate::VERSION,
        listen = %local_addr,
        tls = !config.tls_cert.as_os_str().is_empty(),
        database = %config.database_label(),
        cluster = %or_unset(&config.cluster.nats_url),
        node = %config.node_name(),
        relay_url = %or_unset(&config.relay_url),
        auth = config.auth.enabled,
        auth_required_for_write = config.auth.required_for_write,
        auth_required_for_read = config.auth.required_for_read,
        // relay.toml's seed of the allow list; NIP-86 may add to it.
        allowed_pubkeys = config.access.allowed_pubkeys.len(),
        max_connections = config.network.max_connections,
        max_message_length = config.limits.max_message_length,
        rate_limit = config.rate_limit.enabled,
        max_database_bytes = config.storage.max_database_bytes,
        durability = ?config.storage.durability,
        plugin = %or_unset(&config.plugin.command),
        retention_rules = config.retention.rules.len(),
        retention_max_database_mb = config.retention.max_database_mb,
        metrics = config.metrics.enabled,
        metrics_listen = %or_unset(&config.metrics.listen),
        log_filter = %log_filter,
        "relay listening"
    );
}
