//! The notifier: consumes `NotifyJob`s from `Subject::notify()` and pushes a
//! notification to every device of every recipient that should get one.
//!
//! Per message and recipient, in this order: the sender, a withheld message, a system
//! message and an answered call are skipped; so is a user with a device online, a user
//! who muted the conversation, and a device without a push token. Each remaining device
//! passes a per-device token bucket (`per_device_per_minute`, bursts of as many; the
//! excess is dropped) and gets one webhook request, retried by [`Webhook::deliver`].
//!
//! A job is acked when every delivery in it finished (sent, refused, or given up). If the
//! online check or the push targets were unavailable for some recipient, the job is
//! redelivered later (`retry_later`, [`retry_delay`]: 10 s doubling per delivery, with
//! jitter so that jobs that met the same outage do not all return at once) unless it has
//! been delivered 5 times already; the
//! notifications already sent are not sent again by this process (a bounded set of the
//! last 100,000 ids), and the gateway sees the same `Idempotency-Key` for a notification
//! sent again by another one.
//!
//! Metrics: `natter_push_sent_total`, `natter_push_failed_total{reason}`,
//! `natter_push_skipped_total{reason}` (online, muted, no_token, rate_limited, sender,
//! withheld, kind, duplicate) and `natter_push_attempts_total` (one per HTTP request).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures::{StreamExt as _, stream};
use natter_bus::{Bus, BusError, DurableMessage};
use natter_proto::{
    DeviceId, ErrorCode, Subject, UserId,
    bus::{NotifyJob, PushTargets, PushTargetsRequest},
    v1::{Message, MessageKind},
};
use natter_sessions::directory::SessionDirectory;
use prost::Message as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    NotifyError, Online, Targets,
    webhook::{Notification, Webhook, WebhookConfig},
};

/// The durable consumer's name: every notifier shares the jobs.
pub const CONSUMER: &str = "notifier";
/// How long a job waits before its first retry when a service was unavailable (see
/// [`retry_delay`]).
pub const RETRY_DELAY: Duration = Duration::from_secs(10);
/// Deliveries after which a job that still meets an unavailable service is given up.
pub const MAX_DELIVERIES: u64 = 5;
/// Notification ids remembered as sent.
pub const SENT_MEMORY: usize = 100_000;
/// Recipients of one job looked up at once.
const RECIPIENTS_IN_FLIGHT: usize = 16;
/// Device buckets kept before full ones are pruned.
const BUCKETS_SOFT_LIMIT: usize = 100_000;

/// How long a job delivered `deliveries` times waits before it is tried again: half to
/// all of [`RETRY_DELAY`] doubled per earlier delivery (10 s, 20 s, 40 s, 80 s at most
/// before [`MAX_DELIVERIES`]). Retrying is safe: notifications already sent are not sent
/// again (the sent set here, the `Idempotency-Key` at the gateway).
pub fn retry_delay(deliveries: u64) -> Duration {
    use rand::Rng as _;
    let doublings = u32::try_from(deliveries.saturating_sub(1).min(4)).unwrap_or(4);
    let full = RETRY_DELAY * 2u32.pow(doublings);
    full / 2 + Duration::from_millis(rand::rng().random_range(0..=full.as_millis() as u64 / 2))
}

/// The notifier's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub webhook: WebhookConfig,
    /// Put the text of text messages in notifications (off by default: the gateway and
    /// the push services then never see message content).
    pub include_content: bool,
    /// Notifications per device per minute, in bursts of as many; the excess is dropped.
    /// 0 turns the limit off.
    pub per_device_per_minute: u32,
    /// Jobs handled at once.
    pub concurrency: usize,
}

impl Config {
    /// The defaults around `webhook`: no content, 30 notifications per device per minute,
    /// 16 jobs in flight.
    pub fn new(webhook: WebhookConfig) -> Config {
        Config {
            webhook,
            include_content: false,
            per_device_per_minute: 30,
            concurrency: 16,
        }
    }
}

