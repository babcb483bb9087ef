//! Running a schedule in a booted VM: each action in turn, with a kmsg marker before it (so
//! console reports can be attributed to steps), a deadline around it, the taint flags after
//! it, and the observers where the scenario asks. Every step is handed to the caller as soon
//! as it ends, so nothing is lost if the run dies later.
//!
//! A lost guest (kernel panic, QEMU exit) or an agent that stops answering ends the run with
//! a synthetic verdict; an unplug that never completes is recorded and the run goes on. A
//! step the scenario limits to other kernel variants is not run but recorded as such.
//!
//! A recorded run is judged against what its scenario expects on the kernel it ran on
//! ([`crate::judge::results::Summary::why_not`]); `summary.json` and [`RunVerdict::summary`] say
//! whether it met that and why not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use agent::HoldKind;

use crate::run::agent_link::AgentError;
use crate::devices::holders::{Holders, HolderState};
use crate::judge::integrity::{DataMismatch, Model};
use crate::run::console::ConsoleError;
use crate::judge::observe::{self, Observation};
use crate::run::qmp::QmpError;
use crate::drive::scenario::KernelVariant;
use crate::drive::schedule::{Action, Planned, Schedule};
use crate::run::pace::Pace;
use crate::devices::testbed::Testbed;
use crate::run::vm::Vm;
use crate::judge::results::{ImageMeta, Meta, RunDir, Summary};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Deadline for one action (a wait for the console, an exec without its own timeout...).
    pub step_timeout: Duration,
    /// How long QEMU gets to report `DEVICE_DELETED` before the unplug counts as stuck.
    pub unplug_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { step_timeout: Duration::from_secs(120), unplug_timeout: Duration::from_secs(10) }
    }
}

impl RunOptions {
    /// These deadlines (written for the reference machines) on a host of `pace`.
    pub fn paced(&self, pace: Pace) -> RunOptions {
        RunOptions { step_timeout: pace.scale(self.step_timeout), unplug_timeout: pace.scale(self.unplug_timeout) }
    }
}

/// How one step ended.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "status", content = "detail")]
pub enum StepStatus {
    Ok,
    /// The action failed (nonzero exit of a checked command, a write the kernel refused...).
    Failed(String),
    /// `device_del` was accepted but `DEVICE_DELETED` never came.
    UnplugStuck(String),
    /// The action did not finish within the step deadline.
    TimedOut(String),
    /// Not run: the scenario limits the step to other kernel variants (`only`).
    NotOnThisKernel(String),
}

impl StepStatus {
    /// The step ran and did not do what it should.
    pub fn failed(&self) -> bool {
        !matches!(self, StepStatus::Ok | StepStatus::NotOnThisKernel(_))
    }
}

/// One executed step, as it goes to `steps.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// 1-based position in the schedule.
    pub index: usize,
    pub total: usize,
    pub iteration: Option<u32>,
    pub step: usize,
    pub action: Action,
    pub description: String,
    /// Milliseconds since the run started (VM booted).
    pub started_ms: f64,
    pub elapsed_ms: f64,
    #[serde(flatten)]
    pub status: StepStatus,
    /// Output or what the guest showed, when there is something to show.
    pub output: Option<String>,
    /// `/proc/sys/kernel/tainted` after the step.
    pub taint: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub observations: Vec<Observation>,
    /// After the step, one line per holder started so far: what it has seen.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// The same holders by scenario name, for `summary.json` (the line above is for people).
    #[serde(skip)]
    pub holders: Vec<HolderState>,
    /// Reads since the previous step that succeeded with bytes the device never held.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_mismatches: Vec<DataMismatch>,
}

/// The run's holders, by the names the scenario gave them.
struct RunHolders {
    consumers: Holders,
    /// Holders not yet released.
    by_name: BTreeMap<String, u64>,
    /// Every holder's name, released or not.
    names: BTreeMap<u64, String>,
    /// Compares what the holders read with the device models.
    integrity: crate::judge::integrity::Checker,
}

/// A holder runs until its `release` step (or the end of the VM); this only bounds one the
/// run lost track of.
const HOLD_DEADLINE: Duration = Duration::from_secs(3600);

impl RunHolders {
    fn new(vm: &Vm) -> RunHolders {
        RunHolders {
            consumers: Holders::new(vm.agent()),
            by_name: BTreeMap::new(),
            names: BTreeMap::new(),
            integrity: crate::judge::integrity::Checker::default(),
        }
    }

    /// Starts a holder and returns once its first use returned, so a later unplug step never
    /// overtakes it.
    async fn hold(&mut self, testbed: &Testbed, name: &str, kind: HoldKind, on: &str) -> Result<String, String> {
        let nodes = testbed.nodes(on).ok_or_else(|| format!("{on:?} is not a plugged provider with guest nodes"))?;
        let request = crate::drive::hold_session::request_for(kind, nodes, HOLD_DEADLINE)?;
        let path = request.path.clone();
        // The at24 the holder's reads reach, if any: the I2C kinds' address, else the nvmem's.
        let address = request.addr.and_then(|a| u8::try_from(a).ok()).or(nodes.nvmem.first().map(|(a, _)| *a));
        let model = address.and_then(|a| Some((a, testbed.eeprom(on, a)?)));
        let handle = self.consumers.hold(request).await.map_err(|e| e.to_string())?;
        if let Some((address, eeprom)) = model {
            self.integrity.watch(handle, Model { device: format!("at24 {address:#04x} behind {on}"), eeprom });
        }
        // Named even if not ready: a `release` step must still close it.
        self.by_name.insert(name.to_string(), handle);
        self.names.insert(handle, name.to_string());
        self.consumers.wait_ready(handle).await?;
        Ok(format!("holder {handle} ({}) on {path}", kind.name()))
    }

