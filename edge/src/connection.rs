//! Frames in, frames out, and nothing else: turns WebSocket messages into client frames
//! (or into the error or close they deserve) and runs the writer half of the socket
//! behind a bounded queue.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::{SinkExt, stream::SplitSink};
use natter_proto::{
    ErrorCode, close_code,
    codec::{Encoded, WireFormat},
    v1::{ClientFrame, ServerFrame},
};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};

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

/// A handle on a connection's bounded outbound queue; clones feed the same socket.
#[derive(Clone)]
pub(crate) struct Queue {
    format: WireFormat,
    tx: mpsc::Sender<Message>,
    send_timeout: Duration,
}

/// The sending half of a connection: the queue plus the right to close the socket.
pub(crate) struct Outbound {
    pub(crate) queue: Queue,
    abort: Option<oneshot::Sender<(u16, &'static str)>>,
}

/// The queue is full and stayed full (the client is not reading), or the socket is gone.
#[derive(Debug)]
pub(crate) struct SlowConsumer;

impl Queue {
    pub(crate) fn format(&self) -> WireFormat {
        self.format
    }

    /// Queues a frame, waiting up to the send timeout for room.
    pub(crate) async fn send(&self, frame: &ServerFrame) -> Result<(), SlowConsumer> {
        self.send_encoded(self.format.encode(frame)).await
    }

    pub(crate) async fn send_encoded(&self, encoded: Encoded) -> Result<(), SlowConsumer> {
        let msg = match encoded {
            Encoded::Binary(b) => Message::Binary(b),
            Encoded::Text(t) => Message::Text(Utf8Bytes::from(t)),
        };
        match tokio::time::timeout(self.send_timeout, self.tx.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            // Timed out, or the writer is gone (socket dead): either way stop feeding it.
            _ => Err(SlowConsumer),
        }
    }

    /// Sends a server ping (the client's pong proves it is alive).
    pub(crate) fn ping(&self) -> Result<(), SlowConsumer> {
        self.tx
            .try_send(Message::Ping(Bytes::new()))
            .map_err(|_| SlowConsumer)
    }
}

impl Outbound {
    /// Closes after everything already queued has been written.
    pub(crate) async fn close(mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let queued = tokio::time::timeout(self.queue.send_timeout, self.queue.tx.send(frame)).await;
        if !matches!(queued, Ok(Ok(()))) {
            self.close_now(code, reason);
        }
    }

    /// Closes at once, dropping whatever is queued (slow consumer, revoked token).
    pub(crate) fn close_now(&mut self, code: u16, reason: &'static str) {
        if let Some(abort) = self.abort.take() {
            // The writer may have exited already (socket gone); then there is nothing to close.
            abort.send((code, reason)).ok();
        }
    }
}

/// Starts the writer task for `sink` and returns its queue.
pub(crate) fn spawn_writer(
    sink: SplitSink<WebSocket, Message>,
    format: WireFormat,
    capacity: usize,
    send_timeout: Duration,
) -> (Outbound, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity);
    let (abort_tx, abort_rx) = oneshot::channel();
    let task = tokio::spawn(write_loop(sink, rx, abort_rx, send_timeout));
    let outbound = Outbound {
        queue: Queue {
            format,
            tx,
            send_timeout,
        },
        abort: Some(abort_tx),
    };
    (outbound, task)
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    mut abort: oneshot::Receiver<(u16, &'static str)>,
    write_timeout: Duration,
) {
    // The abort handle is dropped when the connection closes gracefully (its close frame
    // is queued); only a sent abort means "close now", so stop watching once it is gone.
    let mut abort_open = true;
    loop {
        tokio::select! {
            biased;
            closing = &mut abort, if abort_open => {
                let Ok((code, reason)) = closing else {
                    abort_open = false;
                    continue;
                };
                let frame = Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }));
                // Best effort: a client too slow to read may never see it.
                tokio::time::timeout(write_timeout, sink.send(frame)).await.ok();
                break;
            }
            next = rx.recv() => {
                let Some(msg) = next else { break };
                let is_close = matches!(msg, Message::Close(_));
                match tokio::time::timeout(write_timeout, sink.send(msg)).await {
                    Ok(Ok(())) if !is_close => {}
                    _ => break,
                }
            }
        }
    }
    // The peer may already be gone; closing a dead socket has nothing to report.
    tokio::time::timeout(write_timeout, sink.close()).await.ok();
}
