//! Host side of the guest agent channel (protocol in the `agent` crate).
//!
//! One [`Agent`] per virtio-serial socket. A reader task routes the guest's lines: responses
//! by request id to the caller waiting on them (requests run concurrently in the guest and
//! may answer in any order), `event` lines to subscribers, `ready` to [`Agent::wait_ready`]
//! (a later `ready` means /init restarted the agent and becomes an `agent`/`restarted` event).
//! Every request has a deadline, so a guest stuck in the kernel shows up as a
//! [`AgentError::Timeout`] rather than a hung harness.
//!
//! Guest output is untrusted: lines are bounded ([`agent::MAX_LINE`]) and anything that is
//! not a protocol message (past a partial first line, see `route_incoming`) ends the
//! connection with an error naming the bad line: a corrupt stream cannot be resynchronised
//! reliably, and a lost response would otherwise only show up as a timeout. When the link
//! ends (EOF, garbage, I/O error), every pending and later request fails with
//! [`AgentError::ConnectionLost`] saying why.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use agent::{Bytes, ErrorReply, Event, ExecRequest, GuestMessage, Hello, HoldRequest, Op, Outcome, Reply, Request, MAX_LINE};

use crate::run::lines::{self, LineError};
use crate::run::pace::Pace;

/// Deadline of requests other than `exec` unless changed with [`Agent::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// On top of an exec's own timeout: time for the guest to kill the process group, collect
/// the output and answer.
const EXEC_SLACK: Duration = Duration::from_secs(10);
/// How long a release lets a holder's last call return before the guest calls it stuck, on
/// the reference machines (see [`crate::run::pace`]). Under TCG a call that trips KASAN spends
/// seconds printing reports on the serial console: slow, not stuck.
pub const RELEASE_WAIT: Duration = Duration::from_millis(agent::DEFAULT_RELEASE_WAIT_MS);
/// How long each `ping` of [`Agent::wait_ready`] waits before the next one is sent.
const READY_POLL: Duration = Duration::from_secs(1);
/// Events buffered per subscriber; a subscriber that falls further behind is told how many
/// it missed (`broadcast` semantics).
const EVENT_BUFFER: usize = 4096;
/// Longest excerpt of a line kept in the log and in errors.
const EXCERPT: usize = 64 * 1024;
/// Largest file [`Agent::read_file`] reads, and the chunk it asks for at a time.
const MAX_FILE: u64 = 64 << 20;
const READ_CHUNK: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The link is gone; the reason says why (EOF: QEMU exited; or garbage from the guest).
    #[error("agent connection lost: {0}")]
    ConnectionLost(String),
    #[error("agent protocol error: {0}")]
    Protocol(String),
    #[error("timed out after {waited:?} waiting for the agent to answer {what}")]
    Timeout { what: String, waited: Duration },
    /// The guest tried and failed; `error.errno` is the system call's errno, if any.
    #[error("{op} failed in the guest: {error}")]
    Guest { op: String, error: ErrorReply },
    /// [`Agent::exec_ok`]: the program ran but did not exit with status 0.
    #[error("`{argv}` {outcome}\nstdout:\n{stdout}\nstderr:\n{stderr}")]
    CommandFailed { argv: String, outcome: String, stdout: String, stderr: String },
}

impl AgentError {
    /// The guest's errno for a failed system call (`ENOENT` reading a removed attribute...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            AgentError::Guest { error, .. } => error.errno,
            _ => None,
        }
    }
}

/// How a program run in the guest ended, with its (bounded) output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: Option<i32>,
    pub signal: Option<i32>,
    /// The deadline passed and the process group was killed.
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// More output was produced than the request's `max_output`; the rest was dropped.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// As measured in the guest.
    pub duration: Duration,
}

impl ExecOutput {
    /// Exited with status 0 in time.
    pub fn success(&self) -> bool {
        self.status == Some(0) && !self.timed_out
    }