    /// Closes the holder; its summary and every record it sent, as output.
    async fn release(&mut self, name: &str) -> Result<String, String> {
        let handle = self.by_name.remove(name).ok_or_else(|| format!("no holder named {name:?}"))?;
        let released = self.consumers.release(handle).await;
        let log = self.consumers.log(handle).unwrap_or_default();
        let mut out = log.summary();
        for record in &log.records {
            out.push('\n');
            out.push_str(&serde_json::to_string(record).unwrap_or_default());
        }
        match (released, log.trouble()) {
            (Ok(()), None) => Ok(out),
            (Ok(()), Some(trouble)) => Err(format!("holder {handle}: {trouble}\n{out}")),
            (Err(e), _) => Err(format!("{e}\n{out}")),
        }
    }

    fn summaries(&self) -> Vec<String> {
        self.consumers.logs().iter().map(|l| l.summary()).collect()
    }

    /// The holders' reads since the last check whose bytes their device never held.
    fn data_mismatches(&mut self) -> Vec<DataMismatch> {
        let names = &self.names;
        self.integrity.check(&self.consumers.logs(), |h| names.get(&h).cloned().unwrap_or_else(|| format!("holder {h}")))
    }

    fn states(&self) -> Vec<HolderState> {
        let logs = self.consumers.logs();
        logs.iter().map(|l| l.state(self.names.get(&l.handle).map_or("?", String::as_str))).collect()
    }
}

/// Why a run stopped before its last step.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Abort {
    /// Kernel panic or QEMU exit.
    GuestLost(String),
    /// The agent stopped answering pings.
    AgentUnresponsive(String),
    /// Nothing answers: not the agent, not the console, not QEMU's monitor (a frozen machine).
    NoOutput(String),
    /// The command was stopped ([`Stop`]): by what (`SIGINT`, `SIGTERM`).
    Interrupted(&'static str),
    /// Writing the run folder failed (see [`RunVerdict::write_error`]).
    ResultsUnwritable,
}

/// Runs every action of `schedule` meant for `kernel` (the others are recorded as not on this
/// kernel), handing each finished step to `on_step` at once.
pub async fn run_schedule(
    vm: &mut Vm,
    testbed: &mut Testbed,
    schedule: &Schedule,
    kernel: KernelVariant,
    options: &RunOptions,
    mut on_step: impl FnMut(&StepRecord),
) -> Result<(), Abort> {
    let start = Instant::now();
    let total = schedule.actions.len();
    // `wait_console` looks at what the previous action caused, so it searches from the
    // console position at which that action began.
    let mut previous_cursor = vm.console().cursor();
    let mut holders = RunHolders::new(vm);
    for (i, planned) in schedule.actions.iter().enumerate() {
        let index = i + 1;
        let description = planned.describe();
        if !planned.runs_on(kernel) {
            let skipped = (StepStatus::NotOnThisKernel(format!("not on {kernel}")), None, Vec::new());
            let started_ms = start.elapsed().as_secs_f64() * 1e3;
            on_step(&step_record((index, total), planned, description, (started_ms, 0.0), skipped, None, &mut holders));
            continue;
        }
        mark_step(vm, index, total, planned, &description).await;
        let step_cursor = vm.console().cursor();
        let started_ms = start.elapsed().as_secs_f64() * 1e3;
        let step_start = Instant::now();
        let lost = vm.console().clone();
        let outcome = tokio::select! {
            r = tokio::time::timeout(options.step_timeout, execute(vm, testbed, &mut holders, &planned.action, previous_cursor, options)) => r,
            lost = lost.wait_until_lost(step_cursor) => return Err(Abort::GuestLost(lost.to_string())),
        };
        let (status, output, mut observations) = match outcome {
            Ok(result) => result,
            Err(_) => {
                // A cancelled unplug leaves its device half-removed: the testbed recorded it.
                let note = match &planned.action {
                    Action::Unplug { id, .. } if testbed.interrupted().contains(id) => {
                        Some(format!("the unplug of {id} was cancelled half-way; {id} is kept as interrupted (not plugged, not known gone)"))
                    }
                    _ => None,
                };
                (
                    StepStatus::TimedOut(format!("no result within {:?}", options.step_timeout)),
                    note,
                    Vec::new(),
                )
            }
        };
        // Teardown steps leave the state lifetime bugs live in: observe it every time.
        if matches!(planned.action, Action::Unplug { .. } | Action::Release { .. }) && status == StepStatus::Ok {
            observations = observe::observe_all(vm.agent()).await;
        }
        let taint = observe::taint(vm.agent()).await;
        let times = (started_ms, step_start.elapsed().as_secs_f64() * 1e3);
        let record = step_record((index, total), planned, description, times, (status, output, observations), taint, &mut holders);
        on_step(&record);
        // A step that only waits (a delay) cannot fail: the taint read after it failing is
        // what shows a guest that stopped answering.
        if record.status.failed() || taint.is_none() {
            check_alive(vm).await?;
        }
        previous_cursor = step_cursor;
    }
    Ok(())
}

