//! `unplug-agent`: the guest side of the control channel.
//!
//! Run as PID 1 (the image's `/init` links here), it sets the guest up and supervises a
//! forked copy of itself that serves, restarting it if it dies (see `init`). The serving
//! agent finds the virtio-serial port named [`agent::PORT_NAME`], announces itself with a
//! `ready` line and then serves JSON-line requests, each on a worker thread with a deadline
//! and a bound on how many run at once (see `dispatch`), so that a request stuck in the kernel
//! (a hung sysfs read during an unplug) never blocks `ping` or the others.
//!
//! virtio-serial semantics shape the I/O loop: while no host is connected to the chardev,
//! `read(2)` on the port returns 0 (not a real EOF) and `write(2)` blocks until one connects.
//! So EOF means "wait and read again", and all writes go through one queue to one writer
//! thread, the only one that waits for the port; requests queued by the host before we
//! opened the port are delivered once we do.
//!
//! The agent never writes to the console: ttyS0 carries only the kernel log. Its own
//! diagnostics go to `/dev/kmsg` as single records prefixed `unplug-agent:`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod consumer;
mod dispatch;
mod init;
mod mounts;
mod programs;

use dispatch::{bad_request, Dispatcher, Writer};

use agent::{
    Bytes, ErrorReply, ExecRequest, ExecResult, GuestMessage, Hello, Op, Reply,
    MAX_LINE, MAX_OUTPUT, MAX_READ, PORT_NAME, PROTOCOL_VERSION,
};

/// How long to wait between looks for the port (the virtio driver may probe after us) and
/// between reads while no host is connected.
const POLL: Duration = Duration::from_millis(100);
/// After SIGKILL, how long to wait for the process to die and its pipes to close. A process
/// in uninterruptible sleep (stuck in the kernel) does neither; we report what we have.
const KILL_GRACE: Duration = Duration::from_secs(2);

fn main() {
    // Panics (caught and answered, or a holder's, reported as its `stopped` record) are bugs
    // of the agent: their location and message go to the kernel log, not the console.
    std::panic::set_hook(Box::new(|info| kmsg(&format!("panic: {info}"))));
    if std::process::id() == 1 {
        init::run(serve_agent);
    }
    serve_agent()
}

/// Finds the port, says `ready` and serves until the guest goes down.
fn serve_agent() -> ! {
    let port = find_port();
    kmsg(&format!("serving on {}", port.display()));
    let file = match OpenOptions::new().read(true).write(true).open(&port) {
        Ok(f) => f,
        Err(e) => {
            kmsg(&format!("cannot open {}: {e}", port.display()));
            std::process::exit(1);
        }
    };
    let started = file
        .try_clone()
        .and_then(Writer::spawn)
        .and_then(|writer| Dispatcher::spawn(writer, dispatch::MAX_IN_FLIGHT));
    let dispatcher = started.unwrap_or_else(|e| {
        kmsg(&format!("cannot start serving {}: {e}", port.display()));
        std::process::exit(1)
    });
    // Queued: the writer thread sends it once a host connects, while requests that may
    // already be waiting are read.
    dispatcher.writer().send(&GuestMessage::Ready(hello()));
    serve(file, dispatcher);
}

/// Waits for the virtio-serial port named `PORT_NAME` and returns its `/dev` node.
fn find_port() -> PathBuf {
    let mut complained = false;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    let dev = Path::new("/dev").join(entry.file_name());
                    if dev.exists() {
                        return dev;
                    }
                }
            }
        }
        if !complained {
            kmsg(&format!("waiting for virtio-serial port {PORT_NAME}"));
            complained = true;
        }
        thread::sleep(POLL);
    }
}

fn hello() -> Hello {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Hello {
        protocol: PROTOCOL_VERSION,
        agent: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: release.trim().to_string(),
    }
}

/// What a caught panic said (`panic!` with a literal or a formatted message; anything else is
/// only in the kernel log, where the panic hook wrote it).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(msg), _) => msg.to_string(),
        (None, Some(msg)) => msg.clone(),
        (None, None) => "(no message)".into(),
    }
}

