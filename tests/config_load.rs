//! Good configurations: the original's example file, defaults, `LOXONE_*` precedence,
//! YAML 1.1 booleans, IPv6, the `OTEL_*` variables and their precedence, the effective
//! configuration rendering (secrets masked), and the default file search.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loxone_exporter::config::{
    find_default_config, load, load_str_with_env_names, render_effective, Config, LogFormat,
    LogLevel, OtlpCompression, OtlpProtocol, DEFAULT_OTLP_MAX_REQUEST_BYTES,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

fn try_load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let names: Vec<String> = map.keys().cloned().collect();
    let lookup = move |k: &str| map.get(k).cloned();
    load_str_with_env_names(yaml, None, &lookup, &names).map_err(|e| format!("{e:#?}"))
}

fn ok(yaml: &str, env: &[(&str, &str)]) -> Config {
    try_load(yaml, env).unwrap_or_else(|e| panic!("expected success for\n{yaml}\n{e}"))
}

fn load_file(path: &Path, env: &[(&str, &str)]) -> Config {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |k: &str| map.get(k).cloned();
    load(Some(path), &lookup).unwrap_or_else(|e| panic!("{}: {e:#?}", path.display()))
}

const MS: &str =
    "miniservers:\n  - host: 192.168.1.100\n    username: prometheus\n    password: pw\n";

#[test]
fn the_original_example_loads_unchanged() {
    let c = load_file(&fixture("tests/fixtures/config/original-example.yml"), &[]);
    assert_eq!(c.miniservers.len(), 1);
    let ms = &c.miniservers[0];
    assert_eq!(ms.name, "home");
    assert_eq!(ms.host, "192.168.1.100");
    assert_eq!((ms.port, ms.ssl_port), (80, 443));
    assert_eq!(ms.username, "prometheus");
    assert_eq!(ms.password.expose(), "your-password-here");
    assert!(!ms.use_encryption && !ms.force_encryption);
    assert_eq!(c.listen_port, 9504);
    assert_eq!(c.listen_address.to_string(), "0.0.0.0");
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.log_format, LogFormat::Json);
    assert!(c.filters.exclude_rooms.is_empty() && c.filters.exclude_names.is_empty());
    assert!(!c.include_text_values);
    assert!(!c.opentelemetry.enabled);
    assert!(c
        .source
        .as_deref()
        .is_some_and(|p| p.ends_with("original-example.yml")));
}

#[test]
fn the_original_example_with_its_otlp_block_enabled_loads() {
    let c = load_file(
        &fixture("tests/fixtures/config/original-example-otlp.yml"),
        &[],
    );
    let o = &c.opentelemetry;
    assert!(o.enabled);
    assert_eq!(o.protocol, OtlpProtocol::Grpc);
    assert_eq!(o.endpoint, "http://localhost:4317");
    assert_eq!(o.interval, Duration::from_secs(30));
    assert_eq!(o.timeout, Duration::from_secs(15));
    assert!(!o.tls.enabled && o.tls.ca_file.is_none());
    let names: Vec<&str> = o.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Authorization", "X-API-Key"]);
    assert_eq!(o.headers[0].1.expose(), "Bearer token");
}

#[test]
fn the_original_grafana_cloud_block_loads() {
    let yaml = format!(
        "{MS}opentelemetry:\n  enabled: true\n  endpoint: \"https://otlp-gateway-prod-eu-west-2.grafana.net/otlp\"\n  protocol: http\n  interval_seconds: 60\n  timeout_seconds: 30\n  auth:\n    headers:\n      Authorization: \"Basic%20abc\"\n"
    );
    let o = ok(&yaml, &[]).opentelemetry;
    assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(
        o.endpoint,
        "https://otlp-gateway-prod-eu-west-2.grafana.net/otlp/v1/metrics"
    );
    assert!(o.tls.enabled, "https implies TLS");
    assert_eq!(o.interval, Duration::from_secs(60));
    // Header values from the file are sent as written (the original never decoded them).
    assert_eq!(o.headers[0].1.expose(), "Basic%20abc");
}

