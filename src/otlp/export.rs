//! The OTLP export loop: schedule, retry state machine and health reporting.
//!
//! Implements issue 5's state machine on the original's numbers (`docs/original-exporter.md`
//! §5.2) without its defects:
//! - states DISABLED, IDLE, EXPORTING, RETRYING, FAILED; [`OtlpHealth`] and [`ExportStats`]
//!   are updated at **every** transition (state, consecutive failures, sanitised last error,
//!   last success, duration);
//! - the first export runs right after start, then one per `interval` (missed ticks are
//!   skipped, never queued, and exports never overlap: one sequential task does them all);
//! - a retryable failure schedules a retry after a backoff of 1 s doubling to 300 s (with
//!   jitter), but only if it comes before the next tick: a retry never delays the schedule.
//!   A server hint (Retry-After, RetryInfo) is a floor: nothing is sent before it;
//! - every attempt takes a fresh [`Registry::snapshot`], so a retry sends the newest data;
//! - FAILED after 10 consecutive failures or one non-retryable failure; from FAILED only the
//!   scheduled ticks try again, and the first success returns to IDLE;
//! - on shutdown the pending wait (or an in-flight attempt) is cut short and one final
//!   export runs within the configured timeout, but at most [`FINAL_EXPORT_BUDGET`] after
//!   the signal: the process is gone within 2 s of SIGTERM (`app::SHUTDOWN_GRACE`), and the
//!   final export's outcome is logged either way. It too waits for a server hint, and is
//!   skipped (with a log line) when the hint ends after the budget, or when an attempt
//!   busy with a huge snapshot used the budget up; a failed or skipped final export leaves
//!   the state FAILED, as no retry follows (a skip for a hint leaves it as it was).
//!
//! Does not: convert (see `convert`) or talk to the network (see `transport`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::backoff::{Backoff, BackoffError};
use crate::config::OtlpConfig;
use crate::metrics::health::{ExportState, OtlpHealth};
use crate::metrics::Registry;
use crate::otlp::convert::{build_resource, Converter, ResourceInfo};
use crate::otlp::health::ExportStats;
use crate::otlp::transport::{sanitize, secrets_of, ExportOutcome, Transport};

/// Longest the final export on shutdown may take (less when the export timeout is
/// shorter): it must finish, and be logged, inside `app::SHUTDOWN_GRACE`.
pub const FINAL_EXPORT_BUDGET: Duration = Duration::from_millis(1200);
/// Consecutive failures after which the loop goes FAILED (the original's number).
pub const MAX_CONSECUTIVE_FAILURES: u32 = 10;
/// First retry delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Jitter fraction applied to retry delays.
pub const BACKOFF_JITTER: f64 = 0.1;
/// Shortest interval accepted (guards against a busy loop on a zero interval).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Requests of one export sent at the same time, at most: a snapshot bigger than
/// [`MIN_PART_BYTES`](crate::otlp::convert::MIN_PART_BYTES) is split into this many requests of similar size, so a collector
/// can decode them in parallel (decoding is most of an export's cost: about 12–20 ms of a
/// collector's CPU for 10k series; rotel 0.0.1a15 mostly decodes them one after the other,
/// which costs nothing over one request). Exports themselves never overlap.
pub const CONCURRENT_REQUESTS: usize = 2;

/// Where requests go: the real [`Transport`] (built lazily) or a test double.
pub trait MetricsSink: Send + Sync {
    /// Sends one encoded `ExportMetricsServiceRequest` and classifies the answer. The parts
    /// of one export may be sent concurrently.
    fn send(&self, request: Bytes) -> impl Future<Output = ExportOutcome> + Send;
}

impl MetricsSink for Transport {
    fn send(&self, request: Bytes) -> impl Future<Output = ExportOutcome> + Send {
        Transport::send(self, request)
    }
}

/// A [`Transport`] built on first use and rebuilt after a build failure, so a CA file that
/// appears later, or a collector that is down at start, is picked up without a restart.
pub struct LazyTransport {
    config: OtlpConfig,
    transport: tokio::sync::OnceCell<Transport>,
}

impl LazyTransport {
    /// A sink for `config`; nothing is built or connected yet.
    pub fn new(config: OtlpConfig) -> Self {
        LazyTransport {
            config,
            transport: tokio::sync::OnceCell::new(),
        }
    }
}

impl MetricsSink for LazyTransport {
    async fn send(&self, request: Bytes) -> ExportOutcome {
        // A failed build leaves the cell empty: the next send tries again.
        let built = self
            .transport
            .get_or_try_init(|| async { Transport::new(&self.config) })
            .await;
        match built {
            Ok(t) => t.send(request).await,
            Err(e) => {
                let secrets = secrets_of(&self.config.headers, &self.config.endpoint);
                let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
                ExportOutcome::Drop {
                    reason: sanitize(&e.to_string(), &secrets),
                }
            }
        }
    }
}

/// What the requests of one export attempt achieved together.
#[derive(Debug, Clone, PartialEq)]
pub struct SendTally {
    /// Data points in requests the collector accepted (in full or partially).
    pub accepted_points: u64,
    /// Data points the collector rejected in partially successful requests.
    pub rejected_points: i64,
    /// The collector's message of the last partially successful request, kept even when
    /// another request of the attempt failed (the outcome then says only the failure).
    pub partial_message: Option<String>,
    /// The outcome of the attempt: the worst of the requests' outcomes (drop, then retry
    /// with the longest server delay, then partial success, then sent).
    pub outcome: ExportOutcome,
}

