//! The listener: accept loop, header-read timeout, graceful shutdown, and, when a web
//! configuration is given, TLS handshake, basic auth in front of every route, extra headers
//! and reloading.
//!
//! Reloading: the web config file and the files it references are read again and
//! fingerprinted (SHA-256 of their contents, so a rewrite within the same mtime second is
//! still seen) for each new connection and each request (a few small files: well under a
//! millisecond, next to a scrape's render). A changed fingerprint rebuilds the TLS and auth state; if the new
//! state cannot be built, the last good one stays in use and one error is logged per broken
//! version. A new version may add or change protections but never turn TLS, required client
//! certificates or basic auth off (see [`Protection`]): that takes a restart.
//! A connection keeps the TLS session it started with, but every request is checked
//! against the current users (exporter-toolkit does the same): a removed user is locked out
//! of open keep-alive connections too.
//!
//! Without a web config the same loop serves plain HTTP, so a client that opens
//! connections and never finishes its headers is cut off after [`HEADER_READ_TIMEOUT`]
//! here too (`axum::serve` has no timer: such connections stayed open for good), and one
//! that stops reading its answers after [`WRITE_STALL_TIMEOUT`] without progress.
//!
//! Serves HTTP/1.1 only (`http2` in the file is accepted and ignored).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::auth::BasicAuth;
use super::config::{parse_web_config, WebConfig};
use super::error::WebError;
use super::tls::build_server_config;
use crate::write_stall::WriteStallLimit;

/// Realm sent in `WWW-Authenticate`.
pub const REALM: &str = "loxone-exporter";
/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an answer may wait for a client that reads nothing of it.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper's read and write buffers per connection (its default is about 400 KiB): request
/// headers beyond it get 431, and a response body is taken from the handler only as fast
/// as the client reads, so a client that never reads holds little memory (and a `/metrics`
/// body keeps its `--web.max-requests` slot).
const MAX_CONNECTION_BUFFER: usize = 128 * 1024;
/// How long open connections may finish their request after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The state a connection is served with: built from one version of the files.
pub(crate) struct Active {
    tls: Option<TlsAcceptor>,
    auth: Arc<BasicAuth>,
    headers: Arc<Vec<(HeaderName, HeaderValue)>>,
}

impl Active {
    /// Plain HTTP: no TLS, no users (every request passes), no extra headers.
    fn plain() -> Self {
        Active {
            tls: None,
            auth: Arc::new(BasicAuth::new(Default::default())),
            headers: Arc::new(Vec::new()),
        }
    }

    fn build(config: &WebConfig, path: &Path) -> Result<Self, WebError> {
        let tls = match &config.tls {
            Some(t) => Some(TlsAcceptor::from(build_server_config(t, path)?)),
            None => None,
        };
        Ok(Active {
            tls,
            auth: Arc::new(BasicAuth::new(config.basic_auth_users.clone())),
            headers: Arc::new(config.headers.clone()),
        })
    }
}

/// Reads the config and the files it references; returns the parsed config (or its error)
/// and a fingerprint of everything read.
fn read_all(path: &Path) -> (Result<WebConfig, WebError>, [u8; 32]) {
    let mut fp = Sha256::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            fp.update(b"unreadable:");
            fp.update(e.kind().to_string().as_bytes());
            return (
                Err(WebError::Read {
                    path: path.to_path_buf(),
                    source: e,
                }),
                fp.finalize().into(),
            );
        }
    };
    fp.update((text.len() as u64).to_be_bytes());
    fp.update(text.as_bytes());
    let parsed = parse_web_config(&text, path);
    if let Ok(config) = &parsed {
        if let Some(tls) = &config.tls {
            for file in [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
                .into_iter()
                .flatten()
                .filter_map(|s| s.path())
            {
                match std::fs::read(file) {
                    Ok(bytes) => {
                        fp.update((bytes.len() as u64).to_be_bytes());
                        fp.update(&bytes);
                    }
                    Err(e) => {
                        fp.update(b"unreadable:");
                        fp.update(e.kind().to_string().as_bytes());
                    }
                }
            }
        }
    }
    (parsed, fp.finalize().into())
}

/// Loads and builds a web configuration once (for startup validation).
pub(crate) fn load_active(path: &Path) -> Result<Active, WebError> {
    let (parsed, _) = read_all(path);
    Active::build(&parsed?, path)
}

