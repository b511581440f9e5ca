//! Plain data shared by every stage: device events, Measurements, time helpers. No I/O.

mod device_event;
mod measurement;
mod time;

pub use device_event::{DeviceEvent, ENQUEUED_TIME_PROPERTIES, EventFormat, EventParseError};
pub use measurement::{Measurement, MeasurementProperty, MeasurementReadError};
pub use time::{format_round_trip, format_utc, parse_utc_lenient};
