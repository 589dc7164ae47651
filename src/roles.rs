//! The cluster roles: each runs one part of natter as its own process, talking to the
//! others over NATS, with partition leases and the session directory in Redis and
//! messages in ScyllaDB (or in the store role). Every role serves `/healthz` (alive) and
//! `/readyz` (connected to NATS) on its `--listen` address and stops cleanly on SIGTERM.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, http::StatusCode, routing::get, serve::ListenerExt as _};
use natter_bus::{Bus, NatsBus, NatsConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Failure, config_error, listen, shutdown_signal};

/// Connection to NATS, shared by every role.
#[derive(clap::Args, Debug)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "NATTER_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Messages buffered per NATS subscription before they are dropped (slow consumer).
    #[arg(
        long,
        env = "NATTER_NATS_SUBSCRIPTION_CAPACITY",
        default_value_t = 4096
    )]
    nats_subscription_capacity: usize,
}

#[derive(clap::Args, Debug)]
pub struct EdgeArgs {
    /// Address for WebSocket (`/v1/ws`) and health.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// Redis URL for the session directory. Without it the directory is local to this
    /// process (no cluster-wide view of who is connected where).
    #[arg(long, env = "NATTER_REDIS")]
    redis: Option<String>,
    /// This edge's name in the session directory and on the bus (default: $HOSTNAME or
    /// a random name).
    #[arg(long, env = "NATTER_NODE_ID")]
    node_id: Option<String>,
    /// File holding the JWT secret the sessions role signs with.
    #[arg(long, env = "NATTER_JWT_SECRET_FILE")]
    jwt_secret_file: PathBuf,
    #[command(flatten)]
    jwt_previous: JwtPreviousArgs,
    /// Seconds a connection may stay silent before it is closed.
    #[arg(long, env = "NATTER_IDLE_TIMEOUT_S", default_value_t = 90)]
    idle_timeout_s: u64,
    /// Milliseconds this edge's directory entries outlive its last heartbeat.
    #[arg(long, env = "NATTER_DIRECTORY_TTL_MS", default_value_t = 15_000)]
    directory_ttl_ms: u64,
    /// Seconds to let connections and in-flight requests finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
    /// Milliseconds a user's last connection here must stay closed before they show as
    /// offline.
    #[arg(long, env = "NATTER_PRESENCE_DEBOUNCE_MS", default_value_t = 3_000)]
    presence_debounce_ms: u64,
    /// On shutdown each connection is told to reconnect after a random delay below
    /// this many milliseconds, so clients do not all come back at once.
    #[arg(long, env = "NATTER_RECONNECT_SPREAD_MS", default_value_t = 5_000)]
    reconnect_spread_ms: u64,
    #[command(flatten)]
    limits: EdgeLimitArgs,
}

/// The edge's limits per device, user and client address, shared by `natter edge` and
/// `natter serve`. Each holds per edge node (docs/operations.md, "Limits and quotas").
#[derive(clap::Args, Debug)]
pub struct EdgeLimitArgs {
    /// Messages (Send frames) a device may send per second, on average; more get
    /// RATE_LIMITED (not stored; clients retry them later).
    #[arg(long, env = "NATTER_MESSAGES_PER_SECOND", default_value_t = 200)]
    messages_per_second: u32,
    /// Messages a device may send at once before --messages-per-second applies.
    #[arg(long, env = "NATTER_MESSAGES_BURST", default_value_t = 20_000)]
    messages_burst: u32,
    /// Typing indicators a connection may send per second (bursts of twice this); more
    /// are dropped.
    #[arg(long, env = "NATTER_TYPING_PER_SECOND", default_value_t = 5)]
    typing_per_second: u32,
    /// Open connections one user may have on this node (0: no limit); more get 429
    /// `too_many_connections`.
    #[arg(long, env = "NATTER_MAX_CONNECTIONS_PER_USER", default_value_t = 20)]
    max_connections_per_user: u32,
    /// Open connections one client address may have on this node (0: no limit;
    /// loopback addresses are not limited); more get 429 `too_many_connections`. Behind
    /// a load balancer, list it in --trusted-proxies, or every client is its address.
    #[arg(long, env = "NATTER_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    max_connections_per_ip: u32,
}

impl EdgeLimitArgs {
    /// An edge config with these limits (and defaults for the rest); rates and bursts
    /// must be positive.
    pub(crate) fn config(&self) -> Result<natter_edge::Config, Failure> {
        positive("messages-per-second", self.messages_per_second.into())?;
        positive("messages-burst", self.messages_burst.into())?;
        positive("typing-per-second", self.typing_per_second.into())?;
        Ok(natter_edge::Config {
            messages_per_second: self.messages_per_second,
            messages_burst: self.messages_burst,
            typing_per_second: self.typing_per_second,
            max_connections_per_user: self.max_connections_per_user,
            max_connections_per_ip: self.max_connections_per_ip,
            ..Default::default()
        })
    }
}

/// Where a service keeps its data in ScyllaDB.
#[derive(clap::Args, Debug)]
pub struct ScyllaArgs {
    /// ScyllaDB contact points (`host:port`, comma separated).
    #[arg(long, env = "NATTER_SCYLLA", value_delimiter = ',')]
    scylla: Vec<String>,
    /// Keyspace of natter's tables (created if missing).
    #[arg(long, env = "NATTER_SCYLLA_KEYSPACE", default_value = "natter")]
    scylla_keyspace: String,
    /// Replication factor used when the keyspace is created.
    #[arg(long, env = "NATTER_SCYLLA_REPLICATION_FACTOR", default_value_t = 3)]
    scylla_replication_factor: u32,
    /// Local datacenter (LOCAL_QUORUM, DC-aware routing); unset: any.
    #[arg(long, env = "NATTER_SCYLLA_LOCAL_DC")]
    scylla_local_dc: Option<String>,
    /// Timeout of each store request, in milliseconds.
    #[arg(long, env = "NATTER_STORE_TIMEOUT_MS", default_value_t = 5_000)]
    store_timeout_ms: u64,
}

impl ScyllaArgs {
    /// The ScyllaDB settings, or `None` without `--scylla` (the role then keeps its data
    /// some other way: an embedded store, or the store role).
    fn config(&self) -> Option<natter_cql::ScyllaConfig> {
        (!self.scylla.is_empty()).then(|| natter_cql::ScyllaConfig {
            nodes: self.scylla.clone(),
            keyspace: self.scylla_keyspace.clone(),
            replication_factor: self.scylla_replication_factor,
            local_dc: self.scylla_local_dc.clone(),
            request_timeout: Duration::from_millis(self.store_timeout_ms),
        })
    }

    /// The error context of a failed connect.
    fn connecting(&self) -> String {
        format!("connecting to ScyllaDB at {}", self.scylla.join(","))
    }
}

/// `<data_dir>/<file>` for a role's embedded store (without `--scylla`), the directory
/// created; says that `what` is then kept by this one instance.
fn embedded(data_dir: &std::path::Path, file: &str, what: &str) -> Result<PathBuf, Failure> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating --data-dir {}", data_dir.display()))
        .map_err(Failure::Config)?;
    tracing::info!("no --scylla: {what} kept in the embedded store (one instance only)");
    Ok(data_dir.join(file))
}

