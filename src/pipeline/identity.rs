//! Resolving the Device, Patient and Encounter a Measurement group refers to (compat.md §13,
//! decision P7), through a [`FhirApi`], with successes cached per device.

use std::sync::Arc;
use std::time::Duration;

use crate::fhir::identity::{
    IdentityMode, IdentityResource, identifier_token, identity_not_defined, multiple_found, new_device, new_patient,
    not_found, patient_device_mismatch, patient_reference, reference_id, resource_id, version_id,
};
use crate::fhir::observation::ResourceIds;
use crate::fhir::transform::measurement_ids;
use crate::fhir::{FhirError, FhirErrorKind, Json};
use crate::pipeline::ports::{FhirApi, FhirApiError, FhirApiErrorKind};

/// Identity resolution settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// How ids are found.
    pub mode: IdentityMode,
    /// The system of Device identifiers (`DefaultDeviceIdentifierSystem`); none by default.
    pub default_device_system: Option<String>,
    /// How long a resolved identity is reused (decision P7: a device moved to another patient is
    /// picked up within this time).
    pub cache_ttl: Duration,
    /// At most this many devices are cached.
    pub cache_capacity: u64,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        IdentitySettings {
            mode: IdentityMode::Lookup,
            default_device_system: None,
            cache_ttl: Duration::from_secs(300),
            cache_capacity: 10_000,
        }
    }
}

/// The ids a Measurement group carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupIdentity<'m> {
    /// `DeviceId`.
    pub device_id: &'m str,
    /// `PatientId`, if any.
    pub patient_id: Option<&'m str>,
    /// `EncounterId`, if any.
    pub encounter_id: Option<&'m str>,
}

/// Why an identity could not be resolved: the data (handled per group) or the server (retried).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    /// The Measurements cannot be attributed: not found, mismatch, several matches, missing ids.
    #[error("{0}")]
    Data(FhirError),
    /// The FHIR server failed; try again later.
    #[error("{0}")]
    Server(FhirApiError),
}

impl From<FhirApiError> for ResolveError {
    fn from(error: FhirApiError) -> Self {
        match error.kind {
            FhirApiErrorKind::Rejected | FhirApiErrorKind::InvalidResponse => {
                ResolveError::Data(FhirError::new(FhirErrorKind::RequestRejected, error.message))
            }
            _ => ResolveError::Server(error),
        }
    }
}

/// Resolves identities, caching successes by device (and encounter) id; failures are not cached.
#[derive(Debug)]
pub struct IdentityResolver {
    /// The FHIR server to resolve against; `None` takes the Measurements' own ids.
    api: Option<Arc<dyn FhirApi>>,
    settings: IdentitySettings,
    cache: moka::future::Cache<(String, Option<String>), ResourceIds>,
}

