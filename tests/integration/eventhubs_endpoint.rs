//! The Event Hubs protocol test endpoint (`support::eventhubs`) driven through the real
//! `azure_messaging_eventhubs` 0.15 clients: producer, consumer, start positions, partition keys,
//! owner levels, and the `EventProcessor` with the blob checkpoint store on Azurite
//! (`IOMT_TEST_BLOB_URL`). The tests also pin down SDK behaviour the worker must handle: owner
//! levels never reach the service, a revoked partition client reads one more event, and a link
//! stolen by an epoch receiver arrives as `ErrorKind::AmqpError`, not `ConsumerDisconnected`.
//!
//! Two tests also use a bare fe2o3 client: the SDK cannot send the epoch link property, so the
//! endpoint's owner-level rules are exercised with the same AMQP library directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::time::Duration as SdkDuration;
use azure_messaging_eventhubs::error::ErrorKind;
use azure_messaging_eventhubs::models::{
    AmqpMessage, AmqpSimpleValue, AmqpValue, EventData, ReceivedEventData, StartPositions,
};
use azure_messaging_eventhubs::processor::PartitionClient;
use azure_messaging_eventhubs::{
    CheckpointStore, ConsumerClient, EventDataBatchOptions, EventProcessor, EventReceiver, OpenReceiverOptions,
    ProcessorStrategy, ProducerClient, RetryOptions, SendEventOptions, SendMessageOptions, StartLocation,
    StartPosition,
};
use azure_messaging_eventhubs_checkpointstore_blob::BlobCheckpointStore;
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use futures::StreamExt;
use tokio::task::{JoinHandle, LocalSet};

use crate::blob_storage::storage;
use crate::support::eventhubs::{EventHubsEndpoint, StaticTokenCredential};
use crate::support::fhir::unique;

const HUB: &str = "devicedata";
const CONSUMER_GROUP: &str = "$Default";
/// The limit on every test.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// The limit on one wait inside a test.
const WAIT: Duration = Duration::from_secs(20);

/// Runs a test body under [`TEST_TIMEOUT`].
async fn within_limit<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test finished within its time limit");
}

/// Short retries, so a failure shows quickly instead of after a minute of backoff.
fn retry_options() -> RetryOptions {
    RetryOptions {
        initial_delay: SdkDuration::milliseconds(50),
        max_delay: SdkDuration::milliseconds(500),
        max_retries: 3,
        max_total_elapsed: SdkDuration::seconds(10),
    }
}

async fn producer(endpoint: &EventHubsEndpoint, hub: &str) -> ProducerClient {
    ProducerClient::builder()
        .with_custom_endpoint(endpoint.url())
        .with_retry_options(retry_options())
        .open(endpoint.namespace(), hub, StaticTokenCredential::new())
        .await
        .expect("the producer opens")
}

async fn consumer(endpoint: &EventHubsEndpoint, hub: &str) -> ConsumerClient {
    ConsumerClient::builder()
        .with_custom_endpoint(endpoint.url())
        .with_retry_options(retry_options())
        .with_consumer_group(CONSUMER_GROUP.to_string())
        .open(endpoint.namespace(), hub.to_string(), StaticTokenCredential::new())
        .await
        .expect("the consumer opens")
}

fn event(body: &str, properties: &[(&str, &str)]) -> EventData {
    properties
        .iter()
        .fold(EventData::builder().with_body(body), |builder, (name, value)| {
            builder.add_property(name.to_string(), *value)
        })
        .build()
}

fn start(location: StartLocation, inclusive: bool) -> Option<OpenReceiverOptions> {
    Some(OpenReceiverOptions {
        start_position: Some(StartPosition { location, inclusive }),
        ..Default::default()
    })
}

/// Reads `count` events from a receiver.
async fn take(receiver: &EventReceiver, count: usize) -> Vec<ReceivedEventData> {
    let mut stream = receiver.stream_events();
    let mut events = Vec::new();
    while events.len() < count {
        let next = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("an event arrived in time (have {} of {count})", events.len()));
        events.push(next.expect("the stream goes on").expect("an event"));
    }
    events
}

fn body(event: &ReceivedEventData) -> String {
    String::from_utf8(event.event_data().body().expect("a body").to_vec()).expect("UTF-8")
}

fn property(event: &ReceivedEventData, name: &str) -> Option<String> {
    match event.event_data().properties()?.get(name)? {
        AmqpSimpleValue::String(value) => Some(value.clone()),
        other => Some(format!("{other:?}")),
    }
}

