//! `cargo xtask boot [--with DEVICE]... [-- CMD...]`: boot our kernel and image, plug devices,
//! run CMD in the guest through the agent (exit with its status) or open a shell on hvc0
//! (Ctrl-] leaves it; the VM is shut down and `boot` exits 0).
//!
//! With `--hold KIND... --unplug HOW` it first runs one hold session on the first provider
//! (`harness::drive::hold_session`): holders on the provider's nodes, the unplug, the observers, the
//! late closes; it prints what every holder saw and any crash titles, and exits 1 if there is
//! something to look at (a crash, a bad taint, a stuck unplug or release, a lost guest).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use agent::HoldKind;
use harness::drive::hold_session::{HoldPlan, HoldReport};
use harness::drive::scenario::UnplugHow;
use harness::devices::testbed::Testbed;
use harness::run::vm::{Accel, Vm, VmConfig};

use crate::artifacts::{self, KernelChoice, VariantChoice};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kernel: KernelChoice,
    #[command(flatten)]
    variant: VariantChoice,
    /// Plug this device after boot (repeatable): cp2112, virtio-i2c, gpio-sim, usb-kbd, usb-mouse, usb-tablet.
    #[arg(long = "with", value_name = "DEVICE")]
    with: Vec<String>,
    /// EEPROMs behind a cp2112 or virtio-i2c (repeatable), e.g. 0x50:24c02 (the default when none is given).
    #[arg(long = "with-at24", value_name = "ADDR:PART")]
    with_at24: Vec<harness::devices::testbed::At24Spec>,
    /// Accelerator: kvm, tcg, or auto (probe KVM with a real boot, fall back to TCG).
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// vCPUs (default: 1 under TCG, 2 under KVM).
    #[arg(long)]
    cpus: Option<u32>,
    /// Seconds CMD may run before it is killed.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Extra kernel command-line words.
    #[arg(long = "append", value_name = "WORD")]
    append: Vec<String>,
    /// Hold the first provider (cp2112 or gpio-sim) with a consumer of this kind across an
    /// unplug (repeatable): gpio-cdev, gpio-event, gpio-chip-watch, nvmem-sysfs, i2c-dev,
    /// i2c-smbus, hidraw, gpio-virtuser, gpio-virtuser-irq, gpio-aggregator, nvmem-kernel,
    /// nvmem-kernel-rs (resmgr kernel only).
    #[arg(long = "hold", value_name = "KIND")]
    hold: Vec<HoldKind>,
    /// Unplug the first provider while the holders hold: graceful, surprise, disconnect
    /// (cp2112), or unbind (its driver, in sysfs).
    #[arg(long, value_name = "HOW")]
    unplug: Option<UnplugHow>,
    /// Seconds the holders run before the unplug, and at most after it.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    hold_before: f64,
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    hold_after: f64,
    /// Print the hold session as JSON lines (every holder record, the unplug, observations,
    /// taint, crashes) instead of a summary.
    #[arg(long)]
    json: bool,
    /// Command to run in the guest (after a hold session, if any); without it and without
    /// `--unplug`, an interactive shell.
    #[arg(last = true)]
    cmd: Vec<String>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    // Refuse a typo before building or booting anything.
    let known = harness::devices::testbed::known_devices();
    if let Some(bad) = args.with.iter().find(|d| !known.contains(&d.as_str())) {
        anyhow::bail!("unknown device {bad:?} for --with; known devices: {}", known.join(", "));
    }
    if !args.hold.is_empty() && args.unplug.is_none() {
        anyhow::bail!("--hold needs --unplug HOW (graceful, surprise, disconnect, unbind): holders exist to see an unplug");
    }
    if args.unplug.is_some() && provider(&args.with).is_none() {
        anyhow::bail!("--unplug needs a provider to unplug: add --with cp2112, --with virtio-i2c or --with gpio-sim");
    }
    for (flag, secs) in [("--hold-before", args.hold_before), ("--hold-after", args.hold_after)] {
        if !(0.0..=3600.0).contains(&secs) {
            anyhow::bail!("{flag} {secs}: expected seconds between 0 and 3600");
        }
    }
    let (kernel, image) = artifacts::kernel_and_image(&args.variant.over(&args.kernel))?;
    crate::runtime()?.block_on(boot(args, kernel, image))
}

