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
//! knows (default: vanilla and resmgr, the 6.12 line; vanilla-6.1 only where a scenario names
//! it, with what was measured there); on the others its run is recorded as skipped, with the reason.
//!
//! `expect:` says, per kernel variant, which crash titles a run must and may show:
//!
//! ```yaml
//! expect:
//!   vanilla: ["KASAN: slab-use-after-free Read in at24_read"]   # must show, nothing else
//!   resmgr: clean                                               # no title at all
//! ```
//!
//! A racy scenario's bug comes out under a few titles, some seeds not all of them: the long
//! form separates what must appear from what may.
//!
//! ```yaml
//! expect:
//!   vanilla:
//!     titles: ["KASAN: slab-use-after-free Read in at24_read"]
//!     maybe: ["KASAN: slab-use-after-free {Read,Write} in *regmap_*"]
//! ```
//!
//! Every entry is a title pattern: exact text, or a glob (`*`, `?`, `{a,b}`, `[...]`; a literal
//! `[`, `{`, `*` or `?` is written `[[]`, `[{]`, `[*]`, `[?]`). Each of `titles` must match
//! some title of the run (counts do not matter); every title of the run must match an entry of
//! `titles` or `maybe`. `clean` is no title; a variant `expect` does not name expects `clean`.
//! A failed step misses any expectation (see `results::Summary`). `refused: [holder, ...]`
//! names holders that must have been refused by the run's end, so that a clean run shows the
//! consumer did reach the removed provider.
//!
//! A step can be limited to some variants without changing the schedule:
//! `- only: { kernels: [vanilla], step: { wait_console: "blocked for more than" } }`. Its
//! random draws are made on every kernel, so one seed gives one schedule everywhere; on the
//! other variants the step is recorded as not on this kernel. Only steps that change no
//! device or holder state can be limited, so every variant goes through the same states.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The kernel variants this scenario applies to (default: vanilla and resmgr; a scenario
    /// applies to vanilla-6.1 once it says what it expects there, as measured). `torture` on
    /// another variant records the run as skipped, with the reason, and does not boot it.
    #[serde(default = "default_kernels", deserialize_with = "kernel_list")]
    pub kernels: Vec<KernelVariant>,
    /// What the scenario needs of a kernel build beyond what its steps imply (`[rust]`,
    /// `[gpio-virtuser]`; `harness::drive::requires`): a build without it skips the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<crate::drive::requires::Requirement>,
    /// The crash titles a run must and may show, per kernel variant (absent: clean).
    #[serde(default, deserialize_with = "expect_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub expect: BTreeMap<KernelVariant, Expectation>,
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
pub enum KernelVariant {
    /// Debian's 6.12 source as it is.
    #[serde(rename = "vanilla")]
    Vanilla,
    /// The same source with the resmgr patch series (kernels/patches/resmgr).
    #[serde(rename = "resmgr")]
    Resmgr,
    /// Debian's 6.1 LTS source as it is (built without Rust and gpio-virtuser:
    /// `kernels/configs/6.1/absent`): bugs upstream fixed after 6.1 are still in it.
    #[serde(rename = "vanilla-6.1")]
    Vanilla61,
}

impl KernelVariant {
    pub const ALL: [KernelVariant; 3] = [KernelVariant::Vanilla, KernelVariant::Resmgr, KernelVariant::Vanilla61];
    /// What a scenario applies to when its `kernels:` does not say: the 6.12 line. On 6.1 a
    /// scenario nobody has run there is skipped with that reason, never judged against a guess.
    pub const DEFAULT: [KernelVariant; 2] = [KernelVariant::Vanilla, KernelVariant::Resmgr];

    pub fn name(self) -> &'static str {
        match self {
            KernelVariant::Vanilla => "vanilla",
            KernelVariant::Resmgr => "resmgr",
            KernelVariant::Vanilla61 => "vanilla-6.1",
        }
    }

    /// The variant called `name` (`vanilla-6.1`), or an error listing the known ones.
    pub fn from_name(name: &str) -> Result<KernelVariant, String> {
        KernelVariant::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| format!("unknown kernel variant {name:?}; known: {}", known_kernels()))
    }

    /// The patch series (`kernels/patches/NAME`) this variant builds with; `None`: unpatched.
    pub fn series(self) -> Option<&'static str> {
        match self {
            KernelVariant::Vanilla | KernelVariant::Vanilla61 => None,
            KernelVariant::Resmgr => Some("resmgr"),
        }
    }

    /// The Debian source package this variant builds.
    pub fn debian(self) -> crate::build::kernel::DebianSource {
        match self {
            KernelVariant::Vanilla | KernelVariant::Resmgr => crate::build::kernel::DebianSource::Linux6_12,
            KernelVariant::Vanilla61 => crate::build::kernel::DebianSource::Linux6_1,
        }
    }

    /// The 6.12 variant built with `series` (`None`: unpatched); `None` for a series no
    /// variant is. (For runs recorded before `meta.json` named their variant: all were 6.12.)
    pub fn of_series(series: Option<&str>) -> Option<KernelVariant> {
        KernelVariant::ALL.into_iter().find(|k| k.series() == series)
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

fn default_kernels() -> Vec<KernelVariant> {
    KernelVariant::DEFAULT.to_vec()
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
                    "lists no kernel variant; leave the field out for the default ones ({})",
                    KernelVariant::DEFAULT.map(KernelVariant::name).join(", ")
                )));
            }
            Ok(list)
        }
    }
    d.deserialize_seq(List)
}

/// `expect:`: at most one expectation per known variant. Checked while the YAML is read, so
/// an unknown or repeated variant is an error at its line and column.
fn expect_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<KernelVariant, Expectation>, D::Error> {
    struct Map;
    impl<'de> serde::de::Visitor<'de> for Map {
        type Value = BTreeMap<KernelVariant, Expectation>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a map from kernel variant ({}) to its expectation", known_kernels())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(kernel) = map.next_key::<KernelVariant>()? {
                if out.contains_key(&kernel) {
                    return Err(serde::de::Error::custom(format!("expects {kernel} twice")));
                }
                out.insert(kernel, map.next_value::<Expectation>()?);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Map)
}

/// The crash titles a run on one kernel variant must show (`titles`, each matched by at least
/// one title) and may show (`maybe`); any other title misses it. Empty: clean.
///
/// `refused` names holders that must have been refused (an error or a hang-up) by the run's
/// end. A clean run only says something about a removed provider if a consumer reached it
/// afterwards: a holder whose uses all came before the removal leaves a clean that proves
/// nothing, and with `refused` that run misses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expectation {
    pub titles: Vec<TitlePattern>,
    pub maybe: Vec<TitlePattern>,
    pub refused: Vec<String>,
}

/// What a scenario file writes for a variant: `clean`, a list (= `titles`), or a map.
const EXPECTATION_FORMS: &str = "`clean`, a list of title patterns, or { titles: [...], maybe: [...], refused: [holder, ...] }";

impl Expectation {
    pub fn is_clean(&self) -> bool {
        self.titles.is_empty() && self.maybe.is_empty()
    }

    /// Whether a run may show `title`: some pattern of `titles` or `maybe` matches it.
    pub fn allows(&self, title: &str) -> bool {
        self.titles.iter().chain(&self.maybe).any(|p| p.matches(title))
    }

