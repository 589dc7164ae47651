//! The bus between natter's roles: one [`Bus`] trait (publish, wildcard subscribe, queue
//! groups, request/reply) and its implementations. `natter serve` uses [`InProcessBus`];
//! a cluster uses [`NatsBus`]. Payloads are opaque bytes (encoded `natter_proto::bus` types).

mod in_process;
mod nats;
pub mod queue;
mod serve;

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::{Stream, future::BoxFuture};
use natter_proto::Subject;

pub use in_process::InProcessBus;
pub use nats::{NatsBus, NatsConfig};
pub use serve::serve_requests;

/// How long a request waits for its reply unless the caller says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong on the bus.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("no subscriber for {0}")]
    NoResponders(String),
    #[error("the bus is closed")]
    Closed,
    #[error("bus transport: {0}")]
    Transport(String),
}

/// One message taken off the bus.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub subject: Subject,
    pub payload: Bytes,
    /// Where a reply goes, for requests.
    pub reply: Option<Subject>,
}

/// What a subscription yields.
#[derive(Debug)]
pub enum BusEvent {
    Message(BusMessage),
    /// The subscriber fell behind and messages were dropped for it. The bus never
    /// buffers without limit; a subscriber that sees this must recover from the store
    /// (an edge closes the connection so the device resyncs).
    Lagged,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = BusEvent> + Send>>,
}

impl Subscription {
    pub fn new(stream: impl Stream<Item = BusEvent> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl Stream for Subscription {
    type Item = BusEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusEvent>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

/// A message taken from a durable consumer ([`Bus::consume_durable`]): handle it, then
/// [`ack`](DurableMessage::ack) it; one never acked (the consumer died, or
/// [`retry_later`](DurableMessage::retry_later)) is delivered again.
pub struct DurableMessage {
    pub payload: Bytes,
    /// How many times it has been delivered (1 the first time).
    pub deliveries: u64,
    acker: Acker,
}

enum Acker {
    /// In process: nothing outlives the process, nothing to ack.
    None,
    Nats(Box<async_nats::jetstream::Message>),
}

impl DurableMessage {
    pub(crate) fn in_process(payload: Bytes) -> DurableMessage {
        DurableMessage {
            payload,
            deliveries: 1,
            acker: Acker::None,
        }
    }

    pub(crate) fn nats(message: async_nats::jetstream::Message, deliveries: u64) -> DurableMessage {
        DurableMessage {
            payload: message.payload.clone(),
            deliveries,
            acker: Acker::Nats(Box::new(message)),
        }
    }

    /// Done with it: it is not delivered again.
    pub async fn ack(self) -> Result<(), BusError> {
        match self.acker {
            Acker::None => Ok(()),
            Acker::Nats(m) => m
                .ack()
                .await
                .map_err(|e| BusError::Transport(e.to_string())),
        }
    }

    /// Not done: deliver it again after `delay` (in process: dropped, since nothing
    /// would redeliver it).
    pub async fn retry_later(self, delay: Duration) -> Result<(), BusError> {
        match self.acker {
            Acker::None => Ok(()),
            Acker::Nats(m) => m
                .ack_with(async_nats::jetstream::AckKind::Nak(Some(delay)))
                .await
                .map_err(|e| BusError::Transport(e.to_string())),
        }
    }
}

impl std::fmt::Debug for DurableMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableMessage")
            .field("bytes", &self.payload.len())
            .field("deliveries", &self.deliveries)
            .finish_non_exhaustive()
    }
}

/// What [`Bus::consume_durable`] yields.
pub type DurableStream = Pin<Box<dyn Stream<Item = DurableMessage> + Send>>;

/// A reply still on its way. The request itself has already been published, so
/// requests started one after another reach their subscriber in that order.
pub type PendingReply = BoxFuture<'static, Result<Bytes, BusError>>;

/// The message bus.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Fire and forget. Delivery is best effort: the store is the truth, the bus the
    /// fast path.
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError>;

    /// Every message whose subject matches `pattern`, with a per-subscription buffer
    /// of `capacity` messages (past that the subscriber sees [`BusEvent::Lagged`]).
    async fn subscribe(&self, pattern: &Subject, capacity: usize)
    -> Result<Subscription, BusError>;

    /// Like `subscribe`, but each message goes to one member of the queue group `group`.
    async fn queue_subscribe(
        &self,
        pattern: &Subject,
        group: &str,
        capacity: usize,
    ) -> Result<Subscription, BusError>;

    /// Publishes a request now and returns the future of its reply.
    async fn start_request(
        &self,
        subject: &Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<PendingReply, BusError>;

    /// Publishes `payload` so that it is kept until a durable consumer of `subject` acks
    /// it (on NATS: a JetStream stream, the publish acknowledged by the server; `id`
    /// dedupes a retried publish). In process: a plain publish.
    async fn publish_durable(
        &self,
        subject: &Subject,
        payload: Bytes,
        id: &str,
    ) -> Result<(), BusError> {
        let _ = id;
        self.publish(subject, payload).await
    }

    /// Consumes what was published durably on `subject` as `consumer`: every instance
    /// with the same `consumer` shares the messages, each delivered until acked. In
    /// process: a queue subscription (nothing survives the process).
    async fn consume_durable(
        &self,
        subject: &Subject,
        consumer: &str,
        capacity: usize,
    ) -> Result<DurableStream, BusError> {
        use futures::StreamExt as _;
        let sub = self.queue_subscribe(subject, consumer, capacity).await?;
        Ok(Box::pin(sub.filter_map(|event| async move {
            match event {
                BusEvent::Message(m) => Some(DurableMessage::in_process(m.payload)),
                BusEvent::Lagged => {
                    tracing::warn!("a durable consumer lagged in process: messages were dropped");
                    None
                }
            }
        })))
    }

    /// Publishes a request and waits for its reply.
    async fn request(
        &self,
        subject: &Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        self.start_request(subject, payload, timeout).await?.await
    }
}

/// Replies to a request taken off the bus (no-op for messages that were not requests).
pub async fn reply(bus: &dyn Bus, msg: &BusMessage, payload: Bytes) -> Result<(), BusError> {
    match &msg.reply {
        Some(to) => bus.publish(to, payload).await,
        None => Ok(()),
    }
}
