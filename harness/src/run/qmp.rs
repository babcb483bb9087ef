//! QMP client: typed commands from the `qapi` crate, an event queue, and device plug/unplug
//! helpers that wait for the matching `DEVICE_DELETED`.
//!
//! Commands and their results are `qapi::qmp` types (generated from QEMU's schema), but the
//! framing and routing are ours: `qapi`'s async stream ends on the first message its schema
//! cannot deserialize (tokio-util's `Framed` stops after a decode error), and its schema is
//! newer than QEMU 7.2, so an event with different fields would silently end the connection
//! and lose the `DEVICE_DELETED` an unplug waits for. Here every line is read as JSON, logged,
//! and routed by shape: responses by id to their caller, events (kept as raw JSON) into a
//! bounded queue with sequence numbers so a waiter never misses an event that arrived before
//! the command's own return.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qapi::qmp;
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

use crate::run::lines::{self, LineError};

/// Longest QMP line we accept from QEMU; anything longer is a protocol error, not a reason to
/// grow without bound.
const MAX_LINE: usize = 4 << 20;
/// Events kept for waiters; older ones are dropped (they are still in qmp.log).
const EVENT_QUEUE_LEN: usize = 4096;
/// How long QEMU gets to answer one command (and to greet us) by default: QEMU answers from
/// its main loop in milliseconds; one that does not answer in this time is wedged.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command { command: &'static str, class: String, desc: String },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    /// QEMU did not answer a command within its deadline.
    #[error("QMP command {command} got no answer within {waited:?}")]
    NoAnswer { command: String, waited: Duration },
    /// `device_del` was accepted but QEMU never reported `DEVICE_DELETED`: the guest did not
    /// complete the unplug. A finding, not an infrastructure failure.
    #[error("unplug stuck: no DEVICE_DELETED for {id:?} within {waited:?}")]
    UnplugStuck { id: String, waited: Duration },
}

/// One QMP event, as QEMU sent it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    /// Position in this connection's event stream.
    pub seq: u64,
    pub name: String,
    pub data: Value,
    /// QEMU's timestamp (seconds since the epoch).
    pub timestamp: f64,
}

/// Position in the event stream; events at or after it are visible to waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor(u64);

type Reply = Result<Value, (String, String)>;

struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    events: Mutex<VecDeque<Event>>,
    next_event_seq: AtomicU64,
    /// Bumped on every event and once more when the connection ends.
    event_tick: watch::Sender<u64>,
    /// Set once QEMU hung up; pending and future commands fail with `Closed`.
    closed: std::sync::atomic::AtomicBool,
    log: Option<Mutex<std::fs::File>>,
    started: Instant,
}

impl Shared {
    fn log(&self, direction: &str, line: &str) {
        if let Some(log) = &self.log {
            if let Ok(mut f) = log.lock() {
                let t = self.started.elapsed().as_secs_f64();
                // A failing log write must not fail the command; the log is diagnostic.
                let _ = writeln!(f, "{t:12.6} {direction} {line}");
            }
        }
    }
}

/// A QMP connection. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Qmp {
    shared: Arc<Shared>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    next_id: Arc<AtomicU64>,
    event_tick: watch::Receiver<u64>,
    /// Deadline for each command's answer.
    command_timeout: Duration,
}

