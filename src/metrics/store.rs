//! The state store: every Miniserver's control-state values, addressed by slot, read as
//! metric families through the registry.
//!
//! One [`MiniserverState`] per configured Miniserver holds a [`Table`] built from its
//! structure file: one slot per (control or sub-control, state name, state UUID), with the
//! series' labels rendered once, and a UUID → slots index, so a state UUID shared by
//! several controls feeds all of them (the original kept only the last owner). Values live
//! beside the table under one mutex: a client applies an event table under that lock, and
//! a scrape or an OTLP export copies a view under the same lock, so no family is ever
//! split. A table longer than 16 384 entries (`ENTRIES_PER_LOCK_HOLD`; a start-up burst
//! of a huge installation) hands the lock to a waiting scrape between chunks of that size,
//! so such a scrape may see part of the table applied: a scrape is not held back for its
//! whole length.
//!
//! Series (original-exporter.md §3): `loxone_control_value` for numeric states that have
//! received a value, `loxone_control_info` for text-only controls when
//! `include_text_values` is set; labels miniserver, name, room, category, type,
//! subcontrol (= the state name) and uuid (the control's `uuidAction`, new: it makes every
//! label set unique). States never received are not exported; values are kept while
//! disconnected. Filters apply when a structure is loaded.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::filter::{ControlFacts, Filter, FilterError};
use super::model::{Family, LabelGroup, LabelSet, LabelValue, MetricKind, Sample};
use super::registry::Collector;
use crate::config::FilterConfig;
use crate::loxone::structure::{Control, Structure};
use crate::loxone::uuid::LoxUuid;

/// Value events applied under one hold of a Miniserver's lock before a waiting scrape gets
/// its turn (a few hundred µs of work).
const ENTRIES_PER_LOCK_HOLD: u32 = 16 * 1024;

/// Control types that carry text only (the original's list).
const TEXT_ONLY_TYPES: [&str; 3] = ["TextInput", "Webpage", "TextState"];
/// State names that carry text; a control whose states are all of these is text-only.
const TEXT_STATE_NAMES: [&str; 4] = ["textAndIcon", "text", "textColor", "textInput"];

/// Kinds of problems counted per Miniserver in `loxone_exporter_miniserver_errors_total`.
pub const ERROR_KINDS: [&str; 6] = [
    "protocol",
    "auth",
    "connect",
    "timeout",
    "structure",
    "closed",
];

/// Identity of a Miniserver for `loxone_miniserver_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MiniserverInfo {
    /// Serial number.
    pub serial: String,
    /// Firmware version.
    pub firmware: String,
    /// Hardware type (e.g. `Gen2`).
    pub ms_type: String,
    /// Miniserver name from Loxone Config.
    pub name: String,
    /// Project name.
    pub project: String,
}

/// What `/healthz` and the landing page show for one Miniserver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MiniserverHealth {
    /// Configured name.
    pub name: String,
    /// WebSocket session established and authenticated.
    pub connected: bool,
    /// Unix seconds of the last value event, 0.0 if none yet.
    pub last_update: f64,
    /// Controls (all depths) in the loaded structure.
    pub controls_discovered: usize,
    /// Controls that produce at least one series after filtering.
    pub controls_exported: usize,
    /// Last problem, sanitised; `None` while healthy.
    pub last_error: Option<String>,
}

/// One series slot.
#[derive(Debug)]
struct Slot {
    labels: Arc<LabelSet>,
    /// Index of the owning control in the table (for `controls_exported`).
    control: u32,
    /// Passes the filters and belongs to a non-text-only control.
    numeric_export: bool,
    /// Belongs to an exported text-only control (info series when enabled).
    text_export: bool,
}