/// Starts the notifier. The returned task ends once `shutdown` is cancelled: it stops
/// taking jobs, abandons the deliveries in flight and hands their jobs back to the bus.
pub async fn start(
    bus: Arc<dyn Bus>,
    targets: Arc<dyn Targets>,
    online: Arc<dyn Online>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let webhook = Webhook::new(config.webhook.clone())
        .map_err(|e| BusError::Transport(format!("push webhook client: {e}")))?;
    let mut jobs = bus
        .consume_durable(&Subject::notify(), CONSUMER, 1024)
        .await?;
    let notifier = Arc::new(Notifier {
        webhook,
        targets,
        online,
        include_content: config.include_content,
        limiter: RateLimiter::new(config.per_device_per_minute),
        sent: SentIds::new(SENT_MEMORY),
    });
    let concurrency = config.concurrency.max(1);
    Ok(tokio::spawn(async move {
        let mut in_flight = JoinSet::new();
        loop {
            // Never more than `concurrency` jobs at once: wait for one to finish first.
            while in_flight.len() >= concurrency {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = in_flight.join_next() => {}
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // Reap finished jobs as they end so the set holds only live ones.
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                job = jobs.next() => match job {
                    Some(job) => {
                        let notifier = notifier.clone();
                        let cancel = shutdown.clone();
                        in_flight.spawn(async move { notifier.handle(job, cancel).await });
                    }
                    None => {
                        tracing::warn!("the notify job stream ended");
                        break;
                    }
                },
            }
        }
        // Shutdown (or the stream ended): jobs in flight see the token and hand their
        // job back; wait for them, which is quick.
        while in_flight.join_next().await.is_some() {}
        tracing::info!("notifier stopped");
    }))
}

struct Notifier {
    webhook: Webhook,
    targets: Arc<dyn Targets>,
    online: Arc<dyn Online>,
    include_content: bool,
    limiter: RateLimiter,
    sent: SentIds,
}

/// How one recipient (or one job) ended.
#[derive(Default)]
struct Outcome {
    /// Lookups that met an unavailable service: the job should be tried again.
    unavailable: u64,
    /// Shutdown interrupted a delivery.
    interrupted: bool,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.unavailable += other.unavailable;
        self.interrupted |= other.interrupted;
    }
}

fn skipped(reason: &'static str) {
    metrics::counter!("natter_push_skipped_total", "reason" => reason).increment(1);
}

fn failed(reason: &'static str, n: u64) {
    metrics::counter!("natter_push_failed_total", "reason" => reason).increment(n);
}

/// Why no recipient of `message` gets a notification, if so.
fn message_skip(message: &Message) -> Option<&'static str> {
    if message.withheld {
        return Some("withheld");
    }
    match MessageKind::try_from(message.kind) {
        Ok(MessageKind::System) => Some("kind"),
        // A missed call is worth a push; an answered (or declined by this user on
        // another device...) one the callee already knows about is not.
        Ok(MessageKind::Call) if !message.call.as_ref().is_some_and(|c| c.missed) => Some("kind"),
        Ok(_) => None,
        Err(_) => Some("kind"),
    }
}

