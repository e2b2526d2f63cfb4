//! Which states the simulated Miniserver reports, and in which event table (protocol doc §3.6,
//! §6.3): built once per structure file from the parsed [`Structure`] plus the raw JSON for the
//! parts the exporter's model does not keep (`weatherServer.states`).
//!
//! The structure file does not say whether a state is a value or a text state; we decide by
//! name: `entriesAndDefaultValue` is a daytimer table, known text state names (§6.3) are text,
//! everything else is a value state. Shared UUIDs are reported once.
//!
//! Pure data; no I/O.

use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;

use super::generator::{classify, ValueClass};
use crate::loxone::structure::{canonical_key, Structure};
use crate::loxone::uuid::LoxUuid;

/// State names whose values arrive in the text table (protocol doc §6.3, plus a few more).
const TEXT_STATE_NAMES: &[&str] = &[
    "textAndIcon",
    "iconAndColor",
    "text",
    "jLocked",
    "moodList",
    "activeMoods",
    "favoriteMoods",
    "additionalMoods",
    "circuitNames",
    "color",
    "sequence",
    "overrideEntries",
    "loads",
    "entries",
    "infoText",
    "alarmCause",
    "modeList",
    "daylightConfig",
    "lockedReason",
    "events",
    "capabilities",
    "temperatureBoundaryInfo",
];

/// Global states that are text (the rest are values).
const TEXT_GLOBALS: &[&str] = &[
    "notifications",
    "modifications",
    "miniserverTime",
    "pastTasks",
    "plannedTasks",
    "favColors",
    "favColorSequences",
    "liveSearch",
    "userSettings",
    "cloudservice",
    "messageCenter",
];

/// A value state.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueState {
    /// State UUID.
    pub uuid: LoxUuid,
    /// How the generator moves it.
    pub class: ValueClass,
}

/// A text state with its initial text.
#[derive(Debug, Clone, PartialEq)]
pub struct TextState {
    /// State UUID.
    pub uuid: LoxUuid,
    /// State name (decides the initial text).
    pub name: String,
}

/// A control addressable by `jdev/sps/io/<uuidAction>/<cmd>`.
#[derive(Debug, Clone, PartialEq)]
pub struct IoTarget {
    /// Control type.
    pub control_type: String,
    /// Value states (name, uuid) of the control in file order.
    pub value_states: Vec<(String, LoxUuid)>,
}

/// All reportable states of one structure file.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    /// Value states (table 2).
    pub values: Vec<ValueState>,
    /// Text states (table 3).
    pub texts: Vec<TextState>,
    /// Daytimer states (table 4).
    pub daytimers: Vec<LoxUuid>,
    /// Weather states (table 7): `weatherServer.states.actual` / `.forecast`.
    pub weather: Vec<(String, LoxUuid)>,
    /// Controls by canonical `uuidAction` key.
    pub io_targets: HashMap<String, IoTarget>,
}

impl Catalogue {
    /// Builds the catalogue from the parsed structure and its raw JSON.
    pub fn build(structure: &Structure, raw: &Json) -> Self {
        let mut seen = HashSet::new();
        let mut cat = Catalogue::default();
        for gs in &structure.global_states {
            for &uuid in &gs.uuids {
                if !seen.insert(uuid) {
                    continue;
                }
                if TEXT_GLOBALS.contains(&gs.name.as_str()) {
                    cat.texts.push(TextState {
                        uuid,
                        name: gs.name.clone(),
                    });
                } else {
                    cat.values.push(ValueState {
                        uuid,
                        class: classify("", &gs.name),
                    });
                }
            }
        }
        for top in &structure.controls {
            for c in top.walk() {
                let mut value_states = Vec::new();
                for st in &c.states {
                    for &uuid in &st.uuids {
                        let is_value =
                            st.name != "entriesAndDefaultValue" && !is_text_state(&st.name);
                        if is_value {
                            value_states.push((st.name.clone(), uuid));
                        }
                        if !seen.insert(uuid) {
                            continue;
                        }
                        if st.name == "entriesAndDefaultValue" {
                            cat.daytimers.push(uuid);
                        } else if is_text_state(&st.name) {
                            cat.texts.push(TextState {
                                uuid,
                                name: st.name.clone(),
                            });
                        } else {
                            cat.values.push(ValueState {
                                uuid,
                                class: classify(&c.control_type, &st.name),
                            });
                        }
                    }
                }
                cat.io_targets.insert(
                    canonical_key(&c.uuid_action),
                    IoTarget {
                        control_type: c.control_type.clone(),
                        value_states,
                    },
                );
            }
        }
        if let Some(ws) = raw
            .get("weatherServer")
            .and_then(|w| w.get("states"))
            .and_then(Json::as_object)
        {
            for (name, v) in ws {
                if let Some(uuid) = v.as_str().and_then(|s| LoxUuid::parse(s).ok()) {
                    if seen.insert(uuid) {
                        cat.weather.push((name.clone(), uuid));
                    }
                }
            }
        }
        cat
    }
}

fn is_text_state(name: &str) -> bool {
    TEXT_STATE_NAMES.contains(&name)
}

/// Initial text of a text state, by name; `now` is the Miniserver's local time text.
pub fn initial_text(name: &str, now: &str) -> String {
    match name {
        "miniserverTime" => now.to_string(),
        "jLocked" | "infoText" | "alarmCause" | "lockedReason" | "entries" => String::new(),
        "textAndIcon" | "text" => "OK".to_string(),
        "iconAndColor" => r##"{"icon":"","color":"#69C350"}"##.to_string(),
        "color" => "hsv(30,80,100)".to_string(),
        "moodList" => {
            r#"[{"name":"Bright","id":1,"static":false,"used":1},{"name":"Off","id":778,"static":true,"used":1}]"#
                .to_string()
        }
        "activeMoods" | "favoriteMoods" => "[778]".to_string(),
        "circuitNames" | "daylightConfig" | "userSettings" | "cloudservice" => "{}".to_string(),
        "modeList" => r#""0:mode=0;name=\"Default\""#.to_string(),
        _ => "[]".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loxone::structure::parse_structure;

    const HOME: &[u8] = include_bytes!("../../../tests/fixtures/structures/gen2-home-cz.json");

    #[test]
    fn real_structure_has_all_four_kinds() {
        let s = parse_structure(HOME).unwrap();
        let raw: Json = serde_json::from_slice(HOME).unwrap();
        let c = Catalogue::build(&s, &raw);
        assert!(c.values.len() > 100, "{}", c.values.len());
        assert!(!c.texts.is_empty());
        assert!(!c.daytimers.is_empty());
        assert_eq!(c.weather.len(), 2);
        // distinct UUIDs across kinds
        let mut all = HashSet::new();
        for u in c
            .values
            .iter()
            .map(|v| v.uuid)
            .chain(c.texts.iter().map(|t| t.uuid))
            .chain(c.daytimers.iter().copied())
            .chain(c.weather.iter().map(|w| w.1))
        {
            assert!(all.insert(u), "duplicate {u}");
        }
        // every state reference of the file is covered
        let mut referenced = HashSet::new();
        for top in &s.controls {
            for ctl in top.walk() {
                for st in &ctl.states {
                    referenced.extend(st.uuids.iter().copied());
                }
            }
        }
        assert!(referenced.is_subset(&all));
        assert_eq!(c.io_targets.len(), s.control_count());
    }
}
