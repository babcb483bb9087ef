//! `cargo xtask replay results/RUN`: run a recorded schedule again, step for step, against
//! the kernel and the image the run used, into a new run folder.
//!
//! The replay is judged against the expectation recorded in `schedule.json` for the run's
//! kernel variant: exit 0 when it meets it, 1 when not, 2 on a harness error.
//!
//! `schedule.json` is validated on load (every field; errors name file, line and column and
//! exit 2). The image is the one recorded in `meta.json` while it is still in the cache;
//! otherwise the replay says so and builds one from the current `images/` sources.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use harness::results::Meta;
use harness::scenario::KernelVariant;
use harness::schedule::Schedule;
use harness::torture::{run_recorded, RunOptions, RunRequest};
use harness::vm::Accel;

#[derive(clap::Args)]
pub struct Args {
    /// The run folder to replay (holds meta.json and schedule.json).
    run: PathBuf,
    /// Accelerator: kvm, tcg, or auto.
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Seconds QEMU gets to report DEVICE_DELETED before an unplug counts as stuck.
    #[arg(long, default_value_t = 10)]
    unplug_timeout: u64,
}

fn read_meta(path: &std::path::Path) -> Result<Meta> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}:{}: not a valid run record: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// The image to boot: the recorded one while it is cached, else a fresh build (said loudly).
fn image_for(meta: &Meta) -> Result<(PathBuf, String)> {
    let recorded = meta.image.as_ref();
    if let Some(image) = recorded
        .and_then(|i| i.key.as_deref())
        .and_then(harness::image::cached)
    {
        eprintln!(
            "replay: booting the run's image {} ({})",
            image.key,
            image.path.display()
        );
        return Ok((image.path, image.key));
    }
    let why = match recorded {
        Some(i) => format!(
            "the run's image {} ({}) is no longer in the cache",
            i.key.as_deref().unwrap_or("(no key recorded)"),
            i.path.display()
        ),
        None => "the run recorded no image (made before images were recorded)".to_string(),
    };
    let modules = meta.kernel.modules.clone();
    eprintln!(
        "replay: {why}; building one from the current images/ sources{}",
        modules.as_ref().map_or(String::new(), |m| format!(
            " with the kernel's modules from {}",
            m.display()
        ))
    );
    let image = harness::image::build(&harness::image::ImageRequest { modules })?;
    eprintln!(
        "replay: built image {} ({})",
        image.key,
        image.path.display()
    );
    Ok((image.path, image.key))
}

pub fn run(args: Args) -> Result<ExitCode> {
    let skipped = std::fs::read_to_string(args.run.join("meta.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<harness::results::SkipMeta>(&t).ok());
    if let Some(skip) = skipped {
        bail!(
            "{} was skipped on {} ({}): there is nothing to replay; run it with: {}",
            args.run.display(),
            skip.kernel_variant,
            skip.skipped,
            skip.reproducer
        );
    }
    let meta = read_meta(&args.run.join("meta.json"))?;
    let schedule = Schedule::load(&args.run.join("schedule.json"))?;
    let kernel = meta.kernel.clone();
    if !kernel.bzimage.is_file() {
        bail!(
            "the kernel this run used ({}) is gone; rebuild it with: {}",
            kernel.bzimage.display(),
            meta.reproducer
        );
    }
    let (initrd, image_key) = image_for(&meta)?;
    // Runs recorded before meta.json named the variant name its series.
    let Some(variant) = meta.kernel_variant.or_else(|| KernelVariant::of_series(kernel.series.as_deref())) else {
        bail!("the run's kernel series {:?} is no kernel variant this version knows", kernel.series);
    };
    let request = RunRequest {
        kernel,
        variant,
        initrd,
        image_key: Some(image_key),
        schedule,
        accel: args.accel,
        options: RunOptions { unplug_timeout: Duration::from_secs(args.unplug_timeout), ..Default::default() },
        results_root: args.run.parent().map(PathBuf::from).unwrap_or_else(harness::paths::results_dir),
        reproducer: format!("cargo xtask replay {}", args.run.display()),
    };
    let verdict = crate::runtime()?.block_on(run_recorded(request))?;
    println!("replay of {} → {}", meta.run_id, verdict.dir.display());
    for f in &verdict.findings {
        println!("    {f}");
    }
    let judged = &verdict.summary;
    println!("expected on {variant}: {} — {}", judged.expected, if judged.expectation_met { "met" } else { "NOT met" });
    for why in &judged.why_not {
        println!("    {why}");
    }
    if crate::torture::report_write_errors(std::slice::from_ref(&verdict)) {
        return Ok(ExitCode::from(2));
    }
    Ok(if judged.expectation_met { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
