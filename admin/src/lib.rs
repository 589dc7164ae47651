//! natter-admin: the REST admin API under `/admin/v1`, for operators.
//!
//! It holds no state of its own: every call becomes bus requests to the services that own
//! the data (`natter.admin.<service>`, the conversation's partition owner for moderation)
//! plus reads of the session directory, so it runs as its own role (`natter admin`) or
//! inside `natter serve`. Callers hold an admin token from the operator's token file
//! ([`AdminTokens`]); a user's access token is refused. Every call is audited: one log
//! line (target `natter::audit`) and an in-memory list at `GET /admin/v1/audit`.
//! The OpenAPI document, generated from the handlers, is at `/admin/v1/openapi.json`.

mod auth;
mod groups;
mod sessions;
pub mod stats;
mod system;
mod users;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use natter_bus::{Bus, BusError};
use natter_proto::{ErrorCode, Subject, v1};
use natter_sessions::directory::SessionDirectory;
use serde::Serialize;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;

pub use auth::{AdminTokens, AuditEntry, MIN_TOKEN_LEN, TokenError};
pub use stats::StatsCollector;

/// How the admin API runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long to wait for a service's answer.
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The admin API. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Arc<dyn Bus>,
    directory: Arc<dyn SessionDirectory>,
    tokens: AdminTokens,
    stats: StatsCollector,
    audit: auth::AuditLog,
    config: Config,
}

impl Admin {
    /// `directory` is the edges' session directory (in memory in `natter serve`, Redis in
    /// a cluster); `stats` a collector started on the same bus.
    pub fn new(
        config: Config,
        bus: Arc<dyn Bus>,
        directory: Arc<dyn SessionDirectory>,
        tokens: AdminTokens,
        stats: StatsCollector,
    ) -> Admin {
        Admin {
            inner: Arc::new(Inner {
                bus,
                directory,
                tokens,
                stats,
                audit: auth::AuditLog::default(),
                config,
            }),
        }
    }

    /// Sends `request` on `subject` and decodes the reply. `service` names it in errors.
    async fn ask<Rep: prost::Message + Default>(
        &self,
        service: &'static str,
        subject: &Subject,
        request: &impl prost::Message,
    ) -> Result<Rep, ApiError> {
        let reply = self
            .inner
            .bus
            .request(
                subject,
                Bytes::from(request.encode_to_vec()),
                self.inner.config.request_timeout,
            )
            .await
            .map_err(|e| match e {
                BusError::Timeout(_) | BusError::NoResponders(_) => {
                    ApiError::Unavailable(format!("the {service} service did not answer"))
                }
                e => {
                    tracing::warn!(service, error = %e, "admin bus request failed");
                    ApiError::Unavailable(format!("the {service} service is unreachable"))
                }
            })?;
        Rep::decode(reply).map_err(|e| {
            tracing::error!(service, error = %e, "undecodable reply");
            ApiError::Internal(format!("the {service} service sent an undecodable reply"))
        })
    }
}

impl Admin {
    /// Sends `body` to the owner of `conversation`'s partition (as `caller`, or as the
    /// administrator when `None`) and returns the reply's body; an error reply is `Err`.
    async fn to_owner(
        &self,
        conversation: &natter_proto::ConversationId,
        caller: Option<natter_proto::bus::Caller>,
        body: natter_proto::bus::partition_request::Body,
    ) -> Result<natter_proto::bus::partition_reply::Body, ApiError> {
        use natter_proto::bus::{PartitionReply, PartitionRequest, partition_reply};
        let reply: PartitionReply = self
            .ask(
                "messages",
                &Subject::partition(conversation.partition()),
                &PartitionRequest {
                    caller,
                    body: Some(body),
                },
            )
            .await?;
        match reply.body {
            Some(partition_reply::Body::Error(e)) => Err(ApiError::from_proto(e)),
            Some(body) => Ok(body),
            None => Err(ApiError::Internal(
                "the conversation's owner sent an empty reply".into(),
            )),
        }
    }
}

/// The whole API: the admin routes behind the token check and the audit log, and the
/// OpenAPI document (public: it holds no data).
pub fn router(admin: Admin) -> Router {
    let (guarded, _) = api().split_for_parts();
    let guarded = guarded.layer(axum::middleware::from_fn_with_state(
        admin.clone(),
        auth::guard,
    ));
    let (public, _) = public().split_for_parts();
    guarded.merge(public).with_state(admin)
}

/// The OpenAPI document of the admin API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().merge(public()).into_openapi()
}

