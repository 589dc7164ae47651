//! The people service on the bus: `natter.people.request` (a client's PeopleRequest,
//! with the caller the edge attached), `natter.people.audience` (what other services
//! need to honour a user's privacy settings and blocks) and `natter.admin.people` (the
//! admin API deleting a user's data, see [`admin`]). Any number of instances may
//! serve them (queue group [`QUEUE_GROUP`]); all state is in the [`PeopleStore`].
//!
//! Users are checked and named by asking sessions (`Subject::sessions_user()`); usernames
//! never change, so they are cached. Every read applies the owner's privacy settings and
//! blocks from the reader's side ([`crate::AudienceInfo::may_see`]). After a change to a
//! user's privacy settings, contacts or blocks, `Subject::people_changed()` tells every
//! service that caches audiences to drop that user's. An avatar or a status's media is
//! checked (and pinned) by the media service before it is stored ([`crate::media`]).

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use natter_bus::{Bus, BusError, BusMessage, Subscription};
use natter_proto::{
    AdminService, ErrorCode, Subject, UserId, bus, error, now_ms,
    v1::{self, people_request::Op},
};
use prost::Message as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    audience::AudienceInfo,
    media::{MediaClient, Use},
    rules::{self, invalid, limit_reached, not_found},
    store::{Added, ContactRecord, PeopleStore, StatusRecord, StoreError, View},
};

/// Queue group of every people subscription.
pub const QUEUE_GROUP: &str = "people";
/// Requests buffered per subscription.
const SUB_CAPACITY: usize = 4096;
/// Requests handled concurrently per subscription.
const MAX_CONCURRENT: usize = 64;
/// Store reads (or user lookups) one request runs concurrently.
const ROUND: usize = 32;
/// The window of the daily status limit.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Shortest prune interval honoured (a zero interval would spin).
const MIN_PRUNE_INTERVAL: Duration = Duration::from_millis(10);

/// Settings of the people service. Defaults follow WhatsApp's.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most contacts a user may have.
    pub max_contacts: u32,
    /// Most users a user may block.
    pub max_blocks: u32,
    /// Most status updates a user may post in 24 hours.
    pub max_statuses_per_day: u32,
    /// How long a status update lives.
    pub status_ttl: Duration,
    /// How often expired statuses are deleted from the store.
    pub prune_interval: Duration,
    /// Timeout of the service's own bus requests (user lookups at sessions, media
    /// checks at the media service).
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_contacts: 5_000,
            max_blocks: 5_000,
            max_statuses_per_day: 30,
            status_ttl: DAY,
            prune_interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
        }
    }
}

struct Shared {
    config: Config,
    store: Arc<dyn PeopleStore>,
    bus: Arc<dyn Bus>,
    /// Users and their names, asked of sessions (cached).
    users: natter_sessions::Users,
    /// Checks and pins avatars and status media (`natter.media.describe`).
    media: MediaClient,
}

#[derive(Clone, Copy)]
enum Endpoint {
    Request,
    Audience,
    Admin,
}

