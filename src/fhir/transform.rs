//! From a batch of Measurements to Observation writes (compat.md §8, §10–§12), without I/O: the
//! steps a FHIR writer runs per Measurement group ([`plan_windows`], [`upsert`]) and the offline
//! transform that runs them against Observations held in memory ([`transform_batch`]).

use chrono::{DateTime, Utc};

use super::group::{MeasurementGroup, ObservationGroup, group_measurements, observation_groups};
use super::identity::multiple_found;
use super::json::Json;
use super::observation::{Built, Merged, ResourceIds, build_observation, identifier_value, merge_observation};
use super::template::{CodeValueTemplate, FhirTemplateSet};
use super::{FhirError, FhirErrorKind, SERVICE_SYSTEM};
use crate::model::Measurement;

/// The Observation windows of one Measurement group and the template that maps them.
#[derive(Debug)]
pub struct WindowPlan<'t> {
    /// The FHIR template of the group's type.
    pub template: &'t CodeValueTemplate,
    /// The windows, in order of first reading.
    pub windows: Vec<ObservationGroup>,
}

/// Looks up the group's template and splits the group into Observation windows.
pub fn plan_windows<'t>(
    templates: &'t FhirTemplateSet,
    group: &MeasurementGroup<'_>,
    measurements: &[Measurement],
) -> Result<WindowPlan<'t>, FhirError> {
    let template = templates.get(group.type_name).ok_or_else(|| {
        FhirError::new(
            FhirErrorKind::TemplateNotFound,
            format!("No FHIR mapping template for Measurement type '{}'.", group.type_name),
        )
    })?;
    let windows = observation_groups(template.period_interval, group, measurements)?;
    Ok(WindowPlan { template, windows })
}

/// What to do with one window's Observation.
#[derive(Debug, Clone, PartialEq)]
pub enum Upsert {
    /// No Observation has the identifier yet: create this one.
    Create(Built),
    /// The existing Observation changed: write this one.
    Update(Built),
    /// The existing Observation already holds the window's data: no write.
    Unchanged,
}

/// Builds the window's Observation, or merges the window into `existing` (the Observation with
/// the same identifier, when there is one).
pub fn upsert(
    template: &CodeValueTemplate,
    window: &ObservationGroup,
    type_name: &str,
    ids: &ResourceIds,
    existing: Option<&Json>,
    issued: DateTime<Utc>,
) -> Result<Upsert, FhirError> {
    match existing {
        None => build_observation(template, window, type_name, ids, issued).map(Upsert::Create),
        Some(existing) => merge_observation(template, window, existing).map(|merged| match merged {
            Merged::Unchanged => Upsert::Unchanged,
            Merged::Changed(built) => Upsert::Update(built),
        }),
    }
}

/// The position of the one Observation among `candidates` that carries exactly the service
/// identifier `value`: none, one, or `MultipleResourceFoundException` for several (compat.md §12).
pub fn find_by_identifier<'a>(
    value: &str,
    candidates: impl IntoIterator<Item = &'a Json>,
) -> Result<Option<usize>, FhirError> {
    let matching: Vec<(usize, &Json)> = candidates
        .into_iter()
        .enumerate()
        .filter(|(_, observation)| has_service_identifier(observation, value))
        .collect();
    match matching.as_slice() {
        [] => Ok(None),
        [(index, _)] => Ok(Some(*index)),
        several => {
            let found: Vec<Json> = several.iter().map(|(_, observation)| (*observation).clone()).collect();
            Err(multiple_found("Observation", &found))
        }
    }
}

/// Whether an Observation carries exactly the service identifier `value`: an identifier element
/// equal to `{system, value}` and nothing else (Firely's `IsExactly`).
fn has_service_identifier(observation: &Json, value: &str) -> bool {
    observation
        .get("identifier")
        .and_then(Json::as_array)
        .is_some_and(|identifiers| {
            identifiers.iter().any(|identifier| {
                identifier.as_object().is_some_and(|members| {
                    members.iter().count() == 2
                        && members.get("system").and_then(Json::as_str) == Some(SERVICE_SYSTEM)
                        && members.get("value").and_then(Json::as_str) == Some(value)
                })
            })
        })
}

/// Measurements that produced no Observation, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupFailure {
    /// The error.
    pub error: FhirError,
    /// Indices (into the batch) of the Measurements affected.
    pub members: Vec<usize>,
}

