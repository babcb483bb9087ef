//! One hold-across-unplug session, the maintainer's question in one call: "if these consumers
//! hold this provider's handles while it goes away, what does each of them see, and does the
//! kernel survive?" (`cargo xtask boot --hold KIND... --unplug HOW`, and the e2e tests.)
//!
//! Holders of the chosen kinds are pointed at the provider's nodes ([`GuestNodes`]), run for a
//! moment, the provider is unplugged, the holders get a moment to notice, the observers read
//! the guest, and every holder is released (a late close). Failures after the holders started
//! are outcomes, not errors: a release that never returns, an unplug that never completes, a
//! guest that stops answering all end up in the [`HoldReport`].

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use agent::{ConsumerRecord, HoldKind, HoldRequest};
use crate::devices::holders::Holders;
use crate::run::console::LineCursor;
use crate::judge::observe::{self, Observation};
use crate::drive::scenario::UnplugHow;
use crate::devices::testbed::{GuestNodes, PlugRecord, Testbed};
use crate::run::vm::Vm;

/// What to hold, on which provider, and how it goes away.
#[derive(Debug, Clone)]
pub struct HoldPlan {
    /// The plugged provider's id in the testbed.
    pub provider: String,
    pub kinds: Vec<HoldKind>,
    pub how: UnplugHow,
    /// How long the holders run before the unplug.
    pub before: Duration,
    /// How long they may keep running after it before they are released.
    pub after: Duration,
    pub unplug_timeout: Duration,
}

/// What one holder was asked to do and what it saw.
#[derive(Debug, Clone, Serialize)]
pub struct HolderReport {
    pub kind: HoldKind,
    pub request: HoldRequest,
    pub handle: Option<u64>,
    /// Why the holder never started (its open or first request failed before the unplug).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_error: Option<String>,
    /// One line: the first failure and what preceded it, or "no error", or hung.
    pub summary: String,
    /// Why it needs a look whatever the kernel answered (hung, the agent panicked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trouble: Option<String>,
    pub records: Vec<ConsumerRecord>,
    /// The late close: `None` if it returned, the error (e.g. stuck in the kernel) if not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_error: Option<String>,
}

/// A bug the kernel reported during the session: titled after its first report, with every
/// report counted, follow-ons included (see [`report::bugs`]).
#[derive(Debug, Clone, Serialize)]
pub struct SessionBug {
    pub title: String,
    /// Every report with this title was interleaved or truncated.
    pub corrupted: bool,
    pub count: u64,
    /// Other titles filed under this bug (the same freed object), with their counts.
    pub follow_ons: Vec<crate::judge::results::FollowOnCount>,
}

/// Everything the session saw.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    pub provider: String,
    pub how: UnplugHow,
    pub nodes: GuestNodes,
    pub holders: Vec<HolderReport>,
    /// The unplug's outcome, or why it failed (stuck, guest never noticed, ...).
    pub unplug: std::result::Result<PlugRecord, String>,
    /// The observers after the unplug, with the holders still holding.
    pub observations: Vec<Observation>,
    /// The observers again after the late closes (a consumer's teardown can leave freed
    /// memory reachable, e.g. an IRQ action named by a freed string).
    pub observations_after_release: Vec<Observation>,
    /// The taint mask at the end.
    pub taint: Option<u64>,
    pub crashes: Vec<SessionBug>,
    /// Reports not in `crashes`: past the first [`report::collect::MAX_TITLES`] titles.
    pub crashes_dropped: u64,
    /// The guest agent stopped answering during the session, and how (see
    /// [`Vm::responsive`]).
    pub agent_lost: Option<String>,
}

impl HoldReport {
    /// Whether a maintainer must look: a crash, a bad taint, an unplug that failed, a lost
    /// guest, a holder stuck in the kernel or failed by the agent.
    pub fn has_findings(&self) -> bool {
        !self.crashes.is_empty()
            || self.taint.is_some_and(|t| report::Taint(t).is_bad())
            || self.unplug.is_err()
            || self.agent_lost.is_some()
            || self.holders.iter().any(|h| h.release_error.is_some() || h.trouble.is_some())
    }
}

