//! Redis failures, typed.
//!
//! - [`Unavailable`]: why a call got no usable answer from Redis, with the
//!   source error kept (shared by the publisher and the edge's store).
//! - [`classify`]: the one place that reads Redis error codes and texts.
//!   Every retry, reload, reset or skip decision on a Redis error is made on
//!   its [`ErrorClass`], never on the error's message.
//! - [`Chain`]: an error and its sources on one line, for logs.

use std::sync::Arc;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Redis gave no usable answer: unreachable, refused, timed out, or it
/// answered with an error. Transient from the caller's view: retry later
/// (a publish with its idempotency key). Cheap to clone, so one failed
/// round trip can answer every event it carried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// Redis answered with an error, or the connection failed
    /// ([`classify`] tells which).
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// The pool gave no connection (timed out waiting for one, closed).
    /// A pool error that is a Redis error is kept as [`Unavailable::Redis`].
    #[error(transparent)]
    Pool(Arc<crate::pool::PoolError>),
    /// No answer within the bound the caller set.
    #[error("Redis did not answer in time")]
    TimedOut,
    /// Fewer replies than commands sent.
    #[error("Redis sent no reply")]
    NoReply,
}

impl From<crate::pool::PoolError> for Unavailable {
    fn from(e: crate::pool::PoolError) -> Self {
        match e {
            crate::pool::PoolError::Backend(e) => Unavailable::Redis(e),
            other => Unavailable::Pool(Arc::new(other)),
        }
    }
}

impl Unavailable {
    /// The class of the Redis error behind this, if there is one.
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            Unavailable::Redis(e) => Some(classify(e)),
            _ => None,
        }
    }
}

/// What a Redis error means to Sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// `SLUICE_CLOSED`: the publish function refused an event for a task
    /// that already got its final event.
    TaskClosed,
    /// `SLUICE_INVALID`, `SLUICE_TOO_LARGE`: the publish function refused
    /// the event's input. Nothing was written.
    EventRefused,
    /// `ERR Function not found`: Redis does not have the publish function
    /// (never loaded, or lost in a restart). Nothing ran: load it, resend.
    FunctionMissing,
    /// `BUSYGROUP`: the consumer group exists already.
    GroupExists,
    /// `NOGROUP`: the consumer group, or its stream, is gone.
    GroupMissing,
    /// `ERR no such key`, `... requires the key to exist`: the key is not
    /// there.
    NoSuchKey,
    /// `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`:
    /// the node did not run the command (a redirect, or a cluster or node
    /// not serving yet). Safe to resend once the route is fresh.
    NotServed,
    /// The connection was refused: the command was never sent.
    Refused,
    /// The connection failed, dropped or timed out: the command may have
    /// run.
    Connection,
    /// Anything else (a wrong type, a denied command, a parse error ...).
    Other,
}

impl ErrorClass {
    /// The command did not run and may be sent again after the route (the
    /// cluster's slot map) is read again.
    pub fn is_resendable(self) -> bool {
        matches!(self, ErrorClass::NotServed | ErrorClass::Refused)
    }

    /// The node may be gone or no longer serve the key: read the route
    /// again before the next command.
    pub fn needs_new_route(self) -> bool {
        self.is_resendable() || self == ErrorClass::Connection
    }
}

/// The class of a Redis error: by its kind where the redis crate knows the
/// code, by its code (and, for `ERR` replies, its detail) otherwise.
pub fn classify(e: &RedisError) -> ErrorClass {
    if let ErrorKind::Server(kind) = e.kind() {
        match kind {
            ServerErrorKind::Moved
            | ServerErrorKind::Ask
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::BusyLoading => return ErrorClass::NotServed,
            ServerErrorKind::ResponseError => return classify_err_detail(e.detail()),
            _ => {}
        }
    }
    match e.code() {
        Some("SLUICE_CLOSED") => return ErrorClass::TaskClosed,
        Some("SLUICE_INVALID" | "SLUICE_TOO_LARGE") => return ErrorClass::EventRefused,
        Some("BUSYGROUP") => return ErrorClass::GroupExists,
        Some("NOGROUP") => return ErrorClass::GroupMissing,
        Some(_) => return ErrorClass::Other,
        None => {}
    }
    if e.is_connection_refusal() {
        ErrorClass::Refused
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        ErrorClass::Connection
    } else {
        ErrorClass::Other
    }
}

