//! Throughput of `normalize` on a realistic mixed corpus, against a serde_json baseline measured
//! in the same run.
//!
//! The corpus mixes JSON-device bodies (JsonPathContent), IoT Hub envelopes (IotJsonPathContent)
//! and unit-converting messages (CalculatedContent with JMESPath). As in a deployment, one
//! device mapping holds every template and each message is evaluated against all of them. The
//! measured work per message is what `iomt normalize` does per line minus I/O: parse the line,
//! apply the templates, serialize the Measurements. The baseline parses the same lines into
//! `serde_json::Value` and serializes them back.
//!
//! Run: `cargo bench --bench normalize` (release build). Prints messages/s for both and the ratio,
//! then where normalize spends its time: parsing, each message family's templates, writing.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use iomt_connector::device::DeviceTemplateSet;
use iomt_connector::model::{DeviceEvent, EventFormat, MeasurementWriter};

const MESSAGES: usize = 30_000;
const ROUNDS: usize = 7;

fn template_array(path: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(format!("{}/templates/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["template"].as_array().unwrap().clone()
}

/// One collection holding the templates of the three sample scenarios.
fn combined_templates() -> DeviceTemplateSet {
    let mut all = Vec::new();
    for path in [
        "json-device/devicecontent.json",
        "iot-hub/devicecontent.json",
        "calculated-units/devicecontent.json",
    ] {
        all.extend(template_array(path));
    }
    let collection = serde_json::json!({ "templateType": "CollectionContent", "template": all });
    DeviceTemplateSet::parse(&collection.to_string()).expect("sample templates are valid")
}

fn envelope(body: String, properties: &str, system: &str) -> String {
    format!(r#"{{"Body":{body},"Properties":{properties},"SystemProperties":{system}}}"#)
}

/// A deterministic corpus of envelope lines: a third of each message family, values varying. The
/// families do not overlap, as type matches of one deployment's templates should not.
fn corpus() -> Vec<String> {
    (0..MESSAGES)
        .map(|i| {
            let second = i % 3600;
            let time = format!("2024-03-01T{:02}:{:02}:{:02}Z", 8 + second / 3600, (second / 60) % 60, second % 60);
            let device = format!("device-{:04}", i % 1000);
            match i % 3 {
                0 => envelope(
                    format!(
                        r#"{{"deviceid":"{device}","patientid":"patient-{:04}","measurementdatetime":"{time}","heartrate":{},"respiratoryrate":{},"spo2":{}}}"#,
                        i % 1000,
                        60 + i % 40,
                        12 + i % 8,
                        92 + i % 8
                    ),
                    "{}",
                    "{}",
                ),
                1 => envelope(
                    format!(r#"{{"heartRate":{},"patientId":"patient-{:04}"}}"#, 60 + i % 40, i % 1000),
                    &format!(r#"{{"iothub-creation-time-utc":"{time}"}}"#),
                    &format!(r#"{{"iothub-connection-device-id":"{device}","iothub-enqueuedtime":"{time}"}}"#),
                ),
                _ => envelope(
                    format!(
                        r#"{{"device":"{device}","patient":"patient-{:04}","temperatureF":{}.{},"ts":{},"readings":[{{"type":"weight","pounds":{}.5,"tsMs":{}}}]}}"#,
                        i % 1000,
                        97 + i % 4,
                        i % 10,
                        1_709_280_000 + i,
                        140 + i % 60,
                        1_709_280_000_000_i64 + i as i64 * 1000
                    ),
                    "{}",
                    "{}",
                ),
            }
        })
        .collect()
}

fn normalize_all(templates: &DeviceTemplateSet, lines: &[String], now: DateTime<Utc>) -> usize {
    let mut produced = 0;
    let mut out = String::with_capacity(1024);
    let mut writer = MeasurementWriter::default();
    let mut measurements = Vec::new();
    for line in lines {
        let event = DeviceEvent::parse(line, EventFormat::Envelope).unwrap();
        measurements.clear();
        templates.normalize_into(&event, now, &mut measurements).unwrap();
        for measurement in &measurements {
            out.clear();
            writer.write(measurement, &mut out);
            produced += 1;
        }
        black_box(&out);
    }
    produced
}

fn baseline_all(lines: &[String]) -> usize {
    let mut bytes = 0;
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        bytes += black_box(serde_json::to_string(&value).unwrap()).len();
    }
    bytes
}

/// Per-message time of each phase of normalize.
fn breakdown(templates: &DeviceTemplateSet, lines: &[String], now: DateTime<Utc>) {
    let per_message = |duration: Duration, count: usize| duration.as_secs_f64() * 1e6 / count as f64;
    let parse = best_of(|| {
        for line in lines {
            black_box(DeviceEvent::parse(line, EventFormat::Envelope).unwrap());
        }
    });
    let serde_parse = best_of(|| {
        for line in lines {
            black_box(serde_json::from_str::<serde_json::Value>(line).unwrap());
        }
    });
    println!(
        "  parse into events:     {:>6.2} us/msg (serde_json parse alone: {:.2})",
        per_message(parse, lines.len()),
        per_message(serde_parse, lines.len())
    );
    let events: Vec<DeviceEvent> = lines
        .iter()
        .map(|line| DeviceEvent::parse(line, EventFormat::Envelope).unwrap())
        .collect();
    for (family, name) in ["JSON device", "IoT Hub", "CalculatedContent"].iter().enumerate() {
        let subset: Vec<&DeviceEvent> = events.iter().skip(family).step_by(3).collect();
        let time = best_of(|| {
            for event in &subset {
                black_box(templates.normalize(event, now).unwrap());
            }
        });
        println!(
            "  templates, {name:<18} {:>6.2} us/msg",
            per_message(time, subset.len())
        );
    }
    let measurements: Vec<_> = events
        .iter()
        .flat_map(|event| templates.normalize(event, now).unwrap())
        .collect();
    let write = best_of(|| {
        let mut out = String::new();
        let mut writer = MeasurementWriter::default();
        for measurement in &measurements {
            out.clear();
            writer.write(measurement, &mut out);
            black_box(&out);
        }
    });
    println!(
        "  write Measurements:    {:>6.2} us/msg",
        per_message(write, lines.len())
    );
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
    let templates = combined_templates();
    let lines = corpus();
    let now = Utc::now();
    let measurements = normalize_all(&templates, &lines, now);
    assert!(measurements >= MESSAGES, "every message produces Measurements");

    // Interleave warm-up and measurement so both see the same machine state.
    baseline_all(&lines);
    let normalize = best_of(|| {
        black_box(normalize_all(&templates, &lines, now));
    });
    let baseline = best_of(|| {
        black_box(baseline_all(&lines));
    });
    let rate = |d: Duration| MESSAGES as f64 / d.as_secs_f64();
    println!(
        "corpus: {MESSAGES} messages, {} templates, {measurements} Measurements",
        templates.len()
    );
    println!(
        "normalize:            {:>10.0} msg/s  (best of {ROUNDS})",
        rate(normalize)
    );
    println!(
        "serde_json baseline:  {:>10.0} msg/s  (parse + serialize the same lines)",
        rate(baseline)
    );
    println!(
        "ratio normalize/baseline: {:.2}x (goal >= 0.5x)",
        rate(normalize) / rate(baseline)
    );
    println!("where normalize spends its time:");
    breakdown(&templates, &lines, now);
}
