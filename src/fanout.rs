//! Live fan-out: which open subscriptions does a new event match?
//!
//! Subscriptions are indexed by one key family per filter (an id, an author,
//! a tag value, a kind, or "matches all"), so a new event looks up only the
//! buckets its own id, pubkey, tags and kind name, then runs the full filter
//! check on those candidates. Delivery is a non-blocking push into each
//! connection's bounded queue: a connection that cannot keep up is flagged
//! and dropped by its own task, and never slows the writer or the others.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, mpsc};

use crate::nostr::{CanonicalEvent, Event, Filter};

/// Identifies one registered subscription across the relay.
pub type SubscriptionKey = u64;

/// One live event for one subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub key: SubscriptionKey,
    /// Commit sequence number (they start at 1); `None` for ephemeral
    /// events, never stored. NonZero keeps a queue slot at 24 bytes.
    pub seq: Option<NonZeroU64>,
    pub event: Arc<CanonicalEvent>,
}

/// The sending side of one connection's bounded live-event queue.
#[derive(Clone)]
pub struct Mailbox {
    queue: mpsc::Sender<Delivery>,
    overflow: Arc<Overflow>,
    queued: Arc<AtomicUsize>,
    interruptions: Arc<Interruptions>,
}

/// The receiving side of a [`Mailbox`]. It keeps the relay-wide count of
/// queued deliveries true, including for what is left when it is dropped.
pub struct Deliveries {
    receiver: mpsc::Receiver<Delivery>,
    queued: Arc<AtomicUsize>,
    interruptions: Arc<Interruptions>,
}

/// Set when a delivery found the queue full; the connection's task waits on
/// `notify` and closes itself.
#[derive(Default)]
pub struct Overflow {
    pub happened: AtomicBool,
    pub notify: Notify,
}

/// Subscriptions of one connection that the relay ended
/// ([`Fanout::interrupt_all`]): they may have missed live events, so the
/// connection's task sends each a `CLOSED` with the reason, and the client
/// subscribes again. Out of band, so that it never waits behind (or is
/// dropped with) a full queue of deliveries.
#[derive(Default)]
pub struct Interruptions {
    ended: Mutex<Vec<(SubscriptionKey, Arc<str>)>>,
    /// Woken when `ended` gains an entry.
    pub notify: Notify,
}

impl Interruptions {
    fn push(&self, key: SubscriptionKey, reason: Arc<str>) {
        self.ended
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((key, reason));
        self.notify.notify_one();
    }

    /// The subscriptions ended since the last call, with the reason for each.
    pub fn take(&self) -> Vec<(SubscriptionKey, Arc<str>)> {
        std::mem::take(
            &mut *self
                .ended
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

impl Mailbox {
    /// A mailbox holding at most `capacity` undelivered events, counted in
    /// a queue gauge of its own (see [`Fanout::mailbox`] for the shared one).
    pub fn new(capacity: usize) -> (Mailbox, Deliveries, Arc<Overflow>) {
        Mailbox::counted(capacity, Arc::default())
    }

    fn counted(capacity: usize, queued: Arc<AtomicUsize>) -> (Mailbox, Deliveries, Arc<Overflow>) {
        let (queue, receiver) = mpsc::channel(capacity);
        let overflow = Arc::new(Overflow::default());
        let interruptions = Arc::new(Interruptions::default());
        (
            Mailbox {
                queue,
                overflow: overflow.clone(),
                queued: queued.clone(),
                interruptions: interruptions.clone(),
            },
            Deliveries {
                receiver,
                queued,
                interruptions,
            },
            overflow,
        )
    }

    /// Queues a delivery; false when the queue is full or closed.
    fn deliver(&self, delivery: Delivery) -> bool {
        // Counted before the send, so the receiver never subtracts first.
        self.queued.fetch_add(1, Ordering::Relaxed);
        let Err(error) = self.queue.try_send(delivery) else {
            return true;
        };
        self.queued.fetch_sub(1, Ordering::Relaxed);
        if let mpsc::error::TrySendError::Full(_) = error {
            // The first overflow dooms the connection: counted once.
            if !self.overflow.happened.swap(true, Ordering::Relaxed) {
                crate::metrics::global().slow_consumer_dropped();
            }
            self.overflow.notify.notify_one();
        }
        false
    }
}

impl Deliveries {
    /// The next delivery; `None` once every sender is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let delivery = self.receiver.recv().await;
        if delivery.is_some() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        delivery
    }

    /// Where [`Fanout::interrupt_all`] leaves this connection's ended
    /// subscriptions; the connection's task waits on its `notify`.
    pub fn interruptions(&self) -> Arc<Interruptions> {
        self.interruptions.clone()
    }

    /// A delivery that is already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let delivery = self.receiver.try_recv().ok();
        if delivery.is_some() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        delivery
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.receiver.close();
        while self.try_recv().is_some() {}
    }
}

/// The index key a filter is filed under.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bucket {
    Id([u8; 32]),
    Author([u8; 32]),
    Tag(char, String),
    Kind(u16),
    All,
}

