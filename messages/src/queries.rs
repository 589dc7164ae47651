//! Sync and history: read-only requests any messages instance can answer (queue group).
//! Each request runs in its own task, at most [`MAX_CONCURRENT`] at a time.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use natter_bus::{BusMessage, Subscription};
use natter_proto::{ConversationId, ErrorCode, Seq, bus, error, v1};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::{Shared, caller_of, store_failure};

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
    let (conversations, stored) = tokio::join!(
        store.user_conversations(caller.user),
        store.device_cursors(caller.user, caller.device)
    );
    let conversations = conversations.map_err(|e| store_failure(&e))?;
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
    for (conv, mut head) in conversations {
        let start = given
            .get(&conv)
            .or_else(|| stored.get(&conv))
            .copied()
            .unwrap_or_default();
        let mut pos = start;
        if head > start {
            let room = limit - reply.messages.len();
            if room == 0 || bytes >= PAGE_MAX_BYTES {
                reply.more = true;
            } else {
                let page = store
                    .read_after(&conv, start, room)
                    .await
                    .map_err(|e| store_failure(&e))?;
                for m in page {
                    let size = m.encoded_len();
                    if !reply.messages.is_empty() && bytes + size > PAGE_MAX_BYTES {
                        break;
                    }
                    bytes += size;
                    pos = Seq(m.seq);
                    reply.messages.push(m);
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
    let members = conv
        .direct_members()
        .ok_or_else(|| error(ErrorCode::NotFound, "unknown conversation kind"))?;
    if !members.contains(&caller.user) {
        return Err(error(
            ErrorCode::Forbidden,
            "not a member of this conversation",
        ));
    }
    let limit = page_limit(h.limit, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT);
    let mut messages = shared
        .store
        .read_before(&conv, Seq(h.before_seq), limit)
        .await
        .map_err(|e| store_failure(&e))?;
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
    // Seqs start at 1 without gaps: older messages exist iff the oldest here is past 1.
    let more = messages.first().is_some_and(|m| m.seq > 1);
    Ok(v1::HistoryPage {
        conversation_id: conv.as_str().to_owned(),
        messages,
        more,
    })
}
