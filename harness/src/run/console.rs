//! The serial console (ttyS0): the kernel log and nothing else.
//!
//! A task reads QEMU's serial stream, splits it into lines (tolerating `\r`, invalid UTF-8
//! and endless lines), stamps each with the host time since boot, appends it to
//! `console.log` and hands it to sinks (the crash-report parser). Callers wait for milestones
//! with an expect loop (`wait_for`); a kernel panic seen while waiting ends the wait at once
//! instead of at the deadline. (rexpect drives a program on a pty; our stream is a pipe that a
//! background task must drain continuously so the guest never blocks on the UART, so a small
//! expect loop over the captured lines fits better.) The line splitter is ours too:
//! `tokio_util`'s `LinesCodec` errors on invalid UTF-8 and drops the rest of an over-long line,
//! where a kernel log must keep every byte it can (replaced, or cut into 16 KiB pieces).
//!
//! `console.log` format: one line per console line, `<seconds since QEMU start>|<line>`, e.g.
//! `    2.041234|[    1.873401][    T1] Run /init as init process`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// Longer lines are split: a guest spewing without newlines must not grow memory.
const MAX_LINE: usize = 16 * 1024;
/// Lines kept in memory for waiters, at most this many and this much text; everything is in
/// console.log. (Lines alone do not bound it: a flood without line ends is 16 KiB lines, each
/// up to three times that once invalid bytes are replaced.)
const RING_LEN: usize = 20_000;
const RING_BYTES: usize = 4 << 20;
const PANIC_MARKER: &str = "Kernel panic - not syncing";

#[derive(Debug, Clone)]
pub struct ConsoleLine {
    /// Position in this console's stream of lines.
    pub index: u64,
    /// Host time since the console started (QEMU start).
    pub host_time: Duration,
    pub text: String,
}

/// Position in the console's lines; the default is the very first line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LineCursor(u64);

impl LineCursor {
    /// The 0-based index of the line at the cursor: also its line in `console.log` (0-based).
    pub fn index(self) -> u64 {
        self.0
    }

    /// The cursor at line `index` (0-based), e.g. to read `console.log` from there.
    pub fn at_line(index: u64) -> LineCursor {
        LineCursor(index)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("timed out after {waited:?} waiting for {what} on the console; last line: {last:?}")]
    Timeout { what: String, waited: Duration, last: Option<String> },
    #[error("kernel panicked while waiting for {what}: {line}")]
    KernelPanic { what: String, line: String },
    #[error("console ended (QEMU exited) while waiting for {what}; last line: {last:?}")]
    Ended { what: String, last: Option<String> },
}

/// Receives every console line as it arrives (e.g. the crash-report parser).
pub trait LineSink: Send {
    fn line(&mut self, line: &ConsoleLine);
}

impl<F: FnMut(&ConsoleLine) + Send> LineSink for F {
    fn line(&mut self, line: &ConsoleLine) {
        self(line)
    }
}

/// The recent lines, and their text's size.
#[derive(Default)]
struct Ring {
    lines: VecDeque<ConsoleLine>,
    bytes: usize,
}

impl Ring {
    fn push(&mut self, line: ConsoleLine) {
        self.bytes += line.text.len();
        self.lines.push_back(line);
        while self.lines.len() > RING_LEN || (self.bytes > RING_BYTES && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.text.len();
            }
        }
    }
}

struct Shared {
    ring: Mutex<Ring>,
    next_index: AtomicU64,
    tick: watch::Sender<u64>,
    ended: AtomicBool,
}

/// Handle to a running console capture. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    shared: Arc<Shared>,
    tick: watch::Receiver<u64>,
}

