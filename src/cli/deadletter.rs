//! `iomt deadletter list` and `iomt deadletter redrive`: what was dead-lettered, and sending it
//! through the pipeline again after a template (or data) fix.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "service")]
use super::EXIT_UNAVAILABLE;
use super::io::stdout;
use super::{EXIT_OK, EXIT_USAGE};
use crate::adapters::local::{DirDeadLetterStore, NdjsonFhirStore};
use crate::device::DeviceTemplateSet;
use crate::fhir::FhirTemplateSet;
use crate::json::{JObject, JToken};
use crate::pipeline::deadletter::{DeadLetterRecord, Origin, PayloadKind, Stage};
use crate::pipeline::identity::IdentityResolver;
use crate::pipeline::metrics::{Metrics, labels};
use crate::pipeline::ports::{DeadLetterStore, FhirApi, PartitionSource, SourceError, SourceEvent};
use crate::pipeline::run::{
    Decoder, MeasurementDecoder, NormalizingDecoder, StageContext, StageSettings, Swappable, TransformContext,
    transform_partition,
};
use crate::pipeline::writer::{ObservationWriter, WriterSettings};

/// `iomt deadletter` commands.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// Print the dead-letter records, one JSON object per line.
    List(ListArgs),
    /// Process the records again with the current templates; those that land are removed, those
    /// that fail again are dead-lettered anew.
    Redrive(Box<RedriveArgs>),
}

/// Where the records are.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The local state directory (`iomt run --local --state-dir`).
    #[arg(long, value_name = "DIR", default_value = ".iomt")]
    state_dir: PathBuf,
    /// The worker's configuration: records are in its dead-letter container.
    #[cfg(feature = "service")]
    #[arg(long, value_name = "iomt.toml")]
    config: Option<PathBuf>,
}

impl StoreArgs {
    /// The worker configuration, when given.
    #[cfg(feature = "service")]
    fn worker_config(&self) -> anyhow::Result<Option<crate::config::Config>> {
        let Some(path) = &self.config else { return Ok(None) };
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        crate::config::Config::load(&text, std::env::vars())
            .map(Some)
            .map_err(|problems| anyhow::anyhow!("{}: {}", path.display(), problems.join("; ")))
    }

    fn store(&self) -> anyhow::Result<Box<dyn DeadLetterStore>> {
        #[cfg(feature = "service")]
        if let Some(config) = self.worker_config()? {
            let azure = super::worker::azure_credential(&config)?;
            let storage = super::worker::storage(&config, &azure)?;
            let container = storage
                .container(&config.storage.deadletter_container)
                .map_err(anyhow::Error::msg)?;
            return Ok(Box::new(crate::adapters::blob::BlobDeadLetterStore::new(container)));
        }
        Ok(Box::new(DirDeadLetterStore::new(self.state_dir.join("deadletter"))))
    }
}

/// Arguments of `iomt deadletter list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only records of this stage.
    #[arg(long, value_enum)]
    stage: Option<StageArg>,
}

/// A pipeline stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StageArg {
    /// Normalization.
    Normalize,
    /// Transformation to FHIR.
    Transform,
}

impl StageArg {
    fn matches(self, stage: Stage) -> bool {
        matches!(
            (self, stage),
            (StageArg::Normalize, Stage::Normalize) | (StageArg::Transform, Stage::Transform)
        )
    }
}

/// Arguments of `iomt deadletter redrive`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The device-mapping template (for records of device events; local mode).
    #[arg(long, value_name = "devicecontent.json")]
    device_mapping: Option<PathBuf>,
    /// The FHIR mapping template (local mode).
    #[arg(long, value_name = "fhirmapping.json")]
    fhir_mapping: Option<PathBuf>,
    /// Where Observations go without --fhir-url (default `<state-dir>/fhir`, as `iomt run --local`).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// The FHIR server to write to.
    #[cfg(feature = "service")]
    #[command(flatten)]
    server: super::persist::ServerArgs,
}

