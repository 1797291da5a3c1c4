//! The harness's one SSE parser, and the test clients built on it.
//!
//! - [`SseLines`]: splits bytes, arriving in pieces of any size, into lines
//!   and classifies each ([`SseLine`]: a field, a comment, or the blank line
//!   that ends a frame), borrowing from the input: nothing is allocated per
//!   line. The load generator (`load/conn.rs`) and the chaos fleet
//!   (`chaos/fleet.rs`), whose clients share the cores with the edges under
//!   test, read their streams with it directly.
//! - [`SseDecoder`]: whole frames ([`SseFrame`]) from those lines
//!   ([`SseClient`], [`RawSse`]).
//! - [`ResponseHead`] and [`ChunkedBody`]: just enough HTTP/1.1 for clients
//!   on a raw socket (the load generator, [`RawSse`]).
//! - [`SseClient`]: an SSE stream over reqwest, frame by frame, with
//!   deadlines.
//! - [`RawSse`]: an SSE request on a plain TCP socket, for tests that decide
//!   when (and whether) the client reads.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest SSE line accepted (a longer one is a protocol error).
pub const MAX_LINE: usize = 1024 * 1024;
/// Longest response head accepted by the raw-socket clients.
pub const MAX_HEAD: usize = 16 * 1024;
/// The header of an SSE refusal ([`SseClient::refused`]).
pub const REFUSED: &str = "sluice-refused";

/// One line of an SSE stream, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseLine<'a> {
    /// The blank line that ends (dispatches) a frame.
    End,
    /// `:text`, e.g. the heartbeat `: hb`.
    Comment(&'a [u8]),
    /// `name: value`, the value without its one leading space (a line
    /// without a colon is a name with an empty value).
    Field(&'a [u8], &'a [u8]),
}

impl<'a> SseLine<'a> {
    /// Classifies one line (without its `\n`; a trailing `\r` is dropped).
    pub fn parse(line: &'a [u8]) -> SseLine<'a> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return SseLine::End;
        }
        if let Some(c) = line.strip_prefix(b":") {
            return SseLine::Comment(c);
        }
        match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                SseLine::Field(&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => SseLine::Field(line, b""),
        }
    }
}

/// The seq of a one-task frame's `id:` value: a position (`17.AbCd3w`) or
/// a bare seq (`17`). Clients that only track seqs (the load generator, the
/// chaos fleet) read ids with it, without decoding the tag.
pub fn id_seq(id: &[u8]) -> Option<u64> {
    let seq = id.split(|&b| b == b'.').next()?;
    std::str::from_utf8(seq).ok()?.parse().ok()
}

/// Lines of an SSE body fed in pieces of any size. Only a line split across
/// pieces is copied (into a buffer reused from line to line).
#[derive(Debug, Default)]
pub struct SseLines {
    partial: Vec<u8>,
}

impl SseLines {
    /// Feeds body bytes and calls `on` with every line they complete. False
    /// when an unfinished line grew past [`MAX_LINE`].
    pub fn feed(&mut self, bytes: &[u8], mut on: impl FnMut(SseLine<'_>)) -> bool {
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..i];
            rest = &rest[i + 1..];
            if self.partial.is_empty() {
                on(SseLine::parse(line));
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                on(SseLine::parse(&whole));
                whole.clear();
                self.partial = whole;
            }
        }
        self.partial.extend_from_slice(rest);
        self.partial.len() <= MAX_LINE
    }
}

/// One SSE frame: an event, a heartbeat comment or a `retry:` advice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    /// `data:` lines, joined with `\n`.
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl SseFrame {
    /// The seq of a one-task frame's id (a position, `17.AbCd3w`, or a
    /// bare seq).
    pub fn seq(&self) -> Option<u64> {
        self.id
            .as_deref()
            .and_then(|s| sluice_shared::Position::parse(s).ok())
            .map(|p| p.seq)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("null")).expect("frame data is JSON")
    }

    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }

    fn add(&mut self, line: SseLine<'_>) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match line {
            SseLine::End => {}
            SseLine::Comment(c) => self.comment = Some(text(c).trim().to_owned()),
            SseLine::Field(b"id", v) => self.id = Some(text(v)),
            SseLine::Field(b"event", v) => self.event = Some(text(v)),
            SseLine::Field(b"data", v) => {
                self.data = Some(match self.data.take() {
                    Some(prev) => format!("{prev}\n{}", text(v)),
                    None => text(v),
                })
            }
            SseLine::Field(b"retry", v) => {
                self.retry = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
            }
            SseLine::Field(..) => {}
        }
    }
}