/// Writes one record, prefixed `unplug-agent:`, to the kernel log.
fn kmsg(msg: &str) {
    kmsg_record(&format!("unplug-agent: {msg}"));
}

/// Writes `line` to the kernel log as one record (a single `write(2)` is a single record).
fn kmsg_record(line: &str) {
    let line = format!("{line}\n");
    let written = OpenOptions::new().write(true).open("/dev/kmsg").and_then(|mut f| f.write(line.as_bytes()));
    if written.is_err() {
        // Outside a guest (or before devtmpfs): stderr is all we have.
        eprint!("{line}");
    }
}

/// Reads request lines forever and hands them to the dispatcher.
fn serve(mut port: File, dispatcher: Dispatcher) -> ! {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    // Set while skipping the rest of an over-long line.
    let mut discarding = false;
    loop {
        let n = match port.read(&mut chunk) {
            // No host connected (or it went away): not an end, wait for the next one.
            Ok(0) => {
                thread::sleep(POLL);
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                kmsg(&format!("reading the port failed: {e}"));
                thread::sleep(POLL);
                continue;
            }
        };
        let mut rest = &chunk[..n];
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if discarding {
                discarding = false;
            } else {
                buf.extend_from_slice(&rest[..pos]);
                dispatcher.handle_line(&buf);
            }
            buf.clear();
            rest = &rest[pos + 1..];
        }
        if !discarding {
            buf.extend_from_slice(rest);
            if buf.len() > MAX_LINE {
                bad_request(dispatcher.writer(), format!("request line longer than {MAX_LINE} bytes dropped"), &buf);
                buf.clear();
                discarding = true;
            }
        }
    }
}

fn run(op: Op) -> Result<Reply, ErrorReply> {
    match op {
        Op::Ping => Ok(Reply::Hello(hello())),
        Op::Exec(req) => exec(req).map(Reply::Exec),
        Op::Read { path, offset, max_len } => read(absolute(&path)?, offset, max_len),
        Op::Write { path, data, offset, create } => write(absolute(&path)?, &data.0, offset, create),
        Op::Mkdir { path, mode } => std::fs::DirBuilder::new()
            .mode(mode)
            .create(absolute(&path)?)
            .map(|()| Reply::Done)
            .map_err(|e| ErrorReply::io(format!("mkdir {path}"), &e)),
        Op::Rmdir { path } => std::fs::remove_dir(absolute(&path)?)
            .map(|()| Reply::Done)
            .map_err(|e| ErrorReply::io(format!("rmdir {path}"), &e)),
        Op::Symlink { target, link } => std::os::unix::fs::symlink(&target, absolute(&link)?)
            .map(|()| Reply::Done)
            .map_err(|e| ErrorReply::io(format!("symlink {link} -> {target}"), &e)),
        Op::Unlink { path } => std::fs::remove_file(absolute(&path)?)
            .map(|()| Reply::Done)
            .map_err(|e| ErrorReply::io(format!("unlink {path}"), &e)),
        Op::Release { handle, wait_ms } => consumer::release(handle, Duration::from_millis(wait_ms)),
        // Served by `handle_line`, which has the port to stream the holder's events on.
        Op::Hold(_) => Err(ErrorReply::msg("hold needs the event stream")),
        Op::Reboot | Op::Poweroff => {
            // SAFETY: sync(2) has no preconditions.
            unsafe { libc::sync() };
            Ok(Reply::Done)
        }
    }
}

/// Called after the response was written: give QEMU a moment to pass it to the host, then
/// reboot or power off (with `-no-reboot`, QEMU exits either way).
fn power_off(cmd: libc::c_int) {
    thread::sleep(Duration::from_millis(200));
    // SAFETY: reboot(2) takes a plain command constant; it only returns on failure.
    unsafe { libc::reboot(cmd) };
    kmsg(&format!("reboot({cmd:#x}) failed: {}", io::Error::last_os_error()));
}

