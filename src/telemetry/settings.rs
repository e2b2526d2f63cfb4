//! Which self-telemetry the daemon produces, decided from the merged OTLP metrics
//! configuration and the standard OpenTelemetry variables (pure: the environment is passed
//! in as a lookup, nothing is read globally). The rules are listed in the module
//! documentation of [`crate::telemetry`].
//!
//! Does not: build exporters or touch the network (see `pipeline`).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{OtlpCompression, OtlpConfig, OtlpProtocol, OtlpTls};
use crate::secret::Secret;

/// Default OTLP/HTTP traces endpoint when nothing else names one.
pub const DEFAULT_HTTP_TRACES_ENDPOINT: &str = "http://localhost:4318/v1/traces";
/// Default OTLP/gRPC endpoint when nothing else names one.
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// Default export timeout for a separate traces endpoint (spec default 10 s).
pub const DEFAULT_TRACES_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go.
#[derive(Debug, Clone, PartialEq)]
pub enum SpanSink {
    /// OTLP to a collector.
    Otlp(TracesTarget),
    /// One JSON line per finished span on standard output.
    Console,
}

/// The OTLP traces target.
#[derive(Debug, Clone, PartialEq)]
pub struct TracesTarget {
    /// Final URL. HTTP: including the path (`/v1/traces`); gRPC: scheme, host, port.
    pub endpoint: String,
    /// Transport.
    pub protocol: OtlpProtocol,
    /// Headers (values are secrets: never logged, never span attributes).
    pub headers: Vec<(String, Secret)>,
    /// TLS options.
    pub tls: OtlpTls,
    /// Deadline for one export request.
    pub timeout: Duration,
    /// Body compression.
    pub compression: OtlpCompression,
    /// True when the target is the metrics collector (endpoint derived from it).
    pub same_collector: bool,
}

/// Head sampling (`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with the ratio.
    TraceIdRatio(f64),
    /// `parentbased_always_on`.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with the ratio (the default, ratio 1.0).
    ParentBasedTraceIdRatio(f64),
}

/// Everything `init` needs to know about self-telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// `OTEL_SDK_DISABLED=true`: no spans, no trace ids in logs, no traffic.
    pub sdk_disabled: bool,
    /// Span destinations; empty means traces are off.
    pub sinks: Vec<SpanSink>,
    /// Head sampler.
    pub sampler: SamplerSetting,
    /// Bounded queue of finished spans waiting for export (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue_size: usize,
    /// Spans per export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_export_batch_size: usize,
    /// Time between exports (`OTEL_BSP_SCHEDULE_DELAY`, milliseconds).
    pub schedule_delay: Duration,
    /// Problems found in the variables (bad values are ignored with a warning, as the
    /// OpenTelemetry specification asks); logged once the subscriber is up.
    pub warnings: Vec<String>,
}

impl TelemetrySettings {
    /// True when spans are produced at all.
    pub fn traces_enabled(&self) -> bool {
        !self.sdk_disabled && !self.sinks.is_empty()
    }

    /// Self-telemetry off (what `OTEL_SDK_DISABLED=true` gives).
    pub fn disabled() -> Self {
        TelemetrySettings {
            sdk_disabled: true,
            sinks: Vec::new(),
            sampler: SamplerSetting::ParentBasedTraceIdRatio(1.0),
            max_queue_size: 2048,
            max_export_batch_size: 512,
            schedule_delay: Duration::from_secs(5),
            warnings: Vec::new(),
        }
    }
}

fn var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn parse_protocol(value: &str) -> Option<OtlpProtocol> {
    match value.to_ascii_lowercase().as_str() {
        "grpc" => Some(OtlpProtocol::Grpc),
        "http" | "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
        _ => None,
    }
}

