//! iomt-connector: lands medical-device data in FHIR.
//!
//! The crate is a pure core with thin adapters at the edges:
//! - [`json`]: a JSON token model with Json.NET's semantics (integers, doubles, dates);
//! - [`model`]: device events and Measurements;
//! - [`expr`]: the JSONPath (Json.NET dialect) and JMESPath expression languages;
//! - [`device`]: device-mapping templates and normalization;
//! - [`fhir`]: FHIR mapping templates, grouping, and building and merging Observations;
//! - [`pipeline`]: asynchronous orchestration over ports (identity resolution, Observation
//!   persistence);
//! - [`adapters`]: local files and directories; with feature `service` the FHIR HTTP client,
//!   Azure authentication, Event Hubs and Blob Storage.
//!
//! The core (`json`, `model`, `expr`, `device`, `fhir`) never performs I/O, never reads the clock
//! and never logs; `pipeline` runs it over ports; `adapters` implement the ports; the `cli` module
//! at the top wires everything to files, standard streams and servers.

pub mod adapters;
pub mod cli;
pub mod config;
pub mod device;
pub mod expr;
pub mod fhir;
pub mod json;
pub mod model;
pub mod pipeline;
pub mod telemetry;
pub mod template;
#[cfg(test)]
mod test_support;
