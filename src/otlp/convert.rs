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
//! points carry a start time: process start for series present at the first conversion;
//! for later ones the time the snapshot before the one they first appear in was taken (they
//! began after it; their first point's interval is then never empty, which many backends
//! reject), constant for the series' life ([`Converter`] keeps that
//! state). A series seen in the previous conversion but missing now is sent once more with
//! the `NoRecordedValue` flag (§1.5). NaN stays NaN.
//!
//! The output is encoded `ExportMetricsServiceRequest` bodies (canonical protobuf, written
//! directly: see [`Converter`] for why), [`Conversion::requests`] decodes them into
//! `opentelemetry-proto` messages. It is split so that no request exceeds the configured
//! byte limit; a family bigger than the limit is split across requests by data points.
//! With [`Converter::split_into`], a conversion bigger than [`MIN_PART_BYTES`] is also
//! split into that many requests of similar size, so that they can be sent concurrently
//! and a collector decodes them in parallel.
//!
//! Does not: send anything (see `transport`), decide retries (see `export`).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, DataPointFlags};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use rustc_hash::FxHashMap;

use crate::metrics::model::{HistogramValue, LabelSet, MetricKind, Sample, Snapshot, Value};

/// Instrumentation scope name: this crate.
pub const SCOPE_NAME: &str = env!("CARGO_PKG_NAME");
/// Instrumentation scope version and `service.version`.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Metadata key carrying the Prometheus type (spec §1.1).
pub const PROMETHEUS_TYPE_KEY: &str = "prometheus.type";
/// Smallest request [`Converter::split_into`] creates: below this, a second request costs
/// more (headers, a round trip) than decoding in parallel saves.
pub const MIN_PART_BYTES: usize = 256 * 1024;

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
    /// Encoded `ExportMetricsServiceRequest`s, each within the byte limit.
    pub bodies: Vec<Bytes>,
    /// Data points in each request (same order as `bodies`), stale markers included.
    pub points_per_request: Vec<usize>,
    /// Stale markers (NoRecordedValue points) among all points.
    pub stale_points: usize,
    /// Data points left out because a request holding only that point would exceed the
    /// byte limit (OTLP: a client MUST NOT send a body above its limit).
    pub oversized_points: usize,
    /// Identifies this conversion for [`Converter::acknowledge`].
    pub generation: u64,
}

impl Conversion {
    /// Total data points in all requests.
    pub fn total_points(&self) -> usize {
        self.points_per_request.iter().sum()
    }

    /// The requests as `opentelemetry-proto` messages (decodes `bodies`; for tests and
    /// tools, the export path sends the bytes as they are).
    pub fn requests(&self) -> Result<Vec<ExportMetricsServiceRequest>, prost::DecodeError> {
        self.bodies
            .iter()
            .map(|b| ExportMetricsServiceRequest::decode(b.as_ref()))
            .collect()
    }
}

/// A series key hashed by its label pairs (FxHash), compared by pointer first: the state
/// store hands out the same `Arc` for a series' whole life.
#[derive(Clone)]
struct SeriesKey(Arc<LabelSet>);

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for SeriesKey {}

struct SeriesState {
    /// The label set this series was last seen with. Holding the `Arc` keeps its address
    /// from being reused, so pointer equality with a sample's labels proves identity.
    labels: Arc<LabelSet>,
    start_ns: u64,
    /// Generation of the last conversion that contained this series.
    seen: u64,
    /// The point's `attributes` field, encoded once for the series' life (tag included).
    attributes: Box<[u8]>,
}

/// Marks a position in [`FamilyState::order`] that names no series.
const NO_SERIES: u32 = u32::MAX;

struct FamilyState {
    help: Arc<str>,
    kind: MetricKind,
    seen: u64,
    /// Every tracked series (live, or ended and not yet acknowledged).
    series: Vec<SeriesState>,
    /// Content index into `series`: finds a series whose label set was rebuilt (a structure
    /// reload creates new `Arc`s for the same labels) so its start time survives.
    by_labels: FxHashMap<SeriesKey, u32>,
    /// Index into `series` of each sample of the previous conversion, by position. The
    /// store hands out the same `Arc` for a series across snapshots and keeps sample order,
    /// so in the steady state sample `i` is `series[order[i]]` (checked by pointer): no
    /// hashing, and `series` is walked in memory order.
    order: Vec<u32>,
}

impl FamilyState {
    /// The index of the series for `labels`, creating it (started at `start_ns`) if new.
    /// `position` is the sample's index in its family.
    fn series_index(
        &mut self,
        position: usize,
        labels: &Arc<LabelSet>,
        start_ns: u64,
        attr_tag: u32,
    ) -> u32 {
        if let Some(&i) = self.order.get(position) {
            if let Some(s) = self.series.get(i as usize) {
                if Arc::ptr_eq(&s.labels, labels) {
                    return i;
                }
            }
        }
        let key = SeriesKey(labels.clone());
        if let Some(&index) = self.by_labels.get(&key) {
            if let Some(s) = self.series.get_mut(index as usize) {
                if !Arc::ptr_eq(&s.labels, labels) {
                    // Same content, new Arc (a structure reload): keep the start time, hold
                    // the new Arc (pointer check, and the old one can be freed).
                    s.labels = labels.clone();
                    self.by_labels.remove(&key);
                    self.by_labels.insert(key, index);
                }
            }
            return index;
        }
        let Ok(index) = u32::try_from(self.series.len()) else {
            return NO_SERIES;
        };
        self.series.push(SeriesState {
            labels: labels.clone(),
            start_ns,
            seen: 0,
            attributes: encode_attributes(labels, attr_tag),
        });
        self.by_labels.insert(key, index);
        index
    }

