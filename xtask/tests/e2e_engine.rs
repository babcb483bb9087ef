//! End to end: the torture engine at scale — parallel VMs with repeats, shards merged into one
//! summary, and `--bisect` on a tree that does not build. They boot real VMs (through the
//! cached kernels `cargo xtask test` builds first) and run the `xtask` binary as a user would.

mod common;

use std::path::Path;

use harness::judge::results::RunSummary;

/// Two quick scenarios, clean on every kernel, one iteration each.
const QUICK: &str = "{usb-kbd-cycle,cp2112-nvmem-readers}";

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// When a run folder's VM ran: meta.json's start, summary.json's last write.
fn window(dir: &Path) -> (std::time::SystemTime, std::time::SystemTime) {
    let started = json(&dir.join("meta.json"))["started"].as_str().unwrap().to_string();
    let start = humantime::parse_rfc3339(&started).unwrap();
    let end = std::fs::metadata(dir.join("summary.json")).unwrap().modified().unwrap();
    (start, end)
}

/// `--jobs 2 --repeat 2` over two scenarios on the kernel under test: four valid, ended run
/// folders (two seeds per scenario, derived as recorded), two VMs at once, and a summary
/// whose rates count two runs per scenario.
#[test]
fn e2e_jobs_2_repeat_2_leaves_four_runs_and_rates() {
    let kernel = testenv::kernel();
    let results = tempfile::tempdir().unwrap();
    let run = common::xtask(
        &["torture", "--scenario", QUICK, "--kernel", kernel.name(), "--seed", "11", "--iterations", "1", "--repeat", "2", "--jobs", "2"],
        results.path(),
    );
    let all = &run.all;
    assert_eq!(run.status.code(), Some(0), "{all}");
    assert!(all.contains("4 run(s), 4 to boot, 2 at a time"), "{all}");
    assert!(all.contains("[4/4] "), "one line per finished run: {all}");
    let dirs = common::run_folders(results.path());
    assert_eq!(dirs.len(), 4, "{dirs:?}\n{all}");
    let mut seeds = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for dir in &dirs {
        let summary: RunSummary = serde_json::from_value(json(&dir.join("summary.json"))).unwrap();
        assert!(!summary.in_progress && summary.expectation_met, "{}: {summary:?}", dir.display());
        assert_eq!(summary.kernel, kernel.name());
        let meta = json(&dir.join("meta.json"));
        let (index, base) = (meta["repeat"]["index"].as_u64().unwrap() as u32, meta["repeat"]["base_seed"].as_u64().unwrap());
        assert_eq!((meta["repeat"]["of"].as_u64(), base), (Some(2), 11));
        assert_eq!(summary.seed, harness::drive::matrix::derive_seed(base, index));
        // The recorded schedule is the one the scenario plans with that seed: replayable.
        assert_eq!(json(&dir.join("schedule.json"))["seed"].as_u64(), Some(summary.seed));
        assert!(std::fs::read_to_string(dir.join("console.log")).unwrap().lines().count() > 10);
        seeds.entry(summary.scenario).or_default().push(summary.seed);
    }
    for (scenario, s) in &seeds {
        let distinct: std::collections::BTreeSet<&u64> = s.iter().collect();
        assert_eq!(distinct.len(), 2, "{scenario}: {s:?}");
    }
    // Two VMs at a time: some two runs overlapped.
    let windows: Vec<_> = dirs.iter().map(|d| window(d)).collect();
    let overlapped = windows.iter().enumerate().any(|(i, a)| windows[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1));
    assert!(overlapped, "no two runs overlapped: {windows:?}");
    // The summary: rates per scenario, 2 runs each.
    let summary_dir = std::fs::read_dir(results.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("summary-"))
        .unwrap_or_else(|| panic!("no summary folder: {all}"));
    let tally: harness::judge::tally::Tally = serde_json::from_value(json(&summary_dir.join("summary.json"))).unwrap();
    assert_eq!(tally.exit_code(), 0);
    assert_eq!(tally.rates.len(), 2);
    for r in &tally.rates {
        assert_eq!((r.kernels[0].runs, r.kernels[0].met), (2, 2), "{r:?}");
    }
    let md = std::fs::read_to_string(summary_dir.join("summary.md")).unwrap();
    assert!(md.contains("| expectation met | 2/2 |"), "{md}");
    assert!(run.stdout.contains("## Reproduction rates"), "{all}");
}

