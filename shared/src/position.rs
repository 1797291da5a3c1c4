//! Positions that can tell two histories apart.
//!
//! A bare seq cannot: after Redis lost acknowledged writes (wiped, restarted
//! without persistence, a failover that lost the primary's tail) the same
//! seqs are given to new events, and a client resuming "after 5" would
//! silently continue in the new history. Every position Sluice hands out is
//! therefore a seq with a [`Tag`]: one byte of the task's *epoch* (a number
//! the publish function draws when it creates the task's meta, so a task
//! recreated after its data was lost has another one) and 24 bits of the
//! *fingerprint* of the event at that seq (epoch, seq, publish time, type,
//! final: fields every copy of the event carries, whatever encoder wrote it,
//! so every node and every snapshot computes the same fingerprint).
//!
//! Text forms:
//! - a task position: `<seq>.<tag>` (the tag is 6 characters of base64url),
//!   e.g. `17.AbCd3w`; a bare `<seq>` is accepted as an unverified position;
//! - a [`Cursor`] (many tasks on one stream): `m` followed by base64url of
//!   a version byte, a hash of the task set and each task's position.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::keys::fnv1a32;

/// A per-task sequence number (the same as [`crate::event::Seq`]).
type Seq = u64;

/// The verification part of a position: 8 bits of the task's epoch, 24
/// bits of the event's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(u32);

impl Tag {
    /// The tag of the event with these fields (the same on every node:
    /// `StoredEvent::tag`).
    pub fn from_parts(epoch: u64, seq: Seq, ts: i64, kind: &str, is_final: bool) -> Tag {
        let mut h = Fnv64::new();
        h.write(&epoch.to_le_bytes());
        h.write(&seq.to_le_bytes());
        h.write(&ts.to_le_bytes());
        h.write(&[u8::from(is_final)]);
        h.write(kind.as_bytes());
        let fp = h.finish();
        let fp24 = ((fp ^ (fp >> 32)) & 0x00ff_ffff) as u32;
        Tag(u32::from(epoch_byte(epoch)) << 24 | fp24)
    }

    /// The epoch's 8 bits.
    pub fn epoch(self) -> u8 {
        (self.0 >> 24) as u8
    }

    pub fn to_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }

    pub fn from_bytes(b: [u8; 4]) -> Tag {
        Tag(u32::from_be_bytes(b))
    }
}

/// The byte of an epoch a tag carries (a hash: epochs are timestamps,
/// whose low bits alone would do, but this costs nothing).
pub fn epoch_byte(epoch: u64) -> u8 {
    let mut h = Fnv64::new();
    h.write(&epoch.to_le_bytes());
    let v = h.finish();
    (v ^ (v >> 8) ^ (v >> 16) ^ (v >> 32)) as u8
}

/// Where a client stands in one task: the seq of the last event it got
/// and, unless the position came from a bare seq, the tag that verifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub seq: Seq,
    pub tag: Option<Tag>,
}

/// Why a position or cursor given by a client was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("must be a seq (17) or a position (17.AbCd3w)")]
    Malformed,
    #[error("is out of range")]
    OutOfRange,
    #[error("is not a cursor of this stream (it was made for another set of tasks)")]
    OtherTasks,
    #[error("is a cursor of a version this node does not read")]
    Version,
}

impl Position {
    /// An unverified position (a bare seq, or seq 0: before the first event).
    pub fn bare(seq: Seq) -> Position {
        Position { seq, tag: None }
    }

    /// Parses `17` or `17.AbCd3w`.
    pub fn parse(raw: &str) -> Result<Position, PositionError> {
        let raw = raw.trim();
        let (seq, tag) = match raw.split_once('.') {
            Some((seq, tag)) => (seq, Some(tag)),
            None => (raw, None),
        };
        if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PositionError::Malformed);
        }
        let seq: Seq = seq.parse().map_err(|_| PositionError::OutOfRange)?;
        let tag = match tag {
            None => None,
            Some(t) => {
                let mut b = [0u8; 4];
                match URL_SAFE_NO_PAD.decode_slice(t.as_bytes(), &mut b) {
                    Ok(4) if t.len() == 6 => Some(Tag::from_bytes(b)),
                    _ => return Err(PositionError::Malformed),
                }
            }
        };
        Ok(Position { seq, tag })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.tag {
            Some(tag) => write!(f, "{}.{}", self.seq, URL_SAFE_NO_PAD.encode(tag.to_bytes())),
            None => write!(f, "{}", self.seq),
        }
    }
}

