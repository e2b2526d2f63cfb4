//! The simulated Miniserver's user record, one-time keys, token store and login throttle
//! (protocol doc §4.2, §4.3, §4.6).
//!
//! Keys are global per Miniserver (PYLOX fetches one over HTTP and uses it on the socket),
//! single-use and short-lived (doc §4.2). Credential and token hashes are compared
//! case-insensitively and the matching key is consumed. Time is passed in
//! ([`tokio::time::Instant`] for expiry, Unix seconds for `validUntil`), so tests can pause it.
//!
//! Bounded: at most [`MAX_KEYS`] live keys (a new one evicts the oldest; `getkey` needs no
//! login) and [`MAX_TOKENS`] tokens (a new one evicts the one closest to expiry). A token hash
//! is found in O(1): the hash of every live (key, token) pair is computed when the later of
//! the two is issued, so the lookup never tries every key against every token. Failed
//! getjwt/gettoken, authwithtoken and HTTP Basic logins all count towards the block (doc §4.6).
//!
//! No I/O and no logging of any secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::time::Instant;

use crate::loxone::crypto::{self, HashAlg};

/// Unix time of the Loxone epoch 2009-01-01T00:00:00Z.
pub const LOXONE_EPOCH_UNIX: u64 = 1_230_768_000;

/// Token rights granted (bitmap as in the LJ fixture: Web | App | Sys-WS | …).
pub const TOKEN_RIGHTS: u32 = 1666;

/// A token handed out by getjwt/gettoken/refreshjwt.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    /// Permission requested (2 Web, 4 App).
    pub permission: u32,
    /// Expiry in the simulator's clock.
    pub expires_at: Instant,
    /// Lifetime used when the token is refreshed.
    pub lifetime: Duration,
    /// `validUntil` as Loxone-epoch seconds.
    pub valid_until: u64,
}

/// Outcome of a credential check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong user, password hash, or no live key matched.
    Unauthorized,
    /// Too many failures; blocked for this long.
    Blocked(Duration),
}

/// Most one-time keys live at once; issuing one more evicts the oldest. With the default
/// 10 s lifetime that is 25 keys a second, more than any set of real clients fetches.
pub const MAX_KEYS: usize = 256;

/// Most tokens stored at once; issuing one more evicts the one closest to expiry (clients
/// are asked to kill tokens they no longer use, doc §5.4). Each issued key costs one HMAC
/// per stored token, so this also bounds the work an unauthenticated `getkey` causes.
pub const MAX_TOKENS: usize = 64;

/// Removes the entries expiring first until `map` has room for one more below `max`.
fn make_room<V>(map: &mut HashMap<Arc<str>, V>, max: usize, expires: impl Fn(&V) -> Instant) {
    while map.len() >= max {
        let soonest = map
            .iter()
            .min_by_key(|(_, v)| expires(v))
            .map(|(k, _)| k.clone());
        match soonest {
            Some(k) => map.remove(&k),
            None => break,
        };
    }
}

/// Users, keys, tokens.
#[derive(Debug)]
pub struct AuthStore {
    user: String,
    password: String,
    alg: HashAlg,
    any_alg_for_tokens: bool,
    user_salt: String,
    key_lifetime: Duration,
    /// Live one-time keys → expiry.
    keys: HashMap<Arc<str>, Instant>,
    tokens: HashMap<Arc<str>, TokenRecord>,
    /// Lowercase token hash → the (key, token) it was made from. May hold pairs whose key
    /// or token is gone (checked on use, dropped by [`AuthStore::compact_hashes`]).
    token_hashes: HashMap<String, (Arc<str>, Arc<str>)>,
    failures: u32,
    max_failures: u32,
    block_duration: Duration,
    blocked_until: Option<Instant>,
    reject_all_logins: bool,
}

