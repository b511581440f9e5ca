//! The integration test binary: the `iomt` CLI run as a user runs it, against golden fixtures,
//! and (with the `service` feature) the adapters against real servers (FHIR, Azurite), the Event
//! Hubs SDK against an in-process protocol test endpoint, and the worker end to end.

#[cfg(feature = "service")]
mod blob_storage;
mod cli;
#[cfg(feature = "service")]
mod eventhubs_endpoint;
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
#[cfg(feature = "service")]
mod worker;
