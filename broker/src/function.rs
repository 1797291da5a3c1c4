//! The `sluice_publish` Redis function (Lua source in `sluice_publish.lua`).
//! Producers in any language call it with `FCALL`; see the README for the
//! argument list.

use redis::aio::ConnectionLike;

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
