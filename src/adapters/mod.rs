//! Adapters: the only code that talks to servers (FHIR over HTTP, Azure). Each implements a
//! [`crate::pipeline::ports`] trait.

pub mod fhir_http;
