//! Captures build metadata for `--version` and `loxone_exporter_build_info`.
//!
//! `LOXONE_EXPORTER_VERSION`, `LOXONE_EXPORTER_COMMIT` and `LOXONE_EXPORTER_BUILD_DATE`
//! (set from Docker build arguments) win over what is detected here.

#[path = "src/civil_time.rs"]
mod civil_time;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    for var in [
        "LOXONE_EXPORTER_VERSION",
        "LOXONE_EXPORTER_COMMIT",
        "LOXONE_EXPORTER_BUILD_DATE",
        "SOURCE_DATE_EPOCH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    watch_git_head();

    let version = env_nonempty("LOXONE_EXPORTER_VERSION")
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
    let commit = env_nonempty("LOXONE_EXPORTER_COMMIT")
        .or_else(|| run("git", &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let build_date = env_nonempty("LOXONE_EXPORTER_BUILD_DATE").unwrap_or_else(|| {
        let secs = env_nonempty("SOURCE_DATE_EPOCH")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            });
        rfc3339_utc(secs)
    });
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());

    println!("cargo:rustc-env=LOXONE_EXPORTER_BUILD_VERSION={version}");
    println!("cargo:rustc-env=LOXONE_EXPORTER_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=LOXONE_EXPORTER_BUILD_DATE={build_date}");
    println!("cargo:rustc-env=LOXONE_EXPORTER_BUILD_RUSTC={rustc_version}");
}

/// Re-runs this script when the checked-out commit changes. HEAD lives in the worktree's git
/// dir, branch refs in the common dir (shared by `git worktree`s). Only existing paths are
/// named: cargo treats a missing one as always changed, which would re-stamp the build date
/// and rebuild the crate on every build (tarball builds, worktrees).
fn watch_git_head() {
    let mut watched = false;
    let mut watch = |path: std::path::PathBuf| {
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
            watched = true;
        }
    };
    if let Some(dir) = run("git", &["rev-parse", "--git-dir"]) {
        watch(std::path::Path::new(&dir).join("HEAD"));
    }
    if let Some(dir) = run("git", &["rev-parse", "--git-common-dir"]) {
        watch(std::path::Path::new(&dir).join("refs/heads"));
        watch(std::path::Path::new(&dir).join("packed-refs"));
    }
    if !watched {
        println!("cargo:rerun-if-changed=build.rs");
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_utc(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil_time::civil_from_unix(secs as i64);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}
