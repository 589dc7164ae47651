//! What other services need to honour a user's privacy settings and blocks: the
//! [`Audience`](natter_proto::bus::Audience) of a user (settings, contacts, blocked users)
//! from the people service, cached, and the rule that decides what one reader may see.
//!
//! Cached audiences are dropped when the people service publishes
//! `Subject::people_changed()` for their user, and in any case after [`CACHE_TTL`], which
//! bounds how long a change lost on the bus can go unnoticed. The changes are read in
//! [`Audiences::get`] itself, before the cache: the people service publishes a change
//! before it answers the request that made it, so a request that follows the answer
//! (block, then send) finds the change already waiting and never reads a stale entry.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use natter_bus::{Bus, BusError, BusEvent, Subscription};
use natter_proto::{ErrorCode, Subject, UserId, bus, error, v1};
use prost::Message as _;

use crate::store::{Audience as Who, Privacy};

/// How long a cached audience is used without asking again.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// How long an audience made up because no people service runs is used.
const OPEN_TTL: Duration = Duration::from_secs(1);
/// Cached audiences kept at most (expired ones are dropped first, then all).
const CACHE_CAP: usize = 100_000;

/// What one user lets others see, and whom they blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceInfo {
    pub user: UserId,
    pub privacy: Privacy,
    pub contacts: HashSet<UserId>,
    pub blocked: HashSet<UserId>,
}

/// One item of a user that privacy settings govern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    LastSeen,
    Online,
    ProfilePhoto,
    About,
    /// Status updates: contacts only, whatever the settings.
    Status,
    /// Username and display name: everyone, blocked users included (as in WhatsApp).
    Name,
}

impl AudienceInfo {
    /// A user with default settings, no contacts and no blocks.
    pub fn open(user: UserId) -> AudienceInfo {
        AudienceInfo {
            user,
            privacy: Privacy::default(),
            contacts: HashSet::new(),
            blocked: HashSet::new(),
        }
    }

    /// Has this user blocked `reader`?
    pub fn blocks(&self, reader: UserId) -> bool {
        self.blocked.contains(&reader)
    }

    /// May `reader` see `item` of this user? Users always see their own; a blocked
    /// reader sees nothing but the name.
    pub fn may_see(&self, item: Item, reader: UserId) -> bool {
        if reader == self.user || item == Item::Name {
            return true;
        }
        if self.blocks(reader) {
            return false;
        }
        let who = match item {
            Item::LastSeen => self.privacy.last_seen,
            Item::Online => self.privacy.online,
            Item::ProfilePhoto => self.privacy.profile_photo,
            Item::About => self.privacy.about,
            Item::Status => Who::Contacts,
            Item::Name => Who::Everyone,
        };
        match who {
            Who::Everyone => true,
            Who::Contacts => self.contacts.contains(&reader),
            Who::Nobody => false,
        }
    }

    /// From the bus message.
    pub fn from_proto(a: &bus::Audience) -> AudienceInfo {
        AudienceInfo {
            user: UserId(a.user_id),
            privacy: a
                .privacy
                .as_ref()
                .map(Privacy::from_proto)
                .unwrap_or_default(),
            contacts: a.contacts.iter().map(|&u| UserId(u)).collect(),
            blocked: a.blocked.iter().map(|&u| UserId(u)).collect(),
        }
    }
}

