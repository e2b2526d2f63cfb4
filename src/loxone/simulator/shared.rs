//! State shared by every connection of one simulated Miniserver: configuration, the served
//! structure, current state values, the auth store, runtime fault switches, the event and
//! fault broadcast channels and the counters tests read.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rsa::RsaPrivateKey;
use serde_json::Value as Json;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Bytes;

use super::auth::AuthStore;
use super::catalogue::{initial_text, Catalogue};
use super::generator::Generator;
use super::options::{EstimatedFlag, SimulatorOptions};
use super::SimError;
use crate::loxone::events::{encode_text_events, encode_value_event, TextEvent, ValueEvent};
use crate::loxone::header::MessageKind;
use crate::loxone::structure::{parse_structure, Structure};
use crate::loxone::uuid::LoxUuid;

/// The structure file the simulator serves, in the bytes it serves.
#[derive(Debug)]
pub struct StructureData {
    /// The JSON text exactly as served (original bytes, only `lastModified` rewritten).
    pub text: Arc<str>,
    /// Its `lastModified`.
    pub last_modified: String,
    /// Parsed model.
    pub structure: Structure,
    /// States by table.
    pub catalogue: Catalogue,
}

impl StructureData {
    /// Parses and catalogues a structure file.
    pub fn load(bytes: &[u8]) -> Result<Self, SimError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| SimError::Structure("structure file is not UTF-8".into()))?;
        let structure = parse_structure(bytes).map_err(|e| SimError::Structure(e.to_string()))?;
        let raw: Json =
            serde_json::from_slice(bytes).map_err(|e| SimError::Structure(e.to_string()))?;
        let catalogue = Catalogue::build(&structure, &raw);
        Ok(StructureData {
            text: Arc::from(text),
            last_modified: structure.last_modified.clone(),
            structure,
            catalogue,
        })
    }

    /// The same structure with a new `lastModified` (textual replacement keeps every other
    /// byte identical).
    pub fn with_last_modified(&self, new: &str) -> Self {
        let text = replace_last_modified(&self.text, new);
        let mut structure = self.structure.clone();
        structure.last_modified = new.to_string();
        StructureData {
            text: Arc::from(text.as_str()),
            last_modified: new.to_string(),
            structure,
            catalogue: self.catalogue.clone(),
        }
    }
}

fn replace_last_modified(text: &str, new: &str) -> String {
    let Some(k) = text.find("\"lastModified\"") else {
        return text.to_string();
    };
    let after = k + "\"lastModified\"".len();
    let rest = &text[after..];
    let Some(q1) = rest.find('"') else {
        return text.to_string();
    };
    let Some(q2) = rest[q1 + 1..].find('"') else {
        return text.to_string();
    };
    let start = after + q1 + 1;
    let end = start + q2;
    format!("{}{}{}", &text[..start], new, &text[end..])
}

/// What one broadcast event carries: a header kind and its payload.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Message kind.
    pub kind: MessageKind,
    /// Payload bytes.
    pub payload: Bytes,
    /// Number of entries (value events) in the payload, for counters.
    pub entries: u64,
}

/// Broken payloads the control API can inject (to exercise client robustness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedKind {
    /// A value table whose length is not a multiple of 24.
    TruncatedValueTable,
    /// A text table whose text length points past the end.
    TruncatedTextTable,
    /// A type-0 header followed by a BINARY frame that is not UTF-8 (survivable clients
    /// treat it as undecodable text).
    NonUtf8Text,
    /// A header announcing more than 64 MiB (must be refused before allocation).
    OversizedHeader,
    /// An 8-byte binary message that does not start with 0x03.
    GarbageHeader,
    /// An unsolicited type-1 (binary file) payload starting with gzip magic (PYLOX #441).
    UnsolicitedBinaryFile,
    /// A payload message without any header before it.
    PayloadWithoutHeader,
}

impl MalformedKind {
    /// Parses the kebab-case name used by the HTTP control API.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "truncated-value-table" => Self::TruncatedValueTable,
            "truncated-text-table" => Self::TruncatedTextTable,
            "non-utf8-text" => Self::NonUtf8Text,
            "oversized-header" => Self::OversizedHeader,
            "garbage-header" => Self::GarbageHeader,
            "unsolicited-binary-file" => Self::UnsolicitedBinaryFile,
            "payload-without-header" => Self::PayloadWithoutHeader,
            _ => return None,
        })
    }
}

