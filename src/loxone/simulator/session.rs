//! One simulated Miniserver WebSocket: the per-socket state machine NEW → KEYED →
//! AUTHENTICATED (protocol doc §8), command handling, and the writer that puts an 8-byte
//! header before every payload (optionally an estimated header first, optionally the payload
//! split into continuation frames).
//!
//! [`Session::handle`] is synchronous and socket-free: it turns one received text into
//! [`Action`]s. [`run`] owns the socket, the timers (auth timeout → 420 + close, idle timeout,
//! token expiry → close 1000) and the broadcast subscriptions (event deltas, faults).
//!
//! Strict where a real Miniserver is (doc §4.3, §4.5, §5.2): enc/fenc ciphers must be
//! URI-component-encoded, canonically padded base64 of whole AES blocks (else 401);
//! getjwt/gettoken need all five arguments with permission 2 or 4 (else 400); control values
//! must be finite numbers (else 400); `dev/…` commands get the XML answer form; a socket
//! holds one of the `--event-slots` status-update slots from `enablebinstatusupdate` until
//! it closes, and with none free it is closed with 4008.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value as Json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::auth::{LoginError, LOXONE_EPOCH_UNIX, TOKEN_RIGHTS};
use super::options::{CodeStyleArg, EstimatedFlag, SaltCheck};
use super::shared::{
    format_timestamp, Counters, EventSlot, Fault, MalformedKind, Outgoing, Shared,
};
use crate::loxone::crypto::{self, SaltPrefix, SessionKey};
use crate::loxone::envelope::{encode_ll, CodeStyle};
use crate::loxone::events::{
    encode_daytimer_events, encode_text_events, encode_value_event, encode_weather_events,
    DaytimerEntry, DaytimerEvent, TextEvent, ValueEvent, WeatherEntry, WeatherEvent,
};
use crate::loxone::header::{Header, MessageKind};
use crate::loxone::structure::canonical_key;
use crate::loxone::uuid::LoxUuid;

/// What the socket writer should do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Type-0 header, then this text as a TEXT frame.
    Text(String),
    /// A header of this kind, then the payload as a BINARY frame.
    Binary(MessageKind, Bytes),
    /// Only a header (keepalive, out-of-service).
    HeaderOnly(MessageKind),
    /// Close the socket.
    Close(u16, String),
}

/// Authentication progress of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Just opened.
    New,
    /// Session key exchanged.
    Keyed,
    /// Logged in (getjwt/gettoken/authwithtoken).
    Authenticated,
}

/// Per-socket state.
pub struct Session {
    shared: Arc<Shared>,
    tls: bool,
    phase: Phase,
    session_key: Option<SessionKey>,
    salt: Option<String>,
    token: Option<String>,
    events: Option<broadcast::Receiver<Arc<Outgoing>>>,
    /// The status-update slot taken by `enablebinstatusupdate`; freed when the session ends.
    event_slot: Option<EventSlot>,
    /// Shape of the answer being built: status key style and JSON or XML (`dev/…`).
    answer: AnswerForm,
    rng: StdRng,
}

/// How the LL answer to the command being handled is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AnswerForm {
    style: CodeStyle,
    xml: bool,
}

impl AnswerForm {
    /// Before a command is looked at: JSON, `"Code": "…"`.
    const JSON: AnswerForm = AnswerForm {
        style: CodeStyle::UpperString,
        xml: false,
    };
}

impl Session {
    /// A new socket.
    pub fn new(shared: Arc<Shared>, tls: bool) -> Self {
        Session {
            shared,
            tls,
            phase: Phase::New,
            session_key: None,
            salt: None,
            token: None,
            events: None,
            event_slot: None,
            answer: AnswerForm::JSON,
            rng: StdRng::from_entropy(),
        }
    }

    /// Current phase.
    #[cfg(test)]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Status-key style of the answer to `path` (a command without query; `jdev/` or
    /// `dev/`, enc-wrapped or not).
    fn style_for(&self, path: &str) -> CodeStyle {
        match self.shared.opts.code_style {
            CodeStyleArg::UpperString => CodeStyle::UpperString,
            CodeStyleArg::UpperNumber => CodeStyle::UpperNumber,
            CodeStyleArg::LowerString => CodeStyle::LowerString,
            CodeStyleArg::LowerNumber => CodeStyle::LowerNumber,
            CodeStyleArg::Mixed => {
                let norm = path.strip_prefix('j').unwrap_or(path);
                if norm.starts_with("dev/sys/getkey2/") {
                    // LJ capture of getkey2: `"code": 200`
                    CodeStyle::LowerNumber
                } else if norm.starts_with("dev/sys/") || norm.starts_with("authwithtoken/") {
                    // node-lox-ws-api capture of a gettoken 401: `"code":"401"`
                    CodeStyle::LowerString
                } else {
                    CodeStyle::UpperString
                }
            }
        }
    }

    /// Sets the answer form for `path` (the command as received, or the decrypted inner
    /// command): XML once either is `dev/…` (doc §5.2).
    fn answer_to(&mut self, path: &str) {
        self.answer = AnswerForm {
            style: self.style_for(path),
            xml: self.answer.xml || path.starts_with("dev/"),
        };
    }

    fn ll(&self, control: &str, code: u16, value: Json) -> Action {
        if self.answer.xml {
            Action::Text(encode_ll_xml(control, code, &value))
        } else {
            Action::Text(encode_ll(control, code, &value, self.answer.style))
        }
    }

    /// Handles one text message from the client.
    pub fn handle(&mut self, text: &str, now: Instant) -> Vec<Action> {
        let text = text.trim_matches('\0').trim();
        let text = text.strip_prefix('/').unwrap_or(text);
        if text == "keepalive" {
            Counters::inc(&self.shared.counters.keepalives);
            return vec![Action::HeaderOnly(MessageKind::Keepalive)];
        }
        Counters::inc(&self.shared.counters.commands);
        self.answer = AnswerForm::JSON;
        self.answer_to(text);
        if let Some(b64) = text.strip_prefix("jdev/sys/keyexchange/") {
            return vec![self.keyexchange(text, b64, now)];
        }
        if let Some((full, _)) = crypto::split_encrypted_command(text) {
            Counters::inc(&self.shared.counters.encrypted_commands);
            return self.encrypted(text, full, now);
        }
        self.dispatch(text, None, false, now)
    }

    fn keyexchange(&mut self, text: &str, b64: &str, now: Instant) -> Action {
        if self.session_key.is_some() || self.phase != Phase::New {
            // one keyexchange per socket, before auth (LJ #214)
            return self.ll(
                text,
                self.shared.opts.rekey_code,
                json!("key exchange already done"),
            );
        }
        match crypto::decrypt_session_key(&self.shared.rsa, b64.trim()) {
            Ok(sk) => {
                // LXC AES-decrypts the answer and uses it as a one-time key (§4.4 \[UNSURE\])
                let key = self.shared.auth.lock().issue_key(now, &mut self.rng);
                let value = crypto::aes_encrypt_b64(&sk, key.as_bytes());
                self.session_key = Some(sk);
                self.phase = Phase::Keyed;
                self.ll(text, 200, Json::String(value))
            }
            Err(_) => self.ll(text, 401, json!("Session key exchange failed")),
        }
    }

