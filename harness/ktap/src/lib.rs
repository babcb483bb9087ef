//! KTAP v1 / KUnit / TAP 14 parser, sans IO: lines in, a tree of tests out.
//!
//! It reads KUnit output as the kernel prints it on the console (with `[    1.234567]`
//! timestamps, `[T123]` PRINTK_CALLER fields, our `console.log` host-time prefix
//! `    2.041234|`, and unrelated kernel lines interleaved) and as debugfs serves it in
//! `/sys/kernel/debug/kunit/<suite>/results`.
//!
//! What it understands:
//! - version lines (`KTAP version 1`, `TAP version 14`); each one at the top level starts a new
//!   document (a KUnit module load prints its own `KTAP version 1` / `1..N`), and the suites
//!   of every document are concatenated in [`Ktap::tests`];
//! - plans `1..N`, results `ok N name` / `not ok N name` (`ok N - name` too), directives
//!   `# SKIP reason` (and `# TODO`);
//! - nesting by indentation (KUnit indents 4 spaces per level, older kernels a tab; what
//!   counts is deeper or shallower, not how much), `# Subtest: name` headers, parameterized
//!   cases (a case with its own nested results, no plan);
//! - diagnostic lines: a test's log precedes its result line, so every non-result line of a
//!   test's body since the previous result goes to the test that reports next (failure
//!   messages, `Expected ... but` with its indented values, `# case: pass:2 fail:0 ...`).
//!   Lines at the top level's indentation that are not `#` diagnostics are kernel noise and
//!   are only counted ([`Ktap::garbage`]);
//! - durations: a `# duration: 1.5s`, `# time=12ms` or KUnit's `(runtime: 1.000000000s)`
//!   diagnostic, otherwise the difference of the kernel timestamps of the lines when both
//!   ends carry one.
//!
//! Missing results are failures: a test whose result line never came (the guest crashed or
//! hung, or the next document started first) is [`Status::Missing`], and a plan that promises
//! more tests than arrived gets a `Missing` placeholder for each one ("no result: crashed or
//! hung?").
//!
//! Everything is bounded ([`Limits`]): line length, lines, nesting depth, tests, diagnostics
//! per test, placeholders per plan. No input makes it panic (proptest here, a cargo-fuzz
//! target in `fuzz/`).

use std::time::Duration;

/// What a missing result is reported as.
pub const NO_RESULT: &str = "no result: crashed or hung?";

/// Bounds on what a parse keeps; inputs beyond them are cut, never a panic or unbounded memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longer lines are cut (at a character boundary).
    pub max_line_bytes: usize,
    /// Lines after this many are ignored (and counted as a problem).
    pub max_lines: usize,
    /// Nesting deeper than this is read as diagnostics.
    pub max_depth: usize,
    /// Tests (of any level, placeholders included) kept in total.
    pub max_tests: usize,
    /// Diagnostic lines kept per test; the rest are counted in [`Test::dropped_diagnostics`].
    pub max_diagnostics: usize,
    /// Placeholders made for one plan's missing tests; the rest are counted in
    /// [`Test::unreported`].
    pub max_missing: usize,
    /// Problems kept in [`Ktap::problems`].
    pub max_problems: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 4096,
            max_lines: 2_000_000,
            max_depth: 8,
            max_tests: 100_000,
            max_diagnostics: 400,
            max_missing: 1024,
            max_problems: 100,
        }
    }
}

/// How a test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Pass,
    Fail,
    Skip,
    /// No result line: the guest crashed or hung, or the output was cut. Counts as a failure.
    Missing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
            Status::Missing => "missing",
        }
    }

    /// Fail or Missing.
    pub fn is_failure(self) -> bool {
        matches!(self, Status::Fail | Status::Missing)
    }
}

/// One test: a suite, a case, or a parameter of a parameterized case.
#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    /// From the result line, else from `# Subtest:`; empty when neither came.
    pub name: String,
    /// The number on its result line (or its position, for a placeholder).
    pub number: Option<u64>,
    /// As its own result line says (see [`Test::outcome`] for the verdict with subtests).
    pub status: Status,
    /// The directive after `#` on the result line, e.g. `SKIP no hardware`.
    pub directive: Option<String>,
    /// The test's log: every line of its body before its result line (failure messages).
    pub diagnostics: Vec<String>,
    pub dropped_diagnostics: usize,
    pub duration: Option<Duration>,
    /// `1..N` of its subtests, when it printed one.
    pub plan: Option<u64>,
    pub subtests: Vec<Test>,
    /// Tests its plan promised beyond the subtests and placeholders kept (see [`Limits`]).
    pub unreported: u64,
}

