//! `iomt transform` (Measurements in, Observations out) and `iomt map` (device events in,
//! Observations out: normalize and transform in one step).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use super::io::{lines, open_errors, open_input, stdout, write_error_record};
use super::normalize::parse_event;
use super::templates::{load_device_template, load_fhir_template};
use super::{EXIT_OK, EXIT_USAGE, FormatArg, input_path, now};
use crate::fhir::{Batch, FhirErrorKind, Json, transform_batch};
use crate::model::Measurement;

/// Arguments of `iomt transform`.
#[derive(Debug, Args)]
pub struct TransformArgs {
    /// The FHIR mapping template (`CollectionFhir`).
    #[arg(long, value_name = "fhirmapping.json")]
    fhir_mapping: PathBuf,
    /// JSON Lines input, one Measurement per line (PascalCase or camelCase names); `-` or absent
    /// for standard input. All lines are one batch.
    #[arg(long, value_name = "FILE|-")]
    input: Option<PathBuf>,
    /// Observations (NDJSON) to merge into, matched by identifier.
    #[arg(long, value_name = "observations.ndjson", conflicts_with = "fhir_url")]
    existing: Option<PathBuf>,
    /// Where to write error records (JSON Lines); standard error by default.
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,
    /// Persist to this FHIR server instead of printing Observations.
    #[cfg(feature = "service")]
    #[command(flatten)]
    server: super::persist::ServerArgs,
}

/// Arguments of `iomt map`.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// The device-mapping template (`CollectionContent`).
    #[arg(long, value_name = "devicecontent.json")]
    device_mapping: PathBuf,
    /// The FHIR mapping template (`CollectionFhir`).
    #[arg(long, value_name = "fhirmapping.json")]
    fhir_mapping: PathBuf,
    /// JSON Lines input, one device event per line; `-` or absent for standard input.
    #[arg(long, value_name = "FILE|-")]
    input: Option<PathBuf>,
    /// Whether each line is the event body or a full envelope.
    #[arg(long, value_enum, default_value_t)]
    format: FormatArg,
    /// Observations (NDJSON) to merge into, matched by identifier.
    #[arg(long, value_name = "observations.ndjson")]
    existing: Option<PathBuf>,
    /// Where to write error records (JSON Lines); standard error by default.
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,
}

