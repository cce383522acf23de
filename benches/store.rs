//! Micro-benchmarks of the SQL cost of each common filter shape on a large
//! database built from the deterministic corpus (seed 1, 1,000 authors).
//!
//! The database is built once, through `Store::insert` with many inserts in
//! flight so that group commit batches them, into
//! `target/bench-data/corpus-<N>-seed1.sqlite` (written under a `.partial`
//! name and renamed when complete), and reused while its recorded event
//! count, seed and schema match. `N` is 1,000,000 unless `BENCH_EVENTS`
//! says otherwise (e.g. `BENCH_EVENTS=100000` for a quick run). The events
//! are unsigned (zero signatures, real ids): the writer does not check them.
//!
//! Each shape is run through `Store::query` (the real path: a hop to the
//! reader pool, then SQL) and directly through `store::query::run` on a
//! plain connection, so that the thread-hop overhead shows separately. The
//! disk amplification (file size / stored JSON bytes), the space each table
//! and index takes, and the query plan of each shape are printed to stderr.
//!
//! Direct queries use `store::open_connection`, the relay's own pragmas.
//!
//! Run with `cargo bench --bench store`.

use nostr_relayd::privacy::Readers;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::future::join_all;
use nostr_relayd::config::Durability;
use nostr_relayd::corpus::{Corpus, QueryTargets};
use nostr_relayd::nostr::{CanonicalEvent, Filter};
use nostr_relayd::store::{self, QueryLimits, Store, StoreOptions, WriteOutcome, query, unix_now};
use rusqlite::{Connection, OptionalExtension};
use serde_json::{Value, json};

const SEED: u64 = 1;
const AUTHORS: usize = 1000;
/// The corpus's "now": fixed, so that the same seed gives the same events.
const CORPUS_NOW: i64 = 1_700_000_000;
const DEFAULT_EVENTS: usize = 1_000_000;
/// Inserts awaited together (one `join_all`).
const CHUNK: usize = 2_000;
/// Chunks in flight at once, so that the writer never waits for the generator.
const CHUNKS_IN_FLIGHT: usize = 4;
/// The relay's default limits.
const LIMITS: QueryLimits = QueryLimits {
    default_limit: 500,
    max_limit: 1000,
};
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

fn event_count() -> usize {
    match std::env::var("BENCH_EVENTS") {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("BENCH_EVENTS={text:?} is not a count")),
        Err(_) => DEFAULT_EVENTS,
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Normal,
        max_database_bytes: 0,
        reader_threads: 2,
        max_write_batch: 1024,
        query_timeout: QUERY_TIMEOUT,
    }
}

fn database_path(count: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-data")
        .join(format!("corpus-{count}-seed{SEED}.sqlite"))
}

/// A plain connection with the pragmas the relay's readers use.
fn plain_connection(path: &Path, read_only: bool) -> Connection {
    store::open_connection(path, Durability::Normal, read_only).expect("open the database")
}

/// The schema's SQL, to tell whether a saved database still matches the code.
fn schema_of(conn: &Connection) -> String {
    conn.query_row(
        "SELECT coalesce(group_concat(sql, ';'), '') FROM (SELECT sql FROM sqlite_master
         WHERE sql IS NOT NULL AND name NOT LIKE 'bench_%' ORDER BY type, name)",
        [],
        |row| row.get(0),
    )
    .unwrap()
}

/// The schema the current code creates, read from a fresh empty store.
fn current_schema() -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schema.sqlite");
    let store = Store::open(&path, &options(), Box::new(|_| {})).expect("open an empty store");
    store.close();
    drop(store);
    schema_of(&plain_connection(&path, true))
}

