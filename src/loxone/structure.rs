//! The structure file (`LoxAPP3.json`) as the exporter needs it: controls and sub-controls at
//! any depth, rooms, categories, state references, units, `msInfo`, `globalStates` and
//! `lastModified` (protocol doc §6).
//!
//! Parsing is tolerant: unknown keys and types are ignored, `defaultRating` may be a string,
//! `room`/`cat` may be missing, a state may be a UUID or an ARRAY of UUIDs, and a state value
//! that is not a UUID is skipped (counted in [`Structure::skipped_state_refs`]) rather than
//! failing the whole file. Only a document that is not JSON, or whose top level or
//! `controls` is not an object, is an error.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::uuid::LoxUuid;

/// Why a structure file could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum StructureError {
    /// Not valid JSON (includes bad UTF-8).
    #[error("structure file is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON top level is not an object.
    #[error("structure file top level is not a JSON object")]
    NotAnObject,
    /// `controls` is present but not an object.
    #[error("structure file field 'controls' is not an object")]
    BadControls,
}

/// `msInfo`: identity of the Miniserver.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MsInfo {
    /// Serial number, e.g. `504F94A0EF1E`.
    pub serial_nr: String,
    /// Miniserver name given in Loxone Config.
    pub ms_name: String,
    /// Project name.
    pub project_name: String,
    /// Hardware type: 0 Gen1, 1 Go Gen1, 2 Gen2, 3 Go Gen2, 4 Compact.
    pub miniserver_type: Option<i64>,
    /// Local URL/address as configured.
    pub local_url: String,
    /// Temperature unit: 0 °C, 1 °F.
    pub temp_unit: Option<i64>,
}

/// A room or a category.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    /// Canonical UUID when the key parses as one.
    pub uuid: Option<LoxUuid>,
    /// Display name.
    pub name: String,
    /// Category type string (`lights`, `indoortemperature`, …); rooms: the `type` number as text.
    pub kind: String,
}

/// One named state of a control.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRef {
    /// State name (`value`, `tempActual`, `active`, …).
    pub name: String,
    /// The state's UUIDs: one for a plain state, several for an ARRAY state.
    pub uuids: Vec<LoxUuid>,
    /// True when the structure gave an array (even with one element).
    pub is_array: bool,
}

/// A control or sub-control.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    /// `uuidAction` (or the key): a UUID, or `<uuid>/<suffix>` for some sub-controls.
    pub uuid_action: String,
    /// Display name.
    pub name: String,
    /// Control type (`Switch`, `IRoomControllerV2`, …); may be empty.
    pub control_type: String,
    /// Room UUID string as given (sub-controls usually have none).
    pub room: Option<String>,
    /// Category UUID string as given.
    pub category: Option<String>,
    /// States in file order.
    pub states: Vec<StateRef>,
    /// `details.format` (printf pattern carrying the unit), if any.
    pub format: Option<String>,
    /// Sub-controls, recursively.
    pub sub_controls: Vec<Control>,
}

impl Control {
    /// This control and all sub-controls at any depth, parents first.
    pub fn walk(&self) -> Vec<&Control> {
        let mut out = vec![self];
        let mut i = 0;
        while i < out.len() {
            let c = out[i];
            out.extend(c.sub_controls.iter());
            i += 1;
        }
        out
    }
}

/// A parsed structure file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Structure {
    /// `lastModified` (`YYYY-MM-DD HH:MM:SS`), compared with `jdev/sps/LoxAPPversion3`.
    pub last_modified: String,
    /// Top-level `softwareVersion` when present (not in every file).
    pub software_version: Option<String>,
    /// `msInfo`.
    pub ms_info: MsInfo,
    /// Rooms by canonical UUID text (8-4-4-16) or the raw key when it is not a UUID.
    pub rooms: HashMap<String, Place>,
    /// Categories, keyed like rooms.
    pub categories: HashMap<String, Place>,
    /// Top-level controls in file order.
    pub controls: Vec<Control>,
    /// `globalStates` (operatingMode, sunrise, …) as state references.
    pub global_states: Vec<StateRef>,
    /// State values that were neither a UUID nor an array of UUIDs (skipped).
    pub skipped_state_refs: usize,
}

impl Structure {
    /// Looks a room up by the UUID string a control carries (either text form).
    pub fn room_name(&self, uuid: &str) -> Option<&str> {
        lookup(&self.rooms, uuid)
    }

    /// Looks a category up by the UUID string a control carries.
    pub fn category_name(&self, uuid: &str) -> Option<&str> {
        lookup(&self.categories, uuid)
    }

    /// Number of controls including sub-controls at every depth.
    pub fn control_count(&self) -> usize {
        self.controls.iter().map(|c| c.walk().len()).sum()
    }
}

