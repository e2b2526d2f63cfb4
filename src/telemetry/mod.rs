//! The daemon's own telemetry: `tracing` spans exported as OpenTelemetry traces, W3C trace
//! context on the OTLP requests and the scrape endpoint, and JSON log lines carrying the
//! `trace_id` / `span_id` of the span they were written in (issue 7; env conventions from
//! `docs/otlp-and-prometheus.md` §3.1, exporter behaviour §2.4).
//!
//! [`init`] installs the global `tracing` subscriber (replacing `logging::init`): the log
//! layer (JSON or text on stderr, filtered by the configured level) and, when traces are
//! on, a `tracing-opentelemetry` layer feeding an `opentelemetry_sdk` tracer provider. The
//! returned [`TelemetryGuard`] flushes and stops the pipeline on [`TelemetryGuard::shutdown`].
//!
//! # Spans
//!
//! | span | where | children / events |
//! |---|---|---|
//! | `miniserver.session` (`miniserver`) | one per connection attempt, until the session ends | `miniserver.connect`, `miniserver.key_exchange`, `miniserver.authenticate`, `miniserver.structure`; log lines as events; `error.kind` and status ERROR when it ends in failure |
//! | `otlp.export` | one per scheduled export, including its retries | one `otlp.attempt` child per try (`otlp.attempt` number), event `otlp.retry` (`otlp.retry_in_s`, and `otlp.attempt`: the next try's number) when a retry is planned; every request of the try carries the try's `traceparent` |
//! | `http.scrape` (`http.route`) | each `/metrics` request | continues the caller's trace when the request has a `traceparent` |
//!
//! Only this crate's spans at `info` and above become OpenTelemetry spans, whatever the
//! log level. No secret is ever a span attribute: spans carry Miniserver names, counts,
//! states and sanitised error texts only (the same rule as log lines).
//!
//! # Configuration (environment, OpenTelemetry conventions)
//!
//! - `OTEL_SDK_DISABLED=true` (case-insensitive; any other value is ignored): all
//!   self-telemetry off: no spans, no trace ids in log lines, no traffic. It also turns the
//!   OTLP metrics export off (configuration rule).
//! - `OTEL_TRACES_EXPORTER`: comma list of `otlp`, `console` (one JSON object per span on
//!   stdout) or `none`. **Default**: `otlp` when the OTLP metrics export is enabled or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, otherwise no traces. Unknown values are
//!   ignored with a warning.
//! - Where traces go:
//!   1. `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used as is (an empty path becomes `/`);
//!      protocol `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` > `OTEL_EXPORTER_OTLP_PROTOCOL` > the
//!      metrics export's protocol (when enabled) > `http/protobuf`;
//!   2. else the metrics collector: gRPC on the same endpoint; OTLP/HTTP on `/v1/traces`
//!      instead of `/v1/metrics` (ports 4317/4318 swapped when the traces protocol
//!      differs);
//!   3. else (`OTEL_TRACES_EXPORTER=otlp` with metrics export off)
//!      `OTEL_EXPORTER_OTLP_ENDPOINT` as a base URL (`v1/traces` appended for HTTP), else
//!      `http://localhost:4318/v1/traces` (gRPC: `http://localhost:4317`).
//! - Headers, TLS, timeout and compression: towards the metrics collector (same scheme,
//!   host and port) the metrics export's (+ `OTEL_EXPORTER_OTLP_TRACES_HEADERS`); towards
//!   any other host only `OTEL_EXPORTER_OTLP_TRACES_{HEADERS,CERTIFICATE,CLIENT_CERTIFICATE,
//!   CLIENT_KEY,TIMEOUT,COMPRESSION}` and their generic `OTEL_EXPORTER_OTLP_*` forms, so
//!   the metrics credentials never go to another host. Timeout default 10 s.
//! - `OTEL_TRACES_SAMPLER`: `always_on`, `always_off`, `traceidratio`,
//!   `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio`
//!   (**default**, with `OTEL_TRACES_SAMPLER_ARG` default `1.0`). A scrape with a sampled
//!   `traceparent` is traced, one with an unsampled one is not (parent-based).
//! - `OTEL_BSP_MAX_QUEUE_SIZE` (2048), `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512),
//!   `OTEL_BSP_SCHEDULE_DELAY` (5000 ms): the bounded batch queue.
//! - The resource is the metrics export's: `service.name` (`OTEL_SERVICE_NAME` …),
//!   `service.version`, `service.instance.id`, `host.name` and the configured /
//!   `OTEL_RESOURCE_ATTRIBUTES` attributes ([`crate::otlp::convert::build_resource`]).
//!
//! # Failure behaviour
//!
//! Finished spans wait in a bounded queue; when it is full they are dropped. Exports run
//! on the SDK's batch thread (which also drives their I/O: no extra thread) and are not
//! retried: when the collector is down a batch is dropped. Both are counted in
//! `loxone_exporter_telemetry_spans_dropped_total{reason="queue_full"|"export_failed"}`
//! ([`collector`]); the first failure is logged once at `warn`, the recovery at `info`.
//! Nothing of this ever blocks or slows the daemon's own work.
//!
//! Does not: define the spans' places in the code (the modules that own that code do,
//! with `tracing` spans), or export metrics (`crate::otlp`).