/// Sends `requests` (with the data points each holds) through `sink`, up to `concurrency`
/// at a time, in order. After the first failure no further request is started (those in
/// flight finish); the attempt's outcome is the worst of the answers, see [`SendTally`].
pub async fn send_requests<S: MetricsSink>(
    sink: &S,
    requests: impl IntoIterator<Item = (Bytes, usize)>,
    concurrency: usize,
) -> SendTally {
    use futures_util::stream::{FuturesUnordered, StreamExt as _};
    let mut tally = SendTally {
        accepted_points: 0,
        rejected_points: 0,
        partial_message: None,
        outcome: ExportOutcome::Sent,
    };
    let mut pending = requests.into_iter();
    let mut in_flight = FuturesUnordered::new();
    let send =
        |(request, points): (Bytes, usize)| async move { (sink.send(request).await, points) };
    loop {
        let failed = matches!(
            tally.outcome,
            ExportOutcome::Retry { .. } | ExportOutcome::Drop { .. }
        );
        while !failed && in_flight.len() < concurrency.max(1) {
            match pending.next() {
                Some(request) => in_flight.push(send(request)),
                None => break,
            }
        }
        let Some((outcome, points)) = in_flight.next().await else {
            break;
        };
        let outcome = match outcome {
            ExportOutcome::Sent => {
                tally.accepted_points += points as u64;
                ExportOutcome::Sent
            }
            ExportOutcome::PartialSuccess { rejected, message } => {
                // the collector's count, bounded by what this request carried: a count of
                // i64::MAX made the counter wrap and go down
                let rejected = rejected.clamp(0, i64::try_from(points).unwrap_or(i64::MAX));
                tally.accepted_points += points as u64;
                tally.rejected_points += rejected;
                tally.partial_message = Some(message.clone());
                ExportOutcome::PartialSuccess { rejected, message }
            }
            failure @ (ExportOutcome::Retry { .. } | ExportOutcome::Drop { .. }) => failure,
        };
        tally.outcome = worse(
            std::mem::replace(&mut tally.outcome, ExportOutcome::Sent),
            outcome,
        );
    }
    tally
}

/// The worse of two outcomes of one attempt: drop over retry over partial success over
/// sent. Of two retries the one with the longer server delay wins (both hints are floors);
/// of two partial successes the rejected counts add up.
fn worse(a: ExportOutcome, b: ExportOutcome) -> ExportOutcome {
    use ExportOutcome::{Drop, PartialSuccess, Retry, Sent};
    match (a, b) {
        (d @ Drop { .. }, _) | (_, d @ Drop { .. }) => d,
        (Retry { after: a1, reason }, Retry { after: a2, .. }) if a1 >= a2 => {
            Retry { after: a1, reason }
        }
        (Retry { .. }, r @ Retry { .. }) => r,
        (r @ Retry { .. }, _) | (_, r @ Retry { .. }) => r,
        (
            PartialSuccess { rejected: r1, .. },
            PartialSuccess {
                rejected: r2,
                message,
            },
        ) => PartialSuccess {
            rejected: r1.max(0).saturating_add(r2.max(0)),
            message,
        },
        (p @ PartialSuccess { .. }, Sent) | (Sent, p @ PartialSuccess { .. }) => p,
        (Sent, Sent) => Sent,
    }
}

/// Longest gap between two WARN lines about the same partial success.
const PARTIAL_SUCCESS_LOG_EVERY: Duration = Duration::from_secs(600);

/// The export loop's state; see the module documentation.
pub struct ExportLoop<S: MetricsSink> {
    sink: S,
    registry: Arc<Registry>,
    converter: Converter,
    health: OtlpHealth,
    stats: Arc<ExportStats>,
    interval: Duration,
    timeout: Duration,
    backoff: Backoff,
    random: Box<dyn FnMut() -> f64 + Send>,
    /// Earliest time the server allows the next request (Retry-After / RetryInfo).
    not_before: Option<Instant>,
    failure_log: FailureLog,
    partial_log: PartialSuccessLog,
    /// Points the previous conversion left out as too large (logged when it changes).
    last_oversized: usize,
    /// FAILED was entered and no export has succeeded since: only scheduled ticks try.
    failed: bool,
}

