//! Which reports are one bug.
//!
//! Titles alone split a use-after-free into many "crashes": under `kasan_multi_shot` KASAN
//! reports every access to freed memory, and one `cat` through an nvmem device whose at24
//! went away prints `KASAN: slab-use-after-free Read in at24_read`, then `... in
//! regmap_readable`, `... in regmap_volatile`, ... — one stale pointer followed along one
//! call chain. [`Bugs`] files such follow-on reports under the first report's bug:
//!
//! - **same title**: equal titles, or intersecting alternate titles (syzkaller's rule);
//! - **same freed object**: KASAN names the object a bad access hit ("The buggy address
//!   belongs to the object at ADDR which belongs to the cache NAME of size N") and prints
//!   where it was allocated and freed. The same cache, address and size with the same
//!   "Allocated by"/"Freed by" stacks is the same object, so the same bug, whichever
//!   function touched it. (Stacks are compared too because a freed slot is reused: the same
//!   address in another allocation is another object.)
//! - **one call chain, one teardown**: a stale pointer leads to more freed objects (at24's
//!   `at24_data` holds the regmap, both devm-freed when at24 unbinds). A report whose bad
//!   access happened inside the call of an earlier report's guilty function (its stack ends
//!   with the earlier report's whole stack from the guilty frame on, or the other way round),
//!   printed by the same task, on an object freed by the same task within the same call
//!   (one stack of where each was freed ends with the other's, below the free function
//!   itself), is a follow-on of that report's bug.
//!
//! Everything is read from a report's own text (bounded by the parser's report-length limit),
//! at most [`MAX_FRAMES`] frames per stack; [`Bugs`] keeps at most the number of titles it was
//! made with. No I/O.

use serde::{Deserialize, Serialize};

use crate::symbolize::parse_frame;

/// Frames kept per stack: KASAN's stack depot keeps at most 64.
pub const MAX_FRAMES: usize = 64;

/// Where a KASAN report says an object was allocated or freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    /// `Allocated by task 91:` → 91.
    pub task: Option<u32>,
    /// Function names, innermost first, without offsets.
    pub frames: Vec<String>,
}

/// The slab object a KASAN report's bad access hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreedObject {
    /// `kmalloc-256`.
    pub cache: String,
    pub address: u64,
    pub size: u64,
    pub allocated: Stack,
    pub freed: Stack,
}

/// The bad access of a KASAN report: which task made it, along which calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `by task cat/230` → `cat/230`.
    pub task: String,
    /// Function names of the call trace from the guilty frame on (KASAN's own frames above
    /// it and ` ? ` frames left out), innermost first.
    pub frames: Vec<String>,
}

impl Access {
    /// Reads the access from a report's text; `None` when it has no `by task` line or no
    /// frames below KASAN's own.
    pub fn parse(text: &str) -> Option<Access> {
        let mut task = None;
        let mut frames = Vec::new();
        let mut in_trace = false;
        for raw in text.lines() {
            let line = raw.trim();
            if task.is_none() {
                if let Some((_, rest)) = line.split_once(" by task ") {
                    task = rest.split_whitespace().next().map(str::to_string);
                }
            }
            if line.starts_with("Call Trace:") {
                in_trace = frames.is_empty();
                continue;
            }
            if !in_trace {
                continue;
            }
            if line.is_empty() || line.starts_with("</TASK>") || line.starts_with("Allocated by task") {
                in_trace = false;
                continue;
            }
            match parse_frame(raw) {
                Some((frame, _)) if !line.starts_with('?') && !frame.is_rip && frames.len() < MAX_FRAMES => {
                    frames.push(frame.func)
                }
                _ => {}
            }
        }
        // Everything down to KASAN's own reporting and checking functions is KASAN's.
        let kasan = |f: &String| ["kasan_", "__kasan_", "__asan_", "kasan_check_range"].iter().any(|p| f.starts_with(p));
        if let Some(last) = frames.iter().rposition(kasan) {
            frames.drain(..=last);
        }
        match task {
            Some(task) if !frames.is_empty() => Some(Access { task, frames }),
            _ => None,
        }
    }

    /// One access happened inside the call of the other's guilty function: one call trace
    /// ends with the whole of the other, by the same task.
    fn same_call_chain(&self, other: &Access) -> bool {
        let (short, long) = if self.frames.len() <= other.frames.len() { (self, other) } else { (other, self) };
        self.task == other.task && short.frames.len() < long.frames.len() && long.frames.ends_with(&short.frames)
    }
}