impl Who {
    /// `None` for UNSPECIFIED (and unknown values).
    pub fn from_proto(v: i32) -> Option<Who> {
        match v1::Visibility::try_from(v).ok()? {
            v1::Visibility::Everyone => Some(Who::Everyone),
            v1::Visibility::Contacts => Some(Who::Contacts),
            v1::Visibility::Nobody => Some(Who::Nobody),
            v1::Visibility::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> i32 {
        match self {
            Who::Everyone => v1::Visibility::Everyone as i32,
            Who::Contacts => v1::Visibility::Contacts as i32,
            Who::Nobody => v1::Visibility::Nobody as i32,
        }
    }
}

impl Privacy {
    /// Settings from the wire; UNSPECIFIED fields take the default.
    pub fn from_proto(p: &v1::PrivacySettings) -> Privacy {
        Privacy::default().updated(p)
    }

    /// These settings with the fields `p` specifies replaced.
    pub fn updated(self, p: &v1::PrivacySettings) -> Privacy {
        Privacy {
            last_seen: Who::from_proto(p.last_seen).unwrap_or(self.last_seen),
            online: Who::from_proto(p.online).unwrap_or(self.online),
            profile_photo: Who::from_proto(p.profile_photo).unwrap_or(self.profile_photo),
            about: Who::from_proto(p.about).unwrap_or(self.about),
        }
    }

    pub fn to_proto(self) -> v1::PrivacySettings {
        v1::PrivacySettings {
            last_seen: self.last_seen.to_proto(),
            online: self.online.to_proto(),
            profile_photo: self.profile_photo.to_proto(),
            about: self.about.to_proto(),
        }
    }
}

/// Asks the people service for audiences and caches them. Cheap to share (`Arc`).
pub struct Audiences {
    bus: Arc<dyn Bus>,
    timeout: Duration,
    cache: Mutex<HashMap<UserId, (Arc<AudienceInfo>, Instant)>>,
    /// `Subject::people_changed()`, drained by every `get`.
    changes: Mutex<Subscription>,
    /// A people service has answered (or published a change) since this process
    /// started: from then on "no responders" means it is down, not that none is
    /// deployed, and blocks must not be ignored for want of an answer.
    seen: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Audiences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audiences").finish_non_exhaustive()
    }
}

impl Audiences {
    /// Subscribes to `Subject::people_changed()` (returns once subscribed).
    pub async fn start(bus: Arc<dyn Bus>, timeout: Duration) -> Result<Arc<Audiences>, BusError> {
        let changes = bus.subscribe(&Subject::people_changed(), 4096).await?;
        Ok(Arc::new(Audiences {
            bus,
            timeout,
            cache: Mutex::new(HashMap::new()),
            changes: Mutex::new(changes),
            seen: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Applies every change that has arrived (without waiting for more).
    fn apply_changes(&self) {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(event) = changes.next().now_or_never() {
            match event {
                Some(BusEvent::Message(msg)) => {
                    self.seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    if let Ok(c) = bus::PeopleChanged::decode(msg.payload) {
                        self.forget(UserId(c.user_id));
                    }
                }
                // Changes may have been missed (nobody asked for a while): start afresh.
                Some(BusEvent::Lagged) => self.lock().clear(),
                // The bus closed: entries still expire by themselves.
                None => break,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, (Arc<AudienceInfo>, Instant)>> {
        // Each update is one insert or remove: a poisoned map is still consistent.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the cached audience of `user`.
    pub fn forget(&self, user: UserId) {
        self.lock().remove(&user);
    }

    /// The audience of `user`. With no people service running at all (a cluster that
    /// does not deploy one) nobody has settings, contacts or blocks: the answer is the
    /// default. A people service that does not answer in time is UNAVAILABLE.
    pub async fn get(&self, user: UserId) -> Result<Arc<AudienceInfo>, v1::Error> {
        self.apply_changes();
        let now = Instant::now();
        if let Some((a, until)) = self.lock().get(&user)
            && *until > now
        {
            return Ok(a.clone());
        }
        let req = bus::AudienceRequest {
            user_id: user.get(),
        };
        let reply = self
            .bus
            .request(
                &Subject::people_audience(),
                Bytes::from(req.encode_to_vec()),
                self.timeout,
            )
            .await;
        let (info, ttl) = match reply {
            Ok(bytes) => {
                let a = bus::Audience::decode(bytes).map_err(|_| {
                    tracing::error!("undecodable Audience from the people service");
                    error(ErrorCode::Internal, "internal error")
                })?;
                self.seen.store(true, std::sync::atomic::Ordering::Relaxed);
                if let Some(e) = a.error {
                    return Err(e);
                }
                (AudienceInfo::from_proto(&a), CACHE_TTL)
            }
            // No people role deployed at all: nobody has settings or blocks. But once
            // one has answered, silence means it is down: fail closed below, rather
            // than deliver from someone a user blocked.
            Err(BusError::NoResponders(_))
                if !self.seen.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                (AudienceInfo::open(user), OPEN_TTL)
            }
            Err(e) => {
                tracing::warn!(error = %e, "people audience request failed");
                return Err(error(
                    ErrorCode::Unavailable,
                    "the people service did not answer; retry",
                ));
            }
        };
        let info = Arc::new(info);
        let mut cache = self.lock();
        if cache.len() >= CACHE_CAP {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(user, (info.clone(), now + ttl));
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audience(privacy: Privacy, contacts: &[u64], blocked: &[u64]) -> AudienceInfo {
        AudienceInfo {
            user: UserId(1),
            privacy,
            contacts: contacts.iter().map(|&u| UserId(u)).collect(),
            blocked: blocked.iter().map(|&u| UserId(u)).collect(),
        }
    }

    #[test]
    fn settings_and_blocks_decide() {
        let p = Privacy {
            last_seen: Who::Contacts,
            online: Who::Everyone,
            profile_photo: Who::Nobody,
            about: Who::Contacts,
        };
        let a = audience(p, &[2, 4], &[4, 5]);
        // A contact.
        assert!(a.may_see(Item::LastSeen, UserId(2)));
        assert!(a.may_see(Item::Online, UserId(2)));
        assert!(!a.may_see(Item::ProfilePhoto, UserId(2)));
        assert!(a.may_see(Item::About, UserId(2)));
        assert!(a.may_see(Item::Status, UserId(2)));
        // A stranger.
        assert!(!a.may_see(Item::LastSeen, UserId(3)));
        assert!(a.may_see(Item::Online, UserId(3)));
        assert!(!a.may_see(Item::Status, UserId(3)));
        // A blocked contact sees nothing but the name.
        for item in [Item::LastSeen, Item::Online, Item::About, Item::Status] {
            assert!(!a.may_see(item, UserId(4)), "{item:?}");
        }
        assert!(a.may_see(Item::Name, UserId(4)));
        assert!(!a.may_see(Item::Online, UserId(5)));
        // The owner sees everything of their own.
        assert!(a.may_see(Item::ProfilePhoto, UserId(1)));
    }

    #[test]
    fn unspecified_fields_stay() {
        let p = Privacy {
            last_seen: Who::Nobody,
            ..Privacy::default()
        };
        let set = v1::PrivacySettings {
            about: v1::Visibility::Contacts as i32,
            ..Default::default()
        };
        let q = p.updated(&set);
        assert_eq!(q.last_seen, Who::Nobody);
        assert_eq!(q.about, Who::Contacts);
        assert_eq!(q.online, Who::Everyone);
        assert_eq!(Privacy::from_proto(&q.to_proto()), q);
    }
}
