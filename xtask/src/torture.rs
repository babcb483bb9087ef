//! `cargo xtask torture`: the main job. For each kernel variant and each matching scenario:
//! plan a seeded schedule, boot a fresh VM, run the schedule, and file everything into
//! `results/<run-id>/` as it happens.
//!
//! Exit status: 0 when every run completed with no crash report, 1 when some run produced
//! findings (crash reports, stuck unplugs, a lost guest), 2 when the harness itself failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use harness::scenario::{self, Scenario};
use harness::schedule::{self, Schedule};
use harness::vm::Accel;

use crate::artifacts::{self, KernelChoice};
use harness::torture::{run_recorded, RunOptions, RunRequest, RunVerdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelVariant {
    /// Debian's 6.12 source as it is.
    Vanilla,
    /// The same source with our resmgr patch series (kernels/patches/resmgr).
    Resmgr,
    /// Both, one after the other, for an A/B comparison.
    Both,
}

#[derive(clap::Args)]
pub struct Args {
    /// Scenarios to run: a glob over the names in scenarios/ (without .yaml).
    #[arg(long, default_value = "*")]
    scenario: String,
    /// Which kernel(s) to run against.
    #[arg(long, value_enum, default_value = "vanilla")]
    kernel: KernelVariant,
    /// Seed for the schedules (delays, unplug methods); printed so a run can be repeated.
    #[arg(long)]
    seed: Option<u64>,
    /// Run every scenario's steps this many times instead of its own `iterations`.
    #[arg(long)]
    iterations: Option<u32>,
    /// Kernel tree to build instead of Debian's 6.12 source (never written to).
    #[arg(long, value_name = "DIR")]
    src: Option<PathBuf>,
    /// Torture this prebuilt bzImage instead of building a kernel (vanilla only).
    #[arg(long, value_name = "PATH", conflicts_with = "src")]
    bzimage: Option<PathBuf>,
    /// Accelerator: kvm, tcg, or auto.
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Seconds QEMU gets to report DEVICE_DELETED before an unplug counts as stuck.
    #[arg(long, default_value_t = 10)]
    unplug_timeout: u64,
    /// Where run folders go.
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let dir = harness::paths::repo_root().join("scenarios");
    let paths = scenario::find(&dir, &args.scenario)?;
    if paths.is_empty() {
        let all: Vec<String> = scenario::find(&dir, "*")?
            .iter()
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        bail!("no scenario matches {:?}; available: {}", args.scenario, all.join(", "));
    }
    // Parse everything before building or booting anything: a typo should cost seconds.
    let mut scenarios: Vec<Scenario> = paths.iter().map(|p| Scenario::load(p)).collect::<Result<_, _>>()?;
    if let Some(n) = args.iterations {
        for s in &mut scenarios {
            s.iterations = n;
        }
    }
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let variants: &[Option<&str>] = match args.kernel {
        KernelVariant::Vanilla => &[None],
        KernelVariant::Resmgr => &[Some("resmgr")],
        KernelVariant::Both => &[None, Some("resmgr")],
    };
    let results_root = args.results.clone().unwrap_or_else(harness::paths::results_dir);
    eprintln!("torture: {} scenario(s), seed {seed}", scenarios.len());

    let mut verdicts = Vec::new();
    for series in variants {
        if args.bzimage.is_some() && series.is_some() {
            bail!("--bzimage runs one prebuilt kernel; it cannot be combined with --kernel resmgr or both");
        }
        let choice = KernelChoice {
            bzimage: args.bzimage.clone(),
            src: args.src.clone(),
            series: series.map(str::to_string),
        };
        let (kernel, image) = artifacts::kernel_and_image_keyed(&choice)?;
        for scenario in &scenarios {
            let schedule: Schedule = schedule::plan(scenario, seed);
            let request = RunRequest {
                kernel: kernel.meta(),
                initrd: image.path.clone(),
                image_key: Some(image.key.clone()),
                schedule,
                accel: args.accel,
                options: RunOptions { unplug_timeout: Duration::from_secs(args.unplug_timeout), ..Default::default() },
                results_root: results_root.clone(),
                reproducer: reproducer(&args, scenario, series, seed),
            };
            let verdict = crate::runtime()?.block_on(run_recorded(request)).context("torture run failed")?;
            let interrupted = verdict.interrupted;
            verdicts.push(verdict);
            if interrupted || verdicts.last().is_some_and(|v| v.write_error.is_some()) {
                break;
            }
        }
    }
    print_summary(&verdicts);
    if report_write_errors(&verdicts) {
        return Ok(ExitCode::from(2));
    }
    Ok(if verdicts.iter().all(|v| v.findings.is_empty()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints every run's results write failure last, where it is seen; true if there was one
/// (the harness failed: exit 2, whatever the findings).
pub fn report_write_errors(verdicts: &[RunVerdict]) -> bool {
    let mut any = false;
    for v in verdicts {
        if let Some(e) = &v.write_error {
            eprintln!("error: results of {} are incomplete: {e}", v.scenario);
            any = true;
        }
    }
    any
}

fn fresh_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_secs() ^ (now.subsec_nanos() as u64) << 20 ^ std::process::id() as u64
}

/// The command line that reruns exactly this scenario with this seed.
fn reproducer(args: &Args, scenario: &Scenario, series: &Option<&str>, seed: u64) -> String {
    let mut cmd = format!(
        "cargo xtask torture --scenario {} --kernel {} --seed {seed}",
        scenario.name,
        if series.is_some() { "resmgr" } else { "vanilla" }
    );
    if let Some(n) = args.iterations {
        cmd.push_str(&format!(" --iterations {n}"));
    }
    if let Some(src) = &args.src {
        cmd.push_str(&format!(" --src {}", src.display()));
    }
    if let Some(bz) = &args.bzimage {
        cmd.push_str(&format!(" --bzimage {}", bz.display()));
    }
    cmd
}

/// Findings in first-seen order with repeats counted (a KASAN report often repeats per byte).
fn group(findings: &[String]) -> Vec<(&str, usize)> {
    let mut out: Vec<(&str, usize)> = Vec::new();
    for f in findings {
        match out.iter_mut().find(|(seen, _)| seen == f) {
            Some((_, n)) => *n += 1,
            None => out.push((f, 1)),
        }
    }
    out
}

fn print_summary(verdicts: &[RunVerdict]) {
    println!();
    for v in verdicts {
        let state = if v.findings.is_empty() { "clean".to_string() } else { format!("{} finding(s)", group(&v.findings).len()) };
        println!("{:<40} {:<16} {}", v.scenario, state, v.dir.display());
        for (finding, count) in group(&v.findings) {
            let times = if count > 1 { format!(" (x{count})") } else { String::new() };
            println!("    {finding}{times}");
        }
    }
}
