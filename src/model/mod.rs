//! Plain data shared by every stage: device events, Measurements, partition keys, time helpers.
//! No I/O.

mod device_event;
mod measurement;
mod partition_key;
pub(crate) mod time;

pub use device_event::{DeviceEvent, ENQUEUED_TIME_PROPERTIES, EventFormat, EventParseError};
pub use measurement::{Measurement, MeasurementProperty, MeasurementReadError, MeasurementText, MeasurementWriter};
pub use partition_key::{device_hash, partition_key};
pub use time::{format_round_trip, format_utc, parse_utc_lenient};
