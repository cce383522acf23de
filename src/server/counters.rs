//! Live counts of what the relay is holding, so that a soak test (or an
//! operator) can prove that nothing leaks: after the load stops, each one
//! returns to its baseline. Served as JSON on `GET /debug/counters`, to
//! loopback clients only.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

/// One count, raised for as long as a [`Held`] lives.
#[derive(Debug, Default, Clone)]
pub struct Gauge(Arc<AtomicUsize>);

/// Lowers its gauge when dropped, on every path out (errors and panics too).
#[derive(Debug)]
pub struct Held(Arc<AtomicUsize>);

impl Gauge {
    /// Counts one more until the returned guard is dropped.
    pub fn hold(&self) -> Held {
        self.0.fetch_add(1, Ordering::Relaxed);
        Held(self.0.clone())
    }

    /// The current count.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A quantity that rises and falls by more than one at a time (bytes).
#[derive(Debug, Default)]
pub struct Amount(AtomicUsize);

impl Amount {
    /// Counts `n` more.
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` fewer; every `sub` matches an earlier `add`.
    pub fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }

    /// The current amount.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The gauges the server keeps.
#[derive(Debug, Default)]
pub struct Counters {
    /// Open WebSocket sessions.
    pub websockets: Gauge,
    /// EVENTs between parse and `OK`.
    pub events_in_flight: Gauge,
    /// REQ queries running in the store.
    pub queries_in_flight: Gauge,
    /// Bytes of frames handed to sockets and not yet flushed to the kernel:
    /// what clients that do not read are holding.
    pub queued_bytes: Amount,
}

impl Counters {
    /// The counters, with the ones owned elsewhere passed in.
    pub fn snapshot(
        &self,
        subscriptions: usize,
        queued_events: usize,
        http_connections: usize,
    ) -> Value {
        let tasks = tokio::runtime::Handle::try_current()
            .map(|handle| handle.metrics().num_alive_tasks())
            .unwrap_or(0);
        json!({
            "websockets": self.websockets.get(),
            "http_connections": http_connections,
            "subscriptions": subscriptions,
            "events_in_flight": self.events_in_flight.get(),
            "queries_in_flight": self.queries_in_flight.get(),
            "queued_events": queued_events,
            "queued_bytes": self.queued_bytes.get(),
            "tasks": tasks,
        })
    }
}
