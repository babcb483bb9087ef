//! Streaming Linux console parser: finds KASAN, BUG/Oops, WARNING, lockdep, refcount,
//! hung-task, RCU stall, lockup and panic reports in console output and gives each a
//! syzkaller-compatible title (`KASAN: slab-use-after-free Read in at24_read`), alternate
//! titles for deduplication, a crash type and a corruption verdict.
//!
//! ```
//! let mut parser = report::Parser::new();
//! parser.feed(b"[   12.3][  T42] BUG: KASAN: slab-use-after-free in at24_read+0x1b/0x40\n");
//! parser.feed(b"[   12.3][  T42] Read of size 8 at addr ffff888003b1c400 by task cat/42\n");
//! // ... the rest of the report as it arrives ...
//! for report in parser.finish() {
//!     println!("{} ({})", report.title, report.crash_type);
//! }
//! ```
//!
//! The crate is pure (no I/O except the symbolizer and MAINTAINERS reader, which read the
//! files they are given) so the same code serves the live console, `cargo xtask report
//! parse` on a log from a syzbot mail, the golden tests and the fuzzer.
//!
//! ## Agreement with syzkaller, and where we knowingly differ
//!
//! Measured on syzkaller's own corpus (`pkg/report/testdata/linux/report/`, the first title
//! of `cargo xtask report parse FILE` against the file's `TITLE:`), 734 of 747 agree. The
//! rest differ on purpose or are out of scope:
//!
//! - Logs interleaved without `CONFIG_PRINTK_CALLER` (syzkaller corpus 115, 206, 208, 218,
//!   230, 231): syzkaller gives up on the frame (`... in corrupted`, or no frame) where we
//!   still find one in the lines of the report. We keep the frame (usually the right one)
//!   and, where we can tell, say the report is corrupted.
//! - A report whose own caller starts another report before it printed its stack
//!   (corpus 502: a WARNING inside an RCU stall dump; 655, 657: a paging fault inside a
//!   lockdep splat): we end the first report at the second header, so it has no frame;
//!   syzkaller reads on through the second report and takes a frame from it. Ending there
//!   is what keeps concurrent reports apart; the second report is filed with its own title.
//! - Android Trusty TEE messages (`trusty: ASSERT FAILED`, corpus 353-356): not a kernel
//!   we run; they are filed as the WARNING the kernel prints after them.
//!
//! Rust panics are titled like syzkaller (`attempt to subtract with overflow in
//! <rust_binder::process::Process>::update_ref`: the message, in the first frame below
//! `core::panicking`, demangled without crate hashes), as are syzkaller's own failures
//! (`SYZFAIL:`, `SYZFATAL:`, `go runtime error`), for logs of syzkaller runs.
//!
//! Modules: [`line`] cleans raw lines and splits off the printk prefix, `formats` holds
//! the title tables, `title` interprets them, [`parser`] is the streaming state machine,
//! [`symbolize`] resolves frames to `file:line` with `addr2line`, [`maintainers`] reads the
//! kernel's MAINTAINERS, [`taint`] decodes `/proc/sys/kernel/tainted`.

pub mod bugs;
pub mod collect;
mod formats;
pub mod line;
pub mod maintainers;
pub mod parser;
pub mod symbolize;
pub mod synthetic;
pub mod taint;
mod title;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use collect::{parse_collected, Collected, Counted};
pub use parser::{Limits, Parser};
pub use taint::Taint;
pub use title::{normalize as normalize_title, sanitize as sanitize_title, title_to_type};

/// Parses a complete log in one go: every report, in the order the reports started.
/// Settled reports are taken line by line, so none is lost to the parser's pending limit
/// (memory grows with the log the caller already holds; for endless streams use a
/// [`Parser`] or [`parse_collected`]).
pub fn parse(log: &[u8]) -> Vec<Report> {
    let mut parser = Parser::new();
    let mut reports = Vec::new();
    for chunk in log.split_inclusive(|&b| b == b'\n') {
        parser.feed(chunk);
        reports.extend(parser.take_settled());
    }
    reports.extend(parser.finish());
    reports.sort_by_key(|r| r.start_line);
    reports
}

