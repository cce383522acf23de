//! Which commits of the other nodes this node has heard of, and which it
//! missed.
//!
//! Core NATS delivers at most once: a message can be lost (a slow consumer,
//! a reconnect). Each node numbers its commits 1, 2, 3, … without holes
//! (PostgreSQL's `node_sequence`, continued across restarts), and says in
//! every event message and every heartbeat how far it got. Per node, the
//! tracker keeps the last sequence number up to which everything was heard
//! (or recovered); a number further on reveals the range that was missed,
//! which the receiver reads back from the database ("backfill").
//!
//! Pure bookkeeping: no I/O, no clock of its own (the caller passes `now`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::message::Origin;

/// Sequence numbers `(after, through]` of one node that were never heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub node: String,
    pub after: u64,
    pub through: u64,
}

/// What one message says about its sender's commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// An event message: commit `seq` is this one, and every commit before
    /// it was published before it.
    Event(u64),
    /// A heartbeat: commits up to `seq` were published.
    Heartbeat(u64),
    /// An ephemeral event, or a heartbeat before the sender's first commit:
    /// says only that the sender is alive.
    Alive,
}

/// How far a node's commits were heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Nothing known yet (never seeded, or forgotten): the first number
    /// heard is taken as it is (the commits before it happened before this
    /// node listened).
    Unknown,
    /// Everything up to this number was heard (or recovered).
    Through(u64),
}

#[derive(Debug)]
struct NodeState {
    /// `None`: seeded from the database, not heard yet; whichever boot is
    /// heard first continues the database's numbers.
    boot: Option<u64>,
    mark: Mark,
    /// This node heard the current boot before its first commit: every
    /// commit of the boot is owed, from its `first` on.
    heard_empty: bool,
    heard: Instant,
    /// When the node's silence was last looked into.
    checked: Option<Instant>,
}

/// Per node, how far its commits were heard.
#[derive(Debug)]
pub struct GapTracker {
    nodes: HashMap<String, NodeState>,
    max_nodes: usize,
}

impl GapTracker {
    /// A tracker of at most `max_nodes` nodes (past it, the node heard from
    /// least recently is forgotten: names come from the network).
    pub fn new(max_nodes: usize) -> GapTracker {
        GapTracker {
            nodes: HashMap::new(),
            max_nodes: max_nodes.max(1),
        }
    }

    /// Records a message from `origin` heard at `now`, whose boot committed
    /// `first` first (`None`: nothing yet); returns the range of its
    /// commits that was missed before it, if any.
    ///
    /// The first number heard from a node is taken as it is, unless the
    /// node was [`seed`](Self::seed)ed from the database (then what it
    /// committed since is owed), or this node heard the boot before its
    /// first commit (then the boot's commits are owed from `first` on). A new boot continues the
    /// numbering of the last, so what the previous run published last and
    /// was lost is found the same way; a boot whose numbers go back (its
    /// database was replaced) starts afresh.
    pub fn observe(
        &mut self,
        origin: &Origin,
        first: Option<u64>,
        claim: Claim,
        now: Instant,
    ) -> Option<Missing> {
        let (through, newest) = match claim {
            Claim::Event(seq) => (seq - 1, seq),
            Claim::Heartbeat(seq) => (seq, seq),
            Claim::Alive => (0, 0),
        };
        if !self.nodes.contains_key(&origin.node) {
            self.make_room();
        }
        let state = self
            .nodes
            .entry(origin.node.clone())
            .or_insert_with(|| NodeState {
                boot: Some(origin.boot),
                mark: Mark::Unknown,
                heard_empty: false,
                heard: now,
                checked: None,
            });
        state.heard = now;
        state.checked = None;
        if state.boot != Some(origin.boot) {
            let seeded = state.boot.is_none();
            state.boot = Some(origin.boot);
            state.heard_empty = false;
            // A new boot's numbers continue the last one's; if they go
            // back, its database was replaced: nothing is known. (A seeded
            // mark came from this very database: it stands.)
            if !seeded
                && let Mark::Through(last) = state.mark
                && first.is_some_and(|first| first <= last)
            {
                state.mark = Mark::Unknown;
            }
        }
        let Some(first) = first else {
            state.heard_empty = true; // the boot has committed nothing yet
            return None;
        };
        if state.heard_empty {
            state.heard_empty = false;
            let before_first = first - 1;
            state.mark = Mark::Through(match state.mark {
                Mark::Through(last) => last.min(before_first),
                Mark::Unknown => before_first,
            });
        }
        if newest == 0 {
            return None;
        }
        match state.mark {
            Mark::Through(last) => {
                state.mark = Mark::Through(last.max(newest));
                (through > last).then(|| Missing {
                    node: origin.node.clone(),
                    after: last,
                    through,
                })
            }
            Mark::Unknown => {
                state.mark = Mark::Through(newest);
                None
            }
        }
    }

