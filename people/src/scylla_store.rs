//! The ScyllaDB [`PeopleStore`], for cluster mode. It passes the same
//! [`crate::conformance`] suite as [`crate::RedbPeopleStore`]
//! (`tests/scylla_conformance.rs`, when `NATTER_TEST_SCYLLA` names a node), except that
//! concurrent adds may overshoot a limit (below).
//!
//! # Schema
//!
//! `deploy/cql/people.cql`, embedded and run statement by statement (all `IF NOT EXISTS`)
//! by [`ScyllaPeopleStore::connect`], after natter-cql has run `deploy/cql/schema.cql`
//! (which creates the keyspace and the other services' tables). See that file for the
//! tables.
//!
//! # Consistency
//!
//! natter-cql's driver settings: LOCAL_QUORUM reads and writes, LOCAL_SERIAL for
//! lightweight transactions, statements prepared once at connect.
//!
//! - Contacts and blocks are written only by lightweight transactions (`INSERT IF NOT
//!   EXISTS`, `UPDATE/DELETE IF EXISTS`), so the first time added stays and `remove_*`
//!   knows whether the entry was there. The limit is checked by counting the owner's
//!   partition before the insert: concurrent adds of new entries may each see room, so
//!   the list may exceed the limit by at most the number of racing calls (as the trait
//!   allows).
//! - A status's post id is claimed by a lightweight transaction on `status_posts` (which
//!   holds the whole status) before its other rows are written, so concurrent posts with
//!   one post id store one status. A post that finds a live claim rewrites that status's
//!   rows (idempotent: same values) and returns it, which also finishes a post whose
//!   writer died between the claim and the rows.
//! - Every status row is written `USING TTL` (seconds until `expires_at_ms`, counted from
//!   the caller's `now_ms`; for views, from the view's time), so [`PeopleStore::prune`]
//!   has nothing to do and returns 0. Reads also skip rows whose `expires_at_ms` has
//!   passed by the caller's clock.
//! - A view is `INSERT IF NOT EXISTS` (after a plain read, so a repeated view costs no
//!   Paxos round): the first view's time stays, and the answer says whether this was it.
//!
//! A status id already used by another status is overwritten (ids are random in
//! [1, 2^53), so only a caller's bug reuses one); the redb store refuses it instead.

use std::fmt;

use futures::future::BoxFuture;
use natter_cql::{
    Kind, Read, ReadStatement, bounded_ok, execute, from_cql, lwt_applied, prepare, query_opt,
    query_paged, storage, to_cql,
};
use natter_proto::UserId;
use scylla::{client::session::Session, statement::prepared::PreparedStatement};

use crate::{
    redb_store::{audience_code, audience_from_code},
    store::{
        Added, ContactRecord, PeopleStore, Privacy, ProfileRecord, StatusRecord, StoreError, View,
    },
};

/// How to reach ScyllaDB: natter-cql's config, the very type natter-messages and
/// natter-groups use, so one configuration section fills all three.
pub use natter_cql::ScyllaConfig as ScyllaPeopleConfig;

/// The people tables (see the module docs).
const SCHEMA_TEMPLATE: &str = include_str!("../../deploy/cql/people.cql");
/// The longest TTL ScyllaDB accepts (20 years), in seconds.
const MAX_TTL_SECS: u64 = 630_720_000;
/// Times a post retries its claim when the post id's holder changes under it.
const POST_ATTEMPTS: usize = 4;

impl From<natter_cql::Error> for StoreError {
    fn from(e: natter_cql::Error) -> Self {
        match e {
            natter_cql::Error::Storage(e) => StoreError::Storage(e),
            // The trait has no "invalid" error: a bad config or a number that does not fit
            // a bigint is a failure to store.
            natter_cql::Error::Invalid(e) => StoreError::Storage(format!("invalid input: {e}")),
            natter_cql::Error::Corrupt(e) => StoreError::Corrupt(e),
        }
    }
}

