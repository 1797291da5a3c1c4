//! Property-based fuzzing (proptest; `cargo fuzz` needs a nightly toolchain
//! this project's machines do not have) of everything that parses input from
//! the network or from Redis: stored-event decoding, feed/log entry parsing,
//! resume points, task ids and tokens. Each property runs a bounded number
//! of cases in the normal test command (`PROPTEST_CASES` raises it).

use std::time::Duration;

use proptest::prelude::*;
use redis::Value;
use sluice_shared::{codec, StoredEvent, TaskId};

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ProptestConfig {
        cases: n,
        ..ProptestConfig::default()
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (-1e9f64..1e9).prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{0,6}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn redis_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<i64>().prop_map(Value::Int),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Value::BulkString),
        "[a-z0-9-]{0,8}".prop_map(Value::SimpleString),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

/// `decode_for` keeps its promise on `bytes`: it returns an event only if
/// the plain decoder reads the same event and that event belongs to `task`;
/// an event of another task is refused as such (`WrongTask`, naming it), and
/// undecodable bytes are refused.
fn check_decode_for(task: &TaskId, bytes: &[u8]) -> Result<(), TestCaseError> {
    let checked = sluice_broker::reader::decode_for(task, bytes);
    match codec::decode_event(bytes) {
        Ok(ev) if ev.task == task.as_str() => {
            prop_assert_eq!(checked.ok(), Some(ev));
        }
        Ok(ev) => match checked {
            Err(codec::CodecError::WrongTask { expected, found }) => {
                prop_assert_eq!(expected.as_str(), task.as_str());
                prop_assert_eq!(found, ev.task);
            }
            other => prop_assert!(
                false,
                "event of task {:?} not refused as another task's: {:?}",
                ev.task,
                other
            ),
        },
        Err(_) => prop_assert!(
            checked.is_err(),
            "undecodable bytes accepted: {:?}",
            checked
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases())]

    /// Arbitrary bytes in a stream entry never panic the decoder.
    #[test]
    fn decode_event_is_total(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec::decode_event(&bytes);
        let _ = codec::decode_data(&bytes);
    }

    /// Truncated or bit-flipped real events never panic and never decode to
    /// an event of another task.
    #[test]
    fn mutated_events_never_panic(data in json_value(), seq in 1u64.., cut in 0usize..200, flip in any::<(usize, u8)>()) {
        let ev = StoredEvent { task: "job-1".into(), seq, kind: "progress".into(), data, ts: 1, is_final: false, epoch: 0 };
        let mut bytes = codec::encode_event(&ev).expect("encode");
        prop_assert_eq!(codec::decode_event(&bytes).expect("round trip"), ev.clone());
        let i = flip.0 % bytes.len();
        bytes[i] ^= flip.1;
        bytes.truncate(cut.min(bytes.len()));
        let task = TaskId::parse("job-1").expect("task");
        check_decode_for(&task, &bytes)?;
    }

    /// A changed task name in an otherwise intact event (the case the
    /// property above only reaches by chance) is refused as another task's,
    /// or as undecodable; never returned.
    #[test]
    fn events_of_another_task_are_refused(data in json_value(), seq in 1u64.., at in 0usize..5, x in 1u8..) {
        let ev = StoredEvent { task: "job-1".into(), seq, kind: "progress".into(), data, ts: 1, is_final: false, epoch: 0 };
        let mut bytes = codec::encode_event(&ev).expect("encode");
        let pos = bytes.windows(5).position(|w| w == b"job-1").expect("task name in the encoding");
        bytes[pos + at] ^= x;
        let task = TaskId::parse("job-1").expect("task");
        prop_assert!(sluice_broker::reader::decode_for(&task, &bytes).is_err());
        check_decode_for(&task, &bytes)?;
    }

    /// Any reply shape from Redis is parsed or refused, never panicked on.
    #[test]
    fn stream_replies_are_parsed_totally(v in redis_value()) {
        use sluice_broker::resp;
        let _ = resp::parse_entries(&v);
        for (_, entries) in resp::stream_replies(&v) {
            let _ = resp::parse_entries(entries);
        }
        let _ = resp::field_u64(&v, "entries-added");
        let _ = resp::xinfo_groups(&v);
        let _ = resp::cluster_slots(&v);
    }

    /// Resume points: accepted exactly when they are a decimal u64.
    #[test]
    fn resume_points(s in ".{0,24}") {
        let parsed = sluice_edge::http::extract::parse_seq("after", &s);
        let expected = s.trim().parse::<u64>().ok().filter(|_| s.trim().bytes().all(|b| b.is_ascii_digit()));
        prop_assert_eq!(parsed.ok(), expected);
    }

    #[test]
    fn resume_point_numbers(n in any::<u64>()) {
        prop_assert_eq!(sluice_edge::http::extract::parse_seq("after", &n.to_string()).ok(), Some(n));
    }

    /// Task ids: accepted exactly when 1-128 bytes of the allowed alphabet.
    #[test]
    fn task_ids(s in "\\PC{0,140}") {
        let ok = !s.is_empty() && s.len() <= 128
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
        prop_assert_eq!(TaskId::parse(&s).is_ok(), ok);
    }

    /// Tokens: arbitrary strings and mutated valid tokens are refused, never
    /// panicked on; the untouched token verifies.
    #[test]
    fn tokens(junk in ".{0,300}", i in any::<usize>(), c in "[A-Za-z0-9_.-]") {
        let secret = "fuzz-secret-0123456789".to_string();
        let v = sluice_edge::auth::Verifier::new(std::slice::from_ref(&secret));
        prop_assert!(v.verify(&junk).is_err());
        let token = sluice_broker::token::issue(&secret, &["job-*".into()], Duration::from_secs(60), None).expect("token");
        prop_assert!(v.verify(&token).is_ok());
        let mut bytes = token.clone().into_bytes();
        let at = i % bytes.len();
        let replacement = c.as_bytes()[0];
        if bytes[at] != replacement {
            bytes[at] = replacement;
            let mutated = String::from_utf8(bytes).expect("ascii");
            // A changed character either breaks the signature or the
            // encoding; base64url padding bits can make a change a no-op on
            // the decoded bytes, which is then the same token.
            if let Ok(claims) = v.verify(&mutated) {
                prop_assert_eq!(claims.tasks, vec!["job-*".to_string()]);
            }
        }
    }

    /// JSON depth never panics and bounds what serde would see.
    #[test]
    fn json_depth_total(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = sluice_edge::http::publish::json_depth(&bytes);
    }
}
