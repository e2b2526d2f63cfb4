//! The structure file (`LoxAPP3.json`) as the exporter needs it: controls and sub-controls at
//! any depth, rooms, categories, state references, units, `msInfo`, `globalStates`,
//! `weatherServer.states` and `lastModified` (protocol doc §6).
//!
//! Parsing is tolerant: unknown keys and types are ignored, `defaultRating` may be a string,
//! `room`/`cat` may be missing, a state may be a UUID or an ARRAY of UUIDs, and a state value
//! that is not a UUID is skipped (counted in [`Structure::skipped_state_refs`]) rather than
//! failing the whole file. A field of an unexpected JSON type reads as absent; a field given
//! twice keeps its last value, but a control or state name given twice in `controls` or
//! `states` is kept twice (Loxone never writes one; the state store then exports the first).
//! Only a document that is not JSON (including bad UTF-8), whose top
//! level or `controls` is not an object, or that nests deeper than serde_json's recursion
//! limit, is an error. Sub-controls nested deeper than [`MAX_DEPTH`] are ignored.
//!
//! Speed: the document is streamed once through hand-written serde visitors straight into
//! the public types (no `serde_json::Value` tree); ignored fields are skipped without
//! allocation and kept strings are copied once. A state UUID shared by several controls
//! keeps all its owners ([`Structure::state_owners`]).
//!
//! Does not own: unit extraction from printf formats, filtering, or generating files
//! (see [`super::synth`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

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
    /// `weatherServer.states` (`actual`, `forecast`): UUIDs of the weather tables.
    pub weather_states: Vec<StateRef>,
    /// Every printf format in a control's `details` by control `uuidAction`: `format`,
    /// and `actualFormat`, `totalFormat`, … (Meter/EFM carry no plain `format`). Only
    /// controls with at least one format appear.
    pub detail_formats: HashMap<String, Vec<(String, String)>>,
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

    /// Number of state UUID references of all controls at every depth (an ARRAY state
    /// counts each UUID; global and weather states not included).
    pub fn state_ref_count(&self) -> usize {
        self.all_controls()
            .iter()
            .flat_map(|c| c.states.iter())
            .map(|s| s.uuids.len())
            .sum()
    }

    /// All controls and sub-controls at every depth, each top-level control followed by
    /// its descendants (breadth-first within it).
    pub fn all_controls(&self) -> Vec<&Control> {
        self.controls.iter().flat_map(|c| c.walk()).collect()
    }

    /// Every state UUID of the controls (all depths) with ALL its owners, in file order.
    /// A UUID referenced by several controls (or states) lists each of them.
    pub fn state_owners(&self) -> HashMap<LoxUuid, Vec<StateOwner<'_>>> {
        let mut out: HashMap<LoxUuid, Vec<StateOwner<'_>>> = HashMap::new();
        for control in self.all_controls() {
            for state in &control.states {
                for &uuid in &state.uuids {
                    out.entry(uuid)
                        .or_default()
                        .push(StateOwner { control, state });
                }
            }
        }
        out
    }

    /// Number of state UUIDs referenced by more than one distinct control (by `uuidAction`).
    pub fn shared_state_uuid_count(&self) -> usize {
        self.state_owners()
            .values()
            .filter(|owners| {
                let first = owners.first().map(|o| o.control.uuid_action.as_str());
                owners
                    .iter()
                    .any(|o| Some(o.control.uuid_action.as_str()) != first)
            })
            .count()
    }
}

/// One owner of a state UUID: the control and which of its states.
#[derive(Debug, Clone, Copy)]
pub struct StateOwner<'a> {
    /// The owning control or sub-control.
    pub control: &'a Control,
    /// The state (name, UUIDs) within it.
    pub state: &'a StateRef,
}

fn lookup<'a>(map: &'a HashMap<String, Place>, uuid: &str) -> Option<&'a str> {
    map.get(&canonical_key(uuid)).map(|p| p.name.as_str())
}

