//! Sync and history: read-only requests any messages instance can answer (queue group).
//! Each request runs in its own task, at most [`MAX_CONCURRENT`] at a time.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use natter_bus::{BusMessage, Subscription};
use natter_proto::{ConversationId, ConversationKind, ErrorCode, GroupId, Seq, bus, error, v1};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::{Shared, caller_of, store_failure};

/// Group heads a sync page reads at once.
const HEAD_READS_IN_FLIGHT: usize = 64;
/// Requests answered concurrently per subscription.
const MAX_CONCURRENT: usize = 64;
/// Sync page size when the request names none, and the most it may ask for.
const SYNC_DEFAULT_LIMIT: usize = 500;
const SYNC_MAX_LIMIT: usize = 1000;
/// History page size when the request names none, and the most it may ask for.
const HISTORY_DEFAULT_LIMIT: usize = 50;
const HISTORY_MAX_LIMIT: usize = 200;
/// A page stops growing past about this many encoded bytes (it always holds at least one
/// message), so a reply fits a bus message whatever the bodies weigh.
const PAGE_MAX_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Sync,
    History,
}

pub(crate) async fn serve(
    mut sub: Subscription,
    kind: Kind,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let name = match kind {
        Kind::Sync => "sync",
        Kind::History => "history",
    };
    // A request taken but not started at shutdown times out at its sender, as do the
    // buffered ones (dropped with the subscription).
    let _unstarted = natter_bus::serve_requests(name, &mut sub, MAX_CONCURRENT, &shutdown, |msg| {
        let shared = shared.clone();
        async move { answer(&shared, kind, msg).await }
    })
    .await;
}

async fn answer(shared: &Shared, kind: Kind, msg: BusMessage) {
    let payload = match kind {
        Kind::Sync => sync(shared, msg.payload.clone()).await.encode_to_vec(),
        Kind::History => history(shared, msg.payload.clone()).await.encode_to_vec(),
    };
    if let Err(e) = natter_bus::reply(shared.bus.as_ref(), &msg, Bytes::from(payload)).await {
        tracing::debug!(error = %e, "query reply not delivered");
    }
}

fn page_limit(asked: u32, default: usize, max: usize) -> usize {
    match asked {
        0 => default,
        n => usize::try_from(n).unwrap_or(max).min(max),
    }
}

pub(crate) async fn sync(shared: &Shared, payload: Bytes) -> bus::SyncReply {
    let result = match bus::SyncRequest::decode(payload) {
        Ok(req) => sync_page(shared, req).await,
        Err(_) => Err(error(ErrorCode::BadFrame, "undecodable SyncRequest")),
    };
    result.unwrap_or_else(|e| bus::SyncReply {
        error: Some(e),
        ..Default::default()
    })
}

async fn sync_page(shared: &Shared, req: bus::SyncRequest) -> Result<bus::SyncReply, v1::Error> {
    let caller = caller_of(req.caller)?;
    let limit = page_limit(req.limit, SYNC_DEFAULT_LIMIT, SYNC_MAX_LIMIT);
    let store = &shared.store;
    let (direct, stored, groups) = tokio::join!(
        store.user_conversations(caller.user),
        store.device_cursors(caller.user, caller.device),
        shared.groups.access(caller.user, None)
    );
    let direct = direct.map_err(|e| store_failure(&e))?;
    // Groups the caller is or was in: their heads come from the log, capped where the
    // caller left, and nothing before the caller joined is theirs.
    let groups = groups?;
    let mut group_heads = Vec::with_capacity(groups.len());
    // In bounded rounds: a user may be in thousands of groups.
    for chunk in groups.chunks(HEAD_READS_IN_FLIGHT) {
        group_heads.extend(
            futures::future::join_all(chunk.iter().map(|a| {
                let conv = ConversationId::group(GroupId(a.group_id));
                async move { store.head(&conv).await.map(|h| (conv, h)) }
            }))
            .await,
        );
    }
    // (conversation, newest seq the caller may read, seq the caller's history starts after)
    let mut conversations: Vec<(ConversationId, Seq, Seq)> =
        direct.into_iter().map(|(c, h)| (c, h, Seq::ZERO)).collect();
    for (a, head) in groups.iter().zip(group_heads) {
        let (conv, head) = head.map_err(|e| store_failure(&e))?;
        let cap = match a.left_seq {
            0 => head,
            left => head.min(Seq(left)),
        };
        conversations.push((conv, cap, Seq(a.joined_seq.saturating_sub(1))));
    }
    let stored: HashMap<ConversationId, Seq> = stored
        .map_err(|e| store_failure(&e))?
        .into_iter()
        .map(|c| (c.conversation, c.delivered))
        .collect();
    // Cursors of conversations that are not the caller's never match below: ignored.
    let mut given: HashMap<ConversationId, Seq> = HashMap::new();
    for c in req.cursors {
        if let Ok(conv) = c.conversation_id.parse::<ConversationId>() {
            let e = given.entry(conv).or_default();
            *e = (*e).max(Seq(c.seq));
        }
    }

    let mut reply = bus::SyncReply::default();
    let mut bytes = 0usize;
    for (conv, mut head, floor) in conversations {
        let is_group = conv.group_id().is_some();
        let start = given
            .get(&conv)
            .or_else(|| stored.get(&conv))
            .copied()
            .unwrap_or_default()
            .max(floor);
        let mut pos = start;
        if head > start {
            let room = limit - reply.messages.len();
            if room == 0 || bytes >= PAGE_MAX_BYTES {
                reply.more = true;
            } else {
                let page = crate::timed("read", store.read_after(&conv, start, room))
                    .await
                    .map_err(|e| store_failure(&e))?;
                for m in page {
                    if is_group && m.seq > head.get() {
                        // Past where the caller left the group.
                        break;
                    }
                    let size = m.encoded_len();
                    if !reply.messages.is_empty() && bytes + size > PAGE_MAX_BYTES {
                        break;
                    }
                    bytes += size;
                    pos = Seq(m.seq);
                    reply.messages.push(match crate::view_for(&m, caller.user) {
                        std::borrow::Cow::Borrowed(_) => m,
                        std::borrow::Cow::Owned(view) => view,
                    });
                }
                head = head.max(pos);
                if pos < head {
                    reply.more = true;
                }
            }
        }
        reply.next.push(v1::Cursor {
            conversation_id: conv.as_str().to_owned(),
            seq: pos.get(),
        });
        reply.heads.push(v1::Cursor {
            conversation_id: conv.as_str().to_owned(),
            seq: head.get(),
        });
    }
    Ok(reply)
}

