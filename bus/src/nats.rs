//! The NATS bus (async-nats) used by a cluster: the same subjects and semantics as the
//! in-process bus, across processes.
//!
//! - **Reconnects by itself.** The client retries the first connection and every later
//!   one without limit; subscriptions are re-established by async-nats. What was
//!   published while the connection was down is lost (core NATS is at-most-once), so
//!   after a reconnect every live subscription yields [`BusEvent::Lagged`] once: an edge
//!   then closes its connections so devices resync from their cursors, exactly as when a
//!   subscriber falls behind. The store is the truth; the bus is the fast path.
//! - **Requests in order.** Replies come back on one wildcard inbox subscription per
//!   client and are matched by token, so [`Bus::start_request`] publishes before it
//!   returns: requests started one after another reach the subscriber in that order
//!   (a plain `async_nats::Client::request` would publish only when first polled).
//! - **No responders** is reported by the server (status 503) and surfaces at once as
//!   [`BusError::NoResponders`] instead of a time-out.
//! - **Bounded buffers.** Each subscription holds at most
//!   [`NatsConfig::subscription_capacity`] messages; past that async-nats drops them and
//!   reports a slow consumer (logged here). A device that misses a push this way sees a
//!   seq gap and syncs it.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use async_nats::{Client, ConnectOptions, Event, StatusCode};
use bytes::Bytes;
use futures::{FutureExt as _, Stream, StreamExt as _};
use natter_proto::Subject;
use tokio::sync::{oneshot, watch};

use crate::{Bus, BusError, BusEvent, BusMessage, PendingReply, Subscription};

/// How long `subscribe` waits for the server to confirm the subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a publish may wait for room in the outgoing buffer.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// How to connect to NATS.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// One or more server URLs, comma separated (`nats://host:4222,nats://other:4222`).
    pub url: String,
    /// Client name shown by the server's monitoring (e.g. `natter-edge-1`).
    pub name: String,
    /// Messages buffered per subscription before async-nats drops (slow consumer).
    pub subscription_capacity: usize,
    /// Time allowed for each connection attempt.
    pub connect_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            name: "natter".to_owned(),
            subscription_capacity: 4096,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// How long to wait before reconnect attempt `attempts`: 0, then 100, 200 ... ms capped
/// at 2 s (quick after a restart, gentle after), each drawn from half to all of that, so
/// that every process of a cluster does not knock on a restarted server in step.
fn reconnect_delay(attempts: usize) -> Duration {
    let full = (attempts as u64).saturating_mul(100).min(2_000);
    Duration::from_millis(full / 2 + rand::random_range(0..=full / 2))
}

/// A bus over one NATS connection. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Prefix of this client's reply subjects; replies arrive on `<prefix>.<token>`.
    inbox_prefix: String,
    next_token: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, BusError>>>>,
    /// Bumped on every reconnect: subscriptions report [`BusEvent::Lagged`].
    reconnects: watch::Receiver<u64>,
}

impl NatsBus {
    /// Connects (retrying in the background until NATS is up: the returned bus buffers
    /// publishes meanwhile) and starts the reply router.
    pub async fn connect(config: NatsConfig) -> Result<NatsBus, BusError> {
        let (reconnects_tx, reconnects) = watch::channel(0u64);
        let reconnects_tx = Arc::new(reconnects_tx);
        let was_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let name = config.name.clone();
        let options = ConnectOptions::new()
            .name(&config.name)
            .subscription_capacity(config.subscription_capacity.max(1))
            .connection_timeout(config.connect_timeout)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let reconnects_tx = reconnects_tx.clone();
                let was_down = was_down.clone();
                let name = name.clone();
                async move {
                    match event {
                        Event::Disconnected => {
                            was_down.store(true, Ordering::Release);
                            tracing::warn!(bus.client = %name, "NATS connection lost; reconnecting");
                        }
                        Event::Connected => {
                            if was_down.swap(false, Ordering::AcqRel) {
                                tracing::info!(bus.client = %name, "NATS reconnected");
                                reconnects_tx.send_modify(|n| *n += 1);
                            }
                        }
                        Event::SlowConsumer(sid) => {
                            tracing::warn!(bus.client = %name, bus.sid = sid, "NATS subscription fell behind: messages dropped");
                        }
                        other => tracing::info!(bus.client = %name, event = %other, "NATS event"),
                    }
                }
            });
        let client = options
            .connect(config.url.as_str())
            .await
            .map_err(|e| BusError::Transport(format!("connecting to {}: {e}", config.url)))?;
        let inbox_prefix = client.new_inbox();
        let replies = client
            .subscribe(format!("{inbox_prefix}.*"))
            .await
            .map_err(|e| BusError::Transport(format!("subscribing the reply inbox: {e}")))?;
        let inner = Arc::new(Inner {
            client,
            inbox_prefix,
            next_token: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            reconnects,
        });
        tokio::spawn(route_replies(Arc::downgrade(&inner), replies));
        Ok(NatsBus { inner })
    }

    /// True while the connection to NATS is up.
    pub fn is_connected(&self) -> bool {
        matches!(
            self.inner.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// Sends everything buffered to the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| BusError::Transport(e.to_string()))
    }

    /// A fresh reply token, registered: its reply arrives on the receiver until the
    /// returned [`Waiter`] is dropped.
    fn wait_for_reply(&self) -> (u64, oneshot::Receiver<Result<Bytes, BusError>>, Waiter) {
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, tx);
        let waiter = Waiter {
            inner: self.inner.clone(),
            token,
        };
        (token, rx, waiter)
    }

    /// Returns once the server has processed everything this client sent before: a
    /// message to our own inbox comes back only after the server has handled the
    /// commands ahead of it on the connection (e.g. a new subscription's SUB). This gives
    /// `subscribe` the in-process bus's guarantee: once it returns, publishes from any
    /// client reach the subscription.
    async fn round_trip(&self) -> Result<(), BusError> {
        let (token, rx, _waiter) = self.wait_for_reply();
        bounded(
            self.inner
                .client
                .publish(format!("{}.{token}", self.inner.inbox_prefix), Bytes::new()),
        )
        .await?;
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout(SUBSCRIBE_TIMEOUT)),
        }
    }

    fn subscription(&self, sub: async_nats::Subscriber) -> Subscription {
        let mut reconnects = self.inner.reconnects.clone();
        // Only reconnects from now on count.
        reconnects.mark_unchanged();
        Subscription::new(NatsSubscription {
            messages: sub,
            reconnect: Box::pin(changed(reconnects)),
        })
    }
}

