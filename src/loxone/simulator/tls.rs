//! The optional TLS listener's certificate: self-signed, generated at start (Gen2 units serve
//! https/wss beside plain http/ws, protocol doc §1.2). Names: `localhost` and the
//! CloudDNS-style `127-0-0-1.<serial>.dyndns.loxonecloud.com` — hostnames only, never an IP
//! address, like the CloudDNS certificates of real units (doc §1.2): a client that verifies
//! names and connects by IP fails here as it would there.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use super::SimError;

/// A generated certificate and the acceptor using it.
pub struct TlsSetup {
    /// DER of the self-signed certificate (tests add it as a trust anchor).
    pub cert_der: Vec<u8>,
    /// PEM of the same certificate.
    pub cert_pem: String,
    /// Server-side TLS acceptor.
    pub acceptor: TlsAcceptor,
}

/// Generates a self-signed certificate and builds an acceptor.
pub fn self_signed(serial: &str) -> Result<TlsSetup, SimError> {
    let mut names = vec!["localhost".to_string()];
    if !serial.is_empty() && serial.chars().all(|c| c.is_ascii_alphanumeric()) {
        names.push(format!("127-0-0-1.{serial}.dyndns.loxonecloud.com"));
    }
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| SimError::Tls(format!("certificate generation failed: {e}")))?;
    let cert_der = ck.cert.der().to_vec();
    let cert_pem = ck.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = crate::tls_provider::provider();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert_der.clone())], key)
        .map_err(|e| SimError::Tls(e.to_string()))?;
    Ok(TlsSetup {
        cert_der,
        cert_pem,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}
