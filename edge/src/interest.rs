//! Which feeds this node needs: the feeds holding tasks that local
//! subscriptions follow, and those left within the grace period. The hub
//! counts a task in when it gains its first local subscriber and out when
//! it loses its last; the feed readers ask [`Interest::wanted`] before each
//! read and join or leave feeds to match (`store::redis::feed`).
//!
//! A feed whose last task went away stays wanted for the grace period
//! (`--feed-grace-secs`), so a client that reconnects (or a page that
//! reloads) does not make the node leave and join again; once the grace is
//! over, the next [`Interest::wanted`] forgets it: the state holds only
//! feeds that are followed or about to be, never more than the deployment's
//! feeds.
//!
//! A feed that becomes wanted wakes the reader of its shard at once
//! ([`Interest::watch`]). A subscription that registered while its feed
//! was not followed yet waits (at most [`JOIN_WAIT`]) for the join before
//! it reads history: the group then exists before the read, and the rule
//! "register, then read history, merge by seq" closes the gap as it does
//! for a followed feed. A subscription that read before the join (it
//! gave up waiting, or was open already) is sent to catch up from history
//! once the join is done ([`crate::hub::Hub`]'s `joined`), so a join never
//! loses an event either way.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sluice_shared::keys::FeedId;
use tokio::sync::Notify;

/// Default of `--feed-grace-secs`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Longest a new subscription waits for its feed to be joined before it
/// reads history anyway (Redis slow or away; it then catches up after the
/// join).
pub const JOIN_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Want {
    /// Tasks of this feed with local subscribers.
    tasks: usize,
    /// When `tasks` went to 0.
    idle_since: Option<Instant>,
    /// The reader has joined the feed (its group exists).
    followed: bool,
}

#[derive(Debug, Default)]
struct State {
    feeds: HashMap<FeedId, Want>,
    /// The reader of each shard, woken when one of its feeds becomes wanted.
    wakers: HashMap<u32, Arc<Notify>>,
}

#[derive(Debug)]
pub struct Interest {
    shards: u32,
    grace: Duration,
    state: Mutex<State>,
    /// Notified after every join ([`Interest::set_followed`]).
    joined: Notify,
}

