//! One conformance suite for the `Store` contract (tests/src/conformance.rs),
//! one test per clause, run against the memory store and against Redis
//! (testcontainers); the Redis Cluster run is in `chaos/cluster.rs`.

use std::sync::Arc;

use sluice_edge::store::memory::MemoryStore;
use sluice_edge::store::redis::RedisStore;
use sluice_edge::store::Store;
use sluice_tests::conformance::config;
use sluice_tests::RedisFixture;

async fn memory_store() -> (Arc<dyn Store>, ()) {
    (Arc::new(MemoryStore::new(config())), ())
}

/// A Redis container per clause, kept alive for the test.
async fn redis_store() -> (Arc<dyn Store>, RedisFixture) {
    let redis = RedisFixture::start().await;
    let store = RedisStore::connect(&redis.url(), "conformance", config())
        .await
        .expect("connect");
    (Arc::new(store), redis)
}

sluice_tests::store_conformance!(memory, super::memory_store);
sluice_tests::store_conformance!(redis, super::redis_store);
