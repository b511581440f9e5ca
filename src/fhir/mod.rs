//! The FHIR side of the pipeline, as a pure core: FHIR mapping templates, grouping a batch of
//! Measurements into Observation windows, and building or merging Observations
//! (compat.md §8–§11). Talking to a FHIR server is an adapter's job; this module only turns data
//! into resources.

pub mod group;
pub mod identity;
pub mod json;
pub mod observation;
pub mod sampled_data;
pub mod template;
pub mod transform;

use std::fmt;

pub use json::{Json, Object};
pub use template::FhirTemplateSet;
pub use transform::{Batch, GroupFailure, Outcome, transform_batch};

/// The system of the service's own identifiers and codings (`FhirImportService.ServiceSystem`).
pub const SERVICE_SYSTEM: &str = "https://azure.microsoft.com/en-us/services/iomt-fhir-connector/";

/// Why a group of Measurements produced no Observation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct FhirError {
    /// The error's kind, named after the original's exception types.
    pub kind: FhirErrorKind,
    /// What went wrong; names types and ids, never reading values beyond the one at fault.
    pub message: String,
}

impl FhirError {
    /// An error of `kind`.
    pub fn new(kind: FhirErrorKind, message: impl Into<String>) -> Self {
        FhirError {
            kind,
            message: message.into(),
        }
    }
}

/// Kinds of FHIR conversion errors (the original's exception names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirErrorKind {
    /// A Measurement line is not a Measurement.
    MeasurementProcessing,
    /// No FHIR template for the Measurement type.
    TemplateNotFound,
    /// The template groups by correlation id and the Measurements have none.
    CorrelationIdNotDefined,
    /// A Quantity value is not a decimal.
    InvalidQuantityFhirValue,
    /// The Measurements lack an id an Observation must refer to (patient, device).
    ResourceIdentityNotDefined,
    /// The existing Observation cannot be merged into (another value type, several dimensions,
    /// no effective time).
    NotSupported,
    /// A Device, Patient or Encounter the Measurements refer to is not in the FHIR server.
    FhirResourceNotFound,
    /// Several resources match an identifier that must be unique.
    MultipleResourceFound,
    /// The device is linked to another patient than the Measurements name (identity mode Create).
    PatientDeviceMismatch,
    /// The FHIR server rejected a resource or request as invalid (a 4xx other than 408, 409,
    /// 412 and 429).
    RequestRejected,
}

impl FhirErrorKind {
    /// The original's exception name, used as the error kind on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FhirErrorKind::MeasurementProcessing => "MeasurementProcessingException",
            FhirErrorKind::TemplateNotFound => "TemplateNotFoundException",
            FhirErrorKind::CorrelationIdNotDefined => "CorrelationIdNotDefinedException",
            FhirErrorKind::InvalidQuantityFhirValue => "InvalidQuantityFhirValueException",
            FhirErrorKind::ResourceIdentityNotDefined => "ResourceIdentityNotDefinedException",
            FhirErrorKind::NotSupported => "NotSupportedException",
            FhirErrorKind::FhirResourceNotFound => "FhirResourceNotFoundException",
            FhirErrorKind::MultipleResourceFound => "MultipleResourceFoundException",
            FhirErrorKind::PatientDeviceMismatch => "PatientDeviceMismatchException",
            FhirErrorKind::RequestRejected => "FhirRequestRejectedException",
        }
    }
}

impl fmt::Display for FhirErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
