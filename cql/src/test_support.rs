//! For tests that need a ScyllaDB node (feature `test-support`, dev-dependencies only).
//! `NATTER_TEST_SCYLLA=host:port` names the node; without it, every test says so on
//! stderr and passes. Each test works in a fresh keyspace (`natter_test_<random>`) and
//! drops it at the end, also when the test fails.

use std::{future::Future, panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt as _;
use rand::Rng as _;
use scylla::client::session_builder::SessionBuilder;

use crate::ScyllaConfig;

/// The variable that names the node to test against.
pub const NODE_ENV: &str = "NATTER_TEST_SCYLLA";

/// The node to test against, or `None` (after saying on stderr that `tests`, e.g.
/// "ScyllaDB store tests", are skipped) if there is none.
pub fn test_node(tests: &str) -> Option<String> {
    match std::env::var(NODE_ENV) {
        Ok(node) if !node.trim().is_empty() => Some(node.trim().to_owned()),
        _ => {
            eprintln!("skipped: {NODE_ENV} is not set ({tests} need a ScyllaDB node)");
            None
        }
    }
}

/// A new keyspace name, `natter_test_<16 random hex digits>`.
fn fresh_keyspace_name() -> String {
    format!("natter_test_{:016x}", rand::rng().random::<u64>())
}

/// The config the tests use: `node` alone, `keyspace`, replication factor 1, any
/// datacenter, a 30 s request timeout.
fn test_config(node: &str, keyspace: &str) -> ScyllaConfig {
    ScyllaConfig {
        nodes: vec![node.to_owned()],
        keyspace: keyspace.to_owned(),
        replication_factor: 1,
        local_dc: None,
        request_timeout: Duration::from_secs(30),
    }
}

/// Runs `test` with the config of a fresh keyspace (`natter_test_<random>`) on the node
/// [`NODE_ENV`] names (replication factor 1, any datacenter, a 30 s request timeout),
/// then drops the keyspace (even if `test` panicked). Without a node, says that `tests`
/// are skipped (see [`test_node`]) and returns.
pub async fn in_fresh_keyspace<F, Fut>(tests: &str, test: F)
where
    F: FnOnce(ScyllaConfig) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(node) = test_node(tests) else { return };
    let keyspace = fresh_keyspace_name();
    let outcome = AssertUnwindSafe(test(test_config(&node, &keyspace)))
        .catch_unwind()
        .await;
    drop_keyspace(&node, &keyspace).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Drops `keyspace` if it exists; a failure is reported on stderr, not raised.
async fn drop_keyspace(node: &str, keyspace: &str) {
    let dropped = async {
        let session = SessionBuilder::new().known_node(node).build().await?;
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    if let Err(e) = dropped {
        eprintln!("could not drop test keyspace {keyspace}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_keyspaces_are_valid_and_distinct() {
        let (a, b) = (fresh_keyspace_name(), fresh_keyspace_name());
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(crate::validate_keyspace(name).is_ok(), "{name}");
            assert_eq!(name.len(), "natter_test_".len() + 16, "{name}");
        }
        assert!(crate::validate_config(&test_config("127.0.0.1:9042", &a)).is_ok());
    }
}
