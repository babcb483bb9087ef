//! End to end: what people and the nightly workflow get from real runs. `xtask torture` makes
//! run folders (quick shipped scenarios on the kernel under test, in tempdirs); headless
//! Chromium loads a run's `index.html` and the results root's; `.ci/merge-gate`, the command
//! the workflow's merge job runs, gates real shard folders; and every run's `kcidb.json` is
//! validated with KernelCI's kcidb-io. They boot real VMs through the cached kernels
//! `cargo xtask test` builds first.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::judge::results::RunView;
use harness::drive::scenario::Scenario;

/// A quick scenario (one VM, a few steps) whose expectation on vanilla is a KASAN report.
const FINDING: &str = "gpio-virtuser-irq-teardown";
/// A quick scenario clean on every kernel.
const CLEAN: &str = "usb-kbd-cycle";
/// The seed the shipped expectations were measured with.
const SEED: &str = "348300539442052";

/// How long one Chromium page load may take. Chromium runs on the host, not in the guest, but
/// it shares the cores with the VMs of parallel tests: generous, and it is killed past it.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(120);

fn shipped(name: &str) -> Scenario {
    Scenario::load(&common::repo_root().join("scenarios").join(format!("{name}.yaml"))).unwrap()
}

/// The run folders (those with a meta.json) directly under `root`.
fn run_folders(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("meta.json").is_file()).collect();
    dirs.sort();
    dirs
}

/// Every run folder's kcidb.json, validated with kcidb-io; the number of incidents (crash
/// reports) it must carry is the number the folder filed.
fn validate_kcidb(run: &Path) {
    let path = run.join(harness::judge::kcidb::FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    testenv::validate_kcidb(&text);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let crashes = RunView::load(run).unwrap().crashes.len();
    let incidents = value["incidents"].as_array().map_or(0, Vec::len);
    assert_eq!(incidents, crashes, "{}", path.display());
    let status = value["tests"][0]["status"].as_str().unwrap_or_default();
    assert_eq!(status, if crashes > 0 { "FAIL" } else { "PASS" }, "{}", path.display());
}

/// Where a person finds the screenshots: the cargo target dir's `html-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
    let dir = common::repo_root().join(target).join("html-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What headless Chromium made of one page.
struct Loaded {
    dom: scraper::Html,
    /// The page's console messages and uncaught script errors, as Chromium logged them.
    console: Vec<String>,
}

/// Loads `page` in headless Chromium (a private profile, killed with everything it started
/// past [`CHROMIUM_DEADLINE`]): the DOM it built, what the page logged to its console, and a
/// screenshot of the first `height` pixels at 1280 wide written to `screenshot`.
fn chromium(page: &Path, screenshot: &Path, height: u32) -> Loaded {
    use std::os::unix::process::CommandExt;
    let scratch = tempfile::tempdir().unwrap();
    let (dom_path, log_path) = (scratch.path().join("dom.html"), scratch.path().join("stderr.log"));
    let mut cmd = Command::new("chromium");
    cmd.args(["--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", scratch.path().join("profile").display()))
        .arg(format!("--window-size=1280,{height}"))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom_path).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        // Its own process group: the browser's helpers are killed with it.
        .process_group(0);
    if nix::unistd::Uid::effective().is_root() {
        // Chromium refuses to run as root inside its sandbox.
        cmd.arg("--no-sandbox");
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("running chromium: {e}; `cargo xtask test` installs it (Debian's chromium package, harness::host::BROWSER)")
    });
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > CHROMIUM_DEADLINE {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever it left running (or all of it, past the deadline).
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("chromium did not finish {} in {CHROMIUM_DEADLINE:?}; killed\n{log}", page.display()));
    assert!(status.success(), "chromium on {}: {status}\n{log}", page.display());
    assert!(screenshot.is_file(), "chromium wrote no screenshot {}\n{log}", screenshot.display());
    // `[pid:tid:time:INFO:CONSOLE:LINE] "message", source: URL (LINE)`: console.* calls,
    // uncaught exceptions, resources that failed to load.
    let console = log.lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect();
    Loaded { dom: scraper::Html::parse_document(&std::fs::read_to_string(&dom_path).unwrap()), console }
}