/// The current state plus what is needed to notice changes.
struct Reloader {
    /// `None`: plain HTTP, nothing to reload.
    path: Option<PathBuf>,
    current: Arc<Active>,
    /// What the current state protects.
    protection: Protection,
    /// Fingerprint of the files the current state was built from.
    active: [u8; 32],
    /// Fingerprint of the last version refused (broken, or turning a protection off): not
    /// tried or logged again, however often it comes back (a file rewritten in a loop
    /// passes through the same empty version each time).
    refused: Option<[u8; 32]>,
}

/// The protections a web configuration turns on. A reload may add or change them, never
/// take one away: `cp`, `>` and most editors truncate a file before writing it, and an
/// empty file is a valid configuration (plain HTTP, no users), so a reload that catches
/// the moment between would serve `/metrics` in clear text to anyone. Turning a protection
/// off takes a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Protection {
    tls: bool,
    client_certificates_required: bool,
    basic_auth: bool,
}

impl Protection {
    fn of(config: &WebConfig) -> Self {
        Protection {
            tls: config.tls.is_some(),
            client_certificates_required: config
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth == super::config::ClientAuth::RequireAndVerify),
            basic_auth: !config.basic_auth_users.is_empty(),
        }
    }

    /// The protections `self` has and `new` lacks, in words.
    fn lost_in(self, new: Protection) -> Vec<&'static str> {
        let mut lost = Vec::new();
        if self.tls && !new.tls {
            lost.push("TLS");
        }
        if self.client_certificates_required && !new.client_certificates_required {
            lost.push("required client certificates");
        }
        if self.basic_auth && !new.basic_auth {
            lost.push("basic auth");
        }
        lost
    }
}

impl Reloader {
    fn new(path: Option<PathBuf>) -> Result<Self, WebError> {
        let Some(path) = path else {
            return Ok(Reloader {
                path: None,
                current: Arc::new(Active::plain()),
                protection: Protection::default(),
                active: [0; 32],
                refused: None,
            });
        };
        let (parsed, active) = read_all(&path);
        let config = parsed?;
        let current = Arc::new(Active::build(&config, &path)?);
        log_loaded(&path, &config, false);
        Ok(Reloader {
            path: Some(path),
            current,
            protection: Protection::of(&config),
            active,
            refused: None,
        })
    }

    /// The current state, rebuilt first if the files changed.
    fn current(&mut self) -> Arc<Active> {
        let Some(path) = &self.path else {
            return self.current.clone();
        };
        let (parsed, fp) = read_all(path);
        // unchanged, back to what is in use (a rewrite caught halfway), or refused already
        if fp == self.active || self.refused == Some(fp) {
            return self.current.clone();
        }
        match parsed.and_then(|c| Active::build(&c, path).map(|a| (c, a))) {
            Ok((config, active)) => {
                let protection = Protection::of(&config);
                let lost = self.protection.lost_in(protection);
                if lost.is_empty() {
                    log_loaded(path, &config, true);
                    self.protection = protection;
                    self.current = Arc::new(active);
                    self.active = fp;
                    self.refused = None;
                } else {
                    tracing::error!(
                        path = %path.display(),
                        "web config changed to turn off {}; keeping the previous one (turning a protection off needs a restart; a file caught while being rewritten looks like this too)",
                        lost.join(" and ")
                    );
                    self.refused = Some(fp);
                }
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "web config changed but cannot be used; keeping the previous one"
                );
                self.refused = Some(fp);
            }
        }
        self.current.clone()
    }
}

fn log_loaded(path: &Path, config: &WebConfig, reload: bool) {
    tracing::info!(
        path = %path.display(),
        tls = config.tls.is_some(),
        client_auth = ?config.tls.as_ref().map(|t| t.client_auth),
        basic_auth_users = config.basic_auth_users.len(),
        "{}",
        if reload { "web config reloaded" } else { "web config loaded" }
    );
}

/// Counts a repeating failure so that it is logged at most once per `every`, with how many
/// went unlogged in between: a condition that lasts (out of file descriptors, a scraper
/// with the wrong certificate, port scanners) is one line per period, not one per event.
struct Throttle {
    every: Duration,
    /// When the last line was logged.
    last_logged: Option<std::time::Instant>,
    /// Failures since that line.
    unlogged: u64,
}

