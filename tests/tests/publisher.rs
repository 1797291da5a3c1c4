//! `Publisher::publish_batch` on one Redis (the cluster variant is in
//! `cluster.rs`).

use sluice_broker::Publisher;
use sluice_tests::RedisFixture;

#[tokio::test]
async fn publish_batch_on_one_redis() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    sluice_tests::conformance::publish_batch_contract(&p).await;
}
