//! End-to-end: hold sessions (what `cargo xtask boot --hold KIND... --unplug HOW` runs) against
//! the gpio-sim and emulated CP2112 providers, every consumer kind, each unplug method a
//! provider has. The assertions pin what the kernel under test (`testenv::kernel()`) answers;
//! a kernel that answers differently fails them on purpose, so the change is seen. Run through
//! `cargo xtask test`.

use std::time::Duration;

use agent::HoldKind;
use harness::run::console::LineCursor;
use harness::drive::hold_session::{self, HoldPlan, HoldReport, HolderReport};
use harness::drive::scenario::{KernelVariant, UnplugHow};
use harness::judge::observe::ObserverOutcome;
use harness::devices::testbed::Testbed;
use harness::run::vm::Vm;

const ENODEV: i32 = 19;
const ETIMEDOUT: i32 = 110;
const ESHUTDOWN: i32 = 108;
const POLLERR: i16 = 0x8;
const POLLHUP: i16 = 0x10;

const GPIO_KINDS: [HoldKind; 6] = [
    HoldKind::GpioChipWatch,
    HoldKind::GpioAggregator,
    HoldKind::GpioCdev,
    HoldKind::GpioEvent,
    HoldKind::GpioVirtuser,
    HoldKind::GpioVirtuserIrq,
];

fn plan(provider: &str, kinds: &[HoldKind], how: UnplugHow) -> HoldPlan {
    HoldPlan {
        provider: provider.to_string(),
        kinds: kinds.to_vec(),
        how,
        before: Duration::from_secs(1),
        after: Duration::from_secs(3),
        unplug_timeout: Duration::from_secs(30),
    }
}

fn print(report: &HoldReport) {
    println!("{} {:?}: unplug {:?}", report.provider, report.how, report.unplug);
    for h in &report.holders {
        println!("  {} release {:?}", h.summary, h.release_error);
        for r in &h.records {
            println!("    {}", serde_json::to_string(r).unwrap());
        }
    }
    println!("  taint {:?}, crashes {:?}", report.taint, report.crashes);
}

fn holder(report: &HoldReport, kind: HoldKind) -> &HolderReport {
    report.holders.iter().find(|h| h.kind == kind).unwrap_or_else(|| panic!("no {kind:?} holder"))
}

/// The op and errno of the holder's first error record.
fn first_errno(report: &HoldReport, kind: HoldKind) -> Option<(String, i32)> {
    holder(report, kind).records.iter().find_map(|r| r.errno.map(|e| (r.op.clone(), e)))
}

/// The first poll revents with POLLHUP or POLLERR.
fn hangup(report: &HoldReport, kind: HoldKind) -> Option<i16> {
    holder(report, kind).records.iter().filter(|r| r.op == "poll").find_map(|r| r.revents).map(|r| r & (POLLHUP | POLLERR))
}

/// Every holder started, used its handle, and was closed late.
fn assert_all_held_and_closed(report: &HoldReport) {
    for h in &report.holders {
        assert!(h.setup_error.is_none(), "{:?} did not start: {:?}", h.kind, h.setup_error);
        assert!(h.records.iter().any(|r| r.op == "open"), "{:?}: no open record", h.kind);
        assert!(h.records.len() >= 2, "{:?} never used its handle: {:?}", h.kind, h.records);
        assert!(h.release_error.is_none(), "{:?} release: {:?}", h.kind, h.release_error);
        assert!(h.records.iter().any(|r| r.op == "closed"), "{:?} was not closed", h.kind);
    }
}

