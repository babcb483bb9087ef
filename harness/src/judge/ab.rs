//! The A/B comparison of `torture --kernel A,B,...`: per scenario and seed, what each kernel
//! showed under the same schedule, and for every crash title, per kernel after the first (the
//! baseline), whether that kernel fixed it (baseline only), still shows it (both) or brought
//! it (that kernel only).
//!
//! Built from the runs' `summary.json` contents ([`RunSummary`]), so it says nothing a run
//! folder does not; titles are compared as exact strings. Part of the summary `torture` and
//! `results merge` write (`harness::judge::tally`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::devices::holders::FirstError;
use crate::judge::results::RunSummary;

/// What became of one crash title between the baseline and another kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// On the baseline only.
    Fixed,
    /// On both.
    Still,
    /// On the other kernel only.
    New,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Fixed => "fixed",
            Change::Still => "still",
            Change::New => "new",
        }
    }

    /// From whether the baseline and the other kernel show the title; `None`: neither does.
    pub fn of(baseline: bool, other: bool) -> Option<Change> {
        match (baseline, other) {
            (true, false) => Some(Change::Fixed),
            (false, true) => Some(Change::New),
            (true, true) => Some(Change::Still),
            (false, false) => None,
        }
    }
}

/// One scenario and seed on every kernel, the baseline first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub scenario: String,
    pub seed: u64,
    /// Whether the runs that booted recorded byte-identical `schedule.json`s; `None` when
    /// fewer than two booted (skips have none).
    pub same_schedule: Option<bool>,
    pub titles: Vec<TitleRow>,
    pub holders: Vec<HolderRow>,
    /// One per kernel, the baseline first.
    pub sides: Vec<Side>,
}

/// One crash title: its count on each kernel (0: absent) and, for each kernel after the
/// baseline, what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TitleRow {
    pub title: String,
    /// Per kernel, in the order of [`Comparison::sides`].
    pub counts: Vec<u32>,
    /// Per kernel after the baseline; `None` when that kernel or the baseline was skipped, or
    /// neither shows the title.
    pub changes: Vec<Option<Change>>,
}

/// One holder (by its scenario name) and its first error on each kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRow {
    pub name: String,
    pub kind: String,
    pub sides: Vec<HolderSide>,
}

/// A holder on one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "first_error")]
pub enum HolderSide {
    /// The run never started it (skipped, or stopped before its hold step).
    Absent,
    NoError,
    Error(FirstError),
    /// Its last call never returned (with the first error before that, if any).
    Hung(Option<FirstError>),
}

impl std::fmt::Display for HolderSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HolderSide::Absent => f.write_str("-"),
            HolderSide::NoError => f.write_str("no error"),
            HolderSide::Error(e) => write!(f, "{e}"),
            HolderSide::Hung(None) => f.write_str("hung"),
            HolderSide::Hung(Some(e)) => write!(f, "{e}, then hung"),
        }
    }
}

/// One kernel's run of the scenario, as far as the comparison needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub kernel: String,
    pub run_id: String,
    pub expected: String,
    pub expectation_met: bool,
    pub why_not: Vec<String>,
    pub skipped: Option<String>,
}

impl Side {
    fn of(run: &RunSummary) -> Side {
        Side {
            kernel: run.kernel.clone(),
            run_id: run.run_id.clone(),
            expected: run.expected.clone(),
            expectation_met: run.expectation_met,
            why_not: run.why_not.clone(),
            skipped: run.skipped.clone(),
        }
    }

    /// `met`, `NOT met` or `skipped`, for the table.
    pub fn verdict(&self) -> &'static str {
        match (&self.skipped, self.expectation_met) {
            (Some(_), _) => "skipped",
            (None, true) => "met",
            (None, false) => "NOT met",
        }
    }

    /// `EXPECTED — **met**` (or `**NOT met**`), or just `skipped`.
    fn judged(&self) -> String {
        match &self.skipped {
            Some(_) => self.verdict().to_string(),
            None => format!("{} — **{}**", self.expected, self.verdict()),
        }
    }
}

