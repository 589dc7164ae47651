//! The ScyllaDB [`GroupStore`], for cluster mode. It passes the same
//! [`crate::conformance`] suite as [`crate::RedbGroupStore`]
//! (`tests/scylla_conformance.rs`, when `NATTER_TEST_SCYLLA` names a node).
//!
//! # Schema
//!
//! `deploy/cql/schema.cql` (the "groups" part), embedded and run statement by statement
//! (all `IF NOT EXISTS`) by [`ScyllaGroupStore::connect`], exactly as natter-messages'
//! `ScyllaStore` runs it: the whole file, so whichever store connects first creates the
//! keyspace's complete schema, and both see one definition of it.
//!
//! - `groups (group_id) → version, record, indexed_version, unindexed_drops`: `record` is
//!   the prost-encoded `GroupRecord`, `version` its `info.version` (what the lightweight
//!   transactions compare). The last two columns keep the user index repairable (below).
//! - `user_groups (user_id, group_id) → joined_seq, left_seq`: what
//!   [`GroupStore::user_groups`] reads (one partition, clustered by group id). Written
//!   only `USING TIMESTAMP <group version>`, so the entry of the newest version wins
//!   whatever the order in which writes (or driver retries) arrive, and a removal by
//!   version n is undone only by a write of a later version.
//!
//! # How `save` works
//!
//! 1. Validate without I/O ([`StoreError::Invalid`]; ids and seqs must also fit a CQL
//!    bigint).
//! 2. For an update, read the row's `version`, `indexed_version` and `unindexed_drops`
//!    (LOCAL_QUORUM, then LOCAL_SERIAL if the version is not the expected one, which also
//!    completes a commit still in flight). A version other than `previous`'s is a
//!    [`StoreError::Conflict`] before anything is written.
//! 3. Plan the index writes (see below).
//! 4. Commit the record with a lightweight transaction (Paxos, LOCAL_SERIAL): `INSERT ...
//!    IF NOT EXISTS` for a create, `UPDATE ... IF version = <previous>` otherwise. Of two
//!    racing saves with the same `previous`, exactly one applies; the other gets
//!    `Conflict` and writes nothing else. When the outcome is unknown (a timeout), a
//!    LOCAL_SERIAL read tells whether this very record is stored.
//! 5. Write the index entries and remove the dropped ones (LOCAL_QUORUM, at most
//!    [`MAX_IN_FLIGHT`] at a time), then set `indexed_version` to the new version.
//!
//! ## The index window, and how the next save closes it
//!
//! Steps 4 and 5 are not atomic: if the process dies (or step 5 fails, reported as
//! [`StoreError::Storage`] although the record is stored) between them, `user_groups`
//! shows the users whose entry changed in that save as they were before it, until the
//! group's next save. Rewriting every entry on every save (the simple fix) would cost a
//! 1,024-member group 1,024 writes per change and would still never remove the entry of a
//! user the failed save dropped from the record entirely (the next save cannot see that
//! user: it is in neither its previous nor its new record). Instead:
//!
//! - `indexed_version` names the last version whose index writes all completed. It is
//!   the row's only cell written without a lightweight transaction (`USING TIMESTAMP
//!   <version>`, so a late write of an older mark never hides a newer one), and no
//!   lightweight transaction writes it, so the two kinds of write never race on a cell;
//! - `unindexed_drops`, written in the same lightweight transaction as the record, lists
//!   the users whose entries that save removes (carried over while saves keep failing).
//!
//! Step 3 writes only the entries that differ between `previous` and the new record when
//! `indexed_version` is `previous`'s version (the normal case), else every entry of the
//! new record and the removal of `unindexed_drops` as well. So one successful save of the
//! group repairs everything a failed one left, whatever the group's size. The diff trusts
//! that `previous` is what is stored, which the version check makes true for callers that
//! pass what they loaded (a version is stored once).
//!
//! # Driver settings
//!
//! As in natter-messages' `ScyllaStore`: statements prepared once at connect; default
//! load balancing policy, token-aware, restricted to `local_dc` when it is set;
//! LOCAL_QUORUM reads and writes, LOCAL_SERIAL for lightweight transactions and serial
//! reads; the configured request timeout; the default retry policy, which retries only
//! statements marked idempotent (reads and the timestamped writes, never a lightweight
//! transaction). On ScyllaDB versions whose tablets do not support lightweight
//! transactions, the keyspace is created with tablets disabled.

