//! The edge's limits on what one device, user or address may do on this node: token
//! buckets for Send and Typing frames, and counts of open connections per user and per
//! client address, taken at the upgrade and given back by a guard when the connection
//! ends (on every path: its `Drop`). Every limit here is per edge node: a client spread
//! over several edges gets each node's allowance.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use natter_proto::{DeviceId, UserId};
use tokio::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up; starts full.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket; a rate or burst of 0 counts as 1 (a bucket that never refills or
    /// never holds a token would refuse everything forever).
    pub(crate) fn new(per_second: u32, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(per_second.max(1)),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = now;
    }

    /// Takes a token, or says how long until there is one.
    pub(crate) fn take(&mut self) -> Result<(), Duration> {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Its rate (tokens a second) and burst.
    pub(crate) fn limits(&self) -> (f64, f64) {
        (self.rate, self.burst)
    }

    /// Whether the bucket is full again by now (it then says nothing a new one would not).
    fn full(&self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens + earned >= self.burst
    }
}

/// Locks a std mutex, recovering from poisoning (each critical section here is a map
/// operation or a little arithmetic: no invariant spans a panic).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Each device's Send bucket on this node, shared by its connections and kept after
/// they close until it has refilled: a device cannot get a fresh burst by reconnecting,
/// nor by opening a second connection that replaces the first.
pub(crate) struct SendBuckets {
    per_second: u32,
    burst: u32,
    devices: Mutex<DeviceBuckets>,
}

struct DeviceBuckets {
    map: HashMap<DeviceId, Arc<Mutex<TokenBucket>>>,
    /// The map is swept of refilled, unused buckets when it reaches this size.
    sweep_at: usize,
}

/// Buckets kept before the first sweep (and at least this many between sweeps).
const MIN_SWEEP: usize = 1024;

impl SendBuckets {
    pub(crate) fn new(per_second: u32, burst: u32) -> SendBuckets {
        SendBuckets {
            per_second,
            burst,
            devices: Mutex::new(DeviceBuckets {
                map: HashMap::new(),
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    /// The device's bucket (its saved one, or a full one).
    pub(crate) fn of(&self, device: DeviceId) -> Arc<Mutex<TokenBucket>> {
        let mut d = lock(&self.devices);
        if let Some(bucket) = d.map.get(&device) {
            return bucket.clone();
        }
        if d.map.len() >= d.sweep_at {
            let now = Instant::now();
            // Only this map holds them and they are full: a new one would be the same.
            d.map
                .retain(|_, b| Arc::strong_count(b) > 1 || !lock(b).full(now));
            d.sweep_at = (d.map.len() * 2).max(MIN_SWEEP);
        }
        let bucket = Arc::new(Mutex::new(TokenBucket::new(self.per_second, self.burst)));
        d.map.insert(device, bucket.clone());
        bucket
    }

    /// A connection of `device` is done with `bucket`: forget it now if nobody else
    /// holds it and it is full (else the next sweep does, once it has refilled).
    pub(crate) fn release(&self, device: DeviceId, bucket: Arc<Mutex<TokenBucket>>) {
        let mut d = lock(&self.devices);
        drop(bucket);
        let now = Instant::now();
        if d.map
            .get(&device)
            .is_some_and(|b| Arc::strong_count(b) == 1 && lock(b).full(now))
        {
            d.map.remove(&device);
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        lock(&self.devices).map.len()
    }
}

/// Open connections per key (a user, a client address) on this node, at most `max`
/// each (0: no limit).
pub(crate) struct Counts<K> {
    max: u32,
    open: Mutex<HashMap<K, u32>>,
}

/// One connection's place in a [`Counts`]; given back when dropped.
pub(crate) struct Slot<K: Eq + Hash + Copy> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Eq + Hash + Copy> Counts<K> {
    pub(crate) fn new(max: u32) -> Arc<Counts<K>> {
        Arc::new(Counts {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection of `key`, or `None` when it has `max` already.
    pub(crate) fn acquire(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut open = lock(&self.open);
        let n = open.entry(key).or_insert(0);
        if self.max != 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            key,
        })
    }

    /// Open connections of `key` right now.
    #[cfg(test)]
    fn count(&self, key: K) -> u32 {
        lock(&self.open).get(&key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = lock(&self.counts.open);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What one connection holds in the per-user and per-address counts.
pub(crate) struct Slots {
    _user: Slot<UserId>,
    _addr: Option<Slot<IpAddr>>,
}

impl Slots {
    pub(crate) fn new(user: Slot<UserId>, addr: Option<Slot<IpAddr>>) -> Slots {
        Slots {
            _user: user,
            _addr: addr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = TokenBucket::new(10, 3);
        for _ in 0..3 {
            assert!(b.take().is_ok());
        }
        let wait = b.take().expect_err("the burst is spent");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take().is_ok(), "one token a tenth of a second");
        assert!(b.take().is_err());
        // Never more than the burst saved up.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert!(b.take().is_ok());
        }
        assert!(b.take().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_keeps_its_bucket_across_connections_until_it_refills() {
        let buckets = SendBuckets::new(1, 2);
        let device = DeviceId(7);
        let first = buckets.of(device);
        assert!(lock(&first).take().is_ok());
        // A second connection of the same device shares the bucket.
        let second = buckets.of(device);
        assert!(lock(&second).take().is_ok());
        assert!(lock(&second).take().is_err(), "the burst is shared");
        buckets.release(device, first);
        buckets.release(device, second);
        // Reconnecting does not refill it.
        let again = buckets.of(device);
        assert!(
            lock(&again).take().is_err(),
            "a reconnect is no fresh burst"
        );
        buckets.release(device, again);
        assert_eq!(buckets.kept(), 1);
        // Once refilled it is forgotten on release.
        tokio::time::advance(Duration::from_secs(5)).await;
        let later = buckets.of(device);
        buckets.release(device, later);
        assert_eq!(buckets.kept(), 0);
    }

    #[test]
    fn counts_refuse_past_the_cap_and_slots_give_back() {
        let counts = Counts::<u64>::new(2);
        let a = counts.acquire(1).expect("first");
        let b = counts.acquire(1).expect("second");
        assert!(counts.acquire(1).is_none(), "third is over the cap");
        let other = counts.acquire(2).expect("another key is unaffected");
        drop(a);
        assert_eq!(counts.count(1), 1);
        let c = counts.acquire(1).expect("a slot was freed");
        drop((b, c, other));
        assert_eq!(counts.count(1), 0);
        assert!(lock(&counts.open).is_empty(), "no entry left behind");
        let unlimited = Counts::<u64>::new(0);
        let many: Vec<_> = (0..100).map(|_| unlimited.acquire(1)).collect();
        assert!(many.iter().all(Option::is_some));
    }
}
