//! Task ids and event types: validated once at the edge of the system
//! ("parse, don't validate twice"), then carried as typed values.

use std::fmt;
use std::str::FromStr;

/// Longest task id, in bytes.
pub const MAX_TASK_ID_LEN: usize = 128;
/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 64;
/// Event types starting with this prefix are reserved for Sluice itself
/// (`sluice.reset`).
pub const RESERVED_TYPE_PREFIX: &str = "sluice.";

/// Why a task id or event type was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskIdError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} bytes long; at most {1} are allowed")]
    TooLong(usize, usize),
    #[error("contains {0:?}; only A-Z a-z 0-9 _ - . : are allowed")]
    BadChar(char),
    #[error("starts with the reserved prefix \"sluice.\"")]
    Reserved,
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

fn check_name(s: &str, max: usize) -> Result<(), TaskIdError> {
    if s.is_empty() {
        return Err(TaskIdError::Empty);
    }
    if s.len() > max {
        return Err(TaskIdError::TooLong(s.len(), max));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii() || !allowed(*c as u8)) {
        return Err(TaskIdError::BadChar(c));
    }
    Ok(())
}

/// A task id: 1 to 128 bytes of `A-Z a-z 0-9 _ - . :`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    pub fn parse(s: &str) -> Result<Self, TaskIdError> {
        check_name(s, MAX_TASK_ID_LEN)?;
        Ok(TaskId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TaskId {
    type Err = TaskIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0)
    }
}

impl AsRef<str> for TaskId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Validates a producer-chosen event type (1 to 64 bytes of
/// `A-Z a-z 0-9 _ - . :`, not starting with `sluice.`).
pub fn validate_event_type(s: &str) -> Result<(), TaskIdError> {
    check_name(s, MAX_EVENT_TYPE_LEN)?;
    if s.starts_with(RESERVED_TYPE_PREFIX) {
        return Err(TaskIdError::Reserved);
    }
    Ok(())
}

/// Validates an idempotency key: 1 to 128 bytes, printable ASCII without
/// spaces.
pub fn validate_idempotency_key(s: &str) -> Result<(), TaskIdError> {
    if s.is_empty() {
        return Err(TaskIdError::Empty);
    }
    if s.len() > MAX_TASK_ID_LEN {
        return Err(TaskIdError::TooLong(s.len(), MAX_TASK_ID_LEN));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(TaskIdError::BadChar(c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids() {
        assert!(TaskId::parse("job-42").is_ok());
        assert!(TaskId::parse("a.b:c_D-9").is_ok());
        assert!(TaskId::parse(&"x".repeat(128)).is_ok());
        assert_eq!(TaskId::parse(""), Err(TaskIdError::Empty));
        assert_eq!(
            TaskId::parse(&"x".repeat(129)),
            Err(TaskIdError::TooLong(129, 128))
        );
        assert_eq!(TaskId::parse("a b"), Err(TaskIdError::BadChar(' ')));
        assert_eq!(TaskId::parse("a/b"), Err(TaskIdError::BadChar('/')));
        assert_eq!(TaskId::parse("é"), Err(TaskIdError::BadChar('é')));
        assert_eq!(TaskId::parse("{s1}"), Err(TaskIdError::BadChar('{')));
    }

    #[test]
    fn event_types() {
        assert!(validate_event_type("progress").is_ok());
        assert_eq!(
            validate_event_type("sluice.reset"),
            Err(TaskIdError::Reserved)
        );
        assert!(validate_event_type(&"t".repeat(65)).is_err());
        assert!(validate_event_type("").is_err());
    }

    #[test]
    fn idempotency_keys() {
        assert!(validate_idempotency_key("retry-1/attempt#2").is_ok());
        assert!(validate_idempotency_key("a b").is_err());
        assert!(validate_idempotency_key("").is_err());
    }
}
