//! The metric catalogue (Prometheus). Labels take bounded values only: stages, operations, error
//! kinds and partition ids; never device, patient or encounter ids.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::fhir::Json;
use crate::pipeline::ports::{BatchReply, BatchRequest, FhirApi, FhirApiError};

type Labels = Vec<(&'static str, String)>;

/// Every metric the connector exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `iomt_events_received_total{stage}`: events read from a source.
    pub events_received: Family<Labels, Counter>,
    /// `iomt_measurements_normalized_total`: Measurements produced by normalization.
    pub measurements_normalized: Counter,
    /// `iomt_events_unmatched_total`: device events no template matched.
    pub events_unmatched: Counter,
    /// `iomt_dead_letters_total{stage,error_type}`: records written to the dead-letter store.
    pub dead_letters: Family<Labels, Counter>,
    /// `iomt_measurements_grouped_total`: Measurements handed to the FHIR writer.
    pub measurements_grouped: Counter,
    /// `iomt_observations_total{operation}`: Observations created, updated or unchanged.
    pub observations: Family<Labels, Counter>,
    /// `iomt_fhir_request_duration_seconds{operation,outcome}`: FHIR request latency.
    pub fhir_request_duration: Family<Labels, Histogram>,
    /// `iomt_end_to_end_latency_seconds`: from a reading's enqueue to its FHIR write.
    pub end_to_end_latency: Histogram,
    /// `iomt_checkpoint_lag_events{stage,partition}`: events processed but not yet checkpointed.
    pub checkpoint_lag: Family<Labels, Gauge>,
    /// `iomt_pending_measurements{partition}`: Measurements waiting to be written.
    pub pending_measurements: Family<Labels, Gauge>,
    /// `iomt_retries_total{target}`: retries of transient failures (fhir, eventhubs, storage).
    pub retries: Family<Labels, Counter>,
    /// `iomt_template_reloads_total{kind,outcome}`: template reloads accepted or rejected.
    pub template_reloads: Family<Labels, Counter>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iomt");
        let metrics = Metrics {
            events_received: Family::default(),
            measurements_normalized: Counter::default(),
            events_unmatched: Counter::default(),
            dead_letters: Family::default(),
            measurements_grouped: Counter::default(),
            observations: Family::default(),
            fhir_request_duration: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            end_to_end_latency: Histogram::new(latency_buckets()),
            checkpoint_lag: Family::default(),
            pending_measurements: Family::default(),
            retries: Family::default(),
            template_reloads: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_received",
            "Events read from a source",
            metrics.events_received.clone(),
        );
        registry.register(
            "measurements_normalized",
            "Measurements produced by normalization",
            metrics.measurements_normalized.clone(),
        );
        registry.register(
            "events_unmatched",
            "Device events no template matched",
            metrics.events_unmatched.clone(),
        );
        registry.register(
            "dead_letters",
            "Records written to the dead-letter store",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "measurements_grouped",
            "Measurements handed to the FHIR writer",
            metrics.measurements_grouped.clone(),
        );
        registry.register(
            "observations",
            "Observations created, updated or unchanged",
            metrics.observations.clone(),
        );
        registry.register(
            "fhir_request_duration_seconds",
            "FHIR request latency",
            metrics.fhir_request_duration.clone(),
        );
        registry.register(
            "end_to_end_latency_seconds",
            "From a reading's enqueue time to its FHIR write",
            metrics.end_to_end_latency.clone(),
        );
        registry.register(
            "checkpoint_lag_events",
            "Events processed but not yet checkpointed",
            metrics.checkpoint_lag.clone(),
        );
        registry.register(
            "pending_measurements",
            "Measurements waiting to be written to FHIR",
            metrics.pending_measurements.clone(),
        );
        registry.register("retries", "Retries of transient failures", metrics.retries.clone());
        registry.register(
            "template_reloads",
            "Template reloads accepted or rejected",
            metrics.template_reloads.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// Counts one retry of a transient failure of `target` (fhir, eventhubs, storage).
    pub fn retried(&self, target: &str) {
        self.retries.get_or_create(&labels([("target", target)])).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Labels from pairs.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(name, value)| (name, value.to_string()))
        .collect()
}

/// A [`FhirApi`] that times every request.
#[derive(Debug)]
pub struct MeteredFhirApi {
    inner: Arc<dyn FhirApi>,
    metrics: Arc<Metrics>,
}

impl MeteredFhirApi {
    /// Times requests to `inner`.
    pub fn new(inner: Arc<dyn FhirApi>, metrics: Arc<Metrics>) -> Self {
        MeteredFhirApi { inner, metrics }
    }

    fn observe<T>(&self, operation: &str, started: Instant, result: &Result<T, FhirApiError>) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .fhir_request_duration
            .get_or_create(&labels([("operation", operation), ("outcome", outcome)]))
            .observe(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl FhirApi for MeteredFhirApi {
    async fn search(
        &self,
        resource_type: &str,
        params: &[(&str, String)],
        limit: Option<usize>,
    ) -> Result<Vec<Json>, FhirApiError> {
        let started = Instant::now();
        let result = self.inner.search(resource_type, params, limit).await;
        self.observe("search", started, &result);
        result
    }

    async fn put(&self, resource: &Json, if_match: Option<&str>) -> Result<Json, FhirApiError> {
        let started = Instant::now();
        let result = self.inner.put(resource, if_match).await;
        self.observe("put", started, &result);
        result
    }

    async fn batch(&self, requests: Vec<BatchRequest>) -> Result<Vec<Result<BatchReply, FhirApiError>>, FhirApiError> {
        let started = Instant::now();
        let result = self.inner.batch(requests).await;
        self.observe("batch", started, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_its_labels() {
        let metrics = Metrics::default();
        metrics
            .events_received
            .get_or_create(&labels([("stage", "normalize")]))
            .inc_by(3);
        metrics
            .observations
            .get_or_create(&labels([("operation", "created")]))
            .inc();
        metrics.end_to_end_latency.observe(0.2);
        let text = metrics.encode();
        assert!(
            text.contains(r#"iomt_events_received_total{stage="normalize"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"iomt_observations_total{operation="created"} 1"#),
            "{text}"
        );
        assert!(text.contains("iomt_end_to_end_latency_seconds_count 1"), "{text}");
        assert!(
            text.contains("# HELP iomt_measurements_normalized Measurements produced by normalization."),
            "{text}"
        );
        metrics
            .dead_letters
            .get_or_create(&labels([
                ("stage", "transform"),
                ("error_type", "TemplateNotFoundException"),
            ]))
            .inc();
        assert!(
            metrics
                .encode()
                .contains(r#"iomt_dead_letters_total{stage="transform",error_type="TemplateNotFoundException"} 1"#)
        );
    }
}
