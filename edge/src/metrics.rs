//! What the edge records through the `metrics` facade (docs/operations.md lists every
//! metric and the SLOs they measure). Labels are fixed names, never ids, so the number
//! of series stays small.

use std::time::Duration;

use natter_proto::{
    ErrorCode,
    v1::{ServerFrame, client_frame::Body as In, server_frame::Body as Out},
};

/// Open WebSocket connections on this edge.
pub(crate) const CONNECTIONS: &str = "natter_connections";

pub(crate) fn frame_in(body: Option<&In>) {
    let kind = match body {
        None => "unknown",
        Some(In::Send(_)) => "send",
        Some(In::Received(_)) => "received",
        Some(In::Read(_)) => "read",
        Some(In::Typing(_)) => "typing",
        Some(In::Sync(_)) => "sync",
        Some(In::History(_)) => "history",
        Some(In::Ping(_)) => "ping",
        Some(In::Group(_)) => "group",
        Some(In::ReadBy(_)) => "read_by",
        Some(In::People(_)) => "people",
        Some(In::PresenceSubscribe(_)) => "presence_subscribe",
        Some(In::Call(_)) => "call",
    };
    metrics::counter!("natter_frames_in_total", "type" => kind).increment(1);
}

/// A frame the client could not get decoded or was refused unread.
pub(crate) fn bad_frame() {
    metrics::counter!("natter_frames_in_total", "type" => "bad").increment(1);
}

/// A frame written to a client (and, for an error, its code).
pub(crate) fn frame_out(frame: &ServerFrame) {
    let kind = match &frame.body {
        None => "unknown",
        Some(Out::Welcome(_)) => "welcome",
        Some(Out::Ack(_)) => "ack",
        Some(Out::Message(_)) => "message",
        Some(Out::Receipt(_)) => "receipt",
        Some(Out::Typing(_)) => "typing",
        Some(Out::SyncBatch(_)) => "sync_batch",
        Some(Out::SyncDone(_)) => "sync_done",
        Some(Out::HistoryPage(_)) => "history_page",
        Some(Out::Pong(_)) => "pong",
        Some(Out::Error(e)) => {
            error(e.code);
            "error"
        }
        Some(Out::GroupResult(_)) => "group_result",
        Some(Out::ReadByResult(_)) => "read_by_result",
        Some(Out::JoinRequested(_)) => "join_requested",
        Some(Out::PeopleResult(_)) => "people_result",
        Some(Out::PresenceSnapshot(_)) => "presence_snapshot",
        Some(Out::Presence(_)) => "presence",
        Some(Out::CallResult(_)) => "call_result",
        Some(Out::CallEvent(_)) => "call_event",
    };
    metrics::counter!("natter_frames_out_total", "type" => kind).increment(1);
}

/// A pushed frame passed through encoded (its type is not decoded on the hot path).
pub(crate) fn push_out() {
    metrics::counter!("natter_frames_out_total", "type" => "push").increment(1);
}

fn error(code: i32) {
    let name = ErrorCode::try_from(code)
        .map(|c| c.as_str_name().trim_start_matches("ERROR_CODE_"))
        .unwrap_or("UNKNOWN");
    metrics::counter!("natter_errors_total", "code" => name).increment(1);
}

/// A connection closed because its client read too slowly (`slow_consumer`) or its bus
/// subscription fell behind (`lagged`).
pub(crate) fn outbound_drop(reason: &'static str) {
    metrics::counter!("natter_outbound_drops_total", "reason" => reason).increment(1);
}

/// A Send's arrival to its Ack.
pub(crate) fn ack_latency(took: Duration) {
    metrics::histogram!("natter_ack_latency_seconds").record(took.as_secs_f64());
}

/// A message's acceptance by its owner (`created_at_ms`) to its push into a socket.
pub(crate) fn delivery_latency(created_at_ms: u64) {
    let now = natter_proto::now_ms();
    // Clocks of different nodes: a push "from the future" counts as immediate.
    let ms = now.saturating_sub(created_at_ms);
    metrics::histogram!("natter_delivery_latency_seconds").record(ms as f64 / 1000.0);
}

/// A request to `service` over the bus, to its reply.
pub(crate) fn bus_request(service: &'static str, took: Duration) {
    metrics::histogram!("natter_bus_request_seconds", "service" => service)
        .record(took.as_secs_f64());
}