impl Test {
    fn new(name: String) -> Test {
        Test {
            name,
            number: None,
            status: Status::Missing,
            directive: None,
            diagnostics: Vec::new(),
            dropped_diagnostics: 0,
            duration: None,
            plan: None,
            subtests: Vec::new(),
            unreported: 0,
        }
    }

    /// A test that never reported: [`Status::Missing`], with [`NO_RESULT`] as its log.
    pub fn missing(name: &str) -> Test {
        let mut t = Test::new(name.to_string());
        t.diagnostics.push(NO_RESULT.to_string());
        t
    }

    /// The verdict: its own failure or absence, else a failure if any subtest failed or is
    /// missing, else its own status.
    pub fn outcome(&self) -> Status {
        if self.status.is_failure() {
            return self.status;
        }
        if self.unreported > 0 || self.subtests.iter().any(|t| t.outcome().is_failure()) {
            return Status::Fail;
        }
        self.status
    }

    /// Counts over its direct subtests (a suite's cases) by [`Test::outcome`]; a test without
    /// subtests and without a plan counts itself.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        if self.subtests.is_empty() && self.unreported == 0 && self.plan.is_none() {
            c.add(self.outcome());
            return c;
        }
        for t in &self.subtests {
            c.add(t.outcome());
        }
        c.missing += self.unreported;
        c
    }

    /// The skip reason, for a skipped test.
    pub fn skip_reason(&self) -> Option<&str> {
        let d = self.directive.as_deref()?;
        let rest = strip_prefix_ci(d, "SKIP").or_else(|| strip_prefix_ci(d, "TODO"))?;
        Some(rest.trim())
    }

    /// Failing or missing tests below this one (leaves first reported), with their path
    /// (`suite.case.param`), for messages.
    pub fn failures(&self) -> Vec<(String, &Test)> {
        let mut out = Vec::new();
        collect_failures(self, &self.name, &mut out);
        out
    }

    /// Finds a direct subtest by name.
    pub fn subtest(&self, name: &str) -> Option<&Test> {
        self.subtests.iter().find(|t| t.name == name)
    }
}

fn collect_failures<'a>(t: &'a Test, path: &str, out: &mut Vec<(String, &'a Test)>) {
    let failing: Vec<&Test> = t.subtests.iter().filter(|s| s.outcome().is_failure()).collect();
    if failing.is_empty() {
        if t.outcome().is_failure() {
            out.push((path.to_string(), t));
        }
        return;
    }
    for s in failing {
        let name = if s.name.is_empty() { format!("#{}", s.number.unwrap_or(0)) } else { s.name.clone() };
        collect_failures(s, &format!("{path}.{name}"), out);
    }
}

/// Tallies by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    /// No result (crashed, hung, cut); failures too.
    pub missing: u64,
}

impl Counts {
    fn add(&mut self, s: Status) {
        match s {
            Status::Pass => self.passed += 1,
            Status::Fail => self.failed += 1,
            Status::Skip => self.skipped += 1,
            Status::Missing => self.missing += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.passed + self.failed + self.skipped + self.missing
    }
}

/// A finished parse.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ktap {
    /// Top-level tests (KUnit suites) of every document, in order.
    pub tests: Vec<Test>,
    /// Documents seen (version lines at the top level).
    pub documents: usize,
    /// Lines that were not KTAP: before the first version line, or kernel noise in between.
    pub garbage: usize,
    /// Things that were odd but parsed around: a plan twice, a cut line, limits hit.
    pub problems: Vec<String>,
}

impl Ktap {
    /// The first top-level test (suite) named `name`.
    pub fn suite(&self, name: &str) -> Option<&Test> {
        self.tests.iter().find(|t| t.name == name)
    }
}

