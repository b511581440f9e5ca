//! The interfaces the pipeline needs from the outside world. Adapters implement them; tests can
//! implement them in memory.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::fhir::Json;
use crate::json::JObject;
use crate::model::Measurement;
use crate::pipeline::deadletter::{DeadLetterRecord, Origin};

/// The FHIR operations the connector uses.
#[async_trait]
pub trait FhirApi: Send + Sync + fmt::Debug {
    /// Searches `resource_type` with `params` (names and unencoded values) and returns the
    /// matching resources of that type, following `next` links until `limit` resources (all when
    /// `None`).
    async fn search(
        &self,
        resource_type: &str,
        params: &[(&str, String)],
        limit: Option<usize>,
    ) -> Result<Vec<Json>, FhirApiError>;

    /// Creates or updates `resource` at `{resourceType}/{id}`; with `if_match` (a `versionId`) the
    /// write only happens if that is still the current version. Returns the stored resource.
    async fn put(&self, resource: &Json, if_match: Option<&str>) -> Result<Json, FhirApiError>;

    /// Runs the requests as one `batch` Bundle. The outer error is for the Bundle as a whole;
    /// each entry has its own result, in request order.
    async fn batch(&self, requests: Vec<BatchRequest>) -> Result<Vec<Result<BatchReply, FhirApiError>>, FhirApiError>;
}

/// One entry of a `batch` Bundle.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchRequest {
    /// A search, as [`FhirApi::search`] without a limit.
    Search {
        /// The resource type searched.
        resource_type: String,
        /// Parameter names and unencoded values.
        params: Vec<(String, String)>,
    },
    /// A write, as [`FhirApi::put`].
    Put {
        /// The resource, with its id.
        resource: Json,
        /// The expected current `versionId`.
        if_match: Option<String>,
    },
}

/// The successful result of a batch entry.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchReply {
    /// The resources a search found (every page).
    Found(Vec<Json>),
    /// The resource a write stored.
    Stored(Json),
}

/// Why a FHIR request failed, classified by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FhirApiError {
    /// The class of failure.
    pub kind: FhirApiErrorKind,
    /// The HTTP status, when there was a response.
    pub status: Option<u16>,
    /// What happened: the request method and path, the status and the server's diagnostics
    /// (never tokens, never resource content).
    pub message: String,
}

/// Classes of FHIR request failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirApiErrorKind {
    /// The server was unreachable, timed out, throttled (429) or failed (5xx, 408) and retrying
    /// within the time budget did not help. Retry later; the data is fine.
    Transient,
    /// 409 or 412: another writer changed the resource first. Re-read and merge again.
    Conflict,
    /// 401 or 403: the connector is not allowed; a configuration problem, not a data problem.
    Unauthorized,
    /// Another 4xx (400, 404, 422, …): the server rejects this request or resource. A data
    /// problem: retrying cannot help.
    Rejected,
    /// The server answered with something that is not the FHIR it should be.
    InvalidResponse,
}

impl FhirApiError {
    /// An error of `kind`.
    pub fn new(kind: FhirApiErrorKind, status: Option<u16>, message: impl Into<String>) -> Self {
        FhirApiError {
            kind,
            status,
            message: message.into(),
        }
    }

    /// True for failures that retrying later may cure.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, FhirApiErrorKind::Transient | FhirApiErrorKind::Unauthorized)
    }

    /// True when the server refuses this request, or answers it with something unusable:
    /// retrying cannot help, so the data concerned is set aside rather than retried.
    pub fn is_data_fault(&self) -> bool {
        matches!(
            self.kind,
            FhirApiErrorKind::Rejected | FhirApiErrorKind::InvalidResponse
        )
    }
}

/// An event read from a partition of a source (an Event Hub, a file).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceEvent {
    /// Where it came from.
    pub origin: Origin,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Application properties.
    pub properties: JObject,
    /// System properties (IoT Hub's `iothub-*`, Event Hubs' `x-opt-*`).
    pub system_properties: JObject,
}

/// A partition of a source: events in order, and a checkpoint to resume after.
#[async_trait]
pub trait PartitionSource: Send {
    /// The partition id.
    fn partition_id(&self) -> &str;

    /// Up to `max` events, waiting at most `wait` for the first; empty when none came.
    async fn receive(&mut self, max: usize, wait: Duration) -> Result<Vec<SourceEvent>, SourceError>;

    /// Records that every event up to and including `through` is done with: a restart resumes
    /// after it.
    async fn checkpoint(&mut self, through: &Origin) -> Result<(), SourceError>;
}

/// Why a source stopped giving events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The partition went to another owner: stop processing it without writing more.
    #[error("the partition is closed: {0}")]
    Closed(String),
    /// The connection under the partition dropped; the partition is still this process's until a
    /// new connection claims it again, from the checkpoint: persist what was processed, then stop.
    #[error("the partition's connection dropped: {0}")]
    Disconnected(String),
    /// The input ended (a file): write what waits, checkpoint, stop.
    #[error("the input ended: {0}")]
    Ended(String),
    /// A failure worth retrying.
    #[error("{0}")]
    Transient(String),
}

/// A failure of a sink or store that retrying later may cure (the data is fine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransientError(pub String);

/// Where normalized Measurements go (the `normalizeddata` Event Hub).
#[async_trait]
pub trait MeasurementSink: Send + Sync {
    /// Sends the Measurements, each keyed by its device so one device stays on one partition.
    /// Returns the indices of Measurements too large to send at all (a data problem).
    async fn send(&self, measurements: &[Measurement]) -> Result<Vec<usize>, TransientError>;
}

/// Where dead-letter records are kept.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Stores the records (durably, before the caller checkpoints past them).
    async fn write(&self, records: &[DeadLetterRecord]) -> Result<(), TransientError>;

    /// Every stored record with its name.
    async fn list(&self) -> Result<Vec<(String, DeadLetterRecord)>, TransientError>;

    /// Removes a record (after a successful redrive).
    async fn remove(&self, name: &str) -> Result<(), TransientError>;
}

/// Small named documents with optimistic concurrency (per-partition window snapshots).
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The document and its version tag, if it exists.
    async fn load(&self, name: &str) -> Result<Option<(Vec<u8>, String)>, StateError>;

    /// Writes the document if its version is still `expected` (`None`: it must not exist yet);
    /// returns the new version tag.
    async fn save(&self, name: &str, data: &[u8], expected: Option<&str>) -> Result<String, StateError>;
}

/// Why a state document could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Someone else wrote it since we read it: this process no longer owns the partition.
    #[error("the state was changed by another owner")]
    Conflict,
    /// A failure worth retrying.
    #[error("{0}")]
    Transient(String),
}
