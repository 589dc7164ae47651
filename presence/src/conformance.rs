//! The checks every [`PresenceStore`] must pass, one per rule of the model (see the
//! trait's documentation). `tests/memory.rs` runs them on [`crate::MemoryPresence`],
//! `tests/redis.rs` on [`crate::RedisPresence`] against a real `redis-server`.
//!
//! Users and node names are random, so stores may share their backing state (one Redis,
//! one prefix) with other tests; reaps filter for the users a check owns. Timing checks
//! use short TTLs with margins and poll with deadlines.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use natter_proto::UserId;
use rand::Rng as _;

use crate::{
    memory::{SUBSCRIPTION_LIMIT, unix_ms},
    store::{Presence, PresenceError, PresenceStore, Transition},
};

/// A TTL that does not run out during a check.
const LONG: Duration = Duration::from_secs(60);
/// A TTL that runs out during a check.
const SHORT: Duration = Duration::from_millis(500);
/// Longer than [`SHORT`], with a margin.
const PAST_SHORT: Duration = Duration::from_millis(700);

/// Runs every check, one after the other; panics on the first that fails. `make`
/// returns a handle on one shared state each time (the same `Arc`, or a new connection
/// to the same Redis and prefix): the concurrent-reap check uses two of them.
pub async fn run_all(make: impl Fn() -> Arc<dyn PresenceStore>) {
    online_and_offline_once_per_change(&*make()).await;
    online_needs_a_live_node(&*make()).await;
    two_nodes_hold_one_user(&*make()).await;
    sync_makes_the_node_hold_exactly_its_users(&*make()).await;
    leave_takes_the_users_offline(&*make()).await;
    lapsed_node_is_reaped_once(make(), make()).await;
    beat_of_a_lapsed_node_reaps_and_rejoins(&*make()).await;
    lapsed_node_reads_offline_before_reaping(&*make()).await;
    get_keeps_order_and_last_seen(&*make()).await;
    subscriptions_are_leases(&*make()).await;
    subscription_limit(&*make()).await;
    arguments_are_checked(&*make()).await;
}

fn user() -> UserId {
    UserId(rand::rng().random_range(1..=u64::MAX))
}

fn node() -> String {
    format!("edge-{:016x}", rand::rng().random::<u64>())
}

fn on(user: UserId) -> Transition {
    Transition {
        user,
        online: true,
        last_seen_ms: 0,
    }
}

fn off(user: UserId, at_ms: u64) -> Transition {
    Transition {
        user,
        online: false,
        last_seen_ms: at_ms,
    }
}

fn sorted(mut t: Vec<Transition>) -> Vec<Transition> {
    t.sort_by_key(|t| t.user);
    t
}

fn sorted_users(mut u: Vec<UserId>) -> Vec<UserId> {
    u.sort_unstable();
    u
}

async fn presence(store: &dyn PresenceStore, user: UserId) -> Presence {
    let mut all = store.get(&[user]).await.expect("get");
    assert_eq!(all.len(), 1);
    all.remove(0)
}

async fn is_online(store: &dyn PresenceStore, user: UserId) -> bool {
    presence(store, user).await.online
}

/// Asserts `ms` is the time of a beat sent between `before` and `after` (both local ms;
/// Redis stamps with its own clock, which on one machine agrees within a margin).
fn assert_near(ms: u64, before: u64, after: u64) {
    assert!(
        (before.saturating_sub(1000)..=after + 1000).contains(&ms),
        "{ms} is not between {before} and {after}"
    );
}

