//! Synthetic structure files: a real `LoxAPP3.json` scaled up by cloning its controls, for
//! scale tests, benchmarks, fuzz seeds and the simulator (protocol doc §6; issue 3 asks for
//! 5 MiB structure parsing).
//!
//! Each clone is a deep copy of a top-level control (with its sub-controls) whose own ids get
//! fresh, unique UUIDs: `uuidAction`, sub-control keys and ids (also the `<uuid>/AI1`
//! suffixed forms) and every state UUID, consistently inside the clone (a state equal to the
//! control's own `uuidAction` stays equal). References to rooms, categories and other
//! controls are kept, so the result is a valid structure file. Deterministic for a seed.
//!
//! Does not own: parsing (see [`super::structure`]). Not for hostile input: the base is a
//! trusted fixture.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::{Map, Value};

use super::uuid::LoxUuid;

/// The bundled real structure file used by [`structure_of_size`] (gen2-home-cz: 210
/// top-level controls, 283 KB).
pub const BASE_STRUCTURE: &[u8] =
    include_bytes!("../../tests/fixtures/structures/gen2-home-cz.json");

/// Why a base structure cannot be scaled.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Not JSON.
    #[error("base structure is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// No `controls` object with at least one control.
    #[error("base structure has no controls object with at least one control")]
    NoControls,
}

/// Like [`try_scale_structure`]; returns `base` unchanged when it cannot be scaled.
pub fn scale_structure(base: &[u8], target_controls: usize, seed: u64) -> Vec<u8> {
    try_scale_structure(base, target_controls, seed).unwrap_or_else(|_| base.to_vec())
}

/// Returns a structure file with at least `target_controls` top-level controls: the base's
/// controls plus clones (round-robin over the base controls) with fresh UUIDs and names
/// suffixed ` #<n>`. With `target_controls` at or below the base count the base is
/// re-serialized unchanged in content. Output is compact JSON.
pub fn try_scale_structure(
    base: &[u8],
    target_controls: usize,
    seed: u64,
) -> Result<Vec<u8>, SynthError> {
    let mut doc: Value = serde_json::from_slice(base)?;
    let controls = doc
        .get_mut("controls")
        .and_then(Value::as_object_mut)
        .ok_or(SynthError::NoControls)?;
    let templates: Vec<Value> = controls.values().cloned().collect();
    if templates.is_empty() {
        return Err(SynthError::NoControls);
    }
    let mut taken: HashSet<String> = HashSet::new();
    for t in &templates {
        collect_owned_ids(t, None, &mut taken);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0usize;
    while controls.len() < target_controls {
        let template = &templates[n % templates.len()];
        n += 1;
        let mut owned = HashSet::new();
        collect_owned_ids(template, None, &mut owned);
        // sorted, so the UUIDs drawn from the seeded RNG do not depend on hash order
        let mut owned: Vec<String> = owned.into_iter().collect();
        owned.sort_unstable();
        let mut map = HashMap::with_capacity(owned.len());
        for id in owned {
            map.insert(id, fresh_uuid(&mut rng, &mut taken));
        }
        let mut clone = remap(template, &map);
        if let Some(o) = clone.as_object_mut() {
            if let Some(Value::String(name)) = o.get_mut("name") {
                name.push_str(&format!(" #{n}"));
            }
        }
        let key = clone
            .get("uuidAction")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| fresh_uuid(&mut rng, &mut taken));
        controls.insert(key, clone);
    }
    Ok(serde_json::to_vec(&doc)?)
}

/// A structure file of at least `min_bytes` (compact JSON) scaled from [`BASE_STRUCTURE`]
/// with seed 0; the bundled file itself when it is already big enough.
pub fn structure_of_size(min_bytes: usize) -> Vec<u8> {
    if BASE_STRUCTURE.len() >= min_bytes {
        return BASE_STRUCTURE.to_vec();
    }
    let base_controls = serde_json::from_slice::<Value>(BASE_STRUCTURE)
        .ok()
        .and_then(|v| v.get("controls").and_then(Value::as_object).map(Map::len))
        .unwrap_or(1)
        .max(1);
    let mut target = base_controls;
    loop {
        let out = scale_structure(BASE_STRUCTURE, target, 0);
        if out.len() >= min_bytes {
            return out;
        }
        // grow in proportion to the missing bytes (+2 % margin), at least one control
        let want = (target as f64 * min_bytes as f64 / out.len().max(1) as f64 * 1.02) as usize;
        let next = want.max(target + 1);
        if next == target || out.is_empty() {
            return out;
        }
        target = next;
    }
}

/// The UUID part of an id (`<uuid>` or `<uuid>/<suffix>`), lowercased, when it is one.
fn uuid_part(id: &str) -> Option<(String, &str)> {
    let (head, tail) = match id.split_once('/') {
        Some((h, t)) => (h, Some(t)),
        None => (id, None),
    };
    let u = LoxUuid::parse(head).ok()?;
    Some((
        u.to_string(),
        tail.and_then(|_| id.get(head.len()..)).unwrap_or(""),
    ))
}

