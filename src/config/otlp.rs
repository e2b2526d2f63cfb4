//! The `opentelemetry:` section, the original's `LOXONE_OTLP_*` variables
//! (docs/original-exporter.md §1.2, §1.3, §1.5 VR-002…VR-010, §5.5) and the standard
//! `OTEL_*` variables (docs/otlp-and-prometheus.md §3.1), merged into one [`OtlpConfig`].
//!
//! Types and unknown keys in the file section are always checked. Everything else (ranges,
//! the endpoint, files, the `OTEL_*` values) is validated only when export ends up enabled,
//! like the original: a disabled section or an unrelated `OTEL_*` variable in the
//! environment never stops the exporter from starting.
//!
//! # Precedence
//!
//! Each OTLP setting is taken from the first of these that sets it:
//!
//! 1. the original's `LOXONE_OTLP_*` variables (`LOXONE_OTLP_ENABLED` and
//!    `LOXONE_OTLP_TLS_ENABLED` count whenever set, even empty = false; the others only
//!    when non-empty);
//! 2. the config file's `opentelemetry:` section;
//! 3. the standard `OTEL_*` variables, `OTEL_EXPORTER_OTLP_METRICS_*` before the generic
//!    `OTEL_EXPORTER_OTLP_*`;
//! 4. the defaults (disabled, protocol grpc, interval 30 s, timeout 15 s, no compression,
//!    3 MiB per request, `service.name` = `loxone-exporter`).
//!
//! With these rules and exceptions:
//!
//! - **Enabled**: `LOXONE_OTLP_ENABLED`, else `opentelemetry.enabled`; when neither is set,
//!   `OTEL_METRICS_EXPORTER` decides: on when its comma list names `otlp`, off when it
//!   names only `none`, `prometheus` (the scrape endpoint, always served) or `console`
//!   (not supported). Without it, export is on exactly when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is non-empty. `OTEL_SDK_DISABLED=true`
//!   (case-insensitive) turns export off whatever else is set.
//! - **Endpoint**: from the file or `LOXONE_OTLP_ENDPOINT` it behaves like the original: for
//!   HTTP, trailing `/` removed and `/v1/metrics` appended unless already there. From
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` it is a base URL (HTTP: `v1/metrics` appended after a
//!   `/`); `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is used as is (an empty path becomes `/`).
//!   For gRPC only scheme, host and port are kept. With none of these and
//!   `OTEL_METRICS_EXPORTER=otlp`: the OpenTelemetry default, `http://localhost:4318` (gRPC:
//!   `http://localhost:4317`). [`OtlpConfig::endpoint`] is the final URL.
//! - **Protocol**: `grpc`, `http` or `http/protobuf` (case-insensitive); `http/json` is an
//!   error (not supported). Default `grpc` (the original's), except when the endpoint came
//!   from an `OTEL_*` variable: then `http/protobuf` (the OpenTelemetry default).
//! - **Interval / timeout**: `LOXONE_OTLP_INTERVAL` / `_TIMEOUT` and the file are in
//!   seconds; `OTEL_METRIC_EXPORT_INTERVAL` and `OTEL_EXPORTER_OTLP[_METRICS]_TIMEOUT` in
//!   milliseconds. Whatever the source: interval 10–300 s, timeout 5–60 s and less than the
//!   interval.
//! - **Headers** are merged by name, case-insensitively, later layers replacing earlier
//!   ones: `OTEL_EXPORTER_OTLP_METRICS_HEADERS` (or, if unset, `OTEL_EXPORTER_OTLP_HEADERS`;
//!   `k=v,k=v`, percent-decoded) < `opentelemetry.auth.headers` <
//!   `LOXONE_OTLP_AUTH_HEADER_<NAME>` (name: `_` → `-`, Title-Cased per word like the
//!   original: `X_API_KEY` → `X-Api-Key`).
//! - **TLS**: on when `LOXONE_OTLP_TLS_ENABLED`/`tls.enabled` says so, or the endpoint is
//!   `https://`. CA file: `LOXONE_OTLP_TLS_CERT_PATH` > `tls.cert_path` >
//!   `OTEL_EXPORTER_OTLP[_METRICS]_CERTIFICATE`; client certificate and key:
//!   `tls.client_cert_path` / `tls.client_key_path` >
//!   `OTEL_EXPORTER_OTLP[_METRICS]_CLIENT_CERTIFICATE` / `_CLIENT_KEY`. `tls.enabled: true`
//!   needs a CA file (VR-009); every named file must exist and be a regular file.
//! - **Compression**: `opentelemetry.compression` > `OTEL_EXPORTER_OTLP[_METRICS]_COMPRESSION`;
//!   `none` or `gzip`.
//! - **service.name**: `opentelemetry.service_name` > `service.name` in
//!   `opentelemetry.resource_attributes` > `OTEL_SERVICE_NAME` > `service.name` in
//!   `OTEL_RESOURCE_ATTRIBUTES` > `loxone-exporter`.
//! - **Resource attributes**: the file's, then those of `OTEL_RESOURCE_ATTRIBUTES` whose key
//!   the file does not set (`service.name` is moved to `service_name`).

use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::Mapping;

use super::load::{regular_file, Env, OTLP_HEADER_ENV_PREFIX};
use super::walk::{self, quote, Errors};
use super::{
    OtlpCompression, OtlpConfig, OtlpProtocol, OtlpTls, DEFAULT_OTLP_INTERVAL,
    DEFAULT_OTLP_MAX_REQUEST_BYTES, DEFAULT_OTLP_TIMEOUT, DEFAULT_SERVICE_NAME,
};
use crate::secret::Secret;

const OTLP_KEYS: &[&str] = &[
    "enabled",
    "endpoint",
    "protocol",
    "interval_seconds",
    "timeout_seconds",
    "tls",
    "auth",
    "compression",
    "max_request_bytes",
    "service_name",
    "resource_attributes",
];
const TLS_KEYS: &[&str] = &[
    "enabled",
    "cert_path",
    "client_cert_path",
    "client_key_path",
];
const AUTH_KEYS: &[&str] = &["headers"];

