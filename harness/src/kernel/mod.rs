//! Kernel builds: a source tree (Debian's 6.12, a user's tree, or either plus a patch series)
//! + `tinyconfig` + our fragments (`kernels/configs/*.config`) → a cached, validated build.
//!
//! The cache key covers the source identity, the series contents, the merged fragment text,
//! the toolchain versions and this recipe's version; a hit returns without running make. The
//! toolchain is LLVM (`LLVM=1`): KASAN together with Rust needs clang on 6.12. Rust uses
//! Debian's `rustc-web` (`/usr/bin/rustc`, with `rust-web-src`), never rustup's `rustc`
//! that comes first in `PATH` on our machines.

mod config;
mod source;

pub use config::Fragment;
pub use source::Source;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::host::{self, Requirement};

/// Bump when the build recipe changes in a way the key does not otherwise see.
const RECIPE_VERSION: u32 = 1;
const RUSTC: &str = "/usr/bin/rustc";
const RUSTDOC: &str = "/usr/bin/rustdoc";

/// Host packages a kernel build needs.
pub const TOOLCHAIN: &[Requirement] = &[
    Requirement::command("make", "make"),
    Requirement::command("clang", "clang"),
    Requirement::command("lld", "ld.lld"),
    Requirement::command("llvm", "llvm-ar"),
    Requirement::file("libclang-dev", "/usr/lib/llvm-14/lib/libclang.so"),
    Requirement::file("rustc-web", RUSTC),
    Requirement::file("rust-web-src", "/usr/lib/rustlib/src/rust/library/core/src/lib.rs"),
    Requirement::command("bc", "bc"),
    Requirement::command("bison", "bison"),
    Requirement::command("flex", "flex"),
    Requirement::file("libelf-dev", "/usr/include/libelf.h"),
    Requirement::file("libssl-dev", "/usr/include/openssl/ssl.h"),
    Requirement::command("cpio", "cpio"),
    Requirement::command("xz-utils", "xz"),
    Requirement::command("git", "git"),
];

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct KernelRequest {
    /// A kernel tree of the user's; Debian's 6.12 source when `None`.
    pub src: Option<PathBuf>,
    /// A patch series from `kernels/patches/NAME`.
    pub series: Option<String>,
    /// Rebuild even if the cache has this build.
    pub force: bool,
}

/// A finished build in the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kernel {
    pub dir: PathBuf,
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
    pub config: PathBuf,
    pub build_log: PathBuf,
    /// `INSTALL_MOD_PATH` tree, when the build has modules.
    pub modules: Option<PathBuf>,
    /// The source tree it was built from (for MAINTAINERS and symbolization).
    pub source_tree: PathBuf,
    pub source_id: String,
    pub source_label: String,
    pub series: Option<String>,
    pub config_hash: String,
    pub release: String,
    pub key: String,
    /// How long make took when this build was made.
    pub build_seconds: f64,
}

impl Kernel {
    pub fn describe(&self) -> String {
        let series = self.series.as_deref().map(|s| format!(" + {s}")).unwrap_or_default();
        format!("{} {}{series}", self.release, self.source_label)
    }
}

/// The fragment files, in the order they are merged (by file name).
pub fn fragment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "config"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.config fragments in {}", dir.display());
    }
    Ok(files)
}