#[derive(clap::Args, Debug)]
pub struct GroupsArgs {
    /// Address for health checks.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8084")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// Without `--scylla`, groups are kept in an embedded store under `--data-dir`: then
    /// run exactly one groups instance.
    #[command(flatten)]
    scylla: ScyllaArgs,
    /// Where the embedded group store lives (without `--scylla`).
    #[arg(long, env = "NATTER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Most members a group may have.
    #[arg(long, env = "NATTER_MAX_GROUP_MEMBERS", default_value_t = 1024)]
    max_group_members: u32,
    /// Most groups a user may be a member of (deleted groups do not count).
    #[arg(long, env = "NATTER_MAX_GROUPS_PER_USER", default_value_t = 2_000)]
    max_groups_per_user: u32,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct PeopleArgs {
    /// Address for health checks.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8085")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// Without `--scylla`, people data is kept in an embedded store under `--data-dir`:
    /// then run exactly one people instance.
    #[command(flatten)]
    scylla: ScyllaArgs,
    /// Where the embedded people store lives (without `--scylla`).
    #[arg(long, env = "NATTER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    people: PeopleConfigArgs,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
}

/// The people service's settings, shared by `natter people` and `natter serve`.
#[derive(clap::Args, Debug)]
pub struct PeopleConfigArgs {
    /// Seconds a status update stays visible.
    #[arg(long, env = "NATTER_STATUS_TTL_S", default_value_t = 86_400)]
    status_ttl_s: u64,
    /// Most contacts a user may have.
    #[arg(long, env = "NATTER_MAX_CONTACTS", default_value_t = 5_000)]
    max_contacts: u32,
    /// Most users a user may block.
    #[arg(long, env = "NATTER_MAX_BLOCKS", default_value_t = 5_000)]
    max_blocks: u32,
    /// Most status updates a user may post in 24 hours.
    #[arg(long, env = "NATTER_MAX_STATUSES_PER_DAY", default_value_t = 30)]
    max_statuses_per_day: u32,
}

impl PeopleConfigArgs {
    /// The people service's config; every value must be positive.
    pub(crate) fn config(&self) -> Result<natter_people::Config, Failure> {
        positive("status-ttl-s", self.status_ttl_s)?;
        positive("max-contacts", self.max_contacts.into())?;
        positive("max-blocks", self.max_blocks.into())?;
        positive("max-statuses-per-day", self.max_statuses_per_day.into())?;
        Ok(natter_people::Config {
            status_ttl: Duration::from_secs(self.status_ttl_s),
            max_contacts: self.max_contacts,
            max_blocks: self.max_blocks,
            max_statuses_per_day: self.max_statuses_per_day,
            ..Default::default()
        })
    }
}

/// The media service's settings, shared by `natter media` and `natter serve`.
#[derive(clap::Args, Debug)]
pub struct MediaConfigArgs {
    /// Where media bytes are kept: a directory (default `<data-dir>/media`) or
    /// `s3://bucket[/prefix]` (credentials, region and endpoint from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP).
    #[arg(long, env = "NATTER_MEDIA_STORE")]
    media_store: Option<String>,
    /// Largest image, in MiB.
    #[arg(long, env = "NATTER_MEDIA_MAX_IMAGE_MIB", default_value_t = 16)]
    media_max_image_mib: u64,
    /// Largest video, in MiB.
    #[arg(long, env = "NATTER_MEDIA_MAX_VIDEO_MIB", default_value_t = 100)]
    media_max_video_mib: u64,
    /// Largest audio file or voice note, in MiB.
    #[arg(long, env = "NATTER_MEDIA_MAX_AUDIO_MIB", default_value_t = 16)]
    media_max_audio_mib: u64,
    /// Largest document, in MiB.
    #[arg(long, env = "NATTER_MEDIA_MAX_DOCUMENT_MIB", default_value_t = 2048)]
    media_max_document_mib: u64,
    /// Largest single-shot upload (`POST /v1/media`), in MiB; larger files use
    /// resumable uploads.
    #[arg(long, env = "NATTER_MEDIA_SINGLE_MAX_MIB", default_value_t = 16)]
    media_single_max_mib: u64,
    /// Storage each user may use, in MiB.
    #[arg(long, env = "NATTER_MEDIA_QUOTA_MIB", default_value_t = 10_240)]
    media_quota_mib: u64,
    /// Accepted MIME types, comma separated (default: every type natter recognises).
    #[arg(long, env = "NATTER_MEDIA_ALLOW", value_delimiter = ',')]
    media_allow: Vec<String>,
    /// Resumable uploads a user may have open at once.
    #[arg(long, env = "NATTER_MEDIA_MAX_OPEN_UPLOADS", default_value_t = 8)]
    media_max_open_uploads: usize,
    /// Seconds an untouched resumable upload is kept.
    #[arg(long, env = "NATTER_MEDIA_UPLOAD_TTL_S", default_value_t = 86_400)]
    media_upload_ttl_s: u64,
    /// Seconds an upload no message references is kept.
    #[arg(long, env = "NATTER_MEDIA_GC_GRACE_S", default_value_t = 86_400)]
    media_gc_grace_s: u64,
    /// Seconds between garbage collection rounds.
    #[arg(long, env = "NATTER_MEDIA_GC_INTERVAL_S", default_value_t = 600)]
    media_gc_interval_s: u64,
}

impl MediaConfigArgs {
    /// The media service's config and the object store (opened, not yet contacted).
    pub(crate) fn config(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<(natter_media::Config, natter_media::Objects), Failure> {
        const MIB: u64 = 1 << 20;
        for (name, value) in [
            ("media-max-image-mib", self.media_max_image_mib),
            ("media-max-video-mib", self.media_max_video_mib),
            ("media-max-audio-mib", self.media_max_audio_mib),
            ("media-max-document-mib", self.media_max_document_mib),
            ("media-single-max-mib", self.media_single_max_mib),
            ("media-quota-mib", self.media_quota_mib),
            ("media-max-open-uploads", self.media_max_open_uploads as u64),
            ("media-upload-ttl-s", self.media_upload_ttl_s),
            ("media-gc-grace-s", self.media_gc_grace_s),
            ("media-gc-interval-s", self.media_gc_interval_s),
        ] {
            positive(name, value)?;
        }
        for (name, value) in [
            ("media-max-image-mib", self.media_max_image_mib),
            ("media-max-video-mib", self.media_max_video_mib),
            ("media-max-audio-mib", self.media_max_audio_mib),
            ("media-max-document-mib", self.media_max_document_mib),
            ("media-single-max-mib", self.media_single_max_mib),
            ("media-quota-mib", self.media_quota_mib),
        ] {
            if value > (1 << 24) {
                return Err(config_error(anyhow::anyhow!("--{name} is above 16 TiB")));
            }
        }
        let allow: Vec<String> = self
            .media_allow
            .iter()
            .map(|m| m.trim().to_ascii_lowercase())
            .filter(|m| !m.is_empty())
            .collect();
        if let Some(unknown) = allow
            .iter()
            .find(|m| natter_media::sniff::extension(m) == "bin")
        {
            return Err(config_error(anyhow::anyhow!(
                "--media-allow: natter does not recognise `{unknown}` (docs/protocol.md, Media, lists the types)"
            )));
        }
        let spec = match &self.media_store {
            Some(s) if !s.is_empty() => s.clone(),
            _ => data_dir.join("media").display().to_string(),
        };
        let objects = natter_media::Objects::open(&spec)
            .map_err(|e| config_error(anyhow::anyhow!("--media-store: {e}")))?;
        let config = natter_media::Config {
            limits: natter_media::Limits {
                image: self.media_max_image_mib * MIB,
                video: self.media_max_video_mib * MIB,
                audio: self.media_max_audio_mib * MIB,
                document: self.media_max_document_mib * MIB,
            },
            allow: if allow.is_empty() {
                None
            } else {
                Some(allow.into_iter().collect())
            },
            single_max: self.media_single_max_mib * MIB,
            quota: self.media_quota_mib * MIB,
            max_open_uploads: self.media_max_open_uploads,
            upload_ttl: Duration::from_secs(self.media_upload_ttl_s),
            gc_grace: Duration::from_secs(self.media_gc_grace_s),
            gc_interval: Duration::from_secs(self.media_gc_interval_s),
            ..Default::default()
        };
        Ok((config, objects))
    }
}

/// Call settings, shared by `natter serve` and `natter calls`.
#[derive(clap::Args, Debug)]
pub struct CallsConfigArgs {
    /// Seconds a call rings before it ends unanswered.
    #[arg(long, env = "NATTER_CALL_RING_TIMEOUT_S", default_value_t = 45)]
    call_ring_timeout_s: u64,
    /// Milliseconds a device in a call may stay disconnected before it drops out of it.
    #[arg(long, env = "NATTER_CALL_DROP_GRACE_MS", default_value_t = 20_000)]
    call_drop_grace_ms: u64,
    /// Devices in one call at most (group calls are a mesh: keep this small).
    #[arg(long, env = "NATTER_CALL_MAX_PARTICIPANTS", default_value_t = 8)]
    call_max_participants: usize,
    /// Milliseconds between session-directory sweeps for devices in calls.
    #[arg(
        long,
        env = "NATTER_CALL_LIVENESS_INTERVAL_MS",
        default_value_t = 5_000
    )]
    call_liveness_interval_ms: u64,
    /// STUN URL handed to devices (`stun:host:port`); repeat for more.
    #[arg(long = "stun-url", env = "NATTER_STUN_URLS", value_delimiter = ',')]
    stun_urls: Vec<String>,
    /// TURN URL handed to devices with credentials (`turn:host:port?transport=udp`,
    /// `turns:...`); repeat for more. Needs `--turn-secret-file` (coturn's
    /// `static-auth-secret`, or natter turn's).
    #[arg(long = "turn-url", env = "NATTER_TURN_URLS", value_delimiter = ',')]
    turn_urls: Vec<String>,
    /// File holding the secret TURN credentials are signed with (shared with the TURN
    /// server). `natter serve` generates <data-dir>/turn.key when unset.
    #[arg(long, env = "NATTER_TURN_SECRET_FILE")]
    turn_secret_file: Option<PathBuf>,
    /// Seconds TURN credentials stay valid.
    #[arg(long, env = "NATTER_TURN_CREDENTIAL_TTL_S", default_value_t = 86_400)]
    turn_credential_ttl_s: u64,
}

