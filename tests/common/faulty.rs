//! A fault-injecting `ObjectStore` wrapper for tests (after kopia's
//! `FaultyStorage` and restic's error backends): per operation and key, inject
//! transient or permanent errors, a write whose response is lost, garbled or
//! truncated reads, once or always; a crash after the n-th write; latency on every
//! put, read and delete; or listings that lag behind writes and deletes, as on
//! eventually consistent S3-compatible stores.
#![allow(dead_code)] // each test file uses the parts it needs

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Which operation a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    /// Reads, whole or ranged.
    Get,
    /// Metadata reads.
    Head,
    List,
    Delete,
}

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A 5xx-like error the caller may retry.
    Transient,
    /// An error retrying does not fix (permission denied).
    Permanent,
    /// The write (or delete) lands, but the caller sees an error (a lost response).
    LostResponse,
    /// The read returns data with one byte flipped.
    Garble,
    /// The read returns 10 bytes fewer.
    Truncate,
}

/// A fault rule: applies to `op` on keys containing `key`, `times` times
/// (`None`: always).
#[derive(Clone, Debug)]
pub struct Rule {
    pub op: Op,
    pub key: String,
    pub fault: Fault,
    pub times: Option<u32>,
}

/// The wrapper.
pub struct FaultyStore {
    inner: std::sync::Arc<dyn ObjectStore>,
    rules: std::sync::Arc<Mutex<Vec<Rule>>>,
    /// Writes (puts and deletes) still allowed before every further write
    /// fails: simulates a crash right after that many durable steps.
    write_budget: std::sync::Arc<Mutex<Option<u64>>>,
    /// Writes performed (puts and deletes that reached the inner store).
    pub writes: std::sync::Arc<AtomicU64>,
    /// How many faults were injected.
    pub injected: std::sync::Arc<AtomicU64>,
    /// Added to every put, get and delete (a slow or distant store), in milliseconds.
    latency_ms: AtomicU64,
    /// While set, listings lag: see [`FaultyStore::lag_lists`].
    lag: std::sync::Arc<Mutex<Option<Lag>>>,
}

/// What listings do not show yet, or still show.
#[derive(Default)]
struct Lag {
    /// Written since the lag began: absent from listings.
    hidden: std::collections::HashSet<String>,
    /// Deleted since the lag began: still listed (a GET says not found).
    ghosts: Vec<ObjectMeta>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    pub fn new(inner: std::sync::Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            rules: std::sync::Arc::new(Mutex::new(Vec::new())),
            write_budget: std::sync::Arc::new(Mutex::new(None)),
            writes: std::sync::Arc::new(AtomicU64::new(0)),
            injected: std::sync::Arc::new(AtomicU64::new(0)),
            lag: std::sync::Arc::new(Mutex::new(None)),
            latency_ms: AtomicU64::new(0),
        }
    }

    /// Every later put, get and delete first waits this long.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    fn latency(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    /// From now on, listings lag: objects written are not listed, objects deleted are
    /// still listed, until [`FaultyStore::settle_lists`]. Reads by key stay exact
    /// (read-after-write), as on the stores that behave like this.
    pub fn lag_lists(&self) {
        *self.lag.lock().unwrap() = Some(Lag::default());
    }

    /// Listings catch up with every write and delete.
    pub fn settle_lists(&self) {
        *self.lag.lock().unwrap() = None;
    }

    pub fn add(&self, op: Op, key: &str, fault: Fault, times: Option<u32>) {
        self.rules.lock().unwrap().push(Rule {
            op,
            key: key.to_string(),
            fault,
            times,
        });
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
        *self.write_budget.lock().unwrap() = None;
    }

    /// Allow `n` more writes, then fail every write ("the process died here").
    pub fn crash_after_writes(&self, n: u64) {
        *self.write_budget.lock().unwrap() = Some(n);
    }

    fn spend_write(budget: &Mutex<Option<u64>>) -> bool {
        let mut b = budget.lock().unwrap();
        match &mut *b {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }

    fn take(&self, op: Op, key: &Path) -> Option<Fault> {
        Self::take_from(&self.rules, &self.injected, op, key)
    }

    fn take_from(
        rules: &Mutex<Vec<Rule>>,
        injected: &AtomicU64,
        op: Op,
        key: &Path,
    ) -> Option<Fault> {
        let mut rules = rules.lock().unwrap();
        for r in rules.iter_mut() {
            if r.op == op && key.as_ref().contains(&r.key) {
                match &mut r.times {
                    Some(0) => continue,
                    Some(n) => *n -= 1,
                    None => {}
                }
                injected.fetch_add(1, Ordering::Relaxed);
                return Some(r.fault);
            }
        }
        None
    }
}

fn transient(op: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected transient failure in {op} (503 Slow Down)").into(),
    }
}

