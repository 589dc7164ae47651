//! Frames for every connection of this node (announcements from the operators): one
//! subscription to `Subject::broadcast()` per edge, not one per connection. Its task
//! encodes each frame once per wire format and hands it to the connection tasks
//! through a `tokio::sync::broadcast` channel; each connection holds a receiver (a
//! pointer and a position) and writes what it receives. A connection that falls more
//! than [`CHANNEL_CAPACITY`] frames behind skips the oldest (clients list missed
//! announcements with `GET /v1/announcements`).

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{Message, Utf8Bytes};
use futures::StreamExt as _;
use natter_bus::{Bus, BusEvent};
use natter_proto::{
    Subject,
    codec::{Encoded, WireFormat},
    v1::ServerFrame,
};
use prost::Message as _;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Frames buffered for the connections (announcements are rare).
pub(crate) const CHANNEL_CAPACITY: usize = 16;
/// Bus messages buffered for the forwarding task.
const SUBSCRIPTION_CAPACITY: usize = 64;
/// Longest wait between two tries to subscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One frame for every connection, encoded once per wire format. Cloning it clones
/// two reference-counted buffers.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    binary: Message,
    text: Message,
}

impl Shared {
    fn new(frame: &ServerFrame) -> Shared {
        let [binary, text] = [WireFormat::Proto, WireFormat::Json].map(|f| match f.encode(frame) {
            Encoded::Binary(b) => Message::Binary(b),
            Encoded::Text(t) => Message::Text(Utf8Bytes::from(t)),
        });
        Shared { binary, text }
    }

    /// The WebSocket message for a connection speaking `format`.
    pub(crate) fn message(&self, format: WireFormat) -> Message {
        match format {
            WireFormat::Proto => self.binary.clone(),
            WireFormat::Json => self.text.clone(),
        }
    }
}

/// Starts the forwarding task: it subscribes `Subject::broadcast()` (again after an
/// error or a closed subscription, backing off up to [`MAX_BACKOFF`]) until `stop` is
/// cancelled. Connections receive through `sender.subscribe()`.
pub(crate) fn start(
    bus: Arc<dyn Bus>,
    stop: CancellationToken,
) -> (broadcast::Sender<Shared>, tokio::task::JoinHandle<()>) {
    let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
    let task = tokio::spawn(forward(bus, sender.clone(), stop));
    (sender, task)
}

async fn forward(bus: Arc<dyn Bus>, sender: broadcast::Sender<Shared>, stop: CancellationToken) {
    let subject = Subject::broadcast();
    let mut backoff = Duration::from_millis(250);
    loop {
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            s = bus.subscribe(&subject, SUBSCRIPTION_CAPACITY) => s,
        };
        match subscribed {
            Ok(mut subscription) => {
                backoff = Duration::from_millis(250);
                loop {
                    let event = tokio::select! {
                        () = stop.cancelled() => return,
                        event = subscription.next() => event,
                    };
                    match event {
                        Some(BusEvent::Message(msg)) => relay(&sender, &msg.payload),
                        Some(BusEvent::Lagged) => {
                            // Missed announcements are listed by GET /v1/announcements.
                            tracing::warn!("the broadcast subscription lagged");
                        }
                        None => break,
                    }
                }
                tracing::warn!("the broadcast subscription ended; subscribing again");
            }
            Err(e) => {
                tracing::warn!(edge.error = %e, "could not subscribe to broadcasts; retrying");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Hands one bus message (an encoded `ServerFrame`) to every connection.
fn relay(sender: &broadcast::Sender<Shared>, payload: &[u8]) {
    let mut frame = match ServerFrame::decode(payload) {
        Ok(frame) if frame.body.is_some() => frame,
        Ok(_) => {
            tracing::warn!("a broadcast frame without a body");
            return;
        }
        Err(e) => {
            tracing::warn!(edge.error = %e, "an undecodable broadcast frame");
            return;
        }
    };
    // A push: not the answer to any request.
    frame.id = 0;
    // Err only when no connection is open here: nobody to tell.
    let _ = sender.send(Shared::new(&frame));
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_proto::v1::{Announcement, server_frame::Body};

    #[test]
    fn frames_are_encoded_once_per_format() {
        let frame = ServerFrame {
            id: 0,
            body: Some(Body::Announcement(Announcement {
                id: 7,
                text: "hello".into(),
                created_at_ms: 9,
            })),
        };
        let shared = Shared::new(&frame);
        match shared.message(WireFormat::Proto) {
            Message::Binary(b) => assert_eq!(ServerFrame::decode(b).unwrap(), frame),
            other => panic!("{other:?}"),
        }
        match shared.message(WireFormat::Json) {
            Message::Text(t) => {
                let back: ServerFrame = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(back, frame);
                assert!(t.as_str().contains("\"announcement\""), "{}", t.as_str());
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn only_frames_with_a_body_are_relayed_as_pushes() {
        let (sender, mut rx) = broadcast::channel(4);
        relay(&sender, &[0xff, 0xff]);
        relay(&sender, &ServerFrame::default().encode_to_vec());
        let frame = ServerFrame {
            id: 5,
            body: Some(Body::Announcement(Announcement::default())),
        };
        relay(&sender, &frame.encode_to_vec());
        let got = rx.try_recv().unwrap();
        match got.message(WireFormat::Proto) {
            Message::Binary(b) => assert_eq!(ServerFrame::decode(b).unwrap().id, 0),
            other => panic!("{other:?}"),
        }
        assert!(rx.try_recv().is_err(), "nothing else was relayed");
    }
}
