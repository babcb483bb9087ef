//! KUnit in a booted VM (`cargo xtask kunit`): find the KUnit test modules of a kernel build,
//! load them in the guest one by one (modprobe through the agent, each with a deadline, the
//! console watched for a lost guest), collect every suite's KTAP from debugfs
//! (`/sys/kernel/debug/kunit/<suite>/results`) and cross-check it with the console, and
//! attribute crash reports to the module load they happened in.
//!
//! A module is a KUnit test module when its ELF has a `.kunit_test_suites` section; the suite
//! names are read from it too (each entry points at a `struct kunit_suite`, whose first field
//! is `char name[256]`), so a suite that never reports is a missing result, not silence.
//! Built-in suites (run at boot) are those debugfs or the console show that no module owns.
//!
//! Verdict per suite: its KTAP outcome (failed, skipped, missing cases; [`ktap`]), plus any
//! crash report the console showed during its module's load. Crashes outside any load (boot)
//! are failures of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ktap::{Status, Test};
use serde::Serialize;

use crate::run::vm::Vm;

/// Where KUnit puts one directory per suite.
pub const DEBUGFS_KUNIT: &str = "/sys/kernel/debug/kunit";

/// A KUnit test module in a build's modules tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestModule {
    /// For modprobe: the file name without `.ko`.
    pub name: String,
    pub path: PathBuf,
    /// Suite names read from its `.kunit_test_suites` entries (empty when unreadable).
    pub suites: Vec<String>,
}

/// What the kernel's `.config` says about KUnit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KunitConfig {
    /// `CONFIG_KUNIT=y` or `=m`.
    pub kunit: bool,
    /// `CONFIG_KUNIT_DEBUGFS=y`: per-suite results in debugfs.
    pub debugfs: bool,
}

