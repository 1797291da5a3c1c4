//! The pool of multiplexed connections to one Redis node (a `deadpool`
//! managed pool with our own manager).
//!
//! A connection in use goes back into service without I/O. It is checked
//! with a `PING` on checkout only when there is reason to doubt it: it sat
//! idle for [`IDLE_CHECK`] (Redis may have restarted or dropped it
//! meanwhile), or another connection of the pool was found dropped since it
//! was last checked (a restart drops them all). It is replaced when a
//! command on it showed it broken (the connection dropped, or
//! [`TIMEOUTS_BEFORE_BROKEN`] commands in a row timed out) or that `PING`
//! fails.
//!
//! deadpool-redis's manager, used before, sends `UNWATCH` + `PING` on every
//! checkout and discards the connection when that round trip outlasts the
//! recycle timeout: on a CPU-starved node (seen in the chaos reconnect
//! storm) every checkout then dropped a healthy connection and dialled a new
//! one, thousands of connects a second, until the ephemeral ports towards
//! Redis ran out and even the feed reader could not connect for minutes.
//! Busy connections are now never checked, so a slow node keeps its
//! connections. Nothing here uses `WATCH`, so there is no transaction state
//! to reset between users.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

/// A pool of [`Connection`]s.
pub type Pool = managed::Pool<Manager, Connection>;
/// Why no connection could be taken from a [`Pool`].
pub type PoolError = managed::PoolError<RedisError>;
/// Why a [`Pool`] could not be built.
pub type BuildError = managed::BuildError;

/// Consecutive timed-out commands after which a connection is presumed dead
/// (a peer that vanished without a reset). One slow answer on a busy node
/// is not enough.
pub const TIMEOUTS_BEFORE_BROKEN: u8 = 3;

/// A connection not checked out for this long is checked with a `PING`
/// before it is handed out again.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Creates connections for a [`Pool`]; recycles them without I/O.
pub struct Manager {
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// Connections of this pool found dropped so far.
    drops: Arc<AtomicU64>,
}

impl Manager {
    pub fn new(client: redis::Client, config: AsyncConnectionConfig) -> Self {
        Manager {
            client,
            config,
            drops: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// A pooled connection and what its commands showed of its health.
pub struct Conn {
    inner: MultiplexedConnection,
    health: Health,
    /// The pool's drop count.
    drops: Arc<AtomicU64>,
    /// The pool's drop count when this connection was last known good.
    checked_at: u64,
}

impl Conn {
    /// Whether the pool must replace this connection.
    pub fn is_broken(&self) -> bool {
        self.health.broken
    }

    fn note<T>(&mut self, result: &RedisResult<T>) {
        let was_broken = self.health.broken;
        self.health.note(result);
        if self.health.broken && !was_broken {
            self.drops.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// What the commands on one connection showed.
#[derive(Debug, Default)]
struct Health {
    /// Commands in a row that timed out.
    timeouts: u8,
    broken: bool,
}

impl Health {
    /// Records what a command's result says of the connection.
    fn note<T>(&mut self, result: &RedisResult<T>) {
        match result {
            Ok(_) => self.timeouts = 0,
            Err(e) if e.is_timeout() => {
                self.timeouts = self.timeouts.saturating_add(1);
                if self.timeouts >= TIMEOUTS_BEFORE_BROKEN {
                    self.broken = true;
                }
            }
            Err(e) if e.is_connection_dropped() || e.is_unrecoverable_error() => {
                self.broken = true;
            }
            // An error reply: the connection answered, so it works.
            Err(_) => self.timeouts = 0,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner.req_packed_command(cmd).await;
            self.note(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = RedisError;

    async fn create(&self) -> Result<Conn, RedisError> {
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Conn {
            inner,
            health: Health::default(),
            drops: self.drops.clone(),
            checked_at: self.drops.load(Ordering::Acquire),
        })
    }

    async fn recycle(&self, conn: &mut Conn, metrics: &Metrics) -> RecycleResult<RedisError> {
        if conn.health.broken {
            return Err(RecycleError::message("the connection broke"));
        }
        let drops = self.drops.load(Ordering::Acquire);
        if conn.checked_at != drops || metrics.last_used() >= IDLE_CHECK {
            let _: String = redis::cmd("PING").query_async(&mut conn.inner).await?;
            conn.checked_at = drops;
        }
        Ok(())
    }
}

/// A connection taken from a [`Pool`]; goes back to it on drop.
pub struct Connection {
    obj: managed::Object<Manager>,
}

impl From<managed::Object<Manager>> for Connection {
    fn from(obj: managed::Object<Manager>) -> Self {
        Connection { obj }
    }
}

impl std::ops::Deref for Connection {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.obj
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.obj.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.obj.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.obj.get_db()
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn err(kind: io::ErrorKind) -> RedisResult<()> {
        Err(io::Error::from(kind).into())
    }

    fn reply_error() -> RedisResult<()> {
        Err(RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "WRONGTYPE",
        )))
    }

    #[test]
    fn slow_answers_do_not_break_a_connection_until_three_in_a_row() {
        let mut h = Health::default();
        h.note(&err(io::ErrorKind::TimedOut));
        h.note(&err(io::ErrorKind::TimedOut));
        h.note(&Ok(()));
        h.note(&err(io::ErrorKind::TimedOut));
        h.note(&err(io::ErrorKind::TimedOut));
        assert!(
            !h.broken,
            "a success between timeouts starts the count over"
        );
        h.note(&reply_error());
        h.note(&err(io::ErrorKind::TimedOut));
        h.note(&err(io::ErrorKind::TimedOut));
        assert!(!h.broken, "an error reply is an answer");
        h.note(&err(io::ErrorKind::TimedOut));
        assert!(h.broken, "three timeouts in a row");
    }

    #[test]
    fn a_dropped_connection_is_broken_at_once() {
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
        ] {
            let mut h = Health::default();
            h.note(&err(kind));
            assert!(h.broken, "{kind:?}");
        }
    }
}