async fn boot(args: Args, kernel: artifacts::Kernel, initrd: PathBuf) -> Result<ExitCode> {
    let mut config = VmConfig::new(kernel.bzimage.clone(), vec![initrd]);
    config.accel = args.accel;
    config.cpus = args.cpus;
    config.shell = args.cmd.is_empty() && args.unplug.is_none();
    config.cmdline = args.append.clone();
    // Keep the logs after the VM (and its private directory) is gone.
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace([':', '-'], "");
    config.log_dir = Some(harness::paths::results_dir().join(format!("boot-{stamp}")));
    eprintln!("booting {} ...", kernel.describe());
    let boot_cursor = harness::run::console::LineCursor::default();
    let mut vm = Vm::boot(&config, Vec::new()).await?;
    eprintln!(
        "guest agent ready after {:.1} s ({}, QEMU {}, pace {}: deadlines scaled by it); logs in {}",
        vm.booted_in().as_secs_f64(),
        vm.accel(),
        vm.qemu_version(),
        vm.pace(),
        vm.log_dir().display()
    );
    let mut testbed = Testbed::new();
    for (i, device) in args.with.iter().enumerate() {
        let id = format!("{device}{i}");
        let outcome = if args.with_at24.is_empty() {
            testbed.plug(&mut vm, device, &id).await?
        } else {
            testbed.plug_with(&mut vm, device, &id, &args.with_at24).await?
        };
        eprintln!("plugged {device} as {id} in {:.0} ms: {}", outcome.elapsed_ms, outcome.guest_saw.unwrap_or_default());
    }
    let mut findings = false;
    if let (Some(how), Some(provider)) = (args.unplug, provider(&args.with)) {
        let plan = HoldPlan {
            provider,
            kinds: args.hold.clone(),
            how,
            before: Duration::from_secs_f64(args.hold_before),
            after: Duration::from_secs_f64(args.hold_after),
            unplug_timeout: Duration::from_secs(30),
        };
        eprintln!("holding {} on {} across its unplug ({}) ...", kinds_list(&plan.kinds), plan.provider, how.name());
        let report = harness::drive::hold_session::run(&mut vm, &mut testbed, &plan, boot_cursor).await?;
        if args.json {
            print_json(&report)?;
        } else {
            print_summary(&report);
        }
        findings = report.has_findings();
        if let Some(why) = &report.agent_lost {
            eprintln!("the guest agent stopped answering ({why}); console log in {}", vm.log_dir().display());
            // Nothing more can run in this guest.
            drop(vm);
            return Ok(ExitCode::from(1));
        }
    }
    let code = if args.cmd.is_empty() && args.unplug.is_some() {
        ExitCode::from(u8::from(findings))
    } else if args.cmd.is_empty() {
        crate::terminal::attach(&vm.dir().join("shell.sock")).await?;
        ExitCode::SUCCESS
    } else {
        let argv: Vec<&str> = args.cmd.iter().map(String::as_str).collect();
        let out = vm.agent().exec(&argv, Duration::from_secs(args.timeout)).await.context("running the command")?;
        use std::io::Write;
        std::io::stdout().write_all(&out.stdout)?;
        std::io::stderr().write_all(&out.stderr)?;
        if !out.success() {
            eprintln!("guest command {}", out.outcome());
        }
        // The command's status, unless it succeeded after a session that found something.
        if findings && out.success() {
            ExitCode::from(1)
        } else {
            exit_code(&out)
        }
    };
    vm.shutdown(Duration::from_secs(10)).await?;
    Ok(code)
}

/// The id `boot` gives the first provider among the `--with` devices.
fn provider(with: &[String]) -> Option<String> {
    with.iter().enumerate().find(|(_, d)| matches!(d.as_str(), "cp2112" | "virtio-i2c" | "gpio-sim")).map(|(i, d)| format!("{d}{i}"))
}