impl KunitConfig {
    pub fn from_config(text: &str) -> KunitConfig {
        let set = |name: &str| {
            text.lines()
                .any(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')).is_some_and(|v| v == "y" || v == "m"))
        };
        KunitConfig { kunit: set("CONFIG_KUNIT"), debugfs: set("CONFIG_KUNIT_DEBUGFS") }
    }
}

/// Every KUnit test module under `modules` (an `INSTALL_MOD_PATH` tree or any directory),
/// sorted by name. Compressed modules (`.ko.xz`, ...) are not looked into.
pub fn find_test_modules(modules: &Path) -> Result<Vec<TestModule>> {
    let mut found = Vec::new();
    for (name, path) in crate::build::kmod::installed(modules)? {
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if let Some(suites) = kunit_suites(&data) {
            found.push(TestModule { name, path, suites });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// `None` when the ELF has no `.kunit_test_suites` section (or is no ELF); otherwise the
/// names of the suites its entries point at, as far as the relocations allow reading them.
pub fn kunit_suites(elf: &[u8]) -> Option<Vec<String>> {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
    let file = object::File::parse(elf).ok()?;
    let section = file.section_by_name(".kunit_test_suites")?;
    let mut names = Vec::new();
    for (_, reloc) in section.relocations() {
        let RelocationTarget::Symbol(index) = reloc.target() else { continue };
        let Ok(symbol) = file.symbol_by_index(index) else { continue };
        let Some(target) = symbol.section_index() else { continue };
        let Ok(target) = file.section_by_index(target) else { continue };
        let Ok(data) = target.data() else { continue };
        // In a relocatable object a symbol's address is its offset in its section.
        let offset = symbol.address().checked_add_signed(reloc.addend());
        let Some(bytes) = offset.and_then(|o| usize::try_from(o).ok()).and_then(|o| data.get(o..)) else { continue };
        let bytes = &bytes[..bytes.len().min(256)];
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        if let Ok(name) = std::str::from_utf8(&bytes[..end]) {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic()) {
                names.push(name.to_string());
            }
        }
    }
    Some(names)
}

/// A suite-name filter (`--filter GLOB`): `*`, `?`, `[...]`, `{a,b}`.
#[derive(Debug, Clone)]
pub struct Filter {
    glob: Option<globset::GlobMatcher>,
    text: String,
}

impl Filter {
    pub fn new(glob: Option<&str>) -> Result<Filter> {
        let matcher = glob
            .map(|g| globset::Glob::new(g).with_context(|| format!("--filter {g:?}")).map(|g| g.compile_matcher()))
            .transpose()?;
        Ok(Filter { glob: matcher, text: glob.unwrap_or("*").to_string() })
    }

    pub fn matches(&self, suite: &str) -> bool {
        self.glob.as_ref().is_none_or(|g| g.is_match(suite))
    }

    /// The same filter for KUnit's own `kunit.filter_glob` (suite names only; KUnit's
    /// `glob_match` knows `*`, `?` and `[...]`, and a `.` separates a test glob), when it can
    /// say it; otherwise everything runs and the results are filtered.
    pub fn kunit_glob(&self) -> Option<&str> {
        let simple = self.text.chars().all(|c| c.is_ascii_alphanumeric() || "_-*?[]".contains(c));
        (self.glob.is_some() && simple).then_some(self.text.as_str())
    }
}

/// One module load in the guest.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleLoad {
    pub module: String,
    pub elapsed_ms: f64,
    /// How the load failed (modprobe's status and stderr, a timeout, a lost guest); `None`:
    /// it loaded. `outcome` in `steps.jsonl`: `"ok"` or this text.
    #[serde(rename = "outcome", serialize_with = "ok_or_failure")]
    pub failure: Option<String>,
    /// Titles of crash reports the console showed during the load.
    pub crashes: Vec<String>,
}

fn ok_or_failure<S: serde::Serializer>(failure: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(failure.as_deref().unwrap_or("ok"))
}

/// What came back from the guest.
#[derive(Debug, Default)]
pub struct Collected {
    pub loads: Vec<ModuleLoad>,
    /// `(suite, results text)` from debugfs, in directory order.
    pub debugfs: Vec<(String, String)>,
    /// Crash reports seen before the first load (built-in suites at boot) and after the last.
    pub outside_loads: Vec<report::Report>,
    /// Every crash report, for filing.
    pub reports: Vec<report::Report>,
    /// The guest was lost (panic, QEMU exit) or the agent stopped answering: why.
    pub lost: Option<String>,
    pub notes: Vec<String>,
}

/// Loads `modules` in the guest, one at a time, each within `deadline`, then reads debugfs.
/// `parser` sees every console line (the crash-report parser); reports are taken from it
/// after each load and attributed to that load.
pub async fn run_in_guest(
    vm: &mut Vm,
    modules: &[TestModule],
    filter: &Filter,
    deadline: Duration,
    parser: &Arc<Mutex<report::Parser>>,
) -> Collected {
    let take = || parser.lock().unwrap_or_else(|e| e.into_inner()).take_reports();
    let mut c = Collected::default();
    let boot = take();
    c.reports.extend(boot.iter().cloned());
    c.outside_loads.extend(boot);
    if let Some(glob) = filter.kunit_glob() {
        // Module suites are filtered by KUnit itself (built-in ones got it on the cmdline).
        let set = vm.agent().write_file("/sys/module/kunit/parameters/filter_glob", glob.as_bytes()).await;
        if let Err(e) = set {
            c.notes.push(format!("could not set kunit.filter_glob ({e}); every suite runs, results are filtered"));
        }
    }
    for module in modules {
        let mark = format!("unplug-torture: kunit: modprobe {}\n", module.name);
        let _ = tokio::time::timeout(Duration::from_secs(5), vm.agent().write_file("/dev/kmsg", mark.as_bytes())).await;
        let cursor = vm.console().cursor();
        let start = Instant::now();
        let console = vm.console().clone();
        // The agent kills modprobe at the deadline; the outer bound covers an agent that
        // cannot (a load stuck in the kernel).
        let argv = ["modprobe", module.name.as_str()];
        let exec = vm.agent().exec(&argv, deadline);
        let failure = tokio::select! {
            r = tokio::time::timeout(deadline + Duration::from_secs(30), exec) => match r {
                Ok(Ok(out)) if out.success() => None,
                Ok(Ok(out)) if out.timed_out => Some(format!("timed out after {deadline:?} ({})", out.outcome())),
                Ok(Ok(out)) => Some(format!("modprobe {}: {}", out.outcome(), out.stderr_text().trim())),
                Ok(Err(e)) => Some(format!("modprobe failed: {e}")),
                Err(_) => Some(format!("timed out after {:?} (the agent did not answer)", deadline + Duration::from_secs(30))),
            },
            lost = console.wait_until_lost(cursor) => {
                c.lost = Some(lost.to_string());
                Some(format!("guest lost: {lost}"))
            }
        };
        let reports = take();
        c.loads.push(ModuleLoad {
            module: module.name.clone(),
            elapsed_ms: start.elapsed().as_secs_f64() * 1e3,
            failure,
            crashes: reports.iter().map(|r| r.title.clone()).collect(),
        });
        c.reports.extend(reports);
        if c.lost.is_some() {
            return c;
        }
        if c.loads.last().is_none_or(|l| l.failure.is_some()) {
            // Is there still a guest to load the next module into?
            match tokio::time::timeout(Duration::from_secs(10), vm.agent().ping()).await {
                Ok(Ok(_)) => {}
                _ => {
                    c.lost = Some("the guest agent stopped answering".into());
                    return c;
                }
            }
        }
    }
    match read_debugfs(vm, deadline).await {
        Ok(results) => c.debugfs = results,
        Err(e) => c.notes.push(format!("reading {DEBUGFS_KUNIT}: {e:#}")),
    }
    let after = take();
    c.reports.extend(after.iter().cloned());
    c.outside_loads.extend(after);
    c
}

/// Every `<suite>/results` under debugfs' kunit directory (missing directory: none).
async fn read_debugfs(vm: &Vm, deadline: Duration) -> Result<Vec<(String, String)>> {
    let agent = vm.agent();
    let list = agent.exec(&["ls", "-1", DEBUGFS_KUNIT], deadline).await?;
    if !list.success() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for suite in list.stdout_text().lines().map(str::trim).filter(|s| !s.is_empty()) {
        // seq_file: read it with cat, like other debugfs attributes.
        let path = format!("{DEBUGFS_KUNIT}/{suite}/results");
        let text = agent.exec(&["cat", &path], deadline).await?;
        if text.success() {
            out.push((suite.to_string(), text.stdout_text().into_owned()));
        }
    }
    Ok(out)
}

/// Where a suite's result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Debugfs,
    Console,
    /// Named by its module's ELF, reported nowhere.
    Expected,
}

/// One suite's verdict.
#[derive(Debug, Clone)]
pub struct SuiteResult {
    pub name: String,
    /// The module it came from; `None` for a built-in suite.
    pub module: Option<String>,
    pub test: Test,
    pub source: Source,
    /// Crash titles attributed to it.
    pub crashes: Vec<String>,
    /// Its module's load time, when the module holds only this suite and KTAP gave none.
    pub time: Option<Duration>,
}

impl SuiteResult {
    pub fn failed(&self) -> bool {
        self.test.outcome().is_failure() || !self.crashes.is_empty()
    }
}

/// Everything one KUnit run decided.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub suites: Vec<SuiteResult>,
    /// Failures that belong to no suite: crashes at boot, a module that reported nothing, a
    /// lost guest.
    pub other_failures: Vec<String>,
    /// Disagreements between debugfs and the console, and other remarks.
    pub notes: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        !self.suites.is_empty() && self.other_failures.is_empty() && self.suites.iter().all(|s| !s.failed())
    }
}

