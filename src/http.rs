//! The HTTP side: `/metrics` (text format 0.0.4, gzip when accepted, HEAD too), `/healthz`
//! (the original's JSON schema plus a filled `last_error`; 503 when unhealthy) and a
//! landing page at `/`, like node_exporter's. Anything else is 404; a wrong method 405.
//!
//! Handlers only read: the registry snapshot, the state store's health and the OTLP
//! status. A large `/metrics` body is built on the blocking pool so it never stalls the
//! HTTP runtime; a small one is built inline (cheaper than the hand-off). Miniserver
//! sessions run on their own thread (`app.rs`) either way. TLS and basic auth wrap this router in
//! [`crate::web`].

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::build_info;
use crate::metrics::health::{ExportState, OtlpHealth, OtlpStatus};
use crate::metrics::self_health::SelfHealth;
use crate::metrics::store::{MiniserverHealth, StateStore};
use crate::metrics::{text, Registry};

/// Default path of the metrics endpoint (`--web.telemetry-path`).
pub const DEFAULT_TELEMETRY_PATH: &str = "/metrics";

/// What the handlers read.
pub struct HttpState {
    /// The registry `/metrics` renders.
    pub registry: Arc<Registry>,
    /// Miniserver health for `/healthz` and `/`.
    pub store: Arc<StateStore>,
    /// Scrape duration and error counters.
    pub self_health: Arc<SelfHealth>,
    /// OTLP status when export is enabled.
    pub otlp: Option<OtlpHealth>,
    /// `grpc` / `http` and the endpoint without credentials, for the landing page.
    pub otlp_target: Option<(String, String)>,
    /// Path of the metrics endpoint.
    pub telemetry_path: String,
    /// What this router keeps between scrapes (the last body's size, a render buffer);
    /// start with `Default::default()`.
    pub render: RenderMemory,
    /// Concurrent `/metrics` requests allowed (`--web.max-requests`).
    pub scrape_limit: ScrapeLimit,
}

/// Default of `--web.max-requests` (node_exporter's).
pub const DEFAULT_MAX_REQUESTS: usize = 40;

/// How many `/metrics` requests may be in flight at once, from rendering until the body
/// has been sent (or the connection is gone); the rest get 503 at once instead of each
/// holding a full body in memory (200 parallel scrapes of 10k series took 400 MB; clients
/// that pipeline requests and never read held one body per connection).
#[derive(Debug)]
pub struct ScrapeLimit(Arc<tokio::sync::Semaphore>);

impl ScrapeLimit {
    /// At most `max` at once; 0 means no limit (as many permits as a semaphore holds).
    pub fn new(max: usize) -> Self {
        let permits = if max == 0 {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            max
        };
        ScrapeLimit(Arc::new(tokio::sync::Semaphore::new(permits)))
    }

