//! The groups service on the bus: `natter.group.apply` (a change, from the owner of the
//! group's conversation), `natter.group.state` (what that owner needs to fan out),
//! `natter.group.query` (get and list, from edges), `natter.group.access` (what part of
//! a group's history a user may read, from sync and history) and `natter.admin.groups`
//! (the admin API's list and get, see [`admin`]). Any number of instances
//! may serve them (queue group [`QUEUE_GROUP`]); the store's compare-and-set on the
//! group's version keeps concurrent changes from overwriting each other.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use natter_bus::{Bus, BusError, BusMessage, Subscription};
use natter_proto::{
    AdminService, ErrorCode, GroupId, Subject, UserId,
    bus::{self, GroupRecord},
    error, now_ms,
    v1::{self, group_request::Op},
};
use prost::Message as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    GroupStore, MAX_LIST_GROUPS, StoreError,
    rules::{self, Context, Limits},
};

/// Queue group of every groups subscription.
pub const QUEUE_GROUP: &str = "groups";
/// Requests buffered per subscription.
const SUB_CAPACITY: usize = 4096;
/// Requests handled concurrently per subscription.
const MAX_CONCURRENT: usize = 64;
/// Groups loaded concurrently for one list.
const LIST_CONCURRENCY: usize = 16;
/// Users looked up at sessions concurrently.
const LOOKUP_CONCURRENCY: usize = 64;
/// Most users one create or add may name (beyond that the group is full anyway).
const MAX_USERS_PER_CHANGE: usize = 4096;
/// Groups per admin list page when the request names no limit.
const DEFAULT_ADMIN_LIST: usize = 100;
/// An admin list page stops before its groups' encoding passes this (NATS carries at
/// most 1 MiB), even if the limit is not reached; `more` is then set.
const MAX_ADMIN_REPLY_BYTES: usize = 512 * 1024;

/// Settings of the groups service.
#[derive(Debug, Clone)]
pub struct Config {
    pub limits: Limits,
    /// Timeout of the service's own bus requests (user lookups at sessions).
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            request_timeout: Duration::from_secs(5),
        }
    }
}

struct Shared {
    config: Config,
    store: Arc<dyn GroupStore>,
    bus: Arc<dyn Bus>,
    /// Whether users exist (sessions' lookup, cached).
    users: natter_sessions::Users,
    /// Whom each user blocked: a blocked user cannot add them to groups.
    audiences: Arc<natter_people::Audiences>,
}

#[derive(Clone, Copy)]
enum Endpoint {
    Apply,
    State,
    Query,
    Access,
    Admin,
}

