//! The people store conformance suite on [`ScyllaPeopleStore`]. Needs a ScyllaDB node:
//! set `NATTER_TEST_SCYLLA=host:port`. Each test works in a fresh keyspace
//! (`natter_test_<random>`) and drops it at the end, also when the test fails. Without the
//! variable every test says so on stderr and passes.

use std::sync::Arc;

use natter_cql::test_support::in_fresh_keyspace;
use natter_people::{PeopleStore, ScyllaPeopleConfig, ScyllaPeopleStore, conformance};

/// What the skip message calls these tests.
const TESTS: &str = "ScyllaDB people store tests";

async fn connect(config: &ScyllaPeopleConfig) -> Arc<dyn PeopleStore> {
    let store = ScyllaPeopleStore::connect(config.clone())
        .await
        .expect("connect to ScyllaDB");
    Arc::new(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scylla_people_store_passes_the_suite() {
    in_fresh_keyspace(TESTS, |config| async move {
        let store = connect(&config).await;
        // Its limits are checked by counting, then inserting: concurrent adds may
        // overshoot (by at most the racers), which run_all allows.
        conformance::run_all(|| store.clone()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scylla_people_store_is_durable_across_reconnect() {
    in_fresh_keyspace(TESTS, |config| async move {
        // Create the schema once, so every reconnect below finds it.
        drop(connect(&config).await);
        conformance::durability_across_reopen(|| {
            // `open` is synchronous: connect on this runtime (multi-threaded, so blocking
            // one worker is fine).
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(connect(&config))
            })
        })
        .await;
    })
    .await;
}
