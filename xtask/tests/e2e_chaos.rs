//! Fault injection with real VMs: `cargo xtask torture` (a child process, on the kernel under
//! test) while the guest panics, hangs or powers off, while QEMU is killed or frozen, while
//! the harness itself is interrupted or its results disk fills up. Every case checks the
//! documented exit code, a run folder whose files are all valid and that holds the verdict,
//! and that nothing of the run is left behind (see `chaos`).
//!
//! Exit codes (README): 1 when a run did not meet its expectation — a crash, a lost guest, a
//! run stopped early, an interrupted run (SIGINT, SIGTERM) — and 2 when the harness failed
//! (bad input, a results write that failed).

mod chaos;
mod common;

use std::time::{Duration, Instant};

use chaos::{check_run_folder, titles, Sandbox};
use harness::run::pace::Pace;
use nix::sys::signal::Signal;

/// What a whole case may take on the slowest host the harness accepts (pace 10x): a guard,
/// not a figure (each case checks its own deadline where it has one).
fn guard(reference: Duration) -> Duration {
    Pace::from_factor(f64::INFINITY).scale(reference)
}

/// The host's pace the run measured (meta.json).
fn run_pace(run: &std::path::Path) -> Pace {
    let meta: harness::judge::results::Meta = serde_json::from_str(&std::fs::read_to_string(run.join("meta.json")).unwrap()).unwrap();
    meta.pace.expect("the run booted and measured its pace")
}

/// The sysrq crash's title, as the parser gives it.
fn is_sysrq_panic(title: &str) -> bool {
    title.contains("sysrq") || title.starts_with("kernel panic")
}

const SYSRQ_CRASH: &str = r#"exec: { argv: [sh, -c, "echo c > /proc/sysrq-trigger"], check: false, timeout: 30s }"#;

/// Checks shared by every case: exit code, valid files, nothing left; returns the summary.
fn ended(sandbox: &Sandbox, finished: &chaos::Finished, code: i32) -> (std::path::PathBuf, harness::judge::results::RunSummary) {
    finished.assert_exit(code);
    let orphans = finished.orphans(sandbox);
    assert!(orphans.is_empty(), "left behind: {orphans:?}\n{}", finished.output);
    assert!(!finished.qemus.is_empty() || code == 2, "no QEMU was seen: {}", finished.output);
    check_run_folder(&sandbox.results)
}

fn print_row(case: &str, summary: &harness::judge::results::RunSummary, finished: &chaos::Finished) {
    eprintln!(
        "chaos: {case}: exit {:?} in {:.1} s; verdict: {:?}; aborted: {:?}",
        finished.status.code(),
        finished.elapsed.as_secs_f64(),
        titles(summary),
        summary.aborted
    );
}

#[test]
fn e2e_chaos_guest_panic_at_boot_is_a_titled_report() {
    let sandbox = Sandbox::new();
    // Init is a shell that crashes the kernel through sysrq before the agent ever runs (the
    // kernel passes the words after `--` to init; a command-line word has no spaces).
    sandbox.scenario(
        "panic-at-boot",
        r#"name: panic-at-boot
cmdline: ["rdinit=/bin/busybox", "--", "sh", "-c", "/bin/busybox${IFS}mkdir${IFS}-p${IFS}/proc;/bin/busybox${IFS}mount${IFS}-t${IFS}proc${IFS}proc${IFS}/proc;echo${IFS}c>/proc/sysrq-trigger"]
steps:
  - observe
"#,
    );
    let finished = sandbox.torture("panic-at-boot", &[]).finish(guard(Duration::from_secs(60)));
    let (_, summary) = ended(&sandbox, &finished, 1);
    print_row("panic at boot", &summary, &finished);
    assert!(summary.aborted.as_deref().unwrap_or_default().contains("boot failed"), "{summary:?}");
    assert!(titles(&summary).iter().any(|t| is_sysrq_panic(t)), "{summary:?}");
    assert_eq!(summary.steps, 0, "{summary:?}");
}

