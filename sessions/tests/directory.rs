//! The session directory: one set of conformance checks run on [`MemoryDirectory`] and on
//! [`RedisDirectory`] against a real `redis-server` (natter-testkit), plus Redis-only
//! checks (restart, reclaiming a dead node's storage, connect errors).
//!
//! Timing checks use short TTLs and poll with deadlines; no sleep is an assertion.

use std::{
    future::Future,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use natter_proto::{DeviceId, UserId};
use natter_sessions::directory::{
    DeviceLocation, DirectoryError, Heartbeat, MemoryDirectory, RedisDirectory, SessionDirectory,
};
use natter_testkit::RedisServer;

/// A TTL that does not run out during a test.
const LONG: Duration = Duration::from_secs(60);
/// A TTL that runs out during a test.
const SHORT: Duration = Duration::from_millis(300);
/// How long a poll waits for something that should happen.
const DEADLINE: Duration = Duration::from_secs(5);

const U1: UserId = UserId(101);
const U2: UserId = UserId(102);
const D1: DeviceId = DeviceId(11);
const D2: DeviceId = DeviceId(12);
const D3: DeviceId = DeviceId(13);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Polls `check` until it returns true or `DEADLINE` passes; returns how long it took.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// (device, node, connection) of the user's devices.
async fn where_is(dir: &dyn SessionDirectory, user: UserId) -> Vec<(DeviceId, String, u64)> {
    dir.devices(user)
        .await
        .expect("devices")
        .into_iter()
        .map(|l| (l.device, l.node, l.connection))
        .collect()
}

fn at(device: DeviceId, node: &str, connection: u64) -> (DeviceId, String, u64) {
    (device, node.to_owned(), connection)
}

async fn node_names(dir: &dyn SessionDirectory) -> Vec<String> {
    dir.nodes()
        .await
        .expect("nodes")
        .into_iter()
        .map(|n| n.node)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Conformance checks (every implementation)
// ---------------------------------------------------------------------------------------

async fn register_and_list(dir: &dyn SessionDirectory) {
    let before = now_ms();
    assert_eq!(
        dir.heartbeat("n1", LONG).await.expect("hb"),
        Heartbeat::Joined
    );
    assert_eq!(
        dir.heartbeat("n1", LONG).await.expect("hb"),
        Heartbeat::Renewed
    );
    dir.register("n1", U1, D1, 1).await.expect("register");
    dir.register("n1", U1, D2, 2).await.expect("register");
    dir.register("n1", U2, D3, 3).await.expect("register");
    // A retried registration changes nothing, not even the time.
    let first = dir.devices(U1).await.expect("devices");
    dir.register("n1", U1, D1, 1).await.expect("register again");
    assert_eq!(dir.devices(U1).await.expect("devices"), first);

    assert_eq!(
        where_is(dir, U1).await,
        vec![at(D1, "n1", 1), at(D2, "n1", 2)]
    );
    assert_eq!(where_is(dir, U2).await, vec![at(D3, "n1", 3)]);
    assert!(where_is(dir, UserId(999)).await.is_empty());
    for DeviceLocation {
        connected_at_ms, ..
    } in &first
    {
        // Redis stamps with its own clock; on one machine it agrees with ours.
        assert!(
            (before.saturating_sub(1000)..=now_ms() + 1000).contains(connected_at_ms),
            "connected_at_ms {connected_at_ms} not near {before}"
        );
    }

    assert_eq!(
        dir.connections("n1").await.expect("connections"),
        vec![(U1, D1), (U1, D2), (U2, D3)]
    );
    assert!(
        dir.connections("elsewhere")
            .await
            .expect("connections")
            .is_empty()
    );
    let nodes = dir.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].node, "n1");
    assert_eq!(nodes[0].connections, 3);
    assert!(nodes[0].last_heartbeat_ms >= before.saturating_sub(1000));
    assert!(nodes[0].expires_at_ms >= nodes[0].last_heartbeat_ms + LONG.as_millis() as u64);

    dir.unregister("n1", U1, D2, 2).await.expect("unregister");
    assert_eq!(where_is(dir, U1).await, vec![at(D1, "n1", 1)]);
    assert_eq!(dir.nodes().await.expect("nodes")[0].connections, 2);
    // Unregistering what is not there is fine.
    dir.unregister("n1", U1, D2, 2)
        .await
        .expect("unregister twice");
    dir.unregister("n1", UserId(999), D1, 1)
        .await
        .expect("unknown user");
}

