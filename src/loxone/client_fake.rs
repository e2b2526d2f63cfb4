//! Test-only fake Miniserver behind a channel [`Transport`], for unit tests of the session
//! state machine without sockets. It speaks the real message framing (header message, then
//! payload) and the real crypto (RSA key exchange with the protocol's test key, AES command
//! decryption, HMAC checks), but keeps only what the tests need: one user, tokens with a
//! configurable lifetime, a structure, injectable events and faults.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::RsaPrivateKey;
use serde_json::json;
use tokio::sync::mpsc;

use super::connection::{Received, TransportError};
use super::crypto::{self, HashAlg, SessionKey};
use super::envelope::{encode_ll, CodeStyle};
use super::events::{encode_value_events, ValueEvent};
use super::framer::WireMessage;
use super::header::{Header, MessageKind};
use super::session::Transport;
use super::uuid::LoxUuid;

/// The protocol's 1024-bit test key.
pub const TEST_KEY_PEM: &str = include_str!("../../tests/fixtures/loxone/test-rsa-1024.pem");

/// The private test key.
pub fn private_key() -> RsaPrivateKey {
    #[allow(clippy::expect_used)]
    RsaPrivateKey::from_pkcs1_pem(TEST_KEY_PEM).expect("test key parses")
}

/// Behaviour of the fake.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub user: String,
    pub password: String,
    pub alg: HashAlg,
    /// Token lifetime in seconds, counted from `now_loxone`.
    pub token_lifetime: u64,
    /// "Current" time in seconds since the Loxone epoch.
    pub now_loxone: u64,
    pub structure: String,
    pub last_modified: String,
    /// Value events sent right after `enablebinstatusupdate`.
    pub initial_values: Vec<(LoxUuid, f64)>,
    /// Send a value table before every LL answer (events between command and answer).
    pub tables_before_answers: bool,
    /// Answer `keepalive`.
    pub answer_keepalive: bool,
    /// Announce the structure with an estimated header first.
    pub estimated_headers: bool,
    /// Commands (by prefix of the decrypted command) that are logged but never answered:
    /// a download or refresh still in flight.
    pub unanswered: Vec<&'static str>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            user: "admin".into(),
            password: "secret".into(),
            alg: HashAlg::Sha256,
            token_lifetime: 3600,
            now_loxone: 500_000_000,
            structure: String::new(),
            last_modified: "2024-01-01 10:00:00".into(),
            initial_values: Vec::new(),
            tables_before_answers: false,
            answer_keepalive: true,
            estimated_headers: false,
            unanswered: Vec::new(),
        }
    }
}

/// What the fake saw; shared with the test.
#[derive(Debug, Default)]
pub struct FakeLog {
    /// Plain commands (decrypted when they were encrypted), hashes included.
    pub commands: Vec<String>,
    /// Which commands arrived encrypted.
    pub encrypted: Vec<bool>,
    pub structure_downloads: u32,
    pub keepalives: u32,
}

/// Tokens valid on the fake (shared across connections of one "Miniserver").
#[derive(Debug, Default)]
pub struct FakeTokens {
    pub valid: HashMap<String, u64>,
    pub issued: u32,
}

/// Something the test injects into the fake's outbound stream.
#[derive(Debug, Clone)]
pub enum Inject {
    Values(Vec<(LoxUuid, f64)>),
    Raw(WireMessage),
    Close(u16, String),
    OutOfService,
}

/// The client side of the fake.
pub struct FakeTransport {
    to_server: mpsc::UnboundedSender<String>,
    from_server: mpsc::UnboundedReceiver<Received>,
}

impl Transport for FakeTransport {
    async fn send_text(&mut self, text: String) -> Result<(), TransportError> {
        // A closed fake just swallows (like a socket that is going down).
        let _ = self.to_server.send(text);
        Ok(())
    }

    async fn recv(&mut self) -> Result<Received, TransportError> {
        Ok(self.from_server.recv().await.unwrap_or(Received::Closed {
            code: None,
            reason: String::new(),
        }))
    }

    async fn close(&mut self) {}
}

/// Handles for the test.
pub struct FakeHandle {
    pub log: Arc<Mutex<FakeLog>>,
    pub inject: mpsc::UnboundedSender<Inject>,
}