/// Construction parameters of [`AuthStore`].
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The user name.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Its hash algorithm.
    pub alg: HashAlg,
    /// Accept token hashes of the other algorithm too.
    pub any_alg_for_tokens: bool,
    /// One-time key lifetime.
    pub key_lifetime: Duration,
    /// Failures before blocking.
    pub max_failures: u32,
    /// Block duration.
    pub block_duration: Duration,
}

impl AuthStore {
    /// A store with one user; the user salt is random.
    pub fn new<R: RngCore>(cfg: AuthConfig, rng: &mut R) -> Self {
        // Real salts are hex of a UUID-like text; any hex works since clients use it verbatim.
        let user_salt = hex::encode(crypto::random_salt(rng));
        AuthStore {
            user: cfg.user,
            password: cfg.password,
            alg: cfg.alg,
            any_alg_for_tokens: cfg.any_alg_for_tokens,
            user_salt,
            key_lifetime: cfg.key_lifetime,
            keys: HashMap::new(),
            tokens: HashMap::new(),
            token_hashes: HashMap::new(),
            failures: 0,
            max_failures: cfg.max_failures,
            block_duration: cfg.block_duration,
            blocked_until: None,
            reject_all_logins: false,
        }
    }

    /// The user's hash algorithm.
    pub fn alg(&self) -> HashAlg {
        self.alg
    }

    /// Salt answered by getkey2 for `user` (a stable per-name fake for unknown users, so
    /// getkey2 does not reveal which users exist).
    pub fn salt_for(&self, user: &str) -> String {
        if user == self.user {
            self.user_salt.clone()
        } else {
            hex::encode(crypto::password_hash(HashAlg::Sha1, user, "unknown-user"))
                .chars()
                .take(72)
                .collect()
        }
    }

    /// Changes the password (control API); existing tokens stay valid.
    pub fn set_password(&mut self, password: String) {
        self.password = password;
    }

    /// Plain user/password check, not counted (see [`login_with_password`](Self::login_with_password)).
    pub fn check_password(&self, user: &str, password: &str) -> bool {
        !self.reject_all_logins && user == self.user && password == self.password
    }

    /// A user/password login (HTTP Basic auth): refused while blocked, and a wrong one
    /// counts towards the block like any failed login.
    pub fn login_with_password(
        &mut self,
        user: &str,
        password: &str,
        now: Instant,
    ) -> Result<(), LoginError> {
        if let Some(d) = self.blocked_for(now) {
            return Err(LoginError::Blocked(d));
        }
        if self.check_password(user, password) {
            self.failures = 0;
            Ok(())
        } else {
            self.record_failure(now);
            Err(LoginError::Unauthorized)
        }
    }

    /// `authwithtoken`: resolves the token hash (or plaintext token) as
    /// [`find_token`](Self::find_token) does; refused while blocked, and a failure counts
    /// towards the block (a client retrying a dead token gets 4003 as on hardware).
    pub fn login_with_token(
        &mut self,
        user: &str,
        hash_or_token: &str,
        now: Instant,
    ) -> Result<String, LoginError> {
        if let Some(d) = self.blocked_for(now) {
            return Err(LoginError::Blocked(d));
        }
        match self.find_token(user, hash_or_token, now) {
            Some(t) => {
                self.failures = 0;
                Ok(t)
            }
            None => {
                self.record_failure(now);
                Err(LoginError::Unauthorized)
            }
        }
    }

    /// Makes every password check fail (control API).
    pub fn set_reject_all_logins(&mut self, on: bool) {
        self.reject_all_logins = on;
    }

    /// Issues a fresh one-time key (80 hex digits of 40 ASCII hex chars), evicting the
    /// oldest when [`MAX_KEYS`] are live. Costs one HMAC per live token (and algorithm).
    pub fn issue_key<R: RngCore>(&mut self, now: Instant, rng: &mut R) -> String {
        self.prune(now);
        // all keys live equally long: the one expiring first is the oldest
        make_room(&mut self.keys, MAX_KEYS, |exp| *exp);
        let key: Arc<str> = Arc::from(crypto::random_one_time_key(rng));
        self.keys.insert(key.clone(), now + self.key_lifetime);
        let tokens: Vec<Arc<str>> = self.tokens.keys().cloned().collect();
        for token in tokens {
            self.index_pair(&key, &token);
        }
        self.compact_hashes();
        key.to_string()
    }

