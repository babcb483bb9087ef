//! What one kernel version needs beside the shared fragments, and what it cannot have.
//!
//! `kernels/configs/<MAJOR.MINOR>/` (e.g. `6.1/`) holds the version's own fragments
//! (`*.config`, merged after the shared ones) and `absent`: options the shared fragments ask
//! for that this version does not have, one per line with the reason (`CONFIG_NAME: why`). A
//! build of a tree of that version drops exactly those from its request, says so and records
//! them in `meta.json`; any other option that does not survive olddefconfig still fails the
//! build, and an `absent` line that names no requested option is an error (it went stale).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::config::{fragment_files, Origin};

/// A requested option this kernel version cannot have, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Absent {
    /// `CONFIG_GPIO_VIRTUSER`.
    pub option: String,
    pub reason: String,
    /// `kernels/configs/6.1/absent:4`.
    pub written_at: String,
}

impl Absent {
    /// The symbol without `CONFIG_`.
    pub fn symbol(&self) -> &str {
        self.option.strip_prefix("CONFIG_").unwrap_or(&self.option)
    }
}

/// A version's own fragments and absences (both empty for a version without a directory).
#[derive(Debug, Clone, Default)]
pub struct VersionConfig {
    pub fragments: Vec<PathBuf>,
    pub absent: Vec<Absent>,
}

/// `MAJOR.MINOR` from a tree's top-level Makefile (`VERSION =`, `PATCHLEVEL =`).
pub fn tree_version(tree: &Path) -> Result<String> {
    let path = tree.join("Makefile");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let field = |name: &str| {
        text.lines()
            .take(20)
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim_start().strip_prefix('=')))
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
    };
    match (field("VERSION"), field("PATCHLEVEL")) {
        (Some(major), Some(minor)) => Ok(format!("{major}.{minor}")),
        _ => bail!("{}: no numeric VERSION = and PATCHLEVEL = in its first lines", path.display()),
    }
}

/// The version directory `configs/<version>/`, if there is one.
pub fn load(configs: &Path, version: &str) -> Result<VersionConfig> {
    let dir = configs.join(version);
    if !dir.is_dir() {
        return Ok(VersionConfig::default());
    }
    let fragments = match fragment_files(&dir) {
        Ok(files) => files,
        // A version may only take options away.
        Err(_) if !dir.join("absent").exists() => bail!("{} has neither *.config fragments nor an absent list", dir.display()),
        Err(_) => Vec::new(),
    };
    let absent_file = dir.join("absent");
    let absent = match std::fs::read_to_string(&absent_file) {
        Ok(text) => parse_absent(&text, &absent_file)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", absent_file.display())),
    };
    Ok(VersionConfig { fragments, absent })
}

/// What of `absent` goes into a kernel's cache key: each option and its reason, not where it
/// is written (`written_at` holds the checkout's path: with it, every clone built its own 6.1
/// kernel).
pub fn key_part(absent: &[Absent]) -> String {
    absent.iter().map(|a| format!("{}: {}\n", a.option, a.reason)).collect()
}