    /// Takes `node`'s last committed number, read from the database when
    /// this node starts, as what was heard so far: the first message heard
    /// from it then reveals what it committed in between, and the silence
    /// check looks for its commits even if it is never heard. A node
    /// already heard from keeps its own mark.
    pub fn seed(&mut self, node: &str, last: u64, now: Instant) {
        if self.nodes.contains_key(node) {
            return;
        }
        self.make_room();
        self.nodes.insert(
            node.to_owned(),
            NodeState {
                boot: None,
                mark: Mark::Through(last),
                heard_empty: false,
                heard: now,
                checked: None,
            },
        );
    }

    /// Nodes not heard from for `silence` (stopped, cut off, or our own
    /// link is down), each at most once per `silence`: their commits since
    /// `after` are looked for in the database (`through` is `u64::MAX`:
    /// the end is unknown). Nodes silent for `forget_after` are dropped.
    pub fn silent(
        &mut self,
        now: Instant,
        silence: Duration,
        forget_after: Duration,
    ) -> Vec<Missing> {
        self.nodes
            .retain(|_, state| now.saturating_duration_since(state.heard) < forget_after);
        let mut missing = Vec::new();
        for (node, state) in &mut self.nodes {
            let quiet_since = state.checked.unwrap_or(state.heard);
            if now.saturating_duration_since(quiet_since) < silence {
                continue;
            }
            state.checked = Some(now);
            if let Mark::Through(after) = state.mark {
                missing.push(Missing {
                    node: node.clone(),
                    after,
                    through: u64::MAX,
                });
            }
        }
        missing
    }

    /// Everything of `node` up to `seq` was recovered from the database.
    pub fn recovered(&mut self, node: &str, seq: u64) {
        if let Some(state) = self.nodes.get_mut(node)
            && let Mark::Through(last) = state.mark
        {
            state.mark = Mark::Through(last.max(seq));
        }
    }

    /// Forgets where `node` stood: its next sequence number is taken as it
    /// is (after the relay ended every live subscription, nothing before it
    /// is owed to anyone).
    pub fn forget(&mut self, node: &str) {
        if let Some(state) = self.nodes.get_mut(node) {
            state.mark = Mark::Unknown;
        }
    }

