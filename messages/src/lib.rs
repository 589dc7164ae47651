//! natter-messages: conversation logs, seq assignment, dedupe, per-device cursors
//! (receipts), sync, history and typing relay. The [`MessageStore`] trait is the durable
//! state; [`RedbStore`] implements it in one embedded redb file and [`conformance`] is the
//! suite every implementation must pass. [`Breaker`] wraps any of them in a circuit
//! breaker that fails calls fast while the store is down. [`start`] serves the bus
//! subjects.
//!
//! Ordering: each conversation belongs to one [`natter_proto::Partition`], and each
//! partition has one worker task here. The worker assigns seqs from an in-memory head
//! (loaded from the store on first use, dropped whenever an append fails) and stores a
//! whole batch with one `append` before it acks, so acked messages are durable, retried
//! sends are answered with their original Ack, and seqs are gap-free.
//!
//! Groups: the worker of a group's conversation also orders the group's changes (checked
//! and stored by the groups service, written here as system messages) and fans its
//! messages out to the members it caches; see `partition.rs` and `groups.rs`.

mod breaker;
pub mod conformance;
mod groups;
mod media;
mod notify;
mod ownership;
mod partition;
mod queries;
mod redb_store;
pub mod remote_store;
mod scylla_store;
mod store;

use std::{sync::Arc, time::Duration};

use natter_bus::{Bus, BusError};
use natter_proto::{DeviceId, ErrorCode, Partition, Subject, UserId, bus, error, v1};
use tokio::{sync::mpsc, task::JoinHandle, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub use breaker::{Breaker, BreakerConfig};
pub use ownership::{LeaseConfig, Owned, Placement};
pub use redb_store::RedbStore;
pub use scylla_store::{ScyllaConfig, ScyllaStore};
pub use store::{
    CursorAdvance, DedupeKey, DeviceCursor, MemberCursor, MessageStore, NewMessage, StoreError,
    redacted,
};

/// Queue group of the sync and history subscriptions.
pub const QUEUE_GROUP: &str = "messages";

/// Buffer of the sync and history subscriptions.
const QUERY_SUB_CAPACITY: usize = 4096;

/// Settings of the messages service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Timeout of the service's own bus requests (user lookups at sessions, group
    /// states and changes at the groups service).
    pub request_timeout: Duration,
    /// Publish a `NotifyJob` for every committed batch on `Subject::notify()` (durably)
    /// for the notifier (push notifications). Off when no notifier runs: in a cluster
    /// the jobs would wait for a consumer in JetStream.
    pub notify: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            request_timeout: Duration::from_secs(5),
            notify: false,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum MessagesError {
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("partition leases: {0}")]
    Lease(#[from] ownership::LeaseError),
}

/// What every task of the service shares.
pub(crate) struct Shared {
    pub store: Arc<dyn MessageStore>,
    pub bus: Arc<dyn Bus>,
    pub users: natter_sessions::Users,
    pub groups: groups::GroupClient,
    /// Who blocked whom (from the people service, cached): a direct message to someone
    /// who blocked its sender is stored withheld, typing and receipts are not relayed.
    pub audiences: Arc<natter_people::Audiences>,
    /// Describes (and pins) the media a message carries.
    pub media: natter_media::client::MediaClient,
    /// Where committed batches go for the notifier (`Config::notify`).
    pub notify: Option<notify::Publisher>,
}

/// A running messages service.
pub struct Running {
    /// Completes once the service has stopped (after `shutdown`).
    pub task: JoinHandle<()>,
    /// The partitions this instance owns right now.
    pub owned: Owned,
}

/// Starts the service: serves `Subject::sync()` and `Subject::history()` (queue group
/// [`QUEUE_GROUP`]) and the partitions `placement` gives this instance, each with its own
/// owner task. Returns once the queries are subscribed (with [`Placement::All`], once
/// every partition is too). On `shutdown` the service stops taking requests, finishes the
/// batches in progress (their replies sent), answers what is still buffered with
/// UNAVAILABLE, hands leased partitions over, and the task completes.
pub async fn start(
    config: Config,
    store: Arc<dyn MessageStore>,
    bus: Arc<dyn Bus>,
    placement: Placement,
    shutdown: CancellationToken,
) -> Result<Running, MessagesError> {
    let sync = bus
        .queue_subscribe(&Subject::sync(), QUEUE_GROUP, QUERY_SUB_CAPACITY)
        .await?;
    let history = bus
        .queue_subscribe(&Subject::history(), QUEUE_GROUP, QUERY_SUB_CAPACITY)
        .await?;
    let audiences = natter_people::Audiences::start(bus.clone(), config.request_timeout).await?;
    let shared = Arc::new(Shared {
        store,
        bus: bus.clone(),
        users: natter_sessions::Users::new(bus.clone(), config.request_timeout),
        groups: groups::GroupClient::new(bus.clone(), config.request_timeout),
        media: natter_media::client::MediaClient::new(bus.clone(), config.request_timeout),
        audiences,
        notify: config.notify.then(|| notify::Publisher::start(bus.clone())),
    });
    let mut tasks = JoinSet::new();
    let owned = Owned::default();
    match placement {
        Placement::All => {
            let (ready_tx, mut ready_rx) = mpsc::channel::<()>(usize::from(Partition::COUNT));
            for p in Partition::all() {
                let lease = ownership::Lease::forever(shutdown.clone());
                let shared = shared.clone();
                let ready = ready_tx.clone();
                tasks.spawn(async move {
                    partition::own(p, shared, lease, Some(ready)).await;
                });
            }
            drop(ready_tx);
            // Every owner has subscribed (or failed and logged why) once all senders
            // are gone or have reported.
            let mut n = 0;
            while n < Partition::COUNT && ready_rx.recv().await.is_some() {
                n += 1;
            }
        }
        Placement::Leased(lease_config) => {
            let spawn_shared = shared.clone();
            let spawn: ownership::SpawnOwner = Arc::new(move |p, lease| {
                tokio::spawn(partition::own(p, spawn_shared.clone(), lease, None))
            });
            let manager =
                ownership::Manager::new(lease_config, spawn, owned.clone(), shutdown.clone())?;
            tasks.spawn(manager.run());
        }
    }
    tasks.spawn(queries::serve(
        sync,
        queries::Kind::Sync,
        shared.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(queries::serve(
        history,
        queries::Kind::History,
        shared,
        shutdown,
    ));
    let task = tokio::spawn(async move {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a messages task failed");
            }
        }
    });
    Ok(Running { task, owned })
}

/// The verified identity attached by the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    pub user: UserId,
    pub device: DeviceId,
}

