//! `cargo xtask series check [NAME]... [--src DIR]`: does every patch of a series apply, in
//! order, on the pristine source, and is checkpatch (`--strict`) happy with it? One table per
//! series (`harness::build::kernel::check`). Exit 0 when every patch applies with no checkpatch error
//! or warning, 1 otherwise, 2 when the check itself could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use harness::build::kernel::check;

#[derive(clap::Subcommand)]
pub enum Command {
    /// `git apply` each patch in order on a scratch copy of the files the series touches, and
    /// run `scripts/checkpatch.pl --strict --terse` on it.
    Check(CheckArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Series in kernels/patches/ to check (default: every one).
    names: Vec<String>,
    /// Check against this kernel tree instead of Debian's 6.12 source (only read).
    #[arg(long, value_name = "DIR")]
    src: Option<PathBuf>,
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    let Command::Check(args) = cmd;
    let patches = harness::paths::repo_root().join("kernels").join("patches");
    let names = if args.names.is_empty() { check::series_names(&patches)? } else { args.names };
    if names.is_empty() {
        println!("no patch series in {} (a series is a folder with a `series` file)", patches.display());
        return Ok(ExitCode::SUCCESS);
    }
    let base = check::base_tree(args.src.as_deref())?;
    let mut ok = true;
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let result = check::check_series(&base, &patches, name)?;
        if result.patches.is_empty() {
            bail!("series {name}: its `series` file lists no patches");
        }
        print!("{}", result.render());
        ok &= result.ok();
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