    fn encrypted(&mut self, text: &str, full: bool, now: Instant) -> Vec<Action> {
        let Some(sk) = self.session_key.clone() else {
            return vec![self.ll(text, 401, json!("no session key"))];
        };
        if !cipher_is_well_formed(text) {
            // a real Miniserver cannot decrypt it either: a cut or unpadded cipher is no
            // whole AES block (doc §4.5)
            return vec![self.ll(text, 401, json!("decryption failed"))];
        }
        let dc = match crypto::decrypt_command(&sk, text) {
            Ok(dc) => dc,
            Err(_) => return vec![self.ll(text, 401, json!("decryption failed"))],
        };
        let salt_ok = match self.shared.opts.salt_check {
            SaltCheck::Lax => true,
            SaltCheck::Strict => match (&self.salt, &dc.salt) {
                (None, SaltPrefix::Salt(_)) => true,
                (None, SaltPrefix::NextSalt { .. }) => false,
                (Some(cur), SaltPrefix::Salt(s)) => cur == s,
                (Some(cur), SaltPrefix::NextSalt { previous, .. }) => cur == previous,
            },
        };
        if !salt_ok {
            // "unexpected salt change" (DOC)
            return vec![self.ll(text, 401, json!("unexpected salt"))];
        }
        self.salt = Some(dc.salt.current().to_string());
        // older firmware echoed the cipher form; clients that handle it (PYLOX, OH, ESC,
        // loxwebsocket) base64-decode what follows `jdev/sys/enc/` without URI-decoding, so
        // the echo carries the URI-decoded cipher
        let echo = self.shared.opts.echo_cipher.then(|| percent_decode(text));
        let mut actions = self.dispatch(&dc.command, echo.as_deref(), true, now);
        if full {
            // fenc: the LL answer itself is encrypted (never the structure file, DOC16)
            let is_structure = dc
                .command
                .trim_start_matches('/')
                .starts_with("data/LoxAPP3.json");
            if !is_structure {
                for a in actions.iter_mut() {
                    if let Action::Text(t) = a {
                        *t = crypto::aes_encrypt_b64(&sk, t.as_bytes());
                        break;
                    }
                }
            }
        }
        actions
    }

    fn dispatch(
        &mut self,
        cmd: &str,
        echo: Option<&str>,
        encrypted: bool,
        now: Instant,
    ) -> Vec<Action> {
        let cmd = cmd.trim_start_matches('/');
        if encrypted && cmd.trim_matches('\0').trim() == "keepalive" {
            // keepalive may be enc-wrapped too (doc §8): the same bare header
            Counters::inc(&self.shared.counters.keepalives);
            return vec![Action::HeaderOnly(MessageKind::Keepalive)];
        }
        let path = cmd.split('?').next().unwrap_or_default();
        self.answer_to(path);
        // `jdev/...` and `dev/...` address the same command
        let norm = path
            .strip_prefix('j')
            .filter(|r| r.starts_with("dev/"))
            .unwrap_or(path);
        let control = echo
            .map(str::to_string)
            .unwrap_or_else(|| echo_control(path));
        let parts: Vec<&str> = norm.split('/').collect();
        let secure_channel = encrypted || self.tls || self.shared.opts.allow_plain_token_commands;

        let pre_auth_ok = matches!(
            parts.as_slice(),
            ["dev", "sys", "getkey"]
                | ["dev", "sys", "getkey2", ..]
                | ["dev", "sys", "getjwt", ..]
                | ["dev", "sys", "gettoken", ..]
                | ["authwithtoken", ..]
                | ["dev", "sys", "authwithtoken", ..]
        );
        if self.phase != Phase::Authenticated && !pre_auth_ok {
            return vec![self.ll(&control, 400, json!("not authenticated"))];
        }

        match parts.as_slice() {
            ["dev", "sys", "getkey"] => {
                let key = self.shared.auth.lock().issue_key(now, &mut self.rng);
                vec![self.ll(&control, 200, Json::String(key))]
            }
            ["dev", "sys", "getkey2", user] => {
                let user = percent_decode(user);
                let (key, salt, alg) = {
                    let mut a = self.shared.auth.lock();
                    (a.issue_key(now, &mut self.rng), a.salt_for(&user), a.alg())
                };
                vec![self.ll(
                    &control,
                    200,
                    json!({"key": key, "salt": salt, "hashAlg": alg.as_loxone()}),
                )]
            }
            ["dev", "sys", verb @ ("getjwt" | "gettoken"), args @ ..] => {
                if !secure_channel {
                    return vec![self.ll(&control, 400, json!("must be encrypted"))];
                }
                // getjwt/<hash>/<user>/<permission>/<clientUuid>/<info>, permission 2 or 4
                // (doc §4.3)
                let [hash, user, perm @ ("2" | "4"), client_uuid, info] = args else {
                    return vec![self.ll(&control, 400, json!("invalid arguments"))];
                };
                if [hash, user, client_uuid, info].iter().any(|a| a.is_empty()) {
                    return vec![self.ll(&control, 400, json!("invalid arguments"))];
                }
                let jwt = *verb == "getjwt";
                let user = percent_decode(user);
                let permission: u32 = if *perm == "4" { 4 } else { 2 };
                self.get_token(&control, hash, &user, permission, jwt, now)
            }
            ["authwithtoken", hash, user] | ["dev", "sys", "authwithtoken", hash, user] => {
                if !secure_channel {
                    return vec![self.ll(&control, 400, json!("must be encrypted"))];
                }
                let user = percent_decode(user);
                let unix = Shared::unix_now();
                let found = {
                    let mut a = self.shared.auth.lock();
                    a.login_with_token(&user, hash, now).map(|t| {
                        let rec = a.extend(&t, now, unix);
                        (t, rec)
                    })
                };
                match found {
                    Ok((token, Some(rec))) => {
                        Counters::inc(&self.shared.counters.auth_ok);
                        self.phase = Phase::Authenticated;
                        self.token = Some(token);
                        vec![self.ll(
                            &control,
                            200,
                            json!({"validUntil": rec.valid_until, "tokenRights": TOKEN_RIGHTS, "unsecurePass": false}),
                        )]
                    }
                    Ok((_, None)) => vec![self.ll(&control, 401, json!("invalid token"))],
                    Err(e) => {
                        self.shared.counters.record_auth_failure();
                        let code = match e {
                            LoginError::Unauthorized => 401,
                            LoginError::Blocked(_) => 403,
                        };
                        vec![self.ll(&control, code, json!("invalid token"))]
                    }
                }
            }
            ["dev", "sys", verb @ ("refreshjwt" | "refreshtoken" | "checktoken" | "killtoken"), hash, user] => {
                self.token_command(&control, verb, hash, &percent_decode(user), now)
            }
            ["dev", "sps", "LoxAPPversion3"] => {
                let lm = self.shared.structure().last_modified.clone();
                vec![self.ll(&control, 200, Json::String(lm))]
            }
            ["data", "LoxAPP3.json"] => {
                vec![Action::Text(self.shared.structure().text.to_string())]
            }
            ["dev", "sps", "enablebinstatusupdate"] => self.enable_updates(&control),
            ["dev", "sps", "io", uuid, rest @ ..] if !rest.is_empty() => {
                self.io_command(&control, uuid, &rest.join("/"))
            }
            ["dev", "cfg", "api"] | ["dev", "cfg", "apiKey"] => {
                let with_key = parts.get(2) == Some(&"apiKey");
                let key = with_key.then(|| self.shared.auth.lock().issue_key(now, &mut self.rng));
                let v = super::http::api_key_value(&self.shared, key, None);
                vec![self.ll(&control, 200, Json::String(v))]
            }
            _ => vec![self.ll(&control, 404, json!("File not found!"))],
        }
    }