use std::{collections::HashSet, fmt, fmt::Display, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _, future::BoxFuture, stream};
use natter_proto::{
    GroupId, UserId,
    bus::{GroupAccess, GroupRecord},
};
use prost::Message as _;
use scylla::{
    client::{
        execution_profile::ExecutionProfile, pager::NextRowError, session::Session,
        session_builder::SessionBuilder,
    },
    deserialize::row::DeserializeRow,
    policies::{load_balancing::DefaultPolicy, retry::DefaultRetryPolicy},
    response::query_result::QueryResult,
    serialize::row::SerializeRow,
    statement::{
        Consistency, SerialConsistency, prepared::PreparedStatement, unprepared::Statement,
    },
    value::{CqlValue, Row},
};

use crate::store::{
    CheckedSave, GroupStore, IndexChanges, IndexEntries, StoreError, check_save, index_changes,
};

/// How to reach ScyllaDB (the same fields as natter-messages' `ScyllaConfig`, so one
/// configuration section can fill both).
#[derive(Debug, Clone)]
pub struct ScyllaGroupConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace holding natter's tables (created if missing). Lowercase letters, digits
    /// and `_`, starting with a letter, at most 48 characters.
    pub keyspace: String,
    /// Replication factor used when the keyspace is created.
    pub replication_factor: u32,
    /// Datacenter for LOCAL_QUORUM and DC-aware routing (None: any).
    pub local_dc: Option<String>,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

/// The schema template, shared with natter-messages (placeholders: see the file).
const SCHEMA_TEMPLATE: &str = include_str!("../../deploy/cql/schema.cql");

/// Most requests one save keeps in flight.
const MAX_IN_FLIGHT: usize = 64;
/// Least time a schema statement may take (schema agreement can be slow).
const DDL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest keyspace name CQL accepts.
const MAX_KEYSPACE_LEN: usize = 48;

/// Runs `tasks`, at most [`MAX_IN_FLIGHT`] at a time; every task runs and the first
/// error (in order) wins. (Boxed so that no closure is held across an await: that keeps
/// the futures provably `Send` for `async_trait`.)
async fn bounded_ok(tasks: Vec<BoxFuture<'_, Result<(), StoreError>>>) -> Result<(), StoreError> {
    let results: Vec<Result<(), StoreError>> =
        stream::iter(tasks).buffered(MAX_IN_FLIGHT).collect().await;
    results.into_iter().collect()
}

fn storage(context: impl Display, e: impl Display) -> StoreError {
    StoreError::Storage(format!("scylla: {context}: {e}"))
}

fn corrupt(context: impl Display, e: impl Display) -> StoreError {
    StoreError::Corrupt(format!("scylla: {context}: {e}"))
}

fn next_row_error(context: &str, e: NextRowError) -> StoreError {
    match e {
        NextRowError::RowDeserializationError(e) => corrupt(context, e),
        other => storage(context, other),
    }
}

/// A value for a bigint column; natter's ids, seqs and versions stay below 2^63.
fn to_cql(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Invalid(format!("{what} {value} does not fit a CQL bigint")))
}

/// A stored bigint read back as an id, seq or version.
fn from_cql(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("stored {what} {value} < 0")))
}

