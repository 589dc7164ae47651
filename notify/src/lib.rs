//! Push notifications for users with no device online.
//!
//! The owner of a conversation publishes a [`bus::NotifyJob`](natter_proto::bus::NotifyJob)
//! for every committed batch on `Subject::notify()` (durable: a JetStream work queue in a
//! cluster). The notifier ([`service::start`]) takes each job and, per message and
//! recipient, skips the sender, withheld messages, users with a device online
//! ([`Online`]) and muted conversations ([`Targets`]); for each device with a push token
//! it POSTs a JSON notification to the configured webhook (an FCM/APNs gateway)
//! ([`webhook`]), retried with exponential backoff and jitter, under a per-device rate
//! limit, without the message's content unless configured. A job is acked once every
//! notification in it is sent or given up.

pub mod service;
pub mod webhook;

use async_trait::async_trait;
use natter_proto::{UserId, bus};

/// What can go wrong asking another service.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotifyError {
    /// The service did not answer (retry later).
    #[error("{0} unavailable")]
    Unavailable(&'static str),
    /// The answer made no sense.
    #[error("{0}")]
    Internal(String),
}

/// Where to push for a user: their devices' push tokens and whether they muted the
/// conversation (the sessions service, `Subject::sessions_push_targets()`).
#[async_trait]
pub trait Targets: Send + Sync + 'static {
    async fn push_targets(
        &self,
        user: UserId,
        conversation_id: &str,
    ) -> Result<bus::PushTargets, NotifyError>;
}

/// Whether a user has a device connected right now (the edges' session directory).
#[async_trait]
pub trait Online: Send + Sync + 'static {
    async fn online(&self, user: UserId) -> Result<bool, NotifyError>;
}
