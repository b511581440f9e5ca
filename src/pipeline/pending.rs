//! The Measurements of one partition not yet written to FHIR, and when to write them: at a
//! maximum latency after the first one arrived, when too many wait, or as soon as a later reading
//! shows a waiting window has closed. Snapshots make them survive a restart or a move of the
//! partition to another replica.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Measurement, format_utc, parse_utc_lenient};
use crate::pipeline::deadletter::Origin;

/// A Measurement waiting to be written, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingReading {
    /// The Measurement.
    pub measurement: Measurement,
    /// Its source event.
    pub origin: Origin,
}

/// When to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Write at most this long after the first waiting Measurement arrived.
    pub max_latency: TimeDelta,
    /// Write when this many Measurements wait.
    pub max_pending: usize,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            max_latency: TimeDelta::seconds(5),
            max_pending: 20_000,
        }
    }
}

/// The waiting Measurements of one partition.
#[derive(Debug, Default)]
pub struct PendingWindows {
    readings: Vec<PendingReading>,
    first_arrival: Option<DateTime<Utc>>,
    newest_occurrence: Option<DateTime<Utc>>,
    earliest_window_end: Option<DateTime<Utc>>,
}

impl PendingWindows {
    /// Adds a Measurement that arrived at `now`; `window_end` is when its Observation window
    /// ends (`None` when unknown).
    pub fn push(&mut self, reading: PendingReading, window_end: Option<DateTime<Utc>>, now: DateTime<Utc>) {
        self.first_arrival.get_or_insert(now);
        let time = reading.measurement.occurrence_time_utc;
        self.newest_occurrence = Some(self.newest_occurrence.map_or(time, |newest| newest.max(time)));
        if let Some(end) = window_end {
            self.earliest_window_end = Some(self.earliest_window_end.map_or(end, |earliest| earliest.min(end)));
        }
        self.readings.push(reading);
    }

    /// True when the waiting Measurements should be written now.
    pub fn is_due(&self, now: DateTime<Utc>, policy: &FlushPolicy) -> bool {
        let Some(first) = self.first_arrival else {
            return false;
        };
        let closed = matches!(
            (self.newest_occurrence, self.earliest_window_end),
            (Some(newest), Some(end)) if newest > end
        );
        now - first >= policy.max_latency || self.readings.len() >= policy.max_pending || closed
    }

    /// The waiting Measurements.
    pub fn readings(&self) -> &[PendingReading] {
        &self.readings
    }

    /// Number waiting.
    pub fn len(&self) -> usize {
        self.readings.len()
    }

    /// True when none wait.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }

    /// Forgets the waiting Measurements (they were written).
    pub fn clear(&mut self) {
        *self = PendingWindows::default();
    }

    /// When the first waiting Measurement arrived.
    pub fn first_arrival(&self) -> Option<DateTime<Utc>> {
        self.first_arrival
    }
}

/// A partition's saved state: the waiting Measurements and the last event they include.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// The sequence number of the last event whose Measurements are in `readings` (or written).
    pub through_sequence: Option<i64>,
    /// The waiting Measurements.
    pub readings: Vec<PendingReading>,
}

/// A reading of a snapshot that could not be read back: its JSON and why.
#[derive(Debug, Clone, PartialEq)]
pub struct UnreadableReading {
    /// Its source event, as far as the snapshot says.
    pub origin: Origin,
    /// The reading's JSON as stored.
    pub payload: Vec<u8>,
    /// Why it could not be read.
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotDocument<R> {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    through_sequence: Option<i64>,
    pending: Vec<R>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotReading {
    measurement: serde_json::Value,
    partition: String,
    offset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sequence_number: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enqueued_time: Option<String>,
}

impl Snapshot {
    /// The snapshot as JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        let document = SnapshotDocument {
            version: 1,
            through_sequence: self.through_sequence,
            pending: self
                .readings
                .iter()
                .map(|reading| SnapshotReading {
                    measurement: serde_json::from_str(&reading.measurement.to_json()).expect("Measurements are JSON"),
                    partition: reading.origin.partition.clone(),
                    offset: reading.origin.offset.clone(),
                    sequence_number: reading.origin.sequence_number,
                    enqueued_time: reading.origin.enqueued_time.map(format_utc),
                })
                .collect(),
        };
        serde_json::to_vec(&document).expect("a snapshot serializes")
    }

    /// Reads a snapshot of `partition` written by [`Snapshot::to_bytes`]. Readings that cannot
    /// be read back are returned apart, so that they can be set aside; an error means the
    /// document as a whole is unreadable.
    pub fn from_bytes(bytes: &[u8], partition: &str) -> Result<(Snapshot, Vec<UnreadableReading>), String> {
        let document: SnapshotDocument<serde_json::Value> =
            serde_json::from_slice(bytes).map_err(|error| format!("the snapshot is not valid: {error}"))?;
        if document.version != 1 {
            return Err(format!("unknown snapshot version {}", document.version));
        }
        let mut readings = Vec::with_capacity(document.pending.len());
        let mut unreadable = Vec::new();
        for value in document.pending {
            match read_reading(&value) {
                Ok(reading) => readings.push(reading),
                Err((origin, reason)) => unreadable.push(UnreadableReading {
                    origin: origin.unwrap_or_else(|| Origin {
                        partition: partition.to_string(),
                        offset: "snapshot".into(),
                        sequence_number: None,
                        enqueued_time: None,
                    }),
                    payload: value.get("measurement").unwrap_or(&value).to_string().into_bytes(),
                    reason,
                }),
            }
        }
        let snapshot = Snapshot {
            through_sequence: document.through_sequence,
            readings,
        };
        Ok((snapshot, unreadable))
    }
}