/// [`check_save`], plus what only this store needs: every number fits a bigint.
fn check_save_cql(
    record: &GroupRecord,
    previous: Option<&GroupRecord>,
) -> Result<CheckedSave, StoreError> {
    let checked = check_save(record, previous)?;
    to_cql(checked.group, "group id")?;
    to_cql(checked.version, "version")?;
    for (&user, &(joined, left)) in &checked.entries {
        to_cql(user, "user id")?;
        to_cql(joined, "joined_seq")?;
        to_cql(left, "left_seq")?;
    }
    Ok(checked)
}

// ---------------------------------------------------------------------------------------
// Schema (the same rules as natter-messages' ScyllaStore, which reads the same file)

/// Refuses keyspace names that would need quoting (or could inject CQL).
fn validate_keyspace(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_KEYSPACE_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "keyspace `{name}`: use 1 to {MAX_KEYSPACE_LEN} lowercase letters, digits or `_`, \
             starting with a letter"
        )))
    }
}

fn validate_config(config: &ScyllaGroupConfig) -> Result<(), StoreError> {
    validate_keyspace(&config.keyspace)?;
    if config.nodes.is_empty() {
        return Err(StoreError::Invalid("no ScyllaDB node configured".into()));
    }
    if config.replication_factor == 0 {
        return Err(StoreError::Invalid(
            "replication factor must be at least 1".into(),
        ));
    }
    if config.local_dc.as_deref().is_some_and(str::is_empty) {
        return Err(StoreError::Invalid("local_dc is empty".into()));
    }
    Ok(())
}

/// The keyspace's replication map, as a CQL map literal.
fn replication_map(replication_factor: u32, local_dc: Option<&str>) -> String {
    match local_dc {
        Some(dc) => format!(
            "{{'class': 'NetworkTopologyStrategy', '{}': {replication_factor}}}",
            dc.replace('\'', "''")
        ),
        None => {
            format!("{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}")
        }
    }
}

/// The statements of `template` (comments dropped, split at `;`), placeholders filled in.
fn schema_statements(
    template: &str,
    keyspace: &str,
    replication: &str,
    keyspace_options: &str,
) -> Vec<String> {
    let code: Vec<&str> = template
        .lines()
        .map(|line| line.find("--").map_or(line, |at| &line[..at]))
        .collect();
    code.join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("{{keyspace}}", keyspace)
                .replace("{{replication}}", replication)
                .replace("{{keyspace_options}}", keyspace_options)
        })
        .collect()
}

/// The extra keyspace option this cluster needs for lightweight transactions.
async fn keyspace_options(session: &Session) -> &'static str {
    let features = session
        .query_unpaged(
            "SELECT supported_features FROM system.local WHERE key = 'local'",
            (),
        )
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.into_rows_result().map_err(|e| e.to_string()))
        .and_then(|rows| {
            rows.maybe_first_row::<(Option<String>,)>()
                .map_err(|e| e.to_string())
        });
    match features {
        Ok(row) => {
            let features = row.and_then(|(f,)| f).unwrap_or_default();
            let features: HashSet<&str> = features.split(',').collect();
            if features.contains("TABLETS") && !features.contains("LWT_WITH_TABLETS") {
                " AND tablets = {'enabled': false}"
            } else {
                ""
            }
        }
        Err(e) => {
            // Not ScyllaDB (Cassandra has no such column), or the node did not answer:
            // create the keyspace with the server's defaults.
            tracing::debug!(error = %e, "could not read the cluster's features");
            ""
        }
    }
}

// ---------------------------------------------------------------------------------------
// Planning the index writes (no I/O)

/// What the stored row says about its index (step 2 of `save`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct IndexState {
    /// True if every index write of the stored version completed.
    complete: bool,
    /// Removals the stored version's save made (or still owed), if not complete.
    unindexed_drops: Vec<u64>,
}

/// The index writes that take `user_groups` from the stored version (`old` entries, in
/// the state `state`) to `new`. See the module docs.
fn plan_index(old: &IndexEntries, new: &IndexEntries, state: &IndexState) -> IndexChanges {
    if state.complete {
        return index_changes(old, new);
    }
    let mut removals: Vec<u64> = old
        .keys()
        .chain(&state.unindexed_drops)
        .filter(|user| !new.contains_key(user))
        .copied()
        .collect();
    removals.sort_unstable();
    removals.dedup();
    IndexChanges {
        writes: new.iter().map(|(&user, &entry)| (user, entry)).collect(),
        removals,
    }
}

