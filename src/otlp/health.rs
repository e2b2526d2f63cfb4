//! The OTLP health metrics as a registry [`Collector`]: the original's five families with
//! their names, types and HELP (`docs/original-exporter.md` §5.6), plus two counters the
//! original lacked.
//!
//! | family | type | source |
//! |---|---|---|
//! | `loxone_otlp_export_status` | gauge | [`OtlpHealth`] state code |
//! | `loxone_otlp_last_success_timestamp_seconds` | gauge | [`OtlpHealth`], 0 before the first success |
//! | `loxone_otlp_consecutive_failures` | gauge | [`OtlpHealth`] |
//! | `loxone_otlp_export_duration_seconds` | histogram | [`ExportStats`], every attempt, the original's default buckets |
//! | `loxone_otlp_exported_metrics_total` | counter | [`ExportStats`] |
//! | `loxone_otlp_rejected_data_points_total` | counter | [`ExportStats`] (partial success, and points too large to send) |
//! | `loxone_otlp_dropped_exports_total` | counter | [`ExportStats`] (non-retryable failures) |
//!
//! Deviation: `loxone_otlp_exported_metrics_total` counts **data points** the collector
//! accepted (sent minus rejected), not metric families as the original did. A family count is
//! nearly constant and says nothing about volume; data points are what collectors limit and
//! bill, and what rotel and the collector log as "metrics". The HELP says so.
//!
//! The gauges read the live [`OtlpHealth`] at collect time, so they change at every transition
//! (the original left them stale during retries). Does not: export anything itself.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::metrics::health::OtlpHealth;
use crate::metrics::model::{Family, HistogramValue, LabelSet, MetricKind, Sample, Value};
use crate::metrics::registry::Collector;

/// The original's histogram buckets (the Python client's defaults), in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// HELP of `loxone_otlp_export_status` (the original's, verbatim).
pub const STATUS_HELP: &str =
    "OTLP export state (0=DISABLED, 1=IDLE, 2=EXPORTING, 3=RETRYING, 4=FAILED)";
/// HELP of `loxone_otlp_last_success_timestamp_seconds` (the original's).
pub const LAST_SUCCESS_HELP: &str = "Unix timestamp of last successful OTLP export";
/// HELP of `loxone_otlp_consecutive_failures` (the original's).
pub const FAILURES_HELP: &str = "Number of consecutive OTLP export failures";
/// HELP of `loxone_otlp_export_duration_seconds` (the original's).
pub const DURATION_HELP: &str = "Duration of OTLP export attempts";
/// HELP of `loxone_otlp_exported_metrics_total` (says data points: see the module doc).
pub const EXPORTED_HELP: &str =
    "Cumulative count of data points exported via OTLP (accepted by the collector)";

#[derive(Debug, Default, Clone)]
struct StatsInner {
    /// Per-bucket (not cumulative) counts, one per bound.
    bucket_counts: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
    exported_points: u64,
    rejected_points: u64,
    dropped_exports: u64,
}

/// Counters and the duration histogram, fed by the export loop, read by the collector.
#[derive(Debug, Default)]
pub struct ExportStats {
    inner: Mutex<StatsInner>,
}

impl ExportStats {
    /// Fresh, zeroed statistics.
    pub fn new() -> Arc<Self> {
        Arc::new(ExportStats::default())
    }

    /// The process-wide statistics used by [`health_collector`] and
    /// [`crate::otlp::run_export_loop`] (one export loop per process). Tests that run
    /// several loops pass their own via the `*_with_stats` variants.
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<ExportStats>> = OnceLock::new();
        GLOBAL.get_or_init(ExportStats::new).clone()
    }

    /// Records the duration of one export attempt.
    pub fn observe_duration(&self, seconds: f64) {
        let mut s = self.inner.lock();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            s.bucket_counts[i] += 1;
        }
        s.count += 1;
        s.sum += seconds;
    }

    /// Adds data points the collector accepted.
    pub fn add_exported(&self, points: u64) {
        let mut s = self.inner.lock();
        s.exported_points = s.exported_points.saturating_add(points);
    }

    /// Adds data points not delivered: rejected in a partial-success answer, or too large
    /// to send.
    pub fn add_rejected(&self, points: u64) {
        let mut s = self.inner.lock();
        s.rejected_points = s.rejected_points.saturating_add(points);
    }

    /// Counts one attempt dropped after a non-retryable error.
    pub fn add_dropped(&self) {
        self.inner.lock().dropped_exports += 1;
    }

    /// Data points accepted so far.
    pub fn exported_points(&self) -> u64 {
        self.inner.lock().exported_points
    }

    /// Data points rejected so far.
    pub fn rejected_points(&self) -> u64 {
        self.inner.lock().rejected_points
    }

    /// Attempts dropped so far.
    pub fn dropped_exports(&self) -> u64 {
        self.inner.lock().dropped_exports
    }

    /// Attempts observed so far.
    pub fn attempts(&self) -> u64 {
        self.inner.lock().count
    }

    fn histogram(&self) -> (HistogramValue, u64, u64, u64) {
        let s = self.inner.lock().clone();
        let mut cumulative = 0;
        let buckets = DURATION_BUCKETS
            .iter()
            .zip(s.bucket_counts)
            .map(|(b, c)| {
                cumulative += c;
                (*b, cumulative)
            })
            .collect();
        (
            HistogramValue {
                buckets,
                count: s.count,
                sum: s.sum,
            },
            s.exported_points,
            s.rejected_points,
            s.dropped_exports,
        )
    }
}

