//! The AMQP side of the endpoint: accepts connections, sessions and links with `fe2o3-amqp`'s
//! acceptors and serves `$cbs`, `$management`, producer and consumer links from the [`Store`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SaslAnonymousMechanism, SessionAcceptor,
};
use fe2o3_amqp::types::definitions::{self, AmqpError, LinkError, Role};
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageAnnotations, Properties, TargetArchetype,
};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Array, OrderedMap, SimpleValue, Symbol, Timestamp, Value};
use fe2o3_amqp::{Delivery, Receiver, Sendable, Sender};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::store::{self, Detach, Partition, ReceiverGuard, StartFilter, Store};

/// The message format of a batch: one Data section per encoded event.
const BATCH_FORMAT: u32 = 0x8001_3700;
/// The largest message (and so batch) a producer may send; advertised on every link attach.
pub(crate) const MAX_MESSAGE_SIZE: u64 = 1024 * 1024;
/// How long the endpoint waits before settling a client's transfer. Settling at once makes the
/// fe2o3 0.14 client sometimes miss the outcome and hang (azure-sdk.md §8.3): the client registers
/// its outcome waiter only after writing the transfer. 1 ms was not enough on a loaded two-core
/// machine (a test producer hung once in a full run); 20 ms leaves room for a descheduled client.
const SETTLE_DELAY: Duration = Duration::from_millis(20);
/// How long a link or connection close may wait for the client's answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Session flow-control windows.
const SESSION_WINDOW: u32 = 65_536;
/// How many stored events a consumer link copies per read.
const READ_CHUNK: usize = 64;
/// Selector filter name the SDK uses for start positions.
const SELECTOR_FILTER: &str = "apache.org:selector-filter:string";
/// Link property carrying a receiver's owner level.
const EPOCH_PROPERTY: &str = "com.microsoft:epoch";

/// What every task needs: the state and the shutdown signal.
#[derive(Clone)]
pub(crate) struct Context {
    pub store: Arc<Store>,
    pub shutdown: CancellationToken,
}

impl Context {
    /// Spawns a task that stops when the endpoint shuts down.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = task => {}
            }
        });
    }
}

/// Accepts connections until the endpoint shuts down.
pub(crate) async fn serve(listener: TcpListener, context: Context) {
    let acceptor = Arc::new(
        ConnectionAcceptor::builder()
            .container_id("iomt-test-eventhubs")
            .sasl_acceptor(SaslAnonymousMechanism::new())
            .build(),
    );
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Keep a second handle on the socket so that the connection can be cut.
                let socket = stream.into_std().and_then(|socket| Ok((socket.try_clone()?, socket)));
                let Ok((handle, socket)) = socket else { continue };
                let Ok(stream) = TcpStream::from_std(socket) else {
                    continue;
                };
                let id = context.store.add_socket(handle);
                let (acceptor, context) = (acceptor.clone(), context.clone());
                context.clone().spawn(async move {
                    serve_connection(acceptor, stream, context.clone()).await;
                    context.store.remove_socket(id);
                })
            }
            Err(error) => {
                tracing::debug!(%error, "test Event Hubs endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(
    acceptor: Arc<ConnectionAcceptor<(), SaslAnonymousMechanism>>,
    stream: TcpStream,
    context: Context,
) {
    let mut connection = match acceptor.accept(stream).await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "test Event Hubs endpoint: connection not opened");
            return;
        }
    };
    let sessions = SessionAcceptor::builder()
        .incoming_window(SESSION_WINDOW)
        .outgoing_window(SESSION_WINDOW)
        .build();
    // Ends when the client closes the connection (or it drops).
    while let Some(incoming) = connection.next_incoming_session().await {
        match sessions.accept_incoming_session(incoming, &mut connection).await {
            Ok(session) => context.spawn(serve_session(session, context.clone())),
            Err(error) => tracing::debug!(%error, "test Event Hubs endpoint: session not begun"),
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close()).await;
}

/// Where reply links of one session deliver: reply address → the link's queue.
type Replies = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message<Body<Value>>>>>>;

/// The request/response nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Cbs,
    Management,
}

/// What an incoming attach asks for.
#[derive(Debug)]
enum Route {
    /// The client sends requests to `$cbs` or `$management`.
    Requests(Node),
    /// The client receives replies from a node at this address.
    Replies(String),
    /// The client sends events to a hub or one of its partitions.
    Producer { hub: String, partition: Option<String> },
    /// The client receives events from a partition.
    Consumer {
        hub: String,
        consumer_group: String,
        partition: String,
        filter: Option<String>,
        epoch: Option<i64>,
    },
    /// Anything else.
    Unknown(String),
}

