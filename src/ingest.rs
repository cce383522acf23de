//! The life of an EVENT, from parsed message to `OK`.
//!
//! Checks run cheapest first, as DESIGN.md orders them: the id hash (so
//! that no answer, not even "duplicate", is given for an event whose id is a
//! lie), the duplicate/tombstone look-up, the cheap policy, the Schnorr
//! signature on the verifier threads, and last the writer, whose commit is
//! what `OK true` promises.

use std::sync::Arc;

use crate::fanout::Fanout;
use crate::nostr::{CanonicalEvent, Event, KindClass};
use crate::policy::WritePolicy;
use crate::store::{Freshness, Store, StoreError, WriteOutcome, unix_now};
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

/// Everything an EVENT needs on its way to the store.
pub struct Ingester {
    pub store: Arc<Store>,
    pub fanout: Arc<Fanout>,
    pub verifier: WorkerPool<()>,
    pub policy: WritePolicy,
}

const DUPLICATE: &str = "duplicate: already have this event";
const DELETED: &str = "blocked: this event was deleted by its author (NIP-09)";

impl Ingester {
    /// Takes one event through every check and, if it passes, commits it
    /// (or, for an ephemeral kind, hands it to live subscribers).
    pub async fn ingest(&self, event: Event) -> Verdict {
        if let Err(error) = event.verify_id() {
            return Verdict::refuse(format!("invalid: {error}"));
        }
        let ephemeral = event.class() == KindClass::Ephemeral;
        let event = Arc::new(CanonicalEvent::new(event));
        if !ephemeral {
            match self.store.freshness(event.clone()).await {
                Ok(Freshness::New) => {}
                Ok(Freshness::Duplicate) => return Verdict::accept(DUPLICATE),
                Ok(Freshness::Deleted) => return Verdict::refuse(DELETED),
                Err(error) => return store_failure(error),
            }
        }
        if let Err(reason) = self.policy.check(&event.event, unix_now()) {
            return Verdict::refuse(reason);
        }
        let to_verify = event.clone();
        match self
            .verifier
            .run(move |_| to_verify.event.verify_signature())
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Verdict::refuse(format!("invalid: {error}")),
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

fn store_failure(error: StoreError) -> Verdict {
    Verdict::refuse(format!("error: {error}"))
}