#[test]
fn config_example_yml_is_valid_and_documents_every_key() {
    let path = fixture("config.example.yml");
    let c = load_file(&path, &[]);
    assert_eq!(c.miniservers.len(), 1);
    assert_eq!(c.listen_port, 9504);
    assert_eq!(
        c.opentelemetry.max_request_bytes,
        DEFAULT_OTLP_MAX_REQUEST_BYTES
    );
    let text = std::fs::read_to_string(&path).unwrap();
    for key in [
        "miniservers:",
        "name:",
        "host:",
        "port:",
        "ssl_port:",
        "username:",
        "password:",
        "use_encryption:",
        "force_encryption:",
        "tls_ca_file:",
        "tls_fingerprint:",
        "listen_port:",
        "listen_address:",
        "log_level:",
        "log_format:",
        "exclude_rooms:",
        "exclude_types:",
        "exclude_names:",
        "exclude_categories:",
        "include_rooms:",
        "include_types:",
        "include_names:",
        "include_categories:",
        "include_text_values:",
        "opentelemetry:",
        "enabled:",
        "endpoint:",
        "protocol:",
        "interval_seconds:",
        "timeout_seconds:",
        "tls:",
        "cert_path:",
        "client_cert_path:",
        "client_key_path:",
        "auth:",
        "headers:",
        "compression:",
        "max_request_bytes:",
        "service_name:",
        "resource_attributes:",
    ] {
        // the OTLP section is there commented out (see below)
        assert!(
            text.lines().any(|l| l
                .trim_start_matches("# ")
                .trim_start()
                .trim_start_matches("- ")
                .starts_with(key)),
            "config.example.yml does not document {key}"
        );
    }
    // The OTLP section is commented out: a key set in the file outranks the OTEL_*
    // variables, so a copied example must not set any (it used to set all of them, and
    // OTEL_EXPORTER_OTLP_ENDPOINT then did nothing).
    assert!(!text.lines().any(|l| l.starts_with("opentelemetry:")));
    let c = try_load(
        &text,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")],
    )
    .unwrap();
    assert!(
        c.opentelemetry.enabled,
        "OTEL_EXPORTER_OTLP_ENDPOINT shadowed"
    );
    assert_eq!(c.opentelemetry.endpoint, "http://collector:4318/v1/metrics");
    // Uncommented and switched on, the documented values are valid and are the defaults.
    let (before, section) = text.split_at(text.find("# opentelemetry:").unwrap());
    let uncommented: String = section
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let on = format!("{before}{uncommented}").replace(
        "  enabled: false                  # default false; env",
        "  enabled: true # env",
    );
    let c = try_load(&on, &[]).unwrap();
    assert!(c.opentelemetry.enabled);
    assert_eq!(c.opentelemetry.endpoint, "http://localhost:4317");
    let mut defaults = try_load(
        &on.replace("  enabled: true # env", "  enabled: false # env"),
        &[],
    )
    .unwrap();
    // the one value without a default: the example shows the usual collector address
    defaults.opentelemetry.endpoint.clear();
    assert_eq!(
        format!("{:?}", defaults.opentelemetry),
        format!("{:?}", try_load(before, &[]).unwrap().opentelemetry),
        "a value shown in the commented section is not the default"
    );
}

#[test]
fn defaults_match_the_original() {
    let c = ok(MS, &[]);
    let ms = &c.miniservers[0];
    assert_eq!(
        ms.name, "192.168.1.100",
        "first entry's name defaults to its host"
    );
    assert_eq!((ms.port, ms.ssl_port), (80, 443));
    assert_eq!(c.listen_port, 9504);
    assert_eq!(c.listen_address.to_string(), "0.0.0.0");
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.log_format, LogFormat::Json);
    assert!(!c.opentelemetry.enabled);
    assert_eq!(c.opentelemetry.interval, Duration::from_secs(30));
    assert_eq!(c.opentelemetry.timeout, Duration::from_secs(15));
    assert!(c.origins.is_empty());
}

#[test]
fn yaml_1_1_booleans_are_accepted_like_the_original() {
    let yaml = "miniservers:\n  - host: ms\n    username: u\n    password: p\n    use_encryption: yes\n    force_encryption: OFF\ninclude_text_values: On\nopentelemetry:\n  enabled: no\n";
    let c = ok(yaml, &[]);
    assert!(c.miniservers[0].use_encryption);
    assert!(!c.miniservers[0].force_encryption);
    assert!(c.include_text_values);
    assert!(!c.opentelemetry.enabled);
    // Real YAML booleans in any YAML 1.2 spelling.
    let c = ok(&format!("{MS}include_text_values: True\n"), &[]);
    assert!(c.include_text_values);
}

