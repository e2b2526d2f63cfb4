//! Self-telemetry when the trace collector does not answer: spans are dropped, never queued
//! without bound, every dropped span is counted (queue full or export failed) and exposed
//! as `loxone_exporter_telemetry_spans_dropped_total`, the failure is logged once and the
//! header value never shows. One test per binary: it installs the global subscriber so the
//! export thread's log line is captured.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use loxone_exporter::config::{LogFormat, LogLevel, OtlpConfig};
use loxone_exporter::metrics::model::Value;
use loxone_exporter::metrics::Collector;
use loxone_exporter::telemetry::{self, TelemetryCollector, TelemetryOptions, TelemetryStats};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const SPANS: u64 = 500;

#[test]
fn a_dead_collector_drops_and_counts_spans_and_logs_once() {
    // a black hole: connections are accepted by the kernel (backlog) but never answered,
    // so every export waits for its 300 ms timeout
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = hole.local_addr().unwrap().port();
    let vars = [
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{dead}/v1/traces"),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "http/protobuf".to_string(),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "authorization=Bearer%20t0p-s3cret".to_string(),
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "300".to_string()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "16".to_string()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string()),
    ];
    let env = move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let otlp = OtlpConfig::default();
    let logs = LogBuf::default();
    let w = logs.clone();
    let (dispatch, guard) = telemetry::build(
        &TelemetryOptions {
            log_level: LogLevel::Info,
            log_format: LogFormat::Json,
            otlp: &otlp,
            instance_id: "selftest:9504".into(),
            env: &env,
        },
        BoxMakeWriter::new(move || w.clone()),
    )
    .expect("telemetry");
    assert!(guard.traces_enabled());
    tracing::dispatcher::set_global_default(dispatch).expect("global subscriber");

    let started = std::time::Instant::now();
    for i in 0..SPANS {
        // only the crate's own spans are traced
        tracing::info_span!(target: "loxone_exporter::burst", "unit.burst", i).in_scope(|| {});
    }
    // had ending a span waited for the exporter, this would take 500/8 × 300 ms ≈ 19 s;
    // not waiting, it takes milliseconds (the bound leaves room for a loaded machine; the
    // queue_full count below shows the same without a clock)
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    guard.force_flush();
    guard.shutdown(Duration::from_secs(2));

    let stats = TelemetryStats::global();
    assert_eq!(stats.exported(), 0);
    assert!(
        stats.dropped_queue_full() > 0,
        "the bounded queue overflowed"
    );
    assert!(
        stats.dropped_export_failed() > 0,
        "exports to the dead port failed"
    );
    assert_eq!(
        stats.dropped_queue_full() + stats.dropped_export_failed(),
        SPANS,
        "every span is accounted for"
    );

    let mut families = Vec::new();
    TelemetryCollector(stats.clone()).collect(&mut families);
    let dropped = families
        .iter()
        .find(|f| f.name == "loxone_exporter_telemetry_spans_dropped_total")
        .expect("dropped family");
    let value = |reason: &str| {
        dropped
            .samples
            .iter()
            .find(|s| s.labels.get("reason") == Some(reason))
            .map(|s| match s.value {
                Value::Number(v) => v,
                _ => f64::NAN,
            })
            .unwrap()
    };
    assert_eq!(value("queue_full"), stats.dropped_queue_full() as f64);
    assert_eq!(value("export_failed"), stats.dropped_export_failed() as f64);

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    let warnings = text
        .lines()
        .filter(|l| l.contains("self-telemetry spans cannot be exported"))
        .count();
    assert_eq!(warnings, 1, "logged once: {text}");
    assert!(!text.contains("t0p-s3cret"), "{text}");
    drop(hole);
}
