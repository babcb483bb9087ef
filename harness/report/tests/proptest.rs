//! Property tests: the parser never panics, stays bounded, and does not care how the input
//! was chunked.

use proptest::prelude::*;

/// Line fragments that drive the state machine into its interesting corners.
const VOCAB: &[&str] = &[
    "[   1.000000][  T1] ",
    "[   2.000000][    C0] ",
    "[   3.000000] ",
    "BUG: KASAN: slab-use-after-free in at24_read+0x1b/0x40\n",
    "Read of size 8 at addr ffff888003b1c400 by task cat/1\n",
    "Call Trace:\n",
    " dump_stack+0x1/0x2\n",
    " ? foo+0x1/0x2\n",
    "==================================================================\n",
    "WARNING: CPU: 0 PID: 1 at lib/refcount.c:28 refcount_warn_saturate+0x1/0x2\n",
    "RIP: 0010:refcount_warn_saturate+0x1/0x2\n",
    "INFO: task kworker/0:1:23 blocked for more than 122 seconds.\n",
    "Kernel panic - not syncing: Fatal exception\n",
    "---[ end trace 0000000000000000 ]---\n",
    "** replaying previous printk message **\n",
    "Sending NMI from CPU 0 to CPUs 1:\n",
    // Pasted mails: quoting, a flowed declaration, soft breaks, symbolizer's inline lines.
    "> ",
    "Content-Type: text/plain; format=flowed\n",
    "Subject: [syzbot] BUG: soft lockup in foo\n",
    "BUG: KASAN: slab-use-after-free in foo drivers/x.c:12 [inline]\n",
    " \n",
    "-- \n",
    "\r\n",
    "\x1b[31m",
    "\n",
    // What grouping reports into bugs reads: the object, its stacks, the accessing task.
    "Allocated by task 91:\n",
    "Freed by task 105 on cpu 0 at 4.2s:\n",
    " kasan_save_track+0x3f/0x70\n",
    " kfree+0x1/0x2\n",
    " release_nodes+0x8f/0xb0\n",
    "The buggy address belongs to the object at ffff8880008f8600\n",
    " which belongs to the cache kmalloc-256 of size 256\n",
    "Read of size 1 at addr ffff8880008f8638 by task cat/109\n",
];

fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096),
        proptest::collection::vec(prop_oneof![
            proptest::sample::select(VOCAB).prop_map(|s| s.as_bytes().to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ], 0..200)
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #[test]
    fn never_panics_and_chunking_is_irrelevant(data in input(), chunk in 1usize..64) {
        let whole = report::parse(&data);
        let mut p = report::Parser::new();
        for c in data.chunks(chunk) {
            p.feed(c);
        }
        let chunked = p.finish();
        prop_assert_eq!(&whole, &chunked);
        for r in &whole {
            prop_assert!(!r.title.is_empty());
            prop_assert!(r.title.len() <= 120);
            prop_assert!(r.start_line <= r.end_line);
        }
    }

    /// Grouping reports into bugs never panics, keeps every report counted once and keeps no
    /// more titles than it may (the rest counted as dropped).
    #[test]
    fn bugs_count_every_report_once(data in input(), max_titles in 1usize..8) {
        use report::bugs::{Access, Bugs, FreedObject, MAX_FRAMES};
        let reports = report::parse(&data);
        let mut bugs = Bugs::new(max_titles);
        for r in &reports {
            if let Some(o) = FreedObject::parse(&r.text) {
                prop_assert!(o.allocated.frames.len() <= MAX_FRAMES && o.freed.frames.len() <= MAX_FRAMES);
            }
            if let Some(a) = Access::parse(&r.text) {
                prop_assert!(!a.frames.is_empty() && a.frames.len() <= MAX_FRAMES);
            }
            bugs.add(r.titles(), &r.text, 1, || r.title.clone());
        }
        let titles: usize = bugs.bugs().iter().map(|b| 1 + b.follow_ons.len()).sum();
        prop_assert!(titles <= max_titles);
        let counted: u64 = bugs.bugs().iter().map(|b| b.count).sum();
        prop_assert_eq!(counted + bugs.dropped(), reports.len() as u64);
        for b in bugs.bugs() {
            prop_assert!(b.follow_ons.iter().map(|f| f.count).sum::<u64>() < b.count);
        }
    }
}
