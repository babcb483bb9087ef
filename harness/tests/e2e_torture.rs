//! End-to-end: run shipped scenarios' schedules in a real VM, on the kernel under test
//! (`testenv::kernel()`), and check what was recorded: the scenario's expectation for that
//! kernel (the titles on the console), and what each kernel does in detail.

use std::time::Duration;

use harness::drive::scenario::{KernelVariant, Scenario};
use harness::drive::schedule::{self, Action};
use harness::devices::testbed::Testbed;
use harness::drive::torture::{run_schedule, RunOptions, StepRecord, StepStatus};
use harness::judge::observe::ObserverOutcome;
use harness::run::vm::Vm;

fn scenario(name: &str) -> Scenario {
    Scenario::load(&harness::paths::repo_root().join("scenarios").join(format!("{name}.yaml"))).unwrap()
}

/// The one-line summary of holder `name` from its (first) release step, whether the release
/// returned (the summary heads the output) or failed (it follows the error).
fn release_summary(steps: &[StepRecord], name: &str) -> String {
    let step = steps.iter().find(|s| matches!(&s.action, Action::Release { name: n } if n == name));
    let text = match step.map(|s| (&s.status, &s.output)) {
        Some((StepStatus::Failed(detail), _)) => detail.clone(),
        Some((_, output)) => output.clone().unwrap_or_default(),
        None => panic!("no release of {name}"),
    };
    text.lines().find(|l| l.starts_with("holder ")).unwrap_or_default().to_string()
}

/// The bugs on the VM's console so far (each titled after its first report, follow-ons
/// folded in, as runs file them), checked against the scenario's expectation for the kernel
/// under test.
fn assert_expected(vm: &Vm, name: &str) -> Vec<String> {
    use report::{bugs::Bugs, collect};
    let console: String = vm.console().lines_since(Default::default()).into_iter().map(|l| l.text + "\n").collect();
    let collected = report::parse_collected(console.as_bytes(), collect::MAX_TITLES);
    let titles: Vec<String> = Bugs::of(&collected).bugs().iter().map(|b| b.first.title.clone()).collect();
    let refs: Vec<&str> = titles.iter().map(String::as_str).collect();
    let kernel = testenv::kernel();
    let misses = scenario(name).expectation(kernel).mismatches(&refs, &[]);
    assert!(misses.is_empty(), "{name} on {kernel}: {misses:?} (titles: {titles:?})");
    titles
}

