//! What the fault-injection tests share: `xtask` run as a child process in a sandbox of its own
//! (its scenarios, its results folder, and a `TMPDIR` where its VM makes its private
//! directory), a fault injected while it runs, and the checks every case makes afterwards: the
//! documented exit code, a run folder whose every file is valid and that holds a verdict, and
//! nothing of the run left behind — no QEMU it started, no member of that QEMU's process
//! group, no VM directory with its sockets. Only the run's own processes are looked at
//! (children of the `xtask` we started), never anything else on this shared machine.

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::common::{left_of_qemu, qemu_children};

/// A sandbox for one `xtask` run.
pub struct Sandbox {
    dir: tempfile::TempDir,
    pub scenarios: PathBuf,
    pub results: PathBuf,
    /// The run's `TMPDIR`: QEMU's private directory (sockets, memfd) is made in here.
    pub tmp: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let scenarios = dir.path().join("scenarios");
        let results = dir.path().join("results");
        let tmp = dir.path().join("tmp");
        for d in [&scenarios, &tmp] {
            std::fs::create_dir(d).unwrap();
        }
        Sandbox { dir, scenarios, results, tmp }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `scenarios/NAME.yaml`.
    pub fn scenario(&self, name: &str, yaml: &str) {
        std::fs::write(self.scenarios.join(format!("{name}.yaml")), yaml).unwrap();
    }

    /// Starts `xtask torture` on scenario `name` against the kernel under test.
    pub fn torture(&self, name: &str, extra: &[&str]) -> Harness {
        let kernel = testenv::kernel().name();
        let scenarios = self.scenarios.to_str().unwrap();
        let results = self.results.to_str().unwrap();
        let mut args = vec!["torture", "--scenario-dir", scenarios, "--scenario", name, "--kernel", kernel, "--seed", "1", "--results", results];
        args.extend_from_slice(extra);
        self.start(&args)
    }

    /// Starts `xtask ARGS` with the sandbox's `TMPDIR`. `CHAOS_XTASK=PATH` runs another build
    /// of `xtask` instead (an older commit's, to see a case fail before its fix).
    pub fn start(&self, args: &[&str]) -> Harness {
        let stdout = self.dir.path().join("stdout");
        let stderr = self.dir.path().join("stderr");
        let xtask = std::env::var_os("CHAOS_XTASK").unwrap_or_else(|| env!("CARGO_BIN_EXE_xtask").into());
        let child = Command::new(xtask)
            .args(args)
            .env("TMPDIR", &self.tmp)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Harness { child, args: args.iter().map(|a| a.to_string()).collect(), started: Instant::now(), qemus: BTreeSet::new(), stdout, stderr, results: self.results.clone() }
    }
}

/// A running `xtask`.
pub struct Harness {
    child: Child,
    args: Vec<String>,
    pub started: Instant,
    /// Every QEMU seen as a child of it.
    pub qemus: BTreeSet<i32>,
    stdout: PathBuf,
    stderr: PathBuf,
    results: PathBuf,
}

impl Harness {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The QEMUs that are children of this `xtask` now (remembered in `qemus`).
    pub fn running_qemus(&mut self) -> Vec<i32> {
        let found = qemu_children(self.pid());
        self.qemus.extend(&found);
        found
    }

    /// Lines in the run's `steps.jsonl` so far.
    pub fn steps_written(&self) -> usize {
        let Ok(runs) = std::fs::read_dir(&self.results) else { return 0 };
        runs.filter_map(|e| e.ok())
            .filter_map(|e| std::fs::File::open(e.path().join("steps.jsonl")).ok())
            .map(|f| std::io::BufReader::new(f).lines().count())
            .sum()
    }

