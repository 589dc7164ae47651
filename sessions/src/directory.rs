//! The session directory: which edge node holds which connected device, so the admin API
//! and presence can tell who is connected where.
//!
//! Two implementations of [`SessionDirectory`]: [`MemoryDirectory`] for `natter serve`
//! (one process) and [`RedisDirectory`] for a cluster. Both behave the same, and the
//! conformance tests in `sessions/tests/directory.rs` run on both.
//!
//! # Model
//!
//! * A **node** (an edge) is *live* from a [`heartbeat`](SessionDirectory::heartbeat) until
//!   its TTL runs out or it calls [`remove_node`](SessionDirectory::remove_node). Edges
//!   heartbeat every `ttl / 3`. A node whose TTL lapsed is gone for good: its entries never
//!   come back, so a crashed edge's devices disappear by themselves.
//! * Each live period of a node is one **incarnation**. A heartbeat that finds its node not
//!   live starts a new, empty incarnation and says so ([`Heartbeat::Joined`]): an edge that
//!   already holds connections (its heartbeat lapsed while it kept running, e.g. during a
//!   Redis outage) registers them again.
//! * A **device** is connected at most once: registering it again (a reconnect, maybe on
//!   another node) replaces the old entry, and the old connection's late
//!   [`unregister`](SessionDirectory::unregister) leaves the new one alone. Connection ids
//!   are unique per node incarnation.
//! * [`register`](SessionDirectory::register) needs a live node
//!   ([`DirectoryError::NodeNotLive`] otherwise): edges heartbeat before they accept
//!   connections.
//! * A node name identifies one edge *process*. An edge that restarts under the same name
//!   faster than its TTL would find its previous process's entries still live: it calls
//!   `remove_node` with its own name before its first heartbeat (or uses a fresh name).
//!
//! # Redis layout
//!
//! Every call is one Lua script (one round trip, atomic). Times come from Redis `TIME`, so
//! client clocks do not matter. `<p>` is the key prefix.
//!
//! | key | type | content |
//! | --- | --- | --- |
//! | `<p>:nodes` | ZSET | node → expiry (ms since the epoch) |
//! | `<p>:gen` | HASH | node → its current incarnation (a number from `<p>:genseq`) |
//! | `<p>:beat` | HASH | node → last heartbeat (ms) |
//! | `<p>:genseq` | STRING | incarnation counter (never reused) |
//! | `<p>:conns:<gen>` | HASH | `"<user>:<device>"` → connection, one per incarnation |
//! | `<p>:user:<user>` | HASH | device → `"<node>\|<gen>\|<connection>\|<connected_at_ms>"` |
//! | `<p>:reap` | LIST | incarnations that ended and whose entries are still stored |
//!
//! An entry is live when its node is live (expiry in the future) *and* its incarnation is
//! the node's current one; readers check both and delete dead entries they meet. An ended
//! incarnation (lapsed, removed, or replaced by a new one) is pushed to `<p>:reap`, and
//! every heartbeat deletes a bounded batch of the stored entries of ended incarnations.
//! Nothing relies on key TTLs: a TTL on a user's hash would have to be refreshed for every
//! connection on every heartbeat, and a TTL on a node's hash would lose the index needed
//! to clean the users' hashes. The storage of a dead node is thus reclaimed by the other
//! nodes' heartbeats; if no node ever heartbeats again, nothing is live anyway.
//!
//! The scripts touch keys they compute (not only those passed as `KEYS`): they need a
//! standalone Redis (or Sentinel), not Redis Cluster. Redis 6.2 or newer (`HRANDFIELD`).
//! Configure Redis with persistence (AOF) so a restart keeps the directory; otherwise a
//! restarted Redis simply starts empty and every heartbeat answers
//! [`Heartbeat::Joined`], which makes the edges register their connections again.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, LazyLock, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use natter_proto::{DeviceId, UserId};
use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use serde::{Deserialize, Serialize};

/// The default bound of every Redis call, connecting included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest accepted heartbeat TTL.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest accepted node name, in bytes.
pub const MAX_NODE_LEN: usize = 255;

/// Lapsed nodes whose incarnation one heartbeat ends (Redis).
const BURY_BATCH: u32 = 16;
/// Stored entries of ended incarnations that one heartbeat deletes (Redis).
const REAP_BATCH: u32 = 1000;

