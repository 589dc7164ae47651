//! The people service's policy as pure functions: what a request may contain, what a
//! reader may see of a profile or a status, and how answers are put together. No I/O
//! here, so every rule is tested directly (see the tests at the bottom).

use natter_proto::{ErrorCode, UserId, error, v1};

use crate::{
    audience::{AudienceInfo, Item},
    store::{ContactRecord, ProfileRecord, StatusRecord},
};

/// Longest display name, in bytes.
pub(crate) const MAX_DISPLAY_NAME_BYTES: usize = 64;
/// Longest "about" text, in bytes.
pub(crate) const MAX_ABOUT_BYTES: usize = 256;
/// Longest media id (avatar, status media), in bytes.
pub(crate) const MAX_MEDIA_ID_BYTES: usize = 128;
/// Longest name an owner gives a contact, in bytes.
pub(crate) const MAX_CONTACT_NAME_BYTES: usize = 64;
/// Longest status text, in bytes.
pub(crate) const MAX_STATUS_TEXT_BYTES: usize = 700;
/// Longest status `post_id`, in bytes.
pub(crate) const MAX_POST_ID_BYTES: usize = 64;
/// Most users one ProfileGet may name.
pub(crate) const MAX_PROFILE_IDS: usize = 256;
/// Longest username looked up (sessions' own limit is lower; this only bounds the bus
/// message).
pub(crate) const MAX_USERNAME_BYTES: usize = 64;
/// Status ids are below this (so JavaScript numbers hold them exactly).
pub(crate) const STATUS_ID_BOUND: u64 = 1 << 53;

pub(crate) fn invalid(message: impl Into<String>) -> v1::Error {
    error(ErrorCode::InvalidArgument, message)
}

pub(crate) fn not_found(message: impl Into<String>) -> v1::Error {
    error(ErrorCode::NotFound, message)
}

pub(crate) fn limit_reached(message: impl Into<String>) -> v1::Error {
    error(ErrorCode::LimitReached, message)
}

/// Refuses `value` longer than `max` bytes, naming `field`.
fn at_most(field: &str, value: &str, max: usize) -> Result<(), v1::Error> {
    if value.len() > max {
        return Err(invalid(format!(
            "{field} is {} bytes, at most {max} allowed",
            value.len()
        )));
    }
    Ok(())
}

/// Checks the fields a ProfileUpdate sets.
pub(crate) fn check_profile_update(u: &v1::ProfileUpdate) -> Result<(), v1::Error> {
    if let Some(n) = &u.display_name {
        at_most("display_name", n, MAX_DISPLAY_NAME_BYTES)?;
    }
    if let Some(a) = &u.about {
        at_most("about", a, MAX_ABOUT_BYTES)?;
    }
    if let Some(m) = &u.avatar_media_id {
        at_most("avatar_media_id", m, MAX_MEDIA_ID_BYTES)?;
    }
    Ok(())
}

/// The profile after a (checked) ProfileUpdate: absent fields stay.
pub(crate) fn updated_profile(
    old: Option<ProfileRecord>,
    u: &v1::ProfileUpdate,
    now_ms: u64,
) -> ProfileRecord {
    let mut p = old.unwrap_or_default();
    if let Some(n) = &u.display_name {
        p.display_name.clone_from(n);
    }
    if let Some(a) = &u.about {
        p.about.clone_from(a);
    }
    if let Some(m) = &u.avatar_media_id {
        p.avatar_media_id.clone_from(m);
    }
    p.updated_at_ms = now_ms;
    p
}

/// Refuses visibility values this server does not know (0, UNSPECIFIED, is "unchanged").
pub(crate) fn check_privacy(p: &v1::PrivacySettings) -> Result<(), v1::Error> {
    for (field, v) in [
        ("last_seen", p.last_seen),
        ("online", p.online),
        ("profile_photo", p.profile_photo),
        ("about", p.about),
    ] {
        if v1::Visibility::try_from(v).is_err() {
            return Err(invalid(format!("{field}: unknown visibility {v}")));
        }
    }
    Ok(())
}

/// Checks a contact's name.
pub(crate) fn check_contact_name(name: &str) -> Result<(), v1::Error> {
    at_most("name", name, MAX_CONTACT_NAME_BYTES)
}

/// Checks a username to look up.
pub(crate) fn check_username(name: &str) -> Result<(), v1::Error> {
    if name.is_empty() {
        return Err(invalid("username missing"));
    }
    at_most("username", name, MAX_USERNAME_BYTES)
}

