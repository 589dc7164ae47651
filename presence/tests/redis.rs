//! The conformance checks on [`RedisPresence`] against a real `redis-server`
//! (natter-testkit; a missing binary fails with the command that installs it), plus
//! Redis-only checks.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use natter_presence::{PresenceError, PresenceStore, RedisPresence, conformance};
use natter_proto::UserId;
use natter_testkit::RedisServer;

const TIMEOUT: Duration = Duration::from_secs(2);

async fn start_redis() -> RedisServer {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("starting redis-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_conforms() {
    let server = start_redis().await;
    let url = server.url();
    // Two connections to one Redis and prefix: the checks that reap concurrently use both.
    let a = Arc::new(
        RedisPresence::connect(&url, "natter:presence:test", TIMEOUT)
            .await
            .expect("connect"),
    );
    let b = Arc::new(
        RedisPresence::connect(&url, "natter:presence:test", TIMEOUT)
            .await
            .expect("connect"),
    );
    let flip = std::sync::atomic::AtomicBool::new(false);
    conformance::run_all(|| -> Arc<dyn PresenceStore> {
        if flip.fetch_xor(true, std::sync::atomic::Ordering::Relaxed) {
            b.clone()
        } else {
            a.clone()
        }
    })
    .await;
}

#[tokio::test]
async fn redis_ids_above_2_pow_53_stay_exact() {
    let server = start_redis().await;
    let store = RedisPresence::connect(&server.url(), "natter:big", TIMEOUT)
        .await
        .expect("connect");
    let (u, s) = (UserId(u64::MAX), UserId(u64::MAX - 1));
    store
        .beat("n", Duration::from_secs(60))
        .await
        .expect("beat");
    let t = store
        .online("n", u)
        .await
        .expect("online")
        .expect("changed");
    assert_eq!(t.user, u);
    store
        .subscribe(s, &[u], Duration::from_secs(60), 10)
        .await
        .expect("subscribe");
    assert_eq!(store.subscribers(u).await.expect("subs"), vec![s]);
    let got = store.get(&[u]).await.expect("get");
    assert!(got[0].online);
}

#[tokio::test]
async fn redis_unreachable_is_unavailable_and_bounded() {
    let started = Instant::now();
    let e = RedisPresence::connect("redis://:hunter2@127.0.0.1:1", "natter:x", TIMEOUT)
        .await
        .expect_err("nothing listens there");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(e, PresenceError::Unavailable(_)), "{e:?}");
    assert!(
        !e.to_string().contains("hunter2"),
        "the password leaked: {e}"
    );

    let mut server = start_redis().await;
    let store = RedisPresence::connect(&server.url(), "natter:down", TIMEOUT)
        .await
        .expect("connect");
    store
        .beat("n", Duration::from_secs(60))
        .await
        .expect("beat");
    let server = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    })
    .await
    .expect("kill");
    let started = Instant::now();
    let e = store.reap().await.expect_err("redis is down");
    assert!(matches!(e, PresenceError::Unavailable(_)), "{e:?}");
    assert!(started.elapsed() < TIMEOUT + Duration::from_secs(1));
    drop(server);
}
