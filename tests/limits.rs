//! Limits seen from the attacker's side, against the real `natter serve`: a device
//! flooding Sends gets RATE_LIMITED and nothing it was refused is stored, while what
//! was acked is stored once and in order (and the Rust client's retries get the rest
//! in); connections past the per-user and per-address caps get 429
//! `too_many_connections` without touching anyone else, and a closed connection frees
//! its slot; the groups-per-user cap (deleted groups not counted), the member and
//! contact caps at their configured values; and every refusal moves
//! `natter_limit_rejections_total`, while `natter_limit` shows the configuration.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use natter_client::{
    Connection, ConnectionError, ErrorCode, Seq, Session, WireFormat,
    tungstenite::http::HeaderValue,
    v1::{self, client_frame::Body as CBody, group_request::Op, server_frame::Body as SBody},
    ws_request,
};

const WAIT: Duration = Duration::from_secs(10);

/// The value of the sample `name{labels}` in a Prometheus text exposition, if present.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

async fn scrape(server: &Server) -> String {
    let response = reqwest::get(format!("{}/metrics", server.base_url()))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics text")
}

/// `natter_limit_rejections_total{limit=...}` (0 when the series is not there yet).
fn rejections(text: &str, limit: &str) -> f64 {
    sample(
        text,
        "natter_limit_rejections_total",
        &format!("{{limit=\"{limit}\"}}"),
    )
    .unwrap_or(0.0)
}

/// `natter_limit{limit=...}`, which must be there.
fn configured(text: &str, limit: &str) -> f64 {
    sample(text, "natter_limit", &format!("{{limit=\"{limit}\"}}"))
        .unwrap_or_else(|| panic!("natter_limit{{limit=\"{limit}\"}} is not exported"))
}

/// Opens a raw connection of `session`'s device, claiming to come from `forwarded_for`
/// (an `X-Forwarded-For` header) when given.
async fn open(
    server: &Server,
    session: &Session,
    forwarded_for: Option<&str>,
) -> Result<Connection, ConnectionError> {
    let mut request = ws_request(
        &server.ws_url(),
        Some(&session.access_token),
        Some(WireFormat::Proto),
    )?;
    if let Some(addr) = forwarded_for {
        request.headers_mut().insert(
            "x-forwarded-for",
            HeaderValue::from_str(addr).expect("an address is a header value"),
        );
    }
    Connection::connect_request(request, WireFormat::Proto)
        .await
        .map(|(conn, _welcome)| conn)
}

/// Asserts the upgrade was refused with 429 `too_many_connections`.
fn assert_too_many(result: Result<Connection, ConnectionError>, who: &str) {
    match result {
        Err(ConnectionError::Rejected { status, body }) => {
            assert_eq!(status, 429, "{who}: {body}");
            let json: serde_json::Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{who}: {e}: {body}"));
            assert_eq!(
                json["error"]["code"], "too_many_connections",
                "{who}: {body}"
            );
        }
        Err(e) => panic!("{who}: expected 429 too_many_connections, got {e}"),
        Ok(_) => panic!("{who}: expected 429 too_many_connections, got a connection"),
    }
}

