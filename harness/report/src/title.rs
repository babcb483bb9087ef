//! Turns the text of one report into a title, alternate titles, a guilty frame, a crash type
//! and a corruption verdict, by interpreting the tables in `formats.rs`.
//!
//! All regexes are compiled once per process ([`tables`]); the `regex` crate guarantees
//! linear-time matching, so hostile console text cannot make a lazy `(?:.*\n)+?` explode.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};

use crate::formats::{self, Extractor, FormatSpec, OopsSpec, Part};
use crate::CrashType;

/// Longest title we emit; a merged or garbage header line can be arbitrarily long.
const MAX_TITLE_LEN: usize = 120;

pub(crate) struct Tables {
    pub oopses: Vec<Oops>,
    /// All headers as one literal set: one pass over a line instead of one per header.
    headers: RegexSet,
    pub stack_start: RegexSet,
    frame: Vec<Regex>,
    corrupted_frame: Regex,
    stall_anchor: Regex,
    timestamp_in_title: Regex,
    questionable: Regex,
}

pub(crate) struct Oops {
    pub spec: &'static OopsSpec,
    formats: Vec<Format>,
    suppressions: Option<RegexSet>,
}

struct Format {
    spec: &'static FormatSpec,
    title: Regex,
    report: Option<Regex>,
    stack: Option<Stack>,
}

struct Stack {
    parts: Vec<CPart>,
    parts2: Vec<CPart>,
    skip: Regex,
    extractor: Extractor,
}

enum CPart {
    Line(Regex),
    Trace,
}

/// Expands the `{{…}}` templates documented in `formats.rs`.
fn expand(re: &str) -> String {
    re.replace("{{ADDR}}", "0x[0-9a-f]+")
        .replace("{{PC}}", r"\[<?(?:0x)?[0-9a-f]+>?\]")
        .replace("{{FUNC}}", r"([a-zA-Z0-9_]+)(?:\.|\+)")
        .replace("{{SRC}}", r"([a-zA-Z0-9\-_/.]+\.[a-z]+:[0-9]+)")
        .replace("{{TASK}}", r"[\s\S]{0,100}?")
}

fn compile(re: &str) -> Regex {
    // The table is static data; a pattern that does not compile is a bug caught by the
    // `tables_compile` unit test, never by input.
    Regex::new(&expand(re)).unwrap_or_else(|e| panic!("bad pattern {re:?}: {e}"))
}

fn compile_parts(parts: &[Part]) -> Vec<CPart> {
    parts
        .iter()
        .map(|p| match p {
            Part::Line(re) => CPart::Line(compile(re)),
            Part::Trace => CPart::Trace,
        })
        .collect()
}

pub(crate) fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let oopses = formats::OOPSES
            .iter()
            .map(|spec| Oops {
                spec,
                suppressions: (!spec.suppressions.is_empty())
                    .then(|| RegexSet::new(spec.suppressions.iter().map(|s| expand(s))).expect("static suppressions")),
                formats: spec
                    .formats
                    .iter()
                    .map(|f| Format {
                        spec: f,
                        title: compile(f.title),
                        report: f.report.map(compile),
                        stack: f.stack.map(|s| Stack {
                            parts: compile_parts(s.parts),
                            parts2: compile_parts(s.parts2),
                            skip: compile(&formats::SKIP.iter().chain(s.skip).copied().collect::<Vec<_>>().join("|")),
                            extractor: s.extractor,
                        }),
                    })
                    .collect(),
            })
            .collect();
        Tables {
            headers: RegexSet::new(formats::OOPSES.iter().map(|o| regex::escape(o.header))).expect("static headers"),
            oopses,
            stack_start: RegexSet::new(formats::STACK_START).expect("static stack starts"),
            frame: formats::FRAME.iter().map(|f| compile(f)).collect(),
            corrupted_frame: compile(formats::CORRUPTED_FRAME),
            stall_anchor: compile(&formats::STALL_ANCHORS.join("|")),
            timestamp_in_title: compile(r"\[ *[0-9]+\.[0-9]+\]"),
            questionable: compile(r"^\s*(?:\[<[0-9a-f]+>\])?\s*\? "),
        }
    })
}

