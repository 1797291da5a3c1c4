//! The embedded in-memory store: one process, the same semantics as Redis
//! (seqs, idempotency, closing, log cap, expiry), nothing persisted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use sluice_broker::{PublishError, PublishOptions, Published, PublisherConfig};
use sluice_shared::event::{Snapshot, TaskState};
use sluice_shared::task::{validate_event_type, validate_idempotency_key};
use sluice_shared::{codec, Seq, StoredEvent, TaskId};
use tokio_util::sync::CancellationToken;

use super::{FeedSink, HistoryPage, PageBuilder, PageLimit, Store, StoreError};

/// How often expired tasks are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

struct MemTask {
    /// Drawn when the task is created, as the function does.
    epoch: u64,
    seq: Seq,
    closed: bool,
    log: VecDeque<Logged>,
    idem: HashMap<String, Seq>,
    expires: Instant,
}

/// A logged event and the MessagePack size of its data (what Redis would
/// store): history picks a page's events by it under the lock, and encodes
/// them after.
struct Logged {
    ev: StoredEvent,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<String, MemTask>,
    sinks: Vec<Arc<dyn FeedSink>>,
}

/// In-process store. Cheap to clone.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    config: Arc<PublisherConfig>,
}

impl MemoryStore {
    pub fn new(config: PublisherConfig) -> Self {
        MemoryStore {
            inner: Arc::new(Mutex::new(Inner::default())),
            config: Arc::new(config),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map half-updated
        // in a way later calls would misread, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The checks `sluice_publish` makes before it writes anything; the
    /// data's encoded size.
    fn validate(
        &self,
        kind: &str,
        data: &Value,
        opts: &PublishOptions,
    ) -> Result<usize, PublishError> {
        validate_event_type(kind).map_err(PublishError::InvalidType)?;
        if let Some(k) = &opts.idempotency_key {
            validate_idempotency_key(k).map_err(PublishError::InvalidIdempotencyKey)?;
        }
        let size = codec::encode_data(data)?.len();
        if size > self.config.max_data_bytes {
            return Err(PublishError::TooLarge {
                size,
                max: self.config.max_data_bytes,
            });
        }
        Ok(size)
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.lock().tasks.retain(|_, t| t.expires > now);
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What [`MemTask::append`] did.
enum Appended {
    New(StoredEvent),
    /// The idempotency key was used: nothing appended; the first seq.
    Duplicate(Seq),
}

impl MemTask {
    fn new() -> Self {
        MemTask {
            // Like the function: the clock in microseconds when the task
            // is created.
            epoch: u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(1),
            seq: 0,
            closed: false,
            log: VecDeque::new(),
            idem: HashMap::new(),
            expires: Instant::now(),
        }
    }

    /// Appends one event as `sluice_publish` does: a repeated idempotency
    /// key answers the first seq, a closed task refuses, else the next seq
    /// (the log capped, the task closed by a final event, its expiry
    /// moved).
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        task: &TaskId,
        kind: &str,
        data: &Value,
        bytes: usize,
        opts: &PublishOptions,
        ts: i64,
        config: &PublisherConfig,
    ) -> Result<Appended, PublishError> {
        if let Some(seq) = opts.idempotency_key.as_ref().and_then(|k| self.idem.get(k)) {
            return Ok(Appended::Duplicate(*seq));
        }
        if self.closed {
            return Err(PublishError::Closed(task.to_string()));
        }
        self.seq += 1;
        let ev = StoredEvent {
            task: task.to_string(),
            seq: self.seq,
            kind: kind.to_owned(),
            data: data.clone(),
            ts,
            is_final: opts.is_final,
            epoch: self.epoch,
        };
        self.log.push_back(Logged {
            ev: ev.clone(),
            bytes,
        });
        while self.log.len() as u64 > config.log_cap {
            self.log.pop_front();
        }
        if let Some(k) = &opts.idempotency_key {
            self.idem.insert(k.clone(), self.seq);
        }
        self.closed = opts.is_final;
        let ttl = if opts.is_final {
            config.retention_secs
        } else {
            config.idle_ttl_secs
        };
        self.expires = Instant::now() + Duration::from_secs(ttl);
        Ok(Appended::New(ev))
    }
}

/// The task's entry, created if it is unknown or expired.
fn entry<'a>(inner: &'a mut Inner, task: &str) -> &'a mut MemTask {
    let now = Instant::now();
    if inner.tasks.get(task).is_some_and(|t| t.expires <= now) {
        inner.tasks.remove(task);
    }
    inner
        .tasks
        .entry(task.to_owned())
        .or_insert_with(MemTask::new)
}

fn live<'a>(inner: &'a mut Inner, task: &str) -> Option<&'a mut MemTask> {
    let now = Instant::now();
    if inner.tasks.get(task).is_some_and(|t| t.expires <= now) {
        inner.tasks.remove(task);
    }
    inner.tasks.get_mut(task)
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(
        &self,
        task: &TaskId,
        kind: &str,
        data: &Value,
        opts: &PublishOptions,
    ) -> Result<Published, StoreError> {
        let bytes = self.validate(kind, data, opts)?;
        let mut inner = self.lock();
        let ts = now_ms();
        let appended = entry(&mut inner, task.as_str()).append(
            task,
            kind,
            data,
            bytes,
            opts,
            ts,
            &self.config,
        )?;
        let ev = match appended {
            Appended::New(ev) => ev,
            Appended::Duplicate(seq) => {
                return Ok(Published {
                    seq,
                    ts,
                    duplicate: true,
                })
            }
        };
        // Delivered under the store lock so the feed sees a task's events in
        // seq order; sinks never block (they only `try_send`).
        for sink in &inner.sinks {
            if sink.wants(&ev.task) {
                sink.deliver(&ev);
            }
        }
        Ok(Published {
            seq: ev.seq,
            ts,
            duplicate: false,
        })
    }

    async fn snapshot(&self, task: &TaskId) -> Result<Option<Snapshot>, StoreError> {
        let mut inner = self.lock();
        let Some(t) = live(&mut inner, task.as_str()) else {
            return Ok(None);
        };
        let Some(latest) = t.log.back() else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            task: task.to_string(),
            seq: t.seq,
            state: if t.closed {
                TaskState::Closed
            } else {
                TaskState::Open
            },
            latest: latest.ev.envelope(),
        }))
    }

    async fn history(
        &self,
        task: &TaskId,
        after: Seq,
        limit: PageLimit,
    ) -> Result<HistoryPage, StoreError> {
        // Under the lock, pick the page by stored size; encode after it.
        let (picked, at_limit) = {
            let mut inner = self.lock();
            let Some(t) = live(&mut inner, task.as_str()) else {
                return Ok(HistoryPage::default());
            };
            let first = t.log.front().map(|e| e.ev.seq).unwrap_or(0);
            let skip = after.saturating_sub(first.saturating_sub(1));
            let (mut picked, mut stored) = (Vec::new(), 0);
            let mut at_limit = false;
            for l in t
                .log
                .iter()
                .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            {
                picked.push(l.ev.clone());
                stored += l.bytes;
                at_limit = picked.len() >= limit.events || stored >= limit.bytes;
                if at_limit {
                    break;
                }
            }
            (picked, at_limit)
        };
        let mut page = PageBuilder::new(limit);
        let mut taken = 0;
        for ev in &picked {
            taken += 1;
            if !page.push(ev) {
                break;
            }
        }
        // As on Redis: more may follow when a limit stopped the page.
        let more = at_limit || taken < picked.len() || page.is_full();
        Ok(page.finish(more))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn run_feed(&self, sink: Arc<dyn FeedSink>, cancel: CancellationToken) {
        self.lock().sinks.push(sink.clone());
        sink.set_live(true);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = sweep.tick() => self.sweep(),
            }
        }
        sink.set_live(false);
        self.lock().sinks.retain(|s| !Arc::ptr_eq(s, &sink));
    }
}
