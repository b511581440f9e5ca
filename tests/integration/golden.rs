//! Golden fixtures: one folder per case under `tests/fixtures/<suite>/<case>/`.
//!
//! - `device/<case>/`: `template.json` plus `input.jsonl` (bodies) or `envelope.jsonl` (envelopes);
//!   `expected.jsonl` holds the Measurements and `expected_errors.jsonl` the error records (either
//!   may be absent when empty).
//! - `templates_invalid/<case>/`: `template.json` and `expected.txt`, the `file:line:col: message`
//!   lines `iomt templates check` prints.
//! - `fhir/<case>/`: `fhirmapping.json`, `measurements.jsonl` and optionally `existing.ndjson`
//!   (Observations to merge into); `expected.ndjson` holds the Observations `iomt transform`
//!   prints and `expected_errors.jsonl` the error records. Every Observation must also be valid
//!   R4 and its SampledData must read back to the input readings.
//! - `map/<case>/`: `devicecontent.json`, `fhirmapping.json` and `input.jsonl` (bodies) for
//!   `iomt map`; expected files as for `fhir`.
//! - `fhir_templates_invalid/<case>/`: as `templates_invalid`, checked with `--kind fhir`.
//!
//! `IOMT_BLESS=1 cargo test --test integration golden` rewrites the expected files; review the diff.

use std::path::Path;

use serde_json::Value;

use crate::fhir_r4::{observation_problems, parse_date_time};
use crate::util::{TempDir, assert_matches_file, fixtures, iomt};

fn cases(suite: &str) -> Vec<std::path::PathBuf> {
    let mut cases: Vec<_> = std::fs::read_dir(fixtures().join(suite))
        .expect("fixture suite exists")
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|path| path.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no fixtures in {suite}");
    cases
}

