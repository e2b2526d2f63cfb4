//! Log output: `tracing` events as JSON lines (RFC 3339 UTC timestamp, level, target,
//! message and every field, e.g. `miniserver`, as a real JSON field) or as text.
//!
//! Chatty dependencies (hyper, h2, tonic, rustls, tungstenite) are held at `warn` unless
//! the level is `debug`. JSON lines written inside a traced span also carry `trace_id` and
//! `span_id` (see [`crate::telemetry`], which builds the subscriber). Secrets never reach here: they are [`crate::secret::Secret`]s,
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

/// Installs the global subscriber writing to stderr, without self-telemetry (the
/// `simulate` subcommand). The daemon uses [`crate::telemetry::init`], which adds traces
/// and `trace_id` / `span_id` in JSON lines.
pub fn init(level: LogLevel, format: LogFormat) -> Result<(), LoggingError> {
    use tracing_subscriber::layer::SubscriberExt as _;
    let layer = crate::telemetry::log_layer(
        level,
        format,
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
        crate::telemetry::json::DispatchSlot::default(),
    );
    let subscriber = tracing_subscriber::Registry::default().with(layer);
    tracing::subscriber::set_global_default(subscriber).map_err(|e| LoggingError(e.to_string()))
}
