//! The Redis key schema. Every key of one task shares the hash tag of its
//! shard (`{s<shard>}`), so a publish touches a single Redis Cluster slot.
//!
//! - `sluice:{s<shard>}:feed`: the shard's feed stream (live tailing only)
//! - `sluice:{s<shard>}:t:<task>:log`: the task's history, entry id `<seq>-0`
//! - `sluice:{s<shard>}:t:<task>:meta`: hash with the task's last seq, state,
//!   latest envelope, timestamps and idempotency keys

use crate::task::TaskId;

/// Shard count used when none is configured. Every producer and edge of one
/// deployment must use the same count.
pub const DEFAULT_SHARDS: u32 = 16;

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

/// The feed stream of one shard.
pub fn feed_key(shard: u32) -> String {
    format!("sluice:{{s{shard}}}:feed")
}

/// The shard of a feed key: the inverse of [`feed_key`]. `None` for any
/// other key.
pub fn feed_shard(key: &str) -> Option<u32> {
    let digits = key.strip_prefix("sluice:{s")?.strip_suffix("}:feed")?;
    // `u32::from_str` takes a leading `+`; feed_key never writes one.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// All feed keys of a deployment, in shard order.
pub fn feed_keys(shards: u32) -> Vec<String> {
    (0..shards).map(feed_key).collect()
}

/// The consumer group of an edge node on every shard feed.
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
    pub feed: String,
}

impl TaskKeys {
    pub fn new(task: &TaskId, shards: u32) -> Self {
        let shard = shard_of(task.as_str(), shards);
        let tag = format!("sluice:{{s{shard}}}");
        TaskKeys {
            shard,
            log: format!("{tag}:t:{task}:log"),
            meta: format!("{tag}:t:{task}:meta"),
            feed: format!("{tag}:feed"),
        }
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
    fn keys_share_a_hash_tag() {
        let t = TaskId::parse("job-42").expect("valid");
        let k = TaskKeys::new(&t, 16);
        let tag = format!("{{s{}}}", k.shard);
        assert!(k.log.contains(&tag) && k.meta.contains(&tag) && k.feed.contains(&tag));
        assert_eq!(k.log, format!("sluice:{tag}:t:job-42:log"));
        assert_eq!(k.meta, format!("sluice:{tag}:t:job-42:meta"));
        assert_eq!(k.feed, feed_key(k.shard));
        assert_eq!(group_name("n1"), "edge:n1");
        assert_eq!(node_key("n1"), "sluice:node:n1");
        assert!(NODES_KEY.starts_with(PREFIX) && node_reap_lock_key("n1").starts_with(PREFIX));
    }

    #[test]
    fn feed_keys_parse_back() {
        for shard in [0, 1, 7, 15, 16, 1023, u32::MAX] {
            assert_eq!(feed_shard(&feed_key(shard)), Some(shard));
        }
        let t = TaskId::parse("job-42").expect("valid");
        let k = TaskKeys::new(&t, 16);
        assert_eq!(feed_shard(&k.feed), Some(k.shard));
        for other in [
            "",
            "sluice:{s}:feed",
            "sluice:{s+1}:feed",
            "sluice:{s-1}:feed",
            "sluice:{s1}:feeds",
            "sluice:{s1}:feed:x",
            "sluice:{sx}:feed",
            "sluice:{s99999999999}:feed",
            "other:{s1}:feed",
            &k.log,
            &k.meta,
        ] {
            assert_eq!(feed_shard(other), None, "{other}");
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
    fn shards_spread() {
        let mut seen = [0u32; 16];
        for i in 0..1600 {
            seen[shard_of(&format!("task-{i}"), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
    }
}
