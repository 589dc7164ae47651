//! The group store conformance suite on [`ScyllaGroupStore`]. Needs a ScyllaDB node: set
//! `NATTER_TEST_SCYLLA=host:port`. Each test works in a fresh keyspace
//! (`natter_test_<random>`) and drops it at the end, also when the test fails. Without the
//! variable every test says so on stderr and passes.

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures::FutureExt as _;
use natter_groups::{GroupStore, ScyllaGroupConfig, ScyllaGroupStore, conformance};
use rand::Rng as _;
use scylla::client::session_builder::SessionBuilder;

const ENV: &str = "NATTER_TEST_SCYLLA";

/// The node to test against, or `None` (after saying so) if there is none.
fn node() -> Option<String> {
    match std::env::var(ENV) {
        Ok(node) if !node.trim().is_empty() => Some(node.trim().to_owned()),
        _ => {
            eprintln!(
                "skipped: {ENV} is not set (ScyllaDB group store tests need a ScyllaDB node)"
            );
            None
        }
    }
}

fn config(node: &str, keyspace: &str) -> ScyllaGroupConfig {
    ScyllaGroupConfig {
        nodes: vec![node.to_owned()],
        keyspace: keyspace.to_owned(),
        replication_factor: 1,
        local_dc: None,
        request_timeout: Duration::from_secs(30),
    }
}

async fn connect(node: &str, keyspace: &str) -> Arc<dyn GroupStore> {
    let store: Arc<dyn GroupStore> = ScyllaGroupStore::connect(config(node, keyspace))
        .await
        .expect("connect to ScyllaDB");
    store
}

/// Runs `test` in a fresh keyspace, then drops the keyspace (even if `test` panicked).
async fn in_fresh_keyspace<F, Fut>(node: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let keyspace = format!("natter_test_{:016x}", rand::rng().random::<u64>());
    let outcome = AssertUnwindSafe(test(keyspace.clone()))
        .catch_unwind()
        .await;
    drop_keyspace(node, &keyspace).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scylla_group_store_passes_the_suite() {
    let Some(node) = node() else { return };
    let node = node.as_str();
    in_fresh_keyspace(node, |keyspace| async move {
        let store = connect(node, &keyspace).await;
        conformance::run_all(|| store.clone()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scylla_group_store_is_durable_across_reconnect() {
    let Some(node) = node() else { return };
    let node = node.as_str();
    in_fresh_keyspace(node, |keyspace| async move {
        // Create the schema once, so every reconnect below finds it.
        drop(connect(node, &keyspace).await);
        conformance::durability_across_reopen(|| {
            // `open` is synchronous: connect on this runtime (multi-threaded, so blocking
            // one worker is fine).
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(connect(node, &keyspace))
            })
        })
        .await;
    })
    .await;
}
