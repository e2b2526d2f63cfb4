//! The registry's data model: metric families, samples and label sets, in a form both
//! `/metrics` (text 0.0.4) and the OTLP export read.
//!
//! Why our own model rather than the `prometheus` crate's protobuf `MetricFamily`: that type
//! allocates every label pair of every sample on every gather (about 22 ms for 11k series).
//! Here a series' labels are built once, when a structure file is loaded, as an
//! `Arc<LabelSet>` that carries both the pairs (for OTLP attributes) and their pre-escaped
//! text form (for `/metrics`), so a snapshot costs one `Arc` clone and one `f64` per series.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// What kind of metric a family is. Decides the `# TYPE` line and the OTLP data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonic counter; the family name ends in `_total`.
    Counter,
    /// A classic histogram with cumulative buckets.
    Histogram,
    /// Value 1 with labels carrying information; exposed as a gauge in text 0.0.4
    /// (name ends in `_info`).
    Info,
}

impl MetricKind {
    /// The word used on the `# TYPE` line of text format 0.0.4.
    pub fn text_type(self) -> &'static str {
        match self {
            MetricKind::Gauge | MetricKind::Info => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::Histogram => "histogram",
        }
    }

    /// The Prometheus type name written into OTLP `metadata` as `prometheus.type`.
    pub fn prometheus_type(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::Histogram => "histogram",
            MetricKind::Info => "info",
        }
    }
}

/// An immutable, ordered set of label pairs with its text form rendered once.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LabelSet {
    pairs: Box<[(Arc<str>, Arc<str>)]>,
    /// `a="x",b="y"`: escaped per text format 0.0.4, without braces.
    rendered: Box<str>,
}

impl LabelSet {
    /// Builds a label set. Names must be valid Prometheus label names (callers use
    /// constants); values are escaped here.
    pub fn new<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Arc<LabelSet>
    where
        K: Into<Arc<str>>,
        V: Into<Arc<str>>,
    {
        let pairs: Box<[(Arc<str>, Arc<str>)]> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let mut rendered = String::new();
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                rendered.push(',');
            }
            rendered.push_str(k);
            rendered.push_str("=\"");
            escape_label_value(v, &mut rendered);
            rendered.push('"');
        }
        Arc::new(LabelSet {
            pairs,
            rendered: rendered.into_boxed_str(),
        })
    }

    /// The shared empty label set.
    pub fn empty() -> Arc<LabelSet> {
        static EMPTY: OnceLock<Arc<LabelSet>> = OnceLock::new();
        EMPTY
            .get_or_init(|| LabelSet::new(Vec::<(&str, &str)>::new()))
            .clone()
    }

    /// Label pairs in order.
    pub fn pairs(&self) -> &[(Arc<str>, Arc<str>)] {
        &self.pairs
    }

    /// Pre-escaped text form without braces (`a="x",b="y"`), empty for no labels.
    pub fn rendered(&self) -> &str {
        &self.rendered
    }

    /// Value of one label, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| &**v)
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// Escapes a label value for text format 0.0.4: backslash, double quote and newline.
pub fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes HELP text for text format 0.0.4: backslash and newline.
pub fn escape_help(help: &str, out: &mut String) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A classic histogram's state.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramValue {
    /// `(upper bound, cumulative count)` for each finite bound, ascending. The `+Inf`
    /// bucket is implicit and equals `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations.
    pub sum: f64,
}

/// The value of one series.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Gauge, counter or info value.
    Number(f64),
    /// Histogram state (boxed: keeps the common gauge sample at 24 bytes).
    Histogram(Box<HistogramValue>),
}

/// One series: its labels and current value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Labels, shared with the state store.
    pub labels: Arc<LabelSet>,
    /// Current value.
    pub value: Value,
}

impl Sample {
    /// A numeric sample.
    pub fn number(labels: Arc<LabelSet>, value: f64) -> Self {
        Sample {
            labels,
            value: Value::Number(value),
        }
    }
}

/// A metric family: name, HELP, type and its series.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Metric name as exposed (counters end in `_total`, info metrics in `_info`).
    pub name: Cow<'static, str>,
    /// HELP text.
    pub help: Cow<'static, str>,
    /// Metric type.
    pub kind: MetricKind,
    /// Series; order is kept in the output.
    pub samples: Vec<Sample>,
}

impl Family {
    /// An empty family.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        help: impl Into<Cow<'static, str>>,
        kind: MetricKind,
    ) -> Self {
        Family {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    /// A family holding one unlabelled sample.
    pub fn single(
        name: impl Into<Cow<'static, str>>,
        help: impl Into<Cow<'static, str>>,
        kind: MetricKind,
        value: f64,
    ) -> Self {
        let mut f = Family::new(name, help, kind);
        f.samples.push(Sample::number(LabelSet::empty(), value));
        f
    }
}

/// Everything the registry holds at one instant: what one scrape or one OTLP export sees.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Families in exposition order, each name once.
    pub families: Vec<Family>,
    /// When the snapshot was taken.
    pub taken_at: SystemTime,
}

impl Snapshot {
    /// Number of series (a histogram counts as one).
    pub fn series_count(&self) -> usize {
        self.families.iter().map(|f| f.samples.len()).sum()
    }

    /// Looks up a family by exposed name.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

/// Appends a float in text-format 0.0.4 syntax: integers without a fraction, `NaN`,
/// `+Inf`, `-Inf`, otherwise the shortest round-trip form.
pub fn write_float(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let mut buf = itoa::Buffer::new();
        // exact: |v| < 2^53 and integral
        out.push_str(buf.format(v as i64));
        if v == 0.0 && v.is_sign_negative() {
            // "-0" parses fine but "0" is what people expect
            out.truncate(out.len() - 1);
            out.push('0');
        }
    } else {
        let mut buf = ryu::Buffer::new();
        out.push_str(buf.format_finite(v));
    }
}

/// Formats a float like [`write_float`] into a new string.
pub fn format_float(v: f64) -> String {
    let mut s = String::new();
    write_float(v, &mut s);
    s
}

/// Writes `value` with `write!`-free speed into `out` (helper for encoders).
pub fn push_u64(v: u64, out: &mut String) {
    let _ = write!(out, "{v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_set_escapes_once() {
        let l = LabelSet::new([("name", "a\"b\\c\nd"), ("room", "Kuchyň")]);
        assert_eq!(l.rendered(), r#"name="a\"b\\c\nd",room="Kuchyň""#);
        assert_eq!(l.get("room"), Some("Kuchyň"));
        assert_eq!(l.get("nope"), None);
        assert!(LabelSet::empty().is_empty());
    }

    #[test]
    fn floats_render_like_prometheus_expects() {
        for (v, s) in [
            (1.0, "1"),
            (22.5, "22.5"),
            (-0.0, "0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (1.7952842645129e9, "1795284264.5129"),
            (1e20, "1e20"),
            (-3.0, "-3"),
        ] {
            assert_eq!(format_float(v), s, "{v}");
        }
    }
}
