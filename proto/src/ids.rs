//! Id newtypes. Every id that crosses a crate boundary has a type here, so a user id
//! can never be passed where a device id belongs, and every conversation id is valid.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("conversation id is empty")]
    Empty,
    #[error("conversation id `{0}` is malformed (expected `d.<user>.<user>` or `g.<group>`)")]
    Malformed(String),
    #[error("a direct conversation needs two different users")]
    SameUser,
    #[error("id 0 is not a valid {0}")]
    Zero(&'static str),
}

macro_rules! u64_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// Refuses 0, which the protocol uses for "absent".
            pub fn new(raw: u64) -> Result<Self, IdError> {
                if raw == 0 { Err(IdError::Zero($what)) } else { Ok(Self(raw)) }
            }
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

u64_id!(
    /// An account. Random, never 0.
    UserId, "user id"
);
u64_id!(
    /// One logged-in device (a login) of a user. Random, never 0.
    DeviceId, "device id"
);
u64_id!(
    /// A message's global id. Random, never 0.
    MessageId, "message id"
);
u64_id!(
    /// A group. Derived from its creator and the creator's `create_id` (so a retried
    /// create names the same group), below 2^53 so JavaScript numbers hold it exactly.
    GroupId, "group id"
);

/// Group ids stay below this (JavaScript's exact integer range).
const MAX_GROUP_ID: u64 = 1 << 53;

impl GroupId {
    /// The id of the group `creator` creates with `create_id`: retrying a create with the
    /// same `create_id` names the same group. FNV-1a, stable across versions.
    pub fn for_create(creator: UserId, create_id: &str) -> GroupId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let creator = creator.get().to_le_bytes();
        for b in creator.iter().chain(b"/").chain(create_id.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Never 0: the range is [1, 2^53).
        GroupId(h % (MAX_GROUP_ID - 1) + 1)
    }

    /// The group an invite code belongs to: codes are `<group id>-<secret>`, so any
    /// edge routes a join to the group's owner without a lookup. `None` for anything else.
    pub fn of_invite(code: &str) -> Option<GroupId> {
        let (id, secret) = code.split_once('-')?;
        if secret.is_empty() || id.is_empty() || id.starts_with('0') || id.len() > 16 {
            return None;
        }
        if !id.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let raw: u64 = id.parse().ok()?;
        (raw < MAX_GROUP_ID).then_some(GroupId(raw))
    }
}

/// Position of a message in its conversation: 1, 2, 3, ... with no gaps. 0 means "before
/// the first message".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);
    pub fn get(self) -> u64 {
        self.0
    }
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A conversation. One-to-one conversations are `d.<low user>.<high user>`, derived from
/// the two users so that either side reaches the same one; a group's is `g.<group id>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConversationId(String);

/// What kind of conversation an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationKind {
    /// Two users; the pair is in the id.
    Direct(UserId, UserId),
    /// A group; its members are kept by the groups service.
    Group(GroupId),
}

impl ConversationId {
    /// The one-to-one conversation between `a` and `b`.
    pub fn direct(a: UserId, b: UserId) -> Result<Self, IdError> {
        if a == b {
            return Err(IdError::SameUser);
        }
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        Ok(Self(format!("d.{lo}.{hi}")))
    }

    /// The conversation of a group.
    pub fn group(group: GroupId) -> Self {
        Self(format!("g.{group}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> ConversationKind {
        // Every ConversationId was validated on construction, so this parse succeeds.
        match parse(&self.0) {
            Ok(kind) => kind,
            Err(_) => unreachable!("ConversationId holds only validated ids"),
        }
    }

    /// The members of a direct conversation; `None` for kinds whose members live elsewhere.
    pub fn direct_members(&self) -> Option<[UserId; 2]> {
        match self.kind() {
            ConversationKind::Direct(a, b) => Some([a, b]),
            ConversationKind::Group(_) => None,
        }
    }

    /// The group of a group conversation.
    pub fn group_id(&self) -> Option<GroupId> {
        match self.kind() {
            ConversationKind::Group(g) => Some(g),
            ConversationKind::Direct(..) => None,
        }
    }

    /// The partition that owns this conversation (ordering and dedupe happen there).
    pub fn partition(&self) -> Partition {
        Partition::of(self)
    }
}

fn parse(s: &str) -> Result<ConversationKind, IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    let malformed = || IdError::Malformed(s.chars().take(80).collect());
    // Canonical decimal only: no sign, no leading zeros, so one conversation has one id.
    let num = |p: &str| -> Result<u64, IdError> {
        if p.is_empty() || p.starts_with('0') || !p.bytes().all(|c| c.is_ascii_digit()) {
            return Err(malformed());
        }
        p.parse::<u64>().map_err(|_| malformed())
    };
    let mut parts = s.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("g"), Some(g), None, None) => {
            let raw = num(g)?;
            if raw >= MAX_GROUP_ID {
                return Err(malformed());
            }
            Ok(ConversationKind::Group(GroupId::new(raw)?))
        }
        (Some("d"), Some(a), Some(b), None) => {
            let (a, b) = (UserId::new(num(a)?)?, UserId::new(num(b)?)?);
            if a >= b {
                return Err(if a == b {
                    IdError::SameUser
                } else {
                    malformed()
                });
            }
            Ok(ConversationKind::Direct(a, b))
        }
        _ => Err(malformed()),
    }
}

