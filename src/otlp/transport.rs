//! Sending one `ExportMetricsServiceRequest` to a collector, and classifying the answer by
//! what to do next. The only I/O of the OTLP export.
//!
//! Implements `docs/otlp-and-prometheus.md` §3.2 (OTLP/HTTP) and §3.3 (OTLP/gRPC):
//! Requests arrive already encoded (see `convert`), so both transports send bytes: reqwest
//! as the body, tonic through a pass-through codec on the `MetricsService/Export` method
//! (what the generated `MetricsServiceClient` calls, minus its prost re-encoding).
//!
//! - gRPC: header names lowercased into
//!   metadata keys (gRPC requires lowercase keys; the original failed every export on
//!   `Authorization`), gzip via `send_compressed`, TLS with a CA file and optional client
//!   certificate and key, the configured timeout as the request deadline; one HTTP/2
//!   connection per concurrent request of an export (used in turn), so a collector decodes
//!   the parts in parallel; TCP through [`crate::otlp::quickack`];
//! - HTTP/protobuf through reqwest: POST to the configured endpoint (configuration already
//!   appended `/v1/metrics`), `Content-Type: application/x-protobuf`, optional
//!   `Content-Encoding: gzip`, the same TLS options and timeout.
//!
//! Every answer becomes an [`ExportOutcome`]: HTTP 429/502/503/504, connection errors and
//! timeouts are retryable (honouring `Retry-After` in seconds or as an HTTP date); gRPC
//! CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS are retryable,
//! RESOURCE_EXHAUSTED only with a `google.rpc.RetryInfo` (whose delay is honoured);
//! everything else is dropped. Error texts are sanitised ([`sanitize`]): no header values,
//! nothing that looks like a token.
//!
//! Does not: convert (see `convert`), retry or schedule (see `export`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::config::{OtlpCompression, OtlpConfig, OtlpProtocol};
use crate::otlp::quickack::QuickAckConnector;
use crate::secret::{Secret, MASK};

/// Longest server hint (Retry-After, RetryInfo) we honour; longer ones are capped.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(600);
/// Largest response body read (spec §3.2: bigger responses are a non-retryable error).
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// HTTP/2 connections a gRPC transport opens, one per concurrent request of an export.
const GRPC_CONNECTIONS: usize = crate::otlp::export::CONCURRENT_REQUESTS;
/// Longest error text kept.
const MAX_REASON_CHARS: usize = 300;
/// Added to the error when gRPC went to a plain HTTP server: a POST to the gRPC method's
/// path answered with 404/405/415 and no `grpc-status`, as an OTLP/HTTP receiver answers.
const GRPC_AT_AN_HTTP_PORT: &str = " (not a gRPC endpoint: if this is the collector's \
    OTLP/HTTP port, usually 4318, set protocol to http/protobuf or use its gRPC port, usually 4317)";
/// Added to the error when HTTP/1.1 went to an HTTP/2-only server, as an OTLP/gRPC receiver
/// is: its answer is not HTTP/1.x.
const HTTP_AT_A_GRPC_PORT: &str = " (the endpoint speaks only HTTP/2: if this is the \
    collector's OTLP/gRPC port, usually 4317, set protocol to grpc or use its OTLP/HTTP port, usually 4318)";

/// What to do after one request.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportOutcome {
    /// Accepted in full.
    Sent,
    /// Accepted, but the collector rejected some points (or sent a warning). Not retried.
    PartialSuccess {
        /// Rejected data points.
        rejected: i64,
        /// The collector's message, sanitised.
        message: String,
    },
    /// Failed transiently: try again later.
    Retry {
        /// The server's requested delay (Retry-After, RetryInfo), if any.
        after: Option<Duration>,
        /// Sanitised reason.
        reason: String,
    },
    /// Failed permanently: retrying the same request will not help.
    Drop {
        /// Sanitised reason.
        reason: String,
    },
}

/// Why a transport could not be built. Texts never contain header values.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        /// Which file (CA, client certificate, client key).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Only one of client certificate and key was given.
    #[error("mTLS needs both a client certificate and a client key")]
    IncompleteIdentity,
    /// The endpoint is not a usable URL.
    #[error("invalid OTLP endpoint: {0}")]
    Endpoint(String),
    /// A header name or value cannot be sent.
    #[error("invalid OTLP header {name:?}: {problem}")]
    Header {
        /// Header name (never the value).
        name: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The TLS or HTTP client could not be configured.
    #[error("cannot set up the OTLP client: {0}")]
    Client(String),
}

/// A connection to one collector.
pub struct Transport {
    inner: Inner,
    timeout: Duration,
    secrets: Vec<String>,
}

enum Inner {
    Grpc {
        /// One client per HTTP/2 connection, used in turn (see [`grpc`]).
        clients: Vec<tonic::client::Grpc<Channel>>,
        next: std::sync::atomic::AtomicUsize,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
        gzip: bool,
    },
}

/// The PEM contents of an OTLP TLS configuration's files, read once when a client is built.
pub(crate) struct TlsFiles {
    /// CA bundle to trust instead of the system roots.
    pub(crate) ca: Option<Vec<u8>>,
    /// Client certificate chain and key (mTLS).
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the files `tls` names (shared by the metrics transport and the traces exporter).
pub(crate) fn tls_files(tls: &crate::config::OtlpTls) -> Result<TlsFiles, TransportError> {
    let ca = match &tls.ca_file {
        Some(p) => Some(read("CA file", p)?),
        None => None,
    };
    let identity = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(c), Some(k)) => Some((read("client certificate", c)?, read("client key", k)?)),
        (None, None) => None,
        _ => return Err(TransportError::IncompleteIdentity),
    };
    Ok(TlsFiles { ca, identity })
}

impl Transport {
    /// Builds the client for `config.protocol`. Connects lazily: a collector that is down
    /// now is not an error here, only at send time.
    pub fn new(config: &OtlpConfig) -> Result<Self, TransportError> {
        let secrets = secrets_of(&config.headers, &config.endpoint);
        let files = tls_files(&config.tls)?;
        let inner = match config.protocol {
            OtlpProtocol::Grpc => grpc(config, files)?,
            OtlpProtocol::HttpProtobuf => http(config, files)?,
        };
        Ok(Transport {
            inner,
            timeout: config.timeout,
            secrets,
        })
    }