/// `CONFIG_NAME: reason` lines; blank lines and `#` comments skipped. Errors name file:line:column.
fn parse_absent(text: &str, file: &Path) -> Result<Vec<Absent>> {
    let mut out: Vec<Absent> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        let column = raw.len() - line.len() + 1;
        let at = Origin { file: file.to_path_buf(), line: i + 1 };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((option, reason)) = line.split_once(':') else {
            bail!("{at}:{column}: expected `CONFIG_NAME: why this version cannot have it`");
        };
        let option = option.trim();
        let name = option.strip_prefix("CONFIG_").unwrap_or_default();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            bail!("{at}:{column}: {option:?} is not a CONFIG_ symbol");
        }
        let reason = reason.trim();
        if reason.is_empty() {
            bail!("{at}:{}: {option} needs a reason after the colon", column + option.len() + 1);
        }
        if let Some(first) = out.iter().find(|a| a.option == option) {
            bail!("{at}:{column}: {option} is already listed at {}", first.written_at);
        }
        out.push(Absent { option: option.to_string(), reason: reason.to_string(), written_at: at.to_string() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_makefile() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Makefile"), "# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\n").unwrap();
        assert_eq!(tree_version(dir.path()).unwrap(), "6.1");
        std::fs::write(dir.path().join("Makefile"), "VERSION = 6\n").unwrap();
        assert!(tree_version(dir.path()).unwrap_err().to_string().contains("PATCHLEVEL"));
    }

    #[test]
    fn absent_lines_are_parsed_with_locations() {
        let f = Path::new("6.1/absent");
        let list = parse_absent("# why\n\nCONFIG_RUST: rustc 1.62 only\n  CONFIG_HID_SUPPORT : added in 6.2\n", f).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].option.as_str(), list[0].reason.as_str(), list[0].written_at.as_str()), ("CONFIG_RUST", "rustc 1.62 only", "6.1/absent:3"));
        assert_eq!(list[1].symbol(), "HID_SUPPORT");
        // The same list in another checkout keys the same kernel.
        let elsewhere = parse_absent("# why\n\nCONFIG_RUST: rustc 1.62 only\n  CONFIG_HID_SUPPORT : added in 6.2\n", Path::new("/tmp/clone/kernels/configs/6.1/absent")).unwrap();
        assert_ne!(elsewhere[0].written_at, list[0].written_at);
        assert_eq!(key_part(&elsewhere), key_part(&list));
        assert_ne!(key_part(&list[..1]), key_part(&list));
        let err = |text: &str| parse_absent(text, f).unwrap_err().to_string();
        assert_eq!(err("\n  CONFIG_RUST\n"), "6.1/absent:2:3: expected `CONFIG_NAME: why this version cannot have it`");
        assert_eq!(err("RUST: no\n"), "6.1/absent:1:1: \"RUST\" is not a CONFIG_ symbol");
        assert_eq!(err("CONFIG_RUST:  \n"), "6.1/absent:1:13: CONFIG_RUST needs a reason after the colon");
        assert_eq!(err("CONFIG_A: x\nCONFIG_A: y\n"), "6.1/absent:2:1: CONFIG_A is already listed at 6.1/absent:1");
    }

    #[test]
    fn a_version_without_a_directory_has_nothing_extra() {
        let dir = tempfile::tempdir().unwrap();
        let v = load(dir.path(), "6.12").unwrap();
        assert!(v.fragments.is_empty() && v.absent.is_empty());
        std::fs::create_dir(dir.path().join("6.1")).unwrap();
        assert!(load(dir.path(), "6.1").unwrap_err().to_string().contains("neither"));
        std::fs::write(dir.path().join("6.1/absent"), "CONFIG_X: gone\n").unwrap();
        std::fs::write(dir.path().join("6.1/05-slub.config"), "CONFIG_SLUB=y\n").unwrap();
        let v = load(dir.path(), "6.1").unwrap();
        assert_eq!(v.fragments, [dir.path().join("6.1/05-slub.config")]);
        assert_eq!(v.absent[0].option, "CONFIG_X");
    }

    /// The shipped version directories parse, and every absence names an option some shared
    /// fragment requests (a stale line would be an error at build time).
    #[test]
    fn shipped_version_directories_are_consistent() {
        let configs = crate::paths::repo_root().join("kernels/configs");
        let shared = super::super::config::Fragment::load(&fragment_files(&configs).unwrap()).unwrap();
        let v = load(&configs, "6.1").unwrap();
        assert!(v.absent.iter().any(|a| a.option == "CONFIG_RUST"), "6.1 is built without Rust, and says so");
        assert!(v.absent.iter().any(|a| a.option == "CONFIG_GPIO_VIRTUSER"));
        let mut f = shared.clone();
        f.drop_absent(&v.absent).unwrap();
        assert!(!f.options.contains_key("RUST") && shared.options.contains_key("RUST"));
    }
}
