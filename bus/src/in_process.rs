//! The in-process bus used by `natter serve`: the same subjects and semantics as NATS
//! (wildcards, queue groups, request/reply) without a network hop or a serializer
//! beyond the payload bytes.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::FutureExt;
use natter_proto::Subject;
use tokio::sync::oneshot;

use crate::{Bus, BusError, BusEvent, BusMessage, PendingReply, Subscription, queue};

const INBOX_PREFIX: &str = "_INBOX.local";

/// The in-process bus. Cheap to clone; all clones are one bus.
#[derive(Clone, Default)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    subs: Mutex<Table>,
    /// Requests waiting for a reply, by inbox number.
    inboxes: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
}

#[derive(Default)]
struct Table {
    /// Plain subjects, looked up by string: one map probe per publish however many users
    /// are connected.
    exact: HashMap<String, Vec<Arc<Sub>>>,
    /// Patterns with wildcards: few (one per service), scanned on each publish.
    patterns: Vec<Arc<Sub>>,
    /// Round-robin counter per queue group.
    rr: HashMap<String, usize>,
}

struct Sub {
    id: u64,
    pattern: Subject,
    group: Option<String>,
    tx: queue::Sender<BusMessage>,
    lagged: Arc<AtomicBool>,
}

impl Sub {
    fn offer(&self, msg: BusMessage) {
        if self.tx.try_send(msg).is_err() {
            // Full (or the receiver is gone): drop it and tell the subscriber rather than
            // block the publisher. A closed receiver is unsubscribing anyway.
            self.lagged.store(true, Ordering::Release);
        }
    }
}

/// Removes the subscription from the table when the subscriber drops it.
struct Unsubscribe {
    bus: Weak<Inner>,
    id: u64,
    pattern: Subject,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some(inner) = self.bus.upgrade() else {
            return;
        };
        let mut table = inner.subs.lock().unwrap_or_else(|e| e.into_inner());
        if self.pattern.is_pattern() {
            table.patterns.retain(|s| s.id != self.id);
        } else if let Some(list) = table.exact.get_mut(self.pattern.as_str()) {
            list.retain(|s| s.id != self.id);
            if list.is_empty() {
                table.exact.remove(self.pattern.as_str());
            }
        }
    }
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, pattern: &Subject, group: Option<&str>, capacity: usize) -> Subscription {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        // Lean queue: an idle subscriber (a connected device) holds no buffer.
        let (tx, rx) = queue::bounded(capacity.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        let sub = Arc::new(Sub {
            id,
            pattern: pattern.clone(),
            group: group.map(str::to_owned),
            tx,
            lagged: lagged.clone(),
        });
        {
            let mut table = self.inner.subs.lock().unwrap_or_else(|e| e.into_inner());
            if pattern.is_pattern() {
                table.patterns.push(sub);
            } else {
                table
                    .exact
                    .entry(pattern.as_str().to_owned())
                    .or_default()
                    .push(sub);
            }
        }
        let guard = Unsubscribe {
            bus: Arc::downgrade(&self.inner),
            id,
            pattern: pattern.clone(),
        };
        let stream =
            futures::stream::unfold((rx, lagged, guard), |(mut rx, lagged, guard)| async move {
                if lagged.swap(false, Ordering::AcqRel) {
                    return Some((BusEvent::Lagged, (rx, lagged, guard)));
                }
                let msg = rx.recv().await?;
                Some((BusEvent::Message(msg), (rx, lagged, guard)))
            });
        Subscription::new(stream)
    }

    fn deliver(&self, msg: BusMessage) -> usize {
        if let Some(id) = msg
            .subject
            .as_str()
            .strip_prefix(INBOX_PREFIX)
            .and_then(|s| s.strip_prefix('.'))
        {
            let waiter = id.parse::<u64>().ok().and_then(|id| {
                let mut inboxes = self.inner.inboxes.lock().unwrap_or_else(|e| e.into_inner());
                inboxes.remove(&id)
            });
            return match waiter {
                // The requester may have timed out and gone: then the reply has no reader.
                Some(tx) => usize::from(tx.send(msg.payload).is_ok()),
                None => 0,
            };
        }
        let mut table = self.inner.subs.lock().unwrap_or_else(|e| e.into_inner());
        let mut chosen: Vec<Arc<Sub>> = Vec::new();
        let mut groups: HashMap<&str, Vec<&Arc<Sub>>> = HashMap::new();
        let exact = table.exact.get(msg.subject.as_str()).into_iter().flatten();
        let patterns = table
            .patterns
            .iter()
            .filter(|s| s.pattern.matches(msg.subject.as_str()));
        for sub in exact.chain(patterns) {
            match &sub.group {
                None => chosen.push(sub.clone()),
                Some(g) => groups.entry(g.as_str()).or_default().push(sub),
            }
        }
        let picks: Vec<(String, Arc<Sub>)> = groups
            .into_iter()
            .map(|(g, members)| {
                let n = table.rr.get(g).copied().unwrap_or(0);
                (g.to_owned(), members[n % members.len()].clone())
            })
            .collect();
        for (g, sub) in picks {
            *table.rr.entry(g).or_default() += 1;
            chosen.push(sub);
        }
        drop(table);
        let n = chosen.len();
        if let Some((last, rest)) = chosen.split_last() {
            for sub in rest {
                sub.offer(msg.clone());
            }
            last.offer(msg);
        }
        n
    }
}

