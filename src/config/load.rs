//! Loading and validating the configuration: the Python exporter's YAML schema and
//! `LOXONE_*` variables (docs/original-exporter.md §1.1–1.4), without its defects (§1.2
//! quirks, §9.1 item 13).
//!
//! [`load`] does the file I/O (an explicit path, or `./config.yml` then `./config.yaml`, or
//! no file at all); [`load_str`] is the pure part: parse, apply the environment (passed in
//! as a lookup, never read globally), validate, build [`Config`]. Every problem found is
//! returned at once in [`ConfigErrors`]; each message names the field (or the variable), the
//! value and the rule, and never shows a password or header value. The `opentelemetry:`
//! section and the `OTEL_*` variables are handled in `otlp`; typed extraction rules in
//! `walk`. Printing the errors and choosing the exit code are the binary's job.
//!
//! Differences from the original, on purpose: wrong types are errors instead of coercions,
//! unknown keys are errors (with a suggestion; top-level keys starting with `x-` are free,
//! for YAML anchors), a Miniserver entry without `host` is an error
//! instead of being dropped silently, `log_level`/`log_format` are case-insensitive (and
//! `warn` means `warning`), IPv6 hosts may be written with or without brackets, and a
//! Miniserver after the first without `name` is reported as such.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::walk::{self, quote, Errors};
use super::{
    Config, FilterConfig, LogFormat, LogLevel, MiniserverConfig, DEFAULT_CONFIG_FILES,
    DEFAULT_LISTEN_ADDRESS, DEFAULT_LISTEN_PORT, DEFAULT_MINISERVER_PORT,
    DEFAULT_MINISERVER_SSL_PORT,
};
use crate::secret::{redact_url, Secret};

/// Environment lookup: returns the value of a variable, `None` when unset.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One configuration problem: the field, the value and the rule, as a complete sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Prefix of the variables that add OTLP headers (`LOXONE_OTLP_AUTH_HEADER_X_API_KEY` →
/// `X-Api-Key`).
pub const OTLP_HEADER_ENV_PREFIX: &str = "LOXONE_OTLP_AUTH_HEADER_";

/// Top-level keys.
const TOP_KEYS: &[&str] = &[
    "miniservers",
    "listen_port",
    "listen_address",
    "log_level",
    "log_format",
    "exclude_rooms",
    "exclude_types",
    "exclude_names",
    "exclude_categories",
    "include_rooms",
    "include_types",
    "include_names",
    "include_categories",
    "include_text_values",
    "opentelemetry",
];

/// Keys of one `miniservers:` entry.
const MINISERVER_KEYS: &[&str] = &[
    "name",
    "host",
    "port",
    "ssl_port",
    "username",
    "password",
    "use_encryption",
    "force_encryption",
    "tls_ca_file",
    "tls_fingerprint",
];

const PORT_RULE: &str = "a port 1-65535";

/// The names of the process's `LOXONE_OTLP_AUTH_HEADER_*` variables (their number and
/// names are open, so they are listed, not looked up).
pub fn otlp_header_env_names() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with(OTLP_HEADER_ENV_PREFIX))
        .collect()
}

/// Loads `path` (or `./config.yml`, then `./config.yaml`, or no file: environment only),
/// applies the environment, validates.
///
/// A given `path` that does not exist is an error; an empty file counts as `{}`. The names
/// of `LOXONE_OTLP_AUTH_HEADER_*` variables are discovered from the process environment
/// (a lookup cannot list names); their values, like every other variable, come from `env`.
pub fn load(path: Option<&Path>, env: Env<'_>) -> Result<Config, ConfigErrors> {
    let header_vars = otlp_header_env_names();
    let (text, source) = match path {
        Some(p) => (read_file(p)?, Some(p.to_path_buf())),
        None => match find_default_config(Path::new(".")) {
            Some(p) => (read_file(&p)?, Some(p)),
            None => (String::new(), None),
        },
    };
    load_str_with_env_names(&text, source.as_deref(), env, &header_vars)
}

/// The first of `config.yml`, `config.yaml` that exists in `dir`.
pub fn find_default_config(dir: &Path) -> Option<PathBuf> {
    DEFAULT_CONFIG_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.exists())
}

fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        let msg = match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("config file '{}' does not exist", path.display())
            }
            std::io::ErrorKind::InvalidData => {
                format!("config file '{}' is not UTF-8 text", path.display())
            }
            _ => format!("config file '{}' cannot be read: {e}", path.display()),
        };
        ConfigErrors(vec![ConfigError(msg)])
    })
}

/// Parses `yaml` (the contents of `source`, if any), applies `env`, validates. Pure: no file
/// is read except the certificate/CA files the configuration names (checked to exist).
/// `LOXONE_OTLP_AUTH_HEADER_*` variables are not seen (no names to look up); use
/// [`load_str_with_env_names`] for those.
pub fn load_str(yaml: &str, source: Option<&Path>, env: Env<'_>) -> Result<Config, ConfigErrors> {
    load_str_with_env_names(yaml, source, env, &[])
}

