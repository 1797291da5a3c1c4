//! A minimal SSE client for tests: frames as they arrive, with deadlines.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl SseFrame {
    pub fn seq(&self) -> Option<u64> {
        self.id.as_deref().and_then(|s| s.parse().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("null")).expect("frame data is JSON")
    }

    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }
}

pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    stream: Option<futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    buf: BytesMut,
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
                buf: BytesMut::new(),
                body,
            };
        }
        SseClient {
            status,
            headers,
            stream: Some(resp.bytes_stream().boxed()),
            buf: BytesMut::new(),
            body: None,
        }
    }

    /// The next frame (events, comments and retry fields alike), `None` when
    /// the stream ended. Panics after `timeout`.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<SseFrame> {
        tokio::time::timeout(timeout, self.next_frame_inner())
            .await
            .expect("SSE frame within the timeout")
    }

    async fn next_frame_inner(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(pos) = find_blank_line(&self.buf) {
                let raw = self.buf.split_to(pos + 2);
                return Some(parse_frame(&raw[..pos]));
            }
            let chunk = self.stream.as_mut()?.next().await;
            match chunk {
                Some(Ok(b)) => self.buf.extend_from_slice(&b),
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

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

fn parse_frame(raw: &[u8]) -> SseFrame {
    let text = String::from_utf8_lossy(raw);
    let mut f = SseFrame::default();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix(':') {
            f.comment = Some(c.trim().to_owned());
            continue;
        }
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        let v = v.strip_prefix(' ').unwrap_or(v).to_owned();
        match k {
            "id" => f.id = Some(v),
            "event" => f.event = Some(v),
            "data" => {
                f.data = Some(match f.data.take() {
                    Some(prev) => format!("{prev}\n{v}"),
                    None => v,
                })
            }
            "retry" => f.retry = v.parse().ok(),
            _ => {}
        }
    }
    f
}
