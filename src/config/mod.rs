//! Configuration: the Python exporter's YAML schema and `LOXONE_*` variables, loaded into
//! typed structs, plus the standard `OTEL_*` variables for the OTLP export.
//!
//! This module owns the types and their defaults (`DEFAULT_*`, defined once). Loading,
//! environment overrides and validation live in [`load`]; every validation error is
//! collected and reported at once. Times are [`Duration`]s, secrets are [`Secret`]s.
//! The environment is passed in as a lookup function, never read or mutated globally, so
//! tests stay independent.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;

mod load;
mod otlp;
mod render;
mod walk;

pub use load::{
    find_default_config, load, load_str, load_str_with_env_names, otlp_header_env_names,
    ConfigError, ConfigErrors, Env, OTLP_HEADER_ENV_PREFIX,
};
pub use render::render_effective;

pub(crate) use load::yaml_nesting_problem;
pub(crate) use otlp::{header_problem, parse_endpoint};

/// Default HTTP listen port (the original's).
pub const DEFAULT_LISTEN_PORT: u16 = 9504;
/// Default listen address.
pub const DEFAULT_LISTEN_ADDRESS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
/// Default Miniserver HTTP/WebSocket port.
pub const DEFAULT_MINISERVER_PORT: u16 = 80;
/// Default Miniserver HTTPS/WSS port.
pub const DEFAULT_MINISERVER_SSL_PORT: u16 = 443;
/// Default OTLP export interval.
pub const DEFAULT_OTLP_INTERVAL: Duration = Duration::from_secs(30);
/// Default OTLP export timeout.
pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(15);
/// Default cap on one OTLP request's encoded size (below the 4 MiB gRPC default limit).
pub const DEFAULT_OTLP_MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;
/// Default OTLP `service.name`.
pub const DEFAULT_SERVICE_NAME: &str = "loxone-exporter";
/// Config files tried, in order, when no `--config` is given.
pub const DEFAULT_CONFIG_FILES: [&str; 2] = ["config.yml", "config.yaml"];

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Miniservers to read, at least one.
    pub miniservers: Vec<MiniserverConfig>,
    /// Address the HTTP server binds (IPv4 or IPv6 literal).
    pub listen_address: IpAddr,
    /// Port the HTTP server binds.
    pub listen_port: u16,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Log line format.
    pub log_format: LogFormat,
    /// Which controls become series.
    pub filters: FilterConfig,
    /// Export text states of text-only controls as `loxone_control_info`.
    pub include_text_values: bool,
    /// OTLP push.
    pub opentelemetry: OtlpConfig,
    /// The file this was loaded from, if any.
    pub source: Option<PathBuf>,
    /// Where settings not taken from the file came from: (setting path, variable name),
    /// e.g. `("opentelemetry.endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT")`. Shown by `check`.
    pub origins: Vec<(String, String)>,
    /// Settings that load but may not do what was meant (an `OTEL_*` variable the file
    /// outranks); `check` prints them and the daemon logs them at start.
    pub warnings: Vec<String>,
}

/// One Miniserver.
#[derive(Debug, Clone, PartialEq)]
pub struct MiniserverConfig {
    /// Unique name; the `miniserver` label. Defaults to `host` for the first entry.
    pub name: String,
    /// IP literal (v4 or v6, without brackets) or hostname.
    pub host: String,
    /// HTTP / ws:// port.
    pub port: u16,
    /// HTTPS / wss:// port.
    pub ssl_port: u16,
    /// User name.
    pub username: String,
    /// Password.
    pub password: Secret,
    /// Start with wss:// on `ssl_port`.
    pub use_encryption: bool,
    /// Like `use_encryption`, and never fall back to a clear-text connection.
    pub force_encryption: bool,
    /// PEM CA file to verify the Miniserver's certificate instead of accepting any.
    pub tls_ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint (hex, colons allowed) the Miniserver's certificate must match.
    pub tls_fingerprint: Option<String>,
}

/// Log verbosity (case-insensitive in the file; `warn` accepted for `warning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Everything.
    Debug,
    /// Normal operation.
    Info,
    /// Problems only.
    Warning,
    /// Errors only.
    Error,
}

