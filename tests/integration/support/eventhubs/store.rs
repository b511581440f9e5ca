//! The endpoint's in-memory state: hubs, their partitions and events, and the receivers attached to
//! each hub/consumer-group/partition (for owner levels, "epochs").

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message, MessageAnnotations};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Timestamp, Value};
use tokio::sync::{oneshot, watch};

/// Annotation names the service stamps on every event.
pub const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
/// See [`SEQUENCE_NUMBER`].
pub const OFFSET: &str = "x-opt-offset";
/// See [`SEQUENCE_NUMBER`].
pub const ENQUEUED_TIME: &str = "x-opt-enqueued-time";
/// The partition key annotation (set by the producer, kept by the service).
pub const PARTITION_KEY: &str = "x-opt-partition-key";

/// One event as the endpoint stored it, for test assertions.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// The hub it was sent to.
    pub hub: String,
    /// The partition it landed in.
    pub partition: String,
    /// Its sequence number in the partition (from 0).
    pub sequence: i64,
    /// Its offset in the partition (a byte offset, as text; differs from the sequence number).
    pub offset: String,
    /// When the endpoint stored it (millisecond precision, like the service).
    pub enqueued_time: SystemTime,
    /// The `x-opt-partition-key` annotation, if the producer set one.
    pub partition_key: Option<String>,
    /// The body: the Data sections concatenated (or a binary/string AMQP value).
    pub body: Vec<u8>,
    /// The application properties.
    pub properties: BTreeMap<String, SimpleValue>,
    /// The message annotations with symbol keys, including the `x-opt-*` ones the endpoint added.
    pub annotations: BTreeMap<String, Value>,
    /// The whole AMQP message as consumers receive it.
    pub message: Message<Body<Value>>,
}

/// An event in a partition log.
pub(crate) struct Event {
    pub sequence: i64,
    pub offset: i64,
    pub enqueued_ms: i64,
    /// The message with the `x-opt-*` annotations already set.
    pub message: Message<Body<Value>>,
}

/// One partition: its log and a channel that ticks when the log grows.
pub(crate) struct Partition {
    pub id: String,
    log: Mutex<Vec<Arc<Event>>>,
    next_offset: AtomicU64,
    grown: watch::Sender<usize>,
}

impl Partition {
    fn new(id: String) -> Self {
        Partition {
            id,
            log: Mutex::new(Vec::new()),
            next_offset: AtomicU64::new(0),
            grown: watch::channel(0).0,
        }
    }

    fn log(&self) -> MutexGuard<'_, Vec<Arc<Event>>> {
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends messages (one send: a single event or a batch) and returns their sequence numbers.
    fn append(&self, messages: Vec<Message<Body<Value>>>) -> Vec<i64> {
        let enqueued_ms = now_ms();
        let mut log = self.log();
        let mut sequences = Vec::with_capacity(messages.len());
        for mut message in messages {
            let sequence = log.len() as i64;
            let size = serde_amqp::to_vec(&fe2o3_amqp::types::messaging::message::__private::Serializable(
                &message,
            ))
            .map(|bytes| bytes.len() as u64)
            .unwrap_or(1)
            .max(1);
            let offset = self.next_offset.fetch_add(size, Ordering::Relaxed) as i64;
            let annotations = message
                .message_annotations
                .get_or_insert_with(|| MessageAnnotations::builder().build());
            annotations.0.insert(key(SEQUENCE_NUMBER), Value::Long(sequence));
            annotations.0.insert(key(OFFSET), Value::String(offset.to_string()));
            annotations.0.insert(
                key(ENQUEUED_TIME),
                Value::Timestamp(Timestamp::from_milliseconds(enqueued_ms)),
            );
            log.push(Arc::new(Event {
                sequence,
                offset,
                enqueued_ms,
                message,
            }));
            sequences.push(sequence);
        }
        let len = log.len();
        drop(log);
        self.grown.send_replace(len);
        sequences
    }

    /// The events from index `from` on (at most `limit`).
    pub fn read(&self, from: usize, limit: usize) -> Vec<Arc<Event>> {
        let log = self.log();
        log.iter().skip(from).take(limit).cloned().collect()
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.log().len()
    }

    /// The first index whose event satisfies `start`, if one is stored yet.
    pub fn first_matching(&self, start: &StartFilter, from: usize) -> Option<usize> {
        let log = self.log();
        (from..log.len()).find(|&index| start.matches(&log[index]))
    }

