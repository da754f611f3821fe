//! cadang: backup and restore orchestration for a colocation data center.
//!
//! * [`engine`] — the deduplicating, encrypted repository engine (a library
//!   that knows nothing of the layers above it);
//! * [`workflow`] — the data center's SOP as pure state machines;
//! * [`catalog`] — the only SQL: the catalog on SQLite or PostgreSQL;
//! * [`app`] — use cases: load, decide with the workflow, persist with an
//!   audit row in one transaction;
//! * [`rpc`] — the gRPC control plane, thin adapters over [`app`];
//! * [`scheduler`] and [`jobs`] — scheduled runs of backup plans, executed through the
//!   engine into one repository per agency; [`notify`] delivers their notifications;
//! * [`daemon`] — the daemon's composition root and lifecycle; [`config`] its settings;
//! * [`cli`] — the `cadang` command line.

pub mod agent;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod hub;
pub mod jobs;
pub mod notify;
pub mod remote;
pub mod restic;
pub mod rpc;
pub mod scheduler;
pub mod workflow;
