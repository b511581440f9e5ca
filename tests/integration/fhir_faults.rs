//! A FHIR server that throttles, fails and drops connections: the writes are retried and the
//! final state equals a fault-free run. Server rejections fail only their own group.

use std::sync::Arc;

use async_trait::async_trait;
use iomt_connector::fhir::identity::{IdentityMode, resource_id};
use iomt_connector::fhir::observation::hashed_id;
use iomt_connector::fhir::{FhirErrorKind, Json, SERVICE_SYSTEM};
use iomt_connector::model::Measurement;
use iomt_connector::pipeline::ports::{BatchReply, BatchRequest, FhirApi, FhirApiError, FhirApiErrorKind};
use serde_json::json;

use crate::support::fhir::{
    at, client, comparable, fhir_url, heart_rate, measurement, observations_of, put, templates, unique, writer,
};
use crate::support::servers::{Fault, Proxy};

/// A Patient and a Device linked to it, written directly to the server.
async fn linked_device(device: &str) -> (String, String) {
    let api = client(&fhir_url());
    let patient_id = unique("patient");
    put(&*api, json!({"resourceType": "Patient", "id": patient_id})).await;
    let device_id = unique("device");
    put(
        &*api,
        json!({"resourceType": "Device", "id": device_id, "identifier": [{"value": device}],
               "patient": {"reference": format!("Patient/{patient_id}")}}),
    )
    .await;
    (patient_id, device_id)
}

/// Two batches: heart rate over two hours (merged in the second batch) and blood pressure.
fn batches(device: &str) -> [Vec<Measurement>; 2] {
    let first = (0..20)
        .map(|i| heart_rate(device, None, &format!("2024-03-01T0{}:{:02}:00Z", 8 + i % 2, i), 60 + i))
        .chain((0..5).map(|i| {
            measurement(
                "bloodpressure",
                device,
                None,
                None,
                &format!("2024-03-01T08:3{i}:00Z"),
                &[("systolic", (110 + i).to_string()), ("diastolic", (70 + i).to_string())],
            )
        }))
        .collect();
    let second = (20..30)
        .map(|i| heart_rate(device, None, &format!("2024-03-01T0{}:{:02}:00Z", 8 + i % 2, i), 60 + i))
        .collect();
    [first, second]
}

