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

/// `183 KiB`, `2.1 MiB`: sizes as people read them (binary units).
pub fn size_text(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{} KiB", (b / KIB).round())
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    }
}

/// `0:07`, `12:30`, `1:02:03`.
pub fn duration_text(ms: u32) -> String {
    let s = u64::from(ms).div_ceil(1000);
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// What a media is, in brackets: `[photo 1600x1200 183 KiB]`, `[voice 0:07]`,
/// `[document report.pdf 2.1 MiB]`.
pub fn media_label(m: &v1::MediaRef) -> String {
    let dims = (m.width > 0 && m.height > 0).then(|| format!("{}x{}", m.width, m.height));
    let duration = (m.duration_ms > 0).then(|| duration_text(m.duration_ms));
    let name = (!m.filename.is_empty()).then(|| m.filename.clone());
    let size = Some(size_text(m.size));
    let parts: Vec<Option<String>> = match m.kind() {
        v1::MediaKind::Image => vec![Some("photo".into()), dims, size],
        v1::MediaKind::Video => vec![Some("video".into()), dims, duration, size],
        v1::MediaKind::Audio if m.voice => match duration {
            Some(d) => vec![Some("voice".into()), Some(d)],
            None => vec![Some("voice".into()), size],
        },
        v1::MediaKind::Audio => vec![Some("audio".into()), name, duration, size],
        v1::MediaKind::Document => vec![Some("document".into()), name, size],
        v1::MediaKind::Unspecified => vec![Some("media".into()), name, size],
    };
    let words: Vec<String> = parts.into_iter().flatten().collect();
    format!("[{}]", words.join(" "))
}

/// The label and the caption: `[photo 1600x1200 183 KiB] look`.
pub fn media_text(m: &v1::MediaRef) -> String {
    let label = media_label(m);
    if m.caption.is_empty() {
        label
    } else {
        format!("{label} {}", m.caption)
    }
}

pub fn media_json(m: &v1::MediaRef) -> Value {
    json!({
        "id": m.id,
        "kind": natter_client::media::media_kind_name(m.kind()),
        "mime": m.mime,
        "size": m.size,
        "sha256": m.sha256,
        "width": m.width,
        "height": m.height,
        "duration_ms": m.duration_ms,
        "filename": m.filename,
        "voice": m.voice,
        "caption": m.caption,
        "label": media_label(m),
    })
}

/// What a media message reads as (it may lack its media only if the server is broken).
pub fn media_message_text(m: &v1::Message) -> String {
    match &m.media {
        Some(media) => media_text(media),
        None => "[media]".into(),
    }
}

/// A call's history entry: "missed voice call", "video call, 2:05", "voice call (declined)".
pub fn call_text(m: &v1::Message) -> String {
    let Some(log) = &m.call else {
        return "[call]".into();
    };
    let media = if log.media() == v1::CallMedia::Video {
        "video call"
    } else {
        "voice call"
    };
    let group = if log.group { "group " } else { "" };
    if !log.missed {
        let s = log.duration_ms / 1000;
        return format!("{group}{media}, {}:{:02}", s / 60, s % 60);
    }
    let why = match log.reason() {
        v1::CallEndReason::Declined => "declined",
        v1::CallEndReason::Busy => "busy",
        v1::CallEndReason::Cancelled => "cancelled",
        v1::CallEndReason::Dropped => "dropped",
        _ => "no answer",
    };
    format!("missed {group}{media} ({why})")
}

/// What a message deleted for everyone by an administrator reads as.
pub const DELETED_TEXT: &str = "this message was deleted";

/// The readable part of a message: its text, the system sentence, the media or a size.
fn body_text(names: &impl Names, m: &v1::Message) -> String {
    if m.deleted {
        return DELETED_TEXT.into();
    }
    match m.kind() {
        MessageKind::System => match &m.event {
            Some(e) => system_text(names, e),
            None => "(group change)".into(),
        },
        MessageKind::Binary => format!("({} bytes)", m.body.len()),
        MessageKind::Media => media_message_text(m),
        MessageKind::Call => call_text(m),
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
        MessageKind::Media => "media",
        MessageKind::Call => "call",
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
    if m.deleted {
        v["deleted"] = json!(true);
    }
    if let Some(media) = &m.media {
        // `text` is the caption; `media` all the rest.
        v["text"] = json!(media.caption);
        v["media"] = media_json(media);
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

/// A message deleted after it was shown: `<conversation> #<seq> this message was deleted`.
pub fn deleted_line(conversation_id: &str, seq: u64) -> String {
    format!("{conversation_id} #{seq} {DELETED_TEXT}")
}

/// The same as a message's JSON line would say it: its place and `"deleted": true`.
pub fn deleted_json(conversation_id: &str, seq: u64) -> Value {
    json!({
        "conversation_id": conversation_id,
        "seq": seq,
        "deleted": true,
        "text": DELETED_TEXT,
    })
}

/// An announcement from the operators: `📢 <text>`.
pub fn announcement_line(text: &str) -> String {
    format!("📢 {text}")
}

pub fn announcement_json(id: u64, text: &str, created_at_ms: u64) -> Value {
    json!({
        "announcement": {
            "id": id.to_string(),
            "text": text,
            "created_at_ms": created_at_ms,
        }
    })
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

// ---------------------------------------------------------------------------------
// People and presence.

/// `VISIBILITY_CONTACTS` → `contacts`.
pub fn visibility_name(v: v1::Visibility) -> &'static str {
    match v {
        v1::Visibility::Everyone => "everyone",
        v1::Visibility::Contacts => "contacts",
        v1::Visibility::Nobody => "nobody",
        v1::Visibility::Unspecified => "unknown",
    }
}

/// A profile as a header line (`bo (user 2)`) and one line per field that is set.
pub fn profile_lines(p: &v1::Profile) -> Vec<String> {
    let mut out = vec![format!("{} (user {})", p.username, p.user_id)];
    for (label, value) in [
        ("name", &p.display_name),
        ("about", &p.about),
        ("avatar", &p.avatar_media_id),
    ] {
        if !value.is_empty() {
            out.push(format!("  {label}: {value}"));
        }
    }
    out
}

pub fn profile_json(p: &v1::Profile) -> Value {
    json!({
        "user_id": p.user_id.to_string(),
        "username": p.username,
        "display_name": p.display_name,
        "about": p.about,
        "avatar_media_id": p.avatar_media_id,
        "updated_at_ms": p.updated_at_ms,
    })
}

pub fn privacy_lines(s: &v1::PrivacySettings) -> Vec<String> {
    vec![
        format!("last seen: {}", visibility_name(s.last_seen())),
        format!("online: {}", visibility_name(s.online())),
        format!("profile photo: {}", visibility_name(s.profile_photo())),
        format!("about: {}", visibility_name(s.about())),
    ]
}

pub fn privacy_json(s: &v1::PrivacySettings) -> Value {
    json!({
        "last_seen": visibility_name(s.last_seen()),
        "online": visibility_name(s.online()),
        "profile_photo": visibility_name(s.profile_photo()),
        "about": visibility_name(s.about()),
    })
}

/// `bo (user 2) "Bobby"`: the contact's username and the owner's name for them.
pub fn contact_line(c: &v1::Contact) -> String {
    let mut line = format!("{} (user {})", c.username, c.user_id);
    if !c.name.is_empty() {
        line.push_str(&format!(" \"{}\"", c.name));
    }
    if let Some(p) = &c.profile
        && !p.display_name.is_empty()
        && p.display_name != c.name
    {
        line.push_str(&format!(" [{}]", p.display_name));
    }
    line
}

pub fn contact_json(c: &v1::Contact) -> Value {
    json!({
        "user_id": c.user_id.to_string(),
        "username": c.username,
        "name": c.name,
        "added_at_ms": c.added_at_ms,
        "profile": c.profile.as_ref().map(profile_json),
    })
}

/// `#123 10:05 text`, with the view count (own statuses) or whether it was viewed.
pub fn status_line(s: &v1::Status, own: bool, now_ms: u64) -> String {
    let mut line = format!(
        "#{} {} {}",
        s.status_id,
        crate::app::when(s.created_at_ms, now_ms),
        s.text
    );
    if !s.media_id.is_empty() {
        line.push_str(&format!(" (media {})", s.media_id));
    }
    if own {
        let n = s.view_count;
        line.push_str(&format!(" ({n} view{})", if n == 1 { "" } else { "s" }));
    } else if s.viewed {
        line.push_str(" (viewed)");
    }
    line
}

/// One status, with its poster's username when known (others' statuses).
pub fn status_json(s: &v1::Status, username: Option<&str>) -> Value {
    let mut v = json!({
        "status_id": s.status_id.to_string(),
        "user_id": s.user_id.to_string(),
        "text": s.text,
        "media_id": s.media_id,
        "created_at_ms": s.created_at_ms,
        "expires_at_ms": s.expires_at_ms,
        "view_count": s.view_count,
        "viewed": s.viewed,
    });
    if let Some(u) = username {
        v["username"] = json!(u);
    }
    v
}

/// `online`, `last seen 10:05` (`last seen Mon 30 Nov 2026 10:05` on another day),
/// `offline` (last seen hidden) or `hidden` (nothing may be seen).
pub fn presence_text(p: &v1::UserPresence, now_ms: u64) -> String {
    match p.state() {
        v1::PresenceState::Online => "online".into(),
        v1::PresenceState::Offline if p.last_seen_ms > 0 => {
            format!("last seen {}", crate::app::when(p.last_seen_ms, now_ms))
        }
        v1::PresenceState::Offline => "offline".into(),
        v1::PresenceState::Unspecified => "hidden".into(),
    }
}

pub fn presence_json(names: &impl Names, p: &v1::UserPresence) -> Value {
    let state = match p.state() {
        v1::PresenceState::Online => "online",
        v1::PresenceState::Offline => "offline",
        v1::PresenceState::Unspecified => "hidden",
    };
    json!({
        "user_id": p.user_id.to_string(),
        "username": names.known(p.user_id),
        "state": state,
        "last_seen_ms": p.last_seen_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::tests::T0;

    #[test]
    fn presence_reads_naturally() {
        let p = |state: v1::PresenceState, last_seen_ms| v1::UserPresence {
            user_id: 2,
            state: state as i32,
            last_seen_ms,
        };
        assert_eq!(
            presence_text(&p(v1::PresenceState::Online, 0), T0),
            "online"
        );
        assert_eq!(
            presence_text(&p(v1::PresenceState::Offline, T0 - 3_600_000), T0),
            "last seen 09:00"
        );
        assert_eq!(
            presence_text(&p(v1::PresenceState::Offline, T0 - 86_400_000), T0),
            "last seen Sun 29 Nov 2026 10:00"
        );
        assert_eq!(
            presence_text(&p(v1::PresenceState::Offline, 0), T0),
            "offline"
        );
        assert_eq!(
            presence_text(&p(v1::PresenceState::Unspecified, 0), T0),
            "hidden"
        );
    }

    #[test]
    fn media_reads_naturally() {
        let photo = v1::MediaRef {
            id: "m1".into(),
            kind: v1::MediaKind::Image as i32,
            mime: "image/jpeg".into(),
            size: 183 * 1024 + 100,
            width: 1600,
            height: 1200,
            caption: "look".into(),
            ..Default::default()
        };
        assert_eq!(media_text(&photo), "[photo 1600x1200 183 KiB] look");
        let voice = v1::MediaRef {
            kind: v1::MediaKind::Audio as i32,
            voice: true,
            duration_ms: 6_500,
            size: 20_000,
            ..Default::default()
        };
        assert_eq!(media_text(&voice), "[voice 0:07]");
        let doc = v1::MediaRef {
            kind: v1::MediaKind::Document as i32,
            filename: "report.pdf".into(),
            size: 2_200_000,
            ..Default::default()
        };
        assert_eq!(media_text(&doc), "[document report.pdf 2.1 MiB]");
        let video = v1::MediaRef {
            kind: v1::MediaKind::Video as i32,
            duration_ms: 3_723_000,
            size: 900,
            ..Default::default()
        };
        assert_eq!(media_text(&video), "[video 1:02:03 900 B]");
        let m = v1::Message {
            conversation_id: "d.1.2".into(),
            seq: 3,
            sender_user: 1,
            kind: MessageKind::Media as i32,
            media: Some(Box::new(photo)),
            ..Default::default()
        };
        struct NoNames;
        impl Names for NoNames {
            fn name(&self, user: u64) -> String {
                user.to_string()
            }
            fn known(&self, _: u64) -> Option<String> {
                None
            }
        }
        assert_eq!(
            message_line(&NoNames, &m),
            "d.1.2 #3 1: [photo 1600x1200 183 KiB] look"
        );
        let v = message_json(&NoNames, &m);
        assert_eq!(v["kind"], "media");
        assert_eq!(v["text"], "look");
        assert_eq!(v["media"]["id"], "m1");
        assert_eq!(v["media"]["kind"], "image");
        assert_eq!(v["media"]["width"], 1600);
    }

    #[test]
    fn deleted_messages_and_announcements_read_naturally() {
        struct NoNames;
        impl Names for NoNames {
            fn name(&self, user: u64) -> String {
                user.to_string()
            }
            fn known(&self, _: u64) -> Option<String> {
                None
            }
        }
        let m = v1::Message {
            conversation_id: "d.1.2".into(),
            seq: 4,
            sender_user: 2,
            kind: MessageKind::Media as i32,
            deleted: true,
            ..Default::default()
        };
        assert_eq!(
            message_line(&NoNames, &m),
            "d.1.2 #4 2: this message was deleted"
        );
        let v = message_json(&NoNames, &m);
        assert_eq!(v["deleted"], true);
        assert_eq!(v["text"], "this message was deleted");
        assert_eq!(
            deleted_line("d.1.2", 4),
            "d.1.2 #4 this message was deleted"
        );
        assert_eq!(deleted_json("d.1.2", 4)["seq"], 4);
        assert_eq!(announcement_line("Back at 10"), "📢 Back at 10");
        let a = announcement_json(7, "Back at 10", 1_700_000_000_000);
        assert_eq!(a["announcement"]["id"], "7");
        assert_eq!(a["announcement"]["text"], "Back at 10");
    }

    #[test]
    fn people_lines() {
        let profile = v1::Profile {
            user_id: 2,
            username: "bo".into(),
            display_name: "Bo B.".into(),
            about: String::new(),
            avatar_media_id: "m1".into(),
            updated_at_ms: T0,
        };
        assert_eq!(
            profile_lines(&profile),
            ["bo (user 2)", "  name: Bo B.", "  avatar: m1"]
        );
        let contact = v1::Contact {
            user_id: 2,
            username: "bo".into(),
            name: "Bobby".into(),
            added_at_ms: T0,
            profile: Some(profile),
        };
        assert_eq!(contact_line(&contact), "bo (user 2) \"Bobby\" [Bo B.]");
        assert_eq!(contact_json(&contact)["user_id"], "2");
        let privacy = v1::PrivacySettings {
            last_seen: v1::Visibility::Contacts as i32,
            online: v1::Visibility::Everyone as i32,
            profile_photo: v1::Visibility::Nobody as i32,
            about: v1::Visibility::Everyone as i32,
        };
        assert_eq!(privacy_lines(&privacy)[0], "last seen: contacts");
        assert_eq!(privacy_json(&privacy)["profile_photo"], "nobody");
        let status = v1::Status {
            status_id: 5,
            user_id: 2,
            text: "at the beach".into(),
            created_at_ms: T0,
            view_count: 1,
            ..Default::default()
        };
        assert_eq!(
            status_line(&status, true, T0),
            "#5 10:00 at the beach (1 view)"
        );
        assert_eq!(status_line(&status, false, T0), "#5 10:00 at the beach");
        assert_eq!(status_json(&status, Some("bo"))["status_id"], "5");
    }
}
