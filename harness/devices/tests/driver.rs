//! The socket driver and fault hooks, with a scripted QEMU on the other end of a socket pair.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use devices::cp2112::{Cp2112, Faults};
use devices::usbredir::driver::{serve, SessionEnd};
use devices::usbredir::{LinkRequest, ProtocolError};

struct Qemu {
    sock: UnixStream,
    next_id: u64,
}

impl Qemu {
    /// Reads the device's hello, sends ours, reads the connect sequence.
    fn handshake(sock: UnixStream) -> Qemu {
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut q = Qemu { sock, next_id: 1 };
        let mut hello_in = [0u8; 80];
        q.sock.read_exact(&mut hello_in).unwrap();
        assert_eq!(hello_in[76..], [0x7a, 0, 0, 0]);
        q.sock.write_all(&hello(QEMU_CAPS)).unwrap();
        assert_eq!(q.kinds(3), [4, 5, 1]);
        q
    }

    fn read(&mut self) -> Out {
        let mut header = [0u8; 16];
        self.sock.read_exact(&mut header).unwrap();
        let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
        let mut body = vec![0; len];
        self.sock.read_exact(&mut body).unwrap();
        parse16(&[&header[..], &body].concat())
    }

    fn kinds(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.read().kind).collect()
    }

    fn send(&mut self, kind: u32, body: &[u8]) {
        let id = self.next_id;
        self.next_id += 1;
        self.sock.write_all(&packet(kind, id, body, true)).unwrap();
    }

    fn at_eof(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.sock.read(&mut b), Ok(0))
    }
}

fn rig() -> (Cp2112, Qemu, devices::usbredir::driver::Link) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let device = Cp2112::new();
    let link = serve(ours, Box::new(device.clone())).unwrap();
    (device, Qemu::handshake(theirs), link)
}

#[test]
fn peer_eof_ends_the_session() {
    let (_, q, link) = rig();
    drop(q);
    assert!(matches!(link.join(), SessionEnd::PeerClosed));
}

#[test]
fn local_close() {
    let (_, mut q, link) = rig();
    link.control().close();
    assert!(q.at_eof());
    assert!(matches!(link.join(), SessionEnd::LocalClose));
}

#[test]
fn protocol_error_closes_the_socket() {
    let (_, mut q, link) = rig();
    q.send(1, &[0; 10]);
    assert!(q.at_eof());
    assert!(matches!(link.join(), SessionEnd::Protocol(ProtocolError::UnknownType(1))));
}

#[test]
fn unplug_and_replug_on_the_live_link() {
    let (_, mut q, link) = rig();
    let control = link.control();
    for _ in 0..3 {
        control.unplug();
        assert_eq!(q.read(), Out { kind: 2, id: 0, body: vec![] });
        control.replug();
        q.send(24, &[]);
        assert_eq!(q.kinds(3), [4, 5, 1]);
    }
    q.send(7, &[]);
    assert_eq!(q.read().body, [0, 0]);
    drop(q);
    assert!(matches!(link.join(), SessionEnd::PeerClosed));
}

#[test]
fn unplug_when_transfer_n_starts() {
    for how in [LinkRequest::Disconnect, LinkRequest::Close] {
        let (device, mut q, link) = rig();
        device.attach(0x50, Box::new(devices::at24::At24::new(devices::at24::At24Kind::C02))).unwrap();
        device.set_faults(Faults { unplug_at_transfer: Some((2, how)), ..Faults::default() });
        q.send(103, &interrupt_out(&[0x10, 0xa0, 0x00, 0x01]));
        assert_eq!(q.read().kind, 103, "OUT ack of transfer 1");
        q.send(103, &interrupt_out(&[0x10, 0xa0, 0x00, 0x01]));
        match how {
            LinkRequest::Disconnect => {
                assert_eq!(q.kinds(2), [103, 2], "OUT ack, then device_disconnect");
                drop(q);
                assert!(matches!(link.join(), SessionEnd::PeerClosed));
            }
            LinkRequest::Close => {
                assert!(q.at_eof());
                assert!(matches!(link.join(), SessionEnd::LocalClose));
            }
        }
        assert_eq!(device.counters().transfers, 2);
    }
}

