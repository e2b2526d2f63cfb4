//! The effective configuration as text for `loxone-exporter check`, secrets masked.
//!
//! Output is YAML in the config file's schema (so it can be read as one, apart from the
//! masked secrets), every setting listed with its effective value, defaults included, and a
//! `# from VAR` comment on settings that came from an environment variable. Passwords and
//! header values print as `****` ([`crate::secret::MASK`]). Validation is not done here:
//! render a [`Config`] that [`super::load`] accepted.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Config, OtlpCompression, OtlpProtocol};
use crate::secret::MASK;

/// Renders the effective settings as YAML-like text; secrets print as `****`.
pub fn render_effective(config: &Config) -> String {
    let mut out = String::new();
    let origin = |path: &str| -> String {
        let from: Vec<&str> = config
            .origins
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.as_str())
            .collect();
        if from.is_empty() {
            String::new()
        } else {
            format!("  # from {}", from.join(", "))
        }
    };
    let _ = writeln!(
        out,
        "# Effective configuration of loxone-exporter (secrets shown as {MASK})"
    );
    match &config.source {
        Some(p) => {
            let _ = writeln!(out, "# config file: {}", p.display());
        }
        None => {
            let _ = writeln!(
                out,
                "# no config file: environment variables and defaults only"
            );
        }
    }

    let _ = writeln!(out, "miniservers:");
    for (i, ms) in config.miniservers.iter().enumerate() {
        let o = |field: &str| origin(&format!("miniservers[{i}].{field}"));
        let _ = writeln!(out, "  - name: {}{}", scalar(&ms.name), o("name"));
        let _ = writeln!(out, "    host: {}{}", scalar(&ms.host), o("host"));
        let _ = writeln!(out, "    port: {}{}", ms.port, o("port"));
        let _ = writeln!(out, "    ssl_port: {}", ms.ssl_port);
        let _ = writeln!(
            out,
            "    username: {}{}",
            scalar(&ms.username),
            o("username")
        );
        let _ = writeln!(out, "    password: '{MASK}'{}", o("password"));
        let _ = writeln!(out, "    use_encryption: {}", ms.use_encryption);
        let _ = writeln!(out, "    force_encryption: {}", ms.force_encryption);
        let _ = writeln!(
            out,
            "    tls_ca_file: {}",
            ms.tls_ca_file
                .as_ref()
                .map(|p| scalar(&p.display().to_string()))
                .unwrap_or_else(|| "null".into())
        );
        let _ = writeln!(
            out,
            "    tls_fingerprint: {}",
            ms.tls_fingerprint
                .as_deref()
                .map(scalar)
                .unwrap_or_else(|| "null".into())
        );
    }
    let _ = writeln!(
        out,
        "listen_address: {}{}",
        scalar(&config.listen_address.to_string()),
        origin("listen_address")
    );
    let _ = writeln!(
        out,
        "listen_port: {}{}",
        config.listen_port,
        origin("listen_port")
    );
    let _ = writeln!(
        out,
        "log_level: {}{}",
        config.log_level.as_str(),
        origin("log_level")
    );
    let _ = writeln!(
        out,
        "log_format: {}{}",
        config.log_format.as_str(),
        origin("log_format")
    );
    let f = &config.filters;
    for (key, list) in [
        ("exclude_rooms", &f.exclude_rooms),
        ("exclude_types", &f.exclude_types),
        ("exclude_names", &f.exclude_names),
        ("exclude_categories", &f.exclude_categories),
        ("include_rooms", &f.include_rooms),
        ("include_types", &f.include_types),
        ("include_names", &f.include_names),
        ("include_categories", &f.include_categories),
    ] {
        let items: Vec<String> = list.iter().map(|s| scalar(s)).collect();
        let _ = writeln!(out, "{key}: [{}]", items.join(", "));
    }
    let _ = writeln!(out, "include_text_values: {}", config.include_text_values);

    let otlp = &config.opentelemetry;
    let _ = writeln!(out, "opentelemetry:");
    let _ = writeln!(
        out,
        "  enabled: {}{}",
        otlp.enabled,
        origin("opentelemetry.enabled")
    );
    if !otlp.enabled {
        return out;
    }
    let endpoint_origin = origin("opentelemetry.endpoint");
    let _ = writeln!(
        out,
        "  endpoint: {}{}",
        scalar(&crate::secret::redact_url(&otlp.endpoint)),
        if endpoint_origin.is_empty() {
            "  # final URL".to_string()
        } else {
            format!("{endpoint_origin} (final URL)")
        }
    );
    let protocol = match otlp.protocol {
        OtlpProtocol::Grpc => "grpc",
        OtlpProtocol::HttpProtobuf => "http",
    };
    let _ = writeln!(
        out,
        "  protocol: {protocol}{}",
        origin("opentelemetry.protocol")
    );
    let _ = writeln!(
        out,
        "  interval_seconds: {}{}",
        seconds(otlp.interval),
        origin("opentelemetry.interval_seconds")
    );
    let _ = writeln!(
        out,
        "  timeout_seconds: {}{}",
        seconds(otlp.timeout),
        origin("opentelemetry.timeout_seconds")
    );
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| scalar(&p.display().to_string()))
            .unwrap_or_else(|| "null".into())
    };
    let _ = writeln!(out, "  tls:");
    let _ = writeln!(
        out,
        "    enabled: {}{}",
        otlp.tls.enabled,
        origin("opentelemetry.tls.enabled")
    );
    let _ = writeln!(
        out,
        "    cert_path: {}{}",
        path(&otlp.tls.ca_file),
        origin("opentelemetry.tls.cert_path")
    );
    let _ = writeln!(
        out,
        "    client_cert_path: {}{}",
        path(&otlp.tls.client_cert_file),
        origin("opentelemetry.tls.client_cert_path")
    );
    let _ = writeln!(
        out,
        "    client_key_path: {}{}",
        path(&otlp.tls.client_key_file),
        origin("opentelemetry.tls.client_key_path")
    );
    let _ = writeln!(out, "  auth:");
    if otlp.headers.is_empty() {
        let _ = writeln!(out, "    headers: {{}}");
    } else {
        let _ = writeln!(out, "    headers:{}", origin("opentelemetry.auth.headers"));
        for (name, _value) in &otlp.headers {
            let _ = writeln!(out, "      {}: '{MASK}'", scalar(name));
        }
    }
    let compression = match otlp.compression {
        OtlpCompression::None => "none",
        OtlpCompression::Gzip => "gzip",
    };
    let _ = writeln!(
        out,
        "  compression: {compression}{}",
        origin("opentelemetry.compression")
    );
    let _ = writeln!(out, "  max_request_bytes: {}", otlp.max_request_bytes);
    let _ = writeln!(
        out,
        "  service_name: {}{}",
        scalar(&otlp.service_name),
        origin("opentelemetry.service_name")
    );
    if otlp.resource_attributes.is_empty() {
        let _ = writeln!(out, "  resource_attributes: {{}}");
    } else {
        let _ = writeln!(
            out,
            "  resource_attributes:{}",
            origin("opentelemetry.resource_attributes")
        );
        for (k, v) in &otlp.resource_attributes {
            let _ = writeln!(out, "    {}: {}", scalar(k), scalar(v));
        }
    }
    out
}

/// Whole seconds as an integer, otherwise with a fraction.
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

/// A YAML scalar: plain when that reads back as the same text, single-quoted otherwise.
fn scalar(s: &str) -> String {
    let reserved = matches!(
        s.to_ascii_lowercase().as_str(),
        "" | "~" | "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
    );
    let plain = !reserved
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '/')
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | ':' | '@' | '+' | '-')
        })
        && s.parse::<f64>().is_err()
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_quote_only_when_needed() {
        assert_eq!(scalar("home"), "home");
        assert_eq!(scalar("192.168.1.100"), "192.168.1.100");
        assert_eq!(scalar("http://c:4317"), "http://c:4317");
        assert_eq!(scalar("::"), "'::'");
        assert_eq!(scalar("Living Room"), "'Living Room'");
        assert_eq!(scalar("yes"), "'yes'");
        assert_eq!(scalar("0123"), "'0123'");
        assert_eq!(scalar("it's"), "'it''s'");
    }
}
