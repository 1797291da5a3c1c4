//! A pausable loopback TCP proxy. Put it between one edge node and Redis
//! (give the node `--redis-url redis://127.0.0.1:<proxy port>`) and pause
//! it: the node's connections stay open but nothing moves either way, so the
//! node stalls exactly like a node whose host froze, while every other node
//! and the producers go on.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct PausableProxy {
    pub addr: SocketAddr,
    paused: Arc<watch::Sender<bool>>,
    stop: CancellationToken,
}

impl PausableProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> PausableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (paused, _) = watch::channel(false);
        let paused = Arc::new(paused);
        let stop = CancellationToken::new();
        let (p, s) = (paused.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                // Cancel-safe: `cancelled` and `accept`.
                let accepted = tokio::select! {
                    biased;
                    _ = s.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((down, _)) = accepted else { continue };
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                conns.spawn(pump(dr, uw, p.subscribe(), s.clone()));
                conns.spawn(pump(ur, dw, p.subscribe(), s.clone()));
            }
            conns.shutdown().await;
        });
        PausableProxy { addr, paused, stop }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stops forwarding (bytes already read are held until resume).
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

impl Drop for PausableProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies one direction, holding each chunk while paused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Cancel-safe: `cancelled` and `read` (no bytes lost on drop).
        let n = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
