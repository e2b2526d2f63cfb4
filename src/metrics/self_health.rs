//! The exporter's own health metrics (original-exporter.md §3.1) and the standard
//! `process_*` metrics.
//!
//! `loxone_exporter_up`, `_scrape_duration_seconds` (time the previous `/metrics`
//! response took to build), `_scrape_errors_total` and `_build_info` (real values captured
//! by build.rs). Per-Miniserver health families come from the state store. Process
//! metrics come from the `prometheus` crate's `ProcessCollector` (Linux procfs) and are
//! converted into our model; that is a handful of series, so its per-gather cost is small.
//! `process_cpu_seconds_total` is read here to the clock tick: the crate keeps whole
//! seconds only.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::Collector as _;
use prometheus::proto::MetricType;

use super::model::{Family, HistogramValue, LabelSet, MetricKind, Sample, Value};
use super::registry::Collector;
use crate::build_info;

/// Self-health state updated by the HTTP server.
#[derive(Debug, Default)]
pub struct SelfHealth {
    scrape_duration_bits: AtomicU64,
    scrape_errors: AtomicU64,
}

impl SelfHealth {
    /// A fresh state.
    pub fn new() -> Self {
        SelfHealth::default()
    }

    /// Records how long the last `/metrics` response took to build.
    pub fn record_scrape(&self, seconds: f64) {
        self.scrape_duration_bits
            .store(seconds.to_bits(), Ordering::Relaxed);
    }

    /// Counts a failed `/metrics` response.
    pub fn record_scrape_error(&self) {
        self.scrape_errors.fetch_add(1, Ordering::Relaxed);
    }
}

impl Collector for SelfHealth {
    fn collect(&self, out: &mut Vec<Family>) {
        out.push(Family::single(
            "loxone_exporter_up",
            "1 if exporter process is running",
            MetricKind::Gauge,
            1.0,
        ));
        out.push(Family::single(
            "loxone_exporter_scrape_duration_seconds",
            "Time taken to generate /metrics response",
            MetricKind::Gauge,
            f64::from_bits(self.scrape_duration_bits.load(Ordering::Relaxed)),
        ));
        let mut build = Family::new(
            "loxone_exporter_build_info",
            "Build metadata",
            MetricKind::Info,
        );
        build.samples.push(Sample::number(
            LabelSet::new([
                ("version", build_info::VERSION),
                ("commit", build_info::COMMIT),
                ("build_date", build_info::BUILD_DATE),
                ("rustc_version", build_info::RUSTC_VERSION),
            ]),
            1.0,
        ));
        out.push(build);
        out.push(Family::single(
            "loxone_exporter_scrape_errors_total",
            "Total number of errors during metric generation",
            MetricKind::Counter,
            self.scrape_errors.load(Ordering::Relaxed) as f64,
        ));
    }
}

/// The standard `process_*` metrics of this process.
pub struct ProcessMetrics {
    inner: prometheus::process_collector::ProcessCollector,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        ProcessMetrics {
            inner: prometheus::process_collector::ProcessCollector::for_self(),
        }
    }
}

impl ProcessMetrics {
    /// Collector for the current process.
    pub fn new() -> Self {
        ProcessMetrics::default()
    }
}

impl Collector for ProcessMetrics {
    fn collect(&self, out: &mut Vec<Family>) {
        let cpu_seconds = process_cpu_seconds();
        for mf in self.inner.collect() {
            let mut fam = convert_family(&mf);
            // the crate's counter holds whole seconds only: at well under 1 % of a core,
            // rate(process_cpu_seconds_total[5m]) was 0 with a spike once a minute or so
            if let (Some(secs), "process_cpu_seconds_total") = (cpu_seconds, fam.name.as_ref()) {
                for sample in &mut fam.samples {
                    sample.value = Value::Number(secs);
                }
            }
            out.push(fam);
        }
    }
}