#[test]
fn e2e_chaos_guest_panic_mid_scenario_is_a_titled_report() {
    let sandbox = Sandbox::new();
    sandbox.scenario(
        "panic-mid",
        &format!(
            "name: panic-mid\nsteps:\n  - plug: {{ device: gpio-sim, id: g }}\n  - exec: {{ argv: [true] }}\n  - {SYSRQ_CRASH}\n  - unplug: {{ id: g }}\n  - observe\n"
        ),
    );
    let finished = sandbox.torture("panic-mid", &[]).finish(guard(Duration::from_secs(90)));
    let (_, summary) = ended(&sandbox, &finished, 1);
    print_row("panic mid-scenario", &summary, &finished);
    assert!(titles(&summary).iter().any(|t| is_sysrq_panic(t)), "{summary:?}");
    assert!(summary.aborted.is_some(), "{summary:?}");
    assert_eq!(summary.steps, 2, "the steps before the crash are recorded: {summary:?}");
}

#[test]
fn e2e_chaos_guest_panic_in_the_last_step_is_a_titled_report() {
    let sandbox = Sandbox::new();
    sandbox.scenario("panic-last", &format!("name: panic-last\nsteps:\n  - exec: {{ argv: [true] }}\n  - delay: 100ms\n  - {SYSRQ_CRASH}\n"));
    let finished = sandbox.torture("panic-last", &[]).finish(guard(Duration::from_secs(60)));
    let (_, summary) = ended(&sandbox, &finished, 1);
    print_row("panic in the last step", &summary, &finished);
    assert!(titles(&summary).iter().any(|t| is_sysrq_panic(t)), "{summary:?}");
}

/// How long the harness may take, on the reference machines, from a guest that stopped
/// answering to its verdict and exit: the step under way (at most an exec's 2 s + the agent's
/// 10 s slack, or a 3 s delay and a 5 s step marker), the taint read after it (a request's
/// 30 s), a ping's patience (10 s), the monitor's (5 s), QEMU's shutdown (12 s) and the
/// console's end (10 s).
const HANG_VERDICT: Duration = Duration::from_secs(80);

#[test]
fn e2e_chaos_agent_that_stops_answering_is_agent_unresponsive_within_its_deadline() {
    let sandbox = Sandbox::new();
    // The agent's own child stops it: no answer to this exec or anything after it, while
    // the kernel stays quiet.
    sandbox.scenario(
        "agent-stops",
        "name: agent-stops\nsteps:\n  - exec: { argv: [true] }\n  - exec: { argv: [sh, -c, \"kill -STOP $PPID\"], check: false, timeout: 2s }\n  - observe\n",
    );
    let mut harness = sandbox.torture("agent-stops", &[]);
    harness.wait_for_step(1, guard(Duration::from_secs(60)));
    let fault = Instant::now();
    let finished = harness.finish(guard(Duration::from_secs(120)));
    let took = fault.elapsed();
    let (run, summary) = ended(&sandbox, &finished, 1);
    print_row("agent stops answering", &summary, &finished);
    assert!(titles(&summary).iter().any(|t| t == report::synthetic::AGENT_UNRESPONSIVE), "{summary:?}");
    let deadline = run_pace(&run).scale(HANG_VERDICT);
    assert!(took <= deadline, "verdict and exit took {took:?}, more than {deadline:?}");
}

#[test]
fn e2e_chaos_frozen_guest_is_no_output_within_its_deadline() {
    let sandbox = Sandbox::new();
    sandbox.scenario(
        "frozen",
        "name: frozen\nsteps:\n  - exec: { argv: [true] }\n  - delay: 3s\n  - exec: { argv: [true], timeout: 2s }\n  - observe\n",
    );
    let mut harness = sandbox.torture("frozen", &[]);
    // Mid-delay: the whole machine stops, console and agent alike.
    let qemu = harness.wait_for_step(1, guard(Duration::from_secs(60)));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(qemu), Signal::SIGSTOP).unwrap();
    let fault = Instant::now();
    let finished = harness.finish(guard(Duration::from_secs(120)));
    let took = fault.elapsed();
    let (run, summary) = ended(&sandbox, &finished, 1);
    print_row("guest frozen (QEMU stopped)", &summary, &finished);
    assert!(titles(&summary).iter().any(|t| t.starts_with(report::synthetic::NO_OUTPUT)), "{summary:?}");
    let deadline = run_pace(&run).scale(HANG_VERDICT);
    assert!(took <= deadline, "verdict and exit took {took:?}, more than {deadline:?}");
}

