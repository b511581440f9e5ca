//! Event Hubs through `azure_messaging_eventhubs` 0.15: an `EventProcessor` (Balanced load
//! balancing, blob checkpoint store) hands out partitions as [`PartitionSource`]s, and a
//! producer sends normalized Measurements keyed by device (compat.md §7.2).
//!
//! The SDK's partition stream is not `Send` (azure-sdk.md G1), so each partition is read on its
//! own thread with a single-threaded runtime and handed over through a channel. When the service
//! detaches a link (a partition moving between nodes), the SDK reattaches it with the position the
//! partition client started at and so delivers those events again: the reader drops events at or
//! below the last sequence number it handed over, and re-opens a stream that ends with an error
//! other than the load balancer's revocation. The SDK never reconnects a connection that dropped
//! (a cut socket surfaces as `ConnectionDropped`, which it does not retry): a reader that sees one,
//! or whose stream keeps failing, trips the processor's [`ConnectionBroken`] signal so that the
//! stage starts a new processor on a new connection, and the sink opens a new producer after a
//! failed send. Checkpoints are written straight to the checkpoint
//! store with the event's offset and sequence number, in the layout the SDK (and KEDA's scaler)
//! read, and never move backwards.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_messaging_eventhubs::error::ErrorKind;
use azure_messaging_eventhubs::models::{
    AmqpMessage, AmqpSimpleValue, AmqpValue, Checkpoint, EventData, ReceivedEventData, StartPositions,
};
use azure_messaging_eventhubs::processor::PartitionClient;
use azure_messaging_eventhubs::{
    CheckpointStore, ConsumerClient, EventDataBatchOptions, EventProcessor, ProcessorStrategy, ProducerClient,
    RetryOptions, StartLocation, StartPosition,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::json::{JObject, JToken, JsonDate};
use crate::model::{Measurement, MeasurementWriter, partition_key};
use crate::pipeline::deadletter::Origin;
use crate::pipeline::ports::{MeasurementSink, PartitionSource, SourceError, SourceEvent, TransientError};

/// One Event Hub as a stage reads or writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHubConfig {
    /// Fully qualified namespace (`myns.servicebus.windows.net`).
    pub namespace: String,
    /// Event Hub name.
    pub hub: String,
    /// Consumer group (reading only; one per stage, as MedTech requires).
    pub consumer_group: String,
    /// `amqp://host:port` to connect to instead of the namespace (tests, private endpoints).
    pub custom_endpoint: Option<String>,
}

/// Load-balancing timing of an event processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessorTiming {
    /// How often ownership is renewed and rebalanced.
    pub update_interval: Duration,
    /// How long an unrenewed ownership lasts (must exceed `update_interval`).
    pub partition_expiration: Duration,
}

impl Default for ProcessorTiming {
    fn default() -> Self {
        ProcessorTiming {
            update_interval: Duration::from_secs(10),
            partition_expiration: Duration::from_secs(30),
        }
    }
}

fn retry_options() -> RetryOptions {
    RetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(200),
        max_delay: azure_core::time::Duration::seconds(10),
        max_total_elapsed: azure_core::time::Duration::seconds(60),
        max_retries: 8,
    }
}

fn duration(value: Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::milliseconds(value.as_millis() as i64)
}

/// A producer for `config`'s hub.
async fn producer(config: &EventHubConfig, credential: Arc<dyn TokenCredential>) -> Result<ProducerClient, String> {
    let mut builder = ProducerClient::builder()
        .with_application_id("iomt-connector".into())
        .with_retry_options(retry_options());
    if let Some(endpoint) = &config.custom_endpoint {
        builder = builder.with_custom_endpoint(endpoint.clone());
    }
    builder
        .open(&config.namespace, &config.hub, credential)
        .await
        .map_err(|error| format!("cannot open Event Hub {}/{}: {error}", config.namespace, config.hub))
}