    /// Algorithms a token hash may have been made with.
    fn token_algs(&self) -> &'static [HashAlg] {
        match (self.any_alg_for_tokens, self.alg) {
            (true, _) => &[HashAlg::Sha1, HashAlg::Sha256],
            (false, HashAlg::Sha1) => &[HashAlg::Sha1],
            (false, HashAlg::Sha256) => &[HashAlg::Sha256],
        }
    }

    /// Records the hashes a client can make from `key` and `token`.
    fn index_pair(&mut self, key: &Arc<str>, token: &Arc<str>) {
        for &alg in self.token_algs() {
            if let Ok(h) = crypto::token_hash(alg, key, token) {
                self.token_hashes
                    .insert(h.to_ascii_lowercase(), (key.clone(), token.clone()));
            }
        }
    }

    /// Drops hashes of consumed, evicted or expired keys and tokens once they outnumber the
    /// live pairs (amortised O(1) per issued key or token).
    fn compact_hashes(&mut self) {
        let live = self.keys.len() * self.tokens.len() * self.token_algs().len();
        if self.token_hashes.len() > 2 * live + 1024 {
            let (keys, tokens) = (&self.keys, &self.tokens);
            self.token_hashes
                .retain(|_, (k, t)| keys.contains_key(k) && tokens.contains_key(t));
        }
    }

    /// Forgets expired keys and tokens.
    fn prune(&mut self, now: Instant) {
        self.keys.retain(|_, exp| *exp > now);
        self.tokens.retain(|_, r| r.expires_at > now);
    }

    /// Remaining block time, if logins are blocked.
    pub fn blocked_for(&self, now: Instant) -> Option<Duration> {
        self.blocked_until
            .filter(|u| *u > now)
            .map(|u| u.saturating_duration_since(now))
    }

    /// Verifies a getjwt/gettoken credential hash; consumes the matching key.
    pub fn verify_credentials(
        &mut self,
        user: &str,
        hash: &str,
        now: Instant,
    ) -> Result<(), LoginError> {
        if let Some(d) = self.blocked_for(now) {
            return Err(LoginError::Blocked(d));
        }
        self.keys.retain(|_, exp| *exp > now);
        let ok = !self.reject_all_logins && user == self.user && {
            let pw_hash = crypto::password_hash(self.alg, &self.password, &self.user_salt);
            let alg = self.alg;
            self.consume_key(
                |key| crypto::credential_hash(alg, key, user, &pw_hash).ok(),
                hash,
            )
        };
        if ok {
            self.failures = 0;
            Ok(())
        } else {
            self.record_failure(now);
            Err(LoginError::Unauthorized)
        }
    }

    fn record_failure(&mut self, now: Instant) {
        self.failures += 1;
        if self.max_failures > 0 && self.failures >= self.max_failures {
            self.blocked_until = Some(now + self.block_duration);
            self.failures = 0;
        }
    }

    /// Finds a live key for which `expected(key)` equals `presented` (case-insensitive) and
    /// removes it.
    fn consume_key(&mut self, expected: impl Fn(&str) -> Option<String>, presented: &str) -> bool {
        // at most MAX_KEYS HMACs: the credential hash depends on the password, which the
        // control API may change, so it is not indexed like token hashes
        let found = self
            .keys
            .keys()
            .find(|k| expected(k).is_some_and(|e| e.eq_ignore_ascii_case(presented.trim())));
        match found.cloned() {
            Some(k) => {
                self.keys.remove(&k);
                true
            }
            None => false,
        }
    }

    /// Creates a token. `jwt` selects a JWT-looking token (getjwt) or a legacy 40-hex token.
    pub fn issue_token<R: RngCore>(
        &mut self,
        permission: u32,
        lifetime: Duration,
        jwt: bool,
        now: Instant,
        unix_now: u64,
        rng: &mut R,
    ) -> (String, TokenRecord) {
        self.prune(now);
        make_room(&mut self.tokens, MAX_TOKENS, |r| r.expires_at);
        let token: Arc<str> = Arc::from(new_token_text(jwt, &self.user, rng));
        let rec = TokenRecord {
            permission,
            expires_at: now + lifetime,
            lifetime,
            valid_until: unix_now.saturating_sub(LOXONE_EPOCH_UNIX) + lifetime.as_secs(),
        };
        self.tokens.insert(token.clone(), rec.clone());
        let keys: Vec<Arc<str>> = self.keys.keys().cloned().collect();
        for key in keys {
            self.index_pair(&key, &token);
        }
        self.compact_hashes();
        (token.to_string(), rec)
    }

    /// Resolves a token hash (HMAC over the token with a live key, which is consumed) or a
    /// plaintext token (11.2+) to the token text. Only tokens of `user` that are not expired.
    pub fn find_token(&mut self, user: &str, hash_or_token: &str, now: Instant) -> Option<String> {
        if user != self.user {
            return None;
        }
        self.prune(now);
        if self.tokens.contains_key(hash_or_token) {
            return Some(hash_or_token.to_string());
        }
        let presented = hash_or_token.trim().to_ascii_lowercase();
        let (key, token) = self.token_hashes.get(&presented)?.clone();
        if !(self.keys.contains_key(&key) && self.tokens.contains_key(&token)) {
            return None;
        }
        self.token_hashes.remove(&presented);
        self.keys.remove(&key);
        Some(token.to_string())
    }

    /// The record of a live token.
    pub fn token(&self, token: &str, now: Instant) -> Option<&TokenRecord> {
        self.tokens.get(token).filter(|r| r.expires_at > now)
    }

    /// Extends a token by its lifetime (refreshtoken, authwithtoken).
    pub fn extend(&mut self, token: &str, now: Instant, unix_now: u64) -> Option<TokenRecord> {
        let r = self.tokens.get_mut(token)?;
        r.expires_at = now + r.lifetime;
        r.valid_until = unix_now.saturating_sub(LOXONE_EPOCH_UNIX) + r.lifetime.as_secs();
        Some(r.clone())
    }

    /// Replaces a token by a new one with a fresh lifetime (refreshjwt).
    pub fn replace<R: RngCore>(
        &mut self,
        token: &str,
        now: Instant,
        unix_now: u64,
        rng: &mut R,
    ) -> Option<(String, TokenRecord)> {
        let old = self.tokens.remove(token)?;
        Some(self.issue_token(old.permission, old.lifetime, true, now, unix_now, rng))
    }

    /// Revokes a token.
    pub fn kill(&mut self, token: &str) -> bool {
        self.tokens.remove(token).is_some()
    }

    /// Expires every token (control API).
    pub fn expire_all(&mut self) {
        self.tokens.clear();
    }
}

