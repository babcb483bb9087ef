//! `cargo xtask image [--modules DIR | --kernel VARIANT]`: build (or reuse from the cache) the
//! initramfs and print where it is.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use harness::build::image::{self, ImageRequest};

#[derive(clap::Args)]
pub struct Args {
    /// Kernel modules to include: an INSTALL_MOD_PATH directory holding lib/modules/<release>/.
    #[arg(long, value_name = "DIR", conflicts_with = "kernel")]
    modules: Option<PathBuf>,
    /// The image for this kernel variant's build (built or reused first), with its modules.
    #[arg(long, value_name = "VARIANT", value_parser = harness::drive::scenario::KernelVariant::from_name)]
    kernel: Option<harness::drive::scenario::KernelVariant>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let modules = match args.kernel {
        Some(variant) => crate::artifacts::kernel(&crate::artifacts::KernelChoice::of_variant(variant))?.modules,
        None => args.modules,
    };
    let image = image::build(&ImageRequest { modules })?;
    let size = std::fs::metadata(&image.path).with_context(|| format!("stat {}", image.path.display()))?.len();
    println!("{}", image.path.display());
    eprintln!("initramfs {} ({:.1} MiB)", image.key, size as f64 / (1024.0 * 1024.0));
    Ok(ExitCode::SUCCESS)
}
