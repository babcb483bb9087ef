//! `cargo xtask image`: build (or reuse from the cache) the initramfs and print where it is.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use harness::image::{self, ImageRequest};

#[derive(clap::Args)]
pub struct Args {
    /// Kernel modules to include: an INSTALL_MOD_PATH directory holding lib/modules/<release>/.
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let image = image::build(&ImageRequest { modules: args.modules })?;
    let size = std::fs::metadata(&image.path).with_context(|| format!("stat {}", image.path.display()))?.len();
    println!("{}", image.path.display());
    eprintln!("initramfs {} ({:.1} MiB)", image.key, size as f64 / (1024.0 * 1024.0));
    Ok(ExitCode::SUCCESS)
}