    /// Why a run with these crash titles misses this expectation: each pattern of `titles` no
    /// title matched — a bug's or a follow-on's: a report the kernel printed after another on
    /// the same freed object still shows the bug it names — then each bug title no pattern
    /// allows (follow-ons are judged with their bug). Empty: the titles meet it.
    pub fn mismatches(&self, run_titles: &[&str], follow_ons: &[&str]) -> Vec<String> {
        let missing = self
            .titles
            .iter()
            .filter(|p| !run_titles.iter().chain(follow_ons).any(|t| p.matches(t)))
            .map(|p| format!("expected title missing: {}", p.text()));
        let unexpected = run_titles
            .iter()
            .filter(|t| !self.allows(t))
            .map(|t| format!("unexpected title: {t}"));
        missing.chain(unexpected).collect()
    }

    /// Why the holders of a run (name, refused or not) miss `refused`: each one named there
    /// that was never refused, or is not among them.
    pub fn unrefused<'h>(&self, holders: impl Iterator<Item = (&'h str, bool)> + Clone) -> Vec<String> {
        self.refused
            .iter()
            .filter(|name| !holders.clone().any(|(n, refused)| n == name.as_str() && refused))
            .map(|name| format!("holder {name} was never refused: no use of it reached the removed provider"))
            .collect()
    }

    /// One line: `clean`, or the patterns; then the holders that must be refused.
    pub fn describe(&self) -> String {
        let list = |ps: &[TitlePattern]| ps.iter().map(TitlePattern::text).collect::<Vec<_>>().join(" | ");
        let titles = match (self.titles.is_empty(), self.maybe.is_empty()) {
            (true, true) => "clean".into(),
            (false, true) => list(&self.titles),
            (true, false) => format!("clean, maybe {}", list(&self.maybe)),
            _ => format!("{}, maybe {}", list(&self.titles), list(&self.maybe)),
        };
        if self.refused.is_empty() {
            titles
        } else {
            format!("{titles}; refused: {}", self.refused.join(", "))
        }
    }
}

impl Serialize for Expectation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.refused.is_empty() {
            if self.is_clean() {
                return s.serialize_str("clean");
            }
            if self.maybe.is_empty() {
                return self.titles.serialize(s);
            }
        }
        let mut map = s.serialize_map(None)?;
        for (key, list) in [("titles", &self.titles), ("maybe", &self.maybe)] {
            if !list.is_empty() {
                map.serialize_entry(key, list)?;
            }
        }
        if !self.refused.is_empty() {
            map.serialize_entry("refused", &self.refused)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Expectation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = Expectation;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTATION_FORMS)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Expectation, E> {
                if v == "clean" {
                    Ok(Expectation::default())
                } else {
                    Err(E::custom(format!("{v:?} is not {EXPECTATION_FORMS} (one title is a list of one: [{v:?}])")))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Expectation, A::Error> {
                let titles = pattern_list(seq)?;
                if titles.is_empty() {
                    return Err(serde::de::Error::custom("lists no title; write `clean` for none"));
                }
                Ok(Expectation { titles, ..Expectation::default() })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Expectation, A::Error> {
                #[derive(Deserialize)]
                #[serde(rename_all = "snake_case")]
                enum Key {
                    Titles,
                    Maybe,
                    Refused,
                }
                /// One `titles:` or `maybe:` list, read with `pattern_list`.
                struct Patterns(Vec<TitlePattern>);
                impl<'de> Deserialize<'de> for Patterns {
                    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                        struct Seq;
                        impl<'de> serde::de::Visitor<'de> for Seq {
                            type Value = Patterns;
                            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                                f.write_str("a list of title patterns")
                            }
                            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Patterns, A::Error> {
                                pattern_list(seq).map(Patterns)
                            }
                        }
                        d.deserialize_seq(Seq)
                    }
                }
                let (mut titles, mut maybe, mut refused) = (None, None, None);
                let twice = |name: &str| serde::de::Error::custom(format!("`{name}` given twice"));
                while let Some(key) = map.next_key::<Key>()? {
                    let (slot, name) = match key {
                        Key::Titles => (&mut titles, "titles"),
                        Key::Maybe => (&mut maybe, "maybe"),
                        Key::Refused => {
                            if refused.is_some() {
                                return Err(twice("refused"));
                            }
                            let names: Vec<String> = map.next_value()?;
                            if names.is_empty() {
                                return Err(serde::de::Error::custom("`refused` lists no holder; leave it out for none"));
                            }
                            if let Some(name) = names.iter().enumerate().find_map(|(i, n)| names[..i].contains(n).then_some(n)) {
                                return Err(serde::de::Error::custom(format!("`refused` lists {name:?} twice")));
                            }
                            refused = Some(names);
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(twice(name));
                    }
                    *slot = Some(map.next_value::<Patterns>()?.0);
                }
                Ok(Expectation {
                    titles: titles.unwrap_or_default(),
                    maybe: maybe.unwrap_or_default(),
                    refused: refused.unwrap_or_default(),
                })
            }
        }
        d.deserialize_any(Form)
    }
}

/// A list of title patterns; a pattern listed twice is an error at its place.
fn pattern_list<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<Vec<TitlePattern>, A::Error> {
    let mut list: Vec<TitlePattern> = Vec::new();
    while let Some(pattern) = seq.next_element::<TitlePattern>()? {
        if list.contains(&pattern) {
            return Err(serde::de::Error::custom(format!("lists {:?} twice", pattern.text())));
        }
        list.push(pattern);
    }
    Ok(list)
}

/// A crash title, exact or as a glob (`globset` syntax, matched against the whole title).
#[derive(Debug, Clone)]
pub struct TitlePattern {
    glob: globset::Glob,
    matcher: globset::GlobMatcher,
}

impl TitlePattern {
    pub fn new(text: &str) -> Result<TitlePattern, String> {
        if text.trim().is_empty() {
            return Err("an empty title pattern matches no title".into());
        }
        // Without a separator, `*` spans `/` too: titles are not paths.
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("bad title pattern {text:?}: {}", e.kind()))?;
        Ok(TitlePattern { matcher: glob.compile_matcher(), glob })
    }

    pub fn text(&self) -> &str {
        self.glob.glob()
    }

    pub fn matches(&self, title: &str) -> bool {
        self.matcher.is_match(title)
    }
}

impl PartialEq for TitlePattern {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl Serialize for TitlePattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text())
    }
}

impl<'de> Deserialize<'de> for TitlePattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let pattern = TitlePattern::new(&text).map_err(serde::de::Error::custom)?;
        STUCK_TITLES.with_borrow(|stuck| match stuck {
            Some(stuck) => pattern.check_stuck(stuck).map_err(serde::de::Error::custom),
            None => Ok(()),
        })?;
        Ok(pattern)
    }
}

thread_local! {
    /// While [`Scenario::parse`] reads a file a second time to locate a stuck-unplug pattern
    /// that fits no unplug of it: the titles its unplugs can file when stuck. The steps come
    /// after `expect:` in a file, so the first read cannot know them.
    static STUCK_TITLES: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

impl TitlePattern {
    /// A pattern written for the title a stuck unplug files (`unplug stuck: no DEVICE_DELETED
    /// for ID`) must match one of `stuck`, the titles this scenario's unplugs can file.
    fn check_stuck(&self, stuck: &[String]) -> Result<(), String> {
        if !self.text().starts_with(report::synthetic::UNPLUG_STUCK) || stuck.iter().any(|t| self.matches(t)) {
            return Ok(());
        }
        if stuck.is_empty() {
            return Err(format!("{:?} expects a stuck unplug, but no step removes a device (only removals wait for DEVICE_DELETED; unbind does not)", self.text()));
        }
        let titles = stuck.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ");
        Err(format!("{:?} matches no unplug this scenario can leave stuck; their titles are {titles}", self.text()))
    }
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
    /// A step that runs on some kernel variants only; elsewhere it is recorded as not on this
    /// kernel (its draws are made everywhere, so the schedule is the same).
    Only(Only),
}

/// `only: { kernels: [...], step: {...} }`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Only {
    #[serde(deserialize_with = "kernel_list")]
    pub kernels: Vec<KernelVariant>,
    pub step: Box<Step>,
}

