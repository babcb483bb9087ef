//! `cargo xtask replay results/RUN`: run a recorded schedule again, step for step, against
//! the kernel the run used, into a new run folder.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use harness::results::Meta;
use harness::schedule::Schedule;
use harness::torture::{run_recorded, RunOptions, RunRequest};
use harness::vm::Accel;

#[derive(clap::Args)]
pub struct Args {
    /// The run folder to replay (holds meta.json and schedule.json).
    run: PathBuf,
    /// Accelerator: kvm, tcg, or auto.
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Seconds QEMU gets to report DEVICE_DELETED before an unplug counts as stuck.
    #[arg(long, default_value_t = 10)]
    unplug_timeout: u64,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid run record", path.display()))
}

pub fn run(args: Args) -> Result<ExitCode> {
    let meta: Meta = read_json(&args.run.join("meta.json"))?;
    let schedule: Schedule = read_json(&args.run.join("schedule.json"))?;
    let kernel = meta.kernel.clone();
    if !kernel.bzimage.is_file() {
        bail!(
            "the kernel this run used ({}) is gone; rebuild it with: {}",
            kernel.bzimage.display(),
            meta.reproducer
        );
    }
    let image = harness::image::build(&harness::image::ImageRequest { modules: kernel.modules.clone() })?;
    let request = RunRequest {
        kernel,
        initrd: image.path,
        schedule,
        accel: args.accel,
        options: RunOptions { unplug_timeout: Duration::from_secs(args.unplug_timeout), ..Default::default() },
        results_root: args.run.parent().map(PathBuf::from).unwrap_or_else(harness::paths::results_dir),
        reproducer: format!("cargo xtask replay {}", args.run.display()),
    };
    let verdict = crate::runtime()?.block_on(run_recorded(request))?;
    println!("replay of {} → {}", meta.run_id, verdict.dir.display());
    for f in &verdict.findings {
        println!("    {f}");
    }
    Ok(if verdict.findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