/// Waits (bounded) until `session` can connect again from `forwarded_for`: a closed
/// connection's slot comes back once the server has seen the close.
async fn connects_eventually(
    server: &Server,
    session: &Session,
    forwarded_for: Option<&str>,
) -> Connection {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open(server, session, forwarded_for).await {
            Ok(conn) => return conn,
            Err(ConnectionError::Rejected { status: 429, .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{} could not connect again: {e}", session.username),
        }
    }
}

fn send_frame(id: u64, to: natter_client::UserId, client_msg_id: &str) -> v1::ClientFrame {
    v1::ClientFrame {
        id,
        body: Some(CBody::Send(v1::Send {
            client_msg_id: client_msg_id.to_owned(),
            to_user: to.get(),
            kind: v1::MessageKind::Text as i32,
            body: format!("body of {client_msg_id}").into_bytes().into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_rate_limited_and_what_was_acked_is_stored_once_in_order() {
    const FLOOD: u64 = 60;
    let env = [
        ("NATTER_MESSAGES_PER_SECOND", "10"),
        ("NATTER_MESSAGES_BURST", "10"),
    ];
    let server = Server::start_with(&env).await;
    bounded(120, async {
        let ann = server.user("ann").await;
        let bob = server.user("bob").await;
        let cmid = |i: u64| format!("flood-{i:03}");

        // The flood: every Send written at once, pipelined.
        let mut conn = open(&server, &ann, None).await.expect("ann connects");
        for i in 1..=FLOOD {
            conn.feed(&send_frame(i, bob.user_id, &cmid(i)))
                .await
                .expect("write");
        }
        conn.flush().await.expect("flush");
        let mut answers: HashMap<u64, SBody> = HashMap::new();
        while answers.len() < FLOOD as usize {
            let frame = conn.recv_timeout(WAIT).await.expect("an answer per Send");
            if (1..=FLOOD).contains(&frame.id)
                && let Some(body) = frame.body
            {
                assert!(
                    answers.insert(frame.id, body).is_none(),
                    "one answer per frame"
                );
            }
        }
        let mut acked: Vec<(u64, u64)> = Vec::new(); // (frame id, seq)
        let mut refused: Vec<u64> = Vec::new();
        for i in 1..=FLOOD {
            match &answers[&i] {
                SBody::Ack(a) => {
                    assert_eq!(a.client_msg_id, cmid(i));
                    acked.push((i, a.seq));
                }
                SBody::Error(e) => {
                    assert_eq!(e.code, ErrorCode::RateLimited as i32, "frame {i}: {e:?}");
                    assert!(e.message.contains("retry after"), "a hint: {}", e.message);
                    refused.push(i);
                }
                other => panic!("frame {i}: unexpected {other:?}"),
            }
        }
        // 10 at once and 10 a second: 60 frames written in one go cannot all pass.
        assert!(acked.len() >= 10, "the burst passes: {} acked", acked.len());
        assert!(!refused.is_empty(), "past the burst, Sends are refused");
        // Acked in the order sent, with seqs 1..=n: nothing refused took a seq.
        let seqs: Vec<u64> = acked.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, (1..=acked.len() as u64).collect::<Vec<_>>());
        conn.close().await.ok();

        // What is stored is exactly what was acked, once each, in order.
        let b = server.device(&bob).await;
        let c = conv(ann.user_id, bob.user_id);
        let page = b.history(&c, Seq::ZERO, 200).await.expect("history");
        let stored: Vec<String> = page
            .messages
            .iter()
            .map(|m| m.client_msg_id.clone())
            .collect();
        let expected: Vec<String> = acked.iter().map(|(i, _)| cmid(*i)).collect();
        assert_eq!(stored, expected, "refused Sends are not stored");

        // The Rust client sends the refused ones again (same client_msg_id), one after
        // the other, backing off while refused (the device's bucket refills at 10 a
        // second, fewer than it asks for), and every message gets in, once.
        let a = server.device(&ann).await;
        for &i in &refused {
            let ack = a
                .send_frame(v1::Send {
                    client_msg_id: cmid(i),
                    to_user: bob.user_id.get(),
                    kind: v1::MessageKind::Text as i32,
                    body: format!("body of {}", cmid(i)).into_bytes().into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{} after retries: {e}", cmid(i)));
            assert_eq!(ack.client_msg_id, cmid(i));
        }
        assert!(
            a.stats().retries > 0,
            "the client met RATE_LIMITED and retried"
        );
        let all = b
            .history(&c, Seq::ZERO, 200)
            .await
            .expect("history")
            .messages;
        assert_gap_free(&all);
        assert_eq!(all.len() as u64, FLOOD, "every message delivered once");
        let order: Vec<String> = all.iter().map(|m| m.client_msg_id.clone()).collect();
        let mut want = expected.clone();
        want.extend(refused.iter().map(|&i| cmid(i)));
        assert_eq!(
            order, want,
            "acked first, then the retried ones in their order"
        );

        let metrics = scrape(&server).await;
        assert!(
            rejections(&metrics, "messages_per_device") >= refused.len() as f64,
            "every refusal is counted"
        );
        assert_eq!(configured(&metrics, "messages_per_device"), 10.0);
        assert_eq!(configured(&metrics, "messages_per_device_burst"), 10.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_user_cap_get_429_and_a_close_frees_a_slot() {
    let server = Server::start_with(&[("NATTER_MAX_CONNECTIONS_PER_USER", "2")]).await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let d2 = server.login(&ann.username, "device-2").await;
        let d3 = server.login(&ann.username, "device-3").await;
        let bob = server.user("bob").await;

        let first = open(&server, &ann, None).await.expect("ann's first device");
        let mut second = open(&server, &d2, None).await.expect("ann's second device");
        assert_too_many(open(&server, &d3, None).await, "ann's third device");
        // Someone else is not affected.
        let mut b = open(&server, &bob, None).await.expect("bob connects");
        let pong = ping(&mut b).await;
        assert!(matches!(pong, SBody::Pong(_)), "{pong:?}");
        // Ann's open connections still work.
        let pong = ping(&mut second).await;
        assert!(matches!(pong, SBody::Pong(_)), "{pong:?}");

        first.close().await.ok();
        let mut third = connects_eventually(&server, &d3, None).await;
        let pong = ping(&mut third).await;
        assert!(matches!(pong, SBody::Pong(_)), "{pong:?}");
        // And the cap holds again.
        assert_too_many(open(&server, &ann, None).await, "ann's first device again");

        let metrics = scrape(&server).await;
        assert!(rejections(&metrics, "connections_per_user") >= 2.0);
        assert_eq!(configured(&metrics, "connections_per_user"), 2.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_address_cap_get_429_behind_a_trusted_proxy() {
    let env = [
        ("NATTER_TRUSTED_PROXIES", "127.0.0.1"),
        ("NATTER_MAX_CONNECTIONS_PER_IP", "2"),
    ];
    let server = Server::start_with(&env).await;
    bounded(60, async {
        let mut users = Vec::new();
        for name in ["u1", "u2", "u3", "u4", "u5"] {
            users.push(server.user(name).await);
        }
        const NAT: &str = "203.0.113.7";
        let first = open(&server, &users[0], Some(NAT))
            .await
            .expect("first from the address");
        let _second = open(&server, &users[1], Some(NAT))
            .await
            .expect("second from the address");
        // A third user behind the same address is refused before anything else.
        assert_too_many(open(&server, &users[2], Some(NAT)).await, "third from NAT");
        // The proxy appends the real client after a forged entry: the forgery is not
        // believed, so it does not get the refused user around the cap.
        assert_too_many(
            open(&server, &users[2], Some(&format!("198.51.100.1, {NAT}"))).await,
            "forged hop",
        );
        // Another address, and the proxy itself (loopback: not limited), are fine.
        let _other = open(&server, &users[2], Some("203.0.113.8"))
            .await
            .expect("another address");
        let _direct = open(&server, &users[3], None)
            .await
            .expect("a loopback peer is not limited");

        first.close().await.ok();
        let mut again = connects_eventually(&server, &users[4], Some(NAT)).await;
        let pong = ping(&mut again).await;
        assert!(matches!(pong, SBody::Pong(_)), "{pong:?}");

        let metrics = scrape(&server).await;
        assert!(rejections(&metrics, "connections_per_ip") >= 2.0);
        assert_eq!(configured(&metrics, "connections_per_ip"), 2.0);
    })
    .await;
}

async fn ping(conn: &mut Connection) -> SBody {
    let id = 900_000 + u64::from(rand::random::<u16>());
    conn.send(&v1::ClientFrame {
        id,
        body: Some(CBody::Ping(v1::Ping::default())),
    })
    .await
    .expect("write a ping");
    loop {
        let frame = conn.recv_timeout(WAIT).await.expect("an answer");
        if frame.id == id {
            return frame.body.expect("a body");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_per_user_members_and_contacts_are_capped_at_their_configured_values() {
    let env = [
        ("NATTER_MAX_GROUPS_PER_USER", "2"),
        ("NATTER_MAX_GROUP_MEMBERS", "3"),
        ("NATTER_MAX_CONTACTS", "1"),
    ];
    let server = Server::start_with(&env).await;
    bounded(90, async {
        let ann_s = server.user("ann").await;
        let bo_s = server.user("bo").await;
        let cy_s = server.user("cy").await;
        let dan_s = server.user("dan").await;
        let ann = server.device(&ann_s).await;
        let cy = server.device(&cy_s).await;
        let (bo, dan) = (bo_s.user_id, dan_s.user_id);

        // Ann and Bo in two groups each: the cap.
        let g1 = ann.create_group("one", &[bo]).await.expect("g1");
        let g2 = ann.create_group("two", &[bo]).await.expect("g2");
        // Ann can make no third; Cy cannot put Bo in a third; alone Cy can.
        assert_eq!(
            refusal(ann.create_group("three", &[]).await),
            ErrorCode::LimitReached
        );
        assert_eq!(
            refusal(cy.create_group("with bo", &[bo]).await),
            ErrorCode::LimitReached
        );
        let g3 = cy.create_group("cy's", &[]).await.expect("g3");
        let add = |users: Vec<u64>| {
            Op::AddMembers(v1::GroupAddMembers {
                group_id: g3.group_id,
                users,
            })
        };
        assert_eq!(
            refusal(cy.group(add(vec![bo.get()])).await),
            ErrorCode::LimitReached
        );
        assert_eq!(
            refusal(cy.group(add(vec![ann_s.user_id.get()])).await),
            ErrorCode::LimitReached
        );
        // Nothing was changed by the refusals.
        let info = cy
            .group(Op::Get(v1::GroupGet {
                group_id: g3.group_id,
            }))
            .await
            .expect("get")
            .group
            .expect("group");
        assert_eq!(info.members.len(), 1, "{info:?}");

        // Leaving makes room.
        ann.group(Op::Leave(v1::GroupLeave {
            group_id: g1.group_id,
        }))
        .await
        .expect("ann leaves g1");
        cy.group(add(vec![ann_s.user_id.get()]))
            .await
            .expect("ann fits again");
        // A deleted group does not count either (its members stay listed in it).
        ann.group(Op::Delete(v1::GroupDelete {
            group_id: g2.group_id,
        }))
        .await
        .expect("ann deletes g2");
        cy.group(add(vec![bo.get()]))
            .await
            .expect("bo fits once g2 is deleted");

        // Three members: the member cap.
        assert_eq!(
            refusal(cy.group(add(vec![dan.get()])).await),
            ErrorCode::GroupFull
        );

        // Contacts: one.
        ann.add_contact_by_username(&bo_s.username, "Bo")
            .await
            .expect("the first contact");
        assert_eq!(
            refusal(ann.add_contact_by_username(&dan_s.username, "Dan").await),
            ErrorCode::LimitReached
        );

        let metrics = scrape(&server).await;
        assert!(rejections(&metrics, "groups_per_user") >= 4.0);
        assert!(rejections(&metrics, "group_members") >= 1.0);
        assert!(rejections(&metrics, "contacts") >= 1.0);
        assert_eq!(configured(&metrics, "groups_per_user"), 2.0);
        assert_eq!(configured(&metrics, "group_members"), 3.0);
        assert_eq!(configured(&metrics, "contacts"), 1.0);
        // The defaults of the rest are published too.
        assert_eq!(configured(&metrics, "messages_per_device"), 200.0);
        assert_eq!(configured(&metrics, "connections_per_ip"), 1000.0);
        assert_eq!(configured(&metrics, "frame_size"), 131_072.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_and_typing_floods_are_counted() {
    let server = Server::start().await;
    bounded(60, async {
        let ann = server.user("ann").await;
        let bob = server.user("bob").await;
        let mut conn = open(&server, &ann, None).await.expect("connect");
        // Above the 128 KiB soft limit: FRAME_TOO_LARGE, the connection stays.
        let big = natter_client::tungstenite::Message::Binary(vec![0u8; 200 * 1024].into());
        conn.send_raw(big).await.expect("write");
        let refused = loop {
            let frame = conn.recv_timeout(WAIT).await.expect("an answer");
            if let Some(SBody::Error(e)) = frame.body {
                break e;
            }
        };
        assert_eq!(refused.code, ErrorCode::FrameTooLarge as i32);
        // Typing past its burst (10): RATE_LIMITED for frames with an id.
        let mut limited = 0;
        for i in 1..=30u64 {
            conn.send(&v1::ClientFrame {
                id: i,
                body: Some(CBody::Typing(v1::Typing {
                    to_user: bob.user_id.get(),
                    active: true,
                    ..Default::default()
                })),
            })
            .await
            .expect("write");
        }
        // Answers come in order: the refusals before the pong.
        conn.send(&v1::ClientFrame {
            id: 99,
            body: Some(CBody::Ping(v1::Ping::default())),
        })
        .await
        .expect("write a ping");
        loop {
            let frame = conn.recv_timeout(WAIT).await.expect("an answer");
            match frame.body {
                Some(SBody::Pong(_)) if frame.id == 99 => break,
                Some(SBody::Error(e)) if (1..=30).contains(&frame.id) => {
                    assert_eq!(e.code, ErrorCode::RateLimited as i32, "{e:?}");
                    limited += 1;
                }
                _ => {}
            }
        }
        // 10 at once and 5 a second: 30 written in one go cannot all pass.
        assert!(limited > 0, "a typing flood is refused");
        assert!(limited < 30, "the burst passes");
        let metrics = scrape(&server).await;
        assert!(rejections(&metrics, "frame_size") >= 1.0);
        assert!(rejections(&metrics, "typing_per_device") >= 1.0);
        assert_eq!(configured(&metrics, "typing_per_device"), 5.0);
    })
    .await;
}
