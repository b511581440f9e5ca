//! The per-partition loops of the two stages.
//!
//! - normalize: device events → Measurements sent on (the `normalizeddata` hub); failures to the
//!   dead-letter store; the checkpoint moves once both are durable.
//! - transform: Measurements (or, in local mode, device events normalized on the spot) wait in
//!   [`PendingWindows`] and are written to FHIR when due; the checkpoint moves past an event only
//!   when its effect is durable: written to FHIR, dead-lettered, or in a saved snapshot of the
//!   waiting Measurements. A restart (or a new owner of the partition) loads the snapshot and
//!   resumes after the checkpoint, so nothing is lost, and writing a reading twice changes
//!   nothing in FHIR.
//!
//! A partition whose connection dropped ([`SourceError::Disconnected`]) is still this process's:
//! both loops persist their progress, as at shutdown, before letting it go, so the reader on the
//! new connection does not process the same events again. A partition taken over by another owner
//! ([`SourceError::Closed`]) is let go without writing: that owner may be ahead already.
//!
//! Transient failures (FHIR, Event Hubs, storage) are retried with backoff until they clear or
//! the process shuts down; no partition stalls on bad data, which is dead-lettered.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::device::DeviceTemplateSet;
use crate::fhir::FhirTemplateSet;
use crate::fhir::group::window_end;
use crate::model::Measurement;
use crate::pipeline::deadletter::{DeadLetterRecord, Origin, PayloadKind, Stage};
use crate::pipeline::metrics::{Metrics, labels};
use crate::pipeline::normalize::{normalize_events, to_map};
use crate::pipeline::pending::{FlushPolicy, PendingReading, PendingWindows, Snapshot};
use crate::pipeline::ports::{
    DeadLetterStore, FhirApiErrorKind, MeasurementSink, PartitionSource, SourceError, SourceEvent, StateError,
    StateStore,
};
use crate::pipeline::writer::ObservationWriter;

/// A value replaced at run time (templates reloaded from storage).
#[derive(Debug)]
pub struct Swappable<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Swappable<T> {
    /// Holds `value`.
    pub fn new(value: T) -> Self {
        Swappable {
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.current
            .read()
            .expect("never poisoned: no panics while held")
            .clone()
    }

    /// Replaces the value.
    pub fn set(&self, value: T) {
        *self.current.write().expect("never poisoned: no panics while held") = Arc::new(value);
    }
}

/// Timing of the partition loops.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSettings {
    /// Events read at once.
    pub receive_batch: usize,
    /// How long a read waits for the first event.
    pub receive_wait: Duration,
    /// How often the checkpoint (and snapshot) is written while events flow.
    pub checkpoint_interval: Duration,
    /// When waiting Measurements are written to FHIR.
    pub flush: FlushPolicy,
    /// First backoff after a transient failure (doubled up to `retry_max`).
    pub retry_initial: Duration,
    /// Longest backoff.
    pub retry_max: Duration,
    /// How long one call to Event Hubs or Blob Storage may take before it counts as failed
    /// (and is retried): a connection that hangs must not stall the partition.
    pub call_timeout: Duration,
}

impl Default for StageSettings {
    fn default() -> Self {
        StageSettings {
            receive_batch: 500,
            receive_wait: Duration::from_millis(200),
            checkpoint_interval: Duration::from_secs(5),
            flush: FlushPolicy::default(),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// How a partition loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionEnd {
    /// The partition went to another owner.
    Lost,
    /// The input ended (local files) and everything was written.
    Ended,
    /// Shutdown was requested; what could be written was written.
    Shutdown,
}

/// What the loops need besides the source.
pub struct StageContext<'a> {
    /// Where dead-letter records go.
    pub dead_letters: &'a dyn DeadLetterStore,
    /// Timing.
    pub settings: &'a StageSettings,
    /// Metrics.
    pub metrics: &'a Metrics,
    /// Cancelled on shutdown.
    pub shutdown: &'a CancellationToken,
}

/// Retries `attempt` with exponential backoff until it succeeds; `None` if shutdown came first.
/// (The attempts are boxed futures: unboxed ones that borrow trip rustc's higher-ranked `Send`
/// check when the partition task is spawned.)
async fn retry<'f, T, E: std::fmt::Display>(
    context: &StageContext<'_>,
    target: &'static str,
    what: &str,
    mut attempt: impl FnMut() -> BoxFuture<'f, Result<T, E>>,
) -> Option<T> {
    let mut delay = context.settings.retry_initial;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(error) => {
                context.metrics.retried(target);
                tracing::warn!(target_system = target, error = %error, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying.");
                tokio::select! {
                    _ = context.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(context.settings.retry_max);
            }
        }
    }
}

