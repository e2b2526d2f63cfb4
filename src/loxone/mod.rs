//! The Miniserver side: the WebSocket protocol in pure functions (no I/O), the structure
//! file model, authentication crypto, the client session and the simulator.

pub mod simulator;
pub mod structure;
pub mod uuid;
