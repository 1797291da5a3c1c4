//! Cross-origin reads (`--cors-origin`): a page on another origin
//! (`https://app.example.com` reading streams from a separate stream host)
//! may open EventSources and WebSockets and fetch snapshots and history.
//!
//! - Exact origins (`--cors-origin https://app.example.com,...`): those
//!   pages get `Access-Control-Allow-Origin: <their origin>` (with `Vary:
//!   Origin`), and a preflight allows the `Authorization` and
//!   `Last-Event-ID` request headers.
//! - `*`: any page, without credentials: `Authorization` is not allowed
//!   cross-origin, so with auth on, tokens travel in the URL (`?token=`).
//!
//! Only reads (`GET`, `HEAD`) are allowed: publishing is for servers.
//! WebSocket upgrades are not subject to CORS (browsers send `Origin` and
//! do not check an answer); the allow-list does not gate them.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Response headers a cross-origin page may read.
const EXPOSED: [&str; 4] = [
    "sluice-more",
    "sluice-next-after",
    "sluice-refused",
    "retry-after",
];

/// Checks `--cors-origin` values: `*` alone, or origins
/// `http(s)://host[:port]` without a path.
pub fn validate(origins: &[String]) -> Result<(), String> {
    if origins.iter().any(|o| o == "*") {
        if origins.len() > 1 {
            return Err("--cors-origin '*' cannot be combined with other origins".into());
        }
        return Ok(());
    }
    for o in origins {
        let rest = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
            .ok_or_else(|| {
                format!("--cors-origin {o:?}: an origin starts with https:// or http://")
            })?;
        let host_ok = !rest.is_empty()
            && rest.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !host_ok {
            return Err(format!(
                "--cors-origin {o:?}: an origin is scheme://host[:port], with no path or trailing slash"
            ));
        }
    }
    Ok(())
}

/// The CORS layer of the public router; `None` without `--cors-origin`.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let last_event_id = HeaderName::from_static("last-event-id");
    let exposed: Vec<HeaderName> = EXPOSED.iter().map(|h| HeaderName::from_static(h)).collect();
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::HEAD])
        .expose_headers(exposed)
        .max_age(Duration::from_secs(600));
    Some(if origins.iter().any(|o| o == "*") {
        base.allow_origin(AllowOrigin::any())
            .allow_headers([last_event_id])
    } else {
        let list: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        base.allow_origin(AllowOrigin::list(list))
            .allow_headers([header::AUTHORIZATION, last_event_id])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        let ok = |v: &[&str]| validate(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&["*"]).is_ok());
        assert!(ok(&["https://app.example.com", "http://localhost:3000"]).is_ok());
        assert!(ok(&["*", "https://a.example"]).is_err());
        assert!(ok(&["app.example.com"]).is_err());
        assert!(ok(&["https://app.example.com/"]).is_err());
        assert!(ok(&["https://app.example.com/path"]).is_err());
        assert!(ok(&["https://"]).is_err());
    }
}