impl Tables {
    /// Index into [`Tables::oopses`] of the report kind this line starts, if any.
    pub fn match_oops(&self, line: &str) -> Option<usize> {
        self.headers
            .matches(line)
            .into_iter()
            .find(|&i| !self.oopses[i].suppressions.as_ref().is_some_and(|s| s.is_match(line)))
    }

    /// ` ? func+0x…` (x86) or `… func+0x…/0x… (unreliable)` (powerpc): a frame the unwinder
    /// found on the stack by scanning, not by following frame links.
    pub fn is_questionable(&self, line: &str) -> bool {
        !line.contains("<EOI>")
            && ((line.contains("? ") && self.questionable.is_match(line)) || line.ends_with(" (unreliable)"))
    }

    fn frame_names<'a>(&self, line: &'a str) -> Option<regex::Captures<'a>> {
        self.frame.iter().find_map(|re| re.captures(line))
    }

    fn is_frame(&self, line: &str) -> bool {
        self.frame.iter().any(|re| re.is_match(line))
    }
}

/// What [`describe`] concluded about one report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Description {
    pub title: String,
    pub alt_titles: Vec<String>,
    pub frame: Option<String>,
    pub corrupted: Option<String>,
}

const NO_FRAMES: &str = "extracted no frames";

/// Titles the report `text`, which starts at the line that matched `oops`.
pub(crate) fn describe(text: &str, oops: &Oops) -> Description {
    let t = tables();
    let mut first_pos = usize::MAX;
    for f in &oops.formats {
        if let Some(m) = f.title.find(text) {
            first_pos = first_pos.min(m.start());
        }
    }
    let mut matched_title = false;
    for f in &oops.formats {
        if f.title.find(text).map(|m| m.start()) != Some(first_pos) {
            continue;
        }
        matched_title = true;
        let caps = match &f.report {
            Some(report) => match report.captures(text) {
                Some(c) => c,
                None => continue,
            },
            None => match f.title.captures(text) {
                Some(c) => c,
                None => continue,
            },
        };
        let start = caps.get(0).map_or(0, |m| m.start());
        let mut args: Vec<String> =
            caps.iter().skip(1).map(|m| m.map_or(String::new(), |m| m.as_str().to_string())).collect();
        let mut corrupted = None;
        let mut frame = None;
        let mut raw_frame = None;
        if let Some(stack) = &f.stack {
            match extract_frame(t, stack, &text[start..]) {
                (Some((canonical, raw)), fault_injection) => {
                    frame = Some(canonical);
                    raw_frame = Some(raw);
                    if fault_injection {
                        corrupted = Some("fault injection stack mixed into the report".to_string());
                    }
                }
                (None, _) => {
                    corrupted = Some(NO_FRAMES.to_string());
                    frame = Some("corrupted".to_string());
                }
            }
        }
        let n = args.len();
        args.extend(frame.clone());
        let title = format_title(f.spec.fmt, &args);
        let mut alts: Vec<String> = f.spec.alt.iter().map(|a| format_title(a, &args)).collect();
        // The raw frame and its partially stripped spellings also name this bug: keep them
        // as alternates so that the same crash via `__x64_sys_foo` and `sys_foo` dedups.
        if let (Some(raw), Some(canonical)) = (&raw_frame, &frame) {
            let mut variants = vec![raw.clone()];
            variants.extend(formats::STRIP_FRAME_PREFIXES.iter().filter_map(|p| raw.strip_prefix(p)).map(str::to_string));
            for v in variants.into_iter().filter(|v| v != canonical) {
                args.truncate(n);
                args.push(v);
                alts.push(format_title(f.spec.fmt, &args));
                alts.extend(f.spec.alt.iter().map(|a| format_title(a, &args)));
            }
        }
        if corrupted.is_none() && f.spec.corrupted {
            corrupted = Some("report format is marked as corrupted".to_string());
        }
        let title = sanitize(&normalize(&title));
        let mut alt_titles: Vec<String> = Vec::new();
        for a in alts {
            let a = sanitize(&normalize(&a));
            if a != title && !alt_titles.contains(&a) {
                alt_titles.push(a);
            }
        }
        let corrupted = corrupted.or_else(|| check_corrupted(t, &title, text, f.spec));
        return Description { title, alt_titles, frame, corrupted };
    }
    // Fall back to the header line itself.
    let line = text.lines().next().unwrap_or("");
    let header = line.find(oops.spec.header).map_or(line, |p| &line[p..]);
    let title = sanitize(&normalize(header));
    let corrupted = if matched_title {
        Some("matched title but not report regexp".to_string())
    } else {
        check_title_merge(t, &title)
    };
    Description { title, alt_titles: Vec::new(), frame: None, corrupted }
}