/// `call`, failed once `settings.call_timeout` has passed without an answer.
async fn timed<T, E: std::fmt::Display>(
    settings: &StageSettings,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(settings.call_timeout, call).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!("no answer within {} s", settings.call_timeout.as_secs())),
    }
}

async fn write_dead_letters(context: &StageContext<'_>, records: &[DeadLetterRecord]) -> Option<()> {
    if records.is_empty() {
        return Some(());
    }
    retry(context, "storage", "Writing dead-letter records", || {
        timed(context.settings, context.dead_letters.write(records)).boxed()
    })
    .await?;
    for record in records {
        context
            .metrics
            .dead_letters
            .get_or_create(&labels([
                ("stage", record.stage.as_str()),
                ("error_type", &record.error_kind),
            ]))
            .inc();
    }
    tracing::warn!(
        count = records.len(),
        stage = records[0].stage.as_str(),
        "Messages dead-lettered."
    );
    Some(())
}

/// Tracks what a partition loop has seen and checkpointed.
struct Progress {
    last_seen: Option<Origin>,
    uncheckpointed: usize,
    last_checkpoint: std::time::Instant,
}

impl Progress {
    fn new() -> Self {
        Progress {
            last_seen: None,
            uncheckpointed: 0,
            last_checkpoint: std::time::Instant::now(),
        }
    }

    fn due(&self, interval: Duration) -> bool {
        self.uncheckpointed > 0 && self.last_checkpoint.elapsed() >= interval
    }
}

/// Normalizes one partition until it ends, is lost, or shutdown.
pub async fn normalize_partition(
    source: &mut dyn PartitionSource,
    templates: &Swappable<DeviceTemplateSet>,
    sink: &dyn MeasurementSink,
    context: &StageContext<'_>,
) -> PartitionEnd {
    let partition = source.partition_id().to_string();
    let lag = context
        .metrics
        .checkpoint_lag
        .get_or_create(&labels([("stage", "normalize"), ("partition", &partition)]))
        .clone();
    let mut progress = Progress::new();
    loop {
        if context.shutdown.is_cancelled() {
            checkpoint_source(source, &mut progress, context).await;
            return PartitionEnd::Shutdown;
        }
        let events = match source
            .receive(context.settings.receive_batch, context.settings.receive_wait)
            .await
        {
            Ok(events) => events,
            Err(SourceError::Ended(_)) => {
                checkpoint_source(source, &mut progress, context).await;
                return PartitionEnd::Ended;
            }
            Err(SourceError::Closed(reason)) => {
                tracing::info!(partition = %partition, reason = %reason, "Partition closed.");
                return PartitionEnd::Lost;
            }
            Err(SourceError::Disconnected(reason)) => {
                // What was sent is checkpointed, so the next reader does not send it again.
                tracing::info!(partition = %partition, reason = %reason, "Partition disconnected.");
                checkpoint_source(source, &mut progress, context).await;
                return PartitionEnd::Lost;
            }
            Err(SourceError::Transient(error)) => {
                tracing::warn!(partition = %partition, error = %error, "Reading the partition failed; retrying.");
                tokio::time::sleep(context.settings.retry_initial).await;
                continue;
            }
        };
        if !events.is_empty() {
            context
                .metrics
                .events_received
                .get_or_create(&labels([("stage", "normalize")]))
                .inc_by(events.len() as u64);
            let now = Utc::now();
            let normalized = normalize_events(&templates.get(), &events, now);
            context.metrics.events_unmatched.inc_by(normalized.unmatched as u64);
            let measurements: Vec<Measurement> = normalized.measurements.iter().map(|(m, _)| m.clone()).collect();
            let Some(too_large) = retry(context, "eventhubs", "Sending Measurements", || {
                timed(context.settings, sink.send(&measurements)).boxed()
            })
            .await
            else {
                return PartitionEnd::Shutdown;
            };
            context
                .metrics
                .measurements_normalized
                .inc_by((measurements.len() - too_large.len()) as u64);
            let mut dead_letters = normalized.dead_letters;
            for index in too_large {
                let (_, event) = &normalized.measurements[index];
                dead_letters.push(DeadLetterRecord::new(
                    Stage::Normalize,
                    "MeasurementTooLargeException",
                    "The Measurement is larger than an event the normalized hub accepts.",
                    &events[*event].origin,
                    PayloadKind::DeviceEvent,
                    &events[*event].body,
                    to_map(&events[*event].properties),
                    to_map(&events[*event].system_properties),
                    now,
                ));
            }
            if write_dead_letters(context, &dead_letters).await.is_none() {
                return PartitionEnd::Shutdown;
            }
            progress.last_seen = events.last().map(|event| event.origin.clone());
            progress.uncheckpointed += events.len();
            lag.set(progress.uncheckpointed as i64);
        }
        if progress.due(context.settings.checkpoint_interval) {
            if !checkpoint_source(source, &mut progress, context).await {
                return PartitionEnd::Lost;
            }
            lag.set(0);
        }
    }
}