/// Where one device is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLocation {
    pub device: DeviceId,
    /// The edge node holding the connection.
    pub node: String,
    /// The connection id on that node.
    pub connection: u64,
    /// When the connection was registered (ms since the Unix epoch).
    pub connected_at_ms: u64,
}

/// One live node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    /// Devices connected to it now.
    pub connections: u64,
    /// Its last heartbeat (ms since the Unix epoch).
    pub last_heartbeat_ms: u64,
    /// When it counts as gone unless it heartbeats again (ms since the Unix epoch).
    pub expires_at_ms: u64,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The node was live; its entries stay.
    Renewed,
    /// The node was not live (first heartbeat, after `remove_node`, or after its TTL
    /// lapsed) and now is, with no entries: a caller that holds connections registers them
    /// again.
    Joined,
}

/// Why a directory call failed. Messages are stable and start with "session directory".
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// `register` on a node that has not heartbeated, was removed, or whose TTL lapsed.
    #[error("session directory: node `{0}` is not live (heartbeat it before registering)")]
    NodeNotLive(String),
    /// A caller-supplied value was refused.
    #[error("session directory: invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// `RedisDirectory::connect` could not reach Redis (the address has no credentials).
    #[error("session directory: cannot connect to redis at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("session directory: redis {op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// Redis answered with an error, or the connection is down (it reconnects by itself).
    #[error("session directory: redis {op} failed: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
    /// Redis answered something this code did not write.
    #[error("session directory: redis {op} returned malformed data: {detail}")]
    Malformed { op: &'static str, detail: String },
}

impl DirectoryError {
    /// True when retrying later may succeed (Redis unreachable, slow or restarting).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            DirectoryError::Connect { .. }
                | DirectoryError::Timeout { .. }
                | DirectoryError::Redis { .. }
        )
    }
}

/// Which edge node holds which connected device. See the [module docs](self).
#[async_trait::async_trait]
pub trait SessionDirectory: Send + Sync + 'static {
    /// A device connected to `node` (connection ids are unique per node). Replaces any
    /// other entry of the device. Fails with [`DirectoryError::NodeNotLive`] unless the
    /// node is live. Registering the same connection again is harmless.
    async fn register(
        &self,
        node: &str,
        user: UserId,
        device: DeviceId,
        connection: u64,
    ) -> Result<(), DirectoryError>;

    /// The connection closed. Removes the entry only if it is still this connection (a
    /// newer connection of the same device, maybe on another node, must survive).
    async fn unregister(
        &self,
        node: &str,
        user: UserId,
        device: DeviceId,
        connection: u64,
    ) -> Result<(), DirectoryError>;

    /// The node is alive; its entries stay valid for `ttl` from now. Edges call it every
    /// `ttl / 3`. See [`Heartbeat`] for what the answer asks of the caller.
    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<Heartbeat, DirectoryError>;

    /// The node is going away cleanly: its entries disappear now.
    async fn remove_node(&self, node: &str) -> Result<(), DirectoryError>;

    /// Where the user's devices are connected now (only on live nodes), by device id.
    async fn devices(&self, user: UserId) -> Result<Vec<DeviceLocation>, DirectoryError>;

    /// The devices connected to one live node (empty if it is not live), sorted.
    async fn connections(&self, node: &str) -> Result<Vec<(UserId, DeviceId)>, DirectoryError>;

    /// Live nodes with their connection counts and last heartbeat, by name.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, DirectoryError>;

    /// True when the directory lives in the caller's process and cannot lose entries
    /// behind its back (no outage, no restart): callers need not keep their own copy of
    /// what they registered in order to write it again.
    fn is_local(&self) -> bool {
        false
    }
}

fn check_node(node: &str) -> Result<(), DirectoryError> {
    let why = if node.is_empty() {
        "it is empty".to_owned()
    } else if node.len() > MAX_NODE_LEN {
        format!("it is longer than {MAX_NODE_LEN} bytes")
    } else if node.chars().any(|c| c == '|' || c.is_control()) {
        "it contains `|` or a control character".to_owned()
    } else {
        return Ok(());
    };
    Err(DirectoryError::Invalid {
        what: "node name",
        why,
    })
}

fn check_prefix(key_prefix: &str) -> Result<(), DirectoryError> {
    if key_prefix.is_empty() || key_prefix.chars().any(char::is_control) {
        return Err(DirectoryError::Invalid {
            what: "key prefix",
            why: "it is empty or contains a control character".into(),
        });
    }
    Ok(())
}

