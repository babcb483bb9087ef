//! End-to-end: our vhost-user-i2c backend (+ at24) behind QEMU's `vhost-user-i2c-pci`,
//! hot-plugged on a PCIe root port, driven by Linux 6.12's i2c-virtio in the guest. Run
//! through `cargo xtask test`.

use std::time::Duration;

use harness::run::qmp::QmpError;
use harness::drive::scenario::{KernelVariant, UnplugHow};
use harness::drive::schedule::PlannedFault;
use harness::devices::testbed::{seed_pattern, Testbed};
use harness::run::vm::Vm;

const T: Duration = Duration::from_secs(30);

async fn sh(vm: &Vm, script: &str) -> String {
    let out = vm.agent().exec_ok(&["sh", "-c", script], T).await.unwrap_or_else(|e| panic!("{script}: {e}"));
    out.stdout_text().trim().to_string()
}

/// This process's vhost-user-i2c threads (ours and the daemon's vring worker).
fn backend_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("vhost-i2c") || comm.starts_with("vring"))
        .count()
}

async fn gone(vm: &Vm, path: &str) -> bool {
    vm.agent().exec(&["test", "-e", path], T).await.map(|o| !o.success()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_virtio_i2c_at24_reads_writes_and_unplugs_in_cycles() {
    let mut vm = Vm::boot(&testenv::vm_config("e2e_virtio_i2c_at24_reads_writes_and_unplugs_in_cycles"), Vec::new()).await.unwrap();
    let chardevs_before = vm.qmp().chardev_ids().await.unwrap();
    let mut testbed = Testbed::new();

    let plugged = testbed.plug(&mut vm, "virtio-i2c", "vi2c").await.unwrap();
    eprintln!("plug: {plugged:?}");
    let nodes = testbed.nodes("vi2c").unwrap().clone();
    let bus = nodes.i2c_bus.unwrap();
    assert_eq!(sh(&vm, &format!("cat /sys/bus/i2c/devices/i2c-{bus}/name")).await, format!("i2c_virtio at virtio bus {}", nodes.driver.as_ref().unwrap().1.trim_start_matches("virtio")));
    let nvmem = format!("/sys/bus/nvmem/devices/{}/nvmem", nodes.nvmem[0].1);

    // nvmem reads back what the host seeded, through virtio-i2c and our backend.
    let read = vm.agent().read_file(&nvmem).await.unwrap();
    assert_eq!(read, seed_pattern(256), "nvmem contents");
    // A guest write lands in the model; a host change shows up in the guest.
    sh(&vm, &format!("printf '\\132' | dd of={nvmem} bs=1 seek=16 conv=notrunc 2>/dev/null")).await;
    let eeprom = testbed.eeprom("vi2c", 0x50).unwrap();
    assert_eq!(eeprom.lock().unwrap().contents()[16], 0x5a);
    eeprom.lock().unwrap().seed(200, b"host");
    assert_eq!(&vm.agent().read_file(&nvmem).await.unwrap()[200..204], b"host");
    let counters = testbed.virtio_i2c("vi2c").unwrap().counters();
    assert!(counters.reads > 0 && counters.writes > 0, "{counters:?}");
    assert_eq!(counters.malformed, 0, "{counters:?}");
    assert!(backend_threads() >= 3, "supervisor, request and vring threads while plugged");

    // Graceful unplug: adapter and nvmem go, DEVICE_DELETED, the chardev is removed, the
    // backend's threads end.
    let adapter = format!("/sys/bus/i2c/devices/i2c-{bus}");
    let deadline = vm.pace().scale(T);
    let out = testbed.unplug(&mut vm, "vi2c", UnplugHow::Graceful, deadline).await.unwrap();
    eprintln!("unplug: {out:?}");
    assert!(gone(&vm, &adapter).await && gone(&vm, &nvmem).await);
    assert_eq!(vm.qmp().chardev_ids().await.unwrap(), chardevs_before);
    assert_eq!(backend_threads(), 0);

    // Cycles: each plug binds and instantiates the at24 again, each unplug removes it all.
    for cycle in 0..10 {
        let how = if cycle % 2 == 0 { UnplugHow::Graceful } else { UnplugHow::Surprise };
        testbed.plug(&mut vm, "virtio-i2c", "vi2c").await.unwrap_or_else(|e| panic!("plug {cycle}: {e:#}"));
        let nodes = testbed.nodes("vi2c").unwrap().clone();
        let nvmem = format!("/sys/bus/nvmem/devices/{}/nvmem", nodes.nvmem[0].1);
        assert_eq!(vm.agent().read_file(&nvmem).await.unwrap()[..8], seed_pattern(8)[..], "cycle {cycle}");
        let out = testbed
            .unplug(&mut vm, "vi2c", how, deadline)
            .await
            .unwrap_or_else(|e| panic!("unplug {cycle} ({}): {e:#}", how.name()));
        let saw = out.guest_saw.unwrap_or_default();
        if how == UnplugHow::Surprise {
            assert!(saw.contains("stays"), "after the backend went away the adapter stays until device_del: {saw}");
        }
        assert!(gone(&vm, &format!("/sys/bus/i2c/devices/i2c-{}", nodes.i2c_bus.unwrap())).await, "cycle {cycle}");
        assert!(gone(&vm, &nvmem).await, "cycle {cycle}");
    }
    assert_eq!(vm.qmp().chardev_ids().await.unwrap(), chardevs_before, "no chardev leaked");
    assert_eq!(backend_threads(), 0, "no backend thread leaked");
    let sockets = std::fs::read_dir(vm.dir()).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("-vu")).count();
    assert_eq!(sockets, 0, "no socket file left");
    let console = std::fs::read_to_string(vm.log_dir().join("console.log")).unwrap();
    assert!(!console.contains("BUG:") && !console.contains("WARNING:"), "the guest complained; see console.log");
}

fn is_stuck(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<QmpError>(), Some(QmpError::UnplugStuck { .. })))
}

