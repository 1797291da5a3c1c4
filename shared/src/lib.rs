//! Sluice's shared vocabulary: task ids, event envelopes, the Redis key
//! schema and the storage codec. Nothing in this crate does I/O, so the
//! producer (`sluice-broker`), the edge (`sluice-edge`) and the tests agree on
//! one definition of every name and byte.

pub mod codec;
pub mod event;
pub mod keys;
pub mod position;
pub mod task;
pub mod token;

pub use event::{Envelope, Seq, StoredEvent};
pub use keys::{shard_of, FeedId, TaskKeys, DEFAULT_SHARDS, FEEDS_PER_SHARD};
pub use position::{Cursor, Position, Tag};
pub use task::{TaskId, TaskIdError};
