//! The `--web.config.file` format of the Prometheus exporter-toolkit
//! (`docs/web-configuration.md`; team doc otlp-and-prometheus.md §4.1), parsed and validated
//! into [`WebConfig`].
//!
//! Pure: takes the file's text and its path (for messages and for resolving relative file
//! names against the file's directory, as the toolkit does); reading the referenced
//! certificate files is [`super::tls`]'s job. Unknown keys are errors. Keys the toolkit knows
//! but this exporter does not implement (`cipher_suites`, `curve_preferences`,
//! `client_allowed_sans`, `rate_limit`, client auth without verification) are errors that say
//! so, rather than being silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::error::WebError;
use crate::secret::Secret;

/// A validated web configuration.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// TLS on the listener; `None` serves plain HTTP.
    pub tls: Option<TlsConfig>,
    /// User name → bcrypt hash. Empty: no authentication.
    pub basic_auth_users: BTreeMap<String, Secret>,
    /// Extra response headers (`http_server_config.headers`), added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// TLS settings of the listener.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PemSource,
    /// Server private key (PEM).
    pub key: PemSource,
    /// CA bundle that client certificates must chain to (PEM).
    pub client_ca: Option<PemSource>,
    /// Whether client certificates are asked for and required.
    pub client_auth: ClientAuth,
    /// Lowest protocol version accepted.
    pub min_version: TlsVersion,
    /// Highest protocol version accepted.
    pub max_version: TlsVersion,
    /// Choose the cipher suite by the server's preference (toolkit default true).
    pub prefer_server_cipher_suites: bool,
}

/// Where a PEM document comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PemSource {
    /// A file, already resolved against the web config file's directory.
    File(PathBuf),
    /// Inline PEM text from the YAML (`cert`, `key`, `client_ca`).
    Inline(Secret),
}

impl PemSource {
    /// The file path, if this is a file.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PemSource::File(p) => Some(p),
            PemSource::Inline(_) => None,
        }
    }
}

/// Client certificate policy (`client_auth_type`), limited to the verifying variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (default).
    None,
    /// `VerifyClientCertIfGiven`: optional, verified against the client CA when sent.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`: mutual TLS.
    RequireAndVerify,
}

/// TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// Response headers the toolkit allows, with the values it allows (`None`: any value).
const ALLOWED_HEADERS: [(&str, Option<&[&str]>); 5] = [
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    #[serde(default, deserialize_with = "string_pairs")]
    basic_auth_users: Option<Vec<(String, String)>>,
    rate_limit: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    client_ca_file: Option<String>,
    client_ca: Option<String>,
    client_auth_type: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Accepted for compatibility; this exporter serves HTTP/1.1 only.
    #[allow(dead_code)]
    http2: Option<bool>,
    #[serde(default, deserialize_with = "string_pairs")]
    headers: Option<Vec<(String, String)>>,
}

/// A YAML mapping of scalars as (key, value) texts in file order, repeats kept, so the
/// caller can refuse a repeated key with a message of its own: into a `BTreeMap` serde keeps
/// the last entry, and a second `basic_auth_users` line for the same user silently replaced
/// the first password. Numbers and booleans count as their text.
fn string_pairs<'de, D>(d: D) -> Result<Option<Vec<(String, String)>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Option<Vec<(String, String)>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of names to strings")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            use serde::de::Error as _;
            use serde_yaml::Value;
            let text = |v: Value| match v {
                Value::String(s) => Some(s),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            };
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<Value, Value>()? {
                let key = text(k).ok_or_else(|| A::Error::custom("a key is not a name"))?;
                // the key is a user or header name; the value is never shown
                let value = text(v).ok_or_else(|| {
                    A::Error::custom(format!("the value of `{key}` is not a string"))
                })?;
                out.push((key, value));
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(Pairs)
}

/// A value given where one of a few names is allowed, quoted when it looks like a
/// mistyped name; anything else (a bcrypt hash or key text in the wrong place) is not
/// shown.
fn shown_choice(value: &str) -> String {
    let name_like = value.len() <= 40
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if name_like {
        format!("{value:?}")
    } else {
        "(not shown: it does not look like a name and may be a secret)".into()
    }
}