/// Runs both batches through `url` and returns the comparable end state.
async fn run(url: &str, device: &str, patient: &str, batch_size: usize) -> Vec<serde_json::Value> {
    let writer = writer(client(url), IdentityMode::Lookup, batch_size);
    for batch in batches(device) {
        let report = writer
            .write(&templates(), &batch, at("2024-03-01T10:00:00Z"))
            .await
            .expect("retries get every write through");
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    observations_of(&*client(&fhir_url()), patient)
        .await
        .iter()
        .map(comparable)
        .collect()
}

#[tokio::test]
async fn throttling_errors_and_dropped_connections_change_nothing_in_the_end() {
    for batch_size in [0, 4] {
        let clean_device = unique("clean");
        let (clean_patient, _) = linked_device(&clean_device).await;
        let expected = run(&fhir_url(), &clean_device, &clean_patient, batch_size).await;
        assert_eq!(
            expected.len(),
            7,
            "two hourly heart-rate Observations and five blood pressures"
        );

        let faulty_device = unique("faulty");
        let (faulty_patient, _) = linked_device(&faulty_device).await;
        // Every request index modulo 5 gets a different treatment: pass, 429 with Retry-After,
        // 503, a connection dropped before the server sees the request, one dropped after the
        // server did the work.
        let proxy = Proxy::start(&fhir_url(), |index, _, _| match index % 5 {
            1 => Fault::Status(429, Some(1)),
            2 => Fault::Status(503, None),
            3 => Fault::DropBefore,
            4 => Fault::DropAfter,
            _ => Fault::Pass,
        })
        .await;
        let actual = run(&proxy.url, &faulty_device, &faulty_patient, batch_size).await;
        assert!(proxy.faults() >= 8, "faults were injected: {}", proxy.faults());
        assert_eq!(actual, expected, "batch size {batch_size}");
    }
}

#[tokio::test]
async fn a_server_that_stays_down_fails_the_batch_without_writing_anything_wrong() {
    let device = unique("down");
    let (patient, _) = linked_device(&device).await;
    let proxy = Proxy::start(&fhir_url(), |_, _, _| Fault::Status(503, None)).await;
    let mut config = iomt_connector::adapters::fhir_http::FhirClientConfig::new(&proxy.url);
    config.retry.initial_delay = std::time::Duration::from_millis(10);
    config.retry.max_elapsed = std::time::Duration::from_millis(500);
    let api = Arc::new(iomt_connector::adapters::fhir_http::FhirHttpClient::new(&config, None).unwrap());
    let error = writer(api, IdentityMode::Lookup, 0)
        .write(&templates(), &batches(&device)[0], at("2024-03-01T10:00:00Z"))
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(error.message.contains("503"), "{error}");
    assert!(proxy.seen().len() > 2, "it retried");
    assert!(observations_of(&*client(&fhir_url()), &patient).await.is_empty());
    // Later, with the server back, the same batch lands completely.
    let report = writer(client(&fhir_url()), IdentityMode::Lookup, 0)
        .write(&templates(), &batches(&device)[0], at("2024-03-01T10:00:00Z"))
        .await
        .unwrap();
    assert_eq!(report.created, 2 + 5, "{report:?}");
    assert_eq!(observations_of(&*client(&fhir_url()), &patient).await.len(), 7);
}

/// Passes everything to the real server except one resource's writes inside Bundles, which it
/// answers as the server would answer an invalid entry.
#[derive(Debug)]
struct RefuseInBundles {
    inner: Arc<dyn FhirApi>,
    refused_id: String,
}

#[async_trait]
impl FhirApi for RefuseInBundles {
    async fn search(&self, t: &str, p: &[(&str, String)], l: Option<usize>) -> Result<Vec<Json>, FhirApiError> {
        self.inner.search(t, p, l).await
    }

    async fn put(&self, resource: &Json, if_match: Option<&str>) -> Result<Json, FhirApiError> {
        self.inner.put(resource, if_match).await
    }

    async fn batch(&self, requests: Vec<BatchRequest>) -> Result<Vec<Result<BatchReply, FhirApiError>>, FhirApiError> {
        let refused = |request: &BatchRequest| matches!(request, BatchRequest::Put { resource, .. } if resource_id(resource) == Some(self.refused_id.as_str()));
        let position = requests.iter().position(refused);
        let rest: Vec<BatchRequest> = requests.iter().filter(|r| !refused(r)).cloned().collect();
        let mut replies = self.inner.batch(rest).await?;
        if let Some(position) = position {
            replies.insert(
                position,
                Err(FhirApiError::new(
                    FhirApiErrorKind::Rejected,
                    Some(422),
                    "batch PUT Observation answered 422 Unprocessable Entity: rejected by a profile",
                )),
            );
        }
        Ok(replies)
    }
}

#[tokio::test]
async fn a_rejected_observation_fails_only_its_own_measurements() {
    for batch_size in [0, 4] {
        let device = unique("rejected");
        let (patient, device_id) = linked_device(&device).await;
        // The server refuses the 08:00 heart-rate Observation.
        let refused = hashed_id(
            Some(SERVICE_SYSTEM),
            &format!("{patient}.{device_id}.heartrate.20240301080000Z.20240301085959Z"),
        );
        let path = format!("/Observation/{refused}");
        let proxy = Proxy::start(&fhir_url(), move |_, method, request_path| {
            if method == "PUT" && request_path == path {
                Fault::Reject(422, "Observation.value[x]: rejected by a profile".into())
            } else {
                Fault::Pass
            }
        })
        .await;
        let api: Arc<dyn FhirApi> = Arc::new(RefuseInBundles {
            inner: client(&proxy.url),
            refused_id: refused.clone(),
        });
        let measurements = &batches(&device)[0];
        let report = writer(api, IdentityMode::Lookup, batch_size)
            .write(&templates(), measurements, at("2024-03-01T10:00:00Z"))
            .await
            .unwrap();
        assert_eq!(report.failures.len(), 1, "{report:?}");
        let failure = &report.failures[0];
        assert_eq!(failure.error.kind, FhirErrorKind::RequestRejected);
        assert!(failure.error.message.contains("422"), "{}", failure.error.message);
        assert!(failure.error.message.contains("rejected by a profile"));
        // The 08:00 readings are the even indices of the first 20.
        assert_eq!(failure.members, (0..20).step_by(2).collect::<Vec<_>>());
        assert_eq!(report.created, 6, "batch size {batch_size}");
        let landed = observations_of(&*client(&fhir_url()), &patient).await;
        assert_eq!(landed.len(), 6, "everything else landed");
    }
}

#[tokio::test]
async fn bundles_the_server_refuses_whole_are_retried_entry_by_entry() {
    let device = unique("refused-bundle");
    let (patient, device_id) = linked_device(&device).await;
    let refused = hashed_id(
        Some(SERVICE_SYSTEM),
        &format!("{patient}.{device_id}.heartrate.20240301080000Z.20240301085959Z"),
    );
    let path = format!("/Observation/{refused}");
    // Every Bundle is refused as a whole (as servers do when one entry does not parse); on its
    // own, only the 08:00 heart-rate Observation is.
    let proxy = Proxy::start(&fhir_url(), move |_, method, request_path| match method {
        "POST" => Fault::Reject(400, "Bundle.entry[3]: invalid content".into()),
        "PUT" if request_path == path => Fault::Reject(422, "Observation.value[x]: rejected by a profile".into()),
        _ => Fault::Pass,
    })
    .await;
    let report = writer(client(&proxy.url), IdentityMode::Lookup, 4)
        .write(&templates(), &batches(&device)[0], at("2024-03-01T10:00:00Z"))
        .await
        .expect("a refused Bundle does not fail the batch");
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].error.kind, FhirErrorKind::RequestRejected);
    assert_eq!(report.failures[0].members, (0..20).step_by(2).collect::<Vec<_>>());
    assert_eq!(report.created, 6);
    assert_eq!(observations_of(&*client(&fhir_url()), &patient).await.len(), 6);
}