/// A key of the `opentelemetry:` section or of one of its subsections.
pub(super) fn is_known_key(key: &str) -> bool {
    [OTLP_KEYS, TLS_KEYS, AUTH_KEYS]
        .iter()
        .any(|keys| keys.contains(&key))
}

/// Allowed export interval, seconds.
const INTERVAL_RANGE: (u64, u64) = (10, 300);
/// Allowed export timeout, seconds.
const TIMEOUT_RANGE: (u64, u64) = (5, 60);
/// Allowed `max_request_bytes`.
const MAX_REQUEST_RANGE: (u64, u64) = (16 * 1024, 64 * 1024 * 1024);

/// The file section as written: types checked, nothing else.
#[derive(Debug, Default)]
struct FileOtlp {
    enabled: Option<bool>,
    endpoint: Option<String>,
    protocol: Option<String>,
    interval: Option<i128>,
    timeout: Option<i128>,
    tls_enabled: Option<bool>,
    cert_path: Option<String>,
    client_cert_path: Option<String>,
    client_key_path: Option<String>,
    headers: Vec<(String, String)>,
    compression: Option<String>,
    max_request_bytes: Option<i128>,
    service_name: Option<String>,
    resource_attributes: Vec<(String, String)>,
}

fn read_file_section(errs: &mut Errors, m: &Mapping) -> FileOtlp {
    const P: &str = "opentelemetry";
    walk::check_keys(errs, P, m, OTLP_KEYS);
    let f = |k: &str| format!("{P}.{k}");
    let text = |errs: &mut Errors, map: &Mapping, path: &str, k: &str| {
        walk::get(map, k).and_then(|v| walk::text(errs, &walk::join(path, k), v))
    };
    let mut out = FileOtlp {
        enabled: walk::get(m, "enabled").and_then(|v| walk::boolean(errs, &f("enabled"), v)),
        endpoint: text(errs, m, P, "endpoint"),
        protocol: text(errs, m, P, "protocol"),
        interval: walk::get(m, "interval_seconds").and_then(|v| {
            walk::integer(
                errs,
                &f("interval_seconds"),
                v,
                "a number of seconds, 10-300",
            )
        }),
        timeout: walk::get(m, "timeout_seconds").and_then(|v| {
            walk::integer(errs, &f("timeout_seconds"), v, "a number of seconds, 5-60")
        }),
        compression: text(errs, m, P, "compression"),
        max_request_bytes: walk::get(m, "max_request_bytes")
            .and_then(|v| walk::integer(errs, &f("max_request_bytes"), v, "a number of bytes")),
        service_name: text(errs, m, P, "service_name"),
        resource_attributes: walk::get(m, "resource_attributes")
            .map(|v| walk::text_map(errs, &f("resource_attributes"), v, false))
            .unwrap_or_default(),
        ..FileOtlp::default()
    };
    let tls_path = f("tls");
    if let Some(tls) = walk::section(errs, &tls_path, walk::get(m, "tls")) {
        walk::check_keys(errs, &tls_path, tls, TLS_KEYS);
        out.tls_enabled = walk::get(tls, "enabled")
            .and_then(|v| walk::boolean(errs, &walk::join(&tls_path, "enabled"), v));
        out.cert_path = text(errs, tls, &tls_path, "cert_path");
        out.client_cert_path = text(errs, tls, &tls_path, "client_cert_path");
        out.client_key_path = text(errs, tls, &tls_path, "client_key_path");
    }
    let auth_path = f("auth");
    if let Some(auth) = walk::secret_section(errs, &auth_path, walk::get(m, "auth")) {
        walk::check_keys(errs, &auth_path, auth, AUTH_KEYS);
        if let Some(h) = walk::get(auth, "headers") {
            out.headers = walk::text_map(errs, &walk::join(&auth_path, "headers"), h, true);
        }
    }
    out
}

