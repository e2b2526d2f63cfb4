//! OTLP push: converts registry snapshots into `ExportMetricsServiceRequest`s and sends them
//! to a collector over gRPC or HTTP/protobuf through a retry state machine.
//!
//! Layers (`docs/otlp-and-prometheus.md`, `docs/original-exporter.md` §5):
//! - [`convert`]: pure snapshot → requests conversion with per-series start times, end-of-series
//!   markers and size-bounded splitting;
//! - [`transport`]: the only I/O, gRPC (tonic) and HTTP/protobuf (reqwest), classifying every
//!   answer by the next move ([`transport::ExportOutcome`]);
//! - [`export`]: the schedule and retry state machine, feeding [`crate::metrics::health::OtlpHealth`];
//! - [`quickack`]: the gRPC transport's TCP connector, acknowledging the collector's writes at once;
//! - [`health`]: the five `loxone_otlp_*` health families (plus two counters) as a collector.
//!
//! Configuration loading is not here: callers pass a ready [`crate::config::OtlpConfig`].

pub mod convert;
pub mod export;
pub mod health;
pub mod quickack;
pub mod transport;

pub use export::run_export_loop;
pub use health::health_collector;
