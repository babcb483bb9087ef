//! `/init`: the agent binary as PID 1 (the image's `/init` is a link to it).
//!
//! Why not a shell script: under TCG with KASAN every exec costs about 70 ms, and a busybox
//! `sh` running `/init`, then the agent to mount, then the agent again to serve, were three
//! of them between `Run /init` and the agent's first answer. As PID 1 the agent mounts the
//! pseudo filesystems, applies the kernel-cmdline knobs and forks itself to serve: one exec.
//!
//! PID 1 must never exit (the kernel panics) and inherits every orphan, so after setting up
//! it only supervises: it reaps whatever dies and restarts the serving child when that is
//! the one. It never starts a thread, which is what makes `fork` without `exec` sound here.
//!
//! The serial console (ttyS0) carries only the kernel log, so PID 1's stdout and stderr,
//! which every child inherits, go to `/dev/kmsg`, one record per write.
//!
//! Kernel cmdline options (dotted names reach init only through `/proc/cmdline`):
//! - `unplug.hung_task=N`: `kernel.hung_task_timeout_secs` (default 10);
//! - `unplug.shell=1`: an interactive shell on `/dev/hvc0` (virtconsole) besides the agent.

use std::os::unix::io::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::mounts;

const HUNG_TASK_DEFAULT: u32 = 10;

/// A new session with hvc0 as its controlling tty (`setsid -c`: stdin), so job control and
/// Ctrl-C work; respawned when the user exits. (cttyhack would pick the active console,
/// ttyS0, which must stay kernel-log only.) The person at it gets every applet link
/// (`--install -s`), made now, not packed into every boot's image (`agent::BUSYBOX_LINKS`).
const SHELL_LOOP: &str = r#"/bin/busybox --install -s 2>/dev/null
while [ -c /dev/hvc0 ]; do
    setsid -c sh -l <>/dev/hvc0 >&0 2>&1
    sleep 1
done
echo "unplug-torture: unplug.shell=1 but there is no /dev/hvc0 (virtconsole)""#;

/// What the kernel command line asks of init.
#[derive(Debug, PartialEq)]
struct Knobs {
    hung_task: u32,
    shell: bool,
    /// Words that named a knob but whose value was not understood, said in the log.
    rejected: Vec<String>,
}

impl Knobs {
    fn parse(cmdline: &str) -> Knobs {
        let mut knobs = Knobs { hung_task: HUNG_TASK_DEFAULT, shell: false, rejected: Vec::new() };
        for word in cmdline.split_whitespace() {
            if let Some(value) = word.strip_prefix("unplug.hung_task=") {
                match value.parse() {
                    Ok(secs) => knobs.hung_task = secs,
                    Err(_) => knobs.rejected.push(word.to_string()),
                }
            } else if let Some(value) = word.strip_prefix("unplug.shell=") {
                match value {
                    "0" => knobs.shell = false,
                    "1" => knobs.shell = true,
                    _ => knobs.rejected.push(word.to_string()),
                }
            }
        }
        knobs
    }
}

