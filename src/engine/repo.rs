//! An open repository: storage, keys, config, and typed object access.
//!
//! The engine's public operations (backup, restore, check, …) are blocking
//! functions that take a `&Repository`; inside, storage calls run on the
//! tokio runtime whose handle the repository holds, while CPU work runs on
//! the calling thread or rayon. Callers on an async runtime use
//! `spawn_blocking`.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::runtime::Handle;

use super::chunker::Chunker;
use super::crypto::{Cipher, KdfParams, KeySlot, Keys, MasterSecret};
use super::error::{Error, Result};
use super::format::{self, ObjectKind, RepoConfig};
use super::id::{BlobId, BlobType, IndexId, KeyId, PackId, SnapshotId, random_bytes};
use super::index::{Index, IndexFile};
use super::pack::open_blob;
use super::snapshot::Snapshot;
use super::store::{ObjectInfo, Store};

/// An index loaded from the listing: the index, the objects that could not be read, and
/// every id the listing showed.
type ListedIndex = (Index, Vec<(IndexId, Error)>, Vec<IndexId>);

/// Storage key of a pack.
pub fn pack_key(id: &PackId) -> String {
    let h = id.to_hex();
    format!("data/{}/{}", &h[..2], h)
}

/// Readable snapshots sorted by time, and the unreadable ones with their error.
pub type SnapshotList = (Vec<(SnapshotId, Snapshot)>, Vec<(SnapshotId, Error)>);

/// Options for opening or creating a repository.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Argon2id costs for new key slots.
    pub kdf: KdfParams,
    /// Host name recorded in new key slots.
    pub host: Option<String>,
}

/// The cheapest key stretching, for unit tests that open many repositories.
#[cfg(test)]
pub(crate) const TEST_OPTIONS: OpenOptions = OpenOptions {
    kdf: KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    },
    host: None,
};

/// A new repository in a local temporary directory, for unit tests: the runtime it runs
/// on and the directory, which must outlive it, and the repository.
#[cfg(test)]
pub(crate) fn test_repository() -> (tokio::runtime::Runtime, tempfile::TempDir, Repository) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().to_str().unwrap(),
        &super::StoreOptions::default(),
    )
    .unwrap();
    let repo = Repository::init(runtime.handle().clone(), store, b"pw", &TEST_OPTIONS).unwrap();
    (runtime, dir, repo)
}

/// A key slot as listed by `key list`.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// Slot id.
    pub id: KeyId,
    /// The slot this session opened with.
    pub current: bool,
    /// Creator host.
    pub host: String,
    /// Creator user.
    pub user: String,
    /// Creation time.
    pub created: String,
}

/// An open repository.
pub struct Repository {
    store: Store,
    keys: Keys,
    config: RepoConfig,
    chunker: Chunker,
    handle: Handle,
    key_id: KeyId,
    kdf: KdfParams,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Repository({}, id {})",
            self.store.location(),
            self.config.id
        )
    }
}

fn whoami() -> (String, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    (host, user)
}

impl Repository {
    /// Create a new repository at `store` with a fresh master secret.
    ///
    /// # Errors
    /// `Error::AlreadyInitialized` when a config exists; storage errors.
    pub fn init(handle: Handle, store: Store, password: &[u8], opts: &OpenOptions) -> Result<Self> {
        Self::init_with_cipher(handle, store, password, opts, Cipher::preferred())
    }

    /// Create a new repository whose objects `cipher` seals, instead of the one
    /// [`Cipher::preferred`] picks for this machine.
    ///
    /// # Errors
    /// As [`Repository::init`].
    pub fn init_with_cipher(
        handle: Handle,
        store: Store,
        password: &[u8],
        opts: &OpenOptions,
        cipher: Cipher,
    ) -> Result<Self> {
        let mut config = RepoConfig::new_default();
        config.cipher = cipher.name().into();
        Self::init_with(
            handle,
            store,
            password,
            opts,
            MasterSecret::generate(),
            config,
        )
    }

