//! Identity resolution and Observation persistence against a real FHIR R4 server
//! (`IOMT_TEST_FHIR_URL`: the Helios FHIR Server under `scripts/test.sh`).

use std::sync::Arc;

use async_trait::async_trait;
use iomt_connector::fhir::identity::{IdentityMode, new_device, new_patient, resource_id, version_id};
use iomt_connector::fhir::{FhirErrorKind, Json, SERVICE_SYSTEM};
use iomt_connector::pipeline::ports::{BatchReply, BatchRequest, FhirApi, FhirApiError};
use serde_json::json;
use tokio::sync::Mutex;

use crate::support::fhir::{
    at, client, comparable, fhir_url, filled_slots, heart_rate, measurement, observations_of, put, templates, unique,
    writer, writer_with,
};

/// A Patient and a Device (identifier `device`) linked to it; returns (patient id, device id).
async fn linked_device(api: &dyn FhirApi, device: &str, system: Option<&str>) -> (String, String) {
    let patient_id = unique("patient");
    put(api, json!({"resourceType": "Patient", "id": patient_id})).await;
    let device_id = unique("device");
    let mut identifier = json!({"value": device});
    if let Some(system) = system {
        identifier["system"] = json!(system);
    }
    put(
        api,
        json!({"resourceType": "Device", "id": device_id, "identifier": [identifier],
               "patient": {"reference": format!("Patient/{patient_id}")}}),
    )
    .await;
    (patient_id, device_id)
}

fn error_kinds(report: &iomt_connector::pipeline::writer::WriteReport) -> Vec<(FhirErrorKind, Vec<usize>)> {
    report
        .failures
        .iter()
        .map(|failure| (failure.error.kind, failure.members.clone()))
        .collect()
}

#[tokio::test]
async fn lookup_mode_uses_the_devices_patient_and_an_optional_encounter() {
    let api = client(&fhir_url());
    let device = unique("monitor");
    let (patient_id, device_id) = linked_device(&*api, &device, None).await;
    let encounter_value = unique("visit");
    let encounter = put(
        &*api,
        json!({"resourceType": "Encounter", "id": unique("enc"), "status": "in-progress",
               "class": {"code": "IMP"}, "identifier": [{"value": encounter_value}]}),
    )
    .await;
    let measurements = [
        // The Measurement's own PatientId is ignored in Lookup mode.
        heart_rate(&device, Some("someone-else"), "2024-03-01T08:00:05Z", 72),
        measurement(
            "heartrate",
            &device,
            None,
            Some(&encounter_value),
            "2024-03-01T09:00:00Z",
            &[("hr", "80".into())],
        ),
    ];
    let report = writer(api.clone(), IdentityMode::Lookup, 0)
        .write(&templates(), &measurements, at("2024-03-01T10:00:00Z"))
        .await
        .unwrap();
    assert_eq!(error_kinds(&report), vec![]);
    assert_eq!(report.created, 2);
    let observations = observations_of(&*api, &patient_id).await;
    assert_eq!(observations.len(), 2);
    for observation in &observations {
        assert_eq!(observation["subject"]["reference"], format!("Patient/{patient_id}"));
        assert_eq!(observation["device"]["reference"], format!("Device/{device_id}"));
    }
    assert!(observations[0].get("encounter").is_none());
    assert_eq!(
        observations[1]["encounter"]["reference"],
        format!("Encounter/{}", resource_id(&encounter).unwrap())
    );
    // The identifier uses the FHIR logical ids, and the id is its hash.
    assert_eq!(
        observations[0]["identifier"][0]["value"],
        format!("{patient_id}.{device_id}.heartrate.20240301080000Z.20240301085959Z")
    );
    assert_eq!(filled_slots(&observations[0]), vec![(5, "72".to_string())]);
}

