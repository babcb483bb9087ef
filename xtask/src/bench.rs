//! `cargo xtask bench`: speed figures of the pipeline, measured on this machine and printed
//! as a table (and as JSON with `--json`). Targets live here as reported numbers, not as
//! timed tests that fail on a busy machine.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use harness::scenario::UnplugHow;
use harness::testbed::Testbed;
use harness::vm::{Accel, Vm, VmConfig};
use serde::Serialize;

use crate::artifacts::{self, KernelChoice};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kernel: KernelChoice,
    /// Accelerator for the boot figures (the targets are stated for TCG).
    #[arg(long, default_value = "tcg")]
    accel: Accel,
    /// Boots to average over.
    #[arg(long, default_value_t = 3)]
    boots: u32,
    /// Plug/unplug cycles to time.
    #[arg(long, default_value_t = 10)]
    cycles: u32,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    note: String,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut figures = Vec::new();

    let start = Instant::now();
    let (kernel, image) = artifacts::kernel_and_image(&args.kernel)?;
    figures.push(Figure {
        name: "kernel + image, cached",
        value: start.elapsed().as_secs_f64(),
        unit: "s",
        note: format!("no-op rebuild of {}", kernel.label),
    });

    if let Some(built) = &kernel.built {
        figures.push(Figure {
            name: if built.cold { "kernel build, cold" } else { "kernel build, incremental" },
            value: built.build_seconds,
            unit: "s",
            note: format!(
                "make time recorded when {} was built (KASAN, lockdep, Rust, DWARF5; DWARF5 measured at +48 s / +13%)",
                built.key
            ),
        });
        figures.push(symbolization(&built.vmlinux)?);
    }
    figures.push(parser_throughput()?);

    let rt = crate::runtime()?;
    let mut boots = Vec::new();
    let mut usb_ready = Vec::new();
    for _ in 0..args.boots.max(1) {
        let mut config = VmConfig::new(kernel.bzimage.clone(), vec![image.clone()]);
        config.accel = args.accel;
        let (boot, usb) = rt.block_on(async {
            let start = Instant::now();
            let mut vm = Vm::boot(&config, Vec::new()).await?;
            let boot = start.elapsed();
            vm.ensure_usb_controller().await?;
            let usb = start.elapsed();
            vm.shutdown(Duration::from_secs(10)).await?;
            anyhow::Ok((boot, usb))
        })?;
        boots.push(boot.as_secs_f64());
        usb_ready.push(usb.as_secs_f64());
    }
    figures.push(Figure {
        name: "boot to agent ready",
        value: mean(&boots),
        unit: "s",
        note: format!("{} ({} boots: {})", args.accel, boots.len(), list(&boots)),
    });
    figures.push(Figure {
        name: "boot to agent ready + xHCI up",
        value: mean(&usb_ready),
        unit: "s",
        note: "target ≤ 5 s under TCG; the controller is hot-added after boot".into(),
    });

    let cycles = args.cycles.max(1);
    let mut config = VmConfig::new(kernel.bzimage.clone(), vec![image.clone()]);
    config.accel = args.accel;
    // Keep the console of the cycle run: a failure here is worth reading.
    config.log_dir = Some(harness::paths::results_dir().join("bench-cycles"));
    let elapsed = rt.block_on(async {
        let mut vm = Vm::boot(&config, Vec::new()).await?;
        let mut testbed = Testbed::new();
        vm.ensure_usb_controller().await?;
        let start = Instant::now();
        for _ in 0..cycles {
            testbed.plug(&mut vm, "usb-kbd", "kbd").await?;
            testbed.unplug(&mut vm, "kbd", UnplugHow::Graceful, Duration::from_secs(10)).await?;
        }
        let elapsed = start.elapsed();
        vm.shutdown(Duration::from_secs(10)).await?;
        anyhow::Ok(elapsed)
    })?;
    figures.push(Figure {
        name: "usb-kbd plug/unplug cycles",
        value: cycles as f64 / elapsed.as_secs_f64() * 60.0,
        unit: "/min",
        note: format!("{cycles} cycles in {:.1} s, each waiting for the guest's bind and disconnect", elapsed.as_secs_f64()),
    });

    // The CP2112 chain: plug until the at24's nvmem file exists in the guest, then unplug.
    let mut config = VmConfig::new(kernel.bzimage.clone(), vec![image.clone()]);
    config.accel = args.accel;
    config.log_dir = Some(harness::paths::results_dir().join("bench-cp2112"));
    let (ready, elapsed) = rt.block_on(async {
        let mut vm = Vm::boot(&config, Vec::new()).await?;
        let mut testbed = Testbed::new();
        vm.ensure_usb_controller().await?;
        let mut ready = Vec::new();
        let start = Instant::now();
        for i in 0..cycles {
            let how = [UnplugHow::Graceful, UnplugHow::Surprise, UnplugHow::Disconnect][i as usize % 3];
            let plugged = testbed.plug(&mut vm, "cp2112", "bridge").await?;
            ready.push(plugged.elapsed_ms / 1e3);
            testbed.unplug(&mut vm, "bridge", how, Duration::from_secs(10)).await?;
        }
        let elapsed = start.elapsed();
        vm.shutdown(Duration::from_secs(10)).await?;
        anyhow::Ok((ready, elapsed))
    })?;
    figures.push(Figure {
        name: "cp2112 plug to nvmem ready",
        value: mean(&ready),
        unit: "s",
        note: format!("hid-cp2112 bound, at24 instantiated, nvmem present ({} plugs: {})", ready.len(), list(&ready)),
    });
    figures.push(Figure {
        name: "cp2112 plug/unplug cycles",
        value: cycles as f64 / elapsed.as_secs_f64() * 60.0,
        unit: "/min",
        note: format!("{cycles} cycles in {:.1} s, rotating graceful, socket close and device_disconnect", elapsed.as_secs_f64()),
    });

    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        for f in &figures {
            println!("{:<34} {:>9.2} {:<4} {}", f.name, f.value, f.unit, f.note);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parser speed, measured by the report crate's own example built with optimisations (this
/// xtask binary is a debug build and would understate it).
fn parser_throughput() -> Result<Figure> {
    let sh = xshell::Shell::new()?;
    sh.change_dir(harness::paths::repo_root());
    let out = xshell::cmd!(sh, "cargo run --quiet --release -p report --example throughput -- --mib 64").read()?;
    // "64.0 MiB in 0.52s: 123.4 MiB/s, N reports"
    let rate = out
        .split(": ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("unexpected throughput output: {out}"))?;
    Ok(Figure { name: "console parser throughput", value: rate, unit: "MiB/s", note: out.trim().to_string() })
}

/// Loading vmlinux's DWARF once, then symbolizing one real KASAN report from the corpus.
fn symbolization(vmlinux: &std::path::Path) -> Result<Figure> {
    let log = harness::paths::repo_root().join("harness/tests/data/reports/project-gpio-virtuser-proc-interrupts-uaf.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let reports = report::parse(text.as_bytes());
    let Some(first) = reports.first() else {
        anyhow::bail!("{} holds no report to symbolize", log.display());
    };
    let start = Instant::now();
    let symbolizer = report::symbolize::Symbolizer::new(vmlinux)?;
    let load = start.elapsed();
    let start = Instant::now();
    let rounds = 5;
    for _ in 0..rounds {
        std::hint::black_box(symbolizer.symbolize_text(&first.text));
    }
    let per_report = start.elapsed().as_secs_f64() * 1e3 / rounds as f64;
    Ok(Figure {
        name: "symbolization per report",
        value: per_report,
        unit: "ms",
        note: format!("after loading vmlinux once in {:.2} s", load.as_secs_f64()),
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn list(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
}
