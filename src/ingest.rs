//! The life of an EVENT, from parsed message to `OK`.
//!
//! Checks run cheapest first, as DESIGN.md orders them: the id hash (so
//! that no answer, not even "duplicate", is given for an event whose id is a
//! lie), then the access lists (in-memory look-ups, see `access`), then, in
//! one job on a checker thread (with SQLite each owns a read-only
//! connection), the duplicate/tombstone look-up, the cheap policy and the
//! Schnorr signature; last the writer, whose commit is what `OK true`
//! promises. One hop to a checker instead of one to a reader and another to
//! a verifier halves the thread wake-ups per event. With PostgreSQL the
//! look-up is an async query before the checker's job, which then checks
//! the policy and the signature only.

use std::net::IpAddr;
use std::sync::Arc;

use crate::access::AccessControl;
use crate::cluster::Outbox;
use crate::fanout::Fanout;
use crate::nostr::relay_url::same_relay;
use crate::nostr::{CanonicalEvent, Event, KindClass, kind};
use crate::plugin::{PluginDecision, WritePlugin};
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
    /// The URL this relay is known by to this client (`relay_url`, or the
    /// client's Host header), for NIP-62 requests that name relays.
    /// Shared with the connection: an EVENT does not copy it.
    pub relay_url: Arc<str>,
}

/// Everything an EVENT needs on its way to the store.
pub struct Ingester {
    pub store: Arc<Store>,
    pub fanout: Arc<Fanout>,
    /// Threads that run [`check`], each with its own read connection to
    /// SQLite (`None` with PostgreSQL, looked up asynchronously instead).
    pub checkers: WorkerPool<Option<Connection>>,
    pub policy: WritePolicy,
    /// Banned and allowed pubkeys, kinds, event ids and addresses.
    pub access: Arc<AccessControl>,
    /// The write-policy plugin (`[plugin]`), asked last, so that it only
    /// sees valid events that would otherwise be stored.
    pub plugin: Option<Arc<WritePlugin>>,
    /// Where accepted ephemeral events go to reach the other nodes of a
    /// cluster (committed ones go from the store's commit hook).
    pub cluster: Option<Outbox>,
}

const DUPLICATE: &str = "duplicate: already have this event";
const DELETED: &str = "blocked: this event was deleted by its author (NIP-09)";
const VANISHED: &str =
    "blocked: its author asked this relay to delete their events (NIP-62 request to vanish)";

impl Ingester {
    /// Takes one event through every check and, if it passes, commits it
    /// (or, for an ephemeral kind, hands it to live subscribers).
    pub async fn ingest(&self, event: Event, origin: &Origin) -> Verdict {
        if let Err(error) = event.verify_id() {
            return Verdict::refuse(format!("invalid: {error}"));
        }
        // NIP-62: "Relays MUST fully delete any events from the .pubkey if
        // their service URL is tagged in the event"; one naming only other
        // relays is not ours to act on.
        if event.kind == kind::REQUEST_TO_VANISH && !names_this_relay(&event, &origin.relay_url) {
            return Verdict::refuse(
                "invalid: this request to vanish names other relays, not this one (NIP-62)",
            );
        }
        // The access lists: in-memory look-ups, cheaper than any check after.
        if let Err(reason) = self.access.current().check(&event, origin.address) {
            return Verdict::refuse(reason);
        }
        // NIP-70: "the relay SHOULD … only accept it if the author is
        // authenticated" (checked after the id, before any other work).
        if event.is_protected() && !origin.authenticated.contains(&event.pubkey) {
            let reason = if origin.authenticated.is_empty() {
                "auth-required: this event is protected (NIP-70); authenticate as its author to publish it"
            } else {
                "restricted: this event is protected (NIP-70); only its author may publish it"
            };
            return Verdict::refuse(reason);
        }
        let ephemeral = event.class() == KindClass::Ephemeral;
        let event = Arc::new(CanonicalEvent::new(event));
        if !ephemeral
            && self.store.sqlite().is_none()
            && let Some(verdict) = fresh_or_refused(self.store.freshness(&event.event).await)
        {
            return verdict;
        }
        let checked = event.clone();
        let policy = self.policy.clone();
        let refusal = self
            .checkers
            .run(move |conn| match conn {
                Some(conn) => check(conn, &checked.event, ephemeral, &policy, unix_now()),
                None => check_policy_and_signature(&checked.event, &policy, unix_now()),
            })
            .await;
        match refusal {
            Ok(None) => {}
            Ok(Some(verdict)) => return verdict,
            Err(_) => return store_failure(StoreError::Closed),
        }
        if let Some(plugin) = &self.plugin {
            let id = event.event.id_hex();
            match plugin.decide(&event.json, &id, origin, unix_now()).await {
                PluginDecision::Accept => {}
                PluginDecision::Reject(reason) => return Verdict::refuse(reason),
                // OK true, yet nothing stored or broadcast.
                PluginDecision::ShadowReject => return Verdict::accept(""),
            }
        }
        if ephemeral {
            self.fanout.publish(&event, None);
            if let Some(outbox) = &self.cluster {
                outbox.ephemeral(&event);
            }
            return Verdict::accept("");
        }
        match self.store.insert(event).await {
            Ok(WriteOutcome::Stored { .. }) => Verdict::accept(""),
            Ok(WriteOutcome::Duplicate) => Verdict::accept(DUPLICATE),
            Ok(WriteOutcome::Deleted) => Verdict::refuse(DELETED),
            Ok(WriteOutcome::Vanished) => Verdict::refuse(VANISHED),
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
    if !ephemeral && let Some(verdict) = fresh_or_refused(freshness(conn, event)) {
        return Some(verdict);
    }
    check_policy_and_signature(event, policy, now)
}

/// [`check`] for a store that answers the freshness look-up itself
/// (PostgreSQL, [`Store::freshness`]): the same checks in the same order,
/// so that `nostr-relayd sync` refuses exactly what an EVENT is refused.
pub async fn check_in_store(
    store: &Store,
    event: &Event,
    ephemeral: bool,
    policy: &WritePolicy,
    now: i64,
) -> Option<Verdict> {
    if !ephemeral && let Some(verdict) = fresh_or_refused(store.freshness(event).await) {
        return Some(verdict);
    }
    check_policy_and_signature(event, policy, now)
}

/// The answer a freshness look-up gives: `None` for a new event.
fn fresh_or_refused(freshness: Result<Freshness, StoreError>) -> Option<Verdict> {
    match freshness {
        Ok(Freshness::New) => None,
        Ok(Freshness::Duplicate) => Some(Verdict::accept(DUPLICATE)),
        Ok(Freshness::Deleted) => Some(Verdict::refuse(DELETED)),
        Ok(Freshness::Vanished) => Some(Verdict::refuse(VANISHED)),
        Err(error) => Some(store_failure(error)),
    }
}

/// The checks after the store's look-up: the cheap policy, the signature.
fn check_policy_and_signature(event: &Event, policy: &WritePolicy, now: i64) -> Option<Verdict> {
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

/// Whether a NIP-62 request names this relay: `ALL_RELAYS`, or a `relay`
/// tag that is this relay's URL (compared as NIP-42 compares them).
/// `nostr-relayd sync` asks the same of a downloaded request.
pub fn names_this_relay(request: &Event, relay_url: &str) -> bool {
    request
        .tag_values("relay")
        .any(|url| url == "ALL_RELAYS" || same_relay(url, relay_url))
}