/// An event processor for `config`'s hub and consumer group, balancing partitions with other
/// replicas through `checkpoints`; partitions without a checkpoint start at the earliest event.
pub async fn processor(
    config: &EventHubConfig,
    credential: Arc<dyn TokenCredential>,
    checkpoints: Arc<dyn CheckpointStore + Send + Sync>,
    timing: ProcessorTiming,
) -> Result<Arc<EventProcessor>, String> {
    // The application id is the processor's owner id in the checkpoint store: it must differ
    // between replicas, or they all believe they own every partition.
    let owner = format!("iomt-connector-{:016x}", rand::random::<u64>());
    let mut builder = ConsumerClient::builder()
        .with_application_id(owner)
        .with_consumer_group(config.consumer_group.clone())
        .with_retry_options(retry_options());
    if let Some(endpoint) = &config.custom_endpoint {
        builder = builder.with_custom_endpoint(endpoint.clone());
    }
    let consumer = builder
        .open(&config.namespace, config.hub.clone(), credential)
        .await
        .map_err(|error| format!("cannot open Event Hub {}/{}: {error}", config.namespace, config.hub))?;
    EventProcessor::builder()
        .with_load_balancing_strategy(ProcessorStrategy::Balanced)
        .with_update_interval(duration(timing.update_interval))
        .with_partition_expiration_duration(duration(timing.partition_expiration))
        .with_start_positions(StartPositions {
            per_partition: Default::default(),
            default: StartPosition {
                location: StartLocation::Earliest,
                inclusive: false,
            },
        })
        .build(consumer, checkpoints)
        .await
        .map_err(|error| format!("cannot start the event processor for {}: {error}", config.hub))
}

/// Tripped by a partition reader when its processor's connection is beyond repair; the stage then
/// replaces the processor.
#[derive(Debug, Clone, Default)]
pub struct ConnectionBroken(CancellationToken);

impl ConnectionBroken {
    /// Resolves once a reader tripped the signal.
    pub async fn tripped(&self) {
        self.0.cancelled().await;
    }

    fn trip(&self) {
        self.0.cancel();
    }
}

/// Whether `error` says the AMQP connection under a client dropped: the SDK returns such errors
/// without reconnecting, so every later call on the client fails the same way.
fn connection_dropped(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(amqp) = error.downcast_ref::<azure_core_amqp::AmqpError>()
            && matches!(amqp.kind(), azure_core_amqp::error::AmqpErrorKind::ConnectionDropped(_))
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// A partition of an Event Hub owned by this process.
pub struct EventHubsPartition {
    partition_id: String,
    events: mpsc::Receiver<Result<SourceEvent, SourceError>>,
    checkpoints: Arc<dyn CheckpointStore + Send + Sync>,
    config: EventHubConfig,
    stop: Option<oneshot::Sender<()>>,
    /// The sequence number of the last checkpoint written.
    checkpointed: Option<i64>,
}

impl Drop for EventHubsPartition {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl EventHubsPartition {
    /// Reads `client`'s partition on a thread of its own; trips `broken` when the client's
    /// connection cannot read any more.
    pub fn new(
        client: Arc<PartitionClient>,
        checkpoints: Arc<dyn CheckpointStore + Send + Sync>,
        config: EventHubConfig,
        broken: ConnectionBroken,
    ) -> Self {
        let partition_id = client.get_partition_id().to_string();
        let (sender, events) = mpsc::channel(2_000);
        let (stop, stopped) = oneshot::channel();
        let partition = partition_id.clone();
        std::thread::Builder::new()
            .name(format!("eventhubs-{}-{partition}", config.hub))
            .spawn(move || read_partition(client, partition, sender, stopped, broken))
            .expect("a thread starts");
        EventHubsPartition {
            partition_id,
            events,
            checkpoints,
            config,
            stop: Some(stop),
            checkpointed: None,
        }
    }
}

/// Consecutive failed streams after which the client is taken for broken and the partition given
/// up: about 30 s of backoff.
const STREAM_ATTEMPTS: u32 = 5;

fn read_partition(
    client: Arc<PartitionClient>,
    partition: String,
    sender: mpsc::Sender<Result<SourceEvent, SourceError>>,
    mut stopped: oneshot::Receiver<()>,
    broken: ConnectionBroken,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = sender.blocking_send(Err(SourceError::Closed(format!("cannot start a reader: {error}"))));
            return;
        }
    };
    runtime.block_on(async {
        let mut last_sequence: Option<i64> = None;
        let mut failures = 0u32;
        'streams: loop {
            let stream = client.stream_events();
            futures::pin_mut!(stream);
            let ended = loop {
                let next = tokio::select! {
                    _ = &mut stopped => break 'streams,
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok(event)) => {
                        failures = 0;
                        let sequence = event.sequence_number();
                        if let (Some(last), Some(sequence)) = (last_sequence, sequence)
                            && sequence <= last
                        {
                            // Delivered again after the link was reattached.
                            continue;
                        }
                        last_sequence = sequence.or(last_sequence);
                        if sender.send(Ok(source_event(&partition, &event))).await.is_err() {
                            break 'streams;
                        }
                    }
                    Some(Err(error)) if matches!(error.kind, ErrorKind::ConsumerDisconnected(_)) => {
                        let _ = sender
                            .send(Err(SourceError::Closed(format!("the partition was revoked: {error}"))))
                            .await;
                        break 'streams;
                    }
                    Some(Err(error)) if connection_dropped(&error) => {
                        broken.trip();
                        let _ = sender
                            .send(Err(SourceError::Disconnected(format!("the connection dropped: {error}"))))
                            .await;
                        break 'streams;
                    }
                    Some(Err(error)) => break error.to_string(),
                    None => break "the stream ended".to_string(),
                }
            };
            failures += 1;
            if failures >= STREAM_ATTEMPTS {
                broken.trip();
                let _ = sender
                    .send(Err(SourceError::Disconnected(format!(
                        "reading the partition failed {failures} times in a row: {ended}"
                    ))))
                    .await;
                break;
            }
            let backoff = Duration::from_millis(500 * 2u64.pow(failures.min(6))).min(Duration::from_secs(30));
            tracing::warn!(partition = %partition, error = %ended, retry_in_ms = backoff.as_millis() as u64, "Reading the partition failed; reopening its stream.");
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        // Release the receiver so the next owner is not kept waiting for an epoch steal.
        if let Ok(client) = Arc::try_unwrap(client) {
            let _ = client.close().await;
        }
    });
}

