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
}
