//! The summary of many runs: what `torture` prints and writes at its end and what `results
//! merge` makes of shard folders. Read from the run folders themselves (their `summary.json`,
//! `meta.json` and `schedule.json`), so a merged summary and a single run's say the same.
//!
//! - every run with its verdict: met, not met, skipped, or incomplete (a folder without an
//!   ended `summary.json`: killed; or a matrix cell no folder was found for);
//! - reproduction rates: per scenario, kernel and crash title, in how many of the runs that
//!   ended the title appeared (`7/10`), and against the baseline (the first kernel) whether
//!   another kernel fixed it, still shows it, or brought it;
//! - the A/B tables per scenario and seed (`harness::judge::ab`);
//! - the gate ([`Tally::exit_code`]): 0 when every run met its expectation, 1 when one did
//!   not or showed a title its scenario's expectation does not list for that kernel, 2 when
//!   the tally itself is in doubt (an incomplete run, an unreadable file, a missing shard).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::judge::ab::{self, Change};
use crate::drive::matrix::{Cell, MatrixRecord, Shard, MATRIX_PREFIX};
use crate::judge::results::RunSummary;
use crate::drive::scenario::KernelVariant;
use crate::drive::schedule::Schedule;

/// One run (or a cell that should have been one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub scenario: String,
    pub kernel: String,
    pub seed: u64,
    /// 1-based, of `repeats` (1 of 1 for runs recorded before `--repeat`).
    pub repeat: u32,
    pub repeats: u32,
    /// The run folder; `None` for a matrix cell no folder was found for.
    pub dir: Option<PathBuf>,
    pub verdict: Verdict,
    /// Crash titles the scenario's expectation for this kernel does not list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlisted: Vec<String>,
    /// What `summary.json` says, when it says it at the end of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<RunSummary>,
}

/// How one run came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "why")]
pub enum Verdict {
    Met,
    NotMet(Vec<String>),
    Skipped(String),
    /// No ended summary: why.
    Incomplete(String),
}

impl Verdict {
    fn name(&self) -> &'static str {
        match self {
            Verdict::Met => "as expected",
            Verdict::NotMet(_) => "NOT as expected",
            Verdict::Skipped(_) => "skipped",
            Verdict::Incomplete(_) => "incomplete",
        }
    }
}

