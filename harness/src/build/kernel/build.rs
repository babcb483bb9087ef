//! Running Kbuild: `make -C <source> O=<objects>` with the pinned toolchain, every line into
//! the build log, a spinner with the elapsed time and the last object built, and on failure
//! the tail of make's errors plus the log's path.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::config::{self, Fragment};
use super::toolchain::Toolchain;

/// How many lines of errors a failure shows (the log has them all).
const TAIL_LINES: usize = 25;

/// The kernel's own make failed (configuration or compilation): the tree cannot be built,
/// as opposed to the harness failing around it (`torture --bisect` skips such a revision).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildFailed(pub String);

/// make for one source tree and object tree, appending to one build log.
pub struct Make<'a> {
    pub source: &'a Path,
    pub objects: &'a Path,
    pub toolchain: &'a Toolchain,
    pub log: PathBuf,
}

impl Make<'_> {
    /// Runs make with `targets`; `what` names the step on the spinner and in errors.
    pub fn run(&self, targets: &[&str], what: &str) -> Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening build log {}", self.log.display()))?;
        log.write_all(format!("\n# {what}: make {}\n", targets.join(" ")).as_bytes())?;
        let mut child = Command::new("make")
            .arg("-C")
            .arg(self.source)
            .arg(format!("O={}", self.objects.display()))
            .args(self.toolchain.make_vars())
            .args(targets)
            .envs(self.toolchain.make_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running make")?;

        let progress = indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] kernel: {prefix} {wide_msg:.dim}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        progress.set_prefix(what.to_string());
        progress.enable_steady_tick(Duration::from_millis(200));
        // Without a terminal the spinner draws nothing: plain lines instead, against the step
        // count this step took last time in this object tree, when there was a last time.
        let steps_file = self.objects.join(format!(".unplug-torture-steps-{}", what.replace(|c: char| !c.is_ascii_alphanumeric(), "_")));
        let mut lines = (!std::io::stderr().is_terminal()).then(|| {
            let expected = std::fs::read_to_string(&steps_file).ok().and_then(|t| t.trim().parse().ok());
            LogLines::new(what, expected)
        });

        // stderr on its own thread so neither pipe can fill up and stall make. Each line is
        // one write to the O_APPEND log, so lines from the two streams never tear.
        let stderr = child.stderr.take().context("make stderr")?;
        let mut err_log = log.try_clone()?;
        let errors = std::thread::spawn(move || {
            let mut tail = VecDeque::with_capacity(TAIL_LINES);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_log.write_all(format!("{line}\n").as_bytes());
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail
        });
        let mut built = 0usize;
        for line in BufReader::new(child.stdout.take().context("make stdout")?).lines().map_while(Result::ok) {
            log.write_all(format!("{line}\n").as_bytes())?;
            // Kbuild's quiet lines: "  CC      kernel/fork.o", "  RUSTC L rust/kernel.o", ...
            let step = line.trim_start();
            if ["CC ", "RUSTC ", "AS ", "LD ", "AR "].iter().any(|p| step.starts_with(p)) {
                built += 1;
                let last = step.split_whitespace().collect::<Vec<_>>().join(" ");
                if let Some(l) = lines.as_mut().and_then(|l| l.line(built, std::time::Instant::now())) {
                    eprintln!("{l}, last {last}");
                }
                progress.set_message(format!("{built} steps, {last}"));
            }
        }
        let status = child.wait().context("waiting for make")?;
        let tail = errors.join().unwrap_or_default();
        progress.finish_and_clear();
        if let Some(l) = &lines {
            eprintln!("kernel: {what}: {} after {built} steps in {:.0?}", if status.success() { "done" } else { "FAILED" }, l.started.elapsed());
        }
        if status.success() && built > 0 {
            // Only an estimate for next time's progress lines: losing it costs nothing.
            let _ = std::fs::write(&steps_file, format!("{built}\n"));
        }
        if !status.success() {
            let tail = if tail.is_empty() { log_tail(&self.log) } else { tail.into_iter().collect() };
            return Err(BuildFailed(format!(
                "kernel {what} failed (make {}: {status}); last lines:\n  {}\nfull log: {}",
                targets.join(" "),
                tail.join("\n  "),
                self.log.display()
            ))
            .into());
        }
        Ok(())
    }
}