impl FreedObject {
    /// Reads the object from a report's text (printk prefixes stripped, as in
    /// [`crate::Report::text`]); `None` when the report names no slab object (not KASAN, a
    /// global or stack variable, a report cut short before the object lines).
    pub fn parse(text: &str) -> Option<FreedObject> {
        #[derive(Clone, Copy)]
        enum In {
            Nothing,
            Allocated,
            Freed,
        }
        let mut section = In::Nothing;
        let (mut allocated, mut freed) = (Stack::default(), Stack::default());
        let mut address = None;
        let mut cache_and_size = None;
        for line in text.lines() {
            let raw = line;
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("Allocated by task ") {
                allocated = Stack { task: task_id(rest), frames: Vec::new() };
                section = In::Allocated;
                continue;
            }
            if let Some(rest) = line.strip_prefix("Freed by task ") {
                freed = Stack { task: task_id(rest), frames: Vec::new() };
                section = In::Freed;
                continue;
            }
            if let Some(rest) = line.strip_prefix("The buggy address belongs to the object at ") {
                let (addr, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                address = u64::from_str_radix(addr.trim_start_matches("0x"), 16).ok();
                // Some kernels print the cache on the same line.
                cache_and_size = cache_and_size.or_else(|| cache_of(tail));
                section = In::Nothing;
                continue;
            }
            if address.is_some() && cache_and_size.is_none() {
                if let Some(found) = cache_of(line) {
                    cache_and_size = Some(found);
                    continue;
                }
            }
            let stack = match section {
                In::Allocated => &mut allocated,
                In::Freed => &mut freed,
                In::Nothing => continue,
            };
            match parse_frame(raw) {
                Some((frame, _)) if !line.starts_with('?') => {
                    if stack.frames.len() < MAX_FRAMES {
                        stack.frames.push(frame.func);
                    }
                }
                // A blank line or anything else ends the stack.
                _ => section = In::Nothing,
            }
        }
        let (cache, size) = cache_and_size?;
        Some(FreedObject { cache, address: address?, size, allocated, freed })
    }

    /// The same object: cache, address, size and both stacks equal.
    pub fn same_object(&self, other: &FreedObject) -> bool {
        self == other
    }

    /// Freed by the same task within one call: below the free function (`kfree`,
    /// `kmem_cache_free`, ... right under KASAN's own frames), one stack ends with the other.
    fn same_teardown(&self, other: &FreedObject) -> bool {
        fn caller_frames(stack: &Stack) -> &[String] {
            let kasan = |f: &String| f.starts_with("kasan_") || f.starts_with("__kasan_");
            let below = stack.frames.iter().rposition(kasan).map_or(0, |i| i + 1);
            // The free function itself, then its callers.
            stack.frames.get(below + 1..).unwrap_or_default()
        }
        let (a, b) = (caller_frames(&self.freed), caller_frames(&other.freed));
        let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
        self.freed.task.is_some() && self.freed.task == other.freed.task && !short.is_empty() && long.ends_with(short)
    }
}

/// What a report says about the memory it hit and how it got there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Evidence {
    object: Option<FreedObject>,
    access: Option<Access>,
}

impl Evidence {
    fn parse(text: &str) -> Evidence {
        Evidence { object: FreedObject::parse(text), access: Access::parse(text) }
    }

    /// The same freed object, or one call chain into one teardown (module documentation).
    fn same_bug(&self, earlier: &Evidence) -> bool {
        let (Some(object), Some(earlier_object)) = (&self.object, &earlier.object) else { return false };
        if object.same_object(earlier_object) {
            return true;
        }
        let chain = matches!((&self.access, &earlier.access), (Some(a), Some(b)) if a.same_call_chain(b));
        chain && object.same_teardown(earlier_object)
    }
}

/// `91:` or `91 on cpu 0 at 3.14s:` → 91.
fn task_id(rest: &str) -> Option<u32> {
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// `which belongs to the cache kmalloc-256 of size 256` → (`kmalloc-256`, 256).
fn cache_of(line: &str) -> Option<(String, u64)> {
    let rest = line.split_once("belongs to the cache ")?.1;
    let (name, size) = rest.split_once(" of size ")?;
    let size = size.split_whitespace().next()?.parse().ok()?;
    Some((name.to_string(), size))
}

/// Where [`Bugs::add`] placed a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Index of the bug, in order of first report.
    pub bug: usize,
    /// Index of the title within the bug: 0 is the bug's own (its first report's) title,
    /// the others are follow-ons, in order of first report.
    pub member: usize,
    /// This report's title was new (a new bug, or a new follow-on title of an existing one).
    pub new_title: bool,
}

