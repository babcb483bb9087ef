//! The initramfs: busybox-static and the static guest agent (`images/agent`), which is also
//! `/init`, plus optionally a kernel modules tree, packed as a reproducible cpio.
//!
//! [`build`] compiles the agent for the guest (glibc, `+crt-static`, its own target dir
//! `target/guest` so host builds are not invalidated by the different rustflags), assembles
//! the archive in memory and stores it content-addressed under
//! `cache/images/<key>/initramfs.cpio`: the key hashes the recipe version and the archive
//! itself, so it covers the agent binary, busybox and the modules tree, and
//! an unchanged rebuild is a no-op `cargo build` plus hashing.

pub mod cpio;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::{host, paths};

/// Images kept in the cache (see [`prune`]).
const KEEP_IMAGES: usize = 8;
const PRUNE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Bump when the layout of the image changes in a way the archive bytes would not show
/// (none today; kept so the key can be invalidated deliberately).
const RECIPE_VERSION: u32 = 1;
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The host's busybox-static, packed as the image's `agent::BUSYBOX`.
const BUSYBOX: &str = "/bin/busybox";

/// What goes into an image beyond the fixed contents.
#[derive(Debug, Clone, Default)]
pub struct ImageRequest {
    /// An `INSTALL_MOD_PATH` tree (holding `lib/modules/<release>/`), copied into the image
    /// root so `modprobe` works in the guest.
    pub modules: Option<PathBuf>,
}

/// A built (or cached) initramfs.
#[derive(Debug, Clone)]
pub struct Image {
    /// `cache/images/<key>/initramfs.cpio`.
    pub path: PathBuf,
    /// Content key (hex); equal keys mean byte-identical images.
    pub key: String,
}

/// Builds the initramfs for `req`, reusing the cached file when its content is unchanged.
pub fn build(req: &ImageRequest) -> Result<Image> {
    host::ensure(host::IMAGE)?;
    let agent = build_agent()?;
    let archive = assemble(&agent, req)?;
    let bytes = archive.to_bytes();
    let key = key_of(&bytes);
    let dir = paths::cache_dir().join("images").join(&key);
    let path = dir.join("initramfs.cpio");
    if !path.exists() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Write aside and rename so a concurrent or interrupted build never leaves a partial
        // image under the final name.
        let mut tmp =
            tempfile::NamedTempFile::new_in(&dir).with_context(|| format!("creating a file in {}", dir.display()))?;
        tmp.write_all(&bytes).context("writing the initramfs")?;
        tmp.persist(&path).with_context(|| format!("storing {}", path.display()))?;
    } else {
        // Reuse counts as use: pruning goes by modification time.
        let touched = std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = touched {
            tracing::debug!("cannot touch {}: {e}", path.display());
        }
    }
    prune(&paths::cache_dir().join("images"), KEEP_IMAGES);
    Ok(Image { path, key })
}

/// The cached image with `key`, if it is still in the cache and still has that content (a
/// replay boots the image its run used).
pub fn cached(key: &str) -> Option<Image> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let path = paths::cache_dir().join("images").join(key).join("initramfs.cpio");
    let bytes = std::fs::read(&path).ok()?;
    (key_of(&bytes) == key).then(|| Image { path, key: key.to_string() })
}

/// Removes images that are neither among the `keep` most recently built or reused nor used in
/// the last [`PRUNE_AFTER`], so iterating on the agent does not fill the disk while a long test
/// run elsewhere still finds the image it started with. Directories without a finished image
/// (a build in progress) stay.
fn prune(images: &Path, keep: usize) {
    let Some(cutoff) = SystemTime::now().checked_sub(PRUNE_AFTER) else { return };
    let Ok(entries) = std::fs::read_dir(images) else { return };
    let mut built: Vec<(SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.path().join("initramfs.cpio").metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    built.sort();
    let excess = built.len().saturating_sub(keep);
    for (_, dir) in built.into_iter().take(excess).filter(|(used, _)| *used < cutoff) {
        // Best effort: a concurrent build may be pruning too. A running QEMU read its initrd
        // at start, so removing the file under it is harmless.
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::debug!("cannot prune {}: {e}", dir.display());
        }
    }
}

fn key_of(archive: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(format!("unplug-torture image recipe {RECIPE_VERSION}\0"));
    h.update(archive);
    hex::encode(&h.finalize()[..8])
}

