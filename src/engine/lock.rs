//! Lease locks for the few operations that must not run twice at once
//! (prune). Backups, restores and checks never lock.
//!
//! A lease names its holder and an expiry; the holder renews it while it
//! works. A lease past its expiry is stale and ignored, so a crashed prune
//! never blocks unattended jobs for longer than the lease time; `cadang
//! unlock` removes stale leases (or all, when asked).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as StdDuration;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::format::{ObjectKind, open_json, seal_json};
use super::id::{LockId, random_bytes};
use super::repo::Repository;

/// Content of a `locks/<id>` object.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    /// What holds it.
    pub purpose: String,
    /// Host of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Expiry: after this the lease is stale.
    pub expires: DateTime<Utc>,
}

/// A held lease; renewed in the background, released on drop.
pub struct Lease<'a> {
    repo: &'a Repository,
    key: String,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::minutes(15);
/// How often a held lease is renewed: three times within its lifetime.
const RENEW_EVERY: StdDuration = StdDuration::from_secs(LEASE_TTL.num_seconds().unsigned_abs() / 3);

fn encode(repo: &Repository, info: &LockInfo) -> Bytes {
    Bytes::from(seal_json(repo.keys(), ObjectKind::Lock, info))
}

/// List leases with their state.
///
/// # Errors
/// Storage errors.
pub fn list_locks(repo: &Repository) -> Result<Vec<(String, Option<LockInfo>)>> {
    let mut out = Vec::new();
    for info in repo.block_on(repo.store().list("locks"))? {
        let info_obj = match repo.block_on(repo.store().get(&info.key)) {
            Ok(raw) => open_json::<LockInfo>(repo.keys(), ObjectKind::Lock, "lock", &raw).ok(),
            Err(Error::MissingObject { .. }) => continue,
            Err(e) => return Err(e),
        };
        out.push((info.key, info_obj));
    }
    Ok(out)
}

/// Take an exclusive lease for `purpose`.
///
/// # Errors
/// `Error::Locked` when a live lease exists; storage errors.
pub fn acquire<'a>(repo: &'a Repository, purpose: &str) -> Result<Lease<'a>> {
    let now = Utc::now();
    let live = |now: DateTime<Utc>, skip: &str| -> Result<Option<LockInfo>> {
        for (key, info) in list_locks(repo)? {
            if key == skip {
                continue;
            }
            if let Some(i) = info
                && i.expires > now
            {
                return Ok(Some(i));
            }
        }
        Ok(None)
    };
    if let Some(i) = live(now, "")? {
        return Err(Error::Locked {
            holder: format!("{} (pid {} on {})", i.purpose, i.pid, i.host),
            until: i.expires.to_rfc3339(),
        });
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let info = LockInfo {
        purpose: purpose.to_string(),
        host,
        pid: std::process::id(),
        created: now,
        expires: now + LEASE_TTL,
    };
    let key = format!("locks/{}", LockId(random_bytes()));
    repo.block_on(
        repo.store()
            .put_create(&key, encode(repo, &info), |_| false),
    )?;
    // Two processes may have written at the same moment: look again and let
    // the older lease win (ties broken by name).
    std::thread::sleep(StdDuration::from_millis(200));
    for (other, oinfo) in list_locks(repo)? {
        if other == key {
            continue;
        }
        if let Some(o) = oinfo
            && o.expires > now
            && (o.created, other.as_str()) < (info.created, key.as_str())
        {
            let _ = repo.block_on(repo.store().delete(&key));
            return Err(Error::Locked {
                holder: format!("{} (pid {} on {})", o.purpose, o.pid, o.host),
                until: o.expires.to_rfc3339(),
            });
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let stop = stop.clone();
        let store = repo.store().clone();
        let handle = repo.handle().clone();
        let keys = repo.keys().clone();
        let key = key.clone();
        let mut info = info.clone();
        std::thread::spawn(move || {
            let step = StdDuration::from_millis(200);
            let mut waited = StdDuration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(step);
                waited += step;
                if waited >= RENEW_EVERY {
                    waited = StdDuration::ZERO;
                    info.expires = Utc::now() + LEASE_TTL;
                    let bytes = Bytes::from(seal_json(&keys, ObjectKind::Lock, &info));
                    if let Err(e) = handle.block_on(store.put_overwrite(&key, bytes)) {
                        tracing::warn!(error = %e, "could not renew repository lease");
                    }
                }
            }
        })
    };
    Ok(Lease {
        repo,
        key,
        stop,
        renewer: Some(renewer),
    })
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.renewer.take() {
            let _ = h.join();
        }
        if let Err(e) = self.repo.block_on(self.repo.store().delete(&self.key)) {
            tracing::warn!(error = %e, lock = %self.key, "could not release repository lease; it expires by itself");
        }
    }
}

/// Remove stale leases (or all of them with `all`). Returns how many.
///
/// # Errors
/// Storage errors.
pub fn unlock(repo: &Repository, all: bool) -> Result<usize> {
    let now = Utc::now();
    let mut n = 0;
    for (key, info) in list_locks(repo)? {
        let stale = info.as_ref().is_none_or(|i| i.expires <= now);
        if all || stale {
            repo.block_on(repo.store().delete(&key))?;
            n += 1;
        }
    }
    Ok(n)
}