impl Qmp {
    /// Connects to QEMU's QMP socket, reads the greeting and leaves capability negotiation
    /// mode. Every line in both directions is appended to `log` with a relative timestamp.
    pub async fn connect(socket: &Path, log: Option<&Path>) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(socket).await?;
        let log = match log {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new().create(true).append(true).open(path)?,
            )),
            None => None,
        };
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let (tick_tx, tick_rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(VecDeque::new()),
            next_event_seq: AtomicU64::new(0),
            event_tick: tick_tx,
            closed: Default::default(),
            log,
            started: Instant::now(),
        });

        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, read_json_line(&mut reader))
            .await
            .map_err(|_| QmpError::NoAnswer {
                command: "(greeting)".into(),
                waited: COMMAND_TIMEOUT,
            })?;
        let (greeting, raw) = greeting?.ok_or(QmpError::Closed)?;
        shared.log("<-", &raw);
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("expected QMP greeting, got {greeting}")));
        }

        let qmp = Qmp {
            shared: shared.clone(),
            writer: Arc::new(tokio::sync::Mutex::new(write)),
            next_id: Arc::new(AtomicU64::new(1)),
            event_tick: tick_rx,
            command_timeout: COMMAND_TIMEOUT,
        };
        tokio::spawn(route_incoming(reader, shared));
        qmp.execute(qmp::qmp_capabilities { enable: None }).await?;
        Ok(qmp)
    }

    /// Sets how long each later command on this handle may wait for its answer.
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.command_timeout = timeout;
    }

    /// Runs one command and returns its typed result. A command QEMU does not answer within
    /// the command deadline fails with [`QmpError::NoAnswer`] naming it.
    pub async fn execute<C: qapi::Command>(&self, command: C) -> Result<C::Ok, QmpError> {
        let value = self.execute_raw(C::NAME, serde_json::to_value(&command).map_err(json_err)?).await?;
        // Some commands return `{}` where the schema says "no value"; let serde decide.
        serde_json::from_value(value)
            .map_err(|e| QmpError::Protocol(format!("unexpected result for {}: {e}", C::NAME)))
    }

    async fn execute_raw(&self, name: &'static str, arguments: Value) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waited = self.command_timeout;
        match tokio::time::timeout(waited, self.exchange(id, name, arguments)).await {
            Ok(result) => result,
            Err(_) => {
                // A late answer finds no one waiting and is dropped by the router.
                lock(&self.shared.pending).remove(&id);
                self.shared.log(
                    "!!",
                    &format!("no answer to {name} (id {id}) within {waited:?}"),
                );
                Err(QmpError::NoAnswer {
                    command: name.to_string(),
                    waited,
                })
            }
        }
    }

    async fn exchange(
        &self,
        id: u64,
        name: &'static str,
        arguments: Value,
    ) -> Result<Value, QmpError> {
        let mut request = serde_json::json!({ "execute": name, "id": id });
        if !arguments.as_object().is_some_and(|o| o.is_empty()) && !arguments.is_null() {
            request["arguments"] = arguments;
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id, tx);
        // The router sets `closed` before clearing `pending`, so either it drops our sender or
        // we see the flag here: a command never waits on a dead connection.
        if self.shared.closed.load(Ordering::SeqCst) {
            lock(&self.shared.pending).remove(&id);
            return Err(QmpError::Closed);
        }
        let line = request.to_string();
        self.shared.log("->", &line);
        {
            let mut w = self.writer.lock().await;
            let written = async {
                w.write_all(line.as_bytes()).await?;
                w.write_all(b"\n").await?;
                w.flush().await
            }
            .await;
            if let Err(e) = written {
                lock(&self.shared.pending).remove(&id);
                return Err(e.into());
            }
        }
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err((class, desc))) => Err(QmpError::Command { command: name, class, desc }),
            Err(_) => Err(QmpError::Closed),
        }
    }

    /// The cursor for "events from now on". Take it *before* the action whose event you wait
    /// for, so an event that races ahead of the command's return is not missed.
    pub fn cursor(&self) -> EventCursor {
        EventCursor(self.shared.next_event_seq.load(Ordering::SeqCst))
    }

    /// Events at or after `cursor` that are still queued.
    pub fn events_since(&self, cursor: EventCursor) -> Vec<Event> {
        lock(&self.shared.events).iter().filter(|e| e.seq >= cursor.0).cloned().collect()
    }

    /// Waits for the first event at or after `cursor` that satisfies `matches`.
    pub async fn wait_event(
        &self,
        cursor: EventCursor,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<Event, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = self.event_tick.clone();
        loop {
            tick.borrow_and_update();
            if let Some(e) = lock(&self.shared.events).iter().find(|e| e.seq >= cursor.0 && matches(e)) {
                return Ok(e.clone());
            }
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(QmpError::Closed);
            }
            match tokio::time::timeout_at(deadline, tick.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(QmpError::Closed),
                Err(_) => return Err(QmpError::Timeout { what: what.to_string(), waited: timeout }),
            }
        }
    }

    /// `device_add` with free-form properties (`driver`, `id` and `bus` are set from the
    /// arguments).
    pub async fn device_add(
        &self,
        driver: &str,
        id: &str,
        bus: Option<&str>,
        props: &[(&str, Value)],
    ) -> Result<(), QmpError> {
        let props = props.iter().map(|(k, v)| (k.to_string(), v.clone()));
        self.execute(qmp::device_add::new(driver, Some(id.to_string()), bus.map(str::to_string), props))
            .await
            .map(drop)
    }

    /// Requests an unplug and waits until QEMU reports `DEVICE_DELETED` for `id`. If the
    /// guest never completes it, the error is [`QmpError::UnplugStuck`].
    pub async fn device_del(&self, id: &str, timeout: Duration) -> Result<Duration, QmpError> {
        let cursor = self.cursor();
        let start = Instant::now();
        self.execute(qmp::device_del { id: id.to_string() }).await?;
        let remaining = timeout.saturating_sub(start.elapsed());
        match self.wait_event(cursor, "DEVICE_DELETED", remaining, |e| is_device_deleted(e, id)).await {
            Ok(_) => Ok(start.elapsed()),
            Err(QmpError::Timeout { .. }) => Err(QmpError::UnplugStuck { id: id.to_string(), waited: timeout }),
            Err(e) => Err(e),
        }
    }

    /// Adds a unix-socket chardev; with `server == false` QEMU connects to `path` at once, so
    /// the listener must already exist.
    pub async fn chardev_add_unix(&self, id: &str, path: &Path, server: bool) -> Result<(), QmpError> {
        let arguments = serde_json::json!({
            "id": id,
            "backend": { "type": "socket", "data": {
                "addr": { "type": "unix", "data": { "path": path.to_string_lossy() } },
                "server": server,
                "wait": false,
            }},
        });
        // QEMU 7.2 rejects "wait" for client sockets.
        let mut arguments = arguments;
        if !server {
            if let Some(data) = arguments["backend"]["data"].as_object_mut() {
                data.remove("wait");
            }
        }
        self.execute_raw("chardev-add", arguments).await.map(drop)
    }

    pub async fn chardev_remove(&self, id: &str) -> Result<(), QmpError> {
        self.execute(qmp::chardev_remove { id: id.to_string() }).await.map(drop)
    }

    /// Ids of the chardevs QEMU currently has (leak checks after plug cycles).
    pub async fn chardev_ids(&self) -> Result<Vec<String>, QmpError> {
        Ok(self.execute(qmp::query_chardev {}).await?.into_iter().map(|c| c.label).collect())
    }

    /// The run state (`running`, `paused`, `prelaunch`, ...).
    pub async fn status(&self) -> Result<String, QmpError> {
        let v = self.execute_raw("query-status", Value::Null).await?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(format!("query-status returned {v}")))
    }

    /// QEMU's version as `major.minor.micro`.
    pub async fn version(&self) -> Result<String, QmpError> {
        let v = self.execute(qmp::query_version {}).await?;
        Ok(format!("{}.{}.{}", v.qemu.major, v.qemu.minor, v.qemu.micro))
    }
}