/// [`load_str`], plus the names of the `LOXONE_OTLP_AUTH_HEADER_*` variables to read
/// through `env` (other names in the list are ignored).
pub fn load_str_with_env_names(
    yaml: &str,
    source: Option<&Path>,
    env: Env<'_>,
    env_names: &[String],
) -> Result<Config, ConfigErrors> {
    let file_label = source
        .map(|p| format!("config file '{}'", p.display()))
        .unwrap_or_else(|| "configuration".to_string());
    let root = match parse_yaml(yaml) {
        Ok(v) => v,
        Err(msg) => {
            return Err(ConfigErrors(vec![ConfigError(format!(
                "{file_label} is not valid YAML: {msg}"
            ))]))
        }
    };
    let empty = Mapping::new();
    let top = match &root {
        Value::Null => &empty,
        Value::Mapping(m) => m,
        other => {
            return Err(ConfigErrors(vec![ConfigError(format!(
                "{file_label}: the top level is {}, not a mapping of settings (expected keys such as 'miniservers:' and 'listen_port:')",
                walk::kind(other)
            ))]))
        }
    };

    let mut errs = Errors::default();
    let mut origins: Vec<(String, String)> = Vec::new();
    // top-level `x-…` keys are free (docker-compose style): a place to keep YAML anchors
    // (only the keys are copied: the values are not needed to check them)
    let checked: Mapping = top
        .keys()
        .filter(|k| !k.as_str().is_some_and(|k| k.starts_with("x-")))
        .map(|k| (k.clone(), Value::Null))
        .collect();
    walk::check_keys(&mut errs, "", &checked, TOP_KEYS);

    let lookup = |name: &str| env(name).filter(|v| !v.is_empty());

    // Miniservers: file entries, then LOXONE_* onto entry 0 (created if absent).
    let (mut raw, list_ok) = raw_miniservers(&mut errs, top);
    let file_had_miniservers = !raw.is_empty();
    apply_miniserver_env(&mut errs, &mut raw, &lookup, &mut origins);
    let miniservers = if raw.is_empty() && !list_ok {
        // `miniservers:` was not a list: already reported, "none configured" would mislead.
        Vec::new()
    } else {
        build_miniservers(&mut errs, raw, file_had_miniservers)
    };

    // Top-level scalars.
    let listen_port = match lookup("LOXONE_LISTEN_PORT") {
        Some(v) => {
            origins.push(("listen_port".into(), "LOXONE_LISTEN_PORT".into()));
            env_port(&mut errs, "LOXONE_LISTEN_PORT", &v)
        }
        None => walk::get(top, "listen_port")
            .and_then(|v| walk::integer(&mut errs, "listen_port", v, PORT_RULE))
            .and_then(|n| port_in_range(&mut errs, "listen_port", n)),
    }
    .unwrap_or(DEFAULT_LISTEN_PORT);

    let listen_address = walk::get(top, "listen_address")
        .and_then(|v| walk::text(&mut errs, "listen_address", v))
        .and_then(|s| parse_listen_address(&mut errs, &s))
        .unwrap_or(DEFAULT_LISTEN_ADDRESS);

    let log_level = match lookup("LOXONE_LOG_LEVEL") {
        Some(v) => {
            origins.push(("log_level".into(), "LOXONE_LOG_LEVEL".into()));
            parse_log_level(&mut errs, "LOXONE_LOG_LEVEL", &v)
        }
        None => walk::get(top, "log_level")
            .and_then(|v| walk::text(&mut errs, "log_level", v))
            .and_then(|s| parse_log_level(&mut errs, "log_level", &s)),
    }
    .unwrap_or(LogLevel::Info);

    let log_format = walk::get(top, "log_format")
        .and_then(|v| walk::text(&mut errs, "log_format", v))
        .and_then(|s| parse_log_format(&mut errs, &s))
        .unwrap_or(LogFormat::Json);

    let filters = build_filters(&mut errs, top);

    let include_text_values = walk::get(top, "include_text_values")
        .and_then(|v| walk::boolean(&mut errs, "include_text_values", v))
        .unwrap_or(false);

    let otlp_section = walk::section(&mut errs, "opentelemetry", walk::get(top, "opentelemetry"));
    let mut warnings = Vec::new();
    let opentelemetry = super::otlp::build(
        &mut errs,
        otlp_section,
        env,
        env_names,
        &mut origins,
        &mut warnings,
    );

    if !errs.is_empty() {
        return Err(ConfigErrors(errs.0));
    }
    Ok(Config {
        miniservers,
        listen_address,
        listen_port,
        log_level,
        log_format,
        filters,
        include_text_values,
        opentelemetry,
        source: source.map(Path::to_path_buf),
        origins,
        warnings,
    })
}

