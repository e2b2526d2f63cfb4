//! Command-line interface in the Prometheus exporter style (`--web.listen-address`,
//! `--log.level`, …). Flags override the configuration file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat, LogLevel};
use crate::http::DEFAULT_TELEMETRY_PATH;

/// Help heading of the daemon's flags. They are global, so `check` and `healthcheck` take
/// them too, and clap lists them under `simulate` as well, which refuses them: the heading
/// says so.
const EXPORTER_OPTIONS: &str = "Exporter options (not for `simulate`)";

/// loxone-exporter: Loxone Miniserver values for Prometheus and OpenTelemetry.
#[derive(Debug, Parser)]
#[command(name = "loxone-exporter", disable_version_flag = true)]
pub struct Cli {
    /// Subcommand; none runs the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file (default: ./config.yml, then ./config.yaml).
    #[arg(short = 'c', long = "config", global = true, help_heading = EXPORTER_OPTIONS, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on, HOST:PORT (`:9504` for all interfaces, IPv4 and IPv6;
    /// `0.0.0.0:9504` for IPv4 only, `[::1]:9504` for IPv6 loopback).
    #[arg(long = "web.listen-address", global = true, help_heading = EXPORTER_OPTIONS, value_name = "HOST:PORT")]
    pub listen_address: Option<String>,
    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", global = true, help_heading = EXPORTER_OPTIONS, default_value = DEFAULT_TELEMETRY_PATH, value_name = "PATH")]
    pub telemetry_path: String,
    /// Most /metrics requests served at once; more get 503 (0: no limit).
    #[arg(long = "web.max-requests", global = true, help_heading = EXPORTER_OPTIONS, default_value_t = crate::http::DEFAULT_MAX_REQUESTS, value_name = "N")]
    pub max_requests: usize,
    /// Exporter-toolkit web configuration file (TLS, basic auth).
    #[arg(long = "web.config.file", global = true, help_heading = EXPORTER_OPTIONS, value_name = "PATH")]
    pub web_config: Option<PathBuf>,
    /// Log level: debug, info, warning, error.
    #[arg(long = "log.level", global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: json or text.
    #[arg(long = "log.format", global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Run against a built-in simulated Miniserver with a real structure file.
    #[arg(long)]
    pub demo: bool,
    /// Print version, commit, build date and rustc version.
    #[arg(short = 'V', long = "version")]
    pub version: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration and print the effective settings (secrets masked).
    Check,
    /// Run a simulated Miniserver (for trying dashboards and collectors without hardware).
    Simulate(Box<crate::loxone::simulator::SimulatorOptions>),
    /// Query the running exporter's /healthz; exit 0 on HTTP 200, healthy or degraded (for
    /// container HEALTHCHECK).
    Healthcheck(crate::healthcheck::HealthcheckArgs),
}

/// A flag value that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct FlagError {
    /// The flag.
    pub flag: &'static str,
    /// What is wrong, naming the value and the rule.
    pub message: String,
}

/// Records that a flag set `setting`, replacing where it came from before (a variable the
/// flag overrides), so `check` names the source that won.
fn set_origin(config: &mut Config, setting: &str, flag: &str) {
    config.origins.retain(|(s, _)| s != setting);
    config.origins.push((setting.to_string(), flag.to_string()));
}

/// Parses `--web.listen-address`: `HOST:PORT`, `[v6]:PORT` or `:PORT` (all interfaces).
pub fn parse_listen_address(s: &str) -> Result<(Option<IpAddr>, u16), FlagError> {
    let err = |m: String| FlagError {
        flag: "--web.listen-address",
        message: m,
    };
    if let Some(port) = s.strip_prefix(':') {
        let port = parse_port(port).map_err(err)?;
        return Ok((None, port));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(err(format!(
                "'{s}': port 0 is out of range (allowed 1-65535)"
            )));
        }
        return Ok((Some(sa.ip()), sa.port()));
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| {
        err(format!(
            "'{s}' is not HOST:PORT (e.g. 0.0.0.0:9504, [::]:9504, :9504)"
        ))
    })?;
    let port = parse_port(port).map_err(err)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().map_err(|_| {
        err(format!(
            "'{host}' is not an IP address (IPv4 or IPv6 literal)"
        ))
    })?;
    Ok((Some(ip), port))
}

fn parse_port(s: &str) -> Result<u16, String> {
    // digits only: `str::parse` also takes a leading '+'
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port '{s}' is not a number (allowed 1-65535)"));
    }
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range (allowed 1-65535)")),
        Err(_) => Err(format!("port '{s}' is not a number (allowed 1-65535)")),
    }
}

/// Checks `--web.telemetry-path`: an absolute path (a missing leading `/` is added) that
/// is not one of the other pages and holds no route-pattern characters.
pub fn parse_telemetry_path(s: &str) -> Result<String, FlagError> {
    let err = |m: String| FlagError {
        flag: "--web.telemetry-path",
        message: m,
    };
    let path = if s.starts_with('/') {
        s.to_string()
    } else {
        format!("/{s}")
    };
    if path == "/" || path == "/healthz" {
        return Err(err(format!(
            "'{s}' is already the {} (choose another path, e.g. /metrics)",
            if path == "/" {
                "landing page"
            } else {
                "health endpoint"
            }
        )));
    }
    // requests arrive percent-encoded, so a non-ASCII path could never be reached; the
    // router reads `{`, `}`, `*` and a segment starting with ':' as patterns
    if let Some(c) = path
        .chars()
        .find(|c| matches!(c, '{' | '}' | '*' | '?' | '#' | '%') || !c.is_ascii_graphic())
    {
        return Err(err(format!(
            "'{s}' contains {c:?}, which is not allowed in the path (ASCII letters, digits, '/', '-', '_', '.' and the like)"
        )));
    }
    // the landing page links to the path: "//host/x" (or "/\\host/x", which browsers
    // read alike) would be a link to another site
    if path.contains("//") || path.contains('\\') {
        return Err(err(format!(
            "'{s}' contains '//' or '\\', which a browser reads as the start of another host's address (use single '/' between segments)"
        )));
    }
    if path.split('/').any(|segment| segment.starts_with(':')) {
        return Err(err(format!(
            "'{s}' has a segment starting with ':', which is not allowed (it would be a route pattern)"
        )));
    }
    Ok(path)
}