/// Reconnect attempts are spaced at most half a second apart, so calls work again soon
/// after Redis comes back; a call never waits longer than `timeout`.
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_max_delay(Duration::from_millis(500))
}

/// The TTL in whole milliseconds (at least 1).
fn check_ttl(ttl: Duration) -> Result<u64, DirectoryError> {
    if ttl < Duration::from_millis(1) || ttl > MAX_TTL {
        return Err(DirectoryError::Invalid {
            what: "heartbeat ttl",
            why: format!("{ttl:?} is not between 1 ms and {MAX_TTL:?}"),
        });
    }
    // At most MAX_TTL, so it fits.
    Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// In memory
// ---------------------------------------------------------------------------------------

/// The directory of one process (`natter serve`). Cheap to share behind an `Arc`.
///
/// Entries of a node whose TTL lapsed are dropped by the next call, whichever it is.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    state: Mutex<MemState>,
}

/// One ordered map of every connected device: compact (B-tree nodes, no per-user table)
/// because `natter serve` holds one entry per connection. A user's devices are a range;
/// the per-node views (rare: admin queries, a lapsed node) scan it.
#[derive(Debug, Default)]
struct MemState {
    nodes: HashMap<Arc<str>, MemNode>,
    devices: BTreeMap<(UserId, DeviceId), MemLoc>,
}

#[derive(Debug)]
struct MemNode {
    name: Arc<str>,
    expires: Instant,
    expires_at_ms: u64,
    last_heartbeat_ms: u64,
    /// Entries in `devices` that point at this node.
    connections: u64,
}

#[derive(Debug)]
struct MemLoc {
    node: Arc<str>,
    connection: u64,
    connected_at_ms: u64,
}

impl MemoryDirectory {
    pub fn new() -> MemoryDirectory {
        MemoryDirectory::default()
    }

    /// The state with lapsed nodes (and their entries) removed.
    fn state(&self) -> MutexGuard<'_, MemState> {
        // Every update below completes without panicking code in between, so a poisoned
        // lock (a panic elsewhere while holding it) still guards consistent maps.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.drop_lapsed(Instant::now());
        state
    }
}

impl MemState {
    fn drop_lapsed(&mut self, now: Instant) {
        if self.nodes.values().all(|n| n.expires > now) {
            return;
        }
        let lapsed: Vec<Arc<str>> = self
            .nodes
            .values()
            .filter(|n| n.expires <= now)
            .map(|n| n.name.clone())
            .collect();
        for node in lapsed {
            self.drop_node(&node);
        }
    }

    /// Removes the node and every entry that points at it.
    fn drop_node(&mut self, node: &str) {
        if self.nodes.remove(node).is_some() {
            self.devices.retain(|_, l| *l.node != *node);
        }
    }

    fn count(&mut self, node: &str, delta: i64) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.connections = n.connections.saturating_add_signed(delta);
        }
    }
}

#[async_trait::async_trait]
impl SessionDirectory for MemoryDirectory {
    async fn register(
        &self,
        node: &str,
        user: UserId,
        device: DeviceId,
        connection: u64,
    ) -> Result<(), DirectoryError> {
        check_node(node)?;
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(here) = state.nodes.get(node) else {
            return Err(DirectoryError::NodeNotLive(node.to_owned()));
        };
        let name = here.name.clone();
        let mut connected_at_ms = unix_ms();
        let mut moved_from = None;
        match state.devices.get(&(user, device)) {
            Some(old) if *old.node == *node && old.connection == connection => {
                connected_at_ms = old.connected_at_ms;
            }
            Some(old) if *old.node == *node => {}
            Some(old) => moved_from = Some(old.node.clone()),
            None => {}
        }
        let is_new = state
            .devices
            .insert(
                (user, device),
                MemLoc {
                    node: name,
                    connection,
                    connected_at_ms,
                },
            )
            .is_none();
        if let Some(old) = &moved_from {
            state.count(old, -1);
        }
        if is_new || moved_from.is_some() {
            state.count(node, 1);
        }
        Ok(())
    }

