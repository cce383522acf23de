//! Micro-benchmarks of live fan-out: the cost of `Fanout::publish` (bucket
//! look-up of the candidates, then the full filter check of each) for one
//! new event, with 1k, 10k and 100k live subscriptions registered.
//!
//! The subscriptions are a realistic mix: home feeds (10–100 authors, kinds
//! 1 and 6), notifications (`#p` one pubkey, kinds 1/6/7/9735), threads
//! (`#e` one note), profile look-ups (1–20 authors, kind 0), kind-only feeds
//! (long-form, zaps, relay lists, …) and three match-all subscriptions. The
//! pubkey and note populations grow with the subscription count (a bigger
//! relay has more users), so a typical event has about the same number of
//! interested subscribers at every size. One "celebrity" author is followed
//! by exactly 97 home feeds.
//!
//! Cases, each measured at every size:
//! - `unrelated note`: a kind-1 note nobody follows or is tagged in; its
//!   only candidates are the 3 match-all subscriptions (3 deliveries). The
//!   relay's goal is that this stays flat from 1k to 100k subscriptions.
//! - `typical note`: a kind-1 note by a random user, tagging a random user
//!   and note: a handful of deliveries.
//! - `reaction by celebrity`: a kind-7 by the celebrity: 97 home-feed
//!   candidates whose `kinds: [1, 6]` rejects it (3 deliveries), i.e. the
//!   full-match cost of candidates that do not match.
//! - `note by celebrity`: a kind-1 by the celebrity: 100 deliveries.
//!
//! Every subscription has its own mailbox; the ones a case delivers to are
//! drained outside the timed section every 256 publishes, so no queue
//! overflows. Run with `cargo bench --bench fanout`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nostr_relayd::fanout::{Deliveries, Fanout, Mailbox, Overflow};
use nostr_relayd::nostr::{CanonicalEvent, Event, Filter};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const NOW: i64 = 1_700_000_000;
/// Home feeds that follow the celebrity; with the 3 match-all
/// subscriptions, a note by the celebrity reaches 100 subscriptions.
const CELEBRITY_FOLLOWERS: usize = 97;
const MATCH_ALL: usize = 3;
/// Publishes between two drains of the receiving mailboxes.
const DRAIN_EVERY: u64 = 256;
const MAILBOX_CAPACITY: usize = 1024;

/// A relay's live subscriptions, with every receiving end kept alive.
struct Relay {
    fanout: Fanout,
    receivers: Vec<Deliveries>,
    overflows: Vec<Arc<Overflow>>,
    /// Users (pubkeys) and notes that subscriptions refer to.
    users: Vec<[u8; 32]>,
    notes: Vec<[u8; 32]>,
    celebrity: [u8; 32],
}

fn hex_list<'a>(keys: impl IntoIterator<Item = &'a [u8; 32]>) -> Value {
    keys.into_iter().map(hex::encode).collect()
}

fn pick<'a>(rng: &mut StdRng, from: &'a [[u8; 32]]) -> &'a [u8; 32] {
    &from[rng.random_range(0..from.len())]
}

/// Registers `count` subscriptions of the realistic mix (see the module doc).
fn relay(count: usize, seed: u64) -> Relay {
    let mut rng = StdRng::seed_from_u64(seed);
    let users: Vec<[u8; 32]> = (0..4 * count).map(|_| rng.random()).collect();
    let notes: Vec<[u8; 32]> = (0..count).map(|_| rng.random()).collect();
    let celebrity: [u8; 32] = rng.random();
    let mut celebrity_follows = CELEBRITY_FOLLOWERS;
    let mut filters: Vec<Value> = Vec::with_capacity(count);
    for _ in 0..MATCH_ALL {
        filters.push(json!({"since": NOW - 3600}));
    }
    while filters.len() < count {
        let roll = rng.random_range(0..100);
        let filter = if roll < 40 {
            let n = rng.random_range(10..=100);
            let mut authors: Vec<[u8; 32]> = (0..n).map(|_| *pick(&mut rng, &users)).collect();
            if celebrity_follows > 0 {
                celebrity_follows -= 1;
                authors.push(celebrity);
            }
            json!({"authors": hex_list(&authors), "kinds": [1, 6], "limit": 200})
        } else if roll < 60 {
            let p = hex::encode(pick(&mut rng, &users));
            json!({"#p": [p], "kinds": [1, 6, 7, 9735], "limit": 100})
        } else if roll < 80 {
            json!({"#e": [hex::encode(pick(&mut rng, &notes))]})
        } else if roll < 90 {
            let n = rng.random_range(1..=20);
            let authors: Vec<[u8; 32]> = (0..n).map(|_| *pick(&mut rng, &users)).collect();
            json!({"authors": hex_list(&authors), "kinds": [0]})
        } else {
            const FEEDS: [u16; 6] = [0, 3, 30023, 9735, 10002, 1984];
            json!({"kinds": [FEEDS[rng.random_range(0..FEEDS.len())]], "limit": 50})
        };
        filters.push(filter);
    }
    assert_eq!(celebrity_follows, 0, "enough home feeds for the celebrity");
    let fanout = Fanout::new();
    let mut receivers = Vec::with_capacity(count);
    let mut overflows = Vec::with_capacity(count);
    for value in filters {
        let filter = Filter::from_value(&value).expect("valid filter");
        let (mailbox, receiver, overflow) = Mailbox::new(MAILBOX_CAPACITY);
        fanout.subscribe(mailbox, Arc::from(vec![filter]));
        receivers.push(receiver);
        overflows.push(overflow);
    }
    Relay {
        fanout,
        receivers,
        overflows,
        users,
        notes,
        celebrity,
    }
}