#[test]
fn log_level_and_format_are_case_insensitive() {
    let c = ok(&format!("{MS}log_level: WARN\nlog_format: Text\n"), &[]);
    assert_eq!(c.log_level, LogLevel::Warning);
    assert_eq!(c.log_format, LogFormat::Text);
    let c = ok(
        &format!("{MS}log_level: INFO\n"),
        &[("LOXONE_LOG_LEVEL", "Debug")],
    );
    assert_eq!(c.log_level, LogLevel::Debug);
}

#[test]
fn null_values_mean_default() {
    let c = ok(
        &format!("{MS}exclude_rooms:\nlisten_port: ~\nopentelemetry:\n"),
        &[],
    );
    assert!(c.filters.exclude_rooms.is_empty());
    assert_eq!(c.listen_port, 9504);
}

#[test]
fn ipv6_hosts_and_listen_addresses_work() {
    let yaml = "miniservers:\n  - {name: a, host: '[fe80::1]', username: u, password: p}\n  - {name: b, host: '2001:db8::5', username: u, password: p}\n  - {name: c, host: ms.local, username: u, password: p}\nlisten_address: '::'\n";
    let c = ok(yaml, &[]);
    assert_eq!(c.miniservers[0].host, "fe80::1", "stored without brackets");
    assert_eq!(c.miniservers[0].authority(80), "[fe80::1]:80");
    assert_eq!(c.miniservers[1].host, "2001:db8::5");
    assert_eq!(c.miniservers[1].authority(443), "[2001:db8::5]:443");
    assert_eq!(c.miniservers[2].authority(80), "ms.local:80");
    assert!(c.listen_address.is_ipv6() && c.listen_address.is_unspecified());
    let c = ok(
        &format!("{MS}listen_address: '[::1]'\n"),
        &[("LOXONE_HOST", "[::1]")],
    );
    assert_eq!(c.listen_address.to_string(), "::1");
    assert_eq!(c.miniservers[0].host, "::1");
    // OTLP endpoint with an IPv6 literal.
    let o = ok(
        &format!("{MS}opentelemetry:\n  enabled: true\n  endpoint: 'http://[::1]:4318/'\n  protocol: http\n"),
        &[],
    )
    .opentelemetry;
    assert_eq!(o.endpoint, "http://[::1]:4318/v1/metrics");
}

#[test]
fn loxone_variables_override_the_file() {
    let yaml = "miniservers:\n  - {name: home, host: 10.0.0.1, port: 80, username: file-user, password: file-pw}\n  - {name: office, host: 10.0.0.2, username: u2, password: p2}\nlisten_port: 9000\nlog_level: error\n";
    let c = ok(
        yaml,
        &[
            ("LOXONE_HOST", "10.0.0.9"),
            ("LOXONE_PORT", "8080"),
            ("LOXONE_USERNAME", "env-user"),
            ("LOXONE_PASSWORD", "env-pw"),
            ("LOXONE_LISTEN_PORT", "9999"),
            ("LOXONE_LOG_LEVEL", "debug"),
        ],
    );
    let ms = &c.miniservers[0];
    assert_eq!(ms.host, "10.0.0.9");
    assert_eq!(ms.port, 8080);
    assert_eq!(ms.username, "env-user");
    assert_eq!(ms.password.expose(), "env-pw");
    assert_eq!(ms.name, "home", "file name kept when LOXONE_NAME is unset");
    // Only the first entry is affected.
    assert_eq!(c.miniservers[1].host, "10.0.0.2");
    assert_eq!(c.miniservers[1].username, "u2");
    assert_eq!(c.listen_port, 9999);
    assert_eq!(c.log_level, LogLevel::Debug);
    assert!(c
        .origins
        .contains(&("miniservers[0].host".into(), "LOXONE_HOST".into())));
    assert!(c
        .origins
        .contains(&("listen_port".into(), "LOXONE_LISTEN_PORT".into())));

    let c = ok(yaml, &[("LOXONE_NAME", "renamed")]);
    assert_eq!(c.miniservers[0].name, "renamed");
}

#[test]
fn empty_loxone_variables_are_ignored() {
    let c = ok(
        MS,
        &[
            ("LOXONE_HOST", ""),
            ("LOXONE_PORT", ""),
            ("LOXONE_PASSWORD", ""),
            ("LOXONE_LISTEN_PORT", ""),
        ],
    );
    assert_eq!(c.miniservers[0].host, "192.168.1.100");
    assert_eq!(c.miniservers[0].password.expose(), "pw");
    assert_eq!(c.listen_port, 9504);
}

