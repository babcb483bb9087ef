//! `series check`: does every patch of a series apply, in order, on the pristine source, and
//! what does `scripts/checkpatch.pl --strict --terse` say about it?
//!
//! Applying is cumulative and cheap: the files the series touches (and renames or copies) are
//! copied from the base tree into a temporary directory, and the patches are `git apply`ed
//! there one after the other (with the same routine a series build uses), so patch N is
//! checked on top of patches 1..N-1 without copying a 1.5 GB tree. checkpatch runs from the
//! base tree's top, on each patch file. The base tree is only read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::source::{self, Series, Source};

/// Whether a patch applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applies {
    Yes,
    /// git's complaint (and the hunk that failed, when it names one).
    No(String),
    /// An earlier patch did not apply, so this one was not tried on a meaningful tree.
    NotTried,
}

/// What checkpatch reported for one patch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpatch {
    pub errors: u32,
    pub warnings: u32,
    pub checks: u32,
    /// Its report lines (`FILE:LINE: LEVEL: message`), at most [`MAX_REPORT_LINES`].
    pub lines: Vec<String>,
}

/// Report lines kept per patch.
pub const MAX_REPORT_LINES: usize = 200;

#[derive(Debug, Clone)]
pub struct PatchCheck {
    pub patch: PathBuf,
    /// The file name, as the `series` file lists it.
    pub name: String,
    /// The `Subject:` without its `[PATCH n/m]` tag; `None` for a plain diff.
    pub subject: Option<String>,
    pub applies: Applies,
    pub checkpatch: Checkpatch,
}

impl PatchCheck {
    pub fn ok(&self) -> bool {
        self.applies == Applies::Yes && self.checkpatch.errors == 0 && self.checkpatch.warnings == 0
    }
}

/// One series checked against one base tree.
#[derive(Debug, Clone)]
pub struct SeriesCheck {
    pub series: String,
    /// For people: "Debian linux-source-6.12".
    pub base: String,
    pub patches: Vec<PatchCheck>,
}

impl SeriesCheck {
    /// Every patch applies and checkpatch reports no error and no warning (checks are fine).
    pub fn ok(&self) -> bool {
        self.patches.iter().all(PatchCheck::ok)
    }

    /// The per-patch table, and under a patch what went wrong.
    pub fn render(&self) -> String {
        let width = self.patches.iter().map(|p| p.name.len()).max().unwrap_or(5).clamp(5, 60);
        let mut out = format!("series {} on {}\n", self.series, self.base);
        out.push_str(&format!(
            "{:<width$}  {:<9} {:>6} {:>8} {:>6}  subject\n",
            "patch", "applies", "errors", "warnings", "checks"
        ));
        for p in &self.patches {
            let applies = match &p.applies {
                Applies::Yes => "yes",
                Applies::No(_) => "NO",
                Applies::NotTried => "not tried",
            };
            let c = &p.checkpatch;
            let subject = p.subject.as_deref().unwrap_or("(no Subject: a plain diff)");
            out.push_str(&format!(
                "{:<width$}  {applies:<9} {:>6} {:>8} {:>6}  {subject}\n",
                p.name, c.errors, c.warnings, c.checks
            ));
            if let Applies::No(why) = &p.applies {
                for line in why.lines().take(50) {
                    out.push_str(&format!("    {line}\n"));
                }
            }
            for line in &c.lines {
                out.push_str(&format!("    {line}\n"));
            }
        }
        let bad = self.patches.iter().filter(|p| !p.ok()).count();
        if bad == 0 {
            out.push_str(&format!(
                "{} patch(es): all apply, checkpatch has no errors or warnings\n",
                self.patches.len()
            ));
        } else {
            out.push_str(&format!(
                "{bad} of {} patch(es) do not apply or have checkpatch errors/warnings\n",
                self.patches.len()
            ));
        }
        out
    }
}

