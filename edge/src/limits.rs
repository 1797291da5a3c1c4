//! Per-node admission: the connection limit (a count of open connections
//! whose guard lives inside the connection's stream or task, so it is
//! released however the connection ends) and the new-connection rate
//! (token bucket). The count is a `watch` value, so a draining node is told
//! when the last connection closed instead of polling for it.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::metrics::{Metrics, Transport, TransportLabel};

/// Proof that a connection was admitted. Dropping it frees the slot and
/// updates the gauges; nothing else needs to remember to.
pub struct ConnGuard {
    open: watch::Sender<usize>,
    metrics: Arc<Metrics>,
    transport: Transport,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n = n.saturating_sub(1));
        self.metrics
            .connections
            .get_or_create(&TransportLabel {
                transport: self.transport,
            })
            .dec();
    }
}

pub struct Limits {
    /// Open connections (at most `max`).
    open: watch::Sender<usize>,
    max: usize,
    bucket: Option<Mutex<Bucket>>,
    metrics: Arc<Metrics>,
}

struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

/// Why admission failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Full,
    Rate,
}

impl Limits {
    pub fn new(max: usize, connect_rate: u32, metrics: Arc<Metrics>) -> Self {
        let bucket = (connect_rate > 0).then(|| {
            Mutex::new(Bucket {
                rate: f64::from(connect_rate),
                tokens: f64::from(connect_rate),
                at: Instant::now(),
            })
        });
        Limits {
            open: watch::Sender::new(0),
            max,
            bucket,
            metrics,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Open connections counted by the limiter.
    pub fn in_use(&self) -> usize {
        *self.open.borrow()
    }

    pub fn at_limit(&self) -> bool {
        self.in_use() >= self.max
    }

    /// Resolves once no connection is open (at once if none is).
    /// Cancel-safe.
    pub async fn idle(&self) {
        let mut open = self.open.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = open.wait_for(|n| *n == 0).await;
    }

    pub fn try_admit(&self, transport: Transport) -> Result<ConnGuard, Refusal> {
        if let Some(bucket) = &self.bucket {
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * b.rate).min(b.rate);
            b.at = now;
            if b.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            b.tokens -= 1.0;
        }
        let max = self.max;
        let admitted = self.open.send_if_modified(|n| {
            let room = *n < max;
            if room {
                *n += 1;
            }
            room
        });
        if !admitted {
            return Err(Refusal::Full);
        }
        self.metrics
            .connections
            .get_or_create(&TransportLabel { transport })
            .inc();
        Ok(ConnGuard {
            open: self.open.clone(),
            metrics: self.metrics.clone(),
            transport,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_exact_and_guard_releases() {
        let m = Arc::new(Metrics::default());
        let l = Limits::new(2, 0, m.clone());
        let a = l.try_admit(Transport::Sse).expect("a");
        let b = l.try_admit(Transport::Ws).expect("b");
        assert_eq!(l.try_admit(Transport::Sse).err(), Some(Refusal::Full));
        assert!(l.at_limit());
        drop(a);
        let c = l.try_admit(Transport::Sse).expect("c");
        assert_eq!(m.open_connections(), 2);
        drop((b, c));
        assert_eq!(l.in_use(), 0);
        assert_eq!(m.open_connections(), 0);
    }

    #[tokio::test]
    async fn idle_is_signalled_when_the_last_connection_closes() {
        let l = Arc::new(Limits::new(4, 0, Arc::new(Metrics::default())));
        l.idle().await;
        let a = l.try_admit(Transport::Sse).expect("a");
        let b = l.try_admit(Transport::Ws).expect("b");
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.idle().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("signalled")
            .expect("joined");
    }

    #[test]
    fn rate_bucket_refuses_bursts() {
        let l = Limits::new(100, 3, Arc::new(Metrics::default()));
        let ok: Vec<_> = (0..10)
            .filter_map(|_| l.try_admit(Transport::Sse).ok())
            .collect();
        assert_eq!(ok.len(), 3);
        assert_eq!(l.try_admit(Transport::Sse).err(), Some(Refusal::Rate));
    }
}