/// Parses YAML and applies merge keys (`<<: *anchor`, as PyYAML's `safe_load` in the
/// original does); the error text keeps serde_yaml's description and position but drops
/// any quoted value (it could be a secret).
fn parse_yaml(yaml: &str) -> Result<Value, String> {
    if let Some(problem) = yaml_nesting_problem(yaml) {
        return Err(problem);
    }
    let mut value = serde_yaml::from_str::<Value>(yaml).map_err(|e| {
        refused_character(yaml, &e.to_string()).unwrap_or_else(|| yaml_error_text(&e))
    })?;
    // one pass merges one level: a merged mapping may bring its own `<<` (an anchor on a
    // mapping that merges another); aliases are copies, so the nesting is finite
    for _ in 0..MAX_MERGE_DEPTH {
        if !has_merge_key(&value) {
            break;
        }
        value.apply_merge().map_err(|e| {
            format!(
                "{} (a '<<' merge key needs a mapping or a list of mappings, e.g. <<: *defaults)",
                yaml_error_text(&e)
            )
        })?;
    }
    Ok(value)
}

/// Why `yaml` is refused before parsing, if it is: `[`/`{` nested deeper than
/// [`MAX_FLOW_NESTING`]. The YAML parser takes time that grows with the square of the depth
/// (40k levels: 7 s), and a configuration needs two or three.
pub(crate) fn yaml_nesting_problem(yaml: &str) -> Option<String> {
    let (line, column) = flow_nesting_beyond(yaml, MAX_FLOW_NESTING)?;
    Some(format!(
        "line {line} column {column}: brackets nested more than {MAX_FLOW_NESTING} levels deep (refused before parsing: the YAML parser takes time that grows with the square of the depth)"
    ))
}

/// Deepest `[`/`{` nesting accepted; a configuration needs two or three levels.
const MAX_FLOW_NESTING: usize = 64;

/// Where (1-based line and column) `[`/`{` flow collections first nest deeper than `limit`,
/// if they do. A light scan, not a parser: brackets and quotes count only where YAML starts
/// a node (after `:`, `,`, `-`, `?`, an opening bracket, or at the start of a line), so a
/// bracket or apostrophe inside plain text (`Kid's room [2]`) is never counted and a valid
/// file is never refused.
fn flow_nesting_beyond(yaml: &str, limit: usize) -> Option<(usize, usize)> {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Single,
        Double,
        /// A comment, or a line of a block scalar (`|`, `>`): nothing counts until the end
        /// of the line.
        Skip,
    }
    let mut state = In::Plain;
    let mut depth = 0usize;
    // the last character that was not a space on this line ('\n' at the start of a line);
    // a bracket inside plain text leaves 'a' here, so the next one is plain text too
    let mut last = '\n';
    let mut after_space = true;
    let mut escaped = false;
    let (mut line, mut column) = (1usize, 0usize);
    // indentation of this line (while `at_line_start`), and of the line that opened a
    // block scalar: more-indented lines after it are its text
    let (mut indent, mut at_line_start) = (0usize, true);
    let mut block_scalar_of: Option<usize> = None;
    for c in yaml.chars() {
        column += 1;
        if c == '\n' {
            (line, column) = (line + 1, 0);
            if state == In::Skip {
                state = In::Plain;
            }
            last = '\n';
            after_space = true;
            (indent, at_line_start) = (0, true);
            continue;
        }
        if at_line_start && state == In::Plain {
            if c == ' ' {
                indent += 1;
                continue;
            }
            at_line_start = false;
            match block_scalar_of {
                Some(parent) if indent > parent => state = In::Skip,
                _ => block_scalar_of = None,
            }
        }
        let node_start = matches!(last, '\n' | ':' | ',' | '-' | '?' | '[' | '{');
        let mut plain_text = false;
        match state {
            In::Skip => continue,
            In::Single => {
                if c == '\'' {
                    state = In::Plain;
                }
            }
            In::Double => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    state = In::Plain;
                }
            }
            In::Plain => match c {
                '#' if after_space => state = In::Skip,
                '\'' if node_start => state = In::Single,
                '"' if node_start => state = In::Double,
                '|' | '>' if node_start && depth == 0 => block_scalar_of = Some(indent),
                '[' | '{' if node_start => {
                    depth += 1;
                    if depth > limit {
                        return Some((line, column));
                    }
                }
                '[' | '{' => plain_text = true,
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        after_space = c == ' ' || c == '\t';
        if plain_text {
            last = 'a';
        } else if !after_space {
            last = c;
        }
    }
    None
}

/// Most nested merges resolved; deeper ones are left and reported as unknown keys.
const MAX_MERGE_DEPTH: usize = 16;

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

