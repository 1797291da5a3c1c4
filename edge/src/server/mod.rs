//! The node's own accept loop. Every TCP connection the node holds is
//! accepted here, counted, bounded and given deadlines before hyper sees
//! it:
//!
//! - at most `max_open` connections (streams and plain requests alike);
//!   over it a connection is answered `503` at once and closed, so the
//!   process never runs out of descriptors for `/healthz` or Redis;
//! - a request head must arrive within `head_timeout`, counted from when
//!   the connection opened or its previous response ended (slowloris, idle
//!   keep-alive);
//! - a write the peer accepts no byte of for `write_timeout` ends the
//!   connection ([`io::Guarded`]), including streams and WebSocket
//!   sessions after their upgrade; and so does data the peer's host does
//!   not acknowledge for that long (`TCP_USER_TIMEOUT`: a host that
//!   vanished, even on a quiet stream);
//! - an accept that fails for lack of resources (`EMFILE`, `ENFILE`,
//!   `ENOBUFS`, `ENOMEM`) is retried with a growing pause, and the node
//!   reports itself not ready until an accept succeeds again.
//!
//! HTTP/1.1 only: HTTP/2 is for the load balancer to terminate (with TLS),
//! a cleartext HTTP/2 preface is refused like any malformed request.
//!
//! A connection's first request head is read here: an event stream is
//! served on the stream path ([`stream`]: the router, then the answer
//! written straight to the socket, no HTTP dispatcher or buffers held
//! while it streams); any other request, with the bytes already read, and
//! everything after it on that connection, goes to hyper.
//!
//! Each connection is served on the node's [`Tasks`]; on `stop` the loop
//! stops accepting and every connection is shut down gracefully (an
//! in-flight response completes, keep-alive ends).

pub mod direct;
pub mod io;
pub mod stream;
pub mod upgrade;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use tokio::io::AsyncWriteExt as _;

use self::direct::StreamSocket;
use self::io::{Guarded, Peer, SharedTcp, Slot};
use self::stream::{After, Prefixed, Sniffed};
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;

/// Longest pause between accepts that fail for lack of resources.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);

/// The limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_open: usize,
    pub head_timeout: Duration,
    pub write_timeout: Duration,
}

/// The node's open TCP connections as readiness and `/metrics` see them.
pub struct Connections {
    slots: Arc<Semaphore>,
    max: usize,
    accepting: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Connections {
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Connections {
            slots: Arc::new(Semaphore::new(max)),
            max,
            accepting: AtomicBool::new(true),
            metrics,
        }
    }

    /// Open TCP connections (streams, requests, idle keep-alive).
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn at_limit(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// False while accepting fails for lack of resources.
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }
}

/// The answer to a connection over the limit: written without reading the
/// request, then the connection is closed.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 91\r\n\
\r\n\
{\"error\":\"too_many_open_connections\",\"message\":\"this node holds its limit of connections\"}\n";

/// Accepts and serves connections until `stop` fires, then shuts down the
/// open ones gracefully (they are tracked on `tasks`, which aborts them if
/// they overstay).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    conns: Arc<Connections>,
    tasks: Tasks,
    stop: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout);
    let http = Arc::new(http);
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = MIN_ACCEPT_BACKOFF;
                if !conns.accepting.swap(true, Ordering::Relaxed) {
                    tracing::info!("accepting connections again");
                }
                stream
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                conns.metrics.accept_errors.inc();
                if conns.accepting.swap(false, Ordering::Relaxed) {
                    tracing::error!(cause = %e, "cannot accept connections; not ready until it can");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let Ok(permit) = conns.slots.clone().try_acquire_owned() else {
            conns.metrics.tcp_refused.inc();
            // Best effort: a fresh socket takes these few bytes at once.
            let _ = stream.try_write(FULL);
            continue;
        };
        let slot = Slot::new(permit, conns.metrics.clone());
        let _ = stream.set_nodelay(true);
        // A host that vanished (no ACKs) is given up once sent data stays
        // unacknowledged for the write timeout; retransmissions alone would
        // keep it ~15 min, and a quiet SSE stream never fills its buffers.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(limits.write_timeout));
        tasks.spawn(connection(
            stream,
            slot,
            app.clone(),
            http.clone(),
            limits,
            conns.metrics.clone(),
            stop.clone(),
        ));
    }
    tracing::debug!(open = conns.open(), "stopped accepting");
}

/// Serves one connection until it ends, or gracefully ends it on `stop`:
/// stream requests on the stream path ([`stream`]) for as long as they
/// come, then everything else through the HTTP layer.
async fn connection(
    stream: TcpStream,
    slot: Slot,
    app: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    limits: ServerLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let peer = Arc::new(Peer::default());
    let stream = Arc::new(stream);
    let mut io = Guarded::new(
        SharedTcp(stream.clone()),
        limits.write_timeout,
        peer.clone(),
        metrics.clone(),
        Some(slot),
    );
    let read = loop {
        // Counted from when the connection opened or the previous
        // response ended, as the HTTP layer counts it.
        let head = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            head = tokio::time::timeout(limits.head_timeout, stream::read_head(&mut io)) => head,
        };
        let (mut request, close) = match head {
            Err(_elapsed) => {
                metrics.head_timeouts.inc();
                tracing::debug!("no request head within the head timeout");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(cause = %e, "connection ended before a request");
                return;
            }
            Ok(Ok(Sniffed::Closed)) => return,
            Ok(Ok(Sniffed::Other(read))) => break read,
            Ok(Ok(Sniffed::Stream { request, close })) => (request, close),
        };
        request.extensions_mut().insert(peer.clone());
        request
            .extensions_mut()
            .insert(StreamSocket::new(stream.clone()));
        match stream::respond(&mut io, &app, *request, close).await {
            Ok(After::KeepAlive) if !stop.is_cancelled() => {}
            Ok(After::KeepAlive | After::Close) => {
                let _ = io.shutdown().await;
                return;
            }
            // The session owns the socket from now on; it runs here, in
            // the connection's task.
            Ok(After::Upgrade(on_socket)) => return on_socket(Box::new(io)).await,
            Err(e) => {
                tracing::debug!(cause = %e, "stream connection ended with an error");
                return;
            }
        }
    };
    // Boxed: the HTTP layer's connection state is allocated only for the
    // connections it serves, not in every stream's task.
    Box::pin(general(
        Prefixed::new(read, io),
        peer,
        app,
        http,
        metrics,
        stop,
    ))
    .await;
}

/// Serves the rest of a connection through the HTTP layer (hyper), the
/// bytes already read first.
async fn general(
    io: Prefixed<Guarded<SharedTcp>>,
    peer: Arc<Peer>,
    app: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let app = app.clone();
        async move { app.oneshot(req).await }
    });
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics.head_timeouts.inc();
        }
        tracing::debug!(cause = %e, "connection ended with an error");
    }
}

/// Accept errors that concern one connection only (it was gone before it
/// was accepted): accept the next one at once.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_limit_answer_is_well_framed_json() {
        let text = std::str::from_utf8(FULL).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .expect("content-length");
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"], "too_many_open_connections");
    }

    #[test]
    fn only_lost_connections_are_skipped_without_a_pause() {
        use std::io::{Error, ErrorKind};
        assert!(is_per_connection(&Error::from(
            ErrorKind::ConnectionAborted
        )));
        // EMFILE and ENFILE: the process or the system is out of files.
        assert!(!is_per_connection(&Error::from_raw_os_error(24)));
        assert!(!is_per_connection(&Error::from_raw_os_error(23)));
    }
}
