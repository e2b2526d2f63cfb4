//! The `LL` text envelope of command answers, the `jdev/cfg/api(Key)` pseudo-JSON and the
//! status codes (protocol doc §2.2, §2.3, §1.4).
//!
//! Owns: reading an answer whatever its quirks (`Code` or `code`, string or number, value of
//! any JSON type, extra keys ignored, controls echoed as `jdev/`, `dev/` or with a salt prefix)
//! and writing answers in each of the observed styles (for the simulator). Does not own:
//! matching answers to commands (the session) nor decrypting `fenc` answers (see
//! [`super::crypto`]).

use serde_json::Value;

/// A parsed `{"LL": {...}}` answer. Its `Debug` shows neither the value (a token, a key)
/// nor the echoed command's arguments (a hash, a token): only the command's first three
/// path segments and the value's JSON kind.
#[derive(Clone, PartialEq)]
pub struct LlResponse {
    /// The echoed command as sent by the Miniserver (see [`normalize_control`]).
    pub control: String,
    /// Status code (200 = OK).
    pub code: u16,
    /// The `value` field (`Null` when absent).
    pub value: Value,
}

impl std::fmt::Debug for LlResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let command: Vec<&str> = self.control.splitn(4, '/').collect();
        let shown = match command.len() {
            4 => format!("{}/****", command[..3].join("/")),
            _ => command.join("/"),
        };
        let kind = match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "text",
            Value::Array(_) => "a list",
            Value::Object(_) => "an object",
        };
        f.debug_struct("LlResponse")
            .field("control", &shown)
            .field("code", &self.code)
            .field("value", &format_args!("<{kind}>"))
            .finish()
    }
}