/// Canonical map key for an id: 8-4-4-16 when it parses as a UUID, the raw text otherwise.
pub fn canonical_key(id: &str) -> String {
    LoxUuid::parse(id).map_or_else(|_| id.to_string(), |u| u.to_string())
}

/// Sub-controls nested deeper than this are ignored (real files nest one level; this bounds
/// the work on hostile input, below serde_json's own recursion limit).
pub const MAX_DEPTH: usize = 32;

/// Parses a structure file.
///
/// Invalid UTF-8 inside strings is tolerated: the document is then decoded lossily (U+FFFD)
/// and parsed again.
pub fn parse_structure(bytes: &[u8]) -> Result<Structure, StructureError> {
    let top = match serde_json::from_slice::<Top>(bytes) {
        Ok(top) => top,
        Err(e) if std::str::from_utf8(bytes).is_err() => {
            let text = String::from_utf8_lossy(bytes);
            serde_json::from_str::<Top>(&text).map_err(|_| e)?
        }
        Err(e) => return Err(e.into()),
    };
    match top {
        Top::Ok(s) => Ok(*s),
        Top::NotAnObject => Err(StructureError::NotAnObject),
        Top::BadControls => Err(StructureError::BadControls),
    }
}

// ---------------------------------------------------------------------------------------
// Streaming visitors. Every visitor accepts any JSON value: the expected shape is read,
// anything else is consumed and reported as absent, so no field can fail the document.

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Implements the number/bool/null `visit_*` methods of a visitor by returning a default
/// (strings, maps and sequences are handled by each visitor).
macro_rules! other_values {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// Any JSON value as optional text: a string (borrowed when it has no escapes), a number or
/// bool rendered; null, objects and arrays read as `None`.
struct Scalar<'de>(Option<Cow<'de, str>>);

impl<'de> Scalar<'de> {
    fn into_string(self) -> Option<String> {
        self.0.map(Cow::into_owned)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
                drain_map(map).map(|()| Scalar(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
                drain_seq(seq).map(|()| Scalar(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Any JSON value as an optional integer: integral numbers and numeric strings.
struct Int(Option<i64>);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Scalar::deserialize(d)?;
        Ok(Int(s.0.and_then(|t| {
            let t = t.trim();
            t.parse::<i64>().ok().or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
        })))
    }
}

/// Hex digit values; 0xff marks a non-hex byte.
const HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// [`LoxUuid::parse`] with a fast path for the structure file's own `8-4-4-16` form, which
/// is most of the work of a big file (tens of thousands of state UUIDs).
fn parse_uuid(s: &str) -> Option<LoxUuid> {
    let b = s.as_bytes();
    if b.len() == 35 {
        let mut be = [0u8; 16];
        let mut n = 0usize;
        let mut ok = true;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18) {
                ok &= c == b'-';
                continue;
            }
            let v = HEX[usize::from(c)];
            ok &= v != 0xff;
            if let Some(byte) = be.get_mut(n / 2) {
                *byte = (*byte << 4) | (v & 0x0f);
            }
            n += 1;
        }
        if ok && n == 32 {
            let [a, b, c, d, e, f, g, h, d4 @ ..] = be;
            return Some(LoxUuid::from_fields(
                u32::from_be_bytes([a, b, c, d]),
                u16::from_be_bytes([e, f]),
                u16::from_be_bytes([g, h]),
                d4,
            ));
        }
    }
    LoxUuid::parse(s).ok()
}

/// A state value: one UUID string, an array of them, or something else.
enum StateValue<'de> {
    One(Cow<'de, str>),
    Many(Vec<Scalar<'de>>),
    Other,
}

impl<'de> Deserialize<'de> for StateValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StateValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a UUID or an array of UUIDs")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StateValue::One(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StateValue::One(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(StateValue::One(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(s) = seq.next_element::<Scalar<'de>>()? {
                    items.push(s);
                }
                Ok(StateValue::Many(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| StateValue::Other)
            }
            other_values!(StateValue::Other);
        }
        d.deserialize_any(V)
    }
}

