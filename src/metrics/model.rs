//! The registry's data model: metric families, samples and label sets, in a form both
//! `/metrics` (text 0.0.4) and the OTLP export read.
//!
//! Why our own model rather than the `prometheus` crate's protobuf `MetricFamily`: that type
//! allocates every label pair of every sample on every gather (about 22 ms for 11k series).
//! Here a series' labels are built once, when a structure file is loaded, as an
//! `Arc<LabelSet>` that carries both the pairs (for OTLP attributes) and their pre-escaped
//! text form (for `/metrics`), so a snapshot costs one `Arc` clone and one `f64` per series.
//! The pairs and text a control's states have in common live once per control
//! ([`LabelGroup`]), so a series costs 32 bytes of labels, not ~400.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
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

/// A label value together with its text-format escaping, built once and shared by every
/// label set that carries it (a state name such as `value` appears in thousands of series).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LabelValue {
    raw: Box<str>,
    /// Escaped form, only when it differs from `raw` (rare: `\`, `"` or newline).
    escaped: Option<Box<str>>,
}

impl LabelValue {
    /// Builds a shareable label value; escapes it once.
    pub fn new(raw: &str) -> Arc<LabelValue> {
        let mut escaped = String::new();
        escape_label_value(raw, &mut escaped);
        Arc::new(LabelValue {
            escaped: (escaped != raw).then(|| escaped.into_boxed_str()),
            raw: raw.into(),
        })
    }

    /// The value as given.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The value escaped for text format 0.0.4.
    pub fn escaped(&self) -> &str {
        self.escaped.as_deref().unwrap_or(&self.raw)
    }
}

/// The shared part of many label sets: every pair but one, in order, with its text form
/// rendered once around the one label that differs between the sets (a control's labels
/// around `subcontrol`, which names each of its states).
#[derive(Debug)]
pub struct LabelGroup {
    /// Shared pairs in label order, without the varying one.
    pairs: Box<[(Arc<str>, Arc<str>)]>,
    /// Position of the varying label among all pairs and its name; `None` for a set
    /// with no varying label (built by [`LabelSet::new`]).
    varying: Option<(usize, Arc<str>)>,
    /// Text before the varying value: `a="x",b="y",sub="` (escaped, no braces); the
    /// whole text when there is no varying label.
    head: Box<str>,
    /// Text after the varying value: `",c="z"`; empty without a varying label.
    tail: Box<str>,
}

impl LabelGroup {
    /// Shares `before`, then the label named `varying` (its value given per set by
    /// [`LabelSet::in_group`]), then `after`. Names must be valid Prometheus label names
    /// (callers use constants); values are escaped here.
    pub fn new<K, V>(
        before: impl IntoIterator<Item = (K, V)>,
        varying: impl Into<Arc<str>>,
        after: impl IntoIterator<Item = (K, V)>,
    ) -> Arc<LabelGroup>
    where
        K: Into<Arc<str>>,
        V: Into<Arc<str>>,
    {
        let mut pairs: Vec<(Arc<str>, Arc<str>)> = before
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let at = pairs.len();
        let varying: Arc<str> = varying.into();
        let mut head = String::new();
        render_pairs(&pairs, &mut head);
        if at > 0 {
            head.push(',');
        }
        head.push_str(&varying);
        head.push_str("=\"");
        pairs.extend(after.into_iter().map(|(k, v)| (k.into(), v.into())));
        let mut tail = String::from("\"");
        if let Some(rest) = pairs.get(at..).filter(|r| !r.is_empty()) {
            tail.push(',');
            render_pairs(rest, &mut tail);
        }
        Arc::new(LabelGroup {
            pairs: pairs.into_boxed_slice(),
            varying: Some((at, varying)),
            head: head.into_boxed_str(),
            tail: tail.into_boxed_str(),
        })
    }
}

/// A label name and value as stored in a [`LabelGroup`].
type SharedPair = (Arc<str>, Arc<str>);

/// Appends `a="x",b="y"` for `pairs`, values escaped.
fn render_pairs(pairs: &[SharedPair], out: &mut String) {
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(v, out);
        out.push('"');
    }
}

