//! The crash-report parser for a live console, on a thread of its own.
//!
//! The console drain hands every line to a [`LineSink`]; parsing it there would run the
//! parser on the async runtime, next to QMP and the agent. The sink here only queues the line;
//! a dedicated thread feeds the parser and moves finished reports into a bounded,
//! title-deduplicated collection ([`report::Collected`]) the run takes from after each step.
//!
//! At the end of a run, [`ReportFeed::finish`] waits (with a deadline) until the console
//! reached EOF — the drain drops the sink there, which ends the thread — and then finishes
//! the parser with [`report::Parser::finish_cut`]: a report still open when QEMU exited (a
//! panic with `panic=-1` resets before `---[ end Kernel panic`) is filed, marked cut short,
//! never dropped.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use report::{Collected, Parser};

use crate::run::console::{ConsoleLine, LineSink};

/// Console lines queued for the parser thread at most (16 KiB each at most).
const QUEUE_LINES: usize = 256;

/// Lines the parser thread feeds at once at most, when that many are queued.
const BATCH_LINES: usize = 1025;

/// Finished reports are moved out of the parser at least every this many lines. A line
/// finishes at most nine reports (its own start pushes out the oldest of the eight open ones;
/// an idle limit can end the other seven), so the parser's own pending limit
/// (`report::Limits::max_pending`, 256) is never reached inside a batch: past it the parser
/// drops the newest report, and a flood of cut reports would push out the whole one after
/// it. [`Collected`] chooses instead, and it keeps a whole report over a corrupted one.
const TAKE_EVERY_LINES: usize = 16;

struct State {
    parser: Parser,
    pending: Collected,
    /// `parser.dropped()` already counted into `pending`.
    dropped_seen: u64,
}

impl State {
    /// Feeds `lines` in order (each a console line without its end), taking finished
    /// reports as it goes.
    fn feed(&mut self, lines: impl IntoIterator<Item = String>) {
        for (i, line) in lines.into_iter().enumerate() {
            self.parser.feed(line.as_bytes());
            self.parser.feed(b"\n");
            if (i + 1) % TAKE_EVERY_LINES == 0 {
                self.take_finished();
            }
        }
        self.take_finished();
    }

    fn take_finished(&mut self) {
        for r in self.parser.take_settled() {
            self.pending.add(r);
        }
        let dropped = self.parser.dropped();
        self.pending.dropped += dropped - self.dropped_seen;
        self.dropped_seen = dropped;
    }
}

/// The run's side of the parser thread.
pub struct ReportFeed {
    state: Arc<Mutex<State>>,
    /// Resolves when the parser thread has seen the end of the console (every sink dropped).
    done: tokio::sync::oneshot::Receiver<()>,
}

/// What [`ReportFeed::take`] hands over.
#[derive(Debug)]
pub struct Taken {
    pub reports: Collected,
    /// Console lines the parser had read by then. A report can settle in a later take than
    /// the one its lines arrived by (the latest is kept back while a `Kernel panic` could
    /// still fold into it): its `start_line` against this says where it began.
    pub lines_seen: u64,
}