impl StateValue<'_> {
    fn into_ref(self, name: &str) -> Option<StateRef> {
        match self {
            StateValue::One(s) => parse_uuid(&s).map(|u| StateRef {
                name: name.to_string(),
                uuids: vec![u],
                is_array: false,
            }),
            StateValue::Many(items) => {
                let uuids: Vec<LoxUuid> = items
                    .iter()
                    .filter_map(|i| i.0.as_deref().and_then(parse_uuid))
                    .collect();
                (!uuids.is_empty()).then(|| StateRef {
                    name: name.to_string(),
                    uuids,
                    is_array: true,
                })
            }
            StateValue::Other => None,
        }
    }
}

/// A `states` / `globalStates` object: (refs, skipped count).
struct States(Vec<StateRef>, usize);

impl<'de> Deserialize<'de> for States {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = States;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a states object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<States, A::Error> {
                let mut out = States(Vec::new(), 0);
                while let Some(name) = map.next_key::<Scalar<'de>>()? {
                    let value = map.next_value::<StateValue<'de>>()?;
                    match value.into_ref(name.0.as_deref().unwrap_or_default()) {
                        Some(r) => out.0.push(r),
                        None => out.1 += 1,
                    }
                }
                Ok(out)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<States, A::Error> {
                drain_seq(seq).map(|()| States(Vec::new(), 0))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(States(Vec::new(), 0))
            }
            other_values!(States(Vec::new(), 0));
        }
        d.deserialize_any(V)
    }
}

/// `details`: `format` and the other `*Format` printf strings.
#[derive(Default)]
struct Details {
    format: Option<String>,
    formats: Vec<(String, String)>,
}

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Details;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a details object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Details, A::Error> {
                let mut out = Details::default();
                while let Some(key) = map.next_key::<Scalar<'de>>()? {
                    let key = key.0.unwrap_or_default();
                    if key == "format" || key.ends_with("Format") {
                        if let StateValue::One(v) = map.next_value::<StateValue<'de>>()? {
                            if key == "format" {
                                out.format = Some(v.to_string());
                            }
                            out.formats.push((key.into_owned(), v.into_owned()));
                        }
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Details, A::Error> {
                drain_seq(seq).map(|()| Details::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Details::default())
            }
            other_values!(Details::default());
        }
        d.deserialize_any(V)
    }
}

/// Collects what a control produces besides itself.
#[derive(Default)]
struct Sink {
    skipped: usize,
    formats: HashMap<String, Vec<(String, String)>>,
}

/// A `controls` or `subControls` object at a given depth; `None` when not an object.
struct ControlsSeed<'s> {
    depth: usize,
    sink: &'s mut Sink,
}

