//! `GET /v1/tasks/{task}` (snapshot) and `GET /v1/tasks/{task}/history`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_shared::Seq;

use super::extract::{parse_seq, query_param, ReadTask};
use crate::error::ApiError;
use crate::store::Store;

/// Default and largest `limit` of a history request.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
pub const MAX_HISTORY_LIMIT: usize = 1000;

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
    ReadTask(task): ReadTask,
    Page { after, limit }: Page,
) -> Result<Response, ApiError> {
    let events = store.history(&task, after, limit).await?;
    let mut body = Vec::with_capacity(events.len() * 128 + 2);
    body.push(b'[');
    for (i, ev) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&ev.envelope_json());
    }
    body.push(b']');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
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
            Some(v) => parse_seq("after", &v)?,
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
