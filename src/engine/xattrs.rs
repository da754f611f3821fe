//! Extended attributes of the files a backup reads and a restore writes: POSIX ACLs
//! (`system.posix_acl_access`, `system.posix_acl_default`), file capabilities
//! (`security.capability`, without which a restored `ping` or a service binary loses
//! what it may do), SELinux labels, and `user.*` attributes.
//!
//! Links are never followed: a symlink's own attributes are read and written. Reading
//! on a file system without extended attributes gives none. Writing the `trusted.*`
//! and `security.*` namespaces needs root; a restore that does not restore owners
//! (not root) leaves them out as it leaves the owners, and says nothing of it.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use xattr::FileExt;

use super::tree::Xattr;

fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOTSUP)
}

/// The extended attributes of `path` (not following a symlink), sorted by name.
///
/// # Errors
/// A listing or a value that cannot be read (permissions, I/O); none on a file system
/// that has no extended attributes.
pub fn read(path: &Path) -> io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        // Removed between the listing and the read: not there any more.
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Whether a restore writes this attribute: the privileged namespaces only as root.
fn restorable(x: &Xattr, as_root: bool) -> bool {
    as_root || !(x.name.starts_with(b"trusted.") || x.name.starts_with(b"security."))
}

fn named(x: &Xattr, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "extended attribute {}: {e}",
            String::from_utf8_lossy(&x.name)
        ),
    )
}

/// Writes extended attributes through an open file. Call it after the owner
/// is set (a change of owner clears `security.capability`) and before the mode (a
/// read-only mode would refuse `user.*`).
///
/// # Errors
/// The first attribute that cannot be set, named.
pub fn restore_file(f: &File, xattrs: &[Xattr], as_root: bool) -> io::Result<()> {
    for x in xattrs.iter().filter(|x| restorable(x, as_root)) {
        f.set_xattr(OsStr::from_bytes(&x.name), &x.value)
            .map_err(|e| named(x, e))?;
    }
    Ok(())
}

/// Writes extended attributes on `path` itself (a directory, or a symlink,
/// which is not followed), at the same point as [`restore_file`].
///
/// # Errors
/// The first attribute that cannot be set, named.
pub fn restore_path(path: &Path, xattrs: &[Xattr], as_root: bool) -> io::Result<()> {
    for x in xattrs.iter().filter(|x| restorable(x, as_root)) {
        xattr::set(path, OsStr::from_bytes(&x.name), &x.value).map_err(|e| named(x, e))?;
    }
    Ok(())
}

/// What differs between the attributes a restore writes of `xattrs` and those `path`
/// has: `None` when they match. Attributes `path` has beyond them (a label the target
/// file system gives every file) are not differences.
pub fn difference(path: &Path, xattrs: &[Xattr], as_root: bool) -> Option<String> {
    for x in xattrs.iter().filter(|x| restorable(x, as_root)) {
        match xattr::get(path, OsStr::from_bytes(&x.name)) {
            Ok(Some(value)) if value == x.value => {}
            Ok(Some(_)) => {
                return Some(format!(
                    "extended attribute {} differs from the snapshot's",
                    String::from_utf8_lossy(&x.name)
                ));
            }
            Ok(None) => {
                return Some(format!(
                    "extended attribute {} is missing",
                    String::from_utf8_lossy(&x.name)
                ));
            }
            Err(e) => return Some(named(x, e).to_string()),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_attributes_are_read_sorted_written_and_compared() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, b"x").unwrap();
        for (name, value) in [("user.b", &b"2"[..]), ("user.a", b"\x00\xff")] {
            if let Err(e) = xattr::set(&source, name, value) {
                // A file system without user attributes has nothing to test here.
                assert!(unsupported(&e), "{e}");
                return;
            }
        }
        let read = read(&source).unwrap();
        let names: Vec<&[u8]> = read.iter().map(|x| x.name.as_slice()).collect();
        assert_eq!(names, [&b"user.a"[..], b"user.b"]);
        assert_eq!(read[0].value, b"\x00\xff");

        let mut xattrs = read;
        let copy = dir.path().join("copy");
        let f = File::create(&copy).unwrap();
        assert!(difference(&copy, &xattrs, false).is_some());
        restore_file(&f, &xattrs, false).unwrap();
        assert_eq!(difference(&copy, &xattrs, false), None);
        xattr::set(&copy, "user.b", b"changed").unwrap();
        assert!(
            difference(&copy, &xattrs, false)
                .is_some_and(|d| d.contains("user.b") && d.contains("differs"))
        );
        // The privileged namespaces are written only as root, and only then compared.
        xattrs.push(Xattr {
            name: b"trusted.cadang".to_vec(),
            value: b"t".to_vec(),
        });
        xattr::set(&copy, "user.b", b"2").unwrap();
        assert_eq!(difference(&copy, &xattrs, false), None);
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        if let Err(e) = xattr::set(&target, "user.on_target", b"1") {
            assert!(unsupported(&e), "{e}");
            return;
        }
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(read(&link).unwrap().is_empty());
    }
}
