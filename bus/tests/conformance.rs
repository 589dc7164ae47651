//! The same bus semantics on both implementations: the in-process bus and NATS (a real
//! `nats-server` started on an ephemeral loopback port), plus NATS restarts.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt as _;
use natter_bus::{Bus, BusError, BusEvent, InProcessBus, NatsBus, NatsConfig, Subscription};
use natter_proto::{Partition, Subject, UserId};
use natter_testkit::NatsServer;

const WAIT: Duration = Duration::from_secs(5);

async fn nats(server: &NatsServer) -> Arc<dyn Bus> {
    let bus = NatsBus::connect(NatsConfig {
        url: server.url(),
        name: "natter-test".into(),
        ..Default::default()
    })
    .await
    .expect("connect to the test NATS");
    Arc::new(bus)
}

async fn next_message(sub: &mut Subscription) -> natter_bus::BusMessage {
    loop {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(BusEvent::Message(m))) => return m,
            Ok(Some(BusEvent::Lagged)) => continue,
            Ok(None) => panic!("subscription ended"),
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }
}

/// Spawns a responder that answers each request with its payload reversed.
async fn echo(
    bus: Arc<dyn Bus>,
    subject: &Subject,
    group: Option<&str>,
) -> tokio::task::JoinHandle<()> {
    let mut sub = match group {
        Some(g) => bus.queue_subscribe(subject, g, 1024).await,
        None => bus.subscribe(subject, 1024).await,
    }
    .expect("subscribe");
    tokio::spawn(async move {
        while let Some(event) = sub.next().await {
            if let BusEvent::Message(m) = event {
                let mut v = m.payload.to_vec();
                v.reverse();
                let _ = natter_bus::reply(bus.as_ref(), &m, Bytes::from(v)).await;
            }
        }
    })
}

