//! The bus client of sessions' user lookup (`Subject::sessions_user()`): "does this user
//! exist, and what is their username?", for the services that name users (messages,
//! groups, people). Accounts are never deleted and usernames never change, so every yes
//! is cached (user id → username); a no is asked again next time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use natter_bus::Bus;
use natter_proto::{ErrorCode, Subject, UserId, bus, error, v1};
use prost::Message as _;

/// Users remembered before the cache is emptied and refilled on demand.
const MAX_KNOWN: usize = 1_000_000;
/// Users asked of sessions concurrently by one call.
const CONCURRENCY: usize = 64;

/// Asks sessions about users, with a positive cache. Cheap to share (`Arc`).
pub struct Users {
    bus: Arc<dyn Bus>,
    timeout: Duration,
    known: Mutex<HashMap<UserId, Arc<str>>>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").finish_non_exhaustive()
    }
}

fn unavailable() -> v1::Error {
    error(ErrorCode::Unavailable, "user directory unavailable, retry")
}

impl Users {
    pub fn new(bus: Arc<dyn Bus>, timeout: Duration) -> Users {
        Users {
            bus,
            timeout,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> MutexGuard<'_, HashMap<UserId, Arc<str>>> {
        // Each update is one insert or a clear: a poisoned map is still consistent.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether each user exists (those not cached asked concurrently, in bounded
    /// rounds). An error means sessions could not say.
    pub async fn check_many(
        &self,
        users: impl IntoIterator<Item = UserId>,
    ) -> HashMap<UserId, Result<bool, v1::Error>> {
        let mut out = HashMap::new();
        let mut ask = Vec::new();
        {
            let known = self.known();
            for u in users {
                if known.contains_key(&u) {
                    out.insert(u, Ok(true));
                } else if !out.contains_key(&u) && !ask.contains(&u) {
                    ask.push(u);
                }
            }
        }
        for chunk in ask.chunks(CONCURRENCY) {
            let answers = futures::future::join_all(chunk.iter().map(|&u| self.username(u))).await;
            for (&u, answer) in chunk.iter().zip(answers) {
                out.insert(u, answer.map(|name| name.is_some()));
            }
        }
        out
    }

    /// The username of `user`; `None` when there is no such user.
    pub async fn username(&self, user: UserId) -> Result<Option<Arc<str>>, v1::Error> {
        if let Some(name) = self.known().get(&user) {
            return Ok(Some(name.clone()));
        }
        let lookup = bus::UserLookup {
            user_id: user.get(),
            username: String::new(),
        };
        Ok(self.ask(lookup).await?.map(|(_, name)| name))
    }

    /// The user named `username`; `None` when there is none.
    pub async fn find(&self, username: &str) -> Result<Option<(UserId, Arc<str>)>, v1::Error> {
        let lookup = bus::UserLookup {
            user_id: 0,
            username: username.to_owned(),
        };
        self.ask(lookup).await
    }

    /// Asks sessions; `None` when the user does not exist. Remembers a yes.
    async fn ask(&self, lookup: bus::UserLookup) -> Result<Option<(UserId, Arc<str>)>, v1::Error> {
        let reply = self
            .bus
            .request(
                &Subject::sessions_user(),
                Bytes::from(lookup.encode_to_vec()),
                self.timeout,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "user lookup at sessions failed");
                unavailable()
            })?;
        let info = bus::UserInfo::decode(reply).map_err(|e| {
            tracing::error!(error = %e, "undecodable UserInfo from sessions");
            unavailable()
        })?;
        if !info.exists {
            return Ok(None);
        }
        let Ok(user) = UserId::new(info.user_id) else {
            tracing::error!("sessions answered a lookup with user id 0");
            return Err(unavailable());
        };
        if lookup.user_id != 0 && lookup.user_id != user.get() {
            tracing::error!(
                asked = lookup.user_id,
                got = user.get(),
                "sessions answered another user"
            );
            return Err(unavailable());
        }
        let name: Arc<str> = Arc::from(info.username);
        let mut known = self.known();
        if known.len() >= MAX_KNOWN && !known.contains_key(&user) {
            known.clear();
        }
        known.insert(user, name.clone());
        Ok(Some((user, name)))
    }
}