fn run_device_case(case: &Path) {
    let name = case.file_name().unwrap().to_string_lossy().to_string();
    let (input, format) = if case.join("envelope.jsonl").exists() {
        (case.join("envelope.jsonl"), "envelope")
    } else {
        (case.join("input.jsonl"), "body")
    };
    let scratch = TempDir::new("golden");
    let errors = scratch.path().join("errors.jsonl");
    let output = iomt()
        .arg("normalize")
        .arg("--device-mapping")
        .arg(case.join("template.json"))
        .arg("--input")
        .arg(&input)
        .args(["--format", format])
        .arg("--errors")
        .arg(&errors)
        .output()
        .expect("iomt runs");
    assert!(
        output.status.success(),
        "{name}: exit {:?}\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert_matches_file(&case.join("expected.jsonl"), &stdout, &name);
    let errors = std::fs::read_to_string(&errors).unwrap_or_default();
    assert_matches_file(&case.join("expected_errors.jsonl"), &errors, &name);
}

#[test]
fn device_mapping_fixtures() {
    for case in cases("device") {
        run_device_case(&case);
    }
}

#[test]
fn invalid_template_fixtures() {
    check_invalid_templates("templates_invalid", "device");
}

#[test]
fn invalid_fhir_template_fixtures() {
    check_invalid_templates("fhir_templates_invalid", "fhir");
}

fn check_invalid_templates(suite: &str, kind: &str) {
    for case in cases(suite) {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let output = iomt()
            .current_dir(&case)
            .args(["templates", "check", "template.json", "--kind", kind])
            .output()
            .expect("iomt runs");
        assert_eq!(output.status.code(), Some(1), "{name}: an invalid template exits 1");
        let stderr = String::from_utf8(output.stderr).expect("UTF-8 output");
        assert_matches_file(&case.join("expected.txt"), &stderr, &name);
    }
}

#[test]
fn fhir_mapping_fixtures() {
    for case in cases("fhir") {
        let mut command = iomt();
        command
            .arg("transform")
            .arg("--fhir-mapping")
            .arg(case.join("fhirmapping.json"))
            .arg("--input")
            .arg(case.join("measurements.jsonl"));
        run_observation_case(&case, command, &case.join("measurements.jsonl"));
    }
}

#[test]
fn map_fixtures() {
    for case in cases("map") {
        let mut command = iomt();
        command
            .arg("map")
            .arg("--device-mapping")
            .arg(case.join("devicecontent.json"))
            .arg("--fhir-mapping")
            .arg(case.join("fhirmapping.json"))
            .arg("--input")
            .arg(case.join("input.jsonl"));
        // The Measurements `iomt map` transformed, for the read-back check.
        let scratch = TempDir::new("map-measurements");
        let measurements = scratch.path().join("measurements.jsonl");
        let normalized = iomt()
            .arg("normalize")
            .arg("--device-mapping")
            .arg(case.join("devicecontent.json"))
            .arg("--input")
            .arg(case.join("input.jsonl"))
            .arg("--errors")
            .arg(scratch.path().join("errors.jsonl"))
            .output()
            .expect("iomt runs");
        std::fs::write(&measurements, normalized.stdout).expect("measurements are written");
        run_observation_case(&case, command, &measurements);
    }
}

/// Runs a transform or map case and checks its output against the expected files, R4 and the
/// input readings.
fn run_observation_case(case: &Path, mut command: std::process::Command, measurements: &Path) {
    let name = case.file_name().unwrap().to_string_lossy().to_string();
    let scratch = TempDir::new("golden-fhir");
    let errors = scratch.path().join("errors.jsonl");
    if case.join("existing.ndjson").exists() {
        command.arg("--existing").arg(case.join("existing.ndjson"));
    }
    let output = command.arg("--errors").arg(&errors).output().expect("iomt runs");
    assert!(
        output.status.success(),
        "{name}: exit {:?}\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert_matches_file(&case.join("expected.ndjson"), &stdout, &name);
    let errors = std::fs::read_to_string(&errors).unwrap_or_default();
    assert_matches_file(&case.join("expected_errors.jsonl"), &errors, &name);

    let readings = read_measurements(measurements);
    let merged = case.join("existing.ndjson").exists();
    for line in stdout.lines() {
        let observation: Value = serde_json::from_str(line).expect("an Observation is JSON");
        let problems = observation_problems(&observation);
        assert!(problems.is_empty(), "{name}: not valid R4: {problems:?}\n{line}");
        check_sampled_data_reads_back(&name, &observation, &readings, merged);
    }
}

/// One input reading: type, device, patient, property name, time, value.
struct InputReading {
    type_name: String,
    device: String,
    patient: Option<String>,
    name: String,
    time: chrono::DateTime<chrono::Utc>,
    value: String,
}

fn read_measurements(path: &Path) -> Vec<InputReading> {
    let text = std::fs::read_to_string(path).expect("measurements are readable");
    let mut readings = Vec::new();
    for line in text.lines() {
        let Ok(Value::Object(measurement)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let field = |name: &str| {
            measurement
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .and_then(|(_, value)| value.as_str())
                .map(str::to_string)
        };
        let (Some(type_name), Some(device), Some(time)) = (
            field("Type"),
            field("DeviceId"),
            field("OccurrenceTimeUtc").as_deref().and_then(parse_date_time),
        ) else {
            continue;
        };
        let properties = measurement
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case("Properties"))
            .and_then(|(_, value)| value.as_array().cloned())
            .unwrap_or_default();
        for property in properties {
            let member = |name: &str| {
                property.as_object().and_then(|object| {
                    object
                        .iter()
                        .find(|(key, _)| key.eq_ignore_ascii_case(name))
                        .and_then(|(_, value)| value.as_str())
                        .map(str::to_string)
                })
            };
            if let (Some(name), Some(value)) = (member("Name"), member("Value")) {
                readings.push(InputReading {
                    type_name: type_name.clone(),
                    device: device.clone(),
                    patient: field("PatientId"),
                    name,
                    time,
                    value,
                });
            }
        }
    }
    readings
}

/// Every SampledData token must be an input reading of the Observation's type and device that
/// falls in the token's slot; without existing Observations, every slot holding input readings
/// must hold a token.
fn check_sampled_data_reads_back(case: &str, observation: &Value, readings: &[InputReading], merged: bool) {
    let type_name = observation["code"]["text"].as_str().unwrap_or_default();
    let device = observation["device"]["reference"]
        .as_str()
        .and_then(|reference| reference.strip_prefix("Device/"))
        .unwrap_or_default();
    let patient = observation["subject"]["reference"]
        .as_str()
        .and_then(|reference| reference.strip_prefix("Patient/"));
    let start = parse_date_time(observation["effectivePeriod"]["start"].as_str().unwrap_or_default());
    let end = parse_date_time(observation["effectivePeriod"]["end"].as_str().unwrap_or_default());
    let (Some(start), Some(end)) = (start, end) else { return };
    let mut holders: Vec<(Option<&str>, &Value)> = vec![(None, observation)];
    if let Some(components) = observation["component"].as_array() {
        holders.extend(components.iter().map(|c| (c["code"]["text"].as_str(), c)));
    }
    for (component_name, holder) in holders {
        let Some(sampled) = holder.get("valueSampledData") else {
            continue;
        };
        let period_ms = sampled["period"].as_f64().expect("a numeric period");
        let period = chrono::TimeDelta::nanoseconds((period_ms * 1_000_000.0).round() as i64);
        let data = sampled["data"].as_str().expect("SampledData has data");
        let matches = |reading: &&InputReading| {
            reading.type_name == type_name
                && reading.device == device
                && reading.patient.as_deref() == patient
                && component_name.is_none_or(|name| reading.name == name)
        };
        let mut filled = 0;
        for (slot, token) in data.split(' ').enumerate() {
            if token == "E" {
                continue;
            }
            filled += 1;
            let slot_start = start + period * slot as i32;
            let found = readings.iter().filter(matches).any(|reading| {
                reading.value == token && reading.time >= slot_start && reading.time < slot_start + period
            });
            assert!(
                found || merged,
                "{case}: token {token:?} at slot {slot} of {type_name} matches no input reading"
            );
        }
        if !merged {
            let mut slots: Vec<i64> = readings
                .iter()
                .filter(matches)
                .filter(|reading| reading.time >= start && reading.time <= end)
                .map(|reading| (reading.time - start).num_nanoseconds().unwrap() / period.num_nanoseconds().unwrap())
                .collect();
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(filled, slots.len(), "{case}: {type_name} has a token per filled slot");
        }
    }
}
