//! Torture scenarios: what to plug, which handles to hold, how to unplug, what to observe.
//!
//! A scenario is a YAML file in `scenarios/`. It lists steps; randomness (delays, choices of
//! unplug method) is written as ranges and alternatives that the seeded `schedule` turns into
//! one concrete, replayable list of steps. Errors name the file, line and column.
//!
//! ```yaml
//! name: usb-kbd-cycle
//! description: hot-add and remove a QEMU usb-kbd (control for the xHCI/usbhid path)
//! iterations: 3
//! steps:
//!   - plug: { device: usb-kbd, id: kbd }
//!   - wait_console: "input: QEMU QEMU USB Keyboard"
//!   - delay: 0ms..300ms
//!   - unplug: { id: kbd, how: graceful }
//!   - observe
//! ```
//!
//! Consumers are steps too: `hold: { name: h, kind: nvmem-kernel, on: bridge }` starts a holder
//! on a plugged provider's nodes (it keeps its handle across the provider's unplug) and
//! `release: h` closes it, so "before, during, after, late close" is the order of the steps.
//!
//! `kernels: [resmgr]` limits a scenario to some of the kernel variants `torture --kernel`
//! knows (default: all); on the others its run is recorded as skipped, with the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The kernel variants this scenario applies to (default: all of them). `torture` on
    /// another variant records the run as skipped, with the reason, and does not boot it.
    #[serde(default = "all_kernels", deserialize_with = "kernel_list")]
    pub kernels: Vec<KernelVariant>,
    /// How many times the steps run in one VM.
    #[serde(default = "one")]
    pub iterations: u32,
    /// Extra kernel command-line words this scenario needs.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Steps run once before the iterations (setup).
    // Steps are written as one-key maps (`- plug: {...}`), not YAML tags (`- !plug {...}`).
    #[serde(default, with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub setup: Vec<Step>,
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub steps: Vec<Step>,
}

fn one() -> u32 {
    1
}

/// A kernel the torture runs against, by the name `torture --kernel` takes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum KernelVariant {
    /// Debian's 6.12 source as it is.
    Vanilla,
    /// The same source with the resmgr patch series (kernels/patches/resmgr).
    Resmgr,
}

impl KernelVariant {
    pub const ALL: [KernelVariant; 2] = [KernelVariant::Vanilla, KernelVariant::Resmgr];

    pub fn name(self) -> &'static str {
        match self {
            KernelVariant::Vanilla => "vanilla",
            KernelVariant::Resmgr => "resmgr",
        }
    }

    /// The patch series (`kernels/patches/NAME`) this variant builds with; `None`: unpatched.
    pub fn series(self) -> Option<&'static str> {
        match self {
            KernelVariant::Vanilla => None,
            KernelVariant::Resmgr => Some("resmgr"),
        }
    }
}

impl std::fmt::Display for KernelVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn known_kernels() -> String {
    KernelVariant::ALL.map(KernelVariant::name).join(", ")
}

fn all_kernels() -> Vec<KernelVariant> {
    KernelVariant::ALL.to_vec()
}

/// `kernels: [...]`: a non-empty list of distinct known variants. Checked while the YAML is
/// read, so a bad value is an error at its line and column like any other field's.
fn kernel_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<KernelVariant>, D::Error> {
    struct List;
    impl<'de> serde::de::Visitor<'de> for List {
        type Value = Vec<KernelVariant>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a sequence of kernel variants ({})", known_kernels())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut list = Vec::new();
            // Errors are raised while the reader is at the offending item, which locates them.
            while let Some(kernel) = seq.next_element::<KernelVariant>()? {
                if list.contains(&kernel) {
                    return Err(serde::de::Error::custom(format!("lists {kernel} twice")));
                }
                list.push(kernel);
            }
            if list.is_empty() {
                return Err(serde::de::Error::custom(format!(
                    "lists no kernel variant; leave the field out for all of them ({})",
                    known_kernels()
                )));
            }
            Ok(list)
        }
    }
    d.deserialize_seq(List)
}

