//! The kernel cache: keys, locks and layout under `cache_dir()/kernels/`.
//!
//! ```text
//! kernels/<key>/       one build: bzImage, vmlinux, config, build.log, modules/, meta.json
//! kernels/<key>.lock   held while that build is made
//! kernels/obj/<tree>/  Kbuild's O= object tree for a user's source tree (`--src`)
//! kernels/obj/<tree>.lock  held while make runs in that tree's object tree (any tree)
//! src/<tree>/.objects/ the object tree of a source tree we own (Debian's, a patched copy)
//! ```
//!
//! `meta.json` is written last and atomically: a build directory without it is unfinished or
//! failed, and its `build.log` says why. Object trees are keyed by the source tree's *path*,
//! not by the build key, so a fragment change or an edit in a `--src` tree is an incremental
//! make (Kbuild tracks per-file dependencies on sources, config symbols and command lines)
//! instead of a cold 20-minute build and another few GiB of objects.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::Kernel;

/// The object tree's name inside a source tree we own.
pub const OBJECTS_IN_TREE: &str = ".objects";

/// Bump when the build recipe (make targets, variables, artifact layout) changes in a way the
/// key's other parts do not show.
const RECIPE_VERSION: &str = "unplug-torture kernel recipe 3";

/// A short, unambiguous hash of `parts` (each length-prefixed, so no two lists collide by
/// concatenation).
pub fn hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize()[..8])
}

/// The key of a build: the recipe version plus everything that changes the output.
pub fn key(source_id: &str, fragment: &str, toolchain: &str) -> String {
    hash(&[RECIPE_VERSION.as_bytes(), source_id.as_bytes(), fragment.as_bytes(), toolchain.as_bytes()])
}

/// `cache_dir()/kernels`.
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn open(cache_dir: &Path) -> Result<Cache> {
        let root = cache_dir.join("kernels");
        std::fs::create_dir_all(root.join("obj")).with_context(|| format!("creating {}", root.display()))?;
        Ok(Cache { root })
    }

    pub fn build_dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The finished build for `key`, if there is one whose artifacts are all still there.
    pub fn lookup(&self, key: &str) -> Option<Kernel> {
        let text = std::fs::read_to_string(self.build_dir(key).join("meta.json")).ok()?;
        let mut kernel: Kernel = serde_json::from_str(&text).ok()?;
        let complete = [&kernel.bzimage, &kernel.vmlinux, &kernel.config].iter().all(|p| p.is_file())
            && kernel.modules.as_ref().is_none_or(|m| m.is_dir());
        kernel.cached = true;
        complete.then_some(kernel)
    }

    /// Serialises builds of the same key.
    pub fn lock_build(&self, key: &str) -> Result<Flock<File>> {
        lock_exclusive(&self.root.join(format!("{key}.lock")), &format!("another build of kernel {key}"))
    }

    /// The object tree for source `tree`, locked: one make at a time per object tree.
    ///
    /// In a tree we own (`inside`), it is the tree's direct child `.objects`: Kbuild then
    /// names the source tree `..` instead of its absolute path, so no command line, `.cmd`
    /// file or dependency list mentions where the tree is, and a copy of tree + objects (a
    /// series' patched copy) builds incrementally instead of from scratch. A user's tree is
    /// never written to, so its objects live in the cache.
    pub fn object_dir(&self, tree: &Path, inside: bool) -> Result<(PathBuf, Flock<File>)> {
        let name = hash(&[tree.as_os_str().as_encoded_bytes()]);
        let dir = if inside { tree.join(OBJECTS_IN_TREE) } else { self.root.join("obj").join(&name) };
        let lock = lock_exclusive(
            &self.root.join("obj").join(format!("{name}.lock")),
            &format!("another build in {}", dir.display()),
        )?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok((dir, lock))
    }
}

/// An exclusive advisory lock, held until the returned value is dropped (the kernel drops it
/// if we die). When someone else holds it, says who we are waiting for.
pub fn lock_exclusive(path: &Path, holder: &str) -> Result<Flock<File>> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))
    };
    match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(lock),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => eprintln!("unplug-torture: waiting for {holder} to finish"),
        Err((_, e)) => return Err(anyhow::anyhow!("locking {}: {e}", path.display())),
    }
    Flock::lock(open()?, FlockArg::LockExclusive).map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// Copies `from` to `to` through a temporary file and a rename, so a reader never sees half a
/// bzImage.
pub fn install(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().context("artifact path has no parent")?;
    let tmp = tempfile::Builder::new().prefix(".install-").tempfile_in(dir)?;
    std::fs::copy(from, tmp.path()).with_context(|| format!("copying {}", from.display()))?;
    tmp.persist(to).with_context(|| format!("renaming into {}", to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_every_part_without_ambiguity() {
        let k = key("src", "CONFIG_A=y\n", "clang 14");
        assert_eq!(k.len(), 16);
        assert_eq!(k, key("src", "CONFIG_A=y\n", "clang 14"));
        assert_ne!(k, key("src2", "CONFIG_A=y\n", "clang 14"));
        assert_ne!(k, key("src", "CONFIG_A=m\n", "clang 14"));
        assert_ne!(k, key("src", "CONFIG_A=y\n", "clang 15"));
        assert_ne!(hash(&[b"ab", b"c"]), hash(&[b"a", b"bc"]));
    }

    #[test]
    fn lookup_needs_meta_and_every_artifact() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        assert!(cache.lookup("k").is_none());
        let dir = cache.build_dir("k");
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = Kernel {
            dir: dir.clone(),
            bzimage: dir.join("bzImage"),
            vmlinux: dir.join("vmlinux"),
            config: dir.join("config"),
            build_log: dir.join("build.log"),
            modules: None,
            source_tree: tmp.path().to_path_buf(),
            base_tree: None,
            source_id: "s".into(),
            source_label: "s".into(),
            series: None,
            config_hash: "c".into(),
            release: "6.12.117".into(),
            key: "k".into(),
            build_seconds: 1.0,
            cold: true,
            absent: Vec::new(),
            rust: true,
            cached: false,
        };
        std::fs::write(dir.join("meta.json"), serde_json::to_string(&kernel).unwrap()).unwrap();
        assert!(cache.lookup("k").is_none(), "artifacts missing");
        for f in ["bzImage", "vmlinux", "config"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let hit = cache.lookup("k").unwrap();
        assert!(hit.cached);
        assert_eq!(hit.release, "6.12.117");
    }

    #[test]
    fn object_dirs_are_per_tree_and_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path()).unwrap();
        let (a, lock) = cache.object_dir(Path::new("/src/a"), false).unwrap();
        let (b, _) = cache.object_dir(Path::new("/src/b"), false).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(tmp.path()), "a user's tree is never written to");
        let owned = tmp.path().join("src/c");
        let (c, _c_lock) = cache.object_dir(&owned, true).unwrap();
        assert_eq!(c, owned.join(".objects"), "a direct child: Kbuild's srctree is then `..`");
        let lock_path = tmp.path().join("kernels/obj").join(format!("{}.lock", hash(&[b"/src/a"])));
        let again = std::fs::File::open(&lock_path).unwrap();
        assert!(Flock::lock(again, FlockArg::LockExclusiveNonblock).is_err(), "held while in use");
        drop(lock);
        let again = std::fs::File::open(&lock_path).unwrap();
        assert!(Flock::lock(again, FlockArg::LockExclusiveNonblock).is_ok());
    }
}