/// Starts the people service. Returns once every subject is subscribed; the task
/// completes after `shutdown`, when the requests in progress are answered.
pub async fn start(
    store: Arc<dyn PeopleStore>,
    bus: Arc<dyn Bus>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, BusError> {
    let requests = bus
        .queue_subscribe(&Subject::people_request(), QUEUE_GROUP, SUB_CAPACITY)
        .await?;
    let audiences = bus
        .queue_subscribe(&Subject::people_audience(), QUEUE_GROUP, SUB_CAPACITY)
        .await?;
    let admins = bus
        .queue_subscribe(
            &Subject::admin(AdminService::People),
            QUEUE_GROUP,
            SUB_CAPACITY,
        )
        .await?;
    let users = natter_sessions::Users::new(bus.clone(), config.request_timeout);
    let media = MediaClient::new(bus.clone(), config.request_timeout);
    crate::metrics::limits(&config);
    let shared = Arc::new(Shared {
        config,
        store,
        bus,
        users,
        media,
    });
    Ok(tokio::spawn(async move {
        tokio::join!(
            serve(
                requests,
                Endpoint::Request,
                shared.clone(),
                shutdown.clone()
            ),
            serve(
                audiences,
                Endpoint::Audience,
                shared.clone(),
                shutdown.clone()
            ),
            serve(admins, Endpoint::Admin, shared.clone(), shutdown.clone()),
            prune_loop(shared, shutdown),
        );
        tracing::debug!("people service stopped");
    }))
}

async fn serve(
    mut sub: Subscription,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let name = match endpoint {
        Endpoint::Request => "people.request",
        Endpoint::Audience => "people.audience",
        Endpoint::Admin => "people.admin",
    };
    // A request taken but not started at shutdown times out at its sender, which retries.
    let _unstarted = natter_bus::serve_requests(name, &mut sub, MAX_CONCURRENT, &shutdown, |msg| {
        let shared = shared.clone();
        async move { answer(&shared, endpoint, msg).await }
    })
    .await;
}

async fn answer(shared: &Shared, endpoint: Endpoint, msg: BusMessage) {
    let payload = msg.payload.clone();
    let reply = match endpoint {
        Endpoint::Request => request(shared, payload).await.encode_to_vec(),
        Endpoint::Audience => audience(shared, payload).await.encode_to_vec(),
        Endpoint::Admin => admin(shared, payload).await.encode_to_vec(),
    };
    if let Err(e) = natter_bus::reply(shared.bus.as_ref(), &msg, Bytes::from(reply)).await {
        tracing::debug!(error = %e, "people reply not delivered");
    }
}

/// Deletes expired statuses every `prune_interval` until `shutdown`.
async fn prune_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let every = shared.config.prune_interval.max(MIN_PRUNE_INTERVAL);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match shared.store.prune(now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(statuses = n, "expired statuses pruned"),
            Err(e) => tracing::warn!(error = %e, "pruning expired statuses failed"),
        }
    }
}

/// Maps a store failure to a client error without leaking internals (logged here).
fn store_failure(e: StoreError) -> v1::Error {
    match e {
        StoreError::Closed => error(ErrorCode::Unavailable, "service shutting down, retry"),
        StoreError::Storage(_) => {
            tracing::error!(error = %e, "people store failure");
            error(ErrorCode::Unavailable, "storage unavailable, retry")
        }
        StoreError::Corrupt(_) => {
            tracing::error!(error = %e, "people store failure");
            error(ErrorCode::Internal, "internal error")
        }
    }
}

/// `r` with a store failure turned into a client error.
fn st<T>(r: Result<T, StoreError>) -> Result<T, v1::Error> {
    r.map_err(store_failure)
}

