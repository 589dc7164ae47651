//! [`RedisPresence`]: the presence store of a cluster, in Redis.

use std::{sync::Arc, sync::LazyLock, time::Duration};

use natter_proto::UserId;
use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::{
    memory::{REAP_BATCH, SUBSCRIPTION_LIMIT, check_at, check_node, check_ttl, sort_transitions},
    store::{Beat, Presence, PresenceError, PresenceStore, Transition},
};

/// Helpers shared by every script. `ARGV[1]` is always the key prefix. Transitions are
/// appended to `out` as three strings: user, "1" (online) or "0", last seen.
const LUA_COMMON: &str = r#"
local p = ARGV[1]
local NODES, BEAT, SEEN = p .. ':nodes', p .. ':beat', p .. ':seen'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ms(n) return string.format('%.0f', n) end
local function node_key(n) return p .. ':node:' .. n end
local function on_key(u) return p .. ':on:' .. u end
local function is_live(n, now)
  local e = redis.call('ZSCORE', NODES, n)
  return e and tonumber(e) > now
end
local function beat_of(n) return tonumber(redis.call('HGET', BEAT, n) or '0') or 0 end
local function emit(out, u, online, at)
  out[#out + 1] = u
  out[#out + 1] = online
  out[#out + 1] = ms(at)
end
-- `u` is no longer on `n` (already out of n's set): offline at `at` (or a later beat of
-- a lapsed node they were also on, which they leave too) unless a live node has them.
local function gone(n, u, at, now, out)
  local ok = on_key(u)
  if redis.call('SREM', ok, n) == 0 then return end
  local rest = redis.call('SMEMBERS', ok)
  for _, m in ipairs(rest) do
    if is_live(m, now) then return end
  end
  local last = at
  for _, m in ipairs(rest) do
    redis.call('SREM', node_key(m), u)
    local b = beat_of(m)
    if b > last then last = b end
  end
  redis.call('DEL', ok)
  redis.call('HSET', SEEN, u, ms(last))
  emit(out, u, '0', last)
end
local function add(n, u, out)
  local ok = on_key(u)
  local was = redis.call('SCARD', ok)
  redis.call('SADD', ok, n)
  redis.call('SADD', node_key(n), u)
  if was == 0 then emit(out, u, '1', 0) end
end
-- removes the node; its users go offline at `at` unless another live node has them
local function drop_node(n, at, now, out)
  local users = redis.call('SMEMBERS', node_key(n))
  redis.call('DEL', node_key(n))
  redis.call('ZREM', NODES, n)
  redis.call('HDEL', BEAT, n)
  for _, u in ipairs(users) do gone(n, u, at, now, out) end
end
-- makes `n` live for `ttl`, reaping it first if it lapsed; 1 if it joined
local function beat(n, ttl, now, out)
  local e = redis.call('ZSCORE', NODES, n)
  local joined = 1
  if e and tonumber(e) > now then
    joined = 0
  elseif e or redis.call('EXISTS', node_key(n)) == 1 then
    drop_node(n, beat_of(n), now, out)
  end
  redis.call('ZADD', NODES, ms(now + ttl), n)
  redis.call('HSET', BEAT, n, ms(now))
  return joined
end
local function extend(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
"#;

/// ARGV: prefix, node, ttl ms. Returns {joined, transitions}.
const LUA_BEAT: &str = r#"
local out = {}
local joined = beat(ARGV[2], tonumber(ARGV[3]), now_ms(), out)
return {joined, out}
"#;

/// ARGV: prefix, node, ttl ms, at ms, users... Returns transitions.
const LUA_SYNC: &str = r#"
local n, at = ARGV[2], tonumber(ARGV[4])
local now = now_ms()
local out = {}
beat(n, tonumber(ARGV[3]), now, out)
local want = {}
for i = 5, #ARGV do want[ARGV[i]] = true end
local nk = node_key(n)
for _, u in ipairs(redis.call('SMEMBERS', nk)) do
  if not want[u] then
    redis.call('SREM', nk, u)
    gone(n, u, at, now, out)
  end
end
for i = 5, #ARGV do add(n, ARGV[i], out) end
return out
"#;

/// ARGV: prefix, node, user. Returns {1, transitions}, or {0, {}} if the node is not live.
const LUA_ONLINE: &str = r#"
local n = ARGV[2]
if not is_live(n, now_ms()) then return {0, {}} end
local out = {}
add(n, ARGV[3], out)
return {1, out}
"#;

/// ARGV: prefix, node, user, at ms. Returns transitions.
const LUA_OFFLINE: &str = r#"
local n, u = ARGV[2], ARGV[3]
local out = {}
redis.call('SREM', node_key(n), u)
gone(n, u, tonumber(ARGV[4]), now_ms(), out)
return out
"#;

/// ARGV: prefix, node, at ms. Returns transitions.
const LUA_LEAVE: &str = r#"
local out = {}
drop_node(ARGV[2], tonumber(ARGV[3]), now_ms(), out)
return out
"#;

/// ARGV: prefix, batch. Returns transitions.
const LUA_REAP: &str = r#"
local now = now_ms()
local out = {}
local dead = redis.call('ZRANGEBYSCORE', NODES, '-inf', ms(now), 'LIMIT', 0, tonumber(ARGV[2]))
for _, n in ipairs(dead) do drop_node(n, beat_of(n), now, out) end
return out
"#;

/// ARGV: prefix, users... Returns "1"/"0" and last seen per user, in order.
const LUA_GET: &str = r#"
local now = now_ms()
local out = {}
for i = 2, #ARGV do
  local u = ARGV[i]
  local rest = redis.call('SMEMBERS', on_key(u))
  local online = false
  for _, m in ipairs(rest) do
    if is_live(m, now) then online = true break end
  end
  if online then
    -- The previous last seen (readers who may see last seen but not online get it).
    out[#out + 1] = '1'
    out[#out + 1] = redis.call('HGET', SEEN, u) or '0'
  else
    local last = tonumber(redis.call('HGET', SEEN, u) or '0') or 0
    for _, m in ipairs(rest) do
      local b = beat_of(m)
      if b > last then last = b end
    end
    out[#out + 1] = '0'
    out[#out + 1] = ms(last)
  end
end
return out
"#;

/// ARGV: prefix, subscriber, ttl ms, limit, targets... Returns -1 when done, else the
/// number of live subscriptions held (the limit would be exceeded; nothing changed).
const LUA_SUBSCRIBE: &str = r#"
local s, ttl, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local mine = p .. ':mysubs:' .. s
redis.call('ZREMRANGEBYSCORE', mine, '-inf', ms(now))
local held = redis.call('ZCARD', mine)
local fresh, seen = 0, {}
for i = 5, #ARGV do
  local t = ARGV[i]
  if not seen[t] then
    seen[t] = true
    if not redis.call('ZSCORE', mine, t) then fresh = fresh + 1 end
  end
end
if held + fresh > limit then return held end
local exp = ms(now + ttl)
for t, _ in pairs(seen) do
  local sk = p .. ':subs:' .. t
  redis.call('ZADD', mine, exp, t)
  redis.call('ZADD', sk, exp, s)
  extend(sk, ttl)
end
extend(mine, ttl)
return -1
"#;

/// ARGV: prefix, subscriber, targets...
const LUA_UNSUBSCRIBE: &str = r#"
local s = ARGV[2]
local mine = p .. ':mysubs:' .. s
for i = 3, #ARGV do
  redis.call('ZREM', mine, ARGV[i])
  redis.call('ZREM', p .. ':subs:' .. ARGV[i], s)
end
return 1
"#;

/// ARGV: prefix, target. Returns the live subscribers (and drops expired ones).
const LUA_SUBSCRIBERS: &str = r#"
local sk = p .. ':subs:' .. ARGV[2]
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', sk, '-inf', ms(now))
return redis.call('ZRANGEBYSCORE', sk, '(' .. ms(now), '+inf')
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_COMMON}{body}"))
}

struct Scripts {
    beat: Script,
    sync: Script,
    online: Script,
    offline: Script,
    leave: Script,
    reap: Script,
    get: Script,
    subscribe: Script,
    unsubscribe: Script,
    subscribers: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    beat: script(LUA_BEAT),
    sync: script(LUA_SYNC),
    online: script(LUA_ONLINE),
    offline: script(LUA_OFFLINE),
    leave: script(LUA_LEAVE),
    reap: script(LUA_REAP),
    get: script(LUA_GET),
    subscribe: script(LUA_SUBSCRIBE),
    unsubscribe: script(LUA_UNSUBSCRIBE),
    subscribers: script(LUA_SUBSCRIBERS),
});

/// The presence store of a cluster, in a standalone Redis. Cheap to clone (one shared,
/// self-reconnecting connection).
///
/// Every call is one Lua script (one round trip, atomic), so any number of presence
/// instances can share it: each lapsed node is reaped by exactly one script run, and
/// each transition is returned to exactly one caller. Liveness uses Redis `TIME`, so the
/// clocks of the presence instances do not matter (`at_ms` values come from the edges).
/// `<p>` is the key prefix; user ids are kept as decimal strings (Lua numbers are
/// doubles and would round ids above 2^53).
///
/// | key | type | content |
/// | --- | --- | --- |
/// | `<p>:nodes` | ZSET | node → expiry (ms since the epoch); live while expiry > now |
/// | `<p>:beat` | HASH | node → its last beat (ms) |
/// | `<p>:node:<node>` | SET | users the node holds |
/// | `<p>:on:<user>` | SET | nodes holding the user (live, or lapsed and not yet reaped) |
/// | `<p>:seen` | HASH | user → when they last went offline (ms) |
/// | `<p>:subs:<target>` | ZSET | subscriber → lease expiry (ms) |
/// | `<p>:mysubs:<subscriber>` | ZSET | target → lease expiry (ms), for the limit |
///
/// The bookkeeping is that of [`crate::MemoryPresence`] (see there): a user is
/// reported online while `<p>:on:<user>` is not empty and reads as online while a live
/// node is in it. Subscription sets carry a key TTL (extended to the longest lease), so
/// a user nobody subscribes to any more costs nothing; expired members are dropped when
/// their set is next touched.
///
/// The scripts touch keys they compute (not only those passed as `KEYS`): they need a
/// standalone Redis (or Sentinel), not Redis Cluster. A node's users are handled in one
/// script when it leaves or is reaped (Redis is busy for roughly a microsecond or two per
/// user); [`reap`](PresenceStore::reap) takes at most [`REAP_BATCH`] nodes per call.
/// Without persistence a restarted Redis starts empty: every beat answers `joined`, the
/// edges sync, and their users come back online (no offline is reported for users who
/// were online before the restart and are gone since).
#[derive(Clone)]
pub struct RedisPresence {
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
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

fn malformed(op: &str, detail: impl std::fmt::Display) -> PresenceError {
    PresenceError::Malformed(format!("redis {op}: {detail}"))
}

fn parse_u64(op: &str, s: &str) -> Result<u64, PresenceError> {
    s.parse()
        .map_err(|_| malformed(op, format_args!("`{s}` is not a number")))
}

/// Transitions from a script's flat `user, online, last_seen` triples.
fn transitions(op: &str, flat: &[String]) -> Result<Vec<Transition>, PresenceError> {
    let rows = flat.chunks_exact(3);
    if !rows.remainder().is_empty() {
        return Err(malformed(
            op,
            format_args!("{} fields, not a multiple of 3", flat.len()),
        ));
    }
    let mut out = rows
        .map(|row| {
            Ok(Transition {
                user: UserId(parse_u64(op, &row[0])?),
                online: row[1] == "1",
                last_seen_ms: parse_u64(op, &row[2])?,
            })
        })
        .collect::<Result<Vec<_>, PresenceError>>()?;
    sort_transitions(&mut out);
    Ok(out)
}

fn ids(users: &[UserId]) -> Vec<String> {
    users.iter().map(|u| u.0.to_string()).collect()
}

impl RedisPresence {
    /// Connects to Redis at `url` (`redis://[:password@]host:port[/db]`), keys under
    /// `prefix`, every call (and connecting) bounded by `timeout`. The connection
    /// reconnects by itself; calls fail with `Unavailable` while Redis is away.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisPresence, PresenceError> {
        if prefix.is_empty() || prefix.chars().any(char::is_control) {
            return Err(PresenceError::Invalid {
                what: "key prefix",
                why: "it is empty or contains a control character".into(),
            });
        }
        if timeout.is_zero() {
            return Err(PresenceError::Invalid {
                what: "timeout",
                why: "it is zero".into(),
            });
        }
        let addr = redact(url);
        let client = redis::Client::open(url).map_err(|e| {
            PresenceError::Unavailable(format!("cannot connect to redis at {addr}: {e}"))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_max_delay(Duration::from_millis(500));
        let conn =
            match tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
                .await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    return Err(PresenceError::Unavailable(format!(
                        "cannot connect to redis at {addr}: {e}"
                    )));
                }
                Err(_) => {
                    return Err(PresenceError::Unavailable(format!(
                        "connecting to redis at {addr} timed out after {timeout:?}"
                    )));
                }
            };
        Ok(RedisPresence {
            conn,
            prefix: Arc::from(prefix),
            timeout,
        })
    }

    /// Runs one script (EVALSHA; loaded again after a Redis restart) within the timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        args: &[&str],
        more: &[String],
    ) -> Result<T, PresenceError> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&*self.prefix);
        for a in args {
            invocation.arg(*a);
        }
        for a in more {
            invocation.arg(a.as_str());
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(PresenceError::Unavailable(format!(
                "redis {op} failed: {e}"
            ))),
            Err(_) => Err(PresenceError::Unavailable(format!(
                "redis {op} timed out after {:?}",
                self.timeout
            ))),
        }
    }
}

#[async_trait::async_trait]
impl PresenceStore for RedisPresence {
    async fn beat(&self, node: &str, ttl: Duration) -> Result<Beat, PresenceError> {
        check_node(node)?;
        let ttl = check_ttl("heartbeat ttl", ttl)?.to_string();
        let (joined, flat): (i64, Vec<String>) =
            self.run("beat", &SCRIPTS.beat, &[node, &ttl], &[]).await?;
        Ok(Beat {
            joined: joined == 1,
            transitions: transitions("beat", &flat)?,
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
        check_at(at_ms)?;
        let ttl = check_ttl("heartbeat ttl", ttl)?.to_string();
        let at = at_ms.to_string();
        let flat: Vec<String> = self
            .run("sync", &SCRIPTS.sync, &[node, &ttl, &at], &ids(users))
            .await?;
        transitions("sync", &flat)
    }

    async fn online(&self, node: &str, user: UserId) -> Result<Option<Transition>, PresenceError> {
        check_node(node)?;
        let u = user.0.to_string();
        let (live, flat): (i64, Vec<String>) = self
            .run("online", &SCRIPTS.online, &[node, &u], &[])
            .await?;
        if live != 1 {
            return Err(PresenceError::NodeNotLive(node.to_owned()));
        }
        Ok(transitions("online", &flat)?.pop())
    }

    async fn offline(
        &self,
        node: &str,
        user: UserId,
        at_ms: u64,
    ) -> Result<Option<Transition>, PresenceError> {
        check_node(node)?;
        check_at(at_ms)?;
        let (u, at) = (user.0.to_string(), at_ms.to_string());
        let flat: Vec<String> = self
            .run("offline", &SCRIPTS.offline, &[node, &u, &at], &[])
            .await?;
        Ok(transitions("offline", &flat)?.pop())
    }

    async fn leave(&self, node: &str, at_ms: u64) -> Result<Vec<Transition>, PresenceError> {
        check_node(node)?;
        check_at(at_ms)?;
        let at = at_ms.to_string();
        let flat: Vec<String> = self.run("leave", &SCRIPTS.leave, &[node, &at], &[]).await?;
        transitions("leave", &flat)
    }

    async fn reap(&self) -> Result<Vec<Transition>, PresenceError> {
        let batch = REAP_BATCH.to_string();
        let flat: Vec<String> = self.run("reap", &SCRIPTS.reap, &[&batch], &[]).await?;
        transitions("reap", &flat)
    }

    async fn get(&self, users: &[UserId]) -> Result<Vec<Presence>, PresenceError> {
        const OP: &str = "get";
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<String> = self.run(OP, &SCRIPTS.get, &[], &ids(users)).await?;
        if flat.len() != users.len() * 2 {
            return Err(malformed(
                OP,
                format_args!("{} fields for {} users", flat.len(), users.len()),
            ));
        }
        users
            .iter()
            .zip(flat.chunks_exact(2))
            .map(|(&user, row)| {
                Ok(Presence {
                    user,
                    online: row[0] == "1",
                    last_seen_ms: parse_u64(OP, &row[1])?,
                })
            })
            .collect()
    }

    async fn subscribe(
        &self,
        subscriber: UserId,
        targets: &[UserId],
        ttl: Duration,
        limit: u32,
    ) -> Result<(), PresenceError> {
        let ttl = check_ttl("subscription ttl", ttl)?.to_string();
        if targets.is_empty() {
            return Ok(());
        }
        let (s, l) = (subscriber.0.to_string(), limit.to_string());
        let held: i64 = self
            .run(
                "subscribe",
                &SCRIPTS.subscribe,
                &[&s, &ttl, &l],
                &ids(targets),
            )
            .await?;
        if held < 0 {
            return Ok(());
        }
        Err(PresenceError::Invalid {
            what: SUBSCRIPTION_LIMIT,
            why: format!("{held} subscriptions held, more would exceed the limit of {limit}"),
        })
    }

    async fn unsubscribe(
        &self,
        subscriber: UserId,
        targets: &[UserId],
    ) -> Result<(), PresenceError> {
        if targets.is_empty() {
            return Ok(());
        }
        let s = subscriber.0.to_string();
        let _: i64 = self
            .run("unsubscribe", &SCRIPTS.unsubscribe, &[&s], &ids(targets))
            .await?;
        Ok(())
    }

    async fn subscribers(&self, target: UserId) -> Result<Vec<UserId>, PresenceError> {
        const OP: &str = "subscribers";
        let t = target.0.to_string();
        let flat: Vec<String> = self.run(OP, &SCRIPTS.subscribers, &[&t], &[]).await?;
        let mut out = flat
            .iter()
            .map(|s| parse_u64(OP, s).map(UserId))
            .collect::<Result<Vec<_>, PresenceError>>()?;
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact("redis://:secret@h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn transitions_parse() {
        let flat: Vec<String> = ["7", "0", "1000", "3", "1", "0"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let t = transitions("t", &flat).expect("parses");
        assert_eq!(t[0].user, UserId(3));
        assert!(t[0].online);
        assert_eq!(
            (t[1].user, t[1].online, t[1].last_seen_ms),
            (UserId(7), false, 1000)
        );
        assert!(transitions("t", &flat[..2]).is_err());
    }
}