/// Starts a fake connection sharing `tokens` (one per simulated Miniserver).
pub fn connect(config: FakeConfig, tokens: Arc<Mutex<FakeTokens>>) -> (FakeTransport, FakeHandle) {
    let (to_server, mut commands) = mpsc::unbounded_channel::<String>();
    let (out, from_server) = mpsc::unbounded_channel::<Received>();
    let (inject, mut injected) = mpsc::unbounded_channel::<Inject>();
    let log = Arc::new(Mutex::new(FakeLog::default()));
    let server_log = log.clone();
    tokio::spawn(async move {
        let mut server = Server {
            config,
            tokens,
            log: server_log,
            out,
            session_key: None,
            user_key: None,
        };
        loop {
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(c) = cmd else { break };
                    if !server.handle(&c) {
                        break;
                    }
                }
                Some(i) = injected.recv() => {
                    if !server.inject(i) {
                        break;
                    }
                }
            }
        }
    });
    (
        FakeTransport {
            to_server,
            from_server,
        },
        FakeHandle { log, inject },
    )
}

struct Server {
    config: FakeConfig,
    tokens: Arc<Mutex<FakeTokens>>,
    log: Arc<Mutex<FakeLog>>,
    out: mpsc::UnboundedSender<Received>,
    session_key: Option<SessionKey>,
    user_key: Option<String>,
}

impl Server {
    fn push(&self, msg: WireMessage) {
        let _ = self.out.send(Received::Message(msg));
    }

    fn header(&self, kind: MessageKind, len: usize) {
        self.push(WireMessage::Binary(
            Header::new(kind, len as u32).encode(0).to_vec(),
        ));
    }

    fn text(&self, text: &str) {
        self.header(MessageKind::Text, text.len());
        self.push(WireMessage::Binary(text.as_bytes().to_vec()));
    }

    fn values(&self, values: &[(LoxUuid, f64)]) {
        let events: Vec<ValueEvent> = values
            .iter()
            .map(|&(uuid, value)| ValueEvent { uuid, value })
            .collect();
        let mut buf = Vec::new();
        encode_value_events(&events, &mut buf);
        self.header(MessageKind::ValueStates, buf.len());
        self.push(WireMessage::Binary(buf));
    }

    fn ll(&self, control: &str, code: u16, value: serde_json::Value) {
        if self.config.tables_before_answers {
            self.values(&self.config.initial_values);
        }
        self.text(&encode_ll(control, code, &value, CodeStyle::UpperString));
    }

    fn close(&self, code: u16, reason: &str) {
        let _ = self.out.send(Received::Closed {
            code: Some(code),
            reason: reason.into(),
        });
    }

    fn inject(&mut self, i: Inject) -> bool {
        match i {
            Inject::Values(v) => self.values(&v),
            Inject::Raw(m) => self.push(m),
            Inject::Close(code, reason) => {
                self.close(code, &reason);
                return false;
            }
            Inject::OutOfService => {
                self.header(MessageKind::OutOfService, 0);
                self.close(1001, "");
                return false;
            }
        }
        true
    }

    fn take_key(&mut self) -> Option<String> {
        self.user_key.take()
    }

    fn new_token(&self) -> (String, u64) {
        let mut t = self.tokens.lock();
        t.issued += 1;
        let token = format!("jwt-{}-{}", t.issued, rand::random::<u32>());
        let until = self.config.now_loxone + self.config.token_lifetime;
        t.valid.insert(token.clone(), until);
        (token, until)
    }

    fn find_token(&self, key: &str, hash: &str) -> Option<String> {
        let t = self.tokens.lock();
        t.valid
            .keys()
            .find(|tok| {
                crypto::token_hash(self.config.alg, key, tok)
                    .is_ok_and(|h| h.eq_ignore_ascii_case(hash))
            })
            .cloned()
    }

