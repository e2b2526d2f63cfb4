//! The rustls crypto provider: ring, the one every TLS configuration of the exporter is
//! built with ([`provider`]: web server, Miniserver client, simulator; tonic's `tls-ring`
//! for gRPC).
//!
//! reqwest is built without a provider of its own (`rustls-no-provider`): its default,
//! aws-lc, would link a second crypto library of 1.5 MB of code next to ring. reqwest then
//! takes the process default, and panics when none is installed, so every reqwest client is
//! built from [`reqwest_builder`], which installs ring first (`clippy.toml` forbids the
//! other constructors).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The provider for a TLS configuration built here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring())
}

fn ring() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Installs ring as the process-wide default rustls provider unless one is installed
/// already. Cheap and idempotent.
fn install() {
    if CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one in between: that one serves as well
        let _ = ring().install_default();
    }
}

/// The start of every reqwest client: `reqwest::Client::builder()` once ring is installed.
#[allow(clippy::disallowed_methods)]
pub fn reqwest_builder() -> reqwest::ClientBuilder {
    install();
    reqwest::Client::builder()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_and_reqwest_builds_a_client() {
        install();
        install();
        assert!(CryptoProvider::get_default().is_some());
        assert!(reqwest_builder().build().is_ok());
    }
}
