//! The PostgreSQL writer's pipelined batches (src/store/postgres/writer.rs,
//! `apply_pipelined`) against SQLite's writer, which applies every event
//! one after another: the same shuffled events — replacement chains with
//! equal timestamps, NIP-09 deletions before and after their targets (by
//! id and by address, by the author and by someone else), NIP-62 requests
//! with gift wraps addressed to their authors, reports, exact duplicates —
//! queued at once, so that PostgreSQL commits them in large batches, must
//! get the same answer each, the same sequence numbers and leave the same
//! events stored.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::services::Postgres;
use common::{canonical, pg_client};
use nostr::prelude::*;
use nostr_relayd::config::Durability;
use nostr_relayd::nostr::CanonicalEvent;
use nostr_relayd::store::postgres::{PgOptions, PgStore};
use nostr_relayd::store::sqlite::SqliteStore;
use nostr_relayd::store::{StoreError, StoreOptions, WriteOutcome};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::oneshot::Receiver;

fn keys(n: u64) -> Keys {
    Keys::parse(&format!("{:064x}", n + 1)).expect("a valid secret key")
}

/// Events whose answers depend on each other and on their order, in two
/// phases: the first is committed before the second is queued, so that the
/// second batch's up-front probes see stored events that events of the
/// same batch then change.
fn scenario(seed: u64) -> [Vec<Event>; 2] {
    let mut dice = StdRng::seed_from_u64(seed);
    let authors: Vec<Keys> = (0..4).map(|n| keys(seed * 100 + n)).collect();
    let base = 1_700_000_000u64;
    let mut events = Vec::new();
    for i in 0..90 {
        let author = &authors[dice.random_range(0..authors.len())];
        // Few distinct timestamps: replacements tie often (lowest id wins).
        let created_at = base + dice.random_range(0..12) as u64 * 10;
        let event = match dice.random_range(0..6) {
            0 | 1 => common::event(author, 1, &format!("note {i}"), &[&["t", "x"]], created_at),
            2 => common::event(
                author,
                0,
                &format!("{{\"name\":\"v{i}\"}}"),
                &[],
                created_at,
            ),
            3 => common::event(
                author,
                3,
                "",
                &[&["p", &authors[0].public_key().to_hex()]],
                created_at,
            ),
            4 => {
                let d = format!("d{}", dice.random_range(0..3));
                common::event(
                    author,
                    30023,
                    &format!("article {i}"),
                    &[&["d", &d]],
                    created_at,
                )
            }
            _ => {
                // A gift wrap (its own throwaway author) for one of the authors.
                let recipient = authors[dice.random_range(0..authors.len())]
                    .public_key()
                    .to_hex();
                common::event(
                    &keys(seed * 100 + 50 + i),
                    1059,
                    "sealed",
                    &[&["p", &recipient]],
                    created_at,
                )
            }
        };
        events.push(event);
    }
    let targets = events.clone();
    for i in 0..14 {
        // By the target's author (or for a gift wrap its recipient) or, one
        // time in four, by someone with no right to delete it.
        let target = &targets[dice.random_range(0..targets.len())];
        let by = &authors[dice.random_range(0..authors.len())];
        let owner = authors.iter().find(|a| a.public_key() == target.pubkey);
        let deleter = match owner {
            Some(owner) if dice.random_range(0..4) != 0 => owner,
            _ => by,
        };
        let created_at = base + dice.random_range(0..12) as u64 * 10;
        let event = if i % 3 == 0 && target.kind.as_u16() >= 30000 {
            let d = target.tags.identifier().unwrap_or_default().to_owned();
            let address = format!("30023:{}:{d}", deleter.public_key().to_hex());
            common::event(deleter, 5, "", &[&["a", &address]], created_at)
        } else {
            common::event(deleter, 5, "", &[&["e", &target.id.to_hex()]], created_at)
        };
        events.push(event);
    }
    for _ in 0..2 {
        let author = &authors[dice.random_range(0..authors.len())];
        let created_at = base + 40 + dice.random_range(0..4) as u64 * 10;
        events.push(common::event(
            author,
            62,
            "",
            &[&["relay", "ALL_RELAYS"]],
            created_at,
        ));
    }
    for _ in 0..3 {
        let target = targets[dice.random_range(0..targets.len())].id.to_hex();
        let reporter = &authors[dice.random_range(0..authors.len())];
        events.push(common::event(
            reporter,
            1984,
            "",
            &[&["e", &target, "spam"]],
            base + 5,
        ));
    }
    for _ in 0..20 {
        let again = events[dice.random_range(0..events.len())].clone();
        events.push(again);
    }
    // Fisher–Yates.
    for i in (1..events.len()).rev() {
        events.swap(i, dice.random_range(0..i + 1));
    }
    let mut second = events.split_off(events.len() / 2);
    let mut first = events;
    // Stories that need a probe taken before an earlier event of the same
    // batch changed what it read, one per rule of the writer's `Touched`,
    // at the head of the second batch (a request to vanish, last, makes
    // every later probe of its batch be read again).
    let story = |n: u64| keys(seed * 100 + 80 + n);
    let (a, b, c, d) = (story(0), story(1), story(2), story(3));
    let mut head = Vec::new();
    // A NIP-09 `e` deletion removes the stored version of an address: an
    // older version arriving after it is stored (else it is superseded).
    let current = common::event(&a, 30023, "v2", &[&["d", "s"]], base + 100);
    first.push(current.clone());
    head.push(common::event(
        &a,
        5,
        "",
        &[&["e", &current.id.to_hex()]],
        base + 200,
    ));
    head.push(common::event(&a, 30023, "v1", &[&["d", "s"]], base + 50));
    // A NIP-09 `a` deletion before a version of that address.
    let address = format!("30023:{}:t", d.public_key().to_hex());
    first.push(common::event(&d, 30023, "old", &[&["d", "t"]], base + 10));
    head.push(common::event(&d, 5, "", &[&["a", &address]], base + 200));
    head.push(common::event(&d, 30023, "late", &[&["d", "t"]], base + 150));
    // The recipient of a gift wrap deletes it (NIP-09) before it arrives:
    // refused (the wrap's author is not the deleter).
    let wrap = common::event(
        &story(5),
        1059,
        "sealed",
        &[&["p", &c.public_key().to_hex()]],
        base,
    );
    head.push(common::event(
        &c,
        5,
        "",
        &[&["e", &wrap.id.to_hex()]],
        base + 20,
    ));
    head.push(wrap);
    // A NIP-62 request removes and tombstones a stored gift wrap for its
    // author: the wrap sent again is refused (else a duplicate).
    let wrap = common::event(
        &story(4),
        1059,
        "sealed",
        &[&["p", &b.public_key().to_hex()]],
        base,
    );
    first.push(wrap.clone());
    head.push(common::event(
        &b,
        62,
        "",
        &[&["relay", "ALL_RELAYS"]],
        base + 10,
    ));
    head.push(wrap);
    head.append(&mut second);
    let second = head;
    [first, second]
}

