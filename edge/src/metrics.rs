//! What the edge records through the `metrics` facade (docs/operations.md lists every
//! metric and the SLOs they measure). Labels are fixed names, never ids, so the number
//! of series stays small.
//!
//! Every frame in and out is counted, so the handles are looked up in the recorder once
//! per process ([`handles`]) rather than on each frame (a registry lookup takes a lock).
//! The binary installs its recorder before it serves anything; handles taken without
//! one record nothing.

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Gauge, Histogram};
use natter_proto::{
    ErrorCode,
    v1::{ServerFrame, client_frame::Body as In, server_frame::Body as Out},
};

/// Client frame types, as labelled (index = [`in_index`]).
const IN_TYPES: [&str; 14] = [
    "unknown",
    "send",
    "received",
    "read",
    "typing",
    "sync",
    "history",
    "ping",
    "group",
    "read_by",
    "people",
    "presence_subscribe",
    "call",
    "bad",
];

/// Server frame types, as labelled (index = [`out_index`]); "push" is a pushed frame
/// passed through encoded.
const OUT_TYPES: [&str; 23] = [
    "unknown",
    "welcome",
    "ack",
    "message",
    "receipt",
    "typing",
    "sync_batch",
    "sync_done",
    "history_page",
    "pong",
    "error",
    "group_result",
    "read_by_result",
    "join_requested",
    "people_result",
    "presence_snapshot",
    "presence",
    "call_result",
    "call_event",
    "message_deleted",
    "announcement",
    "reconnect",
    "push",
];

/// Services the edge sends requests to.
const SERVICES: [&str; 6] = [
    "messages", "groups", "people", "presence", "calls", "sessions",
];

/// Error codes counted by name (index = the code); others count as UNKNOWN.
const ERROR_CODES: usize = 18;

/// The limits the edge enforces, as labelled in `natter_limit_rejections_total` and
/// `natter_limit` (docs/operations.md, "Limits and quotas").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Send frames per device (token bucket): refused with RATE_LIMITED.
    MessagesPerDevice,
    /// Typing frames per connection: dropped (RATE_LIMITED when the frame has an id).
    TypingPerDevice,
    /// Frames above the soft size: FRAME_TOO_LARGE, the connection stays.
    FrameSize,
    /// Frames above the hard size: the connection is closed (1009).
    FrameSizeHard,
    /// Too many undecodable or oversized frames on one connection: closed (4009).
    BadFrames,
    /// Connections of one user on this node: the upgrade gets 429.
    ConnectionsPerUser,
    /// Connections from one client address on this node: the upgrade gets 429.
    ConnectionsPerIp,
}

impl Limit {
    const ALL: [Limit; 7] = [
        Limit::MessagesPerDevice,
        Limit::TypingPerDevice,
        Limit::FrameSize,
        Limit::FrameSizeHard,
        Limit::BadFrames,
        Limit::ConnectionsPerUser,
        Limit::ConnectionsPerIp,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Limit::MessagesPerDevice => "messages_per_device",
            Limit::TypingPerDevice => "typing_per_device",
            Limit::FrameSize => "frame_size",
            Limit::FrameSizeHard => "frame_size_hard",
            Limit::BadFrames => "bad_frames",
            Limit::ConnectionsPerUser => "connections_per_user",
            Limit::ConnectionsPerIp => "connections_per_ip",
        }
    }
}

struct Handles {
    connections: Gauge,
    frames_in: Vec<Counter>,
    frames_out: Vec<Counter>,
    errors: Vec<Counter>,
    unknown_error: Counter,
    slow_consumer: Counter,
    lagged: Counter,
    ack: Histogram,
    delivery: Histogram,
    bus: Vec<Histogram>,
    /// `natter_limit_rejections_total`, one per [`Limit`] (index = its place in `ALL`).
    rejections: Vec<Counter>,
}