impl Route {
    fn of(attach: &Attach) -> Route {
        match attach.role {
            // The client is the sender: look at the target.
            Role::Sender => {
                let address = attach.target.as_deref().and_then(target_address).unwrap_or_default();
                let path = entity_path(&address);
                match path.as_slice() {
                    [.., "$cbs"] => Route::Requests(Node::Cbs),
                    [.., "$management"] => Route::Requests(Node::Management),
                    [hub] => Route::Producer {
                        hub: hub.to_string(),
                        partition: None,
                    },
                    [hub, partitions, id] if partitions.eq_ignore_ascii_case("Partitions") => Route::Producer {
                        hub: hub.to_string(),
                        partition: Some(id.to_string()),
                    },
                    _ => Route::Unknown(address),
                }
            }
            // The client is the receiver: look at the source.
            Role::Receiver => {
                let source = attach.source.as_deref();
                let address = source.and_then(|source| source.address.clone()).unwrap_or_default();
                let path = entity_path(&address);
                match path.as_slice() {
                    [.., "$cbs"] | [.., "$management"] => {
                        Route::Replies(attach.target.as_deref().and_then(target_address).unwrap_or_default())
                    }
                    [hub, groups, consumer_group, partitions, id]
                        if groups.eq_ignore_ascii_case("ConsumerGroups")
                            && partitions.eq_ignore_ascii_case("Partitions") =>
                    {
                        Route::Consumer {
                            hub: hub.to_string(),
                            consumer_group: consumer_group.to_string(),
                            partition: id.to_string(),
                            filter: source.and_then(selector),
                            epoch: epoch(attach),
                        }
                    }
                    _ => Route::Unknown(address),
                }
            }
        }
    }
}

fn target_address(target: &TargetArchetype) -> Option<String> {
    #[allow(irrefutable_let_patterns)] // Coordinator exists only with fe2o3's `transaction` feature.
    if let TargetArchetype::Target(target) = target {
        target.address.clone()
    } else {
        None
    }
}

/// The path segments of an address: `amqps://ns/hub/Partitions/0` → `[hub, Partitions, 0]`;
/// a bare node name (`$cbs`) is one segment.
fn entity_path(address: &str) -> Vec<&str> {
    match address.split_once("://") {
        Some((_, rest)) => rest.split('/').skip(1).filter(|segment| !segment.is_empty()).collect(),
        None => address.split('/').filter(|segment| !segment.is_empty()).collect(),
    }
}

/// The selector-filter expression of a consumer link's source.
fn selector(source: &fe2o3_amqp::types::messaging::Source) -> Option<String> {
    let filter = source.filter.as_ref()?;
    let value = filter.get(&Symbol::from(SELECTOR_FILTER))?;
    match value {
        Value::Described(described) => match &described.value {
            Value::String(expression) => Some(expression.clone()),
            _ => None,
        },
        Value::String(expression) => Some(expression.clone()),
        _ => None,
    }
}

/// The `com.microsoft:epoch` link property.
fn epoch(attach: &Attach) -> Option<i64> {
    match attach.properties.as_ref()?.get(&Symbol::from(EPOCH_PROPERTY))? {
        Value::Long(epoch) => Some(*epoch),
        Value::Int(epoch) => Some(i64::from(*epoch)),
        _ => None,
    }
}

fn amqp_error(condition: impl Into<definitions::ErrorCondition>, description: impl Into<String>) -> definitions::Error {
    definitions::Error::new(condition, Some(description.into()), None)
}