/// Progress of a make step as plain lines for a log: one every 10 % of the expected steps
/// when an estimate is known, and one at least every 30 s whatever happens.
struct LogLines {
    what: String,
    started: Instant,
    last: Instant,
    expected: Option<usize>,
    /// Tenths of `expected` already reported.
    tenths: usize,
}

/// The longest silence of [`LogLines`].
const LOG_LINE_INTERVAL: Duration = Duration::from_secs(30);

impl LogLines {
    fn new(what: &str, expected: Option<usize>) -> LogLines {
        let now = Instant::now();
        eprintln!("kernel: {what}: started{}", expected.map_or_else(String::new, |n| format!(" (about {n} steps, as last time)")));
        LogLines { what: what.to_string(), started: now, last: now, expected: expected.filter(|&n| n > 0), tenths: 0 }
    }

    /// The line to print now that `built` steps are done, if one is due.
    fn line(&mut self, built: usize, now: Instant) -> Option<String> {
        let tenths = self.expected.map_or(0, |n| (built * 10 / n).min(9));
        let due = tenths > self.tenths || now.duration_since(self.last) >= LOG_LINE_INTERVAL;
        if !due {
            return None;
        }
        self.tenths = self.tenths.max(tenths);
        self.last = now;
        let elapsed = now.duration_since(self.started).as_secs();
        let share = self.expected.map_or_else(String::new, |n| format!(" (~{}%)", (built * 100 / n).min(99)));
        Some(format!("kernel: {}: {built} steps{share}, {}m{:02}s", self.what, elapsed / 60, elapsed % 60))
    }
}

fn log_tail(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(String::from).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].to_vec()
}

/// `make rustavailable`: Kbuild's own check of rustc, bindgen, libclang and the `core`
/// sources. Without it a missing piece shows up as `CONFIG_RUST` silently dropping out.
pub fn check_rust(make: &Make) -> Result<()> {
    make.run(&["rustavailable"], "Rust toolchain check (make rustavailable)").context(
        "the kernel cannot build Rust with this toolchain; the lines above say what is missing \
         (rustc-web, rust-web-src, libclang-dev or bindgen)",
    )
}

/// tinyconfig + `fragment` + olddefconfig, then checks that every requested option survived.
/// Returns the final `.config`.
pub fn configure(make: &Make, fragment: &Fragment) -> Result<String> {
    make.run(&["tinyconfig"], "tinyconfig")?;
    let dot_config = make.objects.join(".config");
    config::apply(&dot_config, fragment)?;
    make.run(&["olddefconfig"], "olddefconfig")?;
    let text = std::fs::read_to_string(&dot_config).with_context(|| format!("reading {}", dot_config.display()))?;
    let lost = fragment.missing_in(&text);
    if !lost.is_empty() {
        bail!(
            "{} requested option(s) did not survive olddefconfig (unmet dependencies or a choice \
             resolved otherwise):\n  {}\nresulting config: {}",
            lost.len(),
            lost.join("\n  "),
            dot_config.display()
        );
    }
    Ok(text)
}

/// bzImage, vmlinux and modules; modules installed into `modules_dir` when there are any.
/// Returns whether there were.
pub fn compile(make: &Make, jobs: usize, modules_dir: &Path) -> Result<bool> {
    let jobs = format!("-j{jobs}");
    make.run(&[&jobs, "bzImage", "modules"], "build")?;
    if modules_dir.exists() {
        std::fs::remove_dir_all(modules_dir).with_context(|| format!("removing {}", modules_dir.display()))?;
    }
    let order = make.objects.join("modules.order");
    let has_modules = std::fs::read_to_string(&order).is_ok_and(|t| !t.trim().is_empty());
    if has_modules {
        let path = format!("INSTALL_MOD_PATH={}", modules_dir.display());
        // Stripped: the image carries these; symbolization reads the unstripped .ko files in
        // the object tree.
        make.run(&["modules_install", &path, "INSTALL_MOD_STRIP=1"], "modules_install")?;
    }
    Ok(has_modules)
}