/// Compares one scenario's runs under one seed, `runs[0]` being the baseline. Titles are
/// listed in order of appearance, the baseline's first; holders likewise.
pub fn compare(runs: &[RunSummary], same_schedule: Option<bool>) -> Comparison {
    let count = |run: &RunSummary, title: &str| run.titles.iter().find(|t| t.title == title).map_or(0, |t| t.count);
    let mut titles: Vec<TitleRow> = Vec::new();
    for t in runs.iter().flat_map(|r| &r.titles) {
        if titles.iter().any(|row| row.title == t.title) {
            continue;
        }
        let counts: Vec<u32> = runs.iter().map(|r| count(r, &t.title)).collect();
        let changes = match runs.split_first() {
            Some((base, others)) => others
                .iter()
                .zip(&counts[1..])
                .map(|(other, &n)| if base.skipped.is_none() && other.skipped.is_none() { Change::of(counts[0] > 0, n > 0) } else { None })
                .collect(),
            None => Vec::new(),
        };
        titles.push(TitleRow { title: t.title.clone(), counts, changes });
    }
    let side = |run: &RunSummary, name: &str| match run.holders.iter().find(|h| h.name == name) {
        None => HolderSide::Absent,
        Some(h) if h.hung => HolderSide::Hung(h.first_error.clone()),
        Some(h) => h.first_error.clone().map_or(HolderSide::NoError, HolderSide::Error),
    };
    let mut holders: Vec<HolderRow> = Vec::new();
    for h in runs.iter().flat_map(|r| &r.holders) {
        if holders.iter().any(|row| row.name == h.name) {
            continue;
        }
        holders.push(HolderRow { name: h.name.clone(), kind: h.kind.clone(), sides: runs.iter().map(|r| side(r, &h.name)).collect() });
    }
    Comparison {
        scenario: runs.first().map(|r| r.scenario.clone()).unwrap_or_default(),
        seed: runs.first().map_or(0, |r| r.seed),
        same_schedule,
        titles,
        holders,
        sides: runs.iter().map(Side::of).collect(),
    }
}

/// Whether the run folders in `dirs` that have a `schedule.json` (skips have none) all
/// recorded the same one; `None` if fewer than two have one.
pub fn same_schedule(dirs: &[&Path]) -> Option<bool> {
    let schedules: Vec<Vec<u8>> = dirs.iter().filter_map(|d| std::fs::read(d.join("schedule.json")).ok()).collect();
    (schedules.len() >= 2).then(|| schedules.windows(2).all(|w| w[0] == w[1]))
}

