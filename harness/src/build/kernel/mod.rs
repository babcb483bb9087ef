//! Kernel builds: a source tree (Debian's 6.12 or 6.1, a user's `--src` tree, either plus a
//! patch series) + `tinyconfig` + our fragments (`kernels/configs/*.config`, then the tree's
//! version's own, less what that version cannot have) → a validated, cached build.
//!
//! - [`source`]: which tree, and its identity for the cache key; series on private copies.
//! - [`config`]: fragment parsing, merging with located conflicts, post-olddefconfig checks.
//! - [`version`]: per kernel version, its own fragments and the options it cannot have, with why.
//! - [`toolchain`]: LLVM + Debian's Rust + bindgen, pinned on make's command line.
//! - [`build`]: running Kbuild out of tree (`O=`) with progress and a build log.
//! - [`cache`]: keys, locks and the layout of `cache/kernels/`.
//!
//! The key covers the source identity, the series contents, the merged fragment text, the
//! tool versions and the recipe version; a hit returns without running make.

mod build;
mod cache;
pub mod check;
mod config;
mod source;
mod toolchain;
pub mod version;

pub use build::BuildFailed;
pub use toolchain::{compiler_vars, KCFLAGS};

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::host;
use build::Make;
use config::Fragment;
use toolchain::Toolchain;

pub use source::DebianSource;
pub use version::Absent;

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct KernelRequest {
    /// A kernel tree of the user's (never written to); Debian's `debian` source when `None`.
    pub src: Option<PathBuf>,
    /// Which Debian source package to build when there is no `src`.
    pub debian: DebianSource,
    /// A patch series, `kernels/patches/NAME/`.
    pub series: Option<String>,
    /// Run make again even if the cache has this build (incremental in the object tree).
    pub force: bool,
}

/// A finished build in the cache (`meta.json` in [`Kernel::dir`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kernel {
    /// `cache/kernels/<key>/`, holding everything below.
    pub dir: PathBuf,
    pub bzimage: PathBuf,
    /// Unstripped, with DWARF: for symbolizing reports.
    pub vmlinux: PathBuf,
    /// The final `.config`.
    pub config: PathBuf,
    pub build_log: PathBuf,
    /// `INSTALL_MOD_PATH` tree (`lib/modules/<release>/`), when the config has modules.
    pub modules: Option<PathBuf>,
    /// The tree it was built from (for MAINTAINERS and source lines in reports).
    pub source_tree: PathBuf,
    /// For a series: the tree it was applied to. Its build started from that tree's objects,
    /// so the DWARF of what the series did not change names files there.
    #[serde(default)]
    pub base_tree: Option<PathBuf>,
    pub source_id: String,
    /// For people: "Debian linux-source-6.12", "git 0123456789ab + local changes", ...
    pub source_label: String,
    pub series: Option<String>,
    /// Hash of the final `.config`.
    pub config_hash: String,
    /// `make kernelrelease`, e.g. "6.12.117".
    pub release: String,
    pub key: String,
    /// How long make took when this build was made.
    pub build_seconds: f64,
    /// That make started from an empty object tree; otherwise `build_seconds` is an
    /// incremental build's time (object trees are shared by the builds of one source tree).
    #[serde(default)]
    pub cold: bool,
    /// Requested options this kernel's version cannot have, with the reasons
    /// (`kernels/configs/<version>/absent`), left out of its configuration.
    #[serde(default)]
    pub absent: Vec<Absent>,
    /// Built with `CONFIG_RUST` (6.1 is not: see `absent`).
    #[serde(default = "yes")]
    pub rust: bool,
    /// This call found the build in the cache.
    #[serde(skip)]
    pub cached: bool,
}

fn yes() -> bool {
    true
}

impl Kernel {
    /// "6.12.117 Debian linux-source-6.12 + series resmgr", "6.1.192 Debian linux-source-6.1
    /// (without Rust)".
    pub fn describe(&self) -> String {
        format!("{} {}{}", self.release, self.source_label, if self.rust { "" } else { " (without Rust)" })
    }
}

/// What a build is keyed by, worked out without unpacking or building anything.
struct Identity {
    series: Option<source::Series>,
    fragment: Fragment,
    test_modules: Vec<PathBuf>,
    /// What the tree's version cannot have, left out of `fragment`.
    absent: Vec<Absent>,
    rust: bool,
    key: String,
}