/// Names of the series in `patches_dir` (directories with a `series` file), sorted.
pub fn series_names(patches_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(patches_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).with_context(|| format!("reading {}", patches_dir.display())),
    };
    for entry in entries.flatten() {
        if entry.path().join("series").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The base tree a check runs against: `src`, or Debian's 6.12 source (unpacked into the
/// cache on first use).
pub fn base_tree(src: Option<&Path>) -> Result<Source> {
    match src {
        Some(dir) => source::user_tree(dir),
        None => {
            // Series are written against 6.12.
            let package = source::DebianSource::Linux6_12;
            crate::host::ensure(package.requirement())?;
            source::debian(&crate::paths::cache_dir(), package)
        }
    }
}

/// Checks series `name` from `patches_dir` against `base`.
pub fn check_series(base: &Source, patches_dir: &Path, name: &str) -> Result<SeriesCheck> {
    let series = Series::load(patches_dir, name)?;
    let checkpatch = base.tree.join("scripts/checkpatch.pl");
    if !checkpatch.is_file() {
        bail!("{} has no scripts/checkpatch.pl: not a kernel tree to check patches with", base.tree.display());
    }
    let scratch = tempfile::Builder::new().prefix("series-check-").tempdir().context("creating a scratch directory")?;
    let tree = scratch.path().join("tree");
    copy_touched(&base.tree, &tree, &touched_files(&series))?;

    let mut patches = Vec::new();
    let mut failed = false;
    for patch in &series.patches {
        let text = std::fs::read(patch).with_context(|| format!("reading {}", patch.display()))?;
        let text = String::from_utf8_lossy(&text);
        let applies = if failed {
            Applies::NotTried
        } else {
            match source::apply_patch(&tree, patch) {
                Ok(()) => Applies::Yes,
                Err(e) => {
                    failed = true;
                    Applies::No(format!("{e:#}"))
                }
            }
        };
        patches.push(PatchCheck {
            name: patch.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            subject: subject(&text),
            applies,
            checkpatch: run_checkpatch(&base.tree, &checkpatch, patch)?,
            patch: patch.clone(),
        });
    }
    Ok(SeriesCheck { series: series.name, base: base.label.clone(), patches })
}

/// Files the series reads from the base: those its diffs name plus rename/copy sources.
fn touched_files(series: &Series) -> BTreeSet<String> {
    let mut files = series.touched.clone();
    for patch in &series.patches {
        let text = std::fs::read(patch).unwrap_or_default();
        for line in String::from_utf8_lossy(&text).lines() {
            if let Some(path) = line.strip_prefix("rename from ").or_else(|| line.strip_prefix("copy from ")) {
                files.insert(path.trim().to_string());
            }
        }
    }
    files
}

/// Copies the `files` that exist in `base` to the same relative paths under `to` (created);
/// only plain relative paths inside the tree are followed.
fn copy_touched(base: &Path, to: &Path, files: &BTreeSet<String>) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for file in files {
        let rel = Path::new(file);
        let plain = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            continue;
        }
        let from = base.join(rel);
        if !from.is_file() {
            continue;
        }
        let dest = to.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(&from, &dest).with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
    }
    Ok(())
}

/// The `Subject:` header (folded lines joined) without a leading `[PATCH ...]` tag.
pub fn subject(patch: &str) -> Option<String> {
    let mut lines = patch.lines();
    let mut subject = lines.by_ref().find_map(|l| l.strip_prefix("Subject:"))?.trim().to_string();
    for more in lines {
        if more.starts_with([' ', '\t']) && !more.trim().is_empty() {
            subject.push(' ');
            subject.push_str(more.trim());
        } else {
            break;
        }
    }
    if subject.starts_with('[') {
        if let Some(end) = subject.find(']') {
            subject = subject[end + 1..].trim().to_string();
        }
    }
    Some(subject)
}