impl LlResponse {
    /// The value as text: a string as-is, a number or bool rendered, otherwise `None`.
    pub fn value_text(&self) -> Option<String> {
        match &self.value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The value as a JSON object: an object as-is, or a string holding JSON parsed on
    /// demand (some answers nest JSON in a string).
    pub fn value_object(&self) -> Option<serde_json::Map<String, Value>> {
        match &self.value {
            Value::Object(m) => Some(m.clone()),
            Value::String(s) => match serde_json::from_str(s) {
                Ok(Value::Object(m)) => Some(m),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Why a text is not a usable LL answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON.
    #[error("answer is not JSON: {0}")]
    Json(String),
    /// JSON without an `LL` object.
    #[error("answer has no LL object")]
    NoEnvelope,
    /// No `Code`/`code`, or one that is not a status number.
    #[error("answer has no usable status code")]
    BadCode,
    /// A required field is missing (api/apiKey value).
    #[error("missing field {0:?}")]
    MissingField(&'static str),
}

/// Parses an LL answer. Accepts `Code` or `code`, as string or number; `control` missing is
/// treated as empty. When the text is not JSON, a second attempt un-escapes `\"` (a
/// Miniserver bug LXC works around).
pub fn parse_ll(text: &str) -> Result<LlResponse, EnvelopeError> {
    let doc: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(first) => serde_json::from_str(&text.replace("\\\"", "\""))
            .map_err(|_| EnvelopeError::Json(first.to_string()))?,
    };
    let ll = doc
        .get("LL")
        .and_then(Value::as_object)
        .ok_or(EnvelopeError::NoEnvelope)?;
    let code = ll
        .get("Code")
        .or_else(|| ll.get("code"))
        .and_then(code_value)
        .ok_or(EnvelopeError::BadCode)?;
    let control = match ll.get("control") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let value = ll.get("value").cloned().unwrap_or(Value::Null);
    Ok(LlResponse {
        control,
        code,
        value,
    })
}

fn code_value(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// How [`encode_ll`] writes the status key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodeStyle {
    /// `"Code": "200"` (most answers).
    #[default]
    UpperString,
    /// `"Code": 200`.
    UpperNumber,
    /// `"code": "401"`.
    LowerString,
    /// `"code": 200` (getkey2 capture).
    LowerNumber,
}

/// Writes an LL answer: `{"LL": {"control": …, "value": …, "Code": …}}`.
pub fn encode_ll(control: &str, code: u16, value: &Value, style: CodeStyle) -> String {
    let control = Value::String(control.to_string());
    let (key, quoted) = match style {
        CodeStyle::UpperString => ("Code", true),
        CodeStyle::UpperNumber => ("Code", false),
        CodeStyle::LowerString => ("code", true),
        CodeStyle::LowerNumber => ("code", false),
    };
    let code = if quoted {
        format!("\"{code}\"")
    } else {
        code.to_string()
    };
    format!("{{\"LL\": {{\"control\": {control}, \"value\": {value}, \"{key}\": {code}}}}}")
}

/// Canonical form of a command or echoed control, for comparing the two: cut at the first
/// NUL, strip a `salt/<s>/` or `nextSalt/<a>/<b>/` prefix, strip the leading `j` of `jdev/`.
pub fn normalize_control(control: &str) -> String {
    let c = control.split('\0').next().unwrap_or_default();
    let c = strip_salt_prefix(c);
    c.strip_prefix('j')
        .filter(|rest| rest.starts_with("dev/"))
        .unwrap_or(c)
        .to_string()
}

fn strip_salt_prefix(c: &str) -> &str {
    if let Some(rest) = c.strip_prefix("salt/") {
        return rest.split_once('/').map_or("", |(_, cmd)| cmd);
    }
    if let Some(rest) = c.strip_prefix("nextSalt/") {
        return rest
            .split_once('/')
            .and_then(|(_, r)| r.split_once('/'))
            .map_or("", |(_, cmd)| cmd);
    }
    c
}

/// The value of a `jdev/cfg/api` or `jdev/cfg/apiKey` answer (`Debug` masks the key).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ApiKeyInfo {
    /// Serial number (`50:4F:94:11:12:5F`).
    pub snr: String,
    /// Firmware version (`14.5.12.7`).
    pub version: String,
    /// One-time hashing key (hex), apiKey only.
    pub key: Option<String>,
    /// TLS status (Gen2).
    pub https_status: Option<i64>,
    /// Whether the Miniserver considers the connection local (12.1+).
    pub local: Option<bool>,
    /// Whether a status-update slot is free (`hasEventSlots`, doc §1.4).
    pub has_event_slots: Option<bool>,
}

impl std::fmt::Debug for ApiKeyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyInfo")
            .field("snr", &self.snr)
            .field("version", &self.version)
            .field("key", &self.key.as_ref().map(|_| "****"))
            .field("https_status", &self.https_status)
            .field("local", &self.local)
            .field("has_event_slots", &self.has_event_slots)
            .finish()
    }
}

/// Parses the single-quoted pseudo-JSON value of `jdev/cfg/api(Key)` (by replacing `'` with
/// `"`, as PYAPI, PYLOX, LXC and LK do). `snr` and `version` are required.
pub fn parse_api_key_value(value: &str) -> Result<ApiKeyInfo, EnvelopeError> {
    let fixed = value.replace('\'', "\"");
    let v: Value = serde_json::from_str(&fixed).map_err(|e| EnvelopeError::Json(e.to_string()))?;
    let o = v
        .as_object()
        .ok_or(EnvelopeError::Json("not an object".into()))?;
    let text = |k: &str| match o.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Ok(ApiKeyInfo {
        snr: text("snr").ok_or(EnvelopeError::MissingField("snr"))?,
        version: text("version").ok_or(EnvelopeError::MissingField("version"))?,
        key: text("key"),
        https_status: match o.get("httpsStatus") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        },
        local: match o.get("local") {
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        },
        has_event_slots: o.get("hasEventSlots").and_then(Value::as_bool),
    })
}

