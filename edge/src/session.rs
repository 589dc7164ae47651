//! One connected device: its identity, its bus subscription and the one loop that
//! handles everything that can wake it (a client frame, a bus push, a service reply, the
//! heartbeat, a broadcast, shutdown). Requests are published in the order the client
//! sent them and their replies awaited concurrently, so a device can pipeline sends. An
//! administrator's `Kick` on the user's subject closes the connection: with
//! `ACCOUNT_DISABLED` (after an error frame saying so) when the account was disabled or
//! deleted, else with `KICKED`.

use std::{borrow::Cow, pin::pin, sync::Arc, time::Duration};

use axum::extract::ws::WebSocket;
use bytes::Bytes;
use futures::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use natter_bus::{Bus, BusError, BusEvent, Subscription};
use natter_proto::{
    ConversationId, ErrorCode, GroupId, Subject, UserId, bus, close_code, truncate_utf8,
    v1::{
        self, ClientFrame, ServerFrame, client_frame::Body as In, group_request::Op,
        server_frame::Body as Out,
    },
};
use prost::Message as _;
use tokio::{sync::broadcast::error::RecvError, time::Instant};

use crate::{
    Edge,
    auth::Identity,
    connection::{Inbound, Queue, SlowConsumer, Socket, classify, socket},
    limits::TokenBucket,
    metrics::Limit,
};

/// Everything that can wake a connection task.
enum Wake {
    Client(Inbound),
    /// A frame queued by a Sync in progress.
    Queued(axum::extract::ws::Message),
    Bus(Option<BusEvent>),
    /// A frame for every connection of this node (an announcement).
    Broadcast(Result<crate::broadcast::Shared, RecvError>),
    Reply(Result<Option<ServerFrame>, SlowConsumer>),
    Heartbeat,
    Shutdown,
}