fn handles() -> &'static Handles {
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    HANDLES.get_or_init(|| Handles {
        connections: metrics::gauge!("natter_connections"),
        frames_in: IN_TYPES
            .iter()
            .map(|t| metrics::counter!("natter_frames_in_total", "type" => *t))
            .collect(),
        frames_out: OUT_TYPES
            .iter()
            .map(|t| metrics::counter!("natter_frames_out_total", "type" => *t))
            .collect(),
        errors: (0..ERROR_CODES as i32)
            .map(|code| {
                let name = ErrorCode::try_from(code)
                    .map(|c| c.as_str_name().trim_start_matches("ERROR_CODE_"))
                    .unwrap_or("UNKNOWN");
                metrics::counter!("natter_errors_total", "code" => name)
            })
            .collect(),
        unknown_error: metrics::counter!("natter_errors_total", "code" => "UNKNOWN"),
        slow_consumer: metrics::counter!("natter_outbound_drops_total", "reason" => "slow_consumer"),
        lagged: metrics::counter!("natter_outbound_drops_total", "reason" => "lagged"),
        ack: metrics::histogram!("natter_ack_latency_seconds"),
        delivery: metrics::histogram!("natter_delivery_latency_seconds"),
        bus: SERVICES
            .iter()
            .map(|s| metrics::histogram!("natter_bus_request_seconds", "service" => *s))
            .collect(),
        rejections: Limit::ALL
            .iter()
            .map(|l| metrics::counter!("natter_limit_rejections_total", "limit" => l.name()))
            .collect(),
    })
}

/// Something was refused (or a connection closed) because of `limit`.
pub(crate) fn rejected(limit: Limit) {
    let h = handles();
    if let Some(i) = Limit::ALL.iter().position(|l| *l == limit) {
        h.rejections[i].increment(1);
    }
}

/// Publishes the configured limits (`natter_limit{limit=...}`), once at start, so that
/// operators see the configuration beside the rejections. A limit that is off is 0.
pub(crate) fn limits(config: &crate::Config) {
    let values: [(&str, f64); 10] = [
        (
            Limit::MessagesPerDevice.name(),
            config.messages_per_second.into(),
        ),
        ("messages_per_device_burst", config.messages_burst.into()),
        (
            Limit::TypingPerDevice.name(),
            config.typing_per_second.into(),
        ),
        (
            "typing_per_device_burst",
            (2 * u64::from(config.typing_per_second.max(1))) as f64,
        ),
        (Limit::FrameSize.name(), config.max_frame_bytes as f64),
        (
            Limit::FrameSizeHard.name(),
            config.hard_max_frame_bytes as f64,
        ),
        (Limit::BadFrames.name(), config.max_bad_frames.into()),
        (
            Limit::ConnectionsPerUser.name(),
            config.max_connections_per_user.into(),
        ),
        (
            Limit::ConnectionsPerIp.name(),
            config.max_connections_per_ip.into(),
        ),
        ("in_flight_per_connection", config.max_in_flight as f64),
    ];
    for (name, value) in values {
        metrics::gauge!("natter_limit", "limit" => name).set(value);
    }
}

fn in_index(body: Option<&In>) -> usize {
    match body {
        None => 0,
        Some(In::Send(_)) => 1,
        Some(In::Received(_)) => 2,
        Some(In::Read(_)) => 3,
        Some(In::Typing(_)) => 4,
        Some(In::Sync(_)) => 5,
        Some(In::History(_)) => 6,
        Some(In::Ping(_)) => 7,
        Some(In::Group(_)) => 8,
        Some(In::ReadBy(_)) => 9,
        Some(In::People(_)) => 10,
        Some(In::PresenceSubscribe(_)) => 11,
        Some(In::Call(_)) => 12,
    }
}

