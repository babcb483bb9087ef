//! The streaming state machine: bytes in, finished [`Report`]s out.
//!
//! A line that contains a report header (`BUG:`, `WARNING:`, `INFO:`, `general protection
//! fault`, …) opens a report for the line's printk caller. Following lines of the same
//! caller are appended; with `CONFIG_PRINTK_CALLER` lines of other tasks and CPUs are kept
//! out, so reports printed concurrently on different CPUs come out separately and clean.
//! Without it every line belongs to the one console context, as in syzkaller.
//!
//! A report ends at its own end marker (KASAN's closing `====` rule, `---[ end trace`,
//! `---[ end Kernel panic`), when its caller starts another report, when its caller has
//! been silent for [`Limits::idle_lines`] lines, when it reaches [`Limits::max_report_lines`]
//! (then it is marked corrupted as truncated), or at [`Parser::finish`].
//!
//! Pasted mails (a syzbot report, a reply quoting one) parse like the console they quote:
//! `> ` quoting is stripped from every line, soft line breaks are undone once a
//! `Content-Type: …; format=flowed` header said the mail has them (RFC 3676: a line ending
//! in a space continues on the next), a `Subject:` naming the crash starts no report, and
//! the `… [inline]` lines syzbot's symbolizer prints above a report's header line belong to
//! the report that header starts.
//!
//! Memory is bounded whatever the input: a line is cut at [`Limits::max_line_bytes`], at
//! most [`Limits::max_active`] reports are open, finished reports not yet taken are capped
//! at [`Limits::max_pending`] (further ones are counted in [`Parser::dropped`]), and the
//! look-behind ring holds [`Limits::ring_lines`] lines.

use std::collections::VecDeque;

use crate::formats::{START_IGNORES, TITLE_QUOTES};
use crate::line::{self, Caller};
use crate::title::{self, tables};
use crate::Report;

/// Bounds on memory and report size. The defaults suit a kernel console.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longer lines are split; a kernel console line is at most ~1 KiB.
    pub max_line_bytes: usize,
    /// A report longer than this is cut and marked corrupted (hung-task lock dumps of a
    /// busy system are a few hundred lines).
    pub max_report_lines: usize,
    /// Reports of different callers open at the same time.
    pub max_active: usize,
    /// Finished reports waiting for [`Parser::take_reports`]/[`Parser::finish`].
    pub max_pending: usize,
    /// A report whose caller printed nothing for this many lines is finished.
    pub idle_lines: u64,
    /// Recent lines remembered to prepend a report's preamble.
    pub ring_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 4096,
            max_report_lines: 1000,
            max_active: 8,
            max_pending: 256,
            idle_lines: 500,
            ring_lines: 256,
        }
    }
}

/// Lines of the same caller kept before a report: a few, or many when the caller is a
/// precise task (then they are what that task did just before).
const PREFIX_LINES: usize = 5;
const TASK_PREFIX_LINES: usize = 50;
/// A report shorter than this is not yet "long enough" for a following panic or lockdep
/// splat to be dropped from it (panic_on_warn prints a second stack after a lone WARNING).
const MIN_REPORT_LINES: usize = 22;
/// A `Kernel panic`/`invalid opcode` this soon after a report of the same caller finished
/// belongs to it rather than starting a new, truncated one.
const FOLD_WINDOW: u64 = 64;

struct Active {
    caller: Caller,
    oops: usize,
    prefix: Vec<String>,
    lines: Vec<String>,
    start_line: u64,
    last_line: u64,
    timestamp: Option<f64>,
    /// `Sending NMI from CPU`: all-CPU backtraces follow and belong to this report.
    cpu_traceback: bool,
    /// Following text is a consequence (panic, induced lockdep splat), not the report.
    skip_rest: bool,
    panicked: bool,
    truncated: bool,
    /// Ended because its caller started another report.
    cut_by_next: bool,
    /// The stream ended before the report did ([`Parser::finish_cut`]): why.
    cut_off: Option<String>,
    is_kasan: bool,
}