    /// How many nodes are tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no node is tracked.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn make_room(&mut self) {
        while self.nodes.len() >= self.max_nodes {
            let Some(oldest) = self
                .nodes
                .iter()
                .min_by_key(|(_, state)| state.heard)
                .map(|(node, _)| node.clone())
            else {
                return;
            };
            self.nodes.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(boot: u64) -> Origin {
        Origin {
            node: "a".into(),
            boot,
        }
    }

    fn missing(after: u64, through: u64) -> Option<Missing> {
        Some(Missing {
            node: "a".into(),
            after,
            through,
        })
    }

    /// A tracker and the time; `hear(boot, first, claim)`.
    struct Ear {
        gaps: GapTracker,
        now: Instant,
    }

    impl Ear {
        fn new() -> Ear {
            Ear {
                gaps: GapTracker::new(8),
                now: Instant::now(),
            }
        }

        fn hear(&mut self, boot: u64, first: Option<u64>, claim: Claim) -> Option<Missing> {
            self.gaps.observe(&a(boot), first, claim, self.now)
        }
    }

    #[test]
    fn messages_in_order_reveal_nothing() {
        let mut ear = Ear::new();
        let f = Some(1);
        assert_eq!(ear.hear(1, f, Claim::Event(5)), None, "first heard");
        assert_eq!(ear.hear(1, f, Claim::Event(6)), None);
        assert_eq!(ear.hear(1, f, Claim::Heartbeat(6)), None);
        assert_eq!(ear.hear(1, f, Claim::Alive), None);
        assert_eq!(ear.hear(1, f, Claim::Event(7)), None);
        assert_eq!(ear.hear(1, f, Claim::Heartbeat(7)), None);
    }

    #[test]
    fn a_skipped_number_is_a_gap_once() {
        let mut ear = Ear::new();
        let f = Some(1);
        ear.hear(1, f, Claim::Event(5));
        assert_eq!(ear.hear(1, f, Claim::Event(9)), missing(5, 8));
        assert_eq!(ear.hear(1, f, Claim::Event(10)), None);
        // A heartbeat past the last event: the events in between were lost.
        assert_eq!(ear.hear(1, f, Claim::Heartbeat(12)), missing(10, 12));
        assert_eq!(ear.hear(1, f, Claim::Heartbeat(12)), None);
    }

    #[test]
    fn duplicates_and_late_messages_reveal_nothing() {
        let mut ear = Ear::new();
        let f = Some(1);
        ear.hear(1, f, Claim::Event(5));
        assert_eq!(ear.hear(1, f, Claim::Event(8)), missing(5, 7));
        // 6 and 7 arrive late (after the backfill asked for them), 8 twice.
        assert_eq!(ear.hear(1, f, Claim::Event(6)), None);
        assert_eq!(ear.hear(1, f, Claim::Event(7)), None);
        assert_eq!(ear.hear(1, f, Claim::Event(8)), None);
        assert_eq!(ear.hear(1, f, Claim::Heartbeat(8)), None);
        assert_eq!(ear.hear(1, f, Claim::Event(9)), None);
    }

    #[test]
    fn a_new_boot_continues_or_restarts_the_numbering() {
        let mut ear = Ear::new();
        ear.hear(1, Some(1), Claim::Event(5));
        // Restarted: the old run's 6 and 7 were committed but never heard.
        assert_eq!(ear.hear(2, None, Claim::Alive), None);
        assert_eq!(ear.hear(2, Some(8), Claim::Event(8)), missing(5, 7));
        // Restarted with nothing lost.
        assert_eq!(ear.hear(3, Some(9), Claim::Event(9)), None);
        // Restarted on a new database: numbering starts over, nothing owed.
        assert_eq!(ear.hear(4, Some(1), Claim::Event(1)), None);
        assert_eq!(ear.hear(4, Some(1), Claim::Event(2)), None);
        assert_eq!(ear.hear(4, Some(1), Claim::Event(4)), missing(2, 3));
        // Heard before its first commit, then renumbered: owed from its first.
        assert_eq!(ear.hear(5, None, Claim::Alive), None);
        assert_eq!(ear.hear(5, Some(1), Claim::Heartbeat(3)), missing(0, 3));
    }

    #[test]
    fn a_boot_heard_before_its_first_commit_is_owed_every_commit() {
        let mut ear = Ear::new();
        // The node just started (committed nothing), then our link was cut.
        assert_eq!(ear.hear(1, None, Claim::Alive), None);
        assert_eq!(ear.hear(1, Some(40), Claim::Heartbeat(45)), missing(39, 45));
        assert_eq!(ear.hear(1, Some(40), Claim::Event(46)), None);
        // The same through an ephemeral event that names the first commit.
        let mut ear = Ear::new();
        ear.hear(1, None, Claim::Alive);
        assert_eq!(ear.hear(1, Some(40), Claim::Alive), None);
        assert_eq!(ear.hear(1, Some(40), Claim::Event(42)), missing(39, 41));
    }

    #[test]
    fn nothing_is_owed_before_the_first_number_heard() {
        let mut ear = Ear::new();
        assert_eq!(ear.hear(1, Some(3), Claim::Alive), None);
        assert_eq!(ear.hear(1, Some(3), Claim::Heartbeat(40)), None);
        assert_eq!(ear.hear(1, Some(3), Claim::Event(41)), None);
        ear.gaps.forget("a");
        assert_eq!(ear.hear(1, Some(3), Claim::Event(90)), None);
        assert_eq!(ear.hear(1, Some(3), Claim::Event(92)), missing(90, 91));
    }

    #[test]
    fn a_seeded_node_owes_what_it_committed_since() {
        let mut ear = Ear::new();
        ear.gaps.seed("a", 40, ear.now);
        // Its boot began long before (first 3): the database's mark stands.
        assert_eq!(ear.hear(1, Some(3), Claim::Event(45)), missing(40, 44));
        assert_eq!(ear.hear(1, Some(3), Claim::Event(46)), None);
        // Seeded, then heard with nothing new, then a heartbeat further on.
        let mut ear = Ear::new();
        ear.gaps.seed("a", 40, ear.now);
        assert_eq!(ear.hear(1, Some(3), Claim::Heartbeat(40)), None);
        assert_eq!(ear.hear(1, Some(3), Claim::Heartbeat(42)), missing(40, 42));
        // Seeded, then a message committed before the seed arrives late.
        let mut ear = Ear::new();
        ear.gaps.seed("a", 40, ear.now);
        assert_eq!(ear.hear(1, Some(3), Claim::Event(39)), None);
        assert_eq!(ear.hear(1, Some(3), Claim::Event(41)), None);
        // Seeded, restarted and heard before its first commit.
        let mut ear = Ear::new();
        ear.gaps.seed("a", 40, ear.now);
        assert_eq!(ear.hear(2, None, Claim::Alive), None);
        assert_eq!(ear.hear(2, Some(41), Claim::Heartbeat(43)), missing(40, 43));
        // Seeding a node already heard keeps its own mark.
        let mut ear = Ear::new();
        ear.hear(1, Some(1), Claim::Event(50));
        ear.gaps.seed("a", 40, ear.now);
        assert_eq!(ear.hear(1, Some(1), Claim::Event(51)), None);
    }

    #[test]
    fn a_seeded_node_never_heard_is_looked_for_then_forgotten() {
        let mut gaps = GapTracker::new(8);
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let (silence, forget) = (5 * second, 60 * second);
        gaps.seed("a", 12, start);
        assert!(gaps.silent(start + 4 * second, silence, forget).is_empty());
        assert_eq!(
            gaps.silent(start + 5 * second, silence, forget),
            vec![missing(12, u64::MAX).unwrap()]
        );
        assert!(gaps.silent(start + 60 * second, silence, forget).is_empty());
        assert!(gaps.is_empty());
    }

    #[test]
    fn nodes_are_tracked_apart() {
        let mut gaps = GapTracker::new(8);
        let now = Instant::now();
        let b = Origin {
            node: "b".into(),
            boot: 1,
        };
        gaps.observe(&a(1), Some(1), Claim::Event(5), now);
        gaps.observe(&b, Some(1), Claim::Event(100), now);
        assert_eq!(gaps.observe(&b, Some(1), Claim::Event(101), now), None);
        assert_eq!(gaps.observe(&a(1), Some(1), Claim::Event(6), now), None);
        assert_eq!(gaps.len(), 2);
    }

    #[test]
    fn silence_is_looked_into_once_per_period_then_forgotten() {
        let mut gaps = GapTracker::new(8);
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let (silence, forget) = (5 * second, 60 * second);
        gaps.observe(&a(1), Some(1), Claim::Event(5), start);
        assert!(gaps.silent(start + 4 * second, silence, forget).is_empty());
        assert_eq!(
            gaps.silent(start + 5 * second, silence, forget),
            vec![missing(5, u64::MAX).unwrap()]
        );
        assert!(gaps.silent(start + 6 * second, silence, forget).is_empty());
        gaps.recovered("a", 7);
        assert_eq!(
            gaps.silent(start + 10 * second, silence, forget),
            vec![missing(7, u64::MAX).unwrap()]
        );
        // Heard again: the recovered part is not asked for twice.
        let heard = start + 11 * second;
        assert_eq!(gaps.observe(&a(1), Some(1), Claim::Event(8), heard), None);
        assert!(gaps.silent(start + 12 * second, silence, forget).is_empty());
        assert!(gaps.silent(start + 71 * second, silence, forget).is_empty());
        assert!(gaps.is_empty(), "forgotten after a minute of silence");
    }

    #[test]
    fn the_node_heard_from_least_recently_makes_room() {
        let mut gaps = GapTracker::new(2);
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        let node = |name: &str| Origin {
            node: name.into(),
            boot: 1,
        };
        gaps.observe(&node("x"), Some(1), Claim::Event(1), at(0));
        gaps.observe(&node("y"), Some(1), Claim::Event(1), at(1));
        gaps.observe(&node("x"), Some(1), Claim::Event(2), at(2));
        gaps.observe(&node("z"), Some(1), Claim::Event(1), at(3));
        assert_eq!(gaps.len(), 2);
        // "x" is still known: a skipped number is a gap.
        let gap = gaps.observe(&node("x"), Some(1), Claim::Event(4), at(4));
        assert_eq!(gap.map(|m| (m.after, m.through)), Some((2, 3)));
    }
}
