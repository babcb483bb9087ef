//! `cargo xtask report`: crash reports from any console log, and run folders at a glance.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the crash reports found in a console log (ours, or e.g. one from a syzbot mail).
    /// Exits 1 when the log contains reports.
    Parse {
        /// Console log; `-` reads standard input.
        log: PathBuf,
        /// One JSON object per report (title, alt_titles, crash_type, corrupted, text, ...).
        #[arg(long)]
        json: bool,
        /// Symbolize frames to file:line with this vmlinux.
        #[arg(long)]
        vmlinux: Option<PathBuf>,
        /// Kernel source tree: file names are made relative to it and the guilty file's
        /// MAINTAINERS entries are shown.
        #[arg(long)]
        src: Option<PathBuf>,
    },
    /// Print the summary of a run folder (works on runs that were killed half-way).
    Show {
        /// `results/<run-id>`
        run: PathBuf,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Parse { log, json, vmlinux, src } => parse(&log, json, vmlinux.as_deref(), src.as_deref()),
        Command::Show { run } => {
            let view = harness::judge::results::RunView::load(&run)?;
            print!("{}", view.render());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse(log: &Path, json: bool, vmlinux: Option<&Path>, src: Option<&Path>) -> anyhow::Result<ExitCode> {
    let bytes = if log == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading standard input")?;
        buf
    } else {
        std::fs::read(log).with_context(|| format!("reading {}", log.display()))?
    };
    let symbolizer = match vmlinux {
        Some(path) => {
            let mut s = report::symbolize::Symbolizer::new(path)?;
            if let Some(src) = src {
                s.strip_root(src);
            }
            Some(s)
        }
        None => None,
    };
    let maintainers = match src {
        Some(src) => Some(report::maintainers::Maintainers::load(src)?),
        None => None,
    };
    // A report file (syzkaller's test corpus, our golden logs) starts with the titles it
    // expects; parse only its console text, and give line numbers in the file.
    let (header, console) = report::split_expectations(&bytes);
    let header_lines = header.iter().filter(|&&b| b == b'\n').count() as u64 + u64::from(!header.is_empty());
    let mut reports = report::parse(console);
    for r in &mut reports {
        r.start_line += header_lines;
        r.end_line += header_lines;
    }
    if !header.is_empty() && !json {
        eprintln!("{}: skipped the expectation header (lines 1-{header_lines})", log.display());
    }
    for r in &reports {
        let symbolized = symbolizer.as_ref().map(|s| s.symbolize_text(&r.text));
        let guilty = report::symbolize::guilty_file(symbolized.as_deref().unwrap_or(&r.text));
        let sections = match (&maintainers, &guilty) {
            (Some(m), Some(file)) => m.lookup(file),
            _ => Vec::new(),
        };
        if json {
            let mut value = serde_json::to_value(r)?;
            value["symbolized"] = serde_json::json!(symbolized);
            value["guilty_file"] = serde_json::json!(guilty);
            value["maintainers"] = serde_json::to_value(&sections)?;
            println!("{}", serde_json::to_string(&value)?);
            continue;
        }
        println!("TITLE: {}", r.title);
        for alt in &r.alt_titles {
            println!("ALT: {alt}");
        }
        println!("TYPE: {}", r.crash_type);
        if let Some(reason) = &r.corrupted {
            println!("CORRUPTED: {reason}");
        }
        println!("LINES: {}-{}{}", r.start_line, r.end_line, r.caller.as_ref().map_or(String::new(), |c| format!(" ({c})")));
        if let Some(file) = &guilty {
            println!("GUILTY FILE: {file}");
        }
        for s in sections.iter().take(3) {
            println!("MAINTAINERS: {} [{}] {}", s.name, s.status.as_deref().unwrap_or("?"), s.maintainers.join(", "));
            if !s.lists.is_empty() {
                println!("  lists: {}", s.lists.join(", "));
            }
        }
        println!();
        print!("{}", symbolized.as_deref().unwrap_or(&r.text));
        println!("{}", "-".repeat(72));
    }
    if !json {
        // The same grouping a run files them under: one line per bug, follow-ons below it.
        let mut bugs = report::bugs::Bugs::new(usize::MAX);
        for r in &reports {
            bugs.add(r.titles(), &r.text, 1, || r.title.clone());
        }
        eprintln!("{}: {} report(s), {} bug(s)", log.display(), reports.len(), bugs.bugs().len());
        for b in bugs.bugs() {
            eprintln!("bug: {}x {}", b.count, b.first);
            for f in &b.follow_ons {
                eprintln!("  follow-on: {}x {}", f.count, f.first);
            }
        }
    }
    Ok(if reports.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