/// Puts the run together (pure): debugfs results first, the console where debugfs has no
/// complete answer, the modules' suite lists for what never reported; crash titles onto the
/// suites of the module whose load they happened in.
pub fn combine(console: &ktap::Ktap, collected: &Collected, modules: &[TestModule], filter: &Filter) -> Verdict {
    let mut v = Verdict { notes: collected.notes.clone(), ..Verdict::default() };
    let owner: BTreeMap<&str, &str> =
        modules.iter().flat_map(|m| m.suites.iter().map(move |s| (s.as_str(), m.name.as_str()))).collect();
    let debugfs: BTreeMap<&str, Test> = collected
        .debugfs
        .iter()
        .filter_map(|(name, text)| {
            let parsed = ktap::parse(text);
            parsed.tests.into_iter().next().map(|t| (name.as_str(), t))
        })
        .collect();
    // Names in the order they ran: console first, then what only debugfs or a module names.
    let mut order: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let named = console.tests.iter().map(|t| t.name.clone());
    let rest = collected.debugfs.iter().map(|(n, _)| n.clone());
    let expected = modules.iter().filter(|m| loaded(collected, &m.name)).flat_map(|m| m.suites.iter().cloned());
    for name in named.chain(rest).chain(expected) {
        if !name.is_empty() && seen.insert(name.clone()) {
            order.push(name);
        }
    }
    let unnamed = console.tests.iter().filter(|t| t.name.is_empty()).count();
    if unnamed > 0 {
        v.other_failures.push(format!("{unnamed} suite(s) a KTAP plan promised on the console never reported"));
    }
    for name in order {
        if !filter.matches(&name) {
            continue;
        }
        let from_console = console.tests.iter().rev().find(|t| t.name == name);
        let from_debugfs = debugfs.get(name.as_str());
        let (test, source) = match (from_debugfs, from_console) {
            (Some(d), Some(c)) => {
                if d.outcome() != c.outcome() {
                    v.notes.push(format!(
                        "{name}: debugfs says {}, the console {}",
                        d.outcome().as_str(),
                        c.outcome().as_str()
                    ));
                }
                if d.status == Status::Missing && c.status != Status::Missing {
                    (with_time(c.clone(), None), Source::Console)
                } else {
                    // debugfs has no timestamps: take the console's durations.
                    (with_time(d.clone(), c.duration), Source::Debugfs)
                }
            }
            (Some(d), None) => (d.clone(), Source::Debugfs),
            (None, Some(c)) => (c.clone(), Source::Console),
            (None, None) => {
                let mut t = Test::missing(&name);
                t.diagnostics.push("its module loaded but the suite reported nothing".into());
                (t, Source::Expected)
            }
        };
        let module = owner.get(name.as_str()).map(|m| m.to_string());
        v.suites.push(SuiteResult { name, module, test, source, crashes: Vec::new(), time: None });
    }
    for load in &collected.loads {
        let mine: Vec<usize> = v
            .suites
            .iter()
            .enumerate()
            .filter(|(_, s)| s.module.as_deref() == Some(&load.module))
            .map(|(i, _)| i)
            .collect();
        if let Some(failure) = load.failure.as_ref().filter(|_| mine.iter().all(|&i| !v.suites[i].failed())) {
            v.other_failures.push(format!("module {}: {failure}", load.module));
        }
        if mine.len() == 1 && v.suites[mine[0]].test.duration.is_none() {
            v.suites[mine[0]].time = Some(Duration::from_secs_f64(load.elapsed_ms / 1e3));
        }
        if load.crashes.is_empty() {
            continue;
        }
        // The suite that was running: the first that did not pass, else the last one.
        let target = mine.iter().copied().find(|&i| v.suites[i].test.outcome().is_failure()).or(mine.last().copied());
        match target {
            Some(i) => v.suites[i].crashes.extend(load.crashes.iter().cloned()),
            None => {
                for title in &load.crashes {
                    v.other_failures.push(format!("crash while loading {}: {title}", load.module));
                }
            }
        }
    }
    for r in &collected.outside_loads {
        v.other_failures.push(format!("crash outside any test module load: {}", r.title));
    }
    if let Some(lost) = &collected.lost {
        v.other_failures.push(format!("run stopped: {lost}"));
    }
    v
}

