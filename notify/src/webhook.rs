//! The push webhook: one JSON POST per notification to a gateway that forwards it to
//! FCM, APNs or Web Push.
//!
//! Every request carries `Idempotency-Key: <notification id>` (a retried request, or
//! the same notification sent again after a restart, has the same key, so the gateway
//! can drop the duplicate) and, when a secret is configured,
//! `X-Natter-Signature: sha256=<lowercase hex HMAC-SHA256 of the body bytes>`.
//! Connection errors, timeouts, 5xx and 429 are retried with exponential backoff and full
//! jitter (a 429's `Retry-After` seconds are honoured, capped by `backoff_max`); any
//! other status is final.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use natter_proto::{
    DeviceId, UserId,
    bus::PushDevice,
    v1::{MediaKind, Message, MessageKind},
};
use rand::Rng as _;
use reqwest::{StatusCode, header};
use serde::{Serialize, Serializer};

/// The longest body a notification carries, in characters.
pub const MAX_BODY_CHARS: usize = 1000;

/// Where and how to POST notifications.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The gateway's URL (`https://…`; `http://` for a gateway on loopback).
    pub url: String,
    /// Signs each body (`X-Natter-Signature`) when set.
    pub secret: Option<Arc<[u8]>>,
    /// Bound of one request, connecting included.
    pub timeout: Duration,
    /// Requests per notification, the first included (at least 1).
    pub max_attempts: u32,
    /// The backoff before the second attempt is drawn from `[0, backoff_base]`, before the
    /// third from `[0, 2 * backoff_base]`, … (full jitter).
    pub backoff_base: Duration,
    /// The longest wait between two attempts (a `Retry-After` included).
    pub backoff_max: Duration,
}

impl WebhookConfig {
    /// `url` with the defaults: 10 s timeout, 5 attempts, backoff 500 ms doubling up to 30 s,
    /// no signature.
    pub fn new(url: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            secret: None,
            timeout: Duration::from_secs(10),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    Text,
    Binary,
    Media,
    Call,
    System,
}

impl NotificationKind {
    /// The kind of a stored message (`None` for a value this build does not know).
    pub fn of(kind: i32) -> Option<NotificationKind> {
        Some(match MessageKind::try_from(kind).ok()? {
            // Stored messages always have a kind; the messages service reads an
            // unspecified one as text.
            MessageKind::Unspecified | MessageKind::Text => NotificationKind::Text,
            MessageKind::Binary => NotificationKind::Binary,
            MessageKind::Media => NotificationKind::Media,
            MessageKind::Call => NotificationKind::Call,
            MessageKind::System => NotificationKind::System,
        })
    }
}

/// One notification for one device: the JSON body of one webhook request. 64-bit ids
/// (and `seq`) are decimal strings, as in natter's JSON APIs, so JavaScript reads them
/// exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// `<conversation>:<seq>:<device>`: the same for every attempt and redelivery.
    pub id: String,
    #[serde(serialize_with = "decimal")]
    pub user_id: UserId,
    #[serde(serialize_with = "decimal")]
    pub device_id: DeviceId,
    /// "fcm", "apns", "webpush" or "other" (as the device registered it).
    pub platform: String,
    /// The device's push token.
    pub token: String,
    pub conversation_id: String,
    #[serde(serialize_with = "decimal")]
    pub seq: u64,
    #[serde(serialize_with = "decimal")]
    pub message_id: u64,
    #[serde(serialize_with = "decimal")]
    pub sender_user_id: UserId,
    pub kind: NotificationKind,
    pub created_at_ms: u64,
    /// Text messages only, and only when configured: the text, at most
    /// [`MAX_BODY_CHARS`] characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Media messages: "image", "video", "audio", "document" (or "unknown").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_kind: Option<&'static str>,
    /// Call entries: whether the call was missed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed_call: Option<bool>,
}

