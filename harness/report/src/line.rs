//! One console line: cleaned of transport artefacts and split into printk prefix and text.
//!
//! Console logs arrive from serial ports, terminal captures and mail archives. Before any
//! pattern matching a raw line is made boring: invalid UTF-8 is replaced, ANSI escapes,
//! NULs and other control bytes are dropped, and a carriage-return overwrite keeps only
//! what a terminal would have shown. Then the printk prefix (`<4>[   12.345678][  T123] `)
//! is parsed so that lines of interleaved reports can be told apart by their caller
//! (`CONFIG_PRINTK_CALLER`: `T<pid>` for tasks, `C<cpu>` for interrupt context).

use std::sync::OnceLock;

use regex::Regex;

/// Who printed a line, as far as the console says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    /// No printk prefix at all (user-space output, mail-wrapped continuation, garbage).
    Unknown,
    /// A `[ts]` prefix without a caller field: the kernel lacks `CONFIG_PRINTK_CALLER`.
    Console,
    /// `[ T123]`: printed by task 123.
    Task(u32),
    /// `[ C1]`: printed from interrupt context on CPU 1.
    Cpu(u32),
}

impl Caller {
    /// The caller as printk shows it (`T123`, `C1`), if the line carried one.
    pub fn label(self) -> Option<String> {
        match self {
            Caller::Task(pid) => Some(format!("T{pid}")),
            Caller::Cpu(cpu) => Some(format!("C{cpu}")),
            Caller::Unknown | Caller::Console => None,
        }
    }

    /// True when the kernel told us who printed the line, so unrelated lines can be filtered.
    pub fn is_precise(self) -> bool {
        matches!(self, Caller::Task(_) | Caller::Cpu(_))
    }
}

/// A cleaned console line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Kernel timestamp in seconds, when the line had a printk prefix.
    pub timestamp: Option<f64>,
    pub caller: Caller,
    /// The text after the prefix (or the whole cleaned line when there was none).
    pub text: String,
}

/// The printk prefix, optionally preceded by a "messages dropped" note and the `<level>`
/// field. (A login prompt merged into the line is handled in [`parse`], off the hot path.)
fn prefix_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(?:\*\* \d+ printk messages dropped \*\* )?(?:<\d{1,2}>)?\[ *(\d{1,10}\.\d{1,9})\](?:\[ *([CT])(\d{1,10})\])? ?",
        )
        .expect("static regex")
    })
}