#[tokio::test]
async fn a_search_the_server_refuses_fails_only_its_own_measurements() {
    for batch_size in [0, 4] {
        let device = unique("refused-search");
        let (patient, device_id) = linked_device(&device).await;
        let identifier = format!("{patient}.{device_id}.heartrate.20240301090000Z.20240301095959Z");
        // Searches are refused in Bundles and, for the 09:00 heart-rate identifier, on their own.
        let proxy = Proxy::start(&fhir_url(), move |_, method, request_path| {
            if method == "POST" {
                Fault::Reject(400, "batch searches are not supported".into())
            } else if method == "GET" && request_path.starts_with("/Observation?") && request_path.contains(&identifier)
            {
                Fault::Reject(400, "identifier: value too long".into())
            } else {
                Fault::Pass
            }
        })
        .await;
        let report = writer(client(&proxy.url), IdentityMode::Lookup, batch_size)
            .write(&templates(), &batches(&device)[0], at("2024-03-01T10:00:00Z"))
            .await
            .expect("a refused search does not fail the batch");
        assert_eq!(report.failures.len(), 1, "{report:?}");
        let failure = &report.failures[0];
        assert_eq!(failure.error.kind, FhirErrorKind::RequestRejected);
        assert!(
            failure.error.message.contains("value too long"),
            "{}",
            failure.error.message
        );
        // The 09:00 readings are the odd indices of the first 20.
        assert_eq!(failure.members, (1..20).step_by(2).collect::<Vec<_>>());
        assert_eq!(report.created, 6, "{report:?}");
        assert_eq!(observations_of(&*client(&fhir_url()), &patient).await.len(), 6);
    }
}