/// Per-structure part of a Miniserver's state: slots, index, counts.
#[derive(Debug, Default)]
pub struct Table {
    version: Option<String>,
    slots: Vec<Slot>,
    /// UUID → its slots: `(slot, 1)` for a UUID owned by one slot (nearly all), else
    /// `(start, len)`, a range into `targets`. The single slot stored inline saves the
    /// event path one memory access. FxHash: one lookup per event, and the keys come from
    /// the Miniserver's own structure file (no attacker-chosen flood).
    index: FxHashMap<LoxUuid, (u32, u32)>,
    /// Slot lists of UUIDs shared by several slots.
    targets: Vec<u32>,
    controls_discovered: usize,
    /// Controls that passed the filters, by index; text-only ones flagged.
    exported_text_only: Vec<u32>,
    control_count: usize,
}

impl Table {
    fn slots_for(&self, uuid: &LoxUuid) -> &[u32] {
        match self.index.get(uuid) {
            Some((slot, 1)) => std::slice::from_ref(slot),
            Some(&(start, len)) => self
                .targets
                .get(start as usize..(start + len) as usize)
                .unwrap_or(&[]),
            None => &[],
        }
    }

    /// Number of slots (one per control × state × UUID).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }
}

/// Builds a table from a structure. Pure: no locks, no clocks.
pub fn build_table(
    miniserver: &str,
    structure: &Structure,
    filter: &Filter,
    include_text_values: bool,
) -> Table {
    struct Ctx<'a> {
        miniserver: Arc<str>,
        structure: &'a Structure,
        filter: &'a Filter,
        include_text: bool,
        table: Table,
        by_uuid: HashMap<LoxUuid, Vec<u32>>,
        seen: HashSet<Arc<LabelSet>>,
        interned: HashMap<String, Arc<str>>,
        interned_values: HashMap<String, Arc<LabelValue>>,
        keys: [Arc<str>; 7],
    }
    impl Ctx<'_> {
        fn intern(&mut self, s: &str) -> Arc<str> {
            if let Some(a) = self.interned.get(s) {
                return a.clone();
            }
            let a: Arc<str> = Arc::from(s);
            self.interned.insert(s.to_string(), a.clone());
            a
        }

        fn intern_value(&mut self, s: &str) -> Arc<LabelValue> {
            if let Some(a) = self.interned_values.get(s) {
                return a.clone();
            }
            let a = LabelValue::new(s);
            self.interned_values.insert(s.to_string(), a.clone());
            a
        }

        /// One slot per (state, UUID) of `c`; the control's labels are shared by its
        /// slots, each adds its `subcontrol`.
        fn add_slots(
            &mut self,
            c: &Control,
            control_idx: u32,
            room_name: Option<String>,
            cat_name: Option<String>,
            exported: bool,
            text_only: bool,
        ) {
            let name = self.intern(&c.name);
            let room_l = self.intern(room_name.as_deref().unwrap_or(""));
            let cat_l = self.intern(cat_name.as_deref().unwrap_or(""));
            let type_l = self.intern(&c.control_type);
            let uuid_l = self.intern(&c.uuid_action);
            let [k_ms, k_name, k_room, k_cat, k_type, k_sub, k_uuid] = self.keys.clone();
            let group = LabelGroup::new(
                [
                    (k_ms, self.miniserver.clone()),
                    (k_name, name),
                    (k_room, room_l),
                    (k_cat, cat_l),
                    (k_type, type_l),
                ],
                k_sub,
                [(k_uuid, uuid_l)],
            );
            for st in &c.states {
                for (i, uuid) in st.uuids.iter().enumerate() {
                    let state_l = if st.uuids.len() > 1 {
                        self.intern_value(&format!("{}[{i}]", st.name))
                    } else {
                        self.intern_value(&st.name)
                    };
                    let labels = LabelSet::in_group(&group, state_l);
                    let duplicate = !self.seen.insert(labels.clone());
                    let slot_idx = self.table.slots.len() as u32;
                    self.table.slots.push(Slot {
                        labels,
                        control: control_idx,
                        numeric_export: exported && !text_only && !duplicate,
                        text_export: exported && text_only && !duplicate,
                    });
                    self.by_uuid.entry(*uuid).or_default().push(slot_idx);
                }
            }
        }

        /// `parent`: the room and category a sub-control inherits (`None` for a top-level
        /// control).
        fn visit(
            &mut self,
            c: &Control,
            parent: Option<(Option<&str>, Option<&str>)>,
            parent_ok: bool,
        ) {
            let control_idx = self.table.control_count as u32;
            self.table.control_count += 1;
            // a sub-control takes its parent's room and category, its own ignored, as in the
            // Python exporter: its series keep the same labels (an Energy Flow Monitor's
            // meters name other rooms of their own)
            let (room, cat) = parent.unwrap_or((c.room.as_deref(), c.category.as_deref()));
            let room_name = room
                .and_then(|r| self.structure.room_name(r))
                .map(str::to_string);
            let cat_name = cat
                .and_then(|k| self.structure.category_name(k))
                .map(str::to_string);
            let text_only = TEXT_ONLY_TYPES.contains(&c.control_type.as_str())
                || (!c.states.is_empty()
                    && c.states
                        .iter()
                        .all(|s| TEXT_STATE_NAMES.contains(&s.name.as_str())));
            let allowed = parent_ok
                && self.filter.allows(ControlFacts {
                    name: &c.name,
                    control_type: &c.control_type,
                    room: room_name.as_deref(),
                    category: cat_name.as_deref(),
                });
            // a text-only control without include_text_values is skipped with its children
            let exported = allowed && (!text_only || self.include_text);
            if exported && text_only {
                self.table.exported_text_only.push(control_idx);
            }
            if !c.states.is_empty() {
                self.add_slots(c, control_idx, room_name, cat_name, exported, text_only);
            }
            let child_ok = allowed && !text_only;
            for sc in &c.sub_controls {
                self.visit(sc, Some((room, cat)), child_ok);
            }
        }
    }

    let mut ctx = Ctx {
        miniserver: Arc::from(miniserver),
        structure,
        filter,
        include_text: include_text_values,
        table: Table {
            version: Some(structure.last_modified.clone()),
            ..Table::default()
        },
        by_uuid: HashMap::new(),
        seen: HashSet::new(),
        interned: HashMap::new(),
        interned_values: HashMap::new(),
        keys: [
            "miniserver",
            "name",
            "room",
            "category",
            "type",
            "subcontrol",
            "uuid",
        ]
        .map(Arc::from),
    };
    for c in &structure.controls {
        ctx.visit(c, None, true);
    }
    let mut table = ctx.table;
    // the table lives until the next structure load: no spare capacity
    table.slots.shrink_to_fit();
    table.exported_text_only.shrink_to_fit();
    table.controls_discovered = table.control_count;
    table.index.reserve(ctx.by_uuid.len());
    table
        .targets
        .reserve_exact(ctx.by_uuid.values().map(Vec::len).filter(|&n| n > 1).sum());
    for (uuid, slots) in ctx.by_uuid {
        if let [slot] = slots[..] {
            table.index.insert(uuid, (slot, 1));
        } else {
            let start = table.targets.len() as u32;
            table.targets.extend_from_slice(&slots);
            table.index.insert(uuid, (start, slots.len() as u32));
        }
    }
    table
}

