//! `cargo xtask image` (TODO(owner)).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("`image` is not built yet")
}