    /// Drops series last seen before `generation`, keeping indices consistent.
    fn forget_older_than(&mut self, generation: u64) {
        if self.series.iter().all(|s| s.seen >= generation) {
            return;
        }
        let mut remap = Vec::with_capacity(self.series.len());
        let mut next = 0u32;
        for s in &self.series {
            if s.seen >= generation {
                remap.push(next);
                next += 1;
            } else {
                remap.push(NO_SERIES);
            }
        }
        self.series.retain(|s| s.seen >= generation);
        let new_index = |i: u32| remap.get(i as usize).copied().unwrap_or(NO_SERIES);
        self.by_labels.retain(|_, i| {
            *i = new_index(*i);
            *i != NO_SERIES
        });
        for i in &mut self.order {
            *i = new_index(*i);
        }
    }
}

/// Converts snapshots, remembering per-series start times, encoded attributes, and which
/// series ended.
///
/// Why hand-written protobuf rather than building `opentelemetry-proto` structs: those own
/// every attribute as two `String`s, so a 10k-series export costs 120k allocations and frees
/// (about 4 µs per series); here a series' attributes are encoded once and copied, and the
/// output is exactly what prost would produce (the tests decode it with prost and with the
/// Python reference implementation).
pub struct Converter {
    /// `ResourceMetrics.resource` field, encoded.
    resource_field: Vec<u8>,
    /// `ScopeMetrics.scope` field, encoded.
    scope_field: Vec<u8>,
    max_request_bytes: usize,
    /// Requests to split a large conversion into (1: split only by `max_request_bytes`).
    parts: usize,
    process_start_ns: u64,
    /// `taken_at` of the previous conversion's snapshot, if any.
    previous_taken_ns: Option<u64>,
    generation: u64,
    families: FxHashMap<Arc<str>, FamilyState>,
    /// Scratch for the point lists of all families, kept between conversions.
    points_scratch: Vec<PointRef>,
    /// Capacity to reserve for the buffer holding all request bodies (the largest total
    /// seen so far).
    body_hint: usize,
    /// The previous family's `order` vector, reused for the next family.
    order_scratch: Vec<u32>,
}

/// One metric of a conversion between the two passes: which family, its shape and its
/// points (a range of the conversion's point list).
struct PlannedMetric {
    /// Key into [`Converter::families`].
    name: Arc<str>,
    /// Index of the family in the snapshot; `None` for a family that vanished.
    snapshot_family: Option<usize>,
    shape: MetricShape,
    points: std::ops::Range<usize>,
}

impl Converter {
    /// A converter. `process_start` is the start time of series present at the first
    /// conversion; `max_request_bytes` caps each encoded request.
    pub fn new(resource: Resource, process_start: SystemTime, max_request_bytes: usize) -> Self {
        let scope = InstrumentationScope {
            name: SCOPE_NAME.into(),
            version: SCOPE_VERSION.into(),
            ..Default::default()
        };
        let mut resource_field = Vec::new();
        prost::encoding::message::encode(1, &resource, &mut resource_field);
        let mut scope_field = Vec::new();
        prost::encoding::message::encode(1, &scope, &mut scope_field);
        Converter {
            resource_field,
            scope_field,
            max_request_bytes,
            parts: 1,
            process_start_ns: unix_nanos(process_start),
            previous_taken_ns: None,
            generation: 0,
            families: FxHashMap::default(),
            points_scratch: Vec::new(),
            body_hint: 64 * 1024,
            order_scratch: Vec::new(),
        }
    }