impl Entry {
    /// Reads the run folder `dir`; whatever is missing or broken makes it incomplete, with the
    /// file (and line and column) that says why.
    pub fn load(dir: &Path) -> Entry {
        let folder = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut entry = Entry {
            scenario: String::new(),
            kernel: String::new(),
            seed: 0,
            repeat: 1,
            repeats: 1,
            dir: Some(dir.to_path_buf()),
            verdict: Verdict::Met,
            unlisted: Vec::new(),
            summary: None,
        };
        // Who the run is, from meta.json read loosely: a run's, a skip's, or one cut short.
        let meta: serde_json::Value =
            std::fs::read_to_string(dir.join("meta.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        let text = |key: &str| meta.get(key).and_then(|v| v.as_str()).map(str::to_string);
        entry.scenario = text("scenario").unwrap_or(folder);
        entry.kernel = text("kernel_variant").unwrap_or_default();
        entry.seed = meta.get("seed").and_then(|v| v.as_u64()).unwrap_or_default();
        if let Some(Ok(r)) = meta.get("repeat").filter(|r| !r.is_null()).map(|r| serde_json::from_value::<crate::drive::matrix::RepeatMeta>(r.clone())) {
            (entry.repeat, entry.repeats) = (r.index, r.of);
        }
        let summary_path = dir.join("summary.json");
        let summary: RunSummary = match std::fs::read_to_string(&summary_path) {
            Err(_) => {
                entry.verdict = Verdict::Incomplete("no summary.json: the run was killed before writing one".into());
                return entry;
            }
            Ok(text) => match serde_json::from_str(&text) {
                Ok(s) => s,
                Err(e) => {
                    let why = format!("{}:{}:{}: not a run summary: {e}", summary_path.display(), e.line(), e.column());
                    entry.verdict = Verdict::Incomplete(why);
                    return entry;
                }
            },
        };
        (entry.scenario, entry.kernel, entry.seed) = (summary.scenario.clone(), summary.kernel.clone(), summary.seed);
        if summary.in_progress {
            entry.verdict =
                Verdict::Incomplete(format!("{}: {} ({} steps recorded)", summary_path.display(), crate::judge::results::IN_PROGRESS, summary.steps));
            return entry;
        }
        if let Some(why) = &summary.skipped {
            entry.verdict = Verdict::Skipped(why.clone());
            entry.summary = Some(summary);
            return entry;
        }
        // The titles are judged again against the expectation the run recorded, for the gate.
        match Schedule::load(&dir.join("schedule.json")) {
            Ok(schedule) => {
                let expect = KernelVariant::ALL
                    .into_iter()
                    .find(|k| k.name() == summary.kernel)
                    .and_then(|k| schedule.expect.get(&k).cloned())
                    .unwrap_or_default();
                entry.unlisted = summary
                    .titles
                    .iter()
                    .filter(|t| !expect.titles.iter().chain(&expect.maybe).any(|p| p.matches(&t.title)))
                    .map(|t| t.title.clone())
                    .collect();
            }
            Err(e) => {
                entry.verdict = Verdict::Incomplete(e.to_string());
                return entry;
            }
        }
        entry.verdict = if summary.expectation_met && entry.unlisted.is_empty() {
            Verdict::Met
        } else {
            let mut why = summary.why_not.clone();
            for t in &entry.unlisted {
                let line = format!("unexpected title: {t}");
                if !why.contains(&line) {
                    why.push(line);
                }
            }
            Verdict::NotMet(why)
        };
        entry.summary = Some(summary);
        entry
    }

    /// `NAME on KERNEL` (with `#r/N` when repeated).
    pub fn label(&self) -> String {
        let repeat = if self.repeats > 1 { format!(" #{}/{}", self.repeat, self.repeats) } else { String::new() };
        format!("{} on {}{repeat}", self.scenario, self.kernel)
    }

    fn ended(&self) -> bool {
        matches!(self.verdict, Verdict::Met | Verdict::NotMet(_))
    }
}

/// The rates of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioRates {
    pub scenario: String,
    /// Per kernel (the tally's order): how many runs ended and met their expectation.
    pub kernels: Vec<KernelRuns>,
    pub titles: Vec<TitleRate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRuns {
    pub kernel: String,
    /// Runs that ended (met or not); skips and incomplete runs are not counted.
    pub runs: u32,
    pub met: u32,
    pub skipped: u32,
    pub incomplete: u32,
}

/// One crash title: in how many ended runs of each kernel it appeared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TitleRate {
    pub title: String,
    /// Per kernel, of that kernel's `runs`.
    pub hits: Vec<u32>,
    /// Per kernel after the baseline, against it (`None`: a side had no ended run, or
    /// neither showed the title).
    pub changes: Vec<Option<Change>>,
}

/// `a/b`.
pub fn rate(hits: u32, runs: u32) -> String {
    format!("{hits}/{runs}")
}

/// Everything the summary says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// The kernels, the baseline first.
    pub kernels: Vec<String>,
    pub entries: Vec<Entry>,
    pub rates: Vec<ScenarioRates>,
    pub ab: Vec<ab::Comparison>,
    /// Problems with the inputs themselves (a missing shard, an unreadable matrix record).
    pub errors: Vec<String>,
}

