//! The wire encoding of events: each event is encoded once per node, as an
//! SSE frame whose `data:` line is the JSON envelope, in one allocation
//! (the envelope is a slice of the frame), and every transport writes those
//! bytes as they are.

use std::sync::Arc;

use bytes::Bytes;
use sluice_shared::event::{format_ts, Envelope, Snapshot, RESET_TYPE};
use sluice_shared::{Seq, StoredEvent, TaskId};

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
    /// Fingerprint of the envelope (0 for resets and snapshots): lets a
    /// subscription check that the event it delivered last is still the one
    /// the store holds under that seq (it is not after Redis lost
    /// acknowledged writes).
    pub digest: u64,
    /// `id: <seq>\nevent: <type>\ndata: <json>\n\n`
    pub sse: Bytes,
    /// The JSON envelope (one WebSocket text frame, one element of a
    /// history response). For events and snapshots, a slice of `sse`: the
    /// event is held once, not twice.
    pub json: Bytes,
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
    /// resume point, encoded from the envelope the store gave. That envelope
    /// is rebuilt from the task meta rather than read from the log, so it
    /// carries no fingerprint (digest 0): a later lost-writes check must not
    /// compare it with the log's bytes.
    pub fn from_snapshot(latest: &Envelope) -> Arc<Event> {
        // `Envelope` serializes with the same fields, in the same order, as
        // `StoredEvent::envelope_json`.
        let json = serde_json::to_vec(latest).unwrap_or_else(|_| b"{}".to_vec());
        let (sse, json) = framed(latest.seq, &latest.kind, &json);
        Arc::new(Event {
            seq: latest.seq,
            is_final: latest.is_final,
            is_reset: false,
            ts: 0,
            digest: 0,
            sse,
            json,
        })
    }

    /// Encodes once: the JSON envelope is the `data:` of the SSE frame.
    fn encode(ev: &StoredEvent, ts: i64) -> Arc<Event> {
        let json = ev.envelope_json();
        let digest = digest(&json);
        // `json` (whose capacity may be twice its length) is dropped here;
        // the frame is allocated at its exact size.
        let (sse, json) = framed(ev.seq, &ev.kind, &json);
        Arc::new(Event {
            seq: ev.seq,
            is_final: ev.is_final,
            is_reset: false,
            ts,
            digest,
            sse,
            json,
        })
    }

    /// The `sluice.reset` frame: SSE data is the snapshot; over WebSocket an
    /// envelope of type `sluice.reset` whose data is the snapshot. `snapshot`
    /// is `None` when the task is unknown (expired entirely).
    pub fn reset(task: &TaskId, snapshot: Option<&Snapshot>) -> Arc<Event> {
        let (seq, snap_json) = match snapshot {
            Some(s) => (
                s.seq,
                serde_json::to_value(s).unwrap_or(serde_json::Value::Null),
            ),
            None => (
                0,
                serde_json::json!({"task": task.as_str(), "seq": 0, "state": "unknown", "latest": null}),
            ),
        };
        let data = serde_json::to_vec(&snap_json).unwrap_or_default();
        let envelope = serde_json::json!({
            "task": task.as_str(),
            "seq": seq,
            "type": RESET_TYPE,
            "data": snap_json,
            "ts": format_ts(chrono::Utc::now().timestamp_millis()),
            "final": false,
        });
        let json = serde_json::to_vec(&envelope).unwrap_or_default();
        Arc::new(Event {
            seq,
            is_final: false,
            is_reset: true,
            ts: 0,
            digest: 0,
            sse: sse_frame(seq, RESET_TYPE, &data),
            json: Bytes::from(json),
        })
    }
}

/// A 64-bit fingerprint of an encoded envelope (FNV-1a; not a security
/// property, only "is this the same event").
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// Builds an SSE frame, allocated at its exact size. `data` is compact
/// JSON (no newlines), so one `data:` line carries it.
pub fn sse_frame(seq: Seq, kind: &str, data: &[u8]) -> Bytes {
    let seq = seq.to_string();
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
    b.extend_from_slice(b"\nevent: ");
    b.extend_from_slice(kind.as_bytes());
    b.extend_from_slice(b"\ndata: ");
    b.extend_from_slice(data);
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

/// The SSE frame of `json` and `json` itself as a slice of that frame.
fn framed(seq: Seq, kind: &str, json: &[u8]) -> (Bytes, Bytes) {
    let sse = sse_frame(seq, kind, json);
    let end = sse.len() - b"\n\n".len();
    let json = sse.slice(end - json.len()..end);
    (sse, json)
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
        }
    }

    #[test]
    fn sse_frame_layout() {
        let f = Event::from_stored(&ev(7));
        let s = std::str::from_utf8(&f.sse).expect("utf8");
        assert!(
            s.starts_with("id: 7\nevent: k\ndata: {\"task\":\"t\",\"seq\":7,"),
            "{s}"
        );
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
            "id: 1234\nevent: k\ndata: \n\n".len() + f.json.len()
        );
    }

    #[test]
    fn a_snapshot_is_encoded_as_its_stored_event_without_fingerprint() {
        let stored = ev(3);
        let from_log = Event::from_history(&stored);
        let snap = Event::from_snapshot(&stored.envelope());
        assert_eq!(snap.json, from_log.json);
        assert_eq!(snap.sse, from_log.sse);
        assert_eq!((snap.seq, snap.ts, snap.digest), (3, 0, 0));
        assert_ne!(from_log.digest, 0);
        assert_eq!(Event::from_stored(&stored).ts, stored.ts);
    }
}