fn yaml_error_text(e: &serde_yaml::Error) -> String {
    let mut msg = strip_backticked(&e.to_string());
    // serde_yaml cannot hold integers beyond 64 bits; say so in the user's terms
    if let Some(at) = msg.find("invalid type: integer `…` as ") {
        if msg[at..].contains("128, expected any YAML value") {
            msg = format!(
                "{}the number is too large (no setting allows more than 64-bit numbers; ports are 1-65535)",
                &msg[..at]
            );
        }
    }
    if let Some(loc) = e.location() {
        let pos = format!("line {} column {}", loc.line(), loc.column());
        if !msg.contains(&pos) {
            msg = format!("{msg} (at {pos})");
        }
    }
    msg
}

/// The YAML parser refuses a control character (a stray byte from a copied text) by its
/// byte offset alone, with a location of line 1 column 1; this says where it is, which
/// character, and in which setting when the line starts with a known key. Never more of the
/// line than that key: the character may sit in a password.
fn refused_character(yaml: &str, parser_message: &str) -> Option<String> {
    let offset: usize = parser_message
        .strip_prefix("control characters are not allowed at position ")?
        .trim()
        .parse()
        .ok()?;
    let before = yaml.get(..offset)?;
    let refused = yaml[offset..].chars().next()?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    let key = yaml[line_start..]
        .trim_start()
        .trim_start_matches("- ")
        .split_once(':')
        .map(|(key, _)| key.trim())
        .filter(|key| is_known_key(key))
        .map(|key| format!(" in '{key}'"))
        .unwrap_or_default();
    Some(format!(
        "line {line} column {column}{key}: the control character U+{:04X} is not allowed in YAML (delete it; inside double quotes it can be written as \\u{:04X})",
        u32::from(refused),
        u32::from(refused),
    ))
}

/// A key of the configuration's schema, at any level.
fn is_known_key(key: &str) -> bool {
    TOP_KEYS.contains(&key) || MINISERVER_KEYS.contains(&key) || super::otlp::is_known_key(key)
}

