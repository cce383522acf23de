//! The PostgreSQL backend's read side (`store/postgres/{query, count,
//! search, negentropy, export}.rs`), against a real PostgreSQL started by
//! the test:
//!
//! - every common filter shape is read along an index ending in
//!   `created_at` (no sequential scan of `event` or `tag`, no sort of a
//!   range's whole match set: a plain Sort only ever sorts rows that a
//!   per-range LIMIT already bounded), checked with EXPLAIN on a corpus
//!   large enough that a sort would be the planner's choice if it could;
//! - for random filters over one random corpus, PostgreSQL answers REQ,
//!   COUNT (with HyperLogLog), NIP-77 records, search and export exactly as
//!   the SQLite backend does, for anonymous, authenticated and
//!   unrestricted readers.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::services::Postgres;
use futures_util::future::join_all;
use nostr_relayd::config::Durability;
use nostr_relayd::nostr::{CanonicalEvent, Event, Filter};
use nostr_relayd::privacy::Readers;
use nostr_relayd::store::negentropy::NegItems;
use nostr_relayd::store::postgres::{PgOptions, PgStore};
use nostr_relayd::store::query::Order;
use nostr_relayd::store::{QueryLimits, Store, StoreOptions, unix_now};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const LIMITS: QueryLimits = QueryLimits {
    default_limit: 500,
    max_limit: 5000,
};

async fn open_postgres(url: String) -> PgStore {
    let options = PgOptions {
        url,
        replica_url: None,
        node: "test".into(),
        pool_size: 4,
        query_timeout: Duration::from_secs(30),
        max_write_batch: 256,
    };
    PgStore::open(&options, Box::new(|_| {}))
        .await
        .expect("PgStore opens")
}

/// One node of an EXPLAIN (text format) plan: its depth and its name.
fn nodes(plan: &[String]) -> Vec<(usize, String)> {
    plan.iter()
        .filter_map(|line| {
            let (depth, rest) = match line.find("->") {
                Some(at) => (at + 2, &line[at + 2..]),
                // The root is the only node line without an arrow; detail
                // lines ("Index Cond: …") are indented without one.
                None if !line.starts_with(' ') => (0, line.as_str()),
                None => return None,
            };
            let name = rest.trim_start();
            let name = name.split("  (").next().unwrap_or(name).to_owned();
            Some((depth, name))
        })
        .collect()
}

/// The plan's faults: a sequential scan of `event` or `tag`, or a plain
/// Sort whose input is not bounded by a LIMIT (a sort of a whole range).
fn faults(plan: &[String]) -> Vec<String> {
    let nodes = nodes(plan);
    let mut faults = Vec::new();
    for (index, (depth, name)) in nodes.iter().enumerate() {
        if name.starts_with("Seq Scan on event") || name.starts_with("Seq Scan on tag") {
            faults.push(name.clone());
        }
        if name == "Sort" {
            let bounded = nodes[index + 1..]
                .iter()
                .take_while(|(d, _)| d > depth)
                .any(|(_, n)| n == "Limit");
            if !bounded {
                faults.push(format!("unbounded Sort (node {index})"));
            }
        }
    }
    faults
}

#[test]
fn the_plan_reader_finds_unbounded_sorts_and_seq_scans() {
    let plan: Vec<String> = [
        "Limit  (cost=1..2 rows=1 width=1)",
        "  ->  Sort  (cost=1..2 rows=1 width=1)",
        "        Sort Key: e.created_at DESC, e.id",
        "        ->  Seq Scan on event e  (cost=1..2 rows=1 width=1)",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        faults(&plan),
        ["unbounded Sort (node 1)", "Seq Scan on event e"]
    );
    let good: Vec<String> = [
        "Sort  (cost=1..2 rows=1 width=1)",
        "  ->  Nested Loop  (cost=1..2 rows=1 width=1)",
        "        ->  Function Scan on unnest k",
        "        ->  Limit  (cost=1..2 rows=1 width=1)",
        "              ->  Index Scan using event_kind_time on event e",
    ]
    .map(String::from)
    .to_vec();
    assert!(faults(&good).is_empty());
}