fn format_title(fmt: &str, args: &[String]) -> String {
    let mut out = String::with_capacity(fmt.len() + 32);
    let mut rest = fmt;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').and_then(|close| after[..close].parse::<usize>().ok().map(|n| (n, close))) {
            Some((n, close)) => {
                out.push_str(args.get(n.wrapping_sub(1)).map_or("", String::as_str));
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Walks the stack parts over the report's lines; returns the guilty frame (canonical, raw)
/// and whether a fault-injection frame was seen on the way.
fn extract_frame(t: &Tables, stack: &Stack, text: &str) -> (Option<(String, String)>, bool) {
    let (frame, fi) = walk_parts(t, stack, &stack.parts, text);
    if (frame.is_some() && !fi) || stack.parts2.is_empty() {
        return (frame, fi);
    }
    let (frame, fi2) = walk_parts(t, stack, &stack.parts2, text);
    (frame, fi || fi2)
}

fn walk_parts(t: &Tables, stack: &Stack, parts: &[CPart], text: &str) -> (Option<(String, String)>, bool) {
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let mut raw: Vec<String> = Vec::new();
    let mut fault_injection = false;
    let push = |raw: &mut Vec<String>, caps: &regex::Captures<'_>| {
        for m in caps.iter().skip(1).flatten() {
            if !stack.skip.is_match(m.as_str()) {
                raw.push(m.as_str().to_string());
            }
        }
    };
    let mut pi = 0;
    'parts: while pi < parts.len() {
        match &parts[pi] {
            CPart::Line(re) => {
                while i < lines.len() {
                    let line = lines[i];
                    i += 1;
                    if t.corrupted_frame.is_match(line) {
                        fault_injection = true;
                        pi += 1;
                        continue 'parts;
                    }
                    if let Some(caps) = re.captures(line) {
                        push(&mut raw, &caps);
                        break;
                    }
                }
            }
            CPart::Trace => {
                while i < lines.len() {
                    let line = lines[i];
                    i += 1;
                    if t.corrupted_frame.is_match(line) {
                        fault_injection = true;
                        pi += 1;
                        continue 'parts;
                    }
                    if t.stack_start.is_match(line) {
                        break;
                    }
                    // A line of the next part ends the trace early (e.g. the second stack of
                    // KMSAN's "Uninit was created at:").
                    if let Some(CPart::Line(next)) = parts.get(pi + 1) {
                        if let Some(caps) = next.captures(line) {
                            push(&mut raw, &caps);
                            pi += 2;
                            continue 'parts;
                        }
                    }
                    if let Some(caps) = t.frame_names(line) {
                        push(&mut raw, &caps);
                    }
                }
            }
        }
        pi += 1;
    }
    let canonical: Vec<String> = raw.iter().map(|f| strip_frame(f)).collect();
    let pick = match stack.extractor {
        Extractor::First => (!canonical.is_empty()).then(|| (0, canonical[0].clone())),
        Extractor::Stall => stall_frame(t, &canonical),
        Extractor::Hang => hang_frame(&canonical),
    };
    (pick.and_then(|(i, name)| Some((name, raw.get(i)?.clone()))), fault_injection)
}

