//! `results/<run-id>/`: everything a maintainer needs to act on one torture run.
//!
//! ```text
//! meta.json          reproducer command, kernel identity, QEMU version, accelerator, seed
//! schedule.json      the concrete schedule (what `xtask replay` runs)
//! console.log        serial console, host-timestamped (written by `console`)
//! qmp.log            all QMP traffic (written by `qmp`)
//! agent.log          all agent traffic (written by `agent`)
//! steps.jsonl        one line per finished step
//! crashes/<hash>/    one bug: its first report's report.txt, title, alt_titles, type (and
//!                    symbolized.txt when available); count (reports of the bug in all);
//!                    follow_ons (`COUNT TITLE` lines) and follow-ons/<title hash>.txt (each
//!                    follow-on title's first report) when other titles joined it; step: the
//!                    step it first appeared in, when known
//! summary.md, junit.xml, ktap.txt   written at the end (and rewritten after every crash)
//! summary.json       the same for scripts: bugs with counts, holders' first errors,
//!                    whether the run met its scenario's expectation and why not
//! index.html         the timeline page (`harness::judge::html`), kcidb.json the KCIDB export
//!                    (`harness::judge::kcidb`): both rewritten after every step and summary
//! ```
//!
//! Crashes are filed as *bugs* ([`report::bugs`]): a report with a new title that hit a
//! freed object an earlier bug's report hit is a follow-on of that bug, counted and kept in
//! its folder, not a crash of its own. Summaries, expectations and the A/B table count bugs,
//! each titled after its first report.
//!
//! Whole files are written to a temporary name and renamed, so a reader never sees half a
//! file; `steps.jsonl` gets one complete line per step, flushed and synced before the next
//! step starts. A run killed at any point leaves only valid files behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::devices::holders::HolderState;
use crate::drive::scenario::{Expectation, KernelVariant};

/// What identifies a run and how to repeat it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub run_id: String,
    pub scenario: String,
    pub seed: u64,
    /// Command line that reruns this scenario with this seed.
    pub reproducer: String,
    /// Command line that replays exactly this schedule.
    pub replay: String,
    pub kernel: KernelMeta,
    /// The kernel variant `kernel` is (absent in runs recorded before variants: see
    /// [`KernelVariant::of_series`]).
    #[serde(default)]
    pub kernel_variant: Option<KernelVariant>,
    /// The initramfs the run booted (absent in runs recorded before it was kept).
    #[serde(default)]
    pub image: Option<ImageMeta>,
    pub qemu_version: Option<String>,
    pub accel: Option<String>,
    /// The host's pace measured at this run's boot: its deadlines were the reference ones
    /// times this (see `harness::run::pace`).
    #[serde(default)]
    pub pace: Option<crate::run::pace::Pace>,
    pub started: String,
    /// Which repeat of its matrix cell this run is and how its seed derives from the base
    /// seed (absent in runs recorded before `--repeat`: repeat 1 of 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<crate::drive::matrix::RepeatMeta>,
}

/// The `meta.json` of a skipped run: a scenario not run on a kernel variant it does not apply
/// to (its `kernels:` field). The folder holds only this, `summary.md`, `summary.json` and
/// `index.html`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkipMeta {
    pub run_id: String,
    pub scenario: String,
    /// The kernel variant (`vanilla`, `resmgr`) the scenario was not run on.
    pub kernel_variant: String,
    /// Why: `applies to: resmgr`.
    pub skipped: String,
    /// Command line that runs the scenario on a kernel it applies to.
    pub reproducer: String,
    pub started: String,
}

/// Records a skipped run as `root/<timestamp>-<name>/{meta.json,summary.md}`, so it shows
/// among the runs; returns the folder.
pub fn record_skip(root: &Path, scenario: &str, kernel_variant: &str, seed: u64, reason: &str, reproducer: &str) -> Result<PathBuf> {
    let path = create_folder(root, scenario)?;
    let run_id = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let summary = RunSummary { run_id: run_id.clone(), ..RunSummary::skipped(scenario, kernel_variant, seed, reason) };
    write_atomic(&path.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    let meta = SkipMeta {
        run_id: run_id.clone(),
        scenario: scenario.to_string(),
        kernel_variant: kernel_variant.to_string(),
        skipped: reason.to_string(),
        reproducer: reproducer.to_string(),
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    write_atomic(&path.join("meta.json"), serde_json::to_string_pretty(&meta)?.as_bytes())?;
    let md = format!(
        "# {scenario} — {run_id}\n\nverdict: **skipped** on {kernel_variant} ({reason}); nothing was booted\n\nRun it with: `{reproducer}`\n"
    );
    write_atomic(&path.join("summary.md"), md.as_bytes())?;
    crate::judge::html::write_run_page(&path)?;
    crate::judge::html::write_root_index(root)?;
    Ok(path)
}

/// Creates `root/<timestamp>-<name>` (with a numeric suffix if it exists).
fn create_folder(root: &Path, name: &str) -> Result<PathBuf> {
    create_unique(root, &format!("{}-{name}", stamp()))
}

/// Now as run folders name it: `20261130T174412` (UTC).
pub fn stamp() -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace([':', '-'], "");
    stamp.trim_end_matches('Z').to_string()
}

/// Creates `root/base`, or `root/base-N` if it exists.
pub fn create_unique(root: &Path, base: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let mut path = root.join(base);
    let mut n = 1;
    while let Err(e) = std::fs::create_dir(&path) {
        if e.kind() != std::io::ErrorKind::AlreadyExists || n > 1000 {
            return Err(e).with_context(|| format!("creating {}", path.display()));
        }
        n += 1;
        path = root.join(format!("{base}-{n}"));
    }
    Ok(path)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KernelMeta {
    pub label: String,
    pub bzimage: PathBuf,
    pub vmlinux: Option<PathBuf>,
    /// `INSTALL_MOD_PATH` tree packed into the image.
    pub modules: Option<PathBuf>,
    /// The source tree it was built from (symbolized paths are made relative to it).
    #[serde(default)]
    pub source_tree: Option<PathBuf>,
    /// A series' base tree: objects the series did not change name files there.
    #[serde(default)]
    pub base_tree: Option<PathBuf>,
    pub release: Option<String>,
    pub source_id: Option<String>,
    pub series: Option<String>,
    pub config_hash: Option<String>,
}

/// The initramfs a run booted: its cache key (`cache/images/<key>/initramfs.cpio`) and path.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageMeta {
    pub key: Option<String>,
    pub path: PathBuf,
}

/// A crash report to file under `crashes/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Crash {
    pub title: String,
    pub alt_titles: Vec<String>,
    /// syzkaller-style type, e.g. `KASAN-USE-AFTER-FREE-READ`, `UNPLUG-STUCK`.
    pub kind: String,
    /// Why the report is incomplete or untrustworthy (cut short when the machine stopped,
    /// truncated, interleaved), when it is: `crashes/<hash>/corrupted`.
    pub corrupted: Option<String>,
    pub report: String,
    pub symbolized: Option<String>,
    /// The step that was running when it appeared, when known.
    pub step: Option<usize>,
}

impl Crash {
    /// A crash from a parsed console report or a synthetic verdict (`report::synthetic`).
    pub fn from_report(report: &report::Report, step: Option<usize>, symbolized: Option<String>) -> Crash {
        Crash {
            title: report.title.clone(),
            alt_titles: report.alt_titles.clone(),
            kind: report.crash_type.as_str().to_string(),
            corrupted: report.corrupted.clone(),
            report: report.text.clone(),
            symbolized,
            step,
        }
    }