/// A corpus written with SQL (fast), shaped so that every range a common
/// filter reads holds thousands of rows: 200,000 events of 100 authors,
/// `p` tags over 100 pubkeys, `t` tags over 20 topics.
const BIG_CORPUS: &str = "
    SET session_replication_role = replica; -- test data: no triggers, no FK checks
    INSERT INTO event (id, pubkey, created_at, kind, expires_at, origin_node, origin_seq, json)
    SELECT sha256(int8send(i)), sha256(int8send(i % 100)), 1700000000 + i / 3,
           (ARRAY[1, 1, 1, 1, 7, 7, 6, 1, 7, 4, 1059, 1])[1 + (i * 7) % 12],
           CASE WHEN i % 50 = 0 THEN 1700000000 + i END, 'big', i, '{}'
    FROM generate_series(1, 200000) i;
    INSERT INTO tag (name, value, created_at, event_seq, kind)
    SELECT 'p', sha256(int8send(seq % 100 + 1000)), created_at, seq, kind FROM event;
    INSERT INTO tag (name, value, created_at, event_seq, kind)
    SELECT 't', convert_to('topic' || (seq % 20), 'UTF8'), created_at, seq, kind
    FROM event WHERE seq % 2 = 0;
    ANALYZE;
";

fn sha_hex(i: i64) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(i.to_be_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_shapes_read_index_ranges_ending_in_created_at() {
    let postgres = Postgres::shared();
    let url = postgres.create_database();
    let store = open_postgres(url.clone()).await;
    let started = std::time::Instant::now();
    postgres.sql(&url, BIG_CORPUS);
    println!("big corpus written: {:?}", started.elapsed());
    let (a, b, p, id) = (sha_hex(1), sha_hex(2), sha_hex(1005), sha_hex(77));
    let shapes = [
        json!({"ids": [id]}),
        json!({"authors": [a, b], "kinds": [1, 7], "limit": 50}),
        json!({"authors": [a], "limit": 100}),
        // A home feed: 40 (author, kind) pairs, each kind's range scanned
        // for the authors before any per-pair seek.
        json!({"authors": (0..20).map(sha_hex).collect::<Vec<_>>(), "kinds": [1, 6], "limit": 50}),
        json!({"kinds": [1], "limit": 100}),
        json!({"kinds": [1, 6, 7], "limit": 100}),
        json!({"#p": [p], "kinds": [1, 7], "limit": 100}),
        json!({"#p": [p, sha_hex(1006)], "limit": 100}),
        json!({"#t": ["topic3"], "limit": 100}),
        json!({"since": 1700010000, "until": 1700020000, "limit": 100}),
        json!({"limit": 10}),
    ];
    // Unrestricted, and anonymous with private kinds (their exclusion is a
    // condition on each range): every range strictly ordered. An
    // authenticated reader's private parts (the author's own DMs, those
    // `p`-tagging them) are small ranges the planner may sort: only no
    // sequential scan is asked of them.
    let readers = [
        ("unrestricted", Readers::unrestricted(), true),
        ("anonymous", Readers::new(&[4, 1059], &[]), true),
        ("authenticated", Readers::new(&[4, 1059], &[[7; 32]]), false),
    ];
    // Not in the list: a residual tag condition (authors + #t). Whether
    // the planner tests it row by row along the author's range or hashes
    // the tag value's rows first depends on how many of the author's
    // events it expects to carry the tag; either way without a
    // sequential scan, which the last loop checks.
    for value in &shapes {
        let filter = Filter::from_value(value).unwrap();
        for (who, readers, strict) in &readers {
            let plan = store
                .explain_query(std::slice::from_ref(&filter), readers, LIMITS)
                .await
                .unwrap();
            let text = plan.join("\n");
            println!("{value} ({who}):\n{text}\n");
            assert!(text.contains("Index"), "{value} {who}: no index:\n{text}");
            assert!(!text.contains("Seq Scan"), "{value} {who}:\n{text}");
            if filter.authors.as_ref().is_some_and(|a| a.len() == 20) {
                assert!(text.contains("using event_kind_time"), "{value}:\n{text}");
            }
            if filter.ids.is_some() {
                // Sorted, but only the rows of the ids asked for.
                assert!(text.contains("using event_id"), "{value}:\n{text}");
            } else if *strict {
                let faults = faults(&plan);
                assert!(faults.is_empty(), "{value} {who}: {faults:?}\n{text}");
                // Each range read along an index ending in created_at, not
                // through a bitmap (which would need a sort).
                assert!(!text.contains("Bitmap"), "{value} {who}:\n{text}");
            }
            // COUNT reads the same ranges. Counting most of the table
            // (kinds 1, 6, 7, a time range) is a scan whatever the plan:
            // only selective shapes must use an index.
            // So is counting a home feed's 20 authors of 100 (a fifth).
            let home = filter.authors.as_ref().is_some_and(|a| a.len() == 20);
            let selective = !home
                && (filter.ids.is_some() || filter.authors.is_some() || !filter.tags.is_empty());
            if !selective {
                continue;
            }
            let count = store
                .explain_count(std::slice::from_ref(&filter), readers)
                .await
                .unwrap()
                .join("\n");
            assert!(!count.contains("Seq Scan"), "{value} {who}:\n{count}");
        }
    }
    let residual = json!({"authors": [sha_hex(2)], "#t": ["topic2"], "limit": 20});
    let filter = Filter::from_value(&residual).unwrap();
    for (who, readers, _) in &readers {
        let plan = store
            .explain_query(std::slice::from_ref(&filter), readers, LIMITS)
            .await
            .unwrap()
            .join("\n");
        assert!(!plan.contains("Seq Scan"), "{residual} {who}:\n{plan}");
    }
    // And the answers are right on the big corpus too (exactly one author
    // in #p's events per filter; the newest first).
    let filter = Filter::from_value(&json!({"kinds": [1], "limit": 3})).unwrap();
    let result = store
        .query(Arc::from(vec![filter]), Readers::unrestricted(), LIMITS)
        .await
        .unwrap();
    assert_eq!(result.events.len(), 3);
    assert_eq!(result.sent_ids.len(), 3);
    assert_eq!(result.snapshot, 0);
    store.close().await;
}

/// Words for contents: plain ASCII, so that FTS5's and PostgreSQL's
/// tokenizers split alike.
const WORDS: [&str; 8] = [
    "coffee", "nostr", "relay", "zap", "morning", "bitcoin", "tea", "apple",
];

/// A random corpus with many ties in time, replaceable and addressable
/// kinds, private kinds, expired and expiring events, tag values of every
/// encoding (hex, text, 32-byte text).
fn random_corpus(rng: &mut StdRng, pubkeys: &[[u8; 32]], count: usize) -> Vec<Event> {
    let now = unix_now();
    let mut events: Vec<Event> = Vec::new();
    let topics = ["a", "b", "nostr", &"x".repeat(32), &"y".repeat(40)];
    for _ in 0..count {
        let pubkey = pubkeys[rng.random_range(0..pubkeys.len())];
        let kind = [0u16, 1, 1, 1, 3, 4, 6, 7, 7, 1059, 30023, 10002][rng.random_range(0..12)];
        let mut tags: Vec<Vec<String>> = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            let tag = match rng.random_range(0..3) {
                0 => vec![
                    "p".to_owned(),
                    hex::encode(pubkeys[rng.random_range(0..pubkeys.len())]),
                ],
                1 if !events.is_empty() => vec![
                    "e".to_owned(),
                    hex::encode(events[rng.random_range(0..events.len())].id),
                ],
                _ => vec![
                    "t".to_owned(),
                    topics[rng.random_range(0..topics.len())].to_owned(),
                ],
            };
            tags.push(tag);
        }
        if kind == 30023 {
            tags.push(vec![
                "d".into(),
                ["", "x", "y"][rng.random_range(0..3)].into(),
            ]);
        }
        match rng.random_range(0..10) {
            0 => tags.push(vec!["expiration".into(), (now - 100).to_string()]),
            1 => tags.push(vec!["expiration".into(), (now + 100_000).to_string()]),
            _ => {}
        }
        let content: Vec<&str> = (0..rng.random_range(0..5))
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        let content = if kind == 0 {
            json!({"name": content.join(" ")}).to_string()
        } else {
            content.join(" ")
        };
        let mut event = Event {
            id: [0; 32],
            pubkey,
            created_at: 1_000 + rng.random_range(0..40),
            kind,
            tags,
            content,
            sig: [0; 64],
        };
        event.id = event.compute_id();
        events.push(event);
    }
    events
}

