//! User-space consumers in the guest, seen from the host: start holders through the agent,
//! gather the records each streams into its own log, and say in one line what each observed.
//!
//! The guest side (`agent::HoldRequest`, the agent's `consumer` module) records what the
//! kernel answered; nothing here decides whether that was right. A holder that sent no
//! `stopped` record by its deadline (plus slack) is reported as hung: its last call never
//! returned.
//!
//! Nothing here sleeps for a fixed time: a hold is ready when the holder's `ready` record
//! (its first use returned) arrived, a release is done when its `closed` record did, each
//! waited for with a deadline scaled by the host's pace ([`crate::run::pace`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use agent::{poll_flags, POLLIN};

use agent::{ConsumerRecord, HoldRequest};

use crate::run::agent_link::{Agent, AgentError};

/// Event kind the agent uses for holder records.
const EVENT_KIND: &str = "consumer";

/// A holder that has not stopped this long after its deadline is called hung (reference
/// machines; scaled by the pace).
const HUNG_SLACK: Duration = Duration::from_secs(5);
/// How long a holder's first use may take (reference machines; scaled): opening a consumer
/// in the kernel and its first call, on a guest that may be printing reports.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long the `closed` record may trail the release's answer (reference machines;
/// scaled): the record precedes the answer on the wire, so this is only the collector's lag.
const CLOSED_WAIT: Duration = Duration::from_secs(5);

/// Everything one holder reported, in order.
#[derive(Debug, Clone, Default)]
pub struct HolderLog {
    pub handle: u64,
    /// The request, once `hold` returned (records may arrive before the answer).
    pub request: Option<HoldRequest>,
    pub records: Vec<ConsumerRecord>,
    /// When a holder that has not stopped by then counts as hung (deadline + slack).
    hung_after: Option<Instant>,
    /// Records of this guest's holders the host missed (its reader fell behind the agent's
    /// event stream); which holder's they were is unknown, so every summary says it.
    pub records_lost: u64,
}

impl HolderLog {
    /// The first record that is an error or a poll condition other than POLLIN.
    pub fn first_failure(&self) -> Option<&ConsumerRecord> {
        self.records.iter().find(|r| r.errno.is_some() || r.revents.is_some_and(|e| e & !POLLIN != 0))
    }

    /// [`HolderLog::first_failure`] by name: the op and the errno or poll flags it got.
    pub fn first_error(&self) -> Option<FirstError> {
        self.first_failure().map(|fail| FirstError {
            op: fail.op.clone(),
            errno: fail.errno.map(|errno| fail.errno_name.clone().unwrap_or_else(|| format!("errno {errno}"))),
            // An errno is the answer; poll flags only matter without one.
            revents: fail.revents.filter(|_| fail.errno.is_none()).map(poll_flags),
        })
    }

    /// This holder under the name the scenario gave it, for `summary.json`.
    pub fn state(&self, name: &str) -> HolderState {
        HolderState {
            name: name.to_string(),
            kind: self.request.as_ref().map_or("?", |r| r.kind.name()).to_string(),
            first_error: self.first_error(),
            hung: !self.stopped() && self.overdue(),
        }
    }

    /// Whether the loop ended (deadline, error or release).
    pub fn stopped(&self) -> bool {
        self.has(agent::HOLDER_STOPPED)
    }

    /// Whether the holder's first use returned (or it already stopped).
    pub fn ready(&self) -> bool {
        self.has(agent::HOLDER_READY) || self.stopped()
    }

    fn has(&self, op: &str) -> bool {
        self.records.iter().any(|r| r.op == op)
    }

    /// What the agent's own panic said, if the holder's loop ended in one (a bug in the
    /// agent: whatever the kernel answered, the run is not clean).
    pub fn panicked(&self) -> Option<&str> {
        self.records
            .iter()
            .filter(|r| r.op == agent::HOLDER_STOPPED)
            .find_map(|r| r.detail.as_deref()?.strip_prefix(agent::HOLDER_PANICKED))
    }