/// Waits until `condition` holds; panics after twice [`WAIT`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_producer_sends_and_a_consumer_reads_back_from_the_earliest_event() {
    within_limit(async {
        let endpoint = EventHubsEndpoint::start(&[(HUB, 4), ("normalizeddata", 2)]).await;
        let producer = producer(&endpoint, HUB).await;

        let properties = producer.get_eventhub_properties().await.expect("hub properties");
        assert_eq!(properties.name, HUB);
        assert_eq!(properties.partition_ids, ["0", "1", "2", "3"]);
        let empty = producer
            .get_partition_properties("2")
            .await
            .expect("partition properties");
        assert!(empty.is_empty);
        assert_eq!(empty.last_enqueued_sequence_number, -1);

        let keyed = endpoint.partition_for_key(HUB, "device-7");
        let single = if keyed == "0" { "1" } else { "0" };
        let first = EventData::builder()
            .with_body("one")
            .with_content_type("application/json".to_string())
            .add_property("kind".to_string(), "single")
            .build();
        producer
            .send_event(
                first,
                Some(SendEventOptions {
                    partition_id: Some(single.to_string()),
                }),
            )
            .await
            .expect("send_event");
        // IoT Hub routes device messages with annotations such as the device id.
        let mut routed: AmqpMessage = event("two", &[("kind", "routed")]).into();
        routed.add_message_annotation("iothub-connection-device-id".into(), "device-9");
        producer
            .send_message(
                routed,
                Some(SendMessageOptions {
                    partition_id: Some(single.to_string()),
                }),
            )
            .await
            .expect("send_message");
        let batch = producer
            .create_batch(Some(EventDataBatchOptions {
                partition_key: Some("device-7".to_string()),
                ..Default::default()
            }))
            .await
            .expect("create_batch");
        for index in 0..3 {
            let added = batch
                .try_add_event_data(
                    event(&format!("batched {index}"), &[("index", &index.to_string())]),
                    None,
                )
                .expect("try_add_event_data");
            assert!(added, "the batch has room");
        }
        producer.send_batch(batch, None).await.expect("send_batch");

        assert_eq!(endpoint.count(HUB), 5);
        assert_eq!(endpoint.count("normalizeddata"), 0);
        let stored = endpoint.partition_messages(HUB, &keyed);
        assert_eq!(stored.len(), 3, "a batch lands in the partition of its key");
        assert!(
            stored
                .iter()
                .all(|message| message.partition_key.as_deref() == Some("device-7"))
        );
        assert_eq!(stored[2].body, b"batched 2");
        let singles = endpoint.partition_messages(HUB, single);
        assert_eq!(
            singles.iter().map(|message| message.sequence).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(singles[0].hub, HUB);
        assert_eq!(singles[0].body, b"one");
        assert_eq!(
            singles[0].properties.get("kind"),
            Some(&SimpleValue::String("single".into()))
        );
        assert_eq!(
            singles[0]
                .message
                .properties
                .as_ref()
                .and_then(|properties| properties.content_type.clone()),
            Some(Symbol::from("application/json"))
        );
        assert_eq!(
            singles[1].annotations.get("iothub-connection-device-id"),
            Some(&Value::String("device-9".into()))
        );
        let properties = producer
            .get_partition_properties(&keyed)
            .await
            .expect("partition properties");
        assert!(!properties.is_empty);
        assert_eq!(properties.last_enqueued_sequence_number, 2);
        assert_eq!(properties.last_enqueued_offset, stored[2].offset);

        let consumer = consumer(&endpoint, HUB).await;
        let receiver = consumer
            .open_receiver_on_partition(single.to_string(), start(StartLocation::Earliest, false))
            .await
            .expect("a receiver");
        let events = take(&receiver, 2).await;
        assert_eq!(body(&events[0]), "one");
        assert_eq!(events[0].event_data().content_type(), Some("application/json"));
        assert_eq!(property(&events[0], "kind").as_deref(), Some("single"));
        assert_eq!(body(&events[1]), "two");
        assert_eq!(property(&events[1], "kind").as_deref(), Some("routed"));
        assert_eq!(
            events[1].system_properties().get("iothub-connection-device-id"),
            Some(&AmqpValue::String("device-9".into()))
        );
        assert_eq!(events[0].sequence_number(), Some(0));
        assert_eq!(events[1].sequence_number(), Some(1));
        let stored = endpoint.partition_messages(HUB, single);
        assert_eq!(events[1].offset().as_deref(), Some(stored[1].offset.as_str()));
        assert_ne!(events[1].offset().as_deref(), Some("1"), "offsets are byte offsets");
        assert!(events[0].partition_key().is_none());
        let enqueued = events[0].enqueued_time().expect("an enqueued time");
        assert!(SystemTime::now().duration_since(enqueued).unwrap_or_default() < Duration::from_secs(60));

        receiver.close().await.expect("the receiver closes");
        let receiver = consumer
            .open_receiver_on_partition(keyed.clone(), start(StartLocation::Earliest, false))
            .await
            .expect("a receiver");
        let events = take(&receiver, 3).await;
        for (index, event) in events.iter().enumerate() {
            assert_eq!(body(event), format!("batched {index}"));
            assert_eq!(property(event, "index"), Some(index.to_string()));
            assert_eq!(event.partition_key().as_deref(), Some("device-7"));
            assert_eq!(event.sequence_number(), Some(index as i64));
        }
        assert!(
            endpoint
                .authorizations()
                .iter()
                .any(|audience| audience
                    .ends_with(&format!("/{HUB}/ConsumerGroups/{CONSUMER_GROUP}/Partitions/{keyed}"))),
            "the consumer authorized its partition link: {:?}",
            endpoint.authorizations()
        );
        // A consumer closes only after its receivers: they share its connection.
        receiver.close().await.expect("the receiver closes");
        consumer.close().await.expect("the consumer closes");
        producer.close().await.expect("the producer closes");
    })
    .await;
}