/// Builds the kernel `req` describes, or returns the cached build.
pub fn build(req: &KernelRequest) -> Result<Kernel> {
    host::ensure(TOOLCHAIN)?;
    if req.src.is_none() {
        host::ensure(&[Requirement::file("linux-source-6.12", source::DEBIAN_TARBALL)])?;
    }
    let bindgen = ensure_bindgen()?;
    let cache = crate::paths::cache_dir();
    let repo = crate::paths::repo_root();

    let base = match &req.src {
        Some(dir) => source::user_tree(dir)?,
        None => source::debian(&cache)?,
    };
    let source = match &req.series {
        Some(name) => {
            let (patches, hash) = source::series_patches(&repo.join("kernels").join("patches"), name)?;
            source::patched(&cache, &base, name, &patches, &hash)?
        }
        None => base,
    };
    let fragment = Fragment::load(&fragment_files(&repo.join("kernels").join("configs"))?)?;
    let fragment_text = fragment.to_kconfig();
    let toolchain = toolchain_versions(&bindgen)?;
    let key = {
        let mut h = Sha256::new();
        for part in [RECIPE_VERSION.to_string().as_str(), &source.id, &fragment_text, &toolchain] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(&h.finalize()[..8])
    };
    let dir = cache.join("kernels").join(&key);
    std::fs::create_dir_all(&dir)?;
    let meta_path = dir.join("meta.json");
    let _lock = lock_exclusive(&cache.join("kernels").join(format!("{key}.lock")))?;
    if !req.force {
        if let Some(kernel) = std::fs::read_to_string(&meta_path).ok().and_then(|t| serde_json::from_str::<Kernel>(&t).ok()) {
            if kernel.bzimage.exists() && kernel.vmlinux.exists() {
                return Ok(kernel);
            }
        }
    }
    let _ = std::fs::remove_file(&meta_path);

    let build_dir = dir.join("build");
    std::fs::create_dir_all(&build_dir)?;
    let log_path = dir.join("build.log");
    let mut log = std::fs::File::create(&log_path)?;
    writeln!(log, "# unplug-torture kernel build {key}\n# source: {} ({})\n# toolchain:\n{toolchain}", source.label, source.tree.display())?;
    let make = Make { source: &source.tree, build: &build_dir, bindgen: &bindgen, log_path: &log_path };

    let started = Instant::now();
    make.run(&["rustavailable"], "checking the Rust toolchain (make rustavailable)")?;
    make.run(&["tinyconfig"], "tinyconfig")?;
    apply_fragment(&build_dir.join(".config"), &fragment)?;
    make.run(&["olddefconfig"], "olddefconfig")?;
    let dot_config = std::fs::read_to_string(build_dir.join(".config"))?;
    let missing = fragment.missing_in(&dot_config);
    if !missing.is_empty() {
        bail!(
            "{} requested option(s) did not survive olddefconfig (unmet dependencies?):\n  {}\nfull .config: {}",
            missing.len(),
            missing.join("\n  "),
            build_dir.join(".config").display()
        );
    }
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).to_string();
    make.run(&["-j", &jobs, "bzImage", "modules"], "building bzImage and modules")?;
    let modules_dir = dir.join("modules");
    let _ = std::fs::remove_dir_all(&modules_dir);
    let has_modules = std::fs::read_to_string(build_dir.join("modules.order")).is_ok_and(|t| !t.trim().is_empty());
    let modules = if has_modules {
        let path = format!("INSTALL_MOD_PATH={}", modules_dir.display());
        make.run(&["modules_install", &path, "INSTALL_MOD_STRIP=1", "DEPMOD=/bin/true"], "installing modules")?;
        Some(modules_dir)
    } else {
        None
    };
    let build_seconds = started.elapsed().as_secs_f64();
    let release = std::fs::read_to_string(build_dir.join("include/config/kernel.release"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let copy = |from: &str, to: &str| -> Result<PathBuf> {
        let dest = dir.join(to);
        std::fs::copy(build_dir.join(from), &dest).with_context(|| format!("copying {from}"))?;
        Ok(dest)
    };
    let kernel = Kernel {
        bzimage: copy("arch/x86/boot/bzImage", "bzImage")?,
        vmlinux: copy("vmlinux", "vmlinux")?,
        config: copy(".config", "config")?,
        build_log: log_path.clone(),
        modules,
        source_tree: source.tree.clone(),
        source_id: source.id.clone(),
        source_label: source.label.clone(),
        series: req.series.clone(),
        config_hash: hex::encode(&Sha256::digest(dot_config.as_bytes())[..8]),
        release,
        key,
        build_seconds,
        dir: dir.clone(),
    };
    // meta.json last: its presence marks a complete build.
    crate::results::write_atomic(&meta_path, serde_json::to_string_pretty(&kernel)?.as_bytes())?;
    Ok(kernel)
}

/// Sets every fragment option in `.config` (what scripts/kconfig/merge_config.sh does): the
/// symbol's old line goes, the requested one is appended, olddefconfig resolves the rest.
fn apply_fragment(dot_config: &Path, fragment: &Fragment) -> Result<()> {
    let text = std::fs::read_to_string(dot_config).with_context(|| format!("reading {}", dot_config.display()))?;
    let mut out: Vec<&str> = text
        .lines()
        .filter(|line| {
            let sym = line
                .strip_prefix("CONFIG_")
                .and_then(|r| r.split('=').next())
                .or_else(|| line.strip_prefix("# CONFIG_").and_then(|r| r.strip_suffix(" is not set")));
            !sym.is_some_and(|s| fragment.options.contains_key(s))
        })
        .collect();
    let ours = fragment.to_kconfig();
    out.extend(ours.lines());
    std::fs::write(dot_config, out.join("\n") + "\n")?;
    Ok(())
}

/// `make` in the source tree with `O=`, LLVM and Debian's Rust, output appended to the build
/// log and summarised on a spinner.
struct Make<'a> {
    source: &'a Path,
    build: &'a Path,
    bindgen: &'a Path,
    log_path: &'a Path,
}

