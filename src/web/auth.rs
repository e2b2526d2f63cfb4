//! HTTP basic authentication against the bcrypt hashes of `basic_auth_users`, as the
//! exporter-toolkit does it (otlp-and-prometheus.md §4.1):
//!
//! * a bcrypt check costs ~70 ms at cost 10, so successful checks are cached, keyed by a
//!   SHA-256 of user, stored hash and password (a changed hash or password misses the cache);
//!   failures are not cached, so guessing keeps paying the full price;
//! * unknown users are checked against a dummy hash of the same cost, so the answer time does
//!   not tell which user names exist;
//! * checks run on the blocking pool one at a time (like the toolkit's mutex), so a flood of
//!   wrong passwords costs one core at most.
//!
//! Does not build responses; the `server` module turns `false` into a 401.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::http::HeaderValue;
use base64::Engine as _;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// Bcrypt hash (cost 10) of a random password nobody knows, checked for unknown users.
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// Upper bound on cached successful checks; the cache is emptied when it is reached.
const CACHE_CAPACITY: usize = 1024;

/// The credentials of one web configuration, with its cache.
#[derive(Debug)]
pub struct BasicAuth {
    users: BTreeMap<String, Secret>,
    cache: Mutex<HashSet<[u8; 32]>>,
    gate: tokio::sync::Semaphore,
}

/// Credentials taken from an `Authorization: Basic …` header.
#[derive(PartialEq, Eq)]
pub struct Credentials {
    /// User name (may be any bytes the client sent, as text when UTF-8).
    pub user: String,
    /// Password bytes.
    pub password: Secret,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password)
            .finish()
    }
}

/// Parses an `Authorization` header value of the Basic scheme. `None` for anything else.
pub fn parse_basic(value: &HeaderValue) -> Option<Credentials> {
    let text = value.to_str().ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(Credentials {
        user: user.to_string(),
        password: Secret::new(password),
    })
}

impl BasicAuth {
    /// Auth for these users (user → bcrypt hash). No users: everything is allowed.
    pub fn new(users: BTreeMap<String, Secret>) -> Self {
        BasicAuth {
            users,
            cache: Mutex::new(HashSet::new()),
            gate: tokio::sync::Semaphore::new(1),
        }
    }

    /// True when at least one user is configured.
    pub fn is_enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Number of successful checks currently cached (for tests and diagnostics).
    pub fn cached_entries(&self) -> usize {
        self.cache.lock().len()
    }

    /// Decides whether a request with this `Authorization` header may pass.
    pub async fn check(self: &Arc<Self>, authorization: Option<&HeaderValue>) -> bool {
        if !self.is_enabled() {
            return true;
        }
        let Some(creds) = authorization.and_then(parse_basic) else {
            return false;
        };
        let known = self.users.get(&creds.user).cloned();
        let hash = known.clone().unwrap_or_else(|| Secret::new(DUMMY_HASH));
        let key = cache_key(&creds.user, hash.expose(), creds.password.expose());
        if known.is_some() && self.cache.lock().contains(&key) {
            return true;
        }
        let Ok(_permit) = self.gate.acquire().await else {
            return false;
        };
        let password = creds.password.clone();
        let verified = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password.expose(), hash.expose()).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let ok = verified && known.is_some();
        if ok {
            let mut cache = self.cache.lock();
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [user, hash, password] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, pass: &str) -> HeaderValue {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {b64}")).unwrap()
    }

    #[test]
    fn dummy_hash_is_a_cost_10_bcrypt_hash() {
        let parts: bcrypt::HashParts = DUMMY_HASH.parse().unwrap();
        assert_eq!(parts.get_cost(), 10);
    }

    #[test]
    fn parse_basic_variants() {
        let c = parse_basic(&header("u", "p:w")).unwrap();
        assert_eq!((c.user.as_str(), c.password.expose()), ("u", "p:w"));
        assert!(parse_basic(&HeaderValue::from_static("Bearer abc")).is_none());
        assert!(parse_basic(&HeaderValue::from_static("Basic !!!")).is_none());
        let no_colon = base64::engine::general_purpose::STANDARD.encode("nocolon");
        assert!(
            parse_basic(&HeaderValue::from_str(&format!("basic {no_colon}")).unwrap()).is_none()
        );
        assert!(!format!("{c:?}").contains("p:w"));
    }

    #[tokio::test]
    async fn check_caches_success_only() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = Arc::new(BasicAuth::new(BTreeMap::from([(
            "alice".to_string(),
            Secret::new(hash),
        )])));
        assert!(!auth.check(None).await);
        assert!(!auth.check(Some(&header("alice", "wrong"))).await);
        assert!(!auth.check(Some(&header("bob", "right"))).await);
        assert_eq!(auth.cached_entries(), 0);
        assert!(auth.check(Some(&header("alice", "right"))).await);
        assert_eq!(auth.cached_entries(), 1);
        assert!(auth.check(Some(&header("alice", "right"))).await);
        assert_eq!(auth.cached_entries(), 1);
        assert!(!auth.check(Some(&header("alice", "right2"))).await);
    }

    #[tokio::test]
    async fn no_users_allows_everything() {
        let auth = Arc::new(BasicAuth::new(BTreeMap::new()));
        assert!(auth.check(None).await);
    }
}