impl FromStr for ConversationId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for ConversationId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        parse(&s)?;
        Ok(Self(s))
    }
}

impl From<ConversationId> for String {
    fn from(c: ConversationId) -> String {
        c.0
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One of [`Partition::COUNT`] shards of the conversation space. Each has exactly one
/// owner among the running messages instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(u16);

impl Partition {
    pub const COUNT: u16 = 256;

    pub fn of(conversation: &ConversationId) -> Partition {
        // FNV-1a: stable across versions and platforms, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in conversation.as_str().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Partition((h % u64::from(Self::COUNT)) as u16)
    }

    pub fn new(index: u16) -> Option<Partition> {
        (index < Self::COUNT).then_some(Partition(index))
    }

    pub fn index(self) -> u16 {
        self.0
    }

    pub fn all() -> impl Iterator<Item = Partition> {
        (0..Self::COUNT).map(Partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_are_symmetric_and_validated() {
        let (a, b) = (UserId(7), UserId(42));
        let c = ConversationId::direct(a, b).unwrap();
        assert_eq!(c, ConversationId::direct(b, a).unwrap());
        assert_eq!(c.as_str(), "d.7.42");
        assert_eq!(c.direct_members(), Some([a, b]));
        assert_eq!("d.7.42".parse::<ConversationId>().unwrap(), c);
        assert!(ConversationId::direct(a, a).is_err());
        for bad in [
            "",
            "d.42.7",
            "d.7.7",
            "d.07.42",
            "d.7",
            "d.7.42.1",
            "x.1.2",
            "d.-1.2",
            "d.0.2",
            "d.1.99999999999999999999",
        ] {
            assert!(
                bad.parse::<ConversationId>().is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        let c = ConversationId::direct(UserId(1), UserId(2)).unwrap();
        assert_eq!(c.partition(), c.partition());
        assert!(c.partition().index() < Partition::COUNT);
        // Known value: changing the hash would move every conversation to another owner.
        assert_eq!(Partition::of(&c), Partition::of(&"d.1.2".parse().unwrap()));
        assert_eq!(Partition::all().count(), 256);
    }

    #[test]
    fn group_ids_round_trip_and_are_validated() {
        let g = GroupId::for_create(UserId(7), "first");
        assert_eq!(g, GroupId::for_create(UserId(7), "first"));
        assert_ne!(g, GroupId::for_create(UserId(7), "second"));
        assert_ne!(g, GroupId::for_create(UserId(8), "first"));
        assert!(g.get() > 0 && g.get() < MAX_GROUP_ID);
        let c = ConversationId::group(g);
        assert_eq!(c.as_str(), format!("g.{g}"));
        assert_eq!(c.as_str().parse::<ConversationId>().unwrap(), c);
        assert_eq!(c.group_id(), Some(g));
        assert_eq!(c.direct_members(), None);
        for bad in ["g.", "g.0", "g.01", "g.1.2", "g.x", "g.9007199254740992"] {
            assert!(bad.parse::<ConversationId>().is_err(), "{bad}");
        }
        assert_eq!(GroupId::of_invite("42-abc"), Some(GroupId(42)));
        for bad in [
            "42",
            "42-",
            "-abc",
            "042-abc",
            "x-abc",
            "9007199254740992-a",
        ] {
            assert_eq!(GroupId::of_invite(bad), None, "{bad}");
        }
    }

    #[test]
    fn zero_ids_are_refused() {
        assert!(UserId::new(0).is_err());
        assert!(DeviceId::new(3).is_ok());
    }
}