/// Why a connection ends: the close code and reason.
struct End(u16, Cow<'static, str>);

/// Most bytes of a close frame's reason (125 bytes of payload less the code's two).
const MAX_CLOSE_REASON_BYTES: usize = 123;

impl End {
    fn new(code: u16, reason: &'static str) -> End {
        End(code, Cow::Borrowed(reason))
    }
}

/// A reply still on its way: yields the frame to send, if any.
type InFlight = BoxFuture<'static, Result<Option<ServerFrame>, SlowConsumer>>;

/// Sync pages asked of the messages service per request.
const SYNC_PAGE: u32 = 500;

struct Device {
    identity: Identity,
    connection_id: u64,
    bus: std::sync::Arc<dyn Bus>,
    /// For Syncs, which stream their pages beside the loop.
    queue: Queue,
    request_timeout: Duration,
    bad_frames: u32,
    /// Typing indicators: `typing_per_second`, bursts of twice that, per connection.
    typing: TokenBucket,
    /// Send frames: the device's bucket on this node, shared with its other
    /// connections here and kept after this one closes (`SendBuckets`).
    sends: Arc<std::sync::Mutex<TokenBucket>>,
}

/// `subscription` is the user's pushes, subscribed before the device check (see
/// `upgrade`).
pub(crate) async fn run(
    edge: Edge,
    ws: WebSocket,
    identity: Identity,
    subscription: Result<Subscription, BusError>,
    format: natter_proto::codec::WireFormat,
    connection_id: u64,
) {
    let inner = &edge.inner;
    let config = &inner.config;
    inner
        .open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    crate::metrics::connection(true);
    let (mut socket, queue) = socket(ws, format, config.outbound_queue, config.send_timeout);

    let user = identity.user;
    let mut device = Device {
        // Before `identity` moves in.
        sends: inner.send_buckets.of(identity.device),
        identity,
        connection_id,
        bus: inner.bus.clone(),
        queue,
        request_timeout: config.request_timeout,
        bad_frames: 0,
        typing: TokenBucket::new(
            config.typing_per_second,
            config.typing_per_second.max(1).saturating_mul(2),
        ),
    };
    // Before the Welcome: a broadcast sent from here on reaches this connection.
    let mut broadcasts = inner.broadcasts.subscribe();
    let mut broadcasts_open = true;
    let subscribed = subscription.is_ok();
    let end = match subscription {
        Err(e) => {
            tracing::warn!(edge.error = %e, "could not subscribe a connection");
            End::new(1011, "bus unavailable, try again")
        }
        Ok(mut subscription) => {
            // Boxed: once per connection, and their states would otherwise sit in every
            // idle connection's task for its whole life.
            Box::pin(device.announce()).await;
            Box::pin(device.tell_calls(true)).await;
            inner
                .directory
                .connected(user, device.identity.device, connection_id);
            inner.presence.connected(user);
            let welcome = device.welcome(config);
            if socket.send(&welcome).await.is_err() {
                End::new(close_code::SLOW_CONSUMER, "not reading")
            } else {
                let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
                let mut shutdown = pin!(inner.shutdown.clone().cancelled_owned());
                let mut heartbeat = tokio::time::interval(config.ping_interval);
                heartbeat.reset();
                let mut last_heard = Instant::now();
                let end = loop {
                    let wake = tokio::select! {
                        read = socket.ws.next(), if in_flight.len() < config.max_in_flight => {
                            Wake::Client(classify(read, format, config.max_frame_bytes))
                        }
                        Some(queued) = socket.pending.recv() => Wake::Queued(queued),
                        event = subscription.next() => Wake::Bus(event),
                        shared = broadcasts.recv(), if broadcasts_open => Wake::Broadcast(shared),
                        Some(reply) = in_flight.next(), if !in_flight.is_empty() => Wake::Reply(reply),
                        _ = heartbeat.tick() => Wake::Heartbeat,
                        _ = &mut shutdown => Wake::Shutdown,
                    };
                    let step = match wake {
                        Wake::Client(inbound) => {
                            if !matches!(inbound, Inbound::Closed) {
                                last_heard = Instant::now();
                            }
                            // Boxed: a client frame's handling (every request type) is the
                            // largest state of this loop; inline, every idle connection's
                            // task would carry it.
                            Box::pin(device.on_client(
                                &mut socket,
                                inbound,
                                &mut in_flight,
                                config.max_bad_frames,
                            ))
                            .await
                        }
                        Wake::Queued(msg) => socket.write_queued(msg).await.map_err(slow),
                        Wake::Bus(event) => device.on_bus(&mut socket, event).await,
                        Wake::Broadcast(Ok(shared)) => {
                            crate::metrics::push_out();
                            socket
                                .write_message(shared.message(format))
                                .await
                                .map_err(slow)
                        }
                        Wake::Broadcast(Err(RecvError::Lagged(skipped))) => {
                            tracing::debug!(edge.skipped = skipped, "broadcasts skipped");
                            Ok(())
                        }
                        Wake::Broadcast(Err(RecvError::Closed)) => {
                            broadcasts_open = false;
                            Ok(())
                        }
                        Wake::Reply(Ok(Some(frame))) => socket.send(&frame).await.map_err(slow),
                        Wake::Reply(Ok(None)) => Ok(()),
                        Wake::Reply(Err(SlowConsumer)) => Err(slow(SlowConsumer)),
                        Wake::Heartbeat => {
                            if last_heard.elapsed() > config.idle_timeout {
                                Err(End::new(close_code::IDLE_TIMEOUT, "idle timeout"))
                            } else {
                                socket.ping().await.map_err(slow)
                            }
                        }
                        Wake::Shutdown => {
                            // Tell the client to come back (elsewhere), each connection
                            // after its own delay, before its last replies and the close.
                            let reconnect = reconnect_frame(config.reconnect_spread);
                            // A client that cannot take it reconnects on the close alone.
                            let _ = socket.send(&reconnect).await;
                            Err(End::new(close_code::GOING_AWAY, "server shutting down"))
                        }
                    };
                    if let Err(end) = step {
                        break end;
                    }
                };
                if end.0 == close_code::GOING_AWAY {
                    // Drain: requests already published finish and their replies (acks)
                    // go out before the close frame.
                    // Queued Sync pages are written as they come so a Sync can finish.
                    while !in_flight.is_empty() {
                        let written = tokio::select! {
                            Some(reply) = in_flight.next() => match reply {
                                Ok(Some(frame)) => socket.send(&frame).await,
                                Ok(None) => Ok(()),
                                Err(e) => Err(e),
                            },
                            Some(queued) = socket.pending.recv() => {
                                socket.write_queued(queued).await
                            }
                        };
                        if written.is_err() {
                            break;
                        }
                    }
                }
                end
            }
        }
    };
    let End(code, reason) = end;
    tracing::debug!(edge.user = %user, edge.close_code = code, edge.reason = %reason, "connection closing");
    let graceful = !matches!(
        code,
        close_code::SLOW_CONSUMER
            | close_code::REVOKED
            | close_code::REPLACED
            | close_code::KICKED
            | close_code::ACCOUNT_DISABLED
    );
    socket.close(code, reason, graceful).await;
    if subscribed {
        Box::pin(device.tell_calls(false)).await;
    }
    inner
        .directory
        .closed(user, device.identity.device, connection_id);
    if subscribed {
        inner.presence.closed(user);
    }
    inner
        .send_buckets
        .release(device.identity.device, device.sends);
    inner
        .open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    crate::metrics::connection(false);
}

fn slow(_: SlowConsumer) -> End {
    crate::metrics::slow_consumer();
    End::new(
        close_code::SLOW_CONSUMER,
        "client too slow to read; reconnect and sync",
    )
}

/// How a kicked connection ends. A disabled (or deleted) account's device is told why
/// with an error frame first, so a client that never reads close reasons still knows
/// not to reconnect.
async fn kicked(socket: &mut Socket, kick: bus::Kick) -> End {
    let (code, default) = if kick.disabled {
        (close_code::ACCOUNT_DISABLED, "this account is disabled")
    } else {
        (close_code::KICKED, "disconnected by an administrator")
    };
    let reason = if kick.reason.is_empty() {
        Cow::Borrowed(default)
    } else {
        Cow::Owned(truncate_utf8(&kick.reason, MAX_CLOSE_REASON_BYTES).to_owned())
    };
    if kick.disabled {
        let frame = error_frame(0, ErrorCode::AccountDisabled, reason.as_ref());
        // A client too slow to take it still gets the close (if it ever reads).
        let _ = socket.send(&frame).await;
    }
    End(code, reason)
}

/// The Reconnect frame a draining node sends: come back after a random share of
/// `spread`, so its clients do not all reconnect in the same instant.
fn reconnect_frame(spread: Duration) -> ServerFrame {
    let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX).max(1);
    let after_ms = rand::random::<u64>() % spread_ms;
    reply(
        0,
        Out::Reconnect(v1::Reconnect {
            reason: "server restarting".to_owned(),
            after_ms: u32::try_from(after_ms).unwrap_or(u32::MAX),
        }),
    )
}

