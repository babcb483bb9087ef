//! The guest's pseudo filesystems, mounted by init (`init`) before anything else runs.
//!
//! Why not busybox `mount`: each one is a fork and exec, about 70 ms under TCG with KASAN,
//! and eight of them were most of the second between `Run /init` and the agent's start.
//! `mount(2)` from init costs no exec at all.

use std::ffi::CString;
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;

/// One pseudo filesystem: what `mount -t FSTYPE -o DATA SOURCE TARGET` would mount.
struct PseudoFs {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    data: &'static str,
}

/// In mount order: `/dev` before `/dev/pts`, `/sys` before what lives under it.
const PSEUDO_FILESYSTEMS: &[PseudoFs] = &[
    PseudoFs { source: "proc", target: "/proc", fstype: "proc", data: "" },
    PseudoFs { source: "sysfs", target: "/sys", fstype: "sysfs", data: "" },
    PseudoFs { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", data: "" },
    PseudoFs { source: "tmpfs", target: "/tmp", fstype: "tmpfs", data: "mode=1777" },
    PseudoFs { source: "tmpfs", target: "/run", fstype: "tmpfs", data: "mode=0755" },
    PseudoFs { source: "configfs", target: "/sys/kernel/config", fstype: "configfs", data: "" },
    PseudoFs { source: "debugfs", target: "/sys/kernel/debug", fstype: "debugfs", data: "" },
    PseudoFs { source: "devpts", target: "/dev/pts", fstype: "devpts", data: "" },
];

/// Mounts every pseudo filesystem, creating its mount point if it is missing, and goes on
/// past a failure (a filesystem the kernel lacks) so the others are still there. Returns one
/// message per failure.
pub fn mount_pseudo_filesystems() -> Vec<String> {
    PSEUDO_FILESYSTEMS.iter().filter_map(|fs| mount(fs).err().map(|e| format!("mount {} on {}: {e}", fs.fstype, fs.target))).collect()
}

fn mount(fs: &PseudoFs) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o755).create(fs.target)?;
    let c = |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (source, target, fstype, data) = (c(fs.source)?, c(fs.target)?, c(fs.fstype)?, c(fs.data)?);
    // SAFETY: all four are NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_mounted_before_what_lives_under_them() {
        for (i, fs) in PSEUDO_FILESYSTEMS.iter().enumerate() {
            for parent in &PSEUDO_FILESYSTEMS[i + 1..] {
                assert!(
                    !fs.target.starts_with(&format!("{}/", parent.target)),
                    "{} is mounted before its parent {}",
                    fs.target,
                    parent.target
                );
            }
        }
    }

    #[test]
    fn a_mount_point_that_cannot_be_made_is_an_error() {
        // Never a real mount on the host running the tests: nothing can be created under
        // /proc/self, so this fails before mount(2).
        let fs = PseudoFs { source: "none", target: "/proc/self/no-such-dir", fstype: "tmpfs", data: "" };
        let err = mount(&fs).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
    }
}