fn loaded(c: &Collected, module: &str) -> bool {
    c.loads.iter().any(|l| l.module == module)
}

fn with_time(mut t: Test, duration: Option<std::time::Duration>) -> Test {
    if t.duration.is_none() {
        t.duration = duration;
    }
    t
}

fn seconds(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} s", d.as_secs_f64())).unwrap_or_else(|| "-".into())
}

impl SuiteResult {
    fn shown_time(&self) -> Option<Duration> {
        self.test.duration.or(self.time)
    }
}

/// The per-suite table: suite, passed, failed (missing included), skipped, time, then what
/// failed, with the failure messages.
pub fn table(v: &Verdict) -> String {
    let width = v.suites.iter().map(|s| s.name.len()).max().unwrap_or(5).clamp(5, 48);
    let mut out =
        format!("{:<width$}  {:>6} {:>6} {:>7} {:>9}  result\n", "suite", "passed", "failed", "skipped", "time");
    for s in &v.suites {
        let c = s.test.counts();
        let result = if s.failed() {
            "FAIL"
        } else if s.test.outcome() == Status::Skip {
            "skip"
        } else {
            "ok"
        };
        let missing = if c.missing > 0 { format!(" ({} without result)", c.missing) } else { String::new() };
        out.push_str(&format!(
            "{:<width$}  {:>6} {:>6} {:>7} {:>9}  {result}{missing}\n",
            s.name,
            c.passed,
            c.failed + c.missing,
            c.skipped,
            seconds(s.shown_time())
        ));
    }
    for s in v.suites.iter().filter(|s| s.failed()) {
        out.push_str(&format!("\n{}:\n", s.name));
        for title in &s.crashes {
            out.push_str(&format!("  crash: {title}\n"));
        }
        for (path, t) in s.test.failures() {
            out.push_str(&format!("  {path}: {}\n", t.outcome().as_str()));
            for d in t.diagnostics.iter().filter(|d| !d.ends_with(": initializing")).take(20) {
                out.push_str(&format!("      {d}\n"));
            }
        }
    }
    if !v.other_failures.is_empty() {
        out.push('\n');
        for f in &v.other_failures {
            out.push_str(&format!("FAIL: {f}\n"));
        }
    }
    for n in &v.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    let failed = v.suites.iter().filter(|s| s.failed()).count();
    out.push_str(&format!(
        "\n{} suite(s), {failed} failed{}\n",
        v.suites.len(),
        if v.other_failures.is_empty() {
            String::new()
        } else {
            format!(", {} other failure(s)", v.other_failures.len())
        }
    ));
    if v.suites.is_empty() {
        out.push_str("no KUnit suite ran (none built, or none matches the filter)\n");
    }
    out
}