    /// A permit held while rendering and sending; `None` when the limit is reached.
    fn try_enter(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

impl Default for ScrapeLimit {
    fn default() -> Self {
        ScrapeLimit::new(DEFAULT_MAX_REQUESTS)
    }
}

/// What one router remembers from its last `/metrics` render: the uncompressed body size,
/// which decides where the next one is rendered (0 at start: the first renders inline), and
/// the buffer the next body is written into.
#[derive(Debug, Default)]
pub struct RenderMemory {
    last_body_len: AtomicUsize,
    buffer: Arc<parking_lot::Mutex<String>>,
}

impl RenderMemory {
    /// Uncompressed size of the last rendered body (0 before the first scrape).
    pub fn last_body_len(&self) -> usize {
        self.last_body_len.load(Ordering::Relaxed)
    }

    /// The kept buffer, emptied (a new one when none is kept or another scrape holds it:
    /// concurrent scrapes simply allocate).
    fn take_buffer(&self) -> String {
        let mut buf = std::mem::take(&mut *self.buffer.lock());
        buf.clear();
        buf
    }
}

/// Builds the router.
pub fn router(state: Arc<HttpState>) -> Router {
    let telemetry_path = if state.telemetry_path.starts_with('/') {
        state.telemetry_path.clone()
    } else {
        format!("/{}", state.telemetry_path)
    };
    Router::new()
        .route("/", get(landing_page))
        .route(&telemetry_path, get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// True when the client accepts gzip: `gzip` with a q above 0, or `*` with a q above 0
/// when gzip is not listed itself (RFC 9110 §12.5.3: `*` covers the codings not named).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip: Option<bool> = None;
    let mut star: Option<bool> = None;
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        // parameter names are case-insensitive (RFC 9110): "Q=0" too
        let q_zero = parts.any(|p| {
            p.split_once('=')
                .filter(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, q)| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if coding.eq_ignore_ascii_case("gzip") {
            gzip = Some(!q_zero);
        } else if coding == "*" {
            star = Some(!q_zero);
        }
    }
    gzip.or(star).unwrap_or(false)
}

/// `/metrics` inside an `http.scrape` span that continues the caller's `traceparent`.
async fn metrics(
    State(state): State<Arc<HttpState>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "http.scrape",
        otel.kind = "server",
        http.request.method = %method,
        http.route = %state.telemetry_path,
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, &headers);
    let limit = state.clone();
    let Some(permit) = limit.scrape_limit.try_enter() else {
        span.record("http.response.status_code", 503i64);
        return too_many_requests();
    };
    let resp = render_metrics(State(state), headers)
        .instrument(span.clone())
        .await;
    // the body keeps the permit: it is dropped once sent, or with the connection
    let resp = resp.map(|body| Body::new(PermitBody::new(body, permit)));
    // an int, as the semantic conventions say (tracing-opentelemetry turns a u16 into text)
    span.record(
        "http.response.status_code",
        i64::from(resp.status().as_u16()),
    );
    resp
}

/// A response body holding its `--web.max-requests` slot until it is dropped: sent, or
/// the connection gone. It hands the body to hyper in [`SEND_CHUNK`] pieces, so hyper,
/// whose write queue is bounded (`MAX_CONNECTION_BUFFER` in `web::server`), takes the next
/// piece only as the client reads: a client that never reads keeps the slot instead of
/// leaving the whole body in hyper's queue. Size and end are the body's, so responses keep
/// their `Content-Length` (HEAD included) instead of turning chunked.
struct PermitBody {
    body: Body,
    /// The rest of the data frame being handed out.
    pending: axum::body::Bytes,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Largest piece of a `/metrics` body handed to hyper at once.
const SEND_CHUNK: usize = 64 * 1024;

impl PermitBody {
    fn new(body: Body, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        PermitBody {
            body,
            pending: axum::body::Bytes::new(),
            _permit: permit,
        }
    }

    fn next_piece(&mut self) -> hyper::body::Frame<axum::body::Bytes> {
        let n = self.pending.len().min(SEND_CHUNK);
        hyper::body::Frame::data(self.pending.split_to(n))
    }
}

impl axum::body::HttpBody for PermitBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        if !self.pending.is_empty() {
            return Poll::Ready(Some(Ok(self.next_piece())));
        }
        match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    self.pending = data;
                    Poll::Ready(Some(Ok(self.next_piece())))
                }
                Err(other) => Poll::Ready(Some(Ok(other))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let inner = self.body.size_hint();
        let pending = self.pending.len() as u64;
        let mut hint = hyper::body::SizeHint::new();
        hint.set_lower(inner.lower() + pending);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + pending);
        }
        hint
    }
}

/// 503 when `--web.max-requests` scrapes are already in flight (as promhttp answers).
fn too_many_requests() -> Response {
    tracing::debug!("/metrics: concurrent request limit reached");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "Limit of concurrent requests reached, try again later.\n",
    )
        .into_response()
}

async fn render_metrics(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let gzip = accepts_gzip(&headers);
    let started = Instant::now();
    let rendered = if state.render.last_body_len() <= INLINE_RENDER_MAX_BYTES {
        Ok(render_body(&state, gzip))
    } else {
        let st = state.clone();
        tokio::task::spawn_blocking(move || render_body(&st, gzip)).await
    };
    state
        .self_health
        .record_scrape(started.elapsed().as_secs_f64());
    match rendered {
        Ok(Ok(bytes)) => {
            // HEAD too gets the body: hyper sends only the headers, with the Content-Length
            // a GET would have (an empty body here made it 0)
            let mut resp = Response::new(Body::from(bytes));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(text::CONTENT_TYPE),
            );
            if gzip {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            resp
        }
        Ok(Err(e)) => {
            state.self_health.record_scrape_error();
            tracing::error!(error = %e, "failed to compress /metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error generating metrics\n",
            )
                .into_response()
        }
        Err(e) => {
            state.self_health.record_scrape_error();
            tracing::error!(error = %e, "failed to build /metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error generating metrics\n",
            )
                .into_response()
        }
    }
}

/// Bodies up to this size (uncompressed) are rendered on the request's own task: about
/// 3000 series, well under a millisecond of work. Handing such a render to the blocking
/// pool and back cost two thread wake-ups per scrape, and on a busy machine each can wait a
/// scheduler time slice: that hand-off, not the render, was the tail of the event→/metrics
/// latency. Larger registries still render on the blocking pool.
const INLINE_RENDER_MAX_BYTES: usize = 512 * 1024;