/// Version byte of the cursor encoding.
const CURSOR_V1: u8 = 1;

/// Every task's position on a stream of many tasks: the `id:` of each of
/// its frames, so a client that reconnects with it (`Last-Event-ID`, or
/// `?after=`) resumes every task exactly.
///
/// Bytes (base64url, after an `m`): version (1), FNV-1a 32 of the task set
/// (4, so a cursor is never applied to another stream's tasks), then per
/// task, in the stream's task order, a LEB128 varint `v`: 0 when nothing
/// is known yet for the task (it starts from its snapshot), else `v - 1 =
/// seq << 1 | tagged`, followed by the 4 tag bytes when tagged. About
/// `5 + 7 n` bytes for `n` tasks past seq 8 191 (`4/3` of that in
/// characters): 100 tasks, about 940 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub positions: Vec<Option<Position>>,
}

impl Cursor {
    /// The hash of a task set (in the stream's order).
    pub fn set_hash<'a>(tasks: impl IntoIterator<Item = &'a str>) -> u32 {
        let mut joined = Vec::new();
        for t in tasks {
            joined.extend_from_slice(t.as_bytes());
            joined.push(b'\n');
        }
        fnv1a32(&joined)
    }

    /// Encodes into `out` (cleared first).
    pub fn encode_into(set_hash: u32, positions: &[Option<Position>], out: &mut String) {
        let mut b = Vec::with_capacity(5 + positions.len() * 7);
        b.push(CURSOR_V1);
        b.extend_from_slice(&set_hash.to_be_bytes());
        for p in positions {
            match p {
                None => b.push(0),
                Some(p) => {
                    let v = (u128::from(p.seq) << 1 | u128::from(p.tag.is_some())) + 1;
                    varint(&mut b, v);
                    if let Some(tag) = p.tag {
                        b.extend_from_slice(&tag.to_bytes());
                    }
                }
            }
        }
        out.clear();
        out.push('m');
        URL_SAFE_NO_PAD.encode_string(&b, out);
    }

    /// Decodes a cursor made for `tasks` tasks whose set hashes to `set_hash`.
    pub fn parse(raw: &str, set_hash: u32, tasks: usize) -> Result<Cursor, PositionError> {
        let body = raw
            .trim()
            .strip_prefix('m')
            .ok_or(PositionError::Malformed)?;
        if body.len() > 4 * (5 + tasks * 16) {
            return Err(PositionError::Malformed);
        }
        let b = URL_SAFE_NO_PAD
            .decode(body.as_bytes())
            .map_err(|_| PositionError::Malformed)?;
        let (&version, rest) = b.split_first().ok_or(PositionError::Malformed)?;
        if version != CURSOR_V1 {
            return Err(PositionError::Version);
        }
        let (hash, mut rest) = rest.split_at_checked(4).ok_or(PositionError::Malformed)?;
        if u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) != set_hash {
            return Err(PositionError::OtherTasks);
        }
        let mut positions = Vec::with_capacity(tasks);
        for _ in 0..tasks {
            let v = read_varint(&mut rest)?;
            if v == 0 {
                positions.push(None);
                continue;
            }
            let v = v - 1;
            let seq = Seq::try_from(v >> 1).map_err(|_| PositionError::OutOfRange)?;
            let tag = if v & 1 == 1 {
                let (t, r) = rest.split_at_checked(4).ok_or(PositionError::Malformed)?;
                rest = r;
                Some(Tag::from_bytes([t[0], t[1], t[2], t[3]]))
            } else {
                None
            };
            positions.push(Some(Position { seq, tag }));
        }
        if !rest.is_empty() {
            return Err(PositionError::OtherTasks);
        }
        Ok(Cursor { positions })
    }
}

