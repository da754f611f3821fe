//! Storage: the engine's only user of `object_store`.
//!
//! [`Store`] wraps any `ObjectStore` (local directory with fsync on,
//! S3-compatible, in-memory, or a test decorator that injects faults) with
//! the few operations the repository needs, error classification, and
//! retries with backoff for transient failures.
//!
//! Create-only writes: content-addressed objects are written with
//! `PutMode::Create`. If the store answers `AlreadyExists` — typically after
//! a lost response to our own successful write — the existing object is read
//! back and verified against its name instead of failing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::error::{Error, Result};

/// Reads of packs from a local store of this many bytes and more go into kept buffers
/// and are dropped from the page cache after them ([`Store::read_local`]).
const DROP_READS_FROM: u64 = 1 << 20;

/// Metadata of a listed object.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    /// Key relative to the repository root, e.g. `snapshots/ab…`.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time as reported by the store (the store's clock).
    pub last_modified: DateTime<Utc>,
}

/// Options for opening a location.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// S3 endpoint (for MinIO, Garage, Ceph RGW, …); `AWS_ENDPOINT_URL` otherwise.
    pub s3_endpoint: Option<String>,
    /// S3 region; `AWS_REGION` / `AWS_DEFAULT_REGION` otherwise.
    pub s3_region: Option<String>,
}

/// A repository location with retrying, classified operations.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    location: String,
    retries: u32,
    create_supported: Arc<std::sync::atomic::AtomicBool>,
    upload_limit: Option<Arc<RateLimit>>,
    /// A local store's directory and read buffers: its packs are dropped from the page
    /// cache once written ([`Store::drop_behind`]), and read in bulk into buffers kept
    /// for the next read, then dropped too ([`Store::read_local`]).
    local: Option<Arc<Local>>,
}

/// Buffers for bulk reads kept by a local store, at most this many…
const KEPT_READ_BUFFERS: usize = 4;
/// …of at most this size each (a pack is 16 MiB at most by default).
const KEPT_READ_BUFFER_MAX: usize = 32 << 20;

/// What a local store keeps beside object_store: its directory, and the buffers of bulk
/// reads that have been handed back.
struct Local {
    root: std::path::PathBuf,
    buffers: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Runs blocking file work of a local store on tokio's blocking pool; `what` names it
/// for the error should the task be cancelled.
async fn blocking<T: Send + 'static>(
    key: &str,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Storage {
            path: key.into(),
            message: format!("the {what} was cancelled: {e}"),
            transient: false,
        })
}

