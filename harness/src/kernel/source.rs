//! Kernel source trees: Debian's `linux-source-6.12` tarball unpacked once into the cache, a
//! user's tree (`--src`, never written to), and private patched copies for a series.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::lock_exclusive;

/// The tarball Debian's `linux-source-6.12` package installs.
pub const DEBIAN_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

/// A tree to build, and what identifies its contents for the cache key.
#[derive(Debug, Clone)]
pub struct Source {
    pub tree: PathBuf,
    /// Changes whenever the tree's contents (may) change.
    pub id: String,
    /// For people: "Debian linux-source-6.12", "git abc123 + local changes", ...
    pub label: String,
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..8])
}

/// Debian's tarball, unpacked once into `cache/src/<id>/`. The id covers the tarball's path,
/// size and mtime (a package upgrade replaces the file), so hashing 150 MB is not needed.
pub fn debian(cache: &Path) -> Result<Source> {
    let tarball = Path::new(DEBIAN_TARBALL);
    let meta = std::fs::metadata(tarball).with_context(|| format!("{DEBIAN_TARBALL} is missing (package linux-source-6.12)"))?;
    let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let id = short_hash(&[DEBIAN_TARBALL.as_bytes(), &meta.len().to_le_bytes(), &mtime.to_le_bytes()]);
    let root = cache.join("src");
    std::fs::create_dir_all(&root)?;
    let dest = root.join(format!("debian-{id}"));
    let tree = dest.join("linux-source-6.12");
    let _lock = lock_exclusive(&root.join(format!("debian-{id}.lock")))?;
    if !tree.join("Makefile").exists() {
        eprintln!("unplug-torture: unpacking {DEBIAN_TARBALL} into {}", dest.display());
        let tmp = tempfile::Builder::new().prefix(".unpack-").tempdir_in(&root)?;
        let status = Command::new("tar")
            .arg("-xJf")
            .arg(tarball)
            .arg("-C")
            .arg(tmp.path())
            .status()
            .context("running tar")?;
        if !status.success() {
            bail!("unpacking {DEBIAN_TARBALL} failed ({status})");
        }
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        std::fs::rename(tmp.keep(), &dest)?;
    }
    Ok(Source { tree, id: format!("debian-{id}"), label: "Debian linux-source-6.12".into() })
}

/// A user's kernel tree. It must be clean enough for `make O=`: Kbuild refuses a source
/// tree with in-tree build output, and we never clean it for them.
pub fn user_tree(dir: &Path) -> Result<Source> {
    let tree = dir.canonicalize().with_context(|| format!("--src {}", dir.display()))?;
    let makefile = std::fs::read_to_string(tree.join("Makefile")).unwrap_or_default();
    if !makefile.lines().any(|l| l.starts_with("VERSION =")) || !tree.join("Kconfig").exists() {
        bail!("--src {}: not a Linux kernel tree (no top-level Makefile with VERSION = and Kconfig)", tree.display());
    }
    for leftover in [".config", "include/config"] {
        if tree.join(leftover).exists() {
            bail!(
                "--src {}: the tree has in-tree build output ({leftover}), which `make O=` refuses.\n\
                 This tool never writes into your tree; clean it yourself with `make -C {} mrproper`.",
                tree.display(),
                tree.display()
            );
        }
    }
    let (id, label) = if tree.join(".git").exists() { git_identity(&tree)? } else { plain_identity(&tree)? };
    Ok(Source { tree, id, label })
}

/// HEAD plus a hash of uncommitted changes (tracked diffs and the list of untracked files).
fn git_identity(tree: &Path) -> Result<(String, String)> {
    let git = |args: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new("git").arg("-C").arg(tree).args(args).output().context("running git")?;
        if !out.status.success() {
            bail!("git {} in {}: {}", args.join(" "), tree.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(out.stdout)
    };
    let head = String::from_utf8_lossy(&git(&["rev-parse", "HEAD"])?).trim().to_string();
    let diff = git(&["diff", "HEAD"])?;
    let untracked = git(&["ls-files", "--others", "--exclude-standard"])?;
    let dirty = !diff.is_empty() || !untracked.is_empty();
    let id = format!("git-{}-{}", &head[..12.min(head.len())], short_hash(&[&diff, &untracked]));
    let label = format!("git {}{}", &head[..12.min(head.len())], if dirty { " + local changes" } else { "" });
    Ok((id, label))
}

/// Without git, hashing every file is too slow for a no-op check; the tree's path, its
/// version lines and the newest modification time anywhere in it stand in for the contents.
fn plain_identity(tree: &Path) -> Result<(String, String)> {
    let mut newest = 0u64;
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            }
            let m = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            newest = newest.max(m.map(|d| d.as_secs()).unwrap_or(0));
        }
    }
    let makefile = std::fs::read_to_string(tree.join("Makefile")).unwrap_or_default();
    let version: String = makefile.lines().take(6).collect::<Vec<_>>().join("\n");
    let id = format!("tree-{}", short_hash(&[tree.as_os_str().as_encoded_bytes(), version.as_bytes(), &newest.to_le_bytes()]));
    Ok((id, format!("tree {}", tree.display())))
}

