//! The normalized Measurement and its wire format (compat.md §7.1, decision P6).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::time::{LastTimestamp, parse_utc_lenient};
use crate::json::write_json_string;

/// The text of a Measurement's fields: ids, names and values are short, and stored inline they
/// cost no allocation per Measurement.
pub type MeasurementText = compact_str::CompactString;

/// One normalized reading set: what a device-mapping template extracts from one matched token.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The template's `typeName`.
    pub type_name: MeasurementText,
    /// When the reading was taken.
    pub occurrence_time_utc: DateTime<Utc>,
    /// When the source event was enqueued.
    pub ingestion_time_utc: Option<DateTime<Utc>>,
    /// Device identifier from the message.
    pub device_id: MeasurementText,
    /// Patient identifier from the message, if the template extracts one.
    pub patient_id: Option<MeasurementText>,
    /// Encounter identifier from the message, if the template extracts one.
    pub encounter_id: Option<MeasurementText>,
    /// Correlation identifier, if the template extracts one.
    pub correlation_id: Option<MeasurementText>,
    /// Extracted values, in the template's `values` order.
    pub properties: Vec<MeasurementProperty>,
}

/// A named value of a Measurement; values are always strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementProperty {
    /// The template's `valueName`.
    pub name: MeasurementText,
    /// The value, stringified as the original did.
    pub value: MeasurementText,
}

/// Why a Measurement line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MeasurementReadError(pub String);

/// Writes Measurements in the original's wire form: PascalCase names, nulls written, string
/// values. It keeps the text of the last occurrence and ingestion times, as the Measurements of
/// one message share their ingestion time and often their occurrence time, and formatting a
/// timestamp costs more than the rest of a Measurement.
#[derive(Default)]
pub struct MeasurementWriter {
    occurrence: LastTimestamp,
    ingestion: LastTimestamp,
}

impl MeasurementWriter {
    /// Appends the wire form of `measurement` to `out`.
    pub fn write(&mut self, measurement: &Measurement, out: &mut String) {
        fn optional(out: &mut String, value: Option<&str>) {
            match value {
                Some(value) => write_json_string(value, out),
                None => out.push_str("null"),
            }
        }
        out.push_str("{\"Type\":");
        write_json_string(&measurement.type_name, out);
        out.push_str(",\"OccurrenceTimeUtc\":\"");
        self.occurrence.write(measurement.occurrence_time_utc, out);
        out.push_str("\",\"IngestionTimeUtc\":");
        match measurement.ingestion_time_utc {
            Some(time) => {
                out.push('"');
                self.ingestion.write(time, out);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"DeviceId\":");
        write_json_string(&measurement.device_id, out);
        out.push_str(",\"PatientId\":");
        optional(out, measurement.patient_id.as_deref());
        out.push_str(",\"EncounterId\":");
        optional(out, measurement.encounter_id.as_deref());
        out.push_str(",\"CorrelationId\":");
        optional(out, measurement.correlation_id.as_deref());
        out.push_str(",\"Properties\":[");
        for (index, property) in measurement.properties.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str("{\"Name\":");
            write_json_string(&property.name, out);
            out.push_str(",\"Value\":");
            write_json_string(&property.value, out);
            out.push('}');
        }
        out.push_str("]}");
    }
}

impl Measurement {
    /// Appends the original's wire form (see [`MeasurementWriter`], which a caller writing many
    /// Measurements should keep).
    pub fn write_json(&self, out: &mut String) {
        MeasurementWriter::default().write(self, out);
    }

    /// The wire form as a string.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write_json(&mut out);
        out
    }

    /// Reads one Measurement from JSON text, accepting PascalCase or camelCase names.
    pub fn from_json(text: &str) -> Result<Measurement, MeasurementReadError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| MeasurementReadError(format!("not valid JSON: {e}")))?;
        Measurement::from_value(&value)
    }

    /// Reads one Measurement from a JSON value; member names are matched case-insensitively.
    pub fn from_value(value: &Value) -> Result<Measurement, MeasurementReadError> {
        let object = value
            .as_object()
            .ok_or_else(|| MeasurementReadError("a Measurement must be a JSON object".into()))?;
        let field = |name: &str| {
            object
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value)
                .filter(|value| !value.is_null())
        };
        let text = |name: &str| -> Result<Option<MeasurementText>, MeasurementReadError> {
            match field(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(MeasurementText::from(s.as_str()))),
                Some(other) => Err(MeasurementReadError(format!("{name} must be a string, found {other}"))),
            }
        };
        let time = |name: &str| -> Result<Option<DateTime<Utc>>, MeasurementReadError> {
            text(name)?
                .map(|s| {
                    parse_utc_lenient(&s)
                        .ok_or_else(|| MeasurementReadError(format!("{name} is not a valid timestamp: {s:?}")))
                })
                .transpose()
        };
        let required = |name: &str| -> Result<MeasurementText, MeasurementReadError> {
            text(name)?.ok_or_else(|| MeasurementReadError(format!("{name} is required")))
        };

        let properties = match field("Properties") {
            None => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(read_property).collect::<Result<_, _>>()?,
            Some(_) => return Err(MeasurementReadError("Properties must be an array".into())),
        };
        Ok(Measurement {
            type_name: required("Type")?,
            occurrence_time_utc: time("OccurrenceTimeUtc")?
                .ok_or_else(|| MeasurementReadError("OccurrenceTimeUtc is required".into()))?,
            ingestion_time_utc: time("IngestionTimeUtc")?,
            device_id: required("DeviceId")?,
            patient_id: text("PatientId")?,
            encounter_id: text("EncounterId")?,
            correlation_id: text("CorrelationId")?,
            properties,
        })
    }
}