/// Where the endpoint came from; decides how `/v1/metrics` is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndpointKind {
    /// Config file or `LOXONE_OTLP_ENDPOINT`: the original's rule.
    Original,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: base URL.
    OtelGeneric,
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`: used as is.
    OtelMetrics,
}

/// Builds the OTLP settings from the file section and the environment (see the module docs
/// for the precedence). Records where non-file values came from in `origins`.
pub(crate) fn build(
    errs: &mut Errors,
    section: Option<&Mapping>,
    env: Env<'_>,
    env_names: &[String],
    origins: &mut Vec<(String, String)>,
    warnings: &mut Vec<String>,
) -> OtlpConfig {
    let file = section
        .map(|m| read_file_section(errs, m))
        .unwrap_or_default();
    let nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    warnings.extend(shadowed_otel_variables(&file, &nonempty));
    let mut notes: Vec<(String, String)> = Vec::new();

    // Enabled.
    let sdk_disabled =
        env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let explicit = match env("LOXONE_OTLP_ENABLED") {
        Some(v) => {
            notes.push(("opentelemetry.enabled".into(), "LOXONE_OTLP_ENABLED".into()));
            env_bool(errs, "LOXONE_OTLP_ENABLED", &v)
        }
        None => file.enabled,
    };
    let otel_endpoint_set = nonempty("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").is_some()
        || nonempty("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let otel_exporter = nonempty("OTEL_METRICS_EXPORTER")
        .and_then(|v| otel_metrics_exporter_wants_otlp(&v, warnings));
    let implied = otel_exporter.unwrap_or(otel_endpoint_set);
    if explicit.is_none() && (implied || otel_exporter.is_some()) {
        let why = match otel_exporter {
            Some(_) => "OTEL_METRICS_EXPORTER (no enabled setting)",
            None => "a set OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT (no enabled setting)",
        };
        notes.push(("opentelemetry.enabled".into(), why.into()));
    }
    let enabled = !sdk_disabled && explicit.unwrap_or(implied);
    if sdk_disabled {
        origins.push((
            "opentelemetry.enabled".into(),
            "OTEL_SDK_DISABLED=true".into(),
        ));
    }

    // Validation problems count only when export is on; otherwise they go to a scratch list.
    let mut scratch = Errors::default();
    let e: &mut Errors = if enabled { errs } else { &mut scratch };

    // Endpoint source (raw), then protocol (its default depends on the source), then URL.
    let endpoint_src: Option<(String, String, EndpointKind)> =
        if let Some(v) = nonempty("LOXONE_OTLP_ENDPOINT") {
            Some((v, "LOXONE_OTLP_ENDPOINT".into(), EndpointKind::Original))
        } else if let Some(v) = file.endpoint.clone() {
            Some((v, "opentelemetry.endpoint".into(), EndpointKind::Original))
        } else if let Some(v) = nonempty("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            Some((
                v,
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT".into(),
                EndpointKind::OtelMetrics,
            ))
        } else {
            nonempty("OTEL_EXPORTER_OTLP_ENDPOINT").map(|v| {
                (
                    v,
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    EndpointKind::OtelGeneric,
                )
            })
        };

    let protocol_src = first_of(
        &[("LOXONE_OTLP_PROTOCOL", nonempty("LOXONE_OTLP_PROTOCOL"))],
        file.protocol.clone().map(|v| ("opentelemetry.protocol", v)),
        &[
            (
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                nonempty("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
            ),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                nonempty("OTEL_EXPORTER_OTLP_PROTOCOL"),
            ),
        ],
    );
    let protocol = match &protocol_src {
        Some((at, v)) => {
            note(&mut notes, "opentelemetry.protocol", at);
            parse_protocol(e, at, v)
        }
        None => None,
    }
    .unwrap_or(match endpoint_src {
        Some((_, _, EndpointKind::OtelGeneric | EndpointKind::OtelMetrics)) => {
            OtlpProtocol::HttpProtobuf
        }
        // OTEL_METRICS_EXPORTER=otlp alone: the OpenTelemetry default endpoint below
        None if otel_exporter == Some(true) => OtlpProtocol::HttpProtobuf,
        _ => OtlpProtocol::Grpc,
    });

    // OTEL_METRICS_EXPORTER=otlp without any endpoint: the OpenTelemetry default
    let endpoint_src = endpoint_src.or_else(|| {
        (otel_exporter == Some(true)).then(|| {
            let url = match protocol {
                OtlpProtocol::Grpc => "http://localhost:4317",
                OtlpProtocol::HttpProtobuf => "http://localhost:4318",
            };
            (
                url.to_string(),
                "the OpenTelemetry default for OTEL_METRICS_EXPORTER=otlp".into(),
                EndpointKind::OtelGeneric,
            )
        })
    });
    let mut https = false;
    let endpoint = match &endpoint_src {
        None => {
            e.push(
                "opentelemetry.endpoint: missing; an endpoint is required when OTLP export is enabled (set opentelemetry.endpoint, LOXONE_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, e.g. http://collector:4317)",
            );
            String::new()
        }
        Some((raw, at, kind)) => {
            note(&mut notes, "opentelemetry.endpoint", at);
            match parse_endpoint(raw) {
                Ok(url) => {
                    https = url.scheme == "https";
                    final_endpoint(&url, *kind, protocol)
                }
                Err(rule) => {
                    e.push(format!(
                        "{at}: {} {rule}",
                        quote(&crate::secret::redact_url(raw))
                    ));
                    String::new()
                }
            }
        }
    };

    // Interval and timeout.
    let interval_src = seconds_or_ms(
        e,
        ("LOXONE_OTLP_INTERVAL", nonempty("LOXONE_OTLP_INTERVAL")),
        file.interval.map(|n| ("opentelemetry.interval_seconds", n)),
        &[(
            "OTEL_METRIC_EXPORT_INTERVAL",
            nonempty("OTEL_METRIC_EXPORT_INTERVAL"),
        )],
        INTERVAL_RANGE,
    );
    let interval_given = interval_src.is_some();
    let interval_checked = check_duration(
        e,
        &mut notes,
        "opentelemetry.interval_seconds",
        interval_src,
        INTERVAL_RANGE,
    );
    let interval = interval_checked.unwrap_or(DEFAULT_OTLP_INTERVAL);
    let timeout_src = seconds_or_ms(
        e,
        ("LOXONE_OTLP_TIMEOUT", nonempty("LOXONE_OTLP_TIMEOUT")),
        file.timeout.map(|n| ("opentelemetry.timeout_seconds", n)),
        &[
            (
                "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
                nonempty("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"),
            ),
            (
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                nonempty("OTEL_EXPORTER_OTLP_TIMEOUT"),
            ),
        ],
        TIMEOUT_RANGE,
    );
    let timeout_src = otel_timeout_meaning(timeout_src, interval, warnings);
    let timeout_at = timeout_src.as_ref().map(|t| t.at.clone());
    let timeout_checked = check_duration(
        e,
        &mut notes,
        "opentelemetry.timeout_seconds",
        timeout_src,
        TIMEOUT_RANGE,
    );
    let timeout = timeout_checked.unwrap_or(DEFAULT_OTLP_TIMEOUT);
    // VR-008, only between values that are themselves valid (or defaults), so one mistake
    // gives one message.
    let timeout_usable = timeout_checked.is_some() || timeout_at.is_none();
    let interval_usable = interval_checked.is_some() || !interval_given;
    if timeout_usable && interval_usable && timeout >= interval {
        let subject = match &timeout_at {
            Some(at) => format!("{at}: {}", fmt_duration(timeout)),
            None => format!(
                "opentelemetry.timeout_seconds: the default {}",
                fmt_duration(timeout)
            ),
        };
        e.push(format!(
            "{subject} must be less than the export interval ({}) so one export ends before the next starts",
            fmt_duration(interval)
        ));
    }

    // TLS.
    let tls_explicit = match env("LOXONE_OTLP_TLS_ENABLED") {
        Some(v) => {
            note(
                &mut notes,
                "opentelemetry.tls.enabled",
                "LOXONE_OTLP_TLS_ENABLED",
            );
            env_bool(e, "LOXONE_OTLP_TLS_ENABLED", &v)
        }
        None => file.tls_enabled,
    };
    let ca_src = first_of(
        &[(
            "LOXONE_OTLP_TLS_CERT_PATH",
            nonempty("LOXONE_OTLP_TLS_CERT_PATH"),
        )],
        file.cert_path
            .clone()
            .map(|v| ("opentelemetry.tls.cert_path", v)),
        &[
            (
                "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
                nonempty("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE"),
            ),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                nonempty("OTEL_EXPORTER_OTLP_CERTIFICATE"),
            ),
        ],
    );
    let cert_src = first_of(
        &[],
        file.client_cert_path
            .clone()
            .map(|v| ("opentelemetry.tls.client_cert_path", v)),
        &[
            (
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                nonempty("OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE"),
            ),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                nonempty("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
            ),
        ],
    );
    let key_src = first_of(
        &[],
        file.client_key_path
            .clone()
            .map(|v| ("opentelemetry.tls.client_key_path", v)),
        &[
            (
                "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
                nonempty("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY"),
            ),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                nonempty("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
            ),
        ],
    );
    if tls_explicit == Some(true) && ca_src.is_none() {
        e.push(
            "opentelemetry.tls.cert_path: missing; a CA certificate file is required when opentelemetry.tls.enabled is true (for a collector with a publicly trusted certificate use an https:// endpoint and leave tls.enabled false)",
        );
    }
    if cert_src.is_some() != key_src.is_some() {
        let (have, missing) = if cert_src.is_some() {
            ("client certificate", "opentelemetry.tls.client_key_path")
        } else {
            ("client key", "opentelemetry.tls.client_cert_path")
        };
        e.push(format!(
            "{missing}: missing; a {have} is configured, and mutual TLS needs both the client certificate and its key"
        ));
    }
    let mut file_of =
        |src: Option<(&'static str, String)>, setting: &str, what: &str| -> Option<PathBuf> {
            let (at, path) = src?;
            note(&mut notes, setting, at);
            regular_file(e, at, &path, what)
        };
    let ca_file = file_of(
        ca_src,
        "opentelemetry.tls.cert_path",
        "a PEM CA certificate file",
    );
    let client_cert_file = file_of(
        cert_src,
        "opentelemetry.tls.client_cert_path",
        "a PEM client certificate file",
    );
    let client_key_file = file_of(
        key_src,
        "opentelemetry.tls.client_key_path",
        "a PEM private key file",
    );
    let tls = OtlpTls {
        enabled: tls_explicit.unwrap_or(false) || https,
        ca_file,
        client_cert_file,
        client_key_file,
    };

    // Headers.
    let mut headers: Vec<(String, Secret)> = Vec::new();
    let otel_headers_var = if nonempty("OTEL_EXPORTER_OTLP_METRICS_HEADERS").is_some() {
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS"
    } else {
        "OTEL_EXPORTER_OTLP_HEADERS"
    };
    if let Some(v) = nonempty(otel_headers_var) {
        for (name, value) in parse_kv_list(e, otel_headers_var, &v, true) {
            set_header(e, &mut headers, otel_headers_var, name, value);
            note(&mut notes, "opentelemetry.auth.headers", otel_headers_var);
        }
    }
    for (name, value) in &file.headers {
        set_header(
            e,
            &mut headers,
            "opentelemetry.auth.headers",
            name.clone(),
            value.clone(),
        );
    }
    let mut header_vars: Vec<&String> = env_names
        .iter()
        .filter(|n| n.starts_with(OTLP_HEADER_ENV_PREFIX))
        .collect();
    header_vars.sort();
    header_vars.dedup();
    for var in header_vars {
        let suffix = &var[OTLP_HEADER_ENV_PREFIX.len()..];
        let Some(value) = nonempty(var) else { continue };
        if suffix.is_empty() {
            e.push(format!(
                "{var}: the variable names no header (expected {OTLP_HEADER_ENV_PREFIX}<NAME>, e.g. {OTLP_HEADER_ENV_PREFIX}AUTHORIZATION)"
            ));
            continue;
        }
        set_header(e, &mut headers, var, title_case_header(suffix), value);
        note(&mut notes, "opentelemetry.auth.headers", var);
    }

    // Compression.
    let compression_src = first_of(
        &[],
        file.compression
            .clone()
            .map(|v| ("opentelemetry.compression", v)),
        &[
            (
                "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
                nonempty("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION"),
            ),
            (
                "OTEL_EXPORTER_OTLP_COMPRESSION",
                nonempty("OTEL_EXPORTER_OTLP_COMPRESSION"),
            ),
        ],
    );
    let compression = match compression_src {
        Some((at, v)) => {
            note(&mut notes, "opentelemetry.compression", at);
            match v.trim().to_ascii_lowercase().as_str() {
                "none" => Some(OtlpCompression::None),
                "gzip" => Some(OtlpCompression::Gzip),
                _ => {
                    e.push(format!(
                        "{at}: {} is not a supported compression (none or gzip)",
                        quote(&v)
                    ));
                    None
                }
            }
        }
        None => None,
    }
    .unwrap_or(OtlpCompression::None);

    // Request size cap.
    let max_request_bytes = match file.max_request_bytes {
        Some(n) if n >= i128::from(MAX_REQUEST_RANGE.0) && n <= i128::from(MAX_REQUEST_RANGE.1) => {
            usize::try_from(n).unwrap_or(DEFAULT_OTLP_MAX_REQUEST_BYTES)
        }
        Some(n) => {
            e.push(format!(
                "opentelemetry.max_request_bytes: {n} is out of range (allowed {}-{} bytes, i.e. 16 KiB to 64 MiB)",
                MAX_REQUEST_RANGE.0, MAX_REQUEST_RANGE.1
            ));
            DEFAULT_OTLP_MAX_REQUEST_BYTES
        }
        None => DEFAULT_OTLP_MAX_REQUEST_BYTES,
    };

    // Resource: service.name and attributes.
    let mut file_attrs = Vec::new();
    let mut file_attr_service = None;
    for (k, v) in file.resource_attributes {
        if k.trim().is_empty() {
            e.push("opentelemetry.resource_attributes: an attribute name is empty (names such as deployment.environment are expected)");
        } else if k == "service.name" {
            file_attr_service = Some(v);
        } else {
            file_attrs.push((k, v));
        }
    }
    let mut env_attrs = Vec::new();
    let mut env_attr_service = None;
    if let Some(v) = nonempty("OTEL_RESOURCE_ATTRIBUTES") {
        for (k, val) in parse_kv_list(e, "OTEL_RESOURCE_ATTRIBUTES", &v, false) {
            if k == "service.name" {
                env_attr_service = Some(val);
            } else if !file_attrs.iter().any(|(fk, _)| *fk == k) {
                env_attrs.push((k, val));
            }
        }
        if !env_attrs.is_empty() {
            note(
                &mut notes,
                "opentelemetry.resource_attributes",
                "OTEL_RESOURCE_ATTRIBUTES",
            );
        }
    }
    let service_src: Option<(&str, String)> = file
        .service_name
        .map(|s| ("opentelemetry.service_name", s))
        .or(file_attr_service.map(|s| ("opentelemetry.resource_attributes.\"service.name\"", s)))
        .or(nonempty("OTEL_SERVICE_NAME").map(|s| ("OTEL_SERVICE_NAME", s)))
        .or(env_attr_service.map(|s| ("OTEL_RESOURCE_ATTRIBUTES", s)));
    let service_name = match service_src {
        Some((at, s)) if s.trim().is_empty() => {
            e.push(format!(
                "{at}: {} is empty (service.name must be a non-empty name)",
                quote(&s)
            ));
            DEFAULT_SERVICE_NAME.to_string()
        }
        Some((at, s)) => {
            note(&mut notes, "opentelemetry.service_name", at);
            s
        }
        None => DEFAULT_SERVICE_NAME.to_string(),
    };
    let mut resource_attributes = file_attrs;
    resource_attributes.extend(env_attrs);

    if enabled {
        origins.extend(notes);
    }
    OtlpConfig {
        enabled,
        endpoint,
        protocol,
        interval,
        timeout,
        tls,
        headers,
        compression,
        max_request_bytes,
        service_name,
        resource_attributes,
    }
}

/// The `OTEL_*` variables that are set but unused because the file sets the same setting:
/// the file ranks above them, so a copied example that spells out every default silently
/// shut them out. `LOXONE_OTLP_ENABLED` is not needed for this: an `enabled` in the file
/// alone stops a set endpoint variable from turning export on.
fn shadowed_otel_variables(file: &FileOtlp, set: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    const ENDPOINT: &[&str] = &[
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ];
    // (file key, set in the file, the variables it outranks: a suffix of
    // OTEL_EXPORTER_OTLP_METRICS_* and OTEL_EXPORTER_OTLP_*, or one whole name)
    let settings = [
        ("endpoint", file.endpoint.is_some(), "ENDPOINT"),
        ("protocol", file.protocol.is_some(), "PROTOCOL"),
        ("timeout_seconds", file.timeout.is_some(), "TIMEOUT"),
        ("tls.cert_path", file.cert_path.is_some(), "CERTIFICATE"),
        (
            "tls.client_cert_path",
            file.client_cert_path.is_some(),
            "CLIENT_CERTIFICATE",
        ),
        (
            "tls.client_key_path",
            file.client_key_path.is_some(),
            "CLIENT_KEY",
        ),
        ("compression", file.compression.is_some(), "COMPRESSION"),
        (
            "interval_seconds",
            file.interval.is_some(),
            "=OTEL_METRIC_EXPORT_INTERVAL",
        ),
        (
            "service_name",
            file.service_name.is_some(),
            "=OTEL_SERVICE_NAME",
        ),
        ("enabled", file.enabled.is_some(), "=OTEL_METRICS_EXPORTER"),
    ];
    let mut out = Vec::new();
    for (key, in_file, vars) in settings {
        let names = match vars.strip_prefix('=') {
            Some(whole) => vec![whole.to_string()],
            None => vec![
                format!("OTEL_EXPORTER_OTLP_METRICS_{vars}"),
                format!("OTEL_EXPORTER_OTLP_{vars}"),
            ],
        };
        for var in names.iter().filter(|v| in_file && set(v).is_some()) {
            out.push(format!(
                "{var} is set but not used for the metrics export: opentelemetry.{key} in the config file ranks above the OTEL_* variables (remove it from the file to use the variable; the exporter's own traces read the variable as it is)"
            ));
        }
    }
    if file.enabled == Some(false) && set("LOXONE_OTLP_ENABLED").is_none() {
        for var in ENDPOINT.iter().filter(|v| set(v).is_some()) {
            out.push(format!(
                "{var} is set but does not turn the OTLP metrics export on: the config file says opentelemetry.enabled: false (remove that line, or set LOXONE_OTLP_ENABLED=true)"
            ));
        }
    }
    out
}

/// What `OTEL_METRICS_EXPORTER` (a comma list) says about the OTLP push: `Some(true)` when
/// it names `otlp`, `Some(false)` when it names only others (`none`, `prometheus`: the
/// scrape endpoint, always served; `console`: not supported), `None` when it names nothing
/// known. Unknown and unsupported names are warned about and ignored.
fn otel_metrics_exporter_wants_otlp(value: &str, warnings: &mut Vec<String>) -> Option<bool> {
    let mut known = false;
    let mut otlp = false;
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.to_ascii_lowercase().as_str() {
            "otlp" => (known, otlp) = (true, true),
            "none" | "prometheus" => known = true,
            "console" => {
                known = true;
                warnings.push(
                    "OTEL_METRICS_EXPORTER: 'console' is not supported by this exporter (ignored; /metrics serves the values)".into(),
                );
            }
            _ => warnings.push(format!(
                "OTEL_METRICS_EXPORTER: {} is not a metrics exporter (known: otlp, prometheus, none; ignored)",
                quote(name)
            )),
        }
    }
    known.then_some(otlp)
}

/// Records a non-file origin (file paths need no note: the file is the expected source).
fn note(notes: &mut Vec<(String, String)>, setting: &str, at: &str) {
    if !at.starts_with("opentelemetry.") && !notes.iter().any(|(s, a)| s == setting && a == at) {
        notes.push((setting.to_string(), at.to_string()));
    }
}

/// The first set value: `env_first` (LOXONE_*), then the file, then `env_after` (OTEL_*).
fn first_of(
    env_first: &[(&'static str, Option<String>)],
    file: Option<(&'static str, String)>,
    env_after: &[(&'static str, Option<String>)],
) -> Option<(&'static str, String)> {
    let pick = |list: &[(&'static str, Option<String>)]| {
        list.iter()
            .find_map(|(name, v)| v.clone().map(|v| (*name, v)))
    };
    pick(env_first).or(file).or_else(|| pick(env_after))
}

/// The original's truthy set for `LOXONE_OTLP_*_ENABLED`, plus `on`; anything
/// unrecognisable is an error instead of silently false.
fn env_bool(errs: &mut Errors, var: &str, v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => {
            errs.push(format!(
                "{var}: {} is not a boolean (true/false, 1/0, yes/no or on/off)",
                quote(v)
            ));
            None
        }
    }
}

fn parse_protocol(errs: &mut Errors, at: &str, v: &str) -> Option<OtlpProtocol> {
    match v.trim().to_ascii_lowercase().as_str() {
        "grpc" => Some(OtlpProtocol::Grpc),
        "http" | "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
        "http/json" => {
            errs.push(format!(
                "{at}: {} is not supported (this exporter sends protobuf: use grpc or http/protobuf)",
                quote(v)
            ));
            None
        }
        _ => {
            errs.push(format!(
                "{at}: {} is not an OTLP protocol (grpc, http or http/protobuf; case-insensitive)",
                quote(v)
            ));
            None
        }
    }
}

/// A duration candidate with the name it came from.
struct DurationSrc {
    at: String,
    /// Raw number as written.
    value: i128,
    /// True when `value` is milliseconds (OTEL_* variables), false for seconds.
    millis: bool,
}

/// Picks the first set source: a LOXONE_* variable (seconds), the file (seconds), then
/// OTEL_* variables (milliseconds). Unparsable variables are reported and skipped.
fn seconds_or_ms(
    errs: &mut Errors,
    loxone: (&'static str, Option<String>),
    file: Option<(&'static str, i128)>,
    otel: &[(&'static str, Option<String>)],
    (lo, hi): (u64, u64),
) -> Option<DurationSrc> {
    let expected = format!("seconds, {lo}-{hi}");
    let expected_ms = format!("milliseconds, {}-{}", lo * 1000, hi * 1000);
    if let (var, Some(v)) = &loxone {
        return match v.trim().parse::<i128>() {
            Ok(n) => Some(DurationSrc {
                at: (*var).into(),
                value: n,
                millis: false,
            }),
            Err(_) => {
                errs.push(format!(
                    "{var}: {} is not a whole number (expected {expected})",
                    quote(v)
                ));
                None
            }
        };
    }
    if let Some((at, n)) = file {
        return Some(DurationSrc {
            at: at.into(),
            value: n,
            millis: false,
        });
    }
    for (var, v) in otel {
        if let Some(v) = v {
            return match v.trim().parse::<i128>() {
                Ok(n) => Some(DurationSrc {
                    at: (*var).into(),
                    value: n,
                    millis: true,
                }),
                Err(_) => {
                    errs.push(format!(
                        "{var}: {} is not a whole number of milliseconds (expected {expected_ms})",
                        quote(v)
                    ));
                    None
                }
            };
        }
    }
    None
}

fn check_duration(
    errs: &mut Errors,
    notes: &mut Vec<(String, String)>,
    setting: &str,
    src: Option<DurationSrc>,
    (lo, hi): (u64, u64),
) -> Option<Duration> {
    let src = src?;
    note(notes, setting, &src.at);
    let (lo_u, hi_u) = if src.millis {
        (i128::from(lo) * 1000, i128::from(hi) * 1000)
    } else {
        (i128::from(lo), i128::from(hi))
    };
    if src.value < lo_u || src.value > hi_u {
        if src.millis {
            errs.push(format!(
                "{}: {} ms is out of range (allowed {lo_u}-{hi_u} ms, i.e. {lo}-{hi} seconds)",
                src.at, src.value
            ));
        } else {
            errs.push(format!(
                "{}: {} is out of range (allowed {lo}-{hi} seconds)",
                src.at, src.value
            ));
        }
        return None;
    }
    // In range, so it fits u64.
    let v = u64::try_from(src.value).ok()?;
    Some(if src.millis {
        Duration::from_millis(v)
    } else {
        Duration::from_secs(v)
    })
}

/// What the OpenTelemetry specification makes of an `OTEL_EXPORTER_OTLP[_METRICS]_TIMEOUT`
/// of 0 (no limit) or below (warn, use the default), instead of a range error: those
/// variables are shared with other programs. "No limit" becomes the longest timeout this
/// exporter allows that still ends before the next export (exports never overlap).
fn otel_timeout_meaning(
    src: Option<DurationSrc>,
    interval: Duration,
    warnings: &mut Vec<String>,
) -> Option<DurationSrc> {
    match src {
        Some(src) if src.millis && src.value < 0 => {
            warnings.push(format!(
                "{}: {} ms is negative; ignored, the default timeout of {} applies",
                src.at,
                src.value,
                fmt_duration(DEFAULT_OTLP_TIMEOUT)
            ));
            None
        }
        Some(src) if src.millis && src.value == 0 => {
            let (lo, hi) = TIMEOUT_RANGE;
            let longest = hi.min(interval.as_secs().saturating_sub(1)).max(lo);
            warnings.push(format!(
                "{}: 0 means no limit; this exporter waits at most {longest} s (the longest it allows below the export interval of {})",
                src.at,
                fmt_duration(interval)
            ));
            Some(DurationSrc {
                value: i128::from(longest) * 1000,
                ..src
            })
        }
        other => other,
    }
}

/// `15 s`, `15.5 s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}

