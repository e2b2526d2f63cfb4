//! The only place that touches the network for a Miniserver session: TCP, TLS, the WebSocket
//! (`/ws/rfc6455`, subprotocol `remotecontrol`) and the few plain HTTP GETs made before it
//! (`jdev/cfg/apiKey`, `jdev/sys/getPublicKey`). Implements protocol doc §1.1, §1.2, §1.4.
//!
//! - ws:// or wss:// (IPv6 literals in brackets, [`MiniserverConfig::authority`]).
//! - TLS: by default the Miniserver's self-signed certificate is accepted (the handshake
//!   signature is still verified, so the peer must hold the key of the certificate it shows);
//!   `tls_ca_file` verifies chain and host name against that CA instead; `tls_fingerprint`
//!   pins the SHA-256 of the leaf certificate.
//! - Message and frame size caps are the protocol's payload cap (64 MiB by default), far above
//!   the 1 MiB that broke the original with large structure files.
//! - Server TEXT frames are rewritten to BINARY below tungstenite
//!   ([`super::client_text_frames`]) so a non-UTF-8 text payload cannot end the session; the
//!   framer decodes text itself. Frames longer than 64 KiB are cut into fragments there
//!   too, so tungstenite's read buffer never grows to the structure file's size.
//! - HTTP requests never carry credentials (none of the requests used needs them).
//!
//! Not here: what is sent or how replies are interpreted (`session.rs`, `auth.rs`), retries
//! (`client.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::client_text_frames::RewriteTextFrames;
use super::framer::WireMessage;
use crate::config::MiniserverConfig;
use crate::write_stall::WriteStallLimit;

/// The WebSocket path on the Miniserver.
pub const WS_PATH: &str = "/ws/rfc6455";
/// The subprotocol Loxone's own app offers.
pub const WS_SUBPROTOCOL: &str = "remotecontrol";
/// Largest HTTP body read for the small pre-WebSocket requests.
pub const MAX_HTTP_BODY: usize = 1024 * 1024;

/// Why a connection or an HTTP request failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TLS settings unusable (bad CA file or fingerprint); a configuration problem.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// DNS or TCP failure.
    #[error("cannot reach {authority}: {source}")]
    Io {
        /// host:port tried.
        authority: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS handshake failed (includes certificate / fingerprint rejections).
    #[error("TLS handshake with {authority} failed: {source}")]
    Tls {
        /// host:port tried.
        authority: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The WebSocket upgrade failed.
    #[error("WebSocket handshake failed: {0}")]
    WebSocket(Box<tungstenite::Error>),
    /// The HTTP request failed below the status line.
    #[error("HTTP request {path} failed: {reason}")]
    Http {
        /// Request path.
        path: String,
        /// Cause.
        reason: String,
    },
    /// An HTTP request took longer than allowed.
    #[error("HTTP GET {path} timed out after {after:?}")]
    HttpTimeout {
        /// Path requested.
        path: &'static str,
        /// Limit.
        after: Duration,
    },
    /// Took longer than allowed.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was attempted.
        what: &'static str,
        /// Limit.
        after: Duration,
    },
}

/// Failure on an open WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The WebSocket layer reported an error (I/O, protocol, size cap).
    #[error("WebSocket error: {0}")]
    WebSocket(Box<tungstenite::Error>),
}

impl TransportError {
    /// The Miniserver stopped reading: 512 KiB (`MAX_WRITE_BUFFER`) wait unsent (a command,
    /// keepalives, the answers to its pings), or a write made no progress for the write
    /// stall limit (the socket's buffers are full; also when the kernel gives up on an
    /// unacknowledged connection, `ETIMEDOUT`).
    pub fn is_not_reading(&self) -> bool {
        let TransportError::WebSocket(e) = self;
        match &**e {
            tungstenite::Error::WriteBufferFull(_) => true,
            tungstenite::Error::Io(io) => io.kind() == std::io::ErrorKind::TimedOut,
            _ => false,
        }
    }
}

/// What arrived on the WebSocket.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A data message.
    Message(WireMessage),
    /// The peer closed the socket (close code and reason when it sent a close frame).
    Closed {
        /// Close code, `None` when the TCP stream just ended.
        code: Option<u16>,
        /// Close reason text.
        reason: String,
    },
}

