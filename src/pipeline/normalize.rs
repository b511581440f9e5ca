//! The normalize step over source events: device events in, Measurements out; a message that
//! cannot be normalized becomes a dead-letter record, one that no template matches is counted.

use chrono::{DateTime, Utc};

use crate::device::{DeviceTemplateSet, NormalizeError};
use crate::json::{JObject, JToken, parse_message};
use crate::model::{DeviceEvent, Measurement};
use crate::pipeline::deadletter::{DeadLetterRecord, PayloadKind, Stage};
use crate::pipeline::ports::SourceEvent;

/// What normalizing a batch of events produced.
#[derive(Debug, Default)]
pub struct Normalized {
    /// Measurements, each with the index of the event it came from.
    pub measurements: Vec<(Measurement, usize)>,
    /// Events that failed, as dead-letter records.
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Events no template matched (the original's `DroppedEvent`).
    pub unmatched: usize,
}

/// The largest message body normalized (1 MiB, what an Event Hubs event can carry); larger ones,
/// which only local input can produce, are dead-lettered unparsed.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The error kind of a message over [`MAX_EVENT_BYTES`].
pub const TOO_LARGE: &str = "MessageTooLargeException";

/// The device event of a source event: the body parsed as the original parses a message body
/// (empty is null), with the event's properties.
pub fn device_event(event: &SourceEvent) -> Result<DeviceEvent, NormalizeError> {
    let text =
        std::str::from_utf8(&event.body).map_err(|_| NormalizeError::invalid_json(&"the body is not UTF-8 text"))?;
    let body = if text.trim().is_empty() {
        JToken::Null
    } else {
        parse_message(text, 0).map_err(NormalizeError::from)?
    };
    Ok(DeviceEvent::new(
        body,
        event.properties.clone(),
        event.system_properties.clone(),
    ))
}

/// Normalizes `events` with `templates`.
pub fn normalize_events(templates: &DeviceTemplateSet, events: &[SourceEvent], now: DateTime<Utc>) -> Normalized {
    let mut out = Normalized::default();
    let mut measurements = Vec::new();
    for (index, event) in events.iter().enumerate() {
        if event.body.len() > MAX_EVENT_BYTES {
            let message = format!(
                "The message body is {} bytes; messages up to {MAX_EVENT_BYTES} bytes (the Event Hubs maximum) are normalized.",
                event.body.len()
            );
            out.dead_letters
                .push(dead_letter(event, Stage::Normalize, TOO_LARGE, &message, now));
            continue;
        }
        match device_event(event)
            .and_then(|device_event| templates.normalize_into(&device_event, now, &mut measurements))
        {
            Ok(()) if measurements.is_empty() => out.unmatched += 1,
            Ok(()) => out.measurements.extend(measurements.drain(..).map(|m| (m, index))),
            Err(error) => out.dead_letters.push(dead_letter(
                event,
                Stage::Normalize,
                error.kind.as_str(),
                &error.message,
                now,
            )),
        }
    }
    out
}

/// A dead-letter record of a device event.
pub fn dead_letter(
    event: &SourceEvent,
    stage: Stage,
    kind: &str,
    message: &str,
    now: DateTime<Utc>,
) -> DeadLetterRecord {
    DeadLetterRecord::new(
        stage,
        kind,
        message,
        &event.origin,
        PayloadKind::DeviceEvent,
        &event.body,
        to_map(&event.properties),
        to_map(&event.system_properties),
        now,
    )
}

/// A property bag as a serde JSON object (dates as their Json.NET text).
pub fn to_map(object: &JObject) -> serde_json::Map<String, serde_json::Value> {
    serde_json::from_str(&JToken::Object(object.clone()).to_json()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::deadletter::Origin;

    const TEMPLATE: &str = r#"{"templateType":"CollectionContent","template":[{"templateType":"JsonPathContent","template":{
        "typeName":"heartrate","typeMatchExpression":"$..[?(@heartrate)]","deviceIdExpression":"$.deviceid",
        "timestampExpression":"$.time","values":[{"required":"true","valueExpression":"$.heartrate","valueName":"hr"}]}}]}"#;

    fn event(body: &[u8], sequence: i64) -> SourceEvent {
        SourceEvent {
            origin: Origin {
                partition: "0".into(),
                offset: (sequence * 100).to_string(),
                sequence_number: Some(sequence),
                enqueued_time: None,
            },
            body: body.to_vec(),
            properties: JObject::new(),
            system_properties: JObject::new(),
        }
    }

    #[test]
    fn good_bad_and_unmatched_events_are_told_apart() {
        let templates = DeviceTemplateSet::parse(TEMPLATE).unwrap();
        let now = Utc::now();
        let events = [
            event(br#"{"heartrate":70,"deviceid":"d1","time":"2024-03-01T08:00:00Z"}"#, 1),
            event(b"{not json", 2),
            event(br#"{"steps":3}"#, 3),
            event(br#"{"heartrate":71,"time":"2024-03-01T08:00:01Z"}"#, 4),
            event(b"\xff\xfe", 5),
            event(b"", 6),
        ];
        let normalized = normalize_events(&templates, &events, now);
        assert_eq!(normalized.measurements.len(), 1);
        assert_eq!(normalized.measurements[0].1, 0);
        assert_eq!(normalized.unmatched, 2, "the steps message and the empty body");
        let kinds: Vec<(&str, Option<i64>)> = normalized
            .dead_letters
            .iter()
            .map(|record| (record.error_kind.as_str(), record.sequence_number))
            .collect();
        assert_eq!(
            kinds,
            [
                ("InvalidDataFormatException", Some(2)),
                ("IncompatibleDataException", Some(4)),
                ("InvalidDataFormatException", Some(5))
            ]
        );
        assert_eq!(normalized.dead_letters[0].payload.as_deref(), Some("{not json"));
        assert_eq!(normalized.dead_letters[2].payload_bytes(), b"\xff\xfe");
    }

    #[test]
    fn oversize_messages_are_dead_lettered_unparsed() {
        let templates = DeviceTemplateSet::parse(TEMPLATE).unwrap();
        let mut body = br#"{"heartrate":70,"deviceid":"d1","time":"2024-03-01T08:00:00Z","pad":""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', MAX_EVENT_BYTES));
        body.extend(b"\"}");
        let normalized = normalize_events(&templates, &[event(&body, 1)], Utc::now());
        assert!(normalized.measurements.is_empty());
        assert_eq!(normalized.dead_letters[0].error_kind, TOO_LARGE);
        assert_eq!(normalized.dead_letters[0].payload_bytes(), body);
    }
}