type Outcomes = Vec<Result<WriteOutcome, StoreError>>;

/// Queues each phase's events at once with `queue` (a store's
/// `insert_queued`), then waits for their answers, phase after phase.
async fn queue_phases(
    phases: &[Vec<Arc<CanonicalEvent>>],
    queue: impl Fn(
        Arc<CanonicalEvent>,
    ) -> Result<Receiver<Result<WriteOutcome, StoreError>>, StoreError>,
) -> Outcomes {
    let mut outcomes = Vec::new();
    for events in phases {
        let queued: Vec<_> = events
            .iter()
            .map(|event| queue(event.clone()).unwrap())
            .collect();
        for outcome in queued {
            outcomes.push(outcome.await.expect("an answer"));
        }
    }
    outcomes
}

/// The outcomes with each stored event's seq replaced by its rank among
/// the stored ones (1, 2, 3, …): SQLite's seq is an AUTOINCREMENT rowid,
/// which an ignored duplicate insert advances, PostgreSQL's origin_seq has
/// no hole; both must number the stored events in the same order.
fn ranked(outcomes: &Outcomes) -> Outcomes {
    let mut seqs: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(WriteOutcome::Stored { seq, .. }) => Some(*seq),
            _ => None,
        })
        .collect();
    seqs.sort_unstable();
    outcomes
        .iter()
        .map(|o| match o {
            Ok(WriteOutcome::Stored { seq, removed }) => Ok(WriteOutcome::Stored {
                seq: seqs.binary_search(seq).expect("a stored seq") as u64 + 1,
                removed: *removed,
            }),
            other => other.clone(),
        })
        .collect()
}

