//! `cargo xtask results merge --out DIR SHARD_DIR...`: one summary of many results folders
//! (the shards of a CI matrix, each `torture --shard K/N --results SHARD_DIR`), with the
//! reproduction rates and A/B tables a single run of the whole matrix gives (`harness::judge::tally`).
//!
//! A run folder without an ended `summary.json` (killed), a cell of a shard's matrix record
//! without a run folder, and a shard missing altogether are errors, never dropped. Exit 0
//! when every run met its expectation, 1 when some run did not or showed a crash title its
//! scenario's expectation does not list, 2 on errors (the gate cannot judge).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Combine results folders (shards) into one summary: DIR/summary.{md,json}.
    Merge(MergeArgs),
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Where the merged summary.md and summary.json go (created).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Also append the Markdown summary to FILE (e.g. "$GITHUB_STEP_SUMMARY").
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// The results folders to merge (each holds run folders and a matrix-*.json).
    #[arg(required = true, value_name = "SHARD_DIR")]
    dirs: Vec<PathBuf>,
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Merge(args) => merge(args),
    }
}

fn merge(args: MergeArgs) -> Result<ExitCode> {
    let tally = harness::judge::tally::merge(&args.dirs);
    tally.write(&args.out)?;
    let md = tally.markdown();
    if let Some(file) = &args.markdown {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .with_context(|| format!("opening {}", file.display()))?;
        f.write_all(md.as_bytes()).with_context(|| format!("appending to {}", file.display()))?;
    }
    print!("{md}");
    for e in &tally.errors {
        eprintln!("error: {e}");
    }
    eprintln!("results merge: {}; written to {}", tally.headline(), args.out.display());
    Ok(ExitCode::from(tally.exit_code()))
}
