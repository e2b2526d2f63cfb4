//! State store and text exposition against the real structure files: shared UUIDs feed
//! every owner, sub-controls update, filters and counts agree, and `promtool check metrics`
//! accepts the output.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use loxone_exporter::config::FilterConfig;
use loxone_exporter::loxone::structure::{parse_structure, Structure};
use loxone_exporter::loxone::uuid::LoxUuid;
use loxone_exporter::metrics::self_health::{ProcessMetrics, SelfHealth};
use loxone_exporter::metrics::text::encode_to_string;
use loxone_exporter::metrics::{MiniserverInfo, Registry, StateStore, Value};

fn structure(name: &str) -> Structure {
    parse_structure(&common::read_fixture(&common::structure_fixture(name))).expect("parse")
}

/// Every state UUID of the structure with a distinct value.
fn all_state_uuids(s: &Structure) -> Vec<LoxUuid> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for c in &s.controls {
        for c in c.walk() {
            for st in &c.states {
                for u in &st.uuids {
                    if seen.insert(*u) {
                        out.push(*u);
                    }
                }
            }
        }
    }
    out
}

fn values_of(
    snapshot: &loxone_exporter::metrics::Snapshot,
    family: &str,
) -> Vec<(Vec<(String, String)>, f64)> {
    snapshot
        .family(family)
        .map(|f| {
            f.samples
                .iter()
                .map(|s| {
                    let labels = s
                        .labels
                        .pairs()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    let v = match s.value {
                        Value::Number(v) => v,
                        _ => f64::NAN,
                    };
                    (labels, v)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn shared_state_uuids_update_every_owner_and_no_series_repeats() {
    let s = structure("gen2-home-cz.json");
    let store = StateStore::new(&FilterConfig::default(), false).unwrap();
    let ms = store.add_miniserver("home");
    ms.load_structure(&s);
    let uuids = all_state_uuids(&s);
    let updated = ms.apply_values(uuids.iter().enumerate().map(|(i, u)| (*u, i as f64)));
    // 1,371 state references in the file; text-only controls' slots are updated too (they
    // are kept, just not exported)
    assert_eq!(
        updated, 1371,
        "every reference of every shared UUID updated"
    );

    let registry = Registry::new();
    registry.register(store.clone());
    let snap = registry.snapshot();
    let series = values_of(&snap, "loxone_control_value");
    let mut label_sets = HashSet::new();
    for (labels, _) in &series {
        assert!(
            label_sets.insert(labels.clone()),
            "duplicate series {labels:?}"
        );
    }
    // the Alarm's `sensors` state is the same UUID as its Tracker sub-control's `entries`
    let alarm_sensor = LoxUuid::parse("18777929-0112-94d2-ffff3a3fe38eb401").unwrap();
    let idx = uuids.iter().position(|u| *u == alarm_sensor).unwrap() as f64;
    let owners: Vec<_> = series.iter().filter(|(_, v)| *v == idx).collect();
    assert_eq!(
        owners.len(),
        2,
        "both owners of the shared UUID export it: {owners:?}"
    );
}

#[test]
fn sub_controls_inherit_room_and_category_and_counts_agree() {
    let s = structure("gen2-demo-uk.json");
    let store = StateStore::new(&FilterConfig::default(), false).unwrap();
    let ms = store.add_miniserver("demo");
    ms.load_structure(&s);
    assert_eq!(
        ms.health().controls_exported,
        0,
        "nothing exported before values arrive"
    );
    ms.apply_values(all_state_uuids(&s).into_iter().map(|u| (u, 1.0)));
    let registry = Registry::new();
    registry.register(store.clone());
    let snap = registry.snapshot();
    let health = ms.health();
    assert_eq!(health.controls_discovered, s.control_count());
    let exported_metric = values_of(&snap, "loxone_exporter_controls_exported")[0].1;
    assert_eq!(exported_metric as usize, health.controls_exported);
    assert!(health.controls_exported > 0 && health.controls_exported <= health.controls_discovered);
    // a sub-control's series carries a room: its parent's
    let series = values_of(&snap, "loxone_control_value");
    let sub = series
        .iter()
        .find(|(l, _)| l.iter().any(|(k, v)| k == "uuid" && v.contains("/AI")))
        .expect("a LightControllerV2 circuit sub-control series");
    assert!(
        sub.0.iter().any(|(k, v)| k == "room" && !v.is_empty()),
        "{sub:?}"
    );
}

/// `loxone_exporter_consecutive_login_failures`: one series per Miniserver from the start
/// (0), counting refused logins until one works; the error counter keeps its total.
#[test]
fn consecutive_login_failures_count_until_a_login_works() {
    let store = StateStore::new(&FilterConfig::default(), false).unwrap();
    let home = store.add_miniserver("home");
    let garage = store.add_miniserver("garage");
    garage.record_error("auth"); // a refused token refresh: counted, but no refused login
    let registry = Registry::new();
    registry.register(store.clone());
    let gauge = |name: &str| {
        values_of(
            &registry.snapshot(),
            "loxone_exporter_consecutive_login_failures",
        )
        .into_iter()
        .find(|(l, _)| l.iter().any(|(k, v)| k == "miniserver" && v == name))
        .map(|(_, v)| v)
    };
    assert_eq!((gauge("home"), gauge("garage")), (Some(0.0), Some(0.0)));
    for _ in 0..3 {
        home.record_error("auth");
        home.login_failed();
    }
    assert_eq!((gauge("home"), gauge("garage")), (Some(3.0), Some(0.0)));
    home.logged_in();
    assert_eq!((gauge("home"), gauge("garage")), (Some(0.0), Some(0.0)));
    assert_eq!(home.error_count("auth"), 3);
}

#[test]
fn filters_remove_controls_and_values_survive_a_structure_reload() {
    let s = structure("gen2-home-cz.json");
    let room = s
        .rooms
        .values()
        .map(|r| r.name.clone())
        .find(|n| !n.is_empty())
        .unwrap();
    let filters = FilterConfig {
        exclude_rooms: vec![room.clone()],
        ..FilterConfig::default()
    };
    let store = StateStore::new(&filters, false).unwrap();
    let ms = store.add_miniserver("home");
    ms.load_structure(&s);
    let uuids = all_state_uuids(&s);
    ms.apply_values(uuids.iter().map(|u| (*u, 7.0)));
    let registry = Registry::new();
    registry.register(store.clone());
    let before = values_of(&registry.snapshot(), "loxone_control_value");
    assert!(!before.is_empty());
    assert!(before
        .iter()
        .all(|(l, _)| !l.iter().any(|(k, v)| k == "room" && *v == room)));
    // reload the same structure: values are kept, nothing blanks
    ms.load_structure(&s);
    let after = values_of(&registry.snapshot(), "loxone_control_value");
    assert_eq!(before.len(), after.len());
    ms.set_connected(false);
    assert_eq!(
        values_of(&registry.snapshot(), "loxone_control_value").len(),
        before.len(),
        "kept while disconnected"
    );
}

#[test]
fn sub_controls_take_their_parents_room_and_category_as_in_the_python_exporter() {
    let mut s = structure("gen2-home-cz.json");
    let parent = s
        .controls
        .iter()
        .position(|c| c.room.is_some() && c.sub_controls.iter().any(|sc| !sc.states.is_empty()))
        .expect("a control with a room and sub-controls with states");
    let parent_room = s.controls[parent].room.clone().unwrap();
    let (other_uuid, other_room) = s
        .rooms
        .iter()
        .find(|(uuid, r)| **uuid != parent_room && !r.name.is_empty())
        .map(|(uuid, r)| (uuid.clone(), r.name.clone()))
        .unwrap();
    let parent_room_name = s.rooms[&parent_room].name.clone();
    // the sub-controls name another room and an unknown category of their own
    for sc in &mut s.controls[parent].sub_controls {
        sc.room = Some(other_uuid.clone());
        sc.category = Some("0f0f0f0f-0000-0000-ffff000000000000".into());
    }
    let sub_uuids: Vec<String> = s.controls[parent]
        .sub_controls
        .iter()
        .filter(|sc| !sc.states.is_empty())
        .map(|sc| sc.uuid_action.clone())
        .collect();
    let parent_cat = s.controls[parent]
        .category
        .as_ref()
        .and_then(|c| s.categories.get(c))
        .map(|c| c.name.clone())
        .unwrap_or_default();
    // excluding the sub-controls' own room must not drop them
    let filters = FilterConfig {
        exclude_rooms: vec![other_room],
        ..FilterConfig::default()
    };
    let store = StateStore::new(&filters, false).unwrap();
    let ms = store.add_miniserver("home");
    ms.load_structure(&s);
    ms.apply_values(all_state_uuids(&s).into_iter().map(|u| (u, 1.0)));
    let registry = Registry::new();
    registry.register(store.clone());
    let series = values_of(&registry.snapshot(), "loxone_control_value");
    let label = |l: &[(String, String)], key: &str| {
        l.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for uuid in &sub_uuids {
        let sub: Vec<_> = series
            .iter()
            .filter(|(l, _)| label(l, "uuid").starts_with(uuid.as_str()))
            .collect();
        assert!(!sub.is_empty(), "sub-control {uuid} was filtered out");
        for (l, _) in sub {
            assert_eq!(label(l, "room"), parent_room_name, "{l:?}");
            assert_eq!(label(l, "category"), parent_cat, "{l:?}");
        }
    }
}

#[test]
fn text_only_controls_become_info_series_when_enabled() {
    let s = structure("gen2-home-cz.json");
    let store = StateStore::new(&FilterConfig::default(), true).unwrap();
    let ms = store.add_miniserver("home");
    ms.load_structure(&s);
    let uuids = all_state_uuids(&s);
    ms.apply_texts(uuids.iter().map(|u| (*u, "hello \"world\"")));
    let registry = Registry::new();
    registry.register(store.clone());
    let snap = registry.snapshot();
    let info = values_of(&snap, "loxone_control_info");
    assert!(!info.is_empty());
    assert!(info.iter().all(|(l, v)| *v == 1.0
        && l.iter()
            .any(|(k, val)| k == "value" && val == "hello \"world\"")));
}

/// Fills a registry like the daemon's from a real structure and lints it with promtool.
#[test]
fn promtool_accepts_metrics_from_real_structures() {
    let Some(promtool) = common::component(common::PROMTOOL) else {
        return;
    };
    for file in ["gen2-home-cz.json", "gen2-demo-uk.json"] {
        let s = structure(file);
        let store = StateStore::new(&FilterConfig::default(), true).unwrap();
        let ms = store.add_miniserver("home");
        ms.load_structure(&s);
        let uuids = all_state_uuids(&s);
        ms.apply_values(
            uuids
                .iter()
                .enumerate()
                .map(|(i, u)| (*u, i as f64 * 0.5 - 3.0)),
        );
        ms.apply_texts(uuids.iter().map(|u| (*u, "line1\nline2 \\ \"q\"")));
        ms.set_connected(true);
        ms.set_info(MiniserverInfo {
            serial: s.ms_info.serial_nr.clone(),
            firmware: "14.5.12.7".into(),
            ms_type: "Gen2".into(),
            name: s.ms_info.ms_name.clone(),
            project: s.ms_info.project_name.clone(),
        });
        let registry = Registry::new();
        registry.register(store.clone());
        registry.register(Arc::new(SelfHealth::new()));
        registry.register(Arc::new(ProcessMetrics::new()));
        let text = encode_to_string(&registry.snapshot());
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
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed for {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A scrape waiting for a Miniserver's values gets its turn while a huge value table is
/// applied, instead of waiting for the whole table (a hostile Miniserver's 60 MB tables
/// held `/metrics` back for 100 ms and more).
///
/// No timing: the table is applied with the lock held from its start; a probe collector
/// registered before the store tells the applier that the scrape has started, and the
/// table then goes on (one event at a time, as long as 60 s) until the scrape is done.
/// The scrape can only finish while the table is still being applied if the store hands
/// it the lock; a store holding the lock for the whole table makes it wait for the end.
#[test]
fn a_scrape_is_not_held_back_for_a_whole_huge_table() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Signals when a scrape starts (its `collect` runs before the store's).
    struct ScrapeStarted(mpsc::Sender<()>);
    impl loxone_exporter::metrics::Collector for ScrapeStarted {
        fn collect(&self, _out: &mut Vec<loxone_exporter::metrics::model::Family>) {
            let _ = self.0.send(());
        }
    }

    /// Longest the table goes on waiting for the scrape (the failing case's duration).
    const LIMIT: Duration = Duration::from_secs(60);
    let s = structure("gen2-home-cz.json");
    let store = StateStore::new(&FilterConfig::default(), false).unwrap();
    let ms = store.add_miniserver("home");
    ms.load_structure(&s);
    let uuids = all_state_uuids(&s);
    let (started_tx, started_rx) = mpsc::channel();
    let registry = Registry::new();
    registry.register(Arc::new(ScrapeStarted(started_tx)));
    registry.register(store.clone());
    let progress = Arc::new(AtomicUsize::new(0));
    let scrape_done = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let applier = {
        let progress = progress.clone();
        let scrape_done = scrape_done.clone();
        std::thread::spawn(move || {
            let mut deadline = None;
            let mut ended_by_scrape = false;
            ms.apply_values(
                (0..)
                    .take_while(|&i| {
                        if i == 100 {
                            // the table's lock is held here: let the scrape start, and go on
                            // only once it has
                            ready_tx.send(()).unwrap();
                            started_rx.recv().unwrap();
                            deadline = Some(Instant::now() + LIMIT);
                        }
                        if i > 100 && scrape_done.load(Ordering::SeqCst) {
                            ended_by_scrape = true;
                            return false;
                        }
                        deadline.is_none_or(|d| Instant::now() < d)
                    })
                    .map(|i| {
                        progress.store(i, Ordering::Relaxed);
                        (uuids[i % uuids.len()], i as f64)
                    }),
            );
            (ended_by_scrape, progress.load(Ordering::Relaxed))
        })
    };
    ready_rx.recv().unwrap();
    let snap = registry.snapshot();
    let scraped_at = progress.load(Ordering::Relaxed);
    scrape_done.store(true, Ordering::SeqCst);
    let (ended_by_scrape, last) = applier.join().unwrap();
    assert!(snap.family("loxone_control_value").is_some());
    assert!(
        ended_by_scrape,
        "the scrape waited for the whole table ({last} events, {LIMIT:?}): it saw event {scraped_at}"
    );
}
