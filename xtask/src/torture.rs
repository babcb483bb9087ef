//! `cargo xtask torture`: the main job. The run matrix — every matching scenario on every
//! kernel variant given (`--kernel vanilla,resmgr`), `--repeat N` times with derived seeds
//! (`harness::drive::matrix`) — or one shard of it (`--shard K/N`); each cell a fresh VM (up to
//! `--jobs` at once) running the cell's seeded schedule, filed into `results/<run-id>/` as it
//! happens. A scenario whose `kernels:` leaves the variant out is recorded as skipped (a run
//! folder with `meta.json` and `summary.md` saying why); a variant no cell boots is not built.
//!
//! Every run is judged against what its scenario expects on that kernel (`expect:`, see
//! `harness::drive::scenario`). Exit status: 0 when every run met its expectation, 1 when some run
//! did not (a title it does not allow, an expected title missing, a failed step), 2 when the
//! harness itself failed (bad input, a build or results write that failed). Skips meet
//! theirs: alone they exit 0. `--check` only reads and validates the scenarios; `--list`
//! prints the matrix (or the shard's part of it) and runs nothing.
//!
//! With several kernels or repeats the end is the summary of `harness::judge::tally` (reproduction
//! rates, the A/B tables against the first kernel), also in `results/summary-<stamp>/`.
//!
//! `--bisect` is for `git bisect run`: 0 the finding is absent, 1 present, 125 the revision
//! cannot be tested (its kernel does not configure, build or boot), 128 the harness failed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use harness::drive::matrix::{self, Cell, MatrixRecord, Shard};
use harness::drive::scenario::{self, KernelVariant as Variant, Scenario, TitlePattern};
use harness::drive::schedule;
use harness::run::vm::Accel;

use crate::artifacts::{self, KernelChoice};
use harness::drive::torture::{run_recorded, RunOptions, RunRequest, RunVerdict};

/// `--kernel`: kernel variants in order, the first the A/B baseline (`vanilla,resmgr`; `both`
/// is `vanilla,resmgr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelList(pub Vec<Variant>);

impl std::str::FromStr for KernelList {
    type Err = String;

