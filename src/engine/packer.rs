//! Packing and uploading new blobs during a backup (or copy, or repack).
//!
//! Workers compress and encrypt blobs on their own threads, then append the
//! sealed envelope to a shared pack under a short lock (a memcpy). A full
//! pack is sealed and handed to an upload task on the tokio runtime; at most
//! `max_in_flight` uploads run at once, which bounds memory. After every few
//! landed packs an index object listing exactly those packs is written —
//! never before they landed — so an interrupted run's chunks are reused by
//! the next one.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::crypto::{Keys, NONCE_ROOM, SEAL_OVERHEAD};
use super::error::{Error, Result};
use super::format::{ObjectKind, blob_aad, encode_blob_payload, seal_postcard};
use super::id::{BlobId, BlobType, IndexId};
use super::index::{Index, IndexFile, IndexPack};
use super::pack::PackBuilder;
use super::repo::{Repository, pack_key};
use super::store::Store;

/// Write an index object after this many packs have landed.
const INDEX_EVERY_PACKS: usize = 4;
/// Buffers of landed packs kept for the next packs. A fresh pack-sized buffer comes
/// straight from the kernel, which maps and zeroes every page on first touch: for a
/// backup that is as much work as writing the packs out again. One is enough (an
/// upload usually lands before the next pack fills), and each kept buffer is a pack's
/// worth of memory.
const SPARE_BUFFERS: usize = 1;

/// Counters of what a packer stored.
#[derive(Debug, Default)]
pub struct PackerStats {
    /// New data blobs.
    pub data_blobs: AtomicU64,
    /// New tree blobs.
    pub tree_blobs: AtomicU64,
    /// Plaintext bytes of new blobs.
    pub raw_bytes: AtomicU64,
    /// Bytes added to storage (envelopes, headers).
    pub stored_bytes: AtomicU64,
    /// Packs uploaded.
    pub packs: AtomicU64,
}

struct Shared {
    store: Store,
    keys: Keys,
    landed: Mutex<Vec<IndexPack>>,
    written_indexes: Mutex<Vec<IndexId>>,
    error: Mutex<Option<Error>>,
    stats: PackerStats,
    spare: Mutex<Vec<Vec<u8>>>,
}

/// The packer's upload slots are never closed; should that ever change, the run stops
/// with an error rather than a panic.
fn upload_slots_closed() -> Error {
    Error::Refused("the packer's upload slots were closed".into())
}

impl Shared {
    /// Keeps a landed pack's buffer for a later pack, if no one else holds it.
    fn recycle(&self, bytes: Bytes) {
        if let Ok(buffer) = bytes.try_into_mut() {
            let mut spare = self
                .spare
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if spare.len() < SPARE_BUFFERS {
                spare.push(Vec::from(buffer));
            }
        }
    }
}

