//! `iomt run --local`: the pipeline on files, as a new user first runs it.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::fhir_r4::observation_problems;
use crate::util::{TempDir, iomt};

fn sample(folder: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("templates")
        .join(folder)
        .join(file)
}

fn run_local(state: &Path, device: &Path, fhir: &Path, inputs: &[&Path], format: &str) -> std::process::Output {
    let mut command = iomt();
    command
        .args(["run", "--local", "--device-mapping"])
        .arg(device)
        .arg("--fhir-mapping")
        .arg(fhir)
        .arg("--state-dir")
        .arg(state)
        .args(["--format", format, "--max-latency-ms", "200"]);
    for input in inputs {
        command.arg("--input").arg(input);
    }
    command.output().expect("iomt runs")
}

/// Observations without what differs between runs (`meta`, `issued`), by identifier.
fn observations(text: &str) -> Vec<Value> {
    let mut list: Vec<Value> = text
        .lines()
        .map(|line| {
            let mut observation: Value = serde_json::from_str(line).unwrap();
            let object = observation.as_object_mut().unwrap();
            object.remove("meta");
            object.remove("issued");
            observation
        })
        .collect();
    list.sort_by(|a, b| {
        a["identifier"][0]["value"]
            .as_str()
            .cmp(&b["identifier"][0]["value"].as_str())
    });
    list
}

fn stored(state: &Path) -> Vec<Value> {
    observations(&std::fs::read_to_string(state.join("fhir").join("Observation.ndjson")).unwrap_or_default())
}