#[tokio::test]
async fn lookup_mode_reports_each_identity_problem_and_lands_the_rest() {
    let api = client(&fhir_url());
    let good = unique("good");
    let (patient_id, _) = linked_device(&*api, &good, None).await;
    let orphan = unique("orphan");
    put(
        &*api,
        json!({"resourceType": "Device", "id": unique("d"), "identifier": [{"value": orphan}]}),
    )
    .await;
    let twin = unique("twin");
    for _ in 0..2 {
        put(
            &*api,
            json!({"resourceType": "Device", "id": unique("d"), "identifier": [{"value": twin}],
                   "patient": {"reference": "Patient/x"}}),
        )
        .await;
    }
    let unknown = unique("unknown");
    let measurements = [
        heart_rate(&unknown, None, "2024-03-01T08:00:00Z", 70),
        heart_rate(&orphan, None, "2024-03-01T08:00:00Z", 71),
        heart_rate(&twin, None, "2024-03-01T08:00:00Z", 72),
        measurement(
            "heartrate",
            &good,
            None,
            Some(&unique("no-such-visit")),
            "2024-03-01T08:00:00Z",
            &[("hr", "73".into())],
        ),
        heart_rate(&good, None, "2024-03-01T08:00:01Z", 74),
    ];
    let report = writer(api.clone(), IdentityMode::Lookup, 0)
        .write(&templates(), &measurements, at("2024-03-01T10:00:00Z"))
        .await
        .unwrap();
    let failures: Vec<(String, Vec<usize>)> = report
        .failures
        .iter()
        .map(|failure| (failure.error.message.clone(), failure.members.clone()))
        .collect();
    assert_eq!(failures.len(), 4, "{failures:#?}");
    assert!(
        failures[0].0.starts_with("Fhir resource of type Device not found."),
        "{failures:?}"
    );
    assert_eq!(failures[0].1, vec![0]);
    assert!(failures[1].0.starts_with("Fhir resource of type Patient not found."));
    assert!(
        failures[2]
            .0
            .starts_with("Multiple resources 2 of type Hl7.Fhir.Model.Device found")
    );
    assert!(failures[3].0.starts_with("Fhir resource of type Encounter not found."));
    assert_eq!(
        report.failures.iter().map(|f| f.error.kind).collect::<Vec<_>>(),
        [
            FhirErrorKind::FhirResourceNotFound,
            FhirErrorKind::FhirResourceNotFound,
            FhirErrorKind::MultipleResourceFound,
            FhirErrorKind::FhirResourceNotFound
        ]
    );
    assert_eq!(report.created, 1);
    let landed = observations_of(&*api, &patient_id).await;
    assert_eq!(filled_slots(&landed[0]), vec![(1, "74".to_string())]);
}