    /// The byte limit of one request.
    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    /// Splits every conversion bigger than [`MIN_PART_BYTES`] into up to `parts` requests
    /// of similar size (never fewer than the byte limit needs), for concurrent sending.
    /// `parts` below 1 counts as 1.
    pub fn split_into(mut self, parts: usize) -> Self {
        self.parts = parts.max(1);
        self
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
            fam.forget_older_than(generation);
            fam.seen >= generation || !fam.series.is_empty()
        });
    }

    /// Converts one snapshot; `snapshot.taken_at` is every point's timestamp.
    pub fn convert(&mut self, snapshot: &Snapshot) -> Conversion {
        self.generation += 1;
        let gen = self.generation;
        let now_ns = unix_nanos(snapshot.taken_at);
        // A series new in this snapshot began after the previous one was taken (at process
        // start for the first): that time is its start. Not `now`: a zero-length first
        // interval (start = time) is rejected by many backends.
        let new_series_start = match self.previous_taken_ns {
            Some(prev) if prev < now_ns => prev,
            _ => self.process_start_ns.min(now_ns),
        };
        self.previous_taken_ns = Some(now_ns);

        // Fixed per-request overhead: the two envelopes' tags and (at most 10-byte) length
        // prefixes, the resource and the scope.
        let overhead = 2 * 11 + self.resource_field.len() + self.scope_field.len();
        let mut points = std::mem::take(&mut self.points_scratch);
        points.clear();
        let mut plan: Vec<PlannedMetric> = Vec::with_capacity(snapshot.families.len());
        let mut stale_points = 0usize;
        // Encoded sizes: only needed to split.
        let measure = self.parts > 1;
        let mut sizes = EncodedSizes::default();

        // Pass 1, every family: find every sample's series (mark it seen) and list the
        // points.
        for (family_index, family) in snapshot.families.iter().enumerate() {
            let name: &str = &family.name;
            // One small allocation per family and conversion; families are few.
            let key: Arc<str> = Arc::from(name);
            let state = self
                .families
                .entry(key.clone())
                .or_insert_with(|| FamilyState {
                    help: Arc::from(&*family.help),
                    kind: family.kind,
                    seen: 0,
                    series: Vec::new(),
                    by_labels: FxHashMap::default(),
                    order: Vec::new(),
                });
            if state.kind != family.kind {
                // A family changed type: its old series cannot be ended meaningfully
                // under the new type; start over.
                state.series.clear();
                state.by_labels.clear();
                state.order.clear();
                state.kind = family.kind;
            }
            state.seen = gen;
            if *state.help != *family.help {
                state.help = Arc::from(&*family.help);
            }
            let shape = MetricShape::new(name, &family.help, family.kind);

            let first_point = points.len();
            let mut seen_now = 0usize;
            let attr_tag = attributes_tag(family.kind);
            let mut order = std::mem::take(&mut self.order_scratch);
            order.clear();
            order.reserve(family.samples.len());
            for (position, sample) in family.samples.iter().enumerate() {
                let index =
                    state.series_index(position, &sample.labels, new_series_start, attr_tag);
                order.push(index);
                let Some(series) = state.series.get_mut(index as usize) else {
                    continue;
                };
                if series.seen != gen {
                    series.seen = gen;
                    seen_now += 1;
                }
                let fits = match &sample.value {
                    Value::Histogram(_) => family.kind == MetricKind::Histogram,
                    Value::Number(_) => family.kind != MetricKind::Histogram,
                };
                // A value that does not fit the family's kind is skipped.
                if fits {
                    points.push(PointRef::Live {
                        sample: position,
                        series: index,
                    });
                }
            }
            self.order_scratch = std::mem::replace(&mut state.order, order);
            if seen_now < state.series.len() {
                for (index, series) in state.series.iter().enumerate() {
                    if series.seen < gen {
                        points.push(PointRef::Stale {
                            series: u32::try_from(index).unwrap_or(NO_SERIES),
                        });
                        stale_points += 1;
                    }
                }
            }
            let range = first_point..points.len();
            if measure {
                let source = PointSource {
                    kind: family.kind,
                    series: &state.series,
                    samples: &family.samples,
                    now_ns,
                };
                sizes.add_metric(&shape, points.get(range.clone()), &source);
            }
            plan.push(PlannedMetric {
                name: key,
                snapshot_family: Some(family_index),
                shape,
                points: range,
            });
        }

        // Families that vanished entirely: end all their series.
        for (name, state) in &self.families {
            if state.seen == gen || state.series.is_empty() {
                continue;
            }
            let shape = MetricShape::new(name, &state.help, state.kind);
            let first_point = points.len();
            points.extend((0..state.series.len()).map(|i| PointRef::Stale {
                series: u32::try_from(i).unwrap_or(NO_SERIES),
            }));
            let range = first_point..points.len();
            stale_points += range.len();
            if measure {
                let source = PointSource {
                    kind: state.kind,
                    series: &state.series,
                    samples: &[],
                    now_ns,
                };
                sizes.add_metric(&shape, points.get(range.clone()), &source);
            }
            plan.push(PlannedMetric {
                name: name.clone(),
                snapshot_family: None,
                shape,
                points: range,
            });
        }

        // The byte limit, or an even share when splitting for concurrency. The share has
        // room for one more point and metric header than an exact split, because requests
        // are cut at point boundaries and a metric split in two repeats its header.
        let limit = self.max_request_bytes.saturating_sub(overhead).max(1);
        let budget = if measure && sizes.metrics_bytes + overhead > MIN_PART_BYTES {
            let share = sizes.metrics_bytes.div_ceil(self.parts)
                + sizes.largest_point
                + sizes.largest_metric_overhead;
            share
                .max(MIN_PART_BYTES.saturating_sub(overhead))
                .min(limit)
        } else {
            limit
        };

        // Pass 2: encode the points, straight into the request buffers.
        let mut packer = Packer {
            budget,
            limit,
            oversized: 0,
            reserve: overhead,
            body_hint: self.body_hint,
            resource_field: &self.resource_field,
            scope_field: &self.scope_field,
            ranges: Vec::new(),
            counts: Vec::new(),
            metrics: Vec::new(),
            request_start: 0,
            request_points: 0,
        };
        packer.new_request_buffer();
        for metric in &plan {
            let Some(state) = self.families.get(&metric.name) else {
                continue;
            };
            let samples = match metric.snapshot_family {
                Some(i) => snapshot
                    .families
                    .get(i)
                    .map_or(&[][..], |f| f.samples.as_slice()),
                None => &[],
            };
            let source = PointSource {
                kind: state.kind,
                series: &state.series,
                samples,
                now_ns,
            };
            packer.pack(
                &metric.shape,
                points.get(metric.points.clone()).unwrap_or_default(),
                &source,
            );
        }

        let oversized_points = packer.oversized;
        let (bodies, points_per_request) = packer.finish();
        points.clear();
        self.points_scratch = points;
        let total: usize = bodies.iter().map(Bytes::len).sum();
        self.body_hint = self.body_hint.max(total + bodies.len() * overhead + 64);
        Conversion {
            bodies,
            points_per_request,
            stale_points,
            oversized_points,
            generation: gen,
        }
    }
}

/// Encoded sizes of a conversion's metrics, gathered in pass 1 when splitting: what an even
/// share of the requests must hold.
#[derive(Default)]
struct EncodedSizes {
    /// All metrics, each framed with its header.
    metrics_bytes: usize,
    /// The largest metric header (a metric split across requests repeats it).
    largest_metric_overhead: usize,
    /// The largest framed point (requests are cut at point boundaries).
    largest_point: usize,
}

impl EncodedSizes {
    /// Adds one metric: `points` framed in their data message, under `shape`'s header.
    fn add_metric(
        &mut self,
        shape: &MetricShape,
        points: Option<&[PointRef]>,
        source: &PointSource<'_>,
    ) {
        let mut bytes = 0;
        for &point in points.unwrap_or_default() {
            let size = framed(source.body_len(point));
            bytes += size;
            self.largest_point = self.largest_point.max(size);
        }
        self.metrics_bytes += shape.framed_len(bytes);
        self.largest_metric_overhead = self.largest_metric_overhead.max(shape.framed_len(0));
    }
}