/// The image contents, given the guest agent binary.
fn assemble(agent: &Path, req: &ImageRequest) -> Result<cpio::Archive> {
    if let Some(modules) = &req.modules {
        if !modules.join("lib/modules").is_dir() {
            bail!("modules tree {} has no lib/modules/ (pass the INSTALL_MOD_PATH directory)", modules.display());
        }
    }
    let mut a = cpio::Archive::new();
    for dir in ["bin", "dev", "etc", "lib", "proc", "root", "run", "sbin", "sys", "usr/bin", "usr/sbin"] {
        a.dir(dir, 0o755)?;
    }
    a.dir("tmp", 0o1777)?;
    // The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.char_dev("dev/null", 0o666, 1, 3)?;

    let busybox = std::fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    if !is_static_elf(&busybox) {
        bail!("{BUSYBOX} is not a static executable; install the busybox-static package (not busybox)");
    }
    a.file(agent::BUSYBOX.trim_start_matches('/'), 0o755, busybox)?;
    // Links only for the applets called by path; the agent runs the others through busybox
    // by name (`agent::BUSYBOX_LINKS` says why), from the list packed here.
    let applets = applet_paths()?;
    for link in agent::BUSYBOX_LINKS {
        if !applets.iter().any(|a| a == link) {
            bail!("{BUSYBOX} --list-full has no {link}: the image needs it");
        }
        a.symlink(link, agent::BUSYBOX)?;
    }
    let mut names: Vec<&str> = applets.iter().filter_map(|a| a.rsplit('/').next()).collect();
    names.sort_unstable();
    names.dedup();
    a.file(agent::BUSYBOX_APPLETS.trim_start_matches('/'), 0o644, format!("{}\n", names.join("\n")).into_bytes())?;

    // The agent is init (PID 1): one exec from `Run /init` to serving (images/agent/src/init.rs).
    a.symlink("init", "/bin/unplug-agent")?;

    let agent_bytes = std::fs::read(agent).with_context(|| format!("reading {}", agent.display()))?;
    if !is_static_elf(&agent_bytes) {
        bail!("{} is not a static executable (was it built with +crt-static?)", agent.display());
    }
    a.file("bin/unplug-agent", 0o755, agent_bytes)?;

    if let Some(modules) = &req.modules {
        a.add_tree(modules, "")?;
    }
    Ok(a)
}

/// The paths of busybox's applets (`usr/bin/[`, `sbin/acpid`, ..., `bin/sh`) as the packed
/// binary itself lists them (`--list-full`), each once, `bin/busybox` left out.
fn applet_paths() -> Result<Vec<String>> {
    let out = std::process::Command::new(BUSYBOX).arg("--list-full").output().with_context(|| format!("running {BUSYBOX} --list-full"))?;
    if !out.status.success() {
        bail!("{BUSYBOX} --list-full failed: {}", out.status);
    }
    let text = String::from_utf8(out.stdout).with_context(|| format!("{BUSYBOX} --list-full printed non-UTF-8"))?;
    let mut paths: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "bin/busybox").map(String::from).collect();
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// True for an ELF executable without a `PT_INTERP` program header (no dynamic loader).
/// Short or odd files are simply "not static".
fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |off: usize| bytes.get(off..off + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |off: usize| bytes.get(off..off + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])));
    let u64_at = |off: usize| bytes.get(off..off + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    // 64-bit little-endian ELF only: that is what we pack for an x86_64 guest.
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else { return false };
    (0..usize::from(phnum)).all(|i| {
        let entry = phoff.saturating_add(i.saturating_mul(usize::from(phentsize)));
        u32_at(entry).is_some_and(|p_type| p_type != PT_INTERP)
    })
}

/// Flags for the guest build, passed 0x1f-separated (`CARGO_ENCODED_RUSTFLAGS`) so paths with
/// spaces survive: static glibc; no debug info (it would triple the image; symbols stay for
/// panic backtraces); and the checkout and cargo home mapped to fixed names, so the binary, and
/// with it the image key, does not depend on where they are.
fn guest_rustflags(root: &Path) -> Vec<String> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut flags = vec![
        "-Ctarget-feature=+crt-static".to_string(),
        "-Cstrip=debuginfo".to_string(),
        format!("--remap-path-prefix={}=/unplug-torture", root.display()),
    ];
    if let Some(home) = cargo_home {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    flags
}

