//! The exporter's HTTP endpoint security: the Prometheus exporter-toolkit
//! `--web.config.file` (TLS, mutual TLS, basic auth with bcrypt hashes, extra response
//! headers), applied to every route of the router it is given
//! (otlp-and-prometheus.md §4.1; issue 6 "Exporter endpoint security").
//!
//! [`serve`] is the one entry point: one accept loop (the private `server` module) with a
//! header-read timeout, plain HTTP without a web config; with one, TLS and basic auth from
//! files it re-reads, so certificates rotate and users change without a restart. [`validate_web_config`] lets startup fail early on a bad file.
//!
//! Owns: parsing ([`config`], pure), TLS setup ([`tls`]), credential checks ([`auth`]).
//! Does not own routes, the listener's address, or logging setup.

pub mod auth;
pub mod config;
mod error;
mod server;
pub mod tls;

use std::path::{Path, PathBuf};

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{parse_web_config, ClientAuth, PemSource, TlsConfig, TlsVersion, WebConfig};
pub use error::WebError;
pub use server::REALM;

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets open requests
/// finish. With `web_config`, TLS and basic auth come from that file (re-read on change);
/// without, plain HTTP.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web_config: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<(), WebError> {
    server::serve(listener, router, web_config, shutdown).await
}

/// What `healthcheck` needs to know of the exporter's listener from the web config: the
/// SHA-256 of the server certificate when TLS is on (to pin it), `None` for plain HTTP.
pub fn healthcheck_pin(path: &Path) -> Result<Option<[u8; 32]>, WebError> {
    use rustls::pki_types::pem::PemObject as _;
    use sha2::{Digest, Sha256};
    let text = std::fs::read_to_string(path).map_err(|source| WebError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let Some(tls) = parse_web_config(&text, path)?.tls else {
        return Ok(None);
    };
    let pem = tls::read_pem(&tls.cert, path, "cert_file")?;
    let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok);
    Ok(leaf.map(|der| Sha256::digest(der.as_ref()).into()))
}

/// Reads the web config and everything it references (certificates, keys, client CA) and
/// builds the TLS and auth state once, so a bad file stops startup with a clear message.
pub fn validate_web_config(path: &Path) -> Result<(), WebError> {
    server::load_active(path).map(|_| ())
}