/// A split endpoint URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EndpointUrl {
    /// `http` or `https`, lower case.
    pub(crate) scheme: String,
    /// Host (IPv6 in brackets) and optional `:port`, as written.
    pub(crate) authority: String,
    /// Path, as written (may be empty).
    pub(crate) rest: String,
    /// Query string with its `?`, as written (empty when there is none): kept apart so
    /// that `/v1/metrics` goes onto the path, not into the last query value.
    pub(crate) query: String,
}

/// Splits and checks an endpoint URL: http/https scheme, a host, a port 1-65535 if given,
/// no credentials. The error completes "'<url>' …".
pub(crate) fn parse_endpoint(raw: &str) -> Result<EndpointUrl, String> {
    let s = raw.trim();
    let Some((scheme, after)) = s.split_once("://") else {
        return Err(
            "is not a URL with an http:// or https:// scheme (e.g. http://collector:4317)".into(),
        );
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "has scheme '{scheme}', which is not supported (http:// or https:// only)"
        ));
    }
    // before any other check, so that no message quotes a piece of a password: one may
    // hold '/', '?' or '#', which would otherwise end the authority early
    if after.contains('@') {
        return Err("contains '@': credentials are not supported in the URL (use opentelemetry.auth.headers; write any other '@' as %40)".into());
    }
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if rest.contains('#') {
        return Err("has a '#' fragment, which is never sent to a collector (remove it)".into());
    }
    let (rest, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, tail)) = v6.split_once(']') else {
            return Err("has an IPv6 address without its closing ']'".into());
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("has '[{addr}]', which is not an IPv6 address"));
        }
        match tail.strip_prefix(':') {
            Some(p) => (addr, Some(p)),
            None if tail.is_empty() => (addr, None),
            None => {
                return Err("has unexpected text after the IPv6 address (expected ':port')".into())
            }
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => {
                return Err("has an IPv6 address without brackets (write http://[::1]:4317)".into())
            }
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host (expected e.g. http://collector:4317)".into());
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(format!("has host '{host}', which is not a valid host name"));
    }
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "has port '{p}', which is not a number (allowed 1-65535)"
            ));
        }
        let n: u128 = p.parse().unwrap_or(u128::MAX);
        if n == 0 || n > 65535 {
            let shown = if p.len() > 12 {
                format!("{}…", &p[..12])
            } else {
                p.to_string()
            };
            return Err(format!(
                "has port {shown}, which is out of range (allowed 1-65535)"
            ));
        }
    }
    Ok(EndpointUrl {
        scheme,
        authority: authority.to_string(),
        rest: rest.to_string(),
        query: query.to_string(),
    })
}

