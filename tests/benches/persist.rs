//! Observations persisted per second into a real FHIR server, against the server's own raw
//! batch-write rate of equivalent resources measured in the same run.
//!
//! Workload: 1,000 devices sending 1 Hz heart rate; hourly SampledData windows (3,600 slots).
//! Each round writes one minute of readings per device, as the worker does when it flushes open
//! windows: the first round of an hour resolves identities, searches and creates; later rounds
//! find the Observation in the cache, merge and write with `If-Match`. Measured for one request
//! per resource and for `batch` Bundles.
//!
//! Baseline: the same Observations (as stored after the runs) written again with plain `PUT`s in
//! `batch` Bundles of 100 by a bare HTTP client: what the server does at best.
//!
//! Run: `scripts/bench.sh persist` (starts the local FHIR server), or set `IOMT_TEST_FHIR_URL` and
//! run `cargo bench --bench persist`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use iomt_connector::adapters::fhir_http::{FhirClientConfig, FhirHttpClient};
use iomt_connector::fhir::identity::IdentityMode;
use iomt_connector::fhir::{FhirTemplateSet, Json};
use iomt_connector::model::{Measurement, MeasurementProperty};
use iomt_connector::pipeline::identity::{IdentityResolver, IdentitySettings};
use iomt_connector::pipeline::ports::{BatchReply, BatchRequest, FhirApi, FhirApiError};
use iomt_connector::pipeline::writer::{ObservationWriter, WriterSettings};

mod raw_write;
use raw_write::raw_batches;

const DEVICES: usize = 1000;
const ROUND_SECONDS: i64 = 60;
const WARM_ROUNDS: usize = 4;
const CONCURRENCY: usize = 8;
const BUNDLE: usize = 100;

/// Counts the requests that reach the server.
#[derive(Debug)]
struct Counting {
    inner: Arc<FhirHttpClient>,
    requests: AtomicUsize,
}

#[async_trait]
impl FhirApi for Counting {
    async fn search(&self, t: &str, p: &[(&str, String)], l: Option<usize>) -> Result<Vec<Json>, FhirApiError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.search(t, p, l).await
    }

    async fn put(&self, resource: &Json, if_match: Option<&str>) -> Result<Json, FhirApiError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.put(resource, if_match).await
    }

    async fn batch(&self, requests: Vec<BatchRequest>) -> Result<Vec<Result<BatchReply, FhirApiError>>, FhirApiError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.batch(requests).await
    }
}

fn templates() -> FhirTemplateSet {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/templates/json-device/fhirmapping.json"
    ))
    .expect("sample FHIR mapping");
    FhirTemplateSet::parse(&text).expect("valid")
}

fn device(run: &str, index: usize) -> String {
    format!("{run}-monitor-{index:04}")
}

/// One round: `ROUND_SECONDS` of 1 Hz readings for every device, starting at `start`.
fn round(run: &str, start: DateTime<Utc>) -> Vec<Measurement> {
    let mut measurements = Vec::with_capacity(DEVICES * ROUND_SECONDS as usize);
    for second in 0..ROUND_SECONDS {
        let time = start + TimeDelta::seconds(second);
        for index in 0..DEVICES {
            measurements.push(Measurement {
                type_name: "heartrate".into(),
                occurrence_time_utc: time,
                ingestion_time_utc: Some(time),
                device_id: device(run, index).into(),
                patient_id: None,
                encounter_id: None,
                correlation_id: None,
                properties: vec![MeasurementProperty {
                    name: "hr".into(),
                    value: (60 + (index as i64 + second) % 40).to_string().into(),
                }],
            });
        }
    }
    measurements
}

/// Devices and Patients for a run, written in Bundles (not measured).
async fn setup(http: &reqwest::Client, url: &str, run: &str) {
    let mut entries = Vec::new();
    for index in 0..DEVICES {
        let patient = format!("{run}-patient-{index:04}");
        entries.push(format!(
            r#"{{"resource":{{"resourceType":"Patient","id":"{patient}"}},"request":{{"method":"PUT","url":"Patient/{patient}"}}}}"#
        ));
        let device_id = format!("{run}-d-{index:04}");
        entries.push(format!(
            r#"{{"resource":{{"resourceType":"Device","id":"{device_id}","identifier":[{{"value":"{}"}}],"patient":{{"reference":"Patient/{patient}"}}}},"request":{{"method":"PUT","url":"Device/{device_id}"}}}}"#,
            device(run, index)
        ));
    }
    raw_batches(http, url, entries, BUNDLE, CONCURRENCY / 2).await;
}

struct Rates {
    cold: f64,
    warm: f64,
    requests_per_observation_warm: f64,
}