/// gpio-sim: every GPIO kind across `live=0`, then across a driver unbind, in one guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_hold_gpio_sim_every_gpio_kind_across_live_0_and_unbind() {
    let mut vm = Vm::boot(&testenv::vm_config("e2e_hold_gpio_sim_every_gpio_kind_across_live_0_and_unbind"), Vec::new())
        .await
        .unwrap();
    let mut testbed = Testbed::new();
    for (id, how) in [("sim0", UnplugHow::Graceful), ("sim1", UnplugHow::Unbind)] {
        testbed.plug(&mut vm, "gpio-sim", id).await.unwrap();
        let report = hold_session::run(&mut vm, &mut testbed, &plan(id, &GPIO_KINDS, how), LineCursor::default())
            .await
            .unwrap();
        print(&report);
        assert!(report.unplug.is_ok(), "{how:?}: {:?}", report.unplug);
        assert_all_held_and_closed(&report);
        // Vanilla 6.12, both ways: line fds, in-kernel descriptors and the aggregator's
        // forwarded lines get ENODEV, polls on the
        // line and chip fds report the hang-up, and nothing crashes.
        for kind in [HoldKind::GpioCdev, HoldKind::GpioVirtuser, HoldKind::GpioVirtuserIrq, HoldKind::GpioAggregator] {
            let (_, errno) = first_errno(&report, kind).unwrap_or_else(|| panic!("{how:?} {kind:?}: no error"));
            assert_eq!(errno, ENODEV, "{how:?} {kind:?}");
        }
        // Before the unplug the in-kernel consumer drove its line (output, toggled).
        let virtuser = holder(&report, HoldKind::GpioVirtuser);
        assert!(virtuser.records.iter().any(|r| r.op == "gpiod_set_value" && r.ret == Some(0)), "{:?}", virtuser.records);
        for kind in [HoldKind::GpioEvent, HoldKind::GpioChipWatch] {
            assert_eq!(hangup(&report, kind), Some(POLLHUP | POLLERR), "{how:?} {kind:?}");
        }
        // The observers read the guest with the handles held and again after the late closes.
        for observations in [&report.observations, &report.observations_after_release] {
            assert!(observations.iter().any(|o| o.path == "/proc/interrupts"), "{how:?}: {observations:?}");
            assert!(observations.iter().all(|o| o.outcome == ObserverOutcome::Ok), "{how:?}: {observations:?}");
        }
        assert!(report.crashes.is_empty(), "{how:?}: {:?}", report.crashes);
        assert_eq!(report.taint, Some(0));
        assert!(!report.has_findings());
    }
    // The unbound chip is still plugged: bound again, it comes back as a usable gpiochip.
    assert!(testbed.nodes("sim1").is_none());
    let bound = testbed.bind(&mut vm, "sim1").await.unwrap();
    let chip = testbed.nodes("sim1").and_then(|n| n.gpiochip.clone()).unwrap();
    println!("{bound:?}");
    let report = hold_session::run(&mut vm, &mut testbed, &plan("sim1", &[HoldKind::GpioCdev], UnplugHow::Graceful), LineCursor::default())
        .await
        .unwrap();
    assert_eq!(report.nodes.gpiochip.as_deref(), Some(chip.as_str()));
    assert_all_held_and_closed(&report);
    assert_eq!(first_errno(&report, HoldKind::GpioCdev).map(|(_, e)| e), Some(ENODEV));
    vm.shutdown(Duration::from_secs(20)).await.unwrap();
}