impl Step {
    /// Whether the step leaves devices and holders as they were, so running it on some kernel
    /// variants only (`only`) keeps every variant in the same state.
    fn changes_no_state(&self) -> bool {
        matches!(
            self,
            Step::Exec(_) | Step::Write { .. } | Step::Mkdir(_) | Step::Rmdir(_) | Step::WaitConsole(_) | Step::Delay(_) | Step::Observe
        )
    }
}

/// A holder as written: its name in later steps, its kind, the provider it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    pub name: String,
    pub kind: agent::HoldKind,
    /// The plugged provider's id (`cp2112` or `gpio-sim`).
    pub on: String,
}

/// Faults for an emulated device (a CP2112; a virtio-i2c adapter where it has the same thing:
/// see [`virtio_i2c_fault_misfit`]), as written in a scenario.
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
    /// A virtio-i2c adapter vanishes then (`surprise` only), that transfer unanswered.
    #[serde(default)]
    pub unplug_after_transfers: Option<u64>,
    /// How the device drops then: `disconnect` (usbredir device_disconnect) or `surprise`.
    #[serde(default)]
    pub unplug_how: Option<UnplugHow>,
}

/// Why a fault does not fit a virtio-i2c adapter, if it does not: it has one error status (any
/// `transfer_error` fails the message), no BUSY status and no control endpoint, and drops
/// mid-transfer only by vanishing (its backend goes away, `surprise`). Checked for scenarios on
/// load and for any schedule when the fault is set.
pub fn virtio_i2c_fault_misfit(busy: u32, stall_ep0: bool, unplug_after_transfers: Option<u64>, unplug_how: Option<UnplugHow>) -> Option<String> {
    if busy > 0 || stall_ep0 {
        return Some("a virtio-i2c adapter has no BUSY status and no control endpoint (busy and stall_ep0 are CP2112 faults)".into());
    }
    if unplug_after_transfers.is_some() && unplug_how != Some(UnplugHow::Surprise) {
        return Some("a virtio-i2c adapter drops mid-transfer only by vanishing: unplug_how: surprise".into());
    }
    None
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
    /// Parsed, but not a scenario that can run; located at the value at fault.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid { path: PathBuf, line: usize, column: usize, message: String },
}

/// One step of the way from a YAML document's root to one of its values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

/// Where the value at `path` starts in `text` (1-based line and column), found by
/// deserializing `text` once more with a probe that fails on arrival there: the YAML reader
/// attaches its own position to that error. `(1, 1)` if the value is not in the text.
fn locate(text: &str, path: &[Seg]) -> (usize, usize) {
    use serde::de::{DeserializeSeed, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};

    /// Walks `0` down; fails at its end.
    struct Probe<'p>(&'p [Seg]);

    impl<'de> DeserializeSeed<'de> for Probe<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Probe<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // Only reached at the end of the path: every `visit_*` left to its default fails.
            f.write_str("the located value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Some((Seg::Key(wanted), rest)) = self.0.split_first() else {
                return Err(A::Error::custom("the located value"));
            };
            while let Some(key) = map.next_key::<serde_yaml_ng::Value>()? {
                if key.as_str() == Some(*wanted) {
                    return map.next_value_seed(Probe(rest));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let Some((Seg::Index(wanted), rest)) = self.0.split_first() else {
                return Err(A::Error::custom("the located value"));
            };
            for _ in 0..*wanted {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
            }
            seq.next_element_seed(Probe(rest)).map(drop)
        }
    }

    match Probe(path).deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
        Err(e) => e.location().map_or((1, 1), |l| (l.line(), l.column())),
        Ok(()) => (1, 1),
    }
}

impl Scenario {
    /// Whether this scenario runs on `kernel`.
    pub fn applies_to(&self, kernel: KernelVariant) -> bool {
        self.kernels.contains(&kernel)
    }

    /// Why this scenario does not run on `kernel`, built without the options in `absent`
    /// (`applies to: resmgr`, `requires rust: CONFIG_RUST is absent ...`), or `None` if it does.
    pub fn skip_reason(&self, kernel: KernelVariant, absent: &[crate::build::kernel::Absent]) -> Option<String> {
        if !self.applies_to(kernel) {
            return Some(format!("applies to: {}", self.kernel_names()));
        }
        crate::drive::requires::unmet(&crate::drive::requires::of_scenario(self), absent)
    }

    fn kernel_names(&self) -> String {
        self.kernels.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
    }