/// A byte stream the WebSocket runs over (TCP or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Where and how to connect: built once per Miniserver from its configuration.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    authority: String,
    tls: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Endpoint {
    /// Plain ws:// on `port`, or wss:// on `ssl_port` when `use_encryption` or
    /// `force_encryption` is set.
    pub fn from_config(cfg: &MiniserverConfig) -> Result<Self, ConnectError> {
        if cfg.use_encryption || cfg.force_encryption {
            return Self::tls_of(cfg);
        }
        Ok(Endpoint {
            host: cfg.host.clone(),
            port: cfg.port,
            authority: cfg.authority(cfg.port),
            tls: None,
        })
    }

    /// wss:// on `ssl_port` with the Miniserver's TLS settings, whatever `use_encryption`
    /// says: also the endpoint a plain configuration moves to when the Miniserver offers TLS.
    pub fn tls_of(cfg: &MiniserverConfig) -> Result<Self, ConnectError> {
        Ok(Endpoint {
            host: cfg.host.clone(),
            port: cfg.ssl_port,
            authority: cfg.authority(cfg.ssl_port),
            tls: Some(tls_client_config(cfg)?),
        })
    }

    /// True for wss:// / https://.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `host:port` (IPv6 in brackets).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        let scheme = if self.is_tls() { "wss" } else { "ws" };
        format!("{scheme}://{}{WS_PATH}", self.authority)
    }

    /// TCP, then TLS for wss://, within `timeout`. A write that makes no progress for
    /// `write_stall_limit` fails (see [`TransportError::is_not_reading`]); beneath TLS, as a
    /// Miniserver that stops reading stalls the TCP writes.
    async fn open_stream(
        &self,
        timeout: Duration,
        write_stall_limit: Duration,
    ) -> Result<Box<dyn Io>, ConnectError> {
        let fut = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|source| ConnectError::Io {
                    authority: self.authority.clone(),
                    source,
                })?;
            // Small commands and keepalives should not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            let tcp = WriteStallLimit::new(tcp, write_stall_limit, "the Miniserver");
            let Some(tls) = &self.tls else {
                return Ok(Box::new(tcp) as Box<dyn Io>);
            };
            let server_name = ServerName::try_from(self.host.clone())
                .map_err(|e| ConnectError::TlsConfig(format!("invalid TLS server name: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(server_name, tcp)
                .await
                .map_err(|source| ConnectError::Tls {
                    authority: self.authority.clone(),
                    source: readable_tls_error(source, &self.host),
                })?;
            Ok(Box::new(stream) as Box<dyn Io>)
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ConnectError::Timeout {
                what: "connect",
                after: timeout,
            })?
    }

    /// One HTTP/1.1 GET without credentials; returns status and body (at most
    /// [`MAX_HTTP_BODY`] bytes). The whole exchange is bounded by `timeout`.
    pub async fn http_get(
        &self,
        path: &'static str,
        timeout: Duration,
    ) -> Result<HttpReply, ConnectError> {
        let http_err = |reason: String| ConnectError::Http {
            path: path.to_string(),
            reason,
        };
        let fut = async {
            // the whole exchange is bounded by `timeout`, a stalled write included
            let io = self.open_stream(timeout, timeout).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                    .await
                    .map_err(|e| http_err(e.to_string()))?;
            let _conn = AbortOnDrop(tokio::spawn(conn));
            let req = hyper::Request::get(path)
                .header(hyper::header::HOST, self.authority.as_str())
                .header(hyper::header::USER_AGENT, "loxone-exporter")
                .body(Empty::<Bytes>::new())
                .map_err(|e| http_err(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| {
                // hyper's "operation was canceled": its connection task ended first
                http_err(if e.is_canceled() || e.is_incomplete_message() {
                    "the connection was closed before an answer came".to_string()
                } else {
                    e.to_string()
                })
            })?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_HTTP_BODY)
                .collect()
                .await
                .map_err(|e| http_err(e.to_string()))?
                .to_bytes();
            Ok(HttpReply {
                status,
                body: body.to_vec(),
            })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ConnectError::HttpTimeout {
                path,
                after: timeout,
            })?
    }

    /// Opens the WebSocket. `offer_subprotocol` sends `Sec-WebSocket-Protocol: remotecontrol`;
    /// tungstenite then requires the server to echo it (see [`ConnectError::is_missing_subprotocol`]).
    /// A write that makes no progress for `write_stall_limit` fails the connection (see
    /// [`TransportError::is_not_reading`]).
    pub async fn connect_ws(
        &self,
        timeout: Duration,
        write_stall_limit: Duration,
        max_payload: usize,
        offer_subprotocol: bool,
    ) -> Result<WsConnection, ConnectError> {
        let fut = async {
            let io = self.open_stream(timeout, write_stall_limit).await?;
            let mut request = self
                .ws_url()
                .into_client_request()
                .map_err(|e| ConnectError::WebSocket(Box::new(e)))?;
            if offer_subprotocol {
                request.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static(WS_SUBPROTOCOL),
                );
            }
            let config = WebSocketConfig::default()
                .max_message_size(Some(max_payload))
                .max_frame_size(Some(max_payload))
                // tungstenite zero-fills this much before every socket read: 4 KiB holds
                // a typical event table whole (measured: at 1000 one-event tables/s, 16 KiB
                // of memset per read was ~4 % of the client's CPU); big messages simply
                // take more reads; the text-frame rewriter reads the socket in the same size
                .read_buffer_size(super::client_text_frames::READ_CHUNK)
                // tungstenite buffers every pong it owes without limit by default: a
                // Miniserver that pings but stops reading would grow it by the GB
                .max_write_buffer_size(MAX_WRITE_BUFFER);
            let (ws, _response) = tokio_tungstenite::client_async_with_config(
                request,
                RewriteTextFrames::new(io),
                Some(config),
            )
            .await
            .map_err(|e| ConnectError::WebSocket(Box::new(e)))?;
            Ok(WsConnection { ws })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ConnectError::Timeout {
                what: "WebSocket connect",
                after: timeout,
            })?
    }
}

