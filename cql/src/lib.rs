//! ScyllaDB with natter's conventions, shared by natter-messages' `ScyllaStore` and
//! natter-groups' `ScyllaGroupStore`: the config and its checks, the schema from
//! `deploy/cql/schema.cql`, the session, prepared statements with their consistency,
//! lightweight transaction results and bigint conversions. Each store keeps its own
//! tables' statements and its own error type, which converts from [`Error`].
//!
//! # Schema
//!
//! `deploy/cql/schema.cql`, embedded and run statement by statement (all `IF NOT EXISTS`)
//! by [`connect`]: the whole file, so whichever store connects first creates the
//! keyspace's complete schema, and both see one definition of it. The keyspace name and
//! replication from [`ScyllaConfig`] are filled in (`NetworkTopologyStrategy` in
//! `local_dc` when it is set, else `SimpleStrategy`). On ScyllaDB versions whose tablets
//! do not support lightweight transactions (6.0 up to 2025.3), the keyspace is created
//! with tablets disabled (cluster feature `TABLETS` without `LWT_WITH_TABLETS`). An
//! existing keyspace is used as it is.
//!
//! # Driver settings
//!
//! Default load balancing policy, token-aware, restricted to `local_dc` when it is set;
//! LOCAL_QUORUM for reads and writes, LOCAL_SERIAL for lightweight transactions and serial
//! reads ([`Kind`]); the configured request timeout (schema statements get at least a
//! minute); the default retry policy, which retries only statements marked idempotent
//! (reads and the plain or timestamped writes, never a lightweight transaction).

use std::{collections::HashSet, fmt::Display, sync::Arc, time::Duration};

use futures::{StreamExt as _, TryStreamExt as _, future::BoxFuture, stream};
use scylla::{
    client::{
        execution_profile::ExecutionProfile, pager::NextRowError, session::Session,
        session_builder::SessionBuilder,
    },
    deserialize::row::DeserializeRow,
    policies::{load_balancing::DefaultPolicy, retry::DefaultRetryPolicy},
    response::query_result::{QueryResult, QueryRowsResult},
    serialize::row::SerializeRow,
    statement::{
        Consistency, SerialConsistency, prepared::PreparedStatement, unprepared::Statement,
    },
    value::{CqlValue, Row},
};

#[cfg(feature = "test-support")]
pub mod test_support;

/// Why a ScyllaDB call failed. Each store converts it into its own error, variant for
/// variant (the message is kept as it is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The cluster failed or could not be reached (I/O, timeout, a refused statement).
    #[error("storage failure: {0}")]
    Storage(String),
    /// The arguments are malformed (a bad config, a number that does not fit a bigint).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

/// How to reach ScyllaDB.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
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

/// The schema template (see the module docs for its placeholders).
const SCHEMA_TEMPLATE: &str = include_str!("../../deploy/cql/schema.cql");

/// Most requests one call keeps in flight.
pub const MAX_IN_FLIGHT: usize = 64;
/// Least time a schema statement may take (schema agreement can be slow).
const DDL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest keyspace name CQL accepts.
const MAX_KEYSPACE_LEN: usize = 48;

/// Runs `tasks`, at most [`MAX_IN_FLIGHT`] at a time, and answers in their order.
/// (Boxed so that no closure is held across an await: that keeps the futures provably
/// `Send` for `async_trait`.)
pub async fn bounded<T>(tasks: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    stream::iter(tasks).buffered(MAX_IN_FLIGHT).collect().await
}

/// [`bounded`] for fallible tasks: every task runs; the first error (in order) wins.
pub async fn bounded_ok<T, E>(tasks: Vec<BoxFuture<'_, Result<T, E>>>) -> Result<Vec<T>, E> {
    bounded(tasks).await.into_iter().collect()
}

/// [`Error::Storage`]: `scylla: <context>: <e>`.
pub fn storage(context: impl Display, e: impl Display) -> Error {
    Error::Storage(format!("scylla: {context}: {e}"))
}