impl Throttle {
    fn new(every: Duration) -> Self {
        Throttle {
            every,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// Counts one failure; `Some(failures unlogged before it)` when this one is to be
    /// logged.
    fn failed(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last_logged {
            Some(at) if now.duration_since(at) < self.every => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }

    /// The failures ended; true when any was logged (so the recovery is worth a line).
    fn recovered(&mut self) -> bool {
        self.unlogged = 0;
        self.last_logged.take().is_some()
    }
}

/// Longest gap between two log lines about failing accepts while they keep failing.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs failing accepts (out of file descriptors, mostly) once per
/// [`ACCEPT_ERROR_LOG_EVERY`] with the count in between, and the recovery.
struct AcceptErrorLog(Throttle);

impl Default for AcceptErrorLog {
    fn default() -> Self {
        AcceptErrorLog(Throttle::new(ACCEPT_ERROR_LOG_EVERY))
    }
}

impl AcceptErrorLog {
    fn failed(&mut self, error: &std::io::Error) {
        if let Some(unlogged) = self.0.failed() {
            tracing::warn!(
                error = %error,
                failed_since_last_line = unlogged,
                "cannot accept HTTP connections; retrying every 50 ms"
            );
        }
    }

    fn accepted(&mut self) {
        if self.0.recovered() {
            tracing::info!("accepting HTTP connections again");
        }
    }
}

/// Longest gap between two log lines about failed TLS handshakes while they go on.
const HANDSHAKE_FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Logs failed TLS handshakes at WARN (a scraper with a wrong or missing client certificate
/// is otherwise invisible at the default level), at most once per
/// [`HANDSHAKE_FAILURE_LOG_EVERY`] with the count in between (port scanners fail
/// handshakes all day); every failure at DEBUG. Shared by the connection tasks.
struct HandshakeFailureLog(parking_lot::Mutex<Throttle>);

impl Default for HandshakeFailureLog {
    fn default() -> Self {
        HandshakeFailureLog(parking_lot::Mutex::new(Throttle::new(
            HANDSHAKE_FAILURE_LOG_EVERY,
        )))
    }
}

impl HandshakeFailureLog {
    /// Counts a failure; true when it was logged at WARN.
    fn failed(&self, peer: SocketAddr, error: &str) -> bool {
        let unlogged = self.0.lock().failed();
        match unlogged {
            Some(unlogged) => {
                tracing::warn!(
                    %peer,
                    error,
                    failed_since_last_line = unlogged,
                    "TLS handshake failed (a client without the right certificate or not speaking TLS)"
                );
                true
            }
            None => {
                tracing::debug!(%peer, error, "TLS handshake failed");
                false
            }
        }
    }
}

/// Open connections, and the most since memory was last handed back.
#[derive(Default)]
struct ConnectionCount {
    /// (open now, most open since the last trim)
    counts: parking_lot::Mutex<(usize, usize)>,
}

/// After a burst of at least this many connections has ended, free memory goes back to
/// the system (each connection's buffers stay in glibc's arenas otherwise: bursts of 5000
/// connections left RSS at 139 MB instead of 15 MB).
const TRIM_AFTER_CONNECTIONS: usize = 64;

impl ConnectionCount {
    fn opened(self: &Arc<Self>) -> OpenConnection {
        let mut c = self.counts.lock();
        c.0 += 1;
        c.1 = c.1.max(c.0);
        OpenConnection(self.clone())
    }
}

/// One open connection; closing it (drop) may hand memory back after a burst.
struct OpenConnection(Arc<ConnectionCount>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let trim = {
            let mut c = self.0.counts.lock();
            c.0 = c.0.saturating_sub(1);
            // "over" leaves room for the few keep-alive connections of scrapers
            let burst_over = c.0 <= TRIM_AFTER_CONNECTIONS / 8 && c.1 >= TRIM_AFTER_CONNECTIONS;
            if burst_over {
                c.1 = 0;
            }
            burst_over
        };
        if trim {
            // about a millisecond: off the runtime's workers (none while it shuts down)
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn_blocking(crate::alloc::release_free_memory);
            }
        }
    }
}

/// Serves `router` on `listener`, with TLS / basic auth from the file at `path` if given.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    path: Option<PathBuf>,
    shutdown: CancellationToken,
) -> Result<(), WebError> {
    let reloader = Arc::new(parking_lot::Mutex::new(Reloader::new(path)?));
    let tracker = TaskTracker::new();
    let connections = Arc::new(ConnectionCount::default());
    let mut accept_errors = AcceptErrorLog::default();
    let handshake_failures = Arc::new(HandshakeFailureLog::default());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning, and say so
                // once per ACCEPT_ERROR_LOG_EVERY, not 20 times a second
                accept_errors.failed(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        accept_errors.accepted();
        let _ = stream.set_nodelay(true);
        // under TLS too: a client that stops reading stalls the TCP writes
        let stream = WriteStallLimit::new(stream, WRITE_STALL_TIMEOUT, "the client");
        let tls = reloader.lock().current().tls.clone();
        let reloader = reloader.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        let open = connections.opened();
        let handshake_failures = handshake_failures.clone();
        tracker.spawn(async move {
            match tls {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    // a client stuck in its handshake does not hold up a shutdown
                    let handshake = tokio::select! {
                        r = handshake => r,
                        _ = shutdown.cancelled() => return,
                    };
                    match handshake {
                        Ok(Ok(tls)) => {
                            serve_connection(tls, peer, reloader, router, shutdown).await
                        }
                        Ok(Err(e)) => {
                            handshake_failures.failed(peer, &e.to_string());
                        }
                        Err(_) => {
                            handshake_failures.failed(peer, "timed out");
                        }
                    }
                }
                None => serve_connection(stream, peer, reloader, router, shutdown).await,
            }
            drop(open);
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    reloader: Arc<parking_lot::Mutex<Reloader>>,
    router: Router,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        // the users and headers of now, not of when the connection was opened
        let active = reloader.lock().current();
        let router = router.clone();
        async move { Ok::<_, Infallible>(handle_request(req, &active, router).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_CONNECTION_BUFFER)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

async fn handle_request(
    mut req: Request<Incoming>,
    active: &Active,
    router: Router,
) -> Response<Body> {
    let mut response = if active
        .auth
        .check(req.headers().get(header::AUTHORIZATION))
        .await
    {
        // Handlers never see the credentials, so they cannot log them.
        req.headers_mut().remove(header::AUTHORIZATION);
        match router.oneshot(req.map(Body::new)).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    } else {
        unauthorized()
    };
    for (name, value) in active.headers.iter() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The 401 answer: fixed text, nothing from the request.
fn unauthorized() -> Response<Body> {
    let mut r = Response::new(Body::from("Unauthorized\n"));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"loxone-exporter\""),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_rewritten_in_a_loop_is_refused_once_and_its_own_content_never_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        let hash = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
        let full = format!("basic_auth_users:\n  alice: '{hash}'\n");
        std::fs::write(&path, &full).unwrap();
        let mut reloader = Reloader::new(Some(path.clone())).unwrap();
        let first = reloader.current();
        for _ in 0..3 {
            // `cp` of the same file: empty, then the same bytes again
            std::fs::write(&path, "").unwrap();
            assert!(
                Arc::ptr_eq(&reloader.current(), &first),
                "emptied file used"
            );
            assert!(reloader.refused.is_some());
            std::fs::write(&path, &full).unwrap();
            // its own content: the state in use stays (no rebuild, no bcrypt cache reset)
            assert!(
                Arc::ptr_eq(&reloader.current(), &first),
                "same content rebuilt"
            );
        }
        // a real change is taken and forgets the refusal
        std::fs::write(&path, format!("{full}  bob: '{hash}'\n")).unwrap();
        assert!(!Arc::ptr_eq(&reloader.current(), &first));
        assert!(reloader.refused.is_none());
    }

    #[test]
    fn failing_accepts_are_logged_once_per_period_with_a_count() {
        let mut log = AcceptErrorLog::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        log.failed(&emfile);
        let first = log.0.last_logged;
        assert!(first.is_some());
        for _ in 0..200 {
            log.failed(&emfile);
        }
        // 200 failures 50 ms apart would have been 200 lines; all counted, none logged
        assert_eq!((log.0.last_logged, log.0.unlogged), (first, 200));
        log.accepted();
        assert_eq!((log.0.last_logged, log.0.unlogged), (None, 0));
    }

    #[test]
    fn failed_handshakes_are_a_warning_once_per_period() {
        let log = HandshakeFailureLog::default();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(log.failed(peer, "peer sent no certificates"));
        for _ in 0..50 {
            assert!(!log.failed(peer, "peer sent no certificates"));
        }
        assert_eq!(log.0.lock().unlogged, 50);
    }

    #[test]
    fn a_burst_of_connections_ends_in_a_trim_once_it_is_over() {
        let count = Arc::new(ConnectionCount::default());
        let scraper = count.opened();
        let burst: Vec<_> = (0..TRIM_AFTER_CONNECTIONS)
            .map(|_| count.opened())
            .collect();
        assert_eq!(
            *count.counts.lock(),
            (TRIM_AFTER_CONNECTIONS + 1, TRIM_AFTER_CONNECTIONS + 1)
        );
        drop(burst);
        // the peak is reset by the trim, though a scraper's keep-alive connection stays
        assert_eq!(*count.counts.lock(), (1, 0));
        drop(scraper);
        // a few connections never trim
        let few: Vec<_> = (0..10).map(|_| count.opened()).collect();
        drop(few);
        assert_eq!(*count.counts.lock(), (0, 10));
    }
}