/// `__x64_sys_ioctl` → `ioctl`: the shortest spelling after removing one wrapper prefix.
fn strip_frame(frame: &str) -> String {
    let stripped = formats::STRIP_FRAME_PREFIXES
        .iter()
        .filter_map(|p| frame.strip_prefix(p))
        .min_by_key(|s| s.len())
        .unwrap_or(frame);
    demangle(stripped)
}

/// Names a mangled frame as its language does. Rust-for-Linux functions appear in kallsyms
/// v0-mangled (`_RNvMNtCs…_6kernel5error…`): `<kernel::error::Error>::name`, without the
/// crate hashes. C++ (Itanium) names, which syzkaller demangles without parameters too:
/// `_Z8fakeNameiii` is `fakeName`, `_ZN2ns3fooEv` is `ns::foo`; only plain and nested
/// names, the rest stays mangled. C names (and anything that does not demangle) are left
/// alone.
fn demangle(frame: &str) -> String {
    if frame.starts_with("_R") {
        if let Ok(d) = rustc_demangle::try_demangle(frame) {
            return format!("{d:#}");
        }
    } else if let Some(name) = frame.strip_prefix("_Z").and_then(demangle_itanium_name) {
        return name;
    }
    frame.to_string()
}

/// The name part of an Itanium-mangled symbol (after `_Z`): `<len><id>` or
/// `N<len><id>…E`, whatever parameter types follow.
fn demangle_itanium_name(mangled: &str) -> Option<String> {
    let (nested, mut rest) = match mangled.strip_prefix('N') {
        Some(rest) => (true, rest),
        None => (false, mangled),
    };
    let mut parts = Vec::new();
    loop {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let len: usize = rest[..digits].parse().ok()?;
        let id = rest.get(digits..digits + len)?;
        if len == 0 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        parts.push(id);
        rest = &rest[digits + len..];
        if !nested {
            break;
        }
        // The parameter types after the closing `E` are dropped.
        if rest.starts_with('E') {
            break;
        }
    }
    Some(parts.join("::"))
}

/// The frame just above the first generic dispatcher (see [`formats::STALL_ANCHORS`]).
fn stall_frame(t: &Tables, frames: &[String]) -> Option<(usize, String)> {
    let mut prev = (0, frames.first()?.clone());
    for (i, frame) in frames.iter().enumerate() {
        if t.stall_anchor.is_match(frame) {
            if frame.contains("smp_call_function") {
                return Some((i, "smp_call_function".to_string()));
            }
            return Some(prev);
        }
        prev = (i, frame.clone());
    }
    None
}

/// Hung tasks: bucket the usual global waits, else the first frame that is not a wait.
fn hang_frame(frames: &[String]) -> Option<(usize, String)> {
    const ANCHORS: &[(&str, Option<&str>)] = &[
        ("rtnl_lock", None),
        ("synchronize_rcu", Some("synchronize_rcu")),
        ("synchronize_srcu", Some("synchronize_rcu")),
        ("synchronize_net", Some("synchronize_rcu")),
        ("synchronize_sched", Some("synchronize_rcu")),
    ];
    for (i, frame) in frames.iter().enumerate() {
        if let Some((_, replacement)) = ANCHORS.iter().find(|(a, _)| frame.contains(a)) {
            return Some((i, replacement.map_or_else(|| frame.clone(), str::to_string)));
        }
    }
    frames
        .iter()
        .enumerate()
        .find(|(_, f)| !formats::HANG_SKIP.iter().any(|s| f.contains(s)))
        .map(|(i, f)| (i, f.clone()))
}

/// A timestamp inside the title means two console lines were merged into one.
fn check_title_merge(t: &Tables, title: &str) -> Option<String> {
    t.timestamp_in_title.is_match(title).then(|| "title contains a timestamp: lines were merged".to_string())
}

