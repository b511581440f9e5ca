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

/// Arguments of `iomt templates upload`.
#[cfg(feature = "service")]
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The worker's configuration (names the storage account, container and blob names).
    #[arg(long, value_name = "iomt.toml")]
    config: PathBuf,
    /// The device mapping to upload.
    #[arg(long, value_name = "devicecontent.json")]
    device_mapping: Option<PathBuf>,
    /// The FHIR mapping to upload.
    #[arg(long, value_name = "fhirmapping.json")]
    fhir_mapping: Option<PathBuf>,
}

/// Checks the templates and puts the valid ones into the template container, where running
/// workers pick them up. Nothing is uploaded if any is invalid.
#[cfg(feature = "service")]
pub fn upload(args: UploadArgs) -> anyhow::Result<u8> {
    use super::EXIT_USAGE;
    let text =
        std::fs::read_to_string(&args.config).with_context(|| format!("cannot read {}", args.config.display()))?;
    let config = match crate::config::Config::load(&text, std::env::vars()) {
        Ok(config) => config,
        Err(problems) => {
            for problem in problems {
                eprintln!("{}: {problem}", args.config.display());
            }
            return Ok(EXIT_USAGE);
        }
    };
    if args.device_mapping.is_none() && args.fhir_mapping.is_none() {
        eprintln!("iomt: name --device-mapping and/or --fhir-mapping to upload");
        return Ok(EXIT_USAGE);
    }
    let mut uploads = Vec::new();
    let mut valid = true;
    if let Some(path) = &args.device_mapping {
        let text = read(path)?;
        match DeviceTemplateSet::parse(&text) {
            Ok(_) => uploads.push((config.storage.device_mapping.clone(), text)),
            Err(errors) => {
                report(path, &errors);
                valid = false;
            }
        }
    }
    if let Some(path) = &args.fhir_mapping {
        let text = read(path)?;
        match FhirTemplateSet::parse(&text) {
            Ok(_) => uploads.push((config.storage.fhir_mapping.clone(), text)),
            Err(errors) => {
                report(path, &errors);
                valid = false;
            }
        }
    }
    if !valid {
        return Ok(EXIT_CHECK_FAILED);
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let azure = super::worker::azure_credential(&config)?;
        let storage = super::worker::storage(&config, &azure)?;
        let container = storage
            .ensure_container(&config.storage.template_container)
            .await
            .map_err(anyhow::Error::msg)?;
        for (name, text) in uploads {
            crate::adapters::blob::upload(&container, &name, text.into_bytes())
                .await
                .map_err(anyhow::Error::msg)?;
            eprintln!(
                "iomt: uploaded {name} to container {}",
                config.storage.template_container
            );
        }
        Ok(EXIT_OK)
    })
}
