//! Failed logins per client address: at most `failures` within `window` from one address,
//! then that address's logins are refused (429 `too_many_attempts` with `Retry-After`)
//! until the window that started with its first failure is over. This is what stops one
//! client guessing across many accounts, which the per-account lock (`lockout.rs`) cannot
//! see.
//!
//! Each login counts as a failure from the moment it starts, and is refunded when it
//! ends in anything but a wrong password (a successful login, a locked or disabled
//! account, an internal error). So a burst of parallel guesses is held to the limit as
//! well, instead of all passing the check before the first of them fails.
//!
//! IPv6 addresses count per /64: a single host usually holds a whole /64 and could
//! otherwise pick a fresh address for every guess. Kept in memory like the per-account
//! counts (one sessions instance; a restart forgets them).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How failed logins per client address are limited.
#[derive(Debug, Clone, Copy)]
pub struct AddrLimits {
    /// Failed logins allowed from one address (or IPv6 /64) per window; 0 turns the
    /// limit off.
    pub failures: u32,
    /// The window, counted from the first failure of a run.
    pub window: Duration,
}

impl Default for AddrLimits {
    fn default() -> Self {
        AddrLimits {
            failures: 20,
            window: Duration::from_secs(10 * 60),
        }
    }
}

/// Addresses tracked at most; past that, windows that are over are dropped first and new
/// addresses are not counted while the table is still full.
const MAX_TRACKED: usize = 100_000;

/// The address a limit counts: IPv4 as it is, IPv6 reduced to its /64.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    /// Failures and logins still running since `start`.
    count: u32,
    /// The address was refused at least once in this window (logged once).
    refused: bool,
}

#[derive(Debug)]
pub(crate) struct AddrLimiter {
    limits: AddrLimits,
    addrs: Mutex<HashMap<IpAddr, Window>>,
}

/// A login in progress from an address; dropped without [`Attempt::failed`], it is
/// refunded (the login did not fail, or never finished).
#[derive(Debug)]
pub(crate) struct Attempt<'a> {
    limiter: &'a AddrLimiter,
    key: IpAddr,
    /// Which window it was counted in: a refund into a later window would be wrong.
    window_start: Instant,
    failed: bool,
}

impl Attempt<'_> {
    /// The login failed (a wrong password or unknown user): it stays counted.
    pub(crate) fn failed(mut self) {
        self.failed = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.failed {
            return;
        }
        let mut addrs = self.limiter.addrs();
        if let Some(w) = addrs.get_mut(&self.key)
            && w.start == self.window_start
        {
            w.count = w.count.saturating_sub(1);
        }
    }
}

impl AddrLimiter {
    pub(crate) fn new(limits: AddrLimits) -> AddrLimiter {
        AddrLimiter {
            limits,
            addrs: Mutex::new(HashMap::new()),
        }
    }

    fn addrs(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        // Each update is one insert, remove or field change: a poisoned map is still
        // consistent.
        self.addrs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a login from `ip`: `Err(wait)` while the address has used up its window.
    /// `None` when the limit is off or the table is full of live windows.
    pub(crate) fn begin(&self, ip: IpAddr, now: Instant) -> Result<Option<Attempt<'_>>, Duration> {
        if self.limits.failures == 0 {
            return Ok(None);
        }
        let key = key_of(ip);
        let window = self.limits.window;
        let mut addrs = self.addrs();
        if addrs.len() >= MAX_TRACKED && !addrs.contains_key(&key) {
            addrs.retain(|_, w| now.duration_since(w.start) < window);
            if addrs.len() >= MAX_TRACKED {
                return Ok(None);
            }
        }
        let w = addrs.entry(key).or_insert(Window {
            start: now,
            count: 0,
            refused: false,
        });
        if now.duration_since(w.start) >= window {
            *w = Window {
                start: now,
                count: 0,
                refused: false,
            };
        }
        if w.count >= self.limits.failures {
            if !w.refused {
                w.refused = true;
                tracing::warn!(
                    client = %key,
                    failures = self.limits.failures,
                    window_s = window.as_secs(),
                    "logins from this client address refused after repeated failures"
                );
            }
            return Err((w.start + window).saturating_duration_since(now));
        }
        w.count += 1;
        Ok(Some(Attempt {
            limiter: self,
            key,
            window_start: w.start,
            failed: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter() -> AddrLimiter {
        AddrLimiter::new(AddrLimits {
            failures: 3,
            window: Duration::from_secs(60),
        })
    }

    #[test]
    fn failures_per_address_within_the_window() {
        let l = limiter();
        let t = Instant::now();
        for _ in 0..3 {
            l.begin(ip("1.2.3.4"), t).unwrap().unwrap().failed();
        }
        assert_eq!(
            l.begin(ip("1.2.3.4"), t + Duration::from_secs(10))
                .unwrap_err(),
            Duration::from_secs(50)
        );
        // Another address is not affected; the same one is again once the window ends.
        assert!(l.begin(ip("1.2.3.5"), t).is_ok());
        assert!(l.begin(ip("1.2.3.4"), t + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn logins_that_do_not_fail_are_refunded() {
        let l = limiter();
        let t = Instant::now();
        for _ in 0..10 {
            drop(l.begin(ip("1.2.3.4"), t).unwrap().unwrap());
        }
        // Three in flight at once fill the window: a fourth waits.
        let a = l.begin(ip("1.2.3.4"), t).unwrap().unwrap();
        let b = l.begin(ip("1.2.3.4"), t).unwrap().unwrap();
        let c = l.begin(ip("1.2.3.4"), t).unwrap().unwrap();
        assert!(l.begin(ip("1.2.3.4"), t).is_err());
        drop(a);
        b.failed();
        c.failed();
        l.begin(ip("1.2.3.4"), t).unwrap().unwrap().failed();
        assert!(l.begin(ip("1.2.3.4"), t).is_err());
    }

    #[test]
    fn ipv6_counts_per_64_and_off_means_off() {
        let l = limiter();
        let t = Instant::now();
        for host in ["2001:db8::1", "2001:db8::2", "2001:db8::ffff:1"] {
            l.begin(ip(host), t).unwrap().unwrap().failed();
        }
        assert!(l.begin(ip("2001:db8::99"), t).is_err(), "same /64");
        assert!(l.begin(ip("2001:db8:0:1::1"), t).is_ok(), "another /64");
        // IPv4-mapped addresses count as the IPv4 address.
        let l = limiter();
        for _ in 0..3 {
            l.begin(ip("::ffff:9.9.9.9"), t).unwrap().unwrap().failed();
        }
        assert!(l.begin(ip("9.9.9.9"), t).is_err());

        let off = AddrLimiter::new(AddrLimits {
            failures: 0,
            window: Duration::from_secs(60),
        });
        for _ in 0..100 {
            assert!(off.begin(ip("1.2.3.4"), t).unwrap().is_none());
        }
    }
}