/// One data point to encode: a sample of the snapshot, or the end-of-series marker of a
/// tracked series that is missing from it.
#[derive(Clone, Copy)]
enum PointRef {
    /// `samples[sample]`, whose series is `series[series]`.
    Live { sample: usize, series: u32 },
    /// NoRecordedValue marker for `series[series]`.
    Stale { series: u32 },
}

/// What a family's [`PointRef`]s refer to.
struct PointSource<'a> {
    kind: MetricKind,
    series: &'a [SeriesState],
    samples: &'a [Sample],
    now_ns: u64,
}

impl PointSource<'_> {
    /// The series, the start time to send (none for gauges) and the value (`None`: stale).
    fn resolve(&self, point: PointRef) -> Option<(&SeriesState, u64, Option<&Value>)> {
        let (series, value) = match point {
            PointRef::Live { sample, series } => (series, Some(&self.samples.get(sample)?.value)),
            PointRef::Stale { series } => (series, None),
        };
        let series = self.series.get(series as usize)?;
        let start = if self.kind == MetricKind::Gauge {
            0
        } else {
            series.start_ns
        };
        Some((series, start, value))
    }

    /// Encoded length of the point's message (without its tag and length prefix).
    fn body_len(&self, point: PointRef) -> usize {
        let Some((series, start, value)) = self.resolve(point) else {
            return 0;
        };
        match value {
            Some(Value::Histogram(h)) => histogram_point_len(&series.attributes, start, Some(h)),
            Some(Value::Number(_)) => number_point_len(&series.attributes, start, true),
            None if self.kind == MetricKind::Histogram => {
                histogram_point_len(&series.attributes, start, None)
            }
            None => number_point_len(&series.attributes, start, false),
        }
    }

    /// Writes the point's message (exactly [`PointSource::body_len`] bytes).
    fn write(&self, point: PointRef, buf: &mut Vec<u8>) {
        let Some((series, start, value)) = self.resolve(point) else {
            return;
        };
        let now = self.now_ns;
        match value {
            Some(Value::Histogram(h)) => {
                histogram_point(buf, &series.attributes, start, now, Some(h))
            }
            Some(Value::Number(v)) => number_point(buf, &series.attributes, start, now, Some(*v)),
            None if self.kind == MetricKind::Histogram => {
                histogram_point(buf, &series.attributes, start, now, None)
            }
            None => number_point(buf, &series.attributes, start, now, None),
        }
    }
}

// ---- protobuf field tags (opentelemetry/proto/metrics/v1/metrics.proto) -------------------

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;