/// A serde message with every `"…"` span emptied: serde quotes a value of the wrong type
/// (`invalid type: string "prometheus:$2b$10$…", expected a map`), and in this file that
/// may be a password hash or a private key. Field names stay (serde puts them in
/// backticks).
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            out.push_str(if inside { "…\"" } else { "\"" });
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// Parses and validates the text of a web configuration file. `path` is used in messages and
/// as the base for relative file names. An empty file is valid (plain HTTP, no auth).
pub fn parse_web_config(text: &str, path: &Path) -> Result<WebConfig, WebError> {
    if let Some(message) = crate::config::yaml_nesting_problem(text) {
        return Err(WebError::Syntax {
            path: path.to_path_buf(),
            message,
        });
    }
    let raw: Option<RawWebConfig> = serde_yaml::from_str(text).map_err(|e| WebError::Syntax {
        path: path.to_path_buf(),
        message: without_quoted_values(&e.to_string()),
    })?;
    let raw = raw.unwrap_or_default();
    let field_err = |field: &str, message: String| WebError::Field {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let base = path.parent().unwrap_or_else(|| Path::new(""));

    if raw.rate_limit.is_some() {
        return Err(field_err(
            "rate_limit",
            "not supported by loxone-exporter; remove it".into(),
        ));
    }

    let tls = match raw.tls_server_config {
        Some(t) => parse_tls(t, base, &field_err)?,
        None => None,
    };

    let mut basic_auth_users = BTreeMap::new();
    for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
        let field = format!("basic_auth_users.{user}");
        if user.is_empty() {
            return Err(field_err("basic_auth_users", "empty user name".into()));
        }
        if let Some((name, _)) = user.split_once(':') {
            // `user:password` pasted as the key, htpasswd style: never show what follows ':'
            return Err(field_err(
                &format!("basic_auth_users.{name}:****"),
                "user names cannot contain ':' (HTTP basic auth separator); the key is the user name alone, its value the bcrypt hash".into(),
            ));
        }
        if basic_auth_users.contains_key(&user) {
            return Err(field_err(
                &field,
                "given twice; each user needs exactly one entry (the second would replace the first)"
                    .into(),
            ));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            // The hash itself is not echoed.
            return Err(field_err(
                &field,
                "not a bcrypt hash (create one with `htpasswd -nBC 10 \"\" | tr -d ':'`)".into(),
            ));
        }
        basic_auth_users.insert(user, Secret::new(hash));
    }

    let mut headers = Vec::new();
    let http = raw.http_server_config.unwrap_or_default();
    for (name, value) in http.headers.unwrap_or_default() {
        let field = format!("http_server_config.headers.{name}");
        let Some((canonical, allowed)) = ALLOWED_HEADERS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        else {
            let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
            return Err(field_err(
                &field,
                format!(
                    "this header cannot be configured (allowed: {})",
                    names.join(", ")
                ),
            ));
        };
        let name = HeaderName::from_static(lower(canonical));
        if headers.iter().any(|(n, _)| *n == name) {
            return Err(field_err(
                &field,
                format!(
                    "{canonical} given twice (header names ignore case); each header needs exactly one entry"
                ),
            ));
        }
        if let Some(allowed) = allowed {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(value.trim())) {
                return Err(field_err(
                    &field,
                    format!(
                        "invalid value {} (allowed: {})",
                        shown_choice(&value),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let header_value = HeaderValue::from_str(&value)
            .map_err(|_| field_err(&field, "value is not a valid header value".into()))?;
        headers.push((name, header_value));
    }

    Ok(WebConfig {
        tls,
        basic_auth_users,
        headers,
    })
}

/// Lower-case static header names (HeaderName::from_static requires lower case).
fn lower(canonical: &str) -> &'static str {
    match canonical {
        "Strict-Transport-Security" => "strict-transport-security",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-Frame-Options" => "x-frame-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "content-security-policy",
    }
}

fn parse_tls(
    t: RawTls,
    base: &Path,
    field_err: &dyn Fn(&str, String) -> WebError,
) -> Result<Option<TlsConfig>, WebError> {
    let unsupported = |field: &str, what: &str| {
        field_err(
            &format!("tls_server_config.{field}"),
            format!("not supported by loxone-exporter ({what}); remove it"),
        )
    };
    if t.cipher_suites.is_some() {
        return Err(unsupported(
            "cipher_suites",
            "rustls offers only modern AEAD suites",
        ));
    }
    if t.curve_preferences.is_some() {
        return Err(unsupported(
            "curve_preferences",
            "rustls chooses the groups",
        ));
    }
    if t.client_allowed_sans.is_some() {
        return Err(unsupported(
            "client_allowed_sans",
            "restrict clients with a dedicated client_ca_file instead",
        ));
    }

    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let pem = |file: Option<String>,
               inline: Option<String>,
               file_key: &str,
               inline_key: &str|
     -> Result<Option<PemSource>, WebError> {
        match (nonempty(file), nonempty(inline)) {
            (Some(_), Some(_)) => Err(field_err(
                &format!("tls_server_config.{file_key}"),
                format!("set only one of {file_key} and {inline_key}"),
            )),
            (Some(f), None) => Ok(Some(PemSource::File(base.join(f)))),
            (None, Some(text)) => Ok(Some(PemSource::Inline(Secret::new(text)))),
            (None, None) => Ok(None),
        }
    };
    let cert = pem(t.cert_file, t.cert, "cert_file", "cert")?;
    let key = pem(t.key_file, t.key, "key_file", "key")?;
    let client_ca = pem(t.client_ca_file, t.client_ca, "client_ca_file", "client_ca")?;
    let client_auth = match t.client_auth_type.as_deref().map(str::trim) {
        None | Some("") | Some("NoClientCert") => ClientAuth::None,
        Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerify,
        Some(v @ ("RequestClientCert" | "RequireAnyClientCert")) => {
            return Err(field_err(
                "tls_server_config.client_auth_type",
                format!(
                    "{v} accepts unverified client certificates and is not supported; \
                     use RequireAndVerifyClientCert or VerifyClientCertIfGiven with client_ca_file"
                ),
            ))
        }
        Some(v) => {
            return Err(field_err(
                "tls_server_config.client_auth_type",
                format!(
                    "invalid value {} (allowed: NoClientCert, VerifyClientCertIfGiven, \
                     RequireAndVerifyClientCert)",
                    shown_choice(v)
                ),
            ))
        }
    };
    let min_version = parse_version(t.min_version, TlsVersion::Tls12, "min_version", field_err)?;
    let max_version = parse_version(t.max_version, TlsVersion::Tls13, "max_version", field_err)?;

    let (cert, key) = match (cert, key) {
        (None, None) => {
            // The toolkit serves plain HTTP when no certificate is configured; anything else
            // set in the section would then be silently ignored, so say so instead.
            if client_ca.is_some() || client_auth != ClientAuth::None {
                return Err(field_err(
                    "tls_server_config.cert_file",
                    "required when client certificates are configured".into(),
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(field_err(
                "tls_server_config.key_file",
                "required when cert_file (or cert) is set".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(field_err(
                "tls_server_config.cert_file",
                "required when key_file (or key) is set".into(),
            ))
        }
        (Some(c), Some(k)) => (c, k),
    };
    if min_version > max_version {
        return Err(field_err(
            "tls_server_config.min_version",
            "is higher than max_version".into(),
        ));
    }
    match (client_auth, &client_ca) {
        (ClientAuth::None, Some(_)) => {
            return Err(field_err(
                "tls_server_config.client_auth_type",
                "client_ca_file is set but client_auth_type is NoClientCert; \
                 set RequireAndVerifyClientCert (or VerifyClientCertIfGiven)"
                    .into(),
            ))
        }
        (ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify, None) => {
            return Err(field_err(
                "tls_server_config.client_ca_file",
                "required by this client_auth_type".into(),
            ))
        }
        _ => {}
    }
    Ok(Some(TlsConfig {
        cert,
        key,
        client_ca,
        client_auth,
        min_version,
        max_version,
        prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
    }))
}

fn parse_version(
    value: Option<String>,
    default: TlsVersion,
    key: &str,
    field_err: &dyn Fn(&str, String) -> WebError,
) -> Result<TlsVersion, WebError> {
    let field = format!("tls_server_config.{key}");
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(v @ ("TLS10" | "TLS11")) => Err(field_err(
            &field,
            format!("{v} is not supported (insecure); use TLS12 or TLS13"),
        )),
        Some(v) => Err(field_err(
            &field,
            format!("invalid value {} (allowed: TLS12, TLS13)", shown_choice(v)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

    #[test]
    fn wrong_types_never_echo_a_hash_or_a_key() {
        for text in [
            "basic_auth_users: prometheus:$2b$10$1OB7abcdefSECRETHASH\n",
            "tls_server_config: \"-----BEGIN PRIVATE KEY----- MIIEvSECRETKEY\"\n",
            "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: $2b$10$SECRETHASH\n",
        ] {
            match parse_web_config(text, Path::new("w.yml")) {
                Err(WebError::Syntax { message, .. } | WebError::Field { message, .. }) => {
                    assert!(!message.contains("SECRET"), "{message}");
                    assert!(
                        message.contains("invalid type") || message.contains("invalid value"),
                        "{message}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn deeply_nested_brackets_are_refused_before_parsing() {
        // the file is read again on every request: a parse taking seconds would stall each
        let text = format!("headers: {}{}", "[".repeat(50_000), "]".repeat(50_000));
        match parse_web_config(&text, Path::new("w.yml")) {
            Err(WebError::Syntax { message, .. }) => {
                assert!(message.contains("nested more than 64"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    fn parse(text: &str) -> Result<WebConfig, WebError> {
        parse_web_config(text, Path::new("/etc/lx/web.yml"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_user_or_header_given_twice_is_refused_without_its_hash() {
        let text = format!(
            "basic_auth_users:\n  alice: '{HASH}'\n  bob: '{HASH}'\n  alice: '$2y$10$SECRETSECONDHASHxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'\n"
        );
        let e = err(&text);
        assert!(
            e.contains("basic_auth_users.alice") && e.contains("given twice"),
            "{e}"
        );
        assert!(!e.contains("SECRET") && !e.contains("QOauh"), "{e}");
        // the same name as a number and as a string is the same user
        let e = err(&format!(
            "basic_auth_users:\n  1: '{HASH}'\n  '1': '{HASH}'\n"
        ));
        assert!(e.contains("given twice"), "{e}");
        // header names ignore case
        let e = err("http_server_config:\n  headers:\n    x-frame-options: sameorigin\n    X-Frame-Options: deny\n");
        assert!(e.contains("X-Frame-Options given twice"), "{e}");
        // a value that is no string names its key, not its content
        let e = err("basic_auth_users:\n  alice: [SECRETLIST]\n");
        assert!(e.contains("`alice`") && !e.contains("SECRET"), "{e}");
        // one of each still loads, in any spelling
        let c = parse(&format!(
            "basic_auth_users:\n  alice: '{HASH}'\n  bob: '{HASH}'\n"
        ))
        .unwrap();
        assert_eq!(c.basic_auth_users.len(), 2);
        assert!(parse("basic_auth_users:\nhttp_server_config:\n  headers:\n").is_ok());
        assert!(parse("basic_auth_users: ~\nhttp_server_config:\n  headers: {}\n").is_ok());
    }

    #[test]
    fn empty_file_is_plain_http() {
        let c = parse("").unwrap();
        assert!(c.tls.is_none() && c.basic_auth_users.is_empty() && c.headers.is_empty());
        let c = parse("# only a comment\n").unwrap();
        assert!(c.tls.is_none());
    }

    #[test]
    fn full_config_relative_paths_resolve_against_file_dir() {
        let c = parse(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  \
             client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n  \
             min_version: TLS13\nhttp_server_config:\n  http2: false\n  headers:\n    \
             X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n\
             basic_auth_users:\n  prometheus: '{HASH}'\n"
        ))
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PemSource::File("/etc/lx/server.crt".into()));
        assert_eq!(tls.key, PemSource::File("/abs/server.key".into()));
        assert_eq!(
            tls.client_ca,
            Some(PemSource::File("/etc/lx/ca.crt".into()))
        );
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerify);
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.max_version, TlsVersion::Tls13);
        assert_eq!(c.basic_auth_users.len(), 1);
        assert_eq!(c.basic_auth_users["prometheus"].expose(), HASH);
        let names: Vec<&str> = c.headers.iter().map(|(n, _)| n.as_str()).collect();
        // in the file's order
        assert_eq!(names, ["x-frame-options", "strict-transport-security"]);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        assert!(err("tls_server_config:\n  cert_fil: a\n").contains("cert_fil"));
        assert!(err("basic_auth:\n  a: b\n").contains("basic_auth"));
        assert!(err("http_server_config:\n  header: {}\n").contains("header"));
    }

    #[test]
    fn bad_hash_names_the_user_and_hides_the_value() {
        let e = err("basic_auth_users:\n  alice: plaintext-password\n");
        assert!(e.contains("basic_auth_users.alice"), "{e}");
        assert!(!e.contains("plaintext-password"), "{e}");
    }

    #[test]
    fn tls_field_rules() {
        let e = err("tls_server_config:\n  cert_file: a\n");
        assert!(e.contains("tls_server_config.key_file"), "{e}");
        let e = err("tls_server_config:\n  key_file: a\n");
        assert!(e.contains("tls_server_config.cert_file"), "{e}");
        let e = err("tls_server_config:\n  cert_file: a\n  cert: b\n  key_file: c\n");
        assert!(e.contains("only one of cert_file and cert"), "{e}");
        let e = err("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n");
        assert!(
            e.contains("tls_server_config.min_version") && e.contains("TLS12"),
            "{e}"
        );
        let e = err("tls_server_config:\n  cert_file: a\n  key_file: b\n  max_version: TLS4\n");
        assert!(e.contains("tls_server_config.max_version"), "{e}");
        let e = err(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n",
        );
        assert!(e.contains("higher than max_version"), "{e}");
        let e = err("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: ca\n");
        assert!(e.contains("client_auth_type"), "{e}");
        let e = err(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
        );
        assert!(e.contains("tls_server_config.client_ca_file"), "{e}");
        let e = err(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
        );
        assert!(e.contains("not supported"), "{e}");
        let e = err("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n");
        assert!(e.contains("tls_server_config.cipher_suites"), "{e}");
        let e = err("tls_server_config:\n  client_ca_file: ca\n");
        assert!(e.contains("tls_server_config.cert_file"), "{e}");
        assert!(err("rate_limit:\n  interval: 1s\n").contains("rate_limit"));
    }

    #[test]
    fn empty_tls_section_means_plain_http() {
        assert!(parse("tls_server_config: {}\n").unwrap().tls.is_none());
    }

    #[test]
    fn header_rules() {
        let e = err("http_server_config:\n  headers:\n    Set-Cookie: a\n");
        assert!(e.contains("http_server_config.headers.Set-Cookie"), "{e}");
        let e = err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
        assert!(e.contains("deny, sameorigin"), "{e}");
        let c = parse("http_server_config:\n  headers:\n    x-content-type-options: nosniff\n")
            .unwrap();
        assert_eq!(c.headers[0].0.as_str(), "x-content-type-options");
    }

    #[test]
    fn user_with_colon_rejected_without_showing_what_follows_it() {
        let e = err(&format!(
            "basic_auth_users:\n  'prometheus:WebPw-Secret-11': '{HASH}'\n"
        ));
        assert!(e.contains("basic_auth_users.prometheus:****"), "{e}");
        assert!(e.contains("cannot contain ':'"), "{e}");
        assert!(!e.contains("WebPw"), "{e}");
    }

    #[test]
    fn inline_key_is_not_printed_by_debug() {
        let c = parse("tls_server_config:\n  cert: CERTPEM\n  key: SECRETKEYMATERIAL\n").unwrap();
        assert!(!format!("{c:?}").contains("SECRETKEYMATERIAL"));
    }
}