/// One step, as written. Ranges and alternatives are resolved by the schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Plug a device through QMP (`usb-kbd`, `cp2112`, ...).
    Plug(Plug),
    /// Remove a plugged device.
    Unplug(Unplug),
    /// Run a command in the guest; a nonzero exit fails the step unless `check: false`.
    Exec(Exec),
    /// Write a file in the guest (sysfs, configfs, debugfs).
    Write { path: String, value: String },
    /// Create a directory in the guest (configfs objects).
    Mkdir(String),
    /// Remove a directory in the guest.
    Rmdir(String),
    /// Wait for a console line containing this text.
    WaitConsole(String),
    /// Sleep for a fixed or seeded-random time: `250ms` or `0ms..300ms`.
    Delay(DelaySpec),
    /// Run the observers (taint, /proc/interrupts, gpio debugfs, leftover files).
    Observe,
    /// Set the faults of an emulated device (replaces earlier ones; `fault: { id: x }` clears).
    Fault(FaultSpec),
    /// Bind the driver of a device an `unplug: { how: unbind }` left driverless.
    Bind(String),
    /// Start a consumer holding a plugged provider's handle (kept across the unplug).
    Hold(Hold),
    /// Close a holder's handle (a late close when its provider is already gone).
    Release(String),
}

/// A holder as written: its name in later steps, its kind, the provider it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    pub name: String,
    pub kind: crate::agent::HoldKind,
    /// The plugged provider's id (`cp2112` or `gpio-sim`).
    pub on: String,
}

/// Faults for an emulated CP2112, as written in a scenario.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub id: String,
    /// Hold every reply back (fixed or a seeded range), to widen race windows.
    #[serde(default)]
    pub reply_delay: Option<DelaySpec>,
    /// Report BUSY this many times before each transfer completes (10+ → the driver times out).
    #[serde(default)]
    pub busy: u32,
    /// Fail every transfer with this CP2112 status1 (0/1 → -ETIMEDOUT in Linux, others -EIO).
    #[serde(default)]
    pub transfer_error: Option<u8>,
    /// NAK every address.
    #[serde(default)]
    pub nak: bool,
    /// STALL every control request.
    #[serde(default)]
    pub stall_ep0: bool,
    /// Drop the device when this many more I2C transfers have started (1 = the next one).
    #[serde(default)]
    pub unplug_after_transfers: Option<u64>,
    /// How the device drops then: `disconnect` (usbredir device_disconnect) or `surprise`.
    #[serde(default)]
    pub unplug_how: Option<UnplugHow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plug {
    pub device: String,
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Unplug {
    pub id: String,
    /// One method, or several for the schedule to choose from.
    #[serde(default = "graceful")]
    pub how: OneOrMany<UnplugHow>,
}

fn graceful() -> OneOrMany<UnplugHow> {
    OneOrMany::One(UnplugHow::Graceful)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnplugHow {
    /// QMP `device_del`, waiting for `DEVICE_DELETED`.
    Graceful,
    /// The emulator closes its socket (usb-redir devices only).
    Surprise,
    /// The emulator sends usbredir `device_disconnect` on the live link.
    Disconnect,
    /// sysfs driver `unbind`: the device stays, its driver (hid-cp2112, gpio-sim) goes.
    Unbind,
}

impl UnplugHow {
    pub const ALL: [UnplugHow; 4] = [UnplugHow::Graceful, UnplugHow::Surprise, UnplugHow::Disconnect, UnplugHow::Unbind];

    pub fn name(self) -> &'static str {
        match self {
            UnplugHow::Graceful => "graceful",
            UnplugHow::Surprise => "surprise",
            UnplugHow::Disconnect => "disconnect",
            UnplugHow::Unbind => "unbind",
        }
    }
}

impl std::str::FromStr for UnplugHow {
    type Err = String;
    fn from_str(s: &str) -> Result<UnplugHow, String> {
        UnplugHow::ALL.into_iter().find(|h| h.name() == s).ok_or_else(|| {
            format!("unknown unplug method {s:?}; known: graceful, surprise, disconnect, unbind")
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn choices(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub argv: Vec<String>,
    #[serde(default = "check_default")]
    pub check: bool,
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<Duration>,
}

fn check_default() -> bool {
    true
}

/// A delay: a fixed duration or a range the schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelaySpec {
    pub min: Duration,
    pub max: Duration,
}

impl std::str::FromStr for DelaySpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (min, max) = match s.split_once("..") {
            Some((a, b)) => (parse_duration(a)?, parse_duration(b)?),
            None => {
                let d = parse_duration(s)?;
                (d, d)
            }
        };
        if min > max {
            return Err(format!("delay range {s:?} has its minimum above its maximum"));
        }
        Ok(DelaySpec { min, max })
    }
}

impl std::fmt::Display for DelaySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", humantime::format_duration(self.min))
        } else {
            write!(f, "{}..{}", humantime::format_duration(self.min), humantime::format_duration(self.max))
        }
    }
}

