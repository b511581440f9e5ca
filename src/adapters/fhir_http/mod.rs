//! The FHIR server over HTTP: the REST client and its authentication.

pub mod auth;
pub mod client;

pub use auth::{FhirAuth, TokenSource};
pub use client::{FhirClientConfig, FhirHttpClient, RetryPolicy};
