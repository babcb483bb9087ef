//! `cargo xtask kernel` (TODO(owner)).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("`kernel` is not built yet")
}