    /// A receiver that changes whenever the log grows.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.grown.subscribe()
    }

    /// The management READ view: (begin sequence, last sequence, last offset, last enqueued ms, empty).
    pub fn summary(&self) -> (i64, i64, String, i64, bool) {
        let log = self.log();
        match log.last() {
            Some(last) => (0, last.sequence, last.offset.to_string(), last.enqueued_ms, false),
            None => (0, -1, "-1".to_string(), 0, true),
        }
    }
}

/// Where a consumer starts, from the `apache.org:selector-filter:string` filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StartFilter {
    /// Every event (`x-opt-offset > '-1'`, or no filter).
    Earliest,
    /// Only events stored after the receiver attached (`x-opt-offset > '@latest'`).
    Latest,
    /// Events whose offset is greater than (or, inclusive, equal to) the value.
    Offset { value: i64, inclusive: bool },
    /// Events whose sequence number is greater than (or equal to) the value.
    Sequence { value: i64, inclusive: bool },
    /// Events enqueued after (or at) the value, in Unix milliseconds.
    EnqueuedTime { value: i64, inclusive: bool },
}

impl StartFilter {
    /// Parses a selector such as `amqp.annotation.x-opt-sequence-number >= '41'`.
    pub fn parse(expression: &str) -> Result<StartFilter, String> {
        let unsupported = || format!("unsupported selector filter: {expression}");
        let rest = expression
            .trim()
            .strip_prefix("amqp.annotation.")
            .ok_or_else(unsupported)?;
        let (name, rest) = rest.split_once(char::is_whitespace).ok_or_else(unsupported)?;
        let rest = rest.trim_start();
        let (inclusive, rest) = match rest.strip_prefix(">=") {
            Some(rest) => (true, rest),
            None => (false, rest.strip_prefix('>').ok_or_else(unsupported)?),
        };
        let value = rest
            .trim()
            .strip_prefix('\'')
            .and_then(|value| value.strip_suffix('\''))
            .ok_or_else(unsupported)?;
        let number = || value.parse::<i64>().map_err(|_| unsupported());
        match name {
            "x-opt-offset" if value == "@latest" => Ok(StartFilter::Latest),
            "x-opt-offset" if value == "-1" && !inclusive => Ok(StartFilter::Earliest),
            "x-opt-offset" => Ok(StartFilter::Offset {
                value: number()?,
                inclusive,
            }),
            "x-opt-sequence-number" => Ok(StartFilter::Sequence {
                value: number()?,
                inclusive,
            }),
            "x-opt-enqueued-time" => Ok(StartFilter::EnqueuedTime {
                value: number()?,
                inclusive,
            }),
            _ => Err(unsupported()),
        }
    }

    fn matches(&self, event: &Event) -> bool {
        let compare = |actual: i64, value: i64, inclusive: bool| {
            if inclusive { actual >= value } else { actual > value }
        };
        match *self {
            StartFilter::Earliest => true,
            // Resolved to an index when the receiver attaches; nothing stored then matches.
            StartFilter::Latest => false,
            StartFilter::Offset { value, inclusive } => compare(event.offset, value, inclusive),
            StartFilter::Sequence { value, inclusive } => compare(event.sequence, value, inclusive),
            StartFilter::EnqueuedTime { value, inclusive } => compare(event.enqueued_ms, value, inclusive),
        }
    }
}

pub(crate) struct Hub {
    pub name: String,
    pub created_ms: i64,
    pub partitions: Vec<Arc<Partition>>,
    round_robin: AtomicUsize,
}

impl Hub {
    pub fn partition(&self, id: &str) -> Option<&Arc<Partition>> {
        self.partitions.iter().find(|partition| partition.id == id)
    }

    pub fn partition_ids(&self) -> Vec<String> {
        self.partitions.iter().map(|partition| partition.id.clone()).collect()
    }

    /// The partition a partition key maps to (FNV-1a of the key's UTF-8 bytes, modulo the count).
    pub fn partition_for_key(&self, key: &str) -> &Arc<Partition> {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        &self.partitions[(hash % self.partitions.len() as u64) as usize]
    }

    fn next_round_robin(&self) -> &Arc<Partition> {
        let index = self.round_robin.fetch_add(1, Ordering::Relaxed);
        &self.partitions[index % self.partitions.len()]
    }
}

