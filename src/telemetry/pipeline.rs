//! The span pipeline: OpenTelemetry SDK tracer provider, one bounded batch processor per
//! sink, the OTLP (tonic / reqwest) and console exporters, and the counters of exported
//! and dropped spans.
//!
//! Never blocking: a finished span goes into a bounded queue with `try_send` semantics; a
//! full queue drops the span and counts it. Exports run on the SDK's batch thread, which
//! also drives their network I/O on a private current-thread Tokio runtime (`OnRuntime`:
//! no I/O thread of its own), so a slow or dead collector costs the daemon's runtime
//! nothing. Exports are not retried: a batch that fails is dropped and counted (the next
//! batch is the next chance), and the first failure after a success is logged once at
//! `warn` (recovery at `info`).
//!
//! Does not: decide the settings (see `settings`), format logs (see `json`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::settings::{SamplerSetting, SpanSink, TelemetrySettings, TracesTarget};
use super::TelemetryError;
use crate::config::{OtlpCompression, OtlpProtocol};
use crate::metrics::model::{Family, LabelSet, MetricKind, Sample};
use crate::metrics::Collector;
use crate::otlp::transport::{
    error_chain, grpc_metadata, http_client, http_headers, read_body_capped, sanitize, tls_url,
    BadHeader, TlsFiles, MAX_RESPONSE_BYTES,
};

/// Counters of the span pipeline, exposed by [`TelemetryCollector`].
#[derive(Debug, Default)]
pub struct TelemetryStats {
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
    enabled: AtomicBool,
}

impl TelemetryStats {
    /// New zeroed counters.
    pub fn new() -> Arc<Self> {
        Arc::new(TelemetryStats::default())
    }

    /// The process-wide counters that [`super::init`] feeds.
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<TelemetryStats>> = OnceLock::new();
        GLOBAL.get_or_init(TelemetryStats::new).clone()
    }

    /// Spans accepted by a collector (or written to the console).
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped because the queue was full.
    pub fn dropped_queue_full(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed)
    }

    /// Spans dropped because their export failed.
    pub fn dropped_export_failed(&self) -> u64 {
        self.dropped_export_failed.load(Ordering::Relaxed)
    }
}

/// Exposes [`TelemetryStats`] as `loxone_exporter_telemetry_spans_exported_total` and
/// `loxone_exporter_telemetry_spans_dropped_total{reason="queue_full"|"export_failed"}`
/// (nothing while traces are off).
pub struct TelemetryCollector(pub Arc<TelemetryStats>);

impl Collector for TelemetryCollector {
    fn collect(&self, out: &mut Vec<Family>) {
        let s = &self.0;
        if !s.enabled.load(Ordering::Relaxed) {
            return;
        }
        out.push(Family::single(
            "loxone_exporter_telemetry_spans_exported_total",
            "Self-telemetry spans the trace exporter delivered.",
            MetricKind::Counter,
            s.exported() as f64,
        ));
        let mut dropped = Family::new(
            "loxone_exporter_telemetry_spans_dropped_total",
            "Self-telemetry spans dropped, by reason (queue_full: the bounded export queue was full; export_failed: the collector did not accept the batch).",
            MetricKind::Counter,
        );
        let [queue_full, export_failed] = drop_reason_labels();
        dropped.samples.push(Sample::number(
            queue_full.clone(),
            s.dropped_queue_full() as f64,
        ));
        dropped.samples.push(Sample::number(
            export_failed.clone(),
            s.dropped_export_failed() as f64,
        ));
        out.push(dropped);
    }
}

/// The `reason` label sets of the dropped-spans family, built once: the collector runs on
/// every scrape and export, and building a label set (names, escaped values) each time was
/// most of its cost (callgrind: ~6.5k instructions per collect).
fn drop_reason_labels() -> &'static [Arc<LabelSet>; 2] {
    static LABELS: OnceLock<[Arc<LabelSet>; 2]> = OnceLock::new();
    LABELS.get_or_init(|| {
        [
            LabelSet::new([("reason", "queue_full")]),
            LabelSet::new([("reason", "export_failed")]),
        ]
    })
}

