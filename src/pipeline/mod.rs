//! Asynchronous orchestration over ports: identity resolution and Observation persistence. It
//! knows the [`ports`] traits, never a concrete adapter; the CLI wires adapters in.

pub mod identity;
pub mod ports;
pub mod writer;
