//! The stream path: a connection whose request is an event stream
//! (`GET /v1/tasks/{task}/events`, `GET /v1/events`) is served here, not
//! by the general HTTP layer. The request head is read into a buffer of
//! its own and parsed with `httparse`; the request goes through the same
//! router (authorization, CORS, extractors, admission: nothing is served
//! differently), and the answer is written straight to the socket: the
//! head, then the body as HTTP/1.1 chunks, one `writev` per chunk.
//!
//! Once the head is written the connection holds only its socket, the
//! session (the response body) and a few bytes of state: no read buffer,
//! no write buffer, no HTTP dispatcher between the session and the socket.
//! While the body streams the socket is watched for the peer closing it,
//! which ends the session at once.
//!
//! Anything else — another route or method, a head that does not parse, a
//! request with a body, an upgrade, a head over [`MAX_HEAD`] — is handed to
//! the HTTP layer (hyper) with the bytes already read
//! ([`Sniffed::Other`]), which answers it exactly as before, refusals
//! included. A connection that already served a request through the HTTP
//! layer stays there (keep-alive): its later stream requests are served
//! the general way, with the same behaviour and more memory.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::{Body, HttpBody as _};
use axum::http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version,
};
use axum::Router;
use bytes::{Buf as _, Bytes};
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tower::ServiceExt as _;

use super::direct::{chunk_prefix, Direct, StreamSocket};
use super::upgrade::{OnSocket, UpgradeSlot};

/// Longest request head read on this path. A longer one goes to the HTTP
/// layer with the bytes read so far; its own limits and refusals (414,
/// 431) apply, and its own head timeout from then on.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields (as the HTTP layer: more is a 431 there).
const MAX_HEADERS: usize = 100;
/// The head buffer's first size (a browser's stream request with cookies
/// fits); it grows up to [`MAX_HEAD`].
const FIRST_READ: usize = 1024;
/// Longest bodiless answer collected before its head is written.
const MAX_PLAIN_BODY: usize = 64 * 1024;

/// What the start of a connection (or the next request on it) holds.
#[derive(Debug)]
pub enum Sniffed {
    /// A stream request for the router; `close`: the client asked for the
    /// connection to close after the response.
    Stream {
        request: Box<Request<Body>>,
        close: bool,
    },
    /// Anything else: the bytes read so far, for the HTTP layer.
    Other(Vec<u8>),
    /// The peer closed the connection before a whole head arrived.
    Closed,
}

/// Reads one request head (the caller bounds it with the head timeout)
/// and sorts it.
pub async fn read_head<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<Sniffed> {
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(Sniffed::Closed);
        }
        match classify(&buf) {
            Parsed::Partial => {}
            Parsed::Stream(request, close) => return Ok(Sniffed::Stream { request, close }),
            Parsed::Other => return Ok(Sniffed::Other(buf)),
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Sniffed::Other(buf));
        }
    }
}

/// What the bytes read so far hold.
enum Parsed {
    /// Not yet a whole head.
    Partial,
    /// A stream request, and whether the client asked to close after it.
    Stream(Box<Request<Body>>, bool),
    /// Anything the HTTP layer should answer.
    Other,
}

fn classify(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        // Bytes after the head (a body, a pipelined request): the HTTP
        // layer's business.
        Ok(httparse::Status::Complete(len)) if len == buf.len() => match stream_request(&req) {
            Some((request, close)) => Parsed::Stream(Box::new(request), close),
            None => Parsed::Other,
        },
        Ok(httparse::Status::Complete(_)) | Err(_) => Parsed::Other,
    }
}