/// An AMQP property value as a JSON token (timestamps as dates, as the original's envelope has
/// them).
fn simple_token(value: &AmqpSimpleValue) -> JToken {
    match value {
        AmqpSimpleValue::Null => JToken::Null,
        AmqpSimpleValue::Boolean(v) => JToken::Bool(*v),
        AmqpSimpleValue::UByte(v) => JToken::Integer(i64::from(*v)),
        AmqpSimpleValue::Byte(v) => JToken::Integer(i64::from(*v)),
        AmqpSimpleValue::UShort(v) => JToken::Integer(i64::from(*v)),
        AmqpSimpleValue::Short(v) => JToken::Integer(i64::from(*v)),
        AmqpSimpleValue::UInt(v) => JToken::Integer(i64::from(*v)),
        AmqpSimpleValue::Int(v) => JToken::Integer(i64::from(*v)),
        AmqpSimpleValue::ULong(v) => {
            i64::try_from(*v).map_or_else(|_| JToken::BigInteger(v.to_string().into()), JToken::Integer)
        }
        AmqpSimpleValue::Long(v) => JToken::Integer(*v),
        AmqpSimpleValue::Float(v) => JToken::Float(f64::from(*v)),
        AmqpSimpleValue::Double(v) => JToken::Float(*v),
        AmqpSimpleValue::Char(v) => JToken::string(v.to_string()),
        AmqpSimpleValue::TimeStamp(stamp) => stamp.0.map_or(JToken::Null, time_token),
        AmqpSimpleValue::Uuid(v) => JToken::string(v.to_string()),
        AmqpSimpleValue::String(v) => JToken::string(v.as_str()),
        AmqpSimpleValue::Symbol(v) => JToken::string(format!("{v:?}").trim_matches('"').to_string()),
        AmqpSimpleValue::Binary(v) => JToken::string(String::from_utf8_lossy(v).to_string()),
        _ => JToken::Null,
    }
}

fn value_token(value: &AmqpValue) -> JToken {
    match value {
        AmqpValue::Null => JToken::Null,
        AmqpValue::Boolean(v) => JToken::Bool(*v),
        AmqpValue::UByte(v) => JToken::Integer(i64::from(*v)),
        AmqpValue::UShort(v) => JToken::Integer(i64::from(*v)),
        AmqpValue::UInt(v) => JToken::Integer(i64::from(*v)),
        AmqpValue::ULong(v) => {
            i64::try_from(*v).map_or_else(|_| JToken::BigInteger(v.to_string().into()), JToken::Integer)
        }
        AmqpValue::Byte(v) => JToken::Integer(i64::from(*v)),
        AmqpValue::Short(v) => JToken::Integer(i64::from(*v)),
        AmqpValue::Int(v) => JToken::Integer(i64::from(*v)),
        AmqpValue::Long(v) => JToken::Integer(*v),
        AmqpValue::Float(v) => JToken::Float(f64::from(*v)),
        AmqpValue::Double(v) => JToken::Float(*v),
        AmqpValue::Char(v) => JToken::string(v.to_string()),
        AmqpValue::TimeStamp(stamp) => stamp.0.map_or(JToken::Null, time_token),
        AmqpValue::Uuid(v) => JToken::string(v.to_string()),
        AmqpValue::Binary(v) => JToken::string(String::from_utf8_lossy(v).to_string()),
        AmqpValue::String(v) => JToken::string(v.as_str()),
        AmqpValue::Symbol(v) => JToken::string(format!("{v:?}").trim_matches('"').to_string()),
        _ => JToken::Null,
    }
}

