//! What the tests that run the `xtask` binary share.

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal;
use nix::unistd::Pid;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Fails (never skips) when the resmgr series is not in the tree: `needs` says what for.
pub fn require_resmgr_series(needs: &str) {
    let series = repo_root().join("kernels/patches/resmgr/series");
    assert!(series.is_file(), "{} is missing: {needs}, and the series has not been integrated", series.display());
}

/// What one `xtask` run said.
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    /// stdout and stderr, for failure messages.
    pub all: String,
}

/// Runs `xtask ARGS --results DIR`.
pub fn xtask(args: &[&str], results: &Path) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .arg("--results")
        .arg(results)
        .output()
        .unwrap_or_else(|e| panic!("running xtask {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("xtask {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    Run { status: out.status, stdout, all }
}

/// The run folders (those with a meta.json) directly under a results root, sorted; the root
/// also holds the matrix record and its index.html.
pub fn run_folders(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("meta.json").is_file()).collect();
    dirs.sort();
    dirs
}

/// The one run folder under a results root.
pub fn only_run_folder(root: &Path) -> PathBuf {
    let mut runs = run_folders(root);
    assert_eq!(runs.len(), 1, "one run folder under {}: {runs:?}", root.display());
    runs.remove(0)
}

/// `/proc/PID/stat`: (command name, parent pid).
fn stat(pid: i32) -> Option<(String, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name is in parentheses and may hold anything; the fields follow the last ')'.
    let (head, tail) = text.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = tail.split_whitespace().collect();
    Some((name, fields.get(1)?.parse().ok()?))
}

/// QEMU's name as the kernel keeps it (15 characters).
const QEMU_COMM: &str = "qemu-system-x86";

/// The processes named `name` (as the kernel keeps it) that are children of process `parent`
/// now. Only that process's children are looked at, never others on this shared machine.
pub fn children(parent: i32, name: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(stat(*pid), Some((comm, ppid)) if ppid == parent && comm == name))
        .collect()
}

/// The QEMUs that are children of process `parent` now.
pub fn qemu_children(parent: i32) -> Vec<i32> {
    children(parent, QEMU_COMM)
}

/// What is left of a QEMU we saw (must be nothing once its `xtask` has exited): the QEMU
/// itself, a member of the process group it leads.
pub fn left_of_qemu(qemu: i32) -> Vec<String> {
    let mut left = Vec::new();
    if let Some((name, ppid)) = stat(qemu).filter(|(name, _)| name == QEMU_COMM) {
        left.push(format!("QEMU {qemu} ({name}, parent {ppid})"));
    }
    // QEMU leads a process group of its own: nothing may be left in it.
    if signal::killpg(Pid::from_raw(qemu), None).is_ok() {
        left.push(format!("process group {qemu}"));
    }
    left
}
