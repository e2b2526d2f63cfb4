//! Authentication crypto (protocol doc §4.2, §4.4, §4.5): `getkey2` password and credential
//! hashes with SHA1/SHA256 and their hex-case rules, HMAC token hashes, the legacy HMAC-SHA1
//! hash, the RSA PKCS#1 v1.5 session-key exchange and AES-256-CBC command encryption
//! (`jdev/sys/enc` and `jdev/sys/fenc` with `salt/` and `nextSalt/` prefixes).
//!
//! Pure functions; randomness is passed in. Does not own: when to rotate salts or refresh
//! tokens (the session), nor checking a client's hash (the simulator compares
//! [`credential_hash`] output case-insensitively).
//!
//! Rules encoded here: the one-time `key` is hex whose decoded bytes (ASCII hex) are the HMAC
//! key, not decoded twice; the user salt is used verbatim; pwHash is UPPERCASE hex, HMAC
//! results lowercase hex. AES uses the session IV for every message and zero padding.
//! Decryption cuts at the first NUL and drops trailing zeros, so both zero padding and the
//! "NUL + PKCS#7" form some clients send are accepted.
//!
//! No error in this module ever carries key material, hashes or plaintext.

use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::{CryptoRng, RngCore};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::{Pkcs1v15Encrypt, RsaPrivateKey, RsaPublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha256};

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// Why a crypto operation failed. Texts never include secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The one-time key is not valid hex.
    #[error("one-time key is not valid hex")]
    BadKeyHex,
    /// Not valid base64.
    #[error("invalid base64")]
    Base64,
    /// The public key text could not be decoded.
    #[error("cannot decode RSA public key: {0}")]
    PublicKey(String),
    /// RSA encryption or decryption failed.
    #[error("RSA operation failed")]
    Rsa,
    /// The session key text is not `<64 hex>:<32 hex>`.
    #[error("session key is not <64 hex digits>:<32 hex digits>")]
    BadSessionKey,
    /// The ciphertext is empty.
    #[error("empty ciphertext")]
    EmptyCiphertext,
    /// The decrypted command is not UTF-8.
    #[error("decrypted command is not valid UTF-8")]
    BadUtf8,
    /// The decrypted command has no `salt/…/` or `nextSalt/…/…/` prefix.
    #[error("decrypted command has no salt prefix")]
    MissingSalt,
}

/// Hash algorithm of a user record (`hashAlg` of `getkey2`/`getvisusalt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashAlg {
    /// SHA-1 (default when `hashAlg` is missing, pre-10.4).
    #[default]
    Sha1,
    /// SHA-256.
    Sha256,
}

impl HashAlg {
    /// From the `hashAlg` field: `"SHA256"` (any case) is SHA-256, anything else or missing
    /// is SHA-1.
    pub fn from_loxone(name: Option<&str>) -> Self {
        match name {
            Some(n) if n.trim().eq_ignore_ascii_case("SHA256") => HashAlg::Sha256,
            _ => HashAlg::Sha1,
        }
    }

    /// The name the Miniserver uses (`SHA1` / `SHA256`).
    pub fn as_loxone(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "SHA1",
            HashAlg::Sha256 => "SHA256",
        }
    }
}

fn digest_upper_hex(alg: HashAlg, data: &[u8]) -> String {
    match alg {
        HashAlg::Sha1 => hex::encode_upper(Sha1::digest(data)),
        HashAlg::Sha256 => hex::encode_upper(Sha256::digest(data)),
    }
}

fn hmac_hex(alg: HashAlg, key: &[u8], data: &[u8]) -> String {
    // new_from_slice accepts any key length for HMAC; the Err arm cannot occur
    match alg {
        HashAlg::Sha1 => Hmac::<Sha1>::new_from_slice(key)
            .map(|m| hex::encode(m.chain_update(data).finalize().into_bytes()))
            .unwrap_or_default(),
        HashAlg::Sha256 => Hmac::<Sha256>::new_from_slice(key)
            .map(|m| hex::encode(m.chain_update(data).finalize().into_bytes()))
            .unwrap_or_default(),
    }
}

