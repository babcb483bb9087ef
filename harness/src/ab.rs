//! The A/B comparison of `torture --kernel both`: per scenario, what vanilla and resmgr each
//! showed under the same seed and schedule, and for every crash title whether the series
//! fixed it (vanilla only), left it (both) or brought it (resmgr only).
//!
//! Built from the runs' `summary.json` contents ([`RunSummary`]), so it says nothing a run
//! folder does not; titles are compared as exact strings. Written as `summary.md` and
//! `summary.json` into `results/ab-<stamp>/`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::consumers::FirstError;
use crate::results::RunSummary;

/// What became of one crash title between vanilla and resmgr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// On vanilla only.
    Fixed,
    /// On both.
    Still,
    /// On resmgr only.
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
}

/// One scenario on both kernels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub scenario: String,
    pub seed: u64,
    /// Whether both runs recorded byte-identical `schedule.json`s; `None` when a side was
    /// skipped (it has none).
    pub same_schedule: Option<bool>,
    pub titles: Vec<TitleRow>,
    pub holders: Vec<HolderRow>,
    pub vanilla: Side,
    pub resmgr: Side,
}

/// One crash title: its count on each side (0: absent) and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TitleRow {
    pub title: String,
    pub vanilla: u32,
    pub resmgr: u32,
    /// `None` when a side was skipped: nothing to compare with.
    pub change: Option<Change>,
}

/// One holder (by its scenario name) and its first error on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRow {
    pub name: String,
    pub kind: String,
    pub vanilla: HolderSide,
    pub resmgr: HolderSide,
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
    pub run_id: String,
    pub expected: String,
    pub expectation_met: bool,
    pub why_not: Vec<String>,
    pub skipped: Option<String>,
}

