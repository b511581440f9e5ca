//! Asynchronous orchestration over ports: identity resolution and Observation persistence. It
//! knows the [`ports`] traits, never a concrete adapter; the CLI wires adapters in.

pub mod deadletter;
pub mod identity;
pub mod metrics;
pub mod normalize;
pub mod pending;
pub mod ports;
pub mod run;
pub mod writer;
