//! `cargo xtask replay results/RUN`: run a recorded schedule again, step for step, against
//! the kernel and the image the run used, into a new run folder.
//!
//! The replay is judged against the expectation recorded in `schedule.json` for the run's
//! kernel variant: exit 0 when it meets it, 1 when not, 2 on a harness error. It answers the
//! maintainer's question in one short table: each crash title of the original run,
//! reproduced or not (with `--repeat N`, in how many of the N replays), and any title the
//! original did not show.
//!
//! `schedule.json` is validated on load (every field; errors name file, line and column and
//! exit 2). The image is the one recorded in `meta.json` while it is still in the cache;
//! otherwise the replay says so and builds one from the current `images/` sources.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use harness::judge::results::Meta;
use harness::drive::scenario::KernelVariant;
use harness::drive::schedule::Schedule;
use harness::drive::torture::{run_recorded, RunOptions, RunRequest};
use harness::run::vm::Accel;

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
    /// Replay this many times (one run folder each) and give each bug's reproduction rate.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
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
        .and_then(harness::build::image::cached)
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
    let image = harness::build::image::build(&harness::build::image::ImageRequest { modules })?;
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
        .and_then(|t| serde_json::from_str::<harness::judge::results::SkipMeta>(&t).ok());
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
    let original = harness::judge::results::RunView::load(&args.run)?;
    let results_root = args.run.parent().map(PathBuf::from).unwrap_or_else(harness::paths::results_dir);
    let runtime = crate::runtime()?;
    let stop = runtime.block_on(async { harness::drive::torture::stop_on_signals() })?;
    let mut verdicts = Vec::new();
    for index in 1..=args.repeat {
        let request = RunRequest {
            kernel: kernel.clone(),
            variant,
            initrd: initrd.clone(),
            image_key: Some(image_key.clone()),
            schedule: schedule.clone(),
            accel: args.accel,
            options: RunOptions { unplug_timeout: Duration::from_secs(args.unplug_timeout), ..Default::default() },
            results_root: results_root.clone(),
            reproducer: format!("cargo xtask replay {}", args.run.display()),
            repeat: (args.repeat > 1).then(|| harness::drive::matrix::RepeatMeta::new(index, args.repeat, schedule.seed)),
            stop: stop.clone(),
            progress: harness::drive::progress::Progress::auto(),
        };
        let verdict = runtime.block_on(run_recorded(request))?;
        println!("replay {index}/{} of {} → {}", args.repeat, meta.run_id, verdict.dir.display());
        let stop = verdict.interrupted || verdict.write_error.is_some();
        verdicts.push(verdict);
        if stop {
            break;
        }
    }
    let original_titles: Vec<(String, u32)> = original.crashes.iter().map(|c| (c.title.clone(), c.count)).collect();
    let replays: Vec<&harness::judge::results::RunSummary> = verdicts.iter().map(|v| &v.summary).collect();
    print!("{}", comparison_table(&original_titles, &replays));
    let met = replays.iter().filter(|s| s.expectation_met).count();
    let expected = replays.first().map_or_else(String::new, |s| s.expected.clone());
    println!("expected on {variant}: {expected} — met in {}", harness::judge::tally::rate(met as u32, replays.len() as u32));
    for why in replays.iter().flat_map(|s| &s.why_not).collect::<std::collections::BTreeSet<_>>() {
        println!("    {why}");
    }
    if crate::torture::report_write_errors(&verdicts) {
        return Ok(ExitCode::from(2));
    }
    Ok(if met == replays.len() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The answer to "did it come back?": per crash title of the original run (by exact title,
/// with its count there), in how many replays it appeared; then each title only replays
/// showed, as new.
fn comparison_table(original: &[(String, u32)], replays: &[&harness::judge::results::RunSummary]) -> String {
    let n = replays.len() as u32;
    let hits = |title: &str| replays.iter().filter(|s| s.titles.iter().any(|t| t.title == title)).count() as u32;
    let mut out = String::from("\n| original bug | in the original | in the replay(s) |\n|---|---|---|\n");
    if original.is_empty() {
        out.push_str("| (none: the original was clean) | | |\n");
    }
    for (title, count) in original {
        let h = hits(title);
        let verdict = if h == 0 { "NOT reproduced" } else { "reproduced" };
        out.push_str(&format!("| {title} | {count}x | {verdict} {} |\n", harness::judge::tally::rate(h, n)));
    }
    let mut new: Vec<&str> = Vec::new();
    for t in replays.iter().flat_map(|s| &s.titles) {
        if !original.iter().any(|(o, _)| *o == t.title) && !new.contains(&t.title.as_str()) {
            new.push(&t.title);
        }
    }
    for title in new {
        out.push_str(&format!("| new: {title} | - | {} |\n", harness::judge::tally::rate(hits(title), n)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use harness::judge::results::{RunSummary, TitleCount};

    fn replay(titles: &[&str]) -> RunSummary {
        RunSummary { titles: titles.iter().map(|t| TitleCount { title: t.to_string(), count: 5, follow_ons: vec![] }).collect(), ..RunSummary::default() }
    }

    /// One row per original bug, reproduced or not with its rate, then what is new.
    #[test]
    fn the_table_says_per_original_bug_whether_it_came_back() {
        let uaf = "KASAN: slab-use-after-free Read in at24_read";
        let regmap = "KASAN: slab-use-after-free Read in regmap_read";
        let hung = "INFO: task hung in at24_read";
        let original = [(uaf.to_string(), 24), (regmap.to_string(), 256)];
        let (a, b, c) = (replay(&[uaf, hung]), replay(&[uaf]), replay(&[]));
        assert_eq!(
            comparison_table(&original, &[&a, &b, &c]),
            format!(
                "\n| original bug | in the original | in the replay(s) |\n|---|---|---|\n\
                 | {uaf} | 24x | reproduced 2/3 |\n| {regmap} | 256x | NOT reproduced 0/3 |\n| new: {hung} | - | 1/3 |\n"
            )
        );
        assert!(comparison_table(&[], &[&c]).contains("| (none: the original was clean) | | |\n"));
    }
}
