//! Log output: `tracing` events as JSON lines (RFC 3339 UTC timestamp, level, target,
//! message and every field, e.g. `miniserver`, as a real JSON field) or as text.
//!
//! Chatty dependencies (hyper, h2, tonic, rustls, tungstenite) are held at `warn` unless
//! the level is `debug`. Secrets never reach here: they are [`crate::secret::Secret`]s,
//! which print as `****`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogLevel};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot initialise logging: {0}")]
pub struct LoggingError(String);

/// The filter for a level: our crate at `level`, dependencies at `warn` unless debugging.
pub fn filter_for(level: LogLevel) -> EnvFilter {
    let lvl = level.as_filter();
    let deps = if level == LogLevel::Debug {
        "info"
    } else {
        "warn"
    };
    let directives = format!(
        "{lvl},hyper={deps},hyper_util={deps},h2={deps},tonic={deps},tower={deps},rustls={deps},tungstenite={deps},tokio_tungstenite={deps},reqwest={deps}"
    );
    EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new(lvl))
}

/// Installs the global subscriber writing to stderr. Call once, from `main`.
pub fn init(level: LogLevel, format: LogFormat) -> Result<(), LoggingError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter_for(level))
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    result.map_err(|e| LoggingError(e.to_string()))
}
