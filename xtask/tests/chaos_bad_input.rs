//! Fault injection, bad input: scenario files with every mistake we could think of, and run
//! folders whose `schedule.json` was corrupted. Each gives one clear error naming the file, the
//! line and the column of the mistake, exits 2 (a harness failure, not a finding), and creates
//! nothing in the results folder. No VM: input is checked before anything is built or booted.

mod common;

use std::path::Path;

/// One mistake: a file name, its text, where the error must point (`line:column`) and a
/// piece of the message.
struct Mistake {
    file: &'static str,
    text: &'static [u8],
    at: &'static str,
    says: &'static str,
}

const fn m(file: &'static str, text: &'static str, at: &'static str, says: &'static str) -> Mistake {
    Mistake { file, text: text.as_bytes(), at, says }
}


fn mistakes() -> Vec<Mistake> {
    vec![
        m("unknown-key", "name: x\nstepz:\n  - observe\n", "2:1", "unknown field `stepz`"),
        m("no-steps", "name: x\ndescription: nothing to do\n", "1:1", "missing field `steps`"),
        m("unclosed-flow", "name: x\nsteps:\n  - plug: { device: cp2112, id: b\n", "4:1", "did not find expected ',' or '}'"),
        m("tab-indent", "name: x\nsteps:\n\t- observe\n", "3:1", "found character that cannot start any token"),
        m("unknown-step", "name: x\nsteps:\n  - frobnicate: 3\n", "3:5", "unknown variant `frobnicate`"),
        m("unknown-unplug-method", "name: x\nsteps:\n  - plug: { device: cp2112, id: b }\n  - unplug: { id: b, how: sideways }\n", "4:13", "data did not match any variant"),
        m("bad-duration", "name: x\nsteps:\n  - delay: 5 parsecs\n", "3:5", "bad duration \"5 parsecs\""),
        m("backwards-delay", "name: x\nsteps:\n  - delay: 3s..1s\n", "3:5", "minimum above its maximum"),
        m("unplug-unknown-id", "name: x\nsteps:\n  - observe\n  - unplug: { id: ghost }\n", "4:5", "steps step 2: unplug of \"ghost\", which no earlier step plugged"),
        m("plugged-twice", "name: x\nsteps:\n  - plug: { device: cp2112, id: b }\n  - plug: { device: usb-kbd, id: b }\n", "4:5", "id \"b\" is already plugged"),
        m("zero-iterations", "name: x\niterations: 0\nsteps:\n  - observe\n", "2:13", "iterations must be between 1 and 100000, not 0"),
        m("negative-iterations", "name: x\niterations: -1\nsteps:\n  - observe\n", "2:13", "invalid type: integer `-1`, expected u32"),
        m("name-with-space", "name: 'a b'\nsteps:\n  - observe\n", "1:7", "only letters, digits"),
        m("empty-steps", "name: x\nsteps: []\n", "2:8", "at least one step"),
        m("empty-argv", "name: x\nsteps:\n  - observe\n  - exec: { argv: [] }\n", "4:5", "exec with an empty argv"),
        m("release-unknown", "name: x\nsteps:\n  - release: ghost\n", "3:5", "which no earlier step holds"),
        m("hold-unplugged", "name: x\nsteps:\n  - hold: { name: h, kind: gpio-cdev, on: ghost }\n", "3:5", "not plugged at that point"),
        m("unknown-hold-kind", "name: x\nsteps:\n  - plug: { device: gpio-sim, id: g }\n  - hold: { name: h, kind: gpio-sideways, on: g }\n", "4:28", "unknown variant `gpio-sideways`"),
        m("fault-unplugged", "name: x\nsteps:\n  - fault: { id: ghost, nak: true }\n", "3:5", "fault for \"ghost\", which is not plugged"),
        m("fault-zero-transfers", "name: x\nsteps:\n  - plug: { device: cp2112, id: b }\n  - fault: { id: b, unplug_after_transfers: 0 }\n", "4:5", "counts from 1"),
        m("expect-unknown-kernel", "name: x\nexpect:\n  mainline: clean\nsteps:\n  - observe\n", "3:3", "unknown variant `mainline`"),
        m("expect-left-out-kernel", "name: x\nkernels: [resmgr]\nexpect:\n  vanilla: [\"WARNING in x\"]\nsteps:\n  - observe\n", "4:12", "expect names vanilla, which `kernels:` leaves out"),
        m("bad-title-glob", "name: x\nexpect:\n  vanilla: [\"KASAN: {Read in at24_read\"]\nsteps:\n  - observe\n", "3:12", "unclosed alternate group"),
        m("no-kernels", "name: x\nkernels: []\nsteps:\n  - observe\n", "2:10", "lists no kernel variant"),
        m("repeated-plug", "name: x\niterations: 2\nsteps:\n  - observe\n  - plug: { device: usb-kbd, id: k }\n", "5:5", "iteration 2 would plug it twice"),
        m("only-plug", "name: x\nsteps:\n  - observe\n  - only: { kernels: [vanilla], step: { plug: { device: usb-kbd, id: k } } }\n", "4:5", "`only` can limit exec"),
        m("duplicate-key", "name: x\nname: y\nsteps:\n  - observe\n", "1:1", "duplicate field `name`"),
        m("bind-without-unbind", "name: x\nsteps:\n  - plug: { device: cp2112, id: b }\n  - bind: b\n", "4:5", "whose driver no earlier step unbound"),
        m("unbind-as-a-choice", "name: x\nsteps:\n  - plug: { device: cp2112, id: b }\n  - unplug: { id: b, how: [unbind, graceful] }\n", "4:5", "cannot be a choice"),
        m("setup-hold-twice", "name: x\nsetup:\n  - plug: { device: gpio-sim, id: g }\niterations: 2\nsteps:\n  - hold: { name: h, kind: gpio-cdev, on: g }\n", "6:5", "iteration 2 would hold it twice"),
        m("empty-file", "", "1:1", "missing field"),
        m("a-list-not-a-map", "- name: x\n- steps: []\n", "1:1", "invalid type: sequence"),
        Mistake { file: "not-utf8", text: b"name: x\nsteps:\n  - wait_console: \"caf\xe9\"\n", at: "3:23", says: "not UTF-8" },
    ]
}

