//! The dedup engine: a library that knows nothing of the daemon, the catalog,
//! the SOP workflow, gRPC or the command line.
//!
//! It owns the repository format (`docs/FORMAT.md`) and every operation on
//! it: init and key slots, backup, restore with verification, check, forget
//! and prune, copy. Storage goes through [`store::Store`], the only user of
//! `object_store`.

pub mod backup;
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
pub mod repo;
pub mod restore;
pub mod snapshot;
pub mod store;
pub mod tree;

pub use error::{Error, Result};
pub use repo::{OpenOptions, Repository};
pub use store::{Store, StoreOptions};