impl Console {
    /// Starts draining `source` into `log` (created or appended) and the sinks.
    pub fn spawn<R>(source: R, log: &Path, sinks: Vec<Box<dyn LineSink>>) -> std::io::Result<Console>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let (tx, rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring::default()),
            next_index: AtomicU64::new(0),
            tick: tx,
            ended: AtomicBool::new(false),
        });
        tokio::spawn(drain(source, file, sinks, shared.clone()));
        Ok(Console { shared, tick: rx })
    }

    /// "From now on": lines at or after the cursor are visible to `wait_for`.
    pub fn cursor(&self) -> LineCursor {
        LineCursor(self.shared.next_index.load(Ordering::SeqCst))
    }

    /// Lines at or after `cursor` still held in memory.
    pub fn lines_since(&self, cursor: LineCursor) -> Vec<ConsoleLine> {
        lock(&self.shared.ring).lines.iter().filter(|l| l.index >= cursor.0).cloned().collect()
    }

    pub fn has_ended(&self) -> bool {
        self.shared.ended.load(Ordering::SeqCst)
    }

    /// Waits for a line at or after `cursor` containing `needle`. A kernel panic or the end of
    /// the stream before that is an error, reported at once.
    pub async fn wait_for(&self, cursor: LineCursor, needle: &str, timeout: Duration) -> Result<ConsoleLine, ConsoleError> {
        self.wait_until(cursor, needle, timeout, |line| line.contains(needle)).await
    }

    /// Waits for a line at or after `cursor` that satisfies `matches`; `what` names it in errors.
    pub async fn wait_until(
        &self,
        cursor: LineCursor,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<ConsoleLine, ConsoleError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = self.tick.clone();
        let mut scanned = cursor.0;
        loop {
            tick.borrow_and_update();
            {
                let ring = lock(&self.shared.ring);
                let from = scanned;
                for line in ring.lines.iter().filter(|l| l.index >= from) {
                    if matches(&line.text) {
                        return Ok(line.clone());
                    }
                    if line.text.contains(PANIC_MARKER) {
                        return Err(ConsoleError::KernelPanic { what: what.to_string(), line: line.text.clone() });
                    }
                    scanned = line.index + 1;
                }
            }
            if self.has_ended() {
                return Err(ConsoleError::Ended { what: what.to_string(), last: self.last_line() });
            }
            if tokio::time::timeout_at(deadline, tick.changed()).await.is_err() {
                return Err(ConsoleError::Timeout { what: what.to_string(), waited: timeout, last: self.last_line() });
            }
        }
    }

    /// Resolves only when the guest is lost: a kernel panic after `cursor`, or the end of the
    /// stream (QEMU exited). Race it against an operation to fail that operation early.
    pub async fn wait_until_lost(&self, cursor: LineCursor) -> ConsoleError {
        let mut tick = self.tick.clone();
        let mut scanned = cursor.0;
        loop {
            tick.borrow_and_update();
            {
                let ring = lock(&self.shared.ring);
                if let Some(line) = ring.lines.iter().find(|l| l.index >= scanned && l.text.contains(PANIC_MARKER)) {
                    return ConsoleError::KernelPanic { what: "the guest".into(), line: line.text.clone() };
                }
                scanned = ring.lines.back().map_or(scanned, |l| l.index + 1);
            }
            if self.has_ended() {
                return ConsoleError::Ended { what: "the guest".into(), last: self.last_line() };
            }
            // The sender lives in `shared`, which we hold, so this only wakes on new lines.
            let _ = tick.changed().await;
        }
    }

    fn last_line(&self) -> Option<String> {
        lock(&self.shared.ring).lines.back().map(|l| l.text.clone())
    }
}

/// Strips the host-time prefix our `console.log` puts before each kernel line; other logs
/// (from elsewhere) pass through unchanged.
pub fn strip_host_prefix(line: &str) -> &str {
    match line.split_once('|') {
        Some((time, rest)) if !time.is_empty() && time.trim_start().parse::<f64>().is_ok() => rest,
        _ => line,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn drain<R: AsyncRead + Unpin>(
    mut source: R,
    mut file: std::fs::File,
    mut sinks: Vec<Box<dyn LineSink>>,
    shared: Arc<Shared>,
) {
    let start = Instant::now();
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 8192];
    let mut emit = |text: String| {
        let index = shared.next_index.load(Ordering::SeqCst);
        let line = ConsoleLine { index, host_time: start.elapsed(), text };
        // Losing the log file (disk full) must not stop the drain: the guest would block on
        // its UART. The in-memory ring and sinks still get the line.
        let _ = writeln!(file, "{:12.6}|{}", line.host_time.as_secs_f64(), line.text);
        for sink in sinks.iter_mut() {
            sink.line(&line);
        }
        lock(&shared.ring).push(line);
        shared.next_index.store(index + 1, Ordering::SeqCst);
        shared.tick.send_modify(|t| *t += 1);
    };
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for line in splitter.push(&buf[..n]) {
            emit(line);
        }
    }
    if let Some(rest) = splitter.finish() {
        emit(rest);
    }
    let _ = file.flush();
    shared.ended.store(true, Ordering::SeqCst);
    shared.tick.send_modify(|t| *t += 1);
}