fn permanent(key: &Path) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: key.to_string(),
        source: "injected permanent failure".into(),
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        tokio::time::sleep(self.latency()).await;
        if !Self::spend_write(&self.write_budget) {
            return Err(permanent(location));
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        match self.take(Op::Put, location) {
            Some(Fault::Transient) => Err(transient("put")),
            Some(Fault::Permanent) => Err(permanent(location)),
            Some(Fault::LostResponse) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(transient("put (response lost after the write landed)"))
            }
            _ => {
                let put = self.inner.put_opts(location, payload, opts).await?;
                if let Some(lag) = self.lag.lock().unwrap().as_mut() {
                    lag.hidden.insert(location.to_string());
                }
                Ok(put)
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        tokio::time::sleep(self.latency()).await;
        let fault = if options.head {
            match self.take(Op::Head, location) {
                // A metadata read has no body to garble.
                Some(Fault::Garble | Fault::Truncate | Fault::LostResponse) => None,
                other => other,
            }
        } else {
            self.take(Op::Get, location)
        };
        match fault {
            Some(Fault::Transient) => Err(transient("get")),
            Some(Fault::Permanent) => Err(permanent(location)),
            Some(f @ (Fault::Garble | Fault::Truncate)) => {
                let r = self.inner.get_opts(location, options).await?;
                let (meta, range, attributes) =
                    (r.meta.clone(), r.range.clone(), r.attributes.clone());
                let mut data = r.bytes().await?.to_vec();
                if f == Fault::Garble && !data.is_empty() {
                    let i = data.len() / 2;
                    data[i] ^= 0x01;
                } else {
                    data.truncate(data.len().saturating_sub(10));
                }
                let b = Bytes::from(data);
                Ok(GetResult {
                    payload: GetResultPayload::Stream(
                        futures::stream::once(async move { Ok(b) }).boxed(),
                    ),
                    meta,
                    range,
                    attributes,
                    extensions: Default::default(),
                })
            }
            _ => self.inner.get_opts(location, options).await,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        let budget = self.write_budget.clone();
        let writes = self.writes.clone();
        let lag = self.lag.clone();
        let rules = self.rules.clone();
        let injected = self.injected.clone();
        let latency = self.latency();
        locations
            .then(move |p| {
                let inner = inner.clone();
                let budget = budget.clone();
                let writes = writes.clone();
                let lag = lag.clone();
                let fault = match &p {
                    Ok(p) => Self::take_from(&rules, &injected, Op::Delete, p),
                    Err(_) => None,
                };
                async move {
                    tokio::time::sleep(latency).await;
                    let p = p?;
                    if !Self::spend_write(&budget) {
                        return Err(permanent(&p));
                    }
                    match fault {
                        Some(Fault::Transient) => return Err(transient("delete")),
                        Some(Fault::Permanent) => return Err(permanent(&p)),
                        _ => {}
                    }
                    writes.fetch_add(1, Ordering::Relaxed);
                    let lagging = lag.lock().unwrap().is_some();
                    let meta = if lagging {
                        inner
                            .get_opts(&p, GetOptions::new().with_head(true))
                            .await
                            .ok()
                            .map(|r| r.meta)
                    } else {
                        None
                    };
                    let mut one =
                        inner.delete_stream(futures::stream::once(async move { Ok(p) }).boxed());
                    let deleted = match one.next().await {
                        Some(r) => r?,
                        None => return Err(transient("delete")),
                    };
                    if fault == Some(Fault::LostResponse) {
                        return Err(transient("delete (response lost after the delete landed)"));
                    }
                    if let (Some(lag), Some(meta)) = (lag.lock().unwrap().as_mut(), meta) {
                        // Listed as long as the lag lasts, unless it was written during it.
                        if !lag.hidden.remove(&meta.location.to_string()) {
                            lag.ghosts.push(meta);
                        }
                    }
                    Ok(deleted)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let p = prefix.cloned().unwrap_or_default();
        match self.take(Op::List, &p) {
            Some(Fault::Transient) => {
                futures::stream::once(async { Err(transient("list")) }).boxed()
            }
            _ => {
                let listed = self.inner.list(prefix);
                let Some((hidden, ghosts)) = self.lag.lock().unwrap().as_ref().map(|lag| {
                    let ghosts: Vec<Result<ObjectMeta>> = lag
                        .ghosts
                        .iter()
                        .filter(|m| m.location.prefix_matches(&p))
                        .cloned()
                        .map(Ok)
                        .collect();
                    (lag.hidden.clone(), ghosts)
                }) else {
                    return listed;
                };
                listed
                    .filter(move |m| {
                        let shown = match m {
                            Ok(m) => !hidden.contains(&m.location.to_string()),
                            Err(_) => true,
                        };
                        futures::future::ready(shown)
                    })
                    .chain(futures::stream::iter(ghosts))
                    .boxed()
            }
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A new repository in `dir` behind a fault-injecting store (cheap key
/// stretching: these tests are about storage, not passwords).
pub fn faulty_repo(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
) -> (std::sync::Arc<FaultyStore>, cadang::engine::Repository) {
    std::fs::create_dir_all(dir).unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .unwrap()
        .with_fsync(true);
    let faulty = std::sync::Arc::new(FaultyStore::new(std::sync::Arc::new(local)));
    let store = cadang::engine::Store::from_object_store(faulty.clone(), "faulty://test");
    let opts = cadang::engine::OpenOptions {
        kdf: cadang::engine::crypto::KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        host: None,
    };
    let repo = cadang::engine::Repository::init(rt.handle().clone(), store, b"pw", &opts).unwrap();
    (faulty, repo)
}