fn reply(id: u64, body: Out) -> ServerFrame {
    ServerFrame {
        id,
        body: Some(body),
    }
}

fn error_frame(id: u64, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    reply(id, Out::Error(natter_proto::error(code, message)))
}

fn bus_error(id: u64, service: &str, e: &BusError) -> ServerFrame {
    tracing::warn!(edge.error = %e, edge.service = service, "request failed on the bus");
    error_frame(
        id,
        ErrorCode::Unavailable,
        format!("the {service} service did not answer; retrying is safe"),
    )
}

/// The conversation a frame names: `conversation_id`, or the direct conversation with `to_user`.
fn conversation(me: UserId, conversation_id: &str, to_user: u64) -> Result<ConversationId, String> {
    match (conversation_id.is_empty(), to_user) {
        (true, 0) => Err("conversation_id or to_user is required".into()),
        (false, 0) => conversation_id
            .parse()
            .map_err(|e| format!("conversation_id: {e}")),
        (true, to) => {
            let to = UserId::new(to).map_err(|e| format!("to_user: {e}"))?;
            ConversationId::direct(me, to).map_err(|e| format!("to_user: {e}"))
        }
        (false, _) => Err("give conversation_id or to_user, not both".into()),
    }
}

/// Where a group request goes: queries to any groups instance, changes to the owner of
/// the group's conversation (which orders them with the chat).
enum GroupTarget {
    Query,
    Owner(GroupId),
}