// ---------------------------------------------------------------------------------------
// processor and exporter wrappers

/// Admits a finished span only while fewer than `capacity` spans wait for export, so the
/// batch processor's own queue never overflows and every drop is counted here.
#[derive(Debug)]
struct GatedProcessor {
    inner: BatchSpanProcessor,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
    stats: Arc<TelemetryStats>,
}

impl SpanProcessor for GatedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what the wrapped exporter delivers or loses; logs the first failure after a
/// success once (with header values masked) and the recovery.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
    stats: Arc<TelemetryStats>,
    failing: AtomicBool,
    secrets: Vec<String>,
    what: &'static str,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.waiting.fetch_sub(n, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.stats.exported.fetch_add(n as u64, Ordering::Relaxed);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(exporter = self.what, "self-telemetry span export recovered");
                }
            }
            Err(e) => {
                self.stats
                    .dropped_export_failed
                    .fetch_add(n as u64, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
                    tracing::warn!(
                        exporter = self.what,
                        error = %sanitize(&e.to_string(), &secrets),
                        "self-telemetry spans cannot be exported; dropping them (counted in loxone_exporter_telemetry_spans_dropped_total)"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

// ---------------------------------------------------------------------------------------
// console exporter

/// `OTEL_TRACES_EXPORTER=console`: one JSON object per finished span on standard output.
#[derive(Debug, Default)]
pub struct ConsoleExporter;

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => (*b).into(),
        Value::I64(i) => (*i).into(),
        Value::F64(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| f.to_string().into()),
        other => other.as_str().into_owned().into(),
    }
}

fn json_attributes(attrs: &[KeyValue]) -> serde_json::Value {
    serde_json::Value::Object(
        attrs
            .iter()
            .map(|kv| (kv.key.as_str().to_owned(), json_value(&kv.value)))
            .collect(),
    )
}

/// The console exporter's JSON for one span.
pub fn span_json(span: &SpanData) -> serde_json::Value {
    let kind = match span.span_kind {
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal => "internal",
    };
    let status = match &span.status {
        Status::Unset => "unset".to_string(),
        Status::Ok => "ok".to_string(),
        Status::Error { description } => format!("error: {description}"),
    };
    serde_json::json!({
        "name": span.name,
        "trace_id": span.span_context.trace_id().to_string(),
        "span_id": span.span_context.span_id().to_string(),
        "parent_span_id": span.parent_span_id.to_string(),
        "kind": kind,
        "start_unix_nano": nanos(span.start_time),
        "end_unix_nano": nanos(span.end_time),
        "status": status,
        "attributes": json_attributes(&span.attributes),
        "events": span.events.iter().map(|e| serde_json::json!({
            "name": e.name,
            "time_unix_nano": nanos(e.timestamp),
            "attributes": json_attributes(&e.attributes),
        })).collect::<Vec<_>>(),
    })
}

impl SpanExporter for ConsoleExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        use std::io::Write as _;
        let mut text = String::new();
        for span in &batch {
            text.push_str(&span_json(span).to_string());
            text.push('\n');
        }
        std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))
    }
}

// ---------------------------------------------------------------------------------------
// OTLP exporters

/// The OTLP/HTTP client: reqwest, polled inside [`OnRuntime`]'s `block_on`, which provides
/// the Tokio context (reactor, timers) that reqwest needs.
#[derive(Debug)]
struct ReqwestHttpClient {
    client: reqwest::Client,
    /// The headers the settings chose (values marked sensitive).
    headers: http::HeaderMap,
}