/// A random filter over the corpus' values.
fn random_filter(rng: &mut StdRng, pubkeys: &[[u8; 32]], events: &[Event]) -> Value {
    let mut filter = serde_json::Map::new();
    let pick_keys = |rng: &mut StdRng, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| hex::encode(pubkeys[rng.random_range(0..pubkeys.len())]))
            .collect()
    };
    if rng.random_bool(0.15) {
        let ids: Vec<String> = (0..rng.random_range(1..6))
            .map(|_| hex::encode(events[rng.random_range(0..events.len())].id))
            .collect();
        filter.insert("ids".into(), json!(ids));
    }
    if rng.random_bool(0.2) {
        // A home feed: at least 16 (author, kind) pairs, read by scanning
        // each kind's range first; a small limit is found within the scan's
        // budget, a large one (or quiet authors) falls back to the seeks.
        let mut authors = pubkeys.to_vec();
        let keep = rng.random_range(4..=authors.len());
        while authors.len() > keep {
            authors.remove(rng.random_range(0..authors.len()));
        }
        let authors: Vec<String> = authors.iter().map(hex::encode).collect();
        filter.insert("authors".into(), json!(authors));
        let mut kinds = vec![1u16, 6, 7, 4, 0, 1059, 30023, 3];
        kinds.truncate(rng.random_range(4..=8));
        filter.insert("kinds".into(), json!(kinds));
    } else {
        if rng.random_bool(0.4) {
            let n = rng.random_range(1..4);
            filter.insert("authors".into(), json!(pick_keys(rng, n)));
        }
        if rng.random_bool(0.5) {
            let kinds: Vec<u16> = (0..rng.random_range(1..4))
                .map(|_| [0u16, 1, 3, 4, 6, 7, 1059, 30023, 10002][rng.random_range(0..9)])
                .collect();
            filter.insert("kinds".into(), json!(kinds));
        }
    }
    if rng.random_bool(0.3) {
        let n = rng.random_range(1..3);
        filter.insert("#p".into(), json!(pick_keys(rng, n)));
    }
    if rng.random_bool(0.15) {
        let ids: Vec<String> = (0..rng.random_range(1..3))
            .map(|_| hex::encode(events[rng.random_range(0..events.len())].id))
            .collect();
        filter.insert("#e".into(), json!(ids));
    }
    if rng.random_bool(0.25) {
        let topics = ["a", "b", "nostr", &"x".repeat(32), &"y".repeat(40), "none"];
        let values: Vec<&str> = (0..rng.random_range(1..3))
            .map(|_| topics[rng.random_range(0..topics.len())])
            .collect();
        filter.insert("#t".into(), json!(values));
    }
    if rng.random_bool(0.3) {
        filter.insert("since".into(), json!(1_000 + rng.random_range(0..30)));
    }
    if rng.random_bool(0.3) {
        filter.insert("until".into(), json!(1_010 + rng.random_range(0..30)));
    }
    if rng.random_bool(0.6) {
        filter.insert("limit".into(), json!(rng.random_range(0..40)));
    }
    Value::Object(filter)
}