impl<S: MetricsSink> ExportLoop<S> {
    /// A loop sending `registry` snapshots through `sink` every `interval`; `timeout`
    /// bounds the final export on shutdown. `random` yields values in `0.0..1.0` for the
    /// backoff jitter (`rand::random` in production, a constant in tests). Fails only if
    /// the backoff constants were invalid.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sink: S,
        registry: Arc<Registry>,
        converter: Converter,
        health: OtlpHealth,
        stats: Arc<ExportStats>,
        interval: Duration,
        timeout: Duration,
        random: Box<dyn FnMut() -> f64 + Send>,
    ) -> Result<Self, BackoffError> {
        let backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_JITTER)?;
        Ok(ExportLoop {
            sink,
            registry,
            converter,
            health,
            stats,
            interval: interval.max(MIN_INTERVAL),
            timeout,
            backoff,
            random,
            not_before: None,
            failure_log: FailureLog::default(),
            partial_log: PartialSuccessLog::default(),
            last_oversized: 0,
            failed: false,
        })
    }

    /// Runs until `shutdown` is cancelled, then does the final export.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let cancelled_at = stamp_cancellation(&shutdown);
        self.set_state(ExportState::Idle);
        let mut next_tick = Instant::now();
        let mut retry_at: Option<Instant> = None;
        // self-telemetry: one `otlp.export` span per scheduled export, kept across its
        // retries, with one `otlp.attempt` child per try
        let mut export_span: Option<tracing::Span> = None;
        loop {
            let mut wake = retry_at.map_or(next_tick, |r| r.min(next_tick));
            if let Some(nb) = self.not_before {
                wake = wake.max(nb);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            while next_tick <= now {
                next_tick += self.interval;
            }
            let parent = export_span.get_or_insert_with(|| tracing::info_span!("otlp.export"));
            let attempt_no = i64::from(self.backoff.failures()) + 1;
            let attempt_span = tracing::info_span!(parent: &*parent, "otlp.attempt", otlp.attempt = attempt_no, otlp.outcome = tracing::field::Empty, otel.status_code = tracing::field::Empty);
            let outcome = tokio::select! {
                biased;
                // Abandon an in-flight attempt: the final export below sends fresher data.
                _ = shutdown.cancelled() => break,
                o = self.attempt().instrument(attempt_span.clone()) => o,
            };
            let kind = crate::telemetry::outcome_kind(&outcome);
            attempt_span.record("otlp.outcome", kind);
            if matches!(
                outcome,
                ExportOutcome::Retry { .. } | ExportOutcome::Drop { .. }
            ) {
                attempt_span.record("otel.status_code", "ERROR");
            }
            crate::telemetry::span_event(
                parent,
                "otlp.attempt",
                vec![
                    opentelemetry::KeyValue::new("otlp.attempt", attempt_no),
                    opentelemetry::KeyValue::new("otlp.outcome", kind),
                ],
            );
            // Ticks missed while exporting are skipped, not caught up.
            let now = Instant::now();
            while next_tick <= now {
                next_tick += self.interval;
            }
            retry_at = attempt_span.in_scope(|| self.record(outcome, next_tick));
            if let Some(at) = retry_at {
                crate::telemetry::span_event(
                    parent,
                    "otlp.retry",
                    vec![
                        opentelemetry::KeyValue::new(
                            "otlp.retry_in_s",
                            at.saturating_duration_since(Instant::now()).as_secs_f64(),
                        ),
                        opentelemetry::KeyValue::new("otlp.attempt", attempt_no + 1),
                    ],
                );
            } else {
                export_span = None;
            }
        }
        drop(export_span);
        let cancelled_at = cancelled_at.get().copied().unwrap_or_else(Instant::now);
        self.final_export(cancelled_at)
            .instrument(tracing::info_span!("otlp.export", otlp.final_export = true))
            .await;
    }

    /// The export on shutdown: within the export timeout, at most [`FINAL_EXPORT_BUDGET`]
    /// after `cancelled_at`, and never before a server's Retry-After / RetryInfo.
    async fn final_export(&mut self, cancelled_at: Instant) {
        let budget = if self.timeout.is_zero() {
            FINAL_EXPORT_BUDGET
        } else {
            self.timeout.min(FINAL_EXPORT_BUDGET)
        };
        let deadline = cancelled_at + budget;
        if let Some(not_before) = self.not_before {
            if not_before >= deadline {
                let wait = not_before.saturating_duration_since(Instant::now());
                tracing::warn!(
                    retry_after_s = wait.as_secs_f64(),
                    "final OTLP export on shutdown skipped: the collector asked to wait longer than the shutdown allows"
                );
                return;
            }
            tokio::time::sleep_until(not_before).await;
        }
        let started = Instant::now();
        if started >= deadline {
            let reason = format!(
                "final export skipped: the shutdown budget of {budget:?} was used up by the export in flight"
            );
            tracing::warn!("{reason}");
            // the abandoned attempt left EXPORTING; nothing was delivered
            self.final_failed(reason);
            return;
        }
        let outcome = match tokio::time::timeout_at(deadline, self.attempt()).await {
            Ok(o) => o,
            Err(_) => {
                // `attempt` observes only the attempts it finishes
                self.observe_duration(started.elapsed().as_secs_f64());
                ExportOutcome::Retry {
                    after: None,
                    reason: format!("final export timed out after {budget:?} (shutdown)"),
                }
            }
        };
        match outcome {
            ExportOutcome::Sent | ExportOutcome::PartialSuccess { .. } => {
                tracing::info!("final OTLP export on shutdown sent");
                let far = Instant::now();
                self.record(outcome, far);
            }
            ExportOutcome::Retry { reason, .. } | ExportOutcome::Drop { reason } => {
                tracing::warn!(error = %reason, "final OTLP export on shutdown not delivered");
                self.final_failed(reason);
            }
        }
    }

    /// The final export did not deliver (the caller logged why): no retry follows, so
    /// FAILED, not RETRYING, and no second log line.
    fn final_failed(&mut self, reason: String) {
        self.failure_log.quiet_after(&reason);
        self.backoff.fail((self.random)());
        let failures = self.backoff.failures();
        self.fail(ExportState::Failed, failures, reason);
    }

    /// Records how long an attempt took (histogram and `/healthz`).
    fn observe_duration(&self, seconds: f64) {
        self.stats.observe_duration(seconds);
        self.health
            .update(|s| s.last_duration_seconds = Some(seconds));
    }

    /// One export attempt: fresh snapshot, convert, send the requests (up to
    /// [`CONCURRENT_REQUESTS`] at a time); no new request starts after a failure.
    async fn attempt(&mut self) -> ExportOutcome {
        let started = Instant::now();
        // before EXPORTING is set: the pushed `loxone_otlp_export_status` then says what
        // the loop was doing (idle, retrying, failed), not always "exporting"
        let snapshot = self.registry.snapshot();
        self.set_state(ExportState::Exporting);
        let conversion = self.converter.convert(&snapshot);
        if conversion.oversized_points > 0 {
            self.stats.add_rejected(conversion.oversized_points as u64);
            if self.last_oversized != conversion.oversized_points {
                tracing::warn!(
                    points = conversion.oversized_points,
                    max_request_bytes = self.converter.max_request_bytes(),
                    "OTLP data points left out: each alone exceeds the request size limit (raise opentelemetry.max_request_bytes to send them)"
                );
            }
        }
        self.last_oversized = conversion.oversized_points;
        let requests = conversion
            .bodies
            .into_iter()
            .zip(conversion.points_per_request.iter().copied());
        let tally = send_requests(&self.sink, requests, CONCURRENT_REQUESTS).await;
        let accepted_points = tally.accepted_points;
        let rejected_total = tally.rejected_points;
        let rejected = u64::try_from(rejected_total).unwrap_or(0);
        self.observe_duration(started.elapsed().as_secs_f64());
        self.stats
            .add_exported(accepted_points.saturating_sub(rejected));
        self.stats.add_rejected(rejected);
        if let (Some(message), ExportOutcome::Retry { .. } | ExportOutcome::Drop { .. }) =
            (&tally.partial_message, &tally.outcome)
        {
            // counted above; the failure's outcome below does not carry the message
            self.log_partial_success(rejected_total, message);
        }
        match tally.outcome {
            ExportOutcome::Sent => {
                self.converter.acknowledge(conversion.generation);
                ExportOutcome::Sent
            }
            ExportOutcome::PartialSuccess { message, .. } => {
                self.converter.acknowledge(conversion.generation);
                ExportOutcome::PartialSuccess {
                    rejected: rejected_total,
                    message,
                }
            }
            failure => failure,
        }
    }

    /// Applies an attempt's outcome to the state machine and health; returns when to retry
    /// if that is before `next_tick`.
    fn record(&mut self, outcome: ExportOutcome, next_tick: Instant) -> Option<Instant> {
        let now = Instant::now();
        match outcome {
            ExportOutcome::Sent | ExportOutcome::PartialSuccess { .. } => {
                if let ExportOutcome::PartialSuccess { rejected, message } = &outcome {
                    self.log_partial_success(*rejected, message);
                }
                if self.backoff.failures() > 0 {
                    tracing::info!("OTLP export recovered");
                }
                self.backoff.reset();
                self.not_before = None;
                self.failed = false;
                self.failure_log = FailureLog::default();
                let wall = unix_seconds(SystemTime::now());
                self.health.update(|s| {
                    s.state = ExportState::Idle;
                    s.consecutive_failures = 0;
                    s.last_success = Some(wall);
                    s.last_error = None;
                });
                None
            }
            ExportOutcome::Retry { after, reason } => {
                let delay = self.backoff.fail((self.random)());
                let failures = self.backoff.failures();
                self.not_before = after.map(|a| now + a);
                let delay = after.map_or(delay, |a| a.max(delay));
                let state = if failures >= MAX_CONSECUTIVE_FAILURES || self.failed {
                    ExportState::Failed
                } else {
                    ExportState::Retrying
                };
                self.fail(state, failures, reason);
                let at = now + delay;
                (state == ExportState::Retrying && at < next_tick).then_some(at)
            }
            ExportOutcome::Drop { reason } => {
                self.backoff.fail((self.random)());
                let failures = self.backoff.failures();
                self.stats.add_dropped();
                self.not_before = None;
                self.fail(ExportState::Failed, failures, reason);
                None
            }
        }
    }

    fn log_partial_success(&mut self, rejected: i64, message: &str) {
        if self.partial_log.warn(message, Instant::now()) {
            tracing::warn!(rejected, collector_message = %message, "OTLP collector accepted the export partially");
        } else {
            tracing::debug!(rejected, collector_message = %message, "OTLP collector accepted the export partially");
        }
    }

    fn fail(&mut self, state: ExportState, failures: u32, reason: String) {
        self.failed |= state == ExportState::Failed;
        match self.failure_log.level(state, &reason) {
            Some(tracing::Level::ERROR) => {
                tracing::error!(consecutive_failures = failures, error = %reason, "OTLP export failed; retrying on the next scheduled export");
            }
            Some(_) => {
                tracing::warn!(consecutive_failures = failures, error = %reason, "OTLP export failed; will retry");
            }
            None => {
                tracing::debug!(consecutive_failures = failures, error = %reason, ?state, "OTLP export failed again");
            }
        }
        self.health.update(|s| {
            s.state = state;
            s.consecutive_failures = failures;
            s.last_error = Some(reason);
        });
    }

    fn set_state(&self, state: ExportState) {
        self.health.update(|s| s.state = state);
    }
}

