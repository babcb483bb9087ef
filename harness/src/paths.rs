//! Where things live: the repository checkout, the build cache and the results folder.

use std::path::PathBuf;

/// The repository checkout this harness was built from (kernels/, images/, scenarios/ live here).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Build cache shared by every checkout on this host: unpacked kernel sources, kernel builds,
/// images and host probes (the KVM verdict). `UNPLUG_TORTURE_CACHE` overrides it.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("UNPLUG_TORTURE_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("unplug-torture");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("unplug-torture")
}

/// Where torture runs write `results/<run-id>/`.
pub fn results_dir() -> PathBuf {
    repo_root().join("results")
}