impl Notifier {
    async fn handle(self: Arc<Self>, job: DurableMessage, cancel: CancellationToken) {
        let decoded = match NotifyJob::decode(job.payload.clone()) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, bytes = job.payload.len(), "undecodable notify job; dropping it");
                ack(job).await;
                return;
            }
        };
        let mut work = Vec::new();
        for nm in decoded.messages {
            let Some(message) = nm.message.map(Arc::new) else {
                continue;
            };
            let skip = message_skip(&message);
            for recipient in nm.recipients {
                if recipient == message.sender_user {
                    skipped("sender");
                } else if let Some(reason) = skip {
                    skipped(reason);
                } else if let Ok(user) = UserId::new(recipient) {
                    work.push((message.clone(), user));
                }
            }
        }
        let outcome = stream::iter(work)
            .map(|(message, user)| {
                let this = &self;
                let cancel = &cancel;
                async move { this.recipient(&message, user, cancel).await }
            })
            .buffer_unordered(RECIPIENTS_IN_FLIGHT)
            .fold(Outcome::default(), |mut all, one| async move {
                all.merge(one);
                all
            })
            .await;
        if outcome.interrupted {
            // Shutting down: another notifier (or this one after a restart) takes it.
            if let Err(e) = job.retry_later(Duration::from_secs(1)).await {
                tracing::warn!(error = %e, "cannot hand a notify job back");
            }
        } else if outcome.unavailable > 0 {
            if job.deliveries >= MAX_DELIVERIES {
                tracing::error!(
                    deliveries = job.deliveries,
                    recipients = outcome.unavailable,
                    "notify job still meets unavailable services; giving up on its remaining recipients"
                );
                failed("unavailable", outcome.unavailable);
                ack(job).await;
            } else {
                tracing::info!(
                    deliveries = job.deliveries,
                    recipients = outcome.unavailable,
                    "a service was unavailable for a notify job; trying it again later"
                );
                let delay = retry_delay(job.deliveries);
                if let Err(e) = job.retry_later(delay).await {
                    tracing::warn!(error = %e, "cannot ask for a notify job to be redelivered");
                }
            }
        } else {
            ack(job).await;
        }
    }

    /// Everything for one recipient of one message.
    async fn recipient(
        &self,
        message: &Message,
        user: UserId,
        cancel: &CancellationToken,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        match self.online.online(user).await {
            Ok(true) => {
                skipped("online");
                return outcome;
            }
            Ok(false) => {}
            Err(NotifyError::Unavailable(what)) => {
                tracing::debug!(user = %user, what, "online check unavailable");
                outcome.unavailable = 1;
                return outcome;
            }
            Err(NotifyError::Internal(e)) => {
                tracing::error!(user = %user, error = %e, "online check failed");
                failed("online", 1);
                return outcome;
            }
        }
        let targets = match self
            .targets
            .push_targets(user, &message.conversation_id)
            .await
        {
            Ok(t) => t,
            Err(NotifyError::Unavailable(what)) => {
                tracing::debug!(user = %user, what, "push targets unavailable");
                outcome.unavailable = 1;
                return outcome;
            }
            Err(NotifyError::Internal(e)) => {
                tracing::error!(user = %user, error = %e, "push targets failed");
                failed("targets", 1);
                return outcome;
            }
        };
        if targets.muted {
            skipped("muted");
            return outcome;
        }
        let devices: Vec<_> = targets
            .devices
            .into_iter()
            .filter(|d| d.device_id != 0 && !d.token.is_empty())
            .collect();
        if devices.is_empty() {
            skipped("no_token");
            return outcome;
        }
        let deliveries = devices.iter().filter_map(|device| {
            let n = Notification::new(message, user, device, self.include_content)?;
            if self.sent.contains(&n.id) {
                skipped("duplicate");
                return None;
            }
            if !self.limiter.allow(user, DeviceId(device.device_id)) {
                skipped("rate_limited");
                return None;
            }
            if !self.sent.claim(&n.id) {
                // A concurrent copy of the job claimed it in between.
                skipped("duplicate");
                return None;
            }
            Some(self.deliver(n, cancel))
        });
        for interrupted in futures::future::join_all(deliveries).await {
            outcome.interrupted |= interrupted;
        }
        outcome
    }

    /// Delivers one claimed notification; true if shutdown interrupted it.
    async fn deliver(&self, n: Notification, cancel: &CancellationToken) -> bool {
        let result = tokio::select! {
            _ = cancel.cancelled() => {
                self.sent.release(&n.id);
                return true;
            }
            r = self.webhook.deliver(&n) => r,
        };
        match result {
            Ok(d) => {
                metrics::counter!("natter_push_sent_total").increment(1);
                tracing::debug!(id = %n.id, attempts = d.attempts, "push notification sent");
            }
            Err(e) => {
                failed(e.reason(), 1);
                // Not sent: a redelivered job may try again.
                self.sent.release(&n.id);
            }
        }
        false
    }
}

async fn ack(job: DurableMessage) {
    if let Err(e) = job.ack().await {
        tracing::warn!(error = %e, "cannot ack a notify job");
    }
}

/// The notification ids sent (or being sent) by this process, the last `capacity` of
/// them.
struct SentIds {
    inner: Mutex<SentInner>,
    capacity: usize,
}

struct SentInner {
    /// id → the generation it was claimed under.
    ids: HashMap<String, u64>,
    /// Claims in order, oldest first (a released id's entry stays until it is evicted,
    /// and is ignored then unless its generation is still current).
    order: VecDeque<(String, u64)>,
    next: u64,
}