/// `summary.md` for the run folder.
pub fn summary_markdown(run_id: &str, kernel: &str, v: &Verdict) -> String {
    let verdict = if v.passed() { "pass" } else { "FAIL" };
    let mut md = format!("# kunit — {run_id}\n\nkernel: {kernel}\n\nverdict: **{verdict}**\n\n");
    md.push_str(
        "| suite | module | passed | failed | skipped | time | result | from |\n|---|---|---|---|---|---|---|---|\n",
    );
    for s in &v.suites {
        let c = s.test.counts();
        let source = match s.source {
            Source::Debugfs => "debugfs",
            Source::Console => "console",
            Source::Expected => "-",
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {source} |\n",
            s.name,
            s.module.as_deref().unwrap_or("built-in"),
            c.passed,
            c.failed + c.missing,
            c.skipped,
            seconds(s.shown_time()),
            if s.failed() { "FAIL" } else { "ok" }
        ));
    }
    let text = table(v);
    if let Some((_, details)) = text.split_once("\n\n") {
        md.push_str("\n```\n");
        md.push_str(details.trim_end());
        md.push_str("\n```\n");
    }
    md.push_str("\nFiles: meta.json, steps.jsonl (one line per module load), console.log, ktap.txt (debugfs results), junit.xml, crashes/\n");
    md
}

