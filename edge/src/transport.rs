//! Client transports over the same subscription machinery.

pub mod sse;
