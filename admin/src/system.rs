//! Moderation (`/admin/v1/conversations/.../messages/...`, `/admin/v1/announcements`)
//! and the system views (`/admin/v1/stats`, `/admin/v1/audit`).

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
};
use natter_proto::{
    AdminService, ConversationId, Subject,
    bus::{
        self, AdminSessionsReply, AdminSessionsRequest, admin_sessions_request, partition_request,
    },
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{Admin, ApiError, AuditEntry, ErrorBody, check, stats::Stats};

pub(crate) fn routes() -> OpenApiRouter<Admin> {
    OpenApiRouter::new()
        .routes(routes!(delete_message))
        .routes(routes!(announce))
        .routes(routes!(stats))
        .routes(routes!(audit))
}

/// Longest announcement, in bytes.
const MAX_ANNOUNCEMENT: usize = 4096;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeletedMessage {
    conversation_id: String,
    seq: u64,
    deleted_at_ms: u64,
}

/// Delete a message for everyone (moderation). It keeps its place in the conversation
/// but loses its content (text, media, call); every member's devices are told at once,
/// and sync and history return it as deleted. Idempotent.
#[utoipa::path(
    delete, path = "/admin/v1/conversations/{conversation_id}/messages/{seq}",
    tag = "moderation",
    params(
        ("conversation_id" = String, Path, description = "`d.<a>.<b>` or `g.<group id>`"),
        ("seq" = u64, Path, description = "The message's seq"),
    ),
    responses(
        (status = 200, body = DeletedMessage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn delete_message(
    State(admin): State<Admin>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<DeletedMessage>, ApiError> {
    let Path((conversation, seq)) = path?;
    let conversation: ConversationId = conversation
        .parse()
        .map_err(|_| ApiError::Invalid("conversation_id is not a conversation id".into()))?;
    let seq = crate::parse_id("seq", &seq)?;
    let reply = admin
        .to_owner(
            &conversation,
            None,
            partition_request::Body::AdminDelete(bus::AdminDeleteMessage {
                conversation_id: conversation.as_str().to_owned(),
                seq,
            }),
        )
        .await?;
    let bus::partition_reply::Body::Deleted(d) = reply else {
        tracing::error!(?reply, "unexpected reply to an admin message delete");
        return Err(ApiError::Internal("unexpected reply".into()));
    };
    tracing::info!(
        target: "natter::audit",
        conversation = %d.conversation_id, seq = d.seq, "message deleted for everyone"
    );
    Ok(Json(DeletedMessage {
        conversation_id: d.conversation_id,
        seq: d.seq,
        deleted_at_ms: d.deleted_at_ms,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct AnnounceRequest {
    /// 1 to 4096 bytes of text.
    text: String,
}

/// An announcement as stored and pushed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Announcement {
    id: String,
    text: String,
    created_at_ms: u64,
}

/// Announce to every user: stored, pushed at once to every connected device, and listed
/// to clients by `GET /v1/announcements` so users who were offline see it next time.
#[utoipa::path(
    post, path = "/admin/v1/announcements", tag = "moderation",
    request_body = AnnounceRequest,
    responses(
        (status = 201, body = Announcement),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn announce(
    State(admin): State<Admin>,
    body: Result<Json<AnnounceRequest>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<Announcement>), ApiError> {
    let Json(AnnounceRequest { text }) = body?;
    if text.trim().is_empty() || text.len() > MAX_ANNOUNCEMENT {
        return Err(ApiError::Invalid(format!(
            "text must be 1 to {MAX_ANNOUNCEMENT} bytes"
        )));
    }
    let reply: AdminSessionsReply = admin
        .ask(
            "sessions",
            &Subject::admin(AdminService::Sessions),
            &AdminSessionsRequest {
                op: Some(admin_sessions_request::Op::Announce(text)),
            },
        )
        .await?;
    check(reply.error)?;
    let a = reply
        .announcement
        .ok_or_else(|| ApiError::Internal("the sessions service sent no announcement".into()))?;
    tracing::info!(target: "natter::audit", id = a.id, "announcement sent");
    Ok((
        axum::http::StatusCode::CREATED,
        Json(Announcement {
            id: a.id.to_string(),
            text: a.text,
            created_at_ms: a.created_at_ms,
        }),
    ))
}

/// Connections, message and delivery rates, ack, delivery, store and bus latency, from
/// every natter process's metrics of the last few seconds; the edges' connection counts
/// from the session directory.
#[utoipa::path(
    get, path = "/admin/v1/stats", tag = "system",
    responses((status = 200, body = StatsView), (status = 401, body = ErrorBody))
)]
async fn stats(State(admin): State<Admin>) -> Json<StatsView> {
    let edges = match admin.inner.directory.nodes().await {
        Ok(nodes) => Some(
            nodes
                .into_iter()
                .map(|n| EdgeConnections {
                    node: n.node,
                    connections: n.connections,
                })
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "stats: session directory unavailable");
            None
        }
    };
    Json(StatsView {
        edges,
        stats: admin.inner.stats.snapshot(),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatsView {
    /// Connections per edge node (absent when the session directory is unreachable).
    edges: Option<Vec<EdgeConnections>>,
    #[serde(flatten)]
    stats: Stats,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EdgeConnections {
    node: String,
    connections: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// 1 to 1000 (default 100).
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditPage {
    /// Newest first: this process's last calls (the log keeps every one).
    entries: Vec<AuditEntry>,
}

/// The latest admin calls served by this process, newest first.
#[utoipa::path(
    get, path = "/admin/v1/audit", tag = "system",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    )
)]
async fn audit(
    State(admin): State<Admin>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(q) = query?;
    let limit = crate::page_limit(q.limit, 100, 1000)?;
    Ok(Json(AuditPage {
        entries: admin.inner.audit.recent(limit),
    }))
}