    /// What a run on `kernel` must and may show (`clean` where `expect:` does not name it).
    pub fn expectation(&self, kernel: KernelVariant) -> Expectation {
        self.expect.get(&kernel).cloned().unwrap_or_default()
    }

    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let bytes = std::fs::read(path).map_err(|source| ScenarioError::Io { path: path.into(), source })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            // `valid` is UTF-8 up to there: count characters, not bytes, for the column.
            let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
            let column = String::from_utf8_lossy(&valid[line_start..]).chars().count() + 1;
            ScenarioError::Syntax { path: path.into(), line, column, message: "not UTF-8 text".into() }
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Scenario, ScenarioError> {
        let read = || {
            serde_yaml_ng::from_str::<Scenario>(text).map_err(|e| {
                let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
                // The location is ours, in front: not again at the end of the message.
                let message = e.to_string();
                let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m).to_string();
                ScenarioError::Syntax { path: origin.into(), line, column, message }
            })
        };
        let scenario = read()?;
        scenario.validate().map_err(|(at, message)| {
            let (line, column) = locate(text, &at);
            ScenarioError::Invalid { path: origin.into(), line, column, message }
        })?;
        let stuck = scenario.stuck_titles();
        let patterns = || scenario.expect.values().flat_map(|e| e.titles.iter().chain(&e.maybe));
        if let Some(misfit) = patterns().find_map(|p| p.check_stuck(&stuck).err()) {
            // Read again, knowing the titles, so the error points at the pattern.
            STUCK_TITLES.set(Some(stuck));
            let again = read();
            STUCK_TITLES.set(None);
            again?;
            let (line, column) = locate(text, &[Seg::Key("expect")]);
            return Err(ScenarioError::Invalid { path: origin.into(), line, column, message: format!("expect: {misfit}") });
        }
        Ok(scenario)
    }

    /// The titles a stuck unplug of this scenario files: one per device a step removes (any
    /// method but `unbind`, which waits for no `DEVICE_DELETED`).
    fn stuck_titles(&self) -> Vec<String> {
        let mut titles: Vec<String> = Vec::new();
        for step in self.setup.iter().chain(&self.steps) {
            if let Step::Unplug(u) = step {
                if u.how.choices().iter().any(|how| *how != UnplugHow::Unbind) {
                    let title = report::synthetic::unplug_stuck(&u.id, Duration::ZERO).title;
                    if !titles.contains(&title) {
                        titles.push(title);
                    }
                }
            }
        }
        titles
    }

    /// Checks what the types do not; an error names the value at fault (for [`locate`]).
    fn validate(&self) -> Result<(), (Vec<Seg>, String)> {
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err((vec![Seg::Key("name")], format!("name {:?} must be non-empty and use only letters, digits, '-' and '_'", self.name)));
        }
        if self.steps.is_empty() {
            return Err((vec![Seg::Key("steps")], "a scenario needs at least one step".into()));
        }
        if self.iterations == 0 || self.iterations > 100_000 {
            return Err((vec![Seg::Key("iterations")], format!("iterations must be between 1 and 100000, not {}", self.iterations)));
        }
        if let Some(kernel) = self.expect.keys().find(|k| !self.applies_to(**k)) {
            return Err((
                vec![Seg::Key("expect"), Seg::Key(kernel.name())],
                format!("expect names {kernel}, which `kernels:` leaves out (it applies to {})", self.kernel_names()),
            ));
        }
        let mut state = StepState::default();
        let all = self.setup.iter().enumerate().map(|(i, s)| ("setup", i, s)).chain(self.steps.iter().enumerate().map(|(i, s)| ("steps", i, s)));
        for (section, index, step) in all {
            let at = format!("{section} step {}", index + 1);
            let step = match step {
                Step::Only(only) => {
                    if !only.step.changes_no_state() {
                        return Err((vec![Seg::Key(section), Seg::Index(index)], format!("{at}: `only` can limit exec, write, mkdir, rmdir, wait_console, delay and observe steps: anything else would leave the kernels in different states")));
                    }
                    if let Some(kernel) = only.kernels.iter().find(|k| !self.applies_to(**k)) {
                        return Err((vec![Seg::Key(section), Seg::Index(index)], format!("{at}: `only` names {kernel}, which `kernels:` leaves out (it applies to {})", self.kernel_names())));
                    }
                    &*only.step
                }
                step => step,
            };
            state.apply(step).map_err(|message| (vec![Seg::Key(section), Seg::Index(index)], format!("{at}: {message}")))?;
        }
        let StepState { plugged, held, .. } = state;
        let holds: Vec<&str> = self
            .setup
            .iter()
            .chain(&self.steps)
            .filter_map(|s| match s {
                Step::Hold(h) => Some(h.name.as_str()),
                _ => None,
            })
            .collect();
        for (kernel, expect) in &self.expect {
            if let Some(name) = expect.refused.iter().find(|n| !holds.contains(&n.as_str())) {
                return Err((
                    vec![Seg::Key("expect"), Seg::Key(kernel.name()), Seg::Key("refused")],
                    format!("expect.{kernel}.refused names {name:?}, which no hold step holds (holders: {})", holds.join(", ")),
                ));
            }
        }
        // Steps repeat, so whatever they plug they must also unplug.
        if self.iterations > 1 {
            let at = |i: usize| vec![Seg::Key("steps"), Seg::Index(i)];
            let plugged_in_steps = self.steps.iter().enumerate().find_map(|(i, s)| match s {
                Step::Plug(p) if plugged.contains(&p.id.as_str()) => Some((i, p.id.as_str())),
                _ => None,
            });
            if let Some((i, id)) = plugged_in_steps {
                return Err((at(i), format!("steps plug {id:?} without unplugging it, so iteration 2 would plug it twice")));
            }
            let held_in_steps = self.steps.iter().enumerate().find_map(|(i, s)| match s {
                Step::Hold(h) if held.contains(&h.name.as_str()) => Some((i, h.name.as_str())),
                _ => None,
            });
            if let Some((i, name)) = held_in_steps {
                return Err((at(i), format!("steps hold {name:?} without releasing it, so iteration 2 would hold it twice")));
            }
        }
        Ok(())
    }
}

/// What the steps so far left plugged, held and unbound: a plug id must exist before it is
/// unplugged and stay unique while plugged; the same for holder names between hold and release.
#[derive(Default)]
struct StepState<'a> {
    plugged: Vec<&'a str>,
    /// The device each plugged id is.
    device: BTreeMap<&'a str, &'a str>,
    held: Vec<&'a str>,
    /// Plugged devices whose driver an `unbind` took away (still plugged, no nodes).
    unbound: Vec<&'a str>,
}

