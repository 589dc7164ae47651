//! The client's error types: one per layer (REST, WebSocket connection, high-level client).

use std::time::Duration;

use natter_proto::{ErrorCode, codec::DecodeError, v1};
use tokio_tungstenite::tungstenite;

/// A REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The server answered with an error status and natter's error body.
    #[error("HTTP {status} {code}: {message}")]
    Api {
        status: u16,
        /// natter's stable error code (`invalid_argument`, `unauthorized`, `not_found`, ...).
        code: String,
        message: String,
    },
    /// The request never got an answer (connection refused, reset, timed out).
    #[error("HTTP transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// The server answered something that is not natter's API (wrong shape, bad id).
    #[error("unexpected HTTP response ({status}): {detail}")]
    Unexpected { status: u16, detail: String },
    /// The base URL cannot be used.
    #[error("bad URL: {0}")]
    Url(String),
}

impl HttpError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Api { status, .. } | HttpError::Unexpected { status, .. } => Some(*status),
            HttpError::Transport(e) => e.status().map(|s| s.as_u16()),
            HttpError::Url(_) => None,
        }
    }

    /// natter's error code string, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            HttpError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Opening or using one WebSocket connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The URL or a header value cannot be used.
    #[error("bad WebSocket request: {0}")]
    Request(String),
    /// The server refused the upgrade with an HTTP status (401 for a bad token).
    #[error("WebSocket upgrade refused: HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    /// The connection is closed; `code` is the close code the server sent, or 1006 when
    /// the connection ended without a close frame (reset, crash, network).
    #[error("connection closed ({code}): {reason}")]
    Closed { code: u16, reason: String },
    /// Any other WebSocket failure (handshake, I/O).
    #[error("WebSocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
    /// A server frame could not be decoded.
    #[error("undecodable server frame: {0}")]
    Decode(#[from] DecodeError),
    /// The first server frame was not a Welcome.
    #[error("expected a Welcome first, got {0}")]
    NoWelcome(String),
    /// Nothing arrived in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl ConnectionError {
    /// The close code, for a closed connection.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ConnectionError::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The HTTP status of a refused upgrade.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ConnectionError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<tungstenite::Error> for ConnectionError {
    fn from(e: tungstenite::Error) -> Self {
        ConnectionError::WebSocket(Box::new(e))
    }
}

/// A high-level [`crate::Client`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed in a way retrying will not fix (e.g. the token was refused).
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The server answered with an Error frame.
    #[error("server error {code:?}: {message}")]
    Server { code: ErrorCode, message: String },
    /// No answer before the deadline (after retries, for sends).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server closed this device's connection for good (4001 revoked, 4002 replaced).
    #[error("connection closed for good ({code}): {reason}")]
    Closed { code: u16, reason: String },
    /// The client is shutting down.
    #[error("the client is shut down")]
    Shutdown,
    /// The call was refused before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server answered with a frame that does not fit the request.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
}

impl ClientError {
    /// The server's error code, for [`ClientError::Server`].
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn from_frame(e: &v1::Error) -> Self {
        ClientError::Server {
            code: error_code(e.code),
            message: e.message.clone(),
        }
    }
}

/// The typed error code of an Error frame (`Unspecified` for codes this client does not know).
pub fn error_code(raw: i32) -> ErrorCode {
    ErrorCode::try_from(raw).unwrap_or(ErrorCode::Unspecified)
}
