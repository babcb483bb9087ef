//! `cargo xtask test`: the whole suite. Builds (or reuses) the kernels and images first, with
//! progress, so the end-to-end tests that boot VMs find them, then runs nextest: everything
//! against the first kernel, and the VM tests of `harness` (which assert what the kernel under
//! test is expected to do, `testenv::kernel`) again against the second.

use std::process::ExitCode;

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

use crate::artifacts::{self, KernelChoice};
use crate::torture::KernelList;

#[derive(clap::Args)]
pub struct Args {
    /// nextest profile (`ci` also writes target/nextest/ci/junit.xml, per kernel pass).
    #[arg(long, default_value = "default")]
    profile: String,
    /// The kernel(s) the end-to-end tests boot, comma-separated (`both` = vanilla,resmgr).
    /// With `--bzimage`, `--src` or `--series`, say which one that kernel is (its expectations
    /// are asserted).
    #[arg(long, default_value = "both")]
    kernel: KernelList,
    #[command(flatten)]
    choice: KernelChoice,
    /// Extra arguments for `cargo nextest run` (e.g. a filter).
    #[arg(last = true)]
    nextest_args: Vec<String>,
}

/// The harness's VM tests: the ones that boot the kernel under test (`testenv`).
const VM_TESTS: &str = "package(harness) & binary(/^e2e_/)";

pub fn run(args: Args) -> Result<ExitCode> {
    let own_kernel = args.choice.bzimage.is_some() || args.choice.src.is_some() || args.choice.series.is_some();
    let variants = &args.kernel.0;
    if own_kernel && variants.len() > 1 {
        bail!("--bzimage, --src and --series name one kernel: say which it is with --kernel vanilla or --kernel resmgr");
    }
    // The resmgr kernel is built whatever `--kernel` says: `e2e_kunit` and the resmgr scenario
    // tests run `xtask` on it, and building it here shows progress instead of eating into
    // their timeouts (they fail by themselves without the series).
    let resmgr = harness::paths::repo_root().join("kernels/patches/resmgr/series");
    let mut passes = Vec::new();
    for &variant in variants.iter() {
        let choice = if own_kernel {
            args.choice.clone()
        } else {
            KernelChoice { series: variant.series().map(String::from), debian: variant.debian(), ..args.choice.clone() }
        };
        passes.push((variant, artifacts::kernel_and_image(&choice)?));
    }
    if resmgr.is_file() && !own_kernel && !variants.contains(&harness::drive::scenario::KernelVariant::Resmgr) {
        artifacts::kernel_and_image(&KernelChoice { series: Some("resmgr".into()), ..args.choice.clone() })?;
    }
    // xtask/tests/e2e_results_pages.rs loads the results pages in it.
    harness::host::ensure(harness::host::BROWSER)?;
    ensure_kcidb_io()?;
    let sh = Shell::new()?;
    sh.change_dir(harness::paths::repo_root());
    let profile = &args.profile;
    let extra = &args.nextest_args;
    let mut failed = Vec::new();
    for (i, (variant, (kernel, image))) in passes.iter().enumerate() {
        // Everything once; on the other kernels only what boots the kernel under test.
        let filter: Vec<&str> = if i == 0 { Vec::new() } else { vec!["-E", VM_TESTS] };
        eprintln!("test: kernel {variant} ({})", kernel.label);
        let status = cmd!(sh, "cargo nextest run --workspace --profile {profile} {filter...} {extra...}")
            .env(testenv::ENV_BZIMAGE, &kernel.bzimage)
            .env(testenv::ENV_INITRD, image)
            .env(testenv::ENV_KERNEL, variant.name())
            .quiet()
            .run();
        // nextest has already printed which tests failed; say on which kernel.
        if status.is_err() {
            failed.push(variant.name());
        }
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("test: failures on {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

/// KernelCI's `kcidb-io` (PyPI), which the tests validate KCIDB exports with: installed with
/// pip when `python3` cannot import it. Debian's own python3 refuses a system-wide pip install
/// (PEP 668) unless told to; the package is only a schema validator.
fn ensure_kcidb_io() -> Result<()> {
    let sh = Shell::new()?;
    let code = "import kcidb_io";
    let importable = |sh: &Shell| cmd!(sh, "python3 -c {code}").quiet().ignore_stderr().run().is_ok();
    if importable(&sh) {
        return Ok(());
    }
    eprintln!("test: installing kcidb-io (pip) to validate KCIDB exports");
    if cmd!(sh, "python3 -m pip install --quiet kcidb-io").run().is_err() {
        cmd!(sh, "python3 -m pip install --quiet --break-system-packages kcidb-io").run()?;
    }
    if !importable(&sh) {
        bail!("python3 still cannot import kcidb_io after `pip install kcidb-io` (is python3-pip installed?)");
    }
    Ok(())
}