impl<'a> StepState<'a> {
    /// The next step, or why it cannot come now.
    fn apply(&mut self, step: &'a Step) -> Result<(), String> {
        let StepState { plugged, device, held, unbound } = self;
        match step {
            Step::Plug(p) => {
                if plugged.contains(&p.id.as_str()) {
                    return Err(format!("id {:?} is already plugged", p.id));
                }
                plugged.push(&p.id);
                device.insert(&p.id, &p.device);
            }
            Step::Unplug(u) => {
                let Some(pos) = plugged.iter().position(|id| *id == u.id) else {
                    return Err(format!("unplug of {:?}, which no earlier step plugged", u.id));
                };
                let choices = u.how.choices();
                if choices.is_empty() {
                    return Err("`how` lists no unplug method".into());
                }
                if choices.contains(&UnplugHow::Unbind) {
                    // An unbind leaves the device plugged: it cannot be one draw among removals.
                    if choices.len() > 1 {
                        return Err("`unbind` keeps the device plugged, so it cannot be a choice among unplug methods".into());
                    }
                    if unbound.contains(&u.id.as_str()) {
                        return Err(format!("{:?}'s driver is already unbound", u.id));
                    }
                    unbound.push(&u.id);
                } else {
                    plugged.remove(pos);
                    unbound.retain(|id| *id != u.id);
                }
            }
            Step::Bind(id) => {
                let Some(pos) = unbound.iter().position(|u| u == id) else {
                    return Err(format!("bind of {id:?}, whose driver no earlier step unbound"));
                };
                unbound.remove(pos);
            }
            Step::Exec(e) if e.argv.is_empty() => return Err("exec with an empty argv".into()),
            Step::Hold(h) => {
                if held.contains(&h.name.as_str()) {
                    return Err(format!("holder {:?} is already held", h.name));
                }
                if !plugged.contains(&h.on.as_str()) {
                    return Err(format!("hold on {:?}, which is not plugged at that point", h.on));
                }
                if unbound.contains(&h.on.as_str()) {
                    return Err(format!("hold on {:?}, whose driver is unbound at that point", h.on));
                }
                held.push(&h.name);
            }
            Step::Release(name) => {
                let Some(pos) = held.iter().position(|n| n == name) else {
                    return Err(format!("release of {name:?}, which no earlier step holds"));
                };
                held.remove(pos);
            }
            Step::Fault(f) => {
                if !plugged.contains(&f.id.as_str()) {
                    return Err(format!("fault for {:?}, which is not plugged at that point", f.id));
                }
                if f.unplug_after_transfers == Some(0) {
                    return Err("unplug_after_transfers counts from 1 (the next transfer)".into());
                }
                if matches!(f.unplug_how, Some(UnplugHow::Graceful | UnplugHow::Unbind)) {
                    return Err("a fault unplug is `disconnect` or `surprise`; graceful and unbind are steps of their own".into());
                }
                if device.get(f.id.as_str()) == Some(&crate::devices::testbed::VIRTIO_I2C) {
                    if let Some(misfit) = virtio_i2c_fault_misfit(f.busy, f.stall_ep0, f.unplug_after_transfers, f.unplug_how) {
                        return Err(format!("fault for {:?}: {misfit}", f.id));
                    }
                }
            }
            _ => {}
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

/// Whether `text` matches the glob `pattern` (`*`, `?`, `[...]`, `{a,b}`; globset's syntax). A
/// pattern globset rejects matches nothing.
fn glob_match(pattern: &str, text: &str) -> bool {
    globset::Glob::new(pattern).is_ok_and(|g| g.compile_matcher().is_match(text))
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
    fn kernels_default_to_the_6_12_variants() {
        let s = Scenario::parse(GOOD, Path::new("good.yaml")).unwrap();
        assert_eq!(s.kernels, KernelVariant::DEFAULT);
        assert_eq!(s.skip_reason(KernelVariant::Vanilla61, &[]).as_deref(), Some("applies to: vanilla, resmgr"));
        assert!(KernelVariant::DEFAULT.iter().all(|k| s.applies_to(*k) && s.skip_reason(*k, &[]).is_none()));
        let s = Scenario::parse("name: x\nkernels: [resmgr]\nsteps:\n  - observe\n", Path::new("k.yaml")).unwrap();
        assert_eq!(s.kernels, [KernelVariant::Resmgr]);
        assert!(s.applies_to(KernelVariant::Resmgr));
        assert_eq!(s.skip_reason(KernelVariant::Vanilla, &[]).as_deref(), Some("applies to: resmgr"));
        let s = Scenario::parse("name: x\nkernels:\n  - resmgr\n  - vanilla\nsteps:\n  - observe\n", Path::new("k.yaml")).unwrap();
        assert_eq!(s.kernels, [KernelVariant::Resmgr, KernelVariant::Vanilla]);
    }

    /// `kernels:` errors name file, line and column (of the bad value) and the known variants.
    #[test]
    fn kernels_errors_are_located() {
        for (text, expect) in [
            // An unknown variant: the known ones are listed.
            ("name: x\nkernels: [resmgr, mainline]\nsteps:\n  - observe\n", "k.yaml:2:19: kernels[1]: unknown variant `mainline`, expected one of `vanilla`, `resmgr`, `vanilla-6.1`"),
            ("name: x\nkernels:\n  - Vanilla\nsteps:\n  - observe\n", "k.yaml:3:5: kernels[0]: unknown variant `Vanilla`, expected one of `vanilla`, `resmgr`, `vanilla-6.1`"),
            // The CLI's `both` is a choice of runs, not a variant.
            ("name: x\nkernels: [both]\nsteps:\n  - observe\n", "k.yaml:2:11: kernels[0]: unknown variant `both`"),
            // Wrong types.
            ("name: x\nkernels: resmgr\nsteps:\n  - observe\n", "k.yaml:2:10: kernels: invalid type: string \"resmgr\", expected a sequence of kernel variants (vanilla, resmgr, vanilla-6.1)"),
            ("name: x\nkernels: { resmgr: true }\nsteps:\n  - observe\n", "k.yaml:2:10: kernels: invalid type: map, expected a sequence"),
            ("name: x\nkernels: [3]\nsteps:\n  - observe\n", "k.yaml:2:11: kernels[0]: unknown variant `3`, expected one of `vanilla`, `resmgr`, `vanilla-6.1`"),
            ("name: x\nkernels: [[resmgr]]\nsteps:\n  - observe\n", "k.yaml:2:11: kernels[0]: invalid type: sequence, expected"),
            // Empty or repeated lists.
            ("name: x\nkernels: []\nsteps:\n  - observe\n", "k.yaml:2:10: kernels: lists no kernel variant; leave the field out for the default ones (vanilla, resmgr)"),
            ("name: x\nkernels: [resmgr, resmgr]\nsteps:\n  - observe\n", "k.yaml:2:10: kernels: lists resmgr twice"),
        ] {
            let err = Scenario::parse(text, Path::new("k.yaml")).unwrap_err().to_string();
            assert!(err.contains(expect), "{text:?} gave {err}");
            assert!(matches!(err.split(':').nth(1).map(str::parse::<usize>), Some(Ok(1..))), "{text:?}: no line in {err}");
        }
    }

    fn expectation(yaml: &str) -> Expectation {
        let text = format!("name: x\nexpect:\n  vanilla: {yaml}\nsteps:\n  - observe\n");
        Scenario::parse(&text, Path::new("e.yaml")).unwrap_or_else(|e| panic!("{e}")).expectation(KernelVariant::Vanilla)
    }

    /// Every written form; a variant `expect` does not name expects clean.
    #[test]
    fn expectations_parse_in_every_form() {
        let s = Scenario::parse("name: x\nexpect:\n  vanilla: clean\nsteps:\n  - observe\n", Path::new("e.yaml")).unwrap();
        assert!(s.expectation(KernelVariant::Vanilla).is_clean());
        assert!(s.expectation(KernelVariant::Resmgr).is_clean(), "not named: clean");
        let list = expectation("[\"KASAN: slab-use-after-free Read in at24_read\", \"INFO: task hung in *\"]");
        assert_eq!((list.titles.len(), list.maybe.len()), (2, 0));
        assert_eq!(list.describe(), "KASAN: slab-use-after-free Read in at24_read | INFO: task hung in *");
        let long = expectation("{ titles: [\"a\"], maybe: [\"b*\", \"c\"] }");
        assert_eq!(long.describe(), "a, maybe b* | c");
        let maybe_only = expectation("{ maybe: [\"INFO: task hung in cp2112_remove\"] }");
        assert_eq!(maybe_only.describe(), "clean, maybe INFO: task hung in cp2112_remove");
        // Written back, each reads as itself (schedule.json carries them).
        for e in [Expectation::default(), list, long, maybe_only] {
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Expectation>(&json).unwrap(), e, "{json}");
        }
        assert_eq!(serde_json::to_string(&Expectation::default()).unwrap(), "\"clean\"");
    }

    /// `refused` names holders the scenario's hold steps hold, each once; it is no title, so
    /// the run can still be clean, and it reads back as itself.
    #[test]
    fn refused_names_holders_the_steps_hold() {
        let text = |refused: &str| {
            format!("name: x\nexpect:\n  vanilla: {{ refused: {refused} }}\nsteps:\n  - plug: {{ device: gpio-sim, id: g }}\n  - hold: {{ name: h, kind: gpio-cdev, on: g }}\n  - unplug: {{ id: g, how: graceful }}\n")
        };
        let e = Scenario::parse(&text("[h]"), Path::new("r.yaml")).unwrap().expectation(KernelVariant::Vanilla);
        assert!(e.is_clean());
        assert_eq!(e.describe(), "clean; refused: h");
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"refused":["h"]}"#);
        assert_eq!(serde_json::from_str::<Expectation>(&json).unwrap(), e);
        for (refused, needle) in [
            ("[g]", "r.yaml:3:"),
            ("[g]", "expect.vanilla.refused names \"g\", which no hold step holds (holders: h)"),
            ("[]", "`refused` lists no holder; leave it out for none"),
            ("[h, h]", "`refused` lists \"h\" twice"),
            ("h", "r.yaml:3:23: expect.vanilla.refused: invalid type: string \"h\", expected a sequence"),
        ] {
            let err = Scenario::parse(&text(refused), Path::new("r.yaml")).unwrap_err().to_string();
            assert!(err.contains(needle), "{refused}: {err}");
        }
    }

    /// Each `titles` pattern must match some title; every title must be allowed by `titles`
    /// or `maybe`; exact text and globs alike, counts never matter.
    #[test]
    fn expectations_match_titles() {
        let uaf = "KASAN: slab-use-after-free Read in at24_read";
        let e = expectation(&format!("{{ titles: [\"{uaf}\"], maybe: [\"KASAN: slab-use-after-free {{Read,Write}} in *regmap_*\", \"KASAN: use-after-free Read in usbhid_output_report\"] }}"));
        assert_eq!(e.mismatches(&[uaf], &[]), Vec::<String>::new());
        assert_eq!(e.mismatches(&[uaf, "KASAN: slab-use-after-free Write in _regmap_raw_read", "KASAN: use-after-free Read in usbhid_output_report"], &[]), Vec::<String>::new());
        assert_eq!(
            e.mismatches(&["KASAN: slab-use-after-free Read in regmap_readable", "WARNING in free_irq"], &[]),
            ["expected title missing: KASAN: slab-use-after-free Read in at24_read", "unexpected title: WARNING in free_irq"]
        );
        // A required title the kernel printed after another report on the same freed object
        // (a follow-on of that bug) was still seen; a follow-on is never unexpected on its own.
        let write_first = "KASAN: slab-use-after-free Read in _regmap_raw_write_impl";
        assert_eq!(e.mismatches(&[write_first], &[uaf, "WARNING in free_irq"]), Vec::<String>::new());
        assert_eq!(e.mismatches(&[write_first], &[]), [format!("expected title missing: {uaf}")]);
        // Exact text is exact: no prefix or substring matches, and `/` is an ordinary character.
        let exact = expectation(&format!("[\"{uaf}\"]"));
        assert_eq!(exact.mismatches(&["KASAN: slab-use-after-free Read in at24_read_x"], &[]).len(), 2);
        assert!(expectation("[\"a*c\"]").mismatches(&["a/b/c"], &[]).is_empty());
        // clean: no title at all; maybe only: none or those.
        let clean = Expectation::default();
        assert_eq!(clean.mismatches(&[uaf], &[]), [format!("unexpected title: {uaf}")]);
        assert!(clean.mismatches(&[], &[]).is_empty());
        let maybe = expectation("{ maybe: [\"INFO: task hung in *\"] }");
        assert!(maybe.mismatches(&[], &[]).is_empty() && maybe.mismatches(&["INFO: task hung in cp2112_remove"], &[]).is_empty());
        // A literal glob character is written as a class.
        assert!(expectation("[\"BUG: bad [[]page] state\"]").mismatches(&["BUG: bad [page] state"], &[]).is_empty());
    }

    /// `expect:` errors name file, line and column (of the bad value) like any other field's.
    #[test]
    fn expect_errors_are_located() {
        let at = |expect: &str| format!("name: x\nexpect:\n{expect}\nsteps:\n  - observe\n");
        for (text, want) in [
            (at("  mainline: clean"), "e.yaml:3:3: expect: unknown variant `mainline`, expected one of `vanilla`, `resmgr`, `vanilla-6.1`"),
            (at("  both: clean"), "e.yaml:3:3: expect: unknown variant `both`"),
            (at("  vanilla: clean\n  vanilla: clean"), "e.yaml:3:3: expect: expects vanilla twice"),
            (at("  vanilla: [\"KASAN: {Read in at24_read\"]"), "e.yaml:3:12: expect.vanilla: bad title pattern \"KASAN: {Read in at24_read\": unclosed alternate group; missing '}' (maybe escape '{' with '[{]'?)"),
            (at("  vanilla: [\"[unclosed\"]"), "e.yaml:3:12: expect.vanilla: bad title pattern \"[unclosed\": unclosed character class"),
            (at("  vanilla: [\"\"]"), "e.yaml:3:12: expect.vanilla: an empty title pattern matches no title"),
            (at("  vanilla: dirty"), "e.yaml:3:12: expect.vanilla: \"dirty\" is not `clean`, a list of title patterns, or { titles: [...], maybe: [...], refused: [holder, ...] }"),
            (at("  vanilla: KASAN: x"), "e.yaml:3:"),
            (at("  vanilla: 3"), "e.yaml:3:12: expect.vanilla: invalid type: integer `3`, expected `clean`, a list of title patterns"),
            (at("  vanilla: []"), "e.yaml:3:12: expect.vanilla: lists no title; write `clean` for none"),
            (at("  vanilla: [a, a]"), "e.yaml:3:12: expect.vanilla: lists \"a\" twice"),
            (at("  vanilla: [[a]]"), "e.yaml:3:13: expect.vanilla[0]: invalid type: sequence, expected a string"),
            (at("  vanilla: { titles: [a], must: [b] }"), "e.yaml:3:27: expect.vanilla: unknown variant `must`, expected one of `titles`, `maybe`, `refused`"),
            (at("  vanilla: { titles: a }"), "e.yaml:3:22: expect.vanilla.titles: invalid type: string \"a\", expected a list of title patterns"),
            (at("  vanilla: { maybe: [a], maybe: [b] }"), "e.yaml:3:"),
            (at("  [vanilla]"), "e.yaml:3:3: expect: invalid type: sequence, expected a map from kernel variant (vanilla, resmgr, vanilla-6.1) to its expectation"),
            ("name: x\nexpect: clean\nsteps:\n  - observe\n".to_string(), "e.yaml:2:9: expect: invalid type: string \"clean\", expected a map from kernel variant"),
        ] {
            let err = Scenario::parse(&text, Path::new("e.yaml")).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text:?} gave {err}");
            assert!(matches!(err.split(':').nth(1).map(str::parse::<usize>), Some(Ok(1..))), "{text:?}: no line in {err}");
        }
        // Consistency with `kernels:` is checked after parsing, located at the value at fault.
        let err = Scenario::parse("name: x\nkernels: [resmgr]\nexpect:\n  vanilla: clean\nsteps:\n  - observe\n", Path::new("e.yaml")).unwrap_err().to_string();
        assert_eq!(err, "e.yaml:4:12: expect names vanilla, which `kernels:` leaves out (it applies to resmgr)");
    }

