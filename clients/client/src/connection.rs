//! One WebSocket connection, frame by frame: connect with a bearer token and a
//! subprotocol, read the Welcome, send ClientFrames, receive ServerFrames. A close from
//! the server surfaces as [`ConnectionError::Closed`] with its code, so callers (and
//! tests) can tell a revoked device (4001) from a crash (1006). No retries, no state:
//! [`crate::Client`] builds those on top.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use natter_proto::{
    codec::{Encoded, WireFormat},
    v1::{self, ClientFrame, ServerFrame, server_frame},
};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        self, Message,
        client::IntoClientRequest as _,
        error::ProtocolError,
        http::{HeaderValue, Request, header},
    },
};

use crate::error::ConnectionError;

/// The raw WebSocket stream type.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for the Welcome after the upgrade.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code reported when the connection ended without a close frame.
pub const ABNORMAL_CLOSE: u16 = 1006;

/// Builds the upgrade request: `Authorization: Bearer <token>` when a token is given,
/// `Sec-WebSocket-Protocol` when a format is given.
pub fn ws_request(
    url: &str,
    token: Option<&str>,
    format: Option<WireFormat>,
) -> Result<Request<()>, ConnectionError> {
    let mut req = url
        .into_client_request()
        .map_err(|e| ConnectionError::Request(format!("{url}: {e}")))?;
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| ConnectionError::Request(format!("token: {e}")))?;
        req.headers_mut().insert(header::AUTHORIZATION, value);
    }
    if let Some(format) = format {
        req.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(format.subprotocol()),
        );
    }
    Ok(req)
}

/// Encodes a client frame as a WebSocket message in `format`.
pub fn encode(format: WireFormat, frame: &ClientFrame) -> Message {
    match format.encode(frame) {
        Encoded::Binary(b) => Message::Binary(b),
        Encoded::Text(t) => Message::Text(t.into()),
    }
}

/// What one WebSocket message from the server means.
#[derive(Debug)]
pub(crate) enum Incoming {
    Frame(ServerFrame),
    Closed {
        code: u16,
        reason: String,
    },
    /// Control frames (ping/pong) that need nothing from us.
    Nothing,
}

pub(crate) fn decode(format: WireFormat, msg: Message) -> Result<Incoming, ConnectionError> {
    Ok(match msg {
        Message::Binary(b) => Incoming::Frame(format.decode_binary(&b)?),
        Message::Text(t) => Incoming::Frame(format.decode_text(t.as_str())?),
        Message::Close(frame) => match frame {
            Some(f) => Incoming::Closed {
                code: f.code.into(),
                reason: f.reason.to_string(),
            },
            // 1005: "no status received".
            None => Incoming::Closed {
                code: 1005,
                reason: String::new(),
            },
        },
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Nothing,
    })
}

/// Maps the end of a WebSocket stream (an error or `None`) to a `Closed` error.
pub(crate) fn ended(err: Option<tungstenite::Error>) -> ConnectionError {
    match err {
        None => ConnectionError::Closed {
            code: ABNORMAL_CLOSE,
            reason: "connection ended".into(),
        },
        Some(
            e @ (tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Io(_)
            | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)),
        ) => ConnectionError::Closed {
            code: ABNORMAL_CLOSE,
            reason: e.to_string(),
        },
        Some(e) => ConnectionError::WebSocket(Box::new(e)),
    }
}

/// A connected, welcomed WebSocket.
#[derive(Debug)]
pub struct Connection {
    ws: WsStream,
    format: WireFormat,
}

impl Connection {
    /// Connects to `ws_url` as the device of `token`, speaking `format`, and reads the Welcome.
    pub async fn connect(
        ws_url: &str,
        token: &str,
        format: WireFormat,
    ) -> Result<(Connection, v1::Welcome), ConnectionError> {
        Self::connect_request(ws_request(ws_url, Some(token), Some(format))?, format).await
    }

    /// Connects with a prepared upgrade request (for odd cases: no token, a token in the
    /// query string, no subprotocol), expecting frames in `format`.
    pub async fn connect_request(
        request: Request<()>,
        format: WireFormat,
    ) -> Result<(Connection, v1::Welcome), ConnectionError> {
        let mut conn = Self::upgrade(request, format).await?;
        let first = conn.recv_timeout(WELCOME_TIMEOUT).await?;
        match first.body {
            Some(server_frame::Body::Welcome(w)) => Ok((conn, w)),
            other => Err(ConnectionError::NoWelcome(format!("{other:?}"))),
        }
    }

    /// Performs the upgrade only, without reading the Welcome.
    pub async fn upgrade(
        request: Request<()>,
        format: WireFormat,
    ) -> Result<Connection, ConnectionError> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _response)) => Ok(Connection { ws, format }),
            Err(tungstenite::Error::Http(resp)) => Err(ConnectionError::Rejected {
                status: resp.status().as_u16(),
                body: resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// Sends one client frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ConnectionError> {
        let msg = encode(self.format, frame);
        self.send_raw(msg).await
    }

    /// Sends any WebSocket message as is (for tests of malformed input). A raw frame
    /// (`Message::Frame`) is written unchecked, e.g. a text frame that is not UTF-8.
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ConnectionError> {
        self.ws.send(msg).await.map_err(|e| ended(Some(e)))
    }

    /// The next server frame. Control frames are skipped; a close (or the end of the
    /// stream) is `Err(ConnectionError::Closed { code, .. })`.
    pub async fn recv(&mut self) -> Result<ServerFrame, ConnectionError> {
        loop {
            match self.ws.next().await {
                Some(Ok(msg)) => match decode(self.format, msg)? {
                    Incoming::Frame(f) => return Ok(f),
                    Incoming::Closed { code, reason } => {
                        return Err(ConnectionError::Closed { code, reason });
                    }
                    Incoming::Nothing => {}
                },
                Some(Err(e)) => return Err(ended(Some(e))),
                None => return Err(ended(None)),
            }
        }
    }

    /// Like [`Connection::recv`], giving up after `timeout`.
    pub async fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<ServerFrame, ConnectionError> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| ConnectionError::Timeout(timeout))?
    }

    /// The next frame that is not a push (id 0), i.e. a reply; pushes are dropped.
    pub async fn recv_reply(&mut self, timeout: Duration) -> Result<ServerFrame, ConnectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.recv_timeout(left).await?;
            if f.id != 0 {
                return Ok(f);
            }
        }
    }

    /// Closes the connection with a normal close frame.
    pub async fn close(mut self) -> Result<(), ConnectionError> {
        match self.ws.close(None).await {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Ok(()),
            Err(e) => Err(ended(Some(e))),
        }
    }

    /// The underlying stream, for splitting.
    pub fn into_inner(self) -> WsStream {
        self.ws
    }
}
