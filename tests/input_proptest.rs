//! Property tests for the input the exporter takes from outside the Loxone protocol: a
//! collector's answers (HTTP status and body, `Retry-After`, gRPC status and its details),
//! the collector's error texts on their way to logs and `/healthz`, the configuration file,
//! its environment variables and the web config. Arbitrary input must give an answer or an
//! error, never a panic; errors name what was wrong and never carry a secret. The protocol
//! core has its own (tests/loxone_proptest.rs and fuzz/).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use loxone_exporter::config::{load_str_with_env_names, ConfigErrors};
use loxone_exporter::otlp::transport::{
    classify_grpc, classify_http, parse_retry_after, retry_delay, sanitize, ExportOutcome,
    MAX_SERVER_DELAY, RETRY_INFO_TYPE,
};
use loxone_exporter::web::parse_web_config;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use proptest::prelude::*;
use prost::Message;

/// `google.rpc.Status` and `google.rpc.RetryInfo`, written out here so that the test does
/// not share the exporter's definitions of the messages it checks.
mod rpc {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<Any>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub retry_delay: Option<Duration>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

/// The gRPC codes the OTLP spec retries (§3.3 of docs/otlp-and-prometheus.md), by number.
const RETRYABLE_GRPC: [i32; 6] = [1, 4, 10, 11, 14, 15];
const RESOURCE_EXHAUSTED: i32 = 8;

fn retry_info_status(code: i32, message: String, delay: rpc::Duration) -> Vec<u8> {
    rpc::Status {
        code,
        message,
        details: vec![rpc::Any {
            type_url: RETRY_INFO_TYPE.to_string(),
            value: rpc::RetryInfo {
                retry_delay: Some(delay),
            }
            .encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

/// Bytes that are sometimes valid protobuf of the right shape and sometimes not.
fn collector_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        (any::<i64>(), ".{0,40}").prop_map(|(rejected, message)| {
            ExportMetricsServiceResponse {
                partial_success: Some(ExportMetricsPartialSuccess {
                    rejected_data_points: rejected,
                    error_message: message,
                }),
            }
            .encode_to_vec()
        }),
        (any::<i32>(), ".{0,40}", any::<i64>(), any::<i32>()).prop_map(|(c, m, s, n)| {
            retry_info_status(
                c,
                m,
                rpc::Duration {
                    seconds: s,
                    nanos: n,
                },
            )
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any status, reason phrase, delay and body: 2xx is accepted (partial success told
    /// apart), 429/502/503/504 are retried with the delay capped, everything else dropped.
    #[test]
    fn every_http_answer_is_classified_by_its_status(
        status in 100u16..1000,
        phrase in proptest::option::of(".{0,30}"),
        after in proptest::option::of(any::<u64>().prop_map(Duration::from_secs)),
        body in collector_body(),
    ) {
        let outcome = classify_http(status, phrase.as_deref(), after, &body);
        match status {
            200..=299 => prop_assert!(
                matches!(outcome, ExportOutcome::Sent | ExportOutcome::PartialSuccess { .. }),
                "{status}: {outcome:?}"
            ),
            429 | 502 | 503 | 504 => match outcome {
                ExportOutcome::Retry { after: got, reason } => {
                    prop_assert_eq!(got, after.map(|d| d.min(MAX_SERVER_DELAY)));
                    prop_assert!(reason.starts_with(&format!("HTTP {status}")), "{}", reason);
                }
                other => prop_assert!(false, "{status} not retried: {other:?}"),
            },
            _ => match outcome {
                ExportOutcome::Drop { reason } => {
                    prop_assert!(reason.starts_with(&format!("HTTP {status}")), "{}", reason)
                }
                other => prop_assert!(false, "{status} not dropped: {other:?}"),
            },
        }
    }

    /// A success body with rejected points or a message is a partial success carrying both.
    #[test]
    fn a_partial_success_keeps_its_count_and_message(rejected in any::<i64>(), message in ".{0,40}") {
        let body = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message: message.clone(),
            }),
        }
        .encode_to_vec();
        let outcome = classify_http(200, None, None, &body);
        if rejected == 0 && message.is_empty() {
            prop_assert_eq!(outcome, ExportOutcome::Sent);
        } else {
            prop_assert_eq!(outcome, ExportOutcome::PartialSuccess { rejected, message });
        }
    }

    /// `Retry-After` of any text: no panic; whole seconds are taken as they are, an HTTP date
    /// as the time until it (none for one in the past).
    #[test]
    fn retry_after_reads_seconds_and_dates(text in ".{0,40}", secs in any::<u64>(), ahead in 0u64..100_000) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let _ = parse_retry_after(&text, now);
        prop_assert_eq!(parse_retry_after(&format!(" {secs} "), now), Some(Duration::from_secs(secs)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(ahead));
        prop_assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(ahead)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(ahead));
        prop_assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    }

    /// gRPC status details of any bytes: no panic, never more than the cap; a RetryInfo is
    /// read with negative parts taken as zero.
    #[test]
    fn retry_info_is_read_and_capped(bytes in proptest::collection::vec(any::<u8>(), 0..256), seconds in any::<i64>(), nanos in any::<i32>()) {
        if let Some(d) = retry_delay(&bytes) {
            prop_assert!(d <= MAX_SERVER_DELAY);
        }
        let details = retry_info_status(14, String::new(), rpc::Duration { seconds, nanos });
        let want = Duration::new(seconds.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
            .min(MAX_SERVER_DELAY);
        prop_assert_eq!(retry_delay(&details), Some(want));
    }

    /// Any gRPC code, message and details: retried exactly for the spec's codes, and for
    /// RESOURCE_EXHAUSTED only with a RetryInfo; dropped otherwise.
    #[test]
    fn every_grpc_status_is_classified_by_its_code(
        code in 1i32..=16,
        message in ".{0,40}",
        with_retry_info in any::<bool>(),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let details = if with_retry_info {
            retry_info_status(code, message.clone(), rpc::Duration { seconds: 3, nanos: 0 })
        } else {
            noise
        };
        let status = tonic::Status::with_details(tonic::Code::from_i32(code), message, details.into());
        let retried = RETRYABLE_GRPC.contains(&code) || (code == RESOURCE_EXHAUSTED && with_retry_info);
        match classify_grpc(&status) {
            ExportOutcome::Retry { after, .. } => {
                prop_assert!(retried, "code {code} retried");
                if with_retry_info {
                    prop_assert_eq!(after, Some(Duration::from_secs(3)));
                }
            }
            ExportOutcome::Drop { reason } => {
                prop_assert!(!retried, "code {code} dropped: {reason}");
                prop_assert!(reason.starts_with("gRPC "), "{}", reason);
            }
            other => prop_assert!(false, "code {code}: {other:?}"),
        }
    }

    /// A collector's error text with secrets in it, anywhere: what is logged and shown holds
    /// none of them, no control character, and at most 300 characters and an ellipsis.
    #[test]
    fn sanitized_collector_text_holds_no_secret(
        parts in proptest::collection::vec(".{0,30}", 1..6),
        secrets in proptest::collection::vec("[A-Za-z0-9._~+/=-]{3,24}", 1..4),
        marker in prop_oneof![
            Just(""), Just("Bearer "), Just("authorization: "), Just("token="), Just("API-KEY: ")
        ],
        repeat in 1usize..40,
    ) {
        let mut text = String::new();
        for (i, part) in parts.iter().enumerate() {
            text.push_str(part);
            text.push(' ');
            text.push_str(marker);
            text.push_str(&secrets[i % secrets.len()]);
            text.push(' ');
        }
        let text = text.repeat(repeat);
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let shown = sanitize(&text, &refs);
        for s in &secrets {
            prop_assert!(!shown.contains(s.as_str()), "{s:?} in {shown:?}");
        }
        prop_assert!(!shown.chars().any(char::is_control), "{shown:?}");
        prop_assert!(shown.chars().count() <= 301, "{} chars", shown.chars().count());
    }
}

// ---------------------------------------------------------------------------------------
// Configuration

const PASSWORD: &str = "Pw-7f3kQ9xZ";
const HEADER_SECRET: &str = "Hdr-k2Lm8pQw";

fn load(yaml: &str, env: &[(&str, String)]) -> Result<(), Vec<String>> {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let names: Vec<String> = map.keys().cloned().collect();
    let lookup = move |k: &str| map.get(k).cloned();
    load_str_with_env_names(yaml, None, &lookup, &names)
        .map(|_| ())
        .map_err(|ConfigErrors(errs)| errs.into_iter().map(|e| e.0).collect())
}

/// YAML values of every shape: numbers at and past every range, booleans in the forms YAML
/// 1.1 knew, strings of any characters, null, lists and mappings.
fn yaml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        (0i64..70_000).prop_map(|n| n.to_string()),
        Just("99999999999999999999999".to_string()),
        Just(".nan".to_string()),
        Just("-.inf".to_string()),
        Just("~".to_string()),
        Just("''".to_string()),
        prop_oneof![
            Just("true"),
            Just("false"),
            Just("yes"),
            Just("off"),
            Just("'false'")
        ]
        .prop_map(str::to_string),
        ".{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        "[a-z:/.0-9]{0,20}".prop_map(|s| format!("'{s}'")),
        Just("[1, two]".to_string()),
        Just("{a: 1}".to_string()),
        Just("[]".to_string()),
    ]
}

/// Which key gets the value: (section, key).
fn config_key() -> impl Strategy<Value = (&'static str, &'static str)> {
    let top = [
        "listen_port",
        "listen_address",
        "log_level",
        "log_format",
        "exclude_rooms",
        "exclude_types",
        "exclude_names",
        "exclude_categories",
        "include_rooms",
        "include_types",
        "include_names",
        "include_categories",
        "include_text_values",
    ];
    let ms = [
        "name",
        "port",
        "ssl_port",
        "use_encryption",
        "force_encryption",
        "tls_ca_file",
        "tls_fingerprint",
    ];
    let otlp = [
        "endpoint",
        "protocol",
        "interval_seconds",
        "timeout_seconds",
        "compression",
        "max_request_bytes",
        "service_name",
        "resource_attributes",
    ];
    prop_oneof![
        proptest::sample::select(top.to_vec()).prop_map(|k| ("top", k)),
        proptest::sample::select(ms.to_vec()).prop_map(|k| ("ms", k)),
        proptest::sample::select(otlp.to_vec()).prop_map(|k| ("otlp", k)),
        proptest::sample::select(vec![
            "enabled",
            "cert_path",
            "client_cert_path",
            "client_key_path"
        ])
        .prop_map(|k| ("tls", k)),
    ]
}

fn config_with(section: &str, key: &str, value: &str) -> String {
    let line = |here: &str, otherwise: &str| {
        if here == section {
            format!("{key}: {value}")
        } else {
            otherwise.to_string()
        }
    };
    let (endpoint, otlp_line) = match (section, key) {
        ("otlp", "endpoint") => (value.to_string(), "protocol: grpc".to_string()),
        _ => (
            "http://127.0.0.1:4317".to_string(),
            line("otlp", "protocol: grpc"),
        ),
    };
    format!(
        "miniservers:\n  - host: 192.168.1.100\n    username: prometheus\n    password: {PASSWORD}\n    {ms}\n\
         {top}\n\
         opentelemetry:\n  enabled: true\n  endpoint: {endpoint}\n  {otlp_line}\n  \
         auth:\n    headers:\n      Authorization: Bearer {HEADER_SECRET}\n  tls:\n    {tls}\n",
        ms = line("ms", "name: main"),
        top = line("top", "x-unused: 0"),
        tls = line("tls", "enabled: false"),
    )
}

/// The variables the exporter reads, each of which may be set to anything.
const ENV_VARS: &[&str] = &[
    "LOXONE_HOST",
    "LOXONE_PORT",
    "LOXONE_USERNAME",
    "LOXONE_NAME",
    "LOXONE_LISTEN_PORT",
    "LOXONE_LOG_LEVEL",
    "LOXONE_OTLP_ENABLED",
    "LOXONE_OTLP_ENDPOINT",
    "LOXONE_OTLP_PROTOCOL",
    "LOXONE_OTLP_INTERVAL",
    "LOXONE_OTLP_TIMEOUT",
    "LOXONE_OTLP_TLS_ENABLED",
    "LOXONE_OTLP_TLS_CERT_PATH",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// One key of the file set to a value of any shape: the file loads, or every problem
    /// comes back as an error, one of which names that key; no error shows the password
    /// or a header value.
    #[test]
    fn a_value_of_any_shape_in_any_key_is_loaded_or_named((section, key) in config_key(), value in yaml_value()) {
        let yaml = config_with(section, key, &value);
        if let Err(errors) = load(&yaml, &[("LOXONE_PASSWORD", PASSWORD.to_string())]) {
            prop_assert!(
                errors.iter().any(|e| e.contains(key)),
                "no error names {key} for {key}: {value}: {errors:#?}"
            );
            for e in &errors {
                prop_assert!(!e.contains(PASSWORD) && !e.contains(HEADER_SECRET), "{e}");
            }
        }
    }

    /// Any text as the whole file: loaded or refused, never a panic, and an unreadable file is
    /// one error naming the configuration.
    #[test]
    fn any_text_as_the_file_is_loaded_or_refused(text in "(.|\n){0,200}") {
        if let Err(errors) = load(&text, &[]) {
            prop_assert!(!errors.is_empty());
        }
    }

    /// One variable set to any text: loaded, or an error that names the variable; the
    /// password and the header value in other variables are never shown.
    #[test]
    fn any_value_of_any_variable_is_loaded_or_named(
        var in proptest::sample::select(ENV_VARS.to_vec()),
        value in prop_oneof![".{0,30}", "[a-z]+=[^,]{0,10}(,[a-z]+=[^,]{0,10}){0,3}", "-?[0-9]{1,25}"],
    ) {
        let env = [
            ("LOXONE_PASSWORD", PASSWORD.to_string()),
            ("OTEL_EXPORTER_OTLP_HEADERS", format!("x-api-key={HEADER_SECRET}")),
            (var, value.clone()),
        ];
        let yaml = "miniservers:\n  - host: 192.168.1.100\n    username: prometheus\n";
        if let Err(errors) = load(yaml, &env) {
            prop_assert!(
                errors.iter().any(|e| e.contains(var)),
                "no error names {var} for {var}={value:?}: {errors:#?}"
            );
            for e in &errors {
                prop_assert!(!e.contains(PASSWORD) && !e.contains(HEADER_SECRET), "{e}");
            }
        }
    }

    /// The header variables, of any text: loaded, or an error that names the variable and
    /// never shows a value.
    #[test]
    fn any_headers_variable_is_loaded_or_named_without_its_values(
        names in proptest::collection::vec("[ -~]{0,12}", 1..4),
        separator in prop_oneof![Just("="), Just(""), Just("=="), Just(": ")],
    ) {
        let value = names
            .iter()
            .map(|n| format!("{n}{separator}{HEADER_SECRET}"))
            .collect::<Vec<_>>()
            .join(",");
        let env = [
            ("LOXONE_PASSWORD", PASSWORD.to_string()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318".to_string()),
            ("OTEL_EXPORTER_OTLP_HEADERS", value.clone()),
        ];
        let yaml = "miniservers:\n  - host: 192.168.1.100\n    username: prometheus\n";
        if let Err(errors) = load(yaml, &env) {
            prop_assert!(errors.iter().any(|e| e.contains("OTEL_EXPORTER_OTLP_HEADERS")), "{errors:#?}");
            for e in &errors {
                prop_assert!(!e.contains(HEADER_SECRET) && !e.contains(PASSWORD), "{e}");
            }
        }
    }

    /// The web config (re-read at every connection) of any text: parsed or refused, never a
    /// panic.
    #[test]
    fn any_web_config_text_is_parsed_or_refused(
        text in prop_oneof![
            "(.|\n){0,200}",
            (proptest::sample::select(vec![
                "tls_server_config", "basic_auth_users", "http_server_config"
            ]), "[a-z_: \n{}\\[\\]0-9'-]{0,80}")
                .prop_map(|(k, rest)| format!("{k}:\n  {rest}\n")),
        ],
    ) {
        let _ = parse_web_config(&text, Path::new("web.yml"));
    }
}