/// Whether the saved database was completely built with this count, seed
/// and schema; explains why not on stderr.
fn reusable(path: &Path, count: usize, schema: &str) -> bool {
    if !path.exists() {
        return false;
    }
    let conn = plain_connection(path, true);
    let meta: Option<(i64, i64)> = conn
        .query_row("SELECT events, seed FROM bench_meta", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()
        .unwrap_or(None);
    if meta != Some((count as i64, SEED as i64)) {
        eprintln!(
            "store: {} has {meta:?}, not ({count}, {SEED}); rebuilding",
            path.display()
        );
        return false;
    }
    if schema_of(&conn) != schema {
        eprintln!("store: {} has an older schema; rebuilding", path.display());
        return false;
    }
    true
}

fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// Builds the database of `count` corpus events at `path`, through the
/// store's writer. Returns the corpus, positioned after the last event.
fn build(path: &Path, count: usize) -> Corpus {
    let partial = path.with_extension("sqlite.partial");
    remove_database(&partial);
    remove_database(path);
    let store =
        Arc::new(Store::open(&partial, &options(), Box::new(|_| {})).expect("open the store"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut corpus = Corpus::new(SEED, AUTHORS, CORPUS_NOW);
    let started = Instant::now();
    let mut in_flight = VecDeque::new();
    let (mut stored, mut superseded, mut json_bytes) = (0u64, 0u64, 0u64);
    let mut tally = |outcomes: Vec<WriteOutcome>| {
        for outcome in outcomes {
            match outcome {
                WriteOutcome::Stored { .. } => stored += 1,
                WriteOutcome::Superseded => superseded += 1,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
    };
    let mut generated = 0;
    let mut reported = 0;
    while generated < count {
        let n = CHUNK.min(count - generated);
        let chunk: Vec<Arc<CanonicalEvent>> = (0..n)
            .map(|_| Arc::new(CanonicalEvent::new(corpus.next_unsigned().1)))
            .collect();
        json_bytes += chunk.iter().map(|e| e.json.len() as u64).sum::<u64>();
        generated += n;
        let store = store.clone();
        in_flight.push_back(runtime.spawn(async move {
            join_all(chunk.into_iter().map(|event| store.insert(event)))
                .await
                .into_iter()
                .map(|outcome| outcome.expect("insert"))
                .collect::<Vec<_>>()
        }));
        if in_flight.len() >= CHUNKS_IN_FLIGHT {
            tally(runtime.block_on(in_flight.pop_front().unwrap()).unwrap());
        }
        if generated - reported >= 50_000 || generated == count {
            reported = generated;
            let secs = started.elapsed().as_secs_f64();
            let rate = generated as f64 / secs;
            eprintln!(
                "store: built {generated}/{count} events in {secs:.0} s ({rate:.0}/s, ETA {:.0} s)",
                (count - generated) as f64 / rate
            );
        }
    }
    for handle in in_flight {
        tally(runtime.block_on(handle).unwrap());
    }
    store.close();
    drop(store);
    drop(runtime);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "store: built {count} events in {secs:.1} s ({:.0} events/s): {stored} stored, \
         {superseded} superseded (replaceable kinds 0 and 3), {json_bytes} JSON bytes generated",
        count as f64 / secs
    );
    let conn = plain_connection(&partial, false);
    conn.execute_batch(
        "CREATE TABLE bench_meta (events INTEGER, seed INTEGER, build_secs REAL, json_bytes INTEGER)",
    )
    .unwrap();
    conn.execute(
        "INSERT INTO bench_meta VALUES (?1, ?2, ?3, ?4)",
        (count as i64, SEED as i64, secs, json_bytes as i64),
    )
    .unwrap();
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
        .unwrap();
    assert_eq!(busy, 0, "the final checkpoint could not complete");
    drop(conn);
    std::fs::rename(&partial, path).expect("rename the finished database");
    remove_database(&partial);
    corpus
}

/// Opens (building if needed) the database and returns the query targets.
fn database(count: usize) -> (PathBuf, QueryTargets) {
    let path = database_path(count);
    let schema = current_schema();
    let mut corpus = if reusable(&path, count, &schema) {
        eprintln!("store: reusing {}", path.display());
        // The same seed gives the same events: replay them for the targets.
        let mut corpus = Corpus::new(SEED, AUTHORS, CORPUS_NOW);
        for _ in 0..count {
            corpus.next_unsigned();
        }
        corpus
    } else {
        eprintln!("store: building {} ({count} events)", path.display());
        build(&path, count)
    };
    (path, corpus.query_targets())
}

/// Prints the file size over the stored JSON bytes, and what takes the space.
fn print_footprint(path: &Path) {
    let conn = plain_connection(path, true);
    let file_bytes = std::fs::metadata(path).unwrap().len();
    let (events, json_bytes): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(length(CAST(json AS BLOB))), 0) FROM event",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let tags: i64 = conn
        .query_row("SELECT count(*) FROM tag", [], |row| row.get(0))
        .unwrap();
    let (build_secs, generated_json): (f64, i64) = conn
        .query_row("SELECT build_secs, json_bytes FROM bench_meta", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    let free_pages: i64 = conn
        .query_row("PRAGMA freelist_count", [], |row| row.get(0))
        .unwrap();
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .unwrap();
    eprintln!(
        "store: {} is {file_bytes} bytes for {events} stored events ({tags} tag rows), \
         {json_bytes} bytes of stored JSON: disk amplification {:.2}x \
         ({:.2}x of the {generated_json} JSON bytes generated); {free_pages} free pages \
         of {page_size} bytes; built in {build_secs:.1} s",
        path.display(),
        file_bytes as f64 / json_bytes as f64,
        file_bytes as f64 / generated_json as f64,
    );
    let space: rusqlite::Result<Vec<(String, i64)>> = conn
        .prepare(
            "SELECT name, sum(pgsize) FROM dbstat WHERE aggregate = FALSE GROUP BY name ORDER BY 2 DESC",
        )
        .and_then(|mut stmt| {
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        });
    match space {
        Ok(space) => {
            for (name, bytes) in space {
                eprintln!(
                    "store:   {name:<24} {bytes:>14} bytes ({:.2}x JSON)",
                    bytes as f64 / json_bytes as f64
                );
            }
        }
        Err(error) => eprintln!("store: no dbstat ({error})"),
    }
}

fn hex_list<'a>(keys: impl IntoIterator<Item = &'a [u8; 32]>) -> Value {
    keys.into_iter().map(hex::encode).collect()
}

/// The common filter shapes, each as one REQ of one filter.
fn shapes(targets: &QueryTargets) -> Vec<(&'static str, Arc<[Filter]>)> {
    let ids: Vec<&[u8; 32]> = {
        let step = (targets.note_ids.len() / 20).max(1);
        targets.note_ids.iter().step_by(step).take(20).collect()
    };
    let most_active = &targets.pubkeys[0];
    let shapes = [
        (
            "home feed",
            json!({"authors": hex_list(&targets.follows), "kinds": [1, 6], "limit": 50}),
        ),
        ("thread", json!({"#e": [hex::encode(targets.hot_notes[0])]})),
        (
            "notifications",
            json!({"#p": [hex::encode(most_active)], "kinds": [1, 6, 7, 9735], "limit": 100}),
        ),
        (
            "profile",
            json!({"kinds": [0], "authors": [hex::encode(most_active)]}),
        ),
        ("global", json!({"kinds": [1], "limit": 100})),
        ("ids", json!({"ids": hex_list(ids)})),
    ];
    shapes
        .into_iter()
        .map(|(name, value)| {
            let filter = Filter::from_value(&value).expect("valid filter");
            (name, Arc::from(vec![filter]))
        })
        .collect()
}

fn bench_queries(c: &mut Criterion) {
    let count = event_count();
    let (path, targets) = database(count);
    print_footprint(&path);
    let shapes = shapes(&targets);
    let store = Store::open(&path, &options(), Box::new(|_| {})).expect("open the store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut conn = plain_connection(&path, true);
    for (name, filters) in &shapes {
        let direct = query::run(
            &mut conn,
            filters,
            &Readers::unrestricted(),
            LIMITS,
            unix_now(),
            Instant::now() + QUERY_TIMEOUT,
        )
        .expect("query");
        let via_store = runtime
            .block_on(store.query(filters.clone(), Readers::unrestricted(), LIMITS))
            .expect("query");
        assert_eq!(direct.events, via_store.events, "{name}: both paths agree");
        let plan = query::explain(&conn, &filters[0], unix_now()).expect("explain");
        eprintln!(
            "store: {name}: {} events returned; plan of its first range:\n    {}",
            direct.events.len(),
            plan.join("\n    ")
        );
    }
    let mut group = c.benchmark_group(format!("store query, {count} events"));
    group.sample_size(20);
    for (name, filters) in &shapes {
        group.bench_with_input(BenchmarkId::new(*name, "Store::query"), filters, |b, f| {
            b.iter(|| {
                runtime
                    .block_on(store.query(f.clone(), Readers::unrestricted(), LIMITS))
                    .expect("query")
            })
        });
        group.bench_with_input(BenchmarkId::new(*name, "query::run"), filters, |b, f| {
            b.iter(|| {
                query::run(
                    &mut conn,
                    f,
                    &Readers::unrestricted(),
                    LIMITS,
                    unix_now(),
                    Instant::now() + QUERY_TIMEOUT,
                )
                .expect("query")
            })
        });
    }
    group.finish();
    store.close();
}

criterion_group!(benches, bench_queries);
criterion_main!(benches);
