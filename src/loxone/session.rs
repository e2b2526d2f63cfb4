//! One connected session with a Miniserver, from the open WebSocket to its end (protocol doc
//! §4, §5, §2.1): key exchange, token (or legacy hash) authentication, the structure check
//! (`LoxAPPversion3`, download only when `lastModified` changed), `enablebinstatusupdate`,
//! then the receive loop that feeds the state store, sends keepalives, watches liveness and
//! refreshes the token; on shutdown the token is killed (best effort, bounded) and the socket
//! closed.
//!
//! One command is in flight at a time; event tables that arrive while a command waits for
//! its answer are applied on the way. Every command has a timeout. The session talks to a
//! [`Transport`], so it runs against a real socket (`connection.rs`) or a scripted one in
//! tests. It does not reconnect or back off (`client.rs`) and never logs or returns a
//! secret: errors name the command (`"getjwt"`), never its text.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::time::{sleep_until, timeout_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument as _};

use super::auth::{
    self, AuthError, AuthMethod, CommandCipher, FirmwareVersion, StoredToken, UserKey,
};
use super::client::ClientOptions;
use super::connection::{Received, TransportError, WsConnection};
use super::crypto::{self, CryptoError};
use super::envelope::{parse_ll, status_text, ApiKeyInfo, LlResponse};
use super::events;
use super::framer::{Framer, ProtocolMessage};
use super::structure::{parse_structure, MsInfo, StructureError};
use crate::config::MiniserverConfig;
use crate::metrics::store::{MiniserverInfo, MiniserverState};

/// The keepalive command (sent plain; answered by a header alone).
pub const KEEPALIVE: &str = "keepalive";
/// Assumed slowest transfer rate when a large announced payload is still arriving: the
/// liveness deadline is extended by `payload_len / this` (protocol doc §5.3).
const SLOWEST_RATE_BYTES_PER_SEC: u64 = 64 * 1024;

/// A WebSocket as the session needs it.
pub trait Transport: Send {
    /// Sends one text message.
    fn send_text(
        &mut self,
        text: String,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Next data message or the close. Must be cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Received, TransportError>> + Send;
    /// Closes the socket (best effort).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
    /// When bytes last arrived, complete message or not (`None`: not tracked).
    fn last_read(&self) -> Option<Instant> {
        None
    }
}

impl Transport for WsConnection {
    fn send_text(
        &mut self,
        text: String,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        WsConnection::send_text(self, text)
    }

    fn recv(&mut self) -> impl Future<Output = Result<Received, TransportError>> + Send {
        WsConnection::recv(self)
    }

    fn close(&mut self) -> impl Future<Output = ()> + Send {
        WsConnection::close(self)
    }

    fn last_read(&self) -> Option<Instant> {
        WsConnection::last_read(self)
    }
}

/// What was learned over HTTP before the WebSocket opened.
#[derive(Debug, Clone)]
pub struct Prelude {
    /// `jdev/cfg/apiKey` answer.
    pub api: ApiKeyInfo,
    /// Parsed firmware version (`None` when unparseable: treated as current firmware).
    pub version: Option<FirmwareVersion>,
    /// RSA public key for the key exchange (`None` when unavailable).
    pub public_key: Option<rsa::RsaPublicKey>,
    /// The socket is wss://.
    pub tls: bool,
}

/// State kept across the sessions of one Miniserver.
#[derive(Debug, Default)]
pub struct Carry {
    /// The token to reuse with `authwithtoken`.
    pub token: Option<StoredToken>,
    /// `msInfo` of the loaded structure.
    pub ms_info: Option<MsInfo>,
    /// Structure downloads so far (for tests and logs).
    pub structure_downloads: u64,
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The socket failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// No answer in time.
    #[error("no answer to {what} within {after:?}")]
    Timeout {
        /// Command name.
        what: &'static str,
        /// Limit.
        after: Duration,
    },
    /// The Miniserver did not take a command off the socket in time (it stopped reading).
    #[error("could not send {what} within {after:?}: the Miniserver does not read")]
    SendTimeout {
        /// Command name.
        what: &'static str,
        /// Limit.
        after: Duration,
    },
    /// Answers came, but none could be read as an answer.
    #[error("unreadable answer to {what}: {reason}")]
    Unreadable {
        /// Command name.
        what: &'static str,
        /// Why the last one could not be read.
        reason: String,
    },
    /// A command was answered with an error code.
    #[error("{what} refused with code {code} ({text})")]
    Refused {
        /// Command name.
        what: &'static str,
        /// LL code.
        code: u16,
        /// Meaning of the code.
        text: &'static str,
    },
    /// The Miniserver rejected the user name or password.
    #[error(
        "login refused with code {code} ({text}): wrong user name or password, or user blocked"
    )]
    Credentials {
        /// LL code.
        code: u16,
        /// Meaning of the code.
        text: &'static str,
    },
    /// Token login needs command encryption (plain ws://) but no public key was available.
    #[error(
        "refusing to log in: no RSA public key for command encryption on an unencrypted connection"
    )]
    EncryptionUnavailable,
    /// An answer had the wrong shape.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Key exchange or hashing failed.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// The structure file could not be used.
    #[error("structure file: {0}")]
    Structure(#[from] StructureError),
    /// The structure parser task failed.
    #[error("structure file: parser task failed")]
    StructureTask,
}

