//! Login attempts per account: a few wrong passwords are free, then each further one
//! locks the account's logins for twice as long as the last (from `base` up to `max`).
//! While locked, a login is refused before its password is checked (429
//! `too_many_attempts` with `Retry-After`), so guessing gets no faster by trying harder;
//! a successful login clears the count. Kept in memory: the sessions role is one
//! instance, and a restart forgetting the counts costs an attacker nothing they could
//! not get by waiting out `max`.
//!
//! Per account: anyone can lock someone else's logins for a while by failing on purpose
//! (the exponential cap bounds how long). Guessing across many accounts from one client
//! is limited per client address instead (`addr_limit.rs`).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How logins are limited.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Wrong passwords in a row before the first lock.
    pub free_failures: u32,
    /// The first lock; each further failure doubles it.
    pub base: Duration,
    /// The longest lock.
    pub max: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            free_failures: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(15 * 60),
        }
    }
}

/// Accounts tracked at most; past that, entries that are neither locked nor recent go.
const MAX_TRACKED: usize = 100_000;
/// A failure count older than this (with no lock running) is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Lockout {
    limits: LoginLimits,
    accounts: Mutex<HashMap<String, Failures>>,
}

impl Lockout {
    pub(crate) fn new(limits: LoginLimits) -> Lockout {
        Lockout {
            limits,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        // Each update is one insert or remove: a poisoned map is still consistent.
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(wait)` while `username`'s logins are locked.
    pub(crate) fn check(&self, username: &str, now: Instant) -> Result<(), Duration> {
        match self.accounts().get(username).and_then(|f| f.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// A wrong password for `username`: the lock it starts, if any.
    pub(crate) fn failed(&self, username: &str, now: Instant) -> Option<Duration> {
        let mut accounts = self.accounts();
        if accounts.len() >= MAX_TRACKED && !accounts.contains_key(username) {
            accounts.retain(|_, f| {
                f.locked_until.is_some_and(|u| u > now) || now.duration_since(f.last) < FORGET_AFTER
            });
            if accounts.len() >= MAX_TRACKED {
                // Flooded with names: count nothing new rather than grow without bound.
                return None;
            }
        }
        let entry = accounts.entry(username.to_owned()).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER
            && entry.locked_until.is_none_or(|u| u <= now)
        {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let over = entry.count.checked_sub(self.limits.free_failures)?;
        if over == 0 {
            return None;
        }
        let lock = self
            .limits
            .base
            .saturating_mul(2u32.saturating_pow((over - 1).min(30)))
            .min(self.limits.max);
        entry.locked_until = Some(now + lock);
        metrics::counter!("natter_login_lockouts_total").increment(1);
        Some(lock)
    }

    /// A successful login: the count starts over.
    pub(crate) fn succeeded(&self, username: &str) {
        self.accounts().remove(username);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockout() -> Lockout {
        Lockout::new(LoginLimits {
            free_failures: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
        })
    }

    #[test]
    fn free_failures_then_doubling_locks_up_to_the_cap() {
        let l = lockout();
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.failed("ann", t), None);
            assert!(l.check("ann", t).is_ok());
        }
        assert_eq!(l.failed("ann", t), Some(Duration::from_secs(1)));
        assert_eq!(l.check("ann", t), Err(Duration::from_secs(1)));
        assert!(l.check("bob", t).is_ok(), "per account");
        let t = t + Duration::from_secs(1);
        assert!(l.check("ann", t).is_ok(), "the lock runs out");
        assert_eq!(l.failed("ann", t), Some(Duration::from_secs(2)));
        assert_eq!(l.failed("ann", t), Some(Duration::from_secs(4)));
        assert_eq!(l.failed("ann", t), Some(Duration::from_secs(5)), "capped");
        assert_eq!(l.failed("ann", t), Some(Duration::from_secs(5)));
    }

    #[test]
    fn success_and_time_start_the_count_over() {
        let l = lockout();
        let t = Instant::now();
        for _ in 0..3 {
            l.failed("ann", t);
        }
        l.succeeded("ann");
        assert_eq!(l.failed("ann", t), None);
        for _ in 0..2 {
            l.failed("ann", t);
        }
        // An hour later the old failures no longer count.
        let later = t + FORGET_AFTER;
        assert_eq!(l.failed("ann", later), None);
    }
}
