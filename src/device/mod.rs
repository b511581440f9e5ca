//! Device-mapping templates (MedTech / iomt-fhir template language) and normalization of device
//! events into Measurements (compat.md §2–§7).
//!
//! [`DeviceTemplateSet::parse`] reads a `CollectionContent` template and reports every problem at
//! once with its position; [`DeviceTemplateSet::normalize`] applies all templates, in order, to
//! one event. Normalization is pure: time comes in as a parameter and nothing is logged.

mod extract;
mod template;

use std::fmt;

use chrono::{DateTime, Utc};

use crate::expr::{Expression, JmesCache};
use crate::json::{KeyDigest, ParseError, parse_spanned};
use crate::model::{DeviceEvent, Measurement, MeasurementText};
pub use crate::template::TemplateError;

/// A validated device-mapping template: the templates of a `CollectionContent`, in order.
#[derive(Debug)]
pub struct DeviceTemplateSet {
    templates: Vec<ContentTemplate>,
}

/// The four device template types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// `JsonPathContent`: JSONPath expressions relative to the matched token.
    JsonPath,
    /// `IotJsonPathContent`: IoT Hub envelope; device id and timestamp are fixed.
    IotJsonPath,
    /// `IotCentralJsonPathContent`: IoT Central export; device id and timestamp are fixed.
    IotCentralJsonPath,
    /// `CalculatedContent`: JSONPath or JMESPath against the envelope plus `matchedToken`.
    Calculated,
}

impl TemplateKind {
    /// The canonical `templateType` name.
    pub fn type_name(self) -> &'static str {
        match self {
            TemplateKind::JsonPath => "JsonPathContentTemplate",
            TemplateKind::IotJsonPath => "IotJsonPathContentTemplate",
            TemplateKind::IotCentralJsonPath => "IotCentralJsonPathContentTemplate",
            TemplateKind::Calculated => "CalculatedContentTemplate",
        }
    }

    /// The name the original's messages use for the container.
    fn container_name(self) -> &'static str {
        match self {
            TemplateKind::JsonPath => "JsonPathContentTemplate",
            TemplateKind::IotJsonPath => "IotJsonPathContentTemplate",
            TemplateKind::IotCentralJsonPath => "IotCentralJsonPathContent",
            TemplateKind::Calculated => "CalculatedContent",
        }
    }

    /// The original's class name, used in "Could not find member" messages.
    fn class_name(self) -> &'static str {
        match self {
            TemplateKind::JsonPath => "JsonPathContentTemplate",
            TemplateKind::IotJsonPath => "IotJsonPathContentTemplate",
            TemplateKind::IotCentralJsonPath => "IotCentralJsonPathContentTemplate",
            TemplateKind::Calculated => "CalculatedFunctionContentTemplate",
        }
    }
}

/// One template of the collection, compiled.
#[derive(Debug)]
struct ContentTemplate {
    kind: TemplateKind,
    type_name: MeasurementText,
    type_match: Expression,
    /// Member names the type match needs; a message lacking any of them cannot match.
    type_match_keys: KeyDigest,
    device_id: Expression,
    /// Tried in order; IotJsonPath falls back from creation time to enqueued time.
    timestamps: Vec<Expression>,
    patient_id: Option<Expression>,
    encounter_id: Option<Expression>,
    correlation_id: Option<Expression>,
    values: Vec<ValueTemplate>,
}

#[derive(Debug)]
struct ValueTemplate {
    name: MeasurementText,
    expression: Expression,
    required: bool,
}

/// Why one device event produced no Measurements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct NormalizeError {
    /// The error's kind, named after the original's exception types.
    pub kind: NormalizeErrorKind,
    /// What went wrong, naming the template field; never the value itself.
    pub message: String,
}

/// Kinds of normalization errors (the original's exception names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormalizeErrorKind {
    /// The body is not JSON.
    InvalidDataFormat,
    /// A required value is missing, empty or of the wrong type; a timestamp does not parse.
    IncompatibleData,
    /// An expression failed: several tokens where one is expected, a JMESPath function error.
    TemplateExpression,
}

impl NormalizeErrorKind {
    /// The original's exception name, used as the error kind on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            NormalizeErrorKind::InvalidDataFormat => "InvalidDataFormatException",
            NormalizeErrorKind::IncompatibleData => "IncompatibleDataException",
            NormalizeErrorKind::TemplateExpression => "TemplateExpressionException",
        }
    }
}

impl fmt::Display for NormalizeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl NormalizeError {
    /// The error for a body that is not JSON.
    pub fn invalid_json(error: &dyn fmt::Display) -> Self {
        NormalizeError {
            kind: NormalizeErrorKind::InvalidDataFormat,
            message: format!("Invalid event message. Cannot be parsed into a JSON object. {error}"),
        }
    }

