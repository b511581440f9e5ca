//! An in-process Event Hubs protocol test endpoint: a small AMQP 1.0 server on `fe2o3-amqp` that
//! the real `azure_messaging_eventhubs` 0.15 clients (`ProducerClient`, `ConsumerClient`,
//! `EventProcessor`) talk to over plain TCP, via `with_custom_endpoint(endpoint.url())`. No Event
//! Hubs emulator runs on the test machines, so this is how integration tests exercise the worker.
//!
//! ```ignore
//! let endpoint = EventHubsEndpoint::start(&[("devicedata", 4), ("normalizeddata", 2)]).await;
//! let producer = ProducerClient::builder()
//!     .with_custom_endpoint(endpoint.url())
//!     .open(endpoint.namespace(), "devicedata", StaticTokenCredential::new())
//!     .await?;
//! ```
//!
//! **Implemented** (the protocol of `azure-sdk.md` §8.2):
//! - TCP with SASL ANONYMOUS; the namespace the client names in `open` is ignored, so any fully
//!   qualified namespace works (use [`EventHubsEndpoint::namespace`]).
//! - `$cbs` put-token: every token is accepted (status 202); the audiences are recorded
//!   ([`EventHubsEndpoint::authorizations`]).
//! - `$management` READ of `com.microsoft:eventhub` and `com.microsoft:partition` (404 for unknown
//!   hubs or partitions), answered in order.
//! - Producer links to `amqps://<ns>/<hub>` and `…/Partitions/<id>` with `max-message-size` 1 MiB
//!   advertised. Single messages and batches (message format `0x80013700`, one Data section per
//!   encoded event) are stored by partition id, else by the `x-opt-partition-key` annotation
//!   (FNV-1a hash modulo the partition count, [`EventHubsEndpoint::partition_for_key`]), else
//!   round-robin. A batch lands in one partition. Transfers are accepted after a 20 ms delay
//!   (settling at once makes the 0.14 client hang now and then, `azure-sdk.md` §8.3).
//! - Consumer links from `amqps://<ns>/<hub>/ConsumerGroups/<cg>/Partitions/<id>`, any consumer
//!   group, with the `apache.org:selector-filter:string` start filter: earliest, latest, offset,
//!   sequence number and enqueued time, `>` or `>=`. Events go out pre-settled with the
//!   producer's message unchanged plus `x-opt-sequence-number` (long, from 0),
//!   `x-opt-offset` (string: a byte offset, so it differs from the sequence number) and
//!   `x-opt-enqueued-time` (timestamp); a receiver sees the stored events and then new ones.
//! - Owner levels: a receiver attaching with link property `com.microsoft:epoch` detaches every
//!   receiver on the same hub/consumer group/partition with a lower or equal epoch (or none) with
//!   `amqp:link:stolen`; one with a lower epoch than an attached receiver, or without an epoch
//!   while one with an epoch is attached, is refused with `amqp:link:stolen`. Receivers without
//!   epochs may share a partition. Note that `azure_messaging_eventhubs` 0.15 never sends the epoch:
//!   azure_core_amqp 1.1 sets the link properties before the link name on fe2o3 0.14's receiver
//!   builder, whose `name()` resets them, so SDK receivers (the `EventProcessor`'s too) always
//!   arrive without owner levels and share partitions (see the tests in `eventhubs_endpoint.rs`).
//! - Unknown addresses and unsupported filters are refused by detaching the link with an error
//!   (`amqp:not-found`, `amqp:not-implemented`).
//!
//! **Not implemented:** TLS, token validation (any token is fine), retention and size limits of
//! the store (everything stays in memory until the endpoint is dropped), the `$management`
//! operations other than READ, consumer-group validation, receiver runtime metrics
//! (`x-opt-last-enqueued-*`), idempotent producers, geo-replication. Two faults can be injected:
//! a forced detach of every consumer link of a hub ([`EventHubsEndpoint::force_detach`]), and
//! cutting every connection's socket ([`EventHubsEndpoint::cut_connections`]).
//!
//! Dropping the endpoint stops its listener and every connection task.

mod credential;
mod server;
mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use credential::StaticTokenCredential;
pub use store::StoredMessage;

use server::Context;
use store::Store;

