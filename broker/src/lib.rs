//! Sluice's write side.
//!
//! - [`Publisher`]: the producer library for Rust job workers (pooled, cheap
//!   to clone, safe to share).
//! - [`function`]: the `sluice_publish` Redis function that makes a publish
//!   one atomic round trip, loaded with `FUNCTION LOAD REPLACE`.
//! - [`reader`]: snapshot and history reads shared by the CLI and the edge.
//! - [`nodes`]: the node registry's read side (`sluice status`, dashboard).
//! - [`connect`]: Redis pools and dedicated connections with sane timeouts.

pub mod cluster;
pub mod connect;
pub mod error;
pub mod function;
pub mod nodes;
pub mod publisher;
pub mod reader;
pub mod resp;
pub mod token;

pub use publisher::{
    Outgoing, PublishError, PublishOptions, Published, Publisher, PublisherConfig,
};
pub use error::Unavailable;
pub use reader::ReadError;
