//! Authentication from the attacker's side, through the real binary: a stolen refresh
//! token replayed after the victim refreshed (the device is logged out, its socket closes
//! with 4001, the operator gets a warning and a metric, never the token), logout
//! everywhere, JWT key rotation with a previous key across restarts, forged access
//! tokens, and failed logins per client address behind a trusted proxy.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use natter_client::{Connection, Event, HttpError, Session, WireFormat, proto::close_code};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// The close code of the next `Closed` event of `client`.
async fn closed_with(client: &natter_client::Client) -> u16 {
    next_matching(client, WAIT, |ev| match ev {
        Event::Closed { code, .. } => Some(*code),
        _ => None,
    })
    .await
}

/// The HTTP status a WebSocket upgrade with `token` is refused with (`None`: accepted).
async fn upgrade_refusal(server: &Server, token: &str) -> Option<u16> {
    match Connection::connect(&server.ws_url(), token, WireFormat::Proto).await {
        Ok(_) => None,
        Err(e) => Some(
            e.http_status()
                .unwrap_or_else(|| panic!("expected an HTTP refusal, got {e}")),
        ),
    }
}

/// The status and error code of a failed REST call.
fn refusal(e: &HttpError) -> (Option<u16>, Option<&str>) {
    (e.status(), e.code())
}

async fn scrape(server: &Server) -> String {
    reqwest::get(format!("{}/metrics", server.base_url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of `name` with exactly `labels` in a Prometheus exposition; 0 when absent.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The whole current server log (the last lines are not enough for a "never logged").
fn log(server: &Server) -> String {
    server.log_tail(usize::MAX)
}

/// The thief copied a refresh token; the victim refreshed, then the thief presented the
/// copy. The device is logged out: the thief gets 401 `refresh_token_reused`, the
/// victim's newer tokens die, its live socket closes with 4001, and the operator sees a
/// warning and a metric. The victim's other device keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_refresh_token_logs_the_device_out_everywhere() {
    bounded(60, async {
        let server = Server::start().await;
        let bob = server.user("bob").await;
        let victim = server.user("victim").await;
        let laptop = server.login(&victim.username, "laptop").await;
        let phone_ws = server.device(&victim).await;
        let laptop_ws = server.device(&laptop).await;
        let stolen = victim.refresh_token.clone();

        let renewed = server
            .http
            .refresh(&stolen)
            .await
            .expect("the victim refreshes");
        let err = server.http.refresh(&stolen).await.unwrap_err();
        assert_eq!(
            refusal(&err),
            (Some(401), Some("refresh_token_reused")),
            "{err}"
        );
        assert_eq!(closed_with(&phone_ws).await, close_code::REVOKED);

        let err = server
            .http
            .refresh(&renewed.refresh_token)
            .await
            .unwrap_err();
        assert_eq!(refusal(&err), (Some(401), Some("unauthorized")), "{err}");
        let err = server.http.refresh(&stolen).await.unwrap_err();
        assert_eq!(refusal(&err), (Some(401), Some("unauthorized")), "{err}");
        assert_eq!(
            upgrade_refusal(&server, &renewed.access_token).await,
            Some(401)
        );

        // The laptop is another token family: still connected and refreshing.
        laptop_ws
            .send_text(bob.user_id, "still here")
            .await
            .expect("the other device still sends");
        server
            .http
            .refresh(&laptop.refresh_token)
            .await
            .expect("the other device still refreshes");

        let metrics = scrape(&server).await;
        assert_eq!(
            sample(&metrics, "natter_refresh_token_reuse_total", ""),
            1.0,
            "{metrics}"
        );
        let log = log(&server);
        let warning = log
            .lines()
            .find(|l| l.contains("a replaced refresh token was presented again"))
            .expect("a warning in the log");
        assert!(warning.contains("WARN"), "{warning}");
        assert!(
            warning.contains(&victim.device_id.to_string())
                && warning.contains(&victim.user_id.to_string()),
            "the warning names the user and the device: {warning}"
        );
        for token in [&stolen, &renewed.refresh_token, &renewed.access_token] {
            let secret = token.rsplit(['.']).next().unwrap_or(token);
            assert!(!log.contains(secret), "a token reached the log");
        }
    })
    .await;
}

/// Logout everywhere closes every live device of the user with 4001 and kills their
/// refresh tokens; another user is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_closes_every_device_and_kills_their_tokens() {
    bounded(60, async {
        let server = Server::start().await;
        let bob = server.user("bob").await;
        let bob_ws = server.device(&bob).await;
        let alice = server.user("alice").await;
        let alice2 = server.login(&alice.username, "device-2").await;
        let ws1 = server.device(&alice).await;
        let ws2 = server.device(&alice2).await;

        let n = server
            .http
            .logout_everywhere(&alice2.access_token)
            .await
            .expect("logout everywhere");
        assert_eq!(n, 2);
        assert_eq!(closed_with(&ws1).await, close_code::REVOKED);
        assert_eq!(closed_with(&ws2).await, close_code::REVOKED);
        for s in [&alice, &alice2] {
            let err = server.http.refresh(&s.refresh_token).await.unwrap_err();
            assert_eq!(refusal(&err), (Some(401), Some("unauthorized")), "{err}");
            assert_eq!(upgrade_refusal(&server, &s.access_token).await, Some(401));
        }
        let err = server
            .http
            .logout_everywhere(&alice.access_token)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(401));

        bob_ws
            .send_text(alice.user_id, "are you there?")
            .await
            .expect("bob is still connected");
        server
            .http
            .refresh(&bob.refresh_token)
            .await
            .expect("bob refreshes");
        // Alice logs in again as usual.
        server.login(&alice.username, "device-3").await;
    })
    .await;
}

