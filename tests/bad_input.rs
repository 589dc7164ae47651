//! Bad input: malformed frames, unknown frame types, oversized frames, invalid UTF-8, a
//! send to nobody, bad tokens, a logged-out device. Each gets its documented answer, and
//! afterwards other users' conversations still work and the server is healthy.

mod common;

use std::time::Duration;

use common::*;
use natter_client::{
    ClientError, Connection, ConnectionError, ErrorCode, Event, Session, UserId, WireFormat,
    error_code,
    proto::close_code,
    tungstenite::{
        Message as WsMessage,
        protocol::frame::{
            Frame,
            coding::{Data, OpCode},
        },
    },
    v1::{self, ClientFrame, client_frame::Body as CBody, server_frame::Body as SBody},
    ws_request,
};
use rand::Rng as _;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

async fn raw(server: &Server, s: &Session, format: WireFormat) -> (Connection, v1::Welcome) {
    Connection::connect(&server.ws_url(), &s.access_token, format)
        .await
        .expect("connects")
}

/// The next Error frame (pushes in between are skipped): its id and body.
async fn next_error(conn: &mut Connection) -> (u64, v1::Error) {
    loop {
        let f = conn.recv_timeout(WAIT).await.expect("an Error frame");
        if let Some(SBody::Error(e)) = f.body {
            return (f.id, e);
        }
    }
}

/// The connection still answers a Ping.
async fn still_answers(conn: &mut Connection) {
    conn.send(&ClientFrame {
        id: 4242,
        body: Some(CBody::Ping(v1::Ping { client_time_ms: 1 })),
    })
    .await
    .expect("ping");
    let f = conn.recv_reply(WAIT).await.expect("a Pong");
    assert_eq!(f.id, 4242);
    assert!(matches!(f.body, Some(SBody::Pong(_))), "{f:?}");
}