/// How the feed ended.
#[derive(Debug)]
pub struct FeedEnd {
    pub reports: Collected,
    /// False when the console had not reached EOF by the deadline: lines printed after that
    /// were not parsed.
    pub reached_eof: bool,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReportFeed {
    /// The feed and the sink to give the console (`Vm::boot`'s sinks).
    pub fn start() -> std::io::Result<(ReportFeed, Box<dyn LineSink>)> {
        let state = Arc::new(Mutex::new(State {
            parser: Parser::new(),
            pending: Collected::default(),
            dropped_seen: 0,
        }));
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE_LINES);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let thread_state = state.clone();
        std::thread::Builder::new()
            .name("report-parser".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Whatever else is queued, under the same lock.
                    let queued = std::iter::from_fn(|| rx.try_recv().ok());
                    lock(&thread_state).feed(std::iter::once(first).chain(queued).take(BATCH_LINES));
                }
                let _ = done_tx.send(());
            })?;
        let sink = move |line: &ConsoleLine| {
            // The thread only ends when every sender is gone, so a send cannot fail while we
            // hold one; if it ever did, the line is still in console.log.
            if let Err(mpsc::TrySendError::Full(text)) = tx.try_send(line.text.clone()) {
                // A flood the parser cannot keep up with: wait for it (the console drain
                // stops reading, QEMU buffers, the guest's UART waits) rather than queue
                // without bound or lose a line. Off the runtime's worker while waiting.
                let _ = tokio::task::block_in_place(|| tx.send(text));
            }
        };
        Ok((ReportFeed { state, done }, Box::new(sink)))
    }

    /// Reports finished since the last call, deduplicated by title with counts, and how far
    /// the parser had read.
    pub fn take(&self) -> Taken {
        let mut s = lock(&self.state);
        s.take_finished();
        Taken { reports: std::mem::take(&mut s.pending), lines_seen: s.parser.lines_seen() }
    }

    /// Waits up to `deadline` for the console's EOF (shut QEMU down first), then finishes the
    /// parser: reports still open are returned marked cut short, with everything not yet taken.
    pub async fn finish(self, deadline: Duration) -> FeedEnd {
        let reached_eof = matches!(tokio::time::timeout(deadline, self.done).await, Ok(Ok(())));
        let why = if reached_eof {
            "the console ended (the machine stopped)"
        } else {
            "the run ended while the console was still open"
        };
        let state = self.state;
        // The parser's last work is not for the runtime either.
        let reports = tokio::task::spawn_blocking(move || {
            let mut s = lock(&state);
            s.take_finished();
            let parser = std::mem::take(&mut s.parser);
            let mut pending = std::mem::take(&mut s.pending);
            for r in parser.finish_cut(why) {
                pending.add(r);
            }
            pending
        })
        .await
        .unwrap_or_default();
        FeedEnd {
            reports,
            reached_eof,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::console::Console;

    /// A stand-in for QEMU: prints the start of a panic report (no `---[ end Kernel panic`,
    /// as with panic=-1) and exits at once.
    async fn fake_qemu(
        dir: &std::path::Path,
        sinks: Vec<Box<dyn LineSink>>,
    ) -> (Console, tokio::process::Child) {
        let script = r#"printf '[   50.1][  T77] Kernel panic - not syncing: hung_task: blocked tasks\n[   50.1][  T77] CPU: 0 UID: 0 PID: 77 Comm: khungtaskd\n[   50.1][  T77] Call Trace:\n[   50.1][  T77]  <TASK>\n[   50.1][  T77]  panic+0x1/0x2\n[   50.1][  T77]  watchdog+0x1/0x2'; exit 0"#;
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let console = Console::spawn(stdout, &dir.join("console.log"), sinks).unwrap();
        (console, child)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_report_without_end_just_before_exit_is_filed_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        let (feed, sink) = ReportFeed::start().unwrap();
        let (_console, mut child) = fake_qemu(dir.path(), vec![sink]).await;
        child.wait().await.unwrap();
        let end = feed.finish(Duration::from_secs(10)).await;
        assert!(end.reached_eof);
        assert_eq!(end.reports.reports.len(), 1, "{:#?}", end.reports);
        let r = &end.reports.reports[0].report;
        assert!(r.title.starts_with("kernel panic"), "{}", r.title);
        assert!(
            r.corrupted
                .as_deref()
                .unwrap_or_default()
                .contains("cut short: the console ended"),
            "{:?}",
            r.corrupted
        );
    }

    /// A batch of cut reports longer than the parser's pending limit, then a whole report in
    /// the same batch (a slow parser thread behind a flooding guest): the whole one is kept.
    /// Taken only at the batch's end, the parser dropped it as the 257th pending report.
    #[test]
    fn a_whole_report_after_a_batch_of_cut_ones_is_kept() {
        let mut state = State { parser: Parser::new(), pending: Collected::default(), dropped_seen: 0 };
        // Reports that never end: each start cuts the oldest of the open ones.
        let flood = (0..600).map(|n| format!("[{n:5}.000000][ T{}] BUG: KASAN: slab-use-after-free in fn_{n}+0x1/0x2", 100 + n % 64));
        let path = crate::paths::repo_root().join("harness/report/tests/data/kasan-slab-uaf-704.log");
        let text = std::fs::read_to_string(path).unwrap();
        let real = text.lines().skip_while(|l| !l.starts_with('[')).map(str::to_string).collect::<Vec<_>>();
        state.feed(flood.chain(real).take(BATCH_LINES));
        let mut collected = std::mem::take(&mut state.pending);
        for r in state.parser.finish_cut("end") {
            collected.add(r);
        }
        let titles: Vec<&str> = collected.reports.iter().map(|c| c.report.title.as_str()).collect();
        assert!(titles.contains(&"KASAN: slab-use-after-free Read in btrfs_evict_inode"), "{} kept, {} dropped: {titles:?}", titles.len(), collected.dropped);
    }

    #[tokio::test]
    async fn reports_are_taken_as_they_finish() {
        let (feed, mut sink) = ReportFeed::start().unwrap();
        let text = "[   1.0][  T9] WARNING: CPU: 0 PID: 9 at drivers/x.c:1 f+0x1/0x2\n[   1.0][  T9] Call Trace:\n[   1.0][  T9]  f+0x1/0x2\n[   1.0][  T9] ---[ end trace 0000000000000000 ]---";
        for (i, t) in text.lines().chain(text.lines()).enumerate() {
            sink.line(&ConsoleLine {
                index: i as u64,
                host_time: Duration::ZERO,
                text: t.to_string(),
            });
        }
        // The first is taken as soon as the parser thread got to it; the latest stays back
        // while a trailing `Kernel panic` could still be folded into it.
        let mut taken = 0;
        for _ in 0..100 {
            taken += feed.take().reports.reports.iter().map(|c| c.count).sum::<u64>();
            if taken == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(taken, 1);
        drop(sink);
        let end = feed.finish(Duration::from_secs(5)).await;
        assert!(end.reached_eof);
        assert_eq!(end.reports.reports.len(), 1, "{:#?}", end.reports);
        assert_eq!(end.reports.reports[0].report.title, "WARNING in f");
        let why = end.reports.reports[0]
            .report
            .corrupted
            .clone()
            .unwrap_or_default();
        assert!(!why.contains("cut short"), "it ended on its own: {why}");
    }
}