fn final_endpoint(url: &EndpointUrl, kind: EndpointKind, protocol: OtlpProtocol) -> String {
    let base = format!("{}://{}", url.scheme, url.authority);
    let path = match (protocol, kind) {
        // gRPC names its method by path: a configured path or query is not used
        (OtlpProtocol::Grpc, _) => return base,
        (OtlpProtocol::HttpProtobuf, EndpointKind::Original) => {
            let trimmed = url.rest.trim_end_matches('/');
            if trimmed.ends_with("/v1/metrics") {
                trimmed.to_string()
            } else {
                format!("{trimmed}/v1/metrics")
            }
        }
        (OtlpProtocol::HttpProtobuf, EndpointKind::OtelGeneric) => {
            let mut path = url.rest.clone();
            if !path.ends_with('/') {
                path.push('/');
            }
            path.push_str("v1/metrics");
            path
        }
        (OtlpProtocol::HttpProtobuf, EndpointKind::OtelMetrics) => {
            if url.rest.is_empty() {
                "/".to_string()
            } else {
                url.rest.clone()
            }
        }
    };
    format!("{base}{path}{}", url.query)
}

/// Parses `k=v,k=v` (W3C baggage style, percent-decoded, `;` properties not supported).
/// With `secret`, messages never show entries.
fn parse_kv_list(errs: &mut Errors, var: &str, v: &str, secret: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, entry) in v.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let shown = if secret {
            format!("entry {}", i + 1)
        } else {
            format!("entry {}", quote(entry.trim()))
        };
        let Some((k, val)) = entry.split_once('=') else {
            errs.push(format!(
                "{var}: {shown} has no '=' (expected name=value pairs separated by commas{})",
                if secret {
                    "; entries are not shown because header values may be secret"
                } else {
                    ""
                }
            ));
            continue;
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s.trim())
                .decode_utf8()
                .map(|c| c.into_owned())
        };
        match (decode(k), decode(val)) {
            (Ok(k), Ok(val)) if !k.is_empty() => out.push((k, val)),
            (Ok(_), Ok(_)) => errs.push(format!(
                "{var}: {shown} has an empty name (expected name=value pairs separated by commas)"
            )),
            _ => errs.push(format!(
                "{var}: {shown} is not valid UTF-8 after percent-decoding (expected %XX escapes of UTF-8 text)"
            )),
        }
    }
    out
}

