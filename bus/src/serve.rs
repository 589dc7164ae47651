//! Serving requests from a subscription concurrently, with a bound: the loop every
//! request/reply service runs (sync, history, the store role).

use std::{future::Future, sync::Arc};

use futures::StreamExt as _;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{BusEvent, BusMessage, Subscription};

/// Takes requests off `sub` and runs `handle` on each in its own task, at most
/// `max_in_flight` at a time (past that it stops taking requests and the bus buffers),
/// until `shutdown` is cancelled or the subscription ends. Messages without a reply
/// subject are skipped (nobody waits for them). Waits for the tasks still running, then
/// returns the request it had taken but not started when `shutdown` came, if any; the
/// subscription is left with what is still buffered, for the caller to answer or drop.
pub async fn serve_requests<F, Fut>(
    name: &str,
    sub: &mut Subscription,
    max_in_flight: usize,
    shutdown: &CancellationToken,
    handle: F,
) -> Option<BusMessage>
where
    F: Fn(BusMessage) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut running = JoinSet::new();
    let mut unstarted = None;
    loop {
        let event = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            event = sub.next() => event,
        };
        let msg = match event {
            Some(BusEvent::Message(msg)) => msg,
            Some(BusEvent::Lagged) => {
                tracing::warn!(service = name, "subscription lagged: requests were dropped");
                continue;
            }
            None => {
                tracing::error!(service = name, "subscription ended");
                break;
            }
        };
        if msg.reply.is_none() {
            continue;
        }
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                unstarted = Some(msg);
                break;
            }
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                // The semaphore is never closed; stop like a shutdown if it were.
                Err(_) => break,
            },
        };
        while let Some(done) = running.try_join_next() {
            log_end(name, done);
        }
        let task = handle(msg);
        running.spawn(async move {
            let _permit = permit;
            task.await;
        });
    }
    while let Some(done) = running.join_next().await {
        log_end(name, done);
    }
    unstarted
}

fn log_end(name: &str, done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(service = name, error = %e, "a request task failed");
    }
}
