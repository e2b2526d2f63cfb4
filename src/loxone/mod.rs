//! The Miniserver side: the WebSocket protocol in pure functions (no I/O), the structure
//! file model, authentication crypto, the client session and the simulator.

pub mod crypto;
pub mod envelope;
pub mod events;
pub mod header;
pub mod simulator;
pub mod structure;
pub mod synth;
pub mod uuid;

pub mod auth;
pub mod client;
pub mod client_text_frames;
pub mod connection;
pub mod framer;
pub mod session;
pub mod wake_pacer;

#[cfg(test)]
mod client_fake;
