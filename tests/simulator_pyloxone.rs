//! Interoperability: the real third-party Python client `pyloxone-api` 0.2.4 (PyPI; JoDehli,
//! the "PYAPI" the protocol doc quotes) against the simulator. Unlike loxwebsocket it fetches
//! the structure over HTTP with Basic auth, PKCS#7-pads its ciphers after a NUL, leaves
//! base64's `/` unencoded in them, logs in again with its saved token (`authwithtoken/`
//! without the `jdev/sys/` prefix), and uses `checktoken` and `refreshjwt`
//! (tests/support/sim/pyloxone_probe.py prints a JSON summary we assert on).

#[path = "support/sim/client.rs"]
mod client;
mod common;
#[path = "support/sim/probe.rs"]
mod probe;

use client::{start, PASSWORD, USER};
use loxone_exporter::loxone::simulator::{HashAlgArg, Simulator, SimulatorOptions};

/// The venv of `scripts/install-test-deps.sh` that holds pyloxone-api (its own: its pins
/// clash with loxwebsocket's).
const PYLOXONE_PYTHON: &str = "LOXEXP_PYLOXONE_PYTHON";

/// Runs the probe over http/ws, or with `tls` over https/wss to `localhost`, trusting only
/// the simulator's certificate.
async fn run_probe(sim: &Simulator, tls: bool) -> Option<serde_json::Value> {
    let python = common::component(PYLOXONE_PYTHON)?;
    let probe = common::repo_root().join("tests/support/sim/pyloxone_probe.py");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(probe);
    // the certificate file lives until the probe has run
    let _ca_dir = if tls {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("simulator.pem");
        std::fs::write(&ca, sim.tls_certificate_pem().expect("TLS listener")).expect("write CA");
        // read by OpenSSL (websockets) and by httpx
        cmd.env("SSL_CERT_FILE", &ca).env_remove("SSL_CERT_DIR");
        let port = sim.tls_addr().expect("TLS listener").port();
        cmd.arg(format!("localhost:{port}"));
        Some(dir)
    } else {
        cmd.arg(sim.http_addr().to_string());
        None
    };
    cmd.arg(USER)
        .arg(PASSWORD)
        .arg("30")
        .arg(if tls { "tls" } else { "plain" });
    Some(probe::run_json_probe(cmd).await)
}

fn assert_summary(sim: &Simulator, v: &serde_json::Value, tls: bool) {
    // the structure over HTTP with Basic auth, the initial tables, a plain jdev/sps/io
    probe::assert_common_summary(sim, v);
    // the apiKey version
    assert!(
        v["miniserver_version"]
            .as_str()
            .is_some_and(|s| s.split('.').all(|p| p.parse::<u32>().is_ok())),
        "{v}"
    );
    // password login over the encrypted WebSocket
    assert_eq!(v["login_ok"], true, "{v}");
    assert_eq!(v["token_saved"], true, "{v}");
    assert_eq!(v["checktoken_ok"], true, "{v}");
    // keepalive is answered by a header alone, of type 6
    assert_eq!(v["keepalive_header_type"], 6, "{v}");
    // second socket: the saved token logs in, then refreshjwt answers a validUntil
    assert_eq!(v["token_login_ok"], true, "{v}");
    assert_eq!(v["token_reused"], true, "{v}");
    assert!(
        v["refreshed_valid_until"].as_u64().is_some_and(|t| t > 0),
        "refreshjwt gave no validUntil: {v}"
    );
    let counters = sim.counters();
    assert_eq!(counters.auth_ok, 2, "{counters:?}");
    assert_eq!(counters.auth_failures, 0, "{counters:?}");
    assert_eq!(counters.tokens_refreshed, 1, "{counters:?}");
    assert!(counters.keepalives >= 1, "{counters:?}");
    // ws_connections counts every socket, wss_connections the TLS ones among them
    let wss = if tls { 2 } else { 0 };
    assert_eq!(
        (counters.ws_connections, counters.wss_connections),
        (2, wss),
        "{counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyloxone_api_logs_in_receives_events_and_reuses_its_token() {
    // rate 0: the probe reads answers to its token commands straight from the socket, as the
    // library does, so no generated event may come in between
    let sim = start(|_: &mut SimulatorOptions| {}).await;
    let Some(v) = run_probe(&sim, false).await else {
        return;
    };
    assert_summary(&sim, &v, false);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyloxone_api_with_a_sha1_user() {
    let sim = start(|o: &mut SimulatorOptions| o.hash_alg = HashAlgArg::Sha1).await;
    let Some(v) = run_probe(&sim, false).await else {
        return;
    };
    assert_summary(&sim, &v, false);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyloxone_api_over_https_and_wss_checks_the_certificate() {
    // a Gen2 Miniserver: Python's TLS stack verifies the chain and the host name
    let sim = start(|o: &mut SimulatorOptions| {
        o.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let Some(v) = run_probe(&sim, true).await else {
        return;
    };
    assert_summary(&sim, &v, true);
    sim.shutdown().await;
}
