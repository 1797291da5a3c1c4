//! Loss detection for one shard feed: did this node's consumer group miss
//! entries since the last check? Pure accounting over what `XINFO GROUPS`
//! and `XINFO STREAM` say and what the reader received; the reader answers
//! a loss by re-syncing its subscriptions from the task logs.

/// What one check read about a feed and this node's group on it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Sample {
    /// The group's `entries-read`.
    pub entries_read: Option<u64>,
    /// The feed's `entries-added`.
    pub entries_added: Option<u64>,
    /// The feed's `length`.
    pub length: Option<u64>,
}

/// What a check found missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Findings {
    /// The group read more entries than the reader received (they were
    /// trimmed before it read them), or the group is gone.
    pub skipped: bool,
    /// `entries-added` went down: Redis went back in time (a restart
    /// without persistence, a failover that lost writes).
    pub went_back: bool,
    /// Entries newly trimmed off the feed before the group read them.
    pub trimmed: u64,
}

impl Findings {
    /// Some entries may never reach the reader: re-sync.
    pub fn lost(&self) -> bool {
        self.skipped || self.went_back || self.trimmed > 0
    }
}

/// Per-shard accounting to detect skipped entries: the group's
/// `entries-read` at the last check, and what we received since.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ShardCount {
    base: Option<u64>,
    received: u64,
    /// The feed's `entries-added` at the last check: a stream never adds
    /// fewer entries over time, so a smaller value means Redis went back in
    /// time (restart without persistence, a failover that lost writes).
    added: Option<u64>,
    /// High-water mark of `entries-added - length - entries-read`: how many
    /// entries were trimmed off the feed without this group reading them.
    /// Redis keeps counting `entries-read` one by one after such a trim, so
    /// the figure stays at what was missed; only a rise is a new loss.
    trimmed_unread: u64,
}

impl ShardCount {
    /// The reader got `n` entries of this feed.
    pub fn received(&mut self, n: u64) {
        self.received += n;
    }

    /// Compares the group's `entries-read` with what we received, and the
    /// feed's counters with the last check's; starts counting afresh.
    pub fn check(&mut self, now: Sample) -> Findings {
        let read = now.entries_read;
        let skipped = match (self.base, read) {
            (Some(base), Some(now)) => now.saturating_sub(base) > self.received,
            (Some(_), None) => true,
            _ => false,
        };
        let went_back =
            matches!((self.added, now.entries_added), (Some(before), Some(now)) if now < before);
        // Entries trimmed past our cursor before we read them. The
        // `entries-read` comparison above only sees them once the group
        // reads again — and, as Redis increments `entries-read` by one
        // per delivered entry, not even then — so a node whose stall
        // outlived the feed would otherwise wait for the next event of
        // each task (forever, if the trimmed one was a final event).
        let trimmed_unread = match (now.entries_added, now.length, read) {
            (Some(added), Some(len), Some(read)) => added.saturating_sub(len).saturating_sub(read),
            _ => self.trimmed_unread,
        };
        let trimmed = if self.base.is_some() {
            trimmed_unread.saturating_sub(self.trimmed_unread)
        } else {
            0
        };
        *self = ShardCount {
            base: read,
            received: 0,
            added: now.entries_added.or(self.added),
            trimmed_unread: trimmed_unread.max(self.trimmed_unread),
        };
        Findings {
            skipped,
            went_back,
            trimmed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(read: u64, added: u64, length: u64) -> Sample {
        Sample {
            entries_read: Some(read),
            entries_added: Some(added),
            length: Some(length),
        }
    }

    #[test]
    fn the_first_check_finds_nothing() {
        let mut c = ShardCount::default();
        assert_eq!(c.check(sample(5, 100, 10)), Findings::default());
    }

    #[test]
    fn everything_received_is_no_loss() {
        let mut c = ShardCount::default();
        c.check(sample(5, 10, 10));
        c.received(3);
        let f = c.check(sample(8, 13, 13));
        assert!(!f.lost(), "{f:?}");
    }

    #[test]
    fn entries_read_but_not_received_were_skipped() {
        let mut c = ShardCount::default();
        c.check(sample(5, 10, 10));
        c.received(2);
        let f = c.check(sample(8, 13, 13));
        assert!(f.skipped && f.lost(), "{f:?}");
        // Counting starts afresh.
        c.received(1);
        assert!(!c.check(sample(9, 14, 14)).lost());
    }

    #[test]
    fn a_group_that_disappeared_skipped() {
        let mut c = ShardCount::default();
        c.check(sample(5, 10, 10));
        let f = c.check(Sample {
            entries_read: None,
            ..sample(0, 10, 10)
        });
        assert!(f.skipped, "{f:?}");
    }

    #[test]
    fn fewer_entries_added_went_back_in_time() {
        let mut c = ShardCount::default();
        c.check(sample(10, 10, 10));
        let f = c.check(sample(4, 4, 4));
        assert!(f.went_back && f.lost(), "{f:?}");
    }

    #[test]
    fn entries_trimmed_unread_are_lost_once() {
        let mut c = ShardCount::default();
        c.check(sample(10, 10, 10));
        // 100 more added, the feed capped at 50, the group read none of
        // them: 50 were trimmed unread.
        let f = c.check(sample(10, 110, 50));
        assert_eq!(f.trimmed, 50, "{f:?}");
        assert!(f.lost());
        // Redis then counts entries-read one by one from there: the figure
        // stays, so it is not a new loss.
        c.received(50);
        let f = c.check(sample(60, 110, 50));
        assert_eq!(f, Findings::default());
    }

    #[test]
    fn trims_before_the_first_check_are_not_counted() {
        let mut c = ShardCount::default();
        let f = c.check(sample(0, 110, 50));
        assert_eq!(f.trimmed, 0);
    }
}
