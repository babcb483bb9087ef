//! End to end: `cargo xtask kunit --series resmgr` boots the resmgr kernel, loads its KUnit
//! test modules and every resmgr suite passes (C `resmgr`, Rust `rust_resmgr`).
//!
//! It needs the resmgr patch series (kernels/patches/resmgr/); without it the test fails and
//! says so, it does not skip. `cargo xtask test` builds the resmgr kernel and image first when
//! the series is there, so this test finds them in the cache.

mod common;

#[test]
fn e2e_kunit_resmgr_suites_pass() {
    common::require_resmgr_series("this test runs the resmgr patch series' KUnit suites");
    let results = tempfile::tempdir().unwrap();
    let run = common::xtask(&["kunit", "--series", "resmgr"], results.path());
    let (stdout, all) = (&run.stdout, &run.all);
    assert!(run.status.success(), "{all}");
    // The table: one row per suite, `ok` at the end of each resmgr row.
    let rows: Vec<&str> = stdout.lines().take_while(|l| !l.is_empty()).skip(1).collect();
    for suite in ["resmgr", "rust_resmgr"] {
        let row = rows.iter().find(|r| r.split_whitespace().next() == Some(suite));
        let row = row.unwrap_or_else(|| panic!("no row for suite {suite}:\n{stdout}"));
        assert!(row.ends_with("ok"), "{suite}: {row}\n{stdout}");
        let passed: u64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(passed > 0, "{suite} ran no case: {row}");
    }
    let run = common::only_run_folder(results.path());
    for file in ["meta.json", "console.log", "ktap.txt", "junit.xml", "summary.md", "steps.jsonl"] {
        assert!(run.join(file).is_file(), "{} has no {file}", run.display());
    }
    let ktap = std::fs::read_to_string(run.join("ktap.txt")).unwrap();
    let parsed = ktap::parse(&ktap);
    assert!(parsed.suite("resmgr").is_some_and(|s| !s.outcome().is_failure()), "{ktap}");
    assert!(!run.join("crashes").exists(), "crash reports filed in {}", run.display());
}