fn write_key(path: &Path, fill: u8) {
    std::fs::write(path, [fill; 48]).expect("write a key file");
}

/// The `kid` of an access token.
fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("a JWT header")
        .kid
        .expect("a kid")
}

/// Key rotation across restarts: the signing key moves from A to B with A listed as
/// previous, so A's tokens keep working (REST and WebSocket) while new ones are signed
/// with B; once A is no longer listed, its tokens are refused and B's are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_key_verifies_until_it_is_removed() {
    bounded(120, async {
        let keys = tempfile::tempdir().expect("a key directory");
        let current = keys.path().join("current.key");
        let previous = keys.path().join("previous.key");
        write_key(&current, b'A');
        // Some unrelated old key, so the variable always names a file.
        write_key(&previous, b'J');
        let mut server = Server::start_with(&[
            (
                "NATTER_JWT_SECRET_FILE",
                current.to_str().expect("a UTF-8 path"),
            ),
            (
                "NATTER_JWT_PREVIOUS_SECRET_FILES",
                previous.to_str().expect("a UTF-8 path"),
            ),
        ])
        .await;
        let alice = server.user("alice").await;
        let old = alice.access_token.clone();

        // Rotate: B signs, A is previous.
        server.terminate(WAIT).await;
        write_key(&current, b'B');
        write_key(&previous, b'A');
        server.restart().await;
        let name = server
            .http
            .username_of(&old, alice.user_id)
            .await
            .expect("A's token still works over REST");
        assert_eq!(name, alice.username);
        assert_eq!(
            upgrade_refusal(&server, &old).await,
            None,
            "and for sockets"
        );
        let fresh = server.login(&alice.username, "device-2").await;
        assert_ne!(kid(&fresh.access_token), kid(&old), "B signs new tokens");
        let moved = server
            .http
            .refresh(&alice.refresh_token)
            .await
            .expect("a session of A's time refreshes");
        assert_eq!(kid(&moved.access_token), kid(&fresh.access_token));

        // Finish: A is dropped.
        server.terminate(WAIT).await;
        write_key(&previous, b'J');
        server.restart().await;
        let err = server
            .http
            .username_of(&old, alice.user_id)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(401), "{err}");
        assert!(err.to_string().contains("unknown key"), "{err}");
        assert_eq!(upgrade_refusal(&server, &old).await, Some(401));
        server
            .http
            .username_of(&fresh.access_token, alice.user_id)
            .await
            .expect("B's token works");
        assert_eq!(upgrade_refusal(&server, &moved.access_token).await, None);
    })
    .await;
}

