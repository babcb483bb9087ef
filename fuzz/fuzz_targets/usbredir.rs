//! Arbitrary bytes from the usb-guest side, split into reads at arbitrary points: the session
//! returns an error or serves, never panics, and its output stays bounded.
#![no_main]

use devices::cp2112::Cp2112;
use devices::usbredir::{Session, UsbDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let mut device = Cp2112::new();
    let mut session = Session::new(device.info());
    for chunk in bytes.chunks(usize::from(split).max(1)) {
        if session.receive(chunk, &mut device).is_err() {
            break;
        }
        while session.poll_transmit().is_some() {}
    }
});