async fn measure(url: &str, run: &str, batch_size: usize, hour: DateTime<Utc>) -> Rates {
    let client = Arc::new(FhirHttpClient::new(&FhirClientConfig::new(url), None).unwrap());
    let api = Arc::new(Counting {
        inner: client,
        requests: AtomicUsize::new(0),
    });
    let identities = IdentityResolver::new(
        api.clone(),
        IdentitySettings {
            mode: IdentityMode::Lookup,
            ..IdentitySettings::default()
        },
    );
    let writer = ObservationWriter::new(
        api.clone(),
        identities,
        WriterSettings {
            batch_size,
            concurrency: if batch_size > 0 { CONCURRENCY / 2 } else { CONCURRENCY },
            ..WriterSettings::default()
        },
    );
    let templates = templates();
    let mut cold = Duration::ZERO;
    let mut warm = Duration::ZERO;
    let mut warm_requests = 0;
    for index in 0..=WARM_ROUNDS {
        let measurements = round(run, hour + TimeDelta::seconds(index as i64 * ROUND_SECONDS));
        let before = api.requests.load(Ordering::Relaxed);
        let started = Instant::now();
        let report = writer
            .write(&templates, &measurements, Utc::now())
            .await
            .expect("written");
        let elapsed = started.elapsed();
        assert!(report.failures.is_empty(), "{:?}", report.failures.first());
        assert_eq!(report.created + report.updated, DEVICES, "{report:?}");
        if index == 0 {
            cold = elapsed;
        } else {
            warm += elapsed;
            warm_requests += api.requests.load(Ordering::Relaxed) - before;
        }
    }
    Rates {
        cold: DEVICES as f64 / cold.as_secs_f64(),
        warm: (DEVICES * WARM_ROUNDS) as f64 / warm.as_secs_f64(),
        requests_per_observation_warm: warm_requests as f64 / (DEVICES * WARM_ROUNDS) as f64,
    }
}

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("IOMT_TEST_FHIR_URL") else {
        eprintln!("IOMT_TEST_FHIR_URL is not set: run scripts/bench.sh persist (it starts the local FHIR server)");
        std::process::exit(2);
    };
    let url = url.trim_end_matches('/').to_string();
    let http = reqwest::Client::new();
    let run = format!("bench{}", Utc::now().timestamp() % 100_000);
    setup(&http, &url, &run).await;
    let hour = |h: u32| {
        DateTime::parse_from_rfc3339(&format!("2024-03-01T{h:02}:00:00Z"))
            .unwrap()
            .with_timezone(&Utc)
    };

    let single = measure(&url, &run, 0, hour(8)).await;
    let bundled = measure(&url, &run, BUNDLE, hour(10)).await;

    // Baseline: the stored Observations written again, plain PUTs in Bundles of 100.
    let stored = FhirHttpClient::new(&FhirClientConfig::new(&url), None)
        .unwrap()
        .search(
            "Observation",
            &[("_count", "1000".into()), ("code", "8867-4".into())],
            None,
        )
        .await
        .unwrap();
    let equivalent: Vec<String> = stored
        .iter()
        .filter(|o| {
            o.get("identifier")
                .and_then(Json::as_array)
                .and_then(|ids| ids.first())
                .and_then(|id| id.get("value"))
                .and_then(Json::as_str)
                .is_some_and(|value| value.starts_with(&format!("{run}-patient-")))
        })
        .map(|observation| {
            let id = observation.get("id").and_then(Json::as_str).unwrap();
            format!(
                r#"{{"resource":{},"request":{{"method":"PUT","url":"Observation/{id}"}}}}"#,
                observation.to_json()
            )
        })
        .collect();
    let count = equivalent.len();
    let raw = count as f64
        / raw_batches(&http, &url, equivalent, BUNDLE, CONCURRENCY / 2)
            .await
            .as_secs_f64();

    println!(
        "persist: {DEVICES} devices, 1 Hz heart rate, hourly SampledData (3600 slots); rounds of {ROUND_SECONDS} s of readings"
    );
    println!(
        "  baseline: server raw batch writes (plain PUT, Bundles of {BUNDLE}): {raw:>8.0} resources/s ({count} resources)"
    );
    for (name, rates) in [
        ("one request per resource", &single),
        ("batch Bundles of 100", &bundled),
    ] {
        println!("  {name}:");
        println!(
            "    first round (lookup, search, create): {:>8.0} Observations/s  ratio {:.2}x",
            rates.cold,
            rates.cold / raw
        );
        println!(
            "    later rounds (cache, merge, If-Match): {:>7.0} Observations/s  ratio {:.2}x  ({:.3} requests per Observation)",
            rates.warm,
            rates.warm / raw,
            rates.requests_per_observation_warm
        );
    }
}
