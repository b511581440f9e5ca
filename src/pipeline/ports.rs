//! The interfaces the pipeline needs from the outside world. Adapters implement them; tests can
//! implement them in memory.

use std::fmt;

use async_trait::async_trait;

use crate::fhir::Json;

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
}