impl SessionError {
    /// The `kind` label for `loxone_exporter_miniserver_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            // a Miniserver that does not read: the same as one that takes too long to
            // (SendTimeout), whichever comes first
            SessionError::Transport(t) if t.is_not_reading() => "timeout",
            SessionError::Transport(_) => "closed",
            SessionError::Timeout { .. } | SessionError::SendTimeout { .. } => "timeout",
            SessionError::Refused { .. }
            | SessionError::Unreadable { .. }
            | SessionError::Crypto(_) => "protocol",
            SessionError::Credentials { .. }
            | SessionError::EncryptionUnavailable
            | SessionError::Auth(_) => "auth",
            SessionError::Structure(_) | SessionError::StructureTask => "structure",
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The Miniserver closed the socket.
    Closed {
        /// Close code (`None` without a close frame).
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
    /// The Miniserver announced out-of-service (reboot, update).
    OutOfService,
    /// Nothing arrived for the liveness timeout, or a message announced by its header did
    /// not arrive at the slowest rate accepted.
    Silent {
        /// Time since the last complete message.
        after: Duration,
    },
    /// Something failed.
    Failed(SessionError),
}

macro_rules! end_from {
    ($($t:ty),*) => {$(
        impl From<$t> for SessionEnd {
            fn from(e: $t) -> Self {
                SessionEnd::Failed(e.into())
            }
        }
    )*};
}
end_from!(
    SessionError,
    TransportError,
    AuthError,
    CryptoError,
    StructureError
);

/// Result of [`run_session`].
#[derive(Debug)]
pub struct SessionOutcome {
    /// How it ended.
    pub end: SessionEnd,
    /// Login succeeded on this socket.
    pub authenticated: bool,
    /// How long live values flowed; `None` when the receive loop was never reached.
    pub live_for: Option<Duration>,
}

impl SessionOutcome {
    /// The receive loop was reached (live values flowing).
    pub fn established(&self) -> bool {
        self.live_for.is_some()
    }
}

/// Counters of one session (logged at its end).
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionStats {
    /// Value tables applied.
    pub value_tables: u64,
    /// Text tables applied.
    pub text_tables: u64,
    /// Daytimer entries parsed (not exported).
    pub daytimer_events: u64,
    /// Weather entries parsed (not exported).
    pub weather_events: u64,
    /// Framing or table anomalies.
    pub malformed: u64,
    /// Text payloads that were not UTF-8.
    pub latin1_texts: u64,
    /// Text messages matching no command.
    pub unsolicited: u64,
}

/// Runs one session on an open transport until it ends, inside `span`. `carry` holds the
/// token and structure identity between sessions. The hand-shake, token commands and
/// shutdown run in `span` (self-telemetry spans are its children), but the receive loop
/// does not enter it for every message (entering and leaving a span on each poll was a
/// measurable part of the CPU per event table); the few things the loop logs or sends
/// besides tables are still done inside it.
#[allow(clippy::too_many_arguments)]
pub async fn run_session<T: Transport>(
    span: &tracing::Span,
    transport: &mut T,
    prelude: &Prelude,
    carry: &mut Carry,
    config: &MiniserverConfig,
    options: &ClientOptions,
    state: &Arc<MiniserverState>,
    shutdown: &CancellationToken,
) -> SessionOutcome {
    let mut session = Session {
        span: span.clone(),
        transport,
        framer: Framer::new(options.max_payload),
        cipher: None,
        method: AuthMethod::for_version(prelude.version),
        prelude,
        config,
        options,
        state,
        last_rx: Instant::now(),
        authenticated: false,
        established: None,
        stats: SessionStats::default(),
    };
    let end = session.run(carry, shutdown).await;
    state.set_connected(false);
    let stats = session.stats;
    debug!(
        miniserver = %config.name,
        value_tables = stats.value_tables,
        text_tables = stats.text_tables,
        malformed = stats.malformed,
        unsolicited = stats.unsolicited,
        "session ended"
    );
    SessionOutcome {
        end,
        authenticated: session.authenticated,
        live_for: session.established.map(|at| at.elapsed()),
    }
}

struct Session<'a, T> {
    span: tracing::Span,
    transport: &'a mut T,
    framer: Framer,
    cipher: Option<CommandCipher>,
    method: AuthMethod,
    prelude: &'a Prelude,
    config: &'a MiniserverConfig,
    options: &'a ClientOptions,
    state: &'a Arc<MiniserverState>,
    last_rx: Instant,
    authenticated: bool,
    /// When the receive loop was reached.
    established: Option<Instant>,
    stats: SessionStats,
}

type Step<T> = Result<T, SessionEnd>;

fn is_ll_envelope(text: &str) -> bool {
    text.trim_start()
        .strip_prefix('{')
        .is_some_and(|rest| rest.trim_start().starts_with("\"LL\""))
}

