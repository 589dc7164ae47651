//! Traffic for cluster tests: clients that ride out faults, a background sender of
//! numbered messages, and the checks that what was acked is stored once, in order.

use std::{collections::HashSet, sync::Arc, time::Duration};

use natter_client::{Client, ClientOptions, Event, UserId, v1, v1::MessageKind};
use tokio::sync::Mutex;

use super::{bounded, conv, eventually, opts};

/// Options for cluster clients: reconnect by themselves (to another edge when theirs
/// is gone) and keep retrying sends long enough to outlast a lease hand-over.
pub fn cluster_opts() -> ClientOptions {
    ClientOptions {
        auto_reconnect: true,
        request_timeout: Duration::from_secs(3),
        send_deadline: Duration::from_secs(60),
        ..opts()
    }
}

/// Sends `n` numbered messages from `from` to `to`, one after another, each retried with
/// its own client_msg_id until acked. Returns the acks in order.
pub async fn send_numbered(from: &Client, to: UserId, tag: &str, n: usize) -> Vec<v1::Ack> {
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{tag}-{i:04}");
        let ack = from
            .send(
                to,
                MessageKind::Text,
                format!("{tag} {i}"),
                Some(id.clone()),
            )
            .await
            .unwrap_or_else(|e| panic!("send {id} was never acked: {e}"));
        assert_eq!(ack.client_msg_id, id);
        acks.push(ack);
    }
    acks
}

/// A device sending `n` numbered messages (`m-0000`, ...) in the background, one after
/// another, each retried with its own client_msg_id until acked.
pub struct Sender {
    task: tokio::task::JoinHandle<()>,
    acks: Arc<Mutex<Vec<v1::Ack>>>,
}

impl Sender {
    pub fn start(from: Arc<Client>, to: UserId, n: usize) -> Sender {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let acks = acks.clone();
            tokio::spawn(async move {
                for i in 0..n {
                    let id = format!("m-{i:04}");
                    let ack = from
                        .send(to, MessageKind::Text, format!("m {i}"), Some(id.clone()))
                        .await
                        .unwrap_or_else(|e| panic!("{id} never acked: {e}"));
                    acks.lock().await.push(ack);
                }
            })
        };
        Sender { task, acks }
    }

    /// How many are acked so far.
    pub async fn count(&self) -> usize {
        self.acks.lock().await.len()
    }

    /// Waits until at least `n` messages are acked.
    pub async fn acked(&self, n: usize) {
        eventually(Duration::from_secs(60), &format!("{n} acks"), || {
            let acks = self.acks.clone();
            async move { acks.lock().await.len() >= n }
        })
        .await
    }

    /// Waits for every send to be acked; the acks in order.
    pub async fn finish(self) -> Vec<v1::Ack> {
        self.task.await.expect("every send is acked");
        self.acks.lock().await.clone()
    }
}

/// Messages from `sender` as the device yields them, until `n` have arrived; asserts
/// none is yielded twice.
pub async fn receive_from(
    client: &Client,
    sender: UserId,
    n: usize,
    secs: u64,
) -> Vec<v1::Message> {
    let mut got: Vec<v1::Message> = Vec::new();
    let mut seen = HashSet::new();
    bounded(secs, async {
        while got.len() < n {
            match client.recv().await {
                Some(Event::Message(m)) if m.sender_user == sender.get() => {
                    assert!(seen.insert(m.seq), "seq {} shown twice", m.seq);
                    got.push(m);
                }
                Some(_) => {}
                None => panic!("the client shut down"),
            }
        }
    })
    .await;
    got
}

/// The conversation's whole history as `client` reads it from the server.
pub async fn history(client: &Client, a: UserId, b: UserId) -> Vec<v1::Message> {
    client
        .full_history(&conv(a, b), 100)
        .await
        .expect("history is readable")
}

/// Every acked message is in the history, once, at its acked seq, and the history is
/// 1..=n with no gap.
pub fn assert_all_acked_stored(history: &[v1::Message], acks: &[v1::Ack]) {
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> = (1..=history.len() as u64).collect();
    assert_eq!(seqs, expected, "history must be gap-free");
    let ids: HashSet<&str> = history.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(ids.len(), history.len(), "a client_msg_id was stored twice");
    for ack in acks {
        let m = history
            .iter()
            .find(|m| m.seq == ack.seq)
            .unwrap_or_else(|| panic!("acked seq {} is not stored", ack.seq));
        assert_eq!(m.client_msg_id, ack.client_msg_id, "seq {}", ack.seq);
        assert_eq!(m.message_id, ack.message_id, "seq {}", ack.seq);
    }
}
