//! Runs a Python interoperability probe (tests/support/sim/*_probe.py): the probe prints
//! one line of JSON, its summary, as the last line of its output; the test asserts on it.

use std::process::Stdio;
use std::time::Duration;

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
