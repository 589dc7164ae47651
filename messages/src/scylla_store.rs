//! The ScyllaDB [`MessageStore`](crate::MessageStore). (Being written.)

/// How to reach ScyllaDB.
#[derive(Debug, Clone)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace holding natter's tables (created if missing).
    pub keyspace: String,
    /// Replication factor used when the keyspace is created.
    pub replication_factor: u32,
    /// Datacenter for LOCAL_QUORUM and DC-aware routing (None: any).
    pub local_dc: Option<String>,
    /// Per-request timeout.
    pub request_timeout: std::time::Duration,
}
