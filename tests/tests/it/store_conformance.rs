//! One conformance suite for the `Store` contract (tests/src/conformance.rs),
//! run against the memory store and against Redis (testcontainers).

use std::sync::Arc;

use sluice_edge::store::memory::MemoryStore;
use sluice_edge::store::redis::RedisStore;
use sluice_tests::conformance::{config, conformance};
use sluice_tests::RedisFixture;

#[tokio::test]
async fn memory_store_conforms() {
    sluice_tests::init_logs();
    conformance(Arc::new(MemoryStore::new(config()))).await;
}

#[tokio::test]
async fn redis_store_conforms() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let store = RedisStore::connect(&redis.url(), "conformance", config())
        .await
        .expect("connect");
    conformance(Arc::new(store)).await;
}
