use super::*;

/// Golden inputs from the kernel's kunit_tool test data (Debian linux-source-6.12,
/// tools/testing/kunit/test_data/, GPL-2.0 like this project): see tests/data/README.md.
fn golden(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn statuses(t: &Test) -> Vec<(&str, Status)> {
    t.subtests.iter().map(|s| (s.name.as_str(), s.outcome())).collect()
}

/// `/sys/kernel/debug/kunit/example/results` as 6.12 writes it (lib/kunit/debugfs.c: the
/// header and suite lines around the logs; lib/kunit/test.c and assert.c for the lines),
/// for kunit-example-test with one failing expectation, a skip, a parameterized case with a
/// skipped parameter and a slow case.
const DEBUGFS_EXAMPLE: &str = "KTAP version 1
1..1
    KTAP version 1
    # Subtest: example
    1..4
    # example_simple_test: initializing
    # example_simple_test: EXPECTATION FAILED at lib/kunit/kunit-example-test.c:29
    Expected 1 + 1 == 3, but
        1 + 1 == 2 (0x2)
        3 == 3 (0x3)
    not ok 1 example_simple_test
    # example_skip_test: initializing
    # example_skip_test: You should not see a line below.
    ok 2 example_skip_test # SKIP this test should be skipped
        KTAP version 1
        # Subtest: example_params_test
    # example_params_test: initializing
        ok 1 example value 3
    # example_params_test: initializing
        ok 2 example value 2
    # example_params_test: initializing
        ok 3 example value 1
    # example_params_test: initializing
        ok 4 example value 0 # SKIP unsupported param value 0
    # example_params_test: pass:3 fail:0 skip:1 total:4
    ok 3 example_params_test
    # example_slow_test: initializing
    # example_slow_test: Test should be marked slow (runtime: 1.000514233s)
    ok 4 example_slow_test
# example: pass:2 fail:1 skip:1 total:4
# Totals: pass:4 fail:1 skip:2 total:7
not ok 1 example
";

#[test]
fn debugfs_results_with_failure_skip_params_and_duration() {
    let k = parse(DEBUGFS_EXAMPLE);
    assert_eq!((k.documents, k.garbage, k.problems.len()), (1, 0, 0), "{k:?}");
    assert_eq!(k.tests.len(), 1);
    let suite = k.suite("example").unwrap();
    assert_eq!((suite.status, suite.number, suite.plan), (Status::Fail, Some(1), Some(4)));
    assert_eq!(
        statuses(suite),
        [
            ("example_simple_test", Status::Fail),
            ("example_skip_test", Status::Skip),
            ("example_params_test", Status::Pass),
            ("example_slow_test", Status::Pass)
        ]
    );
    assert_eq!(suite.counts(), Counts { passed: 2, failed: 1, skipped: 1, missing: 0 });
    let simple = suite.subtest("example_simple_test").unwrap();
    assert_eq!(
        simple.diagnostics,
        [
            "# example_simple_test: initializing",
            "# example_simple_test: EXPECTATION FAILED at lib/kunit/kunit-example-test.c:29",
            "Expected 1 + 1 == 3, but",
            "    1 + 1 == 2 (0x2)",
            "    3 == 3 (0x3)",
        ]
    );
    assert_eq!(suite.subtest("example_skip_test").unwrap().skip_reason(), Some("this test should be skipped"));
    let params = suite.subtest("example_params_test").unwrap();
    assert_eq!(params.subtests.len(), 4);
    assert_eq!(params.subtests[3].name, "example value 0");
    assert_eq!(params.subtests[3].status, Status::Skip);
    assert_eq!(params.subtests[0].diagnostics, ["# example_params_test: initializing"]);
    assert!(params.diagnostics.contains(&"# example_params_test: pass:3 fail:0 skip:1 total:4".to_string()));
    assert_eq!(params.counts(), Counts { passed: 3, failed: 0, skipped: 1, missing: 0 });
    let slow = suite.subtest("example_slow_test").unwrap();
    assert_eq!(slow.duration, Some(Duration::from_secs_f64(1.000514233)));
    assert!(suite.diagnostics.iter().any(|d| d.starts_with("# Totals: pass:4")), "{:?}", suite.diagnostics);
    let failures = suite.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, "example.example_simple_test");
}