    /// Records of this holder that never reached its log: gaps in their numbering (the
    /// agent's queue was full, or the host fell behind). Records after the last one that
    /// arrived are not counted (see `records_lost`).
    pub fn missing(&self) -> u64 {
        let mut seqs: Vec<u64> = self.records.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.last().map_or(0, |&last| last + 1 - seqs.len() as u64)
    }

    /// Why this holder needs a look whatever the kernel answered: it hung, or the agent
    /// failed it.
    pub fn trouble(&self) -> Option<String> {
        if let Some(panic) = self.panicked() {
            return Some(format!("the agent panicked running it: {panic}"));
        }
        (!self.stopped() && self.overdue()).then(|| "hung: no return within the deadline".to_string())
    }

    /// One line: what the holder saw first go wrong, after how many successes; or that it
    /// ran clean; or that it hung.
    pub fn summary(&self) -> String {
        let kind = self.request.as_ref().map_or("?", |r| r.kind.name());
        let mut out = format!("holder {} ({kind}): ", self.handle);
        match self.first_failure() {
            Some(fail) => {
                // `repeats` counts how often the op's previous outcome repeated unreported;
                // every record of the op before the first failure was a success.
                let oks: u64 = self
                    .records
                    .iter()
                    .take_while(|r| !std::ptr::eq(*r, fail))
                    .chain(std::iter::once(fail))
                    .filter(|r| r.op == fail.op)
                    .map(|r| r.repeats + u64::from(r.errno.is_none() && r.detail.as_deref() != Some(agent::HOLDER_REPEATED)))
                    .sum();
                match self.first_error() {
                    Some(FirstError { errno: Some(name), .. }) => {
                        let _ = write!(out, "got -{name} on {} after {oks} ok", fail.op);
                    }
                    Some(FirstError { revents: Some(flags), .. }) => {
                        let _ = write!(out, "{flags} on {}", fail.op);
                    }
                    _ => {}
                }
            }
            None => out.push_str("no error"),
        }
        // A call the kernel kept waiting, even one that then "succeeded": what the holder
        // was doing while the provider went. The agent sends every such call.
        let slow_us = u64::try_from(agent::SLOW_CALL.as_micros()).unwrap_or(u64::MAX);
        if let Some(slow) = self.records.iter().filter(|r| r.latency_us >= slow_us).max_by_key(|r| r.latency_us) {
            let _ = write!(out, "; {} took {:.1} s", slow.op, slow.latency_us as f64 / 1e6);
        }
        if let Some(trouble) = self.trouble() {
            let _ = write!(out, "; {trouble}");
        }
        let missing = self.missing();
        if missing > 0 {
            let _ = write!(out, "; {missing} of its records lost on the way (gaps in their numbering)");
        }
        if self.records_lost > 0 {
            let _ = write!(out, "; {} holder record(s) lost (the host fell behind), this log may lack some", self.records_lost);
        }
        out
    }

    fn overdue(&self) -> bool {
        self.hung_after.is_some_and(|t| Instant::now() > t)
    }
}

/// What a holder got first when something went wrong: the op and the errno (`ENODEV`) or,
/// for a poll, the flags (`POLLERR|POLLHUP`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FirstError {
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revents: Option<String>,
}

/// A holder by its scenario name, as `summary.json` and the A/B table show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HolderState {
    pub name: String,
    pub kind: String,
    /// `None`: no error seen.
    pub first_error: Option<FirstError>,
    /// Its last call never returned within the deadline.
    #[serde(default)]
    pub hung: bool,
}

impl std::fmt::Display for FirstError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.errno, &self.revents) {
            (Some(errno), _) => write!(f, "{} -> -{errno}", self.op),
            (None, Some(flags)) => write!(f, "{} -> {flags}", self.op),
            (None, None) => f.write_str(&self.op),
        }
    }
}

/// The holders of one guest and their logs. Subscribes to the agent's events on creation, so
/// every record of a holder started through it is kept.
pub struct Holders {
    agent: Agent,
    logs: Arc<Mutex<BTreeMap<u64, HolderLog>>>,
    /// Woken on every record the collector files.
    filed: Arc<Notify>,
    /// Records the collector missed (broadcast lag).
    lost: Arc<AtomicU64>,
    collector: JoinHandle<()>,
}