fn time_token(time: SystemTime) -> JToken {
    let millis = match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => since.as_millis() as i64,
        Err(before) => -(before.duration().as_millis() as i64),
    };
    JsonDate::from_unix_millis(millis).map_or(JToken::Null, |date| JToken::Date(Box::new(date)))
}

/// A received event as the pipeline sees it: body, application properties, and system
/// properties (IoT Hub's `iothub-*` annotations plus `x-opt-*`).
fn source_event(partition: &str, event: &ReceivedEventData) -> SourceEvent {
    let data = event.event_data();
    let properties: JObject = data
        .properties()
        .map(|properties| {
            properties
                .iter()
                .map(|(name, value)| (name.clone(), simple_token(value)))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect()
        })
        .unwrap_or_default();
    let mut system: JObject = event
        .system_properties()
        .iter()
        .map(|(name, value)| (name.clone(), value_token(value)))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let enqueued: Option<DateTime<Utc>> = event.enqueued_time().map(DateTime::<Utc>::from);
    if let Some(time) = event.enqueued_time() {
        system.insert("x-opt-enqueued-time", time_token(time));
    }
    if let Some(sequence) = event.sequence_number() {
        system.insert("x-opt-sequence-number", JToken::Integer(sequence));
    }
    if let Some(offset) = event.offset() {
        system.insert("x-opt-offset", JToken::string(offset.as_str()));
    }
    if let Some(key) = event.partition_key() {
        system.insert("x-opt-partition-key", JToken::string(key.as_str()));
    }
    SourceEvent {
        origin: Origin {
            partition: partition.to_string(),
            offset: event.offset().clone().unwrap_or_default(),
            sequence_number: event.sequence_number(),
            enqueued_time: enqueued,
        },
        body: data.body().map(<[u8]>::to_vec).unwrap_or_default(),
        properties,
        system_properties: system,
    }
}

#[async_trait]
impl PartitionSource for EventHubsPartition {
    fn partition_id(&self) -> &str {
        &self.partition_id
    }

    async fn receive(&mut self, max: usize, wait: Duration) -> Result<Vec<SourceEvent>, SourceError> {
        let mut events = Vec::new();
        match tokio::time::timeout(wait, self.events.recv()).await {
            Err(_) => return Ok(events),
            Ok(None) => return Err(SourceError::Closed("the partition reader stopped".into())),
            Ok(Some(item)) => events.push(item?),
        }
        while events.len() < max {
            match self.events.try_recv() {
                Ok(Ok(event)) => events.push(event),
                // Hand out what came before the end; the end shows on the next call.
                Ok(Err(error)) => {
                    let (sender, receiver) = mpsc::channel(1);
                    let _ = sender.try_send(Err(error));
                    self.events = receiver;
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(events)
    }

    async fn checkpoint(&mut self, through: &Origin) -> Result<(), SourceError> {
        if let (Some(done), Some(sequence)) = (self.checkpointed, through.sequence_number)
            && sequence <= done
        {
            return Ok(());
        }
        let checkpoint = Checkpoint {
            fully_qualified_namespace: self.config.namespace.clone(),
            event_hub_name: self.config.hub.clone(),
            consumer_group: self.config.consumer_group.clone(),
            partition_id: self.partition_id.clone(),
            offset: Some(through.offset.clone()),
            sequence_number: through.sequence_number,
        };
        self.checkpoints
            .update_checkpoint(checkpoint)
            .await
            .map_err(|error| SourceError::Transient(format!("writing the checkpoint failed: {error}")))?;
        self.checkpointed = through.sequence_number.or(self.checkpointed);
        Ok(())
    }
}

/// Sends normalized Measurements to the normalized hub: one event per Measurement (its wire JSON),
/// batched per partition key (the device's, compat.md §7.2). A send that fails drops the producer
/// and the next send opens a new one, as the SDK does not reconnect a dropped connection.
pub struct EventHubsSink {
    config: EventHubConfig,
    credential: Arc<dyn TokenCredential>,
    producer: Mutex<Option<Arc<ProducerClient>>>,
}

impl std::fmt::Debug for EventHubsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHubsSink")
            .field("hub", &self.config.hub)
            .finish_non_exhaustive()
    }
}

impl EventHubsSink {
    /// Opens a producer for `config`'s hub.
    pub async fn open(config: EventHubConfig, credential: Arc<dyn TokenCredential>) -> Result<Self, String> {
        let sink = EventHubsSink::connecting_on_first_send(config, credential);
        sink.producer().await.map_err(|error| error.0)?;
        Ok(sink)
    }

