//! Prometheus text exposition format 0.0.4 from a [`Snapshot`].
//!
//! One `# HELP` and `# TYPE` per family, then its samples; histograms expand to `_bucket`
//! (with `le`, ending in `+Inf`), `_sum` and `_count`. Label text comes pre-escaped from
//! [`LabelSet`], so encoding is string appends and float
//! formatting only. No timestamps are written (exporter convention).

use super::model::{escape_help, write_float, Family, LabelSet, Snapshot, Value};

/// Content type of the output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Encodes a snapshot, appending to `out`.
pub fn encode(snapshot: &Snapshot, out: &mut String) {
    for fam in &snapshot.families {
        encode_family(fam, out);
    }
}

/// Encodes a snapshot into a new string.
pub fn encode_to_string(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(estimate_len(snapshot));
    encode(snapshot, &mut out);
    out
}

fn estimate_len(snapshot: &Snapshot) -> usize {
    snapshot
        .families
        .iter()
        .map(|f| {
            128 + f.samples.first().map_or(0, |s| {
                (f.name.len() + s.labels.text_len() + 24) * f.samples.len()
            })
        })
        .sum()
}

fn encode_family(fam: &Family, out: &mut String) {
    out.push_str("# HELP ");
    out.push_str(&fam.name);
    out.push(' ');
    escape_help(&fam.help, out);
    out.push_str("\n# TYPE ");
    out.push_str(&fam.name);
    out.push(' ');
    out.push_str(fam.kind.text_type());
    out.push('\n');
    for s in &fam.samples {
        let labels = &*s.labels;
        match &s.value {
            Value::Number(v) => line(out, &fam.name, "", labels, None, *v),
            Value::Histogram(h) => {
                for (bound, count) in &h.buckets {
                    let mut le = String::new();
                    write_float(*bound, &mut le);
                    line(out, &fam.name, "_bucket", labels, Some(&le), *count as f64);
                }
                line(
                    out,
                    &fam.name,
                    "_bucket",
                    labels,
                    Some("+Inf"),
                    h.count as f64,
                );
                line(out, &fam.name, "_sum", labels, None, h.sum);
                line(out, &fam.name, "_count", labels, None, h.count as f64);
            }
        }
    }
}

fn line(out: &mut String, name: &str, suffix: &str, labels: &LabelSet, le: Option<&str>, v: f64) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        labels.write_text(out);
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str("le=\"");
            out.push_str(le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    write_float(v, out);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{HistogramValue, MetricKind, Sample};
    use std::time::SystemTime;

    #[test]
    fn encodes_gauges_counters_and_histograms() {
        let mut g = Family::new("g", "a \\ help\nline", MetricKind::Gauge);
        g.samples
            .push(Sample::number(LabelSet::new([("a", "x\"y")]), 1.5));
        g.samples.push(Sample::number(LabelSet::empty(), f64::NAN));
        let c = Family::single("c_total", "count", MetricKind::Counter, 3.0);
        let mut h = Family::new("h_seconds", "dur", MetricKind::Histogram);
        h.samples.push(Sample {
            labels: LabelSet::new([("p", "grpc")]),
            value: Value::Histogram(Box::new(HistogramValue {
                buckets: vec![(0.5, 1), (1.0, 2)],
                count: 3,
                sum: 4.25,
            })),
        });
        let snap = Snapshot {
            families: vec![g, c, h],
            taken_at: SystemTime::now(),
        };
        let text = encode_to_string(&snap);
        assert_eq!(
            text,
            "# HELP g a \\\\ help\\nline\n# TYPE g gauge\ng{a=\"x\\\"y\"} 1.5\ng NaN\n\
             # HELP c_total count\n# TYPE c_total counter\nc_total 3\n\
             # HELP h_seconds dur\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{p=\"grpc\",le=\"0.5\"} 1\nh_seconds_bucket{p=\"grpc\",le=\"1\"} 2\n\
             h_seconds_bucket{p=\"grpc\",le=\"+Inf\"} 3\nh_seconds_sum{p=\"grpc\"} 4.25\n\
             h_seconds_count{p=\"grpc\"} 3\n"
        );
    }
}