    /// Create a repository sharing `source`'s keys and chunker parameters, so
    /// that blob ids are identical and copies between them deduplicate and
    /// can stand in for each other (replicas for the restore fallback).
    ///
    /// # Errors
    /// As [`Repository::init`].
    pub fn init_from(
        handle: Handle,
        store: Store,
        password: &[u8],
        opts: &OpenOptions,
        source: &Repository,
    ) -> Result<Self> {
        let mut cfg = source.config.clone();
        cfg.id = hex::encode(random_bytes::<16>());
        Self::init_with(
            handle,
            store,
            password,
            opts,
            source.keys.secret().clone(),
            cfg,
        )
    }

    fn init_with(
        handle: Handle,
        store: Store,
        password: &[u8],
        opts: &OpenOptions,
        secret: MasterSecret,
        config: RepoConfig,
    ) -> Result<Self> {
        if handle.block_on(store.head("config"))?.is_some() {
            return Err(Error::AlreadyInitialized {
                location: store.location().to_string(),
            });
        }
        if password.is_empty() {
            return Err(Error::InvalidInput(
                "an empty password is not allowed".into(),
            ));
        }
        config.validate()?;
        let cipher = config.envelope_cipher()?;
        let keys = Keys::from_secret(secret);
        let (host, user) = whoami();
        let slot = KeySlot::create(
            keys.secret(),
            password,
            opts.kdf,
            Utc::now().to_rfc3339(),
            opts.host.clone().unwrap_or(host),
            user,
        )?;
        let key_id = KeyId(random_bytes());
        let slot_bytes = serde_json::to_vec_pretty(&slot).expect("key slot serializes");
        // Key slot first, config last: a repository is visible (has a config)
        // only once it can be opened.
        handle.block_on(store.put_create(
            &format!("keys/{key_id}"),
            Bytes::from(slot_bytes),
            |_| false,
        ))?;
        // The config is sealed like the key slots, with XChaCha20-Poly1305: it says
        // which cipher seals everything else.
        let cfg_bytes = format::encode_config(&keys, &config);
        let keys = keys.with_cipher(cipher);
        if let Err(error) =
            handle.block_on(store.put_create("config", Bytes::from(cfg_bytes), |_| false))
        {
            // Another initialisation of the same location won the race for `config`:
            // take back our key slot, which wraps a master secret nobody will use.
            let _ = handle.block_on(store.delete(&format!("keys/{key_id}")));
            return Err(error);
        }
        let chunker = Chunker::new(&config.chunker, keys.id_keys().chunker_seed);
        Ok(Self {
            store,
            keys,
            config,
            chunker,
            handle,
            key_id,
            kdf: opts.kdf,
        })
    }

    /// Open an existing repository with a password.
    ///
    /// # Errors
    /// `Error::NotARepository`, `Error::UnsupportedVersion`,
    /// `Error::WrongPassword`, or `Error::Corrupt` for a damaged config.
    pub fn open(handle: Handle, store: Store, password: &[u8], opts: &OpenOptions) -> Result<Self> {
        let cfg_bytes = match handle.block_on(store.get("config")) {
            Ok(b) => b,
            Err(Error::MissingObject { .. }) => {
                return Err(Error::NotARepository {
                    location: store.location().to_string(),
                });
            }
            Err(e) => return Err(e),
        };
        format::config_version(&cfg_bytes)?;
        let slots = handle.block_on(store.list("keys"))?;
        if slots.is_empty() {
            return Err(Error::corrupt("repository", "no key slots under keys/"));
        }
        let mut damaged = Vec::new();
        for info in &slots {
            let Some(id) = info
                .key
                .strip_prefix("keys/")
                .and_then(|s| KeyId::from_hex(s).ok())
            else {
                continue;
            };
            let raw = match handle.block_on(store.get(&info.key)) {
                Ok(raw) => raw,
                // Taken back since the listing: a stray slot of an initialisation
                // that lost the race for `config`, or a key removed meanwhile.
                Err(Error::MissingObject { .. }) => continue,
                Err(e) => return Err(e),
            };
            let slot: KeySlot = match serde_json::from_slice(&raw) {
                Ok(s) => s,
                Err(e) => {
                    damaged.push(format!("{}: {e}", info.key));
                    continue;
                }
            };
            match slot.open(password) {
                Ok(secret) => {
                    let keys = Keys::from_secret(secret);
                    // A slot that opens with the password but does not unlock the
                    // config is a stray from an initialisation that lost a race (or a
                    // planted one): skip it, another slot may be the right one.
                    let (config, cipher) = match format::decode_config(&keys, &cfg_bytes)
                        .and_then(|c| c.envelope_cipher().map(|cipher| (c, cipher)))
                    {
                        Ok(found) => found,
                        Err(e) => {
                            damaged.push(format!(
                                "{}: opens with this password but does not unlock the config ({e})",
                                info.key
                            ));
                            continue;
                        }
                    };
                    let chunker = Chunker::new(&config.chunker, keys.id_keys().chunker_seed);
                    let keys = keys.with_cipher(cipher);
                    return Ok(Self {
                        store,
                        keys,
                        config,
                        chunker,
                        handle,
                        key_id: id,
                        kdf: opts.kdf,
                    });
                }
                Err(Error::WrongPassword { .. }) => {}
                Err(e) => damaged.push(format!("{}: {e}", info.key)),
            }
        }
        if !damaged.is_empty() {
            tracing::warn!(damaged = ?damaged, "some key slots are damaged");
        }
        Err(Error::WrongPassword { slots: slots.len() })
    }

