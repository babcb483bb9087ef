//! Progress of runs, for a person at a terminal or for a CI log.
//!
//! At a terminal: one live bar per running VM (all of them under `--jobs N`), lines printed
//! above the bars. Without one (CI, a pipe): plain lines on stderr — one per step and one per
//! finished run — since a bar that is never drawn says nothing in a log.

use std::io::IsTerminal;

/// Where progress goes. Cheap to clone: every parallel run shares one.
#[derive(Clone, Debug)]
pub enum Progress {
    /// Live bars on stderr (a terminal).
    Bars(indicatif::MultiProgress),
    /// Plain lines on stderr.
    Lines,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::auto()
    }
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise.
    pub fn auto() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::Bars(indicatif::MultiProgress::new())
        } else {
            Progress::Lines
        }
    }

    /// Prints a line (above the bars, if any).
    pub fn line(&self, text: &str) {
        match self {
            Progress::Bars(bars) => {
                if bars.println(text).is_err() {
                    eprintln!("{text}");
                }
            }
            Progress::Lines => eprintln!("{text}"),
        }
    }

    /// The progress of one run of `steps` steps, named `label`.
    pub fn run(&self, label: &str, steps: u64) -> RunProgress {
        let bar = match self {
            Progress::Bars(bars) => {
                let bar = bars.add(indicatif::ProgressBar::new(steps).with_style(
                    indicatif::ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                ));
                bar.set_prefix(label.to_string());
                bar.set_message("booting");
                Some(bar)
            }
            Progress::Lines => {
                eprintln!("{label}: booting");
                None
            }
        };
        RunProgress { bar, label: label.to_string(), steps }
    }
}

/// One run's bar or lines.
pub struct RunProgress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    steps: u64,
}

impl RunProgress {
    /// Step `index` (1-based) ended, with `status` (`ok`, `failed`, ...).
    pub fn step(&self, index: usize, description: &str, status: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(index as u64);
                bar.set_message(description.to_string());
            }
            None => eprintln!("{}: step {index}/{}: {description}: {status}", self.label, self.steps),
        }
    }
}

impl Drop for RunProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