    fn from_str(text: &str) -> Result<KernelList, String> {
        matrix::parse_kernels(text).map(KernelList)
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Scenarios to run: a glob over the names in scenarios/ (without .yaml).
    #[arg(long, default_value = "*")]
    scenario: String,
    /// Read scenarios from DIR instead of this checkout's scenarios/.
    #[arg(long, value_name = "DIR")]
    scenario_dir: Option<PathBuf>,
    /// Kernel variants to run against, comma-separated (vanilla = Debian's 6.12, resmgr = 6.12
    /// with our series, vanilla-6.1 = Debian's 6.1 LTS; `both` = vanilla,resmgr); the first is
    /// the baseline of the A/B tables.
    #[arg(long, default_value = "vanilla")]
    kernel: KernelList,
    /// Base seed for the schedules (delays, unplug methods); printed so a run can be repeated.
    /// Required with --shard (every shard must plan the same matrix).
    #[arg(long)]
    seed: Option<u64>,
    /// Run every scenario's steps this many times instead of its own `iterations`.
    #[arg(long)]
    iterations: Option<u32>,
    /// Run every scenario on every kernel this many times, each repeat with its own seed
    /// derived from the base seed; the summary gives each title's reproduction rate.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// VMs to run at once (default: from the cores and the free memory).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// Run only the K-th of N deterministic, balanced slices of the matrix (all kernels of one
    /// scenario and repeat stay together).
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,
    /// Print the matrix (or this shard's part of it), one line per run, and run nothing.
    #[arg(long)]
    list: bool,
    /// With --list: the cells as a JSON array.
    #[arg(long, requires = "list")]
    json: bool,
    /// For `git bisect run`: exit 0 when the finding is absent, 1 when present, 125 when the
    /// kernel cannot be tested (does not configure, build or boot), 128 on a harness failure.
    #[arg(long, requires = "src")]
    bisect: bool,
    /// With --bisect: the finding, a title pattern as in `expect:` (default: any crash title).
    #[arg(long, requires = "bisect")]
    title: Option<String>,
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

/// `--bisect` exit statuses (`git bisect run`'s contract).
pub mod bisect {
    pub const ABSENT: u8 = 0;
    pub const PRESENT: u8 = 1;
    /// This revision cannot be tested: git bisect skips it.
    pub const UNTESTABLE: u8 = 125;
    /// The harness failed: git bisect stops.
    pub const HARNESS: u8 = 128;
}

pub fn run(args: Args) -> Result<ExitCode> {
    if !args.bisect {
        return torture(&args).map(|done| done.exit);
    }
    // Whatever happens, a bisect gets one of its four answers.
    let code = match torture(&args) {
        Ok(done) => done.bisect,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<harness::build::kernel::BuildFailed>().is_some() {
                eprintln!("bisect: the kernel does not configure or build: cannot test this revision (125)");
                bisect::UNTESTABLE
            } else {
                bisect::HARNESS
            }
        }
    };
    Ok(ExitCode::from(code))
}

/// How `torture` ended: its normal exit status and the one `--bisect` gives.
struct Done {
    exit: ExitCode,
    bisect: u8,
}

impl Done {
    fn both(code: u8) -> Done {
        Done { exit: ExitCode::from(code), bisect: if code == 0 { bisect::ABSENT } else { bisect::HARNESS } }
    }
}

fn torture(args: &Args) -> Result<Done> {
    let dir = args.scenario_dir.clone().unwrap_or_else(|| harness::paths::repo_root().join("scenarios"));
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
        print!("{}", check_text(&scenarios, &harness::drive::requires::absent_by_kernel(&Variant::ALL)?));
        return Ok(Done::both(0));
    }
    if let Some(n) = args.iterations {
        for s in &mut scenarios {
            s.iterations = n;
        }
    }
    let shard = args.shard.unwrap_or(Shard::ALL);
    if shard.count > 1 && args.seed.is_none() {
        bail!("--shard {shard} needs --seed: every shard must plan the same matrix from the same seed");
    }
    let title = args.title.as_deref().map(TitlePattern::new).transpose().map_err(|e| anyhow::anyhow!("--title: {e}"))?;
    let seed = args.seed.unwrap_or_else(fresh_seed);
    let variants = &args.kernel.0;
    let absent = harness::drive::requires::absent_by_kernel(variants)?;
    let cells = matrix::shard_cells(matrix::plan(&scenarios, variants, &absent, args.repeat, seed, shard.count), shard);
    if args.list {
        let text = if args.json { format!("{}\n", serde_json::to_string_pretty(&cells)?) } else { matrix::list_text(&cells) };
        // `torture --list | head` closes the pipe early: that is the reader's choice, not an
        // error (print! would panic on it).
        match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(anyhow::Error::new(e).context("writing the matrix")),
            _ => return Ok(Done::both(0)),
        }
    }
    if args.bzimage.is_some() && variants != &[Variant::Vanilla] {
        bail!("--bzimage runs one prebuilt kernel; it cannot be combined with --kernel {}", names(variants));
    }
    if args.bisect && variants.len() != 1 {
        bail!("--bisect tests one kernel; --kernel {} names {}", names(variants), variants.len());
    }
    let results_root = args.results.clone().unwrap_or_else(harness::paths::results_dir);
    let booting = cells.iter().filter(|c| c.skip.is_none()).count();
    let jobs = args.jobs.map_or_else(default_jobs, |j| j as usize).clamp(1, booting.max(1));
    eprintln!(
        "torture: {} scenario(s) x {} kernel(s) x {} repeat(s), base seed {seed}; shard {shard}: {} run(s), {booting} to boot, {jobs} at a time",
        scenarios.len(),
        variants.len(),
        args.repeat,
        cells.len()
    );
    let record = MatrixRecord { base_seed: seed, repeats: args.repeat, kernels: variants.clone(), shard, cells: cells.clone() };
    record.write(&results_root).context("recording the matrix")?;

    // Only the variants a cell boots are built; before the runtime starts (builds block).
    let mut built = Vec::new();
    for &variant in variants {
        if cells.iter().any(|c| c.kernel == variant && c.skip.is_none()) {
            let choice = KernelChoice { bzimage: args.bzimage.clone(), src: args.src.clone(), ..KernelChoice::of_variant(variant) };
            let (kernel, image) = artifacts::kernel_and_image_keyed(&choice)?;
            built.push((variant, kernel, image));
        }
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut skip_write_failed = false;
    for cell in cells.iter().filter(|c| c.skip.is_some()) {
        let reason = cell.skip.clone().unwrap_or_default();
        let scenario = scenarios.iter().find(|s| s.name == cell.scenario);
        let reproducer = scenario.and_then(|s| s.kernels.first()).map_or_else(String::new, |&k| reproducer(args, &cell.scenario, k, cell.seed));
        let dir = harness::judge::results::record_skip(&results_root, &cell.scenario, cell.kernel.name(), cell.seed, &reason, &reproducer);
        let dir = dir.map_err(|e| {
            eprintln!("error: recording the skip of {}: {e:#}", cell.label());
            skip_write_failed = true;
        });
        runs.push(Run { cell: cell.clone(), outcome: RunEnd::Skipped { reason, dir: dir.ok() } });
    }
    let ran = crate::runtime()?.block_on(run_cells(args, &scenarios, &cells, &built, &results_root, seed, jobs))?;
    runs.extend(ran);
    let order = |c: &Cell| cells.iter().position(|x| x == c);
    runs.sort_by_key(|r| order(&r.cell));

    print!("{}", summary_text(&runs));
    let entries: Vec<harness::judge::tally::Entry> = runs.iter().filter_map(Run::dir).map(harness::judge::tally::Entry::load).collect();
    let kernels: Vec<String> = variants.iter().map(|k| k.name().to_string()).collect();
    let tally = harness::judge::tally::Tally::for_cells(&kernels, &cells, entries, Vec::new());
    let mut harness_failed = skip_write_failed;
    if variants.len() > 1 || args.repeat > 1 {
        print!("\n{}", tally.rates_markdown());
        if !tally.ab.is_empty() {
            print!("{}", harness::judge::ab::markdown(&tally.ab));
        }
        for c in tally.ab.iter().filter(|c| c.same_schedule == Some(false)) {
            eprintln!("error: {} (seed {}): the kernels recorded different schedules for the same seed", c.scenario, c.seed);
            harness_failed = true;
        }
        let dir = harness::judge::results::create_unique(&results_root, &format!("summary-{}", harness::judge::results::stamp()));
        match dir.and_then(|d| tally.write(&d).map(|()| d)) {
            Ok(d) => {
                println!("summary written to {}", d.display());
                // The results root's page lists the new A/B tables.
                if let Err(e) = harness::judge::html::write_root_index(&results_root) {
                    eprintln!("error: writing {}: {e:#}", results_root.join("index.html").display());
                    harness_failed = true;
                }
            }
            Err(e) => {
                eprintln!("error: writing the summary: {e:#}");
                harness_failed = true;
            }
        }
    }
    let verdicts: Vec<RunVerdict> = runs
        .iter()
        .filter_map(|r| match &r.outcome {
            RunEnd::Ran(v) => Some(RunVerdict::clone(v)),
            _ => None,
        })
        .collect();
    harness_failed |= report_write_errors(&verdicts);
    let all_met = runs.iter().all(Run::met);
    let exit = ExitCode::from(if harness_failed { 2 } else if all_met { 0 } else { 1 });
    Ok(Done { exit, bisect: bisect_code(&runs, title.as_ref(), harness_failed) })
}