async fn online_and_offline_once_per_change(store: &dyn PresenceStore) {
    let (n, u) = (node(), user());
    let b = store.beat(&n, LONG).await.expect("beat");
    assert!(b.joined, "a first beat joins");
    assert!(b.transitions.is_empty());
    let b = store.beat(&n, LONG).await.expect("beat");
    assert!(!b.joined, "a live node's beat renews");

    assert!(!is_online(store, u).await);
    assert_eq!(store.online(&n, u).await.expect("online"), Some(on(u)));
    assert_eq!(store.online(&n, u).await.expect("online again"), None);
    assert!(is_online(store, u).await);

    let at = unix_ms();
    assert_eq!(
        store.offline(&n, u, at).await.expect("offline"),
        Some(off(u, at))
    );
    assert_eq!(store.offline(&n, u, at + 5).await.expect("again"), None);
    assert_eq!(
        presence(store, u).await,
        Presence {
            user: u,
            online: false,
            last_seen_ms: at
        }
    );
    // Back online, then offline again: each change once more.
    assert_eq!(store.online(&n, u).await.expect("online"), Some(on(u)));
    assert_eq!(
        presence(store, u).await.last_seen_ms,
        at,
        "online: the previous last seen"
    );
    assert_eq!(
        store.offline(&n, u, at + 10).await.expect("offline"),
        Some(off(u, at + 10))
    );
    // Offline for a user the node never had, or a node that never beat: nothing.
    assert_eq!(store.offline(&n, user(), at).await.expect("no-op"), None);
    assert_eq!(store.offline(&node(), u, at).await.expect("no-op"), None);
    store.leave(&n, at).await.expect("leave");
}

async fn online_needs_a_live_node(store: &dyn PresenceStore) {
    let (n, u) = (node(), user());
    match store.online(&n, u).await {
        Err(PresenceError::NodeNotLive(name)) => assert_eq!(name, n),
        other => panic!("online before beat: {other:?}"),
    }
    assert!(
        !is_online(store, u).await,
        "a refused online changes nothing"
    );
    store.beat(&n, LONG).await.expect("beat");
    assert_eq!(store.online(&n, u).await.expect("online"), Some(on(u)));
    store.leave(&n, unix_ms()).await.expect("leave");
    assert!(matches!(
        store.online(&n, u).await,
        Err(PresenceError::NodeNotLive(_))
    ));
}

async fn two_nodes_hold_one_user(store: &dyn PresenceStore) {
    let (a, b, u) = (node(), node(), user());
    store.beat(&a, LONG).await.expect("beat a");
    store.beat(&b, LONG).await.expect("beat b");
    assert_eq!(store.online(&a, u).await.expect("on a"), Some(on(u)));
    assert_eq!(store.online(&b, u).await.expect("on b"), None);
    let at = unix_ms();
    assert_eq!(store.offline(&a, u, at).await.expect("off a"), None);
    assert!(is_online(store, u).await, "b still has them");
    assert_eq!(store.online(&a, u).await.expect("on a again"), None);
    assert_eq!(store.offline(&b, u, at).await.expect("off b"), None);
    assert_eq!(
        store.offline(&a, u, at + 1).await.expect("off a"),
        Some(off(u, at + 1))
    );
    assert!(!is_online(store, u).await);
    // Leaving one node while the other has them: nothing; leaving the other: offline.
    store.online(&a, u).await.expect("on a");
    store.online(&b, u).await.expect("on b");
    assert!(store.leave(&a, at).await.expect("leave a").is_empty());
    assert_eq!(
        store.leave(&b, at + 2).await.expect("leave b"),
        vec![off(u, at + 2)]
    );
}

async fn sync_makes_the_node_hold_exactly_its_users(store: &dyn PresenceStore) {
    let (n, other) = (node(), node());
    let (u1, u2, u3, u4) = (user(), user(), user(), user());
    // A sync of a node that never beat makes it live with these users.
    let t = store
        .sync(&n, LONG, &[u1, u2], unix_ms())
        .await
        .expect("sync");
    assert_eq!(sorted(t), sorted(vec![on(u1), on(u2)]));
    assert!(!store.beat(&n, LONG).await.expect("beat").joined);
    // u4 is online through another node already: no transition when n takes them too.
    store.beat(&other, LONG).await.expect("beat other");
    store.online(&other, u4).await.expect("u4");
    let at = unix_ms();
    let t = store
        .sync(&n, LONG, &[u2, u3, u4, u3], at)
        .await
        .expect("sync");
    assert_eq!(sorted(t), sorted(vec![off(u1, at), on(u3)]));
    // The same list again: nothing changes.
    let t = store
        .sync(&n, LONG, &[u4, u3, u2], at)
        .await
        .expect("again");
    assert!(t.is_empty(), "{t:?}");
    // Dropping u4 from n leaves them online through `other`.
    let t = store.sync(&n, LONG, &[u2], at + 1).await.expect("sync");
    assert_eq!(sorted(t), sorted(vec![off(u3, at + 1)]));
    assert!(is_online(store, u4).await);
    assert_eq!(
        store.leave(&n, at + 2).await.expect("leave"),
        vec![off(u2, at + 2)]
    );
    store.leave(&other, at + 2).await.expect("leave other");
}