/// Shards 1/2 and 2/2 of a two-kernel matrix, run separately and merged, give what the whole
/// matrix lists: every cell once, the A/B against the first kernel, the gate passing.
#[test]
fn e2e_shards_merged_equal_the_whole_matrix() {
    common::require_resmgr_series("the matrix runs vanilla,resmgr");
    let scenarios = "{usb-kbd-cycle,resmgr-sample-unplug}";
    let base = ["torture", "--scenario", scenarios, "--kernel", "vanilla,resmgr", "--seed", "5", "--iterations", "1"];
    let listing = tempfile::tempdir().unwrap();
    let list = common::xtask(&[&base[..], &["--list", "--json"]].concat(), listing.path());
    assert!(list.status.success(), "{}", list.all);
    let whole: Vec<harness::drive::matrix::Cell> = serde_json::from_str(&list.stdout).unwrap_or_else(|e| panic!("{e}: {}", list.all));
    assert_eq!(whole.len(), 4);
    let (a, b, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (k, dir) in [("1/2", &a), ("2/2", &b)] {
        let run = common::xtask(&[&base[..], &["--shard", k]].concat(), dir.path());
        assert_eq!(run.status.code(), Some(0), "{}", run.all);
    }
    let md = out.path().join("step-summary.md");
    let merged = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["results", "merge", "--out"])
        .arg(out.path().join("merged"))
        .arg("--markdown")
        .arg(&md)
        .args([a.path(), b.path()])
        .output()
        .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&merged.stdout), String::from_utf8_lossy(&merged.stderr));
    assert_eq!(merged.status.code(), Some(0), "{text}");
    let tally: harness::judge::tally::Tally = serde_json::from_value(json(&out.path().join("merged/summary.json"))).unwrap();
    let mut got: Vec<(String, String, u64)> = tally.entries.iter().map(|e| (e.scenario.clone(), e.kernel.clone(), e.seed)).collect();
    let mut want: Vec<(String, String, u64)> = whole.iter().map(|c| (c.scenario.clone(), c.kernel.name().to_string(), c.seed)).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{text}");
    assert_eq!(tally.kernels, ["vanilla", "resmgr"]);
    assert_eq!(tally.ab.len(), 2, "one A/B per scenario and seed: {text}");
    let pasted = std::fs::read_to_string(&md).unwrap();
    assert!(pasted.contains("## A/B: vanilla vs resmgr") && pasted.contains("| expectation met | skipped | 1/1 |"), "{pasted}");
}

/// `--bisect` on a `--src` tree whose make fails at once: 125, git bisect's "cannot test this
/// revision"; on a harness failure (a --src that is no kernel tree): 128, "stop".
#[test]
fn e2e_bisect_skips_a_tree_that_does_not_build() {
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("Makefile"), "VERSION = 6\nPATCHLEVEL = 99\n%:\n\t@echo 'this revision does not build' >&2; exit 2\n").unwrap();
    std::fs::write(tree.path().join("Kconfig"), "mainmenu \"broken\"\n").unwrap();
    let results = tempfile::tempdir().unwrap();
    let src = tree.path().to_str().unwrap();
    let run = common::xtask(&["torture", "--bisect", "--src", src, "--scenario", "usb-kbd-cycle", "--kernel", "vanilla"], results.path());
    assert_eq!(run.status.code(), Some(125), "{}", run.all);
    assert!(run.all.contains("this revision does not build"), "{}", run.all);
    let missing = results.path().join("no-such-tree");
    let run = common::xtask(&["torture", "--bisect", "--src", missing.to_str().unwrap(), "--scenario", "usb-kbd-cycle"], results.path());
    assert_eq!(run.status.code(), Some(128), "{}", run.all);
    // Outside bisect mode the same tree is a harness error: 2.
    let run = common::xtask(&["torture", "--src", src, "--scenario", "usb-kbd-cycle", "--kernel", "vanilla"], results.path());
    assert_eq!(run.status.code(), Some(2), "{}", run.all);
}
