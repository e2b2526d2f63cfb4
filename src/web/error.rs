//! Errors of the web endpoint: reading and validating `--web.config.file`, building the TLS
//! configuration, and serving. Messages name the file and the field, never a secret (no
//! password, hash, private key or `Authorization` value).

use std::path::PathBuf;

/// Everything that can go wrong with the web configuration or the listener.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The web configuration file (or a file it references) could not be read.
    #[error("web config: cannot read {path}: {source}")]
    Read {
        /// File that failed.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for the exporter-toolkit schema (unknown keys included).
    #[error("web config {path}: {message}")]
    Syntax {
        /// The web configuration file.
        path: PathBuf,
        /// Parser message, with the field path where known.
        message: String,
    },
    /// A field has a value we cannot use.
    #[error("web config {path}: {field}: {message}")]
    Field {
        /// The web configuration file.
        path: PathBuf,
        /// Dotted field path, e.g. `tls_server_config.min_version`.
        field: String,
        /// What is wrong and what is accepted instead.
        message: String,
    },
    /// Certificates or keys could not be turned into a TLS configuration.
    #[error("web config {path}: {field}: {message}")]
    Tls {
        /// The web configuration file.
        path: PathBuf,
        /// Field whose file or inline PEM is at fault.
        field: String,
        /// What is wrong (parser or rustls message; never key material).
        message: String,
    },
    /// The listener failed while serving.
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
}