    /// Sends one encoded `ExportMetricsServiceRequest` within the configured timeout and
    /// classifies the answer. Needs a Tokio runtime (so does [`Transport::new`] for gRPC).
    /// Several sends may run concurrently: gRPC takes its connections in turn (one per
    /// concurrent request of an export), HTTP uses one pooled connection each.
    pub async fn send(&self, request: Bytes) -> ExportOutcome {
        let timeout = self.timeout;
        let fut = async {
            match &self.inner {
                Inner::Grpc {
                    clients,
                    next,
                    metadata,
                } => {
                    let turn = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(client) = clients.get(turn % clients.len().max(1)) else {
                        return ExportOutcome::Drop {
                            reason: "no gRPC channel".into(),
                        };
                    };
                    // A handle on the shared channel: `unary` needs `&mut`.
                    let mut client = client.clone();
                    let mut req = tonic::Request::new(request);
                    *req.metadata_mut() = metadata.clone();
                    crate::telemetry::inject_grpc(req.metadata_mut());
                    if !timeout.is_zero() {
                        req.set_timeout(timeout);
                    }
                    match grpc_export(&mut client, req).await {
                        Ok(resp) => classify_response(resp),
                        Err(GrpcFailure::Status(status)) => classify_grpc(&status),
                        // a response message comes only with success: the collector has
                        // the data, and sending it again would duplicate it (OTLP/HTTP
                        // drops a body over the cap the same way)
                        Err(GrpcFailure::AnswerOverTheCap) => ExportOutcome::Drop {
                            reason: "gRPC: the collector's answer is larger than 4 MiB".into(),
                        },
                    }
                }
                Inner::Http {
                    client,
                    url,
                    headers,
                    gzip,
                } => send_http(client, url, headers, *gzip, request).await,
            }
        };
        let started = std::time::Instant::now();
        let timed_out = || ExportOutcome::Retry {
            after: None,
            reason: format!("timed out after {timeout:?}"),
        };
        // A zero timeout means "no limit" (OTEL_EXPORTER_OTLP_TIMEOUT=0).
        let outcome = if timeout.is_zero() {
            fut.await
        } else {
            match tokio::time::timeout(timeout, fut).await {
                // Three timers share this deadline: ours, the client library's, and the
                // gRPC deadline the collector is told. Whichever fires first, a retryable
                // failure at the deadline reads the same, so the log's repeat rule and
                // `/healthz` see one failure (it was "timed out", "CANCELLED: Timeout
                // expired" or "DEADLINE_EXCEEDED" by turns).
                Ok(ExportOutcome::Retry { after: None, .. }) if started.elapsed() >= timeout => {
                    timed_out()
                }
                Ok(o) => o,
                Err(_) => timed_out(),
            }
        };
        self.scrub(outcome)
    }

    fn scrub(&self, outcome: ExportOutcome) -> ExportOutcome {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        match outcome {
            ExportOutcome::PartialSuccess { rejected, message } => ExportOutcome::PartialSuccess {
                rejected,
                message: sanitize(&message, &secrets),
            },
            ExportOutcome::Retry { after, reason } => ExportOutcome::Retry {
                after,
                reason: sanitize(&reason, &secrets),
            },
            ExportOutcome::Drop { reason } => ExportOutcome::Drop {
                reason: sanitize(&reason, &secrets),
            },
            ExportOutcome::Sent => ExportOutcome::Sent,
        }
    }
}

/// The URL to connect to and whether it is TLS. `tls_enabled` with an http:// endpoint
/// (the original's `tls.enabled` beside a plain URL) means the user wants TLS: both
/// clients only speak TLS to https:// URLs, and a header meant for a TLS connection must
/// never go out in clear text. Shared with the traces exporter.
pub(crate) fn tls_url(tls_enabled: bool, endpoint: &str) -> (bool, String) {
    let tls = tls_enabled || endpoint.starts_with("https://");
    let endpoint = match endpoint.strip_prefix("http://") {
        Some(rest) if tls => format!("https://{rest}"),
        _ => endpoint.to_string(),
    };
    (tls, endpoint)
}

fn tls_endpoint(config: &OtlpConfig) -> (bool, String) {
    tls_url(config.tls.enabled, &config.endpoint)
}

/// The reqwest client of an OTLP/HTTP exporter (metrics and the daemon's own traces):
/// our user agent, `timeout` for connecting and for the whole request (zero: none), the
/// TLS files, and no redirects and no `Referer`: a redirect would carry the auth headers
/// (reqwest keeps all but Authorization and Cookie) and the URL's query to wherever it
/// points, possibly from https:// to http://. A 3xx is an answer like any other.
pub(crate) fn http_client(timeout: Duration, files: TlsFiles) -> Result<reqwest::Client, String> {
    let mut builder = crate::tls_provider::reqwest_builder()
        .user_agent(concat!(
            "OTel-OTLP-Exporter-Rust loxone-exporter/",
            env!("CARGO_PKG_VERSION")
        ))
        .redirect(reqwest::redirect::Policy::none())
        .referer(false);
    if !timeout.is_zero() {
        builder = builder.timeout(timeout).connect_timeout(timeout);
    }
    if let Some(ca) = files.ca {
        let certs = reqwest::Certificate::from_pem_bundle(&ca)
            .map_err(|e| format!("CA file: {}", error_chain(&e)))?;
        builder = builder.tls_certs_only(certs);
    }
    if let Some((mut cert, key)) = files.identity {
        cert.push(b'\n');
        cert.extend_from_slice(&key);
        let identity = reqwest::Identity::from_pem(&cert)
            .map_err(|e| format!("client identity: {}", error_chain(&e)))?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| error_chain(&e))
}

/// Shortest part of a header value masked on its own (the whole value always is).
const MIN_DERIVED_SECRET: usize = 6;