/// Parses a whole text (console log, debugfs results) at once.
pub fn parse(text: &str) -> Ktap {
    let mut p = Parser::new(Limits::default());
    for line in text.split('\n') {
        p.line(line);
    }
    p.finish()
}

/// Strips what a console puts before a kernel line: our `console.log` host time
/// (`    2.041234|`), a syslog level (`<6>`), the printk timestamp (`[    1.234567]`, returned
/// in seconds) and PRINTK_CALLER (`[T123]`, `[    T1]`, `[C0]`), then the one space printk
/// puts after them. Anything else comes back unchanged.
pub fn strip_console_prefix(line: &str) -> (Option<f64>, &str) {
    let mut s = line;
    if let Some((time, rest)) = s.split_once('|') {
        let t = time.trim_start();
        if !t.is_empty() && t.len() <= 24 && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            s = rest;
        }
    }
    if let Some(rest) = s.strip_prefix('<') {
        if let Some(end) = rest.find('>') {
            if (1..=3).contains(&end) && rest[..end].bytes().all(|b| b.is_ascii_digit()) {
                s = &rest[end + 1..];
            }
        }
    }
    let mut ts = None;
    let mut stripped = false;
    if let Some((inner, rest)) = bracketed(s) {
        let t = inner.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            ts = t.parse::<f64>().ok().filter(|v| v.is_finite());
            s = rest;
            stripped = true;
        }
    }
    if let Some((inner, rest)) = bracketed(s) {
        let t = inner.trim();
        if t.len() >= 2 && (t.starts_with('T') || t.starts_with('C')) && t[1..].bytes().all(|b| b.is_ascii_digit()) {
            s = rest;
            stripped = true;
        }
    }
    if stripped {
        s = s.strip_prefix(' ').unwrap_or(s);
    }
    (ts, s)
}

/// `[inner]rest`, with a short inner.
fn bracketed(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix('[')?;
    let end = rest.find(']')?;
    (end <= 24).then(|| (&rest[..end], &rest[end + 1..]))
}

/// What one line is, after its prefix and indentation.
#[derive(Debug, PartialEq)]
enum Kind<'a> {
    Version,
    Subtest(&'a str),
    Plan(Option<u64>),
    Result {
        ok: bool,
        number: u64,
        name: &'a str,
        directive: Option<&'a str>,
    },
    /// A `#` line (the text after `#`).
    Diagnostic,
    Other,
}

fn classify(body: &str) -> Kind<'_> {
    if let Some(rest) = body.strip_prefix("KTAP version ").or_else(|| body.strip_prefix("TAP version ")) {
        if !rest.trim().is_empty() && rest.trim().bytes().all(|b| b.is_ascii_digit()) {
            return Kind::Version;
        }
    }
    if let Some(name) = body.strip_prefix("# Subtest:") {
        return Kind::Subtest(name.trim());
    }
    if body.starts_with('#') {
        return Kind::Diagnostic;
    }
    if let Some(rest) = body.strip_prefix("1..") {
        let digits: &str = &rest[..rest.bytes().take_while(u8::is_ascii_digit).count()];
        let after = rest[digits.len()..].trim_start();
        if !digits.is_empty() && (after.is_empty() || after.starts_with('#')) {
            // A plan too large for u64 is still a plan; it promises "very many".
            return Kind::Plan(Some(digits.parse().unwrap_or(u64::MAX)));
        }
    }
    let (ok, rest) = if let Some(r) = body.strip_prefix("ok ") {
        (true, r)
    } else if let Some(r) = body.strip_prefix("not ok ") {
        (false, r)
    } else {
        return Kind::Other;
    };
    let ndigits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if ndigits == 0 {
        return Kind::Other;
    }
    let number = rest[..ndigits].parse().unwrap_or(u64::MAX);
    let rest = &rest[ndigits..];
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return Kind::Other;
    }
    let (name, directive) = match rest.split_once('#') {
        Some((name, directive)) => (name, Some(directive.trim())),
        None => (rest, None),
    };
    let name = name.trim();
    let name = name.strip_prefix("- ").unwrap_or(name).trim();
    let name = if name == "-" { "" } else { name };
    Kind::Result { ok, number, name, directive }
}