/// The statements of `template` (comments dropped, split at `;`), the keyspace filled in.
/// The same rules as natter-cql's `schema.cql`.
/// The TTL (seconds, at least 1: a TTL of 0 would mean "forever") of a row that expires
/// at `expires_at_ms`, written at `now_ms`.
fn ttl_secs(expires_at_ms: u64, now_ms: u64) -> i32 {
    let secs = expires_at_ms
        .saturating_sub(now_ms)
        .div_ceil(1000)
        .clamp(1, MAX_TTL_SECS);
    // Cannot fail: clamped to MAX_TTL_SECS, below i32::MAX.
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn audience_column(value: Option<i32>, what: &str) -> Result<crate::Audience, StoreError> {
    let code = value.unwrap_or(0);
    let code = u8::try_from(code)
        .map_err(|_| StoreError::Corrupt(format!("scylla: {what}: audience code {code}")))?;
    audience_from_code(code)
}

fn required(value: Option<i64>, what: &str) -> Result<u64, StoreError> {
    let value = value.ok_or_else(|| StoreError::Corrupt(format!("scylla: {what} is missing")))?;
    Ok(from_cql(value, what)?)
}

/// A status row's columns after its key: (post_id, body, media_id, created_at_ms,
/// expires_at_ms) in `status_posts`; `statuses` adds user_id first.
type StatusColumns = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

fn status_from(
    id: i64,
    user: UserId,
    (post_id, body, media_id, created, expires): StatusColumns,
) -> Result<StatusRecord, StoreError> {
    Ok(StatusRecord {
        id: from_cql(id, "status id")?,
        user,
        post_id: post_id.unwrap_or_default(),
        text: body.unwrap_or_default(),
        media_id: media_id.unwrap_or_default(),
        created_at_ms: required(created, "status created_at_ms")?,
        expires_at_ms: required(expires, "status expires_at_ms")?,
    })
}

// ---------------------------------------------------------------------------------------
// Prepared statements

/// Every statement the store runs after connecting.
struct Statements {
    profile: PreparedStatement,
    put_profile: PreparedStatement,
    privacy: PreparedStatement,
    put_privacy: PreparedStatement,

    contact: PreparedStatement,
    count_contacts: PreparedStatement,
    insert_contact: PreparedStatement,
    rename_contact: PreparedStatement,
    remove_contact: PreparedStatement,
    contacts: PreparedStatement,

    block: PreparedStatement,
    count_blocks: PreparedStatement,
    insert_block: PreparedStatement,
    remove_block: PreparedStatement,
    blocks: PreparedStatement,

    claim_post: PreparedStatement,
    replace_claim: PreparedStatement,
    read_claim: ReadStatement,
    release_claim: PreparedStatement,
    put_status: PreparedStatement,
    put_user_status: PreparedStatement,
    status: PreparedStatement,
    user_statuses: PreparedStatement,
    user_statuses_since: PreparedStatement,
    delete_status: PreparedStatement,
    delete_user_status: PreparedStatement,

    view: PreparedStatement,
    insert_view: PreparedStatement,
    views: PreparedStatement,
    delete_views: PreparedStatement,
    delete_profile: PreparedStatement,
    delete_privacy: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
        let p = |cql: String, kind| prepare(session, cql, kind);
        let status_columns = "post_id, body, media_id, created_at_ms, expires_at_ms";
        Ok(Statements {
            profile: p(
                format!(
                    "SELECT display_name, about, avatar_media_id, updated_at_ms \
                     FROM {ks}.profiles WHERE user_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            put_profile: p(
                format!(
                    "INSERT INTO {ks}.profiles \
                     (user_id, display_name, about, avatar_media_id, updated_at_ms) \
                     VALUES (?, ?, ?, ?, ?)"
                ),
                Kind::Write,
            )
            .await?,
            privacy: p(
                format!(
                    "SELECT last_seen, online, profile_photo, about FROM {ks}.privacy \
                     WHERE user_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            put_privacy: p(
                format!(
                    "INSERT INTO {ks}.privacy \
                     (user_id, last_seen, online, profile_photo, about) VALUES (?, ?, ?, ?, ?)"
                ),
                Kind::Write,
            )
            .await?,

            contact: p(
                format!(
                    "SELECT contact_id FROM {ks}.contacts WHERE owner_id = ? AND contact_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            count_contacts: p(
                format!("SELECT COUNT(*) FROM {ks}.contacts WHERE owner_id = ?"),
                Kind::Read,
            )
            .await?,
            insert_contact: p(
                format!(
                    "INSERT INTO {ks}.contacts (owner_id, contact_id, name, added_at_ms) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            rename_contact: p(
                format!(
                    "UPDATE {ks}.contacts SET name = ? WHERE owner_id = ? AND contact_id = ? \
                     IF EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            remove_contact: p(
                format!(
                    "DELETE FROM {ks}.contacts WHERE owner_id = ? AND contact_id = ? IF EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            contacts: p(
                format!(
                    "SELECT contact_id, name, added_at_ms FROM {ks}.contacts WHERE owner_id = ?"
                ),
                Kind::Read,
            )
            .await?,

            block: p(
                format!("SELECT blocked_id FROM {ks}.blocks WHERE owner_id = ? AND blocked_id = ?"),
                Kind::Read,
            )
            .await?,
            count_blocks: p(
                format!("SELECT COUNT(*) FROM {ks}.blocks WHERE owner_id = ?"),
                Kind::Read,
            )
            .await?,
            insert_block: p(
                format!(
                    "INSERT INTO {ks}.blocks (owner_id, blocked_id, blocked_at_ms) \
                     VALUES (?, ?, ?) IF NOT EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            remove_block: p(
                format!("DELETE FROM {ks}.blocks WHERE owner_id = ? AND blocked_id = ? IF EXISTS"),
                Kind::Lwt,
            )
            .await?,
            blocks: p(
                format!("SELECT blocked_id FROM {ks}.blocks WHERE owner_id = ?"),
                Kind::Read,
            )
            .await?,

            claim_post: p(
                format!(
                    "INSERT INTO {ks}.status_posts \
                     (user_id, post_id, status_id, body, media_id, created_at_ms, expires_at_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
                ),
                Kind::Lwt,
            )
            .await?,
            replace_claim: p(
                format!(
                    "UPDATE {ks}.status_posts USING TTL ? \
                     SET status_id = ?, body = ?, media_id = ?, created_at_ms = ?, \
                     expires_at_ms = ? \
                     WHERE user_id = ? AND post_id = ? IF status_id = ?"
                ),
                Kind::Lwt,
            )
            .await?,
            read_claim: ReadStatement::prepare(
                session,
                format!(
                    "SELECT status_id, post_id, body, media_id, created_at_ms, expires_at_ms \
                     FROM {ks}.status_posts WHERE user_id = ? AND post_id = ?"
                ),
            )
            .await?,
            release_claim: p(
                format!(
                    "DELETE FROM {ks}.status_posts WHERE user_id = ? AND post_id = ? \
                     IF status_id = ?"
                ),
                Kind::Lwt,
            )
            .await?,
            put_status: p(
                format!(
                    "INSERT INTO {ks}.statuses (status_id, user_id, {status_columns}) \
                     VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
                ),
                Kind::Write,
            )
            .await?,
            put_user_status: p(
                format!(
                    "INSERT INTO {ks}.user_statuses (user_id, status_id, {status_columns}) \
                     VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
                ),
                Kind::Write,
            )
            .await?,
            status: p(
                format!("SELECT user_id, {status_columns} FROM {ks}.statuses WHERE status_id = ?"),
                Kind::Read,
            )
            .await?,
            user_statuses: p(
                format!(
                    "SELECT status_id, {status_columns} FROM {ks}.user_statuses \
                     WHERE user_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            user_statuses_since: p(
                format!(
                    "SELECT expires_at_ms FROM {ks}.user_statuses \
                     WHERE user_id = ? AND created_at_ms >= ?"
                ),
                Kind::Read,
            )
            .await?,
            delete_status: p(
                format!("DELETE FROM {ks}.statuses WHERE status_id = ?"),
                Kind::Write,
            )
            .await?,
            delete_user_status: p(
                format!(
                    "DELETE FROM {ks}.user_statuses \
                     WHERE user_id = ? AND created_at_ms = ? AND status_id = ?"
                ),
                Kind::Write,
            )
            .await?,

            view: p(
                format!(
                    "SELECT viewer_id FROM {ks}.status_views \
                     WHERE status_id = ? AND viewer_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            insert_view: p(
                format!(
                    "INSERT INTO {ks}.status_views (status_id, viewer_id, viewed_at_ms) \
                     VALUES (?, ?, ?) IF NOT EXISTS USING TTL ?"
                ),
                Kind::Lwt,
            )
            .await?,
            views: p(
                format!(
                    "SELECT viewer_id, viewed_at_ms FROM {ks}.status_views WHERE status_id = ?"
                ),
                Kind::Read,
            )
            .await?,
            delete_views: p(
                format!("DELETE FROM {ks}.status_views WHERE status_id = ?"),
                Kind::Write,
            )
            .await?,
            delete_profile: p(
                format!("DELETE FROM {ks}.profiles WHERE user_id = ?"),
                Kind::Write,
            )
            .await?,
            delete_privacy: p(
                format!("DELETE FROM {ks}.privacy WHERE user_id = ?"),
                Kind::Write,
            )
            .await?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// The store

/// The ScyllaDB-backed people store: one driver session (connection pools to every node)
/// and the prepared statements. Dropping it closes the connections.
pub struct ScyllaPeopleStore {
    session: Session,
    keyspace: String,
    st: Statements,
}

impl fmt::Debug for ScyllaPeopleStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaPeopleStore")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

/// Which claim a post found on its post id.
enum Claim {
    /// None: the post may claim it.
    Free,
    /// A live status: the answer.
    Live(StatusRecord),
    /// An expired status (by the caller's clock) that still holds the claim.
    Stale(i64),
}

impl ScyllaPeopleStore {
    /// Connects (natter-cql: checks the config, creates the keyspace and
    /// `deploy/cql/schema.cql`'s tables if missing), creates the people tables if missing
    /// and prepares every statement. Fails with [`StoreError::Storage`] on a bad config,
    /// if the cluster cannot be reached or if it refuses the schema.
    pub async fn connect(config: ScyllaPeopleConfig) -> Result<ScyllaPeopleStore, StoreError> {
        let session = natter_cql::connect_with(&config, &[SCHEMA_TEMPLATE]).await?;
        let st = Statements::prepare(&session, &config.keyspace).await?;
        Ok(ScyllaPeopleStore {
            session,
            keyspace: config.keyspace,
            st,
        })
    }

    /// Deletes the rows of `status`: its post id's claim first (a repost with the same
    /// post id is then new), then its index row and views, the `statuses` row last, so a
    /// delete that fails half way is finished by calling it again.
    async fn delete_status_rows(&self, status: &StatusRecord) -> Result<(), StoreError> {
        let cql_id = to_cql(status.id, "status id")?;
        let cql_user = to_cql(status.user.get(), "user id")?;
        self.lwt(
            &self.st.release_claim,
            (cql_user, status.post_id.as_str(), cql_id),
            "releasing a status post id",
        )
        .await?;
        let (a, b) = futures::join!(
            execute(
                &self.session,
                &self.st.delete_user_status,
                (
                    cql_user,
                    to_cql(status.created_at_ms, "created_at_ms")?,
                    cql_id
                ),
                "deleting a user's status",
            ),
            execute(
                &self.session,
                &self.st.delete_views,
                (cql_id,),
                "deleting a status's views",
            ),
        );
        a?;
        b?;
        execute(
            &self.session,
            &self.st.delete_status,
            (cql_id,),
            "deleting a status",
        )
        .await?;
        Ok(())
    }

    /// Runs a lightweight transaction; true if it applied.
    async fn lwt(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        what: &str,
    ) -> Result<bool, StoreError> {
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| storage(what, e))?;
        Ok(lwt_applied(result)?)
    }

    async fn count(
        &self,
        statement: &PreparedStatement,
        owner: i64,
        what: &str,
    ) -> Result<u64, StoreError> {
        let row: Option<(i64,)> = query_opt(&self.session, statement, (owner,), what).await?;
        Ok(from_cql(row.map_or(0, |(n,)| n), what)?)
    }

    /// Whether (owner, other) is in the table `statement` reads.
    async fn exists(
        &self,
        statement: &PreparedStatement,
        owner: i64,
        other: i64,
        what: &str,
    ) -> Result<bool, StoreError> {
        let row: Option<(i64,)> = query_opt(&self.session, statement, (owner, other), what).await?;
        Ok(row.is_some())
    }

    /// Who holds the post id (`user`, `post_id`) (a serial read: it also completes a
    /// claim in flight).
    async fn claim(&self, user: UserId, post_id: &str, now_ms: u64) -> Result<Claim, StoreError> {
        const WHAT: &str = "reading a status post id";
        type ClaimRow = (
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        );
        let row: Option<ClaimRow> = query_opt(
            &self.session,
            self.st.read_claim.at(Read::Serial),
            (to_cql(user.get(), "user id")?, post_id),
            WHAT,
        )
        .await?;
        let Some((Some(id), post, body, media, created, expires)) = row else {
            return Ok(Claim::Free);
        };
        let status = status_from(id, user, (post, body, media, created, expires))?;
        Ok(if status.expires_at_ms > now_ms {
            Claim::Live(status)
        } else {
            Claim::Stale(id)
        })
    }

    /// Writes a status's `statuses` and `user_statuses` rows (plain, idempotent writes).
    async fn write_status_rows(&self, s: &StatusRecord, now_ms: u64) -> Result<(), StoreError> {
        let ttl = ttl_secs(s.expires_at_ms, now_ms);
        let id = to_cql(s.id, "status id")?;
        let user = to_cql(s.user.get(), "user id")?;
        let created = to_cql(s.created_at_ms, "created_at_ms")?;
        let expires = to_cql(s.expires_at_ms, "expires_at_ms")?;
        let columns = (
            s.post_id.as_str(),
            s.text.as_str(),
            s.media_id.as_str(),
            created,
            expires,
        );
        let (a, b) = futures::join!(
            execute(
                &self.session,
                &self.st.put_status,
                (
                    id, user, columns.0, columns.1, columns.2, created, expires, ttl
                ),
                "writing a status",
            ),
            execute(
                &self.session,
                &self.st.put_user_status,
                (
                    user, id, columns.0, columns.1, columns.2, created, expires, ttl
                ),
                "writing a user's status",
            ),
        );
        a?;
        b?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl PeopleStore for ScyllaPeopleStore {
    async fn profile(&self, user: UserId) -> Result<Option<ProfileRecord>, StoreError> {
        type Row = (Option<String>, Option<String>, Option<String>, Option<i64>);
        let row: Option<Row> = query_opt(
            &self.session,
            &self.st.profile,
            (to_cql(user.get(), "user id")?,),
            "reading a profile",
        )
        .await?;
        row.map(|(display_name, about, avatar, updated)| {
            Ok(ProfileRecord {
                display_name: display_name.unwrap_or_default(),
                about: about.unwrap_or_default(),
                avatar_media_id: avatar.unwrap_or_default(),
                updated_at_ms: from_cql(updated.unwrap_or(0), "profile updated_at_ms")?,
            })
        })
        .transpose()
    }

    async fn put_profile(&self, user: UserId, profile: &ProfileRecord) -> Result<(), StoreError> {
        execute(
            &self.session,
            &self.st.put_profile,
            (
                to_cql(user.get(), "user id")?,
                profile.display_name.as_str(),
                profile.about.as_str(),
                profile.avatar_media_id.as_str(),
                to_cql(profile.updated_at_ms, "updated_at_ms")?,
            ),
            "writing a profile",
        )
        .await?;
        Ok(())
    }

    async fn privacy(&self, user: UserId) -> Result<Privacy, StoreError> {
        type Row = (Option<i32>, Option<i32>, Option<i32>, Option<i32>);
        let row: Option<Row> = query_opt(
            &self.session,
            &self.st.privacy,
            (to_cql(user.get(), "user id")?,),
            "reading privacy settings",
        )
        .await?;
        let Some((last_seen, online, photo, about)) = row else {
            return Ok(Privacy::default());
        };
        Ok(Privacy {
            last_seen: audience_column(last_seen, "last_seen")?,
            online: audience_column(online, "online")?,
            profile_photo: audience_column(photo, "profile_photo")?,
            about: audience_column(about, "about")?,
        })
    }

    async fn put_privacy(&self, user: UserId, privacy: Privacy) -> Result<(), StoreError> {
        let code = |a| i32::from(audience_code(a));
        execute(
            &self.session,
            &self.st.put_privacy,
            (
                to_cql(user.get(), "user id")?,
                code(privacy.last_seen),
                code(privacy.online),
                code(privacy.profile_photo),
                code(privacy.about),
            ),
            "writing privacy settings",
        )
        .await?;
        Ok(())
    }

    async fn add_contact(
        &self,
        owner: UserId,
        contact: &ContactRecord,
        limit: u32,
    ) -> Result<Added, StoreError> {
        let owner = to_cql(owner.get(), "user id")?;
        let other = to_cql(contact.user.get(), "contact id")?;
        let name = contact.name.as_str();
        let rename = || {
            self.lwt(
                &self.st.rename_contact,
                (name, owner, other),
                "renaming a contact",
            )
        };
        if self
            .exists(&self.st.contact, owner, other, "reading a contact")
            .await?
            && rename().await?
        {
            return Ok(Added::Updated);
        }
        // New (or removed since the read). Counted before the insert: racing adds may
        // each see room (see the module docs).
        let count = self
            .count(&self.st.count_contacts, owner, "counting contacts")
            .await?;
        if count >= u64::from(limit) {
            return Ok(Added::LimitReached);
        }
        let values = (
            owner,
            other,
            name,
            to_cql(contact.added_at_ms, "added_at_ms")?,
        );
        if self
            .lwt(&self.st.insert_contact, values, "adding a contact")
            .await?
        {
            return Ok(Added::Added);
        }
        // Added by a racing call in the meantime.
        if rename().await? {
            return Ok(Added::Updated);
        }
        Err(StoreError::Storage(format!(
            "scylla: contact {other} of {owner} was added and removed concurrently; try again"
        )))
    }

    async fn remove_contact(&self, owner: UserId, contact: UserId) -> Result<bool, StoreError> {
        self.lwt(
            &self.st.remove_contact,
            (
                to_cql(owner.get(), "user id")?,
                to_cql(contact.get(), "contact id")?,
            ),
            "removing a contact",
        )
        .await
    }

    async fn contacts(&self, owner: UserId) -> Result<Vec<ContactRecord>, StoreError> {
        const WHAT: &str = "reading contacts";
        let rows: Vec<(i64, Option<String>, Option<i64>)> = query_paged(
            &self.session,
            &self.st.contacts,
            (to_cql(owner.get(), "user id")?,),
            WHAT,
        )
        .await?;
        rows.into_iter()
            .map(|(user, name, added)| {
                Ok(ContactRecord {
                    user: UserId(from_cql(user, "contact id")?),
                    name: name.unwrap_or_default(),
                    added_at_ms: required(added, "contact added_at_ms")?,
                })
            })
            .collect()
    }

    async fn is_contact(&self, owner: UserId, other: UserId) -> Result<bool, StoreError> {
        self.exists(
            &self.st.contact,
            to_cql(owner.get(), "user id")?,
            to_cql(other.get(), "contact id")?,
            "reading a contact",
        )
        .await
    }

    async fn add_block(
        &self,
        owner: UserId,
        blocked: UserId,
        at_ms: u64,
        limit: u32,
    ) -> Result<Added, StoreError> {
        let owner = to_cql(owner.get(), "user id")?;
        let blocked = to_cql(blocked.get(), "blocked user id")?;
        if self
            .exists(&self.st.block, owner, blocked, "reading a block")
            .await?
        {
            return Ok(Added::Updated);
        }
        let count = self
            .count(&self.st.count_blocks, owner, "counting blocks")
            .await?;
        if count >= u64::from(limit) {
            return Ok(Added::LimitReached);
        }
        let values = (owner, blocked, to_cql(at_ms, "blocked_at_ms")?);
        Ok(
            if self
                .lwt(&self.st.insert_block, values, "adding a block")
                .await?
            {
                Added::Added
            } else {
                // Blocked by a racing call in the meantime; its time stays.
                Added::Updated
            },
        )
    }

    async fn remove_block(&self, owner: UserId, blocked: UserId) -> Result<bool, StoreError> {
        self.lwt(
            &self.st.remove_block,
            (
                to_cql(owner.get(), "user id")?,
                to_cql(blocked.get(), "blocked user id")?,
            ),
            "removing a block",
        )
        .await
    }

    async fn blocks(&self, owner: UserId) -> Result<Vec<UserId>, StoreError> {
        let rows: Vec<(i64,)> = query_paged(
            &self.session,
            &self.st.blocks,
            (to_cql(owner.get(), "user id")?,),
            "reading blocks",
        )
        .await?;
        rows.into_iter()
            .map(|(u,)| Ok(UserId(from_cql(u, "blocked user id")?)))
            .collect()
    }

    async fn post_status(
        &self,
        status: &StatusRecord,
        now_ms: u64,
    ) -> Result<StatusRecord, StoreError> {
        const WHAT: &str = "claiming a status post id";
        let user = to_cql(status.user.get(), "user id")?;
        let id = to_cql(status.id, "status id")?;
        let created = to_cql(status.created_at_ms, "created_at_ms")?;
        let expires = to_cql(status.expires_at_ms, "expires_at_ms")?;
        let ttl = ttl_secs(status.expires_at_ms, now_ms);
        let (post_id, body, media) = (
            status.post_id.as_str(),
            status.text.as_str(),
            status.media_id.as_str(),
        );
        for _ in 0..POST_ATTEMPTS {
            let claimed = match self.claim(status.user, post_id, now_ms).await? {
                Claim::Free => {
                    self.lwt(
                        &self.st.claim_post,
                        (user, post_id, id, body, media, created, expires, ttl),
                        WHAT,
                    )
                    .await?
                }
                Claim::Live(existing) => {
                    // Finish that post, in case its writer died after the claim.
                    self.write_status_rows(&existing, now_ms).await?;
                    return Ok(existing);
                }
                Claim::Stale(old) => {
                    self.lwt(
                        &self.st.replace_claim,
                        (ttl, id, body, media, created, expires, user, post_id, old),
                        WHAT,
                    )
                    .await?
                }
            };
            if claimed {
                self.write_status_rows(status, now_ms).await?;
                return Ok(status.clone());
            }
            // Another post took the claim between the read and the transaction: look
            // again.
        }
        Err(StoreError::Storage(format!(
            "scylla: post id {post_id:?} of user {} keeps changing hands; try again",
            status.user
        )))
    }

    async fn statuses(&self, user: UserId, now_ms: u64) -> Result<Vec<StatusRecord>, StoreError> {
        type Row = (
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        );
        let rows: Vec<Row> = query_paged(
            &self.session,
            &self.st.user_statuses,
            (to_cql(user.get(), "user id")?,),
            "reading a user's statuses",
        )
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, post, body, media, created, expires) in rows {
            let status = status_from(id, user, (post, body, media, created, expires))?;
            if status.expires_at_ms > now_ms {
                out.push(status);
            }
        }
        Ok(out)
    }

    async fn status(&self, id: u64, now_ms: u64) -> Result<Option<StatusRecord>, StoreError> {
        type Row = (
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        );
        let cql_id = to_cql(id, "status id")?;
        let row: Option<Row> = query_opt(
            &self.session,
            &self.st.status,
            (cql_id,),
            "reading a status",
        )
        .await?;
        let Some((user, post, body, media, created, expires)) = row else {
            return Ok(None);
        };
        let user = UserId(required(user, "status user_id")?);
        let status = status_from(cql_id, user, (post, body, media, created, expires))?;
        Ok((status.expires_at_ms > now_ms).then_some(status))
    }

    async fn count_statuses_since(
        &self,
        user: UserId,
        since_ms: u64,
        now_ms: u64,
    ) -> Result<u32, StoreError> {
        let rows: Vec<(Option<i64>,)> = query_paged(
            &self.session,
            &self.st.user_statuses_since,
            (
                to_cql(user.get(), "user id")?,
                // Times beyond a bigint: nothing was posted then.
                i64::try_from(since_ms).unwrap_or(i64::MAX),
            ),
            "counting a user's statuses",
        )
        .await?;
        let mut count: u32 = 0;
        for (expires,) in rows {
            if required(expires, "status expires_at_ms")? > now_ms {
                count = count.saturating_add(1);
            }
        }
        Ok(count)
    }

    async fn delete_status(&self, user: UserId, id: u64) -> Result<bool, StoreError> {
        // Any time will do: only whether it is stored, and whose, matters.
        let Some(status) = self.status(id, 0).await? else {
            return Ok(false);
        };
        if status.user != user {
            return Ok(false);
        }
        self.delete_status_rows(&status).await?;
        Ok(true)
    }

    async fn add_view(&self, id: u64, expires_at_ms: u64, view: View) -> Result<bool, StoreError> {
        let cql_id = to_cql(id, "status id")?;
        let viewer = to_cql(view.viewer.get(), "viewer id")?;
        if self
            .exists(&self.st.view, cql_id, viewer, "reading a view")
            .await?
        {
            return Ok(false);
        }
        let values = (
            cql_id,
            viewer,
            to_cql(view.viewed_at_ms, "viewed_at_ms")?,
            // The view happens at its own time: the status lives until expires_at_ms.
            ttl_secs(expires_at_ms, view.viewed_at_ms),
        );
        self.lwt(&self.st.insert_view, values, "adding a view")
            .await
    }

    async fn views(&self, id: u64) -> Result<Vec<View>, StoreError> {
        let rows: Vec<(i64, Option<i64>)> = query_paged(
            &self.session,
            &self.st.views,
            (to_cql(id, "status id")?,),
            "reading a status's views",
        )
        .await?;
        let mut views = rows
            .into_iter()
            .map(|(viewer, at)| {
                Ok(View {
                    viewer: UserId(from_cql(viewer, "viewer id")?),
                    viewed_at_ms: required(at, "viewed_at_ms")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        views.sort_by_key(|v| (v.viewed_at_ms, v.viewer));
        Ok(views)
    }

    async fn has_viewed(&self, id: u64, viewer: UserId) -> Result<bool, StoreError> {
        self.exists(
            &self.st.view,
            to_cql(id, "status id")?,
            to_cql(viewer.get(), "viewer id")?,
            "reading a view",
        )
        .await
    }

    async fn delete_user(&self, user: UserId) -> Result<(), StoreError> {
        // Statuses first, from the user's index, which goes row by row with them: a
        // repeated call finds what a failed one left. (At most a day's statuses: rows
        // expire by TTL.)
        for status in self.statuses(user, 0).await? {
            self.delete_status_rows(&status).await?;
        }
        // Contacts and blocks one by one through the same lightweight transactions that
        // write them, not a partition delete: a plain write's timestamp (the client's
        // clock) may be older than a Paxos write's, and the entries would survive it.
        let contacts: Vec<UserId> = self
            .contacts(user)
            .await?
            .into_iter()
            .map(|c| c.user)
            .collect();
        let tasks: Vec<BoxFuture<'_, Result<bool, StoreError>>> = contacts
            .iter()
            .map(|&c| self.remove_contact(user, c))
            .collect();
        bounded_ok(tasks).await?;
        let blocks = self.blocks(user).await?;
        let tasks: Vec<BoxFuture<'_, Result<bool, StoreError>>> =
            blocks.iter().map(|&b| self.remove_block(user, b)).collect();
        bounded_ok(tasks).await?;
        let cql_user = to_cql(user.get(), "user id")?;
        let (privacy, profile) = futures::join!(
            execute(
                &self.session,
                &self.st.delete_privacy,
                (cql_user,),
                "deleting a user's privacy settings",
            ),
            execute(
                &self.session,
                &self.st.delete_profile,
                (cql_user,),
                "deleting a user's profile",
            ),
        );
        privacy?;
        profile?;
        Ok(())
    }

    async fn prune(&self, _now_ms: u64) -> Result<usize, StoreError> {
        // Every status row carries a TTL: ScyllaDB deletes them by itself.
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_and_stay_in_range() {
        assert_eq!(ttl_secs(10_000, 0), 10);
        assert_eq!(ttl_secs(10_001, 0), 11);
        assert_eq!(ttl_secs(1, 0), 1);
        // Expired already: the shortest TTL, never 0 (which would keep the row forever).
        assert_eq!(ttl_secs(5, 10), 1);
        assert_eq!(ttl_secs(u64::MAX, 0), 630_720_000);
    }

    #[test]
    fn the_people_schema_is_templated_with_the_keyspace() {
        let statements = natter_cql::schema_statements(SCHEMA_TEMPLATE, "natter_x", "", "");
        let creates = SCHEMA_TEMPLATE
            .lines()
            .filter(|l| l.starts_with("CREATE "))
            .count();
        assert_eq!(statements.len(), creates, "{statements:#?}");
        for table in [
            "profiles",
            "privacy",
            "contacts",
            "blocks",
            "statuses",
            "user_statuses",
            "status_posts",
            "status_views",
        ] {
            let create = format!("CREATE TABLE IF NOT EXISTS natter_x.{table} (");
            assert!(
                statements.iter().any(|s| s.starts_with(&create)),
                "{table} missing"
            );
        }
        for s in &statements {
            assert!(!s.contains("{{") && !s.contains("--"), "{s}");
        }
    }
}