impl Tally {
    /// The tally of `entries` over `kernels` (baseline first; kernels only entries name are
    /// added after them).
    pub fn new(kernels: &[String], mut entries: Vec<Entry>, errors: Vec<String>) -> Tally {
        let mut kernels = kernels.to_vec();
        for e in &entries {
            if !e.kernel.is_empty() && !kernels.contains(&e.kernel) {
                kernels.push(e.kernel.clone());
            }
        }
        let kernel_index = |k: &str| kernels.iter().position(|x| x == k).unwrap_or(usize::MAX);
        entries.sort_by(|a, b| (&a.scenario, a.repeat, a.seed, kernel_index(&a.kernel)).cmp(&(&b.scenario, b.repeat, b.seed, kernel_index(&b.kernel))));
        let scenarios: Vec<String> = entries.iter().map(|e| e.scenario.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let rates = scenarios.iter().map(|s| scenario_rates(s, &kernels, &entries)).collect();
        let ab = if kernels.len() >= 2 { comparisons(&kernels, &entries) } else { Vec::new() };
        Tally { kernels, entries, rates, ab, errors }
    }

    /// [`Tally::new`] with an incomplete entry for each of `cells` no entry is the run of.
    pub fn for_cells(kernels: &[String], cells: &[Cell], mut entries: Vec<Entry>, errors: Vec<String>) -> Tally {
        for cell in cells {
            let found = entries.iter().any(|e| e.scenario == cell.scenario && e.kernel == cell.kernel.name() && e.seed == cell.seed);
            if !found {
                entries.push(missing(cell));
            }
        }
        Tally::new(kernels, entries, errors)
    }

    /// 0: every run met its expectation; 1: one did not, or showed a title its expectation
    /// does not list; 2: an error, or a run that did not end (the gate cannot judge it).
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() || self.entries.iter().any(|e| matches!(e.verdict, Verdict::Incomplete(_))) {
            2
        } else if self.entries.iter().any(|e| matches!(e.verdict, Verdict::NotMet(_)) || !e.unlisted.is_empty()) {
            1
        } else {
            0
        }
    }

    /// `N run(s): M as expected, X not, S skipped, I incomplete`.
    pub fn headline(&self) -> String {
        let count = |f: fn(&Verdict) -> bool| self.entries.iter().filter(|e| f(&e.verdict)).count();
        format!(
            "{} run(s): {} as expected, {} not, {} skipped, {} incomplete",
            self.entries.len(),
            count(|v| matches!(v, Verdict::Met)),
            count(|v| matches!(v, Verdict::NotMet(_))),
            count(|v| matches!(v, Verdict::Skipped(_))),
            count(|v| matches!(v, Verdict::Incomplete(_))),
        )
    }

    /// The rate tables as Markdown: per scenario, the expectation met and each title.
    pub fn rates_markdown(&self) -> String {
        let mut md = String::from("## Reproduction rates\n\n");
        let versus: Vec<String> = self.kernels.iter().skip(1).map(|k| format!("{k} vs {}", self.kernels[0])).collect();
        let columns: Vec<String> = self.kernels.iter().cloned().chain(versus).collect();
        for s in &self.rates {
            md.push_str(&format!("### {}\n\n| | {} |\n|---|{}\n", s.scenario, columns.join(" | "), "---|".repeat(columns.len())));
            let blank = vec![String::new(); self.kernels.len().saturating_sub(1)];
            let met: Vec<String> = s.kernels.iter().map(|k| kernel_cell(k, k.met)).chain(blank).collect();
            md.push_str(&format!("| expectation met | {} |\n", met.join(" | ")));
            for t in &s.titles {
                let cells: Vec<String> = s
                    .kernels
                    .iter()
                    .zip(&t.hits)
                    .map(|(k, &hits)| kernel_cell(k, hits))
                    .chain(t.changes.iter().map(|c| c.map_or("-", Change::name).to_string()))
                    .collect();
                md.push_str(&format!("| {} | {} |\n", t.title, cells.join(" | ")));
            }
            md.push('\n');
        }
        md
    }