    /// The storage location.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The keys (crate-internal users only need this for packing).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The repository config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The chunker for this repository.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// The runtime handle used for storage calls.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Run a storage future to completion from blocking code.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    // ---- key slots ----

    /// Add a key slot for another password.
    ///
    /// # Errors
    /// Storage errors; `InvalidInput` for an empty password.
    pub fn key_add(&self, password: &[u8]) -> Result<KeyId> {
        if password.is_empty() {
            return Err(Error::InvalidInput(
                "an empty password is not allowed".into(),
            ));
        }
        let (host, user) = whoami();
        let slot = KeySlot::create(
            self.keys.secret(),
            password,
            self.kdf,
            Utc::now().to_rfc3339(),
            host,
            user,
        )?;
        let id = KeyId(random_bytes());
        let bytes = serde_json::to_vec_pretty(&slot).expect("key slot serializes");
        self.block_on(
            self.store
                .put_create(&format!("keys/{id}"), Bytes::from(bytes), |_| false),
        )?;
        Ok(id)
    }

    /// List key slots.
    ///
    /// # Errors
    /// Storage errors.
    pub fn key_list(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for info in self.block_on(self.store.list("keys"))? {
            let Some(id) = info
                .key
                .strip_prefix("keys/")
                .and_then(|s| KeyId::from_hex(s).ok())
            else {
                continue;
            };
            let raw = match self.block_on(self.store.get(&info.key)) {
                Ok(raw) => raw,
                // Removed since the listing (a key removed, or a stray slot taken back).
                Err(Error::MissingObject { .. }) => continue,
                Err(e) => return Err(e),
            };
            let (host, user, created) = match serde_json::from_slice::<KeySlot>(&raw) {
                Ok(s) => (s.host, s.user, s.created),
                Err(_) => ("?".into(), "?".into(), "damaged".into()),
            };
            out.push(KeyInfo {
                id,
                current: id == self.key_id,
                host,
                user,
                created,
            });
        }
        Ok(out)
    }

    /// Remove a key slot (never the one in use, never the last one).
    ///
    /// # Errors
    /// `Refused` for the current slot, `MissingObject` for an unknown id.
    pub fn key_remove(&self, id: &KeyId) -> Result<()> {
        if *id == self.key_id {
            return Err(Error::Refused(
                "refusing to remove the key slot this session opened the repository with".into(),
            ));
        }
        let key = format!("keys/{id}");
        if self.block_on(self.store.head(&key))?.is_none() {
            return Err(Error::MissingObject {
                what: format!("key slot {id}"),
            });
        }
        self.block_on(self.store.delete(&key))
    }