/// `k=v,k=v` with percent-decoded values (W3C baggage-like, `;` properties unsupported),
/// read from the variable `name`. An entry that cannot be a header is left out with a
/// warning that never shows its value, as the specification asks of bad variables.
fn parse_headers(name: &str, value: &str, warnings: &mut Vec<String>) -> Vec<(String, Secret)> {
    let mut headers = Vec::new();
    for (i, item) in value.split(',').enumerate() {
        if item.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            warnings.push(format!(
                "{name}: entry {} has no '=' (write name=value; the entry is not shown because it may be a secret); ignored",
                i + 1
            ));
            continue;
        };
        let k = percent_encoding::percent_decode_str(k.trim()).decode_utf8_lossy();
        let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
        match crate::config::header_problem(&k, &v) {
            Some(problem) => warnings.push(format!("{name}: entry {}: {problem}; ignored", i + 1)),
            None => headers.push((k.into_owned(), Secret::new(v.into_owned()))),
        }
    }
    headers
}

/// `scheme://authority` of a URL (no path), or `None` when it has no scheme.
fn origin(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&url[..scheme.len() + 3 + end])
}

/// A URL split before its query string (`?…`, kept with the `?`), so that path segments
/// are added to the path and an API key in the query stays intact.
fn split_query(url: &str) -> (&str, &str) {
    url.split_at(url.find('?').unwrap_or(url.len()))
}

/// The traces endpoint on the collector that receives the metrics: gRPC serves every
/// signal on one endpoint; OTLP/HTTP serves `/v1/traces` next to `/v1/metrics`. When the
/// traces protocol differs from the metrics one, the default ports 4317 and 4318 are
/// swapped.
pub fn derive_traces_endpoint(
    metrics_endpoint: &str,
    metrics_protocol: OtlpProtocol,
    traces_protocol: OtlpProtocol,
) -> String {
    let base = origin(metrics_endpoint).unwrap_or(metrics_endpoint);
    let base = if metrics_protocol != traces_protocol {
        match traces_protocol {
            OtlpProtocol::Grpc => swap_port(base, ":4318", ":4317"),
            OtlpProtocol::HttpProtobuf => swap_port(base, ":4317", ":4318"),
        }
    } else {
        base.to_string()
    };
    match traces_protocol {
        OtlpProtocol::Grpc => base,
        OtlpProtocol::HttpProtobuf => {
            let (path, query) = split_query(metrics_endpoint);
            if metrics_protocol == OtlpProtocol::HttpProtobuf {
                if let Some(prefix) = path.strip_suffix("/v1/metrics") {
                    return format!("{prefix}/v1/traces{query}");
                }
            }
            format!("{base}/v1/traces{query}")
        }
    }
}

fn swap_port(base: &str, from: &str, to: &str) -> String {
    match base.strip_suffix(from) {
        Some(host) => format!("{host}{to}"),
        None => base.to_string(),
    }
}

/// A per-signal endpoint is used as is, except that an empty path becomes `/` (spec §3.1).
fn per_signal_endpoint(value: &str) -> String {
    let (path_part, query) = split_query(value);
    match path_part.split_once("://") {
        Some((_, rest)) if !rest.contains('/') => format!("{path_part}/{query}"),
        _ => value.to_string(),
    }
}

/// A generic endpoint is a base URL: OTLP/HTTP appends `v1/traces` after a `/`.
fn generic_endpoint(value: &str, protocol: OtlpProtocol) -> String {
    match protocol {
        OtlpProtocol::Grpc => value.to_string(),
        OtlpProtocol::HttpProtobuf => {
            let (path, query) = split_query(value);
            let sep = if path.ends_with('/') { "" } else { "/" };
            format!("{path}{sep}v1/traces{query}")
        }
    }
}

