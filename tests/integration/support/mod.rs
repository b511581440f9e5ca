//! Support for the tests that talk to servers: the FHIR server under test, a fault-injecting
//! proxy and small fake endpoints.

pub mod fhir;
pub mod servers;