    fn get_token(
        &mut self,
        control: &str,
        hash: &str,
        user: &str,
        permission: u32,
        jwt: bool,
        now: Instant,
    ) -> Vec<Action> {
        let lifetime = if permission == 4 {
            self.shared.opts.token_lifetime_app
        } else {
            self.shared.opts.token_lifetime_web
        };
        let unix = Shared::unix_now();
        let mut a = self.shared.auth.lock();
        match a.verify_credentials(user, hash, now) {
            Ok(()) => {
                let (token, rec) =
                    a.issue_token(permission, lifetime, jwt, now, unix, &mut self.rng);
                let key = a.issue_key(now, &mut self.rng);
                drop(a);
                Counters::inc(&self.shared.counters.auth_ok);
                self.phase = Phase::Authenticated;
                self.token = Some(token.clone());
                vec![self.ll(
                    control,
                    200,
                    json!({"token": token, "key": key, "validUntil": rec.valid_until,
                           "tokenRights": TOKEN_RIGHTS, "unsecurePass": false}),
                )]
            }
            Err(e) => {
                drop(a);
                self.shared.counters.record_auth_failure();
                let code = match e {
                    LoginError::Unauthorized => 401,
                    LoginError::Blocked(_) => 403,
                };
                // value = time of the last password change (node-lox-ws-api capture)
                vec![self.ll(
                    control,
                    code,
                    json!({"lastEdit": format_timestamp(LOXONE_EPOCH_UNIX), "unix": LOXONE_EPOCH_UNIX}),
                )]
            }
        }
    }

    fn token_command(
        &mut self,
        control: &str,
        verb: &str,
        hash: &str,
        user: &str,
        now: Instant,
    ) -> Vec<Action> {
        let unix = Shared::unix_now();
        let mut a = self.shared.auth.lock();
        let Some(token) = a.find_token(user, hash, now) else {
            drop(a);
            let code = if verb == "checktoken" {
                self.shared.opts.checktoken_invalid_code
            } else {
                401
            };
            return vec![self.ll(control, code, json!("invalid token"))];
        };
        match verb {
            "refreshjwt" => match a.replace(&token, now, unix, &mut self.rng) {
                Some((new, rec)) => {
                    drop(a);
                    Counters::inc(&self.shared.counters.tokens_refreshed);
                    if self.token.as_deref() == Some(token.as_str()) {
                        self.token = Some(new.clone());
                    }
                    vec![self.ll(
                        control,
                        200,
                        json!({"token": new, "validUntil": rec.valid_until,
                               "tokenRights": TOKEN_RIGHTS, "unsecurePass": false}),
                    )]
                }
                None => vec![self.ll(control, 401, json!("invalid token"))],
            },
            "refreshtoken" => match a.extend(&token, now, unix) {
                Some(rec) => {
                    drop(a);
                    Counters::inc(&self.shared.counters.tokens_refreshed);
                    vec![self.ll(
                        control,
                        200,
                        json!({"validUntil": rec.valid_until, "unsecurePass": false}),
                    )]
                }
                None => vec![self.ll(control, 401, json!("invalid token"))],
            },
            "checktoken" => match a.token(&token, now) {
                Some(rec) => vec![self.ll(
                    control,
                    200,
                    json!({"validUntil": rec.valid_until, "unsecurePass": false}),
                )],
                None => vec![self.ll(
                    control,
                    self.shared.opts.checktoken_invalid_code,
                    json!("invalid token"),
                )],
            },
            _ => {
                a.kill(&token);
                drop(a);
                Counters::inc(&self.shared.counters.tokens_killed);
                let mut out = vec![self.ll(
                    control,
                    self.shared.opts.killtoken_code,
                    json!("token killed"),
                )];
                if self.token.as_deref() == Some(token.as_str()) {
                    // killing the token that authenticated this socket closes it (LXC)
                    out.push(Action::Close(1000, "token killed".into()));
                }
                out
            }
        }
    }

    fn enable_updates(&mut self, control: &str) -> Vec<Action> {
        if self.event_slot.is_none() {
            match self.shared.take_event_slot() {
                Some(slot) => self.event_slot = Some(slot),
                None => {
                    // all slots taken (doc §1.4): "no free event slot" (doc §2.3, §5.4)
                    Counters::inc(&self.shared.counters.event_slots_refused);
                    return vec![Action::Close(4008, "no free event slot".into())];
                }
            }
        }
        // subscribe before the snapshot so no delta falls between them
        if self.events.is_none() {
            self.events = Some(self.shared.events.subscribe());
        }
        let answer = self.ll(control, 200, json!("1"));
        let tables = initial_tables(&self.shared);
        let mut out = Vec::new();
        if self.shared.opts.tables_before_answer {
            out.extend(tables);
            out.push(answer);
        } else {
            out.push(answer);
            out.extend(tables);
        }
        out
    }

    fn io_command(&mut self, control: &str, uuid: &str, cmd: &str) -> Vec<Action> {
        let target = {
            let s = self.shared.structure();
            s.catalogue.io_targets.get(&canonical_key(uuid)).cloned()
        };
        let Some(target) = target else {
            return vec![self.ll(control, 404, json!("File not found!"))];
        };
        const PREFERRED: &[&str] = &["value", "active", "position", "tempTarget", "actual"];
        let state = PREFERRED
            .iter()
            .find_map(|p| target.value_states.iter().find(|(n, _)| n == p))
            .or_else(|| target.value_states.first())
            .cloned();
        let Some((name, state_uuid)) = state else {
            return vec![self.ll(control, 200, json!("0"))];
        };
        let current = self.shared.values.lock().value(&state_uuid).unwrap_or(0.0);
        let full_scale = if target.control_type.to_ascii_lowercase().contains("dimmer") {
            100.0
        } else {
            1.0
        };
        let mut it = cmd.split('/');
        let verb = it.next().unwrap_or_default();
        let invalid = || vec![self.ll(control, 400, json!("invalid value"))];
        let new = match verb.to_ascii_lowercase().as_str() {
            "on" => Some(full_scale),
            "off" => Some(0.0),
            "pulse" => Some(if current >= 0.5 { 0.0 } else { full_scale }),
            "up" | "fullup" => Some(0.0),
            "down" | "fulldown" => Some(1.0),
            "manualposition" => match it.next().map(str::parse::<f64>) {
                Some(Ok(v)) if v.is_finite() => Some(v / 100.0),
                _ => return invalid(),
            },
            // a number sets the value; NaN and ±∞ are no values
            other => match other.parse::<f64>() {
                Ok(v) if v.is_finite() => Some(v),
                Ok(_) => return invalid(),
                Err(_) => None,
            },
        };
        let value = match new {
            Some(v) => {
                self.shared.set_values(&[(state_uuid, v)]);
                v
            }
            None => current,
        };
        let _ = name;
        vec![self.ll(control, 200, Json::String(fmt_number(value)))]
    }

    /// Expiry of the token that authenticated this socket (None without one).
    fn token_expiry(&self, now: Instant) -> Option<Result<Instant, ()>> {
        let t = self.token.as_ref()?;
        Some(
            self.shared
                .auth
                .lock()
                .token(t, now)
                .map(|r| r.expires_at)
                .ok_or(()),
        )
    }
}

/// The deprecated XML form of an LL answer, for commands sent as `dev/…` (doc §5.2), e.g.
/// `<LL control="dev/sps/io/VI1/On" value="1" Code="200"/>` after an XML declaration
/// (captures in Loxone's web-services page and client code; the line break after the
/// declaration is \[UNSURE\]). An object value is written as its JSON text.
pub fn encode_ll_xml(control: &str, code: u16, value: &Json) -> String {
    let value = match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<LL control=\"{}\" value=\"{}\" Code=\"{code}\"/>",
        xml_attr(control),
        xml_attr(&value)
    )
}