pub fn run(command: DeadLetterCommand) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match command {
        DeadLetterCommand::List(args) => runtime.block_on(list(args)),
        DeadLetterCommand::Redrive(args) => runtime.block_on(redrive(*args)),
    }
}

async fn list(args: ListArgs) -> anyhow::Result<u8> {
    let records = args
        .store
        .store()?
        .list()
        .await
        .map_err(|error| anyhow::anyhow!(error))?;
    let mut out = stdout();
    for (name, record) in records {
        if args.stage.is_some_and(|stage| !stage.matches(record.stage)) {
            continue;
        }
        let mut value = serde_json::to_value(&record)?;
        value["name"] = serde_json::Value::String(name);
        writeln!(out, "{value}")?;
    }
    out.flush()?;
    Ok(EXIT_OK)
}

/// The records as a finite partition.
struct RecordSource {
    events: Vec<SourceEvent>,
    done: bool,
}

#[async_trait]
impl PartitionSource for RecordSource {
    fn partition_id(&self) -> &str {
        "redrive"
    }

    async fn receive(&mut self, _: usize, _: std::time::Duration) -> Result<Vec<SourceEvent>, SourceError> {
        if self.done {
            return Err(SourceError::Ended("all records redriven".into()));
        }
        self.done = true;
        Ok(std::mem::take(&mut self.events))
    }

    async fn checkpoint(&mut self, _: &Origin) -> Result<(), SourceError> {
        Ok(())
    }
}

fn bag(map: &serde_json::Map<String, serde_json::Value>) -> JObject {
    match JToken::from(&serde_json::Value::Object(map.clone())) {
        JToken::Object(object) => object,
        _ => JObject::new(),
    }
}

fn event(record: &DeadLetterRecord) -> SourceEvent {
    SourceEvent {
        origin: Origin {
            partition: record.partition.clone(),
            offset: record.offset.clone(),
            sequence_number: record.sequence_number,
            enqueued_time: record
                .enqueued_time
                .as_deref()
                .and_then(crate::model::parse_utc_lenient),
        },
        body: record.payload_bytes(),
        properties: bag(&record.properties),
        system_properties: bag(&record.system_properties),
    }
}

