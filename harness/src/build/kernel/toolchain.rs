//! The kernel toolchain: host packages, bindgen, the `make` variables that pin every tool, and
//! the version strings that go into the cache key.
//!
//! Everything is passed to make explicitly because the defaults are wrong on our hosts: a
//! rustup `rustc` comes first in `PATH`, and Kconfig silently records whichever `rustc` it
//! finds (docs/kernel-facts.md §1). Debian's `rustc-web` has its sysroot in `/usr` and the `core`
//! sources from `rust-web-src`, which is what the kernel needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::host;

const RUSTC: &str = "/usr/bin/rustc";
const RUSTDOC: &str = "/usr/bin/rustdoc";
/// bindgen loads libclang at run time; Debian's libclang-dev for clang 14 puts it here.
const LIBCLANG_PATH: &str = "/usr/lib/llvm-14/lib";
/// bindgen-cli 0.69.5 suits libclang 14 (newer libclang needs newer bindgen, docs/kernel-facts.md §1).
const BINDGEN_VERSION: &str = "^0.69";

/// Added to every C compile (`KCFLAGS`, after the kernel's own flags; part of the cache key).
/// `CONFIG_FRAME_POINTER` adds `-fno-optimize-sibling-calls`, so a tail call would stay a
/// frame; with them optimized as in an ORC build, traces (and report titles) have the frames
/// an ORC kernel prints, while the frame-pointer unwinder keeps KASAN's stack saving cheap
/// (`kernels/configs/60-debug.config`). Files that need the flag for themselves still set it.
pub const KCFLAGS: &str = "-foptimize-sibling-calls";

/// The compiler `make` variables of every build in a kernel object tree, the kernel's and the
/// out-of-tree test modules' alike: clang (Rust needs it) and [`KCFLAGS`].
pub fn compiler_vars() -> [String; 2] {
    ["LLVM=1".into(), format!("KCFLAGS={KCFLAGS}")]
}

/// A checked toolchain.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub bindgen: PathBuf,
    /// One line per tool (clang, ld.lld, rustc, bindgen, make): part of the cache key.
    pub versions: String,
}

impl Toolchain {
    /// Makes sure the packages and bindgen are there (installing what is missing, saying so)
    /// and reads the tool versions.
    pub fn ensure() -> Result<Toolchain> {
        host::ensure(host::KERNEL)?;
        let bindgen = ensure_bindgen()?;
        let versions = versions(&bindgen)?;
        Ok(Toolchain { bindgen, versions })
    }

    /// The `make` variables for an LLVM + Debian-Rust build.
    pub fn make_vars(&self) -> Vec<String> {
        let mut vars = Vec::from(compiler_vars());
        vars.extend([
            format!("RUSTC={RUSTC}"),
            // Host Rust programs (none in 6.12's x86 build today) must not use rustup's either.
            format!("HOSTRUSTC={RUSTC}"),
            format!("RUSTDOC={RUSTDOC}"),
            format!("BINDGEN={}", self.bindgen.display()),
        ]);
        vars
    }

    /// Environment for make.
    pub fn make_env(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("LIBCLANG_PATH", LIBCLANG_PATH),
            // Reproducible images: no build time, user or host name, nor the count of
            // builds in this object tree ("#2 SMP") baked in.
            ("KBUILD_BUILD_TIMESTAMP", "@0"),
            ("KBUILD_BUILD_VERSION", "1"),
            ("KBUILD_BUILD_USER", "unplug-torture"),
            ("KBUILD_BUILD_HOST", "unplug-torture"),
        ]
    }
}

/// bindgen for the kernel's Rust bindings: the one `cargo install` put in `$CARGO_HOME/bin`
/// (it is not on every `PATH`), else one on `PATH`, else installed now, saying so.
fn ensure_bindgen() -> Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin").join("bindgen"));
    let find = || cargo_bin.clone().filter(|p| p.is_file()).or_else(|| which::which("bindgen").ok());
    if let Some(path) = find() {
        return Ok(path);
    }
    eprintln!(
        "unplug-torture: bindgen is missing; installing it for the kernel's Rust bindings \
         (cargo install --locked bindgen-cli --version {BINDGEN_VERSION})"
    );
    let status = Command::new("cargo")
        .args(["install", "--locked", "bindgen-cli", "--version", BINDGEN_VERSION])
        .status()
        .context("running cargo install bindgen-cli (is cargo installed?)")?;
    if !status.success() {
        bail!("cargo install --locked bindgen-cli --version {BINDGEN_VERSION} failed ({status})");
    }
    find().context("bindgen-cli was installed but no bindgen is in $CARGO_HOME/bin or on PATH")
}

fn versions(bindgen: &Path) -> Result<String> {
    let first_line = |tool: &Path| -> Result<String> {
        let out = Command::new(tool)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", tool.display()))?;
        if !out.status.success() {
            bail!("{} --version failed ({})", tool.display(), out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_string())
    };
    let tools = [Path::new("clang"), Path::new("ld.lld"), Path::new(RUSTC), bindgen, Path::new("make")];
    Ok(tools.iter().map(|t| first_line(t)).collect::<Result<Vec<_>>>()?.join("\n"))
}