fn kinds_list(kinds: &[HoldKind]) -> String {
    if kinds.is_empty() {
        return "nothing".to_string();
    }
    kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

/// What a maintainer reads: one line per holder, the unplug, what the observers flagged.
fn print_summary(report: &HoldReport) {
    println!("provider {} ({}), unplug {}:", report.provider, nodes_line(report), report.how.name());
    match &report.unplug {
        Ok(outcome) => println!("  unplug: {:.0} ms; guest: {}", outcome.elapsed_ms, outcome.guest_saw.as_deref().unwrap_or("-")),
        Err(e) => println!("  unplug FAILED: {e}"),
    }
    for holder in &report.holders {
        print!("  {}: {}", holder.kind.name(), holder.summary);
        if let Some(e) = &holder.release_error {
            print!("; release: {e}");
        }
        println!();
    }
    for (when, observations) in [("after unplug", &report.observations), ("after release", &report.observations_after_release)] {
        for obs in observations.iter().filter(|o| o.outcome != harness::judge::observe::ObserverOutcome::Ok) {
            println!("  observer {when}: {}: {} ({})", obs.path, obs.outcome, obs.detail.lines().next().unwrap_or(""));
        }
    }
    if let Some(taint) = report.taint {
        let t = report::Taint(taint);
        println!("  taint: {taint} {}", if taint == 0 { "(clean)".to_string() } else { t.letters() });
    }
    if let Some(why) = &report.agent_lost {
        println!("  the guest agent stopped answering after the unplug: {why}");
    }
    for crash in &report.crashes {
        let times = if crash.count > 1 { format!(" (x{})", crash.count) } else { String::new() };
        println!("  CRASH: {}{times}{}", crash.title, if crash.corrupted { " (corrupted)" } else { "" });
        for f in &crash.follow_ons {
            println!("    follow-on (x{}): {}", f.count, f.title);
        }
    }
    if report.crashes_dropped > 0 {
        println!(
            "  {} more crash report(s) not kept: only the first {} titles are",
            report.crashes_dropped,
            report::collect::MAX_TITLES
        );
    }
}

fn nodes_line(report: &HoldReport) -> String {
    let n = &report.nodes;
    let mut parts = Vec::new();
    parts.extend(n.gpiochip.clone());
    parts.extend(n.i2c_bus.map(|b| format!("i2c-{b}")));
    parts.extend(n.nvmem.iter().map(|(_, name)| format!("nvmem {name}")));
    parts.extend(n.hidraw.clone());
    parts.join(", ")
}

/// One JSON object per line: every holder record, then per holder its summary, the unplug,
/// the observations, the taint and the crashes; `type` says which.
fn print_json(report: &HoldReport) -> Result<()> {
    use serde_json::json;
    let mut lines = Vec::new();
    for holder in &report.holders {
        for record in &holder.records {
            let mut value = serde_json::to_value(record)?;
            value["type"] = json!("event");
            lines.push(value);
        }
    }
    for holder in &report.holders {
        lines.push(json!({
            "type": "holder", "kind": holder.kind, "handle": holder.handle, "request": holder.request,
            "summary": holder.summary, "setup_error": holder.setup_error, "release_error": holder.release_error,
        }));
    }
    lines.push(match &report.unplug {
        Ok(o) => json!({"type": "unplug", "provider": report.provider, "how": report.how, "nodes": report.nodes, "outcome": o}),
        Err(e) => json!({"type": "unplug", "provider": report.provider, "how": report.how, "nodes": report.nodes, "error": e}),
    });
    for (when, observations) in [("after-unplug", &report.observations), ("after-release", &report.observations_after_release)] {
        for obs in observations {
            let mut value = serde_json::to_value(obs)?;
            value["type"] = json!("observation");
            value["when"] = json!(when);
            lines.push(value);
        }
    }
    lines.push(json!({"type": "taint", "value": report.taint, "agent_lost": report.agent_lost}));
    for crash in &report.crashes {
        lines.push(json!({"type": "crash", "title": crash.title, "corrupted": crash.corrupted, "count": crash.count, "follow_ons": crash.follow_ons}));
    }
    if report.crashes_dropped > 0 {
        lines.push(json!({"type": "crashes_dropped", "count": report.crashes_dropped}));
    }
    let mut out = std::io::stdout().lock();
    for line in lines {
        use std::io::Write;
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The guest command's status, shell-style: its exit code, 128+N for signal N, 124 on timeout.
fn exit_code(out: &harness::run::agent_link::ExecOutput) -> ExitCode {
    let code = if out.timed_out {
        124
    } else if let Some(status) = out.status {
        status.clamp(0, 255)
    } else {
        out.signal.map(|s| 128 + s).unwrap_or(255).clamp(0, 255)
    };
    ExitCode::from(code as u8)
}
