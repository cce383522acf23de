//! Micro-benchmarks of the per-event hot path: parsing a client message,
//! hashing the id, checking the signature, serializing the stored form, and
//! matching a filter. Run with `cargo bench --bench protocol`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nostr::prelude::*;
use nostr_relayd::nostr::{ClientMessage, Event as RelayEvent, Filter};

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

criterion_group!(benches, bench_protocol);
criterion_main!(benches);