/// `make kernelrelease`'s answer, as Kbuild wrote it during the build.
pub fn release(objects: &Path) -> Result<String> {
    let path = objects.join("include/config/kernel.release");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let release = text.trim();
    if release.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(release.to_string())
}

/// The log file for a build, started fresh with a header saying what is being built.
pub fn start_log(path: &Path, header: &str) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating build log {}", path.display()))?;
    f.write_all(header.as_bytes())?;
    Ok(())
}

/// One line of ours (not make's) in the build log.
pub fn append_log(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening build log {}", path.display()))?;
    f.write_all(format!("# {line}\n").as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in kernel Makefile: Kbuild's quiet lines on stdout, errors on stderr.
    fn fake_make(dir: &Path) -> (PathBuf, PathBuf, Toolchain) {
        let source = dir.join("src");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(
            source.join("Makefile"),
            "ok:\n\t@echo '  CC      kernel/fork.o'\n\
             rustavailable:\n\t@echo '***' >&2; echo \"*** Rust compiler '$(RUSTC)' could not be found.\" >&2; exit 1\n",
        )
        .unwrap();
        let objects = dir.join("obj");
        std::fs::create_dir(&objects).unwrap();
        (source, objects, Toolchain { bindgen: "/nonexistent/bindgen".into(), versions: String::new() })
    }

    #[test]
    fn make_output_goes_to_the_log_and_failures_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let (source, objects, toolchain) = fake_make(dir.path());
        let log = dir.path().join("build.log");
        start_log(&log, "# header\n").unwrap();
        let make = Make { source: &source, objects: &objects, toolchain: &toolchain, log: log.clone() };
        make.run(&["ok"], "ok step").unwrap();
        let err = check_rust(&make).unwrap_err();
        assert!(err.downcast_ref::<BuildFailed>().is_some(), "a failed make is the tree's failure, not the harness's: {err:#}");
        let err = format!("{err:#}");
        assert!(err.contains("cannot build Rust with this toolchain"), "{err}");
        assert!(err.contains("*** Rust compiler '/usr/bin/rustc' could not be found."), "{err}");
        assert!(err.contains(&format!("full log: {}", log.display())), "{err}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("# header\n"), "{text}");
        assert!(text.contains("# ok step: make ok\n") && text.contains("  CC      kernel/fork.o\n"), "{text}");
        assert!(text.contains("could not be found"), "stderr is logged too: {text}");
    }

    /// Plain progress lines: every 10 % of the estimate, else every 30 s.
    #[test]
    fn log_lines_every_tenth_or_thirty_seconds() {
        let mut known = LogLines::new("build", Some(1000));
        let t0 = known.started;
        assert_eq!(known.line(50, t0 + Duration::from_secs(1)), None);
        assert_eq!(known.line(100, t0 + Duration::from_secs(61)).as_deref(), Some("kernel: build: 100 steps (~10%), 1m01s"));
        assert_eq!(known.line(150, t0 + Duration::from_secs(62)), None);
        assert_eq!(known.line(160, t0 + Duration::from_secs(91)).as_deref(), Some("kernel: build: 160 steps (~16%), 1m31s"));
        assert_eq!(known.line(5000, t0 + Duration::from_secs(92)).as_deref(), Some("kernel: build: 5000 steps (~99%), 1m32s"));
        let mut unknown = LogLines::new("build", None);
        let t0 = unknown.started;
        assert_eq!(unknown.line(900, t0 + Duration::from_secs(29)), None);
        assert_eq!(unknown.line(901, t0 + Duration::from_secs(30)).as_deref(), Some("kernel: build: 901 steps, 0m30s"));
    }

    #[test]
    fn release_comes_from_kbuild() {
        let dir = tempfile::tempdir().unwrap();
        assert!(release(dir.path()).is_err());
        std::fs::create_dir_all(dir.path().join("include/config")).unwrap();
        std::fs::write(dir.path().join("include/config/kernel.release"), "6.12.117\n").unwrap();
        assert_eq!(release(dir.path()).unwrap(), "6.12.117");
    }
}
