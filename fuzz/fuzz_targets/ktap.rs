//! The KTAP parser reads guest-controlled text (console, debugfs): it must never panic and
//! must keep what it holds within its limits, whatever the input. The first byte picks how the
//! input is split into lines (newlines, or fixed-size chunks that cut lines anywhere).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(data);
    let limits = ktap::Limits { max_tests: 2000, max_missing: 64, ..ktap::Limits::default() };
    let mut parser = ktap::Parser::new(limits);
    if mode % 2 == 0 {
        for line in text.split('\n') {
            parser.line(line);
        }
    } else {
        let chunk = usize::from(mode / 2).max(1);
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(chunk) {
            parser.line(&piece.iter().collect::<String>());
        }
    }
    let k = parser.finish();
    assert!(k.problems.len() <= limits.max_problems);
    fn check(t: &ktap::Test, depth: usize, limits: &ktap::Limits) {
        assert!(depth <= limits.max_depth + 1);
        assert!(t.diagnostics.len() <= limits.max_diagnostics);
        assert!(t.name.len() <= limits.max_line_bytes);
        let _ = (t.outcome(), t.counts(), t.failures());
        for s in &t.subtests {
            check(s, depth + 1, limits);
        }
    }
    for t in &k.tests {
        check(t, 1, &limits);
    }
});