/// Removes terminal artefacts from raw console bytes and decodes them.
pub fn clean(raw: &[u8]) -> String {
    // Strip the line terminator's CRs, then honour an in-line CR like a terminal would: the
    // text after the last CR overwrote what came before (progress bars, `\r\r\n` consoles).
    let mut raw = raw;
    while let [rest @ .., b'\r' | b'\n'] = raw {
        raw = rest;
    }
    if let Some(pos) = raw.iter().rposition(|&b| b == b'\r') {
        if pos + 1 < raw.len() {
            raw = &raw[pos + 1..];
        }
    }
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => skip_escape(&mut chars),
            '\t' => out.push('\t'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Skips one ANSI escape sequence (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ST`, or a
/// two-byte `ESC x`). Bounded by the line, so a truncated sequence cannot eat more.
fn skip_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    match chars.next() {
        Some('[') => {
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
        Some(']') => {
            while let Some(c) = chars.next() {
                if c == '\u{07}' {
                    break;
                }
                if c == '\u{1b}' {
                    chars.next_if_eq(&'\\');
                    break;
                }
            }
        }
        _ => {}
    }
}

/// Strips the `<host seconds>|` column the harness's `console.log` puts before each line
/// (`    2.041234|[    1.873401][    T1] …`), so our own logs parse like raw consoles.
fn strip_host_time(raw: &[u8]) -> &[u8] {
    let Some(bar) = raw.iter().take(24).position(|&b| b == b'|') else { return raw };
    let stamp = &raw[..bar];
    let digits = stamp.iter().filter(|b| b.is_ascii_digit()).count();
    let valid = digits > 0 && stamp.iter().all(|&b| b.is_ascii_digit() || b == b' ' || b == b'.');
    if valid {
        &raw[bar + 1..]
    } else {
        raw
    }
}

/// Strips mail quoting (`> `, `>> `, `> > `) from the start of a raw line, so a report quoted
/// in a reply parses like the original. A `>` is a quote marker only when a space, another
/// `>` or the end of the line follows: KASAN's shadow dump marks the buggy row with a bare
/// `>ffff888003b1c400: fa fb`, which stays.
pub fn strip_mail_quote(raw: &[u8]) -> &[u8] {
    let mut rest = raw;
    while let [b'>', after @ ..] = rest {
        match after {
            [b' ', tail @ ..] => rest = tail,
            [b'>', ..] | [] | [b'\r' | b'\n', ..] => rest = after,
            _ => break,
        }
    }
    rest
}

/// Cleans a raw console line and parses its printk prefix.
pub fn parse(raw: &[u8]) -> Line {
    let cleaned = clean(strip_host_time(raw));
    let mut start = 0;
    let mut caps = prefix_re().captures(&cleaned);
    if caps.is_none() {
        // A getty prompt the kernel line was printed into: "syzkaller login: [ 1.2] ...".
        if let Some(pos) = cleaned.find(" login: ") {
            start = pos + " login: ".len();
            caps = prefix_re().captures(&cleaned[start..]);
        }
    }
    let Some(caps) = caps else {
        return Line { timestamp: None, caller: Caller::Unknown, text: cleaned };
    };
    let timestamp = caps.get(1).and_then(|m| m.as_str().parse::<f64>().ok());
    let caller = match (caps.get(2).map(|m| m.as_str()), caps.get(3).and_then(|m| m.as_str().parse().ok())) {
        (Some("T"), Some(n)) => Caller::Task(n),
        (Some("C"), Some(n)) => Caller::Cpu(n),
        _ => Caller::Console,
    };
    let end = start + caps.get(0).map_or(0, |m| m.end());
    Line { timestamp, caller, text: cleaned[end..].to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_caller_prefixes() {
        let l = parse(b"[  501.875843][ T9186] BUG: KASAN: use-after-free in foo+0x1/0x2\r\n");
        assert_eq!(l.caller, Caller::Task(9186));
        assert_eq!(l.timestamp, Some(501.875843));
        assert_eq!(l.text, "BUG: KASAN: use-after-free in foo+0x1/0x2");
        let l = parse(b"<4>[   12.5][    C1] rcu: INFO");
        assert_eq!(l.caller, Caller::Cpu(1));
        assert_eq!(l.text, "rcu: INFO");
        let l = parse(b"[  284.144921] INFO: task x");
        assert_eq!(l.caller, Caller::Console);
        let l = parse(b"    2.041234|[    1.873401][    T1] Run /init as init process");
        assert_eq!((l.caller, l.text.as_str()), (Caller::Task(1), "Run /init as init process"));
        let l = parse(b"syzkaller login: [   10.1][  T9] BUG: x");
        assert_eq!((l.caller, l.text.as_str()), (Caller::Task(9), "BUG: x"));
        let l = parse(b" dump_stack+0x1/0x2");
        assert_eq!(l.caller, Caller::Unknown);
        assert_eq!(l.text, " dump_stack+0x1/0x2");
    }

    #[test]
    fn mail_quotes_are_stripped_kasan_row_markers_are_not() {
        assert_eq!(strip_mail_quote(b"> BUG: KASAN: x"), b"BUG: KASAN: x");
        assert_eq!(strip_mail_quote(b">> > Call Trace:"), b"Call Trace:");
        assert_eq!(strip_mail_quote(b">"), b"");
        assert_eq!(strip_mail_quote(b">ffff888003b1c400: fa fb"), b">ffff888003b1c400: fa fb");
        assert_eq!(strip_mail_quote(b"> >ffff888003b1c400: fa fb"), b">ffff888003b1c400: fa fb");
        assert_eq!(strip_mail_quote(b" > not a quote"), b" > not a quote");
    }

    #[test]
    fn cleans_terminal_artefacts() {
        assert_eq!(clean(b"\x1b[0;31mred\x1b[0m text\r\r"), "red text");
        assert_eq!(clean(b"progress 10%\rprogress 100%"), "progress 100%");
        assert_eq!(clean(b"a\x00b\xffc"), "ab\u{fffd}c");
        assert_eq!(clean(b"\x1b]0;title\x07after"), "after");
        assert_eq!(clean(b"trailing escape \x1b["), "trailing escape ");
    }
}