/// Whether the input is a mail whose long lines are soft-wrapped (RFC 3676 `format=flowed`),
/// and whether the space before each soft break is the mail's or the wrapper's (`DelSp=yes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flowed {
    Off,
    On { delsp: bool },
}

struct Recent {
    caller: Caller,
    text: String,
    questionable: bool,
}

/// The streaming console parser. See the module documentation.
pub struct Parser {
    limits: Limits,
    partial: Vec<u8>,
    line_no: u64,
    ring: VecDeque<Recent>,
    active: Vec<Active>,
    done: VecDeque<Report>,
    /// Caller and line number of the last finished report, for folding trailing panics.
    last_finished: Option<(Caller, u64)>,
    dropped: u64,
    bytes: u64,
    flowed: Flowed,
    /// The previous line was a `Content-Type:` header (whose parameters may be folded).
    in_content_type: bool,
    /// Soft-wrapped lines of a flowed mail waiting for the line that ends them (at most
    /// [`Limits::max_line_bytes`]), and how many lines they were.
    carry: Vec<u8>,
    carry_lines: u64,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

impl Parser {
    pub fn new() -> Parser {
        Parser::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Parser {
        Parser {
            limits,
            partial: Vec::new(),
            line_no: 0,
            ring: VecDeque::new(),
            active: Vec::new(),
            done: VecDeque::new(),
            last_finished: None,
            dropped: 0,
            bytes: 0,
            flowed: Flowed::Off,
            in_content_type: false,
            carry: Vec::new(),
            carry_lines: 0,
        }
    }

    /// Feeds console bytes as they arrive; chunk boundaries may fall anywhere.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.push_partial(&bytes[..nl]);
                    bytes = &bytes[nl + 1..];
                    self.flush_partial();
                }
                None => {
                    self.push_partial(bytes);
                    bytes = &[];
                }
            }
        }
    }

    /// Appends to the unfinished line, cutting it when it grows past the limit.
    fn push_partial(&mut self, mut chunk: &[u8]) {
        while self.partial.len() + chunk.len() > self.limits.max_line_bytes {
            let take = self.limits.max_line_bytes - self.partial.len();
            self.partial.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            self.flush_partial();
        }
        self.partial.extend_from_slice(chunk);
    }

    fn flush_partial(&mut self) {
        let raw = std::mem::take(&mut self.partial);
        self.unwrap_mail(&raw);
        self.partial = raw;
        self.partial.clear();
    }

    /// Undoes what mail did to a line before it is processed: quoting always, soft line
    /// breaks when the mail declared them.
    fn unwrap_mail(&mut self, raw: &[u8]) {
        let text = line::strip_mail_quote(raw);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if self.carry.len() + text.len() > self.limits.max_line_bytes {
            self.flush_carry(None);
        }
        if let Flowed::On { delsp } = self.flowed {
            // The signature separator "-- " is the one line that ends in a space unbroken.
            if text.last() == Some(&b' ') && text != b"-- " {
                let keep = if delsp { text.len() - 1 } else { text.len() };
                self.carry.extend_from_slice(&text[..keep]);
                self.carry_lines += 1;
                return;
            }
        }
        if self.carry_lines > 0 {
            self.flush_carry(Some(text));
        } else {
            self.note_content_type(text);
            self.process(text);
        }
    }

    /// Processes the carried soft-wrapped lines, with the line that ends them if it came.
    fn flush_carry(&mut self, last: Option<&[u8]>) {
        let mut joined = std::mem::take(&mut self.carry);
        let mut lines = std::mem::take(&mut self.carry_lines);
        if let Some(last) = last {
            joined.extend_from_slice(last);
            lines += 1;
        }
        if lines == 0 {
            return;
        }
        // Line numbers stay those of the input: the joined line spans all of its lines.
        self.line_no += lines - 1;
        self.process(&joined);
    }

    /// `Content-Type: text/plain; charset="UTF-8"; format=flowed` (parameters possibly on
    /// folded continuation lines) turns on [`Flowed`] for the rest of the input.
    fn note_content_type(&mut self, text: &[u8]) {
        if self.flowed != Flowed::Off {
            return;
        }
        let header = text.len() >= 13 && text[..13].eq_ignore_ascii_case(b"content-type:");
        let folded = self.in_content_type && matches!(text.first(), Some(b' ' | b'\t'));
        self.in_content_type = header || folded;
        if self.in_content_type && contains_ignore_case(text, b"format=flowed") {
            self.flowed = Flowed::On { delsp: contains_ignore_case(text, b"delsp=yes") };
        }
    }

    /// Finished reports so far, oldest first; they are not returned again.
    pub fn take_reports(&mut self) -> Vec<Report> {
        self.done.drain(..).collect()
    }

    /// Like [`Parser::take_reports`], but leaves the latest report while a following
    /// `Kernel panic` could still be folded into it (within a few lines of its end), so a
    /// caller that takes reports continuously gets the same reports as one [`Parser::finish`].
    pub fn take_settled(&mut self) -> Vec<Report> {
        let keep_last = self
            .last_finished
            .is_some_and(|(_, at)| self.line_no - at <= FOLD_WINDOW);
        let n = self.done.len().saturating_sub(usize::from(keep_last));
        self.done.drain(..n).collect()
    }

    /// True while a report is being collected (the console may want to drain longer).
    pub fn in_report(&self) -> bool {
        !self.active.is_empty()
    }

    /// Reports discarded because [`Limits::max_pending`] finished reports were not taken.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Lines and bytes seen so far.
    pub fn lines_seen(&self) -> u64 {
        self.line_no
    }

    pub fn bytes_seen(&self) -> u64 {
        self.bytes
    }

    /// Ends the stream: the unfinished last line is processed, open reports are finished,
    /// and every report not yet taken is returned in the order the reports started.
    pub fn finish(self) -> Vec<Report> {
        self.finish_with(None)
    }

    /// Like [`Parser::finish`], for a stream that was cut off rather than complete (a live
    /// console whose machine went away: with `panic=-1` a panic reboots before its
    /// `---[ end Kernel panic` line). Every report still open is returned marked corrupted,
    /// the way a truncated report is: `why` says what ended the stream.
    pub fn finish_cut(self, why: &str) -> Vec<Report> {
        self.finish_with(Some(why))
    }

    fn finish_with(mut self, cut: Option<&str>) -> Vec<Report> {
        if !self.partial.is_empty() {
            self.flush_partial();
        }
        self.flush_carry(None);
        while !self.active.is_empty() {
            if let Some(why) = cut {
                self.active[0].cut_off = Some(why.to_string());
            }
            self.finish_active(0);
        }
        let mut reports: Vec<Report> = self.done.into_iter().collect();
        reports.sort_by_key(|r| r.start_line);
        reports
    }

    fn process(&mut self, raw: &[u8]) {
        self.line_no += 1;
        let t = tables();
        // A line without a prefix in a prefixed log is user-space output printed in between
        // (syzkaller programs, shell echo); it stays out of kernel reports, which only take
        // lines of their own caller. Logs without any prefix are one Unknown context.
        let l = line::parse(raw);
        // printk replays a line that an interrupting message cut short; a report started
        // by the cut-off line ("INFO: t") is a fragment of the replayed one.
        if l.text.contains("** replaying previous printk message **") {
            let cut = self.line_no - 1;
            self.active.retain(|a| !(a.start_line == cut && a.lines.len() == 1));
            return;
        }
        let questionable = t.is_questionable(&l.text);
        let quotes_title = l.caller == Caller::Unknown && TITLE_QUOTES.iter().any(|q| l.text.starts_with(q));
        // syzbot's symbolizer expands a header line whose frame has inlined callees into one
        // line per inlined frame above it ("BUG: KASAN: … in foo drivers/x.c:12 [inline]"):
        // those belong to the report the real header line starts.
        let inline_frame = l.text.trim_end().ends_with("[inline]");
        let oops = if quotes_title || inline_frame { None } else { t.match_oops(&l.text) };
        let idx = self.active_for(l.caller);

        if let Some(oops) = oops {
            let ignorable = START_IGNORES.iter().any(|s| l.text.contains(s));
            match idx {
                Some(i) if ignorable => {
                    self.append(i, l.text, false);
                }
                Some(i) => {
                    self.active[i].cut_by_next = true;
                    self.finish_active(i);
                    self.start(oops, l.caller, l.timestamp, l.text);
                }
                None if ignorable && self.fold_into_last(l.caller, &l.text) => {}
                None => self.start(oops, l.caller, l.timestamp, l.text),
            }
        } else if let Some(i) = idx {
            self.append(i, l.text, questionable);
        } else {
            self.remember(l.caller, l.text, questionable);
        }
        self.expire_idle();
    }

    /// The open report a line of `caller` belongs to.
    fn active_for(&self, caller: Caller) -> Option<usize> {
        self.active
            .iter()
            .position(|a| a.caller == caller)
            .or_else(|| matches!(caller, Caller::Cpu(_)).then(|| self.active.iter().position(|a| a.cpu_traceback)).flatten())
    }

    fn remember(&mut self, caller: Caller, text: String, questionable: bool) {
        if self.ring.len() == self.limits.ring_lines {
            self.ring.pop_front();
        }
        self.ring.push_back(Recent { caller, text, questionable });
    }

    fn start(&mut self, oops: usize, caller: Caller, timestamp: Option<f64>, text: String) {
        if self.active.len() >= self.limits.max_active {
            // The oldest open report is the most likely to be complete already.
            let oldest = (0..self.active.len()).min_by_key(|&i| self.active[i].last_line).unwrap_or(0);
            self.finish_active(oldest);
        }
        let max_prefix = if matches!(caller, Caller::Task(_)) { TASK_PREFIX_LINES } else { PREFIX_LINES };
        let mut prefix: Vec<String> = self
            .ring
            .iter()
            .rev()
            .filter(|r| r.caller == caller && !r.questionable && !r.text.trim().is_empty())
            .take(max_prefix)
            .map(|r| r.text.clone())
            .collect();
        prefix.reverse();
        // What came before is this report's now: a later report of the same caller starts
        // after it. (Else each of a task's back-to-back KASAN reports carried the opening
        // `=====` lines of all those before it, 50 of them from the 51st on.)
        self.ring.retain(|r| r.caller != caller);
        let is_kasan = text.contains("BUG: KASAN:");
        self.active.push(Active {
            caller,
            oops,
            prefix,
            lines: vec![text],
            start_line: self.line_no,
            last_line: self.line_no,
            timestamp,
            cpu_traceback: false,
            skip_rest: false,
            panicked: false,
            truncated: false,
            cut_by_next: false,
            cut_off: None,
            is_kasan,
        });
    }

    fn append(&mut self, i: usize, text: String, questionable: bool) {
        let line_no = self.line_no;
        let a = &mut self.active[i];
        a.last_line = line_no;
        let end = is_end_marker(&text, a.is_kasan);
        if text.contains("Kernel panic - not syncing") {
            a.panicked = true;
        }
        if !(questionable || a.skip_rest || text.contains("Disabling lock debugging due to kernel taint")) {
            if text.contains("Sending NMI from CPU") {
                a.cpu_traceback = true;
            }
            let consequence = text.contains("Kernel panic - not syncing")
                || text.contains("WARNING: possible circular locking dependency detected");
            if consequence && a.lines.len() > MIN_REPORT_LINES {
                a.skip_rest = true;
            } else {
                a.lines.push(text);
            }
        }
        if a.lines.len() >= self.limits.max_report_lines {
            a.truncated = true;
            self.finish_active(i);
        } else if end {
            self.finish_active(i);
        }
    }

    /// Marks the report that just finished for `caller` as panicked if `text` (a panic or
    /// similar follow-up line) arrives right after it. Returns whether it was folded.
    fn fold_into_last(&mut self, caller: Caller, text: &str) -> bool {
        let Some((last_caller, at)) = self.last_finished else { return false };
        if last_caller != caller || self.line_no - at > FOLD_WINDOW {
            return false;
        }
        if text.contains("Kernel panic - not syncing") {
            if let Some(r) = self.done.back_mut() {
                r.panicked = true;
            }
        }
        true
    }

    fn expire_idle(&mut self) {
        let now = self.line_no;
        let idle = self.limits.idle_lines;
        while let Some(i) = self.active.iter().position(|a| now - a.last_line > idle) {
            self.finish_active(i);
        }
    }

    fn finish_active(&mut self, i: usize) {
        if i >= self.active.len() {
            return;
        }
        let a = self.active.remove(i);
        self.last_finished = Some((a.caller, self.line_no));
        let report = build_report(a);
        if self.done.len() >= self.limits.max_pending {
            self.dropped += 1;
            return;
        }
        self.done.push_back(report);
    }
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

