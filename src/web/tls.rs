//! Turns a validated [`TlsConfig`] into a rustls server configuration: reads the PEM files,
//! pins the protocol versions, sets up client-certificate verification (mTLS) and ALPN
//! `http/1.1`. Uses the `ring` provider explicitly (several providers are compiled into the
//! binary, so rustls cannot pick a process default).
//!
//! Does not watch files; the `server` module decides when to rebuild.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::config::{ClientAuth, PemSource, TlsConfig, TlsVersion};
use super::error::WebError;

/// Builds the rustls configuration. `config_path` (the web config file) is used in messages.
pub fn build_server_config(
    tls: &TlsConfig,
    config_path: &Path,
) -> Result<Arc<ServerConfig>, WebError> {
    let tls_err = |field: &str, message: String| WebError::Tls {
        path: config_path.to_path_buf(),
        field: format!("tls_server_config.{field}"),
        message,
    };
    let provider = crate::tls_provider::provider();

    let cert_pem = read_pem(&tls.cert, config_path, "cert_file")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err("cert_file", format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err("cert_file", "no CERTIFICATE block found".into()));
    }
    let key_pem = read_pem(&tls.key, config_path, "key_file")?;
    // The parser's message never contains key bytes, but keep it generic anyway.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        tls_err(
            "key_file",
            "no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected)".into(),
        )
    })?;

    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| *v >= tls.min_version && *v <= tls.max_version)
    .map(|(_, p)| p)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| tls_err("min_version", e.to_string()))?;

    let builder = match (&tls.client_ca, tls.client_auth) {
        (Some(ca), ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify) => {
            let ca_pem = read_pem(ca, config_path, "client_ca_file")?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca_pem) {
                let cert =
                    cert.map_err(|e| tls_err("client_ca_file", format!("invalid PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_err("client_ca_file", e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(tls_err(
                    "client_ca_file",
                    "no CERTIFICATE block found".into(),
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.client_auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| tls_err("client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("cert_file", format!("certificate/key rejected: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = tls.prefer_server_cipher_suites;
    Ok(Arc::new(config))
}

/// The PEM text of `field` (`tls_server_config.<field>`): the file it names, or inline.
pub(crate) fn read_pem(
    source: &PemSource,
    config_path: &Path,
    field: &str,
) -> Result<Vec<u8>, WebError> {
    match source {
        PemSource::File(p) => std::fs::read(p).map_err(|e| WebError::Field {
            path: config_path.to_path_buf(),
            field: format!("tls_server_config.{field}"),
            message: format!("'{}' cannot be read: {e}", p.display()),
        }),
        PemSource::Inline(text) => Ok(text.expose().as_bytes().to_vec()),
    }
}
