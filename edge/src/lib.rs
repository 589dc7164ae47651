//! natter's WebSocket edge: authenticates the upgrade, then runs one task per
//! connection that turns client frames into bus requests and bus pushes into server
//! frames. The edge holds no message state: the store is the truth, the bus the fast
//! path, and a device that misses something resyncs from its cursors. Announcements
//! reach every connection of the node through one bus subscription (`broadcast.rs`).

mod auth;
mod broadcast;
mod connection;
mod directory;
mod limits;
mod metrics;
mod presence;
mod session;
mod web;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Extension, Router,
    extract::{Query, State, WebSocketUpgrade},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use natter_bus::Bus;
use natter_proto::{Subject, codec::WireFormat};
use natter_sessions::{
    TokenVerifier, client_addr::ClientAddr, directory::SessionDirectory, openapi::ErrorBody,
};
use serde::Deserialize;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Edge settings. Defaults suit `natter serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name on the bus (`natter.edge.<node>.control`).
    pub node_id: String,
    /// Frames above this get an error frame (FRAME_TOO_LARGE) and are dropped.
    pub max_frame_bytes: usize,
    /// Frames above this close the connection (1009); tungstenite refuses them unread.
    pub hard_max_frame_bytes: usize,
    /// Sync pages waiting for the socket per connection (the connection task writes its
    /// own frames directly, waiting up to `send_timeout` for the socket). A client that
    /// lets this fill up for `send_timeout` is disconnected (it resumes from its cursors).
    pub outbound_queue: usize,
    /// How long a push may wait for room in the outbound queue.
    pub send_timeout: Duration,
    /// Bus messages buffered per connection before the connection counts as lagging.
    pub subscription_buffer: usize,
    /// Requests per connection waiting for a service reply; past this the edge stops
    /// reading that socket until replies come back (backpressure, nothing dropped).
    pub max_in_flight: usize,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// How long a request to a service may take before the client gets UNAVAILABLE.
    pub request_timeout: Duration,
    /// Bad frames tolerated per connection before it is closed for protocol violation.
    pub max_bad_frames: u32,
    /// How long this node's session directory entries live without a heartbeat (it
    /// heartbeats every third of this): a crashed edge's devices vanish after it.
    pub directory_ttl: Duration,
    /// tungstenite read buffer per connection, allocated up front and read into at most
    /// this many bytes at a time. Small: most frames are a few hundred bytes and every
    /// idle connection pays for it; a larger frame grows the buffer while it is read.
    pub read_buffer_bytes: usize,
    /// How long a user's last connection here must stay closed before the presence
    /// service hears they went offline (a reconnect within it shows as no change).
    pub presence_debounce: Duration,
    /// Typing indicators a connection may send per second (on average; bursts of twice
    /// this). More are dropped.
    pub typing_per_second: u32,
    /// Send frames a device may send per second on this node, on average (a token
    /// bucket shared by the device's connections here, kept across reconnects). More get
    /// RATE_LIMITED and are not stored; the client retries them later.
    pub messages_per_second: u32,
    /// Send frames a device may send at once before `messages_per_second` applies.
    pub messages_burst: u32,
    /// Open connections one user may have on this node; past it the upgrade gets 429
    /// `too_many_connections`. 0: no limit.
    pub max_connections_per_user: u32,
    /// Open connections one client address may have on this node (loopback addresses
    /// excepted: a local proxy or load generator); past it the upgrade gets 429
    /// `too_many_connections`. 0: no limit.
    pub max_connections_per_ip: u32,
    /// On drain, each connection is told to reconnect after a delay drawn uniformly
    /// from `[0, reconnect_spread)`, so a node's clients come back spread out.
    pub reconnect_spread: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: "edge-1".to_owned(),
            max_frame_bytes: 128 * 1024,
            hard_max_frame_bytes: 1024 * 1024,
            outbound_queue: 256,
            send_timeout: Duration::from_secs(5),
            subscription_buffer: 1024,
            max_in_flight: 64,
            idle_timeout: Duration::from_secs(90),
            ping_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            max_bad_frames: 20,
            read_buffer_bytes: 512,
            directory_ttl: Duration::from_secs(15),
            presence_debounce: Duration::from_secs(3),
            typing_per_second: 5,
            messages_per_second: 200,
            messages_burst: 20_000,
            max_connections_per_user: 20,
            max_connections_per_ip: 1_000,
            reconnect_spread: Duration::from_secs(5),
        }
    }
}

/// The edge role: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    bus: Arc<dyn Bus>,
    auth: natter_sessions::DeviceAuth,
    /// Cancelled to drain: connections stop reading, finish their in-flight requests
    /// and close with 1001.
    shutdown: CancellationToken,
    tracker: TaskTracker,
    next_connection: AtomicU64,
    open: AtomicUsize,
    /// Each device's Send token bucket (`messages_per_second`, `messages_burst`).
    send_buckets: limits::SendBuckets,
    /// Open connections per user and per client address on this node.
    per_user: Arc<limits::Counts<natter_proto::UserId>>,
    per_ip: Arc<limits::Counts<std::net::IpAddr>>,
    directory: directory::DirectoryNotes,
    directory_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    directory_stop: CancellationToken,
    presence: presence::PresenceNotes,
    presence_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Frames for every connection here; each connection holds a receiver.
    broadcasts: tokio::sync::broadcast::Sender<broadcast::Shared>,
}

impl Edge {
    /// An edge registering its connections in `directory` (which must outlive it).
    /// Call from within a tokio runtime: it starts the directory writer, the presence
    /// writer and the broadcast subscription (which runs until the edge has drained).
    pub fn new(
        config: Config,
        bus: Arc<dyn Bus>,
        verifier: TokenVerifier,
        directory: Arc<dyn SessionDirectory>,
        shutdown: CancellationToken,
    ) -> Edge {
        let request_timeout = config.request_timeout;
        metrics::limits(&config);
        let send_buckets =
            limits::SendBuckets::new(config.messages_per_second, config.messages_burst);
        let per_user = limits::Counts::new(config.max_connections_per_user);
        let per_ip = limits::Counts::new(config.max_connections_per_ip);
        let directory_stop = CancellationToken::new();
        let (notes, task) = directory::start(
            directory,
            config.node_id.clone(),
            config.directory_ttl,
            directory_stop.clone(),
        );
        let (presence, presence_task) = presence::start(
            bus.clone(),
            presence::Settings {
                node: config.node_id.clone(),
                ttl: config.directory_ttl,
                debounce: config.presence_debounce,
                timeout: config.request_timeout,
            },
            directory_stop.clone(),
        );
        // Its task ends with the others, once the connections are gone.
        let (broadcasts, _) = broadcast::start(bus.clone(), directory_stop.clone());
        Edge {
            inner: Arc::new(Inner {
                config,
                auth: natter_sessions::DeviceAuth::new(verifier, bus.clone(), request_timeout),
                bus,
                shutdown,
                tracker: TaskTracker::new(),
                next_connection: AtomicU64::new(rand::random::<u32>() as u64),
                open: AtomicUsize::new(0),
                send_buckets,
                per_user,
                per_ip,
                directory: notes,
                directory_task: std::sync::Mutex::new(Some(task)),
                directory_stop,
                presence,
                presence_task: std::sync::Mutex::new(Some(presence_task)),
                broadcasts,
            }),
        }
    }

    /// The `/v1/ws` route, and the web client at `/` (assets under `/web/`: static
    /// files, not API routes, so not in the OpenAPI document).
    pub fn router(&self) -> Router {
        let (router, _) = routes().split_for_parts();
        router.merge(web::router()).with_state(self.clone())
    }

    /// Open connections right now.
    pub fn open_connections(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Waits until every connection task has finished (call after cancelling the
    /// shutdown token), or `grace` has passed. Returns false on time-out.
    pub async fn drained(&self, grace: Duration) -> bool {
        self.inner.tracker.close();
        let drained = tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok();
        // Leave the session directory and presence once the connections are gone.
        self.inner.directory_stop.cancel();
        for (what, task) in [
            ("session directory", &self.inner.directory_task),
            ("presence service", &self.inner.presence_task),
        ] {
            let task = task.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(task) = task
                && tokio::time::timeout(grace, task).await.is_err()
            {
                tracing::warn!("the {what} did not confirm the leave in time");
            }
        }
        drained
    }
}

/// 429 `too_many_connections` (the limits are per edge node).
fn too_many_connections(message: &str) -> Response {
    auth::reject(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_connections",
        message,
    )
}

/// `/v1/ws`, registered with its OpenAPI operation.
fn routes() -> OpenApiRouter<Edge> {
    OpenApiRouter::new().routes(routes!(upgrade))
}

/// The OpenAPI document of the edge's API route, `GET /v1/ws` (the security schemes are
/// declared where the documents are merged).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct WsQuery {
    /// The access token, for WebSocket clients that cannot set headers (browsers),
    /// instead of `Authorization: Bearer`.
    access_token: Option<String>,
}

/// Opens the device's WebSocket (docs/protocol.md, "The WebSocket"): a WebSocket
/// upgrade (RFC 6455), then frames of `proto/schema/natter/v1/client.proto` in the
/// negotiated encoding.
#[utoipa::path(
    get,
    path = "/v1/ws",
    operation_id = "open_websocket",
    tag = "websocket",
    security(("bearer" = []), ("access_token" = [])),
    params(
        WsQuery,
        ("Sec-WebSocket-Protocol" = Option<String>, Header,
            description = "`natter.v1.proto` (binary protobuf frames) or `natter.v1.json` (text, proto3 JSON); JSON when none is offered"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open (`Sec-WebSocket-Protocol` names the chosen encoding if the client offered any)"),
        (status = 400, description = "Only unsupported subprotocols offered (or not a WebSocket upgrade: then a plain-text body)", body = ErrorBody),
        (status = 401, description = "No token, a bad or expired one, a logged-out device", body = ErrorBody),
        (status = 403, description = "`account_disabled`: an administrator disabled the account (logging in again will not help)", body = ErrorBody),
        (status = 429, description = "`too_many_connections`: the user, or the client's address, already has the most connections this node allows; close one, or retry later", body = ErrorBody),
        (status = 503, description = "This node is draining, or sessions did not answer; reconnect", body = ErrorBody),
    )
)]
async fn upgrade(
    State(edge): State<Edge>,
    client_addr: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let inner = &edge.inner;
    if inner.shutdown.is_cancelled() {
        return auth::reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node is draining",
        );
    }
    // Before the token is even verified: a flood from one address costs little. A
    // loopback peer is a local proxy or load generator, not one client.
    let ip_slot = match client_addr {
        Some(Extension(ClientAddr(ip))) if !ip.is_loopback() => match inner.per_ip.acquire(ip) {
            Some(slot) => Some(slot),
            None => {
                metrics::rejected(metrics::Limit::ConnectionsPerIp);
                return too_many_connections("too many connections from this address");
            }
        },
        _ => None,
    };
    let claims = match inner.auth.verify(&headers, query.access_token.as_deref()) {
        Ok(claims) => claims,
        Err(e) => return auth::refusal(e),
    };
    let Some(user_slot) = inner.per_user.acquire(claims.user) else {
        metrics::rejected(metrics::Limit::ConnectionsPerUser);
        return too_many_connections("too many connections of this user");
    };
    // Held by the connection's task (dropped with it, however it ends), or dropped here
    // if the upgrade goes no further.
    let slots = limits::Slots::new(user_slot, ip_slot);
    // Subscribe to the user's pushes before asking whether the device is still logged in:
    // a logout, ban or kick committed after that answer publishes its close after it, so
    // this subscription holds it for the connection. (Subscribing after the check left a
    // window in which such a close went to nobody.) Whatever is committed from here on
    // reaches the connection live; whatever was committed before is in the store for Sync.
    let subscription = inner
        .bus
        .subscribe(
            &Subject::user(claims.user),
            inner.config.subscription_buffer,
        )
        .await;
    let identity = match inner.auth.check(&claims).await {
        Ok(identity) => identity,
        Err(e) => return auth::refusal(e),
    };
    // The first subprotocol the client offers that natter speaks; JSON when it offers none,
    // so a generic WebSocket client can talk to natter without knowing about subprotocols.
    let offered: Vec<String> = ws
        .requested_protocols()
        .filter_map(|p| p.to_str().ok().map(str::to_owned))
        .collect();
    let format = offered.iter().find_map(|p| WireFormat::from_subprotocol(p));
    if format.is_none() && !offered.is_empty() {
        return auth::reject(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "unsupported subprotocol: use natter.v1.proto or natter.v1.json",
        );
    }
    let format = format.unwrap_or(WireFormat::Json);
    let mut ws = ws
        .read_buffer_size(inner.config.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(inner.config.hard_max_frame_bytes * 4)
        .max_message_size(inner.config.hard_max_frame_bytes)
        .max_frame_size(inner.config.hard_max_frame_bytes);
    if !offered.is_empty() {
        ws.set_selected_protocol(HeaderValue::from_static(format.subprotocol()));
    }
    let connection_id = inner.next_connection.fetch_add(1, Ordering::Relaxed);
    let edge2 = edge.clone();
    ws.on_upgrade(move |socket| {
        // Every log line of this connection names it, its user and its device.
        let span = tracing::info_span!(
            "conn",
            conn = connection_id,
            user = %identity.user,
            device = %identity.device
        );
        let run = session::run(
            edge2.clone(),
            socket,
            identity,
            subscription,
            format,
            connection_id,
        );
        let task = tracing::Instrument::instrument(
            async move {
                let _slots = slots;
                run.await
            },
            span,
        );
        // The tracker lets shutdown wait for every connection to close cleanly.
        edge2.inner.tracker.track_future(task)
    })
    .into_response()
}
