//! The `sluice_publish` Redis function (Lua source in `sluice_publish.lua`).
//! Producers in any language call it with `FCALL`; see the README for the
//! argument list.

use redis::aio::ConnectionLike;

use crate::error::{classify, ErrorClass};

/// Library source, loaded with `FUNCTION LOAD REPLACE`.
pub const SOURCE: &str = include_str!("sluice_publish.lua");
/// Name of the function inside the library.
pub const NAME: &str = "sluice_publish";

/// Loads (or replaces) the library. Idempotent; every broker and edge does it
/// at start and again when Redis answers that the function is unknown (a
/// restarted Redis without persistence: [`crate::error::ErrorClass::FunctionMissing`]).
pub async fn load<C: ConnectionLike + Send>(conn: &mut C) -> redis::RedisResult<()> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(SOURCE)
        .query_async::<String>(conn)
        .await
        .map(|_| ())
}

/// The feed bookkeeping functions of the library (see the Lua source): each
/// takes one shard's feeds as keys (one slot) and, but for
/// [`FeedsFn::Stats`], a consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedsFn {
    /// Creates the group at each feed's end; a group that exists is kept.
    Join,
    /// Destroys the group on each feed that has it.
    Leave,
    /// `{entries-added, length, entries-read}` per feed, `-1` unknown.
    Check,
    /// One shard's length and per-group summary.
    Stats,
}

impl FeedsFn {
    fn name(self) -> &'static str {
        match self {
            FeedsFn::Join => "sluice_feeds_join",
            FeedsFn::Leave => "sluice_feeds_leave",
            FeedsFn::Check => "sluice_feeds_check",
            FeedsFn::Stats => "sluice_feeds_stats",
        }
    }

    /// Runs [`FeedsFn::cmd`]; when Redis does not know the function (a
    /// Redis restarted empty, nothing loaded it yet) loads the library and
    /// runs it again.
    pub async fn query<C, S, T>(
        self,
        conn: &mut C,
        feeds: &[S],
        group: Option<&str>,
    ) -> redis::RedisResult<T>
    where
        C: ConnectionLike + Send,
        S: AsRef<str>,
        T: redis::FromRedisValue,
    {
        let cmd = self.cmd(feeds, group);
        match cmd.query_async(conn).await {
            Err(e) if classify(&e) == ErrorClass::FunctionMissing => {
                load(conn).await?;
                cmd.query_async(conn).await
            }
            r => r,
        }
    }

    /// `FCALL <fn> <n> <feeds...> [<group>]`.
    pub fn cmd<S: AsRef<str>>(self, feeds: &[S], group: Option<&str>) -> redis::Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(self.name()).arg(feeds.len());
        for f in feeds {
            cmd.arg(f.as_ref());
        }
        if let Some(g) = group {
            cmd.arg(g);
        }
        cmd
    }
}