/// Leading whitespace width (a tab is one 4-column level) and the rest.
fn indentation(s: &str) -> (usize, &str) {
    let mut width = 0usize;
    for (i, b) in s.bytes().enumerate() {
        match b {
            b' ' => width += 1,
            b'\t' => width = (width / 4 + 1) * 4,
            _ => return (width, &s[i..]),
        }
    }
    (width, "")
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// A duration stated in a diagnostic: `duration: 1.5s`, `time=12ms`, `runtime: 1.0s`.
fn stated_duration(diag: &str) -> Option<Duration> {
    let lower = diag.to_ascii_lowercase();
    for key in ["duration:", "duration=", "time=", "runtime:"] {
        let Some(at) = lower.find(key) else { continue };
        let rest = lower[at + key.len()..].trim_start();
        let n = rest.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
        let Ok(value) = rest[..n].parse::<f64>() else {
            continue;
        };
        let unit = rest[n..].trim_start();
        let secs = if unit.starts_with("ms") {
            value / 1e3
        } else if unit.starts_with("us") {
            value / 1e6
        } else if unit.starts_with("ns") {
            value / 1e9
        } else {
            value
        };
        if secs.is_finite() && (0.0..1e9).contains(&secs) {
            return Some(Duration::from_secs_f64(secs));
        }
    }
    None
}

/// An open test: the document (bottom of the stack) or a test whose result has not come.
struct Frame {
    test: Test,
    /// Indentation of its body (plan, subtests' results, diagnostics).
    body: usize,
    /// Lines for the subtest that reports next.
    pending: Vec<String>,
    pending_dropped: usize,
    /// It has a plan or a subtest already: a header at its indentation is a sibling's.
    started: bool,
    /// It had a `# Subtest:` or version header of its own.
    headed: bool,
    start_ts: Option<f64>,
    /// Timestamp of its last plan or subtest result: where the next subtest began.
    last_ts: Option<f64>,
}

impl Frame {
    fn new(test: Test, body: usize, ts: Option<f64>) -> Frame {
        Frame {
            test,
            body,
            pending: Vec::new(),
            pending_dropped: 0,
            started: false,
            headed: false,
            start_ts: ts,
            last_ts: ts,
        }
    }
}

/// Streaming parser: feed lines with [`Parser::line`], then [`Parser::finish`].
pub struct Parser {
    limits: Limits,
    /// Empty until the first version line; `stack[0]` is the current document.
    stack: Vec<Frame>,
    out: Ktap,
    lines: usize,
    tests: usize,
    warned_tests: bool,
}

impl Parser {
    pub fn new(limits: Limits) -> Parser {
        Parser { limits, stack: Vec::new(), out: Ktap::default(), lines: 0, tests: 0, warned_tests: false }
    }

    /// One line, without its newline (a trailing `\r` is ignored).
    pub fn line(&mut self, raw: &str) {
        self.lines += 1;
        if self.lines > self.limits.max_lines {
            if self.lines == self.limits.max_lines + 1 {
                self.problem(format!("more than {} lines: the rest is ignored", self.limits.max_lines));
            }
            return;
        }
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let raw = if raw.len() > self.limits.max_line_bytes {
            let mut end = self.limits.max_line_bytes;
            while !raw.is_char_boundary(end) {
                end -= 1;
            }
            &raw[..end]
        } else {
            raw
        };
        let (ts, text) = strip_console_prefix(raw);
        let (indent, body) = indentation(text);
        let body = body.trim_end();
        if body.is_empty() {
            return;
        }
        let kind = classify(body);
        if self.stack.is_empty() {
            if kind == Kind::Version {
                self.open_document(indent, ts);
            } else {
                self.out.garbage += 1;
            }
            return;
        }
        let depth_ok = self.stack.len() <= self.limits.max_depth;
        match kind {
            Kind::Version | Kind::Subtest(_) | Kind::Plan(_) | Kind::Result { .. } if indent > self.top().body => {
                if !depth_ok {
                    self.diagnostic(indent, body);
                    return;
                }
                // The first line of a nested test (its header, or results without one).
                self.push(indent, ts);
                self.structural(kind, indent, body, ts);
            }
            Kind::Version | Kind::Subtest(_) | Kind::Plan(_) | Kind::Result { .. } => {
                self.structural(kind, indent, body, ts);
            }
            Kind::Diagnostic | Kind::Other => {
                if matches!(kind, Kind::Other) && indent <= self.stack[0].body {
                    // Kernel noise between and inside tests.
                    self.out.garbage += 1;
                } else {
                    self.diagnostic(indent, body);
                }
            }
        }
    }

    /// Ends the input: open tests have no result.
    pub fn finish(mut self) -> Ktap {
        self.close_document();
        self.out
    }

    fn top(&mut self) -> &mut Frame {
        let n = self.stack.len() - 1;
        &mut self.stack[n]
    }

    fn problem(&mut self, p: String) {
        if self.out.problems.len() < self.limits.max_problems {
            self.out.problems.push(p);
        }
    }

    fn open_document(&mut self, indent: usize, ts: Option<f64>) {
        self.out.documents += 1;
        let mut doc = Frame::new(Test::new(String::new()), indent, ts);
        doc.headed = true;
        self.stack.push(doc);
    }

    /// A version line, subtest header, plan or result at or above the top frame's indentation.
    fn structural(&mut self, kind: Kind<'_>, indent: usize, body: &str, ts: Option<f64>) {
        // Whatever is deeper than this line ended without its result.
        while self.stack.len() > 1 && self.top().body > indent {
            if let Kind::Result { .. } = kind {
                // The frame just above `indent`'s level is the test this result is for.
                if self.stack[self.stack.len() - 2].body <= indent {
                    break;
                }
            }
            self.close_missing();
        }
        match kind {
            Kind::Result { ok, number, name, directive } => {
                let closes_frame = self.stack.len() > 1 && self.top().body > indent;
                let mut test = if closes_frame {
                    let frame = self.stack.pop().expect("len > 1");
                    self.finish_frame(frame, ts)
                } else {
                    let top = self.top();
                    let mut t = Test::new(String::new());
                    t.diagnostics = std::mem::take(&mut top.pending);
                    t.dropped_diagnostics = std::mem::take(&mut top.pending_dropped);
                    if let (Some(end), Some(start)) = (ts, top.last_ts) {
                        t.duration = secs(end - start);
                    }
                    t
                };
                if !name.is_empty() || test.name.is_empty() {
                    test.name = name.to_string();
                }
                test.number = Some(number);
                test.directive = directive.filter(|d| !d.is_empty()).map(str::to_string);
                let skip = directive
                    .is_some_and(|d| strip_prefix_ci(d, "SKIP").is_some() || strip_prefix_ci(d, "TODO").is_some());
                test.status = match (ok, skip) {
                    (_, true) => Status::Skip,
                    (true, false) => Status::Pass,
                    (false, false) => Status::Fail,
                };
                if let Some(d) = test.diagnostics.iter().rev().find_map(|d| stated_duration(d)) {
                    test.duration = Some(d);
                }
                let top = self.top();
                top.last_ts = ts.or(top.last_ts);
                top.started = true;
                self.add_child(test);
            }
            Kind::Plan(n) => {
                let top = self.top();
                if top.test.plan.is_none() && top.test.subtests.is_empty() {
                    top.test.plan = n;
                    top.started = true;
                    top.last_ts = ts.or(top.last_ts);
                } else {
                    let name = top.test.name.clone();
                    self.problem(format!("a second plan in {:?} ignored: {body}", name));
                }
            }
            Kind::Version | Kind::Subtest(_) => {
                let name = if let Kind::Subtest(n) = kind { Some(n) } else { None };
                if self.stack.len() == 1 {
                    if name.is_none() && indent <= self.stack[0].body {
                        // A new document (the next module's KUnit run).
                        self.close_document();
                        self.open_document(indent, ts);
                    } else if indent > self.stack[0].body {
                        self.push(indent, ts);
                        self.header(name);
                    } else {
                        // `# Subtest:` at the top level (kselftest style): a note.
                        self.diagnostic(indent, body);
                    }
                    return;
                }
                let top = self.top();
                // Its own header (`KTAP version 1` then `# Subtest: name`), or a sibling's.
                let fresh = !top.started && (name.is_none() || top.test.name.is_empty());
                if fresh {
                    self.header(name);
                } else {
                    // The previous test at this level never printed its result.
                    self.close_missing();
                    self.push(indent, ts);
                    self.header(name);
                }
            }
            Kind::Diagnostic | Kind::Other => self.diagnostic(indent, body),
        }
    }

    fn header(&mut self, name: Option<&str>) {
        let top = self.top();
        top.headed = true;
        if let Some(name) = name {
            top.test.name = name.to_string();
        }
    }

    /// Opens a nested test for the top frame's next subtest; the lines it had collected for
    /// that subtest become the new test's log.
    fn push(&mut self, indent: usize, ts: Option<f64>) {
        let parent = self.top();
        let mut test = Test::new(String::new());
        test.diagnostics = std::mem::take(&mut parent.pending);
        test.dropped_diagnostics = std::mem::take(&mut parent.pending_dropped);
        let start = parent.last_ts.or(ts);
        self.stack.push(Frame::new(test, indent, start));
    }

    fn diagnostic(&mut self, indent: usize, body: &str) {
        let max = self.limits.max_diagnostics;
        let top = self.top();
        // Keep what is indented beyond the test's body (an assertion's values).
        let extra = indent.saturating_sub(top.body).min(16);
        if top.pending.len() + top.test.diagnostics.len() >= max {
            top.pending_dropped += 1;
        } else if !top.started && top.headed && top.pending.is_empty() && indent >= top.body {
            // Between its header and its plan: the test's own attributes (`# module: x`).
            top.test.diagnostics.push(format!("{}{}", " ".repeat(extra), body));
        } else {
            top.pending.push(format!("{}{}", " ".repeat(extra), body));
        }
    }

    fn add_child(&mut self, test: Test) {
        if self.tests >= self.limits.max_tests {
            if !self.warned_tests {
                self.warned_tests = true;
                let max = self.limits.max_tests;
                self.problem(format!("more than {max} tests: the rest are dropped"));
            }
            return;
        }
        self.tests += 1;
        self.top().test.subtests.push(test);
    }

    /// Pops the top frame as a test without a result.
    fn close_missing(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let mut test = self.finish_frame(frame, None);
        test.status = Status::Missing;
        if test.diagnostics.len() < self.limits.max_diagnostics {
            test.diagnostics.push(NO_RESULT.to_string());
        }
        if self.stack.is_empty() {
            return;
        }
        self.top().started = true;
        self.add_child(test);
    }

    /// A frame's test with its leftover lines and placeholders for what its plan promised.
    fn finish_frame(&mut self, frame: Frame, end_ts: Option<f64>) -> Test {
        let Frame { mut test, pending, pending_dropped, start_ts, .. } = frame;
        let room = self.limits.max_diagnostics.saturating_sub(test.diagnostics.len());
        let dropped = pending.len().saturating_sub(room);
        test.diagnostics.extend(pending.into_iter().take(room));
        test.dropped_diagnostics += pending_dropped + dropped;
        if let (Some(end), Some(start)) = (end_ts, start_ts) {
            test.duration = secs(end - start);
        }
        if let Some(plan) = test.plan {
            let have = test.subtests.len() as u64;
            let mut n = have;
            while n < plan && ((n - have) as usize) < self.limits.max_missing && self.tests < self.limits.max_tests {
                n += 1;
                let mut t = Test::new(String::new());
                t.number = Some(n);
                t.diagnostics.push(format!("{NO_RESULT} (test {n} of {plan} never reported)"));
                test.subtests.push(t);
                self.tests += 1;
            }
            test.unreported = plan.saturating_sub(n);
        }
        test
    }

    fn close_document(&mut self) {
        while self.stack.len() > 1 {
            self.close_missing();
        }
        let Some(doc) = self.stack.pop() else { return };
        let doc = self.finish_frame(doc, None);
        if doc.unreported > 0 {
            self.problem(format!("{} more top-level tests were promised by a plan and never reported", doc.unreported));
        }
        self.out.tests.extend(doc.subtests);
        // Lines after the last top-level result (e.g. `# Totals:`) go nowhere in particular.
    }
}

fn secs(d: f64) -> Option<Duration> {
    (d.is_finite() && (0.0..1e9).contains(&d)).then(|| Duration::from_secs_f64(d))
}

#[cfg(test)]
mod tests;