impl CallsConfigArgs {
    pub(crate) fn config(&self) -> Result<natter_calls::service::Config, Failure> {
        positive("call-ring-timeout-s", self.call_ring_timeout_s)?;
        positive("call-drop-grace-ms", self.call_drop_grace_ms)?;
        positive("call-liveness-interval-ms", self.call_liveness_interval_ms)?;
        if !(2..=32).contains(&self.call_max_participants) {
            return Err(config_error(anyhow::anyhow!(
                "--call-max-participants must be 2..=32"
            )));
        }
        Ok(natter_calls::service::Config {
            ring_timeout: Duration::from_secs(self.call_ring_timeout_s),
            drop_grace: Duration::from_millis(self.call_drop_grace_ms),
            max_participants: self.call_max_participants,
            liveness_interval: Duration::from_millis(self.call_liveness_interval_ms),
            ..Default::default()
        })
    }

    /// The TURN secret from `--turn-secret-file`, if given.
    pub(crate) fn turn_secret(&self) -> Result<Option<Arc<str>>, Failure> {
        self.turn_secret_file
            .as_ref()
            .map(|path| read_turn_secret(path))
            .transpose()
    }

    pub(crate) fn ice(
        &self,
        secret: Option<Arc<str>>,
    ) -> Result<natter_calls::ice::IceConfig, Failure> {
        positive("turn-credential-ttl-s", self.turn_credential_ttl_s)?;
        if !self.turn_urls.is_empty() && secret.is_none() {
            return Err(config_error(anyhow::anyhow!(
                "--turn-url needs --turn-secret-file (the TURN server's shared secret)"
            )));
        }
        for url in self.stun_urls.iter().chain(&self.turn_urls) {
            if !(url.starts_with("stun:")
                || url.starts_with("stuns:")
                || url.starts_with("turn:")
                || url.starts_with("turns:"))
            {
                return Err(config_error(anyhow::anyhow!(
                    "ICE server URL {url:?} must start with stun:, stuns:, turn: or turns:"
                )));
            }
        }
        Ok(natter_calls::ice::IceConfig {
            stun_urls: self.stun_urls.clone(),
            turn_urls: self.turn_urls.clone(),
            secret,
            ttl: Duration::from_secs(self.turn_credential_ttl_s),
        })
    }
}

/// A TURN shared secret: the file's text, trimmed; at least 16 bytes.
pub(crate) fn read_turn_secret(path: &std::path::Path) -> Result<Arc<str>, Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --turn-secret-file {}", path.display()))
        .map_err(Failure::Config)?;
    let secret = text.trim();
    if secret.len() < 16 {
        return Err(config_error(anyhow::anyhow!(
            "--turn-secret-file {} must hold at least 16 characters",
            path.display()
        )));
    }
    Ok(Arc::from(secret))
}

/// Push notifications, shared by `natter serve` and `natter notifier`.
#[derive(clap::Args, Debug)]
pub struct PushConfigArgs {
    /// The push gateway's webhook (`https://…`): natter POSTs one JSON notification per
    /// device of a user with no device online (docs/operations.md has the format). In
    /// `natter serve`, push notifications are on only when this is set.
    #[arg(long, env = "NATTER_PUSH_WEBHOOK_URL")]
    pub push_webhook_url: Option<String>,
    /// File holding the secret that signs each webhook body (`X-Natter-Signature:
    /// sha256=<hex HMAC-SHA256>`); unset: unsigned.
    #[arg(long, env = "NATTER_PUSH_WEBHOOK_SECRET_FILE")]
    push_webhook_secret_file: Option<PathBuf>,
    /// Put the text of text messages in notifications (off: the gateway never sees
    /// message content).
    #[arg(long, env = "NATTER_PUSH_INCLUDE_CONTENT")]
    push_include_content: bool,
    /// Notifications per device per minute (bursts of as many); the excess is dropped.
    #[arg(long, env = "NATTER_PUSH_PER_DEVICE_PER_MINUTE", default_value_t = 30)]
    push_per_device_per_minute: u32,
    /// Requests per notification, the first included, before giving up.
    #[arg(long, env = "NATTER_PUSH_MAX_ATTEMPTS", default_value_t = 5)]
    push_max_attempts: u32,
    /// Milliseconds of the first retry's backoff (doubling, with jitter, up to 30 s).
    #[arg(long, env = "NATTER_PUSH_BACKOFF_MS", default_value_t = 500)]
    push_backoff_ms: u64,
}

impl PushConfigArgs {
    /// The notifier's config, if a webhook is set.
    pub(crate) fn config(&self) -> Result<Option<natter_notify::service::Config>, Failure> {
        let Some(url) = &self.push_webhook_url else {
            if self.push_webhook_secret_file.is_some() || self.push_include_content {
                return Err(config_error(anyhow::anyhow!(
                    "--push-webhook-secret-file and --push-include-content need --push-webhook-url"
                )));
            }
            return Ok(None);
        };
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(config_error(anyhow::anyhow!(
                "--push-webhook-url {url:?} must be an http(s) URL"
            )));
        }
        if self.push_max_attempts == 0 {
            return Err(config_error(anyhow::anyhow!(
                "--push-max-attempts must be at least 1"
            )));
        }
        let mut webhook = natter_notify::webhook::WebhookConfig::new(url.clone());
        webhook.max_attempts = self.push_max_attempts;
        webhook.backoff_base = Duration::from_millis(self.push_backoff_ms);
        if let Some(path) = &self.push_webhook_secret_file {
            let secret = std::fs::read(path)
                .with_context(|| format!("reading --push-webhook-secret-file {}", path.display()))
                .map_err(Failure::Config)?;
            let secret = secret.trim_ascii();
            if secret.len() < 16 {
                return Err(config_error(anyhow::anyhow!(
                    "--push-webhook-secret-file must hold at least 16 bytes"
                )));
            }
            webhook.secret = Some(Arc::from(secret));
        }
        let mut config = natter_notify::service::Config::new(webhook);
        config.include_content = self.push_include_content;
        config.per_device_per_minute = self.push_per_device_per_minute;
        Ok(Some(config))
    }
}