/// Writes an api/apiKey value in the Miniserver's single-quoted style (for the simulator).
pub fn encode_api_key_value(info: &ApiKeyInfo) -> String {
    let mut s = format!("{{'snr': '{}', 'version':'{}'", info.snr, info.version);
    if let Some(k) = &info.key {
        s.push_str(&format!(", 'key':'{k}'"));
    }
    if let Some(slots) = info.has_event_slots {
        s.push_str(&format!(", 'hasEventSlots':{slots}"));
    }
    s.push_str(", 'isInTrust':false");
    if let Some(l) = info.local {
        s.push_str(&format!(", 'local':{l}"));
    }
    if let Some(h) = info.https_status {
        s.push_str(&format!(", 'httpsStatus':{h}"));
    }
    s.push('}');
    s
}

/// A short English meaning of a status code (doc §2.3); `"unknown"` otherwise.
pub fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "code in use",
        301 => "serial number changed",
        400 => "bad request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not found",
        405 => "method not allowed",
        406 => "not acceptable",
        409 => "conflict",
        418 => "socket failed",
        420 => "authentication timeout",
        423 => "user disabled",
        426 => "Miniserver update required",
        429 => "too many requests (brute force detected)",
        477 => "token no longer valid",
        500 => "internal error or wrong visualisation password",
        503 => "Miniserver restarting",
        601 => "waiting for network",
        701 => "CloudDNS: not registered",
        702 => "CloudDNS: not configured",
        703 => "CloudDNS: port closed",
        704 => "CloudDNS: secure password required",
        705 => "CloudDNS: denied",
        901 => "maximum concurrent connections reached",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn debug_shows_no_token_hash_or_key() {
        let ll = parse_ll(
            r#"{"LL":{"control":"jdev/sys/getjwt/HASHX1234/admin/4/uuid/info","value":{"token":"TOKX5678","validUntil":1},"Code":"200"}}"#,
        )
        .unwrap();
        let shown = format!("{ll:?} {:?}", Some(&ll));
        for secret in ["HASHX1234", "TOKX5678", "admin"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("jdev/sys/getjwt/****") && shown.contains("200"),
            "{shown}"
        );
        let info =
            parse_api_key_value("{'snr': '50:4F', 'version':'14.5', 'key':'4B45593132'}").unwrap();
        let shown = format!("{info:?}");
        assert!(
            !shown.contains("4B45593132") && shown.contains("50:4F"),
            "{shown}"
        );
    }

    #[test]
    fn code_variants() {
        let cases = [
            r#"{"LL": {"control": "dev/sps/io/x/on", "value": "1", "Code": "200"}}"#,
            r#"{"LL": {"control": "dev/sps/io/x/on", "value": "1", "Code": 200}}"#,
            r#"{"LL":{"control":"dev/sps/io/x/on","value":"1","code":"200"}}"#,
            r#"{"LL":{"control":"dev/sps/io/x/on","code":200,"value":"1"}}"#,
        ];
        for c in cases {
            let r = parse_ll(c).unwrap();
            assert_eq!(r.code, 200, "{c}");
            assert_eq!(r.control, "dev/sps/io/x/on");
            assert_eq!(r.value, json!("1"));
        }
    }

    #[test]
    fn object_and_nested_values() {
        let r = parse_ll(
            r#"{"LL":{"control":"jdev/sys/getkey2/showroom","value":{"key":"41","salt":"31","hashAlg":"SHA256"},"code":200}}"#,
        )
        .unwrap();
        assert_eq!(r.value_object().unwrap()["hashAlg"], "SHA256");
        let r = parse_ll(r#"{"LL":{"control":"x","value":"{\"a\":1}","Code":"200","output0":{}}}"#)
            .unwrap();
        assert_eq!(r.value_object().unwrap()["a"], 1);
        let r = parse_ll(r#"{"LL":{"control":"x","Code":"404"}}"#).unwrap();
        assert_eq!(r.value, Value::Null);
        assert_eq!(r.code, 404);
    }

    #[test]
    fn errors() {
        assert!(matches!(parse_ll("nope"), Err(EnvelopeError::Json(_))));
        assert_eq!(parse_ll("{}"), Err(EnvelopeError::NoEnvelope));
        assert_eq!(
            parse_ll(r#"{"LL":{"control":"x"}}"#),
            Err(EnvelopeError::BadCode)
        );
        assert_eq!(
            parse_ll(r#"{"LL":{"Code":"abc"}}"#),
            Err(EnvelopeError::BadCode)
        );
        assert_eq!(
            parse_ll(r#"{"LL":{"Code":70000}}"#),
            Err(EnvelopeError::BadCode)
        );
    }

    #[test]
    fn encode_all_styles_round_trip() {
        let v = json!({"token": "abc", "validUntil": 1});
        for (style, needle) in [
            (CodeStyle::UpperString, r#""Code": "401""#),
            (CodeStyle::UpperNumber, r#""Code": 401"#),
            (CodeStyle::LowerString, r#""code": "401""#),
            (CodeStyle::LowerNumber, r#""code": 401"#),
        ] {
            let s = encode_ll("jdev/sys/getjwt/\"q\"", 401, &v, style);
            assert!(s.contains(needle), "{s}");
            let r = parse_ll(&s).unwrap();
            assert_eq!(r.code, 401);
            assert_eq!(r.control, "jdev/sys/getjwt/\"q\"");
            assert_eq!(r.value, v);
        }
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_control("jdev/sps/io/a/on"), "dev/sps/io/a/on");
        assert_eq!(normalize_control("dev/sps/io/a/on"), "dev/sps/io/a/on");
        assert_eq!(
            normalize_control("salt/a1b2/jdev/sys/getkey2/admin"),
            "dev/sys/getkey2/admin"
        );
        assert_eq!(
            normalize_control("nextSalt/a1/b2/jdev/sys/getjwt/h/u\0\0junk"),
            "dev/sys/getjwt/h/u"
        );
        assert_eq!(normalize_control("authwithtoken/h/u"), "authwithtoken/h/u");
        assert_eq!(normalize_control("jelly"), "jelly");
    }

    #[test]
    fn api_key_value() {
        let v = "{'snr': '50:4F:94:A0:2E:7E', 'version':'14.5.12.7', 'key':'4138', 'isInTrust':false, 'local':true,'address':'192.168.51.77','certTLD':'com', 'httpsStatus':1}";
        let i = parse_api_key_value(v).unwrap();
        assert_eq!(i.snr, "50:4F:94:A0:2E:7E");
        assert_eq!(i.version, "14.5.12.7");
        assert_eq!(i.key.as_deref(), Some("4138"));
        assert_eq!(i.https_status, Some(1));
        assert_eq!(i.local, Some(true));
        let old =
            parse_api_key_value("{'snr': '50:4F:94:11:12:5F', 'version':'9.3.2.20'}").unwrap();
        assert_eq!(old.key, None);
        assert_eq!(old.local, None);
        assert_eq!(
            parse_api_key_value("{'snr': 'x'}"),
            Err(EnvelopeError::MissingField("version"))
        );
        assert!(parse_api_key_value("garbage").is_err());
        assert_eq!(parse_api_key_value(&encode_api_key_value(&i)).unwrap(), i);
        let full = ApiKeyInfo {
            has_event_slots: Some(false),
            ..i
        };
        let text = encode_api_key_value(&full);
        assert!(
            text.contains("'hasEventSlots':false, 'isInTrust':false"),
            "{text}"
        );
        assert_eq!(parse_api_key_value(&text).unwrap(), full);
    }

    #[test]
    fn status_texts() {
        assert_eq!(status_text(200), "OK");
        assert_eq!(status_text(401), "unauthorized");
        assert_eq!(status_text(12), "unknown");
    }
}