#[test]
fn environment_alone_configures_a_miniserver() {
    let c = ok(
        "",
        &[
            ("LOXONE_HOST", "ms.example"),
            ("LOXONE_USERNAME", "u"),
            ("LOXONE_PASSWORD", "p"),
        ],
    );
    assert_eq!(c.miniservers.len(), 1);
    assert_eq!(
        c.miniservers[0].name, "ms.example",
        "name defaults to the env host"
    );
    assert!(c.source.is_none());
    // And an empty `miniservers: []` gets its entry from the environment too.
    let c = ok(
        "miniservers: []\n",
        &[
            ("LOXONE_HOST", "ms"),
            ("LOXONE_USERNAME", "u"),
            ("LOXONE_PASSWORD", "p"),
            ("LOXONE_NAME", "n"),
        ],
    );
    assert_eq!(c.miniservers[0].name, "n");
    // A file entry without host is completed by LOXONE_HOST.
    let c = ok(
        "miniservers:\n  - {username: u, password: p}\n",
        &[("LOXONE_HOST", "ms")],
    );
    assert_eq!(c.miniservers[0].host, "ms");
}

#[test]
fn filters_and_new_keys_load() {
    let yaml = format!(
        "{MS}exclude_rooms: [Garage]\nexclude_types: [Pushbutton]\nexclude_names: ['Test*', 'Debug_?']\nexclude_categories: [Security]\ninclude_rooms: ['Living Room']\ninclude_types: [Switch]\ninclude_names: ['[A-Z]*']\ninclude_categories:\n  - Lights\n"
    );
    let f = ok(&yaml, &[]).filters;
    assert_eq!(f.exclude_rooms, ["Garage"]);
    assert_eq!(f.exclude_names, ["Test*", "Debug_?"]);
    assert_eq!(f.exclude_categories, ["Security"]);
    assert_eq!(f.include_rooms, ["Living Room"]);
    assert_eq!(f.include_types, ["Switch"]);
    assert_eq!(f.include_names, ["[A-Z]*"]);
    assert_eq!(f.include_categories, ["Lights"]);

    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, "pem").unwrap();
    let yaml = format!(
        "miniservers:\n  - host: ms\n    username: u\n    password: p\n    use_encryption: true\n    tls_ca_file: '{}'\n",
        ca.display(),
    );
    let ms = &ok(&yaml, &[]).miniservers[0];
    assert_eq!(ms.tls_ca_file.as_deref(), Some(ca.as_path()));
    let yaml = format!(
        "miniservers:\n  - host: ms\n    username: u\n    password: p\n    force_encryption: true\n    tls_fingerprint: 'AB:{}'\n",
        "cd".repeat(31)
    );
    let ms = &ok(&yaml, &[]).miniservers[0];
    assert_eq!(
        ms.tls_fingerprint.as_deref(),
        Some(format!("ab{}", "cd".repeat(31)).as_str())
    );
}

#[test]
fn loxone_otlp_variables_beat_the_file_and_keep_original_semantics() {
    let yaml = format!(
        "{MS}opentelemetry:\n  enabled: false\n  endpoint: http://file:4317\n  protocol: grpc\n  interval_seconds: 60\n  auth:\n    headers:\n      authorization: file-token\n      X-Keep: kept\n"
    );
    let c = ok(
        &yaml,
        &[
            ("LOXONE_OTLP_ENABLED", "yes"),
            ("LOXONE_OTLP_ENDPOINT", "http://env:4318/"),
            ("LOXONE_OTLP_PROTOCOL", "http"),
            ("LOXONE_OTLP_INTERVAL", "20"),
            ("LOXONE_OTLP_TIMEOUT", "10"),
            ("LOXONE_OTLP_AUTH_HEADER_AUTHORIZATION", "Bearer env-token"),
            ("LOXONE_OTLP_AUTH_HEADER_X_API_KEY", "k"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
        ],
    );
    let o = &c.opentelemetry;
    assert!(o.enabled);
    assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(o.endpoint, "http://env:4318/v1/metrics");
    assert_eq!(o.interval, Duration::from_secs(20));
    assert_eq!(o.timeout, Duration::from_secs(10));
    let h: Vec<(&str, &str)> = o
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.expose()))
        .collect();
    assert_eq!(
        h,
        [
            ("Authorization", "Bearer env-token"),
            ("X-Keep", "kept"),
            ("X-Api-Key", "k")
        ],
        "env header replaces the file's regardless of case, Title-Cased like the original"
    );
    assert!(c.origins.contains(&(
        "opentelemetry.endpoint".into(),
        "LOXONE_OTLP_ENDPOINT".into()
    )));

    // LOXONE_OTLP_ENABLED counts even when empty (= false), as in the original.
    let c = ok(
        &yaml.replace("enabled: false", "enabled: true"),
        &[("LOXONE_OTLP_ENABLED", "")],
    );
    assert!(!c.opentelemetry.enabled);
}

