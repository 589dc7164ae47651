//! The CLI's one error type, and the exit code each kind of failure leaves for scripts.

use natter_client::{ClientError, ConnectionError, ErrorCode, HttpError, MediaError};

/// Exit code: bad usage, or no saved login (clap also exits 2 on bad arguments).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the server answered and refused (its error code is on stderr).
pub const EXIT_REFUSED: u8 = 3;
/// Exit code: the server could not be reached or stopped answering.
pub const EXIT_UNREACHABLE: u8 = 4;
/// Exit code: anything else (local files, a reply the client does not understand).
pub const EXIT_OTHER: u8 = 1;

/// Why a command failed. Every variant renders as one line for stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is well-formed for clap but makes no sense (a bad target, no password).
    #[error("{0}")]
    Usage(String),
    /// No session file, or its refresh token no longer works.
    #[error("not logged in: {0}")]
    NotLoggedIn(String),
    /// The server refused; `code` is natter's stable error code (`forbidden`, `not_found`, ...).
    #[error("server refused ({code}): {message}")]
    Refused { code: String, message: String },
    /// No answer from the server (connection refused, reset, timed out).
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// Reading or writing the session file.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::NotLoggedIn(_) => EXIT_USAGE,
            CliError::Refused { .. } => EXIT_REFUSED,
            CliError::Unreachable(_) => EXIT_UNREACHABLE,
            CliError::Io { .. } | CliError::Other(_) => EXIT_OTHER,
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            what: what.into(),
            source,
        }
    }
}

/// `ERROR_CODE_FORBIDDEN` → `forbidden`, the spelling the REST API uses too.
pub fn code_name(code: ErrorCode) -> String {
    code.as_str_name()
        .trim_start_matches("ERROR_CODE_")
        .to_ascii_lowercase()
}

/// Walks the error's sources so that "connection refused" is not hidden behind
/// "error sending request".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

impl From<HttpError> for CliError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Api { code, message, .. } => CliError::Refused { code, message },
            HttpError::Transport(ref t) => CliError::Unreachable(chain(t)),
            HttpError::Unexpected { .. } => CliError::Other(e.to_string()),
            HttpError::Url(u) => CliError::Usage(format!("bad server URL {u}")),
        }
    }
}

impl From<MediaError> for CliError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::Http(h) => h.into(),
            MediaError::Io { what, source } => CliError::Io { what, source },
            MediaError::HashMismatch { .. } => CliError::Other(e.to_string()),
            MediaError::Invalid(m) => CliError::Usage(m),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Server { code, message } => CliError::Refused {
                code: code_name(code),
                message,
            },
            ClientError::Connection(ConnectionError::Rejected { status, body }) => {
                CliError::Refused {
                    code: if status == 401 {
                        "unauthorized".into()
                    } else {
                        format!("http_{status}")
                    },
                    message: body.chars().take(200).collect(),
                }
            }
            ClientError::Connection(ConnectionError::Request(r)) => {
                CliError::Usage(format!("bad server URL: {r}"))
            }
            ClientError::Connection(ref c) => CliError::Unreachable(chain(c)),
            ClientError::Timeout(_) | ClientError::Closed { .. } => {
                CliError::Unreachable(e.to_string())
            }
            ClientError::InvalidArgument(a) => CliError::Usage(a),
            ClientError::Shutdown | ClientError::UnexpectedReply(_) => {
                CliError::Other(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_like_the_rest_api() {
        assert_eq!(code_name(ErrorCode::Forbidden), "forbidden");
        assert_eq!(code_name(ErrorCode::NotFound), "not_found");
        let e: CliError = ClientError::Server {
            code: ErrorCode::Forbidden,
            message: "admins only".into(),
        }
        .into();
        assert_eq!(e.exit_code(), EXIT_REFUSED);
        assert_eq!(e.to_string(), "server refused (forbidden): admins only");
    }
}
