//! The wire encoding of events: each event is encoded once per node, as an
//! SSE frame whose `data:` line is the JSON envelope, in one allocation
//! (the envelope is a slice of the frame), and every transport writes those
//! bytes as they are.

use std::sync::Arc;

use bytes::Bytes;
use sluice_shared::event::{format_ts, Snapshot, RESET_TYPE};
use sluice_shared::position::{Position, Tag};
use sluice_shared::{Seq, StoredEvent, TaskId};

use crate::ws_frame::FrameHead;

/// One event, encoded once for every transport.
#[derive(Debug)]
pub struct Event {
    pub seq: Seq,
    pub is_final: bool,
    /// A `sluice.reset` frame (the data is a snapshot).
    pub is_reset: bool,
    /// Publish time (ms since the epoch) of a live event; 0 for history,
    /// snapshots and resets, which the delivery-latency histogram skips.
    pub ts: i64,
    /// What verifies this event's position ([`sluice_shared::position`]):
    /// lets a subscription check that the event it delivered last is still
    /// the one the store holds under that seq (it is not after Redis lost
    /// acknowledged writes). `None` only for the reset of an unknown task.
    pub tag: Option<Tag>,
    /// `id: <seq>.<tag>\nevent: <type>\ndata: <json>\n\n`
    pub sse: Bytes,
    /// Where the frame goes on after its `id:` line (`event: ...`): a
    /// stream of many tasks writes its own id (the cursor), then this.
    body_at: usize,
    /// The JSON envelope (one WebSocket text frame, one element of a
    /// history response). For events and snapshots, a slice of `sse`: the
    /// event is held once, not twice.
    pub json: Bytes,
    /// The header of the WebSocket text frame of `json`: a session writes
    /// it and `json` as they are.
    pub ws_head: FrameHead,
}

impl Event {
    /// A live event from the feed.
    pub fn from_stored(ev: &StoredEvent) -> Arc<Event> {
        Event::encode(ev, ev.ts)
    }

    /// An event read back from history: same bytes, but not counted in the
    /// live delivery-latency histogram (`ts` 0).
    pub fn from_history(ev: &StoredEvent) -> Arc<Event> {
        Event::encode(ev, 0)
    }

    /// The latest event of a snapshot, sent first to a subscriber with no
    /// resume point, encoded from the envelope the store gave (its position
    /// is verified like any other: the tag is computed from fields every
    /// copy of the event carries).
    pub fn from_snapshot(snapshot: &Snapshot) -> Arc<Event> {
        let latest = &snapshot.latest;
        let pos = snapshot.position();
        // `Envelope` serializes with the same fields, in the same order, as
        // `StoredEvent::envelope_json`.
        let json = serde_json::to_vec(latest).unwrap_or_else(|_| b"{}".to_vec());
        let (sse, json, body_at) = framed(pos, &latest.kind, &json);
        Arc::new(Event {
            seq: latest.seq,
            is_final: latest.is_final,
            is_reset: false,
            ts: 0,
            tag: pos.tag,
            sse,
            ws_head: FrameHead::text(json.len()),
            json,
            body_at,
        })
    }

    /// The position a client stands at once it got this event.
    pub fn position(&self) -> Position {
        Position {
            seq: self.seq,
            tag: self.tag,
        }
    }

    /// The frame after its `id:` line: `event: <type>\ndata: <json>\n\n`.
    pub fn sse_body(&self) -> &[u8] {
        &self.sse[self.body_at..]
    }

    /// Encodes once: the JSON envelope is the `data:` of the SSE frame.
    fn encode(ev: &StoredEvent, ts: i64) -> Arc<Event> {
        let json = ev.envelope_json();
        let pos = ev.position();
        // `json` (whose capacity may be twice its length) is dropped here;
        // the frame is allocated at its exact size.
        let (sse, json, body_at) = framed(pos, &ev.kind, &json);
        Arc::new(Event {
            seq: ev.seq,
            is_final: ev.is_final,
            is_reset: false,
            ts,
            tag: pos.tag,
            sse,
            ws_head: FrameHead::text(json.len()),
            json,
            body_at,
        })
    }

