//! The FHIR server's own write rate, the baseline of the persist and pipeline benchmarks.

use std::time::{Duration, Instant};

use futures::StreamExt;

/// Posts `entries` (JSON texts of Bundle entries) as `batch` Bundles of `bundle` entries, with a
/// bare client and `concurrency` requests in flight; returns how long that took.
pub async fn raw_batches(
    http: &reqwest::Client,
    url: &str,
    entries: Vec<String>,
    bundle: usize,
    concurrency: usize,
) -> Duration {
    let started = Instant::now();
    let bundles: Vec<String> = entries
        .chunks(bundle)
        .map(|chunk| {
            format!(
                r#"{{"resourceType":"Bundle","type":"batch","entry":[{}]}}"#,
                chunk.join(",")
            )
        })
        .collect();
    futures::stream::iter(bundles.into_iter().map(|bundle| async move {
        let response = http
            .post(url)
            .header("Content-Type", "application/fhir+json")
            .body(bundle)
            .send()
            .await
            .expect("the server answers");
        assert!(response.status().is_success(), "{}", response.status());
        response.bytes().await.unwrap();
    }))
    .buffer_unordered(concurrency)
    .collect::<Vec<_>>()
    .await;
    started.elapsed()
}