/// A receiver attached to a hub/consumer-group/partition.
struct ActiveReceiver {
    id: u64,
    epoch: Option<i64>,
    stop: Option<oneshot::Sender<Detach>>,
}

/// Why the endpoint detaches a consumer link.
#[derive(Debug)]
pub(crate) enum Detach {
    /// A receiver with a higher or equal owner level took the partition (`amqp:link:stolen`).
    Stolen(String),
    /// The service moved the partition or restarted (`amqp:link:detach-forced`): clients
    /// reattach.
    Forced(String),
}

type ReceiverKey = (String, String, String);

/// Everything the endpoint holds.
pub(crate) struct Store {
    pub hubs: BTreeMap<String, Arc<Hub>>,
    receivers: Mutex<HashMap<ReceiverKey, Vec<ActiveReceiver>>>,
    next_receiver: AtomicU64,
    pub stolen: AtomicUsize,
    pub authorizations: Mutex<Vec<String>>,
    /// A handle on the socket of every connection accepted, to cut them all.
    sockets: Mutex<HashMap<u64, std::net::TcpStream>>,
    next_socket: AtomicU64,
}

/// Keeps a receiver registered; unregisters it when dropped.
pub(crate) struct ReceiverGuard {
    store: Arc<Store>,
    key: ReceiverKey,
    id: u64,
}

impl Drop for ReceiverGuard {
    fn drop(&mut self) {
        let mut receivers = self.store.receivers();
        if let Some(list) = receivers.get_mut(&self.key) {
            list.retain(|receiver| receiver.id != self.id);
            if list.is_empty() {
                receivers.remove(&self.key);
            }
        }
    }
}

impl Store {
    pub fn new(hubs: &[(&str, u32)]) -> Store {
        let created_ms = now_ms();
        let hubs = hubs
            .iter()
            .map(|&(name, partitions)| {
                assert!(partitions > 0, "hub {name} needs at least one partition");
                let hub = Hub {
                    name: name.to_string(),
                    created_ms,
                    partitions: (0..partitions)
                        .map(|id| Arc::new(Partition::new(id.to_string())))
                        .collect(),
                    round_robin: AtomicUsize::new(0),
                };
                (name.to_string(), Arc::new(hub))
            })
            .collect();
        Store {
            hubs,
            receivers: Mutex::new(HashMap::new()),
            next_receiver: AtomicU64::new(0),
            stolen: AtomicUsize::new(0),
            authorizations: Mutex::new(Vec::new()),
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(0),
        }
    }

    pub fn hub(&self, name: &str) -> Option<&Arc<Hub>> {
        self.hubs.get(name)
    }

    fn receivers(&self) -> MutexGuard<'_, HashMap<ReceiverKey, Vec<ActiveReceiver>>> {
        self.receivers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one send to a hub: to `partition` if given, else by the partition key of the first
    /// message, else round-robin. Returns the partition id.
    pub fn append(
        &self,
        hub: &str,
        partition: Option<&str>,
        messages: Vec<Message<Body<Value>>>,
    ) -> Result<String, String> {
        let hub = self.hub(hub).ok_or_else(|| format!("no event hub named {hub}"))?;
        let target = match partition {
            Some(id) => hub
                .partition(id)
                .ok_or_else(|| format!("no partition {id} in {}", hub.name))?,
            None => match messages.first().and_then(partition_key) {
                Some(key) => hub.partition_for_key(&key),
                None => hub.next_round_robin(),
            },
        };
        target.append(messages);
        Ok(target.id.clone())
    }