type StepResult = (StepStatus, Option<String>, Vec<Observation>);

/// The record of planned step `index` of `total`: when it started and how long it took (ms),
/// its outcome, the taint after it, what the holders have seen so far and which of their
/// reads since the last step returned bytes the device never held.
fn step_record(
    (index, total): (usize, usize),
    planned: &Planned,
    description: String,
    (started_ms, elapsed_ms): (f64, f64),
    (status, output, observations): StepResult,
    taint: Option<u64>,
    holders: &mut RunHolders,
) -> StepRecord {
    StepRecord {
        index,
        total,
        iteration: planned.iteration,
        step: planned.step,
        action: planned.action.clone(),
        description,
        started_ms,
        elapsed_ms,
        status,
        output,
        taint,
        observations,
        consumers: holders.summaries(),
        holders: holders.states(),
        data_mismatches: holders.data_mismatches(),
    }
}

/// Start of the kmsg line written before every step.
pub const STEP_MARKER: &str = "unplug-torture: step ";

async fn execute(
    vm: &mut Vm,
    testbed: &mut Testbed,
    holders: &mut RunHolders,
    action: &Action,
    previous_cursor: crate::run::console::LineCursor,
    options: &RunOptions,
) -> StepResult {
    let ok = |output: Option<String>| (StepStatus::Ok, output, Vec::new());
    let failed = |e: String| (StepStatus::Failed(e), None, Vec::new());
    match action {
        Action::Plug { device, id } => match testbed.plug(vm, device, id).await {
            Ok(o) => ok(o.guest_saw),
            Err(e) => failed(format!("{e:#}")),
        },
        Action::Unplug { id, how } => match testbed.unplug(vm, id, *how, options.unplug_timeout).await {
            Ok(o) => ok(o.guest_saw),
            Err(e) => match e.downcast_ref::<QmpError>() {
                Some(stuck @ QmpError::UnplugStuck { .. }) => (StepStatus::UnplugStuck(stuck.to_string()), None, Vec::new()),
                _ => failed(format!("{e:#}")),
            },
        },
        Action::Exec { argv, check, timeout_ms } => {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let timeout = timeout_ms.map(Duration::from_millis).unwrap_or(options.step_timeout);
            match vm.agent().exec(&argv, timeout).await {
                Ok(out) => {
                    let text = format!("{}{}", out.stdout_text(), out.stderr_text());
                    let output = (!text.is_empty()).then_some(text);
                    if *check && !out.success() {
                        (StepStatus::Failed(out.outcome()), output, Vec::new())
                    } else {
                        ok(output)
                    }
                }
                Err(e) => failed(e.to_string()),
            }
        }
        Action::Write { path, value } => result(vm.agent().write_file(path, value.as_bytes()).await),
        Action::Mkdir { path } => result(vm.agent().mkdir(path).await),
        Action::Rmdir { path } => result(vm.agent().rmdir(path).await),
        Action::WaitConsole { text } => {
            // Our own step marker quotes the text; it must not satisfy the wait.
            let wanted = |line: &str| line.contains(text.as_str()) && !line.contains(STEP_MARKER);
            match vm.console().wait_until(previous_cursor, text, options.step_timeout, wanted).await {
                Ok(line) => ok(Some(line.text)),
                Err(e @ ConsoleError::Timeout { .. }) => failed(e.to_string()),
                Err(e) => failed(e.to_string()),
            }
        }
        Action::Delay { .. } => {
            // `delay()` is always Some for a Delay action.
            tokio::time::sleep(action.delay().unwrap_or_default()).await;
            ok(None)
        }
        Action::Observe => (StepStatus::Ok, None, observe::observe_all(vm.agent()).await),
        Action::Fault(fault) => match testbed.set_faults(fault) {
            Ok(what) => ok(Some(what)),
            Err(e) => failed(format!("{e:#}")),
        },
        Action::Bind { id } => match testbed.bind(vm, id).await {
            Ok(o) => ok(o.guest_saw),
            Err(e) => failed(format!("{e:#}")),
        },
        Action::Hold { name, kind, on } => match holders.hold(testbed, name, *kind, on).await {
            Ok(what) => ok(Some(what)),
            Err(e) => failed(e),
        },
        Action::Release { name } => match holders.release(name).await {
            Ok(what) => ok(Some(what)),
            Err(e) => failed(e),
        },
    }
}

fn result(r: Result<(), AgentError>) -> StepResult {
    match r {
        Ok(()) => (StepStatus::Ok, None, Vec::new()),
        Err(e) => (StepStatus::Failed(e.to_string()), None, Vec::new()),
    }
}

/// Writes a step marker to the kernel log, so a report in the console can be attributed to
/// the step that was running. Best effort: a guest too broken to take it is caught next.
async fn mark_step(vm: &Vm, index: usize, total: usize, planned: &Planned, description: &str) {
    let iteration = planned.iteration.map(|i| format!(" iteration {i}")).unwrap_or_else(|| " setup".into());
    let line = format!("{STEP_MARKER}{index}/{total}{iteration}: {description}\n");
    let _ = tokio::time::timeout(vm.pace().scale(MARK_DEADLINE), vm.agent().write_file("/dev/kmsg", line.as_bytes())).await;
}

