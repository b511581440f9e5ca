//! `iomt run --config`: the Event Hubs worker. The normalize stage reads `devicedata` and sends
//! Measurements to `normalizeddata`; the transform stage reads `normalizeddata` and writes to FHIR.
//! Each stage is an event processor balancing partitions with the other replicas through the
//! checkpoint container; each owned partition runs its loop from `pipeline::run`. Templates come
//! from a blob container and are reloaded when they change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use azure_core::credentials::TokenCredential;
use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs_checkpointstore_blob::BlobCheckpointStore;
use azure_storage_blob::BlobContainerClient;
use chrono::TimeDelta;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::adapters::blob::{BlobDeadLetterStore, BlobStateStore, BlobStorage, StorageAuth, download, etag};
use crate::adapters::eventhubs::{
    ConnectionBroken, EventHubConfig, EventHubsPartition, EventHubsSink, ProcessorTiming, processor,
};
use crate::adapters::fhir_http::{FhirAuth, FhirClientConfig, FhirHttpClient, TokenSource};
use crate::config::{Config, StageName};
use crate::device::DeviceTemplateSet;
use crate::fhir::FhirTemplateSet;
use crate::pipeline::identity::{IdentityResolver, IdentitySettings};
use crate::pipeline::metrics::{MeteredFhirApi, Metrics, labels};
use crate::pipeline::pending::FlushPolicy;
use crate::pipeline::ports::{FhirApi, TransientError};
use crate::pipeline::run::{
    MeasurementDecoder, StageContext, StageSettings, Swappable, TransformContext, normalize_partition,
    transform_partition,
};
use crate::pipeline::writer::{ObservationWriter, WriterSettings};
use crate::telemetry::{Health, serve};
use crate::template::TemplateError;

/// What the stages share.
struct Shared {
    config: Config,
    azure: Arc<dyn TokenCredential>,
    storage: BlobStorage,
    metrics: Arc<Metrics>,
    settings: StageSettings,
    shutdown: CancellationToken,
}

/// The storage account of the configuration.
pub fn storage(config: &Config, azure: &Arc<dyn TokenCredential>) -> anyhow::Result<BlobStorage> {
    match (&config.storage.connection_string, &config.storage.blob_endpoint) {
        (Some(connection), _) => BlobStorage::from_connection_string(connection).map_err(anyhow::Error::msg),
        (None, Some(endpoint)) => {
            BlobStorage::new(endpoint, StorageAuth::Credential(azure.clone())).map_err(anyhow::Error::msg)
        }
        (None, None) => anyhow::bail!("storage: no blob_endpoint or connection_string"),
    }
}

/// The Azure credential of the configuration.
pub fn azure_credential(config: &Config) -> anyhow::Result<Arc<dyn TokenCredential>> {
    crate::adapters::azure::credential(
        &config.azure.credential,
        config.azure.client_id.as_deref(),
        config.azure.tenant_id.as_deref(),
    )
    .map_err(anyhow::Error::msg)
}

/// Runs the worker until interrupted (SIGINT/SIGTERM).
pub async fn run(config: Config) -> anyhow::Result<u8> {
    let azure = azure_credential(&config)?;
    let storage = storage(&config, &azure)?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    if config.telemetry.port != 0 {
        let address = serve(
            SocketAddr::from(([0, 0, 0, 0], config.telemetry.port)),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("cannot listen on port {}", config.telemetry.port))?;
        tracing::info!(%address, "Serving /healthz and /metrics.");
    }
    for container in [
        &config.storage.checkpoint_container,
        &config.storage.state_container,
        &config.storage.deadletter_container,
        &config.storage.template_container,
    ] {
        let created = until_ready(&shutdown, &metrics, "storage", "Creating a container", || async {
            storage.ensure_container(container).await.map_err(anyhow::Error::msg)
        })
        .await;
        if created.is_none() {
            return Ok(super::EXIT_OK);
        }
    }
    let settings = StageSettings {
        checkpoint_interval: Duration::from_millis(config.flush.checkpoint_interval_ms),
        flush: FlushPolicy {
            max_latency: TimeDelta::milliseconds(config.flush.max_latency_ms as i64),
            max_pending: config.flush.max_pending,
        },
        ..StageSettings::default()
    };
    let shared = Arc::new(Shared {
        config,
        azure,
        storage,
        metrics,
        settings,
        shutdown: shutdown.clone(),
    });
    let mut stages = JoinSet::new();
    if shared.config.stages.contains(&StageName::Normalize) {
        let shared = shared.clone();
        let health = health.clone();
        stages.spawn(async move {
            let result = run_normalize(shared).await;
            if result.is_err() {
                health.set(false);
            }
            result
        });
    }
    if shared.config.stages.contains(&StageName::Transform) {
        let shared = shared.clone();
        let health = health.clone();
        stages.spawn(async move {
            let result = run_transform(shared).await;
            if result.is_err() {
                health.set(false);
            }
            result
        });
    }
    let mut outcome = Ok(super::EXIT_OK);
    while let Some(joined) = stages.join_next().await {
        if let Err(error) = joined.context("a stage panicked")? {
            tracing::error!(error = %format!("{error:#}"), "A stage stopped.");
            shutdown.cancel();
            outcome = Err(error);
        }
    }
    outcome
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM can be handled");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Shutting down: writing what waits and checkpointing.");
        shutdown.cancel();
    });
}