/// [`Error::Corrupt`]: `scylla: <context>: <e>`.
pub fn corrupt(context: impl Display, e: impl Display) -> Error {
    Error::Corrupt(format!("scylla: {context}: {e}"))
}

/// A failure while paging through rows: [`corrupt`] if a row did not decode, else
/// [`storage`].
pub fn next_row_error(context: &str, e: NextRowError) -> Error {
    match e {
        NextRowError::RowDeserializationError(e) => corrupt(context, e),
        other => storage(context, other),
    }
}

/// A value for a bigint column; natter's ids, seqs and versions stay below 2^63.
pub fn to_cql(value: u64, what: &str) -> Result<i64, Error> {
    i64::try_from(value)
        .map_err(|_| Error::Invalid(format!("{what} {value} does not fit a CQL bigint")))
}

/// A stored bigint read back as an id, seq or version.
pub fn from_cql(value: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| Error::Corrupt(format!("stored {what} {value} < 0")))
}

// ---------------------------------------------------------------------------------------
// Config and schema

/// Refuses keyspace names that would need quoting (or could inject CQL).
fn validate_keyspace(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_KEYSPACE_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "keyspace `{name}`: use 1 to {MAX_KEYSPACE_LEN} lowercase letters, digits or `_`, \
             starting with a letter"
        )))
    }
}

