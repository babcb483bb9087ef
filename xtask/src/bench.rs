//! `cargo xtask bench`: speed figures of the pipeline, measured on this machine and printed
//! as a table (and as JSON with `--json`). Targets live here as reported numbers, not as
//! timed tests that fail on a busy machine.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use harness::drive::scenario::UnplugHow;
use harness::devices::testbed::Testbed;
use harness::run::vm::{Accel, BootPhases, Vm, VmConfig};
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
    /// Only these parts (repeatable; default: all, in this order).
    #[arg(long = "only", value_name = "PART")]
    only: Vec<Part>,
}

/// The parts of the bench, each a group of figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The build and the parser: cached no-op, build time, symbolization, parser throughput.
    Build,
    /// Boot to agent ready, where its time goes, and the xHCI hot-add.
    Boot,
    /// usb-kbd and CP2112 plug/unplug cycles.
    Cycles,
    /// virtio-i2c (vhost-user-i2c-pci) plug/unplug cycles.
    VirtioI2c,
    /// What resmgr costs: the same guest loops on vanilla and resmgr.
    Overhead,
    /// The torture engine: scenarios per hour with --jobs 1 and 2, time to the first KASAN.
    Engine,
}

#[derive(Serialize)]
struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    note: String,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let parts = if args.only.is_empty() { <Part as clap::ValueEnum>::value_variants().to_vec() } else { args.only.clone() };
    let mut figures = Vec::new();
    let booted = parts.iter().any(|p| matches!(p, Part::Build | Part::Boot | Part::Cycles | Part::VirtioI2c));
    let start = Instant::now();
    let artifacts = if booted { Some(artifacts::kernel_and_image(&args.kernel)?) } else { None };
    for part in parts {
        let Some((kernel, image)) = artifacts.as_ref().filter(|_| !matches!(part, Part::Overhead | Part::Engine)) else {
            figures.extend(match part {
                Part::Overhead => overhead(&args)?,
                _ => engine()?,
            });
            continue;
        };
        figures.extend(match part {
            Part::Build => build(kernel, start.elapsed())?,
            Part::Boot => boot(&args, kernel, image)?,
            Part::Cycles => cycles(&args, kernel, image)?,
            _ => virtio_i2c(&args, &kernel.bzimage, image)?,
        });
    }
    print(&figures, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The cached kernel and image (`cached`: how long finding them took), the kernel's recorded
/// build time, symbolization against its vmlinux, the console parser's throughput.
fn build(kernel: &artifacts::Kernel, cached: Duration) -> Result<Vec<Figure>> {
    let mut figures = vec![Figure {
        name: "kernel + image, cached",
        value: cached.as_secs_f64(),
        unit: "s",
        note: format!("no-op rebuild of {}", kernel.label),
    }];
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
    Ok(figures)
}

/// `--boots` boots to agent ready, where their time went, and the xHCI hot-add after each.
fn boot(args: &Args, kernel: &artifacts::Kernel, image: &std::path::Path) -> Result<Vec<Figure>> {
    let rt = crate::runtime()?;
    let mut boots = Vec::new();
    let mut usb_ready = Vec::new();
    let mut phases = Vec::new();
    for _ in 0..args.boots.max(1) {
        let mut config = VmConfig::new(kernel.bzimage.clone(), vec![image.to_path_buf()]);
        config.accel = args.accel;
        let (boot, usb, boot_phases) = rt.block_on(async {
            let start = Instant::now();
            let mut vm = Vm::boot(&config, Vec::new()).await?;
            let boot = start.elapsed();
            let boot_phases = vm.boot_phases();
            vm.ensure_usb_controller().await?;
            let usb = start.elapsed();
            vm.shutdown(Duration::from_secs(10)).await?;
            anyhow::Ok((boot, usb, boot_phases))
        })?;
        boots.push(boot.as_secs_f64());
        usb_ready.push(usb.as_secs_f64());
        phases.extend(boot_phases);
    }
    let mut figures = vec![Figure {
        name: "boot to agent ready",
        value: mean(&boots),
        unit: "s",
        note: format!("{} ({} boots: {})", args.accel, boots.len(), list(&boots)),
    }];
    figures.extend(boot_breakdown(&phases));
    if args.accel != Accel::Kvm {
        figures.push(boot_instructions(kernel, image)?);
    }
    figures.push(Figure {
        name: "boot to agent ready + xHCI up",
        value: mean(&usb_ready),
        unit: "s",
        note: "target ≤ 5 s under TCG; the controller is hot-added after boot".into(),
    });
    Ok(figures)
}

/// usb-kbd plug/unplug cycles, then the CP2112 chain: plug until the at24's nvmem file
/// exists in the guest, then unplug (rotating the ways), `--cycles` times each.
fn cycles(args: &Args, kernel: &artifacts::Kernel, image: &std::path::Path) -> Result<Vec<Figure>> {
    let rt = crate::runtime()?;
    let cycles = args.cycles.max(1);
    let mut config = VmConfig::new(kernel.bzimage.clone(), vec![image.to_path_buf()]);
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
    let mut figures = vec![Figure {
        name: "usb-kbd plug/unplug cycles",
        value: cycles as f64 / elapsed.as_secs_f64() * 60.0,
        unit: "/min",
        note: format!("{cycles} cycles in {:.1} s, each waiting for the guest's bind and disconnect", elapsed.as_secs_f64()),
    }];

    let one = cp2112_cycles(&rt, &mut config, cycles, 0)?;
    figures.push(Figure {
        name: "cp2112 plug to nvmem ready",
        value: mean(&one.ready),
        unit: "s",
        // Every plug after the first waits for the previous unplug's teardown in the hub
        // worker: cp2112_remove -> i2c_del_adapter waits for the adapter's release, which
        // CONFIG_DEBUG_KOBJECT_RELEASE (a lifetime-bug detector we keep) delays by 1-4 s at
        // random, before the worker enumerates the new device (console: `USB disconnect`,
        // then nothing until `kobject_release ... (delayed N)`).
        note: format!(
            "hid-cp2112 bound, at24 instantiated, nvmem present ({} plugs: {}); re-plugs wait out the last unplug's delayed kobject release (1-4 s)",
            one.ready.len(),
            list(&one.ready)
        ),
    });
    figures.push(Figure {
        name: "cp2112 unplug to gone",
        value: mean(&one.unplugged),
        unit: "s",
        note: format!("USB disconnect seen in the guest ({} unplugs: {})", one.unplugged.len(), list(&one.unplugged)),
    });
    figures.push(Figure {
        name: "cp2112 plug/unplug cycles",
        value: one.per_minute(),
        unit: "/min",
        note: format!("{cycles} cycles in {:.1} s on one hub, rotating graceful, socket close and device_disconnect", one.elapsed.as_secs_f64()),
    });
    // The same cycles with each plug on the next of CYCLE_HUBS hubs: a teardown waiting out its
    // delayed release no longer holds up the next plug (Vm::add_usb_hubs says why).
    let hubs = cp2112_cycles(&rt, &mut config, cycles, CYCLE_HUBS)?;
    figures.push(Figure {
        name: "cp2112 plug/unplug cycles over hubs",
        value: hubs.per_minute(),
        unit: "/min",
        note: format!(
            "{cycles} cycles in {:.1} s, each plug on the next of {CYCLE_HUBS} hubs; plug to nvmem ready {:.2} s ({}), unplug to gone {:.2} s",
            hubs.elapsed.as_secs_f64(),
            mean(&hubs.ready),
            list(&hubs.ready),
            mean(&hubs.unplugged)
        ),
    });
    Ok(figures)
}

/// Hubs the second CP2112 cycle run rotates over: enough that a hub's last teardown (its
/// release delayed up to 4 s) is over when the rotation comes back to it, at ~0.7 s a cycle;
/// with three, every third plug still waited (12 cycles: 43/min). Root-hub ports 1-6 of 8.
const CYCLE_HUBS: usize = 6;

/// What one CP2112 cycle run measured, in seconds.
struct Cp2112Cycles {
    ready: Vec<f64>,
    unplugged: Vec<f64>,
    elapsed: Duration,
}

impl Cp2112Cycles {
    fn per_minute(&self) -> f64 {
        self.ready.len() as f64 / self.elapsed.as_secs_f64() * 60.0
    }
}

/// Boots a VM and plugs the CP2112 chain until the at24's nvmem file exists, then unplugs it
/// (rotating graceful, socket close and device_disconnect), `cycles` times; with `hubs` > 0
/// each plug goes on the next of that many USB hubs, else on the root hub.
fn cp2112_cycles(rt: &tokio::runtime::Runtime, config: &mut VmConfig, cycles: u32, hubs: usize) -> Result<Cp2112Cycles> {
    config.log_dir = Some(harness::paths::results_dir().join(if hubs == 0 { "bench-cp2112".to_string() } else { format!("bench-cp2112-{hubs}-hubs") }));
    rt.block_on(async {
        let mut vm = Vm::boot(config, Vec::new()).await?;
        let mut testbed = Testbed::new();
        vm.ensure_usb_controller().await?;
        vm.add_usb_hubs(hubs).await?;
        let (mut ready, mut unplugged) = (Vec::new(), Vec::new());
        let start = Instant::now();
        for i in 0..cycles {
            let how = [UnplugHow::Graceful, UnplugHow::Surprise, UnplugHow::Disconnect][i as usize % 3];
            let plugged = testbed.plug(&mut vm, "cp2112", "bridge").await?;
            ready.push(plugged.elapsed_ms / 1e3);
            let gone = testbed.unplug(&mut vm, "bridge", how, Duration::from_secs(10)).await?;
            unplugged.push(gone.elapsed_ms / 1e3);
        }
        let elapsed = start.elapsed();
        vm.shutdown(Duration::from_secs(10)).await?;
        anyhow::Ok(Cp2112Cycles { ready, unplugged, elapsed })
    })
}

/// The virtio-i2c chain: plug (vhost-user-i2c-pci on a root port) until the at24's nvmem file
/// exists in the guest, then unplug, alternating graceful (`device_del` through the guest's
/// ACPI hotplug) and surprise (the backend goes away, then `device_del`).
fn virtio_i2c(args: &Args, bzimage: &std::path::Path, image: &std::path::Path) -> Result<Vec<Figure>> {
    let cycles = args.cycles.max(1);
    let mut config = VmConfig::new(bzimage.to_path_buf(), vec![image.to_path_buf()]);
    config.accel = args.accel;
    config.log_dir = Some(harness::paths::results_dir().join("bench-virtio-i2c"));
    let (ready, graceful, elapsed) = crate::runtime()?.block_on(async {
        let mut vm = Vm::boot(&config, Vec::new()).await?;
        let mut testbed = Testbed::new();
        let (mut ready, mut graceful) = (Vec::new(), Vec::new());
        let start = Instant::now();
        for i in 0..cycles {
            let how = [UnplugHow::Graceful, UnplugHow::Surprise][i as usize % 2];
            let plugged = testbed.plug(&mut vm, "virtio-i2c", "vi2c").await?;
            ready.push(plugged.elapsed_ms / 1e3);
            let unplugged = testbed.unplug(&mut vm, "vi2c", how, Duration::from_secs(30)).await?;
            if how == UnplugHow::Graceful {
                graceful.push(unplugged.elapsed_ms / 1e3);
            }
        }
        let elapsed = start.elapsed();
        vm.shutdown(Duration::from_secs(10)).await?;
        anyhow::Ok((ready, graceful, elapsed))
    })?;
    Ok(vec![
        Figure {
            name: "virtio-i2c plug to nvmem ready",
            value: mean(&ready),
            unit: "s",
            note: format!("vhost-user handshake, i2c-virtio bound, at24 instantiated, nvmem present ({} plugs: {})", ready.len(), list(&ready)),
        },
        Figure {
            name: "virtio-i2c graceful unplug",
            value: mean(&graceful),
            unit: "s",
            note: format!("device_del to DEVICE_DELETED, chardev removed, backend joined ({})", list(&graceful)),
        },
        Figure {
            name: "virtio-i2c plug/unplug cycles",
            value: cycles as f64 / elapsed.as_secs_f64() * 60.0,
            unit: "/min",
            note: format!("{cycles} cycles in {:.1} s, alternating graceful and surprise", elapsed.as_secs_f64()),
        },
    ])
}

/// Quick scenarios for the engine's throughput: one VM each, about a minute under TCG.
const ENGINE_SCENARIOS: &str = "{usb-kbd-cycle,cp2112-nvmem-readers,cp2112-i2c-dev-held,at24-unbind-under-holders}";
/// The scenario whose first KASAN report is timed, and the seed it is timed with.
const FIRST_KASAN_SCENARIO: &str = "nvmem-holder-cp2112-unplug";
const ENGINE_SEED: &str = "4242";

/// The torture engine as a user runs it: this binary's `torture` as a child, on the vanilla
/// kernel (built and cached first, so no build is timed), its runs filed under
/// `results/bench-engine-*/`. Scenarios per hour with `--jobs 1` and `--jobs 2` over the same
/// runs (TCG guests are single-vCPU, so two at once should nearly double it on two cores),
/// and the time from `torture`'s start to its first KASAN report on disk.
fn engine() -> Result<Vec<Figure>> {
    let variant = harness::drive::scenario::KernelVariant::Vanilla;
    artifacts::kernel_and_image(&KernelChoice::of_variant(variant))?;
    let variant = variant.to_string();
    let root = harness::paths::results_dir().join(format!("bench-engine-{}", harness::judge::results::stamp()));
    let mut figures = Vec::new();
    for jobs in [1, 2] {
        let results = root.join(format!("jobs{jobs}"));
        let start = Instant::now();
        let status = torture_child(&variant, ENGINE_SCENARIOS, jobs, &results)
            .status()
            .with_context(|| format!("running torture --jobs {jobs}"))?;
        let elapsed = start.elapsed().as_secs_f64();
        let runs = run_folders(&results).len();
        anyhow::ensure!(runs > 0 && status.code().is_some_and(|c| c <= 1), "torture --jobs {jobs} failed ({status}); its runs: {}", results.display());
        figures.push(Figure {
            name: if jobs == 1 { "scenarios per hour, --jobs 1" } else { "scenarios per hour, --jobs 2" },
            value: runs as f64 / elapsed * 3600.0,
            unit: "/h",
            note: format!("{runs} runs in {elapsed:.0} s ({ENGINE_SCENARIOS}, seed {ENGINE_SEED}, {variant})"),
        });
    }
    let results = root.join("first-kasan");
    let start = Instant::now();
    let mut child = torture_child(&variant, FIRST_KASAN_SCENARIO, 1, &results)
        .spawn()
        .with_context(|| format!("starting torture on {FIRST_KASAN_SCENARIO}"))?;
    let mut first = None;
    let status = loop {
        if first.is_none() && first_kasan_filed(&results) {
            first = Some(start.elapsed().as_secs_f64());
        }
        if let Some(status) = child.try_wait().context("waiting for torture")? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let first = first.or_else(|| first_kasan_filed(&results).then(|| start.elapsed().as_secs_f64()));
    let first = first.ok_or_else(|| anyhow::anyhow!("{FIRST_KASAN_SCENARIO} filed no KASAN report ({status}); its run: {}", results.display()))?;
    figures.push(Figure {
        name: "torture start to first KASAN report",
        value: first,
        unit: "s",
        note: format!("{FIRST_KASAN_SCENARIO}, seed {ENGINE_SEED}, {variant}, warm cache: filed under crashes/"),
    });
    Ok(figures)
}

/// `xtask torture` on `scenarios` with `jobs` VMs at once, its runs under `results`.
fn torture_child(variant: &str, scenarios: &str, jobs: usize, results: &std::path::Path) -> std::process::Command {
    // Not current_exe(): a cargo build in the same target dir during the bench (minutes long)
    // replaces target/debug/xtask, and the path of the running binary then reads
    // "xtask (deleted)", which fails to spawn with a bare ENOENT. /proc/self/exe execs the
    // running binary's own file, replaced or not.
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(["torture", "--kernel", variant, "--seed", ENGINE_SEED, "--scenario", scenarios, "--jobs", &jobs.to_string(), "--results"])
        .arg(results)
        .stdout(std::process::Stdio::null());
    cmd
}

/// The run folders under `results` (each has a `meta.json`).
fn run_folders(results: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(results) else { return Vec::new() };
    entries.flatten().map(|e| e.path()).filter(|p| p.join("meta.json").is_file()).collect()
}

/// Whether a run under `results` has filed a bug titled KASAN.
fn first_kasan_filed(results: &std::path::Path) -> bool {
    run_folders(results).iter().any(|run| {
        std::fs::read_dir(run.join("crashes")).into_iter().flatten().flatten().any(|bug| {
            std::fs::read_to_string(bug.path().join("title")).is_ok_and(|t| t.starts_with("KASAN:"))
        })
    })
}

fn print(figures: &[Figure], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(figures)?);
    } else {
        for f in figures {
            println!("{:<38} {:>9.2} {:<4} {}", f.name, f.value, f.unit, f.note);
        }
    }
    Ok(())
}

