//! Client transports over the same subscription machinery.

pub mod sse;
pub mod ws;

use std::time::Instant;

use sluice_shared::TaskId;

/// One log line per connection when it ends: transport, task, duration,
/// events sent and why it ended.
pub struct ConnLog {
    transport: &'static str,
    task: String,
    opened: Instant,
    pub events: u64,
    pub reason: &'static str,
}

impl ConnLog {
    pub fn new(transport: &'static str, task: &TaskId) -> Self {
        tracing::debug!(transport, task = %task, "connection opened");
        ConnLog {
            transport,
            task: task.to_string(),
            opened: Instant::now(),
            events: 0,
            reason: "client went away",
        }
    }
}

impl Drop for ConnLog {
    fn drop(&mut self) {
        tracing::info!(
            transport = self.transport,
            task = %self.task,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            events = self.events,
            reason = self.reason,
            "connection closed"
        );
    }
}
