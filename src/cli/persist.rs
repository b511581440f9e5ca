//! `iomt transform --fhir-url`: persist the batch to a FHIR server instead of printing it.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};

use super::io::stdout;
use super::transform::{ErrorRecord, write_failures};
use super::{EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE};
use crate::adapters::fhir_http::{FhirAuth, FhirClientConfig, FhirHttpClient, TokenSource};
use crate::fhir::FhirTemplateSet;
use crate::fhir::identity::IdentityMode;
use crate::model::Measurement;
use crate::pipeline::identity::{IdentityResolver, IdentitySettings};
use crate::pipeline::metrics::{MeteredFhirApi, Metrics};
use crate::pipeline::ports::{FhirApi, FhirApiErrorKind};
use crate::pipeline::writer::{ObservationWriter, WriteReport, WriterSettings};

/// Environment variable holding the client secret for `--auth client-secret` (never a flag, so
/// it stays out of process listings and shell history).
pub const CLIENT_SECRET_VARIABLE: &str = "AZURE_CLIENT_SECRET";

/// How to reach and write to a FHIR server.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// FHIR R4 base URL; Observations are written there instead of printed.
    #[arg(long, value_name = "URL")]
    pub fhir_url: Option<String>,
    /// How Device, Patient and Encounter ids are found.
    #[arg(long, value_name = "MODE", default_value = "lookup", value_parser = parse_mode, requires = "fhir_url")]
    identity_mode: IdentityMode,
    /// System of Device identifiers (`DefaultDeviceIdentifierSystem`).
    #[arg(long, value_name = "SYSTEM", requires = "fhir_url")]
    default_device_system: Option<String>,
    /// How to authenticate to the FHIR server.
    #[arg(long, value_enum, default_value_t = AuthArg::None, requires = "fhir_url")]
    auth: AuthArg,
    /// Client id: of a user-assigned managed identity, or of the app for `client-secret`.
    #[arg(long, value_name = "ID", requires = "fhir_url")]
    client_id: Option<String>,
    /// Tenant id for `client-secret` (the secret comes from AZURE_CLIENT_SECRET).
    #[arg(long, value_name = "ID", requires = "fhir_url")]
    tenant_id: Option<String>,
    /// Token audience when it is not the FHIR URL; the scope is `{audience}/.default`.
    #[arg(long, value_name = "URL", requires = "fhir_url")]
    audience: Option<String>,
    /// Entries per `batch` Bundle; 0 writes one request per resource.
    #[arg(long, value_name = "N", default_value_t = 100, requires = "fhir_url")]
    batch_size: usize,
    /// Requests (or Bundles) in flight at once.
    #[arg(long, value_name = "N", default_value_t = 4, requires = "fhir_url")]
    concurrency: usize,
    /// Give up on an unavailable server after this many seconds of retries.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, requires = "fhir_url")]
    retry_seconds: u64,
}

/// Authentication choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthArg {
    /// No authentication.
    None,
    /// Azure managed identity (user-assigned with --client-id).
    ManagedIdentity,
    /// Workload identity federation (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE).
    WorkloadIdentity,
    /// A service principal: --tenant-id, --client-id, AZURE_CLIENT_SECRET.
    ClientSecret,
    /// The Azure CLI login (developers).
    AzureCli,
}

fn parse_mode(text: &str) -> Result<IdentityMode, String> {
    text.parse()
}

impl ServerArgs {
    fn auth(&self) -> anyhow::Result<FhirAuth> {
        Ok(match self.auth {
            AuthArg::None => FhirAuth::None,
            AuthArg::ManagedIdentity => FhirAuth::ManagedIdentity {
                client_id: self.client_id.clone(),
            },
            AuthArg::WorkloadIdentity => FhirAuth::WorkloadIdentity,
            AuthArg::ClientSecret => FhirAuth::ClientSecret {
                tenant_id: self
                    .tenant_id
                    .clone()
                    .context("--auth client-secret needs --tenant-id")?,
                client_id: self
                    .client_id
                    .clone()
                    .context("--auth client-secret needs --client-id")?,
                secret: std::env::var(CLIENT_SECRET_VARIABLE)
                    .with_context(|| format!("--auth client-secret needs the secret in {CLIENT_SECRET_VARIABLE}"))?,
            },
            AuthArg::AzureCli => FhirAuth::AzureCli,
        })
    }
}

impl ServerArgs {
    /// The Observation writer these arguments describe, timing requests into `metrics`.
    pub fn writer(&self, url: &str, metrics: Arc<Metrics>) -> anyhow::Result<ObservationWriter> {
        let auth = self.auth()?;
        let tokens = auth
            .credential()
            .context("cannot set up FHIR authentication")?
            .map(|credential| {
                Arc::new(TokenSource::new(
                    credential,
                    FhirHttpClient::scope_for(url, self.audience.as_deref()),
                ))
            });
        let mut config = FhirClientConfig::new(url);
        config.retry.max_elapsed = Duration::from_secs(self.retry_seconds);
        let client = FhirHttpClient::new(&config, tokens).map_err(|error| anyhow::anyhow!(error))?;
        let api: Arc<dyn FhirApi> = Arc::new(MeteredFhirApi::new(Arc::new(client), metrics));
        let identities = IdentityResolver::new(
            api.clone(),
            IdentitySettings {
                mode: self.identity_mode,
                default_device_system: self.default_device_system.clone(),
                ..IdentitySettings::default()
            },
        );
        Ok(ObservationWriter::new(
            api,
            identities,
            WriterSettings {
                batch_size: self.batch_size,
                concurrency: self.concurrency.max(1),
                ..WriterSettings::default()
            },
        ))
    }
}

/// Writes the batch to the server; prints a summary on standard output and error records for
/// failed Measurements.
#[allow(clippy::too_many_arguments)]
pub fn persist(
    url: &str,
    args: &ServerArgs,
    templates: &FhirTemplateSet,
    measurements: &[Measurement],
    origins: &[usize],
    records: Vec<ErrorRecord>,
    issued: DateTime<Utc>,
    errors_path: Option<&Path>,
) -> anyhow::Result<u8> {
    let writer = match args.writer(url, Arc::new(Metrics::default())) {
        Ok(writer) => writer,
        Err(error) => {
            eprintln!("iomt: {error:#}");
            return Ok(EXIT_USAGE);
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match runtime.block_on(writer.write(templates, measurements, issued)) {
        Ok(report) => {
            print_summary(&report)?;
            write_failures(report.failures, origins, records, errors_path)?;
            Ok(EXIT_OK)
        }
        Err(error) => {
            write_failures(Vec::new(), origins, records, errors_path)?;
            let advice = match error.kind {
                FhirApiErrorKind::Unauthorized => "check the FHIR URL, --auth and the identity's FHIR role",
                _ => "nothing was lost: run the same input again when the server is back",
            };
            eprintln!("iomt: the FHIR server did not take the batch: {error} ({advice})");
            Ok(EXIT_UNAVAILABLE)
        }
    }
}

fn print_summary(report: &WriteReport) -> anyhow::Result<()> {
    let failed: usize = report.failures.iter().map(|failure| failure.members.len()).sum();
    let mut out = stdout();
    writeln!(
        out,
        r#"{{"created":{},"updated":{},"unchanged":{},"contention":{},"conflictsRetried":{},"superseded":{},"failedMeasurements":{}}}"#,
        report.created,
        report.updated,
        report.unchanged,
        report.contention,
        report.conflicts_retried,
        report.superseded,
        failed
    )?;
    out.flush()?;
    Ok(())
}