/// The patch files of `kernels/patches/NAME/series`, in order, with a hash of their contents.
pub fn series_patches(patches_dir: &Path, name: &str) -> Result<(Vec<PathBuf>, String)> {
    let dir = patches_dir.join(name);
    let list = dir.join("series");
    let text = std::fs::read_to_string(&list).map_err(|e| {
        let known: Vec<String> = std::fs::read_dir(patches_dir)
            .map(|rd| rd.flatten().filter(|e| e.path().join("series").exists()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        anyhow::anyhow!(
            "no patch series {name:?}: {} ({e}); series available: {}",
            list.display(),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )
    })?;
    let mut patches = Vec::new();
    let mut hasher = Sha256::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let patch = dir.join(line);
        let bytes = std::fs::read(&patch).with_context(|| format!("{}:{}: patch {line}", list.display(), i + 1))?;
        hasher.update(line.as_bytes());
        hasher.update(&bytes);
        patches.push(patch);
    }
    if patches.is_empty() {
        bail!("{} lists no patches", list.display());
    }
    Ok((patches, hex::encode(&hasher.finalize()[..8])))
}

/// A private copy of `base` with the series applied, cached per (source, series contents).
pub fn patched(cache: &Path, base: &Source, name: &str, patches: &[PathBuf], series_hash: &str) -> Result<Source> {
    let root = cache.join("src");
    std::fs::create_dir_all(&root)?;
    let key = format!("{}+{name}-{series_hash}", base.id);
    let dest = root.join(&key);
    let _lock = lock_exclusive(&root.join(format!("{key}.lock")))?;
    if !dest.join("Makefile").exists() {
        eprintln!("unplug-torture: applying series {name} ({} patches) to a copy of {}", patches.len(), base.label);
        let tmp = tempfile::Builder::new().prefix(".patch-").tempdir_in(&root)?;
        let copy = tmp.path().join("tree");
        // --reflink=auto makes the copy nearly free where the filesystem supports it.
        let status = Command::new("cp").args(["-a", "--reflink=auto"]).arg(&base.tree).arg(&copy).status()?;
        if !status.success() {
            bail!("copying {} failed ({status})", base.tree.display());
        }
        for patch in patches {
            let out = Command::new("git")
                .args(["apply", "--verbose", "--whitespace=nowarn"])
                .arg(patch)
                .current_dir(&copy)
                .output()
                .context("running git apply")?;
            if !out.status.success() {
                bail!(
                    "patch {} does not apply to {}:\n{}",
                    patch.display(),
                    base.label,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        std::fs::rename(&copy, &dest)?;
    }
    Ok(Source { tree: dest, id: key, label: format!("{} + series {name}", base.label) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_tree(dir: &Path) {
        std::fs::write(dir.join("Makefile"), "VERSION = 6\nPATCHLEVEL = 12\n").unwrap();
        std::fs::write(dir.join("Kconfig"), "mainmenu \"x\"\n").unwrap();
        std::fs::write(dir.join("hello.c"), "int x = 1;\n").unwrap();
    }

    #[test]
    fn user_tree_must_be_a_clean_kernel_tree() {
        let dir = tempfile::tempdir().unwrap();
        let err = user_tree(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a Linux kernel tree"), "{err}");
        fake_tree(dir.path());
        let a = user_tree(dir.path()).unwrap();
        assert!(a.id.starts_with("tree-"));
        std::fs::write(dir.path().join(".config"), "").unwrap();
        let err = user_tree(dir.path()).unwrap_err().to_string();
        assert!(err.contains("mrproper") && err.contains("never writes into your tree"), "{err}");
    }

    #[test]
    fn git_identity_changes_with_local_edits() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let git = |args: &[&str]| {
            let ok = Command::new("git").arg("-C").arg(dir.path()).args(args).output().unwrap().status.success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        git(&["-c", "user.name=t", "-c", "user.email=t@t", "add", "."]);
        git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]);
        let clean = user_tree(dir.path()).unwrap();
        assert!(!clean.label.contains("local changes"));
        std::fs::write(dir.path().join("hello.c"), "int x = 2;\n").unwrap();
        let dirty = user_tree(dir.path()).unwrap();
        assert_ne!(clean.id, dirty.id);
        assert!(dirty.label.contains("local changes"));
    }

    #[test]
    fn series_applies_on_a_private_copy_and_reports_failures() {
        let cache = tempfile::tempdir().unwrap();
        let base_dir = tempfile::tempdir().unwrap();
        fake_tree(base_dir.path());
        let base = Source { tree: base_dir.path().to_path_buf(), id: "base".into(), label: "base".into() };
        let patches = tempfile::tempdir().unwrap();
        let good = patches.path().join("good");
        std::fs::create_dir(&good).unwrap();
        std::fs::write(
            good.join("0001-x.patch"),
            "--- a/hello.c\n+++ b/hello.c\n@@ -1 +1 @@\n-int x = 1;\n+int x = 42;\n",
        )
        .unwrap();
        std::fs::write(good.join("series"), "# our series\n0001-x.patch\n").unwrap();
        let (list, hash) = series_patches(patches.path(), "good").unwrap();
        let src = patched(cache.path(), &base, "good", &list, &hash).unwrap();
        assert_eq!(std::fs::read_to_string(src.tree.join("hello.c")).unwrap(), "int x = 42;\n");
        assert_eq!(std::fs::read_to_string(base.tree.join("hello.c")).unwrap(), "int x = 1;\n", "base untouched");

        let bad = patches.path().join("bad");
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("0001-y.patch"), "--- a/hello.c\n+++ b/hello.c\n@@ -1 +1 @@\n-int y = 7;\n+int y = 8;\n").unwrap();
        std::fs::write(bad.join("series"), "0001-y.patch\n").unwrap();
        let (list, hash) = series_patches(patches.path(), "bad").unwrap();
        let err = patched(cache.path(), &base, "bad", &list, &hash).unwrap_err().to_string();
        assert!(err.contains("0001-y.patch does not apply") && err.contains("hello.c"), "{err}");

        let err = series_patches(patches.path(), "resmgr").unwrap_err().to_string();
        assert!(err.contains("no patch series \"resmgr\"") && err.contains("bad, good") || err.contains("good, bad"), "{err}");
    }
}
