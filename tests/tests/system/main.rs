//! System tests on the built images and tools (tests/setup.sh): the compose
//! stack behind HAProxy (`compose`) and the dashboard in a headless
//! Chromium (`dashboard`). The two heavy ones take
//! [`sluice_tests::chaos::exclusive`] so they never overlap.
//!
//! ```sh
//! cargo test -p sluice-tests --test system -- --nocapture
//! ```

mod compose;
mod dashboard;
