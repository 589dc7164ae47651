//! [`MemoryPresence`]: the presence store of one process, and the argument checks
//! both stores share.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use natter_proto::UserId;

use crate::store::{Beat, Presence, PresenceError, PresenceStore, Transition};

/// The longest accepted node name, in bytes.
pub const MAX_NODE_LEN: usize = 255;
/// The longest accepted TTL (heartbeats and subscription leases).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lapsed nodes one [`reap`](PresenceStore::reap) call removes at most.
pub const REAP_BATCH: usize = 16;
/// The largest accepted time (ms since the epoch): 2^53, exact in a Lua number.
pub const MAX_AT_MS: u64 = 1 << 53;
/// `what` of the [`PresenceError::Invalid`] that `subscribe` answers when the
/// subscriber would exceed its limit (the service turns it into LIMIT_REACHED).
pub const SUBSCRIPTION_LIMIT: &str = "subscription count";
/// Expired subscription leases one memory `reap` forgets at most.
const SWEEP_BATCH: usize = 10_000;

pub(crate) fn check_node(node: &str) -> Result<(), PresenceError> {
    let why = if node.is_empty() {
        "it is empty".to_owned()
    } else if node.len() > MAX_NODE_LEN {
        format!("it is longer than {MAX_NODE_LEN} bytes")
    } else if node.chars().any(char::is_control) {
        "it contains a control character".to_owned()
    } else {
        return Ok(());
    };
    Err(PresenceError::Invalid {
        what: "node name",
        why,
    })
}