async fn newer_connection_wins(dir: &dyn SessionDirectory) {
    dir.heartbeat("n1", LONG).await.expect("hb n1");
    dir.heartbeat("n2", LONG).await.expect("hb n2");
    dir.register("n1", U1, D1, 1).await.expect("register");
    // The device reconnects on the same node before the old connection is noticed closed.
    dir.register("n1", U1, D1, 2).await.expect("register again");
    dir.unregister("n1", U1, D1, 1)
        .await
        .expect("late unregister");
    assert_eq!(where_is(dir, U1).await, vec![at(D1, "n1", 2)]);
    assert_eq!(dir.connections("n1").await.expect("conns"), vec![(U1, D1)]);

    // It moves to another node (connection ids are per node, so 2 again on purpose).
    dir.register("n2", U1, D1, 2).await.expect("register on n2");
    assert_eq!(where_is(dir, U1).await, vec![at(D1, "n2", 2)]);
    assert!(dir.connections("n1").await.expect("conns").is_empty());
    assert_eq!(dir.connections("n2").await.expect("conns"), vec![(U1, D1)]);
    dir.unregister("n1", U1, D1, 2)
        .await
        .expect("late unregister on n1");
    assert_eq!(where_is(dir, U1).await, vec![at(D1, "n2", 2)]);

    dir.unregister("n2", U1, D1, 2).await.expect("unregister");
    assert!(where_is(dir, U1).await.is_empty());
    assert!(dir.connections("n2").await.expect("conns").is_empty());
}

async fn devices_on_two_nodes(dir: &dyn SessionDirectory) {
    dir.heartbeat("n1", LONG).await.expect("hb n1");
    dir.heartbeat("n2", LONG).await.expect("hb n2");
    dir.register("n1", U1, D1, 7).await.expect("register");
    dir.register("n2", U1, D2, 7).await.expect("register");
    dir.register("n2", U2, D3, 8).await.expect("register");
    assert_eq!(
        where_is(dir, U1).await,
        vec![at(D1, "n1", 7), at(D2, "n2", 7)]
    );
    let nodes = dir.nodes().await.expect("nodes");
    let counts: Vec<(&str, u64)> = nodes
        .iter()
        .map(|n| (n.node.as_str(), n.connections))
        .collect();
    assert_eq!(counts, vec![("n1", 1), ("n2", 2)]);
    // The same connection id on two nodes are two connections.
    dir.unregister("n1", U1, D1, 7).await.expect("unregister");
    assert_eq!(where_is(dir, U1).await, vec![at(D2, "n2", 7)]);
}

async fn remove_node(dir: &dyn SessionDirectory) {
    dir.heartbeat("n1", LONG).await.expect("hb n1");
    dir.heartbeat("n2", LONG).await.expect("hb n2");
    dir.register("n1", U1, D1, 1).await.expect("register");
    dir.register("n1", U2, D3, 2).await.expect("register");
    dir.register("n2", U1, D2, 1).await.expect("register");

    dir.remove_node("n1").await.expect("remove");
    assert_eq!(where_is(dir, U1).await, vec![at(D2, "n2", 1)]);
    assert!(where_is(dir, U2).await.is_empty());
    assert!(dir.connections("n1").await.expect("conns").is_empty());
    assert_eq!(node_names(dir).await, vec!["n2"]);
    assert!(matches!(
        dir.register("n1", U1, D1, 3).await,
        Err(DirectoryError::NodeNotLive(n)) if n == "n1"
    ));
    // Removing twice, or an unknown node, is fine.
    dir.remove_node("n1").await.expect("remove twice");
    dir.remove_node("never").await.expect("remove unknown");

    // Coming back starts empty: the old entries stay gone.
    assert_eq!(
        dir.heartbeat("n1", LONG).await.expect("hb"),
        Heartbeat::Joined
    );
    assert!(dir.connections("n1").await.expect("conns").is_empty());
    assert!(where_is(dir, U2).await.is_empty());
    dir.register("n1", U2, D3, 9)
        .await
        .expect("register after rejoin");
    assert_eq!(where_is(dir, U2).await, vec![at(D3, "n1", 9)]);
}