#[async_trait::async_trait]
impl HttpClient for ReqwestHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let (mut parts, body) = request.into_parts();
        // The exporter adds OTEL_EXPORTER_OTLP_[TRACES_]HEADERS from the environment on
        // top of what it was given; the settings have applied the documented precedence
        // already (a file's header outranks the variable), so only the body's own headers
        // are kept from the exporter's.
        let mut headers = self.headers.clone();
        for name in [http::header::CONTENT_TYPE, http::header::CONTENT_ENCODING] {
            if let Some(value) = parts.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        parts.headers = headers;
        let request = reqwest::Request::try_from(http::Request::from_parts(parts, body))?;
        let mut response = self.client.execute(request).await?;
        let mut builder = http::Response::builder().status(response.status());
        for (k, v) in response.headers() {
            builder = builder.header(k, v);
        }
        let body = read_body_capped(&mut response, MAX_RESPONSE_BYTES)
            .await?
            .ok_or("OTLP response body too large")?;
        Ok(builder.body(Bytes::from(body))?)
    }
}

/// Runs an OTLP exporter's network I/O on a private current-thread Tokio runtime, driven by
/// the thread that calls the exporter: the SDK's batch thread, which has no Tokio context
/// of its own and waits for each export anyway. So self-telemetry needs no I/O thread of
/// its own, the batch thread does not hand every request to another thread and wait to be
/// woken, and nothing runs or wakes between exports (the kept-alive connection's task is
/// polled again with the next export).
///
/// Only the batch thread calls `export` / `shutdown` (a `block_on` inside a Tokio runtime
/// would panic), and the exporter, with its runtime, is dropped when that thread ends.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: tokio::runtime::Runtime,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.runtime.block_on(self.inner.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _context = self.runtime.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _context = self.runtime.enter();
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The current-thread runtime an [`OnRuntime`] exporter drives.
fn export_runtime() -> Result<tokio::runtime::Runtime, TelemetryError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TelemetryError::Exporter(format!("cannot start the telemetry runtime: {e}")))
}

fn tls_files(target: &TracesTarget) -> Result<TlsFiles, TelemetryError> {
    crate::otlp::transport::tls_files(&target.tls)
        .map_err(|e| TelemetryError::Exporter(e.to_string()))
}

fn grpc_exporter(
    target: &TracesTarget,
    runtime: &tokio::runtime::Runtime,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let files = tls_files(target)?;
    let (tls, endpoint) = tls_url(target.tls.enabled, &target.endpoint);
    let mut ep = Endpoint::from_shared(endpoint)
        .map_err(|e| TelemetryError::Exporter(format!("invalid OTLP traces endpoint: {e}")))?
        .tcp_nodelay(true)
        .timeout(target.timeout)
        .connect_timeout(target.timeout);
    if tls {
        let mut cfg = ClientTlsConfig::new();
        cfg = match files.ca {
            Some(ca) => cfg.ca_certificate(Certificate::from_pem(ca)),
            None => cfg.with_native_roots(),
        };
        if let Some((cert, key)) = files.identity {
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        ep = ep.tls_config(cfg).map_err(|e| {
            TelemetryError::Exporter(format!("OTLP traces TLS: {}", error_chain(&e)))
        })?;
    }
    // connect_lazy spawns the connection's worker onto the exporter's runtime (it runs
    // while an export drives that runtime)
    let channel = {
        let _enter = runtime.enter();
        ep.connect_lazy()
    };
    let metadata = grpc_metadata(&target.headers).map_err(|bad| bad_header(target, bad))?;
    // Set in an interceptor, which runs after the exporter has added
    // OTEL_EXPORTER_OTLP_[TRACES_]HEADERS from the environment on top of its metadata: the
    // settings have applied the documented precedence already, so theirs replace it all.
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_channel(channel)
        .with_interceptor(move |mut req: tonic::Request<()>| {
            *req.metadata_mut() = metadata.clone();
            Ok(req)
        })
        .with_timeout(target.timeout)
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
    if target.compression == OtlpCompression::Gzip {
        builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    let _enter = runtime.enter();
    builder
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))
}

