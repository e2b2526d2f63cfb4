//! Self-telemetry against real receivers: rotel prints the spans it received
//! (`--debug-log traces --debug-log-verbosity detailed`), the test parses that dump and
//! checks resource, names, parent-child structure and the trace ids in the JSON log lines;
//! the Python capture sink counts requests for the `OTEL_SDK_DISABLED` check and shows
//! the `traceparent` header of the OTLP metric requests.
//!
//! Each test builds its own subscriber with `telemetry::build` and installs it on its
//! thread; the code under test runs on a current-thread runtime, so every task sees it.

mod common;
#[path = "support/otlp/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{eventually, CaptureSink, Rotel, TestCollector};
use loxone_exporter::config::{
    FilterConfig, LogFormat, LogLevel, MiniserverConfig, OtlpConfig, OtlpProtocol,
};
use loxone_exporter::loxone::client::{run_miniserver_with, ClientOptions};
use loxone_exporter::loxone::simulator::{self, SimulatorOptions};
use loxone_exporter::metrics::health::{ExportState, OtlpHealth};
use loxone_exporter::metrics::self_health::SelfHealth;
use loxone_exporter::metrics::store::StateStore;
use loxone_exporter::metrics::Registry;
use loxone_exporter::otlp::export::{local_host_name, run_export_loop_with_stats};
use loxone_exporter::otlp::health::ExportStats;
use loxone_exporter::telemetry::{self, TelemetryGuard, TelemetryOptions};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

const USER: &str = "exporter";
const PASSWORD: &str = "pa ss/wörd";

// ---------------------------------------------------------------------------------------
// rotel with the traces dump

/// The spans rotel printed so far (started with `--debug-log traces`).
fn printed_spans(rotel: &Rotel) -> Vec<DumpSpan> {
    parse_spans(&rotel.text())
}

/// rotel printing every span that arrives.
fn start_rotel_traces(rotel: &Path, dir: &Path) -> Rotel {
    Rotel::start_dumping(rotel, dir, common::free_port, "traces", "detailed")
}

/// One span from rotel's dump, with the resource it arrived under.
#[derive(Debug, Clone, Default)]
struct DumpSpan {
    resource: BTreeMap<String, String>,
    scope: String,
    trace_id: String,
    parent_id: String,
    id: String,
    name: String,
    kind: String,
    status: String,
    attributes: BTreeMap<String, String>,
    /// The printed value type of each attribute (`Str`, `Int`, `Bool`, ...).
    attribute_types: BTreeMap<String, String>,
    events: Vec<String>,
}

/// `-> key: Str(value)` → (key, value).
fn attr(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix("-> ")?;
    let (k, v) = rest.split_once(": ")?;
    let v = v
        .find('(')
        .and_then(|i| v.strip_suffix(')').map(|s| s[i + 1..].to_string()))
        .unwrap_or_else(|| v.to_string());
    Some((k.to_string(), v))
}

/// `-> key: Int(200)` → `Int`.
fn attr_type(line: &str) -> Option<String> {
    let (_, v) = line.trim().strip_prefix("-> ")?.split_once(": ")?;
    v.find('(').map(|i| v[..i].to_string())
}