fn event(
    rng: &mut StdRng,
    pubkey: [u8; 32],
    kind: u16,
    tags: Vec<Vec<String>>,
) -> Arc<CanonicalEvent> {
    let event = Event {
        id: rng.random(),
        pubkey,
        created_at: NOW,
        kind,
        tags,
        content: "GM nostr! a typical note of a few words 🤙".to_owned(),
        sig: [0; 64],
    };
    Arc::new(CanonicalEvent::new(event))
}

fn tag(name: &str, value: &[u8; 32]) -> Vec<String> {
    vec![name.to_owned(), hex::encode(value)]
}

/// The benchmark cases for one relay: name and event.
fn cases(relay: &Relay, seed: u64) -> Vec<(&'static str, Arc<CanonicalEvent>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let nobody: [u8; 32] = rng.random();
    let no_note: [u8; 32] = rng.random();
    let hashtag = vec!["t".to_owned(), "nostr".to_owned()];
    let user = *pick(&mut rng, &relay.users);
    let tagged = *pick(&mut rng, &relay.users);
    let note = *pick(&mut rng, &relay.notes);
    vec![
        (
            "unrelated note",
            event(
                &mut rng,
                nobody,
                1,
                vec![tag("e", &no_note), tag("p", &nobody), hashtag.clone()],
            ),
        ),
        (
            "typical note",
            event(
                &mut rng,
                user,
                1,
                vec![tag("e", &note), tag("p", &tagged), hashtag.clone()],
            ),
        ),
        (
            "reaction by celebrity",
            event(
                &mut rng,
                relay.celebrity,
                7,
                vec![tag("e", &no_note), tag("p", &nobody)],
            ),
        ),
        (
            "note by celebrity",
            event(&mut rng, relay.celebrity, 1, vec![hashtag]),
        ),
    ]
}

/// Publishes `event` once and returns the mailboxes it reached.
fn receiving(relay: &mut Relay, event: &Arc<CanonicalEvent>) -> Vec<usize> {
    relay.fanout.publish(event, Some(0));
    relay
        .receivers
        .iter_mut()
        .enumerate()
        .filter_map(|(index, rx)| {
            let mut got = 0;
            while rx.try_recv().is_some() {
                got += 1;
            }
            (got > 0).then_some(index)
        })
        .collect()
}

fn bench_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout publish");
    group.throughput(Throughput::Elements(1));
    for (size_index, &size) in SIZES.iter().enumerate() {
        let started = Instant::now();
        let mut relay = relay(size, 1 + size_index as u64);
        eprintln!(
            "fanout: {size} subscriptions registered in {:.2?}",
            started.elapsed()
        );
        for (name, event) in cases(&relay, 100 + size_index as u64) {
            let targets = receiving(&mut relay, &event);
            eprintln!(
                "fanout: {size} subscriptions, {name}: {} deliveries per publish",
                targets.len()
            );
            let Relay {
                fanout, receivers, ..
            } = &mut relay;
            let mut seq = 1u64;
            group.bench_with_input(BenchmarkId::new(name, size), &event, |b, event| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(DRAIN_EVERY);
                        let start = Instant::now();
                        for _ in 0..n {
                            fanout.publish(event, Some(seq));
                            seq += 1;
                        }
                        elapsed += start.elapsed();
                        for &index in &targets {
                            while receivers[index].try_recv().is_some() {}
                        }
                        left -= n;
                    }
                    elapsed
                })
            });
        }
        assert!(
            relay
                .overflows
                .iter()
                .all(|o| !o.happened.load(Ordering::Relaxed)),
            "a mailbox overflowed: the bench did not drain it"
        );
    }
    group.finish();
}

criterion_group!(benches, bench_publish);
criterion_main!(benches);
