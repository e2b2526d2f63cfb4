//! Shared helpers for integration tests: finding the real third-party components that
//! `scripts/install-test-deps.sh` installs, free ports, and the exporter binary.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// Environment variable names set by `.test-env/env`.
pub const PROMTOOL: &str = "LOXEXP_PROMTOOL";
/// Prometheus server binary.
pub const PROMETHEUS: &str = "LOXEXP_PROMETHEUS";
/// nginx binary.
pub const NGINX: &str = "LOXEXP_NGINX";
/// nginx echo module path.
pub const NGINX_ECHO_MODULE: &str = "LOXEXP_NGINX_ECHO_MODULE";
/// wrk binary.
pub const WRK: &str = "LOXEXP_WRK";
/// openssl binary.
pub const OPENSSL: &str = "LOXEXP_OPENSSL";
/// Python of the test venv (has loxwebsocket, opentelemetry-proto, protobuf, grpcio).
pub const PYTHON: &str = "LOXEXP_PYTHON";
/// rotel-agent binary.
pub const ROTEL: &str = "LOXEXP_ROTEL";

/// True when running under CI (`CI=true`): missing components are then failures.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a component: from its `LOXEXP_*` variable, else from `.test-env/env`.
/// Returns `None` when it is not installed and we are not in CI (the caller then returns
/// early and says so); panics in CI, because a test that needs a real component must not
/// silently pass there.
pub fn component(var: &str) -> Option<PathBuf> {
    let found = std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| from_env_file(var))
        .map(PathBuf::from)
        .filter(|p| p.exists());
    match found {
        Some(p) => Some(p),
        None if in_ci() => {
            panic!("required test component {var} is missing: run scripts/install-test-deps.sh")
        }
        None => {
            eprintln!(
                "NOTE: {var} not installed; run scripts/install-test-deps.sh. Test body not run."
            );
            None
        }
    }
}

fn from_env_file(var: &str) -> Option<String> {
    let text = std::fs::read_to_string(repo_root().join(".test-env/env")).ok()?;
    text.lines().find_map(|l| {
        let l = l.strip_prefix("export ").unwrap_or(l);
        let (k, v) = l.split_once('=')?;
        (k == var).then(|| v.to_string())
    })
}

/// A free TCP port on loopback (bound and released; tiny race accepted in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind port 0")
}

/// The exporter binary built by cargo for integration tests.
pub fn exporter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loxone-exporter"))
}

/// A structure fixture by file name (`gen2-home-cz.json`, `gen2-demo-uk.json`).
pub fn structure_fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/structures").join(name)
}

/// Reads a fixture file.
pub fn read_fixture(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The `Content-Length` in a response head (`None` when absent or not a number).
pub fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The connections `listener` accepts, as the stream tonic's `serve_with_incoming` takes
/// (a test collector on a port bound beforehand).
pub fn accepted(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| s);
        Some((accepted, listener))
    })
}
