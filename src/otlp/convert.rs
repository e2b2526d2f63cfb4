//! Registry [`Snapshot`] → OTLP `ExportMetricsServiceRequest`s (pure: no I/O, clocks passed in).
//!
//! Implements `docs/otlp-and-prometheus.md` §1 (Prometheus → OTLP rules) for the registry's
//! four kinds:
//! - gauge → Gauge;
//! - counter → monotonic cumulative Sum;
//! - histogram → cumulative Histogram with *per-bucket* counts (the model's buckets are
//!   cumulative, the `+Inf` bucket is implicit and equals `count`), explicit bounds, count, sum;
//! - info → non-monotonic cumulative Sum of value 1 with the labels as attributes. The spec
//!   (§1.3, "Info → non-monotonic Sum") asks for this, and Prometheus/Mimir map a non-monotonic
//!   Sum back to a gauge (or to `info` through the `prometheus.type` hint), so the scraped and
//!   pushed paths stay the same series. (The original sent a Gauge; both land as gauges.)
//!
//! Names are unchanged, HELP becomes the description, unit stays empty, and the Prometheus
//! type goes into `Metric.metadata` as `prometheus.type`. Counters, histograms and info
//! points carry a start time: process start for series present at the first conversion,
//! first-seen time for later ones, constant for the series' life ([`Converter`] keeps that
//! state). A series seen in the previous conversion but missing now is sent once more with
//! the `NoRecordedValue` flag (§1.5). NaN stays NaN.
//!
//! Output is split so that no encoded request exceeds the configured byte limit; a family
//! bigger than the limit is split across requests by data points.
//!
//! Does not: send anything (see `transport`), decide retries (see `export`).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, DataPointFlags, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use rustc_hash::FxHashMap;

use crate::metrics::model::{HistogramValue, LabelSet, MetricKind, Snapshot, Value};

/// Instrumentation scope name: this crate.
pub const SCOPE_NAME: &str = env!("CARGO_PKG_NAME");
/// Instrumentation scope version and `service.version`.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Metadata key carrying the Prometheus type (spec §1.1).
pub const PROMETHEUS_TYPE_KEY: &str = "prometheus.type";

/// Bytes reserved per request for the growth of the two length prefixes around the
/// metrics list (ResourceMetrics and ScopeMetrics, at most 4 extra bytes each).
const ENVELOPE_SLACK: usize = 16;
/// Bytes reserved per metric chunk for the growth of its own and its `data` length prefix.
const METRIC_SLACK: usize = 12;

/// What the resource says about this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// `service.name` (config, already merged with `OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// `service.instance.id`: `host:port` of the listener, as a scrape would name it.
    pub instance_id: String,
    /// `host.name`.
    pub host_name: String,
    /// Further attributes (config and `OTEL_RESOURCE_ATTRIBUTES`); a key repeated here
    /// replaces the default value, except `service.name`, which `service_name` decides.
    pub extra: Vec<(String, String)>,
}

/// Builds the OTLP resource: `service.name`, `service.version`, `service.instance.id`,
/// `host.name`, then the extra attributes.
pub fn build_resource(info: &ResourceInfo) -> Resource {
    let mut attrs: Vec<(String, String)> = vec![
        ("service.name".into(), info.service_name.clone()),
        ("service.version".into(), SCOPE_VERSION.into()),
        ("service.instance.id".into(), info.instance_id.clone()),
        ("host.name".into(), info.host_name.clone()),
    ];
    for (k, v) in &info.extra {
        if k == "service.name" {
            continue;
        }
        match attrs.iter_mut().find(|(key, _)| key == k) {
            Some(existing) => existing.1 = v.clone(),
            None => attrs.push((k.clone(), v.clone())),
        }
    }
    Resource {
        attributes: attrs.into_iter().map(|(k, v)| string_kv(k, v)).collect(),
        ..Default::default()
    }
}

