//! The registry: an ordered list of [`Collector`]s, one per concern, read as one
//! [`Snapshot`] by `/metrics` and by the OTLP export loop.

use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;

use super::model::{Family, Snapshot};

/// A source of metric families: the state store, self-health, process metrics, OTLP
/// health. `collect` must be cheap and must not block on I/O: it runs on every scrape
/// and every export.
pub trait Collector: Send + Sync + 'static {
    /// Appends this collector's families to `out`.
    fn collect(&self, out: &mut Vec<Family>);
}

/// The registry every exposition reads from.
#[derive(Default)]
pub struct Registry {
    collectors: RwLock<Vec<Arc<dyn Collector>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a collector; families appear in registration order.
    pub fn register(&self, collector: Arc<dyn Collector>) {
        self.collectors.write().push(collector);
    }

    /// Reads every collector once. Families with the same name from different collectors
    /// are merged (the first one's HELP and type win), so each name appears once.
    pub fn snapshot(&self) -> Snapshot {
        let collectors = self.collectors.read().clone();
        let mut families: Vec<Family> = Vec::new();
        let mut scratch = Vec::new();
        for c in &collectors {
            scratch.clear();
            c.collect(&mut scratch);
            for fam in scratch.drain(..) {
                match families.iter_mut().find(|f| f.name == fam.name) {
                    Some(existing) => existing.samples.extend(fam.samples),
                    None => families.push(fam),
                }
            }
        }
        Snapshot {
            families,
            taken_at: SystemTime::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{LabelSet, MetricKind, Sample};

    struct Fixed(&'static str, f64);
    impl Collector for Fixed {
        fn collect(&self, out: &mut Vec<Family>) {
            let mut f = Family::new(self.0, "help", MetricKind::Gauge);
            f.samples.push(Sample::number(
                LabelSet::new([("k", self.1.to_string())]),
                self.1,
            ));
            out.push(f);
        }
    }

    #[test]
    fn merges_families_of_the_same_name_in_order() {
        let r = Registry::new();
        r.register(Arc::new(Fixed("a", 1.0)));
        r.register(Arc::new(Fixed("b", 2.0)));
        r.register(Arc::new(Fixed("a", 3.0)));
        let s = r.snapshot();
        let names: Vec<_> = s.families.iter().map(|f| f.name.to_string()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(s.family("a").unwrap().samples.len(), 2);
        assert_eq!(s.series_count(), 3);
    }
}
