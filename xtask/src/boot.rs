//! `cargo xtask boot [--with DEVICE]... [-- CMD...]`: boot our kernel and image, plug devices,
//! run CMD in the guest through the agent (exit with its status) or open a shell on hvc0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use harness::testbed::Testbed;
use harness::vm::{Accel, Vm, VmConfig};

use crate::artifacts::{self, KernelChoice};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kernel: KernelChoice,
    /// Plug this device after boot (repeatable): cp2112, usb-kbd, usb-mouse, usb-tablet.
    #[arg(long = "with", value_name = "DEVICE")]
    with: Vec<String>,
    /// EEPROMs behind a cp2112 (repeatable), e.g. 0x50:24c02 (the default when none is given).
    #[arg(long = "with-at24", value_name = "ADDR:PART")]
    with_at24: Vec<harness::testbed::At24Spec>,
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
    /// Command to run in the guest; without it, an interactive shell.
    #[arg(last = true)]
    cmd: Vec<String>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    // Refuse a typo before building or booting anything.
    let known = harness::testbed::known_devices();
    if let Some(bad) = args.with.iter().find(|d| !known.contains(&d.as_str())) {
        anyhow::bail!("unknown device {bad:?} for --with; known devices: {}", known.join(", "));
    }
    let (kernel, image) = artifacts::kernel_and_image(&args.kernel)?;
    crate::runtime()?.block_on(boot(args, kernel, image))
}

async fn boot(args: Args, kernel: artifacts::Kernel, initrd: PathBuf) -> Result<ExitCode> {
    let mut config = VmConfig::new(kernel.bzimage.clone(), vec![initrd]);
    config.accel = args.accel;
    config.cpus = args.cpus;
    config.shell = args.cmd.is_empty();
    config.cmdline = args.append.clone();
    // Keep the logs after the VM (and its private directory) is gone.
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace([':', '-'], "");
    config.log_dir = Some(harness::paths::results_dir().join(format!("boot-{stamp}")));
    eprintln!("booting {} ...", kernel.describe());
    let mut vm = Vm::boot(&config, Vec::new()).await?;
    eprintln!(
        "guest agent ready after {:.1} s ({}, QEMU {}); logs in {}",
        vm.booted_in().as_secs_f64(),
        vm.accel(),
        vm.qemu_version(),
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
    let code = if args.cmd.is_empty() {
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
        exit_code(&out)
    };
    vm.shutdown(Duration::from_secs(10)).await?;
    Ok(code)
}

/// The guest command's status, shell-style: its exit code, 128+N for signal N, 124 on timeout.
fn exit_code(out: &harness::agent::ExecOutput) -> ExitCode {
    let code = if out.timed_out {
        124
    } else if let Some(status) = out.status {
        status.clamp(0, 255)
    } else {
        out.signal.map(|s| 128 + s).unwrap_or(255).clamp(0, 255)
    };
    ExitCode::from(code as u8)
}
