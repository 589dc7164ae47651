//! A bounded multi-producer, single-consumer queue that holds memory only while it holds
//! items.
//!
//! tokio's `mpsc` allocates its first block of 32 slots when the channel is created and
//! keeps it: for a connection's push queue that is 1.5–2.5 KiB per connection whether
//! anything is ever pushed or not, most of an idle connection's footprint. Here an empty
//! queue is a few words; the buffer is allocated by the first push and freed when the
//! consumer drains it. Fan-out of a push to a connection is a mutex, a `VecDeque` push and
//! a wake-up, about what tokio's channel costs.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

/// Why an item was not queued; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// `capacity` items are waiting.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Wakes the receiver: an item arrived or the last sender left.
    filled: Notify,
    /// Wakes a sender: room was made or the receiver left.
    drained: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // The critical sections only move items in and out of the deque; a panic inside
        // one cannot leave it half-updated, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates a queue holding at most `capacity` items (at least 1).
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver: true,
        }),
        capacity: capacity.max(1),
        filled: Notify::new(),
        drained: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

/// The sending end; clones send into the same queue.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut s = self.shared.lock();
            s.senders -= 1;
            s.senders == 0
        };
        if last {
            self.shared.filled.notify_one();
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item` if there is room, without waiting.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        {
            let mut s = self.shared.lock();
            if !s.receiver {
                return Err(TrySendError::Closed(item));
            }
            if s.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full(item));
            }
            s.items.push_back(item);
        }
        self.shared.filled.notify_one();
        Ok(())
    }

    /// Queues `item`, waiting for room; `Err(item)` if the receiver is gone.
    pub async fn send(&self, mut item: T) -> Result<(), T> {
        loop {
            // Registered before the check, so room made in between is not missed.
            let room = self.shared.drained.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        !self.shared.lock().receiver
    }
}

/// The receiving end.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut s = self.shared.lock();
            s.receiver = false;
            std::mem::take(&mut s.items)
        };
        // Items are dropped outside the lock; every waiting sender learns it is closed.
        drop(dropped);
        self.shared.drained.notify_waiters();
    }
}

impl<T> Receiver<T> {
    /// Takes the next item, if one is waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        let item = {
            let mut s = self.shared.lock();
            let item = s.items.pop_front();
            if s.items.is_empty() && s.items.capacity() > 0 {
                // Drained: give the buffer back, an idle queue costs nothing.
                s.items = VecDeque::new();
            }
            item
        };
        if item.is_some() {
            self.shared.drained.notify_one();
        }
        item
    }

    /// The next item; `None` once every sender is gone and the queue is empty.
    /// Cancel-safe: an item is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            if self.shared.lock().senders == 0 {
                return self.try_recv();
            }
            // `notify_one` keeps a permit when nobody waits, so a push between the check
            // above and this await still wakes us.
            self.shared.filled.notified().await;
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.shared.lock().items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_come_out_in_order_and_the_buffer_is_freed_when_drained() {
        let (tx, mut rx) = bounded(4);
        for i in 0..4 {
            tx.try_send(i).expect("room");
        }
        assert_eq!(tx.try_send(9), Err(TrySendError::Full(9)));
        assert_eq!(rx.len(), 4);
        for i in 0..4 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert!(rx.is_empty());
        assert_eq!(
            rx.shared.lock().items.capacity(),
            0,
            "drained queue holds no buffer"
        );
    }

    #[tokio::test]
    async fn send_waits_for_room() {
        let (tx, mut rx) = bounded(1);
        tx.try_send(1).expect("room");
        let waiting = tokio::spawn(async move {
            tx.send(2).await.expect("receiver alive");
            tx
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "full queue: send waits");
        assert_eq!(rx.recv().await, Some(1));
        let _tx = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("send completes once there is room")
            .expect("task");
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn recv_ends_when_every_sender_is_gone() {
        let (tx, mut rx) = bounded::<u8>(2);
        let tx2 = tx.clone();
        tx.try_send(1).expect("room");
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        let pending = tokio::time::timeout(Duration::from_millis(20), rx.recv()).await;
        assert!(pending.is_err(), "a sender is still alive");
        drop(tx2);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn senders_learn_the_receiver_is_gone() {
        let (tx, rx) = bounded(1);
        tx.try_send(1).expect("room");
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        let res = tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(res, Err(2));
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
    }

    #[tokio::test]
    async fn a_wakeup_between_check_and_wait_is_not_lost() {
        let (tx, mut rx) = bounded(1024);
        let producer = tokio::spawn(async move {
            for i in 0..10_000u32 {
                tx.send(i).await.expect("receiver alive");
            }
        });
        let mut expect = 0;
        while let Some(i) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no lost wake-up")
        {
            assert_eq!(i, expect);
            expect += 1;
        }
        assert_eq!(expect, 10_000);
        producer.await.expect("producer");
    }
}