fn value_as_text(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `miniserverType` as a name (protocol doc §1.2).
pub fn miniserver_type_name(t: Option<i64>) -> String {
    match t {
        Some(0) => "Miniserver Gen 1".into(),
        Some(1) => "Miniserver Go Gen 1".into(),
        Some(2) => "Miniserver Gen 2".into(),
        Some(3) => "Miniserver Go Gen 2".into(),
        Some(4) => "Miniserver Compact".into(),
        Some(n) => n.to_string(),
        None => String::new(),
    }
}

impl<T: Transport> Session<'_, T> {
    async fn run(&mut self, carry: &mut Carry, shutdown: &CancellationToken) -> SessionEnd {
        let span = self.span.clone();
        let setup = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            r = self.setup(carry).instrument(span) => Some(r),
        };
        match setup {
            None => {
                // Mid-setup (e.g. during the structure download): a token already granted
                // or reused on this socket is killed on a best-effort basis (an answer to
                // the abandoned command may be in the way), then the socket is closed.
                self.shut_down(carry).await
            }
            Some(Err(end)) => end,
            Some(Ok(())) => self.receive_loop(carry, shutdown).await,
        }
    }

    async fn setup(&mut self, carry: &mut Carry) -> Step<()> {
        self.key_exchange()
            .instrument(tracing::info_span!("miniserver.key_exchange"))
            .await?;
        self.authenticate(carry)
            .instrument(tracing::info_span!("miniserver.authenticate"))
            .await?;
        self.authenticated = true;
        self.state.logged_in();
        self.sync_structure(carry)
            .instrument(tracing::info_span!("miniserver.structure"))
            .await?;
        let ll = self
            .command(
                "jdev/sps/enablebinstatusupdate",
                false,
                "enablebinstatusupdate",
            )
            .await?;
        self.expect_ok(&ll, "enablebinstatusupdate")?;
        self.established = Some(Instant::now());
        self.state.set_connected(true);
        self.state.set_last_error(None);
        info!(
            miniserver = %self.config.name,
            firmware = %self.prelude.api.version,
            tls = self.prelude.tls,
            "connected, receiving live values"
        );
        Ok(())
    }

    // ---- transport helpers -------------------------------------------------------------

    /// Sends one message; a Miniserver that does not take it off the socket within the
    /// command timeout ends the session (an unbounded wait would also stall the liveness
    /// check and shutdown).
    async fn send(&mut self, text: String, what: &'static str) -> Step<()> {
        let after = self.options.command_timeout;
        tokio::time::timeout(after, self.transport.send_text(text))
            .await
            .map_err(|_| SessionError::SendTimeout { what, after })?
            .map_err(SessionEnd::from)
    }

    /// The end of a session on shutdown: `killtoken` (if there is a token), then close.
    async fn shut_down(&mut self, carry: &mut Carry) -> SessionEnd {
        let span = self.span.clone();
        async {
            self.kill_token(carry).await;
            self.close_bounded().await;
        }
        .instrument(span)
        .await;
        SessionEnd::Shutdown
    }

    async fn close_bounded(&mut self) {
        let _ = tokio::time::timeout(self.options.shutdown_grace, self.transport.close()).await;
    }

    /// Handles one received item; returns the text of a type-0 message.
    fn on_received(&mut self, received: Received) -> Step<Option<String>> {
        match received {
            Received::Closed { code, reason } => Err(SessionEnd::Closed { code, reason }),
            Received::Message(msg) => {
                self.last_rx = Instant::now();
                // feeds the client thread's flood test (no-op cost elsewhere)
                super::wake_pacer::count_message();
                match self.framer.push(msg) {
                    Ok(None) => Ok(None),
                    Ok(Some(pm)) => self.dispatch(pm),
                    Err(e) => {
                        self.malformed(&e);
                        Ok(None)
                    }
                }
            }
        }
    }

    fn malformed(&mut self, e: &dyn std::fmt::Display) {
        self.stats.malformed += 1;
        self.state.record_error("protocol");
        let _in_session = self.span.enter();
        if self.stats.malformed == 1 {
            warn!(miniserver = %self.config.name, error = %e, "malformed message ignored (further ones this session logged at debug)");
        } else {
            debug!(miniserver = %self.config.name, error = %e, "malformed message ignored");
        }
    }

    /// A text no command waits for. The protocol allows such messages (a late answer), so
    /// an LL answer is only noted; text that is no LL answer at all (broken JSON, binary
    /// junk) is a malformed message: logged and counted.
    fn unsolicited_text(&mut self, text: &str) {
        self.stats.unsolicited += 1;
        match parse_ll(text) {
            Ok(_) => {
                debug!(miniserver = %self.config.name, bytes = text.len(), "unsolicited command answer ignored");
            }
            Err(e) => self.malformed(&format_args!("text message that is no LL answer: {e}")),
        }
    }

    /// Applies tables; returns text messages to the caller.
    fn dispatch(&mut self, msg: ProtocolMessage) -> Step<Option<String>> {
        match msg {
            ProtocolMessage::Text {
                text,
                latin1_fallback,
            } => {
                if latin1_fallback {
                    self.stats.latin1_texts += 1;
                    debug!(miniserver = %self.config.name, "text payload was not UTF-8; decoded as Latin-1");
                }
                return Ok(Some(text));
            }
            ProtocolMessage::ValueStates(buf) => match events::value_events(&buf) {
                Ok(iter) => {
                    self.stats.value_tables += 1;
                    self.state
                        .apply_values(iter.map(|e: events::ValueEvent| (e.uuid, e.value)));
                }
                Err(e) => self.malformed(&e),
            },
            ProtocolMessage::TextStates(buf) => match events::parse_text_events(&buf) {
                Ok(list) => {
                    self.stats.text_tables += 1;
                    self.state
                        .apply_texts(list.iter().map(|e| (e.uuid, e.text.as_ref())));
                }
                Err(e) => self.malformed(&e),
            },
            ProtocolMessage::DaytimerStates(buf) => match events::parse_daytimer_events(&buf) {
                Ok(list) => self.stats.daytimer_events += list.len() as u64,
                Err(e) => self.malformed(&e),
            },
            ProtocolMessage::WeatherStates(buf) => match events::parse_weather_events(&buf) {
                Ok(list) => self.stats.weather_events += list.len() as u64,
                Err(e) => self.malformed(&e),
            },
            ProtocolMessage::BinaryFile(buf) => {
                // the protocol allows these (a gzip blob after a keepalive): tolerated
                self.stats.unsolicited += 1;
                debug!(miniserver = %self.config.name, bytes = buf.len(), "unsolicited binary file ignored");
            }
            ProtocolMessage::Keepalive => {}
            ProtocolMessage::OutOfService => return Err(SessionEnd::OutOfService),
        }
        Ok(None)
    }

    /// Sends one command (encrypted when asked) and waits for its LL answer; tables that
    /// arrive meanwhile are applied.
    async fn command(&mut self, cmd: &str, encrypt: bool, what: &'static str) -> Step<LlResponse> {
        let wire = if encrypt {
            match &mut self.cipher {
                Some(c) => c.encrypt(cmd, &mut rand::rngs::OsRng),
                None => return Err(SessionError::EncryptionUnavailable.into()),
            }
        } else {
            cmd.to_owned()
        };
        self.send(wire, what).await?;
        let after = self.options.command_timeout;
        let sent = Instant::now();
        // Tables may come before the answer (`enablebinstatusupdate`: the initial ones, up to
        // megabytes). Each payload announced meanwhile adds the time it needs at the slowest
        // rate we accept, while its bytes keep coming, as for the structure download.
        let mut payload_credit = Duration::ZERO;
        // a text that is no LL answer is skipped (it may be something unsolicited), but when
        // no answer follows, the error says what came instead of "no answer"
        let mut unreadable = None;
        loop {
            let credit = payload_credit;
            let deadline = move |session: &Self| {
                session.while_bytes_come(
                    sent,
                    sent + after + credit + session.announced_payload_time(),
                )
            };
            let Some(received) = self.recv_by(deadline).await else {
                return Err(match unreadable {
                    Some(reason) => SessionError::Unreadable { what, reason },
                    None => SessionError::Timeout { what, after },
                }
                .into());
            };
            let received = received?;
            let announced = self.announced_payload_time();
            let text = self.on_received(received)?;
            if self.framer.pending().is_none() {
                // the announced payload arrived: its time stays granted
                payload_credit += announced;
            }
            let Some(text) = text else {
                continue;
            };
            match parse_ll(&text) {
                Ok(ll) => return Ok(ll),
                Err(e) => {
                    self.stats.unsolicited += 1;
                    debug!(miniserver = %self.config.name, bytes = text.len(), "text message that is no command answer ignored");
                    unreadable = Some(e.to_string());
                }
            }
        }
    }

    fn expect_ok(&self, ll: &LlResponse, what: &'static str) -> Step<()> {
        if ll.code == 200 {
            Ok(())
        } else {
            Err(SessionError::Refused {
                what,
                code: ll.code,
                text: status_text(ll.code),
            }
            .into())
        }
    }

    fn credentials_or_refused(&self, ll: &LlResponse, what: &'static str) -> SessionEnd {
        if auth::is_credential_rejection(ll.code) {
            SessionError::Credentials {
                code: ll.code,
                text: status_text(ll.code),
            }
            .into()
        } else {
            SessionError::Refused {
                what,
                code: ll.code,
                text: status_text(ll.code),
            }
            .into()
        }
    }

    // ---- key exchange and authentication -------------------------------------------------

    async fn key_exchange(&mut self) -> Step<()> {
        let Some(public_key) = &self.prelude.public_key else {
            return Ok(());
        };
        if !auth::needs_key_exchange(self.prelude.version) {
            return Ok(());
        }
        let mut rng = rand::rngs::OsRng;
        let session_key = crypto::SessionKey::generate(&mut rng);
        let blob = crypto::encrypt_session_key(public_key, &session_key, &mut rng)?;
        let ll = self
            .command(
                &format!("jdev/sys/keyexchange/{blob}"),
                false,
                "keyexchange",
            )
            .await?;
        self.expect_ok(&ll, "keyexchange")?;
        self.cipher = Some(CommandCipher::new(session_key));
        Ok(())
    }

    async fn authenticate(&mut self, carry: &mut Carry) -> Step<()> {
        if self.method == AuthMethod::Hash {
            return self.hash_auth().await;
        }
        if self.cipher.is_none() && !self.prelude.tls {
            // Never send token requests unencrypted on plain ws://.
            return Err(SessionError::EncryptionUnavailable.into());
        }
        if let Some(token) = carry.token.clone() {
            if self.auth_with_token(&token, carry).await? {
                return Ok(());
            }
            carry.token = None;
            info!(miniserver = %self.config.name, "stored token was rejected; logging in with the password");
        }
        self.acquire_token(carry).await
    }

    fn encrypt_auth(&self) -> bool {
        self.cipher.is_some()
    }

    async fn get_user_key(&mut self) -> Step<UserKey> {
        let cmd = auth::getkey2_command(&self.config.username);
        let ll = self.command(&cmd, self.encrypt_auth(), "getkey2").await?;
        if ll.code != 200 {
            return Err(self.credentials_or_refused(&ll, "getkey2"));
        }
        Ok(auth::parse_user_key(&ll.value)?)
    }

    /// `authwithtoken`; `Ok(false)` when the token was rejected.
    async fn auth_with_token(&mut self, token: &StoredToken, carry: &mut Carry) -> Step<bool> {
        let key = self.get_user_key().await?;
        let hash = crypto::token_hash(key.alg, &key.key, token.token.expose())?;
        let cmd = auth::authwithtoken_command(&hash, &self.config.username);
        let ll = self
            .command(&cmd, self.encrypt_auth(), "authwithtoken")
            .await?;
        match ll.code {
            200 => {
                let grant = auth::parse_token_grant(&ll.value, "authwithtoken", false)?;
                carry.token = Some(StoredToken {
                    valid_until: grant.valid_until,
                    ..token.clone()
                });
                debug!(miniserver = %self.config.name, "logged in with the stored token");
                Ok(true)
            }
            400 | 401 | 477 => Ok(false),
            _ => Err(self.credentials_or_refused(&ll, "authwithtoken")),
        }
    }

    async fn acquire_token(&mut self, carry: &mut Carry) -> Step<()> {
        let key = self.get_user_key().await?;
        let pw_hash = crypto::password_hash(key.alg, self.config.password.expose(), &key.salt);
        let hash = crypto::credential_hash(key.alg, &key.key, &self.config.username, &pw_hash)?;
        let client_uuid = auth::client_uuid(&self.config.name, &self.config.username);
        let cmd = auth::get_token_command(
            self.method,
            &hash,
            &self.config.username,
            self.options.token_permission,
            &client_uuid,
            &self.options.client_info,
        );
        let what = if self.method == AuthMethod::Jwt {
            "getjwt"
        } else {
            "gettoken"
        };
        let ll = self.command(&cmd, self.encrypt_auth(), what).await?;
        if ll.code != 200 {
            return Err(self.credentials_or_refused(&ll, what));
        }
        let grant = auth::parse_token_grant(&ll.value, what, true)?;
        if grant.unsecure_pass {
            warn!(miniserver = %self.config.name, "the Miniserver reports the password as insecure");
        }
        let Some(token) = grant.token else {
            return Err(SessionError::Auth(AuthError::Malformed {
                what,
                detail: "no token",
            })
            .into());
        };
        carry.token = Some(StoredToken {
            token,
            valid_until: grant.valid_until,
            jwt: self.method == AuthMethod::Jwt,
        });
        info!(miniserver = %self.config.name, "logged in with the password; token acquired");
        Ok(())
    }

    async fn hash_auth(&mut self) -> Step<()> {
        let ll = self.command("jdev/sys/getkey", false, "getkey").await?;
        self.expect_ok(&ll, "getkey")?;
        let key = auth::parse_plain_key(&ll.value)?;
        let hash = crypto::legacy_hash(&key, &self.config.username, self.config.password.expose())?;
        let ll = self
            .command(&auth::authenticate_command(&hash), false, "authenticate")
            .await?;
        if ll.code != 200 {
            return Err(self.credentials_or_refused(&ll, "authenticate"));
        }
        info!(miniserver = %self.config.name, "logged in with hash authentication (old firmware)");
        Ok(())
    }

    /// `refreshjwt` / `refreshtoken`. `Ok(false)` when the Miniserver rejected it.
    async fn refresh_token(&mut self, carry: &mut Carry) -> Step<bool> {
        let Some(token) = carry.token.clone() else {
            return Ok(false);
        };
        let key = self.get_user_key().await?;
        let hash = crypto::token_hash(key.alg, &key.key, token.token.expose())?;
        let cmd = auth::refresh_command(token.jwt, &hash, &self.config.username);
        let what = if token.jwt {
            "refreshjwt"
        } else {
            "refreshtoken"
        };
        let ll = self.command(&cmd, self.encrypt_auth(), what).await?;
        if ll.code != 200 {
            warn!(miniserver = %self.config.name, code = ll.code, "token refresh refused; the next connection logs in with the password");
            self.state.record_error("auth");
            return Ok(false);
        }
        let grant = auth::parse_token_grant(&ll.value, what, false)?;
        carry.token = Some(StoredToken {
            token: grant.token.unwrap_or(token.token),
            valid_until: grant.valid_until,
            jwt: token.jwt,
        });
        debug!(miniserver = %self.config.name, "token refreshed");
        Ok(true)
    }

    /// `killtoken`, bounded by the shutdown grace; errors are ignored.
    async fn kill_token(&mut self, carry: &mut Carry) {
        let Some(token) = carry.token.take() else {
            return;
        };
        let grace = self.options.shutdown_grace;
        let kill = async {
            let key = self.get_user_key().await?;
            let hash = crypto::token_hash(key.alg, &key.key, token.token.expose())?;
            let cmd = auth::killtoken_command(&hash, &self.config.username);
            self.command(&cmd, self.encrypt_auth(), "killtoken").await?;
            Ok::<(), SessionEnd>(())
        };
        match tokio::time::timeout(grace, kill).await {
            Ok(Ok(())) => debug!(miniserver = %self.config.name, "token killed"),
            // Killing the socket's own token makes the Miniserver close the socket.
            Ok(Err(SessionEnd::Closed { .. })) => {}
            _ => debug!(miniserver = %self.config.name, "token kill not confirmed"),
        }
    }

    // ---- structure ---------------------------------------------------------------------

    async fn sync_structure(&mut self, carry: &mut Carry) -> Step<()> {
        let ll = self
            .command("jdev/sps/LoxAPPversion3", false, "LoxAPPversion3")
            .await?;
        self.expect_ok(&ll, "LoxAPPversion3")?;
        let remote_version = value_as_text(&ll.value);
        let loaded = self.state.structure_version();
        if loaded.as_deref() != Some(remote_version.as_str()) || carry.ms_info.is_none() {
            let text = self.fetch_structure().await?;
            let bytes = text.len();
            let state = Arc::clone(self.state);
            let parsed = tokio::task::spawn_blocking(move || {
                parse_structure(text.as_bytes()).map(|s| {
                    state.load_structure(&s);
                    (
                        s.ms_info.clone(),
                        s.control_count(),
                        s.last_modified.clone(),
                    )
                })
            })
            .await
            .map_err(|_| SessionError::StructureTask)?;
            // give the download's and parse's freed memory back (off the async workers)
            drop(tokio::task::spawn_blocking(
                crate::alloc::release_free_memory,
            ));
            let (ms_info, controls, last_modified) = parsed?;
            carry.ms_info = Some(ms_info);
            carry.structure_downloads += 1;
            info!(
                miniserver = %self.config.name,
                bytes,
                controls,
                last_modified = %last_modified,
                "structure file loaded"
            );
        } else {
            debug!(miniserver = %self.config.name, version = %remote_version, "structure unchanged");
        }
        if let Some(ms) = &carry.ms_info {
            let serial = if ms.serial_nr.is_empty() {
                self.prelude.api.snr.replace(':', "")
            } else {
                ms.serial_nr.clone()
            };
            self.state.set_info(MiniserverInfo {
                serial,
                firmware: self.prelude.api.version.clone(),
                ms_type: miniserver_type_name(ms.miniserver_type),
                name: ms.ms_name.clone(),
                project: ms.project_name.clone(),
            });
        }
        Ok(())
    }

    async fn fetch_structure(&mut self) -> Step<String> {
        const WHAT: &str = "data/LoxAPP3.json";
        self.send(WHAT.to_owned(), WHAT).await?;
        let started = Instant::now();
        loop {
            // The structure timeout, plus the time the announced payload needs at the
            // slowest rate we accept: a big file on a slow link is not cut off and
            // downloaded again forever. Recomputed per message: the header comes first.
            let after = self.options.structure_timeout + self.announced_payload_time();
            let deadline = move |session: &Self| session.structure_deadline(started, after);
            let Some(received) = self.recv_by(deadline).await else {
                let after = Duration::from_secs(started.elapsed().as_secs());
                return Err(SessionError::Timeout { what: WHAT, after }.into());
            };
            let received = received?;
            let Some(text) = self.on_received(received)? else {
                continue;
            };
            if !is_ll_envelope(&text) {
                return Ok(text);
            }
            match parse_ll(&text) {
                Ok(ll) if ll.code != 200 => {
                    return Err(SessionError::Refused {
                        what: WHAT,
                        code: ll.code,
                        text: status_text(ll.code),
                    }
                    .into())
                }
                _ => self.stats.unsolicited += 1,
            }
        }
    }

    /// The next message, waiting until `deadline(self)`, asked again when it passes: the
    /// bytes of a long message still coming in move it. `None` once it has passed. (Waiting
    /// again loses nothing: `recv` is cancel-safe.)
    async fn recv_by(
        &mut self,
        deadline: impl Fn(&Self) -> Instant,
    ) -> Option<Result<Received, TransportError>> {
        loop {
            match timeout_at(deadline(self), self.transport.recv()).await {
                Ok(received) => return Some(received),
                Err(_) if deadline(self) > Instant::now() => continue,
                Err(_) => return None,
            }
        }
    }

    /// The structure download's deadline: `after` from the request, and no later than the
    /// liveness timeout after the last byte (a header announcing more than is sent, or a
    /// server that hung mid-file, is not waited for until `after`).
    fn structure_deadline(&self, started: Instant, after: Duration) -> Instant {
        self.while_bytes_come(started, started + after)
    }

    /// The time the message whose header arrived needs at the slowest rate we accept.
    fn announced_payload_time(&self) -> Duration {
        Duration::from_secs(
            self.framer
                .pending()
                .map_or(0, |h| u64::from(h.payload_len) / SLOWEST_RATE_BYTES_PER_SEC),
        )
    }

    /// `deadline`, but no later than the liveness timeout after the last byte read (or
    /// `since`, if that is later): a wait for a message ends when its bytes stop coming.
    fn while_bytes_come(&self, since: Instant, deadline: Instant) -> Instant {
        match self.transport.last_read() {
            Some(read) => deadline.min(read.max(since) + self.options.liveness_timeout),
            None => deadline,
        }
    }

    // ---- receive loop --------------------------------------------------------------------

    /// A message announced by its header gets the time it needs at the slowest rate we
    /// accept, but only while its bytes keep coming: no byte at all for the liveness
    /// timeout is silence whatever the header promised.
    fn liveness_deadline(&self) -> Instant {
        let by_message =
            self.last_rx + self.options.liveness_timeout + self.announced_payload_time();
        self.while_bytes_come(self.last_rx, by_message)
    }

    fn next_refresh(&self, carry: &Carry) -> Option<Instant> {
        if !self.method.uses_tokens() {
            return None;
        }
        carry
            .token
            .as_ref()
            .map(|t| Instant::now() + t.refresh_delay((self.options.wall_clock)()))
    }

    async fn receive_loop(
        &mut self,
        carry: &mut Carry,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        // A keepalive must be answered well within the liveness timeout, or a quiet but
        // healthy Miniserver would be dropped.
        let every = self
            .options
            .keepalive_interval
            .min(self.options.liveness_timeout / 2)
            .max(Duration::from_millis(10));
        let mut keepalive = tokio::time::interval_at(Instant::now() + every, every);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut refresh_at = self.next_refresh(carry);

        // Everything the loop waits on besides the socket lives across iterations: building a
        // cancellation waiter and two timers for every message (and dropping them again) cost
        // more than handling a small event table. The liveness timer is not moved per
        // message either: when it fires, it is re-armed from the time of the last message,
        // and only a deadline that really passed ends the session.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let liveness = sleep_until(self.liveness_deadline());
        tokio::pin!(liveness);
        let far_future = || Instant::now() + Duration::from_secs(86_400 * 365);
        let refresh = sleep_until(refresh_at.unwrap_or_else(far_future));
        tokio::pin!(refresh);

        enum Event {
            Shutdown,
            Keepalive,
            Refresh,
            LivenessCheck,
            Received(Result<Received, TransportError>),
        }

        loop {
            let event = tokio::select! {
                biased;
                _ = &mut cancelled => Event::Shutdown,
                r = self.transport.recv() => Event::Received(r),
                _ = &mut liveness => Event::LivenessCheck,
                _ = keepalive.tick() => Event::Keepalive,
                _ = &mut refresh, if refresh_at.is_some() => Event::Refresh,
            };
            match event {
                Event::Shutdown => return self.shut_down(carry).await,
                Event::LivenessCheck => {
                    let deadline = self.liveness_deadline();
                    if deadline <= Instant::now() {
                        return SessionEnd::Silent {
                            after: self.last_rx.elapsed(),
                        };
                    }
                    liveness.as_mut().reset(deadline);
                }
                Event::Keepalive => {
                    let sent = tokio::select! {
                        biased;
                        _ = &mut cancelled => None,
                        r = self.send(KEEPALIVE.to_owned(), KEEPALIVE) => Some(r),
                    };
                    match sent {
                        None => return self.shut_down(carry).await,
                        Some(Err(end)) => return end,
                        Some(Ok(())) => {}
                    }
                }
                Event::Refresh => {
                    let span = self.span.clone();
                    // a refresh waits for two answers (up to a command timeout each): a
                    // shutdown meanwhile must not wait for it
                    let refreshed = tokio::select! {
                        biased;
                        _ = &mut cancelled => None,
                        r = self.refresh_token(carry).instrument(span) => Some(r),
                    };
                    let Some(refreshed) = refreshed else {
                        // the token is unchanged until a refresh succeeds: kill that one
                        return self.shut_down(carry).await;
                    };
                    match refreshed {
                        Ok(true) => refresh_at = self.next_refresh(carry),
                        Ok(false) => {
                            carry.token = None;
                            refresh_at = None;
                        }
                        Err(end) => return end,
                    }
                    refresh
                        .as_mut()
                        .reset(refresh_at.unwrap_or_else(far_future));
                }
                Event::Received(Err(e)) => return SessionEnd::Failed(e.into()),
                Event::Received(Ok(r)) => match self.on_received(r) {
                    Ok(Some(text)) => self.unsolicited_text(&text),
                    Ok(None) => {}
                    Err(end) => return end,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use parking_lot::Mutex;
    use rsa::RsaPublicKey;

    use super::*;
    use crate::loxone::auth::LOXONE_EPOCH_UNIX;
    use crate::loxone::client_fake::{self, FakeConfig, FakeHandle, FakeTokens, Inject};
    use crate::loxone::envelope::{encode_ll, CodeStyle};
    use crate::loxone::events::{encode_value_events, ValueEvent};
    use crate::loxone::framer::WireMessage;
    use crate::loxone::header::{Header, MessageKind};
    use crate::loxone::uuid::LoxUuid;
    use crate::metrics::model::Value;
    use crate::metrics::registry::Collector;
    use crate::metrics::store::StateStore;

    const STRUCTURE: &str = include_str!("../../tests/fixtures/structures/gen2-demo-uk.json");
    const FAKE_NOW: u64 = 500_000_000;

    fn fixed_clock() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(LOXONE_EPOCH_UNIX + FAKE_NOW)
    }

    /// A numeric state of the fixture: (state uuid, uuidAction of its control).
    fn some_state() -> (LoxUuid, String) {
        let s = parse_structure(STRUCTURE.as_bytes()).unwrap();
        for c in s.controls.iter().flat_map(|c| c.walk()) {
            if c.control_type == "InfoOnlyAnalog" || c.control_type == "Switch" {
                if let Some(st) = c.states.first() {
                    return (st.uuids[0], c.uuid_action.clone());
                }
            }
        }
        panic!("fixture has no InfoOnlyAnalog/Switch");
    }

    struct Rig {
        store: Arc<StateStore>,
        state: Arc<MiniserverState>,
        config: MiniserverConfig,
        options: ClientOptions,
        prelude: Prelude,
        tokens: Arc<Mutex<FakeTokens>>,
        fake: FakeConfig,
    }

    impl Rig {
        /// One session over `transport`, from a fresh carry, never shut down.
        async fn session_on(&self, transport: &mut impl Transport) -> SessionOutcome {
            let mut carry = Carry::default();
            run_session(
                &tracing::Span::current(),
                transport,
                &self.prelude,
                &mut carry,
                &self.config,
                &self.options,
                &self.state,
                &CancellationToken::new(),
            )
            .await
        }

        fn new() -> Self {
            let store = StateStore::new(&Default::default(), false).unwrap();
            let state = store.add_miniserver("ms");
            let (uuid, _) = some_state();
            Rig {
                store,
                state,
                config: MiniserverConfig::new("ms", "127.0.0.1", "admin", "secret"),
                options: ClientOptions {
                    wall_clock: fixed_clock,
                    ..ClientOptions::default()
                },
                prelude: Prelude {
                    api: ApiKeyInfo {
                        snr: "50:4F:94:11:12:5F".into(),
                        version: "14.5.12.7".into(),
                        ..ApiKeyInfo::default()
                    },
                    version: FirmwareVersion::parse("14.5.12.7"),
                    public_key: Some(RsaPublicKey::from(&client_fake::private_key())),
                    tls: false,
                },
                tokens: Arc::default(),
                fake: FakeConfig {
                    structure: STRUCTURE.to_string(),
                    now_loxone: FAKE_NOW,
                    initial_values: vec![(uuid, 21.5)],
                    last_modified: parse_structure(STRUCTURE.as_bytes()).unwrap().last_modified,
                    ..FakeConfig::default()
                },
            }
        }

        /// Starts a session in a task; returns its handle, the fake's handle and the
        /// shutdown token.
        fn start(
            &self,
            carry: Carry,
        ) -> (
            tokio::task::JoinHandle<(SessionOutcome, Carry)>,
            FakeHandle,
            CancellationToken,
        ) {
            let (mut transport, handle) =
                client_fake::connect(self.fake.clone(), self.tokens.clone());
            let shutdown = CancellationToken::new();
            let (prelude, config, options, state, sd) = (
                self.prelude.clone(),
                self.config.clone(),
                self.options.clone(),
                self.state.clone(),
                shutdown.clone(),
            );
            let task = tokio::spawn(async move {
                let mut carry = carry;
                let outcome = run_session(
                    &tracing::Span::current(),
                    &mut transport,
                    &prelude,
                    &mut carry,
                    &config,
                    &options,
                    &state,
                    &sd,
                )
                .await;
                (outcome, carry)
            });
            (task, handle, shutdown)
        }

        fn value_of(&self, uuid_action: &str) -> Option<f64> {
            let mut fams = Vec::new();
            self.store.collect(&mut fams);
            fams.iter()
                .find(|f| f.name == "loxone_control_value")?
                .samples
                .iter()
                .find(|s| s.labels.get("uuid") == Some(uuid_action))
                .and_then(|s| match s.value {
                    Value::Number(v) => Some(v),
                    _ => None,
                })
        }
    }

    async fn until(mut cond: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition not reached");
    }

    fn commands(h: &FakeHandle) -> Vec<String> {
        h.log
            .lock()
            .commands
            .iter()
            .map(|c| c.split('/').take(3).collect::<Vec<_>>().join("/"))
            .collect()
    }

    #[tokio::test]
    async fn full_flow_then_shutdown_kills_token() {
        let rig = Rig::new();
        let (_, uuid_action) = some_state();
        let (task, h, shutdown) = rig.start(Carry::default());
        until(|| rig.value_of(&uuid_action) == Some(21.5)).await;
        assert!(rig.state.health().connected);
        let info = rig.state.info().unwrap();
        assert_eq!(info.firmware, "14.5.12.7");
        assert!(!info.serial.is_empty());
        h.inject
            .send(Inject::Values(vec![(some_state().0, -3.25)]))
            .unwrap();
        until(|| rig.value_of(&uuid_action) == Some(-3.25)).await;
        shutdown.cancel();
        let (outcome, carry) = task.await.unwrap();
        assert!(matches!(outcome.end, SessionEnd::Shutdown));
        assert!(outcome.established() && outcome.authenticated);
        assert!(carry.token.is_none(), "token is given up on shutdown");
        assert_eq!(
            commands(&h),
            vec![
                "jdev/sys/keyexchange",
                "jdev/sys/getkey2",
                "jdev/sys/getjwt",
                "jdev/sps/LoxAPPversion3",
                "data/LoxAPP3.json",
                "jdev/sps/enablebinstatusupdate",
                "jdev/sys/getkey2",
                "jdev/sys/killtoken",
            ]
        );
        let log = h.log.lock();
        assert_eq!(
            log.encrypted,
            vec![false, true, true, false, false, false, true, true],
            "token commands go encrypted"
        );
        assert!(rig.tokens.lock().valid.is_empty(), "token killed");
    }

    #[tokio::test]
    async fn token_reused_and_structure_not_downloaded_again() {
        let rig = Rig::new();
        let (task, h1, _sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        h1.inject.send(Inject::Close(1000, String::new())).unwrap();
        let (outcome, carry) = task.await.unwrap();
        assert!(matches!(
            outcome.end,
            SessionEnd::Closed {
                code: Some(1000),
                ..
            }
        ));
        assert!(carry.token.is_some());
        assert_eq!(carry.structure_downloads, 1);

        let (task, h2, sd) = rig.start(carry);
        until(|| {
            commands(&h2)
                .iter()
                .any(|c| c == "jdev/sps/enablebinstatusupdate")
        })
        .await;
        sd.cancel();
        let (_, carry) = task.await.unwrap();
        let cmds = commands(&h2);
        assert!(
            cmds.contains(&"authwithtoken/".to_string())
                || cmds.iter().any(|c| c.starts_with("authwithtoken"))
        );
        assert!(!cmds.iter().any(|c| c.contains("getjwt")), "{cmds:?}");
        assert!(
            !cmds.iter().any(|c| c.contains("LoxAPP3.json")),
            "unchanged structure not fetched"
        );
        assert_eq!(carry.structure_downloads, 1);
    }

    #[tokio::test]
    async fn changed_structure_is_downloaded_again() {
        let mut rig = Rig::new();
        let (task, h1, _sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        h1.inject.send(Inject::Close(4007, String::new())).unwrap();
        let (_, carry) = task.await.unwrap();
        let old = rig.fake.last_modified.clone();
        let new = "2030-05-06 07:08:09".to_string();
        rig.fake.structure = rig.fake.structure.replacen(&old, &new, 1);
        rig.fake.last_modified = new.clone();
        let (task, h2, sd) = rig.start(carry);
        until(|| rig.state.health().connected).await;
        sd.cancel();
        let (_, carry) = task.await.unwrap();
        assert_eq!(h2.log.lock().structure_downloads, 1);
        assert_eq!(carry.structure_downloads, 2);
        assert_eq!(rig.state.structure_version(), Some(new));
    }

    #[tokio::test]
    async fn rejected_token_falls_back_to_password() {
        let rig = Rig::new();
        let carry = Carry {
            token: Some(StoredToken {
                token: crate::secret::Secret::new("stale"),
                valid_until: FAKE_NOW + 10,
                jwt: true,
            }),
            ..Carry::default()
        };
        let (task, h, sd) = rig.start(carry);
        until(|| rig.state.health().connected).await;
        sd.cancel();
        let (outcome, _) = task.await.unwrap();
        assert!(outcome.established());
        let cmds = commands(&h);
        let pos = |p: &str| cmds.iter().position(|c| c.starts_with(p)).unwrap();
        assert!(pos("authwithtoken") < pos("jdev/sys/getjwt"), "{cmds:?}");
    }

    #[tokio::test]
    async fn wrong_password_is_a_credential_failure() {
        let mut rig = Rig::new();
        rig.config.password = crate::secret::Secret::new("hunter2-not-it");
        let (task, h, _sd) = rig.start(Carry::default());
        let (outcome, carry) = task.await.unwrap();
        match &outcome.end {
            SessionEnd::Failed(e @ SessionError::Credentials { code: 401, .. }) => {
                assert_eq!(e.kind(), "auth");
                assert!(
                    !e.to_string().contains("hunter2"),
                    "no secret in the message"
                );
            }
            other => panic!("unexpected end {other:?}"),
        }
        assert!(!outcome.authenticated && carry.token.is_none());
        assert!(!commands(&h).iter().any(|c| c.contains("LoxAPP")));
        assert!(!rig.state.health().connected);
    }

    #[tokio::test]
    async fn no_public_key_on_plain_ws_refuses_to_log_in() {
        let mut rig = Rig::new();
        rig.prelude.public_key = None;
        let (task, h, _sd) = rig.start(Carry::default());
        let (outcome, _) = task.await.unwrap();
        assert!(matches!(
            outcome.end,
            SessionEnd::Failed(SessionError::EncryptionUnavailable)
        ));
        assert!(h.log.lock().commands.is_empty(), "nothing sent");
    }

    #[tokio::test]
    async fn old_firmware_uses_hash_authentication() {
        let mut rig = Rig::new();
        // 8.3 offers encryption, but hash authentication does not use it: no key exchange
        rig.prelude.version = FirmwareVersion::parse("8.3.3.21");
        let (task, h, sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        sd.cancel();
        let (outcome, carry) = task.await.unwrap();
        assert!(outcome.established());
        assert!(carry.token.is_none());
        let cmds = commands(&h);
        assert_eq!(cmds[0], "jdev/sys/getkey");
        assert!(cmds[1].starts_with("authenticate/"), "{cmds:?}");
        assert!(!h.log.lock().encrypted.iter().any(|&e| e));
    }

    #[tokio::test]
    async fn tables_between_command_and_answer_are_applied() {
        let mut rig = Rig::new();
        rig.fake.tables_before_answers = true;
        rig.fake.estimated_headers = true;
        let (_, uuid_action) = some_state();
        let (task, _h, sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        assert_eq!(rig.value_of(&uuid_action), Some(21.5));
        sd.cancel();
        let (outcome, _) = task.await.unwrap();
        assert!(outcome.established());
    }

    #[tokio::test(start_paused = true)]
    async fn keepalives_keep_a_quiet_session_alive() {
        let rig = Rig::new();
        let (task, h, sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(!task.is_finished());
        assert!(h.log.lock().keepalives >= 6, "{}", h.log.lock().keepalives);
        sd.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silence_ends_the_session_after_the_liveness_timeout() {
        let mut rig = Rig::new();
        rig.fake.answer_keepalive = false;
        let (task, _h, _sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        let t0 = Instant::now();
        let (outcome, _) = task.await.unwrap();
        let waited = t0.elapsed();
        assert!(matches!(outcome.end, SessionEnd::Silent { .. }));
        assert!(
            waited >= Duration::from_secs(59) && waited <= Duration::from_secs(61),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn token_refreshed_at_half_its_lifetime() {
        let mut rig = Rig::new();
        rig.fake.token_lifetime = 100;
        let (task, h, sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert!(!commands(&h).iter().any(|c| c.contains("refreshjwt")));
        tokio::time::sleep(Duration::from_secs(10)).await;
        until(|| commands(&h).iter().any(|c| c.contains("refreshjwt"))).await;
        let issued_before = rig.tokens.lock().issued;
        tokio::time::sleep(Duration::from_secs(55)).await;
        assert_eq!(
            commands(&h)
                .iter()
                .filter(|c| c.contains("refreshjwt"))
                .count(),
            2
        );
        assert_eq!(rig.tokens.lock().issued, issued_before + 1);
        sd.cancel();
        let (outcome, _) = task.await.unwrap();
        assert!(matches!(outcome.end, SessionEnd::Shutdown));
        assert!(
            rig.tokens.lock().valid.is_empty(),
            "the refreshed token was killed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn big_tables_before_a_command_answer_get_time_by_their_announced_size() {
        let mut rig = Rig::new();
        rig.fake.unanswered = vec!["jdev/sps/enablebinstatusupdate"];
        let (uuid, uuid_action) = some_state();
        let (task, h, sd) = rig.start(Carry::default());
        until(|| {
            commands(&h)
                .iter()
                .any(|c| c == "jdev/sps/enablebinstatusupdate")
        })
        .await;
        // the initial tables before the answer: two of 1 MiB (16 s each at the slowest
        // accepted rate), each taking 12 s to arrive, far beyond the 10 s command timeout
        let mut table = Vec::new();
        let events = vec![ValueEvent { uuid, value: 4.5 }; (1 << 20) / 24];
        encode_value_events(&events, &mut table);
        for _ in 0..2 {
            let header = Header::new(MessageKind::ValueStates, table.len() as u32);
            h.inject
                .send(Inject::Raw(WireMessage::Binary(header.encode(0).to_vec())))
                .unwrap();
            tokio::time::sleep(Duration::from_secs(12)).await;
            assert!(!task.is_finished(), "the command was cut off");
            h.inject
                .send(Inject::Raw(WireMessage::Binary(table.clone())))
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let answer = encode_ll(
            "jdev/sps/enablebinstatusupdate",
            200,
            &serde_json::Value::from("1"),
            CodeStyle::UpperString,
        );
        let header = Header::new(MessageKind::Text, answer.len() as u32);
        for raw in [header.encode(0).to_vec(), answer.into_bytes()] {
            h.inject
                .send(Inject::Raw(WireMessage::Binary(raw)))
                .unwrap();
        }
        until(|| rig.state.health().connected).await;
        assert_eq!(rig.value_of(&uuid_action), Some(4.5));
        sd.cancel();
        let (outcome, _) = task.await.unwrap();
        assert!(outcome.established());
    }

    #[tokio::test(start_paused = true)]
    async fn a_big_structure_gets_time_by_its_announced_size() {
        let mut rig = Rig::new();
        rig.fake.unanswered = vec!["data/LoxAPP3.json"];
        // 20 MiB: 320 s at the slowest accepted rate, far beyond the 120 s timeout
        let mut structure = rig.fake.structure.clone();
        structure.push_str(&" ".repeat(20 << 20));
        let (task, h, sd) = rig.start(Carry::default());
        until(|| commands(&h).iter().any(|c| c == "data/LoxAPP3.json")).await;
        let header = Header::new(MessageKind::Text, structure.len() as u32);
        h.inject
            .send(Inject::Raw(WireMessage::Binary(header.encode(0).to_vec())))
            .unwrap();
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(!task.is_finished(), "the download was cut off");
        h.inject
            .send(Inject::Raw(WireMessage::Binary(structure.into_bytes())))
            .unwrap();
        until(|| rig.state.health().connected).await;
        sd.cancel();
        let (outcome, _) = task.await.unwrap();
        assert!(outcome.established());
    }

    #[tokio::test]
    async fn shutdown_during_the_structure_download_kills_the_token() {
        let mut rig = Rig::new();
        rig.fake.unanswered = vec!["data/LoxAPP3.json"];
        let (task, h, sd) = rig.start(Carry::default());
        until(|| commands(&h).iter().any(|c| c == "data/LoxAPP3.json")).await;
        assert_eq!(rig.tokens.lock().valid.len(), 1, "logged in with a token");
        sd.cancel();
        let (outcome, carry) = task.await.unwrap();
        assert!(matches!(outcome.end, SessionEnd::Shutdown));
        assert!(carry.token.is_none());
        assert!(rig.tokens.lock().valid.is_empty(), "token killed");
        assert_eq!(
            commands(&h).last().map(String::as_str),
            Some("jdev/sys/killtoken")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_a_token_refresh_kills_the_token_without_waiting_for_it() {
        let mut rig = Rig::new();
        rig.fake.token_lifetime = 100;
        rig.fake.unanswered = vec!["jdev/sys/refreshjwt"];
        let (task, h, sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        tokio::time::sleep(Duration::from_secs(55)).await;
        until(|| commands(&h).iter().any(|c| c.contains("refreshjwt"))).await;
        let t0 = Instant::now();
        sd.cancel();
        let (outcome, _) = task.await.unwrap();
        assert!(matches!(outcome.end, SessionEnd::Shutdown));
        // not after the refresh's command timeout
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(rig.tokens.lock().valid.is_empty(), "token killed");
    }

    #[tokio::test]
    async fn out_of_service_ends_the_session() {
        let rig = Rig::new();
        let (task, h, _sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        h.inject.send(Inject::OutOfService).unwrap();
        let (outcome, _) = task.await.unwrap();
        assert!(matches!(outcome.end, SessionEnd::OutOfService));
    }

    #[tokio::test]
    async fn malformed_frames_are_counted_and_survived() {
        let rig = Rig::new();
        let (uuid, uuid_action) = some_state();
        let (task, h, sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        for raw in [
            WireMessage::Binary(vec![1, 2, 3]),
            WireMessage::Binary(vec![3, 42, 0, 0, 0, 0, 0, 0]),
            WireMessage::Binary(vec![3, 2, 0, 0, 25, 0, 0, 0]),
            WireMessage::Binary(vec![0; 25]),
            WireMessage::Text("{\"LL\":{}}".into()),
        ] {
            h.inject.send(Inject::Raw(raw)).unwrap();
        }
        h.inject.send(Inject::Values(vec![(uuid, 7.0)])).unwrap();
        until(|| rig.value_of(&uuid_action) == Some(7.0)).await;
        assert!(rig.state.error_count("protocol") >= 3);
        sd.cancel();
        let (outcome, _) = task.await.unwrap();
        assert!(matches!(outcome.end, SessionEnd::Shutdown));
    }

    #[test]
    fn a_miniserver_that_does_not_read_is_a_timeout_whichever_bound_hits() {
        let backlog = SessionError::Transport(TransportError::WebSocket(Box::new(
            tokio_tungstenite::tungstenite::Error::WriteBufferFull(Box::new(
                tokio_tungstenite::tungstenite::Message::Text("keepalive".into()),
            )),
        )));
        assert_eq!(backlog.kind(), "timeout");
        let reset = SessionError::Transport(TransportError::WebSocket(Box::new(
            tokio_tungstenite::tungstenite::Error::ConnectionClosed,
        )));
        assert_eq!(reset.kind(), "closed");
    }

    #[tokio::test]
    async fn unsolicited_broken_text_is_counted_and_an_unsolicited_answer_is_not() {
        let rig = Rig::new();
        let (uuid, uuid_action) = some_state();
        let (task, h, sd) = rig.start(Carry::default());
        until(|| rig.state.health().connected).await;
        let text = |t: &str| {
            let len = (t.len() as u32).to_le_bytes();
            [
                WireMessage::Binary(vec![3, 0, 0, 0, len[0], len[1], len[2], len[3]]),
                WireMessage::Text(t.into()),
            ]
        };
        let late_answer =
            r#"{"LL":{"control":"jdev/sps/LoxAPPversion3","value":"x","Code":"200"}}"#;
        for raw in text(r#"{"LL":"#).into_iter().chain(text(late_answer)) {
            h.inject.send(Inject::Raw(raw)).unwrap();
        }
        h.inject.send(Inject::Values(vec![(uuid, 7.0)])).unwrap();
        until(|| rig.value_of(&uuid_action) == Some(7.0)).await;
        assert_eq!(rig.state.error_count("protocol"), 1);
        sd.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn unreadable_answers_are_reported_as_such_not_as_silence() {
        let rig = Rig::new();
        // Answers every command at once, with text that is no LL answer.
        #[derive(Default)]
        struct Garbler(std::collections::VecDeque<WireMessage>);
        impl Transport for Garbler {
            async fn send_text(&mut self, _t: String) -> Result<(), TransportError> {
                let text = "<html>busy</html>";
                let header = Header {
                    kind: MessageKind::Text,
                    estimated: false,
                    payload_len: text.len() as u32,
                };
                self.0
                    .push_back(WireMessage::Binary(header.encode(0x80).to_vec()));
                self.0.push_back(WireMessage::Text(text.into()));
                Ok(())
            }
            async fn recv(&mut self) -> Result<Received, TransportError> {
                match self.0.pop_front() {
                    Some(m) => Ok(Received::Message(m)),
                    None => std::future::pending().await,
                }
            }
            async fn close(&mut self) {}
        }
        let outcome = rig.session_on(&mut Garbler::default()).await;
        match outcome.end {
            SessionEnd::Failed(e @ SessionError::Unreadable { what, .. }) => {
                assert_eq!(what, "keyexchange");
                assert_eq!(e.kind(), "protocol");
                assert!(e.to_string().contains("not JSON"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_command_times_out() {
        let rig = Rig::new();
        // A transport that never answers.
        struct Mute;
        impl Transport for Mute {
            async fn send_text(&mut self, _t: String) -> Result<(), TransportError> {
                Ok(())
            }
            async fn recv(&mut self) -> Result<Received, TransportError> {
                std::future::pending().await
            }
            async fn close(&mut self) {}
        }
        let outcome = rig.session_on(&mut Mute).await;
        match outcome.end {
            SessionEnd::Failed(SessionError::Timeout { what, .. }) => {
                assert_eq!(what, "keyexchange")
            }
            other => panic!("{other:?}"),
        }
    }
}
