//! Host prerequisites: which Debian packages provide the programs and files we use, a check
//! for each, and one place that installs what is missing (as root on Debian/Ubuntu) or prints
//! the exact command to run.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// How to tell whether a requirement is already met.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// An executable found on `PATH`.
    Command(&'static str),
    /// A file at a fixed path.
    File(&'static str),
}

/// A Debian package and how to check it is installed.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    pub package: &'static str,
    pub probe: Probe,
}

impl Requirement {
    pub const fn command(package: &'static str, command: &'static str) -> Self {
        Requirement { package, probe: Probe::Command(command) }
    }
    pub const fn file(package: &'static str, path: &'static str) -> Self {
        Requirement { package, probe: Probe::File(path) }
    }

    fn is_met(&self) -> bool {
        match self.probe {
            Probe::Command(cmd) => which::which(cmd).is_ok(),
            Probe::File(path) => Path::new(path).exists(),
        }
    }
}

/// Packages needed to boot VMs.
pub const QEMU: &[Requirement] = &[
    Requirement::command("qemu-system-x86", "qemu-system-x86_64"),
    Requirement::file("qemu-system-x86", "/usr/share/qemu/qboot.rom"),
];

/// The browser the end-to-end tests load the results pages in (headless; `cargo xtask test`).
pub const BROWSER: &[Requirement] = &[Requirement::command("chromium", "chromium")];

/// Packages needed to build the initramfs.
pub const IMAGE: &[Requirement] = &[Requirement::file("busybox-static", "/bin/busybox")];

/// Packages needed to build kernels: LLVM (KASAN together with Rust needs clang on 6.12),
/// Debian's Rust (`rustc-web` with the `core` sources from `rust-web-src`; the kernel must not
/// use a rustup `rustc`), libclang for bindgen, the usual Kbuild tools, git for `--src`
/// identities and patch series, lz4 for the bzImage, and depmod so `modprobe` works in the guest.
pub const KERNEL: &[Requirement] = &[
    Requirement::command("make", "make"),
    Requirement::command("clang", "clang"),
    Requirement::command("lld", "ld.lld"),
    Requirement::command("llvm", "llvm-ar"),
    Requirement::file("libclang-dev", "/usr/lib/llvm-14/lib/libclang.so"),
    Requirement::file("rustc-web", "/usr/bin/rustc"),
    Requirement::file("rustc-web", "/usr/bin/rustdoc"),
    Requirement::file("rust-web-src", "/usr/lib/rustlib/src/rust/library/core/src/lib.rs"),
    Requirement::command("bc", "bc"),
    Requirement::command("bison", "bison"),
    Requirement::command("flex", "flex"),
    Requirement::file("libelf-dev", "/usr/include/libelf.h"),
    Requirement::file("libssl-dev", "/usr/include/openssl/ssl.h"),
    Requirement::command("cpio", "cpio"),
    Requirement::command("xz-utils", "xz"),
    // The bzImage is LZ4-compressed (kernels/configs/00-base.config: faster to boot under TCG).
    Requirement::command("lz4", "lz4"),
    Requirement::command("python3", "python3"),
    Requirement::command("git", "git"),
    Requirement::command("kmod", "depmod"),
];

/// Debian's kernel sources: 6.12, the default tree to build, and the 6.1 LTS line
/// (`kernel::DebianSource`).
pub const KERNEL_SOURCE_6_12: &[Requirement] =
    &[Requirement::file("linux-source-6.12", "/usr/src/linux-source-6.12.tar.xz")];
pub const KERNEL_SOURCE_6_1: &[Requirement] =
    &[Requirement::file("linux-source-6.1", "/usr/src/linux-source-6.1.tar.xz")];

/// Makes sure every requirement is met. Missing packages are installed with apt-get when we run
/// as root on a Debian-like host (saying what is installed); otherwise the error names the exact
/// command to run.
pub fn ensure(reqs: &[Requirement]) -> Result<()> {
    let mut missing: Vec<&str> = reqs.iter().filter(|r| !r.is_met()).map(|r| r.package).collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    let is_root = nix::unistd::Uid::effective().is_root();
    if !is_root || which::which("apt-get").is_err() {
        bail!("missing host packages: {}\nInstall them with:\n  sudo {command}", missing.join(" "));
    }
    eprintln!("unplug-torture: installing host packages: {} ({command})", missing.join(" "));
    run_apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    run_apt(&args)?;
    let still: Vec<&str> = reqs.iter().filter(|r| !r.is_met()).map(|r| r.package).collect();
    if !still.is_empty() {
        bail!("installed {} but these are still not usable: {}", missing.join(" "), still.join(" "));
    }
    Ok(())
}

/// Runs apt-get with its output captured: a line of what it set up on success (the full
/// output of an install is hundreds of lines a CI log does not need), the output's tail on
/// failure.
fn run_apt(args: &[&str]) -> Result<()> {
    let started = std::time::Instant::now();
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .output()
        .context("running apt-get")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines.get(lines.len().saturating_sub(APT_TAIL_LINES)..).unwrap_or_default();
        bail!("apt-get {} failed with {}; last lines:\n  {}", args.join(" "), out.status, tail.join("\n  "));
    }
    if let Some(summary) = apt_summary(&text) {
        eprintln!("unplug-torture: apt-get {}: {summary} in {:.0?}", args.first().copied().unwrap_or_default(), started.elapsed());
    }
    Ok(())
}

/// How many lines of a failed apt-get's output the error shows.
const APT_TAIL_LINES: usize = 20;

/// `set up N package(s): a, b, ...` from apt-get's `Setting up NAME (VERSION) ...` lines;
/// `None` when it set nothing up.
fn apt_summary(output: &str) -> Option<String> {
    const SHOWN: usize = 8;
    let names: Vec<&str> =
        output.lines().filter_map(|l| l.strip_prefix("Setting up ")).filter_map(|rest| rest.split_whitespace().next()).collect();
    if names.is_empty() {
        return None;
    }
    let more = names.len().saturating_sub(SHOWN);
    let and_more = if more > 0 { format!(" and {more} more") } else { String::new() };
    Some(format!("set up {} package(s): {}{and_more}", names.len(), names.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_output_is_summarised() {
        let out = "Reading package lists...\nSetting up bc (1.07.1-3+b1) ...\nSetting up flex (2.6.4-8.2) ...\nProcessing triggers for man-db\n";
        assert_eq!(apt_summary(out).as_deref(), Some("set up 2 package(s): bc, flex"));
        let many: String = (0..10).map(|i| format!("Setting up p{i}:amd64 (1) ...\n")).collect();
        assert_eq!(apt_summary(&many).as_deref(), Some("set up 10 package(s): p0:amd64, p1:amd64, p2:amd64, p3:amd64, p4:amd64, p5:amd64, p6:amd64, p7:amd64 and 2 more"));
        assert_eq!(apt_summary("Hit:1 http://deb.debian.org bookworm InRelease\n"), None);
    }

    #[test]
    fn ensure_passes_when_everything_is_present() {
        ensure(&[Requirement::command("dash", "sh")]).unwrap();
    }
}
