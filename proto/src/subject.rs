//! Bus subjects. The only place in natter that formats a subject string: everything else
//! calls these builders, so a subject's shape is changed in one place.

use std::fmt;

use crate::{Partition, UserId};

/// The services the admin API asks (see [`Subject::admin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminService {
    Sessions,
    Groups,
    People,
    Media,
    Presence,
}

impl AdminService {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminService::Sessions => "sessions",
            AdminService::Groups => "groups",
            AdminService::People => "people",
            AdminService::Media => "media",
            AdminService::Presence => "presence",
        }
    }
}

/// A bus subject or subscription pattern (`*` matches one token, `>` the rest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(String);

impl Subject {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Requests for the owner of one conversation partition: send, receipts, typing.
    pub fn partition(p: Partition) -> Subject {
        Subject(format!("natter.msg.p{:03}", p.index()))
    }

    /// Every partition subject, for an owner that holds them all.
    pub fn all_partitions() -> Subject {
        Subject("natter.msg.*".to_owned())
    }

    /// Everything pushed to the devices of one user.
    pub fn user(user: UserId) -> Subject {
        Subject(format!("natter.user.{user}"))
    }

    /// Sync pages (any messages instance answers; queue group).
    pub fn sync() -> Subject {
        Subject("natter.sync".to_owned())
    }

    /// History pages (any messages instance answers; queue group).
    pub fn history() -> Subject {
        Subject("natter.history".to_owned())
    }

    /// Calls of the messages store served by the store role (`StoreRequest`/`StoreReply`;
    /// queue group, one instance owns the embedded store file).
    pub fn store() -> Subject {
        Subject("natter.store".to_owned())
    }

    /// Groups service: check and store one change, from the owner of the group's
    /// conversation (`GroupApply`).
    pub fn group_apply() -> Subject {
        Subject("natter.group.apply".to_owned())
    }

    /// Groups service: what a conversation owner needs of a group (`GroupStateRequest`).
    pub fn group_state() -> Subject {
        Subject("natter.group.state".to_owned())
    }

    /// Groups service: get and list (`GroupQuery`).
    pub fn group_query() -> Subject {
        Subject("natter.group.query".to_owned())
    }

    /// Groups service: which group history a user may read (`GroupAccessRequest`).
    pub fn group_access() -> Subject {
        Subject("natter.group.access".to_owned())
    }

    /// People service: a client's PeopleRequest (`PeopleQuery`).
    pub fn people_request() -> Subject {
        Subject("natter.people.request".to_owned())
    }

    /// People service: privacy, contacts and blocks of one user (`AudienceRequest`).
    pub fn people_audience() -> Subject {
        Subject("natter.people.audience".to_owned())
    }

    /// Published by the people service when a user's privacy, contacts or blocks changed
    /// (`PeopleChanged`); every instance of every service caching audiences listens.
    pub fn people_changed() -> Subject {
        Subject("natter.people.changed".to_owned())
    }

    /// Presence service: an edge's user came online or went offline (`PresenceConn`).
    pub fn presence_conn() -> Subject {
        Subject("natter.presence.conn".to_owned())
    }

    /// Presence service: an edge's heartbeat, sync or leave (`PresenceBeat`).
    pub fn presence_beat() -> Subject {
        Subject("natter.presence.beat".to_owned())
    }

    /// Presence service: a device's subscription and snapshot (`PresenceQuery`).
    pub fn presence_subscribe() -> Subject {
        Subject("natter.presence.subscribe".to_owned())
    }

    /// Media service: may this sender share this media, and what is it (`MediaDescribe`).
    pub fn media_describe() -> Subject {
        Subject("natter.media.describe".to_owned())
    }

    /// Calls service: a device's CallRequest (`CallCommand`, answered with `CallReply`).
    pub fn call_request() -> Subject {
        Subject("natter.call.request".to_owned())
    }

    /// Calls service: an edge saw a device connect or disconnect (`CallDevice`).
    pub fn call_device() -> Subject {
        Subject("natter.call.device".to_owned())
    }

    /// Stored messages for the notifier (`NotifyJob`; durable in a cluster).
    pub fn notify() -> Subject {
        Subject("natter.notify".to_owned())
    }

    /// Sessions service: a user's push tokens and mute for a conversation
    /// (`PushTargetsRequest`, answered with `PushTargets`).
    pub fn sessions_push_targets() -> Subject {
        Subject("natter.sessions.push_targets".to_owned())
    }

    /// "Is this device still logged in?"
    pub fn sessions_device() -> Subject {
        Subject("natter.sessions.device".to_owned())
    }

    /// "Does this user exist?"
    pub fn sessions_user() -> Subject {
        Subject("natter.sessions.user".to_owned())
    }

    /// Admin API requests for one service (`sessions`, `groups`, `people`, `media`,
    /// `presence`): `AdminSessionsRequest`, `AdminGroupsRequest`... (queue group).
    pub fn admin(service: AdminService) -> Subject {
        Subject(format!("natter.admin.{}", service.as_str()))
    }

    /// Announcements, to every edge (each forwards them to all its connections).
    pub fn broadcast() -> Subject {
        Subject("natter.broadcast".to_owned())
    }

    /// Every process's metrics, every few seconds (`StatsReport`), for the admin API.
    pub fn stats() -> Subject {
        Subject("natter.stats".to_owned())
    }

    /// Control messages for one edge node (drain).
    pub fn edge_control(node: &str) -> Subject {
        Subject(format!("natter.edge.{node}.control"))
    }

    /// A reply inbox. `prefix` is the bus's own inbox prefix.
    pub fn inbox(prefix: &str, id: u64) -> Subject {
        Subject(format!("{prefix}.{id}"))
    }

    /// Wraps a subject that arrived from the bus itself (e.g. a reply subject).
    pub fn from_wire(s: impl Into<String>) -> Subject {
        Subject(s.into())
    }

    /// Does this pattern match `subject`? NATS rules: tokens split on `.`, `*` matches
    /// exactly one token, a final `>` matches one or more.
    pub fn matches(&self, subject: &str) -> bool {
        let mut pat = self.0.split('.');
        let mut sub = subject.split('.');
        loop {
            match (pat.next(), sub.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(s)) if p == s => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// True if the subject contains a wildcard token.
    pub fn is_pattern(&self) -> bool {
        self.0.split('.').any(|t| t == "*" || t == ">")
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_and_wildcards() {
        let p = Subject::partition(Partition::new(7).unwrap());
        assert_eq!(p.as_str(), "natter.msg.p007");
        assert!(Subject::all_partitions().matches(p.as_str()));
        assert!(!Subject::all_partitions().matches("natter.msg.p007.x"));
        assert!(Subject::from_wire("natter.>").matches("natter.user.5"));
        assert!(!Subject::from_wire("natter.>").matches("natter"));
        assert!(Subject::user(UserId(5)).matches("natter.user.5"));
        assert!(!Subject::user(UserId(5)).matches("natter.user.55"));
        assert_eq!(Subject::store().as_str(), "natter.store");
        assert!(!Subject::all_partitions().matches(Subject::store().as_str()));
        assert!(Subject::all_partitions().is_pattern());
        assert!(!p.is_pattern());
    }
}