/// `--bisect`'s answer for these runs: a harness failure or a stopped run (128) before an
/// untestable kernel (a run that did not boot: 125) before the finding (`title`, or any crash
/// title) present in some run (1) or absent from all (0).
fn bisect_code(runs: &[Run], title: Option<&TitlePattern>, harness_failed: bool) -> u8 {
    let verdicts: Vec<&RunVerdict> = runs
        .iter()
        .filter_map(|r| match &r.outcome {
            RunEnd::Ran(v) => Some(&**v),
            _ => None,
        })
        .collect();
    let not_started = runs.iter().any(|r| matches!(r.outcome, RunEnd::NotStarted));
    if harness_failed || not_started || verdicts.iter().any(|v| v.interrupted || v.write_error.is_some()) {
        return bisect::HARNESS;
    }
    if verdicts.iter().any(|v| !v.booted) {
        return bisect::UNTESTABLE;
    }
    let present = verdicts.iter().flat_map(|v| &v.summary.titles).any(|t| title.is_none_or(|p| p.matches(&t.title)));
    if present {
        bisect::PRESENT
    } else {
        bisect::ABSENT
    }
}

fn names(variants: &[Variant]) -> String {
    variants.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
}

/// VMs at once by default: one per core (a TCG guest is one busy vCPU), at most as many as
/// the free memory holds (guest RAM plus QEMU's own), at least one.
fn default_jobs() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_vm_kib = (u64::from(harness::run::vm::DEFAULT_MEMORY_MIB) + 512) * 1024;
    let available_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| mem_available_kib(&t));
    let by_memory = available_kib.map_or(cores, |kib| (kib / per_vm_kib) as usize);
    cores.min(by_memory).max(1)
}

