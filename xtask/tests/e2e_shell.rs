//! `cargo xtask boot` without a command, driven like a person at a terminal: the `xtask`
//! binary runs in a pty (rexpect), the test waits for the guest shell's prompt, types a
//! command, reads its output, leaves with Ctrl-] and checks that `xtask` exits with the
//! documented status (0) and that the QEMU it started is gone, by that QEMU's pid.
//!
//! Every wait on the guest has a deadline: a reference figure × the pace the run measured
//! (printed by `boot` when the agent is ready); the boot itself, before the pace is known, is
//! allowed what the slowest host the harness accepts needs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::run::pace::{Pace, REFERENCE_BOOT};
use rexpect::error::Error as ExpectError;
use rexpect::process::WaitStatus;
use rexpect::reader::Options;
use rexpect::session::PtySession;

/// How often a wait looks at the output. rexpect's own timeout, made short so that each wait
/// below can have a deadline of its own.
const POLL: Duration = Duration::from_millis(200);
/// Besides the boot: the cached kernel's and image's lookups (a no-op build of the guest
/// agent) on the reference machines.
const REFERENCE_LOOKUPS: Duration = Duration::from_secs(15);
/// The prompt after the agent is ready (the shell starts before the agent), and a builtin's
/// output after its line is typed, on the reference machines.
const REFERENCE_SHELL: Duration = Duration::from_secs(5);
/// Ctrl-] to exit: QMP `quit` and QEMU's end (`Vm::shutdown` waits up to 12 s for both).
const REFERENCE_LEAVE: Duration = Duration::from_secs(15);

/// The `xtask` in a pty, with everything it printed so far (for failure messages).
struct Terminal {
    session: PtySession,
    transcript: String,
}

impl Terminal {
    fn spawn(command: Command) -> Terminal {
        let options = Options::new().timeout_ms(Some(POLL.as_millis() as u64));
        let session = rexpect::session::spawn_with_options(command, options).unwrap();
        Terminal { session, transcript: String::new() }
    }

    /// Waits until `expect` finds what it looks for, at most `within`; what it returned.
    fn wait<T>(&mut self, what: &str, within: Duration, mut expect: impl FnMut(&mut PtySession) -> Result<T, ExpectError>) -> T {
        let deadline = Instant::now() + within;
        loop {
            match expect(&mut self.session) {
                Ok(found) => return found,
                Err(ExpectError::Timeout { .. }) if Instant::now() < deadline => {}
                Err(ExpectError::Timeout { got, .. }) => {
                    panic!("no {what} within {within:?}; the terminal showed:\n{}{got}", self.transcript)
                }
                Err(e) => panic!("waiting for {what}: {e}; the terminal showed:\n{}", self.transcript),
            }
        }
    }

    /// Waits for `needle`, at most `within`.
    fn expect(&mut self, needle: &str, within: Duration) {
        let before = self.wait(&format!("{needle:?}"), within, |s| s.exp_string(needle));
        self.transcript.push_str(&before);
        self.transcript.push_str(needle);
    }

    /// Waits for `regex`, at most `within`; its match.
    fn expect_regex(&mut self, regex: &str, within: Duration) -> String {
        let (before, found) = self.wait(&format!("/{regex}/"), within, |s| s.exp_regex(regex));
        self.transcript.push_str(&before);
        self.transcript.push_str(&found);
        found
    }

    /// Waits for the end of the output (the process closed the pty) and its exit status, at
    /// most `within`.
    fn expect_exit(&mut self, within: Duration) -> WaitStatus {
        let deadline = Instant::now() + within;
        let rest = self.wait("end of output", within, |s| s.exp_eof());
        self.transcript.push_str(&rest);
        loop {
            match self.session.process().status() {
                Some(WaitStatus::StillAlive) if Instant::now() < deadline => std::thread::sleep(POLL),
                Some(status) => return status,
                None => panic!("xtask's status is not known; the terminal showed:\n{}", self.transcript),
            }
        }
    }
}

#[test]
fn e2e_boot_shell_at_a_terminal_runs_what_is_typed_and_leaves_nothing_behind() {
    let kernel = testenv::kernel();
    // QEMU's private directory is made in here: it must be gone at the end too.
    let tmp = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(["boot", "--kernel", kernel.name()]).env("TMPDIR", tmp.path());
    let mut terminal = Terminal::spawn(command);
    // `guest agent ready after 5.2 s (tcg, QEMU 7.2.22, pace 1.2x: deadlines scaled by it); logs in DIR`
    let slowest = Pace::from_factor(f64::INFINITY);
    let ready = terminal.expect_regex(r"guest agent ready after [^\r\n]*pace [0-9.]+x[^\r\n]*; logs in [^\r\n]+\r\n", slowest.scale(REFERENCE_BOOT + REFERENCE_LOOKUPS));
    let factor = ready.split_once("pace ").and_then(|(_, f)| f.split_once('x')).and_then(|(f, _)| f.parse().ok());
    let pace = Pace::from_factor(factor.unwrap_or_else(|| panic!("no pace in {ready:?}")));
    let logs = std::path::PathBuf::from(ready.rsplit_once("logs in ").unwrap().1.trim_end());
    // rexpect forked it from this test's process (nextest runs each test in its own),
    // and it has long since exec()ed.
    let xtask = match common::children(std::process::id() as i32, "xtask")[..] {
        [pid] => pid,
        ref found => panic!("one xtask child of this test: {found:?}"),
    };

    let qemus = common::qemu_children(xtask);
    assert_eq!(qemus.len(), 1, "one QEMU, started by xtask {xtask}: {qemus:?}");

    terminal.expect("Ctrl-] to leave", pace.scale(REFERENCE_SHELL));
    // busybox sh's prompt as root in /.
    terminal.expect("/ # ", pace.scale(REFERENCE_SHELL));
    // The echo of the typed line shows `$((40+2))`; only the guest's shell prints 42.
    terminal.session.send_line("echo typed-$((40+2))").unwrap();
    terminal.expect("typed-42", pace.scale(REFERENCE_SHELL));
    terminal.expect("/ # ", pace.scale(REFERENCE_SHELL));
    terminal.session.send_control(']').unwrap();
    let status = terminal.expect_exit(pace.scale(REFERENCE_LEAVE));

    assert!(matches!(status, WaitStatus::Exited(_, 0)), "xtask boot left with {status:?}, not exit 0:\n{}", terminal.transcript);
    assert!(!terminal.transcript.contains("panicked"), "{}", terminal.transcript);
    let left: Vec<String> = qemus.iter().flat_map(|&qemu| common::left_of_qemu(qemu)).collect();
    assert!(left.is_empty(), "left behind after xtask exited: {left:?}");
    let in_tmp: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(in_tmp.is_empty(), "the VM directory was left: {in_tmp:?}");
    // `boot` keeps its logs under results/ for a person to read; a passing test does not.
    assert!(logs.join("console.log").is_file(), "no console.log in {}", logs.display());
    std::fs::remove_dir_all(logs).unwrap();
}