    /// The error for a line that is not an event envelope.
    pub fn invalid_envelope(detail: &str) -> Self {
        NormalizeError {
            kind: NormalizeErrorKind::InvalidDataFormat,
            message: detail.to_string(),
        }
    }

    fn incompatible(message: String) -> Self {
        NormalizeError {
            kind: NormalizeErrorKind::IncompatibleData,
            message,
        }
    }

    fn expression(message: String) -> Self {
        NormalizeError {
            kind: NormalizeErrorKind::TemplateExpression,
            message,
        }
    }
}

impl From<ParseError> for NormalizeError {
    fn from(error: ParseError) -> Self {
        NormalizeError::invalid_json(&error)
    }
}

impl DeviceTemplateSet {
    /// Parses and validates a device-mapping template, reporting every error with its position.
    pub fn parse(text: &str) -> Result<Self, Vec<TemplateError>> {
        let root = parse_spanned(text).map_err(|(pos, message)| vec![TemplateError::at(pos, message)])?;
        let mut errors = Vec::new();
        let templates = template::read_collection(&root, &mut errors);
        if errors.is_empty() {
            Ok(DeviceTemplateSet { templates })
        } else {
            Err(errors)
        }
    }

    /// Number of templates in the collection.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// True when the collection is empty (valid; it produces nothing).
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The `typeName`s of the templates, in order.
    pub fn type_names(&self) -> impl Iterator<Item = &str> {
        self.templates.iter().map(|t| t.type_name.as_str())
    }

    /// Applies every template, in order, to one event. All Measurements of the event, or the
    /// first error: a message either normalizes completely or not at all. `now` is the ingestion
    /// time when the event carries no enqueued time, and supplies the date for time-only
    /// timestamps.
    pub fn normalize(&self, event: &DeviceEvent, now: DateTime<Utc>) -> Result<Vec<Measurement>, NormalizeError> {
        let mut measurements = Vec::new();
        self.normalize_into(event, now, &mut measurements)?;
        Ok(measurements)
    }

    /// [`DeviceTemplateSet::normalize`], appending to `out` so that a caller normalizing many
    /// events reuses one buffer. On error `out` is left as it was.
    pub fn normalize_into(
        &self,
        event: &DeviceEvent,
        now: DateTime<Utc>,
        out: &mut Vec<Measurement>,
    ) -> Result<(), NormalizeError> {
        let envelope = event.envelope();
        let envelope_view = JmesCache::default();
        let today = now.date_naive();
        let first = out.len();
        let keys = event.keys();
        for template in &self.templates {
            if keys.may_contain_all(template.type_match_keys)
                && let Err(error) = template.extract(envelope, &envelope_view, today, out)
            {
                out.truncate(first);
                return Err(error);
            }
        }
        let ingestion = event.enqueued_time().unwrap_or(now);
        for measurement in &mut out[first..] {
            measurement.ingestion_time_utc = Some(ingestion);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventFormat;

    /// Appends after what the buffer holds, and on error leaves it exactly as it was, even when
    /// an earlier template of the failing event already produced a Measurement.
    #[test]
    fn normalize_into_appends_or_leaves_the_buffer_alone() {
        let templates = DeviceTemplateSet::parse(
            r#"{"templateType":"CollectionContent","template":[
                {"templateType":"JsonPathContent","template":{"typeName":"hr","typeMatchExpression":"$..[?(@hr)]",
                 "deviceIdExpression":"$.id","timestampExpression":"$.t","values":[{"required":true,"valueExpression":"$.hr","valueName":"hr"}]}},
                {"templateType":"JsonPathContent","template":{"typeName":"rr","typeMatchExpression":"$..[?(@rr)]",
                 "deviceIdExpression":"$.id","timestampExpression":"$.t","values":[{"required":true,"valueExpression":"$.rr","valueName":"rr"}]}}
            ]}"#,
        )
        .unwrap();
        let now = Utc::now();
        let event = |body: &str| DeviceEvent::parse(body, EventFormat::Body).unwrap();
        let good = event(r#"{"id":"d1","t":"2024-03-01T08:00:00Z","hr":61,"rr":12}"#);
        let mut out = templates.normalize(&good, now).unwrap();
        assert_eq!(out.len(), 2);

        templates.normalize_into(&good, now, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(out[2..], out[..2]);

        let second_fails = event(r#"{"id":"d1","t":"2024-03-01T08:00:00Z","hr":61,"rr":null}"#);
        let error = templates.normalize_into(&second_fails, now, &mut out).unwrap_err();
        assert_eq!(error.kind, NormalizeErrorKind::IncompatibleData);
        assert_eq!(out.len(), 4);
    }
}