impl Make<'_> {
    fn run(&self, targets: &[&str], what: &str) -> Result<()> {
        let libclang = "/usr/lib/llvm-14/lib";
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(self.source)
            .arg(format!("O={}", self.build.display()))
            .args(["LLVM=1", &format!("RUSTC={RUSTC}"), &format!("HOSTRUSTC={RUSTC}"), &format!("RUSTDOC={RUSTDOC}")])
            .arg(format!("BINDGEN={}", self.bindgen.display()))
            .args(targets)
            .env("LIBCLANG_PATH", libclang)
            // Reproducible builds: no timestamp or host name in the image.
            .env("KBUILD_BUILD_TIMESTAMP", "@0")
            .env("KBUILD_BUILD_USER", "unplug-torture")
            .env("KBUILD_BUILD_HOST", "unplug-torture")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut log = std::fs::OpenOptions::new().append(true).open(self.log_path)?;
        writeln!(log, "\n# {what}: make {}", targets.join(" "))?;
        let mut child = cmd.spawn().context("running make")?;
        let progress = indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] kernel: {prefix} {msg:.dim}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        progress.set_prefix(what.to_string());
        progress.enable_steady_tick(Duration::from_millis(200));
        // Both streams go to the log; stderr through a thread so neither pipe can fill up.
        let stderr = child.stderr.take().context("make stderr")?;
        let mut err_log = log.try_clone()?;
        let err_thread = std::thread::spawn(move || {
            let mut tail = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(err_log, "{line}");
                tail.push(line);
                if tail.len() > 40 {
                    tail.remove(0);
                }
            }
            tail
        });
        let mut objects = 0usize;
        for line in BufReader::new(child.stdout.take().context("make stdout")?).lines().map_while(Result::ok) {
            writeln!(log, "{line}")?;
            let trimmed = line.trim_start();
            if ["CC ", "RUSTC ", "AS ", "LD "].iter().any(|p| trimmed.starts_with(p)) {
                objects += 1;
                progress.set_message(format!("{objects} objects, {trimmed}"));
            }
        }
        let status = child.wait()?;
        let tail = err_thread.join().unwrap_or_default();
        progress.finish_and_clear();
        if !status.success() {
            bail!(
                "kernel {what} failed ({status}); last errors:\n  {}\nfull log: {}",
                tail.iter().rev().take(15).rev().cloned().collect::<Vec<_>>().join("\n  "),
                self.log_path.display()
            );
        }
        Ok(())
    }
}

/// bindgen for the kernel's Rust bindings: the one `cargo install` put in ~/.cargo/bin, or
/// installed now (saying so).
fn ensure_bindgen() -> Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin").join("bindgen"));
    if let Some(p) = cargo_bin.clone().filter(|p| p.exists()).or_else(|| host::which("bindgen")) {
        return Ok(p);
    }
    eprintln!("unplug-torture: installing bindgen for the kernel's Rust (cargo install --locked bindgen-cli --version ^0.69)");
    let status = Command::new("cargo")
        .args(["install", "--locked", "bindgen-cli", "--version", "^0.69"])
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install bindgen-cli failed ({status})");
    }
    cargo_bin.filter(|p| p.exists()).or_else(|| host::which("bindgen")).context("bindgen installed but not found")
}

fn toolchain_versions(bindgen: &Path) -> Result<String> {
    let first_line = |cmd: &Path, arg: &str| -> Result<String> {
        let out = Command::new(cmd).arg(arg).output().with_context(|| format!("running {}", cmd.display()))?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string())
    };
    Ok([
        first_line(Path::new("clang"), "--version")?,
        first_line(Path::new(RUSTC), "--version")?,
        first_line(bindgen, "--version")?,
        first_line(Path::new("make"), "--version")?,
    ]
    .join("\n"))
}

/// An exclusive advisory lock held until the returned value is dropped: concurrent builds of
/// the same thing wait instead of corrupting each other.
pub(crate) fn lock_exclusive(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_replace_old_lines() {
        let dir = tempfile::tempdir().unwrap();
        let dot = dir.path().join(".config");
        std::fs::write(&dot, "CONFIG_A=y\n# CONFIG_KASAN is not set\nCONFIG_SLUB_TINY=y\nCONFIG_B=m\n").unwrap();
        let mut f = Fragment::default();
        f.merge_text("CONFIG_KASAN=y\n# CONFIG_SLUB_TINY is not set\n", Path::new("x.config")).unwrap();
        apply_fragment(&dot, &f).unwrap();
        assert_eq!(
            std::fs::read_to_string(&dot).unwrap(),
            "CONFIG_A=y\nCONFIG_B=m\nCONFIG_KASAN=y\n# CONFIG_SLUB_TINY is not set\n"
        );
    }
}