#[test]
fn e2e_chaos_qemu_killed_mid_step_is_a_lost_connection() {
    let sandbox = Sandbox::new();
    sandbox.scenario("killed", "name: killed\nsteps:\n  - exec: { argv: [true] }\n  - delay: 5s\n  - observe\n");
    let mut harness = sandbox.torture("killed", &[]);
    let qemu = harness.wait_for_step(1, guard(Duration::from_secs(60)));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(qemu), Signal::SIGKILL).unwrap();
    let finished = harness.finish(guard(Duration::from_secs(60)));
    let (_, summary) = ended(&sandbox, &finished, 1);
    print_row("QEMU SIGKILLed mid-step", &summary, &finished);
    assert!(titles(&summary).iter().any(|t| t.starts_with(report::synthetic::LOST_CONNECTION)), "{summary:?}");
}

#[test]
fn e2e_chaos_qemu_exiting_on_its_own_is_a_lost_connection() {
    let sandbox = Sandbox::new();
    // sysrq o: the kernel powers the machine off, QEMU exits with it.
    sandbox.scenario(
        "poweroff",
        "name: poweroff\nsteps:\n  - exec: { argv: [true] }\n  - exec: { argv: [sh, -c, \"echo o > /proc/sysrq-trigger\"], check: false, timeout: 30s }\n  - observe\n",
    );
    let finished = sandbox.torture("poweroff", &[]).finish(guard(Duration::from_secs(60)));
    let (_, summary) = ended(&sandbox, &finished, 1);
    print_row("QEMU exits on its own", &summary, &finished);
    assert!(titles(&summary).iter().any(|t| t.starts_with(report::synthetic::LOST_CONNECTION)), "{summary:?}");
}

/// Twelve quick steps; the harness is signalled after a random one of the first ten.
fn interrupted_by(signal: Signal) {
    let sandbox = Sandbox::new();
    let steps: String = (0..6).map(|_| "  - exec: { argv: [true] }\n  - delay: 200ms..500ms\n").collect();
    sandbox.scenario("interrupted", &format!("name: interrupted\nsteps:\n{steps}"));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let at = 1 + (nanos % 10) as usize;
    let mut harness = sandbox.torture("interrupted", &[]);
    harness.wait_for_step(at, guard(Duration::from_secs(60)));
    harness.signal(signal);
    let finished = harness.finish(guard(Duration::from_secs(60)));
    let (_, summary) = ended(&sandbox, &finished, 1);
    print_row(&format!("{signal} after step {at}"), &summary, &finished);
    assert!(summary.aborted.as_deref().unwrap_or_default().contains("interrupted"), "{summary:?}");
    assert!(summary.steps >= at && summary.steps < 12, "{summary:?}");
    assert!(finished.stdout.contains("stopped early: interrupted"), "{}", finished.output);
}

#[test]
fn e2e_chaos_sigint_at_a_random_step_writes_the_summary_and_leaves_nothing() {
    interrupted_by(Signal::SIGINT);
}