/// Every `Call Trace:`/`Allocated by task`/`Freed by task` section must have frames, and a
/// report whose format expects a stack must have at least one.
fn check_corrupted(t: &Tables, title: &str, text: &str, spec: &FormatSpec) -> Option<String> {
    if let Some(reason) = check_title_merge(t, title) {
        return Some(reason);
    }
    if spec.no_stack {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut has_stack = false;
    for (i, line) in lines.iter().enumerate() {
        if !t.stack_start.is_match(line) {
            continue;
        }
        let rest = &lines[i + 1..];
        if rest.len() < 3 {
            return Some("call trace is missed".to_string());
        }
        let mut found = false;
        for next in rest.iter().take(15) {
            if t.stack_start.is_match(next) {
                break;
            }
            if next.contains("(stack is not available)") || t.is_frame(next) {
                found = true;
                break;
            }
        }
        if !found {
            return Some("no frames in a stack trace".to_string());
        }
        has_stack = true;
    }
    (!has_stack).then(|| "no stack trace in report".to_string())
}

/// Replaces the parts of a title that differ between two occurrences of the same bug:
/// addresses → `ADDR`, `file.c:123` → `file.c:LINE`, `func+0x1/0x2` → `func`, `CPU#3` →
/// `CPU`, IPv4 addresses → `IP`, other numbers → `NUM` (numbers inside identifiers such as
/// `cfg80211_` stay). Titles are compared after this, so it must be deterministic.
pub fn normalize(title: &str) -> String {
    static RES: OnceLock<[Regex; 6]> = OnceLock::new();
    let [addr, ip, line, func, cpu, long] = RES.get_or_init(|| {
        [
            Regex::new(r"([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}").expect("static"),
            Regex::new(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}").expect("static"),
            Regex::new(r"(\.\w+)(:[0-9]+)+").expect("static"),
            Regex::new(r"([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+").expect("static"),
            Regex::new(r"CPU#[0-9]+").expect("static"),
            Regex::new(r"[0-9]{7,}").expect("static"),
        ]
    });
    let s = addr.replace_all(title, "${1}ADDR");
    let s = ip.replace_all(&s, "IP");
    let s = line.replace_all(&s, "${1}:LINE");
    let s = func.replace_all(&s, "${1}");
    let s = cpu.replace_all(&s, "CPU");
    let s = replace_numbers(&s);
    long.replace_all(&s, "NUM").into_owned()
}

/// Replaces each run of decimal digits that is delimited by non-word characters (or the
/// ends) with `NUM`; digits touching a letter or `_` are part of an identifier.
fn replace_numbers(s: &str) -> String {
    let bytes = s.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let before_ok = start > 0 && !word(bytes[start - 1]);
            let after_ok = i == bytes.len() || !word(bytes[i]);
            if before_ok && after_ok {
                out.push_str("NUM");
            } else {
                out.push_str(&s[start..i]);
            }
        } else {
            let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&s[i..i + ch_len]);
            i += ch_len;
        }
    }
    out
}

/// Caps the length, turns tabs into spaces, drops control and non-ASCII bytes, and
/// collapses runs of spaces.
pub fn sanitize(title: &str) -> String {
    let mut out = String::with_capacity(title.len().min(MAX_TITLE_LEN));
    let mut prev = ' ';
    for c in title.chars().take(MAX_TITLE_LEN) {
        let c = if c == '\t' { ' ' } else { c };
        if !(' '..='~').contains(&c) || (c == ' ' && prev == ' ') {
            continue;
        }
        out.push(c);
        prev = c;
    }
    out.trim().to_string()
}