pub mod json;
pub mod pipeline;
pub mod propagation;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, LogLevel, OtlpConfig};
use crate::metrics::Collector;
use crate::otlp::convert::{build_resource, ResourceInfo};
use crate::otlp::export::local_host_name;

pub use pipeline::{TelemetryCollector, TelemetryStats};
pub use propagation::{continue_trace, inject_grpc, inject_http};
pub use settings::{resolve, SamplerSetting, SpanSink, TelemetrySettings, TracesTarget};

/// Instrumentation scope of the daemon's spans.
pub const TRACER_NAME: &str = env!("CARGO_PKG_NAME");

/// Why self-telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The trace exporter could not be built (bad endpoint, unreadable TLS file, ...).
    /// Texts never contain header values.
    #[error("cannot set up the trace exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
}

/// What [`init`] needs.
pub struct TelemetryOptions<'a> {
    /// Log verbosity (does not affect which spans are traced).
    pub log_level: LogLevel,
    /// Log line format.
    pub log_format: LogFormat,
    /// The merged OTLP metrics configuration (collector, headers, TLS, resource).
    pub otlp: &'a OtlpConfig,
    /// `service.instance.id`, as the metrics export names it: `host:port` of the
    /// `/metrics` listener.
    pub instance_id: String,
    /// Environment lookup (`&|k| std::env::var(k).ok()` in production).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// Keeps the span pipeline alive; flushes it on [`TelemetryGuard::shutdown`] (or, with a
/// short budget, when dropped).
pub struct TelemetryGuard {
    pipeline: Option<pipeline::Pipeline>,
    settings: TelemetrySettings,
}

/// Flush budget used when the guard is dropped without [`TelemetryGuard::shutdown`].
pub const DROP_FLUSH_BUDGET: Duration = Duration::from_millis(200);

impl TelemetryGuard {
    /// True when spans are being produced and exported.
    pub fn traces_enabled(&self) -> bool {
        self.pipeline.is_some()
    }

    /// The settings in force.
    pub fn settings(&self) -> &TelemetrySettings {
        &self.settings
    }

    /// Exports what is queued (waiting at most about `budget`), then stops the exporters.
    /// Spans still unsent after `budget` are lost.
    pub fn shutdown(mut self, budget: Duration) {
        self.stop(budget);
    }

    /// Exports what is queued now, waiting for it (tests, diagnostics).
    pub fn force_flush(&self) {
        if let Some(p) = &self.pipeline {
            let _ = p.provider.force_flush();
        }
    }

    fn stop(&mut self, budget: Duration) {
        if let Some(p) = self.pipeline.take() {
            // an export still waiting for a dead collector after `budget` goes on in the
            // background until its own timeout (the process usually exits first)
            let _ = p.provider.shutdown_with_timeout(budget);
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop(DROP_FLUSH_BUDGET);
    }
}

/// Adds an event to `span`'s OpenTelemetry span (nothing when traces are off or the span
/// is not traced). Attributes must never hold secrets.
pub fn span_event(span: &tracing::Span, name: &'static str, attributes: Vec<KeyValue>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if !span.is_disabled() {
        span.add_event(name, attributes);
    }
}