    /// The title, then the alternates.
    fn titles(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.title.as_str()).chain(self.alt_titles.iter().map(String::as_str))
    }
}

/// The end state of a run, for summary.md, summary.json, junit.xml and ktap.txt.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    /// The kernel variant the run booted.
    pub kernel: Option<KernelVariant>,
    pub seed: u64,
    /// What the scenario expects on this kernel.
    pub expect: Expectation,
    pub steps: Vec<StepLine>,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
    /// The title the run filed for its early stop (a lost guest, an unresponsive agent, no
    /// output), if the guest stopped it; an interrupt or a results write error files none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_title: Option<String>,
    /// Findings the parser does not see: taint gained in a step, stuck unplugs, a lost guest.
    pub signals: Vec<String>,
    /// The run's holders as of its last step.
    pub holders: Vec<HolderState>,
    /// The run has not ended yet: a summary written on the way. One left behind means the
    /// run was killed; it misses any expectation.
    pub in_progress: bool,
}

impl Summary {
    /// Why a run with these crash titles (its bugs', and the follow-on titles filed under them)
    /// misses its expectation; empty: it meets it. Besides
    /// the titles (see [`Expectation::mismatches`]): a failed step, a run stopped early, and a
    /// signal (taint, a failed observer or late close) when no crash title explains it.
    ///
    /// A failed step that filed a title the expectation allows is judged by that title alone,
    /// so the expectation can be met: a stuck unplug (`unplug stuck: ...`, a PCIe removal the
    /// kernel is expected never to finish), or an expected oops that killed the agent's thread
    /// inside the step (a late close that never returns). A failed step that filed no title, or
    /// only titles the expectation does not allow, still counts. A stop the guest
    /// caused is judged the same way: where the expectation allows its title (a bug known to
    /// wedge the guest: `guest agent unresponsive`), neither the stop nor the failed step that
    /// set it off (the last one) counts; the expected titles must still be there. A holder the
    /// expectation names in `refused` that never saw an error misses it too.
    pub fn why_not(&self, titles: &[&str], follow_ons: &[&str]) -> Vec<String> {
        let mut why = self.expect.mismatches(titles, follow_ons);
        let expected_stop = self.stop_title.as_deref().is_some_and(|t| self.expect.allows(t));
        let last = self.steps.last().map(|st| st.index);
        let excused = |st: &StepLine| {
            st.filed_titles.iter().any(|t| self.expect.allows(t)) || (expected_stop && Some(st.index) == last)
        };
        for st in self.steps.iter().filter(|st| !st.ok && !excused(st)) {
            why.push(format!("step {} failed: {} — {}", st.index, st.description, st.detail.as_deref().unwrap_or("")));
        }
        if let Some(aborted) = self.aborted.as_ref().filter(|_| !expected_stop) {
            why.push(format!("stopped early: {aborted}"));
        }
        why.extend(self.expect.unrefused(self.holders.iter().map(|h| (h.name.as_str(), h.first_error.is_some()))));
        if self.in_progress {
            why.push(format!("{IN_PROGRESS} (after {} steps)", self.steps.len()));
        }
        if titles.is_empty() {
            why.extend(self.signals.iter().map(|s| format!("signal: {s}")));
        }
        why
    }
}

/// Why a summary written on the way misses its expectation.
pub const IN_PROGRESS: &str = "the run had not ended when this summary was written (killed?)";

/// What the summary needs of one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLine {
    pub index: usize,
    pub description: String,
    /// False: the step failed (not: it did not run here, see `not_run`).
    pub ok: bool,
    pub detail: Option<String>,
    pub elapsed_ms: f64,
    /// Why the step did not run on this kernel (`only`), if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_run: Option<String>,
    /// The titles of the reports filed while the step ran: the kernel's, and the one for an
    /// unplug QEMU never completed (no `DEVICE_DELETED`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filed_titles: Vec<String>,
}

/// `summary.json`: a run's end as scripts read it (never summary.md). Skipped runs have one
/// too, with `skipped` set and nothing else to report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub scenario: String,
    /// The kernel variant (`vanilla`, `resmgr`).
    pub kernel: String,
    pub seed: u64,
    /// The run's bugs (synthetic ones included: a stuck unplug, a lost guest), in order of
    /// first appearance: each titled after its first report, `count` its reports in all, and
    /// the other titles filed under it (`follow_ons`). The field keeps its older name: every
    /// entry used to be a title, and a bug without follow-ons still reads as one.
    pub titles: Vec<TitleCount>,
    /// Each holder by its scenario name with the first error it got.
    pub holders: Vec<HolderState>,
    /// What the scenario expects on this kernel: `clean`, or the title patterns.
    pub expected: String,
    pub expectation_met: bool,
    /// Why not, when not: each a line.
    pub why_not: Vec<String>,
    /// Why the run was not booted (the scenario does not apply to this kernel).
    pub skipped: Option<String>,
    /// Why the run stopped early, if it did.
    pub aborted: Option<String>,
    /// Steps that failed / did not run on this kernel (`only`) / in all.
    pub steps_failed: usize,
    pub steps_not_run: usize,
    pub steps: usize,
    /// Written on the way, not at the run's end (see [`Summary::in_progress`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_progress: bool,
}

impl RunSummary {
    /// The summary of `scenario` not run on `kernel` (it does not apply): nothing shown, nothing
    /// expected, so the expectation is met.
    pub fn skipped(scenario: &str, kernel: &str, seed: u64, reason: &str) -> RunSummary {
        RunSummary {
            scenario: scenario.to_string(),
            kernel: kernel.to_string(),
            seed,
            expected: "skipped".into(),
            expectation_met: true,
            skipped: Some(reason.to_string()),
            ..RunSummary::default()
        }
    }
}

/// One bug of a run: its title (its first report's), how many reports it had in all, and its
/// follow-ons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TitleCount {
    pub title: String,
    /// Reports of this bug, follow-ons included.
    pub count: u32,
    /// Reports under other titles that hit what this bug's reports hit (the same freed
    /// object), each title with its count, in order of first appearance.
    #[serde(default)]
    pub follow_ons: Vec<FollowOnCount>,
}

/// A title filed under an earlier bug, and its count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowOnCount {
    pub title: String,
    pub count: u32,
}

/// `, follow-ons: KASAN: ... in regmap_readable x120, ...` or nothing.
fn follow_on_note(bug: &report::bugs::Bug<Crash>) -> String {
    if bug.follow_ons.is_empty() {
        return String::new();
    }
    let list: Vec<String> = bug.follow_ons.iter().map(|f| format!("{} x{}", f.first.title, f.count)).collect();
    format!("; follow-ons: {}", list.join(", "))
}

fn count_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// An open run folder.
pub struct RunDir {
    path: PathBuf,
    steps: std::fs::File,
    /// Filed bugs, in order of first appearance (unbounded here: each step's reports arrive
    /// already bounded by title, see `report::Collected`).
    crashes: report::bugs::Bugs<Crash>,
}