fn group_target(me: UserId, request: &v1::GroupRequest) -> Result<GroupTarget, String> {
    let id = |raw: u64| GroupId::new(raw).map_err(|_| "group_id is required".to_owned());
    let group = match &request.op {
        None => return Err("group request has no operation".into()),
        Some(Op::Get(_) | Op::List(_)) => return Ok(GroupTarget::Query),
        Some(Op::Create(c)) => {
            if c.create_id.is_empty() {
                return Err("create_id is required".into());
            }
            GroupId::for_create(me, &c.create_id)
        }
        Some(Op::Join(j)) => {
            GroupId::of_invite(&j.code).ok_or_else(|| "code is not an invite code".to_owned())?
        }
        Some(Op::Update(u)) => id(u.group_id)?,
        Some(Op::AddMembers(a)) => id(a.group_id)?,
        Some(Op::RemoveMember(r)) => id(r.group_id)?,
        Some(Op::Leave(l)) => id(l.group_id)?,
        Some(Op::SetRole(r)) => id(r.group_id)?,
        Some(Op::TransferOwnership(t)) => id(t.group_id)?,
        Some(Op::Delete(d)) => id(d.group_id)?,
        Some(Op::CreateInvite(c)) => id(c.group_id)?,
        Some(Op::RevokeInvite(r)) => id(r.group_id)?,
        Some(Op::DecideJoin(d)) => id(d.group_id)?,
    };
    Ok(GroupTarget::Owner(group))
}

fn group_query_reply(id: u64, bytes: Bytes) -> Option<ServerFrame> {
    Some(match bus::GroupQueryReply::decode(bytes) {
        Ok(bus::GroupQueryReply {
            error: Some(err), ..
        }) => reply(id, Out::Error(err)),
        Ok(bus::GroupQueryReply {
            result: Some(result),
            ..
        }) => reply(id, Out::GroupResult(Box::new(result))),
        _ => error_frame(id, ErrorCode::Internal, "internal error"),
    })
}

fn people_reply(id: u64, bytes: Bytes) -> Option<ServerFrame> {
    Some(match bus::PeopleReply::decode(bytes) {
        Ok(bus::PeopleReply {
            error: Some(err), ..
        }) => reply(id, Out::Error(err)),
        // An operation that answers nothing (e.g. ContactRemove) may leave `result` out.
        Ok(bus::PeopleReply {
            result,
            error: None,
        }) => reply(id, Out::PeopleResult(Box::new(result.unwrap_or_default()))),
        Err(_) => error_frame(id, ErrorCode::Internal, "internal error"),
    })
}

fn presence_reply(id: u64, bytes: Bytes) -> Option<ServerFrame> {
    Some(match bus::PresenceReply::decode(bytes) {
        Ok(bus::PresenceReply {
            error: Some(err), ..
        }) => reply(id, Out::Error(err)),
        Ok(bus::PresenceReply {
            snapshot: Some(snapshot),
            ..
        }) => reply(id, Out::PresenceSnapshot(Box::new(snapshot))),
        _ => error_frame(id, ErrorCode::Internal, "internal error"),
    })
}

fn partition_reply(id: u64, bytes: Bytes) -> Option<ServerFrame> {
    match bus::PartitionReply::decode(bytes).map(|r| r.body) {
        Ok(Some(bus::partition_reply::Body::Ack(ack))) => Some(reply(id, Out::Ack(ack))),
        Ok(Some(bus::partition_reply::Body::Group(g))) => {
            Some(reply(id, Out::GroupResult(Box::new(g))))
        }
        Ok(Some(bus::partition_reply::Body::ReadBy(r))) => {
            Some(reply(id, Out::ReadByResult(Box::new(r))))
        }
        Ok(Some(bus::partition_reply::Body::Error(err))) => Some(reply(id, Out::Error(err))),
        // A stored receipt needs no answer: the cursor shows in Receipt pushes.
        Ok(Some(bus::partition_reply::Body::Cursor(_))) => None,
        // `Deleted` answers the admin role's deletions, never a client's request.
        Ok(Some(bus::partition_reply::Body::Deleted(_)) | None) | Err(_) => {
            Some(error_frame(id, ErrorCode::Internal, "internal error"))
        }
    }
}