fn key_bytes(key_hex: &str) -> Result<Vec<u8>, CryptoError> {
    hex::decode(key_hex.trim()).map_err(|_| CryptoError::BadKeyHex)
}

/// pwHash: UPPERCASE hex of `H("<password>:<userSalt>")`, salt used verbatim.
pub fn password_hash(alg: HashAlg, password: &str, salt: &str) -> String {
    digest_upper_hex(alg, format!("{password}:{salt}").as_bytes())
}

/// Credential hash for `getjwt`/`gettoken`: lowercase hex of
/// `HMAC-H(hex_decode(key), "<user>:<pwHash>")`.
pub fn credential_hash(
    alg: HashAlg,
    key_hex: &str,
    user: &str,
    pw_hash: &str,
) -> Result<String, CryptoError> {
    Ok(hmac_hex(
        alg,
        &key_bytes(key_hex)?,
        format!("{user}:{pw_hash}").as_bytes(),
    ))
}

/// Token hash for `authwithtoken`/`refreshjwt`/`checktoken`/`killtoken`: lowercase hex of
/// `HMAC-H(hex_decode(key), token)` (the token only, not `user:token`).
pub fn token_hash(alg: HashAlg, key_hex: &str, token: &str) -> Result<String, CryptoError> {
    Ok(hmac_hex(alg, &key_bytes(key_hex)?, token.as_bytes()))
}

/// Legacy (≤ 9.x) password auth: lowercase hex `HMAC-SHA1(hex_decode(key), "<user>:<password>")`.
pub fn legacy_hash(key_hex: &str, user: &str, password: &str) -> Result<String, CryptoError> {
    Ok(hmac_hex(
        HashAlg::Sha1,
        &key_bytes(key_hex)?,
        format!("{user}:{password}").as_bytes(),
    ))
}

/// Visualisation-password hash for `jdev/sps/ios/<hash>/…`: `HMAC-H(key, UPPER(H("<pw>:<salt>")))`.
pub fn visu_hash(
    alg: HashAlg,
    key_hex: &str,
    visu_password: &str,
    salt: &str,
) -> Result<String, CryptoError> {
    let pw = password_hash(alg, visu_password, salt);
    Ok(hmac_hex(alg, &key_bytes(key_hex)?, pw.as_bytes()))
}

/// An AES-256 session key and IV. `Debug` does not print the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey {
    /// AES-256 key.
    pub key: [u8; 32],
    /// CBC IV, used for every message.
    pub iv: [u8; 16],
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(****)")
    }
}

impl SessionKey {
    /// Fresh random key and IV.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut key = [0u8; 32];
        let mut iv = [0u8; 16];
        rng.fill_bytes(&mut key);
        rng.fill_bytes(&mut iv);
        SessionKey { key, iv }
    }

    /// `"<hexKey>:<hexIV>"`, lowercase (97 bytes), the RSA plaintext of keyexchange.
    pub fn exchange_plaintext(&self) -> String {
        format!("{}:{}", hex::encode(self.key), hex::encode(self.iv))
    }

    /// Parses `"<hexKey>:<hexIV>"` (either case, surrounding whitespace/NULs ignored).
    pub fn parse_exchange_plaintext(s: &str) -> Result<Self, CryptoError> {
        let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        let (k, iv) = s.split_once(':').ok_or(CryptoError::BadSessionKey)?;
        let mut key = [0u8; 32];
        let mut ivb = [0u8; 16];
        hex::decode_to_slice(k, &mut key).map_err(|_| CryptoError::BadSessionKey)?;
        hex::decode_to_slice(iv, &mut ivb).map_err(|_| CryptoError::BadSessionKey)?;
        Ok(SessionKey { key, iv: ivb })
    }
}