/// Collector of the OTLP health families.
pub struct OtlpHealthCollector {
    health: OtlpHealth,
    stats: Arc<ExportStats>,
}

impl Collector for OtlpHealthCollector {
    fn collect(&self, out: &mut Vec<Family>) {
        let status = self.health.get();
        out.push(Family::single(
            "loxone_otlp_export_status",
            STATUS_HELP,
            MetricKind::Gauge,
            f64::from(status.state.code()),
        ));
        out.push(Family::single(
            "loxone_otlp_last_success_timestamp_seconds",
            LAST_SUCCESS_HELP,
            MetricKind::Gauge,
            status.last_success.unwrap_or(0.0),
        ));
        out.push(Family::single(
            "loxone_otlp_consecutive_failures",
            FAILURES_HELP,
            MetricKind::Gauge,
            f64::from(status.consecutive_failures),
        ));
        let (hist, exported, rejected, dropped) = self.stats.histogram();
        let mut duration = Family::new(
            "loxone_otlp_export_duration_seconds",
            DURATION_HELP,
            MetricKind::Histogram,
        );
        duration.samples.push(Sample {
            labels: LabelSet::empty(),
            value: Value::Histogram(Box::new(hist)),
        });
        out.push(duration);
        out.push(Family::single(
            "loxone_otlp_exported_metrics_total",
            EXPORTED_HELP,
            MetricKind::Counter,
            exported as f64,
        ));
        out.push(Family::single(
            "loxone_otlp_rejected_data_points_total",
            "Data points not delivered via OTLP: rejected by the collector in partial-success answers, or each alone larger than the request size limit",
            MetricKind::Counter,
            rejected as f64,
        ));
        out.push(Family::single(
            "loxone_otlp_dropped_exports_total",
            "OTLP export attempts given up after a non-retryable error",
            MetricKind::Counter,
            dropped as f64,
        ));
    }
}

/// The OTLP health collector reading `health` and the process-wide [`ExportStats`].
pub fn health_collector(health: OtlpHealth) -> Arc<dyn Collector> {
    health_collector_with_stats(health, ExportStats::global())
}

/// The OTLP health collector reading `health` and the given statistics.
pub fn health_collector_with_stats(
    health: OtlpHealth,
    stats: Arc<ExportStats>,
) -> Arc<dyn Collector> {
    Arc::new(OtlpHealthCollector { health, stats })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::health::ExportState;
    use crate::metrics::Registry;

    #[test]
    fn families_follow_health_and_stats() {
        let health = OtlpHealth::new(ExportState::Idle);
        let stats = ExportStats::new();
        let reg = Registry::new();
        reg.register(health_collector_with_stats(health.clone(), stats.clone()));

        let snap = reg.snapshot();
        let names: Vec<_> = snap.families.iter().map(|f| f.name.to_string()).collect();
        assert_eq!(
            &names[..5],
            [
                "loxone_otlp_export_status",
                "loxone_otlp_last_success_timestamp_seconds",
                "loxone_otlp_consecutive_failures",
                "loxone_otlp_export_duration_seconds",
                "loxone_otlp_exported_metrics_total",
            ]
        );
        let value =
            |s: &crate::metrics::Snapshot, n: &str| match &s.family(n).unwrap().samples[0].value {
                Value::Number(v) => *v,
                Value::Histogram(h) => h.count as f64,
            };
        assert_eq!(value(&snap, "loxone_otlp_export_status"), 1.0);
        assert_eq!(
            snap.family("loxone_otlp_export_status").unwrap().help,
            STATUS_HELP
        );

        health.update(|s| {
            s.state = ExportState::Retrying;
            s.consecutive_failures = 3;
            s.last_success = Some(1234.5);
        });
        stats.observe_duration(0.02);
        stats.observe_duration(20.0);
        stats.add_exported(42);
        stats.add_rejected(2);
        stats.add_dropped();
        let snap = reg.snapshot();
        assert_eq!(value(&snap, "loxone_otlp_export_status"), 3.0);
        assert_eq!(value(&snap, "loxone_otlp_consecutive_failures"), 3.0);
        assert_eq!(
            value(&snap, "loxone_otlp_last_success_timestamp_seconds"),
            1234.5
        );
        assert_eq!(value(&snap, "loxone_otlp_exported_metrics_total"), 42.0);
        assert_eq!(value(&snap, "loxone_otlp_rejected_data_points_total"), 2.0);
        assert_eq!(value(&snap, "loxone_otlp_dropped_exports_total"), 1.0);
        let Value::Histogram(h) = &snap
            .family("loxone_otlp_export_duration_seconds")
            .unwrap()
            .samples[0]
            .value
        else {
            panic!("not a histogram")
        };
        assert_eq!(h.count, 2);
        assert_eq!(h.buckets.len(), 14);
        // 0.02 falls into le=0.025 and every bucket above; 20 s only into +Inf
        assert_eq!(h.buckets[1], (0.01, 0));
        assert_eq!(h.buckets[2], (0.025, 1));
        assert_eq!(h.buckets[13], (10.0, 1));
        assert!((h.sum - 20.02).abs() < 1e-9);
    }
}