/// Splits a byte stream into text lines: `\n` ends a line, `\r` is dropped, invalid UTF-8 is
/// replaced, and a line longer than `MAX_LINE` is cut into pieces.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            match b {
                b'\n' => out.push(self.take()),
                b'\r' => {}
                _ => {
                    self.partial.push(b);
                    if self.partial.len() >= MAX_LINE {
                        out.push(self.take());
                    }
                }
            }
        }
        out
    }

    fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn splitter_handles_crlf_garbage_and_long_lines() {
        let mut s = LineSplitter::default();
        let mut lines = s.push(b"one\r\ntw");
        lines.extend(s.push(b"o\n\xff\xfe bad\n"));
        assert_eq!(lines, vec!["one", "two", "\u{fffd}\u{fffd} bad"]);
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let pieces = s.push(&long);
        assert_eq!(pieces.len(), 2);
        assert_eq!(s.finish().unwrap().len(), 5);
        assert!(s.finish().is_none());
    }

    #[test]
    fn strip_host_prefix_only_strips_ours() {
        assert_eq!(strip_host_prefix("    2.041234|[    1.8][    T1] Run /init"), "[    1.8][    T1] Run /init");
        assert_eq!(strip_host_prefix("[    1.8] a|b"), "[    1.8] a|b");
        assert_eq!(strip_host_prefix("|x"), "|x");
    }

    async fn console_with_pipe() -> (Console, tokio::io::DuplexStream, tempfile::TempDir, Arc<Mutex<Vec<String>>>) {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = tokio::io::duplex(1024);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let sink = move |l: &ConsoleLine| seen2.lock().unwrap().push(l.text.clone());
        let console = Console::spawn(reader, &dir.path().join("console.log"), vec![Box::new(sink)]).unwrap();
        (console, writer, dir, seen)
    }

    #[tokio::test]
    async fn wait_for_finds_lines_written_before_and_after_the_call() {
        let (console, mut w, dir, seen) = console_with_pipe().await;
        let cursor = console.cursor();
        w.write_all(b"[    0.000000] Linux version 6.12.117\n").await.unwrap();
        let line = console.wait_for(cursor, "Linux version", Duration::from_secs(5)).await.unwrap();
        assert_eq!(line.index, 0);
        let later = console.cursor();
        let waiter = {
            let c = console.clone();
            tokio::spawn(async move { c.wait_for(later, "agent starting", Duration::from_secs(5)).await })
        };
        w.write_all(b"noise\nunplug-torture: agent starting\n").await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap().index, 2);
        drop(w);
        let err = console.wait_for(console.cursor(), "never", Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ConsoleError::Ended { .. }), "{err}");
        let log = std::fs::read_to_string(dir.path().join("console.log")).unwrap();
        let raw: Vec<&str> = log.lines().map(strip_host_prefix).collect();
        assert_eq!(raw, ["[    0.000000] Linux version 6.12.117", "noise", "unplug-torture: agent starting"]);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_panic_ends_the_wait_early() {
        let (console, mut w, _dir, _) = console_with_pipe().await;
        let cursor = console.cursor();
        w.write_all(b"[    1.0] Kernel panic - not syncing: No working init found.\n").await.unwrap();
        let err = console.wait_for(cursor, "agent starting", Duration::from_secs(30)).await.unwrap_err();
        assert!(matches!(err, ConsoleError::KernelPanic { .. }), "{err}");
    }

    #[tokio::test]
    async fn wait_until_lost_reports_panic_then_end() {
        let (console, mut w, _dir, _) = console_with_pipe().await;
        let cursor = console.cursor();
        w.write_all(b"fine\n").await.unwrap();
        let c = console.clone();
        let lost = tokio::spawn(async move { c.wait_until_lost(cursor).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!lost.is_finished());
        w.write_all(b"Kernel panic - not syncing: Attempted to kill init!\n").await.unwrap();
        assert!(matches!(lost.await.unwrap(), ConsoleError::KernelPanic { .. }));
        let after = console.cursor();
        drop(w);
        assert!(matches!(console.wait_until_lost(after).await, ConsoleError::Ended { .. }));
    }

    #[tokio::test]
    async fn timeout_names_the_last_line() {
        let (console, mut w, _dir, _) = console_with_pipe().await;
        w.write_all(b"stuck here\n").await.unwrap();
        let err = console.wait_for(console.cursor(), "x", Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, ConsoleError::Timeout { last: Some(ref l), .. } if l == "stuck here"), "{err}");
    }
}