impl Placement {
    pub fn is_follow_on(&self) -> bool {
        self.member > 0
    }
}

/// One title within a bug, as far as grouping needs it.
#[derive(Debug, Clone)]
struct Member {
    /// The title and its alternates.
    titles: Vec<String>,
    /// What its first report hit, and how.
    evidence: Evidence,
}

/// Which bug each title belongs to (see the module documentation), in order of first report.
/// Holds only what grouping needs; [`Bugs`] keeps the reports and counts.
#[derive(Debug, Clone)]
struct Grouping {
    max_titles: usize,
    titles: usize,
    bugs: Vec<Vec<Member>>,
}

impl Grouping {
    /// Keeps at most `max_titles` titles (bugs and follow-ons together); further new titles
    /// are not placed.
    fn new(max_titles: usize) -> Grouping {
        Grouping { max_titles, titles: 0, bugs: Vec::new() }
    }

    /// Places a report known by `titles` (its title first, then its alternates) with report
    /// text `text`. `None`: a new title past the limit, not kept.
    fn place<'a>(&mut self, titles: impl IntoIterator<Item = &'a str>, text: &str) -> Option<Placement> {
        let titles: Vec<String> = titles.into_iter().map(str::to_string).collect();
        for (bug, members) in self.bugs.iter().enumerate() {
            for (member, m) in members.iter().enumerate() {
                if m.titles.iter().any(|t| titles.contains(t)) {
                    return Some(Placement { bug, member, new_title: false });
                }
            }
        }
        if self.titles >= self.max_titles {
            return None;
        }
        self.titles += 1;
        let evidence = Evidence::parse(text);
        let follows = self.bugs.iter().position(|members| members.iter().any(|m| evidence.same_bug(&m.evidence)));
        let member = Member { titles, evidence };
        Some(match follows {
            Some(bug) => {
                self.bugs[bug].push(member);
                Placement { bug, member: self.bugs[bug].len() - 1, new_title: true }
            }
            None => {
                self.bugs.push(vec![member]);
                Placement { bug: self.bugs.len() - 1, member: 0, new_title: true }
            }
        })
    }
}

/// A bug: the first report's item (a [`crate::Report`], or whatever a caller files), every
/// report's count, and the follow-on titles with their own first items and counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bug<T> {
    pub first: T,
    /// Reports of this bug in all, follow-ons included.
    pub count: u64,
    pub follow_ons: Vec<FollowOn<T>>,
}

/// A title filed under an earlier title's bug.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FollowOn<T> {
    pub first: T,
    pub count: u64,
}

/// Reports grouped into bugs with counts: [`Grouping`] plus the first item of every title.
#[derive(Debug, Clone)]
pub struct Bugs<T> {
    grouping: Grouping,
    bugs: Vec<Bug<T>>,
    /// Reports of new titles past the limit.
    dropped: u64,
}

impl<T> Bugs<T> {
    /// At most `max_titles` titles, bugs and follow-ons together.
    pub fn new(max_titles: usize) -> Bugs<T> {
        Bugs { grouping: Grouping::new(max_titles), bugs: Vec::new(), dropped: 0 }
    }

