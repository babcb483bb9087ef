//! `results/<run>/index.html` and `results/index.html`: what a maintainer looks at.
//!
//! A run's page is one self-contained file (inline CSS, no script, nothing fetched): the
//! reproducer and replay commands, the verdict, and a timeline on one time axis (the run's
//! milliseconds since boot, from `steps.jsonl`): the steps by kind, the kernel's reports as
//! markers on the step they appeared in (each linked to its `report.txt` and
//! `symbolized.txt`), and a lane per holder with what it saw (first error, POLLHUP, its
//! close, late when after an unplug). The root page lists every run and the A/B tables.
//!
//! Both are rendered from the folders on disk ([`RunView`], `summary.json`), never from the
//! run's memory, so the page of a run killed half-way is as valid as the files it had
//! written. Every piece of text goes through [`esc`] (crash titles, holder records, command
//! output are guest-controlled) and every link through [`href`].

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Deserialize;

use crate::judge::observe::ObserverOutcome;
use crate::judge::results::{write_atomic, CrashView, RunSummary, RunView};

/// The page's file name in a run folder and in the results root.
pub const PAGE: &str = "index.html";

/// Renders `run`'s page and writes it atomically into the folder.
pub fn write_run_page(run: &Path) -> Result<()> {
    let view = RunView::load(run)?;
    write_atomic(&run.join(PAGE), render_run(&view).as_bytes())
}

/// Renders the list of runs and A/B tables under `root` and writes it atomically.
pub fn write_root_index(root: &Path) -> Result<()> {
    write_atomic(&root.join(PAGE), render_root(root).as_bytes())
}

