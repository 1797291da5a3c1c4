//! Sluice's write side, and the Redis code the CLI and the edge share.
//!
//! # Layout
//!
//! Publishing:
//! - [`publisher`]: [`Publisher`], the producer library for Rust job workers
//!   (pooled, cheap to clone, safe to share), and [`PublishError`].
//! - [`function`]: the `sluice_publish` Redis function (`sluice_publish.lua`)
//!   that makes a publish one atomic round trip, loaded with
//!   `FUNCTION LOAD REPLACE`.
//!
//! Reading:
//! - [`reader`]: snapshot and history reads shared by the CLI and the edge.
//! - [`nodes`]: the node registry's read side (`sluice status`, dashboard).
//! - [`resp`]: every parse of a Redis reply (stream entries, `XREAD` and
//!   `XINFO` replies, `CLUSTER SLOTS`), used by the modules above, the
//!   cluster router and the edge's feed reader.
//!
//! Connections and errors:
//! - [`connect`]: the entry points: a pool for one Redis or a Redis Cluster
//!   (picked from the URL), dedicated connections for blocking reads.
//! - [`direct`]: connections to one Redis node (timeouts, TLS, URLs).
//! - [`cluster`]: routing of Sluice's commands over a Redis Cluster.
//! - [`error`]: typed Redis failures ([`Unavailable`]) and the one
//!   classifier of Redis error codes ([`error::classify`]).
//!
//! Also: [`token`] (subscriber tokens) and the `sluice` CLI (`main.rs`,
//! `cli.rs`, `cli/`: one module per subcommand, `cli/args.rs` for what they
//! share).
//!
//! Imports go one way (no module imports from one that imports it):
//! `publisher` → `connect` → `cluster` → `direct`; `reader`, `nodes` and
//! `cluster` → `resp`; `publisher`, `nodes` and `cluster` → `error`.

pub mod cluster;
pub mod connect;
pub mod direct;
pub mod error;
pub mod function;
pub mod nodes;
pub mod pool;
pub mod publisher;
pub mod reader;
pub mod resp;
pub mod token;

pub use error::Unavailable;
pub use publisher::{
    Outgoing, PublishError, PublishOptions, Published, Publisher, PublisherConfig,
};
pub use reader::ReadError;