    pub fn stdout_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    pub fn stderr_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }

    /// "exited with status 1", "was killed by signal 9 after timing out", ...
    pub fn outcome(&self) -> String {
        let how = match (self.status, self.signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            // SIGKILL did not take: the process is stuck in the kernel.
            (None, None) => "did not die after SIGKILL".to_string(),
        };
        if self.timed_out {
            format!("{how} after timing out ({:?})", self.duration)
        } else {
            how
        }
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<Outcome, AgentError>>>;

struct Shared {
    pending: Mutex<Pending>,
    /// Why the link ended; set once, before `pending` is drained.
    closed: Mutex<Option<String>>,
    events: broadcast::Sender<Event>,
    ready: watch::Sender<Option<Hello>>,
    log: Option<Mutex<std::fs::File>>,
    started: Instant,
}

impl Shared {
    fn log(&self, direction: &str, line: &str) {
        if let Some(log) = &self.log {
            let t = self.started.elapsed().as_secs_f64();
            // The log is diagnostic; a failing write must not fail the request.
            let _ = writeln!(lock(log), "{t:12.6} {direction} {}", excerpt(line.as_bytes()));
        }
    }

    /// Ends the link: later requests fail at once, pending ones now, with `reason`.
    fn close(&self, reason: String) {
        {
            let mut closed = lock(&self.closed);
            if closed.is_some() {
                return;
            }
            *closed = Some(reason.clone());
        }
        self.log("!!", &format!("connection closed: {reason}"));
        for (_, tx) in lock(&self.pending).drain() {
            let _ = tx.send(Err(AgentError::ConnectionLost(reason.clone())));
        }
        // Wake wait_ready so it reports the loss instead of sleeping to its deadline.
        self.ready.send_modify(|_| {});
    }

    fn closed_reason(&self) -> Option<String> {
        lock(&self.closed).clone()
    }
}

/// Removes a request from the pending map when its caller stops waiting (answer, timeout or
/// a dropped future), so late answers are ignored and nothing leaks.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.id);
    }
}

/// A connection to the guest agent. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Agent {
    shared: Arc<Shared>,
    /// Request lines for the writer task. Writing there, not in the caller, means a caller
    /// that stops waiting (deadline, `select!`) can never leave half a line on the wire.
    lines: mpsc::UnboundedSender<String>,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
    pace: Pace,
}

impl Agent {
    /// Connects to QEMU's chardev socket for the agent port. The guest need not be up yet:
    /// requests wait in the socket until the agent opens its port (see [`Agent::wait_ready`]).
    /// Every line in both directions is appended to `log` with a relative timestamp.
    pub async fn connect(socket: &Path, log: Option<&Path>) -> Result<Agent, AgentError> {
        let stream = UnixStream::connect(socket).await.map_err(|e| {
            AgentError::Io(std::io::Error::new(e.kind(), format!("connecting to {}: {e}", socket.display())))
        })?;
        Agent::from_stream(stream, log)
    }

