//! Direct writes: a live event goes from the hub straight to an idle
//! connection's socket, with no wake-up of the connection's task.
//!
//! A connection is *idle* while its session is parked waiting for events
//! with nothing queued, nothing being written and nothing to read from
//! history ([`crate::subscription::Mux`] parks and unparks it). Only an SSE
//! stream of one task on the stream path, delivering every event, takes
//! part. While idle, the hub may write the next event (its seq exactly one
//! past the position the connection stands at) with one non-blocking
//! `writev` of the frame's shared bytes, in HTTP/1.1 chunked framing, and
//! advance that position; the session takes the position over when it
//! wakes. Everything else goes through the connection's queue as before:
//! a connection that is not idle, an event out of sequence, a final event
//! (the session ends the stream after it), a socket that takes nothing.
//!
//! A socket that takes part of a frame leaves the rest for the
//! connection's own writer ([`Direct::take_carry`]), which writes it before
//! anything else; the connection is not idle until its session parks again.
//! Every write, direct or not, happens either under the connection's lock
//! while idle or in the connection's task while not idle, so frames never
//! interleave and each position is advanced once.

use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use sluice_shared::position::Tag;
use sluice_shared::Seq;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::{Metrics, Transport, TransportLabel};
use crate::wire::Event;

/// One connection's direct-write state.
pub struct Direct {
    socket: Arc<TcpStream>,
    state: Mutex<State>,
    /// Notified when part of a frame is left for the connection's writer.
    pub carry_ready: Notify,
    delivered: Counter,
    metrics: Arc<Metrics>,
    /// Events written directly (the connection's log line counts them).
    count: AtomicU64,
}

#[derive(Default)]
struct State {
    idle: bool,
    /// The session ended: no more direct writes.
    closed: bool,
    /// The position the client stands at (last delivered seq and tag).
    last: Seq,
    last_tag: Option<Tag>,
    /// Direct writes advanced the position since the session parked.
    advanced: bool,
    /// The part of a frame the socket did not take.
    carry: Option<Bytes>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl Direct {
    /// Direct writes to an SSE stream's `socket`, counted in `metrics`.
    pub fn new(socket: Arc<TcpStream>, metrics: Arc<Metrics>) -> Self {
        let delivered = metrics
            .delivered
            .get_or_create(&TransportLabel {
                transport: Transport::Sse,
            })
            .clone();
        Direct {
            socket,
            state: Mutex::new(State::default()),
            carry_ready: Notify::new(),
            delivered,
            metrics,
            count: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Sections only read and set fields (and try one write): a
        // poisoned lock holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session parks, standing at `last`: the hub may write from now
    /// on. False (and nothing changes) while part of a frame is waiting
    /// to be written, or once closed.
    pub fn park(&self, last: Seq, last_tag: Option<Tag>) -> bool {
        let mut st = self.state();
        if st.closed || st.carry.is_some() {
            return false;
        }
        st.idle = true;
        st.last = last;
        st.last_tag = last_tag;
        st.advanced = false;
        true
    }

    /// The session wakes: no more direct writes until it parks again.
    pub fn end_park(&self) {
        self.state().idle = false;
    }

    /// The position direct writes advanced the connection to since it
    /// parked, if they did (taken once).
    pub fn take_advance(&self) -> Option<(Seq, Option<Tag>)> {
        let mut st = self.state();
        std::mem::take(&mut st.advanced).then_some((st.last, st.last_tag))
    }

    /// The session ended.
    pub fn close(&self) {
        let mut st = self.state();
        st.idle = false;
        st.closed = true;
    }

    /// The rest of a frame the socket took only part of; the connection's
    /// writer writes it before anything else.
    pub fn take_carry(&self) -> Option<Bytes> {
        self.state().carry.take()
    }

    /// Events written directly so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes `ev` if the connection is idle and `ev` comes next; false if
    /// it must go through the connection's queue.
    pub fn try_deliver(&self, ev: &Event) -> bool {
        let mut st = self.state();
        if !st.idle || ev.is_final || ev.is_reset || Some(ev.seq) != st.last.checked_add(1) {
            return false;
        }
        let mut prefix = [0u8; 18];
        let n = chunk_prefix(ev.sse.len(), &mut prefix);
        let parts: [&[u8]; 3] = [&prefix[..n], &ev.sse, b"\r\n"];
        let slices = parts.map(IoSlice::new);
        let written = match self.socket.try_write_vectored(&slices) {
            Ok(n) => n,
            // Full, or failed: the connection's writer finds out which.
            Err(_) => return false,
        };
        if written == 0 {
            return false;
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if written < total {
            let mut rest = Vec::with_capacity(total - written);
            let mut skip = written;
            for part in parts {
                let from = skip.min(part.len());
                rest.extend_from_slice(&part[from..]);
                skip -= from;
            }
            st.carry = Some(Bytes::from(rest));
            st.idle = false;
            self.carry_ready.notify_one();
        }
        st.last = ev.seq;
        st.last_tag = ev.tag;
        st.advanced = true;
        drop(st);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.delivered.inc();
        self.metrics.direct_writes.inc();
        if ev.ts > 0 {
            let now_ms = chrono::Utc::now().timestamp_millis();
            self.metrics
                .delivery_latency
                .observe((now_ms - ev.ts).max(0) as f64 / 1000.0);
        }
        true
    }
}

/// A request extension of the stream path's requests: the connection's
/// socket, and where a handler that enables direct writes leaves the
/// connection's [`Direct`] for the stream path's writer.
#[derive(Clone)]
pub struct StreamSocket {
    pub socket: Arc<TcpStream>,
    slot: Arc<Mutex<Option<Arc<Direct>>>>,
}

impl StreamSocket {
    pub fn new(socket: Arc<TcpStream>) -> Self {
        StreamSocket {
            socket,
            slot: Arc::default(),
        }
    }

    pub fn put(&self, direct: Arc<Direct>) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(direct);
    }

    pub fn take(&self) -> Option<Arc<Direct>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// `{len:x}\r\n` into `out`; its length.
pub fn chunk_prefix(len: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_prefixes_are_hex_lengths() {
        let mut out = [0u8; 18];
        for (len, want) in [
            (1usize, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let n = chunk_prefix(len, &mut out);
            assert_eq!(std::str::from_utf8(&out[..n]).expect("ascii"), want);
        }
    }
}