pub(crate) async fn history(shared: &Shared, payload: Bytes) -> bus::HistoryReply {
    let result = match bus::HistoryRequest::decode(payload) {
        Ok(req) => history_page(shared, req).await,
        Err(_) => Err(error(ErrorCode::BadFrame, "undecodable HistoryRequest")),
    };
    match result {
        Ok(page) => bus::HistoryReply {
            page: Some(page),
            error: None,
        },
        Err(e) => bus::HistoryReply {
            page: None,
            error: Some(e),
        },
    }
}

async fn history_page(
    shared: &Shared,
    req: bus::HistoryRequest,
) -> Result<v1::HistoryPage, v1::Error> {
    let caller = caller_of(req.caller)?;
    let h = req
        .history
        .ok_or_else(|| error(ErrorCode::InvalidArgument, "history missing"))?;
    if h.conversation_id.is_empty() {
        return Err(error(ErrorCode::InvalidArgument, "conversation_id missing"));
    }
    let conv: ConversationId = h
        .conversation_id
        .parse()
        .map_err(|e: natter_proto::IdError| error(ErrorCode::InvalidArgument, e.to_string()))?;
    // The seqs the caller may read: all of a direct conversation they are in; of a group,
    // from when they joined to when they left.
    let (first, before) = match conv.kind() {
        ConversationKind::Direct(a, b) if a == caller.user || b == caller.user => {
            (Seq(1), Seq(h.before_seq))
        }
        ConversationKind::Direct(..) => {
            return Err(error(
                ErrorCode::Forbidden,
                "not a member of this conversation",
            ));
        }
        ConversationKind::Group(g) => {
            let access = shared
                .groups
                .access(caller.user, Some(g))
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| error(ErrorCode::Forbidden, "not a member of this group"))?;
            let before = match (access.left_seq, h.before_seq) {
                (0, b) => Seq(b),
                (left, 0) => Seq(left + 1),
                (left, b) => Seq(b.min(left + 1)),
            };
            (Seq(access.joined_seq.max(1)), before)
        }
    };
    let limit = page_limit(h.limit, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT);
    let mut messages = crate::timed("read", shared.store.read_before(&conv, before, limit))
        .await
        .map_err(|e| store_failure(&e))?;
    messages.retain(|m| m.seq >= first.get());
    for m in messages.iter_mut() {
        if let std::borrow::Cow::Owned(view) = crate::view_for(m, caller.user) {
            *m = view;
        }
    }
    // Keep the newest messages that fit the byte budget (at least one).
    let mut bytes = 0usize;
    let mut keep_from = messages.len();
    for (i, m) in messages.iter().enumerate().rev() {
        let size = m.encoded_len();
        if keep_from < messages.len() && bytes + size > PAGE_MAX_BYTES {
            break;
        }
        bytes += size;
        keep_from = i;
    }
    messages.drain(..keep_from);
    // Seqs have no gaps: older messages the caller may read exist iff the oldest here is
    // past the first of theirs.
    let more = messages.first().is_some_and(|m| m.seq > first.get());
    Ok(v1::HistoryPage {
        conversation_id: conv.as_str().to_owned(),
        messages,
        more,
    })
}
