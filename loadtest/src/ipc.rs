//! What the coordinator and its worker processes say to each other: one JSON object per
//! line, the plan and controls on the worker's stdin, progress and results on its stdout.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{audit::Tally, stats::Series};

/// One provisioned device: who it is and the token it connects with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cred {
    pub user_id: u64,
    pub token: String,
}

/// What one worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Task {
    /// Connect every device (at most `concurrency` handshakes at once), then hold the
    /// connections until stopped (`hold`) or close them at once (connect storm).
    Connect {
        devices: Vec<Cred>,
        concurrency: usize,
        hold: bool,
    },
    /// Sender→receiver pairs, each sender keeping `window` messages unacked.
    Direct {
        pairs: Vec<(Cred, Cred)>,
        window: usize,
    },
    /// One sender stores `messages` for a receiver that is offline, then the receiver
    /// connects and syncs.
    Offline {
        sender: Cred,
        receiver: Cred,
        messages: u64,
        window: usize,
    },
    /// One sender and every other device a member of one group: `rate` messages a
    /// second (at most `window` unacked), each owed to every member device.
    Group {
        sender: Cred,
        members: Vec<Cred>,
        rate: f64,
        window: usize,
    },
    /// Every subscriber subscribes to `subject`'s presence; then `subject` connects and
    /// disconnects `cycles` times, and every subscriber must get a push for each change.
    Presence {
        subject: Cred,
        subscribers: Vec<Cred>,
        /// Not in `subject`'s contacts (contacts-only privacy): must see nothing.
        stranger: Option<Cred>,
        cycles: u32,
        /// `subject` shows its online state and last seen to its contacts only.
        contacts_only: bool,
        /// Seconds between one transition's last push and the next transition.
        pause_s: f64,
        /// Seconds a transition's pushes may take before the missing ones count as lost.
        transition_timeout_s: f64,
    },
}

/// Everything a worker needs, sent as its first stdin line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub worker: usize,
    /// Edges to connect to; a user goes to `ws_urls[user_id % len]` first.
    pub ws_urls: Vec<String>,
    /// `proto` or `json`.
    pub format: String,
    /// Source addresses to spread connections over (empty: the system's choice).
    pub source_ips: Vec<IpAddr>,
    /// WebSocket read buffer per connection, bytes.
    pub read_buffer: usize,
    pub body_bytes: usize,
    /// Seconds an unanswered request may take before it is retried.
    pub request_timeout_s: f64,
    /// Seconds allowed after the measured phase for everything owed to arrive.
    pub drain_s: f64,
    pub task: Task,
}

/// Coordinator → worker, after the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Start the measured phase.
    Go,
    /// End the measured phase now (Ctrl-C, or the coordinator's clock): drain and report.
    Stop,
}

/// Live counters of a worker, totals since it started.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub connected: u64,
    pub connect_failed: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Report {
    /// Set up (for `Connect { hold: true }`: every connection is up) and waiting for Go.
    Ready(Progress),
    Tick(Progress),
    Done(Box<Outcome>),
    /// The worker cannot go on.
    Failed(String),
}

/// A worker's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub tally: Tally,
    pub progress: Progress,
    /// Send→arrival (direct, group: every member device's delivery), connect→Welcome (connect), send→ack (offline), encoded.
    pub latency: String,
    /// Send→ack, encoded.
    pub ack_latency: String,
    pub series: Series,
    /// Seconds from Go to the end of the measured phase (last Welcome for a storm).
    pub measured_s: f64,
    /// Offline: seconds from the first send to the last ack.
    pub store_s: f64,
    /// Offline: seconds from the receiver's connect to its last message.
    pub sync_s: f64,
    /// Connect/idle: seconds from the first connect to the last Welcome.
    pub storm_s: f64,
    pub retries: u64,
    pub reconnects: u64,
    /// Error frames and failed connections, with the first few reasons.
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub interrupted: bool,
    /// Presence: the per-transition figures.
    #[serde(default)]
    pub presence: Option<PresenceOutcome>,
}

/// What the presence scenario measured. Times in nanoseconds; a transition starts when
/// the subject's Welcome arrives (online) or just before it closes (offline).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PresenceOutcome {
    pub subscribers: usize,
    /// Transitions carried out (two per cycle).
    pub transitions: u32,
    /// Per online transition: start → the last subscriber's push (complete ones only).
    pub online_last_ns: Vec<u64>,
    /// Per offline transition: start → the last subscriber's push (complete ones only).
    pub offline_last_ns: Vec<u64>,
    /// Per online transition: start → the first push.
    pub online_first_ns: Vec<u64>,
    pub offline_first_ns: Vec<u64>,
    /// The subject's connect → Welcome, per cycle.
    pub welcome_ns: Vec<u64>,
    /// Start → arrival of every push, per kind of transition (encoded histograms).
    pub online_latency: String,
    pub offline_latency: String,
    /// Pushes that arrived after their transition's timeout (already counted lost).
    pub late: u64,
    /// Pushes (or snapshots) showing the subject to the stranger, who may not see it.
    pub leaked: u64,
    /// Pushes whose state was neither the expected one nor a repeat.
    pub unexpected: u64,
    /// Setup: pushes repeating what a subscriber's snapshot already said (allowed there).
    pub setup_repeats: u64,
    /// Subscriptions renewed (all subscribers at once) because their TTL was running out.
    pub renewals: u32,
    /// Setup: the subject's contact adds and privacy change, seconds.
    pub contacts_s: f64,
    /// Setup: subscribers connecting, adding the subject and subscribing, seconds.
    pub subscribe_s: f64,
    /// The subscription TTL the server gave, seconds.
    pub subscription_ttl_s: u32,
}