/// Splits a report file into its expectation header and its console text.
///
/// syzkaller's test corpus and our golden corpus (`harness/report/tests/data`) share a file
/// format: a header of `KEY: value` lines (`TITLE:`, `ALT:`, `TYPE:`, `CORRUPTED:`, `START:`
/// …) and `#` comments, a blank line, then the console bytes. The header quotes the expected
/// titles and report lines (`TITLE: BUG: soft lockup in foo`), so parsed as console text it
/// would start reports of its own; `report parse` and the golden test parse only the rest.
/// A leading block counts as a header only when every line is a comment or a `KEY:` line
/// and it has a `TITLE:` line or only comments; otherwise the whole input is console text.
pub fn split_expectations(data: &[u8]) -> (&[u8], &[u8]) {
    let Some(end) = data.windows(2).position(|w| w == b"\n\n") else { return (&[], data) };
    let head = &data[..end];
    let is_key = |l: &[u8]| {
        let colon = l.iter().position(|&b| b == b':').unwrap_or(0);
        colon > 0 && l[..colon].iter().all(|&b| b.is_ascii_uppercase() || b == b'_')
    };
    let mut title = false;
    let mut comments_only = true;
    for l in head.split(|&b| b == b'\n') {
        match l {
            [b'#', ..] => {}
            l if is_key(l) => {
                comments_only = false;
                title |= l.starts_with(b"TITLE:");
            }
            _ => return (&[], data),
        }
    }
    if title || comments_only {
        (&data[..end + 1], &data[end + 2..])
    } else {
        (&[], data)
    }
}

/// One crash report found in the console (or synthesised by the harness).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// syzkaller-compatible, normalised title: the bug's identity.
    pub title: String,
    /// Other titles the same bug may be reported under (`bad-access in X`, raw frames).
    pub alt_titles: Vec<String>,
    pub crash_type: CrashType,
    /// The function the title names, if any.
    pub frame: Option<String>,
    /// Why the report cannot be trusted to name the bug (interleaved, truncated, no frames).
    pub corrupted: Option<String>,
    /// A `Kernel panic - not syncing` followed the report.
    pub panicked: bool,
    /// Caller (`T123`/`C1`) that printed the report, when the kernel has `PRINTK_CALLER`.
    pub caller: Option<String>,
    /// 1-based line numbers in the console stream of the first and last line of the report.
    pub start_line: u64,
    pub end_line: u64,
    /// Kernel timestamp (seconds) of the first line, when printed.
    pub timestamp: Option<f64>,
    /// The report's lines without printk prefixes: up to a few preceding lines of the same
    /// caller, then the report itself.
    pub text: String,
}

impl Report {
    pub fn is_corrupted(&self) -> bool {
        self.corrupted.is_some()
    }

    /// All titles this report is known by: the title first, then the alternates.
    pub fn titles(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.title.as_str()).chain(self.alt_titles.iter().map(String::as_str))
    }

    /// Two reports are the same bug when their title sets intersect (syzkaller's rule).
    pub fn same_bug(&self, other: &Report) -> bool {
        self.titles().any(|a| other.titles().any(|b| a == b))
    }
}

