//! Grouping a batch of Measurements (compat.md §8): by device, type, patient, encounter and
//! correlation id; one reading per instant (the latest ingested); then into Observation windows by
//! the template's `periodInterval`, with UTC boundaries.

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use rustc_hash::FxHashMap;

use super::sampled_data::Reading;
use super::template::PeriodInterval;
use super::{FhirError, FhirErrorKind};
use crate::model::Measurement;

/// Measurements of one device, type, patient, encounter and correlation id.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasurementGroup<'m> {
    /// The device id of the Measurements.
    pub device_id: &'m str,
    /// The Measurement type.
    pub type_name: &'m str,
    /// The patient id, if the Measurements carry one.
    pub patient_id: Option<&'m str>,
    /// The encounter id, if any.
    pub encounter_id: Option<&'m str>,
    /// The correlation id, if any.
    pub correlation_id: Option<&'m str>,
    /// Indices (into the batch) of the Measurements kept: one per occurrence time.
    pub kept: Vec<usize>,
    /// Indices of every Measurement of the group, kept or superseded.
    pub all: Vec<usize>,
}

/// Groups a batch, in order of first appearance. Within a group, of several Measurements at the
/// same instant the one ingested last is kept (the first of equals), as the original does.
///
/// The original keys groups by the string `"{DeviceId}-{Type}-{PatientId}-{EncounterId}-{CorrelationId}"`,
/// which lets ids containing `-` collide (device `a-b` of type `c` and device `a` of type `b-c`);
/// the key here is the tuple, so they never mix. A missing id and an empty one are the same, as
/// in the original.
pub fn group_measurements(measurements: &[Measurement]) -> Vec<MeasurementGroup<'_>> {
    type Key<'m> = (&'m str, &'m str, &'m str, &'m str, &'m str);
    let mut index: FxHashMap<Key<'_>, usize> = FxHashMap::default();
    let mut groups: Vec<MeasurementGroup<'_>> = Vec::new();
    let mut times: Vec<FxHashMap<DateTime<Utc>, usize>> = Vec::new();
    let mut last: Option<(Key<'_>, usize)> = None;
    for (position, measurement) in measurements.iter().enumerate() {
        let key = (
            measurement.device_id.as_str(),
            measurement.type_name.as_str(),
            measurement.patient_id.as_deref().unwrap_or(""),
            measurement.encounter_id.as_deref().unwrap_or(""),
            measurement.correlation_id.as_deref().unwrap_or(""),
        );
        // Consecutive Measurements of one group are common: skip the lookup for them.
        let cached = last.filter(|(last_key, _)| *last_key == key).map(|(_, slot)| slot);
        let slot = cached.unwrap_or_else(|| {
            *index.entry(key).or_insert_with(|| {
                groups.push(MeasurementGroup {
                    device_id: &measurement.device_id,
                    type_name: &measurement.type_name,
                    patient_id: measurement.patient_id.as_deref(),
                    encounter_id: measurement.encounter_id.as_deref(),
                    correlation_id: measurement.correlation_id.as_deref(),
                    kept: Vec::new(),
                    all: Vec::new(),
                });
                times.push(FxHashMap::default());
                groups.len() - 1
            })
        });
        last = Some((key, slot));
        let group = &mut groups[slot];
        group.all.push(position);
        match times[slot].get(&measurement.occurrence_time_utc) {
            None => {
                times[slot].insert(measurement.occurrence_time_utc, group.kept.len());
                group.kept.push(position);
            }
            Some(&at) => {
                let current = &measurements[group.kept[at]];
                if measurement.ingestion_time_utc > current.ingestion_time_utc {
                    group.kept[at] = position;
                }
            }
        }
    }
    groups
}

/// The Measurements of one Observation: its window, identifier segment and readings per value
/// name.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationGroup {
    /// Window start (inclusive).
    pub start: DateTime<Utc>,
    /// Window end (inclusive).
    pub end: DateTime<Utc>,
    /// The last part of the Observation identifier: `yyyyMMddHHmmssZ.yyyyMMddHHmmssZ` of the
    /// window, or the correlation id.
    pub segment: String,
    /// Readings per Measurement property name, sorted by time; names in order of appearance.
    pub values: Vec<(String, Vec<Reading>)>,
    /// Indices (into the batch) of the Measurements in this window.
    pub members: Vec<usize>,
}