/// The router's request for a stream head (a WebSocket handshake carries
/// an [`UpgradeSlot`]), with whether the client asked to close after it;
/// `None` when the head is not a plain stream request.
fn stream_request(req: &httparse::Request<'_, '_>) -> Option<(Request<Body>, bool)> {
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let path = req.path?;
    let upgrade = match route(path)? {
        Route::Events => false,
        Route::WebSocket => true,
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut close = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if (name == header::UPGRADE && !upgrade)
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || (name == header::CONTENT_LENGTH && value != "0")
        {
            return None;
        }
        if name == header::CONNECTION {
            close |= value
                .to_str()
                .ok()?
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
        headers.append(name, value);
    }
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = path.parse::<Uri>().ok()?;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    if upgrade {
        request.extensions_mut().insert(UpgradeSlot::default());
    }
    Some((request, close))
}

/// The routes served on this path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// SSE: a task's stream, or the stream of many tasks.
    Events,
    /// A WebSocket of one task, or of the tasks the client subscribes to.
    WebSocket,
}

/// The stream route of a request target (the query string aside).
fn route(target: &str) -> Option<Route> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match path {
        "/v1/events" => return Some(Route::Events),
        "/v1/ws" => return Some(Route::WebSocket),
        _ => {}
    }
    let rest = path.strip_prefix("/v1/tasks/")?;
    let (task, last) = rest.split_once('/')?;
    if task.is_empty() {
        return None;
    }
    match last {
        "events" => Some(Route::Events),
        "ws" => Some(Route::WebSocket),
        _ => None,
    }
}

/// What follows an answer on the stream path.
pub enum After {
    /// The connection may serve another request.
    KeepAlive,
    /// The connection closes.
    Close,
    /// A WebSocket handshake was answered 101: the session runs on the
    /// socket.
    Upgrade(OnSocket),
}

