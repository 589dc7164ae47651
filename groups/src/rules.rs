//! Who may do what to a group, and what each operation changes: a pure function from
//! the stored record, the caller and the request to the new record, the system message
//! (if the change belongs in the conversation's log) and the answer for the client. No
//! I/O here, so every rule is tested directly (see the tests at the bottom); a refusal
//! because of a limit is counted (`metrics::rejected`), which is all it does beside.

use natter_proto::{
    ConversationId, ErrorCode, GroupId, UserId,
    bus::{self, GroupAccess, GroupRecord},
    error,
    v1::{
        self, GroupEvent, GroupEventKind, GroupInfo, GroupInvite, GroupMember, GroupPolicy,
        GroupResult, GroupRole, GroupSettings, group_request::Op,
    },
};
use rand::{Rng as _, distr::Alphanumeric};

/// Limits of the groups service. Defaults follow WhatsApp's.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most members a group may have (owner included).
    pub max_members: u32,
    /// Longest group name, in bytes.
    pub max_name_bytes: usize,
    /// Longest description, in bytes.
    pub max_description_bytes: usize,
    /// Live invite links per group.
    pub max_invites: usize,
    /// Users waiting for approval per group.
    pub max_pending_joins: usize,
    /// Users banned from joining by link per group.
    pub max_banned: usize,
    /// Groups a user may be a member of (deleted groups do not count). Checked by the
    /// service, which knows the user's other groups, not by these rules.
    pub max_groups_per_user: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_members: 1024,
            max_name_bytes: 100,
            max_description_bytes: 2048,
            max_invites: 16,
            max_pending_joins: 1024,
            max_banned: 4096,
            max_groups_per_user: 2_000,
        }
    }
}

/// Longest `create_id` and media id, in bytes.
const MAX_TOKEN_BYTES: usize = 128;
/// Random characters in an invite code after the group id.
const INVITE_SECRET_CHARS: usize = 22;

/// What an operation did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// The record to store: `None` when nothing changed (nothing to store).
    pub record: Option<GroupRecord>,
    /// The system message for the conversation's log, if the change belongs there.
    pub event: Option<GroupEvent>,
    /// The answer for the caller (the owner fills in `seq`).
    pub result: GroupResult,
}

/// Everything a change needs besides the record.
pub(crate) struct Context<'a> {
    pub caller: UserId,
    pub group: GroupId,
    /// The seq the change's system message will get in the group's conversation.
    pub next_seq: u64,
    pub now_ms: u64,
    pub limits: &'a Limits,
}

fn invalid(message: impl Into<String>) -> v1::Error {
    error(ErrorCode::InvalidArgument, message)
}

fn forbidden(message: impl Into<String>) -> v1::Error {
    error(ErrorCode::Forbidden, message)
}

fn not_found(message: impl Into<String>) -> v1::Error {
    error(ErrorCode::NotFound, message)
}

fn role_of(info: &GroupInfo, user: UserId) -> Option<GroupRole> {
    info.members
        .binary_search_by_key(&user.get(), |m| m.user_id)
        .ok()
        .map(|i| GroupRole::try_from(info.members[i].role).unwrap_or(GroupRole::Member))
}

/// Rank for "may act on": owner > admin > member.
fn rank(role: GroupRole) -> u8 {
    match role {
        GroupRole::Owner => 3,
        GroupRole::Admin => 2,
        GroupRole::Member | GroupRole::Unspecified => 1,
    }
}

fn is_admin(role: GroupRole) -> bool {
    rank(role) >= 2
}

fn policy(p: i32, default: GroupPolicy) -> GroupPolicy {
    match GroupPolicy::try_from(p) {
        Ok(GroupPolicy::Unspecified) | Err(_) => default,
        Ok(p) => p,
    }
}

fn allowed(p: i32, default: GroupPolicy, role: GroupRole) -> bool {
    match policy(p, default) {
        GroupPolicy::Admins => is_admin(role),
        _ => true,
    }
}

fn send_policy(s: &GroupSettings) -> GroupPolicy {
    policy(s.send, GroupPolicy::Everyone)
}

/// Settings with every default filled in, so what is stored says what applies.
fn full_settings(s: Option<&GroupSettings>) -> GroupSettings {
    let s = s.cloned().unwrap_or_default();
    GroupSettings {
        send: policy(s.send, GroupPolicy::Everyone) as i32,
        edit_info: policy(s.edit_info, GroupPolicy::Everyone) as i32,
        add_members: policy(s.add_members, GroupPolicy::Admins) as i32,
        join_approval: s.join_approval,
    }
}

fn check_policy_value(p: i32, field: &str) -> Result<(), v1::Error> {
    GroupPolicy::try_from(p)
        .map(|_| ())
        .map_err(|_| invalid(format!("settings.{field}: unknown policy {p}")))
}

fn check_name(name: &str, limits: &Limits) -> Result<(), v1::Error> {
    if name.trim().is_empty() {
        return Err(invalid("name must not be empty"));
    }
    if name.len() > limits.max_name_bytes {
        return Err(invalid(format!(
            "name is longer than {} bytes",
            limits.max_name_bytes
        )));
    }
    Ok(())
}

fn check_description(d: &str, limits: &Limits) -> Result<(), v1::Error> {
    if d.len() > limits.max_description_bytes {
        return Err(invalid(format!(
            "description is longer than {} bytes",
            limits.max_description_bytes
        )));
    }
    Ok(())
}