    /// A sink for `config`'s hub that connects when it first sends.
    pub fn connecting_on_first_send(config: EventHubConfig, credential: Arc<dyn TokenCredential>) -> Self {
        EventHubsSink {
            config,
            credential,
            producer: Mutex::new(None),
        }
    }

    /// The open producer, or a new one.
    async fn producer(&self) -> Result<Arc<ProducerClient>, TransientError> {
        let mut current = self.producer.lock().await;
        if let Some(open) = &*current {
            return Ok(open.clone());
        }
        let opened = Arc::new(
            producer(&self.config, self.credential.clone())
                .await
                .map_err(TransientError)?,
        );
        *current = Some(opened.clone());
        Ok(opened)
    }

    /// Lets go of `failed` (unless another send already replaced it).
    async fn discard(&self, failed: &Arc<ProducerClient>) {
        let mut current = self.producer.lock().await;
        if current.as_ref().is_some_and(|open| Arc::ptr_eq(open, failed)) {
            *current = None;
        }
    }

    /// Sends one message as it is built (annotations and all), to any partition.
    pub async fn send_message(&self, message: AmqpMessage) -> Result<(), TransientError> {
        let producer = self.producer().await?;
        let sent = producer
            .send_message(message, None)
            .await
            .map_err(|error| TransientError(format!("sending to {} failed: {error}", self.config.hub)));
        if sent.is_err() {
            self.discard(&producer).await;
        }
        sent
    }

    /// Sends events (body and application properties) with `key` as partition key, in batches;
    /// returns the indices too large to send.
    pub async fn send_keyed(
        &self,
        key: Option<&str>,
        events: Vec<(usize, EventData)>,
    ) -> Result<Vec<usize>, TransientError> {
        let producer = self.producer().await?;
        let sent = send_batches(&producer, key, events).await;
        if sent.is_err() {
            self.discard(&producer).await;
        }
        sent
    }
}

/// Sends `events` through `producer` in as few batches as fit.
async fn send_batches(
    producer: &ProducerClient,
    key: Option<&str>,
    events: Vec<(usize, EventData)>,
) -> Result<Vec<usize>, TransientError> {
    let fail = |error: azure_messaging_eventhubs::EventHubsError| {
        TransientError(format!("sending to Event Hubs failed: {error}"))
    };
    let options = || EventDataBatchOptions {
        partition_key: key.map(str::to_string),
        ..Default::default()
    };
    let mut too_large = Vec::new();
    let mut batch = producer.create_batch(Some(options())).await.map_err(fail)?;
    for (index, event) in events {
        if batch.try_add_event_data(event.clone(), None).map_err(fail)? {
            continue;
        }
        if batch.is_empty() {
            too_large.push(index);
            continue;
        }
        producer.send_batch(batch, None).await.map_err(fail)?;
        batch = producer.create_batch(Some(options())).await.map_err(fail)?;
        if !batch.try_add_event_data(event, None).map_err(fail)? {
            too_large.push(index);
        }
    }
    if !batch.is_empty() {
        producer.send_batch(batch, None).await.map_err(fail)?;
    }
    Ok(too_large)
}

#[async_trait]
impl MeasurementSink for EventHubsSink {
    async fn send(&self, measurements: &[Measurement]) -> Result<Vec<usize>, TransientError> {
        let mut by_key: BTreeMap<String, Vec<(usize, EventData)>> = BTreeMap::new();
        let mut writer = MeasurementWriter::default();
        for (index, measurement) in measurements.iter().enumerate() {
            let mut body = String::with_capacity(256);
            writer.write(measurement, &mut body);
            let event = EventData::builder()
                .with_body(body.into_bytes())
                .with_content_type("application/json".into())
                .build();
            by_key
                .entry(partition_key(&measurement.device_id))
                .or_default()
                .push((index, event));
        }
        let sends = by_key
            .into_iter()
            .map(|(key, events)| async move { self.send_keyed(Some(&key), events).await });
        let mut too_large = Vec::new();
        for result in futures::future::join_all(sends).await {
            too_large.extend(result?);
        }
        too_large.sort_unstable();
        Ok(too_large)
    }
}
