//! The pool of short-command connections (`sluice_broker::pool`): a
//! connection in use goes back into service without a health round trip,
//! one that broke is replaced, and after a Redis restart the pool checks
//! its idle connections instead of handing out dead ones.

use sluice_broker::connect;
use sluice_tests::redis_fixture::RedisFixture;

async fn client_id(pool: &connect::RedisPool) -> Result<i64, redis::RedisError> {
    let mut conn = pool.get().await.map_err(connect::pool_error)?;
    redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await
}

/// One section of `INFO`.
async fn info(conn: &mut redis::aio::MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .expect("INFO")
}

/// `calls` of one command in Redis's own statistics.
async fn calls(conn: &mut redis::aio::MultiplexedConnection, cmd: &str) -> u64 {
    info(conn, "commandstats")
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn connections_received(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    info(conn, "stats")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received")
}

#[tokio::test]
async fn a_busy_connection_is_reused_without_a_round_trip_and_replaced_once_broken() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let mut admin = redis.conn().await;
    let pool = connect::pool(&redis.url(), 1).expect("pool");

    let first = client_id(&pool).await.expect("first use");
    let connects = connections_received(&mut admin).await;
    let pings = calls(&mut admin, "ping").await;
    for _ in 0..50 {
        assert_eq!(
            client_id(&pool).await.expect("reuse"),
            first,
            "a healthy connection is reused"
        );
    }
    assert_eq!(
        connections_received(&mut admin).await,
        connects,
        "50 checkouts opened no connection"
    );
    assert_eq!(
        calls(&mut admin, "ping").await,
        pings,
        "a checkout costs no PING round trip"
    );

    // Redis drops the pooled connection: the next command on it fails (the
    // connection is seen broken), and the pool then dials a new one.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(first)
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1);
    let mut replaced = None;
    for _ in 0..3 {
        if let Ok(id) = client_id(&pool).await {
            replaced = Some(id);
            break;
        }
    }
    let replaced = replaced.expect("the pool replaced the killed connection");
    assert_ne!(replaced, first, "a new connection");
    assert_eq!(
        client_id(&pool).await.expect("reuse"),
        replaced,
        "the new connection is reused in turn"
    );
}

#[tokio::test]
async fn the_pool_recovers_after_redis_restarts() {
    sluice_tests::init_logs();
    let redis = sluice_tests::chaos::redis::ChaosRedis::start(&[]).await;
    let pool = connect::pool(&redis.url(), 4).expect("pool");
    // Four connections in the pool, all idle.
    let held: Vec<_> = futures_util::future::join_all((0..4).map(|_| pool.get())).await;
    drop(held);
    client_id(&pool).await.expect("before");
    redis.restart().await;
    // The pooled connections sat idle through the restart: each is checked
    // before it is handed out, so no caller sees the dead ones.
    tokio::time::sleep(sluice_broker::pool::IDLE_CHECK).await;
    let mut results = Vec::new();
    for _ in 0..8 {
        results.push(client_id(&pool).await.map_err(|e| e.to_string()));
    }
    // A dead connection handed out would fail its command (CLIENT IDs
    // start over after a restart, so they cannot tell old from new).
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

#[tokio::test]
async fn one_dropped_connection_gets_the_others_checked() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let mut admin = redis.conn().await;
    let pool = connect::pool(&redis.url(), 4).expect("pool");
    // Two connections in use, then Redis drops both (as a restart would).
    let mut a = pool.get().await.expect("a");
    let mut b = pool.get().await.expect("b");
    let ids: Vec<i64> = vec![
        redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut a)
            .await
            .expect("a id"),
        redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut b)
            .await
            .expect("b id"),
    ];
    for id in &ids {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(*id)
            .query_async(&mut admin)
            .await
            .expect("CLIENT KILL");
    }
    // The caller of `a` finds it dropped; `b`, though used a moment ago, is
    // then checked before anyone gets it.
    let failed: Result<i64, _> = redis::cmd("CLIENT").arg("ID").query_async(&mut a).await;
    assert!(failed.is_err(), "a was killed");
    drop(a);
    drop(b);
    for _ in 0..4 {
        let id = client_id(&pool)
            .await
            .expect("only live connections are handed out");
        assert!(!ids.contains(&id), "{id} was killed");
    }
}