/// Runs `attempt` until it succeeds, waiting longer after each failure (up to 30 s): storage or
/// Event Hubs being unreachable, or templates not uploaded yet, delay a stage but do not stop
/// the worker. `None` on shutdown.
async fn until_ready<T, F, Fut>(
    shutdown: &CancellationToken,
    metrics: &Metrics,
    target: &str,
    what: &str,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), retry_in_s = backoff.as_secs(), "{what} failed; retrying.");
                metrics.retried(target);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Downloads and parses a template blob; its ETag with it.
async fn load_template<T>(
    container: &BlobContainerClient,
    container_name: &str,
    name: &str,
    parse: fn(&str) -> Result<T, Vec<TemplateError>>,
    kind: &str,
) -> anyhow::Result<(T, String)> {
    let (bytes, etag) = download(container, name)
        .await
        .map_err(anyhow::Error::msg)?
        .with_context(|| {
            format!("the {kind} template '{name}' is not in container '{container_name}': upload it with `iomt templates upload`")
        })?;
    let templates = parse(&String::from_utf8_lossy(&bytes)).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("{name}:{}:{}: {}", e.pos.line, e.pos.column, e.message))
            .collect();
        anyhow::anyhow!("the {kind} template is invalid:\n{}", lines.join("\n"))
    })?;
    Ok((templates, etag))
}

/// Loads a template blob, parses it and keeps it current: every poll it is re-read when its
/// ETag changed; a rejected or deleted version leaves the last good one in place. Until a good
/// one is there, the stage waits. `None` on shutdown.
async fn template_from_blob<T: Send + Sync + 'static>(
    shared: &Arc<Shared>,
    name: String,
    parse: fn(&str) -> Result<T, Vec<TemplateError>>,
    kind: &'static str,
) -> anyhow::Result<Option<Arc<Swappable<T>>>> {
    let container_name = &shared.config.storage.template_container;
    let container = shared.storage.container(container_name).map_err(anyhow::Error::msg)?;
    let what = format!("Loading the {kind} template");
    let Some((templates, first_etag)) = until_ready(&shared.shutdown, &shared.metrics, "storage", &what, || {
        load_template(&container, container_name, &name, parse, kind)
    })
    .await
    else {
        return Ok(None);
    };
    let cell = Arc::new(Swappable::new(templates));
    let watched = cell.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        watch_blob_template(shared, container, name, first_etag, watched, parse, kind).await;
    });
    Ok(Some(cell))
}

async fn watch_blob_template<T>(
    shared: Arc<Shared>,
    container: BlobContainerClient,
    name: String,
    mut seen: String,
    cell: Arc<Swappable<T>>,
    parse: fn(&str) -> Result<T, Vec<TemplateError>>,
    kind: &'static str,
) {
    let poll = Duration::from_secs(shared.config.storage.template_poll_seconds);
    let mut missing_reported = false;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        match etag(&container, &name).await {
            Ok(Some(current)) if current == seen => {}
            Ok(Some(_)) => {
                let Ok(Some((bytes, current))) = download(&container, &name).await else {
                    continue;
                };
                seen = current;
                missing_reported = false;
                match parse(&String::from_utf8_lossy(&bytes)) {
                    Ok(templates) => {
                        cell.set(templates);
                        shared
                            .metrics
                            .template_reloads
                            .get_or_create(&labels([("kind", kind), ("outcome", "accepted")]))
                            .inc();
                        tracing::info!(template = %name, "Template reloaded.");
                    }
                    Err(errors) => {
                        shared
                            .metrics
                            .template_reloads
                            .get_or_create(&labels([("kind", kind), ("outcome", "rejected")]))
                            .inc();
                        for error in errors {
                            tracing::error!(template = %name, line = error.pos.line, column = error.pos.column, problem = %error.message, "Template rejected; keeping the last good one.");
                        }
                    }
                }
            }
            Ok(None) => {
                if !missing_reported {
                    tracing::error!(template = %name, "The template was deleted from its container; keeping the last good one.");
                    missing_reported = true;
                }
            }
            Err(error) => tracing::warn!(template = %name, error = %error, "Checking the template failed; retrying."),
        }
    }
}