struct Registration {
    mailbox: Mailbox,
    filters: Arc<[Filter]>,
    buckets: Vec<Bucket>,
}

#[derive(Default)]
struct Index {
    registrations: HashMap<SubscriptionKey, Registration>,
    by_id: HashMap<[u8; 32], HashSet<SubscriptionKey>>,
    by_author: HashMap<[u8; 32], HashSet<SubscriptionKey>>,
    by_tag: HashMap<char, HashMap<String, HashSet<SubscriptionKey>>>,
    by_kind: HashMap<u16, HashSet<SubscriptionKey>>,
    all: HashSet<SubscriptionKey>,
}

/// The relay-wide table of live subscriptions.
#[derive(Default)]
pub struct Fanout {
    index: RwLock<Index>,
    next_key: AtomicU64,
    /// Deliveries waiting in every connection's mailbox.
    queued: Arc<AtomicUsize>,
}

/// The buckets a filter is filed under: the most selective field it has.
/// A NIP-50 `search` filter is filed under none: live events are never
/// matched against it (it gets stored results only).
fn buckets_of(filter: &Filter) -> Vec<Bucket> {
    if filter.is_unsatisfiable() || filter.search.is_some() {
        return Vec::new();
    }
    if let Some(ids) = &filter.ids {
        return ids.iter().map(|id| Bucket::Id(*id)).collect();
    }
    if let Some(authors) = &filter.authors {
        return authors.iter().map(|a| Bucket::Author(*a)).collect();
    }
    if let Some(condition) = filter.tags.iter().min_by_key(|c| c.values.len()) {
        return condition
            .values
            .iter()
            .map(|v| Bucket::Tag(condition.letter, v.clone()))
            .collect();
    }
    if let Some(kinds) = &filter.kinds {
        return kinds.iter().map(|k| Bucket::Kind(*k)).collect();
    }
    vec![Bucket::All]
}

impl Index {
    fn bucket_mut(&mut self, bucket: &Bucket) -> &mut HashSet<SubscriptionKey> {
        match bucket {
            Bucket::Id(id) => self.by_id.entry(*id).or_default(),
            Bucket::Author(a) => self.by_author.entry(*a).or_default(),
            Bucket::Tag(letter, value) => self
                .by_tag
                .entry(*letter)
                .or_default()
                .entry(value.clone())
                .or_default(),
            Bucket::Kind(k) => self.by_kind.entry(*k).or_default(),
            Bucket::All => &mut self.all,
        }
    }

    fn remove_from(&mut self, bucket: &Bucket, key: SubscriptionKey) {
        fn take<K: std::hash::Hash + Eq>(
            map: &mut HashMap<K, HashSet<SubscriptionKey>>,
            k: &K,
            key: SubscriptionKey,
        ) {
            if let Some(set) = map.get_mut(k) {
                set.remove(&key);
                if set.is_empty() {
                    map.remove(k);
                }
            }
        }
        match bucket {
            Bucket::Id(id) => take(&mut self.by_id, id, key),
            Bucket::Author(a) => take(&mut self.by_author, a, key),
            Bucket::Tag(letter, value) => {
                if let Some(values) = self.by_tag.get_mut(letter) {
                    take(values, value, key);
                    if values.is_empty() {
                        self.by_tag.remove(letter);
                    }
                }
            }
            Bucket::Kind(k) => take(&mut self.by_kind, k, key),
            Bucket::All => {
                self.all.remove(&key);
            }
        }
    }

