//! A WebSocket test client (tokio-tungstenite).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct WsClient {
    pub socket: Socket,
}

/// What a read produced.
#[derive(Debug)]
pub enum WsItem {
    Envelope(serde_json::Value),
    Closed(Option<u16>),
}

impl WsClient {
    /// Connects; `Err(status)` when the upgrade was refused.
    pub async fn connect(url: &str) -> Result<WsClient, u16> {
        match tokio_tungstenite::connect_async(url).await {
            Ok((socket, _)) => Ok(WsClient { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("websocket connect to {url} failed: {e}"),
        }
    }

    /// The next envelope or the close code. Panics after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> WsItem {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let msg = tokio::time::timeout(left, self.socket.next())
                .await
                .expect("websocket message within the timeout");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return WsItem::Envelope(serde_json::from_str(&t).expect("text frame is JSON"))
                }
                Some(Ok(Message::Close(f))) => return WsItem::Closed(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return WsItem::Closed(None),
            }
        }
    }

    /// The next envelope; panics on close.
    pub async fn envelope(&mut self, timeout: Duration) -> serde_json::Value {
        match self.next(timeout).await {
            WsItem::Envelope(v) => v,
            WsItem::Closed(c) => panic!("websocket closed ({c:?}) while an envelope was expected"),
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .socket
            .send(Message::Close(Some(
                tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: CloseCode::Normal,
                    reason: "bye".into(),
                },
            )))
            .await;
    }
}