impl SentIds {
    fn new(capacity: usize) -> SentIds {
        SentIds {
            inner: Mutex::new(SentInner {
                ids: HashMap::new(),
                order: VecDeque::new(),
                next: 0,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SentInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, id: &str) -> bool {
        self.lock().ids.contains_key(id)
    }

    /// Marks `id` as sent; false if it already was.
    fn claim(&self, id: &str) -> bool {
        let mut inner = self.lock();
        if inner.ids.contains_key(id) {
            return false;
        }
        let generation = inner.next;
        inner.next += 1;
        inner.ids.insert(id.to_owned(), generation);
        inner.order.push_back((id.to_owned(), generation));
        while inner.order.len() > self.capacity {
            let Some((old, old_gen)) = inner.order.pop_front() else {
                break;
            };
            if inner.ids.get(&old) == Some(&old_gen) {
                inner.ids.remove(&old);
            }
        }
        true
    }

    /// `id` was not sent after all.
    fn release(&self, id: &str) {
        self.lock().ids.remove(id);
    }
}

/// A token bucket per device.
struct RateLimiter {
    /// Tokens (and bucket size); 0: no limit.
    burst: f64,
    /// Tokens per second.
    rate: f64,
    buckets: Mutex<HashMap<(UserId, DeviceId), Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            burst: f64::from(per_minute),
            rate: f64::from(per_minute) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for the device; false if it has none left.
    fn allow(&self, user: UserId, device: DeviceId) -> bool {
        if self.burst == 0.0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= BUCKETS_SOFT_LIMIT {
            // Full buckets are the same as absent ones.
            let (burst, rate) = (self.burst, self.rate);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry((user, device)).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// [`Targets`] over the bus: asks the sessions service (`Subject::sessions_push_targets()`).
pub struct BusTargets {
    bus: Arc<dyn Bus>,
    timeout: Duration,
}

impl BusTargets {
    /// Asks over `bus`, waiting up to 2 s for each answer.
    pub fn new(bus: Arc<dyn Bus>) -> BusTargets {
        BusTargets {
            bus,
            timeout: Duration::from_secs(2),
        }
    }

    /// Waits up to `timeout` for each answer.
    pub fn with_timeout(mut self, timeout: Duration) -> BusTargets {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl Targets for BusTargets {
    async fn push_targets(
        &self,
        user: UserId,
        conversation_id: &str,
    ) -> Result<PushTargets, NotifyError> {
        let request = PushTargetsRequest {
            user_id: user.get(),
            conversation_id: conversation_id.to_owned(),
        };
        let reply = self
            .bus
            .request(
                &Subject::sessions_push_targets(),
                request.encode_to_vec().into(),
                self.timeout,
            )
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "push targets request failed");
                NotifyError::Unavailable("sessions")
            })?;
        let targets = PushTargets::decode(reply)
            .map_err(|e| NotifyError::Internal(format!("undecodable push targets: {e}")))?;
        match &targets.error {
            None => Ok(targets),
            Some(e) if e.code == ErrorCode::Unavailable as i32 => {
                Err(NotifyError::Unavailable("sessions"))
            }
            Some(e) => Err(NotifyError::Internal(format!(
                "push targets: {} ({})",
                e.message,
                ErrorCode::try_from(e.code)
                    .map(|c| c.as_str_name())
                    .unwrap_or("unknown code")
            ))),
        }
    }
}

/// [`Online`] from the session directory: a user is online when any device is connected.
pub struct DirectoryOnline(pub Arc<dyn SessionDirectory>);

#[async_trait]
impl Online for DirectoryOnline {
    async fn online(&self, user: UserId) -> Result<bool, NotifyError> {
        match self.0.devices(user).await {
            Ok(devices) => Ok(!devices.is_empty()),
            Err(e) => {
                tracing::debug!(error = %e, "session directory lookup failed");
                Err(NotifyError::Unavailable("session directory"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_with_jitter_and_stay_bounded() {
        for deliveries in 0..10u64 {
            let full = RETRY_DELAY * 2u32.pow(deliveries.saturating_sub(1).min(4) as u32);
            for _ in 0..50 {
                let d = retry_delay(deliveries);
                assert!(
                    d >= full / 2 && d <= full,
                    "{deliveries}: {d:?} of {full:?}"
                );
            }
        }
        assert_eq!(retry_delay(1).max(RETRY_DELAY), RETRY_DELAY);
        assert!(retry_delay(5) >= Duration::from_secs(80));
        assert!(retry_delay(100) <= Duration::from_secs(160));
    }

    #[test]
    fn sent_ids_are_bounded_and_releasable() {
        let sent = SentIds::new(3);
        assert!(sent.claim("a"));
        assert!(!sent.claim("a"));
        sent.release("a");
        assert!(sent.claim("a"));
        for id in ["b", "c", "d"] {
            assert!(sent.claim(id));
        }
        // "a" was claimed first (twice): evicted.
        assert!(!sent.contains("a"));
        assert!(sent.contains("b") && sent.contains("c") && sent.contains("d"));
        assert!(sent.lock().ids.len() <= 3);
    }

    #[test]
    fn token_bucket_bursts_then_drops() {
        let limiter = RateLimiter::new(3);
        let (u, d) = (UserId(1), DeviceId(2));
        assert!((0..3).all(|_| limiter.allow(u, d)));
        assert!(!limiter.allow(u, d));
        // Another device has its own bucket.
        assert!(limiter.allow(u, DeviceId(3)));
        let unlimited = RateLimiter::new(0);
        assert!((0..1000).all(|_| unlimited.allow(u, d)));
    }
}
