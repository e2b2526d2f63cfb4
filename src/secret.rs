//! A string that must never be shown: passwords, tokens, auth header values.
//!
//! `Debug` and `Display` print `****`, so a secret that ends up in a log line, a panic
//! message, `/healthz` or `check` output by accident leaks nothing. The only way to read the
//! value is [`Secret::expose`], which makes every use greppable.

use std::fmt;

/// Mask printed in place of a secret value.
pub const MASK: &str = "****";

/// A secret string. Compare and clone freely; print it and you get `****`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value. Call this only where the value leaves the process on purpose
    /// (an auth hash, a request header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl From<&str> for Secret {
    fn from(v: &str) -> Self {
        Secret::new(v)
    }
}

impl From<String> for Secret {
    fn from(v: String) -> Self {
        Secret(v)
    }
}

/// A URL fit for a log line or a web page: `user:password@` becomes `****@` and every
/// query value becomes `****` (collectors that take an API key in the query string exist).
/// Errs on the side of hiding: a URL without a scheme is redacted the same way (it is what
/// a mistyped endpoint looks like), a password may hold `/`, `?` or `#`, and when an `@`
/// comes after a `?` or `#` (a password with one of those, or an `@` in the query) all
/// after the scheme is hidden.
pub fn redact_url(url: &str) -> String {
    let (mut out, after) = match url.split_once("://") {
        Some((scheme, after)) => (format!("{scheme}://"), after),
        None => (String::new(), url),
    };
    // userinfo ends at the last '@'; a '/' before it belongs to the password
    let after = match after.rfind('@') {
        Some(at) if after[..at].contains(['?', '#']) => {
            out.push_str(MASK);
            return out;
        }
        Some(at) => {
            out.push_str(MASK);
            &after[at..]
        }
        None => after,
    };
    let (host_and_path, query) = after.split_at(after.find(['?', '#']).unwrap_or(after.len()));
    out.push_str(host_and_path);
    if let Some(query) = query.strip_prefix('?') {
        let query = query.split('#').next().unwrap_or_default();
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(MASK);
                }
                None if pair.is_empty() => {}
                None => out.push_str(MASK),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_userinfo_and_query_values() {
        assert_eq!(
            redact_url("https://u:p@c.example:4318/v1/metrics"),
            "https://****@c.example:4318/v1/metrics"
        );
        assert_eq!(redact_url("http://c:4317"), "http://c:4317");
        assert_eq!(
            redact_url("http://c:1/v1/metrics?apikey=abc123&sig=zz&flag"),
            "http://c:1/v1/metrics?apikey=****&sig=****&****"
        );
        assert_eq!(redact_url("http://u@c?k=v#f"), "http://****@c?k=****");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn mistyped_and_odd_urls_hide_their_secrets_too() {
        for (url, shown) in [
            // no scheme: what a mistyped endpoint looks like in an error message
            (
                "c:4318/v1/metrics?api-key=SECRETKEY",
                "c:4318/v1/metrics?api-key=****",
            ),
            ("user:SECRETPW@c:4318", "****@c:4318"),
            // a password holding '/', '?' or '#'
            ("https://user:pa/ss@c:4318", "https://****@c:4318"),
            ("https://user:pa?ss@c:4318/x", "https://****"),
            ("https://user:pa#ss@c:4318", "https://****"),
            // an '@' in the query hides the rest rather than guess
            ("http://c/v1?mail=a@b&k=v", "http://****"),
            ("ftp://user:SECRETPW@h/", "ftp://****@h/"),
        ] {
            let got = redact_url(url);
            assert_eq!(got, shown, "{url}");
            assert!(
                !got.contains("SECRET") && !got.contains("ss@") && !got.contains("pa"),
                "{url} -> {got}"
            );
        }
    }

    #[test]
    fn debug_and_display_mask_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "****");
        assert_eq!(format!("{s:?}"), "****");
        assert_eq!(format!("{:?}", Some(&s)), "Some(****)");
        assert_eq!(s.expose(), "hunter2");
    }
}
