//! The dedup engine: a library that knows nothing of the daemon, the catalog,
//! the SOP workflow, gRPC or the command line.
//!
//! It owns the repository format (`docs/FORMAT.md`) and every operation on
//! it: init and key slots, backup, restore with verification, check, forget
//! and prune, copy. Storage goes through [`store::Store`], the only user of
//! `object_store`.

pub mod archive;
pub mod backup;
pub mod browse;
pub mod check;
pub mod chunker;
pub mod copy;
pub mod crypto;
pub mod error;
pub mod forget;
pub mod format;
pub mod id;
pub mod index;
pub mod ingest;
pub mod lock;
pub mod pack;
pub mod packer;
pub mod prune;
pub mod readahead;
pub mod repo;
pub mod restore;
pub mod rewrite;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod tree;
pub mod writebehind;
pub mod xattrs;

pub use error::{Error, Result};

/// Stack of a worker thread: tree walks recurse once per directory level (up to
/// [`tree::MAX_DEPTH`]), and work stolen by a thread runs on its stack. Only
/// the pages used are ever backed by memory.
const WORKER_STACK: usize = 16 << 20;

/// A pool of worker threads named `<name>-<i>`: `threads` (unless 0), or one per CPU
/// this process may use (cgroup quotas included), but at least `min`.
///
/// # Errors
/// `InvalidInput` when the threads cannot be started.
pub fn worker_pool(
    name: &'static str,
    threads: Option<usize>,
    min: usize,
) -> Result<rayon::ThreadPool> {
    let threads = threads
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
        .max(min);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .stack_size(WORKER_STACK)
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start the {name} threads: {e}")))
}
pub use repo::{OpenOptions, Repository};
pub use store::{Store, StoreOptions};
