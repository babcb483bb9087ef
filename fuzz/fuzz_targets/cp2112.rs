//! Arbitrary output and feature reports to the CP2112 with an at24 on its bus: no panic, and
//! every input report fits the 64-byte interrupt endpoint.
#![no_main]

use devices::at24::{At24, At24Kind};
use devices::cp2112::Cp2112;
use devices::usbredir::{Setup, UsbDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut device = Cp2112::new();
    let _ = device.attach(0x50, Box::new(At24::new(At24Kind::C02)));
    // Records: [how, value lo, value hi, len, payload...].
    let mut rest = data;
    while let [how, lo, hi, len, tail @ ..] = rest {
        let (payload, next) = tail.split_at((*len as usize).min(tail.len()));
        rest = next;
        let value = u16::from_le_bytes([*lo, *hi]);
        match how % 3 {
            0 => device.interrupt_out(0x01, payload),
            1 => {
                let _ = device.control(&Setup { request_type: 0xa1, request: 1, value, index: 0, length: 64 }, &[]);
            }
            _ => {
                let setup = Setup { request_type: 0x21, request: 9, value, index: 0, length: payload.len() as u16 };
                let _ = device.control(&setup, payload);
            }
        }
        while let Some((_, report)) = device.poll_in() {
            assert!(report.len() <= 64);
        }
    }
});