fn parse_sampler(
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> SamplerSetting {
    let ratio = || -> f64 {
        match var(env, "OTEL_TRACES_SAMPLER_ARG") {
            None => 1.0,
            Some(arg) => match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => 1.0,
            },
        }
    };
    if let Some(arg) = var(env, "OTEL_TRACES_SAMPLER_ARG") {
        if !arg.parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r)) {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio between 0 and 1; using 1.0"
            ));
        }
    }
    match var(env, "OTEL_TRACES_SAMPLER")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("parentbased_traceidratio") => SamplerSetting::ParentBasedTraceIdRatio(ratio()),
        Some("always_on") => SamplerSetting::AlwaysOn,
        Some("always_off") => SamplerSetting::AlwaysOff,
        Some("traceidratio") => SamplerSetting::TraceIdRatio(ratio()),
        Some("parentbased_always_on") => SamplerSetting::ParentBasedAlwaysOn,
        Some("parentbased_always_off") => SamplerSetting::ParentBasedAlwaysOff,
        Some(other) => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER={other:?} is not supported (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio); using parentbased_traceidratio"
            ));
            SamplerSetting::ParentBasedTraceIdRatio(ratio())
        }
    }
}

/// Largest span queue: about 10 MB of finished spans at the most.
const MAX_QUEUE_SIZE: usize = 65_536;

fn parse_usize(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    default: usize,
    warnings: &mut Vec<String>,
) -> usize {
    match var(env, name) {
        None => default,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                warnings.push(format!(
                    "{name}={v:?} is not a positive integer; using {default}"
                ));
                default
            }
        },
    }
}

