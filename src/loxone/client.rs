//! The per-Miniserver task: reconnect loop around [`run_session`] (issue 4 "Session";
//! protocol doc §5.4; original-exporter §9 defects 8, 9, 16).
//!
//! Each attempt fetches `jdev/cfg/apiKey` and `jdev/sys/getPublicKey` over HTTP (async, with
//! timeouts, never with credentials), opens the WebSocket and runs one session. A Miniserver
//! that offers TLS is moved to wss:// before anything secret is sent, with a way back to
//! ws:// when wss:// does not work there (`TlsUpgrade`). Between
//! attempts it waits per [`RetryPolicy`]: exponential backoff 1 s → 30 s with jitter, reset
//! after a session that reached live values; wrong credentials back off to at least 5 minutes
//! after 3 consecutive failures (a Miniserver locks users out); close code 4003 waits the
//! announced time. Refused logins in a row are kept for the alert that watches them
//! (`login_failed`, reset by the session once a login works). Every failure is counted
//! (`record_error(kind)`), logged once with the `miniserver` field (identical repeats at
//! debug), and shown via `set_last_error`.
//! `set_connected` is true exactly while live values flow. Shutdown is honoured at every
//! await: the session kills its token within the grace period and closes the socket.
//!
//! Not here: the protocol steps (`session.rs`), sockets (`connection.rs`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument as _};

use super::auth::{self, FirmwareVersion};
use super::connection::{ConnectError, Endpoint, WsConnection};
use super::crypto::{parse_public_key, CryptoError};
use super::envelope::{parse_api_key_value, parse_ll, EnvelopeError};
use super::header::DEFAULT_MAX_PAYLOAD;
use super::session::{run_session, Carry, Prelude, SessionEnd, SessionOutcome};
use crate::backoff::Backoff;
use crate::config::MiniserverConfig;
use crate::metrics::store::MiniserverState;

/// Tunables of the client; [`Default`] holds the production values.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Interval between `keepalive` commands.
    pub keepalive_interval: Duration,
    /// No message for this long means the connection is dead: reconnect.
    pub liveness_timeout: Duration,
    /// Answer timeout of one command.
    pub command_timeout: Duration,
    /// Timeout of the structure-file download.
    pub structure_timeout: Duration,
    /// TCP + TLS + WebSocket handshake timeout.
    pub connect_timeout: Duration,
    /// Timeout of one pre-WebSocket HTTP request.
    pub http_timeout: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay for ordinary failures.
    pub backoff_max: Duration,
    /// Jitter fraction (0..=1) applied to reconnect delays.
    pub backoff_jitter: f64,
    /// Consecutive credential failures before the long backoff applies.
    pub auth_failures_before_long_backoff: u32,
    /// Delay after that many credential failures (and default for 4003 without a time).
    pub auth_failure_backoff: Duration,
    /// Token permission: 2 = Web, 4 = App.
    pub token_permission: u8,
    /// Client description sent with `getjwt`.
    pub client_info: String,
    /// Largest accepted payload (header length and WebSocket message cap).
    pub max_payload: u32,
    /// Time allowed for killing the token and closing on shutdown.
    pub shutdown_grace: Duration,
    /// Wall clock for token expiry (`validUntil` is absolute time).
    pub wall_clock: fn() -> SystemTime,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            keepalive_interval: Duration::from_secs(30),
            liveness_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(10),
            structure_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            http_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            backoff_jitter: 0.2,
            auth_failures_before_long_backoff: 3,
            auth_failure_backoff: Duration::from_secs(300),
            token_permission: auth::DEFAULT_TOKEN_PERMISSION,
            client_info: "loxone-exporter".to_string(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            shutdown_grace: Duration::from_millis(500),
            wall_clock: SystemTime::now,
        }
    }
}