pub(crate) fn caller_of(caller: Option<bus::Caller>) -> Result<Caller, v1::Error> {
    let c = caller.ok_or_else(|| error(ErrorCode::InvalidArgument, "caller missing"))?;
    match (UserId::new(c.user_id), DeviceId::new(c.device_id)) {
        (Ok(user), Ok(device)) => Ok(Caller { user, device }),
        _ => Err(error(
            ErrorCode::InvalidArgument,
            "caller ids must be nonzero",
        )),
    }
}

/// Maps a store failure to a client error without leaking internals (logged here). A
/// call the circuit breaker refused is UNAVAILABLE and logged at debug level only: the
/// breaker logged its opening once, and every request meets it while it is open.
pub(crate) fn store_failure(e: &StoreError) -> v1::Error {
    match e {
        StoreError::Unavailable(_) => {
            tracing::debug!(error = %e, "message store call refused");
            error(ErrorCode::Unavailable, "message store unavailable, retry")
        }
        StoreError::Closed => {
            tracing::error!(error = %e, "message store failure");
            error(ErrorCode::Unavailable, "service shutting down, retry")
        }
        _ => {
            tracing::error!(error = %e, "message store failure");
            error(ErrorCode::Internal, "storage failure, retry")
        }
    }
}

/// What `reader` gets of a stored message: the message itself, but for a withheld one
/// (sent while the recipient blocked its sender) the sender's copy without the flag and
/// everyone else's a placeholder that only holds its place in the order.
pub(crate) fn view_for(message: &v1::Message, reader: UserId) -> std::borrow::Cow<'_, v1::Message> {
    use std::borrow::Cow;
    if !message.withheld {
        return Cow::Borrowed(message);
    }
    if reader.get() == message.sender_user {
        return Cow::Owned(v1::Message {
            withheld: false,
            ..message.clone()
        });
    }
    Cow::Owned(v1::Message {
        conversation_id: message.conversation_id.clone(),
        seq: message.seq,
        message_id: message.message_id,
        created_at_ms: message.created_at_ms,
        withheld: true,
        ..Default::default()
    })
}

/// Runs a store call and records how long it took (`natter_store_latency_seconds{op}`).
pub(crate) async fn timed<T>(op: &'static str, call: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = call.await;
    metrics::histogram!("natter_store_latency_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    out
}