/// Crash categories, spelled like syzkaller's `crash.Type` plus the harness's own verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CrashType {
    #[serde(rename = "KASAN-USE-AFTER-FREE-READ")]
    KasanUseAfterFreeRead,
    #[serde(rename = "KASAN-USE-AFTER-FREE-WRITE")]
    KasanUseAfterFreeWrite,
    #[serde(rename = "KASAN-READ")]
    KasanRead,
    #[serde(rename = "KASAN-WRITE")]
    KasanWrite,
    #[serde(rename = "KASAN-INVALID-FREE")]
    KasanInvalidFree,
    #[serde(rename = "KASAN-NULL-POINTER-DEREFERENCE-READ")]
    KasanNullPtrDerefRead,
    #[serde(rename = "KASAN-NULL-POINTER-DEREFERENCE-WRITE")]
    KasanNullPtrDerefWrite,
    #[serde(rename = "KASAN-UNKNOWN")]
    KasanUnknown,
    #[serde(rename = "KFENCE-USE-AFTER-FREE-READ")]
    KfenceUseAfterFreeRead,
    #[serde(rename = "KFENCE-USE-AFTER-FREE-WRITE")]
    KfenceUseAfterFreeWrite,
    #[serde(rename = "KFENCE-READ")]
    KfenceRead,
    #[serde(rename = "KFENCE-WRITE")]
    KfenceWrite,
    #[serde(rename = "KFENCE-MEMORY-CORRUPTION")]
    KfenceMemoryCorruption,
    #[serde(rename = "KFENCE-INVALID-FREE")]
    KfenceInvalidFree,
    #[serde(rename = "KFENCE-UNKNOWN")]
    KfenceUnknown,
    #[serde(rename = "KMSAN-UNINIT-VALUE")]
    KmsanUninitValue,
    #[serde(rename = "KMSAN-INFO-LEAK")]
    KmsanInfoLeak,
    #[serde(rename = "KMSAN-USE-AFTER-FREE-READ")]
    KmsanUseAfterFreeRead,
    #[serde(rename = "KMSAN-UNKNOWN")]
    KmsanUnknown,
    #[serde(rename = "KCSAN-DATARACE")]
    KcsanDataRace,
    #[serde(rename = "KCSAN-UNKNOWN")]
    KcsanUnknown,
    #[serde(rename = "NULL-POINTER-DEREFERENCE")]
    NullPtrDeref,
    #[serde(rename = "MEMORY_SAFETY_BUG")]
    MemorySafetyBug,
    #[serde(rename = "MEMORY_SAFETY_UBSAN")]
    MemorySafetyUbsan,
    #[serde(rename = "UBSAN")]
    Ubsan,
    #[serde(rename = "REFCOUNT_WARNING")]
    RefcountWarning,
    #[serde(rename = "WARNING")]
    Warning,
    #[serde(rename = "LOCKDEP")]
    Lockdep,
    #[serde(rename = "ATOMIC_SLEEP")]
    AtomicSleep,
    #[serde(rename = "HANG")]
    Hang,
    #[serde(rename = "LEAK")]
    MemoryLeak,
    #[serde(rename = "BUG")]
    Bug,
    #[serde(rename = "DoS")]
    DoS,
    #[serde(rename = "NO_OUTPUT")]
    NoOutput,
    #[serde(rename = "LOST_CONNECTION")]
    LostConnection,
    #[serde(rename = "AGENT_UNRESPONSIVE")]
    AgentUnresponsive,
    #[serde(rename = "UNPLUG_STUCK")]
    UnplugStuck,
    /// A read that succeeded returned bytes the device never held (`synthetic::data_mismatch`).
    #[serde(rename = "DATA_MISMATCH")]
    DataMismatch,
    /// syzkaller itself failed (`SYZFAIL:`, `SYZFATAL:`), not the kernel.
    #[serde(rename = "SYZ_FAILURE")]
    SyzFailure,
    #[serde(rename = "UNKNOWN")]
    Unknown,
}

