//! Request extractors: what a handler needs from a request, each checked
//! the same way everywhere, with the same JSON error. A handler lists them
//! in the order the checks must run (axum runs them left to right):
//!
//! - [`Task`]: the `{task}` path segment, a valid task id (400
//!   `invalid_task`; a path that is not valid percent-encoded UTF-8 is the
//!   framework's own 400);
//! - [`Resume`]: the resume point, `Last-Event-ID` winning over `?after`
//!   (400 `invalid_resume_point`);
//! - [`Caller`]: the caller's token, from `Authorization: Bearer` or
//!   `?token=` (EventSource cannot set headers), for [`Access`] to judge;
//! - [`ReadTask`] (task, then authorization) and [`Subscribe`] (task,
//!   resume point, then authorization): the combinations the routes use;
//! - [`SubscribeMany`]: the tasks of `/v1/events?task=..`, their cursor and
//!   the delivery mode, each task authorized;
//! - [`StreamMode`]: `?mode=latest&interval=1s` (400 `invalid_mode`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use sluice_shared::position::{Cursor, Position};
use sluice_shared::{Seq, TaskId};

use crate::auth::Access;
use crate::error::ApiError;
use crate::session::Sessions;
use crate::subscription::{Mode, Start};

/// The `{task}` path segment, validated.
pub struct Task(pub TaskId);

impl<S: Send + Sync> FromRequestParts<S> for Task {
    /// A path the framework cannot decode keeps its own rejection (turned
    /// into a JSON error by the router's `json_errors` layer).
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        parse_task(&raw)
            .map(Task)
            .map_err(IntoResponse::into_response)
    }
}

/// Where a subscriber starts: `Last-Event-ID` (wins: browsers send it on
/// reconnect while the URL keeps the original `after`), else `?after=`,
/// else the latest event. A position (`17.AbCd3f`) is verified before
/// anything is delivered; a bare seq (`17`) is not.
pub struct Resume(pub Start);

impl<S: Send + Sync> FromRequestParts<S> for Resume {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Resume(match resume_point(parts)? {
            Some((what, raw)) => Start::After(parse_position(what, &raw)?),
            None => Start::Latest,
        }))
    }
}

/// The raw resume point and where it came from: `Last-Event-ID` wins over
/// `?after=`.
fn resume_point(parts: &Parts) -> Result<Option<(&'static str, String)>, ApiError> {
    if let Some(v) = parts.headers.get("last-event-id") {
        let v = v.to_str().map_err(|_| {
            ApiError::bad_request("invalid_resume_point", "Last-Event-ID is not ASCII")
        })?;
        return Ok(Some(("Last-Event-ID", v.to_owned())));
    }
    Ok(query_param(parts, "after").map(|v| ("after", v)))
}

/// Parses a task position given by a client (`17` or `17.AbCd3f`).
pub fn parse_position(what: &str, raw: &str) -> Result<Position, ApiError> {
    Position::parse(raw).map_err(|e| {
        ApiError::bad_request(
            "invalid_resume_point",
            format!("{what} {e}; a stream of many tasks resumes from the id of its last frame"),
        )
    })
}

/// How a stream of many tasks delivers: `?mode=all` (the default: every
/// event) or `?mode=latest&interval=<duration>` (at most one event per
/// task per interval, the newest; `interval` from 100ms to 60s, default
/// 1s).
pub struct StreamMode(pub Mode);

/// Default and bounds of `?interval=`.
pub const LATEST_INTERVAL: Duration = Duration::from_secs(1);
pub const LATEST_INTERVAL_MIN: Duration = Duration::from_millis(100);
pub const LATEST_INTERVAL_MAX: Duration = Duration::from_secs(60);