/// A guest loop whose rate is compared between the kernels: `ops` operations per run of `sh`.
struct Loop {
    name: &'static str,
    what: &'static str,
    ops: u32,
    script: &'static str,
}

/// What resmgr costs on the paths it guards: the same guest loops on the vanilla and the
/// resmgr kernel, on an at24 behind i2c-stub (kernel memory, so no emulated bus latency hides
/// the difference); the figure is resmgr's rate over vanilla's (1.00 = no cost). `$NVMEM` and
/// `$BUS` are the at24's nvmem device and the adapter number.
fn overhead(args: &Args) -> Result<Vec<Figure>> {
    const LOOPS: [Loop; 3] = [
        Loop {
            name: "resmgr overhead: nvmem sysfs read",
            what: "1-byte reads of the at24's sysfs nvmem file",
            ops: 20 * 256,
            script: "for i in $(seq 20); do dd if=/sys/bus/nvmem/devices/$NVMEM/nvmem of=/dev/null bs=1 count=256 2>/dev/null || exit 1; done",
        },
        Loop {
            name: "resmgr overhead: in-kernel nvmem read",
            what: "16-byte nvmem_device_read()s through the nvmem-holder module",
            ops: 500,
            script: "modprobe nvmem-holder && echo \"bench $NVMEM\" > /sys/kernel/debug/nvmem-holder/get || exit 1; \
                     i=0; while [ $i -lt 500 ]; do read x < /sys/kernel/debug/nvmem-holder/bench/read || exit 1; \
                     case $x in -*) exit 1;; esac; i=$((i+1)); done; echo bench > /sys/kernel/debug/nvmem-holder/put",
        },
        Loop {
            name: "resmgr overhead: /dev/i2c-N transfer",
            what: "SMBus byte reads through /dev/i2c-N (i2cdump)",
            ops: 10 * 256,
            script: "for i in $(seq 10); do i2cdump -f -y $BUS 0x50 b >/dev/null || exit 1; done",
        },
    ];
    const ROUNDS: u32 = 3;
    let rt = crate::runtime()?;
    // rates[loop][kernel]
    let mut rates = [[0.0f64; 2]; LOOPS.len()];
    // What resmgr costs: the same source with and without the series.
    let pair = [harness::drive::scenario::KernelVariant::Vanilla, harness::drive::scenario::KernelVariant::Resmgr];
    for (k, variant) in pair.into_iter().enumerate() {
        let choice = KernelChoice { src: args.kernel.src.clone(), ..KernelChoice::of_variant(variant) };
        let (kernel, image) = artifacts::kernel_and_image(&choice)?;
        let mut config = VmConfig::new(kernel.bzimage.clone(), vec![image]);
        config.accel = args.accel;
        config.log_dir = Some(harness::paths::results_dir().join(format!("bench-overhead-{variant}")));
        let durations = rt.block_on(async {
            let vm = Vm::boot(&config, Vec::new()).await?;
            let agent = vm.agent();
            let bus = harness::devices::providers::i2c_stub(agent, 0x50).await?;
            let nvmem = harness::devices::providers::at24_new(agent, bus, "24c02", 0x50).await?;
            let mut durations = Vec::new();
            for l in &LOOPS {
                let script = format!("BUS={bus}; NVMEM={nvmem}; {}", l.script);
                // The fastest of a few runs: other load on the host only ever slows a run down.
                let mut fastest = Duration::MAX;
                for _ in 0..ROUNDS {
                    let out = agent.exec(&["sh", "-c", &script], vm.pace().scale(Duration::from_secs(300))).await?;
                    if out.status != Some(0) {
                        anyhow::bail!("{} on {variant}: {:?}, {}", l.name, out.status, String::from_utf8_lossy(&out.stderr));
                    }
                    fastest = fastest.min(out.duration);
                }
                durations.push(fastest);
            }
            vm.shutdown(Duration::from_secs(10)).await?;
            anyhow::Ok(durations)
        })?;
        for (i, d) in durations.iter().enumerate() {
            rates[i][k] = f64::from(LOOPS[i].ops) / d.as_secs_f64().max(1e-9);
        }
    }
    Ok(LOOPS
        .iter()
        .zip(rates)
        .map(|(l, [vanilla, resmgr])| Figure {
            name: l.name,
            value: resmgr / vanilla,
            unit: "x",
            note: format!("{}: vanilla {vanilla:.0}/s, resmgr {resmgr:.0}/s ({} ops, fastest of {ROUNDS} guest-timed runs, {})", l.what, l.ops, args.accel),
        })
        .collect())
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
    let log = harness::paths::repo_root().join("harness/report/tests/data/project-gpio-virtuser-proc-interrupts-uaf.log");
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

/// The kernel's work to `/init` in guest instructions: one boot under TCG with `-icount`,
/// where the kernel's clock counts instructions. Unlike the boot times it does not move
/// with the host's speed or load, so a boot change can be judged by one figure.
fn boot_instructions(kernel: &artifacts::Kernel, image: &std::path::Path) -> Result<Figure> {
    let mut config = VmConfig::new(kernel.bzimage.clone(), vec![image.to_path_buf()]);
    config.accel = Accel::Tcg;
    config.icount = true;
    let phases = crate::runtime()?.block_on(async {
        let vm = Vm::boot(&config, Vec::new()).await?;
        let phases = vm.boot_phases();
        vm.shutdown(Duration::from_secs(10)).await?;
        anyhow::Ok(phases)
    })?;
    let to_init = phases
        .and_then(|p| p.init_kernel_time)
        .context("the -icount boot's console has no \"Run /init as init process\" with a kernel timestamp")?;
    Ok(Figure {
        name: "boot: kernel start to /init, guest instructions",
        value: to_init.as_secs_f64(),
        unit: "G insn",
        note: "TCG -icount shift=0 (one instruction per guest ns): host-independent".into(),
    })
}

/// Where the boots' time went, averaged: QEMU start to the first console line, the kernel
/// to `/init` (host clock, and the kernel's own timestamp), `/init` to the agent's answer.
fn boot_breakdown(phases: &[BootPhases]) -> Vec<Figure> {
    let secs = |f: &dyn Fn(&BootPhases) -> Option<Duration>| -> Vec<f64> { phases.iter().filter_map(f).map(|d| d.as_secs_f64()).collect() };
    let first = secs(&|p| Some(p.first_line));
    let kernel = secs(&|p| Some(p.init?.saturating_sub(p.first_line)));
    let kernel_own = secs(&|p| p.init_kernel_time);
    let init = secs(&|p| Some(p.agent.saturating_sub(p.init?)));
    let figure = |name, v: &[f64], note: &str| Figure { name, value: mean(v), unit: "s", note: format!("{note} ({} boots: {})", v.len(), list(v)) };
    vec![
        figure("boot: QEMU start to first console line", &first, "firmware, kernel load and decompression, early kernel"),
        figure("boot: first console line to /init", &kernel, "host clock"),
        figure("boot: kernel start to /init (kernel clock)", &kernel_own, "printk time of \"Run /init as init process\""),
        figure("boot: /init to agent ready", &init, "host clock"),
    ]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn list(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
}