/// Frames from an SSE body fed in pieces of any size: every block of
/// lines ended by a blank line that holds an event field (`id`, `event`,
/// `data`) is one frame, as a parser dispatches it; and a comment or a
/// `retry:` that comes outside such a block (the heartbeat `: hb`, the
/// opening `retry:`) is a frame of its own as soon as its line is read, so
/// tests can wait for them. The edge never ends those with a blank line: a
/// block of only `retry:`, or a blank line after an id, is an empty event to
/// parsers such as httpx-sse.
#[derive(Debug, Default)]
pub struct SseDecoder {
    lines: SseLines,
    frame: SseFrame,
    started: bool,
    ready: VecDeque<SseFrame>,
}

impl SseDecoder {
    /// Feeds body bytes. False when a line grew past [`MAX_LINE`].
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let (frame, started, ready) = (&mut self.frame, &mut self.started, &mut self.ready);
        self.lines.feed(bytes, |line| match line {
            SseLine::End => {
                if std::mem::take(started) {
                    ready.push_back(std::mem::take(frame));
                }
            }
            SseLine::Comment(_) | SseLine::Field(b"retry", _) if !*started => {
                let mut advice = SseFrame::default();
                advice.add(line);
                ready.push_back(advice);
            }
            line => {
                *started = true;
                frame.add(line);
            }
        })
    }

    /// The next frame (an event, or a comment or `retry:` outside one), if
    /// the bytes fed so far hold one.
    pub fn next_frame(&mut self) -> Option<SseFrame> {
        self.ready.pop_front()
    }

    /// The next block a parser dispatches (one with an `id`, `event` or
    /// `data` field), skipping comments and `retry:` lines outside blocks.
    pub fn next_dispatched(&mut self) -> Option<SseFrame> {
        while let Some(f) = self.ready.pop_front() {
            if f.id.is_some() || f.event.is_some() || f.data.is_some() {
                return Some(f);
            }
        }
        None
    }
}

/// The head of an HTTP/1.1 response, as far as the raw-socket clients need
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub chunked: bool,
    /// A 200 that is an SSE refusal ([`REFUSED`]): the stream ends at once.
    pub refused: bool,
    /// Bytes of the head, its blank line included.
    pub len: usize,
}

impl ResponseHead {
    /// The head at the start of `buf`; `None` while it is incomplete.
    /// A malformed status line reads as status 0.
    pub fn parse(buf: &[u8]) -> Option<ResponseHead> {
        let len = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&buf[..len]).to_ascii_lowercase();
        let status = head
            .strip_prefix("http/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = head.contains("transfer-encoding: chunked");
        let refused = head.contains(&format!("\r\n{REFUSED}:"));
        Some(ResponseHead {
            status,
            chunked,
            refused,
            len,
        })
    }
}

/// HTTP/1.1 body framing, chunked or not: raw socket bytes in, body bytes
/// out.
#[derive(Debug)]
pub struct ChunkedBody {
    chunked: bool,
    /// Bytes left in the current chunk; `None` while reading a size line.
    left: Option<usize>,
    /// Expecting the CRLF after a chunk's data.
    crlf: usize,
    line: Vec<u8>,
    ended: bool,
}

impl ChunkedBody {
    pub fn new(chunked: bool) -> Self {
        ChunkedBody {
            chunked,
            left: None,
            crlf: 0,
            line: Vec::new(),
            ended: false,
        }
    }

    /// The last (empty) chunk was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Feeds raw bytes; calls `out` with body bytes (`out` answering false
    /// stops it). False on a framing error or when `out` said false.
    pub fn feed(&mut self, mut input: &[u8], mut out: impl FnMut(&[u8]) -> bool) -> bool {
        if !self.chunked {
            return out(input);
        }
        while !input.is_empty() && !self.ended {
            if self.crlf > 0 {
                let n = self.crlf.min(input.len());
                input = &input[n..];
                self.crlf -= n;
                continue;
            }
            match self.left {
                Some(left) => {
                    let n = left.min(input.len());
                    if !out(&input[..n]) {
                        return false;
                    }
                    input = &input[n..];
                    if n == left {
                        self.left = None;
                        self.crlf = 2;
                    } else {
                        self.left = Some(left - n);
                    }
                }
                None => {
                    let Some(i) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        return self.line.len() <= 64;
                    };
                    self.line.extend_from_slice(&input[..i]);
                    input = &input[i + 1..];
                    let line = std::str::from_utf8(&self.line).unwrap_or("");
                    let hex = line.trim().split(';').next().unwrap_or("");
                    let Ok(size) = usize::from_str_radix(hex, 16) else {
                        return false;
                    };
                    self.line.clear();
                    if size == 0 {
                        self.ended = true;
                    } else {
                        self.left = Some(size);
                    }
                }
            }
        }
        true
    }
}

