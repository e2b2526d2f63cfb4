//! The exporter's Miniserver client against the in-process simulator over real sockets:
//! the full flow on both real structure files (values reach the store), wrong password
//! (long backoff after 3 failures, no password in `last_error`),
//! reboot mid-stream, out-of-service, token refresh and reuse, structure change across a
//! reboot, malformed frames, two Miniservers with one down, a 5 MiB structure, TLS
//! (self-signed accepted, fingerprint pinning) and estimated headers with split frames.
//! `promtool` checks the metrics each scenario leaves behind (`Client::stop`).
//!
//! Real time with short client timeouts (paused time cannot drive real sockets); every wait
//! polls a condition, bounded only against a hang (`WAIT`): how long something took is
//! asserted only as a lower bound, or from the simulator's own records, never as a deadline
//! a slow machine could miss.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loxone_exporter::config::{FilterConfig, MiniserverConfig};
use loxone_exporter::loxone::client::{run_miniserver_with, ClientOptions};
use loxone_exporter::loxone::simulator::{
    self, EstimatedFlag, MalformedKind, Simulator, SimulatorOptions,
};
use loxone_exporter::loxone::structure::parse_structure;
use loxone_exporter::loxone::uuid::LoxUuid;
use loxone_exporter::metrics::store::{MiniserverState, StateStore};
use loxone_exporter::metrics::text::encode_to_string;
use loxone_exporter::metrics::{Registry, Value};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const USER: &str = "exporter";
const PASSWORD: &str = "pa ss/wörd";
const WAIT: Duration = Duration::from_secs(15);

fn sim_options() -> SimulatorOptions {
    SimulatorOptions {
        rsa_key: Some(common::repo_root().join("tests/fixtures/loxone/test-rsa-1024.pem")),
        user: USER.into(),
        password: PASSWORD.into(),
        rate: 0.0,
        ..SimulatorOptions::default()
    }
}

async fn start_sim(f: impl FnOnce(&mut SimulatorOptions)) -> Simulator {
    let mut o = sim_options();
    f(&mut o);
    simulator::start(o).await.expect("simulator starts")
}

