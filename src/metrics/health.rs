//! Health status shared between the parts that produce it (Miniserver sessions, the OTLP
//! export loop) and the parts that show it (`/healthz`, the landing page, self-health
//! metrics).
//!
//! Only plain data lives here; who updates what is documented on each field. Error texts
//! stored here must already be sanitised: they are shown to anyone who can reach `/healthz`.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

/// State of the OTLP export loop. The numeric value is what `loxone_otlp_export_status`
/// exposes (the original's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExportState {
    /// OTLP export is not configured.
    #[default]
    Disabled = 0,
    /// Waiting for the next tick; the last export succeeded (or none ran yet).
    Idle = 1,
    /// An export request is in flight.
    Exporting = 2,
    /// The last export failed with a retryable error; a retry is scheduled.
    Retrying = 3,
    /// Ten or more consecutive failures, or a non-retryable failure.
    Failed = 4,
}

impl ExportState {
    /// Numeric code used by the `loxone_otlp_export_status` gauge.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Live status of the OTLP export loop, written by the loop at every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct OtlpStatus {
    /// Current state.
    pub state: ExportState,
    /// Unix seconds of the last successful export, `None` before the first.
    pub last_success: Option<f64>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Last error, sanitised (no header values, no tokens); `None` after a success.
    pub last_error: Option<String>,
    /// Duration of the last export attempt in seconds.
    #[serde(skip)]
    pub last_duration_seconds: Option<f64>,
}

/// Shared handle to the OTLP status.
#[derive(Debug, Clone, Default)]
pub struct OtlpHealth(Arc<Mutex<OtlpStatus>>);

impl OtlpHealth {
    /// A handle starting in `state`.
    pub fn new(state: ExportState) -> Self {
        OtlpHealth(Arc::new(Mutex::new(OtlpStatus {
            state,
            ..OtlpStatus::default()
        })))
    }

    /// A copy of the current status.
    pub fn get(&self) -> OtlpStatus {
        self.0.lock().clone()
    }

    /// Changes the status under the lock.
    pub fn update(&self, f: impl FnOnce(&mut OtlpStatus)) {
        f(&mut self.0.lock());
    }
}