    /// Runs the protocol over an already connected stream (tests use a socketpair). Must be
    /// called within a tokio runtime (it spawns the reader task).
    pub fn from_stream(stream: UnixStream, log: Option<&Path>) -> Result<Agent, AgentError> {
        let log = match log {
            Some(path) => Some(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)),
            None => None,
        };
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
            events: broadcast::channel(EVENT_BUFFER).0,
            ready: watch::channel(None).0,
            log,
            started: Instant::now(),
        });
        tokio::spawn(route_incoming(BufReader::new(read), shared.clone()));
        let (lines, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_requests(write, queue, shared.clone()));
        Ok(Agent { shared, lines, next_id: Arc::new(AtomicU64::new(1)), timeout: DEFAULT_TIMEOUT, pace: Pace::default() })
    }

    /// The same connection with a different deadline for non-exec requests.
    pub fn with_timeout(mut self, timeout: Duration) -> Agent {
        self.timeout = timeout;
        self
    }

    /// The same connection with deadlines for a host of this pace: requests wait
    /// [`DEFAULT_TIMEOUT`] scaled, and users of the agent ([`crate::devices::holders`],
    /// [`crate::judge::observe`], [`crate::devices::providers`]) scale theirs with [`Agent::pace`].
    pub fn with_pace(mut self, pace: Pace) -> Agent {
        self.timeout = pace.scale(DEFAULT_TIMEOUT);
        self.pace = pace;
        self
    }

    /// The host's pace this connection's deadlines follow.
    pub fn pace(&self) -> Pace {
        self.pace
    }

    /// Events the guest streams from now on (not tied to a request).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Waits until the agent answers (`ping`, repeated until `timeout`) or announces itself
    /// with `ready`, whichever comes first.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Hello, AgentError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ready = self.shared.ready.subscribe();
        loop {
            if let Some(hello) = ready.borrow_and_update().clone() {
                return Ok(hello);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(AgentError::Timeout { what: "ping (agent not ready)".into(), waited: timeout });
            }
            let attempt = READY_POLL.min(deadline - now);
            tokio::select! {
                result = self.ping_within(attempt) => match result {
                    Ok(hello) => return Ok(hello),
                    Err(AgentError::Timeout { .. }) => {}
                    Err(e) => return Err(e),
                },
                // Also woken when the link closes; the next ping then reports why.
                _ = ready.changed() => {}
            }
        }
    }

    /// Liveness check; returns the agent's identity.
    pub async fn ping(&self) -> Result<Hello, AgentError> {
        self.ping_within(self.timeout).await
    }

    async fn ping_within(&self, timeout: Duration) -> Result<Hello, AgentError> {
        match self.call(Op::Ping, timeout).await? {
            Reply::Hello(hello) => Ok(hello),
            other => Err(unexpected("ping", &other)),
        }
    }

    /// Runs `argv` in the guest with stdin from `/dev/null`; the process group is killed
    /// after `timeout`. A nonzero exit is not an error here (see [`Agent::exec_ok`]).
    pub async fn exec(&self, argv: &[&str], timeout: Duration) -> Result<ExecOutput, AgentError> {
        self.exec_with(ExecRequest::new(argv, timeout)).await
    }

    /// Like [`Agent::exec`], but a program that does not exit with status 0 in time is an
    /// error carrying its output.
    pub async fn exec_ok(&self, argv: &[&str], timeout: Duration) -> Result<ExecOutput, AgentError> {
        let out = self.exec(argv, timeout).await?;
        if out.success() {
            return Ok(out);
        }
        Err(AgentError::CommandFailed {
            argv: argv.join(" "),
            outcome: out.outcome(),
            stdout: out.stdout_text().into_owned(),
            stderr: out.stderr_text().into_owned(),
        })
    }

    /// Full control over the program run: environment, cwd, stdin, output cap.
    pub async fn exec_with(&self, req: ExecRequest) -> Result<ExecOutput, AgentError> {
        let deadline = Duration::from_millis(req.timeout_ms) + EXEC_SLACK;
        match self.call(Op::Exec(req), deadline).await? {
            Reply::Exec(r) => Ok(ExecOutput {
                status: r.status,
                signal: r.signal,
                timed_out: r.timed_out,
                stdout: r.stdout.0,
                stderr: r.stderr.0,
                stdout_truncated: r.stdout_truncated,
                stderr_truncated: r.stderr_truncated,
                duration: Duration::from_millis(r.duration_ms),
            }),
            other => Err(unexpected("exec", &other)),
        }
    }

    /// Reads up to `max_len` bytes at `offset`; `eof` is true when fewer were available.
    pub async fn read_at(&self, path: &str, offset: u64, max_len: u64) -> Result<(Vec<u8>, bool), AgentError> {
        let op = Op::Read { path: path.to_string(), offset, max_len };
        match self.call(op, self.timeout).await? {
            Reply::Data { data, eof } => {
                if data.0.len() as u64 > max_len {
                    return Err(AgentError::Protocol(format!("read of {max_len} bytes returned {}", data.0.len())));
                }
                Ok((data.0, eof))
            }
            other => Err(unexpected("read", &other)),
        }
    }

    /// Reads a whole file (sysfs/configfs/debugfs attribute or regular file), up to 64 MiB.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        let mut out = Vec::new();
        loop {
            let (chunk, eof) = self.read_at(path, out.len() as u64, READ_CHUNK).await?;
            out.extend_from_slice(&chunk);
            if eof || chunk.is_empty() {
                return Ok(out);
            }
            if out.len() as u64 >= MAX_FILE {
                return Err(AgentError::Guest {
                    op: "read".into(),
                    error: ErrorReply::msg(format!("{path}: larger than {MAX_FILE} bytes")),
                });
            }
        }
    }

    /// Writes `data` to an existing file in one `write(2)` (a sysfs/configfs store). A store
    /// that accepts fewer bytes is an error.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), AgentError> {
        let op = Op::Write { path: path.to_string(), data: Bytes(data.to_vec()), offset: None, create: false };
        match self.call(op, self.timeout).await? {
            Reply::Written { len } if len == data.len() as u64 => Ok(()),
            Reply::Written { len } => Err(AgentError::Guest {
                op: "write".into(),
                error: ErrorReply::msg(format!("{path}: short write, {len} of {} bytes accepted", data.len())),
            }),
            other => Err(unexpected("write", &other)),
        }
    }

    pub async fn mkdir(&self, path: &str) -> Result<(), AgentError> {
        self.done(Op::Mkdir { path: path.to_string(), mode: 0o755 }).await
    }

    pub async fn rmdir(&self, path: &str) -> Result<(), AgentError> {
        self.done(Op::Rmdir { path: path.to_string() }).await
    }

    /// Creates `link` pointing at `target`.
    pub async fn symlink(&self, target: &str, link: &str) -> Result<(), AgentError> {
        self.done(Op::Symlink { target: target.to_string(), link: link.to_string() }).await
    }

    pub async fn unlink(&self, path: &str) -> Result<(), AgentError> {
        self.done(Op::Unlink { path: path.to_string() }).await
    }

    /// Starts a holder in the guest (see [`agent::HoldRequest`]); returns its handle. Its
    /// records arrive on [`Agent::subscribe`] as events from `holder-<handle>`; subscribe
    /// first to see the `open` record.
    pub async fn hold(&self, req: HoldRequest) -> Result<u64, AgentError> {
        match self.call(Op::Hold(req), self.timeout).await? {
            Reply::Held { handle } => Ok(handle),
            other => Err(unexpected("hold", &other)),
        }
    }

    /// Stops a holder and closes its fds (a late close when the device is already gone). The
    /// guest waits up to [`RELEASE_WAIT`] (scaled) for the holder's call to return; this
    /// request waits that long and a request's deadline on top.
    pub async fn release(&self, handle: u64) -> Result<(), AgentError> {
        let wait = self.pace.scale(RELEASE_WAIT);
        let op = Op::Release { handle, wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX) };
        match self.call(op, wait + self.timeout).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected("release", &other)),
        }
    }

    /// Syncs and reboots the guest once the answer is sent (QEMU with `-no-reboot` exits).
    pub async fn reboot(&self) -> Result<(), AgentError> {
        self.done(Op::Reboot).await
    }

    /// Syncs and powers the guest off once the answer is sent.
    pub async fn poweroff(&self) -> Result<(), AgentError> {
        self.done(Op::Poweroff).await
    }

    async fn done(&self, op: Op) -> Result<(), AgentError> {
        let name = op_name(&op);
        match self.call(op, self.timeout).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(name, &other)),
        }
    }

    /// Sends one request and waits up to `timeout` for its answer. The low-level entry point
    /// for operations without a helper.
    pub async fn call(&self, op: Op, timeout: Duration) -> Result<Reply, AgentError> {
        let what = describe(&op);
        match tokio::time::timeout(timeout, self.call_inner(op, timeout)).await {
            Ok(Ok(Outcome::Ok(reply))) => Ok(reply),
            // The guest's own deadline: the call is stuck in the kernel, a timeout like the
            // host's, with the guest's word on it.
            Ok(Ok(Outcome::Err(error))) if error.stuck => Err(AgentError::Timeout {
                what: format!("{what} (the guest: {})", error.message),
                waited: agent::guest_deadline(timeout),
            }),
            Ok(Ok(Outcome::Err(error))) => Err(AgentError::Guest { op: what, error }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AgentError::Timeout { what, waited: timeout }),
        }
    }

    async fn call_inner(&self, op: Op, timeout: Duration) -> Result<Outcome, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id, tx);
        let _guard = PendingGuard { shared: &self.shared, id };
        // `close` records the reason before draining `pending`: either it drained our sender
        // or we see the reason here, so no request waits on a dead link.
        if let Some(reason) = self.shared.closed_reason() {
            return Err(AgentError::ConnectionLost(reason));
        }
        // The guest answers a call stuck in the kernel with a timeout error a little before
        // this deadline, naming it, instead of the host's bare timeout.
        let line = serde_json::to_string(&Request::new(id, op, timeout))
            .map_err(|e| AgentError::Protocol(format!("cannot encode request: {e}")))?;
        self.shared.log("->", &line);
        if self.lines.send(line).is_err() {
            return Err(AgentError::ConnectionLost(
                self.shared.closed_reason().unwrap_or_else(|| "writer ended".into()),
            ));
        }
        rx.await.unwrap_or_else(|_| {
            Err(AgentError::ConnectionLost(self.shared.closed_reason().unwrap_or_else(|| "reader ended".into())))
        })
    }
}