/// When `shutdown` is cancelled, stamped on a thread of its own. The final export's budget
/// counts from then, not from when the loop notices: an attempt busy with a huge snapshot
/// (no await point) notices late, `app::SHUTDOWN_GRACE` runs from the signal, and a task on
/// the runtime could be woken late too while a worker is held. Read after the loop
/// noticed; unset (thread not started) means "now".
fn stamp_cancellation(shutdown: &CancellationToken) -> Arc<std::sync::OnceLock<Instant>> {
    let stamp = Arc::new(std::sync::OnceLock::new());
    let (token, set) = (shutdown.clone(), Arc::clone(&stamp));
    // the runtime's clock (paused in tests) and a waker that needs no worker
    let runtime = tokio::runtime::Handle::current();
    let started = std::thread::Builder::new()
        .name("otlp-shutdown".into())
        .spawn(move || {
            runtime.block_on(async move {
                token.cancelled().await;
                let _ = set.set(Instant::now());
            });
        });
    if let Err(e) = started {
        tracing::debug!(error = %e, "no shutdown clock thread; the final export counts from when the loop notices");
    }
    stamp
}

/// Which failed attempts reach the log: a new reason (WARN while retrying, ERROR once
/// FAILED), and the step into FAILED even with the same reason (the tenth identical
/// failure turns `/healthz` "degraded": the log must say so too). Repeats go to debug.
#[derive(Debug, Default)]
struct FailureLog {
    reason: Option<String>,
    failed: bool,
}

impl FailureLog {
    /// The level to log this failure at (`None`: debug only), remembering it.
    fn level(&mut self, state: ExportState, reason: &str) -> Option<tracing::Level> {
        let failed = state == ExportState::Failed;
        let news = self.reason.as_deref() != Some(reason) || (failed && !self.failed);
        self.reason = Some(reason.to_owned());
        self.failed = failed;
        news.then_some(if failed {
            tracing::Level::ERROR
        } else {
            tracing::Level::WARN
        })
    }

    /// Something else already logged `reason` (the final export): stay quiet about it.
    fn quiet_after(&mut self, reason: &str) {
        self.reason = Some(reason.to_owned());
        self.failed = true;
    }
}

/// The same partial success export after export (a collector rejecting some series for
/// good) is a WARN when it is new, then once per [`PARTIAL_SUCCESS_LOG_EVERY`]; the
/// rejected-points counter has every one.
#[derive(Default)]
struct PartialSuccessLog {
    /// The message last logged at WARN, and when.
    last: Option<(String, Instant)>,
}

impl PartialSuccessLog {
    /// True when this partial success is worth a WARN (remembered as such).
    fn warn(&mut self, message: &str, now: Instant) -> bool {
        let repeat = self.last.as_ref().is_some_and(|(m, at)| {
            m == message && now.duration_since(*at) < PARTIAL_SUCCESS_LOG_EVERY
        });
        if !repeat {
            self.last = Some((message.to_owned(), now));
        }
        !repeat
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This host's name: `/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`.
pub fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_string())
}

/// When this process started (Linux: `/proc/self/stat` start ticks after `/proc/stat`
/// boot time, USER_HZ = 100); `fallback` elsewhere or when unreadable.
pub fn process_start_time(fallback: SystemTime) -> SystemTime {
    let read = || -> Option<SystemTime> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Field 22 (starttime); fields after the `)` of the command name.
        let after = stat.rsplit_once(')')?.1;
        let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
        let boot: u64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let start = SystemTime::UNIX_EPOCH
            + Duration::from_secs(boot)
            + Duration::from_millis(ticks.saturating_mul(10));
        Some(start)
    };
    match read() {
        Some(t) if t <= fallback => t,
        _ => fallback,
    }
}

/// Runs the OTLP export until `shutdown` is cancelled (then exports once more). With
/// `config.enabled == false` it marks `health` DISABLED and returns at once.
/// `instance_id` becomes `service.instance.id` (`host:port` of the `/metrics` listener).
/// Feeds the process-wide [`ExportStats`] that [`crate::otlp::health_collector`] reads.
pub async fn run_export_loop(
    config: OtlpConfig,
    registry: Arc<Registry>,
    health: OtlpHealth,
    instance_id: String,
    shutdown: CancellationToken,
) {
    run_export_loop_with_stats(
        config,
        registry,
        health,
        ExportStats::global(),
        instance_id,
        shutdown,
    )
    .await
}