#[derive(clap::Args, Debug)]
pub struct NotifierArgs {
    /// Address for health and metrics.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// Redis URL of the edges' session directory (who has a device online).
    #[arg(long, env = "NATTER_REDIS")]
    redis: String,
    #[command(flatten)]
    push: PushConfigArgs,
    /// Seconds to let deliveries in flight finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
}

pub async fn notifier(args: NotifierArgs) -> Result<(), Failure> {
    let Some(config) = args.push.config()? else {
        return Err(config_error(anyhow::anyhow!(
            "natter notifier needs --push-webhook-url"
        )));
    };
    let directory: Arc<dyn natter_sessions::directory::SessionDirectory> = Arc::new(
        natter_sessions::directory::RedisDirectory::connect_lazy(&args.redis, "natter")
            .map_err(|e| config_error(anyhow::anyhow!("--redis: {e}")))?,
    );
    let nats = connect_nats(
        &args.nats,
        format!("natter-notifier-{}", default_name("notifier")),
    )
    .await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let stop = CancellationToken::new();
    let service = natter_notify::service::start(
        bus.clone(),
        Arc::new(natter_notify::service::BusTargets::new(bus)),
        Arc::new(natter_notify::service::DirectoryOnline(directory)),
        config,
        stop.clone(),
    )
    .await
    .context("starting the notifier (JetStream consumer)")
    .map_err(Failure::Runtime)?;
    let ready = Ready::with_redis(nats, &args.redis)?;
    let grace = Duration::from_secs(args.drain_grace_s);
    run_service("notifier", args.listen, ready, stop, service, grace).await
}

/// Where natter's own TURN relay listens (the `natter turn` role, or in `natter serve`).
#[derive(clap::Args, Debug)]
pub struct TurnListenArgs {
    /// UDP address of natter's TURN relay (e.g. `0.0.0.0:3478`). In `natter serve` the
    /// relay runs only when this is set, and devices get its URL with credentials.
    #[arg(long, env = "NATTER_TURN_LISTEN")]
    pub turn_listen: Option<SocketAddr>,
    /// The relay's public IP, advertised in relayed candidates (default: the
    /// `--turn-listen` IP, which must then not be 0.0.0.0).
    #[arg(long, env = "NATTER_TURN_PUBLIC_IP")]
    pub turn_public_ip: Option<std::net::IpAddr>,
    /// UDP ports for relayed traffic, `MIN-MAX` (e.g. `49160-49200`, to open or publish
    /// exactly these); default: any free port.
    #[arg(long, env = "NATTER_TURN_RELAY_PORTS")]
    pub turn_relay_ports: Option<String>,
}

impl TurnListenArgs {
    /// The relay's config, if one should run.
    pub(crate) fn config(
        &self,
        secret: &Arc<str>,
    ) -> Result<Option<natter_calls::turn::TurnConfig>, Failure> {
        let Some(listen) = self.turn_listen else {
            return Ok(None);
        };
        let public = match self.turn_public_ip {
            Some(ip) => ip,
            None if !listen.ip().is_unspecified() => listen.ip(),
            None => {
                return Err(config_error(anyhow::anyhow!(
                    "--turn-listen {listen} needs --turn-public-ip (the address peers reach)"
                )));
            }
        };
        let mut config = natter_calls::turn::TurnConfig::new(listen, public, secret.clone());
        if let Some(range) = &self.turn_relay_ports {
            let parsed = range
                .split_once('-')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
                })
                .filter(|&(a, b)| a >= 1 && a <= b);
            match parsed {
                Some(ports) => config.relay_ports = Some(ports),
                None => {
                    return Err(config_error(anyhow::anyhow!(
                        "--turn-relay-ports {range:?} must be MIN-MAX with 1 <= MIN <= MAX"
                    )));
                }
            }
        }
        if !listen.ip().is_unspecified() {
            // Relay sockets on the same interface as the listener (e.g. loopback).
            config.relay_bind = listen.ip();
        }
        Ok(Some(config))
    }
}

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Address for the admin API (`/admin/v1`) and health. Keep it off the public
    /// network: a load balancer in front of the edges must not route `/admin` here.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8091")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// File of admin tokens: one per line, `name:token` (the name goes in the audit
    /// log) or a bare token; at least 32 characters each.
    #[arg(long, env = "NATTER_ADMIN_TOKEN_FILE")]
    admin_token_file: PathBuf,
    /// Redis URL of the edges' session directory (who is connected where).
    #[arg(long, env = "NATTER_REDIS")]
    redis: String,
    /// Milliseconds to wait for a service's answer.
    #[arg(long, env = "NATTER_ADMIN_REQUEST_TIMEOUT_MS", default_value_t = 5_000)]
    request_timeout_ms: u64,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct CallsArgs {
    /// Address for `GET /v1/calls/ice-servers` and health.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// The HS256 secret access tokens are signed with (the sessions role's).
    #[arg(long, env = "NATTER_JWT_SECRET_FILE")]
    jwt_secret_file: PathBuf,
    #[command(flatten)]
    jwt_previous: JwtPreviousArgs,
    #[command(flatten)]
    calls: CallsConfigArgs,
    /// Redis URL of the edges' session directory: devices in calls are looked up there
    /// every `--call-liveness-interval-ms`, so one whose edge died drops out of its call.
    #[arg(long, env = "NATTER_REDIS")]
    redis: Option<String>,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct TurnArgs {
    /// Address for health checks (HTTP).
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    #[command(flatten)]
    turn: TurnListenArgs,
    /// File holding the shared secret credentials are signed with (the calls role's
    /// `--turn-secret-file`).
    #[arg(long, env = "NATTER_TURN_SECRET_FILE")]
    turn_secret_file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct MediaArgs {
    /// Address for the media REST endpoints (`/v1/media`) and health.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8087")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// The HS256 secret access tokens are signed with (the sessions role's).
    #[arg(long, env = "NATTER_JWT_SECRET_FILE")]
    jwt_secret_file: PathBuf,
    #[command(flatten)]
    jwt_previous: JwtPreviousArgs,
    /// Without `--scylla`, media records are kept in an embedded store under
    /// `--data-dir`: then run exactly one media instance.
    #[command(flatten)]
    scylla: ScyllaArgs,
    /// Where the embedded media store (and, by default, the media bytes) live.
    #[arg(long, env = "NATTER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    media: MediaConfigArgs,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct PresenceArgs {
    /// Address for health checks.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8086")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// Redis URL of the presence store (standalone Redis or Sentinel, not Redis Cluster).
    #[arg(long, env = "NATTER_REDIS")]
    redis: String,
    /// Prefix of every presence key in Redis.
    #[arg(
        long,
        env = "NATTER_PRESENCE_PREFIX",
        default_value = "natter:presence"
    )]
    redis_prefix: String,
    /// Seconds a presence subscription lasts unless renewed.
    #[arg(
        long,
        env = "NATTER_PRESENCE_SUBSCRIPTION_TTL_S",
        default_value_t = 600
    )]
    subscription_ttl_s: u64,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct MessagesArgs {
    /// Address for health checks.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// Redis URL for partition leases.
    #[arg(long, env = "NATTER_REDIS")]
    redis: String,
    /// Without `--scylla`, the messages are kept by the store role (`natter store`) over NATS.
    #[command(flatten)]
    scylla: ScyllaArgs,
    /// This instance's name among the messages instances (default: $HOSTNAME or a
    /// random name). Must be unique.
    #[arg(long, env = "NATTER_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Partition lease lifetime in milliseconds: how long a crashed instance's
    /// partitions wait before another instance takes them.
    #[arg(long, env = "NATTER_LEASE_TTL_MS", default_value_t = 10_000)]
    lease_ttl_ms: u64,
    /// Publish every committed batch for the notifier (JetStream stream NATTER_NOTIFY):
    /// set it when a `natter notifier` runs, else the jobs wait in JetStream for a day.
    #[arg(long, env = "NATTER_NOTIFY")]
    notify: bool,
    /// Seconds to let in-progress batches finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
    /// Consecutive failed message store calls that open the store's circuit breaker:
    /// calls then fail fast (clients get UNAVAILABLE and retry) until a probe after the
    /// cooldown succeeds. 0 turns the breaker off.
    #[arg(long, env = "NATTER_STORE_BREAKER_FAILURES", default_value_t = 5)]
    store_breaker_failures: u32,
    /// The breaker also opens when this percentage of the last 20 store calls failed
    /// (0: only consecutive failures count).
    #[arg(
        long,
        env = "NATTER_STORE_BREAKER_FAILURE_PERCENT",
        default_value_t = 50
    )]
    store_breaker_failure_percent: u32,
    /// Milliseconds the open breaker refuses calls before it lets one probe through.
    #[arg(
        long,
        env = "NATTER_STORE_BREAKER_COOLDOWN_MS",
        default_value_t = 2_000
    )]
    store_breaker_cooldown_ms: u64,
}