/// Checkpoints the source after the last event seen; false when the partition is lost.
async fn checkpoint_source(
    source: &mut dyn PartitionSource,
    progress: &mut Progress,
    context: &StageContext<'_>,
) -> bool {
    let Some(through) = progress.last_seen.clone() else {
        return true;
    };
    if progress.uncheckpointed == 0 {
        return true;
    }
    let mut delay = context.settings.retry_initial;
    for _ in 0..5 {
        let written = tokio::time::timeout(context.settings.call_timeout, source.checkpoint(&through))
            .await
            .unwrap_or_else(|_| Err(SourceError::Transient("writing the checkpoint timed out".into())));
        match written {
            Ok(()) => {
                progress.uncheckpointed = 0;
                progress.last_checkpoint = std::time::Instant::now();
                return true;
            }
            Err(SourceError::Closed(_) | SourceError::Disconnected(_) | SourceError::Ended(_)) => return false,
            Err(SourceError::Transient(error)) => {
                context.metrics.retried("storage");
                tracing::warn!(error = %error, "Writing the checkpoint failed; retrying.");
                tokio::select! {
                    // Shutting down: the caller makes one last attempt.
                    _ = context.shutdown.cancelled(), if !context.shutdown.is_cancelled() => return true,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(context.settings.retry_max);
            }
        }
    }
    // Not fatal: the events stay uncheckpointed and are checkpointed with later ones.
    true
}

/// What a transform source's events decode to.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Measurements to write.
    pub readings: Vec<PendingReading>,
    /// Events that could not be decoded.
    pub dead_letters: Vec<DeadLetterRecord>,
    /// Events that decoded to nothing (no template matched).
    pub unmatched: usize,
}

/// Turns a transform source's events into Measurements.
pub trait Decoder: Send + Sync {
    /// Decodes `events`.
    fn decode(&self, events: &[SourceEvent], now: DateTime<Utc>) -> Decoded;
}

/// Events of the normalized hub: one Measurement (wire JSON) each.
#[derive(Debug, Default)]
pub struct MeasurementDecoder;

impl Decoder for MeasurementDecoder {
    fn decode(&self, events: &[SourceEvent], now: DateTime<Utc>) -> Decoded {
        let mut decoded = Decoded::default();
        for event in events {
            let parsed = std::str::from_utf8(&event.body)
                .map_err(|_| "the body is not UTF-8".to_string())
                .and_then(|text| Measurement::from_json(text).map_err(|error| error.0));
            match parsed {
                Ok(measurement) => decoded.readings.push(PendingReading {
                    measurement,
                    origin: event.origin.clone(),
                }),
                Err(message) => decoded.dead_letters.push(DeadLetterRecord::new(
                    Stage::Transform,
                    "MeasurementProcessingException",
                    &format!("The event is not a Measurement: {message}."),
                    &event.origin,
                    PayloadKind::Measurement,
                    &event.body,
                    to_map(&event.properties),
                    to_map(&event.system_properties),
                    now,
                )),
            }
        }
        decoded
    }
}

/// Device events normalized on the spot (local mode: one process, no normalized hub).
#[derive(Debug)]
pub struct NormalizingDecoder {
    templates: Arc<Swappable<DeviceTemplateSet>>,
}

impl NormalizingDecoder {
    /// Normalizes with the current `templates`.
    pub fn new(templates: Arc<Swappable<DeviceTemplateSet>>) -> Self {
        NormalizingDecoder { templates }
    }
}

impl Decoder for NormalizingDecoder {
    fn decode(&self, events: &[SourceEvent], now: DateTime<Utc>) -> Decoded {
        let normalized = normalize_events(&self.templates.get(), events, now);
        Decoded {
            readings: normalized
                .measurements
                .into_iter()
                .map(|(measurement, index)| PendingReading {
                    measurement,
                    origin: events[index].origin.clone(),
                })
                .collect(),
            dead_letters: normalized.dead_letters,
            unmatched: normalized.unmatched,
        }
    }
}