/// The table as Markdown: per scenario and seed, each kernel's expectation verdict, the titles
/// with counts and what became of them against the baseline, the holders' first errors.
pub fn markdown(comparisons: &[Comparison]) -> String {
    let Some(first) = comparisons.first() else {
        return String::new();
    };
    let kernels: Vec<&str> = first.sides.iter().map(|s| s.kernel.as_str()).collect();
    let baseline = kernels.first().copied().unwrap_or_default();
    let mut md = format!("# A/B: {}\n\nbaseline {baseline}; one schedule per scenario and seed on every kernel\n\n", kernels.join(" vs "));
    for c in comparisons {
        md.push_str(&format!("## {} (seed {})\n\n", c.scenario, c.seed));
        let schedule = match c.same_schedule {
            Some(true) => "same schedule",
            Some(false) => "SCHEDULES DIFFER",
            None => "fewer than two kernels ran it",
        };
        let judged: Vec<String> = c.sides.iter().map(|s| format!("on {}: {}", s.kernel, s.judged())).collect();
        md.push_str(&format!("{schedule}; expected {}\n", judged.join("; ")));
        for side in &c.sides {
            if let Some(why) = &side.skipped {
                md.push_str(&format!("- {}: skipped ({why})\n", side.kernel));
            }
            for why in &side.why_not {
                md.push_str(&format!("- {}: {why}\n", side.kernel));
            }
        }
        md.push('\n');
        let names: Vec<&str> = c.sides.iter().map(|s| s.kernel.as_str()).collect();
        let versus: Vec<String> = names.iter().skip(1).map(|k| format!("{k} vs {}", names[0])).collect();
        if c.titles.is_empty() {
            md.push_str("no crash title on any kernel\n\n");
        } else {
            let columns: Vec<String> = names.iter().map(|k| k.to_string()).chain(versus.iter().cloned()).collect();
            md.push_str(&format!("| title | {} |\n|---|{}\n", columns.join(" | "), "---|".repeat(columns.len())));
            for t in &c.titles {
                let cells: Vec<String> = t
                    .counts
                    .iter()
                    .map(u32::to_string)
                    .chain(t.changes.iter().map(|ch| ch.map_or("-", Change::name).to_string()))
                    .collect();
                md.push_str(&format!("| {} | {} |\n", t.title, cells.join(" | ")));
            }
            md.push('\n');
        }
        if !c.holders.is_empty() {
            let columns: Vec<String> = names.iter().map(|k| format!("{k} first error")).collect();
            md.push_str(&format!("| holder | kind | {} |\n|---|---|{}\n", columns.join(" | "), "---|".repeat(columns.len())));
            for h in &c.holders {
                let cells: Vec<String> = h.sides.iter().map(HolderSide::to_string).collect();
                md.push_str(&format!("| {} | {} | {} |\n", h.name, h.kind, cells.join(" | ")));
            }
            md.push('\n');
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::holders::HolderState;
    use crate::judge::results::TitleCount;

    fn run(kernel: &str, titles: &[(&str, u32)], holders: &[(&str, Option<&str>, bool)], why_not: &[&str]) -> RunSummary {
        RunSummary {
            run_id: format!("20261130T184400-{kernel}"),
            scenario: "nvmem-holder-cp2112-unplug".into(),
            kernel: kernel.into(),
            seed: 348300539442052,
            titles: titles.iter().map(|(t, n)| TitleCount { title: t.to_string(), count: *n, follow_ons: vec![] }).collect(),
            holders: holders
                .iter()
                .map(|(name, errno, hung)| HolderState {
                    name: name.to_string(),
                    kind: "nvmem-kernel".into(),
                    first_error: errno.map(|e| FirstError { op: "read".into(), errno: Some(e.into()), revents: None }),
                    hung: *hung,
                })
                .collect(),
            expected: if kernel == "vanilla" { "KASAN: *".into() } else { "clean".into() },
            expectation_met: why_not.is_empty(),
            why_not: why_not.iter().map(|w| w.to_string()).collect(),
            ..RunSummary::default()
        }
    }

    const UAF: &str = "KASAN: slab-use-after-free Read in at24_read";
    const REGMAP: &str = "KASAN: slab-use-after-free Read in regmap_readable";
    const WARN: &str = "WARNING in resmgr_revoke";

    /// Baseline only: fixed; both: still; the other kernel only: new. Counts are each side's.
    #[test]
    fn titles_are_fixed_still_or_new() {
        let vanilla = run("vanilla", &[(UAF, 24), (REGMAP, 640)], &[("kernel", Some("EIO"), false), ("late", None, true)], &[]);
        let resmgr = run("resmgr", &[(REGMAP, 1), (WARN, 1)], &[("kernel", Some("ENODEV"), false)], &["unexpected title: x"]);
        let c = compare(&[vanilla, resmgr], Some(true));
        let row = |title: &str, counts: &[u32], change: Change| TitleRow { title: title.into(), counts: counts.to_vec(), changes: vec![Some(change)] };
        assert_eq!(c.titles, [row(UAF, &[24, 0], Change::Fixed), row(REGMAP, &[640, 1], Change::Still), row(WARN, &[0, 1], Change::New)]);
        let holders: Vec<String> = c.holders.iter().map(|h| format!("{}: {} / {}", h.name, h.sides[0], h.sides[1])).collect();
        assert_eq!(holders, ["kernel: read -> -EIO / read -> -ENODEV", "late: hung / -"]);
        assert!(c.sides[0].expectation_met && !c.sides[1].expectation_met);
    }

    /// Three kernels: each after the first is judged against the baseline, not its neighbour.
    #[test]
    fn every_kernel_is_compared_with_the_baseline() {
        let c = compare(&[run("vanilla", &[(UAF, 2)], &[], &[]), run("resmgr", &[], &[], &[]), run("old", &[(UAF, 1), (WARN, 1)], &[], &[])], None);
        assert_eq!(c.titles[0].changes, [Some(Change::Fixed), Some(Change::Still)]);
        assert_eq!(c.titles[1].changes, [None, Some(Change::New)]);
        assert_eq!(c.titles[1].counts, [0, 0, 1]);
    }

    /// A side that was skipped has nothing to compare: no verdict per title.
    #[test]
    fn a_skipped_side_gives_no_title_verdict() {
        let skipped = RunSummary { skipped: Some("applies to: resmgr".into()), expectation_met: true, ..run("vanilla", &[], &[], &[]) };
        let c = compare(&[skipped, run("resmgr", &[(WARN, 2)], &[], &[])], None);
        assert_eq!(c.titles, [TitleRow { title: WARN.into(), counts: vec![0, 2], changes: vec![None] }]);
        assert_eq!(c.sides[0].judged(), "skipped");
        assert_eq!(c.sides[1].judged(), "clean — **met**");
    }

    /// The Markdown table, byte for byte.
    #[test]
    fn markdown_golden() {
        let vanilla = run("vanilla", &[(UAF, 24)], &[("kernel", Some("EIO"), false)], &[]);
        let resmgr = run("resmgr", &[(WARN, 1)], &[("kernel", Some("ENODEV"), false)], &["unexpected title: WARNING in resmgr_revoke"]);
        let clean = RunSummary { scenario: "usb-kbd-cycle".into(), ..run("resmgr", &[], &[], &[]) };
        let clean_vanilla = RunSummary { kernel: "vanilla".into(), expected: "clean".into(), ..clean.clone() };
        let md = markdown(&[compare(&[vanilla, resmgr], Some(true)), compare(&[clean_vanilla, clean], Some(false))]);
        assert_eq!(
            md,
            "# A/B: vanilla vs resmgr\n\nbaseline vanilla; one schedule per scenario and seed on every kernel\n\n\
             ## nvmem-holder-cp2112-unplug (seed 348300539442052)\n\n\
             same schedule; expected on vanilla: KASAN: * — **met**; on resmgr: clean — **NOT met**\n\
             - resmgr: unexpected title: WARNING in resmgr_revoke\n\n\
             | title | vanilla | resmgr | resmgr vs vanilla |\n|---|---|---|---|\n\
             | KASAN: slab-use-after-free Read in at24_read | 24 | 0 | fixed |\n\
             | WARNING in resmgr_revoke | 0 | 1 | new |\n\n\
             | holder | kind | vanilla first error | resmgr first error |\n|---|---|---|---|\n\
             | kernel | nvmem-kernel | read -> -EIO | read -> -ENODEV |\n\n\
             ## usb-kbd-cycle (seed 348300539442052)\n\n\
             SCHEDULES DIFFER; expected on vanilla: clean — **met**; on resmgr: clean — **met**\n\n\
             no crash title on any kernel\n\n"
        );
    }

    #[test]
    fn same_schedule_compares_the_recorded_files() {
        let root = tempfile::tempdir().unwrap();
        let (a, b, none) = (root.path().join("a"), root.path().join("b"), root.path().join("none"));
        for (dir, text) in [(&a, "{\"seed\":1}"), (&b, "{\"seed\":1}")] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("schedule.json"), text).unwrap();
        }
        assert_eq!(same_schedule(&[&a, &b, &none]), Some(true));
        std::fs::write(b.join("schedule.json"), "{\"seed\":2}").unwrap();
        assert_eq!(same_schedule(&[&a, &b]), Some(false));
        assert_eq!(same_schedule(&[&a, &none]), None);
    }
}
