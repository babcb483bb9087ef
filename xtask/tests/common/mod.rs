//! What the tests that run the `xtask` binary share.

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

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