/// Parses `--log.level` (case-insensitive; `warn` = `warning`).
pub fn parse_log_level(s: &str) -> Result<LogLevel, FlagError> {
    match s.to_ascii_lowercase().as_str() {
        "debug" => Ok(LogLevel::Debug),
        "info" => Ok(LogLevel::Info),
        "warning" | "warn" => Ok(LogLevel::Warning),
        "error" => Ok(LogLevel::Error),
        _ => Err(FlagError {
            flag: "--log.level",
            message: format!("'{s}' is not a log level (allowed debug, info, warning, error)"),
        }),
    }
}

/// Parses `--log.format` (case-insensitive).
pub fn parse_log_format(s: &str) -> Result<LogFormat, FlagError> {
    match s.to_ascii_lowercase().as_str() {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        _ => Err(FlagError {
            flag: "--log.format",
            message: format!("'{s}' is not a log format (allowed json, text)"),
        }),
    }
}

impl Cli {
    /// Every flag error, without a configuration to apply the flags to.
    pub fn flag_errors(&self) -> Vec<FlagError> {
        self.apply_to(None)
    }

    /// Applies the flags over a loaded configuration; returns every flag error.
    pub fn apply(&self, config: &mut Config) -> Result<(), Vec<FlagError>> {
        let errors = self.apply_to(Some(config));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Parses every flag, sets the valid ones on `config` (if given), returns the errors.
    fn apply_to(&self, mut config: Option<&mut Config>) -> Vec<FlagError> {
        let mut errors = Vec::new();
        match self.listen_address.as_deref().map(parse_listen_address) {
            Some(Ok((ip, port))) => {
                if let Some(c) = config.as_deref_mut() {
                    // `:PORT` is every interface, IPv6 included, as in node_exporter (the
                    // binary falls back to 0.0.0.0 where IPv6 is off)
                    c.listen_address = ip.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
                    c.listen_port = port;
                    set_origin(c, "listen_address", "--web.listen-address");
                    set_origin(c, "listen_port", "--web.listen-address");
                }
            }
            Some(Err(e)) => errors.push(e),
            None => {}
        }
        match self.log_level.as_deref().map(parse_log_level) {
            Some(Ok(l)) => {
                if let Some(c) = config.as_deref_mut() {
                    c.log_level = l;
                    set_origin(c, "log_level", "--log.level");
                }
            }
            Some(Err(e)) => errors.push(e),
            None => {}
        }
        match self.log_format.as_deref().map(parse_log_format) {
            Some(Ok(f)) => {
                if let Some(c) = config {
                    c.log_format = f;
                    set_origin(c, "log_format", "--log.format");
                }
            }
            Some(Err(e)) => errors.push(e),
            None => {}
        }
        if let Err(e) = parse_telemetry_path(&self.telemetry_path) {
            errors.push(e);
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_address_forms() {
        assert_eq!(parse_listen_address(":9504").unwrap(), (None, 9504));
        assert_eq!(
            parse_listen_address("127.0.0.1:1").unwrap(),
            (Some("127.0.0.1".parse().unwrap()), 1)
        );
        assert_eq!(
            parse_listen_address("[::1]:9504").unwrap(),
            (Some("::1".parse().unwrap()), 9504)
        );
        for bad in [
            "localhost:9504",
            "1.2.3.4",
            "1.2.3.4:70000",
            ":0",
            "[::1]:x",
            "1.2.3.4:+80",
            ":+9504",
        ] {
            let e = parse_listen_address(bad).unwrap_err();
            assert_eq!(e.flag, "--web.listen-address", "{bad}");
        }
    }

    #[test]
    fn telemetry_paths_that_would_collide_or_be_patterns_are_refused() {
        assert_eq!(parse_telemetry_path("/metrics").unwrap(), "/metrics");
        assert_eq!(
            parse_telemetry_path("prom/metrics").unwrap(),
            "/prom/metrics"
        );
        for bad in [
            "/",
            "",
            "/healthz",
            "healthz",
            "/a/{id}",
            "/a/*x",
            "/m etrics",
            "/m?x",
            "/:metrics",
            "/a/:b",
            "/é",
            "/m%20x",
            "//example.org/m",
            "/\\example.org/m",
            "/a//b",
        ] {
            let e = parse_telemetry_path(bad).unwrap_err();
            assert_eq!(e.flag, "--web.telemetry-path", "{bad}");
        }
    }

    #[test]
    fn levels_are_case_insensitive() {
        assert_eq!(parse_log_level("INFO").unwrap(), LogLevel::Info);
        assert_eq!(parse_log_level("Warn").unwrap(), LogLevel::Warning);
        assert!(parse_log_level("verbose")
            .unwrap_err()
            .message
            .contains("verbose"));
        assert_eq!(parse_log_format("JSON").unwrap(), LogFormat::Json);
    }
}