/// The same suite as a module load prints it on the console, as our console.log stores it:
/// host time, printk time, PRINTK_CALLER, and kernel lines in between.
const CONSOLE_MODULE_LOAD: &str =
    "   12.000001|[    9.100000][  T201] resmgr_kunit: loading out-of-tree module taints kernel.
   12.000002|[    9.100100][  T201] KTAP version 1
   12.000003|[    9.100101][  T201] 1..2
   12.000004|[    9.100200][  T201]     KTAP version 1
   12.000005|[    9.100201][  T201]     # Subtest: resmgr
   12.000006|[    9.100202][  T201]     # module: resmgr_kunit
   12.000007|[    9.100203][  T201]     1..2
   12.000008|[    9.200000][  T202]     ok 1 resmgr_get_put
   12.000009|[    9.250000][   T14] usb 1-1: new full-speed USB device number 2 using xhci_hcd
   12.000010|[    9.400000][  T202]     ok 2 resmgr_release_on_unbind
   12.000011|[    9.400100][  T201] ok 1 resmgr
   12.000012|[    9.400200][  T201]     KTAP version 1
   12.000013|[    9.400201][  T201]     # Subtest: resmgr_devm
   12.000014|[    9.400202][  T201]     1..1
   12.000015|[    9.500000][  T203]     ok 1 resmgr_devm_order
   12.000016|[    9.500100][  T201] ok 2 resmgr_devm
";

#[test]
fn console_prefixes_and_noise_are_stripped_and_durations_come_from_timestamps() {
    let k = parse(CONSOLE_MODULE_LOAD);
    assert_eq!(k.documents, 1);
    assert_eq!(k.garbage, 2, "the taint line and the USB line");
    assert_eq!(
        k.tests.iter().map(|t| (t.name.as_str(), t.outcome())).collect::<Vec<_>>(),
        [("resmgr", Status::Pass), ("resmgr_devm", Status::Pass)]
    );
    let resmgr = k.suite("resmgr").unwrap();
    assert_eq!(resmgr.diagnostics, ["# module: resmgr_kunit"]);
    let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e3).round() as u64);
    assert_eq!(ms(resmgr.subtests[0].duration), Some(100), "from the plan line to its result");
    assert_eq!(ms(resmgr.subtests[1].duration), Some(200));
    assert_eq!(ms(resmgr.duration), Some(300));
    assert_eq!(strip_console_prefix("[    9.1][  T201]     ok 1 x"), (Some(9.1), "    ok 1 x"));
    assert_eq!(strip_console_prefix("<6>[    1.5] KTAP version 1"), (Some(1.5), "KTAP version 1"));
    assert_eq!(strip_console_prefix("[C0] hi"), (None, "hi"));
    assert_eq!(strip_console_prefix("    # a|b: c"), (None, "    # a|b: c"));
    assert_eq!(strip_console_prefix("[not a time] x"), (None, "[not a time] x"));
}

/// A KASAN report in the middle of a suite, then the guest dies: the case that was running
/// and the ones after it have no result, and neither has the suite.
#[test]
fn crash_mid_suite_leaves_missing_results() {
    let text = "[    5.000000] KTAP version 1
[    5.000001] 1..2
[    5.000002]     KTAP version 1
[    5.000003]     # Subtest: resmgr
[    5.000004]     1..3
[    5.100000]     ok 1 resmgr_get_put
[    5.200000] ==================================================================
[    5.200001] BUG: KASAN: slab-use-after-free in resmgr_release+0x1c/0x80
[    5.200002] Read of size 8 at addr ffff888004a1b2c0 by task kunit_try_catch/77
[    5.200003]     # resmgr_release_on_unbind: freeing the provider
[    5.300000] Kernel panic - not syncing: KASAN: panic_on_warn set ...
";
    let k = parse(text);
    assert_eq!(k.tests.len(), 2, "the suite and the second suite the plan promised");
    let suite = &k.tests[0];
    assert_eq!((suite.name.as_str(), suite.status), ("resmgr", Status::Missing));
    assert!(suite.diagnostics.contains(&NO_RESULT.to_string()));
    assert_eq!(suite.counts(), Counts { passed: 1, failed: 0, skipped: 0, missing: 2 });
    let second = &suite.subtests[1];
    assert_eq!((second.number, second.status), (Some(2), Status::Missing));
    assert!(second.diagnostics[0].starts_with(NO_RESULT), "{:?}", second.diagnostics);
    // The indented case log line is kept for the suite (whose next case never reported).
    assert!(suite.diagnostics.iter().any(|d| d.contains("freeing the provider")), "{:?}", suite.diagnostics);
    let promised = &k.tests[1];
    assert_eq!((promised.name.as_str(), promised.number, promised.status), ("", Some(2), Status::Missing));
    assert_eq!(k.garbage, 4);
}