    /// Change the password of the slot this session opened with: a new slot with
    /// `password` is stored first, then the old slot is deleted, so a stop in between
    /// leaves both passwords working, never neither. Returns the new slot's id.
    ///
    /// # Errors
    /// As [`Repository::key_add`]; storage errors deleting the old slot (the new one then
    /// works already).
    pub fn key_passwd(&self, password: &[u8]) -> Result<KeyId> {
        let id = self.key_add(password)?;
        self.block_on(self.store.delete(&format!("keys/{}", self.key_id)))?;
        Ok(id)
    }

    /// Find a key slot by full id or unique prefix.
    ///
    /// # Errors
    /// `InvalidInput` when nothing or more than one slot matches.
    pub fn find_key(&self, prefix: &str) -> Result<KeyId> {
        let all: Vec<KeyId> = self.key_list()?.into_iter().map(|k| k.id).collect();
        unique_prefix(prefix, &all, "key slot")
    }

    // ---- snapshots ----

    /// List snapshot objects with their store metadata.
    ///
    /// # Errors
    /// Storage errors.
    pub fn list_snapshot_ids(&self) -> Result<Vec<(SnapshotId, ObjectInfo)>> {
        Ok(self
            .block_on(self.store.list("snapshots"))?
            .into_iter()
            .filter_map(|i| {
                let id = SnapshotId::from_hex(i.key.strip_prefix("snapshots/")?).ok()?;
                Some((id, i))
            })
            .collect())
    }