/// The TTL in whole milliseconds (1 ms ..= [`MAX_TTL`]).
pub(crate) fn check_ttl(what: &'static str, ttl: Duration) -> Result<u64, PresenceError> {
    if ttl < Duration::from_millis(1) || ttl > MAX_TTL {
        return Err(PresenceError::Invalid {
            what,
            why: format!("{ttl:?} is not between 1 ms and {MAX_TTL:?}"),
        });
    }
    // At most MAX_TTL, so it fits.
    Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn check_at(at_ms: u64) -> Result<(), PresenceError> {
    if at_ms > MAX_AT_MS {
        return Err(PresenceError::Invalid {
            what: "time",
            why: format!("{at_ms} ms is beyond 2^53"),
        });
    }
    Ok(())
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Sorts by user, keeping the order of one user's transitions (offline before online).
pub(crate) fn sort_transitions(t: &mut [Transition]) {
    t.sort_by_key(|t| t.user);
}

/// Presence of one process (`natter serve`), behind a mutex. Cheap to share behind an
/// `Arc`.
///
/// Bookkeeping (the Redis store keeps the same, see [`crate::RedisPresence`]): each node
/// has the set of its users, each user the set of nodes holding them. A user is
/// *reported online* (the last transition returned for them was "online") exactly while
/// that set is not empty, so transitions come out once per change: the first node to
/// take a user reports them online, and the removal that leaves them on no live node
/// reports them offline and also takes them off any lapsed, not yet reaped node (whose
/// reaping then finds nothing of theirs). A user on a lapsed node only already *reads*
/// as offline ([`get`](PresenceStore::get)), last seen at that node's last beat.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<String, Node>,
    /// The nodes holding each reported-online user (live or lapsed, not yet reaped).
    on: HashMap<UserId, Vec<String>>,
    /// When each user went offline last.
    seen: HashMap<UserId, u64>,
    /// target → subscriber → lease expiry.
    subs: HashMap<UserId, HashMap<UserId, Instant>>,
    /// subscriber → target → lease expiry.
    mine: HashMap<UserId, HashMap<UserId, Instant>>,
    /// (expiry, subscriber, target) of every lease, to forget expired ones.
    expiries: BTreeSet<(Instant, UserId, UserId)>,
}

#[derive(Debug)]
struct Node {
    expires: Instant,
    last_beat_ms: u64,
    users: HashSet<UserId>,
}

impl MemoryPresence {
    pub fn new() -> MemoryPresence {
        MemoryPresence::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code that can panic runs while the lock is held halfway through an update,
        // so a poisoned lock still guards consistent maps.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn offline(user: UserId, last_seen_ms: u64) -> Transition {
    Transition {
        user,
        online: false,
        last_seen_ms,
    }
}

fn online(user: UserId) -> Transition {
    Transition {
        user,
        online: true,
        last_seen_ms: 0,
    }
}

impl State {
    fn is_live(&self, node: &str, now: Instant) -> bool {
        self.nodes.get(node).is_some_and(|n| n.expires > now)
    }

    /// `user` is no longer on `node` (already out of the node's own set). Reports them
    /// offline at `at_ms` (or a later beat of a lapsed node they were also on) when no
    /// live node has them any more.
    fn gone(&mut self, node: &str, user: UserId, at_ms: u64, now: Instant) -> Option<Transition> {
        let mut rest = self.on.remove(&user)?;
        let before = rest.len();
        rest.retain(|n| n != node);
        if rest.len() == before || rest.iter().any(|n| self.is_live(n, now)) {
            // Not on this node, or still online elsewhere.
            self.on.insert(user, rest);
            return None;
        }
        let mut last = at_ms;
        for lapsed in &rest {
            if let Some(n) = self.nodes.get_mut(lapsed) {
                n.users.remove(&user);
                last = last.max(n.last_beat_ms);
            }
        }
        self.seen.insert(user, last);
        Some(offline(user, last))
    }

    fn add(&mut self, node: &str, user: UserId) -> Option<Transition> {
        let nodes = self.on.entry(user).or_default();
        let was_offline = nodes.is_empty();
        if !nodes.iter().any(|n| n == node) {
            nodes.push(node.to_owned());
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.users.insert(user);
        }
        was_offline.then(|| online(user))
    }

    /// Removes the node; its users go offline at `at_ms` unless another live node has
    /// them.
    fn drop_node(&mut self, node: &str, at_ms: u64, now: Instant, out: &mut Vec<Transition>) {
        let Some(n) = self.nodes.remove(node) else {
            return;
        };
        let mut users: Vec<UserId> = n.users.into_iter().collect();
        users.sort_unstable();
        for user in users {
            out.extend(self.gone(node, user, at_ms, now));
        }
    }

    /// Makes the node live for `ttl`; reaps it first if it lapsed. True if it joined.
    fn beat(&mut self, node: &str, ttl: Duration, now: Instant, out: &mut Vec<Transition>) -> bool {
        let joined = match self.nodes.get(node) {
            Some(n) if n.expires > now => false,
            Some(n) => {
                let last = n.last_beat_ms;
                self.drop_node(node, last, now, out);
                true
            }
            None => true,
        };
        let n = self.nodes.entry(node.to_owned()).or_insert_with(|| Node {
            expires: now,
            last_beat_ms: 0,
            users: HashSet::new(),
        });
        n.expires = now + ttl;
        n.last_beat_ms = unix_ms();
        joined
    }

    fn forget_lease(&mut self, subscriber: UserId, target: UserId) {
        if let Some(mine) = self.mine.get_mut(&subscriber) {
            if let Some(exp) = mine.remove(&target) {
                self.expiries.remove(&(exp, subscriber, target));
            }
            if mine.is_empty() {
                self.mine.remove(&subscriber);
            }
        }
        if let Some(subs) = self.subs.get_mut(&target) {
            subs.remove(&subscriber);
            if subs.is_empty() {
                self.subs.remove(&target);
            }
        }
    }

    /// Forgets up to `limit` expired leases.
    fn sweep(&mut self, now: Instant, limit: usize) {
        for _ in 0..limit {
            match self.expiries.first() {
                Some(&(exp, subscriber, target)) if exp <= now => {
                    self.forget_lease(subscriber, target);
                    // forget_lease removed it; make sure the loop advances regardless.
                    self.expiries.remove(&(exp, subscriber, target));
                }
                _ => break,
            }
        }
    }
}

#[async_trait::async_trait]
impl PresenceStore for MemoryPresence {
    async fn beat(&self, node: &str, ttl: Duration) -> Result<Beat, PresenceError> {
        check_node(node)?;
        check_ttl("heartbeat ttl", ttl)?;
        let mut transitions = Vec::new();
        let joined = self
            .lock()
            .beat(node, ttl, Instant::now(), &mut transitions);
        sort_transitions(&mut transitions);
        Ok(Beat {
            joined,
            transitions,
        })
    }

    async fn sync(
        &self,
        node: &str,
        ttl: Duration,
        users: &[UserId],
        at_ms: u64,
    ) -> Result<Vec<Transition>, PresenceError> {
        check_node(node)?;
        check_ttl("heartbeat ttl", ttl)?;
        check_at(at_ms)?;
        let now = Instant::now();
        let mut out = Vec::new();
        let mut state = self.lock();
        state.beat(node, ttl, now, &mut out);
        let want: HashSet<UserId> = users.iter().copied().collect();
        let mut leaving: Vec<UserId> = state
            .nodes
            .get(node)
            .map(|n| n.users.difference(&want).copied().collect())
            .unwrap_or_default();
        leaving.sort_unstable();
        for user in leaving {
            if let Some(n) = state.nodes.get_mut(node) {
                n.users.remove(&user);
            }
            out.extend(state.gone(node, user, at_ms, now));
        }
        for &user in users {
            out.extend(state.add(node, user));
        }
        drop(state);
        sort_transitions(&mut out);
        Ok(out)
    }

    async fn online(&self, node: &str, user: UserId) -> Result<Option<Transition>, PresenceError> {
        check_node(node)?;
        let mut state = self.lock();
        if !state.is_live(node, Instant::now()) {
            return Err(PresenceError::NodeNotLive(node.to_owned()));
        }
        Ok(state.add(node, user))
    }

    async fn offline(
        &self,
        node: &str,
        user: UserId,
        at_ms: u64,
    ) -> Result<Option<Transition>, PresenceError> {
        check_node(node)?;
        check_at(at_ms)?;
        let mut state = self.lock();
        if let Some(n) = state.nodes.get_mut(node) {
            n.users.remove(&user);
        }
        Ok(state.gone(node, user, at_ms, Instant::now()))
    }

    async fn leave(&self, node: &str, at_ms: u64) -> Result<Vec<Transition>, PresenceError> {
        check_node(node)?;
        check_at(at_ms)?;
        let mut out = Vec::new();
        self.lock().drop_node(node, at_ms, Instant::now(), &mut out);
        sort_transitions(&mut out);
        Ok(out)
    }

    async fn reap(&self) -> Result<Vec<Transition>, PresenceError> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut state = self.lock();
        let lapsed: Vec<(String, u64)> = state
            .nodes
            .iter()
            .filter(|(_, n)| n.expires <= now)
            .take(REAP_BATCH)
            .map(|(name, n)| (name.clone(), n.last_beat_ms))
            .collect();
        for (node, last_beat_ms) in lapsed {
            state.drop_node(&node, last_beat_ms, now, &mut out);
        }
        state.sweep(now, SWEEP_BATCH);
        drop(state);
        sort_transitions(&mut out);
        Ok(out)
    }

    async fn get(&self, users: &[UserId]) -> Result<Vec<Presence>, PresenceError> {
        let now = Instant::now();
        let state = self.lock();
        Ok(users
            .iter()
            .map(|&user| {
                let nodes = state.on.get(&user).map(Vec::as_slice).unwrap_or_default();
                if nodes.iter().any(|n| state.is_live(n, now)) {
                    return Presence {
                        user,
                        online: true,
                        last_seen_ms: state.seen.get(&user).copied().unwrap_or(0),
                    };
                }
                // Only on lapsed nodes (if any): last seen at their last beat.
                let lapsed = nodes
                    .iter()
                    .filter_map(|n| state.nodes.get(n))
                    .map(|n| n.last_beat_ms);
                let last = lapsed
                    .chain(state.seen.get(&user).copied())
                    .max()
                    .unwrap_or(0);
                Presence {
                    user,
                    online: false,
                    last_seen_ms: last,
                }
            })
            .collect())
    }

    async fn subscribe(
        &self,
        subscriber: UserId,
        targets: &[UserId],
        ttl: Duration,
        limit: u32,
    ) -> Result<(), PresenceError> {
        check_ttl("subscription ttl", ttl)?;
        let now = Instant::now();
        let mut state = self.lock();
        let expired: Vec<UserId> = state
            .mine
            .get(&subscriber)
            .map(|m| {
                m.iter()
                    .filter(|(_, exp)| **exp <= now)
                    .map(|(t, _)| *t)
                    .collect()
            })
            .unwrap_or_default();
        for target in expired {
            state.forget_lease(subscriber, target);
        }
        let targets: BTreeSet<UserId> = targets.iter().copied().collect();
        let held = state.mine.get(&subscriber);
        let count = held.map_or(0, HashMap::len);
        let fresh = targets
            .iter()
            .filter(|t| !held.is_some_and(|m| m.contains_key(t)))
            .count();
        if count.saturating_add(fresh) > usize::try_from(limit).unwrap_or(usize::MAX) {
            return Err(PresenceError::Invalid {
                what: SUBSCRIPTION_LIMIT,
                why: format!(
                    "{count} subscriptions held, {fresh} more would exceed the limit of {limit}"
                ),
            });
        }
        let expires = now + ttl;
        for target in targets {
            if let Some(old) = state
                .mine
                .entry(subscriber)
                .or_default()
                .insert(target, expires)
            {
                state.expiries.remove(&(old, subscriber, target));
            }
            state
                .subs
                .entry(target)
                .or_default()
                .insert(subscriber, expires);
            state.expiries.insert((expires, subscriber, target));
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        subscriber: UserId,
        targets: &[UserId],
    ) -> Result<(), PresenceError> {
        let mut state = self.lock();
        for &target in targets {
            state.forget_lease(subscriber, target);
        }
        Ok(())
    }

    async fn subscribers(&self, target: UserId) -> Result<Vec<UserId>, PresenceError> {
        let now = Instant::now();
        let state = self.lock();
        let mut out: Vec<UserId> = state
            .subs
            .get(&target)
            .map(|s| {
                s.iter()
                    .filter(|(_, exp)| **exp > now)
                    .map(|(u, _)| *u)
                    .collect()
            })
            .unwrap_or_default();
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        assert!(check_node("edge-1").is_ok());
        assert!(check_node("").is_err());
        assert!(check_node("a\nb").is_err());
        assert!(check_node(&"x".repeat(MAX_NODE_LEN + 1)).is_err());
        assert_eq!(check_ttl("t", Duration::from_millis(300)).ok(), Some(300));
        assert!(check_ttl("t", Duration::ZERO).is_err());
        assert!(check_ttl("t", MAX_TTL + Duration::from_secs(1)).is_err());
        assert!(check_at(MAX_AT_MS).is_ok());
        assert!(check_at(MAX_AT_MS + 1).is_err());
    }
}