fn tls_from_env(env: &dyn Fn(&str) -> Option<String>, endpoint: &str) -> OtlpTls {
    let file = |suffix: &str| {
        var(env, &format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"))
            .or_else(|| var(env, &format!("OTEL_EXPORTER_OTLP_{suffix}")))
            .map(PathBuf::from)
    };
    OtlpTls {
        enabled: endpoint.starts_with("https://"),
        ca_file: file("CERTIFICATE"),
        client_cert_file: file("CLIENT_CERTIFICATE"),
        client_key_file: file("CLIENT_KEY"),
    }
}

fn timeout_from_env(env: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) -> Duration {
    let raw = var(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| var(env, "OTEL_EXPORTER_OTLP_TIMEOUT"));
    match raw {
        None => DEFAULT_TRACES_TIMEOUT,
        Some(v) => match v.parse::<u64>() {
            // 0 means "no limit"; self-telemetry keeps a bound anyway.
            Ok(0) => DEFAULT_TRACES_TIMEOUT,
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => {
                warnings.push(format!(
                    "OTLP traces timeout {v:?} is not a number of milliseconds; using 10000"
                ));
                DEFAULT_TRACES_TIMEOUT
            }
        },
    }
}

fn compression_from_env(env: &dyn Fn(&str) -> Option<String>) -> OtlpCompression {
    match var(env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
        .or_else(|| var(env, "OTEL_EXPORTER_OTLP_COMPRESSION"))
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        Some("gzip") => OtlpCompression::Gzip,
        _ => OtlpCompression::None,
    }
}

/// Decides the self-telemetry settings from the merged metrics configuration and the
/// environment (see the rules in [`crate::telemetry`]).
pub fn resolve(metrics: &OtlpConfig, env: &dyn Fn(&str) -> Option<String>) -> TelemetrySettings {
    if var(env, "OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return TelemetrySettings::disabled();
    }
    let mut warnings = Vec::new();
    let sampler = parse_sampler(env, &mut warnings);
    let mut max_queue_size = parse_usize(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, &mut warnings);
    if max_queue_size > MAX_QUEUE_SIZE {
        // the batch processor reserves every slot up front: 100 million would abort the
        // process at start
        warnings.push(format!(
            "OTEL_BSP_MAX_QUEUE_SIZE={max_queue_size} is more than {MAX_QUEUE_SIZE} spans; using {MAX_QUEUE_SIZE}"
        ));
        max_queue_size = MAX_QUEUE_SIZE;
    }
    let max_export_batch_size =
        parse_usize(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, &mut warnings).min(max_queue_size);
    let schedule_delay =
        Duration::from_millis(
            parse_usize(env, "OTEL_BSP_SCHEDULE_DELAY", 5000, &mut warnings) as u64,
        );

    let traces_endpoint = var(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let explicit_protocol = var(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var(env, "OTEL_EXPORTER_OTLP_PROTOCOL"))
        .and_then(|p| {
            let parsed = parse_protocol(&p);
            if parsed.is_none() {
                warnings.push(format!(
                    "OTLP traces protocol {p:?} is not supported (grpc, http/protobuf); ignored"
                ));
            }
            parsed
        });

    // Which exporters: OTEL_TRACES_EXPORTER, else OTLP when there is somewhere to send to.
    let mut want_otlp = false;
    let mut want_console = false;
    match var(env, "OTEL_TRACES_EXPORTER") {
        None => want_otlp = metrics.enabled || traces_endpoint.is_some(),
        Some(list) => {
            for item in list.split(',').map(|s| s.trim().to_ascii_lowercase()) {
                match item.as_str() {
                    "otlp" => want_otlp = true,
                    "console" | "logging" => want_console = true,
                    "none" | "" => {}
                    other => warnings.push(format!(
                        "OTEL_TRACES_EXPORTER value {other:?} is not supported (otlp, console, none); ignored"
                    )),
                }
            }
            if list
                .split(',')
                .any(|s| s.trim().eq_ignore_ascii_case("none"))
            {
                want_otlp = false;
                want_console = false;
            }
        }
    }

    let mut sinks = Vec::new();
    if want_otlp {
        // the variable an endpoint came from, for a warning about it
        let mut source = "the OTLP traces endpoint";
        let target = if let Some(ep) = traces_endpoint {
            source = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
            let protocol = explicit_protocol.unwrap_or(if metrics.enabled {
                metrics.protocol
            } else {
                OtlpProtocol::HttpProtobuf
            });
            let endpoint = per_signal_endpoint(&ep);
            let same = metrics.enabled && origin(&endpoint) == origin(&metrics.endpoint);
            target_for(metrics, env, endpoint, protocol, same, &mut warnings)
        } else if metrics.enabled {
            let protocol = explicit_protocol.unwrap_or(metrics.protocol);
            let endpoint = derive_traces_endpoint(&metrics.endpoint, metrics.protocol, protocol);
            target_for(metrics, env, endpoint, protocol, true, &mut warnings)
        } else {
            let protocol = explicit_protocol.unwrap_or(OtlpProtocol::HttpProtobuf);
            let endpoint = match var(env, "OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => {
                    source = "OTEL_EXPORTER_OTLP_ENDPOINT";
                    generic_endpoint(&base, protocol)
                }
                None => match protocol {
                    OtlpProtocol::Grpc => DEFAULT_GRPC_ENDPOINT.to_string(),
                    OtlpProtocol::HttpProtobuf => DEFAULT_HTTP_TRACES_ENDPOINT.to_string(),
                },
            };
            target_for(metrics, env, endpoint, protocol, false, &mut warnings)
        };
        // a bad URL here is a warning, not a failed start (bad variables are ignored, as
        // the specification asks), and the message never shows a password or query value
        match crate::config::parse_endpoint(&target.endpoint) {
            Ok(_) => sinks.push(SpanSink::Otlp(target)),
            Err(rule) => warnings.push(format!(
                "{source}: '{}' {rule}; spans are not exported",
                crate::secret::redact_url(&target.endpoint)
            )),
        }
    }
    if want_console {
        sinks.push(SpanSink::Console);
    }
    TelemetrySettings {
        sdk_disabled: false,
        sinks,
        sampler,
        max_queue_size,
        max_export_batch_size,
        schedule_delay,
        warnings,
    }
}

/// Headers, TLS, timeout and compression: the metrics export's when the traces go to the
/// same collector (same scheme, host and port); otherwise only the traces/generic
/// `OTEL_EXPORTER_OTLP_*` variables, so that the metrics collector's credentials are
/// never sent to another host.
fn target_for(
    metrics: &OtlpConfig,
    env: &dyn Fn(&str) -> Option<String>,
    endpoint: String,
    protocol: OtlpProtocol,
    same_collector: bool,
    warnings: &mut Vec<String>,
) -> TracesTarget {
    let traces_headers = var(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .map(|h| parse_headers("OTEL_EXPORTER_OTLP_TRACES_HEADERS", &h, warnings));
    if same_collector {
        let mut headers = metrics.headers.clone();
        if let Some(extra) = traces_headers {
            for (k, v) in extra {
                headers.retain(|(name, _)| !name.eq_ignore_ascii_case(&k));
                headers.push((k, v));
            }
        }
        let mut tls = metrics.tls.clone();
        tls.enabled = tls.enabled || endpoint.starts_with("https://");
        TracesTarget {
            endpoint,
            protocol,
            headers,
            tls,
            timeout: if metrics.timeout.is_zero() {
                DEFAULT_TRACES_TIMEOUT
            } else {
                metrics.timeout
            },
            compression: metrics.compression,
            same_collector: true,
        }
    } else {
        TracesTarget {
            tls: tls_from_env(env, &endpoint),
            endpoint,
            protocol,
            headers: traces_headers
                .or_else(|| {
                    var(env, "OTEL_EXPORTER_OTLP_HEADERS")
                        .map(|h| parse_headers("OTEL_EXPORTER_OTLP_HEADERS", &h, warnings))
                })
                .unwrap_or_default(),
            timeout: timeout_from_env(env, warnings),
            compression: compression_from_env(env),
            same_collector: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn metrics(endpoint: &str, protocol: OtlpProtocol) -> OtlpConfig {
        OtlpConfig {
            enabled: true,
            endpoint: endpoint.into(),
            protocol,
            headers: vec![("Authorization".into(), Secret::new("Bearer x"))],
            ..OtlpConfig::default()
        }
    }

    fn otlp(s: &TelemetrySettings) -> &TracesTarget {
        match s.sinks.first() {
            Some(SpanSink::Otlp(t)) => t,
            other => panic!("expected an OTLP sink, got {other:?}"),
        }
    }

    #[test]
    fn bad_traces_headers_and_endpoints_are_warnings_that_never_show_a_secret() {
        // a ':' typed for '=': the base64 padding '=' made the whole credential the name
        let s = resolve(
            &OtlpConfig::default(),
            &env(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces",
                ),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                    "Authorization:Basic dXNlcjpTRUNSRVQ=,x-ok=fine,OnlyAS3cretToken",
                ),
            ]),
        );
        let t = otlp(&s);
        assert_eq!(t.headers.len(), 1, "{:?}", t.headers);
        assert_eq!(t.headers[0].0, "x-ok");
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("'Authorization' is followed by ':'"));
        assert!(s.warnings[1].contains("entry 3 has no '='"));
        for w in &s.warnings {
            assert!(!w.contains("dXNl") && !w.contains("S3cret"), "{w}");
        }
        // the generic variable, when it is the one used
        let s = resolve(
            &OtlpConfig::default(),
            &env(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces",
                ),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api key=S3cret"),
            ]),
        );
        assert!(otlp(&s).headers.is_empty());
        assert!(s.warnings[0].starts_with("OTEL_EXPORTER_OTLP_HEADERS: entry 1"));
        // endpoints that are not URLs: no sink, a warning naming the variable
        for (var, value) in [
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "collector:4318/v1/traces?api-key=SECRETKEY",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:99999/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "user:SECRETPW@c:4318"),
        ] {
            let s = resolve(
                &OtlpConfig::default(),
                &env(&[(var, value), ("OTEL_TRACES_EXPORTER", "otlp")]),
            );
            assert!(s.sinks.is_empty(), "{value}");
            let all = s.warnings.join("\n");
            assert!(
                all.starts_with(var) && all.contains("spans are not exported"),
                "{all}"
            );
            assert!(!all.contains("SECRET"), "{all}");
        }
    }

    #[test]
    fn off_by_default_without_any_otlp_configuration() {
        let s = resolve(&OtlpConfig::default(), &env(&[]));
        assert!(!s.traces_enabled());
        assert!(s.sinks.is_empty());
    }

    #[test]
    fn sdk_disabled_wins_over_everything() {
        for v in ["true", "TRUE", " True "] {
            let s = resolve(
                &metrics("http://c:4317", OtlpProtocol::Grpc),
                &env(&[
                    ("OTEL_SDK_DISABLED", v),
                    ("OTEL_TRACES_EXPORTER", "otlp,console"),
                ]),
            );
            assert!(s.sdk_disabled, "{v}");
            assert!(!s.traces_enabled());
        }
        // only "true" disables
        let s = resolve(
            &metrics("http://c:4317", OtlpProtocol::Grpc),
            &env(&[("OTEL_SDK_DISABLED", "1")]),
        );
        assert!(s.traces_enabled());
    }

    #[test]
    fn grpc_metrics_collector_receives_traces_on_the_same_endpoint_with_its_headers() {
        let s = resolve(&metrics("http://c:4317", OtlpProtocol::Grpc), &env(&[]));
        let t = otlp(&s);
        assert_eq!(t.endpoint, "http://c:4317");
        assert_eq!(t.protocol, OtlpProtocol::Grpc);
        assert!(t.same_collector);
        assert_eq!(t.headers[0].1.expose(), "Bearer x");
        assert_eq!(s.sampler, SamplerSetting::ParentBasedTraceIdRatio(1.0));
    }

    #[test]
    fn http_metrics_endpoint_maps_to_v1_traces() {
        let s = resolve(
            &metrics(
                "https://c.example/otlp/v1/metrics",
                OtlpProtocol::HttpProtobuf,
            ),
            &env(&[]),
        );
        let t = otlp(&s);
        assert_eq!(t.endpoint, "https://c.example/otlp/v1/traces");
        assert!(t.tls.enabled);
        assert_eq!(
            derive_traces_endpoint(
                "http://c:4318/custom",
                OtlpProtocol::HttpProtobuf,
                OtlpProtocol::HttpProtobuf
            ),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            derive_traces_endpoint(
                "http://c:4317",
                OtlpProtocol::Grpc,
                OtlpProtocol::HttpProtobuf
            ),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            derive_traces_endpoint(
                "http://c:4318/v1/metrics",
                OtlpProtocol::HttpProtobuf,
                OtlpProtocol::Grpc
            ),
            "http://c:4317"
        );
        // a query (an API key) stays a query, the path gets the signal
        assert_eq!(
            derive_traces_endpoint(
                "http://c:4318/otlp/v1/metrics?key=k1",
                OtlpProtocol::HttpProtobuf,
                OtlpProtocol::HttpProtobuf
            ),
            "http://c:4318/otlp/v1/traces?key=k1"
        );
        assert_eq!(
            per_signal_endpoint("http://c:4318?key=k1"),
            "http://c:4318/?key=k1"
        );
        assert_eq!(per_signal_endpoint("http://c:4318"), "http://c:4318/");
        assert_eq!(
            per_signal_endpoint("http://c:4318/t?k=a/b"),
            "http://c:4318/t?k=a/b"
        );
        assert_eq!(
            generic_endpoint("http://c:4318/otlp?key=k1", OtlpProtocol::HttpProtobuf),
            "http://c:4318/otlp/v1/traces?key=k1"
        );
    }

    #[test]
    fn separate_traces_endpoint_does_not_get_the_metrics_credentials() {
        let s = resolve(
            &metrics("http://metrics:4317", OtlpProtocol::Grpc),
            &env(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://traces:4318/v1/traces",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-key=a%20b"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            ]),
        );
        let t = otlp(&s);
        assert_eq!(t.endpoint, "http://traces:4318/v1/traces");
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert!(!t.same_collector);
        assert_eq!(t.headers.len(), 1);
        assert_eq!(t.headers[0].0, "x-key");
        assert_eq!(t.headers[0].1.expose(), "a b");
        assert_eq!(t.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn traces_endpoint_alone_turns_traces_on() {
        let s = resolve(
            &OtlpConfig::default(),
            &env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318")]),
        );
        let t = otlp(&s);
        assert_eq!(t.endpoint, "http://t:4318/");
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
    }

    #[test]
    fn exporter_list_none_and_console() {
        let m = metrics("http://c:4317", OtlpProtocol::Grpc);
        let s = resolve(&m, &env(&[("OTEL_TRACES_EXPORTER", "none")]));
        assert!(!s.traces_enabled());
        let s = resolve(&m, &env(&[("OTEL_TRACES_EXPORTER", "console")]));
        assert_eq!(s.sinks, vec![SpanSink::Console]);
        let s = resolve(&m, &env(&[("OTEL_TRACES_EXPORTER", "otlp,console,zipkin")]));
        assert_eq!(s.sinks.len(), 2);
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        // explicit otlp without any endpoint: the spec default
        let s = resolve(
            &OtlpConfig::default(),
            &env(&[("OTEL_TRACES_EXPORTER", "otlp")]),
        );
        assert_eq!(otlp(&s).endpoint, DEFAULT_HTTP_TRACES_ENDPOINT);
        let s = resolve(
            &OtlpConfig::default(),
            &env(&[
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://g:4318/base/"),
            ]),
        );
        assert_eq!(otlp(&s).endpoint, "http://g:4318/base/v1/traces");
        assert!(otlp(&s).headers.is_empty());
    }

    #[test]
    fn samplers() {
        let m = metrics("http://c:4317", OtlpProtocol::Grpc);
        let sampler = |pairs: &[(&str, &str)]| resolve(&m, &env(pairs)).sampler;
        assert_eq!(
            sampler(&[("OTEL_TRACES_SAMPLER_ARG", "0.25")]),
            SamplerSetting::ParentBasedTraceIdRatio(0.25)
        );
        assert_eq!(
            sampler(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5")
            ]),
            SamplerSetting::TraceIdRatio(0.5)
        );
        assert_eq!(
            sampler(&[("OTEL_TRACES_SAMPLER", "always_off")]),
            SamplerSetting::AlwaysOff
        );
        assert_eq!(
            sampler(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]),
            SamplerSetting::ParentBasedAlwaysOff
        );
        let s = resolve(&m, &env(&[("OTEL_TRACES_SAMPLER_ARG", "2")]));
        assert_eq!(s.sampler, SamplerSetting::ParentBasedTraceIdRatio(1.0));
        assert_eq!(s.warnings.len(), 1);
        let s = resolve(&m, &env(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]));
        assert_eq!(s.sampler, SamplerSetting::ParentBasedTraceIdRatio(1.0));
        assert_eq!(s.warnings.len(), 1);
    }

    #[test]
    fn batch_queue_settings() {
        let m = metrics("http://c:4317", OtlpProtocol::Grpc);
        let s = resolve(
            &m,
            &env(&[
                ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "500"),
                ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ]),
        );
        assert_eq!(s.max_queue_size, 100);
        assert_eq!(s.max_export_batch_size, 100);
        assert_eq!(s.schedule_delay, Duration::from_millis(250));
        // reserved up front by the batch processor: a huge queue would abort the start
        let s = resolve(&m, &env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "100000000")]));
        assert_eq!(s.max_queue_size, MAX_QUEUE_SIZE);
        assert!(s.warnings[0].contains("OTEL_BSP_MAX_QUEUE_SIZE=100000000"));
    }
}