#[tokio::test]
async fn receivers_start_at_latest_after_a_sequence_number_an_offset_or_an_enqueued_time() {
    within_limit(async {
        let endpoint = EventHubsEndpoint::start(&[(HUB, 2)]).await;
        let producer = producer(&endpoint, HUB).await;
        let to_partition = |partition: &str| {
            Some(SendEventOptions {
                partition_id: Some(partition.to_string()),
            })
        };
        for index in 0..3 {
            producer
                .send_event(event(&format!("old {index}"), &[]), to_partition("1"))
                .await
                .expect("send_event");
        }
        let consumer = Arc::new(consumer(&endpoint, HUB).await);

        // The receiver attaches when its stream is first polled; only then is "latest" fixed.
        let latest = consumer
            .open_receiver_on_partition("1".to_string(), start(StartLocation::Latest, false))
            .await
            .expect("a receiver");
        let first = tokio::spawn(async move {
            let events = take(&latest, 1).await;
            latest.close().await.expect("the receiver closes");
            events
        });
        eventually("the latest receiver is attached", || {
            endpoint.receivers(HUB, CONSUMER_GROUP).get("1") == Some(&1)
        })
        .await;
        producer
            .send_event(event("new", &[]), to_partition("1"))
            .await
            .expect("send_event");
        let first = first.await.expect("the reader task");
        assert_eq!(body(&first[0]), "new", "a receiver at latest sees only new events");
        assert_eq!(first[0].sequence_number(), Some(3));

        let read_from = |location: StartLocation, inclusive: bool, count: usize| {
            let consumer = consumer.clone();
            async move {
                let receiver = consumer
                    .open_receiver_on_partition("1".to_string(), start(location, inclusive))
                    .await
                    .expect("a receiver");
                let events = take(&receiver, count).await;
                receiver.close().await.expect("the receiver closes");
                events
                    .iter()
                    .map(|event| event.sequence_number().expect("a sequence number"))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(read_from(StartLocation::SequenceNumber(1), false, 2).await, [2, 3]);
        assert_eq!(read_from(StartLocation::SequenceNumber(1), true, 3).await, [1, 2, 3]);
        let stored = endpoint.partition_messages(HUB, "1");
        assert_eq!(
            read_from(StartLocation::Offset(stored[1].offset.clone()), false, 2).await,
            [2, 3]
        );
        assert_eq!(
            read_from(StartLocation::Offset(stored[1].offset.clone()), true, 3).await,
            [1, 2, 3]
        );
        assert_eq!(
            read_from(StartLocation::EnqueuedTime(UNIX_EPOCH), false, 4).await,
            [0, 1, 2, 3]
        );
        let after_all = stored[3].enqueued_time + Duration::from_millis(1);
        let late = consumer
            .open_receiver_on_partition("1".to_string(), start(StartLocation::EnqueuedTime(after_all), false))
            .await
            .expect("a receiver");
        {
            let mut stream = late.stream_events();
            assert!(
                tokio::time::timeout(Duration::from_millis(500), stream.next())
                    .await
                    .is_err(),
                "nothing was enqueued after the last event"
            );
        }
        late.close().await.expect("the receiver closes");
        assert_eq!(endpoint.count(HUB), 4);
        assert_eq!(
            endpoint.counts(HUB),
            BTreeMap::from([("0".to_string(), 0), ("1".to_string(), 4)])
        );
    })
    .await;
}

#[tokio::test]
async fn a_partition_key_always_lands_in_the_same_partition_and_events_without_one_spread() {
    within_limit(async {
        let endpoint = EventHubsEndpoint::start(&[(HUB, 4)]).await;
        let producer = producer(&endpoint, HUB).await;
        let keys = ["device-a", "device-b", "device-c", "device-d", "device-e"];
        for round in 0..3 {
            for key in keys {
                let batch = producer
                    .create_batch(Some(EventDataBatchOptions {
                        partition_key: Some(key.to_string()),
                        ..Default::default()
                    }))
                    .await
                    .expect("create_batch");
                assert!(
                    batch
                        .try_add_event_data(event(&format!("{key} {round}"), &[]), None)
                        .expect("added")
                );
                producer.send_batch(batch, None).await.expect("send_batch");
            }
        }
        // A raw message with the partition key annotation is routed the same way.
        let mut raw: AmqpMessage = event("device-a raw", &[]).into();
        raw.add_message_annotation("x-opt-partition-key".into(), "device-a");
        producer.send_message(raw, None).await.expect("send_message");

        let mut partitions_of: HashMap<String, BTreeSet<String>> = HashMap::new();
        for message in endpoint.messages(HUB) {
            let key = message.partition_key.clone().expect("every event has a key");
            partitions_of.entry(key).or_default().insert(message.partition.clone());
        }
        for key in keys {
            assert_eq!(
                partitions_of[key],
                BTreeSet::from([endpoint.partition_for_key(HUB, key)]),
                "every event with key {key} is in one partition"
            );
        }
        assert_eq!(
            endpoint
                .messages(HUB)
                .iter()
                .filter(|message| message.partition_key.as_deref() == Some("device-a"))
                .count(),
            4
        );

        let spread = EventHubsEndpoint::start(&[(HUB, 4)]).await;
        let producer = self::producer(&spread, HUB).await;
        for index in 0..8 {
            producer
                .send_event(event(&index.to_string(), &[]), None)
                .await
                .expect("send_event");
        }
        assert!(spread.wait_for_count(HUB, 8, WAIT).await);
        assert_eq!(spread.partition_ids(HUB), ["0", "1", "2", "3"]);
        assert_eq!(
            spread.counts(HUB).values().copied().collect::<Vec<_>>(),
            [2, 2, 2, 2],
            "round-robin"
        );
    })
    .await;
}

#[tokio::test]
async fn owner_levels_set_through_sdk_0_15_do_not_reach_the_service() {
    within_limit(async {
        let endpoint = EventHubsEndpoint::start(&[(HUB, 1)]).await;
        let producer = producer(&endpoint, HUB).await;
        producer
            .send_event(event("first", &[]), None)
            .await
            .expect("send_event");
        let at_owner_level_zero = Some(OpenReceiverOptions {
            start_position: Some(StartPosition {
                location: StartLocation::Earliest,
                inclusive: false,
            }),
            owner_level: Some(0),
            ..Default::default()
        });

        // azure_core_amqp 1.1 sets the link properties (`com.microsoft:epoch`, receiver name)
        // before the link name on fe2o3's receiver builder, whose `name()` resets them: the
        // attach carries no properties, so the service sees two receivers without owner levels.
        let first = consumer(&endpoint, HUB).await;
        let second = consumer(&endpoint, HUB).await;
        let owner = first
            .open_receiver_on_partition("0".to_string(), at_owner_level_zero.clone())
            .await
            .expect("a receiver");
        let newcomer = second
            .open_receiver_on_partition("0".to_string(), at_owner_level_zero)
            .await
            .expect("a receiver");
        let mut owner_stream = owner.stream_events();
        let received = tokio::time::timeout(WAIT, owner_stream.next()).await.expect("in time");
        assert_eq!(body(&received.expect("an item").expect("an event")), "first");
        assert_eq!(body(&take(&newcomer, 1).await[0]), "first");
        assert_eq!(
            endpoint.receivers(HUB, CONSUMER_GROUP).get("0"),
            Some(&2),
            "both stay attached"
        );

        producer
            .send_event(event("second", &[]), None)
            .await
            .expect("send_event");
        let received = tokio::time::timeout(WAIT, owner_stream.next()).await.expect("in time");
        assert_eq!(body(&received.expect("an item").expect("an event")), "second");
        assert_eq!(body(&take(&newcomer, 1).await[0]), "second");
        assert_eq!(endpoint.stolen(), 0, "nothing was stolen");
    })
    .await;
}

/// A bare fe2o3 receiver for what the SDK cannot do: attach with an epoch.
mod bare {
    use fe2o3_amqp::link::{LinkStateError, RecvError};
    use fe2o3_amqp::sasl_profile::SaslProfile;
    use fe2o3_amqp::types::definitions::{ErrorCondition, LinkError};
    use fe2o3_amqp::types::messaging::{Body, Source};
    use fe2o3_amqp::types::primitives::{OrderedMap, Symbol, Value};
    use fe2o3_amqp::{Connection, Receiver, Session};

    use super::{CONSUMER_GROUP, HUB, WAIT};
    use crate::support::eventhubs::EventHubsEndpoint;

    /// A receiver on partition 0 with its connection and session (dropping those ends it).
    pub struct Attached {
        pub receiver: Receiver,
        _session: fe2o3_amqp::session::SessionHandle<()>,
        _connection: fe2o3_amqp::connection::ConnectionHandle<()>,
    }

    pub async fn attach(endpoint: &EventHubsEndpoint, name: &str, epoch: Option<i64>) -> Attached {
        let mut connection = Connection::builder()
            .container_id(name)
            .sasl_profile(SaslProfile::Anonymous)
            .open(endpoint.url().as_str())
            .await
            .expect("a connection");
        let mut session = Session::begin(&mut connection).await.expect("a session");
        let mut properties = OrderedMap::new();
        if let Some(epoch) = epoch {
            properties.insert(Symbol::from("com.microsoft:epoch"), Value::Long(epoch));
        }
        // `name` before `properties`: fe2o3's builder drops properties set earlier.
        let receiver = Receiver::builder()
            .name(name)
            .source(
                Source::builder()
                    .address(format!(
                        "amqps://{}/{HUB}/ConsumerGroups/{CONSUMER_GROUP}/Partitions/0",
                        endpoint.namespace()
                    ))
                    .build(),
            )
            .properties(properties)
            .attach(&mut session)
            .await
            .expect("a receiver link");
        Attached {
            receiver,
            _session: session,
            _connection: connection,
        }
    }

    /// The body of the next event.
    pub async fn next(attached: &mut Attached) -> Result<String, RecvError> {
        let delivery = tokio::time::timeout(WAIT, attached.receiver.recv::<Body<Value>>())
            .await
            .expect("in time")?;
        match delivery.body() {
            Body::Data(sections) => Ok(String::from_utf8_lossy(&sections[0].0).into_owned()),
            other => panic!("a Data body, got {other:?}"),
        }
    }

    /// Whether the link was closed with `amqp:link:stolen`.
    pub fn is_stolen(result: Result<String, RecvError>) -> bool {
        matches!(
            result,
            Err(RecvError::LinkStateError(LinkStateError::RemoteClosedWithError(error)))
                if error.condition == ErrorCondition::LinkError(LinkError::Stolen)
        )
    }
}

/// The endpoint's owner-level rules, checked with a bare fe2o3 client because the SDK cannot
/// send the epoch property (see the test above).
#[tokio::test]
async fn the_endpoint_detaches_receivers_with_a_lower_or_equal_epoch_as_stolen() {
    use bare::{attach, is_stolen, next};

    within_limit(async {
        let endpoint = EventHubsEndpoint::start(&[(HUB, 1)]).await;
        let producer = producer(&endpoint, HUB).await;
        producer
            .send_event(event("first", &[]), None)
            .await
            .expect("send_event");

        let mut first = attach(&endpoint, "first", Some(0)).await;
        assert_eq!(next(&mut first).await.expect("an event"), "first");
        let mut second = attach(&endpoint, "second", Some(0)).await;
        assert_eq!(next(&mut second).await.expect("an event"), "first");
        assert!(
            is_stolen(next(&mut first).await),
            "an equal epoch displaces the older receiver"
        );
        assert_eq!(endpoint.stolen(), 1);

        let mut lower = attach(&endpoint, "lower", Some(-1)).await;
        assert!(is_stolen(next(&mut lower).await), "a lower epoch is refused");
        let mut without = attach(&endpoint, "without", None).await;
        assert!(
            is_stolen(next(&mut without).await),
            "no epoch is refused while one is attached"
        );

        let mut higher = attach(&endpoint, "higher", Some(7)).await;
        assert_eq!(next(&mut higher).await.expect("an event"), "first");
        assert!(
            is_stolen(next(&mut second).await),
            "a higher epoch displaces a lower one"
        );
        producer
            .send_event(event("second", &[]), None)
            .await
            .expect("send_event");
        assert_eq!(next(&mut higher).await.expect("an event"), "second");
        eventually("one receiver is left", || {
            endpoint.receivers(HUB, CONSUMER_GROUP).get("0") == Some(&1)
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn clients_fail_instead_of_hanging_when_the_endpoint_goes_away() {
    within_limit(async {
        let endpoint = EventHubsEndpoint::start(&[(HUB, 1)]).await;
        let producer = producer(&endpoint, HUB).await;
        producer
            .send_event(event("before", &[]), None)
            .await
            .expect("send_event");
        let consumer = consumer(&endpoint, HUB).await;
        let receiver = consumer
            .open_receiver_on_partition("0".to_string(), start(StartLocation::Earliest, false))
            .await
            .expect("a receiver");
        let mut stream = receiver.stream_events();
        let received = tokio::time::timeout(WAIT, stream.next()).await.expect("in time");
        assert_eq!(body(&received.expect("an item").expect("an event")), "before");

        drop(endpoint);
        let ended = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the stream gives up in time");
        assert!(matches!(ended, Some(Err(_)) | None), "the stream fails: {ended:?}");
        let sent = tokio::time::timeout(WAIT, producer.send_event(event("after", &[]), None))
            .await
            .expect("the send gives up in time");
        assert!(sent.is_err(), "nothing accepts the event");
    })
    .await;
}

/// What a running processor has seen.
#[derive(Debug, Default)]
struct Seen {
    /// Partitions whose partition client is still reading.
    reading: BTreeSet<String>,
    /// (partition, sequence number, body) of every event received, in order.
    events: Vec<(String, i64, String)>,
    /// Why partition streams ended.
    ended: Vec<String>,
}

/// An `EventProcessor` run the way a worker runs it: on a `LocalSet` (its partition streams are
/// not `Send`), one reading task per partition client, checkpointing every event.
struct RunningProcessor {
    owner: String,
    processor: Arc<EventProcessor>,
    seen: Arc<Mutex<Seen>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl RunningProcessor {
    /// Starts a processor; call inside a `LocalSet`.
    async fn start(
        endpoint: &EventHubsEndpoint,
        owner: &str,
        checkpoints: Arc<dyn CheckpointStore + Send + Sync>,
    ) -> RunningProcessor {
        let consumer = ConsumerClient::builder()
            .with_custom_endpoint(endpoint.url())
            .with_retry_options(retry_options())
            // The application id is the owner id in the checkpoint store: one per replica.
            .with_application_id(owner.to_string())
            .open(endpoint.namespace(), HUB.to_string(), StaticTokenCredential::new())
            .await
            .expect("the consumer opens");
        let processor = EventProcessor::builder()
            .with_load_balancing_strategy(ProcessorStrategy::Balanced)
            .with_update_interval(SdkDuration::seconds(1))
            .with_partition_expiration_duration(SdkDuration::seconds(4))
            .with_start_positions(StartPositions {
                per_partition: HashMap::new(),
                // Checkpoints resume with this `inclusive`: true would re-deliver the checkpointed event.
                default: StartPosition {
                    location: StartLocation::Earliest,
                    inclusive: false,
                },
            })
            .build(consumer, checkpoints)
            .await
            .expect("the processor builds");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let run = tokio::task::spawn_local({
            let processor = processor.clone();
            async move {
                if let Err(error) = processor.run().await {
                    panic!("the processor failed: {error:?}");
                }
            }
        });
        let dispatch = tokio::task::spawn_local({
            let (processor, seen, tasks) = (processor.clone(), seen.clone(), tasks.clone());
            async move {
                while let Ok(client) = processor.next_partition_client().await {
                    let reader = tokio::task::spawn_local(read_partition(client, seen.clone()));
                    tasks.lock().unwrap().push(reader);
                }
            }
        });
        tasks.lock().unwrap().extend([run, dispatch]);
        RunningProcessor {
            owner: owner.to_string(),
            processor,
            seen,
            tasks,
        }
    }

    fn reading(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().reading.clone()
    }

    fn bodies(&self) -> BTreeSet<String> {
        self.seen
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|(_, _, body)| body.clone())
            .collect()
    }

    /// Stops the processor as a replica going away would: no more renewals, tasks dropped, the
    /// connection closed. Its ownerships stay in the store until they expire.
    async fn stop(self) {
        self.processor.shutdown().await.expect("shutdown");
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        drop(self.processor);
        tokio::task::yield_now().await;
    }
}

async fn read_partition(client: Arc<PartitionClient>, seen: Arc<Mutex<Seen>>) {
    let partition = client.get_partition_id().to_string();
    seen.lock().unwrap().reading.insert(partition.clone());
    let mut ended = "end of stream".to_string();
    {
        let mut stream = client.stream_events();
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    let sequence = event.sequence_number().expect("a sequence number");
                    seen.lock()
                        .unwrap()
                        .events
                        .push((partition.clone(), sequence, body(&event)));
                    if let Err(error) = client.update_checkpoint(&event).await {
                        ended = format!("checkpoint failed: {error:?}");
                        break;
                    }
                }
                Err(error) => {
                    ended = format!("{:?}", error.kind);
                    break;
                }
            }
        }
    }
    let mut seen = seen.lock().unwrap();
    seen.reading.remove(&partition);
    seen.ended.push(format!("{partition}: {ended}"));
}

async fn send_to(producer: &ProducerClient, partition: &str, body: &str) {
    producer
        .send_event(
            event(body, &[]),
            Some(SendEventOptions {
                partition_id: Some(partition.to_string()),
            }),
        )
        .await
        .expect("send_event");
}

/// The owner of each partition in the checkpoint store.
async fn owners(checkpoints: &BlobCheckpointStore, namespace: &str) -> BTreeMap<String, String> {
    checkpoints
        .list_ownerships(namespace, HUB, CONSUMER_GROUP)
        .await
        .expect("ownerships")
        .into_iter()
        .map(|ownership| (ownership.partition_id, ownership.owner_id.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn an_event_processor_reads_every_partition_checkpoints_and_a_successor_resumes_after_it() {
    LocalSet::new()
        .run_until(within_limit(async {
            let endpoint = EventHubsEndpoint::start(&[(HUB, 2)]).await;
            let producer = producer(&endpoint, HUB).await;
            for partition in ["0", "1"] {
                for index in 0..2 {
                    send_to(&producer, partition, &format!("p{partition} e{index}")).await;
                }
            }
            let name = unique("eh-checkpoints");
            let checkpoints = BlobCheckpointStore::new(storage().ensure_container(&name).await.expect("a container"));
            let container = storage().container(&name).expect("a container client");

            let first = RunningProcessor::start(&endpoint, "first", checkpoints.clone()).await;
            eventually("the first processor read all four events", || first.bodies().len() == 4).await;
            assert_eq!(first.reading(), BTreeSet::from(["0".to_string(), "1".to_string()]));
            {
                let seen = first.seen.lock().unwrap();
                for partition in ["0", "1"] {
                    let sequences: Vec<i64> = seen
                        .events
                        .iter()
                        .filter(|(p, _, _)| p == partition)
                        .map(|(_, sequence, _)| *sequence)
                        .collect();
                    assert_eq!(sequences, [0, 1], "partition {partition} in order");
                }
            }
            let namespace = endpoint.namespace();
            assert_eq!(
                owners(&checkpoints, namespace).await,
                BTreeMap::from([
                    ("0".to_string(), "first".to_string()),
                    ("1".to_string(), "first".to_string())
                ])
            );
            let mut written = checkpoints
                .list_checkpoints(namespace, HUB, CONSUMER_GROUP)
                .await
                .expect("checkpoints");
            written.sort_by(|a, b| a.partition_id.cmp(&b.partition_id));
            assert_eq!(written.len(), 2);
            for checkpoint in &written {
                let stored = endpoint.partition_messages(HUB, &checkpoint.partition_id);
                assert_eq!(checkpoint.sequence_number, Some(1));
                assert_eq!(checkpoint.offset.as_deref(), Some(stored[1].offset.as_str()));
            }
            let blob = format!("{namespace}/{HUB}/{CONSUMER_GROUP}/checkpoint/0");
            assert!(
                iomt_connector::adapters::blob::etag(&container, &blob)
                    .await
                    .expect("a lookup")
                    .is_some(),
                "the checkpoint blob is {blob}"
            );
            first.stop().await;

            for partition in ["0", "1"] {
                send_to(&producer, partition, &format!("p{partition} e2")).await;
            }
            // The first processor's ownerships expire (4 s) or are taken over; either way the
            // successor starts after the checkpoints, not at the earliest event.
            let second = RunningProcessor::start(&endpoint, "second", checkpoints.clone()).await;
            eventually("the second processor read the new events", || {
                second.bodies().len() == 2
            })
            .await;
            assert_eq!(
                second.bodies(),
                BTreeSet::from(["p0 e2".to_string(), "p1 e2".to_string()])
            );
            assert!(
                second
                    .seen
                    .lock()
                    .unwrap()
                    .events
                    .iter()
                    .all(|(_, sequence, _)| *sequence == 2)
            );
            eventually("the second processor owns both partitions", || {
                second.reading().len() == 2
            })
            .await;
            second.stop().await;
        }))
        .await;
}

#[tokio::test]
async fn two_event_processors_share_the_partitions_and_one_takes_over_when_the_other_stops() {
    LocalSet::new()
        .run_until(within_limit(async {
            let endpoint = EventHubsEndpoint::start(&[(HUB, 4)]).await;
            let producer = producer(&endpoint, HUB).await;
            let container = storage()
                .ensure_container(&unique("eh-balance"))
                .await
                .expect("a container");
            let checkpoints = BlobCheckpointStore::new(container);
            let namespace = endpoint.namespace();

            let a = RunningProcessor::start(&endpoint, "replica-a", checkpoints.clone()).await;
            let b = RunningProcessor::start(&endpoint, "replica-b", checkpoints.clone()).await;
            let deadline = tokio::time::Instant::now() + WAIT * 2;
            let balanced = loop {
                let owners = owners(&checkpoints, namespace).await;
                let count = |owner: &str| owners.values().filter(|o| o.as_str() == owner).count();
                if owners.len() == 4 && count(&a.owner) == 2 && count(&b.owner) == 2 {
                    break owners;
                }
                assert!(tokio::time::Instant::now() < deadline, "balanced in time: {owners:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let owned_by = |owner: &str| -> BTreeSet<String> {
                balanced
                    .iter()
                    .filter(|(_, o)| o.as_str() == owner)
                    .map(|(p, _)| p.clone())
                    .collect()
            };
            eventually("each reads the partitions it owns", || {
                a.reading().is_superset(&owned_by(&a.owner)) && b.reading().is_superset(&owned_by(&b.owner))
            })
            .await;

            for index in 0..8 {
                producer
                    .send_event(event(&format!("before {index}"), &[]), None)
                    .await
                    .expect("send_event");
            }
            assert_eq!(endpoint.counts(HUB).values().copied().collect::<Vec<_>>(), [2, 2, 2, 2]);
            eventually("the owner of each partition read its events", || {
                endpoint.messages(HUB).iter().all(|message| {
                    let body = String::from_utf8_lossy(&message.body).into_owned();
                    let reader = if balanced[&message.partition] == a.owner {
                        &a
                    } else {
                        &b
                    };
                    reader.bodies().contains(&body)
                })
            })
            .await;

            a.stop().await;
            eventually("the remaining processor reads all four partitions", || {
                b.reading().len() == 4
            })
            .await;
            let owners = owners(&checkpoints, namespace).await;
            assert!(owners.values().all(|owner| owner == &b.owner), "{owners:?}");
            for index in 0..8 {
                producer
                    .send_event(event(&format!("after {index}"), &[]), None)
                    .await
                    .expect("send_event");
            }
            let after: BTreeSet<String> = (0..8).map(|index| format!("after {index}")).collect();
            eventually("the remaining processor read every new event", || {
                b.bodies().is_superset(&after)
            })
            .await;
            eventually("one receiver per partition", || {
                endpoint
                    .receivers(HUB, CONSUMER_GROUP)
                    .values()
                    .copied()
                    .collect::<Vec<_>>()
                    == [1, 1, 1, 1]
            })
            .await;
            b.stop().await;
        }))
        .await;
}

#[tokio::test]
async fn a_processor_that_loses_partitions_to_a_newcomer_reads_at_most_one_more_event_from_each() {
    LocalSet::new()
        .run_until(within_limit(async {
            let endpoint = EventHubsEndpoint::start(&[(HUB, 4)]).await;
            let producer = producer(&endpoint, HUB).await;
            let container = storage()
                .ensure_container(&unique("eh-revoke"))
                .await
                .expect("a container");
            let checkpoints = BlobCheckpointStore::new(container);
            let namespace = endpoint.namespace();
            let all: BTreeSet<String> = ["0", "1", "2", "3"].map(String::from).into();

            let a = RunningProcessor::start(&endpoint, "replica-a", checkpoints.clone()).await;
            eventually("the first processor reads every partition", || a.reading() == all).await;
            let b = RunningProcessor::start(&endpoint, "replica-b", checkpoints.clone()).await;
            eventually("the newcomer reads two partitions", || b.reading().len() == 2).await;
            let lost = b.reading();
            let store_owners = owners(&checkpoints, namespace).await;
            assert!(
                lost.iter().all(|partition| store_owners[partition] == b.owner),
                "{store_owners:?}"
            );
            // The first processor revokes the lost partition clients at its next load-balancing
            // round (every second); a revoked client keeps its link until its pending receive ends.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert_eq!(a.reading(), all, "revocation alone does not end a waiting stream");
            assert_eq!(
                endpoint.receivers(HUB, CONSUMER_GROUP).values().sum::<usize>(),
                6,
                "both keep their links"
            );

            for partition in &all {
                send_to(&producer, partition, &format!("x{partition}")).await;
            }
            eventually("the revoked streams end", || {
                a.seen.lock().unwrap().ended.len() == lost.len() && a.reading().is_disjoint(&lost)
            })
            .await;
            let ended = a.seen.lock().unwrap().ended.clone();
            assert!(
                ended
                    .iter()
                    .all(|reason| reason.ends_with("ConsumerDisconnected(None)")),
                "a revoked stream ends with ConsumerDisconnected(None): {ended:?}"
            );
            eventually("the new owner read its events", || {
                lost.iter()
                    .all(|partition| b.bodies().contains(&format!("x{partition}")))
            })
            .await;
            {
                let seen = a.seen.lock().unwrap();
                for partition in &lost {
                    let after_losing = seen.events.iter().filter(|(p, _, _)| p == partition).count();
                    assert!(
                        after_losing <= 1,
                        "at most one more event from partition {partition}: {seen:?}"
                    );
                }
            }
            eventually("one receiver per partition again", || {
                endpoint
                    .receivers(HUB, CONSUMER_GROUP)
                    .values()
                    .copied()
                    .collect::<Vec<_>>()
                    == [1, 1, 1, 1]
            })
            .await;

            for partition in &all {
                send_to(&producer, partition, &format!("y{partition}")).await;
            }
            let expected = |owned: &BTreeSet<String>| owned.iter().map(|p| format!("y{p}")).collect::<BTreeSet<_>>();
            let kept: BTreeSet<String> = all.difference(&lost).cloned().collect();
            eventually("each processor reads its own partitions", || {
                b.bodies().is_superset(&expected(&lost)) && a.bodies().is_superset(&expected(&kept))
            })
            .await;
            assert!(
                a.bodies().is_disjoint(&expected(&lost)),
                "the old owner reads nothing more"
            );
            a.stop().await;
            b.stop().await;
        }))
        .await;
}

#[tokio::test]
async fn an_sdk_receiver_displaced_by_an_epoch_receiver_fails_with_an_amqp_error_not_consumer_disconnected() {
    within_limit(async {
        let endpoint = EventHubsEndpoint::start(&[(HUB, 1)]).await;
        let producer = producer(&endpoint, HUB).await;
        producer
            .send_event(event("first", &[]), None)
            .await
            .expect("send_event");
        let consumer = consumer(&endpoint, HUB).await;
        let receiver = consumer
            .open_receiver_on_partition("0".to_string(), start(StartLocation::Earliest, false))
            .await
            .expect("a receiver");
        let mut stream = receiver.stream_events();
        let received = tokio::time::timeout(WAIT, stream.next()).await.expect("in time");
        assert_eq!(body(&received.expect("an item").expect("an event")), "first");

        // A client that does send an epoch (another SDK, another language) takes the partition.
        let mut thief = bare::attach(&endpoint, "thief", Some(0)).await;
        assert_eq!(bare::next(&mut thief).await.expect("an event"), "first");
        // fe2o3 reports the detach as a link state error, which the SDK retries by re-attaching
        // (refused: an epoch receiver holds the partition) until its retry budget is spent.
        let lost = tokio::time::timeout(WAIT, stream.next()).await.expect("in time");
        let error = match lost {
            Some(Err(error)) => error,
            other => panic!("the displaced receiver fails, got {other:?}"),
        };
        assert!(
            matches!(error.kind, ErrorKind::AmqpError(_)) && error.to_string().contains("Stolen"),
            "link stolen arrives as an AMQP link state error: {error:?}"
        );
        assert!(stream.next().await.is_none(), "the stream ends after the error");
        assert_eq!(endpoint.stolen(), 1);
        assert_eq!(
            endpoint.receivers(HUB, CONSUMER_GROUP).get("0"),
            Some(&1),
            "the thief keeps it"
        );
    })
    .await;
}