/// Parses the `getPublicKey` answer: base64 DER SubjectPublicKeyInfo between CERTIFICATE
/// markers without newlines (the Miniserver's form), a regular `PUBLIC KEY`/`RSA PUBLIC KEY`
/// PEM, or bare base64 (SPKI or PKCS#1). A real X.509 certificate is not supported.
pub fn parse_public_key(text: &str) -> Result<RsaPublicKey, CryptoError> {
    let mut body = text.trim().to_string();
    for marker in [
        "-----BEGIN CERTIFICATE-----",
        "-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----",
        "-----END PUBLIC KEY-----",
        "-----BEGIN RSA PUBLIC KEY-----",
        "-----END RSA PUBLIC KEY-----",
    ] {
        body = body.replace(marker, "");
    }
    body.retain(|c| !c.is_whitespace());
    let der = B64
        .decode(body.as_bytes())
        .map_err(|_| CryptoError::PublicKey("invalid base64".into()))?;
    RsaPublicKey::from_public_key_der(&der)
        .or_else(|_| RsaPublicKey::from_pkcs1_der(&der))
        .map_err(|e| CryptoError::PublicKey(e.to_string()))
}

/// Writes a public key the way the Miniserver serves it (CERTIFICATE markers around base64
/// SPKI DER, no newlines).
pub fn public_key_to_loxone_text(key: &RsaPublicKey) -> Result<String, CryptoError> {
    let der = key
        .to_public_key_der()
        .map_err(|e| CryptoError::PublicKey(e.to_string()))?;
    Ok(format!(
        "-----BEGIN CERTIFICATE-----{}-----END CERTIFICATE-----",
        B64.encode(der.as_bytes())
    ))
}

/// RSA PKCS#1 v1.5-encrypts the session key's exchange plaintext; standard base64, no line
/// breaks (send raw after `jdev/sys/keyexchange/`).
pub fn encrypt_session_key<R: RngCore + CryptoRng>(
    pk: &RsaPublicKey,
    sk: &SessionKey,
    rng: &mut R,
) -> Result<String, CryptoError> {
    let cipher = pk
        .encrypt(rng, Pkcs1v15Encrypt, sk.exchange_plaintext().as_bytes())
        .map_err(|_| CryptoError::Rsa)?;
    Ok(B64.encode(cipher))
}

/// Decrypts a keyexchange blob (base64, optionally URI-encoded as in HTTP `?sk=`).
pub fn decrypt_session_key(key: &RsaPrivateKey, b64: &str) -> Result<SessionKey, CryptoError> {
    let cipher = decode_b64_lenient(b64)?;
    let plain = key
        .decrypt(Pkcs1v15Encrypt, &cipher)
        .map_err(|_| CryptoError::Rsa)?;
    let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::BadSessionKey)?;
    SessionKey::parse_exchange_plaintext(text)
}

/// Base64 after optional percent-decoding; accepts missing `=` padding.
fn decode_b64_lenient(text: &str) -> Result<Vec<u8>, CryptoError> {
    let decoded = percent_decode_str(text.trim()).decode_utf8_lossy();
    let mut s: String = decoded.chars().filter(|c| !c.is_whitespace()).collect();
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    B64.decode(s.as_bytes()).map_err(|_| CryptoError::Base64)
}

/// AES-256-CBC with the session IV and zero padding to a multiple of 16; standard base64.
pub fn aes_encrypt_b64(sk: &SessionKey, plaintext: &[u8]) -> String {
    let mut buf = plaintext.to_vec();
    buf.resize(plaintext.len().div_ceil(16) * 16, 0);
    let len = buf.len();
    let enc = Aes256CbcEnc::new(&sk.key.into(), &sk.iv.into());
    // the buffer is a whole number of blocks, so NoPadding cannot fail
    let cipher = enc
        .encrypt_padded_mut::<NoPadding>(&mut buf, len)
        .map(|c| c.to_vec())
        .unwrap_or_default();
    B64.encode(cipher)
}

