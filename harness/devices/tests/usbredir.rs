//! usbredir session traces: exact bytes both ways, with the CP2112 behind the link.

mod common;

use common::*;
use devices::cp2112::Cp2112;
use devices::usbredir::{ProtocolError, Session, UsbDevice};

#[test]
fn hello_is_first_and_exact() {
    let device = Cp2112::new();
    let mut s = Session::new(device.info());
    let hello = s.poll_transmit().unwrap();
    let mut expected = vec![0, 0, 0, 0, 68, 0, 0, 0, 0, 0, 0, 0];
    let mut version = b"unplug-torture usbredir device 0.1".to_vec();
    version.resize(64, 0);
    expected.extend_from_slice(&version);
    expected.extend_from_slice(&[0x7a, 0, 0, 0]);
    assert_eq!(hello, expected);
    // Nothing else until the peer's hello.
    assert_eq!(s.poll_transmit(), None);
    assert!(!s.is_attached());
}

#[test]
fn connect_sequence_after_peer_hello() {
    let mut d = Cp2112::new();
    let mut s = Session::new(d.info());
    s.poll_transmit();
    s.receive(&hello(QEMU_CAPS), &mut d).unwrap();
    let out: Vec<Out> = std::iter::from_fn(|| s.poll_transmit()).map(|p| parse16(&p)).collect();
    assert_eq!(out.iter().map(|o| o.kind).collect::<Vec<_>>(), [4, 5, 1], "interface_info, ep_info, device_connect");
    assert!(out.iter().all(|o| o.id == 0));

    let ii = &out[0].body;
    assert_eq!(ii.len(), 132);
    assert_eq!(ii[..4], [1, 0, 0, 0]);
    assert_eq!((ii[4], ii[36], ii[68], ii[100]), (0, 0x03, 0, 0));

    let ep = &out[1].body;
    assert_eq!(ep.len(), 160, "types, intervals, interfaces, max packet sizes; no streams");
    for (i, t) in ep[..32].iter().enumerate() {
        let expected = match i {
            0 | 16 => 0,
            1 | 17 => 3,
            _ => 0xff,
        };
        assert_eq!(*t, expected, "type[{i}]");
    }
    assert_eq!((ep[32 + 1], ep[32 + 17]), (1, 1), "intervals");
    let mps = |i: usize| u16::from_le_bytes([ep[96 + 2 * i], ep[97 + 2 * i]]);
    assert_eq!((mps(0), mps(16), mps(1), mps(17), mps(2)), (64, 64, 64, 64, 0));

    assert_eq!(out[2].body, [1, 0, 0, 0, 0xc4, 0x10, 0x90, 0xea, 0, 0]);
    assert!(s.is_attached());
}

#[test]
fn header_stays_12_bytes_without_64bit_ids() {
    let mut d = Cp2112::new();
    let mut s = Session::new(d.info());
    s.poll_transmit();
    // Peer without 64bits_ids, ep_info_max_packet_size, connect_device_version.
    s.receive(&hello(0x08), &mut d).unwrap();
    let out: Vec<Vec<u8>> = std::iter::from_fn(|| s.poll_transmit()).collect();
    let lens: Vec<(u32, usize)> =
        out.iter().map(|p| (u32::from_le_bytes(p[..4].try_into().unwrap()), p.len())).collect();
    assert_eq!(lens, [(4, 12 + 132), (5, 12 + 96), (1, 12 + 8)]);
    // Requests keep 12-byte headers too, and the reply carries the 32-bit id.
    s.receive(&packet(7, 0xdead_beef, &[], false), &mut d).unwrap();
    assert_eq!(s.poll_transmit().unwrap(), [8, 0, 0, 0, 2, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde, 0, 0]);
}

#[test]
fn header_switch_within_one_read() {
    let mut d = Cp2112::new();
    let mut s = Session::new(d.info());
    s.poll_transmit();
    let mut bytes = hello(QEMU_CAPS);
    bytes.extend(packet(7, 0x1_0000_0001, &[], true));
    // Split mid-header to check reassembly.
    s.receive(&bytes[..75], &mut d).unwrap();
    s.receive(&bytes[75..], &mut d).unwrap();
    let out: Vec<Out> = std::iter::from_fn(|| s.poll_transmit()).map(|p| parse16(&p)).collect();
    assert_eq!(out.last().unwrap(), &Out { kind: 8, id: 0x1_0000_0001, body: vec![0, 0] });
}