/// `checkpatch.pl --strict --terse PATCH` from the top of `tree`.
fn run_checkpatch(tree: &Path, script: &Path, patch: &Path) -> Result<Checkpatch> {
    let patch = patch.canonicalize().with_context(|| format!("{}", patch.display()))?;
    let out = Command::new("perl")
        .arg(script)
        .args(["--strict", "--terse", "--no-color"])
        .arg(&patch)
        .current_dir(tree)
        .output()
        .context("running perl scripts/checkpatch.pl (is perl installed?)")?;
    // Report lines name the patch by its file name, not the absolute path.
    let name = patch.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout).replace(&*patch.to_string_lossy(), &name);
    let report = parse_checkpatch(&stdout);
    // It exits 1 when it reports something; anything else with no report is a broken run.
    let reported = report.errors + report.warnings + report.checks > 0 || stdout.contains("total: ");
    if !out.status.success() && !reported {
        bail!(
            "checkpatch.pl failed on {} ({}): {}",
            patch.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(report)
}

/// Counts from checkpatch's terse output: its `total:` line when there is one, else the
/// report lines.
pub fn parse_checkpatch(stdout: &str) -> Checkpatch {
    let mut c = Checkpatch::default();
    let mut total = None;
    for line in stdout.lines() {
        let level = [("ERROR:", 0), ("WARNING:", 1), ("CHECK:", 2)]
            .into_iter()
            .find(|(tag, _)| line.starts_with(tag) || line.contains(&format!(": {tag}")));
        if let Some((_, which)) = level {
            match which {
                0 => c.errors += 1,
                1 => c.warnings += 1,
                _ => c.checks += 1,
            }
            if c.lines.len() < MAX_REPORT_LINES {
                c.lines.push(line.to_string());
            }
        } else if let Some(rest) = line.trim().strip_prefix("total: ") {
            total = Some(rest.to_string());
        }
    }
    if let Some(rest) = total {
        let count = |what: &str| -> Option<u32> {
            let at = rest.find(what)?;
            rest[..at].trim().rsplit([' ', ',']).next()?.parse().ok()
        };
        c.errors = count(" errors").unwrap_or(c.errors);
        c.warnings = count(" warnings").unwrap_or(c.warnings);
        c.checks = count(" checks").unwrap_or(c.checks);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::kernel::source::tests::git;

    /// A fake checkpatch: a WARNING for every added line with "printk(", an ERROR for "BAD",
    /// a CHECK for "check me", then the total line, like the real one in --terse mode.
    const FAKE_CHECKPATCH: &str = r#"#!/usr/bin/perl
use strict;
my $patch = $ARGV[-1];
open(my $fh, '<', $patch) or die "cannot open $patch";
my ($e, $w, $c, $n) = (0, 0, 0, 0);
while (my $l = <$fh>) {
    $n++;
    next unless $l =~ /^\+[^+]/;
    if ($l =~ /BAD/) { print "$patch:$n: ERROR: something BAD\n"; $e++; }
    if ($l =~ /printk\(/) { print "$patch:$n: WARNING: Prefer pr_info\n"; $w++; }
    if ($l =~ /check me/) { print "$patch:$n: CHECK: a check\n"; $c++; }
}
print "total: $e errors, $w warnings, $c checks, $n lines checked\n";
exit(($e + $w + $c) ? 1 : 0);
"#;

    /// A tiny kernel-like tree with real `git format-patch` patches: one clean, one with a
    /// warning and a check that creates a new file, one whose context is wrong; then a series
    /// where the second patch depends on the first (cumulative application).
    #[test]
    fn checks_application_in_order_and_checkpatch_counts() {
        let base_dir = tempfile::tempdir().unwrap();
        let b = base_dir.path();
        std::fs::write(b.join("Makefile"), "VERSION = 6\nPATCHLEVEL = 12\n").unwrap();
        std::fs::write(b.join("Kconfig"), "mainmenu \"x\"\n").unwrap();
        std::fs::create_dir_all(b.join("lib")).unwrap();
        std::fs::create_dir_all(b.join("scripts")).unwrap();
        std::fs::write(b.join("lib/Makefile"), "obj-y += a.o\n").unwrap();
        std::fs::write(b.join("lib/a.c"), "int a = 1;\n").unwrap();
        std::fs::write(b.join("untouched.c"), "int u;\n").unwrap();
        git(b, &["init", "-q"]);
        git(b, &["add", "."]);
        git(b, &["commit", "-qm", "base"]);

        // Patch 1: clean. Patch 2: adds lib/resmgr.c (warning + check) on top of patch 1's Makefile line.
        std::fs::write(b.join("lib/a.c"), "int a = 2;\n").unwrap();
        std::fs::write(b.join("lib/Makefile"), "obj-y += a.o b.o\n").unwrap();
        git(b, &["commit", "-qam", "lib: a is two"]);
        std::fs::write(b.join("lib/Makefile"), "obj-y += a.o b.o\nobj-y += resmgr.o\n").unwrap();
        std::fs::write(b.join("lib/resmgr.c"), "void f(void) { printk(\"hi\"); } /* check me */\n").unwrap();
        git(b, &["add", "."]);
        git(b, &["commit", "-qm", "resmgr: add a core with a rather long subject line that git folds"]);
        let patches = tempfile::tempdir().unwrap();
        let good = patches.path().join("good");
        git(b, &["format-patch", "-q", "-2", "-o", good.to_str().unwrap()]);
        let mut files: Vec<String> =
            std::fs::read_dir(&good).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        std::fs::write(good.join("series"), files.join("\n") + "\n").unwrap();
        // The same two in the wrong order: the second no longer finds its context.
        let swapped = patches.path().join("swapped");
        std::fs::create_dir(&swapped).unwrap();
        for f in &files {
            std::fs::copy(good.join(f), swapped.join(f)).unwrap();
        }
        std::fs::write(swapped.join("series"), format!("{}\n{}\n", files[1], files[0])).unwrap();
        git(b, &["reset", "-q", "--hard", "HEAD~2"]);
        std::fs::write(b.join("scripts/checkpatch.pl"), FAKE_CHECKPATCH).unwrap();
        let before = git(b, &["status", "--porcelain"]);

        let base = source::user_tree(b).unwrap();
        let check = check_series(&base, patches.path(), "good").unwrap();
        assert_eq!(check.patches.len(), 2);
        let (p1, p2) = (&check.patches[0], &check.patches[1]);
        assert_eq!(p1.subject.as_deref(), Some("lib: a is two"));
        assert_eq!(p2.subject.as_deref(), Some("resmgr: add a core with a rather long subject line that git folds"));
        assert_eq!(p1.applies, Applies::Yes);
        assert_eq!(p2.applies, Applies::Yes, "cumulative: patch 2 on top of patch 1");
        assert_eq!(p1.checkpatch, Checkpatch::default());
        assert_eq!((p2.checkpatch.errors, p2.checkpatch.warnings, p2.checkpatch.checks), (0, 1, 1));
        assert!(p2.checkpatch.lines[0].contains("WARNING: Prefer pr_info"), "{:?}", p2.checkpatch.lines);
        assert!(!check.ok(), "a warning fails the check");
        let table = check.render();
        assert!(table.contains("series good on "), "{table}");
        assert!(table.lines().any(|l| l.starts_with("0002-resmgr-add-a-core") && l.contains(" yes ")), "{table}");
        assert!(table.contains("1 of 2 patch(es) do not apply"), "{table}");

        let check = check_series(&base, patches.path(), "swapped").unwrap();
        assert!(
            matches!(&check.patches[0].applies, Applies::No(why) if why.contains("does not apply") && why.contains("lib/Makefile")),
            "{:?}",
            check.patches[0].applies
        );
        assert_eq!(check.patches[1].applies, Applies::NotTried);
        assert!(check.render().contains("NO"));
        assert_eq!(git(b, &["status", "--porcelain"]), before, "the base tree is only read");
        assert!(!b.join("lib/resmgr.c").exists());

        assert_eq!(series_names(patches.path()).unwrap(), ["good", "swapped"]);
        assert!(series_names(&patches.path().join("none")).unwrap().is_empty());
    }

    #[test]
    fn checkpatch_output_and_subjects() {
        let out = "a.patch:12: ERROR: x\na.patch:13: WARNING: y\na.patch:14: CHECK: z\na.patch:15: CHECK: z\ntotal: 1 errors, 1 warnings, 2 checks, 40 lines checked\n";
        let c = parse_checkpatch(out);
        assert_eq!((c.errors, c.warnings, c.checks, c.lines.len()), (1, 1, 2, 4));
        let c = parse_checkpatch("total: 3 errors, 0 warnings, 0 checks, 40 lines checked\n");
        assert_eq!((c.errors, c.warnings, c.checks), (3, 0, 0), "the total line wins");
        assert_eq!(subject("From x\nSubject: [PATCH v2 3/7] resmgr: a\n b\nFrom: y\n").as_deref(), Some("resmgr: a b"));
        assert_eq!(subject("Subject: plain\n").as_deref(), Some("plain"));
        assert_eq!(subject("--- a/x\n+++ b/x\n"), None);
    }
}
