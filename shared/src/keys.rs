//! The Redis key schema. Every key of one task shares the hash tag of its
//! shard (`{s<shard>}`), so a publish touches a single Redis Cluster slot.
//!
//! With `h` = FNV-1a 32 of the task id's bytes and `S` shards (hash tags):
//! the task's shard is `h % S` and its feed `(h / S) % 64`
//! ([`FEEDS_PER_SHARD`]), so a deployment has `S × 64` feeds, 64 under each
//! hash tag. An edge follows only the feeds that hold tasks its clients
//! watch, all feeds of one shard with one blocking read (one slot).
//!
//! - `sluice:{s<shard>}:feed:<feed>`: a feed stream (live tailing only)
//! - `sluice:{s<shard>}:t:<task>:log`: the task's history, entry id `<seq>-0`
//! - `sluice:{s<shard>}:t:<task>:meta`: hash with the task's last seq, state,
//!   latest envelope, timestamps and idempotency keys
//! - `sluice:{s<shard>}:feed`: the shard's one feed of the first schema
//!   (every edge read all of them), still written and read during a
//!   migration (`--legacy-feeds`)

use crate::task::TaskId;

/// Shard count used when none is configured. Every producer and edge of one
/// deployment must use the same count.
pub const DEFAULT_SHARDS: u32 = 16;

/// Feeds under each shard's hash tag. Part of the key schema: every producer
/// and edge computes feed keys with it.
pub const FEEDS_PER_SHARD: u32 = 64;

/// Prefix of the node registry keys and other deployment-wide keys.
pub const PREFIX: &str = "sluice:";

/// FNV-1a, 32 bits.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let mut h = OFFSET;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// The shard of a task: FNV-1a 32 of the task id bytes, modulo the shard
/// count.
pub fn shard_of(task: &str, shards: u32) -> u32 {
    fnv1a32(task.as_bytes()) % shards.max(1)
}

/// One feed stream: a shard (hash tag) and the feed under it, or the
/// shard's single feed of the first schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedId {
    pub shard: u32,
    /// `None`: the shard's legacy feed (`sluice:{s<shard>}:feed`).
    pub feed: Option<u32>,
}

impl FeedId {
    /// The feed of a task: shard `h % shards`, feed `(h / shards) % 64`.
    pub fn of(task: &str, shards: u32) -> FeedId {
        let shards = shards.max(1);
        let h = fnv1a32(task.as_bytes());
        FeedId {
            shard: h % shards,
            feed: Some((h / shards) % FEEDS_PER_SHARD),
        }
    }

    /// The legacy feed of one shard.
    pub fn legacy(shard: u32) -> FeedId {
        FeedId { shard, feed: None }
    }

    /// The stream key.
    pub fn key(&self) -> String {
        match self.feed {
            Some(n) => format!("sluice:{{s{}}}:feed:{n}", self.shard),
            None => format!("sluice:{{s{}}}:feed", self.shard),
        }
    }

    /// The inverse of [`FeedId::key`]; `None` for any other key.
    pub fn parse(key: &str) -> Option<FeedId> {
        let rest = key.strip_prefix("sluice:{s")?;
        let (shard, rest) = rest.split_once("}:feed")?;
        let shard = digits(shard)?;
        match rest {
            "" => Some(FeedId::legacy(shard)),
            _ => {
                let n = digits(rest.strip_prefix(':')?)?;
                (n < FEEDS_PER_SHARD).then_some(FeedId {
                    shard,
                    feed: Some(n),
                })
            }
        }
    }

    /// The feeds of one shard, in feed order (with its legacy feed last
    /// when `legacy`).
    pub fn of_shard(shard: u32, legacy: bool) -> impl Iterator<Item = FeedId> {
        (0..FEEDS_PER_SHARD)
            .map(move |n| FeedId {
                shard,
                feed: Some(n),
            })
            .chain(legacy.then_some(FeedId::legacy(shard)))
    }
}

/// A decimal `u32` as keys write it (`u32::from_str` would take a `+`).
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The legacy feed stream of one shard (the first schema's only feed).
pub fn legacy_feed_key(shard: u32) -> String {
    FeedId::legacy(shard).key()
}

/// Every feed key of a deployment, shard by shard (with each shard's legacy
/// feed when `legacy`).
pub fn feed_keys(shards: u32, legacy: bool) -> Vec<String> {
    (0..shards.max(1))
        .flat_map(|s| FeedId::of_shard(s, legacy))
        .map(|f| f.key())
        .collect()
}

/// The consumer group of an edge node on the feeds it follows.
pub fn group_name(node_id: &str) -> String {
    format!("edge:{node_id}")
}

/// The node id of an edge's consumer group: the inverse of [`group_name`].
/// `None` for a group that is not an edge's.
pub fn group_node(group: &str) -> Option<&str> {
    group.strip_prefix("edge:")
}

/// The node registry: a sorted set of node ids scored by their last
/// heartbeat (ms since the epoch).
pub const NODES_KEY: &str = "sluice:nodes";

/// One node's registry entry: a hash of what the node last reported.
pub fn node_key(node_id: &str) -> String {
    format!("sluice:node:{node_id}")
}

/// The lock a janitor holds while it removes a dead node.
pub fn node_reap_lock_key(node_id: &str) -> String {
    format!("sluice:node:{node_id}:reaping")
}

/// The keys of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskKeys {
    pub shard: u32,
    pub log: String,
    pub meta: String,
    /// The task's feed ([`FeedId::of`]).
    pub feed: String,
}

