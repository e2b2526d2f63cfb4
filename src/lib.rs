//! loxone-exporter: a Loxone Miniserver to Prometheus and OpenTelemetry bridge.
//!
//! Data flows one way: `loxone` (protocol, sessions, simulator) writes control values into
//! `metrics` (state store, registry, self-health); `http` (scrape target, `/healthz`,
//! landing page) and `otlp` (push) read the same registry. `app` wires them together under
//! one shutdown token; `main.rs` only parses arguments, loads configuration and binds.
// `deny`, not `forbid`: the allocator housekeeping module needs one FFI call
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[allow(unsafe_code)]
pub mod alloc;
pub mod app;
pub mod backoff;
pub mod build_info;
pub mod civil_time;
pub mod cli;
pub mod config;
pub mod healthcheck;
pub mod http;
pub mod logging;
pub mod loxone;
pub mod metrics;
pub mod otlp;
pub mod secret;
pub mod systemd;
pub mod telemetry;
pub mod tls_provider;
pub mod web;
pub(crate) mod write_stall;
