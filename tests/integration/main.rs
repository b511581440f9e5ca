//! The integration test binary: the `iomt` CLI run as a user runs it, against golden fixtures.

mod cli;
mod fhir_r4;
mod golden;
mod samples;
mod util;