impl<S: Send + Sync> FromRequestParts<S> for StreamMode {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let interval = query_param(parts, "interval");
        match query_param(parts, "mode").as_deref() {
            None | Some("all") if interval.is_none() => Ok(StreamMode(Mode::All)),
            None | Some("all") => Err(ApiError::bad_request(
                "invalid_mode",
                "interval applies to mode=latest only",
            )),
            Some("latest") => {
                let every = match interval {
                    None => LATEST_INTERVAL,
                    Some(raw) => humantime::parse_duration(&raw).map_err(|e| {
                        ApiError::bad_request(
                            "invalid_mode",
                            format!("interval: {e} (e.g. 1s, 500ms)"),
                        )
                    })?,
                };
                if !(LATEST_INTERVAL_MIN..=LATEST_INTERVAL_MAX).contains(&every) {
                    return Err(ApiError::bad_request(
                        "invalid_mode",
                        "interval must be between 100ms and 60s",
                    ));
                }
                Ok(StreamMode(Mode::Latest(every)))
            }
            Some(_) => Err(ApiError::bad_request(
                "invalid_mode",
                "mode must be all or latest",
            )),
        }
    }
}

/// A request for a stream of many tasks (`/v1/events?task=a&task=b`): the
/// tasks (each valid, sorted, repeated ones once, at most
/// `--max-tasks-per-connection`), where each starts (the cursor of
/// `Last-Event-ID` or `?after=`, which must have been made for the same
/// tasks), the mode, then authorization of every task (401, or 403 naming
/// the first task the token does not cover).
pub struct SubscribeMany {
    pub tasks: Vec<TaskId>,
    pub starts: Vec<Start>,
    pub mode: Mode,
}

impl<S: Send + Sync> FromRequestParts<S> for SubscribeMany
where
    Arc<Access>: FromRef<S>,
    Arc<Sessions>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let max = Arc::<Sessions>::from_ref(state).max_tasks;
        let raw = parts.uri.query().unwrap_or("");
        let mut tasks = Vec::new();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            if k == "task" {
                tasks.push(parse_task(&v)?);
            }
        }
        tasks.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        tasks.dedup();
        if tasks.is_empty() {
            return Err(ApiError::bad_request(
                "missing_task",
                "name the tasks to follow: /v1/events?task=a&task=b",
            ));
        }
        if tasks.len() > max {
            return Err(ApiError::bad_request(
                "too_many_tasks",
                format!(
                    "{} tasks; a connection follows at most {max} (--max-tasks-per-connection)",
                    tasks.len()
                ),
            ));
        }
        let starts = match resume_point(parts)? {
            None => vec![Start::Latest; tasks.len()],
            Some((what, raw)) => {
                let hash = Cursor::set_hash(tasks.iter().map(TaskId::as_str));
                let cursor = Cursor::parse(&raw, hash, tasks.len()).map_err(|e| {
                    ApiError::bad_request(
                        "invalid_resume_point",
                        format!("{what} {e}: a stream of many tasks resumes from the id of its last frame"),
                    )
                })?;
                cursor
                    .positions
                    .into_iter()
                    .map(|p| p.map_or(Start::Latest, Start::After))
                    .collect()
            }
        };
        let StreamMode(mode) = StreamMode::from_request_parts(parts, state).await?;
        let Ok(caller) = Caller::from_request_parts(parts, state).await;
        for task in &tasks {
            caller.authorize(task)?;
        }
        Ok(SubscribeMany {
            tasks,
            starts,
            mode,
        })
    }
}

/// The caller's credential: the bearer token of `Authorization`, else
/// `?token=`. Extracting it never fails; [`Caller::authorize`] judges it.
pub struct Caller {
    token: Option<String>,
    access: Arc<Access>,
}

impl Caller {
    /// Checks that the caller may read `task` (401 without a valid token,
    /// 403 when the token does not cover the task; always fine when the
    /// node runs open).
    pub fn authorize(&self, task: &TaskId) -> Result<(), ApiError> {
        self.access.authorize(self.token.as_deref(), task)
    }

    /// Checks that the caller holds a valid token (401 otherwise), whatever
    /// tasks it covers.
    pub fn check_token(&self) -> Result<(), ApiError> {
        self.access.check_token(self.token.as_deref())
    }

    /// The check as a closure a session keeps (`/v1/ws` subscriptions).
    pub fn into_authorize(self) -> crate::session::Authorize {
        Box::new(move |task| self.authorize(task))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller
where
    Arc<Access>: FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let token = match bearer(&parts.headers) {
            Some(t) => Some(t.to_owned()),
            None => query_param(parts, "token"),
        };
        Ok(Caller {
            token,
            access: Arc::<Access>::from_ref(state),
        })
    }
}