/// The seed's chain: every consumer kind on the emulated CP2112 and its at24 across a graceful
/// USB unplug. Vanilla: the in-kernel nvmem consumer reads at24 data freed by the unplug
/// (kernel-facts B1), and the session reports it. Resmgr: the in-kernel nvmem consumers, C and
/// Rust, get ENODEV and nothing is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_hold_cp2112_every_kind_across_a_usb_unplug() {
    let mut vm =
        Vm::boot(&testenv::vm_config("e2e_hold_cp2112_every_kind_across_a_usb_unplug"), Vec::new()).await.unwrap();
    let mut testbed = Testbed::new();
    testbed.plug(&mut vm, "cp2112", "bridge").await.unwrap();
    let kernel = testenv::kernel();
    // nvmem-kernel-rs is the resmgr series' Rust sample: not in vanilla.
    let kinds: Vec<HoldKind> =
        HoldKind::ALL.into_iter().filter(|k| kernel == KernelVariant::Resmgr || *k != HoldKind::NvmemKernelRs).collect();
    let report = hold_session::run(&mut vm, &mut testbed, &plan("bridge", &kinds, UnplugHow::Graceful), LineCursor::default())
        .await
        .unwrap();
    print(&report);
    assert!(report.unplug.is_ok(), "{:?}", report.unplug);
    for h in &report.holders {
        assert!(h.setup_error.is_none(), "{:?} did not start: {:?}", h.kind, h.setup_error);
        assert!(h.records.len() >= 2, "{:?} never used its handle: {:?}", h.kind, h.records);
    }
    // User-space handles: the kernel answers an error, not a crash.
    let (op, errno) = first_errno(&report, HoldKind::GpioCdev).expect("gpio-cdev saw no error");
    assert!(op.starts_with("GPIO_V2_LINE_") && errno != 0);
    assert!(first_errno(&report, HoldKind::NvmemSysfs).is_some(), "nvmem-sysfs saw no error");
    assert!(first_errno(&report, HoldKind::I2cDev).is_some(), "i2c-dev saw no error");
    match kernel {
        KernelVariant::Vanilla => {
            // The in-kernel nvmem consumer: use after free of the at24/regmap data.
            assert!(
                report.crashes.iter().any(|c| c.title.starts_with("KASAN: slab-use-after-free")
                    && ["at24_read", "regmap"].iter().any(|f| c.title.contains(f))),
                "{:?}",
                report.crashes
            );
            assert!(report.taint.is_some_and(|t| t & (1 << 5) != 0), "taint B (bad page) from KASAN: {:?}", report.taint);
            assert!(report.has_findings());
        }
        KernelVariant::Vanilla61 => testenv::not_measured(),
        KernelVariant::Resmgr => {
            // ENODEV once nvmem has revoked the provider; a read in flight during the USB
            // disconnect may first time out (ETIMEDOUT) or be refused (ESHUTDOWN) below it.
            for kind in [HoldKind::NvmemKernel, HoldKind::NvmemKernelRs] {
                let (op, errno) = first_errno(&report, kind).unwrap_or_else(|| panic!("{kind:?}: no error"));
                assert!(op == "nvmem_device_read" && [ENODEV, ETIMEDOUT, ESHUTDOWN].contains(&errno), "{kind:?}: {op} {errno}");
            }
            assert!(report.crashes.is_empty(), "{:?}", report.crashes);
            // No B (bad page) or W (warning); O is our out-of-tree nvmem-holder module.
            assert_eq!(report.taint.map(|t| t & (1 << 5 | 1 << 9)), Some(0), "{:?}", report.taint);
        }
    }
    vm.shutdown(Duration::from_secs(20)).await.unwrap();
}

/// hid-cp2112 unbound in sysfs while `/dev/i2c-N` is open. Vanilla: cp2112_remove waits in
/// i2c_del_adapter for the fd's reference (kernel-facts B6), the unbind does not return, the
/// hung-task detector reports it, and the late close lets it finish. Resmgr: the unbind
/// returns, the fd's transfers get ENODEV, nothing is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_hold_cp2112_unbind_under_an_open_i2c_dev() {
    let mut vm = Vm::boot(
        &testenv::vm_config("e2e_hold_cp2112_unbind_under_an_open_i2c_dev"),
        Vec::new(),
    )
    .await
    .unwrap();
    let mut testbed = Testbed::new();
    testbed.plug(&mut vm, "cp2112", "bridge").await.unwrap();
    let kinds = [HoldKind::I2cDev, HoldKind::NvmemSysfs, HoldKind::Hidraw, HoldKind::GpioCdev];
    let report =
        hold_session::run(&mut vm, &mut testbed, &plan("bridge", &kinds, UnplugHow::Unbind), LineCursor::default())
            .await
            .unwrap();
    print(&report);
    match testenv::kernel() {
        KernelVariant::Vanilla => {
            let unplug = report.unplug.as_ref().expect_err("the unbind returned while /dev/i2c-N was open");
            assert!(unplug.contains("timed out"), "{unplug}");
            assert!(report.crashes.iter().any(|c| c.title == "INFO: task hung in cp2112_remove"), "{:?}", report.crashes);
        }
        KernelVariant::Vanilla61 => testenv::not_measured(),
        KernelVariant::Resmgr => {
            assert!(report.unplug.is_ok(), "{:?}", report.unplug);
            assert_eq!(first_errno(&report, HoldKind::I2cDev).map(|(_, e)| e), Some(ENODEV));
            assert!(report.crashes.is_empty(), "{:?}", report.crashes);
        }
    }
    // After the late close (at the latest) the removal completes: the adapter is gone.
    let left = vm
        .agent()
        .exec(&["sh", "-c", "sleep 2; grep -l CP2112 /sys/bus/i2c/devices/i2c-*/name"], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(left.stdout_text().trim(), "", "the CP2112 adapter outlived the late close");
    vm.shutdown(Duration::from_secs(20)).await.unwrap();
}