#[test]
fn the_local_pipeline_lands_what_map_shows_for_every_sample() {
    for (folder, input, format) in [
        ("json-device", "messages.jsonl", "body"),
        ("iot-hub", "envelopes.jsonl", "envelope"),
        ("iot-central", "messages.jsonl", "body"),
        ("calculated-units", "messages.jsonl", "body"),
    ] {
        let dir = TempDir::new("local");
        let output = run_local(
            dir.path(),
            &sample(folder, "devicecontent.json"),
            &sample(folder, "fhirmapping.json"),
            &[&sample(folder, input)],
            format,
        );
        assert!(
            output.status.success(),
            "{folder}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let landed = stored(dir.path());
        let mapped = iomt()
            .args(["map", "--format", format, "--device-mapping"])
            .arg(sample(folder, "devicecontent.json"))
            .arg("--fhir-mapping")
            .arg(sample(folder, "fhirmapping.json"))
            .arg("--input")
            .arg(sample(folder, input))
            .output()
            .unwrap();
        assert!(!landed.is_empty(), "{folder}");
        assert_eq!(
            landed,
            observations(&String::from_utf8(mapped.stdout).unwrap()),
            "{folder}"
        );
        for observation in &landed {
            assert_eq!(observation_problems(observation), Vec::<String>::new(), "{folder}");
        }
        let summary = String::from_utf8_lossy(&output.stderr);
        assert!(summary.contains(&format!("{} created", landed.len())), "{summary}");
    }
}

/// Heart-rate messages for one device, one per second from 08:00:00.
fn heart_rate_lines(range: std::ops::Range<u32>) -> String {
    range
        .map(|second| {
            format!(
                r#"{{"deviceid":"monitor-777","patientid":"patient-777","measurementdatetime":"2024-03-01T08:{:02}:{:02}Z","heartrate":{}}}"#,
                second / 60,
                second % 60,
                60 + second % 30
            ) + "\n"
        })
        .collect()
}

fn data_of(observations: &[Value]) -> Vec<(String, String)> {
    observations
        .iter()
        .map(|o| {
            (
                o["identifier"][0]["value"].as_str().unwrap().to_string(),
                o["valueSampledData"]["data"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_restart_resumes_after_the_checkpoint_and_ends_where_one_run_ends() {
    let device = sample("json-device", "devicecontent.json");
    let fhir = sample("json-device", "fhirmapping.json");
    let whole = TempDir::new("whole");
    let input = whole.path().join("in.jsonl");
    std::fs::write(&input, heart_rate_lines(0..120)).unwrap();
    assert!(
        run_local(&whole.path().join("state"), &device, &fhir, &[&input], "body")
            .status
            .success()
    );
    let expected = stored(&whole.path().join("state"));

    let parts = TempDir::new("parts");
    let input = parts.path().join("in.jsonl");
    let state = parts.path().join("state");
    std::fs::write(&input, heart_rate_lines(0..50)).unwrap();
    assert!(run_local(&state, &device, &fhir, &[&input], "body").status.success());
    let mut file = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    std::io::Write::write_all(&mut file, heart_rate_lines(50..120).as_bytes()).unwrap();
    let second = run_local(&state, &device, &fhir, &[&input], "body");
    let summary = String::from_utf8_lossy(&second.stderr);
    assert!(summary.contains("70 events"), "only the new lines are read: {summary}");
    let actual = stored(&state);
    assert_eq!(data_of(&actual), data_of(&expected));
    assert_eq!(
        actual[0]["status"], "amended",
        "the second run merged into the first run's Observation"
    );
}

#[test]
fn poison_messages_are_dead_lettered_and_a_template_fix_redrives_them() {
    let dir = TempDir::new("poison");
    let state = dir.path().join("state");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"deviceid":"m1","patientid":"p1","measurementdatetime":"2024-03-01T08:00:00Z","heartrate":72}"#,
            "\n{not json\n",
            r#"{"deviceid":"m1","patientid":"p1","measurementdatetime":"yesterday","heartrate":72}"#,
            "\n",
            r#"{"deviceid":"m1","patientid":"p1","measurementdatetime":"2024-03-01T08:00:05Z","temperature":36.9}"#,
            "\n",
            r#"{"deviceid":"m1","patientid":"p1","measurementdatetime":"2024-03-01T08:00:06Z","heartrate":73}"#,
            "\n"
        ),
    )
    .unwrap();
    // A FHIR mapping without body temperature: its Measurement cannot be mapped.
    let full: Value =
        serde_json::from_str(&std::fs::read_to_string(sample("json-device", "fhirmapping.json")).unwrap()).unwrap();
    let mut partial = full.clone();
    partial["template"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["template"]["typeName"] != "bodytemperature");
    let partial_path = dir.path().join("partial.json");
    std::fs::write(&partial_path, partial.to_string()).unwrap();
    let device = sample("json-device", "devicecontent.json");
    let output = run_local(&state, &device, &partial_path, &[&input], "body");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("3 dead-lettered"));
    let list = |state: &Path| -> Vec<Value> {
        let listed = iomt()
            .args(["deadletter", "list", "--state-dir"])
            .arg(state)
            .output()
            .unwrap();
        String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let records = list(&state);
    let kinds: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap(),
                r["errorKind"].as_str().unwrap(),
                r["offset"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("normalize", "InvalidDataFormatException", "2"),
            ("normalize", "IncompatibleDataException", "3"),
            ("transform", "TemplateNotFoundException", "4")
        ]
    );
    assert_eq!(records[0]["payload"], "{not json", "the payload is kept");
    assert_eq!(records[2]["payloadKind"], "measurement");
    // The heart-rate readings landed despite the poison around them.
    let landed = stored(&state);
    assert_eq!(landed.len(), 1);
    assert!(
        landed[0]["valueSampledData"]["data"]
            .as_str()
            .unwrap()
            .starts_with("72 E E E E E 73")
    );

    let redrive = iomt()
        .args(["deadletter", "redrive", "--state-dir"])
        .arg(&state)
        .arg("--device-mapping")
        .arg(&device)
        .arg("--fhir-mapping")
        .arg(sample("json-device", "fhirmapping.json"))
        .output()
        .unwrap();
    assert!(redrive.status.success(), "{}", String::from_utf8_lossy(&redrive.stderr));
    let remaining = list(&state);
    assert_eq!(remaining.len(), 2, "the unfixable two stay: {remaining:#?}");
    assert!(remaining.iter().all(|r| r["stage"] == "normalize"));
    let landed = stored(&state);
    assert_eq!(landed.len(), 2);
    assert!(
        landed.iter().any(|o| o["code"]["coding"][0]["code"] == "8310-5"),
        "the temperature landed"
    );
}

#[test]
fn an_invalid_template_stops_the_run_with_positions() {
    let dir = TempDir::new("invalid");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"templateType\":\"CollectionFhir\",\"template\":[{\"templateType\":\"CodeValueFhir\",\"template\":{\"typeName\":\"hr\"}}]}").unwrap();
    let output = run_local(
        &dir.path().join("state"),
        &sample("json-device", "devicecontent.json"),
        &broken,
        &[&sample("json-device", "messages.jsonl")],
        "body",
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.json:1:"), "{stderr}");
    assert!(
        stderr.contains("Required property 'Codes' not found in JSON."),
        "{stderr}"
    );
}

#[test]
fn an_oversize_message_is_dead_lettered_and_the_rest_lands() {
    let dir = TempDir::new("oversize");
    let state = dir.path().join("state");
    let input = dir.path().join("in.jsonl");
    let huge = format!(
        r#"{{"deviceid":"m1","patientid":"p1","measurementdatetime":"2024-03-01T08:00:01Z","heartrate":70,"note":"{}"}}"#,
        "x".repeat(1_500_000)
    );
    let small = r#"{"deviceid":"m1","patientid":"p1","measurementdatetime":"2024-03-01T08:00:00Z","heartrate":72}"#;
    std::fs::write(&input, format!("{small}\n{huge}\n")).unwrap();
    let output = run_local(
        &state,
        &sample("json-device", "devicecontent.json"),
        &sample("json-device", "fhirmapping.json"),
        &[&input],
        "body",
    );
    assert!(output.status.success());
    let listed = iomt()
        .args(["deadletter", "list", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let records: Vec<Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["errorKind"], "MessageTooLargeException");
    assert_eq!(
        records[0]["payload"].as_str().unwrap().len(),
        huge.len(),
        "the payload is kept whole"
    );
    let landed = stored(&state);
    assert_eq!(landed.len(), 1);
    assert!(
        landed[0]["valueSampledData"]["data"]
            .as_str()
            .unwrap()
            .starts_with("72 E")
    );
}

#[test]
fn health_and_metrics_are_served_while_running() {
    let dir = TempDir::new("metrics");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, heart_rate_lines(0..5)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = iomt()
        .args(["run", "--local", "--follow", "--device-mapping"])
        .arg(sample("json-device", "devicecontent.json"))
        .arg("--fhir-mapping")
        .arg(sample("json-device", "fhirmapping.json"))
        .arg("--input")
        .arg(&input)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--max-latency-ms", "100", "--metrics-port", &port.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        Some((status, text))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let metrics = loop {
        if let Some((200, text)) = get("/metrics")
            && text.contains(r#"iomt_observations_total{operation="created"} 1"#)
        {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", get("/metrics"));
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let health = get("/healthz").expect("healthz answers");
    assert_eq!(health.0, 200);
    assert!(health.1.ends_with("ok\n"), "{}", health.1);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(get("/healthz").map(|r| r.0), None, "stopped with the process");
    for name in [
        r#"iomt_events_received_total{stage="transform"} 5"#,
        "iomt_measurements_grouped_total 5",
        "iomt_end_to_end_latency_seconds_count 5",
        r#"iomt_fhir_request_duration_seconds_count{operation="batch",outcome="ok"}"#,
        "# TYPE iomt_pending_measurements gauge",
    ] {
        assert!(metrics.contains(name), "{name} missing in\n{metrics}");
    }
    assert!(
        !metrics.contains("patient-777") && !metrics.contains("monitor-777"),
        "no ids in labels"
    );
}

#[test]
fn snapshot_readings_that_cannot_be_read_back_are_dead_lettered_not_dropped() {
    let dir = TempDir::new("snapshot");
    let state = dir.path().join("state");
    let device = sample("json-device", "devicecontent.json");
    let fhir = sample("json-device", "fhirmapping.json");
    let snapshots = state.join("state").join("local");
    std::fs::create_dir_all(&snapshots).unwrap();
    // A snapshot left by an earlier run: one good reading, one without a type.
    let reading = |measurement: Value| json!({"measurement": measurement, "partition": "in.jsonl", "offset": "1"});
    let good = json!({"Type": "heartrate", "OccurrenceTimeUtc": "2024-03-01T09:00:00Z", "DeviceId": "m1",
                      "PatientId": "p1", "Properties": [{"Name": "hr", "Value": "88"}]});
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("Type");
    let snapshot = json!({"version": 1, "pending": [reading(good), reading(bad)]});
    std::fs::write(snapshots.join("in.jsonl.json"), snapshot.to_string()).unwrap();
    // And one that is not a snapshot at all.
    std::fs::write(snapshots.join("other.jsonl.json"), "{torn write").unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        r#"{"deviceid":"m1","patientid":"p1","measurementdatetime":"2024-03-01T08:00:00Z","heartrate":72}"#,
    )
    .unwrap();
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, "").unwrap();
    let output = run_local(&state, &device, &fhir, &[&input, &other], "body");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let landed = stored(&state);
    assert_eq!(landed.len(), 2, "the 08:00 reading and the snapshot's 09:00 reading");
    let listed = iomt()
        .args(["deadletter", "list", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let mut records: Vec<Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    records.sort_by_key(|r| r["errorKind"].as_str().unwrap().to_string());
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0]["errorKind"], "MeasurementProcessingException");
    assert_eq!(records[0]["message"], "Type is required");
    assert_eq!(records[0]["payloadKind"], "measurement");
    assert_eq!(records[1]["errorKind"], "SnapshotUnreadableException");
    assert_eq!(records[1]["payloadKind"], "snapshot");
    assert_eq!(records[1]["payload"], "{torn write", "the document is kept as it was");

    // A redrive keeps the snapshot for a person to look at.
    let redrive = iomt()
        .args(["deadletter", "redrive", "--state-dir"])
        .arg(&state)
        .arg("--device-mapping")
        .arg(&device)
        .arg("--fhir-mapping")
        .arg(&fhir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&redrive.stderr);
    assert!(redrive.status.success(), "{stderr}");
    assert!(stderr.contains("cannot be redriven"), "{stderr}");
    let listed = iomt()
        .args(["deadletter", "list", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let remaining = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(remaining.lines().count(), 2, "{remaining}");
}
