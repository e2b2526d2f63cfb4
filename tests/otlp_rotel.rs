//! OTLP export against a real collector: rotel receives over gRPC and over HTTP, and the
//! test compares what it printed with the registry the test filled (names, types,
//! per-bucket histogram counts, start times, attributes, resource attributes), then checks
//! the end-of-series marker and that a 50k-series registry gets through rotel's default
//! 4 MiB gRPC limit by splitting.

mod common;
#[path = "support/otlp/harness.rs"]
mod harness;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use harness::*;
use loxone_exporter::config::{OtlpCompression, OtlpProtocol};
use loxone_exporter::metrics::health::{ExportState, OtlpHealth};
use loxone_exporter::metrics::Registry;
use loxone_exporter::otlp::convert::{build_resource, unix_nanos, Converter, ResourceInfo};
use loxone_exporter::otlp::export::{
    local_host_name, process_start_time, run_export_loop_with_stats,
};
use loxone_exporter::otlp::health::{health_collector_with_stats, ExportStats};
use loxone_exporter::otlp::transport::{ExportOutcome, Transport};
use tokio_util::sync::CancellationToken;

async fn roundtrip(protocol: OtlpProtocol) {
    let Some(rotel_bin) = common::component(common::ROTEL) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rotel = Rotel::start(&rotel_bin, dir.path(), common::free_port);
    let endpoint = match protocol {
        OtlpProtocol::Grpc => format!("http://127.0.0.1:{}", rotel.grpc_port),
        OtlpProtocol::HttpProtobuf => format!("http://127.0.0.1:{}/v1/metrics", rotel.http_port),
    };
    let mut config = otlp_config(&endpoint, protocol);
    config.interval = Duration::from_secs(1);

    let collector = TestCollector::new();
    let registry = Arc::new(Registry::new());
    registry.register(collector.clone());
    let health = OtlpHealth::new(ExportState::Disabled);
    let stats = ExportStats::new();
    registry.register(health_collector_with_stats(health.clone(), stats.clone()));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_export_loop_with_stats(
        config,
        registry.clone(),
        health.clone(),
        stats.clone(),
        "myhost:9504".into(),
        shutdown.clone(),
    ));

    let dump = eventually(Duration::from_secs(15), "metrics at rotel", || {
        let d = rotel.dump();
        (!d.points("test_events_total").is_empty()).then_some(d)
    })
    .await;
    let process_start = unix_nanos(process_start_time(SystemTime::now()));

    let res = &dump.resources[0];
    let attr = |k: &str| res.attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(attr("service.name"), "loxone-test");
    assert_eq!(attr("service.version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(attr("service.instance.id"), "myhost:9504");
    assert_eq!(attr("host.name"), local_host_name());
    assert_eq!(attr("deployment.environment"), "itest");
    assert_eq!(
        res.scope,
        format!("loxone-exporter {}", env!("CARGO_PKG_VERSION"))
    );

    // gauge
    let g = dump.metrics("test_temperature_celsius")[0];
    assert_eq!(g.data_type, "Gauge");
    assert_eq!(g.description, "Room temperature");
    assert_eq!(g.unit, "");
    let by_room = |room: &str| {
        g.points
            .iter()
            .find(|p| p.attributes.get("room").map(String::as_str) == Some(room))
            .unwrap_or_else(|| panic!("no {room} point"))
    };
    assert_eq!(by_room("kitchen").value.as_deref(), Some("21.5"));
    assert_eq!(
        by_room("kitchen").attributes.get("miniserver").unwrap(),
        "ms1"
    );
    assert_eq!(by_room("bedroom").value.as_deref(), Some("18"));
    assert_eq!(by_room("cellar").value.as_deref(), Some("NaN"));
    assert_eq!(by_room("kitchen").start, 0);
    let first_time = by_room("kitchen").time;
    assert!(first_time >= process_start);

    // counter
    let c = dump.metrics("test_events_total")[0];
    assert_eq!(c.data_type, "Sum");
    assert_eq!(c.monotonic, Some(true));
    assert_eq!(
        c.temporality.as_deref(),
        Some("AGGREGATION_TEMPORALITY_CUMULATIVE")
    );
    assert_eq!(c.points[0].value.as_deref(), Some("42"));
    assert_eq!(c.points[0].attributes.get("kind").unwrap(), "door");
    assert_eq!(
        c.points[0].start, process_start,
        "counter start = process start"
    );

    // histogram: per-bucket counts from the cumulative model buckets
    let h = dump.metrics("test_duration_seconds")[0];
    assert_eq!(h.data_type, "Histogram");
    assert_eq!(
        h.temporality.as_deref(),
        Some("AGGREGATION_TEMPORALITY_CUMULATIVE")
    );
    let hp = &h.points[0];
    assert_eq!(hp.attributes.get("op").unwrap(), "read");
    assert_eq!(
        hp.bounds,
        HIST_BUCKETS.iter().map(|b| b.0).collect::<Vec<_>>()
    );
    let mut expected = Vec::new();
    let mut prev = 0;
    for (_, cum) in HIST_BUCKETS {
        expected.push(cum - prev);
        prev = cum;
    }
    expected.push(HIST_COUNT - prev);
    assert_eq!(hp.buckets, expected);
    assert_eq!(hp.buckets, vec![2, 3, 2, 2]);
    assert_eq!(hp.count, Some(HIST_COUNT));
    assert_eq!(hp.sum, Some(HIST_SUM));
    assert_eq!(hp.start, process_start);

    // info
    let i = dump.metrics("test_build_info")[0];
    assert_eq!(i.data_type, "Sum");
    assert_eq!(i.monotonic, Some(false));
    assert_eq!(i.points[0].value.as_deref(), Some("1"));
    assert_eq!(i.points[0].attributes.get("version").unwrap(), "1.2.3");
    assert_eq!(i.points[0].attributes.get("revision").unwrap(), "abc");

    // the health families travel too
    assert!(!dump.metrics("loxone_otlp_export_status").is_empty());

    // a vanished series is ended with one point without a value (NoRecordedValue)
    collector.with_bedroom.store(false, Ordering::SeqCst);
    let dump = eventually(Duration::from_secs(15), "stale marker at rotel", || {
        let d = rotel.dump();
        d.points("test_temperature_celsius")
            .iter()
            .any(|(_, p)| {
                p.attributes.get("room").map(String::as_str) == Some("bedroom") && p.value.is_none()
            })
            .then_some(d)
    })
    .await;
    let stale_points = |d: &Dump| -> Vec<u64> {
        d.points("test_temperature_celsius")
            .into_iter()
            .filter(|(_, p)| p.value.is_none())
            .map(|(_, p)| p.time)
            .collect()
    };
    let stale = stale_points(&dump).len();
    let marker_time = stale_points(&dump)[0];
    // sent once: wait until rotel has printed two later exports (their counter points,
    // which travel in the same request after the gauge), then count the markers again
    let later = eventually(
        Duration::from_secs(15),
        "two exports after the marker at rotel",
        || {
            let d = rotel.dump();
            let after = d
                .points("test_events_total")
                .iter()
                .filter(|(_, p)| p.time > marker_time)
                .count();
            (after >= 2).then_some(d)
        },
    )
    .await;
    let stale_later = stale_points(&later).len();
    assert_eq!(stale, 1);
    assert_eq!(stale_later, 1, "stale marker repeated");
    // counter start time constant over exports
    let starts: Vec<u64> = later
        .points("test_events_total")
        .iter()
        .map(|(_, p)| p.start)
        .collect();
    assert!(starts.len() >= 3);
    assert!(starts.iter().all(|s| *s == process_start));
    let times: Vec<u64> = later
        .points("test_events_total")
        .iter()
        .map(|(_, p)| p.time)
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "fresh snapshot every export: {times:?}"
    );

    let st = health.get();
    assert_eq!(st.consecutive_failures, 0);
    assert!(st.last_success.is_some());
    assert_eq!(st.last_error, None);
    assert!(stats.exported_points() > 0);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(6), task)
        .await
        .expect("loop stops within the timeout")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_reaches_rotel_correctly_converted() {
    roundtrip(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_reaches_rotel_correctly_converted() {
    roundtrip(OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_series_reach_rotel_over_grpc_split_under_4_mib() {
    let Some(rotel_bin) = common::component(common::ROTEL) else {
        return;
    };
    const SERIES: usize = 50_000;
    let registry = Arc::new(Registry::new());
    registry.register(Arc::new(BigCollector(SERIES)));

    // unsplit, this registry is more than rotel's default 4 MiB gRPC limit
    let resource = build_resource(&ResourceInfo {
        service_name: "s".into(),
        instance_id: "h:1".into(),
        host_name: "h".into(),
        extra: vec![],
    });
    let snap = registry.snapshot();
    let whole = Converter::new(resource.clone(), SystemTime::now(), usize::MAX).convert(&snap);
    assert_eq!(whole.bodies.len(), 1);
    assert!(
        whole.bodies[0].len() > 4 * 1024 * 1024,
        "registry too small for this test"
    );

    let dir = tempfile::tempdir().unwrap();
    let rotel = Rotel::start_with(&rotel_bin, dir.path(), common::free_port, "basic");
    let mut config = otlp_config(
        &format!("http://127.0.0.1:{}", rotel.grpc_port),
        OtlpProtocol::Grpc,
    );
    config.compression = OtlpCompression::None;
    config.timeout = Duration::from_secs(30);
    // ... and rotel does refuse it, so the split below is what gets the data there
    let unsplit = Transport::new(&config)
        .expect("transport")
        .send(whole.bodies[0].clone())
        .await;
    assert!(
        // OUT_OF_RANGE is retryable per the OTLP spec: unsplit, this would be retried forever
        matches!(&unsplit, ExportOutcome::Retry { reason, .. } if reason.contains("OUT_OF_RANGE") && reason.contains("too large")),
        "{} bytes in one request: {unsplit:?}",
        whole.bodies[0].len()
    );
    let split =
        Converter::new(resource, SystemTime::now(), config.max_request_bytes).convert(&snap);
    assert!(split.bodies.len() >= 2);
    assert!(split
        .bodies
        .iter()
        .all(|b| b.len() <= config.max_request_bytes));

    let health = OtlpHealth::new(ExportState::Disabled);
    let stats = ExportStats::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_export_loop_with_stats(
        config,
        registry,
        health.clone(),
        stats.clone(),
        "h:1".into(),
        shutdown.clone(),
    ));
    eventually(Duration::from_secs(60), "first export done", || {
        (stats.attempts() >= 1).then_some(())
    })
    .await;
    let st = health.get();
    assert_eq!(st.last_error, None, "export failed");
    assert_eq!(st.state, ExportState::Idle);
    assert_eq!(stats.exported_points(), SERIES as u64);
    let received = eventually(Duration::from_secs(20), "all points at rotel", || {
        let n = rotel.received_points();
        (n >= SERIES as u64).then_some(n)
    })
    .await;
    assert_eq!(received, SERIES as u64);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(40), task)
        .await
        .unwrap()
        .unwrap();
}

/// The commonest OTLP mistake, the protocol and the port mixed up, against rotel's two real
/// receivers: gRPC sent to the OTLP/HTTP port and HTTP/protobuf sent to the gRPC port both
/// fail with an error that says which port and protocol belong together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_sent_to_the_other_protocols_port_says_so() {
    let Some(rotel_bin) = common::component(common::ROTEL) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rotel = Rotel::start(&rotel_bin, dir.path(), common::free_port);
    let registry = Registry::new();
    registry.register(TestCollector::new());
    let resource = build_resource(&ResourceInfo {
        service_name: "s".into(),
        instance_id: "h:1".into(),
        host_name: "h".into(),
        extra: vec![],
    });
    let body = Converter::new(resource, SystemTime::now(), usize::MAX)
        .convert(&registry.snapshot())
        .bodies
        .remove(0);

    let grpc_at_http = otlp_config(
        &format!("http://127.0.0.1:{}", rotel.http_port),
        OtlpProtocol::Grpc,
    );
    let outcome = Transport::new(&grpc_at_http)
        .unwrap()
        .send(body.clone())
        .await;
    assert!(
        matches!(&outcome, ExportOutcome::Drop { reason }
            if reason.contains("set protocol to http/protobuf") && reason.contains("4318")),
        "{outcome:?}"
    );

    let http_at_grpc = otlp_config(
        &format!("http://127.0.0.1:{}/v1/metrics", rotel.grpc_port),
        OtlpProtocol::HttpProtobuf,
    );
    let outcome = Transport::new(&http_at_grpc).unwrap().send(body).await;
    assert!(
        matches!(&outcome, ExportOutcome::Retry { reason, .. }
            if reason.contains("set protocol to grpc") && reason.contains("4317")),
        "{outcome:?}"
    );
}