#[derive(clap::Args, Debug)]
pub struct SessionsArgs {
    /// Address for the accounts and sessions REST API (`/v1/...`) and health.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// Where the accounts database lives.
    #[arg(long, env = "NATTER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// File holding the JWT signing secret (at least 32 bytes; edges read the same).
    #[arg(long, env = "NATTER_JWT_SECRET_FILE")]
    jwt_secret_file: PathBuf,
    #[command(flatten)]
    jwt_previous: JwtPreviousArgs,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "NATTER_ACCESS_TTL_S", default_value_t = 900)]
    access_ttl_s: u64,
    /// Memory cost of password hashing (argon2id), in KiB.
    #[arg(long, env = "NATTER_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    argon2_memory_kib: u32,
    #[command(flatten)]
    login_limits: LoginLimitArgs,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// Address for health checks.
    #[arg(long, env = "NATTER_LISTEN", default_value = "127.0.0.1:8083")]
    listen: SocketAddr,
    #[command(flatten)]
    nats: NatsArgs,
    /// Where the embedded message store lives.
    #[arg(long, env = "NATTER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, env = "NATTER_DRAIN_GRACE_S", default_value_t = 10)]
    drain_grace_s: u64,
}

/// `$HOSTNAME` (unique per container) or `<role>-<random>`.
fn default_name(role: &str) -> String {
    match std::env::var("HOSTNAME") {
        Ok(h) if !h.is_empty() => h,
        _ => format!("{role}-{:08x}", rand_u32()),
    }
}

fn rand_u32() -> u32 {
    // Not security relevant: only tells unnamed instances apart.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    read_secret_of("jwt-secret-file", path)
}

/// A JWT secret from the file `path`, given by `--<flag>`: at least
/// [`natter_sessions::MIN_SECRET_BYTES`].
fn read_secret_of(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    let secret = std::fs::read(path)
        .with_context(|| format!("reading --{flag} {}", path.display()))
        .map_err(Failure::Config)?;
    if secret.len() < natter_sessions::MIN_SECRET_BYTES {
        return Err(config_error(anyhow::anyhow!(
            "--{flag} {} must hold at least {} bytes",
            path.display(),
            natter_sessions::MIN_SECRET_BYTES
        )));
    }
    Ok(secret)
}

/// Earlier JWT keys, accepted while a rotation is under way (docs/operations.md,
/// "Authentication"). Every role that verifies tokens takes it.
#[derive(clap::Args, Debug, Default)]
pub struct JwtPreviousArgs {
    /// Files holding previous JWT secrets, comma-separated: tokens they signed are still
    /// accepted (each token names its key by `kid`); nothing new is signed with them.
    /// Set during a key rotation, then removed once those tokens have expired.
    //
    // Strings, not paths: clap refuses an empty path, and an empty variable (or a
    // trailing comma) should mean "none".
    #[arg(long, env = "NATTER_JWT_PREVIOUS_SECRET_FILES", value_delimiter = ',')]
    jwt_previous_secret_files: Vec<String>,
}

impl JwtPreviousArgs {
    /// The previous secrets, read and checked (empty names from a trailing comma or an
    /// empty variable are skipped).
    pub(crate) fn secrets(&self) -> Result<Vec<Vec<u8>>, Failure> {
        self.jwt_previous_secret_files
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(|p| read_secret_of("jwt-previous-secret-files", std::path::Path::new(p)))
            .collect()
    }
}

/// Failed logins allowed per client address (the sessions role and `natter serve`).
#[derive(clap::Args, Debug)]
pub struct LoginLimitArgs {
    /// Failed logins one client address (an IPv6 /64) may make per window before its
    /// logins are refused (429) until the window ends; 0 turns the limit off. Behind a
    /// load balancer, set --trusted-proxies so the address is the client's.
    #[arg(long, env = "NATTER_LOGIN_FAILURES_PER_IP", default_value_t = 20)]
    login_failures_per_ip: u32,
    /// The window of --login-failures-per-ip, in seconds, from an address's first failure.
    #[arg(long, env = "NATTER_LOGIN_FAILURES_WINDOW_S", default_value_t = 600)]
    login_failures_window_s: u64,
}

impl LoginLimitArgs {
    pub(crate) fn addr_limits(&self) -> Result<natter_sessions::AddrLimits, Failure> {
        positive("login-failures-window-s", self.login_failures_window_s)?;
        Ok(natter_sessions::AddrLimits {
            failures: self.login_failures_per_ip,
            window: Duration::from_secs(self.login_failures_window_s),
        })
    }
}

/// The access-token verifier of the roles that check tokens (edge, media, calls), from
/// the sessions role's `--jwt-secret-file` and the `--jwt-previous-secret-files`.
fn read_verifier(
    path: &std::path::Path,
    previous: &JwtPreviousArgs,
) -> Result<natter_sessions::TokenVerifier, Failure> {
    let secret = read_secret(path)?;
    let verifier = natter_sessions::TokenVerifier::from_secrets(&secret, &previous.secrets()?)
        .map_err(|e| config_error(anyhow::anyhow!("--jwt-secret-file: {e}")))?;
    if let Some((signing, previous)) = verifier.key_ids().split_first() {
        tracing::info!(
            signing_kid = %signing,
            previous_kids = %previous.join(","),
            "accepting access tokens of these JWT keys"
        );
    }
    Ok(verifier)
}

fn positive(name: &str, value: u64) -> Result<(), Failure> {
    if value == 0 {
        return Err(config_error(anyhow::anyhow!("--{name} must be positive")));
    }
    Ok(())
}

async fn connect_nats(args: &NatsArgs, name: String) -> Result<NatsBus, Failure> {
    if args.nats_subscription_capacity == 0 {
        return Err(config_error(anyhow::anyhow!(
            "--nats-subscription-capacity must be positive"
        )));
    }
    let nats = NatsBus::connect(NatsConfig {
        url: args.nats.clone(),
        name: name.clone(),
        subscription_capacity: args.nats_subscription_capacity,
        ..Default::default()
    })
    .await
    .with_context(|| format!("connecting to NATS at {}", args.nats))
    .map_err(Failure::Runtime)?;
    // Every role reports its metrics for the admin API's stats.
    crate::metrics::report_stats(Arc::new(nats.clone()), &name);
    Ok(nats)
}

/// What a role's `/readyz` checks: NATS, Redis for the roles that need it, and the
/// store of the roles that own one.
pub(crate) struct Ready {
    nats: NatsBus,
    redis: Option<RedisProbe>,
    store: Option<StoreProbe>,
}

impl From<NatsBus> for Ready {
    fn from(nats: NatsBus) -> Ready {
        Ready {
            nats,
            redis: None,
            store: None,
        }
    }
}

impl Ready {
    /// NATS and the Redis at `url`.
    fn with_redis(nats: NatsBus, url: &str) -> Result<Ready, Failure> {
        Ok(Ready {
            nats,
            redis: Some(RedisProbe::new(url)?),
            store: None,
        })
    }