#[test]
fn e2e_chaos_sigterm_at_a_random_step_writes_the_summary_and_leaves_nothing() {
    interrupted_by(Signal::SIGTERM);
}

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Results on a 1 MiB tmpfs that the run's own step lines fill: the run stops at the first
/// write that fails (exit 2, the error naming the run folder and ENOSPC), QEMU is shut down,
/// and what was written stays valid. The summary cannot be rewritten on a full disk: the one
/// on disk is the one written on the way, marked in progress, so the run is never taken for
/// a clean one.
#[test]
fn e2e_chaos_a_full_results_disk_is_a_clear_error_and_what_was_written_stays_valid() {
    assert!(nix::unistd::geteuid().is_root(), "this test mounts a tmpfs: run it as root (cargo xtask test does)");
    let sandbox = Sandbox::new();
    std::fs::create_dir(&sandbox.results).unwrap();
    let status = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "none"]).arg(&sandbox.results).status().unwrap();
    assert!(status.success());
    let _mount = Tmpfs(sandbox.results.clone());
    // Each step's output (20 kB) goes into steps.jsonl: the disk fills a few dozen steps in.
    sandbox.scenario(
        "fills",
        "name: fills\niterations: 200\nsteps:\n  - exec: { argv: [sh, -c, \"head -c 20000 /dev/zero | tr '\\\\0' x\"] }\n",
    );
    let finished = sandbox.torture("fills", &[]).finish(guard(Duration::from_secs(300)));
    let (run, summary) = ended(&sandbox, &finished, 2);
    print_row("results disk full", &summary, &finished);
    let error = finished.stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{}", finished.output));
    assert!(error.contains(&run.display().to_string()) && error.contains("No space left on device"), "{error}");
    let steps = std::fs::read_to_string(run.join("steps.jsonl")).unwrap().lines().count();
    assert!(steps > 0 && steps < 200, "{steps} step line(s)\n{}", finished.output);
    assert!(!summary.expectation_met, "{summary:?}");
    assert!(summary.in_progress || summary.aborted.is_some(), "{summary:?}");
}

/// Part of a report as the kernel prints it, written to `/dev/kmsg` one record per line by one
/// shell (so one caller) — as a WARNING or a hung-task report would be printed by the kernel
/// itself; neither is ever finished: the run's last step ends and the harness shuts the VM
/// down while both are open.
const WARNING_START: &[&str] = &[
    "------------[ cut here ]------------",
    "WARNING: CPU: 0 PID: 1 at drivers/chaos/cut.c:12 chaos_cut_short+0x10/0x20",
    "Modules linked in:",
    "CPU: 0 UID: 0 PID: 1 Comm: sh Not tainted 6.12.117 #1",
    "RIP: 0010:chaos_cut_short+0x10/0x20",
    "Call Trace:",
    " <TASK>",
    " chaos_cut_short+0x10/0x20",
];
const HUNG_TASK_START: &[&str] = &[
    "INFO: task chaos-hung:77 blocked for more than 10 seconds.",
    "      Not tainted 6.12.117 #1",
    "\"echo 0 > /proc/sys/kernel/hung_task_timeout_secs\" disables this message.",
    "task:chaos-hung      state:D stack:0     pid:77    tgid:77    ppid:1      task_flags:0x400140 flags:0x00004000",
    "Call Trace:",
    " <TASK>",
    " __schedule+0x10e9/0x6820",
    " schedule+0xdd/0x390",
    " chaos_blocked_read+0x299/0x5a0",
    " vfs_read+0x678/0xd40",
];

/// A shell command printing `lines` to the kernel log at level 4, one record each.
fn to_kmsg(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("echo '<4>{}' > /dev/kmsg; ", l.replace('\'', "'\\''"))).collect()
}

#[test]
fn e2e_reports_cut_short_at_shutdown_are_filed_titled_and_marked_cut_short() {
    let sandbox = Sandbox::new();
    let step = |lines: &[&str]| {
        let argv = serde_json::to_string(&["sh", "-c", &to_kmsg(lines)]).unwrap();
        format!("  - exec: {{ argv: {argv} }}\n")
    };
    sandbox.scenario(
        "cut-short",
        &format!("name: cut-short\nsteps:\n  - exec: {{ argv: [true] }}\n{}{}", step(HUNG_TASK_START), step(WARNING_START)),
    );
    let finished = sandbox.torture("cut-short", &[]).finish(guard(Duration::from_secs(60)));
    let (run, summary) = ended(&sandbox, &finished, 1);
    print_row("reports cut short at shutdown", &summary, &finished);
    assert_eq!(summary.aborted, None, "every step ran: {summary:?}");
    for title in ["WARNING in chaos_cut_short", "INFO: task hung in chaos_blocked_read"] {
        let crash = std::fs::read_dir(run.join("crashes"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|c| std::fs::read_to_string(c.join("title")).unwrap().trim() == title)
            .unwrap_or_else(|| panic!("{title} not filed: {summary:?}"));
        let why = std::fs::read_to_string(crash.join("corrupted")).unwrap_or_default();
        assert!(why.contains("cut short"), "{title} is not marked cut short: {why:?}");
    }
}