fn is_end_marker(text: &str, is_kasan: bool) -> bool {
    let t = text.trim();
    (is_kasan && t.len() >= 40 && t.bytes().all(|b| b == b'='))
        || t.starts_with("---[ end trace")
        || t.starts_with("---[ end Kernel panic")
}

fn build_report(a: Active) -> Report {
    let body = a.lines.join("\n");
    let oops = &tables().oopses[a.oops];
    let desc = title::describe(&body, oops);
    let corrupted = if a.truncated {
        Some(format!("report truncated at {} lines", a.lines.len()))
    } else if let Some(why) = &a.cut_off {
        Some(format!(
            "report cut short: {why} before its end after {} lines",
            a.lines.len()
        ))
    } else if a.cut_by_next && !a.caller.is_precise() {
        // Without PRINTK_CALLER a second report in the middle usually means two CPUs
        // printed at once; say so, it tells the reader what to enable.
        desc.corrupted.map(|r| format!("{r} (cut short by another report; PRINTK_CALLER would separate them)"))
    } else {
        desc.corrupted
    };
    let mut text = String::with_capacity(body.len() + a.prefix.iter().map(|p| p.len() + 1).sum::<usize>() + 1);
    for p in &a.prefix {
        text.push_str(p);
        text.push('\n');
    }
    text.push_str(&body);
    text.push('\n');
    let crash_type = title::title_to_type(&desc.title);
    Report {
        title: desc.title,
        alt_titles: desc.alt_titles,
        crash_type,
        frame: desc.frame,
        corrupted,
        panicked: a.panicked,
        caller: a.caller.label(),
        start_line: a.start_line,
        end_line: a.last_line,
        timestamp: a.timestamp,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KASAN: &str = "\
[   30.000000][  T120] ==================================================================
[   30.000001][  T120] BUG: KASAN: slab-use-after-free in at24_read+0x1b/0x40
[   30.000002][  T120] Read of size 8 at addr ffff888003b1c400 by task cat/120
[   30.000003][  T120] Call Trace:
[   30.000004][  T120]  <TASK>
[   30.000005][  T120]  dump_stack_lvl+0x1/0x2
[   30.000006][  T120]  kasan_report+0x1/0x2
[   30.000007][  T120]  at24_read+0x1b/0x40
[   30.000008][  T120]  nvmem_reg_read+0x1/0x2
[   30.000009][  T120]  </TASK>
[   30.000010][  T120] ==================================================================
";

    #[test]
    fn kasan_title() {
        let reports = crate::parse(KASAN.as_bytes());
        assert_eq!(reports.len(), 1, "{reports:#?}");
        let r = &reports[0];
        assert_eq!(r.title, "KASAN: slab-use-after-free Read in at24_read");
        assert_eq!(r.alt_titles, vec!["bad-access in at24_read"]);
        assert_eq!(r.crash_type, crate::CrashType::KasanUseAfterFreeRead);
        assert_eq!(r.corrupted, None);
        assert_eq!(r.caller.as_deref(), Some("T120"));
        assert_eq!((r.start_line, r.end_line), (2, 11));
        assert!(r.text.starts_with("====="));
    }

    #[test]
    fn back_to_back_reports_of_one_task_each_keep_only_what_came_after_the_last() {
        let log = format!("[   29.000000][  T120] cat: reading /sys/bus/nvmem/devices/1-00500/nvmem\n{}", KASAN.repeat(3));
        let reports = crate::parse(log.as_bytes());
        assert_eq!(reports.len(), 3, "{reports:#?}");
        assert!(reports[0].text.starts_with("cat: reading"), "{}", reports[0].text);
        for r in &reports[1..] {
            assert!(r.text.starts_with("=====") && r.text.lines().nth(1).unwrap().starts_with("BUG: KASAN"), "{}", r.text);
        }
    }

    #[test]
    fn byte_at_a_time_equals_whole() {
        let mut p = Parser::new();
        for b in KASAN.as_bytes() {
            p.feed(std::slice::from_ref(b));
        }
        assert_eq!(p.finish(), crate::parse(KASAN.as_bytes()));
    }

    #[test]
    fn interleaved_callers_are_separated() {
        // Two reports printed at the same time by different tasks, line by line.
        let other = KASAN.replace("T120", "T7").replace("at24_read", "gpio_virtuser_irq_handler").replace("Read of", "Write of");
        let mut log = String::new();
        for (a, b) in KASAN.lines().zip(other.lines()) {
            log.push_str(a);
            log.push('\n');
            log.push_str(b);
            log.push('\n');
        }
        let reports = crate::parse(log.as_bytes());
        let titles: Vec<&str> = reports.iter().map(|r| r.title.as_str()).collect();
        assert_eq!(
            titles,
            ["KASAN: slab-use-after-free Read in at24_read", "KASAN: slab-use-after-free Write in gpio_virtuser_irq_handler"]
        );
        assert!(reports.iter().all(|r| r.corrupted.is_none()), "{reports:#?}");
    }

    #[test]
    fn trailing_panic_is_folded() {
        let log = format!("{KASAN}[   30.1][  T120] Kernel panic - not syncing: KASAN: panic_on_warn set ...\n");
        let reports = crate::parse(log.as_bytes());
        assert_eq!(reports.len(), 1);
        assert!(reports[0].panicked);
    }

    #[test]
    fn a_report_open_when_the_stream_is_cut_is_kept_and_marked() {
        // A panic with panic=-1: the machine resets before `---[ end Kernel panic`.
        let log = "[   40.0][  T55] Kernel panic - not syncing: hung_task: blocked tasks\n[   40.0][  T55] CPU: 0 PID: 55 Comm: khungtaskd\n[   40.0][  T55] Call Trace:\n[   40.0][  T55]  panic+0x1/0x2\n";
        let mut p = Parser::new();
        p.feed(log.as_bytes());
        assert!(p.take_reports().is_empty(), "still open");
        let reports = p.finish_cut("the console ended");
        assert_eq!(reports.len(), 1, "{reports:#?}");
        let why = reports[0].corrupted.as_deref().unwrap_or_default();
        assert!(
            why.starts_with("report cut short: the console ended before its end"),
            "{why}"
        );
        // A report that ended on its own is not touched.
        let mut p = Parser::new();
        p.feed(KASAN.as_bytes());
        assert_eq!(
            p.finish_cut("the console ended"),
            crate::parse(KASAN.as_bytes())
        );
    }

    const MAIL_REPORT: &str = "\
==================================================================
BUG: KASAN: slab-use-after-free in at24_translate_offset drivers/misc/eeprom/at24.c:384 [inline]
BUG: KASAN: slab-use-after-free in at24_read+0x4b3/0x4f0 drivers/misc/eeprom/at24.c:447
Read of size 8 at addr ffff888006a3d8c0 by task cat/230
Call Trace:
 <TASK>
 dump_stack_lvl+0x116/0x1f0 lib/dump_stack.c:120
 at24_read+0x4b3/0x4f0 drivers/misc/eeprom/at24.c:447
 </TASK>
==================================================================
";

    fn titles(log: &str) -> Vec<String> {
        crate::parse(log.as_bytes()).into_iter().map(|r| r.title).collect()
    }

    #[test]
    fn a_pasted_syzbot_mail_is_one_report() {
        let want = ["KASAN: slab-use-after-free Read in at24_read"];
        // The [inline] header line and the Subject naming the crash start no report.
        let mail = format!("Subject: [syzbot] BUG: unable to handle kernel paging request in at24_read\n\n{MAIL_REPORT}");
        assert_eq!(titles(&mail), want);
        // Quoted in a reply.
        let quoted: String = MAIL_REPORT.lines().map(|l| format!("> {l}\n")).collect();
        assert_eq!(titles(&quoted), want);
        // Soft-wrapped (format=flowed): the frame went to the next line.
        let flowed = format!(
            "Content-Type: text/plain; charset=\"UTF-8\"; format=flowed\n\n{}",
            MAIL_REPORT.replace("slab-use-after-free in at24_read+", "slab-use-after-free in \nat24_read+")
        );
        let reports = crate::parse(flowed.as_bytes());
        assert_eq!(reports.iter().map(|r| r.title.as_str()).collect::<Vec<_>>(), want);
        // Line numbers stay the input's: the report ends on the closing rule, line 13.
        assert_eq!(reports[0].end_line, 13);
    }

    #[test]
    fn trailing_spaces_join_lines_only_in_a_flowed_mail() {
        // Our 6.12 kernel ends "CPU: … Not tainted 6.12.117 #1 " with a space.
        let log = "BUG: KASAN: slab-use-after-free in at24_read+0x4b3/0x4f0\nRead of size 8 at addr ffff888006a3d8c0 by task cat/230\nCPU: 0 UID: 0 PID: 230 Comm: cat Not tainted 6.12.117 #1 \nCall Trace:\n at24_read+0x4b3/0x4f0\n";
        let reports = crate::parse(log.as_bytes());
        assert_eq!(reports.len(), 1);
        assert!(reports[0].text.contains("#1 \nCall Trace:"), "{}", reports[0].text);
    }

    #[test]
    fn bounded_on_endless_report() {
        let limits = Limits { max_report_lines: 50, max_pending: 4, ..Limits::default() };
        let mut p = Parser::with_limits(limits);
        p.feed(b"WARNING: CPU: 0 PID: 1 at drivers/x.c:1 f+0x1/0x2\n");
        for _ in 0..10_000 {
            p.feed(b" foo+0x1/0x2\nBUG: soft lockup - CPU#0 stuck for 22s!\n");
        }
        p.feed(&vec![b'x'; 1 << 20]);
        // An endless soft-wrapped mail line is cut like any long line.
        p.feed(b"Content-Type: text/plain; format=flowed\n");
        for _ in 0..100_000 {
            p.feed(b"soft ");
            p.feed(b"\n");
        }
        assert!(p.carry.len() <= limits.max_line_bytes);
        assert!(p.take_reports().len() <= 4);
        assert!(p.dropped() > 0);
        assert!(p.partial.len() <= limits.max_line_bytes);
        let rest = p.finish();
        assert!(rest.iter().all(|r| r.text.len() < 50 * 4200));
    }
}
