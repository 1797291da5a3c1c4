//! The process's open-file limit, checked once at start: every client
//! connection is a file descriptor, and a node that runs out of them cannot
//! accept anything (not even `/healthz`). So the soft `RLIMIT_NOFILE` is
//! raised to the hard limit, and a node whose `--max-open-connections` (by
//! default `--max-connections` plus 256) cannot fit under it refuses to
//! start instead of failing later under load. The accept loop enforces
//! that limit, so connections alone cannot exhaust the descriptors.

/// Descriptors a node needs besides its client connections: the listener,
/// Redis pools and the feed reader, the registry, logs, and connections
/// refused at the limit (a generous, fixed reserve).
pub const RESERVED_FDS: u64 = 256;

/// Descriptors needed for `max_open` client connections.
pub fn needed(max_open: usize) -> u64 {
    max_open as u64 + RESERVED_FDS
}

/// Raises the soft limit to the hard one; errors with one sentence when
/// the hard limit cannot hold `max_open` connections plus the reserve.
/// Returns the soft limit in force.
pub fn ensure(max_connections: usize, max_open: usize) -> Result<u64, String> {
    use rlimit::Resource;
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE)
        .map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    let soft = if soft < hard {
        match rlimit::setrlimit(Resource::NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, cause = %e, "could not raise the open-file limit");
                soft
            }
        }
    } else {
        soft
    };
    check(max_connections, max_open, soft)?;
    Ok(soft)
}

/// The rule [`ensure`] applies to the limit in force.
pub fn check(max_connections: usize, max_open: usize, limit: u64) -> Result<(), String> {
    let need = needed(max_open);
    if limit < need {
        return Err(format!(
            "--max-connections {max_connections} (--max-open-connections {max_open}) \
             needs about {need} open files ({RESERVED_FDS} reserved for Redis, the \
             listener and logs), but the process may open only {limit} (ulimit -n): \
             raise the limit or lower --max-connections"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_must_fit_under_the_limit() {
        assert!(check(10_000, 10_256, 20_000).is_ok());
        assert!(check(1_000, 1_000, 1_000 + RESERVED_FDS).is_ok());
        let e = check(1_000, 1_256, 1_024).expect_err("does not fit");
        assert!(
            e.contains("--max-connections 1000") && e.contains("1024"),
            "{e}"
        );
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let soft = ensure(1, 1).expect("one connection fits");
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("limits");
        assert_eq!(soft, hard);
    }
}