fn select<'a>(dom: &'a scraper::Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    dom.select(&scraper::Selector::parse(css).unwrap()).collect()
}

/// `left:12.345%` (and `width:`) of an element's style.
fn style_pct(e: &scraper::ElementRef, key: &str) -> f64 {
    let style = e.value().attr("style").unwrap_or_default();
    style
        .split(';')
        .find_map(|d| d.trim().strip_prefix(key)?.strip_prefix(':')?.strip_suffix('%')?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in style {style:?}"))
}

/// Every link of `dom` (loaded from `page`) that is not to a fragment resolves to a file
/// inside `within`; every fragment link to an element of the page. Returns the files linked.
fn check_links(dom: &scraper::Html, page: &Path, within: &Path) -> Vec<PathBuf> {
    let base = page.parent().unwrap();
    let mut files = Vec::new();
    for a in select(dom, "a[href]") {
        let href = a.value().attr("href").unwrap();
        if let Some(id) = href.strip_prefix('#') {
            assert_eq!(select(dom, &format!("[id=\"{id}\"]")).len(), 1, "{}: link {href} to no element", page.display());
            continue;
        }
        assert!(!href.contains(':') && !href.starts_with('/'), "{}: a link that is not relative: {href}", page.display());
        let decoded = percent_encoding::percent_decode_str(href).decode_utf8().unwrap();
        let target = std::fs::canonicalize(base.join(decoded.as_ref()))
            .unwrap_or_else(|e| panic!("{}: link {href} resolves to nothing: {e}", page.display()));
        assert!(target.is_file(), "{}: link {href} is not a file", page.display());
        assert!(target.starts_with(std::fs::canonicalize(within).unwrap()), "{}: link {href} leaves {}", page.display(), within.display());
        files.push(target);
    }
    files
}

/// The console check can fail: a page with a script error and a console.error is caught.
fn console_check_catches_a_script_error(scratch: &Path) {
    let page = scratch.join("broken.html");
    std::fs::write(&page, "<!DOCTYPE html><html><body><script>console.error('boom'); noSuchFunction();</script></body></html>").unwrap();
    let loaded = chromium(&page, &scratch.join("broken.png"), 200);
    let all = loaded.console.join("\n");
    assert!(all.contains("boom") && all.contains("noSuchFunction"), "Chromium's log format changed: the console check sees nothing:\n{all}");
}

/// A real run of a scenario with a KASAN finding on vanilla, its page and the results root's
/// page in headless Chromium: the timeline with every recorded step, each crash report as a
/// marker at the end of the step it appeared in, linked to its report (and symbolized trace
/// where there is one), every relative link to a file in the results folder, no script and
/// nothing on the console; screenshots in the target dir. The kcidb.json validates.
#[test]
fn e2e_run_pages_load_in_headless_chromium() {
    let kernel = testenv::kernel();
    let expectation = shipped(FINDING).expectation(kernel);
    let results = tempfile::tempdir().unwrap();
    let run = common::xtask(&["torture", "--scenario", FINDING, "--kernel", kernel.name(), "--seed", SEED], results.path());
    assert_eq!(run.status.code(), Some(0), "the shipped expectation on {kernel} is met: {}", run.all);
    let dirs = run_folders(results.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}\n{}", run.all);
    let dir = &dirs[0];
    let view = RunView::load(dir).unwrap();
    assert_eq!(view.crashes.is_empty(), expectation.is_clean(), "{:?} vs {}", view.crashes, expectation.describe());
    validate_kcidb(dir);

    let scratch = tempfile::tempdir().unwrap();
    console_check_catches_a_script_error(scratch.path());
    let shots = screenshot_dir();
    let page = dir.join(harness::judge::html::PAGE);
    let loaded = chromium(&page, &shots.join(format!("run-{FINDING}-{kernel}.png")), 1400);
    let dom = &loaded.dom;
    assert!(loaded.console.is_empty(), "{}: console messages:\n{}", page.display(), loaded.console.join("\n"));
    assert!(select(dom, "script").is_empty(), "the page has no script");

    // The timeline: an axis, one bar per recorded step, each linked to its row below.
    assert!(select(dom, "#timeline .axis .tick").len() >= 2);
    let steps = select(dom, "#timeline #steps a.step");
    assert_eq!(steps.len(), view.steps.len(), "one bar per line of steps.jsonl");
    let bar = |index: usize| {
        *steps.iter().find(|s| s.value().attr("href") == Some(&format!("#step-{index}"))).unwrap_or_else(|| panic!("no bar for step {index}"))
    };
    for s in &view.steps {
        bar(s["index"].as_u64().unwrap() as usize);
    }
    // Each crash report: a marker at the end of its step, linked to its report.
    let markers = select(dom, "#timeline #reports a.marker.crash");
    assert_eq!(markers.len(), view.crashes.len());
    for c in &view.crashes {
        let href = format!("crashes/{}/report.txt", c.hash);
        let marker = markers.iter().find(|m| m.value().attr("href") == Some(&href)).unwrap_or_else(|| panic!("no marker for {}", c.title));
        let step = c.step.unwrap_or_else(|| panic!("{} filed without its step", c.title));
        assert_eq!(marker.value().attr("data-step"), Some(step.to_string().as_str()));
        let b = bar(step);
        let end = style_pct(&b, "left") + style_pct(&b, "width");
        assert!((style_pct(marker, "left") - end).abs() < 0.01, "marker of {} not at the end of step {step}", c.title);
        let row_links: Vec<&str> = select(dom, "#crashes a").iter().filter_map(|a| a.value().attr("href")).collect();
        assert!(row_links.contains(&href.as_str()), "{row_links:?}");
        if c.symbolized {
            let sym = format!("crashes/{}/symbolized.txt", c.hash);
            assert!(row_links.contains(&sym.as_str()), "no symbolized trace link for {}: {row_links:?}", c.title);
        }
    }
    // The header reads as text: the pace a figure, not the JSON it is stored as.
    let header: String = select(dom, "body > p").first().unwrap().text().collect();
    assert!(header.contains(&format!("kernel {kernel} ")) && header.contains(" · pace ") && !header.contains('{'), "{header}");
    assert!(select(dom, "#reproducer").first().is_some_and(|e| e.text().collect::<String>().contains(&format!("--seed {SEED}"))));
    let linked = check_links(dom, &page, results.path());
    assert!(linked.iter().any(|f| f.ends_with("console.log")), "{linked:?}");

    // The results root's page: the run, linked to its page.
    let root_page = results.path().join(harness::judge::html::PAGE);
    let loaded = chromium(&root_page, &shots.join(format!("root-{FINDING}-{kernel}.png")), 500);
    assert!(loaded.console.is_empty(), "{}: console messages:\n{}", root_page.display(), loaded.console.join("\n"));
    let rows = select(&loaded.dom, "#runs tr td:first-child a");
    let run_id = dir.file_name().unwrap().to_str().unwrap();
    assert_eq!(rows.iter().map(|a| a.value().attr("href").unwrap()).collect::<Vec<_>>(), [format!("{run_id}/index.html")]);
    check_links(&loaded.dom, &root_page, results.path());
}

/// `torture --shard K/2 --seed S` twice into their own folders.
fn shards(scenario_dir: &Path, kernel: &str) -> (tempfile::TempDir, tempfile::TempDir, Vec<Option<i32>>) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut codes = Vec::new();
    for (k, dir) in [("1/2", &a), ("2/2", &b)] {
        let args = ["torture", "--scenario-dir", scenario_dir.to_str().unwrap(), "--kernel", kernel, "--seed", SEED, "--iterations", "1", "--shard", k];
        let run = common::xtask(&args, dir.path());
        assert!(matches!(run.status.code(), Some(0 | 1)), "{}", run.all);
        assert_eq!(run_folders(dir.path()).len(), 1, "one run per shard: {}", run.all);
        codes.push(run.status.code());
    }
    (a, b, codes)
}

