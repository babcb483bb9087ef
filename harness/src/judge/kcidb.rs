//! `results/<run>/kcidb.json`: a run in KernelCI's KCIDB I/O schema (v5.3), so a lab can
//! submit it unchanged (`kcidb-submit` or the KCIDB REST API).
//!
//! - checkout: the kernel source the run's kernel was built from (`source_id`: Debian's
//!   tarball or a `--src` tree, plus a series and its hash);
//! - build: that kernel (the source plus our config: `config_hash`);
//! - test: the run, `unplug_torture.<scenario>`: FAIL when the kernel reported something
//!   (whether or not the scenario expected it on this kernel: KCIDB's FAIL is about the code),
//!   ERROR when the run stopped early or a step failed without a report, PASS otherwise;
//!   the seed, the expectation and the commands in `misc`;
//! - issues: one per crash title, id from the title's hash, so the same bug found by two
//!   runs (or two labs running us) is one issue;
//! - incidents: each issue in this run.
//!
//! Rendered from the folder on disk like the HTML page, rewritten with every summary. A
//! skipped run has no kernel identity and gets no export.

use std::path::Path;

use anyhow::{Context, Result};
use report::CrashType;
use serde::Serialize;

use crate::judge::results::{write_atomic, KernelMeta, Meta, RunSummary, RunView};

/// The file's name in a run folder.
pub const FILE: &str = "kcidb.json";

/// Our origin: the CI system name every id starts with.
pub const ORIGIN: &str = "unplug_torture";

/// Longest report kept as a test's `log_excerpt` (KCIDB shows excerpts, not whole logs).
const EXCERPT_MAX: usize = 16 * 1024;

#[derive(Debug, Serialize)]
pub struct Kcidb {
    pub version: Version,
    pub checkouts: Vec<Checkout>,
    pub builds: Vec<Build>,
    pub tests: Vec<Test>,
    pub issues: Vec<Issue>,
    pub incidents: Vec<Incident>,
}

#[derive(Debug, Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

