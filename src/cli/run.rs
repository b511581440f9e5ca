//! `iomt run`: the pipeline. `--local` runs it on this machine: device events from JSON Lines files
//! (or standard input) are normalized, grouped and written to a FHIR server, or, without one, to
//! NDJSON files; checkpoints, snapshots and dead letters live in a state directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use chrono::TimeDelta;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{EXIT_OK, EXIT_USAGE, FormatArg};
use crate::adapters::local::{DirDeadLetterStore, DirStateStore, FileSource, Input, LineFormat, NdjsonFhirStore};
use crate::device::DeviceTemplateSet;
use crate::fhir::FhirTemplateSet;
use crate::pipeline::identity::IdentityResolver;
use crate::pipeline::metrics::{MeteredFhirApi, Metrics, labels};
use crate::pipeline::pending::FlushPolicy;
use crate::pipeline::ports::FhirApi;
use crate::pipeline::run::{
    NormalizingDecoder, PartitionEnd, StageContext, StageSettings, Swappable, TransformContext, transform_partition,
};
use crate::pipeline::writer::{ObservationWriter, WriterSettings};
use crate::telemetry::{Health, LogFormat, init_logging, serve};
use crate::template::TemplateError;

/// Arguments of `iomt run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run on this machine: device events from files or standard input, state on local disk.
    #[arg(long, conflicts_with = "config")]
    local: bool,
    /// The worker's configuration file (TOML; `IOMT_<SECTION>_<KEY>` variables override it).
    #[arg(long, value_name = "iomt.toml")]
    config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long, requires = "config")]
    validate: bool,
    /// The device-mapping template.
    #[arg(long, value_name = "devicecontent.json", requires = "local")]
    device_mapping: Option<PathBuf>,
    /// The FHIR mapping template.
    #[arg(long, value_name = "fhirmapping.json", requires = "local")]
    fhir_mapping: Option<PathBuf>,
    /// JSON Lines files of device events (repeatable); standard input when none.
    #[arg(long, value_name = "FILE", requires = "local")]
    input: Vec<PathBuf>,
    /// Whether each line is the event body or a full envelope.
    #[arg(long, value_enum, default_value_t)]
    format: FormatArg,
    /// Keep reading the input files as lines are appended (until interrupted).
    #[arg(long, requires = "local")]
    follow: bool,
    /// Checkpoints, snapshots and dead letters.
    #[arg(long, value_name = "DIR", default_value = ".iomt")]
    state_dir: PathBuf,
    /// Where Observations are written as NDJSON when there is no --fhir-url (default
    /// `<state-dir>/fhir`).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Longest a reading waits before it is written to FHIR, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    max_latency_ms: u64,
    /// Serve /healthz and /metrics on this port.
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<u16>,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
    /// The FHIR server to write to.
    #[cfg(feature = "service")]
    #[command(flatten)]
    server: super::persist::ServerArgs,
}

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    if let Some(path) = &args.config {
        return run_worker(path, args.validate);
    }
    init_logging(args.log_format);
    if !args.local {
        eprintln!("iomt: `iomt run` needs --local, or --config <iomt.toml> for the Event Hubs worker");
        return Ok(EXIT_USAGE);
    }
    let (Some(device_path), Some(fhir_path)) = (&args.device_mapping, &args.fhir_mapping) else {
        eprintln!("iomt: `iomt run --local` needs --device-mapping and --fhir-mapping");
        return Ok(EXIT_USAGE);
    };
    let Some(device_templates) = load(device_path, DeviceTemplateSet::parse)? else {
        return Ok(EXIT_USAGE);
    };
    let Some(fhir_templates) = load(fhir_path, FhirTemplateSet::parse)? else {
        return Ok(EXIT_USAGE);
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(run_local(args, device_templates, fhir_templates));
    // A reader blocked on standard input cannot be interrupted; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

/// Reads and validates the worker configuration, then runs the worker (or only reports).
fn run_worker(path: &Path, validate_only: bool) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = match crate::config::Config::load(&text, std::env::vars()) {
        Ok(config) => config,
        Err(problems) => {
            for problem in problems {
                eprintln!("{}: {problem}", path.display());
            }
            return Ok(EXIT_USAGE);
        }
    };
    if validate_only {
        eprintln!("{}: the configuration is valid", path.display());
        for (key, value) in config.describe() {
            eprintln!("  {key} = {value}");
        }
        return Ok(EXIT_OK);
    }
    #[cfg(feature = "service")]
    {
        init_logging(if config.telemetry.log_format == "json" {
            LogFormat::Json
        } else {
            LogFormat::Text
        });
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        runtime.block_on(super::worker::run(config))
    }
    #[cfg(not(feature = "service"))]
    {
        let _ = config;
        eprintln!("iomt: this build has no Event Hubs support (feature `service`)");
        Ok(EXIT_USAGE)
    }
}