/// How long a step marker may take to write (reference machines; scaled).
const MARK_DEADLINE: Duration = Duration::from_secs(5);

/// After a failed step: is the guest still there to run the next one? (Busy printing is
/// alive: see [`Vm::responsive`].) A mute agent on a machine whose QEMU does not answer its
/// monitor either is a frozen machine: no output at all.
async fn check_alive(vm: &mut Vm) -> Result<(), Abort> {
    if !vm.is_running() || vm.console().has_ended() {
        return Err(Abort::GuestLost("QEMU exited".into()));
    }
    let mute = match vm.responsive().await {
        Ok(()) => return Ok(()),
        Err(why) => why,
    };
    let patience = vm.pace().scale(MONITOR_PATIENCE);
    match tokio::time::timeout(patience, vm.qmp().execute(qapi::qmp::query_status {})).await {
        Ok(Ok(_)) => Err(Abort::AgentUnresponsive(mute)),
        // A monitor that fails because QEMU is on its way out (a guest power-off closes the
        // socket before the process is reaped) is a lost machine, not a frozen one.
        Ok(Err(e)) if qemu_exits_within(vm, patience).await => {
            Err(Abort::GuestLost(format!("QEMU exited ({mute}; its monitor: {e})")))
        }
        Ok(Err(e)) => Err(Abort::NoOutput(format!("{mute}; QEMU's monitor failed too: {e}"))),
        Err(_) => Err(Abort::NoOutput(format!("{mute}; QEMU's monitor did not answer within {patience:?} either"))),
    }
}

/// Whether QEMU's process ends within `patience` (polled: it is our child, reaped by tokio).
async fn qemu_exits_within(vm: &mut Vm, patience: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    while vm.is_running() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// How long QEMU's monitor gets to answer `query-status` (reference machines; scaled) when
/// the agent is mute. It answers from QEMU's main loop, whatever the guest does.
const MONITOR_PATIENCE: Duration = Duration::from_secs(5);

/// Everything one recorded run needs.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub kernel: crate::judge::results::KernelMeta,
    /// Which variant `kernel` is: decides the `only` steps and the expectation.
    pub variant: KernelVariant,
    pub initrd: std::path::PathBuf,
    /// The initramfs's cache key, recorded in meta.json so a replay can boot the same image.
    pub image_key: Option<String>,
    pub schedule: Schedule,
    pub accel: crate::run::vm::Accel,
    pub options: RunOptions,
    pub results_root: std::path::PathBuf,
    /// Command line that reruns the scenario with the same seed.
    pub reproducer: String,
    /// Which repeat of its matrix cell this is (recorded in meta.json); `None`: not repeated.
    pub repeat: Option<crate::drive::matrix::RepeatMeta>,
    /// Stops the run during its boot or between steps (Ctrl-C, SIGTERM: see
    /// [`stop_on_signals`]); QEMU is still shut down and the summary written.
    pub stop: Stop,
    pub progress: crate::drive::progress::Progress,
}

/// The stop request every run of one command shares: the first SIGINT (Ctrl-C) or SIGTERM
/// (a CI job's timeout, `kill`) stops them all, and each run's summary says which signal it was.
/// (The signals' default action would end the process on the spot: no summary, and the VMs'
/// directories with their sockets left.)
#[derive(Debug, Clone, Default)]
pub struct Stop {
    token: tokio_util::sync::CancellationToken,
    why: std::sync::Arc<std::sync::OnceLock<&'static str>>,
}

impl Stop {
    /// Stops every run holding a clone; the first reason given is the one recorded.
    pub fn stop(&self, why: &'static str) {
        let _ = self.why.set(why);
        self.token.cancel();
    }

    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when stopped, with the reason.
    pub async fn stopped(&self) -> &'static str {
        self.token.cancelled().await;
        self.why.get().copied().unwrap_or("a stop request")
    }
}

/// A [`Stop`] stopped by the first SIGINT or SIGTERM. Must be called inside the runtime.
pub fn stop_on_signals() -> std::io::Result<Stop> {
    use tokio::signal::unix::{signal, SignalKind};
    let stop = Stop::default();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let why = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        on_signal.stop(why);
    });
    Ok(stop)
}

/// How a recorded run ended.
#[derive(Debug, Clone)]
pub struct RunVerdict {
    pub scenario: String,
    pub dir: std::path::PathBuf,
    /// Crash titles, stuck unplugs, a lost guest: everything a maintainer should look at.
    pub findings: Vec<String>,
    pub interrupted: bool,
    /// Whether the VM booted (to the agent): a kernel that does not boot cannot be tested.
    pub booted: bool,
    /// The first results write that failed (with its path), and how many failed in all. The
    /// run still shut QEMU down, parsed the console to its end and wrote what it could; the
    /// command exits 2 (harness failure) when this is set.
    pub write_error: Option<String>,
    /// What `summary.json` says at the end: titles, holders, the expectation met or why not.
    pub summary: crate::judge::results::RunSummary,
}

/// How long after QEMU's exit the console may take to reach EOF before the last reports
/// are parsed without it.
const CONSOLE_EOF_DEADLINE: Duration = Duration::from_secs(10);