impl RunDir {
    /// Creates `root/<timestamp>-<name>` (with a numeric suffix if it exists).
    pub fn create(root: &Path, name: &str) -> Result<RunDir> {
        let path = create_folder(root, name)?;
        let steps = std::fs::OpenOptions::new().create(true).append(true).open(path.join("steps.jsonl"))?;
        Ok(RunDir { path, steps, crashes: report::bugs::Bugs::new(usize::MAX) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run id (the folder's name).
    pub fn id(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Writes `name` (e.g. `meta.json`) atomically.
    pub fn write_json(&self, name: &str, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        write_atomic(&self.path.join(name), text.as_bytes())
    }

    /// Writes a whole file `name` (e.g. a command's own `summary.md`) atomically.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path.join(name), bytes)
    }

    /// Appends one step as a JSON line and syncs it to disk. A write that fails half-way (a
    /// full disk) is taken back, so the file stays whole lines.
    pub fn append_step(&mut self, step: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_string(step)?;
        line.push('\n');
        let path = || format!("appending to {}", self.path.join("steps.jsonl").display());
        let len = self.steps.metadata().with_context(path)?.len();
        if let Err(e) = self.steps.write_all(line.as_bytes()) {
            // Best effort: the error below is what matters.
            let _ = self.steps.set_len(len);
            return Err(e).with_context(path);
        }
        self.steps.sync_data().with_context(path)?;
        Ok(())
    }

    /// Files a crash under `crashes/<hash of its title>/` as a new bug; a repeat of a bug's
    /// title (equal, or intersecting alternate titles) only bumps the bug's `count`; a new
    /// title that is a follow-on of a filed bug ([`report::bugs`]) is counted in that bug's
    /// folder and its first report kept there. Returns the bug's folder.
    pub fn add_crash(&mut self, crash: &Crash) -> Result<PathBuf> {
        self.add_crash_times(crash, 1)
    }

    /// [`RunDir::add_crash`] for a crash seen `times` times (at least once).
    pub fn add_crash_times(&mut self, crash: &Crash, times: u64) -> Result<PathBuf> {
        let placement = self
            .crashes
            .add(crash.titles(), &crash.report, times.max(1), || crash.clone())
            .with_context(|| format!("filing {}: more distinct titles than can be kept", crash.title))?;
        let bug = self
            .crashes
            .bugs()
            .get(placement.bug)
            .with_context(|| format!("filing {}: bug {} was never filed", crash.title, placement.bug))?;
        let dir = self.path.join("crashes").join(title_hash(&bug.first.title));
        if placement.new_title && !placement.is_follow_on() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_atomic(&dir.join("report.txt"), crash.report.as_bytes())?;
            write_atomic(&dir.join("title"), format!("{}\n", crash.title).as_bytes())?;
            let alts: String = crash.alt_titles.iter().map(|t| format!("{t}\n")).collect();
            write_atomic(&dir.join("alt_titles"), alts.as_bytes())?;
            write_atomic(&dir.join("type"), format!("{}\n", crash.kind).as_bytes())?;
            if let Some(why) = &crash.corrupted {
                write_atomic(&dir.join("corrupted"), format!("{why}\n").as_bytes())?;
            }
            if let Some(sym) = &crash.symbolized {
                write_atomic(&dir.join("symbolized.txt"), sym.as_bytes())?;
            }
            if let Some(step) = crash.step {
                write_atomic(&dir.join("step"), format!("{step}\n").as_bytes())?;
            }
        }
        if placement.is_follow_on() {
            if placement.new_title {
                let reports = dir.join("follow-ons");
                std::fs::create_dir_all(&reports).with_context(|| format!("creating {}", reports.display()))?;
                let text = crash.symbolized.as_deref().unwrap_or(&crash.report);
                write_atomic(&reports.join(format!("{}.txt", title_hash(&crash.title))), text.as_bytes())?;
            }
            let lines: String = bug.follow_ons.iter().map(|f| format!("{} {}\n", f.count, f.first.title)).collect();
            write_atomic(&dir.join("follow_ons"), lines.as_bytes())?;
        }
        write_atomic(&dir.join("count"), format!("{}\n", bug.count).as_bytes())?;
        Ok(dir)
    }

    /// Whether `title` was filed as a follow-on of another title's bug.
    pub fn is_follow_on(&self, title: &str) -> bool {
        self.crashes.bugs().iter().any(|b| b.follow_ons.iter().any(|f| f.first.title == title))
    }

    /// The title of the bug a report titled `title` was filed under, if it was.
    pub fn bug_of(&self, title: &str) -> Option<&str> {
        self.crashes
            .bugs()
            .iter()
            .find(|b| b.first.titles().any(|t| t == title) || b.follow_ons.iter().any(|f| f.first.title == title))
            .map(|b| b.first.title.as_str())
    }

    /// Files a parsed report (see [`Crash::from_report`]).
    pub fn add_report(&mut self, report: &report::Report, step: Option<usize>, symbolized: Option<String>) -> Result<PathBuf> {
        self.add_crash(&Crash::from_report(report, step, symbolized))
    }

    /// The bugs filed so far, with their counts and follow-ons.
    pub fn bugs(&self) -> Vec<TitleCount> {
        let bugs = self.crashes.bugs().iter();
        bugs.map(|b| TitleCount {
            title: b.first.title.clone(),
            count: count_u32(b.count),
            follow_ons: b.follow_ons.iter().map(|f| FollowOnCount { title: f.first.title.clone(), count: count_u32(f.count) }).collect(),
        })
        .collect()
    }

    /// Writes summary.md, summary.json, junit.xml and ktap.txt for the current state.
    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        write_atomic(&self.path.join("summary.json"), serde_json::to_string_pretty(&self.run_summary(summary))?.as_bytes())?;
        write_atomic(&self.path.join("summary.md"), self.summary_markdown(summary).as_bytes())?;
        write_atomic(&self.path.join("junit.xml"), self.junit(summary)?.as_bytes())?;
        write_atomic(&self.path.join("ktap.txt"), self.ktap(summary).as_bytes())?;
        Ok(())
    }

    /// The `summary.json` of the current state.
    pub fn run_summary(&self, s: &Summary) -> RunSummary {
        let titles: Vec<&str> = self.crashes.bugs().iter().map(|b| b.first.title.as_str()).collect();
        let follow_ons: Vec<&str> = self.crashes.bugs().iter().flat_map(|b| &b.follow_ons).map(|f| f.first.title.as_str()).collect();
        let why_not = s.why_not(&titles, &follow_ons);
        RunSummary {
            run_id: self.id(),
            scenario: s.scenario.clone(),
            kernel: s.kernel.map(KernelVariant::name).unwrap_or_default().to_string(),
            seed: s.seed,
            titles: self.bugs(),
            holders: s.holders.clone(),
            expected: s.expect.describe(),
            expectation_met: why_not.is_empty(),
            why_not,
            skipped: None,
            aborted: s.aborted.clone(),
            steps_failed: s.steps.iter().filter(|st| !st.ok).count(),
            steps_not_run: s.steps.iter().filter(|st| st.not_run.is_some()).count(),
            steps: s.steps.len(),
            in_progress: s.in_progress,
        }
    }

    fn summary_markdown(&self, s: &Summary) -> String {
        let judged = self.run_summary(s);
        let failed = judged.steps_failed;
        let mut md = format!("# {} — {}\n\n", s.scenario, self.id());
        let clean = self.crashes.bugs().is_empty() && failed == 0 && s.aborted.is_none() && s.signals.is_empty();
        let verdict = if clean { "clean" } else { "FINDINGS" };
        md.push_str(&format!("verdict: **{verdict}**; {} steps, {failed} not ok", s.steps.len()));
        if judged.steps_not_run > 0 {
            md.push_str(&format!(", {} not on this kernel", judged.steps_not_run));
        }
        if let Some(why) = &s.aborted {
            md.push_str(&format!("; stopped early: {why}"));
        }
        let on = s.kernel.map(|k| format!(" on {k}")).unwrap_or_default();
        let met = if judged.expectation_met { "met" } else { "NOT met" };
        md.push_str(&format!("\n\nexpected{on}: {} — **{met}**\n", judged.expected));
        for why in &judged.why_not {
            md.push_str(&format!("- {why}\n"));
        }
        md.push('\n');
        if !s.holders.is_empty() {
            md.push_str("## Holders\n\n| holder | kind | first error |\n|---|---|---|\n");
            for h in &s.holders {
                let first = h.first_error.as_ref().map_or_else(|| "none".to_string(), |e| e.to_string());
                let hung = if h.hung { " (hung)" } else { "" };
                md.push_str(&format!("| {} | {} | {first}{hung} |\n", h.name, h.kind));
            }
            md.push('\n');
        }
        if !self.crashes.bugs().is_empty() {
            md.push_str("## Bugs\n\n| title | type | reports | first seen in step | folder | follow-ons |\n|---|---|---|---|---|---|\n");
            for b in self.crashes.bugs() {
                let c = &b.first;
                let step = c.step.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                let corrupted = c.corrupted.as_ref().map_or_else(String::new, |why| format!(" (corrupted: {why})"));
                let follow_ons: Vec<String> = b.follow_ons.iter().map(|f| format!("{} x{}", f.first.title, f.count)).collect();
                md.push_str(&format!(
                    "| {}{corrupted} | {} | {} | {step} | crashes/{} | {} |\n",
                    c.title,
                    c.kind,
                    b.count,
                    title_hash(&c.title),
                    follow_ons.join(", ")
                ));
            }
            md.push('\n');
        }
        if !s.signals.is_empty() {
            md.push_str("## Signals\n\n");
            for signal in &s.signals {
                md.push_str(&format!("- {signal}\n"));
            }
            md.push('\n');
        }
        let not_ok: Vec<&StepLine> = s.steps.iter().filter(|st| !st.ok).collect();
        if !not_ok.is_empty() {
            md.push_str("## Steps not ok\n\n");
            for st in not_ok {
                md.push_str(&format!("- step {}: {} — {}\n", st.index, st.description, st.detail.as_deref().unwrap_or("")));
            }
            md.push('\n');
        }
        md.push_str("Files: meta.json (reproducer), schedule.json, steps.jsonl, console.log, qmp.log, agent.log, crashes/\n");
        md
    }

    fn junit(&self, s: &Summary) -> Result<String> {
        use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
        let mut suite = TestSuite::new(s.scenario.as_str());
        for st in &s.steps {
            let status = if let Some(why) = &st.not_run {
                let mut skipped = TestCaseStatus::skipped();
                skipped.set_message(why.as_str());
                skipped
            } else if st.ok {
                TestCaseStatus::success()
            } else {
                let mut f = TestCaseStatus::non_success(NonSuccessKind::Failure);
                f.set_message(st.detail.clone().unwrap_or_default());
                f
            };
            let mut case = TestCase::new(format!("step {:03}: {}", st.index, st.description), status);
            case.set_time(std::time::Duration::from_secs_f64(st.elapsed_ms / 1e3));
            suite.add_test_case(case);
        }
        for b in self.crashes.bugs() {
            let c = &b.first;
            let mut f = TestCaseStatus::non_success(NonSuccessKind::Failure);
            f.set_message(format!("{} (seen {} times{})", c.title, b.count, follow_on_note(b))).set_type(c.kind.as_str());
            let mut case = TestCase::new(format!("crash {}: {}", title_hash(&c.title), c.title), f);
            case.set_system_out(c.report.as_str());
            suite.add_test_case(case);
        }
        if let Some(why) = &s.aborted {
            let mut f = TestCaseStatus::non_success(NonSuccessKind::Error);
            f.set_message(why.as_str());
            suite.add_test_case(TestCase::new("run completed", f));
        }
        let mut report = Report::new("unplug-torture");
        report.add_test_suite(suite);
        Ok(report.to_string()?)
    }

    fn ktap(&self, s: &Summary) -> String {
        let total = s.steps.len() + self.crashes.bugs().len() + usize::from(s.aborted.is_some());
        let mut out = format!("KTAP version 1\n# {}\n1..{total}\n", s.scenario);
        let mut n = 0;
        for st in &s.steps {
            n += 1;
            let ok = if st.ok { "ok" } else { "not ok" };
            let skip = st.not_run.as_ref().map_or_else(String::new, |why| format!(" # SKIP {}", ktap_text(why)));
            out.push_str(&format!("{ok} {n} step {}: {}{skip}\n", st.index, ktap_text(&st.description)));
        }
        for b in self.crashes.bugs() {
            n += 1;
            out.push_str(&format!("not ok {n} crash: {} # count {}{}\n", ktap_text(&b.first.title), b.count, ktap_text(&follow_on_note(b))));
        }
        if let Some(why) = &s.aborted {
            out.push_str(&format!("not ok {} run completed # {}\n", n + 1, ktap_text(why)));
        }
        out
    }
}

/// A run folder as found on disk, possibly from a run that was killed half-way: every file
/// is optional, a torn last line of `steps.jsonl` is skipped, and unreadable pieces are
/// reported in `problems` instead of failing the whole view.
#[derive(Debug, Default)]
pub struct RunView {
    pub path: PathBuf,
    /// `meta.json`, kept as JSON so folders from older versions still show.
    pub meta: Option<serde_json::Value>,
    pub steps: Vec<serde_json::Value>,
    pub crashes: Vec<CrashView>,
    /// `summary.md`, absent until the run wrote its first summary.
    pub summary: Option<String>,
    pub problems: Vec<String>,
}

/// One `crashes/<hash>/` folder: a bug.
#[derive(Debug, Clone, PartialEq)]
pub struct CrashView {
    pub hash: String,
    pub title: String,
    pub alt_titles: Vec<String>,
    pub kind: String,
    /// Reports of the bug, follow-ons included.
    pub count: u32,
    pub follow_ons: Vec<FollowOnCount>,
    /// The step it first appeared in, when known.
    pub step: Option<usize>,
    /// Whether `symbolized.txt` is there.
    pub symbolized: bool,
}

impl RunView {
    /// Reads `path`; fails only if it is not a readable directory.
    pub fn load(path: &Path) -> Result<RunView> {
        let entries = std::fs::read_dir(path).with_context(|| format!("{}: not a readable run folder", path.display()))?;
        drop(entries);
        let mut view = RunView { path: path.to_path_buf(), ..RunView::default() };
        let read = |name: &str| -> Option<String> { std::fs::read_to_string(path.join(name)).ok() };
        if let Some(text) = read("meta.json") {
            match serde_json::from_str(&text) {
                Ok(v) => view.meta = Some(v),
                Err(e) => view.problems.push(format!("meta.json: {e}")),
            }
        }
        if let Some(text) = read("steps.jsonl") {
            let lines: Vec<&str> = text.split('\n').collect();
            for (i, line) in lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str(line) {
                    Ok(v) => view.steps.push(v),
                    // Only the last line can be torn by a kill; anything else is damage.
                    Err(_) if i + 1 == lines.len() => view.problems.push("steps.jsonl: torn last line skipped".into()),
                    Err(e) => view.problems.push(format!("steps.jsonl line {}: {e}", i + 1)),
                }
            }
        }
        view.summary = read("summary.md");
        if let Ok(dirs) = std::fs::read_dir(path.join("crashes")) {
            for dir in dirs.flatten() {
                let hash = dir.file_name().to_string_lossy().into_owned();
                let file = |name: &str| std::fs::read_to_string(dir.path().join(name)).ok();
                let Some(title) = file("title") else {
                    view.problems.push(format!("crashes/{hash}: no title (filing was interrupted)"));
                    continue;
                };
                view.crashes.push(CrashView {
                    hash,
                    title: title.trim().to_string(),
                    alt_titles: file("alt_titles").unwrap_or_default().lines().map(str::to_string).collect(),
                    kind: file("type").unwrap_or_default().trim().to_string(),
                    count: file("count").and_then(|c| c.trim().parse().ok()).unwrap_or(1),
                    follow_ons: file("follow_ons")
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| {
                            let (count, title) = l.split_once(' ')?;
                            Some(FollowOnCount { title: title.to_string(), count: count.parse().ok()? })
                        })
                        .collect(),
                    step: file("step").and_then(|c| c.trim().parse().ok()),
                    symbolized: dir.path().join("symbolized.txt").is_file(),
                });
            }
        }
        view.crashes.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.title.cmp(&b.title)));
        Ok(view)
    }

    /// Human-readable overview for `cargo xtask report show`.
    pub fn render(&self) -> String {
        let mut out = format!("run {}\n", self.path.display());
        if let Some(meta) = &self.meta {
            for key in ["scenario", "kernel_variant", "skipped", "seed", "reproducer", "replay", "qemu_version", "accel", "started"] {
                if let Some(v) = meta.get(key).filter(|v| !v.is_null()) {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    out.push_str(&format!("  {key}: {v}\n"));
                }
            }
            if let Some(kernel) = meta.get("kernel") {
                for key in ["label", "release", "source_id", "series", "config_hash"] {
                    if let Some(v) = kernel.get(key).and_then(|v| v.as_str()) {
                        out.push_str(&format!("  kernel.{key}: {v}\n"));
                    }
                }
            }
        } else {
            out.push_str("  (no meta.json)\n");
        }
        out.push_str(&format!("  steps recorded: {}\n", self.steps.len()));
        if self.crashes.is_empty() {
            out.push_str("crashes: none\n");
        } else {
            out.push_str("crashes:\n");
            for c in &self.crashes {
                out.push_str(&format!("  {:>4}x  {:<28} {}  (crashes/{})\n", c.count, c.kind, c.title, c.hash));
                for f in &c.follow_ons {
                    out.push_str(&format!("          follow-on x{}: {}\n", f.count, f.title));
                }
            }
        }
        for p in &self.problems {
            out.push_str(&format!("note: {p}\n"));
        }
        match &self.summary {
            Some(md) => {
                out.push('\n');
                out.push_str(md);
            }
            None => out.push_str("note: no summary.md: the run did not get to write one\n"),
        }
        out
    }
}

