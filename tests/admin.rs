//! The admin API (`/admin/v1`) through the real binary: admin tokens (a user's token is
//! refused) and the audit log, users (search, inspect, ban and unban on live connections,
//! delete with their data), sessions and kicks, groups, deleting a message for everyone,
//! announcements, stats, and the OpenAPI document.

mod common;

use std::time::Duration;

use common::*;
use natter_client::{ClientOptions, ConversationId, Event, v1};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The admin token `natter serve` generated in its data directory.
fn admin_token(server: &Server) -> String {
    let text = std::fs::read_to_string(server.data_dir().join("admin.token"))
        .expect("natter serve writes <data-dir>/admin.token");
    text.trim()
        .strip_prefix("admin:")
        .expect("admin:<token>")
        .to_owned()
}

struct AdminApi {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminApi {
    fn new(server: &Server) -> AdminApi {
        AdminApi {
            base: server.base_url(),
            token: admin_token(server),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status();
        let text = response.text().await.expect("admin response body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }
}

/// Two users, `<prefix>_ann` and `<prefix>_bob`, each with a connected device.
async fn ann_and_bob(
    server: &Server,
    prefix: &str,
) -> (
    natter_client::Session,
    natter_client::Session,
    natter_client::Client,
    natter_client::Client,
) {
    let ann = server.user(&format!("{prefix}_ann")).await;
    let bob = server.user(&format!("{prefix}_bob")).await;
    let a = server.device(&ann).await;
    let b = server.device(&bob).await;
    (ann, bob, a, b)
}

fn no_reconnect() -> ClientOptions {
    ClientOptions {
        auto_reconnect: false,
        ..opts()
    }
}

async fn closed(client: &natter_client::Client, within: Duration) -> (u16, Vec<v1::Error>) {
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let event = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("the connection closes in time")
            .expect("an event");
        match event {
            Event::Closed { code, .. } => return (code, errors),
            Event::Error { error, .. } => errors.push(error),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_tokens_get_in_and_every_call_is_audited() {
    bounded(60, async {
        let server = Server::start().await;
        let admin = AdminApi::new(&server);
        let ann = server.user("ann").await;
        let http = reqwest::Client::new();
        let url = format!("{}/admin/v1/users", server.base_url());

        // No token, a user's access token, a wrong token, a token with one char changed.
        let none = http.get(&url).send().await.unwrap();
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
        assert!(none.headers().contains_key("www-authenticate"));
        let body: Value = none.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        let user = http
            .get(&url)
            .bearer_auth(&ann.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(user.status(), StatusCode::UNAUTHORIZED);
        let body: Value = user.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains("user"),
            "{body}"
        );
        let mut wrong = admin.token.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        let forged = http.get(&url).bearer_auth(&wrong).send().await.unwrap();
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
        // A refused call reaches no service: the user list is not in the answer.
        assert!(!forged.text().await.unwrap().contains(&ann.username));

        // The real token works, and the audit log has every call, refused ones included.
        let page = admin.get("/admin/v1/users?limit=10").await;
        assert!(page["users"].is_array(), "{page}");
        let audit = admin.get("/admin/v1/audit?limit=10").await;
        let entries = audit["entries"].as_array().unwrap();
        // Newest first: the audit call itself is recorded after it answers, so the
        // newest entries are the successful search, then the three refusals.
        let statuses: Vec<u64> = entries
            .iter()
            .map(|e| e["status"].as_u64().unwrap())
            .collect();
        assert_eq!(&statuses[..4], &[200, 401, 401, 401], "{audit}");
        assert_eq!(entries[0]["admin"], "admin");
        assert_eq!(entries[0]["method"], "GET");
        assert_eq!(entries[0]["path"], "/admin/v1/users?limit=10");
        assert_eq!(entries[1]["admin"], "-");
        assert!(entries[0]["request_id"].as_str().unwrap().len() >= 8);

        // The document is public and lists every admin route.
        let doc: Value = http
            .get(format!("{}/admin/v1/openapi.json", server.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/admin/v1/users", "get"),
            ("/admin/v1/users/{user_id}", "get"),
            ("/admin/v1/users/{user_id}", "delete"),
            ("/admin/v1/users/{user_id}/ban", "post"),
            ("/admin/v1/users/{user_id}/unban", "post"),
            ("/admin/v1/sessions", "get"),
            ("/admin/v1/sessions/{user_id}/{device_id}", "delete"),
            ("/admin/v1/edges", "get"),
            ("/admin/v1/groups", "get"),
            ("/admin/v1/groups/{group_id}", "get"),
            ("/admin/v1/groups/{group_id}", "delete"),
            (
                "/admin/v1/conversations/{conversation_id}/messages/{seq}",
                "delete",
            ),
            ("/admin/v1/announcements", "post"),
            ("/admin/v1/stats", "get"),
            ("/admin/v1/audit", "get"),
            ("/admin/v1/openapi.json", "get"),
        ] {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} not documented"
            );
        }
        assert_eq!(paths.len(), 14, "{:?}", paths.keys().collect::<Vec<_>>());
        assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_searched_and_inspected() {
    bounded(60, async {
        let server = Server::start().await;
        let admin = AdminApi::new(&server);
        let (ann, bob, a, _b) = ann_and_bob(&server, "insp").await;
        let group = a
            .create_group("admins read this", &[bob.user_id])
            .await
            .unwrap();

        // Search by prefix, paged.
        let page = admin.get("/admin/v1/users?prefix=insp_&limit=1").await;
        assert_eq!(page["users"].as_array().unwrap().len(), 1, "{page}");
        let first = page["users"][0]["username"].as_str().unwrap().to_owned();
        let next = page["next"].as_str().expect("a next page").to_owned();
        let page2 = admin
            .get(&format!(
                "/admin/v1/users?prefix=insp_&limit=1&after={next}"
            ))
            .await;
        let second = page2["users"][0]["username"].as_str().unwrap().to_owned();
        let mut names = vec![first, second];
        names.sort();
        let mut want = vec![ann.username.clone(), bob.username.clone()];
        want.sort();
        assert_eq!(names, want);
        assert!(page2.get("next").is_none(), "{page2}");
        let (status, _) = admin
            .call(Method::GET, "/admin/v1/users?limit=0", None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Inspect: account, devices with their connection, groups, presence, storage.
        let detail = admin.get(&format!("/admin/v1/users/{}", ann.user_id)).await;
        assert_eq!(
            detail["account"]["username"],
            ann.username.as_str(),
            "{detail}"
        );
        assert_eq!(detail["account"]["disabled"], false);
        let devices = detail["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1, "{detail}");
        assert_eq!(devices[0]["device_id"], ann.device_id.to_string());
        assert_eq!(devices[0]["active"], true);
        assert!(devices[0]["connection"]["node"].is_string(), "{detail}");
        let groups = detail["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 1, "{detail}");
        assert_eq!(groups[0]["group_id"], group.group_id.to_string());
        assert_eq!(groups[0]["role"], "owner");
        assert_eq!(detail["storage"]["bytes"], 0);
        assert!(detail["presence"]["online"].is_boolean(), "{detail}");
        assert_eq!(detail["unavailable"], json!([]));

        let (status, body) = admin
            .call(Method::GET, "/admin/v1/users/999999", None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        let (status, _) = admin.call(Method::GET, "/admin/v1/users/abc", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_closes_every_device_at_once_and_refuses_logins_until_unbanned() {
    bounded(60, async {
        let server = Server::start().await;
        let admin = AdminApi::new(&server);
        let ann = server.user("ban_ann").await;
        let ann2 = server.login(&ann.username, "tablet").await;
        let bob = server.user("ban_bob").await;
        let a1 = server.connect(&ann, no_reconnect()).await;
        let a2 = server.connect(&ann2, no_reconnect()).await;
        let b = server.device(&bob).await;

        let (status, body) = admin
            .call(
                Method::POST,
                &format!("/admin/v1/users/{}/ban", ann.user_id),
                Some(json!({"reason": "spam"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["disabled"], true);
        assert_eq!(body["disabled_reason"], "spam");

        // Both live connections close at once, saying why.
        for client in [&a1, &a2] {
            let (code, errors) = closed(client, Duration::from_secs(5)).await;
            assert_eq!(code, natter_client::proto::close_code::ACCOUNT_DISABLED);
            assert!(
                errors
                    .iter()
                    .any(|e| e.code == v1::ErrorCode::AccountDisabled as i32),
                "{errors:?}"
            );
        }
        // Bob is untouched.
        b.send_text(ann.user_id, "still there?")
            .await
            .expect("bob can send");

        // No new login, no refresh, no reconnect with a still-unexpired access token.
        let login = server.http.login(&ann.username, PASSWORD, "laptop").await;
        let err = login.expect_err("a banned user cannot log in");
        assert_eq!(err.status(), Some(403), "{err}");
        assert!(err.to_string().contains("account_disabled"), "{err}");
        assert!(server.http.refresh(&ann.refresh_token).await.is_err());
        let reconnect =
            natter_client::Client::connect(&server.ws_url(), &ann.access_token, no_reconnect())
                .await;
        assert!(reconnect.is_err(), "a banned device reconnected");
        // The other services' REST endpoints say so too.
        for path in ["/v1/media/usage", "/v1/calls/ice-servers", "/v1/mutes"] {
            let r = reqwest::Client::new()
                .get(format!("{}{path}", server.base_url()))
                .bearer_auth(&ann.access_token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "account_disabled", "{path}: {body}");
        }

        let detail = admin.get(&format!("/admin/v1/users/{}", ann.user_id)).await;
        assert_eq!(detail["account"]["disabled"], true);

        // Unban: logins work, and the old device's session works again.
        let (status, body) = admin
            .call(
                Method::POST,
                &format!("/admin/v1/users/{}/unban", ann.user_id),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["disabled"], false);
        server
            .http
            .login(&ann.username, PASSWORD, "laptop")
            .await
            .expect("login after unban");
        let back = server.device(&ann).await;
        let got = sync_collect(&back, Duration::from_secs(10)).await;
        assert_eq!(got.iter().map(text).collect::<Vec<_>>(), ["still there?"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_and_a_kicked_device_can_come_back() {
    bounded(60, async {
        let server = Server::start().await;
        let admin = AdminApi::new(&server);
        let ann = server.user("kick_ann").await;
        let ann2 = server.login(&ann.username, "tablet").await;
        let a1 = server.connect(&ann, no_reconnect()).await;
        let a2 = server.connect(&ann2, no_reconnect()).await;

        let list = admin
            .get(&format!("/admin/v1/sessions?user_id={}", ann.user_id))
            .await;
        assert_eq!(list["total"], 2, "{list}");
        let node = list["sessions"][0]["node"].as_str().unwrap().to_owned();
        let by_edge = admin.get(&format!("/admin/v1/sessions?edge={node}")).await;
        let devices: Vec<&str> = by_edge["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["user_id"] == ann.user_id.to_string())
            .map(|s| s["device_id"].as_str().unwrap())
            .collect();
        assert_eq!(devices.len(), 2, "{by_edge}");
        let edges = admin.get("/admin/v1/edges").await;
        assert!(edges["connections"].as_u64().unwrap() >= 2, "{edges}");
        let (status, _) = admin.call(Method::GET, "/admin/v1/sessions", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, body) = admin
            .call(
                Method::DELETE,
                &format!("/admin/v1/sessions/{}/{}", ann.user_id, ann.device_id),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["was_connected"], true);
        let (code, _) = closed(&a1, Duration::from_secs(5)).await;
        assert_eq!(code, natter_client::proto::close_code::KICKED);
        // The other device stays; the kicked one may reconnect.
        a2.ping()
            .await
            .expect("the other device is still connected");
        let again = server.device(&ann).await;
        again.ping().await.expect("a kicked device reconnects");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_listed_inspected_and_deleted() {
    bounded(60, async {
        let server = Server::start().await;
        let admin = AdminApi::new(&server);
        let (_ann, bob, a, b) = ann_and_bob(&server, "grp").await;
        let group = a
            .create_group("to be deleted", &[bob.user_id])
            .await
            .unwrap();
        let gid = group.group_id.to_string();

        let list = admin.get("/admin/v1/groups?limit=500").await;
        assert!(
            list["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["group_id"] == gid.as_str() && g["member_count"] == 2),
            "{list}"
        );
        let mine = admin
            .get(&format!("/admin/v1/groups?member={}", bob.user_id))
            .await;
        assert_eq!(mine["groups"].as_array().unwrap().len(), 1, "{mine}");
        let detail = admin.get(&format!("/admin/v1/groups/{gid}")).await;
        assert_eq!(detail["name"], "to be deleted");
        assert_eq!(detail["members"].as_array().unwrap().len(), 2, "{detail}");

        let (status, body) = admin
            .call(Method::DELETE, &format!("/admin/v1/groups/{gid}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["deleted"], true);
        // Members get the deletion in order with the chat, by nobody they know (actor 0).
        let event = next_matching(&b, Duration::from_secs(10), |e| match e {
            Event::Message(m) if m.kind == v1::MessageKind::System as i32 => m
                .event
                .clone()
                .filter(|ev| ev.kind == v1::GroupEventKind::Deleted as i32),
            _ => None,
        })
        .await;
        assert_eq!(event.actor, 0);
        let conv: ConversationId = group.conversation_id.parse().unwrap();
        let refused = a.send_text(conv, "anyone?").await;
        assert!(refused.is_err(), "sent to a deleted group");
        let (status, _) = admin
            .call(Method::GET, "/admin/v1/groups/987654321", None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_deleted_for_everyone() {
    bounded(60, async {
        let server = Server::start().await;
        let admin = AdminApi::new(&server);
        let (ann, bob, a, b) = ann_and_bob(&server, "mod").await;
        for t in ["one", "two", "three"] {
            a.send_text(bob.user_id, t).await.unwrap();
        }
        assert_eq!(messages(&b, 3, Duration::from_secs(10)).await.len(), 3);
        let conv = conv(ann.user_id, bob.user_id);

        let (status, body) = admin
            .call(
                Method::DELETE,
                &format!("/admin/v1/conversations/{conv}/messages/2"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["seq"], 2);
        // Both sides are told at once.
        for client in [&a, &b] {
            let seq = next_matching(client, Duration::from_secs(5), |e| match e {
                Event::MessageDeleted { seq, .. } => Some(*seq),
                _ => None,
            })
            .await;
            assert_eq!(seq, 2);
        }
        // History keeps its place without content.
        let page = b.history(&conv, natter_client::Seq(0), 10).await.unwrap();
        let texts: Vec<(u64, bool, String)> = page
            .messages
            .iter()
            .map(|m| (m.seq, m.deleted, text(m)))
            .collect();
        assert_eq!(
            texts,
            [
                (1, false, "one".to_owned()),
                (2, true, String::new()),
                (3, false, "three".to_owned())
            ]
        );
        // Again: the same answer; a missing seq or a bad id are errors.
        let (status, _) = admin
            .call(
                Method::DELETE,
                &format!("/admin/v1/conversations/{conv}/messages/2"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = admin
            .call(
                Method::DELETE,
                &format!("/admin/v1/conversations/{conv}/messages/99"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = admin
            .call(
                Method::DELETE,
                "/admin/v1/conversations/nonsense/messages/1",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_reach_connected_devices_and_later_logins() {
    bounded(60, async {
        let server = Server::start().await;
        let admin = AdminApi::new(&server);
        let ann = server.user("ann_ann").await;
        let a = server.device(&ann).await;

        let (status, body) = admin
            .call(
                Method::POST,
                "/admin/v1/announcements",
                Some(json!({"text": "maintenance at 02:00 UTC"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let text = next_matching(&a, Duration::from_secs(5), |e| match e {
            Event::Announcement { text, .. } => Some(text.clone()),
            _ => None,
        })
        .await;
        assert_eq!(text, "maintenance at 02:00 UTC");

        // Someone who was not connected lists it after logging in.
        let bob = server.user("ann_bob").await;
        let list: Value = reqwest::Client::new()
            .get(format!("{}/v1/announcements", server.base_url()))
            .bearer_auth(&bob.access_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let texts: Vec<&str> = list["announcements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["maintenance at 02:00 UTC"], "{list}");

        let (status, _) = admin
            .call(
                Method::POST,
                "/admin/v1/announcements",
                Some(json!({"text": "  "})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_is_gone_with_their_data() {
    bounded(60, async {
        let server = Server::start().await;
        let admin = AdminApi::new(&server);
        let ann = server.user("del_ann").await;
        let bob = server.user("del_bob").await;
        let a = server.connect(&ann, no_reconnect()).await;
        let b = server.device(&bob).await;
        let group = b.create_group("ann will go", &[ann.user_id]).await.unwrap();
        a.send_text(bob.user_id, "bye").await.unwrap();

        let (status, body) = admin
            .call(
                Method::DELETE,
                &format!("/admin/v1/users/{}", ann.user_id),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["groups_left"], 1, "{body}");
        assert_eq!(body["account"]["username"], ann.username.as_str());
        let (code, _) = closed(&a, Duration::from_secs(5)).await;
        assert_eq!(code, natter_client::proto::close_code::ACCOUNT_DISABLED);

        // Gone: not found, out of the group, the username free again.
        let (status, _) = admin
            .call(
                Method::GET,
                &format!("/admin/v1/users/{}", ann.user_id),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let detail = admin
            .get(&format!("/admin/v1/groups/{}", group.group_id))
            .await;
        let members: Vec<&str> = detail["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_str().unwrap())
            .collect();
        assert_eq!(members, [bob.user_id.to_string()], "{detail}");
        assert!(
            server
                .http
                .login(&ann.username, PASSWORD, "x")
                .await
                .is_err(),
            "the deleted account logged in"
        );
        server
            .http
            .register(&ann.username, PASSWORD)
            .await
            .expect("the username is free again");
        // Deleting again is NOT_FOUND.
        let (status, _) = admin
            .call(
                Method::DELETE,
                &format!("/admin/v1/users/{}", ann.user_id),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_move_with_traffic() {
    bounded(60, async {
        let server = Server::start_with(&[("NATTER_STATS_INTERVAL_MS", "300")]).await;
        let admin = AdminApi::new(&server);
        let (_ann, bob, a, b) = ann_and_bob(&server, "st").await;
        for i in 0..10 {
            a.send_text(bob.user_id, &format!("m{i}")).await.unwrap();
        }
        assert_eq!(messages(&b, 10, Duration::from_secs(10)).await.len(), 10);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let last = loop {
            let stats = admin.get("/admin/v1/stats").await;
            let ok = stats["totals"]["messages_sent"].as_u64() >= Some(10)
                && stats["totals"]["deliveries"].as_u64() >= Some(10)
                && stats["connections"].as_u64() >= Some(2)
                && stats["rates"].is_object()
                && stats["store_latency"]["count"].as_u64() >= Some(1);
            if ok || tokio::time::Instant::now() > deadline {
                break stats;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            last["totals"]["messages_sent"].as_u64() >= Some(10),
            "{last}"
        );
        assert!(last["totals"]["deliveries"].as_u64() >= Some(10), "{last}");
        assert!(last["connections"].as_u64() >= Some(2), "{last}");
        assert!(last["rates"]["messages_per_s"].is_number(), "{last}");
        assert!(
            last["edges"][0]["connections"].as_u64() >= Some(2),
            "{last}"
        );
        assert_eq!(last["processes"][0]["role"], "serve", "{last}");
    })
    .await;
}
