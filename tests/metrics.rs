//! Observability of `natter serve`: `/metrics` in Prometheus text format moves with
//! traffic (frames, acks, deliveries, store calls, connections, errors), `/readyz`
//! answers, and HTTP requests carry an `x-request-id`.

mod common;

use std::time::Duration;

use common::*;

/// The value of the sample `name` (with exactly `labels`, e.g. `{type="send"}`, or ""
/// for none) in a Prometheus text exposition; 0 when absent.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(server: &Server) -> String {
    let response = reqwest::get(format!("{}/metrics", server.base_url()))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    bounded(60, async {
        let server = Server::start().await;
        let before = scrape(&server).await;
        let ann = server.user("ann").await;
        let bob = server.user("bob").await;
        let a = server.device(&ann).await;
        let b = server.device(&bob).await;
        for i in 0..5 {
            a.send_text(bob.user_id, &format!("hello {i}"))
                .await
                .expect("send");
        }
        let got = messages(&b, 5, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 5);
        // One refused frame: a send to nobody.
        let nobody = natter_client::UserId(1);
        assert!(a.send_text(nobody, "anyone?").await.is_err());
        // Deliveries are recorded as pushes reach the socket; give the last one a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let after = scrape(&server).await;
        let moved =
            |name: &str, labels: &str| sample(&after, name, labels) - sample(&before, name, labels);
        assert!(
            moved("natter_frames_in_total", "{type=\"send\"}") >= 6.0,
            "{after}"
        );
        assert!(
            moved("natter_frames_out_total", "{type=\"ack\"}") >= 5.0,
            "{after}"
        );
        assert!(
            moved("natter_frames_out_total", "{type=\"push\"}") >= 5.0,
            "{after}"
        );
        assert!(
            moved("natter_errors_total", "{code=\"NOT_FOUND\"}") >= 1.0,
            "{after}"
        );
        assert!(
            moved("natter_ack_latency_seconds_count", "") >= 5.0,
            "{after}"
        );
        assert!(
            moved("natter_delivery_latency_seconds_count", "") >= 5.0,
            "{after}"
        );
        assert!(
            moved("natter_bus_request_seconds_count", "{service=\"messages\"}") >= 6.0,
            "{after}"
        );
        assert!(
            moved("natter_store_latency_seconds_count", "{op=\"append\"}") >= 1.0,
            "{after}"
        );
        assert!(sample(&after, "natter_connections", "") >= 2.0, "{after}");
        assert!(
            sample(&after, "natter_ack_latency_seconds_bucket", "{le=\"+Inf\"}") >= 5.0,
            "histograms are exported with buckets: {after}"
        );
        // Every ack in this test was fast: the 10 s bucket holds them all.
        assert_eq!(
            sample(&after, "natter_ack_latency_seconds_bucket", "{le=\"10\"}"),
            sample(&after, "natter_ack_latency_seconds_count", ""),
        );
        assert!(
            moved("natter_http_requests_total", "{status=\"2xx\"}") >= 3.0,
            "{after}"
        );

        // A connection that closes leaves the gauge.
        let open = sample(&after, "natter_connections", "");
        b.close();
        let mut now = open;
        for _ in 0..50 {
            now = sample(&scrape(&server).await, "natter_connections", "");
            if now < open {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(now, open - 1.0);
    })
    .await;
}

#[tokio::test]
async fn health_readiness_and_request_ids() {
    bounded(30, async {
        let server = Server::start().await;
        let http = reqwest::Client::new();
        for path in ["/healthz", "/readyz"] {
            let r = http
                .get(format!("{}{path}", server.base_url()))
                .send()
                .await
                .expect(path);
            assert_eq!(r.status(), 200, "{path}");
            let id = r
                .headers()
                .get("x-request-id")
                .expect("a generated request id");
            assert!(!id.is_empty());
        }
        // A caller's own id comes back (and is on every log line of its request).
        let r = http
            .get(format!("{}/healthz", server.base_url()))
            .header("x-request-id", "trace-me-42")
            .send()
            .await
            .expect("healthz");
        assert_eq!(
            r.headers().get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"trace-me-42"[..])
        );
        // A hostile one is replaced, not echoed.
        let r = http
            .get(format!("{}/healthz", server.base_url()))
            .header("x-request-id", "x".repeat(200))
            .send()
            .await
            .expect("healthz");
        let id = r
            .headers()
            .get("x-request-id")
            .expect("an id")
            .to_str()
            .expect("ascii");
        assert_eq!(id.len(), 16, "{id}");
    })
    .await;
}