/// KTAP lines are single lines and `#` starts a directive.
fn ktap_text(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('#', "%23")
}

/// Short stable id of a crash title (the folder name under `crashes/`).
pub fn title_hash(title: &str) -> String {
    let digest = Sha256::digest(title.as_bytes());
    hex::encode(&digest[..8])
}

/// Writes `bytes` to `path` via a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .sync_data()
        .with_context(|| format!("syncing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(title: &str) -> Crash {
        Crash {
            title: title.into(),
            alt_titles: vec!["bad-access in at24_read".into()],
            kind: "KASAN-USE-AFTER-FREE-READ".into(),
            corrupted: None,
            report: "BUG: KASAN: slab-use-after-free in at24_read\n".into(),
            symbolized: None,
            step: Some(3),
        }
    }

    #[test]
    fn run_folder_layout_and_dedup() {
        let root = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(root.path(), "demo").unwrap();
        let again = RunDir::create(root.path(), "demo").unwrap();
        assert_ne!(run.path(), again.path(), "two runs in the same second get distinct folders");
        run.append_step(&serde_json::json!({"index": 1})).unwrap();
        run.append_step(&serde_json::json!({"index": 2})).unwrap();
        let dir = run.add_crash(&crash("KASAN: slab-use-after-free Read in at24_read")).unwrap();
        run.add_crash(&crash("KASAN: slab-use-after-free Read in at24_read")).unwrap();
        let hang = Crash {
            alt_titles: vec!["hang in i2c_del_adapter".into()],
            kind: "HANG".into(),
            corrupted: Some("cut short: the console ended (the machine stopped)".into()),
            ..crash("INFO: task hung in i2c_del_adapter")
        };
        let hang_dir = run.add_crash(&hang).unwrap();
        assert_eq!(std::fs::read_to_string(hang_dir.join("corrupted")).unwrap(), "cut short: the console ended (the machine stopped)\n");
        assert!(!dir.join("corrupted").exists(), "a whole report has no `corrupted`");
        assert_eq!(std::fs::read_to_string(dir.join("count")).unwrap(), "2\n");
        assert_eq!(run.bugs().len(), 2);
        let summary = Summary {
            scenario: "demo".into(),
            steps: vec![
                StepLine { index: 1, description: "plug cp2112".into(), ok: true, detail: None, elapsed_ms: 5.0, not_run: None, filed_titles: vec![] },
                StepLine { index: 2, description: "unplug # x".into(), ok: false, detail: Some("unplug stuck".into()), elapsed_ms: 1.0, not_run: None, filed_titles: vec![] },
            ],
            aborted: None,
            signals: vec!["step 2: kernel taint gained B".into()],
            ..Summary::default()
        };
        run.write_summary(&summary).unwrap();
        let steps = std::fs::read_to_string(run.path().join("steps.jsonl")).unwrap();
        assert_eq!(steps.lines().count(), 2);
        let ktap = std::fs::read_to_string(run.path().join("ktap.txt")).unwrap();
        assert!(ktap.starts_with("KTAP version 1\n# demo\n1..4\nok 1 step 1: plug cp2112\nnot ok 2 step 2: unplug %23 x\n"), "{ktap}");
        let junit = std::fs::read_to_string(run.path().join("junit.xml")).unwrap();
        assert!(junit.contains("tests=\"4\"") && junit.contains("failures=\"3\""), "{junit}");
        let md = std::fs::read_to_string(run.path().join("summary.md")).unwrap();
        assert!(md.contains("- step 2: kernel taint gained B"), "{md}");
        assert!(md.contains("verdict: **FINDINGS**") && md.contains("| KASAN: slab-use-after-free Read in at24_read | KASAN-USE-AFTER-FREE-READ | 2 | 3 | crashes/"), "{md}");
    }

    fn expectation(yaml: &str) -> Expectation {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    /// summary.json, byte for byte: titles with counts, holders' first errors, the expectation
    /// and why the run misses it (an unexpected title, a missing one, a failed step); a step
    /// not run on this kernel is neither a failure nor a reason.
    #[test]
    fn summary_json_says_what_the_run_showed_and_whether_it_met_its_expectation() {
        use crate::devices::holders::FirstError;
        let root = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(root.path(), "golden").unwrap();
        run.add_crash(&crash("KASAN: slab-use-after-free Read in at24_read")).unwrap();
        run.add_crash(&crash("KASAN: slab-use-after-free Read in at24_read")).unwrap();
        run.add_crash(&Crash { alt_titles: vec![], ..crash("WARNING in free_irq") }).unwrap();
        let step = |index: usize, ok: bool, detail: Option<&str>, not_run: Option<&str>| StepLine {
            index,
            description: format!("step {index}"),
            ok,
            detail: detail.map(str::to_string),
            elapsed_ms: 1.0,
            not_run: not_run.map(str::to_string),
            filed_titles: vec![],
        };
        let summary = Summary {
            scenario: "golden".into(),
            kernel: Some(KernelVariant::Resmgr),
            seed: 348300539442052,
            expect: expectation("{ titles: [\"KASAN: * in at24_read\", \"INFO: task hung in *\"], maybe: [\"KASAN: *\"] }"),
            steps: vec![step(1, true, None, None), step(2, true, None, Some("not on resmgr")), step(3, false, Some("exit status 1"), None)],
            aborted: None,
            stop_title: None,
            signals: vec!["step 3: kernel taint gained B".into()],
            holders: vec![
                HolderState { name: "kernel".into(), kind: "nvmem-kernel".into(), first_error: Some(FirstError { op: "read".into(), errno: Some("ENODEV".into()), revents: None }), hung: false },
                HolderState { name: "raw".into(), kind: "hidraw".into(), first_error: Some(FirstError { op: "poll".into(), errno: None, revents: Some("POLLERR|POLLHUP".into()) }), hung: false },
                HolderState { name: "sysfs".into(), kind: "nvmem-sysfs".into(), first_error: None, hung: true },
            ],
            in_progress: false,
        };
        run.write_summary(&summary).unwrap();
        let id = run.id();
        let json = std::fs::read_to_string(run.path().join("summary.json")).unwrap();
        let golden = r#"{
  "run_id": "ID",
  "scenario": "golden",
  "kernel": "resmgr",
  "seed": 348300539442052,
  "titles": [
    {
      "title": "KASAN: slab-use-after-free Read in at24_read",
      "count": 2,
      "follow_ons": []
    },
    {
      "title": "WARNING in free_irq",
      "count": 1,
      "follow_ons": []
    }
  ],
  "holders": [
    {
      "name": "kernel",
      "kind": "nvmem-kernel",
      "first_error": {
        "op": "read",
        "errno": "ENODEV"
      },
      "hung": false
    },
    {
      "name": "raw",
      "kind": "hidraw",
      "first_error": {
        "op": "poll",
        "revents": "POLLERR|POLLHUP"
      },
      "hung": false
    },
    {
      "name": "sysfs",
      "kind": "nvmem-sysfs",
      "first_error": null,
      "hung": true
    }
  ],
  "expected": "KASAN: * in at24_read | INFO: task hung in *, maybe KASAN: *",
  "expectation_met": false,
  "why_not": [
    "expected title missing: INFO: task hung in *",
    "unexpected title: WARNING in free_irq",
    "step 3 failed: step 3 — exit status 1"
  ],
  "skipped": null,
  "aborted": null,
  "steps_failed": 1,
  "steps_not_run": 1,
  "steps": 3
}"#;
        assert_eq!(json, golden.replace("\"ID\"", &format!("{id:?}")));
        let md = std::fs::read_to_string(run.path().join("summary.md")).unwrap();
        assert!(md.contains("verdict: **FINDINGS**; 3 steps, 1 not ok, 1 not on this kernel\n\nexpected on resmgr: KASAN: * in at24_read | INFO: task hung in *, maybe KASAN: * — **NOT met**\n- expected title missing: INFO: task hung in *\n"), "{md}");
        assert!(md.contains("| kernel | nvmem-kernel | read -> -ENODEV |\n| raw | hidraw | poll -> POLLERR|POLLHUP |\n| sysfs | nvmem-sysfs | none (hung) |\n"), "{md}");
        let ktap = std::fs::read_to_string(run.path().join("ktap.txt")).unwrap();
        assert!(ktap.contains("ok 2 step 2: step 2 # SKIP not on resmgr\n"), "{ktap}");
    }

    /// Signals (taint, a failed observer) are judged only when no crash title explains them;
    /// a run stopped early always misses its expectation.
    #[test]
    fn signals_count_only_without_a_title_and_an_early_stop_always_counts() {
        let summary = Summary { signals: vec!["step 2: observer /proc/interrupts timeout: x".into()], ..Summary::default() };
        assert_eq!(summary.why_not(&[], &[]), ["signal: step 2: observer /proc/interrupts timeout: x"]);
        let expected = Summary { expect: expectation("[\"KASAN: *\"]"), ..summary };
        assert!(expected.why_not(&["KASAN: slab-use-after-free Read in seq_vprintf"], &[]).is_empty());
        let stopped = Summary { aborted: Some("interrupted by the user".into()), ..expected };
        assert_eq!(stopped.why_not(&["KASAN: x"], &[]), ["stopped early: interrupted by the user"]);
    }

    /// A stuck unplug files a title and fails its step. Where the expectation allows the title
    /// (vanilla's PCIe removal that never completes) the step is judged by the title alone and
    /// the run can meet it; elsewhere both the title and the step say why not. An allowed stuck
    /// title excuses nothing else.
    #[test]
    fn an_expected_stuck_unplug_is_judged_by_its_title() {
        let stuck = report::synthetic::unplug_stuck("vi2c", std::time::Duration::from_secs(10)).title;
        let hung = "INFO: task hung in virtio_i2c_remove";
        let line = |index: usize, ok: bool, detail: &str, filed: Option<&str>| StepLine {
            index,
            description: format!("step {index}"),
            ok,
            detail: Some(detail.to_string()).filter(|d| !d.is_empty()),
            elapsed_ms: 1.0,
            not_run: None,
            filed_titles: filed.map(str::to_string).into_iter().collect(),
        };
        let steps = vec![line(1, true, "", None), line(2, false, "unplug stuck: no DEVICE_DELETED for \"vi2c\" within 10s", Some(&stuck))];
        let vanilla = Summary { expect: expectation(&format!("[\"{stuck}\", \"INFO: task hung in *\"]")), steps: steps.clone(), ..Summary::default() };
        assert_eq!(vanilla.why_not(&[&stuck, hung], &[]), Vec::<String>::new());
        // Allowed by `maybe` or a glob just the same.
        let maybe = Summary { expect: expectation("{ titles: [\"INFO: task hung in *\"], maybe: [\"unplug stuck: *\"] }"), ..vanilla.clone() };
        assert_eq!(maybe.why_not(&[&stuck, hung], &[]), Vec::<String>::new());
        // The removal completed after all: the expected title is missing.
        let completed = Summary { steps: vec![line(1, true, "", None), line(2, true, "", None)], ..vanilla.clone() };
        assert_eq!(completed.why_not(&[hung], &[]), [format!("expected title missing: {stuck}")]);
        // Not expected (resmgr: clean): the title and the failed step.
        let resmgr = Summary { steps: steps.clone(), ..Summary::default() };
        assert_eq!(
            resmgr.why_not(&[&stuck], &[]),
            [format!("unexpected title: {stuck}"), "step 2 failed: step 2 — unplug stuck: no DEVICE_DELETED for \"vi2c\" within 10s".to_string()]
        );
        // Another failed step still fails the run, and so does a stuck unplug of another device.
        let other = StepLine { filed_titles: vec![report::synthetic::unplug_stuck("bridge", std::time::Duration::ZERO).title], ..line(3, false, "stuck too", None) };
        let more = Summary { steps: vec![steps[0].clone(), steps[1].clone(), line(4, false, "exit status 1", None), other], ..vanilla };
        assert_eq!(more.why_not(&[&stuck, hung], &[]), ["step 4 failed: step 4 — exit status 1", "step 3 failed: step 3 — stuck too"]);
    }

    /// An oops that kills the agent's thread inside a late close leaves the release step
    /// without an answer: it fails, and filed the oops' title while it ran. Where the
    /// expectation allows that title (6.1's NULL `gdev->chip` in `gpio_desc_to_lineinfo`) the
    /// step is judged by it; a failed step that filed nothing, or only a title the expectation
    /// does not allow, still counts, and so does the oops where the kernel should stay clean.
    #[test]
    fn a_step_killed_by_an_expected_oops_is_judged_by_its_title() {
        let oops = "general protection fault in gpio_desc_to_lineinfo";
        let step = |index: usize, ok: bool, filed: &[&str]| StepLine {
            index,
            description: format!("step {index}"),
            ok,
            detail: Some("timed out".to_string()).filter(|_| !ok),
            elapsed_ms: 1.0,
            not_run: None,
            filed_titles: filed.iter().map(|t| t.to_string()).collect(),
        };
        let killed = vec![step(1, true, &[]), step(2, true, &[]), step(3, false, &[oops])];
        let on_6_1 = Summary { expect: expectation(&format!("[\"{oops}\"]")), steps: killed.clone(), ..Summary::default() };
        assert_eq!(on_6_1.why_not(&[oops], &[]), Vec::<String>::new());
        // The expected title, but from another step: the failed step filed nothing.
        let elsewhere = Summary { steps: vec![step(1, true, &[]), step(2, true, &[oops]), step(3, false, &[])], ..on_6_1.clone() };
        assert_eq!(elsewhere.why_not(&[oops], &[]), ["step 3 failed: step 3 — timed out"]);
        // A title the expectation does not allow excuses nothing.
        let warning = "WARNING in gpiod_free_commit";
        let other = Summary { steps: vec![step(1, true, &[]), step(2, true, &[]), step(3, false, &[warning])], ..on_6_1.clone() };
        assert_eq!(other.why_not(&[oops, warning], &[]), [format!("unexpected title: {warning}"), "step 3 failed: step 3 — timed out".to_string()]);
        // Expected clean (6.12): the title and the step.
        let on_6_12 = Summary { steps: killed, ..Summary::default() };
        assert_eq!(on_6_12.why_not(&[oops], &[]), [format!("unexpected title: {oops}"), "step 3 failed: step 3 — timed out".to_string()]);
    }

    /// A guest stop (here an agent that stopped answering after a step timed out) files its
    /// title. Where the expectation allows it (a bug known to wedge the guest), the stop and
    /// the step that set it off are judged by the title; the expected titles must still be
    /// there, an earlier failed step still counts, and a stop the expectation does not allow
    /// (or one with no title: an interrupt) still misses it.
    #[test]
    fn an_expected_guest_stop_is_judged_by_its_title() {
        let wedge = "guest agent unresponsive";
        let bug = "BUG: scheduling while atomic in irq_shutdown";
        let line = |index: usize, ok: bool| StepLine {
            index,
            description: format!("step {index}"),
            ok,
            detail: (!ok).then(|| "timed out".to_string()),
            elapsed_ms: 1.0,
            not_run: None,
            filed_titles: vec![],
        };
        let stopped = Summary {
            expect: expectation(&format!("{{ titles: [\"{bug}\"], maybe: [\"{wedge}\"] }}")),
            steps: vec![line(1, true), line(2, false)],
            aborted: Some("agent_unresponsive".into()),
            stop_title: Some(wedge.into()),
            signals: vec!["run stopped: agent_unresponsive".into()],
            ..Summary::default()
        };
        assert_eq!(stopped.why_not(&[bug, wedge], &[]), Vec::<String>::new());
        // The wedge without the bug it is expected from.
        assert_eq!(stopped.why_not(&[wedge], &[]), [format!("expected title missing: {bug}")]);
        // A step that failed before the last one is not excused.
        let earlier = Summary { steps: vec![line(1, false), line(2, false)], ..stopped.clone() };
        assert_eq!(earlier.why_not(&[bug, wedge], &[]), ["step 1 failed: step 1 — timed out"]);
        // Not allowed (resmgr: clean): the title, the step and the stop.
        let clean = Summary { expect: Expectation::default(), ..stopped.clone() };
        assert_eq!(
            clean.why_not(&[wedge], &[]),
            [format!("unexpected title: {wedge}"), "step 2 failed: step 2 — timed out".into(), "stopped early: agent_unresponsive".into()]
        );
        // An interrupt files no title: it always misses.
        let interrupted = Summary { stop_title: None, aborted: Some("interrupted by SIGINT".into()), ..stopped };
        assert_eq!(
            interrupted.why_not(&[bug], &[]),
            ["step 2 failed: step 2 — timed out", "stopped early: interrupted by SIGINT"]
        );
    }

    /// A holder the expectation names in `refused` must have seen an error by the run's end:
    /// a clean run whose holder never reached the removed provider misses, as does one that
    /// has no such holder at all.
    #[test]
    fn a_clean_run_whose_holder_was_never_refused_misses() {
        use crate::devices::holders::{FirstError, HolderState};
        let holder = |first_error| HolderState { name: "aggregated".into(), kind: "gpio-aggregator".into(), first_error, hung: false };
        let enodev = FirstError { op: "GPIO_V2_LINE_GET_VALUES_IOCTL".into(), errno: Some("ENODEV".into()), revents: None };
        let refused = Summary {
            expect: Expectation { refused: vec!["aggregated".into()], ..Expectation::default() },
            holders: vec![holder(Some(enodev))],
            ..Summary::default()
        };
        assert_eq!(refused.why_not(&[], &[]), Vec::<String>::new());
        let never = "holder aggregated was never refused: no use of it reached the removed provider";
        let unrefused = Summary { holders: vec![holder(None)], ..refused.clone() };
        assert_eq!(unrefused.why_not(&[], &[]), [never]);
        let absent = Summary { holders: Vec::new(), ..refused };
        assert_eq!(absent.why_not(&[], &[]), [never]);
    }

    /// The same through a run folder: the synthetic report filed, summary.json says the
    /// expectation is met while the step stays not ok (a finding, shown as such).
    #[test]
    fn an_expected_stuck_unplug_meets_the_expectation_in_summary_json() {
        let root = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(root.path(), "stuck").unwrap();
        let stuck = report::synthetic::unplug_stuck("vi2c", std::time::Duration::from_secs(10));
        run.add_report(&stuck, Some(2), None).unwrap();
        let summary = Summary {
            scenario: "stuck".into(),
            kernel: Some(KernelVariant::Vanilla),
            expect: expectation(&format!("[\"{}\"]", stuck.title)),
            steps: vec![StepLine {
                index: 2,
                description: "unplug vi2c (graceful)".into(),
                ok: false,
                detail: Some("unplug stuck".into()),
                elapsed_ms: 10_000.0,
                not_run: None,
                filed_titles: vec![stuck.title.clone()],
            }],
            ..Summary::default()
        };
        run.write_summary(&summary).unwrap();
        let json: RunSummary = serde_json::from_str(&std::fs::read_to_string(run.path().join("summary.json")).unwrap()).unwrap();
        assert!(json.expectation_met, "{json:?}");
        assert_eq!((json.steps_failed, json.titles.len()), (1, 1));
        let md = std::fs::read_to_string(run.path().join("summary.md")).unwrap();
        assert!(md.contains("verdict: **FINDINGS**; 1 steps, 1 not ok") && md.contains("— **met**"), "{md}");
    }

    #[test]
    fn reports_dedup_by_alternate_titles() {
        let root = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(root.path(), "dedup").unwrap();
        let a = crash("KASAN: use-after-free Read in __x64_sys_read");
        let mut b = crash("KASAN: use-after-free Read in sys_read");
        b.alt_titles.push("KASAN: use-after-free Read in __x64_sys_read".into());
        let first = run.add_crash(&a).unwrap();
        assert_eq!(run.add_crash(&b).unwrap(), first);
        assert_eq!(run.bugs(), vec![TitleCount { title: a.title.clone(), count: 2, follow_ons: vec![] }]);
        let stuck = report::synthetic::unplug_stuck("cp2112-0", std::time::Duration::from_secs(10));
        let dir = run.add_report(&stuck, Some(4), None).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("type")).unwrap(), "UNPLUG_STUCK\n");
    }

    /// A KASAN report of a read in `func` of the kmalloc-256 object at `addr`, allocated in
    /// probe and freed by release_nodes.
    fn object_crash(func: &str, addr: &str) -> Crash {
        let report = format!(
            "BUG: KASAN: slab-use-after-free in {func}+0x1/0x2\nRead of size 8 at addr {addr} by task cat/9\n\n\
             Allocated by task 1:\n kasan_save_track+0x1/0x2\n probe+0x1/0x2\n\n\
             Freed by task 2:\n kasan_save_track+0x1/0x2\n kfree+0x1/0x2\n release_nodes+0x1/0x2\n\n\
             The buggy address belongs to the object at {addr}\n which belongs to the cache kmalloc-256 of size 256\n"
        );
        Crash { alt_titles: vec![], report, ..crash(&format!("KASAN: slab-use-after-free Read in {func}")) }
    }

    /// Follow-ons on the same freed object are counted in the first report's bug: one folder,
    /// one entry in summary.json with the follow-ons listed, one title judged.
    #[test]
    fn follow_ons_are_filed_under_the_first_reports_bug() {
        let root = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(root.path(), "bugs").unwrap();
        let dir = run.add_crash_times(&object_crash("at24_read", "ffff888001000000"), 9).unwrap();
        assert_eq!(run.add_crash_times(&object_crash("regmap_readable", "ffff888001000000"), 120).unwrap(), dir);
        run.add_crash_times(&object_crash("regmap_volatile", "ffff888001000000"), 94).unwrap();
        run.add_crash_times(&object_crash("regmap_readable", "ffff888001000000"), 1).unwrap();
        let other = run.add_crash(&object_crash("elsewhere", "ffff888009000000")).unwrap();
        assert_ne!(other, dir);
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("count"), "224\n");
        assert_eq!(read("title"), "KASAN: slab-use-after-free Read in at24_read\n");
        assert_eq!(read("follow_ons"), "121 KASAN: slab-use-after-free Read in regmap_readable\n94 KASAN: slab-use-after-free Read in regmap_volatile\n");
        let follow_on = dir.join("follow-ons").join(format!("{}.txt", title_hash("KASAN: slab-use-after-free Read in regmap_volatile")));
        assert!(std::fs::read_to_string(follow_on).unwrap().starts_with("BUG: KASAN: slab-use-after-free in regmap_volatile"));
        let summary = Summary { expect: expectation("[\"KASAN: * in at24_read\"]"), ..Summary::default() };
        let json = run.run_summary(&summary);
        assert_eq!(json.titles.len(), 2);
        assert_eq!((json.titles[0].count, json.titles[0].follow_ons.len()), (224, 2));
        assert_eq!(json.titles[0].follow_ons[0], FollowOnCount { title: "KASAN: slab-use-after-free Read in regmap_readable".into(), count: 121 });
        // Only bug titles are judged: the follow-ons need no `maybe`, the other bug does.
        assert_eq!(json.why_not, ["unexpected title: KASAN: slab-use-after-free Read in elsewhere"]);
        let view = RunView::load(run.path()).unwrap();
        let bug = view.crashes.iter().find(|c| c.count == 224).unwrap();
        assert_eq!(bug.follow_ons.len(), 2);
        assert!(view.render().contains("          follow-on x94: KASAN: slab-use-after-free Read in regmap_volatile\n"));
        run.write_summary(&summary).unwrap();
        let md = std::fs::read_to_string(run.path().join("summary.md")).unwrap();
        assert!(md.contains("| 224 | 3 | crashes/") && md.contains("| KASAN: slab-use-after-free Read in regmap_readable x121, KASAN: slab-use-after-free Read in regmap_volatile x94 |"), "{md}");
    }

    #[test]
    fn partially_written_run_is_readable() {
        let root = tempfile::tempdir().unwrap();
        let mut run = RunDir::create(root.path(), "killed").unwrap();
        run.write_json("meta.json", &serde_json::json!({"scenario": "s1", "seed": 7, "reproducer": "cargo xtask torture s1 --seed 7"}))
            .unwrap();
        run.append_step(&serde_json::json!({"index": 1})).unwrap();
        let log = b"[   30.1][  T120] BUG: KASAN: slab-use-after-free in at24_read+0x1b/0x40\n\
                    [   30.1][  T120] Read of size 8 at addr ffff888003b1c400 by task cat/120\n\
                    [   30.1][  T120] Call Trace:\n[   30.1][  T120]  at24_read+0x1b/0x40\n\
                    [   30.1][  T120]  nvmem_reg_read+0x1/0x2\n[   30.1][  T120]  vfs_read+0x1/0x2\n";
        for r in report::parse(log) {
            run.add_report(&r, Some(1), None).unwrap();
        }
        // Simulate a kill: a torn step line and a crash folder whose files were never written.
        std::fs::OpenOptions::new().append(true).open(run.path().join("steps.jsonl")).unwrap().write_all(b"{\"ind").unwrap();
        std::fs::create_dir_all(run.path().join("crashes/deadbeef")).unwrap();
        let view = RunView::load(run.path()).unwrap();
        assert_eq!(view.steps.len(), 1);
        assert_eq!(view.crashes.len(), 1);
        assert_eq!(view.crashes[0].title, "KASAN: slab-use-after-free Read in at24_read");
        assert_eq!(view.crashes[0].kind, "KASAN-USE-AFTER-FREE-READ");
        assert!(view.summary.is_none());
        assert_eq!(view.problems.len(), 2, "{:?}", view.problems);
        let text = view.render();
        assert!(text.contains("scenario: s1") && text.contains("1x  KASAN-USE-AFTER-FREE-READ"), "{text}");
        assert!(text.contains("did not get to write one"), "{text}");
        assert!(RunView::load(&root.path().join("missing")).is_err());
    }

    #[test]
    fn atomic_write_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("a.json"), b"{}").unwrap();
        write_atomic(&dir.path().join("a.json"), b"{\"x\":1}").unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["a.json"]);
        assert_eq!(std::fs::read_to_string(dir.path().join("a.json")).unwrap(), "{\"x\":1}");
    }

    #[test]
    fn a_skipped_run_leaves_meta_and_summary_that_report_show_reads() {
        let dir = tempfile::tempdir().unwrap();
        let repro = "cargo xtask torture --scenario s --kernel resmgr --seed 1";
        let path = record_skip(dir.path(), "s", "vanilla", 1, "applies to: resmgr", repro).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, vec!["index.html", "meta.json", "summary.json", "summary.md"]);
        let summary: RunSummary = serde_json::from_str(&std::fs::read_to_string(path.join("summary.json")).unwrap()).unwrap();
        assert_eq!((summary.skipped.as_deref(), summary.expectation_met, summary.seed), (Some("applies to: resmgr"), true, 1));
        let meta: SkipMeta = serde_json::from_str(&std::fs::read_to_string(path.join("meta.json")).unwrap()).unwrap();
        assert_eq!((meta.scenario.as_str(), meta.kernel_variant.as_str(), meta.skipped.as_str()), ("s", "vanilla", "applies to: resmgr"));
        let shown = RunView::load(&path).unwrap().render();
        assert!(shown.contains("  skipped: applies to: resmgr\n") && shown.contains("  kernel_variant: vanilla\n"), "{shown}");
        assert!(shown.contains("verdict: **skipped** on vanilla (applies to: resmgr)"), "{shown}");
        // A second skip in the same second gets its own folder.
        assert_ne!(record_skip(dir.path(), "s", "vanilla", 1, "applies to: resmgr", repro).unwrap(), path);
    }
}