/// `MemAvailable:` of /proc/meminfo, in KiB.
fn mem_available_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:")).and_then(|v| v.split_whitespace().next()).and_then(|n| n.parse().ok())
}

/// Runs the booting cells, up to `jobs` at once, one line per finished run. After Ctrl-C or
/// SIGTERM every running VM stops between steps and is shut down, its summary written, and
/// no further cell starts; the same after a results write that failed.
async fn run_cells(
    args: &Args,
    scenarios: &[Scenario],
    cells: &[Cell],
    built: &[(Variant, artifacts::Kernel, harness::build::image::Image)],
    results_root: &Path,
    base_seed: u64,
    jobs: usize,
) -> Result<Vec<Run>> {
    let stop = harness::drive::torture::stop_on_signals().context("installing the Ctrl-C/SIGTERM handler")?;
    let no_more = tokio_util::sync::CancellationToken::new();
    let progress = harness::drive::progress::Progress::auto();
    let booting: Vec<&Cell> = cells.iter().filter(|c| c.skip.is_none()).collect();
    let total = booting.len();
    let mut finished = 0;
    let mut out = Vec::new();
    let mut runs = futures::stream::iter(booting.into_iter().map(|cell| {
        let (stop, no_more, progress) = (stop.clone(), no_more.clone(), progress.clone());
        async move {
            if stop.is_stopped() || no_more.is_cancelled() {
                return Ok(Run { cell: cell.clone(), outcome: RunEnd::NotStarted });
            }
            let scenario = scenarios.iter().find(|s| s.name == cell.scenario).context("a cell of no scenario")?;
            let (_, kernel, image) = built.iter().find(|(v, _, _)| *v == cell.kernel).context("a cell of no built kernel")?;
            let request = RunRequest {
                kernel: kernel.meta(),
                variant: cell.kernel,
                initrd: image.path.clone(),
                image_key: Some(image.key.clone()),
                schedule: schedule::plan(scenario, cell.seed),
                accel: args.accel,
                options: RunOptions { unplug_timeout: Duration::from_secs(args.unplug_timeout), ..Default::default() },
                results_root: results_root.to_path_buf(),
                reproducer: reproducer(args, &cell.scenario, cell.kernel, cell.seed),
                repeat: Some(cell.repeat_meta(base_seed)),
                stop,
                progress,
            };
            let verdict = run_recorded(request).await.with_context(|| format!("torture run {} failed", cell.label()))?;
            if verdict.write_error.is_some() {
                no_more.cancel();
            }
            Ok::<Run, anyhow::Error>(Run { cell: cell.clone(), outcome: RunEnd::Ran(Box::new(verdict)) })
        }
    }))
    .buffer_unordered(jobs);
    while let Some(run) = runs.next().await {
        let run = run?;
        if !matches!(run.outcome, RunEnd::NotStarted) {
            finished += 1;
            progress.line(&format!("[{finished}/{total}] {}", run_line(&run)));
        }
        out.push(run);
    }
    Ok(out)
}

