//! `cargo xtask`: the unplug-torture command line (rust-analyzer-style xtask).
//!
//! Each subcommand lives in its own module with its own `Args`; this file only dispatches.

mod artifacts;
mod bench;
mod boot;
mod image;
mod kernel;
mod kunit;
mod replay;
mod report;
mod results;
mod series;
mod terminal;
mod test;
mod torture;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "QEMU-driven hot-unplug torture suite for Linux resource-lifetime bugs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build (or reuse from the cache) a kernel.
    Kernel(kernel::Args),
    /// Build (or reuse from the cache) the initramfs with the guest agent.
    Image(image::Args),
    /// Boot the VM, plug devices, run a command in the guest (or open a shell).
    Boot(boot::Args),
    /// The main job: run scenarios against kernels under seeded unplug schedules.
    Torture(torture::Args),
    /// Run a recorded schedule (results/RUN/schedule.json) again.
    Replay(replay::Args),
    /// Measure the pipeline: builds, boot, plug/unplug rates.
    Bench(bench::Args),
    /// Run the whole test suite (unit and end-to-end) with nextest.
    Test(test::Args),
    /// Run the kernel's KUnit suites (its test modules and built-in suites) in a VM.
    Kunit(kunit::Args),
    /// Parse console logs and show results.
    #[command(subcommand)]
    Report(report::Command),
    /// Work on results folders: merge shards into one summary.
    #[command(subcommand)]
    Results(results::Command),
    /// Check patch series: each patch applies in order, checkpatch is clean.
    #[command(subcommand)]
    Series(series::Command),
}

/// The async runtime for commands that drive VMs. Multi-threaded so a slow console or
/// emulator task never starves QMP and the agent. QEMU is checked for (and installed with
/// apt-get when missing) here, before the runtime exists: never on one of its two workers.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    harness::host::ensure(harness::host::QEMU)?;
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNPLUG_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Kernel(args) => kernel::run(args),
        Command::Image(args) => image::run(args),
        Command::Boot(args) => boot::run(args),
        Command::Report(cmd) => report::run(cmd),
        Command::Results(cmd) => results::run(cmd),
        Command::Test(args) => test::run(args),
        Command::Torture(args) => torture::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Series(cmd) => series::run(cmd),
        Command::Kunit(args) => kunit::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            // 1 means "findings" for torture and replay; a harness failure is distinct.
            std::process::ExitCode::from(2)
        }
    }
}