#[test]
fn configuration_alt_setting_and_reset() {
    let mut r = Rig::new();
    assert_eq!(r.send(6, &[1])[0].body, [0, 1]);
    assert_eq!(r.send(7, &[])[0].body, [0, 1]);
    assert_eq!(r.send(6, &[2])[0].body, [2, 1], "no configuration 2");
    assert_eq!(r.send(9, &[0, 0])[0].body, [0, 0, 0]);
    assert_eq!(r.send(9, &[0, 1])[0].body, [2, 0, 0]);
    assert_eq!(r.send(10, &[0])[0].body, [0, 0, 0]);
    assert_eq!(r.send(10, &[3])[0].body, [2, 3, 0xff]);
    assert!(r.send(3, &[]).is_empty(), "reset has no reply");
    assert_eq!(r.device.counters().resets, 1);
    assert!(r.send(21, &[]).is_empty(), "cancel: nothing is ever in flight");
    assert!(r.send(23, b"-1,-1,-1,-1,1\0").is_empty(), "filters are ignored");
    assert_eq!(r.send(15, &[0x82])[0].body, [2, 0x82], "no such endpoint");
    assert_eq!(r.send(15, &[0x01])[0].body, [2, 0x01], "not an IN endpoint");
}

#[test]
fn get_descriptors() {
    let mut r = Rig::new();
    let (st, dev) = r.control_in(0x80, 6, 0x0100, 0, 64);
    assert_eq!(st, 0);
    assert_eq!(dev, [0x12, 0x01, 0x00, 0x02, 0, 0, 0, 0x40, 0xc4, 0x10, 0x90, 0xea, 0, 0, 1, 2, 3, 1]);
    assert_eq!(r.control_in(0x80, 6, 0x0100, 0, 8).1, dev[..8], "truncated to wLength");
    let (_, cfg) = r.control_in(0x80, 6, 0x0200, 0, 9);
    assert_eq!(cfg, [0x09, 0x02, 0x29, 0x00, 0x01, 0x01, 0x00, 0x80, 0x32]);
    let (_, cfg) = r.control_in(0x80, 6, 0x0200, 0, 0x29);
    assert_eq!(cfg.len(), 41);
    assert_eq!(cfg[18..27], [0x09, 0x21, 0x11, 0x01, 0x00, 0x01, 0x22, 0xa7, 0x00]);
    assert_eq!(cfg[27..], [7, 5, 0x81, 3, 0x40, 0, 1, 7, 5, 0x01, 3, 0x40, 0, 1]);
    assert_eq!(r.control_in(0x80, 6, 0x0300, 0, 255).1, [4, 3, 9, 4]);
    let (_, product) = r.control_in(0x80, 6, 0x0302, 0x0409, 255);
    let text: Vec<u16> = product[2..].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!((product[0] as usize, product[1]), (product.len(), 3));
    assert_eq!(String::from_utf16(&text).unwrap(), "CP2112 HID USB-to-SMBus Bridge");
    assert_eq!(r.control_in(0x80, 6, 0x0301, 0x0409, 2).1, [42, 3], "bLength says the full size");
    assert_eq!(r.control_in(0x80, 6, 0x0600, 0, 10), (4, vec![]), "device qualifier stalls");
    assert_eq!(r.control_in(0x80, 6, 0x0f00, 0, 5), (4, vec![]), "BOS stalls");
    let (st, report) = r.control_in(0x81, 6, 0x2200, 0, 167);
    assert_eq!((st, report.len()), (0, 167));
    assert_eq!(report[..8], [0x06, 0x00, 0xff, 0x09, 0x01, 0xa1, 0x01, 0x15]);
    assert_eq!(report[160..], [0x95, 0x06, 0x09, 0x01, 0x81, 0x02, 0xc0]);
    assert_eq!(r.control_in(0x81, 6, 0x2100, 0, 9).1, cfg[18..27]);
    assert_eq!(r.control_in(0x80, 0, 0, 0, 2), (0, vec![0, 0]), "GET_STATUS");
    assert_eq!(r.control_out(0x21, 0x0a, 0, 0, &[]), (0, 0), "SET_IDLE");
    assert_eq!(r.control_out(0x02, 0x01, 0, 0x81, &[]), (0, 0), "CLEAR_FEATURE(HALT)");
    assert_eq!(r.control_in(0xc0, 0x42, 0, 0, 4), (4, vec![]), "unknown vendor request stalls");
}

