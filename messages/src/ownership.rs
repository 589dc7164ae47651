//! Who owns which partition. In `natter serve` one instance owns all of them for ever
//! ([`Placement::All`]). In a cluster ([`Placement::Leased`]) the running messages
//! instances share the partitions through leases in Redis:
//!
//! - **Membership.** Each instance keeps itself in the sorted set `<prefix>:members`
//!   (score = when its membership expires); the live count `n` gives every instance a
//!   fair share of `ceil(P / n)` partitions.
//! - **Leases with epochs.** Partition `p` is owned by whoever holds the key
//!   `<prefix>:lease:pNNN` = `<instance>/<epoch>`, set with `NX` and a TTL. Taking a
//!   lease increments `<prefix>:epoch:pNNN`, so each ownership has a number higher than
//!   every earlier one (it is logged and tells a stale owner from a current one). The
//!   owner renews every `ttl / 3` with a compare-and-expire script (every 200 ms while
//!   it holds less than its share and is looking for free partitions).
//! - **Safety.** An owner counts its lease as valid only until `sent + ttl × 0.8`,
//!   where `sent` is when its last successful renewal was *sent*, so it stops before
//!   Redis can expire the key and let another instance take it (a 20% margin for clock
//!   rate differences and pauses). It does not start a batch with less than
//!   [`MIN_BATCH_VALIDITY`] left. A new owner reloads conversation heads from the store,
//!   so seq carries on gap-free from what was committed.
//! - **Hand-over.** An instance above its share stops the extra partitions' owners
//!   (their buffered requests get UNAVAILABLE, which clients retry) and deletes those
//!   leases, so another instance takes them at its next tick instead of after the TTL.
//!   On shutdown it does the same for all of its partitions. A crashed instance's
//!   partitions are taken once its leases expire.
//!
//! All keys share the hash tag `{natter}` so the multi-key scripts also work on a
//! Redis Cluster slot.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use natter_proto::Partition;
use redis::aio::ConnectionManager;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A batch does not start with less lease validity than this left.
pub const MIN_BATCH_VALIDITY: Duration = Duration::from_millis(500);
/// How soon an instance below its fair share looks for free partitions again.
const EAGER_TICK: Duration = Duration::from_millis(200);
/// Timeout of each Redis call of the lease manager.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How partitions are placed on this instance.
#[derive(Debug, Clone)]
pub enum Placement {
    /// This instance owns every partition (one messages instance, e.g. `natter serve`).
    All,
    /// Partitions are leased in Redis among the running instances.
    Leased(LeaseConfig),
}

/// Settings of [`Placement::Leased`].
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// This instance's name; unique among the running instances.
    pub instance_id: String,
    /// Lease lifetime: a crashed owner's partitions move after at most this long.
    pub ttl: Duration,
    /// Prefix of every Redis key (several clusters can share one Redis).
    pub key_prefix: String,
}

impl LeaseConfig {
    pub fn new(redis_url: impl Into<String>, instance_id: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            instance_id: instance_id.into(),
            ttl: Duration::from_secs(10),
            key_prefix: "natter".to_owned(),
        }
    }
}

/// One ownership of one partition, shared by its owner task and the manager.
#[derive(Debug)]
pub(crate) struct Lease {
    pub epoch: u64,
    /// Milliseconds after `base` until which the lease counts as held (`u64::MAX` for
    /// ever).
    valid_until_ms: AtomicU64,
    base: Instant,
    /// Cancelled when the partition must stop being served here.
    pub stop: CancellationToken,
}

impl Lease {
    pub fn forever(stop: CancellationToken) -> Arc<Lease> {
        Arc::new(Lease {
            epoch: 0,
            valid_until_ms: AtomicU64::new(u64::MAX),
            base: Instant::now(),
            stop,
        })
    }

    fn new(epoch: u64, base: Instant, valid_until: Instant, stop: CancellationToken) -> Lease {
        let lease = Lease {
            epoch,
            valid_until_ms: AtomicU64::new(0),
            base,
            stop,
        };
        lease.extend_to(valid_until);
        lease
    }

    fn extend_to(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.base).as_millis() as u64;
        self.valid_until_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Is the lease held for at least `margin` more?
    pub fn valid_for(&self, margin: Duration) -> bool {
        let until = self.valid_until_ms.load(Ordering::Acquire);
        if until == u64::MAX {
            return true;
        }
        let now = self.base.elapsed() + margin;
        (now.as_millis() as u64) < until
    }
}

