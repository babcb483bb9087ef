//! What end-to-end tests boot: the kernel and image `cargo xtask test` built for them.
//!
//! `xtask test` builds (or reuses) both with progress output and passes their paths in the
//! environment; a test run without them fails with the command to use, never skips.

use std::path::PathBuf;

pub const ENV_BZIMAGE: &str = "UNPLUG_TORTURE_BZIMAGE";
pub const ENV_INITRD: &str = "UNPLUG_TORTURE_INITRD";
/// Which kernel variant that bzImage is (`vanilla`, `resmgr`): tests assert its expectations.
pub const ENV_KERNEL: &str = "UNPLUG_TORTURE_KERNEL";

/// The bzImage and initramfs to boot in end-to-end tests.
pub fn artifacts() -> (PathBuf, PathBuf) {
    let get = |name: &str| {
        std::env::var_os(name).map(PathBuf::from).unwrap_or_else(|| {
            panic!("{name} is not set: run end-to-end tests through `cargo xtask test` (it builds the kernel and image)")
        })
    };
    (get(ENV_BZIMAGE), get(ENV_INITRD))
}

/// The kernel variant under test: what a test that pins kernel behaviour expects.
pub fn kernel() -> crate::scenario::KernelVariant {
    let name = std::env::var(ENV_KERNEL).unwrap_or_else(|_| {
        panic!("{ENV_KERNEL} is not set: run end-to-end tests through `cargo xtask test` (it says which kernel they boot)")
    });
    crate::scenario::KernelVariant::from_name(&name).unwrap_or_else(|e| panic!("{ENV_KERNEL}: {e}"))
}

/// A VM configuration for tests: TCG unless the host probe says KVM works, logs kept in a
/// per-test folder under `target/e2e-logs/<test>` so a failure can be inspected.
pub fn vm_config(test: &str) -> crate::vm::VmConfig {
    let (bzimage, initrd) = artifacts();
    let mut config = crate::vm::VmConfig::new(bzimage, vec![initrd]);
    let dir = crate::paths::repo_root().join("target").join("e2e-logs").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    config.log_dir = Some(dir);
    config
}

/// For a test whose expectation on the kernel under test nobody has measured yet (vanilla-6.1
/// where a test pins vanilla 6.12's behaviour): fails, saying so, rather than assert a guess.
pub fn not_measured() -> ! {
    panic!("what {} does here has not been measured yet: run it, then write its expectation into this test", kernel())
}