/// Escapes for a double-quoted XML attribute. Not `http::html_escape`: that one also
/// writes `'` as `&#39;`, which the Miniserver leaves raw (its values quote with `'`).
fn xml_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether the cipher of `jdev/sys/enc|fenc/<cipher>` is what a real Miniserver can
/// decrypt: once URI-decoded, canonically padded standard base64 of a whole number of AES
/// blocks (doc §4.5: zero padded to 16). `crypto::decrypt_command` itself is lenient, as the
/// exporter's client needs it for old-firmware fenc answers.
///
/// A raw `/` is accepted, although doc §4.5 and pitfall 20 say the cipher is
/// URI-component-encoded: PyLoxone (`pathname2url`) and pyloxone-api 0.2.4 (`quote`) leave
/// base64's `/` unencoded, and a login's getkey2 and getjwt ciphers (about 90 and 220–260
/// characters) hold one in over 99 % of logins, so a Miniserver that split the path there
/// would refuse nearly every login of those clients, which Home Assistant users run against
/// real units (tests/simulator_pyloxone.rs).
fn cipher_is_well_formed(command: &str) -> bool {
    use base64::Engine;
    let Some((_, cipher)) = crypto::split_encrypted_command(command) else {
        return false;
    };
    let Ok(decoded) = percent_encoding::percent_decode_str(cipher).decode_utf8() else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(decoded.as_bytes())
        .is_ok_and(|c| !c.is_empty() && c.len() % 16 == 0)
}

fn fmt_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        v.to_string()
    }
}

/// Echoed control: `jdev/sys/...` keeps `jdev/`, other `jdev/...` become `dev/...` (DOC).
fn echo_control(path: &str) -> String {
    if path.starts_with("jdev/sys/") {
        path.to_string()
    } else if let Some(rest) = path.strip_prefix("jdev/") {
        format!("dev/{rest}")
    } else {
        path.to_string()
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The full initial tables of all four kinds.
pub fn initial_tables(shared: &Shared) -> Vec<Action> {
    let s = shared.structure();
    let mut out = Vec::new();

    let mut values = Vec::new();
    let mut n = 0u64;
    for (uuid, value) in shared.values.lock().snapshot() {
        encode_value_event(&ValueEvent { uuid, value }, &mut values);
        n += 1;
    }
    shared
        .counters
        .value_events_sent
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    if !values.is_empty() {
        out.push(Action::Binary(
            MessageKind::ValueStates,
            Bytes::from(values),
        ));
    }

    let texts = shared.texts.lock();
    let zero = LoxUuid::default();
    let events: Vec<TextEvent<'_>> = s
        .catalogue
        .texts
        .iter()
        .map(|t| TextEvent {
            uuid: t.uuid,
            icon: zero,
            text: texts.get(&t.uuid).map(String::as_str).unwrap_or("").into(),
        })
        .collect();
    if !events.is_empty() {
        let mut buf = Vec::new();
        encode_text_events(&events, &mut buf);
        out.push(Action::Binary(MessageKind::TextStates, Bytes::from(buf)));
    }
    drop(texts);

    if !s.catalogue.daytimers.is_empty() {
        let events: Vec<DaytimerEvent> = s
            .catalogue
            .daytimers
            .iter()
            .map(|&uuid| DaytimerEvent {
                uuid,
                default_value: 0.0,
                entries: vec![
                    DaytimerEntry {
                        mode: 0,
                        from: 360,
                        to: 480,
                        need_activate: 0,
                        value: 21.5,
                    },
                    DaytimerEntry {
                        mode: 0,
                        from: 1020,
                        to: 1320,
                        need_activate: 0,
                        value: 22.0,
                    },
                ],
            })
            .collect();
        let mut buf = Vec::new();
        encode_daytimer_events(&events, &mut buf);
        out.push(Action::Binary(
            MessageKind::DaytimerStates,
            Bytes::from(buf),
        ));
    }

    if !s.catalogue.weather.is_empty() {
        let last_update = Shared::unix_now().saturating_sub(LOXONE_EPOCH_UNIX) as u32;
        let events: Vec<WeatherEvent> = s
            .catalogue
            .weather
            .iter()
            .map(|(name, uuid)| {
                let hours = if name == "forecast" { 24 } else { 1 };
                WeatherEvent {
                    uuid: *uuid,
                    last_update,
                    entries: (0..hours)
                        .map(|h| WeatherEntry {
                            // \[UNSURE\] unit: Loxone-epoch seconds
                            timestamp: (last_update as i64 + h * 3600).min(i32::MAX as i64) as i32,
                            weather_type: 2,
                            wind_direction: 180,
                            solar_radiation: 300,
                            relative_humidity: 60,
                            temperature: 12.0 + h as f64 * 0.2,
                            perceived_temperature: 11.0,
                            dew_point: 5.0,
                            precipitation: 0.0,
                            wind_speed: 10.0,
                            barometric_pressure: 1013.0,
                        })
                        .collect(),
                }
            })
            .collect();
        let mut buf = Vec::new();
        encode_weather_events(&events, &mut buf);
        out.push(Action::Binary(MessageKind::WeatherStates, Bytes::from(buf)));
    }
    out
}

/// Writes one protocol message: (estimated header,) exact header, payload.
async fn send_message<S>(
    ws: &mut WebSocketStream<S>,
    shared: &Shared,
    kind: MessageKind,
    payload: Option<(bool, Bytes)>,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (estimated, split) = {
        let r = shared.runtime.lock();
        (r.estimated, r.split_frames)
    };
    let len = payload.as_ref().map_or(0, |(_, p)| p.len());
    let len32 = u32::try_from(len).unwrap_or(u32::MAX);
    if let (EstimatedFlag::Bit(bit), Some(_)) = (estimated, &payload) {
        // only a hint: round up so a client that trusts it would notice
        let est = len32.saturating_add(1023) & !1023;
        let h = Header {
            kind,
            estimated: true,
            payload_len: est.max(1024),
        };
        ws.feed(Message::Binary(Bytes::copy_from_slice(&h.encode(bit))))
            .await?;
    }
    let h = Header {
        kind,
        estimated: false,
        payload_len: len32,
    };
    ws.feed(Message::Binary(Bytes::copy_from_slice(&h.encode(0x80))))
        .await?;
    if let Some((is_text, payload)) = payload {
        match split {
            Some(n) if n > 0 && payload.len() > n => {
                let mut first = true;
                let mut rest = payload;
                while !rest.is_empty() {
                    let chunk = rest.split_to(n.min(rest.len()));
                    let opcode = if !first {
                        OpCode::Data(Data::Continue)
                    } else if is_text {
                        OpCode::Data(Data::Text)
                    } else {
                        OpCode::Data(Data::Binary)
                    };
                    first = false;
                    ws.feed(Message::Frame(Frame::message(
                        chunk,
                        opcode,
                        rest.is_empty(),
                    )))
                    .await?;
                }
            }
            _ => {
                let msg = if is_text {
                    match String::from_utf8(payload.to_vec()) {
                        Ok(s) => Message::Text(s.into()),
                        // firmware sends such text in a TEXT frame all the same
                        // (loxone-protocol.md §2.2), which strict clients refuse
                        Err(_) => {
                            Message::Frame(Frame::message(payload, OpCode::Data(Data::Text), true))
                        }
                    }
                } else {
                    Message::Binary(payload)
                };
                ws.feed(msg).await?;
            }
        }
    }
    ws.flush().await
}

async fn close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    };
    let _ = ws.close(Some(frame)).await;
    // wait briefly for the client's close reply
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// An exact (not estimated) binary header message announcing `len` bytes of `kind`.
fn exact_header(kind: MessageKind, len: u32) -> Message {
    Message::Binary(Bytes::copy_from_slice(
        &Header {
            kind,
            estimated: false,
            payload_len: len,
        }
        .encode(0x80),
    ))
}

/// Sends a header announcing an 8 MiB value table and nothing after it; reads (and drops)
/// whatever the client sends until it goes away.
async fn hang_mid_message<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let header = exact_header(MessageKind::ValueStates, 8 * 1024 * 1024);
    if ws.send(header).await.is_err() {
        return;
    }
    while let Some(Ok(_)) = ws.next().await {}
}