/// A fault delivered to every open WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Send an out-of-service header, then close.
    OutOfService,
    /// Close with this code.
    Close(u16),
    /// Tokens were expired: sockets authenticated by a token close with 1000.
    TokensChanged,
    /// Send a malformed message.
    Malformed(MalformedKind),
    /// Announce a big value table, then send nothing more (a server hung mid-message).
    HangMidMessage,
    /// Stop reading the socket and flood it with pings (a server whose receive side hung).
    DeafPingFlood,
}

/// Switches changed at run time by the control API.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Estimated headers before every payload.
    pub estimated: EstimatedFlag,
    /// Split payloads larger than this into continuation frames.
    pub split_frames: Option<usize>,
    /// Generator rate (events/s).
    pub rate: f64,
    /// Reboot: TCP connections are dropped until then.
    pub down_until: Option<Instant>,
    /// Reboot: HTTP answers 503 until then.
    pub unavailable_until: Option<Instant>,
}

/// Counters for tests and `/sim/stats`.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) tcp_connections: AtomicU64,
    pub(crate) http_requests: AtomicU64,
    pub(crate) ws_connections: AtomicU64,
    pub(crate) wss_connections: AtomicU64,
    pub(crate) ws_active: AtomicU64,
    pub(crate) auth_ok: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) commands: AtomicU64,
    pub(crate) encrypted_commands: AtomicU64,
    pub(crate) keepalives: AtomicU64,
    pub(crate) value_events_sent: AtomicU64,
    pub(crate) blocked_connections: AtomicU64,
    pub(crate) refused_connections: AtomicU64,
    pub(crate) tokens_killed: AtomicU64,
    pub(crate) tokens_refreshed: AtomicU64,
    pub(crate) event_slots_in_use: AtomicU64,
    pub(crate) event_slots_refused: AtomicU64,
    /// When the latest failed logins happened, oldest first ([`Counters::record_auth_failure`]).
    auth_failure_times: Mutex<VecDeque<Instant>>,
}

/// How many failed-login times [`Counters`] keeps (the latest): bounded for a simulator
/// that runs for days, plenty for a test.
pub const AUTH_FAILURE_TIMES_KEPT: usize = 1024;

/// A snapshot of the simulator's internal counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimCounters {
    /// TCP connections accepted (HTTP and WebSocket).
    pub tcp_connections: u64,
    /// HTTP requests served (including WebSocket upgrades).
    pub http_requests: u64,
    /// WebSocket connections opened.
    pub ws_connections: u64,
    /// Of those, over TLS (wss://).
    pub wss_connections: u64,
    /// WebSocket connections open now.
    pub ws_active: u64,
    /// Successful logins (getjwt, gettoken, authwithtoken).
    pub auth_ok: u64,
    /// Failed logins.
    pub auth_failures: u64,
    /// WebSocket commands received (keepalive excluded).
    pub commands: u64,
    /// Of those, enc/fenc wrapped.
    pub encrypted_commands: u64,
    /// Keepalives received.
    pub keepalives: u64,
    /// Value-event entries sent over all sockets.
    pub value_events_sent: u64,
    /// WebSockets closed with 4003 because logins were blocked.
    pub blocked_connections: u64,
    /// TCP connections dropped during a reboot.
    pub refused_connections: u64,
    /// Valid tokens revoked with `killtoken`.
    pub tokens_killed: u64,
    /// Tokens renewed with `refreshjwt` or `refreshtoken`.
    pub tokens_refreshed: u64,
    /// Status-update slots held now (sockets with `enablebinstatusupdate` on).
    pub event_slots_in_use: u64,
    /// WebSockets closed with 4008 because no status-update slot was free.
    pub event_slots_refused: u64,
}

impl Counters {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed login and notes when it happened.
    pub(crate) fn record_auth_failure(&self) {
        let mut times = self.auth_failure_times.lock();
        if times.len() == AUTH_FAILURE_TIMES_KEPT {
            times.pop_front();
        }
        times.push_back(Instant::now());
        // counted under the lock: a reader that sees the count sees the time too
        Self::inc(&self.auth_failures);
    }

