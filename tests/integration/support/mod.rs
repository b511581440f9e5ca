//! Support for the tests that talk to servers: the FHIR server under test, a fault-injecting
//! proxy, small fake endpoints and an Event Hubs protocol test endpoint.

pub mod eventhubs;
pub mod fhir;
pub mod servers;