async fn register_needs_a_live_node(dir: &dyn SessionDirectory) {
    let e = dir
        .register("fresh", U1, D1, 1)
        .await
        .expect_err("never heartbeated");
    assert!(matches!(&e, DirectoryError::NodeNotLive(n) if n == "fresh"));
    assert_eq!(
        e.to_string(),
        "session directory: node `fresh` is not live (heartbeat it before registering)"
    );
    assert!(!e.is_unavailable());
    assert!(where_is(dir, U1).await.is_empty());
    assert!(node_names(dir).await.is_empty());
}

async fn bad_input_is_refused(dir: &dyn SessionDirectory) {
    for node in ["", "a|b", "a\nb"] {
        let e = dir.heartbeat(node, LONG).await.expect_err("bad node name");
        assert!(matches!(
            e,
            DirectoryError::Invalid {
                what: "node name",
                ..
            }
        ));
        assert!(dir.register(node, U1, D1, 1).await.is_err());
        assert!(dir.connections(node).await.is_err());
    }
    for ttl in [Duration::ZERO, Duration::from_secs(365 * 24 * 3600)] {
        let e = dir.heartbeat("n1", ttl).await.expect_err("bad ttl");
        assert!(
            e.to_string()
                .starts_with("session directory: invalid heartbeat ttl"),
            "{e}"
        );
    }
    assert!(node_names(dir).await.is_empty());
}

async fn lapsed_node_disappears(dir: &dyn SessionDirectory) {
    dir.heartbeat("steady", LONG).await.expect("hb steady");
    dir.register("steady", U1, D2, 1).await.expect("register");

    let started = Instant::now();
    dir.heartbeat("doomed", SHORT).await.expect("hb doomed");
    dir.heartbeat("kept", SHORT).await.expect("hb kept");
    dir.register("doomed", U1, D1, 1).await.expect("register");
    dir.register("kept", U2, D3, 1).await.expect("register");
    assert_eq!(
        where_is(dir, U1).await,
        vec![at(D1, "doomed", 1), at(D2, "steady", 1)]
    );

    // "kept" heartbeats every TTL/3 as an edge does; "doomed" stops (it crashed).
    eventually("the lapsed node's device disappears", || async move {
        assert_eq!(
            dir.heartbeat("kept", SHORT).await.expect("hb kept"),
            Heartbeat::Renewed,
            "a node heartbeating every ttl/3 lapsed"
        );
        let gone = where_is(dir, U1).await == vec![at(D2, "steady", 1)];
        if !gone {
            tokio::time::sleep(SHORT / 3 - Duration::from_millis(25)).await;
        }
        gone
    })
    .await;
    // It cannot be gone before its TTL ran out (50 ms of slack for Redis's clock).
    let took = started.elapsed();
    assert!(
        took + Duration::from_millis(50) >= SHORT,
        "gone after {took:?}, before its TTL"
    );
    // Meanwhile "kept" stayed, through several of its TTLs.
    for _ in 0..4 {
        assert_eq!(
            dir.heartbeat("kept", SHORT).await.expect("hb kept"),
            Heartbeat::Renewed
        );
        assert_eq!(where_is(dir, U2).await, vec![at(D3, "kept", 1)]);
        tokio::time::sleep(SHORT / 3).await;
    }
    assert_eq!(
        dir.heartbeat("kept", LONG).await.expect("hb kept"),
        Heartbeat::Renewed
    );

    assert_eq!(node_names(dir).await, vec!["kept", "steady"]);
    assert!(dir.connections("doomed").await.expect("conns").is_empty());
    assert!(matches!(
        dir.register("doomed", U1, D1, 2).await,
        Err(DirectoryError::NodeNotLive(_))
    ));
    // The crashed edge comes back: it starts empty, its old device does not reappear.
    assert_eq!(
        dir.heartbeat("doomed", LONG).await.expect("hb"),
        Heartbeat::Joined
    );
    assert_eq!(where_is(dir, U1).await, vec![at(D2, "steady", 1)]);
    assert!(dir.connections("doomed").await.expect("conns").is_empty());
}

