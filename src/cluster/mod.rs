//! Several relay nodes behaving as one: live fan-out across nodes over NATS.
//!
//! The nodes share one PostgreSQL database, so a REQ on any node sees every
//! stored event; what NATS adds is the live part. Each node publishes what
//! it accepts (every commit, with the node's commit sequence number, and
//! every ephemeral event) on `<prefix>.events`, and a heartbeat with its
//! last sequence number every second on `<prefix>.heartbeat`. Each node
//! delivers what the others publish to its own subscriptions, once per
//! event id.
//!
//! Core NATS delivers at most once, so a message can be lost. The sequence
//! numbers reveal it (`gaps`), and the missed events are read back from the
//! database by their origin (`Store::events_from_origin`); if that fails, or
//! too much was missed, every live subscription on this node is ended with
//! `CLOSED` so that its client subscribes again: a missed event is never
//! silent. A node that loses NATS keeps serving its own clients; async-nats
//! reconnects with backoff by itself.
//!
//! - `message`: the wire format; `outbox`: commits waiting to be published;
//!   `publisher`: the task that publishes them and the heartbeats;
//!   `receiver`: the task that delivers the other nodes' events;
//!   `gaps`: per node, how far its commits were heard; `recent`: the ids
//!   delivered lately.

mod gaps;
mod message;
mod outbox;
mod publisher;
mod receiver;
mod recent;

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::fanout::Fanout;
use crate::shutdown::Shutdown;
use crate::store::Store;

pub use outbox::{Outbox, OutboxReceiver, outbox};

/// How often each node says how far it committed.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);

/// Most missed events recovered from the database in one go; a larger gap
/// ends every live subscription instead.
pub const MAX_BACKFILL: usize = 10_000;

/// The `CLOSED` reason of a subscription that may have missed live events.
pub const INTERRUPTED: &str =
    "error: this relay may have missed live events from another node; subscribe again";

/// A running cluster link. [`ClusterHandle::stop`] it after the store
/// closed; dropping it stops it too, without waiting.
pub struct ClusterHandle {
    client: async_nats::Client,
    stop: watch::Sender<bool>,
    publisher: JoinHandle<()>,
    receiver: JoinHandle<()>,
}

impl ClusterHandle {
    /// Publishes what the store committed until now (call it after
    /// `Store::close`, so that the last commits are not left to the other
    /// nodes' silence check), a last heartbeat, then disconnects.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.publisher).await;
        self.receiver.abort();
        let _ = (&mut self.receiver).await;
        // Whatever the publisher queued reaches the server before we leave.
        if tokio::time::timeout(Duration::from_secs(2), self.client.drain())
            .await
            .is_err()
        {
            tracing::debug!("the NATS connection did not drain within 2 s");
        }
    }
}

impl Drop for ClusterHandle {
    /// The publisher publishes what is left and a last heartbeat on its
    /// own; the receiver stops delivering at once.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.receiver.abort();
    }
}

/// Connects this node to the cluster's NATS and starts publishing what
/// `pending` receives, and delivering the other nodes' events to `fanout`.
/// Returns at once even while NATS is down (it connects in the background
/// and keeps trying); errors only on a `cluster.nats_url` that does not
/// parse. Before it returns it reads every other node's last commit number
/// from the database (at most 10 s; on failure a warning), so that what they
/// commit from now on reaches this node's subscriptions even if their
/// messages never do. The receiver stops at `shutdown`; the publisher at
/// [`ClusterHandle::stop`].
pub async fn start(
    config: &Config,
    node: String,
    pending: OutboxReceiver,
    store: Arc<Store>,
    fanout: Arc<Fanout>,
    shutdown: Shutdown,
) -> Result<ClusterHandle, String> {
    let servers: Vec<String> = config
        .cluster
        .nats_url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if servers.is_empty() {
        return Err("cluster.nats_url: no NATS server given".into());
    }
    for server in &servers {
        server
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| format!("cluster.nats_url: {server:?} is not a NATS URL: {e}"))?;
    }
    let metrics = Arc::new(ClusterMetrics::register());
    let link = metrics.nats_connected.clone();
    let origin = message::Origin {
        node,
        boot: rand::random(),
    };
    let client = async_nats::ConnectOptions::new()
        .name(format!("nostr-relayd {}", origin.node))
        // Start while NATS is down: the node serves its own clients anyway.
        .retry_on_initial_connect()
        // The server does not send our own messages back to us.
        .no_echo()
        .event_callback(move |event| {
            let link = link.clone();
            async move { on_nats_event(event, &link) }
        })
        .connect(servers.clone())
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", servers.join(",")))?;
    let prefix = &config.cluster.subject_prefix;
    let subjects = Subjects {
        events: format!("{prefix}.events"),
        heartbeat: format!("{prefix}.heartbeat"),
    };
    // One subscription for both: NATS keeps one sender's messages in order
    // for one subscription, so a heartbeat never overtakes the event it
    // counts (which would look like a gap).
    let incoming = client
        .subscribe(format!("{prefix}.*"))
        .await
        .map_err(|e| format!("cannot subscribe on NATS: {e}"))?;
    let (stop, stopped) = watch::channel(false);
    tracing::info!(
        node = %origin.node,
        boot = origin.boot,
        nats = %servers.join(","),
        subjects = %format!("{prefix}.events, {prefix}.heartbeat"),
        "cluster link started"
    );
    let publisher = tokio::spawn(
        publisher::Publisher::new(client.clone(), subjects.clone(), &origin, metrics.clone())
            .run(pending, stopped),
    );
    let mut receiver = receiver::Receiver::new(origin, subjects, store, fanout, metrics);
    // After subscribing: what the others commit past the numbers read is
    // either heard or revealed as a gap.
    receiver.seed().await;
    let receiver = tokio::spawn(receiver.run(incoming, shutdown));
    Ok(ClusterHandle {
        client,
        stop,
        publisher,
        receiver,
    })
}