/// Never reads again and sends pings (500 every 10 ms, 125-byte payloads) until the socket
/// fails: the client's pongs pile up in its buffers.
async fn deaf_ping_flood<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let payload = Bytes::from_static(&[0x5a; 125]);
    loop {
        for _ in 0..500 {
            if ws.feed(Message::Ping(payload.clone())).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Executes actions; returns false when the socket was closed.
async fn execute<S>(ws: &mut WebSocketStream<S>, shared: &Shared, actions: Vec<Action>) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for a in actions {
        let r = match a {
            Action::Text(t) => {
                send_message(ws, shared, MessageKind::Text, Some((true, Bytes::from(t)))).await
            }
            Action::Binary(kind, p) => {
                if kind == MessageKind::ValueStates {
                    // counted by initial_tables / run
                }
                send_message(ws, shared, kind, Some((false, p))).await
            }
            Action::HeaderOnly(kind) => send_message(ws, shared, kind, None).await,
            Action::Close(code, reason) => {
                close(ws, code, &reason).await;
                return false;
            }
        };
        if r.is_err() {
            return false;
        }
    }
    true
}

async fn malformed<S>(ws: &mut WebSocketStream<S>, shared: &Shared, kind: MalformedKind) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let msgs: Vec<Message> = match kind {
        MalformedKind::TruncatedValueTable => {
            let p = vec![0xAB; 30];
            vec![
                exact_header(MessageKind::ValueStates, 30),
                Message::Binary(Bytes::from(p)),
            ]
        }
        MalformedKind::TruncatedTextTable => {
            let mut p = vec![0u8; 32];
            p.extend_from_slice(&1000u32.to_le_bytes());
            p.extend_from_slice(b"abcd");
            vec![
                exact_header(MessageKind::TextStates, p.len() as u32),
                Message::Binary(Bytes::from(p)),
            ]
        }
        MalformedKind::NonUtf8Text => {
            let p =
                b"{\"LL\":{\"control\":\"x\",\"value\":\"\xff\xfe\",\"Code\":\"200\"}}".to_vec();
            // a TEXT frame, as firmware sends it (loxone-protocol.md §2.2)
            vec![
                exact_header(MessageKind::Text, p.len() as u32),
                Message::Frame(Frame::message(
                    Bytes::from(p),
                    OpCode::Data(Data::Text),
                    true,
                )),
            ]
        }
        MalformedKind::OversizedHeader => {
            vec![exact_header(MessageKind::ValueStates, 200 * 1024 * 1024)]
        }
        MalformedKind::GarbageHeader => {
            vec![Message::Binary(Bytes::from_static(&[
                0x42, 0x02, 0, 0, 24, 0, 0, 0,
            ]))]
        }
        MalformedKind::UnsolicitedBinaryFile => {
            let mut p = vec![0x1f, 0x8b, 0x08, 0x00];
            p.extend_from_slice(&[0u8; 60]);
            vec![
                exact_header(MessageKind::BinaryFile, p.len() as u32),
                Message::Binary(Bytes::from(p)),
            ]
        }
        MalformedKind::PayloadWithoutHeader => {
            vec![Message::Text(
                "{\"LL\":{\"control\":\"dev/sps/none\",\"value\":\"1\",\"Code\":\"200\"}}".into(),
            )]
        }
    };
    let _ = shared;
    for m in msgs {
        if ws.feed(m).await.is_err() {
            return false;
        }
    }
    ws.flush().await.is_ok()
}