/// A task the caller may read: [`Task`], then [`Caller::authorize`].
pub struct ReadTask(pub TaskId);

impl<S: Send + Sync> FromRequestParts<S> for ReadTask
where
    Arc<Access>: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Task(task) = Task::from_request_parts(parts, state).await?;
        let Ok(caller) = Caller::from_request_parts(parts, state).await;
        caller
            .authorize(&task)
            .map_err(IntoResponse::into_response)?;
        Ok(ReadTask(task))
    }
}

/// A subscription request: [`Task`], then [`Resume`], then
/// [`Caller::authorize`] (so a bad request is a 400 before it is a 401).
pub struct Subscribe {
    pub task: TaskId,
    pub start: Start,
}

impl<S: Send + Sync> FromRequestParts<S> for Subscribe
where
    Arc<Access>: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Task(task) = Task::from_request_parts(parts, state).await?;
        let Resume(start) = Resume::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Ok(caller) = Caller::from_request_parts(parts, state).await;
        caller
            .authorize(&task)
            .map_err(IntoResponse::into_response)?;
        Ok(Subscribe { task, start })
    }
}

/// Parses a task id given by a client.
pub fn parse_task(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(raw).map_err(|e| ApiError::bad_request("invalid_task", format!("task id {e}")))
}

/// Parses a seq given by a client (`after`, `Last-Event-ID`).
pub fn parse_seq(what: &str, raw: &str) -> Result<Seq, ApiError> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "invalid_resume_point",
            format!("{what} must be a non-negative integer seq"),
        ));
    }
    raw.parse::<Seq>().map_err(|_| {
        ApiError::bad_request("invalid_resume_point", format!("{what} is out of range"))
    })
}

/// The value of query parameter `name`; the last one if it is repeated.
pub fn query_param(parts: &Parts, name: &str) -> Option<String> {
    let raw = parts.uri.query().unwrap_or("");
    form_urlencoded::parse(raw.as_bytes())
        .filter(|(k, _)| k == name)
        .last()
        .map(|(_, v)| v.into_owned())
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    #[test]
    fn seqs() {
        assert_eq!(parse_seq("after", "0").ok(), Some(0));
        assert_eq!(parse_seq("after", " 17 ").ok(), Some(17));
        for bad in [
            "",
            "-1",
            "1.5",
            "abc",
            "0x10",
            "99999999999999999999999",
            "18446744073709551616",
        ] {
            assert!(parse_seq("after", bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_seq("after", "18446744073709551615").ok(),
            Some(u64::MAX)
        );
    }

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("hv"));
        assert_eq!(bearer(&h), Some("abc"));
    }

    fn parts(uri: &str, last_event_id: Option<&str>) -> Parts {
        let mut req = Request::builder().uri(uri);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        req.body(()).expect("request").into_parts().0
    }

    async fn resume(uri: &str, last_event_id: Option<&str>) -> Result<Start, ApiError> {
        let mut p = parts(uri, last_event_id);
        Resume::from_request_parts(&mut p, &()).await.map(|r| r.0)
    }

    #[tokio::test]
    async fn last_event_id_wins_over_after_and_the_last_after_counts() {
        assert_eq!(resume("/x", None).await.ok(), Some(Start::Latest));
        assert_eq!(
            resume("/x?after=3&after=5", None).await.ok(),
            Some(Start::after(5))
        );
        assert_eq!(
            resume("/x?after=3", Some("9")).await.ok(),
            Some(Start::after(9))
        );
        let p = resume("/x", Some("9.AAECAw")).await.expect("position");
        assert_eq!(
            p,
            Start::After(Position {
                seq: 9,
                tag: Some(sluice_shared::Tag::from_bytes([0, 1, 2, 3]))
            })
        );
        let bad = resume("/x?after=3", Some("nine"))
            .await
            .expect_err("refused");
        assert_eq!(bad.code, "invalid_resume_point");
    }
}