/// A traces header that cannot be sent. Names are checked when the settings are read, so
/// this is a last guard; it does not show a bad name, which may hold a value typed after a
/// ':'.
fn bad_header(target: &TracesTarget, bad: BadHeader) -> TelemetryError {
    TelemetryError::Exporter(if bad.in_value {
        format!(
            "OTLP traces header {:?}: {}",
            target.headers[bad.index].0, bad.problem
        )
    } else {
        format!("an OTLP traces header name is {}", bad.problem)
    })
}

fn http_exporter(
    target: &TracesTarget,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let files = tls_files(target)?;
    // no redirects, no Referer, TLS for tls.enabled: as the metrics transport
    let (_, endpoint) = tls_url(target.tls.enabled, &target.endpoint);
    let client = http_client(target.timeout, files).map_err(TelemetryError::Exporter)?;
    reqwest::Url::parse(&endpoint)
        .map_err(|e| TelemetryError::Exporter(format!("invalid OTLP traces endpoint: {e}")))?;
    let headers = http_headers(&target.headers).map_err(|bad| bad_header(target, bad))?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ReqwestHttpClient { client, headers })
        // the https:// form when tls.enabled upgraded an http:// endpoint: the headers
        // (the metrics collector's credentials) never go out in clear text
        .with_endpoint(endpoint)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(target.timeout)
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
    if target.compression == OtlpCompression::Gzip {
        exporter = exporter.with_compression(opentelemetry_otlp::Compression::Gzip);
    }
    exporter
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// provider

fn sampler(setting: SamplerSetting) -> Sampler {
    match setting {
        SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
        SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
        SamplerSetting::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        SamplerSetting::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerSetting::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerSetting::ParentBasedTraceIdRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
    }
}

/// The built pipeline: the provider (its batch threads own the exporters and their
/// runtimes).
pub(crate) struct Pipeline {
    pub(crate) provider: SdkTracerProvider,
}

/// Builds the provider for `settings` (which must have traces enabled) with `resource`.
pub(crate) fn build(
    settings: &TelemetrySettings,
    resource: Resource,
    stats: &Arc<TelemetryStats>,
) -> Result<Pipeline, TelemetryError> {
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler(settings.sampler))
        .with_resource(resource);
    for sink in &settings.sinks {
        let waiting = Arc::new(AtomicUsize::new(0));
        let batch_config = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue_size)
            .with_max_export_batch_size(settings.max_export_batch_size)
            .with_scheduled_delay(settings.schedule_delay)
            .build();
        let processor = match sink {
            SpanSink::Console => BatchSpanProcessor::new(
                CountingExporter {
                    inner: ConsoleExporter,
                    waiting: waiting.clone(),
                    stats: stats.clone(),
                    failing: AtomicBool::new(false),
                    secrets: Vec::new(),
                    what: "console",
                },
                batch_config,
            ),
            SpanSink::Otlp(target) => {
                let runtime = export_runtime()?;
                let inner = match target.protocol {
                    OtlpProtocol::Grpc => grpc_exporter(target, &runtime)?,
                    OtlpProtocol::HttpProtobuf => http_exporter(target)?,
                };
                BatchSpanProcessor::new(
                    CountingExporter {
                        inner: OnRuntime { inner, runtime },
                        waiting: waiting.clone(),
                        stats: stats.clone(),
                        failing: AtomicBool::new(false),
                        secrets: crate::otlp::transport::secrets_of(
                            &target.headers,
                            &target.endpoint,
                        ),
                        what: "otlp",
                    },
                    batch_config,
                )
            }
        };
        builder = builder.with_span_processor(GatedProcessor {
            inner: processor,
            waiting,
            capacity: settings.max_queue_size,
            stats: stats.clone(),
        });
    }
    stats.enabled.store(true, Ordering::Relaxed);
    Ok(Pipeline {
        provider: builder.build(),
    })
}