/// Why the HTTP part before the WebSocket failed.
#[derive(Debug, thiserror::Error)]
pub enum PreludeError {
    /// Network / TLS / timeout.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Non-200 status (503 while the Miniserver restarts).
    #[error("HTTP {path} answered status {status}")]
    Status {
        /// Request path.
        path: &'static str,
        /// HTTP status.
        status: u16,
    },
    /// The answer was not the expected LL envelope.
    #[error("HTTP {path}: {source}")]
    Envelope {
        /// Request path.
        path: &'static str,
        /// Cause.
        source: EnvelopeError,
    },
    /// The public key did not parse.
    #[error("public key: {0}")]
    PublicKey(#[from] CryptoError),
}

/// How an attempt failed, as far as the retry delay is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A session that delivered live values ended.
    AfterEstablished,
    /// The Miniserver rejected the credentials (or disabled the user).
    Credentials,
    /// Close 4003: blocked after failed logins, for the announced seconds if given.
    Blocked {
        /// Announced seconds.
        seconds: Option<u64>,
    },
    /// Anything else.
    Other,
}

/// Pure retry bookkeeping: reconnect backoff plus the consecutive credential failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    backoff: Backoff,
    auth_failures: u32,
    long_after: u32,
    long_delay: Duration,
}

impl RetryPolicy {
    /// From the options; out-of-range values are clamped (zero initial → 1 ms, max below
    /// initial → initial, jitter into 0..=1).
    pub fn new(options: &ClientOptions) -> Self {
        let initial = options.backoff_initial.max(Duration::from_millis(1));
        let max = options.backoff_max.max(initial);
        let jitter = if options.backoff_jitter.is_finite() {
            options.backoff_jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        #[allow(clippy::expect_used)]
        let backoff =
            Backoff::new(initial, max, jitter).expect("clamped backoff parameters are valid");
        RetryPolicy {
            backoff,
            auth_failures: 0,
            long_after: options.auth_failures_before_long_backoff.max(1),
            long_delay: options.auth_failure_backoff,
        }
    }

    /// Consecutive credential failures so far.
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures
    }

    /// Login succeeded: forget credential failures.
    pub fn authenticated(&mut self) {
        self.auth_failures = 0;
    }

    /// Delay before the next attempt after `failure`; `unit_random` in 0..1 for jitter.
    pub fn next_delay(&mut self, failure: &Failure, unit_random: f64) -> Duration {
        match failure {
            Failure::AfterEstablished => {
                self.backoff.reset();
                self.backoff.fail(unit_random)
            }
            Failure::Credentials => {
                self.auth_failures = self.auth_failures.saturating_add(1);
                let d = self.backoff.fail(unit_random);
                if self.auth_failures >= self.long_after {
                    d.max(self.long_delay)
                } else {
                    d
                }
            }
            Failure::Blocked { seconds } => {
                let d = self.backoff.fail(unit_random);
                d.max(seconds.map_or(self.long_delay, Duration::from_secs))
            }
            Failure::Other => self.backoff.fail(unit_random),
        }
    }

    /// True when the last credential failure triggered the long backoff.
    pub fn in_long_backoff(&self) -> bool {
        self.auth_failures >= self.long_after
    }
}

/// Runs one Miniserver until `shutdown` with the default [`ClientOptions`].
pub async fn run_miniserver(
    config: MiniserverConfig,
    state: Arc<MiniserverState>,
    shutdown: CancellationToken,
) {
    run_miniserver_with(config, ClientOptions::default(), state, shutdown).await
}

