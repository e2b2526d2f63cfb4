//! Decode benchmarks for the Loxone protocol core (issue 3 targets: value tables at least
//! 20M entries/s on one core, a 5 MiB structure file in at most 50 ms).
//!
//! Run: `cargo bench --bench loxone_decode`.

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loxone_exporter::loxone::events::{
    encode_text_events, encode_value_events, parse_text_events, value_events, TextEvent, ValueEvent,
};
use loxone_exporter::loxone::header::{parse_header, Header, MessageKind, DEFAULT_MAX_PAYLOAD};
use loxone_exporter::loxone::structure::parse_structure;
use loxone_exporter::loxone::synth::structure_of_size;
use loxone_exporter::loxone::uuid::LoxUuid;

fn uuid(i: usize) -> LoxUuid {
    LoxUuid::from_fields(0x185b_0f92, (i >> 16) as u16, i as u16, [0xff; 8])
}

fn value_table(n: usize) -> Vec<u8> {
    let events: Vec<ValueEvent> = (0..n)
        .map(|i| ValueEvent {
            uuid: uuid(i),
            value: i as f64 * 0.5,
        })
        .collect();
    let mut buf = Vec::new();
    encode_value_events(&events, &mut buf);
    buf
}

fn text_table(n: usize) -> Vec<u8> {
    let texts = [
        "",
        "[",
        "on",
        "2017-12-13 16:37:44 +01:00:00",
        "{\"icon\":\"x\",\"color\":\"#fff\"}",
    ];
    let events: Vec<TextEvent> = (0..n)
        .map(|i| TextEvent {
            uuid: uuid(i),
            icon: LoxUuid::default(),
            text: Cow::Borrowed(texts[i % texts.len()]),
        })
        .collect();
    let mut buf = Vec::new();
    encode_text_events(&events, &mut buf);
    buf
}

fn bench_value_tables(c: &mut Criterion) {
    let mut g = c.benchmark_group("value_table");
    for n in [1_000usize, 100_000] {
        let buf = value_table(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("parse", n), &buf, |b, buf| {
            b.iter(|| {
                let mut sum = 0.0f64;
                let mut x = 0u8;
                for e in value_events(black_box(buf)).unwrap_or_else(|e| panic!("{e}")) {
                    sum += e.value;
                    x ^= e.uuid.to_wire()[3];
                }
                (sum, x)
            })
        });
    }
    g.finish();
}

fn bench_text_tables(c: &mut Criterion) {
    let mut g = c.benchmark_group("text_table");
    let n = 10_000usize;
    let buf = text_table(n);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::new("parse", n), |b| {
        b.iter(|| {
            parse_text_events(black_box(&buf))
                .unwrap_or_else(|e| panic!("{e}"))
                .len()
        })
    });
    g.finish();
}

fn bench_header(c: &mut Criterion) {
    let bytes = Header::new(MessageKind::ValueStates, 24_000).encode(0x80);
    c.bench_function("header/parse", |b| {
        b.iter(|| parse_header(black_box(&bytes), DEFAULT_MAX_PAYLOAD))
    });
}

fn bench_structure(c: &mut Criterion) {
    let mut g = c.benchmark_group("structure");
    g.sample_size(20);
    let bytes = structure_of_size(5 * 1024 * 1024);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function(BenchmarkId::new("parse", "5MiB"), |b| {
        b.iter(|| {
            parse_structure(black_box(&bytes))
                .unwrap_or_else(|e| panic!("{e}"))
                .controls
                .len()
        })
    });
    // baselines on the same bytes: a full serde_json::Value tree, and a pure skip
    g.bench_function(BenchmarkId::new("serde_json_value", "5MiB"), |b| {
        b.iter(|| {
            serde_json::from_slice::<serde_json::Value>(black_box(&bytes)).map(|v| v.is_object())
        })
    });
    g.bench_function(BenchmarkId::new("serde_json_skip", "5MiB"), |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&bytes)).is_ok())
    });
    let real = include_bytes!("../tests/fixtures/structures/gen2-home-cz.json");
    g.throughput(Throughput::Bytes(real.len() as u64));
    g.bench_function(BenchmarkId::new("parse", "gen2-home-cz"), |b| {
        b.iter(|| {
            parse_structure(black_box(real))
                .unwrap_or_else(|e| panic!("{e}"))
                .controls
                .len()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_value_tables,
    bench_text_tables,
    bench_header,
    bench_structure
);
criterion_main!(benches);
