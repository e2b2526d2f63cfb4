//! Runs a Python interoperability probe (tests/support/sim/*_probe.py): the probe prints
//! one line of JSON, its summary, as the last line of its output; the test asserts on it.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use loxone_exporter::loxone::simulator::Simulator;
use loxone_exporter::loxone::uuid::LoxUuid;

/// Runs `cmd` (a probe with its arguments), bounded by 90 s, and returns its summary.
/// Panics with the probe's stderr when it printed nothing or no JSON.
pub async fn run_json_probe(mut cmd: tokio::process::Command) -> serde_json::Value {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("probe finished in time")
        .expect("probe output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "probe printed nothing; status {:?}; stderr:\n{stderr}",
            out.status
        )
    });
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("probe output not JSON ({e}): {line}\nstderr:\n{stderr}"));
    eprintln!(
        "probe stderr:\n{stderr}\nsummary: {}",
        v.to_string().chars().take(600).collect::<String>()
    );
    v
}

/// What every client probe reports under the same keys: no errors; the structure file as
/// the simulator serves it (controls at every depth, `lastModified`); the whole initial
/// value table, its UUIDs (8-4-4-16, as the Python clients print them) all of the
/// structure; text events; and a Switch flipped through `jdev/sps/io` whose new value came
/// back as an event.
pub fn assert_common_summary(sim: &Simulator, v: &serde_json::Value) {
    assert_eq!(v["errors"], serde_json::json!([]), "probe errors: {v}");
    let ctl = sim.control();
    assert_eq!(
        v["structure_controls"].as_u64(),
        Some(ctl.control_count() as u64),
        "{v}"
    );
    assert_eq!(
        v["structure_last_modified"].as_str(),
        Some(ctl.last_modified().as_str())
    );
    let ours: HashSet<LoxUuid> = ctl.value_state_uuids().into_iter().collect();
    let theirs: Vec<LoxUuid> = v["sample_uuids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| LoxUuid::parse(u.as_str().unwrap()).expect("the probe prints 8-4-4-16"))
        .collect();
    assert!(!theirs.is_empty());
    assert!(
        theirs.iter().all(|u| ours.contains(u)),
        "value events with UUIDs not in the structure"
    );
    // the full initial table reached the client
    assert_eq!(v["distinct_value_uuids"].as_u64(), Some(ours.len() as u64));
    assert!(v["text_events"].as_u64().unwrap() > 0, "{v}");
    assert!(v["io_value_seen"].is_number(), "io round trip failed: {v}");
}