    /// The `sluice.reset` frame: SSE data is the snapshot; over WebSocket an
    /// envelope of type `sluice.reset` whose data is the snapshot. `snapshot`
    /// is `None` when the task is unknown (expired entirely).
    /// Its position is the snapshot's (the client is at the task's latest
    /// event once it has the snapshot).
    pub fn reset(task: &TaskId, snapshot: Option<&Snapshot>) -> Arc<Event> {
        let (pos, snap_json) = match snapshot {
            Some(s) => (
                s.position(),
                serde_json::to_value(s).unwrap_or(serde_json::Value::Null),
            ),
            None => (
                Position::bare(0),
                serde_json::json!({"task": task.as_str(), "seq": 0, "state": "unknown", "latest": null}),
            ),
        };
        let seq = pos.seq;
        let data = serde_json::to_vec(&snap_json).unwrap_or_default();
        let envelope = serde_json::json!({
            "task": task.as_str(),
            "seq": seq,
            "type": RESET_TYPE,
            "data": snap_json,
            "ts": format_ts(chrono::Utc::now().timestamp_millis()),
            "final": false,
            "pos": pos.to_string(),
        });
        let json = serde_json::to_vec(&envelope).unwrap_or_default();
        let (sse, body_at) = sse_frame(pos, RESET_TYPE, &data);
        Arc::new(Event {
            seq,
            is_final: false,
            is_reset: true,
            ts: 0,
            tag: pos.tag,
            sse,
            ws_head: FrameHead::text(json.len()),
            json: Bytes::from(json),
            body_at,
        })
    }
}

/// Builds an SSE frame, allocated at its exact size, and where it goes on
/// after its `id:` line. `data` is compact JSON (no newlines), so one
/// `data:` line carries it.
pub fn sse_frame(pos: Position, kind: &str, data: &[u8]) -> (Bytes, usize) {
    let seq = pos.to_string();
    let len = b"id: ".len()
        + seq.len()
        + b"\nevent: ".len()
        + kind.len()
        + b"\ndata: ".len()
        + data.len()
        + b"\n\n".len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(b"id: ");
    b.extend_from_slice(seq.as_bytes());
    b.push(b'\n');
    let body_at = b.len();
    b.extend_from_slice(b"event: ");
    b.extend_from_slice(kind.as_bytes());
    b.extend_from_slice(b"\ndata: ");
    b.extend_from_slice(data);
    b.extend_from_slice(b"\n\n");
    (Bytes::from(b), body_at)
}

/// The SSE frame of `json`, `json` itself as a slice of that frame, and
/// where the frame goes on after its `id:` line.
fn framed(pos: Position, kind: &str, json: &[u8]) -> (Bytes, Bytes, usize) {
    let (sse, body_at) = sse_frame(pos, kind, json);
    let end = sse.len() - b"\n\n".len();
    let json = sse.slice(end - json.len()..end);
    (sse, json, body_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: Seq) -> StoredEvent {
        StoredEvent {
            task: "t".into(),
            seq,
            kind: "k".into(),
            data: serde_json::json!({"b": [1, {"c": null}], "a": "x"}),
            ts: 1_795_410_000_123,
            is_final: false,
            epoch: 0,
        }
    }

    #[test]
    fn sse_frame_layout() {
        let stored = ev(7);
        let f = Event::from_stored(&stored);
        let s = std::str::from_utf8(&f.sse).expect("utf8");
        let id = format!("id: {}\n", stored.position());
        assert!(id.starts_with("id: 7.") && id.len() == "id: 7.AbCd3w\n".len());
        assert!(
            s.starts_with(&format!("{id}event: k\ndata: {{\"task\":\"t\",\"seq\":7,")),
            "{s}"
        );
        assert_eq!(f.sse_body(), &f.sse[id.len()..]);
        assert!(s.ends_with("}\n\n"));
    }

    #[test]
    fn the_envelope_is_the_data_line_of_the_frame_held_once() {
        let stored = ev(1234);
        let f = Event::from_history(&stored);
        assert_eq!(&f.json[..], &stored.envelope_json()[..]);
        let data = f.sse.len() - 2 - f.json.len();
        assert_eq!(&f.sse[data..f.sse.len() - 2], &f.json[..]);
        // One allocation: the envelope points into the frame.
        assert_eq!(f.json.as_ptr(), f.sse[data..].as_ptr());
        assert_eq!(
            f.sse.len(),
            "id: 1234.AbCd3w\nevent: k\ndata: \n\n".len() + f.json.len()
        );
    }

    #[test]
    fn a_snapshot_is_encoded_as_its_stored_event_with_the_same_position() {
        let stored = ev(3);
        let from_log = Event::from_history(&stored);
        let snapshot = Snapshot {
            task: "t".into(),
            seq: 3,
            state: sluice_shared::event::TaskState::Open,
            latest: stored.envelope(),
        };
        let snap = Event::from_snapshot(&snapshot);
        assert_eq!(snap.json, from_log.json);
        assert_eq!(snap.sse, from_log.sse);
        assert_eq!((snap.seq, snap.ts), (3, 0));
        assert_eq!(snap.position(), from_log.position());
        assert!(snap.tag.is_some());
        assert_eq!(Event::from_stored(&stored).ts, stored.ts);
        let reset = Event::reset(&TaskId::parse("t").expect("id"), Some(&snapshot));
        assert_eq!(reset.position(), from_log.position());
        assert!(reset
            .sse
            .starts_with(format!("id: {}\n", from_log.position()).as_bytes()));
    }
}
