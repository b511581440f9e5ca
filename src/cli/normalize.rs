//! `iomt normalize`: device events in, Measurements out.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::io::{lines, open_errors, open_input, stdout, write_error_record};
use super::templates::load_device_template;
use super::{EXIT_OK, EXIT_USAGE, FormatArg, input_path, now};
use crate::device::NormalizeError;
use crate::model::{DeviceEvent, EventFormat, EventParseError, MeasurementWriter};

/// Arguments of `iomt normalize`.
#[derive(Debug, Args)]
pub struct NormalizeArgs {
    /// The device-mapping template (`CollectionContent`).
    #[arg(long, value_name = "devicecontent.json")]
    device_mapping: PathBuf,
    /// JSON Lines input, one device event per line; `-` or absent for standard input.
    #[arg(long, value_name = "FILE|-")]
    input: Option<PathBuf>,
    /// Whether each line is the event body or a full envelope.
    #[arg(long, value_enum, default_value_t)]
    format: FormatArg,
    /// Where to write error records (JSON Lines); standard error by default.
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,
}

/// Parses one input line into an event.
pub fn parse_event(line: &str, format: FormatArg) -> Result<DeviceEvent, NormalizeError> {
    let format = match format {
        FormatArg::Body => EventFormat::Body,
        FormatArg::Envelope => EventFormat::Envelope,
    };
    DeviceEvent::parse(line, format).map_err(|error| match error {
        EventParseError::Json(error) => NormalizeError::from(error),
        EventParseError::Envelope(detail) => NormalizeError::invalid_envelope(&detail),
    })
}

pub fn run(args: NormalizeArgs) -> anyhow::Result<u8> {
    let Some(templates) = load_device_template(&args.device_mapping)? else {
        return Ok(EXIT_USAGE);
    };
    let now = now()?;
    let input = open_input(input_path(&args.input).map(PathBuf::as_path))?;
    let mut errors = open_errors(args.errors.as_deref())?;
    let mut out = stdout();
    let mut buffer = String::with_capacity(4096);
    let mut writer = MeasurementWriter::default();
    let mut measurements = Vec::new();
    for line in lines(input) {
        let line = line.context("cannot read input")?;
        measurements.clear();
        let outcome = line
            .text
            .map_err(|detail| NormalizeError::invalid_envelope(&detail))
            .and_then(|text| parse_event(&text, args.format))
            .and_then(|event| templates.normalize_into(&event, now, &mut measurements));
        match outcome {
            Ok(()) => {
                for measurement in &measurements {
                    buffer.clear();
                    writer.write(measurement, &mut buffer);
                    buffer.push('\n');
                    out.write_all(buffer.as_bytes())?;
                }
            }
            Err(error) => write_error_record(&mut errors, line.number, error.kind.as_str(), &error.message)?,
        }
    }
    out.flush()?;
    errors.flush()?;
    Ok(EXIT_OK)
}