/// A short name for an OTLP export outcome (span attribute `otlp.outcome`).
pub fn outcome_kind(outcome: &crate::otlp::transport::ExportOutcome) -> &'static str {
    use crate::otlp::transport::ExportOutcome;
    match outcome {
        ExportOutcome::Sent => "sent",
        ExportOutcome::PartialSuccess { .. } => "partial_success",
        ExportOutcome::Retry { .. } => "retry",
        ExportOutcome::Drop { .. } => "drop",
    }
}

/// The span counters as a registry collector (register it with the registry in `app`).
pub fn collector() -> Arc<dyn Collector> {
    Arc::new(TelemetryCollector(TelemetryStats::global()))
}

/// The resource attributes of the metrics export, as OpenTelemetry key-values.
pub fn resource(otlp: &OtlpConfig, instance_id: String) -> opentelemetry_sdk::Resource {
    let proto = build_resource(&ResourceInfo {
        service_name: otlp.service_name.clone(),
        instance_id,
        host_name: local_host_name(),
        extra: otlp.resource_attributes.clone(),
    });
    let attrs = proto.attributes.into_iter().filter_map(|kv| {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
        match kv.value.and_then(|v| v.value) {
            Some(V::StringValue(s)) => Some(KeyValue::new(kv.key, s)),
            Some(V::BoolValue(b)) => Some(KeyValue::new(kv.key, b)),
            Some(V::IntValue(i)) => Some(KeyValue::new(kv.key, i)),
            Some(V::DoubleValue(d)) => Some(KeyValue::new(kv.key, d)),
            _ => None,
        }
    });
    opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(attrs)
        .build()
}

/// The log layer: JSON (with the trace ids found through `slot`) or text, filtered by
/// `level`.
pub fn log_layer(
    level: LogLevel,
    format: LogFormat,
    writer: BoxMakeWriter,
    slot: json::DispatchSlot,
) -> Box<dyn Layer<Registry> + Send + Sync> {
    let filter = crate::logging::filter_for(level);
    match format {
        LogFormat::Json => {
            let event_format = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_target(true);
            tracing_subscriber::fmt::layer()
                .json()
                .event_format(json::TraceJson::new(event_format, slot))
                .with_writer(writer)
                .with_filter(filter)
                .boxed()
        }
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_target(true)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    }
}