impl LogLevel {
    /// The `tracing` level filter name.
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error => "error",
        }
    }

    /// Name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

impl LogFormat {
    /// Name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

/// Include / exclude lists. A control is exported when it matches every non-empty include
/// list and no exclude list. Rooms, types and categories match exactly; names are globs
/// (`*`, `?`, `[...]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Room names to drop.
    pub exclude_rooms: Vec<String>,
    /// Control types to drop.
    pub exclude_types: Vec<String>,
    /// Control-name globs to drop.
    pub exclude_names: Vec<String>,
    /// Category names to drop.
    pub exclude_categories: Vec<String>,
    /// If non-empty, only these rooms.
    pub include_rooms: Vec<String>,
    /// If non-empty, only these types.
    pub include_types: Vec<String>,
    /// If non-empty, only names matching one of these globs.
    pub include_names: Vec<String>,
    /// If non-empty, only these categories.
    pub include_categories: Vec<String>,
}

/// OTLP transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (tonic).
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpCompression {
    /// Uncompressed.
    None,
    /// gzip.
    Gzip,
}

/// TLS settings for the OTLP connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtlpTls {
    /// Use TLS (also implied by an `https://` endpoint).
    pub enabled: bool,
    /// PEM CA bundle to verify the collector (`tls.cert_path` / OTEL_EXPORTER_OTLP_CERTIFICATE).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mTLS.
    pub client_cert_file: Option<PathBuf>,
    /// PEM client key for mTLS.
    pub client_key_file: Option<PathBuf>,
}

/// OTLP push settings, after merging the file, `LOXONE_OTLP_*` and `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// Export at all. False also when `OTEL_SDK_DISABLED=true`.
    pub enabled: bool,
    /// Final URL requests go to. HTTP: including `/v1/metrics`; gRPC: scheme, host, port.
    pub endpoint: String,
    /// Transport.
    pub protocol: OtlpProtocol,
    /// Time between export ticks.
    pub interval: Duration,
    /// Deadline for one export request.
    pub timeout: Duration,
    /// TLS.
    pub tls: OtlpTls,
    /// Headers sent with every request (names as configured; gRPC lowercases them).
    pub headers: Vec<(String, Secret)>,
    /// Body compression.
    pub compression: OtlpCompression,
    /// Largest encoded request; bigger snapshots are split.
    pub max_request_bytes: usize,
    /// `service.name` resource attribute.
    pub service_name: String,
    /// Extra resource attributes (config, then `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: false,
            endpoint: String::new(),
            protocol: OtlpProtocol::Grpc,
            interval: DEFAULT_OTLP_INTERVAL,
            timeout: DEFAULT_OTLP_TIMEOUT,
            tls: OtlpTls::default(),
            headers: Vec::new(),
            compression: OtlpCompression::None,
            max_request_bytes: DEFAULT_OTLP_MAX_REQUEST_BYTES,
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            resource_attributes: Vec::new(),
        }
    }
}

impl Config {
    /// A configuration with one Miniserver and every other field at its default; used by
    /// `--demo` and tests.
    pub fn with_miniserver(ms: MiniserverConfig) -> Self {
        Config {
            miniservers: vec![ms],
            listen_address: DEFAULT_LISTEN_ADDRESS,
            listen_port: DEFAULT_LISTEN_PORT,
            log_level: LogLevel::Info,
            log_format: LogFormat::Json,
            filters: FilterConfig::default(),
            include_text_values: false,
            opentelemetry: OtlpConfig::default(),
            source: None,
            origins: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl MiniserverConfig {
    /// A Miniserver entry with default ports and flags.
    pub fn new(name: &str, host: &str, username: &str, password: &str) -> Self {
        MiniserverConfig {
            name: name.to_string(),
            host: host.to_string(),
            port: DEFAULT_MINISERVER_PORT,
            ssl_port: DEFAULT_MINISERVER_SSL_PORT,
            username: username.to_string(),
            password: Secret::new(password),
            use_encryption: false,
            force_encryption: false,
            tls_ca_file: None,
            tls_fingerprint: None,
        }
    }

    /// `host:port` with IPv6 literals in brackets, for URLs.
    pub fn authority(&self, port: u16) -> String {
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}