impl ConnectError {
    /// The server accepted the upgrade but did not echo the offered subprotocol; retry
    /// without offering it.
    pub fn is_missing_subprotocol(&self) -> bool {
        matches!(
            self,
            ConnectError::WebSocket(e) if matches!(
                **e,
                tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(
                    SubProtocolError::NoSubProtocol
                ))
            )
        )
    }

    /// The server answered the upgrade with an HTTP error status (e.g. 503 while restarting).
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ConnectError::WebSocket(e) => match &**e {
                tungstenite::Error::Http(resp) => Some(resp.status().as_u16()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Status and body of an HTTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// HTTP status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Most bytes queued for a Miniserver that does not read them (commands are tiny; beyond
/// this, owed pongs wait and newer ones replace them). Above tungstenite's 128 KiB write
/// buffer, as it requires.
const MAX_WRITE_BUFFER: usize = 512 * 1024;

/// An open WebSocket to a Miniserver.
pub struct WsConnection {
    ws: WebSocketStream<RewriteTextFrames<Box<dyn Io>>>,
}

impl WsConnection {
    /// Sends one text message (a command).
    pub async fn send_text(&mut self, text: String) -> Result<(), TransportError> {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| TransportError::WebSocket(Box::new(e)))
    }

    /// Waits for the next data message or the close. Pings are answered by tungstenite.
    pub async fn recv(&mut self) -> Result<Received, TransportError> {
        loop {
            match self.ws.next().await {
                None => {
                    return Ok(Received::Closed {
                        code: None,
                        reason: String::new(),
                    })
                }
                Some(Err(e)) => return Err(TransportError::WebSocket(Box::new(e))),
                Some(Ok(Message::Binary(b))) => {
                    return Ok(Received::Message(WireMessage::Binary(b.into())))
                }
                Some(Ok(Message::Text(t))) => {
                    return Ok(Received::Message(WireMessage::Text(t.as_str().to_owned())))
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (Some(u16::from(f.code)), f.reason.as_str().to_owned()))
                        .unwrap_or((None, String::new()));
                    return Ok(Received::Closed { code, reason });
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// When bytes last arrived from the Miniserver (complete message or not).
    pub fn last_read(&self) -> Option<tokio::time::Instant> {
        self.ws.get_ref().last_read()
    }

    /// Sends a close frame and flushes; errors are ignored (the socket is going away).
    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The rustls configuration for a Miniserver, per its TLS settings.
pub fn tls_client_config(cfg: &MiniserverConfig) -> Result<Arc<ClientConfig>, ConnectError> {
    let Some(ca_file) = &cfg.tls_ca_file else {
        let pin = cfg
            .tls_fingerprint
            .as_deref()
            .map(parse_fingerprint)
            .transpose()?;
        return pinned_client_config(pin);
    };
    let config = ClientConfig::builder_with_provider(crate::tls_provider::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::TlsConfig(e.to_string()))?
        .with_root_certificates(load_roots(ca_file)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that accepts exactly the certificate with SHA-256 `pin` (any
/// certificate when `None`), still checking the handshake signature: a Miniserver's
/// self-signed certificate (optionally pinned by `tls_fingerprint`), and what
/// `healthcheck` uses to talk to this exporter's own TLS listener, whose certificate it
/// read from `--web.config.file`.
pub fn pinned_client_config(pin: Option<[u8; 32]>) -> Result<Arc<ClientConfig>, ConnectError> {
    pinned_client_config_with_identity(pin, None)
}

/// A client certificate chain and its private key, for a server that asks for one.
pub type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// [`pinned_client_config`] presenting `identity` when the server asks for a client
/// certificate: `healthcheck` against a listener with mTLS.
pub fn pinned_client_config_with_identity(
    pin: Option<[u8; 32]>,
    identity: Option<ClientIdentity>,
) -> Result<Arc<ClientConfig>, ConnectError> {
    let provider = crate::tls_provider::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::TlsConfig(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MiniserverCertVerifier { provider, pin }));
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| ConnectError::TlsConfig(format!("client certificate: {e}")))?,
    };
    Ok(Arc::new(config))
}

fn load_roots(path: &Path) -> Result<RootCertStore, ConnectError> {
    let mut roots = RootCertStore::empty();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
        ConnectError::TlsConfig(format!("cannot read CA file {}: {e}", path.display()))
    })?;
    for cert in iter {
        let cert = cert.map_err(|e| {
            ConnectError::TlsConfig(format!("bad certificate in {}: {e}", path.display()))
        })?;
        roots.add(cert).map_err(|e| {
            ConnectError::TlsConfig(format!("unusable CA in {}: {e}", path.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(ConnectError::TlsConfig(format!(
            "no certificate found in {}",
            path.display()
        )));
    }
    Ok(roots)
}

/// Parses a SHA-256 fingerprint: 64 hex digits, `:` / spaces allowed, any case.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], ConnectError> {
    let hex: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect();
    let bytes = hex::decode(&hex).map_err(|_| {
        ConnectError::TlsConfig("tls_fingerprint is not hex (SHA-256 of the certificate)".into())
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        ConnectError::TlsConfig(
            "tls_fingerprint must be a SHA-256 digest (32 bytes, 64 hex digits)".into(),
        )
    })
}

/// rustls shows a custom certificate error with `Debug`; a fingerprint mismatch reads
/// better in its own words.
fn readable_tls_error(e: std::io::Error, host: &str) -> std::io::Error {
    let mismatch = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => other
                .0
                .downcast_ref::<FingerprintMismatch>()
                .map(ToString::to_string),
            // protocol doc §1.2: a Miniserver's certificate names a host, never an IP
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            ) => Some(format!(
                "the Miniserver's certificate is not issued for host '{host}' (tls_ca_file checks \
                 the name): Miniserver certificates name hosts such as \
                 192-168-1-77.<serial>.dyndns.loxonecloud.com, never an IP address; set host to \
                 the name in the certificate, or pin the certificate with tls_fingerprint instead"
            )),
            _ => None,
        });
    match mismatch {
        Some(text) => std::io::Error::new(std::io::ErrorKind::InvalidData, text),
        None => e,
    }
}

/// The Miniserver's certificate is not the one `tls_fingerprint` pins.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Miniserver's certificate has SHA-256 fingerprint {0}, not the tls_fingerprint configured"
)]
struct FingerprintMismatch(String);

/// Accepts the Miniserver's self-signed certificate (optionally only the pinned one) while
/// still checking that the peer signed the handshake with that certificate's key.
#[derive(Debug)]
struct MiniserverCertVerifier {
    provider: Arc<CryptoProvider>,
    pin: Option<[u8; 32]>,
}

impl ServerCertVerifier for MiniserverCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.pin {
            let digest = Sha256::digest(end_entity.as_ref());
            if digest.as_slice() != pin {
                // names the setting and what the Miniserver presented (a fingerprint of a
                // public certificate is no secret), not rustls's generic failure
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                        FingerprintMismatch(hex::encode(digest)),
                    ))),
                ));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_for_another_name_gets_the_hostname_hint() {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        );
        let said = readable_tls_error(e, "192.168.1.77").to_string();
        assert!(
            said.contains("not issued for host '192.168.1.77'")
                && said.contains("dyndns.loxonecloud.com")
                && said.contains("tls_fingerprint"),
            "{said}"
        );
        // other TLS errors pass unchanged
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        let said = readable_tls_error(e, "ms").to_string();
        assert!(!said.contains("dyndns"), "{said}");
    }

    #[test]
    fn fingerprint_forms() {
        let hex64 = "AB".repeat(32);
        assert_eq!(parse_fingerprint(&hex64).unwrap(), [0xab; 32]);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn endpoint_urls() {
        let mut cfg = MiniserverConfig::new("ms", "fe80::1", "u", "p");
        cfg.port = 8080;
        let ep = Endpoint::from_config(&cfg).unwrap();
        assert_eq!(ep.ws_url(), "ws://[fe80::1]:8080/ws/rfc6455");
        cfg.use_encryption = true;
        cfg.ssl_port = 8443;
        let ep = Endpoint::from_config(&cfg).unwrap();
        assert_eq!(ep.ws_url(), "wss://[fe80::1]:8443/ws/rfc6455");
        assert!(ep.is_tls());
    }

    /// An HTTP request that gets no answer names its path; one whose connection is closed
    /// says so instead of hyper's "operation was canceled".
    #[tokio::test]
    async fn http_failures_say_what_happened() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cfg = MiniserverConfig::new("ms", "127.0.0.1", "u", "p");
        cfg.port = addr.port();
        let ep = Endpoint::from_config(&cfg).unwrap();
        // first connection: read the request, never answer; second: read it and close
        let server = tokio::spawn(async move {
            let (mut silent, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = silent.read(&mut buf).await;
            let (mut closing, _) = listener.accept().await.unwrap();
            let _ = closing.read(&mut buf).await;
            drop(closing);
            silent
        });
        let e = ep
            .http_get("/jdev/cfg/apiKey", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "HTTP GET /jdev/cfg/apiKey timed out after 300ms"
        );
        let e = ep
            .http_get("/jdev/cfg/apiKey", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("closed before an answer came"),
            "{e}"
        );
        drop(server.await.unwrap());
    }

    /// A hand-written WebSocket server sends a TEXT frame that is not UTF-8 between valid
    /// frames; the connection must deliver it (as bytes) and keep working.
    #[tokio::test]
    async fn non_utf8_text_frame_does_not_end_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8(req).unwrap();
            assert!(
                req.contains("Sec-WebSocket-Protocol: remotecontrol"),
                "{req}"
            );
            let key = req
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim();
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: remotecontrol\r\n\r\n"
            )
            .into_bytes();
            out.extend([0x82, 8, 3, 0, 0, 0, 3, 0, 0, 0]); // header: text, 3 bytes
            out.extend([0x81, 3, 0xff, 0xfe, b'a']); // TEXT frame, invalid UTF-8
            out.extend([0x81, 2, b'o', b'k']); // valid TEXT frame
            sock.write_all(&out).await.unwrap();
            // keep the socket open until the client has read everything
            let _ = sock.read(&mut buf).await;
        });
        let mut cfg = MiniserverConfig::new("ms", "127.0.0.1", "u", "p");
        cfg.port = addr.port();
        let ep = Endpoint::from_config(&cfg).unwrap();
        let mut conn = ep
            .connect_ws(
                Duration::from_secs(5),
                Duration::from_secs(5),
                1 << 20,
                true,
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(conn.recv().await.unwrap());
        }
        assert_eq!(
            got,
            vec![
                Received::Message(WireMessage::Binary(vec![3, 0, 0, 0, 3, 0, 0, 0])),
                Received::Message(WireMessage::Binary(vec![0xff, 0xfe, b'a'])),
                Received::Message(WireMessage::Binary(b"ok".to_vec())),
            ]
        );
        conn.close().await;
        server.await.unwrap();
    }

    #[test]
    fn missing_ca_file_is_a_config_error() {
        let mut cfg = MiniserverConfig::new("ms", "host", "u", "p");
        cfg.use_encryption = true;
        cfg.tls_ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(
            Endpoint::from_config(&cfg),
            Err(ConnectError::TlsConfig(_))
        ));
    }
}
