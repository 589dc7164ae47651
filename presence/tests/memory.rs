//! The conformance checks on [`MemoryPresence`].

use std::sync::Arc;

use natter_presence::{MemoryPresence, PresenceStore, conformance};

#[tokio::test]
async fn memory_presence_conforms() {
    let store: Arc<dyn PresenceStore> = Arc::new(MemoryPresence::new());
    conformance::run_all(|| store.clone()).await;
}