    /// Registers a receiver, applying owner levels: a receiver with an epoch displaces (returns the
    /// stop signal of) every receiver with a lower or equal epoch or none; it is refused if one with
    /// a higher epoch exists. A receiver without an epoch is refused while one with an epoch exists.
    pub fn register_receiver(
        self: &Arc<Self>,
        hub: &str,
        consumer_group: &str,
        partition: &str,
        epoch: Option<i64>,
    ) -> Result<(ReceiverGuard, oneshot::Receiver<Detach>), String> {
        let key = (hub.to_string(), consumer_group.to_string(), partition.to_string());
        let mut receivers = self.receivers();
        let list = receivers.entry(key.clone()).or_default();
        match epoch {
            Some(epoch) => {
                if let Some(higher) = list
                    .iter()
                    .filter_map(|receiver| receiver.epoch)
                    .find(|&other| other > epoch)
                {
                    return Err(format!(
                        "a receiver with a higher epoch of {higher} already exists; a receiver with epoch {epoch} cannot be created"
                    ));
                }
                for receiver in list.iter_mut() {
                    if let Some(stop) = receiver.stop.take() {
                        let _ = stop.send(Detach::Stolen(format!(
                            "a new receiver with epoch {epoch} was opened on this partition and consumer group"
                        )));
                        self.stolen.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            None => {
                if let Some(other) = list.iter().filter_map(|receiver| receiver.epoch).next() {
                    return Err(format!(
                        "a receiver with epoch {other} exists; a receiver without an epoch cannot be created"
                    ));
                }
            }
        }
        let id = self.next_receiver.fetch_add(1, Ordering::Relaxed);
        let (stop, stopped) = oneshot::channel();
        list.push(ActiveReceiver {
            id,
            epoch,
            stop: Some(stop),
        });
        Ok((
            ReceiverGuard {
                store: self.clone(),
                key,
                id,
            },
            stopped,
        ))
    }

    /// Detaches every receiver of a hub with `amqp:link:detach-forced`; returns how many.
    pub fn force_detach(&self, hub: &str) -> usize {
        let mut receivers = self.receivers();
        let mut detached = 0;
        for ((h, _, _), list) in receivers.iter_mut() {
            if h != hub {
                continue;
            }
            for receiver in list.iter_mut() {
                if let Some(stop) = receiver.stop.take() {
                    let _ = stop.send(Detach::Forced("the partition moved to another node".into()));
                    detached += 1;
                }
            }
        }
        detached
    }

    /// Shuts down the socket of every open connection, as a network failure or a service node
    /// restart does; returns how many were open.
    pub fn cut_connections(&self) -> usize {
        let sockets = std::mem::take(&mut *self.sockets());
        sockets
            .values()
            .filter(|socket| socket.shutdown(std::net::Shutdown::Both).is_ok())
            .count()
    }

    /// Keeps a handle on a connection's socket until [`Store::remove_socket`].
    pub fn add_socket(&self, socket: std::net::TcpStream) -> u64 {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        self.sockets().insert(id, socket);
        id
    }

    /// Lets go of a closed connection's socket.
    pub fn remove_socket(&self, id: u64) {
        self.sockets().remove(&id);
    }

    fn sockets(&self) -> MutexGuard<'_, HashMap<u64, std::net::TcpStream>> {
        self.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many receivers are attached per partition of a hub/consumer group.
    pub fn receiver_counts(&self, hub: &str, consumer_group: &str) -> BTreeMap<String, usize> {
        self.receivers()
            .iter()
            .filter(|((h, cg, _), _)| h == hub && cg == consumer_group)
            .map(|((_, _, partition), list)| (partition.clone(), list.iter().filter(|r| r.stop.is_some()).count()))
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

/// The `x-opt-partition-key` annotation of a message.
pub(crate) fn partition_key(message: &Message<Body<Value>>) -> Option<String> {
    match message.message_annotations.as_ref()?.0.get(&key(PARTITION_KEY))? {
        Value::String(key) => Some(key.clone()),
        _ => None,
    }
}

pub(crate) fn key(name: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(name))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// Builds the test view of a stored event.
pub(crate) fn stored_message(hub: &str, partition: &str, event: &Event) -> StoredMessage {
    let message = event.message.clone();
    let body = match &message.body {
        Body::Data(batch) => batch.iter().flat_map(|data| data.0.iter().copied()).collect(),
        Body::Value(value) => match &value.0 {
            Value::Binary(bytes) => bytes.to_vec(),
            Value::String(text) => text.as_bytes().to_vec(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let properties = message
        .application_properties
        .as_ref()
        .map(|properties| properties.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let annotations = message
        .message_annotations
        .as_ref()
        .map(|annotations| {
            annotations
                .0
                .iter()
                .filter_map(|(k, v)| match k {
                    OwnedKey::Symbol(symbol) => Some((symbol.0.clone(), v.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    StoredMessage {
        hub: hub.to_string(),
        partition: partition.to_string(),
        sequence: event.sequence,
        offset: event.offset.to_string(),
        enqueued_time: UNIX_EPOCH + Duration::from_millis(event.enqueued_ms as u64),
        partition_key: partition_key(&message),
        body,
        properties,
        annotations,
        message,
    }
}
