//! The task that delivers the other nodes' events to this node's live
//! subscriptions: each message parsed (a bad one is counted and dropped),
//! this node's own ignored, its sequence number checked for a gap (missed
//! events read back from the database first), then the event handed to the
//! fan-out once per id.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::gaps::{Claim, GapTracker, Missing};
use super::message::{self, Message, Origin};
use super::recent::RecentIds;
use super::{ClusterMetrics, INTERRUPTED, MAX_BACKFILL, Subjects};
use crate::fanout::Fanout;
use crate::nostr::CanonicalEvent;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};

/// Event ids remembered against double delivery (32 bytes each, twice).
const RECENT_IDS: usize = 65_536;

/// Most nodes tracked at once.
const MAX_NODES: usize = 1_024;

/// A node not heard from this long (five missed heartbeats: stopped, cut
/// off, or this node's own link is down) has its new commits looked for in
/// the database, again every period while it stays silent.
const SILENCE: Duration = Duration::from_secs(5);

/// A node silent this long is forgotten (a node renamed or gone for good).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Longest a database read (a backfill, the start's baseline) may take
/// before it counts as failed.
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where missed events are read back from: the shared database.
pub(super) trait OriginLog: Send + Sync + 'static {
    /// The stored events `node` committed with a sequence number in
    /// `(after, through]`, ascending, at most `cap`: (seq, JSON).
    fn events_from_origin(
        &self,
        node: &str,
        after: u64,
        through: u64,
        cap: usize,
    ) -> impl Future<Output = Result<Vec<(u64, String)>, StoreError>> + Send;

    /// Every node's last committed sequence number: (node, seq).
    fn node_sequences(&self)
    -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send;
}

impl OriginLog for Store {
    fn events_from_origin(
        &self,
        node: &str,
        after: u64,
        through: u64,
        cap: usize,
    ) -> impl Future<Output = Result<Vec<(u64, String)>, StoreError>> + Send {
        // The inherent method (inherent methods win over the trait's).
        Store::events_from_origin(self, node, after, through, cap)
    }

    fn node_sequences(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send {
        Store::node_sequences(self)
    }
}

/// The end of a missing range as logged: `u64::MAX` (a silent node's
/// commits, end unknown) reads "open-ended".
struct Through(u64);

impl std::fmt::Display for Through {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            u64::MAX => f.write_str("open-ended"),
            through => write!(f, "{through}"),
        }
    }
}

/// Who sent a message, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    Other,
    /// This process (NATS does not echo, but a message may still loop).
    Me,
    /// Another process using this node's name: a misconfiguration.
    NameClash,
}

fn sender(origin: &Origin, me: &Origin) -> Sender {
    match (origin.node == me.node, origin.boot == me.boot) {
        (false, _) => Sender::Other,
        (true, true) => Sender::Me,
        (true, false) => Sender::NameClash,
    }
}

pub(super) struct Receiver<L> {
    me: Origin,
    subjects: Subjects,
    log: Arc<L>,
    fanout: Arc<Fanout>,
    metrics: Arc<ClusterMetrics>,
    gaps: GapTracker,
    recent: RecentIds,
    name_clash_warned: bool,
}

impl<L: OriginLog> Receiver<L> {
    pub(super) fn new(
        me: Origin,
        subjects: Subjects,
        log: Arc<L>,
        fanout: Arc<Fanout>,
        metrics: Arc<ClusterMetrics>,
    ) -> Receiver<L> {
        Receiver {
            me,
            subjects,
            log,
            fanout,
            metrics,
            gaps: GapTracker::new(MAX_NODES),
            recent: RecentIds::new(RECENT_IDS),
            name_clash_warned: false,
        }
    }