/// The run folder and everything written to it, owned by a thread of its own: step lines are
/// fsynced, crash reports symbolized (loading a ~100 MiB vmlinux and its DWARF) and summaries
/// rewritten there, never on the async runtime that QMP, the console and the agent share.
struct Recording {
    run: crate::judge::results::RunDir,
    summary: crate::judge::results::Summary,
    findings: Vec<String>,
    filer: CrashFiler,
    taint_before: u64,
    unplug_timeout: Duration,
    /// Each step's index with the console lines the report parser had read when it ended:
    /// the step a report began in, when it settles in a later one.
    step_ends: Vec<(usize, u64)>,
    /// First failed write and the number of failures.
    write_error: Option<anyhow::Error>,
    write_failures: usize,
    /// Tells the run to stop at once after the first failed write.
    write_failed: std::sync::Arc<tokio::sync::Notify>,
}

impl Recording {
    fn record(&mut self, r: anyhow::Result<()>) {
        if let Err(e) = r {
            self.write_failures += 1;
            if self.write_error.is_none() {
                self.write_error = Some(e);
                self.write_failed.notify_one();
            }
        }
    }

    fn write_summary(&mut self) {
        let r = self.run.write_summary(&self.summary);
        self.record(r);
        self.publish();
    }

    /// Rewrites the run's `index.html` and `kcidb.json` from what the folder holds now.
    fn publish(&mut self) {
        let path = self.run.path().to_path_buf();
        let r = crate::judge::html::write_run_page(&path).and_then(|()| crate::judge::kcidb::write(&path));
        self.record(r);
    }

    /// Rewrites the results root's `index.html` (the list of runs).
    fn publish_root(&mut self) {
        if let Some(root) = self.run.path().parent() {
            let r = crate::judge::html::write_root_index(root);
            self.record(r);
        }
    }

    fn file(&mut self, r: &report::Report, step: Option<usize>, count: u64) {
        let res = self.filer.file(&mut self.run, r, step, count);
        self.record(res);
    }

    /// Files reports collected from the console (deduplicated by title, with counts), each in
    /// the step it began in (`step`: the one that just ended, or `None` after the last) and
    /// among that step's filed titles; one finding per step and bug they were filed under,
    /// follow-ons counted in it.
    fn file_collected(&mut self, reports: &report::Collected, step: Option<usize>) {
        // (step, bug title, reports, titles that were follow-ons)
        let mut bugs: Vec<(Option<usize>, String, u64, usize)> = Vec::new();
        for c in &reports.reports {
            let step = step_begun_in(&self.step_ends, c.report.start_line).or(step);
            self.file(&c.report, step, c.count);
            let title = &c.report.title;
            if let Some(line) = self.summary.steps.iter_mut().find(|st| Some(st.index) == step) {
                if !line.filed_titles.contains(title) {
                    line.filed_titles.push(title.clone());
                }
            }
            let bug = self.run.bug_of(title).unwrap_or(title).to_string();
            let follow_on = usize::from(self.run.is_follow_on(title));
            match bugs.iter_mut().find(|(s, b, ..)| *s == step && *b == bug) {
                Some((_, _, n, f)) => (*n, *f) = (*n + c.count, *f + follow_on),
                None => bugs.push((step, bug, c.count, follow_on)),
            }
        }
        for (step, bug, n, follow_ons) in bugs {
            let times = if n > 1 { format!(" (x{n})") } else { String::new() };
            let follow_ons = match follow_ons {
                0 => String::new(),
                f => format!(" with {f} follow-on title(s)"),
            };
            match step {
                Some(i) => self.findings.push(format!("step {i}: {bug}{times}{follow_ons}")),
                None => self.findings.push(format!("{bug}{times}{follow_ons}")),
            }
        }
        if let Some(note) = reports.dropped_note() {
            let signal = match step {
                Some(i) => format!("step {i}: {note}"),
                None => note,
            };
            self.findings.push(signal.clone());
            self.summary.signals.push(signal);
        }
    }