/// Routes `request` and writes the answer to `io`: a body of known length
/// with `content-length`, a stream as chunks until it ends or the peer
/// closes, a WebSocket handshake's 101 (then the session is the caller's
/// to run).
pub async fn respond<S>(
    io: &mut S,
    app: &Router,
    request: Request<Body>,
    close: bool,
) -> io::Result<After>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let slot = request.extensions().get::<UpgradeSlot>().cloned();
    let socket = request.extensions().get::<StreamSocket>().cloned();
    let response = match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n");
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(on_socket) = slot.as_ref().and_then(UpgradeSlot::take) else {
            return Ok(After::Close);
        };
        head.extend_from_slice(b"connection: upgrade\r\n\r\n");
        io.write_all(&head).await?;
        return Ok(After::Upgrade(on_socket));
    }
    // A handshake that was refused: the connection ends with the answer.
    let close = close || slot.is_some();
    let after = if close {
        After::Close
    } else {
        After::KeepAlive
    };
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    if let Some(len) = body.size_hint().exact() {
        // An answer of known length (an error, a 204): head and body in
        // one write.
        let bytes = axum::body::to_bytes(body, MAX_PLAIN_BODY)
            .await
            .map_err(io::Error::other)?;
        debug_assert_eq!(bytes.len() as u64, len);
        if !parts.status.is_informational()
            && parts.status != StatusCode::NO_CONTENT
            && parts.status != StatusCode::NOT_MODIFIED
        {
            head.extend_from_slice(format!("content-length: {}\r\n", bytes.len()).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(&bytes);
        io.write_all(&head).await?;
        return Ok(after);
    }
    head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    io.write_all(&head).await?;
    drop(head);
    // Direct writes, if the handler enabled them: the part of a frame the
    // socket did not take is written here before anything else.
    let direct = socket.and_then(|s| s.take());
    let mut chunks = body.into_data_stream();
    // The peer says nothing on a stream; a read that returns is its close
    // (or bytes it should not send, dropped).
    let mut probe = [0u8; 8];
    loop {
        tokio::select! {
            biased;
            () = carried(direct.as_deref()) => write_carry(io, direct.as_deref()).await?,
            next = chunks.next() => match next {
                Some(Ok(chunk)) => {
                    write_carry(io, direct.as_deref()).await?;
                    write_chunk(io, &chunk).await?;
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => break,
            },
            read = io.read(&mut probe) => if read? == 0 {
                return Ok(After::Close);
            },
        }
    }
    write_carry(io, direct.as_deref()).await?;
    io.write_all(b"0\r\n\r\n").await?;
    Ok(after)
}

/// Resolves when a direct write left part of a frame to write; never
/// without direct writes.
async fn carried(direct: Option<&Direct>) {
    match direct {
        Some(d) => d.carry_ready.notified().await,
        None => std::future::pending().await,
    }
}

/// Writes what a direct write left, if anything.
async fn write_carry<W: AsyncWrite + Unpin>(io: &mut W, direct: Option<&Direct>) -> io::Result<()> {
    match direct.and_then(Direct::take_carry) {
        Some(rest) => io.write_all(&rest).await,
        None => Ok(()),
    }
}

/// Writes one chunk (`{len:x}\r\n{data}\r\n`) with vectored writes: one
/// system call when the socket takes it all.
async fn write_chunk<W: AsyncWrite + Unpin>(io: &mut W, data: &Bytes) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut prefix = [0u8; 18];
    let n = chunk_prefix(data.len(), &mut prefix);
    let mut slices = [
        IoSlice::new(&prefix[..n]),
        IoSlice::new(data),
        IoSlice::new(b"\r\n"),
    ];
    write_all_vectored(io, &mut slices).await
}

/// Writes every slice, in as few system calls as the socket allows.
pub async fn write_all_vectored<W: AsyncWrite + Unpin + ?Sized>(
    io: &mut W,
    slices: &mut [IoSlice<'_>],
) -> io::Result<()> {
    let mut slices = slices;
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written = io.write_vectored(slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// A socket with bytes already read from it in front: the HTTP layer reads
/// those first.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Prefixed {
            prefix: Bytes::from(prefix),
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stream_routes_take_the_stream_path() {
        for (target, want) in [
            ("/v1/events?task=a&task=b", Route::Events),
            ("/v1/events", Route::Events),
            ("/v1/tasks/t1/events", Route::Events),
            ("/v1/tasks/t1/events?after=3", Route::Events),
            ("/v1/tasks/t1/ws", Route::WebSocket),
            ("/v1/ws?mode=latest", Route::WebSocket),
        ] {
            assert_eq!(route(target), Some(want), "{target}");
        }
        for no in [
            "/v1/tasks//events",
            "/v1/tasks/a/b/events",
            "/v1/tasks/t1",
            "/v1/tasks/t1/history",
            "/v1/events/x",
            "/healthz",
            "/",
        ] {
            assert_eq!(route(no), None, "{no}");
        }
    }

    #[test]
    fn heads_are_sorted() {
        let stream =
            b"GET /v1/tasks/t1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
        assert!(matches!(classify(&stream[..20]), Parsed::Partial));
        let Parsed::Stream(req, close) = classify(stream) else {
            panic!("a stream request")
        };
        assert_eq!(req.uri(), "/v1/tasks/t1/events");
        assert_eq!(req.headers()[header::ACCEPT], "text/event-stream");
        assert!(!close);
        let closing = b"GET /v1/events?task=a HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n";
        assert!(req.extensions().get::<UpgradeSlot>().is_none());
        assert!(matches!(classify(closing), Parsed::Stream(_, true)));
        let ws = b"GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let Parsed::Stream(req, false) = classify(ws) else {
            panic!("a WebSocket handshake")
        };
        assert!(req.extensions().get::<UpgradeSlot>().is_some());
        for other in [
            &b"POST /v1/tasks/t1/events HTTP/1.1\r\ncontent-length: 2\r\n\r\n"[..],
            b"GET /v1/tasks/t1/events HTTP/1.0\r\n\r\n",
            b"GET /v1/tasks/t1/history HTTP/1.1\r\n\r\n",
            b"GET /v1/tasks/t1/events HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /v1/tasks/t1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /v1/tasks/t1/events HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
            b"G@T /v1/events HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(classify(other), Parsed::Other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[tokio::test]
    async fn the_http_layer_reads_the_sniffed_bytes_first() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.expect("write");
        drop(b);
        let mut io = Prefixed::new(b"hello".to_vec(), a);
        let mut got = String::new();
        io.read_to_string(&mut got).await.expect("read");
        assert_eq!(got, "hello world");
    }
}