// ---------------------------------------------------------------------------------------
// Prepared statements

/// How a statement is run.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// LOCAL_QUORUM, retried on another replica if need be.
    Read,
    /// LOCAL_SERIAL.
    SerialRead,
    /// LOCAL_QUORUM, safe to retry (timestamped).
    Write,
    /// A lightweight transaction: LOCAL_QUORUM commit, LOCAL_SERIAL Paxos, never retried.
    Lwt,
}

fn configure(statement: &mut PreparedStatement, kind: Kind) {
    match kind {
        Kind::Read | Kind::Write => {
            statement.set_consistency(Consistency::LocalQuorum);
            statement.set_is_idempotent(true);
        }
        Kind::SerialRead => {
            statement.set_consistency(Consistency::LocalSerial);
            statement.set_is_idempotent(true);
        }
        Kind::Lwt => {
            statement.set_consistency(Consistency::LocalQuorum);
            statement.set_serial_consistency(Some(SerialConsistency::LocalSerial));
            statement.set_is_idempotent(false);
        }
    }
}

async fn prepare(
    session: &Session,
    cql: String,
    kind: Kind,
) -> Result<PreparedStatement, StoreError> {
    let mut statement = session
        .prepare(Statement::new(cql.clone()))
        .await
        .map_err(|e| storage(format_args!("preparing `{cql}`"), e))?;
    configure(&mut statement, kind);
    Ok(statement)
}

/// The same statement, run at LOCAL_SERIAL.
fn serial(statement: &PreparedStatement) -> PreparedStatement {
    let mut s = statement.clone();
    configure(&mut s, Kind::SerialRead);
    s
}

/// Every statement the store runs after connecting.
struct Statements {
    load: PreparedStatement,
    load_serial: PreparedStatement,
    index_state: PreparedStatement,
    index_state_serial: PreparedStatement,
    create: PreparedStatement,
    update: PreparedStatement,
    mark_indexed: PreparedStatement,
    put_entry: PreparedStatement,
    remove_entry: PreparedStatement,
    user_groups: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements, StoreError> {
        let p = |cql: String, kind| prepare(session, cql, kind);
        let load = p(
            format!("SELECT version, record FROM {ks}.groups WHERE group_id = ?"),
            Kind::Read,
        )
        .await?;
        let index_state = p(
            format!(
                "SELECT version, indexed_version, unindexed_drops FROM {ks}.groups \
                 WHERE group_id = ?"
            ),
            Kind::Read,
        )
        .await?;
        Ok(Statements {
            load_serial: serial(&load),
            load,
            index_state_serial: serial(&index_state),
            index_state,
            create: p(
                format!(
                    "INSERT INTO {ks}.groups (group_id, version, record) VALUES (?, ?, ?) \
                     IF NOT EXISTS"
                ),
                Kind::Lwt,
            )
            .await?,
            update: p(
                format!(
                    "UPDATE {ks}.groups SET record = ?, version = ?, unindexed_drops = ? \
                     WHERE group_id = ? IF version = ?"
                ),
                Kind::Lwt,
            )
            .await?,
            mark_indexed: p(
                format!(
                    "UPDATE {ks}.groups USING TIMESTAMP ? SET indexed_version = ? \
                     WHERE group_id = ?"
                ),
                Kind::Write,
            )
            .await?,
            put_entry: p(
                format!(
                    "INSERT INTO {ks}.user_groups (user_id, group_id, joined_seq, left_seq) \
                     VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
                ),
                Kind::Write,
            )
            .await?,
            remove_entry: p(
                format!(
                    "DELETE FROM {ks}.user_groups USING TIMESTAMP ? \
                     WHERE user_id = ? AND group_id = ?"
                ),
                Kind::Write,
            )
            .await?,
            user_groups: p(
                format!(
                    "SELECT group_id, joined_seq, left_seq FROM {ks}.user_groups \
                     WHERE user_id = ?"
                ),
                Kind::Read,
            )
            .await?,
        })
    }
}