fn validate_config(config: &ScyllaConfig) -> Result<(), Error> {
    validate_keyspace(&config.keyspace)?;
    if config.nodes.is_empty() {
        return Err(Error::Invalid("no ScyllaDB node configured".into()));
    }
    if config.replication_factor == 0 {
        return Err(Error::Invalid(
            "replication factor must be at least 1".into(),
        ));
    }
    if config.local_dc.as_deref().is_some_and(str::is_empty) {
        return Err(Error::Invalid("local_dc is empty".into()));
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
/// The statements of a schema template, placeholders filled in (public so that services
/// with their own schema file can test its templating).
pub fn schema_statements(
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

/// Checks the config, connects with natter's driver settings (see the module docs) and
/// creates the keyspace and tables if missing. Fails with [`Error::Invalid`] on a bad
/// config and [`Error::Storage`] if the cluster cannot be reached or refuses the schema.
pub async fn connect(config: &ScyllaConfig) -> Result<Session, Error> {
    connect_with(config, &[]).await
}

/// [`connect`], then applies each of `extra` — a service's own schema file, in the
/// format of `deploy/cql/schema.cql` (`{{keyspace}}` placeholders, `--` comments, every
/// statement `IF NOT EXISTS`) — statement by statement, in the keyspace of the config.
pub async fn connect_with(config: &ScyllaConfig, extra: &[&str]) -> Result<Session, Error> {
    validate_config(config)?;
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
    let statements = std::iter::once(SCHEMA_TEMPLATE)
        .chain(extra.iter().copied())
        .flat_map(|t| schema_statements(t, &config.keyspace, &replication, options));
    for cql in statements {
        let mut statement = Statement::new(cql.clone());
        statement.set_request_timeout(Some(config.request_timeout.max(DDL_TIMEOUT)));
        session
            .query_unpaged(statement, ())
            .await
            .map_err(|e| storage(format_args!("running `{cql}`"), e))?;
    }
    Ok(session)
}

// ---------------------------------------------------------------------------------------
// Running statements (`what` names the call in errors)

/// Runs a statement whose result is not read (a write).
pub async fn execute(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
    what: &str,
) -> Result<(), Error> {
    session
        .execute_unpaged(statement, values)
        .await
        .map_err(|e| storage(what, e))?;
    Ok(())
}

/// Runs a SELECT and takes its rows (a single page).
async fn select(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
    what: &str,
) -> Result<QueryRowsResult, Error> {
    session
        .execute_unpaged(statement, values)
        .await
        .map_err(|e| storage(what, e))?
        .into_rows_result()
        .map_err(|e| corrupt(what, e))
}

/// The first row of a single-page result.
pub async fn query_opt<R>(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
    what: &str,
) -> Result<Option<R>, Error>
where
    R: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    let rows = select(session, statement, values, what).await?;
    rows.maybe_first_row::<R>().map_err(|e| corrupt(what, e))
}

/// Every row of a single-page result (for statements with a LIMIT).
pub async fn query_all<R>(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
    what: &str,
) -> Result<Vec<R>, Error>
where
    R: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    let rows = select(session, statement, values, what).await?;
    rows.rows::<R>()
        .map_err(|e| corrupt(what, e))?
        .map(|row| row.map_err(|e| corrupt(what, e)))
        .collect()
}

/// Every row of a result of any size, fetched page by page.
pub async fn query_paged<R>(
    session: &Session,
    statement: &PreparedStatement,
    values: impl SerializeRow,
    what: &str,
) -> Result<Vec<R>, Error>
where
    R: for<'f, 'm> DeserializeRow<'f, 'm>,
{
    let mut rows = session
        .execute_iter(statement.clone(), values)
        .await
        .map_err(|e| storage(what, e))?
        .rows_stream::<R>()
        .map_err(|e| corrupt(what, e))?;
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await.map_err(|e| next_row_error(what, e))? {
        out.push(row);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Prepared statements

/// How a statement is run.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// LOCAL_QUORUM, retried on another replica if need be.
    Read,
    /// LOCAL_SERIAL.
    SerialRead,
    /// LOCAL_QUORUM, safe to retry (timestamped or idempotent).
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

/// Prepares `cql` to be run as `kind`.
pub async fn prepare(
    session: &Session,
    cql: String,
    kind: Kind,
) -> Result<PreparedStatement, Error> {
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

/// Which consistency a read uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// LOCAL_QUORUM: sees every completed commit.
    Quorum,
    /// LOCAL_SERIAL: also completes (or rules out) a commit still in flight.
    Serial,
}

/// A read prepared for both [`Read`]s: as [`Kind::Read`] and as [`Kind::SerialRead`].
#[derive(Debug, Clone)]
pub struct ReadStatement {
    quorum: PreparedStatement,
    serial: PreparedStatement,
}

impl ReadStatement {
    /// Prepares `cql` once and configures it for both consistencies.
    pub async fn prepare(session: &Session, cql: String) -> Result<ReadStatement, Error> {
        let quorum = prepare(session, cql, Kind::Read).await?;
        Ok(ReadStatement {
            serial: serial(&quorum),
            quorum,
        })
    }

    /// The statement to run for `read`.
    pub fn at(&self, read: Read) -> &PreparedStatement {
        match read {
            Read::Quorum => &self.quorum,
            Read::Serial => &self.serial,
        }
    }
}

/// Whether a lightweight transaction applied, from its `[applied]` column.
pub fn lwt_applied(result: QueryResult) -> Result<bool, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest value a bigint column holds.
    const MAX_BIGINT: u64 = i64::MAX as u64;

    #[test]
    fn schema_is_templated_with_the_keyspace_and_replication() {
        let simple = replication_map(3, None);
        assert_eq!(
            simple,
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
        let statements = schema_statements(SCHEMA_TEMPLATE, "natter_x", &simple, "");
        // One statement per CREATE in the template, none lost or split. Counted rather than
        // fixed: both services (messages, groups) keep their tables in the same file.
        let creates = SCHEMA_TEMPLATE
            .lines()
            .filter(|l| l.starts_with("CREATE "))
            .count();
        assert!(creates >= 7, "keyspace and six tables at least: {creates}");
        assert_eq!(statements.len(), creates, "{statements:#?}");
        assert!(
            statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS natter_x"),
            "{}",
            statements[0]
        );
        assert!(statements[0].contains("'replication_factor': 3"));
        for s in &statements {
            assert!(!s.contains("{{") && !s.contains("--"), "{s}");
        }

        let nts = replication_map(2, Some("eu'west"));
        assert_eq!(nts, "{'class': 'NetworkTopologyStrategy', 'eu''west': 2}");
        let options = " AND tablets = {'enabled': false}";
        let statements = schema_statements(SCHEMA_TEMPLATE, "natter", &nts, options);
        assert!(
            statements[0].ends_with("durable_writes = true AND tablets = {'enabled': false}"),
            "{}",
            statements[0]
        );
        assert!(statements[0].contains("NetworkTopologyStrategy"));
    }

    #[test]
    fn schema_holds_the_messages_tables() {
        let simple = replication_map(1, None);
        let statements = schema_statements(SCHEMA_TEMPLATE, "natter_x", &simple, "");
        for table in [
            "messages",
            "conversation_heads",
            "user_conversations",
            "device_cursors",
            "member_cursors",
            "dedupe",
        ] {
            let create = format!("CREATE TABLE IF NOT EXISTS natter_x.{table} (");
            assert!(
                statements.iter().any(|s| s.starts_with(&create)),
                "{table} missing"
            );
        }
        assert!(statements.iter().any(|s| s.contains("head bigint STATIC")));
        assert!(
            statements
                .iter()
                .any(|s| s.contains("default_time_to_live = 604800"))
        );
    }

    #[test]
    fn schema_holds_the_groups_tables() {
        let simple = replication_map(1, None);
        let statements = schema_statements(SCHEMA_TEMPLATE, "natter_x", &simple, "");
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
    }

    #[test]
    fn keyspace_names_are_checked() {
        for good in ["natter", "natter_test_0123abcd", "n"] {
            assert!(validate_keyspace(good).is_ok(), "{good}");
        }
        let too_long = "n".repeat(MAX_KEYSPACE_LEN + 1);
        for bad in [
            "",
            "Natter",
            "1natter",
            "_natter",
            "nat-ter",
            "natter; DROP",
            too_long.as_str(),
        ] {
            assert!(
                matches!(validate_keyspace(bad), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn configs_are_checked() {
        let config = |keyspace: &str| ScyllaConfig {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: keyspace.into(),
            replication_factor: 1,
            local_dc: None,
            request_timeout: Duration::from_secs(5),
        };
        assert!(validate_config(&config("natter")).is_ok());
        for bad in ["", "Natter", "1natter", "nat-ter", "natter; DROP"] {
            assert!(
                matches!(validate_config(&config(bad)), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
        let no_nodes = ScyllaConfig {
            nodes: Vec::new(),
            ..config("natter")
        };
        assert!(validate_config(&no_nodes).is_err());
        let rf0 = ScyllaConfig {
            replication_factor: 0,
            ..config("natter")
        };
        assert!(validate_config(&rf0).is_err());
        let empty_dc = ScyllaConfig {
            local_dc: Some(String::new()),
            ..config("natter")
        };
        assert!(validate_config(&empty_dc).is_err());
    }

    #[test]
    fn ids_must_fit_a_bigint() {
        assert_eq!(to_cql(MAX_BIGINT, "seq"), Ok(i64::MAX));
        assert!(matches!(
            to_cql(MAX_BIGINT + 1, "seq"),
            Err(Error::Invalid(_))
        ));
        assert_eq!(from_cql(5, "seq"), Ok(5));
        assert!(matches!(from_cql(-1, "seq"), Err(Error::Corrupt(_))));
    }

    #[test]
    fn errors_carry_their_context() {
        assert_eq!(
            storage("reading a head", "timed out"),
            Error::Storage("scylla: reading a head: timed out".into())
        );
        assert_eq!(
            corrupt("reading a group", "bad row"),
            Error::Corrupt("scylla: reading a group: bad row".into())
        );
    }
}
