//! Bounded collections of reports for long streams: the first report of each title is kept
//! with a count of its repeats, up to [`MAX_TITLES`] distinct titles; reports of further new
//! titles are counted as dropped, never silently lost. Memory is bounded by the number of
//! titles, not by how long the console runs. When every place is taken, a whole report takes
//! the place of the latest title whose every report was corrupted: a flood of cut or garbled
//! reports must not crowd out the real one that follows it.

use serde::Serialize;

use crate::{Parser, Report};

/// Distinct titles kept by default (a kernel that prints more distinct crashes than this in
/// one run has bigger problems; the count of the rest is kept).
pub const MAX_TITLES: usize = 256;

/// One title: its first report and how many reports had it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counted {
    pub report: Report,
    pub count: u64,
    /// Every report with this title was interleaved, truncated or cut short.
    pub all_corrupted: bool,
}

/// Reports deduplicated by title, first seen first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Collected {
    pub max_titles: usize,
    pub reports: Vec<Counted>,
    /// Reports not kept: of new titles past `max_titles`, or lost inside the parser (its
    /// pending queue was full).
    pub dropped: u64,
}

impl Default for Collected {
    fn default() -> Self {
        Collected::new(MAX_TITLES)
    }
}

impl Collected {
    pub fn new(max_titles: usize) -> Collected {
        Collected {
            max_titles,
            reports: Vec::new(),
            dropped: 0,
        }
    }

    /// Counts `report` under its title, or keeps it as a new title if there is room (or a
    /// corrupted title to evict, for a whole report).
    pub fn add(&mut self, report: Report) {
        if let Some(c) = self
            .reports
            .iter_mut()
            .find(|c| c.report.title == report.title)
        {
            c.count += 1;
            c.all_corrupted &= report.is_corrupted();
            return;
        }
        if self.reports.len() >= self.max_titles {
            let evict = match report.is_corrupted() {
                true => None,
                false => self.reports.iter().rposition(|c| c.all_corrupted),
            };
            match evict {
                Some(at) => self.dropped += self.reports.remove(at).count,
                None => {
                    self.dropped += 1;
                    return;
                }
            }
        }
        self.reports.push(Counted {
            all_corrupted: report.is_corrupted(),
            report,
            count: 1,
        });
    }

    /// Total reports seen, kept or not.
    pub fn total(&self) -> u64 {
        self.reports.iter().map(|c| c.count).sum::<u64>() + self.dropped
    }

    /// One line for summaries, `None` when nothing was dropped.
    pub fn dropped_note(&self) -> Option<String> {
        (self.dropped > 0).then(|| {
            format!(
                "{} more report(s) not kept: only the first {} distinct titles are kept",
                self.dropped, self.max_titles
            )
        })
    }
}

/// Parses a whole log, keeping at most `max_titles` titles (see [`Collected`]). Reads the
/// log line by line, taking finished reports as it goes, so no report is lost to the
/// parser's own pending limit.
pub fn parse_collected(log: &[u8], max_titles: usize) -> Collected {
    let mut out = Collected::new(max_titles);
    let mut parser = Parser::new();
    for chunk in log.split_inclusive(|&b| b == b'\n') {
        parser.feed(chunk);
        for r in parser.take_settled() {
            out.add(r);
        }
    }
    out.dropped += parser.dropped();
    for r in parser.finish() {
        out.add(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning(n: usize) -> String {
        format!(
            "[   1.0][  T{n}] WARNING: CPU: 0 PID: {n} at drivers/x{n}.c:1 func{n}+0x1/0x2\n\
             [   1.0][  T{n}] Call Trace:\n[   1.0][  T{n}]  func{n}+0x1/0x2\n[   1.0][  T{n}] ---[ end trace 0000000000000000 ]---\n"
        )
    }

    #[test]
    fn parse_keeps_every_report_past_the_pending_limit() {
        let log: String = (0..300).map(warning).collect();
        let reports = crate::parse(log.as_bytes());
        assert_eq!(reports.len(), 300);
        assert_eq!(reports[0].title, "WARNING in func0");
        assert_eq!(reports[299].title, "WARNING in func299");
    }

    #[test]
    fn first_titles_kept_repeats_counted_rest_counted_as_dropped() {
        let mut log = String::new();
        for n in 0..300 {
            log.push_str(&warning(n));
            log.push_str(&warning(n % 3));
        }
        let c = parse_collected(log.as_bytes(), MAX_TITLES);
        assert_eq!(c.reports.len(), MAX_TITLES);
        assert_eq!(c.reports[0].report.title, "WARNING in func0");
        // func0 once per loop turn it was drawn by n % 3 == 0, plus its own.
        assert_eq!(c.reports[0].count, 101);
        assert_eq!(c.dropped, 300 - MAX_TITLES as u64);
        assert_eq!(c.total(), 600);
        assert!(c
            .dropped_note()
            .unwrap()
            .starts_with("44 more report(s) not kept"));
    }

    #[test]
    fn a_whole_report_takes_the_place_of_a_corrupted_title_when_full() {
        let mut c = Collected::new(3);
        let report = |title: &str, corrupted: bool| Report {
            corrupted: corrupted.then(|| "cut short".to_string()),
            ..crate::synthetic::agent_unresponsive(title)
        };
        let named = |title: &str, corrupted: bool| Report { title: title.into(), ..report(title, corrupted) };
        for t in ["a", "b", "c"] {
            c.add(named(t, true));
        }
        c.add(named("b", true));
        c.add(named("d", true));
        assert_eq!(c.dropped, 1, "a corrupted report never evicts");
        c.add(named("whole", false));
        let titles: Vec<&str> = c.reports.iter().map(|r| r.report.title.as_str()).collect();
        assert_eq!(titles, ["a", "b", "whole"]);
        assert_eq!(c.dropped, 2, "c's one report is counted as dropped");
        c.add(named("whole too", false));
        assert_eq!(c.reports.iter().map(|r| r.report.title.as_str()).collect::<Vec<_>>(), ["a", "whole", "whole too"]);
        assert_eq!(c.dropped, 4, "b's two reports");
        c.add(named("third", false));
        assert_eq!(c.reports.iter().map(|r| r.report.title.as_str()).collect::<Vec<_>>(), ["whole", "whole too", "third"]);
        c.add(named("fourth", false));
        assert_eq!(c.reports.len(), 3);
        assert_eq!(c.dropped, 6, "nothing corrupted left to evict: counted as dropped");
        assert_eq!(c.total(), 9);
    }
}