/// Reads and parses a template; prints its errors and returns `None` when invalid.
fn load<T>(path: &Path, parse: impl Fn(&str) -> Result<T, Vec<TemplateError>>) -> anyhow::Result<Option<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read template {}", path.display()))?;
    match parse(&text) {
        Ok(templates) => Ok(Some(templates)),
        Err(errors) => {
            for error in errors {
                eprintln!(
                    "{}:{}:{}: {}",
                    path.display(),
                    error.pos.line,
                    error.pos.column,
                    error.message
                );
            }
            Ok(None)
        }
    }
}

async fn run_local(args: RunArgs, device: DeviceTemplateSet, fhir: FhirTemplateSet) -> anyhow::Result<u8> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Interrupted; writing what waits and stopping.");
                shutdown.cancel();
            }
        });
    }
    if let Some(port) = args.metrics_port {
        let address = serve(
            SocketAddr::from(([0, 0, 0, 0], port)),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("cannot listen on port {port}"))?;
        tracing::info!(%address, "Serving /healthz and /metrics.");
    }
    let device = Arc::new(Swappable::new(device));
    let fhir = Arc::new(Swappable::new(fhir));
    watch_template(
        args.device_mapping.clone().expect("checked"),
        device.clone(),
        DeviceTemplateSet::parse,
        "device",
        metrics.clone(),
        shutdown.clone(),
    );
    watch_template(
        args.fhir_mapping.clone().expect("checked"),
        fhir.clone(),
        FhirTemplateSet::parse,
        "fhir",
        metrics.clone(),
        shutdown.clone(),
    );

    let output_dir = args.output_dir.clone().unwrap_or_else(|| args.state_dir.join("fhir"));
    let (writer, destination) = writer(&args, &output_dir, metrics.clone())?;
    let writer = Arc::new(writer);
    let dead_letters = Arc::new(DirDeadLetterStore::new(args.state_dir.join("deadletter")));
    let state = Arc::new(DirStateStore::new(args.state_dir.join("state")));
    let settings = Arc::new(StageSettings {
        flush: FlushPolicy {
            max_latency: TimeDelta::milliseconds(args.max_latency_ms as i64),
            ..FlushPolicy::default()
        },
        checkpoint_interval: Duration::from_millis(args.max_latency_ms.clamp(200, 5000)),
        ..StageSettings::default()
    });
    let format = match args.format {
        FormatArg::Body => LineFormat::Body,
        FormatArg::Envelope => LineFormat::Envelope,
    };
    let inputs: Vec<Input> = if args.input.is_empty() {
        vec![Input::Stdin]
    } else {
        args.input
            .iter()
            .map(|path| Input::File {
                path: path.clone(),
                follow: args.follow,
            })
            .collect()
    };
    let mut tasks = Vec::new();
    for input in inputs {
        let mut source = FileSource::open(&input, format, &args.state_dir)
            .with_context(|| format!("cannot open input {input:?}"))?;
        let (writer, dead_letters, state, settings, metrics, shutdown, fhir, device) = (
            writer.clone(),
            dead_letters.clone(),
            state.clone(),
            settings.clone(),
            metrics.clone(),
            shutdown.clone(),
            fhir.clone(),
            device.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let decoder = NormalizingDecoder::new(device);
            let context = TransformContext {
                writer: &writer,
                templates: &fhir,
                state: Some(&*state),
                state_prefix: "local",
                stage: StageContext {
                    dead_letters: &*dead_letters,
                    settings: &settings,
                    metrics: &metrics,
                    shutdown: &shutdown,
                },
            };
            transform_partition(&mut source, &decoder, &context).await
        }));
    }
    let mut lost = 0;
    for task in tasks {
        if task.await.context("a partition task failed")? == PartitionEnd::Lost {
            lost += 1;
        }
    }
    shutdown.cancel();
    summarize(&metrics, &destination, &args.state_dir.join("deadletter"));
    if lost > 0 {
        tracing::warn!(
            inputs = lost,
            "Some inputs were given up because their state was taken over."
        );
    }
    Ok(EXIT_OK)
}

