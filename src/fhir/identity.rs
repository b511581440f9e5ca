//! Identity resolution rules (compat.md §13) without I/O: the modes, identifier search tokens,
//! reading `Patient/{id}` references, the Patient and Device resources the Create mode writes,
//! and the errors, with the original's texts.

use std::fmt;
use std::str::FromStr;

use super::json::{Json, Object};
use super::observation::hashed_id;
use super::{FhirError, FhirErrorKind};

/// How Device, Patient and Encounter ids are found (`ResourceIdentityServiceType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityMode {
    /// The Device must exist and link to its Patient (the default).
    #[default]
    Lookup,
    /// As `Lookup`, and every Measurement must name an Encounter that exists.
    LookupWithEncounter,
    /// As `Lookup`, but a missing Patient or Device is created from the Measurement's ids.
    Create,
}

impl FromStr for IdentityMode {
    type Err = String;

    /// The original's names (`Lookup`, `LookupWithEncounter`, `Create`), its class names, and
    /// kebab-case, in any letter case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "lookup" | "r4deviceandpatientlookupidentityservice" => Ok(IdentityMode::Lookup),
            "lookupwithencounter"
            | "lookup-with-encounter"
            | "r4deviceandpatientwithencounterlookupidentityservice" => Ok(IdentityMode::LookupWithEncounter),
            "create" | "r4deviceandpatientcreateidentityservice" => Ok(IdentityMode::Create),
            _ => Err(format!(
                "unknown identity mode '{text}': use lookup, lookup-with-encounter or create"
            )),
        }
    }
}

impl fmt::Display for IdentityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdentityMode::Lookup => "lookup",
            IdentityMode::LookupWithEncounter => "lookup-with-encounter",
            IdentityMode::Create => "create",
        })
    }
}

/// The FHIR resource types identity resolution deals with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityResource {
    /// `Device`.
    Device,
    /// `Patient`.
    Patient,
    /// `Encounter`.
    Encounter,
}

impl IdentityResource {
    /// The FHIR resource type name.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityResource::Device => "Device",
            IdentityResource::Patient => "Patient",
            IdentityResource::Encounter => "Encounter",
        }
    }
}

/// An identifier search token: `system|value`, or `value` alone when there is no system.
pub fn identifier_token(system: Option<&str>, value: &str) -> String {
    match system.filter(|system| !system.trim().is_empty()) {
        Some(system) => format!("{system}|{value}"),
        None => value.to_string(),
    }
}

/// The id in a relative reference `{resource_type}/{id}` (type prefix in any case; the id made
/// of `[A-Za-z0-9_.\-~#]`), as the original's `GetId<T>` reads it. Absolute URLs, version
/// suffixes and contained references give `None`.
pub fn reference_id<'r>(reference: Option<&'r Json>, resource_type: &str) -> Option<&'r str> {
    let text = reference?.get("reference")?.as_str()?;
    let (name, id) = text.split_once('/')?;
    if !name.eq_ignore_ascii_case(resource_type) {
        return None;
    }
    let valid = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '~' | '#'));
    valid.then_some(id)
}

/// A resource's logical id.
pub fn resource_id(resource: &Json) -> Option<&str> {
    resource.get("id")?.as_str()
}

/// A resource's `meta.versionId`.
pub fn version_id(resource: &Json) -> Option<&str> {
    resource.get("meta")?.get("versionId")?.as_str()
}

/// The Patient the Create mode writes for a Measurement's patient id: identifier `{value}` (no
/// system), id `sha256("_" + value)`.
pub fn new_patient(patient_identifier: &str) -> Json {
    Json::Object(
        Object::new()
            .with("resourceType", Json::str("Patient"))
            .with("id", Json::str(hashed_id(None, patient_identifier)))
            .with("identifier", identifiers(None, patient_identifier)),
    )
}

/// The Device the Create mode writes: identifier `{system?, value}`, id
/// `sha256("{system}_{value}")`, linked to `Patient/{patient_id}`.
pub fn new_device(device_identifier: &str, system: Option<&str>, patient_id: &str) -> Json {
    let system = system.filter(|system| !system.trim().is_empty());
    Json::Object(
        Object::new()
            .with("resourceType", Json::str("Device"))
            .with("id", Json::str(hashed_id(system, device_identifier)))
            .with("identifier", identifiers(system, device_identifier))
            .with("patient", patient_reference(patient_id)),
    )
}

/// `{"reference": "Patient/{id}"}`.
pub fn patient_reference(patient_id: &str) -> Json {
    Json::Object(Object::new().with("reference", Json::str(format!("Patient/{patient_id}"))))
}

fn identifiers(system: Option<&str>, value: &str) -> Json {
    Json::Array(vec![Json::Object(
        Object::new()
            .with("system", system.map(Json::str))
            .with("value", Json::str(value)),
    )])
}

/// `FhirResourceNotFoundException`: "Fhir resource of type {type} not found.", naming what was
/// looked for.
pub fn not_found(resource: IdentityResource, looked_for: &str) -> FhirError {
    FhirError::new(
        FhirErrorKind::FhirResourceNotFound,
        format!("Fhir resource of type {} not found. {looked_for}", resource.as_str()),
    )
}

/// `ResourceIdentityNotDefinedException`: the Measurements lack the id needed.
pub fn identity_not_defined(resource: IdentityResource, device_id: &str) -> FhirError {
    let member = match resource {
        IdentityResource::Device => "DeviceId",
        IdentityResource::Patient => "PatientId",
        IdentityResource::Encounter => "EncounterId",
    };
    FhirError::new(
        FhirErrorKind::ResourceIdentityNotDefined,
        format!(
            "Fhir resource of type {} not found. The Measurements of device '{device_id}' carry no {member}.",
            resource.as_str()
        ),
    )
}