/// Builds `unplug-agent` for the guest and returns the binary's path. Cargo's output goes to
/// `target/guest/build.log`; a spinner shows the crate being compiled.
fn build_agent() -> Result<PathBuf> {
    let root = paths::repo_root();
    let target_dir = root.join("target").join("guest");
    std::fs::create_dir_all(&target_dir).with_context(|| format!("creating {}", target_dir.display()))?;
    let log_path = target_dir.join("build.log");
    let mut log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(["build", "--release", "--package", "agent", "--bin", "unplug-agent", "--target", GUEST_TARGET])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", guest_rustflags(&root).join("\x1f"))
        .env_remove("RUSTFLAGS")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the build log handle")?)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", Path::new(&cargo).display()))?;

    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message("building the guest agent");
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // The log is diagnostic; a failing write must not hide the build result.
            let _ = writeln!(log, "{line}");
            let line = line.trim();
            if line.starts_with("Compiling") || line.starts_with("Blocking") {
                spinner.set_message(format!("building the guest agent: {line}"));
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    spinner.finish_and_clear();
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("building the guest agent failed ({status}); full log: {}\n{}", log_path.display(), tail.join("\n"));
    }
    Ok(target_dir.join(GUEST_TARGET).join("release").join("unplug-agent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_most_recently_used_images() {
        let cache = tempfile::tempdir().unwrap();
        let epoch = SystemTime::UNIX_EPOCH;
        let now = SystemTime::now();
        let used = [("old", epoch), ("newest", now), ("middle", epoch + Duration::from_secs(1)), ("recent", now)];
        for (name, time) in used {
            let dir = cache.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            let f = std::fs::File::create(dir.join("initramfs.cpio")).unwrap();
            f.set_modified(time).unwrap();
        }
        std::fs::create_dir(cache.path().join("in-progress")).unwrap();
        prune(cache.path(), 1);
        let mut left: Vec<String> =
            std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        // Only the newest counts towards `keep`, but "recent" was used today.
        assert_eq!(left, ["in-progress", "newest", "recent"]);
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b""));
        assert!(!is_static_elf(b"\x7fELF\x02\x01"));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // This test binary is dynamically linked (PT_INTERP); busybox-static is not.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        if let Ok(busybox) = std::fs::read(BUSYBOX) {
            assert!(is_static_elf(&busybox));
        }
        // A header claiming program headers beyond the end of the file.
        let mut truncated = me[..64].to_vec();
        truncated[0x38] = 0xff;
        assert!(!is_static_elf(&truncated));
    }

    /// Builds the real image (agent build included) twice: same key, same file, and the
    /// archive holds what `/init` needs. Uses the shared cache: keys are content-derived, so
    /// a test build is exactly what any other caller would reuse.
    #[test]
    fn image_builds_reproducibly() {
        let first = build(&ImageRequest::default()).unwrap();
        let second = build(&ImageRequest::default()).unwrap();
        assert_eq!(first.key, second.key);
        assert_eq!(first.path, second.path);
        let bytes = std::fs::read(&first.path).unwrap();
        assert_eq!(key_of(&bytes), first.key, "cached file matches its key");
        if which::which("cpio").is_err() {
            return;
        }
        let out = Command::new("cpio").args(["-it", "--quiet", "-F"]).arg(&first.path).output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        for name in ["init", "bin/busybox", "bin/sh", "sbin/modprobe", "etc/busybox-applets", "bin/unplug-agent", "dev/console", "dev/null", "tmp"] {
            assert!(listing.lines().any(|l| l == name), "{name} missing:\n{listing}");
        }
        // The other applets are listed, not linked.
        assert!(!listing.lines().any(|l| l == "bin/mount"), "applet links beyond agent::BUSYBOX_LINKS:\n{listing}");
    }

    #[test]
    fn modules_tree_is_checked_and_packed() {
        if !Path::new(BUSYBOX).exists() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let req = ImageRequest { modules: Some(dir.path().to_path_buf()) };
        // busybox stands in for the agent: any static executable will do here.
        let err = assemble(Path::new(BUSYBOX), &req).unwrap_err();
        assert!(err.to_string().contains("no lib/modules/"), "{err:#}");
        std::fs::create_dir_all(dir.path().join("lib/modules/6.12.117")).unwrap();
        std::fs::write(dir.path().join("lib/modules/6.12.117/modules.dep"), "").unwrap();
        let bytes = assemble(Path::new(BUSYBOX), &req).unwrap().to_bytes();
        let name = b"lib/modules/6.12.117/modules.dep\0";
        assert!(bytes.windows(name.len()).any(|w| w == name));
    }
}