impl Side {
    fn of(run: &RunSummary) -> Side {
        Side {
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

/// Compares one scenario's runs. Titles are listed vanilla's first, in order of appearance,
/// then those only resmgr showed; holders likewise.
pub fn compare(vanilla: &RunSummary, resmgr: &RunSummary, same_schedule: Option<bool>) -> Comparison {
    let both_ran = vanilla.skipped.is_none() && resmgr.skipped.is_none();
    let count = |run: &RunSummary, title: &str| run.titles.iter().find(|t| t.title == title).map_or(0, |t| t.count);
    let mut titles: Vec<TitleRow> = Vec::new();
    for t in vanilla.titles.iter().chain(&resmgr.titles) {
        if titles.iter().any(|row| row.title == t.title) {
            continue;
        }
        let (v, r) = (count(vanilla, &t.title), count(resmgr, &t.title));
        let change = both_ran.then_some(match (v > 0, r > 0) {
            (true, false) => Change::Fixed,
            (false, true) => Change::New,
            _ => Change::Still,
        });
        titles.push(TitleRow { title: t.title.clone(), vanilla: v, resmgr: r, change });
    }
    let side = |run: &RunSummary, name: &str| match run.holders.iter().find(|h| h.name == name) {
        None => HolderSide::Absent,
        Some(h) if h.hung => HolderSide::Hung(h.first_error.clone()),
        Some(h) => h.first_error.clone().map_or(HolderSide::NoError, HolderSide::Error),
    };
    let mut holders: Vec<HolderRow> = Vec::new();
    for h in vanilla.holders.iter().chain(&resmgr.holders) {
        if holders.iter().any(|row| row.name == h.name) {
            continue;
        }
        holders.push(HolderRow {
            name: h.name.clone(),
            kind: h.kind.clone(),
            vanilla: side(vanilla, &h.name),
            resmgr: side(resmgr, &h.name),
        });
    }
    Comparison {
        scenario: vanilla.scenario.clone(),
        seed: vanilla.seed,
        same_schedule,
        titles,
        holders,
        vanilla: Side::of(vanilla),
        resmgr: Side::of(resmgr),
    }
}

/// Whether the runs in `vanilla` and `resmgr` recorded the same `schedule.json`; `None` if
/// either has none (a skipped run).
pub fn same_schedule(vanilla: &Path, resmgr: &Path) -> Option<bool> {
    let read = |dir: &Path| std::fs::read(dir.join("schedule.json")).ok();
    Some(read(vanilla)? == read(resmgr)?)
}

/// The table as Markdown: per scenario, each side's expectation verdict, the titles with
/// counts and what became of them, the holders' first errors.
pub fn markdown(comparisons: &[Comparison]) -> String {
    let mut md = String::from("# A/B: vanilla vs resmgr\n\n");
    if let Some(seed) = comparisons.first().map(|c| c.seed) {
        md.push_str(&format!("seed {seed}, the same schedule on both kernels\n\n"));
    }
    for c in comparisons {
        md.push_str(&format!("## {}\n\n", c.scenario));
        let schedule = match c.same_schedule {
            Some(true) => "same schedule",
            Some(false) => "SCHEDULES DIFFER",
            None => "one side skipped",
        };
        md.push_str(&format!("{schedule}; expected on vanilla: {}; on resmgr: {}\n", c.vanilla.judged(), c.resmgr.judged()));
        for (name, side) in [("vanilla", &c.vanilla), ("resmgr", &c.resmgr)] {
            if let Some(why) = &side.skipped {
                md.push_str(&format!("- {name}: skipped ({why})\n"));
            }
            for why in &side.why_not {
                md.push_str(&format!("- {name}: {why}\n"));
            }
        }
        md.push('\n');
        if c.titles.is_empty() {
            md.push_str("no crash title on either side\n\n");
        } else {
            md.push_str("| title | vanilla | resmgr | verdict |\n|---|---|---|---|\n");
            for t in &c.titles {
                let change = t.change.map_or("-", Change::name);
                md.push_str(&format!("| {} | {} | {} | {change} |\n", t.title, t.vanilla, t.resmgr));
            }
            md.push('\n');
        }
        if !c.holders.is_empty() {
            md.push_str("| holder | kind | vanilla first error | resmgr first error |\n|---|---|---|---|\n");
            for h in &c.holders {
                md.push_str(&format!("| {} | {} | {} | {} |\n", h.name, h.kind, h.vanilla, h.resmgr));
            }
            md.push('\n');
        }
    }
    md
}

/// Writes `root/ab-<stamp>/{summary.md,summary.json}`; returns the folder.
pub fn write(root: &Path, comparisons: &[Comparison]) -> Result<PathBuf> {
    let dir = crate::results::create_unique(root, &format!("ab-{}", crate::results::stamp()))?;
    crate::results::write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(comparisons)?.as_bytes())?;
    crate::results::write_atomic(&dir.join("summary.md"), markdown(comparisons).as_bytes())?;
    crate::html::write_root_index(root)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::HolderState;
    use crate::results::TitleCount;

    fn run(kernel: &str, titles: &[(&str, u32)], holders: &[(&str, Option<&str>, bool)], why_not: &[&str]) -> RunSummary {
        RunSummary {
            run_id: format!("20261130T184400-{kernel}"),
            scenario: "nvmem-holder-cp2112-unplug".into(),
            kernel: kernel.into(),
            seed: 348300539442052,
            titles: titles.iter().map(|(t, n)| TitleCount { title: t.to_string(), count: *n }).collect(),
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

    /// Vanilla only: fixed; both: still; resmgr only: new. Counts are each side's.
    #[test]
    fn titles_are_fixed_still_or_new() {
        let vanilla = run("vanilla", &[(UAF, 24), (REGMAP, 640)], &[("kernel", Some("EIO"), false), ("late", None, true)], &[]);
        let resmgr = run("resmgr", &[(REGMAP, 1), (WARN, 1)], &[("kernel", Some("ENODEV"), false)], &["unexpected title: x"]);
        let c = compare(&vanilla, &resmgr, Some(true));
        let rows: Vec<(&str, u32, u32, Option<Change>)> = c.titles.iter().map(|t| (t.title.as_str(), t.vanilla, t.resmgr, t.change)).collect();
        assert_eq!(rows, [(UAF, 24, 0, Some(Change::Fixed)), (REGMAP, 640, 1, Some(Change::Still)), (WARN, 0, 1, Some(Change::New))]);
        let holders: Vec<String> = c.holders.iter().map(|h| format!("{}: {} / {}", h.name, h.vanilla, h.resmgr)).collect();
        assert_eq!(holders, ["kernel: read -> -EIO / read -> -ENODEV", "late: hung / -"]);
        assert!(c.vanilla.expectation_met && !c.resmgr.expectation_met);
    }

    /// A side that was skipped has nothing to compare: no verdict per title.
    #[test]
    fn a_skipped_side_gives_no_title_verdict() {
        let skipped = RunSummary { skipped: Some("applies to: resmgr".into()), expectation_met: true, ..run("vanilla", &[], &[], &[]) };
        let c = compare(&skipped, &run("resmgr", &[(WARN, 2)], &[], &[]), None);
        assert_eq!(c.titles, [TitleRow { title: WARN.into(), vanilla: 0, resmgr: 2, change: None }]);
        assert_eq!(c.vanilla.judged(), "skipped");
        assert_eq!(c.resmgr.judged(), "clean — **met**");
    }

    /// The Markdown table, byte for byte.
    #[test]
    fn markdown_golden() {
        let vanilla = run("vanilla", &[(UAF, 24)], &[("kernel", Some("EIO"), false)], &[]);
        let resmgr = run("resmgr", &[(WARN, 1)], &[("kernel", Some("ENODEV"), false)], &["unexpected title: WARNING in resmgr_revoke"]);
        let clean = RunSummary { scenario: "usb-kbd-cycle".into(), ..run("resmgr", &[], &[], &[]) };
        let md = markdown(&[compare(&vanilla, &resmgr, Some(true)), compare(&RunSummary { scenario: "usb-kbd-cycle".into(), expected: "clean".into(), ..clean.clone() }, &clean, Some(false))]);
        assert_eq!(
            md,
            "# A/B: vanilla vs resmgr\n\nseed 348300539442052, the same schedule on both kernels\n\n\
             ## nvmem-holder-cp2112-unplug\n\n\
             same schedule; expected on vanilla: KASAN: * — **met**; on resmgr: clean — **NOT met**\n\
             - resmgr: unexpected title: WARNING in resmgr_revoke\n\n\
             | title | vanilla | resmgr | verdict |\n|---|---|---|---|\n\
             | KASAN: slab-use-after-free Read in at24_read | 24 | 0 | fixed |\n\
             | WARNING in resmgr_revoke | 0 | 1 | new |\n\n\
             | holder | kind | vanilla first error | resmgr first error |\n|---|---|---|---|\n\
             | kernel | nvmem-kernel | read -> -EIO | read -> -ENODEV |\n\n\
             ## usb-kbd-cycle\n\n\
             SCHEDULES DIFFER; expected on vanilla: clean — **met**; on resmgr: clean — **met**\n\n\
             no crash title on either side\n\n"
        );
    }

    /// The folder holds both files; the JSON reads back as the comparisons.
    #[test]
    fn written_as_markdown_and_json() {
        let root = tempfile::tempdir().unwrap();
        let c = vec![compare(&run("vanilla", &[(UAF, 1)], &[], &[]), &run("resmgr", &[], &[], &[]), Some(true))];
        let dir = write(root.path(), &c).unwrap();
        assert!(dir.file_name().unwrap().to_string_lossy().starts_with("ab-"));
        let back: Vec<Comparison> = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(std::fs::read_to_string(dir.join("summary.md")).unwrap(), markdown(&c));
        assert_ne!(write(root.path(), &c).unwrap(), dir, "a second A/B in the same second gets its own folder");
    }

    #[test]
    fn same_schedule_compares_the_recorded_files() {
        let root = tempfile::tempdir().unwrap();
        let (a, b, none) = (root.path().join("a"), root.path().join("b"), root.path().join("none"));
        for (dir, text) in [(&a, "{\"seed\":1}"), (&b, "{\"seed\":1}")] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("schedule.json"), text).unwrap();
        }
        assert_eq!(same_schedule(&a, &b), Some(true));
        std::fs::write(b.join("schedule.json"), "{\"seed\":2}").unwrap();
        assert_eq!(same_schedule(&a, &b), Some(false));
        assert_eq!(same_schedule(&a, &none), None);
    }
}
