//! Bad configurations: every validation rule of the original (docs/original-exporter.md
//! §1.4, VR-002…VR-010), every defect issue 2 names (§1.2 quirks, §9.1 item 13), and the
//! new keys. Each case asserts the message names the field (or variable), the value and
//! the rule, and that all problems are reported together.

use std::collections::HashMap;

use loxone_exporter::config::{load, load_str, load_str_with_env_names, Config, ConfigErrors};

/// A valid Miniserver entry to build on.
const MS: &str =
    "miniservers:\n  - host: 192.168.1.100\n    username: prometheus\n    password: pw\n";

fn run(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let names: Vec<String> = map.keys().cloned().collect();
    let lookup = move |k: &str| map.get(k).cloned();
    load_str_with_env_names(yaml, None, &lookup, &names)
}

fn messages(yaml: &str, env: &[(&str, &str)]) -> Vec<String> {
    match run(yaml, env) {
        Ok(c) => panic!("expected errors for\n{yaml}\nenv {env:?}\ngot {c:#?}"),
        Err(e) => e.0.into_iter().map(|e| e.0).collect(),
    }
}

struct Case {
    name: &'static str,
    yaml: String,
    env: Vec<(&'static str, &'static str)>,
    /// Every string must occur in one single message.
    expect: Vec<&'static str>,
}

fn case(name: &'static str, yaml: impl Into<String>, expect: &[&'static str]) -> Case {
    Case {
        name,
        yaml: yaml.into(),
        env: Vec::new(),
        expect: expect.to_vec(),
    }
}