#[test]
fn every_scenario_mistake_is_one_located_error_exit_2_and_nothing_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let scenarios = dir.path().join("scenarios");
    std::fs::create_dir(&scenarios).unwrap();
    let results = dir.path().join("results");
    let all = mistakes();
    assert!(all.len() >= 20);
    let mut failures = Vec::new();
    for mistake in &all {
        let path = scenarios.join(format!("{}.yaml", mistake.file));
        std::fs::write(&path, mistake.text).unwrap();
        let dir_arg = scenarios.to_str().unwrap();
        let run = common::xtask(&["torture", "--scenario-dir", dir_arg, "--scenario", mistake.file, "--kernel", "vanilla"], &results);
        std::fs::remove_file(&path).unwrap();
        let stderr = run.all.split("\nstderr:\n").nth(1).unwrap_or_default();
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        let want = format!("error: {}:{}: ", path.display(), mistake.at);
        let ok = run.status.code() == Some(2)
            && errors.len() == 1
            && errors[0].starts_with(&want)
            && errors[0].contains(mistake.says)
            && !stderr.contains("panicked");
        if !ok {
            failures.push(format!("{}: want exit 2 and one {want:?}… saying {:?}; got {}", mistake.file, mistake.says, run.all));
        }
        assert!(!results.exists(), "{}: the results folder was created", mistake.file);
    }
    assert!(failures.is_empty(), "{} of {} mistakes not reported as wanted:\n{}", failures.len(), all.len(), failures.join("\n\n"));
}

/// A run folder as `torture` leaves it, with `schedule.json` replaced by `schedule`.
fn run_folder(results: &Path, schedule: &[u8]) -> std::path::PathBuf {
    let run = results.join("20260101-000000-x");
    std::fs::create_dir_all(&run).unwrap();
    let meta = serde_json::json!({
        "run_id": "20260101-000000-x",
        "scenario": "x",
        "seed": 1,
        "reproducer": "cargo xtask torture --scenario x --seed 1",
        "replay": "cargo xtask replay results/20260101-000000-x",
        "kernel": { "label": "test", "bzimage": "/nonexistent/bzImage" },
        "kernel_variant": "vanilla",
        "started": "2026-01-01T00:00:00Z"
    });
    std::fs::write(run.join("meta.json"), serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    std::fs::write(run.join("schedule.json"), schedule).unwrap();
    run
}

#[test]
fn a_corrupted_schedule_is_one_located_error_exit_2_and_nothing_recorded() {
    let good = r#"{
  "scenario": "x",
  "seed": 1,
  "cmdline": [],
  "actions": [
    { "iteration": 1, "step": 1, "action": { "op": "delay", "ms": 5.0 } }
  ]
}"#;
    let corruptions: [(&str, String, &str, &str); 6] = [
        ("a huge negative delay", good.replace("5.0", "-1e308"), "6:", "ms"),
        ("cut short", good[..good.len() / 2].to_string(), "", "EOF"),
        ("a step 0", good.replace("\"step\": 1", "\"step\": 0"), "6:", "step numbers start at 1"),
        ("a string for a number", good.replace("\"seed\": 1", "\"seed\": \"one\""), "3:", "invalid type"),
        ("an unknown action", good.replace("\"op\": \"delay\"", "\"op\": \"teleport\""), "6:", "unknown variant"),
        ("binary garbage", "\u{0}\u{7f}garbage".to_string(), "1:", "expected value"),
    ];
    for (what, text, at, says) in corruptions {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results");
        let run = run_folder(&results, text.as_bytes());
        let before: Vec<_> = std::fs::read_dir(&results).unwrap().map(|e| e.unwrap().path()).collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask")).arg("replay").arg(&run).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        let want = format!("error: {}:{at}", run.join("schedule.json").display());
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert_eq!(errors.len(), 1, "{what}: {stderr}");
        assert!(errors[0].starts_with(&want) && errors[0].contains(says), "{what}: want {want:?}… saying {says:?}, got {stderr}");
        // file:line:column, both numbers.
        let location: Vec<&str> = errors[0].trim_start_matches("error: ").splitn(4, ':').collect();
        assert!(location.len() == 4 && location[1].parse::<usize>().is_ok() && location[2].parse::<usize>().is_ok(), "{what}: {}", errors[0]);
        let after: Vec<_> = std::fs::read_dir(&results).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(before, after, "{what}: a run folder was created");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
}