/// The result of converting one snapshot.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// Requests to send, each within the byte limit (unless one data point alone is larger).
    pub requests: Vec<ExportMetricsServiceRequest>,
    /// Data points in each request (same order as `requests`), stale markers included.
    pub points_per_request: Vec<usize>,
    /// Stale markers (NoRecordedValue points) among all points.
    pub stale_points: usize,
    /// Identifies this conversion for [`Converter::acknowledge`].
    pub generation: u64,
}

impl Conversion {
    /// Total data points in all requests.
    pub fn total_points(&self) -> usize {
        self.points_per_request.iter().sum()
    }
}

/// A series key hashed by its rendered label text only (one string, FxHash), compared by
/// pointer first: the state store hands out the same `Arc` for a series' whole life.
#[derive(Clone)]
struct SeriesKey(Arc<LabelSet>);

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.rendered().hash(state);
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.pairs() == other.0.pairs()
    }
}

impl Eq for SeriesKey {}

struct SeriesState {
    start_ns: u64,
    /// Generation of the last conversion that contained this series.
    seen: u64,
}

struct FamilyState {
    help: Arc<str>,
    kind: MetricKind,
    seen: u64,
    series: FxHashMap<SeriesKey, SeriesState>,
}

/// Converts snapshots, remembering per-series start times and which series ended.
pub struct Converter {
    resource: Resource,
    scope: InstrumentationScope,
    max_request_bytes: usize,
    process_start_ns: u64,
    generation: u64,
    families: FxHashMap<Arc<str>, FamilyState>,
}

impl Converter {
    /// A converter. `process_start` is the start time of series present at the first
    /// conversion; `max_request_bytes` caps each encoded request.
    pub fn new(resource: Resource, process_start: SystemTime, max_request_bytes: usize) -> Self {
        Converter {
            resource,
            scope: InstrumentationScope {
                name: SCOPE_NAME.into(),
                version: SCOPE_VERSION.into(),
                ..Default::default()
            },
            max_request_bytes,
            process_start_ns: unix_nanos(process_start),
            generation: 0,
            families: FxHashMap::default(),
        }
    }

    /// Number of series whose state is kept (live plus ended-but-unacknowledged).
    pub fn tracked_series(&self) -> usize {
        self.families.values().map(|f| f.series.len()).sum()
    }

    /// Forgets series that ended before the given conversion was delivered: their
    /// NoRecordedValue markers reached the collector. Until then they are sent again with
    /// every conversion, so a failed export does not lose the end-of-series signal.
    pub fn acknowledge(&mut self, generation: u64) {
        self.families.retain(|_, fam| {
            fam.series.retain(|_, s| s.seen >= generation);
            fam.seen >= generation || !fam.series.is_empty()
        });
    }

    /// Converts one snapshot; `snapshot.taken_at` is every point's timestamp.
    pub fn convert(&mut self, snapshot: &Snapshot) -> Conversion {
        let first = self.generation == 0;
        self.generation += 1;
        let gen = self.generation;
        let now_ns = unix_nanos(snapshot.taken_at);
        let new_series_start = if first { self.process_start_ns } else { now_ns };

        let mut metrics: Vec<(Metric, usize)> = Vec::with_capacity(snapshot.families.len());
        let mut stale_points = 0usize;

        for family in &snapshot.families {
            let name: &str = &family.name;
            // One small allocation per family and conversion; families are few.
            let state = self
                .families
                .entry(Arc::from(name))
                .or_insert_with(|| FamilyState {
                    help: Arc::from(&*family.help),
                    kind: family.kind,
                    seen: 0,
                    series: FxHashMap::default(),
                });
            if state.kind != family.kind {
                // A family changed type: its old series cannot be ended meaningfully
                // under the new type; start over.
                state.series.clear();
                state.kind = family.kind;
            }
            state.seen = gen;
            state.help = if *state.help == *family.help {
                state.help.clone()
            } else {
                Arc::from(&*family.help)
            };

            let mut seen_now = 0usize;
            let mut builder = PointsBuilder::new(family.kind);
            for sample in &family.samples {
                let key = SeriesKey(sample.labels.clone());
                let series = state.series.entry(key).or_insert(SeriesState {
                    start_ns: new_series_start,
                    seen: 0,
                });
                if series.seen != gen {
                    series.seen = gen;
                    seen_now += 1;
                }
                builder.push(&sample.labels, &sample.value, series.start_ns, now_ns);
            }
            if seen_now < state.series.len() {
                for (key, series) in &state.series {
                    if series.seen < gen {
                        builder.push_stale(&key.0, series.start_ns, now_ns);
                        stale_points += 1;
                    }
                }
            }
            if builder.len() > 0 {
                let n = builder.len();
                metrics.push((builder.finish(name, &family.help), n));
            }
        }

        // Families that vanished entirely: end all their series.
        for (name, state) in &self.families {
            if state.seen == gen {
                continue;
            }
            let mut builder = PointsBuilder::new(state.kind);
            for (key, series) in &state.series {
                builder.push_stale(&key.0, series.start_ns, now_ns);
                stale_points += 1;
            }
            if builder.len() > 0 {
                let n = builder.len();
                metrics.push((builder.finish(name, &state.help), n));
            }
        }

        let (requests, points_per_request) = self.pack(metrics);
        Conversion {
            requests,
            points_per_request,
            stale_points,
            generation: gen,
        }
    }