#[test]
fn probe_feature_reports() {
    let mut r = Rig::new();
    assert_eq!(r.control_in(0xa1, 1, 0x0305, 0, 3), (0, vec![0x05, 0x0c, 0x02]));
    let (st, cfg) = r.control_in(0xa1, 1, 0x0306, 0, 14);
    assert_eq!((st, cfg.clone()), (0, vec![0x06, 0x00, 0x01, 0x86, 0xa0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]));
    let mut set = cfg.clone();
    set[13] = 1;
    assert_eq!(r.control_out(0x21, 9, 0x0306, 0, &set), (0, 14));
    assert_eq!(r.control_in(0xa1, 1, 0x0306, 0, 14).1, set);
    assert_eq!(r.control_in(0xa1, 1, 0x0320, 0, 2), (0, vec![0x20, 0x00]));
    let (_, usb) = r.control_in(0xa1, 1, 0x0321, 0, 10);
    assert_eq!(usb[..5], [0x21, 0xc4, 0x10, 0x90, 0xea]);
    let (_, serial) = r.control_in(0xa1, 1, 0x0324, 0, 63);
    assert_eq!((serial.len(), serial[0], serial[1], serial[2]), (63, 0x24, 22, 3));
    assert_eq!(r.control_in(0xa1, 1, 0x0399, 0, 8).0, 4, "unknown feature report stalls");
    assert_eq!(r.control_out(0x21, 9, 0x0320, 0, &[0x20, 0xff]).0, 4, "lock byte is read-only");
}

#[test]
fn gpio_both_directions() {
    let mut r = Rig::new();
    // direction_output(3, 1) the way hid-cp2112 does it.
    let (_, mut cfg) = r.control_in(0xa1, 1, 0x0302, 0, 5);
    assert_eq!(cfg, [0x02, 0x00, 0x00, 0x00, 0x00]);
    cfg[1] |= 1 << 3;
    cfg[2] = 0xff;
    assert_eq!(r.control_out(0x21, 9, 0x0302, 0, &cfg), (0, 5));
    assert_eq!(r.control_out(0x21, 9, 0x0304, 0, &[0x04, 0x00, 1 << 3]), (0, 3));
    assert_eq!(r.device.gpio().levels() & (1 << 3), 0, "the host sees the guest drive GPIO3 low");
    assert_eq!(r.control_out(0x21, 9, 0x0304, 0, &[0x04, 0xff, 1 << 3]), (0, 3));
    assert_ne!(r.device.gpio().levels() & (1 << 3), 0);

    // Input pin 5: the host changes the level, the guest's next GET 0x03 sees it.
    assert_eq!(r.control_in(0xa1, 1, 0x0303, 0, 2).1[1] & (1 << 5), 1 << 5, "pulled up");
    r.device.set_external(5, false);
    assert_eq!(r.control_in(0xa1, 1, 0x0303, 0, 2).1[1] & (1 << 5), 0);
    // An output pin ignores the outside level (push-pull).
    r.device.set_external(3, false);
    assert_ne!(r.control_in(0xa1, 1, 0x0303, 0, 2).1[1] & (1 << 3), 0);
    // Open drain: a released output reads the outside level.
    r.control_out(0x21, 9, 0x0302, 0, &[0x02, 1 << 3, 0x00, 0, 0]);
    assert_eq!(r.control_in(0xa1, 1, 0x0303, 0, 2).1[1] & (1 << 3), 0);
    assert_eq!(r.control_out(0x21, 9, 0x0302, 0, &[0x02, 1]).0, 4, "short GPIO config stalls");
}

