//! The console parser takes guest-controlled bytes: it must never panic, and its memory must
//! stay bounded however long a line or a report gets. The first input byte picks a chunk
//! size so that line splitting across `feed` calls is exercised too; the input is fed
//! several times over to stand in for an endless console.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let limits = report::Limits::default();
    let mut parser = report::Parser::with_limits(limits);
    for _ in 0..8 {
        for c in data.chunks(chunk) {
            parser.feed(c);
        }
        let taken = parser.take_reports();
        assert!(taken.len() <= limits.max_pending);
        for r in &taken {
            // U+FFFD replaces each invalid byte: up to 3 bytes of text per input byte.
            assert!(r.text.len() <= (limits.max_report_lines + 64) * (3 * limits.max_line_bytes + 1));
        }
    }
    for r in parser.finish() {
        assert!(!r.title.is_empty() && r.title.len() <= 120);
    }
});
