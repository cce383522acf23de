//! The task that tells the other nodes what this node accepted: each event
//! from the outbox, and a heartbeat every second with the last sequence
//! number committed. One task for both, so a heartbeat is always queued
//! after the events it counts.
//!
//! While NATS is down nothing is queued in the client (it would only fill
//! up and block): events are skipped and counted, and the first heartbeat
//! after the reconnection tells the other nodes how far this node got, so
//! they read the skipped events back from the database.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use bytes::Bytes;
use tokio::sync::watch;

use super::message::{Encoder, Origin};
use super::outbox::{OutboxReceiver, Outgoing};
use super::{ClusterMetrics, HEARTBEAT_PERIOD, Subjects};

/// Longest a publish may wait for room in the client's queue before the
/// message is given up (the link is too slow; the heartbeat covers it).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) struct Publisher {
    client: async_nats::Client,
    subjects: Subjects,
    encoder: Encoder,
    metrics: Arc<ClusterMetrics>,
    /// The highest sequence number taken from the outbox.
    last_seq: u64,
    /// Whether publishing failed since it last worked (one warning per
    /// outage, not one per event).
    failing: bool,
}

impl Publisher {
    pub(super) fn new(
        client: async_nats::Client,
        subjects: Subjects,
        origin: &Origin,
        metrics: Arc<ClusterMetrics>,
    ) -> Publisher {
        Publisher {
            client,
            subjects,
            encoder: Encoder::new(origin),
            metrics,
            last_seq: 0,
            failing: false,
        }
    }

    /// Publishes until `stop` (or until every outbox is gone), then what is
    /// left in the outbox and a last heartbeat.
    pub(super) async fn run(mut self, mut outbox: OutboxReceiver, mut stop: watch::Receiver<bool>) {
        // The first one a period from now, once the connection had a chance.
        let first = tokio::time::Instant::now() + HEARTBEAT_PERIOD;
        let mut heartbeat = tokio::time::interval_at(first, HEARTBEAT_PERIOD);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // A dropped handle (Err) detaches: only `stop` stops.
                true = stop_requested(&mut stop) => break,
                outgoing = outbox.recv() => match outgoing {
                    Some(outgoing) => self.publish_event(outgoing, outbox.first_seq()).await,
                    None => break,
                },
                _ = heartbeat.tick() => self.publish_heartbeat(&outbox).await,
            }
        }
        while let Some(outgoing) = outbox.try_recv() {
            self.publish_event(outgoing, outbox.first_seq()).await;
        }
        self.publish_heartbeat(&outbox).await;
    }

    async fn publish_event(&mut self, outgoing: Outgoing, first: Option<u64>) {
        if let Some(seq) = outgoing.seq {
            self.last_seq = self.last_seq.max(seq);
        }
        let payload = self
            .encoder
            .event(first, outgoing.seq, &outgoing.event.json);
        let subject = self.subjects.events.clone();
        if !self.publish(subject, payload).await {
            self.metrics.unpublished.increment(1);
        }
    }

    async fn publish_heartbeat(&mut self, outbox: &OutboxReceiver) {
        let dropped = outbox.take_dropped();
        if dropped > 0 {
            self.metrics.unpublished.increment(dropped);
            tracing::debug!(dropped, "the cluster outbox was full");
        }
        // Events dropped from a full outbox count too: the other nodes
        // find them in the database.
        let seq = self.last_seq.max(outbox.highest_dropped_seq());
        let payload = self
            .encoder
            .heartbeat(outbox.first_seq(), (seq > 0).then_some(seq));
        let subject = self.subjects.heartbeat.clone();
        self.publish(subject, payload).await;
    }

    /// Hands one message to the client; false if it could not.
    async fn publish(&mut self, subject: String, payload: String) -> bool {
        let result = if self.client.connection_state() == State::Connected {
            let publish = self.client.publish(subject, Bytes::from(payload));
            match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        } else {
            Err("not connected".to_owned())
        };
        match result {
            Ok(()) => {
                self.metrics.messages_out.increment(1);
                if self.failing {
                    self.failing = false;
                    tracing::info!("publishing to NATS again");
                }
                true
            }
            Err(error) => {
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(%error, "cannot publish to NATS; the other nodes will read this node's events from the database");
                }
                false
            }
        }
    }
}

/// True once [`super::ClusterHandle::stop`] was called; false if the handle
/// was dropped instead (the publisher then runs until the runtime stops).
async fn stop_requested(stop: &mut watch::Receiver<bool>) -> bool {
    stop.wait_for(|stopped| *stopped).await.is_ok()
}