/// Whether a lightweight transaction applied, from its `[applied]` column.
fn lwt_applied(result: QueryResult) -> Result<bool, StoreError> {
    const WHAT: &str = "lightweight transaction result";
    let rows = result.into_rows_result().map_err(|e| corrupt(WHAT, e))?;
    let (column, _) = rows
        .column_specs()
        .get_by_name("[applied]")
        .ok_or_else(|| corrupt(WHAT, "no [applied] column"))?;
    let first = rows
        .maybe_first_row::<Row>()
        .map_err(|e| corrupt(WHAT, e))?
        .ok_or_else(|| corrupt(WHAT, "no row"))?;
    match first.columns.get(column) {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(corrupt(WHAT, format_args!("[applied] is {other:?}"))),
    }
}

/// Which consistency a read of a group's row uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// LOCAL_QUORUM: sees every completed commit.
    Quorum,
    /// LOCAL_SERIAL: also completes (or rules out) a commit still in flight.
    Serial,
}

// ---------------------------------------------------------------------------------------
// The store

/// The ScyllaDB-backed group store: one driver session (connection pools to every node)
/// and the prepared statements. Dropping it closes the connections.
pub struct ScyllaGroupStore {
    session: Session,
    keyspace: String,
    st: Statements,
}

impl fmt::Debug for ScyllaGroupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScyllaGroupStore")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

impl ScyllaGroupStore {
    /// Connects, creates the keyspace and tables if missing (see the module docs) and
    /// prepares every statement. Fails with [`StoreError::Invalid`] on a bad config and
    /// [`StoreError::Storage`] if the cluster cannot be reached or refuses the schema.
    pub async fn connect(config: ScyllaGroupConfig) -> Result<Arc<ScyllaGroupStore>, StoreError> {
        validate_config(&config)?;
        let mut policy = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &config.local_dc {
            policy = policy
                .prefer_datacenter(dc.clone())
                .permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(config.request_timeout))
            .load_balancing_policy(policy.build())
            .retry_policy(Arc::new(DefaultRetryPolicy::new()))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .map_err(|e| storage(format_args!("connecting to {:?}", config.nodes), e))?;

        let replication = replication_map(config.replication_factor, config.local_dc.as_deref());
        let options = keyspace_options(&session).await;
        for cql in schema_statements(SCHEMA_TEMPLATE, &config.keyspace, &replication, options) {
            let mut statement = Statement::new(cql.clone());
            statement.set_request_timeout(Some(config.request_timeout.max(DDL_TIMEOUT)));
            session
                .query_unpaged(statement, ())
                .await
                .map_err(|e| storage(format_args!("running `{cql}`"), e))?;
        }
        let st = Statements::prepare(&session, &config.keyspace).await?;
        Ok(Arc::new(ScyllaGroupStore {
            session,
            keyspace: config.keyspace,
            st,
        }))
    }