fn varint(out: &mut Vec<u8>, mut v: u128) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_varint(b: &mut &[u8]) -> Result<u128, PositionError> {
    let mut v: u128 = 0;
    for shift in (0..).step_by(7).take(11) {
        let (&byte, rest) = b.split_first().ok_or(PositionError::Malformed)?;
        *b = rest;
        v |= u128::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(PositionError::Malformed)
}

/// FNV-1a, 64 bits (not a security property: "is this the same event").
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tag and position of an event of type `progress`.
    fn tag(epoch: u64, seq: Seq, ts: i64) -> Tag {
        Tag::from_parts(epoch, seq, ts, "progress", false)
    }

    fn pos(epoch: u64, seq: Seq, ts: i64) -> Position {
        Position {
            seq,
            tag: Some(tag(epoch, seq, ts)),
        }
    }

    #[test]
    fn positions_round_trip_and_bare_seqs_parse() {
        let p = pos(1_795_000_000_123_456, 17, 1_795_000_000_999);
        let text = p.to_string();
        assert!(text.starts_with("17.") && text.len() == 9, "{text}");
        assert_eq!(Position::parse(&text), Ok(p));
        assert_eq!(Position::parse(" 5 "), Ok(Position::bare(5)));
        assert_eq!(
            Position::parse("18446744073709551615").map(|p| p.seq),
            Ok(u64::MAX)
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "abc",
            "0x10",
            "17.",
            "17.AbCd",
            "17.AbCd3w9",
            ".AbCd3w",
            "1 7",
            "m123",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Position::parse("18446744073709551616"),
            Err(PositionError::OutOfRange)
        );
    }

    #[test]
    fn another_history_at_the_same_seq_has_another_tag() {
        let a = tag(111, 5, 1000);
        assert_eq!(a, tag(111, 5, 1000), "same event, same tag");
        // Same epoch (a failover that lost the tail): the publish time differs.
        assert_ne!(a, tag(111, 5, 1001));
        // Data wiped, task recreated: another epoch.
        let b = tag(222, 5, 1000);
        assert_ne!(a.epoch(), b.epoch());
        // Type and final flag are part of it.
        assert_ne!(a, Tag::from_parts(111, 5, 1000, "done", false));
        assert_ne!(a, Tag::from_parts(111, 5, 1000, "progress", true));
    }

    #[test]
    fn cursors_round_trip_and_refuse_other_task_sets() {
        let tasks = ["a", "b", "c", "d"];
        let hash = Cursor::set_hash(tasks);
        let positions = vec![
            Some(pos(9, 70_000, 5)),
            None,
            Some(Position::bare(0)),
            Some(Position::bare(3)),
        ];
        let mut text = String::new();
        Cursor::encode_into(hash, &positions, &mut text);
        assert!(text.starts_with('m'));
        let back = Cursor::parse(&text, hash, 4).expect("parse");
        assert_eq!(back.positions, positions);
        assert_eq!(
            Cursor::parse(&text, Cursor::set_hash(["a", "b"]), 2),
            Err(PositionError::OtherTasks)
        );
        assert_eq!(Cursor::parse(&text, hash, 5), Err(PositionError::Malformed));
        assert_eq!(
            Cursor::parse(&text, hash, 3),
            Err(PositionError::OtherTasks)
        );
        for bad in ["", "m", "x", "m!!!!", "17", "17.AbCd3w"] {
            assert!(Cursor::parse(bad, hash, 4).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_cursor_of_100_tasks_stays_small() {
        let tasks: Vec<String> = (0..100).map(|i| format!("job-{i:04}")).collect();
        let hash = Cursor::set_hash(tasks.iter().map(String::as_str));
        let positions: Vec<_> = (0..100u64).map(|i| Some(pos(i, 8_000 + i, 1))).collect();
        let mut text = String::new();
        Cursor::encode_into(hash, &positions, &mut text);
        assert!(
            text.len() <= 1 + (5 + 100 * 6usize).div_ceil(3) * 4,
            "{}",
            text.len()
        );
    }
}
