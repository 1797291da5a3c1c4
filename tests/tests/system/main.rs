//! System tests on the built images and tools (tests/setup.sh): the compose
//! stack behind HAProxy (`compose`), the dashboard in a headless Chromium
//! (`dashboard`), browsers' EventSources through a reconnect storm
//! (`event_sources`) and one page following 50 tasks on one EventSource
//! and on one WebSocket through the compose stack while edges die
//! (`many_tasks`; `browser` drives Chromium for all three). The heavy ones
//! take [`sluice_tests::chaos::exclusive`] so they never overlap.
//!
//! ```sh
//! cargo test -p sluice-tests --test system -- --nocapture
//! ```

mod browser;
mod compose;
mod cross_origin;
mod dashboard;
mod event_sources;
mod many_tasks;