fn decimal<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Notification {
    /// The notification id of a message for a device.
    pub fn id_for(conversation_id: &str, seq: u64, device: DeviceId) -> String {
        format!("{conversation_id}:{seq}:{device}")
    }

    /// The notification of `message` for `user`'s `device`; the text only if
    /// `include_content`. `None` for a kind this build does not know.
    pub fn new(
        message: &Message,
        user: UserId,
        device: &PushDevice,
        include_content: bool,
    ) -> Option<Notification> {
        let kind = NotificationKind::of(message.kind)?;
        let device_id = DeviceId(device.device_id);
        let body = (include_content && kind == NotificationKind::Text)
            .then(|| truncate_chars(&String::from_utf8_lossy(&message.body), MAX_BODY_CHARS));
        let media_kind = (kind == NotificationKind::Media).then(|| {
            match message
                .media
                .as_ref()
                .and_then(|m| MediaKind::try_from(m.kind).ok())
            {
                Some(MediaKind::Image) => "image",
                Some(MediaKind::Video) => "video",
                Some(MediaKind::Audio) => "audio",
                Some(MediaKind::Document) => "document",
                Some(MediaKind::Unspecified) | None => "unknown",
            }
        });
        let missed_call = (kind == NotificationKind::Call)
            .then(|| message.call.as_ref().is_some_and(|c| c.missed));
        Some(Notification {
            id: Notification::id_for(&message.conversation_id, message.seq, device_id),
            user_id: user,
            device_id,
            platform: device.platform.clone(),
            token: device.token.clone(),
            conversation_id: message.conversation_id.clone(),
            seq: message.seq,
            message_id: message.message_id,
            sender_user_id: UserId(message.sender_user),
            kind,
            created_at_ms: message.created_at_ms,
            body,
            media_kind,
            missed_call,
        })
    }
}

/// The first `max` characters of `s` (cut on a character boundary).
fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => s[..end].to_owned(),
        None => s.to_owned(),
    }
}

/// The gateway took the notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Requests made, this one included.
    pub attempts: u32,
    pub status: u16,
}

/// The notification was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failed {
    /// The gateway refused it with a status that retrying does not change (4xx but 429,
    /// or a redirect): a bad token, a malformed request, a wrong signature.
    #[error("the push gateway refused the notification with status {status}")]
    Rejected { status: u16, attempts: u32 },
    /// Every attempt failed with an error worth retrying; `last` is the last one.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    /// The notification could not be turned into a request.
    #[error("cannot build the request: {0}")]
    Invalid(String),
}

impl Failed {
    /// The `reason` label of `natter_push_failed_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Failed::Rejected { .. } => "rejected",
            Failed::GaveUp { .. } => "gave_up",
            Failed::Invalid(_) => "invalid",
        }
    }

    /// Requests made.
    pub fn attempts(&self) -> u32 {
        match self {
            Failed::Rejected { attempts, .. } | Failed::GaveUp { attempts, .. } => *attempts,
            Failed::Invalid(_) => 0,
        }
    }
}

