//! The storage codec: MessagePack (rmp-serde) for everything Sluice keeps in
//! Redis. Decoding is total: corrupt or foreign bytes give a [`CodecError`],
//! never a panic, so a reader can skip them with a warning.

use serde_json::Value;

use crate::event::StoredEvent;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode as MessagePack")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("not a Sluice event (bad MessagePack)")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("event belongs to task {found:?}, expected {expected:?}")]
    WrongTask { expected: String, found: String },
}

/// Encodes event data the way producers pass it to `sluice_publish`.
pub fn encode_data(data: &Value) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec(data)?)
}

/// Decodes event data passed to `sluice_publish`.
pub fn decode_data(bytes: &[u8]) -> Result<Value, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// Encodes a stored event as a MessagePack map (the same layout the Redis
/// function writes).
pub fn encode_event(ev: &StoredEvent) -> Result<Vec<u8>, CodecError> {
    Ok(rmp_serde::to_vec_named(ev)?)
}

/// Decodes a stored event.
pub fn decode_event(bytes: &[u8]) -> Result<StoredEvent, CodecError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ev = StoredEvent {
            task: "t".into(),
            seq: 3,
            kind: "k".into(),
            data: serde_json::json!({"a":[1,2.5,"x",null,true],"b":{}}),
            ts: 42,
            is_final: true,
            epoch: 0,
        };
        let bytes = encode_event(&ev).expect("encode");
        assert_eq!(decode_event(&bytes).expect("decode"), ev);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [
            &b""[..],
            b"\xc1",
            b"\x86\xa4task",
            b"hello",
            &[0xdc, 0xff, 0xff],
        ] {
            assert!(decode_event(junk).is_err());
        }
    }

    #[test]
    fn function_layout_decodes() {
        // The byte layout the Lua function builds: fixmap(6) then pairs, with
        // `data` spliced in as the producer's MessagePack.
        let data = encode_data(&serde_json::json!({"pct": 5})).expect("data");
        let mut b = vec![0x86];
        b.extend(rmp_serde::to_vec("task").expect("k"));
        b.extend(rmp_serde::to_vec("job-1").expect("v"));
        b.extend(rmp_serde::to_vec("seq").expect("k"));
        b.extend(rmp_serde::to_vec(&7u64).expect("v"));
        b.extend(rmp_serde::to_vec("type").expect("k"));
        b.extend(rmp_serde::to_vec("progress").expect("v"));
        b.extend(rmp_serde::to_vec("data").expect("k"));
        b.extend(&data);
        b.extend(rmp_serde::to_vec("ts").expect("k"));
        b.extend(rmp_serde::to_vec(&1_700_000_000_000i64).expect("v"));
        b.extend(rmp_serde::to_vec("final").expect("k"));
        b.extend(rmp_serde::to_vec(&false).expect("v"));
        let ev = decode_event(&b).expect("decode");
        assert_eq!(ev.seq, 7);
        assert_eq!(ev.data, serde_json::json!({"pct": 5}));
    }
}
