//! Grouping reports into bugs reads guest-controlled report text (the freed object, the
//! stacks, the accessing task): it must never panic, keep stacks to their bound and keep no
//! more titles than it was made with. NUL bytes split the input into reports, each filed under
//! one of a few titles so repeats, new titles and follow-ons all happen.
#![no_main]

use libfuzzer_sys::fuzz_target;
use report::bugs::{Access, Bugs, FreedObject, MAX_FRAMES};

const MAX_TITLES: usize = 6;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut bugs = Bugs::new(MAX_TITLES);
    for (i, piece) in text.split('\0').enumerate() {
        if let Some(o) = FreedObject::parse(piece) {
            assert!(o.allocated.frames.len() <= MAX_FRAMES && o.freed.frames.len() <= MAX_FRAMES);
        }
        if let Some(a) = Access::parse(piece) {
            assert!(!a.frames.is_empty() && a.frames.len() <= MAX_FRAMES);
        }
        let title = format!("title {}", i % (MAX_TITLES + 2));
        bugs.add([title.as_str()], piece, 1, || i);
    }
    let titles: usize = bugs.bugs().iter().map(|b| 1 + b.follow_ons.len()).sum();
    assert!(titles <= MAX_TITLES);
});