impl Holders {
    pub fn new(agent: &Agent) -> Holders {
        let logs: Arc<Mutex<BTreeMap<u64, HolderLog>>> = Arc::default();
        let filed = Arc::new(Notify::new());
        let mut events = agent.subscribe();
        let sink = logs.clone();
        let notify = filed.clone();
        let lost = Arc::new(AtomicU64::new(0));
        let missed = lost.clone();
        let collector = tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!("consumer records lost: {n} events dropped by a slow reader");
                        missed.fetch_add(n, Ordering::Relaxed);
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                if event.kind != EVENT_KIND {
                    continue;
                }
                match serde_json::from_value::<ConsumerRecord>(event.data) {
                    Ok(record) => {
                        lock(&sink).entry(record.holder).or_default().records.push(record);
                        notify.notify_waiters();
                    }
                    Err(e) => tracing::warn!("bad consumer record from {}: {e}", event.source),
                }
            }
        });
        Holders { agent: agent.clone(), logs, filed, lost, collector }
    }

    /// Starts a holder; returns its handle once the guest answered. Its first use may still
    /// be under way: see [`Holders::wait_ready`].
    pub async fn hold(&self, req: HoldRequest) -> Result<u64, AgentError> {
        let started = Instant::now();
        let handle = self.agent.hold(req.clone()).await?;
        let slack = self.agent.pace().scale(HUNG_SLACK);
        let mut logs = lock(&self.logs);
        let log = logs.entry(handle).or_default();
        log.handle = handle;
        log.hung_after = Some(started + Duration::from_millis(req.deadline_ms).saturating_add(slack));
        log.request = Some(req);
        Ok(handle)
    }

    /// Waits until `handle`'s first use returned (its `ready` record), so that an unplug
    /// after this cannot overtake it. A missed deadline says how long it waited.
    pub async fn wait_ready(&self, handle: u64) -> Result<(), String> {
        let wait = self.agent.pace().scale(READY_WAIT);
        if self.wait_for(handle, wait, HolderLog::ready).await {
            Ok(())
        } else {
            Err(format!("holder {handle} made no first use within {wait:?} (no `ready` record)"))
        }
    }

    /// Stops a holder and closes its fds in the guest; returns once the guest answered and
    /// the holder's `closed` record is filed (or its short deadline passed: then the log
    /// simply lacks it).
    pub async fn release(&self, handle: u64) -> Result<(), AgentError> {
        self.agent.release(handle).await?;
        self.wait_for(handle, self.agent.pace().scale(CLOSED_WAIT), |log| log.has(agent::HOLDER_CLOSED)).await;
        Ok(())
    }

    /// Waits until `handle` reported `stopped`, or `timeout`; true if it did.
    pub async fn wait_stopped(&self, handle: u64, timeout: Duration) -> bool {
        self.wait_for(handle, timeout, HolderLog::stopped).await
    }

    /// Waits until `done` holds for `handle`'s log, or `timeout`; whether it did.
    async fn wait_for(&self, handle: u64, timeout: Duration, done: impl Fn(&HolderLog) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a record filed in between still wakes us.
            let filed = self.filed.notified();
            if lock(&self.logs).get(&handle).is_some_and(&done) {
                return true;
            }
            if tokio::time::timeout_at(deadline, filed).await.is_err() {
                return lock(&self.logs).get(&handle).is_some_and(&done);
            }
        }
    }

    /// A copy of every holder's log so far, by handle.
    pub fn logs(&self) -> Vec<HolderLog> {
        let records_lost = self.lost.load(Ordering::Relaxed);
        lock(&self.logs).iter().map(|(&handle, log)| HolderLog { handle, records_lost, ..log.clone() }).collect()
    }

    /// A copy of one holder's log so far.
    pub fn log(&self, handle: u64) -> Option<HolderLog> {
        let records_lost = self.lost.load(Ordering::Relaxed);
        lock(&self.logs).get(&handle).map(|log| HolderLog { handle, records_lost, ..log.clone() })
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        self.collector.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::HoldKind;

    fn record(op: &str, errno: Option<i32>, revents: Option<i16>, repeats: u64) -> ConsumerRecord {
        ConsumerRecord {
            holder: 1,
            kind: HoldKind::GpioCdev,
            seq: 0,
            op: op.into(),
            ret: errno.is_none().then_some(0),
            errno,
            errno_name: errno.and_then(agent::errno_name).map(str::to_string),
            revents,
            latency_us: 1,
            mono_ns: 1,
            repeats,
            detail: None,
            data: None,
        }
    }

    /// Numbered as the agent numbers them.
    fn numbered(records: Vec<ConsumerRecord>) -> Vec<ConsumerRecord> {
        records.into_iter().enumerate().map(|(i, r)| ConsumerRecord { seq: i as u64, ..r }).collect()
    }

    #[test]
    fn a_holder_that_panicked_in_the_agent_is_trouble_not_clean() {
        let stopped = ConsumerRecord { detail: Some("panic: index out of bounds".into()), ..record("stopped", None, None, 0) };
        let log = HolderLog {
            handle: 1,
            records: numbered(vec![record("open", None, None, 0), record("pread", None, None, 0), stopped]),
            ..HolderLog::default()
        };
        assert_eq!(log.panicked(), Some("index out of bounds"));
        assert_eq!(log.summary(), "holder 1 (?): no error; the agent panicked running it: index out of bounds");
        assert!(log.trouble().is_some());
        let released = ConsumerRecord { detail: Some("released".into()), ..record("stopped", None, None, 0) };
        let clean = HolderLog { handle: 1, records: numbered(vec![record("open", None, None, 0), released]), ..HolderLog::default() };
        assert_eq!((clean.panicked(), clean.trouble()), (None, None));
    }

    #[test]
    fn every_record_lost_on_the_way_is_said() {
        let mut records = numbered(vec![
            record("open", None, None, 0),
            record("pread", None, None, 0),
            record("pread", Some(19), None, 0),
            record("stopped", None, None, 0),
            record("closed", None, None, 0),
        ]);
        records.remove(2);
        records.remove(2);
        let log = HolderLog { handle: 1, records, ..HolderLog::default() };
        assert_eq!(log.missing(), 2);
        assert_eq!(log.summary(), "holder 1 (?): no error; 2 of its records lost on the way (gaps in their numbering)");
    }

    /// A write the unplug left waiting for USB's 5 s timeout, which the driver then
    /// reported as done: no error, but the summary says what held the holder up.
    #[test]
    fn summary_names_the_slowest_call_even_without_an_error() {
        let op = "GPIO_V2_LINE_SET_VALUES_IOCTL";
        let slow = |ms: u64| ConsumerRecord { latency_us: ms * 1000, ..record(op, None, None, 0) };
        let log = HolderLog {
            handle: 2,
            records: numbered(vec![record("open", None, None, 0), record(op, None, None, 0), slow(1300), slow(5190), record("stopped", None, None, 0)]),
            ..HolderLog::default()
        };
        assert_eq!(log.summary(), format!("holder 2 (?): no error; {op} took 5.2 s"));
    }

    #[test]
    fn summary_counts_successes_before_the_first_error() {
        let op = "GPIO_V2_LINE_GET_VALUES_IOCTL";
        let log = HolderLog {
            handle: 1,
            records: numbered(vec![record("open", None, None, 0), record(op, None, None, 0), record(op, Some(19), None, 2)]),
            ..HolderLog::default()
        };
        assert_eq!(log.summary(), format!("holder 1 (?): got -ENODEV on {op} after 3 ok"));
        let polled = HolderLog {
            handle: 2,
            records: numbered(vec![record("poll", None, Some(0x18), 0), record("stopped", None, None, 0)]),
            ..HolderLog::default()
        };
        assert_eq!(polled.summary(), "holder 2 (?): POLLERR|POLLHUP on poll");
        let lagged = HolderLog { records_lost: 3, ..polled };
        assert_eq!(
            lagged.summary(),
            "holder 2 (?): POLLERR|POLLHUP on poll; 3 holder record(s) lost (the host fell behind), this log may lack some"
        );
    }
}