    /// The whole summary as Markdown (what `summary.md` holds and CI pastes).
    pub fn markdown(&self) -> String {
        let mut md = format!("# unplug-torture: {}\n\nkernels: {}", self.headline(), self.kernels.join(", "));
        if self.kernels.len() > 1 {
            md.push_str(&format!(" (baseline {})", self.kernels[0]));
        }
        md.push_str(&format!("; gate: exit {}\n\n", self.exit_code()));
        if !self.errors.is_empty() {
            md.push_str("## Errors\n\n");
            for e in &self.errors {
                md.push_str(&format!("- {e}\n"));
            }
            md.push('\n');
        }
        let troubled: Vec<&Entry> = self.entries.iter().filter(|e| matches!(e.verdict, Verdict::NotMet(_) | Verdict::Incomplete(_))).collect();
        if !troubled.is_empty() {
            md.push_str("## Runs not as expected or incomplete\n\n");
            for e in troubled {
                let dir = e.dir.as_ref().map_or_else(|| "no run folder".to_string(), |d| d.display().to_string());
                md.push_str(&format!("- {} (seed {}): {} — {dir}\n", e.label(), e.seed, e.verdict.name()));
                match &e.verdict {
                    Verdict::NotMet(why) => why.iter().for_each(|w| md.push_str(&format!("  - {w}\n"))),
                    Verdict::Incomplete(why) => md.push_str(&format!("  - {why}\n")),
                    _ => {}
                }
            }
            md.push('\n');
        }
        md.push_str(&self.rates_markdown());
        if !self.ab.is_empty() {
            md.push_str(&ab::markdown(&self.ab).replacen("# A/B", "## A/B", 1).replace("\n## ", "\n### "));
        }
        md
    }

    /// Writes `dir/summary.json` and `dir/summary.md` (atomically; `dir` is created).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::judge::results::write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(self)?.as_bytes())?;
        crate::judge::results::write_atomic(&dir.join("summary.md"), self.markdown().as_bytes())?;
        Ok(())
    }
}

/// `hits/runs` of kernel `k` (`skipped` when it has only skips, `-` when nothing ended).
fn kernel_cell(k: &KernelRuns, hits: u32) -> String {
    let incomplete = if k.incomplete > 0 { format!(" (+{} incomplete)", k.incomplete) } else { String::new() };
    match (k.runs, k.skipped) {
        (0, s) if s > 0 => format!("skipped{incomplete}"),
        (0, _) => format!("-{incomplete}"),
        (runs, _) => format!("{}{incomplete}", rate(hits, runs)),
    }
}

fn scenario_rates(scenario: &str, kernels: &[String], entries: &[Entry]) -> ScenarioRates {
    fn of<'a>(entries: &'a [Entry], scenario: &'a str, k: &'a str) -> impl Iterator<Item = &'a Entry> {
        entries.iter().filter(move |e| e.scenario == scenario && e.kernel == k)
    }
    let runs: Vec<KernelRuns> = kernels
        .iter()
        .map(|k| KernelRuns {
            kernel: k.clone(),
            runs: of(entries, scenario, k).filter(|e| e.ended()).count() as u32,
            met: of(entries, scenario, k).filter(|e| e.verdict == Verdict::Met).count() as u32,
            skipped: of(entries, scenario, k).filter(|e| matches!(e.verdict, Verdict::Skipped(_))).count() as u32,
            incomplete: of(entries, scenario, k).filter(|e| matches!(e.verdict, Verdict::Incomplete(_))).count() as u32,
        })
        .collect();
    let mut titles: Vec<String> = Vec::new();
    for e in entries.iter().filter(|e| e.scenario == scenario && e.ended()) {
        for t in e.summary.iter().flat_map(|s| &s.titles) {
            if !titles.contains(&t.title) {
                titles.push(t.title.clone());
            }
        }
    }
    let titles = titles
        .into_iter()
        .map(|title| {
            let shows = |e: &Entry| e.summary.as_ref().is_some_and(|s| s.titles.iter().any(|t| t.title == title));
            let hits: Vec<u32> = kernels.iter().map(|k| of(entries, scenario, k).filter(|e| e.ended() && shows(e)).count() as u32).collect();
            let changes = (1..kernels.len())
                .map(|i| (runs[0].runs > 0 && runs[i].runs > 0).then(|| Change::of(hits[0] > 0, hits[i] > 0)).flatten())
                .collect();
            TitleRate { title, hits, changes }
        })
        .collect();
    ScenarioRates { scenario: scenario.to_string(), kernels: runs, titles }
}