fn hub(shared: &Shared, hub: &str, consumer_group: &str) -> EventHubConfig {
    EventHubConfig {
        namespace: shared.config.eventhubs.namespace.clone(),
        hub: hub.to_string(),
        consumer_group: consumer_group.to_string(),
        custom_endpoint: shared.config.eventhubs.custom_endpoint.clone(),
    }
}

fn timing(shared: &Shared) -> ProcessorTiming {
    ProcessorTiming {
        update_interval: Duration::from_secs(shared.config.eventhubs.update_interval_seconds),
        partition_expiration: Duration::from_secs(shared.config.eventhubs.partition_expiration_seconds),
    }
}

async fn checkpoint_store(shared: &Shared) -> anyhow::Result<Arc<dyn CheckpointStore + Send + Sync>> {
    let container = shared
        .storage
        .container(&shared.config.storage.checkpoint_container)
        .map_err(anyhow::Error::msg)?;
    Ok(BlobCheckpointStore::new(container))
}

fn dead_letters(shared: &Shared) -> anyhow::Result<Arc<BlobDeadLetterStore>> {
    Ok(Arc::new(BlobDeadLetterStore::new(
        shared
            .storage
            .container(&shared.config.storage.deadletter_container)
            .map_err(anyhow::Error::msg)?,
    )))
}

async fn run_normalize(shared: Arc<Shared>) -> anyhow::Result<()> {
    let Some(templates) = template_from_blob(
        &shared,
        shared.config.storage.device_mapping.clone(),
        DeviceTemplateSet::parse,
        "device",
    )
    .await?
    else {
        return Ok(());
    };
    let eh = &shared.config.eventhubs;
    let source = hub(&shared, &eh.device_hub, &eh.normalize_consumer_group);
    let target = hub(&shared, &eh.normalized_hub, "");
    let opened = until_ready(
        &shared.shutdown,
        &shared.metrics,
        "eventhubs",
        "Opening the normalized hub",
        || async {
            EventHubsSink::open(target.clone(), shared.azure.clone())
                .await
                .map_err(anyhow::Error::msg)
        },
    )
    .await;
    let Some(sink) = opened else {
        return Ok(());
    };
    let sink = Arc::new(sink);
    let dead_letters = dead_letters(&shared)?;
    let checkpoints = checkpoint_store(&shared).await?;
    tracing::info!(hub = %source.hub, consumer_group = %source.consumer_group, "Normalize stage started.");
    run_processor(
        shared.clone(),
        checkpoints,
        source,
        move |shared, mut partition, stop| {
            let (templates, sink, dead_letters) = (templates.clone(), sink.clone(), dead_letters.clone());
            async move {
                let context = StageContext {
                    dead_letters: &*dead_letters,
                    settings: &shared.settings,
                    metrics: &shared.metrics,
                    shutdown: &stop,
                };
                normalize_partition(&mut partition, &templates, &*sink, &context).await
            }
        },
    )
    .await
}