/// A suite whose result never came is closed by the next module's document; its numbering
/// restarts, and both documents' suites are kept.
#[test]
fn a_new_document_closes_an_unfinished_suite() {
    let text = "KTAP version 1
1..1
    KTAP version 1
    # Subtest: hangs
    1..2
    ok 1 first
KTAP version 1
1..1
    KTAP version 1
    # Subtest: fine
    1..1
    ok 1 only
ok 1 fine
";
    let k = parse(text);
    assert_eq!(k.documents, 2);
    let names: Vec<_> = k.tests.iter().map(|t| (t.name.as_str(), t.outcome(), t.number)).collect();
    assert_eq!(names, [("hangs", Status::Missing, None), ("fine", Status::Pass, Some(1))]);
    assert_eq!(k.tests[0].counts().missing, 1);
}

/// Two suites at the same level where the first's result line was lost: the second suite's
/// header starts a sibling, it is not read as part of the first.
#[test]
fn a_sibling_header_closes_a_suite_without_result() {
    let text = "KTAP version 1
1..2
    KTAP version 1
    # Subtest: a
    1..1
    ok 1 a1
    KTAP version 1
    # Subtest: b
    1..1
    ok 1 b1
ok 2 b
";
    let k = parse(text);
    let names: Vec<_> = k.tests.iter().map(|t| (t.name.as_str(), t.status)).collect();
    assert_eq!(names, [("a", Status::Missing), ("b", Status::Pass)]);
    assert_eq!(k.tests[1].subtests[0].name, "b1");
}

#[test]
fn plan_promising_more_than_arrived_and_huge_plans_are_bounded() {
    let k = parse("KTAP version 1\n1..1\n    # Subtest: s\n    1..5\n    ok 1 x\nok 1 s\n");
    let s = &k.tests[0];
    assert_eq!(s.status, Status::Pass, "as printed");
    assert_eq!(s.outcome(), Status::Fail, "four cases never reported");
    assert_eq!(s.counts(), Counts { passed: 1, failed: 0, skipped: 0, missing: 4 });
    let k = parse("KTAP version 1\n1..1\n    # Subtest: s\n    1..99999999999999999999999\nok 1 s\n");
    let s = &k.tests[0];
    assert_eq!(s.subtests.len(), Limits::default().max_missing);
    assert_eq!(s.counts().missing, u64::MAX);
}

#[test]
fn kunit_tool_golden_failure() {
    let k = parse(&golden("test_is_test_passed-failure.log"));
    let names: Vec<_> = k.tests.iter().map(|t| (t.name.as_str(), t.outcome())).collect();
    assert_eq!(names, [("sysctl_test", Status::Pass), ("example", Status::Fail)]);
    let simple = k.suite("example").unwrap().subtest("example_simple_test").unwrap();
    assert_eq!(simple.status, Status::Fail);
    assert!(simple.diagnostics.iter().any(|d| d.contains("EXPECTATION FAILED at lib/kunit/example-test.c:30")));
    assert!(simple.diagnostics.iter().any(|d| d.trim() == "1 + 1 == 2"), "{:?}", simple.diagnostics);
    assert_eq!(k.suite("sysctl_test").unwrap().counts().passed, 8);
}

#[test]
fn kunit_tool_golden_skips_and_hyphens() {
    let k = parse(&golden("test_skip_tests.log"));
    let example = k.suite("example").unwrap();
    assert_eq!(example.outcome(), Status::Pass);
    assert_eq!(example.subtest("example_skip_test").unwrap().skip_reason(), Some("this test should be skipped"));
    assert_eq!(example.counts(), Counts { passed: 1, failed: 0, skipped: 1, missing: 0 });
    let k = parse(&golden("test_strip_hyphen.log"));
    let names: Vec<_> = k.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["sysctl_test", "example"]);
    assert_eq!(k.tests[1].subtests[0].name, "example_simple_test");
}

