//! Redis replies read into Sluice's shapes: stream entries, `XREAD` /
//! `XREADGROUP` replies, `XINFO STREAM` and `XINFO GROUPS` replies,
//! `CLUSTER SLOTS`. The one place that walks [`redis::Value`] trees.
//!
//! RESP2 arrays and RESP3 maps are read alike. Every parser is total: any
//! value tree is parsed or refused, never panicked on
//! (`tests/tests/it/fuzz_inputs.rs` feeds them arbitrary trees).

use std::collections::HashMap;

use redis::Value;

/// A reply without the shape its command gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("expected an array of entries, got {0}")]
    NotEntries(&'static str),
    #[error("entry is not an array")]
    EntryNotArray,
    #[error("entry is not [id, fields]")]
    EntryShape,
    #[error("entry id is not a string")]
    EntryId,
    #[error("entry fields are not an array")]
    FieldsNotArray,
    #[error("field name is not a string")]
    FieldName,
    #[error("field value is not a string")]
    FieldValue,
}

/// The bytes of a string reply (bulk or simple).
pub fn bulk_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A string reply that is UTF-8.
pub fn bulk_string(v: &Value) -> Option<String> {
    bulk_bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// A non-negative integer reply.
pub fn int_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// What a value is, for error messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. } => "a string",
        Value::Array(_) | Value::Set(_) | Value::Push { .. } => "an array",
        Value::Map(_) | Value::Attribute { .. } => "a map",
        Value::Okay => "OK",
        Value::Double(_) => "a double",
        Value::Boolean(_) => "a boolean",
        Value::BigNumber(_) => "a big number",
        Value::ServerError(_) => "an error",
        _ => "an unknown value",
    }
}

/// The `(name, value)` pairs of a flat reply: a RESP2 array
/// `[name, value, ...]` (a trailing odd element is ignored) or a RESP3 map.
fn pairs(reply: &Value) -> Option<Vec<(&Value, &Value)>> {
    match reply {
        Value::Array(kv) => Some(
            kv.chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((k, v)),
                    _ => None,
                })
                .collect(),
        ),
        Value::Map(kv) => Some(kv.iter().map(|(k, v)| (k, v)).collect()),
        _ => None,
    }
}

/// An integer field of a flat reply such as `XINFO STREAM`'s
/// (`entries-added`, `length` ...): the first field of that name whose
/// value is a non-negative integer.
pub fn field_u64(reply: &Value, name: &str) -> Option<u64> {
    pairs(reply)?.into_iter().find_map(|(k, v)| {
        if bulk_bytes(k) == Some(name.as_bytes()) {
            int_u64(v)
        } else {
            None
        }
    })
}

/// One stream entry: its id and its fields.
pub type Entry = (String, HashMap<String, Vec<u8>>);

/// Stream entries as `(id, field -> value bytes)`, from an XRANGE-shaped
/// reply (an array of `[id, [field, value, ...]]`; nil reads as none).
pub fn parse_entries(reply: &Value) -> Result<Vec<Entry>, ReplyError> {
    match reply {
        Value::Array(items) => items.iter().map(parse_entry).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(ReplyError::NotEntries(kind_of(other))),
    }
}

/// The entries of an XRANGE-shaped reply, taken by value so that a reader
/// can parse them one at a time ([`parse_entry`]) and drop each raw entry
/// as soon as it is read (nil reads as none).
pub fn entry_items(reply: Value) -> Result<Vec<Value>, ReplyError> {
    match reply {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(ReplyError::NotEntries(kind_of(&other))),
    }
}