/// Sets the guest up as PID 1, then serves through `serve` in a forked child, restarting it
/// whenever it dies, and reaps orphans meanwhile. Never returns.
pub fn run(serve: fn() -> !) -> ! {
    // The kernel gives init HOME and TERM but no PATH; commands run by the agent need it.
    // (Single-threaded here: nothing reads the environment while it changes.)
    std::env::set_var("PATH", crate::programs::DEFAULT_PATH);
    let failures = mounts::mount_pseudo_filesystems();
    // Needs devtmpfs; before it, anything said goes to the console and says what broke.
    redirect_stdio();
    for failure in &failures {
        crate::kmsg(failure);
    }

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let knobs = Knobs::parse(&cmdline);
    for word in &knobs.rejected {
        crate::kmsg(&format!("ignoring {word}: not a value init understands"));
    }
    let hung_task = "/proc/sys/kernel/hung_task_timeout_secs";
    if std::path::Path::new(hung_task).exists() {
        if let Err(e) = std::fs::write(hung_task, knobs.hung_task.to_string()) {
            crate::kmsg(&format!("cannot set {hung_task}: {e}"));
        }
    }
    index_modules();
    if knobs.shell {
        if let Err(e) = Command::new("/bin/sh").arg("-c").arg(SHELL_LOOP).stdin(Stdio::null()).spawn() {
            crate::kmsg(&format!("cannot start the unplug.shell=1 shell: {e}"));
        }
    }

    crate::kmsg_record("unplug-torture: agent starting");
    loop {
        // SAFETY: this process never starts a thread (see the module doc), so the child is a
        // whole copy of it and may go on running Rust code.
        match unsafe { libc::fork() } {
            0 => serve(),
            -1 => crate::kmsg(&format!("cannot fork the agent: {}", std::io::Error::last_os_error())),
            child => {
                let status = reap_until(child);
                crate::kmsg_record(&format!("unplug-torture: agent exited with status {status}, restarting"));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// stdin from `/dev/null`, stdout and stderr to `/dev/kmsg`.
fn redirect_stdio() {
    let null = std::fs::File::open("/dev/null");
    let kmsg = std::fs::OpenOptions::new().write(true).open("/dev/kmsg");
    if let (Ok(null), Ok(kmsg)) = (&null, &kmsg) {
        // SAFETY: dup2 on descriptors we own; 0, 1 and 2 are ours to replace.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(kmsg.as_raw_fd(), 1);
            libc::dup2(kmsg.as_raw_fd(), 2);
        }
    }
}

/// Modules packed into the image without `modules.dep` (busybox modprobe needs it).
fn index_modules() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = std::path::Path::new("/lib/modules").join(release.trim());
    if release.trim().is_empty() || !dir.is_dir() || dir.join("modules.dep").exists() {
        return;
    }
    match crate::programs::command("depmod").arg(release.trim()).status() {
        Ok(status) if status.success() => {}
        Ok(status) => crate::kmsg(&format!("depmod {} failed: {status}", release.trim())),
        Err(e) => crate::kmsg(&format!("cannot run depmod: {e}")),
    }
}

/// Waits for `child`, reaping every other process that dies meanwhile (orphans re-parented to
/// PID 1), and returns `child`'s status as a shell would say it.
fn reap_until(child: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == child {
            return shell_status(status);
        }
        if pid == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // Only if `child` is somehow not ours: never wait for it in a busy loop.
            std::thread::sleep(Duration::from_secs(1));
            return -1;
        }
    }
}

/// A wait status as `$?`: the exit code, or 128 plus the signal that killed the process.
fn shell_status(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_come_from_the_cmdline_and_default_without_it() {
        let none = Knobs::parse("console=ttyS0 rdinit=/init");
        assert_eq!(none, Knobs { hung_task: 10, shell: false, rejected: vec![] });
        let both = Knobs::parse("console=ttyS0 unplug.hung_task=30 quiet unplug.shell=1\n");
        assert_eq!(both, Knobs { hung_task: 30, shell: true, rejected: vec![] });
    }

    #[test]
    fn a_knob_with_a_bad_value_keeps_its_default_and_is_named() {
        let bad = Knobs::parse("unplug.hung_task=ten unplug.shell=yes unplug.hung_task=");
        assert_eq!(bad.hung_task, 10);
        assert!(!bad.shell);
        assert_eq!(bad.rejected, ["unplug.hung_task=ten", "unplug.shell=yes", "unplug.hung_task="]);
    }

    #[test]
    fn statuses_read_as_the_shell_reads_them() {
        // Wait statuses as the kernel encodes them: exit code in bits 8-15, signal in 0-6.
        assert_eq!(shell_status(3 << 8), 3);
        assert_eq!(shell_status(0), 0);
        assert_eq!(shell_status(libc::SIGKILL), 137);
    }
}