/// Runs one Miniserver until `shutdown`: connect, session, back off, repeat.
pub async fn run_miniserver_with(
    config: MiniserverConfig,
    options: ClientOptions,
    state: Arc<MiniserverState>,
    shutdown: CancellationToken,
) {
    let name = config.name.clone();
    let endpoint = match Endpoint::from_config(&config) {
        Ok(e) => e,
        Err(e) => {
            error!(miniserver = %name, error = %e, "cannot use this Miniserver's TLS settings; not connecting");
            state.record_error("connect");
            state.set_last_error(Some(e.to_string()));
            state.set_connected(false);
            shutdown.cancelled().await;
            return;
        }
    };
    let mut policy = RetryPolicy::new(&options);
    let mut carry = Carry::default();
    let mut offer_subprotocol = true;
    let mut last_logged: Option<String> = None;
    let mut upgrade = TlsUpgrade::Untried;

    while !shutdown.is_cancelled() {
        // self-telemetry: one span per connection attempt, ended before the backoff sleep
        let session_span = tracing::info_span!(
            "miniserver.session",
            miniserver = %name,
            error.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let attempt = connect(
            &endpoint,
            &mut upgrade,
            &config,
            &options,
            &mut offer_subprotocol,
        )
        .instrument(tracing::info_span!(parent: &session_span, "miniserver.connect"));
        let attempt = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = attempt => r,
        };
        let mut authenticated = false;
        let (failure, kind, message) = match attempt {
            Err(e) => {
                let kind = match &e {
                    PreludeError::Connect(
                        ConnectError::Timeout { .. } | ConnectError::HttpTimeout { .. },
                    ) => "timeout",
                    PreludeError::Connect(_) | PreludeError::Status { .. } => "connect",
                    PreludeError::Envelope { .. } | PreludeError::PublicKey(_) => "protocol",
                };
                (Failure::Other, kind, format!("connection failed: {e}"))
            }
            Ok((prelude, mut conn)) => {
                // not `.instrument(session_span)`: that would enter and leave the span for
                // every received message; the session enters it where it matters
                let outcome = run_session(
                    &session_span,
                    &mut conn,
                    &prelude,
                    &mut carry,
                    &config,
                    &options,
                    &state,
                    &shutdown,
                )
                .await;
                state.set_connected(false);
                if outcome.authenticated {
                    policy.authenticated();
                    authenticated = true;
                }
                match classify(&outcome, options.backoff_max, &mut carry) {
                    None => break,
                    Some(c) => c,
                }
            }
        };
        let delay = policy.next_delay(&failure, rand::random::<f64>());
        state.record_error(kind);
        if is_refused_login(&failure, authenticated) {
            state.login_failed();
        }
        session_span.record("error.kind", kind);
        session_span.record("otel.status_code", "ERROR");
        let span_guard = session_span.enter();
        let shown = if failure == Failure::Credentials && policy.in_long_backoff() {
            format!(
                "{message}; {} consecutive login failures, waiting {} s before trying again to avoid a Miniserver lockout",
                policy.auth_failures(),
                delay.as_secs()
            )
        } else {
            message
        };
        state.set_last_error(Some(shown.clone()));
        let repeated = last_logged.as_deref() == Some(shown.as_str());
        match (&failure, repeated) {
            (Failure::Credentials | Failure::Blocked { .. }, _) => {
                error!(miniserver = %name, kind, retry_in_s = delay.as_secs_f64(), "{shown}")
            }
            (_, true) => {
                debug!(miniserver = %name, kind, retry_in_s = delay.as_secs_f64(), "{shown}")
            }
            (_, false) => {
                warn!(miniserver = %name, kind, retry_in_s = delay.as_secs_f64(), "{shown}")
            }
        }
        last_logged = Some(shown);
        drop(span_guard);
        drop(session_span);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    state.set_connected(false);
    debug!(miniserver = %name, "client stopped");
}

/// Whether an attempt ended with the Miniserver refusing the login: credentials rejected, the
/// user disabled (4006) or blocked (4003), before this attempt's login worked. Other `auth`
/// errors are not refusals: a malformed answer to a login command, or no public key to
/// encrypt the login with (nothing was sent), and neither is a user disabled while its
/// session ran (the next attempt's login shows whether it is refused).
fn is_refused_login(failure: &Failure, authenticated: bool) -> bool {
    !authenticated && matches!(failure, Failure::Credentials | Failure::Blocked { .. })
}

/// Maps a session outcome to the retry class, the error kind and a log/health message;
/// `None` for shutdown. Drops the stored token on close codes 4004/4005. Only a session
/// whose live values flowed for `stable_after` resets the backoff: one dropped right after
/// it came up would otherwise be reconnected to (full login, structure check) every second.
fn classify(
    outcome: &SessionOutcome,
    stable_after: Duration,
    carry: &mut Carry,
) -> Option<(Failure, &'static str, String)> {
    let after_ok = |f: Failure| {
        if outcome.live_for.is_some_and(|live| live >= stable_after) {
            Failure::AfterEstablished
        } else {
            f
        }
    };
    Some(match &outcome.end {
        SessionEnd::Shutdown => return None,
        SessionEnd::Closed { code, reason } => match code {
            Some(4003) => {
                let seconds = auth::blocked_seconds(reason);
                let wait = seconds.map_or(String::new(), |s| format!("; it announced {s} s"));
                (
                    Failure::Blocked { seconds },
                    "auth",
                    format!("the Miniserver blocks this user after too many failed logins (close 4003{wait})"),
                )
            }
            Some(4006) => (
                Failure::Credentials,
                "auth",
                "the Miniserver disabled this user (close 4006)".into(),
            ),
            Some(c @ (4004 | 4005)) => {
                carry.token = None;
                (
                    after_ok(Failure::Other),
                    "closed",
                    format!("user changed on the Miniserver (close {c}); logging in again"),
                )
            }
            Some(4007) => (
                after_ok(Failure::Other),
                "closed",
                "the Miniserver is updating (close 4007)".into(),
            ),
            Some(4008) => (
                after_ok(Failure::Other),
                "closed",
                "the Miniserver has no free event slot (close 4008)".into(),
            ),
            Some(c) => (
                after_ok(Failure::Other),
                "closed",
                format!("the Miniserver closed the connection (code {c})"),
            ),
            None => (
                after_ok(Failure::Other),
                "closed",
                "the connection was closed".into(),
            ),
        },
        SessionEnd::OutOfService => (
            after_ok(Failure::Other),
            "closed",
            "the Miniserver went out of service (reboot or update)".into(),
        ),
        SessionEnd::Silent { after } => (
            after_ok(Failure::Other),
            "timeout",
            format!("no message from the Miniserver for {} s", after.as_secs()),
        ),
        SessionEnd::Failed(e) => {
            let failure = match e {
                super::session::SessionError::Credentials { .. } => Failure::Credentials,
                _ => after_ok(Failure::Other),
            };
            (failure, e.kind(), e.to_string())
        }
    })
}

/// Whether a configuration without `use_encryption` connects with wss:// anyway: a
/// Miniserver that offers TLS (`httpsStatus` 1 in `jdev/cfg/apiKey`: Gen 2, Go Gen 2,
/// Compact) gets it, as the Python exporter moved Gen 2 to wss://, but before any
/// credential is sent (the apiKey request carries none) and with a way back to ws://
/// when wss:// does not work (the Python exporter then retried wss:// forever).
#[derive(Debug)]
enum TlsUpgrade {
    /// Not tried yet, or wss:// stopped working: ask the configured endpoint.
    Untried,
    /// wss:// on `ssl_port` works: every attempt starts there, as long as the same Miniserver
    /// (serial number) answers.
    Using {
        /// wss:// on `ssl_port`.
        endpoint: Endpoint,
        /// The serial number the plain endpoint gave.
        serial: String,
    },
    /// wss:// failed: ws:// (commands still encrypted) until then.
    FailedUntil(tokio::time::Instant),
}

/// How long a failed wss:// upgrade is not tried again.
const TLS_UPGRADE_RETRY: Duration = Duration::from_secs(3600);

/// One connection attempt: the HTTP prelude and the WebSocket, on wss:// when the Miniserver
/// offers TLS (see [`TlsUpgrade`]), else on the configured endpoint.
async fn connect(
    configured: &Endpoint,
    upgrade: &mut TlsUpgrade,
    config: &MiniserverConfig,
    options: &ClientOptions,
    offer_subprotocol: &mut bool,
) -> Result<(Prelude, WsConnection), PreludeError> {
    if let TlsUpgrade::Using { endpoint, serial } = &*upgrade {
        let (endpoint, serial) = (endpoint.clone(), serial.clone());
        match tls_attempt(&endpoint, &serial, options, offer_subprotocol).await {
            Ok((prelude, conn)) => return Ok((prelude, conn)),
            // Whatever failed on wss:// (a reboot, TLS switched off, port 443 now leading
            // elsewhere): ask the configured endpoint again what the Miniserver offers, in
            // this attempt; a second failure of wss:// below falls back to ws:// for a while.
            Err(reason) => {
                debug!(miniserver = %config.name, error = %reason, "wss:// failed; asking the configured endpoint");
                *upgrade = TlsUpgrade::Untried;
            }
        }
    }
    let prelude = fetch_prelude(configured, options).await?;
    // (`Using` cannot be the state here: it returned above or became `Untried`)
    let may_try =
        !matches!(upgrade, TlsUpgrade::FailedUntil(at) if tokio::time::Instant::now() < *at);
    if !prelude.tls && prelude.api.https_status == Some(1) && may_try {
        let attempt = async {
            let tls = Endpoint::tls_of(config).map_err(|e| e.to_string())?;
            let (tls_prelude, conn) =
                tls_attempt(&tls, &prelude.api.snr, options, offer_subprotocol).await?;
            Ok::<_, String>((tls, tls_prelude, conn))
        };
        match attempt.await {
            Ok((endpoint, tls_prelude, conn)) => {
                info!(
                    miniserver = %config.name,
                    url = %endpoint.ws_url(),
                    "the Miniserver offers TLS: connecting with wss://"
                );
                *upgrade = TlsUpgrade::Using {
                    endpoint,
                    serial: prelude.api.snr.clone(),
                };
                return Ok((tls_prelude, conn));
            }
            Err(reason) => {
                warn!(
                    miniserver = %config.name,
                    error = %reason,
                    "the Miniserver offers TLS, but wss:// on ssl_port {} failed; staying on ws:// (commands stay encrypted) and trying wss:// again in an hour; set use_encryption: true to require TLS",
                    config.ssl_port
                );
                *upgrade = TlsUpgrade::FailedUntil(tokio::time::Instant::now() + TLS_UPGRADE_RETRY);
            }
        }
    }
    let conn = open_ws(configured, options, offer_subprotocol).await?;
    Ok((prelude, conn))
}

/// Prelude and WebSocket over wss://. The answer must come from the Miniserver with
/// `serial`, the one the plain endpoint named: behind a router, port 443 may lead elsewhere,
/// and a token or password hash must not go there. Errors name the endpoint.
async fn tls_attempt(
    tls: &Endpoint,
    serial: &str,
    options: &ClientOptions,
    offer_subprotocol: &mut bool,
) -> Result<(Prelude, WsConnection), String> {
    let prelude = fetch_prelude(tls, options)
        .await
        .map_err(|e| format!("{}: {e}", tls.authority()))?;
    if prelude.api.snr != serial {
        return Err(format!(
            "{} answered as another Miniserver (serial number {} instead of {serial})",
            tls.authority(),
            prelude.api.snr
        ));
    }
    let conn = open_ws(tls, options, offer_subprotocol)
        .await
        .map_err(|e| format!("{}: {e}", tls.authority()))?;
    Ok((prelude, conn))
}

async fn open_ws(
    endpoint: &Endpoint,
    options: &ClientOptions,
    offer_subprotocol: &mut bool,
) -> Result<WsConnection, ConnectError> {
    let max = options.max_payload as usize;
    match endpoint
        .connect_ws(
            options.connect_timeout,
            options.command_timeout,
            max,
            *offer_subprotocol,
        )
        .await
    {
        Err(e) if *offer_subprotocol && e.is_missing_subprotocol() => {
            // This Miniserver does not echo `remotecontrol`; stop offering it.
            *offer_subprotocol = false;
            endpoint
                .connect_ws(options.connect_timeout, options.command_timeout, max, false)
                .await
        }
        other => other,
    }
}

/// `jdev/cfg/apiKey` and, when the firmware encrypts, `jdev/sys/getPublicKey`, over HTTP(S).
pub async fn fetch_prelude(
    endpoint: &Endpoint,
    options: &ClientOptions,
) -> Result<Prelude, PreludeError> {
    const API_KEY: &str = "/jdev/cfg/apiKey";
    const PUBLIC_KEY: &str = "/jdev/sys/getPublicKey";
    let value = http_ll_value(endpoint, API_KEY, options.http_timeout).await?;
    let api = parse_api_key_value(&value).map_err(|source| PreludeError::Envelope {
        path: API_KEY,
        source,
    })?;
    let version = FirmwareVersion::parse(&api.version);
    // hash authentication (before 9.0) sends nothing encrypted: a missing or broken public
    // key must not stop it
    let public_key = if auth::needs_key_exchange(version) {
        let fetched = async {
            let text = http_ll_value(endpoint, PUBLIC_KEY, options.http_timeout).await?;
            Ok::<_, PreludeError>(parse_public_key(&text)?)
        }
        .await;
        match fetched {
            Ok(key) => Some(key),
            // Over TLS command encryption is optional (firmware 11.2.10.22+): go on without.
            Err(e) if endpoint.is_tls() => {
                debug!(error = %e, "no public key; token commands rely on TLS alone");
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    Ok(Prelude {
        api,
        version,
        public_key,
        tls: endpoint.is_tls(),
    })
}

async fn http_ll_value(
    endpoint: &Endpoint,
    path: &'static str,
    timeout: Duration,
) -> Result<String, PreludeError> {
    let reply = endpoint.http_get(path, timeout).await?;
    if reply.status != 200 {
        return Err(PreludeError::Status {
            path,
            status: reply.status,
        });
    }
    let text = String::from_utf8_lossy(&reply.body);
    let ll = parse_ll(&text).map_err(|source| PreludeError::Envelope { path, source })?;
    if ll.code != 200 {
        return Err(PreludeError::Status {
            path,
            status: ll.code,
        });
    }
    Ok(match ll.value {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ClientOptions {
        ClientOptions {
            backoff_jitter: 0.0,
            ..ClientOptions::default()
        }
    }

    #[test]
    fn ordinary_failures_double_to_the_cap() {
        let mut p = RetryPolicy::new(&options());
        let d: Vec<u64> = (0..7)
            .map(|_| p.next_delay(&Failure::Other, 0.5).as_secs())
            .collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn established_session_resets_backoff() {
        let mut p = RetryPolicy::new(&options());
        for _ in 0..5 {
            p.next_delay(&Failure::Other, 0.5);
        }
        assert_eq!(
            p.next_delay(&Failure::AfterEstablished, 0.5),
            Duration::from_secs(1)
        );
        assert_eq!(p.next_delay(&Failure::Other, 0.5), Duration::from_secs(2));
    }

    #[test]
    fn three_credential_failures_back_off_five_minutes() {
        let mut p = RetryPolicy::new(&options());
        assert_eq!(
            p.next_delay(&Failure::Credentials, 0.5),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.next_delay(&Failure::Credentials, 0.5),
            Duration::from_secs(2)
        );
        assert!(!p.in_long_backoff());
        assert_eq!(
            p.next_delay(&Failure::Credentials, 0.5),
            Duration::from_secs(300)
        );
        assert!(p.in_long_backoff());
        assert_eq!(
            p.next_delay(&Failure::Credentials, 0.5),
            Duration::from_secs(300)
        );
        // an unrelated failure in between does not clear the count...
        p.next_delay(&Failure::Other, 0.5);
        assert_eq!(
            p.next_delay(&Failure::Credentials, 0.5),
            Duration::from_secs(300)
        );
        // ...a successful login does
        p.authenticated();
        assert!(p.next_delay(&Failure::Credentials, 0.5) < Duration::from_secs(300));
    }

    #[test]
    fn blocked_waits_the_announced_time() {
        let mut p = RetryPolicy::new(&options());
        assert_eq!(
            p.next_delay(&Failure::Blocked { seconds: Some(90) }, 0.5),
            Duration::from_secs(90)
        );
        assert_eq!(
            p.next_delay(&Failure::Blocked { seconds: None }, 0.5),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut p = RetryPolicy::new(&ClientOptions::default());
        let lo = p.next_delay(&Failure::Other, 0.0);
        let mut p = RetryPolicy::new(&ClientOptions::default());
        let hi = p.next_delay(&Failure::Other, 0.999);
        assert!(lo < Duration::from_secs(1) && hi > Duration::from_secs(1));
    }

    fn outcome(end: SessionEnd, established: bool) -> SessionOutcome {
        SessionOutcome {
            end,
            authenticated: established,
            live_for: established.then_some(Duration::from_secs(3600)),
        }
    }

    /// The default longest backoff: sessions that lived this long reset the backoff.
    const STABLE: Duration = Duration::from_secs(30);

    #[test]
    fn only_a_session_that_stayed_up_resets_the_backoff() {
        let mut carry = Carry::default();
        let closed = SessionEnd::Closed {
            code: Some(1000),
            reason: String::new(),
        };
        let mut short = outcome(closed, true);
        short.live_for = Some(Duration::from_millis(800));
        let (f, _, _) = classify(&short, STABLE, &mut carry).unwrap();
        assert_eq!(f, Failure::Other, "dropped right after it came up");
        short.live_for = Some(STABLE);
        let (f, _, _) = classify(&short, STABLE, &mut carry).unwrap();
        assert_eq!(f, Failure::AfterEstablished);
    }

    #[test]
    fn close_codes() {
        let mut carry = Carry {
            token: Some(auth::StoredToken {
                token: crate::secret::Secret::new("t"),
                valid_until: 1,
                jwt: true,
            }),
            ..Carry::default()
        };
        let closed = |code: u16, reason: &str| SessionEnd::Closed {
            code: Some(code),
            reason: reason.into(),
        };
        let (f, kind, _) = classify(
            &outcome(closed(4003, "blocked (120)"), false),
            STABLE,
            &mut carry,
        )
        .unwrap();
        assert_eq!((f, kind), (Failure::Blocked { seconds: Some(120) }, "auth"));
        assert!(carry.token.is_some());
        let (f, _, _) = classify(&outcome(closed(4005, ""), true), STABLE, &mut carry).unwrap();
        assert_eq!(f, Failure::AfterEstablished);
        assert!(carry.token.is_none(), "4005 drops the token");
        let (f, _, _) = classify(&outcome(closed(4006, ""), true), STABLE, &mut carry).unwrap();
        assert_eq!(f, Failure::Credentials);
        let (f, kind, _) = classify(
            &outcome(SessionEnd::OutOfService, false),
            STABLE,
            &mut carry,
        )
        .unwrap();
        assert_eq!((f, kind), (Failure::Other, "closed"));
        assert!(classify(&outcome(SessionEnd::Shutdown, true), STABLE, &mut carry).is_none());
    }

    /// `loxone_exporter_consecutive_login_failures` counts the Miniserver's refusals only.
    #[test]
    fn only_refusals_count_as_failed_logins() {
        use crate::loxone::session::SessionError;
        let mut carry = Carry::default();
        let mut refused = |end: SessionEnd, authenticated: bool| {
            let (failure, kind, _) = classify(&outcome(end, false), STABLE, &mut carry).unwrap();
            (kind, is_refused_login(&failure, authenticated))
        };
        let closed = |code: u16| SessionEnd::Closed {
            code: Some(code),
            reason: String::new(),
        };
        let wrong_password = || {
            SessionEnd::Failed(SessionError::Credentials {
                code: 401,
                text: "unauthorized",
            })
        };
        assert_eq!(refused(wrong_password(), false), ("auth", true));
        assert_eq!(refused(closed(4003), false), ("auth", true));
        assert_eq!(refused(closed(4006), false), ("auth", true));
        // counted as auth errors, but the Miniserver refused nothing
        assert_eq!(
            refused(
                SessionEnd::Failed(SessionError::EncryptionUnavailable),
                false
            ),
            ("auth", false)
        );
        assert_eq!(
            refused(
                SessionEnd::Failed(SessionError::Auth(auth::AuthError::Malformed {
                    what: "getjwt",
                    detail: "no token",
                })),
                false
            ),
            ("auth", false)
        );
        // the user disabled while its session ran: that login had worked
        assert_eq!(refused(closed(4006), true), ("auth", false));
        assert_eq!(refused(closed(1000), false), ("closed", false));
    }
}
