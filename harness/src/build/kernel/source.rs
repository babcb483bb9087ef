//! Kernel source trees: a Debian `linux-source-<version>` tarball (6.12, or the 6.1 LTS line)
//! unpacked once into the cache, a user's tree (`--src`, never written to), and private
//! patched copies for a series.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::cache::{hash, lock_exclusive, OBJECTS_IN_TREE};

/// A Debian kernel source package: `linux-source-<version>` installs
/// `/usr/src/linux-source-<version>.tar.xz`, which unpacks into `linux-source-<version>/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DebianSource {
    /// The line the suite is written for, and the resmgr series' base.
    #[default]
    #[serde(rename = "6.12")]
    Linux6_12,
    /// The 6.1 LTS line (bookworm's own kernel): bugs fixed upstream after 6.1 are still there.
    #[serde(rename = "6.1")]
    Linux6_1,
}

impl DebianSource {
    /// "6.12", "6.1".
    pub fn version(self) -> &'static str {
        match self {
            DebianSource::Linux6_12 => "6.12",
            DebianSource::Linux6_1 => "6.1",
        }
    }

    /// The package that installs this source, as a host requirement.
    pub fn requirement(self) -> &'static [crate::host::Requirement] {
        match self {
            DebianSource::Linux6_12 => crate::host::KERNEL_SOURCE_6_12,
            DebianSource::Linux6_1 => crate::host::KERNEL_SOURCE_6_1,
        }
    }

    fn package(self) -> String {
        format!("linux-source-{}", self.version())
    }

    fn tarball(self) -> PathBuf {
        PathBuf::from(format!("/usr/src/{}.tar.xz", self.package()))
    }
}

/// A tree to build, and what identifies its contents for the cache key.
#[derive(Debug, Clone)]
pub struct Source {
    pub tree: PathBuf,
    /// Changes whenever the tree's contents (may) change.
    pub id: String,
    /// For people: "Debian linux-source-6.12", "git abc123 + local changes", ...
    pub label: String,
    /// The tree is ours (in the cache), so its object tree may live inside it: see
    /// [`super::cache::Cache::object_dir`].
    pub owned: bool,
}

/// Debian's tarball of `package`, unpacked once into `cache/src/debian-<id>/`, atomically (into
/// a temporary directory, then renamed). The id covers the tarball's path, size and mtime (a
/// package upgrade replaces the file), so the no-op check need not hash 150 MB.
pub fn debian(cache: &Path, package: DebianSource) -> Result<Source> {
    let tarball = package.tarball();
    let id = debian_hash(package)?;
    let root = cache.join("src");
    std::fs::create_dir_all(&root)?;
    let dest = root.join(format!("debian-{id}"));
    let tree = dest.join(package.package());
    let _lock = lock_exclusive(&root.join(format!("debian-{id}.lock")), "another unpack of the Debian source")?;
    if !tree.join("Makefile").exists() {
        eprintln!("unplug-torture: unpacking {} into {}", tarball.display(), dest.display());
        let tmp = tempfile::Builder::new().prefix(".unpack-").tempdir_in(&root)?;
        let status =
            Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(tmp.path()).status().context("running tar")?;
        if !status.success() {
            bail!("unpacking {} failed ({status})", tarball.display());
        }
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        std::fs::rename(tmp.keep(), &dest)
            .with_context(|| format!("renaming the unpacked tree to {}", dest.display()))?;
    }
    Ok(Source { tree, id: format!("debian-{id}"), label: format!("Debian {}", package.package()), owned: true })
}

/// The id [`debian`] gives the tarball's tree, without unpacking it.
pub fn debian_id(package: DebianSource) -> Result<String> {
    Ok(format!("debian-{}", debian_hash(package)?))
}

fn debian_hash(package: DebianSource) -> Result<String> {
    let tarball = package.tarball();
    let meta = std::fs::metadata(&tarball)
        .with_context(|| format!("{} is missing (package {})", tarball.display(), package.package()))?;
    let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    Ok(hash(&[tarball.as_os_str().as_encoded_bytes(), &meta.len().to_le_bytes(), &mtime.to_le_bytes()]))
}

