//! Frames in, frames out, and nothing else: turns WebSocket messages into client frames
//! (or into the error or close they deserve) and writes server frames, the connection
//! task's own and those queued for it.

use std::{borrow::Cow, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use natter_bus::queue;
use natter_proto::{
    ErrorCode, close_code,
    codec::{Encoded, WireFormat},
    v1::{ClientFrame, ServerFrame},
};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};

/// How long a graceful close waits for the client's Close.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// What one read from the socket amounts to.
pub(crate) enum Inbound {
    /// A decoded client frame.
    Frame(ClientFrame),
    /// A frame that cannot be used; the client gets an error frame and the connection
    /// stays open.
    Bad(ErrorCode, String),
    /// Something that only proves the client is alive (pong, ping).
    Alive,
    /// The client closed, or the socket is gone.
    Closed,
    /// A violation that ends the connection with this close code.
    Fatal(u16, &'static str),
}

pub(crate) fn classify(
    read: Option<Result<Message, axum::Error>>,
    format: WireFormat,
    max_frame: usize,
) -> Inbound {
    let msg = match read {
        None => return Inbound::Closed,
        Some(Ok(msg)) => msg,
        Some(Err(e)) => return classify_error(e),
    };
    match msg {
        Message::Binary(data) if data.len() > max_frame => too_large(data.len(), max_frame),
        Message::Text(text) if text.len() > max_frame => too_large(text.len(), max_frame),
        Message::Binary(data) => match format.decode_binary::<ClientFrame>(&data) {
            Ok(frame) => Inbound::Frame(frame),
            Err(e) => Inbound::Bad(ErrorCode::BadFrame, e.to_string()),
        },
        Message::Text(text) => match format.decode_text::<ClientFrame>(text.as_str()) {
            Ok(frame) => Inbound::Frame(frame),
            Err(e) => Inbound::Bad(ErrorCode::BadFrame, e.to_string()),
        },
        Message::Ping(_) | Message::Pong(_) => Inbound::Alive,
        Message::Close(_) => Inbound::Closed,
    }
}

fn too_large(len: usize, max: usize) -> Inbound {
    Inbound::Bad(
        ErrorCode::FrameTooLarge,
        format!("frame of {len} bytes is above the {max} byte limit"),
    )
}

fn classify_error(e: axum::Error) -> Inbound {
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Utf8(_)) => {
            Inbound::Fatal(close_code::INVALID_PAYLOAD, "text frame is not valid UTF-8")
        }
        Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
            Inbound::Fatal(close_code::TOO_BIG, "frame above the hard size limit")
        }
        Some(WsError::Protocol(_)) => {
            Inbound::Fatal(close_code::PROTOCOL_VIOLATION, "WebSocket protocol error")
        }
        // Reset, broken pipe, already closed: nobody is left to tell.
        _ => Inbound::Closed,
    }
}

/// A handle on a connection's bounded outbound queue, for work that runs beside the
/// connection loop (a Sync streaming its pages); clones feed the same socket.
#[derive(Clone)]
pub(crate) struct Queue {
    format: WireFormat,
    tx: queue::Sender<Message>,
    send_timeout: Duration,
}

/// The queue is full and stayed full (the client is not reading), or the socket is gone.
#[derive(Debug)]
pub(crate) struct SlowConsumer;

impl Queue {
    /// Queues a frame, waiting up to the send timeout for room.
    pub(crate) async fn send(&self, frame: &ServerFrame) -> Result<(), SlowConsumer> {
        crate::metrics::frame_out(frame);
        let msg = message(self.format.encode(frame));
        match tokio::time::timeout(self.send_timeout, self.tx.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            // Timed out, or the connection is gone: either way stop feeding it.
            _ => Err(SlowConsumer),
        }
    }
}

fn message(encoded: Encoded) -> Message {
    match encoded {
        Encoded::Binary(b) => Message::Binary(b),
        Encoded::Text(t) => Message::Text(Utf8Bytes::from(t)),
    }
}

/// The connection's socket, owned by its one task: the task reads from `ws`, writes its
/// own frames directly and writes what others queued (`pending`) when it wakes for
/// them. One task and no writer channel per connection: an idle connection is the
/// socket, its read buffer and the task's state, nothing else.
pub(crate) struct Socket {
    pub(crate) ws: WebSocket,
    /// Frames queued through [`Queue`] handles, written in order before any frame the
    /// task writes itself.
    pub(crate) pending: queue::Receiver<Message>,
    format: WireFormat,
    write_timeout: Duration,
}