fn unexpected(op: &str, reply: &Reply) -> AgentError {
    AgentError::Protocol(format!("unexpected reply to {op}: {reply:?}"))
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Ping => "ping",
        Op::Exec(_) => "exec",
        Op::Read { .. } => "read",
        Op::Write { .. } => "write",
        Op::Mkdir { .. } => "mkdir",
        Op::Rmdir { .. } => "rmdir",
        Op::Symlink { .. } => "symlink",
        Op::Unlink { .. } => "unlink",
        Op::Hold(_) => "hold",
        Op::Release { .. } => "release",
        Op::Reboot => "reboot",
        Op::Poweroff => "poweroff",
    }
}

/// The operation and its main argument, for errors.
fn describe(op: &Op) -> String {
    match op {
        Op::Exec(req) => format!("exec `{}`", req.argv.join(" ")),
        Op::Read { path, .. }
        | Op::Write { path, .. }
        | Op::Mkdir { path, .. }
        | Op::Rmdir { path }
        | Op::Unlink { path } => format!("{} {path}", op_name(op)),
        Op::Symlink { target, link } => format!("symlink {link} -> {target}"),
        Op::Hold(req) => format!("hold {:?} {}", req.kind, req.path),
        Op::Release { handle, .. } => format!("release holder {handle}"),
        Op::Ping | Op::Reboot | Op::Poweroff => op_name(op).to_string(),
    }
}