/// Polls until this process has no backend thread left, within `deadline`.
async fn backend_threads_end(deadline: Duration) -> bool {
    let start = std::time::Instant::now();
    while backend_threads() > 0 {
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// A device QEMU may still have after its unplug failed (no `DEVICE_DELETED` in time) keeps its
/// backend serving, so a late removal still completes, and then the testbed ends its backend
/// (`reap_lingering`); once the VM is shut down
/// `Testbed::finish` joins every backend thread and QEMU is gone. With `/dev/i2c-N` held the
/// removal never completes on vanilla (i2c_del_adapter waits for the adapter's last
/// reference, kernel-facts B6); on resmgr it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_virtio_i2c_stuck_unplugs_shut_down_cleanly() {
    let mut vm = Vm::boot(&testenv::vm_config("e2e_virtio_i2c_stuck_unplugs_shut_down_cleanly"), Vec::new()).await.unwrap();
    let mut testbed = Testbed::new();

    // A deadline no removal meets: stuck for us; the guest completes it later, QEMU deletes
    // the device and hangs up on the backend, whose threads end.
    testbed.plug(&mut vm, "virtio-i2c", "late").await.unwrap();
    let before_unplug = vm.qmp().cursor();
    let err = testbed.unplug(&mut vm, "late", UnplugHow::Graceful, Duration::from_millis(1)).await.unwrap_err();
    assert!(is_stuck(&err), "{err:#}");
    assert!(backend_threads() >= 1, "the backend of a device QEMU still has keeps serving it");
    vm.qmp()
        .wait_event(before_unplug, "the late DEVICE_DELETED", vm.pace().scale(T), |e| harness::run::qmp::is_device_deleted(e, "late"))
        .await
        .unwrap();
    // QEMU keeps a vhost-user chardev, and its connection, after the device: the backend
    // serves on until the testbed removes the chardev.
    assert!(backend_threads() >= 1, "QEMU hung up on the backend with the device's removal");
    testbed.reap_lingering(&mut vm).await.unwrap();
    assert!(backend_threads_end(vm.pace().scale(T)).await, "the late removal did not end the backend");

    // /dev/i2c-N held across device_del.
    testbed.plug(&mut vm, "virtio-i2c", "held").await.unwrap();
    let bus = testbed.nodes("held").unwrap().i2c_bus.unwrap();
    let open = sh(&vm, &format!("(exec 3</dev/i2c-{bus}; sleep 600) </dev/null >/dev/null 2>&1 & sleep 0.2; ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c ' /dev/i2c-{bus}$'")).await;
    assert_eq!(open, "1", "one process holds /dev/i2c-{bus}");
    let deadline = vm.pace().scale(Duration::from_secs(10));
    let unplug = testbed.unplug(&mut vm, "held", UnplugHow::Graceful, deadline).await;
    match testenv::kernel() {
        KernelVariant::Vanilla => {
            let err = unplug.unwrap_err();
            assert!(is_stuck(&err), "{err:#}");
            assert!(backend_threads() >= 1, "the stuck device's backend still serves it");
        }
        KernelVariant::Resmgr => {
            unplug.unwrap_or_else(|e| panic!("resmgr: the removal completes with /dev/i2c-{bus} open: {e:#}"));
            assert_eq!(backend_threads(), 0);
        }
        KernelVariant::Vanilla61 => testenv::not_measured(),
    }

    let qemu = vm.qemu_pid().unwrap();
    vm.shutdown(T).await.unwrap();
    testbed.finish().await.unwrap();
    assert_eq!(backend_threads(), 0, "no backend thread outlives the VM");
    assert!(!std::path::Path::new(&format!("/proc/{qemu}")).exists(), "QEMU {qemu} is gone");
}

fn fault(planned: impl FnOnce(&mut PlannedFault)) -> PlannedFault {
    let mut f = PlannedFault { id: "vi2c".into(), reply_delay_ms: 0.0, busy: 0, transfer_error: None, nak: false, stall_ep0: false, unplug_after_transfers: None, unplug_how: None };
    planned(&mut f);
    f
}

/// The backend's faults as the guest sees them: NAK and error fail the at24 read (-EIO), a
/// reply delay slows every message, and vanishing as a transfer starts leaves that transfer's
/// reader waiting (i2c-virtio has no timeout) while the backend's threads end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_virtio_i2c_faults_reach_the_guest() {
    let mut vm = Vm::boot(&testenv::vm_config("e2e_virtio_i2c_faults_reach_the_guest"), Vec::new()).await.unwrap();
    let mut testbed = Testbed::new();
    testbed.plug(&mut vm, "virtio-i2c", "vi2c").await.unwrap();
    let nvmem = format!("/sys/bus/nvmem/devices/{}/nvmem", testbed.nodes("vi2c").unwrap().nvmem[0].1);
    let read = format!("cat {nvmem} | wc -c");

    for (name, f) in [("nak", fault(|f| f.nak = true)), ("error", fault(|f| f.transfer_error = Some(1)))] {
        testbed.set_faults(&f).unwrap();
        let errors = testbed.virtio_i2c("vi2c").unwrap().counters().errors;
        let out = vm.agent().exec(&["sh", "-c", &format!("cat {nvmem} >/dev/null")], T).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.success() && stderr.contains("error"), "{name}: the read must fail: {stderr}");
        assert!(testbed.virtio_i2c("vi2c").unwrap().counters().errors > errors, "{name}");
        testbed.set_faults(&fault(|_| {})).unwrap();
        assert_eq!(sh(&vm, &read).await, "256", "{name} cleared");
    }

    // 256 bytes are two at24 transfers of two messages each: at least four delays.
    testbed.set_faults(&fault(|f| f.reply_delay_ms = 50.0)).unwrap();
    let start = std::time::Instant::now();
    assert_eq!(sh(&vm, &read).await, "256");
    assert!(start.elapsed() >= Duration::from_millis(200), "a delayed read took {:?}", start.elapsed());
    testbed.set_faults(&fault(|_| {})).unwrap();

    // Vanish as the next transfer starts: the reader stays blocked, the backend goes.
    let transfers = testbed.virtio_i2c("vi2c").unwrap().counters().transfers;
    testbed.set_faults(&fault(|f| {
        f.unplug_after_transfers = Some(1);
        f.unplug_how = Some(UnplugHow::Surprise);
    }))
    .unwrap();
    sh(&vm, &format!("(cat {nvmem} >/dev/null; echo $? >/tmp/vanished-read) </dev/null >/dev/null 2>&1 &")).await;
    assert!(backend_threads_end(vm.pace().scale(T)).await, "the backend did not go away");
    assert_eq!(testbed.virtio_i2c("vi2c").unwrap().counters().transfers, transfers + 1);
    assert!(gone(&vm, "/tmp/vanished-read").await, "the read of the vanished transfer returned");

    vm.shutdown(T).await.unwrap();
    testbed.finish().await.unwrap();
    assert_eq!(backend_threads(), 0);
}
