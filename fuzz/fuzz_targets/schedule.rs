//! `schedule.json` is a file users edit by hand before `cargo xtask replay`: loading any bytes
//! must give a schedule or an error that names a line and column, never a panic. A loaded
//! schedule must also describe itself and give its delays without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match harness::drive::schedule::Schedule::parse(text, std::path::Path::new("schedule.json")) {
        Ok(schedule) => {
            for planned in &schedule.actions {
                let _ = planned.action.describe();
                let _ = planned.action.delay();
            }
        }
        Err(e) => assert!(e.to_string().starts_with("schedule.json:")),
    }
});
