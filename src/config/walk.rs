//! Typed extraction from a parsed YAML tree (`serde_yaml::Value`), collecting errors.
//!
//! Owns the rules every config value obeys whatever its field: what counts as a boolean,
//! an integer, text, a list or a mapping, and how unknown keys are reported (with a
//! suggestion when a known key is close). No coercion: `'20'` is not a number, `30.9` is not
//! an integer, `'false'` is not a boolean, a scalar is not a list. YAML 1.1 boolean words
//! (`yes`/`no`/`on`/`off`, any case) are accepted as booleans because the Python exporter's
//! loader (PyYAML) read them so; `serde_yaml` (YAML 1.2) hands them over as text, so a quoted
//! `'yes'` is accepted too. Field semantics (ranges, host syntax) live in `load` and `otlp`.

use serde_yaml::{Mapping, Value};

use super::load::ConfigError;

/// Errors collected so far; every problem is reported, never only the first.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

impl Errors {
    /// Records one problem.
    pub(crate) fn push(&mut self, message: impl Into<String>) {
        self.0.push(ConfigError(message.into()));
    }

    /// True when nothing was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `parent.key`, or `key` at the top level.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Longest text value quoted in full in a message.
const MAX_SHOWN: usize = 80;

/// A text value as shown in messages: single-quoted, control characters escaped, long
/// values cut.
pub(crate) fn quote(s: &str) -> String {
    let escaped: String = s.escape_debug().collect();
    if escaped.chars().count() > MAX_SHOWN {
        let cut: String = escaped.chars().take(MAX_SHOWN).collect();
        format!("'{cut}…'")
    } else {
        format!("'{escaped}'")
    }
}

/// A value as shown in messages: text quoted, numbers and booleans as written, containers
/// by kind.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Looks `key` up; an explicit `null` (or `key:` with nothing after it) counts as absent.
pub(crate) fn get<'a>(map: &'a Mapping, key: &str) -> Option<&'a Value> {
    match map.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    }
}

/// Interprets a section: absent or `null` → `None`; a mapping → `Some`; anything else is an
/// error (the original silently replaced such sections by defaults).
pub(crate) fn section<'a>(
    errs: &mut Errors,
    path: &str,
    v: Option<&'a Value>,
) -> Option<&'a Mapping> {
    section_shown(errs, path, v, describe)
}

/// [`section`] for a section that holds secrets (`opentelemetry.auth`): a value in its
/// place may be one (`auth: "Bearer …"`), so messages name its kind only.
pub(crate) fn secret_section<'a>(
    errs: &mut Errors,
    path: &str,
    v: Option<&'a Value>,
) -> Option<&'a Mapping> {
    section_shown(errs, path, v, |v| kind(v).to_string())
}

fn section_shown<'a>(
    errs: &mut Errors,
    path: &str,
    v: Option<&'a Value>,
    show: impl Fn(&Value) -> String,
) -> Option<&'a Mapping> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::Mapping(m)) => Some(m),
        Some(other) => {
            errs.push(format!(
                "{path}: {} is not a mapping (expected 'key: value' lines indented below '{path}:')",
                show(other)
            ));
            None
        }
    }
}

/// Reports every key of `map` that is not in `known`, suggesting the closest known key.
pub(crate) fn check_keys(errs: &mut Errors, path: &str, map: &Mapping, known: &[&str]) {
    for key in map.keys() {
        let Some(k) = key.as_str() else {
            errs.push(format!(
                "{}: key {} is not text (keys are names such as '{}')",
                if path.is_empty() { "top level" } else { path },
                describe(key),
                known.first().copied().unwrap_or("name")
            ));
            continue;
        };
        if known.contains(&k) {
            continue;
        }
        let place = if path.is_empty() {
            String::new()
        } else {
            format!("{path}: ")
        };
        match suggest(k, known) {
            Some(s) => errs.push(format!(
                "{place}unknown key {} (did you mean '{s}'?)",
                quote(k)
            )),
            None => errs.push(format!(
                "{place}unknown key {} (known keys: {})",
                quote(k),
                known.join(", ")
            )),
        }
    }
}

/// The known key closest to `unknown`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = unknown.to_ascii_lowercase().replace('-', "_");
    let mut best: Option<(&str, f64)> = None;
    for &k in known {
        if k == lower {
            return Some(k);
        }
        let score = strsim::jaro_winkler(&lower, k);
        let edits = strsim::levenshtein(&lower, k);
        let close = score >= 0.88 || edits <= 2.min(k.len() / 3 + 1);
        if close && best.is_none_or(|(_, s)| score > s) {
            best = Some((k, score));
        }
    }
    best.map(|(k, _)| k)
}

/// A boolean: YAML `true`/`false` (any case), or the YAML 1.1 words `yes`/`no`/`on`/`off`
/// (any case). The text `'true'`/`'false'` is an error: quoted, it is a string, and the
/// original's truthiness turned `'false'` into true.
pub(crate) fn boolean(errs: &mut Errors, path: &str, v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "yes" | "on" => Some(true),
            "no" | "off" => Some(false),
            _ => {
                errs.push(format!(
                    "{path}: {} is text, not a boolean (write true or false without quotes)",
                    describe(v)
                ));
                None
            }
        },
        _ => {
            errs.push(format!(
                "{path}: {} is not a boolean (write true or false)",
                describe(v)
            ));
            None
        }
    }
}