/// Replaces every `` `...` `` span with `` `…` ``.
fn strip_backticked(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut inside = false;
    for c in s.chars() {
        if c == '`' {
            if inside {
                out.push_str("…`");
            } else {
                out.push('`');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// A value with the name to use for it in messages (a field path or a variable name).
#[derive(Debug, Clone)]
pub(crate) struct Sourced<T> {
    pub(crate) value: T,
    pub(crate) at: String,
}

fn sourced<T>(value: T, at: impl Into<String>) -> Sourced<T> {
    Sourced {
        value,
        at: at.into(),
    }
}

/// One `miniservers:` entry as written (types checked, nothing else), with env applied.
#[derive(Debug, Default)]
struct RawMiniserver {
    path: String,
    name: Option<Sourced<String>>,
    host: Option<Sourced<String>>,
    port: Option<Sourced<i128>>,
    ssl_port: Option<Sourced<i128>>,
    username: Option<Sourced<String>>,
    password: Option<Sourced<Secret>>,
    use_encryption: Option<bool>,
    force_encryption: Option<bool>,
    tls_ca_file: Option<Sourced<String>>,
    tls_fingerprint: Option<Sourced<String>>,
    /// False for an entry that is not a mapping (already reported).
    valid: bool,
    /// Keys given with a value of the wrong type (already reported: not "missing").
    mistyped: Vec<&'static str>,
}

/// The `miniservers:` entries; the flag is false when `miniservers:` is not a list.
fn raw_miniservers(errs: &mut Errors, top: &Mapping) -> (Vec<RawMiniserver>, bool) {
    let Some(v) = walk::get(top, "miniservers") else {
        return (Vec::new(), true);
    };
    let Value::Sequence(items) = v else {
        errs.push(format!(
            "miniservers: {} is not a list (write one '- host: ...' entry per Miniserver)",
            walk::kind(v)
        ));
        return (Vec::new(), false);
    };
    let raw = items
        .iter()
        .enumerate()
        .map(|(i, item)| raw_miniserver(errs, i, item))
        .collect();
    (raw, true)
}

fn raw_miniserver(errs: &mut Errors, index: usize, item: &Value) -> RawMiniserver {
    let path = format!("miniservers[{index}]");
    let mut raw = RawMiniserver {
        path: path.clone(),
        ..RawMiniserver::default()
    };
    let Value::Mapping(m) = item else {
        // kind only: the entry may be a URL with a password, or `password:x` missing the
        // space after ':'
        errs.push(format!(
            "{path}: {} is not a mapping (expected 'host:', 'username:', 'password:' ... indented below '-', with a space after each ':')",
            walk::kind(item)
        ));
        return raw;
    };
    raw.valid = true;
    walk::check_keys(errs, &path, m, MINISERVER_KEYS);
    let field = |k: &str| format!("{path}.{k}");
    let text = |errs: &mut Errors, k: &str| {
        walk::get(m, k).and_then(|v| walk::text(errs, &field(k), v).map(|s| sourced(s, field(k))))
    };
    // `name: ""` and `name:` (null) differ: null means "not given".
    raw.name = text(errs, "name");
    raw.host = text(errs, "host");
    raw.username = text(errs, "username");
    raw.tls_ca_file = text(errs, "tls_ca_file");
    raw.tls_fingerprint = text(errs, "tls_fingerprint");
    raw.password = walk::get(m, "password").and_then(|v| {
        walk::secret_text(errs, &field("password"), v)
            .map(|s| sourced(Secret::new(s), field("password")))
    });
    for (key, parsed) in [
        ("name", raw.name.is_some()),
        ("host", raw.host.is_some()),
        ("username", raw.username.is_some()),
        ("password", raw.password.is_some()),
    ] {
        if !parsed && walk::get(m, key).is_some() {
            raw.mistyped.push(key);
        }
    }
    for (key, slot) in [("port", &mut raw.port), ("ssl_port", &mut raw.ssl_port)] {
        *slot = walk::get(m, key).and_then(|v| {
            walk::integer(errs, &field(key), v, PORT_RULE).map(|n| sourced(n, field(key)))
        });
    }
    raw.use_encryption = walk::get(m, "use_encryption")
        .and_then(|v| walk::boolean(errs, &field("use_encryption"), v));
    raw.force_encryption = walk::get(m, "force_encryption")
        .and_then(|v| walk::boolean(errs, &field("force_encryption"), v));
    raw
}

/// `LOXONE_HOST`/`PORT`/`USERNAME`/`PASSWORD`/`NAME` onto entry 0, created when the file
/// has none. Empty values are ignored (treated as unset), as in the original.
fn apply_miniserver_env(
    errs: &mut Errors,
    raw: &mut Vec<RawMiniserver>,
    lookup: &dyn Fn(&str) -> Option<String>,
    origins: &mut Vec<(String, String)>,
) {
    let vars = [
        "LOXONE_HOST",
        "LOXONE_PORT",
        "LOXONE_USERNAME",
        "LOXONE_PASSWORD",
        "LOXONE_NAME",
    ];
    if vars.iter().all(|v| lookup(v).is_none()) {
        return;
    }
    if raw.is_empty() {
        raw.push(RawMiniserver {
            path: "miniservers[0]".into(),
            valid: true,
            ..RawMiniserver::default()
        });
    }
    let ms = &mut raw[0];
    let mut note = |field: &str, var: &str| {
        origins.push((format!("miniservers[0].{field}"), var.to_string()));
    };
    if let Some(v) = lookup("LOXONE_HOST") {
        note("host", "LOXONE_HOST");
        ms.host = Some(sourced(v, "LOXONE_HOST"));
    }
    if let Some(v) = lookup("LOXONE_PORT") {
        note("port", "LOXONE_PORT");
        ms.port = match v.trim().parse::<i128>() {
            Ok(n) => Some(sourced(n, "LOXONE_PORT")),
            Err(_) => {
                errs.push(format!(
                    "LOXONE_PORT: {} is not a whole number (expected {PORT_RULE})",
                    quote(&v)
                ));
                None
            }
        };
    }
    if let Some(v) = lookup("LOXONE_USERNAME") {
        note("username", "LOXONE_USERNAME");
        ms.username = Some(sourced(v, "LOXONE_USERNAME"));
    }
    if let Some(v) = lookup("LOXONE_PASSWORD") {
        note("password", "LOXONE_PASSWORD");
        ms.password = Some(sourced(Secret::new(v), "LOXONE_PASSWORD"));
    }
    if let Some(v) = lookup("LOXONE_NAME") {
        note("name", "LOXONE_NAME");
        ms.name = Some(sourced(v, "LOXONE_NAME"));
    }
}

fn build_miniservers(
    errs: &mut Errors,
    raw: Vec<RawMiniserver>,
    file_had_miniservers: bool,
) -> Vec<MiniserverConfig> {
    if raw.is_empty() {
        errs.push(
            "no Miniserver configured: add a 'miniservers:' entry with a host, or set LOXONE_HOST",
        );
        return Vec::new();
    }
    if !file_had_miniservers && raw[0].host.is_none() {
        // Only LOXONE_USERNAME/PASSWORD/... were set.
        errs.push(
            "no Miniserver configured: add a 'miniservers:' entry with a host, or set LOXONE_HOST (other LOXONE_* variables are set, but not LOXONE_HOST)",
        );
        return Vec::new();
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut seen: HashMap<String, String> = HashMap::new();
    for (i, ms) in raw.into_iter().enumerate() {
        if !ms.valid {
            continue;
        }
        let path = ms.path.clone();
        let host = match ms.host {
            None if ms.mistyped.contains(&"host") => None,
            None => {
                let which = ms
                    .name
                    .as_ref()
                    .map(|n| format!(" ({})", quote(&n.value)))
                    .unwrap_or_default();
                errs.push(format!(
                    "{path}.host: missing in entry {path}{which}; every Miniserver needs a host (the Python exporter silently skipped entries without one, this exporter refuses so no Miniserver goes unmonitored by accident){}",
                    if i == 0 { "; or set LOXONE_HOST" } else { "" }
                ));
                None
            }
            Some(h) => validate_host(errs, &h),
        };
        // Name: the first entry defaults to its host (as in the original).
        let name = match ms.name {
            Some(n) if n.value.trim().is_empty() => {
                errs.push(format!(
                    "{}: {} is empty (a Miniserver needs a non-empty name; it becomes the 'miniserver' label)",
                    n.at,
                    quote(&n.value)
                ));
                None
            }
            Some(n) => Some(n),
            None if i == 0 => host.clone().map(|h| sourced(h, format!("{path}.host"))),
            None if ms.mistyped.contains(&"name") => None,
            None => {
                errs.push(format!(
                    "{path}.name: missing; every Miniserver after the first needs a unique name (the first defaults to its host; the name becomes the 'miniserver' label)"
                ));
                None
            }
        };
        if let Some(n) = &name {
            match seen.get(&n.value) {
                Some(first) => errs.push(format!(
                    "{}: {} is already used by {first} (Miniserver names must be unique; they become the 'miniserver' label)",
                    n.at,
                    quote(&n.value)
                )),
                None => {
                    seen.insert(n.value.clone(), path.clone());
                }
            }
        }
        let username = match ms.username {
            None if ms.mistyped.contains(&"username") => None,
            None => {
                errs.push(format!(
                    "{path}.username: missing; a Loxone user name is required{}",
                    if i == 0 {
                        " (or set LOXONE_USERNAME)"
                    } else {
                        ""
                    }
                ));
                None
            }
            Some(u) if u.value.is_empty() => {
                errs.push(format!(
                    "{}: '' is empty (a Loxone user name is required)",
                    u.at
                ));
                None
            }
            Some(u) => Some(u.value),
        };
        let password = match ms.password {
            None if ms.mistyped.contains(&"password") => None,
            None => {
                errs.push(format!(
                    "{path}.password: missing; a password is required{}",
                    if i == 0 {
                        " (or set LOXONE_PASSWORD)"
                    } else {
                        ""
                    }
                ));
                None
            }
            Some(p) if p.value.is_empty() => {
                errs.push(format!(
                    "{}: the password is empty (a password is required)",
                    p.at
                ));
                None
            }
            Some(p) => Some(p.value),
        };
        let port = ms
            .port
            .map(|p| port_in_range(errs, &p.at, p.value))
            .unwrap_or(Some(DEFAULT_MINISERVER_PORT));
        let ssl_port = ms
            .ssl_port
            .map(|p| port_in_range(errs, &p.at, p.value))
            .unwrap_or(Some(DEFAULT_MINISERVER_SSL_PORT));
        // TLS options that would silently do nothing are errors: the config would look
        // verified while the connection is not (or not as configured).
        let encrypted = ms.use_encryption.unwrap_or(false) || ms.force_encryption.unwrap_or(false);
        if let (Some(ca), Some(fp)) = (&ms.tls_ca_file, &ms.tls_fingerprint) {
            errs.push(format!(
                "{}: set together with {}; use one of them (a fingerprint pins the Miniserver's exact certificate, a CA file verifies its chain)",
                fp.at, ca.at
            ));
        }
        for at in [
            ms.tls_ca_file.as_ref().map(|f| &f.at),
            ms.tls_fingerprint.as_ref().map(|f| &f.at),
        ]
        .into_iter()
        .flatten()
        {
            if !encrypted {
                errs.push(format!(
                    "{at}: set, but use_encryption and force_encryption are false: a pinned certificate needs use_encryption: true (without it the connection may stay on, or fall back to, ws://, which a pin must not allow)"
                ));
            }
        }
        let tls_ca_file = ms
            .tls_ca_file
            .and_then(|f| regular_file(errs, &f.at, &f.value, "a PEM CA certificate file"));
        let tls_fingerprint = ms.tls_fingerprint.and_then(|f| fingerprint(errs, &f));

        if let (
            Some(host),
            Some(name),
            Some(username),
            Some(password),
            Some(port),
            Some(ssl_port),
        ) = (host, name, username, password, port, ssl_port)
        {
            out.push(MiniserverConfig {
                name: name.value,
                host,
                port,
                ssl_port,
                username,
                password,
                use_encryption: ms.use_encryption.unwrap_or(false),
                force_encryption: ms.force_encryption.unwrap_or(false),
                tls_ca_file,
                tls_fingerprint,
            });
        }
    }
    out
}

/// Accepts an IPv4/IPv6 literal (IPv6 with or without brackets; stored without) or an
/// RFC 1123 host name (labels of letters, digits and `-`, not starting or ending with `-`).
fn validate_host(errs: &mut Errors, h: &Sourced<String>) -> Option<String> {
    let raw = h.value.trim();
    let unbracketed = raw
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(raw);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    if raw != unbracketed {
        errs.push(format!(
            "{}: {} is not a valid IPv6 address (brackets are only for IPv6 literals)",
            h.at,
            quote(&redact_url(&h.value))
        ));
        return None;
    }
    if is_hostname(raw) {
        return Some(raw.to_string());
    }
    let hint = if raw.contains("://") {
        " (write only the host, without 'http://' or 'ws://')"
    } else if raw.rsplit_once(':').is_some_and(|(a, p)| {
        !a.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
    }) {
        " (put the port in 'port:' instead of the host)"
    } else if raw.is_empty() {
        " (the host is empty)"
    } else {
        ""
    };
    errs.push(format!(
        "{}: {} is not a valid host (an IPv4 or IPv6 address or a host name made of letters, digits, '-' and '.'){hint}",
        h.at,
        // a pasted URL may carry a password: user:password@host
        quote(&redact_url(&h.value))
    ));
    None
}

/// RFC 1123 host name as the original checked it (underscores rejected), at most 253 chars.
pub(crate) fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn port_in_range(errs: &mut Errors, at: &str, n: i128) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Some(p),
        _ => {
            errs.push(format!("{at}: {n} is out of range (allowed 1-65535)"));
            None
        }
    }
}

fn env_port(errs: &mut Errors, var: &str, v: &str) -> Option<u16> {
    match v.trim().parse::<i128>() {
        Ok(n) => port_in_range(errs, var, n),
        Err(_) => {
            errs.push(format!(
                "{var}: {} is not a whole number (expected {PORT_RULE})",
                quote(v)
            ));
            None
        }
    }
}

fn parse_listen_address(errs: &mut Errors, s: &str) -> Option<IpAddr> {
    let t = s.trim();
    let unbracketed = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(t);
    match unbracketed.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errs.push(format!(
                "listen_address: {} is not an IP address (IPv4 or IPv6 literal, e.g. 0.0.0.0 or ::){}",
                quote(s),
                if t.contains(':') && !t.starts_with('[') && t.matches(':').count() == 1 {
                    "; put the port in 'listen_port:'"
                } else {
                    ""
                }
            ));
            None
        }
    }
}

fn parse_log_level(errs: &mut Errors, at: &str, s: &str) -> Option<LogLevel> {
    match s.trim().to_ascii_lowercase().as_str() {
        "debug" => Some(LogLevel::Debug),
        "info" => Some(LogLevel::Info),
        "warning" | "warn" => Some(LogLevel::Warning),
        "error" => Some(LogLevel::Error),
        _ => {
            errs.push(format!(
                "{at}: {} is not a log level (one of debug, info, warning, error; case-insensitive)",
                quote(s)
            ));
            None
        }
    }
}

fn parse_log_format(errs: &mut Errors, s: &str) -> Option<LogFormat> {
    match s.trim().to_ascii_lowercase().as_str() {
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        _ => {
            errs.push(format!(
                "log_format: {} is not a log format (json or text; case-insensitive)",
                quote(s)
            ));
            None
        }
    }
}

fn build_filters(errs: &mut Errors, top: &Mapping) -> FilterConfig {
    let mut list = |key: &str, globs: bool| -> Vec<String> {
        let Some(v) = walk::get(top, key) else {
            return Vec::new();
        };
        let items = walk::text_list(errs, key, v);
        if globs {
            for (i, p) in items.iter().enumerate() {
                if let Err(e) = crate::metrics::filter::name_pattern(p) {
                    errs.push(format!(
                        "{key}[{i}]: {} is not a valid glob pattern ({} at character {}; use *, ? and [...] as in shell globs)",
                        quote(p),
                        e.msg,
                        e.pos + 1
                    ));
                }
            }
        }
        items
    };
    FilterConfig {
        exclude_rooms: list("exclude_rooms", false),
        exclude_types: list("exclude_types", false),
        exclude_names: list("exclude_names", true),
        exclude_categories: list("exclude_categories", false),
        include_rooms: list("include_rooms", false),
        include_types: list("include_types", false),
        include_names: list("include_names", true),
        include_categories: list("include_categories", false),
    }
}

/// The file at `path` must exist and be a regular file (`what` completes "expected …").
pub(crate) fn regular_file(errs: &mut Errors, at: &str, path: &str, what: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => Some(p),
        Ok(_) => {
            errs.push(format!(
                "{at}: {} is not a regular file (expected {what})",
                quote(path)
            ));
            None
        }
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "does not exist".to_string(),
                std::io::ErrorKind::PermissionDenied => {
                    "cannot be accessed (permission denied)".to_string()
                }
                _ => format!("cannot be accessed ({e})"),
            };
            errs.push(format!("{at}: {} {why} (expected {what})", quote(path)));
            None
        }
    }
}

