//! Parser throughput, for `cargo xtask bench` and for checking a change did not slow it:
//! `cargo run --release -p report --example throughput [LOG...] [--mib N]`.
//! Without logs it replays the golden corpus until N MiB (default 64) have been parsed.

use std::time::Instant;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut mib = 64usize;
    if let Some(i) = args.iter().position(|a| a == "--mib") {
        mib = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(mib);
        args.drain(i..(i + 2).min(args.len()));
    }
    let paths: Vec<std::path::PathBuf> = if args.is_empty() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    } else {
        args.into_iter().map(Into::into).collect()
    };
    let mut corpus = Vec::new();
    for p in &paths {
        match std::fs::read(p) {
            Ok(b) => corpus.extend_from_slice(&b),
            Err(e) => {
                eprintln!("{}: {e}", p.display());
                std::process::exit(2);
            }
        }
    }
    if corpus.is_empty() {
        eprintln!("no input");
        std::process::exit(2);
    }
    let target = mib << 20;
    let mut parser = report::Parser::new();
    let (mut fed, mut reports) = (0usize, 0usize);
    let start = Instant::now();
    while fed < target {
        for chunk in corpus.chunks(4096) {
            parser.feed(chunk);
        }
        fed += corpus.len();
        reports += parser.take_reports().len();
    }
    reports += parser.finish().len();
    let secs = start.elapsed().as_secs_f64();
    println!("{:.1} MiB in {secs:.2}s: {:.1} MiB/s, {reports} reports", fed as f64 / 1048576.0, fed as f64 / 1048576.0 / secs);
}