#[test]
fn otel_endpoint_alone_enables_export_with_spec_defaults() {
    let c = ok(
        MS,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")],
    );
    let o = &c.opentelemetry;
    assert!(o.enabled);
    assert_eq!(
        o.protocol,
        OtlpProtocol::HttpProtobuf,
        "the OTel default protocol"
    );
    assert_eq!(o.endpoint, "http://collector:4318/v1/metrics");
    assert!(c.origins.iter().any(|(k, _)| k == "opentelemetry.enabled"));

    // Generic endpoint with a path: base URL + v1/metrics.
    let o = ok(
        MS,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/mycollector/")],
    )
    .opentelemetry;
    assert_eq!(o.endpoint, "http://c:4318/mycollector/v1/metrics");

    // Per-signal endpoint wins and is used as is.
    let o = ok(
        MS,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://signal:4318/custom/path",
            ),
        ],
    )
    .opentelemetry;
    assert_eq!(o.endpoint, "http://signal:4318/custom/path");

    // gRPC: scheme, host and port only.
    let o = ok(
        MS,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector:4317/ignored",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    )
    .opentelemetry;
    assert_eq!(o.protocol, OtlpProtocol::Grpc);
    assert_eq!(o.endpoint, "https://collector:4317");
    assert!(o.tls.enabled);
}

#[test]
fn the_file_beats_otel_variables() {
    let yaml = format!(
        "{MS}opentelemetry:\n  enabled: true\n  endpoint: http://file:4317\n  interval_seconds: 40\n  compression: none\n  service_name: from-file\n  resource_attributes:\n    deployment.environment: home\n"
    );
    let c = ok(
        &yaml,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "15000"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_SERVICE_NAME", "from-env"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=lab,host.role=edge%2Cgw",
            ),
        ],
    );
    let o = &c.opentelemetry;
    // File endpoint, but the protocol the file leaves open comes from OTEL_*.
    assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(o.endpoint, "http://file:4317/v1/metrics");
    assert_eq!(o.interval, Duration::from_secs(40));
    assert_eq!(o.compression, OtlpCompression::None);
    assert_eq!(o.service_name, "from-file");
    assert_eq!(
        o.resource_attributes,
        [
            ("deployment.environment".to_string(), "home".to_string()),
            ("host.role".to_string(), "edge,gw".to_string())
        ]
    );
    assert!(!c.origins.iter().any(|(k, _)| k == "opentelemetry.endpoint"));
}

#[test]
fn otel_variables_fill_what_the_file_leaves_open() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, "pem").unwrap();
        p.display().to_string()
    };
    let (ca, cert, key, ca2) = (
        write("ca.pem"),
        write("c.pem"),
        write("k.pem"),
        write("ca2.pem"),
    );
    let env = [
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "https://c:4318/v1/metrics",
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "Authorization=Basic%20abc%3D,x-tenant=t1",
        ),
        ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "7500"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "20000"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "60000"),
        ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "GZIP"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()),
        ("OTEL_SERVICE_NAME", "svc"),
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=ignored,site=home"),
    ];
    let c = ok(
        &format!("{MS}opentelemetry:\n  auth:\n    headers:\n      X-Tenant: file\n"),
        &env,
    );
    let o = &c.opentelemetry;
    assert!(o.enabled, "section without `enabled` + OTEL endpoint = on");
    assert_eq!(o.endpoint, "https://c:4318/v1/metrics");
    assert_eq!(
        o.timeout,
        Duration::from_millis(7500),
        "per-signal timeout wins"
    );
    assert_eq!(o.interval, Duration::from_secs(60));
    assert_eq!(o.compression, OtlpCompression::Gzip);
    assert!(o.tls.enabled);
    assert_eq!(
        o.tls.ca_file.as_deref().map(|p| p.display().to_string()),
        Some(ca.clone())
    );
    assert_eq!(
        o.tls
            .client_cert_file
            .as_deref()
            .map(|p| p.display().to_string()),
        Some(cert)
    );
    assert_eq!(
        o.tls
            .client_key_file
            .as_deref()
            .map(|p| p.display().to_string()),
        Some(key)
    );
    let h: Vec<(&str, &str)> = o
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.expose()))
        .collect();
    assert_eq!(
        h,
        [("Authorization", "Basic abc="), ("X-Tenant", "file")],
        "percent-decoded; file wins"
    );
    assert_eq!(
        o.service_name, "svc",
        "OTEL_SERVICE_NAME beats service.name in attributes"
    );
    assert_eq!(
        o.resource_attributes,
        [("site".to_string(), "home".to_string())]
    );

    // LOXONE_OTLP_TLS_CERT_PATH beats the OTEL certificate; metrics headers replace generic.
    let c = ok(
        MS,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
            ("LOXONE_OTLP_TLS_CERT_PATH", ca2.as_str()),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "b=2"),
        ],
    );
    let o = &c.opentelemetry;
    assert_eq!(
        o.tls.ca_file.as_deref().map(|p| p.display().to_string()),
        Some(ca2)
    );
    let names: Vec<&str> = o.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["b"]);
}

