//! Hands committed batches to the notifier (push notifications for recipients with no
//! device online): a `NotifyJob` per batch on `Subject::notify()`, published durably (a
//! JetStream work queue in a cluster) under the id of its first message, so a retried
//! publish is kept once.
//!
//! Acks never wait for it: owners [`offer`](Publisher::offer) a batch to a bounded
//! queue, and one task publishes at most [`IN_FLIGHT`] jobs at a time. With JetStream
//! slow or down the queue fills and further batches get no push (logged); nothing else
//! waits and nothing grows. A job is also lost if its owner dies between its commit and
//! the publish; the messages themselves are stored either way.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use natter_bus::Bus;
use natter_proto::{Subject, UserId, bus, v1};
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc};

use crate::NewMessage;

/// Jobs waiting to be published.
const QUEUE: usize = 1024;
/// Jobs being published at once.
const IN_FLIGHT: usize = 64;
/// Attempts to publish one job.
const ATTEMPTS: u32 = 3;

/// The owners' way to the notifier. Cheap to share; its task ends with the last one.
pub(crate) struct Publisher {
    jobs: mpsc::Sender<(String, Bytes)>,
}

impl Publisher {
    pub(crate) fn start(bus: Arc<dyn Bus>) -> Publisher {
        let (jobs, mut rx) = mpsc::channel::<(String, Bytes)>(QUEUE);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            while let Some((id, payload)) = rx.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let bus = bus.clone();
                tokio::spawn(async move {
                    publish(&*bus, &id, payload).await;
                    drop(slot);
                });
            }
        });
        Publisher { jobs }
    }

    /// Queues the job of a committed batch: its messages with their recipients (the
    /// members but the sender), group changes left out.
    pub(crate) fn offer(&self, batch: &[NewMessage], fanout: &[Arc<Vec<UserId>>]) {
        let messages: Vec<bus::NotifyMessage> = batch
            .iter()
            .zip(fanout)
            .filter(|(nm, _)| nm.message.kind != v1::MessageKind::System as i32)
            .map(|(nm, members)| bus::NotifyMessage {
                recipients: members
                    .iter()
                    .filter(|u| u.get() != nm.message.sender_user)
                    .map(|u| u.get())
                    .collect(),
                message: Some(nm.message.clone()),
            })
            .filter(|m| !m.recipients.is_empty())
            .collect();
        let Some(first) = messages.first().and_then(|m| m.message.as_ref()) else {
            return;
        };
        let id = format!("{}:{}", first.conversation_id, first.seq);
        let payload = Bytes::from(bus::NotifyJob { messages }.encode_to_vec());
        if self.jobs.try_send((id, payload)).is_err() {
            tracing::warn!("notify queue full (JetStream slow or down): no push for a batch");
        }
    }
}

async fn publish(bus: &dyn Bus, id: &str, payload: Bytes) {
    for attempt in 1..=ATTEMPTS {
        match bus
            .publish_durable(&Subject::notify(), payload.clone(), id)
            .await
        {
            Ok(()) => return,
            Err(e) if attempt == ATTEMPTS => {
                tracing::warn!(error = %e, job = %id, "notify job not published: no push for it");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await,
        }
    }
}