/// The two subjects of a cluster.
#[derive(Debug, Clone)]
struct Subjects {
    events: String,
    heartbeat: String,
}

/// Logs the link's changes (once per outage, not per event) and keeps the
/// `nats_connected` gauge true.
fn on_nats_event(event: async_nats::Event, link: &Gauge) {
    match event {
        async_nats::Event::Connected => {
            link.set(1.0);
            tracing::info!("connected to NATS");
        }
        async_nats::Event::Disconnected => {
            link.set(0.0);
            tracing::warn!(
                "lost the connection to NATS; serving this node's clients alone while reconnecting"
            );
        }
        async_nats::Event::SlowConsumer(_) => {
            // The other nodes' messages are dropped: gaps, recovered from
            // the database.
            tracing::debug!("NATS dropped messages for this slow consumer");
        }
        other => tracing::debug!(event = %other, "NATS"),
    }
}

const MESSAGES: &str = "nostr_relayd_cluster_messages_total";
const BAD_MESSAGES: &str = "nostr_relayd_cluster_bad_messages_total";
const UNPUBLISHED: &str = "nostr_relayd_cluster_unpublished_total";
const GAPS: &str = "nostr_relayd_cluster_gaps_total";
const BACKFILLED: &str = "nostr_relayd_cluster_backfilled_events_total";
const INTERRUPTIONS: &str = "nostr_relayd_cluster_interruptions_total";
const NATS_CONNECTED: &str = "nostr_relayd_cluster_nats_connected";

/// The cluster's Prometheus series, registered once per start (handles:
/// recording is one atomic add).
struct ClusterMetrics {
    messages_out: Counter,
    messages_in: Counter,
    bad_messages: Counter,
    unpublished: Counter,
    gaps: Counter,
    backfilled: Counter,
    interruptions: Counter,
    nats_connected: Gauge,
}

impl ClusterMetrics {
    fn register() -> ClusterMetrics {
        // The process's recorder is installed on first use: before ours.
        crate::metrics::global();
        metrics::describe_counter!(
            MESSAGES,
            "Cluster messages (events and heartbeats) published to NATS (out) and received from other nodes (in)."
        );
        metrics::describe_counter!(
            BAD_MESSAGES,
            "Messages from NATS dropped because they did not parse, or their event id did not match."
        );
        metrics::describe_counter!(
            UNPUBLISHED,
            "Events this node accepted but did not publish (NATS down or slow); the other nodes read them back from the database."
        );
        metrics::describe_counter!(
            GAPS,
            "Ranges of another node's commits found missing (lost messages), recovered from the database."
        );
        metrics::describe_counter!(
            BACKFILLED,
            "Events read back from the database after a gap or a silence, before delivery."
        );
        metrics::describe_counter!(
            INTERRUPTIONS,
            "Times every live subscription was ended with CLOSED because missed events could not be recovered."
        );
        metrics::describe_gauge!(NATS_CONNECTED, "1 while this node is connected to NATS.");
        let nats_connected = metrics::gauge!(NATS_CONNECTED);
        nats_connected.set(0.0);
        ClusterMetrics {
            messages_out: metrics::counter!(MESSAGES, "direction" => "out"),
            messages_in: metrics::counter!(MESSAGES, "direction" => "in"),
            bad_messages: metrics::counter!(BAD_MESSAGES),
            unpublished: metrics::counter!(UNPUBLISHED),
            gaps: metrics::counter!(GAPS),
            backfilled: metrics::counter!(BACKFILLED),
            interruptions: metrics::counter!(INTERRUPTIONS),
            nats_connected,
        }
    }
}
