//! The sample templates under `templates/` are valid, normalize their sample messages cleanly and
//! map them to valid vital-signs Observations.

use std::path::Path;

use crate::fhir_r4::observation_problems;
use crate::util::iomt;

fn samples() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let mut folders: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    folders.sort();
    folders
}

#[test]
fn every_sample_template_passes_check() {
    let folders = samples();
    assert!(folders.len() >= 4);
    for folder in folders {
        let output = iomt()
            .args(["templates", "check"])
            .arg(folder.join("devicecontent.json"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            folder.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn every_sample_message_normalizes_without_errors() {
    for folder in samples() {
        let (input, format) = if folder.join("envelopes.jsonl").exists() {
            (folder.join("envelopes.jsonl"), "envelope")
        } else {
            (folder.join("messages.jsonl"), "body")
        };
        let output = iomt()
            .args(["normalize", "--format", format, "--device-mapping"])
            .arg(folder.join("devicecontent.json"))
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap();
        assert!(output.status.success());
        assert!(
            output.stderr.is_empty(),
            "{}: {}",
            folder.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let messages = std::fs::read_to_string(&input)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        let measurements = String::from_utf8(output.stdout).unwrap().lines().count();
        assert!(
            measurements >= messages,
            "{}: every sample message yields a Measurement",
            folder.display()
        );
    }
}

#[test]
fn every_sample_maps_to_valid_observations_without_errors() {
    for folder in samples() {
        let (input, format) = if folder.join("envelopes.jsonl").exists() {
            (folder.join("envelopes.jsonl"), "envelope")
        } else {
            (folder.join("messages.jsonl"), "body")
        };
        let check = iomt()
            .args(["templates", "check", "--kind", "fhir"])
            .arg(folder.join("fhirmapping.json"))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}: {}",
            folder.display(),
            String::from_utf8_lossy(&check.stderr)
        );
        let output = iomt()
            .args(["map", "--format", format, "--device-mapping"])
            .arg(folder.join("devicecontent.json"))
            .arg("--fhir-mapping")
            .arg(folder.join("fhirmapping.json"))
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap();
        assert!(output.status.success());
        assert!(
            output.stderr.is_empty(),
            "{}: {}",
            folder.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(
            stdout.lines().count() >= 2,
            "{}: Observations are produced",
            folder.display()
        );
        for line in stdout.lines() {
            let observation: serde_json::Value = serde_json::from_str(line).unwrap();
            let problems = observation_problems(&observation);
            assert!(problems.is_empty(), "{}: {problems:?}", folder.display());
            // Vital signs: the category, and a LOINC code first.
            assert_eq!(observation["category"][0]["coding"][0]["code"], "vital-signs");
            assert_eq!(observation["code"]["coding"][0]["system"], "http://loinc.org");
        }
    }
}
