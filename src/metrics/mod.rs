//! The registry side: the data model every exposition reads, the registry of collectors,
//! the control-value state store, self-health metrics and shared health status.

pub mod health;
pub mod model;
pub mod registry;

pub use model::{Family, LabelSet, MetricKind, Sample, Snapshot, Value};
pub use registry::{Collector, Registry};
