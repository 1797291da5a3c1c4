//! Client transports: each frames one session (see [`crate::session`]).

pub mod sse;
pub mod ws;