/// Decrypts base64 (optionally URI-encoded) AES-256-CBC ciphertext. A length that is not a
/// multiple of 16 is right-padded with zeros (old fenc firmware bug, as LXC does). Trailing
/// zero bytes (padding) are removed from the result.
pub fn aes_decrypt_b64(sk: &SessionKey, b64: &str) -> Result<Vec<u8>, CryptoError> {
    let mut buf = decode_b64_lenient(b64)?;
    if buf.is_empty() {
        return Err(CryptoError::EmptyCiphertext);
    }
    buf.resize(buf.len().div_ceil(16) * 16, 0);
    let dec = Aes256CbcDec::new(&sk.key.into(), &sk.iv.into());
    let plain_len = dec
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .map(|p| p.len())
        .map_err(|_| CryptoError::EmptyCiphertext)?;
    buf.truncate(plain_len);
    let end = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    buf.truncate(end);
    Ok(buf)
}

/// The salt prefix of an encrypted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaltPrefix {
    /// `salt/<salt>/`.
    Salt(String),
    /// `nextSalt/<previous>/<next>/`: rotates to `next`.
    NextSalt {
        /// The salt in use so far.
        previous: String,
        /// The salt to use from now on.
        next: String,
    },
}

impl SaltPrefix {
    /// The salt valid after this command.
    pub fn current(&self) -> &str {
        match self {
            SaltPrefix::Salt(s) => s,
            SaltPrefix::NextSalt { next, .. } => next,
        }
    }
}

/// `encodeURIComponent`'s set: everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// URI-component-encodes (as JavaScript's `encodeURIComponent`).
pub fn uri_component_encode(s: &str) -> String {
    utf8_percent_encode(s, URI_COMPONENT).to_string()
}

/// Encrypts a command: `jdev/sys/enc/<uri-encoded b64>` (or `jdev/sys/fenc/…` when `full`)
/// of AES(`salt/<s>/<command>` or `nextSalt/<a>/<b>/<command>`), zero padded.
pub fn encrypt_command(sk: &SessionKey, salt: &SaltPrefix, command: &str, full: bool) -> String {
    let plain = match salt {
        SaltPrefix::Salt(s) => format!("salt/{s}/{command}"),
        SaltPrefix::NextSalt { previous, next } => format!("nextSalt/{previous}/{next}/{command}"),
    };
    let cipher = aes_encrypt_b64(sk, plain.as_bytes());
    let verb = if full { "fenc" } else { "enc" };
    format!("jdev/sys/{verb}/{}", uri_component_encode(&cipher))
}

/// Splits `jdev/sys/enc/<cipher>` or `jdev/sys/fenc/<cipher>` (also `dev/…`, and an HTTP
/// `?sk=…` query is cut off) into (`full`, cipher). `None` for other commands.
pub fn split_encrypted_command(command: &str) -> Option<(bool, &str)> {
    let c = command.strip_prefix('j').unwrap_or(command);
    let (full, rest) = if let Some(r) = c.strip_prefix("dev/sys/enc/") {
        (false, r)
    } else {
        (true, c.strip_prefix("dev/sys/fenc/")?)
    };
    Some((full, rest.split('?').next().unwrap_or_default()))
}

/// A decrypted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecryptedCommand {
    /// The salt prefix it carried.
    pub salt: SaltPrefix,
    /// The inner command (`jdev/sys/getjwt/…`, `authwithtoken/…`).
    pub command: String,
}

