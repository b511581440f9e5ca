//! Throughput of Observation building and the cost of a SampledData merge, each against a
//! baseline of serializing the same result, measured in the same run.
//!
//! 1. Build: a batch of 1 Hz heart-rate readings from 200 devices over one hour (hourly
//!    SampledData, 3,600 slots each) plus one blood-pressure reading per device per minute
//!    (Single windows, Quantity components): group, split into windows, build every Observation
//!    and serialize it. Baseline: serializing the same Observations.
//! 2. Merge: one hourly 1 Hz window (3,600 readings) merged into an existing Observation that
//!    already holds every other second of the hour (parse the stored JSON, merge, serialize). Baseline:
//!    parse and serialize the merged Observation.
//!
//! Run: `cargo bench --bench observations`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use iomt_connector::fhir::group::group_measurements;
use iomt_connector::fhir::observation::ResourceIds;
use iomt_connector::fhir::transform::{Upsert, plan_windows, upsert};
use iomt_connector::fhir::{FhirTemplateSet, Json};
use iomt_connector::model::{Measurement, MeasurementProperty};

const DEVICES: usize = 200;
const ROUNDS: usize = 5;

fn templates() -> FhirTemplateSet {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/templates/json-device/fhirmapping.json"
    ))
    .expect("sample FHIR mapping");
    FhirTemplateSet::parse(&text).expect("sample FHIR mapping is valid")
}

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-03-01T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn measurement(type_name: &str, device: usize, time: DateTime<Utc>, properties: &[(&str, String)]) -> Measurement {
    Measurement {
        type_name: type_name.into(),
        occurrence_time_utc: time,
        ingestion_time_utc: Some(time + TimeDelta::milliseconds(800)),
        device_id: format!("monitor-{device:04}").into(),
        patient_id: Some(format!("patient-{device:04}").into()),
        encounter_id: None,
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

/// One hour of 1 Hz heart rate and per-minute blood pressure for every device.
fn batch() -> Vec<Measurement> {
    let mut measurements = Vec::new();
    for device in 0..DEVICES {
        for second in 0..3600 {
            let time = start() + TimeDelta::seconds(second);
            measurements.push(measurement(
                "heartrate",
                device,
                time,
                &[("hr", (60 + (second + device as i64) % 40).to_string())],
            ));
            if second % 60 == 0 {
                measurements.push(measurement(
                    "bloodpressure",
                    device,
                    time,
                    &[
                        ("systolic", (110 + second % 30).to_string()),
                        ("diastolic", (70 + second % 20).to_string()),
                    ],
                ));
            }
        }
    }
    measurements
}

fn ids(device: &str, patient: &str) -> ResourceIds {
    ResourceIds {
        patient: patient.into(),
        device: device.into(),
        encounter: None,
    }
}

/// Groups, plans and builds every Observation of the batch; returns them serialized.
fn build_all(templates: &FhirTemplateSet, measurements: &[Measurement], issued: DateTime<Utc>) -> Vec<String> {
    let mut out = Vec::new();
    for group in group_measurements(measurements) {
        let plan = plan_windows(templates, &group, measurements).unwrap();
        let ids = ids(group.device_id, group.patient_id.unwrap());
        for window in &plan.windows {
            match upsert(plan.template, window, group.type_name, &ids, None, issued).unwrap() {
                Upsert::Create(built) => out.push(built.observation.to_json()),
                other => panic!("expected a create, got {other:?}"),
            }
        }
    }
    out
}

fn best_of(mut run: impl FnMut()) -> Duration {
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .min()
        .unwrap()
}

fn main() {
    let templates = templates();
    let issued = Utc::now();
    let measurements = batch();

    // 1. Build.
    let built = build_all(&templates, &measurements, issued);
    let parsed: Vec<Json> = built.iter().map(|text| Json::parse(text).unwrap()).collect();
    let build = best_of(|| {
        black_box(build_all(&templates, &measurements, issued));
    });
    let serialize = best_of(|| {
        for observation in &parsed {
            black_box(observation.to_json());
        }
    });
    let bytes: usize = built.iter().map(String::len).sum();
    println!(
        "build: {} Measurements from {DEVICES} devices -> {} Observations ({:.1} MB of JSON), best of {ROUNDS}",
        measurements.len(),
        built.len(),
        bytes as f64 / 1e6
    );
    println!(
        "  group + build + serialize: {:>9.0} Observations/s  {:>10.0} Measurements/s",
        built.len() as f64 / build.as_secs_f64(),
        measurements.len() as f64 / build.as_secs_f64()
    );
    println!(
        "  baseline serialize only:   {:>9.0} Observations/s",
        built.len() as f64 / serialize.as_secs_f64()
    );
    println!(
        "  ratio build/serialize time: {:.2}x",
        build.as_secs_f64() / serialize.as_secs_f64()
    );

    // 2. Merge one hourly 1 Hz window into an existing Observation holding the other half.
    let device = &measurements[..]
        .iter()
        .filter(|m| m.device_id == "monitor-0000" && m.type_name == "heartrate")
        .cloned()
        .collect::<Vec<_>>();
    let even: Vec<Measurement> = device
        .iter()
        .filter(|m| m.occurrence_time_utc.timestamp() % 2 == 0)
        .cloned()
        .collect();
    let existing_text = build_all(&templates, &even, issued).remove(0);
    let group = group_measurements(device).remove(0);
    let plan = plan_windows(&templates, &group, device).unwrap();
    let window = &plan.windows[0];
    let ids = ids("monitor-0000", "patient-0000");
    let merge_once = || {
        let existing = Json::parse(&existing_text).unwrap();
        match upsert(plan.template, window, "heartrate", &ids, Some(&existing), issued).unwrap() {
            Upsert::Update(built) => built.observation.to_json(),
            other => panic!("expected an update, got {other:?}"),
        }
    };
    let merged_text = merge_once();
    assert_eq!(
        merged_text.matches(" E").count(),
        0,
        "the merged hour has every slot filled"
    );
    const MERGES: u32 = 200;
    let merge = best_of(|| {
        for _ in 0..MERGES {
            black_box(merge_once());
        }
    }) / MERGES;
    let merged = Json::parse(&merged_text).unwrap();
    let serialize_merged = best_of(|| {
        for _ in 0..MERGES {
            black_box(merged.to_json());
        }
    }) / MERGES;
    let parse_and_serialize = best_of(|| {
        for _ in 0..MERGES {
            black_box(Json::parse(&merged_text).unwrap().to_json());
        }
    }) / MERGES;
    println!(
        "merge: 3600 readings into an hourly SampledData Observation holding 1800 of them ({} bytes)",
        merged_text.len()
    );
    println!("  parse + merge + serialize:  {:>8.1} us", merge.as_secs_f64() * 1e6);
    println!(
        "  baseline serialize only:    {:>8.1} us   ratio {:.2}x",
        serialize_merged.as_secs_f64() * 1e6,
        merge.as_secs_f64() / serialize_merged.as_secs_f64()
    );
    println!(
        "  baseline parse + serialize: {:>8.1} us   ratio {:.2}x",
        parse_and_serialize.as_secs_f64() * 1e6,
        merge.as_secs_f64() / parse_and_serialize.as_secs_f64()
    );
}