/// Lines each kind gets on an 8-line chip: distinct, so no two holders contend for a line.
fn gpio_lines(kind: HoldKind) -> (Vec<u32>, Vec<u32>) {
    match kind {
        HoldKind::GpioCdev => (vec![0], vec![1]),
        HoldKind::GpioEvent => (vec![2], vec![]),
        HoldKind::GpioChipWatch => (vec![0, 1, 2], vec![]),
        HoldKind::GpioVirtuser => (vec![3], vec![]),
        HoldKind::GpioVirtuserIrq => (vec![4], vec![]),
        HoldKind::GpioAggregator => (vec![5, 6], vec![]),
        _ => (vec![], vec![]),
    }
}

/// The request that makes a holder of `kind` use the provider's `nodes`, or why the provider
/// has nothing for that kind.
pub fn request_for(kind: HoldKind, nodes: &GuestNodes, deadline: Duration) -> Result<HoldRequest, String> {
    let missing = |what: &str| format!("{} needs {what}, which this provider does not have", kind.name());
    let nvmem = nodes.nvmem.first();
    let (path, addr) = match kind {
        HoldKind::GpioCdev
        | HoldKind::GpioEvent
        | HoldKind::GpioChipWatch
        | HoldKind::GpioVirtuser
        | HoldKind::GpioVirtuserIrq
        | HoldKind::GpioAggregator => (nodes.gpiochip.clone().ok_or_else(|| missing("a GPIO chip"))?, None),
        HoldKind::NvmemSysfs => {
            let (_, name) = nvmem.ok_or_else(|| missing("an nvmem device"))?;
            (format!("/sys/bus/nvmem/devices/{name}/nvmem"), None)
        }
        HoldKind::NvmemKernel | HoldKind::NvmemKernelRs => (nvmem.ok_or_else(|| missing("an nvmem device"))?.1.clone(), None),
        HoldKind::I2cDev | HoldKind::I2cSmbus => {
            let bus = nodes.i2c_bus.ok_or_else(|| missing("an I2C adapter"))?;
            // Talk to the EEPROM if there is one: a client that answers.
            (format!("/dev/i2c-{bus}"), Some(nvmem.map_or(0x50, |(a, _)| u16::from(*a))))
        }
        HoldKind::Hidraw => (nodes.hidraw.clone().ok_or_else(|| missing("a hidraw node"))?, None),
    };
    let (lines, outputs) = gpio_lines(kind);
    Ok(HoldRequest {
        kind,
        path,
        lines,
        outputs,
        addr,
        // An in-kernel use after free prints a KASAN report per use: fewer uses, a console
        // that stays readable (and a guest that keeps up under TCG).
        interval_ms: if kind.in_kernel() { 250 } else { 20 },
        deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        keep_going: false,
    })
}

