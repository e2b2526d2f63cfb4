//! Plausible value walks for the simulator's value states (issue 3 "value generator").
//!
//! Pure and deterministic: a seeded SplitMix64 generator, no clock, no I/O. Each state gets a
//! [`ValueClass`] from its control type and state name (temperatures drift slowly around a
//! base, switches toggle, meters count up monotonically, percentages stay bounded, digital
//! states are 0/1). [`Generator::next_batch`] steps randomly chosen states and appends the new
//! values to a caller-owned buffer, so one batch can carry any number of entries (the
//! simulator sends one value table per tick; a state may appear several times in one huge
//! benchmark batch, the last entry wins as on the wire).
//!
//! Does not encode tables or send anything; see `session.rs` and the protocol `events` module.

use std::collections::HashMap;

use crate::loxone::uuid::LoxUuid;

/// How a value state moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueClass {
    /// °C, slow mean-reverting drift around a base (18–24 indoor).
    Temperature,
    /// Relative humidity 0–100 %, slow drift.
    Humidity,
    /// CO₂ ppm, 400–2000.
    Co2,
    /// A position or level in 0.0–1.0 (blinds, gates, windows).
    Fraction,
    /// A percentage 0–100 (dimmers, state of charge).
    Percent,
    /// 0/1, toggles on every step.
    Digital,
    /// Meter totals: monotonically increasing.
    Counter,
    /// Power in kW, fluctuating, may be negative (grid, storage).
    Power,
    /// Anything else: bounded random walk.
    Generic,
}

/// Classifies a value state by its control type and state name.
pub fn classify(control_type: &str, state_name: &str) -> ValueClass {
    let name = state_name.to_ascii_lowercase();
    let ctype = control_type.to_ascii_lowercase();
    const DIGITAL: &[&str] = &[
        "active",
        "up",
        "down",
        "lockedon",
        "locked",
        "openwindow",
        "islocked",
        "safetyactive",
        "autoactive",
        "autoallowed",
        "armed",
        "presence",
        "needsactivation",
        "resetactive",
        "preventopen",
        "preventclose",
        "testalarm",
        "acousticalarm",
        "hasinternet",
        "overdue",
        "error",
    ];
    if name.contains("temp") && !name.contains("offset") && !name.contains("tolerance") {
        return ValueClass::Temperature;
    }
    if name.contains("humidity") {
        return ValueClass::Humidity;
    }
    if name == "co2" {
        return ValueClass::Co2;
    }
    if DIGITAL.contains(&name.as_str()) {
        return ValueClass::Digital;
    }
    if ctype == "meter" || ctype == "efm" || ctype.starts_with("energymanager") {
        if name.starts_with("total") || name == "storage" {
            return ValueClass::Counter;
        }
        if name == "ssoc" {
            return ValueClass::Percent;
        }
        if name.starts_with("actual") || name.ends_with("pwr") || name == "currentpower" {
            return ValueClass::Power;
        }
    }
    if ctype == "hourcounter" && name == "total" {
        return ValueClass::Counter;
    }
    if name.contains("position") || name == "shadeposition" || name == "targetpositionlamelle" {
        if ctype == "dimmer" || ctype == "edimmer" {
            return ValueClass::Percent;
        }
        return ValueClass::Fraction;
    }
    if ctype.contains("dimmer") && name == "value" {
        return ValueClass::Percent;
    }
    if ctype == "infoonlydigital" || ctype == "switch" || ctype == "pushbutton" {
        return ValueClass::Digital;
    }
    ValueClass::Generic
}

/// Small, fast, seedable PRNG (SplitMix64); good enough for plausible noise.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f64 {
        self.unit() * 2.0 - 1.0
    }

    /// Uniform index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[derive(Debug, Clone)]
struct Walk {
    uuid: LoxUuid,
    class: ValueClass,
    base: f64,
    value: f64,
}

/// The value states of one simulated Miniserver and their current values.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: SplitMix64,
    walks: Vec<Walk>,
    index: HashMap<LoxUuid, usize>,
}

