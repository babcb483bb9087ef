//! `cargo xtask torture`: the main job. For each kernel variant and each matching scenario:
//! plan a seeded schedule, boot a fresh VM, run the schedule, and file everything into
//! `results/<run-id>/` as it happens. A scenario whose `kernels:` leaves the variant out is
//! recorded as skipped (a run folder with `meta.json` and `summary.md` saying why) and shown
//! as such in the summary; a variant no selected scenario applies to is not even built.
//!
//! Exit status: 0 when every run completed with no crash report, 1 when some run produced
//! findings (crash reports, stuck unplugs, a lost guest), 2 when the harness itself failed.
//! Skips are neither: alone they exit 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use harness::scenario::{self, KernelVariant as Variant, Scenario};
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
    let variants = args.kernel.variants();
    if args.bzimage.is_some() && variants != [Variant::Vanilla] {
        bail!("--bzimage runs one prebuilt kernel; it cannot be combined with --kernel resmgr or both");
    }
    let results_root = args.results.clone().unwrap_or_else(harness::paths::results_dir);
    eprintln!("torture: {} scenario(s), seed {seed}", scenarios.len());

    let mut runs: Vec<Run> = Vec::new();
    let mut stop = false;
    for &variant in variants {
        if stop {
            break;
        }
        // Built on the first scenario that applies: a variant nothing applies to costs nothing.
        let mut built = None;
        for scenario in &scenarios {
            if let Some(reason) = scenario.skip_reason(variant) {
                let reproducer = scenario.kernels.first().map_or_else(String::new, |&k| reproducer(&args, scenario, k, seed));
                let dir = harness::results::record_skip(&results_root, &scenario.name, variant.name(), &reason, &reproducer)
                    .map_err(|e| format!("recording the skip of {} on {variant}: {e:#}", scenario.name));
                runs.push(Run { scenario: scenario.name.clone(), kernel: variant, outcome: Outcome::Skipped { reason, dir } });
                continue;
            }
            let (kernel, image) = match &built {
                Some(b) => b,
                None => {
                    let choice = KernelChoice {
                        bzimage: args.bzimage.clone(),
                        src: args.src.clone(),
                        series: variant.series().map(str::to_string),
                    };
                    built.insert(artifacts::kernel_and_image_keyed(&choice)?)
                }
            };
            let schedule: Schedule = schedule::plan(scenario, seed);
            let request = RunRequest {
                kernel: kernel.meta(),
                initrd: image.path.clone(),
                image_key: Some(image.key.clone()),
                schedule,
                accel: args.accel,
                options: RunOptions { unplug_timeout: Duration::from_secs(args.unplug_timeout), ..Default::default() },
                results_root: results_root.clone(),
                reproducer: reproducer(&args, scenario, variant, seed),
            };
            let verdict = crate::runtime()?.block_on(run_recorded(request)).context("torture run failed")?;
            stop = verdict.interrupted || verdict.write_error.is_some();
            runs.push(Run { scenario: scenario.name.clone(), kernel: variant, outcome: Outcome::Ran(verdict) });
            if stop {
                break;
            }
        }
    }
    print_summary(&runs);
    let verdicts: Vec<RunVerdict> = runs
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Ran(v) => Some(v.clone()),
            Outcome::Skipped { .. } => None,
        })
        .collect();
    let skip_write_failed = runs.iter().any(|r| match &r.outcome {
        Outcome::Skipped { dir: Err(e), .. } => {
            eprintln!("error: {e}");
            true
        }
        _ => false,
    });
    if report_write_errors(&verdicts) || skip_write_failed {
        return Ok(ExitCode::from(2));
    }
    Ok(if verdicts.iter().all(|v| v.findings.is_empty()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One scenario on one kernel variant.
struct Run {
    scenario: String,
    kernel: Variant,
    outcome: Outcome,
}

enum Outcome {
    Ran(RunVerdict),
    /// Not booted: the scenario does not apply to this variant. `dir` is the run folder that
    /// records the skip, or why it could not be written.
    Skipped { reason: String, dir: Result<PathBuf, String> },
}

impl KernelVariant {
    /// The variants to run, in order.
    fn variants(self) -> &'static [Variant] {
        match self {
            KernelVariant::Vanilla => &[Variant::Vanilla],
            KernelVariant::Resmgr => &[Variant::Resmgr],
            KernelVariant::Both => &Variant::ALL,
        }
    }
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

/// The command line that reruns exactly this scenario on `kernel` with this seed.
fn reproducer(args: &Args, scenario: &Scenario, kernel: Variant, seed: u64) -> String {
    let mut cmd = format!("cargo xtask torture --scenario {} --kernel {kernel} --seed {seed}", scenario.name);
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

fn print_summary(runs: &[Run]) {
    print!("{}", summary_text(runs));
}

/// One line per run (`NAME on KERNEL: clean|N finding(s)|skipped (why)` and its folder), each
/// finding below its run, then the tally.
fn summary_text(runs: &[Run]) -> String {
    let mut out = String::from("\n");
    let (mut clean, mut findings, mut skipped) = (0, 0, 0);
    for run in runs {
        let name = format!("{} on {}:", run.scenario, run.kernel);
        match &run.outcome {
            Outcome::Ran(v) => {
                let state = if v.findings.is_empty() {
                    clean += 1;
                    "clean".to_string()
                } else {
                    findings += 1;
                    format!("{} finding(s)", group(&v.findings).len())
                };
                out.push_str(&format!("{:<64} {}\n", format!("{name} {state}"), v.dir.display()));
                for (finding, count) in group(&v.findings) {
                    let times = if count > 1 { format!(" (x{count})") } else { String::new() };
                    out.push_str(&format!("    {finding}{times}\n"));
                }
            }
            Outcome::Skipped { reason, dir } => {
                skipped += 1;
                let dir = match dir {
                    Ok(d) => d.display().to_string(),
                    Err(_) => "(not recorded)".to_string(),
                };
                out.push_str(&format!("{:<64} {dir}\n", format!("{name} skipped ({reason})")));
            }
        }
    }
    out.push_str(&format!("{} run(s): {clean} clean, {findings} with findings, {skipped} skipped\n", runs.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The CLI's `--kernel` values and the variants scenarios name in `kernels:` are the same
    /// set (plus `both`), so neither can learn a name the other does not know.
    #[test]
    fn cli_kernel_values_are_the_scenario_variants() {
        for variant in Variant::ALL {
            let cli = KernelVariant::from_str(variant.name(), false).unwrap();
            assert_eq!(cli.variants(), [variant]);
        }
        assert_eq!(KernelVariant::Both.variants(), Variant::ALL);
        let names: Vec<String> =
            KernelVariant::value_variants().iter().filter_map(|v| v.to_possible_value()).map(|p| p.get_name().to_string()).collect();
        assert_eq!(names, ["vanilla", "resmgr", "both"]);
    }

    /// The shipped resmgr-only scenario on vanilla: a skip line with the reason, no findings,
    /// and the tally counts it as skipped, not clean.
    #[test]
    fn a_scenario_for_another_kernel_is_shown_skipped_with_the_reason() {
        let path = harness::paths::repo_root().join("scenarios/resmgr-sample-unplug.yaml");
        let scenario = Scenario::load(&path).unwrap();
        let reason = scenario.skip_reason(Variant::Vanilla).expect("resmgr-sample-unplug must not run on vanilla");
        assert_eq!(reason, "applies to: resmgr");
        assert_eq!(scenario.skip_reason(Variant::Resmgr), None);
        let runs = [
            Run {
                scenario: scenario.name.clone(),
                kernel: Variant::Vanilla,
                outcome: Outcome::Skipped { reason, dir: Ok(PathBuf::from("results/x-resmgr-sample-unplug")) },
            },
            Run {
                scenario: "usb-kbd-cycle".into(),
                kernel: Variant::Vanilla,
                outcome: Outcome::Ran(RunVerdict {
                    scenario: "usb-kbd-cycle".into(),
                    dir: PathBuf::from("results/y-usb-kbd-cycle"),
                    findings: Vec::new(),
                    interrupted: false,
                    write_error: None,
                }),
            },
        ];
        let text = summary_text(&runs);
        let skip = text.lines().find(|l| l.starts_with("resmgr-sample-unplug on vanilla: ")).unwrap_or_else(|| panic!("{text}"));
        assert!(skip.starts_with("resmgr-sample-unplug on vanilla: skipped (applies to: resmgr) "), "{text}");
        assert!(skip.ends_with("results/x-resmgr-sample-unplug"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("usb-kbd-cycle on vanilla: clean ")), "{text}");
        assert!(text.ends_with("2 run(s): 1 clean, 0 with findings, 1 skipped\n"), "{text}");
    }
}