/// Fast client timings for tests.
fn fast_options() -> ClientOptions {
    ClientOptions {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(800),
        backoff_jitter: 0.0,
        auth_failure_backoff: Duration::from_secs(3),
        command_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        http_timeout: Duration::from_secs(5),
        keepalive_interval: Duration::from_millis(500),
        liveness_timeout: Duration::from_secs(3),
        // killtoken is answered at once here; 500 ms (the default) could run out on a slow
        // machine and leave the token alive, which `shutdown_kills_the_token_promptly` checks
        shutdown_grace: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

fn ms_config(name: &str, addr: SocketAddr, password: &str) -> MiniserverConfig {
    let mut c = MiniserverConfig::new(name, &addr.ip().to_string(), USER, password);
    c.port = addr.port();
    c
}

struct Client {
    store: Arc<StateStore>,
    state: Arc<MiniserverState>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Client {
    fn start(config: MiniserverConfig, options: ClientOptions) -> Self {
        let store = StateStore::new(&FilterConfig::default(), true).expect("store");
        Self::start_in(&store, config, options)
    }

    fn start_in(store: &Arc<StateStore>, config: MiniserverConfig, options: ClientOptions) -> Self {
        let state = store.add_miniserver(&config.name);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_miniserver_with(
            config,
            options,
            state.clone(),
            shutdown.clone(),
        ));
        Client {
            store: store.clone(),
            state,
            shutdown,
            task,
        }
    }

    /// Checks the metrics the scenario left behind with `promtool`, then stops the client,
    /// which must end (within `WAIT`: a hang, e.g. a backoff or keepalive not giving way to
    /// the shutdown, not a slow machine; its timers, `shutdown_grace`, bound the time).
    async fn stop(self) {
        promtool_check(&encode_to_string(&registry_of(&self.store).snapshot()));
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("client stops")
            .expect("client task");
    }

    fn values(&self) -> Vec<(String, f64)> {
        let snap = registry_of(&self.store).snapshot();
        snap.family("loxone_control_value")
            .map(|f| {
                f.samples
                    .iter()
                    .filter(|s| s.labels.get("miniserver") == Some(self.state.name()))
                    .filter_map(|s| match s.value {
                        Value::Number(v) => Some((s.labels.to_text(), v)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn has_value(&self, v: f64) -> bool {
        self.values().iter().any(|(_, x)| *x == v)
    }

    fn connected(&self) -> bool {
        self.state.health().connected
    }
}

fn registry_of(store: &Arc<StateStore>) -> Registry {
    let registry = Registry::new();
    registry.register(store.clone());
    registry
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A value state that belongs to a (numeric) control, so it is exported as a series;
/// `value_state_uuids` also holds global and weather states, which are not.
fn control_value_state(sim: &Simulator) -> LoxUuid {
    let ctl = sim.control();
    let values: HashSet<LoxUuid> = ctl.value_state_uuids().into_iter().collect();
    let structure = parse_structure(ctl.structure_text().as_bytes()).expect("structure");
    structure
        .controls
        .iter()
        .flat_map(|c| c.walk())
        .filter(|c| {
            matches!(
                c.control_type.as_str(),
                "InfoOnlyAnalog" | "Switch" | "Meter"
            )
        })
        .flat_map(|c| c.states.iter().flat_map(|s| s.uuids.iter().copied()))
        .find(|u| values.contains(u))
        .expect("a numeric control state")
}

/// The room (UUID) of the control that owns [`control_value_state`].
fn marker_room(sim: &Simulator) -> String {
    let uuid = control_value_state(sim);
    let structure = parse_structure(sim.control().structure_text().as_bytes()).expect("structure");
    structure
        .controls
        .iter()
        .flat_map(|c| c.walk())
        .find(|c| c.states.iter().any(|s| s.uuids.contains(&uuid)))
        .and_then(|c| c.room.clone())
        .expect("the marker's control has a room")
}

/// Sets a distinctive value on the simulator and waits until the client's store has it.
async fn value_flows(sim: &Simulator, client: &Client, v: f64) {
    let ctl = sim.control();
    let uuid = control_value_state(sim);
    assert!(ctl.set_value(uuid, v));
    wait_for(&format!("value {v} in the store"), || client.has_value(v)).await;
}

fn promtool_check(text: &str) {
    let Some(promtool) = common::component(common::PROMTOOL) else {
        return;
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn full_flow_on_both_real_structures() {
    for file in ["gen2-home-cz.json", "gen2-demo-uk.json"] {
        let path: PathBuf = common::structure_fixture(file);
        let sim = start_sim(|o| o.structure = Some(path)).await;
        let client = Client::start(ms_config("home", sim.http_addr(), PASSWORD), fast_options());
        wait_for("connected", || client.connected()).await;
        let health = client.state.health();
        assert_eq!(
            health.controls_discovered,
            sim.control().control_count(),
            "{file}"
        );
        assert!(
            health.controls_exported > 0,
            "{file}: initial tables applied"
        );
        assert!(health.last_update > 0.0);
        assert!(health.last_error.is_none());
        let info = client.state.info().expect("miniserver info");
        assert!(
            !info.serial.is_empty() && !info.firmware.is_empty(),
            "{info:?}"
        );
        // the whole initial table arrived: every value state of the simulator is a series
        let initial = client.values().len();
        assert!(initial > 10, "{file}: {initial} series");
        value_flows(&sim, &client, 4242.25).await;
        let counters = sim.counters();
        assert_eq!(counters.ws_connections, 1);
        assert!(counters.encrypted_commands >= 2, "token commands encrypted");

        let text = encode_to_string(&registry_of(&client.store).snapshot());
        assert!(text.contains("loxone_miniserver_info{"), "{file}");
        promtool_check(&text);
        client.stop().await;
        sim.shutdown().await;
    }
}

/// README "Wrong credentials": after 3 failed logins in a row the client waits the long
/// backoff (3 s here, 5 min by default) before each further attempt; before that, the
/// ordinary exponential backoff. Measured on the simulator's clock: it notes when each
/// failed login happened, so the gaps hold the client's waits whatever the poll below sees.
#[tokio::test]
async fn wrong_password_backs_off_and_goes_long_after_three_failures() {
    let sim = start_sim(|o| o.max_failed_logins = 100).await;
    let options = fast_options();
    let client = Client::start(ms_config("ms", sim.http_addr(), "hunter2"), options.clone());
    // from the 3rd failure on, last_error names the lockout; it stays until a login works
    wait_for("the long backoff in last_error", || {
        client
            .state
            .health()
            .last_error
            .is_some_and(|e| e.contains("lockout"))
    })
    .await;
    assert!(
        sim.counters().auth_failures >= 3,
        "the long backoff only after the 3rd failure"
    );
    assert!(client.state.error_count("auth") >= 3);
    // the alert's gauge: every refused login so far, in a row
    let in_a_row = client.state.consecutive_login_failures();
    assert!(
        in_a_row >= 3 && u64::from(in_a_row) <= sim.counters().auth_failures,
        "{in_a_row} refused logins in a row, the simulator refused {}",
        sim.counters().auth_failures
    );
    assert!(!client.state.health().connected);
    let last_error = client.state.health().last_error.unwrap_or_default();
    assert!(
        !last_error.contains("hunter2"),
        "no password in /healthz: {last_error}"
    );
    wait_for("4th attempt after the long backoff", || {
        sim.counters().auth_failures >= 4
    })
    .await;
    let times = sim.auth_failure_times();
    let gaps: Vec<Duration> = times[..4].windows(2).map(|w| w[1] - w[0]).collect();
    println!("gaps between the failed logins: {gaps:?}");
    // The simulator notes a failure before its 401 leaves; the client starts waiting only
    // after reading it, and its next failure comes after the next login attempt (HTTP, key
    // exchange, login): each gap holds the whole wait plus that attempt. A lower bound
    // therefore holds on any machine (5 ms: timer granularity).
    let eps = Duration::from_millis(5);
    assert!(
        gaps[2] >= options.auth_failure_backoff - eps,
        "no 4th login during the long backoff: {gaps:?}"
    );
    // ordinary backoff without jitter: 100 ms, then 200 ms (at most `backoff_max`, 800 ms)
    assert!(
        gaps[0] >= options.backoff_initial - eps && gaps[1] >= 2 * options.backoff_initial - eps,
        "the ordinary backoff before the 3rd failure: {gaps:?}"
    );
    // ... and not yet the long one. The upper bound is the long backoff itself: a gap
    // shorter than it cannot hold it. That leaves 2.2 s above `backoff_max` for one login
    // attempt (10-70 ms in a debug build here), so a slow machine does not fail this.
    assert!(
        gaps[0] < options.auth_failure_backoff && gaps[1] < options.auth_failure_backoff,
        "the long backoff already before the 3rd failure: {gaps:?}"
    );
    // the right password later: the next attempt logs in
    sim.control().set_password("hunter2");
    wait_for("connected with the new password", || client.connected()).await;
    assert!(client.state.health().last_error.is_none());
    assert_eq!(
        client.state.consecutive_login_failures(),
        0,
        "a login worked"
    );
    assert!(
        client.state.error_count("auth") >= 4,
        "the counter keeps them"
    );
    client.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn reboot_mid_stream_reconnects_and_keeps_values() {
    let sim = start_sim(|_| {}).await;
    let client = Client::start(ms_config("ms", sim.http_addr(), PASSWORD), fast_options());
    wait_for("connected", || client.connected()).await;
    value_flows(&sim, &client, 777.0).await;
    sim.control().reboot(Duration::from_secs(2));
    // counted when the client leaves the socket: unlike `!connected`, a poll cannot miss it
    // when the machine is slow and the client is already back
    wait_for("left the socket", || {
        client.state.error_count("closed") >= 1
    })
    .await;
    assert!(client.has_value(777.0), "values kept while disconnected");
    wait_for("reconnected", || {
        sim.counters().ws_connections >= 2 && client.connected()
    })
    .await;
    value_flows(&sim, &client, 778.5).await;
    client.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn out_of_service_and_close_codes_reconnect() {
    let sim = start_sim(|_| {}).await;
    let client = Client::start(ms_config("ms", sim.http_addr(), PASSWORD), fast_options());
    wait_for("connected", || client.connected()).await;
    sim.control().out_of_service();
    wait_for("second connection", || sim.counters().ws_connections >= 2).await;
    wait_for("reconnected", || client.connected()).await;
    for code in [4007u16, 4008, 4005] {
        let before = sim.counters().ws_connections;
        sim.control().close_all(code);
        wait_for(&format!("reconnect after {code}"), || {
            sim.counters().ws_connections > before && client.connected()
        })
        .await;
    }
    value_flows(&sim, &client, 31.0).await;
    client.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn token_refreshed_before_expiry_and_reused_on_reconnect() {
    const LIFETIME: Duration = Duration::from_secs(4);
    let sim = start_sim(|o| o.token_lifetime_web = LIFETIME).await;
    let started = Instant::now(); // before the first token was issued
    let client = Client::start(ms_config("ms", sim.http_addr(), PASSWORD), fast_options());
    wait_for("connected", || client.connected()).await;
    // the simulator closes a socket whose token expires; the client refreshes at half the
    // remaining lifetime (at least 1 s apart), so three refreshes take it past the first
    // token's expiry: on the first socket if they came in time
    wait_for("three token refreshes", || {
        sim.counters().tokens_refreshed >= 3
    })
    .await;
    assert_eq!(sim.counters().ws_connections, 1, "token refreshed in time");
    assert!(client.connected());
    // a lower bound (a slow machine only adds to it): the session outlived the first token
    // rather than refreshing in a hurry
    assert!(
        started.elapsed() >= LIFETIME,
        "3 refreshes in {:?}",
        started.elapsed()
    );

    // a changed password does not matter to authwithtoken: reconnecting proves reuse
    sim.control().set_password("changed elsewhere");
    sim.control().close_all(4007);
    wait_for("reconnected with the token", || {
        sim.counters().ws_connections >= 2 && client.connected()
    })
    .await;
    assert_eq!(
        sim.counters().auth_failures,
        0,
        "no password login was tried"
    );

    // expired tokens: closed with 1000, authwithtoken gets 401, password login follows
    sim.control().set_password(PASSWORD);
    sim.control().expire_tokens();
    wait_for("reconnected after expiry", || {
        sim.counters().ws_connections >= 3 && client.connected()
    })
    .await;
    value_flows(&sim, &client, 12.5).await;
    client.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn structure_changed_before_a_reboot_is_downloaded() {
    let sim = start_sim(|_| {}).await;
    let client = Client::start(ms_config("ms", sim.http_addr(), PASSWORD), fast_options());
    wait_for("connected", || client.connected()).await;
    let first = client.state.structure_version().expect("loaded");
    assert_eq!(first, sim.control().last_modified());
    value_flows(&sim, &client, 61.0).await;
    // the marker's room is renamed and the Miniserver reboots, as a real one does for a new
    // program: the client learns of it only on reconnecting and must use the new file, not
    // the old. (Renamed before the reboot, not while the client is away: that would race
    // the client's reconnect on a slow machine.)
    let room = marker_room(&sim);
    let changed = sim
        .control()
        .edit_structure(|text| {
            let mut raw: serde_json::Value = serde_json::from_str(text).expect("json");
            raw["rooms"][&room]["name"] = "Renamed while away".into();
            raw.to_string()
        })
        .expect("edited structure loads");
    assert_ne!(changed, first);
    sim.control().reboot(Duration::from_secs(2));
    wait_for("new structure loaded", || {
        client.state.structure_version().as_deref() == Some(changed.as_str())
    })
    .await;
    wait_for("connected", || client.connected()).await;
    value_flows(&sim, &client, 62.0).await;
    let renamed = client
        .values()
        .into_iter()
        .filter(|(labels, v)| *v == 62.0 && labels.contains("room=\"Renamed while away\""))
        .count();
    assert_eq!(renamed, 1, "{:?}", client.values());
    client.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_are_counted_without_disconnecting() {
    let sim = start_sim(|_| {}).await;
    let client = Client::start(ms_config("ms", sim.http_addr(), PASSWORD), fast_options());
    wait_for("connected", || client.connected()).await;
    let kinds = [
        MalformedKind::TruncatedValueTable,
        MalformedKind::TruncatedTextTable,
        MalformedKind::NonUtf8Text,
        MalformedKind::OversizedHeader,
        MalformedKind::GarbageHeader,
        MalformedKind::UnsolicitedBinaryFile,
        MalformedKind::PayloadWithoutHeader,
    ];
    let mut counted = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        let before = client.state.error_count("protocol");
        sim.control().inject_malformed(kind);
        // the value sent after the bad frame arrives: the stream is back in step
        value_flows(&sim, &client, 1000.0 + i as f64).await;
        counted.push((kind, client.state.error_count("protocol") - before));
    }
    // non-UTF-8 text is what firmware sends (rewritten, not an error); an unsolicited
    // binary file is ignored
    let expected = [1, 1, 0, 1, 1, 0, 1];
    assert_eq!(
        counted.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        expected,
        "protocol errors counted per kind: {counted:?}"
    );
    assert_eq!(sim.counters().ws_connections, 1, "never reconnected");
    assert!(client.connected());
    client.stop().await;
    sim.shutdown().await;
}

/// Connects a client named `name`, injects `fault`, and waits until the client has left that
/// socket and is connected again; live values must then flow, and `check` sees the client.
async fn left_and_reconnected(
    name: &str,
    fault: impl FnOnce(&simulator::SimControl),
    marker: f64,
    check: impl FnOnce(&Client),
) {
    left_and_reconnected_with(fast_options(), name, fault, marker, check).await;
}

async fn left_and_reconnected_with(
    options: ClientOptions,
    name: &str,
    fault: impl FnOnce(&simulator::SimControl),
    marker: f64,
    check: impl FnOnce(&Client),
) {
    let sim = start_sim(|_| {}).await;
    let client = Client::start(ms_config(name, sim.http_addr(), PASSWORD), options);
    wait_for("connected", || client.connected()).await;
    fault(&sim.control());
    wait_for("reconnected", || {
        sim.counters().ws_connections >= 2 && client.connected()
    })
    .await;
    value_flows(&sim, &client, marker).await;
    check(&client);
    client.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_miniserver_hung_mid_message_is_left_after_the_liveness_timeout() {
    // an 8 MiB table announced and never sent: by the header alone the client would wait
    // 3 s + 128 s (64 KiB/s); no byte for the liveness timeout (3 s) ends it
    left_and_reconnected(
        "hung",
        |ctl| ctl.hang_mid_message(),
        8.25,
        |client| assert!(client.state.error_count("timeout") >= 1),
    )
    .await;
}

/// What the clients of this test binary logged at WARN and above, from the first call on.
/// A global subscriber, not a thread-local one: tracing caches per call site whether anyone
/// listens, and a test on a thread without a subscriber would switch a scoped one's call
/// sites off for the whole process.
fn warnings() -> String {
    static LOG: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    #[derive(Clone)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = LOG.get_or_init(|| {
        let sink = Sink(Arc::default());
        let log = sink.0.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        log
    });
    String::from_utf8_lossy(&log.lock().expect("log")).into_owned()
}

/// The session with Miniserver `name` ended once, counted as one `timeout` and nothing else,
/// and the log names one of `bounds` as the reason.
fn left_once_by(client: &Client, name: &str, bounds: &[&str]) {
    use loxone_exporter::metrics::store::ERROR_KINDS;
    let counted: Vec<_> = ERROR_KINDS
        .iter()
        .map(|k| (*k, client.state.error_count(k)))
        .filter(|(_, n)| *n > 0)
        .collect();
    // `miniserver=deaf` but not `miniserver=deaf-no-keepalive` (a field or a span's)
    let marker = format!("miniserver={name}");
    let names_it = |l: &str| {
        l.match_indices(&marker).any(|(at, _)| {
            l[at + marker.len()..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_'))
        })
    };
    let log: String = warnings().lines().filter(|l| names_it(l)).collect();
    assert_eq!(counted, [("timeout", 1)], "left once, by a bound\n{log}");
    assert!(bounds.iter().any(|b| log.contains(b)), "which bound? {log}");
}

/// Pings keep coming, pongs and keepalives cannot leave. The client must neither wait on
/// its keepalive forever nor queue what it owes without end: it leaves the socket once, when
/// its bounded write buffer is full (tungstenite's "Write buffer is full"), when a write
/// made no progress for the command timeout ("read nothing for"), or when the keepalive's
/// send timeout runs out, whichever comes first on this machine; all are bounds, all count
/// as one `timeout`, and nothing else may go wrong.
#[tokio::test]
async fn a_miniserver_that_stops_reading_is_left_and_reconnected() {
    warnings(); // from now on
    left_and_reconnected(
        "deaf",
        |ctl| ctl.deaf_ping_flood(),
        9.75,
        |client| {
            left_once_by(
                client,
                "deaf",
                &[
                    "Write buffer is full",
                    "the Miniserver read nothing for",
                    "could not send keepalive",
                    "no message from the Miniserver",
                ],
            )
        },
    )
    .await;
}

/// The same deaf Miniserver with the keepalive and the liveness timeout out of reach: the
/// client must not wait for its next keepalive to notice (with the default 30 s interval
/// and 10 s send limit that was up to 40 s, while the socket's reads stalled behind the
/// pongs it owed). A write without progress for the command timeout ends the session, or
/// the full write buffer does, whichever comes first.
#[tokio::test]
async fn a_miniserver_that_stops_reading_is_left_before_the_next_keepalive() {
    warnings(); // from now on
    let options = ClientOptions {
        keepalive_interval: Duration::from_secs(600),
        liveness_timeout: Duration::from_secs(1200),
        command_timeout: Duration::from_secs(2),
        ..fast_options()
    };
    left_and_reconnected_with(
        options,
        "deaf-no-keepalive",
        |ctl| ctl.deaf_ping_flood(),
        9.5,
        |client| {
            left_once_by(
                client,
                "deaf-no-keepalive",
                &["the Miniserver read nothing for 2s", "Write buffer is full"],
            )
        },
    )
    .await;
}

#[tokio::test]
async fn two_miniservers_one_down() {
    let sim = start_sim(|o| o.rate = 50.0).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }; // closed again: connections are refused
    let store = StateStore::new(&FilterConfig::default(), false).expect("store");
    let up = Client::start_in(
        &store,
        ms_config("up", sim.http_addr(), PASSWORD),
        fast_options(),
    );
    let down = Client::start_in(&store, ms_config("down", dead, PASSWORD), fast_options());
    wait_for("up connected", || up.connected()).await;
    let t0 = up.state.health().last_update;
    wait_for("up keeps updating", || up.state.health().last_update > t0).await;
    value_flows(&sim, &up, 99.5).await;
    wait_for("down counted failures", || {
        down.state.error_count("connect") >= 3
    })
    .await;
    assert!(!down.connected());
    assert!(down.state.health().last_error.is_some());
    up.stop().await;
    down.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn five_mib_structure_loads() {
    let bytes = loxone_exporter::loxone::synth::structure_of_size(5 * 1024 * 1024);
    assert!(bytes.len() >= 5 * 1024 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("LoxAPP3.json");
    std::fs::write(&path, &bytes).expect("write");
    let sim = start_sim(|o| o.structure = Some(path)).await;
    let client = Client::start(ms_config("big", sim.http_addr(), PASSWORD), fast_options());
    wait_for("connected", || client.connected()).await;
    assert_eq!(
        client.state.health().controls_discovered,
        sim.control().control_count()
    );
    value_flows(&sim, &client, -1.5).await;
    client.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn tls_self_signed_and_fingerprint_pinning() {
    let sim = start_sim(|o| o.tls_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let tls_addr = sim.tls_addr().expect("tls listener");
    let der = sim.tls_certificate_der().expect("cert").to_vec();
    let tls_config = |fingerprint: Option<String>| {
        let mut c = ms_config("tls", tls_addr, PASSWORD);
        c.use_encryption = true;
        c.ssl_port = tls_addr.port();
        c.tls_fingerprint = fingerprint;
        c
    };

    let client = Client::start(tls_config(None), fast_options());
    wait_for("connected over TLS", || client.connected()).await;
    value_flows(&sim, &client, 5.5).await;
    client.stop().await;

    let pin = hex::encode(Sha256::digest(&der));
    let client = Client::start(tls_config(Some(pin)), fast_options());
    wait_for("connected with the pinned certificate", || {
        client.connected()
    })
    .await;
    client.stop().await;

    let client = Client::start(tls_config(Some("00".repeat(32))), fast_options());
    wait_for("fingerprint mismatch counted", || {
        client.state.error_count("connect") >= 2
    })
    .await;
    assert!(!client.connected());
    let last_error = client.state.health().last_error.unwrap_or_default();
    assert!(
        last_error.contains("tls_fingerprint")
            && last_error.contains(&hex::encode(Sha256::digest(&der))),
        "names the setting and the certificate seen: {last_error}"
    );
    client.stop().await;
    sim.shutdown().await;
}

/// A TCP proxy whose target can be changed while it runs: port 443 forwarded elsewhere.
struct SwitchableProxy {
    port: u16,
    target: Arc<std::sync::Mutex<SocketAddr>>,
}

impl SwitchableProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = Arc::new(std::sync::Mutex::new(target));
        let current = target.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *current.lock().expect("lock");
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        SwitchableProxy { port, target }
    }

    fn switch_to(&self, target: SocketAddr) {
        *self.target.lock().expect("lock") = target;
    }
}

/// Starts a client of `sim` with `ssl_port` and checks that it connected with one ws://
/// WebSocket and no wss:// one.
async fn connects_over_ws_only(sim: &Simulator, ssl_port: u16) -> Client {
    let mut c = ms_config("fallback", sim.http_addr(), PASSWORD);
    c.ssl_port = ssl_port;
    let before = sim.counters();
    let client = Client::start(c, fast_options());
    wait_for("connected over ws://", || client.connected()).await;
    let n = sim.counters();
    assert_eq!(n.ws_connections - before.ws_connections, 1, "{n:?}");
    assert_eq!(n.wss_connections, before.wss_connections, "{n:?}");
    client
}

/// Starts a client of `sim` whose `ssl_port` is a proxy to `sim`'s TLS listener, checks that
/// it connected with wss://, then forwards the proxy to `elsewhere` and ends the session:
/// the client must come back over ws://, with no second wss:// connection.
async fn upgraded_then_reforwarded(sim: &Simulator, elsewhere: SocketAddr) -> Client {
    let proxy = SwitchableProxy::start(sim.tls_addr().expect("tls listener")).await;
    let mut c = ms_config("re-forwarded", sim.http_addr(), PASSWORD);
    c.ssl_port = proxy.port;
    let before = sim.counters();
    let client = Client::start(c, fast_options());
    wait_for("connected over wss://", || client.connected()).await;
    assert_eq!(sim.counters().wss_connections - before.wss_connections, 1);
    proxy.switch_to(elsewhere);
    sim.control().close_all(1001);
    wait_for("reconnected over ws://", || {
        let n = sim.counters();
        client.connected() && n.ws_connections - before.ws_connections == 2
    })
    .await;
    let n = sim.counters();
    assert_eq!(n.wss_connections - before.wss_connections, 1, "{n:?}");
    client
}

/// A configuration without `use_encryption` moves to wss:// when the Miniserver offers TLS
/// (`httpsStatus` 1 in `jdev/cfg/apiKey`, as Gen 2 does), before any credential is sent:
/// the only WebSocket is the TLS one. When wss:// cannot be reached, or answers as another
/// Miniserver, it stays on ws:// (commands encrypted) and still gets live values.
#[tokio::test]
async fn a_miniserver_offering_tls_gets_wss_without_use_encryption() {
    let tls_listen =
        |o: &mut SimulatorOptions| o.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let sim = start_sim(tls_listen).await;
    let mut c = ms_config("upgraded", sim.http_addr(), PASSWORD);
    c.ssl_port = sim.tls_addr().expect("tls listener").port();
    let client = Client::start(c, fast_options());
    wait_for("connected", || client.connected()).await;
    let n = sim.counters();
    assert_eq!((n.ws_connections, n.wss_connections), (1, 1), "{n:?}");
    value_flows(&sim, &client, 7.5).await;
    client.stop().await;

    // nothing listens on ssl_port: ws:// after one refused connection
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let client = connects_over_ws_only(&sim, closed_port).await;
    value_flows(&sim, &client, 8.5).await;
    client.stop().await;

    // ssl_port leads to another Miniserver (another serial number): not used, neither for the
    // first upgrade nor after it (port 443 re-forwarded while connected, then a reconnect)
    let other = start_sim(|o| {
        tls_listen(o);
        o.structure = Some(common::repo_root().join("tests/fixtures/structures/gen2-demo-uk.json"));
    })
    .await;
    let client = connects_over_ws_only(&sim, other.tls_addr().expect("tls listener").port()).await;
    assert_eq!(other.counters().ws_connections, 0);
    client.stop().await;

    let client = upgraded_then_reforwarded(&sim, other.tls_addr().expect("tls listener")).await;
    let o = other.counters();
    assert_eq!(
        (o.ws_connections, o.auth_ok, o.auth_failures),
        (0, 0, 0),
        "{o:?}"
    );
    client.stop().await;
    other.shutdown().await;

    // wss:// that answers HTTP 503 for good after the upgrade (port 443 now leads to another
    // web server): back to ws:// instead of retrying wss:// forever
    let dead_end = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_end_addr = dead_end.local_addr().expect("addr");
    let answering_503 = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = dead_end.accept().await else {
                return;
            };
            use tokio::io::AsyncWriteExt as _;
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let client = upgraded_then_reforwarded(&sim, dead_end_addr).await;
    answering_503.abort();
    client.stop().await;
    sim.shutdown().await;

    // no TLS offered (httpsStatus 0): ssl_port is never tried
    let sim = start_sim(|_| {}).await;
    let watch = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut c = ms_config("plain", sim.http_addr(), PASSWORD);
    c.ssl_port = watch.local_addr().expect("addr").port();
    let client = Client::start(c, fast_options());
    wait_for("connected", || client.connected()).await;
    let tried = tokio::time::timeout(Duration::from_millis(300), watch.accept()).await;
    assert!(
        tried.is_err(),
        "ssl_port was tried though the Miniserver offers no TLS"
    );
    client.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn estimated_headers_and_split_frames() {
    for bit in [0x80u8, 0x01] {
        let sim = start_sim(|o| {
            o.estimated_flag = EstimatedFlag::Bit(bit);
            o.split_frames = Some(1000);
            o.tables_before_answer = true;
        })
        .await;
        let client = Client::start(ms_config("ms", sim.http_addr(), PASSWORD), fast_options());
        wait_for("connected", || client.connected()).await;
        value_flows(&sim, &client, 64.0).await;
        assert_eq!(client.state.error_count("protocol"), 0);
        client.stop().await;
        sim.shutdown().await;
    }
}

/// Every Miniserver variation the simulator can play that a client must cope with (protocol
/// doc §2.2 status keys, §4.2 hash algorithm per user, §4.5 echo of enc commands, §5 the
/// login of older firmware): the exporter logs in, values flow, nothing is counted as an
/// error, and the token is given back at shutdown.
#[tokio::test]
async fn every_miniserver_variant_the_simulator_plays() {
    use loxone_exporter::loxone::simulator::{CodeStyleArg, HashAlgArg};
    use loxone_exporter::metrics::store::ERROR_KINDS;
    type Variant = (&'static str, fn(&mut SimulatorOptions));
    let variants: [Variant; 9] = [
        ("\"Code\": \"200\"", |o| {
            o.code_style = CodeStyleArg::UpperString
        }),
        ("\"Code\": 200", |o| {
            o.code_style = CodeStyleArg::UpperNumber
        }),
        ("\"code\": \"200\"", |o| {
            o.code_style = CodeStyleArg::LowerString
        }),
        ("\"code\": 200", |o| {
            o.code_style = CodeStyleArg::LowerNumber
        }),
        ("enc commands echoed as their cipher", |o| {
            o.echo_cipher = true
        }),
        ("SHA-1 user record", |o| o.hash_alg = HashAlgArg::Sha1),
        ("firmware 9.3 (gettoken)", |o| {
            o.firmware_version = "9.3.2.20".into()
        }),
        ("firmware 10.2 (first with getjwt)", |o| {
            o.firmware_version = "10.2.3.26".into()
        }),
        ("firmware 12.0", |o| o.firmware_version = "12.0.2.24".into()),
    ];
    for (n, (name, set)) in variants.iter().enumerate() {
        let sim = start_sim(set).await;
        let client = Client::start(ms_config("ms", sim.http_addr(), PASSWORD), fast_options());
        wait_for(&format!("connected ({name})"), || client.connected()).await;
        value_flows(&sim, &client, 700.0 + n as f64).await;
        for kind in ERROR_KINDS {
            assert_eq!(client.state.error_count(kind), 0, "{name}: {kind} errors");
        }
        let counters = sim.counters();
        assert_eq!(
            (counters.auth_ok, counters.auth_failures),
            (1, 0),
            "{name}: {counters:?}"
        );
        client.stop().await;
        assert_eq!(
            sim.counters().tokens_killed,
            1,
            "{name}: killtoken on shutdown"
        );
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn shutdown_kills_the_token_promptly() {
    let sim = start_sim(|_| {}).await;
    let client = Client::start(ms_config("ms", sim.http_addr(), PASSWORD), fast_options());
    wait_for("connected", || client.connected()).await;
    assert_eq!(sim.counters().tokens_killed, 0);
    client.stop().await;
    assert_eq!(
        sim.counters().tokens_killed,
        1,
        "killtoken sent on shutdown"
    );
    wait_for("socket closed", || sim.counters().ws_active == 0).await;
    sim.shutdown().await;
}

/// Doc §3.6: events for UUIDs the structure does not have are ignored — no error, no new
/// series, and the known states keep updating on the same socket.
#[tokio::test]
async fn unknown_state_uuids_are_ignored() {
    use loxone_exporter::metrics::store::ERROR_KINDS;
    let sim = start_sim(|_| {}).await;
    let client = Client::start(ms_config("ms", sim.http_addr(), PASSWORD), fast_options());
    wait_for("connected", || client.connected()).await;
    value_flows(&sim, &client, 501.0).await;
    let series = client.values().len();
    let errors = |c: &Client| {
        ERROR_KINDS
            .iter()
            .map(|k| (*k, c.state.error_count(k)))
            .collect::<Vec<_>>()
    };
    let errors_before = errors(&client);

    let unknown = "0badc0de-0000-1111-2222333344445555";
    assert!(!sim
        .control()
        .value_state_uuids()
        .contains(&LoxUuid::parse(unknown).expect("uuid")));
    let http = loxone_exporter::tls_provider::reqwest_builder()
        .build()
        .expect("http client");
    let status = http
        .post(format!(
            "http://{}/sim/value?uuid={unknown}&value=777.5",
            sim.http_addr()
        ))
        .send()
        .await
        .expect("control api")
        .status();
    assert_eq!(status, 200, "the simulator sends events for unknown UUIDs");
    // sent after the unknown one on the same socket: once it is in, the unknown was handled
    value_flows(&sim, &client, 502.0).await;
    assert_eq!(
        client.values().len(),
        series,
        "no series for the unknown UUID"
    );
    assert!(!client.has_value(777.5));
    assert_eq!(
        errors(&client),
        errors_before,
        "nothing counted as an error"
    );
    assert!(client.connected());
    assert_eq!(sim.counters().ws_connections, 1, "never reconnected");
    client.stop().await;
    sim.shutdown().await;
}