/// Wraps `ws` for one connection task; the [`Queue`] feeds it from elsewhere.
pub(crate) fn socket(
    ws: WebSocket,
    format: WireFormat,
    capacity: usize,
    write_timeout: Duration,
) -> (Socket, Queue) {
    let (tx, pending) = queue::bounded(capacity);
    (
        Socket {
            ws,
            pending,
            format,
            write_timeout,
        },
        Queue {
            format,
            tx,
            send_timeout: write_timeout,
        },
    )
}

impl Socket {
    pub(crate) fn format(&self) -> WireFormat {
        self.format
    }

    /// Writes a frame (after anything queued), giving up after the write timeout: a
    /// client that does not read for that long is a slow consumer.
    pub(crate) async fn send(&mut self, frame: &ServerFrame) -> Result<(), SlowConsumer> {
        crate::metrics::frame_out(frame);
        self.write(Some(message(self.format.encode(frame)))).await
    }

    pub(crate) async fn send_encoded(&mut self, encoded: Encoded) -> Result<(), SlowConsumer> {
        crate::metrics::push_out();
        self.write(Some(message(encoded))).await
    }

    /// Writes a message encoded elsewhere (a broadcast, shared by every connection).
    pub(crate) async fn write_message(&mut self, msg: Message) -> Result<(), SlowConsumer> {
        self.write(Some(msg)).await
    }

    /// Sends a server ping (the client's pong proves it is alive).
    pub(crate) async fn ping(&mut self) -> Result<(), SlowConsumer> {
        self.write(Some(Message::Ping(Bytes::new()))).await
    }

    /// Writes `first` (just taken off the queue by the caller) and everything queued
    /// behind it, with one flush.
    pub(crate) async fn write_queued(&mut self, first: Message) -> Result<(), SlowConsumer> {
        self.write_around(Some(first), None).await
    }

    /// Writes everything queued, then `last` if given, with one flush.
    async fn write(&mut self, last: Option<Message>) -> Result<(), SlowConsumer> {
        self.write_around(None, last).await
    }

    /// Writes `first`, the queue, then `last`, with one flush, within the write timeout:
    /// a client that does not read for that long is a slow consumer.
    async fn write_around(
        &mut self,
        first: Option<Message>,
        last: Option<Message>,
    ) -> Result<(), SlowConsumer> {
        let Socket {
            ws,
            pending,
            write_timeout,
            ..
        } = self;
        let all = async {
            if let Some(msg) = first {
                ws.feed(msg).await?;
            }
            while let Some(msg) = pending.try_recv() {
                ws.feed(msg).await?;
            }
            if let Some(msg) = last {
                ws.feed(msg).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(*write_timeout, all).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(SlowConsumer),
        }
    }

    /// Closes with `code` and `reason` (at most 123 bytes): after everything queued
    /// (`graceful`), or at once, dropping it (slow consumer, revoked token, kick). Best
    /// effort: a client too slow to read may never see the close frame.
    pub(crate) async fn close(mut self, code: u16, reason: Cow<'static, str>, graceful: bool) {
        if !graceful {
            while self.pending.try_recv().is_some() {}
        }
        let reason = match reason {
            Cow::Borrowed(r) => Utf8Bytes::from_static(r),
            Cow::Owned(r) => Utf8Bytes::from(r),
        };
        let frame = Message::Close(Some(CloseFrame { code, reason }));
        if self.write(Some(frame)).await.is_ok() {
            if graceful {
                // Finish the closing handshake: read (and drop) what the client sent
                // meanwhile until its Close. Closing with unread bytes would make the
                // kernel reset the connection, and the client could lose our Close
                // frame (and the code telling it why).
                let deadline =
                    tokio::time::Instant::now() + CLOSE_HANDSHAKE.min(self.write_timeout);
                while let Ok(Some(Ok(msg))) =
                    tokio::time::timeout_at(deadline, self.ws.next()).await
                {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            }
            // The peer may already be gone; closing a dead socket has nothing to report.
            tokio::time::timeout(self.write_timeout, self.ws.close())
                .await
                .ok();
        }
    }
}
