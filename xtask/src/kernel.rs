//! `cargo xtask kernel [--src DIR] [--series NAME]`: build (or reuse) a kernel and say where
//! it is.

use std::path::PathBuf;
use std::process::ExitCode;

use harness::kernel::{self, KernelRequest};

#[derive(clap::Args)]
pub struct Args {
    /// Kernel tree to build (never written to: the build goes to the cache with O=).
    #[arg(long, value_name = "DIR")]
    src: Option<PathBuf>,
    /// Apply kernels/patches/NAME/series on a private copy of the source first.
    #[arg(long, value_name = "NAME")]
    series: Option<String>,
    /// Rebuild even when the cache has this exact build.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let start = std::time::Instant::now();
    let k = kernel::build(&KernelRequest { src: args.src, series: args.series, force: args.force })?;
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!("kernel {} ({:.1} s{})", k.describe(), elapsed, if elapsed < k.build_seconds { ", cached" } else { "" });
    println!("bzImage  {}", k.bzimage.display());
    println!("vmlinux  {}", k.vmlinux.display());
    println!("config   {}", k.config.display());
    println!("log      {}", k.build_log.display());
    if let Some(m) = &k.modules {
        println!("modules  {}", m.display());
    }
    Ok(ExitCode::SUCCESS)
}