#[test]
fn kunit_tool_golden_panic_interrupts_a_suite() {
    let k = parse(&golden("test_kernel_panic_interrupt.log"));
    let names: Vec<_> = k.tests.iter().map(|t| (t.name.as_str(), t.outcome())).collect();
    assert_eq!(
        names,
        [
            ("kunit-resource-test", Status::Pass),
            ("kunit-try-catch-test", Status::Pass),
            ("string-stream-test", Status::Missing)
        ]
    );
    let interrupted = &k.tests[2];
    assert_eq!(interrupted.counts(), Counts { passed: 1, failed: 0, skipped: 0, missing: 2 });
    assert!(interrupted.diagnostics.iter().any(|d| d.contains("Kernel panic")), "{:?}", interrupted.diagnostics);
}

#[test]
fn kunit_tool_golden_prefixes_and_interleaving() {
    for name in ["test_multiple_prefixes.log", "test_interrupted_tap_output.log", "test_pound_sign.log"] {
        let k = parse(&golden(name));
        let names: Vec<_> = k.tests.iter().map(|t| (t.name.as_str(), t.outcome(), t.counts().total())).collect();
        assert_eq!(
            names,
            [
                ("kunit-resource-test", Status::Pass, 5),
                ("kunit-try-catch-test", Status::Pass, 2),
                ("string-stream-test", Status::Pass, 3)
            ],
            "{name}"
        );
        assert!(k.garbage >= 6, "{name}: {}", k.garbage);
    }
}

#[test]
fn kunit_tool_golden_nested_and_attributes() {
    let k = parse(&golden("test_is_test_passed-all_passed_nested.log"));
    let sysctl = k.suite("sysctl_test").unwrap();
    assert_eq!(sysctl.outcome(), Status::Pass);
    assert_eq!(sysctl.plan, Some(4));
    let nested = sysctl.subtest("example").unwrap();
    assert_eq!(nested.subtests.len(), 2);
    assert_eq!(nested.outcome(), Status::Pass);
    assert_eq!(sysctl.counts().total(), 4);
    let k = parse(&golden("test_parse_attributes.log"));
    let suite = k.suite("suite").unwrap();
    assert_eq!(suite.diagnostics, ["# module: example"]);
    assert_eq!(suite.subtests[0].diagnostics, ["# test.speed: slow"]);
    assert_eq!(suite.outcome(), Status::Pass);
}

#[test]
fn garbage_only_and_empty_inputs() {
    assert_eq!(parse(""), Ktap::default());
    let k = parse("ok 1 not in a document\n# nope\n1..3\n");
    assert!(k.tests.is_empty());
    assert_eq!(k.garbage, 3);
    let k = parse("KTAP version 1\n");
    assert!(k.tests.is_empty() && k.documents == 1);
}

#[test]
fn limits_cut_deep_nesting_long_lines_and_many_diagnostics() {
    let mut text = String::from("KTAP version 1\n1..1\n");
    for level in 1..40 {
        text.push_str(&format!("{}# Subtest: level{level}\n", "    ".repeat(level)));
    }
    let k = parse(&text);
    let mut depth = 0;
    let mut t = &k.tests[0];
    while let Some(next) = t.subtests.first() {
        depth += 1;
        t = next;
    }
    assert!(depth < Limits::default().max_depth, "{depth}");
    let long = format!("KTAP version 1\n1..1\n    # Subtest: {}\n", "é".repeat(10_000));
    let k = parse(&long);
    assert!(k.tests[0].name.len() <= Limits::default().max_line_bytes);
    let mut many = String::from("KTAP version 1\n1..1\n    # Subtest: s\n    1..1\n");
    for i in 0..1000 {
        many.push_str(&format!("    # s: line {i}\n"));
    }
    many.push_str("    ok 1 c\nok 1 s\n");
    let k = parse(&many);
    let c = &k.tests[0].subtests[0];
    assert_eq!(c.diagnostics.len() + c.dropped_diagnostics, 1000);
    assert_eq!(c.diagnostics.len(), Limits::default().max_diagnostics);
}

