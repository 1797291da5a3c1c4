//! Upgrades on the stream path: a WebSocket request read there goes
//! through the router like any other; its handler answers 101 and leaves
//! what should run on the socket in the request's [`UpgradeSlot`]. The
//! stream path writes the 101 head and runs it on the connection's own
//! socket, in the connection's task: no HTTP layer and no buffer of its own
//! are held under the session.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};

/// A connection's socket after the upgrade.
pub trait StreamIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> StreamIo for T {}

/// The socket an upgraded session is given.
pub type Socket = Box<dyn StreamIo>;

/// What runs on the socket once the 101 head is written.
pub type OnSocket = Box<dyn FnOnce(Socket) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A request extension of stream-path requests: where the handler leaves
/// its [`OnSocket`].
#[derive(Clone, Default)]
pub struct UpgradeSlot(Arc<Mutex<Option<OnSocket>>>);

impl UpgradeSlot {
    pub fn put(&self, on_socket: OnSocket) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(on_socket);
    }

    pub fn take(&self) -> Option<OnSocket> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
