//! Random traffic never panics the session or the CP2112 (the fuzz targets' property, run in
//! the normal suite).

mod common;

use common::*;
use devices::cp2112::Cp2112;
use devices::usbredir::{Session, Setup, UsbDevice};
use proptest::prelude::*;

fn packets() -> impl Strategy<Value = Vec<u8>> {
    // Plausible packets (known types, small bodies) mixed with raw noise.
    let one = (
        prop::sample::select(vec![0u32, 3, 6, 7, 9, 10, 15, 16, 21, 23, 24, 100, 103, 5, 999]),
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(kind, body)| packet(kind, 1, &body, true));
    prop::collection::vec(prop_oneof![one, prop::collection::vec(any::<u8>(), 0..40)], 0..20).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn session_survives_random_streams(raw in prop::collection::vec(any::<u8>(), 0..600), after_hello in packets(), split in 1usize..64) {
        let mut d = Cp2112::new();
        let mut s = Session::new(d.info());
        let _ = s.receive(&raw, &mut d);
        let mut s = Session::new(d.info());
        let bytes = [hello(QEMU_CAPS), after_hello].concat();
        for chunk in bytes.chunks(split) {
            if s.receive(chunk, &mut d).is_err() {
                break;
            }
        }
        while s.poll_transmit().is_some() {}
    }

    #[test]
    fn cp2112_survives_random_reports(reports in prop::collection::vec((0u8..4, any::<u16>(), prop::collection::vec(any::<u8>(), 0..70)), 0..40)) {
        let mut d = Cp2112::new();
        d.attach(0x50, Box::new(devices::at24::At24::new(devices::at24::At24Kind::C32))).unwrap();
        for (how, value, data) in reports {
            match how {
                0 => d.interrupt_out(0x01, &data),
                1 => { let _ = d.control(&Setup { request_type: 0xa1, request: 1, value, index: 0, length: 64 }, &[]); }
                2 => { let _ = d.control(&Setup { request_type: 0x21, request: 9, value, index: 0, length: data.len() as u16 }, &data); }
                _ => { let _ = d.control(&Setup { request_type: data.first().copied().unwrap_or(0), request: value as u8, value, index: 0, length: 255 }, &[]); }
            }
            while let Some((_, report)) = d.poll_in() {
                prop_assert!(report.len() <= 64);
            }
        }
    }
}
