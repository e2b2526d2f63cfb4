//! Build metadata captured by `build.rs`: what `--version` prints and what labels
//! `loxone_exporter_build_info`.

/// Crate or release version (`LOXONE_EXPORTER_VERSION` at build time wins).
pub const VERSION: &str = env!("LOXONE_EXPORTER_BUILD_VERSION");
/// Git commit (short), or `unknown` outside a checkout.
pub const COMMIT: &str = env!("LOXONE_EXPORTER_BUILD_COMMIT");
/// Build date, RFC 3339 UTC.
pub const BUILD_DATE: &str = env!("LOXONE_EXPORTER_BUILD_DATE");
/// `rustc --version` of the compiler that built this binary.
pub const RUSTC_VERSION: &str = env!("LOXONE_EXPORTER_BUILD_RUSTC");

/// The `--version` text.
pub fn version_text() -> String {
    format!(
        "loxone-exporter {VERSION}\n  commit:     {COMMIT}\n  build date: {BUILD_DATE}\n  rustc:      {RUSTC_VERSION}\n"
    )
}
