//! Golden fixtures: one folder per case under `tests/fixtures/<suite>/<case>/`.
//!
//! - `device/<case>/`: `template.json` plus `input.jsonl` (bodies) or `envelope.jsonl` (envelopes);
//!   `expected.jsonl` holds the Measurements and `expected_errors.jsonl` the error records (either
//!   may be absent when empty).
//! - `templates_invalid/<case>/`: `template.json` and `expected.txt`, the `file:line:col: message`
//!   lines `iomt templates check` prints.
//!
//! `IOMT_BLESS=1 cargo test --test integration golden` rewrites the expected files; review the diff.

use std::path::Path;

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
    for case in cases("templates_invalid") {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let output = iomt()
            .current_dir(&case)
            .args(["templates", "check", "template.json"])
            .output()
            .expect("iomt runs");
        assert_eq!(output.status.code(), Some(1), "{name}: an invalid template exits 1");
        let stderr = String::from_utf8(output.stderr).expect("UTF-8 output");
        assert_matches_file(&case.join("expected.txt"), &stderr, &name);
    }
}
