//! The CLI contract of `iomt normalize` and `iomt templates check`.

use crate::util::{TempDir, iomt, run_with_stdin};

const HEART_RATE: &str = r#"{
  "templateType": "CollectionContent",
  "template": [
    {
      "templateType": "JsonPathContent",
      "template": {
        "typeName": "heartrate",
        "typeMatchExpression": "$..[?(@heartrate)]",
        "deviceIdExpression": "$.deviceid",
        "timestampExpression": "$.measurementdatetime",
        "patientIdExpression": "$.patientid",
        "values": [{ "required": "true", "valueExpression": "$.heartrate", "valueName": "hr" }]
      }
    }
  ]
}"#;

fn template(dir: &TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("devicecontent.json");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn normalize_reads_stdin_writes_measurements_and_keeps_going_after_bad_lines() {
    let dir = TempDir::new("cli");
    let mapping = template(&dir, HEART_RATE);
    let mut command = iomt();
    command.arg("normalize").arg("--device-mapping").arg(&mapping);
    let input = concat!(
        r#"{"heartrate":65,"deviceid":"device1","patientid":"patient1","measurementdatetime":"2023-10-09T19:18:23+00:00"}"#,
        "\n\n",
        "{broken\n",
        r#"{"heartrate":null,"deviceid":"device1","measurementdatetime":"2023-10-09T19:18:24Z"}"#,
        "\n",
        r#"{"steps":3}"#,
        "\n",
        r#"{"heartrate":70,"deviceid":"device2","measurementdatetime":"2023-10-09T19:18:25Z"}"#,
        "\n",
    );
    let output = run_with_stdin(command, input);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            r#"{"Type":"heartrate","OccurrenceTimeUtc":"2023-10-09T19:18:23Z","IngestionTimeUtc":"2024-01-01T00:00:00Z","DeviceId":"device1","PatientId":"patient1","EncounterId":null,"CorrelationId":null,"Properties":[{"Name":"hr","Value":"65"}]}"#,
            r#"{"Type":"heartrate","OccurrenceTimeUtc":"2023-10-09T19:18:25Z","IngestionTimeUtc":"2024-01-01T00:00:00Z","DeviceId":"device2","PatientId":null,"EncounterId":null,"CorrelationId":null,"Properties":[{"Name":"hr","Value":"70"}]}"#,
        ]
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    let errors: Vec<serde_json::Value> = stderr.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert_eq!(errors[0]["line"], 3);
    assert_eq!(errors[0]["error"], "InvalidDataFormatException");
    assert_eq!(errors[1]["line"], 4);
    assert_eq!(errors[1]["error"], "IncompatibleDataException");
    assert_eq!(
        errors[1]["message"],
        "Unable to extract required value for [hr]. A null or empty value was supplied for the required field [hr]"
    );
}

#[test]
fn error_records_keep_the_documented_member_order() {
    let dir = TempDir::new("cli");
    let mapping = template(&dir, HEART_RATE);
    let mut command = iomt();
    command
        .args(["normalize", "--input", "-", "--device-mapping"])
        .arg(&mapping);
    let output = run_with_stdin(command, "nope\n");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with(r#"{"line":1,"error":"InvalidDataFormatException","message":"#),
        "{stderr}"
    );
}

#[test]
fn envelope_format_and_errors_file() {
    let dir = TempDir::new("cli");
    let mapping = template(
        &dir,
        r#"{"templateType":"CollectionContent","template":[{"templateType":"IotJsonPathContent","template":{
            "typeName":"heartrate","typeMatchExpression":"$..[?(@Body.heartrate)]",
            "values":[{"required":true,"valueExpression":"$.Body.heartrate","valueName":"hr"}]}}]}"#,
    );
    let input = dir.path().join("events.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"Body":{"heartrate":78},"Properties":{"iothub-creation-time-utc":"2019-01-30T22:45:02.6073744Z"},"SystemProperties":{"iothub-connection-device-id":"dev-1","iothub-enqueuedtime":"2019-02-01T22:46:01.875Z"}}"#,
            "\n",
            r#"{"Body":{"heartrate":79},"Properties":{},"SystemProperties":{"iothub-connection-device-id":"dev-1","iothub-enqueuedtime":"2019-02-01T22:46:02Z"}}"#,
            "\n",
            "[1]\n",
        ),
    )
    .unwrap();
    let errors = dir.path().join("errors.jsonl");
    let output = iomt()
        .args(["normalize", "--format", "envelope", "--device-mapping"])
        .arg(&mapping)
        .arg("--input")
        .arg(&input)
        .arg("--errors")
        .arg(&errors)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(output.stderr.is_empty());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let measurements: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(measurements.len(), 2);
    assert_eq!(measurements[0]["OccurrenceTimeUtc"], "2019-01-30T22:45:02.6073744Z");
    assert_eq!(measurements[0]["IngestionTimeUtc"], "2019-02-01T22:46:01.875Z");
    assert_eq!(measurements[0]["DeviceId"], "dev-1");
    assert_eq!(measurements[1]["OccurrenceTimeUtc"], "2019-02-01T22:46:02Z");
    let errors = std::fs::read_to_string(&errors).unwrap();
    assert!(
        errors.contains(r#""line":3"#) && errors.contains("InvalidDataFormatException"),
        "{errors}"
    );
}

#[test]
fn invalid_template_or_arguments_exit_2() {
    let dir = TempDir::new("cli");
    let mapping = template(&dir, r#"{"templateType":"CollectionContent","template":{}}"#);
    let output = iomt()
        .arg("normalize")
        .arg("--device-mapping")
        .arg(&mapping)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("devicecontent.json:1:48: Expected an array for the template property value"),
        "{stderr}"
    );
    let output = iomt().args(["normalize", "--format", "xml"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = iomt()
        .args(["normalize", "--device-mapping", "/nonexistent.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn templates_check_reports_every_error_with_positions() {
    let dir = TempDir::new("cli");
    let good = template(&dir, HEART_RATE);
    let output = iomt().args(["templates", "check"]).arg(&good).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(output.stderr.is_empty());

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\n  \"templateType\": \"CollectionContent\",\n  \"template\": [\n    { \"templateType\": \"JsonPathContent\", \"template\": { \"typeName\": \"x\", \"bogus\": 1 } },\n    { \"templateType\": \"Nope\", \"template\": {} }\n  ]\n}\n",
    )
    .unwrap();
    let output = iomt().args(["templates", "check"]).arg(&bad).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let shown = bad.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{shown}:4:73: Could not find member 'bogus' on object of type 'JsonPathContentTemplate'."),
            format!("{shown}:4:54: Required property 'TypeMatchExpression' not found in JSON."),
            format!("{shown}:4:54: Required property 'DeviceIdExpression' not found in JSON."),
            format!("{shown}:4:54: Required property 'TimestampExpression' not found in JSON."),
            format!("{shown}:5:43: No match found for template type Nope."),
        ]
    );
}