async fn serve_session(mut session: ListenerSessionHandle, context: Context) {
    let links = LinkAcceptor::builder().max_message_size(MAX_MESSAGE_SIZE).build();
    let replies: Replies = Arc::default();
    // Ends when the client ends the session (or the connection goes).
    while let Some(attach) = session.next_incoming_attach().await {
        let route = Route::of(&attach);
        tracing::debug!(?route, link = %attach.name, properties = ?attach.properties, "test Event Hubs endpoint: attach");
        // Decide before accepting, so a consumer's owner level applies at once and a reply
        // route exists before the client can send a request.
        let plan = plan(&route, &context.store, &replies);
        let link = match links.accept_incoming_attach(attach, &mut session).await {
            Ok(link) => link,
            Err(error) => {
                tracing::debug!(%error, "test Event Hubs endpoint: link not attached");
                continue;
            }
        };
        match (plan, link) {
            (Plan::Requests(node), LinkEndpoint::Receiver(receiver)) => {
                context.spawn(serve_requests(receiver, node, replies.clone(), context.store.clone()))
            }
            (Plan::Replies(queue), LinkEndpoint::Sender(sender)) => context.spawn(serve_replies(sender, queue)),
            (Plan::Producer { hub, partition }, LinkEndpoint::Receiver(receiver)) => {
                context.spawn(serve_producer(receiver, hub, partition, context.store.clone()))
            }
            (Plan::Consumer(consumer), LinkEndpoint::Sender(sender)) => {
                context.spawn(serve_consumer(sender, *consumer))
            }
            (Plan::Refuse(error), link) => context.spawn(refuse(link, error)),
            (_, link) => context.spawn(refuse(
                link,
                amqp_error(AmqpError::NotAllowed, "unexpected link role for this address"),
            )),
        }
    }
}

/// What to do with an attached link.
enum Plan {
    Requests(Node),
    Replies(mpsc::UnboundedReceiver<Message<Body<Value>>>),
    Producer { hub: String, partition: Option<String> },
    Consumer(Box<Consumer>),
    Refuse(definitions::Error),
}

struct Consumer {
    partition: Arc<Partition>,
    filter: StartFilter,
    /// The first index to deliver, when known at attach (Latest).
    next: Option<usize>,
    guard: ReceiverGuard,
    stopped: oneshot::Receiver<Detach>,
}

fn plan(route: &Route, store: &Arc<Store>, replies: &Replies) -> Plan {
    match route {
        Route::Requests(node) => Plan::Requests(*node),
        Route::Replies(address) => {
            let (queue, link) = mpsc::unbounded_channel();
            replies
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(address.clone(), queue);
            Plan::Replies(link)
        }
        Route::Producer { hub, partition } => {
            let Some(found) = store.hub(hub) else {
                return Plan::Refuse(amqp_error(AmqpError::NotFound, format!("no event hub named {hub}")));
            };
            if let Some(id) = partition
                && found.partition(id).is_none()
            {
                return Plan::Refuse(amqp_error(AmqpError::NotFound, format!("no partition {id} in {hub}")));
            }
            Plan::Producer {
                hub: hub.clone(),
                partition: partition.clone(),
            }
        }
        Route::Consumer {
            hub,
            consumer_group,
            partition,
            filter,
            epoch,
        } => {
            let Some(found) = store.hub(hub).and_then(|found| found.partition(partition)) else {
                return Plan::Refuse(amqp_error(
                    AmqpError::NotFound,
                    format!("no partition {partition} in an event hub named {hub}"),
                ));
            };
            let filter = match filter.as_deref().map(StartFilter::parse).transpose() {
                Ok(filter) => filter.unwrap_or(StartFilter::Earliest),
                Err(description) => return Plan::Refuse(amqp_error(AmqpError::NotImplemented, description)),
            };
            let next = (filter == StartFilter::Latest).then(|| found.len());
            match store.register_receiver(hub, consumer_group, partition, *epoch) {
                Ok((guard, stopped)) => Plan::Consumer(Box::new(Consumer {
                    partition: found.clone(),
                    filter,
                    next,
                    guard,
                    stopped,
                })),
                Err(description) => Plan::Refuse(amqp_error(LinkError::Stolen, description)),
            }
        }
        Route::Unknown(address) => Plan::Refuse(amqp_error(AmqpError::NotFound, format!("unknown address {address}"))),
    }
}

/// Detaches a link just attached, with an error.
async fn refuse(link: LinkEndpoint, error: definitions::Error) {
    match link {
        LinkEndpoint::Sender(sender) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sender.close_with_error(error)).await;
        }
        LinkEndpoint::Receiver(receiver) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close_with_error(error)).await;
        }
    }
}