    async fn unregister(
        &self,
        node: &str,
        user: UserId,
        device: DeviceId,
        connection: u64,
    ) -> Result<(), DirectoryError> {
        check_node(node)?;
        let mut state = self.state();
        let ours = state
            .devices
            .get(&(user, device))
            .is_some_and(|l| *l.node == *node && l.connection == connection);
        if ours {
            state.devices.remove(&(user, device));
            state.count(node, -1);
        }
        Ok(())
    }

    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<Heartbeat, DirectoryError> {
        check_node(node)?;
        let ttl_ms = check_ttl(ttl)?;
        let mut state = self.state();
        let now_ms = unix_ms();
        let expires = Instant::now() + ttl;
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        match state.nodes.get_mut(node) {
            Some(n) => {
                n.expires = expires;
                n.expires_at_ms = expires_at_ms;
                n.last_heartbeat_ms = now_ms;
                Ok(Heartbeat::Renewed)
            }
            None => {
                let name: Arc<str> = Arc::from(node);
                state.nodes.insert(
                    name.clone(),
                    MemNode {
                        name,
                        expires,
                        expires_at_ms,
                        last_heartbeat_ms: now_ms,
                        connections: 0,
                    },
                );
                Ok(Heartbeat::Joined)
            }
        }
    }

    async fn remove_node(&self, node: &str) -> Result<(), DirectoryError> {
        check_node(node)?;
        self.state().drop_node(node);
        Ok(())
    }

    async fn devices(&self, user: UserId) -> Result<Vec<DeviceLocation>, DirectoryError> {
        let state = self.state();
        // Sorted by device: the map's order within one user.
        Ok(state
            .devices
            .range((user, DeviceId(0))..=(user, DeviceId(u64::MAX)))
            .map(|((_, device), loc)| DeviceLocation {
                device: *device,
                node: loc.node.to_string(),
                connection: loc.connection,
                connected_at_ms: loc.connected_at_ms,
            })
            .collect())
    }