    fn request(&self, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(self.scope.clone()),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    /// Packs metrics into requests within the byte limit, splitting oversized metrics by
    /// data points.
    fn pack(
        &self,
        metrics: Vec<(Metric, usize)>,
    ) -> (Vec<ExportMetricsServiceRequest>, Vec<usize>) {
        let envelope = self.request(Vec::new()).encoded_len() + ENVELOPE_SLACK;
        let budget = self.max_request_bytes.saturating_sub(envelope).max(1);
        let mut requests = Vec::new();
        let mut counts = Vec::new();
        let mut current: Vec<Metric> = Vec::new();
        let mut current_size = 0usize;
        let mut current_points = 0usize;

        let mut flush = |current: &mut Vec<Metric>, size: &mut usize, points: &mut usize| {
            if !current.is_empty() {
                requests.push(self.request(std::mem::take(current)));
                counts.push(*points);
            }
            *size = 0;
            *points = 0;
        };

        for (metric, points) in metrics {
            let framed = framed_len(metric.encoded_len());
            if framed <= budget {
                if current_size + framed > budget {
                    flush(&mut current, &mut current_size, &mut current_points);
                }
                current_size += framed;
                current_points += points;
                current.push(metric);
                continue;
            }
            for (chunk, chunk_points) in split_metric(metric, budget) {
                let framed = framed_len(chunk.encoded_len());
                if current_size + framed > budget {
                    flush(&mut current, &mut current_size, &mut current_points);
                }
                current_size += framed;
                current_points += chunk_points;
                current.push(chunk);
            }
        }
        flush(&mut current, &mut current_size, &mut current_points);
        (requests, counts)
    }
}

/// Size of a length-delimited field with a one-byte tag.
fn framed_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

/// Splits one metric into chunks of at most `budget` framed bytes each (a single point
/// larger than that becomes a chunk of its own).
fn split_metric(metric: Metric, budget: usize) -> Vec<(Metric, usize)> {
    let Metric {
        name,
        description,
        unit,
        metadata,
        data,
    } = metric;
    let descriptor = |data: metric::Data| Metric {
        name: name.clone(),
        description: description.clone(),
        unit: unit.clone(),
        metadata: metadata.clone(),
        data: Some(data),
    };
    let empty_len = descriptor(metric::Data::Gauge(Gauge::default())).encoded_len();
    let capacity = budget.saturating_sub(empty_len + METRIC_SLACK + 5).max(1);
    match data {
        Some(metric::Data::Gauge(g)) => chunk_points(g.data_points, capacity)
            .into_iter()
            .map(|pts| {
                let n = pts.len();
                (
                    descriptor(metric::Data::Gauge(Gauge { data_points: pts })),
                    n,
                )
            })
            .collect(),
        Some(metric::Data::Sum(s)) => chunk_points(s.data_points, capacity)
            .into_iter()
            .map(|pts| {
                let n = pts.len();
                let sum = Sum {
                    data_points: pts,
                    aggregation_temporality: s.aggregation_temporality,
                    is_monotonic: s.is_monotonic,
                };
                (descriptor(metric::Data::Sum(sum)), n)
            })
            .collect(),
        Some(metric::Data::Histogram(h)) => chunk_points(h.data_points, capacity)
            .into_iter()
            .map(|pts| {
                let n = pts.len();
                let hist = Histogram {
                    data_points: pts,
                    aggregation_temporality: h.aggregation_temporality,
                };
                (descriptor(metric::Data::Histogram(hist)), n)
            })
            .collect(),
        // We never build other data types; pass anything else through whole.
        other => {
            let m = Metric {
                name,
                description,
                unit,
                metadata,
                data: other,
            };
            vec![(m, 0)]
        }
    }
}

fn chunk_points<T: Message>(points: Vec<T>, capacity: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0usize;
    for p in points {
        let framed = framed_len(p.encoded_len());
        if !current.is_empty() && size + framed > capacity {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        size += framed;
        current.push(p);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Collects the points of one family.
enum PointsBuilder {
    Number {
        kind: MetricKind,
        points: Vec<NumberDataPoint>,
    },
    Histogram(Vec<HistogramDataPoint>),
}

impl PointsBuilder {
    fn new(kind: MetricKind) -> Self {
        match kind {
            MetricKind::Histogram => PointsBuilder::Histogram(Vec::new()),
            kind => PointsBuilder::Number {
                kind,
                points: Vec::new(),
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            PointsBuilder::Number { points, .. } => points.len(),
            PointsBuilder::Histogram(points) => points.len(),
        }
    }

    /// Adds a live point. A value that does not fit the family's kind is skipped.
    fn push(&mut self, labels: &LabelSet, value: &Value, start_ns: u64, now_ns: u64) {
        match (self, value) {
            (PointsBuilder::Number { kind, points }, Value::Number(v)) => {
                points.push(NumberDataPoint {
                    attributes: attributes(labels),
                    // Gauges have no start time (spec §1.2: leave unset when unknown).
                    start_time_unix_nano: if *kind == MetricKind::Gauge {
                        0
                    } else {
                        start_ns
                    },
                    time_unix_nano: now_ns,
                    value: Some(number_data_point::Value::AsDouble(*v)),
                    ..Default::default()
                });
            }
            (PointsBuilder::Histogram(points), Value::Histogram(h)) => {
                points.push(histogram_point(labels, h, start_ns, now_ns));
            }
            _ => {}
        }
    }

    /// Adds an end-of-series marker.
    fn push_stale(&mut self, labels: &LabelSet, start_ns: u64, now_ns: u64) {
        let flags = DataPointFlags::NoRecordedValueMask as u32;
        match self {
            PointsBuilder::Number { kind, points } => points.push(NumberDataPoint {
                attributes: attributes(labels),
                start_time_unix_nano: if *kind == MetricKind::Gauge {
                    0
                } else {
                    start_ns
                },
                time_unix_nano: now_ns,
                flags,
                value: None,
                ..Default::default()
            }),
            PointsBuilder::Histogram(points) => points.push(HistogramDataPoint {
                attributes: attributes(labels),
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns,
                flags,
                ..Default::default()
            }),
        }
    }

    fn finish(self, name: &str, help: &str) -> Metric {
        let cumulative = AggregationTemporality::Cumulative as i32;
        let (kind, data) = match self {
            PointsBuilder::Number { kind, points } => {
                let data = match kind {
                    MetricKind::Gauge => metric::Data::Gauge(Gauge {
                        data_points: points,
                    }),
                    MetricKind::Counter => metric::Data::Sum(Sum {
                        data_points: points,
                        aggregation_temporality: cumulative,
                        is_monotonic: true,
                    }),
                    // Info (and, defensively, a histogram family never reaches here).
                    _ => metric::Data::Sum(Sum {
                        data_points: points,
                        aggregation_temporality: cumulative,
                        is_monotonic: false,
                    }),
                };
                (kind, data)
            }
            PointsBuilder::Histogram(points) => (
                MetricKind::Histogram,
                metric::Data::Histogram(Histogram {
                    data_points: points,
                    aggregation_temporality: cumulative,
                }),
            ),
        };
        Metric {
            name: name.to_string(),
            description: help.to_string(),
            unit: String::new(),
            metadata: vec![string_kv(
                PROMETHEUS_TYPE_KEY.to_string(),
                kind.prometheus_type().to_string(),
            )],
            data: Some(data),
        }
    }
}

/// Per-bucket counts from the model's cumulative buckets; the last count is the implicit
/// `+Inf` bucket (`count` minus the last cumulative count).
fn histogram_point(
    labels: &LabelSet,
    h: &HistogramValue,
    start_ns: u64,
    now_ns: u64,
) -> HistogramDataPoint {
    let mut explicit_bounds = Vec::with_capacity(h.buckets.len());
    let mut bucket_counts = Vec::with_capacity(h.buckets.len() + 1);
    let mut previous = 0u64;
    for &(bound, cumulative) in &h.buckets {
        if bound.is_infinite() && bound > 0.0 {
            // An explicit +Inf bucket is the implicit overflow bucket; skip it.
            continue;
        }
        explicit_bounds.push(bound);
        bucket_counts.push(cumulative.saturating_sub(previous));
        previous = previous.max(cumulative);
    }
    bucket_counts.push(h.count.saturating_sub(previous));
    HistogramDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        count: h.count,
        sum: Some(h.sum),
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

fn attributes(labels: &LabelSet) -> Vec<KeyValue> {
    labels
        .pairs()
        .iter()
        .map(|(k, v)| string_kv(k.to_string(), v.to_string()))
        .collect()
}

fn string_kv(key: String, value: String) -> KeyValue {
    KeyValue {
        key,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// Nanoseconds since the Unix epoch; 0 for times before it.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{Family, Sample};
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn resource() -> Resource {
        build_resource(&ResourceInfo {
            service_name: "svc".into(),
            instance_id: "host:9504".into(),
            host_name: "host".into(),
            extra: vec![
                ("deployment.environment".into(), "test".into()),
                ("host.name".into(), "override".into()),
                ("service.name".into(), "ignored".into()),
            ],
        })
    }

    fn attr_map(kvs: &[KeyValue]) -> Vec<(String, String)> {
        kvs.iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), v)
            })
            .collect()
    }

    fn snapshot(families: Vec<Family>, taken: u64) -> Snapshot {
        Snapshot {
            families,
            taken_at: at(taken),
        }
    }

    fn gauge(name: &'static str, series: &[(&str, f64)]) -> Family {
        let mut f = Family::new(name, "gauge help", MetricKind::Gauge);
        for (room, v) in series {
            f.samples
                .push(Sample::number(LabelSet::new([("room", *room)]), *v));
        }
        f
    }

    fn all_metrics(c: &Conversion) -> Vec<&Metric> {
        c.requests
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .collect()
    }

    fn number_points<'a>(c: &'a Conversion, name: &str) -> Vec<&'a NumberDataPoint> {
        all_metrics(c)
            .into_iter()
            .filter(|m| m.name == name)
            .flat_map(|m| match &m.data {
                Some(metric::Data::Gauge(g)) => g.data_points.iter().collect::<Vec<_>>(),
                Some(metric::Data::Sum(s)) => s.data_points.iter().collect(),
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn resource_and_scope() {
        let attrs = attr_map(&resource().attributes);
        assert_eq!(
            attrs,
            vec![
                ("service.name".to_string(), "svc".to_string()),
                ("service.version".into(), SCOPE_VERSION.into()),
                ("service.instance.id".into(), "host:9504".into()),
                ("host.name".into(), "override".into()),
                ("deployment.environment".into(), "test".into()),
            ]
        );
        let mut c = Converter::new(resource(), at(100), 1 << 20);
        let conv = c.convert(&snapshot(vec![gauge("g", &[("a", 1.0)])], 200));
        let sm = &conv.requests[0].resource_metrics[0].scope_metrics[0];
        let scope = sm.scope.as_ref().unwrap();
        assert_eq!(scope.name, "loxone-exporter");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn kinds_map_to_otlp_types() {
        let mut counter = Family::new("c_total", "counter help", MetricKind::Counter);
        counter
            .samples
            .push(Sample::number(LabelSet::new([("k", "v")]), 7.0));
        let mut info = Family::new("x_info", "info help", MetricKind::Info);
        info.samples.push(Sample::number(
            LabelSet::new([("version", "1.2"), ("name", "ms")]),
            1.0,
        ));
        let mut hist = Family::new("h_seconds", "hist help", MetricKind::Histogram);
        hist.samples.push(Sample {
            labels: LabelSet::new([("op", "x")]),
            value: Value::Histogram(HistogramValue {
                buckets: vec![(0.1, 2), (1.0, 5), (10.0, 5)],
                count: 9,
                sum: 42.5,
            }),
        });
        let g = gauge("g", &[("kitchen", f64::NAN)]);
        let mut c = Converter::new(resource(), at(100), 1 << 20);
        let conv = c.convert(&snapshot(vec![g, counter, info, hist], 200));
        assert_eq!(conv.requests.len(), 1);
        assert_eq!(conv.total_points(), 4);
        let metrics = all_metrics(&conv);
        let by_name = |n: &str| *metrics.iter().find(|m| m.name == n).unwrap();

        let m = by_name("g");
        assert_eq!(m.description, "gauge help");
        assert_eq!(m.unit, "");
        assert_eq!(
            attr_map(&m.metadata),
            vec![("prometheus.type".into(), "gauge".into())]
        );
        let Some(metric::Data::Gauge(gd)) = &m.data else {
            panic!("gauge")
        };
        let p = &gd.data_points[0];
        assert!(matches!(p.value, Some(number_data_point::Value::AsDouble(v)) if v.is_nan()));
        assert_eq!(p.start_time_unix_nano, 0);
        assert_eq!(p.time_unix_nano, 200_000_000_000);
        assert_eq!(
            attr_map(&p.attributes),
            vec![("room".into(), "kitchen".into())]
        );

        let m = by_name("c_total");
        assert_eq!(attr_map(&m.metadata)[0].1, "counter");
        let Some(metric::Data::Sum(s)) = &m.data else {
            panic!("sum")
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(s.data_points[0].start_time_unix_nano, 100_000_000_000);
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsDouble(7.0))
        );

        let m = by_name("x_info");
        assert_eq!(attr_map(&m.metadata)[0].1, "info");
        let Some(metric::Data::Sum(s)) = &m.data else {
            panic!("info is a sum")
        };
        assert!(!s.is_monotonic);
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsDouble(1.0))
        );
        assert_eq!(
            attr_map(&s.data_points[0].attributes),
            vec![
                ("version".into(), "1.2".into()),
                ("name".into(), "ms".into())
            ]
        );

        let m = by_name("h_seconds");
        assert_eq!(attr_map(&m.metadata)[0].1, "histogram");
        let Some(metric::Data::Histogram(h)) = &m.data else {
            panic!("histogram")
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0, 10.0]);
        // cumulative 2,5,5 with count 9 -> per bucket 2,3,0 and 4 in +Inf
        assert_eq!(p.bucket_counts, vec![2, 3, 0, 4]);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        assert_eq!(p.count, 9);
        assert_eq!(p.sum, Some(42.5));
        assert_eq!(p.start_time_unix_nano, 100_000_000_000);
        assert_eq!(p.min, None);
    }

    #[test]
    fn start_times_are_per_series_and_constant() {
        let counter = |series: &[&str]| {
            let mut f = Family::new("c_total", "h", MetricKind::Counter);
            for s in series {
                f.samples
                    .push(Sample::number(LabelSet::new([("s", *s)]), 1.0));
            }
            f
        };
        let mut c = Converter::new(resource(), at(100), 1 << 20);
        let start_of = |conv: &Conversion, s: &str| {
            number_points(conv, "c_total")
                .into_iter()
                .find(|p| attr_map(&p.attributes)[0].1 == s)
                .map(|p| p.start_time_unix_nano)
                .unwrap()
        };
        let first = c.convert(&snapshot(vec![counter(&["a"])], 200));
        assert_eq!(start_of(&first, "a"), 100_000_000_000);
        let second = c.convert(&snapshot(vec![counter(&["a", "b"])], 230));
        assert_eq!(start_of(&second, "a"), 100_000_000_000);
        assert_eq!(start_of(&second, "b"), 230_000_000_000);
        let third = c.convert(&snapshot(vec![counter(&["a", "b"])], 260));
        assert_eq!(start_of(&third, "b"), 230_000_000_000);
    }

    #[test]
    fn vanished_series_get_one_no_recorded_value_point() {
        let mut c = Converter::new(resource(), at(100), 1 << 20);
        let conv = c.convert(&snapshot(
            vec![
                gauge("g", &[("a", 1.0), ("b", 2.0)]),
                gauge("gone", &[("x", 1.0)]),
            ],
            200,
        ));
        c.acknowledge(conv.generation);
        assert_eq!(conv.stale_points, 0);

        // "b" and the whole family "gone" disappear; the export fails (no ack)
        let conv = c.convert(&snapshot(vec![gauge("g", &[("a", 1.0)])], 230));
        assert_eq!(conv.stale_points, 2);
        let stale: Vec<_> = number_points(&conv, "g")
            .into_iter()
            .filter(|p| p.flags & DataPointFlags::NoRecordedValueMask as u32 != 0)
            .collect();
        assert_eq!(stale.len(), 1);
        assert_eq!(attr_map(&stale[0].attributes)[0].1, "b");
        assert_eq!(stale[0].value, None);
        assert_eq!(stale[0].time_unix_nano, 230_000_000_000);
        let gone = number_points(&conv, "gone");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].flags, 1);
        assert_eq!(
            all_metrics(&conv)
                .iter()
                .find(|m| m.name == "gone")
                .unwrap()
                .description,
            "gauge help"
        );