/// The Observation writer: to the FHIR server when given, else to NDJSON files.
fn writer(args: &RunArgs, output_dir: &Path, metrics: Arc<Metrics>) -> anyhow::Result<(ObservationWriter, String)> {
    #[cfg(feature = "service")]
    if let Some(url) = &args.server.fhir_url {
        return Ok((args.server.writer(url, metrics)?, url.clone()));
    }
    #[cfg(not(feature = "service"))]
    let _ = args;
    let store = NdjsonFhirStore::open(output_dir)
        .with_context(|| format!("cannot open the output directory {}", output_dir.display()))?;
    let destination = store.file("Observation").display().to_string();
    let api: Arc<dyn FhirApi> = Arc::new(MeteredFhirApi::new(Arc::new(store), metrics));
    let writer = ObservationWriter::new(api, IdentityResolver::from_measurements(), WriterSettings::default());
    Ok((writer, destination))
}

/// Logs what the run did.
fn summarize(metrics: &Metrics, destination: &str, dead_letter_dir: &Path) {
    let count = |operation: &str| {
        metrics
            .observations
            .get_or_create(&labels([("operation", operation)]))
            .get()
    };
    let received = metrics
        .events_received
        .get_or_create(&labels([("stage", "transform")]))
        .get();
    let dead = dead_letter_total(metrics);
    tracing::debug!(
        events = received,
        measurements = metrics.measurements_grouped.get(),
        unmatched = metrics.events_unmatched.get(),
        created = count("created"),
        updated = count("updated"),
        unchanged = count("unchanged"),
        dead_lettered = dead,
        "Done."
    );
    eprintln!(
        "iomt: {received} events → {} Measurements → Observations: {} created, {} updated, {} unchanged → {destination}",
        metrics.measurements_grouped.get(),
        count("created"),
        count("updated"),
        count("unchanged"),
    );
    if dead > 0 {
        eprintln!(
            "iomt: {dead} dead-lettered → {} (see `iomt deadletter list`)",
            dead_letter_dir.display()
        );
    }
}

fn dead_letter_total(metrics: &Metrics) -> u64 {
    let text = metrics.encode();
    text.lines()
        .filter(|line| line.starts_with("iomt_dead_letters_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Reloads a template file when it changes; an invalid new version is rejected (its errors
/// logged) and the last good one stays.
fn watch_template<T: Send + Sync + 'static>(
    path: PathBuf,
    cell: Arc<Swappable<T>>,
    parse: fn(&str) -> Result<T, Vec<TemplateError>>,
    kind: &'static str,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = modified(&path);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let now = modified(&path);
            if now == seen {
                continue;
            }
            seen = now;
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            match parse(&text) {
                Ok(templates) => {
                    cell.set(templates);
                    metrics
                        .template_reloads
                        .get_or_create(&labels([("kind", kind), ("outcome", "accepted")]))
                        .inc();
                    tracing::info!(template = %path.display(), "Template reloaded.");
                }
                Err(errors) => {
                    metrics
                        .template_reloads
                        .get_or_create(&labels([("kind", kind), ("outcome", "rejected")]))
                        .inc();
                    for error in &errors {
                        tracing::error!(template = %path.display(), line = error.pos.line, column = error.pos.column, problem = %error.message, "Template rejected; keeping the last good one.");
                    }
                }
            }
        }
    });
}
