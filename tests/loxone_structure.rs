//! Structure-file parsing against the two real structure files and a hand-written nested
//! fixture. Expected numbers were computed independently with python3's json module
//! (owners of a state UUID = distinct `uuidAction`s referencing it, at every depth).

use std::collections::HashSet;

use loxone_exporter::loxone::structure::{parse_structure, Structure, StructureError};
use loxone_exporter::loxone::synth::structure_of_size;
use loxone_exporter::loxone::uuid::LoxUuid;

fn load(name: &str) -> Structure {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_structure(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn sub_control_count(s: &Structure) -> usize {
    s.control_count() - s.controls.len()
}

#[test]
fn gen2_home_cz_counts() {
    let s = load("structures/gen2-home-cz.json");
    assert_eq!(s.controls.len(), 210);
    assert_eq!(s.control_count(), 276);
    assert_eq!(s.all_controls().len(), 276);
    assert_eq!(sub_control_count(&s), 66);
    assert_eq!(s.rooms.len(), 17);
    assert_eq!(s.categories.len(), 36);
    assert_eq!(s.state_ref_count(), 1371);
    assert_eq!(s.state_owners().len(), 1283);
    assert_eq!(s.shared_state_uuid_count(), 44);
    assert_eq!(s.global_states.len(), 17);
    assert_eq!(s.weather_states.len(), 2);
    assert_eq!(s.skipped_state_refs, 0);
    assert_eq!(s.detail_formats.len(), 94);
    assert_eq!(s.detail_formats.values().map(Vec::len).sum::<usize>(), 110);
    assert_eq!(
        s.all_controls()
            .iter()
            .filter(|c| c.format.is_some())
            .count(),
        80
    );
    assert_eq!(s.last_modified, "2026-01-10 13:24:37");
    assert_eq!(s.ms_info.serial_nr, "504F94A0EF1E");
    assert_eq!(s.ms_info.ms_name, "Ondřej Levý - Býkovice");
    assert_eq!(s.ms_info.miniserver_type, Some(2));
    assert_eq!(s.ms_info.temp_unit, Some(0));
    // the operatingMode global state of the doc's worked example
    let op = s
        .global_states
        .iter()
        .find(|g| g.name == "operatingMode")
        .unwrap();
    assert_eq!(
        op.uuids,
        vec![LoxUuid::parse("185b0f92-0070-3b3d-ffff3a3fe38eb401").unwrap()]
    );
    // every uuidAction is unique at every depth
    let ids: HashSet<&str> = s
        .all_controls()
        .iter()
        .map(|c| c.uuid_action.as_str())
        .collect();
    assert_eq!(ids.len(), 276);
    // one control without room (python: 1 top-level control lacks 'room')
    assert_eq!(s.controls.iter().filter(|c| c.room.is_none()).count(), 1);
    assert!(s.room_name("nonexistent").is_none());
}

#[test]
fn gen2_demo_uk_counts() {
    let s = load("structures/gen2-demo-uk.json");
    assert_eq!(s.controls.len(), 72);
    assert_eq!(s.control_count(), 133);
    assert_eq!(sub_control_count(&s), 61);
    assert_eq!(s.rooms.len(), 19);
    assert_eq!(s.categories.len(), 32);
    assert_eq!(s.state_ref_count(), 1023);
    assert_eq!(s.state_owners().len(), 1002);
    assert_eq!(s.shared_state_uuid_count(), 21);
    assert_eq!(s.global_states.len(), 14);
    assert_eq!(s.weather_states.len(), 2);
    assert_eq!(s.skipped_state_refs, 0);
    // miniserverType and tempUnit are strings in this file
    assert_eq!(s.ms_info.miniserver_type, Some(2));
    assert_eq!(s.ms_info.temp_unit, Some(0));
    assert_eq!(s.ms_info.ms_name, "Demo Miniserver UK");
    assert_eq!(s.last_modified, "2022-02-25 11:51:06");
    // every control and sub-control room/category reference resolves or is absent
    for c in s.all_controls() {
        if let Some(r) = &c.room {
            assert!(s.room_name(r).is_some(), "{}", c.name);
        }
    }
}

#[test]
fn nested_fixture_depth_arrays_shared_and_missing_fields() {
    let s = load("loxone/nested-structure.json");
    // the 4th "control" is a string and is skipped
    assert_eq!(s.controls.len(), 3);
    assert_eq!(s.control_count(), 6);
    let lc = &s.controls.iter().find(|c| c.name == "Level 0").unwrap();
    let l1 = &lc.sub_controls[0];
    let l2 = &l1.sub_controls[0];
    let l3 = &l2.sub_controls[0];
    assert_eq!(l1.name, "Level 1");
    assert_eq!(l1.uuid_action, "30000000-0000-0000-ffff000000000001/AI1");
    assert_eq!(l1.format.as_deref(), Some("%.0f%%"));
    assert_eq!(l2.control_type, "ColorPickerV2");
    assert_eq!(l3.name, "Level 3");
    // no uuidAction: the key is used
    assert_eq!(l3.uuid_action, "30000000-0000-0000-ffff0000000000d0");
    assert_eq!(l3.format.as_deref(), Some("%.1f°"));
    assert_eq!(lc.walk().len(), 4);
    // room/cat present on the parent, missing on sub-controls
    assert_eq!(s.room_name(lc.room.as_deref().unwrap()), Some("Kitchen"));
    assert_eq!(
        s.category_name(lc.category.as_deref().unwrap()),
        Some("Lights")
    );
    assert!(l1.room.is_none() && l1.category.is_none());
    // array state: garbage elements dropped, UUIDs kept in order
    let irc = s.controls.iter().find(|c| c.name == "Legacy IRC").unwrap();
    assert!(irc.room.is_none() && irc.category.is_none());
    let temps = irc
        .states
        .iter()
        .find(|st| st.name == "temperatures")
        .unwrap();
    assert!(temps.is_array);
    assert_eq!(temps.uuids.len(), 3);
    assert_eq!(
        temps.uuids[2].to_string(),
        "30000000-0000-0000-ffff0000000000f2"
    );
    // skipped: "bad": null in Level 1 and "broken": 42 in globalStates
    assert_eq!(s.skipped_state_refs, 2);
    assert_eq!(s.global_states.len(), 1);
    // shared: activeMoods of Level 0 == actual of Meter
    let shared = LoxUuid::parse("30000000-0000-0000-ffff0000000000a1").unwrap();
    let owners = s.state_owners();
    let names: Vec<(&str, &str)> = owners[&shared]
        .iter()
        .map(|o| (o.control.name.as_str(), o.state.name.as_str()))
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&("Level 0", "activeMoods")));
    assert!(names.contains(&("Meter", "actual")));
    assert_eq!(s.shared_state_uuid_count(), 1);
    // Meter: no details.format, but its other formats are kept
    let meter = s.controls.iter().find(|c| c.name == "Meter").unwrap();
    assert_eq!(meter.format, None);
    let mf = &s.detail_formats[&meter.uuid_action];
    assert!(mf.contains(&("actualFormat".to_string(), "%.3fkW".to_string())));
    assert!(mf.contains(&("totalFormat".to_string(), "%.1fkWh".to_string())));
    assert_eq!(mf.len(), 2);
    // rooms: numeric and null type; category type string
    assert_eq!(s.rooms.len(), 2);
    let kitchen = s.rooms.values().find(|r| r.name == "Kitchen").unwrap();
    assert_eq!(kitchen.kind, "1");
    assert_eq!(
        s.rooms.values().find(|r| r.name == "Hall").unwrap().kind,
        ""
    );
    assert_eq!(s.categories.values().next().unwrap().kind, "lights");
    assert_eq!(s.ms_info.miniserver_type, Some(2));
    assert_eq!(s.weather_states.len(), 2);
}

