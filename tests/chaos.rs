//! Faults under load, audited end to end: the load test's `direct` scenario runs against
//! a cluster of real processes (NATS, Redis, natter's roles) while this test restarts
//! edges one by one (SIGTERM: graceful drain) or kills random parts with SIGKILL on a
//! schedule. The load test's auditor checks every message: none lost, duplicated,
//! misordered, corrupted or left unacked.
//!
//! `NATTER_CHAOS_S` sets how long the chaos run lasts (default 30 s; a soak is e.g.
//! `NATTER_CHAOS_S=3600`), `NATTER_CHAOS_SEED` replays a schedule (the seed is printed).

mod common;

use std::time::Duration;

use common::{
    bounded,
    cluster::{Cluster, Role, Shape, audited_clean, direct_load},
    eventually,
};
use natter_client::{ClientOptions, Event};

async fn wait_ready(role: &Role) {
    eventually(
        Duration::from_secs(30),
        &format!("{} ready", role.name),
        || async {
            role.get("/readyz")
                .await
                .is_some_and(|r| r.status().as_u16() == 200)
        },
    )
    .await;
}

/// Polls until the running messages instances own every partition exactly once; how long.
async fn partitions_settle(cluster: &Cluster) -> Duration {
    let started = tokio::time::Instant::now();
    cluster.wait_all_partitions_owned().await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing() {
    // Leases of 24 s, renewed every 8 s: a stopped instance's partitions are taken by
    // the other at its next tick (within 8 s) if they were handed over, but only 16 s or
    // more after the stop if they had to run out.
    const LEASE_TTL_MS: u64 = 24_000;
    let mut cluster = Cluster::start(Shape {
        lease_ttl_ms: LEASE_TTL_MS,
        ..Shape::default()
    })
    .await;
    // A device of our own on edge 0, to see the drain from a client's side.
    let watcher = cluster.user("watcher").await;
    let opts = ClientOptions {
        auto_reconnect: true,
        request_timeout: Duration::from_secs(3),
        send_deadline: Duration::from_secs(60),
        ..common::opts()
    };
    let device = cluster.connect(&watcher, 0, opts).await;

    let run = direct_load(&cluster, 40, 40, 40).output();
    let restarts = async {
        let mut drained = Vec::new();
        for i in 0..cluster.edges.len() {
            tokio::time::sleep(Duration::from_secs(4)).await;
            // SIGTERM: stop accepting, Reconnect frames, in-flight replies, close 1001.
            // `terminate` asserts a clean exit within 20 s.
            cluster.edges[i].terminate().await;
            drained.push(cluster.edges[i].log_tail(400));
            tokio::time::sleep(Duration::from_millis(500)).await;
            cluster.edges[i].start().await;
            wait_ready(&cluster.edges[i]).await;
        }
        // Then the messages instances, one at a time: each hands its partitions over on
        // SIGTERM to the other.
        let mut handovers = Vec::new();
        for i in 0..cluster.messages.len() {
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.messages[i].terminate().await;
            handovers.push(partitions_settle(&cluster).await);
            cluster.messages[i].start().await;
            wait_ready(&cluster.messages[i]).await;
        }
        (drained, handovers)
    };
    let (out, (drained, handovers)) = bounded(240, async { tokio::join!(run, restarts) }).await;
    let summary = audited_clean(out.expect("natter-loadtest runs"), "rolling restart");
    assert!(
        summary["reconnects"].as_u64().unwrap_or(0) >= 1,
        "the restarts moved the load test's connections: {summary}"
    );
    eprintln!("partitions handed over in {handovers:?}");
    assert_eq!(handovers.len(), cluster.messages.len());
    for took in &handovers {
        // Not a speed target: below 16 s the partitions can only have been released.
        assert!(
            *took < Duration::from_millis(LEASE_TTL_MS * 2 / 3),
            "partitions were handed over, not left to expire: {handovers:?}"
        );
    }
    for (i, log) in drained.iter().enumerate() {
        assert!(
            !log.contains("connections still open after the drain grace"),
            "edge {i} drained within its grace:\n{log}"
        );
    }

    // The watcher heard why and when to come back, lost its connection with 1001 and
    // came back by itself.
    let mut hint = None;
    let mut closed = None;
    let mut back = false;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(10), device.recv()).await {
        match event {
            Event::Reconnecting { reason, after_ms } if hint.is_none() => {
                hint = Some((reason, after_ms));
            }
            Event::Closed { code, .. } if closed.is_none() => closed = Some(code),
            Event::Reconnected(_) if closed.is_some() => {
                back = true;
                break;
            }
            _ => {}
        }
    }
    let (reason, after_ms) = hint.expect("a Reconnect frame before the close");
    assert_eq!(reason, "server restarting");
    assert!(after_ms < 5_000, "within the default spread: {after_ms}");
    assert_eq!(closed, Some(1001), "closed as going away");
    assert!(back, "the device reconnected by itself");
}

/// A tiny deterministic generator (xorshift), so a schedule can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// What the schedule can kill.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Edge(usize),
    Messages(usize),
    Nats,
    Redis,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_random_roles_under_load_loses_nothing() {
    let chaos_s: u64 = std::env::var("NATTER_CHAOS_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("NATTER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() | 1);
    eprintln!("chaos: {chaos_s} s, NATTER_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);

    let mut cluster = Cluster::start(Shape::default()).await;
    // Users scale with nothing: the load is steady, the faults are what varies.
    let run = direct_load(&cluster, 40, chaos_s, 60).output();
    let victims = [
        Victim::Edge(0),
        Victim::Edge(1),
        Victim::Messages(0),
        Victim::Messages(1),
        Victim::Nats,
        Victim::Redis,
    ];
    let chaos = async {
        let started = tokio::time::Instant::now();
        let end = started + Duration::from_secs(chaos_s.saturating_sub(3));
        let mut log = Vec::new();
        tokio::time::sleep(Duration::from_secs(3)).await;
        while tokio::time::Instant::now() < end {
            let victim = victims[rng.below(victims.len() as u64) as usize];
            let down = rng.millis(200, 2_000);
            log.push(format!(
                "{:>6.1}s kill -9 {victim:?} for {} ms",
                started.elapsed().as_secs_f64(),
                down.as_millis()
            ));
            match victim {
                Victim::Edge(i) => {
                    cluster.edges[i].kill9().await;
                    tokio::time::sleep(down).await;
                    cluster.edges[i].start().await;
                    wait_ready(&cluster.edges[i]).await;
                }
                Victim::Messages(i) => {
                    cluster.messages[i].kill9().await;
                    tokio::time::sleep(down).await;
                    cluster.messages[i].start().await;
                    wait_ready(&cluster.messages[i]).await;
                }
                Victim::Nats => {
                    cluster.nats.kill();
                    tokio::time::sleep(down).await;
                    cluster.nats.restart();
                    for edge in &cluster.edges {
                        wait_ready(edge).await;
                    }
                }
                Victim::Redis => {
                    cluster.redis.kill();
                    tokio::time::sleep(down).await;
                    cluster.redis.restart();
                    for edge in &cluster.edges {
                        wait_ready(edge).await;
                    }
                }
            }
            tokio::time::sleep(rng.millis(1_000, 4_000)).await;
        }
        log
    };
    let (out, log) = bounded(chaos_s + 240, async { tokio::join!(run, chaos) }).await;
    eprintln!("chaos schedule (seed {seed}):\n{}", log.join("\n"));
    assert!(!log.is_empty(), "the schedule killed something");
    audited_clean(out.expect("natter-loadtest runs"), "chaos");
}