fn read(path: &str, offset: u64, max_len: u64) -> Result<Reply, ErrorReply> {
    let file = File::open(path).map_err(|e| ErrorReply::io(format!("open {path}"), &e))?;
    let want = max_len.min(MAX_READ) as usize;
    let mut data = vec![0u8; want];
    let mut got = 0;
    // sysfs attributes answer in one read; regular files may need several.
    while got < want {
        match file.read_at(&mut data[got..], offset.saturating_add(got as u64)) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ErrorReply::io(format!("read {path}"), &e)),
        }
    }
    data.truncate(got);
    Ok(Reply::Data { data: Bytes(data), eof: got < want })
}

fn write(path: &str, data: &[u8], offset: Option<u64>, create: bool) -> Result<Reply, ErrorReply> {
    let mut options = OpenOptions::new();
    options.write(true);
    if create {
        options.create(true).truncate(offset.is_none()).mode(0o644);
    }
    let mut file = options.open(path).map_err(|e| ErrorReply::io(format!("open {path}"), &e))?;
    // One write(2): a sysfs store sees exactly these bytes, and a short count is reported
    // rather than retried (for an attribute, retrying the tail would be a second store).
    let written = loop {
        let result = match offset {
            Some(off) => file.write_at(data, off),
            None => file.write(data),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    let len = written.map_err(|e| ErrorReply::io(format!("write {path}"), &e))?;
    Ok(Reply::Written { len: len as u64 })
}

/// What the helper threads of one `exec` report.
enum ExecEvent {
    Exited(io::Result<ExitStatus>),
    OutputClosed,
}

/// Output kept from one pipe; shared so a pipe held open by an escaped process does not keep
/// us from answering with what was read so far.
#[derive(Default)]
struct Capture {
    data: Vec<u8>,
    truncated: bool,
}

fn exec(req: ExecRequest) -> Result<ExecResult, ErrorReply> {
    let started = Instant::now();
    // A timeout too far to represent means none.
    let deadline = started.checked_add(Duration::from_millis(req.timeout_ms));
    let Some((program, args)) = req.argv.split_first() else {
        return Err(ErrorReply::msg("exec: empty argv"));
    };
    let env_path = req.env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
    let resolved = programs::resolve(program, env_path).map_err(|e| ErrorReply::io(format!("exec {program}"), &e))?;
    let mut cmd = resolved.command();
    let program = resolved.path;
    cmd.args(args)
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .stdin(if req.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills everything it started.
        .process_group(0);
    let mut child: Child = spawn_in(&mut cmd, req.cwd.as_deref())?;
    let pid = child.id() as libc::pid_t;

    let (tx, rx) = mpsc::channel();
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), req.stdin) {
        // A program that exits without reading its input makes this fail with EPIPE; that is
        // the program's business, not an agent error.
        thread::spawn(move || {
            let _ = stdin.write_all(&input.0);
        });
    }
    let max = req.max_output.min(MAX_OUTPUT) as usize;
    let stdout = spawn_capture(child.stdout.take(), max, tx.clone());
    let stderr = spawn_capture(child.stderr.take(), max, tx.clone());
    thread::spawn(move || {
        let _ = tx.send(ExecEvent::Exited(child.wait()));
    });

    let mut status = None;
    let mut open_pipes = 2;
    let mut timed_out = false;
    let mut wait_until = deadline;
    while status.is_none() || open_pipes > 0 {
        let now = Instant::now();
        let event = match wait_until {
            Some(until) if now < until => rx.recv_timeout(until - now).ok(),
            Some(_) => None,
            None => rx.recv().ok(),
        };
        match event {
            Some(ExecEvent::Exited(result)) => {
                status = Some(result.map_err(|e| ErrorReply::io(format!("wait for {}", program.display()), &e))?)
            }
            Some(ExecEvent::OutputClosed) => open_pipes -= 1,
            None if !timed_out => {
                timed_out = true;
                // SAFETY: kill(2) on our child's process group; no memory is involved.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                wait_until = Some(Instant::now() + KILL_GRACE);
            }
            // Unkillable (stuck in the kernel) or output held by a process that left the
            // group: answer with what we have.
            None => break,
        }
    }
    let (stdout, stdout_truncated) = take(&stdout);
    let (stderr, stderr_truncated) = take(&stderr);
    Ok(ExecResult {
        status: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        timed_out,
        stdout: Bytes(stdout),
        stderr: Bytes(stderr),
        stdout_truncated,
        stderr_truncated,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Serialises process creation with changes of the agent's working directory.
///
/// std spawns through `posix_spawn` unless asked for something it cannot express, such as a
/// working directory in a static binary or a `PATH` lookup with a changed `PATH`; it then
/// falls back to fork+exec, which reports exec errors over an `AF_UNIX` socketpair and so
/// fails with ENOSYS on kernels without `CONFIG_NET`, like ours. So we resolve the program
/// ourselves ([`programs::resolve`]) and apply `cwd` by changing the agent's own directory
/// around the spawn (the child inherits it). Every spawn takes this lock so none starts in
/// another request's directory; file operations take absolute paths only, so they do not
/// depend on it either.
static SPAWN: Mutex<()> = Mutex::new(());

fn spawn_in(cmd: &mut Command, cwd: Option<&str>) -> Result<Child, ErrorReply> {
    let _spawning = SPAWN.lock().unwrap_or_else(|p| p.into_inner());
    let Some(cwd) = cwd else {
        return cmd.spawn().map_err(|e| ErrorReply::io(format!("exec {}", Path::new(cmd.get_program()).display()), &e));
    };
    let home = std::env::current_dir().map_err(|e| ErrorReply::io("getcwd", &e))?;
    std::env::set_current_dir(cwd).map_err(|e| ErrorReply::io(format!("chdir {cwd}"), &e))?;
    let spawned =
        cmd.spawn().map_err(|e| ErrorReply::io(format!("exec {}", Path::new(cmd.get_program()).display()), &e));
    if let Err(e) = std::env::set_current_dir(&home) {
        kmsg(&format!("cannot return to {}: {e}", home.display()));
    }
    spawned
}

/// File operations take absolute paths: the agent's working directory is not the caller's
/// business (and briefly changes during spawns with a `cwd`).
fn absolute(path: &str) -> Result<&str, ErrorReply> {
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(ErrorReply::errno(libc::EINVAL, format!("{path}: not an absolute path")))
    }
}

fn spawn_capture<R: Read + Send + 'static>(
    pipe: Option<R>,
    max: usize,
    done: mpsc::Sender<ExecEvent>,
) -> Arc<Mutex<Capture>> {
    let capture = Arc::new(Mutex::new(Capture::default()));
    let shared = capture.clone();
    thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut c = shared.lock().unwrap_or_else(|p| p.into_inner());
                        let room = max.saturating_sub(c.data.len());
                        c.data.extend_from_slice(&chunk[..n.min(room)]);
                        // Keep draining past the cap so the program never blocks on a full pipe.
                        c.truncated |= n > room;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let _ = done.send(ExecEvent::OutputClosed);
    });
    capture
}