impl<'de> DeserializeSeed<'de> for ControlsSeed<'_> {
    type Value = Option<Vec<Control>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ControlsSeed<'_> {
    type Value = Option<Vec<Control>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a controls object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<Scalar<'de>>()? {
            let seed = ControlSeed {
                key: key.0.unwrap_or_default(),
                depth: self.depth,
                sink: &mut *self.sink,
            };
            if let Some(c) = map.next_value_seed(seed)? {
                out.push(c);
            }
        }
        Ok(Some(out))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq).map(|()| None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some(Vec::new()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some(Vec::new()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// One control object; `None` when the value is not an object.
struct ControlSeed<'de, 's> {
    key: Cow<'de, str>,
    depth: usize,
    sink: &'s mut Sink,
}

impl<'de> DeserializeSeed<'de> for ControlSeed<'de, '_> {
    type Value = Option<Control>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ControlSeed<'de, '_> {
    type Value = Option<Control>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a control object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut uuid_action = None;
        let mut name = None;
        let mut control_type = None;
        let mut room = None;
        let mut category = None;
        let mut states = Vec::new();
        let mut details = Details::default();
        let mut sub_controls = Vec::new();
        while let Some(key) = map.next_key::<Scalar<'de>>()? {
            match key.0.as_deref().unwrap_or_default() {
                "uuidAction" => uuid_action = map.next_value::<Scalar>()?.into_string(),
                "name" => name = map.next_value::<Scalar>()?.into_string(),
                "type" => control_type = map.next_value::<Scalar>()?.into_string(),
                "room" => room = str_only(map.next_value::<StateValue>()?),
                "cat" => category = str_only(map.next_value::<StateValue>()?),
                "states" => {
                    let s = map.next_value::<States>()?;
                    states = s.0;
                    self.sink.skipped += s.1;
                }
                "details" => details = map.next_value::<Details>()?,
                "subControls" if self.depth < MAX_DEPTH => {
                    let seed = ControlsSeed {
                        depth: self.depth + 1,
                        sink: &mut *self.sink,
                    };
                    sub_controls = map.next_value_seed(seed)?.unwrap_or_default();
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let uuid_action = uuid_action.unwrap_or_else(|| self.key.into_owned());
        if !details.formats.is_empty() {
            self.sink
                .formats
                .insert(uuid_action.clone(), details.formats);
        }
        Ok(Some(Control {
            uuid_action,
            name: name.unwrap_or_default(),
            control_type: control_type.unwrap_or_default(),
            room,
            category,
            states,
            format: details.format,
            sub_controls,
        }))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq).map(|()| None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    other_values!(None);
}

fn str_only(v: StateValue<'_>) -> Option<String> {
    match v {
        StateValue::One(s) => Some(s.into_owned()),
        _ => None,
    }
}

/// `rooms` / `cats`.
struct Places(HashMap<String, Place>);

impl<'de> Deserialize<'de> for Places {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Places;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rooms/cats object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Places, A::Error> {
                let mut out = HashMap::new();
                while let Some(key) = map.next_key::<Scalar<'de>>()? {
                    let key = key.0.unwrap_or_default();
                    if let MaybePlace(Some((name, kind))) = map.next_value::<MaybePlace>()? {
                        out.insert(
                            canonical_key(&key),
                            Place {
                                uuid: LoxUuid::parse(&key).ok(),
                                name,
                                kind,
                            },
                        );
                    }
                }
                Ok(Places(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Places, A::Error> {
                drain_seq(seq).map(|()| Places(HashMap::new()))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Places(HashMap::new()))
            }
            other_values!(Places(HashMap::new()));
        }
        d.deserialize_any(V)
    }
}

/// The body of a room/category: (name, type as text); `None` for a non-object.
struct MaybePlace(Option<(String, String)>);

impl<'de> Deserialize<'de> for MaybePlace {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybePlace;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a room/category object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybePlace, A::Error> {
                let mut name = None;
                let mut kind = None;
                while let Some(key) = map.next_key::<Scalar<'de>>()? {
                    match key.0.as_deref().unwrap_or_default() {
                        "name" => name = map.next_value::<Scalar>()?.into_string(),
                        "type" => kind = map.next_value::<Scalar>()?.into_string(),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(MaybePlace(Some((
                    name.unwrap_or_default(),
                    kind.unwrap_or_default(),
                ))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MaybePlace, A::Error> {
                drain_seq(seq).map(|()| MaybePlace(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MaybePlace(None))
            }
            other_values!(MaybePlace(None));
        }
        d.deserialize_any(V)
    }
}

/// `msInfo`.
struct MsInfoField(MsInfo);

impl<'de> Deserialize<'de> for MsInfoField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MsInfoField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an msInfo object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MsInfoField, A::Error> {
                let mut ms = MsInfo::default();
                while let Some(key) = map.next_key::<Scalar<'de>>()? {
                    let text = |s: Scalar| s.into_string().unwrap_or_default();
                    match key.0.as_deref().unwrap_or_default() {
                        "serialNr" => ms.serial_nr = text(map.next_value()?),
                        "msName" => ms.ms_name = text(map.next_value()?),
                        "projectName" => ms.project_name = text(map.next_value()?),
                        "localUrl" => ms.local_url = text(map.next_value()?),
                        "miniserverType" => ms.miniserver_type = map.next_value::<Int>()?.0,
                        "tempUnit" => ms.temp_unit = map.next_value::<Int>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(MsInfoField(ms))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MsInfoField, A::Error> {
                drain_seq(seq).map(|()| MsInfoField(MsInfo::default()))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MsInfoField(MsInfo::default()))
            }
            other_values!(MsInfoField(MsInfo::default()));
        }
        d.deserialize_any(V)
    }
}

/// `weatherServer`: only its `states`.
struct WeatherField(States);

impl<'de> Deserialize<'de> for WeatherField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WeatherField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a weatherServer object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WeatherField, A::Error> {
                let mut states = States(Vec::new(), 0);
                while let Some(key) = map.next_key::<Scalar<'de>>()? {
                    if key.0.as_deref() == Some("states") {
                        states = map.next_value()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(WeatherField(states))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<WeatherField, A::Error> {
                drain_seq(seq).map(|()| WeatherField(States(Vec::new(), 0)))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(WeatherField(States(Vec::new(), 0)))
            }
            other_values!(WeatherField(States(Vec::new(), 0)));
        }
        d.deserialize_any(V)
    }
}

/// The whole document.
enum Top {
    Ok(Box<Structure>),
    NotAnObject,
    BadControls,
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a structure file object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
                let mut s = Structure::default();
                let mut sink = Sink::default();
                let mut bad_controls = false;
                while let Some(key) = map.next_key::<Scalar<'de>>()? {
                    match key.0.as_deref().unwrap_or_default() {
                        "lastModified" => {
                            s.last_modified = map
                                .next_value::<Scalar>()?
                                .into_string()
                                .unwrap_or_default()
                        }
                        "softwareVersion" => {
                            s.software_version = map.next_value::<Scalar>()?.into_string()
                        }
                        "msInfo" => s.ms_info = map.next_value::<MsInfoField>()?.0,
                        "rooms" => s.rooms = map.next_value::<Places>()?.0,
                        "cats" => s.categories = map.next_value::<Places>()?.0,
                        "globalStates" => {
                            let g = map.next_value::<States>()?;
                            s.global_states = g.0;
                            sink.skipped += g.1;
                        }
                        "weatherServer" => {
                            let w = map.next_value::<WeatherField>()?.0;
                            s.weather_states = w.0;
                            sink.skipped += w.1;
                        }
                        "controls" => {
                            let seed = ControlsSeed {
                                depth: 0,
                                sink: &mut sink,
                            };
                            match map.next_value_seed(seed)? {
                                Some(c) => {
                                    s.controls = c;
                                    bad_controls = false;
                                }
                                None => bad_controls = true,
                            }
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                if bad_controls {
                    return Ok(Top::BadControls);
                }
                s.skipped_state_refs = sink.skipped;
                s.detail_formats = sink.formats;
                Ok(Top::Ok(Box::new(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top, A::Error> {
                drain_seq(seq).map(|()| Top::NotAnObject)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Top::NotAnObject)
            }
            other_values!(Top::NotAnObject);
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "185b0f92-0070-3b3d-ffff3a3fe38eb401";

    #[test]
    fn quirky_control_fields() {
        let json = format!(
            r#"{{"controls":{{"k":{{"name":7,"type":null,"defaultRating":"1","room":{{}},"cat":["x"],
            "states":{{"a":"{U1}","b":"{}","c":[],"d":{{}},"e":["{U1}"]}},"details":"weird",
            "subControls":"none"}}}}}}"#,
            U1.to_uppercase()
        );
        let s = parse_structure(json.as_bytes()).unwrap();
        let c = &s.controls[0];
        assert_eq!(c.uuid_action, "k");
        assert_eq!(c.name, "7");
        assert_eq!(c.control_type, "");
        assert_eq!(c.room, None);
        assert_eq!(c.category, None);
        assert_eq!(c.format, None);
        assert!(c.sub_controls.is_empty());
        // a and b (upper case) are the same UUID; c (empty array) and d skipped
        assert_eq!(c.states.len(), 3);
        assert_eq!(c.states[0].uuids, c.states[1].uuids);
        assert!(c.states[2].is_array);
        assert_eq!(s.skipped_state_refs, 2);
    }

    #[test]
    fn escaped_strings_and_duplicate_keys() {
        let json = format!(
            r#"{{"lastModified":"2020-01-01 00:00:00","lastModified":"2021-01-01 00:00:00",
            "controls":{{"k":{{"name":"Tab\tQuote\" \u017e","states":{{"v":"{U1}"}},
            "details":{{"format":"%.1f\u00b0"}}}}}}}}"#
        );
        let s = parse_structure(json.as_bytes()).unwrap();
        assert_eq!(s.last_modified, "2021-01-01 00:00:00");
        assert_eq!(s.controls[0].name, "Tab\tQuote\" ž");
        assert_eq!(s.controls[0].format.as_deref(), Some("%.1f°"));
        assert_eq!(s.controls[0].states[0].uuids[0].to_string(), U1);
    }

    #[test]
    fn fast_uuid_path_agrees_with_loxuuid_parse() {
        let mut cases = vec![
            U1.to_string(),
            U1.to_uppercase(),
            "185b0f92-0070-3b3d-ffff3a3fe38eb40g".to_string(),
            "185b0f92-0070-3b3d+ffff3a3fe38eb401".to_string(),
            "185b0f92x0070-3b3d-ffff3a3fe38eb401".to_string(),
            "185B0F92-0070-3B3D-FFFF-3A3FE38EB401".to_string(),
            "185b0f92-0070-3b3d-ffff3a3fe38eb401/AI1".to_string(),
            "185b0f92-0070-3b3d-ffff3a3fe38eb4é".to_string(),
            String::new(),
        ];
        // every 35-byte mutation of one position
        for i in 0..35 {
            for c in ['-', 'g', '0', 'F', ' '] {
                let mut m: Vec<char> = U1.chars().collect();
                m[i] = c;
                cases.push(m.into_iter().collect());
            }
        }
        for c in cases {
            assert_eq!(parse_uuid(&c), LoxUuid::parse(&c).ok(), "{c:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        let s = parse_structure(b"{\"controls\":{\"k\":{\"name\":\"a\xffb\"}}}").unwrap();
        assert_eq!(s.controls[0].name, "a\u{fffd}b");
    }

    #[test]
    fn deep_nesting_is_bounded() {
        // MAX_DEPTH + 5 levels of sub-controls: deeper ones are ignored, no error
        let depth = MAX_DEPTH + 5;
        let mut json = String::from(r#"{"name":"leaf"}"#);
        for i in 0..depth {
            json = format!(r#"{{"name":"n{i}","subControls":{{"s{i}":{json}}}}}"#);
        }
        let doc = format!(r#"{{"controls":{{"top":{json}}}}}"#);
        let s = parse_structure(doc.as_bytes()).unwrap();
        assert_eq!(s.control_count(), MAX_DEPTH + 1);
        // nesting beyond serde_json's recursion limit (128): a typed error or skipped,
        // never a stack overflow
        let deep =
            |open: &str, close: &str| format!("{}{}", open.repeat(100_000), close.repeat(100_000));
        assert!(parse_structure(deep("[", "]").as_bytes()).is_err());
        let inner = format!(r#"{{"controls":{{"a":{{"x":{}}}}}}}"#, deep("[", "]"));
        // (an ignored field is skipped iteratively by serde_json)
        assert_eq!(parse_structure(inner.as_bytes()).unwrap().controls.len(), 1);
        let objs = format!(
            r#"{{"controls":{{"a":{}}}}}"#,
            deep(r#"{"subControls":{"s":"#, "}}")
        );
        assert!(matches!(
            parse_structure(objs.as_bytes()),
            Err(StructureError::Json(_))
        ));
    }
}