impl TaskKeys {
    pub fn new(task: &TaskId, shards: u32) -> Self {
        let id = FeedId::of(task.as_str(), shards);
        let tag = format!("sluice:{{s{}}}", id.shard);
        TaskKeys {
            shard: id.shard,
            log: format!("{tag}:t:{task}:log"),
            meta: format!("{tag}:t:{task}:meta"),
            feed: id.key(),
        }
    }

    /// The keys a publisher writes during a migration from the first
    /// schema (`--legacy-feeds`): the feed is the shard's legacy feed, which
    /// edges of both schemas read.
    pub fn legacy(task: &TaskId, shards: u32) -> Self {
        let mut keys = TaskKeys::new(task, shards);
        keys.feed = legacy_feed_key(keys.shard);
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Reference FNV-1a 32-bit values.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert_eq!(shard_of("foobar", 16), 0xbf9c_f968 % 16);
    }

    #[test]
    fn the_documented_formula() {
        // The README's worked example: h = 0xbf9cf968 = 3214735720.
        let f = FeedId::of("foobar", 16);
        assert_eq!(f.shard, 3_214_735_720 % 16);
        assert_eq!(f.feed, Some((3_214_735_720 / 16) % 64));
        assert_eq!((f.shard, f.feed), (8, Some(22)));
        assert_eq!(f.key(), "sluice:{s8}:feed:22");
        // deploy/README.md's reference values.
        assert_eq!(FeedId::of("job-42", 16).key(), "sluice:{s5}:feed:20");
        assert_eq!(FeedId::of("export-7", 16).key(), "sluice:{s7}:feed:31");
    }

    #[test]
    fn keys_share_a_hash_tag() {
        let t = TaskId::parse("job-42").expect("valid");
        let k = TaskKeys::new(&t, 16);
        let tag = format!("{{s{}}}", k.shard);
        assert!(k.log.contains(&tag) && k.meta.contains(&tag) && k.feed.contains(&tag));
        assert_eq!(k.log, format!("sluice:{tag}:t:job-42:log"));
        assert_eq!(k.meta, format!("sluice:{tag}:t:job-42:meta"));
        assert_eq!(k.feed, FeedId::of("job-42", 16).key());
        let legacy = TaskKeys::legacy(&t, 16);
        assert_eq!(legacy.feed, format!("sluice:{tag}:feed"));
        assert_eq!((legacy.log, legacy.meta), (k.log, k.meta));
        assert_eq!(group_name("n1"), "edge:n1");
        assert_eq!(node_key("n1"), "sluice:node:n1");
        assert!(NODES_KEY.starts_with(PREFIX) && node_reap_lock_key("n1").starts_with(PREFIX));
    }

    #[test]
    fn feed_keys_parse_back() {
        for shard in [0, 1, 7, 15, 16, 1023, u32::MAX] {
            for feed in [Some(0), Some(1), Some(63), None] {
                let f = FeedId { shard, feed };
                assert_eq!(FeedId::parse(&f.key()), Some(f));
            }
        }
        let all = feed_keys(16, true);
        assert_eq!(all.len(), 16 * 65);
        assert_eq!(feed_keys(16, false).len(), 16 * 64);
        let t = TaskId::parse("job-42").expect("valid");
        let k = TaskKeys::new(&t, 16);
        assert_eq!(FeedId::parse(&k.feed), Some(FeedId::of("job-42", 16)));
        for other in [
            "",
            "sluice:{s}:feed",
            "sluice:{s+1}:feed",
            "sluice:{s-1}:feed",
            "sluice:{s1}:feeds",
            "sluice:{s1}:feed:",
            "sluice:{s1}:feed:x",
            "sluice:{s1}:feed:+1",
            "sluice:{s1}:feed:64",
            "sluice:{s1}:feed:1:2",
            "sluice:{sx}:feed",
            "sluice:{s99999999999}:feed",
            "other:{s1}:feed",
            &k.log,
            &k.meta,
        ] {
            assert_eq!(FeedId::parse(other), None, "{other}");
        }
    }

    #[test]
    fn group_names_parse_back() {
        for node in ["n1", "host-7f3a", "", "edge:nested"] {
            assert_eq!(group_node(&group_name(node)), Some(node));
        }
        assert_eq!(group_node("reporting"), None);
    }

    #[test]
    fn shards_and_feeds_spread() {
        let mut shards = [0u32; 16];
        let mut feeds = std::collections::HashMap::new();
        for i in 0..102_400 {
            let f = FeedId::of(&format!("task-{i}"), 16);
            shards[f.shard as usize] += 1;
            *feeds.entry(f).or_insert(0u32) += 1;
        }
        assert!(shards.iter().all(|n| *n > 5_000), "{shards:?}");
        // 1 024 feeds, 100 tasks each on average.
        assert_eq!(feeds.len(), 1024);
        assert!(feeds.values().all(|n| (40..=160).contains(n)), "{feeds:?}");
    }
}