/// Ids a control owns: its `uuidAction`/key, sub-control keys/ids and state UUIDs.
fn collect_owned_ids(control: &Value, key: Option<&str>, out: &mut HashSet<String>) {
    let Some(o) = control.as_object() else { return };
    for id in [key, o.get("uuidAction").and_then(Value::as_str)]
        .into_iter()
        .flatten()
    {
        if let Some((u, _)) = uuid_part(id) {
            out.insert(u);
        }
    }
    if let Some(states) = o.get("states").and_then(Value::as_object) {
        for v in states.values() {
            let items: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for s in items.into_iter().filter_map(Value::as_str) {
                if let Some((u, _)) = uuid_part(s) {
                    out.insert(u);
                }
            }
        }
    }
    if let Some(subs) = o.get("subControls").and_then(Value::as_object) {
        for (k, sc) in subs {
            collect_owned_ids(sc, Some(k), out);
        }
    }
}

/// Deep copy with every string (and object key) whose UUID part is in `map` rewritten.
fn remap(v: &Value, map: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => Value::String(remap_str(s, map)),
        Value::Array(a) => Value::Array(a.iter().map(|x| remap(x, map)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (remap_str(k, map), remap(x, map)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn remap_str(s: &str, map: &HashMap<String, String>) -> String {
    match uuid_part(s) {
        Some((u, suffix)) => match map.get(&u) {
            Some(new) => format!("{new}{suffix}"),
            None => s.to_string(),
        },
        None => s.to_string(),
    }
}

fn fresh_uuid(rng: &mut StdRng, taken: &mut HashSet<String>) -> String {
    loop {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        let s = LoxUuid::from_wire(b).to_string();
        if taken.insert(s.clone()) {
            return s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loxone::structure::parse_structure;

    #[test]
    fn scaled_structure_is_valid_with_unique_fresh_uuids() {
        let base = parse_structure(BASE_STRUCTURE).unwrap();
        let out = scale_structure(BASE_STRUCTURE, 500, 42);
        let s = parse_structure(&out).unwrap();
        assert_eq!(s.controls.len(), 500);
        assert_eq!(s.rooms.len(), base.rooms.len());
        assert_eq!(s.skipped_state_refs, base.skipped_state_refs);
        // clones keep rooms that exist
        for c in &s.controls {
            if let Some(r) = &c.room {
                assert!(s.room_name(r).is_some(), "room {r} of {}", c.name);
            }
        }
        // uuidActions unique at every depth
        let all = s.all_controls();
        let ids: HashSet<&str> = all.iter().map(|c| c.uuid_action.as_str()).collect();
        assert_eq!(ids.len(), all.len());
        // sharing only as in the base (clones get fresh state UUIDs, consistently)
        let owners = s.state_owners();
        let base_owners = base.state_owners();
        assert!(owners.len() > base_owners.len() * 2);
        assert!(s.shared_state_uuid_count() >= base.shared_state_uuid_count());
        // deterministic
        assert_eq!(out, scale_structure(BASE_STRUCTURE, 500, 42));
        assert_ne!(out, scale_structure(BASE_STRUCTURE, 500, 43));
    }

    #[test]
    fn suffixed_sub_control_ids_follow_their_parent() {
        let base = br#"{"controls":{"0b734138-037d-034e-ffff403fb0c34b9e":{"name":"LC","type":"LightControllerV2",
            "uuidAction":"0b734138-037d-034e-ffff403fb0c34b9e","room":"0b734138-0000-0000-ffff403fb0c34b9e",
            "states":{"a":"0b734138-037d-0350-ffff403fb0c34b9e","self":"0b734138-037d-034e-ffff403fb0c34b9e"},
            "subControls":{"0b734138-037d-034e-ffff403fb0c34b9e/AI1":{"name":"c","type":"ColorPickerV2",
            "uuidAction":"0b734138-037d-034e-ffff403fb0c34b9e/AI1","states":{"color":"0b734138-037d-0351-ffff403fb0c34b9e"}}}}}}"#;
        let s = parse_structure(&scale_structure(base, 3, 1)).unwrap();
        assert_eq!(s.controls.len(), 3);
        for c in &s.controls {
            let sub = &c.sub_controls[0];
            assert_eq!(sub.uuid_action, format!("{}/AI1", c.uuid_action));
            let own = LoxUuid::parse(&c.uuid_action).unwrap();
            assert_eq!(c.states[1].uuids[0], own, "self-reference kept consistent");
            assert_eq!(
                c.room.as_deref(),
                Some("0b734138-0000-0000-ffff403fb0c34b9e")
            );
        }
        assert_eq!(s.state_owners().len(), 3 * 3);
    }

    #[test]
    fn bad_base_is_returned_unchanged() {
        assert_eq!(scale_structure(b"nope", 10, 0), b"nope");
        assert!(matches!(
            try_scale_structure(br#"{"controls":{}}"#, 10, 0),
            Err(SynthError::NoControls)
        ));
    }

    #[test]
    fn structure_of_size_reaches_the_size() {
        let out = structure_of_size(1_000_000);
        assert!(out.len() >= 1_000_000);
        assert!(out.len() < 1_300_000, "{}", out.len());
        assert!(parse_structure(&out).unwrap().controls.len() > 210);
        assert_eq!(structure_of_size(10), BASE_STRUCTURE);
    }
}
