//! The effective configuration as text for `loxone-exporter check`, secrets masked.

use super::Config;

/// Renders the effective settings as YAML-like text; secrets print as `****`.
pub fn render_effective(config: &Config) -> String {
    format!("{config:#?}\n")
}
