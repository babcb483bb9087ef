//! Guest-sent holder records (JSON lines, `data` included) through the host's data check: no
//! panic and no allocation by a length the guest claims, whatever the record says.
#![no_main]

use std::sync::{Arc, Mutex};

use devices::at24::{At24, At24Kind};
use agent::ConsumerRecord;
use harness::devices::holders::HolderLog;
use harness::judge::integrity::{Checker, Model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let records: Vec<ConsumerRecord> =
        data.split(|&b| b == b'\n').filter_map(|line| serde_json::from_slice(line).ok()).collect();
    let eeprom = Arc::new(Mutex::new(At24::seeded(At24Kind::C02, &[0x3c, 0x3b, 0x32])));
    let mut checker = Checker::default();
    checker.watch(1, Model { device: "at24".into(), eeprom });
    let mut log = HolderLog::default();
    log.handle = 1;
    log.records = records;
    for m in checker.check(&[log], |h| format!("holder {h}")) {
        let _ = m.report();
    }
});
