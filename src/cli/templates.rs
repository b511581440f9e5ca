//! `iomt templates check` and template loading for the other commands.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use super::{EXIT_CHECK_FAILED, EXIT_OK, TemplateKindArg};
use crate::device::DeviceTemplateSet;
use crate::fhir::FhirTemplateSet;
use crate::template::TemplateError;

/// Arguments of `iomt templates check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Template files to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The kind of template.
    #[arg(long, value_enum, default_value = "device")]
    kind: TemplateKindArg,
}

/// Prints each error as `file:line:col: message` on standard error.
fn report(path: &Path, errors: &[TemplateError]) {
    for error in errors {
        eprintln!(
            "{}:{}:{}: {}",
            path.display(),
            error.pos.line,
            error.pos.column,
            error.message
        );
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read template {}", path.display()))
}

/// Loads a template with `parse`; on errors prints them and returns `None`.
fn load<T>(path: &Path, parse: impl Fn(&str) -> Result<T, Vec<TemplateError>>) -> anyhow::Result<Option<T>> {
    match parse(&read(path)?) {
        Ok(templates) => Ok(Some(templates)),
        Err(errors) => {
            report(path, &errors);
            Ok(None)
        }
    }
}

/// Loads a device-mapping template; on errors prints them and returns `None`.
pub fn load_device_template(path: &Path) -> anyhow::Result<Option<DeviceTemplateSet>> {
    load(path, DeviceTemplateSet::parse)
}

/// Loads a FHIR mapping template; on errors prints them and returns `None`.
pub fn load_fhir_template(path: &Path) -> anyhow::Result<Option<FhirTemplateSet>> {
    load(path, FhirTemplateSet::parse)
}

pub fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let mut valid = true;
    for path in &args.files {
        let text = read(path)?;
        let result = match args.kind {
            TemplateKindArg::Device => DeviceTemplateSet::parse(&text).map(|_| ()),
            TemplateKindArg::Fhir => FhirTemplateSet::parse(&text).map(|_| ()),
        };
        if let Err(errors) = result {
            report(path, &errors);
            valid = false;
        }
    }
    Ok(if valid { EXIT_OK } else { EXIT_CHECK_FAILED })
}