/// Parses the collector-style "detailed" traces dump.
fn parse_spans(text: &str) -> Vec<DumpSpan> {
    #[derive(PartialEq)]
    enum Sec {
        None,
        Resource,
        Span,
        Event,
    }
    let mut spans = Vec::new();
    let mut resource = BTreeMap::new();
    let mut scope = String::new();
    let mut cur: Option<DumpSpan> = None;
    let mut sec = Sec::None;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("ResourceSpans #") {
            if let Some(s) = cur.take() {
                spans.push(s);
            }
            resource = BTreeMap::new();
            sec = Sec::None;
        } else if t.starts_with("Resource attributes:") {
            sec = Sec::Resource;
        } else if let Some(s) = t.strip_prefix("InstrumentationScope ") {
            scope = s.to_string();
        } else if t.starts_with("Span #") {
            if let Some(s) = cur.take() {
                spans.push(s);
            }
            cur = Some(DumpSpan {
                resource: resource.clone(),
                scope: scope.clone(),
                ..DumpSpan::default()
            });
            sec = Sec::Span;
        } else if t.starts_with("ScopeSpans #") {
            if let Some(s) = cur.take() {
                spans.push(s);
            }
            sec = Sec::None;
        } else if t.starts_with("Attributes:") {
            // span attributes follow
        } else if t.starts_with("Events:") || t.starts_with("SpanEvent #") {
            sec = Sec::Event;
        } else if sec == Sec::Event {
            if let (Some(s), Some((k, v))) = (cur.as_mut(), attr(t)) {
                if k == "Name" {
                    s.events.push(v);
                }
            }
        } else if sec == Sec::Resource {
            if let Some((k, v)) = attr(t) {
                resource.insert(k, v);
            }
        } else if let Some(s) = cur.as_mut() {
            if let Some(v) = t.strip_prefix("Trace ID") {
                s.trace_id = v.trim_start_matches([' ', ':']).trim().to_string();
            } else if let Some(v) = t.strip_prefix("Parent ID") {
                s.parent_id = v.trim_start_matches([' ', ':']).trim().to_string();
            } else if let Some(v) = t.strip_prefix("ID") {
                s.id = v.trim_start_matches([' ', ':']).trim().to_string();
            } else if let Some(v) = t.strip_prefix("Name") {
                let v = v.trim_start_matches([' ', ':']).trim().to_string();
                if sec == Sec::Event {
                    s.events.push(v);
                } else {
                    s.name = v;
                }
            } else if let Some(v) = t.strip_prefix("Kind") {
                s.kind = v.trim_start_matches([' ', ':']).trim().to_string();
            } else if let Some(v) = t.strip_prefix("Status code") {
                s.status = v.trim_start_matches([' ', ':']).trim().to_string();
            } else if sec == Sec::Span {
                if let Some((k, v)) = attr(t) {
                    if let Some(ty) = attr_type(t) {
                        s.attribute_types.insert(k.clone(), ty);
                    }
                    s.attributes.insert(k, v);
                }
            }
        }
    }
    if let Some(s) = cur.take() {
        spans.push(s);
    }
    spans
}

// ---------------------------------------------------------------------------------------
// subscriber with captured log lines

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

impl LogBuf {
    fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn resource_config() -> OtlpConfig {
    OtlpConfig {
        service_name: "loxone-selftest".into(),
        resource_attributes: vec![("deployment.environment".into(), "itest".into())],
        ..OtlpConfig::default()
    }
}

fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
}

