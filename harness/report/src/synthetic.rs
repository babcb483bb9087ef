//! Verdicts the harness files itself, when the failure is the absence of something rather
//! than a console report: a silent machine, a dead QEMU, a mute guest agent, an unplug that
//! never completed, a read that "succeeded" with bytes the device never held. They are ordinary [`Report`]s so results, dedup and summaries treat them
//! like kernel crashes; their titles are stable (numbers normalised) so repeats dedup.

use std::time::Duration;

use crate::{title, CrashType, Report};

/// Title prefixes; the first two are syzkaller's, so dashboards agree.
pub const NO_OUTPUT: &str = "no output from test machine";
pub const LOST_CONNECTION: &str = "lost connection to test machine";
pub const AGENT_UNRESPONSIVE: &str = "guest agent unresponsive";
pub const UNPLUG_STUCK: &str = "unplug stuck";
pub const DATA_MISMATCH: &str = "data mismatch in";

fn synthetic(title: String, crash_type: CrashType, text: String) -> Report {
    let title = title::sanitize(&title::normalize(&title));
    Report {
        title,
        alt_titles: Vec::new(),
        crash_type,
        frame: None,
        corrupted: None,
        panicked: false,
        caller: None,
        start_line: 0,
        end_line: 0,
        timestamp: None,
        text,
    }
}

/// The machine stopped answering altogether: no console output, no agent, no monitor while
/// the guest was expected to make progress; `detail` says what was tried for how long.
pub fn no_output(detail: &str) -> Report {
    synthetic(NO_OUTPUT.to_string(), CrashType::NoOutput, format!("{detail}\n"))
}

/// QEMU exited or its sockets closed unexpectedly; `detail` is what the harness saw
/// (exit status, last QMP error).
pub fn vm_died(detail: &str) -> Report {
    synthetic(LOST_CONNECTION.to_string(), CrashType::LostConnection, format!("{detail}\n"))
}

/// The guest agent stopped answering while the VM still ran; `detail` is what the harness
/// saw (how long it waited, whether the console was moving).
pub fn agent_unresponsive(detail: &str) -> Report {
    synthetic(AGENT_UNRESPONSIVE.to_string(), CrashType::AgentUnresponsive, format!("{detail}\n"))
}

/// `device_del` of `device` was not followed by `DEVICE_DELETED` within `deadline`: the
/// guest never released the device (typically a remove() blocked on a reference holder).
/// The title names the device id, so stuck unplugs of different devices stay apart.
pub fn unplug_stuck(device: &str, deadline: Duration) -> Report {
    synthetic(
        format!("{UNPLUG_STUCK}: no DEVICE_DELETED for {device}"),
        CrashType::UnplugStuck,
        format!("device_del {device}: no DEVICE_DELETED event within {}\n", humanize(deadline)),
    )
}

/// A read by holder `holder` (the scenario's name for it) succeeded but returned bytes the
/// emulated device never held: silent corruption, which user space cannot tell from data.
/// `detail` says where the bytes first differ and both digests. The title names the holder,
/// so mismatches of different holders stay apart.
pub fn data_mismatch(holder: &str, detail: &str) -> Report {
    synthetic(format!("{DATA_MISMATCH} {holder}"), CrashType::DataMismatch, format!("{detail}\n"))
}

fn humanize(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_titles_are_stable() {
        let a = unplug_stuck("cp2112-1", Duration::from_secs(10));
        let b = unplug_stuck("cp2112-1", Duration::from_secs(30));
        assert_eq!(a.title, "unplug stuck: no DEVICE_DELETED for cp2112-NUM");
        assert!(a.same_bug(&b));
        assert_eq!(a.crash_type, CrashType::UnplugStuck);
        assert_eq!(crate::title_to_type(&a.title), CrashType::UnplugStuck);
        assert_eq!(no_output("no answer for 10s").crash_type, CrashType::NoOutput);
        assert_eq!(crate::title_to_type(&vm_died("qemu exited with 1").title), CrashType::LostConnection);
        let r = agent_unresponsive("no answer to ping within 10s and the console was silent meanwhile");
        assert_eq!(r.title, "guest agent unresponsive");
        assert!(r.text.contains("console was silent"), "{}", r.text);
        assert!(a.crash_type.is_synthetic());
        let m = data_mismatch("sysfs", "pread at 0: first difference at offset 3");
        assert_eq!(m.title, "data mismatch in sysfs");
        assert_eq!(crate::title_to_type(&m.title), CrashType::DataMismatch);
        assert!(m.crash_type.is_synthetic());
    }
}