/// One stream entry, `[id, [field, value, ...]]`.
pub fn parse_entry(item: &Value) -> Result<Entry, ReplyError> {
    let Value::Array(pair) = item else {
        return Err(ReplyError::EntryNotArray);
    };
    let [id, fields] = pair.as_slice() else {
        return Err(ReplyError::EntryShape);
    };
    let id = bulk_string(id).ok_or(ReplyError::EntryId)?;
    let Value::Array(kv) = fields else {
        return Err(ReplyError::FieldsNotArray);
    };
    let mut map = HashMap::with_capacity(kv.len() / 2);
    for chunk in kv.chunks(2) {
        if let [k, v] = chunk {
            let k = bulk_string(k).ok_or(ReplyError::FieldName)?;
            let v = bulk_bytes(v).ok_or(ReplyError::FieldValue)?;
            map.insert(k, v.to_vec());
        }
    }
    Ok((id, map))
}

/// The `(stream key, entries)` pairs of an `XREAD` / `XREADGROUP` reply
/// (RESP2: an array of `[key, entries]`; RESP3: a map). Pairs whose key is
/// not a string are left out; nil (nothing read) gives none. The entries
/// are read with [`parse_entries`].
pub fn stream_replies(reply: &Value) -> Vec<(&[u8], &Value)> {
    let mut out = Vec::new();
    match reply {
        Value::Array(items) => {
            for item in items {
                if let Value::Array(pair) = item {
                    if let [k, v] = pair.as_slice() {
                        if let Some(k) = bulk_bytes(k) {
                            out.push((k, v));
                        }
                    }
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let Some(k) = bulk_bytes(k) {
                    out.push((k, v));
                }
            }
        }
        _ => {}
    }
    out
}

/// One consumer group of an `XINFO GROUPS` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XinfoGroup {
    pub name: String,
    /// Entries the group has read; `None` when Redis does not say.
    pub entries_read: Option<u64>,
    /// Entries of the stream the group has not read; `None` when Redis
    /// cannot tell (after some trims and deletions).
    pub lag: Option<u64>,
}

/// The groups of an `XINFO GROUPS` reply (an array of RESP2 flat arrays or
/// RESP3 maps), in reply order. Groups without a string name are left out.
pub fn xinfo_groups(reply: &Value) -> Vec<XinfoGroup> {
    let Value::Array(groups) = reply else {
        return Vec::new();
    };
    groups.iter().filter_map(xinfo_group).collect()
}

fn xinfo_group(g: &Value) -> Option<XinfoGroup> {
    let fields: Vec<(String, &Value)> = pairs(g)?
        .into_iter()
        .filter_map(|(k, v)| bulk_string(k).map(|k| (k, v)))
        .collect();
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    Some(XinfoGroup {
        name: get("name").and_then(bulk_string)?,
        entries_read: get("entries-read").and_then(int_u64),
        lag: get("lag").and_then(int_u64),
    })
}

/// One slot range of a `CLUSTER SLOTS` reply and the primary serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotOwner {
    pub start: u16,
    pub end: u16,
    /// As Redis gives it: empty or `?` means "the address you asked".
    pub host: String,
    pub port: u16,
}

/// The slot ranges of a `CLUSTER SLOTS` reply, in reply order. Ranges
/// without integer bounds and a primary's port are left out.
pub fn cluster_slots(reply: &Value) -> Vec<SlotOwner> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges.iter().filter_map(slot_owner).collect()
}

