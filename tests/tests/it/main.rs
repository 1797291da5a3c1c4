//! The integration tests that can share a process: each starts its own
//! Redis container (or none) and edge nodes, and uses task ids of its own
//! (`unique_task`), so they run in parallel (`--test-threads`). Tests that
//! read an edge's node-wide counters (`metrics`, `protections`,
//! `refusals`) start an edge of their own for it.
//!
//! ```sh
//! cargo test -p sluice-tests --test it                 # all of them
//! cargo test -p sluice-tests --test it -- sse_resume::  # one area
//! ```

mod admin;
mod cors;
mod feeds;
mod fuzz_inputs;
mod held_memory;
mod hostile;
mod interop;
mod k8s_manifests;
mod load_smoke;
mod lost_writes;
mod metrics;
mod multi_task;
mod protections;
mod publisher;
mod python_producer;
mod redis_acl;
mod redis_pool;
mod redis_tls;
mod refusals;
mod registry;
mod security;
mod sse_resume;
mod store_conformance;
mod stream_path;
mod websocket;
