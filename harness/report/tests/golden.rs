//! Golden console logs: `harness/report/tests/data/*.log`.
//!
//! Each file is a header, a blank line, then the raw console bytes. The header lists every
//! report the parser must find, in order: `TITLE:` starts one, followed by its `ALT:` lines,
//! `TYPE:` and, when corrupted, `CORRUPTED: <reason>`. Lines starting with `#` are comments
//! (provenance, what syzkaller expects) and are kept by the update mode.
//!
//! The `TITLE:` lines are written and reviewed by hand: they say what the bug is called,
//! which is the point of the corpus. `UPDATE_GOLDEN=1 cargo test -p report --test golden`
//! rewrites the other lines (`ALT:`, `TYPE:`, `CORRUPTED:`) of the logs whose titles the
//! parser still gets right, and never touches a log whose titles it gets wrong: that stays a
//! failure until the parser or, after review, the hand-written `TITLE:` line changes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

struct Golden {
    comments: Vec<String>,
    expected: String,
    body: Vec<u8>,
}

fn split(data: &[u8]) -> Golden {
    let (head, body) = report::split_expectations(data);
    let body = body.to_vec();
    let head = String::from_utf8_lossy(head);
    let mut comments = Vec::new();
    let mut expected = String::new();
    for line in head.lines() {
        if line.starts_with('#') {
            comments.push(line.to_string());
        } else {
            expected.push_str(line);
            expected.push('\n');
        }
    }
    Golden { comments, expected, body }
}

fn render(reports: &[report::Report]) -> String {
    let mut out = String::new();
    for r in reports {
        writeln!(out, "TITLE: {}", r.title).unwrap();
        for alt in &r.alt_titles {
            writeln!(out, "ALT: {alt}").unwrap();
        }
        writeln!(out, "TYPE: {}", r.crash_type).unwrap();
        if let Some(reason) = &r.corrupted {
            writeln!(out, "CORRUPTED: {reason}").unwrap();
        }
    }
    out
}

#[test]
fn golden_logs() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    assert!(files.len() >= 25, "corpus shrank to {} logs", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read golden log");
        let golden = split(&data);
        // Feed in odd-sized chunks: results must not depend on how the console delivered bytes.
        let mut parser = report::Parser::new();
        for chunk in golden.body.chunks(977) {
            parser.feed(chunk);
        }
        let actual = render(&parser.finish());
        let titles = |header: &str| header.lines().filter(|l| l.starts_with("TITLE:")).map(str::to_string).collect::<Vec<_>>();
        if update && titles(&actual) != titles(&golden.expected) {
            failures.push(format!(
                "{}: titles differ, not rewritten (TITLE: lines are hand-written; fix the parser or edit them after review):\n--- expected\n{}--- actual\n{}",
                path.display(),
                golden.expected,
                actual
            ));
        } else if update {
            let mut out = golden.comments.join("\n").into_bytes();
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(actual.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(&golden.body);
            std::fs::write(path, out).expect("rewrite golden log");
        } else if actual != golden.expected {
            failures.push(format!("{}:\n--- expected\n{}--- actual\n{}", path.display(), golden.expected, actual));
        }
    }
    assert!(failures.is_empty(), "{} of {} golden logs differ (UPDATE_GOLDEN=1 accepts new ALT/TYPE/CORRUPTED lines, never new titles):\n{}", failures.len(), files.len(), failures.join("\n"));
}
