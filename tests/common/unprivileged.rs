//! Mode bits that bind root too. The suite runs as root on CI, where a file or directory
//! of mode 0 is still readable; a test that needs one a backup cannot read starts cadang
//! without the two capabilities that override read permissions.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH` (linux/capability.h).
const READ_OVERRIDES: [libc::c_ulong; 2] = [1, 2];

/// Starts `command` without the capabilities that let root read what its mode refuses:
/// they are dropped from the bounding set before `exec`, so root's program has none of
/// them. For another user there is nothing to drop (the call fails, harmlessly).
pub fn without_read_override(command: &mut Command) -> &mut Command {
    // SAFETY: between fork and exec the closure only makes prctl calls, which neither
    // allocate nor take locks.
    unsafe {
        command.pre_exec(|| {
            for capability in READ_OVERRIDES {
                libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0);
            }
            Ok(())
        })
    }
}

/// A mode-0 directory that could not be listed, as a restore recreates it: mode 0, and
/// empty (opened to look, then left readable by its owner).
pub fn assert_restored_closed_and_empty(restored: &Path) {
    let mode = std::fs::symlink_metadata(restored)
        .unwrap_or_else(|e| panic!("{} was not restored: {e}", restored.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0, "{mode:o}");
    std::fs::set_permissions(restored, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(std::fs::read_dir(restored).unwrap().count(), 0);
}