    /// When the latest failed logins happened (at most [`AUTH_FAILURE_TIMES_KEPT`]), oldest
    /// first.
    pub fn auth_failure_times(&self) -> Vec<Instant> {
        self.auth_failure_times.lock().iter().copied().collect()
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> SimCounters {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimCounters {
            tcp_connections: r(&self.tcp_connections),
            http_requests: r(&self.http_requests),
            ws_connections: r(&self.ws_connections),
            wss_connections: r(&self.wss_connections),
            ws_active: r(&self.ws_active),
            auth_ok: r(&self.auth_ok),
            auth_failures: r(&self.auth_failures),
            commands: r(&self.commands),
            encrypted_commands: r(&self.encrypted_commands),
            keepalives: r(&self.keepalives),
            value_events_sent: r(&self.value_events_sent),
            blocked_connections: r(&self.blocked_connections),
            refused_connections: r(&self.refused_connections),
            tokens_killed: r(&self.tokens_killed),
            tokens_refreshed: r(&self.tokens_refreshed),
            event_slots_in_use: r(&self.event_slots_in_use),
            event_slots_refused: r(&self.event_slots_refused),
        }
    }
}

/// One socket's status-update slot ([`Shared::take_event_slot`]); freed on drop.
pub struct EventSlot(Arc<Shared>);

impl std::fmt::Debug for EventSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSlot")
    }
}