/// One snapshot reading; on failure, its origin if that much could be read, and why.
fn read_reading(value: &serde_json::Value) -> Result<PendingReading, (Option<Origin>, String)> {
    let reading = SnapshotReading::deserialize(value)
        .map_err(|error| (None, format!("the snapshot reading is not valid: {error}")))?;
    let origin = Origin {
        partition: reading.partition,
        offset: reading.offset,
        sequence_number: reading.sequence_number,
        enqueued_time: reading.enqueued_time.as_deref().and_then(parse_utc_lenient),
    };
    match Measurement::from_value(&reading.measurement) {
        Ok(measurement) => Ok(PendingReading { measurement, origin }),
        Err(error) => Err((Some(origin), error.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MeasurementProperty;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_709_280_000 + seconds, 0).unwrap()
    }

    fn reading(seconds: i64, sequence: i64) -> PendingReading {
        PendingReading {
            measurement: Measurement {
                type_name: "heartrate".into(),
                occurrence_time_utc: at(seconds),
                ingestion_time_utc: Some(at(seconds)),
                device_id: "d1".into(),
                patient_id: Some("p1".into()),
                encounter_id: None,
                correlation_id: None,
                properties: vec![MeasurementProperty {
                    name: "hr".into(),
                    value: "70".into(),
                }],
            },
            origin: Origin {
                partition: "1".into(),
                offset: format!("{}", sequence * 10),
                sequence_number: Some(sequence),
                enqueued_time: Some(at(seconds)),
            },
        }
    }

    #[test]
    fn writes_are_due_at_the_latency_limit_the_size_limit_or_when_a_window_closes() {
        let policy = FlushPolicy {
            max_latency: TimeDelta::seconds(5),
            max_pending: 3,
        };
        let mut pending = PendingWindows::default();
        assert!(!pending.is_due(at(100), &policy));
        pending.push(reading(0, 1), Some(at(3599)), at(10));
        assert!(!pending.is_due(at(14), &policy));
        assert!(pending.is_due(at(15), &policy), "latency");
        pending.push(reading(1, 2), Some(at(3599)), at(11));
        pending.push(reading(2, 3), Some(at(3599)), at(12));
        assert!(pending.is_due(at(12), &policy), "size");
        pending.clear();
        pending.push(reading(10, 4), Some(at(3599)), at(20));
        pending.push(reading(3600, 5), Some(at(7199)), at(21));
        assert!(pending.is_due(at(21), &policy), "a later hour closed the first window");
    }

    #[test]
    fn snapshots_round_trip() {
        let snapshot = Snapshot {
            through_sequence: Some(7),
            readings: vec![reading(0, 6), reading(1, 7)],
        };
        assert_eq!(
            Snapshot::from_bytes(&snapshot.to_bytes(), "0").unwrap(),
            (snapshot, Vec::new())
        );
        assert!(Snapshot::from_bytes(b"{}", "0").is_err());
        assert!(Snapshot::from_bytes(br#"{"version":2,"pending":[]}"#, "0").is_err());
    }

    #[test]
    fn unreadable_snapshot_readings_are_returned_apart() {
        let good = Snapshot {
            through_sequence: Some(9),
            readings: vec![reading(0, 8)],
        };
        let mut document: serde_json::Value = serde_json::from_slice(&good.to_bytes()).unwrap();
        let pending = document["pending"].as_array_mut().unwrap();
        let mut no_type = pending[0].clone();
        no_type["measurement"].as_object_mut().unwrap().remove("Type");
        no_type["sequenceNumber"] = 9.into();
        pending.push(no_type);
        pending.push(serde_json::json!({"measurement": {"Type": "x"}}));
        let (snapshot, unreadable) = Snapshot::from_bytes(&serde_json::to_vec(&document).unwrap(), "3").unwrap();
        assert_eq!(snapshot, good);
        assert_eq!(unreadable.len(), 2);
        assert_eq!(unreadable[0].origin.sequence_number, Some(9));
        assert_eq!(unreadable[0].reason, "Type is required");
        assert!(String::from_utf8_lossy(&unreadable[0].payload).contains("\"DeviceId\":\"d1\""));
        assert_eq!(unreadable[1].origin.partition, "3");
        assert!(
            unreadable[1].reason.contains("missing field"),
            "{}",
            unreadable[1].reason
        );
        assert_eq!(unreadable[1].payload, br#"{"Type":"x"}"#);
    }
}