/// Runs the plan against a VM whose testbed has the provider plugged. Errors only for what
/// makes the question unaskable (no such provider, a kind it cannot serve); everything after
/// the first holder starts is recorded in the report.
pub async fn run(vm: &mut Vm, testbed: &mut Testbed, plan: &HoldPlan, boot: LineCursor) -> Result<HoldReport> {
    let Some(nodes) = testbed.nodes(&plan.provider).cloned() else {
        bail!("{:?} is not a plugged provider with guest nodes (cp2112, virtio-i2c or gpio-sim); plugged: {:?}", plan.provider, testbed.ids());
    };
    // The holders run until released; the deadline only bounds a session that lost track.
    let deadline = plan.before + vm.pace().scale(plan.after + plan.unplug_timeout + Duration::from_secs(60));
    let mut kinds = plan.kinds.clone();
    // A line-info watch first, so it sees the other holders' line requests.
    kinds.sort_by_key(|k| *k != HoldKind::GpioChipWatch);
    let requests = kinds
        .iter()
        .map(|&kind| request_for(kind, &nodes, deadline).map(|r| (kind, r)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("holding on {}", plan.provider))?;

    let agent = vm.agent().clone();
    let consumers = Holders::new(&agent);
    let mut holders = Vec::new();
    for (kind, request) in requests {
        let (handle, setup_error) = match consumers.hold(request.clone()).await {
            Ok(h) => (Some(h), None),
            Err(e) => (None, Some(e.to_string())),
        };
        holders.push(HolderReport { kind, request, handle, setup_error, summary: String::new(), trouble: None, records: Vec::new(), release_error: None });
    }
    // No unplug before every holder's first use returned: `before` is time held on top.
    for holder in &mut holders {
        if let Some(handle) = holder.handle {
            if let Err(e) = consumers.wait_ready(handle).await {
                holder.setup_error = Some(e);
            }
        }
    }
    tokio::time::sleep(plan.before).await;

    let unplug = testbed
        .unplug(vm, &plan.provider, plan.how, vm.pace().scale(plan.unplug_timeout))
        .await
        .map_err(|e| format!("{e:#}"));

    // Until every holder stopped on its own, or `after` (a wait on the guest: scaled by the
    // host's pace, like every such wait) is up.
    let started: Vec<u64> = holders.iter().filter_map(|h| h.handle).collect();
    let settle = tokio::time::Instant::now() + vm.pace().scale(plan.after);
    for &handle in &started {
        let left = settle.saturating_duration_since(tokio::time::Instant::now());
        consumers.wait_stopped(handle, left).await;
    }

    let mut agent_lost = vm.responsive().await.err();
    let observations = if agent_lost.is_some() { Vec::new() } else { observe::observe_all(&agent).await };
    for holder in &mut holders {
        let Some(handle) = holder.handle else { continue };
        holder.release_error = match &agent_lost {
            Some(why) => Some(format!("not released: the guest agent stopped answering ({why})")),
            // The agent bounds the release itself (a call stuck in the kernel is reported).
            None => consumers.release(handle).await.err().map(|e| e.to_string()),
        };
    }
    if agent_lost.is_none() {
        agent_lost = vm.responsive().await.err();
    }
    let (observations_after_release, taint) = if agent_lost.is_some() {
        (Vec::new(), None)
    } else {
        (observe::observe_all(&agent).await, observe::taint(&agent).await)
    };
    for holder in &mut holders {
        match holder.handle.and_then(|h| consumers.log(h)) {
            Some(log) => {
                holder.summary = log.summary();
                holder.trouble = log.trouble();
                holder.records = log.records;
            }
            None => holder.summary = format!("not started: {}", holder.setup_error.as_deref().unwrap_or("?")),
        }
    }

    let (crashes, crashes_dropped) = crashes_since(vm.log_dir().join("console.log"), boot).await;
    Ok(HoldReport {
        provider: plan.provider.clone(),
        how: plan.how,
        nodes,
        holders,
        unplug,
        observations,
        observations_after_release,
        taint,
        crashes,
        crashes_dropped,
        agent_lost,
    })
}

/// The bugs in `console.log` from `boot` on, with counts (at most
/// [`report::collect::MAX_TITLES`] titles; the number of reports not kept is returned too).
/// Reads the whole log on disk, not the console's bounded in-memory ring, so the first
/// reports of a long session are kept; off the async runtime.
async fn crashes_since(console_log: std::path::PathBuf, boot: LineCursor) -> (Vec<SessionBug>, u64) {
    let parse = move || {
        let text = std::fs::read(&console_log).unwrap_or_default();
        let mut log = Vec::with_capacity(text.len());
        for line in text
            .split(|&b| b == b'\n')
            .skip(usize::try_from(boot.index()).unwrap_or(usize::MAX))
        {
            let line = String::from_utf8_lossy(line);
            log.extend_from_slice(crate::run::console::strip_host_prefix(&line).as_bytes());
            log.push(b'\n');
        }
        report::parse_collected(&log, report::collect::MAX_TITLES)
    };
    let collected = tokio::task::spawn_blocking(parse).await.unwrap_or_default();
    let bugs = report::bugs::Bugs::of(&collected);
    let corrupted = |title: &str| collected.reports.iter().any(|c| c.report.title == title && c.all_corrupted);
    let crashes = bugs
        .bugs()
        .iter()
        .map(|b| SessionBug {
            title: b.first.title.clone(),
            corrupted: corrupted(&b.first.title),
            count: b.count,
            follow_ons: b
                .follow_ons
                .iter()
                .map(|f| crate::judge::results::FollowOnCount {
                    title: f.first.title.clone(),
                    count: u32::try_from(f.count).unwrap_or(u32::MAX),
                })
                .collect(),
        })
        .collect();
    (crashes, bugs.dropped())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp2112() -> GuestNodes {
        GuestNodes {
            gpiochip: Some("/dev/gpiochip1".into()),
            gpio_lines: 8,
            i2c_bus: Some(2),
            nvmem: vec![(0x51, "2-00510".into())],
            hidraw: Some("/dev/hidraw0".into()),
            driver: Some(("/sys/bus/hid/drivers/hid-cp2112".into(), "0003:10C4:EA90.0001".into())),
        }
    }

    #[test]
    fn every_kind_finds_its_node_on_a_cp2112() {
        let nodes = cp2112();
        let t = Duration::from_secs(1);
        for kind in HoldKind::ALL {
            let req = request_for(kind, &nodes, t).unwrap();
            assert_eq!(req.kind, kind);
            assert!(!req.path.is_empty(), "{kind:?}");
        }
        assert_eq!(request_for(HoldKind::NvmemSysfs, &nodes, t).unwrap().path, "/sys/bus/nvmem/devices/2-00510/nvmem");
        assert_eq!(request_for(HoldKind::NvmemKernel, &nodes, t).unwrap().path, "2-00510");
        let i2c = request_for(HoldKind::I2cDev, &nodes, t).unwrap();
        assert_eq!((i2c.path.as_str(), i2c.addr), ("/dev/i2c-2", Some(0x51)));
    }

    /// A long session: more console lines than the in-memory ring keeps, the first crash at
    /// the start; it is still counted, and lines before the boot cursor are not.
    #[tokio::test]
    async fn crashes_come_from_the_whole_console_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let warning = |n: u32| {
            format!(
                "    1.000000|[   1.0][  T{n}] WARNING: CPU: 0 PID: {n} at drivers/x.c:1 early{n}+0x1/0x2\n    1.000000|[   1.0][  T{n}] Call Trace:\n    1.000000|[   1.0][  T{n}]  early{n}+0x1/0x2\n    1.000000|[   1.0][  T{n}] ---[ end trace 0000000000000000 ]---\n"
            )
        };
        let mut log = warning(1); // before the session's cursor
        log.push_str(&warning(2));
        log.push_str(&warning(2));
        for i in 0..30_000 {
            log.push_str(&format!("    2.000000|[   2.0][  T1] noise {i}\n"));
        }
        std::fs::write(&path, log).unwrap();
        let (crashes, dropped) = crashes_since(path, LineCursor::at_line(4)).await;
        assert_eq!(dropped, 0);
        assert_eq!(crashes.len(), 1, "{crashes:?}");
        assert_eq!(
            (crashes[0].title.as_str(), crashes[0].count),
            ("WARNING in early2", 2)
        );
    }

    #[test]
    fn gpio_kinds_use_distinct_lines() {
        let mut seen = std::collections::BTreeSet::new();
        for kind in [
            HoldKind::GpioCdev,
            HoldKind::GpioEvent,
            HoldKind::GpioVirtuser,
            HoldKind::GpioVirtuserIrq,
            HoldKind::GpioAggregator,
        ] {
            let (inputs, outputs) = gpio_lines(kind);
            for line in inputs.into_iter().chain(outputs) {
                assert!(line < 8 && seen.insert(line), "{kind:?} reuses line {line}");
            }
        }
    }

    #[test]
    fn a_gpio_sim_has_no_nvmem_and_says_so() {
        let nodes = GuestNodes { gpiochip: Some("/dev/gpiochip0".into()), gpio_lines: 8, ..GuestNodes::default() };
        let err = request_for(HoldKind::NvmemSysfs, &nodes, Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("nvmem-sysfs needs an nvmem device"), "{err}");
        assert!(request_for(HoldKind::GpioVirtuserIrq, &nodes, Duration::from_secs(1)).is_ok());
    }
}