/// `junit.xml`: a testsuite per KUnit suite, a testcase per case (parameters as
/// `case/param`), crash titles and other failures as failed testcases.
pub fn junit(v: &Verdict) -> Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let status_of = |t: &Test| -> TestCaseStatus {
        match t.outcome() {
            Status::Pass => TestCaseStatus::success(),
            Status::Skip => {
                let mut s = TestCaseStatus::skipped();
                if let Some(r) = t.skip_reason() {
                    s.set_message(r);
                }
                s
            }
            status => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(if status == Status::Missing { ktap::NO_RESULT } else { "failed" });
                s.set_description(t.diagnostics.join("\n"));
                s
            }
        }
    };
    let mut report = Report::new("kunit");
    for s in &v.suites {
        let mut suite = TestSuite::new(s.name.as_str());
        let mut cases: Vec<(String, &Test)> = Vec::new();
        for case in &s.test.subtests {
            let name = if case.name.is_empty() { format!("#{}", case.number.unwrap_or(0)) } else { case.name.clone() };
            if case.subtests.is_empty() {
                cases.push((name, case));
            } else {
                for p in &case.subtests {
                    cases.push((format!("{name}/{}", p.name), p));
                }
                if case.status.is_failure() {
                    cases.push((name, case));
                }
            }
        }
        if cases.is_empty() {
            cases.push((s.name.clone(), &s.test));
        }
        for (name, t) in cases {
            let mut case = TestCase::new(name, status_of(t));
            if let Some(d) = t.duration {
                case.set_time(d);
            }
            suite.add_test_case(case);
        }
        for title in &s.crashes {
            let mut f = TestCaseStatus::non_success(NonSuccessKind::Failure);
            f.set_message(title.as_str());
            suite.add_test_case(TestCase::new(format!("crash: {title}"), f));
        }
        report.add_test_suite(suite);
    }
    if !v.other_failures.is_empty() {
        let mut suite = TestSuite::new("kunit run");
        for f in &v.other_failures {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(f.as_str());
            suite.add_test_case(TestCase::new(f.as_str(), s));
        }
        report.add_test_suite(suite);
    }
    Ok(report.to_string()?)
}