async fn redrive(args: RedriveArgs) -> anyhow::Result<u8> {
    #[cfg(feature = "service")]
    if let Some(config) = args.store.worker_config()? {
        // The worker's records go back into the hubs, where the running workers (with the
        // templates in the container) process them again.
        let store = args.store.store()?;
        let records = store.list().await.map_err(|error| anyhow::anyhow!(error))?;
        let redriven = super::worker::redrive(&config, &records).await;
        // Only what went out is removed; the rest stays for another try.
        for name in &redriven.sent {
            store.remove(name).await.map_err(|error| anyhow::anyhow!(error))?;
        }
        for (name, why) in &redriven.kept {
            eprintln!("iomt: kept {name}: {why}");
        }
        eprintln!(
            "iomt: redrove {} of {} records into the pipeline",
            redriven.sent.len(),
            records.len()
        );
        return Ok(match redriven.failed {
            Some(error) => {
                eprintln!("iomt: redrive stopped: {error:#}");
                EXIT_UNAVAILABLE
            }
            None => EXIT_OK,
        });
    }
    let (Some(device_path), Some(fhir_path)) = (&args.device_mapping, &args.fhir_mapping) else {
        eprintln!("iomt: a local redrive needs --device-mapping and --fhir-mapping");
        return Ok(EXIT_USAGE);
    };
    let read =
        |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()));
    let device = match DeviceTemplateSet::parse(&read(device_path)?) {
        Ok(templates) => templates,
        Err(errors) => {
            for error in errors {
                eprintln!("{}:{}: {}", device_path.display(), error.pos, error.message);
            }
            return Ok(EXIT_USAGE);
        }
    };
    let fhir = match FhirTemplateSet::parse(&read(fhir_path)?) {
        Ok(templates) => templates,
        Err(errors) => {
            for error in errors {
                eprintln!("{}:{}: {}", fhir_path.display(), error.pos, error.message);
            }
            return Ok(EXIT_USAGE);
        }
    };
    let store = args.store.store()?;
    let records = store.list().await.map_err(|error| anyhow::anyhow!(error))?;
    if records.is_empty() {
        eprintln!(
            "iomt: no dead-letter records in {}",
            args.store.state_dir.join("deadletter").display()
        );
        return Ok(EXIT_OK);
    }
    let metrics = Arc::new(Metrics::default());
    let writer = writer(&args, metrics.clone())?;
    let fhir = Swappable::new(fhir);
    let settings = StageSettings::default();
    let shutdown = CancellationToken::new();
    let device = Arc::new(Swappable::new(device));
    let normalizing = NormalizingDecoder::new(device);
    for kind in [PayloadKind::DeviceEvent, PayloadKind::Measurement] {
        let events: Vec<SourceEvent> = records
            .iter()
            .filter(|(_, record)| record.payload_kind == kind)
            .map(|(_, record)| event(record))
            .collect();
        if events.is_empty() {
            continue;
        }
        let decoder: &dyn Decoder = match kind {
            PayloadKind::DeviceEvent => &normalizing,
            PayloadKind::Measurement => &MeasurementDecoder,
            PayloadKind::Snapshot => continue,
        };
        let context = TransformContext {
            writer: &writer,
            templates: &fhir,
            state: None,
            state_prefix: "redrive",
            stage: StageContext {
                dead_letters: &*store,
                settings: &settings,
                metrics: &metrics,
                shutdown: &shutdown,
            },
        };
        let mut source = RecordSource { events, done: false };
        transform_partition(&mut source, decoder, &context).await;
    }
    // Every old record was processed: it landed, or failed again. A record that failed again
    // the same way was rewritten under its name (with a new time): keep that one.
    let now: std::collections::HashMap<String, DeadLetterRecord> = store
        .list()
        .await
        .map_err(|error| anyhow::anyhow!(error))?
        .into_iter()
        .collect();
    let mut kept = 0;
    for (name, old) in &records {
        if old.payload_kind == PayloadKind::Snapshot {
            eprintln!("iomt: kept {name}: an unreadable partition snapshot cannot be redriven; inspect it");
            kept += 1;
        } else if now
            .get(name)
            .is_some_and(|current| current.dead_lettered_at == old.dead_lettered_at)
        {
            store.remove(name).await.map_err(|error| anyhow::anyhow!(error))?;
        }
    }
    let again: u64 = metrics
        .encode()
        .lines()
        .filter(|line| line.starts_with("iomt_dead_letters_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let count = |operation: &str| {
        metrics
            .observations
            .get_or_create(&labels([("operation", operation)]))
            .get()
    };
    eprintln!(
        "iomt: redrove {} records: {} Observations created, {} updated, {} unchanged; {again} records dead-lettered again",
        records.len() - kept,
        count("created"),
        count("updated"),
        count("unchanged")
    );
    Ok(EXIT_OK)
}

fn writer(args: &RedriveArgs, metrics: Arc<Metrics>) -> anyhow::Result<ObservationWriter> {
    #[cfg(feature = "service")]
    if let Some(url) = &args.server.fhir_url {
        return args.server.writer(url, metrics);
    }
    let _ = metrics;
    let output = args
        .output_dir
        .clone()
        .unwrap_or_else(|| args.store.state_dir.join("fhir"));
    let store = NdjsonFhirStore::open(&output).with_context(|| format!("cannot open {}", output.display()))?;
    let api: Arc<dyn FhirApi> = Arc::new(store);
    Ok(ObservationWriter::new(
        api,
        IdentityResolver::from_measurements(),
        WriterSettings::default(),
    ))
}