    /// Also the store, by one cheap read (`read` answers whether it succeeded).
    fn with_store<F, Fut>(mut self, read: F) -> Ready
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        self.store = Some(StoreProbe(Arc::new(move || Box::pin(read()))));
        self
    }
}

/// Answers "is the store reachable?" with one read by primary key of something that need
/// not exist (ScyllaDB, the store role over NATS, or an embedded file), within 2 s.
#[derive(Clone)]
struct StoreProbe(
    #[allow(clippy::type_complexity)]
    Arc<
        dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
    >,
);

impl StoreProbe {
    async fn ok(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), (self.0)())
            .await
            .unwrap_or(false)
    }
}

/// A conversation whose head the messages role's readiness probe reads (it need not
/// exist: a missing one has head 0).
fn probe_conversation() -> natter_proto::ConversationId {
    natter_proto::ConversationId::group(natter_proto::GroupId(1))
}

/// Answers "is Redis reachable?" with a PING on one kept connection (re-opened after a
/// failure), within a second.
#[derive(Clone)]
struct RedisProbe {
    client: redis::Client,
    conn: Arc<tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>,
}

impl RedisProbe {
    fn new(url: &str) -> Result<RedisProbe, Failure> {
        let client =
            redis::Client::open(url).map_err(|e| config_error(anyhow::anyhow!("--redis: {e}")))?;
        Ok(RedisProbe {
            client,
            conn: Arc::default(),
        })
    }

    async fn ok(&self) -> bool {
        let ping = async {
            let mut conn = self.conn.lock().await;
            if conn.is_none() {
                *conn = self.client.get_multiplexed_async_connection().await.ok();
            }
            let Some(c) = conn.as_mut() else {
                return false;
            };
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(c).await;
            if pong.is_err() {
                *conn = None;
            }
            pong.is_ok()
        };
        tokio::time::timeout(Duration::from_secs(1), ping)
            .await
            .unwrap_or(false)
    }
}

fn health(ready: impl Into<Ready>) -> Router {
    let Ready { nats, redis, store } = ready.into();
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let nats_up = nats.is_connected();
                let redis = redis.clone();
                let store = store.clone();
                async move {
                    if !nats_up {
                        return (StatusCode::SERVICE_UNAVAILABLE, "nats unreachable\n");
                    }
                    if let Some(probe) = redis
                        && !probe.ok().await
                    {
                        return (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable\n");
                    }
                    if let Some(probe) = store
                        && !probe.ok().await
                    {
                        return (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n");
                    }
                    (StatusCode::OK, "ready\n")
                }
            }),
        )
}

/// Binds and serves `app` until `stop`; prints the address for scripts and tests.
pub(crate) async fn serve_http(
    role: &str,
    addr: SocketAddr,
    app: Router,
    stop: CancellationToken,
) -> Result<JoinHandle<std::io::Result<()>>, Failure> {
    let listener = listen(addr)
        .with_context(|| format!("binding {addr}"))
        .map_err(Failure::Runtime)?;
    let local = listener
        .local_addr()
        .context("reading the bound address")
        .map_err(Failure::Runtime)?;
    tracing::info!(role, addr = %local, "natter serving");
    let app = app
        .merge(crate::metrics::router())
        .layer(axum::middleware::from_fn(crate::metrics::request_ids))
        .layer(axum::middleware::from_fn(crate::metrics::client_addr));
    // Tests and scripts read this line to learn the port.
    println!("natter listening on http://{local}");
    Ok(tokio::spawn(async move {
        // Frames are small and latency-bound: no Nagle delay on any connection.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    }))
}

/// The tail every bus service role shares: health on `listen`, then run until SIGTERM or
/// Ctrl-C, stop the service (in-flight requests answered within `grace`), then the HTTP
/// server.
async fn run_service(
    name: &'static str,
    listen: SocketAddr,
    ready: impl Into<Ready>,
    stop: CancellationToken,
    service: JoinHandle<()>,
    grace: Duration,
) -> Result<(), Failure> {
    let http_stop = CancellationToken::new();
    let server = serve_http(name, listen, health(ready), http_stop.clone()).await?;
    tracing::info!("{name} running");

    shutdown_signal().await;
    tracing::info!("shutting down");
    stop.cancel();
    wait(name, service, grace).await;
    http_stop.cancel();
    wait("http", server, grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// Like [`run_service`] for a role that also serves REST routes: on SIGTERM the HTTP
/// server stops first (requests in flight finish), then the service.
async fn run_service_with_routes(
    name: &'static str,
    listen: SocketAddr,
    ready: impl Into<Ready>,
    routes: Router,
    stop: CancellationToken,
    service: JoinHandle<()>,
    grace: Duration,
) -> Result<(), Failure> {
    let http_stop = CancellationToken::new();
    let app = health(ready).merge(routes);
    let server = serve_http(name, listen, app, http_stop.clone()).await?;

    shutdown_signal().await;
    tracing::info!("shutting down");
    http_stop.cancel();
    wait("http", server, grace).await;
    stop.cancel();
    wait(name, service, grace).await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait(name: &str, task: JoinHandle<impl Sized>, grace: Duration) {
    match tokio::time::timeout(grace, task).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(task = name, error = %e, "task failed"),
        Err(_) => tracing::warn!(task = name, "did not stop within the grace period"),
    }
}

pub async fn edge(args: EdgeArgs) -> Result<(), Failure> {
    let verifier = read_verifier(&args.jwt_secret_file, &args.jwt_previous)?;
    positive("idle-timeout-s", args.idle_timeout_s)?;
    if args.directory_ttl_ms < 300 {
        return Err(config_error(anyhow::anyhow!(
            "--directory-ttl-ms must be at least 300"
        )));
    }
    let edge_limits = args.limits.config()?;
    let node = args.node_id.clone().unwrap_or_else(|| default_name("edge"));
    let directory: Arc<dyn natter_sessions::directory::SessionDirectory> = match &args.redis {
        // Lazy: the edge serves while Redis is still starting; the directory catches up.
        Some(url) => Arc::new(
            natter_sessions::directory::RedisDirectory::connect_lazy(url, "natter")
                .map_err(|e| config_error(anyhow::anyhow!("--redis: {e}")))?,
        ),
        None => {
            tracing::warn!("no --redis: the session directory is local to this edge");
            Arc::new(natter_sessions::directory::MemoryDirectory::new())
        }
    };
    let nats = connect_nats(&args.nats, format!("natter-edge-{node}")).await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let stop = CancellationToken::new();
    let edge = natter_edge::Edge::new(
        natter_edge::Config {
            node_id: node.clone(),
            idle_timeout: Duration::from_secs(args.idle_timeout_s),
            directory_ttl: Duration::from_millis(args.directory_ttl_ms),
            presence_debounce: Duration::from_millis(args.presence_debounce_ms),
            reconnect_spread: Duration::from_millis(args.reconnect_spread_ms),
            ..edge_limits
        },
        bus,
        verifier,
        directory,
        stop.clone(),
    );
    let ready = match &args.redis {
        Some(url) => Ready::with_redis(nats, url)?,
        None => nats.into(),
    };
    let app = health(ready)
        .merge(edge.router())
        .merge(crate::openapi::router());
    let server = serve_http("edge", args.listen, app, stop.clone()).await?;
    tracing::info!(node = %node, "edge running");

    shutdown_signal().await;
    tracing::info!("shutting down: draining connections");
    stop.cancel();
    let grace = Duration::from_secs(args.drain_grace_s);
    if !edge.drained(grace).await {
        tracing::warn!(
            open = edge.open_connections(),
            "connections still open after the drain grace"
        );
    }
    wait("http", server, grace).await;
    tracing::info!("stopped");
    Ok(())
}

pub async fn messages(args: MessagesArgs) -> Result<(), Failure> {
    positive("lease-ttl-ms", args.lease_ttl_ms)?;
    positive("store-timeout-ms", args.scylla.store_timeout_ms)?;
    positive("store-breaker-cooldown-ms", args.store_breaker_cooldown_ms)?;
    if args.store_breaker_failure_percent > 100 {
        return Err(config_error(anyhow::anyhow!(
            "--store-breaker-failure-percent must be at most 100"
        )));
    }
    let breaker = natter_messages::BreakerConfig {
        failures: args.store_breaker_failures,
        failure_percent: args.store_breaker_failure_percent,
        cooldown: Duration::from_millis(args.store_breaker_cooldown_ms),
    };
    let instance = args
        .instance_id
        .clone()
        .unwrap_or_else(|| default_name("messages"));
    let nats = connect_nats(&args.nats, format!("natter-messages-{instance}")).await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let sc = &args.scylla;
    let store_timeout = Duration::from_millis(sc.store_timeout_ms);
    let store: Arc<dyn natter_messages::MessageStore> = match sc.config() {
        None => {
            tracing::info!("no --scylla: messages are kept by the store role over NATS");
            natter_messages::remote_store::RemoteStore::new(bus.clone(), store_timeout)
        }
        Some(config) => natter_messages::ScyllaStore::connect(config)
            .await
            .with_context(|| sc.connecting())
            .map_err(Failure::Runtime)?,
    };
    let mut lease = natter_messages::LeaseConfig::new(args.redis.clone(), instance.clone());
    lease.ttl = Duration::from_millis(args.lease_ttl_ms);
    // Readiness asks the store itself, not the breaker's opinion of it.
    let probe_store = store.clone();
    let store: Arc<dyn natter_messages::MessageStore> =
        natter_messages::Breaker::new(store, breaker);
    let stop = CancellationToken::new();
    let running = natter_messages::start(
        natter_messages::Config {
            notify: args.notify,
            ..Default::default()
        },
        store,
        bus,
        natter_messages::Placement::Leased(lease),
        stop.clone(),
    )
    .await
    .context("starting the messages service")
    .map_err(config_error)?;
    let http_stop = CancellationToken::new();
    let owned = running.owned.clone();
    let ready = Ready::with_redis(nats, &args.redis)?.with_store(move || {
        let store = probe_store.clone();
        async move { store.head(&probe_conversation()).await.is_ok() }
    });
    let app = health(ready).merge(crate::openapi::partitions(owned));
    let server = serve_http("messages", args.listen, app, http_stop.clone()).await?;
    tracing::info!(instance = %instance, "messages running");

    shutdown_signal().await;
    tracing::info!("shutting down: handing partitions over");
    stop.cancel();
    let grace = Duration::from_secs(args.drain_grace_s);
    wait("messages", running.task, grace).await;
    http_stop.cancel();
    wait("http", server, grace).await;
    tracing::info!("stopped");
    Ok(())
}

pub async fn sessions(args: SessionsArgs) -> Result<(), Failure> {
    let secret = read_secret(&args.jwt_secret_file)?;
    let jwt_previous_secrets = args.jwt_previous.secrets()?;
    let addr_limits = args.login_limits.addr_limits()?;
    positive("access-ttl-s", args.access_ttl_s)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))
        .map_err(Failure::Config)?;
    let sessions = natter_sessions::Sessions::open(natter_sessions::Config {
        data_dir: args.data_dir.clone(),
        jwt_secret: Some(secret),
        jwt_previous_secrets,
        access_ttl: Duration::from_secs(args.access_ttl_s),
        argon2_memory_kib: args.argon2_memory_kib,
        addr_limits,
        ..Default::default()
    })
    .context("opening the sessions store")
    .map_err(Failure::Runtime)?;
    let nats = connect_nats(&args.nats, "natter-sessions".to_owned()).await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let stop = CancellationToken::new();
    let service = natter_sessions::start(sessions.clone(), bus.clone(), stop.clone())
        .await
        .context("starting the sessions bus endpoints")
        .map_err(Failure::Runtime)?;
    let http_stop = CancellationToken::new();
    let app = health(nats)
        .merge(natter_sessions::router(sessions, bus))
        .merge(crate::openapi::router());
    let server = serve_http("sessions", args.listen, app, http_stop.clone()).await?;

    shutdown_signal().await;
    tracing::info!("shutting down");
    let grace = Duration::from_secs(args.drain_grace_s);
    http_stop.cancel();
    wait("http", server, grace).await;
    stop.cancel();
    wait("sessions", service, grace).await;
    tracing::info!("stopped");
    Ok(())
}

pub async fn store(args: StoreArgs) -> Result<(), Failure> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))
        .map_err(Failure::Config)?;
    let store = natter_messages::RedbStore::open(&args.data_dir.join("messages.redb"))
        .context("opening the message store")
        .map_err(Failure::Runtime)?;
    let nats = connect_nats(&args.nats, "natter-store".to_owned()).await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let stop = CancellationToken::new();
    let service = natter_messages::remote_store::serve(store, bus, stop.clone())
        .await
        .context("serving the store on the bus")
        .map_err(Failure::Runtime)?;
    let grace = Duration::from_secs(args.drain_grace_s);
    run_service("store", args.listen, nats, stop, service, grace).await
}

