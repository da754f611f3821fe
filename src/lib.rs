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
pub mod hook;
pub mod hub;
pub mod jobs;
pub mod notify;
pub mod remote;
pub mod restic;
pub mod rpc;
pub mod scheduler;
pub mod workflow;

/// Sets the allocator's thresholds; called once at start, before any thread.
///
/// glibc raises its mmap threshold after large frees, after which 8–16 MiB pack and
/// read buffers would come from the heap and never be returned: peak memory would
/// grow with the data set. A fixed 4 MiB threshold keeps such buffers mmapped and
/// released on free. A fixed threshold also pins the trim threshold at 128 KiB: every
/// free of a chunk-sized buffer (1 MiB on average) at the top of a thread's heap
/// handed its pages back to the kernel, and the next buffer faulted and zeroed them
/// again — 6% of a backup streamed through an agent, daemon and agent together, and
/// the caches that work spoiled. 64 MiB of slack per heap keeps those pages;
/// [`release_free_memory`] hands them back when a job ends.
pub fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Hands the allocator's free pages back to the system: the daemon and the agent call
/// it when a job ends, so an idle process keeps none of the slack [`tune_allocator`]
/// allows while a job streams.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