async fn run_transform(shared: Arc<Shared>) -> anyhow::Result<()> {
    let Some(templates) = template_from_blob(
        &shared,
        shared.config.storage.fhir_mapping.clone(),
        FhirTemplateSet::parse,
        "fhir",
    )
    .await?
    else {
        return Ok(());
    };
    let writer = Arc::new(fhir_writer(&shared)?);
    let eh = &shared.config.eventhubs;
    let source = hub(&shared, &eh.normalized_hub, &eh.transform_consumer_group);
    let dead_letters = dead_letters(&shared)?;
    let state = Arc::new(BlobStateStore::new(
        shared
            .storage
            .container(&shared.config.storage.state_container)
            .map_err(anyhow::Error::msg)?,
    ));
    let state_prefix =
        Arc::new(format!("{}/{}/{}", source.namespace, source.hub, source.consumer_group).to_lowercase());
    let checkpoints = checkpoint_store(&shared).await?;
    tracing::info!(hub = %source.hub, consumer_group = %source.consumer_group, "Transform stage started.");
    run_processor(
        shared.clone(),
        checkpoints,
        source,
        move |shared, mut partition, stop| {
            let (templates, writer, dead_letters, state, state_prefix) = (
                templates.clone(),
                writer.clone(),
                dead_letters.clone(),
                state.clone(),
                state_prefix.clone(),
            );
            async move {
                let context = TransformContext {
                    writer: &writer,
                    templates: &templates,
                    state: Some(&*state),
                    state_prefix: &state_prefix,
                    stage: StageContext {
                        dead_letters: &*dead_letters,
                        settings: &shared.settings,
                        metrics: &shared.metrics,
                        shutdown: &stop,
                    },
                };
                transform_partition(&mut partition, &MeasurementDecoder, &context).await
            }
        },
    )
    .await
}

fn fhir_writer(shared: &Shared) -> anyhow::Result<ObservationWriter> {
    let fhir = shared
        .config
        .fhir
        .as_ref()
        .context("the transform stage needs [fhir]")?;
    let auth = match fhir.auth.as_str() {
        "none" => FhirAuth::None,
        "managed-identity" => FhirAuth::ManagedIdentity {
            client_id: fhir.client_id.clone(),
        },
        "workload-identity" => FhirAuth::WorkloadIdentity,
        "client-secret" => FhirAuth::ClientSecret {
            tenant_id: fhir.tenant_id.clone().unwrap_or_default(),
            client_id: fhir.client_id.clone().unwrap_or_default(),
            secret: std::env::var("AZURE_CLIENT_SECRET")
                .context("fhir.auth client-secret needs AZURE_CLIENT_SECRET")?,
        },
        _ => FhirAuth::AzureCli,
    };
    let tokens = auth
        .credential()
        .context("cannot set up FHIR authentication")?
        .map(|credential| {
            Arc::new(TokenSource::new(
                credential,
                FhirHttpClient::scope_for(&fhir.url, fhir.audience.as_deref()),
            ))
        });
    let mut client_config = FhirClientConfig::new(&fhir.url);
    client_config.retry.max_elapsed = Duration::from_secs(fhir.retry_seconds);
    let client = FhirHttpClient::new(&client_config, tokens).map_err(anyhow::Error::msg)?;
    let api: Arc<dyn FhirApi> = Arc::new(MeteredFhirApi::new(Arc::new(client), shared.metrics.clone()));
    let identities = IdentityResolver::new(
        api.clone(),
        IdentitySettings {
            mode: fhir.identity_mode.parse().map_err(anyhow::Error::msg)?,
            default_device_system: fhir.default_device_system.clone(),
            ..IdentitySettings::default()
        },
    );
    Ok(ObservationWriter::new(
        api,
        identities,
        WriterSettings {
            batch_size: fhir.batch_size,
            concurrency: fhir.concurrency,
            ..WriterSettings::default()
        },
    ))
}

