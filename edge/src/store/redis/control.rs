//! Where a feed reader sends its short commands (group setup, checks,
//! function load, unblock): the node pool on a single Redis, a connection
//! of its own to the shard's primary on a cluster.

use redis::Value;
use sluice_broker::connect::RedisPool as Pool;
use sluice_broker::{function, Unavailable};

pub(super) enum Control {
    Pool(Pool),
    Node(redis::aio::MultiplexedConnection),
}

impl Control {
    pub async fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, Unavailable> {
        Ok(match self {
            Control::Pool(pool) => cmd.query_async(&mut pool.get().await?).await?,
            Control::Node(conn) => cmd.query_async(conn).await?,
        })
    }

    /// Sends `pipe` as one round trip; one reply per command, in order (an
    /// error reply fails the whole call).
    pub async fn query_pipe(&mut self, pipe: &redis::Pipeline) -> Result<Vec<Value>, Unavailable> {
        Ok(match self {
            Control::Pool(pool) => pipe.query_async(&mut pool.get().await?).await?,
            Control::Node(conn) => pipe.query_async(conn).await?,
        })
    }

    /// Loads the publish function: a replica promoted by a failover (or a
    /// Redis restarted empty) may lack it.
    pub async fn load_function(&mut self) -> Result<(), Unavailable> {
        match self {
            Control::Pool(pool) => function::load(&mut pool.get().await?).await?,
            Control::Node(conn) => function::load(conn).await?,
        }
        Ok(())
    }

    /// Stops the blocked read of connection `client_id` (`CLIENT UNBLOCK`);
    /// best effort: the read's own `BLOCK` bounds it anyway.
    pub async fn unblock(&mut self, client_id: Option<i64>) {
        let Some(id) = client_id else { return };
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(id);
        let _ = self.query(&cmd).await;
    }
}
