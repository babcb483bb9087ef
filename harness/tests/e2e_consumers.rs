//! End-to-end: user-space holders in the guest keep GPIO handles open while their provider
//! goes away, and the host records what each observed. These tests pin what the kernel under
//! test (`testenv::kernel()`: vanilla 6.12.117 or the resmgr series on it) answers
//! (docs/kernel-facts.md §2); a kernel that answers differently fails them on purpose, so the change
//! is seen. Run through `cargo xtask test` (it builds the kernels and images).

use std::time::Duration;

use agent::{HoldKind, HoldRequest};
use harness::devices::holders::{Holders, HolderLog};
use harness::devices::providers::{self, GpioSim, GpioVirtuser, LineLookup};
use harness::drive::scenario::{KernelVariant, UnplugHow};
use harness::devices::testbed::Testbed;
use harness::run::vm::Vm;

const ENODEV: i32 = 19;
const POLLERR: i16 = 0x8;
const POLLHUP: i16 = 0x10;

fn request(kind: HoldKind, path: &str, lines: &[u32], outputs: &[u32]) -> HoldRequest {
    HoldRequest {
        kind,
        path: path.to_string(),
        lines: lines.to_vec(),
        outputs: outputs.to_vec(),
        addr: None,
        interval_ms: 20,
        deadline_ms: 20_000,
        keep_going: false,
    }
}

