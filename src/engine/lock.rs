//! Lease locks for the few operations that must not run twice at once
//! (prune). Backups, restores and checks never lock.
//!
//! A lease names its holder and an expiry; the holder renews it while it
//! works. A lease past its expiry is stale and ignored, so a crashed prune
//! never blocks unattended jobs for longer than the lease time; `cadang
//! unlock` removes stale leases (or all, when asked). Where the reader can
//! tell that the holder is gone, the lease is stale at once: a holder of the
//! same process space whose pid no longer exists, or a holder of the same
//! machine whose boot has ended (the machine restarted since).

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
    /// The process space the holder ran in: the kernel's boot id and the holder's pid
    /// namespace. Within one process space a pid names one process, so a lease whose
    /// holder ran here and is gone (killed, crashed) is stale at once; from anywhere
    /// else (another machine, container or boot) only the expiry tells. Empty when
    /// unknown, as in leases written before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pid_space: String,
    /// The holder's machine id (`/etc/machine-id`). With the host name and the boot
    /// id of [`LockInfo::pid_space`] it tells a reader on the same machine that the
    /// holder's boot has ended, and with it the holder. Empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub machine: String,
}

/// Where the reader of a lease runs: what it can compare a holder with.
#[derive(Clone, Debug)]
struct Here {
    /// See [`LockInfo::pid_space`].
    pid_space: String,
    /// See [`LockInfo::machine`].
    machine: String,
    host: String,
}

