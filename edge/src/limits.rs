//! Per-node admission: the connection limit (a semaphore whose permit lives
//! inside the connection's stream or task, so it is released however the
//! connection ends) and the new-connection rate (token bucket).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metrics, Transport, TransportLabel};

/// Proof that a connection was admitted. Dropping it frees the slot and
/// updates the gauges; nothing else needs to remember to.
pub struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
    transport: Transport,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.metrics
            .connections
            .get_or_create(&TransportLabel {
                transport: self.transport,
            })
            .dec();
    }
}

pub struct Limits {
    slots: Arc<Semaphore>,
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
            slots: Arc::new(Semaphore::new(max)),
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
        self.max - self.slots.available_permits()
    }

    pub fn at_limit(&self) -> bool {
        self.slots.available_permits() == 0
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
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        self.metrics
            .connections
            .get_or_create(&TransportLabel { transport })
            .inc();
        Ok(ConnGuard {
            _permit: permit,
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