pub async fn groups(args: GroupsArgs) -> Result<(), Failure> {
    positive("store-timeout-ms", args.scylla.store_timeout_ms)?;
    if args.max_group_members < 2 {
        return Err(config_error(anyhow::anyhow!(
            "--max-group-members must be at least 2"
        )));
    }
    positive("max-groups-per-user", args.max_groups_per_user.into())?;
    let sc = &args.scylla;
    let store: Arc<dyn natter_groups::GroupStore> = match sc.config() {
        None => natter_groups::RedbGroupStore::open(&embedded(
            &args.data_dir,
            "groups.redb",
            "groups are",
        )?)
        .context("opening the group store")
        .map_err(Failure::Runtime)?,
        Some(config) => natter_groups::ScyllaGroupStore::connect(config)
            .await
            .with_context(|| sc.connecting())
            .map_err(Failure::Runtime)?,
    };
    let nats = connect_nats(
        &args.nats,
        format!("natter-groups-{}", default_name("groups")),
    )
    .await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let probe_store = store.clone();
    let ready = Ready::from(nats).with_store(move || {
        let store = probe_store.clone();
        async move { store.load(natter_proto::GroupId(1)).await.is_ok() }
    });
    let stop = CancellationToken::new();
    let service = natter_groups::start(
        natter_groups::Config {
            limits: natter_groups::Limits {
                max_members: args.max_group_members,
                max_groups_per_user: args.max_groups_per_user,
                ..Default::default()
            },
            ..Default::default()
        },
        store,
        bus,
        stop.clone(),
    )
    .await
    .context("starting the groups service")
    .map_err(Failure::Runtime)?;
    let grace = Duration::from_secs(args.drain_grace_s);
    run_service("groups", args.listen, ready, stop, service, grace).await
}

pub async fn people(args: PeopleArgs) -> Result<(), Failure> {
    positive("store-timeout-ms", args.scylla.store_timeout_ms)?;
    let config = args.people.config()?;
    let sc = &args.scylla;
    let store: Arc<dyn natter_people::PeopleStore> = match sc.config() {
        None => Arc::new(
            natter_people::RedbPeopleStore::open(&embedded(
                &args.data_dir,
                "people.redb",
                "people data is",
            )?)
            .context("opening the people store")
            .map_err(Failure::Runtime)?,
        ),
        Some(config) => Arc::new(
            natter_people::ScyllaPeopleStore::connect(config)
                .await
                .with_context(|| sc.connecting())
                .map_err(Failure::Runtime)?,
        ),
    };
    let nats = connect_nats(
        &args.nats,
        format!("natter-people-{}", default_name("people")),
    )
    .await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let probe_store = store.clone();
    let ready = Ready::from(nats).with_store(move || {
        let store = probe_store.clone();
        async move { store.profile(natter_proto::UserId(1)).await.is_ok() }
    });
    let stop = CancellationToken::new();
    let service = natter_people::start(store, bus, config, stop.clone())
        .await
        .context("starting the people service")
        .map_err(Failure::Runtime)?;
    let grace = Duration::from_secs(args.drain_grace_s);
    run_service("people", args.listen, ready, stop, service, grace).await
}