/// The crash type for a title, by prefix (syzkaller's classification, so that types of
/// the same bug agree across tools).
pub fn title_to_type(title: &str) -> CrashType {
    use CrashType::*;
    const TABLE: &[(&[&str], CrashType)] = &[
        (&["KFENCE: use-after-free write"], KfenceUseAfterFreeWrite),
        (&["KFENCE: use-after-free read", "KFENCE: use-after-free"], KfenceUseAfterFreeRead),
        (&["KFENCE: invalid write", "KFENCE: out-of-bounds write"], KfenceWrite),
        (&["KFENCE: invalid read", "KFENCE: out-of-bounds read", "KFENCE: out-of-bounds"], KfenceRead),
        (&["KFENCE: memory corruption"], KfenceMemoryCorruption),
        (&["KFENCE: invalid free"], KfenceInvalidFree),
        (&["KMSAN: uninit-value"], KmsanUninitValue),
        (&["KMSAN: kernel-infoleak-after-free", "KMSAN: kernel-usb-infoleak-after-free", "KMSAN: use-after-free"], KmsanUseAfterFreeRead),
        (&["KMSAN: kernel-infoleak", "KMSAN: kernel-usb-infoleak"], KmsanInfoLeak),
        (&["KASAN: null-ptr-deref Write"], KasanNullPtrDerefWrite),
        (&["KASAN: null-ptr-deref Read"], KasanNullPtrDerefRead),
        (&["BUG: unable to handle kernel NULL pointer dereference in"], NullPtrDeref),
        (
            &[
                "KASAN: global-out-of-bounds Write", "KASAN: out-of-bounds Write", "KASAN: slab-out-of-bounds Write",
                "KASAN: stack-out-of-bounds Write", "KASAN: user-memory-access Write", "KASAN: vmalloc-out-of-bounds Write",
                "KASAN: wild-memory-access Write",
            ],
            KasanWrite,
        ),
        (
            &[
                "KASAN: global-out-of-bounds Read", "KASAN: invalid-access Read", "KASAN: out-of-bounds Read",
                "KASAN: slab-out-of-bounds Read", "KASAN: slab-out-of-bounds", "KASAN: stack-out-of-bounds Read",
                "KASAN: stack-out-of-bounds", "KASAN: unknown-crash Read", "KASAN: user-memory-access Read",
                "KASAN: vmalloc-out-of-bounds Read", "KASAN: wild-memory-access Read", "KASAN: wild-memory-access",
            ],
            KasanRead,
        ),
        (&["KASAN: double-free or invalid-free", "KASAN: invalid-free"], KasanInvalidFree),
        (&["KASAN: slab-use-after-free Write", "KASAN: use-after-free Write"], KasanUseAfterFreeWrite),
        (&["KASAN: slab-use-after-free Read", "KASAN: use-after-free Read", "KASAN: use-after-free"], KasanUseAfterFreeRead),
        (&["BUG: corrupted list", "BUG: unable to handle kernel paging request"], MemorySafetyBug),
        (&["WARNING: refcount bug"], RefcountWarning),
        (&["UBSAN: array-index-out-of-bounds"], MemorySafetyUbsan),
        (&["KCSAN: data-race"], KcsanDataRace),
        (
            &[
                "BUG: bad unlock balance in", "BUG: held lock freed in", "BUG: rwlock", "BUG: spinlock",
                "BUG: still has locks held in", "BUG: using", "WARNING: bad unlock balance in", "WARNING: held lock freed in",
                "WARNING: lock held", "WARNING: locking bug in", "WARNING: nested lock was not taken in",
                "WARNING: still has locks held in", "WARNING: suspicious RCU usage in", "inconsistent lock state in",
                "possible deadlock in", "BUG: lock held when returning",
            ],
            Lockdep,
        ),
        (&["BUG: scheduling while atomic in", "BUG: sleeping function called from invalid context in"], AtomicSleep),
        (&["memory leak in"], MemoryLeak),
        (&["BUG: bad usercopy in", "kernel BUG"], Bug),
        (&["WARNING in"], Warning),
        (
            &["BUG: stack guard page was hit in", "WARNING: corrupted", "WARNING: kernel stack frame pointer has bad value", "WARNING: kernel stack regs has bad"],
            Unknown,
        ),
        (&["BUG: soft lockup in", "INFO: rcu detected stall in", "INFO: task can't die in", "INFO: task hung in"], Hang),
        (
            &[
                "Alignment trap in", "BUG: Object already free", "Internal error in", "PANIC: double fault", "Unhandled fault in",
                "divide error in", "general protection fault in", "go runtime error", "int3 in", "invalid opcode in", "kernel panic:",
                "kernel stack overflow", "stack segment fault in", "unregister_netdevice: waiting for DEV to become free",
            ],
            DoS,
        ),
        (&["SYZFAIL:", "SYZFATAL:"], SyzFailure),
        (&[crate::synthetic::NO_OUTPUT], NoOutput),
        (&[crate::synthetic::LOST_CONNECTION], LostConnection),
        (&[crate::synthetic::AGENT_UNRESPONSIVE], AgentUnresponsive),
        (&[crate::synthetic::UNPLUG_STUCK], UnplugStuck),
        (&[crate::synthetic::DATA_MISMATCH], DataMismatch),
        (&["WARNING:"], Warning),
        (&["BUG:", "INFO:"], Unknown),
        (&["KASAN:"], KasanUnknown),
        (&["KFENCE:"], KfenceUnknown),
        (&["KMSAN:"], KmsanUnknown),
        (&["UBSAN:"], Ubsan),
        (&["KCSAN:"], KcsanUnknown),
    ];
    TABLE
        .iter()
        .find(|(prefixes, _)| prefixes.iter().any(|p| title.starts_with(p)))
        .map_or(Unknown, |(_, ty)| *ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_compile() {
        let t = tables();
        assert!(t.oopses.len() > 10);
    }

    #[test]
    fn normalizes_titles() {
        assert_eq!(normalize("WARNING in foo_bar+0x12/0x40"), "WARNING in foo_bar");
        assert_eq!(normalize("BUG: bad at ffff888012345678 on CPU#3"), "BUG: bad at ADDR on CPU");
        assert_eq!(normalize("WARNING at drivers/a.c:123 x"), "WARNING at drivers/a.c:LINE x");
        assert_eq!(normalize("kernel panic: 1,2,3 in cfg80211_x"), "kernel panic: NUM,NUM,NUM in cfg80211_x");
        assert_eq!(sanitize("a\t  b\u{1}c"), "a bc");
    }

    #[test]
    fn formats_titles() {
        let args = vec!["slab-use-after-free".to_string(), "f".to_string(), "Read".to_string(), "at24_read".to_string()];
        assert_eq!(format_title("KASAN: {1} {3} in {4}", &args), "KASAN: slab-use-after-free Read in at24_read");
        assert_eq!(format_title("x {9} {y}", &args), "x  {y}");
    }

    #[test]
    fn types() {
        assert_eq!(title_to_type("KASAN: slab-use-after-free Read in at24_read"), CrashType::KasanUseAfterFreeRead);
    }

    #[test]
    fn rust_frames_are_demangled_c_frames_untouched() {
        // Symbols from our 6.12 vmlinux (`nm`).
        assert_eq!(demangle("_RNvMNtCsl7L7n58I0Vr_6kernel5errorNtB2_5Error4name"), "<kernel::error::Error>::name");
        assert_eq!(strip_frame("_RNvMNtCsl7L7n58I0Vr_6kernel5allocNtB2_5Flags8contains"), "<kernel::alloc::Flags>::contains");
        assert_eq!(strip_frame("at24_read"), "at24_read");
        assert_eq!(demangle("_Rgarbage"), "_Rgarbage");
        assert_eq!(demangle("_Z8fakeNameiii"), "fakeName");
        assert_eq!(demangle("_ZN2ns3fooEv"), "ns::foo");
        for garbage in ["_Z", "_Z9short", "_Z0x", "_ZN2ns3foo", "_Z99999999999999999999999x"] {
            assert_eq!(demangle(garbage), garbage);
        }
        assert_eq!(title_to_type("WARNING: refcount bug in x"), CrashType::RefcountWarning);
        assert_eq!(title_to_type("possible deadlock in x"), CrashType::Lockdep);
        assert_eq!(title_to_type("INFO: task hung in i2c_del_adapter"), CrashType::Hang);
    }
}
