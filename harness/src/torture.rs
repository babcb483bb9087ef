//! Running a schedule in a booted VM: each action in turn, with a kmsg marker before it (so
//! console reports can be attributed to steps), a deadline around it, the taint flags after
//! it, and the observers where the scenario asks. Every step is handed to the caller as soon
//! as it ends, so nothing is lost if the run dies later.
//!
//! A lost guest (kernel panic, QEMU exit) or an agent that stops answering ends the run with
//! a synthetic verdict; an unplug that never completes is recorded and the run goes on.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::agent::AgentError;
use crate::console::ConsoleError;
use crate::observe::{self, Observation};
use crate::qmp::QmpError;
use crate::schedule::{Action, Planned, Schedule};
use crate::testbed::Testbed;
use crate::vm::Vm;

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
}

/// Why a run stopped before its last step.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Abort {
    /// Kernel panic or QEMU exit.
    GuestLost(String),
    /// The agent stopped answering pings.
    AgentUnresponsive(String),
    /// The user pressed Ctrl-C.
    Interrupted,
}

/// Runs every action of `schedule`, handing each finished step to `on_step` at once.
pub async fn run_schedule(
    vm: &mut Vm,
    testbed: &mut Testbed,
    schedule: &Schedule,
    options: &RunOptions,
    mut on_step: impl FnMut(&StepRecord),
) -> Result<(), Abort> {
    let start = Instant::now();
    let total = schedule.actions.len();
    // `wait_console` looks at what the previous action caused, so it searches from the
    // console position at which that action began.
    let mut previous_cursor = vm.console().cursor();
    for (i, planned) in schedule.actions.iter().enumerate() {
        let index = i + 1;
        let description = planned.action.describe();
        mark_step(vm, index, total, planned, &description).await;
        let step_cursor = vm.console().cursor();
        let started_ms = start.elapsed().as_secs_f64() * 1e3;
        let step_start = Instant::now();
        let lost = vm.console().clone();
        let outcome = tokio::select! {
            r = tokio::time::timeout(options.step_timeout, execute(vm, testbed, &planned.action, previous_cursor, options)) => r,
            lost = lost.wait_until_lost(step_cursor) => return Err(Abort::GuestLost(lost.to_string())),
        };
        let (status, output, observations) = match outcome {
            Ok(result) => result,
            Err(_) => (StepStatus::TimedOut(format!("no result within {:?}", options.step_timeout)), None, Vec::new()),
        };
        let taint = observe::taint(vm.agent()).await;
        let record = StepRecord {
            index,
            total,
            iteration: planned.iteration,
            step: planned.step,
            action: planned.action.clone(),
            description,
            started_ms,
            elapsed_ms: step_start.elapsed().as_secs_f64() * 1e3,
            status,
            output,
            taint,
            observations,
        };
        on_step(&record);
        if !matches!(record.status, StepStatus::Ok) {
            check_alive(vm).await?;
        }
        previous_cursor = step_cursor;
    }
    Ok(())
}

type Outcome = (StepStatus, Option<String>, Vec<Observation>);

async fn execute(
    vm: &mut Vm,
    testbed: &mut Testbed,
    action: &Action,
    previous_cursor: crate::console::LineCursor,
    options: &RunOptions,
) -> Outcome {
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
            match vm.console().wait_for(previous_cursor, text, options.step_timeout).await {
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
    }
}

fn result(r: Result<(), AgentError>) -> Outcome {
    match r {
        Ok(()) => (StepStatus::Ok, None, Vec::new()),
        Err(e) => (StepStatus::Failed(e.to_string()), None, Vec::new()),
    }
}

/// Writes a step marker to the kernel log, so a report in the console can be attributed to
/// the step that was running. Best effort: a guest too broken to take it is caught next.
async fn mark_step(vm: &Vm, index: usize, total: usize, planned: &Planned, description: &str) {
    let iteration = planned.iteration.map(|i| format!(" iteration {i}")).unwrap_or_else(|| " setup".into());
    let line = format!("unplug-torture: step {index}/{total}{iteration}: {description}\n");
    let _ = tokio::time::timeout(Duration::from_secs(5), vm.agent().write_file("/dev/kmsg", line.as_bytes())).await;
}

/// After a failed step: is the guest still there to run the next one?
async fn check_alive(vm: &mut Vm) -> Result<(), Abort> {
    if !vm.is_running() || vm.console().has_ended() {
        return Err(Abort::GuestLost("QEMU exited".into()));
    }
    match tokio::time::timeout(Duration::from_secs(10), vm.agent().ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Abort::AgentUnresponsive(e.to_string())),
        Err(_) => Err(Abort::AgentUnresponsive("no answer to ping within 10 s".into())),
    }
}