fn read_property(item: &Value) -> Result<MeasurementProperty, MeasurementReadError> {
    let object = item
        .as_object()
        .ok_or_else(|| MeasurementReadError("each property must be an object".into()))?;
    let member = |name: &str| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    };
    let name = match member("Name") {
        Some(Value::String(name)) => MeasurementText::from(name.as_str()),
        _ => return Err(MeasurementReadError("each property needs a string Name".into())),
    };
    let value = match member("Value") {
        Some(Value::String(value)) => value.as_str().into(),
        Some(Value::Number(number)) => number.to_string().into(),
        Some(Value::Bool(true)) => "True".into(),
        Some(Value::Bool(false)) => "False".into(),
        _ => {
            return Err(MeasurementReadError(format!("property {name:?} needs a string Value")));
        }
    };
    Ok(MeasurementProperty { name, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Measurement {
        Measurement {
            type_name: "heartRate".into(),
            occurrence_time_utc: parse_utc_lenient("2019-02-01T22:46:01.875Z").unwrap(),
            ingestion_time_utc: parse_utc_lenient("2019-02-01T22:46:05.12Z"),
            device_id: "device123".into(),
            patient_id: None,
            encounter_id: None,
            correlation_id: None,
            properties: vec![MeasurementProperty {
                name: "hr".into(),
                value: "65".into(),
            }],
        }
    }

    #[test]
    fn writes_the_original_wire_format() {
        assert_eq!(
            sample().to_json(),
            r#"{"Type":"heartRate","OccurrenceTimeUtc":"2019-02-01T22:46:01.875Z","IngestionTimeUtc":"2019-02-01T22:46:05.12Z","DeviceId":"device123","PatientId":null,"EncounterId":null,"CorrelationId":null,"Properties":[{"Name":"hr","Value":"65"}]}"#
        );
    }

    /// A writer reusing the last timestamps writes what a fresh one writes, whether the times
    /// repeat, change by a nanosecond, or go missing.
    #[test]
    fn a_kept_writer_writes_what_a_fresh_one_writes() {
        let base = sample();
        let later = |m: &Measurement, nanos| m.occurrence_time_utc + chrono::Duration::nanoseconds(nanos);
        let sequence = [
            base.clone(),
            base.clone(),
            Measurement {
                occurrence_time_utc: later(&base, 1),
                ..base.clone()
            },
            Measurement {
                ingestion_time_utc: None,
                ..base.clone()
            },
            Measurement {
                ingestion_time_utc: Some(later(&base, 1)),
                ..base.clone()
            },
            Measurement {
                occurrence_time_utc: later(&base, 1),
                ingestion_time_utc: Some(later(&base, 1)),
                ..base.clone()
            },
            base.clone(),
        ];
        let mut writer = MeasurementWriter::default();
        for measurement in &sequence {
            let mut kept = String::new();
            writer.write(measurement, &mut kept);
            assert_eq!(kept, measurement.to_json());
        }
    }

    #[test]
    fn reads_both_casings() {
        let pascal = Measurement::from_json(&sample().to_json()).unwrap();
        assert_eq!(pascal, sample());
        let camel = Measurement::from_json(
            r#"{"type":"heartRate","occurrenceTimeUtc":"2019-02-01T22:46:01.875Z","ingestionTimeUtc":"2019-02-01T22:46:05.12Z","deviceId":"device123","properties":[{"name":"hr","value":"65"}]}"#,
        )
        .unwrap();
        assert_eq!(camel, sample());
    }

    #[test]
    fn rejects_incomplete_measurements() {
        let error = Measurement::from_json(r#"{"Type":"x","DeviceId":"d"}"#).unwrap_err();
        assert_eq!(error.0, "OccurrenceTimeUtc is required");
        assert!(Measurement::from_json("[1]").is_err());
        assert!(Measurement::from_json(r#"{"Type":"x","DeviceId":"d","OccurrenceTimeUtc":"soon"}"#).is_err());
    }
}