async fn run(name: &str, test: &str, seed: u64) -> (Vm, Vec<StepRecord>) {
    let scenario = scenario(name);
    let schedule = schedule::plan(&scenario, seed);
    let mut config = testenv::vm_config(test);
    config.cmdline.extend(schedule.cmdline.iter().cloned());
    let mut vm = Vm::boot(&config, Vec::new()).await.unwrap();
    let mut testbed = Testbed::new();
    let mut steps = Vec::new();
    run_schedule(&mut vm, &mut testbed, &schedule, testenv::kernel(), &RunOptions::default(), |s| steps.push(s.clone()))
        .await
        .unwrap();
    assert_eq!(steps.len(), schedule.actions.len());
    (vm, steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_usb_kbd_cycle_runs_clean() {
    let (vm, steps) = run("usb-kbd-cycle", "e2e_usb_kbd_cycle_runs_clean", 1).await;
    for s in &steps {
        assert_eq!(s.status, StepStatus::Ok, "step {} ({}) failed", s.index, s.description);
        assert_eq!(s.taint, Some(0), "step {} tainted the kernel", s.index);
    }
    let unplugs = steps.iter().filter(|s| matches!(s.action, Action::Unplug { .. })).count();
    assert_eq!(unplugs, 5);
    // Every step left its marker in the kernel log.
    let markers = vm.console().lines_since(Default::default()).iter().filter(|l| l.text.contains("unplug-torture: step ")).count();
    assert_eq!(markers, steps.len());
    let observe = steps.iter().find(|s| matches!(s.action, Action::Observe)).unwrap();
    assert!(observe.observations.iter().any(|o| o.path == "/proc/interrupts" && o.outcome == ObserverOutcome::Ok));
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// kernel-facts B4. Vanilla 6.12.117: the torn-down gpio-virtuser leaves an IRQ action whose
/// name lives in freed memory, and reading /proc/interrupts trips KASAN; if it stops firing,
/// either the kernel changed or the harness stopped driving the scenario. Resmgr: the IRQ is
/// freed with the consumer, and the same steps are clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_gpio_virtuser_irq_teardown() {
    let (vm, steps) = run("gpio-virtuser-irq-teardown", "e2e_gpio_virtuser_irq_teardown", 1).await;
    let failed: Vec<_> = steps.iter().filter(|s| s.status != StepStatus::Ok).map(|s| &s.description).collect();
    assert!(failed.is_empty(), "steps failed: {failed:?}");
    let before = steps.iter().find(|s| s.description.contains("live") && s.description.contains("\"0\"")).unwrap();
    let observe = steps.iter().find(|s| matches!(s.action, Action::Observe)).unwrap();
    assert!(observe.index > before.index);
    assert_eq!(before.taint.map(|t| t & 32), Some(0));
    match testenv::kernel() {
        KernelVariant::Vanilla => {
            // KASAN's taint flag (B = bit 5) appears with the observe step, not before.
            assert_eq!(observe.taint.map(|t| t & 32), Some(32), "no KASAN taint after reading /proc/interrupts");
            let kasan = vm
                .console()
                .wait_for(Default::default(), "BUG: KASAN: slab-use-after-free", Duration::from_secs(5))
                .await
                .unwrap();
            assert!(kasan.text.contains("string"), "{}", kasan.text);
        }
        KernelVariant::Vanilla61 => testenv::not_measured(),
        KernelVariant::Resmgr => {
            assert_eq!(observe.taint, Some(0), "the kernel was tainted reading /proc/interrupts");
        }
    }
    assert_expected(&vm, "gpio-virtuser-irq-teardown");
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// kernel-facts B6. Vanilla 6.12.117: an open /dev/i2c-N keeps i2c_del_adapter() waiting, so
/// the CP2112's USB disconnect hangs in hub_wq until the file is closed. Resmgr: the USB
/// device's removal completes with the file open (the scenario's resmgr-only step checks it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cp2112_unplug_with_i2c_dev_open() {
    let (vm, steps) = run("cp2112-i2c-dev-held", "e2e_cp2112_i2c_dev_held", 1).await;
    // The other kernel's step is recorded as not on this kernel.
    let failed: Vec<_> = steps.iter().filter(|s| s.status.failed()).map(|s| &s.description).collect();
    assert!(failed.is_empty(), "steps failed: {failed:?}");
    assert!(steps.iter().any(|s| matches!(s.status, StepStatus::NotOnThisKernel(_))), "{steps:#?}");
    let held = steps.iter().find(|s| matches!(s.action, Action::Exec { .. })).unwrap();
    assert_eq!(held.output.as_deref().map(str::trim), Some("1"), "the i2c-dev file was not held open");
    assert_expected(&vm, "cp2112-i2c-dev-held");
    if testenv::kernel() == KernelVariant::Resmgr {
        vm.shutdown(Duration::from_secs(10)).await.unwrap();
        return;
    }
    let lines = vm.console().lines_since(Default::default());
    let report: Vec<&str> = lines
        .iter()
        .map(|l| l.text.as_str())
        .skip_while(|l| !l.contains("blocked for more than"))
        .take(60)
        .collect();
    assert!(report.iter().any(|l| l.contains("i2c_del_adapter")), "{report:#?}");
    assert!(report.iter().any(|l| l.contains("cp2112_remove")), "{report:#?}");
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// kernel-facts B1 / S1, the seed's chain: an in-kernel nvmem holder outlives the at24 behind
/// an unplugged CP2112. Vanilla 6.12.117: its next read touches at24's freed devm data.
/// Resmgr: the read answers -ENODEV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_nvmem_holder_read_after_cp2112_unplug() {
    let (vm, steps) = run("nvmem-holder-cp2112-unplug", "e2e_nvmem_holder_cp2112_unplug", 2).await;
    let mut reads = steps.iter().filter(|s| matches!(s.action, Action::Exec { .. }));
    let first_read = reads.next().unwrap();
    assert_eq!(first_read.status, StepStatus::Ok, "holding the at24 nvmem failed: {:?}", first_read.output);
    assert_eq!(first_read.taint.map(|t| t & 32), Some(0), "KASAN before the unplug");
    if testenv::kernel() == KernelVariant::Resmgr {
        let late_read = reads.next().unwrap();
        assert_eq!(late_read.output.as_deref().map(str::trim), Some("-19"), "{late_read:?}");
        assert_expected(&vm, "nvmem-holder-cp2112-unplug");
        vm.shutdown(Duration::from_secs(10)).await.unwrap();
        return;
    }
    let kasan = vm
        .console()
        .wait_until(Default::default(), "a KASAN report in at24_read", Duration::from_secs(10), |l| {
            l.contains("BUG: KASAN: slab-use-after-free in") && (l.contains("at24_read") || l.contains("regmap"))
        })
        .await;
    assert!(kasan.is_ok(), "{kasan:?}");
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// `hold:`/`release:` steps: holders on the CP2112's nodes across a seeded unplug, late
/// closes, and what each saw in the step records. Vanilla 6.12.117: errors, no crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cp2112_held_across_unplug_records_what_each_holder_saw() {
    let (vm, steps) =
        run("cp2112-held-across-unplug", "e2e_cp2112_held_across_unplug_records_what_each_holder_saw", 1).await;
    for s in &steps {
        assert_eq!(s.status, StepStatus::Ok, "step {} ({}) failed: {:?}", s.index, s.description, s.output);
    }
    let releases: Vec<&StepRecord> = steps.iter().filter(|s| matches!(s.action, Action::Release { .. })).collect();
    assert_eq!(releases.len(), 12);
    for r in &releases {
        let out = r.output.as_deref().unwrap_or_default();
        // The holder's summary, then its records, ending with the late close.
        assert!(out.starts_with("holder "), "{out}");
        assert!(out.lines().any(|l| l.contains("\"op\":\"open\"")) && out.lines().last().is_some_and(|l| l.contains("\"op\":\"closed\"")), "{out}");
    }
    let summary = |name: &str| release_summary(&steps, name);
    // Which "device gone" error a call gets depends on where in the teardown it lands (the
    // HID transport answers ESHUTDOWN or times out while the USB device goes; gpiolib and
    // i2c-dev answer ENODEV after): any of them, but an error, and on the right call.
    //
    // A GPIO request in flight when the CP2112 goes may wait out USB's 5 s control timeout,
    // and hid-cp2112's gpio set() returns void in 6.12: a line holder caught in a write
    // then sees it "succeed" 5 s later, after its release came. Its summary says which call
    // took that long; that, too, is what the kernel answered (seen on resmgr, seed 1).
    let gone = |name: &str, op: &str, or_held: bool| {
        let line = summary(name);
        let told = ["ENODEV", "ESHUTDOWN", "ETIMEDOUT"].iter().any(|e| line.contains(&format!("got -{e} on {op}")));
        let held = or_held && line.contains(&format!("; {op}")) && line.contains(" took ");
        assert!(told || held, "{name}: {line}");
    };
    gone("lines", "GPIO_V2_LINE_", true);
    gone("i2c", "I2C_RDWR", false);
    gone("virtuser", "gpiod_get_value", false);
    // The observers ran after every teardown step, and every read answered.
    for s in steps.iter().filter(|s| matches!(s.action, Action::Unplug { .. } | Action::Release { .. })) {
        assert!(!s.observations.is_empty(), "step {} ({}) was not observed", s.index, s.description);
        assert!(s.observations.iter().all(|o| o.outcome == ObserverOutcome::Ok), "step {}: {:?}", s.index, s.observations);
    }
    // Every step after the first hold lists the holders' one-line outcomes.
    assert!(steps.iter().filter(|s| matches!(s.action, Action::Observe)).all(|s| !s.consumers.is_empty()));
    assert!(steps.iter().all(|s| s.taint == Some(0)), "a step tainted the kernel");
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// The nvmem → at24 link alone: with the in-kernel nvmem-holder keeping a reference, at24 is
/// unbound. Vanilla 6.12.117: the nvmem device stays registered — its sysfs file too — over
/// at24's freed data; the user-space holder's reads and writes keep "succeeding" through freed
/// at24/regmap memory (KASAN), and neither holder sees an error. Resmgr: nvmem unregisters
/// synchronously and both holders get ENODEV; nothing is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_at24_unbind_under_nvmem_holders() {
    let (vm, steps) = run("at24-unbind-under-holders", "e2e_at24_unbind_under_nvmem_holders", 1).await;
    let unbind = steps.iter().find(|s| matches!(&s.action, Action::Exec { argv, .. } if argv.join(" ").contains("/unbind"))).unwrap();
    assert_eq!(unbind.status, StepStatus::Ok, "{:?}", unbind.output);
    let before = steps.iter().take_while(|s| s.index < unbind.index).filter_map(|s| s.taint).last();
    assert_eq!(before.map(|t| t & 32), Some(0), "KASAN before the unbind");
    let titles = assert_expected(&vm, "at24-unbind-under-holders");
    let summary = |name: &str| release_summary(&steps, name);
    match testenv::kernel() {
        KernelVariant::Vanilla => {
            assert!(
                titles.iter().any(|t| t.starts_with("KASAN: slab-use-after-free") && (t.contains("at24_write") || t.contains("at24_read"))),
                "{titles:?}"
            );
            // Whether its release returned or (a pwrite still printing KASAN reports on a slow
            // console) took longer than the agent waits; such a call may be named as slow.
            for (name, head) in [("sysfs", "holder 1 (nvmem-sysfs): no error"), ("kernel", "holder 2 (nvmem-kernel): no error")] {
                let line = summary(name);
                assert!(line == head || line.starts_with(&format!("{head}; ")) && line.contains(" took "), "{line}");
            }
        }
        KernelVariant::Vanilla61 => testenv::not_measured(),
        KernelVariant::Resmgr => {
            assert!(summary("sysfs").starts_with("holder 1 (nvmem-sysfs): got -ENODEV on p"), "{}", summary("sysfs"));
            assert!(summary("kernel").starts_with("holder 2 (nvmem-kernel): got -ENODEV on nvmem_device_read"), "{}", summary("kernel"));
        }
    }
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// `unplug: { how: unbind }` keeps the CP2112 plugged and driverless, `bind` brings its
/// adapter, gpiochip and at24 back under new nodes that new holders take. Vanilla 6.12.117:
/// the old line fd gets ENODEV, the old hidraw fd POLLHUP, and nothing crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_cp2112_unbind_bind_gives_new_nodes_and_old_handles_errors() {
    let (vm, steps) = run("cp2112-unbind-bind", "e2e_cp2112_unbind_bind_gives_new_nodes_and_old_handles_errors", 1).await;
    for s in &steps {
        assert_eq!(s.status, StepStatus::Ok, "step {} ({}) failed: {:?}", s.index, s.description, s.output);
        assert_eq!(s.taint, Some(0), "step {} ({}) tainted the kernel", s.index, s.description);
    }
    let out = |pred: &dyn Fn(&Action) -> bool| -> Vec<String> {
        steps.iter().filter(|s| pred(&s.action)).map(|s| s.output.clone().unwrap_or_default()).collect()
    };
    let binds = out(&|a| matches!(a, Action::Bind { .. }));
    assert_eq!(binds.len(), 2);
    assert!(binds.iter().all(|b| b.starts_with("hid-cp2112 bound again") && b.contains("nvmem 0x50=")), "{binds:?}");
    // The holders taken after the rebind are on a different gpiochip than the ones before.
    let first = out(&|a| matches!(a, Action::Hold { name, .. } if name == "lines"));
    let again = out(&|a| matches!(a, Action::Hold { name, .. } if name == "lines-again"));
    let chip = |s: &str| s.rsplit(" on ").next().unwrap_or_default().to_string();
    assert_ne!(chip(&first[0]), chip(&again[0]), "{first:?} {again:?}");
    let old_lines = out(&|a| matches!(a, Action::Release { name } if name == "lines"));
    assert!(old_lines.iter().all(|o| o.starts_with("holder") && o.lines().next().unwrap().contains("got -ENODEV on GPIO_V2_LINE_")), "{old_lines:?}");
    let old_hid = out(&|a| matches!(a, Action::Release { name } if name == "hid"));
    assert!(old_hid.iter().all(|o| o.lines().next().unwrap().ends_with("POLLERR|POLLHUP on poll")), "{old_hid:?}");
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// Data integrity end to end, on a real kernel: the emulated CP2112 lies (every byte a read
/// returns XORed with 0xff; its at24 model unchanged), so the in-kernel nvmem holder's
/// `nvmem_device_read` and the SMBus holder's byte read succeed with bytes the part never
/// held. Each is filed on the step after which it was seen as `data mismatch in HOLDER`, with
/// the first differing offset and both digests. The same on every kernel: the kernel passes
/// on what the device said. (At24 unbound under these holders on vanilla 6.12.117 reads
/// through freed at24 data that still holds the right pointers: the bytes match, see README.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_read_of_bytes_the_device_never_held_is_a_data_mismatch() {
    let yaml = "name: lying-cp2112\n\
                description: holders read an at24 through a CP2112 that garbles reads\n\
                steps:\n\
                \x20 - plug: { device: cp2112, id: bridge }\n\
                \x20 - hold: { name: kernel, kind: nvmem-kernel, on: bridge }\n\
                \x20 - hold: { name: smbus, kind: i2c-smbus, on: bridge }\n\
                \x20 - delay: 300ms\n\
                \x20 - release: kernel\n\
                \x20 - release: smbus\n";
    let scenario = Scenario::parse(yaml, std::path::Path::new("lying-cp2112.yaml")).unwrap();
    let mut schedule = schedule::plan(&scenario, 1);
    let holds = schedule.actions.split_off(1);
    let mut config = testenv::vm_config("e2e_data_mismatch");
    config.cmdline.extend(schedule.cmdline.iter().cloned());
    let mut vm = Vm::boot(&config, Vec::new()).await.unwrap();
    let mut testbed = Testbed::new();
    let mut steps = Vec::new();
    let kernel = testenv::kernel();
    run_schedule(&mut vm, &mut testbed, &schedule, kernel, &RunOptions::default(), |s| steps.push(s.clone())).await.unwrap();
    assert_eq!(steps[0].status, StepStatus::Ok, "{:?}", steps[0].output);
    let cp2112 = testbed.cp2112("bridge").unwrap().clone();
    cp2112.set_faults(devices::cp2112::Faults { corrupt_reads: 0xff, ..Default::default() });
    schedule.actions = holds;
    run_schedule(&mut vm, &mut testbed, &schedule, kernel, &RunOptions::default(), |s| steps.push(s.clone())).await.unwrap();
    for s in &steps {
        assert_eq!(s.status, StepStatus::Ok, "step {} ({}): {:?}", s.index, s.description, s.output);
    }
    let mismatches: Vec<&harness::judge::integrity::DataMismatch> = steps.iter().flat_map(|s| &s.data_mismatches).collect();
    let holders: std::collections::BTreeSet<&str> = mismatches.iter().map(|m| m.holder.as_str()).collect();
    assert_eq!(holders, ["kernel", "smbus"].into_iter().collect(), "{mismatches:#?}");
    // The model: testbed::seed_pattern, 0x3c 0x3b 0x32 ... from offset 0; every byte garbled.
    let kernel_read = mismatches.iter().find(|m| m.holder == "kernel").unwrap();
    assert_eq!((kernel_read.op.as_str(), kernel_read.offset, kernel_read.len), ("nvmem_device_read", 0, 16));
    assert_eq!(kernel_read.first_difference, Some(0));
    assert_eq!(kernel_read.read_hex.as_deref().map(|h| &h[..6]), Some("c3c4cd"), "{kernel_read:?}");
    assert_eq!(kernel_read.model_hex.as_deref().map(|h| &h[..6]), Some("3c3b32"), "{kernel_read:?}");
    let smbus = mismatches.iter().find(|m| m.holder == "smbus").unwrap();
    assert_eq!((smbus.op.as_str(), smbus.read_hex.as_deref(), smbus.model_hex.as_deref()), ("I2C_SMBUS", Some("c3"), Some("3c")));
    let report = kernel_read.report();
    assert_eq!(report.title, "data mismatch in kernel");
    assert!(report.text.contains("first difference at offset 0"), "{}", report.text);
    // Filed on the hold step whose first read it was (ready waits for that read).
    let hold = steps.iter().find(|s| matches!(&s.action, Action::Hold { name, .. } if name == "kernel")).unwrap();
    assert!(hold.data_mismatches.iter().any(|m| m.holder == "kernel"), "{:?}", hold.data_mismatches);
    vm.shutdown(Duration::from_secs(10)).await.unwrap();
}