#[tokio::test]
async fn lookup_with_encounter_requires_the_measurements_to_name_one() {
    let api = client(&fhir_url());
    let device = unique("monitor");
    let (patient_id, _) = linked_device(&*api, &device, None).await;
    let report = writer(api.clone(), IdentityMode::LookupWithEncounter, 0)
        .write(
            &templates(),
            &[heart_rate(&device, None, "2024-03-01T08:00:00Z", 70)],
            at("2024-03-01T10:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        error_kinds(&report),
        vec![(FhirErrorKind::ResourceIdentityNotDefined, vec![0])]
    );
    assert!(report.failures[0].error.message.contains("carry no EncounterId"));
    assert!(observations_of(&*api, &patient_id).await.is_empty());
}

#[tokio::test]
async fn create_mode_creates_patient_and_device_with_hashed_ids_and_refuses_a_mismatch() {
    let api = client(&fhir_url());
    let device = unique("new-device");
    let patient = unique("new-patient");
    let measurements = [heart_rate(&device, Some(&patient), "2024-03-01T08:00:00Z", 70)];
    let report = writer(api.clone(), IdentityMode::Create, 0)
        .write(&templates(), &measurements, at("2024-03-01T10:00:00Z"))
        .await
        .unwrap();
    assert_eq!(error_kinds(&report), vec![]);
    // Patient and Device ids are SHA-256 of "_{patientId}" and "_{deviceId}".
    let expected_patient = new_patient(&patient);
    let expected_device = new_device(&device, None, resource_id(&expected_patient).unwrap());
    let patients = api
        .search("Patient", &[("identifier", patient.clone())], None)
        .await
        .unwrap();
    assert_eq!(patients.len(), 1);
    assert_eq!(resource_id(&patients[0]), resource_id(&expected_patient));
    let devices = api
        .search("Device", &[("identifier", device.clone())], None)
        .await
        .unwrap();
    assert_eq!(resource_id(&devices[0]), resource_id(&expected_device));
    assert_eq!(
        devices[0]
            .get("patient")
            .and_then(|p| p.get("reference"))
            .and_then(Json::as_str),
        Some(format!("Patient/{}", resource_id(&expected_patient).unwrap()).as_str())
    );
    let observations = observations_of(&*api, resource_id(&expected_patient).unwrap()).await;
    assert_eq!(observations.len(), 1);

    // The same device with another patient, through a fresh writer (no cache), in Create mode:
    // the device is found and its patient is used (Lookup succeeds first), as in the original.
    let other = unique("other-patient");
    let report = writer(api.clone(), IdentityMode::Create, 0)
        .write(
            &templates(),
            &[heart_rate(&device, Some(&other), "2024-03-01T08:00:01Z", 71)],
            at("2024-03-01T10:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(error_kinds(&report), vec![]);
    assert_eq!(report.updated, 1);

    // A device without a patient is linked to the Measurements' patient; one linked to another
    // patient while the Measurements' patient exists elsewhere is a mismatch.
    let loose = unique("loose-device");
    put(
        &*api,
        json!({"resourceType": "Device", "id": unique("d"), "identifier": [{"value": loose}]}),
    )
    .await;
    let owner = unique("owner");
    let report = writer(api.clone(), IdentityMode::Create, 0)
        .write(
            &templates(),
            &[heart_rate(&loose, Some(&owner), "2024-03-01T08:00:00Z", 60)],
            at("2024-03-01T10:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(error_kinds(&report), vec![]);
    let linked = api
        .search("Device", &[("identifier", loose.clone())], None)
        .await
        .unwrap();
    assert_eq!(
        linked[0]
            .get("patient")
            .and_then(|p| p.get("reference"))
            .and_then(Json::as_str),
        Some(format!("Patient/{}", resource_id(&new_patient(&owner)).unwrap()).as_str())
    );
    assert_eq!(version_id(&linked[0]), Some("2"));
}

#[tokio::test]
async fn create_mode_reports_a_device_linked_to_another_patient() {
    let api = client(&fhir_url());
    // The Device's patient reference cannot be read (it is not `Patient/{id}`), so Lookup fails
    // with Patient not found and the Create path runs: the Measurements' Patient is created, and
    // the Device turns out to be linked to something else. Nothing is relinked.
    let device = unique("shared-device");
    put(
        &*api,
        json!({"resourceType": "Device", "id": unique("d"), "identifier": [{"value": device}],
               "patient": {"reference": "https://elsewhere/Patient/1"}}),
    )
    .await;
    let patient = unique("patient");
    let report = writer(api.clone(), IdentityMode::Create, 0)
        .write(
            &templates(),
            &[heart_rate(&device, Some(&patient), "2024-03-01T08:00:00Z", 60)],
            at("2024-03-01T10:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(
        error_kinds(&report),
        vec![(FhirErrorKind::PatientDeviceMismatch, vec![0])]
    );
    assert!(
        report.failures[0].error.message.contains("https://elsewhere/Patient/1"),
        "{}",
        report.failures[0].error.message
    );
    let stored = api
        .search("Device", &[("identifier", device.clone())], None)
        .await
        .unwrap();
    assert_eq!(version_id(&stored[0]), Some("1"), "the Device is left alone");
}

#[tokio::test]
async fn the_default_device_system_is_searched_and_used_for_created_devices() {
    let api = client(&fhir_url());
    let system = "urn:example:devices";
    let device = unique("sys-device");
    let (patient_id, _) = linked_device(&*api, &device, Some(system)).await;
    let report = writer_with(api.clone(), IdentityMode::Lookup, Some(system), 0)
        .write(
            &templates(),
            &[heart_rate(&device, None, "2024-03-01T08:00:00Z", 70)],
            at("2024-03-01T10:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(error_kinds(&report), vec![]);
    assert_eq!(observations_of(&*api, &patient_id).await.len(), 1);
    // Without the system the same identifier value is still found (a token search without a
    // system matches any system), as in the original.
    let created = unique("sys-created");
    let patient = unique("sys-patient");
    let report = writer_with(api.clone(), IdentityMode::Create, Some(system), 0)
        .write(
            &templates(),
            &[heart_rate(&created, Some(&patient), "2024-03-01T08:00:00Z", 70)],
            at("2024-03-01T10:00:00Z"),
        )
        .await
        .unwrap();
    assert_eq!(error_kinds(&report), vec![]);
    let devices = api
        .search("Device", &[("identifier", format!("{system}|{created}"))], None)
        .await
        .unwrap();
    assert_eq!(
        resource_id(&devices[0]),
        resource_id(&new_device(&created, Some(system), "unused"))
    );
}

#[tokio::test]
async fn two_batches_for_one_hour_merge_into_one_observation() {
    let api = client(&fhir_url());
    let device = unique("merge");
    let (patient_id, _) = linked_device(&*api, &device, None).await;
    let first = [
        heart_rate(&device, None, "2024-03-01T08:00:00Z", 70),
        heart_rate(&device, None, "2024-03-01T08:00:02Z", 72),
    ];
    let second = [
        heart_rate(&device, None, "2024-03-01T08:00:01Z", 71),
        heart_rate(&device, None, "2024-03-01T08:59:59Z", 99),
    ];
    // Separate writers: the second finds the Observation by searching, not from a cache.
    let report = writer(api.clone(), IdentityMode::Lookup, 0)
        .write(&templates(), &first, at("2024-03-01T08:01:00Z"))
        .await
        .unwrap();
    assert_eq!((report.created, report.updated), (1, 0));
    let report = writer(api.clone(), IdentityMode::Lookup, 0)
        .write(&templates(), &second, at("2024-03-01T09:01:00Z"))
        .await
        .unwrap();
    assert_eq!((report.created, report.updated), (0, 1));
    let observations = observations_of(&*api, &patient_id).await;
    assert_eq!(observations.len(), 1);
    let observation = &observations[0];
    assert_eq!(
        filled_slots(observation),
        vec![
            (0, "70".to_string()),
            (1, "71".to_string()),
            (2, "72".to_string()),
            (3599, "99".to_string())
        ]
    );
    assert_eq!(observation["status"], "amended");
    assert_eq!(observation["meta"]["versionId"], "2");
    // `issued` stays the creation time.
    assert!(
        observation["issued"]
            .as_str()
            .unwrap()
            .starts_with("2024-03-01T08:01:00")
    );
}

#[tokio::test]
async fn rerunning_a_batch_writes_nothing() {
    let api = client(&fhir_url());
    let device = unique("rerun");
    let (patient_id, _) = linked_device(&*api, &device, None).await;
    let batch = [
        heart_rate(&device, None, "2024-03-01T08:00:00Z", 70),
        heart_rate(&device, None, "2024-03-01T09:30:00Z", 75),
        measurement(
            "bloodpressure",
            &device,
            None,
            None,
            "2024-03-01T08:10:00Z",
            &[("systolic", "120".into()), ("diastolic", "80".into())],
        ),
    ];
    for batch_size in [0, 10] {
        let fresh = writer(api.clone(), IdentityMode::Lookup, batch_size);
        let report = fresh
            .write(&templates(), &batch, at("2024-03-01T10:00:00Z"))
            .await
            .unwrap();
        if batch_size == 0 {
            assert_eq!((report.created, report.unchanged), (3, 0));
        } else {
            assert_eq!((report.created, report.updated, report.unchanged), (0, 0, 3));
        }
        // The same writer again: from its cache, still nothing to write.
        let again = fresh
            .write(&templates(), &batch, at("2024-03-01T11:00:00Z"))
            .await
            .unwrap();
        assert_eq!((again.created, again.updated, again.unchanged), (0, 0, 3));
    }
    let observations = observations_of(&*api, &patient_id).await;
    assert_eq!(observations.len(), 3);
    assert!(
        observations.iter().all(|o| o["meta"]["versionId"] == "1"),
        "no new versions"
    );
}

/// Delegates to the real client; before the first conditional write, another writer changes the
/// same Observation with `change`, so that write meets a 412.
#[derive(Debug)]
struct Interloper {
    inner: Arc<dyn FhirApi>,
    interfered: Mutex<bool>,
    change: fn(&mut serde_json::Value),
}

impl Interloper {
    fn new(inner: Arc<dyn FhirApi>, change: fn(&mut serde_json::Value)) -> Self {
        Interloper {
            inner,
            interfered: Mutex::new(false),
            change,
        }
    }
}

/// The other writer of the 412 tests: adds a reading in slot 10 of the stored Observation.
fn add_slot_10(theirs: &mut serde_json::Value) {
    let mut tokens: Vec<String> = theirs["valueSampledData"]["data"]
        .as_str()
        .unwrap()
        .split(' ')
        .map(str::to_string)
        .collect();
    tokens.resize(3600, "E".into());
    tokens[10] = "110".into();
    theirs["valueSampledData"]["data"] = json!(tokens.join(" ").trim_end_matches(" E").to_string());
}

#[async_trait]
impl FhirApi for Interloper {
    async fn search(&self, t: &str, p: &[(&str, String)], l: Option<usize>) -> Result<Vec<Json>, FhirApiError> {
        self.inner.search(t, p, l).await
    }

    async fn put(&self, resource: &Json, if_match: Option<&str>) -> Result<Json, FhirApiError> {
        let mut interfered = self.interfered.lock().await;
        if if_match.is_some() && !*interfered {
            *interfered = true;
            let id = resource_id(resource).unwrap();
            let stored = self
                .inner
                .search("Observation", &[("_id", id.to_string())], None)
                .await?;
            let mut theirs: serde_json::Value = serde_json::from_str(&stored[0].to_json()).unwrap();
            (self.change)(&mut theirs);
            let version = theirs["meta"]["versionId"].as_str().unwrap().to_string();
            self.inner
                .put(&Json::parse(&theirs.to_string()).unwrap(), Some(&version))
                .await?;
        }
        drop(interfered);
        self.inner.put(resource, if_match).await
    }

    async fn batch(&self, requests: Vec<BatchRequest>) -> Result<Vec<Result<BatchReply, FhirApiError>>, FhirApiError> {
        self.inner.batch(requests).await
    }
}

#[tokio::test]
async fn a_concurrent_writer_forces_a_412_and_the_retry_converges() {
    let real = client(&fhir_url());
    let device = unique("race");
    let (patient_id, _) = linked_device(&*real, &device, None).await;
    writer(real.clone(), IdentityMode::Lookup, 0)
        .write(
            &templates(),
            &[heart_rate(&device, None, "2024-03-01T08:00:00Z", 70)],
            at("2024-03-01T08:00:30Z"),
        )
        .await
        .unwrap();
    let api = Arc::new(Interloper::new(real.clone(), add_slot_10));
    let report = writer(api.clone(), IdentityMode::Lookup, 0)
        .write(
            &templates(),
            &[heart_rate(&device, None, "2024-03-01T08:00:20Z", 90)],
            at("2024-03-01T08:01:00Z"),
        )
        .await
        .unwrap();
    assert!(*api.interfered.lock().await, "the competing write happened");
    assert_eq!(report.conflicts_retried, 1, "{report:?}");
    assert_eq!(report.updated, 1);
    let observations = observations_of(&*real, &patient_id).await;
    assert_eq!(
        filled_slots(&observations[0]),
        vec![(0, "70".to_string()), (10, "110".to_string()), (20, "90".to_string())],
        "both writers' readings survive"
    );
    assert_eq!(observations[0]["meta"]["versionId"], "3");
}

#[tokio::test]
async fn a_merge_that_fails_after_a_412_fails_its_measurements_instead_of_dropping_them() {
    let real = client(&fhir_url());
    let device = unique("race-type");
    linked_device(&*real, &device, None).await;
    writer(real.clone(), IdentityMode::Lookup, 0)
        .write(
            &templates(),
            &[heart_rate(&device, None, "2024-03-01T08:00:00Z", 70)],
            at("2024-03-01T08:00:30Z"),
        )
        .await
        .unwrap();
    // The other writer turns the SampledData into a Quantity: the re-read cannot be merged into.
    let api = Arc::new(Interloper::new(real.clone(), |theirs| {
        theirs.as_object_mut().unwrap().remove("valueSampledData");
        theirs["valueQuantity"] = json!({"value": 1});
    }));
    let report = writer(api.clone(), IdentityMode::Lookup, 0)
        .write(
            &templates(),
            &[heart_rate(&device, None, "2024-03-01T08:00:20Z", 90)],
            at("2024-03-01T08:01:00Z"),
        )
        .await
        .unwrap();
    assert!(*api.interfered.lock().await, "the competing write happened");
    assert_eq!(report.conflicts_retried, 1, "{report:?}");
    assert_eq!(report.updated, 0, "{report:?}");
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].error.kind, FhirErrorKind::NotSupported);
    assert_eq!(report.failures[0].members, vec![0]);
}

#[tokio::test]
async fn bundles_and_single_requests_reach_the_same_state() {
    let api = client(&fhir_url());
    let mut states = Vec::new();
    for batch_size in [0, 3] {
        let device = unique("mode");
        let (patient_id, _) = linked_device(&*api, &device, None).await;
        let first: Vec<_> = (0..8)
            .map(|i| {
                heart_rate(
                    &device,
                    None,
                    &format!("2024-03-01T0{}:00:{:02}Z", 8 + i % 2, i),
                    60 + i,
                )
            })
            .chain((0..4).map(|i| {
                measurement(
                    "bloodpressure",
                    &device,
                    None,
                    None,
                    &format!("2024-03-01T08:1{i}:00Z"),
                    &[("systolic", (110 + i).to_string()), ("diastolic", (70 + i).to_string())],
                )
            }))
            .collect();
        let second: Vec<_> = (8..12)
            .map(|i| {
                heart_rate(
                    &device,
                    None,
                    &format!("2024-03-01T0{}:00:{:02}Z", 8 + i % 2, i),
                    60 + i,
                )
            })
            .collect();
        let writer = writer(api.clone(), IdentityMode::Lookup, batch_size);
        let report = writer
            .write(&templates(), &first, at("2024-03-01T10:00:00Z"))
            .await
            .unwrap();
        assert_eq!(report.created, 6, "{report:?}");
        let report = writer
            .write(&templates(), &second, at("2024-03-01T10:00:00Z"))
            .await
            .unwrap();
        assert_eq!((report.updated, report.unchanged), (2, 0), "{report:?}");
        let observations = observations_of(&*api, &patient_id).await;
        states.push(observations.iter().map(comparable).collect::<Vec<_>>());
    }
    assert_eq!(states[0].len(), 6);
    assert_eq!(states[0], states[1]);
}

#[tokio::test]
async fn the_cli_persists_and_reports_counts() {
    use crate::util::{TempDir, iomt};
    let api = client(&fhir_url());
    let device = unique("cli");
    let (patient_id, _) = linked_device(&*api, &device, None).await;
    let dir = TempDir::new("persist");
    let input = dir.path().join("measurements.jsonl");
    let lines = [
        heart_rate(&device, None, "2024-03-01T08:00:00Z", 70).to_json(),
        heart_rate(&unique("stranger"), None, "2024-03-01T08:00:00Z", 70).to_json(),
        "not json".to_string(),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let mapping = dir.path().join("fhirmapping.json");
    std::fs::write(
        &mapping,
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/templates/json-device/fhirmapping.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let run = || {
        iomt()
            .args(["transform", "--fhir-mapping"])
            .arg(&mapping)
            .arg("--input")
            .arg(&input)
            .args(["--fhir-url", &fhir_url(), "--batch-size", "5"])
            .output()
            .unwrap()
    };
    let output = run();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["created"], 1);
    assert_eq!(summary["failedMeasurements"], 1);
    let errors = String::from_utf8(output.stderr).unwrap();
    let records: Vec<serde_json::Value> = errors.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records[0]["line"], 2);
    assert_eq!(records[0]["error"], "FhirResourceNotFoundException");
    assert_eq!(records[1]["line"], 3);
    assert_eq!(records[1]["error"], "MeasurementProcessingException");
    let again = run();
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        (summary["created"].as_u64(), summary["unchanged"].as_u64()),
        (Some(0), Some(1))
    );
    let observations = observations_of(&*api, &patient_id).await;
    assert_eq!(observations[0]["code"]["coding"][0]["code"], "8867-4");
    assert!(observations[0]["identifier"][0]["system"] == SERVICE_SYSTEM);
}
