//! `GET /v1/tasks/{task}` (snapshot) and `GET /v1/tasks/{task}/history`.
//!
//! A history response is one page: at most `limit` events, and no more once
//! their envelopes reach `--history-page-bytes`. `Sluice-More: true` tells
//! the client the page stopped at a limit, and `Sluice-Next-After` which
//! `after` continues it.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_shared::Seq;

use super::extract::{parse_position, query_param, ReadTask};
use crate::error::ApiError;
use crate::store::{PageLimit, Store};

/// Default and largest `limit` of a history request.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// `true` when the page stopped at its limit (events or bytes): ask again
/// with `after` = [`NEXT_AFTER`]. `false` when it reached the end of the
/// retained log.
pub const MORE: HeaderName = HeaderName::from_static("sluice-more");
/// The `after` of the next page: the last seq of this one (the request's
/// `after` when it is empty).
pub const NEXT_AFTER: HeaderName = HeaderName::from_static("sluice-next-after");

/// The byte budget of one history response (`--history-page-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct HistoryPageBytes(pub usize);

pub async fn snapshot(
    State(store): State<Arc<dyn Store>>,
    ReadTask(task): ReadTask,
) -> Result<Response, ApiError> {
    match store.snapshot(&task).await? {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(ApiError::not_found(format!("task {task} is unknown"))),
    }
}

pub async fn history(
    State(store): State<Arc<dyn Store>>,
    State(HistoryPageBytes(bytes)): State<HistoryPageBytes>,
    ReadTask(task): ReadTask,
    Page { after, limit }: Page,
) -> Result<Response, ApiError> {
    let page = store
        .history(&task, after, PageLimit::new(limit, bytes))
        .await?;
    let next_after = page.events.last().map_or(after, |e| e.seq);
    // The envelopes are already encoded; the body is allocated once, at
    // its size, and the page dropped before it is written.
    let len = page.events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 1;
    let mut body = Vec::with_capacity(len.max(2));
    body.push(b'[');
    for (i, ev) in page.events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&ev.json);
    }
    body.push(b']');
    let more = HeaderValue::from_static(if page.more { "true" } else { "false" });
    drop(page);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (MORE, more),
            (NEXT_AFTER, HeaderValue::from(next_after)),
        ],
        body,
    )
        .into_response())
}

/// `?after=N&limit=M` of a history request (`after` 0 and `limit`
/// [`DEFAULT_HISTORY_LIMIT`] when absent).
pub struct Page {
    after: Seq,
    limit: usize,
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let after = match query_param(parts, "after") {
            Some(v) => parse_position("after", &v)?.seq,
            None => 0,
        };
        let limit = match query_param(parts, "limit") {
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_limit",
                        format!("limit must be an integer from 1 to {MAX_HISTORY_LIMIT}"),
                    ))
                }
            },
            None => DEFAULT_HISTORY_LIMIT,
        };
        Ok(Page { after, limit })
    }
}
