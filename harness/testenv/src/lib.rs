//! Test support, kept out of the harness library's API: what end-to-end tests boot (the kernel
//! and image `cargo xtask test` built for them) and checks tests share.
//!
//! A crate of its own rather than a module of `harness`: the harness library is what `xtask`
//! runs, and nothing in it should panic on a missing environment variable or shell out to
//! python3. Tests depend on it (`[dev-dependencies]`); `xtask` depends on it only because
//! `xtask test` is the side that sets the variables named here.
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
pub fn kernel() -> harness::drive::scenario::KernelVariant {
    let name = std::env::var(ENV_KERNEL).unwrap_or_else(|_| {
        panic!("{ENV_KERNEL} is not set: run end-to-end tests through `cargo xtask test` (it says which kernel they boot)")
    });
    harness::drive::scenario::KernelVariant::from_name(&name).unwrap_or_else(|e| panic!("{ENV_KERNEL}: {e}"))
}

/// A VM configuration for tests: TCG unless the host probe says KVM works, logs kept in a
/// per-test folder under `target/e2e-logs/<test>` so a failure can be inspected.
pub fn vm_config(test: &str) -> harness::run::vm::VmConfig {
    let (bzimage, initrd) = artifacts();
    let mut config = harness::run::vm::VmConfig::new(bzimage, vec![initrd]);
    let dir = harness::paths::repo_root().join("target").join("e2e-logs").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    config.log_dir = Some(dir);
    config
}

/// For a test whose expectation on the kernel under test nobody has measured yet (vanilla-6.1
/// where a test pins vanilla 6.12's behaviour): fails, saying so, rather than assert a guess.
pub fn not_measured() -> ! {
    panic!("what {} does here has not been measured yet: run it, then write its expectation into this test", kernel())
}

/// Validates a KCIDB export (`kcidb.json`'s text) with KernelCI's own `kcidb-io` package
/// (`pip install kcidb-io`; `cargo xtask test` installs it), as a lab's submission would be; panics
/// with kcidb-io's reason if it is rejected. The schema we write must be the latest it knows.
pub fn validate_kcidb(json: &str) {
    let script = "import json, sys, kcidb_io\nkcidb_io.schema.LATEST.validate(json.load(sys.stdin))\nprint(kcidb_io.schema.LATEST)";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to validate KCIDB exports (apt-get install python3)");
    std::io::Write::write_all(&mut child.stdin.take().expect("piped stdin"), json.as_bytes()).expect("writing to python3");
    let out = child.wait_with_output().expect("waiting for python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'kcidb_io'"),
        "KCIDB exports are validated with KernelCI's kcidb-io: `pip install kcidb-io` (`cargo xtask test` installs it)"
    );
    assert!(out.status.success(), "kcidb-io rejects the export: {stderr}\n{json}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v5.3", "the schema we write is the latest kcidb-io knows");
}
