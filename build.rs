//! Captures build metadata for `--version` and `loxone_exporter_build_info`.
//!
//! `LOXONE_EXPORTER_VERSION`, `LOXONE_EXPORTER_COMMIT` and `LOXONE_EXPORTER_BUILD_DATE`
//! (set from Docker build arguments) win over what is detected here.

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
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");

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

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, no dependencies).
fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}