/// Resolves when the reconnect counter moves; yields the receiver back to wait again.
async fn changed(mut rx: watch::Receiver<u64>) -> Option<watch::Receiver<u64>> {
    rx.changed().await.ok().map(|()| rx)
}

struct NatsSubscription {
    messages: async_nats::Subscriber,
    reconnect: Pin<Box<dyn Future<Output = Option<watch::Receiver<u64>>> + Send>>,
}

impl Stream for NatsSubscription {
    type Item = BusEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusEvent>> {
        if let Poll::Ready(rx) = self.reconnect.poll_unpin(cx) {
            match rx {
                Some(rx) => {
                    self.reconnect = Box::pin(changed(rx));
                    return Poll::Ready(Some(BusEvent::Lagged));
                }
                // The bus is gone: never report again.
                None => self.reconnect = Box::pin(std::future::pending()),
            }
        }
        self.messages.poll_next_unpin(cx).map(|m| {
            m.map(|m| {
                BusEvent::Message(BusMessage {
                    subject: Subject::from_wire(m.subject.as_str()),
                    payload: m.payload,
                    reply: m.reply.map(|r| Subject::from_wire(r.as_str())),
                })
            })
        })
    }
}

/// Hands each reply to the request waiting for it, until the bus is dropped.
async fn route_replies(inner: std::sync::Weak<Inner>, mut replies: async_nats::Subscriber) {
    while let Some(msg) = replies.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Some(token) = msg
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let waiter = inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token);
        let Some(tx) = waiter else {
            // The requester timed out and left.
            continue;
        };
        let result = match msg.status {
            Some(StatusCode::NO_RESPONDERS) => Err(BusError::NoResponders(String::new())),
            Some(status) if !status.is_success() => Err(BusError::Transport(format!(
                "reply status {status}: {}",
                msg.description.unwrap_or_default()
            ))),
            _ => Ok(msg.payload),
        };
        // The requester may have given up in the meantime.
        let _ = tx.send(result);
    }
}

/// Removes a waiting request when its future is dropped (time-out or caller gone).
struct Waiter {
    inner: Arc<Inner>,
    token: u64,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.token);
    }
}

fn transport(e: impl std::fmt::Display) -> BusError {
    BusError::Transport(e.to_string())
}

/// A publish waits for room in the client's outgoing buffer, which does not drain while
/// NATS is unreachable: give up after [`PUBLISH_TIMEOUT`] so callers fail (and retry)
/// instead of hanging for the whole outage.
async fn bounded<E: std::fmt::Display>(
    publish: impl Future<Output = Result<(), E>>,
) -> Result<(), BusError> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
        Ok(r) => r.map_err(transport),
        Err(_) => Err(BusError::Timeout(PUBLISH_TIMEOUT)),
    }
}

