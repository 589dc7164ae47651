//! One WebSocket connection, frame by frame: connect with a bearer token and a
//! subprotocol, read the Welcome, send ClientFrames, receive ServerFrames. A close from
//! the server surfaces as [`ConnectionError::Closed`] with its code, so callers (and
//! tests) can tell a revoked device (4001) from a crash (1006). No retries, no state:
//! [`crate::Client`] builds those on top.

use std::{net::IpAddr, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use natter_proto::{
    codec::{Encoded, WireFormat},
    v1::{self, ClientFrame, ServerFrame, server_frame},
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        self, Message,
        client::IntoClientRequest as _,
        error::ProtocolError,
        http::{HeaderValue, Request, header},
        protocol::WebSocketConfig,
    },
};

use crate::error::ConnectionError;

/// The raw WebSocket stream type.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for the Welcome after the upgrade.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code reported when the connection ended without a close frame.
pub const ABNORMAL_CLOSE: u16 = 1006;

/// How to open a connection. `Default` suits an app; a load generator holding thousands of
/// connections wants small buffers and many source addresses.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// WebSocket settings. The default read buffer is small (8 KiB instead of
    /// tungstenite's 128 KiB, which every connection would allocate and zero-fill);
    /// larger frames still arrive whole, in more reads.
    pub websocket: WebSocketConfig,
    /// Source address of the TCP connection (`None`: the system's choice). On loopback,
    /// spreading connections over 127.0.0.0/8 gives each address its own ephemeral ports.
    pub local_addr: Option<IpAddr>,
    /// How long the TCP connect and the WebSocket upgrade may take together.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            websocket: WebSocketConfig::default().read_buffer_size(8 * 1024),
            local_addr: None,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

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

/// Opens the TCP connection for `request` (from `local` when given), without Nagle's
/// delay: natter's frames are small and latency matters more than packet count.
async fn tcp_connect(
    request: &Request<()>,
    local: Option<IpAddr>,
) -> Result<TcpStream, ConnectionError> {
    let uri = request.uri();
    let host = uri
        .host()
        .ok_or_else(|| ConnectionError::Request(format!("{uri}: no host")))?;
    let port = uri
        .port_u16()
        .or(match uri.scheme_str() {
            Some("wss") => Some(443),
            Some("ws") => Some(80),
            _ => None,
        })
        .ok_or_else(|| ConnectionError::Request(format!("{uri}: not a ws(s) URL")))?;
    // IPv6 literals come bracketed in URIs; lookup_host wants them bare.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let io = |e: std::io::Error| ConnectionError::WebSocket(Box::new(tungstenite::Error::Io(e)));
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await.map_err(io)? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(io)?;
        if let Some(ip) = local.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket.bind((ip, 0).into()).map_err(io)?;
        }
        match socket.connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(io)?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(io(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no address"))
    })))
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

    /// Like [`Connection::connect`], with buffer sizes, a source address and a timeout
    /// chosen by the caller.
    pub async fn connect_with(
        ws_url: &str,
        token: &str,
        format: WireFormat,
        options: &ConnectOptions,
    ) -> Result<(Connection, v1::Welcome), ConnectionError> {
        let request = ws_request(ws_url, Some(token), Some(format))?;
        let mut conn = Self::upgrade_with(request, format, options).await?;
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
        Self::upgrade_with(request, format, &ConnectOptions::default()).await
    }

    /// Performs the upgrade with `options`, without reading the Welcome.
    pub async fn upgrade_with(
        request: Request<()>,
        format: WireFormat,
        options: &ConnectOptions,
    ) -> Result<Connection, ConnectionError> {
        let timeout = options.connect_timeout;
        tokio::time::timeout(timeout, Self::handshake(request, format, options))
            .await
            .map_err(|_| ConnectionError::Timeout(timeout))?
    }

    async fn handshake(
        request: Request<()>,
        format: WireFormat,
        options: &ConnectOptions,
    ) -> Result<Connection, ConnectionError> {
        let stream = tcp_connect(&request, options.local_addr).await?;
        // No TLS here: `wss://` goes through a terminating proxy or load balancer.
        let handshake = tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(options.websocket),
        )
        .await;
        match handshake {
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

    /// Queues a frame without flushing: [`Connection::flush`] writes everything queued in
    /// as few syscalls as the socket allows.
    pub async fn feed(&mut self, frame: &ClientFrame) -> Result<(), ConnectionError> {
        let msg = encode(self.format, frame);
        self.ws.feed(msg).await.map_err(|e| ended(Some(e)))
    }

    /// Writes out what [`Connection::feed`] queued.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        self.ws.flush().await.map_err(|e| ended(Some(e)))
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