async fn many_concurrent_connections(dir: &dyn SessionDirectory) {
    dir.heartbeat("n1", LONG).await.expect("hb n1");
    dir.heartbeat("n2", LONG).await.expect("hb n2");
    let calls = (1..=400u64).map(|i| {
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        dir.register(node, UserId(1000 + i / 4), DeviceId(i), i)
    });
    for r in futures::future::join_all(calls).await {
        r.expect("register");
    }
    let counts: Vec<u64> = dir
        .nodes()
        .await
        .expect("nodes")
        .iter()
        .map(|n| n.connections)
        .collect();
    assert_eq!(counts, vec![200, 200]);
    assert_eq!(dir.devices(UserId(1010)).await.expect("devices").len(), 4);
    let calls = (1..=400u64).filter(|i| i % 4 != 0).map(|i| {
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        dir.unregister(node, UserId(1000 + i / 4), DeviceId(i), i)
    });
    for r in futures::future::join_all(calls).await {
        r.expect("unregister");
    }
    assert_eq!(dir.connections("n1").await.expect("conns").len(), 100);
    assert!(dir.connections("n2").await.expect("conns").is_empty());
    assert_eq!(
        where_is(dir, UserId(1010)).await,
        vec![at(DeviceId(40), "n1", 40)]
    );
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod on_memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(&MemoryDirectory::new()).await;
                }
            )*
        }
        mod on_redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let server = start_redis().await;
                    let dir = RedisDirectory::connect(&server.url(), "natter:test")
                        .await
                        .expect("connect");
                    super::$check(&dir).await;
                }
            )*
        }
    };
}

conformance!(
    register_and_list,
    newer_connection_wins,
    devices_on_two_nodes,
    remove_node,
    register_needs_a_live_node,
    bad_input_is_refused,
    lapsed_node_disappears,
    many_concurrent_connections,
);

// ---------------------------------------------------------------------------------------
// Redis only
// ---------------------------------------------------------------------------------------

async fn start_redis() -> RedisServer {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("starting redis-server")
}

/// Every key under `prefix`, sorted.
async fn keys(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}

#[tokio::test]
async fn redis_restart_is_survived_without_rebuilding() {
    let mut server = start_redis().await;
    let dir = RedisDirectory::connect(&server.url(), "natter:test")
        .await
        .expect("connect");
    dir.heartbeat("n1", LONG).await.expect("hb");
    dir.register("n1", U1, D1, 1).await.expect("register");

    server.kill();
    let started = Instant::now();
    let e = dir.devices(U1).await.expect_err("redis is down");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a call took {:?} while redis was down",
        started.elapsed()
    );
    assert!(e.is_unavailable(), "{e}");
    assert!(
        e.to_string()
            .starts_with("session directory: redis devices "),
        "{e}"
    );
    // Still bounded while the manager is retrying in the background.
    let started = Instant::now();
    assert!(dir.register("n1", U1, D2, 2).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restarting redis-server");

    // The same directory value works again (the AOF kept the data; the scripts are
    // loaded again by themselves).
    let d = &dir;
    eventually("calls succeed after the restart", || async move {
        d.devices(U1).await.is_ok()
    })
    .await;
    assert_eq!(where_is(&dir, U1).await, vec![at(D1, "n1", 1)]);
    assert_eq!(
        dir.heartbeat("n1", LONG).await.expect("hb"),
        Heartbeat::Renewed
    );
    dir.register("n1", U1, D2, 2).await.expect("register");
    dir.unregister("n1", U1, D1, 1).await.expect("unregister");
    assert_eq!(where_is(&dir, U1).await, vec![at(D2, "n1", 2)]);
    drop(server);
}

#[tokio::test]
async fn redis_reclaims_a_dead_nodes_storage() {
    let server = start_redis().await;
    let url = server.url();
    let dir = RedisDirectory::connect(&url, "natter:reap")
        .await
        .expect("connect");
    dir.heartbeat("steady", LONG).await.expect("hb");
    dir.heartbeat("doomed", SHORT).await.expect("hb");
    dir.heartbeat("removed", LONG).await.expect("hb");
    for i in 1..=50u64 {
        dir.register("doomed", UserId(i), DeviceId(i), i)
            .await
            .expect("register");
        dir.register("removed", UserId(100 + i), DeviceId(i), i)
            .await
            .expect("register");
    }
    dir.register("steady", UserId(1), DeviceId(99), 1)
        .await
        .expect("register");
    dir.remove_node("removed").await.expect("remove");

    // Nothing but the live node's entries is left once it has heartbeated after the
    // other's TTL: no user hash, no connection hash, no queue of the dead.
    let expected: Vec<String> = ["beat", "conns:1", "gen", "genseq", "nodes", "user:1"]
        .iter()
        .map(|k| format!("natter:reap:{k}"))
        .collect();
    let (d, url, expected) = (&dir, &url, &expected);
    eventually("the dead nodes' keys are deleted", || async move {
        d.heartbeat("steady", LONG).await.expect("hb");
        keys(url, "natter:reap").await == *expected
    })
    .await;
    assert_eq!(
        where_is(&dir, UserId(1)).await,
        vec![at(DeviceId(99), "steady", 1)]
    );
}