/// `.ci/merge-gate OUT SHARDS...` as the workflow's merge job runs it, with a job summary file.
fn merge_gate(shards: [&Path; 2]) -> (Option<i32>, String, String) {
    let out = tempfile::tempdir().unwrap();
    let step_summary = out.path().join("step-summary.md");
    let merged = Command::new(common::repo_root().join(".ci/merge-gate"))
        .arg(out.path().join("merged"))
        .args(shards)
        .env("XTASK", env!("CARGO_BIN_EXE_xtask"))
        .env("GITHUB_STEP_SUMMARY", &step_summary)
        .output()
        .unwrap();
    let all = format!("{}\n{}", String::from_utf8_lossy(&merged.stdout), String::from_utf8_lossy(&merged.stderr));
    let md = std::fs::read_to_string(&step_summary).unwrap_or_else(|e| panic!("no job summary: {e}\n{all}"));
    let written = std::fs::read_to_string(out.path().join("merged/summary.md")).unwrap();
    assert_eq!(md.matches("# unplug-torture: ").count(), 1, "the job summary holds the merged summary once:\n{md}");
    assert_eq!(md, written, "the job summary is the merged summary.md");
    (merged.status.code(), md, all)
}

/// A local dry run of the nightly workflow's merge/gate step on real shard folders: shards of
/// a scenario whose expectation (here: clean) does not list the title the kernel under test
/// gives fail the gate (exit 1) and the job summary says which title; shards that meet every
/// expectation pass it (exit 0). Every run's kcidb.json validates.
#[test]
fn e2e_merge_gate_fails_on_an_unexpected_title_and_passes_otherwise() {
    let kernel = testenv::kernel();
    let finding = shipped(FINDING);
    assert!(
        !finding.expectation(kernel).is_clean(),
        "{FINDING} expects {kernel} clean: this test needs a quick scenario with a finding on the kernel under test"
    );
    let root = common::repo_root().join("scenarios");
    let (met, changed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&met, &changed] {
        std::fs::copy(root.join(format!("{CLEAN}.yaml")), dir.path().join(format!("{CLEAN}.yaml"))).unwrap();
    }
    std::fs::copy(root.join(format!("{FINDING}.yaml")), met.path().join(format!("{FINDING}.yaml"))).unwrap();
    // The copy that expects the kernel under test clean: its finding is a title not listed.
    let text = std::fs::read_to_string(root.join(format!("{FINDING}.yaml"))).unwrap();
    let prefix = format!("  {}: ", kernel.name());
    let lines: Vec<String> =
        text.lines().map(|l| if l.starts_with(&prefix) { format!("{prefix}clean") } else { l.to_string() }).collect();
    let copy = changed.path().join(format!("{FINDING}.yaml"));
    std::fs::write(&copy, lines.join("\n") + "\n").unwrap();
    assert!(Scenario::load(&copy).unwrap().expectation(kernel).is_clean(), "{}", lines.join("\n"));

    let (a, b, codes) = shards(changed.path(), kernel.name());
    assert!(codes.contains(&Some(1)) && codes.contains(&Some(0)), "the shard with the finding misses its expectation: {codes:?}");
    let (code, md, all) = merge_gate([a.path(), b.path()]);
    assert_eq!(code, Some(1), "{all}");
    assert!(md.contains("gate: exit 1") && md.contains("## Runs not as expected"), "{md}");
    let titles: Vec<String> = [a.path(), b.path()]
        .iter()
        .flat_map(|d| run_folders(d))
        .flat_map(|r| RunView::load(&r).unwrap().crashes)
        .map(|c| c.title)
        .collect();
    assert!(!titles.is_empty());
    for t in &titles {
        assert!(md.contains(&format!("unexpected title: {t}")), "the summary says why: {t}\n{md}");
    }
    for r in [a.path(), b.path()].iter().flat_map(|d| run_folders(d)) {
        validate_kcidb(&r);
    }

    let (a, b, codes) = shards(met.path(), kernel.name());
    assert_eq!(codes, [Some(0), Some(0)]);
    let (code, md, all) = merge_gate([a.path(), b.path()]);
    assert_eq!(code, Some(0), "{all}");
    assert!(md.contains("gate: exit 0") && !md.contains("not as expected"), "{md}");
    for r in [a.path(), b.path()].iter().flat_map(|d| run_folders(d)) {
        validate_kcidb(&r);
    }
}