#[test]
fn otel_sdk_disabled_turns_export_off() {
    let yaml = format!("{MS}opentelemetry:\n  enabled: true\n  endpoint: http://c:4317\n");
    assert!(ok(&yaml, &[]).opentelemetry.enabled);
    assert!(
        !ok(&yaml, &[("OTEL_SDK_DISABLED", "true")])
            .opentelemetry
            .enabled
    );
    assert!(
        !ok(
            &yaml,
            &[("OTEL_SDK_DISABLED", "TRUE"), ("LOXONE_OTLP_ENABLED", "1")]
        )
        .opentelemetry
        .enabled
    );
    // Anything but "true" is ignored.
    assert!(
        ok(&yaml, &[("OTEL_SDK_DISABLED", "1")])
            .opentelemetry
            .enabled
    );
    assert!(
        ok(&yaml, &[("OTEL_SDK_DISABLED", "false")])
            .opentelemetry
            .enabled
    );
    // And a disabled exporter does not validate the rest.
    assert!(
        !ok(
            &format!("{MS}opentelemetry:\n  enabled: true\n"),
            &[("OTEL_SDK_DISABLED", "true")]
        )
        .opentelemetry
        .enabled
    );
}

#[test]
fn otel_metrics_exporter_decides_when_nothing_else_does() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
    // an endpoint meant for other signals does not start the push when metrics say none
    for value in ["none", "prometheus", " Prometheus , none "] {
        let c = ok(MS, &[endpoint, ("OTEL_METRICS_EXPORTER", value)]);
        assert!(!c.opentelemetry.enabled, "{value}");
        assert!(c.warnings.is_empty(), "{value}: {:?}", c.warnings);
    }
    // otlp in the list starts it, with or without an endpoint (then the OpenTelemetry one)
    let c = ok(
        MS,
        &[endpoint, ("OTEL_METRICS_EXPORTER", "prometheus,otlp")],
    );
    assert!(c.opentelemetry.enabled);
    assert_eq!(c.opentelemetry.endpoint, "http://c:4318/v1/metrics");
    let c = ok(MS, &[("OTEL_METRICS_EXPORTER", "otlp")]);
    assert!(c.opentelemetry.enabled);
    assert_eq!(c.opentelemetry.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(c.opentelemetry.endpoint, "http://localhost:4318/v1/metrics");
    let c = ok(
        MS,
        &[
            ("OTEL_METRICS_EXPORTER", "OTLP"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    assert_eq!(c.opentelemetry.endpoint, "http://localhost:4317");
    // unknown or unsupported names: a warning each, and ignored
    let c = ok(MS, &[endpoint, ("OTEL_METRICS_EXPORTER", "statsd")]);
    assert!(
        c.opentelemetry.enabled,
        "nothing known: the endpoint decides"
    );
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("'statsd' is not a metrics exporter"));
    let c = ok(MS, &[endpoint, ("OTEL_METRICS_EXPORTER", "console")]);
    assert!(!c.opentelemetry.enabled);
    assert!(c.warnings[0].contains("'console' is not supported"));
    // the original's settings and OTEL_SDK_DISABLED rank above it
    let c = ok(
        MS,
        &[
            endpoint,
            ("OTEL_METRICS_EXPORTER", "none"),
            ("LOXONE_OTLP_ENABLED", "true"),
        ],
    );
    assert!(c.opentelemetry.enabled);
    let c = ok(
        MS,
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    );
    assert!(!c.opentelemetry.enabled);
    let yaml = format!("{MS}opentelemetry:\n  enabled: true\n  endpoint: http://file:4317\n");
    let c = ok(&yaml, &[("OTEL_METRICS_EXPORTER", "none")]);
    assert!(c.opentelemetry.enabled);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].starts_with(
        "OTEL_METRICS_EXPORTER is set but not used for the metrics export: opentelemetry.enabled"
    ));
}