fn out_index(body: Option<&Out>) -> usize {
    match body {
        None => 0,
        Some(Out::Welcome(_)) => 1,
        Some(Out::Ack(_)) => 2,
        Some(Out::Message(_)) => 3,
        Some(Out::Receipt(_)) => 4,
        Some(Out::Typing(_)) => 5,
        Some(Out::SyncBatch(_)) => 6,
        Some(Out::SyncDone(_)) => 7,
        Some(Out::HistoryPage(_)) => 8,
        Some(Out::Pong(_)) => 9,
        Some(Out::Error(_)) => 10,
        Some(Out::GroupResult(_)) => 11,
        Some(Out::ReadByResult(_)) => 12,
        Some(Out::JoinRequested(_)) => 13,
        Some(Out::PeopleResult(_)) => 14,
        Some(Out::PresenceSnapshot(_)) => 15,
        Some(Out::Presence(_)) => 16,
        Some(Out::CallResult(_)) => 17,
        Some(Out::CallEvent(_)) => 18,
        Some(Out::MessageDeleted(_)) => 19,
        Some(Out::Announcement(_)) => 20,
        Some(Out::Reconnect(_)) => 21,
    }
}

/// A connection opened (`true`) or closed.
pub(crate) fn connection(open: bool) {
    let gauge = &handles().connections;
    if open {
        gauge.increment(1.0);
    } else {
        gauge.decrement(1.0);
    }
}

pub(crate) fn frame_in(body: Option<&In>) {
    handles().frames_in[in_index(body)].increment(1);
}

/// A frame the client could not get decoded or was refused unread.
pub(crate) fn bad_frame() {
    handles().frames_in[IN_TYPES.len() - 1].increment(1);
}

/// A frame written to a client (and, for an error, its code).
pub(crate) fn frame_out(frame: &ServerFrame) {
    let h = handles();
    if let Some(Out::Error(e)) = &frame.body {
        match usize::try_from(e.code).ok().and_then(|c| h.errors.get(c)) {
            Some(counter) => counter.increment(1),
            None => h.unknown_error.increment(1),
        }
    }
    h.frames_out[out_index(frame.body.as_ref())].increment(1);
}

/// A pushed frame passed through encoded (its type is not decoded on the hot path).
pub(crate) fn push_out() {
    handles().frames_out[OUT_TYPES.len() - 1].increment(1);
}

/// A connection closed because its client read too slowly.
pub(crate) fn slow_consumer() {
    handles().slow_consumer.increment(1);
}

/// A connection closed because its bus subscription fell behind.
pub(crate) fn lagged() {
    handles().lagged.increment(1);
}

/// A Send's arrival to its Ack.
pub(crate) fn ack_latency(took: Duration) {
    handles().ack.record(took.as_secs_f64());
}

/// A message's acceptance by its owner (`created_at_ms`) to its push into a socket.
pub(crate) fn delivery_latency(created_at_ms: u64) {
    let now = natter_proto::now_ms();
    // Clocks of different nodes: a push "from the future" counts as immediate.
    let ms = now.saturating_sub(created_at_ms);
    handles().delivery.record(ms as f64 / 1000.0);
}

/// A request to `service` over the bus, to its reply.
pub(crate) fn bus_request(service: &'static str, took: Duration) {
    let h = handles();
    match SERVICES.iter().position(|s| *s == service) {
        Some(i) => h.bus[i].record(took.as_secs_f64()),
        None => metrics::histogram!("natter_bus_request_seconds", "service" => service)
            .record(took.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_its_counter_and_every_label_is_named() {
        assert_eq!(
            ErrorCode::try_from(ERROR_CODES as i32 - 1).ok(),
            Some(ErrorCode::AccountDisabled)
        );
        assert!(
            ErrorCode::try_from(ERROR_CODES as i32).is_err(),
            "a new code needs ERROR_CODES raised"
        );
        assert_eq!(OUT_TYPES[OUT_TYPES.len() - 1], "push");
        assert_eq!(
            out_index(Some(&Out::Announcement(Default::default()))),
            OUT_TYPES.iter().position(|t| *t == "announcement").unwrap()
        );
        assert_eq!(
            out_index(Some(&Out::Reconnect(Default::default()))),
            OUT_TYPES.iter().position(|t| *t == "reconnect").unwrap()
        );
        assert_eq!(IN_TYPES[IN_TYPES.len() - 1], "bad");
    }
}
