//! One client socket as the node holds it: its slot among the node's open
//! connections, and a write deadline. A write the socket does not accept
//! (not one byte) for the write timeout fails with `TimedOut`, so whatever
//! writes through it (hyper for responses and SSE bodies, tungstenite after
//! a WebSocket upgrade) ends the connection. The deadline runs on its own
//! timer, armed only while a write is blocked: a peer that stops reading is
//! closed even when nothing new is sent to it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// What the request handlers may learn of their connection (a request
/// extension): whether its writes stalled, for the connection's log line.
#[derive(Debug, Default)]
pub struct Peer {
    stalled: AtomicBool,
}

impl Peer {
    /// The peer accepted no bytes for the write timeout and was closed.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Records the stall; true the first time.
    pub fn mark_stalled(&self) -> bool {
        !self.stalled.swap(true, Ordering::Relaxed)
    }
}

/// A slot among the node's open TCP connections: taken when a connection
/// is accepted, released (and the gauge lowered) when its socket closes,
/// also after a WebSocket upgrade moved the socket to the session.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slot {
    pub fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.tcp_connections.inc();
        Slot {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.tcp_connections.dec();
    }
}

/// A socket with a write deadline, holding its connection slot.
pub struct Guarded<T> {
    inner: T,
    timeout: Duration,
    /// Armed while a write is blocked; allocated on the first block.
    stall: Option<Pin<Box<Sleep>>>,
    blocked: bool,
    peer: Arc<Peer>,
    metrics: Arc<Metrics>,
    _slot: Option<Slot>,
}

impl<T> Guarded<T> {
    pub fn new(
        inner: T,
        timeout: Duration,
        peer: Arc<Peer>,
        metrics: Arc<Metrics>,
        slot: Option<Slot>,
    ) -> Self {
        Guarded {
            inner,
            timeout,
            stall: None,
            blocked: false,
            peer,
            metrics,
            _slot: slot,
        }
    }

    /// After a write returned `Pending`: arms the deadline on the first
    /// block, and fails once it passed.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.blocked {
            self.blocked = true;
            let at = Instant::now() + self.timeout;
            match &mut self.stall {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let Some(sleep) = self.stall.as_mut() else {
            return Poll::Pending;
        };
        ready!(sleep.as_mut().poll(cx));
        if self.peer.mark_stalled() {
            self.metrics.write_stalls.inc();
        }
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer accepted no bytes within the write timeout",
        ))
    }

    fn progressed(&mut self) {
        self.blocked = false;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.blocked(cx).map(Err),
            ready => {
                self.progressed();
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.blocked(cx).map(Err),
            ready => {
                self.progressed();
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.blocked(cx).map(Err),
            ready => {
                self.progressed();
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_at_the_deadline() {
        let metrics = Arc::new(Metrics::default());
        let peer = Arc::new(Peer::default());
        let (a, mut b) = tokio::io::duplex(1024);
        let mut io = Guarded::new(
            a,
            Duration::from_secs(3),
            peer.clone(),
            metrics.clone(),
            None,
        );
        let started = Instant::now();
        let chunk = [7u8; 512];
        let err = loop {
            if let Err(e) = io.write(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(peer.stalled());
        assert_eq!(metrics.write_stalls.get(), 1);
        // The peer can still read what was accepted before the stall.
        let mut got = vec![0u8; 1024];
        b.read_exact(&mut got).await.expect("buffered bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_is_not_stalled() {
        let metrics = Arc::new(Metrics::default());
        let peer = Arc::new(Peer::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = Guarded::new(
            a,
            Duration::from_secs(3),
            peer.clone(),
            metrics.clone(),
            None,
        );
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                total += b.read(&mut buf).await.expect("read");
            }
        });
        io.write_all(&[1u8; 4096]).await.expect("never stalled");
        reader.await.expect("reader");
        assert!(!peer.stalled());
        assert_eq!(metrics.write_stalls.get(), 0);
    }
}