impl Interest {
    /// Interest in the feeds of a deployment of `shards` shards.
    pub fn new(shards: u32, grace: Duration) -> Arc<Interest> {
        Arc::new(Interest {
            shards: shards.max(1),
            grace,
            state: Mutex::new(State::default()),
            joined: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Sections only update counters: a poisoned lock holds a
        // consistent map.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deployment's shard count.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The grace period a feed stays followed without subscribers.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// `task` gained its first local subscriber.
    pub fn add(&self, task: &str) {
        let feed = FeedId::of(task, self.shards);
        let mut st = self.lock();
        let mut fresh = false;
        let want = st.feeds.entry(feed).or_insert_with(|| {
            fresh = true;
            Want {
                tasks: 0,
                idle_since: None,
                followed: false,
            }
        });
        want.tasks += 1;
        want.idle_since = None;
        if fresh {
            if let Some(waker) = st.wakers.get(&feed.shard) {
                waker.notify_one();
            }
        }
    }

    /// `task` lost its last local subscriber.
    pub fn remove(&self, task: &str) {
        let feed = FeedId::of(task, self.shards);
        let mut st = self.lock();
        if let Some(want) = st.feeds.get_mut(&feed) {
            want.tasks = want.tasks.saturating_sub(1);
            if want.tasks == 0 {
                want.idle_since = Some(Instant::now());
            }
        }
    }

    /// True when a reader follows `task`'s shard and has not joined its
    /// feed yet: a subscription of it should wait for the join
    /// ([`Interest::joined`]) before it reads history.
    pub fn pending(&self, task: &str) -> bool {
        let feed = FeedId::of(task, self.shards);
        let st = self.lock();
        st.wakers.contains_key(&feed.shard) && st.feeds.get(&feed).is_some_and(|w| !w.followed)
    }

    /// Records that `feeds` are joined (`true`) or no longer read
    /// (`false`: the reader lost Redis); wakes the subscriptions waiting
    /// for a join.
    pub fn set_followed(&self, feeds: &[FeedId], followed: bool) {
        {
            let mut st = self.lock();
            for f in feeds {
                if let Some(w) = st.feeds.get_mut(f) {
                    w.followed = followed;
                }
            }
        }
        if followed {
            self.joined.notify_waiters();
        }
    }

    /// Records that no feed of `shards` is read (the reader lost Redis).
    pub fn unfollow_shards(&self, shards: &[u32]) {
        let mut st = self.lock();
        for (f, w) in st.feeds.iter_mut() {
            if shards.contains(&f.shard) {
                w.followed = false;
            }
        }
    }

    /// Fires after the next join; create it before checking the state it
    /// waits for (tokio's `Notified::enable`), so no join is missed.
    pub fn joined(&self) -> tokio::sync::futures::Notified<'_> {
        self.joined.notified()
    }

    /// The notification the reader of `shards` waits on: it fires when one
    /// of their feeds becomes wanted (a permit is kept if the reader is not
    /// waiting yet).
    pub fn watch(&self, shards: &[u32]) -> Arc<Notify> {
        let waker = Arc::new(Notify::new());
        let mut st = self.lock();
        for s in shards {
            st.wakers.insert(*s, waker.clone());
        }
        waker
    }

    /// The feeds of `shards` to follow at `now`; feeds idle for longer than
    /// the grace period are forgotten (and so not returned).
    pub fn wanted(&self, shards: &[u32], now: Instant) -> BTreeSet<FeedId> {
        let grace = self.grace;
        let mut st = self.lock();
        st.feeds.retain(|_, w| match w.idle_since {
            Some(since) => now.saturating_duration_since(since) < grace,
            None => true,
        });
        st.feeds
            .keys()
            .filter(|f| shards.contains(&f.shard))
            .copied()
            .collect()
    }

    /// Feeds wanted now, over all shards (tests, status).
    pub fn len(&self) -> usize {
        self.lock().feeds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_are_wanted_while_watched_and_for_the_grace_after() {
        let i = Interest::new(16, Duration::from_secs(10));
        let all: Vec<u32> = (0..16).collect();
        let t0 = Instant::now();
        assert!(i.wanted(&all, t0).is_empty());
        i.add("a");
        i.add("b");
        let fa = FeedId::of("a", 16);
        let fb = FeedId::of("b", 16);
        assert_ne!(fa, fb);
        assert_eq!(i.wanted(&all, t0), BTreeSet::from([fa, fb]));
        assert_eq!(i.wanted(&[fa.shard], t0), BTreeSet::from([fa]));
        i.remove("a");
        let later = Instant::now() + Duration::from_secs(5);
        assert!(i.wanted(&all, later).contains(&fa), "within the grace");
        let gone = Instant::now() + Duration::from_secs(11);
        assert_eq!(i.wanted(&all, gone), BTreeSet::from([fb]));
        // Forgotten: the state does not grow with feeds once followed.
        assert_eq!(i.len(), 1);
        i.remove("b");
        assert!(i.wanted(&all, gone + Duration::from_secs(11)).is_empty());
        assert!(i.is_empty());
    }

    #[test]
    fn a_feed_watched_again_within_the_grace_stays() {
        let i = Interest::new(16, Duration::from_secs(10));
        let all: Vec<u32> = (0..16).collect();
        i.add("a");
        i.remove("a");
        i.add("a");
        let f = FeedId::of("a", 16);
        assert!(i
            .wanted(&all, Instant::now() + Duration::from_secs(60))
            .contains(&f));
    }

    #[tokio::test]
    async fn a_new_feed_wakes_its_shards_reader_once() {
        let i = Interest::new(16, Duration::from_secs(10));
        let f = FeedId::of("a", 16);
        let waker = i.watch(&[f.shard]);
        i.add("a");
        tokio::time::timeout(Duration::from_secs(1), waker.notified())
            .await
            .expect("woken");
        // A second task of a followed feed needs no join.
        let other = (0..10_000)
            .map(|n| format!("t{n}"))
            .find(|t| FeedId::of(t, 16) == f)
            .expect("another task of the feed");
        i.add(&other);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waker.notified())
                .await
                .is_err(),
            "no wake for a feed already wanted"
        );
    }
}