fn excerpt(line: &[u8]) -> Cow<'_, str> {
    if line.len() <= EXCERPT {
        return String::from_utf8_lossy(line);
    }
    let head = String::from_utf8_lossy(&line[..EXCERPT]);
    Cow::Owned(format!("{head}... ({} bytes)", line.len()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain inserts/removes/appends under these locks cannot leave them inconsistent, so a
    // panic elsewhere is no reason to fail.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads one line (without the newline), at most `MAX_LINE` bytes. `Ok(None)` at a clean EOF.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, String> {
    lines::read_line(r, MAX_LINE).await.map_err(|e| match e {
        LineError::Io(e) => format!("reading from the agent socket: {e}"),
        LineError::TooLong => format!("garbage from the agent: a line longer than {MAX_LINE} bytes"),
        LineError::CutByEof(partial) => format!("EOF in the middle of a line: {}", excerpt(&partial)),
    })
}

/// Writes queued request lines in order until every `Agent` clone is gone or a write fails.
async fn write_requests(mut w: OwnedWriteHalf, mut queue: mpsc::UnboundedReceiver<String>, shared: Arc<Shared>) {
    while let Some(mut line) = queue.recv().await {
        line.push('\n');
        if let Err(e) = w.write_all(line.as_bytes()).await {
            shared.close(format!("writing to the agent socket failed: {e}"));
            return;
        }
    }
}

/// Routes the guest's lines until the link ends, then closes it with the reason.
async fn route_incoming<R: AsyncBufRead + Unpin>(mut reader: R, shared: Arc<Shared>) {
    // QEMU keeps guest output it could not deliver for the next client, so a connection made
    // after an earlier one went away may begin with the tail of a line: the first line may be
    // skipped; later garbage ends the connection.
    let mut first = true;
    let reason = loop {
        let line = match read_line(&mut reader).await {
            Ok(Some(line)) => line,
            Ok(None) => break "EOF from the agent socket (QEMU exited?)".to_string(),
            Err(reason) => break reason,
        };
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        shared.log("<-", &text);
        let msg = match serde_json::from_slice::<GuestMessage>(&line) {
            Ok(msg) => msg,
            Err(e) if first => {
                first = false;
                shared.log("!!", &format!("skipped a partial first line ({e})"));
                continue;
            }
            Err(e) => break format!("garbage from the agent ({e}): {}", excerpt(&line)),
        };
        first = false;
        match msg {
            GuestMessage::Response(resp) => {
                // No waiter: it timed out or was dropped; the answer is only logged.
                if let Some(tx) = lock(&shared.pending).remove(&resp.id) {
                    let _ = tx.send(Ok(resp.outcome));
                }
            }
            GuestMessage::Event(event) => {
                // No subscribers is fine: events are also in the log.
                let _ = shared.events.send(event);
            }
            GuestMessage::Ready(hello) => {
                // `ready` is sent once per agent start: a second one means /init restarted a
                // dead agent, and whatever it was running is lost. Subscribers hear about it.
                if shared.ready.send_replace(Some(hello.clone())).is_some() {
                    let data = serde_json::to_value(&hello).unwrap_or_default();
                    let _ = shared.events.send(Event { source: "agent".into(), kind: "restarted".into(), data });
                }
            }
        }
    };
    shared.close(reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::{ExecResult, Response};
    use tokio::io::AsyncWriteExt;

    /// The guest end of a socketpair: reads requests, writes whatever the test says.
    struct FakeGuest {
        reader: BufReader<tokio::net::unix::OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl FakeGuest {
        async fn request(&mut self) -> Request {
            let line = read_line(&mut self.reader).await.unwrap().expect("a request");
            serde_json::from_slice(&line).unwrap()
        }

        async fn send_raw(&mut self, bytes: &[u8]) {
            self.writer.write_all(bytes).await.unwrap();
        }

        async fn send(&mut self, msg: &GuestMessage) {
            let mut line = serde_json::to_vec(msg).unwrap();
            line.push(b'\n');
            self.send_raw(&line).await;
        }

        async fn reply(&mut self, id: u64, reply: Reply) {
            self.send(&GuestMessage::Response(Response { id, outcome: Outcome::Ok(reply) })).await;
        }
    }

    fn pair() -> (Agent, FakeGuest) {
        let (host, guest) = UnixStream::pair().unwrap();
        let (read, writer) = guest.into_split();
        (Agent::from_stream(host, None).unwrap(), FakeGuest { reader: BufReader::new(read), writer })
    }

    fn hello() -> Hello {
        Hello { protocol: agent::PROTOCOL_VERSION, agent: "0.1.0".into(), kernel_release: "6.12.117".into() }
    }

    #[tokio::test]
    async fn concurrent_requests_are_matched_by_id() {
        let (agent, mut guest) = pair();
        let a = agent.clone();
        let first = tokio::spawn(async move { a.read_file("/sys/a").await });
        let req1 = guest.request().await;
        let b = agent.clone();
        let second = tokio::spawn(async move { b.read_file("/sys/b").await });
        let req2 = guest.request().await;
        assert_ne!(req1.id, req2.id);
        // Answer in reverse order.
        guest.reply(req2.id, Reply::Data { data: "B".into(), eof: true }).await;
        guest.reply(req1.id, Reply::Data { data: Bytes(vec![0xff]), eof: true }).await;
        assert_eq!(first.await.unwrap().unwrap(), vec![0xff]);
        assert_eq!(second.await.unwrap().unwrap(), b"B");
    }

    #[tokio::test]
    async fn eof_fails_pending_and_later_requests() {
        let (agent, mut guest) = pair();
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.ping().await });
        guest.request().await;
        drop(guest);
        let err = pending.await.unwrap().unwrap_err();
        assert!(matches!(err, AgentError::ConnectionLost(_)), "{err}");
        assert!(err.to_string().contains("agent connection lost"), "{err}");
        let err = agent.ping().await.unwrap_err();
        assert!(matches!(err, AgentError::ConnectionLost(_)), "{err}");
    }

    #[tokio::test]
    async fn a_partial_first_line_is_skipped() {
        let (agent, mut guest) = pair();
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.ping().await });
        let req = guest.request().await;
        // The tail of a line meant for an earlier client.
        guest.send_raw(b"_release\":\"6.12.117\"}}}\n").await;
        guest.reply(req.id, Reply::Hello(hello())).await;
        assert_eq!(pending.await.unwrap().unwrap(), hello());
    }

    #[tokio::test]
    async fn garbage_line_is_a_clear_error() {
        let (agent, mut guest) = pair();
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.ping().await });
        let req = guest.request().await;
        guest.reply(req.id, Reply::Hello(hello())).await;
        pending.await.unwrap().unwrap();
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.ping().await });
        guest.request().await;
        guest.send_raw(b"Kernel panic - not JSON\n").await;
        let err = pending.await.unwrap().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("garbage") && text.contains("Kernel panic - not JSON"), "{text}");
    }

    #[tokio::test]
    async fn endless_line_is_an_error_not_a_panic() {
        let (agent, mut guest) = pair();
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.ping().await });
        guest.request().await;
        let chunk = vec![b'a'; 1 << 20];
        // The host stops reading at the limit, so the writer may block: stop at its error.
        let writer = tokio::spawn(async move {
            for _ in 0..=(MAX_LINE >> 20) + 1 {
                if guest.writer.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            guest
        });
        let err = pending.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        drop(agent);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn unanswered_request_times_out_and_late_answer_is_ignored() {
        let (agent, mut guest) = pair();
        let agent = agent.with_timeout(Duration::from_millis(100));
        let err = agent.read_file("/sys/stuck").await.unwrap_err();
        assert!(matches!(err, AgentError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("read /sys/stuck"), "{err}");
        let stale = guest.request().await;
        guest.reply(stale.id, Reply::Data { data: "late".into(), eof: true }).await;
        let a = agent.clone();
        let next = tokio::spawn(async move { a.ping().await });
        let req = guest.request().await;
        guest.reply(req.id, Reply::Hello(hello())).await;
        assert_eq!(next.await.unwrap().unwrap(), hello());
    }

    #[tokio::test]
    async fn guest_errors_keep_errno() {
        let (agent, mut guest) = pair();
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.write_file("/sys/x/unbind", b"0-0050").await });
        let req = guest.request().await;
        let Op::Write { data, .. } = &req.op else { panic!("{req:?}") };
        assert_eq!(data.0, b"0-0050");
        let error = ErrorReply::errno(19, "write /sys/x/unbind: No such device");
        guest.send(&GuestMessage::Response(Response { id: req.id, outcome: Outcome::Err(error) })).await;
        let err = pending.await.unwrap().unwrap_err();
        assert_eq!(err.errno(), Some(19));
        assert!(err.to_string().contains("No such device"), "{err}");
    }

    #[tokio::test]
    async fn a_guest_deadline_is_a_timeout_with_the_guests_word() {
        let (agent, mut guest) = pair();
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.write_file("/sys/x/unbind", b"0-0050").await });
        let req = guest.request().await;
        assert_eq!(req.request_deadline_ms, Some(28_000), "the guest hears the host's deadline");
        let error = ErrorReply::stuck("no answer within its deadline: the call is stuck in the kernel");
        guest.send(&GuestMessage::Response(Response { id: req.id, outcome: Outcome::Err(error) })).await;
        let err = pending.await.unwrap().unwrap_err();
        assert!(matches!(err, AgentError::Timeout { waited, .. } if waited == Duration::from_secs(28)), "{err:?}");
        assert!(err.to_string().contains("write /sys/x/unbind (the guest: no answer within"), "{err}");
    }

    #[tokio::test]
    async fn short_write_and_mismatched_reply_are_errors() {
        let (agent, mut guest) = pair();
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.write_file("/sys/x", b"abc").await });
        let req = guest.request().await;
        guest.reply(req.id, Reply::Written { len: 1 }).await;
        assert!(pending.await.unwrap().unwrap_err().to_string().contains("short write"));
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.ping().await });
        let req = guest.request().await;
        guest.reply(req.id, Reply::Done).await;
        assert!(matches!(pending.await.unwrap().unwrap_err(), AgentError::Protocol(_)));
    }

    #[tokio::test]
    async fn exec_ok_reports_output_of_failures() {
        let (agent, mut guest) = pair();
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.exec_ok(&["modprobe", "nope"], Duration::from_secs(5)).await });
        let req = guest.request().await;
        let Op::Exec(exec) = &req.op else { panic!("{req:?}") };
        assert_eq!((exec.argv.as_slice(), exec.timeout_ms), (&["modprobe".to_string(), "nope".into()][..], 5000));
        let result = ExecResult {
            status: Some(1),
            signal: None,
            timed_out: false,
            stdout: "".into(),
            stderr: "modprobe: module nope not found\n".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 3,
        };
        guest.reply(req.id, Reply::Exec(result)).await;
        let text = pending.await.unwrap().unwrap_err().to_string();
        assert!(
            text.contains("`modprobe nope` exited with status 1") && text.contains("module nope not found"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn events_reach_subscribers() {
        let (agent, mut guest) = pair();
        let mut events = agent.subscribe();
        let event = Event { source: "gpio0".into(), kind: "edge".into(), data: serde_json::json!({"line": 3}) };
        guest.send(&GuestMessage::Event(event.clone())).await;
        assert_eq!(events.recv().await.unwrap(), event);
    }

    #[tokio::test]
    async fn a_second_ready_is_reported_as_a_restart() {
        let (agent, mut guest) = pair();
        let mut events = agent.subscribe();
        guest.send(&GuestMessage::Ready(hello())).await;
        agent.wait_ready(Duration::from_secs(10)).await.unwrap();
        guest.send(&GuestMessage::Ready(hello())).await;
        let event = events.recv().await.unwrap();
        assert_eq!((event.source.as_str(), event.kind.as_str()), ("agent", "restarted"));
    }

    #[tokio::test]
    async fn wait_ready_polls_until_the_agent_answers() {
        let (agent, mut guest) = pair();
        let a = agent.clone();
        let waiter = tokio::spawn(async move { a.wait_ready(Duration::from_secs(10)).await });
        // The first ping is lost (the guest was not listening yet); the next is answered.
        let first = guest.request().await;
        assert_eq!(first.op, Op::Ping);
        let second = guest.request().await;
        guest.reply(second.id, Reply::Hello(hello())).await;
        assert_eq!(waiter.await.unwrap().unwrap(), hello());
    }

    #[tokio::test]
    async fn wait_ready_accepts_the_ready_line_and_times_out_without_it() {
        let (agent, mut guest) = pair();
        guest.send(&GuestMessage::Ready(hello())).await;
        assert_eq!(agent.wait_ready(Duration::from_secs(10)).await.unwrap(), hello());

        let (silent, _guest) = pair();
        let err = silent.wait_ready(Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, AgentError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn log_records_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        let (host, guest) = UnixStream::pair().unwrap();
        let agent = Agent::from_stream(host, Some(&log)).unwrap();
        let (read, writer) = guest.into_split();
        let mut guest = FakeGuest { reader: BufReader::new(read), writer };
        let a = agent.clone();
        let pending = tokio::spawn(async move { a.ping().await });
        let req = guest.request().await;
        guest.reply(req.id, Reply::Hello(hello())).await;
        pending.await.unwrap().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        // The guest's deadline: the host's 30 s less the time to hear its timeout answer.
        assert!(text.contains(r#"-> {"id":1,"request_deadline_ms":28000,"op":"ping"}"#), "{text}");
        assert!(text.contains("<- {\"response\""), "{text}");
    }
}