/// An immutable, ordered set of label pairs whose text form is rendered once.
///
/// Memory matters here: the state store holds one label set per series for its whole
/// life (10k–100k of them). A set is a shared [`LabelGroup`] (a control's labels and their
/// text) plus at most one own [`LabelValue`] (the state name), 32 bytes behind its `Arc`
/// instead of a private copy of all pairs and their text (~400 bytes).
///
/// Equality and hashing are by content (the pairs in order), whatever the sharing.
pub struct LabelSet {
    group: Arc<LabelGroup>,
    /// Value of the group's varying label; `None` when the group has none.
    own: Option<Arc<LabelValue>>,
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
        let mut head = String::new();
        render_pairs(&pairs, &mut head);
        Arc::new(LabelSet {
            group: Arc::new(LabelGroup {
                pairs,
                varying: None,
                head: head.into_boxed_str(),
                tail: Box::default(),
            }),
            own: None,
        })
    }

    /// A set of `group`'s shared pairs with `value` for its varying label. A group built
    /// without a varying label (impossible through [`LabelGroup::new`]) ignores `value`.
    pub fn in_group(group: &Arc<LabelGroup>, value: Arc<LabelValue>) -> Arc<LabelSet> {
        Arc::new(LabelSet {
            group: group.clone(),
            own: group.varying.as_ref().map(|_| value),
        })
    }

    /// The shared empty label set.
    pub fn empty() -> Arc<LabelSet> {
        static EMPTY: OnceLock<Arc<LabelSet>> = OnceLock::new();
        EMPTY
            .get_or_init(|| LabelSet::new(Vec::<(&str, &str)>::new()))
            .clone()
    }

    /// This set plus one more pair at the end (e.g. an info series' `value`), sharing the
    /// existing names and values.
    pub fn with_label(&self, name: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> Arc<Self> {
        let (before, after) = self.split();
        let own = self
            .own_pair()
            .map(|(k, v)| (k.clone(), Arc::from(v.as_str())));
        LabelSet::new(
            before
                .iter()
                .cloned()
                .chain(own)
                .chain(after.iter().cloned())
                .chain([(name.into(), value.into())]),
        )
    }

    /// Shared pairs before and after the varying label.
    fn split(&self) -> (&[SharedPair], &[SharedPair]) {
        let pairs = &*self.group.pairs;
        match &self.group.varying {
            Some((at, _)) => pairs.split_at((*at).min(pairs.len())),
            None => (pairs, &[]),
        }
    }

    fn own_pair(&self) -> Option<(&Arc<str>, &LabelValue)> {
        match (&self.group.varying, &self.own) {
            (Some((_, name)), Some(value)) => Some((name, value)),
            _ => None,
        }
    }

    /// Label pairs in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        fn shared((k, v): &(Arc<str>, Arc<str>)) -> (&str, &str) {
            (k, v)
        }
        let (before, after) = self.split();
        before
            .iter()
            .map(shared)
            .chain(self.own_pair().map(|(k, v)| (&**k, v.as_str())))
            .chain(after.iter().map(shared))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.group.pairs.len() + usize::from(self.own_pair().is_some())
    }

    /// Appends the escaped text form without braces (`a="x",b="y"`); nothing for no
    /// labels.
    pub fn write_text(&self, out: &mut String) {
        out.push_str(&self.group.head);
        if let Some(own) = &self.own {
            out.push_str(own.escaped());
            out.push_str(&self.group.tail);
        }
    }

    /// Length in bytes of what [`write_text`](Self::write_text) appends.
    pub fn text_len(&self) -> usize {
        self.group.head.len()
            + self
                .own
                .as_ref()
                .map_or(0, |own| own.escaped().len() + self.group.tail.len())
    }

    /// The escaped text form as a new string (see [`write_text`](Self::write_text)).
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(self.text_len());
        self.write_text(&mut s);
        s
    }

    /// Value of one label, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for LabelSet {
    fn eq(&self, other: &Self) -> bool {
        let same_own = match (&self.own, &other.own) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        (Arc::ptr_eq(&self.group, &other.group) && same_own) || self.pairs().eq(other.pairs())
    }
}

impl Eq for LabelSet {}

impl Hash for LabelSet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for (k, v) in self.pairs() {
            k.hash(state);
            v.hash(state);
        }
    }
}

impl fmt::Debug for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.pairs()).finish()
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
        assert_eq!(l.to_text(), r#"name="a\"b\\c\nd",room="Kuchyň""#);
        assert_eq!(l.get("room"), Some("Kuchyň"));
        assert_eq!(l.get("nope"), None);
        assert!(LabelSet::empty().is_empty());
    }

    #[test]
    fn grouped_label_sets_equal_and_render_like_plain_ones() {
        use std::collections::hash_map::DefaultHasher;
        let hash = |l: &LabelSet| {
            let mut h = DefaultHasher::new();
            l.hash(&mut h);
            h.finish()
        };
        let group = LabelGroup::new(
            [("ms", "m"), ("name", "Licht \"A\"")],
            "sub",
            [("uuid", "u1")],
        );
        let grouped = LabelSet::in_group(&group, LabelValue::new("val\\ue"));
        let plain = LabelSet::new([
            ("ms", "m"),
            ("name", "Licht \"A\""),
            ("sub", "val\\ue"),
            ("uuid", "u1"),
        ]);
        assert_eq!(grouped.to_text(), plain.to_text());
        assert_eq!(
            grouped.to_text(),
            r#"ms="m",name="Licht \"A\"",sub="val\\ue",uuid="u1""#
        );
        assert_eq!(grouped.text_len(), grouped.to_text().len());
        assert_eq!(*grouped, *plain);
        assert_eq!(hash(&grouped), hash(&plain));
        assert_eq!(grouped.len(), 4);
        assert_eq!(grouped.get("sub"), Some("val\\ue"));
        assert_eq!(
            grouped.pairs().collect::<Vec<_>>(),
            plain.pairs().collect::<Vec<_>>()
        );
        let other = LabelSet::in_group(&group, LabelValue::new("other"));
        assert_ne!(*grouped, *other);
        // varying label first or last, and alone
        for (before, after, text) in [
            (vec![], vec![("b", "2")], r#"v="x",b="2""#),
            (vec![("a", "1")], vec![], r#"a="1",v="x""#),
            (vec![], vec![], r#"v="x""#),
        ] {
            let g = LabelGroup::new(before, "v", after);
            assert_eq!(LabelSet::in_group(&g, LabelValue::new("x")).to_text(), text);
        }
        let info = grouped.with_label("value", "on");
        assert_eq!(
            info.to_text(),
            r#"ms="m",name="Licht \"A\"",sub="val\\ue",uuid="u1",value="on""#
        );
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
