//! [`Publisher`]: publish events for tasks from Rust job workers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_broker::PublishError> {
//! let publisher = sluice_broker::Publisher::connect("redis://127.0.0.1:6379").await?;
//! let seq = publisher.publish("export-7", "progress", &serde_json::json!({"pct": 10})).await?;
//! publisher.finish("export-7", "done", &serde_json::json!({"url": "/files/7"})).await?;
//! # let _ = seq; Ok(()) }
//! ```

use std::sync::Arc;

use crate::connect::RedisPool as Pool;
use serde::Serialize;
use sluice_shared::event::DEFAULT_MAX_DATA_BYTES;
use sluice_shared::task::{validate_event_type, validate_idempotency_key};
use sluice_shared::{codec, Seq, TaskId, TaskIdError, TaskKeys, DEFAULT_SHARDS};

use crate::connect::{self, ConnectError};
use crate::error::{classify, ErrorClass, Unavailable};
use crate::function;

/// Default cap of a task's history (entries kept in its log).
pub const DEFAULT_LOG_CAP: u64 = 10_000;
/// Default cap of one feed, in entries (approximate: Redis trims whole
/// stream nodes, so a feed holds up to about 100 more). A feed is only for
/// live tailing; an edge that falls further behind re-reads the task logs.
/// With 64 feeds per shard, 16 shards hold at most about 1 024 × 356
/// entries.
pub const DEFAULT_FEED_CAP: u64 = 256;
/// Default expiry of an open task that receives no events.
pub const DEFAULT_IDLE_TTL_SECS: u64 = 24 * 3600;
/// Default retention of a closed task.
pub const DEFAULT_RETENTION_SECS: u64 = 24 * 3600;

/// Default time a publish waits for replicas (`wait_replicas` > 0).
pub const DEFAULT_WAIT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1000);

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid task id: {0}")]
    InvalidTask(TaskIdError),
    #[error("invalid event type: {0}")]
    InvalidType(TaskIdError),
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(TaskIdError),
    #[error("event data is {size} bytes encoded; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("task {0} is closed: it already received its final event")]
    Closed(String),
    #[error("event data cannot be encoded")]
    Encode(#[from] codec::CodecError),
    #[error("event data cannot be serialized as JSON")]
    Json(#[from] serde_json::Error),
    /// The publish function refused the event (`SLUICE_INVALID`,
    /// `SLUICE_TOO_LARGE`): the refusal is [`PublishError::refusal`].
    #[error("Redis refused the event: {}", refusal_of(.0))]
    Rejected(#[source] redis::RedisError),
    /// Redis could not be reached or did not answer: retry with the same
    /// idempotency key.
    #[error("Redis is unavailable")]
    Unavailable(#[source] Unavailable),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The event is stored on the primary (as `seq`), but fewer replicas
    /// than asked confirmed it in time: a failover could still lose it.
    /// Retry with the same idempotency key: nothing is appended twice, and
    /// the retry waits for the replicas again.
    #[error(
        "event {seq} is stored on the primary, but only {acked} of {wanted} replicas confirmed it in time"
    )]
    NotReplicated { seq: Seq, acked: u32, wanted: u32 },
}

impl PublishError {
    /// Redis could not serve the publish (as opposed to refusing it).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PublishError::Unavailable(_))
    }

    /// Why the publish function refused the event, for
    /// [`PublishError::Rejected`].
    pub fn refusal(&self) -> Option<&str> {
        match self {
            PublishError::Rejected(e) => Some(refusal_of(e)),
            _ => None,
        }
    }
}

fn refusal_of(e: &redis::RedisError) -> &str {
    e.detail().unwrap_or("invalid event")
}

impl From<Unavailable> for PublishError {
    fn from(e: Unavailable) -> Self {
        PublishError::Unavailable(e)
    }
}

impl From<redis::RedisError> for PublishError {
    fn from(e: redis::RedisError) -> Self {
        PublishError::Unavailable(e.into())
    }
}

