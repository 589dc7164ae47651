//! `/admin/v1/groups`: list, inspect, delete.

use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
};
use natter_proto::{
    AdminService, ConversationId, GroupId, Subject,
    bus::{
        self, AdminGroupList, AdminGroupsReply, AdminGroupsRequest, admin_groups_request,
        partition_request,
    },
    v1,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{Admin, ApiError, ErrorBody, check, parse_id, users::role_name};

pub(crate) fn routes() -> OpenApiRouter<Admin> {
    OpenApiRouter::new()
        .routes(routes!(list_groups))
        .routes(routes!(get_group, delete_group))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct GroupsQuery {
    /// The `next` of the previous page.
    after: Option<String>,
    /// 1 to 500 (default 50).
    limit: Option<u32>,
    /// Only groups this user is a member of.
    member: Option<String>,
}

/// A group without its member list.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupSummary {
    group_id: String,
    conversation_id: String,
    name: String,
    member_count: u32,
    created_by: String,
    created_at_ms: u64,
    /// Deleted (by its owner or an administrator): nobody can send.
    deleted: bool,
    version: u64,
}

impl From<&v1::GroupInfo> for GroupSummary {
    fn from(g: &v1::GroupInfo) -> Self {
        GroupSummary {
            group_id: g.group_id.to_string(),
            conversation_id: g.conversation_id.clone(),
            name: g.name.clone(),
            member_count: g.member_count.max(g.members.len() as u32),
            created_by: g.created_by.to_string(),
            created_at_ms: g.created_at_ms,
            deleted: g.deleted,
            version: g.version,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupPage {
    groups: Vec<GroupSummary>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Groups in id order.
#[utoipa::path(
    get, path = "/admin/v1/groups", tag = "groups",
    params(GroupsQuery),
    responses(
        (status = 200, body = GroupPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    )
)]
async fn list_groups(
    State(admin): State<Admin>,
    query: Result<Query<GroupsQuery>, QueryRejection>,
) -> Result<Json<GroupPage>, ApiError> {
    let Query(q) = query?;
    let limit = crate::page_limit(q.limit, 50, 500)?;
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(s) => parse_id("after", s)?,
    };
    let member = match q.member.as_deref() {
        None | Some("") => 0,
        Some(s) => parse_id("member", s)?,
    };
    let reply: AdminGroupsReply = admin
        .ask(
            "groups",
            &Subject::admin(AdminService::Groups),
            &AdminGroupsRequest {
                op: Some(admin_groups_request::Op::List(AdminGroupList {
                    after,
                    limit,
                    member,
                })),
            },
        )
        .await?;
    check(reply.error)?;
    let next = if reply.more {
        reply.groups.last().map(|g| g.group_id.to_string())
    } else {
        None
    };
    Ok(Json(GroupPage {
        groups: reply.groups.iter().map(GroupSummary::from).collect(),
        next,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Member {
    user_id: String,
    /// `owner`, `admin` or `member`.
    role: String,
    /// The seq of the system message that added them.
    joined_seq: u64,
}

/// A group with its members.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupDetail {
    #[serde(flatten)]
    group: GroupSummary,
    description: String,
    members: Vec<Member>,
    max_members: u32,
    /// Live invite links.
    invites: u32,
    pending_joins: Vec<String>,
    banned: Vec<String>,
}

async fn load(admin: &Admin, group: u64) -> Result<v1::GroupInfo, ApiError> {
    let reply: AdminGroupsReply = admin
        .ask(
            "groups",
            &Subject::admin(AdminService::Groups),
            &AdminGroupsRequest {
                op: Some(admin_groups_request::Op::Get(group)),
            },
        )
        .await?;
    check(reply.error)?;
    reply
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::NotFound(format!("no group {group}")))
}

/// One group with its members.
#[utoipa::path(
    get, path = "/admin/v1/groups/{group_id}", tag = "groups",
    params(("group_id" = String, Path, description = "The group's id")),
    responses(
        (status = 200, body = GroupDetail),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn get_group(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<GroupDetail>, ApiError> {
    let Path(id) = path?;
    let group = load(&admin, parse_id("group_id", &id)?).await?;
    Ok(Json(GroupDetail {
        group: GroupSummary::from(&group),
        description: group.description,
        members: group
            .members
            .iter()
            .map(|m| Member {
                user_id: m.user_id.to_string(),
                role: role_name(m.role).to_owned(),
                joined_seq: m.joined_seq,
            })
            .collect(),
        max_members: group.max_members,
        invites: group.invites.len() as u32,
        pending_joins: group.pending_joins.iter().map(u64::to_string).collect(),
        banned: group.banned.iter().map(u64::to_string).collect(),
    }))
}

/// Delete a group as an administrator: a "deleted" system message goes to the members
/// in order with the chat, nobody can send afterwards, members keep their history.
#[utoipa::path(
    delete, path = "/admin/v1/groups/{group_id}", tag = "groups",
    params(("group_id" = String, Path, description = "The group's id")),
    responses(
        (status = 200, body = GroupSummary),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
async fn delete_group(
    State(admin): State<Admin>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<GroupSummary>, ApiError> {
    let Path(id) = path?;
    let group_id = parse_id("group_id", &id)?;
    let conversation = ConversationId::group(GroupId(group_id));
    let reply = admin
        .to_owner(
            &conversation,
            None,
            partition_request::Body::Group(bus::GroupChange {
                group_id,
                request: Some(v1::GroupRequest {
                    op: Some(v1::group_request::Op::Delete(v1::GroupDelete { group_id })),
                }),
                admin: true,
            }),
        )
        .await?;
    if !matches!(reply, bus::partition_reply::Body::Group(_)) {
        tracing::error!(?reply, "unexpected reply to an admin group delete");
        return Err(ApiError::Internal("unexpected reply".into()));
    }
    tracing::info!(target: "natter::audit", group_id, "group deleted");
    let group = load(&admin, group_id).await?;
    Ok(Json(GroupSummary::from(&group)))
}