#[tokio::test]
async fn redis_connect_errors_are_bounded_and_clean() {
    // Nothing listens on port 1.
    let started = Instant::now();
    let e = RedisDirectory::connect("redis://:hunter2@127.0.0.1:1", "natter:test")
        .await
        .expect_err("nothing listens there");
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = e.to_string();
    assert!(text.starts_with("session directory: "), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
    assert!(e.is_unavailable());

    let e = RedisDirectory::connect("not a url", "natter:test")
        .await
        .expect_err("not a url");
    assert!(e.to_string().starts_with("session directory: "), "{e}");
    let e = RedisDirectory::connect("redis://127.0.0.1:1", "")
        .await
        .expect_err("empty prefix");
    assert!(matches!(
        e,
        DirectoryError::Invalid {
            what: "key prefix",
            ..
        }
    ));
}

#[tokio::test]
async fn redis_dead_entries_stay_dead_while_reclaiming_lags() {
    let server = start_redis().await;
    let dir = RedisDirectory::connect(&server.url(), "natter:lag")
        .await
        .expect("connect");
    dir.heartbeat("doomed", LONG).await.expect("hb");
    // More entries than two calls reclaim (each deletes a bounded batch).
    let users = 1..=2500u64;
    let calls = users
        .clone()
        .map(|i| dir.register("doomed", UserId(i), DeviceId(i), i));
    for r in futures::future::join_all(calls).await {
        r.expect("register");
    }
    dir.remove_node("doomed").await.expect("remove");
    assert_eq!(
        dir.heartbeat("doomed", LONG).await.expect("hb"),
        Heartbeat::Joined
    );
    let url = server.url();
    assert!(
        keys(&url, "natter:lag:user").await.len() > 100,
        "the test needs entries that are not reclaimed yet"
    );
    // The new incarnation does not see the old one's entries, stored or not.
    assert!(dir.connections("doomed").await.expect("conns").is_empty());
    assert_eq!(dir.nodes().await.expect("nodes")[0].connections, 0);
    for i in users {
        assert!(where_is(&dir, UserId(i)).await.is_empty(), "user {i}");
    }
    // ... and the readers deleted what they met.
    assert!(keys(&url, "natter:lag:user").await.is_empty());
    dir.register("doomed", UserId(7), DeviceId(7), 7)
        .await
        .expect("register");
    assert_eq!(
        where_is(&dir, UserId(7)).await,
        vec![at(DeviceId(7), "doomed", 7)]
    );
}

#[tokio::test]
async fn redis_lazy_directory_works_once_redis_is_up() {
    let mut server = start_redis().await;
    let url = server.url();
    let stopped = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    })
    .await
    .expect("kill");
    // Created while Redis is down: no error yet; calls fail (bounded) until it is up.
    let dir = RedisDirectory::connect_lazy(&url, "natter:lazy").expect("lazy");
    let started = Instant::now();
    let e = dir.nodes().await.expect_err("redis is down");
    assert!(e.is_unavailable(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let _server = tokio::task::spawn_blocking(move || {
        let mut server = stopped;
        server.restart();
        server
    })
    .await
    .expect("restart");
    eventually("the lazy directory to reach redis", || {
        let dir = &dir;
        async move { dir.heartbeat("n1", LONG).await.is_ok() }
    })
    .await;
    dir.register("n1", UserId(1), DeviceId(2), 3)
        .await
        .expect("register");
    assert_eq!(dir.devices(UserId(1)).await.expect("devices").len(), 1);
    assert!(matches!(
        RedisDirectory::connect_lazy(&url, ""),
        Err(DirectoryError::Invalid { .. })
    ));
}