    fn step(&mut self, step: &StepRecord, taken: &crate::judge::crash_feed::Taken) {
        use crate::judge::results::StepLine;
        let r = self.run.append_step(step);
        self.record(r);
        let stuck = match (&step.status, &step.action) {
            (StepStatus::UnplugStuck(_), Action::Unplug { id, .. }) => Some(report::synthetic::unplug_stuck(id, self.unplug_timeout)),
            _ => None,
        };
        self.summary.steps.push(StepLine {
            index: step.index,
            description: step.description.clone(),
            ok: !step.status.failed(),
            detail: match &step.status {
                StepStatus::Ok | StepStatus::NotOnThisKernel(_) => None,
                StepStatus::Failed(d) | StepStatus::UnplugStuck(d) | StepStatus::TimedOut(d) => {
                    Some(d.clone())
                }
            },
            elapsed_ms: step.elapsed_ms,
            not_run: match &step.status {
                StepStatus::NotOnThisKernel(why) => Some(why.clone()),
                _ => None,
            },
            // The console's reports join in `file_collected`, in the step they began in.
            filed_titles: stuck.iter().map(|r| r.title.clone()).chain(step.data_mismatches.iter().map(|m| m.report().title)).collect(),
        });
        self.summary.holders = step.holders.clone();
        self.step_ends.push((step.index, taken.lines_seen));
        let reports = &taken.reports;
        self.file_collected(reports, Some(step.index));
        // A read of the guest's state that hangs or fails, and a late close that does
        // not return, are findings of their own.
        let mut signals: Vec<String> = step
            .observations
            .iter()
            .filter(|o| o.outcome != observe::ObserverOutcome::Ok)
            .map(|o| {
                format!(
                    "step {}: observer {} {}: {}",
                    step.index, o.path, o.outcome, o.detail
                )
            })
            .collect();
        if let (StepStatus::Failed(d), Action::Release { name }) = (&step.status, &step.action) {
            signals.push(format!(
                "step {}: holder {name}: release failed: {}",
                step.index,
                d.lines().next().unwrap_or("")
            ));
        }
        for signal in signals {
            self.findings.push(signal.clone());
            self.summary.signals.push(signal);
        }
        if let (Some(stuck), StepStatus::UnplugStuck(d)) = (&stuck, &step.status) {
            self.findings.push(format!("step {}: {d}", step.index));
            self.file(stuck, Some(step.index), 1);
        }
        // One finding per holder and step: its first wrong read, with how many there were.
        let mut mismatched: Vec<&str> = Vec::new();
        for m in &step.data_mismatches {
            if mismatched.contains(&m.holder.as_str()) {
                continue;
            }
            mismatched.push(&m.holder);
            let n = step.data_mismatches.iter().filter(|o| o.holder == m.holder).count() as u64;
            let report = m.report();
            let times = if n > 1 { format!(" (x{n})") } else { String::new() };
            self.findings.push(format!("step {}: {}{times}", step.index, report.title));
            self.file(&report, Some(step.index), n);
        }
        if !reports.reports.is_empty()
            || reports.dropped > 0
            || matches!(step.status, StepStatus::UnplugStuck(_))
            || !step.data_mismatches.is_empty()
        {
            self.write_summary();
        }
        if let Some(taint) = step.taint {
            let gained = report::Taint(taint)
                .new_since(report::Taint(self.taint_before))
                .0;
            // Only "the kernel hit a bug" flags are findings: loading our test
            // module sets O (out-of-tree), which says nothing about the kernel.
            if report::Taint(gained).is_bad() {
                let signal = format!(
                    "step {} ({}): kernel taint gained {} (now {taint:#x})",
                    step.index,
                    step.description,
                    report::Taint(gained).letters()
                );
                self.findings.push(signal.clone());
                self.summary.signals.push(signal);
            }
            self.taint_before = taint;
        }
        self.publish();
    }
}

type Job = Box<dyn FnOnce(&mut Recording) + Send>;

/// The async side of the recording thread.
struct Recorder {
    jobs: std::sync::mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<Recording>,
}

impl Recorder {
    fn start(mut recording: Recording) -> anyhow::Result<Recorder> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("results-writer".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut recording);
                }
                recording
            })?;
        Ok(Recorder { jobs, thread })
    }

    fn send(&self, job: impl FnOnce(&mut Recording) + Send + 'static) {
        // The thread only ends when `jobs` is dropped (in `finish`).
        let _ = self.jobs.send(Box::new(job));
    }

    /// Runs the queued jobs to the end and hands the recording back.
    async fn finish(self) -> anyhow::Result<Recording> {
        drop(self.jobs);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| anyhow::anyhow!("joining the results writer: {e}"))?
            .map_err(|_| anyhow::anyhow!("the results writer panicked"))
    }
}

/// Boots a VM for `request.schedule`, runs it and records everything under a new run folder.
/// Ctrl-C stops the run between steps, kills QEMU and still writes the summary. A write that
/// fails (disk full, a read-only folder) stops the run too: QEMU is still shut down, the
/// console parsed to its end and whatever can be written is; the failure is in
/// [`RunVerdict::write_error`]. Only a run folder that cannot be created at all is an `Err`.
pub async fn run_recorded(request: RunRequest) -> anyhow::Result<RunVerdict> {
    let schedule = &request.schedule;
    let run = RunDir::create(&request.results_root, &schedule.scenario)?;
    let run_path = run.path().to_path_buf();
    let mut meta = run_meta(&request, &run);
    let write_failed = std::sync::Arc::new(tokio::sync::Notify::new());
    let recorder = start_recording(&request, run, &meta, write_failed.clone())?;

    let mut config = crate::run::vm::VmConfig::new(request.kernel.bzimage.clone(), vec![request.initrd.clone()]);
    config.accel = request.accel;
    config.cmdline = schedule.cmdline.clone();
    config.log_dir = Some(run_path.clone());
    let repeat = match &request.repeat {
        Some(r) if r.of > 1 => format!(" #{}/{}", r.index, r.of),
        _ => String::new(),
    };
    let progress = request.progress.run(&format!("{} on {}{repeat}", schedule.scenario, request.variant), schedule.actions.len() as u64);

    let mut interrupted = false;
    let mut booted = false;
    let (feed, sink) = crate::judge::crash_feed::ReportFeed::start()?;
    let boot = tokio::select! {
        boot = crate::run::vm::Vm::boot(&config, vec![sink]) => Ok(boot),
        // Dropping the boot kills QEMU and removes its directory.
        signal = request.stop.stopped() => Err(signal),
    };
    match boot {
        Err(signal) => {
            interrupted = true;
            recorder.send(move |r| r.summary.aborted = Some(format!("interrupted by {signal} during boot")));
        }
        Ok(Err(e)) => {
            let why = format!("boot failed: {e:#}");
            recorder.send(move |r| {
                r.summary.aborted = Some(why.clone());
                r.findings.push(why);
            });
        }
        Ok(Ok(vm)) => {
            booted = true;
            let booted_run = BootedRun { request: &request, recorder: &recorder, feed: &feed, progress: &progress, write_failed: &write_failed };
            interrupted = booted_run.drive(vm, &mut meta).await;
        }
    }
    drop(progress);
    // Whatever the console printed after the last step (or during a failed boot), to its
    // very end: QEMU is gone, so the console reaches EOF and a report it cut off is filed
    // as cut short.
    let end = feed.finish(CONSOLE_EOF_DEADLINE).await;
    recorder.send(move |r| {
        r.file_collected(&end.reports, None);
        if !end.reached_eof {
            let signal = format!("the console did not reach its end within {CONSOLE_EOF_DEADLINE:?} after QEMU stopped; later lines were not parsed");
            r.summary.signals.push(signal.clone());
            r.findings.push(signal);
        }
        r.summary.in_progress = false;
        r.write_summary();
        r.publish_root();
    });
    let recording = recorder.finish().await?;
    let write_error = recording.write_error.map(|e| {
        let more = match recording.write_failures {
            0 | 1 => String::new(),
            n => format!(" ({} more writes failed)", n - 1),
        };
        format!("writing results into {}: {e:#}{more}", run_path.display())
    });
    Ok(RunVerdict {
        scenario: schedule.scenario.clone(),
        dir: run_path,
        summary: recording.run.run_summary(&recording.summary),
        findings: recording.findings,
        interrupted,
        booted,
        write_error,
    })
}