fn env_case(
    name: &'static str,
    yaml: impl Into<String>,
    env: &[(&'static str, &'static str)],
    expect: &[&'static str],
) -> Case {
    Case {
        name,
        yaml: yaml.into(),
        env: env.to_vec(),
        expect: expect.to_vec(),
    }
}

fn ms_with(extra: &str) -> String {
    format!("{MS}{extra}")
}

fn otlp(body: &str) -> String {
    format!("{MS}opentelemetry:\n  enabled: true\n{body}")
}

fn cases(tmp: &std::path::Path) -> Vec<Case> {
    let dir = tmp.display().to_string();
    let missing = tmp.join("missing.pem").display().to_string();
    vec![
        // --- core rules of the original (§1.4) ---
        case("no miniserver at all (empty file)", "", &["no Miniserver configured: add a 'miniservers:' entry with a host, or set LOXONE_HOST"]),
        case("empty miniservers list", "miniservers: []\n", &["no Miniserver configured"]),
        case("listen_port too high", ms_with("listen_port: 70000\n"), &["listen_port: 70000 is out of range (allowed 1-65535)"]),
        case("listen_port zero", ms_with("listen_port: 0\n"), &["listen_port: 0 is out of range (allowed 1-65535)"]),
        case("listen_port negative", ms_with("listen_port: -1\n"), &["listen_port: -1 is out of range (allowed 1-65535)"]),
        case("listen_port huge", ms_with("listen_port: 99999999999\n"), &["listen_port: 99999999999 is out of range"]),
        case("listen_address hostname", ms_with("listen_address: localhost\n"), &["listen_address: 'localhost' is not an IP address (IPv4 or IPv6 literal, e.g. 0.0.0.0 or ::)"]),
        case("listen_address with port", ms_with("listen_address: '0.0.0.0:9504'\n"), &["listen_address: '0.0.0.0:9504' is not an IP address", "listen_port"]),
        case("listen_address broken bracket", ms_with("listen_address: '[::1'\n"), &["listen_address: '[::1' is not an IP address"]),
        case("log_level unknown", ms_with("log_level: verbose\n"), &["log_level: 'verbose' is not a log level (one of debug, info, warning, error; case-insensitive)"]),
        case("log_format unknown", ms_with("log_format: xml\n"), &["log_format: 'xml' is not a log format (json or text; case-insensitive)"]),
        case("host with underscore", "miniservers:\n  - host: my_ms\n    username: u\n    password: p\n", &["miniservers[0].host: 'my_ms' is not a valid host (an IPv4 or IPv6 address or a host name"]),
        case("host with port", "miniservers:\n  - host: '10.0.0.1:80'\n    username: u\n    password: p\n", &["miniservers[0].host: '10.0.0.1:80' is not a valid host", "put the port in 'port:'"]),
        case("host with scheme", "miniservers:\n  - host: 'http://ms'\n    username: u\n    password: p\n", &["miniservers[0].host: 'http://ms' is not a valid host", "without 'http://'"]),
        case("host empty", "miniservers:\n  - host: ''\n    username: u\n    password: p\n", &["miniservers[0].host: '' is not a valid host", "empty"]),
        case("bracketed non-IPv6 host", "miniservers:\n  - host: '[ms.local]'\n    username: u\n    password: p\n", &["miniservers[0].host: '[ms.local]' is not a valid IPv6 address"]),
        case("username missing", "miniservers:\n  - host: ms\n    password: p\n", &["miniservers[0].username: missing; a Loxone user name is required"]),
        case("username empty", "miniservers:\n  - host: ms\n    username: ''\n    password: p\n", &["miniservers[0].username: '' is empty (a Loxone user name is required)"]),
        case("password missing", "miniservers:\n  - host: ms\n    username: u\n", &["miniservers[0].password: missing; a password is required"]),
        case("password empty", "miniservers:\n  - host: ms\n    username: u\n    password: ''\n", &["miniservers[0].password: the password is empty (a password is required)"]),
        case("name empty", "miniservers:\n  - name: ''\n    host: ms\n    username: u\n    password: p\n", &["miniservers[0].name: '' is empty (a Miniserver needs a non-empty name"]),
        case("port out of range", ms_with("").replace("password: pw\n", "password: pw\n    port: 70000\n"), &["miniservers[0].port: 70000 is out of range (allowed 1-65535)"]),
        case("ssl_port negative", ms_with("").replace("password: pw\n", "password: pw\n    ssl_port: -443\n"), &["miniservers[0].ssl_port: -443 is out of range (allowed 1-65535)"]),
        case("duplicate names", "miniservers:\n  - {name: a, host: h1, username: u, password: p}\n  - {name: a, host: h2, username: u, password: p}\n", &["miniservers[1].name: 'a' is already used by miniservers[0] (Miniserver names must be unique"]),
        case("first name defaults to host, clashes", "miniservers:\n  - {host: h1, username: u, password: p}\n  - {name: h1, host: h2, username: u, password: p}\n", &["miniservers[1].name: 'h1' is already used by miniservers[0]"]),
        case("second entry without name", "miniservers:\n  - {host: h1, username: u, password: p}\n  - {host: h2, username: u, password: p}\n", &["miniservers[1].name: missing; every Miniserver after the first needs a unique name"]),
        // --- defects of the original (§1.2 quirks, §9.1 item 13) ---
        case("entry without host is not dropped", "miniservers:\n  - {name: home, host: h1, username: u, password: p}\n  - {name: office, username: u, password: p}\n", &["miniservers[1].host: missing in entry miniservers[1] ('office')", "silently skipped"]),
        case("only entry without host", "miniservers:\n  - {name: home, username: u, password: p}\n", &["miniservers[0].host: missing", "LOXONE_HOST"]),
        case("string 'false' for use_encryption", ms_with("").replace("password: pw\n", "password: pw\n    use_encryption: 'false'\n"), &["miniservers[0].use_encryption: 'false' is text, not a boolean (write true or false without quotes)"]),
        case("string 'false' for include_text_values", ms_with("include_text_values: 'false'\n"), &["include_text_values: 'false' is text, not a boolean"]),
        case("number for a boolean", ms_with("include_text_values: 1\n"), &["include_text_values: 1 is not a boolean (write true or false)"]),
        case("string 'false' for opentelemetry.enabled", ms_with("opentelemetry:\n  enabled: 'false'\n"), &["opentelemetry.enabled: 'false' is text, not a boolean"]),
        case("string 'true' for tls.enabled", otlp("  endpoint: http://c:4317\n  tls:\n    enabled: 'true'\n"), &["opentelemetry.tls.enabled: 'true' is text, not a boolean"]),
        case("scalar where a list belongs", ms_with("exclude_rooms: Kitchen\n"), &["exclude_rooms: 'Kitchen' is not a list (write [Kitchen] or one '- Kitchen' item per line)"]),
        case("mapping where a list belongs", ms_with("include_types: {a: b}\n"), &["include_types: a mapping is not a list"]),
        case("number inside a list", ms_with("exclude_types: [Switch, 5]\n"), &["exclude_types[1]: 5 is not text"]),
        case("non-numeric port", ms_with("").replace("password: pw\n", "password: pw\n    port: abc\n"), &["miniservers[0].port: 'abc' is text, not a number (write the number without quotes; expected a port 1-65535)"]),
        case("quoted port", ms_with("").replace("password: pw\n", "password: pw\n    port: '80'\n"), &["miniservers[0].port: '80' is text, not a number"]),
        case("fractional port", ms_with("").replace("password: pw\n", "password: pw\n    port: 80.5\n"), &["miniservers[0].port: 80.5 is not a whole number (expected a port 1-65535)"]),
        case("quoted interval", otlp("  endpoint: http://c:4317\n  interval_seconds: '20'\n"), &["opentelemetry.interval_seconds: '20' is text, not a number"]),
        case("fractional interval", otlp("  endpoint: http://c:4317\n  interval_seconds: 30.9\n"), &["opentelemetry.interval_seconds: 30.9 is not a whole number (expected a number of seconds, 10-300)"]),
        case("number where text belongs", "miniservers:\n  - {name: 7, host: h, username: u, password: p}\n", &["miniservers[0].name: 7 is not text (put it in quotes"]),
        case("top level is a list", "- host: ms\n", &["the top level is a list, not a mapping of settings"]),
        case("integer beyond 64 bits", "listen_port: 99999999999999999999999\n", &["listen_port: the number is too large", "ports are 1-65535", "line 1"]),
        case("merge key with a scalar", "miniservers:\n  - host: ms\n    username: u\n    password: p\n    <<: 5\n", &["a '<<' merge key needs a mapping or a list of mappings"]),
        case("top level is a scalar", "hello\n", &["the top level is text, not a mapping of settings"]),
        case("miniservers is a scalar", "miniservers: home\n", &["miniservers: text is not a list"]),
        case("miniserver entry is a scalar", "miniservers:\n  - ms.local\n", &["miniservers[0]: text is not a mapping", "with a space after each ':'"]),
        case("opentelemetry is not a mapping", ms_with("opentelemetry: true\n"), &["opentelemetry: true is not a mapping"]),
        case("tls is not a mapping", otlp("  endpoint: http://c:4317\n  tls: [a]\n"), &["opentelemetry.tls: a list is not a mapping"]),
        case("auth is not a mapping", otlp("  endpoint: http://c:4317\n  auth: token\n"), &["opentelemetry.auth: text is not a mapping"]),
        case("headers is a list (VR-011)", otlp("  endpoint: http://c:4317\n  auth:\n    headers: [a, b]\n"), &["opentelemetry.auth.headers: a list is not a mapping"]),
        case("unknown top-level key with suggestion", ms_with("listen_prot: 9504\n"), &["unknown key 'listen_prot' (did you mean 'listen_port'?)"]),
        case("unknown miniserver key", ms_with("").replace("password: pw\n", "password: pw\n    passwort: x\n"), &["miniservers[0]: unknown key 'passwort' (did you mean 'password'?)"]),
        case("unknown opentelemetry key", otlp("  endpoint: http://c:4317\n  endpiont: x\n"), &["opentelemetry: unknown key 'endpiont' (did you mean 'endpoint'?)"]),
        case("unknown tls key", otlp("  endpoint: http://c:4317\n  tls:\n    ca_path: x\n"), &["opentelemetry.tls: unknown key 'ca_path'"]),
        case("unknown key without a close match", ms_with("banana: 1\n"), &["unknown key 'banana' (known keys: miniservers, listen_port"]),
        case("non-text key", ms_with("1: x\n"), &["top level: key 1 is not text"]),
        case("invalid YAML", "miniservers: [\n", &["is not valid YAML", "line"]),
        case("duplicate YAML key", ms_with("listen_port: 1\nlisten_port: 2\n"), &["is not valid YAML", "duplicate entry"]),
        // --- OTLP rules VR-002…VR-010 ---
        case("VR-002 endpoint missing", otlp(""), &["opentelemetry.endpoint: missing; an endpoint is required when OTLP export is enabled"]),
        case("VR-003 scheme", otlp("  endpoint: ftp://c:4317\n"), &["opentelemetry.endpoint: 'ftp://c:4317' has scheme 'ftp', which is not supported (http:// or https:// only)"]),
        case("VR-003 no scheme", otlp("  endpoint: collector:4317\n"), &["opentelemetry.endpoint: 'collector:4317' is not a URL with an http:// or https:// scheme"]),
        case("VR-003 no host", otlp("  endpoint: 'http://'\n"), &["opentelemetry.endpoint: 'http://' has no host"]),
        case("VR-003 port without host", otlp("  endpoint: 'http://:4317'\n"), &["opentelemetry.endpoint: 'http://:4317' has no host"]),
        case("VR-004 port too high", otlp("  endpoint: http://c:70000\n"), &["opentelemetry.endpoint: 'http://c:70000' has port 70000, which is out of range (allowed 1-65535)"]),
        case("VR-004 port zero", otlp("  endpoint: http://c:0\n"), &["opentelemetry.endpoint: 'http://c:0' has port 0, which is out of range"]),
        case("VR-004 port enormous", otlp("  endpoint: http://c:123456789012345678901234567890\n"), &["opentelemetry.endpoint:", "out of range (allowed 1-65535)"]),
        case("VR-005 protocol", otlp("  endpoint: http://c:4317\n  protocol: udp\n"), &["opentelemetry.protocol: 'udp' is not an OTLP protocol (grpc, http or http/protobuf"]),
        case("VR-006 interval too low", otlp("  endpoint: http://c:4317\n  interval_seconds: 5\n"), &["opentelemetry.interval_seconds: 5 is out of range (allowed 10-300 seconds)"]),
        case("VR-006 interval too high", otlp("  endpoint: http://c:4317\n  interval_seconds: 301\n"), &["opentelemetry.interval_seconds: 301 is out of range (allowed 10-300 seconds)"]),
        case("VR-007 timeout too high", otlp("  endpoint: http://c:4317\n  timeout_seconds: 61\n  interval_seconds: 120\n"), &["opentelemetry.timeout_seconds: 61 is out of range (allowed 5-60 seconds)"]),
        case("VR-007 timeout too low", otlp("  endpoint: http://c:4317\n  timeout_seconds: 4\n"), &["opentelemetry.timeout_seconds: 4 is out of range (allowed 5-60 seconds)"]),
        case("VR-008 timeout not below interval", otlp("  endpoint: http://c:4317\n  interval_seconds: 20\n  timeout_seconds: 20\n"), &["opentelemetry.timeout_seconds: 20 s must be less than the export interval (20 s)"]),
        case("VR-008 default timeout not below interval", otlp("  endpoint: http://c:4317\n  interval_seconds: 10\n  timeout_seconds: ~\n"), &["opentelemetry.timeout_seconds: the default 15 s must be less than the export interval (10 s)"]),
        case("VR-009 tls without cert_path", otlp("  endpoint: http://c:4317\n  tls:\n    enabled: true\n"), &["opentelemetry.tls.cert_path: missing; a CA certificate file is required when opentelemetry.tls.enabled is true"]),
        case("VR-010 cert file missing", otlp(&format!("  endpoint: http://c:4317\n  tls:\n    enabled: true\n    cert_path: '{missing}'\n")), &["opentelemetry.tls.cert_path: '", "missing.pem' does not exist (expected a PEM CA certificate file)"]),
        case("VR-010 cert path is a directory", otlp(&format!("  endpoint: http://c:4317\n  tls:\n    cert_path: '{dir}'\n")), &["opentelemetry.tls.cert_path: '", "is not a regular file (expected a PEM CA certificate file)"]),
        // --- new keys ---
        case("tls_ca_file missing", ms_with("").replace("password: pw\n", &format!("password: pw\n    use_encryption: true\n    tls_ca_file: '{missing}'\n")), &["miniservers[0].tls_ca_file: '", "does not exist (expected a PEM CA certificate file)"]),
        case("tls_fingerprint not hex", ms_with("").replace("password: pw\n", "password: pw\n    use_encryption: true\n    tls_fingerprint: 'zz:11'\n"), &["miniservers[0].tls_fingerprint: 'zz:11' is not a SHA-256 fingerprint (expected 64 hex digits"]),
        case("tls_fingerprint without encryption", ms_with("").replace("password: pw\n", &format!("password: pw\n    tls_fingerprint: '{}'\n", "ab".repeat(32))), &["miniservers[0].tls_fingerprint: set, but use_encryption and force_encryption are false: a pinned certificate needs use_encryption: true"]),
        case("tls_ca_file and tls_fingerprint together", ms_with("").replace("password: pw\n", &format!("password: pw\n    use_encryption: true\n    tls_ca_file: '{missing}'\n    tls_fingerprint: '{}'\n", "ab".repeat(32))), &["miniservers[0].tls_fingerprint: set together with miniservers[0].tls_ca_file; use one of them"]),
        case("compression unknown", otlp("  endpoint: http://c:4317\n  compression: brotli\n"), &["opentelemetry.compression: 'brotli' is not a supported compression (none or gzip)"]),
        case("max_request_bytes too small", otlp("  endpoint: http://c:4317\n  max_request_bytes: 100\n"), &["opentelemetry.max_request_bytes: 100 is out of range (allowed 16384-67108864 bytes"]),
        case("client cert without key", otlp(&format!("  endpoint: https://c:4317\n  tls:\n    client_cert_path: '{missing}'\n")), &["opentelemetry.tls.client_key_path: missing; a client certificate is configured, and mutual TLS needs both"]),
        case("service_name empty", otlp("  endpoint: http://c:4317\n  service_name: ''\n"), &["opentelemetry.service_name: '' is empty"]),
        case("bad header name", otlp("  endpoint: http://c:4317\n  auth:\n    headers:\n      'Bad Header': x\n"), &["opentelemetry.auth.headers: header name 'Bad' is followed by a space, which is not allowed in an HTTP header name"]),
        case("resource attribute not text", otlp("  endpoint: http://c:4317\n  resource_attributes:\n    version: 2\n"), &["opentelemetry.resource_attributes.version: 2 is not text"]),
        // --- environment variables ---
        env_case("LOXONE_PORT not a number", MS, &[("LOXONE_PORT", "abc")], &["LOXONE_PORT: 'abc' is not a whole number (expected a port 1-65535)"]),
        env_case("LOXONE_PORT out of range", MS, &[("LOXONE_PORT", "70000")], &["LOXONE_PORT: 70000 is out of range (allowed 1-65535)"]),
        env_case("LOXONE_LISTEN_PORT out of range", MS, &[("LOXONE_LISTEN_PORT", "0")], &["LOXONE_LISTEN_PORT: 0 is out of range (allowed 1-65535)"]),
        env_case("LOXONE_LOG_LEVEL unknown", MS, &[("LOXONE_LOG_LEVEL", "loud")], &["LOXONE_LOG_LEVEL: 'loud' is not a log level"]),
        env_case("LOXONE_HOST invalid", MS, &[("LOXONE_HOST", "bad_host")], &["LOXONE_HOST: 'bad_host' is not a valid host"]),
        env_case("env without LOXONE_HOST", "", &[("LOXONE_USERNAME", "u"), ("LOXONE_PASSWORD", "p")], &["no Miniserver configured: add a 'miniservers:' entry with a host, or set LOXONE_HOST"]),
        env_case("LOXONE_OTLP_ENABLED unrecognised", MS, &[("LOXONE_OTLP_ENABLED", "maybe")], &["LOXONE_OTLP_ENABLED: 'maybe' is not a boolean"]),
        env_case("LOXONE_OTLP_INTERVAL not a number", MS, &[("LOXONE_OTLP_ENABLED", "true"), ("LOXONE_OTLP_ENDPOINT", "http://c:4317"), ("LOXONE_OTLP_INTERVAL", "1m")], &["LOXONE_OTLP_INTERVAL: '1m' is not a whole number (expected seconds, 10-300)"]),
        env_case("LOXONE_OTLP_ENDPOINT bad port", MS, &[("LOXONE_OTLP_ENABLED", "1"), ("LOXONE_OTLP_ENDPOINT", "http://c:65536")], &["LOXONE_OTLP_ENDPOINT: 'http://c:65536' has port 65536, which is out of range"]),
        env_case("OTEL protocol http/json", MS, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")], &["OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' is not supported (this exporter sends protobuf: use grpc or http/protobuf)"]),
        env_case("OTEL interval too short", MS, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRIC_EXPORT_INTERVAL", "5000")], &["OTEL_METRIC_EXPORT_INTERVAL: 5000 ms is out of range (allowed 10000-300000 ms, i.e. 10-300 seconds)"]),
        env_case("OTEL timeout not a number", MS, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "10s")], &["OTEL_EXPORTER_OTLP_METRICS_TIMEOUT: '10s' is not a whole number of milliseconds"]),
        env_case("OTEL timeout above OTEL interval", MS, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_METRIC_EXPORT_INTERVAL", "10000"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "15000")], &["OTEL_EXPORTER_OTLP_TIMEOUT: 15 s must be less than the export interval (10 s)"]),
        env_case("OTEL endpoint without host", MS, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://:4318")], &["OTEL_EXPORTER_OTLP_ENDPOINT: 'http://:4318' has no host"]),
        env_case("OTEL headers malformed", MS, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,broken")], &["OTEL_EXPORTER_OTLP_HEADERS: entry 2 has no '=' (expected name=value pairs"]),
        env_case("OTEL resource attributes malformed", MS, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_RESOURCE_ATTRIBUTES", "env")], &["OTEL_RESOURCE_ATTRIBUTES: entry 'env' has no '='"]),
        env_case("OTEL compression unknown", MS, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")], &["OTEL_EXPORTER_OTLP_COMPRESSION: 'zstd' is not a supported compression (none or gzip)"]),
        env_case("OTEL certificate missing", MS, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")], &["OTEL_EXPORTER_OTLP_CERTIFICATE: '/nonexistent/ca.pem' does not exist"]),
        env_case("empty header variable name", MS, &[("LOXONE_OTLP_ENABLED", "true"), ("LOXONE_OTLP_ENDPOINT", "http://c:4317"), ("LOXONE_OTLP_AUTH_HEADER_", "x")], &["LOXONE_OTLP_AUTH_HEADER_: the variable names no header"]),
    ]
}

#[test]
fn every_bad_configuration_is_reported_with_field_value_and_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let all = cases(tmp.path());
    assert!(all.len() >= 30, "only {} cases", all.len());
    let mut failures = Vec::new();
    for c in &all {
        let env: Vec<(&str, &str)> = c.env.clone();
        let msgs = match run(&c.yaml, &env) {
            Ok(_) => {
                failures.push(format!("{}: loaded without error", c.name));
                continue;
            }
            Err(e) => e.0.into_iter().map(|e| e.0).collect::<Vec<_>>(),
        };
        if std::env::var_os("CONFIG_ERRORS_PRINT").is_some() {
            println!("== {}\n{}", c.name, msgs.join("\n"));
        }
        let hit = msgs
            .iter()
            .any(|m| c.expect.iter().all(|want| m.contains(want)));
        if !hit {
            failures.push(format!(
                "{}: no message contains all of {:?}\n  got: {msgs:#?}",
                c.name, c.expect
            ));
        }
        for m in &msgs {
            // Complete sentences, not fragments.
            if m.len() < 20 || m.ends_with(':') || m.contains("  ") {
                failures.push(format!("{}: message is not a sentence: {m}", c.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_error_is_reported_at_once() {
    let yaml = "\
miniservers:
  - name: home
    host: my_ms
    port: 70000
    username: ''
    password: pw
    use_encryption: 'false'
  - name: home
    host: 10.0.0.2
    username: u
    password: p
listen_port: 0
listen_address: localhost
log_level: loud
exclude_rooms: Kitchen
listen_prot: 1
opentelemetry:
  enabled: true
  endpoint: http://c:70000
  interval_seconds: 5
";
    let msgs = messages(yaml, &[("LOXONE_PORT", "")]);
    let expected = [
        "miniservers[0].host: 'my_ms'",
        "miniservers[0].port: 70000",
        "miniservers[0].username: ''",
        "miniservers[0].use_encryption: 'false'",
        "miniservers[1].name: 'home' is already used",
        "listen_port: 0",
        "listen_address: 'localhost'",
        "log_level: 'loud'",
        "exclude_rooms: 'Kitchen'",
        "unknown key 'listen_prot'",
        "opentelemetry.endpoint: 'http://c:70000'",
        "opentelemetry.interval_seconds: 5",
    ];
    for want in expected {
        assert!(
            msgs.iter().any(|m| m.contains(want)),
            "missing {want:?} in {msgs:#?}"
        );
    }
    assert_eq!(msgs.len(), expected.len(), "{msgs:#?}");
    // The joined Display form carries all of them too.
    let joined = run(yaml, &[]).unwrap_err().to_string();
    assert!(joined.contains("listen_port: 0") && joined.contains("log_level: 'loud'"));
}

#[test]
fn a_disabled_opentelemetry_section_is_type_checked_but_not_range_checked() {
    // The original skipped VR-* when disabled; configs relying on that must still load.
    let ok = run(
        &format!(
            "{MS}opentelemetry:\n  enabled: false\n  interval_seconds: 5\n  endpoint: ftp://x\n"
        ),
        &[],
    );
    assert!(ok.is_ok(), "{ok:?}");
    // Types and unknown keys are still mistakes worth reporting.
    let msgs = messages(
        &format!("{MS}opentelemetry:\n  enabled: false\n  interval_seconds: '5'\n  endpont: x\n"),
        &[],
    );
    assert_eq!(msgs.len(), 2, "{msgs:#?}");
    // Unrelated OTEL_* variables never stop an exporter with OTLP off.
    let ok = run(
        MS,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "x"),
        ],
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn secrets_never_appear_in_error_messages() {
    const SECRET: &str = "hunter2-SeCrEt";
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        // A password with every neighbour wrong.
        (
            format!("miniservers:\n  - {{host: bad_host, username: '', password: {SECRET}, port: 0}}\nlisten_port: 0\n"),
            vec![],
        ),
        // A numeric password is a type error; the message must not echo it.
        ("miniservers:\n  - {host: ms, username: u, password: 31415926}\n".to_string(), vec![]),
        // Secret in a header value with a line break, and a non-text header value.
        (
            otlp(&format!("  endpoint: http://c:4317\n  auth:\n    headers:\n      Authorization: \"Bearer {SECRET}\\n\"\n      X-Key: 31415926\n")),
            vec![],
        ),
        // Secret in OTEL headers with a malformed entry, and in LOXONE header / password vars.
        (
            MS.to_string(),
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:70000"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20hunter2-SeCrEt,hunter2-SeCrEt"),
                ("LOXONE_OTLP_AUTH_HEADER_BAD_NAME_ ", SECRET),
                ("LOXONE_PASSWORD", SECRET),
                ("LOXONE_PORT", "x"),
            ],
        ),
        // Credentials inside the endpoint URL.
        (otlp(&format!("  endpoint: http://user:{SECRET}@c:4317\n")), vec![]),
        // ':' typed for '=': the value ends up in the header name ('=' from base64 padding).
        (
            MS.to_string(),
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization:Bearer hunter2-SeCrEt=="),
            ],
        ),
        // A YAML error right after the secret.
        (format!("miniservers:\n  - password: {SECRET}\n    host: [\n"), vec![]),
        // A URL with credentials pasted as the host, in the file and in LOXONE_HOST.
        (
            format!("miniservers:\n  - host: 'http://admin:{SECRET}@192.168.1.77'\n    username: u\n    password: p\n"),
            vec![],
        ),
        (
            "miniservers:\n  - host: '[admin:hunter2-SeCrEt@x]'\n    username: u\n    password: p\n".to_string(),
            vec![],
        ),
        (MS.to_string(), vec![("LOXONE_HOST", "admin:hunter2-SeCrEt@10.0.0.1")]),
        // A Miniserver entry that is a URL, or `password:x` without its space.
        (format!("miniservers:\n  - http://admin:{SECRET}@h\n"), vec![]),
        (format!("miniservers:\n  - password:{SECRET}\n"), vec![]),
        (format!("miniservers: 'http://admin:{SECRET}@h'\n"), vec![]),
        // A header value where the `auth:` section belongs.
        (otlp(&format!("  endpoint: http://c:4317\n  auth: 'Bearer {SECRET}'\n")), vec![]),
    ];
    for (yaml, env) in cases {
        let msgs = messages(&yaml, &env);
        assert!(!msgs.is_empty());
        for m in &msgs {
            assert!(!m.contains(SECRET), "secret leaked: {m}");
            assert!(!m.contains("31415926"), "numeric secret leaked: {m}");
        }
    }
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("nope.yml");
    let lookup = |_: &str| None;
    let err = load(Some(&path), &lookup).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].0.contains("nope.yml' does not exist"), "{err}");
}

#[test]
fn load_str_without_env_names_is_plain() {
    // load_str is load_str_with_env_names with no header variables.
    let lookup = |_: &str| None;
    let err = load_str("listen_port: 0\n", None, &lookup).unwrap_err();
    assert!(err
        .0
        .iter()
        .any(|e| e.0.contains("listen_port: 0 is out of range")));
}

#[test]
fn a_value_of_the_wrong_type_is_one_error_not_also_missing() {
    let msgs = messages(
        "miniservers:\n  - {name: 7, host: 123, username: 5, password: 123456}\n  - {name: [x], host: h2, username: u, password: p}\n",
        &[],
    );
    assert!(
        msgs.iter().all(|m| !m.contains("missing")),
        "a type error must not be followed by 'missing': {msgs:#?}"
    );
    for field in [
        "[0].name",
        "[0].host",
        "[0].username",
        "[0].password",
        "[1].name",
    ] {
        assert_eq!(
            msgs.iter()
                .filter(|m| m.starts_with(&format!("miniservers{field}:")))
                .count(),
            1,
            "{field}: {msgs:#?}"
        );
    }
}