/// Runs `f` for every item, [`ROUND`] at a time, and returns the outputs in item order.
/// (Rounds of `join_all` rather than a stream combinator keep the future `Send`.)
async fn in_rounds<'a, T, R, F, Fut>(items: &'a [T], f: F) -> Vec<R>
where
    F: Fn(&'a T) -> Fut,
    Fut: Future<Output = R>,
{
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(ROUND) {
        out.extend(futures::future::join_all(chunk.iter().map(&f)).await);
    }
    out
}

fn view_count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------
// Users, asked of sessions.

impl Shared {
    /// The username of `user`; `None` when there is no such user.
    async fn username(&self, user: UserId) -> Result<Option<String>, v1::Error> {
        Ok(self
            .users
            .username(user)
            .await?
            .map(|name| name.to_string()))
    }

    /// The user named `username`; `None` when there is none.
    async fn user_named(&self, username: &str) -> Result<Option<(UserId, String)>, v1::Error> {
        Ok(self
            .users
            .find(username)
            .await?
            .map(|(user, name)| (user, name.to_string())))
    }

    // -----------------------------------------------------------------------------
    // What readers may see.

    /// `owner`'s audience as far as it concerns `reader`: the owner's settings, and
    /// whether `reader` is among their contacts and among the users they blocked (enough
    /// for [`AudienceInfo::may_see`] with this reader, without loading whole lists).
    async fn audience_toward(
        &self,
        owner: UserId,
        reader: UserId,
    ) -> Result<AudienceInfo, v1::Error> {
        let mut a = AudienceInfo::open(owner);
        if owner == reader {
            return Ok(a);
        }
        let (privacy, contact, blocks) = tokio::try_join!(
            self.store.privacy(owner),
            self.store.is_contact(owner, reader),
            self.store.blocks(owner),
        )
        .map_err(store_failure)?;
        a.privacy = privacy;
        if contact {
            a.contacts.insert(reader);
        }
        if blocks.contains(&reader) {
            a.blocked.insert(reader);
        }
        Ok(a)
    }

    /// `owner`'s profile as `reader` may see it.
    async fn profile_for(
        &self,
        owner: UserId,
        username: &str,
        reader: UserId,
    ) -> Result<v1::Profile, v1::Error> {
        let (audience, record) = tokio::try_join!(self.audience_toward(owner, reader), async {
            st(self.store.profile(owner).await)
        })?;
        Ok(rules::profile_view(
            owner,
            username,
            record.as_ref(),
            &audience,
            reader,
        ))
    }

    /// The profile of `user`, if they exist, as `reader` may see it.
    async fn profile_if_user(
        &self,
        user: UserId,
        reader: UserId,
    ) -> Result<Option<v1::Profile>, v1::Error> {
        match self.username(user).await? {
            Some(name) => Ok(Some(self.profile_for(user, &name, reader).await?)),
            None => Ok(None),
        }
    }

    async fn publish_changed(&self, user: UserId) {
        let msg = bus::PeopleChanged {
            user_id: user.get(),
        };
        if let Err(e) = self
            .bus
            .publish(&Subject::people_changed(), Bytes::from(msg.encode_to_vec()))
            .await
        {
            // Caches expire by themselves (CACHE_TTL); the change is stored.
            tracing::warn!(error = %e, user = user.get(), "PeopleChanged not published");
        }
    }
}

// ---------------------------------------------------------------------------------
// natter.admin.people

/// `natter.admin.people`, from the admin API: deletes what the store keeps of
/// `delete_user` ([`PeopleStore::delete_user`]: profile, privacy settings, their
/// contacts, blocks and statuses), then publishes `natter.people.changed` for them so
/// cached audiences go. Idempotent: a retry finishes a delete that failed part way.
async fn admin(shared: &Shared, payload: Bytes) -> bus::AdminDone {
    let result = async {
        let req = bus::AdminPeopleRequest::decode(payload)
            .map_err(|_| error(ErrorCode::BadFrame, "undecodable AdminPeopleRequest"))?;
        let user = UserId::new(req.delete_user).map_err(|_| invalid("delete_user missing"))?;
        st(shared.store.delete_user(user).await)?;
        shared.publish_changed(user).await;
        Ok::<_, v1::Error>(())
    }
    .await;
    bus::AdminDone {
        error: result.err(),
    }
}

// ---------------------------------------------------------------------------------
// natter.people.request

async fn request(shared: &Shared, payload: Bytes) -> bus::PeopleReply {
    match try_request(shared, payload).await {
        Ok(result) => bus::PeopleReply {
            result: Some(result),
            error: None,
        },
        Err(e) => bus::PeopleReply {
            result: None,
            error: Some(e),
        },
    }
}

/// The caller (user and device) the edge attached.
fn caller_of(c: Option<bus::Caller>) -> Result<(UserId, bus::Caller), v1::Error> {
    let c = c.ok_or_else(|| invalid("caller missing"))?;
    let user = UserId::new(c.user_id).map_err(|_| invalid("caller missing"))?;
    Ok((user, c))
}

fn user_arg(raw: u64) -> Result<UserId, v1::Error> {
    UserId::new(raw).map_err(|_| invalid("user_id missing"))
}

fn status_arg(raw: u64) -> Result<u64, v1::Error> {
    if raw == 0 {
        return Err(invalid("status_id missing"));
    }
    Ok(raw)
}

async fn try_request(shared: &Shared, payload: Bytes) -> Result<v1::PeopleResult, v1::Error> {
    let query = bus::PeopleQuery::decode(payload)
        .map_err(|_| error(ErrorCode::BadFrame, "undecodable PeopleQuery"))?;
    let (caller, device) = caller_of(query.caller)?;
    let op = query
        .request
        .and_then(|r| r.op)
        .ok_or_else(|| invalid("people request has no operation"))?;
    let cx = Cx {
        shared,
        caller,
        device,
    };
    match op {
        Op::ProfileGet(r) => cx.profile_get(&r).await,
        Op::ProfileUpdate(r) => cx.profile_update(&r).await,
        Op::PrivacyGet(_) => cx.privacy_get().await,
        Op::PrivacySet(r) => cx.privacy_set(r.settings.unwrap_or_default()).await,
        Op::ContactAdd(r) => cx.contact_add(r).await,
        Op::ContactRemove(r) => cx.contact_remove(r.user_id).await,
        Op::ContactList(_) => cx.contact_list().await,
        Op::Find(r) => cx.find(&r.username).await,
        Op::Block(r) => cx.block(r.user_id).await,
        Op::Unblock(r) => cx.unblock(r.user_id).await,
        Op::BlockList(_) => cx.block_list().await,
        Op::StatusPost(r) => cx.status_post(r).await,
        Op::StatusList(_) => cx.status_list().await,
        Op::StatusMine(_) => cx.status_mine().await,
        Op::StatusView(r) => cx.status_view(r.status_id).await,
        Op::StatusViewers(r) => cx.status_viewers(r.status_id).await,
        Op::StatusDelete(r) => cx.status_delete(r.status_id).await,
    }
}

/// One request: the service and the caller the edge vouched for.
struct Cx<'a> {
    shared: &'a Shared,
    caller: UserId,
    /// The caller with their device, as the edge attached it (asked on their behalf).
    device: bus::Caller,
}