/// Decrypts the cipher part of `jdev/sys/enc|fenc/<cipher>` (URI-encoded or not; a full
/// `jdev/sys/enc/…` command is accepted too). Cuts the plaintext at the first NUL and requires
/// a `salt/` or `nextSalt/` prefix.
pub fn decrypt_command(
    sk: &SessionKey,
    uri_encoded_cipher: &str,
) -> Result<DecryptedCommand, CryptoError> {
    let cipher = split_encrypted_command(uri_encoded_cipher).map_or(uri_encoded_cipher, |(_, c)| c);
    let plain = aes_decrypt_b64(sk, cipher)?;
    let plain = plain.split(|&b| b == 0).next().unwrap_or_default();
    let text = std::str::from_utf8(plain).map_err(|_| CryptoError::BadUtf8)?;
    let (salt, command) = if let Some(rest) = text.strip_prefix("salt/") {
        let (s, cmd) = rest.split_once('/').ok_or(CryptoError::MissingSalt)?;
        (SaltPrefix::Salt(s.to_string()), cmd)
    } else if let Some(rest) = text.strip_prefix("nextSalt/") {
        let (prev, rest) = rest.split_once('/').ok_or(CryptoError::MissingSalt)?;
        let (next, cmd) = rest.split_once('/').ok_or(CryptoError::MissingSalt)?;
        (
            SaltPrefix::NextSalt {
                previous: prev.to_string(),
                next: next.to_string(),
            },
            cmd,
        )
    } else {
        return Err(CryptoError::MissingSalt);
    };
    Ok(DecryptedCommand {
        salt,
        command: command.to_string(),
    })
}

