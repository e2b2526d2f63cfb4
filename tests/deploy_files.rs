//! Deployment files are consistent and valid (issue 6 acceptance; no Docker engine here):
//! `promtool check config` on the compose `prometheus.yml`; the compose file (via
//! `docker compose config` when that CLI works, else a structure check); the collector
//! config; the Dockerfile's essentials; Grafana provisioning; and the dashboard: valid JSON,
//! every query names only metrics the exporter serves, and every query is accepted by a real
//! Prometheus; the alert rules (`loxone-alerts.yml`): promtool's checks and unit tests, only
//! served metrics, and a real Prometheus evaluating them against real exporters.

mod common;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// Metric names the exporter really serves: every family of the daemon's registry
/// (`App::new` registers the same collectors `app::run` serves) with OTLP export enabled,
/// after a real structure file and values were loaded, as exposed in the text format
/// (histograms through `_bucket`, `_sum`, `_count`).
fn served_metric_names() -> BTreeSet<String> {
    use loxone_exporter::metrics::MetricKind;
    let mut config = loxone_exporter::config::Config::with_miniserver(
        loxone_exporter::config::MiniserverConfig::new("home", "127.0.0.1", "u", "p"),
    );
    config.include_text_values = true;
    config.opentelemetry.enabled = true;
    config.opentelemetry.endpoint = "http://127.0.0.1:4317".into();
    let app = loxone_exporter::app::App::new(&config).expect("app");
    let ms = app.store.add_miniserver("home");
    let structure = loxone_exporter::loxone::structure::parse_structure(&common::read_fixture(
        &common::structure_fixture("gen2-home-cz.json"),
    ))
    .expect("structure");
    ms.load_structure(&structure);
    let uuids: Vec<_> = structure
        .all_controls()
        .into_iter()
        .flat_map(|c| c.states.iter().flat_map(|s| s.uuids.clone()))
        .collect();
    ms.apply_values(uuids.iter().map(|u| (*u, 1.0)));
    ms.apply_texts(uuids.iter().map(|u| (*u, "x")));
    ms.set_info(Default::default());
    let mut names = BTreeSet::new();
    for f in app.registry.snapshot().families {
        if f.kind == MetricKind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", f.name));
            }
        } else {
            names.insert(f.name.to_string());
        }
    }
    names
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(common::repo_root().join(rel))
        .unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn yaml(rel: &str) -> Yaml {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

fn s(v: &Yaml) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

// ---------------------------------------------------------------- prometheus.yml

/// Runs `promtool <verb> <what> <file>` (a repository path) and requires success.
fn promtool_succeeds(promtool: &std::path::Path, verb: &str, what: &str, file: &str) {
    let out = Command::new(promtool)
        .args([verb, what])
        .arg(common::repo_root().join(file))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {verb} {what} {file} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_compose_prometheus_config() {
    let Some(promtool) = common::component(common::PROMTOOL) else {
        return;
    };
    // promtool does not resolve static target host names, so the compose service names
    // (exporter, otel-collector) need no DNS here.
    promtool_succeeds(&promtool, "check", "config", "prometheus.yml");
}

fn scrape_targets() -> BTreeMap<String, Vec<String>> {
    let prom = yaml("prometheus.yml");
    let mut out = BTreeMap::new();
    for job in prom["scrape_configs"].as_sequence().unwrap() {
        let targets = job["static_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|sc| {
                sc["targets"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|t| s(t).to_string())
            })
            .collect();
        out.insert(s(&job["job_name"]).to_string(), targets);
    }
    out
}

// ---------------------------------------------------------------- loxone-alerts.yml

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let Some(promtool) = common::component(common::PROMTOOL) else {
        return;
    };
    promtool_succeeds(&promtool, "check", "rules", "loxone-alerts.yml");
    promtool_succeeds(
        &promtool,
        "test",
        "rules",
        "tests/fixtures/loxone-alerts.test.yml",
    );
}

/// The text of one rule in `loxone-alerts.yml`: from its `- alert: NAME` line to the next
/// rule or the end of the file.
fn rule_block<'a>(rules: &'a str, name: &str) -> (usize, &'a str) {
    let head = format!("- alert: {name}\n");
    let start = rules
        .find(&head)
        .unwrap_or_else(|| panic!("no rule {name}"));
    let rest = &rules[start + head.len()..];
    let end = rest
        .find("- alert: ")
        .map_or(rules.len(), |e| start + head.len() + e);
    (start, &rules[start..end])
}