/// Builds the subscriber; returns it with its guard and log buffer.
fn subscriber(
    otlp: &OtlpConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> (tracing::Dispatch, TelemetryGuard, LogBuf) {
    let logs = LogBuf::default();
    let w = logs.clone();
    let options = TelemetryOptions {
        log_level: LogLevel::Info,
        log_format: LogFormat::Json,
        otlp,
        instance_id: "selftest:9504".into(),
        env,
    };
    let (dispatch, guard) =
        telemetry::build(&options, BoxMakeWriter::new(move || w.clone())).expect("telemetry");
    (dispatch, guard, logs)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn sim_options() -> SimulatorOptions {
    SimulatorOptions {
        rsa_key: Some(common::repo_root().join("tests/fixtures/loxone/test-rsa-1024.pem")),
        user: USER.into(),
        password: PASSWORD.into(),
        rate: 0.0,
        ..SimulatorOptions::default()
    }
}

fn fast_client() -> ClientOptions {
    ClientOptions {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(800),
        backoff_jitter: 0.0,
        command_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        http_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

fn ms_config(addr: SocketAddr) -> MiniserverConfig {
    let mut c = MiniserverConfig::new("ms-sim", &addr.ip().to_string(), USER, PASSWORD);
    c.port = addr.port();
    c
}

/// Connects one client to a fresh simulator, waits for live values, then stops it.
async fn one_session() {
    let sim = simulator::start(sim_options()).await.expect("simulator");
    let store = StateStore::new(&FilterConfig::default(), false).expect("store");
    let state = store.add_miniserver("ms-sim");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_miniserver_with(
        ms_config(sim.http_addr()),
        fast_client(),
        state.clone(),
        shutdown.clone(),
    ));
    eventually(Duration::from_secs(15), "session established", || {
        state.health().connected.then_some(())
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .expect("client stops")
        .expect("client task");
    drop(sim);
}

fn by_name<'a>(spans: &'a [DumpSpan], name: &str) -> Vec<&'a DumpSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn assert_resource(span: &DumpSpan) {
    let r = &span.resource;
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
    assert_eq!(get("service.name"), "loxone-selftest", "{r:?}");
    assert_eq!(get("service.version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(get("service.instance.id"), "selftest:9504");
    assert_eq!(get("host.name"), local_host_name());
    assert_eq!(get("deployment.environment"), "itest");
}

// ---------------------------------------------------------------------------------------

#[test]
fn session_spans_arrive_with_resource_and_structure_and_logs_carry_their_ids() {
    let Some(rotel_bin) = common::component(common::ROTEL) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rotel = start_rotel_traces(&rotel_bin, dir.path());
    let otlp = resource_config();
    let env = env_of(vec![
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{}", rotel.grpc_port),
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ]);
    let (dispatch, guard, logs) = subscriber(&otlp, &env);
    assert!(guard.traces_enabled());
    {
        let _default = tracing::dispatcher::set_default(&dispatch);
        current_thread().block_on(one_session());
    }
    guard.force_flush();

    let spans = current_thread().block_on(eventually(
        Duration::from_secs(15),
        "session spans at rotel",
        || {
            let s = printed_spans(&rotel);
            (!by_name(&s, "miniserver.session").is_empty()
                && !by_name(&s, "miniserver.structure").is_empty())
            .then_some(s)
        },
    ));
    let session = by_name(&spans, "miniserver.session")[0].clone();
    assert_resource(&session);
    assert_eq!(
        session.scope.split_whitespace().next(),
        Some("loxone-exporter"),
        "{session:?}"
    );
    assert_eq!(
        session.attributes.get("miniserver").map(String::as_str),
        Some("ms-sim")
    );
    assert!(
        session.parent_id.is_empty(),
        "session is a root span: {session:?}"
    );
    assert_eq!(session.trace_id.len(), 32);
    for child in [
        "miniserver.connect",
        "miniserver.key_exchange",
        "miniserver.authenticate",
        "miniserver.structure",
    ] {
        let c = by_name(&spans, child);
        assert_eq!(c.len(), 1, "{child}: {spans:#?}");
        assert_eq!(c[0].trace_id, session.trace_id, "{child}");
        assert_eq!(
            c[0].parent_id, session.id,
            "{child} is a child of the session"
        );
        assert_resource(c[0]);
    }

    // the log lines written inside the session carry its ids
    let lines = logs.lines();
    let line = |msg: &str| {
        lines
            .iter()
            .find(|l| l["message"] == msg)
            .unwrap_or_else(|| panic!("no log line {msg:?} in {lines:#?}"))
            .clone()
    };
    let connected = line("connected, receiving live values");
    assert_eq!(connected["trace_id"], session.trace_id.as_str());
    assert_eq!(connected["span_id"], session.id.as_str());
    assert_eq!(connected["miniserver"], "ms-sim");
    assert_eq!(connected["level"], "INFO");
    let structure = line("structure file loaded");
    assert_eq!(structure["trace_id"], session.trace_id.as_str());
    assert_eq!(
        structure["span_id"],
        by_name(&spans, "miniserver.structure")[0].id.as_str()
    );
    // and no secret became an attribute or a log field
    let text = rotel.text();
    assert!(!text.contains(PASSWORD));
    assert!(!String::from_utf8_lossy(&logs.0.lock().unwrap()).contains(PASSWORD));
    guard.shutdown(Duration::from_secs(1));
}

#[test]
fn export_with_retries_is_one_trace_and_its_requests_carry_traceparent() {
    let (Some(rotel_bin), Some(python)) = (
        common::component(common::ROTEL),
        common::component(common::PYTHON),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rotel = start_rotel_traces(&rotel_bin, dir.path());
    // the metrics collector is down at first: nothing listens on this port yet
    let sink_port = common::free_port();
    let mut metrics = harness::otlp_config(
        &format!("http://127.0.0.1:{sink_port}/v1/metrics"),
        OtlpProtocol::HttpProtobuf,
    );
    metrics.interval = Duration::from_secs(60);
    metrics.timeout = Duration::from_secs(5);
    metrics.service_name = "loxone-selftest".into();
    metrics.headers = vec![(
        "Authorization".into(),
        loxone_exporter::secret::Secret::new("Bearer hdr-s3cret-value"),
    )];
    let env = env_of(vec![
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{}/v1/traces", rotel.http_port),
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ]);
    let (dispatch, guard, logs) = subscriber(&metrics, &env);
    let out = dir.path().join("captured");
    let sink = {
        let _default = tracing::dispatcher::set_default(&dispatch);
        current_thread().block_on(async {
            let registry = Arc::new(Registry::new());
            registry.register(TestCollector::new());
            let health = OtlpHealth::new(ExportState::Disabled);
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run_export_loop_with_stats(
                metrics.clone(),
                registry,
                health.clone(),
                ExportStats::new(),
                "selftest:9504".into(),
                shutdown.clone(),
            ));
            eventually(Duration::from_secs(20), "two failed attempts", || {
                (health.get().consecutive_failures >= 2).then_some(())
            })
            .await;
            let sink = CaptureSink::start(&python, &out, sink_port);
            eventually(
                Duration::from_secs(20),
                "an export reaching the sink",
                || {
                    (health.get().state == ExportState::Idle && !sink.captured().is_empty())
                        .then_some(())
                },
            )
            .await;
            shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("export loop stops")
                .expect("export task");
            sink
        })
    };
    guard.force_flush();

    let spans = current_thread().block_on(eventually(
        Duration::from_secs(15),
        "export spans at rotel",
        || {
            let s = printed_spans(&rotel);
            by_name(&s, "otlp.export")
                .iter()
                .any(|e| !e.attributes.contains_key("otlp.final_export"))
                .then_some(s)
        },
    ));
    let export = by_name(&spans, "otlp.export")
        .into_iter()
        .find(|e| !e.attributes.contains_key("otlp.final_export"))
        .unwrap()
        .clone();
    assert_resource(&export);
    assert!(export.parent_id.is_empty(), "{export:?}");
    let mut attempts: Vec<&DumpSpan> = by_name(&spans, "otlp.attempt")
        .into_iter()
        .filter(|a| a.parent_id == export.id)
        .collect();
    attempts.sort_by_key(|a| a.attributes["otlp.attempt"].parse::<u32>().unwrap());
    assert!(attempts.len() >= 3, "{spans:#?}");
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a.trace_id, export.trace_id);
        assert_eq!(a.attributes["otlp.attempt"], (i + 1).to_string());
        let last = i + 1 == attempts.len();
        assert_eq!(
            a.attributes["otlp.outcome"],
            if last { "sent" } else { "retry" },
            "{a:?}"
        );
        assert_eq!(
            a.status,
            if last {
                "STATUS_CODE_UNSET"
            } else {
                "STATUS_CODE_ERROR"
            },
            "{a:?}"
        );
    }
    let count = |name: &str| export.events.iter().filter(|e| *e == name).count();
    assert_eq!(count("otlp.attempt"), attempts.len(), "{:?}", export.events);
    assert_eq!(
        count("otlp.retry"),
        attempts.len() - 1,
        "{:?}",
        export.events
    );

    // the request that got through names the successful attempt as its parent
    let first = sink.captured()[0].with_extension("json");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(first).unwrap()).unwrap();
    let headers = meta["headers"].as_object().unwrap();
    let traceparent = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        .map(|(_, v)| v.as_str().unwrap().to_string())
        .expect("traceparent header");
    let sent = attempts.last().unwrap();
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", export.trace_id, sent.id)
    );

    // the retry warning was logged inside the first attempt
    let lines = logs.lines();
    let warn = lines
        .iter()
        .find(|l| l["message"] == "OTLP export failed; will retry")
        .expect("retry warning");
    assert_eq!(warn["trace_id"], export.trace_id.as_str());
    assert_eq!(warn["span_id"], attempts[0].id.as_str());
    // the header reached the collector, but never a span or a log line
    assert_eq!(
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str().unwrap()),
        Some("Bearer hdr-s3cret-value")
    );
    assert!(!rotel.text().contains("hdr-s3cret-value"));
    assert!(!String::from_utf8_lossy(&logs.0.lock().unwrap()).contains("hdr-s3cret-value"));
    guard.shutdown(Duration::from_secs(1));
}

