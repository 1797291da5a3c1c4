//! Events as stored in Redis ([`StoredEvent`], MessagePack) and as sent to
//! clients ([`Envelope`], JSON).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::position::{Position, Tag};

pub use crate::task::validate_event_type as validate_type;

/// Per-task sequence number: 1, 2, 3 ... with no gaps. `0` means "before the
/// first event".
pub type Seq = u64;

/// Default cap on the MessagePack-encoded `data` of one event.
pub const DEFAULT_MAX_DATA_BYTES: usize = 64 * 1024;

/// Type of the frame a subscriber gets when the events after its resume point
/// are no longer retained; its data is the task's snapshot.
pub const RESET_TYPE: &str = "sluice.reset";

/// One event as stored in a task log, the shard feed and the task meta: a
/// MessagePack map with exactly these keys (the Redis function assembles it
/// byte by byte, so other-language producers never build it themselves).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub task: String,
    pub seq: Seq,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
    /// Publish time, milliseconds since the Unix epoch (Redis server clock).
    pub ts: i64,
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The task's epoch: drawn by the publish function when it creates the
    /// task's meta (0 for events stored before epochs existed). A task
    /// recreated after Redis lost its data has another one.
    #[serde(default)]
    pub epoch: u64,
}

/// The JSON envelope every client receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub task: String,
    pub seq: Seq,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T05:00:00.123Z`.
    pub ts: String,
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The verified position of this event (`<seq>.<tag>`,
    /// [`crate::position`]): what a client resumes from.
    #[serde(default)]
    pub pos: String,
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    task: &'a str,
    seq: Seq,
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a Value,
    ts: String,
    #[serde(rename = "final")]
    is_final: bool,
    pos: String,
}

/// Formats a millisecond Unix timestamp as RFC 3339 UTC with milliseconds.
pub fn format_ts(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

impl StoredEvent {
    /// The client-facing envelope.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            task: self.task.clone(),
            seq: self.seq,
            kind: self.kind.clone(),
            data: self.data.clone(),
            ts: format_ts(self.ts),
            is_final: self.is_final,
            pos: self.position().to_string(),
        }
    }

    /// The verified position of this event.
    pub fn position(&self) -> Position {
        Position {
            seq: self.seq,
            tag: Some(self.tag()),
        }
    }

    /// What verifies this event's position: computed from fields every
    /// copy of the event carries, the same on every node.
    pub fn tag(&self) -> Tag {
        Tag::from_parts(self.epoch, self.seq, self.ts, &self.kind, self.is_final)
    }

    /// The envelope as compact JSON bytes (done once per event per node).
    pub fn envelope_json(&self) -> Vec<u8> {
        let r = EnvelopeRef {
            task: &self.task,
            seq: self.seq,
            kind: &self.kind,
            data: &self.data,
            ts: format_ts(self.ts),
            is_final: self.is_final,
            pos: self.position().to_string(),
        };
        // Serializing a struct of strings, numbers and a `Value` to a Vec
        // cannot fail (no map with non-string keys is possible).
        serde_json::to_vec(&r).unwrap_or_else(|_| b"{}".to_vec())
    }
}

/// Open or closed (after the final event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Open,
    Closed,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Open => "open",
            TaskState::Closed => "closed",
        }
    }
}

/// The latest event of a task with its state: the body of
/// `GET /v1/tasks/{task}` and the data of a `sluice.reset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub task: String,
    pub seq: Seq,
    pub state: TaskState,
    pub latest: Envelope,
}

impl Snapshot {
    /// The verified position of the latest event (a bare seq if the
    /// envelope carries none).
    pub fn position(&self) -> Position {
        Position::parse(&self.latest.pos).unwrap_or(Position::bare(self.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> StoredEvent {
        StoredEvent {
            task: "job-42".into(),
            seq: 17,
            kind: "progress".into(),
            data: serde_json::json!({"pct": 40}),
            ts: 1_795_410_000_123,
            is_final: false,
            epoch: 0,
        }
    }

    #[test]
    fn envelope_json_matches_the_spec_shape() {
        let mut v: Value = serde_json::from_slice(&ev().envelope_json()).expect("json");
        let env: Envelope = serde_json::from_value(v.clone()).expect("envelope");
        assert_eq!(env, ev().envelope());
        let pos = v
            .as_object_mut()
            .and_then(|o| o.remove("pos"))
            .expect("pos");
        assert_eq!(pos.as_str(), Some(ev().position().to_string().as_str()));
        assert!(pos.as_str().is_some_and(|p| p.starts_with("17.")), "{pos}");
        assert_eq!(
            v,
            serde_json::json!({"task":"job-42","seq":17,"type":"progress","data":{"pct":40},
                "ts":"2026-11-23T05:00:00.123Z","final":false})
        );
    }
}