impl CrashType {
    /// The spelling used in golden files, JSON and results (`KASAN-USE-AFTER-FREE-READ`).
    pub fn as_str(self) -> &'static str {
        use CrashType::*;
        match self {
            KasanUseAfterFreeRead => "KASAN-USE-AFTER-FREE-READ",
            KasanUseAfterFreeWrite => "KASAN-USE-AFTER-FREE-WRITE",
            KasanRead => "KASAN-READ",
            KasanWrite => "KASAN-WRITE",
            KasanInvalidFree => "KASAN-INVALID-FREE",
            KasanNullPtrDerefRead => "KASAN-NULL-POINTER-DEREFERENCE-READ",
            KasanNullPtrDerefWrite => "KASAN-NULL-POINTER-DEREFERENCE-WRITE",
            KasanUnknown => "KASAN-UNKNOWN",
            KfenceUseAfterFreeRead => "KFENCE-USE-AFTER-FREE-READ",
            KfenceUseAfterFreeWrite => "KFENCE-USE-AFTER-FREE-WRITE",
            KfenceRead => "KFENCE-READ",
            KfenceWrite => "KFENCE-WRITE",
            KfenceMemoryCorruption => "KFENCE-MEMORY-CORRUPTION",
            KfenceInvalidFree => "KFENCE-INVALID-FREE",
            KfenceUnknown => "KFENCE-UNKNOWN",
            KmsanUninitValue => "KMSAN-UNINIT-VALUE",
            KmsanInfoLeak => "KMSAN-INFO-LEAK",
            KmsanUseAfterFreeRead => "KMSAN-USE-AFTER-FREE-READ",
            KmsanUnknown => "KMSAN-UNKNOWN",
            KcsanDataRace => "KCSAN-DATARACE",
            KcsanUnknown => "KCSAN-UNKNOWN",
            NullPtrDeref => "NULL-POINTER-DEREFERENCE",
            MemorySafetyBug => "MEMORY_SAFETY_BUG",
            MemorySafetyUbsan => "MEMORY_SAFETY_UBSAN",
            Ubsan => "UBSAN",
            RefcountWarning => "REFCOUNT_WARNING",
            Warning => "WARNING",
            Lockdep => "LOCKDEP",
            AtomicSleep => "ATOMIC_SLEEP",
            Hang => "HANG",
            MemoryLeak => "LEAK",
            Bug => "BUG",
            DoS => "DoS",
            NoOutput => "NO_OUTPUT",
            LostConnection => "LOST_CONNECTION",
            AgentUnresponsive => "AGENT_UNRESPONSIVE",
            UnplugStuck => "UNPLUG_STUCK",
            DataMismatch => "DATA_MISMATCH",
            SyzFailure => "SYZ_FAILURE",
            Unknown => "UNKNOWN",
        }
    }

    /// Verdicts the harness produces itself rather than finding in the console.
    pub fn is_synthetic(self) -> bool {
        matches!(
            self,
            CrashType::NoOutput
                | CrashType::LostConnection
                | CrashType::AgentUnresponsive
                | CrashType::UnplugStuck
                | CrashType::DataMismatch
        )
    }
}

impl fmt::Display for CrashType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CrashType {
    type Err = UnknownCrashType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| UnknownCrashType(s.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown crash type {0:?}")]
pub struct UnknownCrashType(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_file_headers_are_split_off_console_text_is_not() {
        let file = b"# from a run\nTITLE: BUG: soft lockup in foo\nTYPE: HANG\n\n[ 1.0] BUG: soft lockup - CPU#0 stuck for 22s!\n";
        let (head, console) = split_expectations(file);
        assert_eq!(head, b"# from a run\nTITLE: BUG: soft lockup in foo\nTYPE: HANG\n");
        assert_eq!(console, b"[ 1.0] BUG: soft lockup - CPU#0 stuck for 22s!\n");
        // Register dumps look like `KEY:` lines but name no title: console text.
        let regs = b"RIP: 0010:foo+0x1/0x2\nRSP: 0018:ffffc900\n\nCall Trace:\n";
        assert_eq!(split_expectations(regs), (&b""[..], &regs[..]));
        let plain = b"[ 1.0] hello\n\n[ 2.0] BUG: x\n";
        assert_eq!(split_expectations(plain), (&b""[..], &plain[..]));
        // syzkaller's "expects no report" files start with the blank line.
        let empty = b"\n[ 1.0] ODEBUG: Out of memory\n";
        assert_eq!(split_expectations(empty).1, &empty[..]);
    }
}
