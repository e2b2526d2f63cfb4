//! The sans-I/O Loxone modules of loxone-exporter, compiled from their real source files so
//! the fuzz targets exercise exactly the shipped code (see Cargo.toml for why not a crate
//! dependency). They sit at this crate's root, so their `super::uuid` paths resolve here
//! just as they do under `loxone_exporter::loxone`.
#![allow(dead_code, missing_docs)]

#[path = "../../src/loxone/crypto.rs"]
pub mod crypto;
#[path = "../../src/loxone/envelope.rs"]
pub mod envelope;
#[path = "../../src/loxone/events.rs"]
pub mod events;
#[path = "../../src/loxone/header.rs"]
pub mod header;
#[path = "../../src/loxone/structure.rs"]
pub mod structure;
#[path = "../../src/loxone/uuid.rs"]
pub mod uuid;