/// What error texts must not show: each header value, plus the credential inside it (the
/// words after an auth scheme such as `Bearer`, and the `user:password` of `Basic`), and
/// each query value of `endpoint` (some collectors take their API key there), so that a
/// collector echoing only the token in its error text does not get it into a log line,
/// `/healthz` or a span.
pub fn secrets_of(headers: &[(String, crate::secret::Secret)], endpoint: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let query = endpoint
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or_default())
        .unwrap_or_default();
    for (_, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        out.extend([value.to_string(), decoded.into_owned()]);
    }
    out.retain(|v| !v.is_empty());
    for (_, value) in headers {
        let value = value.expose().trim();
        if value.is_empty() {
            continue;
        }
        out.push(value.to_string());
        let mut words = value.split_whitespace();
        let scheme = words.next().unwrap_or_default();
        for word in words {
            // a short word is more likely prose than a credential
            if word.len() >= MIN_DERIVED_SECRET {
                out.push(word.to_string());
            }
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(word)
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok());
                if let Some(decoded) = decoded {
                    if let Some((_, password)) = decoded.split_once(':') {
                        if password.len() >= MIN_DERIVED_SECRET {
                            out.push(password.to_string());
                        }
                    }
                    out.push(decoded);
                }
            }
        }
    }
    // longest first: a value is masked whole before a part of it is looked for
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn grpc(config: &OtlpConfig, files: TlsFiles) -> Result<Inner, TransportError> {
    let (tls, endpoint) = tls_endpoint(config);
    // TCP options are the connector's (`QuickAckConnector`): with a custom connector
    // tonic ignores the endpoint's
    let mut ep =
        Endpoint::from_shared(endpoint).map_err(|e| TransportError::Endpoint(e.to_string()))?;
    if !config.timeout.is_zero() {
        ep = ep.timeout(config.timeout).connect_timeout(config.timeout);
    }
    if tls {
        let mut tls_config = ClientTlsConfig::new();
        tls_config = match files.ca {
            Some(ca) => tls_config.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => tls_config.with_native_roots(),
        };
        if let Some((cert, key)) = files.identity {
            tls_config = tls_config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        ep = ep
            .tls_config(tls_config)
            .map_err(|e| TransportError::Client(e.to_string()))?;
    }
    // One connection per concurrent request: on a shared HTTP/2 connection the parts of
    // an export queue behind each other in the collector's connection flow-control window
    // (rotel: 1 MiB) and its single connection task, and cannot be decoded in parallel.
    // tonic adds TLS and the connect timeout on top of the TCP connector.
    let tcp = QuickAckConnector::new();
    let clients = (0..GRPC_CONNECTIONS)
        .map(|_| {
            let client = tonic::client::Grpc::new(ep.connect_with_connector_lazy(tcp.clone()))
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .max_encoding_message_size(usize::MAX);
            if config.compression == OtlpCompression::Gzip {
                client.send_compressed(CompressionEncoding::Gzip)
            } else {
                client
            }
        })
        .collect();
    let metadata = grpc_metadata(&config.headers).map_err(|bad| bad.named(&config.headers))?;
    Ok(Inner::Grpc {
        clients,
        next: std::sync::atomic::AtomicUsize::new(0),
        metadata,
    })
}

fn http(config: &OtlpConfig, files: TlsFiles) -> Result<Inner, TransportError> {
    let (_, endpoint) = tls_endpoint(config);
    let client = http_client(config.timeout, files).map_err(TransportError::Client)?;
    let headers = http_headers(&config.headers).map_err(|bad| bad.named(&config.headers))?;
    let url =
        reqwest::Url::parse(&endpoint).map_err(|e| TransportError::Endpoint(e.to_string()))?;
    Ok(Inner::Http {
        client,
        url: url.to_string(),
        headers,
        gzip: config.compression == OtlpCompression::Gzip,
    })
}

/// A configured header that cannot be sent: which one, and what is wrong with its name or
/// its value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BadHeader {
    /// Its index in the list.
    pub index: usize,
    /// The value is at fault (else the name).
    pub in_value: bool,
    /// What is wrong.
    pub problem: &'static str,
}

impl BadHeader {
    /// As a [`TransportError`] naming the header (never its value).
    fn named(self, headers: &[(String, Secret)]) -> TransportError {
        TransportError::Header {
            name: headers[self.index].0.clone(),
            problem: self.problem,
        }
    }
}

/// The configured headers as gRPC metadata: names lowercased (gRPC metadata keys are),
/// shared by the metrics transport and the traces exporter.
pub(crate) fn grpc_metadata(headers: &[(String, Secret)]) -> Result<MetadataMap, BadHeader> {
    let mut metadata = MetadataMap::new();
    for (index, (name, value)) in headers.iter().enumerate() {
        let bad = |in_value, problem| BadHeader {
            index,
            in_value,
            problem,
        };
        let key = MetadataKey::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| bad(false, "not a valid gRPC metadata key"))?;
        let value = MetadataValue::try_from(value.expose())
            .map_err(|_| bad(true, "value is not printable ASCII"))?;
        metadata.append(key, value);
    }
    Ok(metadata)
}

/// The configured headers as HTTP headers, values marked sensitive (never logged by the
/// HTTP stack); shared by the metrics transport and the traces exporter.
pub(crate) fn http_headers(
    headers: &[(String, Secret)],
) -> Result<reqwest::header::HeaderMap, BadHeader> {
    let mut map = reqwest::header::HeaderMap::new();
    for (index, (name, value)) in headers.iter().enumerate() {
        let bad = |in_value, problem| BadHeader {
            index,
            in_value,
            problem,
        };
        let key = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| bad(false, "not a valid HTTP header name"))?;
        let mut value = reqwest::header::HeaderValue::from_str(value.expose())
            .map_err(|_| bad(true, "value is not a valid HTTP header value"))?;
        value.set_sensitive(true);
        map.append(key, value);
    }
    Ok(map)
}

/// The gRPC method the generated client calls.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Why a gRPC export got no usable answer.
enum GrpcFailure {
    /// The collector's status, or one tonic made for a transport failure.
    Status(tonic::Status),
    /// The collector answered with a response message longer than [`MAX_RESPONSE_BYTES`].
    AnswerOverTheCap,
}

