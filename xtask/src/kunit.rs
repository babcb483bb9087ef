//! `cargo xtask kunit [--series NAME] [--filter GLOB]`: boot the kernel with its modules, load
//! its KUnit test modules, collect every suite's KTAP (debugfs, cross-checked with the
//! console) and crash reports, write `results/<run>/` and print a per-suite table
//! (`harness::drive::kunit`).
//!
//! Exit status: 0 when every suite passed, 1 on a failed or missing result or a crash report,
//! 2 when it could not run (the kernel has no KUnit, a build failed, no guest).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use harness::drive::kunit::{self, Filter};
use harness::judge::results::{Meta, RunDir};
use harness::run::vm::{Accel, Vm, VmConfig};

use crate::artifacts::{self, KernelChoice};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kernel: KernelChoice,
    /// Only suites whose name matches this glob (`*`, `?`, `[...]`, `{a,b}`).
    #[arg(long, value_name = "GLOB")]
    filter: Option<String>,
    /// Accelerator: kvm, tcg, or auto.
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Seconds one module load (all its suites) may take on our reference machines under
    /// TCG; scaled by the pace this host shows at boot (see `harness::run::pace`).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    timeout: u64,
    /// Where the run folder goes.
    #[arg(long, value_name = "DIR")]
    results: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let filter = Filter::new(args.filter.as_deref())?;
    let kernel = artifacts::kernel(&args.kernel)?;
    let mut modules = Vec::new();
    if let Some(built) = &kernel.built {
        let config = std::fs::read_to_string(&built.config)
            .with_context(|| format!("reading the kernel config {}", built.config.display()))?;
        let kc = kunit::KunitConfig::from_config(&config);
        if !kc.kunit {
            bail!(
                "kernel {} was built without KUnit (no CONFIG_KUNIT in {}): nothing to run. \
                 KUnit is in the resmgr series' config: try `cargo xtask kunit --series resmgr`",
                kernel.label,
                built.config.display()
            );
        }
        if !kc.debugfs {
            eprintln!("kunit: CONFIG_KUNIT_DEBUGFS is not set: results come from the console only");
        }
        if let Some(tree) = &kernel.modules {
            modules = kunit::find_test_modules(tree)?;
        }
    } else {
        eprintln!("kunit: a prebuilt --bzimage has no config or modules here: only its built-in suites run");
    }
    // Only modules with a matching suite are loaded (all of them when names are unknown).
    modules.retain(|m| m.suites.is_empty() || m.suites.iter().any(|s| filter.matches(s)));
    let image = artifacts::image_for(&kernel)?;
    eprintln!(
        "kunit: {} test module(s): {}",
        modules.len(),
        modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
    );

    let root = args.results.clone().unwrap_or_else(harness::paths::results_dir);
    let run_name = match &args.kernel.series {
        Some(s) => format!("kunit-{s}"),
        None => "kunit".to_string(),
    };
    let mut run = RunDir::create(&root, &run_name)?;
    let reproducer = reproducer(&args);
    let mut meta = Meta {
        run_id: run.id(),
        scenario: run_name.clone(),
        seed: 0,
        reproducer: reproducer.clone(),
        replay: reproducer,
        kernel: kernel.meta(),
        kernel_variant: harness::drive::scenario::KernelVariant::of_series(args.kernel.series.as_deref()),
        image: Some(harness::judge::results::ImageMeta { key: Some(image.key.clone()), path: image.path.clone() }),
        qemu_version: None,
        accel: None,
        pace: None,
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        repeat: None,
    };
    run.write_json("meta.json", &meta)?;

    let mut config = VmConfig::new(kernel.bzimage.clone(), vec![image.path.clone()]);
    config.accel = args.accel;
    config.log_dir = Some(run.path().to_path_buf());
    if let Some(glob) = filter.kunit_glob() {
        config.cmdline.push(format!("kunit.filter_glob={glob}"));
    }
    let parser = Arc::new(Mutex::new(report::Parser::new()));
    let sink = {
        let parser = parser.clone();
        move |line: &harness::run::console::ConsoleLine| {
            let mut p = parser.lock().unwrap_or_else(|e| e.into_inner());
            p.feed(line.text.as_bytes());
            p.feed(b"\n");
        }
    };
    eprintln!("kunit: booting {} ...", kernel.describe());
    let collected = crate::runtime()?.block_on(async {
        let mut vm = Vm::boot(&config, vec![Box::new(sink)]).await.context("booting the kernel")?;
        meta.qemu_version = Some(vm.qemu_version().to_string());
        meta.accel = Some(vm.accel().to_string());
        meta.pace = Some(vm.pace());
        run.write_json("meta.json", &meta)?;
        // `--timeout` is for our reference machines under TCG; a slower host gets more.
        let deadline = vm.pace().scale(Duration::from_secs(args.timeout));
        let collected = kunit::run_in_guest(&mut vm, &modules, &filter, deadline, &parser).await;
        let _ = vm.shutdown(Duration::from_secs(10)).await;
        anyhow::Ok(collected)
    })?;
    let mut collected = collected;
    // What the console printed after the last take (a report cut short by the shutdown).
    let rest =
        std::mem::replace(&mut *parser.lock().unwrap_or_else(|e| e.into_inner()), report::Parser::new())
            .finish();
    collected.outside_loads.extend(rest.iter().cloned());
    collected.reports.extend(rest);
    for load in &collected.loads {
        run.append_step(load)?;
    }
    for r in &collected.reports {
        run.add_report(r, None, None)?;
    }

    let console_log = std::fs::read_to_string(run.path().join("console.log")).unwrap_or_default();
    let console = ktap::parse(&console_log);
    let verdict = kunit::combine(&console, &collected, &modules, &filter);
    run.write_file("ktap.txt", kunit::raw_ktap(&verdict, &collected, &console_log).as_bytes())?;
    run.write_file("junit.xml", kunit::junit(&verdict)?.as_bytes())?;
    run.write_file("summary.md", kunit::summary_markdown(&run.id(), &kernel.label, &verdict).as_bytes())?;
    print!("{}", kunit::table(&verdict));
    println!("results: {}", run.path().display());
    Ok(if verdict.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The command line that runs this again.
fn reproducer(args: &Args) -> String {
    let mut cmd = "cargo xtask kunit".to_string();
    if let Some(s) = &args.kernel.series {
        cmd.push_str(&format!(" --series {s}"));
    }
    if let Some(s) = &args.kernel.src {
        cmd.push_str(&format!(" --src {}", s.display()));
    }
    if let Some(b) = &args.kernel.bzimage {
        cmd.push_str(&format!(" --bzimage {}", b.display()));
    }
    if let Some(f) = &args.filter {
        cmd.push_str(&format!(" --filter '{f}'"));
    }
    cmd
}