impl Identity {
    /// The identity of `req`'s build; `base_id` is its base tree's (a `--src` tree's or the
    /// Debian tarball's), `version` its `MAJOR.MINOR`.
    fn of(req: &KernelRequest, base_id: &str, version: &str, toolchain: &Toolchain) -> Result<Identity> {
        let kernels_dir = crate::paths::repo_root().join("kernels");
        let series =
            req.series.as_deref().map(|name| source::Series::load(&kernels_dir.join("patches"), name)).transpose()?;
        let source_id = match &series {
            Some(series) => source::patched_id(base_id, series),
            None => base_id.to_string(),
        };
        // The tree's version adds its own fragments and takes away what it cannot have; a series
        // may turn on what it adds (`kernels/patches/NAME/*.config`, after ours); the vanilla
        // configuration stays exactly as it is.
        let configs = kernels_dir.join("configs");
        let version_config = version::load(&configs, version)?;
        let mut fragment_files = config::fragment_files(&configs)?;
        fragment_files.extend(version_config.fragments.iter().cloned());
        if let Some(series) = &series {
            fragment_files.extend(series.config_fragments.iter().cloned());
        }
        let mut fragment = Fragment::load(&fragment_files)?;
        fragment.drop_absent(&version_config.absent)?;
        let absent = version_config.absent;
        let rust = fragment.options.get("RUST").is_some_and(|(value, _)| value == "y");
        let test_modules = crate::build::kmod::module_dirs(&kernels_dir)?;
        // The test modules are part of the build's modules tree, so their sources are in the key;
        // so are the absences and their reasons (meta.json records them). A version without any
        // keeps the key it always had.
        let mut fragment_and_modules = format!(
            "{}\n{}",
            fragment.to_kconfig(),
            cache::hash(&[&crate::build::kmod::sources_fingerprint(&test_modules)?])
        );
        if !absent.is_empty() {
            fragment_and_modules.push_str(&format!("\nabsent {}", version::key_part(&absent)));
        }
        let toolchain_part = format!("{}\nKCFLAGS={}", toolchain.versions, KCFLAGS);
        let key = cache::key(&source_id, &fragment_and_modules, &toolchain_part);
        Ok(Identity { series, fragment, test_modules, absent, rust, key })
    }
}

/// `req`'s base tree when it is a `--src` tree, and the base's id and `MAJOR.MINOR` version
/// either way (Debian's tarball is identified without unpacking it; its package says its
/// version).
fn base_id(req: &KernelRequest) -> Result<(Option<source::Source>, String, String)> {
    match &req.src {
        Some(dir) => {
            let tree = source::user_tree(dir)?;
            let id = tree.id.clone();
            let version = version::tree_version(&tree.tree)?;
            Ok((Some(tree), id, version))
        }
        None => {
            host::ensure(req.debian.requirement())?;
            Ok((None, source::debian_id(req.debian)?, req.debian.version().to_string()))
        }
    }
}

/// The cache key of the kernel `req` describes (`cache/kernels/<key>/`), as [`build`] computes
/// it, without building or unpacking anything: what CI caches a build under. Installs the
/// toolchain when it is missing, since its versions are part of the key.
pub fn key(req: &KernelRequest) -> Result<String> {
    let toolchain = Toolchain::ensure()?;
    let (_, base_id, version) = base_id(req)?;
    Ok(Identity::of(req, &base_id, &version, &toolchain)?.key)
}

/// The tree a build compiles (the base, or a patched copy of it for a series) and its object
/// directory, locked while the build runs.
struct BuildTree {
    source: source::Source,
    /// The unpatched base, when `source` is a patched copy of it.
    base_tree: Option<PathBuf>,
    objects: PathBuf,
    _objects_lock: nix::fcntl::Flock<std::fs::File>,
}