    /// Waits until `steps.jsonl` has `n` lines (watching for QEMU meanwhile); the QEMU running
    /// then. Panics at the deadline or if `xtask` exits first.
    pub fn wait_for_step(&mut self, n: usize, deadline: Duration) -> i32 {
        loop {
            let qemus = self.running_qemus();
            if self.steps_written() >= n {
                if let [qemu] = qemus[..] {
                    return qemu;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("xtask exited ({status}) before step {n}: {}", self.output());
            }
            assert!(self.started.elapsed() < deadline, "no step {n} within {deadline:?}: {}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: Signal) {
        signal::kill(Pid::from_raw(self.pid()), sig).unwrap();
    }

    fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("xtask {:?}\nstdout:\n{}\nstderr:\n{}", self.args, read(&self.stdout), read(&self.stderr))
    }

    /// Waits for `xtask` to exit (killing it, and failing, after `deadline` from its start).
    pub fn finish(mut self, deadline: Duration) -> Finished {
        let status = loop {
            self.running_qemus();
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if self.started.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("xtask did not exit within {deadline:?}: {}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        Finished { status, elapsed: self.started.elapsed(), stdout: read(&self.stdout), stderr: read(&self.stderr), output: self.output(), qemus: self.qemus }
    }
}

/// How `xtask` ended.
pub struct Finished {
    pub status: ExitStatus,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
    /// Command, stdout and stderr, for failure messages.
    pub output: String,
    pub qemus: BTreeSet<i32>,
}

impl Finished {
    /// Asserts the documented exit code.
    pub fn assert_exit(&self, code: i32) {
        assert_eq!(self.status.code(), Some(code), "{}", self.output);
        assert!(!self.stderr.contains("panicked"), "{}", self.output);
    }

    /// What the run left behind (must be nothing): each QEMU it started still there, a member
    /// of that QEMU's process group still there, a VM directory (sockets) in its `TMPDIR`.
    pub fn orphans(&self, sandbox: &Sandbox) -> Vec<String> {
        let mut left = Vec::new();
        for &qemu in &self.qemus {
            left.extend(left_of_qemu(qemu));
        }
        for entry in std::fs::read_dir(&sandbox.tmp).unwrap().filter_map(|e| e.ok()) {
            left.push(format!("{} in TMPDIR", entry.path().display()));
        }
        left
    }
}

/// The one run folder under `results`, checked: every JSON file parses, every line of every
/// JSONL file parses, `meta.json`, `schedule.json` and `summary.json` are there and load as
/// what they are, every crash folder has its title, type, count and report. Returns the
/// folder and its summary; panics with what is wrong.
pub fn check_run_folder(results: &Path) -> (PathBuf, harness::judge::results::RunSummary) {
    let (runs, others): (Vec<PathBuf>, Vec<PathBuf>) = std::fs::read_dir(results).unwrap().map(|e| e.unwrap().path()).partition(|p| p.is_dir());
    assert_eq!(runs.len(), 1, "one run folder: {runs:?}");
    // Beside it only the matrix record and the results root's page, both whole.
    for other in &others {
        let name = other.file_name().unwrap().to_string_lossy();
        let text = std::fs::read_to_string(other).unwrap();
        if name.starts_with("matrix-") && name.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", other.display()));
        } else {
            assert_eq!(name, "index.html", "unexpected file in the results root");
            assert!(text.ends_with("</html>\n"), "{}: not a whole page", other.display());
        }
    }
    let run = runs[0].clone();
    check_files(&run);
    harness::drive::schedule::Schedule::load(&run.join("schedule.json")).unwrap();
    let meta: harness::judge::results::Meta = serde_json::from_str(&std::fs::read_to_string(run.join("meta.json")).unwrap()).unwrap();
    let summary: harness::judge::results::RunSummary = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.run_id, meta.run_id);
    assert!(run.join("summary.md").is_file());
    if let Ok(crashes) = std::fs::read_dir(run.join("crashes")) {
        for crash in crashes.map(|e| e.unwrap().path()) {
            for file in ["title", "type", "count", "report.txt"] {
                assert!(crash.join(file).is_file(), "{} has no {file}", crash.display());
            }
            let title = std::fs::read_to_string(crash.join("title")).unwrap();
            assert!(!title.trim().is_empty(), "{}: empty title", crash.display());
            let count = std::fs::read_to_string(crash.join("count")).unwrap();
            assert!(count.trim().parse::<u32>().is_ok_and(|n| n > 0), "{}: count {count:?}", crash.display());
            assert!(summary.titles.iter().any(|t| t.title == title.trim()), "{} not in summary.json: {:?}", title.trim(), summary.titles);
        }
    }
    (run, summary)
}

fn check_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()) {
        if entry.is_dir() {
            check_files(&entry);
            continue;
        }
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        // A write that never finished leaves its temporary file: the target is what counts.
        assert!(!name.starts_with(".tmp"), "a temporary file was left: {}", entry.display());
        if name.ends_with(".json") {
            let text = std::fs::read_to_string(&entry).unwrap();
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
                panic!("{}: not valid JSON: {e}", entry.display());
            }
        } else if name.ends_with(".jsonl") {
            let text = std::fs::read_to_string(&entry).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'), "{}: the last line is cut", entry.display());
            for (i, line) in text.lines().enumerate() {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(line) {
                    panic!("{}:{}: not valid JSON: {e}", entry.display(), i + 1);
                }
            }
        }
    }
}

/// The titles of a summary.
pub fn titles(summary: &harness::judge::results::RunSummary) -> Vec<String> {
    summary.titles.iter().map(|t| t.title.clone()).collect()
}
