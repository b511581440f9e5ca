//! Dead-letter records (decision P4): a message or Measurement group that cannot be processed for
//! a data reason is kept with its original payload, where it came from and why, so processing
//! continues and the data can be re-driven after a fix.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::format_utc;

/// The pipeline stage that gave up on a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Device event → Measurements.
    Normalize,
    /// Measurements → Observations.
    Transform,
}

impl Stage {
    /// The stage's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Normalize => "normalize",
            Stage::Transform => "transform",
        }
    }
}

/// What the payload is, so a redrive knows where to send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PayloadKind {
    /// A device event body (with its properties): redriven through normalization.
    DeviceEvent,
    /// A normalized Measurement (wire JSON): redriven through the FHIR stage.
    Measurement,
    /// A partition snapshot of waiting Measurements that could not be read back: kept for
    /// inspection, never redriven.
    Snapshot,
}

/// One dead-lettered message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterRecord {
    /// The stage that failed.
    pub stage: Stage,
    /// The error kind (the original's exception name, e.g. `IncompatibleDataException`).
    pub error_kind: String,
    /// What went wrong.
    pub message: String,
    /// Source partition.
    pub partition: String,
    /// Source offset (Event Hubs offset, or `file:line` locally).
    pub offset: String,
    /// Source sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<i64>,
    /// When the source enqueued the message (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_time: Option<String>,
    /// When it was dead-lettered (RFC 3339).
    pub dead_lettered_at: String,
    /// What the payload is.
    pub payload_kind: PayloadKind,
    /// The payload as text when it is UTF-8, else absent (see `payload_base64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload in base64 when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Application properties of the message (JSON object).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// System properties of the message (JSON object).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub system_properties: serde_json::Map<String, serde_json::Value>,
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Origin {
    /// Partition id.
    pub partition: String,
    /// Offset within the partition.
    pub offset: String,
    /// Sequence number within the partition.
    pub sequence_number: Option<i64>,
    /// When it was enqueued.
    pub enqueued_time: Option<DateTime<Utc>>,
}

impl DeadLetterRecord {
    /// A record for `payload` from `origin`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stage: Stage,
        error_kind: &str,
        message: &str,
        origin: &Origin,
        payload_kind: PayloadKind,
        payload: &[u8],
        properties: serde_json::Map<String, serde_json::Value>,
        system_properties: serde_json::Map<String, serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Self {
        let (text, base64) = match std::str::from_utf8(payload) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(encode_base64(payload))),
        };
        DeadLetterRecord {
            stage,
            error_kind: error_kind.to_string(),
            message: message.to_string(),
            partition: origin.partition.clone(),
            offset: origin.offset.clone(),
            sequence_number: origin.sequence_number,
            enqueued_time: origin.enqueued_time.map(format_utc),
            dead_lettered_at: format_utc(now),
            payload_kind,
            payload: text,
            payload_base64: base64,
            properties,
            system_properties,
        }
    }

    /// The payload bytes.
    pub fn payload_bytes(&self) -> Vec<u8> {
        match (&self.payload, &self.payload_base64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(base64)) => decode_base64(base64).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    /// A name that sorts by time and is the same for the same failure of the same source event:
    /// `{stage}/{yyyy}/{MM}/{dd}/{HH}/{partition}-{sequence or offset}-{discriminator}.json`,
    /// dated by the event's enqueue time. Dead-lettering an event again (after a restart re-read
    /// it) overwrites its record instead of adding one.
    pub fn name(&self, discriminator: &str) -> String {
        let dated = self.enqueued_time.as_deref().unwrap_or(&self.dead_lettered_at);
        let date = dated.get(..13).unwrap_or("0000-00-00T00").replace(['-', 'T'], "/");
        let position = self
            .sequence_number
            .map(|sequence| sequence.to_string())
            .unwrap_or_else(|| self.offset.replace(['/', ':', '\\'], "_"));
        format!(
            "{}/{date}/{}-{position}-{discriminator}.json",
            self.stage.as_str(),
            self.partition.replace('/', "_")
        )
    }
}

fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_payloads_round_trip_through_base64() {
        for payload in [&b""[..], b"f", b"fo", b"foo", b"\xff\x00\xfe binary", &[0u8; 10]] {
            assert_eq!(decode_base64(&encode_base64(payload)).unwrap(), payload);
        }
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
    }

    #[test]
    fn records_keep_text_payloads_as_text_and_name_by_time_and_position() {
        let now = DateTime::parse_from_rfc3339("2024-03-01T08:15:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let origin = Origin {
            partition: "3".into(),
            offset: "4096".into(),
            sequence_number: Some(42),
            enqueued_time: Some(now),
        };
        let record = DeadLetterRecord::new(
            Stage::Normalize,
            "InvalidDataFormatException",
            "not JSON",
            &origin,
            PayloadKind::DeviceEvent,
            b"{broken",
            serde_json::Map::new(),
            serde_json::Map::new(),
            now,
        );
        assert_eq!(record.payload.as_deref(), Some("{broken"));
        assert_eq!(record.name("a1"), "normalize/2024/03/01/08/3-42-a1.json");
        let later = DeadLetterRecord {
            dead_lettered_at: "2024-03-02T00:00:00Z".into(),
            ..record.clone()
        };
        assert_eq!(
            later.name("a1"),
            record.name("a1"),
            "named by the event, not by when it failed"
        );
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""errorKind":"InvalidDataFormatException""#), "{json}");
        let back: DeadLetterRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
        let binary = DeadLetterRecord::new(
            Stage::Normalize,
            "InvalidDataFormatException",
            "not JSON",
            &origin,
            PayloadKind::DeviceEvent,
            b"\xff\xfe",
            serde_json::Map::new(),
            serde_json::Map::new(),
            now,
        );
        assert_eq!(binary.payload, None);
        assert_eq!(binary.payload_bytes(), b"\xff\xfe");
    }
}
