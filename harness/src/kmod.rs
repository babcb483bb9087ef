//! Out-of-tree test modules (`kernels/modules/NAME`, e.g. `nvmem-holder`) built against a
//! kernel's object tree and merged into an `INSTALL_MOD_PATH`-style tree the image can take
//! (`harness::image::ImageRequest { modules }`).
//!
//! The repository copy is never written to: kbuild puts its objects next to the sources, so
//! the module is copied to `out` first. The kernel's object tree (`O=`) must hold the build of
//! `kernel` (it is shared per source tree); a different release there is refused, since the
//! module would not load.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::kernel::Kernel;

/// Builds `kernels/modules/<name>` against `objects` and returns a modules tree in `out`:
/// the kernel's own modules plus `lib/modules/<release>/extra/<name>.ko`, with depmod run.
pub fn build(kernel: &Kernel, objects: &Path, name: &str, out: &Path) -> Result<PathBuf> {
    let built_release = std::fs::read_to_string(objects.join("include/config/kernel.release"))
        .with_context(|| format!("{} is not a built kernel object tree", objects.display()))?;
    if built_release.trim() != kernel.release {
        bail!("{} holds a {} build, not {}", objects.display(), built_release.trim(), kernel.release);
    }
    let source = crate::paths::repo_root().join("kernels/modules").join(name);
    let work = out.join("src").join(name);
    let tree = out.join("tree");
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out.join("src")).with_context(|| format!("creating {}", out.display()))?;
    run(Command::new("cp").arg("-a").arg(&source).arg(&work))?;
    run(Command::new("make").arg("-C").arg(objects).arg(format!("M={}", work.display())).arg("LLVM=1").arg("modules"))?;
    match &kernel.modules {
        Some(modules) => run(Command::new("cp").arg("-a").arg(modules).arg(&tree))?,
        None => std::fs::create_dir_all(&tree)?,
    }
    let extra = tree.join("lib/modules").join(&kernel.release).join("extra");
    std::fs::create_dir_all(&extra)?;
    // The kernel's tree in the cache is read-only; our copy must take the new module.
    run(Command::new("chmod").arg("-R").arg("u+w").arg(&tree))?;
    let ko = format!("{name}.ko");
    std::fs::copy(work.join(&ko), extra.join(&ko)).with_context(|| format!("installing {ko}"))?;
    run(Command::new("depmod").arg("-b").arg(&tree).arg(&kernel.release))?;
    Ok(tree)
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
