//! Authentication decisions and command texts, without I/O (protocol doc §4, pitfalls 8–14).
//!
//! Owns: which method a firmware gets ([`AuthMethod`]: JWT ≥ 10.2, legacy token ≥ 9.0, hash
//! below), the token kept across sessions ([`StoredToken`], with its refresh time), the
//! command strings (`getkey2`, `getjwt`/`gettoken`, `authwithtoken`, `refreshjwt`,
//! `killtoken`, `authenticate`), the parsing of their answers, and the per-socket command
//! encryption with salt rotation ([`CommandCipher`]). The hashes themselves come from
//! `crypto.rs`. `session.rs` sends and receives.
//!
//! Nothing here formats a secret into an error or log text: tokens are [`Secret`]s and
//! commands that carry hashes are only ever sent, never displayed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::crypto::{encrypt_command, random_salt, HashAlg, SaltPrefix, SessionKey};
use crate::secret::Secret;

/// Loxone epoch (2009-01-01T00:00:00Z) in Unix seconds.
pub const LOXONE_EPOCH_UNIX: u64 = 1_230_768_000;
/// Token permission: 2 = Web (short-lived), 4 = App (long-lived).
pub const DEFAULT_TOKEN_PERMISSION: u8 = 2;
/// Salt is rotated (`nextSalt`) after this many encrypted commands.
pub const SALT_ROTATION_USES: u32 = 20;
/// Refresh again no sooner than this, even when the token claims to be almost expired.
pub const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);
/// When `validUntil` is already in the past by our clock (skew), retry refresh this late.
pub const SKEWED_REFRESH_DELAY: Duration = Duration::from_secs(60);

/// Characters escaped in a user name that goes into a command path.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why an answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The answer lacks a field or has the wrong shape.
    #[error("malformed {what} answer: {detail}")]
    Malformed {
        /// Which answer.
        what: &'static str,
        /// What was wrong (never contains the value of a secret).
        detail: &'static str,
    },
}

/// A dotted firmware version, e.g. `14.5.12.7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FirmwareVersion(pub [u32; 4]);

impl FirmwareVersion {
    /// Parses up to four dotted numbers; missing parts are 0. `None` when the first part is
    /// not a number.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = [0u32; 4];
        let mut any = false;
        for (slot, piece) in parts.iter_mut().zip(text.trim().split('.')) {
            let digits: String = piece.chars().take_while(|c| c.is_ascii_digit()).collect();
            match digits.parse() {
                Ok(n) => {
                    *slot = n;
                    any = true;
                }
                Err(_) => break,
            }
        }
        any.then_some(FirmwareVersion(parts))
    }

    /// True when this version is `v` or newer.
    pub fn at_least(&self, v: [u32; 4]) -> bool {
        self.0 >= v
    }
}

/// How to log in on a firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `getjwt` / `refreshjwt` (10.2 and newer; also when the version is unknown).
    Jwt,
    /// `gettoken` / `refreshtoken` (9.0 to 10.1).
    LegacyToken,
    /// `getkey` + `authenticate/<hmac>` (before 9.0).
    Hash,
}

impl AuthMethod {
    /// The method for a firmware version.
    pub fn for_version(version: Option<FirmwareVersion>) -> Self {
        match version {
            None => AuthMethod::Jwt,
            Some(v) if v.at_least([10, 2, 0, 0]) => AuthMethod::Jwt,
            Some(v) if v.at_least([9, 0, 0, 0]) => AuthMethod::LegacyToken,
            Some(_) => AuthMethod::Hash,
        }
    }

    /// True for the token methods.
    pub fn uses_tokens(self) -> bool {
        !matches!(self, AuthMethod::Hash)
    }
}

/// True when the firmware supports RSA/AES command encryption: 8.1.10.14 and newer
/// (LXC's feature check; the protocol documentation says 8.1 without a build).
pub fn supports_encryption(version: Option<FirmwareVersion>) -> bool {
    version.is_none_or(|v| v.at_least([8, 1, 10, 14]))
}

/// True when a session needs the Miniserver's public key and a key exchange: only the
/// token methods send encrypted commands (hash authentication, before 9.0, is plain).
pub fn needs_key_exchange(version: Option<FirmwareVersion>) -> bool {
    AuthMethod::for_version(version).uses_tokens() && supports_encryption(version)
}