impl Generator {
    /// Builds walks with plausible initial values. Duplicate UUIDs keep the first class.
    pub fn new(seed: u64, states: impl IntoIterator<Item = (LoxUuid, ValueClass)>) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut walks = Vec::new();
        let mut index = HashMap::new();
        for (uuid, class) in states {
            if index.contains_key(&uuid) {
                continue;
            }
            let value = initial_value(class, &mut rng);
            index.insert(uuid, walks.len());
            walks.push(Walk {
                uuid,
                class,
                base: value,
                value,
            });
        }
        Generator { rng, walks, index }
    }

    /// Number of value states.
    pub fn len(&self) -> usize {
        self.walks.len()
    }

    /// True when there are no value states.
    pub fn is_empty(&self) -> bool {
        self.walks.is_empty()
    }

    /// Current value of a state.
    pub fn value(&self, uuid: &LoxUuid) -> Option<f64> {
        self.index.get(uuid).map(|&i| self.walks[i].value)
    }

    /// Class of a state.
    pub fn class(&self, uuid: &LoxUuid) -> Option<ValueClass> {
        self.index.get(uuid).map(|&i| self.walks[i].class)
    }

    /// All states with their current values, in structure order.
    pub fn snapshot(&self) -> impl Iterator<Item = (LoxUuid, f64)> + '_ {
        self.walks.iter().map(|w| (w.uuid, w.value))
    }

    /// Overrides a value (commands, control API). Returns false for an unknown UUID and for
    /// a value that is not finite (NaN or ±∞; callers refuse those first). Counters keep
    /// counting up from the new value.
    pub fn set(&mut self, uuid: &LoxUuid, value: f64) -> bool {
        if !value.is_finite() {
            return false;
        }
        match self.index.get(uuid) {
            Some(&i) => {
                let w = &mut self.walks[i];
                w.value = value;
                if w.class != ValueClass::Counter {
                    w.base = value;
                }
                true
            }
            None => false,
        }
    }

    /// Steps `n` randomly chosen states and appends `(uuid, new value)` to `out`.
    pub fn next_batch(&mut self, n: usize, out: &mut Vec<(LoxUuid, f64)>) {
        if self.walks.is_empty() {
            return;
        }
        out.reserve(n);
        for _ in 0..n {
            let i = self.rng.below(self.walks.len());
            let w = &mut self.walks[i];
            w.value = step(w.class, w.base, w.value, &mut self.rng);
            out.push((w.uuid, w.value));
        }
    }
}

fn initial_value(class: ValueClass, rng: &mut SplitMix64) -> f64 {
    let r = rng.unit();
    match class {
        ValueClass::Temperature => round1(18.0 + 6.0 * r),
        ValueClass::Humidity => round1(35.0 + 25.0 * r),
        ValueClass::Co2 => (450.0 + 400.0 * r).round(),
        ValueClass::Fraction => round2(r),
        ValueClass::Percent => (100.0 * r).round(),
        ValueClass::Digital => (r >= 0.5) as u8 as f64,
        ValueClass::Counter => round3(1000.0 + 20000.0 * r),
        ValueClass::Power => round3(-2.0 + 8.0 * r),
        ValueClass::Generic => round1(100.0 * r),
    }
}

/// One step of a walk. Never panics and never leaves the finite range, whatever finite
/// `base` and `v` a command set (a non-finite one is treated as 0).
fn step(class: ValueClass, base: f64, v: f64, rng: &mut SplitMix64) -> f64 {
    let v = if v.is_finite() { v } else { 0.0 };
    let base = if base.is_finite() { base } else { v };
    let next = match class {
        // drift of at most 0.1 per step, pulled back towards the base
        ValueClass::Temperature => {
            round2((v + 0.1 * rng.signed() + 0.05 * (base - v)).clamp(-40.0, 60.0))
        }
        ValueClass::Humidity => round1((v + 0.5 * rng.signed()).clamp(0.0, 100.0)),
        ValueClass::Co2 => (v + 20.0 * rng.signed() + 0.05 * (base - v))
            .clamp(350.0, 5000.0)
            .round(),
        ValueClass::Fraction => round2((v + 0.1 * rng.signed()).clamp(0.0, 1.0)),
        ValueClass::Percent => (v + 5.0 * rng.signed()).clamp(0.0, 100.0).round(),
        ValueClass::Digital => {
            if v >= 0.5 {
                0.0
            } else {
                1.0
            }
        }
        ValueClass::Counter => round3(v + 0.01 * rng.unit() + 0.001),
        ValueClass::Power => round3((v + 0.2 * rng.signed()).clamp(-20.0, 50.0)),
        // finite bounds with lo <= hi, so `clamp` cannot panic
        ValueClass::Generic => round2((v + rng.signed()).clamp(base - 50.0, base + 50.0)),
    };
    if next.is_finite() {
        next
    } else {
        v
    }
}

