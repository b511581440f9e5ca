//! Access to the FHIR server under test (`IOMT_TEST_FHIR_URL`, set by `scripts/test.sh`), and
//! builders for the Measurements and templates the tests write.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use iomt_connector::adapters::fhir_http::{FhirClientConfig, FhirHttpClient, RetryPolicy};
use iomt_connector::fhir::identity::IdentityMode;
use iomt_connector::fhir::{FhirTemplateSet, Json};
use iomt_connector::model::{Measurement, MeasurementProperty, parse_utc_lenient};
use iomt_connector::pipeline::identity::{IdentityResolver, IdentitySettings};
use iomt_connector::pipeline::ports::FhirApi;
use iomt_connector::pipeline::writer::{ObservationWriter, WriterSettings};

/// The FHIR R4 server the tests use.
pub fn fhir_url() -> String {
    std::env::var("IOMT_TEST_FHIR_URL").unwrap_or_else(|_| {
        panic!(
            "IOMT_TEST_FHIR_URL is not set: run the tests with scripts/test.sh (it starts the Helios FHIR Server), \
             or set it to the base URL of a FHIR R4 server"
        )
    })
}

/// A prefix no other test (or earlier run against the same server) uses.
pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{name}-{:x}-{}",
        nanos % 0xffff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client for `url` with short retries (tests inject faults that clear quickly).
pub fn client(url: &str) -> Arc<FhirHttpClient> {
    let mut config = FhirClientConfig::new(url);
    config.timeout = Duration::from_secs(20);
    config.retry = RetryPolicy {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(500),
        max_elapsed: Duration::from_secs(30),
    };
    Arc::new(FhirHttpClient::new(&config, None).expect("a valid FHIR URL"))
}

/// A writer over `api`.
pub fn writer(api: Arc<dyn FhirApi>, mode: IdentityMode, batch_size: usize) -> ObservationWriter {
    writer_with(api, mode, None, batch_size)
}

/// A writer with a default device identifier system.
pub fn writer_with(
    api: Arc<dyn FhirApi>,
    mode: IdentityMode,
    default_device_system: Option<&str>,
    batch_size: usize,
) -> ObservationWriter {
    let identities = IdentityResolver::new(
        api.clone(),
        IdentitySettings {
            mode,
            default_device_system: default_device_system.map(str::to_string),
            ..IdentitySettings::default()
        },
    );
    ObservationWriter::new(
        api,
        identities,
        WriterSettings {
            batch_size,
            ..WriterSettings::default()
        },
    )
}

/// Heart rate as hourly SampledData at 1 s; blood pressure per reading with Quantity components.
pub fn templates() -> FhirTemplateSet {
    FhirTemplateSet::parse(
        r#"{"templateType":"CollectionFhir","template":[
          {"templateType":"CodeValueFhir","template":{"typeName":"heartrate","periodInterval":60,
            "codes":[{"code":"8867-4","system":"http://loinc.org","display":"Heart rate"}],
            "value":{"valueType":"SampledData","valueName":"hr","defaultPeriod":1000,"unit":"/min"}}},
          {"templateType":"CodeValueFhir","template":{"typeName":"bloodpressure","periodInterval":0,
            "codes":[{"code":"85354-9","system":"http://loinc.org"}],
            "components":[
              {"codes":[{"code":"8480-6","system":"http://loinc.org"}],
               "value":{"valueType":"Quantity","valueName":"systolic","unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},
              {"codes":[{"code":"8462-4","system":"http://loinc.org"}],
               "value":{"valueType":"Quantity","valueName":"diastolic","unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]}}
        ]}"#,
    )
    .expect("test templates are valid")
}

/// A time in RFC 3339.
pub fn at(text: &str) -> DateTime<Utc> {
    parse_utc_lenient(text).expect("a valid time")
}

/// A heart-rate Measurement.
pub fn heart_rate(device: &str, patient: Option<&str>, time: &str, value: u32) -> Measurement {
    measurement("heartrate", device, patient, None, time, &[("hr", value.to_string())])
}

/// A Measurement.
pub fn measurement(
    type_name: &str,
    device: &str,
    patient: Option<&str>,
    encounter: Option<&str>,
    time: &str,
    properties: &[(&str, String)],
) -> Measurement {
    Measurement {
        type_name: type_name.into(),
        occurrence_time_utc: at(time),
        ingestion_time_utc: Some(at(time)),
        device_id: device.into(),
        patient_id: patient.map(Into::into),
        encounter_id: encounter.map(Into::into),
        correlation_id: None,
        properties: properties
            .iter()
            .map(|(name, value)| MeasurementProperty {
                name: (*name).into(),
                value: value.as_str().into(),
            })
            .collect(),
    }
}

/// Writes a resource as it is (fixtures: Patients, Devices, Encounters).
pub async fn put(api: &dyn FhirApi, resource: serde_json::Value) -> Json {
    api.put(&Json::parse(&resource.to_string()).unwrap(), None)
        .await
        .expect("the fixture is stored")
}

/// The Observations whose subject is `Patient/{patient}`, sorted by identifier.
pub async fn observations_of(api: &dyn FhirApi, patient: &str) -> Vec<serde_json::Value> {
    let found = api
        .search("Observation", &[("subject", format!("Patient/{patient}"))], None)
        .await
        .expect("the search works");
    let mut observations: Vec<serde_json::Value> = found
        .iter()
        .map(|observation| serde_json::from_str(&observation.to_json()).unwrap())
        .collect();
    observations.sort_by(|a, b| {
        a["identifier"][0]["value"]
            .as_str()
            .cmp(&b["identifier"][0]["value"].as_str())
    });
    observations
}

/// The non-`E` SampledData slots of an Observation: `(slot, value)`.
pub fn filled_slots(observation: &serde_json::Value) -> Vec<(usize, String)> {
    observation["valueSampledData"]["data"]
        .as_str()
        .unwrap_or_default()
        .split(' ')
        .enumerate()
        .filter(|(_, token)| *token != "E")
        .map(|(slot, token)| (slot, token.to_string()))
        .collect()
}

/// An Observation without what differs between equal runs under other ids: `id`, `meta`,
/// `identifier`, `subject`, `device`, `issued`.
pub fn comparable(observation: &serde_json::Value) -> serde_json::Value {
    let mut observation = observation.clone();
    let object = observation.as_object_mut().unwrap();
    for member in ["id", "meta", "identifier", "subject", "device", "issued"] {
        object.remove(member);
    }
    observation
}