/// Serves `$cbs` or `$management` requests, answering strictly in order.
async fn serve_requests(mut receiver: Receiver, node: Node, replies: Replies, store: Arc<Store>) {
    loop {
        let delivery: Delivery<Body<Value>> = match receiver.recv().await {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::debug!(%error, ?node, "test Event Hubs endpoint: request link ended");
                return;
            }
        };
        tokio::time::sleep(SETTLE_DELAY).await;
        if receiver.accept(&delivery).await.is_err() {
            return;
        }
        let request = delivery.into_message();
        let reply = match node {
            Node::Cbs => cbs_reply(&store, &request),
            Node::Management => management_reply(&store, &request),
        };
        let reply_to = request
            .properties
            .as_ref()
            .and_then(|properties| properties.reply_to.clone());
        let queue = reply_to.as_ref().and_then(|address| {
            replies
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(address)
                .cloned()
        });
        match queue {
            Some(queue) => {
                let _ = queue.send(reply);
            }
            None => tracing::debug!(?reply_to, "test Event Hubs endpoint: no reply link"),
        }
    }
}

/// Sends replies queued for one reply address.
async fn serve_replies(mut sender: Sender, mut queue: mpsc::UnboundedReceiver<Message<Body<Value>>>) {
    loop {
        let reply = tokio::select! {
            reply = queue.recv() => match reply {
                Some(reply) => reply,
                None => return,
            },
            _ = sender.on_detach() => return,
        };
        if sender
            .send(Sendable::builder().message(reply).settled(true).build())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn application_property<'a>(message: &'a Message<Body<Value>>, name: &str) -> Option<&'a SimpleValue> {
    message.application_properties.as_ref()?.0.get(name)
}

fn string_property(message: &Message<Body<Value>>, name: &str) -> Option<String> {
    match application_property(message, name)? {
        SimpleValue::String(value) => Some(value.clone()),
        SimpleValue::Symbol(value) => Some(value.0.clone()),
        _ => None,
    }
}

/// A reply to `request` with a status code and an AMQP-value body.
fn reply(request: &Message<Body<Value>>, status: i32, description: &str, body: Value) -> Message<Body<Value>> {
    let correlation_id = request
        .properties
        .as_ref()
        .and_then(|properties| properties.message_id.clone());
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            correlation_id,
            ..Properties::default()
        }),
        application_properties: Some(
            ApplicationProperties::builder()
                .insert("status-code", SimpleValue::Int(status))
                .insert("status-description", SimpleValue::String(description.to_string()))
                .build(),
        ),
        body: Body::Value(AmqpValue(body)),
        footer: None,
    }
}

/// `$cbs` put-token: every token is accepted (202); the audience is recorded.
fn cbs_reply(store: &Store, request: &Message<Body<Value>>) -> Message<Body<Value>> {
    if string_property(request, "operation").as_deref() != Some("put-token") {
        return reply(request, 501, "only put-token is implemented", Value::Null);
    }
    let audience = string_property(request, "name").unwrap_or_default();
    store
        .authorizations
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(audience);
    reply(request, 202, "Accepted", Value::Null)
}

/// `$management` READ of `com.microsoft:eventhub` and `com.microsoft:partition`.
fn management_reply(store: &Store, request: &Message<Body<Value>>) -> Message<Body<Value>> {
    if string_property(request, "operation").as_deref() != Some("READ") {
        return reply(request, 501, "only READ is implemented", Value::Null);
    }
    let name = string_property(request, "name").unwrap_or_default();
    let Some(hub) = store.hub(&name) else {
        return reply(request, 404, &format!("no event hub named {name}"), Value::Null);
    };
    let entry = |key: &str, value: Value| (Value::String(key.to_string()), value);
    match string_property(request, "type").as_deref() {
        Some("com.microsoft:eventhub") => {
            let ids = hub.partition_ids();
            let map: OrderedMap<Value, Value> = [
                entry("name", Value::String(hub.name.clone())),
                entry(
                    "created_at",
                    Value::Timestamp(Timestamp::from_milliseconds(hub.created_ms)),
                ),
                entry("partition_count", Value::Int(ids.len() as i32)),
                entry(
                    "partition_ids",
                    Value::Array(Array::from(ids.into_iter().map(Value::String).collect::<Vec<_>>())),
                ),
            ]
            .into_iter()
            .collect();
            reply(request, 200, "OK", Value::Map(map))
        }
        Some("com.microsoft:partition") => {
            let id = string_property(request, "partition").unwrap_or_default();
            let Some(partition) = hub.partition(&id) else {
                return reply(request, 404, &format!("no partition {id} in {name}"), Value::Null);
            };
            let (begin, last, last_offset, last_ms, empty) = partition.summary();
            let map: OrderedMap<Value, Value> = [
                entry("name", Value::String(hub.name.clone())),
                entry("type", Value::String("com.microsoft:partition".to_string())),
                entry("partition", Value::String(id)),
                entry("begin_sequence_number", Value::Long(begin)),
                entry("last_enqueued_sequence_number", Value::Long(last)),
                entry("last_enqueued_sequence_number_epoch", Value::Long(0)),
                entry("last_enqueued_offset", Value::String(last_offset)),
                entry(
                    "last_enqueued_time_utc",
                    Value::Timestamp(Timestamp::from_milliseconds(last_ms)),
                ),
                entry("is_partition_empty", Value::Bool(empty)),
            ]
            .into_iter()
            .collect();
            reply(request, 200, "OK", Value::Map(map))
        }
        other => reply(request, 400, &format!("unsupported entity type {other:?}"), Value::Null),
    }
}