    /// Returns false when the connection ends.
    fn handle(&mut self, raw: &str) -> bool {
        let (cmd, encrypted) = if let Some(cipher) = raw.strip_prefix("jdev/sys/enc/") {
            let Some(sk) = &self.session_key else {
                self.ll(raw, 401, json!(""));
                return true;
            };
            match crypto::decrypt_command(sk, cipher) {
                Ok(d) => (d.command, true),
                Err(_) => {
                    self.ll(raw, 401, json!(""));
                    return true;
                }
            }
        } else {
            (raw.to_string(), false)
        };
        {
            let mut log = self.log.lock();
            log.commands.push(cmd.clone());
            log.encrypted.push(encrypted);
        }
        if self.config.unanswered.iter().any(|p| cmd.starts_with(p)) {
            return true;
        }
        if let Some(blob) = cmd.strip_prefix("jdev/sys/keyexchange/") {
            // base64 may contain '/', so this one is matched by prefix.
            match crypto::decrypt_session_key(&private_key(), blob) {
                Ok(sk) => {
                    self.session_key = Some(sk);
                    self.ll("jdev/sys/keyexchange", 200, json!(""));
                }
                Err(_) => self.ll("jdev/sys/keyexchange", 401, json!("")),
            }
            return true;
        }
        let parts: Vec<&str> = cmd.split('/').collect();
        match parts.as_slice() {
            ["keepalive"] => {
                self.log.lock().keepalives += 1;
                if self.config.answer_keepalive {
                    self.header(MessageKind::Keepalive, 0);
                }
            }
            ["jdev", "sys", "getkey2", user] => {
                if *user != self.config.user {
                    self.ll(&cmd, 404, json!(""));
                    return true;
                }
                let key = crypto::random_one_time_key(&mut rand::rngs::OsRng);
                self.user_key = Some(key.clone());
                let alg = self.config.alg.as_loxone();
                self.ll(
                    &cmd,
                    200,
                    json!({"key": key, "salt": "31346632", "hashAlg": alg}),
                );
            }
            ["jdev", "sys", "getjwt", hash, user, _perm, _uuid, _info] => {
                let Some(key) = self.take_key() else {
                    self.ll("jdev/sys/getjwt", 401, json!(""));
                    return true;
                };
                let pw = crypto::password_hash(self.config.alg, &self.config.password, "31346632");
                let ok = *user == self.config.user
                    && crypto::credential_hash(self.config.alg, &key, user, &pw)
                        .is_ok_and(|h| h.eq_ignore_ascii_case(hash));
                if ok && encrypted {
                    let (token, until) = self.new_token();
                    self.ll(
                        "jdev/sys/getjwt",
                        200,
                        json!({"token": token, "key": "00", "validUntil": until, "tokenRights": 1666, "unsecurePass": false}),
                    );
                } else {
                    self.ll(
                        "jdev/sys/getjwt",
                        if encrypted { 401 } else { 400 },
                        json!({"lastEdit": "", "unix": 0}),
                    );
                }
            }
            ["authwithtoken", hash, _user] => {
                let found = self.take_key().and_then(|k| self.find_token(&k, hash));
                match found {
                    Some(tok) if encrypted => {
                        let until = self.tokens.lock().valid.get(&tok).copied().unwrap_or(0);
                        self.ll("authwithtoken", 200, json!({"validUntil": until, "tokenRights": 1666, "unsecurePass": false}));
                    }
                    _ => self.ll("authwithtoken", 401, json!("")),
                }
            }
            ["jdev", "sys", "refreshjwt", hash, _user] => {
                match self.take_key().and_then(|k| self.find_token(&k, hash)) {
                    Some(old) => {
                        self.tokens.lock().valid.remove(&old);
                        let (token, until) = self.new_token();
                        self.ll(
                            "jdev/sys/refreshjwt",
                            200,
                            json!({"token": token, "validUntil": until, "unsecurePass": false}),
                        );
                    }
                    None => self.ll("jdev/sys/refreshjwt", 401, json!("")),
                }
            }
            ["jdev", "sys", "killtoken", hash, _user] => {
                match self.take_key().and_then(|k| self.find_token(&k, hash)) {
                    Some(old) => {
                        self.tokens.lock().valid.remove(&old);
                        self.ll("jdev/sys/killtoken", 200, json!(""));
                        self.close(1000, "");
                        return false;
                    }
                    None => self.ll("jdev/sys/killtoken", 401, json!("")),
                }
            }
            ["jdev", "sys", "getkey"] => {
                let key = crypto::random_one_time_key(&mut rand::rngs::OsRng);
                self.user_key = Some(key.clone());
                self.ll("dev/sys/getkey", 200, json!(key));
            }
            ["authenticate", hash] => {
                let ok = self.take_key().is_some_and(|k| {
                    crypto::legacy_hash(&k, &self.config.user, &self.config.password)
                        .is_ok_and(|h| h.eq_ignore_ascii_case(hash))
                });
                self.ll("authenticate", if ok { 200 } else { 401 }, json!(""));
            }
            ["jdev", "sps", "LoxAPPversion3"] => {
                self.ll(
                    "dev/sps/LoxAPPversion3",
                    200,
                    json!(self.config.last_modified),
                );
            }
            ["data", "LoxAPP3.json"] => {
                self.log.lock().structure_downloads += 1;
                let s = self.config.structure.clone();
                if self.config.estimated_headers {
                    let estimated = Header {
                        kind: MessageKind::Text,
                        estimated: true,
                        payload_len: (s.len() + 100) as u32,
                    };
                    self.push(WireMessage::Binary(estimated.encode(0x80).to_vec()));
                }
                self.text(&s);
            }
            ["jdev", "sps", "enablebinstatusupdate"] => {
                self.ll("dev/sps/enablebinstatusupdate", 200, json!("1"));
                self.values(&self.config.initial_values);
            }
            _ => self.ll(&cmd, 400, json!("")),
        }
        true
    }
}