/// A user's kernel tree. It must be clean enough for `make O=`: Kbuild refuses a source tree
/// with in-tree build output (the same three paths checked here), and we never clean it.
pub fn user_tree(dir: &Path) -> Result<Source> {
    let tree = dir.canonicalize().with_context(|| format!("--src {}", dir.display()))?;
    let makefile = std::fs::read_to_string(tree.join("Makefile")).unwrap_or_default();
    if !makefile.lines().any(|l| l.starts_with("VERSION =")) || !tree.join("Kconfig").exists() {
        bail!("--src {}: not a Linux kernel tree (no top-level Makefile with VERSION = and Kconfig)", tree.display());
    }
    for leftover in [".config", "include/config", "arch/x86/include/generated"] {
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
    Ok(Source { tree, id, label, owned: false })
}

/// HEAD plus a hash of uncommitted changes (`git diff HEAD` and the list of untracked files;
/// an untracked file's edits are not seen, only its appearance). `--no-optional-locks` keeps
/// git from refreshing the index: the tree is never written, not even `.git/index`.
fn git_identity(tree: &Path) -> Result<(String, String)> {
    let git = |args: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new("git")
            .arg("--no-optional-locks")
            .arg("-C")
            .arg(tree)
            .args(args)
            .output()
            .context("running git")?;
        if !out.status.success() {
            bail!("git {} in {}: {}", args.join(" "), tree.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(out.stdout)
    };
    let head = String::from_utf8_lossy(&git(&["rev-parse", "HEAD"])?).trim().to_string();
    let diff = git(&["diff", "HEAD"])?;
    let untracked = git(&["ls-files", "--others", "--exclude-standard"])?;
    let dirty = !diff.is_empty() || !untracked.is_empty();
    let id = format!("git-{}-{}", &head[..12.min(head.len())], hash(&[&diff, &untracked]));
    let label = format!("git {}{}", &head[..12.min(head.len())], if dirty { " + local changes" } else { "" });
    Ok((id, label))
}

/// Without git, hashing ~90k files (1.5 GB) is too slow for a no-op check, so the identity is
/// cheaper: the tree's path, the Makefile's version lines and the newest modification time
/// of any file or directory in it (an edit, a new or a deleted file all bump one). An edit
/// that keeps its old mtime (`cp -p`, `touch -r`) is not seen; `--force` rebuilds then.
fn plain_identity(tree: &Path) -> Result<(String, String)> {
    let mut newest = 0u128;
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
            // DirEntry::metadata does not follow symlinks: no loops, no escaping the tree.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            }
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            newest = newest.max(mtime.map(|d| d.as_nanos()).unwrap_or(0));
        }
    }
    let makefile = std::fs::read_to_string(tree.join("Makefile")).unwrap_or_default();
    let version: String = makefile.lines().take(6).collect::<Vec<_>>().join("\n");
    let id =
        format!("tree-{}", hash(&[tree.as_os_str().as_encoded_bytes(), version.as_bytes(), &newest.to_le_bytes()]));
    Ok((id, format!("tree {}", tree.display())))
}

/// A patch series: `kernels/patches/NAME/series` lists `git format-patch` files, one per
/// line, applied in order (blank lines and `#` comments are skipped).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub patches: Vec<PathBuf>,
    /// Covers the patch names and contents, in order.
    pub hash: String,
    /// Files the patches change (from their `--- a/` and `+++ b/` lines).
    pub touched: BTreeSet<String>,
    /// The series' own config fragments (`*.config` beside `series`), sorted: what it adds is
    /// turned on in its builds only. Their text is in the build key with the other fragments.
    pub config_fragments: Vec<PathBuf>,
}