/// The JetStream stream that keeps what is published durably on `subject`:
/// `natter.notify` → `NATTER_NOTIFY`.
fn stream_name(subject: &Subject) -> String {
    subject
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// How long a durably published message waits for a consumer at most.
const DURABLE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Publishes with the same id within this window are stored once.
const DURABLE_DEDUPE_WINDOW: Duration = Duration::from_secs(120);
/// A delivered message not acked within this is delivered again.
const DURABLE_ACK_WAIT: Duration = Duration::from_secs(120);

impl NatsBus {
    /// Creates (or finds) the work-queue stream for `subject`: each message is kept
    /// until a consumer acks it, for a day at most.
    async fn durable_stream(
        &self,
        subject: &Subject,
    ) -> Result<async_nats::jetstream::stream::Stream, BusError> {
        use async_nats::jetstream::stream;
        let js = async_nats::jetstream::new(self.inner.client.clone());
        js.get_or_create_stream(stream::Config {
            name: stream_name(subject),
            subjects: vec![subject.as_str().to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: DURABLE_MAX_AGE,
            duplicate_window: DURABLE_DEDUPE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::Transport(format!("JetStream stream {}: {e}", stream_name(subject))))
    }
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    async fn publish_durable(
        &self,
        subject: &Subject,
        payload: Bytes,
        id: &str,
    ) -> Result<(), BusError> {
        use async_nats::jetstream::message::PublishMessage;
        let js = async_nats::jetstream::new(self.inner.client.clone());
        let publish = || {
            js.send_publish(
                subject.as_str().to_owned(),
                PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(id),
            )
        };
        let sent = match publish().await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let sent = match sent {
            Ok(ack) => Ok(ack),
            // No stream yet (the first publish on this subject): create it and retry once.
            Err(_) => {
                self.durable_stream(subject).await?;
                match publish().await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                }
            }
        };
        sent.map(|_| ())
            .map_err(|e| BusError::Transport(format!("JetStream publish: {e}")))
    }

    async fn consume_durable(
        &self,
        subject: &Subject,
        consumer: &str,
        _capacity: usize,
    ) -> Result<crate::DurableStream, BusError> {
        use async_nats::jetstream::consumer::{AckPolicy, pull};
        use futures::StreamExt as _;
        let stream = self.durable_stream(subject).await?;
        let pull: async_nats::jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                consumer,
                pull::Config {
                    durable_name: Some(consumer.to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: DURABLE_ACK_WAIT,
                    filter_subject: subject.as_str().to_owned(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BusError::Transport(format!("JetStream consumer {consumer}: {e}")))?;
        let messages = pull
            .messages()
            .await
            .map_err(|e| BusError::Transport(format!("JetStream consumer {consumer}: {e}")))?;
        Ok(Box::pin(messages.filter_map(|m| async move {
            match m {
                Ok(m) => {
                    let deliveries = m.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
                    Some(crate::DurableMessage::nats(m, deliveries))
                }
                Err(e) => {
                    // The pull stream reconnects by itself; a message it lost is redelivered.
                    tracing::warn!(error = %e, "JetStream consumer error");
                    None
                }
            }
        })))
    }

    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        bounded(
            self.inner
                .client
                .publish(subject.as_str().to_owned(), payload),
        )
        .await
    }

    async fn subscribe(
        &self,
        pattern: &Subject,
        _capacity: usize,
    ) -> Result<Subscription, BusError> {
        let sub = self
            .inner
            .client
            .subscribe(pattern.as_str().to_owned())
            .await
            .map_err(transport)?;
        self.round_trip().await?;
        Ok(self.subscription(sub))
    }

    async fn queue_subscribe(
        &self,
        pattern: &Subject,
        group: &str,
        _capacity: usize,
    ) -> Result<Subscription, BusError> {
        let sub = self
            .inner
            .client
            .queue_subscribe(pattern.as_str().to_owned(), group.to_owned())
            .await
            .map_err(transport)?;
        self.round_trip().await?;
        Ok(self.subscription(sub))
    }

    async fn start_request(
        &self,
        subject: &Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<PendingReply, BusError> {
        let (token, rx, waiter) = self.wait_for_reply();
        let reply_to = format!("{}.{token}", self.inner.inbox_prefix);
        bounded(self.inner.client.publish_with_reply(
            subject.as_str().to_owned(),
            reply_to,
            payload,
        ))
        .await?;
        let subject = subject.as_str().to_owned();
        Ok(async move {
            let _waiter = waiter;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Err(BusError::NoResponders(_)))) => Err(BusError::NoResponders(subject)),
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(BusError::Closed),
                Err(_) => Err(BusError::Timeout(timeout)),
            }
        }
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_to_two_seconds_with_jitter() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        for attempts in 1..100usize {
            let full = Duration::from_millis((attempts as u64 * 100).min(2_000));
            for _ in 0..20 {
                let d = reconnect_delay(attempts);
                assert!(d >= full / 2 && d <= full, "{attempts}: {d:?} of {full:?}");
            }
        }
        let longest = reconnect_delay(usize::MAX);
        assert!(longest >= Duration::from_secs(1) && longest <= Duration::from_secs(2));
    }
}
