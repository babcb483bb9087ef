//! Fault injection: a guest that floods its serial console. 100 MB of random bytes (with and
//! without newlines), and 100 MB of valid-looking reports that never end, go through the same
//! console drain and report parser a VM's stdout goes through (`Console` with the run's
//! `ReportFeed` sink, the lost-guest watchdog waiting meanwhile); then a real report and EOF.
//! Memory must stay bounded (the peak RSS growth is printed: the closing table's figure) and
//! the real report after the flood must still be found, titled.

use std::time::{Duration, Instant};

use harness::run::console::Console;
use harness::judge::crash_feed::ReportFeed;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tokio::io::AsyncWriteExt;

const FLOOD: usize = 100 << 20;
/// What the flood may add to the process's peak RSS: the console keeps a bounded ring of
/// recent lines, the parser bounded reports; neither may grow with the flood.
const MAX_GROWTH: u64 = 64 << 20;

/// `VmHWM` (peak) or `VmRSS` of this process, in bytes. nextest runs each test in a process of
/// its own, so the peak is this test's.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// The real report that follows the flood (syzkaller's report 704, a KASAN use-after-free).
fn real_report() -> (String, &'static str) {
    let path = harness::paths::repo_root().join("harness/report/tests/data/kasan-slab-uaf-704.log");
    let text = std::fs::read_to_string(path).unwrap();
    // The file's header (source, expected title) is not console output.
    let body: String = text.lines().skip_while(|l| !l.starts_with('[')).map(|l| format!("{l}\n")).collect();
    (body, "KASAN: slab-use-after-free Read in btrfs_evict_inode")
}

/// Writes `flood` (in 1 MiB pieces, made on demand) then the real report into a pipe the
/// console drains, as QEMU's stdout would be; returns the peak RSS growth and what was found.
async fn flood_then_report(make: impl FnMut(usize) -> Vec<u8> + Send + 'static) -> (u64, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (feed, sink) = ReportFeed::start().unwrap();
    let (mut tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
    let console = Console::spawn(rx, &dir.path().join("console.log"), vec![sink]).unwrap();
    let watchdog = {
        let console = console.clone();
        let cursor = console.cursor();
        tokio::spawn(async move { console.wait_until_lost(cursor).await })
    };
    let baseline = status_bytes("VmRSS:");
    let started = Instant::now();
    let (report, _) = real_report();
    let mut make = make;
    let mut written = 0;
    let mut piece = 0;
    while written < FLOOD {
        let bytes = make(piece);
        tx.write_all(&bytes).await.unwrap();
        written += bytes.len();
        piece += 1;
    }
    // The flood is no lost guest: nothing in it looked like a panic to the run's watchdog.
    // (The real report ends in one: panic_on_warn.)
    tx.flush().await.unwrap();
    assert!(!watchdog.is_finished(), "the flood was taken for a lost guest: {}", watchdog.await.unwrap());
    tx.write_all(report.as_bytes()).await.unwrap();
    drop(tx);
    let end = feed.finish(Duration::from_secs(900)).await;
    assert!(end.reached_eof, "the console did not reach its end");
    let growth = status_bytes("VmHWM:").saturating_sub(baseline);
    let titles: Vec<String> = end.reports.reports.iter().map(|c| c.report.title.clone()).collect();
    eprintln!(
        "flood: {} MiB in {:.1} s; peak RSS {:.1} MiB over a baseline of {:.1} MiB; {} titles, {} dropped",
        FLOOD >> 20,
        started.elapsed().as_secs_f64(),
        growth as f64 / 1048576.0,
        baseline as f64 / 1048576.0,
        titles.len(),
        end.reports.dropped
    );
    (growth, titles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_bytes_keeps_memory_bounded_and_the_report_after_it_is_found() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let (growth, titles) = flood_then_report(move |piece| {
        let mut bytes = vec![0u8; 1 << 20];
        rng.fill_bytes(&mut bytes);
        // The second half has no line end at all: the endless-line path.
        if piece >= (FLOOD >> 20) / 2 {
            for b in bytes.iter_mut().filter(|b| **b == b'\n') {
                *b = b'x';
            }
        }
        bytes
    })
    .await;
    let (_, title) = real_report();
    assert!(titles.iter().any(|t| t == title), "the real report was lost: {titles:?}");
    assert!(growth < MAX_GROWTH, "peak RSS grew by {growth} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reports_that_never_end_keeps_memory_bounded_and_the_report_after_it_is_found() {
    let (growth, titles) = flood_then_report(|piece| {
        // Many tasks each opening a report and never ending it, with endless call traces,
        // WARNING cut-here blocks without their end, and a KASAN banner without its body.
        let mut text = String::with_capacity(1 << 20);
        let mut n = 0u64;
        while text.len() < (1 << 20) {
            let task = 100 + (n % 64);
            let t = format!("[{:5}.{:06}][ T{task}]", piece, n % 1_000_000);
            match n % 5 {
                0 => text.push_str(&format!("{t} BUG: KASAN: slab-use-after-free in fn_{piece}_{n}+0x1/0x2\n{t} Read of size 8 at addr ffff888000000000 by task t/{task}\n")),
                1 => text.push_str(&format!("{t} ------------[ cut here ]------------\n{t} WARNING: CPU: 0 PID: {task} at drivers/x{n}.c:1 w_{n}+0x1/0x2\n{t} Call Trace:\n")),
                2 => text.push_str(&format!("{t} INFO: task kworker/{n}:1:{task} blocked for more than 120 seconds.\n{t}  __schedule+0x1/0x2\n")),
                3 => text.push_str(&format!("{t}  frame_{n}+0x{n:x}/0x1000\n{t}  ? other_{n}+0x1/0x2\n")),
                _ => text.push_str(&format!("{t} ==================================================================\n")),
            }
            n += 1;
        }
        text.into_bytes()
    })
    .await;
    let (_, title) = real_report();
    assert!(titles.iter().any(|t| t == title), "the real report was lost: {titles:?}");
    assert!(growth < MAX_GROWTH, "peak RSS grew by {growth} bytes");
}