#[test]
fn rejects_non_structures_with_typed_errors() {
    assert!(matches!(parse_structure(b""), Err(StructureError::Json(_))));
    assert!(matches!(
        parse_structure(b"{\"controls\":"),
        Err(StructureError::Json(_))
    ));
    assert!(matches!(
        parse_structure(b"[1,2]"),
        Err(StructureError::NotAnObject)
    ));
    assert!(matches!(
        parse_structure(b"\"x\""),
        Err(StructureError::NotAnObject)
    ));
    assert!(matches!(
        parse_structure(b"{\"controls\":[]}"),
        Err(StructureError::BadControls)
    ));
    assert!(matches!(
        parse_structure(b"{\"controls\":5}"),
        Err(StructureError::BadControls)
    ));
    assert!(matches!(
        parse_structure(b"{\"a\":\"\xff\"}}"),
        Err(StructureError::Json(_))
    ));
    assert!(parse_structure(b"{}").unwrap().controls.is_empty());
    assert!(parse_structure(b"{\"controls\":null}")
        .unwrap()
        .controls
        .is_empty());
}

#[test]
fn five_mib_structure_parses() {
    let bytes = structure_of_size(5 * 1024 * 1024);
    assert!(bytes.len() >= 5 * 1024 * 1024);
    let s = parse_structure(&bytes).unwrap();
    assert!(s.controls.len() > 3000, "{}", s.controls.len());
    let ids: HashSet<&str> = s
        .all_controls()
        .iter()
        .map(|c| c.uuid_action.as_str())
        .collect();
    assert_eq!(ids.len(), s.control_count());
    assert_eq!(s.skipped_state_refs, 0);
}
