//! Push notifications through `natter serve`: a device registers its push token over
//! REST; a message to its user while no device of theirs is online reaches the
//! configured webhook exactly once (retried when the webhook fails at first), without
//! the message's text; an online user, a muted conversation and the sender get none.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{webhook::Receiver, *};
use natter_client::Session;
use serde_json::json;

async fn register_token(server: &Server, s: &Session, token: &str) {
    let r = reqwest::Client::new()
        .put(format!("{}/v1/devices/current/push", server.base_url()))
        .bearer_auth(&s.access_token)
        .json(&json!({"token": token, "platform": "fcm"}))
        .send()
        .await
        .expect("register a push token");
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
}

async fn server_with_webhook(addr: SocketAddr) -> Server {
    let url = format!("http://{addr}/push");
    Server::start_with(&[
        ("NATTER_PUSH_WEBHOOK_URL", url.as_str()),
        ("NATTER_PUSH_BACKOFF_MS", "20"),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_user_gets_one_notification_retried_past_a_failing_webhook() {
    bounded(60, async {
        let (receiver, addr) = Receiver::start(2).await;
        let server = server_with_webhook(addr).await;
        let ann = server.user("ann").await;
        let bob = server.user("bob").await;
        // Bob's phone registers its token, then is not connected.
        register_token(&server, &bob, "bob-phone-token").await;
        let a = server.device(&ann).await;
        let ack = a
            .send_text(bob.user_id, "the secret plan")
            .await
            .expect("send");

        // Two failures, then the delivery: three calls, all of the same notification.
        eventually(
            Duration::from_secs(10),
            "the notification delivered",
            || {
                let n = receiver.calls().len();
                async move { n >= 3 }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let calls = receiver.calls();
        assert_eq!(
            calls.len(),
            3,
            "exactly one notification, tried three times: {calls:?}"
        );
        for n in &calls {
            assert_eq!(n, &calls[0], "every attempt sends the same notification");
        }
        let n = &calls[0];
        assert_eq!(n["token"], "bob-phone-token");
        assert_eq!(n["platform"], "fcm");
        assert_eq!(n["user_id"], bob.user_id.get().to_string());
        assert_eq!(n["device_id"], bob.device_id.get().to_string());
        assert_eq!(n["sender_user_id"], ann.user_id.get().to_string());
        assert_eq!(n["conversation_id"], ack.conversation_id);
        assert_eq!(n["seq"], ack.seq.to_string());
        assert_eq!(n["kind"], "text");
        assert!(n.get("body").is_none(), "no content unless configured: {n}");
        // Ann, the sender, has no token; nothing else was sent.
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_users_and_muted_conversations_get_no_notification() {
    bounded(60, async {
        let (receiver, addr) = Receiver::start(0).await;
        let server = server_with_webhook(addr).await;
        let ann = server.user("ann").await;
        let bob = server.user("bob").await;
        let cy = server.user("cy").await;
        register_token(&server, &bob, "bob-token").await;
        register_token(&server, &cy, "cy-token").await;
        let a = server.device(&ann).await;
        // Bob is online: his device gets the message itself.
        let b = server.device(&bob).await;
        a.send_text(bob.user_id, "you are here")
            .await
            .expect("send");
        let got = messages(&b, 1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1);
        // Cy muted the conversation with Ann.
        let conversation = conv(ann.user_id, cy.user_id);
        let r = reqwest::Client::new()
            .put(format!(
                "{}/v1/conversations/{}/mute",
                server.base_url(),
                conversation.as_str()
            ))
            .bearer_auth(&cy.access_token)
            .json(&json!({"until_ms": u64::MAX.to_string()}))
            .send()
            .await
            .expect("mute");
        assert_eq!(r.status(), 204);
        a.send_text(cy.user_id, "psst").await.expect("send");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(receiver.calls().is_empty(), "{:?}", receiver.calls());

        // Bob goes offline: the next message is pushed.
        b.close();
        eventually(
            Duration::from_secs(10),
            "bob offline in the directory",
            || {
                let a = &a;
                let bob = bob.user_id;
                let receiver = &receiver;
                async move {
                    let before = receiver.calls().len();
                    if before > 0 {
                        return true;
                    }
                    a.send_text(bob, "now?").await.expect("send");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    !receiver.calls().is_empty()
                }
            },
        )
        .await;
        let calls = receiver.calls();
        assert!(calls.iter().all(|n| n["token"] == "bob-token"), "{calls:?}");
    })
    .await;
}