        // not acknowledged: sent again; then acknowledged: never again
        let conv = c.convert(&snapshot(vec![gauge("g", &[("a", 1.0)])], 260));
        assert_eq!(conv.stale_points, 2);
        c.acknowledge(conv.generation);
        let conv = c.convert(&snapshot(vec![gauge("g", &[("a", 1.0)])], 290));
        assert_eq!(conv.stale_points, 0);
        assert_eq!(c.tracked_series(), 1);
        assert!(number_points(&conv, "gone").is_empty());
    }

    #[test]
    fn requests_stay_under_the_limit_and_split_big_families() {
        let mut families = Vec::new();
        for f in 0..5 {
            let mut fam = Family::new(format!("fam_{f}"), "help text", MetricKind::Gauge);
            for i in 0..2000 {
                fam.samples.push(Sample::number(
                    LabelSet::new([
                        ("control", format!("control-{i}")),
                        ("room", "Living room".to_string()),
                    ]),
                    i as f64,
                ));
            }
            families.push(fam);
        }
        let limit = 64 * 1024;
        let mut c = Converter::new(resource(), at(100), limit);
        let conv = c.convert(&snapshot(families, 200));
        assert!(
            conv.requests.len() > 5,
            "expected splitting, got {}",
            conv.requests.len()
        );
        for r in &conv.requests {
            assert!(r.encoded_len() <= limit, "{} > {limit}", r.encoded_len());
        }
        assert_eq!(conv.total_points(), 10_000);
        assert_eq!(conv.points_per_request.len(), conv.requests.len());
        // every point arrives exactly once, in order within a family
        for f in 0..5 {
            let pts = number_points(&conv, &format!("fam_{f}"));
            assert_eq!(pts.len(), 2000);
            for (i, p) in pts.iter().enumerate() {
                assert_eq!(p.value, Some(number_data_point::Value::AsDouble(i as f64)));
            }
        }
        // counts per request match the requests' contents
        for (r, n) in conv.requests.iter().zip(&conv.points_per_request) {
            let c: usize = r.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .map(|m| match &m.data {
                    Some(metric::Data::Gauge(g)) => g.data_points.len(),
                    _ => 0,
                })
                .sum();
            assert_eq!(c, *n);
        }
    }
}