    /// A pattern for a stuck unplug's title (`unplug stuck: ...`) must fit a device the scenario
    /// removes; one that fits none is an error at the pattern.
    #[test]
    fn expected_stuck_unplugs_must_fit_a_removal_of_the_scenario() {
        let scenario = |expect: &str, how: &str| {
            format!("name: x\nexpect:\n  vanilla:\n{expect}\nsteps:\n  - plug: {{ device: virtio-i2c, id: vi2c }}\n  - unplug: {{ id: vi2c, how: {how} }}\n")
        };
        for fits in [
            "    - \"unplug stuck: no DEVICE_DELETED for vi2c\"",
            "    - \"unplug stuck: *\"",
            "    titles: [\"INFO: task hung in *\"]\n    maybe: [\"unplug stuck: no DEVICE_DELETED for vi2c\"]",
        ] {
            let text = scenario(fits, "[graceful, surprise]");
            let s = Scenario::parse(&text, Path::new("s.yaml")).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert!(s.expectation(KernelVariant::Vanilla).allows("unplug stuck: no DEVICE_DELETED for vi2c"));
        }
        for (expect, how, want) in [
            (
                "    - \"INFO: task hung in *\"\n    - \"unplug stuck: no DEVICE_DELETED for bridge\"",
                "graceful",
                "s.yaml:4:5: expect.vanilla: \"unplug stuck: no DEVICE_DELETED for bridge\" matches no unplug this scenario can leave stuck; their titles are \"unplug stuck: no DEVICE_DELETED for vi2c\"",
            ),
            (
                "    titles: [\"INFO: task hung in *\"]\n    maybe: [\"unplug stuck: no DEVICE_DELETED for vi2c\"]",
                "unbind",
                "s.yaml:5:12: expect.vanilla.maybe: \"unplug stuck: no DEVICE_DELETED for vi2c\" expects a stuck unplug, but no step removes a device (only removals wait for DEVICE_DELETED; unbind does not)",
            ),
        ] {
            let err = Scenario::parse(&scenario(expect, how), Path::new("s.yaml")).unwrap_err().to_string();
            assert!(err.starts_with(want), "{expect:?}: {err}");
        }
        // The second read leaves nothing behind: the next file parses on its own terms.
        assert!(Scenario::parse(&scenario("    - \"unplug stuck: no DEVICE_DELETED for vi2c\"", "graceful"), Path::new("s.yaml")).is_ok());
    }