impl ObservationGroup {
    /// The readings of value `name`.
    pub fn readings(&self, name: &str) -> Option<&[Reading]> {
        self.values
            .iter()
            .find(|(value_name, _)| value_name == name)
            .map(|(_, readings)| readings.as_slice())
    }

    fn add(&mut self, measurement: &Measurement, position: usize) {
        self.members.push(position);
        for property in &measurement.properties {
            let slot = match self.values.iter().position(|(name, _)| *name == property.name) {
                Some(slot) => slot,
                None => {
                    self.values.push((property.name.to_string(), Vec::new()));
                    self.values.len() - 1
                }
            };
            let readings = &mut self.values[slot].1;
            // A time-ordered set: the first value at an instant stays.
            if let Err(at) = readings.binary_search_by(|(time, _)| time.cmp(&measurement.occurrence_time_utc)) {
                readings.insert(at, (measurement.occurrence_time_utc, property.value.to_string()));
            }
        }
    }
}

/// One tick (100 ns), the resolution of the original's `DateTime`.
pub fn tick() -> TimeDelta {
    TimeDelta::nanoseconds(100)
}

/// Splits a group into Observation windows, in order of first appearance.
pub fn observation_groups(
    interval: PeriodInterval,
    group: &MeasurementGroup<'_>,
    measurements: &[Measurement],
) -> Result<Vec<ObservationGroup>, FhirError> {
    if interval == PeriodInterval::CorrelationId {
        let correlation_id = group.correlation_id.unwrap_or("");
        if correlation_id.trim().is_empty() {
            return Err(FhirError::new(
                FhirErrorKind::CorrelationIdNotDefined,
                "The FHIR template groups by correlation id (periodInterval -1), but the Measurements have none.",
            ));
        }
        let times = group.kept.iter().map(|&i| measurements[i].occurrence_time_utc);
        let start = times.clone().min().expect("a group has Measurements");
        let end = times.max().expect("a group has Measurements");
        let mut observation = ObservationGroup {
            start,
            end,
            segment: correlation_id.to_string(),
            values: Vec::new(),
            members: Vec::new(),
        };
        for &position in &group.kept {
            observation.add(&measurements[position], position);
        }
        return Ok(vec![observation]);
    }
    let mut windows: Vec<ObservationGroup> = Vec::new();
    for &position in &group.kept {
        let measurement = &measurements[position];
        let (start, end) = boundary(interval, measurement.occurrence_time_utc);
        let window = match windows.iter().position(|w| w.start == start) {
            Some(index) => index,
            None => {
                windows.push(ObservationGroup {
                    start,
                    end,
                    segment: format!("{}.{}", segment_time(start), segment_time(end)),
                    values: Vec::new(),
                    members: Vec::new(),
                });
                windows.len() - 1
            }
        };
        windows[window].add(measurement, position);
    }
    Ok(windows)
}

/// When the window of a reading at `time` ends: the instant itself (Single), the end of its UTC
/// hour or day; `None` for correlation-id windows, which end when their data does.
pub fn window_end(interval: PeriodInterval, time: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match interval {
        PeriodInterval::CorrelationId => None,
        _ => Some(boundary(interval, time).1),
    }
}

/// The window of an instant: itself (Single), its UTC hour or its UTC day.
fn boundary(interval: PeriodInterval, time: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    match interval {
        PeriodInterval::Single | PeriodInterval::CorrelationId => (time, time),
        PeriodInterval::Hourly => {
            let start = time
                .with_nanosecond(0)
                .and_then(|t| t.with_second(0))
                .and_then(|t| t.with_minute(0))
                .expect("truncating to the hour is valid");
            (start, start + TimeDelta::hours(1) - tick())
        }
        PeriodInterval::Daily => {
            let start = time
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .expect("midnight is valid")
                .and_utc();
            (start, start + TimeDelta::days(1) - tick())
        }
    }
}

