//! The OTLP metric export over gRPC carries the W3C `traceparent` of its attempt span as
//! request metadata when self-telemetry is on, and none when `OTEL_SDK_DISABLED=true`. A
//! small in-test gRPC collector (tonic server from opentelemetry-proto) records the
//! metadata; spans go to the console exporter.

mod common;
#[path = "support/otlp/harness.rs"]
mod harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{eventually, TestCollector};
use loxone_exporter::config::{LogFormat, LogLevel, OtlpProtocol};
use loxone_exporter::metrics::health::{ExportState, OtlpHealth};
use loxone_exporter::metrics::Registry;
use loxone_exporter::otlp::export::run_export_loop_with_stats;
use loxone_exporter::otlp::health::ExportStats;
use loxone_exporter::telemetry::{self, TelemetryOptions};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Option<String>>>>);

#[tonic::async_trait]
impl MetricsService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let tp = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.0.lock().unwrap().push(tp);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Runs the export loop (one tick, then the final export on shutdown) against the
/// recorder; returns the `traceparent` of each request.
fn exported_traceparents(disabled: bool) -> Vec<Option<String>> {
    let vars: Vec<(&str, String)> = vec![
        ("OTEL_TRACES_EXPORTER", "console".into()),
        (
            "OTEL_SDK_DISABLED",
            if disabled { "true" } else { "false" }.into(),
        ),
    ];
    let env = move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let recorder = Recorder::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = harness::otlp_config(&format!("http://127.0.0.1:{port}"), OtlpProtocol::Grpc);
    config.interval = Duration::from_secs(60);
    let (dispatch, guard) = telemetry::build(
        &TelemetryOptions {
            log_level: LogLevel::Error,
            log_format: LogFormat::Json,
            otlp: &config,
            instance_id: "selftest:9504".into(),
            env: &env,
        },
        BoxMakeWriter::new(std::io::sink),
    )
    .unwrap();
    assert_eq!(guard.traces_enabled(), !disabled);
    {
        let _default = tracing::dispatcher::set_default(&dispatch);
        rt.block_on(async {
            let server = tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(
                        MetricsServiceServer::new(recorder.clone())
                            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
                    )
                    .serve_with_incoming(common::accepted(listener)),
            );
            let registry = Arc::new(Registry::new());
            registry.register(TestCollector::new());
            let health = OtlpHealth::new(ExportState::Disabled);
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run_export_loop_with_stats(
                config.clone(),
                registry,
                health.clone(),
                ExportStats::new(),
                "selftest:9504".into(),
                shutdown.clone(),
            ));
            eventually(Duration::from_secs(15), "first export", || {
                (!recorder.0.lock().unwrap().is_empty()).then_some(())
            })
            .await;
            shutdown.cancel();
            task.await.unwrap();
            server.abort();
        });
    }
    guard.shutdown(Duration::from_secs(1));
    let got = recorder.0.lock().unwrap().clone();
    got
}

#[test]
fn grpc_metric_requests_carry_traceparent_only_when_telemetry_is_on() {
    let on = exported_traceparents(false);
    assert!(on.len() >= 2, "tick and final export: {on:?}");
    let parsed: Vec<Vec<String>> = on
        .iter()
        .map(|tp| {
            let tp = tp.as_deref().expect("traceparent metadata");
            tp.split('-').map(str::to_owned).collect()
        })
        .collect();
    for p in &parsed {
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(p[0], "00");
        assert_eq!(p[1].len(), 32);
        assert_eq!(p[2].len(), 16);
        assert_eq!(p[3], "01", "sampled");
    }
    assert_ne!(parsed[0][1], parsed[1][1], "each export is its own trace");

    let off = exported_traceparents(true);
    assert!(!off.is_empty());
    assert!(off.iter().all(Option::is_none), "{off:?}");
}