fn failure(log: &HolderLog) -> (String, Option<i32>, Option<i16>) {
    let fail = log.first_failure().unwrap_or_else(|| panic!("no failure recorded: {:#?}", log.records));
    (fail.op.clone(), fail.errno, fail.revents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_consumers_gpio_sim_goes_away_under_held_lines() {
    let vm =
        Vm::boot(&testenv::vm_config("e2e_consumers_gpio_sim_goes_away_under_held_lines"), Vec::new()).await.unwrap();
    let agent = vm.agent().clone();
    let consumers = Holders::new(&agent);
    let sim = GpioSim::create(&agent, "held", 4, &["held0"]).await.unwrap();
    let dev = sim.dev.clone();

    // The watch comes first so that it sees the line request below.
    let watch = consumers.hold(request(HoldKind::GpioChipWatch, &dev, &[0], &[])).await.unwrap();
    let cdev = consumers.hold(request(HoldKind::GpioCdev, &dev, &[0], &[1])).await.unwrap();
    let event = consumers.hold(request(HoldKind::GpioEvent, &dev, &[2], &[])).await.unwrap();
    for handle in [watch, cdev, event] {
        consumers.wait_ready(handle).await.unwrap();
    }
    // An edge on the event line through gpio-sim's pull: a record of the event read.
    sim.pull(&agent, 2, "pull-up").await.unwrap();
    tokio::time::sleep(vm.pace().scale(Duration::from_millis(500))).await;

    sim.unplug(&agent).await.unwrap();
    for handle in [watch, cdev, event] {
        assert!(consumers.wait_stopped(handle, vm.pace().scale(Duration::from_secs(20))).await, "holder {handle} did not stop");
    }
    for log in consumers.logs() {
        println!("{}", log.summary());
        for r in &log.records {
            println!("  {}", serde_json::to_string(r).unwrap());
        }
    }

    let watch_log = consumers.log(watch).unwrap();
    assert!(
        watch_log
            .records
            .iter()
            .any(|r| r.op == "read" && r.detail.as_deref().is_some_and(|d| d.contains("event_type 1"))),
        "the watch saw the line being requested: {:#?}",
        watch_log.records
    );
    let event_log = consumers.log(event).unwrap();
    assert!(event_log.records.iter().any(|r| r.op == "read" && r.ret == Some(48)), "{:#?}", event_log.records);

    // Vanilla 6.12: the line fd answers ioctls with ENODEV, polls on the line and chip fds
    // report the hang-up.
    // The holder alternates get and set; the chip goes away between any two of them, so
    // either ioctl can be the first to see it.
    let (op, errno, _) = failure(&consumers.log(cdev).unwrap());
    assert!(
        ["GPIO_V2_LINE_GET_VALUES_IOCTL", "GPIO_V2_LINE_SET_VALUES_IOCTL"].contains(&op.as_str()),
        "first failure on a line ioctl, got {op}"
    );
    assert_eq!(errno, Some(ENODEV), "{op}");
    let (op, _, revents) = failure(&event_log);
    assert_eq!((op.as_str(), revents.map(|r| r & (POLLHUP | POLLERR))), ("poll", Some(POLLHUP | POLLERR)));
    let (op, _, revents) = failure(&watch_log);
    assert_eq!((op.as_str(), revents.map(|r| r & (POLLHUP | POLLERR))), ("poll", Some(POLLHUP | POLLERR)));

    // Late close after the chip is gone, then the chip's configfs dirs go.
    for handle in [watch, cdev, event] {
        assert!(!consumers.log(handle).unwrap().records.iter().any(|r| r.op == "closed"), "closed before release");
        consumers.release(handle).await.unwrap();
    }
    // A release returns once the holder's `closed` record is filed.
    for handle in [watch, cdev, event] {
        assert!(consumers.log(handle).unwrap().records.iter().any(|r| r.op == "closed"), "holder {handle} not closed");
    }
    sim.remove(&agent).await.unwrap();
    vm.shutdown(Duration::from_secs(20)).await.unwrap();
}

/// i2c-stub as the adapter with an at24 on it: an nvmem-sysfs holder across the at24's
/// `delete_device`, and an SMBus holder on `/dev/i2c-N` across `rmmod i2c-stub`. Vanilla: the
/// open fd pins the adapter's module, so rmmod is refused until the late close. Resmgr: the
/// fd does not pin the adapter; rmmod goes through and the fd's next transfer gets ENODEV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_consumers_i2c_stub_and_at24_go_away_under_held_handles() {
    let vm = Vm::boot(&testenv::vm_config("e2e_consumers_i2c_stub_and_at24_go_away_under_held_handles"), Vec::new())
        .await
        .unwrap();
    let agent = vm.agent().clone();
    let consumers = Holders::new(&agent);
    let t = Duration::from_secs(30);
    let bus = providers::i2c_stub(&agent, 0x50).await.unwrap();
    let adapter = format!("i2c-{bus}");
    let nvmem = providers::at24_new(&agent, bus, "24c02", 0x50).await.unwrap();
    let nvmem = format!("/sys/bus/nvmem/devices/{nvmem}/nvmem");

    let held_nvmem = consumers.hold(request(HoldKind::NvmemSysfs, &nvmem, &[], &[])).await.unwrap();
    let mut i2c = request(HoldKind::I2cSmbus, &format!("/dev/{adapter}"), &[], &[]);
    i2c.addr = Some(0x50);
    i2c.keep_going = true;
    i2c.deadline_ms = 8_000;
    let held_i2c = consumers.hold(i2c).await.unwrap();
    consumers.wait_ready(held_nvmem).await.unwrap();
    consumers.wait_ready(held_i2c).await.unwrap();

    providers::at24_delete(&agent, bus, 0x50).await.unwrap();
    assert!(consumers.wait_stopped(held_nvmem, vm.pace().scale(Duration::from_secs(20))).await);
    let mut rmmod = {
        let agent = agent.clone();
        let timeout = agent.pace().scale(Duration::from_secs(40));
        tokio::spawn(async move { agent.exec(&["rmmod", "i2c-stub"], timeout).await })
    };
    // Vanilla refuses at once. Resmgr completes the removal with the file still open, after
    // the adapter's last reference goes (DEBUG_KOBJECT_RELEASE delays each release by
    // seconds): wait for it, well short of rmmod's own timeout, before the late close.
    let while_held = vm.pace().scale(Duration::from_secs(match testenv::kernel() {
        KernelVariant::Vanilla => 3,
        KernelVariant::Vanilla61 => testenv::not_measured(),
        KernelVariant::Resmgr => 30,
    }));
    let done_while_held = tokio::time::timeout(while_held, &mut rmmod).await.ok();
    let stuck = done_while_held.is_none();
    consumers.release(held_i2c).await.unwrap();
    let rmmod = match done_while_held {
        Some(done) => done,
        None => rmmod.await,
    }
    .unwrap()
    .unwrap();
    for log in consumers.logs() {
        println!("{}", log.summary());
        for r in &log.records {
            println!("  {}", serde_json::to_string(r).unwrap());
        }
    }
    println!("rmmod stuck while held: {stuck}; then {rmmod:?}");

    // Each use is a read and a write back: the removal can come between them (seen on a
    // slowed host), so the first refusal is either.
    let (op, errno, _) = failure(&consumers.log(held_nvmem).unwrap());
    assert!(["pread", "pwrite"].contains(&op.as_str()) && errno == Some(ENODEV), "{op} {errno:?}");
    let i2c_log = consumers.log(held_i2c).unwrap();
    match testenv::kernel() {
        KernelVariant::Vanilla => {
            // The open /dev/i2c-N pins the adapter's module, so rmmod fails at once (EAGAIN
            // from delete_module) rather than hanging; after the late close it succeeds.
            assert!(!stuck && rmmod.status == Some(1), "rmmod while held: {}", rmmod.outcome());
            assert!(rmmod.stderr_text().contains("temporarily unavailable"), "{}", rmmod.stderr_text());
            assert!(i2c_log.first_failure().is_none(), "SMBus reads kept working: {:#?}", i2c_log.records);
            agent.exec_ok(&["rmmod", "i2c-stub"], t).await.unwrap();
        }
        KernelVariant::Vanilla61 => testenv::not_measured(),
        KernelVariant::Resmgr => {
            // The removal does not wait for the file; the file's next transfer gets ENODEV.
            assert!(!stuck && rmmod.status == Some(0), "rmmod while held: {}", rmmod.outcome());
            let (op, errno, _) = failure(&i2c_log);
            assert_eq!((op.as_str(), errno), ("I2C_SMBUS", Some(ENODEV)));
        }
    }
    vm.shutdown(Duration::from_secs(20)).await.unwrap();
}

/// QEMU's usb-kbd as the provider: a hidraw holder across its graceful unplug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_consumers_hidraw_across_usb_kbd_unplug() {
    let mut vm = Vm::boot(&testenv::vm_config("e2e_consumers_hidraw_across_usb_kbd_unplug"), Vec::new()).await.unwrap();
    let agent = vm.agent().clone();
    let consumers = Holders::new(&agent);
    let mut testbed = Testbed::new();
    testbed.plug(&mut vm, "usb-kbd", "kbd").await.unwrap();
    let nodes = agent.exec_ok(&["sh", "-c", "ls /dev/hidraw*"], Duration::from_secs(30)).await.unwrap();
    let node = nodes.stdout_text().lines().next().unwrap_or_default().trim().to_string();
    // Past the hang-up too, to see what the ioctl answers afterwards.
    let mut hidraw = request(HoldKind::Hidraw, &node, &[], &[]);
    hidraw.keep_going = true;
    hidraw.deadline_ms = 4_000;
    let held = consumers.hold(hidraw).await.unwrap();
    consumers.wait_ready(held).await.unwrap();

    let unplug_timeout = vm.pace().scale(Duration::from_secs(10));
    testbed.unplug(&mut vm, "kbd", UnplugHow::Graceful, unplug_timeout).await.unwrap();
    assert!(consumers.wait_stopped(held, vm.pace().scale(Duration::from_secs(20))).await, "hidraw holder did not stop");
    let log = consumers.log(held).unwrap();
    println!("{}", log.summary());
    for r in &log.records {
        println!("  {}", serde_json::to_string(r).unwrap());
    }
    // Vanilla 6.12: poll reports the hang-up (no POLLIN: nothing to read), then the info
    // ioctl answers ENODEV.
    let (op, _, revents) = failure(&log);
    assert_eq!((op.as_str(), revents), ("poll", Some(POLLHUP | POLLERR)));
    let ioctl = log.records.iter().find(|r| r.op == "HIDIOCGRAWINFO" && r.errno.is_some());
    assert_eq!(ioctl.and_then(|r| r.errno), Some(ENODEV), "{:#?}", log.records);
    consumers.release(held).await.unwrap();
    vm.shutdown(Duration::from_secs(20)).await.unwrap();
}