/// A token kept across sessions.
#[derive(Debug, Clone)]
pub struct StoredToken {
    /// The token (JWT or legacy).
    pub token: Secret,
    /// Expiry in seconds since the Loxone epoch.
    pub valid_until: u64,
    /// Issued by `getjwt` (true) or `gettoken` (false).
    pub jwt: bool,
}

impl StoredToken {
    /// Seconds of validity left at `now` (negative when expired by our clock).
    pub fn remaining(&self, now: SystemTime) -> i64 {
        let now_unix = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        (self.valid_until.saturating_add(LOXONE_EPOCH_UNIX)) as i64 - now_unix
    }

    /// How long to wait before refreshing: half the remaining lifetime, at least
    /// [`MIN_REFRESH_DELAY`]; [`SKEWED_REFRESH_DELAY`] when already expired by our clock.
    pub fn refresh_delay(&self, now: SystemTime) -> Duration {
        match self.remaining(now) {
            r if r <= 0 => SKEWED_REFRESH_DELAY,
            r => Duration::from_secs_f64(r as f64 / 2.0).max(MIN_REFRESH_DELAY),
        }
    }
}

/// `key`, `salt`, `hashAlg` from `getkey2`. `Debug` masks key and salt: with a hash
/// computed from them they would help an offline guess of the password.
#[derive(Clone, PartialEq)]
pub struct UserKey {
    /// One-time key (hex of ASCII hex).
    pub key: String,
    /// User salt, used verbatim.
    pub salt: String,
    /// Hash algorithm of the user record.
    pub alg: HashAlg,
}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserKey")
            .field("key", &crate::secret::MASK)
            .field("salt", &crate::secret::MASK)
            .field("alg", &self.alg)
            .finish()
    }
}

/// What a token answer (`getjwt`, `gettoken`, `authwithtoken`, `refresh*`) carried.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// New token (absent for `authwithtoken` and legacy refresh).
    pub token: Option<Secret>,
    /// Expiry in seconds since the Loxone epoch.
    pub valid_until: u64,
    /// The Miniserver considers the password weak.
    pub unsecure_pass: bool,
}

/// Some answers put a JSON object into a string; accept both.
fn as_object(value: &Json) -> Option<serde_json::Map<String, Json>> {
    match value {
        Json::Object(m) => Some(m.clone()),
        Json::String(s) => match serde_json::from_str(&s.replace("\\\"", "\"")) {
            Ok(Json::Object(m)) => Some(m),
            _ => None,
        },
        _ => None,
    }
}

