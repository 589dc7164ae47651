//! natter-messages: conversation logs, seq assignment, dedupe, per-device cursors
//! (receipts), sync, history and typing relay. The [`MessageStore`] trait is the durable
//! state; [`RedbStore`] implements it in one embedded redb file and [`conformance`] is the
//! suite every implementation must pass. [`start`] serves the bus subjects.
//!
//! Ordering: each conversation belongs to one [`natter_proto::Partition`], and each
//! partition has one worker task here. The worker assigns seqs from an in-memory head
//! (loaded from the store on first use, dropped whenever an append fails) and stores a
//! whole batch with one `append` before it acks, so acked messages are durable, retried
//! sends are answered with their original Ack, and seqs are gap-free.

pub mod conformance;
mod partition;
mod queries;
mod redb_store;
pub mod remote_store;
mod scylla_store;
mod store;
mod users;

use std::{sync::Arc, time::Duration};

use natter_bus::{Bus, BusError};
use natter_proto::{DeviceId, ErrorCode, Partition, Subject, UserId, bus, error, v1};
use tokio::{sync::mpsc, task::JoinHandle, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub use redb_store::RedbStore;
pub use scylla_store::{ScyllaConfig, ScyllaStore};
pub use store::{CursorAdvance, DedupeKey, DeviceCursor, MessageStore, NewMessage, StoreError};

/// Queue group of the sync and history subscriptions.
pub const QUEUE_GROUP: &str = "messages";

/// Buffer of the partition subscription (requests waiting for dispatch).
const PARTITION_SUB_CAPACITY: usize = 65_536;
/// Buffer of the sync and history subscriptions.
const QUERY_SUB_CAPACITY: usize = 4096;
/// Requests queued per partition worker.
const WORKER_QUEUE: usize = 1024;

/// Settings of the messages service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Timeout of the service's own bus requests (user lookups at sessions).
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum MessagesError {
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

/// What every task of the service shares.
pub(crate) struct Shared {
    pub store: Arc<dyn MessageStore>,
    pub bus: Arc<dyn Bus>,
    pub users: users::UserDirectory,
}

/// Subscribes every partition subject, `Subject::sync()` and `Subject::history()` (queue
/// group [`QUEUE_GROUP`]), spawns the workers and returns once subscribed. On `shutdown`
/// the service stops taking requests, finishes the batches in progress (their replies
/// sent), answers what is still queued with UNAVAILABLE, and the handle completes.
pub async fn start(
    config: Config,
    store: Arc<dyn MessageStore>,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, MessagesError> {
    let partitions = bus
        .subscribe(&Subject::all_partitions(), PARTITION_SUB_CAPACITY)
        .await?;
    let sync = bus
        .queue_subscribe(&Subject::sync(), QUEUE_GROUP, QUERY_SUB_CAPACITY)
        .await?;
    let history = bus
        .queue_subscribe(&Subject::history(), QUEUE_GROUP, QUERY_SUB_CAPACITY)
        .await?;
    let shared = Arc::new(Shared {
        store,
        bus: bus.clone(),
        users: users::UserDirectory::new(bus, config.request_timeout),
    });
    let mut tasks = JoinSet::new();
    let mut queues = Vec::with_capacity(usize::from(Partition::COUNT));
    for p in Partition::all() {
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        queues.push((p, tx));
        tasks.spawn(partition::run_worker(
            p,
            shared.clone(),
            rx,
            shutdown.clone(),
        ));
    }
    tasks.spawn(partition::dispatch(
        partitions,
        queues,
        shared.clone(),
        shutdown.clone(),
    ));
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
    Ok(tokio::spawn(async move {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a messages task failed");
            }
        }
    }))
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

/// Maps a store failure to a client error without leaking internals (logged here).
pub(crate) fn store_failure(e: &StoreError) -> v1::Error {
    tracing::error!(error = %e, "message store failure");
    match e {
        StoreError::Closed => error(ErrorCode::Unavailable, "service shutting down, retry"),
        _ => error(ErrorCode::Internal, "storage failure, retry"),
    }
}