/// True for the `DEVICE_DELETED` of the qdev `id` (not of its child objects, which have no id
/// or another id and arrive too: see QEMU's qtest `wait_device_deleted_event`).
pub fn is_device_deleted(e: &Event, id: &str) -> bool {
    e.name == "DEVICE_DELETED" && e.data.get("device").and_then(Value::as_str) == Some(id)
}

fn json_err(e: serde_json::Error) -> QmpError {
    QmpError::Protocol(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (plain inserts and
    // removes), so poisoning is not a reason to fail.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads one JSON line; returns the value and the line as QEMU sent it (for the log).
async fn read_json_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<(Value, String)>, QmpError> {
    loop {
        // The newline counts towards QMP's limit.
        let line = match lines::read_line(r, MAX_LINE - 1).await {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(None),
            Err(LineError::Io(e)) => return Err(e.into()),
            Err(LineError::TooLong) => return Err(QmpError::Protocol(format!("line longer than {MAX_LINE} bytes"))),
            Err(LineError::CutByEof(_)) => return Err(QmpError::Protocol("truncated line at EOF".into())),
        };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        return serde_json::from_str(text)
            .map(|v| Some((v, text.to_string())))
            .map_err(|e| QmpError::Protocol(format!("invalid JSON from QEMU ({e}): {text}")));
    }
}

/// Reads QEMU's lines until EOF, routing responses to waiting commands and events into the
/// queue. On exit every pending command fails with `Closed` and waiters wake up.
async fn route_incoming<R: tokio::io::AsyncBufRead + Unpin>(mut reader: R, shared: Arc<Shared>) {
    loop {
        let msg = match read_json_line(&mut reader).await {
            Ok(Some((v, raw))) => {
                shared.log("<-", &raw);
                v
            }
            Ok(None) => break,
            Err(e) => {
                shared.log("!!", &e.to_string());
                break;
            }
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let seq = shared.next_event_seq.load(Ordering::SeqCst);
            let ts = &msg["timestamp"];
            let timestamp = ts["seconds"].as_f64().unwrap_or(0.0) + ts["microseconds"].as_f64().unwrap_or(0.0) / 1e6;
            let event = Event { seq, name: name.to_string(), data: msg.get("data").cloned().unwrap_or(Value::Null), timestamp };
            {
                let mut q = lock(&shared.events);
                q.push_back(event);
                if q.len() > EVENT_QUEUE_LEN {
                    q.pop_front();
                }
            }
            shared.next_event_seq.store(seq + 1, Ordering::SeqCst);
            shared.event_tick.send_modify(|t| *t += 1);
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            shared.log("!!", "response without a numeric id ignored");
            continue;
        };
        let reply = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = msg.get("error") {
            Err((
                err["class"].as_str().unwrap_or("?").to_string(),
                err["desc"].as_str().unwrap_or("?").to_string(),
            ))
        } else {
            shared.log("!!", "message is neither event nor response");
            continue;
        };
        if let Some(tx) = lock(&shared.pending).remove(&id) {
            let _ = tx.send(reply);
        }
    }
    shared.closed.store(true, Ordering::SeqCst);
    lock(&shared.pending).clear();
    // Wake waiters so they notice the end instead of sleeping to their deadline.
    shared.event_tick.send_modify(|t| *t += 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A scripted QEMU on the other end of a socketpair: reads our lines and answers.
    async fn fake_qemu(
        mut peer: UnixStream,
        script: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) {
        peer.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").await.unwrap();
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match peer.read(&mut byte).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if byte[0] != b'\n' {
                buf.push(byte[0]);
                continue;
            }
            let req: Value = serde_json::from_slice(&buf).unwrap();
            buf.clear();
            for line in script(&req) {
                if peer.write_all(format!("{line}\r\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn connect_pair(script: impl Fn(&Value) -> Vec<String> + Send + 'static) -> (Qmp, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (peer, _) = listener.accept().await.unwrap();
            fake_qemu(peer, script).await;
        });
        let log = dir.path().join("qmp.log");
        let qmp = Qmp::connect(&path, Some(&log)).await.unwrap();
        (qmp, dir)
    }

    fn ok(req: &Value) -> String {
        serde_json::json!({"return": {}, "id": req["id"]}).to_string()
    }

    fn deleted(id: &str) -> String {
        serde_json::json!({"event": "DEVICE_DELETED", "data": {"device": id, "path": format!("/machine/peripheral/{id}")},
            "timestamp": {"seconds": 1, "microseconds": 2}}).to_string()
    }

    #[tokio::test]
    async fn device_del_sees_event_that_arrives_before_the_return() {
        let (qmp, dir) = connect_pair(|req| match req["execute"].as_str() {
            // An unrelated child object's event first, then ours, then the return.
            Some("device_del") => vec![
                serde_json::json!({"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/k/child"},
                    "timestamp": {"seconds": 1, "microseconds": 0}}).to_string(),
                deleted("k"),
                ok(req),
            ],
            _ => vec![ok(req)],
        })
        .await;
        qmp.device_del("k", Duration::from_secs(5)).await.unwrap();
        let log = std::fs::read_to_string(dir.path().join("qmp.log")).unwrap();
        assert!(log.lines().any(|l| l.contains(" -> ") && l.contains("\"device_del\"")), "{log}");
        assert!(log.lines().any(|l| l.contains(" <- ") && l.contains("DEVICE_DELETED") && l.contains("\"device\":\"k\"")), "{log}");
    }

    #[tokio::test]
    async fn device_del_without_event_is_unplug_stuck() {
        let (qmp, _dir) = connect_pair(|req| vec![ok(req)]).await;
        let err = qmp.device_del("pcidev", Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, QmpError::UnplugStuck { ref id, .. } if id == "pcidev"), "{err}");
    }

    #[tokio::test]
    async fn command_errors_carry_class_and_description() {
        let (qmp, _dir) = connect_pair(|req| {
            if req["execute"] == "qmp_capabilities" {
                return vec![ok(req)];
            }
            vec![serde_json::json!({"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}, "id": req["id"]})
                .to_string()]
        })
        .await;
        let err = qmp.device_add("usb-kbd", "x", Some("xhci.0"), &[]).await.unwrap_err();
        assert!(matches!(err, QmpError::Command { command: "device_add", ref class, .. } if class == "DeviceNotFound"), "{err}");
    }

    #[tokio::test]
    async fn unknown_events_and_garbage_fields_do_not_end_the_connection() {
        let (qmp, _dir) = connect_pair(|req| {
            vec![
                r#"{"event": "SOME_FUTURE_EVENT", "data": {"x": [1,2]}, "timestamp": {"seconds": 0, "microseconds": 0}}"#.to_string(),
                r#"{"event": "RTC_CHANGE", "data": {"offset": 1}, "timestamp": {"seconds": 0, "microseconds": 0}}"#.to_string(),
                serde_json::json!({"return": {"status": "running", "running": true, "singlestep": false}, "id": req["id"]}).to_string(),
            ]
        })
        .await;
        let cursor = qmp.cursor();
        assert_eq!(qmp.status().await.unwrap(), "running");
        assert_eq!(qmp.status().await.unwrap(), "running");
        let names: Vec<_> = qmp.events_since(cursor).into_iter().map(|e| e.name).collect();
        assert_eq!(&names[..2], ["SOME_FUTURE_EVENT", "RTC_CHANGE"]);
    }

    #[tokio::test]
    async fn a_command_qemu_never_answers_fails_naming_it() {
        let (mut qmp, dir) = connect_pair(|req| {
            if req["execute"] == "qmp_capabilities" {
                vec![ok(req)]
            } else {
                vec![]
            }
        })
        .await;
        qmp.set_command_timeout(Duration::from_millis(200));
        let start = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), qmp.status())
            .await
            .expect("no deadline on the command")
            .unwrap_err();
        assert!(
            matches!(err, QmpError::NoAnswer { ref command, .. } if command == "query-status"),
            "{err}"
        );
        assert!(err.to_string().contains("query-status"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let err = qmp
            .device_del("k", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, QmpError::NoAnswer { ref command, .. } if command == "device_del"),
            "{err}"
        );
        let log = std::fs::read_to_string(dir.path().join("qmp.log")).unwrap();
        assert!(log.contains("no answer to query-status"), "{log}");
    }

    #[tokio::test]
    async fn peer_hangup_fails_pending_commands_with_closed() {
        let (qmp, _dir) = connect_pair(|req| {
            if req["execute"] == "query-status" {
                // Answer nothing: the fake exits after this request because we close below.
                vec![]
            } else {
                vec![ok(req)]
            }
        })
        .await;
        let q2 = qmp.clone();
        let waiter = tokio::spawn(async move { q2.wait_event(q2.cursor(), "anything", Duration::from_secs(30), |_| false).await });
        // Shut the write side: the fake sees EOF and drops the connection.
        qmp.writer.lock().await.shutdown().await.unwrap();
        let err = qmp.status().await.unwrap_err();
        assert!(matches!(err, QmpError::Closed | QmpError::Io(_)), "{err}");
        let err = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap_err();
        assert!(matches!(err, QmpError::Closed), "{err}");
    }
}
