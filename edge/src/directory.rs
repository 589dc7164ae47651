//! Keeps the session directory (which edge holds which device) up to date without ever
//! making a connection wait for it. Connections send register/unregister notes to one
//! writer task per edge, which applies them in order to its own table (the truth for
//! this node) and to the shared directory (Redis in a cluster), and heartbeats the node.
//! When the directory was unreachable or lost this node's entries (a Redis restart, a
//! lapsed TTL), the writer rewrites them all from its table once it can. An in-process
//! directory (`natter serve`) cannot lose entries, so no table is kept for it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use natter_proto::{DeviceId, UserId};
use natter_sessions::directory::{Heartbeat, SessionDirectory};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A note from a connection.
enum Note {
    Connected(UserId, DeviceId, u64),
    Closed(UserId, DeviceId, u64),
}

/// The connections' handle to the writer. Cheap to clone.
#[derive(Clone)]
pub(crate) struct DirectoryNotes {
    tx: mpsc::UnboundedSender<Note>,
}

impl DirectoryNotes {
    pub fn connected(&self, user: UserId, device: DeviceId, connection: u64) {
        // The writer outlives every connection; after shutdown a note has no reader.
        let _ = self.tx.send(Note::Connected(user, device, connection));
    }

    pub fn closed(&self, user: UserId, device: DeviceId, connection: u64) {
        let _ = self.tx.send(Note::Closed(user, device, connection));
    }
}

/// Starts the writer. It runs until `stop` is cancelled and every note sent before that
/// is applied, then removes the node from the directory (a clean leave).
pub(crate) fn start(
    directory: Arc<dyn SessionDirectory>,
    node: String,
    ttl: Duration,
    stop: CancellationToken,
) -> (DirectoryNotes, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = Writer {
        directory,
        node,
        ttl,
        table: HashMap::new(),
        in_sync: false,
    };
    let task = tokio::spawn(writer.run(rx, stop));
    (DirectoryNotes { tx }, task)
}

struct Writer {
    directory: Arc<dyn SessionDirectory>,
    node: String,
    ttl: Duration,
    /// Live connections of this node: (user, device) -> connection id.
    table: HashMap<(UserId, DeviceId), u64>,
    /// False until the directory is known to hold exactly `table`.
    in_sync: bool,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Note>, stop: CancellationToken) {
        let mut beat = tokio::time::interval(self.ttl / 3);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                note = rx.recv() => match note {
                    Some(note) => self.apply(note).await,
                    None => break,
                },
                _ = beat.tick() => self.heartbeat().await,
            }
        }
        // The edge has drained: every connection has sent its Closed note.
        rx.close();
        while let Some(note) = rx.recv().await {
            self.apply_local(&note);
        }
        if let Err(e) = self.directory.remove_node(&self.node).await {
            tracing::warn!(error = %e, "could not leave the session directory; entries expire by themselves");
        }
    }

    /// Updates the table (not kept for an in-process directory, which cannot lose what
    /// it was told: one entry per connection less).
    fn apply_local(&mut self, note: &Note) {
        if self.directory.is_local() {
            return;
        }
        match *note {
            Note::Connected(user, device, conn) => {
                self.table.insert((user, device), conn);
            }
            Note::Closed(user, device, conn) => {
                if self.table.get(&(user, device)) == Some(&conn) {
                    self.table.remove(&(user, device));
                }
            }
        }
    }

    async fn apply(&mut self, note: Note) {
        self.apply_local(&note);
        if !self.in_sync {
            // Out of sync: the next heartbeat rewrites everything from the table.
            return;
        }
        let result = match note {
            Note::Connected(user, device, conn) => {
                self.directory
                    .register(&self.node, user, device, conn)
                    .await
            }
            Note::Closed(user, device, conn) => {
                self.directory
                    .unregister(&self.node, user, device, conn)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "session directory update failed; will resync");
            self.in_sync = false;
        }
    }

    async fn heartbeat(&mut self) {
        match self.directory.heartbeat(&self.node, self.ttl).await {
            Ok(Heartbeat::Renewed) if self.in_sync => {}
            Ok(_) => self.resync().await,
            Err(e) => {
                tracing::warn!(error = %e, "session directory heartbeat failed");
                self.in_sync = false;
            }
        }
    }

    /// Makes the directory hold exactly this node's table.
    async fn resync(&mut self) {
        // Clear what may be stale (missed unregisters), then join afresh.
        if let Err(e) = self.directory.remove_node(&self.node).await {
            tracing::warn!(error = %e, "session directory resync failed");
            return;
        }
        if let Err(e) = self.directory.heartbeat(&self.node, self.ttl).await {
            tracing::warn!(error = %e, "session directory resync failed");
            return;
        }
        for (&(user, device), &conn) in &self.table {
            if let Err(e) = self
                .directory
                .register(&self.node, user, device, conn)
                .await
            {
                tracing::warn!(error = %e, "session directory resync failed");
                return;
            }
        }
        tracing::info!(
            node = %self.node,
            connections = self.table.len(),
            "session directory in sync"
        );
        self.in_sync = true;
    }
}