/// The close code the connection ends with (frames before it are skipped).
async fn close_code_of(conn: &mut Connection) -> u16 {
    loop {
        match conn.recv_timeout(WAIT).await {
            Ok(_) => {}
            Err(ConnectionError::Closed { code, .. }) => return code,
            Err(e) => panic!("expected a close, got {e}"),
        }
    }
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays_usable() {
    bounded(60, async {
        let server = Server::start().await;
        let by = Bystanders::new(&server).await;
        let alice = server.user("alice").await;

        // Not protobuf.
        let (mut p, _) = raw(&server, &alice, WireFormat::Proto).await;
        p.send_raw(WsMessage::Binary(vec![0xff, 0xff, 0xff, 0xff].into()))
            .await
            .expect("write");
        let (_, e) = next_error(&mut p).await;
        assert_eq!(error_code(e.code), ErrorCode::BadFrame, "{e:?}");
        still_answers(&mut p).await;
        by.check(&server).await;
        drop(p);

        // Not JSON.
        let (mut j, _) = raw(&server, &alice, WireFormat::Json).await;
        j.send_raw(WsMessage::Text("{not json".into()))
            .await
            .expect("write");
        let (_, e) = next_error(&mut j).await;
        assert_eq!(error_code(e.code), ErrorCode::BadFrame, "{e:?}");
        still_answers(&mut j).await;
        by.check(&server).await;

        // JSON of a frame type this server does not know.
        j.send_raw(WsMessage::Text(r#"{"id":"1","shout":{}}"#.into()))
            .await
            .expect("write");
        let (id, e) = next_error(&mut j).await;
        assert_eq!(error_code(e.code), ErrorCode::UnknownFrame, "{e:?}");
        assert_eq!(id, 1, "the error answers frame 1");
        still_answers(&mut j).await;
        by.check(&server).await;
    })
    .await;
}

#[tokio::test]
async fn oversized_frames_get_frame_too_large_or_close_1009() {
    bounded(60, async {
        let server = Server::start().await;
        let by = Bystanders::new(&server).await;
        let alice = server.user("alice").await;
        let (mut p, welcome) = raw(&server, &alice, WireFormat::Proto).await;
        let max = welcome.max_frame_bytes as usize;
        assert!(max > 0, "Welcome announces max_frame_bytes");

        // Just above the limit: refused with an Error, the connection lives on.
        p.send(&ClientFrame {
            id: 5,
            body: Some(CBody::Send(v1::Send {
                client_msg_id: "too-big".into(),
                to_user: by.b.user_id.get(),
                kind: v1::MessageKind::Binary as i32,
                body: vec![7u8; max + 1024].into(),
                ..Default::default()
            })),
        })
        .await
        .expect("write");
        let (_, e) = next_error(&mut p).await;
        assert_eq!(error_code(e.code), ErrorCode::FrameTooLarge, "{e:?}");
        still_answers(&mut p).await;
        by.check(&server).await;

        // Far above: the connection is closed with 1009.
        let _ = p
            .send_raw(WsMessage::Binary(vec![0u8; 2 << 20].into()))
            .await;
        assert_eq!(close_code_of(&mut p).await, close_code::TOO_BIG);
        by.check(&server).await;

        // Nothing of it was stored.
        let hist = by
            .cb
            .history(
                &conv(alice.user_id, by.b.user_id),
                natter_client::Seq(0),
                10,
            )
            .await;
        match hist {
            Ok(page) => assert!(page.messages.is_empty(), "{page:?}"),
            Err(e) => assert_eq!(e.server_code(), Some(ErrorCode::NotFound), "{e}"),
        }
    })
    .await;
}

#[tokio::test]
async fn an_invalid_utf8_text_frame_closes_with_1007() {
    bounded(60, async {
        let server = Server::start().await;
        let by = Bystanders::new(&server).await;
        let alice = server.user("alice").await;
        let (mut j, _) = raw(&server, &alice, WireFormat::Json).await;
        let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
        let _ = j.send_raw(WsMessage::Frame(bad)).await;
        assert_eq!(close_code_of(&mut j).await, close_code::INVALID_PAYLOAD);
        by.check(&server).await;
    })
    .await;
}

#[tokio::test]
async fn a_send_to_a_nonexistent_user_is_not_found() {
    bounded(60, async {
        let server = Server::start().await;
        let by = Bystanders::new(&server).await;
        let alice = server.user("alice").await;
        let a = server.device(&alice).await;
        let nobody = UserId(rand::rng().random_range(1..(1u64 << 53)));
        let err = a.send_text(nobody, "hello?").await.unwrap_err();
        assert_eq!(err.server_code(), Some(ErrorCode::NotFound), "{err}");
        // The device still works.
        a.send_text(by.a.user_id, "hello!")
            .await
            .expect("a real send");
        by.check(&server).await;
        assert_eq!(
            server
                .http
                .lookup_user(&alice.access_token, &unique_name("nobody"))
                .await
                .unwrap_err()
                .status(),
            Some(404)
        );
    })
    .await;
}

#[tokio::test]
async fn only_the_server_writes_call_and_system_messages() {
    bounded(60, async {
        let server = Server::start().await;
        let alice = server.user("alice").await;
        let bob = server.user("bob").await;
        let a = server.device(&alice).await;
        let to = |kind: v1::MessageKind, call: Option<v1::CallLog>, id: &str| v1::Send {
            client_msg_id: id.to_owned(),
            to_user: bob.user_id.get(),
            kind: kind as i32,
            body: bytes::Bytes::from_static(b"x"),
            call: call.map(Box::new),
            ..Default::default()
        };
        let forged = v1::CallLog {
            call_id: "forged-call".into(),
            duration_ms: 3_600_000,
            ..Default::default()
        };
        for (what, send) in [
            ("kind CALL", to(v1::MessageKind::Call, None, "c1")),
            (
                "a call log",
                to(v1::MessageKind::Text, Some(forged.clone()), "c2"),
            ),
            (
                "kind CALL and a log",
                to(v1::MessageKind::Call, Some(forged), "c3"),
            ),
            ("kind SYSTEM", to(v1::MessageKind::System, None, "c4")),
            (
                "the server's id prefix",
                to(v1::MessageKind::Text, None, "natter.call.forged-call"),
            ),
        ] {
            let err = a.send_frame(send).await.expect_err(what);
            assert_eq!(
                err.server_code(),
                Some(ErrorCode::InvalidArgument),
                "{what}: {err}"
            );
        }
        // Nothing was stored: the conversation is empty.
        let history = a
            .history(&conv(alice.user_id, bob.user_id), natter_client::Seq(0), 10)
            .await
            .expect("history");
        assert!(history.messages.is_empty(), "{:?}", history.messages);
    })
    .await;
}

fn now_s() -> i64 {
    (natter_client::proto::now_ms() / 1000) as i64
}

/// A token for `s`'s device signed with `key` under the real token's key id.
fn sign(s: &Session, key: &[u8], sub: u64, iat: i64, exp: i64) -> String {
    let real = jsonwebtoken::decode_header(&s.access_token).expect("the real token has a header");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = real.kid;
    let claims = json!({
        "sub": sub.to_string(),
        "did": s.device_id.get().to_string(),
        "iat": iat,
        "exp": exp,
        "iss": "natter",
    });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .expect("signing works")
}

async fn upgrade_status(server: &Server, token: Option<&str>) -> Option<u16> {
    let req = ws_request(&server.ws_url(), token, Some(WireFormat::Proto)).expect("a request");
    match Connection::connect_request(req, WireFormat::Proto).await {
        Ok(_) => None,
        Err(e) => Some(
            e.http_status()
                .unwrap_or_else(|| panic!("expected an HTTP refusal, got {e}")),
        ),
    }
}

#[tokio::test]
async fn missing_expired_and_forged_tokens_get_401() {
    bounded(60, async {
        let server = Server::start().await;
        let by = Bystanders::new(&server).await;
        let alice = server.user("alice").await;
        let key = std::fs::read(server.data_dir().join("jwt.key")).expect("the generated key");

        // The forging itself is right: a fresh token made this way is accepted.
        let good = sign(&alice, &key, alice.user_id.get(), now_s(), now_s() + 600);
        let req = ws_request(&server.ws_url(), Some(&good), Some(WireFormat::Proto)).unwrap();
        let (_, w) = Connection::connect_request(req, WireFormat::Proto)
            .await
            .expect("a correctly signed token is accepted");
        assert_eq!(
            (w.user_id, w.device_id),
            (alice.user_id.get(), alice.device_id.get())
        );

        assert_eq!(upgrade_status(&server, None).await, Some(401), "missing");
        assert_eq!(
            upgrade_status(&server, Some("not.a.jwt")).await,
            Some(401),
            "garbage"
        );
        let expired = sign(
            &alice,
            &key,
            alice.user_id.get(),
            now_s() - 7200,
            now_s() - 3600,
        );
        assert_eq!(
            upgrade_status(&server, Some(&expired)).await,
            Some(401),
            "expired"
        );
        let other_key = sign(
            &alice,
            &[42u8; 64],
            alice.user_id.get(),
            now_s(),
            now_s() + 600,
        );
        assert_eq!(
            upgrade_status(&server, Some(&other_key)).await,
            Some(401),
            "signed with another key"
        );
        // Claims changed under the real signature (posing as another user).
        let forged = sign(&alice, &key, by.a.user_id.get(), now_s(), now_s() + 600);
        let signature = alice.access_token.rsplit('.').next().unwrap_or_default();
        let (head, _) = forged.rsplit_once('.').expect("three parts");
        let tampered = format!("{head}.{signature}");
        assert_eq!(
            upgrade_status(&server, Some(&tampered)).await,
            Some(401),
            "tampered claims"
        );
        by.check(&server).await;

        // The token may also come in the query string.
        let url = format!("{}?access_token={}", server.ws_url(), alice.access_token);
        let req = ws_request(&url, None, Some(WireFormat::Proto)).unwrap();
        Connection::connect_request(req, WireFormat::Proto)
            .await
            .expect("?access_token= is accepted");
    })
    .await;
}

#[tokio::test]
async fn a_logged_out_device_is_closed_with_4001_and_refused() {
    bounded(60, async {
        let server = Server::start().await;
        let by = Bystanders::new(&server).await;
        let alice = server.user("alice").await;
        let alice2 = server.login(&alice.username, "device-2").await;
        let a1 = server.device(&alice).await;
        let a2 = server.device(&alice2).await;

        server
            .http
            .logout(&alice.access_token)
            .await
            .expect("logout");
        let code = next_matching(&a1, WAIT, |ev| match ev {
            Event::Closed { code, .. } => Some(*code),
            _ => None,
        })
        .await;
        assert_eq!(code, close_code::REVOKED);
        let err = a1.send_text(by.a.user_id, "still here?").await.unwrap_err();
        assert!(
            matches!(err, ClientError::Closed { code: 4001, .. }),
            "{err}"
        );

        assert_eq!(
            upgrade_status(&server, Some(&alice.access_token)).await,
            Some(401),
            "the revoked token no longer connects"
        );
        let refresh = server.http.refresh(&alice.refresh_token).await.unwrap_err();
        assert_eq!(refresh.status(), Some(401), "{refresh}");
        assert_eq!(refresh.code(), Some("unauthorized"));

        // The user's other device is unaffected.
        let ack = a2
            .send_text(by.a.user_id, "from device 2")
            .await
            .expect("the other device still sends");
        let got = next_matching(&by.ca, WAIT, |ev| match ev {
            Event::Message(m) if m.seq == ack.seq => Some(m.clone()),
            _ => None,
        })
        .await;
        assert_eq!(text(&got), "from device 2");
        by.check(&server).await;
    })
    .await;
}