type Answer = Result<v1::PeopleResult, v1::Error>;

impl Cx<'_> {
    fn store(&self) -> &dyn PeopleStore {
        self.shared.store.as_ref()
    }

    /// Checks that the caller may use media `id` for `what` (their own upload, of a
    /// fitting kind) and pins it against garbage collection.
    async fn check_media(&self, id: &str, what: Use) -> Result<(), v1::Error> {
        crate::media::check(&self.shared.media, self.device, id, what).await
    }

    /// The caller's own profile, whole.
    async fn own_profile(&self) -> Result<v1::Profile, v1::Error> {
        let name = self.shared.username(self.caller).await?.unwrap_or_default();
        self.shared
            .profile_for(self.caller, &name, self.caller)
            .await
    }

    async fn profile_get(&self, r: &v1::ProfileGet) -> Answer {
        if r.user_ids.is_empty() {
            return Ok(v1::PeopleResult {
                profiles: vec![self.own_profile().await?],
                ..Default::default()
            });
        }
        let ids = rules::profile_ids(&r.user_ids)?;
        let found = in_rounds(&ids, |&u| self.shared.profile_if_user(u, self.caller)).await;
        let mut profiles = Vec::with_capacity(found.len());
        for p in found {
            profiles.extend(p?);
        }
        Ok(v1::PeopleResult {
            profiles,
            ..Default::default()
        })
    }

    async fn profile_update(&self, r: &v1::ProfileUpdate) -> Answer {
        rules::check_profile_update(r)?;
        // Before anything is stored: an avatar is the caller's own image (and is pinned).
        if let Some(avatar) = r.avatar_media_id.as_deref().filter(|m| !m.is_empty()) {
            self.check_media(avatar, Use::Avatar).await?;
        }
        // Named first, so a stored update is never answered with an error.
        let name = self.shared.username(self.caller).await?.unwrap_or_default();
        let old = st(self.store().profile(self.caller).await)?;
        let new = rules::updated_profile(old, r, now_ms());
        st(self.store().put_profile(self.caller, &new).await)?;
        let own = rules::profile_view(
            self.caller,
            &name,
            Some(&new),
            &AudienceInfo::open(self.caller),
            self.caller,
        );
        Ok(v1::PeopleResult {
            profiles: vec![own],
            ..Default::default()
        })
    }

    async fn privacy_get(&self) -> Answer {
        let p = st(self.store().privacy(self.caller).await)?;
        Ok(v1::PeopleResult {
            privacy: Some(p.to_proto()),
            ..Default::default()
        })
    }

    async fn privacy_set(&self, settings: v1::PrivacySettings) -> Answer {
        rules::check_privacy(&settings)?;
        let old = st(self.store().privacy(self.caller).await)?;
        let new = old.updated(&settings);
        if new != old {
            st(self.store().put_privacy(self.caller, new).await)?;
            self.shared.publish_changed(self.caller).await;
        }
        Ok(v1::PeopleResult {
            privacy: Some(new.to_proto()),
            ..Default::default()
        })
    }

    /// The user a request names by id, or by username when the id is 0.
    async fn target(&self, user_id: u64, username: &str) -> Result<(UserId, String), v1::Error> {
        if user_id != 0 {
            let user = UserId(user_id);
            let name = self
                .shared
                .username(user)
                .await?
                .ok_or_else(|| not_found("no such user"))?;
            return Ok((user, name));
        }
        if username.is_empty() {
            return Err(invalid("user_id or username needed"));
        }
        rules::check_username(username)?;
        self.shared
            .user_named(username)
            .await?
            .ok_or_else(|| not_found("no such user"))
    }

    async fn contact_add(&self, r: v1::ContactAdd) -> Answer {
        rules::check_contact_name(&r.name)?;
        if r.user_id != 0 {
            rules::not_self(self.caller, UserId(r.user_id), "add")?;
        }
        let (user, username) = self.target(r.user_id, &r.username).await?;
        rules::not_self(self.caller, user, "add")?;
        let record = ContactRecord {
            user,
            name: r.name,
            added_at_ms: now_ms(),
        };
        let limit = self.shared.config.max_contacts;
        let stored = match st(self.store().add_contact(self.caller, &record, limit).await)? {
            Added::LimitReached => {
                crate::metrics::rejected(crate::metrics::CONTACTS);
                return Err(limit_reached(format!(
                    "contact limit reached: at most {limit} contacts"
                )));
            }
            Added::Added => {
                self.shared.publish_changed(self.caller).await;
                record
            }
            // Renamed: answer with the stored entry (it keeps its first `added_at_ms`).
            Added::Updated => st(self.store().contacts(self.caller).await)?
                .into_iter()
                .find(|c| c.user == user)
                .unwrap_or(record),
        };
        let profile = self
            .shared
            .profile_for(user, &username, self.caller)
            .await?;
        Ok(v1::PeopleResult {
            contact: Some(rules::contact_view(&stored, &username, profile)),
            ..Default::default()
        })
    }

    async fn contact_remove(&self, user_id: u64) -> Answer {
        let user = user_arg(user_id)?;
        if st(self.store().remove_contact(self.caller, user).await)? {
            self.shared.publish_changed(self.caller).await;
        }
        Ok(v1::PeopleResult::default())
    }

    async fn contact_list(&self) -> Answer {
        let contacts = st(self.store().contacts(self.caller).await)?;
        let found = in_rounds(&contacts, |c| async move {
            // Users sessions does not know (any more) are left out.
            let Some(name) = self.shared.username(c.user).await? else {
                return Ok(None);
            };
            let profile = self.shared.profile_for(c.user, &name, self.caller).await?;
            Ok::<_, v1::Error>(Some(rules::contact_view(c, &name, profile)))
        })
        .await;
        let mut out = Vec::with_capacity(found.len());
        for c in found {
            out.extend(c?);
        }
        out.sort_by_key(|c| c.user_id);
        Ok(v1::PeopleResult {
            contacts: out,
            ..Default::default()
        })
    }

    async fn find(&self, username: &str) -> Answer {
        rules::check_username(username)?;
        let (user, name) = self
            .shared
            .user_named(username)
            .await?
            .ok_or_else(|| not_found("no such user"))?;
        let profile = self.shared.profile_for(user, &name, self.caller).await?;
        Ok(v1::PeopleResult {
            profiles: vec![profile],
            ..Default::default()
        })
    }

    async fn blocked(&self) -> Answer {
        let mut blocked: Vec<u64> = st(self.store().blocks(self.caller).await)?
            .into_iter()
            .map(UserId::get)
            .collect();
        blocked.sort_unstable();
        Ok(v1::PeopleResult {
            blocked,
            ..Default::default()
        })
    }

    async fn block(&self, user_id: u64) -> Answer {
        let user = user_arg(user_id)?;
        rules::not_self(self.caller, user, "block")?;
        if self.shared.username(user).await?.is_none() {
            return Err(not_found("no such user"));
        }
        let limit = self.shared.config.max_blocks;
        match st(self
            .store()
            .add_block(self.caller, user, now_ms(), limit)
            .await)?
        {
            Added::LimitReached => {
                crate::metrics::rejected(crate::metrics::BLOCKS);
                return Err(limit_reached(format!(
                    "block limit reached: at most {limit} blocked users"
                )));
            }
            Added::Added => self.shared.publish_changed(self.caller).await,
            Added::Updated => {}
        }
        self.blocked().await
    }

    async fn unblock(&self, user_id: u64) -> Answer {
        let user = user_arg(user_id)?;
        if st(self.store().remove_block(self.caller, user).await)? {
            self.shared.publish_changed(self.caller).await;
        }
        self.blocked().await
    }

    async fn block_list(&self) -> Answer {
        self.blocked().await
    }

    /// The caller's own status with its view count.
    async fn own_status(&self, s: &StatusRecord) -> Result<v1::Status, v1::Error> {
        let views = st(self.store().views(s.id).await)?;
        Ok(rules::status_view(s, view_count(views.len()), false))
    }

    async fn status_post(&self, r: v1::StatusPost) -> Answer {
        rules::check_status_post(&r)?;
        let now = now_ms();
        // A retry returns the stored status, even when the daily limit is reached since.
        let live = st(self.store().statuses(self.caller, now).await)?;
        if let Some(s) = live.iter().find(|s| s.post_id == r.post_id) {
            return Ok(v1::PeopleResult {
                status: Some(self.own_status(s).await?),
                ..Default::default()
            });
        }
        let limit = self.shared.config.max_statuses_per_day;
        let since = now.saturating_sub(DAY.as_millis() as u64);
        let posted = st(self
            .store()
            .count_statuses_since(self.caller, since, now)
            .await)?;
        if posted >= limit {
            crate::metrics::rejected(crate::metrics::STATUSES_PER_DAY);
            return Err(limit_reached(format!(
                "status limit reached: at most {limit} status updates per 24 hours"
            )));
        }
        // The caller's own image or video (and pinned), before anything is stored.
        if !r.media_id.is_empty() {
            self.check_media(&r.media_id, Use::Status).await?;
        }
        let ttl = u64::try_from(self.shared.config.status_ttl.as_millis()).unwrap_or(u64::MAX);
        let record = StatusRecord {
            id: rules::new_status_id(),
            user: self.caller,
            post_id: r.post_id,
            text: r.text,
            media_id: r.media_id,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl),
        };
        let stored = st(self.store().post_status(&record, now).await)?;
        // Another id: a concurrent retry stored it first.
        let status = if stored.id == record.id {
            rules::status_view(&stored, 0, false)
        } else {
            self.own_status(&stored).await?
        };
        Ok(v1::PeopleResult {
            status: Some(status),
            ..Default::default()
        })
    }

    /// `owner`'s live statuses for the caller, if the caller may see them.
    async fn statuses_of(
        &self,
        owner: UserId,
        now: u64,
    ) -> Result<Option<v1::UserStatuses>, v1::Error> {
        let statuses = st(self.store().statuses(owner, now).await)?;
        if statuses.is_empty() {
            return Ok(None);
        }
        // `owner` comes from the caller's contacts.
        let audience = self.shared.audience_toward(owner, self.caller).await?;
        if !rules::may_see_statuses(&audience, self.caller, true) {
            return Ok(None);
        }
        let viewed = in_rounds(&statuses, |s| self.store().has_viewed(s.id, self.caller)).await;
        let mut out = Vec::with_capacity(statuses.len());
        for (s, viewed) in statuses.iter().zip(viewed) {
            out.push(rules::status_view(s, 0, st(viewed)?));
        }
        let username = self.shared.username(owner).await?.unwrap_or_default();
        Ok(Some(v1::UserStatuses {
            user_id: owner.get(),
            username,
            statuses: out,
        }))
    }

    async fn status_list(&self) -> Answer {
        let now = now_ms();
        let (mut contacts, blocked) = tokio::try_join!(
            async { st(self.store().contacts(self.caller).await) },
            async { st(self.store().blocks(self.caller).await) },
        )?;
        // Nor those of contacts the caller blocked.
        contacts.retain(|c| blocked.binary_search(&c.user).is_err());
        let found = in_rounds(&contacts, |c| self.statuses_of(c.user, now)).await;
        let mut groups = Vec::new();
        for g in found {
            groups.extend(g?);
        }
        Ok(v1::PeopleResult {
            by_user: rules::order_by_user(groups),
            ..Default::default()
        })
    }

    async fn status_mine(&self) -> Answer {
        let mine = st(self.store().statuses(self.caller, now_ms()).await)?;
        let found = in_rounds(&mine, |s| self.own_status(s)).await;
        let statuses = found.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(v1::PeopleResult {
            statuses,
            ..Default::default()
        })
    }

    async fn status_view(&self, status_id: u64) -> Answer {
        let id = status_arg(status_id)?;
        let now = now_ms();
        // Invisible statuses are "not found": their existence is not revealed.
        let hidden = || not_found("no such status");
        let s = st(self.store().status(id, now).await)?.ok_or_else(hidden)?;
        if s.user == self.caller {
            // The poster looking at their own: not a view.
            return Ok(v1::PeopleResult::default());
        }
        let (audience, has_owner) =
            tokio::try_join!(self.shared.audience_toward(s.user, self.caller), async {
                st(self.store().is_contact(self.caller, s.user).await)
            },)?;
        if !rules::may_see_statuses(&audience, self.caller, has_owner) {
            return Err(hidden());
        }
        let view = View {
            viewer: self.caller,
            viewed_at_ms: now,
        };
        st(self.store().add_view(id, s.expires_at_ms, view).await)?;
        Ok(v1::PeopleResult::default())
    }

    async fn status_viewers(&self, status_id: u64) -> Answer {
        let id = status_arg(status_id)?;
        match st(self.store().status(id, now_ms()).await)? {
            Some(s) if s.user == self.caller => {}
            _ => return Err(not_found("no such status of yours")),
        }
        let viewers = st(self.store().views(id).await)?
            .into_iter()
            .map(|v| v1::StatusViewer {
                user_id: v.viewer.get(),
                viewed_at_ms: v.viewed_at_ms,
            })
            .collect();
        Ok(v1::PeopleResult {
            viewers,
            ..Default::default()
        })
    }

    async fn status_delete(&self, status_id: u64) -> Answer {
        let id = status_arg(status_id)?;
        if !st(self.store().delete_status(self.caller, id).await)? {
            return Err(not_found("no such status of yours"));
        }
        Ok(v1::PeopleResult::default())
    }
}