/// An SSE stream over reqwest: frames as they arrive, with deadlines.
pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    stream: Option<futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    decoder: SseDecoder,
    pub body: Option<String>,
}

impl SseClient {
    /// Opens `url`, optionally with `Last-Event-ID`.
    pub async fn connect(url: &str, last_event_id: Option<u64>) -> SseClient {
        Self::connect_with(url, last_event_id, &[]).await
    }

    pub async fn connect_with(
        url: &str,
        last_event_id: Option<u64>,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let client = reqwest::Client::new();
        let mut req = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("SSE request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if status != 200 {
            let body = resp.text().await.ok();
            return SseClient {
                status,
                headers,
                stream: None,
                decoder: SseDecoder::default(),
                body,
            };
        }
        SseClient {
            status,
            headers,
            stream: Some(resp.bytes_stream().boxed()),
            decoder: SseDecoder::default(),
            body: None,
        }
    }

    /// The reason of an SSE refusal (`Sluice-Refused`): a node that cannot
    /// take the stream (connection limit, connect rate, draining, backend
    /// unreachable) answers an event-stream request with a 200 whose body
    /// is only a comment and a `retry:`, and ends it, so that browsers
    /// retry. No parser dispatches an event from it.
    pub fn refused(&self) -> Option<&str> {
        self.headers.get(REFUSED)?.to_str().ok()
    }

    /// The next frame (events, comments and retry fields alike), `None` when
    /// the stream ended. Panics after `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<SseFrame> {
        tokio::time::timeout(timeout, self.next_frame_inner())
            .await
            .expect("SSE frame within the timeout")
    }

    /// Cancel-safe: bytes are taken from the stream only when they arrived,
    /// and then decoded at once.
    async fn next_frame_inner(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(f) = self.decoder.next_frame() {
                return Some(f);
            }
            let chunk = self.stream.as_mut()?.next().await;
            match chunk {
                Some(Ok(b)) => assert!(self.decoder.feed(&b), "SSE line too long"),
                _ => return None,
            }
        }
    }

    /// Like [`SseClient::next_event`], but `Err(())` instead of a panic when
    /// no event arrives within `timeout` (for clients that then reconnect).
    pub async fn try_next_event(&mut self, timeout: Duration) -> Result<Option<SseFrame>, ()> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.next_frame_inner()).await {
                Err(_) => return Err(()),
                Ok(None) => return Ok(None),
                Ok(Some(f)) if f.is_event() => return Ok(Some(f)),
                Ok(Some(_)) => {}
            }
        }
    }

    /// The next event frame (skips heartbeats and `retry:`-only frames).
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseFrame> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next_frame(left).await?;
            if f.is_event() {
                return Some(f);
            }
        }
    }
}

/// An SSE request on a plain TCP socket: nothing is read until the test
/// asks, so the server sees a client that stalls (or vanishes) when the
/// test wants it to.
pub struct RawSse {
    pub stream: TcpStream,
    /// The response status, once the head was read (0 before).
    pub status: u16,
    buf: Vec<u8>,
    body: Option<ChunkedBody>,
    decoder: SseDecoder,
}

impl RawSse {
    /// Sends `GET path` for an event stream and reads nothing yet.
    pub async fn request(addr: SocketAddr, path: &str) -> RawSse {
        Self::request_with(addr, path, &[], None).await
    }

    /// [`RawSse::request`] with more request headers (`Last-Event-ID`) and,
    /// when `recv_buffer` is set, that receive buffer (`SO_RCVBUF`, which
    /// also stops the kernel from growing it): the server can then be ahead
    /// of what the test has read by little more than its own buffers.
    pub async fn request_with(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        recv_buffer: Option<u32>,
    ) -> RawSse {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = socket.connect(addr).await.expect("connect");
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("write request");
        RawSse {
            stream,
            status: 0,
            buf: Vec::with_capacity(4 * 1024),
            body: None,
            decoder: SseDecoder::default(),
        }
    }