/// User plus system CPU time of this process in seconds, to the clock tick
/// (`/proc/self/stat` fields 14 and 15).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// `utime + stime` of a `/proc/<pid>/stat` line (after the command name, which may hold
/// spaces and parentheses).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `USER_HZ`: the unit of the times in `/proc/<pid>/stat`, 100 on every Linux
/// architecture's user-space ABI (what `sysconf(_SC_CLK_TCK)` returns).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Converts one `prometheus` crate family into our model.
pub fn convert_family(mf: &prometheus::proto::MetricFamily) -> Family {
    let kind = match mf.get_field_type() {
        MetricType::COUNTER => MetricKind::Counter,
        MetricType::HISTOGRAM => MetricKind::Histogram,
        _ => MetricKind::Gauge,
    };
    let mut fam = Family::new(mf.name().to_string(), mf.help().to_string(), kind);
    for m in mf.get_metric() {
        let labels = LabelSet::new(
            m.get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string())),
        );
        let value = match kind {
            MetricKind::Counter => Value::Number(m.get_counter().get_value()),
            MetricKind::Histogram => {
                let h = m.get_histogram();
                Value::Histogram(Box::new(HistogramValue {
                    buckets: h
                        .get_bucket()
                        .iter()
                        .filter(|b| b.upper_bound().is_finite())
                        .map(|b| (b.upper_bound(), b.cumulative_count()))
                        .collect(),
                    count: h.get_sample_count(),
                    sum: h.get_sample_sum(),
                }))
            }
            _ => Value::Number(m.get_gauge().get_value()),
        };
        fam.samples.push(Sample { labels, value });
    }
    fam
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        // a command name with spaces and a ')' of its own; utime 1234, stime 56
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(1290));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_seconds_is_exact_to_the_tick() {
        // burn a little CPU so the value is above zero, then check it is not whole seconds
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let before = process_cpu_seconds().expect("procfs");
        let mut out = Vec::new();
        ProcessMetrics::new().collect(&mut out);
        let after = process_cpu_seconds().expect("procfs");
        let fam = out
            .iter()
            .find(|f| f.name.as_ref() == "process_cpu_seconds_total")
            .expect("family");
        let Value::Number(v) = fam.samples[0].value else {
            panic!("not a number")
        };
        // to the tick, not truncated to whole seconds as the crate's counter is
        assert!(
            v > 0.0 && before <= v && v <= after,
            "{before} <= {v} <= {after}"
        );
    }

    #[test]
    fn process_metrics_are_present_on_linux() {
        let mut out = Vec::new();
        ProcessMetrics::new().collect(&mut out);
        let names: Vec<_> = out.iter().map(|f| f.name.to_string()).collect();
        for want in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing in {names:?}"
            );
        }
        let rss = out
            .iter()
            .find(|f| f.name == "process_resident_memory_bytes")
            .and_then(|f| f.samples.first())
            .map(|s| s.value.clone());
        assert!(matches!(rss, Some(Value::Number(v)) if v > 0.0));
    }

    #[test]
    fn self_health_reports_scrape_duration_and_errors() {
        let h = SelfHealth::new();
        h.record_scrape(0.25);
        h.record_scrape_error();
        let mut out = Vec::new();
        h.collect(&mut out);
        let get = |n: &str| match &out.iter().find(|f| f.name == n).unwrap().samples[0].value {
            Value::Number(v) => *v,
            _ => f64::NAN,
        };
        assert_eq!(get("loxone_exporter_scrape_duration_seconds"), 0.25);
        assert_eq!(get("loxone_exporter_scrape_errors_total"), 1.0);
        assert_eq!(get("loxone_exporter_up"), 1.0);
        let build = out
            .iter()
            .find(|f| f.name == "loxone_exporter_build_info")
            .unwrap();
        assert_eq!(
            build.samples[0].labels.get("version"),
            Some(build_info::VERSION)
        );
    }
}