/// What the transform loop writes with.
pub struct TransformContext<'a> {
    /// The FHIR writer.
    pub writer: &'a ObservationWriter,
    /// The FHIR mapping, reloadable.
    pub templates: &'a Swappable<FhirTemplateSet>,
    /// Where snapshots of waiting Measurements are kept; none keeps nothing across restarts
    /// (the checkpoint then only moves after writes).
    pub state: Option<&'a dyn StateStore>,
    /// Snapshot name prefix (a stage and hub scope).
    pub state_prefix: &'a str,
    /// The rest.
    pub stage: StageContext<'a>,
}

/// Writes one partition's Measurements to FHIR until it ends, is lost, or shutdown.
pub async fn transform_partition(
    source: &mut dyn PartitionSource,
    decoder: &dyn Decoder,
    context: &TransformContext<'_>,
) -> PartitionEnd {
    let stage = &context.stage;
    let partition = source.partition_id().to_string();
    let state_name = format!("{}/{partition}.json", context.state_prefix);
    let gauge = stage
        .metrics
        .pending_measurements
        .get_or_create(&labels([("partition", &partition)]))
        .clone();
    let lag = stage
        .metrics
        .checkpoint_lag
        .get_or_create(&labels([("stage", "transform"), ("partition", &partition)]))
        .clone();
    let mut pending = PendingWindows::default();
    let mut progress = Progress::new();
    // The snapshot's version tag, and whether the stored snapshot holds readings.
    let mut snapshot_tag: Option<String> = None;
    let mut snapshot_holds_readings = false;
    let mut skip_through: Option<i64> = None;
    if let Some(state) = context.state {
        let Some(loaded) = retry(stage, "storage", "Loading the partition snapshot", || {
            timed(stage.settings, state.load(&state_name)).boxed()
        })
        .await
        else {
            return PartitionEnd::Shutdown;
        };
        if let Some((bytes, tag)) = loaded {
            snapshot_tag = Some(tag);
            let now = Utc::now();
            let dead_letters = match Snapshot::from_bytes(&bytes, &partition) {
                Ok((snapshot, unreadable)) => {
                    snapshot_holds_readings = !snapshot.readings.is_empty() || !unreadable.is_empty();
                    tracing::info!(partition = %partition, readings = snapshot.readings.len(), unreadable = unreadable.len(), "Resuming from the partition snapshot.");
                    for reading in snapshot.readings {
                        let end = window_end_of(context.templates, &reading.measurement);
                        pending.push(reading, end, now);
                    }
                    skip_through = snapshot.through_sequence;
                    unreadable
                        .iter()
                        .map(|reading| {
                            DeadLetterRecord::new(
                                Stage::Transform,
                                "MeasurementProcessingException",
                                &reading.reason,
                                &reading.origin,
                                PayloadKind::Measurement,
                                &reading.payload,
                                serde_json::Map::new(),
                                serde_json::Map::new(),
                                now,
                            )
                        })
                        .collect()
                }
                Err(error) => {
                    // Its readings were checkpointed past: keep the document itself.
                    tracing::error!(partition = %partition, error = %error, "The partition snapshot is unreadable; dead-lettering it.");
                    snapshot_holds_readings = true;
                    let origin = Origin {
                        partition: partition.clone(),
                        offset: "snapshot".into(),
                        sequence_number: None,
                        enqueued_time: None,
                    };
                    vec![DeadLetterRecord::new(
                        Stage::Transform,
                        "SnapshotUnreadableException",
                        &error,
                        &origin,
                        PayloadKind::Snapshot,
                        &bytes,
                        serde_json::Map::new(),
                        serde_json::Map::new(),
                        now,
                    )]
                }
            };
            if write_dead_letters(stage, &dead_letters).await.is_none() {
                return PartitionEnd::Shutdown;
            }
        }
    }
    loop {
        if stage.shutdown.is_cancelled() {
            // Best effort: what is written or snapshotted is checkpointed.
            let _ = persist_progress(
                source,
                &mut pending,
                &mut progress,
                context,
                &state_name,
                &mut snapshot_tag,
                &mut snapshot_holds_readings,
            )
            .await;
            return PartitionEnd::Shutdown;
        }
        let received = source
            .receive(stage.settings.receive_batch, stage.settings.receive_wait)
            .await;
        let mut ended = false;
        match received {
            Ok(events) if !events.is_empty() => {
                let now = Utc::now();
                stage
                    .metrics
                    .events_received
                    .get_or_create(&labels([("stage", "transform")]))
                    .inc_by(events.len() as u64);
                progress.last_seen = events.last().map(|event| event.origin.clone());
                progress.uncheckpointed += events.len();
                let fresh: Vec<SourceEvent> = events
                    .into_iter()
                    .filter(|event| match (skip_through, event.origin.sequence_number) {
                        (Some(through), Some(sequence)) => sequence > through,
                        _ => true,
                    })
                    .collect();
                let decoded = decoder.decode(&fresh, now);
                stage.metrics.events_unmatched.inc_by(decoded.unmatched as u64);
                if write_dead_letters(stage, &decoded.dead_letters).await.is_none() {
                    return PartitionEnd::Shutdown;
                }
                for reading in decoded.readings {
                    let end = window_end_of(context.templates, &reading.measurement);
                    pending.push(reading, end, now);
                }
                gauge.set(pending.len() as i64);
                lag.set(progress.uncheckpointed as i64);
            }
            Ok(_) => {}
            Err(SourceError::Ended(_)) => ended = true,
            Err(SourceError::Closed(reason)) => {
                tracing::info!(partition = %partition, reason = %reason, "Partition closed.");
                return PartitionEnd::Lost;
            }
            Err(SourceError::Disconnected(reason)) => {
                // As at shutdown: what waits is snapshotted and what is read checkpointed, so the
                // next reader neither loses the waiting readings nor reads the events again.
                tracing::info!(partition = %partition, reason = %reason, "Partition disconnected.");
                let _ = persist_progress(
                    source,
                    &mut pending,
                    &mut progress,
                    context,
                    &state_name,
                    &mut snapshot_tag,
                    &mut snapshot_holds_readings,
                )
                .await;
                return PartitionEnd::Lost;
            }
            Err(SourceError::Transient(error)) => {
                tracing::warn!(partition = %partition, error = %error, "Reading the partition failed; retrying.");
                tokio::time::sleep(stage.settings.retry_initial).await;
                continue;
            }
        }
        let now = Utc::now();
        if (ended && !pending.is_empty()) || pending.is_due(now, &stage.settings.flush) {
            if flush(&mut pending, context).await.is_none() {
                return PartitionEnd::Shutdown;
            }
            gauge.set(0);
        }
        if ended || progress.due(stage.settings.checkpoint_interval) {
            match persist_progress(
                source,
                &mut pending,
                &mut progress,
                context,
                &state_name,
                &mut snapshot_tag,
                &mut snapshot_holds_readings,
            )
            .await
            {
                Ok(()) => {
                    lag.set(progress.uncheckpointed as i64);
                }
                Err(end) => return end,
            }
        }
        if ended {
            return PartitionEnd::Ended;
        }
    }
}