    async fn connections(&self, node: &str) -> Result<Vec<(UserId, DeviceId)>, DirectoryError> {
        check_node(node)?;
        let state = self.state();
        // Sorted: the map's order.
        Ok(state
            .devices
            .iter()
            .filter(|(_, l)| *l.node == *node)
            .map(|(k, _)| *k)
            .collect())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, DirectoryError> {
        let state = self.state();
        let mut out: Vec<NodeInfo> = state
            .nodes
            .values()
            .map(|n| NodeInfo {
                node: n.name.to_string(),
                connections: n.connections,
                last_heartbeat_ms: n.last_heartbeat_ms,
                expires_at_ms: n.expires_at_ms,
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    fn is_local(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// Helpers shared by every script. `ARGV[1]` is always the key prefix.
const LUA_COMMON: &str = r#"
local p = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ms(n) return string.format('%.0f', n) end
-- node, gen, connection, connected_at of a user entry (nil if malformed)
local function parse_loc(v)
  return string.match(v, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
end
-- the current incarnation of `node` if it is live at `now`, else nil
local function live_gen(node, now)
  local exp = redis.call('ZSCORE', p .. ':nodes', node)
  if not exp or tonumber(exp) <= now then return nil end
  return redis.call('HGET', p .. ':gen', node) or nil
end
-- ends the node's incarnation: it is no longer live, its entries are queued for deletion
local function bury(node)
  local g = redis.call('HGET', p .. ':gen', node)
  redis.call('ZREM', p .. ':nodes', node)
  redis.call('HDEL', p .. ':gen', node)
  redis.call('HDEL', p .. ':beat', node)
  if g then redis.call('RPUSH', p .. ':reap', g) end
end
local function bury_lapsed(now, limit)
  local dead = redis.call('ZRANGEBYSCORE', p .. ':nodes', '-inf', ms(now), 'LIMIT', 0, limit)
  for _, n in ipairs(dead) do bury(n) end
end
-- deletes up to about `budget` stored entries of ended incarnations
local function reap(budget)
  while budget > 0 do
    local g = redis.call('LINDEX', p .. ':reap', 0)
    if not g then return end
    local ckey = p .. ':conns:' .. g
    local batch = redis.call('HRANDFIELD', ckey, budget)
    for _, f in ipairs(batch) do
      local uid, did = string.match(f, '^([^:]*):(.*)$')
      if uid then
        local ukey = p .. ':user:' .. uid
        local cur = redis.call('HGET', ukey, did)
        if cur then
          local _, cg = parse_loc(cur)
          if cg == g then redis.call('HDEL', ukey, did) end
        end
      end
      redis.call('HDEL', ckey, f)
    end
    budget = budget - #batch - 1
    if redis.call('EXISTS', ckey) == 0 then redis.call('LPOP', p .. ':reap') end
  end
end
"#;

/// ARGV: prefix, node, user, device, connection. Returns 1, or 0 if the node is not live.
const LUA_REGISTER: &str = r#"
local node, uid, did, conn = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = now_ms()
local gen = live_gen(node, now)
if not gen then return 0 end
local ukey = p .. ':user:' .. uid
local field = uid .. ':' .. did
local at = ms(now)
local old = redis.call('HGET', ukey, did)
if old then
  local _, ogen, oconn, oat = parse_loc(old)
  if ogen == gen and oconn == conn then
    at = oat
  elseif ogen and ogen ~= gen then
    local okey = p .. ':conns:' .. ogen
    if redis.call('HGET', okey, field) == oconn then redis.call('HDEL', okey, field) end
  end
end
redis.call('HSET', ukey, did, node .. '|' .. gen .. '|' .. conn .. '|' .. at)
redis.call('HSET', p .. ':conns:' .. gen, field, conn)
return 1
"#;

/// ARGV: prefix, node, user, device, connection. Returns 1 if it removed the entry.
const LUA_UNREGISTER: &str = r#"
local node, uid, did, conn = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ukey = p .. ':user:' .. uid
local cur = redis.call('HGET', ukey, did)
if not cur then return 0 end
local cnode, cgen, cconn = parse_loc(cur)
if cnode ~= node or cconn ~= conn then return 0 end
redis.call('HDEL', ukey, did)
local ckey = p .. ':conns:' .. cgen
local field = uid .. ':' .. did
if redis.call('HGET', ckey, field) == conn then redis.call('HDEL', ckey, field) end
return 1
"#;

/// ARGV: prefix, node, ttl ms, bury limit, reap budget. Returns 1 if the node joined.
const LUA_HEARTBEAT: &str = r#"
local node, ttl = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local joined = 0
if not live_gen(node, now) then
  bury(node)
  redis.call('HSET', p .. ':gen', node, redis.call('INCR', p .. ':genseq'))
  joined = 1
end
redis.call('ZADD', p .. ':nodes', ms(now + ttl), node)
redis.call('HSET', p .. ':beat', node, ms(now))
bury_lapsed(now, tonumber(ARGV[4]))
reap(tonumber(ARGV[5]))
return joined
"#;

/// ARGV: prefix, node, reap budget.
const LUA_REMOVE_NODE: &str = r#"
bury(ARGV[2])
reap(tonumber(ARGV[3]))
return 1
"#;

/// ARGV: prefix, user. Returns device, node, connection, connected_at per live entry and
/// deletes the dead ones.
const LUA_DEVICES: &str = r#"
local ukey = p .. ':user:' .. ARGV[2]
local now = now_ms()
local all = redis.call('HGETALL', ukey)
local gens = {}
local out = {}
for i = 1, #all, 2 do
  local did = all[i]
  local node, gen, conn, at = parse_loc(all[i + 1])
  local live = false
  if node then
    local g = gens[node]
    if g == nil then
      g = live_gen(node, now) or false
      gens[node] = g
    end
    live = (g == gen)
  end
  if live then
    out[#out + 1] = did
    out[#out + 1] = node
    out[#out + 1] = conn
    out[#out + 1] = at
  else
    redis.call('HDEL', ukey, did)
  end
end
return out
"#;

/// ARGV: prefix, node. Returns the node's "user:device" fields if it is live.
const LUA_CONNECTIONS: &str = r#"
local gen = live_gen(ARGV[2], now_ms())
if not gen then return {} end
return redis.call('HKEYS', p .. ':conns:' .. gen)
"#;

/// ARGV: prefix, bury limit. Returns node, connections, last heartbeat, expiry per live node.
const LUA_NODES: &str = r#"
local now = now_ms()
bury_lapsed(now, tonumber(ARGV[2]))
local live = redis.call('ZRANGEBYSCORE', p .. ':nodes', '(' .. ms(now), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  local node = live[i]
  local gen = redis.call('HGET', p .. ':gen', node)
  local count = 0
  if gen then count = redis.call('HLEN', p .. ':conns:' .. gen) end
  out[#out + 1] = node
  out[#out + 1] = tostring(count)
  out[#out + 1] = redis.call('HGET', p .. ':beat', node) or '0'
  out[#out + 1] = ms(tonumber(live[i + 1]))
end
return out
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_COMMON}{body}"))
}

struct Scripts {
    register: Script,
    unregister: Script,
    heartbeat: Script,
    remove_node: Script,
    devices: Script,
    connections: Script,
    nodes: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    register: script(LUA_REGISTER),
    unregister: script(LUA_UNREGISTER),
    heartbeat: script(LUA_HEARTBEAT),
    remove_node: script(LUA_REMOVE_NODE),
    devices: script(LUA_DEVICES),
    connections: script(LUA_CONNECTIONS),
    nodes: script(LUA_NODES),
});

/// The cluster directory, in Redis. Cheap to clone (one shared, self-reconnecting
/// connection); holds no per-connection state in this process.
#[derive(Clone)]
pub struct RedisDirectory {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDirectory")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The URL without credentials, for error messages.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn parse_u64(op: &'static str, what: &str, s: &str) -> Result<u64, DirectoryError> {
    s.parse().map_err(|_| DirectoryError::Malformed {
        op,
        detail: format!("{what} `{s}` is not a number"),
    })
}

impl RedisDirectory {
    /// Connects to Redis at `url` (`redis://[:password@]host:port[/db]`) with keys under
    /// `key_prefix` and every call bounded by [`DEFAULT_TIMEOUT`].
    pub async fn connect(url: &str, key_prefix: &str) -> Result<RedisDirectory, DirectoryError> {
        RedisDirectory::connect_with_timeout(url, key_prefix, DEFAULT_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with another bound for each call (and for connecting).
    pub async fn connect_with_timeout(
        url: &str,
        key_prefix: &str,
        timeout: Duration,
    ) -> Result<RedisDirectory, DirectoryError> {
        check_prefix(key_prefix)?;
        if timeout.is_zero() {
            return Err(DirectoryError::Invalid {
                what: "timeout",
                why: "it is zero".into(),
            });
        }
        let addr = redact(url);
        let client = redis::Client::open(url).map_err(|source| DirectoryError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let conn = match tokio::time::timeout(
            timeout,
            ConnectionManager::new_with_config(client, manager_config(timeout)),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(DirectoryError::Connect { addr, source }),
            Err(_) => {
                return Err(DirectoryError::Timeout {
                    op: "connect",
                    after: timeout,
                });
            }
        };
        Ok(RedisDirectory {
            conn,
            prefix: Arc::from(key_prefix),
            timeout,
        })
    }

    /// Like [`RedisDirectory::connect`], but connects on first use, so a caller can start
    /// while Redis is still down (its calls fail until Redis answers, then work). The
    /// default timeout bounds every call.
    pub fn connect_lazy(url: &str, key_prefix: &str) -> Result<RedisDirectory, DirectoryError> {
        check_prefix(key_prefix)?;
        let timeout = DEFAULT_TIMEOUT;
        let addr = redact(url);
        let client = redis::Client::open(url).map_err(|source| DirectoryError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config(timeout))
            .map_err(|source| DirectoryError::Connect { addr, source })?;
        Ok(RedisDirectory {
            conn,
            prefix: Arc::from(key_prefix),
            timeout,
        })
    }

    /// Runs one script (EVALSHA; the script is loaded again after a Redis restart) within
    /// the timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        args: &[&str],
    ) -> Result<T, DirectoryError> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&*self.prefix);
        for a in args {
            invocation.arg(*a);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(DirectoryError::Redis { op, source }),
            Err(_) => Err(DirectoryError::Timeout {
                op,
                after: self.timeout,
            }),
        }
    }
}

#[async_trait::async_trait]
impl SessionDirectory for RedisDirectory {
    async fn register(
        &self,
        node: &str,
        user: UserId,
        device: DeviceId,
        connection: u64,
    ) -> Result<(), DirectoryError> {
        check_node(node)?;
        let (u, d, c) = (
            user.0.to_string(),
            device.0.to_string(),
            connection.to_string(),
        );
        let done: i64 = self
            .run("register", &SCRIPTS.register, &[node, &u, &d, &c])
            .await?;
        if done == 1 {
            Ok(())
        } else {
            Err(DirectoryError::NodeNotLive(node.to_owned()))
        }
    }

    async fn unregister(
        &self,
        node: &str,
        user: UserId,
        device: DeviceId,
        connection: u64,
    ) -> Result<(), DirectoryError> {
        check_node(node)?;
        let (u, d, c) = (
            user.0.to_string(),
            device.0.to_string(),
            connection.to_string(),
        );
        let _removed: i64 = self
            .run("unregister", &SCRIPTS.unregister, &[node, &u, &d, &c])
            .await?;
        Ok(())
    }

    async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<Heartbeat, DirectoryError> {
        check_node(node)?;
        let ttl = check_ttl(ttl)?.to_string();
        let (bury, reap) = (BURY_BATCH.to_string(), REAP_BATCH.to_string());
        let joined: i64 = self
            .run("heartbeat", &SCRIPTS.heartbeat, &[node, &ttl, &bury, &reap])
            .await?;
        Ok(if joined == 1 {
            Heartbeat::Joined
        } else {
            Heartbeat::Renewed
        })
    }

    async fn remove_node(&self, node: &str) -> Result<(), DirectoryError> {
        check_node(node)?;
        let reap = REAP_BATCH.to_string();
        let _: i64 = self
            .run("remove_node", &SCRIPTS.remove_node, &[node, &reap])
            .await?;
        Ok(())
    }

    async fn devices(&self, user: UserId) -> Result<Vec<DeviceLocation>, DirectoryError> {
        const OP: &str = "devices";
        let flat: Vec<String> = self
            .run(OP, &SCRIPTS.devices, &[&user.0.to_string()])
            .await?;
        let rows = flat.chunks_exact(4);
        if !rows.remainder().is_empty() {
            return Err(DirectoryError::Malformed {
                op: OP,
                detail: format!("{} fields, not a multiple of 4", flat.len()),
            });
        }
        let mut out = rows
            .map(|row| {
                Ok(DeviceLocation {
                    device: DeviceId(parse_u64(OP, "device", &row[0])?),
                    node: row[1].clone(),
                    connection: parse_u64(OP, "connection", &row[2])?,
                    connected_at_ms: parse_u64(OP, "connected_at", &row[3])?,
                })
            })
            .collect::<Result<Vec<_>, DirectoryError>>()?;
        out.sort_by_key(|l| l.device);
        Ok(out)
    }

    async fn connections(&self, node: &str) -> Result<Vec<(UserId, DeviceId)>, DirectoryError> {
        const OP: &str = "connections";
        check_node(node)?;
        let fields: Vec<String> = self.run(OP, &SCRIPTS.connections, &[node]).await?;
        let mut out = fields
            .iter()
            .map(|f| {
                let (u, d) = f.split_once(':').ok_or_else(|| DirectoryError::Malformed {
                    op: OP,
                    detail: format!("entry `{f}` is not `user:device`"),
                })?;
                Ok((
                    UserId(parse_u64(OP, "user", u)?),
                    DeviceId(parse_u64(OP, "device", d)?),
                ))
            })
            .collect::<Result<Vec<_>, DirectoryError>>()?;
        out.sort_unstable();
        Ok(out)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, DirectoryError> {
        const OP: &str = "nodes";
        let flat: Vec<String> = self
            .run(OP, &SCRIPTS.nodes, &[&BURY_BATCH.to_string()])
            .await?;
        let rows = flat.chunks_exact(4);
        if !rows.remainder().is_empty() {
            return Err(DirectoryError::Malformed {
                op: OP,
                detail: format!("{} fields, not a multiple of 4", flat.len()),
            });
        }
        let mut out = rows
            .map(|row| {
                Ok(NodeInfo {
                    node: row[0].clone(),
                    connections: parse_u64(OP, "connection count", &row[1])?,
                    last_heartbeat_ms: parse_u64(OP, "heartbeat", &row[2])?,
                    expires_at_ms: parse_u64(OP, "expiry", &row[3])?,
                })
            })
            .collect::<Result<Vec<_>, DirectoryError>>()?;
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_checked() {
        assert!(check_node("edge-1").is_ok());
        assert!(check_node("host.example:8080").is_ok());
        for bad in ["", "a|b", "a\nb", &"x".repeat(MAX_NODE_LEN + 1)] {
            let e = check_node(bad).expect_err(bad);
            assert!(
                e.to_string()
                    .starts_with("session directory: invalid node name")
            );
        }
    }

    #[test]
    fn ttl_bounds() {
        assert_eq!(check_ttl(Duration::from_millis(300)).ok(), Some(300));
        assert!(check_ttl(Duration::ZERO).is_err());
        assert!(check_ttl(Duration::from_micros(999)).is_err());
        assert!(check_ttl(MAX_TTL + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact("redis://:secret@h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://user:p@ss@h:1"), "redis://h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
