//! The data: which console lines start a report, and how each kind of report is titled.
//!
//! Titles must be compatible with syzkaller/syzbot (`KASAN: slab-use-after-free Read in
//! at24_read`) so that a crash found here can be searched for on the syzbot dashboard and
//! in lore. The table therefore follows the formats syzkaller's `pkg/report` documents; the
//! engine interpreting it lives in `title.rs`.
//!
//! Pattern templates (expanded once when the table is compiled):
//! `{{FUNC}}` a function name followed by `+0x…` or a `.isra`-style suffix (one capture),
//! `{{PC}}` a bracketed address, `{{SRC}}` `file.c:123` (one capture), `{{TASK}}` a task
//! name (which may contain anything, even spaces).
//!
//! A format's `fmt` refers to `{N}`: argument N, counting the captures of `report` (or of
//! `title` when there is no `report`) first, then the frame found by `stack`.

/// One element of a stack specification, walked in order over the report's lines.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    /// The first following line matching this pattern; its first capture, if any, is a
    /// candidate frame.
    Line(&'static str),
    /// The frames of a stack trace, up to the next stack start (`Allocated by task …`).
    Trace,
}

/// How to choose the guilty frame among the non-skipped candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extractor {
    /// The first one.
    First,
    /// RCU stalls and lockups: the stack points at a random spot of a loop; name the frame
    /// just above a well-known dispatcher (syscall entry, workqueue, `vfs_read` …) instead.
    Stall,
    /// Hung tasks: victims pile up on the same lock; bucket `synchronize_rcu`/`rtnl_lock`
    /// waiters together, else skip the generic sleeping frames.
    Hang,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct StackSpec {
    pub parts: &'static [Part],
    /// Tried when `parts` finds no frame (e.g. a WARNING without a `RIP:` line).
    pub parts2: &'static [Part],
    /// Extra skip patterns for this format, on top of [`SKIP`].
    pub skip: &'static [&'static str],
    pub extractor: Extractor,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FormatSpec {
    pub title: &'static str,
    pub report: Option<&'static str>,
    pub fmt: &'static str,
    pub alt: &'static [&'static str],
    pub stack: Option<StackSpec>,
    /// The report legitimately has no stack trace (so none is not a sign of corruption).
    pub no_stack: bool,
    /// Matching this format means we only saw a fragment.
    pub corrupted: bool,
}

pub(crate) struct OopsSpec {
    /// Plain substring that makes a line a report start.
    pub header: &'static str,
    pub formats: &'static [FormatSpec],
    /// Lines containing the header but matching one of these are ordinary messages.
    pub suppressions: &'static [&'static str],
}

macro_rules! rip {
    () => {
        r"(?:IP|NIP|pc |PC is at):? (?:(?:[0-9]+:)?(?:{{PC}} +){0,2}{{FUNC}}|(?:[0-9]+:)?0x[0-9a-f]+|(?:[0-9]+:)?{{PC}} +\[< *\(null\)>\] +\(null\)|[0-9]+: +\(null\))"
    };
}
macro_rules! call_trace {
    () => {
        r"(?:Call (?:T|t)race:)|(?:Backtrace:)"
    };
}
pub(crate) const RIP: &str = rip!();
const CALL_TRACE: &str = call_trace!();

const fn spec(parts: &'static [Part], skip: &'static [&'static str]) -> StackSpec {
    StackSpec { parts, parts2: &[], skip, extractor: Extractor::First }
}
const fn fmt(title: &'static str, fmt: &'static str) -> FormatSpec {
    FormatSpec { title, report: None, fmt, alt: &[], stack: None, no_stack: false, corrupted: false }
}

const RIP_TRACE: &[Part] = &[Part::Line(RIP), Part::Line(CALL_TRACE), Part::Trace];
const TRACE: &[Part] = &[Part::Line(CALL_TRACE), Part::Trace];
const BAD_ACCESS: &[&str] = &["bad-access in {1}"];

/// WARNINGs trap: the stack starts at the `RIP:` line (x86) or `--- interrupt:` (ppc);
/// older kernels only print a `Call Trace:`.
const fn warning(title: &'static str, fmt_: &'static str, skip: &'static [&'static str]) -> FormatSpec {
    FormatSpec {
        stack: Some(StackSpec {
            parts: &[Part::Line(concat!("(?:", rip!(), r"|--- interrupt: [0-9]+ at {{FUNC}})")), Part::Trace],
            parts2: &[Part::Line(call_trace!()), Part::Trace],
            skip,
            extractor: Extractor::First,
        }),
        ..fmt(title, fmt_)
    }
}

const LOCKDEP_AT: &str = r"at: (?:{{PC}} +)?{{FUNC}}";