/// `meta.json` as known before the boot (QEMU's version, the accelerator and the pace come
/// with it).
fn run_meta(request: &RunRequest, run: &RunDir) -> Meta {
    Meta {
        run_id: run.id(),
        scenario: request.schedule.scenario.clone(),
        seed: request.schedule.seed,
        reproducer: request.reproducer.clone(),
        replay: format!("cargo xtask replay {}", run.path().display()),
        kernel: request.kernel.clone(),
        kernel_variant: Some(request.variant),
        image: Some(ImageMeta {
            key: request.image_key.clone(),
            path: request.initrd.clone(),
        }),
        qemu_version: None,
        accel: None,
        pace: None,
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        repeat: request.repeat.clone(),
    }
}

/// The step a report starting at console line `start_line` began in, given each step's index
/// with the lines the parser had read when it ended (in step order); `None`: after the last.
fn step_begun_in(step_ends: &[(usize, u64)], start_line: u64) -> Option<usize> {
    step_ends.iter().find(|(_, end)| start_line <= *end).map(|(index, _)| *index)
}

/// The results thread for `run`, its first files (`meta.json`, `schedule.json`, the summary
/// in progress) already queued.
fn start_recording(request: &RunRequest, run: RunDir, meta: &Meta, write_failed: std::sync::Arc<tokio::sync::Notify>) -> anyhow::Result<Recorder> {
    let schedule = &request.schedule;
    let recorder = Recorder::start(Recording {
        run,
        summary: Summary {
            scenario: schedule.scenario.clone(),
            kernel: Some(request.variant),
            seed: schedule.seed,
            expect: schedule.expect.get(&request.variant).cloned().unwrap_or_default(),
            in_progress: true,
            ..Default::default()
        },
        findings: Vec::new(),
        filer: CrashFiler::new(&request.kernel),
        taint_before: 0,
        unplug_timeout: request.options.unplug_timeout,
        step_ends: Vec::new(),
        write_error: None,
        write_failures: 0,
        write_failed,
    })?;
    let (meta, schedule) = (meta.clone(), schedule.clone());
    recorder.send(move |r| {
        let res = r.run.write_json("meta.json", &meta);
        r.record(res);
        let res = r.run.write_json("schedule.json", &schedule);
        r.record(res);
        r.write_summary();
        r.publish_root();
    });
    Ok(recorder)
}

/// What a run that booted works with.
struct BootedRun<'a> {
    request: &'a RunRequest,
    recorder: &'a Recorder,
    feed: &'a crate::judge::crash_feed::ReportFeed,
    progress: &'a crate::drive::progress::RunProgress,
    write_failed: &'a tokio::sync::Notify,
}