/// Snapshot, text format, optional gzip; remembers the body's size for the next scrape.
/// The text is written into the router's kept buffer ([`RenderMemory`]); a plain body
/// hands that buffer to the response and gets it back when hyper has sent it.
fn render_body(state: &HttpState, gzip: bool) -> std::io::Result<Bytes> {
    let snapshot = state.registry.snapshot();
    let mut body = state.render.take_buffer();
    // the last body's size plus slack: one allocation even when no buffer was kept
    let last_len = state.render.last_body_len();
    body.reserve(last_len + last_len / 16);
    text::encode(&snapshot, &mut body);
    drop(snapshot);
    state
        .render
        .last_body_len
        .store(body.len(), Ordering::Relaxed);
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 8),
            flate2::Compression::fast(),
        );
        let compressed = enc.write_all(body.as_bytes()).and_then(|_| enc.finish());
        return_render_buffer(&state.render.buffer, body);
        compressed.map(Bytes::from)
    } else {
        Ok(Bytes::from_owner(PooledBody {
            text: body,
            home: state.render.buffer.clone(),
        }))
    }
}

/// Render buffers up to this capacity are kept for the next scrape. A `/metrics` body above
/// glibc's mmap threshold (128 KiB, pinned in [`crate::alloc`]) would otherwise be mapped
/// fresh and unmapped after every scrape: at ~200 KB (1100 series) that was ~50 page faults
/// per scrape plus a TLB flush on unmap, about a sixth of the scrape's CPU. Bigger bodies
/// (10k states: ~2 MB) are not kept: a scrape every 15 s does not pay for holding that much
/// resident memory between scrapes.
const RENDER_BUFFER_KEEP_MAX: usize = 512 * 1024;

/// Keeps `buf` in `home` for the next scrape when it is small enough and bigger than the
/// buffer kept there.
fn return_render_buffer(home: &parking_lot::Mutex<String>, buf: String) {
    if buf.capacity() <= RENDER_BUFFER_KEEP_MAX {
        let mut kept = home.lock();
        if buf.capacity() > kept.capacity() {
            *kept = buf;
        }
    }
}

/// A rendered body; its buffer goes back to its router's [`RenderMemory`] when the
/// response is dropped.
struct PooledBody {
    text: String,
    home: Arc<parking_lot::Mutex<String>>,
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        return_render_buffer(&self.home, std::mem::take(&mut self.text));
    }
}

/// Overall status word of `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Every Miniserver connected, OTLP not failed.
    Healthy,
    /// Some Miniservers connected, or OTLP failed.
    Degraded,
    /// No Miniserver connected (503).
    Unhealthy,
}

/// The `/healthz` body.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// Overall status.
    pub status: HealthStatus,
    /// One entry per configured Miniserver.
    pub miniservers: Vec<MiniserverHealth>,
    /// OTLP status, present only when export is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpStatus>,
}

/// Computes the report (the original's rules, §4.2).
pub fn health_report(miniservers: Vec<MiniserverHealth>, otlp: Option<OtlpStatus>) -> HealthReport {
    let connected = miniservers.iter().filter(|m| m.connected).count();
    let mut status = if !miniservers.is_empty() && connected == miniservers.len() {
        HealthStatus::Healthy
    } else if connected > 0 {
        HealthStatus::Degraded
    } else {
        HealthStatus::Unhealthy
    };
    if status == HealthStatus::Healthy
        && otlp
            .as_ref()
            .is_some_and(|o| o.state == ExportState::Failed)
    {
        status = HealthStatus::Degraded;
    }
    HealthReport {
        status,
        miniservers,
        otlp,
    }
}