async fn suite(a: Arc<dyn Bus>, b: Arc<dyn Bus>) {
    // Publish / wildcard subscribe, across two clients.
    let mut all = a.subscribe(&Subject::all_partitions(), 1024).await.unwrap();
    let mut one = a.subscribe(&Subject::user(UserId(42)), 1024).await.unwrap();
    let p7 = Subject::partition(Partition::new(7).unwrap());
    b.publish(&p7, Bytes::from_static(b"seven")).await.unwrap();
    b.publish(&Subject::user(UserId(42)), Bytes::from_static(b"u42"))
        .await
        .unwrap();
    let m = next_message(&mut all).await;
    assert_eq!(m.subject, p7);
    assert_eq!(&m.payload[..], b"seven");
    assert_eq!(&next_message(&mut one).await.payload[..], b"u42");

    // Order of publishes from one client is kept.
    for i in 0..200u32 {
        b.publish(&p7, Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
    }
    for i in 0..200u32 {
        assert_eq!(next_message(&mut all).await.payload[..], i.to_be_bytes());
    }

    // Request / reply, and requests started in order arrive in order.
    let svc = Subject::sync();
    let responder = echo(a.clone(), &svc, Some("q")).await;
    let reply = b
        .request(&svc, Bytes::from_static(b"abc"), WAIT)
        .await
        .unwrap();
    assert_eq!(&reply[..], b"cba");
    let mut pending = Vec::new();
    for i in 0..100u32 {
        pending.push(
            b.start_request(&svc, Bytes::from(format!("{i:03}")), WAIT)
                .await
                .unwrap(),
        );
    }
    for (i, p) in pending.into_iter().enumerate() {
        let want: String = format!("{i:03}").chars().rev().collect();
        assert_eq!(p.await.unwrap(), Bytes::from(want));
    }

    // Queue group: each request is answered once, by one of two members.
    let mut counted = a
        .queue_subscribe(&Subject::history(), "g", 1024)
        .await
        .unwrap();
    let mut counted2 = b
        .queue_subscribe(&Subject::history(), "g", 1024)
        .await
        .unwrap();
    for _ in 0..40 {
        a.publish(&Subject::history(), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while got < 40 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(BusEvent::Message(_)) = counted.next() => got += 1,
            Some(BusEvent::Message(_)) = counted2.next() => got += 1,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
    assert_eq!(got, 40, "every queue-group message is delivered");
    // ...and no more than once.
    let extra = tokio::time::timeout(Duration::from_millis(300), async {
        tokio::select! {
            e = counted.next() => e,
            e = counted2.next() => e,
        }
    })
    .await;
    assert!(extra.is_err(), "a queue-group message was delivered twice");

    // No responders: fast, not a time-out.
    let started = tokio::time::Instant::now();
    let err = b
        .request(
            &Subject::sessions_user(),
            Bytes::new(),
            Duration::from_secs(3),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::NoResponders(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A responder that never answers: time-out.
    let _silent = a.subscribe(&Subject::sessions_device(), 16).await.unwrap();
    let err = b
        .request(
            &Subject::sessions_device(),
            Bytes::new(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Timeout(_)), "{err:?}");
    responder.abort();
}

#[tokio::test]
async fn in_process_bus_passes_the_suite() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    suite(bus.clone(), bus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_passes_the_suite() {
    let server = NatsServer::start();
    suite(nats(&server).await, nats(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_recovers_from_a_server_restart() {
    let mut server = NatsServer::start();
    let a = nats(&server).await;
    let b = nats(&server).await;
    let subject = Subject::user(UserId(7));
    let mut sub = a.subscribe(&subject, 64).await.unwrap();
    let responder = echo(a.clone(), &Subject::sync(), None).await;
    b.publish(&subject, Bytes::from_static(b"before"))
        .await
        .unwrap();
    assert_eq!(&next_message(&mut sub).await.payload[..], b"before");

    server.kill();
    // While NATS is down requests fail (time-out) instead of hanging.
    let err = b
        .request(
            &Subject::sync(),
            Bytes::from_static(b"x"),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::Timeout(_) | BusError::Transport(_)),
        "{err:?}"
    );
    server.restart();

    // The subscription reports that it may have missed messages, then works again.
    match tokio::time::timeout(Duration::from_secs(15), sub.next()).await {
        Ok(Some(BusEvent::Lagged)) => {}
        other => panic!("expected Lagged after the reconnect, got {other:?}"),
    }
    // Both clients are back once a request goes through end to end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match b
            .request(
                &Subject::sync(),
                Bytes::from_static(b"ab"),
                Duration::from_millis(500),
            )
            .await
        {
            Ok(r) => {
                assert_eq!(&r[..], b"ba");
                break;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing_hint(&e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery after the restart: {e}"),
        }
    }
    b.publish(&subject, Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(&next_message(&mut sub).await.payload[..], b"after");
    responder.abort();
}

fn tracing_hint(e: &BusError) {
    eprintln!("waiting for NATS to come back: {e}");
}

async fn next_durable(stream: &mut natter_bus::DurableStream) -> natter_bus::DurableMessage {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a durable message in time")
        .expect("the stream goes on")
}

/// Durable publishing on NATS: what is published before any consumer exists is kept, a
/// retried publish (same id) is stored once, an acked message is gone, one sent back
/// with `retry_later` comes again. (One never acked, e.g. by a consumer that died, comes
/// again after the ack wait, 2 minutes: too long to show here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_durable_messages_wait_for_an_ack() {
    let server = NatsServer::start();
    let producer = nats(&server).await;
    let subject = Subject::notify();
    for (id, body) in [
        ("a", "first"),
        ("b", "second"),
        ("b", "second again"),
        ("c", "third"),
    ] {
        producer
            .publish_durable(&subject, Bytes::from(body), id)
            .await
            .expect("durable publish");
    }
    let consumer = nats(&server).await;
    let mut stream = consumer
        .consume_durable(&subject, "test-notifier", 16)
        .await
        .expect("consume");
    let first = next_durable(&mut stream).await;
    assert_eq!(&first.payload[..], b"first");
    assert_eq!(first.deliveries, 1);
    first.ack().await.expect("ack");
    let second = next_durable(&mut stream).await;
    assert_eq!(
        &second.payload[..],
        b"second",
        "the retried publish was deduped"
    );
    second
        .retry_later(Duration::from_millis(100))
        .await
        .expect("nak");
    let third = next_durable(&mut stream).await;
    assert_eq!(&third.payload[..], b"third");
    third.ack().await.expect("ack");
    let again = next_durable(&mut stream).await;
    assert_eq!(
        &again.payload[..],
        b"second",
        "sent back, so delivered again"
    );
    assert!(again.deliveries >= 2, "{again:?}");
    again.ack().await.expect("ack");
    // Everything acked: nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn in_process_durable_messages_reach_one_consumer() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let mut a = bus
        .consume_durable(&Subject::notify(), "n", 8)
        .await
        .unwrap();
    let mut b = bus
        .consume_durable(&Subject::notify(), "n", 8)
        .await
        .unwrap();
    for i in 0..4u8 {
        bus.publish_durable(&Subject::notify(), Bytes::from(vec![i]), &i.to_string())
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = tokio::select! {
            Some(m) = a.next() => m,
            Some(m) = b.next() => m,
        };
        got.push(m.payload[0]);
        m.ack().await.unwrap();
    }
    got.sort();
    assert_eq!(got, vec![0, 1, 2, 3], "each message once, across the group");
}