#[test]
fn result_line_forms() {
    assert_eq!(
        classify("not ok 12 - foo bar # SKIP why"),
        Kind::Result { ok: false, number: 12, name: "foo bar", directive: Some("SKIP why") }
    );
    assert_eq!(classify("ok 1"), Kind::Result { ok: true, number: 1, name: "", directive: None });
    assert_eq!(classify("ok 1 x #"), Kind::Result { ok: true, number: 1, name: "x", directive: Some("") });
    assert_eq!(classify("ok x"), Kind::Other);
    assert_eq!(classify("ok 1x"), Kind::Other);
    assert_eq!(classify("1..0 # SKIP nothing"), Kind::Plan(Some(0)));
    assert_eq!(classify("1..2x"), Kind::Other);
    assert_eq!(classify("TAP version 14"), Kind::Version);
    assert_eq!(classify("KTAP version one"), Kind::Other);
    assert_eq!(classify("# Subtest: a b"), Kind::Subtest("a b"));
    let k = parse("KTAP version 1\n1..1\nnot ok 1 t # TODO later\n");
    assert_eq!(k.tests[0].status, Status::Skip);
    assert_eq!(k.tests[0].skip_reason(), Some("later"));
    assert_eq!(stated_duration("# time=12ms"), Some(Duration::from_millis(12)));
    assert_eq!(stated_duration("# duration: 2s"), Some(Duration::from_secs(2)));
    assert_eq!(stated_duration("# duration: nan"), None);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Lines that look like KTAP, mixed with noise, at random indentation.
    fn ktapish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("KTAP version 1".to_string()),
            Just("TAP version 14".to_string()),
            (0u64..6).prop_map(|n| format!("1..{n}")),
            Just("1..18446744073709551616".to_string()),
            ("[a-z_]{0,8}").prop_map(|n| format!("# Subtest: {n}")),
            (any::<bool>(), 0u64..5, "[a-z ]{0,6}", prop::option::of("(SKIP|TODO|x)[ a-z]{0,4}")).prop_map(
                |(ok, n, name, d)| format!(
                    "{}ok {n} {name}{}",
                    if ok { "" } else { "not " },
                    d.map(|d| format!(" # {d}")).unwrap_or_default()
                )
            ),
            "# [ -~]{0,20}",
            "[ -~]{0,30}",
            Just("[    1.000000][  T12] ".to_string()),
            "\\PC{0,10}",
        ];
        (prop::collection::vec((0usize..4, prop::bool::ANY, piece), 0..60)).prop_map(|lines| {
            lines
                .into_iter()
                .map(|(level, prefix, l)| {
                    format!("{}{}{l}", if prefix { "[   12.345678] " } else { "" }, "    ".repeat(level))
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    fn check(t: &Test, depth: usize) {
        assert!(depth <= Limits::default().max_depth + 1);
        assert!(t.diagnostics.len() <= Limits::default().max_diagnostics);
        let c = t.counts();
        assert!(c.total() >= t.subtests.len() as u64 || t.subtests.is_empty());
        if let Some(plan) = t.plan {
            assert!(t.subtests.len() as u64 + t.unreported >= plan.min(t.subtests.len() as u64 + t.unreported));
        }
        for s in &t.subtests {
            check(s, depth + 1);
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_bounded(text in ktapish()) {
            let k = parse(&text);
            for t in &k.tests {
                check(t, 1);
            }
            prop_assert!(k.problems.len() <= Limits::default().max_problems);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text);
        }

        #[test]
        fn a_plan_is_always_met_by_results_or_placeholders(n in 0u64..50, got in 0u64..50) {
            let mut text = format!("KTAP version 1\n1..1\n    # Subtest: s\n    1..{n}\n");
            for i in 1..=got.min(n) {
                text.push_str(&format!("    ok {i} c{i}\n"));
            }
            let k = parse(&text);
            let s = &k.tests[0];
            prop_assert_eq!(s.subtests.len() as u64, n);
            prop_assert_eq!(s.counts().passed, got.min(n));
            prop_assert_eq!(s.counts().missing, n - got.min(n));
        }
    }
}