/// The unit tests notice when a rule's duration, window, threshold, kinds or job changes:
/// each change below makes `promtool test rules` fail. A test file whose evaluation times
/// sit far from every edge passes them all; this keeps it from drifting there again.
#[test]
fn alert_unit_tests_fail_when_a_duration_window_or_threshold_changes() {
    let Some(promtool) = common::component(common::PROMTOOL) else {
        return;
    };
    // (alert, text in its rule, changed to): every `for:`, window and threshold one step
    // either way, each error kind and `job="loxone"` left out, each range function dropped
    let changes: &[(&str, &str, &str)] = &[
        ("LoxoneExporterDown", "for: 5m", "for: 4m"),
        ("LoxoneExporterDown", "for: 5m", "for: 6m"),
        ("LoxoneExporterDown", r#"up{job="loxone"}"#, "up"),
        ("LoxoneMiniserverDisconnected", "for: 5m", "for: 4m"),
        ("LoxoneMiniserverDisconnected", "for: 5m", "for: 6m"),
        ("LoxoneMiniserverDisconnected", r#"{job="loxone"}"#, ""),
        ("LoxoneMiniserverLoginFailing", "> 0", "> 1"),
        ("LoxoneMiniserverLoginFailing", "[10m]", "[9m]"),
        ("LoxoneMiniserverLoginFailing", "[10m]", "[11m]"),
        ("LoxoneMiniserverLoginFailing", r#"{job="loxone"}"#, ""),
        (
            "LoxoneMiniserverLoginFailing",
            r#"last_over_time(loxone_exporter_consecutive_login_failures{job="loxone"}[10m])"#,
            r#"loxone_exporter_consecutive_login_failures{job="loxone"}"#,
        ),
        ("LoxoneMiniserverConnectionUnstable", "> 10", "> 9"),
        ("LoxoneMiniserverConnectionUnstable", "> 10", "> 11"),
        ("LoxoneMiniserverConnectionUnstable", "[1h]", "[45m]"),
        ("LoxoneMiniserverConnectionUnstable", "[1h]", "[75m]"),
        (
            "LoxoneMiniserverConnectionUnstable",
            "connect|timeout|closed",
            "timeout|closed",
        ),
        (
            "LoxoneMiniserverConnectionUnstable",
            "connect|timeout|closed",
            "connect|closed",
        ),
        (
            "LoxoneMiniserverConnectionUnstable",
            "connect|timeout|closed",
            "connect|timeout",
        ),
        ("LoxoneMiniserverProtocolErrors", "[30m]", "[29m]"),
        ("LoxoneMiniserverProtocolErrors", "[30m]", "[31m]"),
        (
            "LoxoneMiniserverProtocolErrors",
            "protocol|structure",
            "protocol",
        ),
        (
            "LoxoneMiniserverProtocolErrors",
            "protocol|structure",
            "structure",
        ),
        ("LoxoneMiniserverProtocolErrors", r#"job="loxone", "#, ""),
        ("LoxoneMiniserverNoUpdates", "for: 15m", "for: 14m"),
        ("LoxoneMiniserverNoUpdates", "for: 15m", "for: 16m"),
        ("LoxoneMiniserverNoUpdates", "> 3600", "> 3540"),
        ("LoxoneMiniserverNoUpdates", "> 3600", "> 3660"),
        ("LoxoneOtlpExportFailed", "for: 5m", "for: 4m"),
        ("LoxoneOtlpExportFailed", "for: 5m", "for: 6m"),
        (
            "LoxoneOtlpExportFailed",
            r#"max_over_time(loxone_otlp_export_status{job="loxone"}[1m])"#,
            r#"loxone_otlp_export_status{job="loxone"}"#,
        ),
        ("LoxoneOtlpExportFailed", r#"{job="loxone"}"#, ""),
        ("LoxoneExporterScrapeErrors", "[15m]", "[14m]"),
        ("LoxoneExporterScrapeErrors", "[15m]", "[16m]"),
        ("LoxoneExporterScrapeErrors", r#"{job="loxone"}"#, ""),
        ("LoxoneExporterRestarting", "> 3", "> 2"),
        ("LoxoneExporterRestarting", "> 3", "> 4"),
        ("LoxoneExporterRestarting", "[1h]", "[55m]"),
        ("LoxoneExporterRestarting", "[1h]", "[65m]"),
        ("LoxoneExporterRestarting", r#"{job="loxone"}"#, ""),
    ];
    let rules = read("loxone-alerts.yml");
    let unit_tests = read("tests/fixtures/loxone-alerts.test.yml");
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("rules.yml");
    let tests_path = dir.path().join("tests.yml");
    // the unit tests name the rules file relative to themselves
    let own_tests = unit_tests.replace("../../loxone-alerts.yml", "rules.yml");
    assert_ne!(
        own_tests, unit_tests,
        "the unit tests load ../../loxone-alerts.yml"
    );
    std::fs::write(&tests_path, own_tests).unwrap();
    let run = |rules_text: &str| {
        std::fs::write(&rules_path, rules_text).unwrap();
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(&tests_path)
            .output()
            .unwrap()
    };
    let unchanged = run(&rules);
    assert!(
        unchanged.status.success(),
        "the unit tests fail on the unchanged rules:\n{}",
        String::from_utf8_lossy(&unchanged.stdout)
    );
    let mut survivors = Vec::new();
    for &(alert, from, to) in changes {
        let (start, block) = rule_block(&rules, alert);
        assert_eq!(
            block.matches(from).count(),
            1,
            "{alert}: {from:?} should occur once in its rule:\n{block}"
        );
        let changed_block = block.replacen(from, to, 1);
        let changed = format!(
            "{}{changed_block}{}",
            &rules[..start],
            &rules[start + block.len()..]
        );
        if run(&changed).status.success() {
            survivors.push(format!("{alert}: {from} -> {to}"));
        }
    }
    assert!(
        survivors.is_empty(),
        "the unit tests still pass with these changed rules: {survivors:#?}"
    );
}

/// (alert name, expression) of every rule in `loxone-alerts.yml`.
fn alert_rules() -> Vec<(String, String)> {
    let rules = yaml("loxone-alerts.yml");
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| (s(&r["alert"]).to_string(), s(&r["expr"]).to_string()))
        .collect()
}

/// The values a PromQL expression matches `label` against (`label="a"` gives `a`,
/// `label=~"a|b"` gives `a|b`).
fn label_values(expr: &str, label: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in expr.match_indices(label) {
        let before = expr[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &expr[at + label.len()..];
        let Some(rest) = rest.strip_prefix("=~\"").or(rest.strip_prefix("=\"")) else {
            continue;
        };
        if let Some(end) = rest.find('"') {
            out.push(rest[..end].to_string());
        }
    }
    out
}

#[test]
fn alert_rules_name_only_served_metrics_kinds_and_jobs() {
    use loxone_exporter::metrics::store::ERROR_KINDS;
    let rules = alert_rules();
    assert_eq!(rules.len(), 9, "{rules:?}");
    let jobs = scrape_targets();
    let unit_tests = read("tests/fixtures/loxone-alerts.test.yml");
    for (name, expr) in &rules {
        let metrics = promql_metric_names(expr);
        assert!(!metrics.is_empty(), "{name}: no metric in {expr}");
        for m in &metrics {
            assert!(
                is_known_metric(m),
                "{name}: {m} is not served by the exporter"
            );
        }
        for kinds in label_values(expr, "kind") {
            for k in kinds.split('|') {
                assert!(ERROR_KINDS.contains(&k), "{name}: no error kind {k:?}");
            }
        }
        for job in label_values(expr, "job") {
            assert!(
                jobs.contains_key(&job),
                "{name}: prometheus.yml has no job {job:?}"
            );
        }
        assert!(
            unit_tests.contains(&format!("alertname: {name}\n")),
            "{name} has no promtool unit test"
        );
    }
    assert_eq!(
        label_values(r#"a{kind=~"x|y",job="j"} + b{xkind="z"}"#, "kind"),
        ["x|y"]
    );
}

#[test]
fn compose_prometheus_loads_the_alert_rules() {
    let prom = yaml("prometheus.yml");
    let files: Vec<&str> = prom["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .map(s)
        .collect();
    assert_eq!(files, ["loxone-alerts.yml"]);
    // the container reads them next to its prometheus.yml
    let compose = yaml("docker-compose.yml");
    let mounts: Vec<&str> = compose["services"]["prometheus"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    for f in files {
        let mount = format!("./{f}:/etc/prometheus/{f}:ro");
        assert!(
            mounts.contains(&mount.as_str()),
            "{mount} missing: {mounts:?}"
        );
    }
}

/// A real Prometheus, ready, with the runtime and the client a test talks to it through.
/// Fields drop in order: Prometheus is killed before its configuration is removed.
struct ReadyPrometheus {
    prom: prometheus::Prometheus,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    _config_dir: tempfile::TempDir,
}

/// Starts `bin` with `config` (the text of a prometheus.yml) and waits until it is ready.
fn ready_prometheus(bin: &std::path::Path, config: &str) -> ReadyPrometheus {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, config).unwrap();
    let prom = prometheus::Prometheus::start(bin, &cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = loxone_exporter::tls_provider::reqwest_builder()
        .build()
        .unwrap();
    rt.block_on(prom.wait_ready(&http, Duration::from_secs(20)));
    ReadyPrometheus {
        prom,
        rt,
        http,
        _config_dir: dir,
    }
}

/// A child process killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Alerts Prometheus holds now: (alert name, state, instance, miniserver).
async fn prometheus_alerts(
    prom: &prometheus::Prometheus,
    http: &reqwest::Client,
) -> Vec<(String, String, String, String)> {
    let v = prom.api(http, "alerts").await;
    let label = |a: &Json, k: &str| a["labels"][k].as_str().unwrap_or_default().to_string();
    v["data"]["alerts"]
        .as_array()
        .map(|alerts| {
            alerts
                .iter()
                .map(|a| {
                    (
                        label(a, "alertname"),
                        a["state"].as_str().unwrap_or_default().to_string(),
                        label(a, "instance"),
                        label(a, "miniserver"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The rules in a real Prometheus scraping two real exporters: one on the demo, healthy, and
/// one whose Miniserver (the simulator) refuses its password. Only the second one's
/// Miniserver is reported, as disconnected and with its login failing; every rule evaluates without error; and once the healthy
/// exporter is gone, LoxoneExporterDown names it. (What each rule does over time is
/// `promtool test rules`'s part.)
#[test]
fn alert_rules_run_in_a_real_prometheus_against_real_exporters() {
    let Some(bin) = common::component(common::PROMETHEUS) else {
        return;
    };
    let exporter = common::exporter_bin();
    // nothing from the test's environment (OTEL_*, LOXONE_*) reaches the daemons
    let command = || {
        let mut c = Command::new(&exporter);
        c.env_clear();
        c
    };
    let quiet = |mut c: Command| {
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Running(c.spawn().expect("spawn"))
    };
    let sim_port = common::free_port();
    let mut sim = command();
    sim.args([
        "simulate",
        "--listen",
        &format!("127.0.0.1:{sim_port}"),
        "--rate",
        "0",
    ])
    .arg("--rsa-key")
    .arg(common::repo_root().join("tests/fixtures/loxone/test-rsa-1024.pem"));
    let _sim = quiet(sim);
    let (healthy_port, refused_port) = (common::free_port(), common::free_port());
    let mut demo = command();
    demo.args([
        "--demo",
        "--web.listen-address",
        &format!("127.0.0.1:{healthy_port}"),
    ]);
    let mut healthy = Some(quiet(demo));
    let cwd = tempfile::tempdir().unwrap();
    let mut refused = command();
    refused
        .args(["--web.listen-address", &format!("127.0.0.1:{refused_port}")])
        // no ./config.yml there: the variables alone configure it
        .current_dir(cwd.path())
        .env("LOXONE_HOST", "127.0.0.1")
        .env("LOXONE_PORT", sim_port.to_string())
        .env("LOXONE_USERNAME", "admin")
        .env("LOXONE_PASSWORD", "not-the-password")
        .env("LOXONE_NAME", "home");
    let _refused = quiet(refused);

    let healthy_target = format!("127.0.0.1:{healthy_port}");
    let refused_target = format!("127.0.0.1:{refused_port}");
    let ready = ready_prometheus(
        &bin,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: loxone\n    static_configs:\n      \
             - targets: [\"{healthy_target}\", \"{refused_target}\"]\n",
            rules = common::repo_root().join("loxone-alerts.yml").display()
        ),
    );
    let (prom, http) = (&ready.prom, &ready.http);
    ready.rt.block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // both exporters scraped, and the refused Miniserver reported
        loop {
            let up = prom.query(http, "sum(up{job=\"loxone\"})").await;
            let both_up = up["data"]["result"][0]["value"][1] == "2";
            let alerts = prometheus_alerts(prom, http).await;
            let has = |alert: &str, states: &[&str]| {
                alerts.iter().any(|(name, state, instance, ms)| {
                    name == alert
                        && states.contains(&state.as_str())
                        && *instance == refused_target
                        && ms == "home"
                })
            };
            // LoginFailing has no `for:`: firing from the first scrape after the refusal
            let reported = has("LoxoneMiniserverDisconnected", &["pending", "firing"])
                && has("LoxoneMiniserverLoginFailing", &["firing"]);
            if both_up && reported {
                for (name, state, instance, ms) in &alerts {
                    assert!(
                        *instance == refused_target
                            && [
                                "LoxoneMiniserverDisconnected",
                                "LoxoneMiniserverLoginFailing"
                            ]
                            .contains(&name.as_str()),
                        "unexpected alert {name} ({state}) for {instance} {ms}: {alerts:?}"
                    );
                }
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no LoxoneMiniserverDisconnected and LoginFailing for {refused_target} (up: \
                 {up}); alerts: \
                 {alerts:?}\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // every rule evaluated, none failed
        let rules = prom.api(http, "rules").await;
        let evaluated: Vec<&Json> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(evaluated.len(), alert_rules().len(), "{rules}");
        for r in evaluated {
            assert_eq!(r["health"], "ok", "rule {} failed: {r}", r["name"]);
        }
        // the healthy exporter goes away: its scrape target is reported down
        drop(healthy.take());
        loop {
            let alerts = prometheus_alerts(prom, http).await;
            if alerts.iter().any(|(name, _, instance, _)| {
                name == "LoxoneExporterDown" && *instance == healthy_target
            }) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no LoxoneExporterDown for {healthy_target}: {alerts:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

// ---------------------------------------------------------------- docker-compose.yml

#[test]
fn compose_file_is_valid_and_consistent() {
    // The real CLI first, when it works offline; otherwise (as in this container, where the
    // compose plugin is missing) the structure checks below carry the test. They always run.
    let cli = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if cli {
        let out = Command::new("docker")
            .args(["compose", "-f", "docker-compose.yml", "config", "--quiet"])
            .current_dir(common::repo_root())
            // required (no admin/admin default); .env would give it
            .env("GRAFANA_ADMIN_PASSWORD", "test-only")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker compose config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("NOTE: `docker compose` not available; structure check only");
    }

    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services mapping");
    let names: BTreeSet<&str> = services.keys().map(s).collect();
    for want in ["exporter", "otel-collector", "prometheus", "grafana"] {
        assert!(names.contains(want), "service {want} missing: {names:?}");
    }
    let allowed_service_keys: BTreeSet<&str> = [
        "build",
        "image",
        "container_name",
        "restart",
        "ports",
        "volumes",
        "environment",
        "read_only",
        "cap_drop",
        "security_opt",
        "depends_on",
        "command",
        "expose",
        "healthcheck",
        "user",
        "env_file",
        "hostname",
    ]
    .into();
    let named_volumes: BTreeSet<&str> = compose["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(s).collect())
        .unwrap_or_default();
    for (name, svc) in services {
        let name = s(name);
        for key in svc.as_mapping().unwrap().keys() {
            assert!(
                allowed_service_keys.contains(s(key)),
                "{name}: unexpected key {key:?}"
            );
        }
        assert!(
            svc.get("image").is_some() || svc.get("build").is_some(),
            "{name}: no image"
        );
        for dep in svc["depends_on"]
            .as_sequence()
            .map(|v| v.as_slice())
            .unwrap_or_default()
        {
            assert!(names.contains(s(dep)), "{name} depends on unknown {dep:?}");
        }
        for vol in svc["volumes"]
            .as_sequence()
            .map(|v| v.as_slice())
            .unwrap_or_default()
        {
            let source = s(vol).split(':').next().unwrap();
            if let Some(rel) = source.strip_prefix("./") {
                // config.yml is the user's own file; everything else ships with the repo.
                if rel != "config.yml" {
                    assert!(
                        common::repo_root().join(rel).exists(),
                        "{name}: bind mount {source} does not exist"
                    );
                }
            } else {
                assert!(
                    named_volumes.contains(source),
                    "{name}: undeclared volume {source}"
                );
            }
        }
    }

    let exporter = &compose["services"]["exporter"];
    assert_eq!(s(&exporter["build"]["context"]), ".");
    let args = exporter["build"]["args"].as_mapping().unwrap();
    for a in ["VERSION", "COMMIT", "BUILD_DATE"] {
        // an unset variable must reach build.rs empty, so it falls back to the crate's
        // version and the build's date instead of baking in a placeholder like "dev"
        let value = args
            .get(a)
            .map(s)
            .unwrap_or_else(|| panic!("build arg {a} missing"));
        assert!(
            value.ends_with(":-}"),
            "build arg {a}: {value} has a non-empty default"
        );
    }
    // the OTLP service.instance.id (host:port) names the same instance as the scrape
    assert_eq!(s(&exporter["hostname"]), "exporter");
    let ports: Vec<&str> = exporter["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(ports.contains(&"9504:9504"), "{ports:?}");
    assert!(exporter["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| s(v).starts_with("./config.yml:/app/config.yml")));

    // The exporter pushes to the collector's OTLP gRPC receiver.
    let endpoint = s(&exporter["environment"]["LOXONE_OTLP_ENDPOINT"]);
    let collector = yaml("otel-collector-config.yaml");
    let grpc = s(&collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]);
    let grpc_port = grpc.rsplit(':').next().unwrap();
    assert_eq!(endpoint, format!("http://otel-collector:{grpc_port}"));

    // Prometheus scrapes the exporter and the collector's prometheus exporter by service name.
    let targets = scrape_targets();
    assert_eq!(targets["loxone"], ["exporter:9504"]);
    let prom_port = s(&collector["exporters"]["prometheus"]["endpoint"])
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        targets["otel-collector"],
        [format!("otel-collector:{prom_port}")]
    );

    // Grafana: provisioning and dashboards are mounted where the provisioning files point.
    let grafana = &compose["services"]["grafana"];
    let mounts: BTreeMap<String, String> = grafana["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| {
            let parts: Vec<&str> = s(v).split(':').collect();
            (parts[1].to_string(), parts[0].to_string())
        })
        .collect();
    assert_eq!(
        mounts["/etc/grafana/provisioning"],
        "./deploy/grafana/provisioning"
    );
    let providers = yaml("deploy/grafana/provisioning/dashboards/loxone.yml");
    let dash_dir = s(&providers["providers"][0]["options"]["path"]).to_string();
    assert_eq!(mounts[&dash_dir], "./deploy/grafana/dashboards");
    assert_eq!(
        s(&grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]),
        format!("{dash_dir}/loxone.json")
    );
    // Grafana's port is open to the network: its admin password has no default (admin)
    let admin = s(&grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]);
    assert!(admin.starts_with("${GRAFANA_ADMIN_PASSWORD:?"), "{admin}");
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds = &datasources["datasources"][0];
    assert_eq!(s(&ds["type"]), "prometheus");
    assert_eq!(s(&ds["url"]), "http://prometheus:9090");
    assert!(compose["services"]["prometheus"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| s(p).ends_with(":9090")));
}

#[test]
fn collector_pipeline_uses_defined_components() {
    let c = yaml("otel-collector-config.yaml");
    let protocols = c["receivers"]["otlp"]["protocols"].as_mapping().unwrap();
    assert!(protocols.contains_key("grpc") && protocols.contains_key("http"));
    // metrics, and the exporter's own spans (sent to the same endpoint by default)
    for signal in ["metrics", "traces"] {
        let pipeline = &c["service"]["pipelines"][signal];
        for (kind, list) in [
            ("receivers", &pipeline["receivers"]),
            ("processors", &pipeline["processors"]),
            ("exporters", &pipeline["exporters"]),
        ] {
            for name in list
                .as_sequence()
                .unwrap_or_else(|| panic!("{signal} pipeline has no {kind}"))
            {
                assert!(
                    c[kind].get(s(name)).is_some(),
                    "{signal}: {kind}.{name:?} used but not defined"
                );
            }
        }
    }
    let pipeline = &c["service"]["pipelines"]["metrics"];
    let processors: Vec<&str> = pipeline["processors"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(
        processors.first(),
        Some(&"memory_limiter"),
        "memory_limiter must run first"
    );
    // the prometheus exporter keeps only the latest values: batching would only delay them
    assert!(!processors.contains(&"batch"), "{processors:?}");
    let exporters: Vec<&str> = pipeline["exporters"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(exporters.contains(&"prometheus") && exporters.contains(&"debug"));
    for ext in c["service"]["extensions"]
        .as_sequence()
        .map(|v| v.as_slice())
        .unwrap_or_default()
    {
        assert!(
            c["extensions"].get(s(ext)).is_some(),
            "extension {ext:?} not defined"
        );
    }
}

// ---------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_essentials() {
    let d = read("Dockerfile");
    let lines: Vec<&str> = d
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage build expected: {froms:?}");
    assert!(
        froms[0].contains("rust:") && froms[0].contains(" AS build"),
        "{froms:?}"
    );
    let runtime = froms.last().unwrap();
    assert!(
        runtime.contains("distroless") && runtime.contains("nonroot"),
        "{runtime}"
    );
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    let uid = user.trim_start_matches("USER ").split(':').next().unwrap();
    assert!(
        uid != "root" && uid != "0",
        "runtime user must not be root: {user}"
    );
    assert!(lines.contains(&"EXPOSE 9504"));
    assert!(
        d.contains(r#"CMD ["/loxone-exporter", "healthcheck"]"#),
        "HEALTHCHECK through the binary"
    );
    assert!(lines.contains(&r#"ENTRYPOINT ["/loxone-exporter"]"#));
    for (arg, env) in [
        ("VERSION", "LOXONE_EXPORTER_VERSION"),
        ("COMMIT", "LOXONE_EXPORTER_COMMIT"),
        ("BUILD_DATE", "LOXONE_EXPORTER_BUILD_DATE"),
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("ARG {arg}"))),
            "ARG {arg}"
        );
        // `${BUILD_DATE:-$(date …)}`: an unset date is the build's own, not a cached one
        assert!(
            d.contains(&format!("{env}=\"${{{arg}}}\""))
                || d.contains(&format!("{env}=\"${{{arg}:-")),
            "{env} from ${{{arg}}}"
        );
        // build.rs must still read the variable the Dockerfile sets.
        assert!(
            read("build.rs").contains(env),
            "build.rs no longer reads {env}"
        );
    }
    // The build context keeps what cargo needs and drops secrets and build output.
    let ignore: BTreeSet<&str> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| Box::leak(l.to_string().into_boxed_str()) as &str)
        .collect();
    for keep in ["src", "Cargo.toml", "Cargo.lock", "build.rs", "*", "**"] {
        assert!(!ignore.contains(keep), ".dockerignore must not drop {keep}");
    }
    for drop in ["target", ".git", "config.yml", ".env"] {
        assert!(ignore.contains(drop), ".dockerignore must drop {drop}");
    }
}

// ---------------------------------------------------------------- dashboard

fn dashboard() -> Json {
    serde_json::from_str(&read("deploy/grafana/dashboards/loxone.json"))
        .expect("dashboard is valid JSON")
}

/// Every PromQL expression in the dashboard: panel targets and variable queries (the
/// `label_values(expr, label)` wrapper removed).
fn dashboard_queries(d: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(panels: &[Json], out: &mut Vec<(String, String)>) {
        for p in panels {
            for t in p["targets"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default()
            {
                let title = p["title"].as_str().unwrap_or("?").to_string();
                out.push((title, t["expr"].as_str().expect("target expr").to_string()));
            }
            walk(
                p["panels"]
                    .as_array()
                    .map(|a| a.as_slice())
                    .unwrap_or_default(),
                out,
            );
        }
    }
    walk(d["panels"].as_array().unwrap(), &mut out);
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["definition"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(e, _)| e.to_string())
            .expect("variable queries are label_values(expr, label)");
        out.push((format!("variable {}", v["name"]), inner));
    }
    out
}

/// Metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// range brackets and grouping clauses, that are not functions, keywords or variables.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
        // aggregation operators, which may be followed by a grouping clause before `(`
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_parens_after_keyword = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            if chars[i] == '\\' {
                                i += 1;
                            }
                            i += 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if skip_parens_after_keyword => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                skip_parens_after_keyword = false;
            }
            '$' => {
                i += 1;
                if i < chars.len() && chars[i] == '{' {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                // Numbers and durations (5m, 1e3, 0.95).
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let ident: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let lower = ident.to_ascii_lowercase();
                if KEYWORDS.contains(&lower.as_str()) {
                    skip_parens_after_keyword = matches!(
                        lower.as_str(),
                        "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                    );
                } else if chars.get(j) != Some(&'(') {
                    names.insert(ident);
                }
            }
            _ => i += 1,
        }
    }
    names
}

fn is_known_metric(name: &str) -> bool {
    thread_local! {
        static SERVED: BTreeSet<String> = served_metric_names();
    }
    // `up`: Prometheus's own series for each scrape target
    name == "up" || SERVED.with(|s| s.contains(name))
}

#[test]
fn metric_name_extraction_is_sound() {
    let got = promql_metric_names(
        r#"histogram_quantile(0.95, sum by (le, job) (rate(a_bucket{job="$job",x=~"b|c"}[$__rate_interval]))) / on(job) group_left(version) b_info + time() - c offset 5m > bool 1e3"#,
    );
    assert_eq!(
        got,
        BTreeSet::from(["a_bucket".into(), "b_info".into(), "c".into()])
    );
    assert!(promql_metric_names(r#"sum(rate(x_total[5m]))"#).contains("x_total"));
    assert!(!is_known_metric("loxone_unknown"));
    assert!(is_known_metric(
        "loxone_otlp_export_duration_seconds_bucket"
    ));
    assert!(!is_known_metric("loxone_exporter_up_bucket"));
}

#[test]
fn dashboard_is_valid_and_queries_only_served_metrics() {
    let d = dashboard();
    assert_eq!(d["uid"], "loxone-exporter");
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "panel {} wider than the grid", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "panel {} overlaps another",
                    p["title"]
                );
            }
        }
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "panel {}",
                p["title"]
            );
        }
    }
    let queries = dashboard_queries(&d);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        let names = promql_metric_names(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for n in names {
            assert!(is_known_metric(&n), "{title}: unknown metric {n} in {expr}");
            used.insert(n);
        }
    }
    // The issue's topics are all on the dashboard.
    for must in [
        "loxone_control_value",
        "loxone_exporter_connected",
        "loxone_exporter_last_update_timestamp_seconds",
        "loxone_otlp_export_status",
        "loxone_otlp_export_duration_seconds_bucket",
        "loxone_exporter_scrape_duration_seconds",
    ] {
        assert!(used.contains(must), "dashboard does not show {must}");
    }
    let all = serde_json::to_string(&d).unwrap();
    for topic in ["tempActual", "\\\"Meter\\\"", "Switch", "room", "category"] {
        assert!(all.contains(topic), "dashboard lacks {topic}");
    }
}

// ---------------------------------------------------------------- dashboard vs real Prometheus

/// Substitutes the dashboard's variables the way Grafana would for "All".
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", "loxone")
        .replace("$miniserver", ".*")
        .replace("$room", ".*")
        .replace("$category", ".*")
}

#[test]
fn every_dashboard_query_parses_in_a_real_prometheus() {
    let Some(bin) = common::component(common::PROMETHEUS) else {
        return;
    };
    let ready = ready_prometheus(
        &bin,
        "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
    );
    let (prom, http) = (&ready.prom, &ready.http);
    ready.rt.block_on(async {
        for (title, expr) in dashboard_queries(&dashboard()) {
            let q = substitute(&expr);
            assert!(!q.contains('$'), "{title}: unsubstituted variable in {q}");
            let v = prom.query(http, &q).await;
            assert_eq!(
                v["status"], "success",
                "{title}: Prometheus rejects {q}: {v}"
            );
        }
    });
}

#[test]
fn provisioning_files_are_grafana_shaped() {
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(ds["apiVersion"].as_u64(), Some(1));
    assert_eq!(s(&ds["datasources"][0]["uid"]), "prometheus");
    let dp = yaml("deploy/grafana/provisioning/dashboards/loxone.yml");
    assert_eq!(dp["apiVersion"].as_u64(), Some(1));
    assert_eq!(s(&dp["providers"][0]["type"]), "file");
    // The shipped dashboards directory holds exactly the dashboard the test checks.
    let files: Vec<String> =
        std::fs::read_dir(common::repo_root().join("deploy/grafana/dashboards"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    assert_eq!(files, ["loxone.json"]);
}