/// Whether a file name is one object_store stages an upload under: the object's
/// name, `#`, and a number. No object of the format has a `#` in its name.
fn is_staged_name(name: &str) -> bool {
    matches!(name.rsplit_once('#'), Some((object, n))
        if !object.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Creates `path` and the directories above it that are missing (with `mode`, less the
/// umask), and makes them durable: each new directory is synced, and so is the existing
/// one it was made in. A directory made with `create_dir_all` alone can vanish with
/// everything below it at a power cut, however well its files were synced, because the
/// entry naming it was never written out.
///
/// # Errors
/// From creating or syncing the directories.
pub fn create_dir_durably(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // Made absolute first: the ancestors of a relative path end in an empty one, which
    // names no directory to sync (`cadang daemon` makes `var` in the working directory).
    let path = &std::path::absolute(path)?;
    let mut first_existing = path.as_path();
    while !first_existing.exists() {
        match first_existing.parent() {
            Some(parent) => first_existing = parent,
            None => break,
        }
    }
    if first_existing == path {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    for dir in path.ancestors() {
        std::fs::File::open(dir)?.sync_all()?;
        if dir == first_existing {
            break;
        }
    }
    Ok(())
}

/// Syncs the directory an object was deleted from, or the nearest one above it that
/// still exists (object_store removes the directories a delete leaves empty), up to
/// the repository's root.
fn sync_nearest_dir(root: &std::path::Path, deleted: &std::path::Path) -> std::io::Result<()> {
    for dir in deleted.ancestors().skip(1) {
        match std::fs::File::open(dir) {
            Ok(d) => return d.sync_all(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A bulk read's buffer, handed back to its store's [`Local::buffers`] when the
/// [`Bytes`] made of it are dropped. A buffer taken fresh from the allocator for every
/// pack read (16 MiB, above the allocator's mmap threshold) was zeroed, page by page
/// faulted in, then handed back to the kernel: 9% of a local restore's CPU time.
struct KeptBuffer {
    buf: Vec<u8>,
    local: Arc<Local>,
}

impl AsRef<[u8]> for KeptBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for KeptBuffer {
    fn drop(&mut self) {
        if self.buf.capacity() > KEPT_READ_BUFFER_MAX {
            return;
        }
        let mut kept = self
            .local
            .buffers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() < KEPT_READ_BUFFERS {
            kept.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Paces writes to at most `bytes_per_second` on average: each write reserves its
/// share of time after the previous ones and waits for its turn, so the long-run rate
/// stays under the limit while a single object still goes out at full speed. A wait
/// ends early, with `Error::Cancelled`, when the operation's cancel flag is set.
#[derive(Debug)]
struct RateLimit {
    bytes_per_second: u64,
    next_free: std::sync::Mutex<tokio::time::Instant>,
    cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl RateLimit {
    async fn pace(&self, bytes: usize) -> Result<()> {
        let cost = std::time::Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let start = {
            let mut next = self
                .next_free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + cost;
            start
        };
        let Some(cancel) = &self.cancel else {
            tokio::time::sleep_until(start).await;
            return Ok(());
        };
        // Look at the cancel flag a few times a second while waiting.
        loop {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let now = tokio::time::Instant::now();
            if now >= start {
                return Ok(());
            }
            tokio::time::sleep_until(start.min(now + std::time::Duration::from_millis(100))).await;
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.location)
    }
}

impl Store {
    /// Open a location: a local path (or `file://`), `s3://bucket[/prefix]`, or
    /// `memory://` (a fresh in-memory store, for tests).
    ///
    /// # Errors
    /// `Error::InvalidInput` for an unusable URL, `Error::Io` when a local
    /// directory cannot be created.
    pub fn open(url: &str, opts: &StoreOptions) -> Result<Self> {
        if url.is_empty() {
            return Err(Error::InvalidInput(
                "no repository given: use -r/--repo or set CADANG_REPOSITORY".into(),
            ));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "`{url}`: no bucket name (expected s3://bucket/prefix)"
                )));
            }
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
                .with_retry(object_store::RetryConfig {
                    max_retries: 10,
                    retry_timeout: Duration::from_secs(180),
                    ..Default::default()
                });
            let endpoint = opts
                .s3_endpoint
                .clone()
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
            if let Some(ep) = endpoint {
                // An S3-compatible store (MinIO, Garage, Ceph RGW) takes its keys from
                // the environment; without them object_store would ask a cloud's
                // instance metadata service, which a data center's network does not have:
                // minutes of retries, then an error naming 169.254.169.254.
                use object_store::aws::AmazonS3ConfigKey as Key;
                let keys = b.get_config_value(&Key::AccessKeyId).is_some()
                    && b.get_config_value(&Key::SecretAccessKey).is_some();
                let other_source = [
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                ]
                .iter()
                .any(|var| std::env::var_os(var).is_some());
                if !keys && !other_source {
                    return Err(Error::InvalidInput(format!(
                        "`{url}` at {ep}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    )));
                }
                b = b
                    .with_allow_http(ep.starts_with("http://"))
                    .with_endpoint(ep);
            }
            if let Some(r) = opts.s3_region.clone() {
                b = b.with_region(r);
            } else if std::env::var("AWS_REGION").is_err()
                && std::env::var("AWS_DEFAULT_REGION").is_err()
            {
                b = b.with_region("us-east-1");
            }
            let s3 = b
                .build()
                .map_err(|e| Error::InvalidInput(format!("S3 configuration for `{url}`: {e}")))?;
            let inner: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(
                    s3,
                    prefix.trim_matches('/'),
                ))
            };
            return Ok(Self::from_object_store(inner, url));
        }
        if url == "memory://" {
            return Ok(Self::from_object_store(
                Arc::new(object_store::memory::InMemory::new()),
                url,
            ));
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(Error::InvalidInput(format!(
                "`{url}`: unsupported repository location (use a local path, file://, or s3://bucket/prefix)"
            )));
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        create_dir_durably(std::path::Path::new(path), 0o777).map_err(|e| Error::io(path, e))?;
        // fsync on: an acknowledged write must survive a power cut, because
        // the snapshot written after it assumes it is there.
        let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
            .map_err(|e| Error::InvalidInput(format!("`{path}`: {e}")))?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        let mut store = Self::from_object_store(Arc::new(fs), url);
        store.local = Some(Arc::new(Local {
            root: std::path::PathBuf::from(path),
            buffers: std::sync::Mutex::new(Vec::new()),
        }));
        Ok(store)
    }

    /// Wrap an existing object store (tests use this to inject faults).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, location: &str) -> Self {
        Self {
            inner,
            location: location.to_string(),
            retries: 4,
            create_supported: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            upload_limit: None,
            local: None,
        }
    }

    /// Drops a pack just written to a local store from the page cache. Packs are
    /// written once and read again only by a later restore or check, so keeping them
    /// cached would push out what the host does use (a backup writes gigabytes); and
    /// the pages freed here are the ones the next pack is written into, which costs
    /// the kernel far less than taking fresh pages (on the data center's virtual
    /// machines, 2.2 against 0.25 CPU-seconds for 800 MB). The store wrote and synced
    /// the file, so its pages are clean and the hint is honoured at once; a failure
    /// only leaves the pages cached. Other objects are small and left alone.
    fn drop_behind(&self, key: &str) {
        let Some(local) = &self.local else {
            return;
        };
        if !key.starts_with("data/") {
            return;
        }
        let path = local.root.join(key);
        let dropped = std::fs::File::open(&path)
            .and_then(|file| super::writebehind::drop_cached(&file, 0, 0));
        if let Err(error) = dropped {
            tracing::debug!(path = %path.display(), %error, "pack left in the page cache");
        }
    }

    /// Limits the rate of new objects written through this handle (and its clones) to
    /// `bytes_per_second` on average, for a backup that must leave bandwidth to others.
    /// A write waiting for its turn gives up with `Error::Cancelled` once `cancel` is
    /// set, so a paced backup stops as promptly as an unpaced one.
    #[must_use]
    pub fn with_upload_limit(
        mut self,
        bytes_per_second: u64,
        cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Self {
        self.upload_limit = Some(Arc::new(RateLimit {
            bytes_per_second: bytes_per_second.max(1),
            next_free: std::sync::Mutex::new(tokio::time::Instant::now()),
            cancel,
        }));
        self
    }

    /// The location as given by the user (never contains credentials: those
    /// come from configuration or the environment).
    pub fn location(&self) -> &str {
        &self.location
    }

    async fn retry<T, F, Fut>(&self, key: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let err = classify(key, e);
                    if err.is_transient() && attempt < self.retries {
                        attempt += 1;
                        tracing::warn!(key, attempt, error = %err, "transient storage error, retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 4).min(Duration::from_secs(5));
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Read a whole object.
    ///
    /// # Errors
    /// `Error::MissingObject` when absent, `Error::Storage` otherwise.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        if let Some(local) = self.local.as_ref().filter(|_| key.starts_with("data/")) {
            return self.read_local(local, key, None).await;
        }
        let p = Path::from(key);
        self.retry(key, || async { self.inner.get(&p).await?.bytes().await })
            .await
    }

    /// Read part of an object.
    ///
    /// # Errors
    /// As [`Store::get`]; also `Error::Corrupt` when the object is shorter than the range.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        let want = range.end.saturating_sub(range.start);
        if let Some(local) = self
            .local
            .as_ref()
            .filter(|_| want >= DROP_READS_FROM && key.starts_with("data/"))
        {
            return self.read_local(local, key, Some(range)).await;
        }
        let p = Path::from(key);
        let b = self
            .retry(key, || self.inner.get_range(&p, range.clone()))
            .await?;
        if b.len() as u64 != want {
            return Err(Error::corrupt(
                key,
                format!("short read: {} of {want} bytes", b.len()),
            ));
        }
        Ok(b)
    }

    /// A bulk read of a pack from a local store (`range`, or the whole file), into a
    /// buffer a read before handed back ([`KeptBuffer`]), then dropped from the page
    /// cache: those pages are not read again soon, and the next read reuses them (see
    /// `engine::writebehind`). Smaller reads, such as the trees a listing walks, go
    /// through object_store and stay cached. Reads the file object_store wrote, by the
    /// same path, on a blocking thread as object_store does.
    async fn read_local(
        &self,
        local: &Arc<Local>,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Bytes> {
        let (local, owned_key) = (Arc::clone(local), key.to_owned());
        let read = blocking(key, "read", move || -> std::io::Result<Bytes> {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(local.root.join(&owned_key))?;
            let range = match range {
                Some(r) => r,
                None => 0..file.metadata()?.len(),
            };
            let len = usize::try_from(range.end.saturating_sub(range.start))
                .map_err(std::io::Error::other)?;
            let mut buf = local
                .buffers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop()
                .unwrap_or_default();
            // A kept buffer's bytes are initialised already: only growth is zeroed.
            buf.truncate(len);
            buf.resize(len, 0);
            file.read_exact_at(&mut buf, range.start)?;
            // A failure only leaves the pages cached.
            let _ = super::writebehind::drop_cached(&file, range.start, len as u64);
            Ok(Bytes::from_owner(KeptBuffer { buf, local }))
        })
        .await?;
        match read {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::MissingObject {
                what: format!("object {key}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::corrupt(
                key,
                "short read: the object ends before the range".to_owned(),
            )),
            Err(e) => Err(Error::Storage {
                path: key.into(),
                message: e.to_string(),
                transient: false,
            }),
        }
    }

    /// Size and time of an object, or `None` when absent.
    ///
    /// # Errors
    /// `Error::Storage` on failure other than absence.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let p = Path::from(key);
        match self.retry(key, || self.inner.head(&p)).await {
            Ok(m) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: m.size,
                last_modified: m.last_modified,
            })),
            Err(Error::MissingObject { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create an object that must not exist yet. When it already exists,
    /// `verify_existing` decides whether the existing bytes are the ones we
    /// meant to write (a lost response to our own earlier attempt): if so
    /// this is success, otherwise `Error::Storage`.
    ///
    /// # Errors
    /// `Error::Storage` when the write fails or a different object holds the name.
    pub async fn put_create(
        &self,
        key: &str,
        data: Bytes,
        verify_existing: impl Fn(&[u8]) -> bool,
    ) -> Result<()> {
        if let Some(limit) = &self.upload_limit {
            limit.pace(data.len()).await?;
        }
        let p = Path::from(key);
        let use_create = self
            .create_supported
            .load(std::sync::atomic::Ordering::Relaxed);
        let mode = if use_create {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let res = self
            .retry(key, || {
                self.inner.put_opts(
                    &p,
                    PutPayload::from_bytes(data.clone()),
                    PutOptions {
                        mode: mode.clone(),
                        ..Default::default()
                    },
                )
            })
            .await;
        match res {
            Ok(_) => {
                // Length 0: to the end of the file.
                self.drop_behind(key);
                Ok(())
            }
            Err(Error::Storage { message, .. }) if message.starts_with("already exists") => {
                let existing = self.get(key).await?;
                if verify_existing(&existing) {
                    Ok(())
                } else {
                    Err(Error::Storage {
                        path: key.to_string(),
                        message: "a different object already exists under this name".into(),
                        transient: false,
                    })
                }
            }
            Err(Error::Storage { message, .. })
                if use_create && message.starts_with("not implemented") =>
            {
                // The store has no create-only writes. Content-addressed
                // objects make an overwrite with identical bytes harmless.
                tracing::info!(location = %self.location, "store lacks create-only writes; using plain writes for content-addressed objects");
                self.create_supported
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                Box::pin(self.put_create(key, data, verify_existing)).await
            }
            Err(e) => Err(e),
        }
    }

    /// Write an object, replacing any existing one (only for objects whose
    /// replacement is harmless, such as a lease lock we own).
    ///
    /// # Errors
    /// `Error::Storage` on failure.
    pub async fn put_overwrite(&self, key: &str, data: Bytes) -> Result<()> {
        let p = Path::from(key);
        self.retry(key, || {
            self.inner.put(&p, PutPayload::from_bytes(data.clone()))
        })
        .await
        .map(|_| ())
    }

    /// Delete an object; deleting an absent object succeeds.
    ///
    /// # Errors
    /// `Error::Storage` on failure.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let p = Path::from(key);
        match self.retry(key, || self.inner.delete(&p)).await {
            Ok(()) | Err(Error::MissingObject { .. }) => {}
            Err(e) => return Err(e),
        }
        // A delete, like a write, is acknowledged only once it survives a power cut:
        // a forgotten snapshot whose packs prune then deletes, or an erased
        // snapshot, must not come back at the next boot. object_store syncs the
        // directories it writes to but not those it deletes from.
        let Some(local) = &self.local else {
            return Ok(());
        };
        let (root, owned_key) = (local.root.clone(), key.to_owned());
        blocking(key, "delete's sync", move || {
            sync_nearest_dir(&root, &root.join(owned_key))
        })
        .await?
        .map_err(|e| Error::io(local.root.join(key), e))
    }

    /// Partial uploads on a local store: object_store writes each object as
    /// `<name>#<n>` beside its final name and links it into place, so a process killed
    /// (or a power cut) between the two leaves that staged file behind. No listing
    /// shows it, so without this it would take space for ever (a pack's worth each).
    /// Other stores write an object in one request and leave nothing: empty.
    ///
    /// # Errors
    /// `Error::Io` when the repository's directories cannot be read.
    pub async fn partial_uploads(&self) -> Result<Vec<ObjectInfo>> {
        let Some(local) = &self.local else {
            return Ok(Vec::new());
        };
        let root = local.root.clone();
        blocking("partial uploads", "search", move || {
            let mut out = Vec::new();
            let mut dirs = vec![root.clone()];
            while let Some(dir) = dirs.pop() {
                let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
                for entry in entries {
                    let entry = entry.map_err(|e| Error::io(&dir, e))?;
                    let path = entry.path();
                    // The directory entry tells dirs from files; only a staged name
                    // is looked up further, not every pack of the repository.
                    let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
                    if kind.is_dir() {
                        dirs.push(path);
                        continue;
                    }
                    let staged = entry.file_name().to_str().is_some_and(is_staged_name);
                    if !kind.is_file() || !staged {
                        continue;
                    }
                    let meta = match entry.metadata() {
                        Ok(m) => m,
                        // Gone meanwhile (its writer finished or a prune removed it).
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Error::io(&path, e)),
                    };
                    let Ok(key) = path.strip_prefix(&root) else {
                        continue;
                    };
                    out.push(ObjectInfo {
                        key: key.to_string_lossy().into_owned(),
                        size: meta.len(),
                        last_modified: meta
                            .modified()
                            .map(DateTime::<Utc>::from)
                            .unwrap_or_else(|_| Utc::now()),
                    });
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await?
    }

    /// Deletes a partial upload found by [`Store::partial_uploads`], durably.
    ///
    /// # Errors
    /// `Error::InvalidInput` for a key that does not name a partial upload;
    /// `Error::Io` when it cannot be removed.
    pub async fn delete_partial_upload(&self, key: &str) -> Result<()> {
        let name = key.rsplit('/').next().unwrap_or(key);
        let Some(local) = self.local.as_ref().filter(|_| is_staged_name(name)) else {
            return Err(Error::InvalidInput(format!(
                "`{key}` is not a partial upload of this repository"
            )));
        };
        let (root, owned_key) = (local.root.clone(), key.to_owned());
        blocking(key, "delete", move || {
            let path = root.join(&owned_key);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io(&path, e)),
            }
            sync_nearest_dir(&root, &path).map_err(|e| Error::io(&path, e))
        })
        .await?
    }

    /// List every object under a prefix (e.g. `snapshots`).
    ///
    /// # Errors
    /// `Error::Storage` on failure.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let p = Path::from(prefix);
        let mut attempt = 0;
        loop {
            let mut out = Vec::new();
            let mut s = self.inner.list(Some(&p));
            let mut failed = None;
            while let Some(item) = s.next().await {
                match item {
                    Ok(m) => out.push(ObjectInfo {
                        key: m.location.to_string(),
                        size: m.size,
                        last_modified: m.last_modified,
                    }),
                    Err(e) => {
                        failed = Some(classify(prefix, e));
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(out),
                Some(e) if e.is_transient() && attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Some(e) => return Err(e),
            }
        }
    }
}

/// Map an `object_store` error to the engine's classification.
fn classify(key: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Error::MissingObject {
            what: format!("object {key}"),
        },
        E::AlreadyExists { .. } => Error::Storage {
            path: key.into(),
            message: "already exists".into(),
            transient: false,
        },
        E::NotImplemented { .. } | E::NotSupported { .. } => Error::Storage {
            path: key.into(),
            message: format!("not implemented by this store: {e}"),
            transient: false,
        },
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::Precondition { .. } => Error::Storage {
            path: key.into(),
            message: e.to_string(),
            transient: false,
        },
        other => {
            let msg = other.to_string();
            // Disk full and read-only file systems do not heal by retrying.
            let permanent = msg.contains("No space left") || msg.contains("Read-only file system");
            Error::Storage {
                path: key.into(),
                message: msg,
                transient: !permanent,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::writebehind::tests::{cached_pages, on_tmpfs};
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn packs_written_or_read_in_bulk_leave_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        if on_tmpfs(dir.path()) {
            return;
        }
        let store = Store::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
        let pack = dir.path().join("data/ab/pack");
        let index = dir.path().join("index/ab");
        rt().block_on(async {
            let bytes = Bytes::from(vec![7u8; 8 << 20]);
            store
                .put_create("data/ab/pack", bytes.clone(), |_| false)
                .await
                .unwrap();
            store
                .put_create("index/ab", bytes, |_| false)
                .await
                .unwrap();
            assert_eq!(cached_pages(&pack), 0, "a pack written is dropped");
            assert_eq!(cached_pages(&index), 2048, "other objects stay cached");
            // A tree's small read stays cached; a restore's bulk read is dropped.
            store.get_range("data/ab/pack", 0..4096).await.unwrap();
            assert!(cached_pages(&pack) >= 1);
            store.get_range("data/ab/pack", 0..8 << 20).await.unwrap();
            assert_eq!(cached_pages(&pack), 0, "a bulk read is dropped");
            store.get("data/ab/pack").await.unwrap();
            assert_eq!(cached_pages(&pack), 0, "a whole pack read is dropped");
        });
    }

    #[test]
    fn bulk_reads_of_a_local_store_reuse_their_buffers_and_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
        rt().block_on(async {
            let content: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
            store
                .put_create("data/cd/pack", Bytes::from(content.clone()), |_| false)
                .await
                .unwrap();
            let first = store
                .get_range("data/cd/pack", 1..(2 << 20) + 1)
                .await
                .unwrap();
            assert_eq!(&first[..], &content[1..(2 << 20) + 1]);
            let at = first.as_ptr();
            drop(first);
            // The buffer handed back is the next read's.
            let second = store
                .get_range("data/cd/pack", 7..(1 << 20) + 7)
                .await
                .unwrap();
            assert_eq!(second.as_ptr(), at);
            assert_eq!(&second[..], &content[7..(1 << 20) + 7]);
            let whole = store.get("data/cd/pack").await.unwrap();
            assert_eq!(&whole[..], &content[..], "not the buffer still in use");
            assert_ne!(whole.as_ptr(), second.as_ptr());
            // Past the end, and a pack that is not there.
            let past = store.get_range("data/cd/pack", 2 << 20..4 << 20).await;
            assert!(matches!(past, Err(Error::Corrupt { .. })), "{past:?}");
            let missing = store.get_range("data/cd/none", 0..2 << 20).await;
            assert!(
                matches!(missing, Err(Error::MissingObject { .. })),
                "{missing:?}"
            );
            assert!(matches!(
                store.get("data/cd/none").await,
                Err(Error::MissingObject { .. })
            ));
        });
    }

    #[test]
    fn an_upload_limit_paces_writes_to_the_rate() {
        let rt = rt();
        let s = Store::open("memory://", &StoreOptions::default())
            .unwrap()
            .with_upload_limit(256 * 1024, None);
        rt.block_on(async {
            let started = std::time::Instant::now();
            for n in 0..5 {
                s.put_create(
                    &format!("data/aa/{n}"),
                    Bytes::from(vec![n; 64 * 1024]),
                    |_| false,
                )
                .await
                .unwrap();
            }
            // The first write goes at once; each further 64 KiB waits a quarter second.
            let elapsed = started.elapsed();
            assert!(
                elapsed >= std::time::Duration::from_millis(990),
                "{elapsed:?}"
            );
            assert_eq!(s.list("data").await.unwrap().len(), 5);
        });
    }

    #[test]
    fn create_only_resolves_a_lost_response_by_verifying() {
        let rt = rt();
        let s = Store::open("memory://", &StoreOptions::default()).unwrap();
        rt.block_on(async {
            let data = Bytes::from_static(b"content");
            s.put_create("data/aa/x", data.clone(), |_| false)
                .await
                .unwrap();
            // Our earlier write landed but we never heard back: the retry sees
            // AlreadyExists, reads the object back, and accepts identical bytes.
            s.put_create("data/aa/x", data.clone(), |e| e == b"content")
                .await
                .unwrap();
            // A different object under the name is an error, never an overwrite.
            let err = s
                .put_create("data/aa/x", Bytes::from_static(b"other"), |e| e == b"other")
                .await
                .unwrap_err();
            assert!(err.to_string().contains("different object"), "{err}");
            assert_eq!(&s.get("data/aa/x").await.unwrap()[..], b"content");
            assert!(matches!(
                s.get("nope").await,
                Err(Error::MissingObject { .. })
            ));
            assert!(s.head("nope").await.unwrap().is_none());
            s.delete("nope").await.unwrap();
            assert_eq!(s.list("data").await.unwrap().len(), 1);
        });
    }

    #[test]
    fn bad_locations_are_explained() {
        for (url, msg) in [
            ("", "no repository given"),
            ("ftp://x/y", "unsupported"),
            ("s3://", "no bucket"),
        ] {
            let e = Store::open(url, &StoreOptions::default()).unwrap_err();
            assert!(e.to_string().contains(msg), "{url}: {e}");
        }
    }
}
