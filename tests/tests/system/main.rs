//! System tests on the built images and tools (tests/setup.sh): the compose
//! stack behind HAProxy (`compose`), the dashboard in a headless Chromium
//! (`dashboard`) and browsers' EventSources through a reconnect storm
//! (`event_sources`; `browser` drives Chromium for both). The heavy ones
//! take [`sluice_tests::chaos::exclusive`] so they never overlap.
//!
//! ```sh
//! cargo test -p sluice-tests --test system -- --nocapture
//! ```

mod browser;
mod compose;
mod dashboard;
mod event_sources;