impl From<crate::pool::PoolError> for PublishError {
    fn from(e: crate::pool::PoolError) -> Self {
        PublishError::Unavailable(e.into())
    }
}

/// Options of one publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// The last event of the task: afterwards the task is closed.
    pub is_final: bool,
    /// Retries with the same key (within the task's retention) append nothing
    /// and return the first seq.
    pub idempotency_key: Option<String>,
}

/// The answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: Seq,
    /// Publish time (ms since the epoch, Redis clock); for a duplicate, the
    /// task's last update.
    pub ts: i64,
    /// True when the idempotency key had been used: nothing was appended.
    pub duplicate: bool,
}

/// Deployment-wide settings a publisher must agree on with the edges.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub shards: u32,
    pub log_cap: u64,
    pub feed_cap: u64,
    pub idle_ttl_secs: u64,
    pub retention_secs: u64,
    pub max_data_bytes: usize,
    pub pool_size: usize,
    /// Replicas that must confirm each publish (`WAIT`) before it counts as
    /// done; 0 (the default) answers as soon as the primary stored it.
    pub wait_replicas: u32,
    /// How long a publish waits for those replicas.
    pub wait_timeout: std::time::Duration,
    /// Write each event to its shard's legacy feed (the first schema's
    /// one feed per shard) instead of its own feed: a migration step, while
    /// edges of the first schema still run (README "Migrating from 16
    /// feeds").
    pub legacy_feeds: bool,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            shards: DEFAULT_SHARDS,
            log_cap: DEFAULT_LOG_CAP,
            feed_cap: DEFAULT_FEED_CAP,
            idle_ttl_secs: DEFAULT_IDLE_TTL_SECS,
            retention_secs: DEFAULT_RETENTION_SECS,
            max_data_bytes: DEFAULT_MAX_DATA_BYTES,
            pool_size: connect::DEFAULT_POOL_SIZE,
            wait_replicas: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            legacy_feeds: false,
        }
    }
}

/// Publishes events. Cheap to clone (the pool and config are shared); no
/// connection per call.
#[derive(Clone)]
pub struct Publisher {
    pool: Pool,
    config: Arc<PublisherConfig>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects with the default deployment settings and loads the function.
    pub async fn connect(url: &str) -> Result<Self, PublishError> {
        Self::connect_with(url, PublisherConfig::default()).await
    }

    /// Connects with explicit settings and loads the function.
    pub async fn connect_with(url: &str, config: PublisherConfig) -> Result<Self, PublishError> {
        let pool = connect::pool(url, config.pool_size)?;
        let publisher = Self::from_pool(pool, config);
        publisher.load_function().await?;
        Ok(publisher)
    }

