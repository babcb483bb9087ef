//! Boots the real initramfs under QEMU and drives the guest agent over virtio-serial.
//!
//! Needs a kernel: `UNPLUG_TORTURE_KERNEL=<bzImage>` or the newest
//! `cache/kernels/*/bzImage`. Without one the test says so and passes, so a fresh checkout's
//! `cargo test` stays green before `cargo xtask kernel` has run. QEMU is started directly
//! (not through `harness::vm`) so the image and agent can be checked on their own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use harness::agent::{Agent, AgentError, ExecRequest};
use harness::image::{self, ImageRequest};

fn find_kernel() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("UNPLUG_TORTURE_KERNEL") {
        return Some(PathBuf::from(path));
    }
    let dir = harness::paths::cache_dir().join("kernels");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path().join("bzImage"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

/// QEMU with the agent port; killed when dropped (test failure included).
fn start_qemu(kernel: &Path, initrd: &Path, dir: &Path) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new("qemu-system-x86_64");
    // TCG only: the accelerator probe belongs to `harness::vm`, and a KVM that opens but
    // never runs the guest (seen on nested hosts) would stall this test silently.
    cmd.args(["-M", "q35", "-accel", "tcg", "-bios", "/usr/share/qemu/qboot.rom"])
        .args(["-nodefaults", "-no-reboot", "-display", "none", "-m", "1G"])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init unplug.hung_task=7"])
        .args(["-device", "virtio-serial-pci,id=vser", "-chardev"])
        .arg(format!("socket,id=agent,path={},server=on,wait=off", dir.join("agent.sock").display()))
        .args(["-device", "virtserialport,bus=vser.0,chardev=agent,name=org.unplug.agent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().expect("starting qemu-system-x86_64")
}

async fn connect(sock: &Path, log: &Path) -> Agent {
    for _ in 0..100 {
        if sock.exists() {
            return Agent::connect(sock, Some(log)).await.expect("connecting to the agent socket");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("QEMU did not create {}", sock.display());
}

#[tokio::test]
async fn e2e_agent_serves_a_booted_guest() {
    let Some(kernel) = find_kernel() else {
        eprintln!("no kernel (set UNPLUG_TORTURE_KERNEL or run `cargo xtask kernel`); skipping");
        return;
    };
    harness::host::ensure(harness::host::QEMU).unwrap();
    let image = tokio::task::spawn_blocking(|| image::build(&ImageRequest::default())).await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut qemu = start_qemu(&kernel, &image.path, dir.path());
    let agent = connect(&dir.path().join("agent.sock"), &dir.path().join("agent.log")).await;
    let console = dir.path().join("console.log");
    let hello = match agent.wait_ready(Duration::from_secs(300)).await {
        Ok(hello) => hello,
        Err(e) => panic!("{e}\nconsole:\n{}", std::fs::read_to_string(&console).unwrap_or_default()),
    };

    let uname = agent.exec_ok(&["uname", "-r"], Duration::from_secs(30)).await.unwrap();
    assert_eq!(uname.stdout_text().trim(), hello.kernel_release);

    // The cmdline knob reached the kernel through /init.
    let hung = agent.read_file("/proc/sys/kernel/hung_task_timeout_secs").await;
    if let Ok(hung) = hung {
        assert_eq!(hung, b"7\n");
    }

    // Binary data round-trips through a file exactly.
    let data: Vec<u8> = (0..=255).rev().collect();
    agent
        .call(
            harness::agent::Op::Write { path: "/tmp/blob".into(), data: data.clone().into(), offset: None, create: true },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(agent.read_file("/tmp/blob").await.unwrap(), data);
    let missing = agent.read_file("/sys/does/not/exist").await.unwrap_err();
    assert_eq!(missing.errno(), Some(2), "{missing}");

    // configfs is mounted and mkdir/rmdir work on real directories.
    assert!(!agent.read_file("/proc/mounts").await.unwrap().is_empty());
    agent.mkdir("/tmp/d").await.unwrap();
    agent.symlink("/tmp/blob", "/tmp/d/link").await.unwrap();
    agent.unlink("/tmp/d/link").await.unwrap();
    agent.rmdir("/tmp/d").await.unwrap();

    // A long-running command does not block pings; its timeout kills the whole group.
    let slow = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.exec(&["sh", "-c", "sleep 60 & sleep 60"], Duration::from_secs(2)).await })
    };
    agent.ping().await.unwrap();
    let slow = slow.await.unwrap().unwrap();
    assert!(slow.timed_out && slow.signal == Some(9), "{slow:?}");

    let mut req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), "cat; echo err >&2; exit 3".into()],
        env: vec![],
        cwd: Some("/".into()),
        stdin: Some(vec![0u8, 1, 2].into()),
        timeout_ms: 10_000,
        max_output: 2,
    };
    let out = agent.exec_with(req.clone()).await.unwrap();
    assert_eq!((out.status, out.stdout.as_slice(), out.stdout_truncated), (Some(3), &[0u8, 1][..], true));
    req.argv = vec!["/no/such/program".into()];
    assert_eq!(agent.exec_with(req).await.unwrap_err().errno(), Some(2));

    agent.poweroff().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), qemu.wait()).await.expect("QEMU exits after poweroff");
    assert!(status.unwrap().success());
    let lost = agent.ping().await.unwrap_err();
    assert!(matches!(lost, AgentError::ConnectionLost(_)), "{lost}");

    // ttyS0 carries the kernel log; the only userspace lines are the kmsg markers.
    let console = std::fs::read_to_string(&console).unwrap();
    assert!(console.contains("unplug-torture: agent starting"), "{console}");
    assert!(console.contains("unplug-agent: serving on /dev/vport"), "{console}");
}
