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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_mask_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "****");
        assert_eq!(format!("{s:?}"), "****");
        assert_eq!(format!("{:?}", Some(&s)), "Some(****)");
        assert_eq!(s.expose(), "hunter2");
    }
}
