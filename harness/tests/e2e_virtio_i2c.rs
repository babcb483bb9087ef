//! End-to-end: our vhost-user-i2c backend (+ at24) behind QEMU's `vhost-user-i2c-pci`,
//! hot-plugged on a PCIe root port, driven by Linux 6.12's i2c-virtio in the guest. Run
//! through `cargo xtask test`.

use std::time::Duration;

use harness::scenario::UnplugHow;
use harness::testbed::{seed_pattern, Testbed};
use harness::testenv;
use harness::vm::Vm;

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