/// Stores what a producer link sends; settles each transfer after [`SETTLE_DELAY`].
async fn serve_producer(mut receiver: Receiver, hub: String, partition: Option<String>, store: Arc<Store>) {
    loop {
        let delivery: Delivery<Body<Value>> = match receiver.recv().await {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::debug!(%error, %hub, "test Event Hubs endpoint: producer link ended");
                return;
            }
        };
        let stored = unpack(&delivery).and_then(|messages| store.append(&hub, partition.as_deref(), messages));
        tokio::time::sleep(SETTLE_DELAY).await;
        let settled = match stored {
            Ok(_) => receiver.accept(&delivery).await,
            Err(description) => {
                receiver
                    .reject(&delivery, amqp_error(AmqpError::DecodeError, description))
                    .await
            }
        };
        if settled.is_err() {
            return;
        }
    }
}

/// The events in one transfer: the message itself, or the messages of a batch.
fn unpack(delivery: &Delivery<Body<Value>>) -> Result<Vec<Message<Body<Value>>>, String> {
    let message = delivery.message();
    if *delivery.message_format() != Some(BATCH_FORMAT) {
        return Ok(vec![message.clone()]);
    }
    let Body::Data(sections) = &message.body else {
        return Err("a batch must carry one Data section per event".to_string());
    };
    let envelope_key = store::partition_key(message);
    sections
        .iter()
        .map(|section| {
            let mut event = serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(&section.0)
                .map_err(|error| format!("a batch item is not an AMQP message: {error}"))?
                .0;
            if let Some(key) = &envelope_key
                && store::partition_key(&event).is_none()
            {
                event
                    .message_annotations
                    .get_or_insert_with(|| MessageAnnotations::builder().build())
                    .0
                    .insert(store::key(store::PARTITION_KEY), Value::String(key.clone()));
            }
            Ok(event)
        })
        .collect()
}

/// Delivers a partition's events, pre-settled, from the start position on, then new ones as they
/// arrive; detaches with `amqp:link:stolen` when a receiver with a higher or equal epoch attaches.
async fn serve_consumer(mut sender: Sender, consumer: Consumer) {
    let Consumer {
        partition,
        filter,
        mut next,
        guard,
        mut stopped,
    } = consumer;
    let _registered = guard;
    let mut grown = partition.subscribe();
    let mut scanned = 0;
    loop {
        if next.is_none() {
            next = partition.first_matching(&filter, scanned);
            scanned = partition.len();
        }
        if let Some(index) = next {
            let events = partition.read(index, READ_CHUNK);
            if !events.is_empty() {
                for event in events {
                    let sendable = Sendable::builder().message(event.message.clone()).settled(true).build();
                    tokio::select! {
                        biased;
                        reason = &mut stopped => return steal(sender, reason).await,
                        sent = sender.send(sendable) => if sent.is_err() {
                            return;
                        },
                    }
                    next = Some(next.unwrap_or(index) + 1);
                }
                continue;
            }
        }
        tokio::select! {
            reason = &mut stopped => return steal(sender, reason).await,
            changed = grown.changed() => if changed.is_err() {
                return;
            },
            _ = sender.on_detach() => return,
        }
    }
}

/// Detaches a consumer link displaced by a higher or equal owner level, or forced off.
async fn steal(sender: Sender, reason: Result<Detach, oneshot::error::RecvError>) {
    let error = match reason {
        Ok(Detach::Stolen(reason)) => amqp_error(LinkError::Stolen, reason),
        Ok(Detach::Forced(reason)) => amqp_error(LinkError::DetachForced, reason),
        Err(_) => return,
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sender.close_with_error(error)).await;
}