/// docs/protocols.md §3, the wire view on a CP2112 (24c02 at 0x50), byte for byte.
#[test]
fn at24_wire_view() {
    let mut r = Rig::new();
    r.eeprom.lock().unwrap().seed(0, &(0..=255).collect::<Vec<u8>>());
    r.start_in();

    // Probe read: one byte at offset 0.
    assert!(r.report(&[0x11, 0xa0, 0x00, 0x01, 0x01, 0x00]).is_empty());
    assert_eq!(r.report(&[0x15, 0x01]), [vec![0x16, 0x02, 0x05, 0x00, 0x00, 0x00, 0x01]]);
    let mut expected = vec![0x13, 0x02, 0x01, 0x00];
    expected.resize(64, 0);
    assert_eq!(r.report(&[0x12, 0x00, 0x01]), [expected]);

    // nvmem read of 128 bytes at 0x80: force-sends of 61 + 61 + 6.
    r.report(&[0x11, 0xa0, 0x00, 0x80, 0x01, 0x80]);
    assert_eq!(r.report(&[0x15, 0x01]), [vec![0x16, 0x02, 0x05, 0x00, 0x00, 0x00, 0x80]]);
    let mut got = Vec::new();
    for want in [61, 61, 6] {
        let reply = r.report(&[0x12, 0x00, 128 - got.len() as u8]);
        assert_eq!(reply.len(), 1);
        assert_eq!((reply[0][0], reply[0][1], reply[0][2] as usize, reply[0].len()), (0x13, 0x02, want, 64));
        got.extend_from_slice(&reply[0][3..3 + want]);
    }
    assert_eq!(got, (0x80..=0xff).collect::<Vec<u8>>());

    // One-byte write.
    assert!(r.report(&[0x14, 0xa0, 0x02, 0x10, 0x5a]).is_empty());
    assert_eq!(r.report(&[0x15, 0x01]), [vec![0x16, 0x02, 0x05, 0x00, 0x00, 0x00, 0x00]]);
    assert_eq!(r.eeprom.lock().unwrap().contents()[0x10], 0x5a);

    // Empty address: address NAK, which Linux turns into -ETIMEDOUT.
    r.report(&[0x10, 0xa2, 0x00, 0x01]);
    assert_eq!(r.report(&[0x15, 0x01]), [vec![0x16, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00]]);
    let c = r.device.counters();
    assert_eq!((c.transfers, c.naks, c.malformed_reports), (4, 1, 0));
}

#[test]
fn in_reports_wait_for_start_interrupt_receiving() {
    let mut r = Rig::new();
    assert!(r.report(&[0x15, 0x01]).is_empty(), "not started: queued");
    let out = r.send(15, &[0x81]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].body, [0, 0x81]);
    assert_eq!((out[1].kind, out[1].id), (103, 0), "IN ids count from 0");
    assert_eq!(out[1].body, [0x81, 0, 7, 0, 0x16, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r.report(&[0x15, 0x01]).len(), 1);
    assert_eq!(r.send(16, &[0x81])[0].body, [0, 0x81]);
    assert!(r.report(&[0x15, 0x01]).is_empty(), "stopped again");
    assert_eq!(r.send(15, &[0x81]).len(), 2, "the queued report follows the start");
    // set_configuration also stops the endpoint.
    r.send(6, &[1]);
    assert!(r.report(&[0x15, 0x01]).is_empty());
    // A bus reset drops what was queued for the old enumeration.
    r.send(3, &[]);
    assert_eq!(r.send(15, &[0x81]).len(), 1);
}