    /// `only` wraps a step for some variants; it must be a step that changes no state, for
    /// variants the scenario applies to; its errors are located like any step's.
    #[test]
    fn only_steps_parse_and_are_checked() {
        let s = Scenario::parse("name: x\nsteps:\n  - only:\n      kernels: [resmgr]\n      step: { exec: { argv: [true] } }\n", Path::new("o.yaml")).unwrap();
        let Step::Only(only) = &s.steps[0] else { panic!("{:?}", s.steps[0]) };
        assert_eq!(only.kernels, [KernelVariant::Resmgr]);
        assert!(matches!(*only.step, Step::Exec(_)));
        let step = |inner: &str| format!("name: x\nsteps:\n  - plug: {{ device: cp2112, id: b }}\n  - only: {{ kernels: [vanilla], step: {inner} }}\n");
        for (text, want) in [
            (step("{ wait_console: x }"), None),
            (step("{ delay: 1ms..5ms }"), None),
            (step("observe"), None),
            (step("{ unplug: { id: b } }"), Some("o.yaml:4:5: steps step 2: `only` can limit exec, write, mkdir, rmdir, wait_console, delay and observe steps")),
            (step("{ hold: { name: h, kind: hidraw, on: b } }"), Some("`only` can limit")),
            (step("{ only: { kernels: [vanilla], step: observe } }"), Some("`only` can limit")),
            (step("{ exec: { argv: [] } }"), Some("o.yaml:4:5: steps step 2: exec with an empty argv")),
            (step("{ frobnicate: 1 }"), Some("o.yaml:4:")),
            ("name: x\nsteps:\n  - only: { kernels: [mainline], step: observe }\n".into(), Some("o.yaml:3:23: steps[0].only.kernels[0]: unknown variant `mainline`")),
            ("name: x\nsteps:\n  - only: { kernels: [], step: observe }\n".into(), Some("o.yaml:3:22: steps[0].only.kernels: lists no kernel variant")),
            ("name: x\nsteps:\n  - only: { step: observe }\n".into(), Some("o.yaml:3:11: steps[0].only: missing field `kernels`")),
            ("name: x\nkernels: [resmgr]\nsteps:\n  - only: { kernels: [vanilla], step: observe }\n".into(), Some("`only` names vanilla, which `kernels:` leaves out")),
        ] {
            match (Scenario::parse(&text, Path::new("o.yaml")), want) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().starts_with(want) || e.to_string().contains(want), "{text:?} gave {e}"),
                (got, want) => panic!("{text:?}: {got:?}, wanted {want:?}"),
            }
        }
    }

    /// The shipped expectations accept what vanilla 6.12.117 showed with seed 348300539442052
    /// (each run's `crashes/*/title`), and want resmgr clean everywhere.
    #[test]
    fn shipped_expectations_accept_the_measured_vanilla_runs() {
        #[rustfmt::skip]
        let measured: &[(&str, &[&str])] = &[
            ("at24-unbind-under-holders", &["KASAN: slab-use-after-free Read in regmap_raw_write", "KASAN: slab-use-after-free Read in regmap_writeable_noinc", "KASAN: slab-use-after-free Read in regmap_raw_read", "KASAN: slab-use-after-free Read in regmap_bulk_write", "KASAN: slab-use-after-free Write in regmap_format_8", "KASAN: slab-use-after-free Read in at24_write", "KASAN: slab-use-after-free Read in regmap_volatile_range", "INFO: task hung in at24_read", "KASAN: slab-use-after-free Read in regmap_bulk_read", "KASAN: slab-use-after-free Read in debug_mutex_wake_waiter", "KASAN: slab-use-after-free Read in at24_read", "KASAN: slab-use-after-free Read in _regmap_raw_read", "KASAN: slab-use-after-free Read in regmap_get_device", "KASAN: slab-use-after-free Read in _regmap_raw_write", "KASAN: slab-use-after-free Read in _regmap_raw_write_impl", "KASAN: slab-use-after-free Read in regmap_volatile", "KASAN: slab-use-after-free Read in regmap_readable"]),
            ("cp2112-gpio-irq-release", &["BUG: scheduling while atomic in irq_shutdown", "possible deadlock in free_irq", "BUG: scheduling while atomic in syscall_exit_to_user_mode", "BUG: scheduling while atomic in do_task_dead", "BUG: scheduling while atomic in irqentry_exit_to_user_mode"]),
            ("cp2112-held-across-unplug", &["INFO: task hung in cp2112_remove"]),
            ("cp2112-i2c-dev-held", &["INFO: task hung in cp2112_remove"]),
            ("cp2112-nvmem-readers", &[]),
            ("cp2112-unbind-bind", &[]),
            ("cp2112-vanishes-mid-read", &[]),
            // Seed 4242.
            ("gpio-aggregator-provider-removed", &[]),
            // Seeds 4242 and 348300539442052.
            ("gpio-chip-watch-late-close", &[]),
            ("gpio-virtuser-irq-teardown", &["KASAN: slab-use-after-free Read in seq_vprintf"]),
            ("nvmem-holder-cp2112-unplug", &["KASAN: slab-use-after-free Read in regmap_raw_read", "KASAN: slab-use-after-free Read in i2c_transfer", "KASAN: slab-use-after-free Write in regmap_format_8", "KASAN: slab-use-after-free Read in regmap_volatile_range", "KASAN: slab-use-after-free Read in i2c_adapter_lock_bus", "KASAN: slab-use-after-free Read in regmap_bulk_read", "KASAN: slab-use-after-free Read in __i2c_transfer", "KASAN: slab-use-after-free Read in try_to_take_rt_mutex", "KASAN: slab-use-after-free Read in cp2112_i2c_xfer", "KASAN: slab-use-after-free Read in at24_read", "KASAN: slab-use-after-free Read in _regmap_raw_read", "KASAN: use-after-free Read in usbhid_output_report", "KASAN: slab-use-after-free Read in regmap_get_device", "KASAN: slab-use-after-free Read in regmap_volatile", "KASAN: slab-use-after-free Read in __rt_mutex_slowtrylock", "KASAN: slab-use-after-free Read in regmap_readable", "KASAN: slab-use-after-free Read in hid_hw_output_report"]),
            ("usb-kbd-cycle", &[]),
            // Seed 18022798347227.
            ("virtio-i2c-backend-stalls", &["INFO: task hung in kernfs_drain", "unplug stuck: no DEVICE_DELETED for vi2c"]),
            ("virtio-i2c-backend-vanishes", &["INFO: task hung in kernfs_drain", "unplug stuck: no DEVICE_DELETED for vi2c"]),
            ("virtio-i2c-dev-held", &["unplug stuck: no DEVICE_DELETED for vi2c", "INFO: task hung in virtio_i2c_remove"]),
            ("virtio-i2c-nvmem-holder-unplug", &["KASAN: slab-use-after-free Read in at24_read", "KASAN: slab-use-after-free Read in regmap_get_device", "KASAN: slab-use-after-free Read in regmap_bulk_read", "KASAN: slab-use-after-free Read in regmap_volatile_range", "KASAN: slab-use-after-free Read in regmap_volatile", "KASAN: slab-use-after-free Read in regmap_readable", "KASAN: slab-use-after-free Read in regmap_raw_read", "KASAN: slab-use-after-free Read in _regmap_raw_read", "KASAN: slab-use-after-free Write in regmap_format_8", "KASAN: slab-use-after-free Read in i2c_transfer", "KASAN: slab-use-after-free Read in i2c_adapter_lock_bus", "KASAN: slab-use-after-free Read in try_to_take_rt_mutex", "KASAN: slab-use-after-free Read in __rt_mutex_slowtrylock", "KASAN: slab-use-after-free Read in __i2c_transfer", "KASAN: slab-use-after-free Read in virtio_i2c_xfer"]),
        ];
        // i2c-virtio's wait without a timeout (kernel-facts B9) is outside the resmgr series:
        // a stalled or vanished backend still blocks the removal there.
        let resmgr_not_clean = ["virtio-i2c-backend-stalls", "virtio-i2c-backend-vanishes"];
        let dir = crate::paths::repo_root().join("scenarios");
        let mut buggy = Vec::new();
        for path in find(&dir, "*").unwrap() {
            let s = Scenario::load(&path).unwrap();
            assert!(resmgr_not_clean.contains(&s.name.as_str()) || s.expectation(KernelVariant::Resmgr).is_clean(), "{}", s.name);
            if !s.applies_to(KernelVariant::Vanilla) {
                continue;
            }
            let titles = measured.iter().find(|(n, _)| *n == s.name).unwrap_or_else(|| panic!("no measurement for {}", s.name)).1;
            assert_eq!(s.expectation(KernelVariant::Vanilla).mismatches(titles, &[]), Vec::<String>::new(), "{}", s.name);
            if !s.expectation(KernelVariant::Vanilla).titles.is_empty() {
                buggy.push(s.name);
            }
        }
        // The scenarios whose vanilla run must show a bug (a clean run misses the expectation).
        assert_eq!(buggy, ["at24-unbind-under-holders", "cp2112-gpio-irq-release", "cp2112-i2c-dev-held", "gpio-virtuser-irq-teardown", "nvmem-holder-cp2112-unplug", "virtio-i2c-backend-stalls", "virtio-i2c-backend-vanishes", "virtio-i2c-dev-held", "virtio-i2c-nvmem-holder-unplug"]);
    }

    /// The shipped vanilla-6.1 expectations accept what 6.1.192 showed with seed 4242 (each
    /// run's bug titles), every scenario that cannot run there says why, and the ground-truth
    /// scenarios (bugs upstream fixed after 6.1) want a report on 6.1 and none on 6.12.
    #[test]
    fn shipped_expectations_accept_the_measured_6_1_runs() {
        #[rustfmt::skip]
        let measured: &[(&str, &[&str])] = &[
            ("at24-unbind-under-holders", &["KASAN: use-after-free Read in at24_read", "KASAN: use-after-free Write in regmap_format_8", "INFO: task hung in at24_read"]),
            ("cp2112-i2c-dev-held", &["INFO: task hung in cp2112_remove"]),
            ("cp2112-nvmem-readers", &[]),
            ("cp2112-unbind-bind", &[]),
            // Once in 4 with CONFIG_PINCTRL: the debugfs listing raced the chip's removal.
            ("cp2112-unbind-bind", &["general protection fault in gpiod_get_direction"]),
            ("cp2112-vanishes-mid-read", &[]),
            ("gpio-aggregator-provider-removed", &["general protection fault in gpiod_get_array_value_complex", "general protection fault in gpiod_get_direction"]),
            // Seeds 4242 and 348300539442052, a build with CONFIG_PINCTRL (kernels/configs/6.1/).
            ("gpio-chip-watch-late-close", &["general protection fault in gpio_desc_to_lineinfo"]),
            ("nvmem-holder-cp2112-unplug", &["KASAN: use-after-free Read in at24_read", "KASAN: use-after-free Write in regmap_format_8", "KASAN: use-after-free Read in i2c_transfer", "KASAN: use-after-free Read in usbhid_output_report"]),
            ("nvmem-holder-cp2112-unplug", &["KASAN: use-after-free Read in at24_read", "KASAN: use-after-free Write in regmap_format_8", "KASAN: use-after-free Read in i2c_transfer", "KASAN: slab-out-of-bounds Read in usbhid_output_report", "KASAN: use-after-free Read in usbhid_output_report"]),
            ("usb-kbd-cycle", &[]),
            ("virtio-i2c-backend-stalls", &["INFO: task hung in kernfs_drain", "unplug stuck: no DEVICE_DELETED for vi2c"]),
            ("virtio-i2c-backend-vanishes", &["INFO: task hung in kernfs_drain", "unplug stuck: no DEVICE_DELETED for vi2c"]),
            ("virtio-i2c-dev-held", &["INFO: task hung in virtio_i2c_remove", "unplug stuck: no DEVICE_DELETED for vi2c"]),
            ("virtio-i2c-nvmem-holder-unplug", &["KASAN: use-after-free Read in at24_read", "KASAN: use-after-free Write in regmap_format_8", "KASAN: use-after-free Read in i2c_transfer", "data mismatch in c"]),
        ];
        let absent = crate::drive::requires::absent_by_kernel(&[KernelVariant::Vanilla61]).unwrap();
        let without = &absent[&KernelVariant::Vanilla61];
        let dir = crate::paths::repo_root().join("scenarios");
        let (mut ran, mut skipped) = (Vec::new(), Vec::new());
        for path in find(&dir, "*").unwrap() {
            let s = Scenario::load(&path).unwrap();
            if let Some(why) = s.skip_reason(KernelVariant::Vanilla61, without) {
                assert!(!s.expect.contains_key(&KernelVariant::Vanilla61), "{} expects something on vanilla-6.1 yet is skipped there: {why}", s.name);
                skipped.push(s.name);
                continue;
            }
            let runs: Vec<&[&str]> = measured.iter().filter(|(n, _)| *n == s.name).map(|(_, titles)| *titles).collect();
            assert!(!runs.is_empty(), "no 6.1 measurement for {}", s.name);
            assert!(s.expect.contains_key(&KernelVariant::Vanilla61), "{}: runs on vanilla-6.1 with no expectation written there", s.name);
            for titles in runs {
                assert_eq!(s.expectation(KernelVariant::Vanilla61).mismatches(titles, &[]), Vec::<String>::new(), "{}", s.name);
            }
            ran.push(s.name);
        }
        assert_eq!(skipped, ["cp2112-gpio-irq-release", "cp2112-held-across-unplug", "gpio-virtuser-irq-teardown", "resmgr-sample-unplug", "rust-nvmem-holder-unplug", "virtio-i2c-rust-nvmem-holder-unplug"]);
        assert_eq!(ran.len(), 13);
        for name in ["gpio-aggregator-provider-removed", "gpio-chip-watch-late-close"] {
            let ground_truth = Scenario::load(&dir.join(format!("{name}.yaml"))).unwrap();
            assert!(!ground_truth.expectation(KernelVariant::Vanilla61).titles.is_empty() && ground_truth.expectation(KernelVariant::Vanilla).is_clean(), "{name}");
        }
    }

    #[test]
    fn glob_selects_scenarios() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("usb-*", "usb-kbd-cycle"));
        assert!(glob_match("*kbd*", "usb-kbd-cycle"));
        assert!(glob_match("gpio-?im", "gpio-sim"));
        assert!(!glob_match("usb-*", "gpio-sim"));
        // Alternatives: two named scenarios in one --scenario.
        assert!(glob_match("{usb-kbd-cycle,gpio-sim}", "gpio-sim"));
        assert!(!glob_match("{usb-kbd-cycle,gpio-sim}", "gpio"));
        assert!(!glob_match("[", "["), "a bad glob matches nothing");
    }

    #[test]
    fn shipped_scenarios_all_parse() {
        let dir = crate::paths::repo_root().join("scenarios");
        for path in find(&dir, "*").unwrap() {
            Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