    async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| storage(what, e))?;
        Ok(())
    }

    /// The first row of a single-page result.
    async fn query_opt<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<Option<R>, StoreError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| storage(what, e))?
            .into_rows_result()
            .map_err(|e| corrupt(what, e))?
            .maybe_first_row::<R>()
            .map_err(|e| corrupt(what, e))
    }

    /// The stored version and encoded record of a group.
    async fn read_record(
        &self,
        group: i64,
        read: Read,
    ) -> Result<Option<(u64, Bytes)>, StoreError> {
        const WHAT: &str = "reading a group";
        let statement = match read {
            Read::Quorum => &self.st.load,
            Read::Serial => &self.st.load_serial,
        };
        let row: Option<(Option<i64>, Option<Bytes>)> =
            self.query_opt(statement, (group,), WHAT).await?;
        match row {
            None => Ok(None),
            Some((Some(version), Some(record))) => {
                Ok(Some((from_cql(version, "group version")?, record)))
            }
            Some(_) => Err(corrupt(
                WHAT,
                format_args!("group {group} has a row without version or record"),
            )),
        }
    }

    /// Step 2 of `save`: where the index of the stored version stands. `Conflict` if the
    /// stored version is not `expected`.
    async fn index_state(&self, group: i64, expected: u64) -> Result<IndexState, StoreError> {
        const WHAT: &str = "reading a group's index state";
        type StateRow = (Option<i64>, Option<i64>, Option<Vec<i64>>);
        let mut row: Option<StateRow> = None;
        for statement in [&self.st.index_state, &self.st.index_state_serial] {
            row = self.query_opt(statement, (group,), WHAT).await?;
            if let Some((Some(version), _, _)) = row
                && from_cql(version, "group version")? == expected
            {
                break;
            }
        }
        let (version, indexed, drops) = match row {
            Some((Some(version), indexed, drops)) => (version, indexed, drops),
            _ => {
                return Err(StoreError::Conflict(format!(
                    "group {group} does not exist (expected version {expected})"
                )));
            }
        };
        let version = from_cql(version, "group version")?;
        if version != expected {
            return Err(StoreError::Conflict(format!(
                "group {group} is at version {version}, not {expected}"
            )));
        }
        let complete = indexed
            .map(|v| from_cql(v, "indexed version"))
            .transpose()?
            == Some(version);
        let unindexed_drops = drops
            .unwrap_or_default()
            .into_iter()
            .map(|u| from_cql(u, "dropped user id"))
            .collect::<Result<_, _>>()?;
        Ok(IndexState {
            complete,
            unindexed_drops,
        })
    }

    /// Step 4: the lightweight transaction. `Ok(false)`: another save got there first.
    async fn commit(
        &self,
        checked: &CheckedSave,
        encoded: &[u8],
        removals: &[u64],
    ) -> Result<bool, StoreError> {
        let group = to_cql(checked.group, "group id")?;
        let version = to_cql(checked.version, "version")?;
        let result = match checked.previous_version {
            None => {
                self.session
                    .execute_unpaged(&self.st.create, (group, version, encoded))
                    .await
            }
            Some(previous) => {
                let drops = removals
                    .iter()
                    .map(|&u| to_cql(u, "user id"))
                    .collect::<Result<Vec<i64>, _>>()?;
                self.session
                    .execute_unpaged(
                        &self.st.update,
                        (
                            encoded,
                            version,
                            drops,
                            group,
                            to_cql(previous, "previous version")?,
                        ),
                    )
                    .await
            }
        };
        match result {
            Ok(result) => lwt_applied(result),
            Err(e) => {
                let failed = storage(
                    format_args!(
                        "storing group {} version {}",
                        checked.group, checked.version
                    ),
                    e,
                );
                // The outcome is unknown: the transaction may have been applied. A serial
                // read finds it if it was (this record, not another at the same version).
                match self.read_record(group, Read::Serial).await {
                    Ok(Some((stored, record)))
                        if stored == checked.version && record.as_ref() == encoded =>
                    {
                        tracing::info!(
                            group = checked.group,
                            version = checked.version,
                            "an ambiguous group commit applied"
                        );
                        Ok(true)
                    }
                    _ => Err(failed),
                }
            }
        }
    }

    /// Step 5: the index writes, then the mark that they are complete.
    async fn write_index(
        &self,
        checked: &CheckedSave,
        plan: &IndexChanges,
    ) -> Result<(), StoreError> {
        let group = to_cql(checked.group, "group id")?;
        let at = to_cql(checked.version, "version")?;
        let mut tasks: Vec<BoxFuture<'_, Result<(), StoreError>>> =
            Vec::with_capacity(plan.writes.len() + plan.removals.len());
        for &(user, (joined, left)) in &plan.writes {
            let values = (
                to_cql(user, "user id")?,
                group,
                to_cql(joined, "joined_seq")?,
                to_cql(left, "left_seq")?,
                at,
            );
            tasks.push(
                self.execute(&self.st.put_entry, values, "writing a user's group")
                    .boxed(),
            );
        }
        for &user in &plan.removals {
            let values = (at, to_cql(user, "user id")?, group);
            tasks.push(
                self.execute(&self.st.remove_entry, values, "removing a user's group")
                    .boxed(),
            );
        }
        bounded_ok(tasks).await?;
        self.execute(
            &self.st.mark_indexed,
            (at, at, group),
            "marking a group's index complete",
        )
        .await
    }
}