/// Adds or replaces (same name, ignoring case) a header after checking it.
/// Why `name` and `value` cannot make an HTTP header, in words that never show the value
/// (nor a name that may hold one); `None` when they can. Shared by the metrics headers and
/// the self-telemetry traces headers.
pub(crate) fn header_problem(name: &str, value: &str) -> Option<String> {
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() {
        return Some("a header name is empty".into());
    }
    if let Some(bad) = name.bytes().position(|b| !is_token(b)) {
        // Only the part before the bad character is shown: a ':' typed for '=' puts the
        // value into the name ("Authorization:Basic dXNl..."), and values are secret.
        let shown: String = name[..bad].chars().take(40).collect();
        let what = match name.as_bytes()[bad] {
            b' ' => "a space".to_string(),
            b if b.is_ascii_graphic() => format!("'{}'", b as char),
            _ => "a character".to_string(),
        };
        return Some(format!(
            "header name {} is followed by {what}, which is not allowed in an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only; the rest is not shown because it may be a secret value; write name=value)",
            quote(&shown)
        ));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Some(format!(
            "the value of header '{name}' contains a control character such as a line break (not allowed in headers; the value is not shown because it is secret)"
        ));
    }
    None
}

fn set_header(
    errs: &mut Errors,
    headers: &mut Vec<(String, Secret)>,
    at: &str,
    name: String,
    value: String,
) {
    if let Some(problem) = header_problem(&name, &value) {
        errs.push(format!("{at}: {problem}"));
        return;
    }
    let value = Secret::new(value);
    match headers
        .iter_mut()
        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
    {
        Some(slot) => *slot = (name, value),
        None => headers.push((name, value)),
    }
}