/// `ktap.txt`: the raw debugfs results of the reported suites, in order; a suite debugfs did
/// not have is taken from the console (prefixes stripped).
pub fn raw_ktap(v: &Verdict, collected: &Collected, console_log: &str) -> String {
    let mut out = String::new();
    for s in &v.suites {
        if let Some((_, text)) = collected.debugfs.iter().find(|(n, _)| *n == s.name) {
            out.push_str(text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    if v.suites.iter().any(|s| s.source == Source::Console) || v.suites.is_empty() {
        let mut in_ktap = false;
        for line in console_log.lines() {
            let (_, text) = ktap::strip_console_prefix(line);
            let t = text.trim_start();
            if t.starts_with("KTAP version") || t.starts_with("TAP version") {
                in_ktap = true;
            }
            let ktapish = t.starts_with('#')
                || t.starts_with("ok ")
                || t.starts_with("not ok ")
                || t.starts_with("1..")
                || t.contains("TAP version");
            if in_ktap && ktapish {
                out.push_str(text);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collected(loads: &[(&str, &str, &[&str])], debugfs: &[(&str, &str)]) -> Collected {
        Collected {
            loads: loads
                .iter()
                .map(|(m, o, c)| ModuleLoad {
                    module: m.to_string(),
                    elapsed_ms: 1500.0,
                    failure: (*o != "ok").then(|| o.to_string()),
                    crashes: c.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            debugfs: debugfs.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect(),
            ..Collected::default()
        }
    }

    fn module(name: &str, suites: &[&str]) -> TestModule {
        TestModule {
            name: name.into(),
            path: PathBuf::from(format!("/x/{name}.ko")),
            suites: suites.iter().map(|s| s.to_string()).collect(),
        }
    }

    const RESMGR_OK: &str = "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: resmgr\n    1..2\n    ok 1 a\n    ok 2 b\nok 1 resmgr\n";
    const RUST_FAIL: &str = "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: rust_resmgr\n    1..1\n    # rust_get: ASSERTION FAILED at rust/kernel/resmgr.rs:40\n    not ok 1 rust_get\nnot ok 1 rust_resmgr\n";

    #[test]
    fn config_flags() {
        let c = KunitConfig::from_config("CONFIG_KUNIT=y\n# CONFIG_KUNIT_DEBUGFS is not set\nCONFIG_KUNIT_TEST=m\n");
        assert_eq!(c, KunitConfig { kunit: true, debugfs: false });
        assert_eq!(KunitConfig::from_config("CONFIG_KUNITX=y\n"), KunitConfig { kunit: false, debugfs: false });
    }

    #[test]
    fn filter_globs() {
        let f = Filter::new(Some("resmgr*")).unwrap();
        assert!(f.matches("resmgr_devm") && !f.matches("rust_resmgr"));
        assert_eq!(f.kunit_glob(), Some("resmgr*"));
        let f = Filter::new(Some("{resmgr,rust_resmgr}")).unwrap();
        assert!(f.matches("rust_resmgr") && f.kunit_glob().is_none());
        let all = Filter::new(None).unwrap();
        assert!(all.matches("anything") && all.kunit_glob().is_none());
        assert!(Filter::new(Some("[")).is_err());
    }

    #[test]
    fn combine_prefers_debugfs_attributes_crashes_and_finds_silent_suites() {
        let modules =
            [module("resmgr_kunit", &["resmgr", "resmgr_devm"]), module("rust_resmgr_kunit", &["rust_resmgr"])];
        let c = collected(
            &[
                ("resmgr_kunit", "ok", &[]),
                ("rust_resmgr_kunit", "ok", &["KASAN: slab-use-after-free Read in resmgr_put"]),
            ],
            &[("resmgr", RESMGR_OK), ("rust_resmgr", RUST_FAIL)],
        );
        let console = ktap::parse("[ 1.0] KTAP version 1\n[ 1.0] 1..1\n[ 1.0]     # Subtest: builtin_suite\n[ 1.0]     1..1\n[ 1.5]     ok 1 x\n[ 2.0] ok 1 builtin_suite\n");
        let v = combine(&console, &c, &modules, &Filter::new(None).unwrap());
        let names: Vec<_> = v.suites.iter().map(|s| (s.name.as_str(), s.source, s.failed())).collect();
        assert_eq!(
            names,
            [
                ("builtin_suite", Source::Console, false),
                ("resmgr", Source::Debugfs, false),
                ("rust_resmgr", Source::Debugfs, true),
                ("resmgr_devm", Source::Expected, true),
            ]
        );
        assert_eq!(v.suites[0].module, None);
        assert_eq!(v.suites[0].test.duration, Some(Duration::from_secs(1)));
        assert_eq!(v.suites[2].crashes, ["KASAN: slab-use-after-free Read in resmgr_put"]);
        assert!(v.suites[3].test.diagnostics.iter().any(|d| d.contains("reported nothing")));
        assert!(!v.passed());
        let t = table(&v);
        assert!(t.contains("crash: KASAN: slab-use-after-free Read in resmgr_put"), "{t}");
        assert!(
            t.contains("rust_resmgr.rust_get: fail") && t.contains("ASSERTION FAILED at rust/kernel/resmgr.rs:40"),
            "{t}"
        );
        assert!(
            t.lines().any(|l| l.starts_with("resmgr ") && l.contains("      2      0       0") && l.ends_with("ok")),
            "{t}"
        );
        let xml = junit(&v).unwrap();
        assert!(xml.contains("testsuite name=\"rust_resmgr\"") && xml.contains("crash: KASAN"), "{xml}");
        let md = summary_markdown("run", "6.12.117", &v);
        assert!(md.contains("verdict: **FAIL**") && md.contains("| resmgr | resmgr_kunit | 2 | 0 | 0 |"), "{md}");

        let only = combine(&console, &c, &modules, &Filter::new(Some("resmgr")).unwrap());
        assert_eq!(only.suites.len(), 1);
        assert!(!only.suites[0].failed());
        // A crash is a failure even when the suite it belongs to is filtered out.
        assert_eq!(
            only.other_failures,
            ["crash while loading rust_resmgr_kunit: KASAN: slab-use-after-free Read in resmgr_put"]
        );
    }

    #[test]
    fn failed_loads_crashes_outside_and_lost_guests_fail_the_run() {
        let modules = [module("a_kunit", &["a"])];
        let mut c = collected(&[("a_kunit", "modprobe exited with status 1: Unknown symbol", &[])], &[]);
        let v = combine(&ktap::Ktap::default(), &c, &modules, &Filter::new(None).unwrap());
        assert_eq!(v.suites[0].source, Source::Expected);
        assert!(v.other_failures.is_empty(), "the missing suite carries it: {:?}", v.other_failures);
        c.loads[0].crashes.push("BUG: kernel NULL pointer dereference in a_init".into());
        c.lost = Some("kernel panicked".into());
        let v = combine(&ktap::Ktap::default(), &c, &modules, &Filter::new(None).unwrap());
        assert_eq!(v.suites[0].crashes.len(), 1);
        assert_eq!(v.other_failures, ["run stopped: kernel panicked"]);
        let empty = combine(&ktap::Ktap::default(), &Collected::default(), &[], &Filter::new(None).unwrap());
        assert!(!empty.passed(), "no suite at all is not a pass");
        assert!(table(&empty).contains("no KUnit suite ran"));
    }

    /// A relocatable object laid out like a KUnit module: `.kunit_test_suites` holds pointers
    /// to `struct kunit_suite`s whose first field is the name.
    #[test]
    fn suite_names_from_a_kunit_style_object() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.c");
        std::fs::write(
            &src,
            "struct kunit_suite { char name[256]; void *cases; };\n\
             static struct kunit_suite s1 = { .name = \"resmgr\" };\n\
             static struct kunit_suite s2 = { .name = \"resmgr_devm\" };\n\
             static struct kunit_suite *const suites[] __attribute__((used, section(\".kunit_test_suites\"))) = { &s1, &s2 };\n\
             int not_a_test;\n",
        )
        .unwrap();
        let sub = dir.path().join("lib/modules/6.12.117/kernel/lib");
        std::fs::create_dir_all(&sub).unwrap();
        let compiler = ["cc", "clang", "gcc"]
            .into_iter()
            .find(|c| which::which(c).is_ok())
            .expect("a C compiler (cc, clang or gcc)");
        let ko = sub.join("resmgr_kunit.ko");
        let st = std::process::Command::new(compiler).args(["-c", "-O2", "-o"]).arg(&ko).arg(&src).status().unwrap();
        assert!(st.success());
        std::fs::write(dir.path().join("m.c"), "int plain;\n").unwrap();
        let st = std::process::Command::new(compiler)
            .args(["-c", "-o"])
            .arg(sub.join("plain.ko"))
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
        let found = find_test_modules(dir.path()).unwrap();
        assert_eq!(
            found,
            [TestModule { name: "resmgr_kunit".into(), path: ko, suites: vec!["resmgr".into(), "resmgr_devm".into()] }]
        );
    }

    #[test]
    fn no_kunit_section_is_no_test_module() {
        assert_eq!(kunit_suites(b"not an elf"), None);
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(kunit_suites(&exe), None);
    }
}