#[derive(Debug, Serialize)]
pub struct Checkout {
    pub id: String,
    pub origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub valid: bool,
    pub misc: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct Build {
    pub id: String,
    pub checkout_id: String,
    pub origin: &'static str,
    pub architecture: &'static str,
    pub compiler: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The kernel booted, so its build passed.
    pub status: &'static str,
    pub misc: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct Test {
    pub id: String,
    pub build_id: String,
    pub origin: &'static str,
    pub path: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    pub duration: f64,
    pub environment: Environment,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_excerpt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub misc: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct Environment {
    pub comment: String,
}

#[derive(Debug, Serialize)]
pub struct Issue {
    pub id: String,
    pub version: u32,
    pub origin: &'static str,
    pub report_subject: String,
    pub culprit: Culprit,
    pub comment: String,
    pub misc: serde_json::Value,
}

#[derive(Debug, Serialize)]
pub struct Culprit {
    pub code: bool,
    pub tool: bool,
    pub harness: bool,
}

#[derive(Debug, Serialize)]
pub struct Incident {
    pub id: String,
    pub origin: &'static str,
    pub issue_id: String,
    pub issue_version: u32,
    pub build_id: String,
    pub test_id: String,
    pub present: bool,
    pub misc: serde_json::Value,
}

/// An id in our origin's namespace. KCIDB forbids NUL in ids and free text.
fn id(rest: &str) -> String {
    format!("{ORIGIN}:{}", rest.replace('\0', ""))
}

/// Free text as KCIDB accepts it (no NUL).
fn text(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

/// `misc` without its null members (KCIDB data has no nulls).
fn misc(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

/// A test path component: letters, digits, `_` and `-` only.
fn path_part(s: &str) -> String {
    let part: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    if part.is_empty() { "_".into() } else { part }
}

/// Synthetic verdicts the harness itself raises when the guest stops answering are not
/// necessarily the kernel's fault.
fn culprit(kind: &str) -> Culprit {
    let harness = kind.parse::<CrashType>().is_ok_and(|k| k == CrashType::AgentUnresponsive);
    Culprit { code: !harness, tool: false, harness }
}

/// The export of run folder `run`; `None` for a skipped run (no kernel was booted).
pub fn export(run: &Path) -> Result<Option<Kcidb>> {
    let meta_path = run.join("meta.json");
    let meta_text = std::fs::read_to_string(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?;
    let raw: serde_json::Value = serde_json::from_str(&meta_text).with_context(|| format!("{}", meta_path.display()))?;
    if raw.get("skipped").is_some() {
        return Ok(None);
    }
    let meta: Meta = serde_json::from_value(raw).with_context(|| format!("{}", meta_path.display()))?;
    let summary_path = run.join("summary.json");
    let summary: Option<RunSummary> =
        std::fs::read_to_string(&summary_path).ok().map(|t| serde_json::from_str(&t)).transpose().with_context(|| format!("{}", summary_path.display()))?;
    let view = RunView::load(run)?;
    Ok(Some(build_export(&meta, summary.as_ref(), &view)))
}

/// Writes `run/kcidb.json` (nothing for a skipped run).
pub fn write(run: &Path) -> Result<()> {
    if let Some(data) = export(run)? {
        write_atomic(&run.join(FILE), serde_json::to_string_pretty(&data)?.as_bytes())?;
    }
    Ok(())
}

fn build_export(meta: &Meta, summary: Option<&RunSummary>, view: &RunView) -> Kcidb {
    let k: &KernelMeta = &meta.kernel;
    let source_id = k.source_id.clone().unwrap_or_else(|| format!("bzimage-{}", k.bzimage.display()));
    let checkout_id = id(&source_id);
    let config = k.config_hash.clone().unwrap_or_else(|| "unknown-config".into());
    let build_id = id(&format!("{source_id}:{config}"));
    let test_id = id(&meta.run_id);
    let variant = meta.kernel_variant.map(|v| v.name().to_string());

    let checkout = Checkout {
        id: checkout_id.clone(),
        origin: ORIGIN,
        tree_name: variant.clone(),
        comment: (!k.label.is_empty()).then(|| text(&k.label)),
        valid: true,
        misc: misc(serde_json::json!({ "source_id": source_id, "series": k.series })),
    };
    let build = Build {
        id: build_id.clone(),
        checkout_id,
        origin: ORIGIN,
        architecture: "x86_64",
        compiler: "clang",
        config_name: variant.clone(),
        comment: k.release.as_deref().map(text),
        status: "PASS",
        misc: misc(serde_json::json!({ "config_hash": k.config_hash, "release": k.release })),
    };

    let crashes = &view.crashes;
    let steps_failed = summary.map_or(0, |s| s.steps_failed);
    let aborted = summary.and_then(|s| s.aborted.clone());
    let status = if !crashes.is_empty() {
        "FAIL"
    } else if aborted.is_some() || steps_failed > 0 {
        "ERROR"
    } else {
        "PASS"
    };
    let duration = view.steps.iter().filter_map(|s| s.get("elapsed_ms").and_then(|v| v.as_f64())).sum::<f64>() / 1e3;
    let first_report = crashes
        .first()
        .and_then(|c| std::fs::read_to_string(view.path.join("crashes").join(&c.hash).join("report.txt")).ok())
        .map(|r| {
            let cut = (0..=EXCERPT_MAX.min(r.len())).rev().find(|&i| r.is_char_boundary(i)).unwrap_or(0);
            text(&r[..cut])
        });
    let environment = Environment {
        comment: text(&format!(
            "QEMU {} ({}), pace {}",
            meta.qemu_version.as_deref().unwrap_or("?"),
            meta.accel.as_deref().unwrap_or("?"),
            meta.pace.map_or_else(|| "?".to_string(), |p| p.to_string())
        )),
    };
    let test = Test {
        id: test_id.clone(),
        build_id: build_id.clone(),
        origin: ORIGIN,
        path: format!("{ORIGIN}.{}", path_part(&meta.scenario)),
        status,
        start_time: Some(meta.started.clone()).filter(|s| humantime::parse_rfc3339(s).is_ok()),
        duration,
        environment,
        log_excerpt: first_report,
        comment: summary.map(|s| text(&format!("expected on {}: {}", s.kernel, s.expected))),
        misc: misc(serde_json::json!({
            "seed": meta.seed,
            "reproducer": text(&meta.reproducer),
            "replay": text(&meta.replay),
            "expectation_met": summary.map(|s| s.expectation_met),
            "why_not": summary.map(|s| s.why_not.iter().map(|w| text(w)).collect::<Vec<_>>()),
            "aborted": aborted.as_deref().map(text),
        })),
    };
    let mut issues = Vec::new();
    let mut incidents = Vec::new();
    for c in crashes {
        let issue_id = id(&c.hash);
        issues.push(Issue {
            id: issue_id.clone(),
            version: 1,
            origin: ORIGIN,
            report_subject: text(&c.title),
            culprit: culprit(&c.kind),
            comment: text(&c.kind),
            misc: misc(serde_json::json!({ "alt_titles": c.alt_titles.iter().map(|t| text(t)).collect::<Vec<_>>() })),
        });
        incidents.push(Incident {
            id: id(&format!("{}:{}", meta.run_id, c.hash)),
            origin: ORIGIN,
            issue_id,
            issue_version: 1,
            build_id: build_id.clone(),
            test_id: test_id.clone(),
            present: true,
            misc: misc(serde_json::json!({ "count": c.count, "step": c.step, "report": format!("crashes/{}/report.txt", c.hash) })),
        });
    }
    Kcidb { version: Version { major: 5, minor: 3 }, checkouts: vec![checkout], builds: vec![build], tests: vec![test], issues, incidents }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(data: &Kcidb) {
        testenv::validate_kcidb(&serde_json::to_string(data).unwrap());
    }

    #[test]
    fn a_run_with_findings_exports_valid_kcidb() {
        let root = tempfile::tempdir().unwrap();
        let run = crate::judge::html::sample::run(root.path(), false, true);
        write(&run).unwrap();
        let text = std::fs::read_to_string(run.join(FILE)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let test = &value["tests"][0];
        assert_eq!((test["status"].as_str(), test["path"].as_str()), (Some("FAIL"), Some("unplug_torture.at24-unbind-under-holders")));
        let hash = crate::judge::results::title_hash(crate::judge::html::sample::TITLE);
        assert_eq!(value["issues"][0]["id"], format!("unplug_torture:{hash}"));
        assert_eq!(value["issues"][0]["report_subject"], crate::judge::html::sample::TITLE);
        assert_eq!(value["incidents"][0]["test_id"], test["id"]);
        assert_eq!(value["incidents"][0]["misc"]["step"], 3);
        assert_eq!(test["build_id"], value["builds"][0]["id"]);
        assert_eq!(value["builds"][0]["checkout_id"], value["checkouts"][0]["id"]);
        assert!(!text.contains("null"), "KCIDB data has no nulls: {text}");
        validate(&export(&run).unwrap().unwrap());
    }

    #[test]
    fn a_clean_run_and_a_killed_run_export_valid_kcidb_and_a_skipped_one_none() {
        let root = tempfile::tempdir().unwrap();
        let clean = export(&crate::judge::html::sample::run(root.path(), false, false)).unwrap().unwrap();
        assert_eq!((clean.tests[0].status, clean.issues.len(), clean.incidents.len()), ("PASS", 0, 0));
        validate(&clean);
        let killed = export(&crate::judge::html::sample::run(root.path(), true, true)).unwrap().unwrap();
        assert_eq!(killed.tests[0].status, "FAIL");
        validate(&killed);
        let skipped = crate::judge::results::record_skip(root.path(), "s", "vanilla", 1, "applies to: resmgr", "x").unwrap();
        assert!(export(&skipped).unwrap().is_none());
    }
}