/// Builds the subscriber (log layer + span layer when traces are on) without installing
/// it. `writer` receives the log lines. Tests install the dispatch per thread.
pub fn build(
    options: &TelemetryOptions<'_>,
    writer: BoxMakeWriter,
) -> Result<(tracing::Dispatch, TelemetryGuard), TelemetryError> {
    let mut settings = settings::resolve(options.otlp, options.env);
    let slot = json::DispatchSlot::default();
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![log_layer(
        options.log_level,
        options.log_format,
        writer,
        slot.clone(),
    )];
    let built = settings.traces_enabled().then(|| {
        pipeline::build(
            &settings,
            resource(options.otlp, options.instance_id.clone()),
            &TelemetryStats::global(),
        )
    });
    let pipeline = match built {
        // a traces exporter that cannot be built (a missing certificate file in an
        // OTEL_EXPORTER_OTLP_TRACES_* variable, ...) turns traces off, not the daemon
        Some(Err(e)) => {
            settings
                .warnings
                .push(format!("self-telemetry traces are off: {e}"));
            settings.sinks.clear();
            None
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    let pipeline = if let Some(p) = pipeline {
        let tracer = p.provider.tracer(TRACER_NAME);
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // entering a span (every poll of an instrumented future, e.g. the
                // session's receive loop) must stay a no-op for this layer: no busy/idle
                // timings, no OpenTelemetry context attached per enter (parents come from
                // the tracing span tree; propagation reads the span's context directly)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                // span names say where: no code.* / target attributes to build and send
                .with_location(false)
                .with_target(false)
                .with_threads(false)
                .with_filter(Targets::new().with_target(TRACER_NAME.replace('-', "_"), Level::INFO))
                .boxed(),
        );
        Some(p)
    } else {
        None
    };
    let dispatch = tracing::Dispatch::new(Registry::default().with(layers));
    slot.set(&dispatch);
    Ok((dispatch, TelemetryGuard { pipeline, settings }))
}

/// Installs the global subscriber: log lines on stderr and, when the settings say so,
/// traces (see the module documentation). Logs the settings' warnings and where traces
/// go. Call once, from `main`, before the Tokio runtime exists or inside it.
pub fn init(options: TelemetryOptions<'_>) -> Result<TelemetryGuard, TelemetryError> {
    let (dispatch, guard) = build(&options, BoxMakeWriter::new(std::io::stderr))?;
    tracing::dispatcher::set_global_default(dispatch)
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    for w in &guard.settings.warnings {
        tracing::warn!("{w}");
    }
    for sink in &guard.settings.sinks {
        match sink {
            SpanSink::Otlp(t) if guard.traces_enabled() => tracing::info!(
                endpoint = %crate::secret::redact_url(&t.endpoint),
                protocol = ?t.protocol,
                sampler = ?guard.settings.sampler,
                "self-telemetry traces enabled"
            ),
            SpanSink::Console if guard.traces_enabled() => {
                tracing::info!(sampler = ?guard.settings.sampler, "self-telemetry traces on the console")
            }
            _ => {}
        }
    }
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buf: &Buf) -> Vec<serde_json::Value> {
        String::from_utf8(buf.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Self-telemetry at `info`, OTLP metrics export off, `env` for the variables.
    fn build_with(
        env: &dyn Fn(&str) -> Option<String>,
        writer: BoxMakeWriter,
    ) -> Result<(tracing::Dispatch, TelemetryGuard), TelemetryError> {
        let otlp = OtlpConfig::default();
        let options = TelemetryOptions {
            log_level: LogLevel::Info,
            log_format: LogFormat::Json,
            otlp: &otlp,
            instance_id: "h:1".into(),
            env,
        };
        build(&options, writer)
    }

    fn run(env: &dyn Fn(&str) -> Option<String>) -> (Vec<serde_json::Value>, Option<String>, bool) {
        let buf = Buf::default();
        let w = buf.clone();
        let (dispatch, guard) = build_with(env, BoxMakeWriter::new(move || w.clone())).unwrap();
        let traceparent = tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("unit.span");
            let tp = span.in_scope(|| {
                tracing::info!(answer = 42, "inside");
                propagation::current_traceparent()
            });
            tracing::info!("outside");
            tp
        });
        let enabled = guard.traces_enabled();
        guard.shutdown(Duration::from_millis(500));
        (lines(&buf), traceparent, enabled)
    }

    #[test]
    fn a_traces_exporter_that_cannot_be_built_turns_traces_off_not_the_daemon() {
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("https://127.0.0.1:1/v1/traces".into()),
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE" => Some("/nonexistent/ca.pem".into()),
            _ => None,
        };
        // it was an error, and the daemon exited 2 while `check` said OK
        let (_, guard) = build_with(&env, BoxMakeWriter::new(std::io::sink)).unwrap();
        assert!(!guard.traces_enabled());
        let warned = guard.settings.warnings.join("\n");
        assert!(warned.contains("self-telemetry traces are off"), "{warned}");
        assert!(warned.contains("/nonexistent/ca.pem"), "{warned}");
    }

    #[test]
    fn json_lines_inside_a_span_carry_its_trace_and_span_id() {
        let env = |k: &str| (k == "OTEL_TRACES_EXPORTER").then(|| "console".to_string());
        let (lines, traceparent, enabled) = run(&env);
        assert!(enabled);
        let tp = traceparent.expect("traceparent inside the span");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        let inside = &lines[0];
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["answer"], 42);
        assert_eq!(inside["level"], "INFO");
        assert!(inside["timestamp"].is_string());
        assert_eq!(inside["target"], "loxone_exporter::telemetry::tests");
        assert_eq!(inside["trace_id"], parts[1]);
        assert_eq!(inside["span_id"], parts[2]);
        let outside = &lines[1];
        assert_eq!(outside["message"], "outside");
        assert!(outside.get("trace_id").is_none());
    }

    #[test]
    fn disabled_sdk_means_no_ids_and_no_traceparent() {
        let env = |k: &str| match k {
            "OTEL_TRACES_EXPORTER" => Some("console".to_string()),
            "OTEL_SDK_DISABLED" => Some("true".to_string()),
            _ => None,
        };
        let (lines, traceparent, enabled) = run(&env);
        assert!(!enabled);
        assert_eq!(traceparent, None);
        assert_eq!(lines[0]["message"], "inside");
        assert!(lines[0].get("trace_id").is_none());
    }
}