fn window_end_of(templates: &Swappable<FhirTemplateSet>, measurement: &Measurement) -> Option<DateTime<Utc>> {
    let template = templates.get();
    let template = template.get(&measurement.type_name)?;
    window_end(template.period_interval, measurement.occurrence_time_utc)
}

/// Saves the snapshot (when readings wait, or to clear an old one) and then the checkpoint.
async fn persist_progress(
    source: &mut dyn PartitionSource,
    pending: &mut PendingWindows,
    progress: &mut Progress,
    context: &TransformContext<'_>,
    state_name: &str,
    snapshot_tag: &mut Option<String>,
    snapshot_holds_readings: &mut bool,
) -> Result<(), PartitionEnd> {
    let Some(through) = progress.last_seen.clone() else {
        return Ok(());
    };
    if progress.uncheckpointed == 0 {
        return Ok(());
    }
    match context.state {
        Some(state) if !pending.is_empty() || *snapshot_holds_readings => {
            let snapshot = Snapshot {
                through_sequence: through.sequence_number,
                readings: pending.readings().to_vec(),
            };
            let bytes = snapshot.to_bytes();
            let expected = snapshot_tag.clone();
            let saved = retry(&context.stage, "storage", "Saving the partition snapshot", || {
                let expected = expected.clone();
                let bytes = &bytes;
                async move {
                    let saved = tokio::time::timeout(
                        context.stage.settings.call_timeout,
                        state.save(state_name, bytes, expected.as_deref()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(StateError::Transient("saving the snapshot timed out".into())));
                    match saved {
                        Err(StateError::Conflict) => Ok(Err(())),
                        Err(StateError::Transient(error)) => Err(error),
                        Ok(tag) => Ok(Ok(tag)),
                    }
                }
                .boxed()
            })
            .await
            .ok_or(PartitionEnd::Shutdown)?;
            match saved {
                Ok(tag) => {
                    *snapshot_tag = Some(tag);
                    *snapshot_holds_readings = !pending.is_empty();
                }
                Err(()) => {
                    tracing::warn!(
                        state = state_name,
                        "Another replica owns this partition's snapshot now; letting go."
                    );
                    return Err(PartitionEnd::Lost);
                }
            }
        }
        // Without a snapshot store, nothing waiting may be checkpointed past.
        None if !pending.is_empty() => return Ok(()),
        _ => {}
    }
    if checkpoint_source(source, progress, &context.stage).await {
        Ok(())
    } else {
        Err(PartitionEnd::Lost)
    }
}

/// Writes the waiting Measurements; failures are dead-lettered. `None` on shutdown.
async fn flush(pending: &mut PendingWindows, context: &TransformContext<'_>) -> Option<()> {
    let stage = &context.stage;
    let readings = pending.readings().to_vec();
    let measurements: Vec<Measurement> = readings.iter().map(|r| r.measurement.clone()).collect();
    let templates = context.templates.get();
    let report = retry(stage, "fhir", "Writing Observations", || {
        async {
            let result = context.writer.write(&templates, &measurements, Utc::now()).await;
            if let Err(error) = &result
                && error.kind == FhirApiErrorKind::Unauthorized
            {
                tracing::error!(error = %error, "The FHIR server refuses the connector's credentials; check the identity's role.");
            }
            result
        }
        .boxed()
    })
    .await?;
    let now = Utc::now();
    let mut dead_letters = Vec::new();
    let mut failed = vec![false; readings.len()];
    for failure in &report.failures {
        for &member in &failure.members {
            if failed[member] {
                continue;
            }
            failed[member] = true;
            let reading = &readings[member];
            dead_letters.push(DeadLetterRecord::new(
                Stage::Transform,
                failure.error.kind.as_str(),
                &failure.error.message,
                &reading.origin,
                PayloadKind::Measurement,
                reading.measurement.to_json().as_bytes(),
                serde_json::Map::new(),
                serde_json::Map::new(),
                now,
            ));
        }
    }
    write_dead_letters(stage, &dead_letters).await?;
    let metrics = stage.metrics;
    metrics.measurements_grouped.inc_by(readings.len() as u64);
    for (operation, count) in [
        ("created", report.created),
        ("updated", report.updated),
        ("unchanged", report.unchanged),
    ] {
        metrics
            .observations
            .get_or_create(&labels([("operation", operation)]))
            .inc_by(count as u64);
    }
    for (reading, failed) in readings.iter().zip(failed) {
        if let (false, Some(enqueued)) = (failed, reading.origin.enqueued_time) {
            let latency = (now - enqueued).max(TimeDelta::zero());
            metrics
                .end_to_end_latency
                .observe(latency.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
        }
    }
    tracing::debug!(
        measurements = readings.len(),
        created = report.created,
        updated = report.updated,
        unchanged = report.unchanged,
        failed = report.failures.len(),
        "Observations written."
    );
    pending.clear();
    Some(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::fhir::json::Json;
    use crate::pipeline::identity::IdentityResolver;
    use crate::pipeline::ports::{BatchReply, BatchRequest, FhirApi, FhirApiError, TransientError};

    /// Some events, then `end` for ever; remembers the checkpoint.
    struct Scripted {
        events: Vec<SourceEvent>,
        end: SourceError,
        checkpointed: Option<Origin>,
    }

    #[async_trait]
    impl PartitionSource for Scripted {
        fn partition_id(&self) -> &str {
            "0"
        }

        async fn receive(&mut self, _: usize, _: Duration) -> Result<Vec<SourceEvent>, SourceError> {
            if self.events.is_empty() {
                return Err(self.end.clone());
            }
            Ok(std::mem::take(&mut self.events))
        }

        async fn checkpoint(&mut self, through: &Origin) -> Result<(), SourceError> {
            self.checkpointed = Some(through.clone());
            Ok(())
        }
    }

    /// Hangs on the first send (a connection that never answers), then works.
    #[derive(Default)]
    struct HangsOnce {
        calls: AtomicUsize,
        sent: Mutex<Vec<Measurement>>,
    }

    #[async_trait]
    impl MeasurementSink for HangsOnce {
        async fn send(&self, measurements: &[Measurement]) -> Result<Vec<usize>, TransientError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            self.sent.lock().unwrap().extend_from_slice(measurements);
            Ok(Vec::new())
        }
    }

    struct NoDeadLetters;

    #[async_trait]
    impl DeadLetterStore for NoDeadLetters {
        async fn write(&self, records: &[DeadLetterRecord]) -> Result<(), TransientError> {
            panic!("nothing should be dead-lettered: {records:?}");
        }

        async fn list(&self) -> Result<Vec<(String, DeadLetterRecord)>, TransientError> {
            Ok(Vec::new())
        }

        async fn remove(&self, _: &str) -> Result<(), TransientError> {
            Ok(())
        }
    }

    fn heart_rate_templates() -> DeviceTemplateSet {
        DeviceTemplateSet::parse(
            r#"{"templateType":"CollectionContent","template":[{"templateType":"JsonPathContent","template":{
                "typeName":"heartrate","typeMatchExpression":"$..[?(@heartrate)]","deviceIdExpression":"$.deviceid",
                "timestampExpression":"$.time","values":[{"required":true,"valueExpression":"$.heartrate","valueName":"hr"}]}}]}"#,
        )
        .unwrap()
    }

    /// Heart-rate events with sequence numbers `first..first + count`, and the origin of the last.
    fn heart_rate_events(first: i64, count: i64) -> (Vec<SourceEvent>, Origin) {
        let events: Vec<SourceEvent> = (first..first + count)
            .map(|sequence| SourceEvent {
                origin: Origin {
                    partition: "0".into(),
                    offset: (sequence * 100).to_string(),
                    sequence_number: Some(sequence),
                    enqueued_time: None,
                },
                body: format!(r#"{{"deviceid":"d1","time":"2024-03-01T08:00:{sequence:02}Z","heartrate":70}}"#)
                    .into_bytes(),
                properties: Default::default(),
                system_properties: Default::default(),
            })
            .collect();
        let last = events.last().unwrap().origin.clone();
        (events, last)
    }

    /// Runs `normalize_partition` over `source` into `sink` (10 s at most).
    async fn normalize(source: &mut Scripted, sink: &dyn MeasurementSink) -> PartitionEnd {
        let settings = StageSettings {
            call_timeout: Duration::from_millis(100),
            retry_initial: Duration::from_millis(10),
            ..StageSettings::default()
        };
        let metrics = Metrics::default();
        let shutdown = CancellationToken::new();
        let context = StageContext {
            dead_letters: &NoDeadLetters,
            settings: &settings,
            metrics: &metrics,
            shutdown: &shutdown,
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            normalize_partition(source, &Swappable::new(heart_rate_templates()), sink, &context),
        )
        .await
        .expect("the partition loop ends")
    }

    #[tokio::test]
    async fn a_send_that_never_answers_is_timed_out_and_retried() {
        let (events, last) = heart_rate_events(7, 1);
        let mut source = Scripted {
            events,
            end: SourceError::Ended("done".into()),
            checkpointed: None,
        };
        let sink = HangsOnce::default();
        assert_eq!(normalize(&mut source, &sink).await, PartitionEnd::Ended);
        assert_eq!(sink.calls.load(Ordering::SeqCst), 2);
        assert_eq!(sink.sent.lock().unwrap().len(), 1);
        assert_eq!(source.checkpointed, Some(last));
    }

    /// What normalizing four events (sequence numbers 3..=6) and then meeting `end` did: how the
    /// loop ended, how many Measurements went out, the checkpoint, and the last event's origin.
    async fn normalize_four_events_then(end: SourceError) -> (PartitionEnd, usize, Option<Origin>, Origin) {
        let (events, last) = heart_rate_events(3, 4);
        let mut source = Scripted {
            events,
            end,
            checkpointed: None,
        };
        let sink = HangsOnce::default();
        // Past its one hanging call: every send answers at once.
        sink.calls.store(1, Ordering::SeqCst);
        let ended = normalize(&mut source, &sink).await;
        let sent = sink.sent.lock().unwrap().len();
        (ended, sent, source.checkpointed, last)
    }

    #[tokio::test]
    async fn a_dropped_connection_checkpoints_what_was_sent_before_letting_go() {
        // Well inside the checkpoint interval: only the disconnect makes the checkpoint.
        let (ended, sent, checkpointed, last) =
            normalize_four_events_then(SourceError::Disconnected("the connection dropped".into())).await;
        assert_eq!(ended, PartitionEnd::Lost);
        assert_eq!(sent, 4);
        assert_eq!(checkpointed, Some(last), "the next reader starts after the sent events");
    }

    #[tokio::test]
    async fn a_partition_taken_over_writes_no_checkpoint() {
        // The new owner may be ahead already: a checkpoint now could move it backwards.
        let (ended, sent, checkpointed, _) =
            normalize_four_events_then(SourceError::Closed("the partition was revoked".into())).await;
        assert_eq!(ended, PartitionEnd::Lost);
        assert_eq!(sent, 4);
        assert_eq!(checkpointed, None);
    }

    /// A FHIR server the test must not reach.
    #[derive(Debug)]
    struct Unreachable;

    #[async_trait]
    impl FhirApi for Unreachable {
        async fn search(&self, _: &str, _: &[(&str, String)], _: Option<usize>) -> Result<Vec<Json>, FhirApiError> {
            panic!("nothing is due for FHIR yet");
        }

        async fn put(&self, _: &Json, _: Option<&str>) -> Result<Json, FhirApiError> {
            panic!("nothing is due for FHIR yet");
        }

        async fn batch(&self, _: Vec<BatchRequest>) -> Result<Vec<Result<BatchReply, FhirApiError>>, FhirApiError> {
            panic!("nothing is due for FHIR yet");
        }
    }

    /// Snapshots in memory, versioned by a counter.
    #[derive(Default)]
    struct MemoryState(Mutex<std::collections::HashMap<String, (Vec<u8>, String)>>);

    #[async_trait]
    impl StateStore for MemoryState {
        async fn load(&self, name: &str) -> Result<Option<(Vec<u8>, String)>, StateError> {
            Ok(self.0.lock().unwrap().get(name).cloned())
        }

        async fn save(&self, name: &str, data: &[u8], expected: Option<&str>) -> Result<String, StateError> {
            let mut documents = self.0.lock().unwrap();
            if documents.get(name).map(|(_, tag)| tag.as_str()) != expected {
                return Err(StateError::Conflict);
            }
            let tag = format!("v{}", documents.len() + 1);
            documents.insert(name.to_string(), (data.to_vec(), tag.clone()));
            Ok(tag)
        }
    }

    #[tokio::test]
    async fn a_transform_partition_whose_connection_dropped_snapshots_and_checkpoints() {
        // Heart rates of one hourly window: nothing is due for FHIR, so they wait.
        let (mut events, last) = heart_rate_events(3, 4);
        for event in &mut events {
            let sequence = event.origin.sequence_number.unwrap();
            event.body = format!(
                r#"{{"Type":"heartrate","OccurrenceTimeUtc":"2024-03-01T08:00:{sequence:02}Z","IngestionTimeUtc":"2024-03-01T08:00:30Z","DeviceId":"d1","PatientId":"p1","Properties":[{{"Name":"hr","Value":"70"}}]}}"#
            )
            .into_bytes();
        }
        let mut source = Scripted {
            events,
            end: SourceError::Disconnected("the connection dropped".into()),
            checkpointed: None,
        };
        let fhir_mapping = FhirTemplateSet::parse(
            r#"{"templateType":"CollectionFhir","template":[{"templateType":"CodeValueFhir","template":{
                "typeName":"heartrate","periodInterval":60,"category":[],
                "codes":[{"code":"8867-4","system":"http://loinc.org"}],
                "value":{"valueType":"SampledData","valueName":"hr","defaultPeriod":1000,"unit":"/min"}}}]}"#,
        )
        .unwrap();
        let api: Arc<dyn FhirApi> = Arc::new(Unreachable);
        let writer = ObservationWriter::new(
            api.clone(),
            IdentityResolver::new(api, Default::default()),
            Default::default(),
        );
        let state = MemoryState::default();
        let settings = StageSettings::default();
        let metrics = Metrics::default();
        let shutdown = CancellationToken::new();
        let context = TransformContext {
            writer: &writer,
            templates: &Swappable::new(fhir_mapping),
            state: Some(&state),
            state_prefix: "test",
            stage: StageContext {
                dead_letters: &NoDeadLetters,
                settings: &settings,
                metrics: &metrics,
                shutdown: &shutdown,
            },
        };
        let end = tokio::time::timeout(
            Duration::from_secs(10),
            transform_partition(&mut source, &MeasurementDecoder, &context),
        )
        .await
        .expect("the partition loop ends");
        assert_eq!(end, PartitionEnd::Lost);
        assert_eq!(
            source.checkpointed,
            Some(last),
            "the next reader starts after the events read"
        );
        let (bytes, _) = state
            .load("test/0.json")
            .await
            .unwrap()
            .expect("the waiting readings are snapshotted");
        let (snapshot, unreadable) = Snapshot::from_bytes(&bytes, "0").unwrap();
        assert!(unreadable.is_empty());
        assert_eq!(snapshot.readings.len(), 4, "no waiting reading is lost");
        assert_eq!(snapshot.through_sequence, Some(6));
    }
}