/// An integer, as written (range checks are the caller's, so the message can name the
/// range). `expected` completes "expected …", e.g. "a port 1-65535".
pub(crate) fn integer(errs: &mut Errors, path: &str, v: &Value, expected: &str) -> Option<i128> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Some(i128::from(u))
            } else {
                errs.push(format!(
                    "{path}: {n} is not a whole number (expected {expected})"
                ));
                None
            }
        }
        Value::String(_) => {
            errs.push(format!(
                "{path}: {} is text, not a number (write the number without quotes; expected {expected})",
                describe(v)
            ));
            None
        }
        _ => {
            errs.push(format!(
                "{path}: {} is not a whole number (expected {expected})",
                describe(v)
            ));
            None
        }
    }
}

/// Text. A number or boolean is an error rather than silently converted: YAML may have
/// changed it already (`0123`, `1e3`), so the user is asked to quote it.
pub(crate) fn text(errs: &mut Errors, path: &str, v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => {
            errs.push(format!(
                "{path}: {} is not text (put it in quotes, e.g. \"{}\", so YAML keeps it as written)",
                describe(v),
                describe(v)
            ));
            None
        }
        _ => {
            errs.push(format!("{path}: {} is not text", describe(v)));
            None
        }
    }
}

/// Secret text (a password, a header value): like [`text`], but messages never show it.
pub(crate) fn secret_text(errs: &mut Errors, path: &str, v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => {
            errs.push(format!(
                "{path}: the value is a {}, not text (put it in quotes so YAML keeps it exactly as written; the value is not shown because it is secret)",
                if matches!(v, Value::Bool(_)) { "boolean" } else { "number" }
            ));
            None
        }
        _ => {
            errs.push(format!(
                "{path}: the value is {} where text is expected (the value is not shown because it is secret)",
                kind(v)
            ));
            None
        }
    }
}

/// A list of text items. A scalar is an error (the original turned `Kitchen` into the list
/// of its characters).
pub(crate) fn text_list(errs: &mut Errors, path: &str, v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                if let Some(s) = text(errs, &format!("{path}[{i}]"), item) {
                    out.push(s);
                }
            }
            out
        }
        other => {
            let example = match other {
                Value::String(s) => s.clone(),
                _ => "Kitchen".to_string(),
            };
            errs.push(format!(
                "{path}: {} is not a list (write [{}] or one '- {}' item per line)",
                describe(other),
                example.escape_debug(),
                example.escape_debug()
            ));
            Vec::new()
        }
    }
}

/// A mapping of text keys to text values, in file order. With `secret_values`, messages
/// never show values.
pub(crate) fn text_map(
    errs: &mut Errors,
    path: &str,
    v: &Value,
    secret_values: bool,
) -> Vec<(String, String)> {
    let Value::Mapping(map) = v else {
        errs.push(format!(
            "{path}: {} is not a mapping (expected 'name: value' lines indented below '{}:')",
            if secret_values {
                kind(v).to_string()
            } else {
                describe(v)
            },
            last_segment(path)
        ));
        return Vec::new();
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, val) in map {
        let Some(key) = k.as_str() else {
            errs.push(format!("{path}: key {} is not text", describe(k)));
            continue;
        };
        let field = format!("{path}.{key}");
        let value = if secret_values {
            match val {
                Value::Null => {
                    errs.push(format!("{field}: the value is empty (a value is required)"));
                    None
                }
                _ => secret_text(errs, &field, val),
            }
        } else {
            match val {
                Value::Null => {
                    errs.push(format!("{field}: null is not text (a value is required)"));
                    None
                }
                _ => text(errs, &field, val),
            }
        };
        if let Some(value) = value {
            out.push((key.to_string(), value));
        }
    }
    out
}

/// What kind of value `v` is, without showing it.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn last_segment(path: &str) -> &str {
    let tail = path.rsplit('.').next().unwrap_or(path);
    tail.split('[').next().unwrap_or(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_not_strangers() {
        let known = ["listen_port", "listen_address", "log_level", "miniservers"];
        assert_eq!(suggest("listen_prot", &known), Some("listen_port"));
        assert_eq!(suggest("Listen_Port", &known), Some("listen_port"));
        assert_eq!(suggest("miniserver", &known), Some("miniservers"));
        assert_eq!(suggest("loglevel", &known), Some("log_level"));
        assert_eq!(suggest("banana", &known), None);
    }

    #[test]
    fn yaml11_words_are_booleans_but_quoted_false_is_not() {
        let mut errs = Errors::default();
        for (word, want) in [("yes", true), ("NO", false), ("On", true), ("off", false)] {
            assert_eq!(
                boolean(&mut errs, "x", &Value::String(word.into())),
                Some(want)
            );
        }
        assert!(errs.is_empty());
        assert_eq!(
            boolean(&mut errs, "x", &Value::String("false".into())),
            None
        );
        assert_eq!(errs.0.len(), 1);
        assert!(errs.0[0].0.contains("'false' is text, not a boolean"));
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(200);
        let shown = quote(&long);
        assert!(shown.chars().count() < 90, "{shown}");
        assert!(shown.ends_with("…'"));
    }
}
