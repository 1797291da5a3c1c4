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

/// Redis lost its functions (restart without persistence, a new replica
/// promoted before the library was loaded): the publisher loads the
/// function again and the publish goes through, alone or in a batch.
#[tokio::test]
async fn publish_reloads_a_missing_function() {
    use sluice_broker::{Outgoing, PublishOptions};
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    let task = sluice_tests::unique_task("reload");
    assert_eq!(p.publish(&task, "progress", &1).await.expect("publish"), 1);
    let mut conn = redis.conn().await;
    let drop_library = redis::cmd("FUNCTION").arg("FLUSH").arg("SYNC").clone();
    let _: () = drop_library.query_async(&mut conn).await.expect("flush");
    assert_eq!(p.publish(&task, "progress", &2).await.expect("reloaded"), 2);

    let _: () = drop_library.query_async(&mut conn).await.expect("flush");
    let id = sluice_shared::TaskId::parse(&task).expect("id");
    let data = sluice_shared::codec::encode_data(&serde_json::json!(3)).expect("encode");
    let batch = [
        Outgoing {
            task: &id,
            kind: "progress",
            data: &data,
            opts: PublishOptions::default(),
        },
        Outgoing {
            task: &id,
            kind: "progress",
            data: &data,
            opts: PublishOptions::default(),
        },
    ];
    let seqs: Vec<u64> = p
        .publish_batch(&batch)
        .await
        .into_iter()
        .map(|r| r.expect("reloaded in a batch").seq)
        .collect();
    assert_eq!(seqs, vec![3, 4]);
}