    /// Counts `count` reports known by `titles` with text `text`; `first` makes the item kept
    /// when the title is new. `None`: a new title past the limit (counted as dropped).
    pub fn add<'a>(&mut self, titles: impl IntoIterator<Item = &'a str>, text: &str, count: u64, first: impl FnOnce() -> T) -> Option<Placement> {
        let Some(p) = self.grouping.place(titles, text) else {
            self.dropped = self.dropped.saturating_add(count);
            return None;
        };
        let mut first = Some(first);
        if p.bug == self.bugs.len() {
            self.bugs.push(Bug { first: first.take()?(), count: 0, follow_ons: Vec::new() });
        }
        // Grouping and `bugs` grow together: the bug is there.
        let bug = self.bugs.get_mut(p.bug)?;
        if p.new_title && p.is_follow_on() {
            bug.follow_ons.push(FollowOn { first: first.take()?(), count: 0 });
        }
        bug.count = bug.count.saturating_add(count);
        if let Some(f) = p.member.checked_sub(1).and_then(|i| bug.follow_ons.get_mut(i)) {
            f.count = f.count.saturating_add(count);
        }
        Some(p)
    }

    pub fn bugs(&self) -> &[Bug<T>] {
        &self.bugs
    }

    /// Reports not kept: of new titles past the limit.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Bugs<crate::Report> {
    /// The bugs of reports already deduplicated by title (see [`crate::Collected`]); titles
    /// it dropped stay dropped.
    pub fn of(collected: &crate::Collected) -> Bugs<crate::Report> {
        let mut bugs = Bugs::new(collected.max_titles);
        bugs.dropped = collected.dropped;
        for c in &collected.reports {
            bugs.add(c.report.titles(), &c.report.text, c.count, || c.report.clone());
        }
        bugs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> Vec<crate::Report> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap();
        crate::parse(crate::split_expectations(&bytes).1)
    }

    /// A real run's four reports of one freed gpio-virtuser object: cache, address, size and
    /// both stacks as the kernel printed them.
    #[test]
    fn the_object_and_its_stacks_are_read_from_a_real_report() {
        let reports = golden("project-gpio-virtuser-proc-interrupts-uaf.log");
        assert_eq!(reports.len(), 4);
        let o = FreedObject::parse(&reports[0].text).unwrap();
        assert_eq!((o.cache.as_str(), o.address, o.size), ("kmalloc-256", 0xffff8880008f8600, 256));
        assert_eq!(o.allocated.task, Some(91));
        assert_eq!(o.allocated.frames[..5], ["kasan_save_track", "__kasan_kmalloc", "__kmalloc_node_track_caller_noprof", "devm_kmalloc", "gpio_virtuser_probe"]);
        assert_eq!(o.allocated.frames.last().unwrap(), "entry_SYSCALL_64_after_hwframe");
        assert_eq!(o.freed.task, Some(105));
        assert_eq!(o.freed.frames.len(), 19);
        assert_eq!(o.freed.frames[4..6], ["release_nodes", "devres_release_all"]);
        for r in &reports[1..] {
            assert!(FreedObject::parse(&r.text).unwrap().same_object(&o));
        }
        // Four reports, one title, one object: one bug of four reports.
        let collected = crate::parse_collected(crate::split_expectations(&std::fs::read(format!(
            "{}/tests/data/project-gpio-virtuser-proc-interrupts-uaf.log",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap())
        .1, 8);
        let bugs = Bugs::of(&collected);
        assert_eq!(bugs.bugs().len(), 1);
        assert_eq!((bugs.bugs()[0].first.title.as_str(), bugs.bugs()[0].count), ("KASAN: slab-use-after-free Read in seq_vprintf", 4));
        let access = Access::parse(&reports[0].text).unwrap();
        assert_eq!(access.task, "cat/109");
        assert_eq!(access.frames[..4], ["string_nocheck", "string", "vsnprintf", "seq_vprintf"]);
        assert_eq!(access.frames.len(), 14);
    }

    #[test]
    fn reports_without_a_slab_object_have_none() {
        for name in ["kasan-global-oob-197.log", "kasan-stack-oob-658.log", "warning-140.log", "kasan-null-ptr-deref-18.log"] {
            for r in golden(name) {
                assert_eq!(FreedObject::parse(&r.text), None, "{name}");
            }
        }
    }

    /// A KASAN report by `task` of an access along `calls` (innermost first) to the object at
    /// `addr`, freed from `freed_by` (innermost first, below `kfree`).
    fn kasan_report(task: &str, calls: &[&str], addr: &str, cache: &str, freed_by: &[&str]) -> String {
        let frames = |names: &[&str]| names.iter().map(|f| format!(" {f}+0x1/0x2\n")).collect::<String>();
        format!(
            "BUG: KASAN: slab-use-after-free in {}+0x1/0x2\nRead of size 8 at addr {addr} by task {task}\n\
             Call Trace:\n <TASK>\n dump_stack_lvl+0x1/0x2\n ? {0}+0x1/0x2\n kasan_report+0x1/0x2\n{}{} </TASK>\n\n\
             Allocated by task 1:\n kasan_save_track+0x1/0x2\n probe+0x1/0x2\n\n\
             Freed by task 2:\n kasan_save_track+0x1/0x2\n kfree+0x1/0x2\n{}\n\
             Last potentially related work creation:\n kasan_save_stack+0x1/0x2\n\n\
             The buggy address belongs to the object at {addr}\n which belongs to the cache {cache} of size 256\n",
            calls[0],
            frames(calls),
            " RIP: 0033:0x47cf2a\n",
            frames(freed_by)
        )
    }

    fn object_report(func: &str, addr: &str, cache: &str, freed_by: &str) -> String {
        kasan_report("cat/9", &[func], addr, cache, &[freed_by])
    }

    /// at24's regmap is freed by devres right after at24_data, from the same release_nodes;
    /// a read through the stale at24_data reaches it inside at24_read.
    #[test]
    fn a_freed_object_reached_along_the_first_reports_call_chain_is_a_follow_on() {
        let read = ["at24_read", "nvmem_reg_read", "vfs_read"];
        let via_regmap = ["regmap_readable", "regmap_bulk_read", "at24_read", "nvmem_reg_read", "vfs_read"];
        let devres = ["release_nodes", "devres_release_all", "device_del"];
        let regmap_exit = ["regmap_exit", "release_nodes", "devres_release_all", "device_del"];
        let first = kasan_report("cat/9", &read, "ffff888001000000", "kmalloc-256", &devres);
        let access = Access::parse(&first).unwrap();
        assert_eq!((access.task.as_str(), access.frames.as_slice()), ("cat/9", &read.map(String::from)[..]));
        let mut g = Grouping::new(8);
        assert_eq!(g.place(["A"], &first).unwrap().bug, 0);
        let follow_on = kasan_report("cat/9", &via_regmap, "ffff888002000000", "kmalloc-1k", &regmap_exit);
        assert_eq!(g.place(["B"], &follow_on), Some(Placement { bug: 0, member: 1, new_title: true }));
        // Another task's access along the same calls: another bug, as is one freed elsewhere
        // and one not inside at24_read.
        let other_task = kasan_report("sh/10", &via_regmap, "ffff888003000000", "kmalloc-1k", &regmap_exit);
        assert_eq!(g.place(["C"], &other_task).unwrap().bug, 1);
        let other_free = kasan_report("cat/9", &via_regmap, "ffff888004000000", "kmalloc-1k", &["regmap_exit", "foo_remove"]);
        assert_eq!(g.place(["D"], &other_free).unwrap().bug, 2);
        let elsewhere = kasan_report("cat/9", &["regmap_readable", "ioctl"], "ffff888005000000", "kmalloc-1k", &regmap_exit);
        assert_eq!(g.place(["E"], &elsewhere).unwrap().bug, 3);
    }

    #[test]
    fn follow_ons_on_the_same_object_join_the_first_bug() {
        let mut g = Grouping::new(8);
        let a = object_report("at24_read", "ffff888001000000", "kmalloc-256", "release_nodes");
        let b = object_report("at24_write", "ffff888001000000", "kmalloc-256", "release_nodes");
        // Same slot, but freed elsewhere: another allocation that reused it.
        let c = object_report("foo", "ffff888001000000", "kmalloc-256", "foo_remove");
        let d = object_report("bar", "ffff888002000000", "kmalloc-256", "release_nodes");
        assert_eq!(g.place(["A", "bad-access in at24_read"], &a), Some(Placement { bug: 0, member: 0, new_title: true }));
        assert_eq!(g.place(["B"], &b), Some(Placement { bug: 0, member: 1, new_title: true }));
        assert_eq!(g.place(["C"], &c), Some(Placement { bug: 1, member: 0, new_title: true }));
        assert_eq!(g.place(["D"], &d), Some(Placement { bug: 2, member: 0, new_title: true }));
        // A repeat of a follow-on's title, or an alternate title of the first: the same member.
        assert_eq!(g.place(["B"], ""), Some(Placement { bug: 0, member: 1, new_title: false }));
        assert_eq!(g.place(["X", "bad-access in at24_read"], ""), Some(Placement { bug: 0, member: 0, new_title: false }));
    }

    #[test]
    fn titles_past_the_limit_are_not_placed_repeats_still_are() {
        let mut g = Grouping::new(1);
        assert!(g.place(["A"], "").is_some());
        assert_eq!(g.place(["B"], ""), None);
        assert_eq!(g.place(["A"], ""), Some(Placement { bug: 0, member: 0, new_title: false }));
    }
}