    /// Takes every other node's last commit in the database as heard, so
    /// that what they commit from now on is owed to this node's
    /// subscriptions even if their messages never reach it (NATS down at
    /// this node's start). Call it once, before [`run`](Self::run); if the
    /// read fails, each node's first number heard is the baseline instead.
    pub(super) async fn seed(&mut self) {
        let read = self.log.node_sequences();
        let sequences = match tokio::time::timeout(BACKFILL_TIMEOUT, read).await {
            Ok(Ok(sequences)) => sequences,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the other nodes' sequence numbers; events they commit before they are first heard may not reach live subscriptions");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    "reading the other nodes' sequence numbers timed out; events they commit before they are first heard may not reach live subscriptions"
                );
                return;
            }
        };
        let now = Instant::now();
        let mut seeded = 0;
        for (node, last) in sequences {
            if node != self.me.node {
                self.gaps.seed(&node, last, now);
                seeded += 1;
            }
        }
        tracing::debug!(nodes = seeded, "cluster baseline read from the database");
    }

    /// Delivers until the relay shuts down (or the subscription ends).
    pub(super) async fn run(
        mut self,
        mut incoming: async_nats::Subscriber,
        mut shutdown: Shutdown,
    ) {
        let mut silence = tokio::time::interval(Duration::from_secs(1));
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.recv() => break,
                message = incoming.next() => match message {
                    Some(message) => {
                        let subject = message.subject.as_str();
                        if subject == self.subjects.events || subject == self.subjects.heartbeat {
                            self.on_payload(&message.payload).await;
                        }
                    }
                    None => break,
                },
                _ = silence.tick() => self.check_silence().await,
            }
        }
        let _ = incoming.unsubscribe().await;
    }

    /// One message from NATS.
    async fn on_payload(&mut self, payload: &[u8]) {
        let message = match message::decode(payload) {
            Ok(message) => message,
            Err(error) => {
                self.metrics.bad_messages.increment(1);
                tracing::debug!(%error, "dropping a bad cluster message");
                return;
            }
        };
        match sender(message.origin(), &self.me) {
            Sender::Other => {}
            Sender::Me => return,
            Sender::NameClash => {
                if !self.name_clash_warned {
                    self.name_clash_warned = true;
                    tracing::warn!(node = %self.me.node, "another process publishes under this node's name; give each node its own cluster.node_name");
                }
                return;
            }
        }
        self.metrics.messages_in.increment(1);
        self.on_message(message, Instant::now()).await;
    }

    async fn on_message(&mut self, message: Message, now: std::time::Instant) {
        match message {
            Message::Heartbeat { origin, first, seq } => {
                let claim = seq.map_or(Claim::Alive, Claim::Heartbeat);
                if let Some(missing) = self.gaps.observe(&origin, first, claim, now) {
                    self.backfill(missing).await;
                }
            }
            Message::Event {
                origin,
                first,
                seq,
                event,
            } => {
                let claim = seq.map_or(Claim::Alive, Claim::Event);
                if let Some(missing) = self.gaps.observe(&origin, first, claim, now) {
                    self.backfill(missing).await;
                }
                self.deliver(&event);
            }
        }
    }

    /// Nodes gone quiet: their commits since they were last heard, if any
    /// are in the database, are delivered (a node killed between its
    /// commit and its publish, or this node's own link down).
    async fn check_silence(&mut self) {
        let now = Instant::now();
        for missing in self.gaps.silent(now, SILENCE, FORGET_AFTER) {
            self.backfill(missing).await;
        }
    }

    /// Reads `missing` back from the database and delivers it; ends every
    /// live subscription if that fails or too much is missing.
    async fn backfill(&mut self, missing: Missing) {
        let open_ended = missing.through == u64::MAX;
        if !open_ended {
            self.metrics.gaps.increment(1);
            tracing::debug!(node = %missing.node, after = missing.after, through = missing.through, "cluster gap");
        }
        let read = self.log.events_from_origin(
            &missing.node,
            missing.after,
            missing.through.min(i64::MAX as u64),
            MAX_BACKFILL + 1,
        );
        let rows = match tokio::time::timeout(BACKFILL_TIMEOUT, read).await {
            Ok(Ok(rows)) if rows.len() <= MAX_BACKFILL => rows,
            Ok(Ok(_)) => {
                let cause = format!("more than {MAX_BACKFILL} events missed");
                return self.interrupt(&missing, &cause);
            }
            Ok(Err(error)) => return self.interrupt(&missing, &error.to_string()),
            Err(_) => return self.interrupt(&missing, "the backfill read timed out"),
        };
        let mut highest = missing.after;
        for (seq, json) in rows {
            highest = highest.max(seq);
            match message::canonical_event(&json) {
                Ok(event) => {
                    self.metrics.backfilled.increment(1);
                    self.deliver(&Arc::new(event));
                }
                // Stored JSON was checked on the way in: this is a bug or
                // a hand-edited row, never a client's doing.
                Err(error) => {
                    tracing::warn!(node = %missing.node, seq, %error, "a stored event does not parse")
                }
            }
        }
        if open_ended {
            self.gaps.recovered(&missing.node, highest);
        }
    }

    /// Missed events cannot be delivered: every live subscription on this
    /// node ends with `CLOSED`, so that its client asks again (and gets
    /// them from the database). Never silent.
    fn interrupt(&mut self, missing: &Missing, cause: &str) {
        let ended = self.fanout.interrupt_all(INTERRUPTED);
        self.metrics.interruptions.increment(1);
        tracing::warn!(
            node = %missing.node,
            after = missing.after,
            through = %Through(missing.through),
            cause,
            subscriptions = ended,
            "missed live events from another node could not be recovered; ended every live subscription"
        );
        // Nothing is owed to anyone any more: start afresh from the next
        // number heard (or, for a gap with a known end, from its end).
        if missing.through == u64::MAX {
            self.gaps.forget(&missing.node);
        }
    }

    /// Hands an event to the fan-out, once per id. `seq` `None`: with
    /// PostgreSQL there is no one commit order to compare with, and the
    /// connection drops what its stored query already sent by id.
    fn deliver(&mut self, event: &Arc<CanonicalEvent>) {
        if self.recent.insert(event.event.id) {
            self.fanout.publish(event, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::message::Encoder;
    use crate::corpus::Corpus;
    use crate::fanout::Deliveries;
    use crate::nostr::Filter;
    use std::sync::Mutex;

    /// A database of one node's commits, and the reads asked of it.
    #[derive(Default)]
    struct FakeLog {
        rows: Vec<(u64, String)>,
        /// What `node_sequences` reads.
        sequences: Vec<(String, u64)>,
        fail: bool,
        reads: Mutex<Vec<(u64, u64)>>,
    }

    impl OriginLog for FakeLog {
        fn events_from_origin(
            &self,
            node: &str,
            after: u64,
            through: u64,
            cap: usize,
        ) -> impl Future<Output = Result<Vec<(u64, String)>, StoreError>> + Send {
            assert_eq!(node, "a");
            self.reads.lock().unwrap().push((after, through));
            let result = if self.fail {
                Err(StoreError::Other("down".into()))
            } else {
                Ok(self
                    .rows
                    .iter()
                    .filter(|(seq, _)| *seq > after && *seq <= through)
                    .take(cap)
                    .cloned()
                    .collect())
            };
            async move { result }
        }

        fn node_sequences(
            &self,
        ) -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send {
            let result = if self.fail {
                Err(StoreError::Other("down".into()))
            } else {
                Ok(self.sequences.clone())
            };
            async move { result }
        }
    }

    struct Setup {
        receiver: Receiver<FakeLog>,
        log: Arc<FakeLog>,
        fanout: Arc<Fanout>,
        deliveries: Deliveries,
        events: Vec<Arc<CanonicalEvent>>,
        a: Encoder,
    }

    /// Node "a"'s commits 1..=count, all stored; one subscription to all.
    fn setup(count: u64, fail: bool) -> Setup {
        let mut corpus = Corpus::new(3, 2, 1_700_000_000);
        let events: Vec<Arc<CanonicalEvent>> = (0..count)
            .map(|_| {
                let (author, event) = corpus.next_unsigned();
                Arc::new(CanonicalEvent::new(corpus.sign(author, event).event))
            })
            .collect();
        let log = Arc::new(FakeLog {
            rows: (1..).zip(events.iter().map(|e| e.json.clone())).collect(),
            sequences: Vec::new(),
            fail,
            reads: Mutex::default(),
        });
        let fanout = Arc::new(Fanout::new());
        let (mailbox, deliveries, _) = fanout.mailbox(1024);
        fanout.subscribe(mailbox, vec![Filter::default()].into());
        let me = Origin {
            node: "me".into(),
            boot: 1,
        };
        let subjects = Subjects {
            events: "p.events".into(),
            heartbeat: "p.heartbeat".into(),
        };
        let metrics = Arc::new(ClusterMetrics::register());
        let receiver = Receiver::new(me, subjects, log.clone(), fanout.clone(), metrics);
        let a = Encoder::new(&Origin {
            node: "a".into(),
            boot: 7,
        });
        Setup {
            receiver,
            log,
            fanout,
            deliveries,
            events,
            a,
        }
    }

    impl Setup {
        async fn event(&mut self, seq: u64) {
            let json = self.events[seq as usize - 1].json.clone();
            let payload = self.a.event(Some(1), Some(seq), &json);
            self.receiver.on_payload(payload.as_bytes()).await;
        }

        /// Seeds the receiver as at start, from a database where node "a"
        /// had committed through `a` and this node through 99.
        async fn seed(&mut self, a: u64) {
            let log = Arc::new(FakeLog {
                rows: self.log.rows.clone(),
                sequences: vec![("a".into(), a), ("me".into(), 99)],
                fail: self.log.fail,
                reads: Mutex::default(),
            });
            self.receiver.log = log.clone();
            self.log = log;
            self.receiver.seed().await;
        }

        /// The seqs (positions in `events`) delivered since the last call.
        fn delivered(&mut self) -> Vec<u64> {
            std::iter::from_fn(|| self.deliveries.try_recv())
                .map(|d| {
                    assert_eq!(d.seq, None);
                    let at = self.events.iter().position(|e| e.json == d.event.json);
                    at.expect("a known event") as u64 + 1
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn a_gap_is_read_back_and_delivered_before_the_event_once() {
        let mut s = setup(6, false);
        s.event(1).await;
        s.event(2).await;
        s.event(5).await;
        assert_eq!(s.delivered(), vec![1, 2, 3, 4, 5]);
        assert_eq!(*s.log.reads.lock().unwrap(), vec![(2, 4)]);
        // 3 arrives late, 5 twice: nothing twice.
        s.event(3).await;
        s.event(5).await;
        s.event(6).await;
        assert_eq!(s.delivered(), vec![6]);
        // A heartbeat saying 6 is the last: nothing missing.
        let heartbeat = s.a.heartbeat(Some(1), Some(6));
        s.receiver.on_payload(heartbeat.as_bytes()).await;
        assert_eq!(s.log.reads.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_heartbeat_reveals_lost_last_events() {
        let mut s = setup(4, false);
        s.event(1).await;
        let heartbeat = s.a.heartbeat(Some(1), Some(4));
        s.receiver.on_payload(heartbeat.as_bytes()).await;
        assert_eq!(s.delivered(), vec![1, 2, 3, 4]);
        assert_eq!(*s.log.reads.lock().unwrap(), vec![(1, 4)]);
    }

    #[tokio::test]
    async fn a_node_heard_before_its_first_commit_owes_every_commit() {
        let mut s = setup(3, false);
        let empty = s.a.heartbeat(None, None);
        s.receiver.on_payload(empty.as_bytes()).await;
        // NATS lost all three events; the next heartbeat counts them.
        let heartbeat = s.a.heartbeat(Some(1), Some(3));
        s.receiver.on_payload(heartbeat.as_bytes()).await;
        assert_eq!(s.delivered(), vec![1, 2, 3]);
        assert_eq!(*s.log.reads.lock().unwrap(), vec![(0, 3)]);
    }

    #[tokio::test]
    async fn the_first_number_heard_after_a_seed_reveals_what_was_missed() {
        let mut s = setup(6, false);
        s.seed(2).await;
        assert_eq!(s.receiver.gaps.len(), 1, "this node is not tracked");
        // Node "a" committed 3 and 4 while this node heard nothing (NATS
        // down at its start); 5 is the first message heard.
        s.event(5).await;
        assert_eq!(s.delivered(), vec![3, 4, 5]);
        assert_eq!(*s.log.reads.lock().unwrap(), vec![(2, 4)]);
        s.event(6).await;
        assert_eq!(s.delivered(), vec![6]);
        assert_eq!(s.log.reads.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_seeded_node_never_heard_is_looked_for_in_the_database() {
        let mut s = setup(4, false);
        s.seed(1).await;
        let later = Instant::now() + SILENCE;
        for missing in s.receiver.gaps.silent(later, SILENCE, FORGET_AFTER) {
            s.receiver.backfill(missing).await;
        }
        assert_eq!(s.delivered(), vec![2, 3, 4]);
        assert_eq!(*s.log.reads.lock().unwrap(), vec![(1, i64::MAX as u64)]);
        // Then heard: in order, nothing asked for twice.
        s.event(4).await;
        assert_eq!(s.delivered(), Vec::<u64>::new());
        assert_eq!(s.log.reads.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_failed_seed_leaves_the_first_number_heard_as_the_baseline() {
        let mut s = setup(3, true);
        s.seed(1).await;
        assert!(s.receiver.gaps.is_empty());
        assert_eq!(s.fanout.len(), 1, "no subscription ended");
        s.event(3).await;
        assert_eq!(s.delivered(), vec![3]);
        assert!(s.log.reads.lock().unwrap().is_empty());
    }

    #[test]
    fn an_open_ended_range_is_logged_as_such() {
        assert_eq!(Through(u64::MAX).to_string(), "open-ended");
        assert_eq!(Through(41).to_string(), "41");
    }

    #[tokio::test]
    async fn own_and_bad_messages_are_ignored() {
        let mut s = setup(2, false);
        let mine = Encoder::new(&Origin {
            node: "me".into(),
            boot: 1,
        });
        let json = s.events[0].json.clone();
        s.receiver
            .on_payload(mine.event(Some(1), Some(1), &json).as_bytes())
            .await;
        let clash = Encoder::new(&Origin {
            node: "me".into(),
            boot: 2,
        });
        s.receiver
            .on_payload(clash.event(Some(1), Some(1), &json).as_bytes())
            .await;
        assert!(s.receiver.name_clash_warned);
        s.receiver.on_payload(b"{\"node\":\"a\"").await;
        s.receiver.on_payload(b"\xff").await;
        assert_eq!(s.delivered(), Vec::<u64>::new());
        assert!(s.receiver.gaps.is_empty(), "nothing tracked");
    }

    #[tokio::test]
    async fn a_failed_backfill_ends_every_live_subscription() {
        let mut s = setup(3, true);
        s.event(1).await;
        s.event(3).await;
        assert_eq!(s.fanout.len(), 0, "the subscription was ended");
        let ended = s.deliveries.interruptions().take();
        assert_eq!(ended.len(), 1);
        assert_eq!(&*ended[0].1, INTERRUPTED);
        // The event in hand was still handed on (to no one now).
        assert_eq!(s.delivered(), vec![1]);
    }

    #[tokio::test]
    async fn too_large_a_gap_ends_every_live_subscription() {
        let mut s = setup(1, false);
        let log = Arc::new(FakeLog {
            rows: (2..=MAX_BACKFILL as u64 + 2)
                .map(|seq| (seq, s.events[0].json.clone()))
                .collect(),
            ..FakeLog::default()
        });
        s.receiver.log = log;
        s.event(1).await;
        let heartbeat = s.a.heartbeat(Some(1), Some(MAX_BACKFILL as u64 + 2));
        s.receiver.on_payload(heartbeat.as_bytes()).await;
        assert_eq!(s.fanout.len(), 0);
        assert_eq!(s.deliveries.interruptions().take().len(), 1);
        assert_eq!(s.delivered(), vec![1], "nothing of the gap delivered");
    }

    #[tokio::test]
    async fn a_silent_node_is_looked_for_in_the_database() {
        let mut s = setup(3, false);
        s.event(1).await;
        assert_eq!(s.delivered(), vec![1]);
        let later = Instant::now() + SILENCE;
        for missing in s.receiver.gaps.silent(later, SILENCE, FORGET_AFTER) {
            s.receiver.backfill(missing).await;
        }
        assert_eq!(s.delivered(), vec![2, 3]);
        assert_eq!(*s.log.reads.lock().unwrap(), vec![(1, i64::MAX as u64)]);
        // Recovered up to 3: the next event is in order.
        s.event(3).await;
        assert_eq!(s.delivered(), Vec::<u64>::new());
        assert_eq!(s.log.reads.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_sender_is_told_apart_by_name_and_boot() {
        let me = Origin {
            node: "n".into(),
            boot: 1,
        };
        let other = |node: &str, boot| Origin {
            node: node.into(),
            boot,
        };
        assert_eq!(sender(&other("m", 1), &me), Sender::Other);
        assert_eq!(sender(&other("n", 1), &me), Sender::Me);
        assert_eq!(sender(&other("n", 2), &me), Sender::NameClash);
    }
}