/// `yyyyMMddHHmmss` followed by a literal `Z`: sub-seconds are dropped, as in the original.
fn segment_time(time: DateTime<Utc>) -> String {
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MeasurementProperty, parse_utc_lenient};

    fn measurement(device: &str, kind: &str, time: &str, ingested: Option<&str>, value: &str) -> Measurement {
        Measurement {
            type_name: kind.into(),
            occurrence_time_utc: parse_utc_lenient(time).unwrap(),
            ingestion_time_utc: ingested.and_then(parse_utc_lenient),
            device_id: device.into(),
            patient_id: Some("p1".into()),
            encounter_id: None,
            correlation_id: None,
            properties: vec![MeasurementProperty {
                name: "hr".into(),
                value: value.into(),
            }],
        }
    }

    #[test]
    fn groups_in_order_and_keeps_the_latest_ingested_reading_per_instant() {
        let batch = vec![
            measurement("d1", "hr", "2019-01-01T00:00:00Z", Some("2019-01-01T00:00:01Z"), "60"),
            measurement("d2", "hr", "2019-01-01T00:00:00Z", None, "70"),
            measurement("d1", "hr", "2019-01-01T00:00:00Z", Some("2019-01-01T00:00:05Z"), "61"),
            measurement("d1", "hr", "2019-01-01T00:00:00Z", Some("2019-01-01T00:00:05Z"), "62"),
            measurement("d1", "hr", "2019-01-01T00:00:01Z", None, "63"),
        ];
        let groups = group_measurements(&batch);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].device_id, "d1");
        assert_eq!(groups[0].kept, [2, 4]);
        assert_eq!(groups[0].all, [0, 2, 3, 4]);
        assert_eq!(groups[1].kept, [1]);
    }

    #[test]
    fn ids_with_dashes_do_not_collide() {
        let batch = vec![
            measurement("a-b", "c", "2019-01-01T00:00:00Z", None, "1"),
            measurement("a", "b-c", "2019-01-01T00:00:00Z", None, "2"),
        ];
        assert_eq!(group_measurements(&batch).len(), 2);
    }

    #[test]
    fn hourly_windows_have_utc_boundaries_and_segments() {
        let batch = vec![
            measurement("d", "hr", "2019-01-01T00:10:00Z", None, "1"),
            measurement("d", "hr", "2019-01-01T01:00:00Z", None, "2"),
            measurement("d", "hr", "2019-01-01T00:59:59.9999999Z", None, "3"),
        ];
        let groups = group_measurements(&batch);
        let windows = observation_groups(PeriodInterval::Hourly, &groups[0], &batch).unwrap();
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0].segment, "20190101000000Z.20190101005959Z");
        assert_eq!(windows[0].members, [0, 2]);
        assert_eq!(
            crate::model::format_round_trip(windows[0].end),
            "2019-01-01T00:59:59.9999999Z"
        );
        assert_eq!(windows[1].segment, "20190101010000Z.20190101015959Z");
        let daily = observation_groups(PeriodInterval::Daily, &groups[0], &batch).unwrap();
        assert_eq!(daily.len(), 1);
        assert_eq!(daily[0].segment, "20190101000000Z.20190101235959Z");
        let single = observation_groups(PeriodInterval::Single, &groups[0], &batch).unwrap();
        assert_eq!(single.len(), 3);
        assert_eq!(single[2].segment, "20190101005959Z.20190101005959Z");
    }

    #[test]
    fn correlation_groups_span_their_measurements() {
        let mut batch = vec![
            measurement("d", "hr", "2019-01-01T02:00:00Z", None, "1"),
            measurement("d", "hr", "2019-01-01T01:00:00Z", None, "2"),
        ];
        for m in &mut batch {
            m.correlation_id = Some("session-1".into());
        }
        let groups = group_measurements(&batch);
        let windows = observation_groups(PeriodInterval::CorrelationId, &groups[0], &batch).unwrap();
        assert_eq!(windows[0].segment, "session-1");
        assert_eq!(windows[0].start, batch[1].occurrence_time_utc);
        assert_eq!(windows[0].end, batch[0].occurrence_time_utc);
        assert_eq!(windows[0].readings("hr").unwrap()[0].1, "2");

        batch[0].correlation_id = None;
        batch[1].correlation_id = None;
        let groups = group_measurements(&batch);
        let error = observation_groups(PeriodInterval::CorrelationId, &groups[0], &batch).unwrap_err();
        assert_eq!(error.kind, FhirErrorKind::CorrelationIdNotDefined);
    }
}