/// Installs rustls' ring provider as the process default unless one is installed: the
/// tree links only ring, and reqwest (built without a provider of its own) needs a
/// default to make TLS connections.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The webhook client. Cheap to share (`Arc`); one connection pool.
pub struct Webhook {
    client: reqwest::Client,
    config: WebhookConfig,
    key: Option<ring::hmac::Key>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt {
    Done(u16),
    Final(u16),
    /// The request cannot be made at all.
    Invalid(String),
    /// Retry, after at least this long if the gateway said so.
    Again {
        error: String,
        retry_after: Option<Duration>,
    },
}

impl Webhook {
    /// A client for `config` (TLS through rustls on ring; no redirects are followed: a
    /// redirect is a final answer).
    pub fn new(config: WebhookConfig) -> Result<Webhook, reqwest::Error> {
        ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("natter-notify/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let key = config
            .secret
            .as_ref()
            .map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s));
        Ok(Webhook {
            client,
            config,
            key,
        })
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// `sha256=<lowercase hex HMAC-SHA256 of body>` under `secret`: the value of
    /// `X-Natter-Signature`.
    pub fn signature(secret: &[u8], body: &[u8]) -> String {
        sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret), body)
    }

    /// POSTs `n`, retrying as the module docs say. Cancel-safe (dropping the future stops
    /// it).
    pub async fn deliver(&self, n: &Notification) -> Result<Delivered, Failed> {
        let body = Bytes::from(serde_json::to_vec(n).map_err(|e| Failed::Invalid(e.to_string()))?);
        let signature = self.key.as_ref().map(|k| sign(k, &body));
        let max_attempts = self.config.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            metrics::counter!("natter_push_attempts_total").increment(1);
            let (error, retry_after) = match self.attempt(n, &body, signature.as_deref()).await {
                Attempt::Done(status) => {
                    return Ok(Delivered {
                        attempts: attempt,
                        status,
                    });
                }
                Attempt::Final(status) => {
                    tracing::warn!(
                        id = %n.id,
                        status,
                        "push gateway refused a notification; not retrying"
                    );
                    return Err(Failed::Rejected {
                        status,
                        attempts: attempt,
                    });
                }
                Attempt::Invalid(e) => {
                    tracing::error!(id = %n.id, error = %e, "cannot build a push request");
                    return Err(Failed::Invalid(e));
                }
                Attempt::Again { error, retry_after } => (error, retry_after),
            };
            if attempt >= max_attempts {
                tracing::warn!(
                    id = %n.id,
                    attempts = attempt,
                    error = %error,
                    "push notification not delivered; giving up"
                );
                return Err(Failed::GaveUp {
                    attempts: attempt,
                    last: error,
                });
            }
            let delay = match retry_after {
                Some(d) => d.min(self.config.backoff_max),
                None => backoff(
                    self.config.backoff_base,
                    self.config.backoff_max,
                    attempt - 1,
                ),
            };
            tracing::debug!(id = %n.id, attempt, error = %error, ?delay, "push attempt failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, n: &Notification, body: &Bytes, signature: Option<&str>) -> Attempt {
        let mut request = self
            .client
            .post(&self.config.url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", &n.id)
            .body(body.clone());
        if let Some(sig) = signature {
            request = request.header("X-Natter-Signature", sig);
        }
        match request.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Attempt::Done(status.as_u16())
                } else if status == StatusCode::TOO_MANY_REQUESTS {
                    Attempt::Again {
                        error: format!("status {status}"),
                        retry_after: retry_after(resp.headers()),
                    }
                } else if status.is_server_error() {
                    Attempt::Again {
                        error: format!("status {status}"),
                        retry_after: None,
                    }
                } else {
                    Attempt::Final(status.as_u16())
                }
            }
            // A request that cannot even be built does not get better with time.
            Err(e) if e.is_builder() => Attempt::Invalid(error_chain(&e)),
            Err(e) => Attempt::Again {
                error: error_chain(&e),
                retry_after: None,
            },
        }
    }
}

fn sign(key: &ring::hmac::Key, body: &[u8]) -> String {
    let tag = ring::hmac::sign(key, body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: the backoff applies).
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// Full jitter: uniform in `[0, min(max, base * 2^retry)]`.
fn backoff(base: Duration, max: Duration, retry: u32) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// The error and its sources, for logs (reqwest's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("hi", 5), "hi");
        let long: String = "é".repeat(1500);
        assert_eq!(truncate_chars(&long, MAX_BODY_CHARS).chars().count(), 1000);
    }

    #[test]
    fn backoff_is_bounded() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(100);
        for retry in 0..64 {
            let d = backoff(base, max, retry);
            assert!(d <= max);
            assert!(d <= base * 2u32.saturating_pow(retry.min(20)));
        }
    }

    #[test]
    fn signature_is_lowercase_hex() {
        // RFC 4231 test case 2.
        let sig = Webhook::signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