/// Hook for crash-point tests: called after each durable step of the commit
/// protocol with its name (`pack`, `index`).
pub type StepHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Shared packer for one backup (or copy) run.
pub struct Packer {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    data: Mutex<PackBuilder>,
    tree: Mutex<PackBuilder>,
    pending: Mutex<HashSet<BlobId>>,
    sem: Arc<Semaphore>,
    max_in_flight: usize,
    pack_size: usize,
    level: i32,
    hook: Option<StepHook>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Envelopes of payloads prepared elsewhere. Its length only grows: every byte of
    /// the part an envelope uses is overwritten, so none is zeroed again.
    static SEAL_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Packer {
    /// A packer writing to `repo`.
    pub fn new(repo: &Repository, max_in_flight: usize, hook: Option<StepHook>) -> Self {
        Self {
            shared: Arc::new(Shared {
                store: repo.store().clone(),
                keys: repo.keys().clone(),
                landed: Mutex::new(Vec::new()),
                written_indexes: Mutex::new(Vec::new()),
                error: Mutex::new(None),
                stats: PackerStats::default(),
                spare: Mutex::new(Vec::new()),
            }),
            handle: repo.handle().clone(),
            data: Mutex::new(PackBuilder::new(0)),
            tree: Mutex::new(PackBuilder::new(0)),
            // (builders grow to at most one pack plus one blob; see PackBuilder)
            pending: Mutex::new(HashSet::new()),
            sem: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            pack_size: repo.config().pack_size as usize,
            level: repo.config().compression_level,
            hook,
        }
    }

    /// Use another zstd level than the repository's default for this run.
    pub fn with_level(mut self, level: Option<i32>) -> Self {
        if let Some(l) = level {
            self.level = l.clamp(0, 22);
        }
        self
    }

    /// Statistics so far.
    pub fn stats(&self) -> &PackerStats {
        &self.shared.stats
    }

    /// Fail fast if an upload already failed.
    ///
    /// # Errors
    /// The first upload error.
    pub fn check_failed(&self) -> Result<()> {
        let mut e = self
            .shared
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match e.take() {
            Some(err) => {
                // Later callers see the same failure, said once: a storage error is
                // kept as it is, anything else as its message.
                *e = Some(match &err {
                    Error::Storage {
                        path,
                        message,
                        transient,
                    } => Error::Storage {
                        path: path.clone(),
                        message: message.clone(),
                        transient: *transient,
                    },
                    other => Error::Storage {
                        path: "upload".into(),
                        message: other.to_string(),
                        transient: false,
                    },
                });
                Err(err)
            }
            None => Ok(()),
        }
    }

    /// Claim a blob id for this run. Returns `false` when the blob is already
    /// stored (per `index`) or being stored by another worker.
    pub fn claim(&self, index: &Index, id: &BlobId) -> bool {
        !index.contains(id)
            && self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(*id)
    }

    /// Compress, encrypt and pack a blob previously claimed with [`Packer::claim`].
    ///
    /// # Errors
    /// An earlier upload failure.
    pub fn add(&self, ty: BlobType, id: BlobId, data: &[u8]) -> Result<()> {
        let keys = &self.shared.keys;
        SCRATCH.with(|s| {
            let env = &mut *s.borrow_mut();
            // Compressed right after the room for the nonce, and sealed there.
            env.clear();
            env.resize(NONCE_ROOM, 0);
            encode_blob_payload(data, self.level, env);
            keys.seal_in_place(&blob_aad(ty, &id), env, 0);
            self.add_sealed(ty, id, env, data.len() as u32)
        })
    }

    /// Whether `id` was claimed by this packer (stored or on its way).
    pub fn is_pending(&self, id: &BlobId) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(id)
    }

    /// Add a blob whose payload (codec byte and data, as [`encode_blob_payload`] makes
    /// it) was prepared elsewhere — by an agent — and checked by the caller against `id`.
    /// Only the encryption happens here.
    pub fn add_payload(
        &self,
        ty: BlobType,
        id: BlobId,
        payload: &[u8],
        raw_len: u32,
    ) -> Result<()> {
        let keys = &self.shared.keys;
        SEAL_SCRATCH.with(|s| {
            let env = &mut *s.borrow_mut();
            let len = payload.len() + SEAL_OVERHEAD;
            if env.len() < len {
                env.resize(len, 0);
            }
            // Encrypted as it is copied: the payload is read once.
            keys.seal_into(&blob_aad(ty, &id), payload, &mut env[..len]);
            self.add_sealed(ty, id, &env[..len], raw_len)
        })
    }

    /// Pack an already sealed envelope (same keys on both sides).
    ///
    /// # Errors
    /// An earlier upload failure.
    pub fn add_sealed(
        &self,
        ty: BlobType,
        id: BlobId,
        envelope: &[u8],
        raw_len: u32,
    ) -> Result<()> {
        let st = &self.shared.stats;
        match ty {
            BlobType::Data => st.data_blobs.fetch_add(1, Ordering::Relaxed),
            BlobType::Tree => st.tree_blobs.fetch_add(1, Ordering::Relaxed),
        };
        st.raw_bytes.fetch_add(raw_len as u64, Ordering::Relaxed);
        let full = {
            let mut p = match ty {
                BlobType::Data => self.data.lock(),
                BlobType::Tree => self.tree.lock(),
            }
            .unwrap_or_else(std::sync::PoisonError::into_inner);
            p.reserve_for(envelope.len(), self.pack_size);
            p.add_sealed(ty, id, envelope, raw_len);
            if p.len() >= self.pack_size {
                Some(std::mem::replace(&mut *p, self.next_builder()))
            } else {
                None
            }
        };
        if let Some(p) = full {
            self.upload(p)?;
        }
        self.check_failed()
    }

    /// An empty pack, in a landed pack's buffer when one is spare.
    fn next_builder(&self) -> PackBuilder {
        let spare = self
            .shared
            .spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match spare {
            Some(buffer) => PackBuilder::with_buffer(buffer),
            None => PackBuilder::new(self.pack_size + (1 << 20)),
        }
    }