pub async fn media(args: MediaArgs) -> Result<(), Failure> {
    positive("store-timeout-ms", args.scylla.store_timeout_ms)?;
    let verifier = read_verifier(&args.jwt_secret_file, &args.jwt_previous)?;
    let (config, objects) = args.media.config(&args.data_dir)?;
    let sc = &args.scylla;
    let store: Arc<dyn natter_media::MediaStore> = match sc.config() {
        None => Arc::new(
            natter_media::RedbMediaStore::open(&embedded(
                &args.data_dir,
                "media.redb",
                "media records are",
            )?)
            .context("opening the media store")
            .map_err(Failure::Runtime)?,
        ),
        Some(config) => Arc::new(
            natter_media::ScyllaMediaStore::connect(config)
                .await
                .with_context(|| sc.connecting())
                .map_err(Failure::Runtime)?,
        ),
    };
    let nats = connect_nats(
        &args.nats,
        format!("natter-media-{}", default_name("media")),
    )
    .await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let probe_store = store.clone();
    let ready = Ready::from(nats).with_store(move || {
        let store = probe_store.clone();
        async move { store.media("readyz-probe").await.is_ok() }
    });
    let auth = natter_sessions::DeviceAuth::new(verifier, bus.clone(), config.request_timeout);
    let media = natter_media::Media::new(config, store, objects, bus.clone(), auth);
    let stop = CancellationToken::new();
    let service = natter_media::describe::start(media.clone(), bus, stop.clone())
        .await
        .context("starting the media service")
        .map_err(Failure::Runtime)?;
    let routes = natter_media::router(media).merge(crate::openapi::router());
    let grace = Duration::from_secs(args.drain_grace_s);
    run_service_with_routes("media", args.listen, ready, routes, stop, service, grace).await
}

pub async fn calls(args: CallsArgs) -> Result<(), Failure> {
    let verifier = read_verifier(&args.jwt_secret_file, &args.jwt_previous)?;
    let config = args.calls.config()?;
    let ice = args.calls.ice(args.calls.turn_secret()?)?;
    let nats = connect_nats(
        &args.nats,
        format!("natter-calls-{}", default_name("calls")),
    )
    .await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let audiences = natter_people::Audiences::start(bus.clone(), config.request_timeout)
        .await
        .context("subscribing to people changes")
        .map_err(Failure::Runtime)?;
    let auth = natter_sessions::DeviceAuth::new(verifier, bus.clone(), config.request_timeout);
    let stop = CancellationToken::new();
    let directory: Option<Arc<dyn natter_sessions::directory::SessionDirectory>> = match &args.redis
    {
        None => {
            tracing::warn!(
                "no --redis: devices whose edge dies without a word stay in their calls until the other side hangs up"
            );
            None
        }
        Some(url) => Some(Arc::new(
            natter_sessions::directory::RedisDirectory::connect_lazy(url, "natter")
                .with_context(|| format!("--redis {url}"))
                .map_err(Failure::Config)?,
        )),
    };
    let service = natter_calls::service::start(bus, audiences, directory, config, stop.clone())
        .await
        .context("starting the calls service")
        .map_err(Failure::Runtime)?;
    let routes = natter_calls::ice::router(Arc::new(ice), auth).merge(crate::openapi::router());
    let grace = Duration::from_secs(args.drain_grace_s);
    let ready = match &args.redis {
        Some(url) => Ready::with_redis(nats, url)?,
        None => nats.into(),
    };
    run_service_with_routes("calls", args.listen, ready, routes, stop, service, grace).await
}

pub async fn admin(args: AdminArgs) -> Result<(), Failure> {
    let tokens = natter_admin::AdminTokens::from_file(&args.admin_token_file)
        .context("--admin-token-file")
        .map_err(Failure::Config)?;
    positive("admin-request-timeout-ms", args.request_timeout_ms)?;
    let nats = connect_nats(
        &args.nats,
        format!("natter-admin-{}", default_name("admin")),
    )
    .await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let directory = natter_sessions::directory::RedisDirectory::connect_lazy(&args.redis, "natter")
        .with_context(|| format!("--redis {}", args.redis))
        .map_err(Failure::Config)?;
    let stop = CancellationToken::new();
    let stats = natter_admin::StatsCollector::start(bus.clone(), stop.clone())
        .await
        .context("subscribing to natter.stats")
        .map_err(Failure::Runtime)?;
    let admin = natter_admin::Admin::new(
        natter_admin::Config {
            request_timeout: Duration::from_millis(args.request_timeout_ms),
        },
        bus,
        Arc::new(directory),
        tokens,
        stats,
    );
    // The admin role holds no state: its "service" is the stats subscription, which
    // ends with `stop`.
    let service = tokio::spawn(stop.clone().cancelled_owned());
    let ready = Ready::with_redis(nats, &args.redis)?;
    let grace = Duration::from_secs(args.drain_grace_s);
    run_service_with_routes(
        "admin",
        args.listen,
        ready,
        natter_admin::router(admin),
        stop,
        service,
        grace,
    )
    .await
}

pub async fn turn(args: TurnArgs) -> Result<(), Failure> {
    let secret = read_turn_secret(&args.turn_secret_file)?;
    let Some(config) = args.turn.config(&secret)? else {
        return Err(config_error(anyhow::anyhow!(
            "natter turn needs --turn-listen (e.g. 0.0.0.0:3478)"
        )));
    };
    let relay = natter_calls::turn::TurnServer::start(config)
        .await
        .context("starting the TURN server")
        .map_err(Failure::Runtime)?;
    tracing::info!(addr = %relay.local_addr(), "TURN relay listening");
    let http_stop = CancellationToken::new();
    let app = Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(|| async { (StatusCode::OK, "ready\n") }));
    let server = serve_http("turn", args.listen, app, http_stop.clone()).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    http_stop.cancel();
    wait("http", server, Duration::from_secs(5)).await;
    relay.close().await;
    tracing::info!("stopped");
    Ok(())
}

pub async fn presence(args: PresenceArgs) -> Result<(), Failure> {
    positive("subscription-ttl-s", args.subscription_ttl_s)?;
    if args.subscription_ttl_s > 24 * 3600 {
        return Err(config_error(anyhow::anyhow!(
            "--subscription-ttl-s must be at most 86400 (a day)"
        )));
    }
    let store = natter_presence::RedisPresence::connect(
        &args.redis,
        &args.redis_prefix,
        natter_sessions::directory::DEFAULT_TIMEOUT,
    )
    .await
    .with_context(|| format!("connecting to Redis at {}", args.redis))
    .map_err(Failure::Runtime)?;
    let nats = connect_nats(
        &args.nats,
        format!("natter-presence-{}", default_name("presence")),
    )
    .await?;
    let bus: Arc<dyn Bus> = Arc::new(nats.clone());
    let stop = CancellationToken::new();
    let audiences = natter_people::Audiences::start(bus.clone(), Duration::from_secs(5))
        .await
        .context("subscribing to people changes")
        .map_err(Failure::Runtime)?;
    let service = natter_presence::start(
        Arc::new(store),
        audiences,
        bus,
        natter_presence::Config {
            subscription_ttl: Duration::from_secs(args.subscription_ttl_s),
            ..Default::default()
        },
        stop.clone(),
    )
    .await
    .context("starting the presence service")
    .map_err(Failure::Runtime)?;
    let grace = Duration::from_secs(args.drain_grace_s);
    let ready = Ready::with_redis(nats, &args.redis)?;
    run_service("presence", args.listen, ready, stop, service, grace).await
}