fn slot_owner(range: &Value) -> Option<SlotOwner> {
    let Value::Array(parts) = range else {
        return None;
    };
    let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
        (parts.first(), parts.get(1), parts.get(2))
    else {
        return None;
    };
    let host = match node.first() {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    };
    let port = match node.get(1) {
        Some(Value::Int(p)) => u16::try_from(*p).ok()?,
        _ => return None,
    };
    Some(SlotOwner {
        start: u16::try_from(*start).ok()?,
        end: u16::try_from(*end).ok()?,
        host,
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_parse_or_are_refused() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("3-0"),
            Value::Array(vec![bulk("task"), bulk("t"), bulk("e"), bulk("xyz")]),
        ])]);
        let entries = parse_entries(&reply).expect("entries");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0, "3-0");
        assert_eq!(entries[0].1["task"], b"t");
        assert_eq!(entries[0].1["e"], b"xyz");
        assert_eq!(parse_entries(&Value::Nil), Ok(Vec::new()));
        assert_eq!(
            parse_entries(&Value::Int(1)),
            Err(ReplyError::NotEntries("an integer"))
        );
        let bad_field = Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("e"), Value::Int(1)]),
        ])]);
        assert_eq!(parse_entries(&bad_field), Err(ReplyError::FieldValue));
    }

    #[test]
    fn stream_replies_read_resp2_and_resp3() {
        let entries = Value::Array(Vec::new());
        let resp2 = Value::Array(vec![
            Value::Array(vec![bulk("sluice:{s1}:feed"), entries.clone()]),
            Value::Array(vec![Value::Int(3), entries.clone()]),
        ]);
        let resp3 = Value::Map(vec![(bulk("sluice:{s1}:feed"), entries.clone())]);
        for reply in [resp2, resp3] {
            let streams = stream_replies(&reply);
            assert_eq!(streams, vec![(&b"sluice:{s1}:feed"[..], &entries)]);
        }
        assert!(stream_replies(&Value::Nil).is_empty());
    }

    #[test]
    fn flat_fields_read_resp2_and_resp3() {
        let resp2 = Value::Array(vec![
            bulk("length"),
            Value::Int(4),
            bulk("entries-added"),
            bulk("not a number"),
            bulk("entries-added"),
            Value::Int(9),
        ]);
        let resp3 = Value::Map(vec![
            (bulk("length"), Value::Int(4)),
            (bulk("entries-added"), Value::Int(9)),
        ]);
        for reply in [resp2, resp3] {
            assert_eq!(field_u64(&reply, "length"), Some(4));
            assert_eq!(field_u64(&reply, "entries-added"), Some(9));
            assert_eq!(field_u64(&reply, "missing"), None);
        }
        assert_eq!(field_u64(&Value::Int(1), "length"), None);
    }

    #[test]
    fn xinfo_groups_read_resp2_and_resp3() {
        let resp2 = Value::Array(vec![
            Value::Array(vec![
                bulk("name"),
                bulk("edge:a"),
                bulk("entries-read"),
                Value::Int(7),
                bulk("lag"),
                Value::Int(3),
            ]),
            Value::Array(vec![bulk("name"), bulk("edge:b"), bulk("lag"), Value::Nil]),
            Value::Array(vec![bulk("lag"), Value::Int(1)]),
        ]);
        let resp3 = Value::Array(vec![
            Value::Map(vec![
                (bulk("name"), bulk("edge:a")),
                (bulk("entries-read"), Value::Int(7)),
                (bulk("lag"), Value::Int(3)),
            ]),
            Value::Map(vec![
                (bulk("name"), bulk("edge:b")),
                (bulk("lag"), Value::Nil),
            ]),
        ]);
        for reply in [resp2, resp3] {
            assert_eq!(
                xinfo_groups(&reply),
                vec![
                    XinfoGroup {
                        name: "edge:a".into(),
                        entries_read: Some(7),
                        lag: Some(3)
                    },
                    XinfoGroup {
                        name: "edge:b".into(),
                        entries_read: None,
                        lag: None
                    },
                ]
            );
        }
        assert!(xinfo_groups(&Value::Nil).is_empty());
    }

    #[test]
    fn cluster_slots_keep_what_redis_gave() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![Value::BulkString(Vec::new()), Value::Int(7001)]),
            ]),
            Value::Array(vec![
                Value::Int(1),
                Value::Int(2),
                Value::Array(vec![bulk("h"), Value::Int(70_000)]),
            ]),
        ]);
        assert_eq!(
            cluster_slots(&reply),
            vec![
                SlotOwner {
                    start: 0,
                    end: 5460,
                    host: "10.0.0.1".into(),
                    port: 7000
                },
                SlotOwner {
                    start: 5461,
                    end: 16383,
                    host: String::new(),
                    port: 7001
                },
            ]
        );
    }
}
