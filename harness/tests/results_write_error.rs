//! A results folder that stops taking writes half-way (a full disk) must not end a run early:
//! the run still stops QEMU, parses the console to its end, writes what it can and says which
//! write failed, with its path. Needs root (a 64 KiB tmpfs is the full disk); QEMU is started
//! but never boots anything (the kernel path does not exist), so no kernel build is needed.

use std::path::Path;
use std::time::Duration;

use harness::drive::schedule::{Action, Planned, Schedule};
use harness::drive::torture::{run_recorded, RunOptions, RunRequest};

struct Tmpfs<'a>(&'a Path);

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_results_disk_is_reported_not_fatal() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts a tmpfs: run it as root (cargo xtask test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "none"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let _mount = Tmpfs(dir.path());

    // Big enough that schedule.json does not fit after meta.json did: writes fail midway.
    let actions = (0..3000)
        .map(|i| Planned {
            kernels: None,
            iteration: Some(1),
            step: i + 1,
            action: Action::WaitConsole {
                text: format!("line {i} of a long schedule"),
            },
        })
        .collect();
    let schedule = Schedule {
        scenario: "full-disk".into(),
        seed: 1,
        cmdline: Vec::new(),
        expect: Default::default(),
        actions,
    };
    let request = RunRequest {
        variant: harness::drive::scenario::KernelVariant::Vanilla,
        kernel: harness::judge::results::KernelMeta {
            label: "missing".into(),
            bzimage: "/nonexistent/bzImage".into(),
            ..Default::default()
        },
        initrd: "/nonexistent/initramfs.cpio".into(),
        image_key: None,
        schedule,
        accel: harness::run::vm::Accel::Tcg,
        options: RunOptions::default(),
        results_root: dir.path().to_path_buf(),
        reproducer: "test".into(),
        repeat: None,
        stop: Default::default(),
        progress: harness::drive::progress::Progress::Lines,
    };
    let verdict = tokio::time::timeout(Duration::from_secs(120), run_recorded(request))
        .await
        .expect("the run ended")
        .expect("a write error is not an early return");
    let error = verdict.write_error.expect("the failed write is reported");
    assert!(
        error.contains(&verdict.dir.display().to_string()),
        "{error}"
    );
    assert!(error.contains("schedule.json"), "{error}");
    assert!(
        verdict
            .findings
            .iter()
            .any(|f| f.starts_with("boot failed")),
        "{:?}",
        verdict.findings
    );
    // What fitted was written, and is valid.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(verdict.dir.join("meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["scenario"], "full-disk");
}

/// A step line that a full disk cuts half-way is taken back: `steps.jsonl` stays whole lines,
/// every one of them valid JSON.
#[test]
fn a_step_line_cut_by_a_full_disk_is_taken_back() {
    assert!(nix::unistd::geteuid().is_root(), "this test mounts a tmpfs: run it as root (cargo xtask test does)");
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=16k", "none"]).arg(dir.path()).status().unwrap();
    assert!(status.success());
    let _mount = Tmpfs(dir.path());
    let mut run = harness::judge::results::RunDir::create(dir.path(), "full").unwrap();
    let error = (0..1000)
        .find_map(|i| run.append_step(&serde_json::json!({ "index": i, "output": "x".repeat(1500) })).err())
        .expect("the disk fills up");
    assert!(format!("{error:#}").contains("No space left on device"), "{error:#}");
    let text = std::fs::read_to_string(run.path().join("steps.jsonl")).unwrap();
    assert!(text.ends_with('\n'), "the last line is cut: ...{:?}", &text[text.len().saturating_sub(40)..]);
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}