/// One unary Export call, as `tonic::client::Grpc::unary` makes it, except that tonic's
/// limit on the response message is told apart from a collector's status: both are
/// OUT_OF_RANGE with the same text (rotel refuses a request over its 4 MiB limit so), but
/// only the collector's is retryable.
async fn grpc_export(
    client: &mut tonic::client::Grpc<Channel>,
    request: tonic::Request<Bytes>,
) -> Result<ExportMetricsServiceResponse, GrpcFailure> {
    client.ready().await.map_err(|e| {
        GrpcFailure::Status(tonic::Status::unavailable(format!(
            "channel not ready: {e}"
        )))
    })?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
    let request = request.map(|body| futures_util::stream::once(std::future::ready(body)));
    // a collector's error status comes here (trailers-only answer) ...
    let mut answer = client
        .streaming(request, path, PassThroughCodec)
        .await
        .map_err(GrpcFailure::Status)?
        .into_inner();
    // ... or after a response message; the size limit is checked only on a message
    let message = match answer.message().await {
        Ok(Some(message)) => message,
        Ok(None) => {
            return Err(GrpcFailure::Status(tonic::Status::internal(
                "Missing response message.",
            )))
        }
        Err(status)
            if status.code() == tonic::Code::OutOfRange
                && status
                    .message()
                    .starts_with("Error, decoded message length too large") =>
        {
            return Err(GrpcFailure::AnswerOverTheCap)
        }
        Err(status) => return Err(GrpcFailure::Status(status)),
    };
    answer.trailers().await.map_err(GrpcFailure::Status)?;
    Ok(message)
}

/// Sends pre-encoded request bytes and decodes the response with prost.
#[derive(Debug, Clone, Copy, Default)]
struct PassThroughCodec;

impl Codec for PassThroughCodec {
    type Encode = Bytes;
    type Decode = ExportMetricsServiceResponse;
    type Encoder = PassThroughCodec;
    type Decoder = PassThroughCodec;

    fn encoder(&mut self) -> Self::Encoder {
        PassThroughCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        PassThroughCodec
    }
}

impl Encoder for PassThroughCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PassThroughCodec {
    type Item = ExportMetricsServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining());
        // status OK means accepted; an answer that does not decode only loses the partial
        // success details (OTLP/HTTP treats an undecodable 200 the same way)
        Ok(Some(
            ExportMetricsServiceResponse::decode(bytes).unwrap_or_default(),
        ))
    }
}