/// The result of an offline transform.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The resulting Observations, one per identifier, in the order they were first touched.
    pub observations: Vec<Json>,
    /// Groups or windows that failed.
    pub failures: Vec<GroupFailure>,
    /// Observations created.
    pub created: usize,
    /// Observations merged with a change.
    pub updated: usize,
    /// Windows whose data the existing Observation already held.
    pub unchanged: usize,
    /// Quantity or String readings superseded by a later one of the same window (decision P5).
    pub superseded: usize,
}

/// A batch to transform offline: Measurements and the Observations already stored.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'b> {
    /// The Measurements, all one batch.
    pub measurements: &'b [Measurement],
    /// Observations to merge into, matched by their service identifier.
    pub existing: &'b [Json],
    /// `issued` of created Observations.
    pub issued: DateTime<Utc>,
}

/// Transforms a batch offline: Patient, Device and Encounter ids are the Measurements' own. Each
/// window is created or merged in turn, so windows sharing an identifier (two Single readings in
/// one second) end in one Observation. A failing window does not stop the others (decision P4).
pub fn transform_batch(templates: &FhirTemplateSet, batch: Batch<'_>) -> Outcome {
    let mut outcome = Outcome::default();
    let mut store: Vec<(Json, bool)> = batch
        .existing
        .iter()
        .map(|observation| (observation.clone(), false))
        .collect();
    let mut touched: Vec<usize> = Vec::new();
    for group in group_measurements(batch.measurements) {
        let fail = |error: FhirError, members: &[usize]| GroupFailure {
            error,
            members: members.to_vec(),
        };
        let ids = match measurement_ids(group.device_id, group.patient_id, group.encounter_id) {
            Ok(ids) => ids,
            Err(error) => {
                outcome.failures.push(fail(error, &group.all));
                continue;
            }
        };
        let plan = match plan_windows(templates, &group, batch.measurements) {
            Ok(plan) => plan,
            Err(error) => {
                outcome.failures.push(fail(error, &group.all));
                continue;
            }
        };
        for window in &plan.windows {
            let identifier = identifier_value(&ids, group.type_name, window);
            let stored = match find_by_identifier(&identifier, store.iter().map(|(observation, _)| observation)) {
                Ok(stored) => stored,
                Err(error) => {
                    outcome.failures.push(fail(error, &window.members));
                    continue;
                }
            };
            let existing = stored.map(|index| &store[index].0);
            match upsert(plan.template, window, group.type_name, &ids, existing, batch.issued) {
                Ok(Upsert::Unchanged) => {
                    outcome.unchanged += 1;
                    if let Some(index) = stored {
                        mark_touched(&mut store, &mut touched, index);
                    }
                }
                Ok(Upsert::Create(built) | Upsert::Update(built)) => {
                    outcome.superseded += built.superseded;
                    let index = match stored {
                        Some(index) => {
                            outcome.updated += 1;
                            store[index].0 = built.observation;
                            index
                        }
                        None => {
                            outcome.created += 1;
                            store.push((built.observation, false));
                            store.len() - 1
                        }
                    };
                    mark_touched(&mut store, &mut touched, index);
                }
                Err(error) => outcome.failures.push(fail(error, &window.members)),
            }
        }
    }
    outcome.observations = touched.into_iter().map(|index| store[index].0.clone()).collect();
    outcome
}

fn mark_touched(store: &mut [(Json, bool)], touched: &mut Vec<usize>, index: usize) {
    if !store[index].1 {
        store[index].1 = true;
        touched.push(index);
    }
}

/// Offline identity: the Measurements' own ids are the Patient, Device and Encounter logical
/// ids. A group without a patient cannot be an Observation's subject.
pub fn measurement_ids(
    device_id: &str,
    patient_id: Option<&str>,
    encounter_id: Option<&str>,
) -> Result<ResourceIds, FhirError> {
    let patient = patient_id.filter(|id| !id.trim().is_empty()).ok_or_else(|| {
        FhirError::new(
            FhirErrorKind::ResourceIdentityNotDefined,
            format!(
                "Fhir resource of type Patient not found. The Measurements of device '{device_id}' carry no PatientId."
            ),
        )
    })?;
    Ok(ResourceIds {
        patient: patient.to_string(),
        device: device_id.to_string(),
        encounter: encounter_id.filter(|id| !id.trim().is_empty()).map(str::to_string),
    })
}