impl BuildTree {
    /// Unpacks Debian's source unless `user_tree` is given, and patches a copy for `series`.
    fn prepare(cache_dir: &Path, cache: &cache::Cache, req: &KernelRequest, user_tree: Option<source::Source>, series: Option<&source::Series>) -> Result<BuildTree> {
        let base = match user_tree {
            Some(tree) => tree,
            None => source::debian(cache_dir, req.debian)?,
        };
        // The object tree's lock first: a patched copy is remade in place only while no make
        // runs in it.
        let tree = match series {
            Some(series) => source::patched_path(cache_dir, &base, &series.name),
            None => base.tree.clone(),
        };
        let (objects, _objects_lock) = cache.object_dir(&tree, series.is_some() || base.owned)?;
        let base_tree = series.map(|_| base.tree.clone());
        let source = match series {
            Some(series) => {
                // The copy takes the base's objects along: no make may run in them meanwhile.
                let _base_objects_lock = base.owned.then(|| cache.object_dir(&base.tree, true)).transpose()?;
                source::patched(cache_dir, &base, series)?
            }
            None => base,
        };
        Ok(BuildTree { source, base_tree, objects, _objects_lock })
    }
}

/// Builds the kernel `req` describes, or returns the cached build (a hit neither unpacks nor
/// runs make).
pub fn build(req: &KernelRequest) -> Result<Kernel> {
    let toolchain = Toolchain::ensure()?;
    let cache_dir = crate::paths::cache_dir();
    let (user_tree, base_id, version) = base_id(req)?;
    let Identity { series, fragment, test_modules, absent, rust, key } = Identity::of(req, &base_id, &version, &toolchain)?;

    let cache = cache::Cache::open(&cache_dir)?;
    if !req.force {
        if let Some(kernel) = cache.lookup(&key) {
            return Ok(kernel);
        }
    }
    let _build_lock = cache.lock_build(&key)?;
    if !req.force {
        // Someone else may have finished it while we waited for the lock.
        if let Some(kernel) = cache.lookup(&key) {
            return Ok(kernel);
        }
    }
    let BuildTree { source, base_tree, objects, _objects_lock } = BuildTree::prepare(&cache_dir, &cache, req, user_tree, series.as_ref())?;
    let dir = cache.build_dir(&key);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let meta = dir.join("meta.json");
    if meta.exists() {
        std::fs::remove_file(&meta).with_context(|| format!("removing {}", meta.display()))?;
    }

    let log = dir.join("build.log");
    build::start_log(
        &log,
        &format!(
            "# unplug-torture kernel build {key}\n# source: {} ({})\n# objects: {}\n# toolchain:\n{}\n",
            source.label,
            source.tree.display(),
            objects.display(),
            toolchain.versions
        ),
    )?;
    let make = Make { source: &source.tree, objects: &objects, toolchain: &toolchain, log: log.clone() };
    for a in &absent {
        let line = format!("unplug-torture: {} (version {version}) is built without {}: {} ({})", source.label, a.option, a.reason, a.written_at);
        eprintln!("{line}");
        build::append_log(&log, &line)?;
    }
    let cold = !objects.join("vmlinux").exists();
    let started = Instant::now();
    if rust {
        build::check_rust(&make)?;
    }
    let dot_config = build::configure(&make, &fragment)?;
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let modules_dir = dir.join("modules");
    let mut has_modules = build::compile(&make, jobs, &modules_dir)?;
    let release = build::release(&objects)?;
    for module in &test_modules {
        crate::build::kmod::build_into(&objects, module, &dir.join("test-modules"), &modules_dir, &release)?;
        has_modules = true;
    }
    let build_seconds = started.elapsed().as_secs_f64();

    let artifact = |from: &str, to: &str| -> Result<PathBuf> {
        let dest = dir.join(to);
        cache::install(&objects.join(from), &dest)?;
        Ok(dest)
    };
    let kernel = Kernel {
        bzimage: artifact("arch/x86/boot/bzImage", "bzImage")?,
        vmlinux: artifact("vmlinux", "vmlinux")?,
        config: artifact(".config", "config")?,
        build_log: log,
        modules: has_modules.then_some(modules_dir),
        source_tree: source.tree.clone(),
        base_tree,
        source_id: source.id.clone(),
        source_label: source.label.clone(),
        series: req.series.clone(),
        config_hash: cache::hash(&[dot_config.as_bytes()]),
        release,
        key,
        build_seconds,
        cold,
        absent,
        rust,
        dir,
        cached: false,
    };
    // meta.json last: its presence marks a complete build.
    crate::judge::results::write_atomic(&meta, serde_json::to_string_pretty(&kernel)?.as_bytes())?;
    Ok(kernel)
}
