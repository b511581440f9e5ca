//! iomt-connector: lands medical-device data in FHIR.
//!
//! The crate is a pure core with thin adapters at the edges:
//! - [`json`]: a JSON token model with Json.NET's semantics (integers, doubles, dates);
//! - [`model`]: device events and Measurements;
//! - [`expr`]: the JSONPath (Json.NET dialect) and JMESPath expression languages;
//! - [`device`]: device-mapping templates and normalization;
//! - [`fhir`]: FHIR mapping templates, grouping, and building and merging Observations.
//!
//! The core never performs I/O, never reads the clock and never logs; the `cli` module at the top
//! wires it to files and standard streams.

pub mod cli;
pub mod device;
pub mod expr;
pub mod fhir;
pub mod json;
pub mod model;
pub mod template;