/// A fresh salt: 16 random bytes as 32 lowercase hex digits.
pub fn random_salt<R: RngCore>(rng: &mut R) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A fresh one-time key in the Miniserver's format: 20 random bytes as 40 uppercase hex
/// ASCII characters, hex-encoded again (80 hex digits). For the simulator.
pub fn random_one_time_key<R: RngCore>(rng: &mut R) -> String {
    let mut b = [0u8; 20];
    rng.fill_bytes(&mut b);
    hex::encode(hex::encode_upper(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rsa::pkcs1::DecodeRsaPrivateKey;

    const KEY: &str =
        "32353930373135363644424636333638334131414441394243393939343834303141324531413045";
    const SALT: &str = "31346632393637342D303239312D323837622D66666666613532346235633538306662";

    fn doc_session_key() -> SessionKey {
        let mut key = [0u8; 32];
        let mut iv = [0u8; 16];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8;
        }
        for (i, b) in iv.iter_mut().enumerate() {
            *b = i as u8;
        }
        SessionKey { key, iv }
    }

    fn test_private_key() -> RsaPrivateKey {
        RsaPrivateKey::from_pkcs1_pem(include_str!(
            "../../tests/fixtures/loxone/test-rsa-1024.pem"
        ))
        .unwrap()
    }

    #[test]
    fn getkey2_sha1_vector() {
        let pw = password_hash(HashAlg::Sha1, "pass", SALT);
        assert_eq!(pw, "75C4C904ECA6C7BC82B9D65D4C7FA94C3775CBCF");
        assert_eq!(
            credential_hash(HashAlg::Sha1, KEY, "user", &pw).unwrap(),
            "cf72cfeeb893053157bcaee60eaf8a141a34b765"
        );
    }

    #[test]
    fn getkey2_sha256_vector() {
        let pw = password_hash(HashAlg::Sha256, "pass", SALT);
        assert_eq!(
            pw,
            "CB6EE76C8E5403AA303D353C4F2883700BEF489BDB8412D522C80507DF9394E4"
        );
        assert_eq!(
            credential_hash(HashAlg::Sha256, KEY, "user", &pw).unwrap(),
            "49ea4ce1af1301f478b365fc88c13eba4883bff2d10f4eafcc4613e7b2eed1c0"
        );
    }

    #[test]
    fn token_and_legacy_hashes_use_decoded_key_once() {
        // HMAC key = ASCII "259071566DBF63683A1ADA9BC99948401A2E1A0E"
        let ascii_key = hex::decode(KEY).unwrap();
        let expect = {
            let m = Hmac::<Sha1>::new_from_slice(&ascii_key).unwrap();
            hex::encode(m.chain_update(b"tok").finalize().into_bytes())
        };
        assert_eq!(token_hash(HashAlg::Sha1, KEY, "tok").unwrap(), expect);
        assert_ne!(
            token_hash(HashAlg::Sha256, KEY, "tok").unwrap(),
            expect,
            "alg must matter"
        );
        assert_eq!(token_hash(HashAlg::Sha256, KEY, "tok").unwrap().len(), 64);
        assert_eq!(
            legacy_hash(KEY, "user", "pass").unwrap(),
            hmac_hex(HashAlg::Sha1, &ascii_key, b"user:pass")
        );
        assert_eq!(
            token_hash(HashAlg::Sha1, "zz", "t"),
            Err(CryptoError::BadKeyHex)
        );
        let v = visu_hash(HashAlg::Sha1, KEY, "pass", SALT).unwrap();
        assert_eq!(
            v,
            hmac_hex(
                HashAlg::Sha1,
                &ascii_key,
                b"75C4C904ECA6C7BC82B9D65D4C7FA94C3775CBCF"
            )
        );
    }

    #[test]
    fn hash_alg_names() {
        assert_eq!(HashAlg::from_loxone(None), HashAlg::Sha1);
        assert_eq!(HashAlg::from_loxone(Some("SHA1")), HashAlg::Sha1);
        assert_eq!(HashAlg::from_loxone(Some("SHA256")), HashAlg::Sha256);
        assert_eq!(HashAlg::from_loxone(Some("sha256")), HashAlg::Sha256);
        assert_eq!(HashAlg::Sha256.as_loxone(), "SHA256");
    }

    #[test]
    fn aes_worked_example() {
        let sk = doc_session_key();
        let plain = b"salt/a1b2/jdev/sps/enablebinstatusupdate";
        assert_eq!(
            aes_encrypt_b64(&sk, plain),
            "dBKn5S/e7bU5hpRFfNOrhIFWrjCc4W5W6OVr3gd+RT5jNPifdoLfuWHv1DI/11yY"
        );
        let wire = encrypt_command(
            &sk,
            &SaltPrefix::Salt("a1b2".into()),
            "jdev/sps/enablebinstatusupdate",
            false,
        );
        assert_eq!(
            wire,
            "jdev/sys/enc/dBKn5S%2Fe7bU5hpRFfNOrhIFWrjCc4W5W6OVr3gd%2BRT5jNPifdoLfuWHv1DI%2F11yY"
        );
        assert_eq!(
            sk.exchange_plaintext(),
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f:000102030405060708090a0b0c0d0e0f"
        );
        let d = decrypt_command(&sk, &wire).unwrap();
        assert_eq!(d.salt, SaltPrefix::Salt("a1b2".into()));
        assert_eq!(d.command, "jdev/sps/enablebinstatusupdate");
        let (full, cipher) = split_encrypted_command(&wire).unwrap();
        assert!(!full);
        assert_eq!(decrypt_command(&sk, cipher).unwrap(), d);
        assert_eq!(
            aes_decrypt_b64(
                &sk,
                "dBKn5S/e7bU5hpRFfNOrhIFWrjCc4W5W6OVr3gd+RT5jNPifdoLfuWHv1DI/11yY"
            )
            .unwrap(),
            plain
        );
    }

    #[test]
    fn fenc_next_salt_round_trip_and_nul_pkcs7_form() {
        let sk = SessionKey::generate(&mut StdRng::seed_from_u64(7));
        let salt = SaltPrefix::NextSalt {
            previous: "aa".into(),
            next: "bb".into(),
        };
        let wire = encrypt_command(&sk, &salt, "jdev/sys/getjwt/h/u/4/x/y", true);
        assert!(wire.starts_with("jdev/sys/fenc/"));
        assert_eq!(split_encrypted_command(&wire).map(|(f, _)| f), Some(true));
        let d = decrypt_command(&sk, &wire).unwrap();
        assert_eq!(d.salt, salt);
        assert_eq!(d.salt.current(), "bb");
        assert_eq!(d.command, "jdev/sys/getjwt/h/u/4/x/y");
        // a client that appends NUL then PKCS#7-pads (PYLOX/OH style)
        let mut p = b"salt/ab/keepalive\0".to_vec();
        let pad = 16 - p.len() % 16;
        p.extend(std::iter::repeat_n(pad as u8, pad));
        let c = aes_encrypt_b64(&sk, &p);
        let d = decrypt_command(&sk, &c).unwrap();
        assert_eq!(d.command, "keepalive");
        // no salt prefix
        let c = aes_encrypt_b64(&sk, b"jdev/sps/io/x/on");
        assert_eq!(decrypt_command(&sk, &c), Err(CryptoError::MissingSalt));
        assert_eq!(aes_decrypt_b64(&sk, ""), Err(CryptoError::EmptyCiphertext));
        assert_eq!(aes_decrypt_b64(&sk, "!!!"), Err(CryptoError::Base64));
    }

    #[test]
    fn aes_odd_cipher_length_is_padded_not_rejected() {
        let sk = doc_session_key();
        let full = B64
            .decode("dBKn5S/e7bU5hpRFfNOrhIFWrjCc4W5W6OVr3gd+RT5jNPifdoLfuWHv1DI/11yY")
            .unwrap();
        let cut = B64.encode(&full[..40]);
        let plain = aes_decrypt_b64(&sk, &cut).unwrap();
        // the first two blocks still decrypt correctly
        assert_eq!(&plain[..32], b"salt/a1b2/jdev/sps/enablebinstat");
    }

    #[test]
    fn session_key_text() {
        let sk = doc_session_key();
        let up = sk.exchange_plaintext().to_uppercase();
        assert_eq!(SessionKey::parse_exchange_plaintext(&up).unwrap(), sk);
        assert_eq!(
            SessionKey::parse_exchange_plaintext("00:11"),
            Err(CryptoError::BadSessionKey)
        );
        assert_eq!(
            SessionKey::parse_exchange_plaintext("nocolon"),
            Err(CryptoError::BadSessionKey)
        );
        assert_eq!(format!("{sk:?}"), "SessionKey(****)");
    }

    #[test]
    fn rsa_round_trip_and_loxone_key_text() {
        let private = test_private_key();
        let public = RsaPublicKey::from(&private);
        let text = public_key_to_loxone_text(&public).unwrap();
        assert_eq!(
            text,
            include_str!("../../tests/fixtures/loxone/test-rsa-1024.loxone-pubkey.txt")
        );
        assert!(
            text.starts_with("-----BEGIN CERTIFICATE-----MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQ")
        );
        assert_eq!(parse_public_key(&text).unwrap(), public);
        assert_eq!(
            parse_public_key(include_str!(
                "../../tests/fixtures/loxone/test-rsa-1024.pub.pem"
            ))
            .unwrap(),
            public
        );
        assert!(matches!(
            parse_public_key("-----BEGIN CERTIFICATE-----QUJD-----END CERTIFICATE-----"),
            Err(CryptoError::PublicKey(_))
        ));

        let mut rng = StdRng::seed_from_u64(1);
        let sk = SessionKey::generate(&mut rng);
        let blob = encrypt_session_key(&public, &sk, &mut rng).unwrap();
        assert_eq!(blob.len(), 172);
        assert_eq!(decrypt_session_key(&private, &blob).unwrap(), sk);
        // URI-encoded (HTTP ?sk=) form too
        assert_eq!(
            decrypt_session_key(&private, &uri_component_encode(&blob)).unwrap(),
            sk
        );
        assert_eq!(decrypt_session_key(&private, "AAAA"), Err(CryptoError::Rsa));
    }

    #[test]
    fn openssl_encrypted_session_key_decrypts() {
        let private = test_private_key();
        let blob = include_str!("../../tests/fixtures/loxone/openssl-session-key.b64");
        assert_eq!(
            decrypt_session_key(&private, blob).unwrap(),
            doc_session_key()
        );
    }

    #[test]
    fn salts_and_keys() {
        let mut rng = StdRng::seed_from_u64(3);
        let s = random_salt(&mut rng);
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(s, random_salt(&mut rng));
        let k = random_one_time_key(&mut rng);
        assert_eq!(k.len(), 80);
        let inner = String::from_utf8(hex::decode(&k).unwrap()).unwrap();
        assert!(inner.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
