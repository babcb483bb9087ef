//! End-to-end: the initramfs (`/init`, busybox, the guest agent) in a booted VM, driven over
//! virtio-serial. Run through `cargo xtask test` (it builds the kernel and image).

use std::time::Duration;

use agent::{ExecRequest, Op};
use harness::run::agent_link::AgentError;
use harness::run::vm::Vm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_agent_protocol_in_the_guest() {
    let mut config = testenv::vm_config("e2e_agent_protocol_in_the_guest");
    config.cmdline.push("unplug.hung_task=7".into());
    let mut vm = Vm::boot(&config, Vec::new()).await.unwrap();
    let agent = vm.agent().clone();
    let hello = agent.ping().await.unwrap();
    let uname = agent.exec_ok(&["uname", "-r"], Duration::from_secs(30)).await.unwrap();
    assert_eq!(uname.stdout_text().trim(), hello.kernel_release);

    // /init applied the cmdline knob and mounted what scenarios need.
    let hung = agent.read_file("/proc/sys/kernel/hung_task_timeout_secs").await.unwrap();
    assert_eq!(hung, b"7\n");
    let mounts = String::from_utf8(agent.read_file("/proc/mounts").await.unwrap()).unwrap();
    for fs in [" /sys/kernel/config configfs", " /sys/kernel/debug debugfs", " /tmp tmpfs", " /dev devtmpfs"] {
        assert!(mounts.contains(fs), "{fs} not mounted:\n{mounts}");
    }

    // Bytes round-trip exactly; errors carry the errno.
    let data: Vec<u8> = (0..=255).rev().collect();
    let write = Op::Write { path: "/tmp/blob".into(), data: data.clone().into(), offset: None, create: true };
    agent.call(write, Duration::from_secs(10)).await.unwrap();
    assert_eq!(agent.read_file("/tmp/blob").await.unwrap(), data);
    let missing = agent.read_file("/sys/does/not/exist").await.unwrap_err();
    assert_eq!(missing.errno(), Some(2), "{missing}");
    agent.mkdir("/tmp/d").await.unwrap();
    agent.symlink("/tmp/blob", "/tmp/d/link").await.unwrap();
    assert_eq!(agent.read_file("/tmp/d/link").await.unwrap(), data);
    agent.unlink("/tmp/d/link").await.unwrap();
    agent.rmdir("/tmp/d").await.unwrap();

    // configfs round trip through the file operations (gpio-sim is in our kernel config).
    let chip = "/sys/kernel/config/gpio-sim/agent-e2e";
    agent.mkdir(chip).await.unwrap();
    agent.mkdir(&format!("{chip}/bank0")).await.unwrap();
    agent.write_file(&format!("{chip}/bank0/num_lines"), b"4").await.unwrap();
    agent.write_file(&format!("{chip}/live"), b"1").await.unwrap();
    let name = agent.read_file(&format!("{chip}/bank0/chip_name")).await.unwrap();
    assert!(name.starts_with(b"gpiochip"), "{}", String::from_utf8_lossy(&name));
    agent.write_file(&format!("{chip}/live"), b"0").await.unwrap();
    agent.rmdir(&format!("{chip}/bank0")).await.unwrap();
    agent.rmdir(chip).await.unwrap();

    // A long-running command does not hold up pings; its timeout kills the whole group.
    let slow = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.exec(&["sh", "-c", "sleep 60 & sleep 60"], Duration::from_secs(3)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.ping().await.unwrap();
    let slow = slow.await.unwrap().unwrap();
    assert!(slow.timed_out && slow.signal == Some(9), "{slow:?}");

    let mut req = ExecRequest::new(&["sh", "-c", "cat; pwd >&2; exit 3"], Duration::from_secs(10));
    req.cwd = Some("/sys".into());
    req.stdin = Some(vec![0u8, 1, 2].into());
    req.max_output = 2;
    let out = agent.exec_with(req.clone()).await.unwrap();
    assert_eq!((out.status, out.stdout.as_slice(), out.stdout_truncated), (Some(3), &[0u8, 1][..], true));
    assert_eq!(out.stderr_text(), "/s", "stderr is capped too");
    req.argv = vec!["/no/such/program".into()];
    assert_eq!(agent.exec_with(req).await.unwrap_err().errno(), Some(2));

    // ttyS0 carries the kernel log; userspace only adds kmsg markers.
    let console = vm.log_dir().join("console.log");
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(text.contains("unplug-torture: agent starting"), "{text}");
    assert!(text.contains("unplug-agent: serving on /dev/vport"), "{text}");

    // /init restarts an agent that dies; the host hears of it as an event and carries on.
    let mut events = agent.subscribe();
    let kill = ExecRequest::new(&["sh", "-c", "kill -9 $PPID"], Duration::from_secs(1));
    let lost = agent.call(Op::Exec(kill), Duration::from_secs(3)).await.unwrap_err();
    assert!(matches!(lost, AgentError::Timeout { .. }), "{lost}");
    let event = tokio::time::timeout(Duration::from_secs(60), events.recv()).await.unwrap().unwrap();
    assert_eq!((event.source.as_str(), event.kind.as_str()), ("agent", "restarted"));
    agent.ping().await.unwrap();
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(text.contains("unplug-torture: agent exited with status 137, restarting"), "{text}");

    // poweroff answers, then QEMU (-no-reboot) exits and the link reports the loss.
    agent.poweroff().await.unwrap();
    let mut exited = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !vm.is_running() {
            exited = true;
            break;
        }
    }
    assert!(exited, "QEMU still runs 30 s after poweroff");
    let lost = tokio::time::timeout(Duration::from_secs(10), agent.ping()).await.unwrap().unwrap_err();
    assert!(matches!(lost, AgentError::ConnectionLost(_)), "{lost}");
}

/// `unplug.shell=1`: an interactive shell with job control on hvc0, not on the serial console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_shell_on_hvc0() {
    let mut config = testenv::vm_config("e2e_shell_on_hvc0");
    config.shell = true;
    let vm = Vm::boot(&config, Vec::new()).await.unwrap();
    let mut shell = tokio::net::UnixStream::connect(vm.dir().join("shell.sock")).await.unwrap();
    shell.write_all(b"echo tty=$(tty) jobs=$(set -o | grep -c 'monitor *on') sum=$((6*7))\n").await.unwrap();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = shell.read(&mut buf).await.unwrap();
            assert!(n > 0, "shell socket closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("sum=42") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(found.is_ok(), "no answer from the shell: {text:?}");
    assert!(text.contains("tty=/dev/hvc0 jobs=1 sum=42"), "{text:?}");
    assert!(!text.contains("job control turned off"), "{text:?}");
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}