fn field_str(m: &serde_json::Map<String, Json>, key: &str) -> Option<String> {
    match m.get(key)? {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn field_u64(m: &serde_json::Map<String, Json>, key: &str) -> Option<u64> {
    match m.get(key)? {
        Json::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses the `getkey2` value.
pub fn parse_user_key(value: &Json) -> Result<UserKey, AuthError> {
    let malformed = |detail| AuthError::Malformed {
        what: "getkey2",
        detail,
    };
    let m = as_object(value).ok_or(malformed("value is not an object"))?;
    let key = field_str(&m, "key").ok_or(malformed("no key"))?;
    let salt = field_str(&m, "salt").ok_or(malformed("no salt"))?;
    let alg_name = field_str(&m, "hashAlg");
    Ok(UserKey {
        key,
        salt,
        alg: HashAlg::from_loxone(alg_name.as_deref()),
    })
}

/// Parses a token answer; `expect_token` requires the `token` field.
pub fn parse_token_grant(
    value: &Json,
    what: &'static str,
    expect_token: bool,
) -> Result<TokenGrant, AuthError> {
    let malformed = |detail| AuthError::Malformed { what, detail };
    let m = as_object(value).ok_or(malformed("value is not an object"))?;
    let token = field_str(&m, "token").filter(|t| !t.is_empty());
    if expect_token && token.is_none() {
        return Err(malformed("no token"));
    }
    let valid_until = field_u64(&m, "validUntil").ok_or(malformed("no validUntil"))?;
    let unsecure_pass = matches!(m.get("unsecurePass"), Some(Json::Bool(true)));
    Ok(TokenGrant {
        token: token.map(Secret::new),
        valid_until,
        unsecure_pass,
    })
}

/// The one-time key of a `getkey` answer (a string value).
pub fn parse_plain_key(value: &Json) -> Result<String, AuthError> {
    match value {
        Json::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(AuthError::Malformed {
            what: "getkey",
            detail: "value is not a key string",
        }),
    }
}

fn user_segment(user: &str) -> String {
    utf8_percent_encode(user, PATH_SEGMENT).to_string()
}

/// `jdev/sys/getkey2/<user>`.
pub fn getkey2_command(user: &str) -> String {
    format!("jdev/sys/getkey2/{}", user_segment(user))
}

/// `jdev/sys/getjwt/...` (or `gettoken` for legacy firmware).
pub fn get_token_command(
    method: AuthMethod,
    hash: &str,
    user: &str,
    permission: u8,
    client_uuid: &str,
    info: &str,
) -> String {
    let verb = if method == AuthMethod::LegacyToken {
        "gettoken"
    } else {
        "getjwt"
    };
    format!(
        "jdev/sys/{verb}/{hash}/{}/{permission}/{client_uuid}/{}",
        user_segment(user),
        utf8_percent_encode(&info.replace('/', " "), PATH_SEGMENT)
    )
}

/// `authwithtoken/<hash>/<user>` (no `jdev/sys/` prefix, as documented).
pub fn authwithtoken_command(hash: &str, user: &str) -> String {
    format!("authwithtoken/{hash}/{}", user_segment(user))
}

/// `jdev/sys/refreshjwt/...` or `jdev/sys/refreshtoken/...`.
pub fn refresh_command(jwt: bool, hash: &str, user: &str) -> String {
    let verb = if jwt { "refreshjwt" } else { "refreshtoken" };
    format!("jdev/sys/{verb}/{hash}/{}", user_segment(user))
}

/// `jdev/sys/killtoken/<hash>/<user>`.
pub fn killtoken_command(hash: &str, user: &str) -> String {
    format!("jdev/sys/killtoken/{hash}/{}", user_segment(user))
}

/// `authenticate/<hmac>` of legacy hash authentication.
pub fn authenticate_command(hash: &str) -> String {
    format!("authenticate/{hash}")
}

/// A stable client UUID (8-4-4-16) for this installation: derived from the Miniserver name
/// and user, so restarts reuse the same id and the Miniserver's token list stays tidy.
pub fn client_uuid(miniserver: &str, user: &str) -> String {
    let d = Sha256::digest(format!("loxone-exporter\0{miniserver}\0{user}").as_bytes());
    let h = hex::encode(&d[..16]);
    format!("{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..32])
}

/// Status codes that mean "these credentials do not work" (retrying soon risks a lockout).
pub fn is_credential_rejection(code: u16) -> bool {
    matches!(code, 401 | 403 | 423 | 429)
}

/// Longest block we wait for on the Miniserver's word (a 4003 close reason): a reason
/// that is garbled, or forged on a plain ws:// link, must not park a client for longer.
pub const MAX_BLOCKED_SECONDS: u64 = 3600;

/// Seconds announced in a 4003 close reason: the whole number that opens the last `(...)`,
/// at most [`MAX_BLOCKED_SECONDS`]. Anything else there (a date, a decimal) gives `None`.
pub fn blocked_seconds(reason: &str) -> Option<u64> {
    let open = reason.rfind('(')?;
    let inner = &reason[open + 1..];
    let close = inner.find(')')?;
    let inner = inner[..close].trim_start();
    let end = inner
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(inner.len());
    let (digits, rest) = inner.split_at(end);
    // "60", "60 s", "60s", "60 seconds": a unit may follow, another number may not
    let rest = rest.trim_start();
    if digits.is_empty() || rest.starts_with(|c: char| c.is_ascii_digit() || ".,:-/".contains(c)) {
        return None;
    }
    Some(
        digits
            .parse::<u64>()
            .unwrap_or(u64::MAX)
            .min(MAX_BLOCKED_SECONDS),
    )
}

/// Encrypts commands for one socket: the session key from the key exchange and a salt that
/// is rotated with `nextSalt` every [`SALT_ROTATION_USES`] commands.
pub struct CommandCipher {
    key: SessionKey,
    salt: Option<String>,
    uses: u32,
}

impl std::fmt::Debug for CommandCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandCipher")
            .field("uses", &self.uses)
            .finish_non_exhaustive()
    }
}

impl CommandCipher {
    /// A cipher for a freshly exchanged session key.
    pub fn new(key: SessionKey) -> Self {
        CommandCipher {
            key,
            salt: None,
            uses: 0,
        }
    }

    /// `jdev/sys/enc/<uri-encoded cipher>` for `command`.
    pub fn encrypt<R: rand::RngCore>(&mut self, command: &str, rng: &mut R) -> String {
        let prefix = match &self.salt {
            None => {
                let s = random_salt(rng);
                self.salt = Some(s.clone());
                SaltPrefix::Salt(s)
            }
            Some(current) if self.uses >= SALT_ROTATION_USES => {
                let next = random_salt(rng);
                let prefix = SaltPrefix::NextSalt {
                    previous: current.clone(),
                    next: next.clone(),
                };
                self.salt = Some(next);
                self.uses = 0;
                prefix
            }
            Some(current) => SaltPrefix::Salt(current.clone()),
        };
        self.uses += 1;
        encrypt_command(&self.key, &prefix, command, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_and_methods() {
        let v = |s| FirmwareVersion::parse(s);
        assert_eq!(v("14.5.12.7"), Some(FirmwareVersion([14, 5, 12, 7])));
        assert_eq!(v("10.2"), Some(FirmwareVersion([10, 2, 0, 0])));
        assert_eq!(v("garbage"), None);
        assert_eq!(AuthMethod::for_version(v("14.5.12.7")), AuthMethod::Jwt);
        assert_eq!(AuthMethod::for_version(v("10.2.0.1")), AuthMethod::Jwt);
        assert_eq!(
            AuthMethod::for_version(v("10.1.12.5")),
            AuthMethod::LegacyToken
        );
        assert_eq!(
            AuthMethod::for_version(v("9.0.7.25")),
            AuthMethod::LegacyToken
        );
        assert_eq!(AuthMethod::for_version(v("8.3.3.21")), AuthMethod::Hash);
        assert_eq!(AuthMethod::for_version(None), AuthMethod::Jwt);
        assert!(supports_encryption(v("8.1.10.14")));
        assert!(!supports_encryption(v("8.1.10.13")));
        // hash authentication firmware never needs the key exchange
        assert!(!needs_key_exchange(v("8.3.3.21")));
        assert!(needs_key_exchange(v("9.0.0.0")));
        assert!(needs_key_exchange(None));
        assert!(!supports_encryption(v("7.4.4.14")));
    }

    #[test]
    fn user_key_variants() {
        let k = parse_user_key(&json!({"key": "41", "salt": "5a", "hashAlg": "SHA256"})).unwrap();
        assert_eq!((k.key.as_str(), k.salt.as_str()), ("41", "5a"));
        assert_eq!(k.alg, HashAlg::Sha256);
        let k = parse_user_key(&json!("{\"key\":\"41\",\"salt\":\"5a\"}")).unwrap();
        assert_eq!(k.alg, HashAlg::Sha1, "missing hashAlg means SHA1");
        assert!(parse_user_key(&json!({"salt": "5a"})).is_err());
        assert!(parse_user_key(&json!(12)).is_err());
    }

    #[test]
    fn token_grants() {
        let g = parse_token_grant(
            &json!({"token": "abc.def.ghi", "key": "41", "validUntil": 500_000_000, "tokenRights": 1666, "unsecurePass": true}),
            "getjwt",
            true,
        )
        .unwrap();
        assert_eq!(g.token.as_ref().map(|t| t.expose()), Some("abc.def.ghi"));
        assert_eq!(g.valid_until, 500_000_000);
        assert!(g.unsecure_pass);
        let g = parse_token_grant(&json!({"validUntil": "42"}), "authwithtoken", false).unwrap();
        assert!(g.token.is_none());
        assert_eq!(g.valid_until, 42);
        assert!(parse_token_grant(&json!({"validUntil": 1}), "getjwt", true).is_err());
        let err = parse_token_grant(&json!({"token": "s3cr3t"}), "getjwt", true).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"));
    }

    #[test]
    fn refresh_timing() {
        let now = UNIX_EPOCH + Duration::from_secs(LOXONE_EPOCH_UNIX + 1000);
        let t = StoredToken {
            token: Secret::new("t"),
            valid_until: 1000 + 3600,
            jwt: true,
        };
        assert_eq!(t.remaining(now), 3600);
        assert_eq!(t.refresh_delay(now), Duration::from_secs(1800));
        let expired = StoredToken {
            valid_until: 10,
            ..t.clone()
        };
        assert_eq!(expired.refresh_delay(now), SKEWED_REFRESH_DELAY);
        let nearly = StoredToken {
            valid_until: 1001,
            ..t
        };
        assert_eq!(nearly.refresh_delay(now), MIN_REFRESH_DELAY);
    }

    #[test]
    fn commands() {
        assert_eq!(getkey2_command("admin"), "jdev/sys/getkey2/admin");
        assert_eq!(getkey2_command("a b/c"), "jdev/sys/getkey2/a%20b%2Fc");
        assert_eq!(
            get_token_command(AuthMethod::Jwt, "hh", "u", 2, "uuid", "loxone-exporter"),
            "jdev/sys/getjwt/hh/u/2/uuid/loxone-exporter"
        );
        assert_eq!(
            get_token_command(AuthMethod::LegacyToken, "hh", "u", 4, "uuid", "a b"),
            "jdev/sys/gettoken/hh/u/4/uuid/a%20b"
        );
        assert_eq!(authwithtoken_command("hh", "u"), "authwithtoken/hh/u");
        assert_eq!(refresh_command(true, "hh", "u"), "jdev/sys/refreshjwt/hh/u");
        assert_eq!(
            refresh_command(false, "hh", "u"),
            "jdev/sys/refreshtoken/hh/u"
        );
        assert_eq!(killtoken_command("hh", "u"), "jdev/sys/killtoken/hh/u");
    }

    #[test]
    fn client_uuid_is_stable_and_loxone_shaped() {
        let a = client_uuid("home", "admin");
        assert_eq!(a, client_uuid("home", "admin"));
        assert_ne!(a, client_uuid("office", "admin"));
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 16]);
    }

    #[test]
    fn blocked_reason() {
        assert_eq!(blocked_seconds("User blocked (123)"), Some(123));
        assert_eq!(blocked_seconds("a (x) b (60 s)"), Some(60));
        assert_eq!(blocked_seconds("no number"), None);
        assert_eq!(blocked_seconds("broken (12"), None);
        // a date or a decimal is not a number of seconds; huge numbers are capped
        assert_eq!(blocked_seconds("User blocked (2024-05-06 12:00:00)"), None);
        assert_eq!(blocked_seconds("blocked (1.5 min)"), None);
        assert_eq!(
            blocked_seconds("blocked (20240506120000)"),
            Some(MAX_BLOCKED_SECONDS)
        );
        assert_eq!(
            blocked_seconds("blocked (99999999999999999999999)"),
            Some(MAX_BLOCKED_SECONDS)
        );
        assert_eq!(blocked_seconds("blocked (45s)"), Some(45));
    }

    #[test]
    fn cipher_rotates_salt() {
        use super::super::crypto::decrypt_command;
        let mut rng = rand::rngs::OsRng;
        let key = SessionKey::generate(&mut rng);
        let mut c = CommandCipher::new(
            SessionKey::parse_exchange_plaintext(&key.exchange_plaintext()).unwrap(),
        );
        let mut salts = Vec::new();
        for i in 0..(SALT_ROTATION_USES + 2) {
            let wire = c.encrypt("jdev/sps/io/x/on", &mut rng);
            let cipher = wire.strip_prefix("jdev/sys/enc/").unwrap();
            let d = decrypt_command(&key, cipher).unwrap();
            assert_eq!(d.command, "jdev/sps/io/x/on");
            salts.push((i, d.salt));
        }
        assert!(matches!(salts[0].1, SaltPrefix::Salt(_)));
        assert!(matches!(
            salts[SALT_ROTATION_USES as usize].1,
            SaltPrefix::NextSalt { .. }
        ));
    }
}