fn call_reply(id: u64, bytes: Bytes) -> Option<ServerFrame> {
    Some(match bus::CallReply::decode(bytes) {
        Ok(bus::CallReply {
            error: Some(err), ..
        }) => reply(id, Out::Error(err)),
        Ok(bus::CallReply {
            result: Some(result),
            ..
        }) => reply(id, Out::CallResult(Box::new(result))),
        _ => error_frame(id, ErrorCode::Internal, "internal error"),
    })
}

fn history_reply(id: u64, bytes: Bytes) -> Option<ServerFrame> {
    Some(match bus::HistoryReply::decode(bytes) {
        Ok(bus::HistoryReply {
            error: Some(err), ..
        }) => reply(id, Out::Error(err)),
        Ok(bus::HistoryReply {
            page: Some(page), ..
        }) => reply(id, Out::HistoryPage(page)),
        _ => error_frame(id, ErrorCode::Internal, "internal error"),
    })
}

impl Device {
    /// Takes a token from the device's Send bucket, or says how long until one is due.
    fn take_send(&self) -> Result<(), Duration> {
        self.sends.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The Send bucket's rate and burst, for the RATE_LIMITED message.
    fn send_limit(&self) -> (f64, f64) {
        self.sends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .limits()
    }

    fn caller(&self) -> bus::Caller {
        bus::Caller {
            user_id: self.identity.user.get(),
            device_id: self.identity.device.get(),
        }
    }

    fn welcome(&self, config: &crate::Config) -> ServerFrame {
        reply(
            0,
            Out::Welcome(v1::Welcome {
                user_id: self.identity.user.get(),
                device_id: self.identity.device.get(),
                username: self.identity.username.clone(),
                server_time_ms: natter_proto::now_ms(),
                idle_timeout_s: config.idle_timeout.as_secs() as u32,
                max_frame_bytes: config.max_frame_bytes as u32,
                server_version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        )
    }

    /// Tells any older connection of this device, on any edge, to close.
    async fn announce(&self) {
        let push = bus::UserPush {
            body: Some(bus::user_push::Body::DeviceConnected(
                bus::DeviceConnected {
                    device_id: self.identity.device.get(),
                    connection_id: self.connection_id,
                },
            )),
            skip_device: 0,
            only_device: 0,
            created_at_ms: 0,
        };
        if let Err(e) = self
            .bus
            .publish(
                &Subject::user(self.identity.user),
                Bytes::from(push.encode_to_vec()),
            )
            .await
        {
            tracing::warn!(edge.error = %e, "could not announce a connection");
        }
    }

    /// Tells the calls service this device connected or disconnected (a device that
    /// stays away from a call past its grace period drops out of it).
    async fn tell_calls(&self, connected: bool) {
        let event = bus::CallDevice {
            user_id: self.identity.user.get(),
            device_id: self.identity.device.get(),
            connected,
            connection_id: self.connection_id,
        };
        if let Err(e) = self
            .bus
            .publish(&Subject::call_device(), Bytes::from(event.encode_to_vec()))
            .await
        {
            tracing::debug!(edge.error = %e, "could not tell the calls service about a connection");
        }
    }

    async fn on_client(
        &mut self,
        socket: &mut Socket,
        inbound: Inbound,
        in_flight: &mut FuturesUnordered<InFlight>,
        max_bad_frames: u32,
    ) -> Result<(), End> {
        match inbound {
            Inbound::Frame(frame) => self.on_frame(socket, frame, in_flight).await,
            Inbound::Bad(code, message) => {
                crate::metrics::bad_frame();
                if code == ErrorCode::FrameTooLarge {
                    crate::metrics::rejected(Limit::FrameSize);
                }
                self.bad_frames += 1;
                if self.bad_frames > max_bad_frames {
                    crate::metrics::rejected(Limit::BadFrames);
                    return Err(End::new(
                        close_code::PROTOCOL_VIOLATION,
                        "too many bad frames",
                    ));
                }
                socket
                    .send(&error_frame(0, code, message))
                    .await
                    .map_err(slow)
            }
            Inbound::Alive => Ok(()),
            Inbound::Closed => Err(End::new(1000, "bye")),
            Inbound::Fatal(code, reason) => {
                if code == close_code::TOO_BIG {
                    crate::metrics::rejected(Limit::FrameSizeHard);
                }
                Err(End::new(code, reason))
            }
        }
    }

    async fn on_frame(
        &mut self,
        socket: &mut Socket,
        frame: ClientFrame,
        in_flight: &mut FuturesUnordered<InFlight>,
    ) -> Result<(), End> {
        let id = frame.id;
        let me = self.identity.user;
        crate::metrics::frame_in(frame.body.as_ref());
        let immediate = match frame.body {
            None => Some(error_frame(
                id,
                ErrorCode::UnknownFrame,
                "unknown or missing frame type",
            )),
            Some(In::Ping(ping)) => Some(reply(
                id,
                Out::Pong(v1::Pong {
                    client_time_ms: ping.client_time_ms,
                    server_time_ms: natter_proto::now_ms(),
                }),
            )),
            Some(In::Send(_)) if let Err(wait) = self.take_send() => {
                crate::metrics::rejected(Limit::MessagesPerDevice);
                let (rate, burst) = self.send_limit();
                // Not stored: the client sends it again (same client_msg_id) later.
                Some(error_frame(
                    id,
                    ErrorCode::RateLimited,
                    format!(
                        "too many messages: at most {rate} a second (bursts of {burst}); \
                         retry after {} ms",
                        wait.as_millis().max(1)
                    ),
                ))
            }
            Some(In::Send(mut send)) => match conversation(me, &send.conversation_id, send.to_user)
            {
                Err(m) => Some(error_frame(id, ErrorCode::InvalidArgument, m)),
                Ok(c) => {
                    send.conversation_id = c.to_string();
                    send.to_user = 0;
                    let body = bus::partition_request::Body::Send(send);
                    self.partition_request(id, &c, body, in_flight).await
                }
            },
            Some(In::Received(r)) => match conversation(me, &r.conversation_id, 0) {
                Err(m) => Some(error_frame(id, ErrorCode::InvalidArgument, m)),
                Ok(c) => {
                    let body = bus::partition_request::Body::Received(r);
                    self.partition_request(id, &c, body, in_flight).await
                }
            },
            Some(In::Read(r)) => match conversation(me, &r.conversation_id, 0) {
                Err(m) => Some(error_frame(id, ErrorCode::InvalidArgument, m)),
                Ok(c) => {
                    let body = bus::partition_request::Body::Read(r);
                    self.partition_request(id, &c, body, in_flight).await
                }
            },
            Some(In::Typing(_)) if self.typing.take().is_err() => {
                crate::metrics::rejected(Limit::TypingPerDevice);
                (id != 0).then(|| {
                    error_frame(
                        id,
                        ErrorCode::RateLimited,
                        "too many typing indicators; send one every few seconds",
                    )
                })
            }
            Some(In::Typing(mut t)) => match conversation(me, &t.conversation_id, t.to_user) {
                Err(m) => Some(error_frame(id, ErrorCode::InvalidArgument, m)),
                Ok(c) => {
                    t.conversation_id = c.to_string();
                    t.to_user = 0;
                    let request = bus::PartitionRequest {
                        caller: Some(self.caller()),
                        body: Some(bus::partition_request::Body::Typing(t)),
                    };
                    // Ephemeral: if the bus drops it, nobody is worse off.
                    match self
                        .bus
                        .publish(
                            &Subject::partition(c.partition()),
                            Bytes::from(request.encode_to_vec()),
                        )
                        .await
                    {
                        Ok(()) => None,
                        Err(e) => Some(bus_error(id, "messages", &e)),
                    }
                }
            },
            Some(In::Group(request)) => match group_target(me, &request) {
                Err(m) => Some(error_frame(id, ErrorCode::InvalidArgument, m)),
                Ok(GroupTarget::Query) => {
                    let query = bus::GroupQuery {
                        caller: Some(self.caller()),
                        request: Some(*request),
                    };
                    self.request(
                        id,
                        "groups",
                        &Subject::group_query(),
                        query.encode_to_vec(),
                        group_query_reply,
                        in_flight,
                    )
                    .await
                }
                Ok(GroupTarget::Owner(group)) => {
                    let body = bus::partition_request::Body::Group(bus::GroupChange {
                        group_id: group.get(),
                        request: Some(*request),
                        // Only the admin role sets it.
                        admin: false,
                    });
                    let conversation = ConversationId::group(group);
                    self.partition_request(id, &conversation, body, in_flight)
                        .await
                }
            },
            Some(In::ReadBy(r)) => match conversation(me, &r.conversation_id, 0) {
                Err(m) => Some(error_frame(id, ErrorCode::InvalidArgument, m)),
                Ok(c) => {
                    let body = bus::partition_request::Body::ReadBy(r);
                    self.partition_request(id, &c, body, in_flight).await
                }
            },
            Some(In::People(request)) => {
                let query = bus::PeopleQuery {
                    caller: Some(self.caller()),
                    request: Some(*request),
                };
                self.request(
                    id,
                    "people",
                    &Subject::people_request(),
                    query.encode_to_vec(),
                    people_reply,
                    in_flight,
                )
                .await
            }
            Some(In::PresenceSubscribe(request)) => {
                let query = bus::PresenceQuery {
                    caller: Some(self.caller()),
                    request: Some(request),
                };
                self.request(
                    id,
                    "presence",
                    &Subject::presence_subscribe(),
                    query.encode_to_vec(),
                    presence_reply,
                    in_flight,
                )
                .await
            }
            Some(In::Call(request)) => {
                let command = bus::CallCommand {
                    caller: Some(self.caller()),
                    request: Some(*request),
                };
                self.request(
                    id,
                    "calls",
                    &Subject::call_request(),
                    command.encode_to_vec(),
                    call_reply,
                    in_flight,
                )
                .await
            }
            Some(In::Sync(sync)) => {
                in_flight.push(self.sync(id, sync.cursors).boxed());
                None
            }
            Some(In::History(history)) => {
                let request = bus::HistoryRequest {
                    caller: Some(self.caller()),
                    history: Some(history),
                };
                self.request(
                    id,
                    "messages",
                    &Subject::history(),
                    request.encode_to_vec(),
                    history_reply,
                    in_flight,
                )
                .await
            }
        };
        match immediate {
            Some(frame) => socket.send(&frame).await.map_err(slow),
            None => Ok(()),
        }
    }

    /// Sends a request to the conversation's partition owner.
    async fn partition_request(
        &self,
        id: u64,
        conversation: &ConversationId,
        body: bus::partition_request::Body,
        in_flight: &mut FuturesUnordered<InFlight>,
    ) -> Option<ServerFrame> {
        let request = bus::PartitionRequest {
            caller: Some(self.caller()),
            body: Some(body),
        };
        let subject = Subject::partition(conversation.partition());
        self.request(
            id,
            "messages",
            &subject,
            request.encode_to_vec(),
            partition_reply,
            in_flight,
        )
        .await
    }

    /// Publishes a request to `service` now (so requests keep the client's order) and
    /// queues the wait for its reply, which `answer` turns into the frame for the client
    /// (if any). Returns a frame to send at once when the request could not be published.
    async fn request(
        &self,
        id: u64,
        service: &'static str,
        subject: &Subject,
        payload: Vec<u8>,
        answer: fn(u64, Bytes) -> Option<ServerFrame>,
        in_flight: &mut FuturesUnordered<InFlight>,
    ) -> Option<ServerFrame> {
        let started = Instant::now();
        match self
            .bus
            .start_request(subject, Bytes::from(payload), self.request_timeout)
            .await
        {
            Err(e) => Some(bus_error(id, service, &e)),
            Ok(pending) => {
                in_flight.push(
                    async move {
                        Ok(match pending.await {
                            Err(e) => Some(bus_error(id, service, &e)),
                            Ok(bytes) => {
                                crate::metrics::bus_request(service, started.elapsed());
                                let frame = answer(id, bytes);
                                // An Ack is written as soon as this returns.
                                if let Some(ServerFrame {
                                    body: Some(Out::Ack(_)),
                                    ..
                                }) = &frame
                                {
                                    crate::metrics::ack_latency(started.elapsed());
                                }
                                frame
                            }
                        })
                    }
                    .boxed(),
                );
                None
            }
        }
    }

    /// Streams what the device missed: SyncBatch frames, then SyncDone, all with `id`.
    fn sync(
        &self,
        id: u64,
        mut cursors: Vec<v1::Cursor>,
    ) -> impl Future<Output = Result<Option<ServerFrame>, SlowConsumer>> + use<> {
        let bus = self.bus.clone();
        let queue = self.queue.clone();
        let caller = self.caller();
        let timeout = self.request_timeout;
        async move {
            loop {
                let request = bus::SyncRequest {
                    caller: Some(caller),
                    cursors: std::mem::take(&mut cursors),
                    limit: SYNC_PAGE,
                };
                let page = match bus
                    .request(
                        &Subject::sync(),
                        Bytes::from(request.encode_to_vec()),
                        timeout,
                    )
                    .await
                {
                    Err(e) => return Ok(Some(bus_error(id, "messages", &e))),
                    Ok(bytes) => match bus::SyncReply::decode(bytes) {
                        Ok(page) => page,
                        Err(_) => {
                            return Ok(Some(error_frame(
                                id,
                                ErrorCode::Internal,
                                "internal error",
                            )));
                        }
                    },
                };
                if let Some(err) = page.error {
                    return Ok(Some(reply(id, Out::Error(err))));
                }
                if !page.messages.is_empty() {
                    let batch = reply(
                        id,
                        Out::SyncBatch(v1::SyncBatch {
                            messages: page.messages,
                        }),
                    );
                    queue.send(&batch).await?;
                }
                if !page.more {
                    return Ok(Some(reply(
                        id,
                        Out::SyncDone(v1::SyncDone { heads: page.heads }),
                    )));
                }
                cursors = page.next;
            }
        }
    }

    async fn on_bus(&mut self, socket: &mut Socket, event: Option<BusEvent>) -> Result<(), End> {
        let msg = match event {
            None => return Err(End::new(1011, "bus closed")),
            Some(BusEvent::Lagged) => {
                crate::metrics::lagged();
                return Err(End::new(
                    close_code::SLOW_CONSUMER,
                    "client too slow to read; reconnect and sync",
                ));
            }
            Some(BusEvent::Message(msg)) => msg,
        };
        let push = match bus::UserPush::decode(msg.payload) {
            Ok(push) => push,
            Err(e) => {
                tracing::error!(edge.error = %e, "undecodable push on a user subject");
                return Ok(());
            }
        };
        let me = self.identity.device.get();
        match push.body {
            Some(bus::user_push::Body::Frame(frame))
                if push.skip_device != me && (push.only_device == 0 || push.only_device == me) =>
            {
                if push.created_at_ms != 0 {
                    crate::metrics::delivery_latency(push.created_at_ms);
                }
                match socket.format().transcode::<ServerFrame>(frame) {
                    Ok(encoded) => socket.send_encoded(encoded).await.map_err(slow),
                    Err(e) => {
                        tracing::error!(edge.error = %e, "undecodable frame in a push");
                        Ok(())
                    }
                }
            }
            Some(bus::user_push::Body::DeviceConnected(c))
                if c.device_id == me && c.connection_id != self.connection_id =>
            {
                Err(End::new(
                    close_code::REPLACED,
                    "this device connected again",
                ))
            }
            Some(bus::user_push::Body::DeviceRevoked(device)) if device == me => {
                Err(End::new(close_code::REVOKED, "this device logged out"))
            }
            Some(bus::user_push::Body::Kick(kick))
                if kick.device_id == 0 || kick.device_id == me =>
            {
                Err(kicked(socket, kick).await)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let cut = truncate_utf8(&long, MAX_CLOSE_REASON_BYTES);
        assert_eq!(cut.len(), 122);
        assert!(long.starts_with(cut));
        assert_eq!(truncate_utf8("short", MAX_CLOSE_REASON_BYTES), "short");
    }

    #[test]
    fn conversation_targets() {
        let me = UserId(5);
        assert_eq!(conversation(me, "", 9).unwrap().as_str(), "d.5.9");
        assert_eq!(conversation(me, "d.5.9", 0).unwrap().as_str(), "d.5.9");
        assert!(conversation(me, "", 0).is_err());
        assert!(conversation(me, "d.5.9", 9).is_err());
        assert!(conversation(me, "", 5).is_err());
        assert!(conversation(me, "nonsense", 0).is_err());
    }
}