impl Here {
    fn now() -> Self {
        Self {
            pid_space: pid_space(),
            machine: std::fs::read_to_string("/etc/machine-id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

/// The boot id part of a process space.
fn boot_of(pid_space: &str) -> &str {
    pid_space.split_once('/').map_or("", |(boot, _)| boot)
}

impl LockInfo {
    /// Whether the lease is in force at `now` for a reader at `here`: not expired,
    /// and its holder not known to be gone.
    fn holds(&self, now: DateTime<Utc>, here: &Here) -> bool {
        if self.expires <= now {
            return false;
        }
        !self.holder_gone(here)
    }

    /// Whether the reader knows the holder is gone: it ran in the reader's process
    /// space and its pid no longer exists, or it ran on the reader's machine (same
    /// machine id and host name) in a boot that has ended. A lease of another
    /// machine, container or unknown origin is never broken on a guess.
    fn holder_gone(&self, here: &Here) -> bool {
        if here.pid_space.is_empty() {
            return false;
        }
        if self.pid_space == here.pid_space {
            return !process_exists(self.pid);
        }
        let (boot, our_boot) = (boot_of(&self.pid_space), boot_of(&here.pid_space));
        !self.machine.is_empty()
            && self.machine == here.machine
            && self.host == here.host
            && !boot.is_empty()
            && !our_boot.is_empty()
            && boot != our_boot
    }
}

/// This process's process space (see [`LockInfo::pid_space`]); empty where the kernel
/// does not say.
fn pid_space() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let namespace = std::fs::read_link("/proc/self/ns/pid");
    match (boot, namespace) {
        (Ok(boot), Ok(namespace)) if !boot.trim().is_empty() => {
            format!("{}/{}", boot.trim(), namespace.display())
        }
        _ => String::new(),
    }
}

/// Whether a process with this pid exists in our pid namespace; when that cannot be
/// told, it is taken to exist (a lease is never broken on a guess).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
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
    let here = Here::now();
    let live = |now: DateTime<Utc>, skip: &str| -> Result<Option<LockInfo>> {
        for (key, info) in list_locks(repo)? {
            if key == skip {
                continue;
            }
            if let Some(i) = info
                && i.holds(now, &here)
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
    let info = LockInfo {
        purpose: purpose.to_string(),
        host: here.host.clone(),
        pid: std::process::id(),
        created: now,
        expires: now + LEASE_TTL,
        pid_space: here.pid_space.clone(),
        machine: here.machine.clone(),
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
            && o.holds(now, &here)
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
    let (now, here) = (Utc::now(), Here::now());
    let mut n = 0;
    for (key, info) in list_locks(repo)? {
        let stale = info.as_ref().is_none_or(|i| !i.holds(now, &here));
        if all || stale {
            repo.block_on(repo.store().delete(&key))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::repo::test_repository;

    /// A lease of a holder on another machine, of unknown machine id.
    fn holder(pid: u32, pid_space: &str, expires: DateTime<Utc>) -> LockInfo {
        LockInfo {
            purpose: "prune".into(),
            host: "elsewhere".into(),
            pid,
            created: Utc::now() - Duration::minutes(1),
            expires,
            pid_space: pid_space.into(),
            machine: String::new(),
        }
    }

    /// Leaves a lease as a holder would, without a renewer.
    fn plant(repo: &Repository, pid: u32, pid_space: &str, expires: DateTime<Utc>) -> String {
        plant_info(repo, &holder(pid, pid_space, expires))
    }

    fn plant_info(repo: &Repository, info: &LockInfo) -> String {
        let key = format!("locks/{}", LockId(random_bytes()));
        repo.block_on(repo.store().put_create(&key, encode(repo, info), |_| false))
            .unwrap();
        key
    }

    /// The pid of a process that has exited (and been reaped).
    fn exited_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_live_lease_refuses_a_second_holder_until_released() {
        let (_rt, _dir, repo) = test_repository();
        let held = acquire(&repo, "prune").unwrap();
        let Err(Error::Locked { holder, .. }) = acquire(&repo, "prune") else {
            panic!("a second lease was granted while the first is held");
        };
        assert!(
            holder.contains(&format!("pid {}", std::process::id())),
            "{holder}"
        );
        assert_eq!(
            unlock(&repo, false).unwrap(),
            0,
            "a held lease is not stale"
        );
        drop(held);
        assert!(list_locks(&repo).unwrap().is_empty(), "released on drop");
        drop(acquire(&repo, "prune").unwrap());
    }

    #[test]
    fn a_lease_whose_holder_exited_here_is_stale_at_once_elsewhere_it_waits_for_expiry() {
        let (_rt, _dir, repo) = test_repository();
        let here = pid_space();
        assert!(
            !here.is_empty(),
            "Linux tells its boot id and pid namespace"
        );
        let in_force = Utc::now() + LEASE_TTL;

        // A process of this machine that is still running holds its lease.
        let mut running = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let key = plant(&repo, running.id(), &here, in_force);
        assert!(matches!(acquire(&repo, "prune"), Err(Error::Locked { .. })));
        assert_eq!(unlock(&repo, false).unwrap(), 0);
        running.kill().unwrap();
        running.wait().unwrap();

        // Once it is gone, its lease is stale: taken over, and `unlock` removes it.
        drop(acquire(&repo, "prune").unwrap());
        assert_eq!(unlock(&repo, false).unwrap(), 1);
        assert!(list_locks(&repo).unwrap().iter().all(|(k, _)| *k != key));

        // The same pid in another process space (another machine, container or boot)
        // says nothing about that holder: the lease holds until it expires.
        let dead = exited_pid();
        plant(&repo, dead, "another-boot/pid:[4026531836]", in_force);
        assert!(matches!(acquire(&repo, "prune"), Err(Error::Locked { .. })));
        plant(&repo, dead, "", in_force);
        assert_eq!(
            unlock(&repo, false).unwrap(),
            0,
            "neither lease is stale yet"
        );
        assert_eq!(unlock(&repo, true).unwrap(), 2, "--remove-all removes them");

        // An expired lease never holds.
        plant(
            &repo,
            std::process::id(),
            &here,
            Utc::now() - Duration::seconds(1),
        );
        drop(acquire(&repo, "prune").unwrap());
    }

    #[test]
    fn a_lease_from_an_ended_boot_of_this_machine_is_stale_at_once_nothing_else_is() {
        let here = Here {
            pid_space: "boot-now/pid:[4026531836]".into(),
            machine: "3d1219c7c4c5404aaa1f6d2a48adfda4".into(),
            host: "dc-backup-01".into(),
        };
        let now = Utc::now();
        // Our own pid: a lease from another boot is judged without it.
        let alive = std::process::id();
        let before_reboot = LockInfo {
            host: here.host.clone(),
            machine: here.machine.clone(),
            ..holder(alive, "boot-before/pid:[4026531836]", now + LEASE_TTL)
        };
        assert!(
            !before_reboot.holds(now, &here),
            "the machine restarted since: the holder is gone"
        );
        let cases = [
            (
                "another host of the same machine id (a cloned image)",
                LockInfo {
                    host: "dc-backup-02".into(),
                    ..before_reboot.clone()
                },
            ),
            (
                "another machine of the same host name",
                LockInfo {
                    machine: "0123456789abcdef0123456789abcdef".into(),
                    ..before_reboot.clone()
                },
            ),
            (
                "a holder that recorded no machine id",
                LockInfo {
                    machine: String::new(),
                    ..before_reboot.clone()
                },
            ),
            (
                "a holder that recorded no boot",
                LockInfo {
                    pid_space: String::new(),
                    ..before_reboot.clone()
                },
            ),
            (
                "a container of this boot (another pid namespace), its pid unknown here",
                LockInfo {
                    pid_space: "boot-now/pid:[4026532999]".into(),
                    pid: exited_pid(),
                    ..before_reboot.clone()
                },
            ),
        ];
        for (what, info) in cases {
            assert!(info.holds(now, &here), "{what}: held until it expires");
            let expired = LockInfo {
                expires: now - Duration::seconds(1),
                ..info
            };
            assert!(!expired.holds(now, &here), "{what}: expired");
        }
        // A reader that cannot tell its own process space breaks nothing.
        let blind = Here {
            pid_space: String::new(),
            ..here
        };
        assert!(before_reboot.holds(now, &blind));
    }

    #[test]
    fn a_prune_lease_left_by_a_reboot_here_does_not_block_the_next_prune() {
        let (_rt, _dir, repo) = test_repository();
        let here = Here::now();
        assert!(
            !here.machine.is_empty() && !boot_of(&here.pid_space).is_empty(),
            "this machine tells its machine id and boot id"
        );
        // The daemon was pruning when the machine went down; it came back up.
        let ns = here.pid_space.split_once('/').map(|(_, ns)| ns).unwrap();
        let left = LockInfo {
            host: here.host.clone(),
            machine: here.machine.clone(),
            ..holder(
                std::process::id(),
                &format!("00000000-0000-0000-0000-000000000000/{ns}"),
                Utc::now() + LEASE_TTL,
            )
        };
        let key = plant_info(&repo, &left);
        drop(acquire(&repo, "prune").expect("the lease of the ended boot is stale"));
        assert_eq!(unlock(&repo, false).unwrap(), 1, "and `unlock` removes it");
        assert!(list_locks(&repo).unwrap().iter().all(|(k, _)| *k != key));

        // The same lease from another machine holds until it expires.
        plant_info(
            &repo,
            &LockInfo {
                machine: "0123456789abcdef0123456789abcdef".into(),
                ..left
            },
        );
        assert!(matches!(acquire(&repo, "prune"), Err(Error::Locked { .. })));
    }
}
