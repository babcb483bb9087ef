//! Observers: what the guest looks like after a step, read through the agent.
//!
//! Each observer is a read of a file that a lifetime bug can corrupt or leave behind:
//! `/proc/interrupts` (IRQ actions of torn-down consumers), `/sys/kernel/debug/gpio`,
//! gpio-virtuser's debugfs, leftover nvmem and i2c-dev nodes, and the taint flags. A read
//! that errors or hangs is itself a finding, so each has its own deadline and its outcome is
//! recorded rather than propagated.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::run::agent_link::Agent;

/// Files read after every `observe` step. Directories are listed instead of read.
const OBSERVED: &[&str] = &[
    "/proc/interrupts",
    "/sys/kernel/debug/gpio",
    "/sys/kernel/debug/gpio-virtuser",
    "/sys/bus/nvmem/devices",
    "/sys/class/i2c-dev",
    "/sys/bus/usb/devices",
];

/// Longest an observer read may take before it counts as hung (reference machines; scaled by
/// the agent's pace, see `crate::run::pace`).
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// How an observer's read ended (`ok`, `error` or `hung` in `steps.jsonl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObserverOutcome {
    Ok,
    /// The read failed, or the program reading it did.
    Error,
    /// No answer within the observer's deadline.
    Hung,
}

impl std::fmt::Display for ObserverOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObserverOutcome::Ok => "ok",
            ObserverOutcome::Error => "error",
            ObserverOutcome::Hung => "hung",
        })
    }
}

/// What one observer saw.
#[derive(Debug, Clone, Serialize)]
pub struct Observation {
    pub path: String,
    pub outcome: ObserverOutcome,
    /// The content (bounded), the listing, or the error.
    pub detail: String,
    pub elapsed_ms: f64,
}

/// Reads every observer. Never fails: failures are observations.
pub async fn observe_all(agent: &Agent) -> Vec<Observation> {
    let mut out = Vec::with_capacity(OBSERVED.len());
    for path in OBSERVED {
        out.push(observe(agent, path).await);
    }
    out
}

async fn observe(agent: &Agent, path: &str) -> Observation {
    let start = Instant::now();
    // `ls -R` for directories and `cat` for files in one guest command keeps this to one
    // round trip per observer; `timeout` makes a hung read visible as exit status 143. A
    // device that goes away while `ls -R` walks the tree (a surprise unplug a moment before)
    // fails the walk with ENOENT on its entry: that is the unplug, not a finding, so a failed
    // walk is walked once more and only a second failure counts.
    let script = format!(
        "if [ -d '{path}' ]; then ls -R '{path}' 2>/dev/null || ls -R '{path}'; elif [ -e '{path}' ]; then cat '{path}'; else echo '(absent)'; fi"
    );
    let result = agent.exec(&["sh", "-c", &script], agent.pace().scale(READ_DEADLINE)).await;
    let elapsed_ms = start.elapsed().as_secs_f64() * 1e3;
    let (outcome, detail) = match result {
        Ok(o) if o.timed_out => (ObserverOutcome::Hung, format!("no answer within {:?}", agent.pace().scale(READ_DEADLINE))),
        Ok(o) if o.success() => (ObserverOutcome::Ok, bounded(&o.stdout_text())),
        Ok(o) => (ObserverOutcome::Error, format!("{}: {}", o.outcome(), bounded(&o.stderr_text()))),
        Err(e) => (ObserverOutcome::Error, e.to_string()),
    };
    Observation { path: path.to_string(), outcome, detail, elapsed_ms }
}

fn bounded(text: &str) -> String {
    const MAX: usize = 16 * 1024;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n... ({} more bytes)", &text[..cut], text.len() - cut)
}

/// The kernel's taint mask, read directly (a parser-independent signal: KASAN sets `B`,
/// WARN sets `W`, an oops sets `D`).
pub async fn taint(agent: &Agent) -> Option<u64> {
    let text = agent.read_file("/proc/sys/kernel/tainted").await.ok()?;
    String::from_utf8_lossy(&text).trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_on_a_char_boundary() {
        let long = "é".repeat(10_000);
        let cut = bounded(&long);
        assert!(cut.len() < long.len());
        assert!(cut.contains("more bytes"));
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn outcomes_keep_their_spelling_in_steps_jsonl() {
        for (outcome, text) in [(ObserverOutcome::Ok, "ok"), (ObserverOutcome::Error, "error"), (ObserverOutcome::Hung, "hung")] {
            assert_eq!(serde_json::to_string(&outcome).unwrap(), format!("\"{text}\""));
            assert_eq!(outcome.to_string(), text);
        }
    }
}