impl Serialize for DelaySpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DelaySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration {s:?}: {e} (examples: 250ms, 2s)"))
}

mod opt_duration {
    use super::*;
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

/// A scenario file that could not be used, with where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Scenario {
    /// Whether this scenario runs on `kernel`.
    pub fn applies_to(&self, kernel: KernelVariant) -> bool {
        self.kernels.contains(&kernel)
    }

    /// Why this scenario does not run on `kernel` (`applies to: resmgr`), or `None` if it does.
    pub fn skip_reason(&self, kernel: KernelVariant) -> Option<String> {
        if self.applies_to(kernel) {
            return None;
        }
        let names: Vec<&str> = self.kernels.iter().map(|k| k.name()).collect();
        Some(format!("applies to: {}", names.join(", ")))
    }

    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            ScenarioError::Syntax { path: origin.into(), line, column, message: e.to_string() }
        })?;
        scenario.validate().map_err(|message| ScenarioError::Invalid { path: origin.into(), message })?;
        Ok(scenario)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("name {:?} must be non-empty and use only letters, digits, '-' and '_'", self.name));
        }
        if self.steps.is_empty() {
            return Err("a scenario needs at least one step".into());
        }
        if self.iterations == 0 || self.iterations > 100_000 {
            return Err(format!("iterations must be between 1 and 100000, not {}", self.iterations));
        }
        // A plug id must exist before it is unplugged, and stay unique while plugged; the same
        // for holder names between hold and release.
        let mut plugged: Vec<&str> = Vec::new();
        let mut held: Vec<&str> = Vec::new();
        // Plugged devices whose driver an `unbind` took away (still plugged, no nodes).
        let mut unbound: Vec<&str> = Vec::new();
        let all = self.setup.iter().map(|s| ("setup", s)).chain(self.steps.iter().map(|s| ("steps", s)));
        for (index, (section, step)) in all.enumerate() {
            let at = format!("{section} step {}", index + 1 - if section == "steps" { self.setup.len() } else { 0 });
            match step {
                Step::Plug(p) => {
                    if plugged.contains(&p.id.as_str()) {
                        return Err(format!("{at}: id {:?} is already plugged", p.id));
                    }
                    plugged.push(&p.id);
                }
                Step::Unplug(u) => {
                    let Some(pos) = plugged.iter().position(|id| *id == u.id) else {
                        return Err(format!("{at}: unplug of {:?}, which no earlier step plugged", u.id));
                    };
                    let choices = u.how.choices();
                    if choices.is_empty() {
                        return Err(format!("{at}: `how` lists no unplug method"));
                    }
                    if choices.contains(&UnplugHow::Unbind) {
                        // An unbind leaves the device plugged: it cannot be one draw among removals.
                        if choices.len() > 1 {
                            return Err(format!("{at}: `unbind` keeps the device plugged, so it cannot be a choice among unplug methods"));
                        }
                        if unbound.contains(&u.id.as_str()) {
                            return Err(format!("{at}: {:?}'s driver is already unbound", u.id));
                        }
                        unbound.push(&u.id);
                    } else {
                        plugged.remove(pos);
                        unbound.retain(|id| *id != u.id);
                    }
                }
                Step::Bind(id) => {
                    let Some(pos) = unbound.iter().position(|u| u == id) else {
                        return Err(format!("{at}: bind of {id:?}, whose driver no earlier step unbound"));
                    };
                    unbound.remove(pos);
                }
                Step::Exec(e) if e.argv.is_empty() => return Err(format!("{at}: exec with an empty argv")),
                Step::Hold(h) => {
                    if held.contains(&h.name.as_str()) {
                        return Err(format!("{at}: holder {:?} is already held", h.name));
                    }
                    if !plugged.contains(&h.on.as_str()) {
                        return Err(format!("{at}: hold on {:?}, which is not plugged at that point", h.on));
                    }
                    if unbound.contains(&h.on.as_str()) {
                        return Err(format!("{at}: hold on {:?}, whose driver is unbound at that point", h.on));
                    }
                    held.push(&h.name);
                }
                Step::Release(name) => {
                    let Some(pos) = held.iter().position(|n| n == name) else {
                        return Err(format!("{at}: release of {name:?}, which no earlier step holds"));
                    };
                    held.remove(pos);
                }
                Step::Fault(f) => {
                    if !plugged.contains(&f.id.as_str()) {
                        return Err(format!("{at}: fault for {:?}, which is not plugged at that point", f.id));
                    }
                    if f.unplug_after_transfers == Some(0) {
                        return Err(format!("{at}: unplug_after_transfers counts from 1 (the next transfer)"));
                    }
                    if matches!(f.unplug_how, Some(UnplugHow::Graceful | UnplugHow::Unbind)) {
                        return Err(format!("{at}: a fault unplug is `disconnect` or `surprise`; graceful and unbind are steps of their own"));
                    }
                }
                _ => {}
            }
        }
        // Steps repeat, so whatever they plug they must also unplug.
        if self.iterations > 1 {
            let in_steps: Vec<&str> = self
                .steps
                .iter()
                .filter_map(|s| if let Step::Plug(p) = s { Some(p.id.as_str()) } else { None })
                .filter(|id| plugged.contains(id))
                .collect();
            if let Some(id) = in_steps.first() {
                return Err(format!("steps plug {id:?} without unplugging it, so iteration 2 would plug it twice"));
            }
            let held_in_steps = self.steps.iter().find_map(|s| match s {
                Step::Hold(h) if held.contains(&h.name.as_str()) => Some(h.name.as_str()),
                _ => None,
            });
            if let Some(name) = held_in_steps {
                return Err(format!("steps hold {name:?} without releasing it, so iteration 2 would hold it twice"));
            }
        }
        Ok(())
    }
}