/// One A/B comparison per scenario and seed, with a summary per kernel (a kernel with no
/// ended or skipped run there shows as skipped with the reason).
fn comparisons(kernels: &[String], entries: &[Entry]) -> Vec<ab::Comparison> {
    let mut keys: Vec<(&str, u64)> = Vec::new();
    for e in entries {
        if !keys.contains(&(e.scenario.as_str(), e.seed)) {
            keys.push((&e.scenario, e.seed));
        }
    }
    keys.into_iter()
        .map(|(scenario, seed)| {
            let mut dirs: Vec<&Path> = Vec::new();
            let sides: Vec<RunSummary> = kernels
                .iter()
                .map(|k| {
                    let entry = entries.iter().find(|e| e.scenario == scenario && e.seed == seed && &e.kernel == k);
                    match entry.and_then(|e| Some((e, e.summary.as_ref()?))) {
                        Some((e, summary)) => {
                            if e.ended() {
                                dirs.extend(e.dir.as_deref());
                            }
                            summary.clone()
                        }
                        None => {
                            let why = match entry.map(|e| &e.verdict) {
                                Some(Verdict::Incomplete(why)) => format!("incomplete: {why}"),
                                _ => "not run".to_string(),
                            };
                            RunSummary { expectation_met: false, ..RunSummary::skipped(scenario, k, seed, &why) }
                        }
                    }
                })
                .collect();
            ab::compare(&sides, ab::same_schedule(&dirs))
        })
        .collect()
}

/// `results merge`: every run folder under `roots` (a folder holding `meta.json` or
/// `steps.jsonl`) and every matrix record (`matrix-*.json`); each recorded cell without a run
/// folder is an incomplete entry, and every shard 1..N of a recorded split must be there.
pub fn merge(roots: &[PathBuf]) -> Tally {
    let mut entries: Vec<Entry> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut records: Vec<MatrixRecord> = Vec::new();
    for root in roots {
        let listing = match std::fs::read_dir(root) {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("{}: not a readable results folder: {e}", root.display()));
                continue;
            }
        };
        let mut paths: Vec<PathBuf> = listing.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if path.is_dir() && (path.join("meta.json").exists() || path.join("steps.jsonl").exists()) {
                entries.push(Entry::load(&path));
            } else if path.is_file() && name.starts_with(MATRIX_PREFIX) && name.ends_with(".json") {
                match MatrixRecord::load(&path) {
                    Ok(r) => records.push(r),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
        }
    }
    let kernels: Vec<String> = records.first().map(|r| r.kernels.iter().map(|k| k.name().to_string()).collect()).unwrap_or_default();
    errors.extend(missing_shards(&records));
    if records.is_empty() {
        errors.push("no matrix record (matrix-*.json) among the folders: runs that never started cannot be told apart".into());
    }
    let cells: Vec<Cell> = records.into_iter().flat_map(|r| r.cells).collect();
    Tally::for_cells(&kernels, &cells, entries, errors)
}

/// The entry of a matrix cell no run folder was found for.
fn missing(cell: &Cell) -> Entry {
    Entry {
        scenario: cell.scenario.clone(),
        kernel: cell.kernel.name().to_string(),
        seed: cell.seed,
        repeat: cell.repeat,
        repeats: cell.repeats,
        dir: None,
        verdict: Verdict::Incomplete(format!("shard {}: no run folder (the shard stopped before this run, or its folder was not given)", cell.shard)),
        unlisted: Vec::new(),
        summary: None,
    }
}