/// Runs an event processor for `source`, handing each partition it wins to `work` on a task of
/// its own, until shutdown. A processor that fails (storage or Event Hubs unavailable for longer
/// than its retries), or whose connection a reader found broken, is not the end of the stage: its
/// partitions are let go (written and checkpointed as far as possible) and a new processor, on a
/// new connection, is started after a backoff.
async fn run_processor<F, Fut>(
    shared: Arc<Shared>,
    checkpoints: Arc<dyn CheckpointStore + Send + Sync>,
    source: EventHubConfig,
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(Arc<Shared>, EventHubsPartition, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = crate::pipeline::run::PartitionEnd> + Send + 'static,
{
    let mut backoff = Duration::from_secs(1);
    while !shared.shutdown.is_cancelled() {
        let processor = match processor(&source, shared.azure.clone(), checkpoints.clone(), timing(&shared)).await {
            Ok(processor) => processor,
            Err(error) => {
                tracing::warn!(hub = %source.hub, error = %error, retry_in_s = backoff.as_secs(), "Starting the event processor failed; retrying.");
                shared.metrics.retried("eventhubs");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        // Partition loops stop on shutdown, or when this processor is replaced.
        let generation = shared.shutdown.child_token();
        let broken = ConnectionBroken::default();
        let running = processor.clone();
        let mut processor_task = tokio::spawn(async move { running.run().await });
        let mut partitions = JoinSet::new();
        // How long the partition loops get to finish: a call on a broken connection may never
        // answer, and what they have not checkpointed is read again by the next processor.
        let mut drain_limit = Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                ended = &mut processor_task => {
                    let reason = match ended {
                        Ok(Ok(())) => "stopped".to_string(),
                        Ok(Err(error)) => format!("failed: {error}"),
                        Err(error) => format!("panicked: {error}"),
                    };
                    tracing::error!(hub = %source.hub, reason = %reason, "The event processor ended; letting its partitions go and starting a new one.");
                    break;
                }
                _ = broken.tripped() => {
                    tracing::warn!(hub = %source.hub, "The Event Hubs connection is broken; letting the partitions go and starting a new event processor.");
                    shared.metrics.retried("eventhubs");
                    drain_limit = Duration::from_secs(10);
                    break;
                }
                next = processor.next_partition_client() => {
                    let Ok(client) = next else { break };
                    let partition_id = client.get_partition_id().to_string();
                    tracing::info!(hub = %source.hub, partition = %partition_id, "Partition acquired.");
                    let partition = EventHubsPartition::new(client, checkpoints.clone(), source.clone(), broken.clone());
                    let hub = source.hub.clone();
                    let future = work(shared.clone(), partition, generation.clone());
                    partitions.spawn(async move {
                        let end = future.await;
                        tracing::info!(hub = %hub, partition = %partition_id, end = ?end, "Partition released.");
                    });
                }
                Some(ended) = partitions.join_next(), if !partitions.is_empty() => {
                    if let Err(error) = ended
                        && error.is_panic()
                    {
                        // Its reader lets go of the partition, and the processor hands it out again.
                        tracing::error!(hub = %source.hub, error = %error, "A partition loop panicked.");
                    }
                }
            }
        }
        // Let the partition loops write what waits and checkpoint.
        generation.cancel();
        let drain = async { while partitions.join_next().await.is_some() {} };
        if tokio::time::timeout(drain_limit, drain).await.is_err() {
            tracing::warn!(hub = %source.hub, limit_s = drain_limit.as_secs(), "Some partitions did not finish in time; they are read again from their checkpoints.");
        }
        let _ = processor.shutdown().await;
        processor_task.abort();
        if !shared.shutdown.is_cancelled() {
            tokio::select! {
                _ = shared.shutdown.cancelled() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }
    Ok(())
}

/// How many times a redrive tries one send before it stops.
const REDRIVE_ATTEMPTS: u32 = 4;

/// Runs `send` until it succeeds, at most [`REDRIVE_ATTEMPTS`] times, waiting 0.5, 1 and 2 s in
/// between. The sink lets go of its producer when a send fails, so each retry runs on a new
/// connection: the SDK never reconnects one that dropped. A retried send may deliver an event
/// twice; the pipeline writes a reading twice to the same effect.
async fn with_attempts<T, F, Sent>(mut send: F) -> Result<T, TransientError>
where
    F: FnMut() -> Sent,
    Sent: std::future::Future<Output = Result<T, TransientError>>,
{
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match send().await {
            Err(error) if attempt < REDRIVE_ATTEMPTS => {
                eprintln!("iomt: {error}; trying again on a new connection");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// What a redrive into the hubs did.
#[derive(Debug, Default)]
pub struct Redriven {
    /// Names of the records sent.
    pub sent: Vec<String>,
    /// Names of the records that cannot be sent, and why.
    pub kept: Vec<(String, String)>,
    /// Why sending stopped early, if it did (the unsent records are neither sent nor kept).
    pub failed: Option<anyhow::Error>,
}

/// Sends dead-lettered messages back into the pipeline: device events to the device hub (with
/// their application properties, and their `iothub-*` system properties as message
/// annotations), Measurements to the normalized hub keyed by device.
pub async fn redrive(config: &Config, records: &[(String, crate::pipeline::deadletter::DeadLetterRecord)]) -> Redriven {
    let mut redriven = Redriven::default();
    if let Err(error) = send_records(config, records, &mut redriven).await {
        redriven.failed = Some(error);
    }
    redriven
}

async fn send_records(
    config: &Config,
    records: &[(String, crate::pipeline::deadletter::DeadLetterRecord)],
    redriven: &mut Redriven,
) -> anyhow::Result<()> {
    use azure_core_amqp::AmqpSymbol;
    use azure_core_amqp::message::AmqpMessageBody;
    use azure_messaging_eventhubs::models::{AmqpMessage, AmqpSimpleValue, AmqpValue};

    use crate::pipeline::deadletter::PayloadKind;
    use crate::pipeline::ports::MeasurementSink as _;

    let azure = azure_credential(config)?;
    let eh = &config.eventhubs;
    let hub_config = |hub: &str| EventHubConfig {
        namespace: eh.namespace.clone(),
        hub: hub.to_string(),
        consumer_group: String::new(),
        custom_endpoint: eh.custom_endpoint.clone(),
    };
    let simple = |value: &serde_json::Value| -> AmqpSimpleValue {
        match value {
            serde_json::Value::Bool(b) => AmqpSimpleValue::Boolean(*b),
            serde_json::Value::Number(n) if n.is_i64() => AmqpSimpleValue::Long(n.as_i64().unwrap_or_default()),
            serde_json::Value::Number(n) => AmqpSimpleValue::Double(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => AmqpSimpleValue::String(s.clone()),
            serde_json::Value::Null => AmqpSimpleValue::Null,
            other => AmqpSimpleValue::String(other.to_string()),
        }
    };
    let mut device_events = Vec::new();
    let mut measurements = Vec::new();
    for (name, record) in records {
        match record.payload_kind {
            PayloadKind::DeviceEvent => device_events.push((name, record)),
            PayloadKind::Measurement => {
                match crate::model::Measurement::from_json(record.payload.as_deref().unwrap_or_default()) {
                    Ok(measurement) => measurements.push((name, measurement)),
                    Err(error) => redriven
                        .kept
                        .push((name.clone(), format!("the payload is not a Measurement: {error}"))),
                }
            }
            PayloadKind::Snapshot => redriven.kept.push((
                name.clone(),
                "an unreadable partition snapshot cannot be redriven; inspect it".into(),
            )),
        }
    }
    if !device_events.is_empty() {
        let sink = EventHubsSink::connecting_on_first_send(hub_config(&eh.device_hub), azure.clone());
        for (name, record) in device_events {
            let mut builder = AmqpMessage::builder().with_body(AmqpMessageBody::Binary(vec![record.payload_bytes()]));
            for (name, value) in &record.properties {
                builder = builder.add_application_property(name.clone(), simple(value));
            }
            let mut message = builder.build();
            for (name, value) in &record.system_properties {
                if name.starts_with("x-opt-") {
                    continue;
                }
                let value = match simple(value) {
                    AmqpSimpleValue::String(s) => AmqpValue::String(s),
                    AmqpSimpleValue::Long(n) => AmqpValue::Long(n),
                    AmqpSimpleValue::Double(n) => AmqpValue::Double(n),
                    AmqpSimpleValue::Boolean(b) => AmqpValue::Boolean(b),
                    _ => AmqpValue::Null,
                };
                message.add_message_annotation(AmqpSymbol::from(name.as_str()), value);
            }
            with_attempts(|| sink.send_message(message.clone()))
                .await
                .map_err(anyhow::Error::msg)?;
            redriven.sent.push(name.clone());
        }
    }
    if !measurements.is_empty() {
        let sink = EventHubsSink::connecting_on_first_send(hub_config(&eh.normalized_hub), azure.clone());
        let batch: Vec<crate::model::Measurement> = measurements.iter().map(|(_, m)| m.clone()).collect();
        let too_large = with_attempts(|| sink.send(&batch)).await.map_err(anyhow::Error::msg)?;
        for (index, (name, _)) in measurements.into_iter().enumerate() {
            if too_large.contains(&index) {
                redriven
                    .kept
                    .push((name.clone(), "the Measurement is too large for an event".into()));
            } else {
                redriven.sent.push(name.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A send that fails `failures` times, then succeeds; counts its calls.
    async fn flaky(calls: &AtomicU32, failures: u32) -> Result<u32, TransientError> {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= failures {
            Err(TransientError(format!("connection dropped on call {call}")))
        } else {
            Ok(call)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_redrive_send_is_retried_until_it_goes_through() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        assert_eq!(with_attempts(|| flaky(&calls, 2)).await, Ok(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(1500),
            "backs off 0.5 s, then 1 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_redrive_send_that_keeps_failing_reports_the_last_error() {
        let calls = AtomicU32::new(0);
        assert_eq!(
            with_attempts(|| flaky(&calls, u32::MAX)).await,
            Err(TransientError("connection dropped on call 4".into()))
        );
        assert_eq!(calls.load(Ordering::SeqCst), REDRIVE_ATTEMPTS);
    }
}
