//! Micro-benchmarks of the per-event hot path: parsing a client message,
//! hashing the id, checking the signature, serializing the stored form, and
//! matching a filter; and the Schnorr verification ceiling of the machine:
//! a batch of distinct signed events checked on one core, then on every
//! core, reported in events per second. Run with `cargo bench --bench protocol`.

use std::hint::black_box;
use std::thread;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nostr::prelude::*;
use nostr_relayd::corpus::Corpus;
use nostr_relayd::nostr::{ClientMessage, Event as RelayEvent, Filter};

/// Distinct pre-signed events per iteration of the verify benches.
const VERIFY_BATCH: usize = 1024;

fn sample_event() -> Event {
    let keys =
        Keys::parse("6b911fd37cdf5c81d4c0adb1ab7fa822ed253ab0ad9aa18d77257c88b29b718e").unwrap();
    let content = "GM nostr! A typical note of a few hundred bytes, with \"quotes\", a \\ backslash,\nnewlines, emoji 🤙 and 日本語. ".repeat(3);
    EventBuilder::new(Kind::TextNote, content)
        .tags([
            Tag::parse(["e", &"a".repeat(64)]).unwrap(),
            Tag::parse(["p", &"b".repeat(64)]).unwrap(),
            Tag::parse(["t", "nostr"]).unwrap(),
        ])
        .finalize(&keys)
        .unwrap()
}

fn bench_protocol(c: &mut Criterion) {
    let signed = sample_event();
    let message = format!(r#"["EVENT",{}]"#, signed.as_json());
    let parsed = match ClientMessage::parse(&message) {
        Ok(ClientMessage::Event(event)) => *event,
        _ => unreachable!("the sample is a valid EVENT"),
    };
    c.bench_function("parse EVENT message", |b| {
        b.iter(|| ClientMessage::parse(black_box(&message)))
    });
    c.bench_function("compute id (canonical array + sha256)", |b| {
        b.iter(|| black_box(&parsed).compute_id())
    });
    c.bench_function("verify schnorr signature", |b| {
        b.iter(|| black_box(&parsed).verify_signature())
    });
    c.bench_function("canonical stored json", |b| {
        b.iter(|| black_box(&parsed).to_canonical_json())
    });
    let filter = Filter::from_value(&serde_json::json!({
        "kinds": [1, 6], "#t": ["nostr", "bitcoin"], "since": 1_000_000
    }))
    .unwrap();
    c.bench_function("filter match", |b| {
        b.iter(|| black_box(&filter).matches(black_box(&parsed)))
    });
    let value: serde_json::Value = serde_json::from_str(&signed.as_json()).unwrap();
    c.bench_function("event from JSON value", |b| {
        b.iter(|| RelayEvent::from_value(black_box(&value)))
    });
}

/// Verifies every event of `batch`; returns how many signatures are valid.
fn verify_all(batch: &[RelayEvent]) -> usize {
    batch
        .iter()
        .filter(|event| black_box(*event).verify_signature().is_ok())
        .count()
}

/// Verifies `batch` split over `threads` scoped threads, as the relay's
/// verifier pool would; returns how many signatures are valid.
fn verify_parallel(batch: &[RelayEvent], threads: usize) -> usize {
    let chunk = batch.len().div_ceil(threads).max(1);
    thread::scope(|scope| {
        let handles: Vec<_> = batch
            .chunks(chunk)
            .map(|part| scope.spawn(move || verify_all(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("verify thread"))
            .sum()
    })
}

fn bench_verify_throughput(c: &mut Criterion) {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let batch: Vec<RelayEvent> = Corpus::new(1, 1000, 1_700_000_000)
        .generate(VERIFY_BATCH, cores)
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        verify_all(&batch),
        batch.len(),
        "the corpus is validly signed"
    );
    let mut group = c.benchmark_group("schnorr verify batch");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.sample_size(10);
    group.bench_function("single core", |b| b.iter(|| verify_all(&batch)));
    group.bench_function(format!("all cores ({cores} threads)"), |b| {
        b.iter(|| verify_parallel(&batch, cores))
    });
    group.finish();
}

criterion_group!(benches, bench_protocol, bench_verify_throughput);
criterion_main!(benches);
