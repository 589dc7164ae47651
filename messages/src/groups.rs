//! What the messages service asks of the groups service over the bus: a group's state
//! (members to fan out to, who may send, a change not yet in the log), a change to
//! apply, and which part of a group's history a user may read. The groups service
//! decides every permission; this module only carries the questions and answers.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use natter_bus::{Bus, BusError};
use natter_proto::{ErrorCode, GroupId, Subject, UserId, bus, error, v1};
use prost::Message as _;

pub(crate) struct GroupClient {
    bus: Arc<dyn Bus>,
    timeout: Duration,
}

fn unavailable(e: &BusError) -> v1::Error {
    match e {
        BusError::NoResponders(_) => error(
            ErrorCode::Unavailable,
            "the groups service is not running; retry",
        ),
        _ => {
            tracing::warn!(error = %e, "groups request failed");
            error(
                ErrorCode::Unavailable,
                "the groups service did not answer; retry",
            )
        }
    }
}

fn undecodable(what: &str) -> v1::Error {
    tracing::error!(what, "undecodable reply from the groups service");
    error(ErrorCode::Internal, "internal error")
}

impl GroupClient {
    pub fn new(bus: Arc<dyn Bus>, timeout: Duration) -> Self {
        GroupClient { bus, timeout }
    }

    async fn request(&self, subject: &Subject, payload: Vec<u8>) -> Result<Bytes, v1::Error> {
        self.bus
            .request(subject, Bytes::from(payload), self.timeout)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// The group's state; `None` if it does not exist.
    pub async fn state(&self, group: GroupId) -> Result<Option<bus::GroupState>, v1::Error> {
        let req = bus::GroupStateRequest {
            group_id: group.get(),
        };
        let reply = self
            .request(&Subject::group_state(), req.encode_to_vec())
            .await?;
        let reply =
            bus::GroupStateReply::decode(reply).map_err(|_| undecodable("GroupStateReply"))?;
        match reply.error {
            Some(e) => Err(e),
            None => Ok(reply.state),
        }
    }

    /// Asks the groups service to check and store one change.
    pub async fn apply(&self, req: bus::GroupApply) -> Result<bus::GroupApplyReply, v1::Error> {
        let reply = self
            .request(&Subject::group_apply(), req.encode_to_vec())
            .await?;
        let reply =
            bus::GroupApplyReply::decode(reply).map_err(|_| undecodable("GroupApplyReply"))?;
        match reply.error {
            Some(e) => Err(e),
            None => Ok(reply),
        }
    }

    /// What `user` may read of one group (`Some`) or of every group they are or were in.
    pub async fn access(
        &self,
        user: UserId,
        group: Option<GroupId>,
    ) -> Result<Vec<bus::GroupAccess>, v1::Error> {
        let req = bus::GroupAccessRequest {
            user_id: user.get(),
            group_id: group.map_or(0, GroupId::get),
        };
        let reply = match self
            .bus
            .request(
                &Subject::group_access(),
                Bytes::from(req.encode_to_vec()),
                self.timeout,
            )
            .await
        {
            Ok(reply) => reply,
            // No groups service is running at all (a deployment without the groups role):
            // a sync covers the direct conversations. Its cursors for groups do not move,
            // so nothing is skipped once groups are back.
            Err(BusError::NoResponders(_)) if group.is_none() => {
                tracing::warn!("no groups service: syncing without groups");
                return Ok(Vec::new());
            }
            Err(e) => return Err(unavailable(&e)),
        };
        let reply =
            bus::GroupAccessReply::decode(reply).map_err(|_| undecodable("GroupAccessReply"))?;
        match reply.error {
            Some(e) => Err(e),
            None => Ok(reply.access),
        }
    }
}