#[test]
fn explicit_disable_beats_an_otel_endpoint() {
    let c = ok(
        &format!("{MS}opentelemetry:\n  enabled: false\n"),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")],
    );
    assert!(!c.opentelemetry.enabled);
}

#[test]
fn render_shows_every_setting_and_masks_secrets() {
    const SECRET: &str = "pa55-w0rd-SECRET";
    const TOKEN: &str = "tok-SECRET-123";
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, "pem").unwrap();
    let yaml = format!(
        "miniservers:\n  - name: home\n    host: 'fd00::1'\n    username: prometheus\n    password: {SECRET}\n  - name: 'it''s office'\n    host: ms2\n    username: u\n    password: {SECRET}2\nexclude_rooms: ['Living Room', Garage]\nopentelemetry:\n  enabled: true\n  endpoint: https://c:4317\n  tls:\n    cert_path: '{}'\n  auth:\n    headers:\n      Authorization: 'Bearer {TOKEN}'\n  resource_attributes:\n    site: home\n",
        ca.display()
    );
    let c = ok(
        &yaml,
        &[
            ("LOXONE_OTLP_AUTH_HEADER_X_TOKEN", TOKEN),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-other=tok-SECRET-123"),
            ("LOXONE_LISTEN_PORT", "9600"),
        ],
    );
    let text = render_effective(&c);
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
    // Also via Debug, which the lead may log.
    let debug = format!("{c:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    for want in [
        "host: fd00::1",
        "password: '****'",
        "name: 'it''s office'",
        "listen_port: 9600  # from LOXONE_LISTEN_PORT",
        "log_level: info",
        "exclude_rooms: ['Living Room', Garage]",
        "include_categories: []",
        "endpoint: https://c:4317",
        "protocol: grpc",
        "interval_seconds: 30",
        "timeout_seconds: 15",
        "enabled: true",
        "Authorization: '****'",
        "X-Token: '****'",
        "x-other: '****'",
        "compression: none",
        "service_name: loxone-exporter",
        "site: home",
        "# from OTEL_EXPORTER_OTLP_HEADERS, LOXONE_OTLP_AUTH_HEADER_X_TOKEN",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // The rendering reads back as the same configuration (secrets aside).
    let reread =
        try_load(&text.replace("'****'", "'x'"), &[]).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(reread.miniservers[1].name, "it's office");
    assert_eq!(reread.listen_port, 9600);
    assert_eq!(reread.filters.exclude_rooms, c.filters.exclude_rooms);
    assert_eq!(reread.opentelemetry.endpoint, c.opentelemetry.endpoint);
    assert_eq!(reread.opentelemetry.headers.len(), 3);
}

#[test]
fn render_of_a_disabled_export_is_short() {
    let text = render_effective(&ok(MS, &[("OTEL_SDK_DISABLED", "true")]));
    assert!(
        text.contains("opentelemetry:\n  enabled: false  # from OTEL_SDK_DISABLED=true\n"),
        "{text}"
    );
    assert!(!text.contains("endpoint:"));
    assert!(text.contains("no config file"));
}

#[test]
fn default_config_search_prefers_yml_then_yaml() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(find_default_config(tmp.path()), None);
    std::fs::write(tmp.path().join("config.yaml"), "").unwrap();
    assert_eq!(
        find_default_config(tmp.path()),
        Some(tmp.path().join("config.yaml"))
    );
    std::fs::write(tmp.path().join("config.yml"), "").unwrap();
    assert_eq!(
        find_default_config(tmp.path()),
        Some(tmp.path().join("config.yml"))
    );
}

