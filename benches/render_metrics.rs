//! `/metrics` rendering cost from the state store: snapshot + text encoding at 10k and
//! 100k series (issue 2 targets: ≤ 2 ms and ≤ 25 ms on one core), and gzip on top.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loxone_exporter::config::FilterConfig;
use loxone_exporter::loxone::structure::{Control, Place, StateRef, Structure};
use loxone_exporter::loxone::uuid::LoxUuid;
use loxone_exporter::metrics::self_health::{ProcessMetrics, SelfHealth};
use loxone_exporter::metrics::text::encode_to_string;
use loxone_exporter::metrics::{Registry, StateStore};

const STATE_NAMES: [&str; 10] = [
    "value",
    "active",
    "tempActual",
    "tempTarget",
    "position",
    "total",
    "actual",
    "jLocked",
    "error",
    "mode",
];

/// A structure with `series` numeric states spread over controls of 10 states each,
/// in 20 rooms and 10 categories.
fn synthetic(series: usize) -> (Structure, Vec<LoxUuid>) {
    let mut uuids = Vec::with_capacity(series);
    let mut next = 1u32;
    let mut fresh = || {
        next += 1;
        LoxUuid::from_fields(next, 0x0100, 0x0200, [0xff, 0xff, 1, 2, 3, 4, 5, 6])
    };
    let rooms: HashMap<String, Place> = (0..20)
        .map(|i| {
            let u = fresh();
            (
                u.to_string(),
                Place {
                    uuid: Some(u),
                    name: format!("Room {i}"),
                    kind: "0".into(),
                },
            )
        })
        .collect();
    let cats: HashMap<String, Place> = (0..10)
        .map(|i| {
            let u = fresh();
            (
                u.to_string(),
                Place {
                    uuid: Some(u),
                    name: format!("Category {i}"),
                    kind: "lights".into(),
                },
            )
        })
        .collect();
    let room_keys: Vec<String> = rooms.keys().cloned().collect();
    let cat_keys: Vec<String> = cats.keys().cloned().collect();
    let mut controls = Vec::new();
    for c in 0..series.div_ceil(STATE_NAMES.len()) {
        let mut states = Vec::new();
        for name in STATE_NAMES {
            if uuids.len() == series {
                break;
            }
            let u = fresh();
            uuids.push(u);
            states.push(StateRef {
                name: name.into(),
                uuids: vec![u],
                is_array: false,
            });
        }
        controls.push(Control {
            uuid_action: fresh().to_string(),
            name: format!("Control {c}"),
            control_type: "IRoomControllerV2".into(),
            room: Some(room_keys[c % room_keys.len()].clone()),
            category: Some(cat_keys[c % cat_keys.len()].clone()),
            states,
            format: Some("%.1f°".into()),
            sub_controls: Vec::new(),
        });
    }
    let s = Structure {
        last_modified: "2026-01-01 00:00:00".into(),
        rooms,
        categories: cats,
        controls,
        ..Structure::default()
    };
    (s, uuids)
}

fn registry_with(series: usize) -> Registry {
    let (s, uuids) = synthetic(series);
    let store = StateStore::new(&FilterConfig::default(), false).expect("store");
    let ms = store.add_miniserver("bench");
    ms.load_structure(&s);
    ms.apply_values(uuids.iter().enumerate().map(|(i, u)| (*u, i as f64 * 0.37)));
    let registry = Registry::new();
    registry.register(store);
    registry.register(Arc::new(SelfHealth::new()));
    registry.register(Arc::new(ProcessMetrics::new()));
    registry
}

fn bench_render(c: &mut Criterion) {
    let mut group = c.benchmark_group("render_metrics");
    for series in [10_000usize, 100_000] {
        let registry = registry_with(series);
        let bytes = encode_to_string(&registry.snapshot()).len();
        group.throughput(Throughput::Elements(series as u64));
        group.bench_with_input(
            BenchmarkId::new("snapshot_and_text", series),
            &series,
            |b, _| b.iter(|| encode_to_string(&registry.snapshot()).len()),
        );
        group.bench_with_input(
            BenchmarkId::new("snapshot_only", series),
            &series,
            |b, _| b.iter(|| registry.snapshot().series_count()),
        );
        group.bench_with_input(
            BenchmarkId::new("text_and_gzip", series),
            &series,
            |b, _| {
                b.iter(|| {
                    let text = encode_to_string(&registry.snapshot());
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(text.as_bytes()).expect("gzip");
                    enc.finish().expect("gzip").len()
                })
            },
        );
        eprintln!("render_metrics/{series}: {bytes} bytes of text");
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench_render
}
criterion_main!(benches);
