//! Serving requests without letting the kernel or the port hold the agent hostage.
//!
//! A call stuck in the kernel (a read of a dying device's attribute, a `modprobe`, a configfs
//! store during an unplug) cannot be interrupted: its thread is lost until the kernel lets
//! go. So each request runs on a worker thread of its own and has a deadline: when it passes,
//! the agent answers `ETIMEDOUT` and counts the worker as stuck until it returns (its late
//! answer is dropped; a hold that completes late is released at once, as the host was told it
//! failed). Workers are bounded: past [`MAX_IN_FLIGHT`] (stuck ones included) a request is
//! answered `EBUSY` rather than given one more thread. `ping` is answered on the reading
//! thread, so a saturated agent still proves it is alive.
//!
//! All output goes through one queue to one writer thread that owns the port: `write(2)`
//! blocks while no host is connected and stalls when the virtqueue is full, and only that
//! thread waits for it; senders never block (see [`Writer::send`]).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use agent::{ErrorReply, Event, GuestMessage, Op, Outcome, Reply, Request, Response};

use crate::{consumer, hello, kmsg, panic_message, power_off, run, POLL};

/// Messages waiting for the port. More means no host is reading; a message past it is
/// dropped and the kernel log says so, rather than queued without bound (holder records are
/// numbered, so the host sees which are missing; a dropped answer is the host's timeout).
const QUEUE: usize = 4096;

/// Requests served at once, stuck ones included: each holds a thread, and one stuck in the
/// kernel cannot be ended, only counted.
pub const MAX_IN_FLIGHT: usize = 32;

/// How many times a write that accepts nothing is retried, [`POLL`] apart, before the line
/// is dropped.
const MAX_STALLS: u32 = 100;

/// The one path to the host: lines queued for the writer thread.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::SyncSender<Vec<u8>>,
    /// Set while messages are being dropped, so the kernel log says it once per episode.
    dropping: Arc<AtomicBool>,
}

impl Writer {
    /// Starts the thread that owns `port` and writes the queued lines to it, whole and in
    /// order.
    pub fn spawn(port: impl Write + Send + 'static) -> io::Result<Writer> {
        let (queue, lines) = mpsc::sync_channel(QUEUE);
        thread::Builder::new().name("writer".into()).spawn(move || write_lines(port, lines))?;
        Ok(Writer { queue, dropping: Arc::default() })
    }