#[test]
fn an_empty_file_is_an_empty_mapping() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("empty.yml");
    std::fs::write(&path, "# nothing but a comment\n").unwrap();
    let c = load_file(
        &path,
        &[
            ("LOXONE_HOST", "ms"),
            ("LOXONE_USERNAME", "u"),
            ("LOXONE_PASSWORD", "p"),
        ],
    );
    assert_eq!(c.miniservers[0].host, "ms");
    assert_eq!(c.source.as_deref(), Some(path.as_path()));
}

#[test]
fn yaml_merge_keys_and_anchor_holders_work_as_in_the_original() {
    // PyYAML's safe_load (the original's loader) applies `<<` merge keys; top-level `x-`
    // keys hold anchors (docker-compose style)
    let yaml = "x-login: &login\n  username: u\n  password: p\nminiservers:\n  - &first\n    name: home\n    host: 10.0.0.1\n    <<: *login\n  - <<: *first\n    name: office\n    host: 10.0.0.2\n";
    let c = ok(yaml, &[]);
    assert_eq!(c.miniservers.len(), 2);
    for (ms, (name, host)) in c
        .miniservers
        .iter()
        .zip([("home", "10.0.0.1"), ("office", "10.0.0.2")])
    {
        assert_eq!((ms.name.as_str(), ms.host.as_str()), (name, host));
        assert_eq!(ms.username, "u");
        assert_eq!(ms.password.expose(), "p");
    }
}

/// An `OTEL_*` variable the file outranks is a warning naming the variable and the key
/// (never the value): set but unused, it looked like it worked. `enabled: false` in the
/// file also keeps a set endpoint variable from turning export on.
#[test]
fn otel_variables_the_file_outranks_are_warnings() {
    let yaml = format!(
        "{MS}opentelemetry:\n  enabled: true\n  endpoint: http://file:4317\n  compression: none\n"
    );
    let c = ok(
        &yaml,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://secret-host:4318"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    // the protocol variable is used (the file sets none): /v1/metrics appended
    assert_eq!(c.opentelemetry.endpoint, "http://file:4317/v1/metrics");
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0]
        .starts_with("OTEL_EXPORTER_OTLP_ENDPOINT is set but not used for the metrics export: opentelemetry.endpoint"));
    assert!(c.warnings[1].starts_with("OTEL_EXPORTER_OTLP_COMPRESSION is set but not used"));
    assert!(!c.warnings.concat().contains("secret-host"));

    let off = format!("{MS}opentelemetry:\n  enabled: false\n");
    let c = ok(&off, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
    assert!(!c.opentelemetry.enabled);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("does not turn the OTLP metrics export on"));
    // LOXONE_OTLP_ENABLED decides instead: nothing to warn about
    let c = ok(
        &off,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("LOXONE_OTLP_ENABLED", "true"),
        ],
    );
    assert!(
        c.opentelemetry.enabled && c.warnings.is_empty(),
        "{:?}",
        c.warnings
    );
    // nothing in the file: the variables are used, no warning
    let c = ok(MS, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
    assert!(c.opentelemetry.enabled && c.warnings.is_empty());
}

/// The OpenTelemetry specification: a timeout variable of 0 means no limit, a negative one
/// is warned about and the default used. Neither stops the exporter from starting.
#[test]
fn otel_timeout_zero_and_negative_mean_what_the_specification_says() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
    // 0: the longest timeout allowed below the interval (the default 30 s: 29 s)
    let c = ok(MS, &[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "0")]);
    assert_eq!(c.opentelemetry.timeout, Duration::from_secs(29));
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with("OTEL_EXPORTER_OTLP_TIMEOUT: 0 means no limit"),
        "{:?}",
        c.warnings
    );
    let c = ok(
        MS,
        &[
            endpoint,
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "0"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300000"),
        ],
    );
    assert_eq!(c.opentelemetry.timeout, Duration::from_secs(60));
    // negative: the default 15 s, also over a lower-ranked variable
    let c = ok(
        MS,
        &[
            endpoint,
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "-5"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "20000"),
        ],
    );
    assert_eq!(c.opentelemetry.timeout, Duration::from_secs(15));
    assert!(
        c.warnings[0].contains("-5 ms is negative; ignored, the default timeout of 15 s"),
        "{:?}",
        c.warnings
    );
    // the original's settings keep their range: 0 seconds there is an error
    let errs = try_load(MS, &[endpoint, ("LOXONE_OTLP_TIMEOUT", "0")]).unwrap_err();
    assert!(
        errs.to_string()
            .contains("LOXONE_OTLP_TIMEOUT: 0 is out of range"),
        "{errs}"
    );
}
