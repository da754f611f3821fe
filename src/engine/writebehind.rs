//! Restored data goes to disk as a restore writes it, and leaves the page cache.
//!
//! A restore writes gigabytes that nobody reads again soon. Left to the kernel they
//! fill the page cache with dirty pages, go to disk in bursts long after the restore
//! said it was done, and push the host's useful cache out. On virtual machines whose
//! hypervisor takes freed guest memory back (free page reporting, as on the data
//! center's own), every page the cache grows by is also slow to take: writing 1.6 GB
//! into fresh page-cache pages cost 4.2 kernel CPU-seconds and 6.5 s there, against
//! 0.7–0.9 CPU-seconds and 1.3–1.7 s — flushed to disk — when each megabyte written
//! was started to disk at once and dropped once there, so the same pages came back
//! for the next one.
//!
//! [`WriteBehind`] does that on a thread of its own, so the workers that write never
//! wait for the disk: each written range is started to disk at once
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait), and once
//! [`WINDOW_BYTES`] of later writes (or [`WINDOW_FILES`] descriptors) are on their way,
//! the oldest is waited for and its pages are dropped (`posix_fadvise(DONTNEED)`).
//! When more than that is handed over than the disk takes, the hand-over waits: a
//! restore cannot run ahead of its disk by more than the window and the queue.
//!
//! A write the disk refuses is reported per tag when the write-behind finishes, so a
//! restore never calls a file restored that the kernel failed to write.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes started to disk and not yet waited for.
pub const WINDOW_BYTES: u64 = 64 << 20;
/// Descriptors held open for ranges started and not yet waited for (small files each
/// hold one; kept well under the usual limit of 1024 open files).
pub const WINDOW_FILES: usize = 128;
/// Ranges handed over and not yet started (each holds a descriptor too).
const QUEUE: usize = 64;

/// A range of a file that was written: `tag` names it to the caller (a file's index,
/// its path).
struct Written<T> {
    file: File,
    offset: u64,
    len: u64,
    tag: T,
}

/// Tags of ranges the disk refused, each with the error.
pub type Refused<T> = Vec<(T, String)>;

/// Writes started to disk and dropped from the page cache behind a restore; see the
/// module documentation.
pub struct WriteBehind<T: Send + 'static> {
    tx: Option<SyncSender<Written<T>>>,
    thread: Option<JoinHandle<Refused<T>>>,
}

impl<T: Send + 'static> WriteBehind<T> {
    /// Start the write-behind thread.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("cadang-writeback".into())
            .spawn(move || run(&rx))?;
        Ok(WriteBehind {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// `len` bytes of `file` from `offset` were written (holes included); `tag` names
    /// them in the failures [`WriteBehind::finish`] returns. The descriptor is closed
    /// once the range is on disk. Waits while the thread is a full queue behind.
    pub fn written(&self, file: File, offset: u64, len: u64, tag: T) {
        if len == 0 {
            return;
        }
        if let Some(tx) = &self.tx {
            // A send fails only when the thread is gone (it panicked): the range then
            // stays in the page cache and goes to disk as any write does.
            let _ = tx.send(Written {
                file,
                offset,
                len,
                tag,
            });
        }
    }

    /// Wait until every range handed over is on disk and out of the page cache, and
    /// return the tags whose writes the disk refused, with the error.
    ///
    /// # Errors
    /// When the thread itself failed: what reached the disk is then unknown.
    pub fn finish(mut self) -> Result<Refused<T>, String> {
        self.stop()
    }

    fn stop(&mut self) -> Result<Refused<T>, String> {
        drop(self.tx.take());
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(refused)) => Ok(refused),
            Some(Err(_)) => Err("the write-behind thread failed".into()),
            None => Ok(Vec::new()),
        }
    }
}

impl<T: Send + 'static> Drop for WriteBehind<T> {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn run<T>(rx: &Receiver<Written<T>>) -> Refused<T> {
    let mut failed = Vec::new();
    let mut started: VecDeque<Written<T>> = VecDeque::new();
    let mut in_flight = 0u64;
    for w in rx {
        if let Err(e) = sync_range(&w, libc::SYNC_FILE_RANGE_WRITE) {
            failed.push((w.tag, e.to_string()));
            continue;
        }
        in_flight += w.len;
        started.push_back(w);
        while in_flight > WINDOW_BYTES || started.len() > WINDOW_FILES {
            let Some(oldest) = started.pop_front() else {
                break;
            };
            in_flight -= oldest.len;
            settle(oldest, &mut failed);
        }
    }
    for w in started {
        settle(w, &mut failed);
    }
    failed
}

