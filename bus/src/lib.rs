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