/// [`run_export_loop`] feeding the given statistics (for tests and for callers that run
/// more than one loop in a process).
pub async fn run_export_loop_with_stats(
    config: OtlpConfig,
    registry: Arc<Registry>,
    health: OtlpHealth,
    stats: Arc<ExportStats>,
    instance_id: String,
    shutdown: CancellationToken,
) {
    if !config.enabled {
        health.update(|s| s.state = ExportState::Disabled);
        return;
    }
    let resource = build_resource(&ResourceInfo {
        service_name: config.service_name.clone(),
        instance_id,
        host_name: local_host_name(),
        extra: config.resource_attributes.clone(),
    });
    let converter = Converter::new(
        resource,
        process_start_time(SystemTime::now()),
        config.max_request_bytes,
    )
    .split_into(CONCURRENT_REQUESTS);
    tracing::info!(endpoint = %crate::secret::redact_url(&config.endpoint), protocol = ?config.protocol, interval = ?config.interval, "OTLP export starting");
    let interval = config.interval;
    let timeout = config.timeout;
    match ExportLoop::new(
        LazyTransport::new(config),
        registry,
        converter,
        health.clone(),
        stats,
        interval,
        timeout,
        Box::new(rand::random::<f64>),
    ) {
        Ok(export) => export.run(shutdown).await,
        Err(e) => {
            tracing::error!(error = %e, "OTLP export cannot start");
            health.update(|s| {
                s.state = ExportState::Failed;
                s.last_error = Some(e.to_string());
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{Family, MetricKind};
    use crate::metrics::Collector;
    use crate::otlp::convert::ResourceInfo;
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
    use parking_lot::Mutex;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn entering_failed_is_logged_even_when_the_reason_repeats() {
        use tracing::Level;
        let mut log = super::FailureLog::default();
        let (retrying, failed) = (ExportState::Retrying, ExportState::Failed);
        assert_eq!(log.level(retrying, "refused"), Some(Level::WARN));
        assert_eq!(log.level(retrying, "refused"), None);
        assert_eq!(log.level(failed, "refused"), Some(Level::ERROR));
        assert_eq!(log.level(failed, "refused"), None);
        assert_eq!(log.level(failed, "timed out"), Some(Level::ERROR));
        log.quiet_after("gone");
        assert_eq!(log.level(failed, "gone"), None);
    }

    /// Gauge whose value counts how many snapshots were taken.
    struct SnapshotCounter(AtomicU64);
    impl Collector for SnapshotCounter {
        fn collect(&self, out: &mut Vec<Family>) {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            out.push(Family::single(
                "snap",
                "snapshots",
                MetricKind::Gauge,
                n as f64,
            ));
        }
    }

    #[derive(Debug, Clone)]
    struct Call {
        at: Duration,
        state: ExportState,
        value: f64,
    }

    #[derive(Default)]
    struct ScriptInner {
        outcomes: VecDeque<(Duration, ExportOutcome)>,
        calls: Vec<Call>,
        in_flight: bool,
        overlapped: bool,
    }

    #[derive(Clone, Default)]
    struct Script(Arc<Mutex<ScriptInner>>);

    impl Script {
        fn push(&self, delay: Duration, outcome: ExportOutcome) {
            self.0.lock().outcomes.push_back((delay, outcome));
        }
        fn times(&self) -> Vec<u64> {
            self.0.lock().calls.iter().map(|c| c.at.as_secs()).collect()
        }
        fn calls(&self) -> Vec<Call> {
            self.0.lock().calls.clone()
        }
    }

    struct FakeSink {
        script: Script,
        health: OtlpHealth,
        start: Instant,
    }

    impl MetricsSink for FakeSink {
        async fn send(&self, request: Bytes) -> ExportOutcome {
            use prost::Message;
            let request =
                opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest::decode(
                    request,
                )
                .expect("valid protobuf");
            let value = request.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .find_map(|m| match &m.data {
                    Some(metric::Data::Gauge(g)) => match g.data_points[0].value {
                        Some(number_data_point::Value::AsDouble(v)) => Some(v),
                        _ => None,
                    },
                    _ => None,
                })
                .unwrap_or(f64::NAN);
            let (delay, outcome) = {
                let mut s = self.script.0.lock();
                if s.in_flight {
                    s.overlapped = true;
                }
                s.in_flight = true;
                s.calls.push(Call {
                    at: self.start.elapsed(),
                    state: self.health.get().state,
                    value,
                });
                s.outcomes
                    .pop_front()
                    .unwrap_or((Duration::ZERO, ExportOutcome::Sent))
            };
            tokio::time::sleep(delay).await;
            self.script.0.lock().in_flight = false;
            outcome
        }
    }

    struct Harness {
        script: Script,
        health: OtlpHealth,
        stats: Arc<ExportStats>,
        shutdown: CancellationToken,
        handle: tokio::task::JoinHandle<()>,
    }

    /// A loop over `collector` sending through a [`FakeSink`] playing `script`, with
    /// requests of at most `max_request_bytes`.
    fn export_loop(
        collector: Arc<dyn Collector>,
        script: &Script,
        (interval, timeout): (Duration, Duration),
        max_request_bytes: usize,
    ) -> (ExportLoop<FakeSink>, OtlpHealth, Arc<ExportStats>) {
        let registry = Arc::new(Registry::new());
        registry.register(collector);
        let health = OtlpHealth::new(ExportState::Disabled);
        let stats = ExportStats::new();
        let resource = build_resource(&ResourceInfo {
            service_name: "t".into(),
            instance_id: "h:1".into(),
            host_name: "h".into(),
            extra: vec![],
        });
        let converter = Converter::new(resource, SystemTime::now(), max_request_bytes);
        let sink = FakeSink {
            script: script.clone(),
            health: health.clone(),
            start: Instant::now(),
        };
        let export = ExportLoop::new(
            sink,
            registry,
            converter,
            health.clone(),
            stats.clone(),
            interval,
            timeout,
            Box::new(|| 0.5),
        )
        .unwrap();
        (export, health, stats)
    }

    fn start(interval_secs: u64, timeout_secs: u64, script: Script) -> Harness {
        let (export, health, stats) = export_loop(
            Arc::new(SnapshotCounter(AtomicU64::new(0))),
            &script,
            (
                Duration::from_secs(interval_secs),
                Duration::from_secs(timeout_secs),
            ),
            1 << 20,
        );
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(export.run(shutdown.clone()));
        Harness {
            script,
            health,
            stats,
            shutdown,
            handle,
        }
    }

    fn retry() -> ExportOutcome {
        ExportOutcome::Retry {
            after: None,
            reason: "HTTP 503 Service Unavailable".into(),
        }
    }

    fn unauthorized() -> ExportOutcome {
        ExportOutcome::Drop {
            reason: "HTTP 401 Unauthorized".into(),
        }
    }

    async fn advance_to(start: Instant, secs_f: f64) {
        tokio::time::sleep_until(start + Duration::from_secs_f64(secs_f)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn first_export_at_once_then_every_interval() {
        let t0 = Instant::now();
        let h = start(10, 5, Script::default());
        advance_to(t0, 35.0).await;
        assert_eq!(h.script.times(), vec![0, 10, 20, 30]);
        let st = h.health.get();
        assert_eq!(st.state, ExportState::Idle);
        assert!(st.last_success.unwrap() > 1e9);
        assert!(st.last_duration_seconds.is_some());
        assert_eq!(h.stats.exported_points(), 4);
        assert_eq!(h.stats.attempts(), 4);
        // every attempt saw EXPORTING and a fresh snapshot
        let calls = h.script.calls();
        assert!(calls.iter().all(|c| c.state == ExportState::Exporting));
        let values: Vec<f64> = calls.iter().map(|c| c.value).collect();
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_but_never_delay_the_schedule() {
        let t0 = Instant::now();
        let script = Script::default();
        for _ in 0..5 {
            script.push(Duration::ZERO, retry());
        }
        let h = start(10, 5, script);
        advance_to(t0, 0.5).await;
        let st = h.health.get();
        assert_eq!(st.state, ExportState::Retrying);
        assert_eq!(st.consecutive_failures, 1);
        assert_eq!(
            st.last_error.as_deref(),
            Some("HTTP 503 Service Unavailable")
        );
        advance_to(t0, 8.0).await;
        assert_eq!(h.health.get().consecutive_failures, 4);
        advance_to(t0, 25.0).await;
        // backoff 1, 2, 4 s; the 8 s retry would pass the tick at 10, so the tick does it
        assert_eq!(h.script.times(), vec![0, 1, 3, 7, 10, 20]);
        // each retry sent a fresh snapshot
        let values: Vec<f64> = h.script.calls().iter().map(|c| c.value).collect();
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let st = h.health.get();
        assert_eq!(st.state, ExportState::Idle);
        assert_eq!(st.consecutive_failures, 0);
        assert_eq!(st.last_error, None);
        assert_eq!(h.stats.attempts(), 6);
        assert_eq!(h.stats.exported_points(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ten_failures_mean_failed_then_a_success_means_idle() {
        let t0 = Instant::now();
        let script = Script::default();
        for _ in 0..12 {
            script.push(Duration::ZERO, retry());
        }
        let h = start(1, 1, script);
        advance_to(t0, 8.5).await;
        assert_eq!(h.health.get().state, ExportState::Retrying);
        assert_eq!(h.health.get().consecutive_failures, 9);
        advance_to(t0, 9.5).await;
        let st = h.health.get();
        assert_eq!(st.state, ExportState::Failed);
        assert_eq!(st.consecutive_failures, 10);
        advance_to(t0, 11.5).await;
        assert_eq!(h.health.get().state, ExportState::Failed);
        assert_eq!(h.health.get().consecutive_failures, 12);
        advance_to(t0, 12.5).await;
        let st = h.health.get();
        assert_eq!(st.state, ExportState::Idle);
        assert_eq!(st.consecutive_failures, 0);
        assert_eq!(h.script.times(), (0..=12).collect::<Vec<_>>());
        assert_eq!(h.stats.dropped_exports(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_failure_is_failed_at_once_and_waits_for_the_tick() {
        let t0 = Instant::now();
        let script = Script::default();
        script.push(Duration::ZERO, unauthorized());
        let h = start(10, 5, script);
        advance_to(t0, 9.0).await;
        let st = h.health.get();
        assert_eq!(st.state, ExportState::Failed);
        assert_eq!(st.consecutive_failures, 1);
        assert_eq!(st.last_error.as_deref(), Some("HTTP 401 Unauthorized"));
        assert_eq!(h.stats.dropped_exports(), 1);
        assert_eq!(h.script.times(), vec![0]);
        advance_to(t0, 10.5).await;
        assert_eq!(h.health.get().state, ExportState::Idle);
        assert_eq!(h.script.times(), vec![0, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn from_failed_a_retryable_failure_waits_for_the_next_tick_too() {
        let t0 = Instant::now();
        let script = Script::default();
        script.push(Duration::ZERO, unauthorized());
        script.push(Duration::ZERO, retry());
        script.push(Duration::ZERO, retry());
        let h = start(10, 5, script);
        advance_to(t0, 19.0).await;
        // no retries between the ticks, and /healthz stays degraded: nothing succeeded
        assert_eq!(h.script.times(), vec![0, 10]);
        let st = h.health.get();
        assert_eq!(st.state, ExportState::Failed);
        assert_eq!(st.consecutive_failures, 2);
        advance_to(t0, 20.5).await;
        assert_eq!(h.script.times(), vec![0, 10, 20]);
        advance_to(t0, 30.5).await;
        assert_eq!(h.health.get().state, ExportState::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn server_delay_is_a_floor() {
        let t0 = Instant::now();
        let script = Script::default();
        script.push(
            Duration::ZERO,
            ExportOutcome::Retry {
                after: Some(Duration::from_secs(5)),
                reason: "HTTP 429".into(),
            },
        );
        script.push(
            Duration::ZERO,
            ExportOutcome::Retry {
                after: Some(Duration::from_secs(30)),
                reason: "HTTP 429".into(),
            },
        );
        let h = start(10, 5, script);
        advance_to(t0, 45.0).await;
        // retry at 5 (the hint beats the 1 s backoff); then the ticks at 10, 20, 30 wait
        // for 35; the schedule grid itself is unchanged (40)
        assert_eq!(h.script.times(), vec![0, 5, 35, 40]);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_exports_never_overlap_and_missed_ticks_are_skipped() {
        let t0 = Instant::now();
        let script = Script::default();
        script.push(Duration::from_secs(25), ExportOutcome::Sent);
        let h = start(10, 30, script);
        advance_to(t0, 41.0).await;
        assert_eq!(h.script.times(), vec![0, 30, 40]);
        assert!(!h.script.0.lock().overlapped);
        assert_eq!(h.stats.attempts(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cuts_the_wait_short_and_exports_once_more() {
        // the next tick is 1000 s away
        let t0 = Instant::now();
        let h = start(1000, 5, Script::default());
        advance_to(t0, 5.0).await;
        h.shutdown.cancel();
        h.handle.await.unwrap();
        assert_eq!(h.script.times(), vec![0, 5]);
        assert_eq!(h.script.calls()[1].value, 2.0);
        assert_eq!(h.health.get().state, ExportState::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn the_final_export_waits_for_a_server_hint_or_is_skipped() {
        // a 429 at 0 with a hint, the shutdown at 5 s (the final export's budget: 1.2 s)
        async fn final_export_after_hint(hint: Duration) -> (Script, OtlpHealth, Duration) {
            let t0 = Instant::now();
            let script = Script::default();
            script.push(
                Duration::ZERO,
                ExportOutcome::Retry {
                    after: Some(hint),
                    reason: "HTTP 429".into(),
                },
            );
            let h = start(1000, 5, script);
            advance_to(t0, 5.0).await;
            h.shutdown.cancel();
            h.handle.await.unwrap();
            (h.script, h.health, t0.elapsed())
        }
        // a hint that ends inside the budget: the final export waits for it
        let (script, health, _) = final_export_after_hint(Duration::from_millis(5500)).await;
        let at: Vec<Duration> = script.calls().iter().map(|c| c.at).collect();
        assert_eq!(at, vec![Duration::ZERO, Duration::from_millis(5500)]);
        assert_eq!(health.get().state, ExportState::Idle);
        // one that ends after it: nothing more is sent, and the state stays as it was
        let (script, health, took) = final_export_after_hint(Duration::from_secs(200)).await;
        assert_eq!(took, Duration::from_secs(5));
        assert_eq!(script.times(), vec![0]);
        let st = health.get();
        assert_eq!(st.state, ExportState::Retrying);
        assert_eq!(st.consecutive_failures, 1);
    }

    /// Gauge whose snapshot takes `0` of wall time without an await point, as a huge
    /// registry's does; `1` says when one has started.
    struct SlowSnapshot(Duration, Arc<std::sync::atomic::AtomicBool>);
    impl Collector for SlowSnapshot {
        fn collect(&self, out: &mut Vec<Family>) {
            self.1.store(true, Ordering::SeqCst);
            std::thread::sleep(self.0);
            out.push(Family::single("snap", "snapshots", MetricKind::Gauge, 1.0));
        }
    }

    /// The shutdown comes while an attempt is busy with a snapshot longer than the final
    /// export's budget: counted from the signal, that budget is used up when the loop
    /// notices, so no final export starts (counted from the notice, one would, and the
    /// process would outlive `app::SHUTDOWN_GRACE`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_final_export_budget_counts_from_the_signal_not_from_a_late_notice() {
        let snapshot_started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // a hung collector
        let script = Script::default();
        for _ in 0..3 {
            script.push(Duration::from_secs(100), ExportOutcome::Sent);
        }
        let (export, health, _) = export_loop(
            Arc::new(SlowSnapshot(
                FINAL_EXPORT_BUDGET + Duration::from_millis(800),
                snapshot_started.clone(),
            )),
            &script,
            (Duration::from_secs(60), Duration::from_secs(10)),
            1 << 20,
        );
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(export.run(shutdown.clone()));
        // a blocking wait: tokio's timers may wait for the worker the snapshot holds
        while !snapshot_started.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        shutdown.cancel();
        handle.await.unwrap();
        // only the attempt in flight sent its request; no final export followed
        assert_eq!(script.calls().len(), 1);
        let st = health.get();
        assert_eq!(st.state, ExportState::Failed);
        assert!(st.last_error.unwrap().contains("budget"));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_a_hanging_export_finishes_within_the_timeout_and_the_budget() {
        // the final export gets the export timeout, but never more than the shutdown budget
        for (timeout_secs, final_limit) in [(3, FINAL_EXPORT_BUDGET), (1, Duration::from_secs(1))] {
            let t0 = Instant::now();
            let script = Script::default();
            script.push(Duration::from_secs(100), ExportOutcome::Sent);
            script.push(Duration::from_secs(100), ExportOutcome::Sent);
            let h = start(1000, timeout_secs, script);
            advance_to(t0, 5.0).await;
            h.shutdown.cancel();
            h.handle.await.unwrap();
            assert_eq!(t0.elapsed(), Duration::from_secs(5) + final_limit);
            assert_eq!(h.script.times(), vec![0, 5]);
            // no retry follows a final export: FAILED; the timed-out attempt is observed
            let st = h.health.get();
            assert_eq!(st.state, ExportState::Failed);
            assert_eq!(st.consecutive_failures, 1);
            assert!(st.last_error.unwrap().contains("timed out"));
            assert_eq!(h.stats.attempts(), 1);
            assert_eq!(st.last_duration_seconds, Some(final_limit.as_secs_f64()));
        }
    }

    /// Answers each request by its first byte (the test's request id), records the ids
    /// sent and the most requests in flight at once.
    #[derive(Default)]
    struct ById {
        outcomes: Vec<ExportOutcome>,
        state: Mutex<(Vec<u8>, usize, usize)>,
    }

    impl MetricsSink for ById {
        async fn send(&self, request: Bytes) -> ExportOutcome {
            let id = request.first().copied().unwrap_or(0);
            {
                let mut s = self.state.lock();
                s.0.push(id);
                s.1 += 1;
                s.2 = s.2.max(s.1);
            }
            // let the other requests start before answering
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(u64::from(id) + 1)).await;
            self.state.lock().1 -= 1;
            self.outcomes
                .get(usize::from(id))
                .cloned()
                .unwrap_or(ExportOutcome::Sent)
        }
    }

    fn requests(n: u8) -> Vec<(Bytes, usize)> {
        (0..n).map(|i| (Bytes::from(vec![i]), 10)).collect()
    }

    fn retry_after(secs: u64) -> ExportOutcome {
        ExportOutcome::Retry {
            after: Some(Duration::from_secs(secs)),
            reason: format!("HTTP 503 after {secs}"),
        }
    }

    fn partial(rejected: i64) -> ExportOutcome {
        ExportOutcome::PartialSuccess {
            rejected,
            message: "bad".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn send_requests_runs_parts_concurrently_and_sums_them() {
        let sink = ById {
            outcomes: vec![ExportOutcome::Sent, partial(2), partial(3)],
            ..Default::default()
        };
        let tally = send_requests(&sink, requests(4), 2).await;
        assert_eq!(tally.accepted_points, 40);
        assert_eq!(tally.rejected_points, 5);
        assert!(matches!(
            tally.outcome,
            ExportOutcome::PartialSuccess { rejected: 5, .. }
        ));
        let s = sink.state.lock();
        assert_eq!(s.0, vec![0, 1, 2, 3]);
        assert_eq!(s.2, 2, "at most two in flight, and two were");
    }

    #[test]
    fn a_repeated_partial_success_is_a_warning_once_per_period() {
        let mut log = PartialSuccessLog::default();
        let t0 = Instant::now();
        assert!(log.warn("3 points rejected", t0));
        assert!(!log.warn("3 points rejected", t0 + Duration::from_secs(30)));
        assert!(log.warn("other reason", t0 + Duration::from_secs(60)));
        assert!(!log.warn("other reason", t0 + Duration::from_secs(90)));
        assert!(log.warn(
            "other reason",
            t0 + Duration::from_secs(60) + PARTIAL_SUCCESS_LOG_EVERY
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_collector_cannot_reject_more_points_than_a_request_carried() {
        // i64::MAX in two answers wrapped the sum; negative counts mean nothing
        let sink = ById {
            outcomes: vec![partial(i64::MAX), partial(i64::MAX), partial(-7)],
            ..Default::default()
        };
        let tally = send_requests(&sink, requests(3), 2).await;
        assert_eq!(tally.accepted_points, 30);
        assert_eq!(tally.rejected_points, 20);
        assert!(matches!(
            tally.outcome,
            ExportOutcome::PartialSuccess { rejected: 20, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn send_requests_stops_starting_after_a_failure_and_keeps_the_worst() {
        // 0 fails retryably (hint 5 s), 1 (in flight with it) with a longer hint: no
        // further request starts, the longer hint wins
        let sink = ById {
            outcomes: vec![retry_after(5), retry_after(30)],
            ..Default::default()
        };
        let tally = send_requests(&sink, requests(4), 2).await;
        assert_eq!(sink.state.lock().0, vec![0, 1]);
        assert_eq!(tally.accepted_points, 0);
        assert_eq!(tally.outcome, retry_after(30));
        // a non-retryable failure beats a retry; the successful parts are counted
        let drop = ExportOutcome::Drop {
            reason: "HTTP 400".into(),
        };
        let sink = ById {
            outcomes: vec![ExportOutcome::Sent, retry_after(1), drop.clone()],
            ..Default::default()
        };
        let tally = send_requests(&sink, requests(5), 3).await;
        // 3 starts when 0 succeeds, before 1 fails; 4 never starts
        assert_eq!(sink.state.lock().0, vec![0, 1, 2, 3]);
        assert_eq!(tally.accepted_points, 20);
        assert_eq!(tally.outcome, drop);
        // one at a time: nothing after the first failure is sent
        let sink = ById {
            outcomes: vec![ExportOutcome::Sent, retry_after(1)],
            ..Default::default()
        };
        let tally = send_requests(&sink, requests(4), 1).await;
        assert_eq!(sink.state.lock().0, vec![0, 1]);
        assert_eq!(sink.state.lock().2, 1);
        assert_eq!(tally.outcome, retry_after(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_success_beside_a_failure_keeps_its_message() {
        let sink = ById {
            outcomes: vec![partial(2), retry_after(1)],
            ..Default::default()
        };
        let tally = send_requests(&sink, requests(2), 2).await;
        assert_eq!(tally.rejected_points, 2);
        assert_eq!(tally.outcome, retry_after(1));
        let ExportOutcome::PartialSuccess { message, .. } = partial(2) else {
            unreachable!()
        };
        assert_eq!(tally.partial_message, Some(message));
    }

    /// `0` gauges, so that a small request limit splits an export into several requests.
    struct ManyGauges(usize);
    impl Collector for ManyGauges {
        fn collect(&self, out: &mut Vec<Family>) {
            for i in 0..self.0 {
                let name = format!("gauge_{i}");
                out.push(Family::single(name, "a gauge", MetricKind::Gauge, 1.0));
            }
        }
    }

    /// A `Write` into a shared buffer, for reading what was logged.
    #[derive(Clone, Default)]
    struct LogBuffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for LogBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_success_beside_a_failure_is_logged() {
        use tracing_subscriber::util::SubscriberInitExt as _;
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let _subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .set_default();
        let script = Script::default();
        script.push(
            Duration::ZERO,
            ExportOutcome::PartialSuccess {
                rejected: 2,
                message: "label value too long".into(),
            },
        );
        script.push(Duration::from_millis(1), retry());
        // 40 gauges in requests of at most 1 KiB: an export of several requests
        let (export, health, stats) = export_loop(
            Arc::new(ManyGauges(40)),
            &script,
            (Duration::from_secs(60), Duration::from_secs(10)),
            1024,
        );
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(export.run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(script.calls().len() >= 2, "the export was not split");
        assert_eq!(health.get().state, ExportState::Retrying);
        assert_eq!(stats.rejected_points(), 2);
        let logged = String::from_utf8_lossy(&logs.0.lock()).into_owned();
        assert!(
            logged.contains("accepted the export partially")
                && logged.contains("label value too long"),
            "{logged}"
        );
        shutdown.cancel();
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn disabled_config_marks_disabled_and_returns() {
        let health = OtlpHealth::new(ExportState::Idle);
        run_export_loop_with_stats(
            OtlpConfig::default(),
            Arc::new(Registry::new()),
            health.clone(),
            ExportStats::new(),
            "h:1".into(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(health.get().state, ExportState::Disabled);
    }

    #[test]
    fn process_start_is_in_the_past() {
        let now = SystemTime::now();
        let start = process_start_time(now);
        assert!(start <= now);
        assert!(now.duration_since(start).unwrap() < Duration::from_secs(24 * 3600));
        assert!(!local_host_name().is_empty());
    }
}