/// Wait for a started range and drop its pages.
fn settle<T>(w: Written<T>, failed: &mut Refused<T>) {
    let waited = sync_range(
        &w,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
    match waited {
        Ok(()) => drop_pages(&w),
        Err(e) => failed.push((w.tag, e.to_string())),
    }
}

fn sync_range<T>(w: &Written<T>, flags: libc::c_uint) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(w.offset),
        libc::off64_t::try_from(w.len),
    ) else {
        return Ok(());
    };
    // SAFETY: a plain system call on a descriptor `w.file` owns.
    let rc = unsafe { libc::sync_file_range(w.file.as_raw_fd(), offset, len, flags) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // A file system that cannot start writeback of a range (or a file that is not
        // a regular file): its pages go to disk as any write's do.
        Some(libc::EINVAL | libc::ESPIPE | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

fn drop_pages<T>(w: &Written<T>) {
    // A failure only leaves the pages cached.
    let _ = drop_cached(&w.file, w.offset, w.len);
}

/// Drop the clean pages of `len` bytes of `file` from `offset` (`len` 0: to its end)
/// from the page cache (`posix_fadvise(DONTNEED)`); dirty pages stay. For data read or
/// written in bulk that nobody reads again soon: pages freed here are the next ones the
/// kernel hands out, which on the data center's virtual machines costs far less than
/// fresh ones (see the module documentation).
///
/// # Errors
/// The system call's error; the pages then simply stay cached.
pub fn drop_cached(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: a plain system call on a descriptor `file` owns for the call.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) } {
        0 => Ok(()),
        code => Err(std::io::Error::from_raw_os_error(code)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// Pages of the file at `path` that are in the page cache.
    pub(crate) fn cached_pages(path: &std::path::Path) -> usize {
        let file = File::open(path).unwrap();
        let length = usize::try_from(file.metadata().unwrap().len()).unwrap();
        if length == 0 {
            return 0;
        }
        let mut resident = vec![0u8; length.div_ceil(4096)];
        // SAFETY: a read-only shared mapping of a file we hold open, only passed to
        // mincore (which touches no page) and unmapped before the file is closed.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(at, libc::MAP_FAILED);
            assert_eq!(libc::mincore(at, length, resident.as_mut_ptr()), 0);
            libc::munmap(at, length);
        }
        resident.iter().filter(|byte| **byte & 1 == 1).count()
    }

    /// tmpfs keeps files in the page cache itself: nothing can be dropped there, and the
    /// tests of dropping say so and pass.
    pub(crate) fn on_tmpfs(dir: &std::path::Path) -> bool {
        // SAFETY: statfs fills the struct it is given for a valid C path.
        let on_tmpfs = unsafe {
            let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
            let mut fs: libc::statfs = std::mem::zeroed();
            libc::statfs(path.as_ptr(), &raw mut fs) == 0 && fs.f_type == libc::TMPFS_MAGIC
        };
        if on_tmpfs {
            eprintln!("skipped: {} is on tmpfs", dir.display());
        }
        on_tmpfs
    }

    /// Descriptors this process holds open on files under `dir` (other tests running
    /// beside this one open and close their own).
    fn open_under(dir: &std::path::Path) -> usize {
        let dir = dir.canonicalize().unwrap();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.starts_with(&dir))
            .count()
    }

    #[test]
    fn written_ranges_reach_the_disk_and_leave_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        if on_tmpfs(dir.path()) {
            return;
        }
        let behind = WriteBehind::<usize>::start().unwrap();
        // A large file in 1 MiB ranges, and more small files than the window holds
        // descriptors, as a restore hands them over.
        let big = dir.path().join("big");
        let file = File::create(&big).unwrap();
        let mut expected = Vec::new();
        for i in 0..12u8 {
            let part = vec![i.wrapping_mul(37) | 1; 1 << 20];
            file.write_all_at(&part, expected.len() as u64).unwrap();
            behind.written(file.try_clone().unwrap(), expected.len() as u64, 1 << 20, 0);
            expected.extend_from_slice(&part);
        }
        drop(file);
        for n in 1..=300usize {
            let path = dir.path().join(format!("small-{n}"));
            std::fs::write(&path, n.to_le_bytes().repeat(1024)).unwrap();
            behind.written(File::open(&path).unwrap(), 0, 8192, n);
        }
        assert_eq!(behind.finish().unwrap(), Vec::new(), "nothing refused");
        // Every range was written back (dirty pages cannot be dropped) and dropped.
        assert_eq!(cached_pages(&big), 0);
        for n in [1usize, 150, 300] {
            assert_eq!(cached_pages(&dir.path().join(format!("small-{n}"))), 0);
        }
        assert_eq!(std::fs::read(&big).unwrap(), expected, "content intact");
        assert_eq!(
            std::fs::read(dir.path().join("small-7")).unwrap(),
            7usize.to_le_bytes().repeat(1024)
        );
        assert_eq!(
            open_under(dir.path()),
            0,
            "every descriptor handed over was closed"
        );
    }

    #[test]
    fn ranges_the_kernel_cannot_start_are_left_to_it() {
        // A pipe cannot be synced by range (ESPIPE): not a refusal, nothing is lost.
        let (reader, writer) = std::io::pipe().unwrap();
        let behind = WriteBehind::start().unwrap();
        behind.written(File::from(std::os::fd::OwnedFd::from(writer)), 0, 4096, 1);
        behind.written(File::open("/dev/null").unwrap(), 0, 0, 2);
        assert_eq!(behind.finish().unwrap(), Vec::new());
        drop(reader);
    }

    #[test]
    fn data_read_in_bulk_can_be_dropped() {
        let dir = tempfile::tempdir().unwrap();
        if on_tmpfs(dir.path()) {
            return;
        }
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        file.write_all_at(&[5u8; 1 << 20], 0).unwrap();
        file.sync_all().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let file = File::open(&path).unwrap();
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(cached_pages(&path), 256);
        drop_cached(&file, 0, 0).unwrap();
        assert_eq!(cached_pages(&path), 0);
    }
}
