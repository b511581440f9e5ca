//! A device event as templates see it: `{"Body": …, "Properties": {…}, "SystemProperties": {…}}`
//! (compat.md §4.1).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::time::parse_utc_lenient;
use crate::json::{JObject, JToken, JsonDate, KeyDigest, ParseError, parse_message_keyed};

/// System properties that carry the time the event was enqueued, in order of preference.
pub const ENQUEUED_TIME_PROPERTIES: [&str; 2] = ["iothub-enqueuedtime", "x-opt-enqueued-time"];

const BODY: &str = "Body";
const PROPERTIES: &str = "Properties";
const SYSTEM_PROPERTIES: &str = "SystemProperties";

/// How each input line of `iomt normalize` is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventFormat {
    /// The line is the event body.
    #[default]
    Body,
    /// The line is already `{"Body": …, "Properties": {…}, "SystemProperties": {…}}`.
    Envelope,
}

/// One device event in the envelope templates are evaluated against.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEvent {
    envelope: JToken,
    keys: KeyDigest,
}

impl DeviceEvent {
    /// An event with this body and no properties.
    pub fn from_body(body: JToken) -> Self {
        Self::new(body, JObject::new(), JObject::new())
    }

    /// An event from its parts.
    pub fn new(body: JToken, properties: JObject, system_properties: JObject) -> Self {
        Self::with_keys(body, properties, system_properties, None)
    }

    /// `keys`, when given, must cover every member name of the parts (a superset is fine).
    fn with_keys(body: JToken, properties: JObject, system_properties: JObject, keys: Option<KeyDigest>) -> Self {
        static ENVELOPE_KEYS: LazyLock<KeyDigest> =
            LazyLock::new(|| KeyDigest::of_names([BODY, PROPERTIES, SYSTEM_PROPERTIES]));
        let envelope = JToken::Object(JObject::from_unique(vec![
            (BODY.into(), body),
            (PROPERTIES.into(), JToken::Object(properties)),
            (SYSTEM_PROPERTIES.into(), JToken::Object(system_properties)),
        ]));
        let keys = match keys {
            Some(keys) => keys.union(*ENVELOPE_KEYS),
            None => KeyDigest::of_token(&envelope),
        };
        DeviceEvent { keys, envelope }
    }

    /// An event from a parsed envelope. A missing `Body` is null, missing property bags are
    /// empty; other members are dropped, as the original's envelope has only these three.
    pub fn from_envelope(token: JToken) -> Result<Self, String> {
        Self::envelope_with_keys(token, None)
    }

    fn envelope_with_keys(token: JToken, keys: Option<KeyDigest>) -> Result<Self, String> {
        if let JToken::Object(object) = &token
            && is_canonical(object)
        {
            // Already the envelope the event keeps: no need to take it apart and rebuild it.
            let keys = keys.unwrap_or_else(|| KeyDigest::of_token(&token));
            return Ok(DeviceEvent { keys, envelope: token });
        }
        let JToken::Object(object) = token else {
            return Err(format!(
                "An envelope must be a JSON object with Body, Properties and SystemProperties, found {}.",
                token.type_name()
            ));
        };
        let (mut body, mut properties, mut system_properties) = (JToken::Null, None, None);
        for (name, value) in object.into_properties() {
            match &*name {
                BODY => body = value,
                PROPERTIES => properties = Some(value),
                SYSTEM_PROPERTIES => system_properties = Some(value),
                _ => {}
            }
        }
        let bag = |name: &str, value: Option<JToken>| -> Result<JObject, String> {
            match value {
                None | Some(JToken::Null) => Ok(JObject::new()),
                Some(JToken::Object(bag)) => Ok(bag),
                Some(other) => Err(format!(
                    "Envelope member {name} must be an object, found {}.",
                    other.type_name()
                )),
            }
        };
        let properties = bag(PROPERTIES, properties)?;
        let system_properties = bag(SYSTEM_PROPERTIES, system_properties)?;
        Ok(Self::with_keys(body, properties, system_properties, keys))
    }

    /// Parses one input line in the given format. The JSON is read as the original read a message
    /// body (`JToken.ReadFrom`: Json.NET's leniency, text after the first value ignored); an
    /// envelope allows for its one extra level of nesting.
    pub fn parse(line: &str, format: EventFormat) -> Result<Self, EventParseError> {
        match format {
            EventFormat::Body => {
                let (body, keys) = parse_message_keyed(line, 0).map_err(EventParseError::Json)?;
                Ok(Self::with_keys(body, JObject::new(), JObject::new(), Some(keys)))
            }
            EventFormat::Envelope => {
                let (token, keys) = parse_message_keyed(line, 1).map_err(EventParseError::Json)?;
                Self::envelope_with_keys(token, Some(keys)).map_err(EventParseError::Envelope)
            }
        }
    }