fn take(capture: &Mutex<Capture>) -> (Vec<u8>, bool) {
    let mut c = capture.lock().unwrap_or_else(|p| p.into_inner());
    (std::mem::take(&mut c.data), c.truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_req(argv: &[&str], timeout_ms: u64) -> ExecRequest {
        ExecRequest::new(argv, Duration::from_millis(timeout_ms))
    }

    #[test]
    fn exec_captures_status_output_env_cwd_and_stdin() {
        let mut req = exec_req(&["sh", "-c", "cat; echo \"$FOO\" >&2; pwd; exit 3"], 10_000);
        req.env = vec![("FOO".into(), "bar".into())];
        req.cwd = Some("/".into());
        req.stdin = Some(Bytes(vec![0xff, b'\n']));
        let r = exec(req).unwrap();
        assert_eq!((r.status, r.signal, r.timed_out), (Some(3), None, false));
        assert_eq!(r.stdout.0, b"\xff\n/\n");
        assert_eq!(r.stderr.0, b"bar\n");
    }

    #[test]
    fn exec_timeout_kills_the_whole_group() {
        // The background sleep keeps stdout open; only killing the group ends it.
        let r = exec(exec_req(&["sh", "-c", "sleep 30 & sleep 30"], 300)).unwrap();
        assert!(r.timed_out);
        assert_eq!(r.signal, Some(libc::SIGKILL));
        assert!(r.duration_ms < 5_000, "{}", r.duration_ms);
    }

    #[test]
    fn exec_without_a_representable_deadline_runs_to_completion() {
        let r = exec(exec_req(&["true"], u64::MAX)).unwrap();
        assert_eq!((r.status, r.timed_out), (Some(0), false));
    }

    #[test]
    fn exec_output_is_bounded() {
        let mut req = exec_req(&["sh", "-c", "yes | head -c 100000"], 10_000);
        req.max_output = 10;
        let r = exec(req).unwrap();
        assert_eq!(r.stdout.0, b"y\ny\ny\ny\ny\n");
        assert!(r.stdout_truncated && !r.stderr_truncated);
        assert_eq!(r.status, Some(0));
    }

    #[test]
    fn exec_errors_carry_errno() {
        let err = exec(exec_req(&["/nonexistent/program"], 1000)).unwrap_err();
        assert_eq!(err.errno, Some(libc::ENOENT));
        assert!(exec(exec_req(&[], 1000)).unwrap_err().errno.is_none());
    }

    #[test]
    fn programs_are_found_on_the_requests_path() {
        let mut req = exec_req(&["sh", "-c", "echo $PATH"], 10_000);
        req.env = vec![("PATH".into(), "/nonexistent:/bin:/usr/bin".into())];
        let r = exec(req).unwrap();
        assert_eq!(r.stdout.0, b"/nonexistent:/bin:/usr/bin\n");
        let mut req = exec_req(&["sh"], 10_000);
        req.env = vec![("PATH".into(), "/nonexistent".into())];
        assert_eq!(exec(req).unwrap_err().errno, Some(libc::ENOENT));
        let mut req = exec_req(&["true"], 10_000);
        req.cwd = Some("/nonexistent".into());
        let err = exec(req).unwrap_err();
        assert!(err.errno == Some(libc::ENOENT) && err.message.starts_with("chdir /nonexistent"), "{err}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = run(Op::Read { path: "etc/passwd".into(), offset: 0, max_len: 1 }).unwrap_err();
        assert_eq!(err.errno, Some(libc::EINVAL));
        assert!(run(Op::Symlink { target: "relative/is/fine".into(), link: "x".into() }).is_err());
    }


    #[test]
    fn file_ops_round_trip_binary_data() {
        let dir = std::env::temp_dir().join(format!("unplug-agent-test-{}", std::process::id()));
        let dir_s = dir.to_str().unwrap().to_string();
        let file = format!("{dir_s}/f");
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(run(Op::Mkdir { path: dir_s.clone(), mode: 0o700 }).unwrap(), Reply::Done);
        let w = run(Op::Write { path: file.clone(), data: Bytes(data.clone()), offset: None, create: true }).unwrap();
        assert_eq!(w, Reply::Written { len: 256 });
        let r = run(Op::Read { path: file.clone(), offset: 0, max_len: 4096 }).unwrap();
        assert_eq!(r, Reply::Data { data: Bytes(data.clone()), eof: true });
        let r = run(Op::Read { path: file.clone(), offset: 250, max_len: 3 }).unwrap();
        assert_eq!(r, Reply::Data { data: Bytes(vec![250, 251, 252]), eof: false });
        // Oversized requests are capped, not refused.
        let r = run(Op::Read { path: file.clone(), offset: 0, max_len: u64::MAX }).unwrap();
        assert_eq!(r, Reply::Data { data: Bytes(data.clone()), eof: true });
        let link = format!("{dir_s}/l");
        run(Op::Symlink { target: file.clone(), link: link.clone() }).unwrap();
        run(Op::Unlink { path: link }).unwrap();
        run(Op::Unlink { path: file.clone() }).unwrap();
        let err = run(Op::Read { path: file, offset: 0, max_len: 1 }).unwrap_err();
        assert_eq!(err.errno, Some(libc::ENOENT));
        assert!(err.message.contains("open "), "{}", err.message);
        run(Op::Rmdir { path: dir_s }).unwrap();
    }
}