impl IdentityResolver {
    /// A resolver over `api`.
    pub fn new(api: Arc<dyn FhirApi>, settings: IdentitySettings) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.cache_capacity)
            .time_to_live(settings.cache_ttl)
            .build();
        IdentityResolver {
            api: Some(api),
            settings,
            cache,
        }
    }

    /// A resolver that takes the Measurements' own PatientId, DeviceId and EncounterId as the
    /// logical ids (local output without a FHIR server, as `iomt transform` does offline).
    pub fn from_measurements() -> Self {
        IdentityResolver {
            api: None,
            settings: IdentitySettings::default(),
            cache: moka::future::Cache::builder().max_capacity(1).build(),
        }
    }

    /// The Patient, Device and Encounter ids for a group's Measurements.
    ///
    /// The cache key is the device id and the encounter id (the original keyed by device only,
    /// so a device's second encounter reused the first one's id until the cache expired).
    pub async fn resolve(&self, group: GroupIdentity<'_>) -> Result<ResourceIds, ResolveError> {
        if self.api.is_none() {
            return measurement_ids(group.device_id, group.patient_id, group.encounter_id).map_err(ResolveError::Data);
        }
        let encounter = group.encounter_id.filter(|id| !id.trim().is_empty());
        let key = (group.device_id.to_string(), encounter.map(str::to_string));
        if let Some(ids) = self.cache.get(&key).await {
            return Ok(ids);
        }
        let ids = self.resolve_uncached(group).await?;
        self.cache.insert(key, ids.clone()).await;
        Ok(ids)
    }

    async fn resolve_uncached(&self, group: GroupIdentity<'_>) -> Result<ResourceIds, ResolveError> {
        if group.device_id.trim().is_empty() {
            return Err(ResolveError::Data(identity_not_defined(
                IdentityResource::Device,
                group.device_id,
            )));
        }
        match self.lookup(group).await {
            Ok(ids) => Ok(ids),
            // Only a missing Device or Patient leads to creating them.
            Err(LookupFailure::NotFound(IdentityResource::Device | IdentityResource::Patient, _))
                if self.settings.mode == IdentityMode::Create =>
            {
                self.ensure(group).await
            }
            Err(LookupFailure::NotFound(_, error)) => Err(ResolveError::Data(error)),
            Err(LookupFailure::Other(error)) => Err(error),
        }
    }

    fn api(&self) -> &dyn FhirApi {
        self.api.as_deref().expect("resolution through FHIR has an api")
    }

    fn device_system(&self) -> Option<&str> {
        self.settings
            .default_device_system
            .as_deref()
            .filter(|system| !system.trim().is_empty())
    }

    /// `Lookup` (and the first step of the other modes): the Device by identifier, its Patient
    /// reference, and the Encounter when the Measurements name one.
    async fn lookup(&self, group: GroupIdentity<'_>) -> Result<ResourceIds, LookupFailure> {
        let token = identifier_token(self.device_system(), group.device_id);
        let device = self.find_one(IdentityResource::Device, &token).await?.ok_or_else(|| {
            LookupFailure::NotFound(
                IdentityResource::Device,
                not_found(
                    IdentityResource::Device,
                    &format!("No Device has the identifier '{token}'."),
                ),
            )
        })?;
        let device_id = resource_id(&device)
            .ok_or_else(|| invalid("a Device in the search results has no id"))?
            .to_string();
        let patient = reference_id(device.get("patient"), "Patient").ok_or_else(|| {
            LookupFailure::NotFound(
                IdentityResource::Patient,
                not_found(
                    IdentityResource::Patient,
                    &format!("Device/{device_id} has no patient reference of the form Patient/{{id}}."),
                ),
            )
        })?;
        let encounter = self.encounter(group).await.map_err(|error| match error {
            ResolveError::Data(error) if error.kind == FhirErrorKind::FhirResourceNotFound => {
                LookupFailure::NotFound(IdentityResource::Encounter, error)
            }
            other => LookupFailure::Other(other),
        })?;
        Ok(ResourceIds {
            patient: patient.to_string(),
            device: device_id,
            encounter,
        })
    }

    /// The Encounter named by the Measurements (required in `LookupWithEncounter`).
    async fn encounter(&self, group: GroupIdentity<'_>) -> Result<Option<String>, ResolveError> {
        let Some(encounter_id) = group.encounter_id.filter(|id| !id.trim().is_empty()) else {
            return match self.settings.mode {
                IdentityMode::LookupWithEncounter => Err(ResolveError::Data(identity_not_defined(
                    IdentityResource::Encounter,
                    group.device_id,
                ))),
                _ => Ok(None),
            };
        };
        let encounter = self
            .find_one(IdentityResource::Encounter, encounter_id)
            .await?
            .ok_or_else(|| {
                ResolveError::Data(not_found(
                    IdentityResource::Encounter,
                    &format!("No Encounter has the identifier '{encounter_id}'."),
                ))
            })?;
        let id = resource_id(&encounter).ok_or_else(|| invalid("an Encounter in the search results has no id"))?;
        Ok(Some(id.to_string()))
    }

    /// `Create`: make sure the Patient and the Device exist and are linked.
    async fn ensure(&self, group: GroupIdentity<'_>) -> Result<ResourceIds, ResolveError> {
        let patient_value = group
            .patient_id
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(|| ResolveError::Data(identity_not_defined(IdentityResource::Patient, group.device_id)))?;
        let patient = match self.find_one(IdentityResource::Patient, patient_value).await? {
            Some(patient) => patient,
            None => self.api().put(&new_patient(patient_value), None).await?,
        };
        let patient_id = resource_id(&patient)
            .ok_or_else(|| invalid("the Patient has no id"))?
            .to_string();

        let system = self.device_system();
        let token = identifier_token(system, group.device_id);
        let device = match self.find_one(IdentityResource::Device, &token).await? {
            Some(device) => device,
            None => {
                self.api()
                    .put(&new_device(group.device_id, system, &patient_id), None)
                    .await?
            }
        };
        let device_id = resource_id(&device)
            .ok_or_else(|| invalid("the Device has no id"))?
            .to_string();
        match device.get("patient") {
            None => {
                let mut linked = device.clone();
                if let Some(object) = linked.as_object_mut() {
                    object.set("patient", patient_reference(&patient_id));
                }
                self.api().put(&linked, version_id(&device)).await?;
            }
            Some(reference) if reference_id(Some(reference), "Patient") == Some(patient_id.as_str()) => {}
            Some(reference) => {
                let linked = reference
                    .get("reference")
                    .and_then(Json::as_str)
                    .unwrap_or("(no reference)");
                return Err(ResolveError::Data(patient_device_mismatch(
                    &device_id,
                    linked,
                    &patient_id,
                )));
            }
        }
        // Unlike the original, the Encounter is resolved here too, so Observations of a device
        // created on the fly still refer to their Encounter.
        let encounter = self.encounter(group).await?;
        Ok(ResourceIds {
            patient: patient_id,
            device: device_id,
            encounter,
        })
    }

    /// The resource with identifier `token`: none, one, or an error for several (at most two are
    /// read, as in the original).
    async fn find_one(&self, resource: IdentityResource, token: &str) -> Result<Option<Json>, ResolveError> {
        let found = self
            .api()
            .search(resource.as_str(), &[("identifier", token.to_string())], Some(2))
            .await?;
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.into_iter().next()),
            _ => Err(ResolveError::Data(multiple_found(resource.as_str(), &found))),
        }
    }
}

/// How a lookup failed: which resource was missing, or anything else.
enum LookupFailure {
    NotFound(IdentityResource, FhirError),
    Other(ResolveError),
}

impl From<ResolveError> for LookupFailure {
    fn from(error: ResolveError) -> Self {
        LookupFailure::Other(error)
    }
}

fn invalid(what: &str) -> ResolveError {
    ResolveError::Server(FhirApiError::new(
        FhirApiErrorKind::InvalidResponse,
        None,
        format!("Invalid FHIR response: {what}."),
    ))
}
