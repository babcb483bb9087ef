//! `cargo xtask test`: the whole suite. Builds (or reuses) the kernel and image first, with
//! progress, so the end-to-end tests that boot VMs find them, then runs nextest.

use std::process::ExitCode;

use anyhow::Result;
use xshell::{cmd, Shell};

use crate::artifacts::{self, KernelChoice};

#[derive(clap::Args)]
pub struct Args {
    /// nextest profile (`ci` also writes target/nextest/ci/junit.xml).
    #[arg(long, default_value = "default")]
    profile: String,
    #[command(flatten)]
    kernel: KernelChoice,
    /// Extra arguments for `cargo nextest run` (e.g. a filter).
    #[arg(last = true)]
    nextest_args: Vec<String>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (kernel, image) = artifacts::kernel_and_image(&args.kernel)?;
    // `e2e_kunit` runs `xtask kunit --series resmgr`: build that kernel and image here, with
    // progress, rather than inside the test's timeout (it fails by itself without the series).
    let resmgr = harness::paths::repo_root().join("kernels/patches/resmgr/series");
    if resmgr.is_file() && args.kernel.series.is_none() && args.kernel.bzimage.is_none() {
        let choice = KernelChoice { series: Some("resmgr".into()), ..args.kernel.clone() };
        artifacts::kernel_and_image(&choice)?;
    }
    let sh = Shell::new()?;
    sh.change_dir(harness::paths::repo_root());
    let profile = &args.profile;
    let extra = &args.nextest_args;
    let status = cmd!(sh, "cargo nextest run --workspace --profile {profile} {extra...}")
        .env(artifacts::ENV_BZIMAGE, &kernel.bzimage)
        .env(artifacts::ENV_INITRD, &image)
        .quiet()
        .run();
    // nextest has already printed which tests failed; just pass its verdict on.
    Ok(if status.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
