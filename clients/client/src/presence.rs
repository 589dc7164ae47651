//! Presence subscriptions, with no I/O: which users this device subscribed to, when the
//! subscriptions must be renewed (the server drops one `subscription_ttl_s` after it was
//! last made) and what was last known of each user, so a renewal's snapshot can be turned
//! into events for the users whose presence changed meanwhile.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use natter_proto::v1::UserPresence;
use tokio::time::Instant;

/// Most user ids in one PresenceSubscribe frame (the server's limit).
pub(crate) const MAX_PER_FRAME: usize = 1000;
/// Assumed when a snapshot gives no TTL.
const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Renew at most this often, whatever the TTL says.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// After a failed renewal, try again this soon (capped to a quarter of the TTL).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Splits ids into frames the server accepts.
pub(crate) fn chunks(ids: &[u64]) -> impl Iterator<Item = &[u64]> {
    ids.chunks(MAX_PER_FRAME)
}

/// This device's presence subscriptions.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    users: BTreeSet<u64>,
    /// The TTL the server last gave.
    ttl: Option<Duration>,
    /// When to renew every subscription; `None` while there is none.
    next_renewal: Option<Instant>,
    /// The last presence seen of each subscribed user.
    last: HashMap<u64, UserPresence>,
}

impl Subscriptions {
    fn ttl(&self) -> Duration {
        self.ttl.unwrap_or(DEFAULT_TTL)
    }

    fn interval(&self) -> Duration {
        (self.ttl() / 2).max(MIN_INTERVAL)
    }

    /// `users` are subscribed as of `now` (a snapshot with `ttl_s` answered them). The next
    /// renewal stays as early as it was: users subscribed before expire before these.
    pub(crate) fn subscribed(&mut self, users: &[u64], ttl_s: u32, now: Instant) {
        if users.is_empty() {
            return;
        }
        self.users.extend(users.iter().copied());
        if ttl_s > 0 {
            self.ttl = Some(Duration::from_secs(u64::from(ttl_s)));
        }
        let at = now + self.interval();
        self.next_renewal = Some(self.next_renewal.map_or(at, |n| n.min(at)));
    }

    /// Every subscription was renewed at `now`.
    pub(crate) fn renewed(&mut self, ttl_s: u32, now: Instant) {
        if ttl_s > 0 {
            self.ttl = Some(Duration::from_secs(u64::from(ttl_s)));
        }
        self.next_renewal = (!self.users.is_empty()).then(|| now + self.interval());
    }

    /// A renewal failed at `now`: try again soon.
    pub(crate) fn renewal_failed(&mut self, now: Instant) {
        if !self.users.is_empty() {
            let wait = RETRY_AFTER.min(self.ttl() / 4).max(MIN_INTERVAL);
            self.next_renewal = Some(now + wait);
        }
    }

    /// A new connection is up: its server knows none of our subscriptions, renew at once.
    pub(crate) fn renew_now(&mut self, now: Instant) {
        if !self.users.is_empty() {
            self.next_renewal = Some(now);
        }
    }

    /// Stops renewing `users`.
    pub(crate) fn remove(&mut self, users: &[u64]) {
        for u in users {
            self.users.remove(u);
            self.last.remove(u);
        }
        if self.users.is_empty() {
            self.next_renewal = None;
        }
    }

    pub(crate) fn next_renewal(&self) -> Option<Instant> {
        self.next_renewal
    }

    pub(crate) fn due(&self, now: Instant) -> bool {
        self.next_renewal.is_some_and(|t| t <= now)
    }

    /// Every subscribed user, in frames of at most [`MAX_PER_FRAME`].
    pub(crate) fn renewal_frames(&self) -> Vec<Vec<u64>> {
        let all: Vec<u64> = self.users.iter().copied().collect();
        chunks(&all).map(<[u64]>::to_vec).collect()
    }

    /// The subscribed users.
    pub(crate) fn users(&self) -> Vec<u64> {
        self.users.iter().copied().collect()
    }