/// Starts the groups service. Returns once every subject is subscribed; the task
/// completes after `shutdown`, when the requests in progress are answered.
pub async fn start(
    config: Config,
    store: Arc<dyn GroupStore>,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, BusError> {
    let audiences = natter_people::Audiences::start(bus.clone(), config.request_timeout).await?;
    let users = natter_sessions::Users::new(bus.clone(), config.request_timeout);
    crate::metrics::limits(&config.limits);
    let shared = Arc::new(Shared {
        config,
        store,
        bus: bus.clone(),
        users,
        audiences,
    });
    let mut subs = Vec::new();
    for (subject, endpoint) in [
        (Subject::group_apply(), Endpoint::Apply),
        (Subject::group_state(), Endpoint::State),
        (Subject::group_query(), Endpoint::Query),
        (Subject::group_access(), Endpoint::Access),
        (Subject::admin(AdminService::Groups), Endpoint::Admin),
    ] {
        let sub = bus
            .queue_subscribe(&subject, QUEUE_GROUP, SUB_CAPACITY)
            .await?;
        subs.push((sub, endpoint));
    }
    Ok(tokio::spawn(async move {
        let serving = subs
            .into_iter()
            .map(|(sub, endpoint)| serve(sub, endpoint, shared.clone(), shutdown.clone()));
        futures::future::join_all(serving).await;
    }))
}

async fn serve(
    mut sub: Subscription,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let name = match endpoint {
        Endpoint::Apply => "groups.apply",
        Endpoint::State => "groups.state",
        Endpoint::Query => "groups.query",
        Endpoint::Access => "groups.access",
        Endpoint::Admin => "groups.admin",
    };
    // A request taken but not started at shutdown times out at its sender, which retries.
    let _unstarted = natter_bus::serve_requests(name, &mut sub, MAX_CONCURRENT, &shutdown, |msg| {
        let shared = shared.clone();
        async move { answer(&shared, endpoint, msg).await }
    })
    .await;
}

async fn answer(shared: &Shared, endpoint: Endpoint, msg: BusMessage) {
    let payload = msg.payload.clone();
    let reply = match endpoint {
        Endpoint::Apply => apply(shared, payload).await.encode_to_vec(),
        Endpoint::State => state(shared, payload).await.encode_to_vec(),
        Endpoint::Query => query(shared, payload).await.encode_to_vec(),
        Endpoint::Access => access(shared, payload).await.encode_to_vec(),
        Endpoint::Admin => admin(shared, payload).await.encode_to_vec(),
    };
    if let Err(e) = natter_bus::reply(shared.bus.as_ref(), &msg, Bytes::from(reply)).await {
        tracing::debug!(error = %e, "groups reply not delivered");
    }
}

/// Maps a store failure to a client error without leaking internals (logged here).
fn store_failure(e: &StoreError) -> v1::Error {
    match e {
        StoreError::Conflict(_) => {
            error(ErrorCode::Conflict, "the group changed concurrently; retry")
        }
        StoreError::Closed => error(ErrorCode::Unavailable, "service shutting down, retry"),
        _ => {
            tracing::error!(error = %e, "group store failure");
            error(ErrorCode::Internal, "storage failure, retry")
        }
    }
}

fn caller_of(c: Option<bus::Caller>) -> Result<UserId, v1::Error> {
    let c = c.ok_or_else(|| error(ErrorCode::InvalidArgument, "caller missing"))?;
    UserId::new(c.user_id).map_err(|_| error(ErrorCode::InvalidArgument, "caller missing"))
}

fn group_of(raw: u64) -> Result<GroupId, v1::Error> {
    GroupId::new(raw).map_err(|_| error(ErrorCode::InvalidArgument, "group_id missing"))
}

async fn load(shared: &Shared, group: GroupId) -> Result<Option<GroupRecord>, v1::Error> {
    shared
        .store
        .load(group)
        .await
        .map_err(|e| store_failure(&e))
}

async fn apply(shared: &Shared, payload: Bytes) -> bus::GroupApplyReply {
    match try_apply(shared, payload).await {
        Ok(reply) => reply,
        Err(e) => bus::GroupApplyReply {
            error: Some(e),
            ..Default::default()
        },
    }
}

async fn try_apply(shared: &Shared, payload: Bytes) -> Result<bus::GroupApplyReply, v1::Error> {
    let req = bus::GroupApply::decode(payload)
        .map_err(|_| error(ErrorCode::BadFrame, "undecodable GroupApply"))?;
    // An administrator's change (the admin API, through the owner) has no caller; any
    // other has one, and never `admin`.
    let caller = match (req.admin, req.caller) {
        (true, None) => None,
        (true, Some(_)) => {
            return Err(error(
                ErrorCode::InvalidArgument,
                "an administrator's change has no caller",
            ));
        }
        (false, caller) => Some(caller_of(caller)?),
    };
    let group = group_of(req.group_id)?;
    let op = req
        .request
        .and_then(|r| r.op)
        .ok_or_else(|| error(ErrorCode::InvalidArgument, "group request has no operation"))?;
    if req.next_seq == 0 {
        return Err(error(ErrorCode::InvalidArgument, "next_seq missing"));
    }
    let record = load(shared, group).await?;
    let Some(caller) = caller else {
        let cx = Context {
            caller: rules::NO_ACTOR,
            group,
            next_seq: req.next_seq,
            now_ms: now_ms(),
            limits: &shared.config.limits,
        };
        let outcome = rules::apply_admin(record.as_ref(), &op, &cx)?;
        return store_outcome(shared, record, outcome).await;
    };
    let named: &[u64] = match &op {
        Op::Create(c) => &c.members,
        Op::AddMembers(a) => &a.users,
        _ => &[],
    };
    if named.len() > MAX_USERS_PER_CHANGE {
        return Err(error(
            ErrorCode::InvalidArgument,
            format!("at most {MAX_USERS_PER_CHANGE} users per request"),
        ));
    }
    let known = users_exist(shared, named, record.as_ref()).await?;
    refuse_blocked(shared, caller, &known).await?;
    let cx = Context {
        caller,
        group,
        next_seq: req.next_seq,
        now_ms: now_ms(),
        limits: &shared.config.limits,
    };
    let outcome = rules::apply(record.as_ref(), &op, &cx, &|u| {
        known.get(&u).copied().unwrap_or(false)
    })?;
    refuse_too_many_groups(shared, caller, group, &admitted(record.as_ref(), &outcome)).await?;
    store_outcome(shared, record, outcome).await
}

/// The users a change makes members who were not (a create: everyone in it).
fn admitted(before: Option<&GroupRecord>, outcome: &rules::Outcome) -> Vec<UserId> {
    let members = |r: Option<&GroupRecord>| -> Vec<u64> {
        r.and_then(|r| r.info.as_ref())
            .map(|i| i.members.iter().map(|m| m.user_id).collect())
            .unwrap_or_default()
    };
    let old = members(before);
    members(outcome.record.as_ref())
        .into_iter()
        .filter(|u| !old.contains(u))
        .map(UserId)
        .collect()
}

/// Refuses a change that would put a user in more groups than `max_groups_per_user`
/// (LIMIT_REACHED). Two changes racing for a user's last place may both pass: the cap
/// is exact to within the changes in flight, which is all it needs to be.
async fn refuse_too_many_groups(
    shared: &Shared,
    caller: UserId,
    group: GroupId,
    users: &[UserId],
) -> Result<(), v1::Error> {
    let max = shared.config.limits.max_groups_per_user;
    for chunk in users.chunks(LOOKUP_CONCURRENCY) {
        let counts =
            futures::future::join_all(chunk.iter().map(|&u| groups_of(shared, u, group, max)))
                .await;
        for (&u, count) in chunk.iter().zip(counts) {
            if count? >= max as usize {
                crate::metrics::rejected(crate::metrics::GROUPS_PER_USER);
                let message = if u == caller {
                    format!("you are in {max} groups, the most allowed; leave one first")
                } else {
                    format!("user {u} is in {max} groups, the most allowed")
                };
                return Err(error(ErrorCode::LimitReached, message));
            }
        }
    }
    Ok(())
}

/// How many groups other than `except` `user` is a current member of, exactly when it
/// may be `max` or more: the index counts deleted groups too (their members stay listed
/// and cannot leave), so near the cap the records are read to leave those out.
async fn groups_of(
    shared: &Shared,
    user: UserId,
    except: GroupId,
    max: u32,
) -> Result<usize, v1::Error> {
    let current: Vec<GroupId> = shared
        .store
        .user_groups(user)
        .await
        .map_err(|e| store_failure(&e))?
        .into_iter()
        .filter(|a| a.left_seq == 0 && a.group_id != except.get())
        .map(|a| GroupId(a.group_id))
        .collect();
    if current.len() < max as usize {
        return Ok(current.len());
    }
    let mut live = 0;
    for chunk in current.chunks(LIST_CONCURRENCY) {
        let store = &shared.store;
        let records = futures::future::join_all(chunk.iter().map(|&g| store.load(g))).await;
        for record in records {
            if let Some(r) = record.map_err(|e| store_failure(&e))?
                && !r.info.as_ref().is_some_and(|i| i.deleted)
                && rules::access(&r, user).is_some_and(|a| a.left_seq == 0)
            {
                live += 1;
            }
        }
    }
    Ok(live)
}

/// Stores what a change made of `record` (if anything) and answers with it.
async fn store_outcome(
    shared: &Shared,
    record: Option<GroupRecord>,
    outcome: rules::Outcome,
) -> Result<bus::GroupApplyReply, v1::Error> {
    let stored = match outcome.record {
        Some(next) => {
            shared
                .store
                .save(&next, record.as_ref())
                .await
                .map_err(|e| store_failure(&e))?;
            Some(next)
        }
        None => record,
    };
    Ok(bus::GroupApplyReply {
        error: None,
        state: stored.as_ref().map(rules::state),
        event: outcome.event,
        result: Some(outcome.result),
    })
}

/// Refuses to add anyone who blocked the caller. The answer does not say why (the
/// blocked user is not told), as when a user is refused for any other reason.
async fn refuse_blocked(
    shared: &Shared,
    caller: UserId,
    known: &HashMap<UserId, bool>,
) -> Result<(), v1::Error> {
    let new: Vec<UserId> = known
        .iter()
        .filter(|&(_, &exists)| exists)
        .map(|(&u, _)| u)
        .collect();
    for chunk in new.chunks(LOOKUP_CONCURRENCY) {
        let answers =
            futures::future::join_all(chunk.iter().map(|&u| shared.audiences.get(u))).await;
        for (&u, answer) in chunk.iter().zip(answers) {
            if answer?.blocks(caller) {
                return Err(error(
                    ErrorCode::Forbidden,
                    format!("user {u} cannot be added to this group by you"),
                ));
            }
        }
    }
    Ok(())
}

/// Whether each user named in a create or add exists, asked of sessions concurrently
/// (members of the group are known to exist and not asked).
async fn users_exist(
    shared: &Shared,
    users: &[u64],
    record: Option<&GroupRecord>,
) -> Result<HashMap<UserId, bool>, v1::Error> {
    let members: Vec<u64> = record
        .and_then(|r| r.info.as_ref())
        .map(|i| i.members.iter().map(|m| m.user_id).collect())
        .unwrap_or_default();
    let mut ask: Vec<UserId> = users
        .iter()
        .filter(|u| members.binary_search(u).is_err())
        .filter_map(|&u| UserId::new(u).ok())
        .collect();
    ask.sort_unstable();
    ask.dedup();
    let mut out = HashMap::with_capacity(ask.len());
    for (u, answer) in shared.users.check_many(ask).await {
        out.insert(u, answer?);
    }
    Ok(out)
}

async fn state(shared: &Shared, payload: Bytes) -> bus::GroupStateReply {
    let result = async {
        let req = bus::GroupStateRequest::decode(payload)
            .map_err(|_| error(ErrorCode::BadFrame, "undecodable GroupStateRequest"))?;
        let record = load(shared, group_of(req.group_id)?).await?;
        Ok::<_, v1::Error>(record.as_ref().map(rules::state))
    }
    .await;
    match result {
        Ok(state) => bus::GroupStateReply { error: None, state },
        Err(e) => bus::GroupStateReply {
            error: Some(e),
            state: None,
        },
    }
}

async fn query(shared: &Shared, payload: Bytes) -> bus::GroupQueryReply {
    match try_query(shared, payload).await {
        Ok(result) => bus::GroupQueryReply {
            error: None,
            result: Some(result),
        },
        Err(e) => bus::GroupQueryReply {
            error: Some(e),
            result: None,
        },
    }
}

async fn try_query(shared: &Shared, payload: Bytes) -> Result<v1::GroupResult, v1::Error> {
    let req = bus::GroupQuery::decode(payload)
        .map_err(|_| error(ErrorCode::BadFrame, "undecodable GroupQuery"))?;
    let caller = caller_of(req.caller)?;
    match req.request.and_then(|r| r.op) {
        Some(Op::Get(get)) => {
            let record = load(shared, group_of(get.group_id)?)
                .await?
                .ok_or_else(|| error(ErrorCode::NotFound, "no such group"))?;
            match rules::access(&record, caller) {
                Some(a) if a.left_seq == 0 => Ok(v1::GroupResult {
                    group: Some(rules::view(
                        &record,
                        caller,
                        &shared.config.limits,
                        now_ms(),
                    )),
                    ..Default::default()
                }),
                _ => Err(error(ErrorCode::Forbidden, "not a member of this group")),
            }
        }
        Some(Op::List(_)) => {
            let mine = shared
                .store
                .user_groups(caller)
                .await
                .map_err(|e| store_failure(&e))?;
            let current: Vec<GroupId> = mine
                .into_iter()
                .filter(|a| a.left_seq == 0)
                .map(|a| GroupId(a.group_id))
                .collect();
            let mut loaded = Vec::with_capacity(current.len());
            for chunk in current.chunks(LIST_CONCURRENCY) {
                let store = &shared.store;
                loaded
                    .extend(futures::future::join_all(chunk.iter().map(|&g| store.load(g))).await);
            }
            let mut groups = Vec::new();
            for record in loaded {
                match record.map_err(|e| store_failure(&e))? {
                    // The index may run ahead of a record (see the store): skip those.
                    Some(r) if rules::access(&r, caller).is_some_and(|a| a.left_seq == 0) => {
                        let mut info = rules::view(&r, caller, &shared.config.limits, now_ms());
                        // Names, not member lists: `member_count` says how many.
                        info.members.clear();
                        groups.push(info);
                    }
                    _ => {}
                }
            }
            Ok(v1::GroupResult {
                groups,
                ..Default::default()
            })
        }
        Some(_) => Err(error(
            ErrorCode::InvalidArgument,
            "only get and list are queries; changes go to the conversation's owner",
        )),
        None => Err(error(
            ErrorCode::InvalidArgument,
            "group request has no operation",
        )),
    }
}

async fn access(shared: &Shared, payload: Bytes) -> bus::GroupAccessReply {
    let result = async {
        let req = bus::GroupAccessRequest::decode(payload)
            .map_err(|_| error(ErrorCode::BadFrame, "undecodable GroupAccessRequest"))?;
        let user = UserId::new(req.user_id)
            .map_err(|_| error(ErrorCode::InvalidArgument, "user_id missing"))?;
        if req.group_id == 0 {
            return shared
                .store
                .user_groups(user)
                .await
                .map_err(|e| store_failure(&e));
        }
        let record = load(shared, group_of(req.group_id)?).await?;
        Ok(record
            .and_then(|r| rules::access(&r, user))
            .into_iter()
            .collect())
    }
    .await;
    match result {
        Ok(access) => bus::GroupAccessReply {
            error: None,
            access,
        },
        Err(e) => bus::GroupAccessReply {
            error: Some(e),
            access: Vec::new(),
        },
    }
}

/// `natter.admin.groups`, from the admin API: `list` pages through every group (or one
/// member's current groups) in id order, deleted ones too, as the admin view without
/// member lists (`member_count` says how many; a list of one member's groups keeps that
/// member's own entry, with their role); `limit` 0 means 100, more than
/// [`MAX_LIST_GROUPS`] is taken as that, and a page also stops before 512 KiB
/// (`more` set). `get` answers one group in the admin view with its members, deleted or
/// not; `NOT_FOUND` if it never existed.
async fn admin(shared: &Shared, payload: Bytes) -> bus::AdminGroupsReply {
    match try_admin(shared, payload).await {
        Ok(reply) => reply,
        Err(e) => bus::AdminGroupsReply {
            error: Some(e),
            ..Default::default()
        },
    }
}

async fn try_admin(shared: &Shared, payload: Bytes) -> Result<bus::AdminGroupsReply, v1::Error> {
    use bus::admin_groups_request::Op as AdminOp;
    let req = bus::AdminGroupsRequest::decode(payload)
        .map_err(|_| error(ErrorCode::BadFrame, "undecodable AdminGroupsRequest"))?;
    let now = now_ms();
    match req.op {
        Some(AdminOp::Get(group)) => {
            let record = load(shared, group_of(group)?)
                .await?
                .ok_or_else(|| error(ErrorCode::NotFound, "no such group"))?;
            Ok(bus::AdminGroupsReply {
                groups: vec![rules::admin_view(&record, &shared.config.limits, now)],
                ..Default::default()
            })
        }
        Some(AdminOp::List(list)) => {
            let limit = match usize::try_from(list.limit) {
                Ok(0) => DEFAULT_ADMIN_LIST,
                Ok(n) => n.min(MAX_LIST_GROUPS),
                Err(_) => MAX_LIST_GROUPS,
            };
            let member = (list.member != 0).then_some(UserId(list.member));
            let page = shared
                .store
                .list_groups(list.after, limit, member)
                .await
                .map_err(|e| store_failure(&e))?;
            let mut reply = bus::AdminGroupsReply {
                more: page.more,
                ..Default::default()
            };
            let mut bytes = 0;
            for record in &page.groups {
                let mut info = rules::admin_view(record, &shared.config.limits, now);
                // Lists leave the members out, but a member's own entry (their role)
                // when the list is of one member's groups.
                info.members
                    .retain(|m| member.is_some_and(|u| u.get() == m.user_id));
                bytes += info.encoded_len();
                if bytes > MAX_ADMIN_REPLY_BYTES && !reply.groups.is_empty() {
                    reply.more = true;
                    break;
                }
                reply.groups.push(info);
            }
            Ok(reply)
        }
        None => Err(error(
            ErrorCode::InvalidArgument,
            "admin groups request has no operation",
        )),
    }
}