/// For every split recorded (base seed, repeats, kernels, N), the shards 1..N not recorded.
fn missing_shards(records: &[MatrixRecord]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut splits: Vec<(u64, u32, &[KernelVariant], u32)> = Vec::new();
    for r in records {
        let split = (r.base_seed, r.repeats, &r.kernels[..], r.shard.count);
        if !splits.contains(&split) {
            splits.push(split);
        }
    }
    for (seed, repeats, kernels, count) in splits {
        for index in 1..=count {
            let there = records.iter().any(|r| (r.base_seed, r.repeats, &r.kernels[..], r.shard) == (seed, repeats, kernels, Shard { index, count }));
            if !there {
                errors.push(format!("shard {index}/{count} of seed {seed} is missing: no matrix record of it among the folders given"));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drive::matrix::{self, RepeatMeta};
    use crate::judge::results::{Crash, KernelMeta, Meta, RunDir, StepLine, Summary};
    use crate::drive::scenario::Scenario;

    const UAF: &str = "KASAN: slab-use-after-free Read in at24_read";
    const WARN: &str = "WARNING in free_irq";

    /// The scenario every test run is of: UAF expected on vanilla, clean on resmgr.
    fn scenario() -> Scenario {
        let yaml = format!("name: holder\nexpect:\n  vanilla: [\"{UAF}\"]\n  resmgr: clean\nsteps:\n  - observe\n");
        Scenario::parse(&yaml, Path::new("holder.yaml")).unwrap()
    }

    /// A run folder as `torture` writes it (the harness's own writer): meta.json,
    /// schedule.json, crashes/, summary.json; `ended: false` leaves the summary written on
    /// the way, as a killed run does.
    fn write_run(root: &Path, cell: &Cell, base_seed: u64, titles: &[&str], ended: bool) -> PathBuf {
        let schedule = crate::drive::schedule::plan(&scenario(), cell.seed);
        let mut run = RunDir::create(root, &cell.scenario).unwrap();
        let meta = Meta {
            run_id: run.id(),
            scenario: cell.scenario.clone(),
            seed: cell.seed,
            reproducer: String::new(),
            replay: String::new(),
            kernel: KernelMeta::default(),
            kernel_variant: Some(cell.kernel),
            image: None,
            qemu_version: None,
            accel: None,
            pace: None,
            started: String::new(),
            repeat: Some(RepeatMeta::new(cell.repeat, cell.repeats, base_seed)),
        };
        run.write_json("meta.json", &meta).unwrap();
        run.write_json("schedule.json", &schedule).unwrap();
        for t in titles {
            let crash = Crash { title: t.to_string(), alt_titles: vec![], kind: "KASAN".into(), corrupted: None, report: String::new(), symbolized: None, step: Some(1) };
            run.add_crash(&crash).unwrap();
        }
        let summary = Summary {
            scenario: cell.scenario.clone(),
            kernel: Some(cell.kernel),
            seed: cell.seed,
            expect: schedule.expect.get(&cell.kernel).cloned().unwrap_or_default(),
            steps: vec![StepLine { index: 1, description: "observe".into(), ok: true, detail: None, elapsed_ms: 1.0, not_run: None, filed_titles: vec![] }],
            in_progress: !ended,
            ..Summary::default()
        };
        run.write_summary(&summary).unwrap();
        run.path().to_path_buf()
    }

    const BOTH: [KernelVariant; 2] = [KernelVariant::Vanilla, KernelVariant::Resmgr];

    /// A shard folder as `torture --shard K/N` leaves it: the matrix record and one run per
    /// cell, each showing the titles `titles(cell)` says.
    fn shard(root: &Path, repeats: u32, shard: Shard, titles: impl Fn(&Cell) -> Vec<&'static str>) -> Vec<Cell> {
        let all = matrix::plan(&[scenario()], &BOTH, &crate::drive::requires::Absences::new(), repeats, 5, shard.count);
        let cells = matrix::shard_cells(all, shard);
        MatrixRecord { base_seed: 5, repeats, kernels: BOTH.to_vec(), shard, cells: cells.clone() }.write(root).unwrap();
        for c in &cells {
            write_run(root, c, 5, &titles(c), true);
        }
        cells
    }

    /// What each kernel is expected to show, UAF on vanilla only.
    fn as_expected(c: &Cell) -> Vec<&'static str> {
        if c.kernel == KernelVariant::Vanilla { vec![UAF] } else { vec![] }
    }

    #[test]
    fn runs_as_expected_pass_the_gate_with_rates() {
        let root = tempfile::tempdir().unwrap();
        shard(root.path(), 3, Shard::ALL, as_expected);
        let tally = merge(&[root.path().to_path_buf()]);
        assert_eq!((tally.exit_code(), &tally.errors), (0, &vec![]), "{}", tally.markdown());
        assert_eq!(tally.headline(), "6 run(s): 6 as expected, 0 not, 0 skipped, 0 incomplete");
        assert_eq!(tally.rates[0].titles, [TitleRate { title: UAF.into(), hits: vec![3, 0], changes: vec![Some(Change::Fixed)] }]);
        let md = tally.markdown();
        assert!(md.contains("| expectation met | 3/3 | 3/3 |  |\n| KASAN: slab-use-after-free Read in at24_read | 3/3 | 0/3 | fixed |\n"), "{md}");
        assert_eq!(tally.ab.len(), 3, "one A/B per seed");
        assert!(tally.ab.iter().all(|c| c.same_schedule == Some(true)));
    }

    /// The gate: a title the expectation does not list fails it (exit 1), with the title named.
    #[test]
    fn a_title_the_expectation_does_not_list_fails_the_gate() {
        let root = tempfile::tempdir().unwrap();
        shard(root.path(), 1, Shard::ALL, |c| if c.kernel == KernelVariant::Resmgr { vec![WARN] } else { as_expected(c) });
        let tally = merge(&[root.path().to_path_buf()]);
        assert_eq!(tally.exit_code(), 1, "{}", tally.markdown());
        let resmgr = tally.entries.iter().find(|e| e.kernel == "resmgr").unwrap();
        assert_eq!(resmgr.unlisted, [WARN]);
        assert_eq!(resmgr.verdict, Verdict::NotMet(vec![format!("unexpected title: {WARN}")]));
        assert!(tally.markdown().contains(&format!("- holder on resmgr (seed 5): NOT as expected — {}", resmgr.dir.as_ref().unwrap().display())));
        // A vanilla run missing its expected title misses its expectation too, with no unlisted title.
        let root = tempfile::tempdir().unwrap();
        shard(root.path(), 1, Shard::ALL, |_| vec![]);
        let tally = merge(&[root.path().to_path_buf()]);
        assert_eq!(tally.exit_code(), 1);
        assert!(tally.entries.iter().all(|e| e.unlisted.is_empty()));
    }

    /// Shards 1/2 and 2/2 merged say what one run of the whole matrix says.
    #[test]
    fn two_shards_merged_equal_the_whole_matrix() {
        let (one, a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        shard(one.path(), 4, Shard::ALL, as_expected);
        let in_a = shard(a.path(), 4, Shard { index: 1, count: 2 }, as_expected);
        let in_b = shard(b.path(), 4, Shard { index: 2, count: 2 }, as_expected);
        assert_eq!((in_a.len(), in_b.len()), (4, 4));
        let whole = merge(&[one.path().to_path_buf()]);
        let merged = merge(&[a.path().to_path_buf(), b.path().to_path_buf()]);
        let cells = |t: &Tally| t.entries.iter().map(|e| (e.scenario.clone(), e.kernel.clone(), e.seed, e.repeat, e.verdict.clone())).collect::<Vec<_>>();
        assert_eq!(cells(&merged), cells(&whole));
        assert_eq!((merged.rates.clone(), merged.exit_code()), (whole.rates.clone(), 0));
        // Either shard alone: the other is missing (exit 2).
        let half = merge(&[a.path().to_path_buf()]);
        assert_eq!(half.exit_code(), 2);
        assert_eq!(half.errors, ["shard 2/2 of seed 5 is missing: no matrix record of it among the folders given"]);
    }

    /// A killed shard: a run killed mid-way (summary written on the way), one killed before
    /// its first summary, and a cell never started are each incomplete, never dropped: exit 2.
    #[test]
    fn partial_and_killed_shard_folders_are_incomplete() {
        let root = tempfile::tempdir().unwrap();
        let cells = matrix::plan(&[scenario()], &BOTH, &crate::drive::requires::Absences::new(), 2, 5, 1);
        MatrixRecord { base_seed: 5, repeats: 2, kernels: BOTH.to_vec(), shard: Shard::ALL, cells: cells.clone() }.write(root.path()).unwrap();
        write_run(root.path(), &cells[0], 5, &[UAF], true);
        write_run(root.path(), &cells[1], 5, &[], false);
        let bare = RunDir::create(root.path(), "holder").unwrap();
        bare.write_json("meta.json", &serde_json::json!({"scenario": "holder"})).unwrap();
        let tally = merge(&[root.path().to_path_buf()]);
        assert_eq!(tally.exit_code(), 2);
        let verdicts: Vec<(String, &str)> = tally.entries.iter().map(|e| (e.label(), e.verdict.name())).collect();
        assert_eq!(
            verdicts,
            [
                ("holder on ".to_string(), "incomplete"),
                ("holder on vanilla #1/2".into(), "as expected"),
                ("holder on resmgr #1/2".into(), "incomplete"),
                ("holder on vanilla #2/2".into(), "incomplete"),
                ("holder on resmgr #2/2".into(), "incomplete"),
            ]
        );
        let why = |i: usize| match &tally.entries[i].verdict {
            Verdict::Incomplete(why) => why.clone(),
            other => panic!("{other:?}"),
        };
        assert!(why(0).starts_with("no summary.json"), "{}", why(0));
        assert!(why(2).ends_with("summary.json: the run had not ended when this summary was written (killed?) (1 steps recorded)"), "{}", why(2));
        assert!(why(3).starts_with("shard 1/1: no run folder"), "{}", why(3));
        let md = tally.markdown();
        assert!(md.contains("| expectation met | 1/1 (+1 incomplete) | - (+2 incomplete) |  |\n"), "{md}");
    }

    #[test]
    fn a_broken_summary_is_located_and_a_missing_folder_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let cells = matrix::plan(&[scenario()], &[KernelVariant::Vanilla], &crate::drive::requires::Absences::new(), 1, 5, 1);
        MatrixRecord { base_seed: 5, repeats: 1, kernels: vec![KernelVariant::Vanilla], shard: Shard::ALL, cells: cells.clone() }.write(root.path()).unwrap();
        let dir = write_run(root.path(), &cells[0], 5, &[UAF], true);
        std::fs::write(dir.join("summary.json"), "{\n  \"run_id\": 3\n}").unwrap();
        let tally = merge(&[root.path().to_path_buf(), root.path().join("nope")]);
        assert_eq!(tally.exit_code(), 2);
        assert!(matches!(&tally.entries[0].verdict, Verdict::Incomplete(w) if w.starts_with(&format!("{}:2:", dir.join("summary.json").display()))), "{:?}", tally.entries[0]);
        assert!(tally.errors[0].contains("nope: not a readable results folder"), "{:?}", tally.errors);
    }

    #[test]
    fn rates_read_as_hits_over_ended_runs() {
        assert_eq!(rate(7, 10), "7/10");
        let k = |runs, skipped, incomplete| KernelRuns { kernel: "v".into(), runs, met: 0, skipped, incomplete };
        assert_eq!(kernel_cell(&k(10, 0, 0), 7), "7/10");
        assert_eq!(kernel_cell(&k(0, 3, 0), 0), "skipped");
        assert_eq!(kernel_cell(&k(2, 0, 1), 1), "1/2 (+1 incomplete)");
    }
}