/// What the service hands the manager: starts an owner task for a partition.
pub(crate) type SpawnOwner = Arc<dyn Fn(Partition, Arc<Lease>) -> JoinHandle<()> + Send + Sync>;

/// The partitions this instance owns right now (for status and tests).
#[derive(Debug, Clone, Default)]
pub struct Owned(Arc<Mutex<BTreeMap<u16, u64>>>);

impl Owned {
    /// Owned partitions with their lease epochs.
    pub fn snapshot(&self) -> BTreeMap<u16, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, p: Partition, epoch: u64) {
        let mut owned = self.0.lock().unwrap_or_else(|e| e.into_inner());
        owned.insert(p.index(), epoch);
        metrics::gauge!("natter_partitions_owned").set(owned.len() as f64);
    }

    fn remove(&self, p: Partition) {
        let mut owned = self.0.lock().unwrap_or_else(|e| e.into_inner());
        owned.remove(&p.index());
        metrics::gauge!("natter_partitions_owned").set(owned.len() as f64);
    }
}

struct Held {
    lease: Arc<Lease>,
    task: JoinHandle<()>,
}

/// Takes a free lease for each key pair (lease, epoch) in order, at most ARGV[3] of
/// them. Returns a flat list [index, epoch, index, epoch, ...] (1-based key pair index).
const ACQUIRE: &str = r#"
local got = {}
local want = tonumber(ARGV[3])
for i = 1, #KEYS, 2 do
  if #got / 2 >= want then break end
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local e = redis.call('INCR', KEYS[i + 1])
    redis.call('SET', KEYS[i], ARGV[1] .. '/' .. e, 'PX', ARGV[2])
    table.insert(got, (i + 1) / 2)
    table.insert(got, e)
  end
end
return got
"#;

/// Extends each lease whose value is still ours (ARGV[2..] the values, ARGV[1] the TTL).
/// Returns 1/0 per key.
const RENEW: &str = r#"
local out = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

/// Deletes each lease whose value is still ours.
const RELEASE: &str = r#"
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n
"#;

/// Refreshes our membership, drops expired members, returns the live count.
const MEMBERS: &str = r#"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
return redis.call('ZCARD', KEYS[1])
"#;

pub(crate) struct Manager {
    config: LeaseConfig,
    redis: ConnectionManager,
    spawn: SpawnOwner,
    held: BTreeMap<u16, Held>,
    owned: Owned,
    shutdown: CancellationToken,
    acquire: redis::Script,
    renew: redis::Script,
    release: redis::Script,
    members: redis::Script,
    base: Instant,
}

fn lease_key(prefix: &str, p: u16) -> String {
    format!("{prefix}:{{natter}}:lease:p{p:03}")
}

fn epoch_key(prefix: &str, p: u16) -> String {
    format!("{prefix}:{{natter}}:epoch:p{p:03}")
}

fn members_key(prefix: &str) -> String {
    format!("{prefix}:{{natter}}:members")
}

/// Why the lease manager could not start.
#[derive(Debug, thiserror::Error)]
#[error("redis {url}: {message}")]
pub struct LeaseError {
    url: String,
    message: String,
}