fn new_token_text<R: RngCore>(jwt: bool, user: &str, rng: &mut R) -> String {
    use base64::Engine;
    let mut b = [0u8; 20];
    rng.fill_bytes(&mut b);
    if !jwt {
        return hex::encode_upper(b);
    }
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = e.encode(br#"{"typ":"JWT","alg":"HS256"}"#);
    let body = e.encode(format!(
        r#"{{"user":"{user}","jti":"{}"}}"#,
        hex::encode(&b[..8])
    ));
    let sig = e.encode(b);
    format!("{head}.{body}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn store(alg: HashAlg) -> (AuthStore, StdRng) {
        let mut rng = StdRng::seed_from_u64(1);
        let s = AuthStore::new(
            AuthConfig {
                user: "admin".into(),
                password: "secret".into(),
                alg,
                any_alg_for_tokens: false,
                key_lifetime: Duration::from_secs(5),
                max_failures: 3,
                block_duration: Duration::from_secs(60),
            },
            &mut rng,
        );
        (s, rng)
    }

    fn client_hash(s: &AuthStore, key: &str, password: &str) -> String {
        let pw = crypto::password_hash(s.alg, password, &s.salt_for("admin"));
        crypto::credential_hash(s.alg, key, "admin", &pw).unwrap()
    }

    #[test]
    fn credentials_verify_once_per_key_case_insensitive() {
        for alg in [HashAlg::Sha1, HashAlg::Sha256] {
            let (mut s, mut rng) = store(alg);
            let now = Instant::now();
            let key = s.issue_key(now, &mut rng);
            let h = client_hash(&s, &key, "secret").to_ascii_uppercase();
            assert_eq!(s.verify_credentials("admin", &h, now), Ok(()));
            // key consumed
            assert_eq!(
                s.verify_credentials("admin", &h, now),
                Err(LoginError::Unauthorized)
            );
        }
    }

    #[test]
    fn wrong_password_expired_key_and_blocking() {
        let (mut s, mut rng) = store(HashAlg::Sha256);
        let now = Instant::now();
        let key = s.issue_key(now, &mut rng);
        let bad = client_hash(&s, &key, "wrong");
        assert_eq!(
            s.verify_credentials("admin", &bad, now),
            Err(LoginError::Unauthorized)
        );
        let key = s.issue_key(now, &mut rng);
        let good = client_hash(&s, &key, "secret");
        let later = now + Duration::from_secs(6);
        assert_eq!(
            s.verify_credentials("admin", &good, later),
            Err(LoginError::Unauthorized),
            "expired key accepted"
        );
        assert_eq!(
            s.verify_credentials("nobody", "00", later),
            Err(LoginError::Unauthorized)
        );
        assert!(s.blocked_for(later).is_some(), "3 failures should block");
        let key = s.issue_key(later, &mut rng);
        let good = client_hash(&s, &key, "secret");
        assert!(matches!(
            s.verify_credentials("admin", &good, later),
            Err(LoginError::Blocked(_))
        ));
        let after = later + Duration::from_secs(61);
        let key = s.issue_key(after, &mut rng);
        let good = client_hash(&s, &key, "secret");
        assert_eq!(s.verify_credentials("admin", &good, after), Ok(()));
    }

    #[test]
    fn token_hash_plaintext_refresh_kill_expiry() {
        let (mut s, mut rng) = store(HashAlg::Sha1);
        let now = Instant::now();
        let (tok, rec) = s.issue_token(
            4,
            Duration::from_secs(100),
            true,
            now,
            1_700_000_000,
            &mut rng,
        );
        assert_eq!(tok.split('.').count(), 3);
        assert_eq!(rec.valid_until, 1_700_000_000 - LOXONE_EPOCH_UNIX + 100);
        let key = s.issue_key(now, &mut rng);
        let h = crypto::token_hash(HashAlg::Sha1, &key, &tok).unwrap();
        assert_eq!(
            s.find_token("admin", &h, now).as_deref(),
            Some(tok.as_str())
        );
        assert_eq!(s.find_token("admin", &h, now), None, "key reused");
        // SHA256 hash is not accepted for a SHA1 user by default
        let key = s.issue_key(now, &mut rng);
        let h256 = crypto::token_hash(HashAlg::Sha256, &key, &tok).unwrap();
        assert_eq!(s.find_token("admin", &h256, now), None);
        assert_eq!(
            s.find_token("admin", &tok, now).as_deref(),
            Some(tok.as_str())
        );
        let (new, _) = s.replace(&tok, now, 1_700_000_000, &mut rng).unwrap();
        assert_ne!(new, tok);
        assert!(s.token(&tok, now).is_none());
        assert!(s.token(&new, now + Duration::from_secs(99)).is_some());
        assert!(s.token(&new, now + Duration::from_secs(101)).is_none());
        assert!(s.kill(&new));
        assert!(!s.kill(&new));
        let (legacy, _) = s.issue_token(
            2,
            Duration::from_secs(5),
            false,
            now,
            1_700_000_000,
            &mut rng,
        );
        assert_eq!(legacy.len(), 40);
        assert!(legacy
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
    }

    #[test]
    fn key_and_token_storage_is_bounded_and_lookup_still_works() {
        let (mut s, mut rng) = store(HashAlg::Sha256);
        let now = Instant::now();
        let mut tokens = Vec::new();
        for _ in 0..MAX_TOKENS + 10 {
            let (t, _) = s.issue_token(
                4,
                Duration::from_secs(100),
                true,
                now,
                1_700_000_000,
                &mut rng,
            );
            tokens.push(t);
        }
        for _ in 0..MAX_KEYS + 10 {
            s.issue_key(now, &mut rng);
        }
        assert!(s.keys.len() <= MAX_KEYS, "{} keys stored", s.keys.len());
        assert!(
            s.tokens.len() <= MAX_TOKENS,
            "{} tokens stored",
            s.tokens.len()
        );
        // a bogus hash is answered quickly, and the newest key and token still work
        let started = std::time::Instant::now();
        assert_eq!(s.find_token("admin", &"ab".repeat(32), now), None);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "bogus lookup took {:?}",
            started.elapsed()
        );
        let newest = tokens.last().unwrap();
        let key = s.issue_key(now, &mut rng);
        let h = crypto::token_hash(HashAlg::Sha256, &key, newest).unwrap();
        assert_eq!(
            s.find_token("admin", &h, now).as_deref(),
            Some(newest.as_str())
        );
        // a key issued before a token can hash that token
        let key = s.issue_key(now, &mut rng);
        let (late, _) = s.issue_token(
            2,
            Duration::from_secs(100),
            true,
            now,
            1_700_000_000,
            &mut rng,
        );
        let h = crypto::token_hash(HashAlg::Sha256, &key, &late).unwrap();
        assert_eq!(
            s.find_token("admin", &h, now).as_deref(),
            Some(late.as_str())
        );
        // credentials with the newest key
        let key = s.issue_key(now, &mut rng);
        let good = client_hash(&s, &key, "secret");
        assert_eq!(s.verify_credentials("admin", &good, now), Ok(()));
    }

    #[test]
    fn failed_token_logins_and_passwords_count_towards_the_block() {
        let (mut s, mut rng) = store(HashAlg::Sha256);
        let now = Instant::now();
        let (tok, _) = s.issue_token(
            4,
            Duration::from_secs(100),
            true,
            now,
            1_700_000_000,
            &mut rng,
        );
        // max_failures is 3: two bogus authwithtoken and one wrong Basic-auth password
        assert_eq!(
            s.login_with_token("admin", "00", now),
            Err(LoginError::Unauthorized)
        );
        assert_eq!(
            s.login_with_token("admin", &"ab".repeat(32), now),
            Err(LoginError::Unauthorized)
        );
        assert_eq!(
            s.login_with_password("admin", "wrong", now),
            Err(LoginError::Unauthorized)
        );
        assert!(s.blocked_for(now).is_some(), "3 failures should block");
        // blocked: even the right token and password are refused
        assert!(matches!(
            s.login_with_token("admin", &tok, now),
            Err(LoginError::Blocked(_))
        ));
        assert!(matches!(
            s.login_with_password("admin", "secret", now),
            Err(LoginError::Blocked(_))
        ));
        let after = now + Duration::from_secs(61);
        assert_eq!(
            s.login_with_token("admin", &tok, after).as_deref(),
            Ok(tok.as_str())
        );
        assert_eq!(s.login_with_password("admin", "secret", after), Ok(()));
    }
}