/// An error record before it is written: input line, kind, message.
pub(super) type ErrorRecord = (usize, &'static str, String);

pub fn run_transform(args: TransformArgs) -> anyhow::Result<u8> {
    let Some(templates) = load_fhir_template(&args.fhir_mapping)? else {
        return Ok(EXIT_USAGE);
    };
    let issued = now()?;
    let (measurements, origins, records) = read_measurements(args.input.as_ref())?;
    #[cfg(feature = "service")]
    if let Some(url) = &args.server.fhir_url {
        return super::persist::persist(
            url,
            &args.server,
            &templates,
            &measurements,
            &origins,
            records,
            issued,
            args.errors.as_deref(),
        );
    }
    let existing = read_existing(args.existing.as_deref())?;
    finish(
        &templates,
        &measurements,
        &origins,
        &existing,
        issued,
        records,
        args.errors.as_deref(),
    )
}

/// Reads Measurement lines: the Measurements, the input line of each, and error records for the
/// lines that are not Measurements.
#[allow(clippy::type_complexity)]
fn read_measurements(input: Option<&PathBuf>) -> anyhow::Result<(Vec<Measurement>, Vec<usize>, Vec<ErrorRecord>)> {
    let mut records: Vec<ErrorRecord> = Vec::new();
    let mut measurements = Vec::new();
    let mut origins = Vec::new();
    let input = open_input(input_path(&input.cloned()).map(PathBuf::as_path))?;
    for line in lines(input) {
        let line = line.context("cannot read input")?;
        let parsed = line
            .text
            .map_err(|detail| detail.to_string())
            .and_then(|text| Measurement::from_json(&text).map_err(|error| error.0));
        match parsed {
            Ok(measurement) => {
                measurements.push(measurement);
                origins.push(line.number);
            }
            Err(message) => records.push((
                line.number,
                FhirErrorKind::MeasurementProcessing.as_str(),
                format!("The line is not a Measurement: {message}."),
            )),
        }
    }
    Ok((measurements, origins, records))
}

pub fn run_map(args: MapArgs) -> anyhow::Result<u8> {
    let Some(device_templates) = load_device_template(&args.device_mapping)? else {
        return Ok(EXIT_USAGE);
    };
    let Some(templates) = load_fhir_template(&args.fhir_mapping)? else {
        return Ok(EXIT_USAGE);
    };
    let now = now()?;
    let existing = read_existing(args.existing.as_deref())?;
    let mut records: Vec<ErrorRecord> = Vec::new();
    let mut measurements = Vec::new();
    let mut origins = Vec::new();
    let input = open_input(input_path(&args.input).map(PathBuf::as_path))?;
    for line in lines(input) {
        let line = line.context("cannot read input")?;
        let before = measurements.len();
        let outcome = line
            .text
            .map_err(|detail| crate::device::NormalizeError::invalid_envelope(&detail))
            .and_then(|text| parse_event(&text, args.format))
            .and_then(|event| device_templates.normalize_into(&event, now, &mut measurements));
        match outcome {
            Ok(()) => origins.extend(std::iter::repeat_n(line.number, measurements.len() - before)),
            Err(error) => records.push((line.number, error.kind.as_str(), error.message)),
        }
    }
    finish(
        &templates,
        &measurements,
        &origins,
        &existing,
        now,
        records,
        args.errors.as_deref(),
    )
}

/// Transforms the batch, prints the Observations and writes the error records in line order.
fn finish(
    templates: &crate::fhir::FhirTemplateSet,
    measurements: &[Measurement],
    origins: &[usize],
    existing: &[Json],
    issued: chrono::DateTime<chrono::Utc>,
    records: Vec<ErrorRecord>,
    errors_path: Option<&Path>,
) -> anyhow::Result<u8> {
    let outcome = transform_batch(
        templates,
        Batch {
            measurements,
            existing,
            issued,
        },
    );
    let mut out = stdout();
    for observation in &outcome.observations {
        let mut line = observation.to_json();
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    write_failures(outcome.failures, origins, records, errors_path)?;
    Ok(EXIT_OK)
}

/// Writes the error records of `records` and of failed groups (one per affected input line), in
/// line order.
pub(super) fn write_failures(
    failures: Vec<crate::fhir::GroupFailure>,
    origins: &[usize],
    mut records: Vec<ErrorRecord>,
    errors_path: Option<&Path>,
) -> anyhow::Result<()> {
    for failure in failures {
        let mut lines: Vec<usize> = failure.members.iter().map(|&member| origins[member]).collect();
        lines.sort_unstable();
        lines.dedup();
        for line in lines {
            records.push((line, failure.error.kind.as_str(), failure.error.message.clone()));
        }
    }
    records.sort_by_key(|record| record.0);
    let mut errors = open_errors(errors_path)?;
    for (line, kind, message) in &records {
        write_error_record(&mut errors, *line, kind, message)?;
    }
    errors.flush()?;
    Ok(())
}

/// Reads Observations to merge into: NDJSON, or a FHIR searchset/collection Bundle on one line
/// per Bundle (its entries' resources are used).
fn read_existing(path: Option<&Path>) -> anyhow::Result<Vec<Json>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut observations = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let resource = Json::parse(line)
            .map_err(|error| anyhow::anyhow!("{}:{}: not JSON: {error}", path.display(), index + 1))?;
        match resource.get("resourceType").and_then(Json::as_str) {
            Some("Observation") => observations.push(resource),
            Some("Bundle") => observations.extend(
                resource
                    .get("entry")
                    .and_then(Json::as_array)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|entry| entry.get("resource"))
                    .filter(|resource| resource.get("resourceType").and_then(Json::as_str) == Some("Observation"))
                    .cloned(),
            ),
            _ => anyhow::bail!(
                "{}:{}: expected an Observation or a Bundle of Observations",
                path.display(),
                index + 1
            ),
        }
    }
    Ok(observations)
}
