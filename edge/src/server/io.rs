//! One client socket as the node holds it: its slot among the node's open
//! connections, and a write deadline. A write the socket does not accept
//! (not one byte) for the write timeout fails with `TimedOut`, so whatever
//! writes through it (hyper for responses, the stream path for SSE bodies
//! and WebSocket frames) ends the connection. The deadline runs on its own
//! timer, armed only while a write is blocked: a peer that stops reading is
//! closed even when nothing new is sent to it.
//!
//! The HTTP layer's own refusals of requests it cannot parse (400, 414,
//! 431, written by hyper with an empty body before any handler runs) are
//! given the JSON error body every other refusal has ([`JsonRejection`]).

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
    /// A rejection being written in place of hyper's bodiless one.
    rejection: Option<JsonRejection>,
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
            rejection: None,
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
        self.stalled();
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer accepted no bytes within the write timeout",
        ))
    }

    /// Records the stall once: the connection's log reason and the metric.
    fn stalled(&self) {
        if self.peer.mark_stalled() {
            self.metrics.write_stalls.inc();
        }
    }

    /// The kernel gave the peer up (`ETIMEDOUT`: sent data unacknowledged,
    /// or a zero window, for `TCP_USER_TIMEOUT`, which the accept loop sets
    /// to the write timeout): a stall too, whichever timer fired first.
    fn failed(&self, e: &io::Error) {
        if e.kind() == io::ErrorKind::TimedOut {
            self.stalled();
        }
    }

    /// What a write (or flush) of the inner socket means for the deadline:
    /// blocked arms it (and fails once it passed), progress disarms it, a
    /// kernel timeout counts as a stall.
    fn settle<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Pending => self.blocked(cx).map(Err),
            Poll::Ready(Err(e)) => {
                self.failed(&e);
                Poll::Ready(Err(e))
            }
            ready => {
                self.blocked = false;
                ready
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> Guarded<T> {
    /// Writes the JSON rejection in place of hyper's; reports hyper's head
    /// as written once the replacement is.
    fn write_rejection(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let Some(r) = self.rejection.as_mut() else {
                return Poll::Ready(Ok(0));
            };
            if r.written == r.bytes.len() {
                let replaced = r.replaced;
                self.rejection = None;
                return Poll::Ready(Ok(replaced));
            }
            let polled = Pin::new(&mut self.inner).poll_write(cx, &r.bytes[r.written..]);
            match ready!(self.settle(cx, polled))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => {
                    if let Some(r) = self.rejection.as_mut() {
                        r.written += n;
                    }
                }
            }
        }
    }
}

/// A connection's TCP socket, shared: the connection's task reads and
/// writes it through [`Guarded`], and the hub writes an event to it at
/// once when the connection is idle ([`super::direct::Direct`]). Both use
/// tokio's readiness API on `&TcpStream`.
#[derive(Clone)]
pub struct SharedTcp(pub Arc<tokio::net::TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match shut {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

/// hyper answers a request it cannot parse (bad method, bad path, target
/// too long, too many or too large headers) itself, before any handler,
/// with an empty body: `HTTP/1.1 4xx ...`, `connection: close`,
/// `content-length: 0`. The router never sends a bodiless 4xx (every
/// refusal carries a JSON error), so such a head is hyper's, and is
/// rewritten with the JSON error the API promises.
struct JsonRejection {
    bytes: Vec<u8>,
    written: usize,
    /// Length of hyper's head, reported written once `bytes` are.
    replaced: usize,
}

impl JsonRejection {
    fn of(buf: &[u8]) -> Option<JsonRejection> {
        if !buf.starts_with(b"HTTP/1.1 4") {
            return None;
        }
        let end = find(buf, b"\r\n\r\n")? + 4;
        let head = &buf[..end];
        // hyper's refusals have no body; the router's always have one.
        find(head, b"\r\ncontent-length: 0\r\n")?;
        let status_line = std::str::from_utf8(&head[..find(head, b"\r\n")?]).ok()?;
        let code = status_line.get(9..12)?;
        let (error, message) = match code {
            "414" => ("uri_too_long", "the request target is too long"),
            "431" => (
                "headers_too_large",
                "the request has too many or too large headers",
            ),
            _ => (
                "bad_request",
                "the request could not be parsed (method, target or headers)",
            ),
        };
        let body = serde_json::json!({"error": error, "message": message}).to_string();
        let bytes = format!(
            "{status_line}\r\ncontent-type: application/json\r\nconnection: close\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Some(JsonRejection {
            bytes,
            written: 0,
            replaced: end,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if let Err(e) = &read {
            self.failed(e);
        }
        Poll::Ready(read)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.rejection.is_none() {
            self.rejection = JsonRejection::of(buf);
        }
        if self.rejection.is_some() {
            return self.write_rejection(cx);
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.settle(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if self.rejection.is_some() || first.starts_with(b"HTTP/1.1 4") {
                return self.poll_write(cx, first);
            }
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.settle(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.settle(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_bodiless_4xx_heads_are_rewritten() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 04:42:36 GMT\r\n\r\n";
        let r = JsonRejection::of(hyper).expect("rewritten");
        assert_eq!(r.replaced, hyper.len());
        let text = String::from_utf8(r.bytes).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"], "headers_too_large");
        let json_404 = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 52\r\n\r\n";
        assert!(JsonRejection::of(json_404).is_none());
        assert!(JsonRejection::of(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(JsonRejection::of(b"4a\r\nid: 1\n").is_none());
    }

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