/// `X_API_KEY` → `X-Api-Key`: `_` to `-`, then Python's `str.title()` (a letter is upper
/// case after a non-letter, lower case otherwise), as the original did.
pub(crate) fn title_case_header(suffix: &str) -> String {
    let mut out = String::with_capacity(suffix.len());
    let mut prev_letter = false;
    for c in suffix.chars() {
        let c = if c == '_' { '-' } else { c };
        if c.is_alphabetic() {
            if prev_letter {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_letter = true;
        } else {
            out.push(c);
            prev_letter = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_case_matches_python() {
        assert_eq!(title_case_header("AUTHORIZATION"), "Authorization");
        assert_eq!(title_case_header("X_API_KEY"), "X-Api-Key");
        assert_eq!(title_case_header("X_2FA"), "X-2Fa");
    }

    #[test]
    fn endpoints_are_split_and_checked() {
        let u = parse_endpoint("HTTP://[::1]:4318/otlp/").unwrap();
        assert_eq!(u.scheme, "http");
        assert_eq!(u.authority, "[::1]:4318");
        assert_eq!(u.rest, "/otlp/");
        assert!(parse_endpoint("http://").unwrap_err().contains("no host"));
        assert!(parse_endpoint("http://:4317")
            .unwrap_err()
            .contains("no host"));
        assert!(parse_endpoint("http://c:70000")
            .unwrap_err()
            .contains("port 70000"));
        assert!(parse_endpoint("http://c:0")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_endpoint("http://c:99999999999999999999999999999").is_err());
        assert!(parse_endpoint("ftp://c:1").unwrap_err().contains("'ftp'"));
        assert!(parse_endpoint("collector:4317")
            .unwrap_err()
            .contains("scheme"));
        assert!(parse_endpoint("http://u:pw@c:1")
            .unwrap_err()
            .contains("credentials"));
        assert!(parse_endpoint("http://c:1/v1/metrics#frag")
            .unwrap_err()
            .contains("fragment"));
        // a password holding '/', '?' or '#' ended the authority early: "has port 'pa'"
        for url in [
            "https://user:pa/ss@c:4318",
            "https://user:pa?ss@c:4318",
            "https://user:pa#ss@c:4318",
        ] {
            let rule = parse_endpoint(url).unwrap_err();
            assert!(
                rule.contains("credentials") && !rule.contains("pa"),
                "{url}: {rule}"
            );
        }
        let q = parse_endpoint("http://c:1/otlp?key=v").unwrap();
        assert_eq!((q.rest.as_str(), q.query.as_str()), ("/otlp", "?key=v"));
    }

    #[test]
    fn http_endpoint_paths_follow_their_source() {
        let u = |s: &str| parse_endpoint(s).unwrap();
        let h = OtlpProtocol::HttpProtobuf;
        assert_eq!(
            final_endpoint(&u("http://c:4318"), EndpointKind::Original, h),
            "http://c:4318/v1/metrics"
        );
        assert_eq!(
            final_endpoint(&u("http://c:4318/otlp/"), EndpointKind::Original, h),
            "http://c:4318/otlp/v1/metrics"
        );
        assert_eq!(
            final_endpoint(&u("http://c:4318/v1/metrics/"), EndpointKind::Original, h),
            "http://c:4318/v1/metrics"
        );
        assert_eq!(
            final_endpoint(&u("http://c:4318/my/"), EndpointKind::OtelGeneric, h),
            "http://c:4318/my/v1/metrics"
        );
        assert_eq!(
            final_endpoint(&u("http://c:4318"), EndpointKind::OtelGeneric, h),
            "http://c:4318/v1/metrics"
        );
        assert_eq!(
            final_endpoint(&u("http://c:4318"), EndpointKind::OtelMetrics, h),
            "http://c:4318/"
        );
        assert_eq!(
            final_endpoint(&u("http://c:4318/x"), EndpointKind::OtelMetrics, h),
            "http://c:4318/x"
        );
        assert_eq!(
            final_endpoint(
                &u("https://c:4317/ignored"),
                EndpointKind::Original,
                OtlpProtocol::Grpc
            ),
            "https://c:4317"
        );
        // a query string stays at the end: `/v1/metrics` goes onto the path
        let q = "http://c:4318/otlp?apikey=k1&sig=s";
        assert_eq!(
            final_endpoint(&u(q), EndpointKind::Original, h),
            "http://c:4318/otlp/v1/metrics?apikey=k1&sig=s"
        );
        assert_eq!(
            final_endpoint(&u(q), EndpointKind::OtelGeneric, h),
            "http://c:4318/otlp/v1/metrics?apikey=k1&sig=s"
        );
        assert_eq!(
            final_endpoint(&u(q), EndpointKind::OtelMetrics, h),
            "http://c:4318/otlp?apikey=k1&sig=s"
        );
        assert_eq!(
            final_endpoint(
                &u("http://c:4318/v1/metrics?k=v"),
                EndpointKind::Original,
                h
            ),
            "http://c:4318/v1/metrics?k=v"
        );
    }
}