/// base64url without padding, for hand-made tokens.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// Forged access tokens, each refused by REST and by the WebSocket upgrade: a `kid` the
/// server does not have, `alg: none`, a changed signature. The genuine token is
/// accepted by both, so the refusals are the forgeries' doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_access_tokens_are_refused_everywhere() {
    bounded(60, async {
        let server = Server::start().await;
        let alice = server.user("alice").await;
        let genuine = &alice.access_token;
        let key = std::fs::read(server.data_dir().join("jwt.key")).expect("the generated key");
        let now = natter_proto_now_s();
        let claims = json!({
            "sub": alice.user_id.get().to_string(),
            "did": alice.device_id.get().to_string(),
            "iat": now, "exp": now + 600, "iss": "natter",
        });
        let signed = |kid: &str| {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            header.kid = Some(kid.to_owned());
            jsonwebtoken::encode(
                &header,
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(&key),
            )
            .expect("signing works")
        };
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "kid": kid(genuine)})
                .to_string()
                .as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut flipped = genuine.clone();
        let at = flipped.rfind('.').expect("three parts") + 1;
        let first = if &flipped[at..=at] == "A" { "B" } else { "A" };
        flipped.replace_range(at..=at, first);

        assert_eq!(upgrade_refusal(&server, genuine).await, None);
        assert_eq!(
            upgrade_refusal(&server, &signed(&kid(genuine))).await,
            None,
            "our key and kid over the same claims"
        );
        for (what, token) in [
            ("unknown kid", signed("0123456789abcdef")),
            ("alg none", none),
            ("changed signature", flipped),
        ] {
            assert_eq!(upgrade_refusal(&server, &token).await, Some(401), "{what}");
            let err = server
                .http
                .username_of(&token, alice.user_id)
                .await
                .unwrap_err();
            assert_eq!(err.status(), Some(401), "{what}: {err}");
        }
    })
    .await;
}

fn natter_proto_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A login through the trusted proxy (127.0.0.1) on behalf of `xff`.
async fn login_via(
    server: &Server,
    xff: &str,
    username: &str,
    password: &str,
) -> (StatusCode, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/sessions", server.base_url()))
        .header("x-forwarded-for", xff)
        .json(&json!({"username": username, "password": password, "device_name": "d"}))
        .send()
        .await
        .expect("a response");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// Failed logins from one client address (as the trusted proxy names it) lock that
/// address, however many accounts it spreads them over and whatever it writes into
/// `X-Forwarded-For` itself; another address still logs into the same accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_one_client_address_behind_a_trusted_proxy() {
    bounded(60, async {
        let server = Server::start_with(&[
            ("NATTER_TRUSTED_PROXIES", "127.0.0.1"),
            ("NATTER_LOGIN_FAILURES_PER_IP", "3"),
        ])
        .await;
        let mut victims: Vec<Session> = Vec::new();
        for prefix in ["ann", "bob", "cat"] {
            victims.push(server.user(prefix).await);
        }
        let attacker = "203.0.113.7";
        for v in &victims {
            let (status, _, body) = login_via(&server, attacker, &v.username, "wrong!pass").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        }
        // Now even the right password is refused from there, with a time to wait; a
        // forged first hop does not help (the proxy appended the real address).
        for xff in [attacker.to_owned(), format!("198.51.100.99, {attacker}")] {
            let (status, retry_after, body) =
                login_via(&server, &xff, &victims[0].username, PASSWORD).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{xff}: {body}");
            assert_eq!(body["error"]["code"], "too_many_attempts");
            let wait: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
            assert!((1..=600).contains(&wait), "{wait}");
        }
        // Another address logs into the very accounts the attacker tried.
        for v in &victims {
            let (status, _, body) = login_via(&server, "198.51.100.1", &v.username, PASSWORD).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let metrics = scrape(&server).await;
        assert_eq!(
            sample(
                &metrics,
                "natter_limit_rejections_total",
                r#"{limit="login_per_ip"}"#
            ),
            2.0,
            "{metrics}"
        );
        assert!(
            log(&server).contains("logins from this client address refused"),
            "the operator is told"
        );
    })
    .await;
}