    /// Remembers a user's presence; true when it differs from what was known (or nothing
    /// was). Users not subscribed by this device are not remembered (always true).
    pub(crate) fn observe(&mut self, p: &UserPresence) -> bool {
        if !self.users.contains(&p.user_id) {
            return true;
        }
        match self.last.insert(p.user_id, *p) {
            Some(old) => old != *p,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_proto::v1::PresenceState;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn renewal_is_due_at_half_the_ttl() {
        let t0 = Instant::now();
        let mut s = Subscriptions::default();
        assert_eq!(s.next_renewal(), None);
        assert!(!s.due(t0 + secs(1000)));
        s.subscribed(&[1, 2], 60, t0);
        assert_eq!(s.next_renewal(), Some(t0 + secs(30)));
        assert!(!s.due(t0 + secs(29)));
        assert!(s.due(t0 + secs(30)));
        s.renewed(60, t0 + secs(30));
        assert_eq!(s.next_renewal(), Some(t0 + secs(60)));
    }

    #[test]
    fn later_subscriptions_do_not_push_the_renewal_back() {
        let t0 = Instant::now();
        let mut s = Subscriptions::default();
        s.subscribed(&[1], 60, t0);
        s.subscribed(&[2], 60, t0 + secs(20));
        s.subscribed(&[3], 60, t0 + secs(25));
        // User 1 expires at 60: the renewal stays at 30.
        assert_eq!(s.next_renewal(), Some(t0 + secs(30)));
        assert_eq!(s.users(), [1, 2, 3]);
    }

    #[test]
    fn a_reconnect_makes_the_renewal_due_at_once() {
        let t0 = Instant::now();
        let mut s = Subscriptions::default();
        s.renew_now(t0);
        assert_eq!(s.next_renewal(), None, "nothing to renew");
        s.subscribed(&[1], 60, t0);
        s.renew_now(t0 + secs(3));
        assert!(s.due(t0 + secs(3)));
    }

    #[test]
    fn a_failed_renewal_is_retried_soon() {
        let t0 = Instant::now();
        let mut s = Subscriptions::default();
        s.subscribed(&[1], 60, t0);
        s.renewal_failed(t0 + secs(30));
        assert_eq!(s.next_renewal(), Some(t0 + secs(35)));
        // A short TTL retries sooner, but never more than once a second.
        let mut s = Subscriptions::default();
        s.subscribed(&[1], 8, t0);
        assert_eq!(s.next_renewal(), Some(t0 + secs(4)));
        s.renewal_failed(t0);
        assert_eq!(s.next_renewal(), Some(t0 + secs(2)));
        let mut s = Subscriptions::default();
        s.subscribed(&[1], 1, t0);
        assert_eq!(s.next_renewal(), Some(t0 + secs(1)));
    }

    #[test]
    fn no_ttl_means_the_default() {
        let t0 = Instant::now();
        let mut s = Subscriptions::default();
        s.subscribed(&[1], 0, t0);
        assert_eq!(s.next_renewal(), Some(t0 + DEFAULT_TTL / 2));
    }

    #[test]
    fn removing_everyone_stops_renewing() {
        let t0 = Instant::now();
        let mut s = Subscriptions::default();
        s.subscribed(&[1, 2], 60, t0);
        s.remove(&[1]);
        assert!(s.next_renewal().is_some());
        s.remove(&[2, 3]);
        assert_eq!(s.next_renewal(), None);
        s.renewed(60, t0);
        assert_eq!(s.next_renewal(), None);
        assert!(s.renewal_frames().is_empty());
    }

    #[test]
    fn renewals_go_in_frames_of_a_thousand() {
        let t0 = Instant::now();
        let mut s = Subscriptions::default();
        let ids: Vec<u64> = (1..=2500).collect();
        for c in chunks(&ids) {
            s.subscribed(c, 60, t0);
        }
        let frames = s.renewal_frames();
        assert_eq!(
            frames.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        assert_eq!(frames.concat(), ids);
    }

    #[test]
    fn only_changes_count() {
        let t0 = Instant::now();
        let mut s = Subscriptions::default();
        s.subscribed(&[1], 60, t0);
        let online = UserPresence {
            user_id: 1,
            state: PresenceState::Online as i32,
            last_seen_ms: 0,
        };
        assert!(s.observe(&online));
        assert!(!s.observe(&online));
        let offline = UserPresence {
            state: PresenceState::Offline as i32,
            last_seen_ms: 5,
            ..online
        };
        assert!(s.observe(&offline));
        // Someone this device did not subscribe to (another device of ours did).
        let other = UserPresence {
            user_id: 9,
            ..online
        };
        assert!(s.observe(&other));
        assert!(s.observe(&other));
        // After an unsubscribe, a resubscription reports the state again.
        s.remove(&[1]);
        s.subscribed(&[1], 60, t0);
        assert!(s.observe(&offline));
    }
}
