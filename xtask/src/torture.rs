//! `cargo xtask torture`: the main job. For each kernel variant and each matching scenario:
//! plan a seeded schedule, boot a fresh VM, run the schedule, and file everything into
//! `results/<run-id>/` as it happens. A scenario whose `kernels:` leaves the variant out is
//! recorded as skipped (a run folder with `meta.json` and `summary.md` saying why) and shown
//! as such in the summary; a variant no selected scenario applies to is not even built.
//!
//! Every run is judged against what its scenario expects on that kernel (`expect:`, see
//! `harness::scenario`). Exit status: 0 when every run met its expectation, 1 when some run
//! did not (a title it does not allow, an expected title missing, a failed step), 2 when the
//! harness itself failed (bad input, a build or results write that failed). Skips meet
//! theirs: alone they exit 0. `--check` only reads and validates the scenarios.
//!
//! `--kernel both` runs every scenario on vanilla, then on resmgr, with one schedule per
//! scenario (same seed, same draws), and ends with the A/B table (`harness::ab`), also
//! written to `results/ab-<stamp>/`.

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
    /// Debian's 6.1 LTS source as it is (without Rust and gpio-virtuser).
    #[value(name = "vanilla-6.1")]
    Vanilla61,
    /// vanilla and resmgr, one after the other, for an A/B comparison.
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
    /// Only read and validate the selected scenarios (expectations included); build and boot
    /// nothing.
    #[arg(long)]
    check: bool,
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
    if args.check {
        print!("{}", check_text(&scenarios));
        return Ok(ExitCode::SUCCESS);
    }
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
    // One schedule per scenario, whatever the kernel: the A/B compares like with like.
    let schedules: Vec<Schedule> = scenarios.iter().map(|s| schedule::plan(s, seed)).collect();

    let mut runs: Vec<Run> = Vec::new();
    let mut stop = false;
    for &variant in variants {
        if stop {
            break;
        }
        // Built on the first scenario that applies: a variant nothing applies to costs nothing.
        let mut built = None;
        for (scenario, schedule) in scenarios.iter().zip(&schedules) {
            if let Some(reason) = scenario.skip_reason(variant) {
                let reproducer = scenario.kernels.first().map_or_else(String::new, |&k| reproducer(&args, scenario, k, seed));
                let dir = harness::results::record_skip(&results_root, &scenario.name, variant.name(), seed, &reason, &reproducer)
                    .map_err(|e| format!("recording the skip of {} on {variant}: {e:#}", scenario.name));
                runs.push(Run { scenario: scenario.name.clone(), kernel: variant, outcome: Outcome::Skipped { reason, dir, seed } });
                continue;
            }
            let (kernel, image) = match &built {
                Some(b) => b,
                None => {
                    let choice =
                        KernelChoice { bzimage: args.bzimage.clone(), src: args.src.clone(), ..KernelChoice::of_variant(variant) };
                    built.insert(artifacts::kernel_and_image_keyed(&choice)?)
                }
            };
            let request = RunRequest {
                kernel: kernel.meta(),
                variant,
                initrd: image.path.clone(),
                image_key: Some(image.key.clone()),
                schedule: schedule.clone(),
                accel: args.accel,
                options: RunOptions { unplug_timeout: Duration::from_secs(args.unplug_timeout), ..Default::default() },
                results_root: results_root.clone(),
                reproducer: reproducer(&args, scenario, variant, seed),
            };
            let verdict = crate::runtime()?.block_on(run_recorded(request)).context("torture run failed")?;
            stop = verdict.interrupted || verdict.write_error.is_some();
            runs.push(Run { scenario: scenario.name.clone(), kernel: variant, outcome: Outcome::Ran(Box::new(verdict)) });
            if stop {
                break;
            }
        }
    }
    print!("{}", summary_text(&runs));
    let ab_failed = args.kernel == KernelVariant::Both && !stop && write_ab(&runs, &results_root);
    let verdicts: Vec<RunVerdict> = runs
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Ran(v) => Some(RunVerdict::clone(v)),
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
    if report_write_errors(&verdicts) || skip_write_failed || ab_failed {
        return Ok(ExitCode::from(2));
    }
    Ok(if runs.iter().all(Run::met) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `--check`: one line per scenario with the kernels it applies to and what it expects on each.
fn check_text(scenarios: &[Scenario]) -> String {
    let mut out = String::new();
    for s in scenarios {
        let expects: Vec<String> = s.kernels.iter().map(|&k| format!("{k}: {}", s.expectation(k).describe())).collect();
        out.push_str(&format!("{}: ok; expects {}\n", s.name, expects.join("; ")));
    }
    out.push_str(&format!("{} scenario(s) valid\n", scenarios.len()));
    out
}

/// Prints the A/B table of `runs` and writes it under `root`; true if writing failed (or the
/// two kernels did not run the same schedule: then the comparison is void).
fn write_ab(runs: &[Run], root: &std::path::Path) -> bool {
    let comparisons = ab_comparisons(runs);
    print!("\n{}", harness::ab::markdown(&comparisons));
    let mut failed = false;
    for c in comparisons.iter().filter(|c| c.same_schedule == Some(false)) {
        eprintln!("error: {}: vanilla and resmgr recorded different schedules for the same seed", c.scenario);
        failed = true;
    }
    match harness::ab::write(root, &comparisons) {
        Ok(dir) => println!("A/B written to {}", dir.display()),
        Err(e) => {
            eprintln!("error: writing the A/B summary: {e:#}");
            failed = true;
        }
    }
    failed
}

/// One comparison per scenario that has a run (or a skip) on both kernels.
fn ab_comparisons(runs: &[Run]) -> Vec<harness::ab::Comparison> {
    let on = |kernel: Variant, name: &str| runs.iter().find(|r| r.kernel == kernel && r.scenario == name);
    runs.iter()
        .filter(|r| r.kernel == Variant::Vanilla)
        .filter_map(|v| Some((v, on(Variant::Resmgr, &v.scenario)?)))
        .map(|(v, r)| {
            let same = match (v.dir(), r.dir()) {
                (Some(a), Some(b)) if v.ran() && r.ran() => harness::ab::same_schedule(a, b),
                _ => None,
            };
            harness::ab::compare(&v.summary(), &r.summary(), same)
        })
        .collect()
}

/// One scenario on one kernel variant.
struct Run {
    scenario: String,
    kernel: Variant,
    outcome: Outcome,
}

enum Outcome {
    Ran(Box<RunVerdict>),
    /// Not booted: the scenario does not apply to this variant. `dir` is the run folder that
    /// records the skip, or why it could not be written.
    Skipped { reason: String, dir: Result<PathBuf, String>, seed: u64 },
}

impl Run {
    /// Whether the run met its scenario's expectation on its kernel (a skip always does).
    fn met(&self) -> bool {
        match &self.outcome {
            Outcome::Ran(v) => v.summary.expectation_met,
            Outcome::Skipped { .. } => true,
        }
    }

    fn ran(&self) -> bool {
        matches!(self.outcome, Outcome::Ran(_))
    }

    fn dir(&self) -> Option<&std::path::Path> {
        match &self.outcome {
            Outcome::Ran(v) => Some(&v.dir),
            Outcome::Skipped { dir, .. } => dir.as_deref().ok(),
        }
    }

    /// What the run's `summary.json` says (for a skip: the skip).
    fn summary(&self) -> harness::results::RunSummary {
        match &self.outcome {
            Outcome::Ran(v) => v.summary.clone(),
            Outcome::Skipped { reason, seed, dir } => harness::results::RunSummary {
                run_id: dir.as_ref().ok().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                ..harness::results::RunSummary::skipped(&self.scenario, self.kernel.name(), *seed, reason)
            },
        }
    }
}

impl KernelVariant {
    /// The variants to run, in order.
    pub fn variants(self) -> &'static [Variant] {
        match self {
            KernelVariant::Vanilla => &[Variant::Vanilla],
            KernelVariant::Resmgr => &[Variant::Resmgr],
            KernelVariant::Vanilla61 => &[Variant::Vanilla61],
            KernelVariant::Both => &[Variant::Vanilla, Variant::Resmgr],
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

/// One line per run (`NAME on KERNEL: clean|N finding(s)|skipped (why)`, whether that is
/// what the scenario expects there, and its folder), each finding below its run and then why
/// the run missed its expectation, then the tally.
fn summary_text(runs: &[Run]) -> String {
    let mut out = String::from("\n");
    let (mut clean, mut findings, mut skipped, mut missed) = (0, 0, 0, 0);
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
                let judged = if v.summary.expectation_met {
                    "as expected"
                } else {
                    missed += 1;
                    "NOT as expected"
                };
                out.push_str(&format!("{:<72} {}\n", format!("{name} {state}, {judged}"), v.dir.display()));
                for (finding, count) in group(&v.findings) {
                    let times = if count > 1 { format!(" (x{count})") } else { String::new() };
                    out.push_str(&format!("    {finding}{times}\n"));
                }
                if !v.summary.expectation_met {
                    out.push_str(&format!("    expected: {}\n", v.summary.expected));
                    for why in &v.summary.why_not {
                        out.push_str(&format!("    not as expected: {why}\n"));
                    }
                }
            }
            Outcome::Skipped { reason, dir, .. } => {
                skipped += 1;
                let dir = match dir {
                    Ok(d) => d.display().to_string(),
                    Err(_) => "(not recorded)".to_string(),
                };
                out.push_str(&format!("{:<72} {dir}\n", format!("{name} skipped ({reason})")));
            }
        }
    }
    let met = runs.len() - skipped - missed;
    out.push_str(&format!(
        "{} run(s): {met} as expected, {missed} not, {skipped} skipped ({clean} clean, {findings} with findings)\n",
        runs.len()
    ));
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
        assert_eq!(KernelVariant::Both.variants(), [Variant::Vanilla, Variant::Resmgr]);
        let names: Vec<String> =
            KernelVariant::value_variants().iter().filter_map(|v| v.to_possible_value()).map(|p| p.get_name().to_string()).collect();
        assert_eq!(names, ["vanilla", "resmgr", "vanilla-6.1", "both"]);
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
                outcome: Outcome::Skipped { reason, dir: Ok(PathBuf::from("results/x-resmgr-sample-unplug")), seed: 1 },
            },
            ran("usb-kbd-cycle", Variant::Vanilla, &[], &[]),
        ];
        let text = summary_text(&runs);
        let skip = text.lines().find(|l| l.starts_with("resmgr-sample-unplug on vanilla: ")).unwrap_or_else(|| panic!("{text}"));
        assert!(skip.starts_with("resmgr-sample-unplug on vanilla: skipped (applies to: resmgr) "), "{text}");
        assert!(skip.ends_with("results/x-resmgr-sample-unplug"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("usb-kbd-cycle on vanilla: clean, as expected ")), "{text}");
        assert!(text.ends_with("2 run(s): 1 as expected, 0 not, 1 skipped (1 clean, 0 with findings)\n"), "{text}");
        assert!(runs.iter().all(Run::met));
    }

    /// A run of `scenario` on `kernel` whose summary has these crash titles and reasons for
    /// missing its expectation (none: met).
    fn ran(scenario: &str, kernel: Variant, titles: &[&str], why_not: &[&str]) -> Run {
        Run {
            scenario: scenario.into(),
            kernel,
            outcome: Outcome::Ran(Box::new(RunVerdict {
                scenario: scenario.into(),
                dir: PathBuf::from(format!("results/{kernel}-{scenario}")),
                findings: titles.iter().map(|t| t.to_string()).collect(),
                interrupted: false,
                write_error: None,
                summary: harness::results::RunSummary {
                    scenario: scenario.into(),
                    kernel: kernel.name().into(),
                    titles: titles.iter().map(|t| harness::results::TitleCount { title: t.to_string(), count: 1 }).collect(),
                    expectation_met: why_not.is_empty(),
                    why_not: why_not.iter().map(|w| w.to_string()).collect(),
                    expected: "clean".into(),
                    ..Default::default()
                },
            })),
        }
    }

    /// Findings that are what the scenario expects are "as expected"; a run that misses its
    /// expectation says why under its line, counts as "not" and fails the command (exit 1).
    #[test]
    fn runs_are_judged_by_their_expectation_not_by_their_findings() {
        let uaf = "KASAN: slab-use-after-free Read in at24_read";
        let runs = [
            ran("nvmem-holder-cp2112-unplug", Variant::Vanilla, &[uaf], &[]),
            ran("nvmem-holder-cp2112-unplug", Variant::Resmgr, &[uaf], &["unexpected title: KASAN: slab-use-after-free Read in at24_read"]),
        ];
        let text = summary_text(&runs);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("nvmem-holder-cp2112-unplug on vanilla: 1 finding(s), as expected "), "{text}");
        assert_eq!(lines[2], format!("    {uaf}"));
        assert!(lines[3].starts_with("nvmem-holder-cp2112-unplug on resmgr: 1 finding(s), NOT as expected "), "{text}");
        assert_eq!(&lines[5..], ["    expected: clean", "    not as expected: unexpected title: KASAN: slab-use-after-free Read in at24_read", "2 run(s): 1 as expected, 1 not, 0 skipped (0 clean, 2 with findings)"]);
        assert!(runs[0].met() && !runs[1].met());
    }

    /// `--kernel both`: one comparison per scenario, skips included, from the runs' summaries.
    #[test]
    fn ab_pairs_each_scenario_across_kernels() {
        let uaf = "KASAN: slab-use-after-free Read in at24_read";
        let skip = Run {
            scenario: "resmgr-sample-unplug".into(),
            kernel: Variant::Vanilla,
            outcome: Outcome::Skipped { reason: "applies to: resmgr".into(), dir: Err("not written".into()), seed: 1 },
        };
        let runs = [
            ran("nvmem-holder-cp2112-unplug", Variant::Vanilla, &[uaf], &[]),
            skip,
            ran("nvmem-holder-cp2112-unplug", Variant::Resmgr, &[], &[]),
            ran("resmgr-sample-unplug", Variant::Resmgr, &[], &[]),
        ];
        let ab = ab_comparisons(&runs);
        assert_eq!(ab.len(), 2);
        assert_eq!((ab[0].scenario.as_str(), ab[0].titles[0].change), ("nvmem-holder-cp2112-unplug", Some(harness::ab::Change::Fixed)));
        // The run folders do not exist here: no schedule to compare.
        assert_eq!(ab[0].same_schedule, None);
        assert_eq!((ab[1].scenario.as_str(), ab[1].vanilla.skipped.as_deref()), ("resmgr-sample-unplug", Some("applies to: resmgr")));
    }

    /// `--check` lists what each scenario expects on each kernel it applies to.
    #[test]
    fn check_lists_the_shipped_expectations() {
        let dir = harness::paths::repo_root().join("scenarios");
        let scenarios: Vec<Scenario> = scenario::find(&dir, "*").unwrap().iter().map(|p| Scenario::load(p).unwrap()).collect();
        let text = check_text(&scenarios);
        assert!(text.contains("\ncp2112-i2c-dev-held: ok; expects vanilla: INFO: task hung in cp2112_remove; resmgr: clean\n"), "{text}");
        assert!(text.contains("\nresmgr-sample-unplug: ok; expects resmgr: clean\n"), "{text}");
        assert!(text.ends_with(&format!("{} scenario(s) valid\n", scenarios.len())), "{text}");
    }
}