const fn tag(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

/// `attributes` is field 7 of NumberDataPoint and field 9 of HistogramDataPoint.
fn attributes_tag(kind: MetricKind) -> u32 {
    if kind == MetricKind::Histogram {
        9
    } else {
        7
    }
}

fn encode_attributes(labels: &LabelSet, field: u32) -> Box<[u8]> {
    let mut buf = Vec::new();
    for (k, v) in labels.pairs() {
        let kv = string_kv(k.to_string(), v.to_string());
        prost::encoding::message::encode(field, &kv, &mut buf);
    }
    buf.into_boxed_slice()
}

fn put_varint(buf: &mut Vec<u8>, v: u64) {
    prost::encoding::encode_varint(v, buf);
}

fn varint_len(v: usize) -> usize {
    prost::encoding::encoded_len_varint(v as u64)
}

fn put_fixed64(buf: &mut Vec<u8>, field: u8, v: u64) {
    buf.push(tag(field, WIRE_I64));
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_double(buf: &mut Vec<u8>, field: u8, v: f64) {
    buf.push(tag(field, WIRE_I64));
    buf.extend_from_slice(&v.to_bits().to_le_bytes());
}

fn put_len_prefixed(buf: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    buf.push(tag(field, WIRE_LEN));
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Encoded length of what [`number_point`] writes; `has_value: false` is a stale marker.
fn number_point_len(attributes: &[u8], start_ns: u64, has_value: bool) -> usize {
    let start = if start_ns != 0 { 9 } else { 0 };
    // time (9), then value (9) or flags (tag + 1-byte varint)
    attributes.len() + start + 9 + if has_value { 9 } else { 2 }
}

/// The finite bounds of a histogram: an explicit +Inf bucket is the implicit overflow bucket.
fn finite_buckets(h: &HistogramValue) -> impl Iterator<Item = &(f64, u64)> + Clone {
    h.buckets
        .iter()
        .filter(|(b, _)| !(b.is_infinite() && *b > 0.0))
}

/// Encoded length of what [`histogram_point`] writes.
fn histogram_point_len(attributes: &[u8], start_ns: u64, value: Option<&HistogramValue>) -> usize {
    let start = if start_ns != 0 { 9 } else { 0 };
    let fixed = attributes.len() + start + 9;
    let Some(h) = value else {
        return fixed + 2;
    };
    let n = finite_buckets(h).count();
    let count = if h.count != 0 { 9 } else { 0 };
    let counts = 8 * (n + 1);
    let bounds = if n > 0 {
        1 + varint_len(8 * n) + 8 * n
    } else {
        0
    };
    fixed + count + 9 + 1 + varint_len(counts) + counts + bounds
}

/// NumberDataPoint: attributes (7), start (2), time (3), as_double (4), flags (8).
/// `None` is an end-of-series marker: no value, NoRecordedValue flag.
fn number_point(
    buf: &mut Vec<u8>,
    attributes: &[u8],
    start_ns: u64,
    now_ns: u64,
    value: Option<f64>,
) {
    buf.extend_from_slice(attributes);
    if start_ns != 0 {
        put_fixed64(buf, 2, start_ns);
    }
    put_fixed64(buf, 3, now_ns);
    match value {
        Some(v) => put_double(buf, 4, v),
        None => {
            buf.push(tag(8, WIRE_VARINT));
            put_varint(buf, DataPointFlags::NoRecordedValueMask as u64);
        }
    }
}

/// HistogramDataPoint: attributes (9), start (2), time (3), count (4), sum (5), per-bucket
/// counts (6, packed), explicit bounds (7, packed), flags (10). The model's buckets are
/// cumulative; the last count is the implicit `+Inf` bucket (`count` minus the last
/// cumulative count). `None` is an end-of-series marker.
fn histogram_point(
    buf: &mut Vec<u8>,
    attributes: &[u8],
    start_ns: u64,
    now_ns: u64,
    value: Option<&HistogramValue>,
) {
    buf.extend_from_slice(attributes);
    if start_ns != 0 {
        put_fixed64(buf, 2, start_ns);
    }
    put_fixed64(buf, 3, now_ns);
    let Some(h) = value else {
        buf.push(tag(10, WIRE_VARINT));
        put_varint(buf, DataPointFlags::NoRecordedValueMask as u64);
        return;
    };
    if h.count != 0 {
        put_fixed64(buf, 4, h.count);
    }
    put_double(buf, 5, h.sum);
    let finite = finite_buckets(h);
    let n = finite.clone().count();
    buf.push(tag(6, WIRE_LEN));
    put_varint(buf, 8 * (n as u64 + 1));
    let mut previous = 0u64;
    for &(_, cumulative) in finite.clone() {
        buf.extend_from_slice(&cumulative.saturating_sub(previous).to_le_bytes());
        previous = previous.max(cumulative);
    }
    buf.extend_from_slice(&h.count.saturating_sub(previous).to_le_bytes());
    if n > 0 {
        buf.push(tag(7, WIRE_LEN));
        put_varint(buf, 8 * n as u64);
        for &(bound, _) in finite {
            buf.extend_from_slice(&bound.to_bits().to_le_bytes());
        }
    }
}

/// What wraps a family's points: the Metric's descriptor fields and its data message.
struct MetricShape {
    /// name (1), description (2), metadata (12), encoded.
    header: Vec<u8>,
    /// Field number of the data oneof: gauge 5, sum 7, histogram 9.
    data_field: u8,
    /// Fields after the points inside the data message (temporality, monotonicity).
    trailer: Vec<u8>,
}

impl MetricShape {
    fn new(name: &str, help: &str, kind: MetricKind) -> Self {
        let mut header = Vec::with_capacity(name.len() + help.len() + 40);
        put_len_prefixed(&mut header, 1, name.as_bytes());
        if !help.is_empty() {
            put_len_prefixed(&mut header, 2, help.as_bytes());
        }
        let meta = string_kv(
            PROMETHEUS_TYPE_KEY.to_string(),
            kind.prometheus_type().to_string(),
        );
        prost::encoding::message::encode(12, &meta, &mut header);
        let cumulative = AggregationTemporality::Cumulative as u64;
        let mut trailer = Vec::new();
        let data_field = match kind {
            MetricKind::Gauge => 5,
            MetricKind::Histogram => {
                trailer.push(tag(2, WIRE_VARINT));
                put_varint(&mut trailer, cumulative);
                9
            }
            // Counter: monotonic; Info: non-monotonic (see the module doc).
            MetricKind::Counter | MetricKind::Info => {
                trailer.push(tag(2, WIRE_VARINT));
                put_varint(&mut trailer, cumulative);
                if kind == MetricKind::Counter {
                    trailer.push(tag(3, WIRE_VARINT));
                    trailer.push(1);
                }
                7
            }
        };
        MetricShape {
            header,
            data_field,
            trailer,
        }
    }

    /// Encoded size of a Metric whose data message holds `points_len` bytes of framed
    /// points, including the Metric's own tag and length prefix inside ScopeMetrics.
    fn framed_len(&self, points_len: usize) -> usize {
        let data = points_len + self.trailer.len();
        let metric = self.header.len() + 1 + varint_len(data) + data;
        1 + varint_len(metric) + metric
    }
}

/// Packs points into Metric chunks and chunks into requests within the budget. Every point's
/// length is known before it is written, so each byte is written once, in place.
struct Packer<'a> {
    /// Bytes available for the framed metrics of one request.
    budget: usize,
    /// Bytes the framed metrics of one request may never exceed (`budget` may be less: an
    /// even share when splitting for concurrency).
    limit: usize,
    /// Points left out: alone they would exceed `limit`.
    oversized: usize,
    /// Bytes kept free at the start of `metrics` for the envelope, written last, so the
    /// body needs no copy.
    reserve: usize,
    /// Capacity to allocate for the buffer of all requests.
    body_hint: usize,
    resource_field: &'a [u8],
    scope_field: &'a [u8],
    /// Where each finished request lies in `metrics`.
    ranges: Vec<std::ops::Range<usize>>,
    counts: Vec<usize>,
    /// Every request, one after the other: for each, `reserve` bytes, then its framed
    /// metrics (ScopeMetrics field 2). One buffer for all: separate buffers for the parts
    /// of a split export made glibc return and re-fault their pages on every conversion
    /// (convert of 10k series 0.63 → 1.56 ms).
    metrics: Vec<u8>,
    /// Start of the current request in `metrics`.
    request_start: usize,
    request_points: usize,
}

/// Size of a point framed as field 1 of its data message.
fn framed(body_len: usize) -> usize {
    1 + varint_len(body_len) + body_len
}

impl Packer<'_> {
    fn new_request_buffer(&mut self) {
        if self.metrics.capacity() == 0 {
            self.metrics = Vec::with_capacity(self.body_hint.max(self.reserve + 1024));
        }
        self.request_start = self.metrics.len();
        self.metrics.resize(self.request_start + self.reserve, 0);
    }

    /// Bytes of framed metrics in the current request.
    fn metrics_len(&self) -> usize {
        self.metrics.len() - self.request_start - self.reserve
    }

    /// Adds one metric's points: as few Metric chunks as the budget allows, a chunk closed
    /// (and the request flushed) when the next point would not fit. A point larger than
    /// the budget goes alone into a request of its own; one larger than the limit is left
    /// out and counted.
    fn pack(&mut self, shape: &MetricShape, points: &[PointRef], source: &PointSource<'_>) {
        let mut start = 0;
        let mut chunk_bytes = 0;
        for (i, &point) in points.iter().enumerate() {
            let size = framed(source.body_len(point));
            // framed_len(size) is at most size + header + trailer + 22 (two tags, two
            // varints): the cheap bound settles almost every point
            if size + shape.header.len() + shape.trailer.len() + 22 > self.limit
                && shape.framed_len(size) > self.limit
            {
                if i > start {
                    self.write_chunk(shape, &points[start..i], chunk_bytes, source);
                }
                self.oversized += 1;
                start = i + 1;
                chunk_bytes = 0;
                continue;
            }
            if self.metrics_len() + shape.framed_len(chunk_bytes + size) > self.budget {
                if i > start {
                    self.write_chunk(shape, &points[start..i], chunk_bytes, source);
                }
                if self.metrics_len() > 0
                    && self.metrics_len() + shape.framed_len(size) > self.budget
                {
                    self.flush_request(true);
                }
                start = i;
                chunk_bytes = 0;
            }
            chunk_bytes += size;
        }
        if points.len() > start {
            self.write_chunk(shape, &points[start..], chunk_bytes, source);
        }
    }

    /// Appends a Metric holding `points` (`points_len` bytes framed) to the current request.
    fn write_chunk(
        &mut self,
        shape: &MetricShape,
        points: &[PointRef],
        points_len: usize,
        source: &PointSource<'_>,
    ) {
        let data = points_len + shape.trailer.len();
        let metric = shape.header.len() + 1 + varint_len(data) + data;
        let buf = &mut self.metrics;
        buf.reserve(1 + varint_len(metric) + metric);
        buf.push(tag(2, WIRE_LEN));
        put_varint(buf, metric as u64);
        buf.extend_from_slice(&shape.header);
        buf.push(tag(shape.data_field, WIRE_LEN));
        put_varint(buf, data as u64);
        for &point in points {
            let body_len = source.body_len(point);
            buf.push(tag(1, WIRE_LEN));
            put_varint(buf, body_len as u64);
            let before = buf.len();
            source.write(point, buf);
            debug_assert_eq!(buf.len() - before, body_len, "point length mismatch");
        }
        buf.extend_from_slice(&shape.trailer);
        self.request_points += points.len();
    }

    /// Wraps the current metrics into ExportMetricsServiceRequest → ResourceMetrics →
    /// ScopeMetrics.
    /// `more`: another request may follow (allocate its buffer).
    fn flush_request(&mut self, more: bool) {
        if self.metrics_len() == 0 {
            return;
        }
        let scope_metrics = self.scope_field.len() + self.metrics_len();
        let resource_metrics =
            self.resource_field.len() + 1 + varint_len(scope_metrics) + scope_metrics;
        let mut envelope = Vec::with_capacity(self.reserve);
        envelope.push(tag(1, WIRE_LEN));
        put_varint(&mut envelope, resource_metrics as u64);
        envelope.extend_from_slice(self.resource_field);
        envelope.push(tag(2, WIRE_LEN));
        put_varint(&mut envelope, scope_metrics as u64);
        envelope.extend_from_slice(self.scope_field);
        // `reserve` is the largest the envelope can be (10-byte varints), so it fits.
        let metrics_start = self.request_start + self.reserve;
        let start = metrics_start.saturating_sub(envelope.len());
        if let Some(slot) = self.metrics.get_mut(start..metrics_start) {
            if slot.len() == envelope.len() {
                slot.copy_from_slice(&envelope);
            }
        }
        self.ranges.push(start..self.metrics.len());
        self.counts.push(self.request_points);
        self.request_points = 0;
        if more {
            self.new_request_buffer();
        }
    }

    fn finish(mut self) -> (Vec<Bytes>, Vec<usize>) {
        self.flush_request(false);
        let all = Bytes::from(std::mem::take(&mut self.metrics));
        let bodies = self.ranges.iter().map(|r| all.slice(r.clone())).collect();
        (bodies, self.counts)
    }
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
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, number_data_point, Metric, NumberDataPoint,
    };
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

    fn all_metrics(c: &Conversion) -> Vec<Metric> {
        c.requests()
            .expect("valid protobuf")
            .into_iter()
            .flat_map(|r| r.resource_metrics)
            .flat_map(|rm| rm.scope_metrics)
            .flat_map(|sm| sm.metrics)
            .collect()
    }

    fn number_points(c: &Conversion, name: &str) -> Vec<NumberDataPoint> {
        all_metrics(c)
            .into_iter()
            .filter(|m| m.name == name)
            .flat_map(|m| match m.data {
                Some(metric::Data::Gauge(g)) => g.data_points,
                Some(metric::Data::Sum(s)) => s.data_points,
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
        let reqs = conv.requests().unwrap();
        assert_eq!(
            reqs[0].resource_metrics[0].resource.as_ref().unwrap(),
            &resource()
        );
        let sm = &reqs[0].resource_metrics[0].scope_metrics[0];
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
            value: Value::Histogram(Box::new(HistogramValue {
                buckets: vec![(0.1, 2), (1.0, 5), (10.0, 5)],
                count: 9,
                sum: 42.5,
            })),
        });
        let g = gauge("g", &[("kitchen", f64::NAN)]);
        let mut c = Converter::new(resource(), at(100), 1 << 20);
        let conv = c.convert(&snapshot(vec![g, counter, info, hist], 200));
        assert_eq!(conv.bodies.len(), 1);
        assert_eq!(conv.total_points(), 4);
        let metrics = all_metrics(&conv);
        let by_name = |n: &str| metrics.iter().find(|m| m.name == n).unwrap().clone();

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
        // "b" began after the first snapshot was taken: that is its start, which makes its
        // first interval (200, 230] rather than an empty one
        let second = c.convert(&snapshot(vec![counter(&["a", "b"])], 230));
        assert_eq!(start_of(&second, "a"), 100_000_000_000);
        assert_eq!(start_of(&second, "b"), 200_000_000_000);
        let third = c.convert(&snapshot(vec![counter(&["a", "b"])], 260));
        assert_eq!(start_of(&third, "b"), 200_000_000_000);
    }

    #[test]
    fn series_identity_survives_reorder_reload_and_removal() {
        // The store reuses label-set Arcs across snapshots; a reload makes new Arcs with
        // the same content. Start times follow the content, whatever the sample order.
        let labels: Vec<Arc<LabelSet>> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| LabelSet::new([("s", *s)]))
            .collect();
        let counter = |sets: &[Arc<LabelSet>]| {
            let mut f = Family::new("c_total", "h", MetricKind::Counter);
            for l in sets {
                f.samples.push(Sample::number(l.clone(), 1.0));
            }
            f
        };
        let starts = |conv: &Conversion| {
            let mut v: Vec<(String, u64, u32)> = number_points(conv, "c_total")
                .into_iter()
                .map(|p| {
                    (
                        attr_map(&p.attributes)[0].1.clone(),
                        p.start_time_unix_nano,
                        p.flags,
                    )
                })
                .collect();
            v.sort();
            v
        };
        let mut c = Converter::new(resource(), at(100), 1 << 20);
        let conv = c.convert(&snapshot(vec![counter(&labels[..2])], 200));
        c.acknowledge(conv.generation);
        let s = |n: &str, t: u64, f: u32| (n.to_string(), t * 1_000_000_000, f);
        // "c" and "d" appear in front, in a different order
        let order = [
            labels[3].clone(),
            labels[1].clone(),
            labels[2].clone(),
            labels[0].clone(),
        ];
        let conv = c.convert(&snapshot(vec![counter(&order)], 230));
        c.acknowledge(conv.generation);
        assert_eq!(
            starts(&conv),
            vec![
                s("a", 100, 0),
                s("b", 100, 0),
                s("c", 200, 0),
                s("d", 200, 0)
            ]
        );
        // "b" vanishes and is forgotten after the acknowledgement; the others keep theirs
        let conv = c.convert(&snapshot(
            vec![counter(&[
                order[0].clone(),
                order[2].clone(),
                order[3].clone(),
            ])],
            260,
        ));
        assert_eq!(conv.stale_points, 1);
        c.acknowledge(conv.generation);
        assert_eq!(c.tracked_series(), 3);
        // a reload: new Arcs, same content; "b" comes back as a new series
        let reloaded: Vec<Arc<LabelSet>> = ["b", "a", "d", "c"]
            .iter()
            .map(|s| LabelSet::new([("s", *s)]))
            .collect();
        for t in [290, 320] {
            let conv = c.convert(&snapshot(vec![counter(&reloaded)], t));
            c.acknowledge(conv.generation);
            assert_eq!(
                starts(&conv),
                vec![
                    s("a", 100, 0),
                    s("b", 260, 0),
                    s("c", 200, 0),
                    s("d", 200, 0)
                ]
            );
        }
        assert_eq!(c.tracked_series(), 4);
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
            conv.bodies.len() > 5,
            "expected splitting, got {}",
            conv.bodies.len()
        );
        for b in &conv.bodies {
            assert!(b.len() <= limit, "{} > {limit}", b.len());
        }
        assert_eq!(conv.total_points(), 10_000);
        assert_eq!(conv.points_per_request.len(), conv.bodies.len());
        // every point arrives exactly once, in order within a family
        for f in 0..5 {
            let pts = number_points(&conv, &format!("fam_{f}"));
            assert_eq!(pts.len(), 2000);
            for (i, p) in pts.iter().enumerate() {
                assert_eq!(p.value, Some(number_data_point::Value::AsDouble(i as f64)));
            }
        }
        // counts per request match the requests' contents
        for (r, n) in conv
            .requests()
            .unwrap()
            .iter()
            .zip(&conv.points_per_request)
        {
            assert_eq!(r.encoded_len(), r.encode_to_vec().len());
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

    #[test]
    fn bytes_match_prost_encoding_of_the_decoded_request() {
        // Re-encoding what prost decoded must give the same length; decoding both must give
        // the same message: the hand-written encoder produces canonical protobuf.
        let mut families = vec![gauge("g", &[("a", 1.5), ("b", -2.0)])];
        let mut h = Family::new("h", "", MetricKind::Histogram);
        h.samples.push(Sample {
            labels: LabelSet::empty(),
            value: Value::Histogram(Box::new(HistogramValue {
                buckets: vec![(0.5, 1), (f64::INFINITY, 3)],
                count: 3,
                sum: 2.0,
            })),
        });
        families.push(h);
        let mut c = Converter::new(resource(), at(100), 1 << 20);
        let conv = c.convert(&snapshot(families, 200));
        let reqs = conv.requests().unwrap();
        assert_eq!(reqs[0].encoded_len(), conv.bodies[0].len());
        let again =
            ExportMetricsServiceRequest::decode(reqs[0].encode_to_vec().as_slice()).unwrap();
        assert_eq!(again, reqs[0]);
        let hist = all_metrics(&conv)
            .into_iter()
            .find(|m| m.name == "h")
            .unwrap();
        let Some(metric::Data::Histogram(hd)) = hist.data else {
            panic!("histogram")
        };
        // an explicit +Inf bucket is the overflow bucket
        assert_eq!(hd.data_points[0].explicit_bounds, vec![0.5]);
        assert_eq!(hd.data_points[0].bucket_counts, vec![1, 2]);
        assert!(hist.description.is_empty());
    }

    /// `families` gauge families of `per_family` series each, with about 100-byte points.
    fn big_families(families: usize, per_family: usize) -> Vec<Family> {
        (0..families)
            .map(|f| {
                let mut fam = Family::new(format!("fam_{f}"), "help text", MetricKind::Gauge);
                for i in 0..per_family {
                    fam.samples.push(Sample::number(
                        LabelSet::new([
                            ("control", format!("1a2b3c4d-0123-4567-89abcdef{i:08x}")),
                            ("name", format!("Light switch {i}")),
                        ]),
                        i as f64,
                    ));
                }
                fam
            })
            .collect()
    }

    #[test]
    fn split_into_parts_gives_similar_requests_with_every_point_once() {
        for (families, per_family, parts) in [(1, 10_000, 2), (3, 3_000, 2), (5, 2_000, 3)] {
            let mut c = Converter::new(resource(), at(100), 3 << 20).split_into(parts);
            let conv = c.convert(&snapshot(big_families(families, per_family), 200));
            let total: usize = conv.bodies.iter().map(Bytes::len).sum();
            assert!(
                total > MIN_PART_BYTES * parts,
                "test data too small: {total}"
            );
            assert_eq!(conv.bodies.len(), parts, "{families}x{per_family}");
            let largest = conv.bodies.iter().map(Bytes::len).max().unwrap_or(0);
            // an even share plus at most one point and one metric header
            assert!(largest <= total / parts + 1024, "{largest} of {total}");
            assert_eq!(conv.total_points(), families * per_family);
            for f in 0..families {
                let pts = number_points(&conv, &format!("fam_{f}"));
                assert_eq!(pts.len(), per_family);
                for (i, p) in pts.iter().enumerate() {
                    assert_eq!(p.value, Some(number_data_point::Value::AsDouble(i as f64)));
                }
            }
            // the steady state (series known) splits the same way
            c.acknowledge(conv.generation);
            let again = c.convert(&snapshot(big_families(families, per_family), 210));
            assert_eq!(again.bodies.len(), parts);
        }
    }

    #[test]
    fn split_into_parts_keeps_small_conversions_whole_and_the_limit() {
        // under MIN_PART_BYTES: one request
        let mut c = Converter::new(resource(), at(100), 3 << 20).split_into(4);
        let conv = c.convert(&snapshot(big_families(1, 500), 200));
        assert!(conv.bodies[0].len() < MIN_PART_BYTES);
        assert_eq!(conv.bodies.len(), 1);
        // the byte limit still wins over the share
        let limit = 300 * 1024;
        let mut c = Converter::new(resource(), at(100), limit).split_into(2);
        let conv = c.convert(&snapshot(big_families(2, 10_000), 200));
        assert!(conv.bodies.len() > 2);
        assert!(conv.bodies.iter().all(|b| b.len() <= limit));
        assert_eq!(conv.total_points(), 20_000);
        // parts below 1 mean no split
        let mut c = Converter::new(resource(), at(100), 3 << 20).split_into(0);
        assert_eq!(
            c.convert(&snapshot(big_families(1, 10_000), 200))
                .bodies
                .len(),
            1
        );
    }

    #[test]
    fn one_family_larger_than_the_limit_is_split_by_points() {
        let mut fam = Family::new("big", "h", MetricKind::Counter);
        for i in 0..5000 {
            fam.samples.push(Sample::number(
                LabelSet::new([("id", format!("series-{i:06}"))]),
                i as f64,
            ));
        }
        let limit = 16 * 1024;
        let mut c = Converter::new(resource(), at(100), limit);
        let conv = c.convert(&snapshot(vec![fam], 200));
        assert!(conv.bodies.len() > 5);
        assert!(conv.bodies.iter().all(|b| b.len() <= limit));
        let pts = number_points(&conv, "big");
        assert_eq!(pts.len(), 5000);
        let metrics = all_metrics(&conv);
        assert!(metrics
            .iter()
            .all(|m| matches!(&m.data, Some(metric::Data::Sum(s)) if s.is_monotonic)));
    }

    #[test]
    fn a_point_larger_than_the_limit_on_its_own_is_left_out_and_counted() {
        let limit = 16 * 1024;
        let mut fam = Family::new("g", "h", MetricKind::Gauge);
        for i in 0..300 {
            // one point whose label alone exceeds the limit, between ordinary ones
            let text = if i == 150 {
                "x".repeat(limit)
            } else {
                format!("v{i}")
            };
            fam.samples
                .push(Sample::number(LabelSet::new([("text", text)]), i as f64));
        }
        for parts in [1, 2] {
            let mut c = Converter::new(resource(), at(100), limit).split_into(parts);
            let conv = c.convert(&snapshot(vec![fam.clone()], 200));
            assert_eq!(conv.oversized_points, 1);
            assert!(conv.bodies.iter().all(|b| b.len() <= limit));
            assert_eq!(conv.total_points(), 299);
            let values: Vec<f64> = number_points(&conv, "g")
                .iter()
                .filter_map(|p| match p.value {
                    Some(number_data_point::Value::AsDouble(v)) => Some(v),
                    _ => None,
                })
                .collect();
            let expected: Vec<f64> = (0..300).filter(|&i| i != 150).map(f64::from).collect();
            assert_eq!(values, expected);
        }
    }
}