/// The namespace to give the SDK; the endpoint ignores it.
pub const NAMESPACE: &str = "iomt-test.servicebus.windows.net";

/// A running endpoint; it stops when dropped.
pub struct EventHubsEndpoint {
    port: u16,
    store: Arc<Store>,
    shutdown: CancellationToken,
    listener: JoinHandle<()>,
}

impl EventHubsEndpoint {
    /// Starts an endpoint on `127.0.0.1` (a free port) with these hubs and partition counts.
    /// Partition ids are `"0"`, `"1"`, … .
    pub async fn start(hubs: &[(&str, u32)]) -> EventHubsEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the Event Hubs test endpoint binds");
        let port = listener.local_addr().expect("a bound address").port();
        let store = Arc::new(Store::new(hubs));
        let shutdown = CancellationToken::new();
        let context = Context {
            store: store.clone(),
            shutdown: shutdown.clone(),
        };
        let listener = tokio::spawn(server::serve(listener, context));
        EventHubsEndpoint {
            port,
            store,
            shutdown,
            listener,
        }
    }

    /// The URL to pass to `with_custom_endpoint`: `amqp://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.port)
    }

    /// The fully qualified namespace to pass to the clients' `open` (any name would do).
    pub fn namespace(&self) -> &'static str {
        NAMESPACE
    }

    /// The partition ids of a hub (panics for an unknown hub).
    pub fn partition_ids(&self, hub: &str) -> Vec<String> {
        self.hub(hub).partition_ids()
    }

    /// The partition a partition key maps to.
    pub fn partition_for_key(&self, hub: &str, key: &str) -> String {
        self.hub(hub).partition_for_key(key).id.clone()
    }

    /// Every event stored in a hub, by partition and then sequence number.
    pub fn messages(&self, hub: &str) -> Vec<StoredMessage> {
        let hub = self.hub(hub);
        hub.partitions
            .iter()
            .flat_map(|partition| {
                partition
                    .read(0, usize::MAX)
                    .iter()
                    .map(|event| store::stored_message(&hub.name, &partition.id, event))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The events stored in one partition, by sequence number.
    pub fn partition_messages(&self, hub: &str, partition: &str) -> Vec<StoredMessage> {
        self.messages(hub)
            .into_iter()
            .filter(|message| message.partition == partition)
            .collect()
    }

    /// How many events each partition of a hub holds.
    pub fn counts(&self, hub: &str) -> BTreeMap<String, usize> {
        self.hub(hub)
            .partitions
            .iter()
            .map(|partition| (partition.id.clone(), partition.len()))
            .collect()
    }

    /// How many events a hub holds.
    pub fn count(&self, hub: &str) -> usize {
        self.counts(hub).values().sum()
    }

    /// Waits until a hub holds at least `count` events; false after `limit`.
    pub async fn wait_for_count(&self, hub: &str, count: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.count(hub) >= count {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many receivers are attached to each partition of a hub for a consumer group, not
    /// counting displaced ones still detaching (partitions without receivers are left out).
    pub fn receivers(&self, hub: &str, consumer_group: &str) -> BTreeMap<String, usize> {
        self.store.receiver_counts(hub, consumer_group)
    }

    /// Detaches every receiver of a hub with `amqp:link:detach-forced`, as the service does when
    /// it moves a partition; returns how many were attached.
    pub fn force_detach(&self, hub: &str) -> usize {
        self.store.force_detach(hub)
    }

    /// Shuts down the socket of every open connection (a network failure, or a service node
    /// restarting); returns how many were open.
    pub fn cut_connections(&self) -> usize {
        self.store.cut_connections()
    }

    /// How many receivers have been detached with `amqp:link:stolen` so far.
    pub fn stolen(&self) -> usize {
        self.store.stolen.load(Ordering::Relaxed)
    }

    /// The audiences (entity URLs) of every CBS put-token so far.
    pub fn authorizations(&self) -> Vec<String> {
        self.store
            .authorizations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn hub(&self, hub: &str) -> &Arc<store::Hub> {
        self.store
            .hub(hub)
            .unwrap_or_else(|| panic!("the test endpoint has no event hub named {hub}"))
    }
}

impl Drop for EventHubsEndpoint {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.listener.abort();
    }
}
