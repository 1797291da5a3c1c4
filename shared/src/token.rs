//! Subscriber token claims (HS256 JWT; signing and verification live in the
//! broker and edge crates). `tasks` lists exact task ids and `prefix-*`
//! patterns.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Task ids or `prefix*` patterns the bearer may read.
    pub tasks: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Free-form subject (user id) for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// True when `pattern` (an exact id, or a prefix ending in `*`) covers `task`.
pub fn pattern_matches(pattern: &str, task: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => task.starts_with(prefix),
        None => pattern == task,
    }
}

impl Claims {
    pub fn allows(&self, task: &str) -> bool {
        self.tasks.iter().any(|p| pattern_matches(p, task))
    }
}

/// Validates a pattern given to `sluice token`: a task id, optionally
/// followed by one trailing `*` (a lone `*` allows every task).
pub fn validate_pattern(p: &str) -> Result<(), crate::TaskIdError> {
    match p.strip_suffix('*') {
        Some("") => Ok(()),
        Some(prefix) => crate::TaskId::parse(prefix).map(|_| ()),
        None => crate::TaskId::parse(p).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("reports-*", "reports-2026"));
        assert!(pattern_matches("reports-*", "reports-"));
        assert!(!pattern_matches("reports-*", "report"));
        assert!(pattern_matches("job-1", "job-1"));
        assert!(!pattern_matches("job-1", "job-10"));
        assert!(pattern_matches("*", "anything"));
        assert!(validate_pattern("a*").is_ok());
        assert!(validate_pattern("a**").is_err());
        assert!(validate_pattern("a b*").is_err());
    }
}