async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    let report = health_report(
        state.store.health(),
        state.otlp.as_ref().map(OtlpHealth::get),
    );
    let code = if report.status == HealthStatus::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = serde_json::to_string(&report).unwrap_or_else(|_| "{}".into());
    (
        code,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn format_unix(ts: f64) -> String {
    if ts <= 0.0 {
        return "never".into();
    }
    let (y, m, d, hh, mm, ss) = crate::civil_time::civil_from_unix(ts as i64);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
}

/// Renders the landing page.
pub fn landing_html(state: &HttpState) -> String {
    let report = health_report(
        state.store.health(),
        state.otlp.as_ref().map(OtlpHealth::get),
    );
    let mut rows = String::new();
    for m in &report.miniservers {
        rows.push_str(&format!(
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            html_escape(&m.name),
            if m.connected { "ok" } else { "bad" },
            if m.connected { "connected" } else { "disconnected" },
            format_unix(m.last_update),
            m.controls_discovered,
            m.controls_exported,
            html_escape(m.last_error.as_deref().unwrap_or("")),
        ));
    }
    let otlp = match (&report.otlp, &state.otlp_target) {
        (Some(o), target) => {
            let (proto, endpoint) = target.clone().unwrap_or_default();
            format!(
                "<table><tr><th>State</th><th>Protocol</th><th>Endpoint</th><th>Last success</th><th>Consecutive failures</th><th>Last error</th></tr>\
                 <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
                html_escape(&format!("{:?}", o.state).to_lowercase()),
                html_escape(&proto),
                html_escape(&endpoint),
                o.last_success.map_or_else(|| "never".into(), format_unix),
                o.consecutive_failures,
                html_escape(o.last_error.as_deref().unwrap_or("")),
            )
        }
        _ => "<p>OTLP export is disabled.</p>".to_string(),
    };
    let path = html_escape(&state.telemetry_path);
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Loxone Exporter</title>
<style>
body {{ font-family: -apple-system, system-ui, sans-serif; margin: 0; }}
header {{ background: #e6522c; color: #fff; padding: 0.6em 1em; }}
main {{ padding: 0 1em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }}
td.ok {{ color: #1a7f37; }} td.bad {{ color: #cf222e; }}
</style></head>
<body>
<header><h1>Loxone Exporter</h1></header>
<main>
<p>Loxone Miniserver values for Prometheus and OpenTelemetry. Version {version} (commit {commit}, built {date}).</p>
<ul><li><a href="{path}">Metrics</a></li><li><a href="/healthz">Health (JSON)</a></li></ul>
<h2>Miniservers: {status}</h2>
<table><tr><th>Name</th><th>Connection</th><th>Last update</th><th>Controls discovered</th><th>Controls exported</th><th>Last error</th></tr>
{rows}</table>
<h2>OTLP export</h2>
{otlp}
</main></body></html>
"#,
        version = html_escape(build_info::VERSION),
        commit = html_escape(build_info::COMMIT),
        date = html_escape(build_info::BUILD_DATE),
        status = html_escape(&format!("{:?}", report.status).to_lowercase()),
    )
}

async fn landing_page(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        landing_html(&state),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector whose one family has as many series as `n` says.
    struct Sized(std::sync::atomic::AtomicUsize);
    impl crate::metrics::registry::Collector for Sized {
        fn collect(&self, out: &mut Vec<crate::metrics::model::Family>) {
            use crate::metrics::model::{Family, LabelSet, MetricKind, Sample};
            let mut f = Family::new("sized", "help", MetricKind::Gauge);
            for i in 0..self.0.load(Ordering::Relaxed) {
                f.samples
                    .push(Sample::number(LabelSet::new([("i", i.to_string())]), 1.5));
            }
            out.push(f);
        }
    }

    fn test_state(registry: Arc<Registry>, scrape_limit: ScrapeLimit) -> HttpState {
        HttpState {
            registry,
            store: StateStore::new(&Default::default(), false).unwrap(),
            self_health: Arc::new(SelfHealth::new()),
            otlp: None,
            otlp_target: None,
            telemetry_path: DEFAULT_TELEMETRY_PATH.into(),
            render: RenderMemory::default(),
            scrape_limit,
        }
    }

    /// A collector that says when a scrape is inside it and holds every scrape there until
    /// released.
    #[derive(Default)]
    struct Gate {
        /// (a scrape entered, released)
        state: std::sync::Mutex<(bool, bool)>,
        changed: std::sync::Condvar,
    }
    impl Gate {
        fn wait_entered(&self) {
            let mut s = self.state.lock().unwrap();
            while !s.0 {
                s = self.changed.wait(s).unwrap();
            }
        }
        fn release(&self) {
            self.state.lock().unwrap().1 = true;
            self.changed.notify_all();
        }
    }
    impl crate::metrics::registry::Collector for Gate {
        fn collect(&self, _out: &mut Vec<crate::metrics::model::Family>) {
            let mut s = self.state.lock().unwrap();
            s.0 = true;
            self.changed.notify_all();
            while !s.1 {
                s = self.changed.wait(s).unwrap();
            }
        }
    }

    // three workers: two may sit in the gate, the third drives the timeout
    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn scrapes_beyond_the_limit_get_503_at_once() {
        use tower::ServiceExt as _;
        let gate = Arc::new(Gate::default());
        let registry = Arc::new(Registry::new());
        registry.register(gate.clone());
        let router = router(Arc::new(test_state(registry, ScrapeLimit::new(1))));
        let get = || {
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        // a failing assertion must not leave scrapes stuck in the gate (the runtime's
        // shutdown would wait for them)
        struct ReleaseOnDrop(Arc<Gate>);
        impl Drop for ReleaseOnDrop {
            fn drop(&mut self) {
                self.0.release();
            }
        }
        let _release = ReleaseOnDrop(gate.clone());
        let first = tokio::spawn(router.clone().oneshot(get()));
        let entered = gate.clone();
        tokio::task::spawn_blocking(move || entered.wait_entered())
            .await
            .unwrap();
        // the first scrape holds the only permit until released: the second is answered
        // without waiting for it (a wait would end in the timeout)
        let second = tokio::spawn(router.clone().oneshot(get()));
        let second = tokio::time::timeout(std::time::Duration::from_secs(10), second)
            .await
            .expect("answered while the first scrape still runs")
            .unwrap()
            .unwrap();
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        gate.release();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        // the slot is free again
        assert_eq!(
            router.oneshot(get()).await.unwrap().status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_body_not_yet_sent_holds_its_slot() {
        use http_body_util::BodyExt as _;
        use tower::ServiceExt as _;
        let registry = Arc::new(Registry::new());
        registry.register(Arc::new(Sized(AtomicUsize::new(10))));
        let router = router(Arc::new(test_state(registry, ScrapeLimit::new(1))));
        let get = || {
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap()
        };
        // a client that asks and does not read: its body, rendered, waits to be sent
        let unread = router.clone().oneshot(get()).await.unwrap();
        assert_eq!(unread.status(), StatusCode::OK);
        // still a known length (Content-Length, not chunked)
        use axum::body::HttpBody as _;
        assert!(unread.body().size_hint().exact().is_some());
        let second = router.clone().oneshot(get()).await.unwrap();
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        // sent (or the connection gone): the slot is free, the whole body was there
        let body = unread.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"# HELP sized"));
        let third = router.oneshot(get()).await.unwrap();
        assert_eq!(third.status(), StatusCode::OK);
    }

    #[test]
    fn reused_render_buffer_never_leaks_an_earlier_body() {
        let sized = Arc::new(Sized(AtomicUsize::new(3000)));
        let registry = Arc::new(Registry::new());
        registry.register(sized.clone());
        let state = test_state(registry.clone(), ScrapeLimit::default());
        // big, then small (into the kept, larger buffer), then big again, gzip in between
        for n in [3000, 2, 3000, 5] {
            sized.0.store(n, Ordering::Relaxed);
            let want = text::encode_to_string(&registry.snapshot());
            let got = render_body(&state, false).unwrap();
            assert_eq!(&got[..], want.as_bytes(), "{n} series");
            assert_eq!(state.render.last_body_len(), want.len());
            let gz = render_body(&state, true).unwrap();
            let mut plain = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain)
                .unwrap();
            assert_eq!(plain, want, "{n} series, gzip");
        }
    }

    fn ms(name: &str, connected: bool) -> MiniserverHealth {
        MiniserverHealth {
            name: name.into(),
            connected,
            last_update: 0.0,
            controls_discovered: 0,
            controls_exported: 0,
            last_error: None,
        }
    }

    #[test]
    fn health_rules_follow_the_original() {
        assert_eq!(
            health_report(vec![ms("a", true), ms("b", true)], None).status,
            HealthStatus::Healthy
        );
        assert_eq!(
            health_report(vec![ms("a", true), ms("b", false)], None).status,
            HealthStatus::Degraded
        );
        assert_eq!(
            health_report(vec![ms("a", false)], None).status,
            HealthStatus::Unhealthy
        );
        assert_eq!(health_report(vec![], None).status, HealthStatus::Unhealthy);
        let failed = OtlpStatus {
            state: ExportState::Failed,
            ..OtlpStatus::default()
        };
        assert_eq!(
            health_report(vec![ms("a", true)], Some(failed)).status,
            HealthStatus::Degraded
        );
    }

    #[test]
    fn gzip_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&m)
        };
        assert!(h("gzip"));
        assert!(h("deflate, gzip;q=0.5"));
        assert!(!h("gzip;q=0"));
        assert!(!h("gzip; Q=0"));
        assert!(!h("identity"));
        assert!(h("*"));
        // `*` covers only the codings not named
        assert!(!h("gzip;q=0, *"));
        assert!(!h("*, gzip;q=0"));
        assert!(h("gzip, *;q=0"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn html_is_escaped_and_dates_render() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(format_unix(0.0), "never");
        assert_eq!(format_unix(1_230_768_000.0), "2009-01-01 00:00:00 UTC");
    }
}