fn http_state(registry: Arc<Registry>) -> Arc<loxone_exporter::http::HttpState> {
    Arc::new(loxone_exporter::http::HttpState {
        registry,
        store: StateStore::new(&FilterConfig::default(), false).expect("store"),
        self_health: Arc::new(SelfHealth::new()),
        otlp: None,
        otlp_target: None,
        telemetry_path: "/metrics".into(),
        render: Default::default(),
        scrape_limit: Default::default(),
    })
}

/// Serves the router on a free port, sends `requests` (optional `traceparent` each).
async fn scrape(requests: &[Option<&str>]) {
    let registry = Arc::new(Registry::new());
    registry.register(TestCollector::new());
    let router = loxone_exporter::http::router(http_state(registry));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = loxone_exporter::tls_provider::reqwest_builder()
        .build()
        .unwrap();
    for tp in requests {
        let mut req = client.get(format!("http://{addr}/metrics"));
        if let Some(tp) = tp {
            req = req.header("traceparent", *tp);
        }
        let resp = req.send().await.expect("scrape");
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().contains("test_events_total"));
    }
    server.abort();
}

#[test]
fn a_scrape_with_traceparent_continues_the_callers_trace() {
    const LAST_TRACE: &str = "6bf92f3577b34da6a3ce929d0e0e4736";
    let Some(rotel_bin) = common::component(common::ROTEL) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rotel = start_rotel_traces(&rotel_bin, dir.path());
    let env = env_of(vec![
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{}", rotel.grpc_port),
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
    ]);
    let (dispatch, guard, _logs) = subscriber(&resource_config(), &env);
    {
        let _default = tracing::dispatcher::set_default(&dispatch);
        current_thread().block_on(scrape(&[
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None,
            // not sampled upstream: parent-based sampling keeps it out
            Some("00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-00"),
            // sampled, after it: once this span is at rotel, a wrongly sampled third span
            // (ended before it, exported in the same or an earlier batch) would be too
            Some(&format!("00-{LAST_TRACE}-20f067aa0ba902b7-01")),
        ]));
    }
    guard.force_flush();
    let spans = current_thread().block_on(eventually(
        Duration::from_secs(15),
        "the last scrape's span at rotel",
        || {
            let s = printed_spans(&rotel);
            by_name(&s, "http.scrape")
                .iter()
                .any(|s| s.trace_id == LAST_TRACE)
                .then_some(s)
        },
    ));
    let scrapes = by_name(&spans, "http.scrape");
    assert_eq!(scrapes.len(), 3, "{scrapes:#?}");
    let continued = scrapes
        .iter()
        .find(|s| s.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the scrape continues the incoming trace");
    assert_eq!(continued.parent_id, "00f067aa0ba902b7");
    assert_eq!(continued.kind, "SPAN_KIND_SERVER");
    assert_eq!(continued.attributes["http.response.status_code"], "200");
    // an int, as the semantic conventions say
    assert_eq!(
        continued.attribute_types["http.response.status_code"],
        "Int"
    );
    assert_eq!(continued.attributes["http.route"], "/metrics");
    assert_resource(continued);
    let root = scrapes
        .iter()
        .find(|s| s.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736" && s.trace_id != LAST_TRACE)
        .unwrap();
    assert!(root.parent_id.is_empty());
    assert!(!scrapes.iter().any(|s| s.trace_id.starts_with("5bf92f35")));
    guard.shutdown(Duration::from_secs(1));
}

/// Runs a Miniserver session and a scrape with the given environment; returns how many
/// requests the capture sink (the traces endpoint) received. With `traces`, the pipeline
/// must be on and the count is taken once the first request has arrived (15 s at most);
/// without, it must be off and the count is taken after a grace period for anything in
/// flight: absence can only be waited for, and the caller's control run with traces on
/// (the same session, scrape and sink) shows that this setup does send when it may.
fn traces_requests_with(python: &Path, extra: Vec<(&'static str, String)>, traces: bool) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let sink = CaptureSink::start(python, dir.path(), port);
    let mut pairs = vec![
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://127.0.0.1:{port}/v1/traces"),
        ),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ];
    pairs.extend(extra);
    let env = env_of(pairs);
    let (dispatch, guard, logs) = subscriber(&resource_config(), &env);
    {
        let _default = tracing::dispatcher::set_default(&dispatch);
        current_thread().block_on(async {
            one_session().await;
            scrape(&[Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )])
            .await;
        });
    }
    assert_eq!(guard.traces_enabled(), traces);
    guard.shutdown(Duration::from_secs(2));
    if traces {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while sink.captured().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "control: no traces reached the sink over OTLP/HTTP"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        // nothing may arrive: anything in flight would land within this
        std::thread::sleep(Duration::from_millis(500));
    }
    let lines = logs.lines();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "connected, receiving live values"),
        "the session ran"
    );
    let with_ids = lines.iter().filter(|l| l.get("trace_id").is_some()).count();
    let n = sink.captured().len();
    for f in sink.captured() {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.with_extension("json")).unwrap())
                .unwrap();
        assert_eq!(meta["path"], "/v1/traces");
    }
    if n == 0 {
        assert_eq!(
            with_ids, 0,
            "no trace ids in logs when disabled: {lines:#?}"
        );
    } else {
        assert!(with_ids > 0);
    }
    n
}

#[test]
fn sdk_disabled_sends_nothing_while_enabled_does() {
    let Some(python) = common::component(common::PYTHON) else {
        return;
    };
    let enabled = traces_requests_with(&python, vec![], true);
    assert!(
        enabled >= 1,
        "control: traces reach the sink over OTLP/HTTP"
    );
    let disabled = traces_requests_with(&python, vec![("OTEL_SDK_DISABLED", "true".into())], false);
    assert_eq!(
        disabled, 0,
        "OTEL_SDK_DISABLED=true: no self-telemetry traffic"
    );
}