    /// Subscriptions whose buckets this event names, without duplicates.
    fn candidates(&self, event: &Event) -> Vec<SubscriptionKey> {
        let mut keys: Vec<SubscriptionKey> = Vec::new();
        let mut add = |set: Option<&HashSet<SubscriptionKey>>| {
            if let Some(set) = set {
                keys.extend(set.iter().copied());
            }
        };
        add(self.by_id.get(&event.id));
        add(self.by_author.get(&event.pubkey));
        add(self.by_kind.get(&event.kind));
        add(Some(&self.all));
        if !self.by_tag.is_empty() {
            for tag in &event.tags {
                let mut name = tag[0].chars();
                if let (Some(letter), None, Some(value)) = (name.next(), name.next(), tag.get(1)) {
                    add(self
                        .by_tag
                        .get(&letter)
                        .and_then(|values| values.get(value.as_str())));
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

impl Fanout {
    /// An empty table.
    pub fn new() -> Fanout {
        Fanout::default()
    }

    /// A connection's mailbox, counted in [`Fanout::queued`].
    pub fn mailbox(&self, capacity: usize) -> (Mailbox, Deliveries, Arc<Overflow>) {
        Mailbox::counted(capacity, self.queued.clone())
    }

    /// Live events delivered to mailboxes and not yet taken by their
    /// connections: bounded by `send_queue_events` per connection.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Registers a subscription; from now on every published event it
    /// matches goes to `mailbox`.
    pub fn subscribe(&self, mailbox: Mailbox, filters: Arc<[Filter]>) -> SubscriptionKey {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let buckets: Vec<Bucket> = filters.iter().flat_map(buckets_of).collect();
        let mut index = self
            .index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for bucket in &buckets {
            index.bucket_mut(bucket).insert(key);
        }
        index.registrations.insert(
            key,
            Registration {
                mailbox,
                filters,
                buckets,
            },
        );
        key
    }

    /// Removes a subscription; unknown keys are ignored.
    pub fn unsubscribe(&self, key: SubscriptionKey) {
        let mut index = self
            .index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(registration) = index.registrations.remove(&key) {
            for bucket in &registration.buckets {
                index.remove_from(bucket, key);
            }
        }
    }

    /// Sends `event` to every subscription it matches.
    pub fn publish(&self, event: &Arc<CanonicalEvent>, seq: Option<u64>) {
        let seq = seq.and_then(NonZeroU64::new);
        let index = self
            .index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut delivered = 0;
        for key in index.candidates(&event.event) {
            if let Some(registration) = index.registrations.get(&key)
                && registration.filters.iter().any(|f| f.matches(&event.event))
                && registration.mailbox.deliver(Delivery {
                    key,
                    seq,
                    event: event.clone(),
                })
            {
                delivered += 1;
            }
        }
        if delivered > 0 {
            crate::metrics::global().delivered(delivered);
        }
    }

    /// Ends every registered subscription: each is removed from the table
    /// at once (it gets no further events) and its connection is told to
    /// send `CLOSED` with `reason`. For when this relay may have missed
    /// live events (a cluster node's messages lost and not recovered): a
    /// client that subscribes again gets them from the store. Returns how
    /// many subscriptions were ended.
    pub fn interrupt_all(&self, reason: &str) -> usize {
        let reason: Arc<str> = reason.into();
        let ended = {
            let mut index = self
                .index
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::take(&mut *index).registrations
        };
        for (key, registration) in &ended {
            registration
                .mailbox
                .interruptions
                .push(*key, reason.clone());
        }
        ended.len()
    }

    /// How many subscriptions are registered.
    pub fn len(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .registrations
            .len()
    }

    /// True when no subscription is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical(kind: u16, tags: serde_json::Value) -> Arc<CanonicalEvent> {
        let event = Event::from_value(&json!({
            "id": "a".repeat(64), "pubkey": "b".repeat(64), "created_at": 1,
            "kind": kind, "tags": tags, "content": "", "sig": "c".repeat(128)
        }))
        .unwrap();
        Arc::new(CanonicalEvent::new(event))
    }

    fn filters(values: serde_json::Value) -> Arc<[Filter]> {
        values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| Filter::from_value(v).unwrap())
            .collect()
    }

    #[test]
    fn delivers_only_to_matching_subscriptions_once() {
        let fanout = Fanout::new();
        let (mailbox, mut rx, _) = Mailbox::new(16);
        let both = fanout.subscribe(
            mailbox.clone(),
            filters(json!([{"kinds": [1]}, {"#t": ["x"]}])),
        );
        let other = fanout.subscribe(mailbox.clone(), filters(json!([{"kinds": [2]}])));
        let everything = fanout.subscribe(mailbox, filters(json!([{}])));
        fanout.publish(&canonical(1, json!([["t", "x"]])), Some(7));
        let mut got: Vec<_> = std::iter::from_fn(|| rx.try_recv())
            .map(|d| d.key)
            .collect();
        got.sort();
        assert_eq!(got, vec![both, everything]);
        fanout.unsubscribe(both);
        fanout.unsubscribe(other);
        fanout.unsubscribe(everything);
        assert!(fanout.is_empty());
        assert!(fanout.index.read().unwrap().by_kind.is_empty());
    }

    #[test]
    fn interrupt_all_ends_every_subscription_and_tells_its_connection() {
        let fanout = Fanout::new();
        let (first, mut first_rx, _) = fanout.mailbox(4);
        let (second, second_rx, _) = fanout.mailbox(4);
        let a = fanout.subscribe(first.clone(), filters(json!([{"kinds": [1]}])));
        let b = fanout.subscribe(first, filters(json!([{"#t": ["x"]}])));
        let c = fanout.subscribe(second, filters(json!([{}])));
        assert_eq!(fanout.interrupt_all("error: missed"), 3);
        assert!(fanout.is_empty());
        let mut ended: Vec<_> = first_rx
            .interruptions()
            .take()
            .into_iter()
            .map(|(key, reason)| (key, reason.to_string()))
            .collect();
        ended.sort();
        let missed = || "error: missed".to_string();
        assert_eq!(ended, vec![(a, missed()), (b, missed())]);
        assert_eq!(
            second_rx.interruptions().take()[0].0,
            c,
            "the other connection hears of its own subscription"
        );
        assert!(first_rx.interruptions().take().is_empty(), "taken once");
        // Ended subscriptions get nothing more.
        fanout.publish(&canonical(1, json!([["t", "x"]])), Some(1));
        assert!(first_rx.try_recv().is_none());
        assert_eq!(fanout.interrupt_all("error: missed"), 0);
    }

    #[test]
    fn a_full_mailbox_raises_the_overflow_flag() {
        let fanout = Fanout::new();
        let (mailbox, _rx, overflow) = Mailbox::new(1);
        fanout.subscribe(mailbox, filters(json!([{}])));
        fanout.publish(&canonical(1, json!([])), Some(1));
        assert!(!overflow.happened.load(Ordering::Relaxed));
        fanout.publish(&canonical(1, json!([])), Some(2));
        assert!(overflow.happened.load(Ordering::Relaxed));
    }

    #[test]
    fn the_queued_gauge_counts_what_waits_in_mailboxes() {
        let fanout = Fanout::new();
        let (first, mut first_rx, _) = fanout.mailbox(4);
        let (second, second_rx, _) = fanout.mailbox(1);
        fanout.subscribe(first, filters(json!([{}])));
        fanout.subscribe(second, filters(json!([{}])));
        for seq in 1..=3 {
            fanout.publish(&canonical(1, json!([])), Some(seq));
        }
        // 3 in the first, 1 in the second (its other two overflowed).
        assert_eq!(fanout.queued(), 4);
        assert!(first_rx.try_recv().is_some());
        assert_eq!(fanout.queued(), 3);
        drop(second_rx);
        assert_eq!(fanout.queued(), 2);
        drop(first_rx);
        assert_eq!(fanout.queued(), 0);
        // A closed mailbox takes nothing and counts nothing.
        fanout.publish(&canonical(1, json!([])), Some(4));
        assert_eq!(fanout.queued(), 0);
    }
}
