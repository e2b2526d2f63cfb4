//! The exporter's own traces go to the metrics collector with the headers the configuration
//! chose, and only over TLS when `tls.enabled` asks for it. Raw listeners and a small gRPC
//! trace collector record what arrives. `OTEL_EXPORTER_OTLP_HEADERS`, outranked by the
//! file's header of the same name, is set in the process environment: the OpenTelemetry
//! library reads it there itself and must not win.
//!
//! One test in this binary: it sets a process environment variable.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use loxone_exporter::config::{LogFormat, LogLevel, OtlpConfig, OtlpProtocol};
use loxone_exporter::secret::Secret;
use loxone_exporter::telemetry::{self, TelemetryOptions};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

const FROM_FILE: &str = "Bearer FROM-FILE";

fn config(endpoint: String, protocol: OtlpProtocol) -> OtlpConfig {
    OtlpConfig {
        enabled: true,
        endpoint,
        protocol,
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(5),
        headers: vec![("Authorization".into(), Secret::new(FROM_FILE))],
        ..OtlpConfig::default()
    }
}

/// Builds self-telemetry for `otlp`, records one span and flushes it.
fn export_one_span(otlp: &OtlpConfig) {
    let env = |k: &str| (k == "OTEL_BSP_SCHEDULE_DELAY").then(|| "100".to_string());
    let (dispatch, guard) = telemetry::build(
        &TelemetryOptions {
            log_level: LogLevel::Error,
            log_format: LogFormat::Json,
            otlp,
            instance_id: "selftest:9504".into(),
            env: &env,
        },
        BoxMakeWriter::new(std::io::sink),
    )
    .expect("telemetry");
    assert!(guard.traces_enabled());
    tracing::dispatcher::with_default(&dispatch, || {
        let span = tracing::info_span!(target: "loxone_exporter", "headers.test");
        let _entered = span.enter();
    });
    guard.force_flush();
    guard.shutdown(Duration::from_secs(1));
}

/// A listener that keeps the first request's bytes (up to its headers' end, or whatever
/// came before a TLS client gave up) and answers an empty 200.
fn raw_listener() -> (u16, JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut sock = loop {
            match listener.accept() {
                Ok((sock, _)) => break sock,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(_) => return b"(nothing came)".to_vec(),
            }
        };
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.first() == Some(&0x16) {
                // a TLS ClientHello: not HTTP, nothing more to learn
                return got;
            }
        }
        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        got
    });
    (port, task)
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let auth = request
            .metadata()
            .get_all("authorization")
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join(" | ");
        self.0.lock().unwrap().push(auth);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[test]
fn traces_keep_the_configured_headers_and_tls() {
    // SAFETY: set before any thread of this binary reads the environment (its only test)
    unsafe {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20FROM-ENV",
        )
    };

    // OTLP/HTTP: the file's header, not the variable's
    let (port, server) = raw_listener();
    export_one_span(&config(
        format!("http://127.0.0.1:{port}/v1/metrics"),
        OtlpProtocol::HttpProtobuf,
    ));
    let request = String::from_utf8_lossy(&server.join().unwrap()).to_ascii_lowercase();
    assert!(request.starts_with("post /v1/traces "), "{request}");
    assert!(
        request.contains(&format!(
            "authorization: {}",
            FROM_FILE.to_ascii_lowercase()
        )),
        "{request}"
    );
    assert!(!request.contains("from-env"), "{request}");

    // OTLP/HTTP with tls.enabled and an http:// endpoint: TLS from the first byte, so the
    // header never crosses the network in clear text (it went as plain HTTP)
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let (port, server) = raw_listener();
    let mut tls = config(
        format!("http://127.0.0.1:{port}/v1/metrics"),
        OtlpProtocol::HttpProtobuf,
    );
    tls.tls.enabled = true;
    tls.tls.ca_file = Some(ca);
    export_one_span(&tls);
    let first = server.join().unwrap();
    assert_eq!(
        first.first(),
        Some(&0x16),
        "not a TLS handshake: {:?}",
        String::from_utf8_lossy(&first)
    );
    assert!(!String::from_utf8_lossy(&first).contains("FROM-"));

    // gRPC: the file's header, not the variable's
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let recorder = Recorder::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(recorder.clone()))
            .serve_with_incoming(common::accepted(listener)),
    );
    export_one_span(&config(
        format!("http://127.0.0.1:{port}"),
        OtlpProtocol::Grpc,
    ));
    let seen = recorder.0.lock().unwrap().clone();
    assert!(!seen.is_empty(), "no trace export arrived");
    assert!(seen.iter().all(|a| a == FROM_FILE), "{seen:?}");
}