/// An `ERR` reply: Redis gives no code of its own for these.
fn classify_err_detail(detail: Option<&str>) -> ErrorClass {
    let detail = detail.unwrap_or_default().to_ascii_lowercase();
    if detail.starts_with("function not found") {
        ErrorClass::FunctionMissing
    } else if detail.starts_with("no such key") || detail.contains("requires the key to exist") {
        ErrorClass::NoSuchKey
    } else {
        ErrorClass::Other
    }
}

/// Shows an error and its sources, `a: b: c`, leaving out a source whose
/// text the line already holds (many errors print their source too).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = s.source();
        }
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a client gets for the RESP error line `-<line>\r\n`.
    fn server(line: &str) -> RedisError {
        match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    fn io(kind: std::io::ErrorKind) -> RedisError {
        std::io::Error::new(kind, "test").into()
    }

    #[test]
    fn function_refusals() {
        assert_eq!(
            classify(&server("SLUICE_CLOSED task job-1 is closed")),
            ErrorClass::TaskClosed
        );
        assert_eq!(
            classify(&server("SLUICE_INVALID bad event type")),
            ErrorClass::EventRefused
        );
        assert_eq!(
            classify(&server("SLUICE_TOO_LARGE data is 70000 bytes")),
            ErrorClass::EventRefused
        );
    }

    #[test]
    fn missing_function() {
        assert_eq!(
            classify(&server("ERR Function not found")),
            ErrorClass::FunctionMissing
        );
        assert_eq!(
            classify(&server("ERR function not found")),
            ErrorClass::FunctionMissing
        );
    }

    #[test]
    fn consumer_groups() {
        assert_eq!(
            classify(&server("BUSYGROUP Consumer Group name already exists")),
            ErrorClass::GroupExists
        );
        assert_eq!(
            classify(&server(
                "NOGROUP No such key 'sluice:{s1}:feed' or consumer group 'edge:a' in XREADGROUP with GROUP option"
            )),
            ErrorClass::GroupMissing
        );
    }

    #[test]
    fn missing_keys() {
        assert_eq!(classify(&server("ERR no such key")), ErrorClass::NoSuchKey);
        assert_eq!(
            classify(&server(
                "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically."
            )),
            ErrorClass::NoSuchKey
        );
    }

    #[test]
    fn not_served() {
        for line in [
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "LOADING Redis is loading the dataset in memory",
        ] {
            let class = classify(&server(line));
            assert_eq!(class, ErrorClass::NotServed, "{line}");
            assert!(class.is_resendable() && class.needs_new_route());
        }
    }

    #[test]
    fn refused_connections() {
        let class = classify(&io(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(class, ErrorClass::Refused);
        assert!(class.is_resendable() && class.needs_new_route());
    }

    #[test]
    fn broken_connections() {
        for kind in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::TimedOut,
        ] {
            let class = classify(&io(kind));
            assert_eq!(class, ErrorClass::Connection, "{kind:?}");
            assert!(!class.is_resendable() && class.needs_new_route());
        }
    }

    #[test]
    fn everything_else() {
        for e in [
            server("WRONGTYPE Operation against a key holding the wrong kind of value"),
            server("NOPERM User has no permissions to run the 'fcall' command"),
            server("ERR unknown command 'FCALL'"),
            server("NOSCRIPT No matching script."),
            RedisError::from((ErrorKind::Client, "no reply")),
        ] {
            let class = classify(&e);
            assert_eq!(class, ErrorClass::Other, "{e}");
            assert!(!class.is_resendable() && !class.needs_new_route());
        }
    }

    #[test]
    fn pool_errors_keep_the_redis_error() {
        let e = crate::pool::PoolError::Backend(server("LOADING Redis is loading"));
        let u = Unavailable::from(e);
        assert!(matches!(u, Unavailable::Redis(_)));
        assert_eq!(u.class(), Some(ErrorClass::NotServed));
        let closed = Unavailable::from(crate::pool::PoolError::Closed);
        assert!(matches!(closed, Unavailable::Pool(_)));
        assert_eq!(closed.class(), None);
    }

    #[test]
    fn chains_leave_out_repeated_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] RedisError);
        let e = Outer(server("NOGROUP gone"));
        let text = Chain(&e).to_string();
        assert!(text.starts_with("outer: "), "{text}");
        assert_eq!(text.matches("gone").count(), 1, "{text}");
    }
}
