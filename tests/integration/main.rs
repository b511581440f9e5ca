//! The integration test binary: the `iomt` CLI run as a user runs it, against golden fixtures,
//! and (with the `service` feature) the FHIR adapter against a real FHIR server.

#[cfg(feature = "service")]
mod blob_storage;
mod cli;
#[cfg(feature = "service")]
mod fhir_auth;
#[cfg(feature = "service")]
mod fhir_faults;
mod fhir_r4;
#[cfg(feature = "service")]
mod fhir_server;
mod golden;
mod local_run;
mod samples;
#[cfg(feature = "service")]
mod support;
mod util;