    /// Sends the request and reads the response head.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawSse {
        let mut s = Self::request(addr, path).await;
        s.read_head().await;
        s
    }

    /// Reads until the response head is complete (once; later calls do
    /// nothing).
    pub async fn read_head(&mut self) {
        while self.body.is_none() {
            if let Some(head) = ResponseHead::parse(&self.buf) {
                self.status = head.status;
                self.body = Some(ChunkedBody::new(head.chunked));
                let rest = self.buf.split_off(head.len);
                self.buf.clear();
                self.feed_body(&rest);
                return;
            }
            assert!(self.buf.len() <= MAX_HEAD, "response head too long");
            let n = self.stream.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "connection closed before the response head");
        }
    }

    fn feed_body(&mut self, bytes: &[u8]) {
        let (body, decoder) = (self.body.as_mut().expect("head read"), &mut self.decoder);
        assert!(
            body.feed(bytes, |b| decoder.feed(b)),
            "malformed chunked SSE body"
        );
    }

    /// The next frame, `None` when the stream ended. Panics after `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<SseFrame> {
        tokio::time::timeout(timeout, async {
            self.read_head().await;
            loop {
                if let Some(f) = self.decoder.next_frame() {
                    return Some(f);
                }
                if self.body.as_ref().is_some_and(ChunkedBody::ended) {
                    return None;
                }
                self.buf.clear();
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {
                        let bytes = std::mem::take(&mut self.buf);
                        self.feed_body(&bytes);
                        self.buf = bytes;
                    }
                }
            }
        })
        .await
        .expect("SSE frame within the timeout")
    }

    /// The next event frame (skips heartbeats and `retry:`-only frames).
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseFrame> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next_frame(left).await?;
            if f.is_event() {
                return Some(f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(wire: &[u8], piece: usize) -> Vec<SseFrame> {
        let mut d = SseDecoder::default();
        for p in wire.chunks(piece) {
            assert!(d.feed(p));
        }
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn frames_split_anywhere() {
        let wire = b"retry: 1500\n\n: hb\n\nid: 3\nevent: progress\ndata: {\"a\":1}\ndata: x\n\nid: 4\r\ndata:y\r\n\r\n";
        let want = vec![
            SseFrame {
                retry: Some(1500),
                ..SseFrame::default()
            },
            SseFrame {
                comment: Some("hb".into()),
                ..SseFrame::default()
            },
            SseFrame {
                id: Some("3".into()),
                event: Some("progress".into()),
                data: Some("{\"a\":1}\nx".into()),
                ..SseFrame::default()
            },
            SseFrame {
                id: Some("4".into()),
                data: Some("y".into()),
                ..SseFrame::default()
            },
        ];
        for piece in [1, 2, 5, wire.len()] {
            assert_eq!(frames(wire, piece), want, "pieces of {piece}");
        }
    }

    #[test]
    fn advice_without_blank_lines_is_read_at_once() {
        // The edge's wire: the opening `retry:` and heartbeats end with no
        // blank line, and the next event's block follows them.
        let wire = b"retry: 1500\n: hb\n: hb\nid: 3\nevent: progress\ndata: {}\n\n: hb\n";
        let want = vec![
            SseFrame {
                retry: Some(1500),
                ..SseFrame::default()
            },
            SseFrame {
                comment: Some("hb".into()),
                ..SseFrame::default()
            },
            SseFrame {
                comment: Some("hb".into()),
                ..SseFrame::default()
            },
            SseFrame {
                id: Some("3".into()),
                event: Some("progress".into()),
                data: Some("{}".into()),
                ..SseFrame::default()
            },
            SseFrame {
                comment: Some("hb".into()),
                ..SseFrame::default()
            },
        ];
        for piece in [1, 2, 5, wire.len()] {
            assert_eq!(frames(wire, piece), want, "pieces of {piece}");
        }
        let mut d = SseDecoder::default();
        assert!(d.feed(wire));
        assert_eq!(d.next_dispatched().and_then(|f| f.id), Some("3".into()));
        assert_eq!(d.next_dispatched(), None);
    }

    #[test]
    fn ids_are_positions_or_seqs() {
        assert_eq!(id_seq(b"17.AbCd3w"), Some(17));
        assert_eq!(id_seq(b"17"), Some(17));
        assert_eq!(id_seq(b"m0AbC"), None);
        assert_eq!(id_seq(b""), None);
    }

    #[test]
    fn response_heads() {
        let h = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        assert_eq!(
            ResponseHead::parse(h),
            Some(ResponseHead {
                status: 200,
                chunked: true,
                refused: false,
                len: h.len() - 4
            })
        );
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nSluice-Refused: draining\r\n\r\n";
        assert!(ResponseHead::parse(r).is_some_and(|h| h.refused && h.status == 200));
        assert_eq!(ResponseHead::parse(b"HTTP/1.1 503 Busy\r\n"), None);
        assert_eq!(
            ResponseHead::parse(b"HTTP/1.1 503 Busy\r\n\r\n").map(|h| (h.status, h.chunked)),
            Some((503, false))
        );
    }
}