impl BootedRun<'_> {
    /// Runs the schedule in the booted `vm` until its end, a stop or an abort, then shuts QEMU
    /// and the device backends down. Returns whether a signal interrupted it.
    async fn drive(&self, mut vm: crate::run::vm::Vm, meta: &mut Meta) -> bool {
        let (request, recorder) = (self.request, self.recorder);
        meta.qemu_version = Some(vm.qemu_version().to_string());
        meta.accel = Some(vm.accel().to_string());
        meta.pace = Some(vm.pace());
        let options = request.options.paced(vm.pace());
        {
            let meta = meta.clone();
            let unplug_timeout = options.unplug_timeout;
            recorder.send(move |r| {
                r.unplug_timeout = unplug_timeout;
                let res = r.run.write_json("meta.json", &meta);
                r.record(res);
            });
        }
        let mut testbed = Testbed::new();
        let outcome = {
            let steps = run_schedule(&mut vm, &mut testbed, &request.schedule, request.variant, &options, |step| {
                let status = match &step.status {
                    StepStatus::Ok => "ok",
                    StepStatus::Failed(_) => "failed",
                    StepStatus::UnplugStuck(_) => "unplug stuck",
                    StepStatus::TimedOut(_) => "timed out",
                    StepStatus::NotOnThisKernel(_) => "not on this kernel",
                };
                self.progress.step(step.index, &step.description, status);
                let taken = self.feed.take();
                let step = step.clone();
                recorder.send(move |r| r.step(&step, &taken));
            });
            tokio::select! {
                r = steps => r,
                signal = request.stop.stopped() => Err(Abort::Interrupted(signal)),
                _ = self.write_failed.notified() => Err(Abort::ResultsUnwritable),
            }
        };
        let interrupted = matches!(outcome, Err(Abort::Interrupted(_)));
        if let Err(abort) = outcome {
            record_abort(recorder, abort);
        }
        // Best effort: the VM may be the thing that broke. QEMU is killed at the latest
        // when `vm` is dropped inside.
        let _ = vm.shutdown(std::time::Duration::from_secs(10)).await;
        // QEMU is gone: the device backends it used (a stuck unplug's too) end now.
        if let Err(e) = testbed.finish().await {
            let signal = format!("{e:#}");
            recorder.send(move |r| {
                r.findings.push(signal.clone());
                r.summary.signals.push(signal);
            });
        }
        interrupted
    }
}

/// Why the run stopped before its schedule's end, into the summary: a signal, unwritable
/// results, or the guest lost (filed as its synthetic report on the last step).
fn record_abort(recorder: &Recorder, abort: Abort) {
    match abort {
        Abort::Interrupted(signal) => {
            recorder.send(move |r| r.summary.aborted = Some(format!("interrupted by {signal}")));
        }
        Abort::ResultsUnwritable => {
            recorder.send(|r| r.summary.aborted = Some("results could not be written".into()));
        }
        abort => {
            let why = serde_json::to_string(&abort).unwrap_or_default();
            let synthetic = match &abort {
                Abort::GuestLost(detail) => report::synthetic::vm_died(detail),
                Abort::AgentUnresponsive(detail) => report::synthetic::agent_unresponsive(detail),
                Abort::NoOutput(detail) => report::synthetic::no_output(detail),
                other => report::synthetic::agent_unresponsive(&format!("{other:?}")),
            };
            recorder.send(move |r| {
                r.findings.push(format!("run stopped: {why}"));
                r.summary.signals.push(format!("run stopped: {why}"));
                r.summary.aborted = Some(why);
                r.summary.stop_title = Some(synthetic.title.clone());
                let last = r.summary.steps.last().map(|s| s.index);
                r.file(&synthetic, last, 1);
            });
        }
    }
}

/// Files reports into a run folder, symbolized with the kernel's vmlinux and modules when
/// there are.
struct CrashFiler {
    symbolizer: crate::judge::symbolizer::KernelSymbolizer,
}

impl CrashFiler {
    fn new(kernel: &crate::judge::results::KernelMeta) -> CrashFiler {
        CrashFiler { symbolizer: crate::judge::symbolizer::KernelSymbolizer::new(kernel) }
    }

    /// Files `r`, seen `count` times.
    fn file(
        &mut self,
        run: &mut crate::judge::results::RunDir,
        r: &report::Report,
        step: Option<usize>,
        count: u64,
    ) -> anyhow::Result<()> {
        let symbolized = if r.crash_type.is_synthetic() {
            None
        } else {
            self.symbolizer.symbolize(&r.text)
        };
        run.add_crash_times(
            &crate::judge::results::Crash::from_report(r, step, symbolized),
            count,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report that ends as its step ends is kept back (a `Kernel panic` could still fold into
    /// it) and settles in a later take, or only when the console ends: it is filed in the step
    /// it began in, not the one that took it (the release step an oops killed, 6.1's
    /// `gpio-chip-watch-late-close`).
    #[test]
    fn a_report_kept_back_is_filed_in_the_step_it_began_in() {
        let mut parser = report::Parser::new();
        let mut step_ends = Vec::new();
        parser.feed(b"[   1.0][  T9] unplug-torture: step 1/3: observe\n");
        step_ends.push((1, parser.lines_seen()));
        let oops = "[   2.0][  T9] WARNING: CPU: 0 PID: 9 at drivers/x.c:1 f+0x1/0x2\n[   2.0][  T9] Call Trace:\n[   2.0][  T9]  f+0x1/0x2\n[   2.0][  T9] ---[ end trace 0000000000000000 ]---\n";
        parser.feed(oops.as_bytes());
        assert!(parser.take_settled().is_empty(), "the latest report is kept back");
        step_ends.push((2, parser.lines_seen()));
        parser.feed(b"[  40.0][  T9] unplug-torture: step 3/3: observe\n");
        step_ends.push((3, parser.lines_seen()));
        let after_last = parser.lines_seen() + 1;
        let reports = parser.finish();
        assert_eq!(reports.len(), 1, "{reports:#?}");
        assert_eq!(reports[0].title, "WARNING in f");
        assert_eq!(step_begun_in(&step_ends, reports[0].start_line), Some(2));
        // After the last step's end: none.
        assert_eq!(step_begun_in(&step_ends, after_last), None);
    }
}