    /// Queues one message; never waits.
    pub fn send(&self, msg: &GuestMessage) {
        let mut line = match serde_json::to_vec(msg) {
            Ok(line) => line,
            Err(e) => {
                kmsg(&format!("cannot encode a message: {e}"));
                return;
            }
        };
        line.push(b'\n');
        match self.queue.try_send(line) {
            Ok(()) => self.dropping.store(false, Ordering::Relaxed),
            Err(mpsc::TrySendError::Full(_)) => {
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    kmsg(&format!("dropping messages: {QUEUE} are waiting for the port (no host reading?)"));
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => kmsg("dropping a message: the writer thread is gone"),
        }
    }

    pub fn respond(&self, id: u64, outcome: Outcome) {
        self.send(&GuestMessage::Response(Response { id, outcome }));
    }
}

/// The writer thread: it alone touches the port, so its waits block no sender.
fn write_lines(mut port: impl Write, lines: mpsc::Receiver<Vec<u8>>) {
    for line in lines {
        // write(2) blocks while no host is connected. It returns 0 when the virtqueue filled
        // up between the driver's check and the send: wait and continue with the rest (never
        // restart, the prefix is already out). Other errors mean the port is gone; the rest
        // is dropped and the host's request deadline reports it.
        let mut rest = &line[..];
        let mut stalls = 0;
        while !rest.is_empty() {
            match port.write(rest) {
                Ok(0) if stalls < MAX_STALLS => {
                    stalls += 1;
                    thread::sleep(POLL);
                }
                Ok(0) => {
                    kmsg("dropping a message: the port accepts no data");
                    break;
                }
                Ok(n) => {
                    rest = &rest[n..];
                    stalls = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    kmsg(&format!("dropping a message: {e}"));
                    break;
                }
            }
        }
    }
}

/// Workers running, and how many of them were answered at their deadline and are still
/// stuck.
#[derive(Default)]
struct Flight {
    running: usize,
    stuck: usize,
}

/// A request being served: answered once, by its worker or at its deadline, whichever comes
/// first (the flag is flipped under the [`Flight`] lock, so the counts stay exact).
struct Pending {
    id: u64,
    answered: AtomicBool,
}

/// Serves request lines: workers, deadlines, the bound.
#[derive(Clone)]
pub struct Dispatcher {
    writer: Writer,
    flight: Arc<Mutex<Flight>>,
    deadlines: mpsc::Sender<(Instant, Arc<Pending>)>,
    limit: usize,
}

impl Dispatcher {
    /// At most `limit` requests at once; starts the deadline watcher.
    pub fn spawn(writer: Writer, limit: usize) -> io::Result<Dispatcher> {
        let flight: Arc<Mutex<Flight>> = Arc::default();
        let (deadlines, pending) = mpsc::channel();
        let watcher = Dispatcher { writer, flight, deadlines, limit };
        let expire = watcher.clone();
        thread::Builder::new().name("deadlines".into()).spawn(move || expire.watch_deadlines(pending))?;
        Ok(watcher)
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Serves one request line (answered from a worker, or here for `ping`, busy and bad
    /// requests).
    pub fn handle_line(&self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match serde_json::from_slice::<Request>(line) {
            Ok(req) if req.op == Op::Ping => self.writer.respond(req.id, Outcome::Ok(Reply::Hello(hello()))),
            Ok(req) => self.start(req),
            Err(e) => {
                // Answer the request if we can tell which one it was; otherwise report an event.
                let id = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
                match id {
                    Some(id) => self.writer.respond(id, Outcome::Err(ErrorReply::msg(format!("bad request: {e}")))),
                    None => bad_request(&self.writer, format!("unparseable request: {e}"), line),
                }
            }
        }
    }

    fn start(&self, req: Request) {
        let id = req.id;
        {
            let mut flight = lock(&self.flight);
            if flight.running >= self.limit {
                let message = format!(
                    "busy: {} requests in flight ({} of them stuck in the kernel past their deadline); try again later",
                    flight.running, flight.stuck
                );
                drop(flight);
                self.writer.respond(id, Outcome::Err(ErrorReply::errno(libc::EBUSY, message)));
                return;
            }
            flight.running += 1;
        }
        let pending = Arc::new(Pending { id, answered: AtomicBool::new(false) });
        // A deadline too far to represent means none.
        if let Some(deadline) = Instant::now().checked_add(req.deadline()) {
            // The watcher ends only with the process, so this does not fail.
            let _ = self.deadlines.send((deadline, pending.clone()));
        }
        let worker = self.clone();
        let spawned = thread::Builder::new().name(format!("req-{id}")).spawn(move || worker.serve(req.op, &pending));
        if let Err(e) = spawned {
            lock(&self.flight).running -= 1;
            // Out of threads or memory: say so instead of leaving the host to time out.
            self.writer.respond(id, Outcome::Err(ErrorReply::io("starting a request thread", &e)));
        }
    }

    /// A worker: runs the request and answers, unless its deadline answered first.
    fn serve(&self, op: Op, pending: &Pending) {
        let power = match op {
            Op::Reboot => Some(libc::RB_AUTOBOOT),
            Op::Poweroff => Some(libc::RB_POWER_OFF),
            _ => None,
        };
        // A panic is a bug in the agent; answering keeps it from looking like a hang.
        let serve = || match op {
            // Holders stream their records as events on the same port.
            Op::Hold(req) => {
                let events = self.writer.clone();
                let sink: consumer::Sink = Arc::new(move |record| {
                    let source = format!("holder-{}", record.holder);
                    let data = serde_json::to_value(&record).unwrap_or_default();
                    events.send(&GuestMessage::Event(Event { source, kind: "consumer".into(), data }));
                });
                consumer::hold(req, sink)
            }
            op => run(op),
        };
        let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(serve)) {
            Ok(Ok(reply)) => Outcome::Ok(reply),
            Ok(Err(err)) => Outcome::Err(err),
            Err(panic) => Outcome::Err(ErrorReply::msg(format!(
                "the agent panicked serving this request: {}",
                panic_message(&*panic)
            ))),
        };
        let late = {
            let mut flight = lock(&self.flight);
            flight.running -= 1;
            let late = pending.answered.swap(true, Ordering::Relaxed);
            if late {
                flight.stuck -= 1;
            }
            late
        };
        match outcome {
            outcome if !late => self.writer.respond(pending.id, outcome),
            // The host was told this hold timed out and will never release it.
            Outcome::Ok(Reply::Held { handle }) => {
                kmsg(&format!("request {}: a hold past its deadline got holder {handle}: releasing it", pending.id));
                if let Err(e) = consumer::release(handle, Duration::from_millis(agent::DEFAULT_RELEASE_WAIT_MS)) {
                    kmsg(&format!("releasing holder {handle}: {e}"));
                }
            }
            _ => kmsg(&format!("request {} returned after its deadline; its answer is dropped", pending.id)),
        }
        if let Some(cmd) = power {
            power_off(cmd);
        }
    }

    /// Answers each request still running at its deadline with `ETIMEDOUT`.
    fn watch_deadlines(&self, pending: mpsc::Receiver<(Instant, Arc<Pending>)>) {
        let mut waiting: Vec<(Instant, Arc<Pending>)> = Vec::new();
        loop {
            waiting.retain(|(_, p)| !p.answered.load(Ordering::Relaxed));
            let next = waiting.iter().map(|(at, _)| *at).min();
            let received = match next {
                Some(at) => pending.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => pending.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(p) => waiting.push(p),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            for (_, p) in waiting.iter().filter(|(at, _)| *at <= now) {
                self.expire(p);
            }
        }
    }

    fn expire(&self, pending: &Pending) {
        let stuck = {
            let mut flight = lock(&self.flight);
            if pending.answered.swap(true, Ordering::Relaxed) {
                return;
            }
            flight.stuck += 1;
            flight.stuck
        };
        let message = format!(
            "no answer within its deadline: the call is stuck in the kernel (its thread is kept; {stuck} stuck now, \
             at most {} requests at once)",
            self.limit
        );
        self.writer.respond(pending.id, Outcome::Err(ErrorReply::stuck(message)));
    }
}

pub fn bad_request(writer: &Writer, message: String, line: &[u8]) {
    let excerpt = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
    writer.send(&GuestMessage::Event(Event {
        source: "agent".into(),
        kind: "bad_request".into(),
        data: serde_json::json!({ "message": message, "line": excerpt }),
    }));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::Bytes;
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};

    /// The host's end of a port: the agent writes to one end, the test reads lines from the other.
    struct Host(std::io::BufReader<std::os::unix::net::UnixStream>);

    impl Host {
        /// The next response, or None after `within`.
        fn response(&mut self, within: Duration) -> Option<Response> {
            use std::io::BufRead;
            self.0.get_ref().set_read_timeout(Some(within)).unwrap();
            let mut line = String::new();
            loop {
                line.clear();
                self.0.read_line(&mut line).ok()?;
                if let Ok(GuestMessage::Response(r)) = serde_json::from_str(&line) {
                    return Some(r);
                }
            }
        }
    }

    /// A FIFO nobody has opened for writing: opening it for reading blocks in the kernel
    /// until someone does, like a read of a dying device's attribute.
    fn stuck_file(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("unplug-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    /// Lets every request stuck on `fifo` return.
    fn unstick(fifo: &Path) {
        for _ in 0..8 {
            let _ = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fifo);
        }
        let _ = std::fs::remove_file(fifo);
    }

    fn read_line_of(id: u64, path: &Path, deadline_ms: Option<u64>) -> Vec<u8> {
        let op = Op::Read { path: path.to_str().unwrap().into(), offset: 0, max_len: 1 };
        serde_json::to_vec(&Request { id, request_deadline_ms: deadline_ms, op }).unwrap()
    }

    #[test]
    fn a_stuck_request_is_answered_at_its_deadline_and_counted_until_it_returns() {
        let (agent, host) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut host = Host(std::io::BufReader::new(host));
        let dispatcher = Dispatcher::spawn(Writer::spawn(agent).unwrap(), 8).unwrap();
        let fifo = stuck_file("deadline");
        let t0 = Instant::now();
        dispatcher.handle_line(&read_line_of(1, &fifo, Some(300)));
        let answer = host.response(Duration::from_secs(5));
        let stuck = lock(&dispatcher.flight).stuck;
        unstick(&fifo);
        let answer = answer.expect("answered");
        let Outcome::Err(err) = answer.outcome else { panic!("{answer:?}") };
        assert_eq!((err.errno, err.stuck), (Some(libc::ETIMEDOUT), true), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert_eq!(stuck, 1);
        // Once the kernel lets go, the worker is no longer counted and its answer is dropped.
        while lock(&dispatcher.flight).running > 0 && t0.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(10));
        }
        let flight = lock(&dispatcher.flight);
        assert_eq!((flight.running, flight.stuck), (0, 0));
        drop(flight);
        assert!(host.response(Duration::from_millis(200)).is_none(), "one answer per request");
    }

    #[test]
    fn requests_past_the_limit_are_answered_busy_and_ping_still_answers() {
        let (agent, host) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut host = Host(std::io::BufReader::new(host));
        let dispatcher = Dispatcher::spawn(Writer::spawn(agent).unwrap(), 2).unwrap();
        let fifo = stuck_file("busy");
        for id in 1..=3 {
            dispatcher.handle_line(&read_line_of(id, &fifo, Some(60_000)));
        }
        dispatcher.handle_line(br#"{"id":4,"op":"ping"}"#);
        let first = host.response(Duration::from_secs(5));
        let second = host.response(Duration::from_secs(5));
        unstick(&fifo);
        let mut answers: Vec<Response> = [first, second].into_iter().flatten().collect();
        answers.sort_by_key(|r| r.id);
        assert_eq!(answers.len(), 2, "{answers:?}");
        let Outcome::Err(busy) = &answers[0].outcome else { panic!("{answers:?}") };
        assert_eq!((answers[0].id, busy.errno), (3, Some(libc::EBUSY)), "{busy}");
        assert!(matches!(answers[1].outcome, Outcome::Ok(Reply::Hello(_))), "{answers:?}");
    }

    #[test]
    fn senders_never_wait_for_a_port_nobody_reads() {
        let (agent, _host) = std::os::unix::net::UnixStream::pair().unwrap();
        let writer = Writer::spawn(agent).unwrap();
        let t0 = Instant::now();
        let (tx, rx) = mpsc::channel();
        let sender = writer.clone();
        thread::spawn(move || {
            // Far more than a socket buffer holds.
            for id in 0..200 {
                sender.respond(id, Outcome::Ok(Reply::Data { data: Bytes(vec![b'x'; 16 << 10]), eof: true }));
            }
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok(), "send blocked for {:?}", t0.elapsed());
    }
}
