//! Test harness of Sluice, and its load generator.
//!
//! # Layout
//!
//! Fixtures:
//! - [`edge`]: [`TestEdge`], an in-process edge on a fresh Redis container,
//!   on a running Redis or on the memory store (`--insecure` plus the
//!   test's flags); [`EdgeHandle`] to reach and stop it.
//! - [`redis_fixture`]: [`RedisFixture`], a Redis container per test.
//! - [`cluster`]: a real Redis Cluster of `redis-server` processes.
//! - [`bins`]: the workspace's binaries, built on first use, for tests that
//!   run them as processes.
//!
//! - [`util`]: unique task ids, free ports, logs, waiting on a condition
//!   (re-exported at the root).
//!
//! Clients and judges:
//! - [`sse`]: the one SSE parser ([`sse::SseLines`], [`sse::SseDecoder`]),
//!   [`SseClient`] over reqwest and [`sse::RawSse`] on a raw socket.
//! - [`ws`]: the WebSocket client [`WsClient`].
//! - [`checker`]: [`DeliveryLog`] and its verdict (lost, duplicated, out
//!   of order, unannounced gaps, honest resets).
//! - [`conformance`]: the `Store` contract clause by clause
//!   ([`store_conformance!`] makes a test per clause and backend), and the
//!   `publish_batch` contract.
//!
//! Scenario machinery:
//! - [`chaos`]: fault injection (restartable Redis, pausable proxy, edge
//!   processes), reconnecting client fleets, a producer, the exclusive lock
//!   of the heavy scenarios.
//! - [`load`]: the load generator behind `sluice-load` (`src/bin/`).
//!
//! The integration tests are four binaries in `tests/`: `it` (everything
//! that can share a process), `chaos` (fault, cluster and soak scenarios,
//! one at a time), `system` (compose stack, browser) and `slow_client`
//! (measures its own memory, so it runs alone).

pub mod bins;
pub mod chaos;
pub mod checker;
pub mod cluster;
pub mod conformance;
pub mod edge;
pub mod load;
pub mod redis_fixture;
pub mod rss;
pub mod sse;
pub mod util;
pub mod ws;

pub use checker::DeliveryLog;
pub use edge::{spawn_edge, EdgeHandle, TestEdge};
pub use redis_fixture::RedisFixture;
pub use sse::{SseClient, SseFrame};
pub use util::{free_port, init_logs, python, unique_task, wait_until};
pub use ws::{WsClient, WsItem};
