//! `cargo xtask torture` on a kernel a scenario does not apply to: the run is recorded as
//! skipped with the reason, nothing is built or booted, and skips alone exit 0.

mod common;

#[test]
fn resmgr_sample_unplug_on_vanilla_is_skipped_with_the_reason() {
    assert!(common::repo_root().join("scenarios/resmgr-sample-unplug.yaml").is_file());
    let results = tempfile::tempdir().unwrap();
    let run = common::xtask(
        &["torture", "--scenario", "resmgr-sample-unplug", "--kernel", "vanilla", "--seed", "7"],
        results.path(),
    );
    let (stdout, all) = (&run.stdout, &run.all);
    assert_eq!(run.status.code(), Some(0), "{all}");
    assert!(stdout.lines().any(|l| l.starts_with("resmgr-sample-unplug on vanilla: skipped (applies to: resmgr) ")), "{all}");
    assert!(stdout.contains("1 run(s): 0 as expected, 0 not, 1 skipped (0 clean, 0 with findings)"), "{all}");
    // One run folder, beside the matrix record (matrix-<stamp>.json).
    let runs: Vec<_> = std::fs::read_dir(results.path()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    // The results root's page lists the skipped run.
    let index = std::fs::read_to_string(results.path().join("index.html")).unwrap();
    assert!(index.contains("skipped (applies to: resmgr)"), "{index}");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs[0].join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["skipped"], "applies to: resmgr");
    assert_eq!(meta["kernel_variant"], "vanilla");
    assert_eq!(meta["reproducer"], "cargo xtask torture --scenario resmgr-sample-unplug --kernel resmgr --seed 7");
    assert!(std::fs::read_to_string(runs[0].join("summary.md")).unwrap().contains("verdict: **skipped** on vanilla"));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs[0].join("summary.json")).unwrap()).unwrap();
    assert_eq!((&summary["skipped"], &summary["kernel"], &summary["seed"]), (&meta["skipped"], &meta["kernel_variant"], &serde_json::json!(7)));
    // Nothing booted: no console, no steps.
    assert!(!runs[0].join("console.log").exists() && !runs[0].join("steps.jsonl").exists());
}

/// `torture --list | head -1`: the reader closes the pipe after one line; xtask exits 0
/// without a panic (Rust's print! panics on a closed stdout).
#[test]
fn list_into_a_closed_pipe_exits_0() {
    use std::io::{BufRead, BufReader};
    let results = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["torture", "--list", "--kernel", "vanilla,resmgr", "--repeat", "200", "--seed", "1", "--results"])
        .arg(results.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // The read end is closed here, before xtask has written the rest (thousands of lines, more than a pipe buffers).
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!first.is_empty(), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
