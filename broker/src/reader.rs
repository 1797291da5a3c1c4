//! Reads of a task's snapshot and history, shared by the CLI and the edge's
//! Redis store. Entries that do not decode are reported, never panicked on.

use redis::aio::ConnectionLike;
use redis::Value;
use sluice_shared::codec::{self, CodecError};
use sluice_shared::event::{Snapshot, TaskState};
use sluice_shared::{Seq, StoredEvent, TaskId, TaskKeys};

use crate::resp::parse_entries;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("Redis is unavailable")]
    Redis(#[from] redis::RedisError),
    #[error("stored data of task {task} is corrupt: {what}")]
    Corrupt { task: String, what: String },
}

impl ReadError {
    fn corrupt(task: &TaskId, what: impl std::fmt::Display) -> Self {
        ReadError::Corrupt {
            task: task.to_string(),
            what: what.to_string(),
        }
    }
}

/// The task's meta as a snapshot; `None` when the task is unknown.
pub async fn snapshot<C: ConnectionLike + Send>(
    conn: &mut C,
    task: &TaskId,
    shards: u32,
) -> Result<Option<Snapshot>, ReadError> {
    let keys = TaskKeys::new(task, shards);
    let (seq, state, latest): (Option<u64>, Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
        .arg(&keys.meta)
        .arg("seq")
        .arg("state")
        .arg("latest")
        .query_async(conn)
        .await?;
    let (Some(seq), Some(latest)) = (seq, latest) else {
        return Ok(None);
    };
    let latest = decode_for(task, &latest).map_err(|e| ReadError::corrupt(task, e))?;
    let state = match state.as_deref() {
        Some("closed") => TaskState::Closed,
        _ => TaskState::Open,
    };
    Ok(Some(Snapshot {
        task: task.to_string(),
        seq,
        state,
        latest: latest.envelope(),
    }))
}

/// One page of history: the retained events with seq > `after`, oldest
/// first, at most `limit`. An entry that does not decode ends the page with
/// [`ReadError::Corrupt`].
pub async fn history<C: ConnectionLike + Send>(
    conn: &mut C,
    task: &TaskId,
    shards: u32,
    after: Seq,
    limit: usize,
) -> Result<Vec<StoredEvent>, ReadError> {
    let keys = TaskKeys::new(task, shards);
    let Some(start) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let reply: Value = redis::cmd("XRANGE")
        .arg(&keys.log)
        .arg(format!("{start}-0"))
        .arg("+")
        .arg("COUNT")
        .arg(limit.max(1))
        .query_async(conn)
        .await?;
    let entries = parse_entries(&reply).map_err(|e| ReadError::corrupt(task, e))?;
    let mut out = Vec::with_capacity(entries.len());
    for (id, fields) in entries {
        let decoded = match fields.get("e") {
            Some(bytes) => decode_for(task, bytes)
                .map_err(|e| e.to_string())
                .and_then(|ev| {
                    if entry_seq(&id) == Some(ev.seq) {
                        Ok(ev)
                    } else {
                        Err(format!("entry {id} holds seq {}", ev.seq))
                    }
                }),
            None => Err(format!("entry {id} has no event")),
        };
        match decoded {
            Ok(ev) => out.push(ev),
            // Return the good prefix; the next read starts at the bad entry
            // and reports it.
            Err(what) if !out.is_empty() => {
                tracing::warn!(task = %task, entry = %id, cause = %what, "corrupt log entry");
                break;
            }
            Err(what) => return Err(ReadError::corrupt(task, what)),
        }
    }
    Ok(out)
}

/// Decodes a stored event and checks it belongs to `task`.
pub fn decode_for(task: &TaskId, bytes: &[u8]) -> Result<StoredEvent, CodecError> {
    let ev = codec::decode_event(bytes)?;
    if ev.task != task.as_str() {
        return Err(CodecError::WrongTask {
            expected: task.to_string(),
            found: ev.task,
        });
    }
    Ok(ev)
}

/// The seq of a log entry id `<seq>-0`.
pub fn entry_seq(id: &str) -> Option<Seq> {
    id.split_once('-').and_then(|(s, _)| s.parse().ok())
}