// ---------------------------------------------------------------------------------
// natter.people.audience

async fn audience(shared: &Shared, payload: Bytes) -> bus::Audience {
    let failed = |user_id, e| bus::Audience {
        user_id,
        error: Some(e),
        ..Default::default()
    };
    let req = match bus::AudienceRequest::decode(payload) {
        Ok(r) => r,
        Err(_) => return failed(0, error(ErrorCode::BadFrame, "undecodable AudienceRequest")),
    };
    let Ok(user) = UserId::new(req.user_id) else {
        return failed(0, invalid("user_id missing"));
    };
    let read = tokio::try_join!(
        shared.store.privacy(user),
        shared.store.contacts(user),
        shared.store.blocks(user),
    );
    match read {
        Ok((privacy, contacts, blocked)) => {
            let mut contacts: Vec<u64> = contacts.into_iter().map(|c| c.user.get()).collect();
            let mut blocked: Vec<u64> = blocked.into_iter().map(UserId::get).collect();
            contacts.sort_unstable();
            blocked.sort_unstable();
            bus::Audience {
                user_id: user.get(),
                privacy: Some(privacy.to_proto()),
                contacts,
                blocked,
                error: None,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, user = user.get(), "audience not readable");
            failed(
                user.get(),
                error(ErrorCode::Unavailable, "people store unavailable, retry"),
            )
        }
    }
}