async fn send_http(
    client: &reqwest::Client,
    url: &str,
    headers: &reqwest::header::HeaderMap,
    gzip: bool,
    body: Bytes,
) -> ExportOutcome {
    use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
    let mut req = client
        .post(url)
        .headers(headers.clone())
        .headers(crate::telemetry::propagation::trace_headers())
        .header(CONTENT_TYPE, "application/x-protobuf");
    let body = if gzip {
        match gzip_bytes(&body) {
            Ok(b) => {
                req = req.header(CONTENT_ENCODING, "gzip");
                Bytes::from(b)
            }
            Err(e) => {
                return ExportOutcome::Drop {
                    reason: format!("gzip failed: {e}"),
                }
            }
        }
    } else {
        body
    };
    let mut resp = match req.body(body).send().await {
        Ok(r) => r,
        // No response at all: connection refused or reset, TLS failure, timeout. The spec
        // retries these; a TLS misconfiguration shows up as a persistent retryable error.
        Err(e) => {
            let mut reason = format!("HTTP request failed: {}", error_chain(&e.without_url()));
            if answered_in_http2_only(&reason) {
                reason.push_str(HTTP_AT_A_GRPC_PORT);
            }
            return ExportOutcome::Retry {
                after: None,
                reason,
            };
        }
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    // a body that breaks off counts as empty: the status alone then decides
    let body = match read_body_capped(&mut resp, MAX_RESPONSE_BYTES).await {
        Ok(Some(body)) => body,
        Err(_) => Vec::new(),
        Ok(None) => {
            return ExportOutcome::Drop {
                reason: format!("HTTP {}: response body larger than 4 MiB", status.as_u16()),
            }
        }
    };
    classify_http(
        status.as_u16(),
        status.canonical_reason(),
        retry_after,
        &body,
    )
}

/// Reads a response body of at most `cap` bytes: `Ok(None)` when it is longer. Chunk by
/// chunk, so a collector that streams an endless chunked body costs at most `cap` bytes of
/// memory, not everything it manages to send before the timeout. Shared by the metrics
/// transport and the trace exporter's HTTP client.
pub(crate) async fn read_body_capped(
    resp: &mut reqwest::Response,
    cap: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|l| l > cap as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn gzip_bytes(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 8 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// Classifies an HTTP answer (spec §3.2). `body` is the response body: an
/// `ExportMetricsServiceResponse` on success, a `google.rpc.Status` on failure.
pub fn classify_http(
    status: u16,
    reason_phrase: Option<&str>,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ExportOutcome {
    if (200..300).contains(&status) {
        // An undecodable success body (empty, JSON) still means accepted.
        return ExportMetricsServiceResponse::decode(body)
            .map(classify_response)
            .unwrap_or(ExportOutcome::Sent);
    }
    let mut reason = format!("HTTP {status}");
    if let Some(p) = reason_phrase {
        reason.push(' ');
        reason.push_str(p);
    }
    if let Ok(st) = RpcStatus::decode(body) {
        if !st.message.is_empty() {
            reason.push_str(": ");
            reason.push_str(&st.message);
        }
    }
    match status {
        429 | 502 | 503 | 504 => ExportOutcome::Retry {
            after: retry_after.map(|d| d.min(MAX_SERVER_DELAY)),
            reason,
        },
        _ => ExportOutcome::Drop { reason },
    }
}

/// Parses `Retry-After`: delay seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // more seconds than u64 holds: a very long wait, capped by the caller
        return Some(Duration::MAX);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn classify_response(resp: ExportMetricsServiceResponse) -> ExportOutcome {
    match resp.partial_success {
        Some(p) if p.rejected_data_points != 0 || !p.error_message.is_empty() => {
            ExportOutcome::PartialSuccess {
                rejected: p.rejected_data_points,
                message: p.error_message,
            }
        }
        _ => ExportOutcome::Sent,
    }
}

/// Classifies a gRPC failure (spec §3.3).
pub fn classify_grpc(status: &tonic::Status) -> ExportOutcome {
    use tonic::Code;
    let mut reason = format!("gRPC {}", code_name(status.code()));
    if !status.message().is_empty() {
        reason.push_str(": ");
        reason.push_str(status.message());
    }
    if let Some(source) = std::error::Error::source(status) {
        reason.push_str(": ");
        reason.push_str(&error_chain(source));
    }
    if answered_like_plain_http(status.message()) {
        reason.push_str(GRPC_AT_AN_HTTP_PORT);
    }
    let retry_info = retry_delay(status.details());
    if never_processed(status) {
        return ExportOutcome::Retry {
            after: retry_info,
            reason: "gRPC: the collector closed the connection before processing the request (HTTP/2 GOAWAY or REFUSED_STREAM)".into(),
        };
    }
    if connection_lost(status) {
        // tonic calls it UNKNOWN; the spec retries a disconnect without an answer, and so
        // does OTLP/HTTP here
        return ExportOutcome::Retry {
            after: retry_info,
            reason: format!(
                "gRPC: the connection was lost before the collector answered ({reason})"
            ),
        };
    }
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => ExportOutcome::Retry {
            after: retry_info,
            reason,
        },
        Code::ResourceExhausted if retry_info.is_some() => ExportOutcome::Retry {
            after: retry_info,
            reason,
        },
        _ => ExportOutcome::Drop { reason },
    }
}

/// True when the connection broke before an answer (a collector killed or restarted
/// mid-export, a proxy giving up): an I/O error of that kind under the status.
fn connection_lost(status: &tonic::Status) -> bool {
    use std::io::ErrorKind;
    let broken = |kind: ErrorKind| {
        matches!(
            kind,
            ErrorKind::BrokenPipe
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::UnexpectedEof
                | ErrorKind::NotConnected
        )
    };
    causes(status).any(|e| {
        let io = e
            .downcast_ref::<std::io::Error>()
            .or_else(|| e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        io.is_some_and(|io| broken(io.kind()))
    })
}

/// True when HTTP/2 says the collector never processed the request, whatever gRPC code the
/// mapping gave (a GOAWAY without error comes out as INTERNAL): a collector shutting down
/// gracefully or a proxy closing connections at their maximum age, while an export was in
/// flight. gRPC clients treat these as UNAVAILABLE, so they are retried.
fn never_processed(status: &tonic::Status) -> bool {
    causes(status)
        .find_map(|e| e.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        })
}

/// The errors under a status, outermost first.
fn causes(status: &tonic::Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(status), |e| e.source())
}

/// True for tonic's message about an answer without `grpc-status` whose HTTP status is what
/// a plain HTTP server gives a POST to a path it does not serve (404, 405, 415). Other
/// statuses without `grpc-status` (a proxy's 502 or 503) are not a protocol mix-up.
fn answered_like_plain_http(message: &str) -> bool {
    message
        .strip_prefix("grpc-status header missing, mapped from HTTP status code ")
        .is_some_and(|code| matches!(code.trim(), "404" | "405" | "415"))
}

/// True for hyper's two ways of meeting an HTTP/2-only server over HTTP/1.1: its SETTINGS
/// frame arrives before our request went out ("unexpected message", a server talking while
/// no request is pending) or as the answer to it ("invalid HTTP version").
fn answered_in_http2_only(error_chain: &str) -> bool {
    error_chain.contains("invalid HTTP version parsed")
        || error_chain.contains("received unexpected message from connection")
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `google.rpc.Status`, decoded from gRPC status details and HTTP error bodies.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Typed details.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoAny {
    /// Type URL, e.g. `type.googleapis.com/google.rpc.RetryInfo`.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// Encoded message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    /// How long to wait.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// Type URL of `google.rpc.RetryInfo`.
pub const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// The RetryInfo delay in encoded `google.rpc.Status` details, capped at
/// [`MAX_SERVER_DELAY`]; `None` when absent or undecodable.
pub fn retry_delay(details: &[u8]) -> Option<Duration> {
    if details.is_empty() {
        return None;
    }
    let status = RpcStatus::decode(details).ok()?;
    let any = status
        .details
        .iter()
        .find(|a| a.type_url == RETRY_INFO_TYPE)?;
    let info = RetryInfo::decode(any.value.as_slice()).ok()?;
    let d = info.retry_delay.unwrap_or_default();
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0).min(999_999_999);
    Some(Duration::new(secs, nanos).min(MAX_SERVER_DELAY))
}

/// An error and its sources, joined with `: `.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Markers after which the next word is a credential (matched case-insensitively).
const TOKEN_MARKERS: [&str; 11] = [
    "bearer ",
    "basic ",
    "authorization:",
    "authorization=",
    "api_key=",
    "api-key:",
    "api-key=",
    "apikey=",
    "apikey:",
    "token=",
    "token:",
];

/// Makes an error text safe to log and show: removes every known secret value, masks the
/// word after anything that looks like a credential marker (`Bearer `, `token=`, …), strips
/// control characters and caps the length.
///
/// Linear in the text's length: the text comes from the collector (up to 4 MiB), and this
/// runs on a runtime worker after the request's timeout, so nothing bounds it but its own
/// cost. Masking comes before the cap so that a cut can never leave half a secret.
pub fn sanitize(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if s.len() >= 3 && out.contains(s) {
            out = out.replace(s, MASK);
        }
    }
    for marker in TOKEN_MARKERS {
        out = mask_words_after(&out, marker);
    }
    let mut cleaned: String = out
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON_CHARS)
        .collect();
    if out.chars().nth(MAX_REASON_CHARS).is_some() {
        cleaned.push('…');
    }
    cleaned
}

/// `text` with the word after each case-insensitive `marker` (ASCII, lowercase) replaced
/// by `****`, in one pass.
fn mask_words_after(text: &str, marker: &str) -> String {
    // ASCII lowercasing keeps every byte where it was, so positions carry over
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(pos) = lower[from..].find(marker).map(|p| p + from) {
        let mut start = pos + marker.len();
        while text[start..].starts_with(' ') {
            start += 1;
        }
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ';'))
            .map_or(text.len(), |e| start + e);
        if end > start {
            out.push_str(&text[copied..start]);
            out.push_str(MASK);
            copied = end;
        }
        from = end.max(start);
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with_retry_info(code: tonic::Code, delay: Duration) -> tonic::Status {
        let info = RetryInfo {
            retry_delay: Some(ProtoDuration {
                seconds: delay.as_secs() as i64,
                nanos: delay.subsec_nanos() as i32,
            }),
        };
        let st = RpcStatus {
            code: code as i32,
            message: "m".into(),
            details: vec![ProtoAny {
                type_url: RETRY_INFO_TYPE.into(),
                value: info.encode_to_vec(),
            }],
        };
        tonic::Status::with_details(code, "busy", st.encode_to_vec().into())
    }

    #[test]
    fn http_statuses_are_classified_per_spec() {
        for code in [429u16, 502, 503, 504] {
            assert!(
                matches!(
                    classify_http(code, None, None, b""),
                    ExportOutcome::Retry { .. }
                ),
                "{code}"
            );
        }
        for code in [400u16, 401, 403, 404, 413, 500, 501] {
            assert!(
                matches!(
                    classify_http(code, None, None, b""),
                    ExportOutcome::Drop { .. }
                ),
                "{code}"
            );
        }
        assert_eq!(classify_http(200, None, None, b""), ExportOutcome::Sent);
        let r = classify_http(
            503,
            Some("Service Unavailable"),
            Some(Duration::from_secs(2)),
            b"",
        );
        assert_eq!(
            r,
            ExportOutcome::Retry {
                after: Some(Duration::from_secs(2)),
                reason: "HTTP 503 Service Unavailable".into()
            }
        );
        // server hints are capped
        let r = classify_http(429, None, Some(Duration::from_secs(100_000)), b"");
        assert!(matches!(r, ExportOutcome::Retry { after: Some(d), .. } if d == MAX_SERVER_DELAY));
    }

    #[test]
    fn http_partial_success_and_error_body() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess;
        let body = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 3,
                error_message: "bad points".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            classify_http(200, None, None, &body),
            ExportOutcome::PartialSuccess {
                rejected: 3,
                message: "bad points".into()
            }
        );
        let err = RpcStatus {
            code: 3,
            message: "invalid data".into(),
            details: vec![],
        }
        .encode_to_vec();
        assert_eq!(
            classify_http(400, Some("Bad Request"), None, &err),
            ExportOutcome::Drop {
                reason: "HTTP 400 Bad Request: invalid data".into()
            }
        );
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(42)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        // beyond u64: the longest wait (then capped), not "no hint" and a 1 s backoff
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn only_a_plain_http_answer_to_grpc_gets_the_port_hint() {
        let missing = |code: u16| {
            tonic::Status::new(
                tonic::Code::Unknown,
                format!("grpc-status header missing, mapped from HTTP status code {code}"),
            )
        };
        for code in [404, 405, 415] {
            let ExportOutcome::Drop { reason } = classify_grpc(&missing(code)) else {
                panic!("{code}: not dropped");
            };
            assert!(reason.ends_with(GRPC_AT_AN_HTTP_PORT), "{reason}");
        }
        // a proxy in front of a collector that is down: no protocol mix-up
        for code in [502, 503, 500] {
            let o = classify_grpc(&missing(code));
            assert!(!format!("{o:?}").contains("4318"), "{code}: {o:?}");
        }
        let o = classify_grpc(&tonic::Status::new(tonic::Code::Unimplemented, "404"));
        assert!(!format!("{o:?}").contains("4318"), "{o:?}");
        // hyper's texts, whichever way the race between our request and the server's
        // SETTINGS frame goes (the rotel test meets one of them)
        for chain in [
            "error sending request: client error (SendRequest): invalid HTTP version parsed",
            "error sending request: client error (SendRequest): received unexpected message from connection",
        ] {
            assert!(answered_in_http2_only(chain), "{chain}");
        }
        assert!(!answered_in_http2_only(
            "error sending request: client error (Connect): tcp connect error: Connection refused"
        ));
    }

    #[test]
    fn grpc_codes_are_classified_per_spec() {
        use tonic::Code;
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            let o = classify_grpc(&tonic::Status::new(code, "x"));
            assert!(
                matches!(o, ExportOutcome::Retry { after: None, .. }),
                "{code:?}"
            );
        }
        for code in [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::Internal,
            Code::ResourceExhausted,
        ] {
            let o = classify_grpc(&tonic::Status::new(code, "x"));
            assert!(matches!(o, ExportOutcome::Drop { .. }), "{code:?}");
        }
        let o = classify_grpc(&status_with_retry_info(
            Code::ResourceExhausted,
            Duration::from_millis(1500),
        ));
        assert_eq!(
            o,
            ExportOutcome::Retry {
                after: Some(Duration::from_millis(1500)),
                reason: "gRPC RESOURCE_EXHAUSTED: busy".into()
            }
        );
        let o = classify_grpc(&status_with_retry_info(
            Code::Unavailable,
            Duration::from_secs(3),
        ));
        assert!(
            matches!(o, ExportOutcome::Retry { after: Some(d), .. } if d == Duration::from_secs(3))
        );
    }

    #[test]
    fn sanitize_removes_secrets_and_tokens() {
        let s = sanitize(
            "401 for Bearer abc.def-123, header Authorization: Basic dXNlcjpw token=xyz apikey=K9 and s3cretvalue",
            &["s3cretvalue"],
        );
        for leaked in ["abc.def-123", "dXNlcjpw", "xyz", "K9", "s3cretvalue"] {
            assert!(!s.contains(leaked), "{leaked} leaked in {s}");
        }
        assert!(s.contains("Bearer ****"), "{s}");
        let long = "x".repeat(1000);
        assert!(sanitize(&long, &[]).chars().count() <= MAX_REASON_CHARS + 1);
        assert_eq!(sanitize("line\nbreak", &[]), "line break");
        assert_eq!(
            sanitize("token=a token=**** TOKEN: b apikey=", &[]),
            "token=**** token=**** TOKEN: **** apikey="
        );
    }

    #[test]
    fn sanitize_is_linear_in_a_huge_collector_message() {
        // a 4 MiB error text of markers (the largest answer read): the masking rewrote and
        // lowercased the whole text once per hit, minutes of CPU on a runtime worker
        let text = "token=x ".repeat(512 * 1024);
        let s = sanitize(&text, &["s3cretvalue", "tok123abc"]);
        assert!(s.starts_with("token=**** token=****"), "{s}");
        assert_eq!(s.chars().count(), MAX_REASON_CHARS + 1);
        // a secret at the end is gone too, before the cap: masking comes first
        let tail = format!("{}Bearer tok123abc", "a ".repeat(2 * 1024 * 1024));
        assert!(!sanitize(&tail, &["tok123abc"]).contains("tok123abc"));
    }

    #[test]
    fn the_credential_inside_a_header_value_is_a_secret_of_its_own() {
        use crate::secret::Secret;
        // "user:s3cr3t-pw" in base64
        let headers = vec![
            ("Authorization".to_string(), Secret::new("Bearer tok123abc")),
            (
                "X-Basic".to_string(),
                Secret::new("Basic dXNlcjpzM2NyM3QtcHc="),
            ),
            ("X-Api-Key".to_string(), Secret::new("k")),
        ];
        let owned = secrets_of(
            &headers,
            "http://c:4318/v1/metrics?sig=a%2Bb%2Fc&k=QueryKey77",
        );
        let secrets: Vec<&str> = owned.iter().map(String::as_str).collect();
        // a collector echoing only the token, or the decoded Basic credentials
        let s = sanitize(
            "credentials tok123abc rejected; user:s3cr3t-pw unknown; s3cr3t-pw expired; \
             bad key QueryKey77 or signature a+b/c",
            &secrets,
        );
        for leaked in ["tok123abc", "s3cr3t-pw", "user:", "QueryKey77", "a+b/c"] {
            assert!(!s.contains(leaked), "{leaked} leaked in {s}");
        }
        assert!(s.starts_with("credentials **** rejected"), "{s}");
    }

    /// A one-connection server: answers `reply` (if any) and returns the first bytes the
    /// client sent.
    async fn one_shot_server(
        reply: Option<&'static str>,
    ) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            buf.truncate(n);
            if let Some(reply) = reply {
                let _ = sock.write_all(reply.as_bytes()).await;
            }
            buf
        });
        (port, task)
    }

    fn http_config(endpoint: String) -> OtlpConfig {
        OtlpConfig {
            endpoint,
            protocol: OtlpProtocol::HttpProtobuf,
            timeout: Duration::from_secs(5),
            headers: vec![(
                "Authorization".into(),
                crate::secret::Secret::new("Bearer tok123abc"),
            )],
            ..OtlpConfig::default()
        }
    }

    #[tokio::test]
    async fn a_collector_echoing_the_endpoints_query_key_does_not_get_it_into_the_reason() {
        let status = RpcStatus {
            code: 7,
            message: "credential QueryKeySecret77 unknown".into(),
            details: vec![],
        }
        .encode_to_vec();
        let body = String::from_utf8(status).unwrap();
        let reply: &'static str = Box::leak(
            format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let (port, server) = one_shot_server(Some(reply)).await;
        let config = http_config(format!(
            "http://127.0.0.1:{port}/v1/metrics?sig=QueryKeySecret77"
        ));
        let outcome = Transport::new(&config)
            .unwrap()
            .send(Bytes::from_static(b"x"))
            .await;
        server.await.unwrap();
        let ExportOutcome::Drop { reason } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(reason.starts_with("HTTP 403"), "{reason}");
        assert!(reason.contains("credential **** unknown"), "{reason}");
    }

    #[tokio::test]
    async fn http_with_tls_enabled_never_sends_headers_in_clear_text() {
        let (port, server) = one_shot_server(None).await;
        let mut config = http_config(format!("http://127.0.0.1:{port}/v1/metrics"));
        config.tls.enabled = true;
        let transport = Transport::new(&config).unwrap();
        let outcome = transport.send(Bytes::from_static(b"x")).await;
        let first = server.await.unwrap();
        // a TLS handshake record, not "POST /v1/metrics" with the token
        assert_eq!(
            first.first(),
            Some(&0x16),
            "{:?}",
            String::from_utf8_lossy(&first)
        );
        assert!(!matches!(outcome, ExportOutcome::Sent), "{outcome:?}");
    }

    #[tokio::test]
    async fn http_redirects_are_not_followed() {
        let (elsewhere, redirected) = one_shot_server(None).await;
        let reply: &'static str = Box::leak(
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{elsewhere}/v1/metrics\r\nContent-Length: 0\r\n\r\n"
            )
            .into_boxed_str(),
        );
        let (port, server) = one_shot_server(Some(reply)).await;
        let transport =
            Transport::new(&http_config(format!("http://127.0.0.1:{port}/v1/metrics"))).unwrap();
        let outcome = transport.send(Bytes::from_static(b"x")).await;
        assert!(server.await.unwrap().starts_with(b"POST /v1/metrics"));
        assert!(
            matches!(&outcome, ExportOutcome::Drop { reason } if reason.contains("307")),
            "{outcome:?}"
        );
        // the redirect target was never contacted
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!redirected.is_finished());
        redirected.abort();
    }

    /// A one-connection HTTP/2 server that waits for the first request's HEADERS frame and
    /// answers with the raw `frames`, then closes.
    async fn raw_h2_server(frames: Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
        raw_h2_server_ending(frames, false).await
    }

    /// [`raw_h2_server`] that ends with a reset (RST) instead of a close when `reset`.
    async fn raw_h2_server_ending(
        frames: Vec<u8>,
        reset: bool,
    ) -> (u16, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            // our SETTINGS (empty)
            sock.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            'frames: loop {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "client left before its request");
                got.extend_from_slice(&buf[..n]);
                // after the 24-byte preface: 9-byte frame headers; HEADERS is type 1
                let mut at = 24;
                while got.len() >= at + 9 {
                    if got[at + 3] == 1 {
                        break 'frames;
                    }
                    let len = usize::from(got[at]) << 16
                        | usize::from(got[at + 1]) << 8
                        | usize::from(got[at + 2]);
                    at += 9 + len;
                }
            }
            sock.write_all(&frames).await.unwrap();
            if reset {
                sock.set_zero_linger().unwrap();
                return;
            }
            // let the client read it all before the close
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = sock.shutdown().await;
        });
        (port, task)
    }

    /// An HTTP/2 frame header: length, type, flags, stream 1 (0 for GOAWAY).
    fn h2_frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let stream = if kind == 7 { 0 } else { 1 };
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&[0, 0, 0, stream]);
        f.extend_from_slice(payload);
        f
    }

    fn grpc_transport(port: u16) -> Transport {
        Transport::new(&OtlpConfig {
            endpoint: format!("http://127.0.0.1:{port}"),
            protocol: OtlpProtocol::Grpc,
            timeout: Duration::from_secs(5),
            ..OtlpConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_silent_collector_always_reads_as_the_same_timeout() {
        // accepts, reads, never answers
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let timeout = Duration::from_millis(300);
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let endpoint = match protocol {
                OtlpProtocol::Grpc => format!("http://127.0.0.1:{port}"),
                OtlpProtocol::HttpProtobuf => format!("http://127.0.0.1:{port}/v1/metrics"),
            };
            let transport = Transport::new(&OtlpConfig {
                endpoint,
                protocol,
                timeout,
                ..OtlpConfig::default()
            })
            .unwrap();
            for _ in 0..4 {
                let outcome = transport.send(Bytes::from_static(b"x")).await;
                assert_eq!(
                    outcome,
                    ExportOutcome::Retry {
                        after: None,
                        reason: "timed out after 300ms".into()
                    },
                    "{protocol:?}"
                );
            }
        }
        server.abort();
    }

    #[tokio::test]
    async fn a_grpc_ok_with_an_undecodable_answer_is_accepted() {
        // HPACK: ":status: 200" (static 8); content-type (static 31) "application/grpc"
        let mut headers = vec![0x88, 0x0f, 0x10, 16];
        headers.extend_from_slice(b"application/grpc");
        // a gRPC message of 3 bytes that are no ExportMetricsServiceResponse
        let data = [0, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        // trailers: "grpc-status: 0" (a new name, not indexed)
        let mut trailers = vec![0x00, 11];
        trailers.extend_from_slice(b"grpc-status");
        trailers.extend_from_slice(&[1, b'0']);
        let frames = [
            h2_frame(1, 0x4, &headers),
            h2_frame(0, 0, &data),
            h2_frame(1, 0x4 | 0x1, &trailers),
        ]
        .concat();
        let (port, server) = raw_h2_server(frames).await;
        let outcome = grpc_transport(port).send(Bytes::from_static(b"")).await;
        server.await.unwrap();
        // it was INTERNAL "undecodable response", a drop; HTTP took a 200 as accepted
        assert_eq!(outcome, ExportOutcome::Sent);
    }

    #[tokio::test]
    async fn a_grpc_answer_over_the_response_cap_is_dropped_not_retried() {
        // HPACK: ":status: 200" (static 8); content-type (static 31) "application/grpc"
        let mut headers = vec![0x88, 0x0f, 0x10, 16];
        headers.extend_from_slice(b"application/grpc");
        // a gRPC message announced one byte longer than the cap; tonic stops at its prefix
        let announced = u32::try_from(MAX_RESPONSE_BYTES + 1).unwrap();
        let mut data = vec![0];
        data.extend_from_slice(&announced.to_be_bytes());
        data.extend_from_slice(&[0; 64]);
        let frames = [h2_frame(1, 0x4, &headers), h2_frame(0, 0, &data)].concat();
        let (port, server) = raw_h2_server(frames).await;
        let outcome = grpc_transport(port).send(Bytes::from_static(b"")).await;
        server.await.unwrap();
        // it was tonic's OUT_OF_RANGE, retryable: the processed request was sent again
        assert!(
            matches!(&outcome, ExportOutcome::Drop { reason } if reason.contains("larger than 4 MiB")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_collectors_out_of_range_in_the_same_words_is_still_retried() {
        // a trailers-only answer, as rotel refuses a request over its own 4 MiB limit
        let mut headers = vec![0x88, 0x0f, 0x10, 16];
        headers.extend_from_slice(b"application/grpc");
        for (name, value) in [
            ("grpc-status", "11"),
            (
                "grpc-message",
                "Error, decoded message length too large: found 7634092 bytes, the limit is: 4194304 bytes",
            ),
        ] {
            headers.extend_from_slice(&[0x00, name.len() as u8]);
            headers.extend_from_slice(name.as_bytes());
            headers.push(value.len() as u8);
            headers.extend_from_slice(value.as_bytes());
        }
        let (port, server) = raw_h2_server(h2_frame(1, 0x4 | 0x1, &headers)).await;
        let outcome = grpc_transport(port).send(Bytes::from_static(b"")).await;
        server.await.unwrap();
        assert!(
            matches!(&outcome, ExportOutcome::Retry { reason, .. } if reason.contains("OUT_OF_RANGE")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_grpc_connection_lost_before_the_answer_is_retried() {
        // the collector dies mid-export: its socket closes (FIN), or resets (RST: a killed
        // process, a proxy that gives up), after the request arrived
        for reset in [false, true] {
            let (port, server) = raw_h2_server_ending(Vec::new(), reset).await;
            let outcome = grpc_transport(port).send(Bytes::from_static(b"")).await;
            server.await.unwrap();
            // it was UNKNOWN "transport error", a drop: FAILED at once, no backoff retry
            assert!(
                matches!(&outcome, ExportOutcome::Retry { reason, .. } if reason.contains("connection was lost")),
                "reset {reset}: {outcome:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_graceful_goaway_before_the_request_was_processed_is_retried() {
        // GOAWAY: last stream 0, error code 0 (NO_ERROR): "closing, did not process it"
        let (port, server) = raw_h2_server(h2_frame(7, 0, &[0; 8])).await;
        let outcome = grpc_transport(port).send(Bytes::from_static(b"")).await;
        server.await.unwrap();
        // it was INTERNAL, not retryable: dropped, FAILED at once
        assert!(
            matches!(&outcome, ExportOutcome::Retry { reason, .. } if reason.contains("before processing")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn an_endless_chunked_answer_is_cut_off_at_the_response_cap() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            if sock.write_all(head.as_bytes()).await.is_err() {
                return 0usize;
            }
            // 64 KiB chunks until the client hangs up (or 1 GiB, far beyond the cap)
            let chunk = [b"10000\r\n".as_slice(), &[0u8; 0x10000], b"\r\n"].concat();
            let mut sent = 0usize;
            while sent < 1 << 30 {
                if sock.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += 0x10000;
            }
            sent
        });
        let transport =
            Transport::new(&http_config(format!("http://127.0.0.1:{port}/v1/metrics"))).unwrap();
        let outcome = transport.send(Bytes::from_static(b"x")).await;
        // without the cap the whole stream is read until the 5 s timeout ends the request
        assert!(
            matches!(&outcome, ExportOutcome::Drop { reason } if reason.contains("larger than 4 MiB")),
            "{outcome:?}"
        );
        drop(transport);
        let sent = server.await.unwrap();
        assert!(sent < 1 << 30, "the client read all {sent} bytes");
    }

    #[test]
    fn tls_enabled_upgrades_a_plain_endpoint_for_both_protocols() {
        let mut config = OtlpConfig {
            endpoint: "http://c:4318/v1/metrics".into(),
            ..OtlpConfig::default()
        };
        assert_eq!(
            tls_endpoint(&config),
            (false, "http://c:4318/v1/metrics".to_string())
        );
        config.tls.enabled = true;
        assert_eq!(
            tls_endpoint(&config),
            (true, "https://c:4318/v1/metrics".to_string())
        );
    }
}