async fn leave_takes_the_users_offline(store: &dyn PresenceStore) {
    let (n, m) = (node(), node());
    let (u1, u2, u3) = (user(), user(), user());
    store.beat(&n, LONG).await.expect("beat");
    store.beat(&m, LONG).await.expect("beat");
    for u in [u1, u2, u3] {
        store.online(&n, u).await.expect("online");
    }
    store.online(&m, u2).await.expect("online m");
    let at = unix_ms();
    let t = store.leave(&n, at).await.expect("leave");
    assert_eq!(sorted(t), sorted(vec![off(u1, at), off(u3, at)]));
    assert!(store.leave(&n, at).await.expect("again").is_empty());
    assert!(is_online(store, u2).await);
    assert_eq!(presence(store, u1).await.last_seen_ms, at);
    assert!(matches!(
        store.online(&n, u1).await,
        Err(PresenceError::NodeNotLive(_))
    ));
    // A node that left joins afresh, empty.
    let b = store.beat(&n, LONG).await.expect("beat");
    assert!(b.joined);
    assert!(b.transitions.is_empty());
    store.leave(&n, at).await.expect("leave");
    store.leave(&m, at).await.expect("leave");
}

/// A node that stops beating: two callers reap concurrently; its users go offline at
/// its last beat, reported exactly once in all; a user another node has stays online.
async fn lapsed_node_is_reaped_once(a: Arc<dyn PresenceStore>, b: Arc<dyn PresenceStore>) {
    let (dying, steady) = (node(), node());
    let (u1, u2, u3) = (user(), user(), user());
    a.beat(&steady, LONG).await.expect("beat steady");
    let before = unix_ms();
    a.beat(&dying, SHORT).await.expect("beat dying");
    let after = unix_ms();
    for u in [u1, u2, u3] {
        a.online(&dying, u).await.expect("online");
    }
    a.online(&steady, u2).await.expect("online steady");
    tokio::time::sleep(PAST_SHORT).await;

    let ours: HashSet<UserId> = [u1, u2, u3].into();
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let (ra, rb) = tokio::join!(a.reap(), b.reap());
        for t in ra.expect("reap a").into_iter().chain(rb.expect("reap b")) {
            if ours.contains(&t.user) {
                seen.push(t);
            }
        }
        if seen.len() >= 2 {
            // Keep reaping a little to catch a duplicate.
            for _ in 0..3 {
                let (ra, rb) = tokio::join!(a.reap(), b.reap());
                let more = ra.expect("reap").into_iter().chain(rb.expect("reap"));
                seen.extend(more.filter(|t| ours.contains(&t.user)));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = sorted(seen);
    assert_eq!(seen.len(), 2, "each user reaped exactly once: {seen:?}");
    let last = seen[0].last_seen_ms;
    assert_near(last, before, after);
    assert_eq!(seen, sorted(vec![off(u1, last), off(u3, last)]));
    assert!(is_online(&*a, u2).await);
    assert_eq!(presence(&*b, u1).await.last_seen_ms, last);
    assert!(matches!(
        a.online(&dying, u1).await,
        Err(PresenceError::NodeNotLive(_))
    ));
    // It comes back: a fresh join, nothing left of it.
    let beat = a.beat(&dying, LONG).await.expect("beat");
    assert!(beat.joined);
    assert!(beat.transitions.is_empty());
    a.leave(&dying, unix_ms()).await.expect("leave");
    a.leave(&steady, unix_ms()).await.expect("leave");
}

async fn beat_of_a_lapsed_node_reaps_and_rejoins(store: &dyn PresenceStore) {
    let (n, u) = (node(), user());
    let before = unix_ms();
    store.beat(&n, SHORT).await.expect("beat");
    let after = unix_ms();
    store.online(&n, u).await.expect("online");
    tokio::time::sleep(PAST_SHORT).await;
    let beat = store.beat(&n, LONG).await.expect("beat");
    assert!(beat.joined);
    match beat.transitions.as_slice() {
        [t] => {
            assert_eq!((t.user, t.online), (u, false));
            assert_near(t.last_seen_ms, before, after);
        }
        other => panic!("expected u offline: {other:?}"),
    }
    assert!(!is_online(store, u).await, "the rejoined node is empty");
    assert_eq!(store.online(&n, u).await.expect("online"), Some(on(u)));
    // A sync of a lapsed node: reaped first, then the list.
    store.beat(&n, SHORT).await.expect("short");
    tokio::time::sleep(PAST_SHORT).await;
    let t = store.sync(&n, LONG, &[u], unix_ms()).await.expect("sync");
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!((t[0].user, t[0].online), (u, false));
    assert_eq!(t[1], on(u));
    assert!(is_online(store, u).await);
    store.leave(&n, unix_ms()).await.expect("leave");
}

async fn lapsed_node_reads_offline_before_reaping(store: &dyn PresenceStore) {
    let (n, m, u) = (node(), node(), user());
    let before = unix_ms();
    store.beat(&n, SHORT).await.expect("beat");
    let after = unix_ms();
    store.online(&n, u).await.expect("online");
    tokio::time::sleep(PAST_SHORT).await;
    let p = presence(store, u).await;
    assert!(!p.online);
    assert_near(p.last_seen_ms, before, after);
    // Online elsewhere before the reap: the user never stopped being reported online,
    // so no transition now, and the reap reports nothing for them either.
    store.beat(&m, LONG).await.expect("beat m");
    assert_eq!(store.online(&m, u).await.expect("online m"), None);
    for _ in 0..3 {
        let t = store.reap().await.expect("reap");
        assert!(
            !t.iter().any(|t| t.user == u),
            "u never went offline: {t:?}"
        );
    }
    let b = store.beat(&n, LONG).await.expect("beat");
    assert!(b.joined);
    assert!(b.transitions.is_empty(), "{:?}", b.transitions);
    assert!(is_online(store, u).await);
    store.leave(&n, unix_ms()).await.expect("leave");
    let at = unix_ms();
    assert_eq!(store.leave(&m, at).await.expect("leave"), vec![off(u, at)]);
}

async fn get_keeps_order_and_last_seen(store: &dyn PresenceStore) {
    let n = node();
    let (u1, u2, u3, never) = (user(), user(), user(), user());
    store.beat(&n, LONG).await.expect("beat");
    for u in [u1, u2, u3] {
        store.online(&n, u).await.expect("online");
    }
    let at = unix_ms();
    store.offline(&n, u1, at).await.expect("offline");
    store.offline(&n, u3, at + 7).await.expect("offline");
    let got = store.get(&[u3, never, u2, u1]).await.expect("get");
    let p = |user, online, last_seen_ms| Presence {
        user,
        online,
        last_seen_ms,
    };
    assert_eq!(
        got,
        vec![
            p(u3, false, at + 7),
            p(never, false, 0),
            p(u2, true, 0),
            p(u1, false, at),
        ]
    );
    assert!(store.get(&[]).await.expect("empty").is_empty());
    // Back online: still the previous last seen (for readers who may see only that).
    store.online(&n, u1).await.expect("online again");
    assert_eq!(store.get(&[u1]).await.expect("get"), vec![p(u1, true, at)]);
    store.leave(&n, at).await.expect("leave");
}

async fn subscriptions_are_leases(store: &dyn PresenceStore) {
    let (t, s1, s2) = (user(), user(), user());
    store.subscribe(s1, &[t], LONG, 100).await.expect("s1");
    assert_eq!(store.subscribers(t).await.expect("subs"), vec![s1]);
    store.subscribe(s2, &[t, t], LONG, 100).await.expect("s2");
    assert_eq!(
        store.subscribers(t).await.expect("subs"),
        sorted_users(vec![s1, s2])
    );
    store.unsubscribe(s1, &[t, user()]).await.expect("unsub");
    assert_eq!(store.subscribers(t).await.expect("subs"), vec![s2]);
    store.unsubscribe(s1, &[t]).await.expect("absent: ignored");
    store.unsubscribe(s2, &[t]).await.expect("unsub");
    assert!(store.subscribers(t).await.expect("subs").is_empty());

    // A lease runs out...
    let (t2, s3) = (user(), user());
    store.subscribe(s3, &[t2], SHORT, 100).await.expect("s3");
    assert_eq!(store.subscribers(t2).await.expect("subs"), vec![s3]);
    tokio::time::sleep(PAST_SHORT).await;
    assert!(store.subscribers(t2).await.expect("subs").is_empty());
    // ...unless renewed (a longer lease here: a late wake-up must not expire it).
    let (t3, s4) = (user(), user());
    let lease = Duration::from_secs(1);
    store.subscribe(s4, &[t3], lease, 100).await.expect("s4");
    tokio::time::sleep(Duration::from_millis(600)).await;
    store.subscribe(s4, &[t3], lease, 100).await.expect("renew");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.subscribers(t3).await.expect("subs"), vec![s4]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(store.subscribers(t3).await.expect("subs").is_empty());
    // Nobody: empty.
    assert!(store.subscribers(user()).await.expect("subs").is_empty());
}

async fn subscription_limit(store: &dyn PresenceStore) {
    let s = user();
    let (a, b, c, d) = (user(), user(), user(), user());
    store
        .subscribe(s, &[a, b, c], LONG, 3)
        .await
        .expect("3 of 3");
    match store.subscribe(s, &[d, a], LONG, 3).await {
        Err(PresenceError::Invalid { what, .. }) => assert_eq!(what, SUBSCRIPTION_LIMIT),
        other => panic!("over the limit: {other:?}"),
    }
    assert!(
        store.subscribers(d).await.expect("subs").is_empty(),
        "a refused subscribe changes nothing"
    );
    // Renewing what is held is within the limit; so is a duplicate id.
    store
        .subscribe(s, &[a, b, a], LONG, 3)
        .await
        .expect("renew");
    store.unsubscribe(s, &[a]).await.expect("unsub");
    store
        .subscribe(s, &[d, d], LONG, 3)
        .await
        .expect("room for one");
    assert_eq!(store.subscribers(d).await.expect("subs"), vec![s]);
    // Expired leases free their room.
    let s2 = user();
    store
        .subscribe(s2, &[a, b], SHORT, 2)
        .await
        .expect("2 of 2");
    assert!(store.subscribe(s2, &[c], LONG, 2).await.is_err());
    tokio::time::sleep(PAST_SHORT).await;
    store
        .subscribe(s2, &[c, d], LONG, 2)
        .await
        .expect("expired ones freed room");
    store.unsubscribe(s, &[b, c, d]).await.expect("unsub");
    store.unsubscribe(s2, &[c, d]).await.expect("unsub");
}

async fn arguments_are_checked(store: &dyn PresenceStore) {
    let invalid = |r: Result<(), PresenceError>| {
        assert!(
            matches!(r, Err(PresenceError::Invalid { .. })),
            "expected Invalid: {r:?}"
        );
    };
    invalid(store.beat("", LONG).await.map(drop));
    invalid(store.beat(&node(), Duration::ZERO).await.map(drop));
    invalid(store.beat("a\u{0}b", LONG).await.map(drop));
    invalid(store.online("", user()).await.map(drop));
    invalid(store.sync(&node(), Duration::ZERO, &[], 0).await.map(drop));
    invalid(store.offline(&node(), user(), u64::MAX).await.map(drop));
    invalid(store.subscribe(user(), &[user()], Duration::ZERO, 10).await);
}
