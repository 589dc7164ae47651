//! How results look: one line per item for people, one JSON object per line for scripts
//! (`--json`). Ids are decimal strings in JSON, as in natter's REST API, so that tools with
//! 53-bit numbers keep them exact; seqs and counts are numbers.

use natter_client::v1::{self, GroupEventKind, GroupRole, MessageKind};
use serde_json::{Value, json};

use crate::session::Identity;

/// Names users in output: usernames this identity knows, else ids.
pub trait Names {
    fn name(&self, user: u64) -> String;
    fn known(&self, user: u64) -> Option<String>;
}

impl Names for Identity {
    fn name(&self, user: u64) -> String {
        Identity::name(self, user)
    }
    fn known(&self, user: u64) -> Option<String> {
        self.known_name(user).map(str::to_owned)
    }
}

fn role_name(role: GroupRole) -> &'static str {
    match role {
        GroupRole::Owner => "owner",
        GroupRole::Admin => "admin",
        GroupRole::Member => "member",
        GroupRole::Unspecified => "unknown",
    }
}

fn event_kind_name(kind: GroupEventKind) -> String {
    kind.as_str_name()
        .trim_start_matches("GROUP_EVENT_KIND_")
        .to_ascii_lowercase()
}

fn list(names: &impl Names, users: &[u64]) -> String {
    let all: Vec<String> = users.iter().map(|u| names.name(*u)).collect();
    match all.as_slice() {
        [] => "nobody".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Every user a message names: its sender and the users of its group event.
pub fn message_users(m: &v1::Message) -> Vec<u64> {
    let mut users = vec![m.sender_user];
    if let Some(e) = &m.event {
        users.push(e.actor);
        users.push(e.new_owner);
        users.extend(&e.users);
    }
    users.retain(|u| *u != 0);
    users
}

/// A group change as a sentence: "ann added bo".
pub fn system_text(names: &impl Names, e: &v1::GroupEvent) -> String {
    let actor = names.name(e.actor);
    let users = list(names, &e.users);
    match e.kind() {
        GroupEventKind::Created if e.users.is_empty() => {
            format!("{actor} created the group \"{}\"", e.name)
        }
        GroupEventKind::Created => {
            format!("{actor} created the group \"{}\" with {users}", e.name)
        }
        GroupEventKind::MembersAdded => format!("{actor} added {users}"),
        GroupEventKind::MemberRemoved => format!("{actor} removed {users}"),
        GroupEventKind::MemberLeft if e.new_owner != 0 => {
            format!("{actor} left; {} is the owner now", names.name(e.new_owner))
        }
        GroupEventKind::MemberLeft => format!("{actor} left"),
        GroupEventKind::RoleChanged => {
            format!("{actor} made {users} {}", role_name(e.role()))
        }
        GroupEventKind::OwnerChanged => format!("{actor} made {users} the owner"),
        GroupEventKind::InfoChanged => {
            format!("{actor} changed the group info (name \"{}\")", e.name)
        }
        GroupEventKind::SettingsChanged => format!("{actor} changed the group settings"),
        GroupEventKind::JoinedByInvite => format!("{users} joined by invite link"),
        GroupEventKind::Deleted => format!("{actor} deleted the group"),
        GroupEventKind::Unspecified => format!("{actor} changed the group"),
    }
}

/// The readable part of a message: its text, the system sentence or a size.
fn body_text(names: &impl Names, m: &v1::Message) -> String {
    match m.kind() {
        MessageKind::System => match &m.event {
            Some(e) => system_text(names, e),
            None => "(group change)".into(),
        },
        MessageKind::Binary => format!("({} bytes)", m.body.len()),
        _ => String::from_utf8_lossy(&m.body).into_owned(),
    }
}

/// `<conversation> #<seq> <sender>: <text>`; system messages read `... * ann added bo`.
pub fn message_line(names: &impl Names, m: &v1::Message) -> String {
    let text = body_text(names, m);
    if m.kind() == MessageKind::System {
        format!("{} #{} * {text}", m.conversation_id, m.seq)
    } else {
        format!(
            "{} #{} {}: {text}",
            m.conversation_id,
            m.seq,
            names.name(m.sender_user)
        )
    }
}

pub fn message_json(names: &impl Names, m: &v1::Message) -> Value {
    let kind = match m.kind() {
        MessageKind::System => "system",
        MessageKind::Binary => "binary",
        _ => "text",
    };
    let mut v = json!({
        "conversation_id": m.conversation_id,
        "seq": m.seq,
        "message_id": m.message_id.to_string(),
        "sender_user": m.sender_user.to_string(),
        "sender_username": names.known(m.sender_user),
        "sender_device": m.sender_device.to_string(),
        "kind": kind,
        "text": body_text(names, m),
        "created_at_ms": m.created_at_ms,
    });
    if m.reply_to_seq != 0 {
        v["reply_to_seq"] = json!(m.reply_to_seq);
    }
    if let Some(e) = &m.event {
        v["event"] = json!({
            "kind": event_kind_name(e.kind()),
            "actor": e.actor.to_string(),
            "users": e.users.iter().map(u64::to_string).collect::<Vec<_>>(),
            "version": e.version,
        });
    }
    v
}

pub fn ack_line(ack: &v1::Ack) -> String {
    format!("sent {} #{}", ack.conversation_id, ack.seq)
}

pub fn ack_json(ack: &v1::Ack) -> Value {
    json!({
        "conversation_id": ack.conversation_id,
        "seq": ack.seq,
        "message_id": ack.message_id.to_string(),
        "client_msg_id": ack.client_msg_id,
        "created_at_ms": ack.created_at_ms,
    })
}

/// A group as a header line and one line per member (when the member list is known).
pub fn group_lines(names: &impl Names, g: &v1::GroupInfo) -> Vec<String> {
    let mut out = vec![format!(
        "{} \"{}\" ({} members, version {}){}",
        g.conversation_id,
        g.name,
        g.member_count,
        g.version,
        if g.deleted { " deleted" } else { "" }
    )];
    for m in &g.members {
        out.push(format!(
            "  {} {}",
            names.name(m.user_id),
            role_name(m.role())
        ));
    }
    for i in &g.invites {
        out.push(format!("  invite {}", i.code));
    }
    out
}

pub fn group_json(names: &impl Names, g: &v1::GroupInfo) -> Value {
    json!({
        "group_id": g.group_id.to_string(),
        "conversation_id": g.conversation_id,
        "name": g.name,
        "description": g.description,
        "member_count": g.member_count,
        "version": g.version,
        "deleted": g.deleted,
        "created_by": g.created_by.to_string(),
        "members": g.members.iter().map(|m| json!({
            "user_id": m.user_id.to_string(),
            "username": names.known(m.user_id),
            "role": role_name(m.role()),
            "joined_seq": m.joined_seq,
        })).collect::<Vec<_>>(),
        "invites": g.invites.iter().map(|i| json!({
            "code": i.code,
            "expires_at_ms": i.expires_at_ms,
        })).collect::<Vec<_>>(),
    })
}