/// An in-kernel consumer (gpio-virtuser, lines by name) keeps its descriptor while the
/// gpio-sim chip goes away under it, then reads the line through debugfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_consumers_gpio_virtuser_holds_a_line_of_a_removed_chip() {
    let vm = Vm::boot(&testenv::vm_config("e2e_consumers_gpio_virtuser_holds_a_line_of_a_removed_chip"), Vec::new())
        .await
        .unwrap();
    let agent = vm.agent().clone();
    let sim = GpioSim::create(&agent, "vsim", 2, &["vline0"]).await.unwrap();
    let user = GpioVirtuser::create(&agent, "vuser", "foo", &[LineLookup::Name("vline0")]).await.unwrap();
    let before = user.get(&agent, 0, "value").await.unwrap();
    sim.unplug(&agent).await.unwrap();
    let after = user.get(&agent, 0, "value").await.unwrap();
    println!("value before: {before:?}; after live=0: {after:?}");
    // Vanilla 6.12: the descriptor outlives its chip; gpiolib answers ENODEV.
    assert_eq!(before, Ok("0".to_string()));
    assert!(after.as_ref().is_err_and(|e| e.contains("No such device")), "{after:?}");
    user.remove(&agent).await.unwrap();
    sim.remove(&agent).await.unwrap();
    vm.shutdown(Duration::from_secs(20)).await.unwrap();
}
