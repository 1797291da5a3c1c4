//! `GET /`: the live dashboard, one self-contained page (inline CSS and JS,
//! no CDN, no build step), and `GET /v1/dashboard/events`: the node's stats
//! as Server-Sent Events ([`crate::dashboard`]), one frame per second.
//!
//! `?task=a&task=b` (or `?task=a,b`) adds those tasks' snapshots, at most
//! [`MAX_WATCHED`], each authorized like a subscription (with auth on,
//! `?token=` must allow each). The page passes its own `?task=` on, so
//! `/?task=job-42` follows job-42. A draining node refuses new viewers, and
//! viewers are capped per node: both refusals are [`refusal`] streams for
//! the page's EventSource, so it comes back.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use sluice_shared::TaskId;

use super::admission::draining;
use super::extract::{parse_task, Caller};
use super::sse::{event_stream, refusal};
use crate::error::ApiError;
use crate::status::NodeStatus;

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");
/// Most dashboard streams one node serves at once.
pub const MAX_VIEWERS: usize = 32;
/// Most tasks one viewer can follow.
pub const MAX_WATCHED: usize = 8;

/// Scripts and styles are inline; nothing may load from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        PAGE,
    )
        .into_response()
}

pub async fn events(
    State(status): State<Arc<NodeStatus>>,
    headers: HeaderMap,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Response {
    stats(status, &caller, query.as_deref()).unwrap_or_else(|e| refusal(e, &headers))
}

fn stats(
    status: Arc<NodeStatus>,
    caller: &Caller,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let watched = watched_tasks(query, caller)?;
    if status.is_draining() {
        return Err(draining());
    }
    let Some(watcher) = status.cluster.watch(MAX_VIEWERS) else {
        return Err(ApiError::unavailable(
            "too_many_viewers",
            format!("this node serves at most {MAX_VIEWERS} dashboards at once"),
            Duration::from_secs(5),
        ));
    };
    tracing::debug!(
        viewers = status.cluster.watchers(),
        "dashboard viewer joined"
    );
    Ok(event_stream(crate::dashboard::stats(
        status, watcher, watched,
    )))
}

/// The `?task=` list of a stats request, each checked like a subscription.
fn watched_tasks(query: Option<&str>, caller: &Caller) -> Result<Vec<TaskId>, ApiError> {
    let mut tasks: Vec<TaskId> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k != "task" {
            continue;
        }
        for t in v.split(',').filter(|t| !t.is_empty()) {
            let task = parse_task(t)?;
            if !tasks.contains(&task) {
                tasks.push(task);
            }
        }
    }
    if tasks.len() > MAX_WATCHED {
        return Err(ApiError::bad_request(
            "too_many_tasks",
            format!("a dashboard follows at most {MAX_WATCHED} tasks"),
        ));
    }
    for task in &tasks {
        caller.authorize(task)?;
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_is_self_contained() {
        let page = super::PAGE;
        assert!(page.contains("/v1/dashboard/events"));
        for external in ["http://", "https://", "//cdn", "<link rel=\"stylesheet\""] {
            assert!(!page.contains(external), "page must not load {external}");
        }
    }
}
