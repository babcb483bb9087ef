//! End to end: `cargo xtask torture --scenario resmgr-sample-unplug --kernel resmgr` boots the
//! resmgr kernel, drives the Rust resmgr sample through its provider removals and records a
//! clean run: every step ok, ENODEV after each removal, the removal waiting for the access that
//! sleeps inside the section, no crash report.
//!
//! It needs the resmgr patch series (kernels/patches/resmgr/); without it the test fails and
//! says so, it does not skip. `cargo xtask test` builds the resmgr kernel and image first when
//! the series is there (as for `e2e_kunit`), so this test finds them in the cache.

mod common;

#[test]
fn e2e_torture_resmgr_sample_unplug_is_clean_on_resmgr() {
    common::require_resmgr_series("this test runs the resmgr series' rust_resmgr_sample");
    let root = common::repo_root();
    let results = tempfile::tempdir().unwrap();
    let run = common::xtask(
        &["torture", "--scenario", "resmgr-sample-unplug", "--kernel", "resmgr", "--seed", "1"],
        results.path(),
    );
    let (stdout, all) = (&run.stdout, &run.all);
    assert!(run.status.success(), "{all}");
    assert!(stdout.lines().any(|l| l.starts_with("resmgr-sample-unplug on resmgr: clean, as expected ")), "{all}");

    let run = common::only_run_folder(results.path());
    let steps: Vec<serde_json::Value> = std::fs::read_to_string(run.join("steps.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text = |s: &serde_json::Value, key: &str| s.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    for s in &steps {
        assert_eq!(text(s, "status"), "ok", "step {} ({}) not ok: {s}", s["index"], text(s, "description"));
    }
    let scenario = harness::drive::scenario::Scenario::load(&root.join("scenarios/resmgr-sample-unplug.yaml")).unwrap();
    assert_eq!(steps.len(), scenario.steps.len(), "{all}");
    let outputs: Vec<String> = steps.iter().map(|s| text(s, "output")).collect();
    assert!(outputs.iter().any(|o| o.trim() == "value=42 generation=1"), "no access before the removal: {outputs:#?}");
    // Both accesses after a removal: failed, with ENODEV.
    let enodev: Vec<&String> = outputs.iter().filter(|o| o.contains("No such device")).collect();
    assert_eq!(enodev.len(), 2, "{outputs:#?}");
    assert!(enodev.iter().all(|o| o.starts_with("exit 1: ")), "{enodev:#?}");
    // The reader inside the section got the old value; the removal waited for it.
    let raced = outputs.iter().find(|o| o.contains("remove returned")).unwrap_or_else(|| panic!("{outputs:#?}"));
    assert!(raced.contains("reader: exit 0: value=42 generation=2"), "{raced}");
    let waited: u64 = raced
        .split("remove returned ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{raced}"));
    assert!(waited >= 1000, "{raced}");
    let console = std::fs::read_to_string(run.join("console.log")).unwrap();
    for line in ["remove: provider generation 1 revoked", "remove: provider generation 2 revoked", "put: handle to provider generation 2"] {
        assert!(console.contains(line), "no {line:?} in {}", run.join("console.log").display());
    }
    assert!(!run.join("crashes").exists(), "crash reports filed in {}", run.display());
    let summary: harness::judge::results::RunSummary = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary.kernel.as_str(), summary.expected.as_str(), summary.expectation_met), ("resmgr", "clean", true), "{summary:?}");
}
