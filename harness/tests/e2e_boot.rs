//! End-to-end: boot our kernel and image under QEMU and drive them through QMP and the agent.
//! Run through `cargo xtask test` (it builds the kernel and image these tests boot).

use std::time::Duration;

use harness::drive::scenario::UnplugHow;
use harness::devices::testbed::Testbed;
use harness::run::vm::Vm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_agent_runs_commands_in_our_kernel() {
    let vm = Vm::boot(&testenv::vm_config("e2e_agent_runs_commands_in_our_kernel"), Vec::new()).await.unwrap();
    let out = vm.agent().exec_ok(&["uname", "-r"], Duration::from_secs(30)).await.unwrap();
    let release = out.stdout_text().trim().to_string();
    assert!(release.starts_with("6.12."), "uname -r said {release:?}");

    // A failing command reports its status; a hung one is killed at its deadline.
    let out = vm.agent().exec(&["sh", "-c", "echo oops >&2; exit 3"], Duration::from_secs(30)).await.unwrap();
    assert_eq!((out.status, out.stderr_text().trim()), (Some(3), "oops"));
    let out = vm.agent().exec(&["sleep", "100"], Duration::from_secs(1)).await.unwrap();
    assert!(out.timed_out && !out.success(), "{}", out.outcome());

    // The kernel we asked for: KASAN is on and the console carries the kernel log.
    let config = vm.agent().read_file("/proc/cmdline").await.unwrap();
    assert!(String::from_utf8_lossy(&config).contains("kasan_multi_shot"));
    let banner = vm.console().wait_for(Default::default(), "KernelAddressSanitizer initialized", Duration::from_secs(5)).await;
    assert!(banner.is_ok(), "{banner:?}");
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_usb_kbd_hotplug_and_unplug() {
    let mut vm = Vm::boot(&testenv::vm_config("e2e_usb_kbd_hotplug_and_unplug"), Vec::new()).await.unwrap();
    let mut testbed = Testbed::new();
    let plugged = testbed.plug(&mut vm, "usb-kbd", "kbd").await.unwrap();
    assert!(plugged.guest_saw.unwrap().contains("0003:0627:"));

    // The guest bound usbhid to it.
    let bound = vm
        .agent()
        .exec_ok(&["sh", "-c", "ls /sys/bus/usb/drivers/usbhid/ | grep -c :"], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(bound.stdout_text().trim(), "1", "usbhid should have one interface bound");

    let unplugged = testbed.unplug(&mut vm, "kbd", UnplugHow::Graceful, Duration::from_secs(10)).await.unwrap();
    assert!(unplugged.guest_saw.unwrap().contains("USB disconnect"));
    let bound = vm
        .agent()
        .exec(&["sh", "-c", "ls /sys/bus/usb/drivers/usbhid/ | grep -c :"], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(bound.stdout_text().trim(), "0", "nothing bound after the unplug");
    let qom = vm.qmp().execute(qapi::qmp::qom_list { path: "/machine/peripheral".into() }).await.unwrap();
    assert!(!qom.iter().any(|p| p.name == "kbd"), "QEMU still has the device");
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_dropping_a_vm_leaves_no_qemu_behind() {
    let vm = Vm::boot(&testenv::vm_config("e2e_dropping_a_vm_leaves_no_qemu_behind"), Vec::new()).await.unwrap();
    let pid = vm.qemu_pid().expect("QEMU is running");
    let dir = vm.dir().to_path_buf();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(vm);
    // SIGKILL is immediate; allow the reaper a moment.
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
    assert!(gone, "QEMU {pid} survived its Vm");
    assert!(!dir.exists(), "the VM's private directory {} was left behind", dir.display());
}
