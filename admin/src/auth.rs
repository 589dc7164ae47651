//! Who may call the admin API: holders of an admin token from the operator's token file,
//! never a user's JWT. Every call, refused ones included, is written to the audit log.

use std::{
    collections::VecDeque,
    io::Write as _,
    path::Path,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ring::digest;
use serde::Serialize;
use tracing::Instrument as _;
use utoipa::ToSchema;

use crate::{Admin, ApiError, unix_ms};

/// Shortest accepted admin token, in characters.
pub const MIN_TOKEN_LEN: usize = 32;
/// Longest accepted admin token, in characters.
const MAX_TOKEN_LEN: usize = 512;
/// Audit entries kept in memory for `GET /admin/v1/audit` (the log keeps them all).
const AUDIT_KEPT: usize = 1000;

/// Why the admin tokens could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
}

/// The admin tokens, kept as SHA-256 digests with the name each is audited under.
#[derive(Clone)]
pub struct AdminTokens {
    tokens: Arc<[(String, [u8; 32])]>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the digests stay out of logs.
        let names: Vec<&str> = self.tokens.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("AdminTokens")
            .field("names", &names)
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

impl AdminTokens {
    /// Tokens from text: one per line, `name:token` or a bare `token` (audited as
    /// `admin`); blank lines and lines starting with `#` are skipped. Each token has at
    /// least [`MIN_TOKEN_LEN`] characters and no whitespace; names are unique.
    pub fn parse(text: &str) -> Result<AdminTokens, String> {
        let mut tokens: Vec<(String, [u8; 32])> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = match line.split_once(':') {
                Some((name, token)) => (name.trim(), token.trim()),
                None => ("admin", line),
            };
            let n = i + 1;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
            {
                return Err(format!(
                    "line {n}: the name must be 1-64 of [A-Za-z0-9-_.@]"
                ));
            }
            if token.len() < MIN_TOKEN_LEN
                || token.len() > MAX_TOKEN_LEN
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "line {n}: the token must be {MIN_TOKEN_LEN}-{MAX_TOKEN_LEN} characters without spaces"
                ));
            }
            if tokens.iter().any(|(other, _)| other == name) {
                return Err(format!("line {n}: the name `{name}` is used twice"));
            }
            tokens.push((name.to_owned(), sha256(token.as_bytes())));
        }
        if tokens.is_empty() {
            return Err("it holds no token".into());
        }
        Ok(AdminTokens {
            tokens: tokens.into(),
        })
    }

    /// Reads the token file at `path`.
    pub fn from_file(path: &Path) -> Result<AdminTokens, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: path.display().to_string(),
            source,
        })?;
        AdminTokens::parse(&text).map_err(|why| TokenError::Invalid {
            path: path.display().to_string(),
            why,
        })
    }

    /// Reads the token file at `path`, first writing one random token there (mode 0600)
    /// if the file does not exist. `natter serve` keeps its admin token this way.
    pub fn load_or_create(path: &Path) -> Result<AdminTokens, TokenError> {
        let io = |source| TokenError::Io {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            let mut bytes = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| io(std::io::Error::other("no system randomness")))?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => file
                    .write_all(format!("admin:{token}\n").as_bytes())
                    .map_err(io)?,
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        AdminTokens::from_file(path)
    }

    /// The name of the admin holding `token`, comparing digests in constant time (every
    /// entry is compared, whatever matched).
    pub fn check(&self, token: &str) -> Option<&str> {
        let presented = sha256(token.as_bytes());
        let mut found = None;
        for (name, digest) in self.tokens.iter() {
            let diff = presented
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// One admin API call, as the audit log records it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// The token's name; `-` when the call was refused before it was known.
    pub admin: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub status: u16,
    pub request_id: String,
    pub duration_ms: u64,
}

/// The last [`AUDIT_KEPT`] calls of this process.
#[derive(Debug, Default, Clone)]
pub(crate) struct AuditLog {
    entries: Arc<Mutex<VecDeque<AuditEntry>>>,
}

impl AuditLog {
    fn record(&self, entry: AuditEntry) {
        if entry.status < 400 {
            tracing::info!(
                target: "natter::audit",
                admin = %entry.admin, method = %entry.method, path = %entry.path,
                status = entry.status, request_id = %entry.request_id,
                duration_ms = entry.duration_ms, "admin call"
            );
        } else {
            tracing::warn!(
                target: "natter::audit",
                admin = %entry.admin, method = %entry.method, path = %entry.path,
                status = entry.status, request_id = %entry.request_id,
                duration_ms = entry.duration_ms, "admin call failed or refused"
            );
        }
        metrics::counter!("natter_admin_requests_total", "status" => status_class(entry.status))
            .increment(1);
        // A panic while holding the lock cannot leave the queue half-updated.
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == AUDIT_KEPT {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// The newest `limit` entries, newest first.
    pub(crate) fn recent(&self, limit: usize) -> Vec<AuditEntry> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().rev().take(limit).cloned().collect()
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware on every admin route: refuses calls without a valid admin token (a user's
/// access token is not one) and audits every call with its outcome.
pub(crate) async fn guard(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let name = bearer(request.headers())
        .and_then(|token| admin.inner.tokens.check(token))
        .map(Arc::<str>::from);
    let (admin_name, response) = match name {
        None => {
            let looks_like_jwt = bearer(request.headers())
                .is_some_and(|t| t.split('.').count() == 3 && t.starts_with("ey"));
            let message = if looks_like_jwt {
                "this is a user's access token; the admin API takes an admin token"
            } else {
                "an admin token is required: Authorization: Bearer <admin token>"
            };
            (
                "-".to_owned(),
                ApiError::Unauthorized(message.into()).into_response(),
            )
        }
        Some(name) => {
            // Every line logged while the call is handled names the admin.
            let span = tracing::info_span!("admin", admin = %name);
            (name.to_string(), next.run(request).instrument(span).await)
        }
    };
    admin.inner.audit.record(AuditEntry {
        at_ms: unix_ms(),
        admin: admin_name,
        method,
        path,
        status: response.status().as_u16(),
        request_id,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef0123456789abcdef";
    const T2: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn parses_named_and_bare_tokens() {
        let tokens = AdminTokens::parse(&format!("# ops\n\nalice:{T1}\n{T2}\n")).unwrap();
        assert_eq!(tokens.check(T1), Some("alice"));
        assert_eq!(tokens.check(T2), Some("admin"));
        assert_eq!(tokens.check("0123456789abcdef0123456789abcdeX"), None);
        assert_eq!(tokens.check(""), None);
    }

    #[test]
    fn refuses_weak_or_ambiguous_files() {
        assert!(AdminTokens::parse("").is_err());
        assert!(AdminTokens::parse("# only a comment\n").is_err());
        assert!(AdminTokens::parse("short").is_err());
        assert!(AdminTokens::parse(&format!("a:{T1}\na:{T2}")).is_err());
        assert!(AdminTokens::parse(&format!("bad name:{T1}")).is_err());
        assert!(AdminTokens::parse(&format!("x:{T1} {T2}")).is_err());
    }

    #[test]
    fn creates_a_private_token_file_once() {
        let dir = std::env::temp_dir().join(format!("natter-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.token");
        let _ = std::fs::remove_file(&path);
        let first = AdminTokens::load_or_create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let token = text.trim().strip_prefix("admin:").unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(first.check(token), Some("admin"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second start reuses it.
        let again = AdminTokens::load_or_create(&path).unwrap();
        assert_eq!(again.check(token), Some("admin"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn audit_keeps_the_newest() {
        let log = AuditLog::default();
        for i in 0..(AUDIT_KEPT + 5) {
            log.record(AuditEntry {
                at_ms: i as u64,
                admin: "a".into(),
                method: "GET".into(),
                path: "/".into(),
                status: 200,
                request_id: "-".into(),
                duration_ms: 0,
            });
        }
        let recent = log.recent(3);
        assert_eq!(
            recent.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [
                (AUDIT_KEPT + 4) as u64,
                (AUDIT_KEPT + 3) as u64,
                (AUDIT_KEPT + 2) as u64
            ]
        );
        assert_eq!(log.recent(usize::MAX).len(), AUDIT_KEPT);
    }
}
