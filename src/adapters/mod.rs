//! Adapters: the only code that does I/O against the outside world. Each implements a
//! [`crate::pipeline::ports`] trait. `local` (files, directories) is always built; the Azure and
//! HTTP adapters need the `service` feature.

#[cfg(feature = "service")]
pub mod azure;
#[cfg(feature = "service")]
pub mod blob;
#[cfg(feature = "service")]
pub mod eventhubs;
#[cfg(feature = "service")]
pub mod fhir_http;
pub mod local;