    fn upload(&self, p: PackBuilder) -> Result<()> {
        let (id, bytes, entries) = p.finish(&self.shared.keys);
        let permit = self
            .handle
            .block_on(self.sem.clone().acquire_owned())
            .map_err(|_| upload_slots_closed())?;
        let shared = self.shared.clone();
        let hook = self.hook.clone();
        self.handle.spawn(async move {
            let len = bytes.len() as u64;
            let key = pack_key(&id);
            let want = id.0;
            let bytes = Bytes::from(bytes);
            let res = shared
                .store
                .put_create(&key, bytes.clone(), move |e| {
                    *blake3::hash(e).as_bytes() == want
                })
                .await;
            shared.recycle(bytes);
            match res {
                Ok(()) => {
                    shared.stats.stored_bytes.fetch_add(len, Ordering::Relaxed);
                    shared.stats.packs.fetch_add(1, Ordering::Relaxed);
                    if let Some(h) = &hook {
                        h("pack");
                    }
                    let batch = {
                        let mut l = shared
                            .landed
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        l.push(IndexPack { id, blobs: entries });
                        if l.len() >= INDEX_EVERY_PACKS {
                            Some(std::mem::take(&mut *l))
                        } else {
                            None
                        }
                    };
                    if let Some(b) = batch {
                        if let Err(e) = write_index(&shared, b).await {
                            shared
                                .error
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .get_or_insert(e);
                        } else if let Some(h) = &hook {
                            h("index");
                        }
                    }
                }
                Err(e) => {
                    shared
                        .error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_or_insert(e);
                }
            }
            drop(permit);
        });
        Ok(())
    }

    /// Upload the partial packs, wait for every upload, and index what landed.
    /// Returns the entries of every pack this packer stored.
    ///
    /// # Errors
    /// The first upload or index error.
    pub fn finish(&self) -> Result<Vec<IndexId>> {
        for m in [&self.data, &self.tree] {
            let p = std::mem::replace(
                &mut *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
                PackBuilder::new(0),
            );
            if !p.is_empty() {
                self.upload(p)?;
            }
        }
        self.flush()?;
        Ok(self
            .shared
            .written_indexes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone())
    }

    /// Wait for in-flight uploads and index whatever landed (also used when a
    /// run is cancelled, so its uploaded chunks are reused next time).
    ///
    /// # Errors
    /// The first upload or index error.
    pub fn flush(&self) -> Result<()> {
        let all = self
            .handle
            .block_on(
                self.sem
                    .clone()
                    .acquire_many_owned(self.max_in_flight as u32),
            )
            .map_err(|_| upload_slots_closed())?;
        drop(all);
        let rest = std::mem::take(
            &mut *self
                .shared
                .landed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !rest.is_empty() {
            self.handle.block_on(write_index(&self.shared, rest))?;
            if let Some(h) = &self.hook {
                h("index");
            }
        }
        self.check_failed()
    }
}

async fn write_index(shared: &Shared, packs: Vec<IndexPack>) -> Result<()> {
    let f = IndexFile {
        version: 1,
        packs,
        supersedes: Vec::new(),
    };
    let sealed = seal_postcard(&shared.keys, ObjectKind::Index, &f);
    let id = IndexId(*blake3::hash(&sealed).as_bytes());
    let want = id.0;
    let len = sealed.len() as u64;
    shared
        .store
        .put_create(&format!("index/{id}"), Bytes::from(sealed), move |e| {
            *blake3::hash(e).as_bytes() == want
        })
        .await?;
    shared.stats.stored_bytes.fetch_add(len, Ordering::Relaxed);
    shared
        .written_indexes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::repo::test_repository;

    #[test]
    fn an_upload_failure_is_reported_the_same_to_every_caller() {
        let (_rt, _dir, repo) = test_repository();
        let packer = Packer::new(&repo, 2, None);
        for first in [
            Error::Storage {
                path: "data/ab/abcd".into(),
                message: "No space left on device (os error 28)".into(),
                transient: false,
            },
            Error::Cancelled,
        ] {
            let said = first.to_string();
            *packer.shared.error.lock().unwrap() = Some(first);
            let errors: Vec<String> = (0..20)
                .map(|_| packer.check_failed().unwrap_err().to_string())
                .collect();
            assert_eq!(errors[0], said);
            for later in &errors[1..] {
                assert!(later.ends_with(&said), "{later}");
                assert_eq!(later, &errors[1], "said once, not wrapped again");
            }
            packer.shared.error.lock().unwrap().take();
        }
    }
}
