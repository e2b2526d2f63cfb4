//! The registry side: the data model every exposition reads, the registry of collectors,
//! the control-value state store, filters, self-health metrics, shared health status and
//! the text encoder.

pub mod filter;
pub mod health;
pub mod model;
pub mod registry;
pub mod self_health;
pub mod store;
pub mod text;

pub use model::{Family, LabelSet, MetricKind, Sample, Snapshot, Value};
pub use registry::{Collector, Registry};
pub use store::{MiniserverHealth, MiniserverInfo, MiniserverState, StateStore};