#[async_trait::async_trait]
impl GroupStore for ScyllaGroupStore {
    async fn load(&self, group: GroupId) -> Result<Option<GroupRecord>, StoreError> {
        let Some((version, bytes)) = self
            .read_record(to_cql(group.get(), "group id")?, Read::Quorum)
            .await?
        else {
            return Ok(None);
        };
        let record = GroupRecord::decode(bytes.as_ref())
            .map_err(|e| corrupt(format_args!("decoding group {group}"), e))?;
        let recorded = record.info.as_ref().map(|i| i.version);
        if recorded != Some(version) {
            return Err(corrupt(
                format_args!("group {group}"),
                format_args!("row version {version}, record version {recorded:?}"),
            ));
        }
        Ok(Some(record))
    }

    async fn save(
        &self,
        record: &GroupRecord,
        previous: Option<&GroupRecord>,
    ) -> Result<(), StoreError> {
        let checked = check_save_cql(record, previous)?;
        let (old, state) = match (previous, checked.previous_version) {
            (Some(previous), Some(expected)) => (
                crate::store::index_entries(previous)?,
                self.index_state(to_cql(checked.group, "group id")?, expected)
                    .await?,
            ),
            // A create: nothing indexed yet, nothing owed.
            _ => (
                IndexEntries::new(),
                IndexState {
                    complete: true,
                    unindexed_drops: Vec::new(),
                },
            ),
        };
        let plan = plan_index(&old, &checked.entries, &state);
        let encoded = record.encode_to_vec();
        if !self.commit(&checked, &encoded, &plan.removals).await? {
            return Err(StoreError::Conflict(match checked.previous_version {
                None => format!("group {} exists", checked.group),
                Some(v) => format!("group {} is no longer at version {v}", checked.group),
            }));
        }
        self.write_index(&checked, &plan).await.map_err(|e| {
            StoreError::Storage(format!(
                "group {} version {} stored, but its user index was not fully updated \
                 (the group's next save repairs it): {e}",
                checked.group, checked.version
            ))
        })
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<GroupAccess>, StoreError> {
        const WHAT: &str = "reading a user's groups";
        let mut rows = self
            .session
            .execute_iter(
                self.st.user_groups.clone(),
                (to_cql(user.get(), "user id")?,),
            )
            .await
            .map_err(|e| storage(WHAT, e))?
            .rows_stream::<(i64, Option<i64>, Option<i64>)>()
            .map_err(|e| corrupt(WHAT, e))?;
        let mut out = Vec::new();
        while let Some((group, joined, left)) =
            rows.try_next().await.map_err(|e| next_row_error(WHAT, e))?
        {
            out.push(GroupAccess {
                group_id: from_cql(group, "group id")?,
                joined_seq: from_cql(joined.unwrap_or(0), "joined_seq")?,
                left_seq: from_cql(left.unwrap_or(0), "left_seq")?,
                user_id: user.get(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use natter_proto::v1::{GroupInfo, GroupMember};

    use super::*;

    fn entries(list: &[(u64, u64, u64)]) -> IndexEntries {
        list.iter().map(|&(u, j, l)| (u, (j, l))).collect()
    }

    fn complete() -> IndexState {
        IndexState {
            complete: true,
            unindexed_drops: Vec::new(),
        }
    }

    #[test]
    fn a_complete_index_gets_only_the_changes() {
        let old = entries(&[(1, 1, 0), (2, 1, 0), (3, 2, 0), (4, 1, 3)]);
        // 2 left, 3 unchanged, 4 dropped entirely, 5 joined, 1 unchanged.
        let new = entries(&[(1, 1, 0), (2, 1, 7), (3, 2, 0), (5, 7, 0)]);
        let plan = plan_index(&old, &new, &complete());
        assert_eq!(plan.writes, vec![(2, (1, 7)), (5, (7, 0))]);
        assert_eq!(plan.removals, vec![4]);
    }

    #[test]
    fn an_incomplete_index_is_rewritten_and_owed_removals_are_redone() {
        let old = entries(&[(1, 1, 0), (2, 1, 0), (4, 1, 3)]);
        let new = entries(&[(1, 1, 0), (2, 1, 7), (6, 8, 0)]);
        let state = IndexState {
            complete: false,
            // 9 was dropped by the failed save; 6 too, but is back now; 4 twice.
            unindexed_drops: vec![9, 6, 4],
        };
        let plan = plan_index(&old, &new, &state);
        assert_eq!(plan.writes, vec![(1, (1, 0)), (2, (1, 7)), (6, (8, 0))]);
        assert_eq!(plan.removals, vec![4, 9]);
    }

    #[test]
    fn unchanged_records_write_nothing() {
        let same = entries(&[(1, 1, 0), (2, 3, 5)]);
        assert_eq!(
            plan_index(&same, &same, &complete()),
            IndexChanges::default()
        );
    }

    #[test]
    fn numbers_must_fit_a_bigint() {
        let record = |user: u64, group: u64| GroupRecord {
            info: Some(GroupInfo {
                group_id: group,
                version: 1,
                members: vec![GroupMember {
                    user_id: user,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_save_cql(&record(7, 9), None).is_ok());
        for bad in [record(1 << 63, 9), record(7, u64::MAX)] {
            assert!(matches!(
                check_save_cql(&bad, None),
                Err(StoreError::Invalid(_))
            ));
        }
    }

    #[test]
    fn schema_holds_the_groups_tables() {
        let simple = replication_map(1, None);
        let statements = schema_statements(SCHEMA_TEMPLATE, "natter_x", &simple, "");
        assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS natter_x"));
        let groups = statements
            .iter()
            .find(|s| s.starts_with("CREATE TABLE IF NOT EXISTS natter_x.groups ("))
            .expect("groups table");
        for column in [
            "group_id bigint PRIMARY KEY",
            "version bigint",
            "record blob",
            "indexed_version bigint",
            "unindexed_drops frozen<set<bigint>>",
        ] {
            assert!(groups.contains(column), "{column} in {groups}");
        }
        let index = statements
            .iter()
            .find(|s| s.starts_with("CREATE TABLE IF NOT EXISTS natter_x.user_groups ("))
            .expect("user_groups table");
        assert!(index.contains("PRIMARY KEY (user_id, group_id)"), "{index}");
        for s in &statements {
            assert!(!s.contains("{{") && !s.contains("--"), "{s}");
        }
    }

    #[test]
    fn keyspace_names_and_configs_are_checked() {
        let config = |keyspace: &str| ScyllaGroupConfig {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: keyspace.into(),
            replication_factor: 1,
            local_dc: None,
            request_timeout: Duration::from_secs(5),
        };
        assert!(validate_config(&config("natter")).is_ok());
        for bad in ["", "Natter", "1natter", "nat-ter", "natter; DROP"] {
            assert!(validate_config(&config(bad)).is_err(), "{bad}");
        }
        let mut no_nodes = config("natter");
        no_nodes.nodes.clear();
        assert!(validate_config(&no_nodes).is_err());
        let mut empty_dc = config("natter");
        empty_dc.local_dc = Some(String::new());
        assert!(validate_config(&empty_dc).is_err());
    }
}