/// Values beside their table, swapped together when a structure is (re)loaded.
#[derive(Debug, Default)]
struct Live {
    table: Arc<Table>,
    /// Numeric value per slot; `None` until the first value event.
    values: Vec<Option<f64>>,
    /// Text value per slot; `None` until the first text event. Empty without
    /// `include_text_values`.
    texts: Vec<Option<Arc<str>>>,
    /// Unix seconds of the last value table, 0.0 before.
    last_update: f64,
}

#[derive(Debug, Default)]
struct Status {
    connected: bool,
    last_error: Option<String>,
    info: Option<MiniserverInfo>,
}

/// One Miniserver's table, values and status. Written by its client task, read by scrapes.
#[derive(Debug)]
pub struct MiniserverState {
    name: Arc<str>,
    name_labels: Arc<LabelSet>,
    filter: Arc<Filter>,
    include_text_values: bool,
    live: Mutex<Live>,
    status: Mutex<Status>,
    errors: [AtomicU64; ERROR_KINDS.len()],
    /// Logins that failed in a row; 0 once one succeeds.
    login_failures: AtomicU32,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl MiniserverState {
    fn new(name: &str, filter: Arc<Filter>, include_text_values: bool) -> Self {
        MiniserverState {
            name: Arc::from(name),
            name_labels: LabelSet::new([("miniserver", name)]),
            filter,
            include_text_values,
            live: Mutex::new(Live::default()),
            status: Mutex::new(Status::default()),
            errors: Default::default(),
            login_failures: AtomicU32::new(0),
        }
    }

    /// The configured name (the `miniserver` label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replaces the table from a (new) structure. Values of state UUIDs that still exist
    /// are kept, so a structure change does not blank the series until the next event.
    pub fn load_structure(&self, structure: &Structure) {
        let table = Arc::new(build_table(
            &self.name,
            structure,
            &self.filter,
            self.include_text_values,
        ));
        let mut live = self.live.lock();
        let old = std::mem::take(&mut *live);
        let mut values = vec![None; table.slots.len()];
        // text values are only ever exported with include_text_values: without it no
        // per-slot text is kept at all (16 bytes per series)
        let mut texts = if self.include_text_values {
            vec![None; table.slots.len()]
        } else {
            Vec::new()
        };
        for uuid in old.table.index.keys() {
            let Some(&first) = old.table.slots_for(uuid).first() else {
                continue;
            };
            let v = old.values.get(first as usize).copied().flatten();
            let t = old.texts.get(first as usize).cloned().flatten();
            if v.is_none() && t.is_none() {
                continue;
            }
            for &slot in table.slots_for(uuid) {
                if let Some(x) = values.get_mut(slot as usize) {
                    *x = v;
                }
                if let Some(x) = texts.get_mut(slot as usize) {
                    *x = t.clone();
                }
            }
        }
        *live = Live {
            table,
            values,
            texts,
            last_update: old.last_update,
        };
    }

    /// `lastModified` of the loaded structure, `None` before the first load.
    pub fn structure_version(&self) -> Option<String> {
        self.live.lock().table.version.clone()
    }

    /// Applies one value-event table; returns how many slots were updated. Sets the last
    /// update time when the table had at least one entry.
    pub fn apply_values(&self, events: impl IntoIterator<Item = (LoxUuid, f64)>) -> usize {
        let mut guard = self.live.lock();
        let mut updated = 0;
        let mut any = false;
        let mut until_bump = ENTRIES_PER_LOCK_HOLD;
        for (uuid, value) in events {
            any = true;
            // a huge table must not hold a scrape back for its whole length: hand the lock
            // to a waiting scrape now and then (free when nobody waits)
            until_bump -= 1;
            if until_bump == 0 {
                until_bump = ENTRIES_PER_LOCK_HOLD;
                parking_lot::MutexGuard::bump(&mut guard);
            }
            let live = &mut *guard;
            for &slot in live.table.slots_for(&uuid) {
                if let Some(v) = live.values.get_mut(slot as usize) {
                    *v = Some(value);
                    updated += 1;
                }
            }
        }
        if any {
            guard.last_update = unix_now();
        }
        updated
    }

    /// Applies one text-event table; returns how many slots were updated.
    pub fn apply_texts<'a>(&self, events: impl IntoIterator<Item = (LoxUuid, &'a str)>) -> usize {
        let mut live = self.live.lock();
        let live = &mut *live;
        let mut updated = 0;
        // without include_text_values no text is kept: nothing to look up or allocate
        if live.texts.is_empty() {
            return 0;
        }
        for (uuid, text) in events {
            let slots = live.table.slots_for(&uuid);
            if slots.is_empty() {
                continue;
            }
            let text: Arc<str> = Arc::from(text);
            for &slot in slots {
                if let Some(t) = live.texts.get_mut(slot as usize) {
                    *t = Some(text.clone());
                    updated += 1;
                }
            }
        }
        updated
    }

    /// Marks the session up or down.
    pub fn set_connected(&self, connected: bool) {
        self.status.lock().connected = connected;
    }

    /// Sets the sanitised last error (`None` clears it).
    pub fn set_last_error(&self, error: Option<String>) {
        self.status.lock().last_error = error;
    }

    /// Sets the identity shown by `loxone_miniserver_info`.
    pub fn set_info(&self, info: MiniserverInfo) {
        self.status.lock().info = Some(info);
    }

    /// Counts one problem of `kind` (one of [`ERROR_KINDS`]; unknown kinds count as
    /// `protocol`).
    pub fn record_error(&self, kind: &'static str) {
        let i = ERROR_KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        if let Some(c) = self.errors.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A login attempt failed (refused credentials, user disabled or blocked): one more
    /// in a row for `loxone_exporter_consecutive_login_failures`.
    pub fn login_failed(&self) {
        // one attempt every 5 minutes at most after the third: u32 does not wrap
        self.login_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A login succeeded: the run of failed logins is over.
    pub fn logged_in(&self) {
        self.login_failures.store(0, Ordering::Relaxed);
    }

    /// Logins that failed in a row since the last one that worked (or since start).
    pub fn consecutive_login_failures(&self) -> u32 {
        self.login_failures.load(Ordering::Relaxed)
    }

    /// Errors counted so far for `kind`.
    pub fn error_count(&self, kind: &str) -> u64 {
        ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.errors.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Identity set by the client, if any.
    pub fn info(&self) -> Option<MiniserverInfo> {
        self.status.lock().info.clone()
    }

    /// Status for `/healthz`; counts agree with the metrics.
    pub fn health(&self) -> MiniserverHealth {
        let (discovered, exported, last_update) = {
            let live = self.live.lock();
            (
                live.table.controls_discovered,
                exported_controls(&live),
                live.last_update,
            )
        };
        let status = self.status.lock();
        MiniserverHealth {
            name: self.name.to_string(),
            connected: status.connected,
            last_update,
            controls_discovered: discovered,
            controls_exported: exported,
            last_error: status.last_error.clone(),
        }
    }
}

/// Controls with at least one numeric series that has a value, plus exported text-only
/// controls (the original's definition, now the same for `/metrics` and `/healthz`).
fn exported_controls(live: &Live) -> usize {
    let t = &live.table;
    let mut seen = vec![false; t.control_count];
    let mut n = 0;
    for (slot, value) in t.slots.iter().zip(&live.values) {
        if slot.numeric_export && value.is_some() {
            if let Some(s) = seen.get_mut(slot.control as usize) {
                if !*s {
                    *s = true;
                    n += 1;
                }
            }
        }
    }
    for &c in &t.exported_text_only {
        if let Some(s) = seen.get_mut(c as usize) {
            if !*s {
                *s = true;
                n += 1;
            }
        }
    }
    n
}

/// All Miniservers' state; the registry's collector for control values and per-Miniserver
/// health.
#[derive(Debug)]
pub struct StateStore {
    filter: Arc<Filter>,
    include_text_values: bool,
    miniservers: RwLock<Vec<Arc<MiniserverState>>>,
}

impl StateStore {
    /// A store applying these filters.
    pub fn new(
        filters: &FilterConfig,
        include_text_values: bool,
    ) -> Result<Arc<Self>, FilterError> {
        Ok(Arc::new(StateStore {
            filter: Arc::new(Filter::new(filters)?),
            include_text_values,
            miniservers: RwLock::new(Vec::new()),
        }))
    }

    /// Registers a Miniserver by its configured name.
    pub fn add_miniserver(self: &Arc<Self>, name: &str) -> Arc<MiniserverState> {
        let ms = Arc::new(MiniserverState::new(
            name,
            self.filter.clone(),
            self.include_text_values,
        ));
        self.miniservers.write().push(ms.clone());
        ms
    }

    /// Registered Miniservers in configuration order.
    pub fn miniservers(&self) -> Vec<Arc<MiniserverState>> {
        self.miniservers.read().clone()
    }

    /// Health of every Miniserver.
    pub fn health(&self) -> Vec<MiniserverHealth> {
        self.miniservers().iter().map(|m| m.health()).collect()
    }
}

impl Collector for StateStore {
    fn collect(&self, out: &mut Vec<Family>) {
        let miniservers = self.miniservers();
        let mut values = Family::new(
            "loxone_control_value",
            "Current numeric value of a control state",
            MetricKind::Gauge,
        );
        let mut infos = Family::new(
            "loxone_control_info",
            "Text value of a control state",
            MetricKind::Info,
        );
        let mut connected = Family::new(
            "loxone_exporter_connected",
            "WebSocket connection status per miniserver",
            MetricKind::Gauge,
        );
        let mut last_update = Family::new(
            "loxone_exporter_last_update_timestamp_seconds",
            "Unix timestamp of last received value event",
            MetricKind::Gauge,
        );
        let mut discovered = Family::new(
            "loxone_exporter_controls_discovered",
            "Controls found in structure file",
            MetricKind::Gauge,
        );
        let mut exported = Family::new(
            "loxone_exporter_controls_exported",
            "Controls exported after filtering",
            MetricKind::Gauge,
        );
        let mut info = Family::new(
            "loxone_miniserver_info",
            "Miniserver identity from its structure file and API (value is always 1)",
            MetricKind::Info,
        );
        let mut errors = Family::new(
            "loxone_exporter_miniserver_errors_total",
            "Problems talking to a Miniserver, by kind",
            MetricKind::Counter,
        );
        let mut login_failures = Family::new(
            "loxone_exporter_consecutive_login_failures",
            "Logins refused by a Miniserver in a row (wrong credentials, user disabled or blocked); 0 after a login that worked",
            MetricKind::Gauge,
        );
        for ms in &miniservers {
            let (n_discovered, n_exported, updated) = {
                let live = ms.live.lock();
                let t = &live.table;
                values.samples.reserve(t.slots.len());
                for (slot, v) in t.slots.iter().zip(&live.values) {
                    if let (true, Some(v)) = (slot.numeric_export, v) {
                        values.samples.push(Sample::number(slot.labels.clone(), *v));
                    }
                }
                if self.include_text_values {
                    for (slot, text) in t.slots.iter().zip(&live.texts) {
                        if let (true, Some(text)) = (slot.text_export, text) {
                            infos.samples.push(Sample::number(
                                slot.labels.with_label("value", text.clone()),
                                1.0,
                            ));
                        }
                    }
                }
                (
                    t.controls_discovered,
                    exported_controls(&live),
                    live.last_update,
                )
            };
            let status = ms.status.lock();
            let l = ms.name_labels.clone();
            connected.samples.push(Sample::number(
                l.clone(),
                if status.connected { 1.0 } else { 0.0 },
            ));
            last_update.samples.push(Sample::number(l.clone(), updated));
            discovered
                .samples
                .push(Sample::number(l.clone(), n_discovered as f64));
            exported
                .samples
                .push(Sample::number(l.clone(), n_exported as f64));
            login_failures.samples.push(Sample::number(
                l.clone(),
                f64::from(ms.consecutive_login_failures()),
            ));
            if let Some(i) = &status.info {
                info.samples.push(Sample::number(
                    LabelSet::new([
                        ("miniserver", ms.name()),
                        ("serial", i.serial.as_str()),
                        ("firmware", i.firmware.as_str()),
                        ("type", i.ms_type.as_str()),
                        ("name", i.name.as_str()),
                        ("project", i.project.as_str()),
                    ]),
                    1.0,
                ));
            }
            for (kind, count) in ERROR_KINDS.iter().zip(&ms.errors) {
                errors.samples.push(Sample::number(
                    LabelSet::new([("miniserver", ms.name()), ("kind", kind)]),
                    count.load(Ordering::Relaxed) as f64,
                ));
            }
        }
        out.push(values);
        if self.include_text_values {
            out.push(infos);
        }
        out.extend([
            connected,
            last_update,
            discovered,
            exported,
            info,
            errors,
            login_failures,
        ]);
    }
}
