//! What this node accepted and the other nodes must hear of: filled by the
//! store's commit hook (and the ingester, for ephemeral events), emptied by
//! the publisher task.
//!
//! The commit hook runs on the writer, which must never wait on the
//! network: the queue is bounded and a push never blocks. What does not fit
//! is dropped and counted, and the highest sequence number dropped is kept,
//! so that the next heartbeat still tells the other nodes how far this node
//! committed: they read the dropped events back from the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::nostr::CanonicalEvent;
use crate::store::Committed;

/// Events waiting for the publisher, at most. A burst this large means the
/// link to NATS is slower than the writer; the overflow is recovered by the
/// other nodes from the database.
pub const OUTBOX_CAPACITY: usize = 65_536;

/// One event to publish: committed with its sequence number, or ephemeral.
#[derive(Debug)]
pub struct Outgoing {
    pub seq: Option<u64>,
    pub event: Arc<CanonicalEvent>,
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Outbox {
    queue: mpsc::Sender<Outgoing>,
    dropped: Arc<Dropped>,
}

/// The receiving side, handed to `cluster::start`.
pub struct OutboxReceiver {
    queue: mpsc::Receiver<Outgoing>,
    dropped: Arc<Dropped>,
}

/// What the publisher learns beside the queue itself.
#[derive(Default)]
struct Dropped {
    /// The first sequence number committed by this process (0: none yet),
    /// which every message names (see `message`).
    first_seq: AtomicU64,
    /// Events that did not fit in the queue.
    count: AtomicU64,
    /// The highest sequence number among them (0: none).
    highest_seq: AtomicU64,
}

/// A linked outbox and receiver.
pub fn outbox() -> (Outbox, OutboxReceiver) {
    outbox_with_capacity(OUTBOX_CAPACITY)
}

pub(super) fn outbox_with_capacity(capacity: usize) -> (Outbox, OutboxReceiver) {
    let (queue, receiver) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(Dropped::default());
    (
        Outbox {
            queue,
            dropped: dropped.clone(),
        },
        OutboxReceiver {
            queue: receiver,
            dropped,
        },
    )
}

impl Outbox {
    /// Events just committed, in commit order (the store's commit hook).
    pub fn committed(&self, committed: &[Committed]) {
        if let Some(first) = committed.first() {
            // Commits come in order: only the very first call sets it.
            let _ = self.dropped.first_seq.compare_exchange(
                0,
                first.seq,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        for c in committed {
            self.push(Outgoing {
                seq: Some(c.seq),
                event: c.event.clone(),
            });
        }
    }

    /// An ephemeral event just accepted (never stored, so never recovered
    /// if lost: at most once, like NIP-01's own promise for them).
    pub fn ephemeral(&self, event: &Arc<CanonicalEvent>) {
        self.push(Outgoing {
            seq: None,
            event: event.clone(),
        });
    }

    fn push(&self, outgoing: Outgoing) {
        let seq = outgoing.seq;
        match self.queue.try_send(outgoing) {
            Ok(()) => {}
            // The cluster stopped: there is nobody left to tell.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.count.fetch_add(1, Ordering::Relaxed);
                if let Some(seq) = seq {
                    self.dropped.highest_seq.fetch_max(seq, Ordering::Relaxed);
                }
            }
        }
    }
}

impl OutboxReceiver {
    /// The next event to publish; `None` once every [`Outbox`] is gone.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        self.queue.recv().await
    }

    /// An event already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        self.queue.try_recv().ok()
    }

    /// Events dropped because the queue was full, since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.count.swap(0, Ordering::Relaxed)
    }

    /// The first sequence number this process committed, if any.
    pub fn first_seq(&self) -> Option<u64> {
        Some(self.dropped.first_seq.load(Ordering::Relaxed)).filter(|seq| *seq > 0)
    }

    /// The highest sequence number ever dropped (0: none).
    pub fn highest_dropped_seq(&self) -> u64 {
        self.dropped.highest_seq.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::message::tests::signed_event;

    #[test]
    fn a_full_outbox_drops_counts_and_remembers_the_highest_seq() {
        let (outbox, mut receiver) = outbox_with_capacity(2);
        assert_eq!(receiver.first_seq(), None);
        let event = signed_event();
        let committed = |seq| Committed {
            seq,
            event: event.clone(),
        };
        outbox.committed(&[committed(1), committed(2), committed(3)]);
        outbox.ephemeral(&event);
        outbox.committed(&[committed(4)]);
        assert_eq!(receiver.take_dropped(), 3);
        assert_eq!(receiver.take_dropped(), 0);
        assert_eq!(receiver.highest_dropped_seq(), 4);
        assert_eq!(receiver.first_seq(), Some(1));
        let seqs: Vec<_> = std::iter::from_fn(|| receiver.try_recv())
            .map(|o| o.seq)
            .collect();
        assert_eq!(seqs, vec![Some(1), Some(2)]);
        drop(receiver);
        outbox.ephemeral(&event); // no one listens: ignored
    }
}