fn lookup<'a>(map: &'a HashMap<String, Place>, uuid: &str) -> Option<&'a str> {
    map.get(&canonical_key(uuid)).map(|p| p.name.as_str())
}

/// Canonical map key for an id: 8-4-4-16 when it parses as a UUID, the raw text otherwise.
pub fn canonical_key(id: &str) -> String {
    LoxUuid::parse(id).map_or_else(|_| id.to_string(), |u| u.to_string())
}

/// Parses a structure file.
pub fn parse_structure(bytes: &[u8]) -> Result<Structure, StructureError> {
    let doc: Json = serde_json::from_slice(bytes)?;
    let top = doc.as_object().ok_or(StructureError::NotAnObject)?;
    let mut s = Structure {
        last_modified: str_field(top.get("lastModified")),
        software_version: top.get("softwareVersion").and_then(scalar_text),
        ..Structure::default()
    };
    if let Some(ms) = top.get("msInfo").and_then(Json::as_object) {
        s.ms_info = MsInfo {
            serial_nr: str_field(ms.get("serialNr")),
            ms_name: str_field(ms.get("msName")),
            project_name: str_field(ms.get("projectName")),
            miniserver_type: ms.get("miniserverType").and_then(int_field),
            local_url: str_field(ms.get("localUrl")),
            temp_unit: ms.get("tempUnit").and_then(int_field),
        };
    }
    s.rooms = places(top.get("rooms"));
    s.categories = places(top.get("cats"));
    let mut skipped = 0;
    if let Some(gs) = top.get("globalStates") {
        let gs = gs.as_object();
        for (name, v) in gs.into_iter().flatten() {
            match state_ref(name, v) {
                Some(r) => s.global_states.push(r),
                None => skipped += 1,
            }
        }
    }
    match top.get("controls") {
        None | Some(Json::Null) => {}
        Some(Json::Object(map)) => {
            for (key, c) in map {
                if let Some(c) = control(key, c, &mut skipped, 0) {
                    s.controls.push(c);
                }
            }
        }
        Some(_) => return Err(StructureError::BadControls),
    }
    s.skipped_state_refs = skipped;
    Ok(s)
}

/// Nesting deeper than this is ignored (real files nest one level; this bounds recursion
/// on hostile input).
const MAX_DEPTH: usize = 32;

fn control(key: &str, v: &Json, skipped: &mut usize, depth: usize) -> Option<Control> {
    let o = v.as_object()?;
    let uuid_action = o
        .get("uuidAction")
        .and_then(Json::as_str)
        .unwrap_or(key)
        .to_string();
    let mut states = Vec::new();
    if let Some(st) = o.get("states").and_then(Json::as_object) {
        for (name, v) in st {
            match state_ref(name, v) {
                Some(r) => states.push(r),
                None => *skipped += 1,
            }
        }
    }
    let mut sub_controls = Vec::new();
    if depth < MAX_DEPTH {
        if let Some(subs) = o.get("subControls").and_then(Json::as_object) {
            for (k, sc) in subs {
                if let Some(c) = control(k, sc, skipped, depth + 1) {
                    sub_controls.push(c);
                }
            }
        }
    }
    Some(Control {
        uuid_action,
        name: str_field(o.get("name")),
        control_type: str_field(o.get("type")),
        room: o.get("room").and_then(Json::as_str).map(str::to_string),
        category: o.get("cat").and_then(Json::as_str).map(str::to_string),
        states,
        format: o
            .get("details")
            .and_then(|d| d.get("format"))
            .and_then(Json::as_str)
            .map(str::to_string),
        sub_controls,
    })
}

fn state_ref(name: &str, v: &Json) -> Option<StateRef> {
    match v {
        Json::String(s) => LoxUuid::parse(s).ok().map(|u| StateRef {
            name: name.to_string(),
            uuids: vec![u],
            is_array: false,
        }),
        Json::Array(items) => {
            let uuids: Vec<LoxUuid> = items
                .iter()
                .filter_map(|i| i.as_str().and_then(|s| LoxUuid::parse(s).ok()))
                .collect();
            (!uuids.is_empty()).then(|| StateRef {
                name: name.to_string(),
                uuids,
                is_array: true,
            })
        }
        _ => None,
    }
}

fn places(v: Option<&Json>) -> HashMap<String, Place> {
    let mut out = HashMap::new();
    for (key, p) in v.and_then(Json::as_object).into_iter().flatten() {
        let Some(o) = p.as_object() else { continue };
        out.insert(
            canonical_key(key),
            Place {
                uuid: LoxUuid::parse(key).ok(),
                name: str_field(o.get("name")),
                kind: o.get("type").and_then(scalar_text).unwrap_or_default(),
            },
        );
    }
    out
}

fn str_field(v: Option<&Json>) -> String {
    v.and_then(scalar_text).unwrap_or_default()
}

fn scalar_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn int_field(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}