fn readers_for(rng: &mut StdRng, pubkeys: &[[u8; 32]]) -> (String, Readers) {
    match rng.random_range(0..3) {
        0 => ("unrestricted".into(), Readers::unrestricted()),
        1 => ("anonymous".into(), Readers::new(&[4, 1059], &[])),
        _ => {
            let me = pubkeys[rng.random_range(0..pubkeys.len())];
            (
                format!("authed as {}", &hex::encode(me)[..8]),
                Readers::new(&[4, 1059], &[me]),
            )
        }
    }
}

fn sorted(items: NegItems) -> Vec<(u64, [u8; 32])> {
    match items {
        NegItems::Found(mut found) => {
            found.sort_unstable();
            found
        }
        NegItems::TooMany => panic!("too many"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_answers_as_sqlite_does_for_random_filters() {
    let mut rng = StdRng::seed_from_u64(8);
    let pubkeys: Vec<[u8; 32]> = (0..8u8).map(|i| [i.wrapping_mul(37) ^ 0x5a; 32]).collect();
    let events = random_corpus(&mut rng, &pubkeys, 2500);
    let started = std::time::Instant::now();

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        Store::open(
            &dir.path().join("eq.sqlite"),
            &StoreOptions {
                durability: Durability::Normal,
                max_database_bytes: 0,
                reader_threads: 2,
                max_write_batch: 256,
                query_timeout: Duration::from_secs(30),
            },
            Box::new(|_| {}),
        )
        .unwrap(),
    );
    let postgres = Arc::new(open_postgres(Postgres::shared().create_database()).await);
    for chunk in events.chunks(100) {
        let inserts = chunk.iter().map(|event| {
            let (sqlite, postgres) = (sqlite.clone(), postgres.clone());
            let event = Arc::new(CanonicalEvent::new(event.clone()));
            async move {
                let in_sqlite = sqlite.insert(event.clone()).await.unwrap();
                let in_postgres = postgres.insert(event).await.unwrap();
                // Outcomes agree up to the sequence numbers.
                assert_eq!(
                    std::mem::discriminant(&in_sqlite),
                    std::mem::discriminant(&in_postgres)
                );
            }
        });
        join_all(inserts).await;
    }

    // The SQLite side of `export` is synchronous, on a connection of its own.
    let file = nostr_relayd::store::sqlite::open_connection(
        &dir.path().join("eq.sqlite"),
        Durability::Normal,
        true,
    )
    .unwrap();
    println!("corpus stored in both: {:?}", started.elapsed());
    let mut checked = 0;
    let mut nonempty = 0;
    for round in 0..300 {
        let (who, readers) = readers_for(&mut rng, &pubkeys);
        let values: Vec<Value> = (0..rng.random_range(1..4))
            .map(|_| random_filter(&mut rng, &pubkeys, &events))
            .collect();
        let filters: Arc<[Filter]> = values
            .iter()
            .map(|v| Filter::from_value(v).unwrap())
            .collect();
        let context = format!("round {round}, {who}: {}", json!(values));

        let want = sqlite
            .query(filters.clone(), readers.clone(), LIMITS)
            .await
            .unwrap();
        let got = postgres
            .query(filters.clone(), readers.clone(), LIMITS)
            .await
            .unwrap();
        assert_eq!(got.events, want.events, "REQ {context}");
        let ids: Vec<[u8; 32]> = got
            .events
            .iter()
            .map(|json| {
                Event::from_value(&serde_json::from_str(json).unwrap())
                    .unwrap()
                    .id
            })
            .collect();
        assert_eq!(got.sent_ids, ids, "sent_ids {context}");
        if !want.events.is_empty() {
            nonempty += 1;
        }

        for hll in [None, Some(8u8), Some(23)] {
            let want = sqlite
                .count(filters.clone(), readers.clone(), hll)
                .await
                .unwrap();
            let got = postgres
                .count(filters.clone(), readers.clone(), hll)
                .await
                .unwrap();
            assert_eq!(got, want, "COUNT hll {hll:?} {context}");
        }

        let first = filters[0].clone();
        let want = sqlite
            .negentropy_items(first.clone(), readers.clone(), 100_000)
            .await
            .unwrap();
        let got = postgres
            .negentropy_items(first.clone(), readers.clone(), 100_000)
            .await
            .unwrap();
        assert_eq!(sorted(got), sorted(want), "NIP-77 {context}");

        if readers.clone().restrict(&first).len() == 1 && round % 3 == 0 {
            // export reads everything (no reader): compare both orders.
            for order in [Order::NewestFirst, Order::OldestFirst] {
                let (want, got, _) = both_exports(&file, &postgres, &first, order).await;
                assert_eq!(got, want, "export {order:?} {context}");
            }
        }
        checked += 1;
    }
    println!(
        "{checked} rounds ({nonempty} REQs with events) agree: {:?}",
        started.elapsed()
    );
    assert!(
        nonempty > 100,
        "only {nonempty} of {checked} REQs found events"
    );

    // A whole export crosses pages (1,000 events each) inside a second of
    // ties: the keyset must neither skip nor repeat an event.
    for order in [Order::NewestFirst, Order::OldestFirst] {
        let (want, got, count) = both_exports(&file, &postgres, &Filter::default(), order).await;
        assert!(want.len() > 1000, "{} events", want.len());
        assert_eq!(count, got.len() as u64);
        assert_eq!(got, want, "export of everything {order:?}");
    }

    // The NIP-77 cap: too many is said, not cut.
    let everything = Filter::default();
    assert_eq!(
        postgres
            .negentropy_items(everything.clone(), Readers::unrestricted(), 10)
            .await
            .unwrap(),
        NegItems::TooMany
    );

    // NIP-50: the same events for the same words (ranking differs: bm25 in
    // SQLite, ts_rank here), with the same rules for extensions, empty
    // queries and unindexed kinds.
    for (round, search) in [
        "coffee",
        "Coffee tea",
        "\"nostr relay\"",
        "zap language:en",
        "language:en",
        "",
        "!!!",
        "apple OR",
        "-tea",
    ]
    .iter()
    .enumerate()
    {
        for extra in [
            json!({}),
            json!({"kinds": [1]}),
            json!({"kinds": [0, 7]}),
            json!({"kinds": [7]}),
            json!({"authors": [hex::encode(pubkeys[round % 8])]}),
            json!({"#t": ["nostr"], "limit": 5}),
        ] {
            let mut value = extra.clone();
            value["search"] = json!(search);
            if value.get("limit").is_none() {
                value["limit"] = json!(1000);
            }
            let filters: Arc<[Filter]> = Arc::from(vec![Filter::from_value(&value).unwrap()]);
            for readers in [Readers::unrestricted(), Readers::new(&[4], &[pubkeys[1]])] {
                let want = sqlite
                    .query(filters.clone(), readers.clone(), LIMITS)
                    .await
                    .unwrap();
                let got = postgres
                    .query(filters.clone(), readers.clone(), LIMITS)
                    .await
                    .unwrap();
                assert_eq!(got.events.len(), want.events.len(), "search {value}");
                if value["limit"] == json!(1000) {
                    let want: BTreeSet<&String> = want.events.iter().collect();
                    let got: BTreeSet<&String> = got.events.iter().collect();
                    assert_eq!(got, want, "search {value}");
                }
            }
        }
    }
    postgres.close().await;
}

/// `export` of `filter` in `order` from the SQLite file and from
/// PostgreSQL: (SQLite's lines, PostgreSQL's lines, PostgreSQL's count).
async fn both_exports(
    file: &rusqlite::Connection,
    postgres: &PgStore,
    filter: &Filter,
    order: Order,
) -> (Vec<String>, Vec<String>, u64) {
    let mut sqlite_lines = Vec::new();
    nostr_relayd::store::export::each_event::<rusqlite::Error>(
        file,
        filter,
        order,
        unix_now(),
        |json| {
            sqlite_lines.push(json.to_owned());
            Ok(())
        },
    )
    .unwrap();
    let mut postgres_lines = Vec::new();
    let count = postgres
        .export_each(filter, order, unix_now(), &mut |json| {
            postgres_lines.push(json.to_owned());
            Ok(())
        })
        .await
        .unwrap();
    (sqlite_lines, postgres_lines, count)
}