/// `s` as HTML text or attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (a guest's binary junk) would make the page invalid.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A relative link to `segments` joined by `/`, each percent-encoded (no segment can leave
/// the folder or start a scheme), ready for an attribute.
pub fn href(segments: &[&str]) -> String {
    let mut out = String::new();
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        if *seg == "." || *seg == ".." {
            out.push_str(&seg.replace('.', "%2E"));
            continue;
        }
        for b in seg.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
code,pre{font:12px ui-monospace,monospace}
pre{background:#f4f4f4;padding:.4em;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
.ok{color:#176117}.bad{color:#b00;font-weight:bold}.dim{color:#777}
#timeline{margin:1em 0;border:1px solid #bbb;padding:4px}
.row{display:flex;align-items:center;min-height:22px;border-bottom:1px dotted #ddd}
.label{width:15em;flex:none;font-size:12px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.track{position:relative;flex:1;height:20px}
.step{position:absolute;top:3px;height:14px;min-width:3px;border-radius:2px;opacity:.85}
.step.plug{background:#2a7de1}.step.unplug{background:#e1572a}.step.hold{background:#8a5cc7}
.step.release{background:#c79a2a}.step.observe{background:#3aa68a}.step.fault{background:#d42a8f}
.step.bind{background:#5a8ae1}.step.other{background:#999}.step.failed{outline:2px solid #b00}
.step.not_run{background:repeating-linear-gradient(45deg,#ddd,#ddd 3px,#fff 3px,#fff 6px)}
.lane{position:absolute;top:8px;height:4px;background:#cdb6ea}
.marker{position:absolute;top:0;transform:translateX(-50%);text-decoration:none;font-size:14px;line-height:20px}
.crash{color:#b00}.error{color:#e1572a}.hup{color:#d42a8f}.close{color:#444}.late{color:#b00}
.axis .tick{position:absolute;top:2px;font-size:11px;color:#555;border-left:1px solid #999;padding-left:2px}
.legend>span{margin-right:1em;font-size:12px}
"#;

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{STYLE}</style></head>\n\
         <body>\n{body}</body></html>\n",
        esc(title)
    )
}

/// One line of `steps.jsonl`, as far as the page needs it (unknown fields ignored, missing
/// ones defaulted: older and torn-down runs still show).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Step {
    index: usize,
    /// Steps in the schedule.
    total: usize,
    description: String,
    started_ms: f64,
    elapsed_ms: f64,
    status: String,
    detail: Option<String>,
    output: Option<String>,
    action: StepAction,
    consumers: Vec<String>,
    observations: Vec<Observation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StepAction {
    op: String,
    name: Option<String>,
    kind: Option<String>,
    on: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Observation {
    path: String,
    /// `None`: a line without one (not written by this harness).
    outcome: Option<ObserverOutcome>,
    detail: String,
}

impl Step {
    fn end_ms(&self) -> f64 {
        self.started_ms + self.elapsed_ms
    }

    fn failed(&self) -> bool {
        !matches!(self.status.as_str(), "ok" | "not_on_this_kernel")
    }

    /// The step's class on the timeline.
    fn class(&self) -> &'static str {
        match self.action.op.as_str() {
            "plug" => "plug",
            "unplug" => "unplug",
            "hold" => "hold",
            "release" => "release",
            "observe" => "observe",
            "fault" => "fault",
            "bind" => "bind",
            _ => "other",
        }
    }

    /// What the step printed: its output, or for a failed step its detail (a failed release
    /// puts the holder's records there).
    fn text(&self) -> &str {
        self.output.as_deref().or(self.detail.as_deref()).unwrap_or("")
    }
}

/// What one holder did, placed on the run's time axis.
struct Lane {
    name: String,
    kind: String,
    on: String,
    start_ms: f64,
    /// The end of its release step; `None`: never released in the steps recorded.
    end_ms: Option<f64>,
    marks: Vec<Mark>,
}

struct Mark {
    at_ms: f64,
    class: &'static str,
    symbol: &'static str,
    text: String,
}

/// The holder handle a hold step's output names: `holder 3 (gpio-cdev) on /dev/gpiochip1`.
fn hold_handle(output: &str) -> Option<u64> {
    output.strip_prefix("holder ")?.split(' ').next()?.parse().ok()
}

/// The holders' lanes. Records come from the release step's output (every record the holder
/// sent, with the guest's monotonic time): they are placed relative to the holder's `ready`
/// record, which arrived as its hold step ended. A holder never released (a killed run) only
/// has what the per-step summary lines show, placed at the end of the step that showed it.
fn lanes(steps: &[Step], total_ms: f64) -> Vec<Lane> {
    let mut lanes = Vec::new();
    for hold in steps.iter().filter(|s| s.action.op == "hold" && s.status == "ok") {
        let Some(handle) = hold_handle(hold.text()) else { continue };
        let name = hold.action.name.clone().unwrap_or_else(|| format!("holder {handle}"));
        let mut lane = Lane {
            name: name.clone(),
            kind: hold.action.kind.clone().unwrap_or_default(),
            on: hold.action.on.clone().unwrap_or_default(),
            start_ms: hold.started_ms,
            end_ms: None,
            marks: Vec::new(),
        };
        let release = steps
            .iter()
            .find(|s| s.index > hold.index && s.action.op == "release" && s.action.name.as_deref() == Some(&name));
        let records: Vec<agent::ConsumerRecord> = release
            .map(|r| r.text().lines().filter(|l| l.starts_with('{')).filter_map(|l| serde_json::from_str(l).ok()).collect())
            .unwrap_or_default();
        let ready = records.iter().find(|r| r.op == agent::HOLDER_READY).map(|r| r.mono_ns);
        if let (Some(release), Some(ready)) = (release, ready) {
            lane.end_ms = Some(release.end_ms());
            let unplugged_before =
                steps.iter().any(|s| s.index > hold.index && s.index < release.index && s.action.op == "unplug");
            let at = |mono_ns: u64| {
                let offset = (mono_ns as f64 - ready as f64) / 1e6;
                (hold.end_ms() + offset).clamp(0.0, total_ms)
            };
            let first_failure = records.iter().find(|r| r.errno.is_some() || r.revents.is_some_and(|e| e & !agent::POLLIN != 0));
            if let Some(r) = first_failure {
                let what = match (&r.errno_name, r.errno, r.revents) {
                    (Some(name), _, _) => format!("-{name}"),
                    (None, Some(errno), _) => format!("errno {errno}"),
                    (None, None, Some(revents)) => agent::poll_flags(revents),
                    _ => String::new(),
                };
                lane.marks.push(Mark { at_ms: at(r.mono_ns), class: "error", symbol: "✖", text: format!("first error: {} → {what}", r.op) });
            }
            if let Some(r) = records.iter().find(|r| r.revents.is_some_and(|e| e & POLLHUP != 0)) {
                let flags = agent::poll_flags(r.revents.unwrap_or_default());
                lane.marks.push(Mark { at_ms: at(r.mono_ns), class: "hup", symbol: "◆", text: format!("{} on {}", flags, r.op) });
            }
            for r in records.iter().filter(|r| r.op == agent::HOLDER_CLOSED) {
                let (class, what) = if unplugged_before { ("late", "late close") } else { ("close", "close") };
                let answer = r.errno_name.as_deref().map(|e| format!(" → -{e}")).unwrap_or_default();
                lane.marks.push(Mark { at_ms: at(r.mono_ns), class, symbol: "■", text: format!("{what}{answer}") });
            }
        } else {
            lane.end_ms = release.map(Step::end_ms);
            let line_of = |s: &Step| s.consumers.iter().find(|l| l.starts_with(&format!("holder {handle} ("))).cloned();
            let first = steps.iter().filter(|s| s.index >= hold.index).find_map(|s| {
                let line = line_of(s)?;
                let (_, seen) = line.split_once("): ")?;
                (seen.starts_with("got -") || seen.starts_with("POLL")).then(|| (s.end_ms(), seen.to_string()))
            });
            if let Some((at_ms, seen)) = first {
                lane.marks.push(Mark { at_ms, class: "error", symbol: "✖", text: format!("first error (seen by the end of this step): {seen}") });
            }
            if let Some(release) = release {
                lane.marks.push(Mark { at_ms: release.end_ms(), class: "close", symbol: "■", text: "released".into() });
            }
        }
        lanes.push(lane);
    }
    lanes
}

/// `POLLHUP` (the same on every Linux architecture).
const POLLHUP: i16 = 0x10;

fn pct(ms: f64, total_ms: f64) -> f64 {
    (ms / total_ms * 100.0).clamp(0.0, 100.0)
}

/// A run's page. Never fails: what is missing or unreadable is said on the page.
pub fn render_run(view: &RunView) -> String {
    let run_id = view.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let meta = view.meta.clone().unwrap_or_default();
    let meta_str = |key: &str| meta.get(key).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let scenario = meta_str("scenario");
    let summary: Option<RunSummary> =
        std::fs::read_to_string(view.path.join("summary.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    let mut problems = view.problems.clone();
    let steps: Vec<Step> = view
        .steps
        .iter()
        .filter_map(|v| match serde_json::from_value(v.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(format!("steps.jsonl: a line not understood: {e}"));
                None
            }
        })
        .collect();

    let mut b = String::new();
    let _ = writeln!(b, "<h1>{} <span class=\"dim\">{}</span></h1>", esc(&scenario), esc(&run_id));
    let kernel = meta.get("kernel").and_then(|k| k.get("label")).and_then(|v| v.as_str()).unwrap_or("");
    let variant = meta.get("kernel_variant").and_then(|v| v.as_str()).unwrap_or("");
    let seed = meta.get("seed").map(|v| v.to_string()).unwrap_or_default();
    let _ = writeln!(
        b,
        "<p>kernel <b>{}</b> {} · seed <code>{}</code> · started {} · accel {} · pace {}</p>",
        esc(variant),
        esc(kernel),
        esc(&seed),
        esc(&meta_str("started")),
        esc(&meta_str("accel")),
        esc(&meta
            .get("pace")
            .and_then(|v| serde_json::from_value::<crate::run::pace::Pace>(v.clone()).ok())
            .map_or_else(|| "-".into(), |p| p.to_string())),
    );
    for (what, key) in [("reproduce", "reproducer"), ("replay", "replay")] {
        let cmd = meta_str(key);
        if !cmd.is_empty() {
            let _ = writeln!(b, "<p>{what}: <code id=\"{key}\">{}</code></p>", esc(&cmd));
        }
    }
    if let Some(why) = meta.get("skipped").and_then(|v| v.as_str()) {
        let _ = writeln!(b, "<p class=\"dim\">skipped: {}; nothing was booted</p>", esc(why));
    }
    b.push_str(&verdict(summary.as_ref(), &steps));

    let total_ms = steps.iter().map(Step::end_ms).fold(0.0, f64::max).max(1.0);
    let lanes = lanes(&steps, total_ms);
    b.push_str(&timeline(&steps, &view.crashes, &lanes, total_ms));
    b.push_str(&crash_table(&view.crashes));
    b.push_str(&holder_table(summary.as_ref(), &lanes));
    b.push_str(&step_table(&steps));
    if !problems.is_empty() {
        b.push_str("<h2>Notes</h2><ul>");
        for p in &problems {
            let _ = write!(b, "<li>{}</li>", esc(p));
        }
        b.push_str("</ul>\n");
    }
    b.push_str("<p class=\"dim\">Files: ");
    for f in ["summary.md", "summary.json", "meta.json", "schedule.json", "steps.jsonl", "console.log", "qmp.log", "agent.log", "kcidb.json"] {
        if view.path.join(f).is_file() {
            let _ = write!(b, "<a href=\"{}\">{}</a> ", href(&[f]), esc(f));
        }
    }
    b.push_str("· <a href=\"../index.html\">all runs</a></p>\n");
    page(&format!("{scenario} {run_id}"), &b)
}

fn verdict(summary: Option<&RunSummary>, steps: &[Step]) -> String {
    let Some(s) = summary else {
        return format!("<p id=\"verdict\" class=\"dim\">no summary yet: {} step(s) recorded so far</p>\n", steps.len());
    };
    let mut b = String::new();
    let (class, met) = if s.expectation_met { ("ok", "met") } else { ("bad", "NOT met") };
    let _ = write!(
        b,
        "<p id=\"verdict\">expected on {}: <code>{}</code> — <span class=\"{class}\">{met}</span>; {} of {} steps recorded",
        esc(&s.kernel),
        esc(&s.expected),
        steps.len(),
        steps.last().map_or(0, |st| st.total),
    );
    if let Some(why) = &s.aborted {
        let _ = write!(b, "; <span class=\"bad\">stopped early: {}</span>", esc(why));
    }
    b.push_str("</p>\n");
    if !s.why_not.is_empty() {
        b.push_str("<ul>");
        for why in &s.why_not {
            let _ = write!(b, "<li class=\"bad\">{}</li>", esc(why));
        }
        b.push_str("</ul>\n");
    }
    b
}

fn timeline(steps: &[Step], crashes: &[CrashView], lanes: &[Lane], total_ms: f64) -> String {
    let mut b = String::from("<h2>Timeline</h2>\n<div id=\"timeline\">\n");
    // Axis: about eight ticks at a round number of seconds.
    let seconds = total_ms / 1e3;
    let step_s = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|s| seconds / s <= 8.0)
        .unwrap_or(1200.0);
    b.push_str("<div class=\"row axis\"><div class=\"label dim\">seconds since VM up</div><div class=\"track\">");
    let mut t = 0.0;
    while t <= seconds {
        let _ = write!(b, "<span class=\"tick\" style=\"left:{:.3}%\">{t:.1}</span>", pct(t * 1e3, total_ms));
        t += step_s;
    }
    b.push_str("</div></div>\n");

    b.push_str("<div class=\"row\" id=\"steps\"><div class=\"label\">steps</div><div class=\"track\">");
    for s in steps {
        let status = if s.status == "not_on_this_kernel" {
            " not_run"
        } else if s.failed() {
            " failed"
        } else {
            ""
        };
        let tip = format!("step {}: {} [{}] {}", s.index, s.description, s.status, s.detail.as_deref().unwrap_or(""));
        let _ = write!(
            b,
            "<a class=\"step {}{status}\" href=\"#step-{}\" style=\"left:{:.3}%;width:{:.3}%\" title=\"{}\"></a>",
            s.class(),
            s.index,
            pct(s.started_ms, total_ms),
            pct(s.elapsed_ms, total_ms),
            esc(&tip)
        );
    }
    b.push_str("</div></div>\n");

    b.push_str("<div class=\"row\" id=\"reports\"><div class=\"label\">kernel reports</div><div class=\"track\">");
    if crashes.is_empty() {
        b.push_str("<span class=\"dim\">none</span>");
    }
    for c in crashes {
        // On the step it appeared in; without one (during boot, or parsed after the last
        // step) at the start or the end.
        let step = c.step.and_then(|i| steps.iter().find(|s| s.index == i));
        let at = match (c.step, step) {
            (_, Some(s)) => s.end_ms(),
            (Some(_), None) | (None, None) => total_ms,
        };
        let where_ = c.step.map_or_else(|| "no step".to_string(), |i| format!("step {i}"));
        let _ = write!(
            b,
            "<a class=\"marker crash\" data-step=\"{}\" href=\"{}\" style=\"left:{:.3}%\" title=\"{}\">▼</a>",
            c.step.map(|i| i.to_string()).unwrap_or_default(),
            href(&["crashes", &c.hash, "report.txt"]),
            pct(at, total_ms),
            esc(&format!("{} ({}x, {where_})", c.title, c.count)),
        );
    }
    b.push_str("</div></div>\n");

    for lane in lanes {
        let _ = write!(
            b,
            "<div class=\"row holder\"><div class=\"label\" title=\"{}\">{} <span class=\"dim\">{}</span></div><div class=\"track\">",
            esc(&format!("{} ({}) on {}", lane.name, lane.kind, lane.on)),
            esc(&lane.name),
            esc(&lane.kind)
        );
        let end = lane.end_ms.unwrap_or(total_ms);
        let _ = write!(
            b,
            "<span class=\"lane\" style=\"left:{:.3}%;width:{:.3}%\"></span>",
            pct(lane.start_ms, total_ms),
            pct(end - lane.start_ms, total_ms)
        );
        for m in &lane.marks {
            let _ = write!(
                b,
                "<span class=\"marker {}\" style=\"left:{:.3}%\" title=\"{}\">{}</span>",
                m.class,
                pct(m.at_ms, total_ms),
                esc(&m.text),
                m.symbol
            );
        }
        b.push_str("</div></div>\n");
    }
    b.push_str("</div>\n<p class=\"legend\">");
    for class in ["plug", "unplug", "hold", "release", "observe", "fault", "bind", "other"] {
        let _ = write!(b, "<span><span class=\"step {class}\" style=\"position:static;display:inline-block;width:1em\"></span> {class}</span>");
    }
    b.push_str("<span class=\"crash\">▼ kernel report</span><span class=\"error\">✖ first error</span>\
                <span class=\"hup\">◆ POLLHUP</span><span class=\"late\">■ late close</span><span>hover for details</span></p>\n");
    b
}

fn crash_table(crashes: &[CrashView]) -> String {
    if crashes.is_empty() {
        return "<h2>Kernel reports</h2><p id=\"crashes\">none</p>\n".into();
    }
    let mut b = String::from(
        "<h2>Kernel reports</h2>\n<table id=\"crashes\"><tr><th>title</th><th>type</th><th>count</th><th>step</th><th>files</th></tr>\n",
    );
    for c in crashes {
        let step = c.step.map_or_else(|| "-".to_string(), |i| format!("<a href=\"#step-{i}\">{i}</a>"));
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{step}</td><td><a href=\"{}\">report</a>",
            esc(&c.title),
            esc(&c.kind),
            c.count,
            href(&["crashes", &c.hash, "report.txt"])
        );
        if c.symbolized {
            let _ = write!(b, " · <a href=\"{}\">symbolized trace</a>", href(&["crashes", &c.hash, "symbolized.txt"]));
        }
        b.push_str("</td></tr>\n");
    }
    b.push_str("</table>\n");
    b
}

fn holder_table(summary: Option<&RunSummary>, lanes: &[Lane]) -> String {
    let holders = summary.map(|s| s.holders.as_slice()).unwrap_or_default();
    if holders.is_empty() && lanes.is_empty() {
        return String::new();
    }
    let mut b = String::from("<h2>Holders</h2>\n<table id=\"holders\"><tr><th>holder</th><th>kind</th><th>on</th><th>first error</th><th>what its records show</th></tr>\n");
    let mut names: Vec<&str> = holders.iter().map(|h| h.name.as_str()).collect();
    names.extend(lanes.iter().map(|l| l.name.as_str()).filter(|n| !holders.iter().any(|h| h.name == *n)));
    for name in names {
        let h = holders.iter().find(|h| h.name == name);
        let lane = lanes.iter().find(|l| l.name == name);
        let first = h.map_or_else(
            || "-".to_string(),
            |h| {
                let e = h.first_error.as_ref().map_or_else(|| "none".to_string(), |e| e.to_string());
                if h.hung { format!("{e} (hung)") } else { e }
            },
        );
        let marks: Vec<String> = lane.map(|l| l.marks.iter().map(|m| format!("{:.2} s: {}", m.at_ms / 1e3, m.text)).collect()).unwrap_or_default();
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            esc(h.map(|h| h.kind.as_str()).or(lane.map(|l| l.kind.as_str())).unwrap_or("")),
            esc(lane.map(|l| l.on.as_str()).unwrap_or("")),
            esc(&first),
            esc(&marks.join("; "))
        );
    }
    b.push_str("</table>\n");
    b
}

fn step_table(steps: &[Step]) -> String {
    let mut b = String::from("<h2>Steps</h2>\n<table id=\"step-table\"><tr><th>#</th><th>start (s)</th><th>took (ms)</th><th>step</th><th>status</th><th>what it showed</th></tr>\n");
    for s in steps {
        let class = if s.failed() { "bad" } else { "ok" };
        let mut shown = s.text().to_string();
        for o in s.observations.iter().filter(|o| o.outcome != Some(ObserverOutcome::Ok)) {
            let outcome = o.outcome.map_or_else(String::new, |o| o.to_string());
            let _ = write!(shown, "\nobserver {} {outcome}: {}", o.path, o.detail);
        }
        // The per-step holder lines are in the lanes; a release's record dump can be long.
        const SHOWN_MAX: usize = 4000;
        if shown.len() > SHOWN_MAX {
            let cut = (0..=SHOWN_MAX).rev().find(|&i| shown.is_char_boundary(i)).unwrap_or(0);
            shown.truncate(cut);
            shown.push_str("\n… (cut; the whole text is in steps.jsonl)");
        }
        let _ = writeln!(
            b,
            "<tr id=\"step-{}\"><td>{}</td><td>{:.3}</td><td>{:.1}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            s.index,
            s.index,
            s.started_ms / 1e3,
            s.elapsed_ms,
            esc(&s.description),
            esc(&s.status),
            if shown.is_empty() { String::new() } else { format!("<pre>{}</pre>", esc(&shown)) }
        );
    }
    b.push_str("</table>\n");
    b
}

/// The results root's page: every run folder (newest first) with scenario, kernel, seed,
/// verdict and titles, and every A/B table. Unreadable folders are listed as such.
pub fn render_root(root: &Path) -> String {
    let mut runs = Vec::new();
    let mut abs = Vec::new();
    let mut problems = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(root).map(|rd| rd.flatten().filter(|e| e.path().is_dir()).collect()).unwrap_or_default();
    dirs.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
    for entry in dirs {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(text) = std::fs::read_to_string(entry.path().join("summary.json")) else { continue };
        if name.starts_with("summary-") {
            match serde_json::from_str::<crate::judge::tally::Tally>(&text) {
                Ok(t) => abs.push((name, t.kernels, t.ab)),
                Err(e) => problems.push(format!("{name}/summary.json: {e}")),
            }
        } else {
            match serde_json::from_str::<RunSummary>(&text) {
                Ok(s) => runs.push((name, s)),
                Err(e) => problems.push(format!("{name}/summary.json: {e}")),
            }
        }
    }
    let mut b = format!("<h1>unplug-torture results</h1>\n<p>{} run(s), {} A/B table(s)</p>\n", runs.len(), abs.len());
    b.push_str("<h2>Runs</h2>\n<table id=\"runs\"><tr><th>run</th><th>scenario</th><th>kernel</th><th>seed</th><th>verdict</th><th>titles</th></tr>\n");
    for (name, s) in &runs {
        let verdict = match (&s.skipped, s.expectation_met) {
            (Some(why), _) => format!("<span class=\"dim\">skipped ({})</span>", esc(why)),
            (None, true) => "<span class=\"ok\">as expected</span>".to_string(),
            (None, false) => format!("<span class=\"bad\">NOT as expected</span><br>{}", esc(&s.why_not.join("; "))),
        };
        let titles: Vec<String> = s.titles.iter().map(|t| format!("{} ({}x)", esc(&t.title), t.count)).collect();
        let link = if entry_has_page(root, name) {
            format!("<a href=\"{}\">{}</a>", href(&[name, PAGE]), esc(name))
        } else {
            esc(name)
        };
        let _ = writeln!(
            b,
            "<tr><td>{link}</td><td>{}</td><td>{}</td><td>{}</td><td>{verdict}</td><td>{}</td></tr>",
            esc(&s.scenario),
            esc(&s.kernel),
            s.seed,
            titles.join("<br>")
        );
    }
    b.push_str("</table>\n");
    for (name, kernels, comparisons) in abs.iter().filter(|(_, _, c)| !c.is_empty()) {
        let baseline = kernels.first().map_or("", String::as_str);
        let others = kernels.get(1..).unwrap_or_default();
        let _ = writeln!(b, "<h2>A/B: {} <span class=\"dim\">{}</span></h2>", esc(&kernels.join(" vs ")), esc(name));
        b.push_str("<table class=\"ab\"><tr><th>scenario</th><th>seed</th><th>title</th>");
        for k in kernels {
            let _ = write!(b, "<th>{}</th>", esc(k));
        }
        for k in others {
            let _ = write!(b, "<th>{} vs {}</th>", esc(k), esc(baseline));
        }
        b.push_str("<th>expectation</th></tr>\n");
        for c in comparisons {
            let sides: Vec<String> = c.sides.iter().map(|s| format!("{}: {}", esc(&s.kernel), s.verdict())).collect();
            let sides = sides.join(" / ");
            if c.titles.is_empty() {
                let blank = "<td></td>".repeat(kernels.len() + others.len());
                let _ = writeln!(b, "<tr><td>{}</td><td>{}</td><td class=\"dim\">no crash title</td>{blank}<td>{sides}</td></tr>", esc(&c.scenario), c.seed);
            }
            for t in &c.titles {
                let counts: String = t.counts.iter().map(|n| format!("<td>{n}</td>")).collect();
                let changes: String = t
                    .changes
                    .iter()
                    .map(|change| {
                        let name = change.map_or("-", crate::judge::ab::Change::name);
                        let class = if name == "new" { "bad" } else { "" };
                        format!("<td class=\"{class}\">{name}</td>")
                    })
                    .collect();
                let _ = writeln!(b, "<tr><td>{}</td><td>{}</td><td>{}</td>{counts}{changes}<td>{sides}</td></tr>", esc(&c.scenario), c.seed, esc(&t.title));
            }
        }
        b.push_str("</table>\n");
    }
    if !problems.is_empty() {
        b.push_str("<h2>Notes</h2><ul>");
        for p in &problems {
            let _ = write!(b, "<li>{}</li>", esc(p));
        }
        b.push_str("</ul>\n");
    }
    page("unplug-torture results", &b)
}

fn entry_has_page(root: &Path, name: &str) -> bool {
    root.join(name).join(PAGE).is_file()
}

/// A run folder as `torture` writes one, for this module's and `kcidb`'s tests: a plug, two
/// holders, an unplug that a KASAN report comes with (its title carrying markup, as a guest
/// could make it), their late releases with every record. `killed`: the run died during the
/// unplug (no summary, no release, a torn last line). `crash`: the report is filed (without
/// it the run is clean).
#[cfg(test)]
pub(crate) mod sample {
    use std::path::{Path, PathBuf};

    use agent::{ConsumerRecord, HoldKind};

    use crate::judge::results::{Crash, KernelMeta, Meta, RunDir, StepLine, Summary};
    use crate::drive::scenario::{KernelVariant, UnplugHow};
    use crate::drive::schedule::Action;
    use crate::drive::torture::{StepRecord, StepStatus};

    pub const TITLE: &str = "KASAN: slab-use-after-free Read in at24_read <script>alert(1)</script>";

    fn record(op: &str, errno: Option<i32>, revents: Option<i16>, mono_ms: u64) -> String {
        let r = ConsumerRecord {
            holder: 1,
            kind: HoldKind::NvmemSysfs,
            seq: 0,
            op: op.into(),
            ret: errno.is_none().then_some(0),
            errno,
            errno_name: errno.and_then(agent::errno_name).map(str::to_string),
            revents,
            latency_us: 1,
            mono_ns: mono_ms * 1_000_000,
            repeats: 0,
            detail: None,
            data: None,
        };
        serde_json::to_string(&r).unwrap()
    }

    fn step(index: usize, action: Action, (started_ms, elapsed_ms): (f64, f64), output: Option<String>, consumers: &[&str]) -> StepRecord {
        StepRecord {
            index,
            total: 5,
            iteration: Some(1),
            step: index,
            description: action.describe(),
            action,
            started_ms,
            elapsed_ms,
            status: StepStatus::Ok,
            output,
            taint: Some(0),
            observations: Vec::new(),
            consumers: consumers.iter().map(|s| s.to_string()).collect(),
            holders: Vec::new(),
            data_mismatches: Vec::new(),
        }
    }

    pub fn run(root: &Path, killed: bool, crash: bool) -> PathBuf {
        let mut run = RunDir::create(root, "at24-unbind-under-holders").unwrap();
        let meta = Meta {
            run_id: run.id(),
            scenario: "at24-unbind-under-holders".into(),
            seed: 348300539442052,
            reproducer: "cargo xtask torture --scenario at24-unbind-under-holders --kernel vanilla --seed 348300539442052".into(),
            replay: format!("cargo xtask replay {}", run.path().display()),
            kernel: KernelMeta {
                label: "6.12.117 Debian linux-source-6.12".into(),
                bzimage: "/cache/kernels/k/bzImage".into(),
                release: Some("6.12.117".into()),
                source_id: Some("debian-0123456789abcdef".into()),
                config_hash: Some("fedcba9876543210".into()),
                ..KernelMeta::default()
            },
            kernel_variant: Some(KernelVariant::Vanilla),
            image: None,
            qemu_version: Some("7.2.15".into()),
            accel: Some("tcg".into()),
            pace: None,
            repeat: None,
            started: "2026-12-01T00:00:00Z".into(),
        };
        run.write_json("meta.json", &meta).unwrap();
        let hold = |name: &str, kind| Action::Hold { name: name.into(), kind, on: "bridge".into() };
        let mut steps = vec![
            step(1, Action::Plug { device: "cp2112".into(), id: "bridge".into() }, (0.0, 700.0), None, &[]),
            step(2, hold("sysfs", HoldKind::NvmemSysfs), (700.0, 200.0), Some("holder 1 (nvmem-sysfs) on /sys/bus/nvmem/devices/0-00500/nvmem".into()), &["holder 1 (nvmem-sysfs): no error"]),
            step(3, Action::Unplug { id: "bridge".into(), how: UnplugHow::Graceful }, (900.0, 2100.0), None, &["holder 1 (nvmem-sysfs): got -ENODEV on pread after 12 ok"]),
        ];
        if !killed {
            let records = [
                record(agent::HOLDER_READY, None, None, 10_000),
                record("pread", None, None, 10_100),
                record("pread", Some(19), None, 11_500),
                record("poll", None, Some(0x18), 11_600),
                record("closed", Some(19), None, 13_200),
            ];
            let output = format!("holder 1 (nvmem-sysfs): got -ENODEV on pread after 1 ok\n{}", records.join("\n"));
            steps.push(step(4, Action::Release { name: "sysfs".into() }, (3000.0, 150.0), Some(output), &["holder 1 (nvmem-sysfs): got -ENODEV on pread after 1 ok"]));
            steps.push(step(5, Action::Observe, (3150.0, 50.0), None, &[]));
        }
        for s in &steps {
            run.append_step(s).unwrap();
        }
        if crash {
            run.add_crash(&Crash {
            title: TITLE.into(),
            alt_titles: vec![],
            kind: "KASAN-USE-AFTER-FREE-READ".into(),
            corrupted: None,
            report: "BUG: KASAN: slab-use-after-free in at24_read+0x1b/0x40\n".into(),
            symbolized: Some("at24_read (drivers/misc/eeprom/at24.c:420)\n".into()),
            step: Some(3),
            })
            .unwrap();
        }
        if killed {
            std::fs::OpenOptions::new().append(true).open(run.path().join("steps.jsonl")).map(|mut f| std::io::Write::write_all(&mut f, b"{\"ind")).unwrap().unwrap();
        } else {
            let summary = Summary {
                scenario: "at24-unbind-under-holders".into(),
                kernel: Some(KernelVariant::Vanilla),
                seed: 348300539442052,
                expect: serde_yaml_ng::from_str("[\"KASAN: slab-use-after-free Read in at24_read*\"]").unwrap(),
                steps: steps.iter().map(|s| StepLine { index: s.index, description: s.description.clone(), ok: true, detail: None, elapsed_ms: s.elapsed_ms, not_run: None, filed_titles: vec![] }).collect(),
                ..Summary::default()
            };
            run.write_summary(&summary).unwrap();
        }
        run.path().to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_links_are_escaped() {
        assert_eq!(esc("<a href='x'>&\"</a>\u{1b}"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;\u{fffd}");
        assert_eq!(href(&["crashes", "0123abcd", "report.txt"]), "crashes/0123abcd/report.txt");
        assert_eq!(href(&["..", "a b\"<x>", "javascript:alert(1)"]), "%2E%2E/a%20b%22%3Cx%3E/javascript%3Aalert%281%29");
    }

    /// A finished run: the commands at the top, the steps on the axis, the report as a marker on
    /// the unplug step linked to its files, the holder's lane with its first error, POLLHUP and
    /// late close placed from its records; nothing the guest wrote gets in unescaped.
    #[test]
    fn a_run_page_shows_steps_reports_and_holder_lanes() {
        let root = tempfile::tempdir().unwrap();
        let run = sample::run(root.path(), false, true);
        write_run_page(&run).unwrap();
        let html = std::fs::read_to_string(run.join(PAGE)).unwrap();
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("<code id=\"reproducer\">cargo xtask torture --scenario at24-unbind-under-holders --kernel vanilla --seed 348300539442052</code>"));
        assert!(html.contains("<code id=\"replay\">cargo xtask replay "));
        assert_eq!(html.matches("class=\"step ").count() - 8, 5, "five steps plus the legend's eight");
        let hash = crate::judge::results::title_hash(sample::TITLE);
        // The unplug ran from 0.9 s to 3.0 s of 3.2 s: the report sits at its end.
        assert!(html.contains(&format!("<a class=\"marker crash\" data-step=\"3\" href=\"crashes/{hash}/report.txt\" style=\"left:93.750%\"")), "{html}");
        assert!(html.contains(&format!("<a href=\"crashes/{hash}/symbolized.txt\">symbolized trace</a>")));
        // ready at guest 10.0 s = the hold's end (0.9 s): the error 1.5 s later, POLLHUP 1.6 s,
        // the close (after the unplug: late) 3.2 s.
        assert_eq!(html.matches("class=\"row holder\"").count(), 1);
        assert!(html.contains("<span class=\"marker error\" style=\"left:75.000%\" title=\"first error: pread → -ENODEV\">"), "{html}");
        assert!(html.contains("<span class=\"marker hup\" style=\"left:78.125%\" title=\"POLLERR|POLLHUP on poll\">"), "{html}");
        assert!(html.contains("<span class=\"marker late\" style=\"left:100.000%\" title=\"late close → -ENODEV\">"), "{html}");
        assert!(html.contains("id=\"verdict\">expected on vanilla"), "{html}");
    }

    /// A run killed during the unplug: a valid page from what was written (the torn line noted),
    /// the report still on its step, the holder's first error from the per-step line.
    #[test]
    fn a_killed_runs_page_is_valid() {
        let root = tempfile::tempdir().unwrap();
        let run = sample::run(root.path(), true, true);
        write_run_page(&run).unwrap();
        let html = std::fs::read_to_string(run.join(PAGE)).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</body></html>\n"));
        assert!(html.contains("no summary yet: 3 step(s) recorded so far"), "{html}");
        assert!(html.contains("steps.jsonl: torn last line skipped"), "{html}");
        assert!(html.contains("class=\"marker crash\" data-step=\"3\""), "{html}");
        assert!(html.contains("title=\"first error (seen by the end of this step): got -ENODEV on pread after 12 ok\""), "{html}");
        // An empty folder (killed before meta.json) still renders.
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        write_run_page(&empty).unwrap();
    }

    #[test]
    fn the_root_page_lists_runs_and_ab_tables() {
        let root = tempfile::tempdir().unwrap();
        sample::run(root.path(), false, true);
        crate::judge::results::record_skip(root.path(), "resmgr-sample-unplug", "vanilla", 1, "applies to: resmgr", "x").unwrap();
        let ab = crate::judge::ab::Comparison {
            scenario: "s<1>".into(),
            seed: 1,
            same_schedule: Some(true),
            titles: vec![crate::judge::ab::TitleRow { title: "WARNING in x".into(), counts: vec![0, 2], changes: vec![Some(crate::judge::ab::Change::New)] }],
            holders: vec![],
            sides: vec![
                crate::judge::ab::Side { kernel: "vanilla".into(), run_id: "a".into(), expected: "clean".into(), expectation_met: true, why_not: vec![], skipped: None },
                crate::judge::ab::Side { kernel: "resmgr".into(), run_id: "b".into(), expected: "clean".into(), expectation_met: false, why_not: vec!["unexpected title: WARNING in x".into()], skipped: None },
            ],
        };
        let tally = crate::judge::tally::Tally { kernels: vec!["vanilla".into(), "resmgr".into()], entries: vec![], rates: vec![], ab: vec![ab], errors: vec![] };
        tally.write(&root.path().join("summary-20261201-000000")).unwrap();
        write_root_index(root.path()).unwrap();
        let html = std::fs::read_to_string(root.path().join(PAGE)).unwrap();
        assert!(html.contains("2 run(s), 1 A/B table(s)"), "{html}");
        assert!(html.contains("<span class=\"dim\">skipped (applies to: resmgr)</span>"), "{html}");
        assert!(html.contains("<span class=\"ok\">as expected</span>"), "{html}");
        assert!(html.contains("<h2>A/B: vanilla vs resmgr"), "{html}");
        assert!(
            html.contains("<td>s&lt;1&gt;</td><td>1</td><td>WARNING in x</td><td>0</td><td>2</td><td class=\"bad\">new</td><td>vanilla: met / resmgr: NOT met</td>"),
            "{html}"
        );
        assert!(!html.contains("<script"));
    }
}