#[test]
fn reply_delay_holds_replies_back() {
    let (device, mut q, _link) = rig();
    device.set_faults(Faults { reply_delay: Duration::from_millis(150), ..Faults::default() });
    let start = Instant::now();
    q.send(7, &[]);
    q.read();
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[test]
fn fault_hooks_on_the_transfer_state_machine() {
    let mut r = Rig::new();
    r.start_in();
    let status = |r: &mut Rig| r.report(&[0x15, 0x01]).remove(0);

    r.device.set_faults(Faults { busy_before_complete: 2, ..Faults::default() });
    r.report(&[0x10, 0xa0, 0x00, 0x01]);
    assert_eq!(status(&mut r)[..3], [0x16, 0x01, 0x00]);
    assert_eq!(status(&mut r)[..3], [0x16, 0x01, 0x00]);
    assert_eq!(status(&mut r), [0x16, 0x02, 0x05, 0, 0, 0, 1]);
    // Cancel makes the bridge idle.
    r.report(&[0x17, 0x01]);
    r.device.set_faults(Faults::default());
    assert_eq!(status(&mut r), [0x16, 0, 0, 0, 0, 0, 0]);

    r.device.set_faults(Faults { transfer_error: Some(3), ..Faults::default() });
    r.report(&[0x14, 0xa0, 0x02, 0x00, 0x11]);
    assert_eq!(status(&mut r), [0x16, 0x03, 0x03, 0, 0, 0, 0]);
    assert_eq!(r.eeprom.lock().unwrap().contents()[0], 0xff, "a failed write does not land");

    r.device.set_faults(Faults { nak: true, ..Faults::default() });
    r.report(&[0x11, 0xa0, 0x00, 0x01, 0x01, 0x00]);
    assert_eq!(status(&mut r), [0x16, 0x03, 0x00, 0, 0, 0, 0]);
    assert_eq!(r.device.counters().naks, 1);

    // A lying device: the read succeeds with the model's byte (blank 0xff) garbled, and the
    // model itself is unchanged.
    r.device.set_faults(Faults { corrupt_reads: 0x5a, ..Faults::default() });
    r.report(&[0x10, 0xa0, 0x00, 0x01]);
    assert_eq!(status(&mut r), [0x16, 0x02, 0x05, 0, 0, 0, 1]);
    assert_eq!(r.report(&[0x12, 0x00, 0x01]).remove(0)[..4], [0x13, 0x02, 1, 0xff ^ 0x5a]);
    assert_eq!(r.eeprom.lock().unwrap().contents()[..2], [0xff, 0xff]);

    r.device.set_faults(Faults { stall_ep0: true, ..Faults::default() });
    assert_eq!(r.control_in(0xa1, 1, 0x0305, 0, 3), (4, vec![]));
    r.device.set_faults(Faults::default());
    assert_eq!(r.control_in(0xa1, 1, 0x0305, 0, 3).0, 0);
}

#[test]
fn malformed_output_reports_are_counted_not_fatal() {
    let mut r = Rig::new();
    for report in [
        &[0x10, 0xa0, 0x00, 0x00][..],   // zero-length read
        &[0x10, 0xa0, 0x02, 0x01],       // 513 bytes
        &[0x11, 0xa0, 0x00, 0x01, 17],   // target too long
        &[0x11, 0xa0, 0x00, 0x01, 2, 0], // target shorter than announced
        &[0x14, 0xa0, 62],
        &[0x14, 0xa0, 3, 1],
        &[0x13],
        &[],
    ] {
        assert!(r.report(report).is_empty());
    }
    assert_eq!(r.device.counters().malformed_reports, 8);
    assert_eq!(r.device.counters().transfers, 0);
}