fn api() -> OpenApiRouter<Admin> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(users::routes())
        .merge(sessions::routes())
        .merge(groups::routes())
        .merge(system::routes())
}

/// Routes served without a token.
fn public() -> OpenApiRouter<Admin> {
    OpenApiRouter::new().routes(utoipa_axum::routes!(openapi_json))
}

/// This document (OpenAPI 3, generated from the handlers). No token needed.
#[utoipa::path(
    get, path = "/admin/v1/openapi.json", tag = "system",
    security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(openapi))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "natter admin API",
        description = "Operate natter: users and bans, sessions and kicks, groups, moderation, \
                       stats and announcements. Every call needs an admin token \
                       (`Authorization: Bearer <token>`, from the admin token file) and is \
                       audited. Ids are decimal strings.",
    ),
    modifiers(&BearerAuth),
    security(("admin_token" = [])),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "users", description = "Accounts: search, inspect, ban, delete"),
        (name = "sessions", description = "Live connections and kicks"),
        (name = "groups", description = "Groups: list, inspect, delete"),
        (name = "moderation", description = "Messages and announcements"),
        (name = "system", description = "Stats and the audit log"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every error answer: `{"error":{"code","message"}}` with a stable `code`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `unauthorized`, `invalid_argument`, `not_found`, `conflict`, `forbidden`,
    /// `unavailable` or `internal`.
    pub code: String,
    pub message: String,
}

/// What a handler fails with.
#[derive(Debug)]
pub(crate) enum ApiError {
    Unauthorized(String),
    Invalid(String),
    NotFound(String),
    Conflict(String),
    Forbidden(String),
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    /// A service's `natter.v1.Error`.
    fn from_proto(e: v1::Error) -> ApiError {
        match ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified) {
            ErrorCode::InvalidArgument | ErrorCode::BadFrame => ApiError::Invalid(e.message),
            ErrorCode::NotFound | ErrorCode::CallEnded => ApiError::NotFound(e.message),
            ErrorCode::Forbidden | ErrorCode::Banned => ApiError::Forbidden(e.message),
            ErrorCode::Conflict => ApiError::Conflict(e.message),
            ErrorCode::Unavailable => ApiError::Unavailable(e.message),
            _ => ApiError::Internal(e.message),
        }
    }
}

/// `Err` for a reply's error field when it holds a real error.
fn check(error: Option<v1::Error>) -> Result<(), ApiError> {
    match error {
        Some(e) if e.code != ErrorCode::Unspecified as i32 => Err(ApiError::from_proto(e)),
        _ => Ok(()),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            ApiError::Invalid(m) => (StatusCode::BAD_REQUEST, "invalid_argument", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"natter-admin\""),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::Invalid(format!("request body: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::Invalid(format!("query: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::Invalid(format!("path: {}", r.body_text()))
    }
}

/// A page size from a query: `default` when absent, else 1 to `max`.
fn page_limit<T>(limit: Option<T>, default: T, max: T) -> Result<T, ApiError>
where
    T: Copy + PartialOrd + Default + std::fmt::Display,
{
    let limit = limit.unwrap_or(default);
    if limit <= T::default() || limit > max {
        return Err(ApiError::Invalid(format!("limit must be 1 to {max}")));
    }
    Ok(limit)
}

/// A decimal id from a path or query (`0` and non-numbers are refused).
fn parse_id(what: &str, s: &str) -> Result<u64, ApiError> {
    match s.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::Invalid(format!(
            "{what} must be a positive decimal id"
        ))),
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limits_and_ids() {
        assert_eq!(page_limit(None, 50u32, 500).unwrap(), 50);
        assert_eq!(page_limit(Some(500u32), 50, 500).unwrap(), 500);
        assert!(page_limit(Some(0u32), 50, 500).is_err());
        assert!(page_limit(Some(501u32), 50, 500).is_err());
        assert_eq!(parse_id("id", "42").unwrap(), 42);
        for bad in ["0", "-1", "x", "", "18446744073709551616"] {
            assert!(parse_id("id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_errors_keep_their_meaning() {
        let e = |code: ErrorCode| {
            ApiError::from_proto(v1::Error {
                code: code as i32,
                message: "m".into(),
            })
            .into_response()
            .status()
        };
        assert_eq!(e(ErrorCode::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(e(ErrorCode::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(e(ErrorCode::Forbidden), StatusCode::FORBIDDEN);
        assert_eq!(e(ErrorCode::Conflict), StatusCode::CONFLICT);
        assert_eq!(e(ErrorCode::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e(ErrorCode::Internal), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(check(None).is_ok());
        assert!(check(Some(v1::Error::default())).is_ok());
    }
}