pub(crate) const OOPSES: &[OopsSpec] = &[
    OopsSpec {
        header: "BUG:",
        formats: &[
            FormatSpec {
                report: Some(r"BUG: KASAN: ([a-z\-]+) in {{FUNC}}(?:.*\n)+?.*(Read|Write) (?:of size|at addr) (?:[0-9a-f]+)"),
                alt: &["bad-access in {4}"],
                stack: Some(spec(
                    &[Part::Line(r"BUG: KASAN: (?:[a-z\-]+) in {{FUNC}}"), Part::Line(CALL_TRACE), Part::Trace],
                    // Frames of KASAN_HW_TAGS (arm64 MTE) fault handling.
                    &["kernel_fault", "tag_check", "mem_abort", "^el1_", "^el1h_"],
                )),
                ..fmt("BUG: KASAN:", "KASAN: {1} {3} in {4}")
            },
            FormatSpec {
                report: Some(r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in {{FUNC}}"),
                alt: &["invalid-free in {2}"],
                stack: Some(spec(
                    &[
                        Part::Line(r"BUG: KASAN: (?:double-free or invalid-free|double-free|invalid-free) in {{FUNC}}"),
                        Part::Line(CALL_TRACE),
                        Part::Trace,
                    ],
                    &["slab_", "kfree", "vunmap", "vfree"],
                )),
                ..fmt("BUG: KASAN:", "KASAN: invalid-free in {2}")
            },
            fmt(r"BUG: KASAN: ([a-z\-]+) on address(?:.*\n)+?.*(Read|Write) of size ([0-9]+)", "KASAN: {1} {2}"),
            FormatSpec { corrupted: true, ..fmt(r"BUG: KASAN: (.*)", "KASAN: {1}") },
            FormatSpec {
                report: Some(r"BUG: KMSAN: ([a-z\-]+) in {{FUNC}}"),
                alt: &["bad-access in {3}"],
                stack: Some(spec(
                    &[Part::Trace, Part::Line("(Local variable .* created at:|Uninit was created at:)"), Part::Trace],
                    // Crypto primitives are where uninit data is used, not where it came from.
                    &["alloc_skb", "netlink_ack", "netlink_rcv_skb", "_encrypt$", "^(?:crypto|cipher|drbg|rng)_"],
                )),
                no_stack: true,
                ..fmt("BUG: KMSAN:", "KMSAN: {1} in {3}")
            },
            FormatSpec { report: Some("BUG: KCSAN: (.*)"), no_stack: true, ..fmt("BUG: KCSAN:", "KCSAN: {1}") },
            FormatSpec {
                alt: BAD_ACCESS_4,
                stack: Some(spec(&[Part::Line(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}"), Part::Trace], &[])),
                ..fmt(r"BUG: KFENCE: (use-after-free|out-of-bounds) (read|write) in {{FUNC}}", "KFENCE: {1} {2} in {4}")
            },
            FormatSpec {
                alt: BAD_ACCESS_3,
                stack: Some(spec(&[Part::Line(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}"), Part::Trace], &[])),
                ..fmt(r"BUG: KFENCE: invalid (read|write) in {{FUNC}}", "KFENCE: invalid {1} in {3}")
            },
            FormatSpec {
                alt: &["invalid-free in {2}"],
                no_stack: true,
                stack: Some(spec(&[Part::Line(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}"), Part::Trace], &[])),
                ..fmt(r"BUG: KFENCE: invalid free in {{FUNC}}", "KFENCE: invalid free in {2}")
            },
            FormatSpec {
                no_stack: true,
                stack: Some(spec(&[Part::Line(r"BUG: KFENCE: (?:[a-z\- ]+) in {{FUNC}}"), Part::Trace], &[])),
                ..fmt(r"BUG: KFENCE: memory corruption in {{FUNC}}", "KFENCE: memory corruption in {2}")
            },
            FormatSpec {
                alt: BAD_ACCESS,
                stack: Some(spec(RIP_TRACE, &[])),
                ..fmt(
                    "BUG: (?:unable to handle kernel paging request|unable to handle page fault for address|Unable to handle kernel data access)",
                    "BUG: unable to handle kernel paging request in {1}",
                )
            },
            FormatSpec {
                alt: BAD_ACCESS,
                stack: Some(spec(RIP_TRACE, &[])),
                ..fmt(
                    "BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference|Kernel NULL pointer dereference)",
                    "BUG: unable to handle kernel NULL pointer dereference in {1}",
                )
            },
            // printk'ed in two pieces; the second may be lost.
            FormatSpec { corrupted: true, ..fmt("BUG: (?:unable to handle kernel|Unable to handle kernel)", "BUG: unable to handle kernel") },
            FormatSpec {
                stack: Some(spec(TRACE, &["spin_", "_lock", "_unlock"])),
                ..fmt(
                    "BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|cpu recursion|bad magic|wrong owner|wrong CPU|trylock failure on UP)",
                    "BUG: {1} {2} in {3}",
                )
            },
            FormatSpec {
                alt: &["stall in {1}"],
                stack: Some(StackSpec { parts: RIP_TRACE, parts2: &[], skip: &[], extractor: Extractor::Stall }),
                ..fmt("BUG: soft lockup", "BUG: soft lockup in {1}")
            },
            FormatSpec {
                report: Some(r"BUG: .*still has locks held!(?:.*\n)+?.*{{PC}} +{{FUNC}}"),
                ..fmt("BUG: .*still has locks held!", "BUG: still has locks held in {1}")
            },
            FormatSpec {
                stack: Some(spec(TRACE, &["schedule"])),
                ..fmt("BUG: scheduling while atomic", "BUG: scheduling while atomic in {1}")
            },
            FormatSpec {
                report: Some(r"BUG: lock held when returning to user space(?:.*\n)+?.*leaving the kernel with locks still held(?:.*\n)+?.*at: (?:{{PC}} +)?{{FUNC}}"),
                no_stack: true,
                ..fmt("BUG: lock held when returning to user space", "BUG: lock held when returning to user space in {1}")
            },
            FormatSpec {
                stack: Some(spec(&[Part::Line("{{PC}} +{{FUNC}}"), Part::Line(CALL_TRACE), Part::Trace], &[])),
                ..fmt("BUG: bad unlock balance detected!", "BUG: bad unlock balance in {1}")
            },
            FormatSpec {
                report: Some(r"BUG: held lock freed!(?:.*\n)+?.*{{PC}} +{{FUNC}}"),
                ..fmt("BUG: held lock freed!", "BUG: held lock freed in {1}")
            },
            FormatSpec { no_stack: true, ..fmt("BUG: Bad rss-counter state", "BUG: Bad rss-counter state") },
            FormatSpec {
                // The block device and filesystem in the message split one bug into many.
                report: Some(r"BUG: Dentry .* still in use \([0-9]+\) \[(unmount) of ([^\]]+)\]"),
                alt: &["BUG: Dentry still in use [{1} of {2}]"],
                ..fmt("BUG: Dentry .* still in use", "BUG: Dentry still in use in {1}")
            },
            fmt("BUG: Bad page map", "BUG: Bad page map"),
            FormatSpec {
                stack: Some(spec(
                    &[Part::Line("page last allocated"), Part::Trace],
                    &["(free|put|get|update|release)_page", "free_unref", "^_*folio", "truncate_inode_pages", "page_frag_free", "alloc", "vmap", "page_owner"],
                )),
                ..fmt("BUG: Bad page (state|cache)", "BUG: Bad page {1} in {2}")
            },
            FormatSpec { no_stack: true, ..fmt("BUG: workqueue lockup", "BUG: workqueue lockup") },
            FormatSpec {
                stack: Some(spec(TRACE, &[])),
                ..fmt("BUG: sleeping function called from invalid context at (.*)", "BUG: sleeping function called from invalid context in {2}")
            },
            FormatSpec {
                stack: Some(spec(TRACE, &["dump_stack", "preemption", "preempt", "debug_", "processor_id", "this_cpu"])),
                ..fmt(r"BUG: using ([a-z_]+)\(\) in preemptible", "BUG: using {1}() in preemptible code in {2}")
            },
            FormatSpec {
                report: Some(r"BUG: workqueue leaked lock or atomic(?:.*\n)+?.*last function: ([a-zA-Z0-9_]+)\n"),
                no_stack: true,
                ..fmt("BUG: workqueue leaked lock or atomic", "BUG: workqueue leaked lock or atomic in {1}")
            },
            FormatSpec {
                stack: Some(spec(
                    &[Part::Line(r"backtrace(?: \(crc [[:xdigit:]]*\))?:"), Part::Trace],
                    &["kmemleak", "mmap", "kmem", "slab", "alloc", "create_object", "idr_get", "list_lru_init", "kasprintf", "kvasprintf", "pcpu_create", "strdup", "strndup", "memdup"],
                )),
                ..fmt("BUG: memory leak", "memory leak in {1}")
            },
            FormatSpec {
                alt: &["stack-overflow in {1}"],
                stack: Some(StackSpec { parts: RIP_TRACE, parts2: &[], skip: &[], extractor: Extractor::Stall }),
                ..fmt("BUG: .*stack guard page was hit at", "BUG: stack guard page was hit in {1}")
            },
            FormatSpec {
                stack: Some(spec(TRACE, &["lock_sock", "release_sock"])),
                ..fmt("BUG: Invalid wait context", "WARNING: locking bug in {1}")
            },
            FormatSpec { corrupted: true, ..fmt(r"BUG:[[:space:]]*(?:\n|$)", "BUG: corrupted") },
        ],
        suppressions: &["ODEBUG:", "Boot_DEBUG:", "xlog_status:", "DEBUG:"],
    },
    OopsSpec {
        header: "WARNING:",
        formats: &[
            warning(
                r"WARNING: .*lib/debugobjects\.c.* (?:debug_print|debug_check|at)",
                "WARNING: ODEBUG bug in {1}",
                &["debug_", "rcu", "hrtimer_", "timer_", "work_", "percpu_", "vunmap", "vfree", "__free_", "debug_check", "kobject_"],
            ),
            warning(r"WARNING: .*mm/usercopy\.c.* (?:usercopy_warn|at)", "WARNING: bad usercopy in {1}", &["usercopy", "__check"]),
            warning(r"WARNING: .*lib/kobject\.c.* (?:kobject_|at)", "WARNING: kobject bug in {1}", &["kobject_"]),
            warning(r"WARNING: .*fs/proc/generic\.c.* (?:proc_register|at)", "WARNING: proc registration bug in {1}", &["proc_"]),
            warning(r"WARNING: .*lib/refcount\.c.* (?:refcount_|at)", "WARNING: refcount bug in {1}", &["refcount", "kobject_"]),
            warning(r"WARNING: .*kernel/locking/lockdep\.c.*lock_", "WARNING: locking bug in {1}", &["lock_sock", "release_sock"]),
            FormatSpec {
                report: Some(r"WARNING: .*still has locks held!(?:.*\n)+?.*at: {{FUNC}}"),
                ..fmt("WARNING: .*still has locks held!", "WARNING: still has locks held in {1}")
            },
            warning("WARNING: Nested lock was not taken", "WARNING: nested lock was not taken in {1}", &[]),
            FormatSpec {
                report: Some(r"WARNING: lock held when returning to user space(?:.*\n)+?.*leaving the kernel with locks still held(?:.*\n)+?.*at: (?:{{PC}} +)?{{FUNC}}"),
                no_stack: true,
                ..fmt("WARNING: lock held when returning to user space", "WARNING: lock held when returning to user space in {1}")
            },
            warning(r"WARNING: .*mm/.*\.c.* k?.?malloc", "WARNING: kmalloc bug in {1}", &["kmalloc", "krealloc", "slab", "kmem"]),
            warning(r"WARNING: .*mm/vmalloc.c.*__vmalloc_node", "WARNING: zero-size vmalloc in {1}", &[]),
            warning(
                r"WARNING: .* usb_submit_urb",
                "WARNING in {1}/usb_submit_urb",
                &["usb_submit_urb", "usb_start_wait_urb", "usb_bulk_msg", "usb_interrupt_msg", "usb_control_msg"],
            ),
            // The 2025 format: "WARNING: drivers/x.c:12 at 0x0, CPU#1: task/123".
            warning(r"WARNING: {{SRC}} at 0x\d+, CPU#\d+", "WARNING in {2}", &[]),
            warning("WARNING: .* at {{SRC}} {{FUNC}}", "WARNING in {3}", &[]),
            warning("WARNING: {{SRC}} at {{FUNC}}", "WARNING in {3}", &[]),
            warning(r"WARNING: \[.*\] {{SRC}} at {{FUNC}}.*", "WARNING in {3}", &[]),
            FormatSpec {
                report: Some(r"WARNING: possible circular locking dependency detected(?:.*\n)+?.*is trying to acquire lock"),
                stack: Some(spec(
                    &[Part::Line(LOCKDEP_AT), Part::Line(LOCKDEP_AT), Part::Trace],
                    // Work items' pseudo-locks: every deadlock through them is the workqueue's.
                    &["process_one_work", "flush_workqueue", "drain_workqueue", "destroy_workqueue"],
                )),
                ..fmt("WARNING: possible circular locking dependency detected", "possible deadlock in {1}")
            },
            FormatSpec {
                report: Some(r"WARNING: possible irq lock inversion dependency detected(?:.*\n)+?.*just changed the state of lock(?:.*\n)+?.*at: (?:{{PC}} +)?{{FUNC}}"),
                ..fmt("WARNING: possible irq lock inversion dependency detected", "possible deadlock in {1}")
            },
            FormatSpec {
                stack: Some(spec(&[Part::Line("which became (?:.*) at:"), Part::Trace], &[])),
                ..fmt("WARNING: .*-safe -> .*-unsafe lock order detected", "possible deadlock in {1}")
            },
            FormatSpec {
                report: Some(r"WARNING: possible recursive locking detected(?:.*\n)+?.*is trying to acquire lock(?:.*\n)+?.*at: (?:{{PC}} +)?{{FUNC}}"),
                ..fmt("WARNING: possible recursive locking detected", "possible deadlock in {1}")
            },
            FormatSpec {
                report: Some(r"WARNING: inconsistent lock state(?:.*\n)+?.*takes(?:.*\n)+?.*at: (?:{{PC}} +)?{{FUNC}}"),
                stack: Some(spec(TRACE, &[])),
                ..fmt("WARNING: inconsistent lock state", "inconsistent lock state in {2}")
            },
            FormatSpec {
                report: Some(r"WARNING: suspicious RCU usage(?:.*\n)+?.*?{{SRC}}"),
                stack: Some(spec(TRACE, &["rcu", "kmem", "slab"])),
                ..fmt("WARNING: suspicious RCU usage", "WARNING: suspicious RCU usage in {2}")
            },
            FormatSpec {
                stack: Some(spec(&[Part::Line("{{PC}} +{{FUNC}}"), Part::Line(CALL_TRACE), Part::Trace], &[])),
                ..fmt("WARNING: bad unlock balance detected!", "WARNING: bad unlock balance in {1}")
            },
            FormatSpec {
                report: Some(r"WARNING: held lock freed!(?:.*\n)+?.*at:(?: {{PC}})? +{{FUNC}}"),
                ..fmt("WARNING: held lock freed!", "WARNING: held lock freed in {1}")
            },
            FormatSpec {
                no_stack: true,
                ..fmt("WARNING: kernel stack regs at [0-9a-f]+ in [^ ]* has bad '([^']+)' value", "WARNING: kernel stack regs has bad '{1}' value")
            },
            FormatSpec {
                no_stack: true,
                ..fmt("WARNING: kernel stack frame pointer at [0-9a-f]+ in [^ ]* has bad value", "WARNING: kernel stack frame pointer has bad value")
            },
            FormatSpec { no_stack: true, ..fmt("WARNING: kernel stack regs .* has bad 'bp' value", "WARNING: kernel stack regs has bad value") },
            FormatSpec { no_stack: true, ..fmt("WARNING: kernel stack frame pointer .* has bad value", "WARNING: kernel stack regs has bad value") },
            FormatSpec { corrupted: true, ..fmt(r"WARNING:[[:space:]]*(?:\n|$)", "WARNING: corrupted") },
        ],
        suppressions: &[
            "WARNING: /etc/ssh/moduli does not exist, using fixed modulus",
            "WARNING: workqueue cpumask: online intersect > possible intersect",
            "WARNING: [Tt]he mand mount option",
            // Printed when glibc is dumped.
            r"WARNING: Unsupported flag value\(s\) of 0x%x in DT_FLAGS_1",
            "WARNING: Unprivileged eBPF is enabled with eIBRS",
            // A driver's notice that it left the screen size alone, not a kernel WARNING.
            r"WARNING: fbcon: Driver '(.*)' missed to adjust virtual screen size \(\d+x\d+ vs\. \d+x\d+\)",
            "WARNING: See https.* for mitigation options.",
            "WARNING: kernel not compiled with CPU_SRSO",
            r"EXT4-[Ff][Ss](?: \(.*\))?:",
            r"(?i)warning: .* uses (deprecated v2 capabilities|wireless extensions)",
            r"XFS \(\w+\): WARNING",
        ],
    },
    OopsSpec {
        header: "INFO:",
        formats: &[
            FormatSpec {
                report: Some(r"INFO: possible circular locking dependency detected \](?:.*\n)+?.*is trying to acquire lock(?:.*\n)+?.*at: {{PC}} +{{FUNC}}"),
                ..fmt("INFO: possible circular locking dependency detected", "possible deadlock in {1}")
            },
            FormatSpec {
                report: Some(r"INFO: possible irq lock inversion dependency detected \](?:.*\n)+?.*just changed the state of lock(?:.*\n)+?.*at: {{PC}} +{{FUNC}}"),
                ..fmt("INFO: possible irq lock inversion dependency detected", "possible deadlock in {1}")
            },
            FormatSpec {
                report: Some(r"INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected \](?:.*\n)+?.*is trying to acquire(?:.*\n)+?.*at: {{PC}} +{{FUNC}}"),
                ..fmt("INFO: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected", "possible deadlock in {1}")
            },
            FormatSpec {
                report: Some(r"INFO: possible recursive locking detected \](?:.*\n)+?.*is trying to acquire lock(?:.*\n)+?.*at: {{PC}} +{{FUNC}}"),
                ..fmt("INFO: possible recursive locking detected", "possible deadlock in {1}")
            },
            FormatSpec {
                report: Some(r"INFO: inconsistent lock state \](?:.*\n)+?.*takes(?:.*\n)+?.*at: {{PC}} +{{FUNC}}"),
                ..fmt("INFO: inconsistent lock state", "inconsistent lock state in {1}")
            },
            FormatSpec {
                alt: &["stall in {1}"],
                stack: Some(StackSpec {
                    parts: &[Part::Line("apic_timer_interrupt"), Part::Line(RIP), Part::Trace],
                    parts2: &[Part::Line("(?:apic_timer_interrupt|Exception stack|el1h_64_irq)"), Part::Trace],
                    skip: &["apic_timer_interrupt", "rcu"],
                    extractor: Extractor::Stall,
                }),
                ..fmt("INFO: rcu_(?:preempt|sched|bh|tasks) (?:self-)?detected(?: expedited)? stall", "INFO: rcu detected stall in {1}")
            },
            FormatSpec {
                stack: Some(spec(TRACE, &["stack", "lock", "IRQ"])),
                ..fmt("INFO: trying to register non-static key", "INFO: trying to register non-static key in {1}")
            },
            FormatSpec {
                report: Some(r"INFO: suspicious RCU usage(?:.*\n)+?.*?{{SRC}}"),
                stack: Some(spec(TRACE, &["rcu", "kmem", "slab"])),
                ..fmt("INFO: suspicious RCU usage", "INFO: suspicious RCU usage in {2}")
            },
            FormatSpec {
                alt: &["hang in {1}"],
                stack: Some(StackSpec { parts: TRACE, parts2: &[], skip: &[], extractor: Extractor::Hang }),
                ..fmt("INFO: task {{TASK}} blocked (?:in I/O wait )?for more than [0-9]+ seconds", "INFO: task hung in {1}")
            },
            FormatSpec {
                alt: &["hang in {1}"],
                stack: Some(spec(TRACE, &["schedule"])),
                ..fmt("INFO: task {{TASK}} can't die for more than .* seconds", "INFO: task can't die in {1}")
            },
            // Old-style KASAN fragments.
            FormatSpec { corrupted: true, ..fmt("INFO: (Freed|Allocated) in (.*)", "INFO: {1} in {2}") },
            FormatSpec { corrupted: true, ..fmt(r"INFO:[[:space:]]*(?:\n|$)", "INFO: corrupted") },
        ],
        suppressions: &[
            "INFO: lockdep is turned off",
            "INFO: Stall ended before state dump start",
            "INFO: NMI handler",
            "INFO: recovery required on readonly filesystem",
            "(handler|interrupt).*took too long",
            "rmt_storage:INFO:",
            "_INFO:",
        ],
    },
    OopsSpec {
        header: "Unable to handle kernel",
        formats: &[FormatSpec {
            alt: &["bad-access in {2}"],
            stack: Some(spec(RIP_TRACE, &[])),
            ..fmt(
                "Unable to handle kernel (paging request|NULL pointer dereference|access to user memory)",
                "BUG: unable to handle kernel {1} in {2}",
            )
        }],
        suppressions: &[],
    },
    OopsSpec {
        header: "general protection fault",
        formats: &[FormatSpec {
            alt: BAD_ACCESS,
            stack: Some(spec(RIP_TRACE, &[])),
            ..fmt("general protection fault.*:", "general protection fault in {1}")
        }],
        // User-space faults logged by the kernel ("... error:0 in libc.so").
        suppressions: &[r"general protection fault .* error:\d+ in "],
    },
    OopsSpec {
        header: "stack segment: ",
        formats: &[FormatSpec { stack: Some(spec(RIP_TRACE, &[])), ..fmt("stack segment: ", "stack segment fault in {1}") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "Kernel panic",
        formats: &[
            FormatSpec {
                report: Some("Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: {{FUNC}}"),
                no_stack: true,
                ..fmt("Kernel panic - not syncing: stack-protector:", "kernel panic: stack is corrupted in {1}")
            },
            FormatSpec {
                report: Some("Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: [a-f0-9]+"),
                stack: Some(spec(TRACE, &["stack_chk"])),
                ..fmt("Kernel panic - not syncing: stack-protector:", "kernel panic: stack is corrupted in {1}")
            },
            FormatSpec {
                alt: &["stack-overflow in {1}"],
                stack: Some(StackSpec { parts: TRACE, parts2: &[], skip: &["schedule", "retint_kernel"], extractor: Extractor::Stall }),
                ..fmt("Kernel panic - not syncing: corrupted stack end", "kernel panic: corrupted stack end in {1}")
            },
            FormatSpec {
                alt: &["stack-overflow in {1}"],
                stack: Some(StackSpec { parts: TRACE, parts2: &[], skip: &["bad_stack"], extractor: Extractor::Stall }),
                ..fmt("Kernel panic - not syncing: kernel stack overflow", "kernel stack overflow in {1}")
            },
            fmt("Kernel panic - not syncing: Attempted to kill init!", "kernel panic: Attempted to kill init!"),
            fmt("Kernel panic - not syncing: Couldn't open N_TTY ldisc for [^ ]+ --- error -[0-9]+", "kernel panic: Couldn't open N_TTY ldisc"),
            // These follow another report; seeing them as the title means we missed its start.
            FormatSpec { corrupted: true, ..fmt("Kernel panic - not syncing: Fatal exception", "kernel panic: Fatal exception") },
            FormatSpec { corrupted: true, ..fmt("Kernel panic - not syncing: panic_on_warn set", "kernel panic: panic_on_warn set") },
            FormatSpec {
                corrupted: true,
                ..fmt("Kernel panic - not syncing: hung_task: blocked tasks", "kernel panic: hung_task: blocked tasks")
            },
            fmt("Kernel panic - not syncing: (.*)", "kernel panic: {1}"),
        ],
        suppressions: &[],
    },
    OopsSpec {
        header: "PANIC: double fault",
        formats: &[FormatSpec { stack: Some(spec(&[Part::Line(RIP)], &[])), ..fmt("PANIC: double fault", "PANIC: double fault in {1}") }],
        suppressions: &[],
    },
    // Rust-for-Linux's panic handler: `pr_emerg!("{info}")` prints "panicked at FILE:L:C:"
    // and the message on the next line, then BUG()s (see START_IGNORES). The message names
    // the bug; the guilty frame is the first below the panic machinery (`core::panicking`).
    OopsSpec {
        header: "rust_kernel: panicked",
        formats: &[FormatSpec {
            report: Some(r"rust_kernel: panicked at [^\n]*?\n(.+?)\n"),
            stack: Some(spec(TRACE, &["rust_begin_unwind"])),
            ..fmt("rust_kernel: panicked", "{1} in {2}")
        }],
        suppressions: &[],
    },
    OopsSpec {
        header: "kernel BUG",
        formats: &[
            FormatSpec { stack: Some(spec(TRACE, &["usercopy", "__check"])), ..fmt("kernel BUG at mm/usercopy.c", "BUG: bad usercopy in {1}") },
            FormatSpec {
                // List corruption is also a common symptom of a use-after-free.
                alt: BAD_ACCESS,
                stack: Some(spec(TRACE, &[])),
                ..fmt("kernel BUG at lib/list_debug.c", "BUG: corrupted list in {1}")
            },
            // Lots of skb helpers BUG_ON; the bug is almost always in the caller.
            FormatSpec { stack: Some(spec(RIP_TRACE, &["^skb_"])), ..fmt("kernel BUG at (.*)", "kernel BUG in {2}") },
        ],
        suppressions: &[],
    },
    OopsSpec { header: "Kernel BUG", formats: &[fmt("Kernel BUG (.*)", "kernel BUG {1}")], suppressions: &[] },
    OopsSpec {
        header: "BUG kmalloc-",
        formats: &[fmt("BUG kmalloc-.*: Object already free", "BUG: Object already free")],
        suppressions: &[],
    },
    OopsSpec {
        header: "divide error:",
        formats: &[FormatSpec { stack: Some(spec(&[Part::Line(RIP)], &[])), ..fmt("divide error: ", "divide error in {1}") }],
        suppressions: &[],
    },
    // A misspelling introduced by "x86/entry: Convert Divide Error to IDTENTRY".
    OopsSpec {
        header: "divide_error:",
        formats: &[FormatSpec { stack: Some(spec(&[Part::Line(RIP)], &[])), ..fmt("divide_error: ", "divide error in {1}") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "int3:",
        formats: &[FormatSpec { stack: Some(spec(RIP_TRACE, &[])), ..fmt("int3: ", "int3 in {1}") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "invalid opcode:",
        formats: &[FormatSpec { stack: Some(spec(&[Part::Line(RIP)], &[])), ..fmt("invalid opcode: ", "invalid opcode in {1}") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "UBSAN:",
        formats: &[
            FormatSpec {
                report: Some("UBSAN: Undefined behaviour in"),
                stack: Some(spec(TRACE, &["ubsan", "overflow"])),
                ..fmt("UBSAN:", "UBSAN: undefined-behaviour in {1}")
            },
            FormatSpec {
                alt: BAD_ACCESS,
                stack: Some(spec(TRACE, &["ubsan", "overflow"])),
                ..fmt("UBSAN: array-index-out-of-bounds in", "UBSAN: array-index-out-of-bounds in {1}")
            },
            FormatSpec {
                report: Some("UBSAN: (.*?) in"),
                stack: Some(spec(TRACE, &["ubsan", "overflow"])),
                ..fmt("UBSAN:", "UBSAN: {1} in {2}")
            },
        ],
        suppressions: &[],
    },
    OopsSpec {
        header: "Internal error:",
        formats: &[FormatSpec { alt: BAD_ACCESS, stack: Some(spec(RIP_TRACE, &[])), ..fmt("Internal error:", "Internal error in {1}") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "Unhandled fault:",
        formats: &[FormatSpec { alt: BAD_ACCESS, stack: Some(spec(RIP_TRACE, &[])), ..fmt("Unhandled fault:", "Unhandled fault in {1}") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "Alignment trap:",
        formats: &[FormatSpec { stack: Some(spec(RIP_TRACE, &[])), ..fmt("Alignment trap:", "Alignment trap in {1}") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "Booting the kernel.",
        formats: &[FormatSpec { no_stack: true, ..fmt("^Booting the kernel", "unexpected kernel reboot") }],
        // Boot messages echoed back by a program (e.g. as a bad mount option).
        suppressions: &["Parsing ELF|Decompressing Linux|Unknown parameter '"],
    },
    // Older kernels' custom VFS use-after-free checks.
    OopsSpec {
        header: "VFS: Close: file count is 0",
        formats: &[FormatSpec { no_stack: true, ..fmt("VFS: Close: file count is 0", "VFS: Close: file count is zero (use-after-free)") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "VFS: Busy inodes after unmount",
        formats: &[FormatSpec { no_stack: true, ..fmt("VFS: Busy inodes after unmount", "VFS: Busy inodes after unmount (use-after-free)") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "unregister_netdevice: waiting for",
        formats: &[FormatSpec {
            no_stack: true,
            ..fmt("unregister_netdevice: waiting for (?:.*) to become free", "unregister_netdevice: waiting for DEV to become free")
        }],
        suppressions: &[],
    },
    // syzkaller's own failures, for logs of syzkaller runs pasted into `report parse`: the
    // executor's fail(), the tools' log.Fatal, and a crashed Go runtime (its programs').
    OopsSpec {
        header: "SYZFAIL:",
        formats: &[FormatSpec { no_stack: true, ..fmt("SYZFAIL:(.*)", "SYZFAIL:{1}") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "SYZFATAL:",
        formats: &[FormatSpec { alt: &["SYZFATAL"], no_stack: true, ..fmt("SYZFATAL:(.*)", "SYZFATAL:{1}") }],
        suppressions: &[],
    },
    OopsSpec {
        header: "fatal error:",
        formats: &[FormatSpec { no_stack: true, ..fmt("fatal error:", "go runtime error") }],
        // Go prints it at the start of a line; in the middle of one it is a driver's message.
        suppressions: &["ALSA", "fatal error: cannot create timer", ".fatal error:"],
    },
];

const BAD_ACCESS_3: &[&str] = &["bad-access in {3}"];
const BAD_ACCESS_4: &[&str] = &["bad-access in {4}"];

/// Lines that contain a report header but, inside a report, continue it rather than start a
/// new one (they are printed as part of the report being written).
pub(crate) const START_IGNORES: &[&str] = &[
    "invalid opcode: 0000",
    "Kernel panic - not syncing",
    "unregister_netdevice: waiting for",
    "PANIC: double fault",
    "Internal error:",
    // The BUG() a Rust panic ends in (`rust/helpers/bug.c`, `rust/helpers.c` before 6.11).
    "kernel BUG at rust/helpers",
];

/// Beginnings of unprefixed lines that quote a crash title rather than print a report: a
/// pasted mail's `Subject: [syzbot] BUG: soft lockup in foo`. The kernel never prints these;
/// taken as report starts they would file a frameless duplicate before the real report.
/// (Report files' `TITLE:` headers are split off whole: [`crate::split_expectations`].)
pub(crate) const TITLE_QUOTES: &[&str] = &["Subject:"];

/// Lines that start a stack trace section.
pub(crate) const STACK_START: &[&str] = &[
    r"Call (?:T|t)race",
    r"Allocated:",
    r"Allocated by task [0-9]+:",
    r"Freed:",
    r"Freed by task [0-9]+:",
    // "backtrace:" of kmemleak but not lockdep's "stack backtrace:".
    r"[^k] backtrace(?: \(crc [[:xdigit:]]*\))?:",
    r"Backtrace:",
    r"Uninit was stored to memory at",
];

/// A stack frame line: x86-style ` func+0x1/0x2`, optionally behind `[<addr>]`, or arm's
/// `[<pc>] (caller) from [<pc>] (func+…)`.
pub(crate) const FRAME: &[&str] =
    &[r"^ *(?:{{PC}} ){0,2}{{FUNC}}", r"^ *{{PC}} \(([a-zA-Z0-9_.]+)\) from {{PC}} \({{FUNC}}"];

/// Frames that are never the guilty one: sanitizer and reporting machinery, allocators,
/// locking, refcounting, string and list helpers, generic device/USB core teardown. A crash
/// is named after the first frame below these.
pub(crate) const SKIP: &[&str] = &[
    "__sanitizer", "__asan", "kasan", "hwasan", "__msan", "kmsan", "kcsan_setup_watchpoint",
    "check_memory_region", "check_heap_object", "check_object", "read_word_at_a_time",
    "(read|write)_once_.*nocheck", "print_address_description", "panic", "invalid_op",
    "report_bug", "fixup_bug", "print_report", "print_usage_bug", "do_error", "_trap$|do_trap",
    "show_stack", "dump_stack", "walk_stack", "dump_backtrace", "warn_slowpath", "warn_alloc",
    "warn_bogus", "__warn", "alloc_page", "k?v?(?:m|z|c)alloc", "krealloc", "kmem_cache",
    "allocate_slab", "folio_(?:alloc|unlock)", "filemap_alloc_folio", "__filemap_get_folio",
    "find_or_create_page", "do_read_cache_folio", "read_cache_page", "pagecache_get_page",
    "grab_cache_page_write_begin", "slab_", "debug_object", "timer_is_static_object",
    "work_is_static_object", "__might_fault", "print_unlock", "imbalance_bug", "lockdep",
    "bh_enable", "bh_disable", "perf_trace", "lock_acquire", "lock_release", "lock_class",
    "mark_lock", "(reacquire|mark)_held_locks", "raw_spin_rq", "spin_lock", "spin_trylock",
    "spin_unlock", "read_lock", "read_trylock", "write_lock", "write_trylock", "read_unlock",
    "write_unlock", "^down$", "down_read", "down_write", "down_trylock", "up_read", "up_write",
    "^mutex_", "^__mutex_", "^rt_mutex_", "owner_on_cpu", "osq_lock", "osq_unlock",
    "atomic(64)?_(dec|inc|read|set|or|xor|and|add|sub|fetch|xchg|cmpxchg|try)",
    "(set|clear|change|test)_bit", "__wake_up", "^refcount_", "^kref_", "ref_tracker",
    "memcpy", "memcmp", "memset", "memchr", "memmove", "memdup", "strcmp", "strncmp", "strcpy",
    "strlcpy", "strncpy", "strscpy", "strlen", "strstr", "strnstr", "strnlen", "strchr",
    "strdup", "strndup", "copy_to_user", "copy_from_user", "copy_to_iter", "copy_from_iter",
    "copy_page_to_iter", "copy_page_from_iter", "copy_folio_to_iter", "put_user", "get_user",
    "might_fault", "might_sleep", "__might_resched", "list_add", "list_del", "list_replace",
    "list_move", "list_splice", "^rb_", "^__rb_", "_indirect_thunk_", "string", "pointer",
    "snprintf", "scnprintf", "kasprintf", "kvasprintf", "printk", "va_format", "dev_info",
    "dev_notice", "dev_warn", "dev_err", "dev_alert", "dev_crit", "dev_emerg",
    "program_check_exception", "program_check_common", "del_timer", "flush_work",
    "__cancel_work_timer", "cancel_work_sync", "try_to_grab_pending", "flush_workqueue",
    "drain_workqueue", "destroy_workqueue", "queue_work", "finish_wait", "kthread_stop",
    "kobject_", "add_uevent_var", "get_device_parent", "device_add", "device_del",
    "device_unregister", "device_destroy", "device_release", "devres_release_all",
    "hwrng_unregister", "i2c_del_adapter", "__unregister_client", "device_for_each_child",
    "rollback_registered", "unregister_netdev", "sysfs_remove", "device_remove_file",
    "tty_unregister_device", "dummy_urb_enqueue", "usb_kill_urb", "usb_kill_anchored_urbs",
    "usb_control_msg", "usb_hcd_submit_urb", "usb_submit_urb", "^complete$",
    "wait_for_completion", "^kv?free$", "kfree_skb", "readb$", "readw$", "readl$", "readq$",
    "writeb$", "writew$", "writel$", "writeq$", "logic_in", "logic_out", "^crc\\d+",
    "crc_itu_t", "assertfail", "^iput$", "^iput_final$", "^ihold$", "hex_dump_to_buffer",
    "print_hex_dump", "^klist_", "(trace|lockdep)_(hard|soft)irq", "^(un)?lock_page",
    "stack_trace_consume_entry", "arch_stack_walk", "stack_trace_save", "insert_work",
    "__queue_delayed_work", "queue_delayed_work_on", "ida_free", "do_(kernel|translation)_fault",
    "do_mem_abort", "el1_abort", "el1h_64_sync(?:_handler)?", "print_tainted",
    "xas_(?:start|load|find)", "find_lock_entries", "truncate_inode_pages_range", "__phys_addr",
    "__fortify_report", "cleanup_srcu_struct", "rhashtable_lookup", "drop_nlink",
    "^get_taint$", "^put_device$", "lock_timer_base", "__timer_delete_sync", "__mod_timer",
    "fast_dput", "dput", "mark_buffer_dirty", "seqprop_assert", "__alloc_frozen_pages_noprof",
    "sk_stop_timer_sync", "extract_(user|iter)_to_sg", "folio_(?:alloc|unlock)",
];

/// A frame of the fault-injection machinery: its stack got mixed into the report.
pub(crate) const CORRUPTED_FRAME: &str = r"^( \[<?(?:0x)?[0-9a-f]+>?\])? should_fail(slab)?(\.[a-z0-9.]+)?\+0x";

/// Syscall wrapper prefixes: `__x64_sys_ioctl` and `ksys_ioctl` are the same frame to a
/// human and across architectures.
pub(crate) const STRIP_FRAME_PREFIXES: &[&str] = &[
    "SYSC_", "SyS_", "sys_", "__x64_", "__ia32_", "__arm64_", "____sys_", "___sys_", "__sys_", "__se_",
    "__se_sys_", "__do_sys_", "compat_SYSC_", "compat_SyS_", "ksys_",
];

/// Generic dispatchers; for stalls the frame just above one of them names the culprit.
pub(crate) const STALL_ANCHORS: &[&str] = &[
    "process_one_work", "do_syscall_", "do_fast_syscall_", "sysenter_dispatch", "tracesys_phase2",
    "el0_svc_handler", "invoke_syscall", "ret_fast_syscall", "netif_receive_skb", "do_softirq",
    "call_timer_fn", "_run_timers", "run_timer_softirq", "hrtimer_run", "run_ksoftirqd",
    "smpboot_thread_fn", "^kthread$", "start_secondary", "cpu_startup_entry", "ret_from_fork",
    "vfs_write", "vfs_read", "vfs_iter_read", "vfs_iter_write", "do_iter_read", "do_iter_write",
    "call_read_iter", "call_write_iter", "new_sync_read", "new_sync_write", "vfs_ioctl", "ksys_ioctl",
    "compat_ioctl", "compat_sys_ioctl", "blkdev_driver_ioctl", "blkdev_ioctl", "do_iter_readv_writev",
    "^call_mmap", "mmap_region", "do_mmap", "do_dentry_open", "vfs_open", "^sock_sendmsg",
    "^sock_recvmsg", "^sock_release", "^__sock_release", "^setsockopt$", "kernel_setsockopt",
    "sock_common_setsockopt", "^listen$", "kernel_listen", "sk_common_release", "^sock_mmap",
    "^accept$", "kernel_accept", "^sock_do_ioctl", "^sock_ioctl", "^compat_sock_ioctl",
    "^nfnetlink_rcv_msg", "^rtnetlink_rcv_msg", "^netlink_dump", "^(sys_)?(socketpair|connect|ioctl)",
    "__do_fault", "do_page_fault", "^page_fault$", "__fput", "task_work_run", "exit_to_usermode",
    "smp_call_function", "tasklet_action", "tasklet_hi_action",
];

/// Hung-task frames that say "waiting" rather than "for what".
pub(crate) const HANG_SKIP: &[&str] = &[
    "sched", "_lock", "_slowlock", "down", "rwsem", "completion", "kthread", "wait", "synchronize",
    "context_switch", "__switch_to", "cancel_delayed_work", "rcu_barrier",
];