    /// Load one snapshot, verifying it against its name.
    ///
    /// # Errors
    /// `MissingObject` or `Corrupt`.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let raw = self.block_on(self.store.get(&format!("snapshots/{id}")))?;
        let what = format!("snapshot {}", id.short());
        if *blake3::hash(&raw).as_bytes() != id.0 {
            return Err(Error::corrupt(&what, "content does not match its name"));
        }
        format::open_json(&self.keys, ObjectKind::Snapshot, &what, &raw)
    }

    /// Load every snapshot, sorted by time. Damaged snapshots are returned
    /// separately so that listing still works on a damaged repository. A listed
    /// snapshot that a read no longer finds was deleted since (a concurrent
    /// forget, or a store whose listings lag behind deletes) and is left out.
    ///
    /// # Errors
    /// Storage errors while listing.
    pub fn load_snapshots(&self) -> Result<SnapshotList> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for (id, _) in self.list_snapshot_ids()? {
            match self.load_snapshot(&id) {
                Ok(s) => ok.push((id, s)),
                Err(Error::MissingObject { .. }) => {
                    tracing::debug!(snapshot = %id.short(), "listed snapshot deleted since");
                }
                Err(e) => bad.push((id, e)),
            }
        }
        ok.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((ok, bad))
    }

    /// Store a snapshot: the commit point of a backup.
    ///
    /// # Errors
    /// Storage errors.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<SnapshotId> {
        let sealed = format::seal_json(&self.keys, ObjectKind::Snapshot, snap);
        let id = SnapshotId(*blake3::hash(&sealed).as_bytes());
        self.put_content_addressed(&format!("snapshots/{id}"), sealed, id.0)?;
        Ok(id)
    }

    /// Resolve `latest`, a full id or a unique prefix to a snapshot id.
    ///
    /// `latest` is refused while any snapshot object is unreadable: the
    /// unreadable one may be the newest, and choosing among the readable ones
    /// would silently hand back older data than asked for.
    ///
    /// # Errors
    /// `InvalidInput` when nothing or several match; `Refused` for `latest`
    /// beside an unreadable snapshot.
    pub fn find_snapshot(&self, spec: &str) -> Result<SnapshotId> {
        if spec == "latest" {
            let (snaps, bad) = self.load_snapshots()?;
            if let Some((id, e)) = bad.first() {
                return Err(Error::Refused(format!(
                    "{e}; `latest` could be that snapshot, so it is not chosen among the readable ones — name a snapshot by id, run `cadang check`, or `cadang forget {}` once the damage is understood",
                    id.short()
                )));
            }
            return snaps
                .last()
                .map(|s| s.0)
                .ok_or_else(|| Error::InvalidInput("the repository has no snapshots yet".into()));
        }
        let all: Vec<SnapshotId> = self.list_snapshot_ids()?.into_iter().map(|s| s.0).collect();
        let missing = match unique_prefix(spec, &all, "snapshot") {
            // A well-formed id that matches nothing.
            Err(Error::InvalidInput(missing))
                if spec.len() >= 4
                    && spec.bytes().all(|b| b.is_ascii_hexdigit())
                    && !all.iter().any(|id| id_matches(id, spec)) =>
            {
                missing
            }
            other => return other,
        };
        // An id that was replaced (`rewrite`, a tag change) is named with its replacement
        // rather than followed: forgetting "the old id" must not reach the new snapshot.
        let Ok((snaps, _)) = self.load_snapshots() else {
            return Err(Error::InvalidInput(missing));
        };
        let by: Vec<SnapshotId> = snaps
            .iter()
            .filter(|(_, s)| s.rewritten_from.is_some_and(|from| id_matches(&from, spec)))
            .map(|(id, _)| *id)
            .collect();
        Err(Error::InvalidInput(match by.as_slice() {
            [one] => format!("{missing}: it was replaced by snapshot {}", one.short()),
            [] => missing,
            more => format!(
                "{missing}: it was replaced by snapshots {}",
                more.iter()
                    .map(SnapshotId::short)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }))
    }

    /// Delete a snapshot object.
    ///
    /// # Errors
    /// Storage errors.
    pub fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.block_on(self.store.delete(&format!("snapshots/{id}")))
    }

    // ---- index ----

    /// List index object ids.
    ///
    /// # Errors
    /// Storage errors.
    pub fn list_index_ids(&self) -> Result<Vec<IndexId>> {
        Ok(self
            .block_on(self.store.list("index"))?
            .into_iter()
            .filter_map(|i| IndexId::from_hex(i.key.strip_prefix("index/")?).ok())
            .collect())
    }

    /// Load one index object.
    ///
    /// # Errors
    /// `MissingObject` or `Corrupt`.
    pub fn load_index_file(&self, id: &IndexId) -> Result<IndexFile> {
        let raw = self.block_on(self.store.get(&format!("index/{id}")))?;
        let what = format!("index {}", id.short());
        if *blake3::hash(&raw).as_bytes() != id.0 {
            return Err(Error::corrupt(&what, "content does not match its name"));
        }
        format::open_postcard(&self.keys, ObjectKind::Index, &what, &raw)
    }

    /// Store an index object. Only call once every pack it lists has landed.
    ///
    /// # Errors
    /// Storage errors.
    pub fn save_index_file(&self, f: &IndexFile) -> Result<IndexId> {
        let sealed = format::seal_postcard(&self.keys, ObjectKind::Index, f);
        let id = IndexId(*blake3::hash(&sealed).as_bytes());
        self.put_content_addressed(&format!("index/{id}"), sealed, id.0)?;
        Ok(id)
    }

    /// Load the whole index. Objects superseded by a consolidated index are
    /// skipped; unreadable index objects are reported, not fatal, so that a
    /// damaged index object does not make the repository unusable.
    ///
    /// # Errors
    /// Storage errors while listing.
    ///
    /// Packs that a prune has marked for deletion but not yet deleted are
    /// included: a backup that started before the prune may have committed a
    /// snapshot that uses them, and such a snapshot must stay readable until
    /// the next prune puts the packs back.
    pub fn load_index(&self) -> Result<(Index, Vec<(IndexId, Error)>)> {
        self.load_index_with(&[])
    }

    /// The index, as [`Repository::load_index`], plus the index objects
    /// `snapshot` names that the listing does not show yet (a store whose
    /// listings lag behind its writes): they are read by name. One that is
    /// gone was consolidated by a prune, which carried its packs over.
    ///
    /// # Errors
    /// Storage errors.
    pub fn load_index_for(
        &self,
        snapshot: &super::snapshot::Snapshot,
    ) -> Result<(Index, Vec<(IndexId, Error)>)> {
        self.load_index_with(&snapshot.indexes)
    }

    /// The listed index objects, the packs pending deletion, and those of `named` the
    /// listing does not show.
    fn load_index_with(&self, named: &[IndexId]) -> Result<(Index, Vec<(IndexId, Error)>)> {
        let (mut idx, bad, listed) = self.load_listed_index(|_| true)?;
        for p in super::prune::pending_packs(self)? {
            idx.add_pack(p.id, &p.blobs);
        }
        for id in named.iter().filter(|id| !listed.contains(id)) {
            match self.load_index_file(id) {
                Ok(f) => {
                    tracing::debug!(index = %id.short(), "index object not listed yet, read by name");
                    for p in &f.packs {
                        idx.add_pack(p.id, &p.blobs);
                    }
                }
                Err(Error::MissingObject { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((idx, bad))
    }

    /// Load the index objects alone (without packs pending deletion),
    /// leaving out packs for which `keep` is false (prune
    /// uses this to build an index without the packs it marks, so that a
    /// blob copied to a new pack is found there and not at its old place).
    ///
    /// # Errors
    /// Storage errors while listing.
    pub fn load_index_filtered(
        &self,
        keep: impl Fn(&PackId) -> bool,
    ) -> Result<(Index, Vec<(IndexId, Error)>)> {
        let (idx, bad, _) = self.load_listed_index(keep)?;
        Ok((idx, bad))
    }

    /// [`Repository::load_index_filtered`], also returning every id the listing showed.
    fn load_listed_index(&self, keep: impl Fn(&PackId) -> bool) -> Result<ListedIndex> {
        let ids = self.list_index_ids()?;
        let mut files = Vec::new();
        let mut bad = Vec::new();
        for &id in &ids {
            match self.load_index_file(&id) {
                Ok(f) => files.push((id, f)),
                // Listed, then deleted: superseded by a prune's consolidated index.
                Err(Error::MissingObject { .. }) => {
                    tracing::debug!(index = %id.short(), "listed index deleted since");
                }
                Err(e) => bad.push((id, e)),
            }
        }
        let superseded: std::collections::HashSet<IndexId> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        let mut idx = Index::new();
        for (id, f) in &files {
            if !superseded.contains(id) {
                for p in f.packs.iter().filter(|p| keep(&p.id)) {
                    idx.add_pack(p.id, &p.blobs);
                }
            }
        }
        Ok((idx, bad, ids))
    }

    // ---- packs and blobs ----

    /// Store a finished pack.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn save_pack(&self, id: PackId, bytes: Vec<u8>) -> Result<()> {
        let key = pack_key(&id);
        let want = id.0;
        self.store
            .put_create(&key, Bytes::from(bytes), move |existing| {
                *blake3::hash(existing).as_bytes() == want
            })
            .await
    }

    fn put_content_addressed(&self, key: &str, bytes: Vec<u8>, hash: [u8; 32]) -> Result<()> {
        self.block_on(
            self.store
                .put_create(key, Bytes::from(bytes), move |existing| {
                    *blake3::hash(existing).as_bytes() == hash
                }),
        )
    }

    /// Read a whole pack.
    ///
    /// # Errors
    /// `MissingObject` or storage errors.
    pub fn read_pack(&self, id: &PackId) -> Result<Bytes> {
        self.block_on(self.store.get(&pack_key(id)))
    }

    /// Read bytes `range` of pack `id` as stored (envelopes, unopened).
    ///
    /// # Errors
    /// `MissingObject` or storage errors.
    pub fn read_pack_range(&self, id: &PackId, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.block_on(self.store.get_range(&pack_key(id), range))
    }

    /// Load, decrypt and verify one blob. A failed verification is retried
    /// twice with a fresh read, so a one-off garbled transfer is not reported
    /// as damage while persistent damage always is.
    ///
    /// # Errors
    /// `MissingObject` when the blob is not indexed or its pack is gone,
    /// `Corrupt` when it fails verification on every attempt.
    pub fn load_blob(&self, index: &Index, ty: BlobType, id: &BlobId) -> Result<Vec<u8>> {
        self.read_blob(index, ty, id, |raw_length, envelope| {
            open_blob(&self.keys, ty, id, raw_length, envelope)
        })
    }

    /// Load and decrypt one blob, returning its payload still compressed (see
    /// [`super::pack::open_blob_payload`]) and its plaintext length, for a reader
    /// that decodes and checks it elsewhere. Retried like [`Repository::load_blob`].
    ///
    /// # Errors
    /// As [`Repository::load_blob`]; `Corrupt` only when authentication fails.
    pub fn load_blob_payload(
        &self,
        index: &Index,
        ty: BlobType,
        id: &BlobId,
    ) -> Result<(Vec<u8>, u32)> {
        self.read_blob(index, ty, id, |raw_length, envelope| {
            super::pack::open_blob_payload(&self.keys, ty, id, envelope)
                .map(|payload| (payload, raw_length))
        })
    }

    /// Read blob `id`'s envelope and open it with `open(raw_length, envelope)`,
    /// reading again (twice at most) when that finds damage or the read fails
    /// transiently.
    fn read_blob<R>(
        &self,
        index: &Index,
        ty: BlobType,
        id: &BlobId,
        open: impl Fn(u32, &[u8]) -> Result<R>,
    ) -> Result<R> {
        let (pack, loc) = index.get(id).ok_or_else(|| Error::MissingObject {
            what: format!("{ty} blob {} (not in the index)", id.short()),
        })?;
        if loc.ty != ty {
            return Err(Error::corrupt(
                format!("{ty} blob {}", id.short()),
                format!("index says it is a {} blob", loc.ty),
            ));
        }
        let key = pack_key(&pack);
        let range = loc.offset as u64..loc.offset as u64 + loc.length as u64;
        let mut last = None;
        for attempt in 0..3 {
            let res = self
                .block_on(self.store.get_range(&key, range.clone()))
                .and_then(|env| open(loc.raw_length, &env));
            match res {
                Ok(d) => {
                    if attempt > 0 {
                        tracing::warn!(blob = %id.short(), pack = %pack.short(), attempt, "blob verified after re-reading (transient read error)");
                    }
                    return Ok(d);
                }
                Err(e @ Error::MissingObject { .. }) => {
                    return Err(Error::MissingObject {
                        what: format!(
                            "pack {} holding {ty} blob {} ({e})",
                            pack.short(),
                            id.short()
                        ),
                    });
                }
                Err(e) if e.is_damage() || e.is_transient() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::corrupt("pack", "no copy could be read")))
    }

    /// Load and decode a tree blob.
    ///
    /// # Errors
    /// As [`Repository::load_blob`], plus `Corrupt` for an invalid tree.
    pub fn load_tree(&self, index: &Index, id: &BlobId) -> Result<super::tree::Tree> {
        let raw = self.load_blob(index, BlobType::Tree, id)?;
        super::tree::Tree::decode(&raw)
            .map_err(|e| Error::corrupt(format!("tree {}", id.short()), e))
    }

    /// List objects with a prefix, keyed by storage key.
    ///
    /// # Errors
    /// Storage errors.
    pub fn list_objects(&self, prefix: &str) -> Result<HashMap<String, ObjectInfo>> {
        Ok(self
            .block_on(self.store.list(prefix))?
            .into_iter()
            .map(|i| (i.key.clone(), i))
            .collect())
    }

    /// The time used to stamp new snapshots: the writer's clock.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Whether `id` starts with the hex digits of `prefix` (any case; 4 digits at least).
fn id_matches(id: &SnapshotId, prefix: &str) -> bool {
    prefix.len() >= 4
        && prefix.bytes().all(|b| b.is_ascii_hexdigit())
        && id.to_string().starts_with(&prefix.to_ascii_lowercase())
}

/// Resolve an id prefix against candidates.
fn unique_prefix<T: Copy + std::fmt::Display>(prefix: &str, all: &[T], what: &str) -> Result<T> {
    let p = prefix.to_ascii_lowercase();
    if p.len() < 4 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::InvalidInput(format!(
            "`{prefix}` is not a {what} id (give `latest`, or at least 4 hex digits)"
        )));
    }
    let hits: Vec<T> = all
        .iter()
        .copied()
        .filter(|id| id.to_string().starts_with(&p))
        .collect();
    match hits.len() {
        0 => Err(Error::InvalidInput(format!("no {what} matches `{prefix}`"))),
        1 => Ok(hits[0]),
        n => Err(Error::InvalidInput(format!(
            "`{prefix}` matches {n} {what}s; give more digits"
        ))),
    }
}