async fn on_sqlite(phases: &[Vec<Arc<CanonicalEvent>>]) -> (Outcomes, BTreeSet<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reference.sqlite");
    let options = StoreOptions {
        durability: Durability::Normal,
        max_database_bytes: 0,
        reader_threads: 1,
        max_write_batch: 1024,
        query_timeout: Duration::from_secs(30),
    };
    let store = SqliteStore::open(&path, &options, Box::new(|_| {})).unwrap();
    let outcomes = queue_phases(phases, |event| store.insert_queued(event)).await;
    store.close();
    let db = rusqlite::Connection::open(&path).unwrap();
    let mut statement = db.prepare("SELECT id FROM event").unwrap();
    let stored = statement
        .query_map([], |row| row.get::<_, Vec<u8>>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (outcomes, stored)
}

/// The outcomes, the ids stored, and the sizes of the batches committed.
async fn on_postgres(
    phases: &[Vec<Arc<CanonicalEvent>>],
) -> (Outcomes, BTreeSet<Vec<u8>>, Vec<usize>) {
    let url = Postgres::shared().create_database();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    let options = PgOptions {
        url: url.clone(),
        replica_url: None,
        node: "solo".into(),
        pool_size: 2,
        query_timeout: Duration::from_secs(30),
        max_write_batch: 1024,
    };
    let store = PgStore::open(
        &options,
        Box::new(move |committed| {
            seen.lock()
                .unwrap()
                .push(committed.iter().map(|c| c.seq).collect::<Vec<u64>>());
        }),
    )
    .await
    .unwrap();
    // Queued without a pause: on this single-threaded runtime the writer
    // task runs only once every event is in its channel, so that it takes
    // them in as few batches as its lock budget allows.
    let outcomes = queue_phases(phases, |event| store.insert_queued(event)).await;
    store.close().await;
    let db = pg_client(&url).await;
    let stored = db
        .query("SELECT id FROM event", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, Vec<u8>>(0))
        .collect();
    // origin_seq: every stored answer's number on its row (unless the row
    // was removed since), and the node's sequence at the last one.
    let numbers: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(WriteOutcome::Stored { seq, .. }) => Some(*seq),
            _ => None,
        })
        .collect();
    let last: i64 = db
        .query_one(
            "SELECT last_seq FROM node_sequence WHERE node = 'solo'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(last as usize, numbers.len(), "origin_seq has no hole");
    let max_row: Option<i64> = db
        .query_one("SELECT max(origin_seq) FROM event", &[])
        .await
        .unwrap()
        .get(0);
    assert!(max_row.unwrap_or(0) <= last);
    // on_commit in commit order, numbered 1, 2, 3, …
    let batches = batches.lock().unwrap().clone();
    let committed: Vec<u64> = batches.iter().flatten().copied().collect();
    assert_eq!(committed, (1..=numbers.len() as u64).collect::<Vec<_>>());
    (outcomes, stored, batches.iter().map(Vec::len).collect())
}

/// The writer's log, kept to look for its fallbacks.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn batched_writes_end_as_one_by_one_writes_on_sqlite() {
    // The answers must come from the pipelined path itself, not from its
    // fallbacks (a batch rolled back and run again one event at a time),
    // which would hide a wrong decision: the writer's debug log says when
    // it falls back. One thread: the writer task logs on it too.
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("nostr_relayd::store::postgres::writer=debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut seen = BTreeSet::new();
    for seed in 1..=6u64 {
        let phases: Vec<Vec<Arc<CanonicalEvent>>> = scenario(seed)
            .iter()
            .map(|phase| phase.iter().map(canonical).collect())
            .collect();
        let events: Vec<Arc<CanonicalEvent>> = phases.iter().flatten().cloned().collect();
        let (expected, expected_stored) = on_sqlite(&phases).await;
        let expected = ranked(&expected);
        let (got, stored, batches) = on_postgres(&phases).await;
        // origin_seq numbers are ranks already (checked in on_postgres).
        assert_eq!(ranked(&got), got, "seed {seed}");
        assert!(
            batches.iter().any(|&n| n >= 40),
            "seed {seed}: the events were not committed in large batches: {batches:?}"
        );
        if std::env::var("PIPELINE_DEBUG").is_ok() {
            eprintln!("seed {seed}: batches {batches:?}");
            for (index, (event, (want, have))) in
                events.iter().zip(expected.iter().zip(&got)).enumerate()
            {
                eprintln!(
                    "{index} kind {} {} sqlite {want:?} pg {have:?}",
                    event.event.kind,
                    &hex::encode(event.event.id)[..8]
                );
            }
        }
        for (index, (event, (want, have))) in
            events.iter().zip(expected.iter().zip(&got)).enumerate()
        {
            assert_eq!(
                want,
                have,
                "seed {seed}, event {index} (kind {}, id {}): SQLite answered {want:?}, \
                 PostgreSQL {have:?}",
                event.event.kind,
                hex::encode(event.event.id)
            );
        }
        assert_eq!(
            expected_stored, stored,
            "seed {seed}: the stored events differ"
        );
        let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
        assert!(
            !logged.contains("event by event") && !logged.contains("one event at a time"),
            "seed {seed}: the writer fell back to one event at a time:\n{logged}"
        );
        for outcome in &expected {
            seen.insert(match outcome {
                Ok(WriteOutcome::Stored { removed: 0, .. }) => "stored",
                Ok(WriteOutcome::Stored { .. }) => "stored, removing others",
                Ok(WriteOutcome::Duplicate) => "duplicate",
                Ok(WriteOutcome::Deleted) => "deleted",
                Ok(WriteOutcome::Vanished) => "vanished",
                Ok(WriteOutcome::Superseded) => "superseded",
                Err(_) => "error",
            });
        }
    }
    // The scenarios reach every rule (else this test proves little).
    for answer in [
        "stored",
        "stored, removing others",
        "duplicate",
        "deleted",
        "vanished",
        "superseded",
    ] {
        assert!(seen.contains(answer), "no event was {answer}: {seen:?}");
    }
}