impl Manager {
    /// Connects lazily: Redis may come up after us; the manager keeps trying.
    pub fn new(
        config: LeaseConfig,
        spawn: SpawnOwner,
        owned: Owned,
        shutdown: CancellationToken,
    ) -> Result<Manager, LeaseError> {
        let error = |e: redis::RedisError| LeaseError {
            url: config.redis_url.clone(),
            message: e.to_string(),
        };
        if config.ttl < Duration::from_millis(300) {
            return Err(LeaseError {
                url: config.redis_url.clone(),
                message: "the lease TTL must be at least 300 ms".into(),
            });
        }
        let client = redis::Client::open(config.redis_url.as_str()).map_err(error)?;
        let redis = ConnectionManager::new_lazy_with_config(
            client,
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500)),
        )
        .map_err(error)?;
        Ok(Manager {
            config,
            redis,
            spawn,
            held: BTreeMap::new(),
            owned,
            shutdown,
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
            members: redis::Script::new(MEMBERS),
            base: Instant::now(),
        })
    }

    fn value(&self, epoch: u64) -> String {
        format!("{}/{epoch}", self.config.instance_id)
    }

    fn validity(&self) -> Duration {
        self.config.ttl.mul_f64(0.8)
    }

    /// Runs until shutdown, then hands every partition over.
    pub async fn run(mut self) {
        let tick = self.config.ttl / 3;
        tracing::info!(
            instance = %self.config.instance_id,
            ttl_ms = self.config.ttl.as_millis() as u64,
            "partition leases: joining"
        );
        loop {
            // Below its share an instance looks again soon: partitions another instance
            // hands over are unowned until someone takes them.
            let wanting = self.step().await;
            let next = if wanting { tick.min(EAGER_TICK) } else { tick };
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(next) => {}
            }
        }
        let all: Vec<u16> = self.held.keys().copied().collect();
        self.hand_over(&all).await;
        let key = members_key(&self.config.key_prefix);
        let mut redis = self.redis.clone();
        let left = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("ZREM")
                .arg(&key)
                .arg(&self.config.instance_id)
                .query_async::<i64>(&mut redis),
        )
        .await;
        if !matches!(left, Ok(Ok(_))) {
            tracing::warn!("could not leave the member set; it expires by itself");
        }
        tracing::info!(instance = %self.config.instance_id, "partition leases: left");
    }

    /// One round: membership, renewals, then give or take to reach the fair share.
    /// Returns true while this instance holds less than its share.
    async fn step(&mut self) -> bool {
        // Owners whose lease lapsed (renewals failing) have stopped by themselves; so
        // do tasks that ended on their own (e.g. a failed subscription).
        self.forget_lapsed();
        let sent = Instant::now();
        let live = match self.heartbeat().await {
            Ok(n) => n.max(1),
            Err(e) => {
                tracing::warn!(error = %e, "lease manager: redis unreachable");
                return false;
            }
        };
        self.renew_all(sent).await;
        let share = usize::from(Partition::COUNT).div_ceil(live);
        if self.held.len() > share {
            let extra: Vec<u16> = self
                .held
                .keys()
                .rev()
                .take(self.held.len() - share)
                .copied()
                .collect();
            tracing::info!(
                count = extra.len(),
                share,
                live,
                "handing partitions over to balance"
            );
            self.hand_over(&extra).await;
        } else if self.held.len() < share {
            self.take(share - self.held.len(), sent).await;
        }
        self.held.len() < share
    }

    fn forget_lapsed(&mut self) {
        let gone: Vec<u16> = self
            .held
            .iter()
            .filter(|(_, h)| !h.lease.valid_for(Duration::ZERO) || h.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            if let Some(h) = self.held.remove(&p) {
                tracing::warn!(
                    partition = p,
                    epoch = h.lease.epoch,
                    "lease lapsed or owner stopped: no longer serving"
                );
                h.lease.stop.cancel();
                if let Some(part) = Partition::new(p) {
                    self.owned.remove(part);
                }
            }
        }
    }

    async fn heartbeat(&mut self) -> Result<usize, String> {
        let now_ms = natter_proto::now_ms();
        let expires = now_ms + self.config.ttl.as_millis() as u64;
        let mut inv = self.members.prepare_invoke();
        inv.key(members_key(&self.config.key_prefix))
            .arg(&self.config.instance_id)
            .arg(expires)
            .arg(now_ms);
        match tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async::<usize>(&mut self.redis)).await
        {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {REDIS_TIMEOUT:?}")),
        }
    }

    async fn renew_all(&mut self, sent: Instant) {
        if self.held.is_empty() {
            return;
        }
        let ps: Vec<u16> = self.held.keys().copied().collect();
        let mut inv = self.renew.prepare_invoke();
        inv.arg(self.config.ttl.as_millis() as u64);
        for p in &ps {
            inv.key(lease_key(&self.config.key_prefix, *p));
            inv.arg(self.value(self.held[p].lease.epoch));
        }
        let result =
            tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async::<Vec<u8>>(&mut self.redis)).await;
        match result {
            Ok(Ok(flags)) if flags.len() == ps.len() => {
                let until = sent + self.validity();
                for (p, ok) in ps.into_iter().zip(flags) {
                    if ok == 1 {
                        self.held[&p].lease.extend_to(until);
                    } else if let Some(h) = self.held.remove(&p) {
                        // Someone else holds it now (or Redis lost it): stop at once.
                        tracing::warn!(partition = p, epoch = h.lease.epoch, "lease lost");
                        h.lease.stop.cancel();
                        if let Some(part) = Partition::new(p) {
                            self.owned.remove(part);
                        }
                    }
                }
            }
            Ok(Ok(_)) => tracing::error!("lease renewal answered a different count"),
            Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
            Err(_) => tracing::warn!("lease renewal timed out"),
        }
    }

    async fn take(&mut self, want: usize, sent: Instant) {
        // Start at a different place per instance so instances starting together do
        // not all race for the same keys.
        let count = Partition::COUNT;
        let offset = (fxhash(&self.config.instance_id) % u64::from(count)) as u16;
        let candidates: Vec<u16> = (0..count)
            .map(|i| (i + offset) % count)
            .filter(|p| !self.held.contains_key(p))
            .collect();
        let mut inv = self.acquire.prepare_invoke();
        for p in &candidates {
            inv.key(lease_key(&self.config.key_prefix, *p));
            inv.key(epoch_key(&self.config.key_prefix, *p));
        }
        inv.arg(&self.config.instance_id)
            .arg(self.config.ttl.as_millis() as u64)
            .arg(want);
        let got = match tokio::time::timeout(
            REDIS_TIMEOUT,
            inv.invoke_async::<Vec<u64>>(&mut self.redis),
        )
        .await
        {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease acquisition failed");
                return;
            }
            Err(_) => {
                tracing::warn!("lease acquisition timed out");
                return;
            }
        };
        let until = sent + self.validity();
        let mut taken = 0;
        for pair in got.chunks_exact(2) {
            let (i, epoch) = (pair[0] as usize, pair[1]);
            let Some(&p) = i.checked_sub(1).and_then(|i| candidates.get(i)) else {
                continue;
            };
            let Some(partition) = Partition::new(p) else {
                continue;
            };
            let lease = Arc::new(Lease::new(
                epoch,
                self.base,
                until,
                self.shutdown.child_token(),
            ));
            let task = (self.spawn)(partition, lease.clone());
            self.owned.set(partition, epoch);
            self.held.insert(p, Held { lease, task });
            taken += 1;
        }
        if taken > 0 {
            tracing::info!(taken, owned = self.held.len(), "partitions taken");
        }
    }

    /// Stops the owners of `ps`, waits for them, then deletes their leases.
    async fn hand_over(&mut self, ps: &[u16]) {
        let mut released = Vec::new();
        for p in ps {
            if let Some(h) = self.held.remove(p) {
                h.lease.stop.cancel();
                if let Err(e) = h.task.await {
                    tracing::error!(partition = p, error = %e, "partition owner failed");
                }
                if let Some(part) = Partition::new(*p) {
                    self.owned.remove(part);
                }
                released.push((*p, h.lease.epoch));
            }
        }
        if released.is_empty() {
            return;
        }
        let mut inv = self.release.prepare_invoke();
        for (p, epoch) in &released {
            inv.key(lease_key(&self.config.key_prefix, *p));
            inv.arg(self.value(*epoch));
        }
        match tokio::time::timeout(REDIS_TIMEOUT, inv.invoke_async::<usize>(&mut self.redis)).await
        {
            Ok(Ok(n)) => tracing::info!(released = n, "partitions handed over"),
            // The leases expire by themselves; the partitions move after the TTL.
            _ => tracing::warn!("could not delete released leases; they expire by themselves"),
        }
    }
}

/// A small stable hash (FNV-1a) for spreading instances' starting points.
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_counts_down() {
        let base = Instant::now();
        let lease = Lease::new(
            1,
            base,
            base + Duration::from_millis(1000),
            CancellationToken::new(),
        );
        assert!(lease.valid_for(Duration::from_millis(500)));
        assert!(!lease.valid_for(Duration::from_millis(1500)));
        // Extending never shortens.
        lease.extend_to(base + Duration::from_millis(10));
        assert!(lease.valid_for(Duration::from_millis(500)));
        assert!(Lease::forever(CancellationToken::new()).valid_for(Duration::from_secs(1 << 30)));
    }

    #[test]
    fn keys_share_one_hash_slot_tag() {
        assert_eq!(lease_key("natter", 7), "natter:{natter}:lease:p007");
        assert_eq!(epoch_key("x", 255), "x:{natter}:epoch:p255");
        assert_eq!(members_key("natter"), "natter:{natter}:members");
    }
}