    /// Wraps an existing pool (the caller loads the function).
    pub fn from_pool(pool: Pool, config: PublisherConfig) -> Self {
        Publisher {
            pool,
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &PublisherConfig {
        &self.config
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// `FUNCTION LOAD REPLACE` of the `sluice` library.
    pub async fn load_function(&self) -> Result<(), PublishError> {
        let mut conn = self.pool.get().await?;
        function::load(&mut conn).await?;
        Ok(())
    }

    /// Publishes one event; returns its seq.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        task: &str,
        kind: &str,
        data: &T,
    ) -> Result<Seq, PublishError> {
        let p = self
            .publish_with(task, kind, data, PublishOptions::default())
            .await?;
        Ok(p.seq)
    }

    /// Publishes the final event of a task; returns its seq.
    pub async fn finish<T: Serialize + ?Sized>(
        &self,
        task: &str,
        kind: &str,
        data: &T,
    ) -> Result<Seq, PublishError> {
        let opts = PublishOptions {
            is_final: true,
            idempotency_key: None,
        };
        Ok(self.publish_with(task, kind, data, opts).await?.seq)
    }

    /// Publishes with explicit options (final, idempotency key).
    pub async fn publish_with<T: Serialize + ?Sized>(
        &self,
        task: &str,
        kind: &str,
        data: &T,
        opts: PublishOptions,
    ) -> Result<Published, PublishError> {
        let task = TaskId::parse(task).map_err(PublishError::InvalidTask)?;
        let value = serde_json::to_value(data)?;
        let bytes = codec::encode_data(&value)?;
        self.publish_encoded(&task, kind, &bytes, &opts).await
    }

    /// Publishes data that is already MessagePack-encoded.
    pub async fn publish_encoded(
        &self,
        task: &TaskId,
        kind: &str,
        data: &[u8],
        opts: &PublishOptions,
    ) -> Result<Published, PublishError> {
        let cmd = self.fcall(task, kind, data, opts)?;
        let (mut replies, acked) = self.send_group(&[(0, cmd)]).await?;
        match replies.pop() {
            Some(reply) => self.answer(task, reply, acked),
            None => Err(Unavailable::NoReply.into()),
        }
    }
}

impl Publisher {
    /// Validates one event and builds its `FCALL sluice_publish`.
    fn fcall(
        &self,
        task: &TaskId,
        kind: &str,
        data: &[u8],
        opts: &PublishOptions,
    ) -> Result<redis::Cmd, PublishError> {
        validate_event_type(kind).map_err(PublishError::InvalidType)?;
        if let Some(k) = &opts.idempotency_key {
            validate_idempotency_key(k).map_err(PublishError::InvalidIdempotencyKey)?;
        }
        if data.len() > self.config.max_data_bytes {
            return Err(PublishError::TooLarge {
                size: data.len(),
                max: self.config.max_data_bytes,
            });
        }
        let keys = if self.config.legacy_feeds {
            TaskKeys::legacy(task, self.config.shards)
        } else {
            TaskKeys::new(task, self.config.shards)
        };
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function::NAME)
            .arg(3)
            .arg(&keys.log)
            .arg(&keys.meta)
            .arg(&keys.feed)
            .arg(task.as_str())
            .arg(kind)
            .arg(data)
            .arg(if opts.is_final { "1" } else { "0" })
            .arg(opts.idempotency_key.as_deref().unwrap_or(""))
            .arg(self.config.log_cap)
            .arg(self.config.feed_cap)
            .arg(self.config.idle_ttl_secs)
            .arg(self.config.retention_secs)
            .arg(self.config.max_data_bytes);
        Ok(cmd)
    }

    /// Publishes a batch of MessagePack-encoded events in one round trip (a
    /// pipeline of `FCALL`s; on a cluster, one pipeline per shard, sent
    /// concurrently). Answers one result per event, in order. Events of one
    /// task are appended in batch order; an event that fails (closed task,
    /// invalid input) does not stop the others. With `wait_replicas`, each
    /// shard's pipeline ends with one `WAIT` covering all its events.
    ///
    /// For producers with many events in flight (a worker fleet behind one
    /// process, a bridge from another queue): far fewer round trips and
    /// syscalls than one `publish` per event.
    pub async fn publish_batch(
        &self,
        events: &[Outgoing<'_>],
    ) -> Vec<Result<Published, PublishError>> {
        let mut out: Vec<Option<Result<Published, PublishError>>> =
            (0..events.len()).map(|_| None).collect();
        // Valid events in one pipeline on one Redis; on a cluster, one per
        // shard (every key of a shard shares a slot, so a shard's pipeline
        // goes to one primary).
        let cluster = self.pool.is_cluster();
        let mut groups: std::collections::BTreeMap<u32, Vec<(usize, redis::Cmd)>> =
            std::collections::BTreeMap::new();
        for (i, ev) in events.iter().enumerate() {
            match self.fcall(ev.task, ev.kind, ev.data, &ev.opts) {
                Ok(cmd) => groups
                    .entry(if cluster {
                        sluice_shared::shard_of(ev.task.as_str(), self.config.shards)
                    } else {
                        0
                    })
                    .or_default()
                    .push((i, cmd)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let sends = groups.into_values().map(|group| async move {
            let answers = self.send_group(&group).await;
            (group, answers)
        });
        for (group, answers) in futures_util::future::join_all(sends).await {
            match answers {
                Ok((replies, acked)) => {
                    for ((i, _), reply) in group.iter().zip(replies) {
                        out[*i] = Some(self.answer(events[*i].task, reply, acked));
                    }
                }
                Err(e) => {
                    for (i, _) in &group {
                        out[*i] = Some(Err(e.clone().into()));
                    }
                }
            }
        }
        // An event without an answer got no reply in its pipeline.
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Unavailable::NoReply.into())))
            .collect()
    }

    /// The answer to one event from its FCALL reply and the replicas that
    /// confirmed it.
    fn answer(
        &self,
        task: &TaskId,
        reply: redis::RedisResult<(u64, i64, u8)>,
        acked: u32,
    ) -> Result<Published, PublishError> {
        let wanted = self.config.wait_replicas;
        match reply {
            Ok((seq, _, _)) if acked < wanted => {
                Err(PublishError::NotReplicated { seq, acked, wanted })
            }
            Ok((seq, ts, dup)) => Ok(Published {
                seq,
                ts,
                duplicate: dup == 1,
            }),
            Err(e) => Err(refused(task, e)),
        }
    }

    /// One pipeline (one event, a batch, or a cluster shard's part of it):
    /// every FCALL's reply (errors in place) and the replicas that confirmed
    /// them (when `wait_replicas` > 0: a `WAIT` on the same connection, so
    /// it covers these writes). Bounded in time: a caller must get an answer
    /// (and retry with its idempotency key) rather than wait without end.
    async fn send_group(
        &self,
        group: &[(usize, redis::Cmd)],
    ) -> Result<(Vec<redis::RedisResult<(u64, i64, u8)>>, u32), Unavailable> {
        let wanted = self.config.wait_replicas;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (_, cmd) in group {
            pipe.add_command(cmd.clone());
        }
        if wanted > 0 {
            pipe.cmd("WAIT")
                .arg(wanted)
                .arg(self.config.wait_timeout.as_millis() as u64);
        }
        let call = async {
            let mut conn = self.pool.get().await?;
            let mut replies: Vec<redis::RedisResult<redis::Value>> =
                pipe.query_async(&mut conn).await?;
            if replies
                .iter()
                .any(|r| matches!(r, Err(e) if classify(e) == ErrorClass::FunctionMissing))
            {
                // Redis lost its functions: none of these ran. Load, resend.
                tracing::warn!("sluice_publish missing on Redis; loading it again");
                function::load(&mut conn).await?;
                replies = pipe.query_async(&mut conn).await?;
            }
            Ok::<_, Unavailable>(replies)
        };
        let limit = connect::DEFAULT_RESPONSE_TIMEOUT * 2 + self.config.wait_timeout;
        let mut replies = match tokio::time::timeout(limit, call).await {
            Ok(r) => r?,
            Err(_) => return Err(Unavailable::TimedOut),
        };
        let acked = if wanted > 0 {
            match replies.pop() {
                Some(Ok(v)) => redis::from_redis_value::<u32>(v).unwrap_or(0),
                _ => 0,
            }
        } else {
            0
        };
        let replies = replies
            .into_iter()
            .map(|r| {
                r.and_then(|v| redis::from_redis_value::<(u64, i64, u8)>(v).map_err(Into::into))
            })
            .collect();
        Ok((replies, acked))
    }
}

/// One event of [`Publisher::publish_batch`].
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub task: &'a TaskId,
    pub kind: &'a str,
    /// MessagePack-encoded data (`sluice_shared::codec::encode_data`).
    pub data: &'a [u8],
    pub opts: PublishOptions,
}

/// A publish function's error reply as a [`PublishError`].
fn refused(task: &TaskId, e: redis::RedisError) -> PublishError {
    match classify(&e) {
        ErrorClass::TaskClosed => PublishError::Closed(task.to_string()),
        ErrorClass::EventRefused => PublishError::Rejected(e),
        _ => PublishError::Unavailable(e.into()),
    }
}
