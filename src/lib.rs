//! cadang: backup and restore orchestration for a colocation data center.
//!
//! * [`engine`] — the deduplicating, encrypted repository engine (a library
//!   that knows nothing of the layers above it);
//! * [`workflow`] — the data center's SOP as pure state machines;
//! * [`cli`] — the `cadang` command line.

pub mod cli;
pub mod engine;
pub mod workflow;
