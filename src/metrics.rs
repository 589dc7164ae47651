//! Prometheus metrics and HTTP request ids, for every role: `main` calls [`install`]
//! first thing (the crates cache their metric handles on first use, and a handle taken
//! before the recorder records nothing), and [`serve_http`](crate::roles::serve_http) adds `GET /metrics` and
//! [`request_ids`] to every router it serves. The metrics themselves are recorded where
//! things happen (edge, messages) through the `metrics` facade; docs/operations.md lists
//! them.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::Request,
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument as _;

/// Histogram buckets of every `*_seconds` metric: 1 ms to 10 s, dense where the SLOs
/// are (100 ms acks, 250 ms deliveries).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the exporter folds recent samples into the histograms it renders.
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls do nothing).
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            // Only fails for an empty bucket list; BUCKETS is not empty.
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        }
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "no metrics upkeep thread"))
            .ok();
        handle
    });
}

/// `GET /metrics`: every metric of this process in Prometheus text format.
pub fn router() -> Router {
    Router::new().route(
        "/metrics",
        get(|| async {
            match HANDLE.get() {
                Some(handle) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
                    .into_response(),
                None => {
                    (StatusCode::SERVICE_UNAVAILABLE, "metrics are not enabled\n").into_response()
                }
            }
        }),
    )
}

/// How often each process publishes its metrics on `natter.stats` for the admin API
/// (`NATTER_STATS_INTERVAL_MS` overrides it, e.g. in tests).
const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// Publishes this process's metrics on `natter.stats` every few seconds until the process
/// ends. `name` is the process's bus name (`natter-<role>-<instance>`, or `natter serve`'s).
pub fn report_stats(bus: std::sync::Arc<dyn natter_bus::Bus>, name: &str) {
    let every = std::env::var("NATTER_STATS_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms >= 100)
        .map_or(STATS_INTERVAL, Duration::from_millis);
    let role = name
        .strip_prefix("natter-")
        .unwrap_or(name)
        .split('-')
        .next()
        .unwrap_or(name)
        .to_owned();
    let instance = format!("{name}-{}", std::process::id());
    natter_admin::stats::spawn_reporter(
        bus,
        role,
        instance,
        every,
        || {
            HANDLE
                .get()
                .map(PrometheusHandle::render)
                .unwrap_or_default()
        },
        tokio_util::sync::CancellationToken::new(),
    );
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static TRUSTED_PROXIES: std::sync::OnceLock<natter_sessions::client_addr::TrustedProxies> =
    std::sync::OnceLock::new();

/// Sets the proxies whose `X-Forwarded-For` is believed (once, at start).
pub fn trust_proxies(proxies: natter_sessions::client_addr::TrustedProxies) {
    // Only `main` sets it, once; a second call would change nothing.
    let _ = TRUSTED_PROXIES.set(proxies);
}

/// Middleware: puts the client's address ([`ClientAddr`]) into the request's
/// extensions, from the peer address and, behind a trusted proxy, `X-Forwarded-For`.
///
/// [`ClientAddr`]: natter_sessions::client_addr::ClientAddr
pub async fn client_addr(mut request: Request, next: Next) -> Response {
    use natter_sessions::client_addr::ClientAddr;
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(peer) = peer {
        let client = match TRUSTED_PROXIES.get() {
            Some(proxies) => proxies.client(peer, request.headers()),
            None => peer,
        };
        request.extensions_mut().insert(ClientAddr(client));
    }
    next.run(request).await
}

/// Middleware: every HTTP request gets an id (the client's `x-request-id` if it sent a
/// sane one, else a new one), every log line while it is handled carries it, and the
/// response returns it. Also counts requests by status class and times them.
pub async fn request_ids(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path()
    );
    // Handlers and inner middleware (the admin API's audit) read it from the request.
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    let started = Instant::now();
    let mut response = next.run(request).instrument(span).await;
    let class = match response.status().as_u16() {
        100..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("natter_http_requests_total", "status" => class).increment(1);
    metrics::histogram!("natter_http_request_seconds").record(started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}
