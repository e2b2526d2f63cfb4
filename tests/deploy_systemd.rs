//! The systemd unit and sd_notify (issue 6 "systemd"): `systemd-analyze verify` and the
//! offline security review on the shipped unit, the hardening directives it must keep, and
//! notifications/watchdog pings arriving on test sockets (path and abstract).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use loxone_exporter::systemd::{spawn_watchdog_with, Notifier};
use tokio_util::sync::CancellationToken;

const UNIT: &str = "deploy/systemd/loxone-exporter.service";

/// `systemd-analyze` from PATH (scripts/install-test-deps.sh installs Debian's `systemd`).
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("systemd-analyze"))
            .find(|p| p.exists())
    });
    match found {
        Some(p) => Some(p),
        None if common::in_ci() => {
            panic!("systemd-analyze missing: run scripts/install-test-deps.sh")
        }
        None => {
            eprintln!("NOTE: systemd-analyze not installed; test body not run");
            None
        }
    }
}

/// The unit with `ExecStart` pointing at the binary cargo built, so `verify` can check that
/// the command exists and is executable (it fails on a missing binary), in a unit directory
/// of its own.
fn unit_copy() -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(common::repo_root().join(UNIT)).unwrap();
    assert!(text.contains("/usr/local/bin/loxone-exporter"));
    let text = text.replace(
        "/usr/local/bin/loxone-exporter",
        &common::exporter_bin().display().to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loxone-exporter.service");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn systemd_analyze_verify_passes_without_warnings() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let (_dir, unit) = unit_copy();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and unparsable values and only warns: any output fails.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "verify: {stderr}"
    );

    // The check itself catches mistakes (guards against a verify that checks nothing).
    let broken = std::fs::read_to_string(&unit).unwrap().replace(
        "ProtectSystem=strict",
        "ProtectSystem=strikt\nHardenEverything=yes",
    );
    std::fs::write(&unit, broken).unwrap();
    let out = Command::new(systemd_analyze().unwrap())
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HardenEverything") && stderr.contains("strikt"),
        "{stderr}"
    );
}

#[test]
fn offline_security_review_rates_the_unit_ok() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let (_dir, unit) = unit_copy();
    // Exposure scale 0.0 (best) … 10.0; --threshold is in tenths. "OK" ends below 2.0.
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("no summary");
    eprintln!("{summary}");
    assert!(
        out.status.success(),
        "exposure above 2.0: {summary}\n{stdout}"
    );
}

#[test]
fn unit_keeps_the_required_directives() {
    let text = std::fs::read_to_string(common::repo_root().join(UNIT)).unwrap();
    let directives: Vec<(&str, &str)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let has = |k: &str, v: &str| directives.iter().any(|(dk, dv)| *dk == k && *dv == v);
    for (k, v) in [
        ("Type", "notify"),
        ("WatchdogSec", "30s"),
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("EnvironmentFile", "-/etc/loxone-exporter/env"),
    ] {
        assert!(has(k, v), "{k}={v} missing");
    }
    assert!(directives
        .iter()
        .any(|(k, v)| *k == "ExecStart" && v.contains("--config /etc/loxone-exporter/config.yml")));
    assert!(
        text.contains("LoadCredential="),
        "LoadCredential example missing"
    );
}

fn recv_all(sock: &UnixDatagram) -> Vec<String> {
    sock.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[test]
fn notify_reaches_a_path_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let n = Notifier::new(path.display().to_string()).unwrap();
    n.notify("READY=1").unwrap();
    n.notify("STATUS=connected to 1/1 Miniservers").unwrap();
    n.notify("STOPPING=1").unwrap();
    assert_eq!(
        recv_all(&sock),
        [
            "READY=1",
            "STATUS=connected to 1/1 Miniservers",
            "STOPPING=1"
        ]
    );
    // A socket that is gone is an error for the caller to log, not a panic.
    drop(sock);
    std::fs::remove_file(&path).unwrap();
    assert!(n.notify("READY=1").is_err());
}

#[cfg(target_os = "linux")]
#[test]
fn notify_reaches_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!(
        "loxone-exporter-test-{}-{}",
        std::process::id(),
        common::free_port()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    Notifier::new(format!("@{name}"))
        .unwrap()
        .notify("READY=1")
        .unwrap();
    assert_eq!(recv_all(&sock), ["READY=1"]);
}

#[tokio::test(start_paused = true)]
async fn watchdog_pings_at_the_interval_until_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let shutdown = CancellationToken::new();
    let task = spawn_watchdog_with(
        Notifier::new(path.display().to_string()).unwrap(),
        Duration::from_secs(15),
        shutdown.clone(),
    );
    tokio::task::yield_now().await;
    assert_eq!(recv_all(&sock), ["WATCHDOG=1"], "first ping immediately");
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert!(recv_all(&sock).is_empty(), "no ping before the interval");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(recv_all(&sock), ["WATCHDOG=1"]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(recv_all(&sock).len(), 2);
    shutdown.cancel();
    task.await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(recv_all(&sock).is_empty(), "no pings after shutdown");
}