fn check_token(t: &str, field: &str) -> Result<(), v1::Error> {
    if t.len() > MAX_TOKEN_BYTES {
        return Err(invalid(format!(
            "{field} is longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    Ok(())
}

fn user(raw: u64, field: &str) -> Result<UserId, v1::Error> {
    UserId::new(raw).map_err(|_| invalid(format!("{field} must be a nonzero user id")))
}

/// The view of a group a user gets at `now_ms`: admins see live invites, pending joins
/// and bans. `max_members` is the limit that applies now (the server's setting).
pub(crate) fn view(
    record: &GroupRecord,
    viewer: UserId,
    limits: &Limits,
    now_ms: u64,
) -> GroupInfo {
    let mut info = admin_view(record, limits, now_ms);
    let admin = role_of(&info, viewer).is_some_and(is_admin);
    if !admin {
        info.invites.clear();
        info.pending_joins.clear();
        info.banned.clear();
    }
    info
}

/// The view of a group the admin API gets at `now_ms`: what a group admin sees (live
/// invites, pending joins, bans), whoever is in it, also once it is deleted.
pub(crate) fn admin_view(record: &GroupRecord, limits: &Limits, now_ms: u64) -> GroupInfo {
    let mut info = record.info.clone().unwrap_or_default();
    info.max_members = limits.max_members;
    info.member_count = u32::try_from(info.members.len()).unwrap_or(u32::MAX);
    info.invites
        .retain(|i| i.expires_at_ms == 0 || i.expires_at_ms > now_ms);
    info
}

/// What the owner of the group's conversation needs to order and fan out messages.
pub(crate) fn state(record: &GroupRecord) -> bus::GroupState {
    let info = record.info.clone().unwrap_or_default();
    let settings = info.settings.unwrap_or_default();
    let admins_only = send_policy(&settings) == GroupPolicy::Admins;
    bus::GroupState {
        group_id: info.group_id,
        version: info.version,
        deleted: info.deleted,
        members: info
            .members
            .iter()
            .map(|m| bus::GroupStateMember {
                user_id: m.user_id,
                joined_seq: m.joined_seq,
                admin: is_admin(GroupRole::try_from(m.role).unwrap_or(GroupRole::Member)),
                may_send: !info.deleted
                    && (!admins_only
                        || is_admin(GroupRole::try_from(m.role).unwrap_or(GroupRole::Member))),
            })
            .collect(),
        event_seq: record.event_seq,
        event: record.event.clone(),
    }
}

/// The part of the group's conversation `user` may read, if any.
pub(crate) fn access(record: &GroupRecord, user: UserId) -> Option<GroupAccess> {
    let info = record.info.as_ref()?;
    if let Ok(i) = info
        .members
        .binary_search_by_key(&user.get(), |m| m.user_id)
    {
        return Some(GroupAccess {
            group_id: info.group_id,
            joined_seq: info.members[i].joined_seq,
            left_seq: 0,
            user_id: user.get(),
        });
    }
    record
        .former
        .iter()
        .find(|f| f.user_id == user.get())
        .map(|f| GroupAccess {
            group_id: info.group_id,
            joined_seq: f.joined_seq,
            left_seq: f.left_seq,
            user_id: user.get(),
        })
}

/// Applies `request` (any operation but get and list) to the group's `record` (`None`:
/// the group does not exist).
pub(crate) fn apply(
    record: Option<&GroupRecord>,
    op: &Op,
    cx: &Context<'_>,
    exists: &dyn Fn(UserId) -> bool,
) -> Result<Outcome, v1::Error> {
    if let Op::Create(create) = op {
        return create_group(record, create, cx, exists);
    }
    let record = record.ok_or_else(|| not_found("no such group"))?;
    let info = record
        .info
        .as_ref()
        .ok_or_else(|| not_found("no such group"))?;
    let role = role_of(info, cx.caller);
    if info.deleted {
        return match (op, role) {
            // Members of a deleted group may still leave it (it leaves their list); the
            // dead conversation gets no system message.
            (Op::Leave(_), Some(_)) => {
                let mut next = Draft::new(record, cx);
                next.discharge(cx.caller.get());
                next.changed = true;
                Ok(next.finish())
            }
            // A repeated delete or leave (e.g. a retry after a timeout) finds its work done.
            (Op::Delete(_), Some(GroupRole::Owner)) => Ok(Draft::new(record, cx).finish()),
            (Op::Leave(_), None) if record.former.iter().any(|f| f.user_id == cx.caller.get()) => {
                Ok(Draft::new(record, cx).finish())
            }
            _ => Err(not_found("the group was deleted")),
        };
    }
    if record.event_seq >= cx.next_seq {
        // The owner would write the system message over an earlier one: it is stale.
        return Err(error(
            ErrorCode::Conflict,
            "the conversation moved on; retry",
        ));
    }
    if let Op::Join(join) = op {
        return join_by_invite(record, role, &join.code, cx);
    }
    let Some(role) = role else {
        if matches!(op, Op::Leave(_)) && record.former.iter().any(|f| f.user_id == cx.caller.get())
        {
            // Already left (a retried leave): nothing to do.
            return Ok(Draft::new(record, cx).finish());
        }
        return Err(forbidden("not a member of this group"));
    };
    let mut next = Draft::new(record, cx);
    match op {
        Op::Update(u) => next.update(role, u)?,
        Op::AddMembers(a) => next.add_members(role, &a.users, exists)?,
        Op::RemoveMember(r) => next.remove_member(role, r)?,
        Op::Leave(_) => next.leave(role)?,
        Op::SetRole(s) => next.set_role(role, s)?,
        Op::TransferOwnership(t) => next.transfer(role, t.user_id)?,
        Op::Delete(_) => next.delete(role)?,
        Op::CreateInvite(c) => next.create_invite(role, c.ttl_s)?,
        Op::RevokeInvite(r) => next.revoke_invite(role, &r.code)?,
        Op::DecideJoin(d) => next.decide_join(role, d)?,
        // Both returned above; answered, not panicked on, should that ever change.
        Op::Create(_) | Op::Join(_) => return Err(error(ErrorCode::Internal, "internal error")),
        Op::Get(_) | Op::List(_) => return Err(invalid("get and list are queries")),
    }
    Ok(next.finish())
}

/// The actor of an administrator's change (`GroupApply.admin`): no user. It is the
/// `caller` of the [`Context`] such a change runs in, so the event's `actor` is 0.
pub(crate) const NO_ACTOR: UserId = UserId(0);

/// Applies a change an administrator makes through the admin API (`GroupApply.admin`,
/// no caller) to the group's `record`; `cx.caller` is ignored ([`NO_ACTOR`] acts). Only
/// delete is accepted (anything else is `INVALID_ARGUMENT`), whatever the roles: the
/// group is deleted as by its owner (the `GROUP_EVENT_KIND_DELETED` system message, with
/// `actor` 0; the members stay, keep their history and can no longer send). Deleting a
/// deleted group is an idempotent success that changes nothing (no new system message),
/// like the owner's repeated delete, so the admin API may retry after a timeout; a
/// group that never existed is `NOT_FOUND`. The answer's group is the [`admin_view`].
pub(crate) fn apply_admin(
    record: Option<&GroupRecord>,
    op: &Op,
    cx: &Context<'_>,
) -> Result<Outcome, v1::Error> {
    if !matches!(op, Op::Delete(_)) {
        return Err(invalid("an administrator may only delete a group"));
    }
    let record = record.ok_or_else(|| not_found("no such group"))?;
    let info = record
        .info
        .as_ref()
        .ok_or_else(|| not_found("no such group"))?;
    let cx = Context {
        caller: NO_ACTOR,
        group: cx.group,
        next_seq: cx.next_seq,
        now_ms: cx.now_ms,
        limits: cx.limits,
    };
    let mut next = Draft::new(record, &cx);
    if !info.deleted {
        if record.event_seq >= cx.next_seq {
            // As in `apply`: the owner is behind the log.
            return Err(error(
                ErrorCode::Conflict,
                "the conversation moved on; retry",
            ));
        }
        next.mark_deleted();
    }
    let mut outcome = next.finish();
    let stored = outcome.record.as_ref().unwrap_or(record);
    outcome.result.group = Some(admin_view(stored, cx.limits, cx.now_ms));
    Ok(outcome)
}

fn create_group(
    existing: Option<&GroupRecord>,
    create: &v1::GroupCreate,
    cx: &Context<'_>,
    exists: &dyn Fn(UserId) -> bool,
) -> Result<Outcome, v1::Error> {
    if create.create_id.is_empty() {
        return Err(invalid("create_id must not be empty"));
    }
    check_token(&create.create_id, "create_id")?;
    if GroupId::for_create(cx.caller, &create.create_id) != cx.group {
        return Err(invalid("group id does not match the creator and create_id"));
    }
    if let Some(existing) = existing {
        let info = existing.info.as_ref();
        if existing.create_id == create.create_id
            && info.is_some_and(|i| i.created_by == cx.caller.get())
        {
            // A retried create: answer with the group as it is now.
            return Ok(Outcome {
                record: None,
                event: None,
                result: GroupResult {
                    group: Some(view(existing, cx.caller, cx.limits, cx.now_ms)),
                    ..Default::default()
                },
            });
        }
        return Err(error(
            ErrorCode::Conflict,
            "group id taken; use another create_id",
        ));
    }
    check_name(&create.name, cx.limits)?;
    check_description(&create.description, cx.limits)?;
    check_token(&create.avatar_media_id, "avatar_media_id")?;
    if let Some(s) = &create.settings {
        check_policy_value(s.send, "send")?;
        check_policy_value(s.edit_info, "edit_info")?;
        check_policy_value(s.add_members, "add_members")?;
    }
    let mut others: Vec<u64> = Vec::with_capacity(create.members.len());
    for &m in &create.members {
        let u = user(m, "members")?;
        if u != cx.caller {
            others.push(u.get());
        }
    }
    others.sort_unstable();
    others.dedup();
    if others.len() + 1 > cx.limits.max_members as usize {
        crate::metrics::rejected(crate::metrics::GROUP_MEMBERS);
        return Err(error(
            ErrorCode::GroupFull,
            format!("a group has at most {} members", cx.limits.max_members),
        ));
    }
    if let Some(missing) = others.iter().find(|&&u| !exists(UserId(u))) {
        return Err(not_found(format!("no such user: {missing}")));
    }
    let mut members: Vec<GroupMember> = others
        .iter()
        .map(|&u| GroupMember {
            user_id: u,
            role: GroupRole::Member as i32,
            joined_seq: cx.next_seq,
        })
        .collect();
    members.push(GroupMember {
        user_id: cx.caller.get(),
        role: GroupRole::Owner as i32,
        joined_seq: cx.next_seq,
    });
    members.sort_by_key(|m| m.user_id);
    let settings = full_settings(create.settings.as_ref());
    let info = GroupInfo {
        group_id: cx.group.get(),
        conversation_id: ConversationId::group(cx.group).as_str().to_owned(),
        name: create.name.clone(),
        description: create.description.clone(),
        avatar_media_id: create.avatar_media_id.clone(),
        settings: Some(settings),
        members,
        version: 1,
        created_by: cx.caller.get(),
        created_at_ms: cx.now_ms,
        deleted: false,
        max_members: cx.limits.max_members,
        invites: Vec::new(),
        pending_joins: Vec::new(),
        banned: Vec::new(),
        // Filled in by `view`: what is stored is the member list itself.
        member_count: 0,
    };
    let event = GroupEvent {
        kind: GroupEventKind::Created as i32,
        actor: cx.caller.get(),
        users: others,
        name: info.name.clone(),
        description: info.description.clone(),
        avatar_media_id: info.avatar_media_id.clone(),
        settings: Some(settings),
        version: 1,
        ..Default::default()
    };
    let record = GroupRecord {
        info: Some(info),
        former: Vec::new(),
        event_seq: cx.next_seq,
        event: Some(event.clone()),
        create_id: create.create_id.clone(),
    };
    Ok(Outcome {
        result: GroupResult {
            group: Some(view(&record, cx.caller, cx.limits, cx.now_ms)),
            ..Default::default()
        },
        record: Some(record),
        event: Some(event),
    })
}

fn join_by_invite(
    record: &GroupRecord,
    role: Option<GroupRole>,
    code: &str,
    cx: &Context<'_>,
) -> Result<Outcome, v1::Error> {
    let mut next = Draft::new(record, cx);
    let info = record.info.clone().unwrap_or_default();
    let live = info
        .invites
        .iter()
        .any(|i| i.code == code && (i.expires_at_ms == 0 || i.expires_at_ms > cx.now_ms));
    if !live {
        return Err(not_found("invite link revoked or expired"));
    }
    if role.is_some() {
        // Already in: nothing to do (a retried join lands here too).
        return Ok(next.finish());
    }
    if info.banned.contains(&cx.caller.get()) {
        return Err(error(
            ErrorCode::Banned,
            "an admin removed you from this group; ask an admin to add you",
        ));
    }
    let approval = info.settings.as_ref().is_some_and(|s| s.join_approval);
    if approval {
        let info = next.info();
        if !info.pending_joins.contains(&cx.caller.get()) {
            if info.pending_joins.len() >= cx.limits.max_pending_joins {
                crate::metrics::rejected(crate::metrics::GROUP_PENDING_JOINS);
                return Err(error(
                    ErrorCode::GroupFull,
                    "too many requests to join are waiting for approval",
                ));
            }
            info.pending_joins.push(cx.caller.get());
            info.pending_joins.sort_unstable();
            next.changed = true;
        }
        let mut outcome = next.finish();
        outcome.result.pending_approval = true;
        if let Some(info) = &mut outcome.result.group {
            // Not a member yet: the group's name and picture, not who is in it.
            info.members.clear();
        }
        return Ok(outcome);
    }
    next.admit(&[cx.caller.get()])?;
    next.event(GroupEvent {
        kind: GroupEventKind::JoinedByInvite as i32,
        users: vec![cx.caller.get()],
        ..Default::default()
    });
    Ok(next.finish())
}

/// A record being changed by one operation.
struct Draft<'a> {
    record: GroupRecord,
    cx: &'a Context<'a>,
    changed: bool,
    event: Option<GroupEvent>,
    result: GroupResult,
}

impl<'a> Draft<'a> {
    fn new(record: &GroupRecord, cx: &'a Context<'a>) -> Self {
        Draft {
            record: record.clone(),
            cx,
            changed: false,
            event: None,
            result: GroupResult::default(),
        }
    }

    fn info(&mut self) -> &mut GroupInfo {
        self.record.info.get_or_insert_with(GroupInfo::default)
    }

    fn member_index(&mut self, user: u64) -> Option<usize> {
        self.info()
            .members
            .binary_search_by_key(&user, |m| m.user_id)
            .ok()
    }

    fn role(&mut self, user: u64) -> Option<GroupRole> {
        let i = self.member_index(user)?;
        Some(GroupRole::try_from(self.info().members[i].role).unwrap_or(GroupRole::Member))
    }

    fn settings(&mut self) -> GroupSettings {
        full_settings(self.info().settings.as_ref())
    }

    fn event(&mut self, event: GroupEvent) {
        self.changed = true;
        self.event = Some(event);
    }

    /// Adds `users` (not yet members) as members at the change's seq, all or none.
    fn admit(&mut self, users: &[u64]) -> Result<(), v1::Error> {
        let max = self.cx.limits.max_members as usize;
        let next_seq = self.cx.next_seq;
        let info = self.info();
        if info.members.len() + users.len() > max {
            crate::metrics::rejected(crate::metrics::GROUP_MEMBERS);
            return Err(error(
                ErrorCode::GroupFull,
                format!("the group is full ({max} members)"),
            ));
        }
        for &u in users {
            info.members.push(GroupMember {
                user_id: u,
                role: GroupRole::Member as i32,
                joined_seq: next_seq,
            });
            info.banned.retain(|&b| b != u);
            info.pending_joins.retain(|&p| p != u);
        }
        info.members.sort_by_key(|m| m.user_id);
        self.record.former.retain(|f| !users.contains(&f.user_id));
        Ok(())
    }

    /// Moves a member to the former members, readable up to the change's seq.
    fn discharge(&mut self, user: u64) {
        let next_seq = self.cx.next_seq;
        let Some(i) = self.member_index(user) else {
            return;
        };
        let m = self.info().members.remove(i);
        self.record.former.retain(|f| f.user_id != user);
        self.record.former.push(GroupAccess {
            group_id: self.cx.group.get(),
            joined_seq: m.joined_seq,
            left_seq: next_seq,
            user_id: user,
        });
        self.record.former.sort_by_key(|f| f.user_id);
    }

    fn set_member_role(&mut self, user: u64, role: GroupRole) {
        if let Some(i) = self.member_index(user) {
            self.info().members[i].role = role as i32;
        }
    }

    fn update(&mut self, role: GroupRole, u: &v1::GroupUpdate) -> Result<(), v1::Error> {
        let settings = self.settings();
        let touches_info =
            u.name.is_some() || u.description.is_some() || u.avatar_media_id.is_some();
        if touches_info && !allowed(settings.edit_info, GroupPolicy::Everyone, role) {
            return Err(forbidden("only admins may change the group info"));
        }
        // `settings.join_approval` cannot say "unchanged" (a proto3 bool): updates take
        // the separate optional `join_approval` instead.
        let touches_settings = u.settings.is_some() || u.join_approval.is_some();
        if touches_settings && !is_admin(role) {
            return Err(forbidden("only admins may change the group settings"));
        }
        if let Some(name) = &u.name {
            check_name(name, self.cx.limits)?;
        }
        if let Some(d) = &u.description {
            check_description(d, self.cx.limits)?;
        }
        if let Some(a) = &u.avatar_media_id {
            check_token(a, "avatar_media_id")?;
        }
        let mut info_changed = false;
        let info = self.info();
        for (new, old) in [
            (&u.name, &mut info.name),
            (&u.description, &mut info.description),
            (&u.avatar_media_id, &mut info.avatar_media_id),
        ] {
            if let Some(new) = new
                && new != old
            {
                old.clone_from(new);
                info_changed = true;
            }
        }
        let mut settings_changed = false;
        if let Some(s) = &u.settings {
            check_policy_value(s.send, "send")?;
            check_policy_value(s.edit_info, "edit_info")?;
            check_policy_value(s.add_members, "add_members")?;
        }
        if touches_settings {
            let mut next = self.settings();
            if let Some(s) = &u.settings {
                for (new, old) in [
                    (s.send, &mut next.send),
                    (s.edit_info, &mut next.edit_info),
                    (s.add_members, &mut next.add_members),
                ] {
                    if new != 0 {
                        *old = new;
                    }
                }
            }
            if let Some(approval) = u.join_approval {
                next.join_approval = approval;
            }
            if next != settings {
                if !next.join_approval {
                    // Turning approval off does not admit anyone: pending requests lapse.
                    self.info().pending_joins.clear();
                }
                self.info().settings = Some(next);
                settings_changed = true;
            }
        }
        if !info_changed && !settings_changed {
            return Ok(());
        }
        let info = self.info().clone();
        self.event(GroupEvent {
            kind: if info_changed {
                GroupEventKind::InfoChanged
            } else {
                GroupEventKind::SettingsChanged
            } as i32,
            name: info.name,
            description: info.description,
            avatar_media_id: info.avatar_media_id,
            settings: settings_changed.then(|| info.settings.unwrap_or_default()),
            ..Default::default()
        });
        Ok(())
    }

    fn add_members(
        &mut self,
        role: GroupRole,
        users: &[u64],
        exists: &dyn Fn(UserId) -> bool,
    ) -> Result<(), v1::Error> {
        let settings = self.settings();
        if !allowed(settings.add_members, GroupPolicy::Admins, role) {
            return Err(forbidden("only admins may add members"));
        }
        if users.is_empty() {
            return Err(invalid("users must not be empty"));
        }
        let mut new = Vec::with_capacity(users.len());
        for &u in users {
            let id = user(u, "users")?;
            if self.member_index(id.get()).is_none() {
                new.push(id.get());
            }
        }
        new.sort_unstable();
        new.dedup();
        if new.is_empty() {
            return Ok(());
        }
        if let Some(missing) = new.iter().find(|&&u| !exists(UserId(u))) {
            return Err(not_found(format!("no such user: {missing}")));
        }
        self.admit(&new)?;
        self.event(GroupEvent {
            kind: GroupEventKind::MembersAdded as i32,
            users: new,
            ..Default::default()
        });
        Ok(())
    }

    fn remove_member(
        &mut self,
        role: GroupRole,
        r: &v1::GroupRemoveMember,
    ) -> Result<(), v1::Error> {
        let target = user(r.user_id, "user_id")?;
        if target == self.cx.caller {
            return Err(invalid("use leave to leave a group"));
        }
        if !is_admin(role) {
            return Err(forbidden("only admins may remove members"));
        }
        let Some(target_role) = self.role(target.get()) else {
            // Not a member: banning them still applies; otherwise nothing to do.
            if r.ban && !self.info().banned.contains(&target.get()) {
                self.ban(target.get())?;
            }
            return Ok(());
        };
        if rank(target_role) >= rank(role) {
            return Err(forbidden(
                "only the owner may remove an admin, and nobody the owner",
            ));
        }
        self.discharge(target.get());
        if r.ban {
            self.ban(target.get())?;
        }
        self.event(GroupEvent {
            kind: GroupEventKind::MemberRemoved as i32,
            users: vec![target.get()],
            ..Default::default()
        });
        Ok(())
    }

    fn ban(&mut self, user: u64) -> Result<(), v1::Error> {
        let max = self.cx.limits.max_banned;
        let info = self.info();
        if info.banned.len() >= max {
            crate::metrics::rejected(crate::metrics::GROUP_BANS);
            return Err(invalid(format!("a group bans at most {max} users")));
        }
        info.banned.push(user);
        info.banned.sort_unstable();
        info.pending_joins.retain(|&p| p != user);
        self.changed = true;
        Ok(())
    }

    fn leave(&mut self, role: GroupRole) -> Result<(), v1::Error> {
        let me = self.cx.caller.get();
        self.discharge(me);
        let mut new_owner = 0;
        if role == GroupRole::Owner {
            // The longest-standing admin, else the longest-standing member, takes over.
            let heir = self
                .info()
                .members
                .iter()
                .min_by_key(|m| {
                    let admin = GroupRole::try_from(m.role).is_ok_and(is_admin);
                    (!admin, m.joined_seq, m.user_id)
                })
                .map(|m| m.user_id);
            match heir {
                Some(h) => {
                    self.set_member_role(h, GroupRole::Owner);
                    new_owner = h;
                }
                None => self.info().deleted = true,
            }
        }
        self.event(GroupEvent {
            kind: GroupEventKind::MemberLeft as i32,
            users: vec![me],
            new_owner,
            ..Default::default()
        });
        Ok(())
    }

    fn set_role(&mut self, role: GroupRole, s: &v1::GroupSetRole) -> Result<(), v1::Error> {
        let target = user(s.user_id, "user_id")?;
        let new_role = match GroupRole::try_from(s.role) {
            Ok(r @ (GroupRole::Admin | GroupRole::Member)) => r,
            Ok(GroupRole::Owner) => {
                return Err(invalid("use transfer_ownership to change the owner"));
            }
            _ => return Err(invalid("role must be ADMIN or MEMBER")),
        };
        if !is_admin(role) {
            return Err(forbidden("only admins may change roles"));
        }
        let current = self
            .role(target.get())
            .ok_or_else(|| not_found("not a member of this group"))?;
        if current == GroupRole::Owner {
            return Err(forbidden(
                "the owner's role changes only by transfer_ownership",
            ));
        }
        if current == new_role {
            return Ok(());
        }
        if new_role == GroupRole::Member && role != GroupRole::Owner && target != self.cx.caller {
            return Err(forbidden("only the owner may dismiss another admin"));
        }
        self.set_member_role(target.get(), new_role);
        self.event(GroupEvent {
            kind: GroupEventKind::RoleChanged as i32,
            users: vec![target.get()],
            role: new_role as i32,
            ..Default::default()
        });
        Ok(())
    }

    fn transfer(&mut self, role: GroupRole, to: u64) -> Result<(), v1::Error> {
        let target = user(to, "user_id")?;
        if role != GroupRole::Owner {
            if self.role(target.get()) == Some(GroupRole::Owner)
                && self.record.event.as_ref().is_some_and(|e| {
                    e.kind == GroupEventKind::OwnerChanged as i32
                        && e.actor == self.cx.caller.get()
                        && e.new_owner == target.get()
                })
            {
                // The caller's own transfer, repeated: it is done.
                return Ok(());
            }
            return Err(forbidden("only the owner may transfer ownership"));
        }
        if self.role(target.get()).is_none() {
            return Err(not_found("not a member of this group"));
        }
        if target == self.cx.caller {
            return Ok(());
        }
        self.set_member_role(self.cx.caller.get(), GroupRole::Admin);
        self.set_member_role(target.get(), GroupRole::Owner);
        self.event(GroupEvent {
            kind: GroupEventKind::OwnerChanged as i32,
            users: vec![target.get()],
            new_owner: target.get(),
            ..Default::default()
        });
        Ok(())
    }

    fn delete(&mut self, role: GroupRole) -> Result<(), v1::Error> {
        if role != GroupRole::Owner {
            return Err(forbidden("only the owner may delete the group"));
        }
        self.mark_deleted();
        Ok(())
    }

    /// Deletes the group (whoever asks: checked by the caller). Members stay members, so
    /// they keep reading its history; [`state`] lets nobody send any more.
    fn mark_deleted(&mut self) {
        let info = self.info();
        info.deleted = true;
        info.invites.clear();
        info.pending_joins.clear();
        self.event(GroupEvent {
            kind: GroupEventKind::Deleted as i32,
            ..Default::default()
        });
    }

    fn create_invite(&mut self, role: GroupRole, ttl_s: u32) -> Result<(), v1::Error> {
        if !is_admin(role) {
            return Err(forbidden("only admins may create invite links"));
        }
        let now = self.cx.now_ms;
        let max = self.cx.limits.max_invites;
        let info = self.info();
        info.invites
            .retain(|i| i.expires_at_ms == 0 || i.expires_at_ms > now);
        if info.invites.len() >= max {
            crate::metrics::rejected(crate::metrics::GROUP_INVITES);
            return Err(invalid(format!(
                "a group has at most {max} live invite links; revoke one first"
            )));
        }
        let secret: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(INVITE_SECRET_CHARS)
            .map(char::from)
            .collect();
        let invite = GroupInvite {
            code: format!("{}-{secret}", self.cx.group),
            created_by: self.cx.caller.get(),
            created_at_ms: now,
            expires_at_ms: if ttl_s == 0 {
                0
            } else {
                now + u64::from(ttl_s) * 1000
            },
        };
        self.info().invites.push(invite.clone());
        self.result.invite = Some(invite);
        self.changed = true;
        Ok(())
    }

    fn revoke_invite(&mut self, role: GroupRole, code: &str) -> Result<(), v1::Error> {
        if !is_admin(role) {
            return Err(forbidden("only admins may revoke invite links"));
        }
        let info = self.info();
        let before = info.invites.len();
        info.invites.retain(|i| i.code != code);
        if info.invites.len() == before {
            return Err(not_found("no such invite link"));
        }
        self.changed = true;
        Ok(())
    }

    fn decide_join(&mut self, role: GroupRole, d: &v1::GroupDecideJoin) -> Result<(), v1::Error> {
        let target = user(d.user_id, "user_id")?;
        if !is_admin(role) {
            return Err(forbidden("only admins may approve requests to join"));
        }
        if !self.info().pending_joins.contains(&target.get()) {
            return Err(not_found("no pending request to join from this user"));
        }
        if !d.approve {
            self.info().pending_joins.retain(|&p| p != target.get());
            self.changed = true;
            return Ok(());
        }
        self.admit(&[target.get()])?;
        self.event(GroupEvent {
            kind: GroupEventKind::MembersAdded as i32,
            users: vec![target.get()],
            ..Default::default()
        });
        Ok(())
    }

    /// The new record (version + 1, with the event) if anything changed.
    fn finish(mut self) -> Outcome {
        let caller = self.cx.caller;
        if !self.changed {
            self.result.group = Some(view(&self.record, caller, self.cx.limits, self.cx.now_ms));
            return Outcome {
                record: None,
                event: None,
                result: self.result,
            };
        }
        let version = self.info().version + 1;
        self.info().version = version;
        if let Some(event) = &mut self.event {
            event.actor = caller.get();
            event.version = version;
            self.record.event_seq = self.cx.next_seq;
            self.record.event = Some(event.clone());
        }
        self.result.group = Some(view(&self.record, caller, self.cx.limits, self.cx.now_ms));
        Outcome {
            record: Some(self.record),
            event: self.event,
            result: self.result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: UserId = UserId(10);
    const ADMIN: UserId = UserId(20);
    const MEMBER: UserId = UserId(30);
    const OUTSIDER: UserId = UserId(40);

    fn limits(max_members: u32) -> Limits {
        Limits {
            max_members,
            ..Default::default()
        }
    }

    fn everyone(_: UserId) -> bool {
        true
    }

    /// Applies `op` as `caller` at `next_seq`, returning the outcome.
    fn run(
        record: Option<&GroupRecord>,
        caller: UserId,
        op: Op,
        next_seq: u64,
        limits: &Limits,
    ) -> Result<Outcome, v1::Error> {
        let group = record
            .and_then(|r| r.info.as_ref())
            .map(|i| GroupId(i.group_id))
            .unwrap_or_else(|| match &op {
                Op::Create(c) => GroupId::for_create(caller, &c.create_id),
                _ => GroupId(1),
            });
        let cx = Context {
            caller,
            group,
            next_seq,
            now_ms: 1_000,
            limits,
        };
        apply(record, &op, &cx, &everyone)
    }

    fn code(r: Result<Outcome, v1::Error>) -> ErrorCode {
        let e = r.expect_err("an error");
        ErrorCode::try_from(e.code).expect("a known code")
    }

    /// Owner, an admin and a member, created at seq 1; the next change gets seq 2.
    fn group(limits: &Limits) -> GroupRecord {
        let created = run(
            None,
            OWNER,
            Op::Create(v1::GroupCreate {
                create_id: "c1".into(),
                name: "Trip".into(),
                members: vec![ADMIN.get(), MEMBER.get()],
                ..Default::default()
            }),
            1,
            limits,
        )
        .expect("create");
        let record = created.record.expect("stored");
        let promoted = run(
            Some(&record),
            OWNER,
            Op::SetRole(v1::GroupSetRole {
                group_id: record.info.as_ref().unwrap().group_id,
                user_id: ADMIN.get(),
                role: GroupRole::Admin as i32,
            }),
            2,
            limits,
        )
        .expect("promote");
        promoted.record.expect("stored")
    }

    fn gid(r: &GroupRecord) -> u64 {
        r.info.as_ref().unwrap().group_id
    }

    fn members(r: &GroupRecord) -> Vec<(u64, GroupRole)> {
        r.info
            .as_ref()
            .unwrap()
            .members
            .iter()
            .map(|m| (m.user_id, GroupRole::try_from(m.role).unwrap()))
            .collect()
    }

    #[test]
    fn create_makes_the_caller_owner_and_a_retry_returns_the_same_group() {
        let l = limits(10);
        let g = group(&l);
        assert_eq!(
            members(&g),
            vec![
                (10, GroupRole::Owner),
                (20, GroupRole::Admin),
                (30, GroupRole::Member)
            ]
        );
        assert_eq!(g.info.as_ref().unwrap().version, 2);
        let again = run(
            Some(&g),
            OWNER,
            Op::Create(v1::GroupCreate {
                create_id: "c1".into(),
                name: "Trip".into(),
                ..Default::default()
            }),
            3,
            &l,
        )
        .expect("a retried create");
        assert!(again.record.is_none() && again.event.is_none());
        // Someone else's create landing on the same id is a conflict, not a takeover.
        let cx = Context {
            caller: MEMBER,
            group: GroupId(gid(&g)),
            next_seq: 3,
            now_ms: 0,
            limits: &l,
        };
        let create = Op::Create(v1::GroupCreate {
            create_id: "c1".into(),
            name: "x".into(),
            ..Default::default()
        });
        let e = apply(Some(&g), &create, &cx, &everyone).expect_err("refused");
        assert_eq!(e.code, ErrorCode::InvalidArgument as i32, "id must match");
    }

    #[test]
    fn create_validates_name_size_and_users() {
        let l = limits(3);
        let create = |name: &str, members: Vec<u64>| {
            Op::Create(v1::GroupCreate {
                create_id: "x".into(),
                name: name.into(),
                members,
                ..Default::default()
            })
        };
        assert_eq!(
            code(run(None, OWNER, create(" ", vec![]), 1, &l)),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(run(None, OWNER, create(&"n".repeat(101), vec![]), 1, &l)),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(run(None, OWNER, create("ok", vec![1, 2, 3]), 1, &l)),
            ErrorCode::GroupFull
        );
        // The creator listed among the members counts once.
        assert!(run(None, OWNER, create("ok", vec![1, 2, OWNER.get()]), 1, &l).is_ok());
        let cx = Context {
            caller: OWNER,
            group: GroupId::for_create(OWNER, "x"),
            next_seq: 1,
            now_ms: 0,
            limits: &l,
        };
        let e = apply(None, &create("ok", vec![5]), &cx, &|u| u != UserId(5)).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound as i32);
    }

    #[test]
    fn members_cannot_do_admin_things_and_outsiders_nothing() {
        let l = limits(10);
        let g = group(&l);
        let id = gid(&g);
        let remove = |u: UserId| {
            Op::RemoveMember(v1::GroupRemoveMember {
                group_id: id,
                user_id: u.get(),
                ban: false,
            })
        };
        assert_eq!(
            code(run(Some(&g), MEMBER, remove(ADMIN), 3, &l)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(run(Some(&g), ADMIN, remove(OWNER), 3, &l)),
            ErrorCode::Forbidden
        );
        let add = Op::AddMembers(v1::GroupAddMembers {
            group_id: id,
            users: vec![OUTSIDER.get()],
        });
        assert_eq!(
            code(run(Some(&g), MEMBER, add.clone(), 3, &l)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(run(Some(&g), OUTSIDER, add, 3, &l)),
            ErrorCode::Forbidden
        );
        let invite = Op::CreateInvite(v1::GroupCreateInvite {
            group_id: id,
            ttl_s: 0,
        });
        assert_eq!(
            code(run(Some(&g), MEMBER, invite, 3, &l)),
            ErrorCode::Forbidden
        );
        let delete = Op::Delete(v1::GroupDelete { group_id: id });
        assert_eq!(
            code(run(Some(&g), ADMIN, delete, 3, &l)),
            ErrorCode::Forbidden
        );
        let settings = Op::Update(v1::GroupUpdate {
            group_id: id,
            join_approval: Some(true),
            ..Default::default()
        });
        assert_eq!(
            code(run(Some(&g), MEMBER, settings, 3, &l)),
            ErrorCode::Forbidden
        );
        // Demoting another admin is the owner's; stepping down is anyone's.
        let demote = |u: UserId| {
            Op::SetRole(v1::GroupSetRole {
                group_id: id,
                user_id: u.get(),
                role: GroupRole::Member as i32,
            })
        };
        assert!(run(Some(&g), ADMIN, demote(ADMIN), 3, &l).is_ok());
        assert!(run(Some(&g), OWNER, demote(ADMIN), 3, &l).is_ok());
    }

    #[test]
    fn removal_moves_a_member_to_former_with_the_change_seq() {
        let l = limits(10);
        let g = group(&l);
        let out = run(
            Some(&g),
            ADMIN,
            Op::RemoveMember(v1::GroupRemoveMember {
                group_id: gid(&g),
                user_id: MEMBER.get(),
                ban: true,
            }),
            7,
            &l,
        )
        .expect("remove");
        let r = out.record.expect("stored");
        assert_eq!(
            access(&r, MEMBER).map(|a| (a.joined_seq, a.left_seq)),
            Some((1, 7))
        );
        assert_eq!(r.event_seq, 7);
        assert_eq!(
            out.event.map(|e| (e.kind, e.users)),
            Some((GroupEventKind::MemberRemoved as i32, vec![MEMBER.get()]))
        );
        assert_eq!(r.info.as_ref().unwrap().banned, vec![MEMBER.get()]);
        // Their state for the owner: not a member, cannot send.
        assert!(state(&r).members.iter().all(|m| m.user_id != MEMBER.get()));
        // Re-adding lifts the ban and starts a new window.
        let back = run(
            Some(&r),
            OWNER,
            Op::AddMembers(v1::GroupAddMembers {
                group_id: gid(&r),
                users: vec![MEMBER.get()],
            }),
            9,
            &l,
        )
        .expect("add")
        .record
        .expect("stored");
        assert_eq!(
            access(&back, MEMBER).map(|a| (a.joined_seq, a.left_seq)),
            Some((9, 0))
        );
        assert!(back.info.as_ref().unwrap().banned.is_empty());
    }

    #[test]
    fn joins_by_link_respect_bans_approval_expiry_and_size() {
        let l = limits(4);
        let g = group(&l);
        let id = gid(&g);
        let out = run(
            Some(&g),
            ADMIN,
            Op::CreateInvite(v1::GroupCreateInvite {
                group_id: id,
                ttl_s: 60,
            }),
            3,
            &l,
        )
        .expect("invite");
        assert!(out.event.is_none(), "invites are not in the log");
        let code_str = out.result.invite.expect("an invite").code;
        assert_eq!(GroupId::of_invite(&code_str), Some(GroupId(id)));
        let g = out.record.expect("stored");
        let join = || {
            Op::Join(v1::GroupJoin {
                code: code_str.clone(),
            })
        };
        let joined = run(Some(&g), OUTSIDER, join(), 3, &l).expect("join");
        assert_eq!(
            joined.event.as_ref().map(|e| e.kind),
            Some(GroupEventKind::JoinedByInvite as i32)
        );
        let full = joined.record.expect("stored");
        assert_eq!(
            code(run(Some(&full), UserId(50), join(), 4, &l)),
            ErrorCode::GroupFull
        );
        // A wrong secret, and an expired link, are unknown links.
        let bad = Op::Join(v1::GroupJoin {
            code: format!("{id}-nope"),
        });
        assert_eq!(
            code(run(Some(&g), UserId(50), bad, 4, &l)),
            ErrorCode::NotFound
        );
        let cx = Context {
            caller: UserId(50),
            group: GroupId(id),
            next_seq: 4,
            now_ms: 1_000 + 61_000,
            limits: &l,
        };
        let e = apply(Some(&g), &join(), &cx, &everyone).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound as i32);
        // Banned users are told so.
        let mut banned = g.clone();
        banned.info.as_mut().unwrap().banned.push(60);
        assert_eq!(
            code(run(Some(&banned), UserId(60), join(), 4, &l)),
            ErrorCode::Banned
        );
        // With approval on, a join waits and shows no members.
        let mut approval = g.clone();
        approval
            .info
            .as_mut()
            .unwrap()
            .settings
            .as_mut()
            .unwrap()
            .join_approval = true;
        let waiting = run(Some(&approval), UserId(70), join(), 4, &l).expect("pending");
        assert!(waiting.result.pending_approval && waiting.event.is_none());
        assert!(waiting.result.group.expect("info").members.is_empty());
        let pending = waiting.record.expect("stored");
        assert_eq!(pending.info.as_ref().unwrap().pending_joins, vec![70]);
        let approve = Op::DecideJoin(v1::GroupDecideJoin {
            group_id: id,
            user_id: 70,
            approve: true,
        });
        assert_eq!(
            code(run(Some(&pending), MEMBER, approve.clone(), 5, &l)),
            ErrorCode::Forbidden
        );
        let admitted = run(Some(&pending), ADMIN, approve, 5, &l).expect("approve");
        assert!(
            admitted
                .record
                .expect("stored")
                .info
                .unwrap()
                .pending_joins
                .is_empty()
        );
    }

    #[test]
    fn an_owner_leaving_hands_over_and_the_last_one_out_deletes() {
        let l = limits(10);
        let g = group(&l);
        let left = run(
            Some(&g),
            OWNER,
            Op::Leave(v1::GroupLeave { group_id: gid(&g) }),
            3,
            &l,
        )
        .expect("leave");
        assert_eq!(left.event.as_ref().map(|e| e.new_owner), Some(ADMIN.get()));
        let g = left.record.expect("stored");
        assert_eq!(
            members(&g),
            vec![(20, GroupRole::Owner), (30, GroupRole::Member)]
        );
        // A retried leave finds its work done.
        let again = run(
            Some(&g),
            OWNER,
            Op::Leave(v1::GroupLeave { group_id: gid(&g) }),
            4,
            &l,
        )
        .expect("a retried leave");
        assert!(again.record.is_none());
        let g = run(
            Some(&g),
            ADMIN,
            Op::Leave(v1::GroupLeave { group_id: gid(&g) }),
            4,
            &l,
        )
        .unwrap()
        .record
        .unwrap();
        let last = run(
            Some(&g),
            MEMBER,
            Op::Leave(v1::GroupLeave { group_id: gid(&g) }),
            5,
            &l,
        )
        .unwrap()
        .record
        .unwrap();
        assert!(last.info.as_ref().unwrap().deleted);
        assert!(last.info.as_ref().unwrap().members.is_empty());
        let again = run(
            Some(&last),
            MEMBER,
            Op::Leave(v1::GroupLeave { group_id: gid(&g) }),
            6,
            &l,
        )
        .expect("a retried last leave");
        assert!(again.record.is_none());
    }

    #[test]
    fn a_deleted_group_refuses_everything_but_leave_and_a_repeated_delete() {
        let l = limits(10);
        let g = group(&l);
        let id = gid(&g);
        let deleted = run(
            Some(&g),
            OWNER,
            Op::Delete(v1::GroupDelete { group_id: id }),
            3,
            &l,
        )
        .expect("delete")
        .record
        .expect("stored");
        assert!(state(&deleted).deleted);
        assert!(state(&deleted).members.iter().all(|m| !m.may_send));
        let add = Op::AddMembers(v1::GroupAddMembers {
            group_id: id,
            users: vec![OUTSIDER.get()],
        });
        assert_eq!(
            code(run(Some(&deleted), OWNER, add, 4, &l)),
            ErrorCode::NotFound
        );
        let again = run(
            Some(&deleted),
            OWNER,
            Op::Delete(v1::GroupDelete { group_id: id }),
            4,
            &l,
        )
        .expect("a repeated delete");
        assert!(again.record.is_none());
        let by_member = run(
            Some(&deleted),
            MEMBER,
            Op::Delete(v1::GroupDelete { group_id: id }),
            4,
            &l,
        );
        assert_eq!(code(by_member), ErrorCode::NotFound);
        let left = run(
            Some(&deleted),
            MEMBER,
            Op::Leave(v1::GroupLeave { group_id: id }),
            4,
            &l,
        )
        .expect("leave a deleted group")
        .record
        .expect("stored");
        assert!(
            left.event.is_none() || left.event == deleted.event,
            "no new log entry"
        );
        assert_eq!(access(&left, MEMBER).map(|a| a.left_seq), Some(4));
    }

    /// Applies `op` as an administrator (no caller) at `next_seq`.
    fn run_admin(
        record: Option<&GroupRecord>,
        op: Op,
        next_seq: u64,
        limits: &Limits,
    ) -> Result<Outcome, v1::Error> {
        let group = record
            .and_then(|r| r.info.as_ref())
            .map_or(GroupId(1), |i| GroupId(i.group_id));
        // Whatever caller the context names, nobody acts.
        let cx = Context {
            caller: OWNER,
            group,
            next_seq,
            now_ms: 1_000,
            limits,
        };
        apply_admin(record, &op, &cx)
    }

    #[test]
    fn an_administrator_deletes_a_group_as_nobody_and_members_keep_its_history() {
        let l = limits(10);
        let g = group(&l);
        let id = gid(&g);
        let out = run_admin(
            Some(&g),
            Op::Delete(v1::GroupDelete { group_id: id }),
            3,
            &l,
        )
        .expect("an administrator's delete");
        let event = out.event.expect("a system message");
        assert_eq!(event.kind, GroupEventKind::Deleted as i32);
        assert_eq!(event.actor, 0, "no user deleted it");
        assert_eq!(event.version, 3);
        let r = out.record.expect("stored");
        assert_eq!((r.event_seq, r.event.as_ref()), (3, Some(&event)));
        assert!(r.info.as_ref().unwrap().deleted);
        assert_eq!(members(&r), members(&g), "the members stay");
        for u in [OWNER, ADMIN, MEMBER] {
            assert_eq!(
                access(&r, u).map(|a| (a.joined_seq, a.left_seq)),
                Some((1, 0)),
                "{u} still reads the whole history"
            );
        }
        let s = state(&r);
        assert!(s.deleted && s.members.iter().all(|m| !m.may_send));
        assert!(out.result.group.expect("the group").deleted);
        // The owner's own delete of it, and any other change, now find it gone.
        assert_eq!(
            code(run(
                Some(&r),
                ADMIN,
                Op::Update(v1::GroupUpdate {
                    group_id: id,
                    name: Some("x".into()),
                    ..Default::default()
                }),
                4,
                &l
            )),
            ErrorCode::NotFound
        );
        // Again (a retry): an idempotent success with nothing to store or log.
        let again = run_admin(
            Some(&r),
            Op::Delete(v1::GroupDelete { group_id: id }),
            4,
            &l,
        )
        .expect("a repeated delete");
        assert!(again.record.is_none() && again.event.is_none());
        assert!(again.result.group.expect("the group").deleted);
    }

    #[test]
    fn an_administrator_may_only_delete_existing_groups_in_order() {
        let l = limits(10);
        let g = group(&l);
        let id = gid(&g);
        let others = [
            Op::Update(v1::GroupUpdate {
                group_id: id,
                name: Some("taken over".into()),
                ..Default::default()
            }),
            Op::AddMembers(v1::GroupAddMembers {
                group_id: id,
                users: vec![OUTSIDER.get()],
            }),
            Op::RemoveMember(v1::GroupRemoveMember {
                group_id: id,
                user_id: MEMBER.get(),
                ban: false,
            }),
            Op::SetRole(v1::GroupSetRole {
                group_id: id,
                user_id: MEMBER.get(),
                role: GroupRole::Admin as i32,
            }),
            Op::TransferOwnership(v1::GroupTransferOwnership {
                group_id: id,
                user_id: MEMBER.get(),
            }),
            Op::Leave(v1::GroupLeave { group_id: id }),
            Op::CreateInvite(v1::GroupCreateInvite {
                group_id: id,
                ttl_s: 0,
            }),
            Op::Create(v1::GroupCreate {
                create_id: "c1".into(),
                name: "Trip".into(),
                ..Default::default()
            }),
        ];
        for op in others {
            assert_eq!(
                code(run_admin(Some(&g), op.clone(), 3, &l)),
                ErrorCode::InvalidArgument,
                "{op:?}"
            );
        }
        let delete = || Op::Delete(v1::GroupDelete { group_id: id });
        assert_eq!(code(run_admin(None, delete(), 1, &l)), ErrorCode::NotFound);
        // An owner behind the log would write over the newest change.
        assert_eq!(
            code(run_admin(Some(&g), delete(), 2, &l)),
            ErrorCode::Conflict
        );
    }

    #[test]
    fn send_policy_admins_only_lets_admins_send() {
        let l = limits(10);
        let g = group(&l);
        let out = run(
            Some(&g),
            ADMIN,
            Op::Update(v1::GroupUpdate {
                group_id: gid(&g),
                settings: Some(GroupSettings {
                    send: GroupPolicy::Admins as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            3,
            &l,
        )
        .expect("update");
        assert_eq!(
            out.event.as_ref().map(|e| e.kind),
            Some(GroupEventKind::SettingsChanged as i32)
        );
        let s = state(&out.record.expect("stored"));
        let may: Vec<(u64, bool)> = s.members.iter().map(|m| (m.user_id, m.may_send)).collect();
        assert_eq!(may, vec![(10, true), (20, true), (30, false)]);
    }

    #[test]
    fn repeats_change_nothing_and_a_stale_owner_is_refused() {
        let l = limits(10);
        let g = group(&l);
        let add = Op::AddMembers(v1::GroupAddMembers {
            group_id: gid(&g),
            users: vec![MEMBER.get()],
        });
        let out = run(Some(&g), OWNER, add.clone(), 3, &l).expect("add an existing member");
        assert!(out.record.is_none() && out.event.is_none());
        // An owner whose next seq is not past the newest change is behind the log.
        assert_eq!(code(run(Some(&g), OWNER, add, 2, &l)), ErrorCode::Conflict);
    }
}