/// `x` rounded to `1/scale`; `x` itself where scaling would overflow (|x| near `f64::MAX`).
fn round_to(x: f64, scale: f64) -> f64 {
    let r = (x * scale).round() / scale;
    if r.is_finite() {
        r
    } else {
        x
    }
}
fn round1(x: f64) -> f64 {
    round_to(x, 10.0)
}
fn round2(x: f64) -> f64 {
    round_to(x, 100.0)
}
fn round3(x: f64) -> f64 {
    round_to(x, 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u8) -> LoxUuid {
        let mut b = [0u8; 16];
        b[0] = n;
        LoxUuid::from_wire(b)
    }

    fn run(class: ValueClass, steps: usize) -> Vec<f64> {
        let mut g = Generator::new(7, [(uuid(1), class)]);
        let mut out = Vec::new();
        g.next_batch(steps, &mut out);
        out.into_iter().map(|(_, v)| v).collect()
    }

    #[test]
    fn classification_by_type_and_name() {
        assert_eq!(
            classify("IRoomControllerV2", "tempActual"),
            ValueClass::Temperature
        );
        assert_eq!(classify("Meter", "total"), ValueClass::Counter);
        assert_eq!(classify("Meter", "actual"), ValueClass::Power);
        assert_eq!(classify("Switch", "active"), ValueClass::Digital);
        assert_eq!(classify("Jalousie", "position"), ValueClass::Fraction);
        assert_eq!(classify("Dimmer", "position"), ValueClass::Percent);
        assert_eq!(classify("EnergyManager2", "Ssoc"), ValueClass::Percent);
        assert_eq!(classify("InfoOnlyAnalog", "value"), ValueClass::Generic);
    }

    #[test]
    fn counters_are_monotonic() {
        let v = run(ValueClass::Counter, 10_000);
        assert!(v.windows(2).all(|w| w[1] > w[0]), "counter went down");
    }

    #[test]
    fn temperatures_drift_slowly_and_stay_plausible() {
        let v = run(ValueClass::Temperature, 10_000);
        assert!(v.windows(2).all(|w| (w[1] - w[0]).abs() <= 0.5));
        assert!(v.iter().all(|t| (5.0..=35.0).contains(t)), "{v:?}");
        let distinct: std::collections::BTreeSet<u64> = v.iter().map(|x| x.to_bits()).collect();
        assert!(distinct.len() > 10, "temperature does not move");
    }

    #[test]
    fn digital_toggles_and_bounded_classes_stay_bounded() {
        let d = run(ValueClass::Digital, 100);
        assert!(d.iter().all(|x| *x == 0.0 || *x == 1.0));
        assert!(d.windows(2).all(|w| w[0] != w[1]));
        assert!(run(ValueClass::Fraction, 5000)
            .iter()
            .all(|x| (0.0..=1.0).contains(x)));
        assert!(run(ValueClass::Percent, 5000)
            .iter()
            .all(|x| (0.0..=100.0).contains(x)));
        assert!(run(ValueClass::Humidity, 5000)
            .iter()
            .all(|x| (0.0..=100.0).contains(x)));
    }

    #[test]
    fn seeded_runs_are_reproducible_and_seeds_differ() {
        let states: Vec<_> = (0..50).map(|i| (uuid(i), ValueClass::Generic)).collect();
        let mut a = Generator::new(1, states.clone());
        let mut b = Generator::new(1, states.clone());
        let mut c = Generator::new(2, states);
        let (mut oa, mut ob, mut oc) = (Vec::new(), Vec::new(), Vec::new());
        a.next_batch(1000, &mut oa);
        b.next_batch(1000, &mut ob);
        c.next_batch(1000, &mut oc);
        assert_eq!(oa, ob);
        assert_ne!(oa, oc);
    }

    #[test]
    fn set_overrides_and_unknown_is_rejected() {
        let mut g = Generator::new(1, [(uuid(1), ValueClass::Generic)]);
        assert!(g.set(&uuid(1), 42.0));
        assert_eq!(g.value(&uuid(1)), Some(42.0));
        assert!(!g.set(&uuid(2), 1.0));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn duplicates_keep_one_walk() {
        let g = Generator::new(
            1,
            [
                (uuid(1), ValueClass::Digital),
                (uuid(1), ValueClass::Temperature),
            ],
        );
        assert_eq!(g.len(), 1);
        assert_eq!(g.class(&uuid(1)), Some(ValueClass::Digital));
    }

    #[test]
    fn non_finite_values_are_refused_and_no_walk_can_panic() {
        let classes = [
            ValueClass::Temperature,
            ValueClass::Humidity,
            ValueClass::Co2,
            ValueClass::Fraction,
            ValueClass::Percent,
            ValueClass::Digital,
            ValueClass::Counter,
            ValueClass::Power,
            ValueClass::Generic,
        ];
        let states: Vec<_> = (0u8..)
            .zip(classes)
            .map(|(i, class)| (uuid(i + 1), class))
            .collect();
        let mut g = Generator::new(3, states.clone());
        for (u, _) in &states {
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert!(!g.set(u, bad), "{bad} accepted");
            }
            assert!(g.value(u).is_some_and(f64::is_finite));
        }
        // the largest finite values: stepping neither panics nor leaves the finite range
        for extreme in [f64::MAX, -f64::MAX, 1e300, -1e300] {
            for (u, _) in &states {
                assert!(g.set(u, extreme));
            }
            let mut out = Vec::new();
            g.next_batch(5000, &mut out);
            assert!(
                out.iter().all(|(_, v)| v.is_finite()),
                "non-finite value after {extreme}"
            );
        }
    }
}