/// One run of the matrix and how it came out.
struct Run {
    cell: Cell,
    outcome: RunEnd,
}

enum RunEnd {
    Ran(Box<RunVerdict>),
    /// Not booted: the scenario does not apply to this variant. `dir` is the run folder that
    /// records the skip, unless it could not be written.
    Skipped { reason: String, dir: Option<PathBuf> },
    /// Never started: the command was stopped first.
    NotStarted,
}

impl Run {
    /// Whether the run met its scenario's expectation on its kernel (a skip always does; a
    /// run that never started does not).
    fn met(&self) -> bool {
        match &self.outcome {
            RunEnd::Ran(v) => v.summary.expectation_met,
            RunEnd::Skipped { .. } => true,
            RunEnd::NotStarted => false,
        }
    }

    fn dir(&self) -> Option<&Path> {
        match &self.outcome {
            RunEnd::Ran(v) => Some(&v.dir),
            RunEnd::Skipped { dir, .. } => dir.as_deref(),
            RunEnd::NotStarted => None,
        }
    }
}

/// `--check`: one line per scenario: what it requires and what it expects on each kernel it applies to;
/// where that kernel's build is without a requirement (`absent`), `skipped` and why, so a
/// run that cannot happen never reads as an expected `clean`.
fn check_text(scenarios: &[Scenario], absent: &harness::drive::requires::Absences) -> String {
    let mut out = String::new();
    for s in scenarios {
        let expects: Vec<String> = s
            .kernels
            .iter()
            .map(|&k| {
                let without = absent.get(&k).map_or(&[][..], Vec::as_slice);
                let unmet: Vec<&str> = harness::drive::requires::of_scenario(s)
                    .into_iter()
                    .filter(|&need| harness::drive::requires::unmet(&[need].into(), without).is_some())
                    .map(|need| need.name())
                    .collect();
                if unmet.is_empty() {
                    format!("{k}: {}", s.expectation(k).describe())
                } else {
                    format!("{k}: skipped (requires {}, absent from its build)", unmet.join(", "))
                }
            })
            .collect();
        let needs: Vec<&str> = harness::drive::requires::of_scenario(s).into_iter().map(|r| r.name()).collect();
        let requires = if needs.is_empty() { String::new() } else { format!("requires {}; ", needs.join(", ")) };
        out.push_str(&format!("{}: ok; {requires}expects {}\n", s.name, expects.join("; ")));
    }
    out.push_str(&format!("{} scenario(s) valid\n", scenarios.len()));
    out
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

/// The command line that reruns exactly this scenario on `kernel` with this seed (a repeat's
/// derived seed reruns as the base seed of a single run: the same schedule).
fn reproducer(args: &Args, scenario: &str, kernel: Variant, seed: u64) -> String {
    let mut cmd = format!("cargo xtask torture --scenario {scenario} --kernel {kernel} --seed {seed}");
    if let Some(n) = args.iterations {
        cmd.push_str(&format!(" --iterations {n}"));
    }
    if let Some(dir) = &args.scenario_dir {
        cmd.push_str(&format!(" --scenario-dir {}", dir.display()));
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

/// The line of one run: `NAME on KERNEL[ #r/N]: clean|N finding(s), as expected|NOT as
/// expected`, `skipped (why)` or `not started`, and its folder.
fn run_line(run: &Run) -> String {
    let name = format!("{}:", run.cell.label());
    match &run.outcome {
        RunEnd::Ran(v) => {
            let state = if v.findings.is_empty() { "clean".to_string() } else { format!("{} finding(s)", group(&v.findings).len()) };
            let judged = if v.summary.expectation_met { "as expected" } else { "NOT as expected" };
            format!("{:<72} {}", format!("{name} {state}, {judged}"), v.dir.display())
        }
        RunEnd::Skipped { reason, dir } => {
            let dir = dir.as_ref().map_or_else(|| "(not recorded)".to_string(), |d| d.display().to_string());
            format!("{:<72} {dir}", format!("{name} skipped ({reason})"))
        }
        RunEnd::NotStarted => format!("{name} not started (stopped before it)"),
    }
}

/// One line per run ([`run_line`]), each finding below its run and then why the run missed
/// its expectation, then the tally.
fn summary_text(runs: &[Run]) -> String {
    let mut out = String::from("\n");
    let (mut clean, mut findings, mut skipped, mut missed) = (0, 0, 0, 0);
    for run in runs {
        out.push_str(&run_line(run));
        out.push('\n');
        match &run.outcome {
            RunEnd::Ran(v) => {
                if v.findings.is_empty() {
                    clean += 1;
                } else {
                    findings += 1;
                }
                for (finding, count) in group(&v.findings) {
                    let times = if count > 1 { format!(" (x{count})") } else { String::new() };
                    out.push_str(&format!("    {finding}{times}\n"));
                }
                if !v.summary.expectation_met {
                    missed += 1;
                    out.push_str(&format!("    expected: {}\n", v.summary.expected));
                    for why in &v.summary.why_not {
                        out.push_str(&format!("    not as expected: {why}\n"));
                    }
                }
            }
            RunEnd::Skipped { .. } => skipped += 1,
            RunEnd::NotStarted => missed += 1,
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
    use std::str::FromStr;

    /// `--kernel` takes every variant scenarios name in `kernels:`, comma-separated and in
    /// order, with `both` for vanilla,resmgr.
    #[test]
    fn cli_kernel_values_are_the_scenario_variants() {
        for variant in Variant::ALL {
            assert_eq!(KernelList::from_str(variant.name()), Ok(KernelList(vec![variant])));
        }
        assert_eq!(KernelList::from_str("both"), Ok(KernelList(vec![Variant::Vanilla, Variant::Resmgr])));
        assert_eq!(KernelList::from_str("resmgr,vanilla"), Ok(KernelList(vec![Variant::Resmgr, Variant::Vanilla])));
        assert_eq!(KernelList::from_str("vanilla,vanilla-6.1"), Ok(KernelList(vec![Variant::Vanilla, Variant::Vanilla61])));
        assert!(KernelList::from_str("vanilla,nope").is_err());
    }

    fn cell(scenario: &str, kernel: Variant) -> Cell {
        Cell { scenario: scenario.into(), kernel, repeat: 1, repeats: 1, seed: 1, shard: Shard::ALL, skip: None }
    }

    /// The shipped resmgr-only scenario on vanilla: a skip line with the reason, no findings,
    /// and the tally counts it as skipped, not clean.
    #[test]
    fn a_scenario_for_another_kernel_is_shown_skipped_with_the_reason() {
        let path = harness::paths::repo_root().join("scenarios/resmgr-sample-unplug.yaml");
        let scenario = Scenario::load(&path).unwrap();
        let reason = scenario.skip_reason(Variant::Vanilla, &[]).expect("resmgr-sample-unplug must not run on vanilla");
        assert_eq!(reason, "applies to: resmgr");
        assert_eq!(scenario.skip_reason(Variant::Resmgr, &[]), None);
        let runs = [
            Run {
                cell: cell(&scenario.name, Variant::Vanilla),
                outcome: RunEnd::Skipped { reason, dir: Some(PathBuf::from("results/x-resmgr-sample-unplug")) },
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
            cell: cell(scenario, kernel),
            outcome: RunEnd::Ran(Box::new(RunVerdict {
                scenario: scenario.into(),
                dir: PathBuf::from(format!("results/{kernel}-{scenario}")),
                findings: titles.iter().map(|t| t.to_string()).collect(),
                interrupted: false,
                booted: true,
                write_error: None,
                summary: harness::judge::results::RunSummary {
                    scenario: scenario.into(),
                    kernel: kernel.name().into(),
                    titles: titles.iter().map(|t| harness::judge::results::TitleCount { title: t.to_string(), count: 1, follow_ons: vec![] }).collect(),
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

    /// A repeated cell is named with its repeat; a cell stopped before it started is not met.
    #[test]
    fn repeats_are_named_and_unstarted_runs_are_not_met() {
        let run = Run { cell: Cell { repeat: 2, repeats: 3, ..cell("usb-kbd-cycle", Variant::Resmgr) }, outcome: RunEnd::NotStarted };
        assert_eq!(run_line(&run), "usb-kbd-cycle on resmgr #2/3: not started (stopped before it)");
        assert!(!run.met());
        assert!(summary_text(&[run]).ends_with("1 run(s): 0 as expected, 1 not, 0 skipped (0 clean, 0 with findings)\n"));
    }

    /// `--bisect`: harness trouble (128) first, then a kernel that did not boot (125), then
    /// the finding present (1) or absent (0); `--title` narrows the finding to a pattern.
    #[test]
    fn bisect_exit_codes() {
        let uaf = "KASAN: slab-use-after-free Read in at24_read";
        let with = |titles: &[&str]| ran("nvmem-holder-cp2112-unplug", Variant::Vanilla, titles, &[]);
        let pattern = TitlePattern::new("KASAN: * in at24_read").unwrap();
        let other = TitlePattern::new("WARNING in *").unwrap();
        assert_eq!(bisect_code(&[with(&[])], None, false), bisect::ABSENT);
        assert_eq!(bisect_code(&[with(&[]), with(&[uaf])], None, false), bisect::PRESENT);
        assert_eq!(bisect_code(&[with(&[uaf])], Some(&pattern), false), bisect::PRESENT);
        assert_eq!(bisect_code(&[with(&[uaf])], Some(&other), false), bisect::ABSENT);
        assert_eq!(bisect_code(&[with(&[uaf])], None, true), bisect::HARNESS);
        let mut unbooted = with(&["VM died"]);
        if let RunEnd::Ran(v) = &mut unbooted.outcome {
            v.booted = false;
        }
        assert_eq!(bisect_code(&[with(&[uaf]), unbooted], None, false), bisect::UNTESTABLE);
        let mut interrupted = with(&[]);
        if let RunEnd::Ran(v) = &mut interrupted.outcome {
            v.interrupted = true;
        }
        assert_eq!(bisect_code(&[interrupted], None, false), bisect::HARNESS);
        let stopped = Run { cell: cell("x", Variant::Vanilla), outcome: RunEnd::NotStarted };
        assert_eq!(bisect_code(&[with(&[uaf]), stopped], None, false), bisect::HARNESS);
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:        18000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(mem_available_kib(meminfo), Some(22_000_000));
        assert_eq!(mem_available_kib("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available_kib("MemAvailable: lots\n"), None);
        assert!(default_jobs() >= 1);
    }

    /// `--check` lists what each scenario expects on each kernel it applies to.
    #[test]
    fn check_lists_the_shipped_expectations() {
        let dir = harness::paths::repo_root().join("scenarios");
        let scenarios: Vec<Scenario> = scenario::find(&dir, "*").unwrap().iter().map(|p| Scenario::load(p).unwrap()).collect();
        let text = check_text(&scenarios, &harness::drive::requires::absent_by_kernel(&Variant::ALL).unwrap());
        assert!(text.contains("\ncp2112-i2c-dev-held: ok; expects vanilla: INFO: task hung in cp2112_remove; resmgr: clean; vanilla-6.1: "), "{text}");
        assert!(text.contains("\ngpio-virtuser-irq-teardown: ok; requires gpio-virtuser; expects vanilla: KASAN: slab-use-after-free Read in seq_vprintf; resmgr: clean; vanilla-6.1: skipped (requires gpio-virtuser, absent from its build)\n"), "{text}");
        assert!(text.contains("\nresmgr-sample-unplug: ok; requires rust; expects resmgr: clean\n"), "{text}");
        assert!(text.contains("\ngpio-virtuser-irq-teardown: ok; requires gpio-virtuser; expects vanilla: "), "{text}");
        assert!(text.ends_with(&format!("{} scenario(s) valid\n", scenarios.len())), "{text}");
    }
}
