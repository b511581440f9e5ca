//! `iomt templates check` and template loading for the other commands.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use super::{EXIT_CHECK_FAILED, EXIT_OK, TemplateKindArg};
use crate::device::{DeviceTemplateSet, TemplateError};

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

/// Loads a device-mapping template; on errors prints them and returns `None`.
pub fn load_device_template(path: &Path) -> anyhow::Result<Option<DeviceTemplateSet>> {
    match DeviceTemplateSet::parse(&read(path)?) {
        Ok(templates) => Ok(Some(templates)),
        Err(errors) => {
            report(path, &errors);
            Ok(None)
        }
    }
}

pub fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let mut valid = true;
    for path in &args.files {
        let text = read(path)?;
        let result = match args.kind {
            TemplateKindArg::Device => DeviceTemplateSet::parse(&text).map(|_| ()),
            TemplateKindArg::Fhir => Err(vec![TemplateError::at(
                crate::json::Pos { line: 1, column: 1 },
                "FHIR mapping templates are not supported yet.".into(),
            )]),
        };
        if let Err(errors) = result {
            report(path, &errors);
            valid = false;
        }
    }
    Ok(if valid { EXIT_OK } else { EXIT_CHECK_FAILED })
}