async fn recv_event(
    rx: &mut Option<broadcast::Receiver<Arc<Outgoing>>>,
) -> Result<Arc<Outgoing>, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Serves one upgraded WebSocket until it closes.
pub async fn run<S>(
    mut ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    tls: bool,
    cancel: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Counters::inc(&shared.counters.ws_connections);
    if tls {
        Counters::inc(&shared.counters.wss_connections);
    }
    shared
        .counters
        .ws_active
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    struct Active<'a>(&'a Shared);
    impl Drop for Active<'_> {
        fn drop(&mut self) {
            self.0
                .counters
                .ws_active
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _active = Active(&shared);

    let opened = Instant::now();
    let blocked = shared.auth.lock().blocked_for(opened);
    if let Some(left) = blocked {
        Counters::inc(&shared.counters.blocked_connections);
        // LXC parses the remaining seconds from the last "(…)" of the reason
        close(
            &mut ws,
            4003,
            &format!("Too many failed login attempts ({})", left.as_secs().max(1)),
        )
        .await;
        return;
    }
    let mut faults = shared.faults.subscribe();
    let mut session = Session::new(shared.clone(), tls);
    let mut last_rx = opened;
    let auth_deadline = opened + shared.opts.auth_timeout;
    loop {
        let now = Instant::now();
        let auth_at = (session.phase != Phase::Authenticated).then_some(auth_deadline);
        let token_at = match session.token_expiry(now) {
            Some(Ok(t)) => Some(t),
            Some(Err(())) => {
                close(&mut ws, 1000, "token expired").await;
                return;
            }
            None => None,
        };
        let idle_at = last_rx + shared.opts.idle_timeout;
        tokio::select! {
            _ = cancel.cancelled() => {
                close(&mut ws, 1001, "shutdown").await;
                return;
            }
            msg = ws.next() => {
                last_rx = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                };
                let actions = session.handle(&text, last_rx);
                if !execute(&mut ws, &shared, actions).await {
                    return;
                }
            }
            ev = recv_event(&mut session.events) => match ev {
                Ok(out) => {
                    shared.counters.value_events_sent.fetch_add(out.entries, std::sync::atomic::Ordering::Relaxed);
                    if send_message(&mut ws, &shared, out.kind, Some((false, out.payload.clone()))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => session.events = None,
            },
            f = faults.recv() => match f {
                Ok(Fault::OutOfService) => {
                    let _ = send_message(&mut ws, &shared, MessageKind::OutOfService, None).await;
                    close(&mut ws, 1001, "out of service").await;
                    return;
                }
                Ok(Fault::Close(code)) => {
                    close(&mut ws, code, "closed by simulator").await;
                    return;
                }
                Ok(Fault::TokensChanged) => continue, // re-checked at the top of the loop
                Ok(Fault::HangMidMessage) => {
                    hang_mid_message(&mut ws).await;
                    return;
                }
                Ok(Fault::DeafPingFlood) => {
                    deaf_ping_flood(&mut ws).await;
                    return;
                }
                Ok(Fault::Malformed(kind)) => {
                    if !malformed(&mut ws, &shared, kind).await {
                        return;
                    }
                }
                Err(_) => continue,
            },
            _ = sleep_opt(auth_at) => {
                session.answer = AnswerForm::JSON;
                session.answer_to("Auth");
                let a = session.ll("Auth", 420, json!("Authentication timeout"));
                let _ = execute(&mut ws, &shared, vec![a]).await;
                close(&mut ws, 1000, "authentication timeout").await;
                return;
            }
            _ = sleep_opt(token_at) => continue, // expired: closed at the top of the loop
            _ = sleep_until(idle_at) => {
                close(&mut ws, 1000, "idle timeout").await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loxone::envelope::{parse_ll, LlResponse};
    use crate::loxone::events::{
        parse_daytimer_events, parse_text_events, parse_weather_events, value_events,
    };
    use crate::loxone::simulator::options::SimulatorOptions;
    use std::path::PathBuf;

    async fn shared_with(f: impl FnOnce(&mut SimulatorOptions)) -> Arc<Shared> {
        let mut o = SimulatorOptions {
            rsa_key: Some(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/support/sim/test_rsa_1024.pem"),
            ),
            user: "admin".into(),
            password: "pw".into(),
            ..SimulatorOptions::default()
        };
        f(&mut o);
        super::super::build_shared(o, false).await.unwrap()
    }

    struct Client {
        sk: SessionKey,
        salt: String,
    }

    impl Client {
        fn enc(&self, cmd: &str) -> String {
            crypto::encrypt_command(&self.sk, &SaltPrefix::Salt(self.salt.clone()), cmd, false)
        }
    }

    fn text(a: &Action) -> &str {
        match a {
            Action::Text(t) => t,
            other => panic!("expected text, got {other:?}"),
        }
    }

    fn ll(a: &Action) -> LlResponse {
        parse_ll(text(a)).unwrap()
    }

    fn keyed(s: &mut Session, shared: &Shared) -> Client {
        let sk = SessionKey::generate(&mut rand::rngs::OsRng);
        let pk = shared.rsa.to_public_key();
        let b64 = crypto::encrypt_session_key(&pk, &sk, &mut rand::rngs::OsRng).unwrap();
        let out = s.handle(&format!("jdev/sys/keyexchange/{b64}"), Instant::now());
        let r = ll(&out[0]);
        assert_eq!(r.code, 200);
        let key = crypto::aes_decrypt_b64(&sk, r.value.as_str().unwrap()).unwrap();
        assert_eq!(
            key.len(),
            80,
            "keyexchange answer is an AES-encrypted one-time key"
        );
        assert_eq!(s.phase(), Phase::Keyed);
        Client {
            sk,
            salt: "a1b2".into(),
        }
    }

    /// `jdev/sys/<verb>/<hash>/admin/<tail>`, encrypted, with the credential hash of
    /// `password` over a fresh getkey2 key.
    fn token_command(
        s: &mut Session,
        c: &Client,
        password: &str,
        verb: &str,
        tail: &str,
    ) -> String {
        let out = s.handle(&c.enc("jdev/sys/getkey2/admin"), Instant::now());
        let v = ll(&out[0]).value;
        let alg = crate::loxone::crypto::HashAlg::from_loxone(v["hashAlg"].as_str());
        let pw = crypto::password_hash(alg, password, v["salt"].as_str().unwrap());
        let h = crypto::credential_hash(alg, v["key"].as_str().unwrap(), "admin", &pw).unwrap();
        c.enc(&format!("jdev/sys/{verb}/{h}/admin/{tail}"))
    }

    fn login(s: &mut Session, c: &Client, password: &str, verb: &str) -> LlResponse {
        let tail = "4/098802e1-02b4-603c-ffffeee000d80cfd/test%20client";
        let cmd = token_command(s, c, password, verb, tail);
        ll(&s.handle(&cmd, Instant::now())[0])
    }

    #[tokio::test]
    async fn keepalive_is_a_bare_header_and_pre_auth_commands_get_400() {
        let shared = shared_with(|_| {}).await;
        let mut s = Session::new(shared, false);
        assert_eq!(
            s.handle("keepalive", Instant::now()),
            vec![Action::HeaderOnly(MessageKind::Keepalive)]
        );
        for cmd in [
            "jdev/sps/enablebinstatusupdate",
            "data/LoxAPP3.json",
            "jdev/sps/LoxAPPversion3",
        ] {
            let r = ll(&s.handle(cmd, Instant::now())[0]);
            assert_eq!(r.code, 400, "{cmd}");
        }
        // getkey is allowed before auth
        let r = ll(&s.handle("jdev/sys/getkey", Instant::now())[0]);
        assert_eq!(r.code, 200);
        assert_eq!(r.control, "jdev/sys/getkey");
    }

    #[tokio::test]
    async fn jwt_login_with_key_exchange_then_commands() {
        let shared = shared_with(|_| {}).await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        // second keyexchange rejected
        let again = s.handle("jdev/sys/keyexchange/AAAA", Instant::now());
        assert_eq!(ll(&again[0]).code, 400);
        // plain getjwt → 400 on ws://
        let r = ll(&s.handle("jdev/sys/getjwt/00/admin/4/x/y", Instant::now())[0]);
        assert_eq!(r.code, 400);
        let r = login(&mut s, &c, "pw", "getjwt");
        assert_eq!(r.code, 200, "{r:?}");
        assert!(
            r.control.starts_with("jdev/sys/getjwt/"),
            "decrypted echo: {}",
            r.control
        );
        assert_eq!(r.value["token"].as_str().unwrap().split('.').count(), 3);
        assert!(r.value["validUntil"].as_u64().unwrap() > 500_000_000);
        assert_eq!(s.phase(), Phase::Authenticated);
        let r = ll(&s.handle("jdev/sps/LoxAPPversion3", Instant::now())[0]);
        assert_eq!(r.control, "dev/sps/LoxAPPversion3");
        assert_eq!(r.value.as_str().unwrap(), shared.structure().last_modified);
        let out = s.handle("data/LoxAPP3.json", Instant::now());
        assert_eq!(text(&out[0]), &*shared.structure().text);
        assert_eq!(shared.counters.snapshot().auth_ok, 1);
    }

    #[tokio::test]
    async fn wrong_password_gets_401_with_last_edit() {
        let shared = shared_with(|o| o.hash_alg = super::super::HashAlgArg::Sha1).await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        let r = login(&mut s, &c, "nope", "gettoken");
        assert_eq!(r.code, 401);
        assert_eq!(r.value["unix"].as_u64(), Some(LOXONE_EPOCH_UNIX));
        assert!(r.value["lastEdit"].is_string());
        assert_ne!(s.phase(), Phase::Authenticated);
        assert_eq!(shared.counters.snapshot().auth_failures, 1);
        // legacy gettoken works with the right password, 40 hex token
        let r = login(&mut s, &c, "pw", "gettoken");
        assert_eq!(r.code, 200);
        assert_eq!(r.value["token"].as_str().unwrap().len(), 40);
    }

    #[tokio::test]
    async fn salt_rules_strict_and_lax() {
        let shared = shared_with(|_| {}).await;
        let mut s = Session::new(shared.clone(), false);
        let mut c = keyed(&mut s, &shared);
        let code = |s: &mut Session, w: String| ll(&s.handle(&w, Instant::now())[0]).code;
        assert_eq!(code(&mut s, c.enc("jdev/sys/getkey")), 200);
        let other = Client {
            sk: c.sk.clone(),
            salt: "ffff".into(),
        };
        assert_eq!(
            code(&mut s, other.enc("jdev/sys/getkey")),
            401,
            "salt change without nextSalt"
        );
        let rotate = |prev: &str, next: &str| {
            crypto::encrypt_command(
                &c.sk,
                &SaltPrefix::NextSalt {
                    previous: prev.into(),
                    next: next.into(),
                },
                "jdev/sys/getkey",
                false,
            )
        };
        assert_eq!(code(&mut s, rotate("wrong", "beef")), 401);
        assert_eq!(code(&mut s, rotate("a1b2", "beef")), 200);
        c.salt = "beef".into();
        assert_eq!(code(&mut s, c.enc("jdev/sys/getkey")), 200);
        assert_eq!(code(&mut s, other.enc("jdev/sys/getkey")), 401);
        // garbage cipher
        assert_eq!(code(&mut s, "jdev/sys/enc/AAAA".into()), 401);

        let lax = shared_with(|o| o.salt_check = SaltCheck::Lax).await;
        let mut s = Session::new(lax.clone(), false);
        let c = keyed(&mut s, &lax);
        assert_eq!(code(&mut s, c.enc("jdev/sys/getkey")), 200);
        assert_eq!(
            code(&mut s, other_with(&c, "0000").enc("jdev/sys/getkey")),
            200
        );
    }

    fn other_with(c: &Client, salt: &str) -> Client {
        Client {
            sk: c.sk.clone(),
            salt: salt.into(),
        }
    }

    #[tokio::test]
    async fn fenc_encrypts_the_answer_and_echo_cipher_is_configurable() {
        let shared = shared_with(|o| {
            o.echo_cipher = true;
            o.code_style = CodeStyleArg::LowerNumber;
        })
        .await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        let wire = crypto::encrypt_command(
            &c.sk,
            &SaltPrefix::Salt(c.salt.clone()),
            "jdev/sys/getkey2/admin",
            true,
        );
        let out = s.handle(&wire, Instant::now());
        let plain = crypto::aes_decrypt_b64(&c.sk, text(&out[0])).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        assert!(plain.contains("\"code\": 200"), "{plain}");
        let r = parse_ll(&plain).unwrap();
        assert_eq!(
            r.control,
            percent_encoding::percent_decode_str(&wire)
                .decode_utf8()
                .unwrap(),
            "URI-decoded cipher form echoed"
        );
        assert!(r.control.starts_with("jdev/sys/fenc/"));
        assert!(r.value["salt"].is_string());
    }

    #[tokio::test]
    async fn enablebinstatusupdate_sends_all_four_tables_then_io_changes_values() {
        let shared = shared_with(|_| {}).await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        assert_eq!(login(&mut s, &c, "pw", "getjwt").code, 200);
        let out = s.handle("jdev/sps/enablebinstatusupdate", Instant::now());
        assert_eq!(ll(&out[0]).control, "dev/sps/enablebinstatusupdate");
        let kinds: Vec<MessageKind> = out[1..]
            .iter()
            .map(|a| match a {
                Action::Binary(k, _) => *k,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                MessageKind::ValueStates,
                MessageKind::TextStates,
                MessageKind::DaytimerStates,
                MessageKind::WeatherStates
            ]
        );
        let payload = |i: usize| match &out[i] {
            Action::Binary(_, p) => p.clone(),
            _ => unreachable!(),
        };
        let cat = shared.structure().catalogue.clone();
        assert_eq!(value_events(&payload(1)).unwrap().count(), cat.values.len());
        assert_eq!(
            parse_text_events(&payload(2)).unwrap().len(),
            cat.texts.len()
        );
        let dt = parse_daytimer_events(&payload(3)).unwrap();
        assert_eq!(dt.len(), cat.daytimers.len());
        assert_eq!(dt[0].entries.len(), 2);
        let w = parse_weather_events(&payload(4)).unwrap();
        assert_eq!(w.len(), 2);

        // a switch command updates the state and broadcasts a value event
        let mut rx = shared.events.subscribe();
        let (uuid_action, state) = cat
            .io_targets
            .iter()
            .find(|(_, t)| t.control_type == "Switch" && !t.value_states.is_empty())
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.value_states
                        .iter()
                        .find(|(n, _)| n == "active")
                        .unwrap()
                        .1,
                )
            })
            .expect("a Switch in the fixture");
        let before = shared.values.lock().value(&state).unwrap();
        let cmd = if before >= 0.5 { "off" } else { "on" };
        let out = s.handle(
            &c.enc(&format!("jdev/sps/io/{uuid_action}/{cmd}")),
            Instant::now(),
        );
        let r = ll(&out[0]);
        assert_eq!(r.control, format!("dev/sps/io/{uuid_action}/{cmd}"));
        let after = shared.values.lock().value(&state).unwrap();
        assert_eq!(after, if before >= 0.5 { 0.0 } else { 1.0 });
        let ev = rx.try_recv().unwrap();
        let evs: Vec<_> = value_events(&ev.payload).unwrap().collect();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].uuid, state);
        assert_eq!(evs[0].value, after);
        // unknown control
        let r = ll(&s.handle(
            "jdev/sps/io/00000000-0000-0000-0000000000000000/on",
            Instant::now(),
        )[0]);
        assert_eq!(r.code, 404);
    }

    #[tokio::test]
    async fn token_commands_and_killing_own_token_closes() {
        let shared = shared_with(|o| o.checktoken_invalid_code = 477).await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        let token = login(&mut s, &c, "pw", "getjwt").value["token"]
            .as_str()
            .unwrap()
            .to_string();
        let hashed = |s: &mut Session| {
            let key = ll(&s.handle(&c.enc("jdev/sys/getkey"), Instant::now())[0]).value;
            crypto::token_hash(crypto::HashAlg::Sha256, key.as_str().unwrap(), &token).unwrap()
        };
        let h = hashed(&mut s);
        let r = ll(&s.handle(
            &c.enc(&format!("jdev/sys/checktoken/{h}/admin")),
            Instant::now(),
        )[0]);
        assert_eq!(r.code, 200);
        // same key twice: consumed → 477 as configured
        let r = ll(&s.handle(
            &c.enc(&format!("jdev/sys/checktoken/{h}/admin")),
            Instant::now(),
        )[0]);
        assert_eq!(r.code, 477);
        // a second socket authenticates with the token
        let mut s2 = Session::new(shared.clone(), false);
        let c2 = keyed(&mut s2, &shared);
        let key = ll(&s2.handle(&c2.enc("jdev/sys/getkey"), Instant::now())[0]).value;
        let h2 =
            crypto::token_hash(crypto::HashAlg::Sha256, key.as_str().unwrap(), &token).unwrap();
        let r = ll(&s2.handle(
            &c2.enc(&format!("authwithtoken/{h2}/admin")),
            Instant::now(),
        )[0]);
        assert_eq!(r.code, 200, "{r:?}");
        assert_eq!(s2.phase(), Phase::Authenticated);
        // killtoken on the first socket closes it
        let h = hashed(&mut s);
        let out = s.handle(
            &c.enc(&format!("jdev/sys/killtoken/{h}/admin")),
            Instant::now(),
        );
        assert_eq!(ll(&out[0]).code, 200);
        assert!(matches!(out[1], Action::Close(1000, _)));
        assert!(shared.auth.lock().token(&token, Instant::now()).is_none());
    }

    /// A uuidAction and the value state `io_command` changes for it.
    fn io_target(shared: &Shared, control_type: &str) -> (String, LoxUuid) {
        let cat = shared.structure().catalogue.clone();
        cat.io_targets
            .iter()
            .filter(|(_, t)| t.control_type == control_type && !t.value_states.is_empty())
            .map(|(k, t)| {
                let state = ["value", "active", "position", "tempTarget", "actual"]
                    .iter()
                    .find_map(|p| t.value_states.iter().find(|(n, _)| n == p))
                    .unwrap_or(&t.value_states[0])
                    .1;
                (k.clone(), state)
            })
            .min()
            .unwrap_or_else(|| panic!("a {control_type} in the fixture"))
    }

    async fn logged_in(f: impl FnOnce(&mut SimulatorOptions)) -> (Arc<Shared>, Session, Client) {
        let shared = shared_with(f).await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        assert_eq!(login(&mut s, &c, "pw", "getjwt").code, 200);
        (shared, s, c)
    }

    #[tokio::test]
    async fn non_finite_io_values_are_refused() {
        let (shared, mut s, c) = logged_in(|_| {}).await;
        let (jalousie, position) = io_target(&shared, "Jalousie");
        let (switch, _) = io_target(&shared, "Switch");
        let before = shared.values.lock().value(&position).unwrap();
        for cmd in [
            format!("jdev/sps/io/{jalousie}/manualPosition/NaN"),
            format!("jdev/sps/io/{jalousie}/manualPosition/inf"),
            format!("jdev/sps/io/{jalousie}/manualPosition/-Infinity"),
            format!("jdev/sps/io/{jalousie}/manualPosition/"),
            format!("jdev/sps/io/{jalousie}/manualPosition/abc"),
            format!("jdev/sps/io/{switch}/NaN"),
            format!("jdev/sps/io/{switch}/inf"),
        ] {
            let r = ll(&s.handle(&c.enc(&cmd), Instant::now())[0]);
            assert_eq!(r.code, 400, "{cmd}: {r:?}");
        }
        assert_eq!(shared.values.lock().value(&position), Some(before));
        // a finite position still works
        let r = ll(&s.handle(
            &c.enc(&format!("jdev/sps/io/{jalousie}/manualPosition/40")),
            Instant::now(),
        )[0]);
        assert_eq!(r.code, 200);
        assert_eq!(shared.values.lock().value(&position), Some(0.4));
        // the generator keeps stepping every state without panicking
        let mut out = Vec::new();
        shared.values.lock().next_batch(10_000, &mut out);
        assert!(out.iter().all(|(_, v)| v.is_finite()));
    }

    #[tokio::test]
    async fn dev_commands_are_answered_in_xml() {
        let (shared, mut s, c) = logged_in(|_| {}).await;
        let lm = shared.structure().last_modified.clone();
        let out = s.handle("dev/sps/LoxAPPversion3", Instant::now());
        let t = text(&out[0]);
        assert!(parse_ll(t).is_err(), "not JSON: {t}");
        assert_eq!(
            t,
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<LL control=\"dev/sps/LoxAPPversion3\" value=\"{lm}\" Code=\"200\"/>"
            )
        );
        // encrypted too, and errors; values are attribute-escaped
        let out = s.handle(&c.enc("dev/sps/nothing<&\">"), Instant::now());
        assert_eq!(
            text(&out[0]),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<LL control=\"dev/sps/nothing&lt;&amp;&quot;&gt;\" value=\"File not found!\" Code=\"404\"/>"
        );
        // jdev/ stays JSON
        let r = ll(&s.handle("jdev/sps/LoxAPPversion3", Instant::now())[0]);
        assert_eq!((r.code, r.value.as_str()), (200, Some(lm.as_str())));
    }

    #[tokio::test]
    async fn enc_cipher_must_be_padded_and_whole_raw_slash_or_not() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let shared = shared_with(|_| {}).await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        let code = |s: &mut Session, w: &str| ll(&s.handle(w, Instant::now())[0]).code;
        let encoded = |s: &mut Session, cipher: &str| {
            code(
                s,
                &format!("jdev/sys/enc/{}", crypto::uri_component_encode(cipher)),
            )
        };
        // the well-formed command first (and it fixes the salt)
        assert_eq!(code(&mut s, &c.enc("jdev/sys/getkey")), 200);
        // a raw '/' in the cipher, as PyLoxone and pyloxone-api send it: accepted, and the
        // same cipher encoded too
        let with_slash = (0..200)
            .map(|i| {
                crypto::aes_encrypt_b64(&c.sk, format!("salt/a1b2/jdev/sys/getkey\0{i}").as_bytes())
            })
            .find(|b| b.contains('/'))
            .expect("some cipher contains '/'");
        assert_eq!(code(&mut s, &format!("jdev/sys/enc/{with_slash}")), 200);
        assert_eq!(encoded(&mut s, &with_slash), 200);
        // a raw '/' does not rescue a cipher cut short: the part before it alone is refused
        let before_slash = with_slash.split('/').next().unwrap_or_default();
        assert_eq!(code(&mut s, &format!("jdev/sys/enc/{before_slash}")), 401);
        // '=' padding missing: 26 plaintext bytes → 32 cipher bytes → 44 chars with one '='
        let padded = crypto::aes_encrypt_b64(&c.sk, b"salt/a1b2/jdev/sys/getkey\0");
        assert!(padded.ends_with('=') && !padded.ends_with("=="), "{padded}");
        let unpadded = padded.trim_end_matches('=');
        assert_eq!(encoded(&mut s, unpadded), 401);
        // ciphertext cut short of a block: the first blocks alone would still decrypt to the
        // whole command
        let mut plain = b"salt/a1b2/jdev/sys/getkey\0".to_vec();
        plain.resize(48, 0);
        let whole = b64.decode(crypto::aes_encrypt_b64(&c.sk, &plain)).unwrap();
        assert_eq!(whole.len(), 48);
        let cut = b64.encode(&whole[..40]);
        assert_eq!(encoded(&mut s, &cut), 401);
        let full = b64.encode(&whole);
        assert_eq!(encoded(&mut s, &full), 200);
    }

    #[tokio::test]
    async fn malformed_getjwt_is_refused() {
        let shared = shared_with(|_| {}).await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        let uuid = "098802e1-02b4-603c-ffffeee000d80cfd";
        for tail in [
            format!("3/{uuid}/test"),
            format!("0/{uuid}/test"),
            format!("x/{uuid}/test"),
            format!("4/{uuid}"),
            format!("4/{uuid}/"),
            "4".to_string(),
            "4//test".to_string(),
            format!("4/{uuid}/test/extra"),
        ] {
            let cmd = token_command(&mut s, &c, "pw", "getjwt", &tail);
            let r = ll(&s.handle(&cmd, Instant::now())[0]);
            assert_eq!(r.code, 400, "getjwt/<hash>/admin/{tail}: {r:?}");
            assert_ne!(s.phase(), Phase::Authenticated);
        }
        // the right form with permission 2 logs in
        let cmd = token_command(&mut s, &c, "pw", "getjwt", &format!("2/{uuid}/test"));
        let r = ll(&s.handle(&cmd, Instant::now())[0]);
        assert_eq!(r.code, 200, "{r:?}");
        assert_eq!(shared.counters.snapshot().auth_failures, 0);
    }

    #[tokio::test]
    async fn enc_wrapped_keepalive_is_a_bare_header() {
        let shared = shared_with(|_| {}).await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        // before authentication, enc-wrapped (doc §8)
        assert_eq!(
            s.handle(&c.enc("keepalive"), Instant::now()),
            vec![Action::HeaderOnly(MessageKind::Keepalive)]
        );
        assert_eq!(login(&mut s, &c, "pw", "getjwt").code, 200);
        assert_eq!(
            s.handle(&c.enc("keepalive"), Instant::now()),
            vec![Action::HeaderOnly(MessageKind::Keepalive)]
        );
        assert_eq!(shared.counters.snapshot().keepalives, 2);
    }

    #[tokio::test]
    async fn default_code_style_mixes_like_real_units() {
        let shared = shared_with(|_| {}).await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        let raw = |s: &mut Session, w: &str| text(&s.handle(w, Instant::now())[0]).to_string();
        // getkey2: `"code": 200`, a number (LJ capture)
        let t = raw(&mut s, &c.enc("jdev/sys/getkey2/admin"));
        assert!(t.ends_with("\"code\": 200}}"), "{t}");
        // other token/system answers: `"code": "…"` (node-lox-ws-api 401 capture)
        let t = raw(&mut s, &c.enc("jdev/sys/getkey"));
        assert!(t.ends_with("\"code\": \"200\"}}"), "{t}");
        assert_eq!(login(&mut s, &c, "nope", "getjwt").code, 401);
        let pw_fail = {
            let tail = "4/098802e1-02b4-603c-ffffeee000d80cfd/x";
            let cmd = token_command(&mut s, &c, "nope", "getjwt", tail);
            raw(&mut s, &cmd)
        };
        assert!(pw_fail.ends_with("\"code\": \"401\"}}"), "{pw_fail}");
        assert_eq!(login(&mut s, &c, "pw", "getjwt").code, 200);
        // everything else: `"Code": "200"` (official examples)
        let t = raw(&mut s, "jdev/sps/LoxAPPversion3");
        assert!(t.ends_with("\"Code\": \"200\"}}"), "{t}");
        // an explicit style still applies to every answer
        let shared = shared_with(|o| o.code_style = CodeStyleArg::UpperNumber).await;
        let mut s = Session::new(shared.clone(), false);
        let c = keyed(&mut s, &shared);
        let t = raw(&mut s, &c.enc("jdev/sys/getkey2/admin"));
        assert!(t.ends_with("\"Code\": 200}}"), "{t}");
    }
}