impl Drop for EventSlot {
    fn drop(&mut self) {
        self.0
            .counters
            .event_slots_in_use
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything one simulated Miniserver shares between connections.
pub struct Shared {
    /// Options as started.
    pub opts: SimulatorOptions,
    /// RSA key pair for the session-key exchange.
    pub rsa: Arc<RsaPrivateKey>,
    /// `getPublicKey` value.
    pub public_key_text: String,
    /// Runtime switches.
    pub runtime: Mutex<Runtime>,
    /// The served structure.
    pub structure: RwLock<Arc<StructureData>>,
    /// Current values of value states.
    pub values: Mutex<Generator>,
    /// Current texts of text states.
    pub texts: Mutex<HashMap<LoxUuid, String>>,
    /// Users, keys, tokens.
    pub auth: Mutex<AuthStore>,
    /// Event tables for every socket with status updates enabled.
    pub events: broadcast::Sender<Arc<Outgoing>>,
    /// Faults for every socket.
    pub faults: broadcast::Sender<Fault>,
    /// Counters.
    pub counters: Counters,
    /// Whether a TLS listener runs (apiKey `httpsStatus`).
    pub tls_enabled: bool,
}

impl Shared {
    /// Current unix time in seconds.
    pub fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// The current structure.
    pub fn structure(&self) -> Arc<StructureData> {
        self.structure.read().clone()
    }

    /// Builds text values for a catalogue.
    pub fn initial_texts(cat: &Catalogue) -> HashMap<LoxUuid, String> {
        let now = format_local_time(Shared::unix_now());
        cat.texts
            .iter()
            .map(|t| (t.uuid, initial_text(&t.name, &now)))
            .collect()
    }

    /// Sets value states and broadcasts one value table with the changes. Unknown UUIDs are
    /// ignored; returns how many were known.
    pub fn set_values(&self, changes: &[(LoxUuid, f64)]) -> usize {
        let known: Vec<(LoxUuid, f64)> = {
            let mut g = self.values.lock();
            changes
                .iter()
                .copied()
                .filter(|(uuid, value)| g.set(uuid, *value))
                .collect()
        };
        self.broadcast_values(&known);
        known.len()
    }

    /// Broadcasts one value table with these entries (none: nothing) without storing them:
    /// the generator's steps (already stored), and events for UUIDs the structure does not
    /// list, which clients must ignore (protocol doc §3.6).
    pub fn broadcast_values(&self, entries: &[(LoxUuid, f64)]) {
        if entries.is_empty() {
            return;
        }
        let mut payload = Vec::with_capacity(entries.len() * 24);
        for &(uuid, value) in entries {
            encode_value_event(&ValueEvent { uuid, value }, &mut payload);
        }
        let _ = self.events.send(Arc::new(Outgoing {
            kind: MessageKind::ValueStates,
            payload: Bytes::from(payload),
            entries: entries.len() as u64,
        }));
    }

    /// Takes one of the `--event-slots` status-update slots, if one is free (protocol doc
    /// §1.4). The slot is given back when the returned guard is dropped (its socket closed).
    pub fn take_event_slot(self: &Arc<Self>) -> Option<EventSlot> {
        let max = self.opts.event_slots as u64;
        self.counters
            .event_slots_in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| EventSlot(self.clone()))
    }

    /// Whether a status-update slot is free (`hasEventSlots` of `jdev/cfg/api`).
    pub fn has_free_event_slot(&self) -> bool {
        let max = self.opts.event_slots as u64;
        max == 0 || self.counters.event_slots_in_use.load(Ordering::Acquire) < max
    }

    /// Sets a text state and broadcasts a text table with it. False for a UUID that is not
    /// a text state.
    pub fn set_text(&self, uuid: LoxUuid, text: &str) -> bool {
        {
            let mut texts = self.texts.lock();
            match texts.get_mut(&uuid) {
                Some(t) => *t = text.to_string(),
                None => return false,
            }
        }
        let mut payload = Vec::new();
        encode_text_events(
            &[TextEvent {
                uuid,
                icon: LoxUuid::default(),
                text: text.into(),
            }],
            &mut payload,
        );
        let _ = self.events.send(Arc::new(Outgoing {
            kind: MessageKind::TextStates,
            payload: Bytes::from(payload),
            entries: 0,
        }));
        true
    }

    /// True while a reboot refuses TCP connections.
    pub fn is_down(&self, now: Instant) -> bool {
        self.runtime.lock().down_until.is_some_and(|u| u > now)
    }

    /// True while a reboot answers HTTP with 503.
    pub fn is_unavailable(&self, now: Instant) -> bool {
        let r = self.runtime.lock();
        r.down_until.is_some_and(|u| u > now) || r.unavailable_until.is_some_and(|u| u > now)
    }
}

/// `YYYY-MM-DD HH:MM:SS` of a unix time (UTC; the simulator's "local" time).
pub fn format_timestamp(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `miniserverTime` text form: `YYYY-MM-DD HH:MM:SS +00:00:00`.
pub fn format_local_time(unix: u64) -> String {
    format!("{} +00:00:00", format_timestamp(unix))
}

// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The bundled default structure (real Gen2 home, see tests/fixtures/structures/README.md).
pub const DEFAULT_STRUCTURE: &[u8] =
    include_bytes!("../../../tests/fixtures/structures/gen2-home-cz.json");

/// Process-wide cache of generated RSA keys by size: generation is slow in debug builds and
/// tests start many simulators.
pub fn cached_rsa_key(bits: usize) -> Result<Arc<RsaPrivateKey>, SimError> {
    static CACHE: OnceLock<Mutex<HashMap<usize, Arc<RsaPrivateKey>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(k) = cache.lock().get(&bits) {
        return Ok(k.clone());
    }
    let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
        .map_err(|e| SimError::Crypto(format!("RSA key generation failed: {e}")))?;
    let key = Arc::new(key);
    cache.lock().entry(bits).or_insert_with(|| key.clone());
    Ok(key)
}

/// Loads an RSA private key from PKCS#1 or PKCS#8 PEM.
pub fn load_rsa_key(pem: &str) -> Result<RsaPrivateKey, SimError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| SimError::Crypto("RSA key file is neither PKCS#8 nor PKCS#1 PEM".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(1_230_768_000), "2009-01-01 00:00:00");
        assert_eq!(format_timestamp(1_767_225_599), "2025-12-31 23:59:59");
        assert_eq!(format_timestamp(951_782_400), "2000-02-29 00:00:00");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_login_times_are_kept_in_order_and_bounded() {
        let c = Counters::default();
        let first = Instant::now();
        for _ in 0..AUTH_FAILURE_TIMES_KEPT + 2 {
            c.record_auth_failure();
            tokio::time::advance(std::time::Duration::from_millis(1)).await;
        }
        let times = c.auth_failure_times();
        assert_eq!(
            c.snapshot().auth_failures,
            AUTH_FAILURE_TIMES_KEPT as u64 + 2
        );
        assert_eq!(times.len(), AUTH_FAILURE_TIMES_KEPT, "the latest are kept");
        assert_eq!(times[0] - first, std::time::Duration::from_millis(2));
        assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first");
    }

    #[test]
    fn last_modified_rewrite_keeps_other_bytes() {
        let d = StructureData::load(DEFAULT_STRUCTURE).unwrap();
        let n = d.with_last_modified("2030-01-02 03:04:05");
        assert_eq!(n.last_modified, "2030-01-02 03:04:05");
        assert_eq!(n.text.len(), d.text.len());
        let reparsed = parse_structure(n.text.as_bytes()).unwrap();
        assert_eq!(reparsed.last_modified, "2030-01-02 03:04:05");
        assert_eq!(reparsed.control_count(), d.structure.control_count());
    }
}