/// `PatientDeviceMismatchException`: the Device's `patient` is another Patient (or a reference
/// that is not `Patient/{id}`).
pub fn patient_device_mismatch(device_id: &str, linked_reference: &str, expected: &str) -> FhirError {
    FhirError::new(
        FhirErrorKind::PatientDeviceMismatch,
        format!("Device/{device_id} is linked to '{linked_reference}', not to Patient/{expected} of the Measurements."),
    )
}

/// `MultipleResourceFoundException`, listing the resources' ids, versions and update times.
pub fn multiple_found(resource_type: &str, found: &[Json]) -> FhirError {
    let metadata: Vec<String> = found
        .iter()
        .map(|resource| {
            format!(
                "[Resource Id:{}; VersionId:{}; LastUpdated:{}]",
                resource_id(resource).unwrap_or(""),
                version_id(resource).unwrap_or(""),
                resource
                    .get("meta")
                    .and_then(|meta| meta.get("lastUpdated"))
                    .and_then(Json::as_str)
                    .unwrap_or("")
            )
        })
        .collect();
    FhirError::new(
        FhirErrorKind::MultipleResourceFound,
        format!(
            "Multiple resources {} of type Hl7.Fhir.Model.{resource_type} found, expected one. Resource metadata: {}.",
            found.len(),
            metadata.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> Json {
        Json::parse(&format!(r#"{{"reference":"{text}"}}"#)).unwrap()
    }

    #[test]
    fn modes_parse_the_original_names_in_any_case() {
        assert_eq!("Lookup".parse(), Ok(IdentityMode::Lookup));
        assert_eq!("LOOKUPWITHENCOUNTER".parse(), Ok(IdentityMode::LookupWithEncounter));
        assert_eq!("lookup-with-encounter".parse(), Ok(IdentityMode::LookupWithEncounter));
        assert_eq!(
            "R4DeviceAndPatientCreateIdentityService".parse(),
            Ok(IdentityMode::Create)
        );
        assert!("Guess".parse::<IdentityMode>().is_err());
    }

    #[test]
    fn references_read_like_the_original() {
        // ModelExtensionsTests.
        assert_eq!(reference_id(Some(&reference("Patient/123")), "Patient"), Some("123"));
        assert_eq!(reference_id(Some(&reference("patient/123")), "Patient"), Some("123"));
        assert_eq!(
            reference_id(
                Some(&reference("Not a reference in the form of: ResourceName/Identifier")),
                "Patient"
            ),
            None
        );
        assert_eq!(reference_id(Some(&reference("Patient/123?_id=123")), "Patient"), None);
        assert_eq!(
            reference_id(Some(&reference("Patient/123/_history/2")), "Patient"),
            None
        );
        assert_eq!(
            reference_id(Some(&reference("https://x/fhir/Patient/1")), "Patient"),
            None
        );
        assert_eq!(reference_id(Some(&reference("Device/1")), "Patient"), None);
        // Not ASCII where the type name ends: no match, and no panic.
        assert_eq!(reference_id(Some(&reference("Patien\u{e9}/1")), "Patient"), None);
        assert_eq!(reference_id(Some(&reference("Pati\u{e9}nt/1")), "Patient"), None);
        assert_eq!(reference_id(None, "Patient"), None);
    }

    #[test]
    fn created_resources_have_deterministic_ids() {
        // notes §5.7: sha256("_patientId"), sha256("_deviceId"), sha256("mySystem_deviceId").
        let patient = new_patient("patientId");
        assert_eq!(
            resource_id(&patient),
            Some("bf7c741785b9bbaa3e63dd3637c0acb9caa211351ff2ca17d9474c20c1cdb683")
        );
        assert!(patient.to_json().contains(r#""identifier":[{"value":"patientId"}]"#));
        let device = new_device("deviceId", None, "p1");
        assert_eq!(
            resource_id(&device),
            Some("96b1d91b8c1066c6093f8699cbd01fd2e9e8956cbad873307dcbd44449aafd13")
        );
        let device = new_device("deviceId", Some("mySystem"), "p1");
        assert_eq!(
            resource_id(&device),
            Some("fd6eb28968a94406c73e4c3b6f05a142f71e3a1a27f3cf9435019cae48069afa")
        );
        assert_eq!(
            device.to_json(),
            r#"{"resourceType":"Device","id":"fd6eb28968a94406c73e4c3b6f05a142f71e3a1a27f3cf9435019cae48069afa","identifier":[{"system":"mySystem","value":"deviceId"}],"patient":{"reference":"Patient/p1"}}"#
        );
    }

    #[test]
    fn search_tokens_omit_an_empty_system() {
        assert_eq!(identifier_token(Some("abc"), "123"), "abc|123");
        assert_eq!(identifier_token(Some(" "), "123"), "123");
        assert_eq!(identifier_token(None, "123"), "123");
    }

    #[test]
    fn multiple_found_lists_the_resources() {
        let found = [
            Json::parse(r#"{"id":"a","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00Z"}}"#).unwrap(),
            Json::parse(r#"{"id":"b","meta":{"versionId":"3"}}"#).unwrap(),
        ];
        assert_eq!(
            multiple_found("Device", &found).message,
            "Multiple resources 2 of type Hl7.Fhir.Model.Device found, expected one. Resource metadata: [Resource Id:a; VersionId:1; LastUpdated:2024-01-01T00:00:00Z], [Resource Id:b; VersionId:3; LastUpdated:]."
        );
    }
}