/// A SHA-256 fingerprint: 64 hex digits, `:` and spaces allowed between them. Stored as
/// 64 lower-case hex digits.
fn fingerprint(errs: &mut Errors, f: &Sourced<String>) -> Option<String> {
    let digits: String = f
        .value
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    if digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(digits.to_ascii_lowercase())
    } else {
        errs.push(format!(
            "{}: {} is not a SHA-256 fingerprint (expected 64 hex digits, colons allowed, e.g. AB:CD:...)",
            f.at,
            quote(&f.value)
        ));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_character_is_refused_with_its_line_column_and_key_only() {
        let no_env = |_: &str| None;
        let error = |yaml: &str| match load_str(yaml, None, &no_env) {
            Ok(_) => panic!("loaded: {yaml:?}"),
            Err(e) => e.to_string(),
        };
        // the parser itself says "line 1 column 1" for each of these
        let e = error("miniservers:\n  - host: h\n    username: u\nlisten_port: \"9504\u{7f}\"\n");
        assert!(
            e.contains("line 4 column 19 in 'listen_port': the control character U+007F is not allowed in YAML"),
            "{e}"
        );
        // in a password: the key, never the value around it
        let e = error("miniservers:\n  - host: h\n    username: u\n    password: s3cr\u{1}et\n");
        assert!(
            e.contains("line 4 column 19 in 'password': the control character U+0001"),
            "{e}"
        );
        assert!(!e.contains("s3cr"), "{e}");
        // a header name is not a key of ours: where, not what
        let e = error("opentelemetry:\n  auth:\n    headers:\n      X-Tok\u{9f}en: v\n");
        assert!(
            e.contains("line 4 column 12: the control character U+009F"),
            "{e}"
        );
        assert!(!e.contains("X-Tok"), "{e}");
    }

    #[test]
    fn deep_bracket_nesting_is_refused_before_parsing_and_ordinary_brackets_are_not() {
        // ordinary files: brackets and apostrophes in quotes, plain text and comments
        let ordinary = "exclude_names: [\"Test[0-9]*\", 'Kid''s [room', Debug_*] # [[[[\n\
            exclude_rooms:\n  - Kid's room [2\n  - {a: [b, {c: [d]}]}\n\
            include_names: [\"a\\\"[[[\"]\n";
        assert_eq!(flow_nesting_beyond(ordinary, 4), None);
        // brackets in a plain scalar or a block scalar are text, however many
        let many = "[".repeat(100);
        for text in [
            format!("password: x{many}\n"),
            format!("password: |\n  {many}\n\n  {many}\nlog_level: info\n"),
            format!("miniservers:\n  - password: >-\n      {many}\n    name: a\n"),
        ] {
            assert_eq!(flow_nesting_beyond(&text, 64), None, "{text}");
        }
        // a block scalar ends where the indentation does
        let after = format!("a: |\n  text\nb: {}{}\n", "[".repeat(65), "]".repeat(65));
        assert_eq!(flow_nesting_beyond(&after, 64), Some((3, 3 + 65)));
        assert_eq!(flow_nesting_beyond(ordinary, 3), Some((4, 17)));
        assert!(parse_yaml(ordinary).is_ok());
        // the limit itself is fine, one more is not; the position is the bracket past it
        let nested = |n: usize| format!("exclude_names: {}{}\n", "[".repeat(n), "]".repeat(n));
        assert!(parse_yaml(&nested(MAX_FLOW_NESTING)).is_ok());
        let err = parse_yaml(&nested(MAX_FLOW_NESTING + 1)).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "line 1 column {}: brackets nested more than 64",
                15 + 65
            )),
            "{err}"
        );
        // 40k levels took the parser 6.7 s, 100k over a minute; now refused at the 65th
        assert!(parse_yaml(&nested(100_000)).is_err());
        assert_eq!(flow_nesting_beyond(&"[".repeat(100_000), 64), Some((1, 65)));
    }

    #[test]
    fn hostnames_follow_rfc1123_like_the_original() {
        for ok in ["miniserver", "ms.local", "a-b.example.com", "192x.example"] {
            assert!(is_hostname(ok), "{ok}");
        }
        for bad in [
            "",
            "-ms",
            "ms-",
            "my_ms",
            "a..b",
            "ms local",
            &"a".repeat(64),
        ] {
            assert!(!is_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn parse_errors_never_quote_values() {
        assert_eq!(
            strip_backticked("invalid type: integer `123456` as u128"),
            "invalid type: integer `…` as u128"
        );
    }
}
