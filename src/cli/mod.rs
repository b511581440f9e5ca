//! The `iomt` command line: argument parsing and dispatch. The only place that touches files and
//! standard streams for the offline commands.

mod deadletter;
mod io;
mod normalize;
#[cfg(feature = "service")]
mod persist;
mod run;
mod templates;
mod transform;
#[cfg(feature = "service")]
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for `templates check` finding errors.
pub const EXIT_CHECK_FAILED: u8 = 1;
/// Exit code for an invalid template or invalid arguments.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for work that could not complete because a server stayed unavailable or refused
/// the connector's credentials (nothing is lost: run the same input again).
pub const EXIT_UNAVAILABLE: u8 = 3;

/// Environment variable that fixes "now" (RFC 3339) for reproducible output in tests.
pub const NOW_VARIABLE: &str = "IOMT_NOW";

/// iomt-connector: lands medical-device data in FHIR.
#[derive(Debug, Parser)]
#[command(name = "iomt", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Normalize device events (JSON Lines) into Measurements with a device-mapping template.
    Normalize(normalize::NormalizeArgs),
    /// Transform Measurements (JSON Lines) into FHIR Observations with a FHIR mapping template.
    Transform(transform::TransformArgs),
    /// Normalize device events and transform them into Observations in one step: the mapping
    /// debugger for a sample message.
    Map(transform::MapArgs),
    /// Run the pipeline: `--config` the Event Hubs worker, `--local` on this machine (files or
    /// standard input in, FHIR server or NDJSON files out).
    Run(run::RunArgs),
    /// Inspect and redrive dead-lettered messages.
    Deadletter {
        #[command(subcommand)]
        command: deadletter::DeadLetterCommand,
    },
    /// Work with mapping templates.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TemplatesCommand {
    /// Validate templates; prints `file:line:col: message` per error and exits 1 if any is invalid.
    Check(templates::CheckArgs),
    /// Validate templates and upload them to the worker's template container.
    #[cfg(feature = "service")]
    Upload(templates::UploadArgs),
}

/// Which kind of template a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TemplateKindArg {
    /// A device-mapping template (`CollectionContent`).
    Device,
    /// A FHIR-mapping template (`CollectionFhir`).
    Fhir,
}

/// The input line format of `normalize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum FormatArg {
    /// Each line is the event body.
    #[default]
    Body,
    /// Each line is `{"Body": …, "Properties": {…}, "SystemProperties": {…}}`.
    Envelope,
}

/// An input path, where `-` means standard input.
fn input_path(path: &Option<PathBuf>) -> Option<&PathBuf> {
    path.as_ref().filter(|p| p.as_os_str() != "-")
}

/// "Now", from [`NOW_VARIABLE`] when set (for reproducible tests), else the system clock.
fn now() -> anyhow::Result<DateTime<Utc>> {
    match std::env::var(NOW_VARIABLE) {
        Ok(text) => DateTime::parse_from_rfc3339(&text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(|error| anyhow::anyhow!("{NOW_VARIABLE} must be an RFC 3339 time: {error}")),
        Err(_) => Ok(Utc::now()),
    }
}

/// Runs the command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let code = match cli.command {
        Command::Normalize(args) => normalize::run(args)?,
        Command::Transform(args) => transform::run_transform(args)?,
        Command::Map(args) => transform::run_map(args)?,
        Command::Run(args) => run::run(args)?,
        Command::Deadletter { command } => deadletter::run(command)?,
        Command::Templates {
            command: TemplatesCommand::Check(args),
        } => templates::check(args)?,
        #[cfg(feature = "service")]
        Command::Templates {
            command: TemplatesCommand::Upload(args),
        } => templates::upload(args)?,
    };
    Ok(ExitCode::from(code))
}