/// Scenario files in `dir` whose name (without `.yaml`) matches the glob (`*` and `?`).
pub fn find(dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, ScenarioError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ScenarioError::Io { path: dir.into(), source })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|p| p.file_stem().and_then(|s| s.to_str()).is_some_and(|stem| glob_match(pattern, stem)))
        .collect();
    found.sort();
    Ok(found)
}

fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: usb-kbd-cycle
iterations: 2
steps:
  - plug: { device: usb-kbd, id: kbd }
  - wait_console: "USB Keyboard"
  - delay: 0ms..300ms
  - unplug: { id: kbd, how: [graceful, graceful] }
  - exec: { argv: [cat, /proc/interrupts], check: false, timeout: 5s }
  - observe
"#;

    #[test]
    fn parses_a_good_scenario() {
        let s = Scenario::parse(GOOD, Path::new("good.yaml")).unwrap();
        assert_eq!(s.iterations, 2);
        assert_eq!(s.steps.len(), 6);
        assert_eq!(s.steps[2], Step::Delay(DelaySpec { min: Duration::ZERO, max: Duration::from_millis(300) }));
        assert_eq!(s.steps[5], Step::Observe);
        match &s.steps[4] {
            Step::Exec(e) => assert_eq!((e.check, e.timeout), (false, Some(Duration::from_secs(5)))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_carry_file_line_and_column() {
        let text = "name: x\nsteps:\n  - plug: { device: usb-kbd, id: k }\n  - frobnicate: 3\n";
        let err = Scenario::parse(text, Path::new("scenarios/bad.yaml")).unwrap_err().to_string();
        assert!(err.starts_with("scenarios/bad.yaml:4:"), "{err}");
        assert!(err.contains("frobnicate"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        for (text, needle) in [
            ("name: x\nsteps:\n  - delay: 5 parsecs\n", "bad duration"),
            ("name: x\nsteps:\n  - delay: 3s..1s\n", "minimum above its maximum"),
            ("name: x\nsteps:\n  - unplug: { id: ghost }\n", "which no earlier step plugged"),
            ("name: x\niterations: 3\nsteps:\n  - plug: { device: usb-kbd, id: k }\n", "plug it twice"),
            ("name: 'a b'\nsteps:\n  - observe\n", "only letters"),
            ("name: x\nsteps: []\n", "at least one step"),
            ("name: x\nsteps:\n  - exec: { argv: [] }\n", "empty argv"),
            ("name: x\nsteps:\n  - fault: { id: ghost, nak: true }\n", "not plugged at that point"),
            ("name: x\nsteps:\n  - plug: { device: cp2112, id: b }\n  - fault: { id: b, unplug_after_transfers: 0 }\n", "counts from 1"),
            ("name: x\nsteps:\n  - unplug: { id: k, how: sideways }\n", "scenarios/t.yaml:"),
            ("\u{0}\u{1}garbage: [", "scenarios/t.yaml:"),
            ("name: x\nsteps:\n  - release: ghost\n", "which no earlier step holds"),
            ("name: x\nsteps:\n  - plug: { device: cp2112, id: b }\n  - bind: b\n", "whose driver no earlier step unbound"),
            ("name: x\nsteps:\n  - plug: { device: cp2112, id: b }\n  - unplug: { id: b, how: [unbind, graceful] }\n", "cannot be a choice"),
            ("name: x\nsteps:\n  - plug: { device: cp2112, id: b }\n  - unplug: { id: b, how: unbind }\n  - hold: { name: h, kind: hidraw, on: b }\n", "driver is unbound"),
            ("name: x\niterations: 2\nsteps:\n  - plug: { device: cp2112, id: b }\n  - unplug: { id: b, how: unbind }\n", "plug it twice"),
            ("name: x\nsteps:\n  - hold: { name: h, kind: gpio-cdev, on: ghost }\n", "not plugged at that point"),
            ("name: x\nsteps:\n  - plug: { device: gpio-sim, id: g }\n  - hold: { name: h, kind: gpio-sideways, on: g }\n", "t.yaml:4:28: steps[1].hold.kind: unknown variant `gpio-sideways`"),
            ("name: x\nsteps:\n  - plug: { device: gpio-sim, id: g }\n  - hold: { name: h, kind: gpio-cdev, on: g }\n  - hold: { name: h, kind: gpio-event, on: g }\n", "already held"),
            ("name: x\nsetup:\n  - plug: { device: gpio-sim, id: g }\niterations: 2\nsteps:\n  - hold: { name: h, kind: gpio-cdev, on: g }\n", "hold it twice"),
        ] {
            let err = Scenario::parse(text, Path::new("scenarios/t.yaml")).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err}");
        }
    }

    #[test]
    fn kernels_default_to_every_variant() {
        let s = Scenario::parse(GOOD, Path::new("good.yaml")).unwrap();
        assert_eq!(s.kernels, KernelVariant::ALL);
        assert!(KernelVariant::ALL.iter().all(|k| s.applies_to(*k) && s.skip_reason(*k).is_none()));
        let s = Scenario::parse("name: x\nkernels: [resmgr]\nsteps:\n  - observe\n", Path::new("k.yaml")).unwrap();
        assert_eq!(s.kernels, [KernelVariant::Resmgr]);
        assert!(s.applies_to(KernelVariant::Resmgr));
        assert_eq!(s.skip_reason(KernelVariant::Vanilla).as_deref(), Some("applies to: resmgr"));
        let s = Scenario::parse("name: x\nkernels:\n  - resmgr\n  - vanilla\nsteps:\n  - observe\n", Path::new("k.yaml")).unwrap();
        assert_eq!(s.kernels, [KernelVariant::Resmgr, KernelVariant::Vanilla]);
    }

    /// `kernels:` errors name file, line and column (of the bad value) and the known variants.
    #[test]
    fn kernels_errors_are_located() {
        for (text, expect) in [
            // An unknown variant: the known ones are listed.
            ("name: x\nkernels: [resmgr, mainline]\nsteps:\n  - observe\n", "k.yaml:2:19: kernels[1]: unknown variant `mainline`, expected `vanilla` or `resmgr`"),
            ("name: x\nkernels:\n  - Vanilla\nsteps:\n  - observe\n", "k.yaml:3:5: kernels[0]: unknown variant `Vanilla`, expected `vanilla` or `resmgr`"),
            // The CLI's `both` is a choice of runs, not a variant.
            ("name: x\nkernels: [both]\nsteps:\n  - observe\n", "k.yaml:2:11: kernels[0]: unknown variant `both`"),
            // Wrong types.
            ("name: x\nkernels: resmgr\nsteps:\n  - observe\n", "k.yaml:2:10: kernels: invalid type: string \"resmgr\", expected a sequence of kernel variants (vanilla, resmgr)"),
            ("name: x\nkernels: { resmgr: true }\nsteps:\n  - observe\n", "k.yaml:2:10: kernels: invalid type: map, expected a sequence"),
            ("name: x\nkernels: [3]\nsteps:\n  - observe\n", "k.yaml:2:11: kernels[0]: unknown variant `3`, expected `vanilla` or `resmgr`"),
            ("name: x\nkernels: [[resmgr]]\nsteps:\n  - observe\n", "k.yaml:2:11: kernels[0]: invalid type: sequence, expected"),
            // Empty or repeated lists.
            ("name: x\nkernels: []\nsteps:\n  - observe\n", "k.yaml:2:10: kernels: lists no kernel variant; leave the field out for all of them (vanilla, resmgr)"),
            ("name: x\nkernels: [resmgr, resmgr]\nsteps:\n  - observe\n", "k.yaml:2:10: kernels: lists resmgr twice"),
        ] {
            let err = Scenario::parse(text, Path::new("k.yaml")).unwrap_err().to_string();
            assert!(err.contains(expect), "{text:?} gave {err}");
            assert!(matches!(err.split(':').nth(1).map(str::parse::<usize>), Some(Ok(1..))), "{text:?}: no line in {err}");
        }
    }

    #[test]
    fn glob_selects_scenarios() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("usb-*", "usb-kbd-cycle"));
        assert!(glob_match("*kbd*", "usb-kbd-cycle"));
        assert!(glob_match("gpio-?im", "gpio-sim"));
        assert!(!glob_match("usb-*", "gpio-sim"));
    }

    #[test]
    fn shipped_scenarios_all_parse() {
        let dir = crate::paths::repo_root().join("scenarios");
        for path in find(&dir, "*").unwrap() {
            Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