impl Series {
    pub fn load(patches_dir: &Path, name: &str) -> Result<Series> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            bail!(
                "--series {name:?}: a series is a directory name in {} (letters, digits, - _ .)",
                patches_dir.display()
            );
        }
        let dir = patches_dir.join(name);
        let list = dir.join("series");
        let text = std::fs::read_to_string(&list).map_err(|e| {
            let mut known: Vec<String> = std::fs::read_dir(patches_dir)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.path().join("series").is_file())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            known.sort();
            anyhow::anyhow!(
                "no patch series {name:?}: {} ({e}); series available: {}",
                list.display(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )
        })?;
        let mut patches = Vec::new();
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut touched = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let patch = dir.join(line);
            let bytes = std::fs::read(&patch).with_context(|| format!("{}:{}: patch {line}", list.display(), i + 1))?;
            for l in String::from_utf8_lossy(&bytes).lines() {
                if let Some(path) = l.strip_prefix("--- a/").or_else(|| l.strip_prefix("+++ b/")) {
                    touched.insert(path.trim_end().to_string());
                }
            }
            parts.push(line.as_bytes().to_vec());
            parts.push(bytes);
            patches.push(patch);
        }
        if patches.is_empty() {
            bail!("{} lists no patches", list.display());
        }
        let hash = hash(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let mut config_fragments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "config") && p.is_file())
            .collect();
        config_fragments.sort();
        Ok(Series { name: name.to_string(), patches, hash, touched, config_fragments })
    }
}

/// The identity of `base` with `series` applied.
pub fn patched_id(base_id: &str, series: &Series) -> String {
    format!("{base_id}+{}-{}", series.name, series.hash)
}

/// Where the patched copy of `base` for the series called `name` lives. The path is the same
/// for every version of the series, so its object tree (keyed by path) stays warm and an
/// edited patch is an incremental build, not a cold one and another 2.5 GB of cache.
pub fn patched_path(cache: &Path, base: &Source, name: &str) -> PathBuf {
    cache.join("src").join(format!("{}+{name}", base.id))
}

/// A private copy of `base` with `series` applied at [`patched_path`], remade (atomically)
/// when the series changes. The base tree is only read: vanilla and patched builds coexist,
/// and a `--src` tree stays untouched. The caller holds the object-tree locks of both trees,
/// so no make runs in either while the copy is made and swapped.
///
/// An owned base carries its object tree inside (`.objects`, see
/// [`super::cache::Cache::object_dir`]); the copy takes it along with the sources, mtimes
/// kept, so the series' first build is an incremental make over the base's objects (only
/// what the series touches and the configuration symbols it changes are rebuilt), not a
/// second cold build.
pub fn patched(cache: &Path, base: &Source, series: &Series) -> Result<Source> {
    let dest = patched_path(cache, base, &series.name);
    let root = cache.join("src");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let name = format!("{}+{}", base.id, series.name);
    // "<hash>\n<path>\n...": the version applied and the files it changed.
    let stamp = root.join(format!("{name}.applied"));
    let _lock =
        lock_exclusive(&root.join(format!("{name}.lock")), &format!("another copy for series {}", series.name))?;
    let applied = std::fs::read_to_string(&stamp).unwrap_or_default();
    let mut lines = applied.lines();
    let applied_hash = lines.next().unwrap_or_default();
    let source = Source {
        tree: dest.clone(),
        id: patched_id(&base.id, series),
        label: format!("{} + series {}", base.label, series.name),
        owned: true,
    };
    if applied_hash == series.hash && dest.join("Makefile").exists() {
        return Ok(source);
    }
    eprintln!(
        "unplug-torture: applying series {} ({} patch{}) to a copy of {}",
        series.name,
        series.patches.len(),
        if series.patches.len() == 1 { "" } else { "es" },
        base.label
    );
    let tmp = tempfile::Builder::new().prefix(".patch-").tempdir_in(&root)?;
    let copy = tmp.path().join("tree");
    // The previous version's objects, once a build configured them, are closer to this
    // version than the base's (the series' own config fragments, e.g. KUnit, can change
    // task_struct and so every object): the copy takes those instead.
    let previous_objects = dest.join(OBJECTS_IN_TREE);
    let reuse_previous = previous_objects.join(".config").is_file();
    copy_tree(&base.tree, &copy, if reuse_previous { &[".git", OBJECTS_IN_TREE] } else { &[".git"] })?;
    for patch in &series.patches {
        apply_patch(&copy, patch).with_context(|| format!("series {} on {}", series.name, base.label))?;
    }
    if reuse_previous {
        std::fs::rename(&previous_objects, copy.join(OBJECTS_IN_TREE))
            .with_context(|| format!("moving {} into the new copy", previous_objects.display()))?;
    }
    // cp -a keeps the base's (old) mtimes, so a file the previous version of the series
    // changed and this one does not would look older than its object and make would keep
    // the object built from the patched text. Every file either version touches gets a
    // fresh mtime, and Kbuild rebuilds exactly what depends on them.
    let mut touched: BTreeSet<String> = lines.map(String::from).collect();
    touched.extend(series.touched.iter().cloned());
    let now = std::time::SystemTime::now();
    for path in &touched {
        let file = copy.join(path);
        if file.is_file() {
            std::fs::File::options()
                .write(true)
                .open(&file)
                .and_then(|f| f.set_modified(now))
                .with_context(|| format!("touching {}", file.display()))?;
        }
    }
    // Until the swap is done the stamp matches no version and lists both versions' files,
    // so an interrupted swap is redone with the same care.
    let pending: Vec<&str> = std::iter::once("pending").chain(touched.iter().map(String::as_str)).collect();
    crate::judge::results::write_atomic(&stamp, (pending.join("\n") + "\n").as_bytes())?;
    if dest.exists() {
        std::fs::rename(&dest, tmp.path().join("old")).with_context(|| format!("moving {} aside", dest.display()))?;
    }
    std::fs::rename(&copy, &dest).with_context(|| format!("renaming the patched tree to {}", dest.display()))?;
    let done: Vec<&str> =
        std::iter::once(series.hash.as_str()).chain(series.touched.iter().map(String::as_str)).collect();
    crate::judge::results::write_atomic(&stamp, (done.join("\n") + "\n").as_bytes())?;
    Ok(source)
}

