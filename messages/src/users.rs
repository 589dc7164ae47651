//! "Does this user exist?", asked of sessions over the bus (`Subject::sessions_user()`),
//! with a positive cache: accounts are never deleted, so a yes stays true.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use natter_bus::Bus;
use natter_proto::{ErrorCode, Subject, UserId, bus, error, v1};
use prost::Message as _;

/// Users remembered before the cache is emptied and refilled on demand.
const MAX_KNOWN: usize = 1_000_000;

pub(crate) struct UserDirectory {
    bus: Arc<dyn Bus>,
    timeout: Duration,
    known: Mutex<HashSet<UserId>>,
}

impl UserDirectory {
    pub fn new(bus: Arc<dyn Bus>, timeout: Duration) -> Self {
        UserDirectory {
            bus,
            timeout,
            known: Mutex::new(HashSet::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        // The set is valid whatever a panicking holder did: entries are only inserted.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether each user exists (asked concurrently for the ones not cached). An error
    /// means sessions could not say.
    pub async fn check_many(&self, users: Vec<UserId>) -> HashMap<UserId, Result<bool, v1::Error>> {
        let mut out = HashMap::with_capacity(users.len());
        let mut ask = Vec::new();
        {
            let known = self.known();
            for u in users {
                if known.contains(&u) {
                    out.insert(u, Ok(true));
                } else if !out.contains_key(&u) && !ask.contains(&u) {
                    ask.push(u);
                }
            }
        }
        let answers = futures::future::join_all(ask.iter().map(|u| self.lookup(*u))).await;
        let mut known = self.known();
        for (u, answer) in ask.into_iter().zip(answers) {
            if answer == Ok(true) {
                if known.len() >= MAX_KNOWN {
                    known.clear();
                }
                known.insert(u);
            }
            out.insert(u, answer);
        }
        out
    }

    async fn lookup(&self, user: UserId) -> Result<bool, v1::Error> {
        let req = bus::UserLookup {
            user_id: user.get(),
            username: String::new(),
        };
        let reply = self
            .bus
            .request(
                &Subject::sessions_user(),
                Bytes::from(req.encode_to_vec()),
                self.timeout,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "user lookup at sessions failed");
                error(ErrorCode::Unavailable, "user directory unavailable, retry")
            })?;
        let info = bus::UserInfo::decode(reply).map_err(|e| {
            tracing::warn!(error = %e, "undecodable UserInfo from sessions");
            error(ErrorCode::Unavailable, "user directory unavailable, retry")
        })?;
        Ok(info.exists && info.user_id == user.get())
    }
}