    /// The whole envelope.
    pub fn envelope(&self) -> &JToken {
        &self.envelope
    }

    /// The member names occurring anywhere in the envelope.
    pub fn keys(&self) -> KeyDigest {
        self.keys
    }

    /// The event body.
    pub fn body(&self) -> &JToken {
        self.envelope.get(BODY).unwrap_or(&JToken::Null)
    }

    /// The time the event was enqueued, from `iothub-enqueuedtime` or `x-opt-enqueued-time`.
    pub fn enqueued_time(&self) -> Option<DateTime<Utc>> {
        let system = self.envelope.get(SYSTEM_PROPERTIES)?;
        ENQUEUED_TIME_PROPERTIES
            .iter()
            .filter_map(|name| system.get(name))
            .find_map(|value| match value {
                JToken::Date(date) => Some(date.to_utc()),
                JToken::String(text) => parse_utc_lenient(text),
                JToken::Integer(millis) => JsonDate::from_unix_millis(*millis).map(|d| d.to_utc()),
                _ => None,
            })
    }
}

/// True when `object` is already an envelope as a [`DeviceEvent`] keeps it: exactly `Body`,
/// `Properties` and `SystemProperties`, in that order, with object bags.
fn is_canonical(object: &JObject) -> bool {
    let mut members = object.iter();
    matches!(
        (members.next(), members.next(), members.next(), members.next()),
        (
            Some((BODY, _)),
            Some((PROPERTIES, JToken::Object(_))),
            Some((SYSTEM_PROPERTIES, JToken::Object(_))),
            None
        )
    )
}

/// Why an input line is not a device event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventParseError {
    /// The line is not JSON.
    #[error("{0}")]
    Json(ParseError),
    /// The line is JSON but not an envelope.
    #[error("{0}")]
    Envelope(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envelopes in canonical form are kept as parsed; any other layout is rebuilt into it, so
    /// both give the same event.
    #[test]
    fn canonical_and_reordered_envelopes_give_the_same_event() {
        let canonical = r#"{"Body":{"hr":1},"Properties":{"p":"x"},"SystemProperties":{"s":2}}"#;
        let variants = [
            r#"{"SystemProperties":{"s":2},"Body":{"hr":1},"Properties":{"p":"x"}}"#,
            r#"{"Body":{"hr":1},"Properties":{"p":"x"},"SystemProperties":{"s":2},"Extra":true}"#,
        ];
        let expected = DeviceEvent::parse(canonical, EventFormat::Envelope).unwrap();
        assert_eq!(expected.envelope().to_json(), canonical);
        for variant in variants {
            let event = DeviceEvent::parse(variant, EventFormat::Envelope).unwrap();
            assert_eq!(event.envelope(), expected.envelope(), "{variant}");
            assert!(event.keys().may_contain_all(expected.keys()), "{variant}");
        }
        let from_token = DeviceEvent::from_envelope(crate::json::parse_token(canonical).unwrap()).unwrap();
        assert_eq!(from_token.keys(), expected.keys());
        let null_bags = DeviceEvent::parse(
            r#"{"Body":1,"Properties":null,"SystemProperties":{}}"#,
            EventFormat::Envelope,
        );
        assert_eq!(
            null_bags.unwrap().envelope().to_json(),
            r#"{"Body":1,"Properties":{},"SystemProperties":{}}"#
        );
    }

    #[test]
    fn wraps_a_body_in_the_envelope() {
        let event = DeviceEvent::parse(r#"{"hr":65}"#, EventFormat::Body).unwrap();
        assert_eq!(
            event.envelope().to_json(),
            r#"{"Body":{"hr":65},"Properties":{},"SystemProperties":{}}"#
        );
    }

    #[test]
    fn reads_envelopes_and_enqueued_time() {
        let event = DeviceEvent::parse(
            r#"{"Body":{"hr":1},"SystemProperties":{"iothub-enqueuedtime":"2019-02-01T22:46:01.875Z"},"Extra":1}"#,
            EventFormat::Envelope,
        )
        .unwrap();
        assert_eq!(
            event.envelope().to_json(),
            r#"{"Body":{"hr":1},"Properties":{},"SystemProperties":{"iothub-enqueuedtime":"2019-02-01T22:46:01.875Z"}}"#
        );
        assert_eq!(
            crate::model::format_utc(event.enqueued_time().unwrap()),
            "2019-02-01T22:46:01.875Z"
        );
        assert!(DeviceEvent::parse("[1]", EventFormat::Envelope).is_err());
        assert!(
            DeviceEvent::parse(
                r#"{"Body":1,"Properties":{},"SystemProperties":[]}"#,
                EventFormat::Envelope
            )
            .is_err()
        );
        assert!(DeviceEvent::parse(r#"{"Properties":1}"#, EventFormat::Envelope).is_err());
    }
}