#[test]
fn disconnect_ack_and_replug() {
    let mut r = Rig::new();
    r.session.disconnect();
    assert!(!r.session.is_attached());
    let out: Vec<Out> = r.drain().iter().map(|p| parse16(p)).collect();
    assert_eq!(out, [Out { kind: 2, id: 0, body: vec![] }]);
    // Packets QEMU had in flight fail without reaching the device.
    let out = r.send(100, &control(0xa1, 1, 0x0305, 0, 3, &[]));
    assert_eq!(out[0].body, [0x80, 1, 0xa1, 3, 0x05, 0x03, 0, 0, 0, 0]);
    assert_eq!(r.send(103, &interrupt_out(&[0x10, 0xa0, 0, 1]))[0].body, [0x01, 3, 0, 0]);
    assert_eq!(r.device.counters().transfers, 0);
    r.session.connect();
    assert!(r.drain().is_empty(), "re-plug waits for the ack");
    let out = r.send(24, &[]);
    assert_eq!(out.iter().map(|o| o.kind).collect::<Vec<_>>(), [4, 5, 1]);
    assert!(r.session.is_attached());
    // A stray ack is ignored.
    assert!(r.send(24, &[]).is_empty());
}

fn fresh() -> (Session, Cp2112) {
    let mut d = Cp2112::new();
    let mut s = Session::new(d.info());
    s.receive(&hello(QEMU_CAPS), &mut d).unwrap();
    while s.poll_transmit().is_some() {}
    (s, d)
}

#[test]
fn malformed_traffic_is_an_error_value() {
    // Truncated header or body: nothing happens yet.
    let (mut s, mut d) = fresh();
    let p = packet(100, 1, &control(0x80, 6, 0x100, 0, 18, &[]), true);
    s.receive(&p[..10], &mut d).unwrap();
    s.receive(&p[10..20], &mut d).unwrap();
    assert_eq!(s.poll_transmit(), None);
    s.receive(&p[20..], &mut d).unwrap();
    assert!(s.poll_transmit().is_some());

    let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
        (
            [&100u32.to_le_bytes()[..], &(1u32 << 20).to_le_bytes(), &[0; 8]].concat(),
            ProtocolError::TooLong { kind: 100, length: 1 << 20, limit: 10 + 65535 },
        ),
        (
            packet(100, 1, &control(0x80, 6, 0x100, 0, 2, &[1, 2]), true),
            ProtocolError::Direction { kind: 100, endpoint: 0x80, length: 2, data: 2 },
        ),
        (
            packet(100, 1, &control(0x21, 9, 0x306, 0, 3, &[1]), true),
            ProtocolError::Direction { kind: 100, endpoint: 0, length: 3, data: 1 },
        ),
        (
            packet(103, 1, &[0x81, 0, 1, 0, 9], true),
            ProtocolError::Direction { kind: 103, endpoint: 0x81, length: 1, data: 1 },
        ),
        (packet(100, 1, &[0, 0, 0], true), ProtocolError::TooShort { kind: 100, length: 3, minimum: 10 }),
        (packet(6, 1, &[1, 2], true), ProtocolError::BadLength { kind: 6, length: 2, expected: 1 }),
        (packet(1, 1, &[0; 10], true), ProtocolError::UnknownType(1)),
        (packet(101, 1, &[0; 10], true), ProtocolError::UnknownType(101)),
        (packet(0xffff_ffff, 1, &[], true), ProtocolError::UnknownType(0xffff_ffff)),
        (packet(0, 0, &hello(QEMU_CAPS)[12..], true), ProtocolError::DuplicateHello),
    ];
    for (bytes, expected) in cases {
        let (mut s, mut d) = fresh();
        assert_eq!(s.receive(&bytes, &mut d), Err(expected.clone()), "{bytes:02x?}");
        assert_eq!(s.receive(&[], &mut d), Err(expected), "errors stick");
    }

    let mut d = Cp2112::new();
    let mut s = Session::new(d.info());
    assert_eq!(s.receive(&packet(7, 0, &[], false), &mut d), Err(ProtocolError::BeforeHello { kind: 7 }));
    let mut s = Session::new(d.info());
    assert_eq!(
        s.receive(&packet(0, 0, &[0; 10], false), &mut d),
        Err(ProtocolError::TooShort { kind: 0, length: 10, minimum: 64 })
    );
}

#[test]
fn pending_in_queue_is_bounded() {
    let mut r = Rig::new();
    for _ in 0..200 {
        r.report(&[0x15, 0x01]);
    }
    let out = r.send(15, &[0x81]);
    assert_eq!(out.len(), 1 + 64);
}
