//! `cargo xtask kernel [--kernel VARIANT | --src DIR] [--series NAME] [--force]`: build (or
//! reuse) a kernel and say where its artifacts are, and what its version cannot have;
//! `--print-key` only prints its cache key (for CI caches).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use harness::build::kernel::{self, KernelRequest};

#[derive(clap::Args)]
pub struct Args {
    /// Kernel tree to build instead of Debian's 6.12 (never written to: objects go to the
    /// cache with O=; the tree must be `make mrproper` clean).
    #[arg(long, value_name = "DIR")]
    src: Option<PathBuf>,
    /// Apply the series in kernels/patches/NAME/ on a private copy of the source first.
    #[arg(long, value_name = "NAME")]
    series: Option<String>,
    /// Kernel variant: vanilla (Debian 6.12), resmgr (6.12 + kernels/patches/resmgr) or
    /// vanilla-6.1 (Debian's 6.1 LTS, without Rust and gpio-virtuser).
    #[arg(long, value_name = "VARIANT", value_parser = harness::drive::scenario::KernelVariant::from_name, conflicts_with_all = ["src", "series"])]
    kernel: Option<harness::drive::scenario::KernelVariant>,
    /// Run make even when the cache has this exact build (incremental in the object tree).
    #[arg(long)]
    force: bool,
    /// Print only the build's cache key (`cache/kernels/<key>/`) and build nothing: what CI
    /// caches the build under. Installs the toolchain if missing (its versions are in the key).
    #[arg(long)]
    print_key: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (series, debian) = match args.kernel {
        Some(variant) => (variant.series().map(String::from), variant.debian()),
        None => (args.series, Default::default()),
    };
    let request = KernelRequest { src: args.src, series, debian, force: args.force };
    if args.print_key {
        println!("{}", kernel::key(&request)?);
        return Ok(ExitCode::SUCCESS);
    }
    let start = Instant::now();
    let k = kernel::build(&request)?;
    let how = if k.cached {
        format!(
            "from the cache in {:.2} s; make took {:.0} s when it was built",
            start.elapsed().as_secs_f64(),
            k.build_seconds
        )
    } else {
        format!("built: make took {:.0} s, {}", k.build_seconds, if k.cold { "cold" } else { "incremental" })
    };
    eprintln!("kernel {} ({how})", k.describe());
    println!("bzImage  {}", k.bzimage.display());
    println!("vmlinux  {}", k.vmlinux.display());
    println!("config   {}", k.config.display());
    println!("log      {}", k.build_log.display());
    if let Some(m) = &k.modules {
        println!("modules  {}", m.display());
    }
    println!("source   {} ({})", k.source_tree.display(), k.source_id);
    for a in &k.absent {
        println!("absent   {}: {} ({})", a.option, a.reason, a.written_at);
    }
    Ok(ExitCode::SUCCESS)
}
