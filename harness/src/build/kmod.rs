//! Out-of-tree test modules (`kernels/modules/NAME`, e.g. `nvmem-holder`), built by
//! `kernel::build` right after the kernel's own modules, against the same object tree and
//! configuration, and installed into the build's `INSTALL_MOD_PATH` tree as
//! `lib/modules/<release>/extra/NAME.ko` (so the image carries them and `modprobe` works).
//!
//! Building them inside the kernel build matters: the object tree is shared per source tree,
//! so building later could pick up another configuration's objects. The repository copy is
//! never written to: kbuild puts its objects next to the sources, so each module is copied
//! into `work` first.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Every module file (`NAME.ko`) under `tree` (an `INSTALL_MOD_PATH` tree or any directory),
/// as (NAME, path), in no particular order. Symlinks are not followed (`build` and `source`
/// point into trees); compressed modules (`.ko.xz`, ...) are not listed.
pub fn installed(tree: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                if let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                    found.push((name.to_string(), path));
                }
            }
        }
    }
    Ok(found)
}

/// The name the kernel prints a module under in stack frames (`[nvmem_holder]` for
/// `nvmem-holder.ko`): its file name with dashes as underscores.
pub fn printed_name(file_name: &str) -> String {
    file_name.replace('-', "_")
}

/// The module directories under `kernels/modules`, by name, sorted.
pub fn module_dirs(kernels_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = kernels_dir.join("modules");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.join("Kbuild").exists()).collect();
    dirs.sort();
    Ok(dirs)
}

/// The bytes of every file of the modules, for the kernel cache key.
pub fn sources_fingerprint(dirs: &[PathBuf]) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        for f in files {
            all.extend_from_slice(f.to_string_lossy().rsplit('/').take(2).collect::<Vec<_>>().join("/").as_bytes());
            all.extend_from_slice(&std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
        }
    }
    Ok(all)
}

/// Builds the module in `source` against `objects` (`make M=`) and installs it into the
/// modules tree `tree` for `release`, then refreshes depmod.
pub fn build_into(objects: &Path, source: &Path, work: &Path, tree: &Path, release: &str) -> Result<()> {
    let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let copy = work.join(&name);
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    run(Command::new("cp").arg("-a").arg(source).arg(&copy))?;
    run(Command::new("make").arg("-C").arg(objects).arg(format!("M={}", copy.display())).args(crate::build::kernel::compiler_vars()).arg("modules"))
        .with_context(|| format!("building kernels/modules/{name}"))?;
    let extra = tree.join("lib/modules").join(release).join("extra");
    std::fs::create_dir_all(&extra)?;
    let ko = format!("{name}.ko");
    std::fs::copy(copy.join(&ko), extra.join(&ko)).with_context(|| format!("installing {ko}"))?;
    run(Command::new("depmod").arg("-b").arg(tree).arg(release))?;
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