/// Copies a source tree without the top-level entries named in `skip` (`.git`: a maintainer's
/// object store can be gigabytes, and the build does not need it). `--reflink=auto` makes it
/// nearly free where the filesystem shares extents.
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> Result<()> {
    std::fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .flatten()
        .filter(|e| !skip.iter().any(|s| e.file_name() == *s))
        .map(|e| e.path())
        .collect();
    entries.sort();
    let out = Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .args(&entries)
        .arg(to)
        .output()
        .context("running cp")?;
    if !out.status.success() {
        bail!("copying {} to {} failed: {}", from.display(), to.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `git apply` one patch in `tree`. On failure the error names the patch, quotes git's
/// complaint and the hunk it could not place.
pub(super) fn apply_patch(tree: &Path, patch: &Path) -> Result<()> {
    let out = Command::new("git")
        .args(["apply", "--verbose", "--whitespace=nowarn"])
        .arg(patch)
        .current_dir(tree)
        // The copy is not a repository; do not let git find one above it (a cache inside a
        // checkout) and apply paths relative to that.
        .env("GIT_CEILING_DIRECTORIES", tree.parent().unwrap_or(tree))
        .output()
        .context("running git apply")?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(patch).unwrap_or_default();
    let hunk = failed_hunk(&stderr, &text).map(|h| format!("\nthe hunk that failed:\n{h}")).unwrap_or_default();
    bail!("patch {} does not apply:\n{}{hunk}", patch.display(), stderr.trim());
}

/// The hunk git apply names in "error: patch failed: FILE:LINE", from the patch text
/// (at most 40 lines of it).
fn failed_hunk(stderr: &str, patch: &str) -> Option<String> {
    let spot = stderr.lines().find_map(|l| l.trim().strip_prefix("error: patch failed: "))?;
    let (file, line) = spot.rsplit_once(':')?;
    let line: usize = line.trim().parse().ok()?;
    let mut in_file = false;
    let mut hunk: Vec<&str> = Vec::new();
    for l in patch.lines() {
        if let Some(path) = l.strip_prefix("+++ ") {
            in_file = path.trim().strip_prefix("b/").unwrap_or(path.trim()) == file;
            if !hunk.is_empty() {
                break;
            }
            continue;
        }
        if !hunk.is_empty() {
            if l.starts_with("@@") || l.starts_with("diff ") || l == "-- " {
                break;
            }
            hunk.push(l);
            continue;
        }
        if in_file && l.starts_with("@@ -") {
            let start = l[4..].split([',', ' ']).next()?.parse::<usize>().ok()?;
            if start == line {
                hunk.push(l);
            }
        }
    }
    if hunk.is_empty() {
        return None;
    }
    hunk.truncate(40);
    Some(hunk.join("\n"))
}

#[cfg(test)]
pub(super) mod tests {
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
    fn git_identity_changes_with_local_edits_and_new_files() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        git(dir.path(), &["init", "-q"]);
        git(dir.path(), &["add", "."]);
        git(dir.path(), &["commit", "-qm", "x"]);
        let clean = user_tree(dir.path()).unwrap();
        assert!(clean.id.starts_with("git-") && !clean.label.contains("local changes"), "{clean:?}");
        std::fs::write(dir.path().join("hello.c"), "int x = 2;\n").unwrap();
        let dirty = user_tree(dir.path()).unwrap();
        assert_ne!(clean.id, dirty.id);
        assert!(dirty.label.contains("local changes"));
        std::fs::write(dir.path().join("new.c"), "").unwrap();
        assert_ne!(user_tree(dir.path()).unwrap().id, dirty.id);
    }

    #[test]
    fn plain_identity_follows_the_newest_change() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        std::fs::create_dir(dir.path().join("drivers")).unwrap();
        let before = user_tree(dir.path()).unwrap().id;
        assert_eq!(before, user_tree(dir.path()).unwrap().id, "stable");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("drivers/new.c"), "").unwrap();
        assert_ne!(before, user_tree(dir.path()).unwrap().id);
    }

    /// git in `dir` with a throw-away identity; its stdout. (Also used by `check`'s tests.)
    pub(in crate::build::kernel) fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// A real `git format-patch` series made from a scratch repository, applied to a copy of
    /// a (git) kernel tree; then a patch whose context does not match.
    #[test]
    fn series_applies_on_a_private_copy_and_reports_failures() {
        let cache = tempfile::tempdir().unwrap();
        let base_dir = tempfile::tempdir().unwrap();
        fake_tree(base_dir.path());
        git(base_dir.path(), &["init", "-q"]);
        git(base_dir.path(), &["add", "."]);
        git(base_dir.path(), &["commit", "-qm", "base"]);
        let base = user_tree(base_dir.path()).unwrap();

        let patches = tempfile::tempdir().unwrap();
        let good = patches.path().join("good");
        std::fs::write(base_dir.path().join("hello.c"), "int x = 42;\n").unwrap();
        git(base_dir.path(), &["commit", "-qam", "hello: answer"]);
        let made = git(base_dir.path(), &["format-patch", "-1", "-o", good.to_str().unwrap()]);
        git(base_dir.path(), &["reset", "-q", "--hard", "HEAD~1"]);
        let file = Path::new(made.trim()).file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(file, "0001-hello-answer.patch");
        std::fs::write(good.join("series"), format!("# our series\n\n{file}\n")).unwrap();
        std::fs::write(good.join("b.config"), "CONFIG_B=y\n").unwrap();
        std::fs::write(good.join("a.config"), "CONFIG_A=y\n").unwrap();
        // Objects built inside the base tree (a tree we own): the copy takes them along with
        // their mtimes, so make in the copy is incremental.
        let objects = base_dir.path().join(".objects");
        std::fs::create_dir(&objects).unwrap();
        std::fs::write(objects.join("fork.o"), "obj").unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options().write(true).open(objects.join("fork.o")).unwrap().set_modified(old).unwrap();

        let series = Series::load(patches.path(), "good").unwrap();
        assert_eq!(series.config_fragments, [good.join("a.config"), good.join("b.config")], "sorted, the series' own");
        let src = patched(cache.path(), &base, &series).unwrap();
        assert_eq!(std::fs::metadata(src.tree.join(".objects/fork.o")).unwrap().modified().unwrap(), old);
        assert_eq!(std::fs::read_to_string(src.tree.join("hello.c")).unwrap(), "int x = 42;\n");
        assert!(!src.tree.join(".git").exists(), "the copy leaves .git behind");
        assert_eq!(std::fs::read_to_string(base_dir.path().join("hello.c")).unwrap(), "int x = 1;\n", "base untouched");
        assert_eq!(git(base_dir.path(), &["status", "--porcelain"]), "?? .objects/\n", "base tree untouched");
        assert_ne!(src.id, base.id);
        assert_eq!(src.id, patched_id(&base.id, &series));
        assert_eq!(src.tree, patched_path(cache.path(), &base, "good"));
        assert_eq!(series.touched.iter().collect::<Vec<_>>(), ["hello.c"]);
        let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        let patched_mtime = stamp(&src.tree.join("hello.c"));
        assert_eq!(patched(cache.path(), &base, &series).unwrap().tree, src.tree, "made once");
        assert_eq!(stamp(&src.tree.join("hello.c")), patched_mtime, "an unchanged series is not reapplied");

        // A build configured the copy's objects: the next version keeps those, not the base's.
        std::fs::write(src.tree.join(".objects/.config"), "CONFIG_A=y\n").unwrap();
        std::fs::write(src.tree.join(".objects/series-only.o"), "obj").unwrap();

        // A new version of the series that no longer touches hello.c: same path, hello.c
        // back to the base text but with a newer mtime than the patched one (make would
        // otherwise keep the object built from the patched text).
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(
            good.join(&file),
            "--- a/Kconfig\n+++ b/Kconfig\n@@ -1 +1 @@\n-mainmenu \"x\"\n+mainmenu \"y\"\n",
        )
        .unwrap();
        let v2 = Series::load(patches.path(), "good").unwrap();
        let src2 = patched(cache.path(), &base, &v2).unwrap();
        assert_eq!(src2.tree, src.tree);
        assert_ne!(src2.id, src.id);
        assert_eq!(std::fs::read_to_string(src2.tree.join("hello.c")).unwrap(), "int x = 1;\n");
        assert_eq!(std::fs::read_to_string(src2.tree.join("Kconfig")).unwrap(), "mainmenu \"y\"\n");
        assert!(stamp(&src2.tree.join("hello.c")) > patched_mtime, "reverted file looks new to make");
        assert!(src2.tree.join(".objects/series-only.o").is_file(), "the previous version's objects are kept");

        let bad = patches.path().join("bad");
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(
            bad.join("0001-y.patch"),
            "--- a/hello.c\n+++ b/hello.c\n@@ -1 +1 @@\n-int y = 7;\n+int y = 8;\n",
        )
        .unwrap();
        std::fs::write(bad.join("series"), "0001-y.patch\n").unwrap();
        let series = Series::load(patches.path(), "bad").unwrap();
        let err = format!("{:#}", patched(cache.path(), &base, &series).unwrap_err());
        assert!(err.contains("0001-y.patch does not apply"), "{err}");
        assert!(err.contains("patch failed: hello.c:1"), "{err}");
        assert!(err.contains("the hunk that failed:\n@@ -1 +1 @@\n-int y = 7;\n+int y = 8;"), "{err}");

        let err = Series::load(patches.path(), "resmgr").unwrap_err().to_string();
        assert!(err.contains("no patch series \"resmgr\"") && err.contains("bad, good"), "{err}");
        let err = Series::load(patches.path(), "../good").unwrap_err().to_string();
        assert!(err.contains("a series is a directory name"), "{err}");
        std::fs::write(bad.join("series"), "0002-missing.patch\n").unwrap();
        let err = format!("{:#}", Series::load(patches.path(), "bad").unwrap_err());
        assert!(err.contains("series:1: patch 0002-missing.patch"), "{err}");
    }

    #[test]
    fn series_hash_follows_patch_contents() {
        let patches = tempfile::tempdir().unwrap();
        let dir = patches.path().join("s");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("series"), "a.patch\n").unwrap();
        std::fs::write(dir.join("a.patch"), "one").unwrap();
        let one = Series::load(patches.path(), "s").unwrap().hash;
        std::fs::write(dir.join("a.patch"), "two").unwrap();
        assert_ne!(one, Series::load(patches.path(), "s").unwrap().hash);
    }
}