/// Refuses a request naming the caller where only others make sense.
pub(crate) fn not_self(caller: UserId, target: UserId, what: &str) -> Result<(), v1::Error> {
    if caller == target {
        return Err(invalid(format!("you cannot {what} yourself")));
    }
    Ok(())
}

/// Checks a StatusPost.
pub(crate) fn check_status_post(p: &v1::StatusPost) -> Result<(), v1::Error> {
    if p.post_id.is_empty() {
        return Err(invalid("post_id missing"));
    }
    at_most("post_id", &p.post_id, MAX_POST_ID_BYTES)?;
    at_most("text", &p.text, MAX_STATUS_TEXT_BYTES)?;
    at_most("media_id", &p.media_id, MAX_MEDIA_ID_BYTES)?;
    if p.text.is_empty() && p.media_id.is_empty() {
        return Err(invalid("a status needs text or media_id"));
    }
    Ok(())
}

/// The ids of a ProfileGet, deduplicated in request order; 0 (never a user) dropped.
pub(crate) fn profile_ids(ids: &[u64]) -> Result<Vec<UserId>, v1::Error> {
    if ids.len() > MAX_PROFILE_IDS {
        return Err(invalid(format!(
            "{} user_ids, at most {MAX_PROFILE_IDS} per request",
            ids.len()
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    Ok(ids
        .iter()
        .filter_map(|&u| UserId::new(u).ok())
        .filter(|u| seen.insert(*u))
        .collect())
}

/// `owner`'s profile as `reader` may see it. `audience` is the owner's (it may hold only
/// what concerns `reader`: whether they are a contact, whether they are blocked).
pub(crate) fn profile_view(
    owner: UserId,
    username: &str,
    record: Option<&ProfileRecord>,
    audience: &AudienceInfo,
    reader: UserId,
) -> v1::Profile {
    let mut p = v1::Profile {
        user_id: owner.get(),
        username: username.to_owned(),
        ..Default::default()
    };
    if let Some(r) = record {
        if audience.may_see(Item::Name, reader) {
            p.display_name.clone_from(&r.display_name);
        }
        if audience.may_see(Item::About, reader) {
            p.about.clone_from(&r.about);
        }
        if audience.may_see(Item::ProfilePhoto, reader) {
            p.avatar_media_id.clone_from(&r.avatar_media_id);
        }
        p.updated_at_ms = r.updated_at_ms;
    }
    p
}

/// One entry of the owner's contact list as the owner sees it.
pub(crate) fn contact_view(c: &ContactRecord, username: &str, profile: v1::Profile) -> v1::Contact {
    v1::Contact {
        user_id: c.user.get(),
        username: username.to_owned(),
        name: c.name.clone(),
        added_at_ms: c.added_at_ms,
        profile: Some(profile),
    }
}

/// May `reader` see `owner`'s statuses? Both must have each other as contacts and the
/// owner must not have blocked the reader (the owner always sees their own).
/// `audience` is the owner's; `reader_has_owner`: `owner` is in the reader's contacts.
pub(crate) fn may_see_statuses(
    audience: &AudienceInfo,
    reader: UserId,
    reader_has_owner: bool,
) -> bool {
    reader == audience.user || (reader_has_owner && audience.may_see(Item::Status, reader))
}

/// A status for the wire. `view_count` only for the poster's own, `viewed` only for others'.
pub(crate) fn status_view(s: &StatusRecord, view_count: u32, viewed: bool) -> v1::Status {
    v1::Status {
        status_id: s.id,
        user_id: s.user.get(),
        text: s.text.clone(),
        media_id: s.media_id.clone(),
        created_at_ms: s.created_at_ms,
        expires_at_ms: s.expires_at_ms,
        view_count,
        viewed,
    }
}

/// Orders StatusList's groups: users with the newest status first (then by user id, so
/// the order is stable); each group's statuses oldest first. Empty groups are dropped.
pub(crate) fn order_by_user(mut groups: Vec<v1::UserStatuses>) -> Vec<v1::UserStatuses> {
    groups.retain(|g| !g.statuses.is_empty());
    for g in &mut groups {
        g.statuses.sort_by_key(|s| (s.created_at_ms, s.status_id));
    }
    let newest = |g: &v1::UserStatuses| g.statuses.last().map_or(0, |s| s.created_at_ms);
    groups.sort_by(|a, b| newest(b).cmp(&newest(a)).then(a.user_id.cmp(&b.user_id)));
    groups
}

/// A fresh status id in [1, 2^53).
pub(crate) fn new_status_id() -> u64 {
    use rand::Rng as _;
    rand::rng().random_range(1..STATUS_ID_BOUND)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::store::{Audience as Who, Privacy};

    fn code(r: Result<(), v1::Error>) -> Option<i32> {
        r.err().map(|e| e.code)
    }

    const INVALID: Option<i32> = Some(ErrorCode::InvalidArgument as i32);

    fn audience(privacy: Privacy, contacts: &[u64], blocked: &[u64]) -> AudienceInfo {
        AudienceInfo {
            user: UserId(1),
            privacy,
            contacts: contacts.iter().map(|&u| UserId(u)).collect(),
            blocked: blocked.iter().map(|&u| UserId(u)).collect(),
        }
    }

    fn record() -> ProfileRecord {
        ProfileRecord {
            display_name: "Ann".into(),
            about: "hi".into(),
            avatar_media_id: "m1".into(),
            updated_at_ms: 5,
        }
    }

    #[test]
    fn profile_update_limits() {
        let ok = v1::ProfileUpdate {
            display_name: Some("a".repeat(64)),
            about: Some("b".repeat(256)),
            avatar_media_id: Some("c".repeat(128)),
        };
        assert_eq!(code(check_profile_update(&ok)), None);
        for bad in [
            v1::ProfileUpdate {
                display_name: Some("a".repeat(65)),
                ..Default::default()
            },
            v1::ProfileUpdate {
                about: Some("b".repeat(257)),
                ..Default::default()
            },
            v1::ProfileUpdate {
                avatar_media_id: Some("c".repeat(129)),
                ..Default::default()
            },
        ] {
            assert_eq!(code(check_profile_update(&bad)), INVALID, "{bad:?}");
        }
        // Bytes, not characters.
        let multibyte = v1::ProfileUpdate {
            display_name: Some("é".repeat(33)),
            ..Default::default()
        };
        assert_eq!(code(check_profile_update(&multibyte)), INVALID);
    }

    #[test]
    fn absent_profile_fields_stay() {
        let u = v1::ProfileUpdate {
            about: Some(String::new()),
            ..Default::default()
        };
        let p = updated_profile(Some(record()), &u, 9);
        assert_eq!(p.display_name, "Ann");
        assert_eq!(p.about, "");
        assert_eq!(p.avatar_media_id, "m1");
        assert_eq!(p.updated_at_ms, 9);
        let fresh = updated_profile(None, &u, 3);
        assert_eq!(fresh.display_name, "");
        assert_eq!(fresh.updated_at_ms, 3);
    }

    #[test]
    fn privacy_values_checked() {
        let mut p = v1::PrivacySettings::default();
        assert_eq!(code(check_privacy(&p)), None);
        p.online = v1::Visibility::Nobody as i32;
        assert_eq!(code(check_privacy(&p)), None);
        p.about = 42;
        let e = check_privacy(&p).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument as i32);
        assert!(e.message.contains("about"), "{}", e.message);
    }

    #[test]
    fn status_post_rules() {
        let ok = v1::StatusPost {
            post_id: "p".repeat(64),
            text: "t".repeat(700),
            media_id: String::new(),
        };
        assert_eq!(code(check_status_post(&ok)), None);
        let media_only = v1::StatusPost {
            post_id: "p".into(),
            media_id: "m".into(),
            ..Default::default()
        };
        assert_eq!(code(check_status_post(&media_only)), None);
        let with = |f: fn(&mut v1::StatusPost)| {
            let mut p = ok.clone();
            f(&mut p);
            code(check_status_post(&p))
        };
        assert_eq!(with(|p| p.post_id.clear()), INVALID);
        assert_eq!(with(|p| p.post_id.push('x')), INVALID);
        assert_eq!(with(|p| p.text.push('x')), INVALID);
        assert_eq!(with(|p| p.text.clear()), INVALID);
        assert_eq!(with(|p| p.media_id = "m".repeat(129)), INVALID);
    }

    #[test]
    fn names_and_self() {
        assert_eq!(code(check_contact_name(&"n".repeat(64))), None);
        assert_eq!(code(check_contact_name(&"n".repeat(65))), INVALID);
        assert_eq!(code(check_username("")), INVALID);
        assert_eq!(code(check_username("bo")), None);
        assert_eq!(code(not_self(UserId(1), UserId(1), "block")), INVALID);
        assert_eq!(code(not_self(UserId(1), UserId(2), "block")), None);
    }

    #[test]
    fn profile_ids_dedup_and_cap() {
        assert_eq!(
            profile_ids(&[3, 0, 2, 3, 1]).unwrap(),
            vec![UserId(3), UserId(2), UserId(1)]
        );
        assert!(profile_ids(&vec![1; 256]).is_ok());
        assert_eq!(
            profile_ids(&vec![1; 257]).unwrap_err().code,
            ErrorCode::InvalidArgument as i32
        );
    }

    #[test]
    fn profile_view_follows_settings() {
        let r = record();
        let p = Privacy {
            profile_photo: Who::Contacts,
            about: Who::Nobody,
            ..Privacy::default()
        };
        let a = audience(p, &[2, 4], &[4]);
        // A contact: photo yes, about no.
        let v = profile_view(UserId(1), "ann", Some(&r), &a, UserId(2));
        assert_eq!(
            (
                v.display_name.as_str(),
                v.about.as_str(),
                v.avatar_media_id.as_str()
            ),
            ("Ann", "", "m1")
        );
        assert_eq!(v.username, "ann");
        // A stranger: neither.
        let v = profile_view(UserId(1), "ann", Some(&r), &a, UserId(3));
        assert_eq!((v.about.as_str(), v.avatar_media_id.as_str()), ("", ""));
        assert_eq!(v.display_name, "Ann");
        // A blocked contact: only the names.
        let v = profile_view(UserId(1), "ann", Some(&r), &a, UserId(4));
        assert_eq!((v.about.as_str(), v.avatar_media_id.as_str()), ("", ""));
        assert_eq!(v.display_name, "Ann");
        // The owner: everything.
        let v = profile_view(UserId(1), "ann", Some(&r), &a, UserId(1));
        assert_eq!((v.about.as_str(), v.avatar_media_id.as_str()), ("hi", "m1"));
        // Everyone (default): a stranger sees all; no profile: just the ids.
        let open = audience(Privacy::default(), &[], &[]);
        let v = profile_view(UserId(1), "ann", Some(&r), &open, UserId(3));
        assert_eq!((v.about.as_str(), v.avatar_media_id.as_str()), ("hi", "m1"));
        let v = profile_view(UserId(1), "ann", None, &open, UserId(3));
        assert_eq!(
            v,
            v1::Profile {
                user_id: 1,
                username: "ann".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn statuses_need_mutual_contacts_and_no_block() {
        let a = audience(Privacy::default(), &[2, 3, 4], &[4]);
        assert!(may_see_statuses(&a, UserId(2), true));
        // The reader does not have the owner as a contact.
        assert!(!may_see_statuses(&a, UserId(3), false));
        // Blocked.
        assert!(!may_see_statuses(&a, UserId(4), true));
        // Not the owner's contact.
        assert!(!may_see_statuses(&a, UserId(5), true));
        // Own.
        assert!(may_see_statuses(&a, UserId(1), false));
    }

    #[test]
    fn status_groups_ordered() {
        let s = |id: u64, at: u64| v1::Status {
            status_id: id,
            created_at_ms: at,
            ..Default::default()
        };
        let groups = vec![
            v1::UserStatuses {
                user_id: 7,
                statuses: vec![s(1, 10), s(2, 30)],
                ..Default::default()
            },
            v1::UserStatuses {
                user_id: 8,
                statuses: vec![s(4, 50), s(3, 20)],
                ..Default::default()
            },
            v1::UserStatuses {
                user_id: 9,
                statuses: vec![],
                ..Default::default()
            },
            v1::UserStatuses {
                user_id: 6,
                statuses: vec![s(5, 30)],
                ..Default::default()
            },
        ];
        let out = order_by_user(groups);
        let users: Vec<u64> = out.iter().map(|g| g.user_id).collect();
        assert_eq!(users, vec![8, 6, 7]);
        let first: Vec<u64> = out[0].statuses.iter().map(|s| s.status_id).collect();
        assert_eq!(first, vec![3, 4]);
    }

    #[test]
    fn status_ids_in_range() {
        let ids: HashSet<u64> = (0..1000).map(|_| new_status_id()).collect();
        assert!(ids.iter().all(|&i| (1..STATUS_ID_BOUND).contains(&i)));
        assert!(ids.len() > 990);
    }
}