#[async_trait::async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BusError> {
        self.deliver(BusMessage {
            subject: subject.clone(),
            payload,
            reply: None,
        });
        Ok(())
    }

    async fn subscribe(
        &self,
        pattern: &Subject,
        capacity: usize,
    ) -> Result<Subscription, BusError> {
        Ok(self.add(pattern, None, capacity))
    }

    async fn queue_subscribe(
        &self,
        pattern: &Subject,
        group: &str,
        capacity: usize,
    ) -> Result<Subscription, BusError> {
        Ok(self.add(pattern, Some(group), capacity))
    }

    async fn start_request(
        &self,
        subject: &Subject,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<PendingReply, BusError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner
            .inboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let delivered = self.deliver(BusMessage {
            subject: subject.clone(),
            payload,
            reply: Some(Subject::inbox(INBOX_PREFIX, id)),
        });
        let inner = self.inner.clone();
        let forget = move || {
            inner
                .inboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        };
        if delivered == 0 {
            forget();
            return Err(BusError::NoResponders(subject.to_string()));
        }
        Ok(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                // The responder dropped the request without answering.
                Ok(Err(_)) => {
                    forget();
                    Err(BusError::Closed)
                }
                Err(_) => {
                    forget();
                    Err(BusError::Timeout(timeout))
                }
            }
        }
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply;
    use futures::StreamExt;
    use natter_proto::{Partition, UserId};

    fn next_msg(ev: Option<BusEvent>) -> BusMessage {
        match ev {
            Some(BusEvent::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn publish_reaches_exact_and_wildcard_subscribers() {
        let bus = InProcessBus::new();
        let mut exact = bus.subscribe(&Subject::user(UserId(1)), 8).await.unwrap();
        let mut wild = bus
            .subscribe(&Subject::from_wire("natter.user.*"), 8)
            .await
            .unwrap();
        let mut other = bus.subscribe(&Subject::user(UserId(2)), 8).await.unwrap();
        bus.publish(&Subject::user(UserId(1)), Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(next_msg(exact.next().await).payload, "x");
        assert_eq!(next_msg(wild.next().await).payload, "x");
        bus.publish(&Subject::user(UserId(2)), Bytes::from_static(b"y"))
            .await
            .unwrap();
        assert_eq!(next_msg(other.next().await).payload, "y");
        assert_eq!(next_msg(wild.next().await).payload, "y");
    }

    #[tokio::test]
    async fn queue_groups_share_the_work() {
        let bus = InProcessBus::new();
        let mut a = bus
            .queue_subscribe(&Subject::sync(), "svc", 8)
            .await
            .unwrap();
        let mut b = bus
            .queue_subscribe(&Subject::sync(), "svc", 8)
            .await
            .unwrap();
        for _ in 0..4 {
            bus.publish(&Subject::sync(), Bytes::new()).await.unwrap();
        }
        for s in [&mut a, &mut b] {
            for _ in 0..2 {
                next_msg(s.next().await);
            }
        }
    }

    #[tokio::test]
    async fn requests_get_replies_in_order_and_time_out() {
        let bus = InProcessBus::new();
        let subject = Subject::partition(Partition::new(1).unwrap());
        let mut server = bus.subscribe(&subject, 8).await.unwrap();
        let b2 = bus.clone();
        let responder = tokio::spawn(async move {
            while let Some(BusEvent::Message(m)) = server.next().await {
                let mut out = b"re:".to_vec();
                out.extend_from_slice(&m.payload);
                reply(&b2, &m, Bytes::from(out)).await.unwrap();
            }
        });
        let one = bus
            .start_request(&subject, Bytes::from_static(b"1"), Duration::from_secs(5))
            .await
            .unwrap();
        let two = bus
            .start_request(&subject, Bytes::from_static(b"2"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(two.await.unwrap(), "re:2");
        assert_eq!(one.await.unwrap(), "re:1");
        responder.abort();
        let none = bus
            .request(&Subject::sync(), Bytes::new(), Duration::from_millis(50))
            .await;
        assert!(matches!(none, Err(BusError::NoResponders(_))), "{none:?}");
        let _silent = bus.subscribe(&Subject::history(), 8).await.unwrap();
        let late = bus
            .request(&Subject::history(), Bytes::new(), Duration::from_millis(50))
            .await;
        assert!(matches!(late, Err(BusError::Timeout(_))), "{late:?}");
    }

    #[tokio::test]
    async fn a_full_subscriber_lags_instead_of_blocking() {
        let bus = InProcessBus::new();
        let mut slow = bus.subscribe(&Subject::user(UserId(9)), 2).await.unwrap();
        for i in 0..5u8 {
            bus.publish(&Subject::user(UserId(9)), Bytes::from(vec![i]))
                .await
                .unwrap();
        }
        assert!(matches!(slow.next().await, Some(BusEvent::Lagged)));
        assert_eq!(next_msg(slow.next().await).payload[..], [0]);
        assert_eq!(next_msg(slow.next().await).payload[..], [1]);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let bus = InProcessBus::new();
        let sub = bus.subscribe(&Subject::user(UserId(3)), 2).await.unwrap();
        drop(sub);
        assert!(bus.inner.subs.lock().unwrap().exact.is_empty());
    }
}
