//! `cargo xtask report` (TODO(owner)).

#[derive(clap::Subcommand)]
pub enum Command {}

pub fn run(cmd: Command) -> anyhow::Result<std::process::ExitCode> {
    match cmd {}
}
